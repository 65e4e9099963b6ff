//! End-to-end delivery figures: how fast the run's messages reached their final consumer (a
//! journal, or the broker-only subscriber) and how long each took from its publish.
//!
//! An acknowledgement says little for MQTT (the broker's PUBACK), so the throughput that
//! compares setups is the one measured where the messages land: distinct messages delivered,
//! over the time from the run's first publish to the last delivery. Publish and delivery times
//! are wall-clock times; a journal entry's timestamp is taken by the node that processed the
//! message when its handler ran (just before the durable append), so the figures assume the
//! clocks of the bench and the nodes agree (one machine, or NTP), and are only as precise as
//! the journal's millisecond timestamps.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::payload::Header;
use super::{new_histogram, Latency, MAX_LATENCY_US};

/// Microseconds since the Unix epoch, by the wall clock (0 if the clock is before 1970).
pub fn unix_us_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Where the messages of a run landed, and how fast.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delivery {
    /// `journal` (timestamps of the journal entries, milliseconds) or `subscriber` (arrival
    /// times at the broker-only subscriber).
    pub measured_at: &'static str,
    /// Distinct messages of the run delivered (a duplicate counts once, at its first arrival).
    pub delivered: u64,
    /// From the run's first publish to the last first arrival, in milliseconds.
    pub span_ms: u64,
    /// `delivered` per second over `span_ms`.
    pub throughput_per_s: f64,
    /// Publish-to-delivery time of each delivered message (first arrival).
    pub latency_us: Option<Latency>,
}

/// The delivery figures of a run that started publishing at `start_unix_us`: `sent` gives the
/// publish time of every message, `arrivals` every message seen at the consumer with its
/// arrival time (in any order, duplicates included). `None` when nothing arrived.
pub fn delivery(
    measured_at: &'static str,
    start_unix_us: u64,
    sent: &HashMap<Header, u64>,
    arrivals: impl IntoIterator<Item = (Header, u64)>,
) -> Option<Delivery> {
    let mut first: HashMap<Header, u64> = HashMap::new();
    for (header, at) in arrivals {
        let slot = first.entry(header).or_insert(at);
        *slot = (*slot).min(at);
    }
    let last = first.values().copied().max()?;
    let mut histogram = new_histogram();
    for (header, at) in &first {
        if let Some(sent_at) = sent.get(header) {
            histogram.saturating_record(at.saturating_sub(*sent_at).clamp(1, MAX_LATENCY_US));
        }
    }
    let span_us = last.saturating_sub(start_unix_us);
    let delivered = first.len() as u64;
    let latency = (!histogram.is_empty()).then(|| Latency {
        count: histogram.len(),
        min: histogram.min(),
        mean: histogram.mean().round() as u64,
        p50: histogram.value_at_quantile(0.50),
        p90: histogram.value_at_quantile(0.90),
        p99: histogram.value_at_quantile(0.99),
        max: histogram.max(),
    });
    Some(Delivery {
        measured_at,
        delivered,
        span_ms: span_us / 1000,
        throughput_per_s: if span_us > 0 {
            delivered as f64 / (span_us as f64 / 1e6)
        } else {
            0.0
        },
        latency_us: latency,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(seq: u64) -> Header {
        Header {
            key: "r-0".into(),
            producer: 0,
            seq,
        }
    }

    #[test]
    fn counts_first_arrivals_over_the_span() {
        let start = 1_000_000_000;
        let sent: HashMap<Header, u64> = (0..4).map(|s| (h(s), start + s * 1_000)).collect();
        // seq 1 arrives twice (the later copy is ignored); seq 3 never arrives.
        let arrivals = vec![
            (h(0), start + 2_000),
            (h(1), start + 500_000),
            (h(1), start + 3_000),
            (h(2), start + 1_000_000),
        ];
        let d = delivery("journal", start, &sent, arrivals).unwrap();
        assert_eq!(d.delivered, 3);
        assert_eq!(d.span_ms, 1_000);
        assert!((d.throughput_per_s - 3.0).abs() < 1e-9, "{d:?}");
        let l = d.latency_us.unwrap();
        assert_eq!(l.count, 3);
        assert_eq!(l.min, 2_000);
        assert!((997_000..=999_500).contains(&l.max), "{l:?}");
        assert!(delivery("journal", start, &sent, vec![]).is_none());
        assert!(unix_us_now() > 1_600_000_000_000_000);
    }
}
