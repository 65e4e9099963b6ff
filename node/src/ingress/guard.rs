//! Reconnect pacing: the takeover guard that keeps two holders of one client id from throwing
//! each other off the broker in a tight loop. A pure state machine fed with events and the
//! current time; the connection task only sleeps for what it returns. Its fence delays, like
//! every reconnect delay, come from [`crate::backoff::Backoff`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::backoff::Backoff;

/// What to do after the broker closed an established connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterPeerClose {
    /// Reconnect with the usual backoff.
    Reconnect,
    /// Stay away this long: another client with our id is probably taking the session over.
    Fence(Duration),
}

/// Detects repeated session takeovers.
///
/// MQTT 3.1.1 has no reason code for a takeover: the broker just closes the old connection.
/// A single close by the broker is ambiguous (restart, network, takeover) and is answered with
/// a normal reconnect. A second close of an established connection within `window` is taken
/// as a takeover fight: the guard answers [`AfterPeerClose::Fence`] with a delay that doubles
/// on each further fence (from `fence_min` up to `fence_max`), and keeps answering it while
/// closes keep coming within the window. A connection that stays up for a whole `window` clears
/// the history. The node's ingress plan, not this guard, decides who
/// holds a route; the guard only keeps a stale or misconfigured second holder from spinning.
#[derive(Debug, Clone)]
pub(crate) struct TakeoverGuard {
    window: Duration,
    /// The next fence delay: doubles on each fence, back to the minimum once stable.
    fence: Backoff,
    closes: VecDeque<Instant>,
    connected_at: Option<Instant>,
}

impl TakeoverGuard {
    pub fn new(window: Duration, fence_min: Duration, fence_max: Duration) -> Self {
        Self {
            window,
            fence: Backoff::new(fence_min, fence_max),
            closes: VecDeque::new(),
            connected_at: None,
        }
    }

    /// The broker accepted a connection (CONNACK).
    pub fn on_connected(&mut self, now: Instant) {
        self.connected_at = Some(now);
    }

    /// The connection failed for a reason other than a close by the broker.
    pub fn on_other_failure(&mut self, now: Instant) {
        self.forget_if_stable(now);
    }

    /// The broker closed an established connection without an error on our side.
    pub fn on_peer_close(&mut self, now: Instant) -> AfterPeerClose {
        self.forget_if_stable(now);
        self.closes.push_back(now);
        while self
            .closes
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.window)
        {
            self.closes.pop_front();
        }
        if self.closes.len() < 2 {
            return AfterPeerClose::Reconnect;
        }
        // The history is kept: coming back from a fence and being thrown off again within the
        // window fences again at once (one connection per fence period, not a burst).
        // The delay without the jitter `next_delay` subtracts: a fence is a fixed period (the
        // log names it), not a retry racing other clients.
        let delay = self.fence.peek();
        self.fence.next_delay();
        AfterPeerClose::Fence(delay)
    }

    fn forget_if_stable(&mut self, now: Instant) {
        if let Some(since) = self.connected_at.take() {
            if now.duration_since(since) >= self.window {
                self.closes.clear();
                self.fence.reset();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn one_peer_close_reconnects() {
        let t0 = Instant::now();
        let mut g = TakeoverGuard::new(30 * S, 10 * S, 80 * S);
        g.on_connected(t0);
        assert_eq!(g.on_peer_close(t0 + S), AfterPeerClose::Reconnect);
    }

    #[test]
    fn repeated_peer_closes_fence_with_growing_delays() {
        let t0 = Instant::now();
        let mut g = TakeoverGuard::new(30 * S, 10 * S, 25 * S);
        let mut t = t0;
        let mut outcomes = Vec::new();
        for _ in 0..8 {
            g.on_connected(t);
            t += S;
            outcomes.push(g.on_peer_close(t));
        }
        use AfterPeerClose::*;
        assert_eq!(
            outcomes,
            [
                Reconnect,
                Fence(10 * S),
                Fence(20 * S),
                Fence(25 * S),
                Fence(25 * S),
                Fence(25 * S),
                Fence(25 * S),
                Fence(25 * S)
            ]
        );
    }

    #[test]
    fn closes_far_apart_or_after_a_stable_connection_do_not_fence() {
        let t0 = Instant::now();
        let mut g = TakeoverGuard::new(30 * S, 10 * S, 80 * S);
        g.on_connected(t0);
        assert_eq!(g.on_peer_close(t0 + S), AfterPeerClose::Reconnect);
        // Next close 40 s later: outside the window.
        g.on_connected(t0 + 2 * S);
        assert_eq!(g.on_peer_close(t0 + 42 * S), AfterPeerClose::Reconnect);
        // A fence, then a connection that stays up longer than the window: history cleared.
        g.on_connected(t0 + 43 * S);
        assert!(matches!(g.on_peer_close(t0 + 44 * S), AfterPeerClose::Fence(_)));
        g.on_connected(t0 + 60 * S);
        assert_eq!(g.on_peer_close(t0 + 100 * S), AfterPeerClose::Reconnect);
        g.on_connected(t0 + 101 * S);
        assert_eq!(g.on_peer_close(t0 + 102 * S), AfterPeerClose::Fence(10 * S));
    }

    #[test]
    fn other_failures_do_not_count_as_takeovers() {
        let t0 = Instant::now();
        let mut g = TakeoverGuard::new(30 * S, 10 * S, 80 * S);
        g.on_connected(t0);
        assert_eq!(g.on_peer_close(t0 + S), AfterPeerClose::Reconnect);
        g.on_other_failure(t0 + 2 * S);
        g.on_other_failure(t0 + 3 * S);
        g.on_connected(t0 + 4 * S);
        assert!(matches!(g.on_peer_close(t0 + 5 * S), AfterPeerClose::Fence(_)));
    }
}
