//! The verifier: compares what a bench run sent with what reached the journals.
//!
//! Per journal key, given the messages sent to it (acknowledged or not) and the key's journal
//! entries in offset order, [`check_key`] counts (by the one rule of [`crate::journal_check`]):
//! - **lost**: acknowledged but absent;
//! - **duplicates**: entries beyond the first of one message (the journal should suppress them
//!   by message id);
//! - **reordered**: entries whose sequence number is lower than one already seen from the same
//!   producer for the same bench key (a later-sent message was processed first); duplicates
//!   are not counted again here;
//! - **unacked_present**: sent, not acknowledged (failed or no answer), yet present: allowed
//!   (at-least-once), reported for information;
//! - **unexpected**: entries that claim to belong to this run but match nothing sent to this
//!   key (a corrupt payload, a message in the wrong key's journal);
//! - **foreign**: entries of other runs or other producers, ignored.
//!
//! [`summarize`] adds the keys up into a verdict: `fail` on any lost, duplicate or unexpected
//! entry, or any reordered one when order is checked (ordered routes); `pass` otherwise.

use std::time::Duration;

use routemq_proto::v1::JournalEntry;
use serde::Serialize;

use super::payload::{decode, parse_message_id, Header};
use crate::journal_check::{self, At, Entry, Expected, Finding, Mark, Outcome, Processing, Seen};

/// Most problem descriptions kept per key.
pub const MAX_EXAMPLES: usize = 10;
/// Most keys with problems listed in a report.
pub const MAX_PROBLEM_KEYS: usize = 50;

/// A message sent to a journal key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// Its identity.
    pub header: Header,
    /// Whether the producer got an acknowledgement.
    pub acked: bool,
}

/// What one key's journal holds compared with what was sent to it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KeyCheck {
    /// The journal key.
    pub key: String,
    /// Messages sent to this key.
    pub sent: u64,
    /// Of which acknowledged.
    pub acked: u64,
    /// Journal entries of this run.
    pub entries: u64,
    /// Acknowledged messages found (once or more).
    pub present: u64,
    /// Acknowledged messages not found.
    pub lost: u64,
    /// Repeated entries of one message.
    pub duplicates: u64,
    /// Entries after a later message of the same producer and bench key.
    pub reordered: u64,
    /// Unacknowledged messages found anyway.
    pub unacked_present: u64,
    /// Entries of this run that match nothing sent to this key.
    pub unexpected: u64,
    /// Entries of other runs, ignored.
    pub foreign: u64,
    /// Up to [`MAX_EXAMPLES`] problem descriptions, e.g. "lost: producer 0 seq 17".
    pub examples: Vec<String>,
}

impl KeyCheck {
    /// True when this key has nothing that fails a run (see [`summarize`]).
    pub fn is_ok(&self, order_checked: bool) -> bool {
        self.lost == 0
            && self.duplicates == 0
            && self.unexpected == 0
            && (!order_checked || self.reordered == 0)
    }

    fn example(&mut self, text: String) {
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(text);
        }
    }
}

/// Checks one journal key: `sent` are the messages sent to it, `entries` its journal in
/// offset order. Entries are identified by their payload header ([`decode`]); a bench-form
/// message id that disagrees with the header makes the entry unexpected. The rule is
/// [`journal_check::check`] with the sent messages known exactly.
pub fn check_key(run_id: &str, key: &str, sent: &[Sent], entries: &[JournalEntry]) -> KeyCheck {
    let mut check = KeyCheck {
        key: key.to_string(),
        sent: sent.len() as u64,
        acked: sent.iter().filter(|s| s.acked).count() as u64,
        ..KeyCheck::default()
    };
    let expected: Vec<journal_check::Sent> = sent
        .iter()
        .map(|s| journal_check::Sent {
            mark: mark(&s.header),
            outcome: if s.acked { Outcome::Acked } else { Outcome::Unknown },
        })
        .collect();
    let reads = [entries.iter().map(|e| identify(run_id, e)).collect::<Vec<_>>()];
    let report = journal_check::check(Expected::Exactly(&expected), &reads);
    check.entries = report.entries;
    check.foreign = report.foreign;
    for (_, outcome) in &report.present {
        match outcome {
            Outcome::Acked => check.present += 1,
            _ => check.unacked_present += 1,
        }
    }
    let offset = |at: At| journal_check::entry(&reads, at).offset;
    let mark_at = |at: At| journal_check::mark_at(&reads, at).cloned().unwrap_or_default();
    for finding in report.findings {
        let text = match finding {
            Finding::Invalid { reason, .. } => {
                check.unexpected += 1;
                reason
            }
            Finding::Unexpected { at } => {
                check.unexpected += 1;
                let m = mark_at(at);
                format!(
                    "unexpected: offset {}: key {} producer {} seq {} was not sent to this key",
                    offset(at),
                    m.key,
                    m.producer,
                    m.seq
                )
            }
            Finding::Duplicate { at, .. } => {
                check.duplicates += 1;
                let m = mark_at(at);
                format!(
                    "duplicate: producer {} seq {} again at offset {}",
                    m.producer,
                    m.seq,
                    offset(at)
                )
            }
            Finding::Reordered { at, after, .. } => {
                check.reordered += 1;
                let m = mark_at(at);
                format!(
                    "reordered: producer {} seq {} at offset {} after seq {}",
                    m.producer,
                    m.seq,
                    offset(at),
                    mark_at(after).seq
                )
            }
            Finding::Lost { mark } => {
                check.lost += 1;
                format!("lost: producer {} seq {} (acknowledged)", mark.producer, mark.seq)
            }
            // One read: offsets cannot disagree.
            Finding::OffsetConflict { .. } => continue,
        };
        check.example(text);
    }
    check
}

fn mark(header: &Header) -> Mark {
    Mark::new(header.key.clone(), u64::from(header.producer), header.seq)
}

/// What a journal entry is to this run: a bench message (by its payload header), a broken
/// one (this run's id without a matching payload), or someone else's.
fn identify(run_id: &str, entry: &JournalEntry) -> Entry {
    let id_says = parse_message_id(run_id, &entry.message_id);
    let run_prefix = format!("{run_id}-");
    let seen = match decode(&entry.payload) {
        Some(header) if header.key.starts_with(&run_prefix) => match id_says {
            Some((producer, seq)) if (producer, seq) != (header.producer, header.seq) => {
                Seen::Invalid(format!(
                    "unexpected: offset {} has id {} but payload producer {} seq {}",
                    entry.offset, entry.message_id, header.producer, header.seq
                ))
            }
            _ => Seen::Message(mark(&header)),
        },
        _ if id_says.is_some() => Seen::Invalid(format!(
            "unexpected: offset {} (id {}) has no bench payload of this run",
            entry.offset, entry.message_id
        )),
        _ => Seen::Foreign,
    };
    Entry {
        offset: entry.offset,
        seen,
        processing: Processing {
            node: entry.processed_by.clone(),
            epoch: entry.epoch,
            at_ms: entry.processed_at_unix_ms,
        },
    }
}

/// The verdict of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every acknowledged message is in its key's journal, once, in producer order (when
    /// checked), and nothing else of the run is there.
    Pass,
    /// Something was lost, duplicated, reordered or misplaced.
    Fail,
    /// The journals could not be read.
    Error,
}

/// What `--verify` found, over all keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// `pass`, `fail` or `error`.
    pub verdict: Verdict,
    /// One line: the verdict and its reason.
    pub summary: String,
    /// Whether reordering fails the run (ordered routes) or is only reported (shared routes).
    pub order_checked: bool,
    /// True when the journals stopped growing (or held every acknowledged message) before the
    /// verify timeout.
    pub settled: bool,
    /// Time spent waiting for and reading the journals.
    pub wait_ms: u64,
    /// Journal keys read.
    pub keys: u64,
    /// Messages sent / acknowledged, over all keys.
    pub sent: u64,
    /// Acknowledged messages.
    pub acked: u64,
    /// Acknowledged messages found.
    pub present: u64,
    /// Journal entries of this run.
    pub journal_entries: u64,
    /// Totals of the per-key counts (see [`KeyCheck`]).
    pub lost: u64,
    /// See [`KeyCheck::duplicates`].
    pub duplicates: u64,
    /// See [`KeyCheck::reordered`].
    pub reordered: u64,
    /// See [`KeyCheck::unacked_present`].
    pub unacked_present: u64,
    /// See [`KeyCheck::unexpected`].
    pub unexpected: u64,
    /// See [`KeyCheck::foreign`].
    pub foreign: u64,
    /// Keys that fail the run.
    pub keys_with_problems: u64,
    /// The first [`MAX_PROBLEM_KEYS`] of them, by key.
    pub problems: Vec<KeyCheck>,
}

/// Adds up the per-key checks into a report and its verdict.
pub fn summarize(checks: Vec<KeyCheck>, order_checked: bool, settled: bool, wait: Duration) -> VerifyReport {
    summarize_at(checks, order_checked, settled, wait, "are in the journals of")
}

/// [`summarize`], for messages checked elsewhere than in journals: `place` completes the
/// summary "PASS: all N acknowledged messages {place} their K keys" (e.g. "reached the
/// subscriber for").
pub fn summarize_at(
    mut checks: Vec<KeyCheck>,
    order_checked: bool,
    settled: bool,
    wait: Duration,
    place: &str,
) -> VerifyReport {
    checks.sort_by(|a, b| a.key.cmp(&b.key));
    let sum = |f: fn(&KeyCheck) -> u64| checks.iter().map(f).sum::<u64>();
    let mut report = VerifyReport {
        verdict: Verdict::Pass,
        summary: String::new(),
        order_checked,
        settled,
        wait_ms: wait.as_millis() as u64,
        keys: checks.len() as u64,
        sent: sum(|c| c.sent),
        acked: sum(|c| c.acked),
        present: sum(|c| c.present),
        journal_entries: sum(|c| c.entries),
        lost: sum(|c| c.lost),
        duplicates: sum(|c| c.duplicates),
        reordered: sum(|c| c.reordered),
        unacked_present: sum(|c| c.unacked_present),
        unexpected: sum(|c| c.unexpected),
        foreign: sum(|c| c.foreign),
        keys_with_problems: 0,
        problems: Vec::new(),
    };
    let bad: Vec<KeyCheck> = checks.into_iter().filter(|c| !c.is_ok(order_checked)).collect();
    report.keys_with_problems = bad.len() as u64;
    report.problems = bad.into_iter().take(MAX_PROBLEM_KEYS).collect();
    if report.keys_with_problems == 0 {
        let order = if order_checked {
            "in producer order"
        } else {
            "order not checked (shared route)"
        };
        report.summary = format!(
            "PASS: all {} acknowledged messages {place} their {} keys, once each, {order}",
            report.acked, report.keys
        );
    } else {
        report.verdict = Verdict::Fail;
        let reordered = if order_checked {
            format!("{} reordered", report.reordered)
        } else {
            format!("{} reordered (not checked)", report.reordered)
        };
        report.summary = format!(
            "FAIL: {} lost, {} duplicated, {reordered}, {} unexpected, in {} of {} keys",
            report.lost, report.duplicates, report.unexpected, report.keys_with_problems, report.keys
        );
    }
    if !report.settled {
        report
            .summary
            .push_str(" (journals still growing at the verify timeout)");
    }
    report
}

/// The report of a verification that could not read the journals.
pub fn unreadable(reason: &str, wait: Duration) -> VerifyReport {
    VerifyReport {
        verdict: Verdict::Error,
        summary: format!("ERROR: cannot read the journals: {reason}"),
        order_checked: false,
        settled: false,
        wait_ms: wait.as_millis() as u64,
        keys: 0,
        sent: 0,
        acked: 0,
        present: 0,
        journal_entries: 0,
        lost: 0,
        duplicates: 0,
        reordered: 0,
        unacked_present: 0,
        unexpected: 0,
        foreign: 0,
        keys_with_problems: 0,
        problems: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::payload::{encode, message_id};

    const RUN: &str = "r1";

    fn header(key: &str, producer: u32, seq: u64) -> Header {
        Header {
            key: key.into(),
            producer,
            seq,
        }
    }

    fn sent(key: &str, producer: u32, seqs: &[u64]) -> Vec<Sent> {
        seqs.iter()
            .map(|&seq| Sent {
                header: header(key, producer, seq),
                acked: true,
            })
            .collect()
    }

    /// Journal entries for (bench key, producer, seq) in this order.
    fn journal(messages: &[(&str, u32, u64)]) -> Vec<JournalEntry> {
        messages
            .iter()
            .enumerate()
            .map(|(offset, &(key, producer, seq))| JournalEntry {
                offset: offset as u64,
                message_id: message_id(RUN, producer, seq),
                topic: format!("bench/{key}/data"),
                payload: encode(&header(key, producer, seq), 32),
                processed_by: "n1".into(),
                epoch: 3,
                processed_at_unix_ms: 1_700_000_000_000,
                partition: 1,
            })
            .collect()
    }

    #[test]
    fn a_clean_journal_passes() {
        let k = "r1-0";
        let mut all = sent(k, 0, &[0, 2, 4]);
        all.extend(sent(k, 1, &[1, 3]));
        // Producers interleave; each producer's own order is what counts.
        let entries = journal(&[(k, 0, 0), (k, 1, 1), (k, 0, 2), (k, 1, 3), (k, 0, 4)]);
        let check = check_key(RUN, k, &all, &entries);
        assert_eq!(
            (check.sent, check.acked, check.present, check.entries),
            (5, 5, 5, 5)
        );
        assert!(check.is_ok(true), "{check:?}");
        assert!(check.examples.is_empty());
        let report = summarize(vec![check], true, true, Duration::from_millis(1500));
        assert_eq!(report.verdict, Verdict::Pass);
        assert_eq!(
            report.summary,
            "PASS: all 5 acknowledged messages are in the journals of their 1 keys, once each, in producer order"
        );
        assert_eq!(report.wait_ms, 1500);
    }

    #[test]
    fn a_gap_is_reported_as_lost() {
        let k = "r1-0";
        let check = check_key(
            RUN,
            k,
            &sent(k, 0, &[0, 1, 2, 3]),
            &journal(&[(k, 0, 0), (k, 0, 1), (k, 0, 3)]),
        );
        assert_eq!(
            (check.lost, check.present, check.duplicates, check.reordered),
            (1, 3, 0, 0)
        );
        assert_eq!(check.examples, vec!["lost: producer 0 seq 2 (acknowledged)"]);
        let report = summarize(vec![check], true, true, Duration::ZERO);
        assert_eq!(report.verdict, Verdict::Fail);
        assert_eq!(report.lost, 1);
        assert_eq!(report.keys_with_problems, 1);
        assert_eq!(report.problems[0].key, k);
        assert!(
            report
                .summary
                .starts_with("FAIL: 1 lost, 0 duplicated, 0 reordered, 0 unexpected, in 1 of 1 keys"),
            "{}",
            report.summary
        );
    }

    #[test]
    fn a_duplicate_is_reported_once_and_not_as_reordered() {
        let k = "r1-0";
        let check = check_key(
            RUN,
            k,
            &sent(k, 0, &[0, 1, 2]),
            &journal(&[(k, 0, 0), (k, 0, 1), (k, 0, 1), (k, 0, 2)]),
        );
        assert_eq!(
            (check.lost, check.duplicates, check.reordered, check.entries),
            (0, 1, 0, 4)
        );
        assert_eq!(
            check.examples,
            vec!["duplicate: producer 0 seq 1 again at offset 2"]
        );
        // A late duplicate (after later messages) is still a duplicate, not a reorder.
        let check = check_key(
            RUN,
            k,
            &sent(k, 0, &[0, 1, 2]),
            &journal(&[(k, 0, 0), (k, 0, 1), (k, 0, 2), (k, 0, 0)]),
        );
        assert_eq!((check.duplicates, check.reordered), (1, 0));
        assert_eq!(
            summarize(vec![check], true, true, Duration::ZERO).verdict,
            Verdict::Fail
        );
    }

    #[test]
    fn a_reorder_is_reported() {
        let k = "r1-0";
        let check = check_key(
            RUN,
            k,
            &sent(k, 0, &[0, 1, 2, 3]),
            &journal(&[(k, 0, 0), (k, 0, 2), (k, 0, 1), (k, 0, 3)]),
        );
        assert_eq!(
            (check.lost, check.duplicates, check.reordered, check.present),
            (0, 0, 1, 4)
        );
        assert_eq!(
            check.examples,
            vec!["reordered: producer 0 seq 1 at offset 2 after seq 2"]
        );
        assert!(!check.is_ok(true));
        // On a shared route, order is reported but does not fail the run.
        assert!(check.is_ok(false));
        let report = summarize(vec![check], false, true, Duration::ZERO);
        assert_eq!(report.verdict, Verdict::Pass);
        assert_eq!(report.reordered, 1);
        assert!(
            report.summary.ends_with("order not checked (shared route)"),
            "{}",
            report.summary
        );
    }

    #[test]
    fn order_is_per_bench_key_and_producer() {
        // Two bench keys share one journal key (e.g. a route keyed by another level): their
        // sequences are independent.
        let (a, b) = ("r1-0", "r1-1");
        let mut all = sent(a, 0, &[0, 2]);
        all.extend(sent(b, 0, &[1, 3]));
        let check = check_key(
            RUN,
            "shared-key",
            &all,
            &journal(&[(b, 0, 1), (a, 0, 0), (b, 0, 3), (a, 0, 2)]),
        );
        assert!(check.is_ok(true), "{check:?}");
    }

    #[test]
    fn unacknowledged_messages_may_be_present_or_absent() {
        let k = "r1-0";
        let mut all = sent(k, 0, &[0, 2]);
        all.push(Sent {
            header: header(k, 0, 1),
            acked: false,
        });
        all.push(Sent {
            header: header(k, 0, 3),
            acked: false,
        });
        let check = check_key(RUN, k, &all, &journal(&[(k, 0, 0), (k, 0, 1), (k, 0, 2)]));
        assert_eq!(
            (
                check.sent,
                check.acked,
                check.present,
                check.unacked_present,
                check.lost
            ),
            (4, 2, 2, 1, 0)
        );
        assert!(check.is_ok(true));
    }

    #[test]
    fn foreign_and_unexpected_entries() {
        let k = "r1-0";
        let mut entries = journal(&[(k, 0, 0), ("r0-0", 0, 0), ("r1-5", 0, 9)]);
        // Another run's message.
        entries[1].message_id = message_id("r0", 0, 0);
        // Another producer's message, not a bench payload at all.
        entries.push(JournalEntry {
            offset: 3,
            message_id: "3f0e".into(),
            payload: b"temperature=21".to_vec(),
            ..JournalEntry::default()
        });
        // This run's id on a corrupt payload.
        entries.push(JournalEntry {
            offset: 4,
            message_id: message_id(RUN, 0, 1),
            payload: b"garbage".to_vec(),
            ..JournalEntry::default()
        });
        // Id and payload disagree.
        let mut mismatched = journal(&[(k, 0, 2)]).remove(0);
        mismatched.offset = 5;
        mismatched.message_id = message_id(RUN, 0, 7);
        entries.push(mismatched);
        let check = check_key(RUN, k, &sent(k, 0, &[0]), &entries);
        assert_eq!(
            (check.foreign, check.unexpected, check.present, check.entries),
            (2, 3, 1, 4)
        );
        assert!(!check.is_ok(false));
        assert_eq!(check.examples.len(), 3);
        assert!(
            check.examples[0].contains("r1-5 producer 0 seq 9 was not sent to this key"),
            "{:?}",
            check.examples
        );
    }

    #[test]
    fn summary_counts_keys_and_caps_the_problem_list() {
        let checks: Vec<KeyCheck> = (0..(MAX_PROBLEM_KEYS as u64 + 5))
            .map(|i| KeyCheck {
                key: format!("k{i:03}"),
                sent: 2,
                acked: 2,
                present: 1,
                lost: 1,
                ..KeyCheck::default()
            })
            .chain(std::iter::once(KeyCheck {
                key: "ok".into(),
                sent: 1,
                acked: 1,
                present: 1,
                ..KeyCheck::default()
            }))
            .collect();
        let report = summarize(checks, true, false, Duration::ZERO);
        assert_eq!(report.keys, MAX_PROBLEM_KEYS as u64 + 6);
        assert_eq!(report.keys_with_problems, MAX_PROBLEM_KEYS as u64 + 5);
        assert_eq!(report.problems.len(), MAX_PROBLEM_KEYS);
        assert_eq!(report.problems[0].key, "k000");
        assert!(report
            .summary
            .ends_with("(journals still growing at the verify timeout)"));
        assert_eq!(unreadable("boom", Duration::ZERO).verdict, Verdict::Error);
    }
}
