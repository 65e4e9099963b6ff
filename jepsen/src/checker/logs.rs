//! Node logs and exits: any log line containing `panicked` is a failure (a node must never
//! panic, whatever the nemesis did), and so is a node process that ended without the nemesis
//! killing it.
//!
//! Reads every `*.log` file of the run's `nodes/` directory; lists at most 20 lines.

use std::path::Path;

use serde_json::{json, Value};

use super::{CheckResult, Verdict};
use crate::history::{Op, OpKind, Process};

/// Node exits the nemesis recorded (`exited_by_themselves` in its completions) plus `more`.
pub fn exits(ops: &[Op], more: &[Value]) -> Vec<Value> {
    let mut out: Vec<Value> = ops
        .iter()
        .filter(|o| o.process == Process::Nemesis && o.kind != OpKind::Invoke)
        .filter_map(|o| o.value.get("exited_by_themselves").and_then(Value::as_array))
        .flatten()
        .cloned()
        .collect();
    out.extend(more.iter().cloned());
    out
}

/// Scans `dir` for `*.log` files and reports lines containing `panicked`; `exits` are node
/// processes that ended by themselves (see [`exits`]).
pub fn check_panics_and_exits(dir: &Path, exits: &[Value]) -> CheckResult {
    let mut result = check_panics(dir);
    if !exits.is_empty() {
        result.verdict = Verdict::Fail;
        // A node never sends itself SIGKILL: that comes from outside the node (the kernel's
        // OOM killer, or another process on the machine). Still a failure, named as such.
        let sigkill = exits
            .iter()
            .filter(|e| e["status"].as_str().is_some_and(|s| s.contains("SIGKILL")))
            .count();
        result.summary = format!(
            "{}; {} node exits not caused by the nemesis{}",
            result.summary,
            exits.len(),
            if sigkill > 0 {
                format!(" ({sigkill} by a SIGKILL the harness did not send: OOM killer or another process on the machine?)")
            } else {
                String::new()
            }
        );
    }
    result.details["exits"] = json!(exits);
    result
}

/// Scans `dir` for `*.log` files and reports lines containing `panicked`.
pub fn check_panics(dir: &Path) -> CheckResult {
    const NAME: &str = "no node panicked or exited by itself";
    let mut files = 0usize;
    let mut hits = Vec::new();
    let mut total = 0usize;
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.sort();
    for path in entries {
        if path.extension().and_then(|e| e.to_str()) != Some("log") {
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else { continue };
        files += 1;
        let text = String::from_utf8_lossy(&bytes);
        for (n, line) in text.lines().enumerate() {
            if line.contains("panicked") {
                total += 1;
                if hits.len() < 20 {
                    let name = path
                        .file_name()
                        .map(|f| f.to_string_lossy().to_string())
                        .unwrap_or_default();
                    hits.push(json!({"file": name, "line": n + 1, "text": line.chars().take(300).collect::<String>()}));
                }
            }
        }
    }
    if files == 0 {
        return CheckResult::new("panics", NAME, Verdict::Unknown, "no node logs found", json!({}));
    }
    let verdict = if total > 0 { Verdict::Fail } else { Verdict::Pass };
    CheckResult::new(
        "panics",
        NAME,
        verdict,
        format!("{files} logs, {total} lines with 'panicked'"),
        json!({"files": files, "lines": total, "examples": hits}),
    )
}
