//! Output of `routemq-ctl`: JSON for scripts and comfy-table tables for people.
//!
//! The JSON shapes are a stable interface: one document on one line, snake_case field names,
//! enums as lowercase strings ("alive", "voter", "linearizable"), unknown or empty values as
//! `null`, members sorted by node id. `raft_id` is a decimal string because it is a random
//! 64-bit number that JavaScript-based tools would round. The human output may change freely.

use std::collections::BTreeMap;

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{CellAlignment, ContentArrangement, Table};
use routemq_client::{
    owner_counts, owner_ids, ClusterStatus, Liveness, LocateResponse, Member, PartitionTable, RaftRole,
    ReadConsistency, RemoveNodeResponse, TableError,
};
use serde::Serialize;

/// `status --json`.
#[derive(Debug, Serialize)]
pub struct StatusJson<'a> {
    pub cluster_id: &'a str,
    pub epoch: u64,
    pub raft_term: u64,
    /// Node id of the Raft leader; null when unknown.
    pub raft_leader: Option<&'a str>,
    pub commit_index: u64,
    pub applied_index: u64,
    pub partition_count: u32,
    pub vnodes_per_weight: u32,
    pub max_voters: u32,
    pub answered_by: &'a str,
    /// "linearizable" or "local".
    pub consistency: &'static str,
    pub members: Vec<MemberJson<'a>>,
    /// Nodes seen alive by gossip that are not ring members (e.g. still joining).
    pub non_members: Vec<MemberJson<'a>>,
}

/// One member (or non-member) in `status --json`.
#[derive(Debug, Serialize)]
pub struct MemberJson<'a> {
    pub node_id: &'a str,
    /// Decimal string.
    pub raft_id: String,
    pub grpc_addr: &'a str,
    pub gossip_addr: &'a str,
    pub http_addr: &'a str,
    pub weight: u32,
    /// "joining", "active", "leaving"; null when the node does not gossip.
    pub state: Option<&'a str>,
    /// "alive", "dead" or "unknown".
    pub liveness: &'static str,
    /// "voter", "learner", "none" (or "unknown" for a value this tool does not know).
    pub raft_role: &'static str,
    /// True for the Raft leader.
    pub leader: bool,
    pub partitions: u32,
    pub generation: u64,
}

/// `partitions --json`.
#[derive(Debug, Serialize)]
pub struct PartitionsJson<'a> {
    pub epoch: u64,
    pub partition_count: u32,
    pub vnodes_per_weight: u32,
    /// Owner node id of each partition; element p is partition p's owner.
    pub owners: Vec<&'a str>,
    /// Partitions owned per node id.
    pub counts: BTreeMap<&'a str, u32>,
    pub answered_by: &'a str,
}

/// `locate --json`.
#[derive(Debug, Serialize)]
pub struct LocateJson<'a> {
    pub key: &'a str,
    pub partition: u32,
    pub owner: &'a str,
    /// Null when the owner's address is unknown.
    pub owner_grpc_addr: Option<&'a str>,
    pub epoch: u64,
}

/// `node remove --json`.
#[derive(Debug, Serialize)]
pub struct RemoveJson<'a> {
    pub node_id: &'a str,
    /// Epoch after the removal.
    pub epoch: u64,
}

fn non_empty(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

/// Lowercase name of a liveness value.
pub fn liveness_name(value: i32) -> &'static str {
    match Liveness::try_from(value) {
        Ok(Liveness::Alive) => "alive",
        Ok(Liveness::Dead) => "dead",
        Ok(Liveness::Unknown) | Err(_) => "unknown",
    }
}

/// Lowercase name of a Raft role value.
pub fn raft_role_name(value: i32) -> &'static str {
    match RaftRole::try_from(value) {
        Ok(RaftRole::Voter) => "voter",
        Ok(RaftRole::Learner) => "learner",
        Ok(RaftRole::None) => "none",
        Err(_) => "unknown",
    }
}

/// Lowercase name of a read consistency value.
pub fn consistency_name(value: i32) -> &'static str {
    match ReadConsistency::try_from(value) {
        Ok(ReadConsistency::Linearizable) => "linearizable",
        Ok(ReadConsistency::Local) => "local",
        Err(_) => "unknown",
    }
}

fn sorted(members: &[Member]) -> Vec<&Member> {
    let mut members: Vec<&Member> = members.iter().collect();
    members.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    members
}

fn member_json<'a>(member: &'a Member, leader: &str) -> MemberJson<'a> {
    MemberJson {
        node_id: &member.node_id,
        raft_id: member.raft_id.to_string(),
        grpc_addr: &member.grpc_addr,
        gossip_addr: &member.gossip_addr,
        http_addr: &member.http_addr,
        weight: member.weight,
        state: non_empty(&member.state),
        liveness: liveness_name(member.liveness),
        raft_role: raft_role_name(member.raft_role),
        leader: !leader.is_empty() && member.node_id == leader,
        partitions: member.partitions,
        generation: member.generation,
    }
}

/// The JSON view of a status.
pub fn status_json(status: &ClusterStatus) -> StatusJson<'_> {
    let leader = status.raft_leader.as_str();
    StatusJson {
        cluster_id: &status.cluster_id,
        epoch: status.epoch,
        raft_term: status.raft_term,
        raft_leader: non_empty(leader),
        commit_index: status.commit_index,
        applied_index: status.applied_index,
        partition_count: status.partition_count,
        vnodes_per_weight: status.vnodes_per_weight,
        max_voters: status.max_voters,
        answered_by: &status.answered_by,
        consistency: consistency_name(status.consistency),
        members: sorted(&status.members)
            .into_iter()
            .map(|m| member_json(m, leader))
            .collect(),
        non_members: sorted(&status.non_members)
            .into_iter()
            .map(|m| member_json(m, leader))
            .collect(),
    }
}

/// The JSON view of a partition table; fails if the table does not add up.
pub fn partitions_json(table: &PartitionTable) -> Result<PartitionsJson<'_>, TableError> {
    Ok(PartitionsJson {
        epoch: table.epoch,
        partition_count: table.partition_count,
        vnodes_per_weight: table.vnodes_per_weight,
        owners: owner_ids(table)?,
        counts: owner_counts(table)?,
        answered_by: &table.answered_by,
    })
}

/// The JSON view of a key location.
pub fn locate_json(located: &LocateResponse) -> LocateJson<'_> {
    LocateJson {
        key: &located.key,
        partition: located.partition,
        owner: &located.owner,
        owner_grpc_addr: non_empty(&located.owner_grpc_addr),
        epoch: located.epoch,
    }
}

/// The JSON view of a node removal.
pub fn remove_json<'a>(node_id: &'a str, removed: &RemoveNodeResponse) -> RemoveJson<'a> {
    RemoveJson {
        node_id,
        epoch: removed.epoch,
    }
}

/// JSON on one line with a final newline: one document per line, for `jq` and line tools.
pub fn to_json_text(value: &impl Serialize) -> Result<String, serde_json::Error> {
    let mut text = serde_json::to_string(value)?;
    text.push('\n');
    Ok(text)
}

fn new_table(header: &[&str], right_aligned: &[usize]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.iter().copied());
    for &index in right_aligned {
        if let Some(column) = table.column_mut(index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

/// Aligned `label: value` lines.
fn key_values(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0) + 1;
    rows.iter()
        .map(|(label, value)| format!("{:<width$} {value}\n", format!("{label}:")))
        .collect()
}

fn or_dash(text: &str) -> &str {
    if text.is_empty() {
        "-"
    } else {
        text
    }
}

/// Human view of a status: a header, the members table and, if any, the non-members.
pub fn status_text(status: &ClusterStatus) -> String {
    let json = status_json(status);
    let leader = match json.raft_leader {
        Some(leader) => format!("{leader} (term {})", json.raft_term),
        None => format!("unknown (term {})", json.raft_term),
    };
    let mut out = key_values(&[
        ("Cluster id", or_dash(json.cluster_id).to_string()),
        ("Epoch", json.epoch.to_string()),
        ("Raft leader", leader),
        (
            "Commit/applied",
            format!("{} / {}", json.commit_index, json.applied_index),
        ),
        (
            "Partitions",
            format!(
                "{} ({} vnodes per unit weight, at most {} voters)",
                json.partition_count, json.vnodes_per_weight, json.max_voters
            ),
        ),
        (
            "Answered by",
            format!("{} ({} read)", or_dash(json.answered_by), json.consistency),
        ),
    ]);

    let mut members = new_table(
        &[
            "NODE",
            "STATE",
            "LIVENESS",
            "RAFT",
            "PARTITIONS",
            "WEIGHT",
            "GRPC",
            "HTTP",
            "GENERATION",
        ],
        &[4, 5, 8],
    );
    for m in &json.members {
        let role = if m.leader {
            format!("{} (leader)", m.raft_role)
        } else {
            m.raft_role.to_string()
        };
        members.add_row(vec![
            m.node_id.to_string(),
            m.state.unwrap_or("-").to_string(),
            m.liveness.to_string(),
            role,
            m.partitions.to_string(),
            m.weight.to_string(),
            or_dash(m.grpc_addr).to_string(),
            or_dash(m.http_addr).to_string(),
            m.generation.to_string(),
        ]);
    }
    out.push('\n');
    if json.members.is_empty() {
        out.push_str("No members.\n");
    } else {
        out.push_str(&format!("Members ({}):\n{members}\n", json.members.len()));
    }

    if !json.non_members.is_empty() {
        let mut others = new_table(&["NODE", "STATE", "LIVENESS", "GRPC", "HTTP", "GENERATION"], &[5]);
        for m in &json.non_members {
            others.add_row(vec![
                m.node_id.to_string(),
                m.state.unwrap_or("-").to_string(),
                m.liveness.to_string(),
                or_dash(m.grpc_addr).to_string(),
                or_dash(m.http_addr).to_string(),
                m.generation.to_string(),
            ]);
        }
        out.push_str(&format!(
            "\nNot in the ring, seen by gossip ({}):\n{others}\n",
            json.non_members.len()
        ));
    }
    out
}

/// Human view of a partition table: partitions and share per node.
pub fn partitions_text(table: &PartitionTable) -> Result<String, TableError> {
    let json = partitions_json(table)?;
    let mut out = format!(
        "Epoch {}: {} partitions, {} vnodes per unit weight (answered by {})\n",
        json.epoch,
        json.partition_count,
        json.vnodes_per_weight,
        or_dash(json.answered_by)
    );
    let mut nodes = new_table(&["NODE", "PARTITIONS", "SHARE"], &[1, 2]);
    for (node, count) in &json.counts {
        let share = if json.partition_count == 0 {
            "-".to_string()
        } else {
            format!(
                "{:.1}%",
                f64::from(*count) * 100.0 / f64::from(json.partition_count)
            )
        };
        nodes.add_row(vec![node.to_string(), count.to_string(), share]);
    }
    out.push_str(&format!("{nodes}\n"));
    Ok(out)
}

/// Human view of a key location.
pub fn locate_text(located: &LocateResponse) -> String {
    key_values(&[
        ("Key", located.key.clone()),
        ("Partition", located.partition.to_string()),
        ("Owner", or_dash(&located.owner).to_string()),
        ("Owner address", or_dash(&located.owner_grpc_addr).to_string()),
        ("Epoch", located.epoch.to_string()),
    ])
}

/// Human view of a node removal.
pub fn remove_text(node_id: &str, removed: &RemoveNodeResponse) -> String {
    format!(
        "Removed {node_id}; the cluster is now at epoch {}.\n",
        removed.epoch
    )
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn member(id: &str, role: RaftRole, liveness: Liveness, partitions: u32) -> Member {
        Member {
            node_id: id.into(),
            raft_id: u64::MAX - 1,
            grpc_addr: format!("{id}.local:7001"),
            gossip_addr: format!("{id}.local:7101"),
            http_addr: format!("{id}.local:7201"),
            weight: 1,
            state: "active".into(),
            liveness: liveness as i32,
            raft_role: role as i32,
            partitions,
            generation: 1_700_000_000_123,
        }
    }

    fn status() -> ClusterStatus {
        ClusterStatus {
            cluster_id: "c-1".into(),
            epoch: 7,
            raft_term: 3,
            raft_leader: "n1".into(),
            commit_index: 42,
            applied_index: 41,
            partition_count: 256,
            vnodes_per_weight: 64,
            max_voters: 3,
            members: vec![
                member("n2", RaftRole::Learner, Liveness::Dead, 128),
                member("n1", RaftRole::Voter, Liveness::Alive, 128),
            ],
            answered_by: "n2".into(),
            consistency: ReadConsistency::Local as i32,
            non_members: vec![Member {
                state: "joining".into(),
                liveness: Liveness::Alive as i32,
                ..member("n3", RaftRole::None, Liveness::Unknown, 0)
            }],
        }
    }

    fn to_value(value: &impl Serialize) -> Value {
        serde_json::from_str(&to_json_text(value).unwrap()).unwrap()
    }

    #[test]
    fn status_json_fields() {
        let value = to_value(&status_json(&status()));
        let expected_n1 = json!({
            "node_id": "n1",
            "raft_id": "18446744073709551614",
            "grpc_addr": "n1.local:7001",
            "gossip_addr": "n1.local:7101",
            "http_addr": "n1.local:7201",
            "weight": 1,
            "state": "active",
            "liveness": "alive",
            "raft_role": "voter",
            "leader": true,
            "partitions": 128,
            "generation": 1_700_000_000_123u64,
        });
        assert_eq!(value["members"][0], expected_n1);
        assert_eq!(value["members"][1]["node_id"], "n2");
        assert_eq!(value["members"][1]["liveness"], "dead");
        assert_eq!(value["members"][1]["raft_role"], "learner");
        assert_eq!(value["members"][1]["leader"], false);
        assert_eq!(value["non_members"][0]["node_id"], "n3");
        assert_eq!(value["non_members"][0]["state"], "joining");
        assert_eq!(value["non_members"][0]["raft_role"], "none");

        let mut top = value.as_object().unwrap().clone();
        top.remove("members");
        top.remove("non_members");
        assert_eq!(
            Value::Object(top),
            json!({
                "cluster_id": "c-1",
                "epoch": 7,
                "raft_term": 3,
                "raft_leader": "n1",
                "commit_index": 42,
                "applied_index": 41,
                "partition_count": 256,
                "vnodes_per_weight": 64,
                "max_voters": 3,
                "answered_by": "n2",
                "consistency": "local",
            })
        );
    }

    #[test]
    fn status_json_unknowns_are_null_or_unknown() {
        let mut s = status();
        s.raft_leader.clear();
        s.consistency = 9;
        s.members[0].state.clear();
        s.members[0].liveness = 17;
        s.members[0].raft_role = 17;
        let value = to_value(&status_json(&s));
        assert_eq!(value["raft_leader"], Value::Null);
        assert_eq!(value["consistency"], "unknown");
        let n2 = &value["members"][1];
        assert_eq!(n2["state"], Value::Null);
        assert_eq!(n2["liveness"], "unknown");
        assert_eq!(n2["raft_role"], "unknown");
        assert_eq!(value["members"][0]["leader"], false);
    }

    #[test]
    fn partitions_json_fields() {
        let table = PartitionTable {
            epoch: 4,
            partition_count: 5,
            vnodes_per_weight: 16,
            nodes: vec!["n2".into(), "n1".into()],
            owners: vec![0, 1, 1, 0, 1],
            answered_by: "n1".into(),
        };
        assert_eq!(
            to_value(&partitions_json(&table).unwrap()),
            json!({
                "epoch": 4,
                "partition_count": 5,
                "vnodes_per_weight": 16,
                "owners": ["n2", "n1", "n1", "n2", "n1"],
                "counts": {"n1": 3, "n2": 2},
                "answered_by": "n1",
            })
        );
        let text = partitions_text(&table).unwrap();
        assert!(text.contains("60.0%") && text.contains("40.0%"), "{text}");

        let broken = PartitionTable {
            owners: vec![0, 2, 1, 0, 1],
            ..table
        };
        assert!(partitions_json(&broken).is_err());
    }

    #[test]
    fn locate_and_remove_json_fields() {
        let located = LocateResponse {
            key: "device-42".into(),
            partition: 17,
            owner: "n2".into(),
            owner_grpc_addr: "10.0.0.2:7001".into(),
            epoch: 7,
        };
        assert_eq!(
            to_value(&locate_json(&located)),
            json!({"key": "device-42", "partition": 17, "owner": "n2", "owner_grpc_addr": "10.0.0.2:7001", "epoch": 7})
        );
        let unknown_addr = LocateResponse {
            owner_grpc_addr: String::new(),
            ..located
        };
        assert_eq!(
            to_value(&locate_json(&unknown_addr))["owner_grpc_addr"],
            Value::Null
        );
        assert_eq!(
            to_value(&remove_json("n3", &RemoveNodeResponse { epoch: 8 })),
            json!({"node_id": "n3", "epoch": 8})
        );
    }

    #[test]
    fn json_text_is_one_line() {
        let text = to_json_text(&remove_json("n3", &RemoveNodeResponse { epoch: 8 })).unwrap();
        assert_eq!(text, "{\"node_id\":\"n3\",\"epoch\":8}\n");
    }

    #[test]
    fn status_text_shows_header_members_and_non_members() {
        let text = status_text(&status());
        for needle in [
            "Cluster id:",
            "c-1",
            "Raft leader:    n1 (term 3)",
            "42 / 41",
            "Answered by:    n2 (local read)",
            "voter (leader)",
            "learner",
            "dead",
            "n1.local:7001",
            "n1.local:7201",
            "1700000000123",
            "Not in the ring",
            "joining",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        // Members are sorted: n1 before n2.
        assert!(text.find("n1.local:7001") < text.find("n2.local:7001"));
    }

    #[test]
    fn locate_and_remove_text() {
        let text = locate_text(&LocateResponse {
            key: "k".into(),
            partition: 1,
            owner: "n1".into(),
            owner_grpc_addr: String::new(),
            epoch: 2,
        });
        assert!(text.contains("Owner address: -"), "{text}");
        assert_eq!(
            remove_text("n3", &RemoveNodeResponse { epoch: 8 }),
            "Removed n3; the cluster is now at epoch 8.\n"
        );
    }
}
