//! Validation of the WGL search beyond hand-written fixtures:
//!
//! - a randomized cross-check against a brute-force oracle that tries every order of every
//!   small cas-register history (linearizable and not, with crashed operations), so a wrong
//!   backtracking or memoization step shows up as a disagreement; the same for the register
//!   checker's dropping of unobserved crashed writes;
//! - Knossos' own cas-register histories (`data/cas-register/{good,bad}/*.edn` of the
//!   jepsen-io/knossos repository), read straight from a checkout named by
//!   `KNOSSOS_CAS_REGISTER` (not vendored here):
//!   `KNOSSOS_CAS_REGISTER=/path/to/knossos/data/cas-register cargo test -p routemq-jepsen -- --ignored knossos`.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::register::{entries_by_key, prune_unobserved_crashed, CasRegister, RegisterOp};
use super::wgl::{self, Budget, Entry, Model};
use crate::history::{parse_lines, Op};

/// Brute force: is there an order of `entries` (every `ok` one, any subset of the crashed
/// ones) that respects real time and that the model accepts?
fn brute_force(state: &CasRegister, entries: &[Entry<RegisterOp>], done: &mut Vec<bool>) -> bool {
    if entries
        .iter()
        .zip(done.iter())
        .all(|(e, d)| *d || e.ret.is_none())
    {
        return true;
    }
    for i in 0..entries.len() {
        if done[i] {
            continue;
        }
        // i may go next only if no pending completed operation returned before i was called.
        let blocked = entries
            .iter()
            .zip(done.iter())
            .any(|(e, d)| !*d && e.ret.is_some_and(|r| r < entries[i].call));
        if blocked {
            continue;
        }
        if let Some(next) = state.step(&entries[i].op) {
            done[i] = true;
            let found = brute_force(&next, entries, done);
            done[i] = false;
            if found {
                return true;
            }
        }
    }
    false
}

fn random_value(rng: &mut StdRng) -> Option<u64> {
    match rng.random_range(0..4u64) {
        0 => None,
        v => Some(v),
    }
}

/// A random history of `n` operations on one register: events interleaved at random, some
/// operations never returning (crashed).
fn random_history(rng: &mut StdRng, n: usize) -> Vec<Entry<RegisterOp>> {
    let mut entries: Vec<Entry<RegisterOp>> = Vec::new();
    let mut in_flight: Vec<usize> = Vec::new();
    let mut clock = 0u64;
    let mut started = 0usize;
    while started < n || !in_flight.is_empty() {
        let start = started < n && (in_flight.is_empty() || rng.random_bool(0.5));
        if start {
            let op = match rng.random_range(0..3) {
                0 => RegisterOp::Read(random_value(rng)),
                1 => RegisterOp::Write(rng.random_range(1..4)),
                _ => RegisterOp::Cas(random_value(rng), rng.random_range(1..4)),
            };
            entries.push(Entry {
                id: started as u64,
                call: clock,
                ret: None,
                op,
            });
            in_flight.push(started);
            started += 1;
        } else {
            let k = rng.random_range(0..in_flight.len());
            let i = in_flight.swap_remove(k);
            // Reads that crash tell nothing and are dropped by the checker; writes may crash.
            let crashes = !matches!(entries[i].op, RegisterOp::Read(_)) && rng.random_bool(0.2);
            if !crashes {
                entries[i].ret = Some(clock);
            }
        }
        clock += 1;
    }
    entries
}

#[test]
fn wgl_agrees_with_brute_force_on_random_histories() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0fc4);
    let (mut yes, mut no) = (0, 0);
    for round in 0..3000 {
        let n = rng.random_range(1..8);
        let h = random_history(&mut rng, n);
        let expected = brute_force(&CasRegister(None), &h, &mut vec![false; h.len()]);
        let got = wgl::check(&CasRegister(None), &h, Budget::default());
        assert!(
            !matches!(got, wgl::Outcome::Unknown { .. }),
            "round {round}: a tiny history exhausted the budget"
        );
        assert_eq!(
            got.is_linearizable(),
            expected,
            "round {round}: {h:#?}\nWGL said {got:?}"
        );
        if expected {
            yes += 1;
        } else {
            no += 1;
        }
    }
    // Both kinds must be well represented, or the cross-check proves little.
    assert!(yes > 500 && no > 500, "{yes} linearizable, {no} not");
}

#[test]
fn dropping_unobserved_crashed_writes_never_changes_the_answer() {
    let mut rng = StdRng::seed_from_u64(0xd20f);
    let mut dropped_total = 0;
    for round in 0..3000 {
        let n = rng.random_range(1..8);
        let h = random_history(&mut rng, n);
        let expected = brute_force(&CasRegister(None), &h, &mut vec![false; h.len()]);
        let (kept, dropped) = prune_unobserved_crashed(h.clone());
        dropped_total += dropped;
        assert_eq!(kept.len() + dropped, h.len());
        let got = wgl::check(&CasRegister(None), &kept, Budget::default());
        assert_eq!(
            got.is_linearizable(),
            expected,
            "round {round}: {h:#?}\nkept {kept:#?}"
        );
    }
    assert!(
        dropped_total > 100,
        "the random histories must exercise the pruning: {dropped_total}"
    );
}

#[test]
fn many_crashed_writes_stay_decidable() {
    // A partition: 30 writes time out (never observed), all concurrent with each other and
    // with reads that keep returning the last acknowledged value.
    let mut h = vec![Entry {
        id: 0,
        call: 0,
        ret: Some(1),
        op: RegisterOp::Write(1),
    }];
    for i in 0..30u64 {
        h.push(Entry {
            id: 1 + i,
            call: 2 + i,
            ret: None,
            op: RegisterOp::Write(100 + i),
        });
    }
    for i in 0..30u64 {
        h.push(Entry {
            id: 100 + i,
            call: 40 + 2 * i,
            ret: Some(41 + 2 * i),
            op: RegisterOp::Read(Some(1)),
        });
    }
    let budget = Budget {
        max_steps: 200_000,
        max_memo: 20_000,
    };
    let raw = wgl::check(&CasRegister(None), &h, budget);
    assert!(
        !raw.is_linearizable(),
        "without pruning the search is hopeless: {raw:?}"
    );
    let (kept, dropped) = prune_unobserved_crashed(h.clone());
    assert_eq!(dropped, 30);
    assert!(wgl::check(&CasRegister(None), &kept, budget).is_linearizable());
    // One crashed write observed by a later read is kept, and must explain it.
    let mut seen = h.clone();
    seen.push(Entry {
        id: 500,
        call: 200,
        ret: Some(201),
        op: RegisterOp::Read(Some(117)),
    });
    let (kept, dropped) = prune_unobserved_crashed(seen);
    assert_eq!(dropped, 29);
    assert!(wgl::check(&CasRegister(None), &kept, budget).is_linearizable());
    // A read of a value that was never written at all is still caught.
    let mut bad = h;
    bad.push(Entry {
        id: 501,
        call: 200,
        ret: Some(201),
        op: RegisterOp::Read(Some(999)),
    });
    let (kept, _) = prune_unobserved_crashed(bad);
    assert!(matches!(
        wgl::check(&CasRegister(None), &kept, budget),
        wgl::Outcome::NotLinearizable(_)
    ));
}

/// One EDN value of the small subset Knossos' histories use: nil, integers, keywords,
/// strings and vectors of those.
fn edn_value(s: &str) -> Value {
    let s = s.trim();
    if s == "nil" {
        return Value::Null;
    }
    if let Ok(n) = s.parse::<i64>() {
        return json!(n);
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return Value::Array(split_top(inner).iter().map(|x| edn_value(x)).collect());
    }
    if let Some(kw) = s.strip_prefix(':') {
        return json!(kw);
    }
    json!(s.trim_matches('"'))
}

/// Splits on whitespace and commas (both are whitespace in EDN) outside brackets and strings.
fn split_top(s: &str) -> Vec<String> {
    let (mut parts, mut cur, mut depth, mut quoted) = (Vec::new(), String::new(), 0i32, false);
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            '[' | '{' if !quoted => depth += 1,
            ']' | '}' if !quoted => depth -= 1,
            _ => {}
        }
        if (c.is_whitespace() || c == ',') && depth == 0 && !quoted {
            parts.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    parts.push(cur);
    parts.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

/// A Knossos history (`[{:process 1, :type :invoke, :f :read, :value nil} ...]`) as ours.
/// Knossos' cas-register model accepts a read of `nil` in any state (an unknown read), so
/// such reads carry no information and are left out.
fn knossos_history(text: &str) -> Vec<Op> {
    // Comments out, then every top-level `{...}` is one operation (maps may span lines).
    let text: String = text
        .lines()
        .map(|l| l.split(';').next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join(" ");
    let mut maps = Vec::new();
    let (mut depth, mut from) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '{' => {
                if depth == 0 {
                    from = i + 1;
                }
                depth += 1;
            }
            '}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    maps.push(&text[from..i]);
                }
            }
            _ => {}
        }
    }
    let mut lines = Vec::new();
    for body in maps {
        let mut m = serde_json::Map::new();
        let tokens = split_top(body);
        for pair in tokens.chunks(2) {
            let v = pair.get(1).map_or(Value::Null, |v| edn_value(v));
            m.insert(pair[0].trim_start_matches(':').to_string(), v);
        }
        if m.get("process").and_then(Value::as_str).is_some() {
            m.insert("process".into(), json!("nemesis"));
        }
        // Knossos' times are not ours (and may repeat): positions order the history.
        m.remove("error");
        m.remove("time");
        m.remove("index");
        lines.push(Value::Object(m));
    }
    // Drop ok reads of nil together with their invocations (by process, in order).
    let mut drop = vec![false; lines.len()];
    for (i, l) in lines.iter().enumerate() {
        if l["f"] == "read" && l["type"] == "ok" && l["value"].is_null() {
            drop[i] = true;
            if let Some(j) = (0..i)
                .rev()
                .find(|&j| lines[j]["process"] == l["process"] && lines[j]["type"] == "invoke")
            {
                drop[j] = true;
            }
        }
    }
    let kept = lines
        .into_iter()
        .zip(drop)
        .filter(|(_, d)| !d)
        .map(|(l, _)| l.to_string());
    parse_lines(kept).expect("a Knossos history")
}

#[test]
fn knossos_edn_is_read_like_knossos_reads_it() {
    let h = knossos_history(
        "; comment\n[{:type :invoke, :process 1, :f :read, :value nil}\n\
         {:type :invoke, :process 101, :f :write, :value 3}\n\
         {:type :fail, :process 101, :f :write, :value 3, :error [:temporarily-unavailable nil]}\n\
         {:type :ok, :process 1, :f :read, :value 3}]\n{:process :nemesis, :type :info, :f :start}",
    );
    assert_eq!(h.len(), 5);
    // Commas are whitespace in EDN, and may be missing.
    let odd = knossos_history("[{:process 22  :type :invoke, :f :cas :value [1 2]}");
    assert_eq!(odd[0].value, json!([1, 2]));
    assert_eq!(odd[0].f, "cas");
    assert_eq!(h[3].value, json!(3));
    // This is Knossos' immediate-failure.edn: a failed write of 3 observed, from 0.
    let by_key = entries_by_key(&h).unwrap();
    let out = wgl::check(&CasRegister(Some(0)), &by_key[""], Budget::default());
    assert!(!out.is_linearizable(), "{out:?}");
}

/// Knossos checks these files with `(cas-register 0)`: every good one must be linearizable
/// and every bad one not.
#[test]
#[ignore = "needs a Knossos checkout: KNOSSOS_CAS_REGISTER=<knossos>/data/cas-register"]
fn knossos_cas_register_data() {
    let Some(dir) = std::env::var_os("KNOSSOS_CAS_REGISTER") else {
        panic!("set KNOSSOS_CAS_REGISTER to Knossos' data/cas-register directory");
    };
    let dir = std::path::PathBuf::from(dir);
    let mut checked = 0;
    for (kind, valid) in [("good", true), ("bad", false)] {
        let mut files: Vec<_> = std::fs::read_dir(dir.join(kind))
            .expect("good/ and bad/ directories")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "edn"))
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("readable");
            let by_key = entries_by_key(&knossos_history(&text)).expect("register ops");
            let entries = by_key.get("").map(Vec::as_slice).unwrap_or(&[]);
            let started = std::time::Instant::now();
            let out = wgl::check(&CasRegister(Some(0)), entries, Budget::default());
            eprintln!(
                "{kind}/{}: {} ops, {} in {:?}",
                file.file_name().unwrap_or_default().to_string_lossy(),
                entries.len(),
                match &out {
                    wgl::Outcome::Linearizable { .. } => "linearizable",
                    wgl::Outcome::NotLinearizable(_) => "not linearizable",
                    wgl::Outcome::Unknown { .. } => "unknown",
                },
                started.elapsed()
            );
            assert!(
                !matches!(out, wgl::Outcome::Unknown { .. }),
                "{}: budget exhausted",
                file.display()
            );
            assert_eq!(out.is_linearizable(), valid, "{}: {out:?}", file.display());
            // The register checker's pruning of unobserved crashed writes agrees.
            let (kept, _) = prune_unobserved_crashed(entries.to_vec());
            let pruned = wgl::check(&CasRegister(Some(0)), &kept, Budget::default());
            assert_eq!(pruned.is_linearizable(), valid, "{} (pruned)", file.display());
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} files in {}", dir.display());
}
