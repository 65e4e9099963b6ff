//! `report.html`: one self-contained page (hand-written SVG, no scripts) with the verdict per
//! checker, counts, latency over time and throughput, nemesis windows shaded.
//!
//! Reading it: the top table is the verdict (green pass, red fail/unknown, grey not-run or
//! n/a; a "known limit" tag marks failures the suite expects today). In the plots, time runs
//! from the start of the history; shaded bands are fault windows, labelled with the fault.
//! Latency is per operation (log scale) coloured by outcome: ok green, fail red, info orange.
//! Throughput counts completions per second by outcome.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use serde_json::Value;

use crate::history::{pairs, Op, OpKind, Process};

/// A fault window: [from, to] in seconds since the start, and its label.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Start (s).
    pub from: f64,
    /// End (s).
    pub to: f64,
    /// The fault and its targets.
    pub label: String,
    /// True for the closing phase (heal, settle, final reads), drawn in grey.
    pub closing: bool,
}

/// Fault windows from the nemesis entries: a `start` completion opens one, the next `stop`
/// or `heal-all` completion closes it.
pub fn windows(ops: &[Op]) -> Vec<Window> {
    let end = ops.last().map(|o| o.time as f64 / 1e9).unwrap_or(0.0);
    let mut out = Vec::new();
    let mut open: Option<(f64, String)> = None;
    for op in ops.iter().filter(|o| o.process == Process::Nemesis) {
        let t = op.time as f64 / 1e9;
        match (op.f.as_str(), op.kind) {
            ("start", OpKind::Invoke) => {
                open = Some((
                    t,
                    op.value
                        .get("fault")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_string(),
                ));
            }
            ("start", _) => {
                if let Some((_, label)) = open.as_mut() {
                    let target = ["isolated", "killed", "paused", "removed", "minority", "bridge"]
                        .iter()
                        .find_map(|k| op.value.get(*k).map(|v| format!("{k} {}", compact(v))));
                    if let Some(t) = target {
                        *label = format!("{label}: {t}");
                    }
                    if op.error.is_some() {
                        *label = format!("{label} (failed)");
                    }
                }
            }
            ("stop" | "heal-all", k) if k != OpKind::Invoke => {
                if let Some((from, label)) = open.take() {
                    out.push(Window {
                        from,
                        to: t,
                        label,
                        closing: false,
                    });
                }
            }
            _ => {}
        }
    }
    if let Some((from, label)) = open {
        out.push(Window {
            from,
            to: end,
            label,
            closing: false,
        });
    }
    let closing = ops
        .iter()
        .find(|o| o.process == Process::Nemesis && o.f == "heal-all" && o.kind == OpKind::Invoke);
    if let Some(h) = closing {
        out.push(Window {
            from: h.time as f64 / 1e9,
            to: end,
            label: "end of workload: heal all, settle, final reads".into(),
            closing: true,
        });
    }
    out
}

fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(compact).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const W: f64 = 1100.0;
const H: f64 = 300.0;
const ML: f64 = 60.0;
const MR: f64 = 20.0;
const MT: f64 = 20.0;
const MB: f64 = 40.0;

fn x_of(t: f64, t_max: f64) -> f64 {
    ML + (W - ML - MR) * (t / t_max.max(1e-9))
}

fn color(kind: OpKind) -> &'static str {
    match kind {
        OpKind::Ok => "#2e9d4e",
        OpKind::Fail => "#d23c3c",
        _ => "#f0a020",
    }
}

fn frame(svg: &mut String, t_max: f64, windows: &[Window], y_label: &str) {
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        svg,
        r##"<rect x="0" y="0" width="{W}" height="{H}" fill="#fff"/>"##
    );
    for w in windows {
        let (a, b) = (x_of(w.from, t_max), x_of(w.to, t_max));
        let (fill, ink) = if w.closing {
            ("#999999", "#555555")
        } else {
            ("#8888ff", "#5555aa")
        };
        let _ = write!(
            svg,
            r##"<rect x="{a:.1}" y="{MT}" width="{:.1}" height="{:.1}" fill="{fill}" fill-opacity="0.18"><title>{}</title></rect><text x="{:.1}" y="{:.1}" fill="{ink}" font-size="10">{}</text>"##,
            (b - a).max(1.0),
            H - MT - MB,
            esc(&w.label),
            a + 2.0,
            MT + 10.0,
            esc(&w
                .label
                .chars()
                .take(((b - a) / 5.5).max(4.0) as usize)
                .collect::<String>())
        );
    }
    let _ = write!(
        svg,
        r##"<line x1="{ML}" y1="{y}" x2="{x2}" y2="{y}" stroke="#333"/><line x1="{ML}" y1="{MT}" x2="{ML}" y2="{y}" stroke="#333"/>"##,
        y = H - MB,
        x2 = W - MR
    );
    let step = nice_step(t_max / 10.0);
    let mut t = 0.0;
    while t <= t_max + 1e-9 {
        let x = x_of(t, t_max);
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" y1="{y}" x2="{x:.1}" y2="{y2}" stroke="#333"/><text x="{x:.1}" y="{ty}" text-anchor="middle">{t}</text>"##,
            y = H - MB,
            y2 = H - MB + 4.0,
            ty = H - MB + 16.0
        );
        t += step;
    }
    let _ = write!(
        svg,
        r##"<text x="{x}" y="{y}" text-anchor="middle">time since start (s)</text><text x="14" y="{my}" transform="rotate(-90 14 {my})" text-anchor="middle">{}</text>"##,
        esc(y_label),
        x = (ML + W - MR) / 2.0,
        y = H - 6.0,
        my = (MT + H - MB) / 2.0
    );
}

fn nice_step(raw: f64) -> f64 {
    let raw = raw.max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if raw <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

/// Latency scatter (log scale), one point per client operation.
pub fn latency_svg(ops: &[Op], windows: &[Window]) -> String {
    let t_max = ops.last().map(|o| o.time as f64 / 1e9).unwrap_or(1.0).max(1.0);
    let mut pts: Vec<(f64, f64, OpKind, String)> = pairs(ops)
        .into_iter()
        .filter_map(|p| {
            let c = p.completion.as_ref()?;
            let lat_ms = (c.time.saturating_sub(p.invoke.time)) as f64 / 1e6;
            Some((
                p.invoke.time as f64 / 1e9,
                lat_ms.max(0.01),
                c.kind,
                p.invoke.f.clone(),
            ))
        })
        .collect();
    // Keep every fail/info; thin out ok points beyond 15000.
    let oks = pts.iter().filter(|p| p.2 == OpKind::Ok).count();
    if oks > 15_000 {
        let keep_every = oks / 15_000 + 1;
        let mut i = 0usize;
        pts.retain(|p| {
            if p.2 != OpKind::Ok {
                return true;
            }
            i += 1;
            i.is_multiple_of(keep_every)
        });
    }
    let (lo, hi) = (0.1f64, pts.iter().map(|p| p.1).fold(10.0f64, f64::max) * 1.5);
    let y_of = |ms: f64| {
        let f = (ms.max(lo).ln() - lo.ln()) / (hi.ln() - lo.ln());
        H - MB - f * (H - MT - MB)
    };
    let mut svg = String::new();
    frame(&mut svg, t_max, windows, "latency (ms, log)");
    let mut tick = 0.1f64;
    while tick <= hi {
        let y = y_of(tick);
        let _ = write!(
            svg,
            r##"<line x1="{ML}" y1="{y:.1}" x2="{x2}" y2="{y:.1}" stroke="#eee"/><text x="{tx}" y="{ty:.1}" text-anchor="end">{tick}</text>"##,
            x2 = W - MR,
            tx = ML - 4.0,
            ty = y + 4.0
        );
        tick *= 10.0;
    }
    for (t, ms, kind, f) in &pts {
        let _ = write!(
            svg,
            r#"<circle cx="{:.1}" cy="{:.1}" r="1.6" fill="{}" fill-opacity="0.6"><title>{} {} {:.1} ms</title></circle>"#,
            x_of(*t, t_max),
            y_of(*ms),
            color(*kind),
            esc(f),
            kind.as_str(),
            ms
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Completions per second by outcome.
pub fn throughput_svg(ops: &[Op], windows: &[Window]) -> String {
    let t_max = ops.last().map(|o| o.time as f64 / 1e9).unwrap_or(1.0).max(1.0);
    let bins = t_max.ceil() as usize + 1;
    let mut counts: BTreeMap<&'static str, Vec<u32>> = BTreeMap::new();
    for kind in [OpKind::Ok, OpKind::Fail, OpKind::Info] {
        counts.insert(kind.as_str(), vec![0; bins]);
    }
    for op in ops
        .iter()
        .filter(|o| matches!(o.process, Process::Client(_)) && o.kind != OpKind::Invoke)
    {
        let b = ((op.time as f64 / 1e9) as usize).min(bins - 1);
        if let Some(v) = counts.get_mut(op.kind.as_str()) {
            v[b] += 1;
        }
    }
    let max = counts.values().flatten().copied().max().unwrap_or(1).max(1) as f64 * 1.1;
    let y_of = |n: f64| H - MB - (n / max) * (H - MT - MB);
    let mut svg = String::new();
    frame(&mut svg, t_max, windows, "completions / s");
    let step = nice_step(max / 5.0);
    let mut v = 0.0;
    while v <= max {
        let y = y_of(v);
        let _ = write!(
            svg,
            r##"<line x1="{ML}" y1="{y:.1}" x2="{x2}" y2="{y:.1}" stroke="#eee"/><text x="{tx}" y="{ty:.1}" text-anchor="end">{v}</text>"##,
            x2 = W - MR,
            tx = ML - 4.0,
            ty = y + 4.0
        );
        v += step;
    }
    for (kind, series) in [
        (OpKind::Ok, &counts["ok"]),
        (OpKind::Fail, &counts["fail"]),
        (OpKind::Info, &counts["info"]),
    ] {
        let points: Vec<String> = series
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{:.1},{:.1}", x_of(i as f64 + 0.5, t_max), y_of(*n as f64)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"><title>{}</title></polyline>"#,
            color(kind),
            points.join(" "),
            kind.as_str()
        );
    }
    svg.push_str("</svg>");
    svg
}

fn verdict_style(verdict: &str) -> &'static str {
    match verdict {
        "pass" => "background:#d7f5dd",
        "fail" | "unknown" => "background:#f9d0d0",
        _ => "background:#eee",
    }
}

/// Writes `report.html` into `dir`.
pub fn write(dir: &Path, test: &str, ops: &[Op], results: &Value, _start_unix_ms: i64) -> Result<()> {
    let ws = windows(ops);
    let mut html = String::new();
    let _ = write!(
        html,
        r#"<!doctype html><html><head><meta charset="utf-8"><title>{t}</title><style>
body{{font-family:sans-serif;margin:20px;max-width:1150px}} table{{border-collapse:collapse;margin:8px 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}} th{{background:#f3f3f3}}
pre{{background:#f7f7f7;padding:8px;overflow-x:auto;font-size:12px}} .tag{{font-size:11px;background:#ffe9a8;padding:1px 5px;border-radius:3px}}
</style></head><body><h1>{t}</h1>"#,
        t = esc(test)
    );
    let status = results["workload_status"].as_str().unwrap_or("");
    let _ = write!(
        html,
        "<p>Started {} (Unix ms {}). Workload: <b>{}</b>. Nemesis: <b>{}</b>. Workload status: <b>{}</b>. Valid: <b>{}</b>; no regression against expectations: <b>{}</b>.</p>",
        esc(&crate::runner::timestamp(results["started_at_unix_ms"].as_i64().unwrap_or(0) / 1000)),
        results["started_at_unix_ms"],
        esc(results["workload"].as_str().unwrap_or("")),
        esc(results["nemesis"].as_str().unwrap_or("")),
        esc(status),
        results["valid"],
        results["expected_ok"],
    );
    if status != "ran" {
        let _ = write!(html, "<p style=\"color:#b00\"><b>The workload could not run: {}</b>. Its checkers say <i>not-run</i>; that is not a pass.</p>", esc(status));
    }
    let fr = &results["final_reads"];
    if let Some(late) = fr["missing_after_first_round"].as_u64().filter(|n| *n > 0) {
        let _ = write!(
            html,
            "<p>Final reads: {late} acknowledged messages were missing from the first read after healing; {} ({} rounds of re-reads, every 2 s).</p>",
            match fr["converged_after_s"].as_f64() {
                Some(t) => format!("all had arrived {t:.1} s later"),
                None => format!("{} were still missing when the final reads gave up", fr["missing_at_end"]),
            },
            fr["rounds"]
        );
    }
    html.push_str("<h2>Verdicts</h2><table><tr><th>check</th><th>what</th><th>verdict</th><th>expected</th><th>summary</th></tr>");
    for c in results["checks"].as_array().into_iter().flatten() {
        let verdict = c["verdict"].as_str().unwrap_or("");
        let known = c["known_limit"].as_str();
        let _ = write!(
            html,
            "<tr><td><b>{}</b></td><td>{}</td><td style=\"{}\"><b>{}</b></td><td>{}{}</td><td>{}</td></tr>",
            esc(c["id"].as_str().unwrap_or("")),
            esc(c["name"].as_str().unwrap_or("")),
            verdict_style(verdict),
            esc(verdict),
            esc(c["expected"].as_str().unwrap_or("")),
            known
                .map(|k| format!(" <span class=\"tag\" title=\"{}\">known limit</span>", esc(k)))
                .unwrap_or_default(),
            esc(c["summary"].as_str().unwrap_or("")),
        );
    }
    html.push_str("</table>");
    // Every known limit of this test, with its reason and whether it showed in this run.
    for c in results["checks"].as_array().into_iter().flatten() {
        if let Some(k) = c["known_limit"].as_str() {
            let seen = matches!(c["verdict"].as_str(), Some("fail" | "unknown"));
            let _ = write!(
                html,
                "<p><span class=\"tag\">known limit</span> <b>{}</b> ({}): {}</p>",
                esc(c["id"].as_str().unwrap_or("")),
                if seen {
                    "seen in this run"
                } else {
                    "not seen in this run"
                },
                esc(k)
            );
        }
    }

    html.push_str(
        "<h2>Operations</h2><table><tr><th>f</th><th>invoked</th><th>ok</th><th>fail</th><th>info</th></tr>",
    );
    if let Some(m) = results["counts_by_f"].as_object() {
        for (f, c) in m {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(f),
                c["invoke"],
                c["ok"],
                c["fail"],
                c["info"]
            );
        }
    }
    html.push_str("</table><p>ok = took place; fail = certainly did not; info = unknown (e.g. timeout), never counted as failed.</p>");

    html.push_str("<h2>Latency</h2>");
    html.push_str(&latency_svg(ops, &ws));
    html.push_str("<p><span style=\"color:#2e9d4e\">&#9679; ok</span> <span style=\"color:#d23c3c\">&#9679; fail</span> <span style=\"color:#f0a020\">&#9679; info</span>; blue bands: fault windows; grey band: heal all, settle and final reads.</p>");
    html.push_str("<h2>Throughput</h2>");
    html.push_str(&throughput_svg(ops, &ws));

    html.push_str("<h2>Nemesis</h2><table><tr><th>from (s)</th><th>to (s)</th><th>fault</th></tr>");
    for w in ws.iter().filter(|w| !w.closing) {
        let _ = write!(
            html,
            "<tr><td>{:.1}</td><td>{:.1}</td><td>{}</td></tr>",
            w.from,
            w.to,
            esc(&w.label)
        );
    }
    html.push_str("</table>");

    html.push_str("<h2>Details</h2>");
    for c in results["checks"].as_array().into_iter().flatten() {
        let _ = write!(
            html,
            "<details><summary>{} — {}</summary><pre>{}</pre></details>",
            esc(c["id"].as_str().unwrap_or("")),
            esc(c["verdict"].as_str().unwrap_or("")),
            esc(&serde_json::to_string_pretty(&c["details"]).unwrap_or_default())
        );
    }
    let _ = write!(
        html,
        "<details><summary>settings, final heal, binary</summary><pre>{}</pre></details>",
        esc(&serde_json::to_string_pretty(&serde_json::json!({
            "settings": results["settings"], "final_heal": results["final_heal"], "binary": results["binary"],
            "final_reads": results["final_reads"],
            "nodes_exited_by_themselves": results["nodes_exited_by_themselves"],
        }))
        .unwrap_or_default())
    );
    html.push_str("<p>Files: <a href=\"history.jsonl\">history.jsonl</a>, <a href=\"results.json\">results.json</a>, node logs in <a href=\"nodes/\">nodes/</a>.</p></body></html>");
    std::fs::write(dir.join("report.html"), html)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Recorder;
    use serde_json::json;

    #[test]
    fn windows_pair_start_and_stop() {
        let rec = Recorder::new(None).unwrap();
        let s = rec
            .record(Op::new(OpKind::Invoke, Process::Nemesis, "start").value(json!({"fault": "kill-one"})));
        rec.record(Op::completion_of(&s, OpKind::Info).value(json!({"fault": "kill-one", "killed": ["n2"]})));
        let t = rec.record(Op::new(OpKind::Invoke, Process::Nemesis, "stop"));
        rec.record(Op::completion_of(&t, OpKind::Info));
        let ws = windows(&rec.ops());
        assert_eq!(ws.len(), 1);
        assert!(!ws[0].closing);
        assert_eq!(ws[0].label, "kill-one: killed n2");
        let svg = latency_svg(&rec.ops(), &ws);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        let svg = throughput_svg(&rec.ops(), &ws);
        assert!(svg.contains("polyline"));
    }
}
