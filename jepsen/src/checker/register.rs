//! G1: the route register is linearizable, per key.
//!
//! The `register` workload treats each route name as an independent compare-and-set
//! register whose value is an integer encoded in the route (absent route = `null`):
//! - `read`: `GetRoute` (linearizable); ok value = the integer or `null`;
//! - `write v`: unconditional `PutRoute`;
//! - `cas [old, new]`: `PutRoute` with `expected_version` = the version the client saw with
//!   `old` (0 when `old` is `null`: create only if absent). Every write uses a fresh value, and
//!   every applied write gets its own version (a config log index), so "the version is still
//!   the one seen with `old`" is the same as "the value is still `old`".
//!
//! Model: [`CasRegister`]. History → per key [`wgl::Entry`]s: `ok` operations with their
//! return, `info` writes and cas without one (optional), `fail` operations and non-ok reads
//! dropped (they have no effect). Crashed writes whose value nobody observed are dropped too
//! ([`prune_unobserved_crashed`]: the answer is the same, the search much smaller). Each key is
//! searched separately (P-compositionality).
//!
//! Beside linearizability, the checker verifies that a value is always seen with the same
//! version (a second witness that versions and values agree).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{json, Value};

use super::wgl::{self, Budget, Entry, Model, Outcome};
use super::{CheckResult, Verdict};
use crate::history::{pairs, Op, OpKind};

/// A compare-and-set register over optional integers, initially `None`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CasRegister(pub Option<u64>);

/// A register operation with its observed result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterOp {
    /// Read that returned this value.
    Read(Option<u64>),
    /// Unconditional write.
    Write(u64),
    /// Compare-and-set that succeeded (or, with unknown outcome, may have).
    Cas(Option<u64>, u64),
}

impl Model for CasRegister {
    type Op = RegisterOp;
    fn step(&self, op: &RegisterOp) -> Option<CasRegister> {
        match op {
            RegisterOp::Read(v) => (*v == self.0).then(|| self.clone()),
            RegisterOp::Write(v) => Some(CasRegister(Some(*v))),
            RegisterOp::Cas(old, new) => (*old == self.0).then_some(CasRegister(Some(*new))),
        }
    }
}

/// An integer or null from a JSON value (`{"value": ..}` objects are unwrapped).
fn opt_u64(v: &Value) -> Result<Option<u64>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("not a register value: {v}")),
        Value::Object(m) => opt_u64(m.get("value").unwrap_or(&Value::Null)),
        _ => Err(format!("not a register value: {v}")),
    }
}

/// Builds one key's search entries from the register operations of the history.
pub fn entries_by_key(ops: &[Op]) -> Result<BTreeMap<String, Vec<Entry<RegisterOp>>>, String> {
    let mut by_key: BTreeMap<String, Vec<Entry<RegisterOp>>> = BTreeMap::new();
    for pair in pairs(ops) {
        let inv = &pair.invoke;
        if !matches!(inv.f.as_str(), "read" | "write" | "cas") {
            continue;
        }
        let key = inv.key.clone().unwrap_or_default();
        let outcome = pair.outcome();
        let ret = match outcome {
            OpKind::Ok => pair.completion.as_ref().map(|c| c.index),
            OpKind::Info | OpKind::Invoke => None,
            OpKind::Fail => continue,
        };
        let op = match inv.f.as_str() {
            "read" => {
                if outcome != OpKind::Ok {
                    continue;
                }
                let value = &pair.completion.as_ref().expect("ok has a completion").value;
                RegisterOp::Read(opt_u64(value).map_err(|e| format!("op {}: {e}", inv.index))?)
            }
            "write" => RegisterOp::Write(
                opt_u64(&inv.value)
                    .map_err(|e| format!("op {}: {e}", inv.index))?
                    .ok_or_else(|| format!("op {}: write of null", inv.index))?,
            ),
            _ => {
                let arr = inv.value.as_array().filter(|a| a.len() == 2);
                let arr = arr.ok_or_else(|| format!("op {}: cas value must be [old, new]", inv.index))?;
                let old = opt_u64(&arr[0]).map_err(|e| format!("op {}: {e}", inv.index))?;
                let new = opt_u64(&arr[1])
                    .map_err(|e| format!("op {}: {e}", inv.index))?
                    .ok_or_else(|| format!("op {}: cas to null", inv.index))?;
                RegisterOp::Cas(old, new)
            }
        };
        by_key.entry(key).or_default().push(Entry {
            id: inv.index,
            call: inv.index,
            ret,
            op,
        });
    }
    Ok(by_key)
}

/// Drops crashed (`info`) writes and compare-and-sets whose new value no operation could
/// have observed: no `ok` read returned it and no compare-and-set expected it. This keeps the
/// answer and shrinks the search, which otherwise grows with every subset of crashed writes
/// (a partition that times out many writes would exhaust the budget: `unknown`).
///
/// Why the answer is the same: a linearization without the dropped operation is one with it
/// left out, which is allowed for a crashed operation. Conversely, take a linearization that
/// places a dropped `w` (new value `v`): the operation right after `w`, if any, must accept
/// state `v`; a read would return `v` and a compare-and-set would expect `v` (both excluded),
/// so it is a write, which ignores the state; removing `w` leaves every later state as it was,
/// and removing an operation only relaxes real-time order. Repeated until nothing changes, as
/// dropping a crashed compare-and-set may leave another write unobserved. Returns the kept
/// entries and how many were dropped.
pub fn prune_unobserved_crashed(mut entries: Vec<Entry<RegisterOp>>) -> (Vec<Entry<RegisterOp>>, usize) {
    let before = entries.len();
    loop {
        let mut observed: HashSet<u64> = HashSet::new();
        for e in &entries {
            match &e.op {
                RegisterOp::Read(Some(v)) if e.ret.is_some() => {
                    observed.insert(*v);
                }
                RegisterOp::Cas(Some(old), _) => {
                    observed.insert(*old);
                }
                _ => {}
            }
        }
        let n = entries.len();
        entries.retain(|e| {
            let new = match &e.op {
                RegisterOp::Write(v) | RegisterOp::Cas(_, v) => Some(*v),
                RegisterOp::Read(_) => None,
            };
            !(e.ret.is_none() && new.is_some_and(|v| !observed.contains(&v)))
        });
        if entries.len() == n {
            return (entries, before - n);
        }
    }
}

/// Values observed with more than one version (ok reads, writes and cas carry
/// `extra.version`).
fn version_conflicts(ops: &[Op]) -> Vec<Value> {
    let mut seen: HashMap<(String, u64), (u64, u64)> = HashMap::new();
    let mut conflicts = Vec::new();
    for pair in pairs(ops) {
        let Some(done) = pair.completion.as_ref().filter(|c| c.kind == OpKind::Ok) else {
            continue;
        };
        if !matches!(pair.invoke.f.as_str(), "read" | "write" | "cas") {
            continue;
        }
        let Some(version) = done.extra.get("version").and_then(Value::as_u64) else {
            continue;
        };
        let value = match pair.invoke.f.as_str() {
            "read" => opt_u64(&done.value).ok().flatten(),
            "write" => opt_u64(&pair.invoke.value).ok().flatten(),
            _ => pair.invoke.value.get(1).and_then(|v| opt_u64(v).ok().flatten()),
        };
        let Some(value) = value else { continue };
        let key = pair.invoke.key.clone().unwrap_or_default();
        match seen.get(&(key.clone(), value)) {
            Some(&(v, at)) if v != version => conflicts.push(json!({
                "key": key, "value": value, "versions": [v, version], "ops": [at, done.index],
            })),
            Some(_) => {}
            None => {
                seen.insert((key, value), (version, done.index));
            }
        }
    }
    conflicts
}

/// G1 over a whole history.
pub fn check(ops: &[Op], budget: Budget) -> CheckResult {
    const NAME: &str = "config register linearizable (per key, WGL)";
    let by_key = match entries_by_key(ops) {
        Ok(m) => m,
        Err(e) => {
            return CheckResult::new(
                "G1",
                NAME,
                Verdict::Unknown,
                format!("malformed history: {e}"),
                json!({}),
            )
        }
    };
    let ok_ops = by_key.values().flatten().filter(|e| e.ret.is_some()).count();
    if ok_ops == 0 {
        let unimplemented = ops
            .iter()
            .any(|o| o.error.as_deref().is_some_and(|e| e.contains("UNIMPLEMENTED")));
        let why = if unimplemented {
            "no register operation succeeded: the Routes service answered UNIMPLEMENTED"
        } else {
            "no register operation succeeded"
        };
        return CheckResult::new("G1", NAME, Verdict::NotRun, why, json!({ "keys": by_key.len() }));
    }
    let mut bad = Vec::new();
    let mut unknown = Vec::new();
    let mut steps_total = 0u64;
    let mut per_key = serde_json::Map::new();
    for (key, all) in &by_key {
        let info = all.iter().filter(|e| e.ret.is_none()).count();
        let (entries, pruned) = prune_unobserved_crashed(all.clone());
        let outcome = wgl::check(&CasRegister(None), &entries, budget);
        match &outcome {
            Outcome::Linearizable { steps } => {
                steps_total += steps;
                per_key.insert(
                    key.clone(),
                    json!({"ops": all.len(), "info": info, "info_unobserved_dropped": pruned, "result": "linearizable", "steps": steps}),
                );
            }
            Outcome::NotLinearizable(cx) => {
                per_key.insert(
                    key.clone(),
                    json!({"ops": all.len(), "info": info, "info_unobserved_dropped": pruned, "result": "not linearizable"}),
                );
                bad.push(json!({
                    "key": key,
                    "linearized_prefix": cx.linearized,
                    "state_after_prefix": cx.state,
                    "stuck_at_op": cx.stuck_at,
                    "stuck_op": cx.stuck_op,
                }));
            }
            Outcome::Unknown { steps, memo } => {
                per_key.insert(key.clone(), json!({"ops": all.len(), "info": info, "info_unobserved_dropped": pruned, "result": "unknown", "steps": steps, "memo": memo}));
                unknown.push(json!({"key": key, "steps": steps, "memo": memo}));
            }
        }
    }
    let conflicts = version_conflicts(ops);
    let verdict = if !bad.is_empty() || !conflicts.is_empty() {
        Verdict::Fail
    } else if !unknown.is_empty() {
        Verdict::Unknown
    } else {
        Verdict::Pass
    };
    let summary = match verdict {
        Verdict::Pass => format!("{} keys, {ok_ops} ok ops: linearizable", by_key.len()),
        Verdict::Unknown => format!(
            "{} of {} keys undecided (search budget exhausted)",
            unknown.len(),
            by_key.len()
        ),
        _ => format!(
            "{} of {} keys not linearizable, {} value/version conflicts",
            bad.len(),
            by_key.len(),
            conflicts.len()
        ),
    };
    CheckResult::new(
        "G1",
        NAME,
        verdict,
        summary,
        json!({
            "keys": by_key.len(),
            "ok_ops": ok_ops,
            "search_steps": steps_total,
            "not_linearizable": bad,
            "unknown": unknown,
            "version_conflicts": conflicts,
            "per_key": per_key,
        }),
    )
}
