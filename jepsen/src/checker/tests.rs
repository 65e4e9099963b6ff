//! Honesty tests: every checker must be seen to fail on a history that violates its
//! guarantee, and to pass on known-good histories. The cas-register fixtures in
//! `jepsen/fixtures/cas-register/{good,bad}/` are hand-written, modelled on Knossos' test data.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::stream::{
    check_availability, check_delivery, check_offsets, check_order, check_split_brain, message_id,
    parse_message_id,
};
use super::wgl::Budget;
use super::{logs, register, Verdict};
use crate::history::{load, Op, OpKind, Process, Recorder};

fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/cas-register")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "expected fixtures in {}", dir.display());
    files
}

#[test]
fn known_good_register_histories_are_linearizable() {
    for file in fixtures("good") {
        let ops = load(&file).unwrap();
        let result = register::check(&ops, Budget::default());
        assert_eq!(result.verdict, Verdict::Pass, "{}: {result:#?}", file.display());
    }
}

#[test]
fn known_bad_register_histories_are_caught() {
    for file in fixtures("bad") {
        let ops = load(&file).unwrap();
        let result = register::check(&ops, Budget::default());
        assert_eq!(result.verdict, Verdict::Fail, "{}: {result:#?}", file.display());
        assert!(!result.details["not_linearizable"].as_array().unwrap().is_empty());
    }
}

#[test]
fn the_counterexample_points_at_the_bad_read() {
    let file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/cas-register/bad/read-of-unwritten-value.jsonl");
    let result = register::check(&load(&file).unwrap(), Budget::default());
    let cx = &result.details["not_linearizable"][0];
    // The read of 3 was invoked at line 3 (index 2), not the later read of 4.
    assert_eq!(cx["stuck_at_op"], json!(2), "{cx}");
}

#[test]
fn unknown_counts_as_failure_not_pass() {
    let file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/cas-register/good/concurrent-read-write.jsonl");
    let tiny = Budget {
        max_steps: 2,
        max_memo: 2,
    };
    let result = register::check(&load(&file).unwrap(), tiny);
    assert_eq!(result.verdict, Verdict::Unknown);
    assert!(result.verdict.is_failure());
}

#[test]
fn value_version_conflicts_fail_g1() {
    let rec = Recorder::new(None).unwrap();
    let w = rec.record(
        Op::new(OpKind::Invoke, Process::Client(0), "write")
            .key("r")
            .value(json!(1)),
    );
    rec.record(
        Op::completion_of(&w, OpKind::Ok)
            .value(json!(1))
            .extra(json!({"version": 10})),
    );
    let r = rec.record(Op::new(OpKind::Invoke, Process::Client(1), "read").key("r"));
    rec.record(
        Op::completion_of(&r, OpKind::Ok)
            .value(json!(1))
            .extra(json!({"version": 11})),
    );
    let result = register::check(&rec.ops(), Budget::default());
    assert_eq!(result.verdict, Verdict::Fail, "{result:#?}");
}

#[test]
fn register_without_any_ok_is_not_run() {
    let rec = Recorder::new(None).unwrap();
    let w = rec.record(
        Op::new(OpKind::Invoke, Process::Client(0), "write")
            .key("r")
            .value(json!(1)),
    );
    rec.record(Op::completion_of(&w, OpKind::Fail).error("UNIMPLEMENTED: Routes/PutRoute"));
    let result = register::check(&rec.ops(), Budget::default());
    assert_eq!(result.verdict, Verdict::NotRun);
    assert!(result.summary.contains("UNIMPLEMENTED"), "{}", result.summary);
}

// ---- stream histories -----------------------------------------------------------------

/// Builds stream histories: publishes by producers and journal reads.
struct Stream {
    rec: std::sync::Arc<Recorder>,
}

impl Stream {
    fn new() -> Stream {
        Stream {
            rec: Recorder::new(None).unwrap(),
        }
    }

    /// A publish of (key, producer, seq) on `node` with outcome `kind`; partition 7, processed
    /// by n1 at epoch 3 when ok.
    fn publish(&self, key: &str, producer: u64, seq: u64, node: &str, kind: OpKind) {
        let id = message_id(key, producer, seq);
        let inv = self.rec.record(
            Op::new(OpKind::Invoke, Process::Client(producer), "publish")
                .key(key)
                .node(node)
                .value(json!({"key": key, "producer": producer, "seq": seq, "id": id})),
        );
        let mut done = Op::completion_of(&inv, kind);
        if kind == OpKind::Ok {
            done = done.extra(json!({"partition": 7, "processed_by": "n1", "epoch": 3}));
        } else {
            done = done.error("UNAVAILABLE: no quorum");
        }
        self.rec.record(done);
    }

    /// An ok journal read of `key` returning `entries` = (id, node, epoch, at_ms).
    fn read(&self, f: &str, key: &str, entries: &[(&str, &str, u64, i64)]) {
        let inv = self
            .rec
            .record(Op::new(OpKind::Invoke, Process::Client(1000), f).key(key));
        let value: Vec<Value> = entries
            .iter()
            .enumerate()
            .map(|(o, (id, by, ep, at))| json!({"o": o, "id": id, "by": by, "ep": ep, "at": at, "p": 7}))
            .collect();
        self.rec
            .record(Op::completion_of(&inv, OpKind::Ok).value(Value::Array(value)));
    }

    fn nemesis(&self, state: Value) {
        let inv = self
            .rec
            .record(Op::new(OpKind::Invoke, Process::Nemesis, "start"));
        self.rec
            .record(Op::completion_of(&inv, OpKind::Info).extra(json!({ "state": state })));
    }

    fn ops(&self) -> Vec<Op> {
        self.rec.ops()
    }
}

fn good_stream() -> Stream {
    let s = Stream::new();
    s.publish("k1", 0, 1, "n1", OpKind::Ok);
    s.publish("k1", 0, 2, "n1", OpKind::Ok);
    s.publish("k1", 1, 1, "n2", OpKind::Info);
    s.publish("k1", 0, 3, "n1", OpKind::Ok);
    s.read(
        "read-journal",
        "k1",
        &[("k1:0:1", "n1", 3, 100), ("k1:0:2", "n1", 3, 110)],
    );
    s.read(
        "final-read",
        "k1",
        &[
            ("k1:0:1", "n1", 3, 100),
            ("k1:0:2", "n1", 3, 110),
            ("k1:1:1", "n1", 3, 115),
            ("k1:0:3", "n1", 3, 120),
        ],
    );
    s
}

#[test]
fn message_ids_round_trip() {
    assert_eq!(
        parse_message_id(&message_id("dev-1", 17, 42)),
        Some(("dev-1".into(), 17, 42))
    );
    assert_eq!(parse_message_id("garbage"), None);
}

#[test]
fn a_good_stream_history_passes_every_checker() {
    let ops = good_stream().ops();
    let nodes: Vec<String> = (1..=5).map(|i| format!("n{i}")).collect();
    assert_eq!(check_order(&ops).verdict, Verdict::Pass);
    let g4 = check_delivery(&ops);
    assert_eq!(g4.verdict, Verdict::Pass, "{g4:#?}");
    assert_eq!(g4.details["counts"]["recovered"], json!(1));
    assert_eq!(check_split_brain(&ops, 0).verdict, Verdict::Pass);
    let g5 = check_availability(&ops, &nodes, 1_000_000_000, ops.last().unwrap().time);
    assert_eq!(g5.verdict, Verdict::Pass, "{g5:#?}");
}

#[test]
fn a_lost_write_is_caught() {
    let s = Stream::new();
    s.publish("k1", 0, 1, "n1", OpKind::Ok);
    s.publish("k1", 0, 2, "n1", OpKind::Ok);
    s.read("final-read", "k1", &[("k1:0:1", "n1", 3, 100)]);
    let g4 = check_delivery(&s.ops());
    assert_eq!(g4.verdict, Verdict::Fail, "{g4:#?}");
    assert_eq!(g4.details["counts"]["lost"], json!(1));
    assert_eq!(g4.details["lost"][0]["id"], json!("k1:0:2"));
}

#[test]
fn duplicates_and_failed_but_present_are_caught() {
    let s = Stream::new();
    s.publish("k1", 0, 1, "n1", OpKind::Ok);
    s.publish("k1", 0, 2, "n1", OpKind::Fail);
    s.read(
        "final-read",
        "k1",
        &[
            ("k1:0:1", "n1", 3, 100),
            ("k1:0:1", "n1", 3, 101),
            ("k1:0:2", "n1", 3, 102),
        ],
    );
    let g4 = check_delivery(&s.ops());
    assert_eq!(g4.verdict, Verdict::Fail);
    assert_eq!(g4.details["counts"]["duplicates"], json!(1));
    assert_eq!(g4.details["counts"]["failed_but_present"], json!(1));
}

#[test]
fn a_key_never_read_back_is_unknown_not_pass() {
    let s = Stream::new();
    s.publish("k1", 0, 1, "n1", OpKind::Ok);
    s.publish("k2", 0, 1, "n1", OpKind::Ok);
    s.read("final-read", "k1", &[("k1:0:1", "n1", 3, 100)]);
    assert_eq!(check_delivery(&s.ops()).verdict, Verdict::Unknown);
}

#[test]
fn a_reordering_is_caught() {
    let s = good_stream();
    s.read(
        "read-journal",
        "k1",
        &[("k1:0:2", "n1", 3, 110), ("k1:0:1", "n1", 3, 111)],
    );
    let g3 = check_order(&s.ops());
    assert_eq!(g3.verdict, Verdict::Fail, "{g3:#?}");
    assert_eq!(g3.details["examples"][0]["seq"], json!(1));
    // A duplicate of one sequence number is not "strictly increasing" either.
    let d = Stream::new();
    d.read(
        "final-read",
        "k1",
        &[("k1:0:1", "n1", 3, 110), ("k1:0:1", "n1", 3, 111)],
    );
    assert_eq!(check_order(&d.ops()).verdict, Verdict::Fail);
}

#[test]
fn a_split_brain_overlap_is_caught() {
    // n1 processes partition 7 at epoch 3 from 100 to 200 ms; n2 at epoch 4 at 150 ms.
    let s = Stream::new();
    s.read(
        "final-read",
        "k1",
        &[
            ("k1:0:1", "n1", 3, 100),
            ("k1:0:2", "n2", 4, 150),
            ("k1:0:3", "n1", 3, 200),
        ],
    );
    let g2 = check_split_brain(&s.ops(), 0);
    assert_eq!(g2.verdict, Verdict::Fail, "{g2:#?}");
    assert_eq!(
        g2.details["examples"][0]["reason"],
        json!("overlapping processing intervals")
    );
    // Two nodes at the same epoch, even at disjoint times.
    let e = Stream::new();
    e.read(
        "final-read",
        "k1",
        &[("k1:0:1", "n1", 3, 100), ("k1:0:2", "n2", 3, 150)],
    );
    assert_eq!(check_split_brain(&e.ops(), 0).verdict, Verdict::Fail);
    // A clean handoff (n1 until 100, n2 from 150 at a later epoch) passes.
    let h = Stream::new();
    h.read(
        "final-read",
        "k1",
        &[("k1:0:1", "n1", 3, 100), ("k1:0:2", "n2", 4, 150)],
    );
    assert_eq!(check_split_brain(&h.ops(), 0).verdict, Verdict::Pass);
}

#[test]
fn a_long_unavailability_window_is_caught_only_with_a_majority() {
    let nodes: Vec<String> = (1..=5).map(|i| format!("n{i}")).collect();
    let s = Stream::new();
    s.publish("k1", 0, 1, "n2", OpKind::Ok);
    s.publish("k1", 0, 2, "n2", OpKind::Info);
    s.publish("k1", 2, 3, "n2", OpKind::Fail);
    s.publish("k1", 2, 4, "n2", OpKind::Ok);
    let ops = s.ops();
    // The window runs from the invocation of seq 2 to the completion of seq 4: 5 entries.
    let long = check_availability(&ops, &nodes, 1, ops.last().unwrap().time);
    assert_eq!(long.verdict, Verdict::Fail, "{long:#?}");
    let short = check_availability(&ops, &nodes, 1_000_000_000_000, ops.last().unwrap().time);
    assert_eq!(short.verdict, Verdict::Pass);

    // The same failures from a client bound to a node cut off from the majority are not held
    // against G5.
    let m = Stream::new();
    m.nemesis(json!({"grudge": {"n2": ["n1", "n3", "n4", "n5"], "n1": ["n2"], "n3": ["n2"], "n4": ["n2"], "n5": ["n2"]}, "down": []}));
    m.publish("k1", 0, 1, "n1", OpKind::Ok);
    m.publish("k1", 3, 1, "n2", OpKind::Info);
    m.publish("k1", 4, 1, "n2", OpKind::Info);
    m.publish("k1", 0, 2, "n1", OpKind::Ok);
    let ops = m.ops();
    let g5 = check_availability(&ops, &nodes, 1, ops.last().unwrap().time);
    assert_eq!(g5.verdict, Verdict::Pass, "{g5:#?}");
    assert_eq!(g5.details["minority_side_outcomes"]["UNAVAILABLE"], json!(2));
}

#[test]
fn stream_checkers_say_not_run_when_the_service_is_missing() {
    let rec = Recorder::new(None).unwrap();
    let p = rec.record(
        Op::new(OpKind::Invoke, Process::Client(0), "publish")
            .key("k1")
            .value(json!({"id": "k1:0:1"})),
    );
    rec.record(Op::completion_of(&p, OpKind::Fail).error("UNIMPLEMENTED: Messages/Publish"));
    let ops = rec.ops();
    for result in [
        check_order(&ops),
        check_delivery(&ops),
        check_split_brain(&ops, 0),
        check_availability(&ops, &[], 1, 1),
    ] {
        assert_eq!(result.verdict, Verdict::NotRun, "{result:#?}");
        assert!(result.summary.contains("UNIMPLEMENTED"), "{}", result.summary);
    }
}

#[test]
fn a_panic_in_a_node_log_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("n1.log"), "INFO started\n").unwrap();
    assert_eq!(logs::check_panics(dir.path()).verdict, Verdict::Pass);
    std::fs::write(
        dir.path().join("n2.log"),
        "INFO ok\nthread 'tokio-runtime-worker' panicked at node/src/ring.rs:10:5:\n",
    )
    .unwrap();
    let result = logs::check_panics(dir.path());
    assert_eq!(result.verdict, Verdict::Fail);
    assert_eq!(result.details["examples"][0]["file"], json!("n2.log"));
}

#[test]
fn mqtt_redeliveries_are_counted_not_failed_but_grpc_duplicates_are() {
    let s = Stream::new();
    let inv = s.rec.record(
        Op::new(OpKind::Invoke, Process::Client(9), "publish")
            .key("k1")
            .node("mqtt")
            .value(json!({"key": "k1", "producer": 9, "seq": 1, "id": "k1:9:1", "via": "mqtt"})),
    );
    s.rec.record(Op::completion_of(&inv, OpKind::Ok));
    s.read(
        "final-read",
        "k1",
        &[("k1:9:1", "n1", 3, 100), ("k1:9:1", "n1", 3, 101)],
    );
    let ops = s.ops();
    assert_eq!(check_order(&ops).verdict, Verdict::Pass);
    let g4 = check_delivery(&ops);
    assert_eq!(g4.verdict, Verdict::Pass, "{g4:#?}");
    assert_eq!(g4.details["counts"]["mqtt_redelivered"], json!(1));
    // A redelivery that goes back in the sequence is a reordering all the same.
    let b = Stream::new();
    for seq in 1..=2 {
        let inv = b.rec.record(
            Op::new(OpKind::Invoke, Process::Client(9), "publish")
                .key("k1")
                .value(json!({"id": format!("k1:9:{seq}"), "via": "mqtt"})),
        );
        b.rec.record(Op::completion_of(&inv, OpKind::Ok));
    }
    b.read(
        "final-read",
        "k1",
        &[
            ("k1:9:1", "n1", 3, 100),
            ("k1:9:2", "n1", 3, 101),
            ("k1:9:1", "n1", 3, 102),
        ],
    );
    assert_eq!(check_order(&b.ops()).verdict, Verdict::Fail);
}

#[test]
fn a_node_that_exits_by_itself_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("n1.log"), "INFO started\n").unwrap();
    let rec = Recorder::new(None).unwrap();
    let s = rec.record(Op::new(OpKind::Invoke, Process::Nemesis, "stop"));
    rec.record(
        Op::completion_of(&s, OpKind::Info)
            .value(json!({"exited_by_themselves": [{"node": "n4", "status": "exit status: 1"}]})),
    );
    let exits = logs::exits(&rec.ops(), &[]);
    assert_eq!(exits.len(), 1);
    let result = logs::check_panics_and_exits(dir.path(), &exits);
    assert_eq!(result.verdict, Verdict::Fail, "{result:#?}");
    assert_eq!(
        logs::check_panics_and_exits(dir.path(), &[]).verdict,
        Verdict::Pass
    );
}

#[test]
fn g5_judges_the_span_seen_failing_not_the_gap_until_someone_tries_again() {
    let nodes: Vec<String> = (1..=5).map(|i| format!("n{i}")).collect();
    // Times in ns: ok at 0-1 s; a publish fails from 2 s to 5 s (timeout); nobody tries the key
    // again until 40 s, which succeeds.
    let s = 1_000_000_000u64;
    let lines = [
        (0, 0, "invoke", 1),
        (1, s, "ok", 1),
        (2, 2 * s, "invoke", 2),
        (3, 5 * s, "info", 2),
        (4, 40 * s, "invoke", 3),
        (5, 41 * s, "ok", 3),
    ]
    .map(|(i, t, ty, seq)| {
        let extra = if ty == "ok" { r#","extra":{"partition":7}"# } else { "" };
        format!(
            r#"{{"index":{i},"time":{t},"type":"{ty}","process":{seq},"f":"publish","key":"k1","node":"n1","value":{{"id":"k1:{seq}:1"}}{extra}}}"#
        )
    });
    let ops = crate::history::parse_lines(lines).unwrap();
    let ten = check_availability(&ops, &nodes, 10 * s, 50 * s);
    assert_eq!(ten.verdict, Verdict::Pass, "{ten:#?}");
    assert_eq!(ten.details["longest_windows"][0]["length_s"], json!(3.0));
    assert_eq!(ten.details["longest_windows"][0]["next_ok_s"], json!(41.0));
    let two = check_availability(&ops, &nodes, 2 * s, 50 * s);
    assert_eq!(two.verdict, Verdict::Fail, "a 3 s window breaks a 2 s bound");
}

#[test]
fn offsets_that_keep_their_messages_pass() {
    let ops = good_stream().ops();
    let r = check_offsets(&ops);
    assert_eq!(r.verdict, Verdict::Pass, "{r:#?}");
    assert_eq!(r.details["keys_compared"], json!(1));
    assert_eq!(r.details["conflicts"], json!(0));
}

#[test]
fn a_history_merged_back_in_front_shifts_offsets_and_is_caught() {
    // Read during the run: offsets 0, 1. After a failover and the merge of the old owner's
    // history, the final read has a new message at offset 0 and the old ones one further.
    let s = Stream::new();
    s.publish("k1", 0, 1, "n1", OpKind::Ok);
    s.publish("k1", 0, 2, "n1", OpKind::Ok);
    s.publish("k1", 1, 1, "n2", OpKind::Ok);
    s.read(
        "read-journal",
        "k1",
        &[("k1:0:1", "n1", 3, 100), ("k1:0:2", "n1", 3, 110)],
    );
    s.read(
        "final-read",
        "k1",
        &[
            ("k1:1:1", "n2", 4, 105),
            ("k1:0:1", "n1", 3, 100),
            ("k1:0:2", "n1", 3, 110),
        ],
    );
    let ops = s.ops();
    let r = check_offsets(&ops);
    assert_eq!(r.verdict, Verdict::Fail, "{r:#?}");
    assert_eq!(r.details["conflicts"], json!(2));
    assert_eq!(r.details["keys_with_conflicts"], json!(1));
    let ex = &r.details["examples"][0];
    assert_eq!((ex["key"].clone(), ex["offset"].clone()), (json!("k1"), json!(0)));
    assert_eq!(ex["first"]["id"], json!("k1:0:1"));
    assert_eq!(ex["other"]["id"], json!("k1:1:1"));
    assert_eq!(ex["other"]["f"], json!("final-read"));
    // The other checkers do not see it: order and delivery are intact.
    assert_eq!(check_order(&ops).verdict, Verdict::Pass);
    assert_eq!(check_delivery(&ops).verdict, Verdict::Pass);
}

#[test]
fn a_new_owner_starting_empty_reuses_offsets_and_is_caught() {
    // A failover to an owner without the history: offset 0 is given to a new message.
    let s = Stream::new();
    s.publish("k1", 0, 1, "n1", OpKind::Ok);
    s.publish("k1", 0, 2, "n3", OpKind::Ok);
    s.read("read-journal", "k1", &[("k1:0:1", "n1", 3, 100)]);
    s.read("read-journal", "k1", &[("k1:0:2", "n3", 4, 200)]);
    let r = check_offsets(&s.ops());
    assert_eq!(r.verdict, Verdict::Fail, "{r:#?}");
    assert_eq!(r.details["conflicts"], json!(1));
    // Only across reads of the same key: another key's offsets are its own.
    let s = Stream::new();
    s.publish("k1", 0, 1, "n1", OpKind::Ok);
    s.publish("k2", 0, 1, "n1", OpKind::Ok);
    s.read("read-journal", "k1", &[("k1:0:1", "n1", 3, 100)]);
    s.read("read-journal", "k2", &[("k2:0:1", "n1", 3, 100)]);
    s.read("final-read", "k1", &[("k1:0:1", "n1", 3, 100)]);
    s.read("final-read", "k2", &[("k2:0:1", "n1", 3, 100)]);
    assert_eq!(check_offsets(&s.ops()).verdict, Verdict::Pass);
}

#[test]
fn offsets_are_not_run_without_two_reads_of_a_key() {
    let s = Stream::new();
    s.publish("k1", 0, 1, "n1", OpKind::Ok);
    assert_eq!(check_offsets(&s.ops()).verdict, Verdict::NotRun);
    s.read("final-read", "k1", &[("k1:0:1", "n1", 3, 100)]);
    let r = check_offsets(&s.ops());
    assert_eq!(r.verdict, Verdict::NotRun, "{r:#?}");
    assert!(!r.verdict.is_failure());
}
