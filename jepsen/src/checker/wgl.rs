//! Linearizability search: the Wing-Gong algorithm with Lowe's improvements (WGL), for any
//! sequential [`Model`].
//!
//! The history of one object becomes a doubly linked list of call and return events in
//! real-time order. The search walks the list: at a call it tries to linearize that operation
//! next (the model must accept it from the current state); linearizing *lifts* the call and its
//! return out of the list and restarts at the head. Reaching a return whose operation is not yet
//! linearized means the current order cannot work: the search backtracks to the last choice.
//! Lowe's memoization keeps a set of (linearized operations, model state) configurations already
//! explored, so no configuration is searched twice.
//!
//! Operations with unknown outcome (`info`) have no return event: they may be linearized at
//! any point after their call, or never. The search succeeds as soon as every completed (`ok`)
//! operation is linearized.
//!
//! The search is bounded by a step budget and a memo size; running out yields
//! [`Outcome::Unknown`], which the G1 checker treats as a failure (never as a pass).
//!
//! Non-goals: P-compositionality across keys (the caller splits the history per key) and
//! Knossos' graph-based "linear" algorithm.

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;

/// A sequential specification: `step` applies an operation (with its observed result) to a
/// state and returns the next state, or `None` when the operation could not have returned
/// that result from this state.
pub trait Model: Clone + Eq + Hash + Debug {
    /// An operation together with what it returned.
    type Op: Debug;
    /// The next state, or `None` if `op` is impossible in this state.
    fn step(&self, op: &Self::Op) -> Option<Self>;
}

/// One operation of a single object's history, with positions in real-time order.
#[derive(Debug, Clone)]
pub struct Entry<O> {
    /// Caller's identifier (the history index of the invocation), used in reports.
    pub id: u64,
    /// Position of the call (e.g. the invocation's history index).
    pub call: u64,
    /// Position of the return; `None` for an operation whose outcome is unknown.
    pub ret: Option<u64>,
    /// The operation and its result.
    pub op: O,
}

/// Search limits.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Maximum search steps.
    pub max_steps: u64,
    /// Maximum memoized configurations.
    pub max_memo: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            max_steps: 20_000_000,
            max_memo: 2_000_000,
        }
    }
}

/// Why a history is not linearizable: the deepest the search got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counterexample {
    /// Ids of the operations linearized, in order, at the deepest point of the search.
    pub linearized: Vec<u64>,
    /// The model state after them (`Debug` text).
    pub state: String,
    /// The operation whose return was reached before it could be linearized there.
    pub stuck_at: u64,
    /// Debug text of that operation.
    pub stuck_op: String,
}

/// Result of a search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A linearization exists.
    Linearizable {
        /// Search steps used.
        steps: u64,
    },
    /// None exists.
    NotLinearizable(Counterexample),
    /// The budget ran out: the history may or may not be linearizable.
    Unknown {
        /// Search steps used.
        steps: u64,
        /// Memoized configurations.
        memo: usize,
    },
}

impl Outcome {
    /// True only for a proven linearizable history.
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Outcome::Linearizable { .. })
    }
}

const NIL: usize = usize::MAX;
const HEAD: usize = 0;

/// Fixed-size bit set of linearized operations (the memo key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64).max(1)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// Checks whether `entries`, applied to `init`, are linearizable.
pub fn check<M: Model>(init: &M, entries: &[Entry<M::Op>], budget: Budget) -> Outcome {
    // Events: node 0 is the list head; then one node per call and per return.
    struct Node {
        op: usize,
        is_call: bool,
        /// For a call: its return node (NIL for unknown outcome).
        ret: usize,
    }
    let mut events: Vec<(u64, usize, bool)> = Vec::with_capacity(entries.len() * 2);
    for (i, e) in entries.iter().enumerate() {
        events.push((e.call, i, true));
        if let Some(r) = e.ret {
            events.push((r, i, false));
        }
    }
    // Real-time order; at equal positions calls first (they may then be linearized before the
    // return, which is the permissive reading of a tie).
    events.sort_by_key(|&(t, i, is_call)| (t, !is_call, i));

    let mut nodes: Vec<Node> = vec![Node {
        op: NIL,
        is_call: false,
        ret: NIL,
    }];
    let mut call_node = vec![NIL; entries.len()];
    let mut ret_node = vec![NIL; entries.len()];
    for &(_, i, is_call) in &events {
        let n = nodes.len();
        nodes.push(Node {
            op: i,
            is_call,
            ret: NIL,
        });
        if is_call {
            call_node[i] = n;
        } else {
            ret_node[i] = n;
        }
    }
    for i in 0..entries.len() {
        nodes[call_node[i]].ret = ret_node[i];
    }
    let len = nodes.len();
    let mut next: Vec<usize> = (1..=len).map(|n| if n == len { NIL } else { n }).collect();
    let mut prev: Vec<usize> = (0..len).map(|n| if n == 0 { NIL } else { n - 1 }).collect();

    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, n: usize| {
        let (p, x) = (prev[n], next[n]);
        next[p] = x;
        if x != NIL {
            prev[x] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, n: usize| {
        let (p, x) = (prev[n], next[n]);
        next[p] = n;
        if x != NIL {
            prev[x] = n;
        }
    };

    let mut remaining_ok = entries.iter().filter(|e| e.ret.is_some()).count();
    let mut state = init.clone();
    let mut linearized = Bits::new(entries.len());
    let mut memo: HashSet<(Bits, M)> = HashSet::new();
    let mut stack: Vec<(usize, M)> = Vec::new();
    let mut steps: u64 = 0;
    let mut deepest: Option<Counterexample> = None;
    let mut deepest_len = 0usize;
    let mut entry = next[HEAD];

    loop {
        if remaining_ok == 0 {
            return Outcome::Linearizable { steps };
        }
        steps += 1;
        if steps > budget.max_steps || memo.len() > budget.max_memo {
            return Outcome::Unknown {
                steps,
                memo: memo.len(),
            };
        }
        let at_return = entry == NIL || !nodes[entry].is_call;
        if !at_return {
            let i = nodes[entry].op;
            let mut moved = false;
            if let Some(next_state) = state.step(&entries[i].op) {
                let mut bits = linearized.clone();
                bits.set(i);
                if memo.insert((bits.clone(), next_state.clone())) {
                    stack.push((entry, std::mem::replace(&mut state, next_state)));
                    linearized = bits;
                    unlink(&mut next, &mut prev, entry);
                    let r = nodes[entry].ret;
                    if r != NIL {
                        unlink(&mut next, &mut prev, r);
                        remaining_ok -= 1;
                    }
                    entry = next[HEAD];
                    moved = true;
                }
            }
            if !moved {
                entry = next[entry];
            }
            continue;
        }
        // A return (or the end) before its operation was linearized: backtrack.
        if stack.len() >= deepest_len && entry != NIL {
            deepest_len = stack.len();
            let stuck = nodes[entry].op;
            deepest = Some(Counterexample {
                linearized: stack.iter().map(|&(n, _)| entries[nodes[n].op].id).collect(),
                state: format!("{state:?}"),
                stuck_at: entries[stuck].id,
                stuck_op: format!("{:?}", entries[stuck].op),
            });
        }
        let Some((call, previous)) = stack.pop() else {
            return Outcome::NotLinearizable(deepest.unwrap_or(Counterexample {
                linearized: Vec::new(),
                state: format!("{init:?}"),
                stuck_at: 0,
                stuck_op: String::new(),
            }));
        };
        state = previous;
        let i = nodes[call].op;
        linearized.clear(i);
        let r = nodes[call].ret;
        if r != NIL {
            relink(&mut next, &mut prev, r);
            remaining_ok += 1;
        }
        relink(&mut next, &mut prev, call);
        entry = next[call];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A counter that only increments: ops are `Some(expected value read)` or `None` (incr).
    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    struct Counter(u32);
    impl Model for Counter {
        type Op = Option<u32>;
        fn step(&self, op: &Option<u32>) -> Option<Counter> {
            match op {
                None => Some(Counter(self.0 + 1)),
                Some(v) => (*v == self.0).then(|| self.clone()),
            }
        }
    }

    fn e(id: u64, call: u64, ret: Option<u64>, op: Option<u32>) -> Entry<Option<u32>> {
        Entry { id, call, ret, op }
    }

    #[test]
    fn sequential_and_concurrent_histories() {
        // incr [0,1], read 1 [2,3]
        let ok = [e(0, 0, Some(1), None), e(1, 2, Some(3), Some(1))];
        assert!(check(&Counter(0), &ok, Budget::default()).is_linearizable());
        // read 1 strictly before the incr: impossible.
        let bad = [e(0, 2, Some(3), None), e(1, 0, Some(1), Some(1))];
        let out = check(&Counter(0), &bad, Budget::default());
        assert!(matches!(out, Outcome::NotLinearizable(_)), "{out:?}");
        // Concurrent: read 1 overlapping the incr is fine.
        let conc = [e(0, 0, Some(3), None), e(1, 1, Some(2), Some(1))];
        assert!(check(&Counter(0), &conc, Budget::default()).is_linearizable());
    }

    #[test]
    fn unknown_outcomes_are_optional() {
        // An incr with unknown outcome, then a read of 0 and a read of 1: both fine.
        let h0 = [e(0, 0, None, None), e(1, 1, Some(2), Some(0))];
        assert!(check(&Counter(0), &h0, Budget::default()).is_linearizable());
        let h1 = [e(0, 0, None, None), e(1, 1, Some(2), Some(1))];
        assert!(check(&Counter(0), &h1, Budget::default()).is_linearizable());
        // ...but it cannot take effect before it was invoked.
        let h2 = [e(0, 3, None, None), e(1, 1, Some(2), Some(1))];
        assert!(!check(&Counter(0), &h2, Budget::default()).is_linearizable());
    }

    #[test]
    fn a_tiny_budget_gives_unknown() {
        let h: Vec<_> = (0..40).map(|i| e(i, i, Some(100 + i), None)).collect();
        let out = check(
            &Counter(0),
            &h,
            Budget {
                max_steps: 5,
                max_memo: 100,
            },
        );
        assert!(matches!(out, Outcome::Unknown { .. }), "{out:?}");
    }
}
