//! The history: every operation of a test as `invoke` then `ok` / `fail` / `info`, with one
//! monotonic clock, written as JSON lines (`history.jsonl`).
//!
//! What the completion types mean (the same as Jepsen's):
//! - `ok`: the operation took place, and its value is what the system answered.
//! - `fail`: the operation certainly did not take place (e.g. a NotLeader answer before any
//!   proposal, a compare-and-set whose guard did not hold, `UNIMPLEMENTED`). Checkers may
//!   assume it had no effect.
//! - `info`: the outcome is unknown (timeout, connection lost, `UNAVAILABLE` after the
//!   request may have been applied). It may or may not have taken effect, at any time after
//!   its invocation, and is never counted as failed. The process that issued it is "crashed":
//!   its next operation is issued under a new process id, so a process never has two
//!   operations in flight.
//!
//! The nemesis records its faults as `invoke`/`info` pairs of process `"nemesis"`.
//!
//! Invariants: `index` is the position in the history, and `time` (ns since the test started,
//! from one `Instant`) is assigned under the same lock, so index order is real-time order.
//! Non-goals: histories across several harness processes, wall-clock times (the journal's
//! processing records carry wall-clock ms; the run records the offset between the two clocks).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// Invocation or completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// The operation starts.
    Invoke,
    /// It took place.
    Ok,
    /// It certainly did not take place.
    Fail,
    /// Unknown outcome.
    Info,
}

impl OpKind {
    /// Name as written in the history.
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Invoke => "invoke",
            OpKind::Ok => "ok",
            OpKind::Fail => "fail",
            OpKind::Info => "info",
        }
    }
}

/// Who performed an operation: a logical client process or the nemesis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Process {
    /// A client process (one operation at a time).
    Client(u64),
    /// The fault injector.
    Nemesis,
}

impl Serialize for Process {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Process::Client(p) => s.serialize_u64(*p),
            Process::Nemesis => s.serialize_str("nemesis"),
        }
    }
}

impl<'de> Deserialize<'de> for Process {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Number(n) => n
                .as_u64()
                .map(Process::Client)
                .ok_or_else(|| serde::de::Error::custom("process must be a non-negative integer")),
            Value::String(s) if s == "nemesis" => Ok(Process::Nemesis),
            other => Err(serde::de::Error::custom(format!("bad process {other}"))),
        }
    }
}

/// One history entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// Position in the history (0-based).
    #[serde(default)]
    pub index: u64,
    /// Nanoseconds since the test started (monotonic).
    #[serde(default)]
    pub time: u64,
    /// `invoke`, `ok`, `fail` or `info`.
    #[serde(rename = "type")]
    pub kind: OpKind,
    /// Who.
    pub process: Process,
    /// The function: `read`, `write`, `cas`, `publish`, `read-journal`, `final-read`, `start`,
    /// `stop`, ...
    pub f: String,
    /// The independent key the operation is about, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Arguments (invoke) or results (ok).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub value: Value,
    /// Node the client process is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Why it failed, or why its outcome is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Workload metadata that checkers may use but the model does not: a route's version,
    /// the partition, node and epoch that processed a message, latency breakdowns.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub extra: Value,
}

impl Op {
    /// A new entry; `index` and `time` are assigned when it is recorded.
    pub fn new(kind: OpKind, process: Process, f: &str) -> Op {
        Op {
            index: 0,
            time: 0,
            kind,
            process,
            f: f.to_string(),
            key: None,
            value: Value::Null,
            node: None,
            error: None,
            extra: Value::Null,
        }
    }

    /// The (unrecorded) completion of `invoke`: same process, function, key and node.
    pub fn completion_of(invoke: &Op, kind: OpKind) -> Op {
        let mut op = Op::new(kind, invoke.process, &invoke.f);
        op.key = invoke.key.clone();
        op.node = invoke.node.clone();
        op
    }

    /// Builder: key.
    pub fn key(mut self, key: impl Into<String>) -> Op {
        self.key = Some(key.into());
        self
    }

    /// Builder: value.
    pub fn value(mut self, value: Value) -> Op {
        self.value = value;
        self
    }

    /// Builder: node.
    pub fn node(mut self, node: impl Into<String>) -> Op {
        self.node = Some(node.into());
        self
    }

    /// Builder: error.
    pub fn error(mut self, error: impl Into<String>) -> Op {
        self.error = Some(error.into());
        self
    }

    /// Builder: extra metadata.
    pub fn extra(mut self, extra: Value) -> Op {
        self.extra = extra;
        self
    }

    /// True for a client operation's invocation.
    pub fn is_client_invoke(&self) -> bool {
        self.kind == OpKind::Invoke && matches!(self.process, Process::Client(_))
    }
}

/// Records a history: assigns index and time, keeps it in memory and appends it to a file.
/// Shared by all client tasks and the nemesis.
pub struct Recorder {
    start: Instant,
    start_unix_ms: i64,
    inner: Mutex<RecorderInner>,
}

struct RecorderInner {
    ops: Vec<Op>,
    file: Option<BufWriter<File>>,
}

impl Recorder {
    /// A recorder whose clock starts now; writes to `path` when given.
    pub fn new(path: Option<&Path>) -> Result<Arc<Recorder>> {
        let file = match path {
            Some(p) => Some(BufWriter::new(
                File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
            )),
            None => None,
        };
        Ok(Arc::new(Recorder {
            start: Instant::now(),
            start_unix_ms: unix_ms_now(),
            inner: Mutex::new(RecorderInner {
                ops: Vec::new(),
                file,
            }),
        }))
    }

    /// Nanoseconds since the test started.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Wall-clock Unix ms when the clock started: `unix_ms = start_unix_ms + time / 1e6`.
    pub fn start_unix_ms(&self) -> i64 {
        self.start_unix_ms
    }

    /// Records an entry, assigning its index and time, and returns the recorded copy.
    pub fn record(&self, mut op: Op) -> Op {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        op.index = inner.ops.len() as u64;
        op.time = self.now_ns();
        if let Some(file) = inner.file.as_mut() {
            // A failing write must not stop the test; the in-memory history stays complete.
            if let Ok(line) = serde_json::to_string(&op) {
                let _ = writeln!(file, "{line}");
            }
        }
        inner.ops.push(op.clone());
        op
    }

    /// Records the completion of `invoke` with `kind`, `value` and `error`.
    pub fn complete(&self, invoke: &Op, kind: OpKind, value: Value, error: Option<String>) -> Op {
        let mut op = Op::completion_of(invoke, kind);
        op.value = value;
        op.error = error;
        self.record(op)
    }

    /// A copy of the history so far.
    pub fn ops(&self) -> Vec<Op> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).ops.clone()
    }

    /// Flushes the file.
    pub fn flush(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(file) = inner.file.as_mut() {
            let _ = file.flush();
        }
    }
}

/// Wall clock in Unix milliseconds.
pub fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Reads a history written by [`Recorder`], or a hand-written one: lines starting with `#`
/// or `;` and blank lines are skipped, and entries without `index`/`time` get their line
/// position as both.
pub fn load(path: &Path) -> Result<Vec<Op>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    parse_lines(BufReader::new(file).lines().map_while(Result::ok))
        .with_context(|| format!("in {}", path.display()))
}

/// Parses history lines (see [`load`]).
pub fn parse_lines<I: IntoIterator<Item = String>>(lines: I) -> Result<Vec<Op>> {
    let mut ops = Vec::new();
    for (n, line) in lines.into_iter().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        let raw: Value = serde_json::from_str(trimmed).with_context(|| format!("line {}", n + 1))?;
        let has_index = raw.get("index").is_some();
        let has_time = raw.get("time").is_some();
        let mut op: Op = serde_json::from_value(raw).with_context(|| format!("line {}", n + 1))?;
        let position = ops.len() as u64;
        if !has_index {
            op.index = position;
        }
        if !has_time {
            op.time = position;
        }
        ops.push(op);
    }
    Ok(ops)
}

/// An invocation with its completion (`None` if the history ended first: treated as `info`).
#[derive(Debug, Clone)]
pub struct Pair {
    /// The invocation.
    pub invoke: Op,
    /// Its completion.
    pub completion: Option<Op>,
}

impl Pair {
    /// Completion type; a missing completion counts as `info`.
    pub fn outcome(&self) -> OpKind {
        self.completion.as_ref().map(|c| c.kind).unwrap_or(OpKind::Info)
    }

    /// Time of the completion, if any.
    pub fn end_time(&self) -> Option<u64> {
        self.completion.as_ref().map(|c| c.time)
    }
}

/// Pairs every client invocation with the next completion of the same process, in history
/// order. Nemesis entries are skipped.
pub fn pairs(ops: &[Op]) -> Vec<Pair> {
    let mut open: HashMap<Process, usize> = HashMap::new();
    let mut out: Vec<Pair> = Vec::new();
    for op in ops {
        if op.process == Process::Nemesis {
            continue;
        }
        if op.kind == OpKind::Invoke {
            open.insert(op.process, out.len());
            out.push(Pair {
                invoke: op.clone(),
                completion: None,
            });
        } else if let Some(i) = open.remove(&op.process) {
            out[i].completion = Some(op.clone());
        }
    }
    out
}

/// Counts of entries by type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Invocations.
    pub invoke: u64,
    /// `ok` completions.
    pub ok: u64,
    /// `fail` completions.
    pub fail: u64,
    /// `info` completions (and invocations never completed).
    pub info: u64,
}

/// Counts client operations (nemesis entries excluded), optionally only those with `f`.
pub fn counts(ops: &[Op], f: Option<&str>) -> Counts {
    let mut c = Counts::default();
    for pair in pairs(ops) {
        if f.is_some_and(|f| pair.invoke.f != f) {
            continue;
        }
        c.invoke += 1;
        match pair.outcome() {
            OpKind::Ok => c.ok += 1,
            OpKind::Fail => c.fail += 1,
            _ => c.info += 1,
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ops_round_trip_as_json_lines() {
        let rec = Recorder::new(None).unwrap();
        let inv = rec.record(
            Op::new(OpKind::Invoke, Process::Client(3), "write")
                .key("r1")
                .value(json!(5)),
        );
        let done = rec.complete(&inv, OpKind::Info, Value::Null, Some("timeout".into()));
        let nem = rec.record(Op::new(OpKind::Invoke, Process::Nemesis, "start"));
        let lines: Vec<String> = [&inv, &done, &nem]
            .iter()
            .map(|o| serde_json::to_string(o).unwrap())
            .collect();
        assert!(lines[0].contains(r#""type":"invoke""#), "{}", lines[0]);
        assert!(lines[2].contains(r#""process":"nemesis""#), "{}", lines[2]);
        let back = parse_lines(lines).unwrap();
        assert_eq!(back, vec![inv, done.clone(), nem]);
        assert!(back[0].time <= back[1].time);
        assert_eq!(done.index, 1);
    }

    #[test]
    fn hand_written_lines_get_positions_and_pair_up() {
        let ops = parse_lines(
            [
                "# a comment",
                r#"{"process":0,"type":"invoke","f":"write","value":1}"#,
                r#"{"process":1,"type":"invoke","f":"read"}"#,
                r#"{"process":0,"type":"ok","f":"write","value":1}"#,
            ]
            .map(String::from),
        )
        .unwrap();
        assert_eq!(ops.iter().map(|o| o.index).collect::<Vec<_>>(), vec![0, 1, 2]);
        let pairs = pairs(&ops);
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[0].outcome(), OpKind::Ok);
        assert_eq!(pairs[1].outcome(), OpKind::Info, "never completed counts as info");
        assert_eq!(
            counts(&ops, None),
            Counts {
                invoke: 2,
                ok: 1,
                fail: 0,
                info: 1
            }
        );
    }
}
