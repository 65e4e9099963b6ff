//! Live statistics of this node for the console and `routemq-ctl hot-keys`: messages received
//! and processed, handler time, and the hot keys of each route.
//!
//! Bounded whatever the load: counters and a fixed-bucket latency histogram per sampling
//! interval, [`SERIES_LEN`] samples kept, one Space-Saving sketch ([`crate::hotkeys`]) of
//! [`HOT_KEY_CAPACITY`] counters per route for at most [`MAX_ROUTES`] routes. The processor
//! and the dispatcher record; the sampler ([`run_sampler`], a task of the node) closes an interval every
//! [`SAMPLE_EVERY`] and a hot-key window every [`HOT_KEY_WINDOW`]. Prometheus metrics stay the
//! place for long-term figures; these are the last minutes, kept in memory.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use crate::hotkeys::{HotKeys, Summary};
use crate::metrics::LATENCY_BUCKETS;

/// Length of one sample.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Samples kept: ten minutes.
pub const SERIES_LEN: usize = 120;
/// Length of a hot-key counting window.
pub const HOT_KEY_WINDOW: Duration = Duration::from_secs(60);
/// Counters per route's hot-key sketch.
pub const HOT_KEY_CAPACITY: usize = 200;
/// Routes whose hot keys are counted at most.
pub const MAX_ROUTES: usize = 1_000;

/// One closed sampling interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// End of the interval, Unix ms.
    pub at_unix_ms: u64,
    /// Handlers run per second.
    pub processed_per_s: f64,
    /// Messages accepted at this node's edge per second.
    pub received_per_s: f64,
    /// Handler time p99 (the upper bound of its bucket), ms; None without messages.
    pub p99_ms: Option<f64>,
    /// The same per route, by route name (routes without messages left out).
    pub routes: BTreeMap<String, RouteSample>,
}

/// One route's figures over one interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouteSample {
    /// Handlers run per second.
    pub processed_per_s: f64,
    /// Handler time p99 (bucket upper bound), ms.
    pub p99_ms: Option<f64>,
}

/// Handlers run and their times, over one interval.
#[derive(Debug)]
struct Counts {
    processed: u64,
    /// Counts per [`LATENCY_BUCKETS`] bound, plus one for anything above the last.
    latency: Vec<u64>,
}

impl Counts {
    fn new() -> Self {
        Self {
            processed: 0,
            latency: vec![0; LATENCY_BUCKETS.len() + 1],
        }
    }

    fn record(&mut self, bucket: usize) {
        self.processed += 1;
        self.latency[bucket] += 1;
    }

    fn p99_ms(&self) -> Option<f64> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = total - total / 100; // the 99th percentile's rank, 1-based, rounded up
        let mut seen = 0;
        for (i, count) in self.latency.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let bound = LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY);
                return Some(bound * 1000.0);
            }
        }
        None
    }
}

#[derive(Debug)]
struct Interval {
    all: Counts,
    received: u64,
    /// Per route, at most [`MAX_ROUTES`].
    routes: HashMap<String, Counts>,
}

impl Interval {
    fn new() -> Self {
        Self {
            all: Counts::new(),
            received: 0,
            routes: HashMap::new(),
        }
    }
}

#[derive(Debug)]
struct Inner {
    current: Interval,
    series: VecDeque<Sample>,
    hot: HotKeys,
}

/// This node's live statistics; cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct NodeStats {
    inner: Arc<Mutex<Inner>>,
}

impl Default for NodeStats {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeStats {
    /// Empty statistics.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                current: Interval::new(),
                series: VecDeque::with_capacity(SERIES_LEN),
                hot: HotKeys::new(HOT_KEY_CAPACITY, MAX_ROUTES),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A message was accepted at this node's edge (MQTT ingress or gRPC publish).
    pub fn record_received(&self) {
        self.lock().current.received += 1;
    }

    /// A handler ran for `key` of `route` and took `took`.
    pub fn record_processed(&self, route: &str, key: &str, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS.partition_point(|&bound| bound < seconds);
        let mut inner = self.lock();
        inner.current.all.record(bucket);
        if let Some(counts) = inner.current.routes.get_mut(route) {
            counts.record(bucket);
        } else if inner.current.routes.len() < MAX_ROUTES {
            let mut counts = Counts::new();
            counts.record(bucket);
            inner.current.routes.insert(route.to_string(), counts);
        }
        inner.hot.observe(route, key);
    }

    /// Closes the current interval of `length`, ending at `at_unix_ms`.
    pub fn close_interval(&self, at_unix_ms: u64, length: Duration) {
        let mut inner = self.lock();
        let closed = std::mem::replace(&mut inner.current, Interval::new());
        let seconds = length.as_secs_f64().max(f64::EPSILON);
        if inner.series.len() == SERIES_LEN {
            inner.series.pop_front();
        }
        inner.series.push_back(Sample {
            at_unix_ms,
            processed_per_s: closed.all.processed as f64 / seconds,
            received_per_s: closed.received as f64 / seconds,
            p99_ms: closed.all.p99_ms(),
            routes: closed
                .routes
                .iter()
                .map(|(route, counts)| {
                    let sample = RouteSample {
                        processed_per_s: counts.processed as f64 / seconds,
                        p99_ms: counts.p99_ms(),
                    };
                    (route.clone(), sample)
                })
                .collect(),
        });
    }

    /// Ends the hot-key window: the counted one becomes the one reported.
    pub fn rotate_hot_keys(&self) {
        self.lock().hot.rotate();
    }

    /// The samples kept, oldest first.
    pub fn series(&self) -> Vec<Sample> {
        self.lock().series.iter().cloned().collect()
    }

    /// `route`'s hot keys in the last complete window.
    pub fn hot_keys(&self, route: &str) -> Summary {
        self.lock().hot.summary(route).summary()
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Closes a sample every [`SAMPLE_EVERY`] and a hot-key window every [`HOT_KEY_WINDOW`] until
/// `stop` is cancelled.
pub async fn run_sampler(stats: NodeStats, stop: CancellationToken) {
    {
        let mut every = tokio::time::interval(SAMPLE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await; // the first tick is immediate
        let per_window = (HOT_KEY_WINDOW.as_secs() / SAMPLE_EVERY.as_secs()).max(1);
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => {}
            }
            stats.close_interval(unix_ms(), SAMPLE_EVERY);
            ticks += 1;
            if ticks.is_multiple_of(per_window) {
                stats.rotate_hot_keys();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interval_reports_rates_and_the_p99_bucket() {
        let stats = NodeStats::new();
        for i in 0..1000u64 {
            stats.record_received();
            // 990 fast messages (<= 1 ms), 10 slow ones (<= 250 ms)
            let took = if i < 990 {
                Duration::from_micros(800)
            } else {
                Duration::from_millis(200)
            };
            stats.record_processed("r", &format!("k{}", i % 3), took);
        }
        stats.close_interval(1_000, Duration::from_secs(5));
        let series = stats.series();
        assert_eq!(series.len(), 1);
        assert_eq!(series[0].processed_per_s, 200.0);
        assert_eq!(series[0].received_per_s, 200.0);
        assert_eq!(series[0].p99_ms, Some(1.0), "990 of 1000 at <= 1 ms");
        stats.record_processed("r", "k", Duration::from_millis(200));
        stats.close_interval(2_000, Duration::from_secs(5));
        assert_eq!(stats.series()[1].p99_ms, Some(250.0));
        stats.close_interval(3_000, Duration::from_secs(5));
        assert_eq!(stats.series()[2].p99_ms, None, "no message, no latency");
    }

    #[test]
    fn routes_have_their_own_rates_and_p99() {
        let stats = NodeStats::new();
        for _ in 0..100 {
            stats.record_processed("fast", "k", Duration::from_micros(300));
        }
        for _ in 0..10 {
            stats.record_processed("slow", "k", Duration::from_millis(40));
        }
        stats.close_interval(1_000, Duration::from_secs(10));
        let sample = &stats.series()[0];
        assert_eq!(sample.processed_per_s, 11.0);
        assert_eq!(
            sample.routes["fast"],
            RouteSample {
                processed_per_s: 10.0,
                p99_ms: Some(0.5)
            }
        );
        assert_eq!(
            sample.routes["slow"],
            RouteSample {
                processed_per_s: 1.0,
                p99_ms: Some(50.0)
            }
        );
    }

    #[test]
    fn the_series_keeps_the_last_ten_minutes() {
        let stats = NodeStats::new();
        for i in 0..(SERIES_LEN as u64 + 30) {
            stats.close_interval(i, SAMPLE_EVERY);
        }
        let series = stats.series();
        assert_eq!(series.len(), SERIES_LEN);
        assert_eq!(series[0].at_unix_ms, 30);
    }

    #[test]
    fn hot_keys_are_reported_after_their_window() {
        let stats = NodeStats::new();
        for _ in 0..5 {
            stats.record_processed("r", "hot", Duration::from_millis(1));
        }
        stats.record_processed("r", "cold", Duration::from_millis(1));
        assert!(stats.hot_keys("r").keys.is_empty());
        stats.rotate_hot_keys();
        let summary = stats.hot_keys("r");
        assert_eq!(summary.keys[0].key, "hot");
        assert_eq!(summary.keys[0].count, 5);
        assert_eq!(summary.total, 6);
    }
}
