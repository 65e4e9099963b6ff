//! Hot keys: which keys of a route take the most messages, from a bounded sketch.
//!
//! Each node keeps, per route, a Space-Saving summary (Metwally, Agrawal, El Abbadi 2005) of the
//! keys it processed: at most `capacity` counters, so memory is bounded whatever the number of
//! keys. A key that is not counted takes over the counter with the smallest count and inherits
//! that count as its possible overestimate (`error`). Guarantees, for a stream of `n` messages:
//! every key with more than `n / capacity` messages is in the summary; a reported count is never
//! below the true count and at most `error <= n / capacity` above it.
//!
//! Summaries of several nodes merge (Agarwal et al., "Mergeable summaries", 2012): counts of a
//! key add up; a key missing from one summary may have had up to that summary's floor (its
//! smallest count) there, which is added to its count and its error. The merged [`Summary`]
//! keeps the `capacity` largest, and its floor bounds every key it does not list. Counting is per window ([`HotKeys::rotate`]): the report covers the last complete
//! window, so a rate is `count / window`.
//!
//! Pure: no clock, no I/O; the caller rotates windows on its timer.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// One key's estimate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCount {
    /// The key.
    pub key: String,
    /// Messages counted for it (never below the true number).
    pub count: u64,
    /// How much of `count` may be overestimate.
    pub error: u64,
}

/// A Space-Saving summary of one stream of keys.
#[derive(Debug, Clone)]
pub struct SpaceSaving {
    capacity: usize,
    /// key -> (count, error). Keys are shared with `by_count`: counting a key already held
    /// allocates nothing (this runs once per processed message).
    counters: HashMap<Arc<str>, (u64, u64)>,
    /// (count, key) ordered, to find the smallest counter in O(log k).
    by_count: BTreeSet<(u64, Arc<str>)>,
    total: u64,
}

impl SpaceSaving {
    /// A summary of at most `capacity` counters (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            counters: HashMap::new(),
            by_count: BTreeSet::new(),
            total: 0,
        }
    }

    /// Counts one message of `key`.
    pub fn observe(&mut self, key: &str) {
        self.total += 1;
        if let Some((held, &(count, error))) = self.counters.get_key_value(key) {
            let held = held.clone();
            self.by_count.remove(&(count, held.clone()));
            self.by_count.insert((count + 1, held.clone()));
            self.counters.insert(held, (count + 1, error));
            return;
        }
        let key: Arc<str> = Arc::from(key);
        if self.counters.len() < self.capacity {
            self.counters.insert(key.clone(), (1, 0));
            self.by_count.insert((1, key));
            return;
        }
        // Full: the smallest counter is given to the new key, its count kept as the error bound.
        let Some((min, evicted)) = self.by_count.pop_first() else {
            return;
        };
        self.counters.remove(&evicted);
        self.counters.insert(key.clone(), (min + 1, min));
        self.by_count.insert((min + 1, key));
    }

    /// Messages counted in all.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The smallest count held (0 while not full): the most a key outside the summary can have.
    pub fn floor(&self) -> u64 {
        if self.counters.len() < self.capacity {
            0
        } else {
            self.by_count.first().map(|(c, _)| *c).unwrap_or(0)
        }
    }

    /// The `n` keys with the highest counts, highest first (ties by key).
    pub fn top(&self, n: usize) -> Vec<KeyCount> {
        let mut all: Vec<KeyCount> = self
            .counters
            .iter()
            .map(|(key, &(count, error))| KeyCount {
                key: key.to_string(),
                count,
                error,
            })
            .collect();
        all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        all.truncate(n);
        all
    }

    /// Everything this summary holds, to send to another node or merge.
    pub fn summary(&self) -> Summary {
        Summary {
            keys: self.top(self.capacity),
            floor: self.floor(),
            total: self.total,
        }
    }
}

/// A summary as sent between nodes: its counters, its floor (the most a key not listed may
/// have had there) and the messages it counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Counters, highest first.
    pub keys: Vec<KeyCount>,
    /// The most a key not in `keys` may have had.
    pub floor: u64,
    /// Messages counted.
    pub total: u64,
}

impl Summary {
    /// Merges two summaries (see the module docs), keeping the `capacity` largest counters.
    pub fn merge(&self, other: &Summary, capacity: usize) -> Summary {
        let mine: HashMap<&str, &KeyCount> = self.keys.iter().map(|k| (k.key.as_str(), k)).collect();
        let theirs: HashMap<&str, &KeyCount> = other.keys.iter().map(|k| (k.key.as_str(), k)).collect();
        let mut merged: Vec<KeyCount> = Vec::with_capacity(mine.len() + theirs.len());
        for k in &self.keys {
            let (count, error) = theirs
                .get(k.key.as_str())
                .map(|t| (t.count, t.error))
                .unwrap_or((other.floor, other.floor));
            merged.push(KeyCount {
                key: k.key.clone(),
                count: k.count + count,
                error: k.error + error,
            });
        }
        for k in &other.keys {
            if !mine.contains_key(k.key.as_str()) {
                merged.push(KeyCount {
                    key: k.key.clone(),
                    count: k.count + self.floor,
                    error: k.error + self.floor,
                });
            }
        }
        merged.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        // A key cut here may have had up to the largest count cut: that is the new floor.
        let cut = merged.get(capacity).map(|k| k.count).unwrap_or(0);
        merged.truncate(capacity.max(1));
        Summary {
            keys: merged,
            floor: (self.floor + other.floor).max(cut),
            total: self.total + other.total,
        }
    }

    /// The `n` highest counters.
    pub fn top(&self, n: usize) -> &[KeyCount] {
        &self.keys[..n.min(self.keys.len())]
    }
}

/// Per-route summaries over windows: the one being counted and the last complete one.
#[derive(Debug, Clone)]
pub struct HotKeys {
    capacity: usize,
    counting: HashMap<String, SpaceSaving>,
    last: HashMap<String, SpaceSaving>,
    /// Routes kept at most (a bound on memory whatever the number of routes).
    max_routes: usize,
}

impl HotKeys {
    /// Summaries of `capacity` counters per route, for at most `max_routes` routes.
    pub fn new(capacity: usize, max_routes: usize) -> Self {
        Self {
            capacity,
            counting: HashMap::new(),
            last: HashMap::new(),
            max_routes,
        }
    }

    /// Counts one message of `key` on `route`. Routes beyond `max_routes` are not counted.
    pub fn observe(&mut self, route: &str, key: &str) {
        if let Some(summary) = self.counting.get_mut(route) {
            summary.observe(key);
        } else if self.counting.len() < self.max_routes {
            let mut summary = SpaceSaving::new(self.capacity);
            summary.observe(key);
            self.counting.insert(route.to_string(), summary);
        }
    }

    /// Ends the current window: it becomes the one reported; a new one starts empty.
    pub fn rotate(&mut self) {
        self.last = std::mem::take(&mut self.counting);
    }

    /// The last complete window's summary of `route` (empty if it took no message).
    pub fn summary(&self, route: &str) -> SpaceSaving {
        self.last
            .get(route)
            .cloned()
            .unwrap_or_else(|| SpaceSaving::new(self.capacity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A seeded xorshift generator: the tests see the same stream every run.
    struct Rng(u64);
    impl Rng {
        fn next_f64(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// `n` draws from a Zipf(s) distribution over keys k0..k{keys-1} (k0 the most frequent).
    fn zipf_stream(keys: usize, s: f64, n: usize, seed: u64) -> Vec<String> {
        let weights: Vec<f64> = (1..=keys).map(|r| 1.0 / (r as f64).powf(s)).collect();
        let sum: f64 = weights.iter().sum();
        let mut cumulative = Vec::with_capacity(keys);
        let mut acc = 0.0;
        for w in &weights {
            acc += w / sum;
            cumulative.push(acc);
        }
        let mut rng = Rng(seed);
        (0..n)
            .map(|_| {
                let u = rng.next_f64();
                let rank = cumulative.partition_point(|&c| c < u).min(keys - 1);
                format!("k{rank}")
            })
            .collect()
    }

    fn exact(stream: &[String]) -> HashMap<String, u64> {
        let mut counts = HashMap::new();
        for key in stream {
            *counts.entry(key.clone()).or_insert(0) += 1;
        }
        counts
    }

    fn true_top(counts: &HashMap<String, u64>, n: usize) -> Vec<String> {
        let mut all: Vec<_> = counts.iter().collect();
        all.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        all.into_iter().take(n).map(|(k, _)| k.clone()).collect()
    }

    #[test]
    fn finds_the_top_ten_of_a_zipf_stream_within_the_error_bound() {
        let n = 200_000;
        let stream = zipf_stream(10_000, 1.1, n, 42);
        let counts = exact(&stream);
        let capacity = 200;
        let mut sketch = SpaceSaving::new(capacity);
        for key in &stream {
            sketch.observe(key);
        }
        let top = sketch.top(10);
        let reported: Vec<String> = top.iter().map(|k| k.key.clone()).collect();
        assert_eq!(reported, true_top(&counts, 10));
        let bound = (n / capacity) as u64;
        for k in &top {
            let truth = counts[&k.key];
            assert!(k.count >= truth, "{}: {} below the true {truth}", k.key, k.count);
            assert!(
                k.count - truth <= k.error && k.error <= bound,
                "{k:?}, true {truth}, bound {bound}"
            );
        }
        assert_eq!(sketch.total(), n as u64);
    }

    #[test]
    fn memory_is_bounded_by_the_capacity() {
        let mut sketch = SpaceSaving::new(50);
        for i in 0..100_000 {
            sketch.observe(&format!("key-{i}"));
        }
        assert_eq!(sketch.counters.len(), 50);
        assert_eq!(sketch.by_count.len(), 50);
        let mut hot = HotKeys::new(10, 3);
        for r in 0..10 {
            hot.observe(&format!("route-{r}"), "k");
        }
        assert_eq!(hot.counting.len(), 3, "routes beyond the bound are not counted");
    }

    #[test]
    fn merged_summaries_of_three_nodes_find_the_global_top() {
        // Three nodes see different slices of one Zipf stream (as owners of different keys
        // would, plus shared routes spreading any key anywhere).
        let n = 150_000;
        let stream = zipf_stream(5_000, 1.2, n, 7);
        let counts = exact(&stream);
        let mut nodes: Vec<SpaceSaving> = (0..3).map(|_| SpaceSaving::new(150)).collect();
        for (i, key) in stream.iter().enumerate() {
            nodes[i % 3].observe(key);
        }
        let merged = nodes[0]
            .summary()
            .merge(&nodes[1].summary(), 150)
            .merge(&nodes[2].summary(), 150);
        let reported: Vec<String> = merged.top(10).iter().map(|k| k.key.clone()).collect();
        assert_eq!(reported, true_top(&counts, 10));
        for k in merged.top(10) {
            let truth = counts[&k.key];
            assert!(
                k.count >= truth && k.count - truth <= k.error,
                "{k:?}, true {truth}"
            );
        }
        assert_eq!(merged.total, n as u64);
        // A key not listed had at most the floor.
        for (key, &truth) in &counts {
            if !merged.keys.iter().any(|k| &k.key == key) {
                assert!(
                    truth <= merged.floor,
                    "{key}: {truth} above the floor {}",
                    merged.floor
                );
            }
        }
    }

    #[test]
    fn a_window_reports_only_what_it_counted() {
        let mut hot = HotKeys::new(10, 10);
        hot.observe("r", "a");
        hot.observe("r", "a");
        assert!(
            hot.summary("r").top(1).is_empty(),
            "nothing before the first rotation"
        );
        hot.rotate();
        hot.observe("r", "b");
        assert_eq!(
            hot.summary("r").top(5),
            vec![KeyCount {
                key: "a".into(),
                count: 2,
                error: 0
            }]
        );
        hot.rotate();
        assert_eq!(hot.summary("r").top(5)[0].key, "b");
    }
}
