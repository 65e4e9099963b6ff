//! Exponential backoff with jitter: the one retry pacing of the node (reconnects, joins,
//! forwarding, handoff fetches, lease renewal, leaves). Pure: callers sleep for what it returns.

use std::time::Duration;

/// Exponential backoff between `min` and `max`, doubling on each failure.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff starting at `min`, doubling up to `max` (`max` below `min` means `min`).
    pub fn new(min: Duration, max: Duration) -> Self {
        let max = max.max(min);
        Self { min, max, next: min }
    }

    /// The delay before the next attempt (then doubled, up to `max`), with up to 20% jitter
    /// subtracted so that many connections failing together do not retry in lockstep.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base.mul_f64(1.0 - 0.2 * jitter_fraction())
    }

    /// The delay before the next attempt without jitter (for tests and logs).
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// Back to `min`, after a success.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// A number in [0, 1) that differs between calls; good enough for jitter.
fn jitter_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn backoff_doubles_up_to_max_and_resets() {
        let mut b = Backoff::new(S / 10, S);
        let seen: Vec<Duration> = (0..6)
            .map(|_| {
                let p = b.peek();
                let d = b.next_delay();
                assert!(d <= p && d >= p.mul_f64(0.8), "{d:?} vs {p:?}");
                p
            })
            .collect();
        assert_eq!(seen, [S / 10, S / 5, S * 2 / 5, S * 4 / 5, S, S]);
        b.reset();
        assert_eq!(b.peek(), S / 10);
    }
}
