//! Output of `routemq-ctl`: JSON for scripts and comfy-table tables for people.
//!
//! The JSON shapes are a stable interface: one document on one line, snake_case field names,
//! enums as lowercase strings ("alive", "voter", "linearizable"), unknown or empty values as
//! `null`, members sorted by node id. `raft_id` is a decimal string because it is a random
//! 64-bit number that JavaScript-based tools would round. The human output may change freely.

use std::collections::BTreeMap;

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{CellAlignment, ContentArrangement, Table};
use routemq_client::bench::verify::Verdict;
use routemq_client::bench::BenchReport;
use routemq_client::proto::handler;
use routemq_client::spec::{effective_pattern, handler_label, mode_name};
use routemq_client::{
    owner_counts, owner_ids, ClusterStatus, JournalEntry, Liveness, LocateResponse, Member, PartitionTable,
    PublishResponse, PutRouteResponse, RaftRole, ReadConsistency, RemoveNodeResponse, Route, RouteMode,
    TableError,
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

/// A route in JSON (`routes get`, `routes list`, `routes add`).
#[derive(Debug, Serialize)]
pub struct RouteJson<'a> {
    pub name: &'a str,
    pub pattern: &'a str,
    /// Null without a group.
    pub group: Option<&'a str>,
    /// `group/pattern`, what topics are matched against.
    pub effective_pattern: String,
    /// Null: the whole topic is the key.
    pub key_param: Option<&'a str>,
    pub qos: u32,
    /// "ordered" or "shared".
    pub mode: &'static str,
    /// Workers per node of a shared route; null for ordered routes.
    pub worker_count: Option<u32>,
    pub handler: HandlerJson<'a>,
    pub priority: i32,
    pub version: u64,
    /// JSON pointer to the message id in payloads; absent: ids are generated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id_field: Option<&'a str>,
}

/// A handler in JSON, tagged by `kind`.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HandlerJson<'a> {
    Log,
    Journal,
    Republish { topic_template: &'a str, qos: u32 },
    Custom { name: &'a str },
}

/// `routes list --json`.
#[derive(Debug, Serialize)]
pub struct RoutesJson<'a> {
    /// In matching order.
    pub routes: Vec<RouteJson<'a>>,
}

/// `routes add --json`.
#[derive(Debug, Serialize)]
pub struct PutJson<'a> {
    pub route: Option<RouteJson<'a>>,
    /// Config epoch after the write.
    pub epoch: u64,
}

/// `routes remove --json`.
#[derive(Debug, Serialize)]
pub struct DeleteJson<'a> {
    pub name: &'a str,
    pub deleted: bool,
}

/// What `routes apply` did to one route.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ApplyOutcome {
    pub name: String,
    /// "created", "updated" or "unchanged".
    pub action: &'static str,
    /// The route's version after apply.
    pub version: u64,
    /// Config epoch after the write; null when unchanged.
    pub epoch: Option<u64>,
}

/// `routes apply --json`.
#[derive(Debug, Serialize)]
pub struct ApplyJson<'a> {
    pub file: &'a str,
    pub routes: &'a [ApplyOutcome],
}

/// `publish --json`.
#[derive(Debug, Serialize)]
pub struct PublishJson<'a> {
    pub message_id: &'a str,
    pub route: &'a str,
    pub key: &'a str,
    pub partition: u32,
    pub processed_by: &'a str,
    pub epoch: u64,
}

/// `journal --json`.
#[derive(Debug, Serialize)]
pub struct JournalJson<'a> {
    pub route: &'a str,
    pub key: &'a str,
    pub entries: Vec<EntryJson<'a>>,
    /// Where to continue (`--from`).
    pub next_offset: u64,
    /// True when the entries reach the journal's end.
    pub end: bool,
}

/// One journal entry in JSON.
#[derive(Debug, Serialize)]
pub struct EntryJson<'a> {
    pub offset: u64,
    pub message_id: &'a str,
    pub topic: &'a str,
    /// The payload as text (`payload_encoding` "utf8") or lowercase hex ("hex").
    pub payload: String,
    pub payload_encoding: &'static str,
    pub processed_by: &'a str,
    pub epoch: u64,
    pub partition: u32,
    pub processed_at_unix_ms: i64,
    /// RFC 3339, UTC, milliseconds.
    pub processed_at: String,
}

fn handler_json(route: &Route) -> HandlerJson<'_> {
    match route.handler.as_ref().and_then(|h| h.kind.as_ref()) {
        None | Some(handler::Kind::Log(_)) => HandlerJson::Log,
        Some(handler::Kind::Journal(_)) => HandlerJson::Journal,
        Some(handler::Kind::Republish(r)) => HandlerJson::Republish {
            topic_template: &r.topic,
            qos: r.qos,
        },
        Some(handler::Kind::Custom(name)) => HandlerJson::Custom { name },
    }
}

/// The JSON view of a route.
pub fn route_json(route: &Route) -> RouteJson<'_> {
    RouteJson {
        name: &route.name,
        pattern: &route.pattern,
        group: non_empty(&route.group),
        effective_pattern: effective_pattern(route),
        key_param: non_empty(&route.key_param),
        qos: route.qos,
        mode: mode_name(route.mode),
        worker_count: (route.mode == RouteMode::Shared as i32).then_some(route.worker_count),
        handler: handler_json(route),
        priority: route.priority,
        version: route.version,
        message_id_field: non_empty(&route.message_id_field),
    }
}

/// The JSON view of a route list.
pub fn routes_json(routes: &[Route]) -> RoutesJson<'_> {
    RoutesJson {
        routes: routes.iter().map(route_json).collect(),
    }
}

/// The JSON view of a route write.
pub fn put_json(put: &PutRouteResponse) -> PutJson<'_> {
    PutJson {
        route: put.route.as_ref().map(route_json),
        epoch: put.epoch,
    }
}

/// The JSON view of a route deletion.
pub fn delete_json(name: &str, deleted: bool) -> DeleteJson<'_> {
    DeleteJson { name, deleted }
}

/// The JSON view of a publish.
pub fn publish_json(published: &PublishResponse) -> PublishJson<'_> {
    PublishJson {
        message_id: &published.message_id,
        route: &published.route,
        key: &published.key,
        partition: published.partition,
        processed_by: &published.processed_by,
        epoch: published.epoch,
    }
}

/// A payload as text when it is printable UTF-8, otherwise as lowercase hex.
pub fn payload_text(payload: &[u8]) -> (String, &'static str) {
    match std::str::from_utf8(payload) {
        Ok(text)
            if !text
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r') =>
        {
            (text.to_string(), "utf8")
        }
        _ => (payload.iter().map(|b| format!("{b:02x}")).collect(), "hex"),
    }
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds, e.g. `2026-11-23T10:17:06.123Z`.
pub fn rfc3339_ms(unix_ms: i64) -> String {
    let days = unix_ms.div_euclid(86_400_000);
    let ms_of_day = unix_ms.rem_euclid(86_400_000);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000
    )
}

fn entry_json(entry: &JournalEntry) -> EntryJson<'_> {
    let (payload, payload_encoding) = payload_text(&entry.payload);
    EntryJson {
        offset: entry.offset,
        message_id: &entry.message_id,
        topic: &entry.topic,
        payload,
        payload_encoding,
        processed_by: &entry.processed_by,
        epoch: entry.epoch,
        partition: entry.partition,
        processed_at_unix_ms: entry.processed_at_unix_ms,
        processed_at: rfc3339_ms(entry.processed_at_unix_ms),
    }
}

/// The JSON view of journal entries.
pub fn journal_json<'a>(
    route: &'a str,
    key: &'a str,
    entries: &'a [JournalEntry],
    next_offset: u64,
    end: bool,
) -> JournalJson<'a> {
    JournalJson {
        route,
        key,
        entries: entries.iter().map(entry_json).collect(),
        next_offset,
        end,
    }
}

fn mode_label(route: &Route) -> String {
    if route.mode == RouteMode::Shared as i32 {
        format!("shared ×{}", route.worker_count)
    } else {
        mode_name(route.mode).to_string()
    }
}

/// Human view of a route list.
pub fn routes_text(routes: &[Route]) -> String {
    if routes.is_empty() {
        return "No routes.\n".into();
    }
    let mut table = new_table(
        &[
            "NAME", "PATTERN", "KEY", "MODE", "HANDLER", "QOS", "PRIORITY", "VERSION",
        ],
        &[5, 6, 7],
    );
    for route in routes {
        table.add_row(vec![
            route.name.clone(),
            effective_pattern(route),
            if route.key_param.is_empty() {
                "(topic)".to_string()
            } else {
                route.key_param.clone()
            },
            mode_label(route),
            handler_label(route.handler.as_ref()),
            route.qos.to_string(),
            route.priority.to_string(),
            route.version.to_string(),
        ]);
    }
    format!("Routes in matching order ({}):\n{table}\n", routes.len())
}

/// Human view of one route.
pub fn route_text(route: &Route) -> String {
    let mut rows = vec![
        ("Name", route.name.clone()),
        ("Pattern", route.pattern.clone()),
        ("Group", or_dash(&route.group).to_string()),
        ("Matches", effective_pattern(route)),
        (
            "Key",
            if route.key_param.is_empty() {
                "the whole topic".to_string()
            } else {
                format!("{{{}}}", route.key_param)
            },
        ),
        ("Mode", mode_label(route)),
        ("Handler", handler_label(route.handler.as_ref())),
        ("QoS", route.qos.to_string()),
        ("Priority", route.priority.to_string()),
        ("Version", route.version.to_string()),
    ];
    if !route.message_id_field.is_empty() {
        rows.push(("Message id", format!("payload field {}", route.message_id_field)));
    }
    key_values(&rows)
}

/// Human view of a route write.
pub fn put_text(put: &PutRouteResponse) -> String {
    match &put.route {
        Some(route) => format!(
            "Route {} saved (version {}); the cluster is now at epoch {}.\n",
            route.name, route.version, put.epoch
        ),
        None => format!("Route saved; the cluster is now at epoch {}.\n", put.epoch),
    }
}

/// Human view of `routes apply`.
pub fn apply_text(file: &str, outcomes: &[ApplyOutcome]) -> String {
    if outcomes.is_empty() {
        return format!("{file}: no routes.\n");
    }
    let mut table = new_table(&["NAME", "ACTION", "VERSION", "EPOCH"], &[2, 3]);
    for o in outcomes {
        table.add_row(vec![
            o.name.clone(),
            o.action.to_string(),
            o.version.to_string(),
            o.epoch.map_or("-".to_string(), |e| e.to_string()),
        ]);
    }
    let changed = outcomes.iter().filter(|o| o.action != "unchanged").count();
    format!("{file}: {} routes, {changed} written.\n{table}\n", outcomes.len())
}

/// Human view of a publish.
pub fn publish_text(published: &PublishResponse) -> String {
    key_values(&[
        ("Message id", published.message_id.clone()),
        ("Route", or_dash(&published.route).to_string()),
        ("Key", published.key.clone()),
        ("Partition", published.partition.to_string()),
        ("Processed by", or_dash(&published.processed_by).to_string()),
        ("Epoch", published.epoch.to_string()),
    ])
}

/// Longest payload shown in a journal table, in characters.
const PAYLOAD_COLUMN: usize = 60;

/// Human view of journal entries.
pub fn journal_text(route: &str, key: &str, entries: &[JournalEntry], next_offset: u64, end: bool) -> String {
    let more = if end {
        String::new()
    } else {
        format!(" More from offset {next_offset} (--from {next_offset}).")
    };
    if entries.is_empty() {
        return format!("Journal of {key:?} on route {route}: no entries.{more}\n");
    }
    let mut table = new_table(
        &[
            "OFFSET",
            "MESSAGE ID",
            "TOPIC",
            "PAYLOAD",
            "PROCESSED BY",
            "EPOCH",
            "TIME (UTC)",
        ],
        &[0, 5],
    );
    for entry in entries {
        let (payload, encoding) = payload_text(&entry.payload);
        let mut shown: String = payload.chars().take(PAYLOAD_COLUMN).collect();
        if shown.len() < payload.len() {
            shown.push('…');
        }
        if encoding == "hex" {
            shown = format!("0x{shown}");
        }
        table.add_row(vec![
            entry.offset.to_string(),
            entry.message_id.clone(),
            entry.topic.clone(),
            shown.replace(['\n', '\r', '\t'], " "),
            or_dash(&entry.processed_by).to_string(),
            entry.epoch.to_string(),
            rfc3339_ms(entry.processed_at_unix_ms),
        ]);
    }
    format!(
        "Journal of {key:?} on route {route} ({} entries):\n{table}\n{}",
        entries.len(),
        if more.is_empty() {
            String::new()
        } else {
            format!("{}\n", more.trim_start())
        }
    )
}

fn micros(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.2} s", us as f64 / 1e6)
    } else {
        format!("{:.2} ms", us as f64 / 1e3)
    }
}

/// Human view of a bench report.
pub fn bench_text(report: &BenchReport) -> String {
    let ack = match report.ack {
        "cluster" => "accepted by the cluster",
        _ => "PUBACK from the broker, not the cluster",
    };
    let rate = report
        .target_rate
        .map_or("as fast as possible".to_string(), |r| format!("target {r}/s"));
    let latency = match &report.latency_us {
        Some(l) => format!(
            "p50 {}, p90 {}, p99 {}, max {} ({} samples)",
            micros(l.p50),
            micros(l.p90),
            micros(l.p99),
            micros(l.max),
            l.count
        ),
        None => "-".to_string(),
    };
    let errors = if report.errors.is_empty() {
        "none".to_string()
    } else {
        report
            .errors
            .iter()
            .map(|(code, n)| format!("{code} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let stopped = match report.stopped_by {
        "duration" => "the --duration limit",
        "errors" => "too many failures in a row",
        _ => "all messages sent",
    };
    let mut out = format!(
        "Bench {} over {}: route {}, {} keys, {} producers × {} in flight, {}-byte payloads, {rate}\n",
        report.run_id,
        report.transport,
        report.route,
        report.keys,
        report.producers,
        report.concurrency,
        report.payload_bytes
    );
    let mut rows = vec![
        (
            "Messages",
            format!(
                "{} sent of {}, {} acknowledged ({ack}), {} failed",
                report.messages_sent, report.messages_planned, report.messages_acked, report.messages_failed
            ),
        ),
        ("Stopped by", stopped.to_string()),
        ("Duration", format!("{:.3} s", report.duration_ms as f64 / 1000.0)),
        (
            "Throughput",
            format!("{:.1} msg/s acknowledged", report.throughput_per_s),
        ),
        ("Latency", latency),
        ("Errors", errors),
    ];
    if let Some(d) = &report.delivery {
        let place = match d.measured_at {
            "subscriber" => "the subscriber (broker only)",
            _ => "the journals",
        };
        let latency = d.latency_us.as_ref().map_or("-".to_string(), |l| {
            format!("publish to delivery p50 {}, p99 {}", micros(l.p50), micros(l.p99))
        });
        rows.push((
            "End to end",
            format!(
                "{:.1} msg/s into {place}: {} messages in {:.3} s from the first publish; {latency}",
                d.throughput_per_s,
                d.delivered,
                d.span_ms as f64 / 1000.0
            ),
        ));
    }
    out.push_str(&key_values(&rows));
    if let Some(v) = &report.verify {
        out.push('\n');
        if v.verdict != Verdict::Error {
            out.push_str(&key_values(&[
                (
                    "Journals",
                    format!(
                        "{} keys, {} entries of this run, {} after {:.1} s",
                        v.keys,
                        v.journal_entries,
                        if v.settled { "settled" } else { "still growing" },
                        v.wait_ms as f64 / 1000.0
                    ),
                ),
                (
                    "Delivered",
                    format!("{} of {} acknowledged messages", v.present, v.acked),
                ),
                (
                    "Problems",
                    format!(
                        "{} lost, {} duplicated, {} reordered{}, {} unexpected; {} unacknowledged but present",
                        v.lost,
                        v.duplicates,
                        v.reordered,
                        if v.order_checked { "" } else { " (shared route: not checked)" },
                        v.unexpected,
                        v.unacked_present
                    ),
                ),
            ]));
            if !v.problems.is_empty() {
                let mut table = new_table(
                    &[
                        "KEY",
                        "LOST",
                        "DUPLICATES",
                        "REORDERED",
                        "UNEXPECTED",
                        "FIRST PROBLEMS",
                    ],
                    &[1, 2, 3, 4],
                );
                for p in &v.problems {
                    table.add_row(vec![
                        p.key.clone(),
                        p.lost.to_string(),
                        p.duplicates.to_string(),
                        p.reordered.to_string(),
                        p.unexpected.to_string(),
                        p.examples.iter().take(3).cloned().collect::<Vec<_>>().join("; "),
                    ]);
                }
                let listed = if v.keys_with_problems > v.problems.len() as u64 {
                    format!(" (first {})", v.problems.len())
                } else {
                    String::new()
                };
                out.push_str(&format!(
                    "Keys with problems: {}{listed}\n{table}\n",
                    v.keys_with_problems
                ));
            }
        }
        out.push_str(&format!("Verdict: {}\n", v.summary));
    }
    out
}

/// The JSON view of a route's hot keys.
pub fn hot_keys_json(answer: &routemq_proto::v1::HotKeysResponse) -> serde_json::Value {
    let window = f64::from(answer.window_s.max(1));
    serde_json::json!({
        "route": answer.route,
        "window_s": answer.window_s,
        "total": answer.total,
        "floor": answer.floor,
        "nodes": answer.nodes,
        "missing": answer.missing,
        "keys": answer.keys.iter().map(|k| serde_json::json!({
            "key": k.key,
            "count": k.count,
            "error": k.error,
            "rate_per_s": k.count as f64 / window,
        })).collect::<Vec<_>>(),
    })
}

/// Human view of a route's hot keys.
pub fn hot_keys_text(answer: &routemq_proto::v1::HotKeysResponse) -> String {
    let window = f64::from(answer.window_s.max(1));
    let mut out = format!(
        "Hot keys of route {} over the last {} s ({} messages counted on {}):\n",
        answer.route,
        answer.window_s,
        answer.total,
        answer.nodes.join(", ")
    );
    if answer.keys.is_empty() {
        out.push_str("No messages in the last complete window.\n");
    } else {
        let mut table = new_table(&["#", "KEY", "MESSAGES", "± ERROR", "MSG/S"], &[0, 2, 3, 4]);
        for (rank, k) in answer.keys.iter().enumerate() {
            table.add_row(vec![
                (rank + 1).to_string(),
                k.key.clone(),
                k.count.to_string(),
                k.error.to_string(),
                format!("{:.1}", k.count as f64 / window),
            ]);
        }
        out.push_str(&format!("{table}\n"));
        out.push_str(&format!(
            "A key not listed had at most {} messages.\n",
            answer.floor
        ));
    }
    if !answer.missing.is_empty() {
        out.push_str(&format!(
            "Not counted (did not answer): {}\n",
            answer.missing.join(", ")
        ));
    }
    out
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
            ring_state: "active".into(),
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

    // ---- routes, publish, journal, bench ----

    use routemq_client::bench::delivery::Delivery;
    use routemq_client::bench::verify::{self as bench_verify, KeyCheck};
    use routemq_client::bench::Latency;
    use routemq_client::proto::{JournalHandler, RepublishHandler};
    use routemq_client::Handler;

    fn a_route(kind: handler::Kind) -> Route {
        Route {
            name: "r1".into(),
            pattern: "sensors/{device_id}/data".into(),
            key_param: "device_id".into(),
            qos: 1,
            mode: RouteMode::Ordered as i32,
            worker_count: 0,
            handler: Some(Handler { kind: Some(kind) }),
            group: String::new(),
            version: 42,
            priority: 0,
            message_id_field: String::new(),
        }
    }

    #[test]
    fn route_json_fields_and_handler_kinds() {
        let route = a_route(handler::Kind::Journal(JournalHandler {}));
        assert_eq!(
            to_value(&route_json(&route)),
            json!({
                "name": "r1",
                "pattern": "sensors/{device_id}/data",
                "group": null,
                "effective_pattern": "sensors/{device_id}/data",
                "key_param": "device_id",
                "qos": 1,
                "mode": "ordered",
                "worker_count": null,
                "handler": {"kind": "journal"},
                "priority": 0,
                "version": 42,
            })
        );
        let republish = a_route(handler::Kind::Republish(RepublishHandler {
            topic: "out/{device_id}".into(),
            qos: 1,
        }));
        assert_eq!(
            to_value(&route_json(&republish))["handler"],
            json!({"kind": "republish", "topic_template": "out/{device_id}", "qos": 1})
        );
        let custom = a_route(handler::Kind::Custom("billing".into()));
        assert_eq!(
            to_value(&route_json(&custom))["handler"],
            json!({"kind": "custom", "name": "billing"})
        );
        let mut shared = Route {
            handler: None,
            group: "plant1".into(),
            key_param: String::new(),
            mode: RouteMode::Shared as i32,
            worker_count: 4,
            ..route
        };
        let value = to_value(&route_json(&shared));
        assert_eq!(value["handler"], json!({"kind": "log"}));
        assert_eq!(
            (value["mode"].clone(), value["worker_count"].clone()),
            (json!("shared"), json!(4))
        );
        assert_eq!(
            (value["group"].clone(), value["key_param"].clone()),
            (json!("plant1"), Value::Null)
        );
        assert_eq!(value["effective_pattern"], "plant1/sensors/{device_id}/data");
        shared.mode = 9;
        assert_eq!(to_value(&route_json(&shared))["mode"], "unknown");

        assert_eq!(
            to_value(&routes_json(std::slice::from_ref(&custom)))["routes"][0]["name"],
            "r1"
        );
        let put = PutRouteResponse {
            route: Some(custom),
            epoch: 9,
        };
        assert_eq!(to_value(&put_json(&put))["epoch"], 9);
        assert_eq!(to_value(&put_json(&put))["route"]["version"], 42);
        assert_eq!(
            put_text(&put),
            "Route r1 saved (version 42); the cluster is now at epoch 9.\n"
        );
        assert_eq!(
            to_value(&delete_json("r1", true)),
            json!({"name": "r1", "deleted": true})
        );
    }

    #[test]
    fn route_tables() {
        let route = a_route(handler::Kind::Republish(RepublishHandler {
            topic: "out/x".into(),
            qos: 0,
        }));
        let text = routes_text(std::slice::from_ref(&route));
        for needle in [
            "Routes in matching order (1)",
            "sensors/{device_id}/data",
            "device_id",
            "ordered",
            "republish:out/x (qos 0)",
            "42",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        assert_eq!(routes_text(&[]), "No routes.\n");
        let text = route_text(&route);
        assert!(
            text.contains("Key:      {device_id}") && text.contains("Group:    -"),
            "{text}"
        );
        let outcomes = vec![
            ApplyOutcome {
                name: "a".into(),
                action: "created",
                version: 11,
                epoch: Some(8),
            },
            ApplyOutcome {
                name: "b".into(),
                action: "unchanged",
                version: 5,
                epoch: None,
            },
        ];
        assert_eq!(
            to_value(&ApplyJson {
                file: "routes.toml",
                routes: &outcomes
            }),
            json!({"file": "routes.toml", "routes": [
                {"name": "a", "action": "created", "version": 11, "epoch": 8},
                {"name": "b", "action": "unchanged", "version": 5, "epoch": null},
            ]})
        );
        assert!(apply_text("routes.toml", &outcomes).starts_with("routes.toml: 2 routes, 1 written.\n"));
    }

    #[test]
    fn publish_json_fields() {
        let published = PublishResponse {
            request_id: 0,
            message_id: "m-1".into(),
            route: "telemetry".into(),
            key: "d1".into(),
            partition: 17,
            processed_by: "n2".into(),
            epoch: 8,
            error: String::new(),
            error_code: 0,
        };
        assert_eq!(
            to_value(&publish_json(&published)),
            json!({"message_id": "m-1", "route": "telemetry", "key": "d1", "partition": 17, "processed_by": "n2", "epoch": 8})
        );
        assert!(publish_text(&published).contains("Processed by: n2"));
    }

    #[test]
    fn payloads_and_times() {
        assert_eq!(
            payload_text(b"hello\tworld\n"),
            ("hello\tworld\n".to_string(), "utf8")
        );
        assert_eq!(payload_text(b"\x00\x01"), ("0001".to_string(), "hex"));
        assert_eq!(payload_text(&[0xff, 0xfe]), ("fffe".to_string(), "hex"));
        assert_eq!(payload_text(b""), (String::new(), "utf8"));
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339_ms(1_763_892_061_005), "2025-11-23T10:01:01.005Z");
        assert_eq!(rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn journal_json_and_table() {
        let entries = vec![JournalEntry {
            offset: 4,
            message_id: "m-4".into(),
            topic: "sensors/d1/data".into(),
            payload: "x".repeat(100).into_bytes(),
            processed_by: "n1".into(),
            epoch: 3,
            processed_at_unix_ms: 0,
            partition: 2,
        }];
        assert_eq!(
            to_value(&journal_json("telemetry", "d1", &entries, 5, false)),
            json!({
                "route": "telemetry",
                "key": "d1",
                "entries": [{
                    "offset": 4,
                    "message_id": "m-4",
                    "topic": "sensors/d1/data",
                    "payload": "x".repeat(100),
                    "payload_encoding": "utf8",
                    "processed_by": "n1",
                    "epoch": 3,
                    "partition": 2,
                    "processed_at_unix_ms": 0,
                    "processed_at": "1970-01-01T00:00:00.000Z",
                }],
                "next_offset": 5,
                "end": false,
            })
        );
        let text = journal_text("telemetry", "d1", &entries, 5, false);
        assert!(text.contains(&format!("{}…", "x".repeat(60))), "{text}");
        assert!(text.ends_with("More from offset 5 (--from 5).\n"), "{text}");
    }

    fn a_report() -> BenchReport {
        BenchReport {
            run_id: "ab12cd34".into(),
            transport: "mqtt",
            target: "cluster",
            ack: "broker_puback",
            route: "bench".into(),
            topic_template: "bench/{key}/data".into(),
            keys: 500,
            producers: 4,
            concurrency: 16,
            payload_bytes: 100,
            target_rate: Some(5000),
            messages_planned: 10_000,
            messages_sent: 10_000,
            messages_acked: 9_998,
            messages_failed: 2,
            stopped_by: "messages",
            duration_ms: 2_000,
            throughput_per_s: 4999.0,
            latency_us: Some(Latency {
                count: 9_998,
                min: 90,
                mean: 800,
                p50: 700,
                p90: 1_500,
                p99: 4_000,
                max: 1_200_000,
            }),
            errors: BTreeMap::from([("no_puback".to_string(), 2)]),
            verify: Some(bench_verify::summarize(
                vec![
                    KeyCheck {
                        key: "ab12cd34-1".into(),
                        sent: 20,
                        acked: 20,
                        entries: 19,
                        present: 19,
                        lost: 1,
                        examples: vec!["lost: producer 1 seq 5 (acknowledged)".into()],
                        ..KeyCheck::default()
                    },
                    KeyCheck {
                        key: "ab12cd34-2".into(),
                        sent: 20,
                        acked: 18,
                        entries: 20,
                        present: 18,
                        unacked_present: 2,
                        ..KeyCheck::default()
                    },
                ],
                true,
                true,
                std::time::Duration::from_millis(3_400),
            )),
            delivery: Some(Delivery {
                measured_at: "journal",
                delivered: 9_998,
                span_ms: 4_000,
                throughput_per_s: 2499.5,
                latency_us: None,
            }),
        }
    }

    #[test]
    fn bench_report_json_shape() {
        let value = to_value(&a_report());
        let mut top: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
        top.sort_unstable();
        assert_eq!(
            top,
            vec![
                "ack",
                "concurrency",
                "delivery",
                "duration_ms",
                "errors",
                "keys",
                "latency_us",
                "messages_acked",
                "messages_failed",
                "messages_planned",
                "messages_sent",
                "payload_bytes",
                "producers",
                "route",
                "run_id",
                "stopped_by",
                "target",
                "target_rate",
                "throughput_per_s",
                "topic_template",
                "transport",
                "verify",
            ]
        );
        assert_eq!(
            value["latency_us"],
            json!({"count": 9998, "min": 90, "mean": 800, "p50": 700, "p90": 1500, "p99": 4000, "max": 1200000})
        );
        assert_eq!(value["errors"], json!({"no_puback": 2}));
        let verify = &value["verify"];
        assert_eq!(verify["verdict"], "fail");
        assert_eq!(
            (
                verify["lost"].clone(),
                verify["unacked_present"].clone(),
                verify["keys_with_problems"].clone()
            ),
            (json!(1), json!(2), json!(1))
        );
        assert_eq!(verify["problems"][0]["key"], "ab12cd34-1");
        let mut fields: Vec<&str> = verify.as_object().unwrap().keys().map(String::as_str).collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            vec![
                "acked",
                "duplicates",
                "foreign",
                "journal_entries",
                "keys",
                "keys_with_problems",
                "lost",
                "order_checked",
                "present",
                "problems",
                "reordered",
                "sent",
                "settled",
                "summary",
                "unacked_present",
                "unexpected",
                "verdict",
                "wait_ms",
            ]
        );
    }

    #[test]
    fn bench_report_text() {
        let text = bench_text(&a_report());
        for needle in [
            "Bench ab12cd34 over mqtt: route bench, 500 keys, 4 producers × 16 in flight, 100-byte payloads, target 5000/s",
            "9998 acknowledged (PUBACK from the broker, not the cluster), 2 failed",
            "p50 0.70 ms, p90 1.50 ms, p99 4.00 ms, max 1.20 s",
            "Errors:     no_puback 2",
            "End to end: 2499.5 msg/s into the journals: 9998 messages in 4.000 s from the first publish; -",
            "2 keys, 39 entries of this run, settled after 3.4 s",
            "Delivered: 37 of 38 acknowledged messages",
            "1 lost, 0 duplicated, 0 reordered, 0 unexpected; 2 unacknowledged but present",
            "lost: producer 1 seq 5",
            "Verdict: FAIL: 1 lost",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        let mut unverified = a_report();
        unverified.verify = None;
        unverified.latency_us = None;
        let text = bench_text(&unverified);
        assert!(
            !text.contains("Verdict") && text.contains("Latency:    -"),
            "{text}"
        );
    }
}
