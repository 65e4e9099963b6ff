//! G2-G5 for the `ordered-stream` workload.
//!
//! History vocabulary (written by `workload::stream`):
//! - `publish` invoke: key `K`, value `{"key": K, "producer": P, "seq": S, "id": "K:P:S"}`,
//!   node = the node the producer is bound to; ok: `extra` = `{partition, processed_by, epoch}`.
//!   The producer is the client process id: after an `info`, the process is replaced, so a
//!   producer's sequence numbers only need to be increasing among its own operations.
//! - `read-journal` (during the run) and `final-read` (after healing, by fresh processes):
//!   key `K`, ok value = the journal entries in offset order, each
//!   `{"o": offset, "id": message id, "by": node, "ep": epoch, "at": unix ms, "p": partition}`.
//! - nemesis completions carry `extra.state = {"grudge": {node: [nodes it drops]}, "down":
//!   [nodes killed, paused or removed]}`: the fault state from then on.
//!
//! Checks (G3 and G4 judge journals by the one rule of `routemq_client::journal_check`):
//! - G3 ([`check_order`]): in every journal read, per (key, producer) the sequence numbers are
//!   strictly increasing in offset order.
//! - G4 ([`check_delivery`]): after the final reads, every `ok` publish is present (else
//!   *lost*); an id present twice is a *duplicate*; `info` publishes present are *recovered*
//!   (fine); `fail` publishes present, or ids never published, are violations. Messages
//!   published over MQTT carry no message id (MQTT 3.1.1), so the cluster cannot deduplicate
//!   their redeliveries: their repeats are counted (`mqtt_redelivered`) and, in G3, a repeat of
//!   the same sequence number in place is not a reordering.
//! - G2 ([`check_split_brain`]): processing records grouped per partition by (node, epoch)
//!   into intervals [first, last processing time]; a violation is one partition processed at one
//!   epoch by two nodes, or two nodes' intervals overlapping in time.
//! - `offsets-stable` ([`check_offsets`]): across every journal read of a key (during the run
//!   and final), no offset ever holds two different messages ([`Finding::OffsetConflict`] of
//!   [`journal_check::check`] over all of the key's reads): an offset a reader has seen means
//!   the same message forever.
//! - G5 ([`check_availability`]): per partition, windows in which publishes by clients bound to
//!   majority-connected nodes got no `ok`. A window runs from the first failing invocation to
//!   the latest end of a failing operation before the next `ok`: the span in which the
//!   partition was *seen* unavailable (the time until the next `ok`, which depends on when a
//!   client happened to try again, is reported but not judged). A window longer than the
//!   failover bound is a violation.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use routemq_client::journal_check::{
    self, At, Entry, Expected, Finding, Mark, Outcome, Processing, Seen, Sent,
};
use serde_json::{json, Value};

use super::{CheckResult, Verdict};
use crate::history::{pairs, Op, OpKind, Pair, Process};

/// How many violations to list in details (all are counted).
const MAX_LISTED: usize = 20;

/// The message id of a producer's message: `key:producer:seq`.
pub fn message_id(key: &str, producer: u64, seq: u64) -> String {
    Mark::new(key, producer, seq).id()
}

/// Parses a [`message_id`].
pub fn parse_message_id(id: &str) -> Option<(String, u64, u64)> {
    Mark::parse_id(id).map(|m| (m.key, m.producer, m.seq))
}

/// One journal entry as recorded in the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Offset in the key's journal.
    pub offset: u64,
    /// Message id.
    pub id: String,
    /// Node that processed it.
    pub by: String,
    /// Config epoch it was processed at.
    pub epoch: u64,
    /// Processing time, Unix ms.
    pub at_ms: i64,
    /// Partition.
    pub partition: u32,
}

/// The journal entries of an ok read's value.
pub fn records(value: &Value) -> Vec<Record> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| Record {
                    offset: e.get("o").and_then(Value::as_u64).unwrap_or(0),
                    id: e.get("id").and_then(Value::as_str).unwrap_or("").to_string(),
                    by: e.get("by").and_then(Value::as_str).unwrap_or("").to_string(),
                    epoch: e.get("ep").and_then(Value::as_u64).unwrap_or(0),
                    at_ms: e.get("at").and_then(Value::as_i64).unwrap_or(0),
                    partition: e.get("p").and_then(Value::as_u64).unwrap_or(0) as u32,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Ok journal reads (`read-journal` and `final-read`): (completion, records).
fn journal_reads(ops: &[Op]) -> Vec<(Op, Vec<Record>)> {
    ops.iter()
        .filter(|o| o.kind == OpKind::Ok && (o.f == "read-journal" || o.f == "final-read"))
        .map(|o| (o.clone(), records(&o.value)))
        .collect()
}

fn publishes(ops: &[Op]) -> Vec<Pair> {
    pairs(ops)
        .into_iter()
        .filter(|p| p.invoke.f == "publish")
        .collect()
}

/// Ids of messages published over MQTT: MQTT 3.1.1 carries no message id, so the cluster
/// cannot deduplicate their redeliveries (at least once); a repeat of one is counted, not
/// failed.
fn mqtt_ids(ops: &[Op]) -> BTreeSet<String> {
    ops.iter()
        .filter(|o| o.is_client_invoke() && o.f == "publish")
        .filter(|o| o.value.get("via").and_then(Value::as_str) == Some("mqtt"))
        .filter_map(|o| o.value.get("id").and_then(Value::as_str).map(String::from))
        .collect()
}

fn unimplemented(ops: &[Op]) -> bool {
    ops.iter()
        .any(|o| o.error.as_deref().is_some_and(|e| e.contains("UNIMPLEMENTED")))
}

fn not_run(id: &str, name: &str, ops: &[Op], what: &str) -> CheckResult {
    let why = if unimplemented(ops) {
        format!("{what}: the Messages service answered UNIMPLEMENTED, the workload could not run")
    } else {
        what.to_string()
    };
    CheckResult::new(id, name, Verdict::NotRun, why, json!({}))
}

/// A history record as [`journal_check`] sees it (the message from its id).
fn check_entry(r: &Record) -> Entry {
    let seen = match Mark::parse_id(&r.id) {
        Some(mark) => Seen::Message(mark),
        None => Seen::Invalid(r.id.clone()),
    };
    Entry {
        offset: r.offset,
        seen,
        processing: Processing {
            node: r.by.clone(),
            epoch: r.epoch,
            at_ms: r.at_ms,
        },
    }
}

/// G3: per (key, producer), sequence numbers strictly increase in every journal read: no
/// reordering and no repeat ([`journal_check::check`] on each read), except an MQTT
/// redelivery in place.
pub fn check_order(ops: &[Op]) -> CheckResult {
    const NAME: &str = "per (key, producer) order in every journal read";
    let reads = journal_reads(ops);
    if reads.is_empty() {
        return not_run("G3", NAME, ops, "no journal read succeeded");
    }
    let mqtt = mqtt_ids(ops);
    let mut violations = Vec::new();
    let mut entries = 0usize;
    let mut unparsable = 0usize;
    let mut redeliveries = 0usize;
    for (read, recs) in &reads {
        entries += recs.len();
        let journal = [recs.iter().map(check_entry).collect::<Vec<_>>()];
        unparsable += journal[0]
            .iter()
            .filter(|e| !matches!(e.seen, Seen::Message(_)))
            .count();
        // Nothing is unexpected here: G4 judges what should be in the journal.
        let report = journal_check::check(Expected::AtLeast(&[]), &journal);
        let mark = |at: At| journal_check::mark_at(&journal, at).cloned().unwrap_or_default();
        for finding in report.findings {
            let (at, after) = match finding {
                Finding::Reordered { at, after, .. } => (at, after),
                Finding::Duplicate { at, previous, .. } => {
                    if mark(previous) == mark(at) && mqtt.contains(&recs[at.index].id) {
                        redeliveries += 1;
                        continue;
                    }
                    (at, previous)
                }
                _ => continue,
            };
            let (m, prev) = (mark(at), mark(after));
            violations.push(json!({
                "read_op": read.index, "key": m.key, "producer": m.producer,
                "seq": m.seq, "offset": recs[at.index].offset, "after_seq": prev.seq,
                "after_offset": recs[after.index].offset,
            }));
        }
    }
    let count = violations.len();
    let verdict = if count > 0 { Verdict::Fail } else { Verdict::Pass };
    let summary = if count > 0 {
        format!("{count} out-of-order entries in {} reads", reads.len())
    } else {
        format!("{} reads, {entries} entries, all in producer order", reads.len())
    };
    violations.truncate(MAX_LISTED);
    CheckResult::new(
        "G3",
        NAME,
        verdict,
        summary,
        json!({"reads": reads.len(), "entries": entries, "unparsable_ids": unparsable,
               "mqtt_redeliveries_in_place": redeliveries, "violations": count, "examples": violations}),
    )
}

/// The message of a publish, from its id.
fn published_mark(p: &Pair) -> Option<Mark> {
    Mark::parse_id(p.invoke.value.get("id").and_then(Value::as_str)?)
}

/// G4: acknowledged messages are present after the final reads; duplicates and unexpected ids
/// are violations; `info` messages found are "recovered". Each key's final read is judged by
/// [`journal_check::check`] against the publishes to that key.
pub fn check_delivery(ops: &[Op]) -> CheckResult {
    const NAME: &str = "acknowledged messages present after final reads";
    let pubs = publishes(ops);
    if !pubs.iter().any(|p| p.outcome() == OpKind::Ok) {
        return not_run("G4", NAME, ops, "no publish was acknowledged");
    }
    // The last successful final read of each key.
    let mut final_reads: BTreeMap<String, Vec<Record>> = BTreeMap::new();
    for (read, recs) in journal_reads(ops) {
        if read.f == "final-read" {
            final_reads.insert(read.key.clone().unwrap_or_default(), recs);
        }
    }
    let published_keys: BTreeSet<String> = pubs.iter().filter_map(|p| p.invoke.key.clone()).collect();
    let unread: Vec<&String> = published_keys
        .iter()
        .filter(|k| !final_reads.contains_key(*k))
        .collect();

    let mut sent: HashMap<String, Vec<Sent>> = HashMap::new();
    for p in &pubs {
        if let Some(mark) = published_mark(p) {
            let outcome = match p.outcome() {
                OpKind::Ok => Outcome::Acked,
                OpKind::Fail => Outcome::Failed,
                _ => Outcome::Unknown,
            };
            let key = p.invoke.key.clone().unwrap_or_default();
            sent.entry(key).or_default().push(Sent { mark, outcome });
        }
    }
    let mut present: HashSet<Mark> = HashSet::new();
    let mut lost_marks: HashSet<Mark> = HashSet::new();
    let mut copies: BTreeMap<String, usize> = BTreeMap::new();
    let mut unexpected: BTreeSet<String> = BTreeSet::new();
    for (key, recs) in &final_reads {
        let journal = [recs.iter().map(check_entry).collect::<Vec<_>>()];
        let sent = sent.get(key).map(Vec::as_slice).unwrap_or(&[]);
        let report = journal_check::check(Expected::Exactly(sent), &journal);
        present.extend(report.present.into_iter().map(|(mark, _)| mark));
        for finding in report.findings {
            match finding {
                Finding::Lost { mark } => {
                    lost_marks.insert(mark);
                }
                Finding::Duplicate { at, .. } => {
                    *copies.entry(recs[at.index].id.clone()).or_insert(1) += 1;
                }
                Finding::Unexpected { at } | Finding::Invalid { at, .. } => {
                    unexpected.insert(recs[at.index].id.clone());
                }
                Finding::Reordered { .. } | Finding::OffsetConflict { .. } => {}
            }
        }
    }
    let (mut ok, mut info, mut fail) = (0usize, 0usize, 0usize);
    let (mut lost, mut recovered, mut failed_present) = (Vec::new(), 0usize, Vec::new());
    for p in &pubs {
        let (Some(id), Some(mark)) = (
            p.invoke.value.get("id").and_then(Value::as_str),
            published_mark(p),
        ) else {
            continue;
        };
        let seen = present.contains(&mark);
        match p.outcome() {
            OpKind::Ok => {
                ok += 1;
                if lost_marks.contains(&mark) {
                    lost.push(json!({"id": id, "op": p.invoke.index, "node": p.invoke.node}));
                }
            }
            OpKind::Fail => {
                fail += 1;
                if seen {
                    failed_present.push(json!({"id": id, "op": p.invoke.index, "error": p.completion.as_ref().and_then(|c| c.error.clone())}));
                }
            }
            _ => {
                info += 1;
                if seen {
                    recovered += 1;
                }
            }
        }
    }
    let mqtt = mqtt_ids(ops);
    let mqtt_redelivered = copies.keys().filter(|id| mqtt.contains(*id)).count();
    let mut duplicates: Vec<Value> = copies
        .iter()
        .filter(|(id, _)| !mqtt.contains(*id))
        .map(|(id, n)| json!({"id": id, "copies": n}))
        .collect();
    let unexpected: Vec<String> = unexpected.into_iter().collect();
    let n_present = present.len() + unexpected.len();

    let counts = json!({
        "acknowledged": ok, "failed": fail, "unknown_outcome": info,
        "lost": lost.len(), "duplicates": duplicates.len(), "recovered": recovered,
        "failed_but_present": failed_present.len(), "unexpected": unexpected.len(),
        "mqtt_redelivered": mqtt_redelivered,
        "keys_unread": unread.len(), "present": n_present,
    });
    let violated =
        !lost.is_empty() || !duplicates.is_empty() || !failed_present.is_empty() || !unexpected.is_empty();
    let verdict = if violated {
        Verdict::Fail
    } else if !unread.is_empty() {
        Verdict::Unknown
    } else {
        Verdict::Pass
    };
    let summary = format!(
        "{ok} acknowledged, {} lost, {} duplicated, {recovered} of {info} unknown recovered, {} failed-but-present, {} unexpected{}",
        lost.len(),
        duplicates.len(),
        failed_present.len(),
        unexpected.len(),
        if unread.is_empty() {
            String::new()
        } else {
            format!(", {} keys never read back", unread.len())
        }
    );
    lost.truncate(MAX_LISTED);
    duplicates.truncate(MAX_LISTED);
    failed_present.truncate(MAX_LISTED);
    let unexpected: Vec<&String> = unexpected.iter().take(MAX_LISTED).collect();
    CheckResult::new(
        "G4",
        NAME,
        verdict,
        summary,
        json!({"counts": counts, "lost": lost, "duplicates": duplicates,
               "failed_but_present": failed_present, "unexpected": unexpected, "keys_unread": unread}),
    )
}

/// `offsets-stable`: no offset of a key's journal holds two different messages across all
/// reads of that key (during the run and final). Judged by [`journal_check::check`] on every
/// ok read of the key at once; only its [`Finding::OffsetConflict`]s count here (order, loss
/// and duplicates are G3's and G4's).
pub fn check_offsets(ops: &[Op]) -> CheckResult {
    const ID: &str = "offsets-stable";
    const NAME: &str = "no journal offset holds two different messages across reads";
    let reads = journal_reads(ops);
    if reads.is_empty() {
        return not_run(ID, NAME, ops, "no journal read succeeded");
    }
    let mut by_key: BTreeMap<String, Vec<(Op, Vec<Record>)>> = BTreeMap::new();
    for (read, recs) in reads {
        by_key
            .entry(read.key.clone().unwrap_or_default())
            .or_default()
            .push((read, recs));
    }
    let (mut keys_compared, mut n_reads, mut conflicts) = (0usize, 0usize, 0usize);
    let mut keys_with_conflicts = 0usize;
    let mut examples = Vec::new();
    for (key, key_reads) in &by_key {
        n_reads += key_reads.len();
        if key_reads.len() < 2 {
            continue;
        }
        keys_compared += 1;
        let journal: Vec<Vec<Entry>> = key_reads
            .iter()
            .map(|(_, recs)| recs.iter().map(check_entry).collect())
            .collect();
        let report = journal_check::check(Expected::AtLeast(&[]), &journal);
        let before = conflicts;
        for finding in &report.findings {
            let Finding::OffsetConflict { offset, first, other } = finding else {
                continue;
            };
            conflicts += 1;
            if examples.len() < MAX_LISTED {
                let side = |at: At| {
                    let (read, recs) = &key_reads[at.read];
                    let r = &recs[at.index];
                    json!({"read_op": read.index, "f": read.f, "at_s": read.time as f64 / 1e9,
                           "id": r.id, "by": r.by, "epoch": r.epoch})
                };
                examples.push(
                    json!({"key": key, "offset": offset, "first": side(*first), "other": side(*other)}),
                );
            }
        }
        if conflicts > before {
            keys_with_conflicts += 1;
        }
    }
    if keys_compared == 0 {
        return not_run(ID, NAME, ops, "no key was read twice: nothing to compare");
    }
    let verdict = if conflicts > 0 {
        Verdict::Fail
    } else {
        Verdict::Pass
    };
    let summary = if conflicts > 0 {
        format!(
            "{conflicts} entries hold another message than an earlier read at the same offset, in {keys_with_conflicts} of {keys_compared} keys"
        )
    } else {
        format!("{n_reads} reads of {keys_compared} keys compared, every offset kept its message")
    };
    CheckResult::new(
        ID,
        NAME,
        verdict,
        summary,
        json!({"reads": n_reads, "keys_compared": keys_compared, "conflicts": conflicts,
               "keys_with_conflicts": keys_with_conflicts, "examples": examples}),
    )
}

/// (node, epoch) -> (first, last) processing time in Unix ms, of one partition.
type Spans = BTreeMap<(String, u64), (i64, i64)>;

/// G2: at most one node processes a partition at any instant (from processing records).
pub fn check_split_brain(ops: &[Op], start_unix_ms: i64) -> CheckResult {
    const NAME: &str = "one processing node per partition at a time";
    // Union of every read's records, deduplicated by (key, offset, id).
    let mut seen: BTreeSet<(String, u64, String)> = BTreeSet::new();
    // partition -> (node, epoch) -> (first, last) processing time.
    let mut intervals: BTreeMap<u32, Spans> = BTreeMap::new();
    let mut n_records = 0usize;
    for (read, recs) in journal_reads(ops) {
        let key = read.key.clone().unwrap_or_default();
        for r in recs {
            if !seen.insert((key.clone(), r.offset, r.id.clone())) {
                continue;
            }
            n_records += 1;
            let span = intervals
                .entry(r.partition)
                .or_default()
                .entry((r.by.clone(), r.epoch))
                .or_insert((r.at_ms, r.at_ms));
            span.0 = span.0.min(r.at_ms);
            span.1 = span.1.max(r.at_ms);
        }
    }
    if n_records == 0 {
        return not_run("G2", NAME, ops, "no processing records were read");
    }
    let mut violations = Vec::new();
    for (partition, spans) in &intervals {
        let list: Vec<_> = spans.iter().collect();
        for (i, (a, sa)) in list.iter().enumerate() {
            for (b, sb) in &list[i + 1..] {
                if a.0 == b.0 {
                    continue;
                }
                let same_epoch = a.1 == b.1;
                let overlap = sa.0 < sb.1 && sb.0 < sa.1;
                if same_epoch || overlap {
                    violations.push(json!({
                        "partition": partition,
                        "reason": if same_epoch { "two nodes processed at the same epoch" } else { "overlapping processing intervals" },
                        "a": {"node": a.0, "epoch": a.1, "from_ms": sa.0 - start_unix_ms, "to_ms": sa.1 - start_unix_ms},
                        "b": {"node": b.0, "epoch": b.1, "from_ms": sb.0 - start_unix_ms, "to_ms": sb.1 - start_unix_ms},
                    }));
                }
            }
        }
    }
    let count = violations.len();
    let moved = intervals
        .values()
        .filter(|s| s.keys().map(|(n, _)| n).collect::<BTreeSet<_>>().len() > 1)
        .count();
    let verdict = if count > 0 { Verdict::Fail } else { Verdict::Pass };
    let summary = if count > 0 {
        format!("{count} split-brain overlaps over {} partitions", intervals.len())
    } else {
        format!(
            "{n_records} records, {} partitions ({moved} changed processing node), no overlap",
            intervals.len()
        )
    };
    violations.truncate(MAX_LISTED);
    CheckResult::new(
        "G2",
        NAME,
        verdict,
        summary,
        json!({"records": n_records, "partitions": intervals.len(), "partitions_that_moved": moved,
               "violations": count, "examples": violations}),
    )
}

/// The nemesis' fault state at some time: who drops whom, and who is down.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultState {
    /// node -> nodes whose packets it drops.
    pub grudge: BTreeMap<String, BTreeSet<String>>,
    /// Nodes killed, paused or removed.
    pub down: BTreeSet<String>,
}

impl FaultState {
    /// Parses `extra.state` of a nemesis completion.
    pub fn from_value(v: &Value) -> FaultState {
        let mut s = FaultState::default();
        if let Some(g) = v.get("grudge").and_then(Value::as_object) {
            for (node, drops) in g {
                let set = drops
                    .as_array()
                    .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
                    .unwrap_or_default();
                s.grudge.insert(node.clone(), set);
            }
        }
        if let Some(d) = v.get("down").and_then(Value::as_array) {
            s.down = d.iter().filter_map(|x| x.as_str().map(String::from)).collect();
        }
        s
    }

    fn drops(&self, a: &str, b: &str) -> bool {
        self.grudge.get(a).is_some_and(|s| s.contains(b))
    }

    /// Nodes that are up and can exchange packets with a majority of `nodes` (themselves
    /// included).
    pub fn majority_connected(&self, nodes: &[String]) -> BTreeSet<String> {
        let majority = nodes.len() / 2 + 1;
        nodes
            .iter()
            .filter(|n| !self.down.contains(*n))
            .filter(|n| {
                nodes
                    .iter()
                    .filter(|m| !self.down.contains(*m))
                    .filter(|m| m == n || (!self.drops(n, m) && !self.drops(m, n)))
                    .count()
                    >= majority
            })
            .cloned()
            .collect()
    }
}

/// The fault state as a step function of time: (from time, state), sorted.
pub fn fault_timeline(ops: &[Op]) -> Vec<(u64, FaultState)> {
    let mut out = vec![(0, FaultState::default())];
    for op in ops {
        if op.process == Process::Nemesis && op.kind != OpKind::Invoke {
            if let Some(state) = op.extra.get("state") {
                out.push((op.time, FaultState::from_value(state)));
            }
        }
    }
    out
}

fn state_at(timeline: &[(u64, FaultState)], t: u64) -> &FaultState {
    let i = timeline.partition_point(|(from, _)| *from <= t);
    &timeline[i.saturating_sub(1)].1
}

/// G5: with a connected majority, each partition is available again within `bound_ns`.
///
/// `nodes` are the cluster's node ids; `end_ns` closes windows still open when the workload
/// stopped.
pub fn check_availability(ops: &[Op], nodes: &[String], bound_ns: u64, end_ns: u64) -> CheckResult {
    const NAME: &str = "partitions available again within the failover bound";
    let pubs = publishes(ops);
    if !pubs.iter().any(|p| p.outcome() == OpKind::Ok) {
        return not_run("G5", NAME, ops, "no publish was acknowledged");
    }
    // key -> partition, from acknowledgements and journal records.
    let mut partition_of: HashMap<String, u32> = HashMap::new();
    for p in &pubs {
        if let (Some(key), Some(part)) = (
            p.invoke.key.clone(),
            p.completion
                .as_ref()
                .and_then(|c| c.extra.get("partition"))
                .and_then(Value::as_u64),
        ) {
            partition_of.insert(key, part as u32);
        }
    }
    for (read, recs) in journal_reads(ops) {
        if let (Some(key), Some(r)) = (read.key.clone(), recs.first()) {
            partition_of.entry(key).or_insert(r.partition);
        }
    }
    let timeline = fault_timeline(ops);
    let mut by_partition: BTreeMap<u32, Vec<&Pair>> = BTreeMap::new();
    let mut minority_codes: BTreeMap<String, usize> = BTreeMap::new();
    let mut excluded = 0usize;
    for p in &pubs {
        let Some(part) = p.invoke.key.as_ref().and_then(|k| partition_of.get(k)) else {
            excluded += 1;
            continue;
        };
        let node = p.invoke.node.clone().unwrap_or_default();
        if !nodes.contains(&node) {
            // Not bound to a node (MQTT producers publish to the broker): not G5's business.
            continue;
        }
        let connected = state_at(&timeline, p.invoke.time).majority_connected(nodes);
        if connected.contains(&node) {
            by_partition.entry(*part).or_default().push(p);
        } else {
            excluded += 1;
            let code = match p.outcome() {
                OpKind::Ok => "ok".to_string(),
                _ => p
                    .completion
                    .as_ref()
                    .and_then(|c| c.error.clone())
                    .map(|e| e.split(':').next().unwrap_or("").to_string())
                    .unwrap_or_else(|| "no completion".into()),
            };
            *minority_codes.entry(code).or_default() += 1;
        }
    }
    let mut windows = Vec::new();
    let mut violations = Vec::new();
    let mut longest = 0u64;
    for (part, list) in &mut by_partition {
        list.sort_by_key(|p| p.invoke.time);
        // (first failing invocation, latest end of a failing operation since then)
        let mut failing: Option<(u64, u64)> = None;
        let mut close = |from: u64, proven_to: u64, seen_to: u64, open: bool| {
            let proven = proven_to.saturating_sub(from);
            longest = longest.max(proven);
            let w = json!({"partition": part, "from_s": from as f64 / 1e9,
                           "length_s": proven as f64 / 1e9, "failing_until_s": proven_to as f64 / 1e9,
                           "next_ok_s": (!open).then_some(seen_to as f64 / 1e9),
                           "still_open_at_end": open});
            if proven > bound_ns {
                violations.push(w.clone());
            }
            windows.push(w);
        };
        for p in list.iter() {
            let end = p.end_time().unwrap_or(p.invoke.time);
            if p.outcome() == OpKind::Ok {
                if let Some((from, until)) = failing.take() {
                    close(from, until, end, false);
                }
            } else {
                let (from, until) = failing.unwrap_or((p.invoke.time, end));
                failing = Some((from, until.max(end)));
            }
        }
        if let Some((from, until)) = failing {
            close(from, until, end_ns.max(until), true);
        }
    }
    let count = violations.len();
    let verdict = if count > 0 { Verdict::Fail } else { Verdict::Pass };
    let summary = format!(
        "{} partitions observed, {} unavailability windows, {count} longer than {:.1} s (longest {:.1} s)",
        by_partition.len(),
        windows.len(),
        bound_ns as f64 / 1e9,
        longest as f64 / 1e9
    );
    violations.truncate(MAX_LISTED);
    windows.sort_by(|a, b| {
        b["length_s"]
            .as_f64()
            .partial_cmp(&a["length_s"].as_f64())
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    windows.truncate(MAX_LISTED);
    CheckResult::new(
        "G5",
        NAME,
        verdict,
        summary,
        json!({"bound_s": bound_ns as f64 / 1e9, "partitions_observed": by_partition.len(),
               "violations": count, "examples": violations, "longest_windows": windows,
               "minority_side_outcomes": minority_codes, "ops_excluded_minority_or_unknown_partition": excluded}),
    )
}
