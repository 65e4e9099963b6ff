//! Ownership: which partitions this node may process right now, and the handoff of partitions
//! (with their journal data) between nodes when the ring changes.
//!
//! [`Ownership`] is a plain, synchronous state machine, one slot per partition this node is
//! involved with. It is driven by the configs this node applies ([`Ownership::observe`]), by
//! the work the processor admits and finishes, and by handoff answers; it decides, and the
//! callers do the I/O. `ARCHITECTURE.md` (*Ownership, handoff and fencing*) explains why each
//! rule keeps the guarantees; in short:
//!
//! - A partition's data moves with it. The new owner starts in [`Phase::Fetching`]: it queues
//!   the partition's messages (in order) and asks every other member for the partition. A
//!   member that held it answers with its data and the last epoch it owned it (its *version*),
//!   but only once it has finished the work it had accepted; the fetcher imports the newest
//!   version and only then becomes [`Phase::Active`]. Nobody holding anything means a fresh
//!   partition (or one whose holder was removed as dead: its data is gone with it).
//! - A node that loses a partition stops admitting work for it at once ([`Phase::Draining`]),
//!   still runs what it admitted, and hands the data over when its queue is empty. It keeps a
//!   copy ([`Phase::HandedOver`]) so that a fetch racing with another move still finds it.
//! - A node that finds itself removed from the config drops every slot: what it held is stale.
//! - A copy survives a restart: the version of every partition this node activated is kept on
//!   disk beside the data ([`Ownership::restore`]). After a restart nothing is trusted
//!   blindly: partitions owned are fetched again, the own copy counting as one more answer
//!   ([`Ownership::decide_fetch`]), and copies of partitions owned elsewhere are offered.
//! - A leaving node counts a partition as handed over only once its new owner confirmed it is
//!   active with it ([`Ownership::confirm`]), not when the data was sent.
//!
//! The lease ([`crate::lease`]) is checked by the processor on top of this: a slot that may
//! run still runs only while the lease is valid.

use std::collections::{BTreeMap, BTreeSet};

use crate::ring::Ring;

/// A partition number.
pub type Partition = u32;

/// Where this node stands with one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Owner at the applied epoch, with the data: processes (lease permitting).
    Active,
    /// Owner at the applied epoch, without the data yet: queues messages, fetches the data.
    Fetching,
    /// No longer the owner but holds the data: runs what it admitted, then hands it over.
    Draining,
    /// No longer the owner; handed the data over and keeps a copy of that version.
    HandedOver,
}

/// One partition's slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The phase.
    pub phase: Phase,
    /// Version of the data held: the last epoch at which this node was the active owner
    /// (for `Fetching`: 0, nothing held).
    pub version: u64,
    /// Messages admitted and not finished yet.
    pub pending: u32,
    /// For `HandedOver`: the new owner confirmed it is active with the data (a leaving node
    /// may go only when every copy it handed over is confirmed).
    pub confirmed: bool,
    /// For `HandedOver`: a copy found on disk after a restart, not handed to anyone since (it
    /// may be the newest: the node may have crashed before the handover).
    pub unsent: bool,
    /// The token of this node's MQTT ingress hold on the partition (the partition of an
    /// ordered route's `$ingress/<route>` key), taken while `Active`. A `Draining` slot is not
    /// handed over while the hold exists: the next holder connects to the broker only after
    /// this one has acknowledged what it processed and disconnected, so the broker never
    /// redelivers to it messages that were already processed.
    pub ingress_hold: Option<u64>,
}

impl Slot {
    fn new(phase: Phase, version: u64) -> Self {
        Self {
            phase,
            version,
            pending: 0,
            confirmed: false,
            unsent: false,
            ingress_hold: None,
        }
    }

    /// Whether the slot still runs or holds something that must end before a handover.
    fn busy(&self) -> bool {
        self.pending > 0 || self.ingress_hold.is_some()
    }
}

/// What the processor may do with a message of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Run it now.
    Run,
    /// Keep it queued: the partition's data is still on its way.
    Wait,
    /// Not ours: answer so that the sender re-sends to the owner.
    Moved,
}

/// What a holder answers to a fetch of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Nothing held here.
    NotHolder,
    /// Ask again later (still draining, fetching itself, or behind the asker's epoch).
    NotYet,
    /// The data of this version follows.
    Data {
        /// Last epoch at which the holder owned the partition.
        version: u64,
    },
}

/// What a fetcher does once every member answered for a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchDecision {
    /// Import the data of `from` (the newest version), then activate.
    Import {
        /// Member to take it from.
        from: String,
        /// Its version.
        version: u64,
    },
    /// Nobody holds it: activate with nothing (a fresh partition).
    Fresh,
    /// This node's own copy (kept from an earlier ownership, or found on disk after a
    /// restart) is the newest: activate with it, importing nothing.
    KeepOwn {
        /// Its version.
        version: u64,
    },
    /// Someone is not ready (or did not answer): ask again later.
    Retry,
}

/// A transition worth logging or counting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Became the active owner.
    Activated(Partition),
    /// Became the owner; fetching the data.
    StartedFetching(Partition),
    /// Lost the partition; draining.
    StartedDraining(Partition),
    /// Lost a partition it was still fetching (queued messages go back to their senders).
    AbandonedFetch(Partition),
    /// Removed from the config: every slot dropped.
    DroppedAll,
}

/// The ownership state machine of one node.
#[derive(Debug, Clone)]
pub struct Ownership {
    me: String,
    epoch: u64,
    member: bool,
    others: BTreeSet<String>,
    slots: BTreeMap<Partition, Slot>,
    /// Partitions whose newest data this node held when it was removed (failed over): their
    /// history goes back to the current owners once this node is a member again.
    orphans: BTreeMap<Partition, u64>,
    /// Copies found on disk at start (partition → version), placed at the first observation
    /// of a bootstrapped config.
    restored: Option<BTreeMap<Partition, u64>>,
    skip_handoff: bool,
    /// The last ingress hold token handed out.
    last_hold: u64,
}

impl Ownership {
    /// The state of node `me` before it has observed any config. With `skip_handoff` (a test
    /// switch that shows what handoff is for) a new owner activates at once.
    pub fn new(me: impl Into<String>, skip_handoff: bool) -> Self {
        Self {
            me: me.into(),
            epoch: 0,
            member: false,
            others: BTreeSet::new(),
            slots: BTreeMap::new(),
            orphans: BTreeMap::new(),
            restored: None,
            skip_handoff,
            last_hold: 0,
        }
    }

    /// The copies this node's data directory holds (partition → version, as recorded when
    /// each was activated), read at start before the first observation. At that observation
    /// a copy of a partition this node owns is fetched again with the copy counting as an
    /// answer; a copy of a partition owned elsewhere is offered to its owner (`HandedOver`);
    /// if this node is no longer a member, the copies are orphans to give back.
    pub fn restore(&mut self, held: BTreeMap<Partition, u64>) {
        self.restored = Some(held);
    }

    /// The epoch last observed.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The slot of `partition`, if this node is involved with it.
    pub fn slot(&self, partition: Partition) -> Option<&Slot> {
        self.slots.get(&partition)
    }

    /// Every slot, by partition.
    pub fn slots(&self) -> &BTreeMap<Partition, Slot> {
        &self.slots
    }

    /// Partitions being fetched.
    pub fn fetching(&self) -> Vec<Partition> {
        self.in_phase(Phase::Fetching)
    }

    /// Partitions in `phase`.
    pub fn in_phase(&self, phase: Phase) -> Vec<Partition> {
        self.slots
            .iter()
            .filter(|(_, s)| s.phase == phase)
            .map(|(p, _)| *p)
            .collect()
    }

    /// The other members (active or leaving) a fetch must ask.
    pub fn peers(&self) -> &BTreeSet<String> {
        &self.others
    }

    /// True if this node is a member in the last observed config.
    pub fn is_member(&self) -> bool {
        self.member
    }

    /// Observes the config at `epoch`: its ring and every member (active or leaving). Nothing
    /// held is trusted without a fetch, except by the only member (nobody else could hold a
    /// newer copy).
    pub fn observe(&mut self, epoch: u64, ring: &Ring, members: &BTreeSet<String>) -> Vec<Transition> {
        let mut out = Vec::new();
        let was_member = self.member;
        self.member = members.contains(&self.me);
        self.others = members.iter().filter(|m| **m != self.me).cloned().collect();
        if epoch < self.epoch {
            return out; // never go back (a stale snapshot of the same log cannot arrive, but be safe)
        }
        self.epoch = epoch;
        if was_member && !self.member {
            // Removed (failed over, or the end of a leave): what we hold is stale or handed over.
            out.extend(self.drop_all());
            return out;
        }
        let (nodes, owners) = ring.owners_table();
        // Copies from disk are placed once, against the first bootstrapped config.
        let restored = if owners.is_empty() {
            BTreeMap::new()
        } else {
            self.restored.take().unwrap_or_default()
        };
        if !self.member {
            if !self.skip_handoff {
                self.orphans.extend(restored);
            }
            return out;
        }
        let my_index = nodes.iter().position(|n| *n == self.me);
        // An empty ring (not bootstrapped) owns nothing; every slot is then "not mine".
        let count = if owners.is_empty() {
            self.slots.keys().next_back().map(|p| p + 1).unwrap_or(0) as usize
        } else {
            owners.len()
        };
        for p in 0..count {
            let mine = my_index.is_some_and(|i| owners.get(p).is_some_and(|o| usize::from(*o) == i));
            let p = p as Partition;
            let slot = self.slots.get_mut(&p);
            match (mine, slot) {
                (true, None) => {
                    let (phase, version) = if self.skip_handoff || self.others.is_empty() {
                        (Phase::Active, epoch)
                    } else {
                        // A copy from disk counts as one more answer of the fetch.
                        (Phase::Fetching, restored.get(&p).copied().unwrap_or(0))
                    };
                    self.slots.insert(p, Slot::new(phase, version));
                    out.push(if phase == Phase::Active {
                        Transition::Activated(p)
                    } else {
                        Transition::StartedFetching(p)
                    });
                }
                (true, Some(slot)) => match slot.phase {
                    Phase::Active => slot.version = epoch,
                    Phase::Fetching => {}
                    Phase::Draining => {
                        // Back before anyone took it: our data is still the newest.
                        slot.phase = Phase::Active;
                        slot.version = epoch;
                        out.push(Transition::Activated(p));
                    }
                    Phase::HandedOver => {
                        // Someone may have processed it since: fetch the newest version.
                        if self.skip_handoff {
                            slot.phase = Phase::Active;
                            slot.version = epoch;
                            out.push(Transition::Activated(p));
                        } else {
                            slot.phase = Phase::Fetching;
                            out.push(Transition::StartedFetching(p));
                        }
                    }
                },
                (false, None) => {
                    if let Some(version) = restored.get(&p).copied() {
                        // Possibly the newest copy (this node may have crashed before it
                        // handed the partition over): offer it.
                        let mut slot = Slot::new(Phase::HandedOver, version);
                        slot.unsent = true;
                        self.slots.insert(p, slot);
                    }
                }
                (false, Some(slot)) => match slot.phase {
                    Phase::Active => {
                        slot.phase = Phase::Draining;
                        out.push(Transition::StartedDraining(p));
                    }
                    Phase::Fetching => {
                        if slot.version > 0 {
                            // A copy we handed over earlier is still here; keep offering it.
                            slot.phase = Phase::HandedOver;
                        } else {
                            self.slots.remove(&p);
                        }
                        out.push(Transition::AbandonedFetch(p));
                    }
                    Phase::Draining | Phase::HandedOver => {}
                },
            }
        }
        if self.skip_handoff {
            // Without handoff a lost partition is simply dropped.
            self.slots
                .retain(|_, s| matches!(s.phase, Phase::Active | Phase::Fetching) || s.busy());
        }
        out
    }

    /// This node learned (from the leader) that it is no longer a member: drop everything.
    /// What may be the newest data of a partition (active, draining, an own copy being
    /// fetched again, a copy from disk not handed to anyone) becomes an orphan: its history is
    /// given back to the owners once this node is a member again (entries the owner already
    /// has are skipped, so giving back too much costs only bandwidth).
    pub fn drop_all(&mut self) -> Vec<Transition> {
        self.member = false;
        for (p, slot) in std::mem::take(&mut self.slots) {
            let maybe_newest = match slot.phase {
                Phase::Active | Phase::Draining => true,
                Phase::Fetching => slot.version > 0,
                Phase::HandedOver => slot.unsent,
            };
            if maybe_newest && !self.skip_handoff {
                self.orphans.insert(p, slot.version);
            }
        }
        vec![Transition::DroppedAll]
    }

    /// Orphaned partitions to give back (only while a member: the owners must know us).
    pub fn orphans(&self) -> Vec<(Partition, u64)> {
        if !self.member {
            return Vec::new();
        }
        self.orphans.iter().map(|(p, v)| (*p, *v)).collect()
    }

    /// The orphan's history was merged into its owner's journal (or is not wanted).
    pub fn orphan_returned(&mut self, partition: Partition) {
        self.orphans.remove(&partition);
    }

    /// Whether this node may merge returned history into `partition` now: it must hold the
    /// partition's newest data (active, or draining what it admitted).
    pub fn accepts_return(&self, partition: Partition) -> bool {
        matches!(
            self.slots.get(&partition).map(|s| s.phase),
            Some(Phase::Active) | Some(Phase::Draining)
        )
    }

    /// Admits a message of `partition` into its queue: only the owner takes new work.
    pub fn admit(&mut self, partition: Partition) -> bool {
        match self.slots.get_mut(&partition) {
            Some(slot) if matches!(slot.phase, Phase::Active | Phase::Fetching) => {
                slot.pending += 1;
                true
            }
            _ => false,
        }
    }

    /// Whether an admitted message of `partition` may run now.
    pub fn gate(&self, partition: Partition) -> Gate {
        match self.slots.get(&partition).map(|s| s.phase) {
            Some(Phase::Active) | Some(Phase::Draining) => Gate::Run,
            Some(Phase::Fetching) => Gate::Wait,
            Some(Phase::HandedOver) | None => Gate::Moved,
        }
    }

    /// An admitted message of `partition` finished (processed or given back).
    pub fn finished(&mut self, partition: Partition) {
        if let Some(slot) = self.slots.get_mut(&partition) {
            slot.pending = slot.pending.saturating_sub(1);
        }
    }

    /// Answers a fetch of `partition` by a node that owns it at `asker_epoch`. A `Data` answer
    /// marks the slot handed over: the caller sends the data it holds now.
    ///
    /// Only a holder at the asker's epoch answers; otherwise "not yet". An asker behind us may
    /// no longer be the owner (it must catch up first). If we are behind the asker, we may be
    /// about to own the partition at an epoch in between (and fetch and run it), or our copy
    /// may already have been handed on to an owner the asker does not know of: our answer,
    /// even "not a holder", would be stale. So every fetch is decided on answers from one
    /// epoch.
    pub fn serve(&mut self, partition: Partition, asker_epoch: u64) -> Answer {
        if asker_epoch != self.epoch {
            return Answer::NotYet;
        }
        let Some(slot) = self.slots.get_mut(&partition) else {
            return Answer::NotHolder;
        };
        match slot.phase {
            // We own it at our epoch (the asker's too: it cannot be the owner).
            Phase::Active | Phase::Fetching => Answer::NotYet,
            Phase::Draining if slot.busy() => Answer::NotYet,
            Phase::Draining | Phase::HandedOver => {
                slot.phase = Phase::HandedOver;
                slot.confirmed = false;
                slot.unsent = false;
                Answer::Data {
                    version: slot.version,
                }
            }
        }
    }

    /// Decides the fetch of `partition` from the answers of every other member, counting this
    /// node's own copy (a partition handed over earlier and back again, or a copy found on
    /// disk after a restart) as one more answer: if it is at least as new as every other, it
    /// is kept and nothing is imported.
    pub fn decide_fetch(
        &self,
        partition: Partition,
        answers: &BTreeMap<String, Option<Answer>>,
    ) -> FetchDecision {
        let own = self
            .slots
            .get(&partition)
            .filter(|s| s.phase == Phase::Fetching)
            .map_or(0, |s| s.version);
        match decide(answers) {
            FetchDecision::Fresh if own > 0 => FetchDecision::KeepOwn { version: own },
            FetchDecision::Import { version, .. } if own > 0 && own >= version => {
                FetchDecision::KeepOwn { version: own }
            }
            decision => decision,
        }
    }

    /// The partition's data (fetched, or the own copy) is in place: activate if still
    /// fetching. The caller records the new version (the current epoch) on disk with the data.
    /// Returns false (and changes nothing) if the partition is no longer being fetched.
    pub fn fetched(&mut self, partition: Partition) -> bool {
        let epoch = self.epoch;
        match self.slots.get_mut(&partition) {
            Some(slot) if slot.phase == Phase::Fetching => {
                slot.phase = Phase::Active;
                slot.version = epoch;
                true
            }
            _ => false,
        }
    }

    /// Partitions a leaving node still owns, drains, or handed over without the new owner's
    /// confirmation that it is active with them (a fetcher's round may end without an import:
    /// another member said "not yet", or the stream broke).
    pub fn still_held(&self) -> usize {
        self.slots
            .values()
            .filter(|s| match s.phase {
                Phase::Active | Phase::Draining => true,
                Phase::HandedOver => !s.confirmed,
                Phase::Fetching => false,
            })
            .count()
    }

    /// Handed-over partitions whose new owner has not confirmed yet.
    pub fn unconfirmed(&self) -> Vec<Partition> {
        self.slots
            .iter()
            .filter(|(_, s)| s.phase == Phase::HandedOver && !s.confirmed)
            .map(|(p, _)| *p)
            .collect()
    }

    /// The owner of `partition`, at an epoch at least this node's, says it is active with it:
    /// the copy handed over is safe there.
    pub fn confirm(&mut self, partition: Partition) {
        if let Some(slot) = self.slots.get_mut(&partition) {
            if slot.phase == Phase::HandedOver {
                slot.confirmed = true;
            }
        }
    }

    /// Takes the MQTT ingress hold on `partition` (see [`Slot::ingress_hold`]): only the
    /// active owner may hold it, and one holder at a time. Returns the hold's token.
    pub fn take_ingress_hold(&mut self, partition: Partition) -> Option<u64> {
        let slot = self.slots.get_mut(&partition)?;
        if slot.phase != Phase::Active || slot.ingress_hold.is_some() {
            return None;
        }
        self.last_hold += 1;
        slot.ingress_hold = Some(self.last_hold);
        Some(self.last_hold)
    }

    /// Whether the hold `token` on `partition` still lets the ingress take messages in: the
    /// slot is still the active one that granted it.
    pub fn ingress_hold_valid(&self, partition: Partition, token: u64) -> bool {
        self.slots
            .get(&partition)
            .is_some_and(|s| s.phase == Phase::Active && s.ingress_hold == Some(token))
    }

    /// Ends the hold `token` on `partition` (the ingress acknowledged what it processed and
    /// disconnected): a draining slot may now be handed over. A token of a slot dropped
    /// since does not touch a newer slot's hold.
    pub fn release_ingress_hold(&mut self, partition: Partition, token: u64) {
        if let Some(slot) = self.slots.get_mut(&partition) {
            if slot.ingress_hold == Some(token) {
                slot.ingress_hold = None;
            }
        }
    }

    /// Whether this node is the active owner of `partition` (what a leaving node asks).
    pub fn is_active(&self, partition: Partition) -> bool {
        self.slots
            .get(&partition)
            .is_some_and(|s| s.phase == Phase::Active)
    }
}

/// Decides a fetch from the answers of every member asked (`None`: no answer, e.g. the member
/// is unreachable). The newest version wins; any `NotYet` or missing answer means retry.
pub fn decide(answers: &BTreeMap<String, Option<Answer>>) -> FetchDecision {
    let mut best: Option<(&str, u64)> = None;
    for (member, answer) in answers {
        match answer {
            None | Some(Answer::NotYet) => return FetchDecision::Retry,
            Some(Answer::NotHolder) => {}
            Some(Answer::Data { version }) => {
                if best.is_none_or(|(_, v)| *version > v) {
                    best = Some((member.as_str(), *version));
                }
            }
        }
    }
    match best {
        Some((from, version)) => FetchDecision::Import {
            from: from.to_string(),
            version,
        },
        None => FetchDecision::Fresh,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::RingParams;

    fn ring(members: &[&str]) -> Ring {
        Ring::build(
            &RingParams {
                partitions: 64,
                vnodes_per_weight: 64,
            },
            members.iter().map(|m| (*m, 1)),
        )
        .unwrap()
    }

    fn set(members: &[&str]) -> BTreeSet<String> {
        members.iter().map(|m| m.to_string()).collect()
    }

    #[test]
    fn only_the_sole_member_activates_without_a_fetch() {
        let mut a = Ownership::new("a", false);
        a.observe(1, &ring(&["a"]), &set(&["a"]));
        assert_eq!(a.in_phase(Phase::Active).len(), 64);
        let mut b = Ownership::new("b", false);
        b.observe(2, &ring(&["a", "b"]), &set(&["a", "b"]));
        assert!(b.in_phase(Phase::Active).is_empty());
        assert!(!b.fetching().is_empty());
    }

    #[test]
    fn a_restarted_node_fetches_what_it_owns_and_offers_what_it_does_not() {
        let mut a = Ownership::new("a", false);
        let r = ring(&["a", "b"]);
        // On disk: a copy of every partition, version 3.
        a.restore((0..64).map(|p| (p, 3)).collect());
        a.observe(5, &r, &set(&["a", "b"]));
        let (mine, theirs): (Vec<u32>, Vec<u32>) =
            (0..64).partition(|p| r.owner_of_partition(*p) == Some("a"));
        assert_eq!(a.fetching(), mine);
        assert_eq!(a.in_phase(Phase::HandedOver), theirs);
        // b holds a newer copy of one partition: it wins; elsewhere the own copy is kept.
        let (p_newer, p_own) = (mine[0], mine[1]);
        let answer = |a: Answer| -> BTreeMap<String, Option<Answer>> { [("b".to_string(), Some(a))].into() };
        assert_eq!(
            a.decide_fetch(p_newer, &answer(Answer::Data { version: 4 })),
            FetchDecision::Import {
                from: "b".into(),
                version: 4
            }
        );
        assert_eq!(
            a.decide_fetch(p_own, &answer(Answer::Data { version: 2 })),
            FetchDecision::KeepOwn { version: 3 }
        );
        assert_eq!(
            a.decide_fetch(p_own, &answer(Answer::NotHolder)),
            FetchDecision::KeepOwn { version: 3 }
        );
        assert_eq!(
            a.decide_fetch(p_own, &answer(Answer::NotYet)),
            FetchDecision::Retry
        );
        // The copies of b's partitions are offered to b.
        assert_eq!(a.serve(theirs[0], 5), Answer::Data { version: 3 });
    }

    #[test]
    fn a_restarted_node_that_was_removed_gives_its_copies_back() {
        let mut c = Ownership::new("c", false);
        c.restore([(1, 2), (7, 2)].into());
        c.observe(6, &ring(&["a", "b"]), &set(&["a", "b"]));
        assert!(c.slots().is_empty());
        c.observe(7, &ring(&["a", "b", "c"]), &set(&["a", "b", "c"]));
        assert_eq!(c.orphans(), vec![(1, 2), (7, 2)]);
    }

    #[test]
    fn a_restarted_node_told_it_was_removed_keeps_its_copies_as_orphans() {
        let mut a = Ownership::new("a", false);
        a.restore((0..64).map(|p| (p, 3)).collect());
        a.observe(5, &ring(&["a", "b"]), &set(&["a", "b"]));
        let offered = a.in_phase(Phase::HandedOver);
        // One copy is handed over after the restart: its new owner has it.
        assert_eq!(a.serve(offered[0], 5), Answer::Data { version: 3 });
        a.drop_all();
        a.observe(7, &ring(&["a", "b"]), &set(&["a", "b"]));
        let orphans: Vec<u32> = a.orphans().into_iter().map(|(p, _)| p).collect();
        let expected: Vec<u32> = (0..64).filter(|p| *p != offered[0]).collect();
        assert_eq!(orphans, expected);
    }

    #[test]
    fn a_leaver_counts_a_handed_over_partition_until_the_owner_confirms() {
        let mut a = Ownership::new("a", false);
        a.observe(1, &ring(&["a"]), &set(&["a"]));
        let mut members = set(&["a", "b"]);
        a.observe(2, &ring(&["b"]), &members);
        assert_eq!(a.still_held(), 64);
        for p in 0..64 {
            assert_eq!(a.serve(p, 2), Answer::Data { version: 1 });
        }
        assert_eq!(a.still_held(), 64, "sent is not imported");
        for p in 0..63 {
            a.confirm(p);
        }
        assert_eq!(a.unconfirmed(), vec![63]);
        assert_eq!(a.still_held(), 1);
        a.confirm(63);
        assert_eq!(a.still_held(), 0);
        members.remove("a");
        a.observe(3, &ring(&["b"]), &members);
        assert!(!a.is_member());
    }

    #[test]
    fn a_partition_back_before_anyone_imported_it_keeps_the_own_copy() {
        let mut a = Ownership::new("a", false);
        a.observe(1, &ring(&["a"]), &set(&["a"]));
        a.observe(2, &ring(&["a", "b"]), &set(&["a", "b"]));
        let moved = a.in_phase(Phase::Draining);
        assert_eq!(a.serve(moved[0], 2), Answer::Data { version: 1 });
        // b never imports; the partition comes back.
        a.observe(3, &ring(&["a"]), &set(&["a", "b"]));
        assert_eq!(a.slot(moved[0]).map(|s| s.phase), Some(Phase::Fetching));
        let none: BTreeMap<String, Option<Answer>> = [("b".to_string(), Some(Answer::NotHolder))].into();
        assert_eq!(
            a.decide_fetch(moved[0], &none),
            FetchDecision::KeepOwn { version: 1 }
        );
        assert!(a.fetched(moved[0]));
        assert_eq!(a.slot(moved[0]).map(|s| s.version), Some(3));
    }

    #[test]
    fn a_lost_partition_drains_then_hands_over_once_idle() {
        let mut a = Ownership::new("a", false);
        a.observe(1, &ring(&["a"]), &set(&["a"]));
        assert!(a.admit(5));
        a.observe(2, &ring(&["a", "b"]), &set(&["a", "b"]));
        let moved = *a.in_phase(Phase::Draining).first().unwrap();
        assert!(!a.admit(moved), "no new work for a draining partition");
        if moved == 5 {
            assert_eq!(a.gate(5), Gate::Run, "admitted work still runs");
            assert_eq!(a.serve(5, 2), Answer::NotYet);
            a.finished(5);
        }
        assert_eq!(a.serve(moved, 2), Answer::Data { version: 1 });
        assert_eq!(a.gate(moved), Gate::Moved);
        assert_eq!(
            a.serve(moved, 2),
            Answer::Data { version: 1 },
            "the copy stays offered"
        );
    }

    #[test]
    fn decide_takes_the_newest_version_and_waits_for_everyone() {
        let answers = |list: &[(&str, Option<Answer>)]| -> BTreeMap<String, Option<Answer>> {
            list.iter().map(|(m, a)| (m.to_string(), *a)).collect()
        };
        assert_eq!(
            decide(&answers(&[
                ("a", Some(Answer::Data { version: 3 })),
                ("b", Some(Answer::Data { version: 5 })),
                ("c", Some(Answer::NotHolder)),
            ])),
            FetchDecision::Import {
                from: "b".into(),
                version: 5
            }
        );
        assert_eq!(
            decide(&answers(&[("a", Some(Answer::NotHolder)), ("b", None)])),
            FetchDecision::Retry
        );
        assert_eq!(
            decide(&answers(&[("a", Some(Answer::NotHolder))])),
            FetchDecision::Fresh
        );
    }
}

#[cfg(test)]
mod orphan_tests {
    use super::*;
    use crate::ring::RingParams;

    #[test]
    fn a_failed_over_node_keeps_its_history_as_orphans_until_it_is_back() {
        let params = RingParams {
            partitions: 32,
            vnodes_per_weight: 16,
        };
        let ring = |m: &[&str]| Ring::build(&params, m.iter().map(|x| (*x, 1))).unwrap();
        let set = |m: &[&str]| m.iter().map(|x| x.to_string()).collect::<BTreeSet<_>>();
        let mut c = Ownership::new("c", false);
        c.observe(3, &ring(&["a", "b", "c"]), &set(&["a", "b", "c"]));
        for p in c.fetching() {
            assert!(c.fetched(p));
        }
        let held = c.in_phase(Phase::Active);
        assert!(!held.is_empty());
        c.drop_all();
        assert!(c.orphans().is_empty(), "not offered while not a member");
        c.observe(4, &ring(&["a", "b"]), &set(&["a", "b"]));
        c.observe(5, &ring(&["a", "b", "c"]), &set(&["a", "b", "c"]));
        let orphans: Vec<_> = c.orphans().into_iter().map(|(p, _)| p).collect();
        assert_eq!(orphans, held);
        assert_eq!(c.fetching(), held);
    }
}
