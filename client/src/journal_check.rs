//! The one rule for judging a key's journal against what was sent to the key: used by the
//! bench's verifier ([`bench::verify`](crate::bench::verify)), the integration tests' load
//! checker (`tests/src/load.rs`) and the fault harness's stream checker
//! (`jepsen/src/checker/stream.rs`). Each caller identifies entries in its own way (payload
//! header, message id), maps them to [`Mark`]s, and turns the [`Finding`]s into its own report
//! and verdict; the rule itself lives only here.
//!
//! Input: the messages sent to one journal key ([`Expected`]) and one or more reads of that
//! key's journal, each in offset order (several reads: the same journal read at different
//! times, or copies of it read from different places). A message belongs to a *stream* (its
//! key and producer) and has a sequence number that increases in send order within it.
//!
//! The *union* of the reads is what the journal held: with one read, the read itself; with
//! several, every entry of every read, an entry of one read being the same as an entry of
//! another when it holds the same message with the same [`Processing`] (node, epoch, time),
//! in processing-time order (ties: node, then offset). A message processed twice is there
//! twice; a copy of one entry is there once.
//!
//! Findings ([`check`]), in the order found:
//! - [`Finding::Invalid`]: an entry the caller could not accept (its reason);
//! - [`Finding::Unexpected`]: a message that was not sent to this key (only when the sent
//!   messages are known exactly); such an entry is judged no further;
//! - [`Finding::Reordered`]: within a read (and, with several reads, in the union), a
//!   message's first entry after the first entry of a later message of the same stream;
//! - [`Finding::Duplicate`]: in the union, another entry of a message already seen (not a
//!   reordering);
//! - [`Finding::OffsetConflict`]: one offset holding two different messages in two reads;
//! - [`Finding::Lost`]: an acknowledged message absent from every read.
//!
//! Messages present without an acknowledgement (failed, or the answer never came) are not
//! findings: at-least-once allows them; [`KeyReport::present`] lists every message found with
//! its outcome. [`KeyReport::is_clean`] is true without any finding; callers decide which
//! findings fail them (e.g. a reordering on an unordered route, a duplicate across a failover,
//! offsets rewritten after a journal died with its node).

use std::collections::{HashMap, HashSet};

/// A message as the checker knows it: its stream (key and producer) and place in it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mark {
    /// The key the producer sends for (not necessarily the journal key).
    pub key: String,
    /// The producer within the key.
    pub producer: u64,
    /// The sequence number, increasing in the producer's send order.
    pub seq: u64,
}

impl Mark {
    /// A mark.
    pub fn new(key: impl Into<String>, producer: u64, seq: u64) -> Self {
        Mark {
            key: key.into(),
            producer,
            seq,
        }
    }

    /// `key:producer:seq`: the message id the integration tests' load generator and the
    /// fault harness give their messages.
    pub fn id(&self) -> String {
        format!("{}:{}:{}", self.key, self.producer, self.seq)
    }

    /// Parses a [`Mark::id`] from the right (the key may hold `:`).
    pub fn parse_id(id: &str) -> Option<Mark> {
        let mut parts = id.rsplitn(3, ':');
        let seq = parts.next()?.parse().ok()?;
        let producer = parts.next()?.parse().ok()?;
        let key = parts.next()?;
        Some(Mark::new(key, producer, seq))
    }

    fn stream(&self) -> (&str, u64) {
        (self.key.as_str(), self.producer)
    }
}

/// What the producer was told about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Acknowledged: it must be in the journal.
    Acked,
    /// Refused: it should not be there, but may.
    Failed,
    /// No answer, or not known: it may be there.
    Unknown,
}

/// A message sent to the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The message.
    pub mark: Mark,
    /// What its producer was told.
    pub outcome: Outcome,
}

/// The messages sent to the key.
#[derive(Debug, Clone, Copy)]
pub enum Expected<'a> {
    /// Exactly these: an entry of any other message is [`Finding::Unexpected`].
    Exactly(&'a [Sent]),
    /// These and maybe others (e.g. only the acknowledgements are known): other messages are
    /// accepted with an [`Outcome::Unknown`].
    AtLeast(&'a [Sent]),
}

/// What the caller made of a journal entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A message of the checked producers.
    Message(Mark),
    /// One claiming to be, but broken (the reason, as the caller reports it).
    Invalid(String),
    /// Someone else's entry: counted, otherwise ignored.
    Foreign,
}

/// Who processed an entry, and when.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Processing {
    /// The processing node.
    pub node: String,
    /// The config epoch it processed at.
    pub epoch: u64,
    /// Processing time, Unix ms.
    pub at_ms: i64,
}

/// One journal entry of a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its offset in the key's journal.
    pub offset: u64,
    /// What it holds.
    pub seen: Seen,
    /// Who processed it, when.
    pub processing: Processing,
}

/// Where an entry is: the read, and its index in that read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct At {
    /// Index of the read.
    pub read: usize,
    /// Index of the entry in the read.
    pub index: usize,
}

/// Where an order was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Within one read, in offset order (with a single read, also its union).
    Read,
    /// In the union of several reads, in processing-time order.
    Union,
}

/// Something wrong with the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// An entry the caller found invalid.
    Invalid {
        /// The entry.
        at: At,
        /// Why.
        reason: String,
    },
    /// An entry of a message not sent to this key.
    Unexpected {
        /// The entry.
        at: At,
    },
    /// A message's first entry after the first entry of a later message of its stream.
    Reordered {
        /// The entry.
        at: At,
        /// The entry holding the highest sequence number of the stream before it.
        after: At,
        /// Within a read or in the union.
        scope: Scope,
    },
    /// Another entry, in the union, of a message already seen.
    Duplicate {
        /// The repeated entry.
        at: At,
        /// The message's first entry.
        first: At,
        /// The stream's entry just before this one (the message itself: a repeat in place).
        previous: At,
    },
    /// One offset holding two different messages in two reads.
    OffsetConflict {
        /// The offset.
        offset: u64,
        /// The entry at that offset in the first read that has it.
        first: At,
        /// The entry holding another message there.
        other: At,
    },
    /// An acknowledged message absent from every read.
    Lost {
        /// The message.
        mark: Mark,
    },
}

/// What [`check`] found for one key.
#[derive(Debug, Clone, Default)]
pub struct KeyReport {
    /// The findings, in the order found (lost messages last, in the order sent).
    pub findings: Vec<Finding>,
    /// The union of the reads, in its order (see the module docs).
    pub union: Vec<At>,
    /// Entries of the union other than foreign ones.
    pub entries: u64,
    /// Foreign entries, counted in every read.
    pub foreign: u64,
    /// Every message found (once or more, unexpected ones excepted), with its outcome, in the
    /// order of its first entry in the union.
    pub present: Vec<(Mark, Outcome)>,
}

impl KeyReport {
    /// True without any finding.
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }

    /// How many findings match `pred`.
    pub fn count(&self, pred: impl Fn(&Finding) -> bool) -> usize {
        self.findings.iter().filter(|f| pred(f)).count()
    }
}

/// The entry at `at` of `reads`.
pub fn entry(reads: &[Vec<Entry>], at: At) -> &Entry {
    &reads[at.read][at.index]
}

/// The message at `at`, if the entry holds one.
pub fn mark_at(reads: &[Vec<Entry>], at: At) -> Option<&Mark> {
    match &entry(reads, at).seen {
        Seen::Message(mark) => Some(mark),
        _ => None,
    }
}

/// Judges `reads` of one key's journal against `expected`; see the module docs.
pub fn check(expected: Expected<'_>, reads: &[Vec<Entry>]) -> KeyReport {
    let (sent, exact) = match expected {
        Expected::Exactly(sent) => (sent, true),
        Expected::AtLeast(sent) => (sent, false),
    };
    let outcome: HashMap<&Mark, Outcome> = sent.iter().map(|s| (&s.mark, s.outcome)).collect();
    let judged = |mark: &Mark| !exact || outcome.contains_key(mark);
    let mut report = KeyReport {
        foreign: reads.iter().flatten().filter(|e| e.seen == Seen::Foreign).count() as u64,
        ..KeyReport::default()
    };
    if reads.len() > 1 {
        for read in 0..reads.len() {
            check_read_order(reads, read, &judged, &mut report.findings);
        }
        offset_conflicts(reads, &mut report.findings);
    }
    report.union = union(reads);
    let scope = if reads.len() > 1 {
        Scope::Union
    } else {
        Scope::Read
    };
    // The union: invalid, unexpected and repeated entries, and the order of first entries.
    let mut first: HashMap<&Mark, At> = HashMap::new();
    let mut previous: HashMap<(&str, u64), At> = HashMap::new();
    let mut order = StreamOrder::default();
    for &at in &report.union {
        let mark = match &entry(reads, at).seen {
            Seen::Foreign => continue,
            Seen::Invalid(reason) => {
                report.entries += 1;
                report.findings.push(Finding::Invalid {
                    at,
                    reason: reason.clone(),
                });
                continue;
            }
            Seen::Message(mark) => mark,
        };
        report.entries += 1;
        if !judged(mark) {
            report.findings.push(Finding::Unexpected { at });
            continue;
        }
        let before = previous.insert(mark.stream(), at);
        if let Some(&first) = first.get(mark) {
            report.findings.push(Finding::Duplicate {
                at,
                first,
                previous: before.unwrap_or(first),
            });
            continue;
        }
        first.insert(mark, at);
        report.present.push((
            mark.clone(),
            outcome.get(mark).copied().unwrap_or(Outcome::Unknown),
        ));
        if let Some(after) = order.first_entry(mark, at) {
            report.findings.push(Finding::Reordered { at, after, scope });
        }
    }
    for s in sent {
        if s.outcome == Outcome::Acked && !first.contains_key(&s.mark) {
            report.findings.push(Finding::Lost { mark: s.mark.clone() });
        }
    }
    report
}

/// Per stream, the highest sequence number among first entries so far, and where it is.
#[derive(Default)]
struct StreamOrder<'a> {
    highest: HashMap<(&'a str, u64), (u64, At)>,
}

impl<'a> StreamOrder<'a> {
    /// The first entry of `mark`, at `at`: the entry it comes after when out of order (a
    /// higher sequence number of its stream came first).
    fn first_entry(&mut self, mark: &'a Mark, at: At) -> Option<At> {
        match self.highest.get(&mark.stream()) {
            Some(&(max, after)) if mark.seq < max => Some(after),
            _ => {
                self.highest.insert(mark.stream(), (mark.seq, at));
                None
            }
        }
    }
}

/// Order within one read: per stream, the sequence numbers of first entries must increase.
fn check_read_order(
    reads: &[Vec<Entry>],
    read: usize,
    judged: &dyn Fn(&Mark) -> bool,
    findings: &mut Vec<Finding>,
) {
    let mut seen: HashSet<&Mark> = HashSet::new();
    let mut order = StreamOrder::default();
    for (index, e) in reads[read].iter().enumerate() {
        let Seen::Message(mark) = &e.seen else {
            continue;
        };
        if !judged(mark) || !seen.insert(mark) {
            continue;
        }
        let at = At { read, index };
        if let Some(after) = order.first_entry(mark, at) {
            findings.push(Finding::Reordered {
                at,
                after,
                scope: Scope::Read,
            });
        }
    }
}

/// Offsets holding different messages in different reads.
fn offset_conflicts(reads: &[Vec<Entry>], findings: &mut Vec<Finding>) {
    let mut holder: HashMap<u64, (At, &Mark)> = HashMap::new();
    for (read, entries) in reads.iter().enumerate() {
        for (index, e) in entries.iter().enumerate() {
            let Seen::Message(mark) = &e.seen else {
                continue;
            };
            let at = At { read, index };
            match holder.get(&e.offset) {
                Some(&(first, held)) if held != mark && first.read != read => {
                    findings.push(Finding::OffsetConflict {
                        offset: e.offset,
                        first,
                        other: at,
                    });
                }
                Some(_) => {}
                None => {
                    holder.insert(e.offset, (at, mark));
                }
            }
        }
    }
}

/// The union of the reads (see the module docs).
fn union(reads: &[Vec<Entry>]) -> Vec<At> {
    if reads.len() == 1 {
        return (0..reads[0].len()).map(|index| At { read: 0, index }).collect();
    }
    // An entry's identity across reads; entries without a message are told apart by offset.
    type Identity<'a> = (Option<&'a Mark>, Option<u64>, &'a Processing);
    let mut taken: HashMap<Identity<'_>, usize> = HashMap::new();
    let mut out = Vec::new();
    for (read, entries) in reads.iter().enumerate() {
        let mut here: HashMap<Identity<'_>, usize> = HashMap::new();
        for (index, e) in entries.iter().enumerate() {
            let identity = match &e.seen {
                Seen::Message(mark) => (Some(mark), None, &e.processing),
                _ => (None, Some(e.offset), &e.processing),
            };
            let n = here.entry(identity).or_default();
            *n += 1;
            let already = taken.entry(identity).or_default();
            if *n > *already {
                *already = *n;
                out.push(At { read, index });
            }
        }
    }
    out.sort_by(|a, b| {
        let (x, y) = (entry(reads, *a), entry(reads, *b));
        (x.processing.at_ms, &x.processing.node, x.offset).cmp(&(
            y.processing.at_ms,
            &y.processing.node,
            y.offset,
        ))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries of stream ("k", 0) with these sequence numbers, at offsets from 0, processed by
    /// n1 at epoch 1 at time 100 + offset.
    fn read(seqs: &[u64]) -> Vec<Entry> {
        seqs.iter()
            .enumerate()
            .map(|(i, &seq)| Entry {
                offset: i as u64,
                seen: Seen::Message(Mark::new("k", 0, seq)),
                processing: Processing {
                    node: "n1".into(),
                    epoch: 1,
                    at_ms: 100 + i as i64,
                },
            })
            .collect()
    }

    fn acked(seqs: &[u64]) -> Vec<Sent> {
        seqs.iter()
            .map(|&seq| Sent {
                mark: Mark::new("k", 0, seq),
                outcome: Outcome::Acked,
            })
            .collect()
    }

    fn at(read: usize, index: usize) -> At {
        At { read, index }
    }

    #[test]
    fn ids_round_trip_and_parse_from_the_right() {
        let mark = Mark::new("dev:07", 3, 12);
        assert_eq!(mark.id(), "dev:07:3:12");
        assert_eq!(Mark::parse_id(&mark.id()), Some(mark));
        assert_eq!(Mark::parse_id("k:x:1"), None);
        assert_eq!(Mark::parse_id("garbage"), None);
    }

    #[test]
    fn a_clean_journal_passes() {
        let report = check(Expected::Exactly(&acked(&[0, 1, 2])), &[read(&[0, 1, 2])]);
        assert!(report.is_clean(), "{:?}", report.findings);
        assert_eq!(report.entries, 3);
        assert_eq!(report.present.len(), 3);
        assert!(report.present.iter().all(|(_, o)| *o == Outcome::Acked));
    }

    #[test]
    fn a_lost_message_fails() {
        let report = check(Expected::Exactly(&acked(&[0, 1, 2])), &[read(&[0, 2])]);
        assert!(!report.is_clean());
        assert_eq!(
            report.findings,
            vec![Finding::Lost {
                mark: Mark::new("k", 0, 1)
            }]
        );
    }

    #[test]
    fn a_duplicate_fails_and_is_not_a_reordering() {
        let report = check(Expected::Exactly(&acked(&[0, 1, 2])), &[read(&[0, 1, 1, 2])]);
        assert_eq!(
            report.findings,
            vec![Finding::Duplicate {
                at: at(0, 2),
                first: at(0, 1),
                previous: at(0, 1)
            }]
        );
        // A late repeat is a duplicate too, not in place.
        let report = check(Expected::Exactly(&acked(&[0, 1, 2])), &[read(&[0, 1, 2, 0])]);
        assert_eq!(
            report.findings,
            vec![Finding::Duplicate {
                at: at(0, 3),
                first: at(0, 0),
                previous: at(0, 2)
            }]
        );
        // The same entry read twice (two copies) is one entry; processed twice, two.
        let copy = read(&[0, 1, 2]);
        let report = check(
            Expected::Exactly(&acked(&[0, 1, 2])),
            &[copy.clone(), copy.clone()],
        );
        assert!(report.is_clean(), "{:?}", report.findings);
        assert_eq!(report.union.len(), 3);
        let mut again = copy.clone();
        again[1].processing.node = "n2".into();
        let report = check(Expected::Exactly(&acked(&[0, 1, 2])), &[copy, again]);
        assert_eq!(report.count(|f| matches!(f, Finding::Duplicate { .. })), 1);
    }

    #[test]
    fn a_reordering_fails() {
        let report = check(Expected::Exactly(&acked(&[0, 1, 2, 3])), &[read(&[0, 2, 1, 3])]);
        assert_eq!(
            report.findings,
            vec![Finding::Reordered {
                at: at(0, 2),
                after: at(0, 1),
                scope: Scope::Read
            }]
        );
        // Every entry below the highest so far counts.
        let report = check(Expected::Exactly(&acked(&[0, 1, 2, 5])), &[read(&[0, 5, 1, 2])]);
        assert_eq!(report.count(|f| matches!(f, Finding::Reordered { .. })), 2);
    }

    #[test]
    fn order_is_per_stream() {
        let mut entries = read(&[1, 0]);
        entries[1].seen = Seen::Message(Mark::new("k", 1, 0));
        let sent = [Mark::new("k", 0, 1), Mark::new("k", 1, 0)].map(|mark| Sent {
            mark,
            outcome: Outcome::Acked,
        });
        assert!(check(Expected::Exactly(&sent), &[entries]).is_clean());
    }

    #[test]
    fn an_offset_holding_two_messages_across_reads_fails() {
        let before = read(&[0, 1, 2]);
        let mut after = read(&[0, 1, 2]);
        after[2].seen = Seen::Message(Mark::new("k", 0, 3));
        after[2].processing.at_ms = 200;
        let report = check(Expected::AtLeast(&acked(&[0, 1])), &[before, after]);
        assert!(!report.is_clean());
        assert_eq!(
            report.findings,
            vec![Finding::OffsetConflict {
                offset: 2,
                first: at(0, 2),
                other: at(1, 2)
            }]
        );
    }

    #[test]
    fn unacknowledged_messages_may_be_present_or_absent() {
        let mut sent = acked(&[0, 2]);
        sent.push(Sent {
            mark: Mark::new("k", 0, 1),
            outcome: Outcome::Failed,
        });
        sent.push(Sent {
            mark: Mark::new("k", 0, 3),
            outcome: Outcome::Unknown,
        });
        let report = check(Expected::Exactly(&sent), &[read(&[0, 1, 2])]);
        assert!(report.is_clean(), "{:?}", report.findings);
        assert_eq!(report.present[1], (Mark::new("k", 0, 1), Outcome::Failed));
    }

    #[test]
    fn unexpected_invalid_and_foreign_entries() {
        let mut entries = read(&[0, 7, 1, 2]);
        entries[2].seen = Seen::Invalid("bad payload".into());
        entries[3].seen = Seen::Foreign;
        let report = check(Expected::Exactly(&acked(&[0])), &[entries.clone()]);
        assert_eq!(
            report.findings,
            vec![
                Finding::Unexpected { at: at(0, 1) },
                Finding::Invalid {
                    at: at(0, 2),
                    reason: "bad payload".into()
                },
            ]
        );
        assert_eq!((report.entries, report.foreign), (3, 1));
        // When only some messages are known, the others are accepted with no known outcome.
        let report = check(Expected::AtLeast(&acked(&[0])), &[entries]);
        assert_eq!(report.findings.len(), 1);
        assert_eq!(report.present[1], (Mark::new("k", 0, 7), Outcome::Unknown));
    }

    #[test]
    fn several_reads_are_judged_each_and_in_processing_time_order() {
        // Read 0 is in order; read 1 holds seq 1 processed before seq 0 elsewhere.
        let first = read(&[0, 2]);
        let mut second = read(&[1]);
        second[0].offset = 5;
        second[0].processing = Processing {
            node: "n2".into(),
            epoch: 2,
            at_ms: 50,
        };
        let report = check(Expected::Exactly(&acked(&[0, 1, 2])), &[first, second]);
        assert_eq!(
            report.findings,
            vec![Finding::Reordered {
                at: at(0, 0),
                after: at(1, 0),
                scope: Scope::Union
            }]
        );
        assert_eq!(report.union, vec![at(1, 0), at(0, 0), at(0, 1)]);
    }
}
