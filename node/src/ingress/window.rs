//! The in-flight window of an ordered route's connection: which received messages may be
//! dispatched now, and which acknowledgements may go out. Plain data, no I/O: the ordered worker
//! in [`super::connection`] feeds it what arrives and what finished, and does what it answers.
//!
//! Messages are *released* in arrival order: a message is released once it and every message
//! received before it have finished; a released message is acknowledged (unless withheld, see
//! below) and leaves the window.
//!
//! # Invariants (tested below)
//! - **Per key, one at a time, in arrival order.** A message is dispatched only once the
//!   previous message of its key was released, so a key never has two messages dispatching,
//!   and messages of different keys are dispatched concurrently.
//! - **Acknowledgements in arrival order** (MQTT 3.1.1 §4.6): only released messages are
//!   acknowledged, so the acknowledged messages are always a prefix of what arrived, fully
//!   processed. A slow message holds back the acknowledgements of the ones after it, and the
//!   next message of each of their keys.
//! - **A redelivery repeats at most one processed message per key, in place.** After a lost
//!   connection or a takeover the broker resends every unacknowledged message, in order.
//!   Because a key's next message starts only after its previous one was acknowledged (or
//!   will never be) and, the worker adds, that PUBACK was written to the socket, the resent
//!   messages of a key hold at most one that was already
//!   processed, and it comes first: a duplicate shows next to its original, never after a
//!   later message of its key (what the stream checker of the fault harness accepts without
//!   message ids).
//! - **Nothing after a withheld message is acknowledged.** A message that finished without an
//!   acknowledgement (abandoned on stop, or a copy that the broker redelivers after a lost
//!   connection) withholds the acknowledgements of every later message of the same connection
//!   generation: the broker then redelivers them all, in order (duplicates, never a gap).
//! - **Bounded.** The worker takes a new message only while fewer than `capacity` are held
//!   (dispatching, waiting for their key, or finished and waiting for an earlier one).
//!
//! # Non-goals
//! Knowing which connection is live (the ack gate drops acknowledgements of a lost connection),
//! and retries (one message's dispatch retries in place, holding its key).

use std::collections::{HashMap, VecDeque};

/// Position of a message in arrival order, unique per window.
pub(crate) type Slot = u64;

/// How a dispatched message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    /// Accepted by the cluster, or refused for good: acknowledge it (in order).
    Acknowledge,
    /// Not to be acknowledged: the broker will send it again.
    Withhold,
}

/// What a finished message lets happen next.
#[derive(Debug)]
pub(crate) struct Released<T> {
    /// Messages whose key's previous message was just released: dispatch them now.
    pub start: Vec<Slot>,
    /// Messages to acknowledge now, in arrival order.
    pub acks: Vec<T>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The previous message of the same key has not been released.
    Waiting,
    Dispatching,
    Finished(Finish),
}

#[derive(Debug)]
struct Entry<T> {
    key: String,
    generation: u64,
    state: State,
    item: T,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct OrderedWindow<T> {
    capacity: usize,
    /// Slot of `entries[0]`; slots are contiguous (only the oldest entry ever leaves).
    first_slot: Slot,
    /// Held messages in arrival order.
    entries: VecDeque<Entry<T>>,
    /// Per key, its held messages, oldest first; the first is dispatching or finished.
    chains: HashMap<String, VecDeque<Slot>>,
    /// Highest connection generation in which a message was withheld.
    withheld: Option<u64>,
}

impl<T> OrderedWindow<T> {
    /// A window holding at most `capacity` messages (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            first_slot: 0,
            entries: VecDeque::new(),
            chains: HashMap::new(),
            withheld: None,
        }
    }

    /// Whether another message may be taken.
    pub fn has_room(&self) -> bool {
        self.entries.len() < self.capacity
    }

    /// Messages held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Takes a message that arrived on connection `generation` (generations never decrease from
    /// one call to the next). Returns its slot if it may be dispatched now; otherwise it waits
    /// for its key and a later [`finish`](Self::finish) starts it.
    pub fn receive(&mut self, key: String, generation: u64, item: T) -> Option<Slot> {
        let slot = self.first_slot + self.entries.len() as Slot;
        let chain = self.chains.entry(key.clone()).or_default();
        let start = chain.is_empty();
        chain.push_back(slot);
        self.entries.push_back(Entry {
            key,
            generation,
            state: if start { State::Dispatching } else { State::Waiting },
            item,
        });
        start.then_some(slot)
    }

    /// The message in `slot`, while held.
    pub fn item(&self, slot: Slot) -> Option<&T> {
        self.index(slot).map(|i| &self.entries[i].item)
    }

    /// Records that the dispatch of `slot` ended, and releases what that completes. A slot that
    /// is not dispatching (unknown, waiting, already finished) changes nothing.
    pub fn finish(&mut self, slot: Slot, how: Finish) -> Released<T> {
        let mut released = Released {
            start: Vec::new(),
            acks: Vec::new(),
        };
        let Some(index) = self.index(slot) else {
            return released;
        };
        if self.entries[index].state != State::Dispatching {
            return released;
        }
        self.entries[index].state = State::Finished(how);
        while self
            .entries
            .front()
            .is_some_and(|e| matches!(e.state, State::Finished(_)))
        {
            let Some(entry) = self.entries.pop_front() else {
                break;
            };
            let slot = self.first_slot;
            self.first_slot += 1;
            if let Some(next) = self.release_key(&entry.key, slot) {
                released.start.push(next);
            }
            let withheld = self.withheld.is_some_and(|g| entry.generation <= g);
            match entry.state {
                State::Finished(Finish::Acknowledge) if !withheld => released.acks.push(entry.item),
                State::Finished(Finish::Withhold) => {
                    self.withheld = Some(
                        self.withheld
                            .map_or(entry.generation, |g| g.max(entry.generation)),
                    );
                }
                _ => {}
            }
        }
        released
    }

    /// `slot` of `key` left the window: the key's next message, if any, may dispatch now.
    fn release_key(&mut self, key: &str, slot: Slot) -> Option<Slot> {
        let chain = self.chains.get_mut(key)?;
        if chain.front() == Some(&slot) {
            chain.pop_front();
        }
        let Some(next) = chain.front().copied() else {
            self.chains.remove(key);
            return None;
        };
        let index = self.index(next)?;
        self.entries[index].state = State::Dispatching;
        Some(next)
    }

    fn index(&self, slot: Slot) -> Option<usize> {
        let index = usize::try_from(slot.checked_sub(self.first_slot)?).ok()?;
        (index < self.entries.len()).then_some(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Items are their arrival number, for readable assertions.
    fn window(capacity: usize) -> OrderedWindow<u32> {
        OrderedWindow::new(capacity)
    }

    fn key(k: &str) -> String {
        k.to_string()
    }

    #[test]
    fn different_keys_dispatch_at_once_same_key_waits_for_release() {
        let mut w = window(8);
        assert_eq!(w.receive(key("a"), 0, 0), Some(0));
        assert_eq!(w.receive(key("b"), 0, 1), Some(1));
        assert_eq!(w.receive(key("a"), 0, 2), None, "a's second waits for its first");
        assert_eq!(w.receive(key("c"), 0, 3), Some(3));
        assert_eq!(w.receive(key("a"), 0, 4), None);

        // a's first finishes and is the oldest: released, so a's second starts.
        let r = w.finish(0, Finish::Acknowledge);
        assert_eq!((r.start, r.acks), (vec![2], vec![0]));
        // Finishing a message that is waiting or unknown changes nothing.
        let r = w.finish(4, Finish::Acknowledge);
        assert_eq!((r.start, r.acks), (vec![], vec![]));
        let r = w.finish(99, Finish::Acknowledge);
        assert_eq!((r.start, r.acks), (vec![], vec![]));
        // a's second finishes, but b (1) has not: neither is released, a's third waits.
        let r = w.finish(2, Finish::Acknowledge);
        assert_eq!((r.start, r.acks), (vec![], vec![]));
        let r = w.finish(1, Finish::Acknowledge);
        assert_eq!((r.start, r.acks), (vec![4], vec![1, 2]));
        assert_eq!(w.item(4), Some(&4));
        assert_eq!(w.item(2), None, "released");
    }

    #[test]
    fn acknowledgements_leave_in_arrival_order() {
        let mut w = window(8);
        for (i, k) in ["a", "b", "c", "d"].into_iter().enumerate() {
            assert!(w.receive(key(k), 0, i as u32).is_some());
        }
        assert!(w.finish(3, Finish::Acknowledge).acks.is_empty());
        assert!(w.finish(1, Finish::Acknowledge).acks.is_empty());
        assert!(w.finish(2, Finish::Acknowledge).acks.is_empty());
        assert_eq!(w.finish(0, Finish::Acknowledge).acks, vec![0, 1, 2, 3]);
        assert_eq!(w.len(), 0);
        // A finished message is not finished twice.
        assert!(w.finish(0, Finish::Acknowledge).acks.is_empty());
    }

    #[test]
    fn one_release_can_start_several_keys() {
        let mut w = window(8);
        w.receive(key("a"), 0, 0);
        w.receive(key("b"), 0, 1);
        w.receive(key("b"), 0, 2);
        w.receive(key("a"), 0, 3);
        assert!(w.finish(1, Finish::Acknowledge).start.is_empty());
        let r = w.finish(0, Finish::Acknowledge);
        assert_eq!((r.start, r.acks), (vec![3, 2], vec![0, 1]));
    }

    #[test]
    fn capacity_counts_finished_messages_waiting_for_an_earlier_ack() {
        let mut w = window(2);
        assert!(w.has_room());
        w.receive(key("a"), 0, 0);
        w.receive(key("b"), 0, 1);
        assert!(!w.has_room());
        assert!(w.finish(1, Finish::Acknowledge).acks.is_empty());
        assert!(!w.has_room(), "1 is done but its ack waits for 0");
        assert_eq!(w.finish(0, Finish::Acknowledge).acks, vec![0, 1]);
        assert!(w.has_room());
        assert_eq!(OrderedWindow::<u32>::new(0).capacity, 1);
    }

    #[test]
    fn a_withheld_message_holds_back_later_acks_of_its_generation_only() {
        let mut w = window(16);
        w.receive(key("a"), 1, 0);
        w.receive(key("b"), 1, 1);
        w.receive(key("c"), 1, 2);
        w.receive(key("a"), 1, 3); // waits for 0
        assert!(w.finish(2, Finish::Acknowledge).acks.is_empty());
        // 0 is abandoned: released without an ack, so its key's next message may run (the
        // broker redelivers 0 before it on the next connection, and the ack gate would never
        // acknowledge 3 on this one)...
        let r = w.finish(0, Finish::Withhold);
        assert_eq!(r.start, vec![3]);
        assert!(r.acks.is_empty());
        // ...but nothing after 0 in generation 1 is acknowledged.
        assert!(w.finish(1, Finish::Acknowledge).acks.is_empty());
        // The next connection's messages are acknowledged again.
        w.receive(key("d"), 2, 4);
        assert!(
            w.finish(4, Finish::Acknowledge).acks.is_empty(),
            "3 is still dispatching"
        );
        assert_eq!(w.finish(3, Finish::Acknowledge).acks, vec![4]);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn an_old_generation_copy_keeps_its_key_until_it_left() {
        // After a reconnect the broker resends message 0 (same key); the old copy is still
        // dispatching, so the new one waits: the key never runs two at once.
        let mut w = window(8);
        assert_eq!(w.receive(key("a"), 1, 0), Some(0));
        assert_eq!(w.receive(key("a"), 2, 1), None);
        assert_eq!(w.receive(key("b"), 2, 2), Some(2));
        assert!(w.finish(2, Finish::Acknowledge).acks.is_empty());
        let r = w.finish(0, Finish::Withhold);
        assert_eq!(r.start, vec![1]);
        assert!(r.acks.is_empty());
        assert_eq!(w.finish(1, Finish::Acknowledge).acks, vec![1, 2]);
    }

    /// Many keys, finishes in a scrambled order. Per key: dispatches follow arrival order, and a
    /// message starts only after the previous one of its key was acknowledged (so at most one
    /// processed-but-unacknowledged message per key, which is what keeps redeliveries in
    /// place). Acks cover every message once, in arrival order.
    #[test]
    fn scrambled_finishes_keep_both_orders() {
        let keys = ["a", "b", "c", "d", "e"];
        let key_of = |i: u32| keys[(i as usize * 7 + i as usize / 3) % keys.len()];
        let n = 200u32;
        let mut w = OrderedWindow::new(64);
        let mut next_in = 0u32;
        let mut dispatching: Vec<Slot> = Vec::new();
        let mut dispatched: Vec<u32> = Vec::new();
        let mut acks: Vec<u32> = Vec::new();
        let mut step = 0usize;
        while acks.len() < n as usize {
            while next_in < n && w.has_room() {
                if let Some(slot) = w.receive(key(key_of(next_in)), 0, next_in) {
                    dispatching.push(slot);
                    dispatched.push(next_in);
                }
                next_in += 1;
            }
            step = step.wrapping_mul(31).wrapping_add(17);
            let slot = dispatching.swap_remove(step % dispatching.len());
            let r = w.finish(slot, Finish::Acknowledge);
            acks.extend(r.acks);
            for next in r.start {
                let item = *w.item(next).expect("held");
                // Every earlier message of its key is acknowledged already.
                let earlier = (0..item).filter(|i| key_of(*i) == key_of(item)).count();
                let acked = acks.iter().filter(|i| key_of(**i) == key_of(item)).count();
                assert_eq!(
                    earlier, acked,
                    "{item} started before its key's previous was acked"
                );
                dispatching.push(next);
                dispatched.push(item);
            }
        }
        assert_eq!(acks, (0..n).collect::<Vec<_>>());
        for k in keys {
            let of_key: Vec<u32> = dispatched.iter().copied().filter(|i| key_of(*i) == k).collect();
            assert_eq!(
                of_key.len(),
                of_key.iter().collect::<std::collections::HashSet<_>>().len()
            );
            assert!(of_key.windows(2).all(|p| p[0] < p[1]), "key {k}: {of_key:?}");
        }
        assert_eq!(w.len(), 0);
    }
}
