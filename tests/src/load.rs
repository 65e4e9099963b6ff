//! A bounded load generator for the integration tests, and the checker that judges what it
//! left in the journals.
//!
//! **Load.** [`LoadGen::start`] runs one task per (key, producer). Each producer publishes
//! `key:producer:seq` (as message id and payload) over gRPC `Messages/Publish` to a random
//! node of a [`Targets`] set the test edits while the cluster changes, with one message in
//! flight, so the order of a producer's messages is defined. A failed or timed-out attempt is
//! retried with the *same* message id on another node until it is acknowledged or the
//! message's deadline passes; then the producer records a failure and stops (its later
//! messages would have no defined order relative to a message it gave up on). Every
//! acknowledgement, failed attempt and retry is recorded. [`LoadGen::stop`] lets every
//! producer finish the message it has in flight and returns a [`LoadReport`]; a hard
//! `max_duration` stops the load even if the test never calls `stop`.
//!
//! **Check.** [`verify`] takes the report and the journals of every key (lost, reordered and
//! duplicated messages by the one rule of `routemq_client::journal_check`): one or several
//! copies per key (read through the cluster with [`read_journals`], or read from a stopped
//! node's data directory with [`read_offline_journals`]). It reports:
//! - *lost*: an acknowledged message found in no copy (G4);
//! - *reordered*: a producer's sequence numbers not strictly increasing in journal order
//!   (each copy in offset order, and the union of all copies in processing-time order; G3);
//! - *duplicates*: a message id processed twice. A duplicate by the same node at the same
//!   epoch means the journal's duplicate suppression failed; a duplicate by another node or at
//!   another epoch crossed an ownership change, which at-least-once delivery permits after a
//!   failover (counted apart so that a test decides);
//! - *G2 violations* per partition, from `processed_by`, `epoch` and `processed_at`: a node
//!   processing under an older epoch after another node processed under a newer one, or two
//!   nodes processing under the same epoch at overlapping times;
//! - *offset gaps*: a copy whose offsets are not contiguous from 0;
//! - *figures*: the longest gap between successive acknowledgements per key while the load
//!   ran, the longest gap between successive processing times per partition, and the pause at
//!   each change of processing node (old owner's last entry to new owner's first).
//!
//! Non-goals: no timing is asserted here; the tests decide which bound to hold (and print the
//! figures). The checker never weakens itself to pass: what it cannot judge it reports.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use routemq_client::journal_check::{
    self, At, Entry, Expected, Finding, Mark, Outcome, Processing, Scope, Seen, Sent,
};
use routemq_proto::v1 as pb;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::TestCluster;

type MessagesClient = pb::messages_client::MessagesClient<Channel>;

/// Milliseconds since the Unix epoch, wall clock (what the journal's `processed_at` uses).
pub fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `n` key names: `{prefix}00`, `{prefix}01`, ... (no `:`; message ids use it as separator).
pub fn key_names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:02}")).collect()
}

/// What load to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Route the topics match (its journal is what [`verify`] reads).
    pub route: String,
    /// Topic of a key's messages; `{key}` is replaced by the key.
    pub topic_template: String,
    /// The keys; no `:` in them.
    pub keys: Vec<String>,
    /// Producers per key, each with its own id and sequence.
    pub producers_per_key: u32,
    /// Pause between a producer's acknowledged message and its next one.
    pub interval: Duration,
    /// How long one attempt may take before it is retried elsewhere.
    pub attempt_timeout: Duration,
    /// How long a message may be retried before the producer gives up on it (a failure).
    pub message_deadline: Duration,
    /// Hard stop: no new message starts after this, even without [`LoadGen::stop`].
    pub max_duration: Duration,
    /// Seed of the producers' target choice.
    pub seed: u64,
}

impl LoadConfig {
    /// Defaults for `keys` on `route`, topic `sensors/{key}/data`: one producer per key, 20 ms
    /// between messages, 5 s per attempt, 30 s per message, 5 minutes at most.
    pub fn new(route: &str, keys: Vec<String>) -> Self {
        Self {
            route: route.to_string(),
            topic_template: "sensors/{key}/data".into(),
            keys,
            producers_per_key: 1,
            interval: Duration::from_millis(20),
            attempt_timeout: Duration::from_secs(5),
            message_deadline: Duration::from_secs(30),
            max_duration: Duration::from_secs(300),
            seed: 1,
        }
    }

    /// The topic of `key`.
    pub fn topic(&self, key: &str) -> String {
        self.topic_template.replace("{key}", key)
    }
}

/// The nodes producers publish to; tests add and remove nodes while the load runs.
#[derive(Clone, Default)]
pub struct Targets {
    inner: Arc<RwLock<BTreeMap<String, MessagesClient>>>,
}

impl Targets {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) node `id` at gRPC address `addr`; the channel connects lazily and
    /// reconnects by itself after a restart.
    pub fn add(&self, id: &str, addr: &str) -> Result<()> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        let client = MessagesClient::new(channel).max_decoding_message_size(64 << 20);
        self.write().insert(id.to_string(), client);
        Ok(())
    }

    /// Removes node `id` (producers stop choosing it; attempts in flight finish).
    pub fn remove(&self, id: &str) {
        self.write().remove(id);
    }

    /// Ids of the current targets.
    pub fn ids(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// A client of node `id`, if it is a target.
    pub fn client(&self, id: &str) -> Option<MessagesClient> {
        self.read().get(id).cloned()
    }

    /// A random target, other than `avoid` when there is another.
    fn pick(&self, rng: &mut impl Rng, avoid: Option<&str>) -> Option<(String, MessagesClient)> {
        let map = self.read();
        let mut choices: Vec<(&String, &MessagesClient)> =
            map.iter().filter(|(id, _)| Some(id.as_str()) != avoid).collect();
        if choices.is_empty() {
            choices = map.iter().collect();
        }
        if choices.is_empty() {
            return None;
        }
        let (id, client) = choices[rng.random_range(0..choices.len())];
        Some((id.clone(), client.clone()))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, MessagesClient>> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, MessagesClient>> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// An acknowledged message.
#[derive(Debug, Clone)]
pub struct Ack {
    /// Its key.
    pub key: String,
    /// Producer number within the key.
    pub producer: u32,
    /// The producer's sequence number.
    pub seq: u64,
    /// `key:producer:seq`.
    pub message_id: String,
    /// Node the acknowledged attempt was sent to.
    pub sent_to: String,
    /// Node that processed it, as the acknowledgement says.
    pub processed_by: String,
    /// Epoch in the acknowledgement.
    pub epoch: u64,
    /// Partition in the acknowledgement.
    pub partition: u32,
    /// Attempts it took (1 = first try).
    pub attempts: u32,
    /// When the first attempt started.
    pub first_sent: Instant,
    /// When the acknowledgement arrived.
    pub acked_at: Instant,
    /// Same, wall clock.
    pub acked_unix_ms: i64,
}

/// One failed attempt (it was retried unless the message's deadline had passed).
#[derive(Debug, Clone)]
pub struct AttemptError {
    /// Key of the message.
    pub key: String,
    /// Message id.
    pub message_id: String,
    /// Node the attempt went to.
    pub node: String,
    /// gRPC code (`DeadlineExceeded` for the client's own attempt timeout).
    pub code: tonic::Code,
    /// gRPC message.
    pub message: String,
    /// When it failed.
    pub at: Instant,
    /// Same, wall clock.
    pub unix_ms: i64,
}

/// A message given up on after its deadline (its producer stopped there).
#[derive(Debug, Clone)]
pub struct Failure {
    /// Key.
    pub key: String,
    /// Message id.
    pub message_id: String,
    /// Attempts made.
    pub attempts: u32,
    /// Last error seen.
    pub last_error: String,
}

/// Longest gap between successive acknowledgements of one key.
#[derive(Debug, Clone)]
pub struct AckGap {
    /// Key.
    pub key: String,
    /// Partition (from the acknowledgements).
    pub partition: u32,
    /// The gap.
    pub gap: Duration,
    /// When it began, after the load started.
    pub from: Duration,
}

/// Everything a load run did.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// The configuration it ran with.
    pub config: LoadConfig,
    /// When it started.
    pub started: Instant,
    /// Same, wall clock.
    pub started_unix_ms: i64,
    /// When the last producer ended.
    pub ended: Instant,
    /// Acknowledged messages.
    pub acks: Vec<Ack>,
    /// Failed attempts.
    pub errors: Vec<AttemptError>,
    /// Messages given up on.
    pub failures: Vec<Failure>,
    /// Messages started (acknowledged, failed, or abandoned at the hard stop).
    pub started_messages: u64,
}

impl LoadReport {
    /// Attempts that were retries.
    pub fn retries(&self) -> u64 {
        self.acks.iter().map(|a| u64::from(a.attempts - 1)).sum::<u64>()
            + self
                .failures
                .iter()
                .map(|f| u64::from(f.attempts.saturating_sub(1)))
                .sum::<u64>()
    }

    /// Partition of each key, as the acknowledgements report it.
    pub fn partitions(&self) -> BTreeMap<String, u32> {
        self.acks.iter().map(|a| (a.key.clone(), a.partition)).collect()
    }

    /// Per key, the longest gap between successive acknowledgements (longest first).
    pub fn ack_gaps(&self) -> Vec<AckGap> {
        let mut per_key: BTreeMap<&str, Vec<&Ack>> = BTreeMap::new();
        for ack in &self.acks {
            per_key.entry(&ack.key).or_default().push(ack);
        }
        let mut gaps: Vec<AckGap> = per_key
            .into_iter()
            .map(|(key, mut acks)| {
                acks.sort_by_key(|a| a.acked_at);
                let mut best = AckGap {
                    key: key.to_string(),
                    partition: acks[0].partition,
                    gap: Duration::ZERO,
                    from: acks[0].acked_at.duration_since(self.started),
                };
                for pair in acks.windows(2) {
                    let gap = pair[1].acked_at.duration_since(pair[0].acked_at);
                    if gap > best.gap {
                        best.gap = gap;
                        best.from = pair[0].acked_at.duration_since(self.started);
                    }
                }
                best
            })
            .collect();
        gaps.sort_by_key(|g| std::cmp::Reverse(g.gap));
        gaps
    }

    /// Failed attempts sent to `node` with `code`.
    pub fn errors_from(&self, node: &str, code: tonic::Code) -> Vec<&AttemptError> {
        self.errors
            .iter()
            .filter(|e| e.node == node && e.code == code)
            .collect()
    }

    /// One line: counts and the longest acknowledgement gap.
    pub fn summary(&self) -> String {
        let gaps = self.ack_gaps();
        let elapsed = self.ended.duration_since(self.started);
        format!(
            "load: {} keys x {} producers, {:.1} s, {} started, {} acked ({:.0}/s), {} retries, {} failed attempts, {} given up; longest ack gap {}",
            self.config.keys.len(),
            self.config.producers_per_key,
            elapsed.as_secs_f64(),
            self.started_messages,
            self.acks.len(),
            self.acks.len() as f64 / elapsed.as_secs_f64().max(0.001),
            self.retries(),
            self.errors.len(),
            self.failures.len(),
            gaps.first()
                .map(|g| format!("{:?} on {} (p{}) at +{:.1} s", g.gap, g.key, g.partition, g.from.as_secs_f64()))
                .unwrap_or_else(|| "-".into()),
        )
    }

    /// Error counts by (node, code), and one sample message of each.
    pub fn error_summary(&self) -> String {
        let mut counts: BTreeMap<(String, String), (usize, String)> = BTreeMap::new();
        for e in &self.errors {
            let entry = counts
                .entry((e.node.clone(), format!("{:?}", e.code)))
                .or_insert((0, e.message.clone()));
            entry.0 += 1;
        }
        counts
            .into_iter()
            .map(|((node, code), (n, sample))| format!("  {node} {code} x{n}: {sample}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[derive(Default)]
struct Shared {
    acks: Vec<Ack>,
    errors: Vec<AttemptError>,
    failures: Vec<Failure>,
    started_messages: u64,
}

/// A running load; see the module docs.
pub struct LoadGen {
    config: LoadConfig,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    shared: Arc<Mutex<Shared>>,
    started: Instant,
    started_unix_ms: i64,
}

impl LoadGen {
    /// Starts the producers against `targets`.
    pub fn start(config: LoadConfig, targets: Targets) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (k, key) in config.keys.iter().enumerate() {
            for producer in 0..config.producers_per_key {
                let producer_seed = config
                    .seed
                    .wrapping_mul(1_000_003)
                    .wrapping_add((k as u64) << 16)
                    .wrapping_add(u64::from(producer));
                tasks.push(tokio::spawn(produce(
                    config.clone(),
                    key.clone(),
                    producer,
                    producer_seed,
                    targets.clone(),
                    stop_rx.clone(),
                    shared.clone(),
                    started,
                )));
            }
        }
        Self {
            config,
            stop,
            tasks,
            shared,
            started,
            started_unix_ms: unix_ms_now(),
        }
    }

    /// Acknowledged messages so far.
    pub fn acked(&self) -> usize {
        self.lock().acks.len()
    }

    /// Messages given up on so far.
    pub fn failed(&self) -> usize {
        self.lock().failures.len()
    }

    /// Waits until `n` more messages than now have been acknowledged (or `timeout`).
    pub async fn wait_for_acks(&self, n: usize, timeout: Duration) -> Result<()> {
        let target = self.acked() + n;
        let deadline = Instant::now() + timeout;
        while self.acked() < target {
            if Instant::now() > deadline {
                bail!(
                    "load: only {} of {target} acknowledgements within {timeout:?} ({} messages given up)",
                    self.acked(),
                    self.failed()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Waits until every key has an acknowledgement newer than `since` (or `timeout`): the
    /// whole key space is being processed again.
    pub async fn wait_all_keys_acked_since(&self, since: Instant, timeout: Duration) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            let missing: Vec<String> = {
                let shared = self.lock();
                let fresh: BTreeSet<&str> = shared
                    .acks
                    .iter()
                    .filter(|a| a.acked_at > since)
                    .map(|a| a.key.as_str())
                    .collect();
                self.config
                    .keys
                    .iter()
                    .filter(|k| !fresh.contains(k.as_str()))
                    .cloned()
                    .collect()
            };
            if missing.is_empty() {
                return Ok(since.elapsed());
            }
            if Instant::now() > deadline {
                bail!("keys without an acknowledgement for {timeout:?}: {missing:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops starting new messages, waits for every producer to finish the one in flight
    /// (bounded by the message deadline), and returns what happened.
    pub async fn stop(self) -> Result<LoadReport> {
        let _ = self.stop.send(true);
        for task in self.tasks {
            task.await.context("load producer panicked")?;
        }
        let shared = std::mem::take(&mut *self.shared.lock().unwrap_or_else(|e| e.into_inner()));
        Ok(LoadReport {
            config: self.config,
            started: self.started,
            started_unix_ms: self.started_unix_ms,
            ended: Instant::now(),
            acks: shared.acks,
            errors: shared.errors,
            failures: shared.failures,
            started_messages: shared.started_messages,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Locks the shared record; a panic elsewhere cannot leave it half-updated (each update is one
/// push), so a poisoned lock is still good.
fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

#[allow(clippy::too_many_arguments)]
async fn produce(
    config: LoadConfig,
    key: String,
    producer: u32,
    seed: u64,
    targets: Targets,
    mut stop: watch::Receiver<bool>,
    shared: Arc<Mutex<Shared>>,
    started: Instant,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let topic = config.topic(&key);
    // Spread the producers' first messages over one interval.
    let jitter = config.interval.as_millis().max(1) as u64;
    tokio::time::sleep(Duration::from_millis(rng.random_range(0..jitter))).await;
    for seq in 0u64.. {
        if *stop.borrow() || started.elapsed() > config.max_duration {
            return;
        }
        let message_id = format!("{key}:{producer}:{seq}");
        let request = pb::PublishRequest {
            topic: topic.clone(),
            payload: message_id.clone().into_bytes(),
            message_id: message_id.clone(),
            request_id: 0,
        };
        lock(&shared).started_messages += 1;
        let first_sent = Instant::now();
        let mut attempts = 0u32;
        let mut last_node: Option<String> = None;
        let mut backoff = Duration::from_millis(20);
        let mut last_error = String::from("no target node");
        loop {
            let picked = targets.pick(&mut rng, last_node.as_deref());
            if let Some((node, mut client)) = picked {
                attempts += 1;
                let outcome =
                    tokio::time::timeout(config.attempt_timeout, client.publish(request.clone())).await;
                let (code, message) = match outcome {
                    Ok(Ok(response)) => {
                        let response = response.into_inner();
                        lock(&shared).acks.push(Ack {
                            key: key.clone(),
                            producer,
                            seq,
                            message_id: message_id.clone(),
                            sent_to: node,
                            processed_by: response.processed_by,
                            epoch: response.epoch,
                            partition: response.partition,
                            attempts,
                            first_sent,
                            acked_at: Instant::now(),
                            acked_unix_ms: unix_ms_now(),
                        });
                        break;
                    }
                    Ok(Err(status)) => (status.code(), status.message().to_string()),
                    Err(_) => (
                        tonic::Code::DeadlineExceeded,
                        format!(
                            "no answer within {:?} (client attempt timeout)",
                            config.attempt_timeout
                        ),
                    ),
                };
                last_error = format!("{node}: {code:?}: {message}");
                lock(&shared).errors.push(AttemptError {
                    key: key.clone(),
                    message_id: message_id.clone(),
                    node: node.clone(),
                    code,
                    message,
                    at: Instant::now(),
                    unix_ms: unix_ms_now(),
                });
                last_node = Some(node);
            }
            if first_sent.elapsed() + backoff > config.message_deadline {
                lock(&shared).failures.push(Failure {
                    key: key.clone(),
                    message_id: message_id.clone(),
                    attempts,
                    last_error,
                });
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
        // Wait the interval, or less if told to stop.
        let _ = tokio::time::timeout(config.interval, stop.wait_for(|stopped| *stopped)).await;
    }
}

/// Reads every key's whole journal through the cluster (any target; the read goes to the
/// key's owner), retrying each key on other nodes for up to `timeout`.
pub async fn read_journals(
    targets: &Targets,
    route: &str,
    keys: &[String],
    timeout: Duration,
) -> Result<BTreeMap<String, Vec<pb::JournalEntry>>> {
    let mut out = BTreeMap::new();
    let deadline = Instant::now() + timeout;
    for (i, key) in keys.iter().enumerate() {
        let mut attempt = 0usize;
        loop {
            let ids = targets.ids();
            if ids.is_empty() {
                bail!("no node to read journals from");
            }
            let id = &ids[(i + attempt) % ids.len()];
            let mut client = targets.client(id).context("target vanished")?;
            match crate::read_journal_with(&mut client, route, key).await {
                Ok(entries) => {
                    out.insert(key.clone(), entries);
                    break;
                }
                Err(e) if Instant::now() < deadline => {
                    attempt += 1;
                    if attempt.is_multiple_of(ids.len()) {
                        eprintln!("reading journal of {key} (retrying): {e:#}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                Err(e) => return Err(e.context(format!("reading journal of {key} through {id}"))),
            }
        }
    }
    Ok(out)
}

/// Reads the journals of `keys` (key -> partition) from a stopped node's data directory,
/// as that node's disk holds them.
pub fn read_offline_journals(
    data_dir: &Path,
    route: &str,
    keys: &BTreeMap<String, u32>,
) -> Result<BTreeMap<String, Vec<pb::JournalEntry>>> {
    let dir = data_dir.join("journal");
    if !dir.exists() {
        return Ok(keys.keys().map(|k| (k.clone(), Vec::new())).collect());
    }
    let journal = routemq_node::journal::Journal::open(&dir)
        .with_context(|| format!("opening {} (is the node stopped?)", dir.display()))?;
    let mut out = BTreeMap::new();
    for (key, &partition) in keys {
        let mut entries = Vec::new();
        let mut from = 0;
        loop {
            let (records, end) = journal.read(partition, route, key, from, 1000)?;
            if let Some(last) = records.last() {
                from = last.offset + 1;
            }
            let got = records.len();
            entries.extend(records.into_iter().map(|r| pb::JournalEntry {
                offset: r.offset,
                message_id: r.message_id,
                topic: r.topic,
                payload: r.payload,
                processed_by: r.processed_by,
                epoch: r.epoch,
                processed_at_unix_ms: r.processed_at_unix_ms,
                partition: r.partition,
            }));
            if end || got == 0 {
                break;
            }
        }
        out.insert(key.clone(), entries);
    }
    Ok(out)
}

/// One copy of a key's journal and where it was read.
#[derive(Debug, Clone)]
pub struct JournalCopy {
    /// Where it came from (e.g. `cluster`, `n2 data dir`).
    pub source: String,
    /// Its entries in offset order.
    pub entries: Vec<pb::JournalEntry>,
}

/// Every copy of every key's journal.
#[derive(Debug, Clone, Default)]
pub struct Histories {
    /// Copies per key.
    pub keys: BTreeMap<String, Vec<JournalCopy>>,
}

impl Histories {
    /// Adds one copy per key from `source`.
    pub fn add(&mut self, source: &str, journals: BTreeMap<String, Vec<pb::JournalEntry>>) {
        for (key, entries) in journals {
            self.keys.entry(key).or_default().push(JournalCopy {
                source: source.to_string(),
                entries,
            });
        }
    }

    /// Histories with one copy per key from `source`.
    pub fn single(source: &str, journals: BTreeMap<String, Vec<pb::JournalEntry>>) -> Self {
        let mut histories = Self::default();
        histories.add(source, journals);
        histories
    }
}

/// Which outcomes a test accepts besides a clean run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allow {
    /// Duplicates that cross an ownership change (other node or epoch): at-least-once after a
    /// failover permits them.
    pub failover_duplicates: bool,
    /// Messages given up on by producers (never acknowledged).
    pub failures: bool,
    /// Copies whose offsets do not start at 0 or have gaps (a survivor's journal of a key
    /// whose earlier history died with its owner).
    pub offset_gaps: bool,
}

/// A processing event in the union of a key's copies.
#[derive(Debug, Clone)]
struct Event {
    key: String,
    node: String,
    epoch: u64,
    at: i64,
    offset: u64,
}

/// A change of processing node within a partition: the pause between the old node's last
/// entry and the new node's first.
#[derive(Debug, Clone)]
pub struct Handover {
    /// Partition.
    pub partition: u32,
    /// Old processing node and its epoch.
    pub from: (String, u64),
    /// New processing node and its epoch.
    pub to: (String, u64),
    /// Milliseconds between the two entries (processing times).
    pub pause_ms: i64,
    /// Wall-clock time of the new node's first entry.
    pub at_unix_ms: i64,
}

/// What [`verify`] found.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// Acknowledged messages checked.
    pub acked: usize,
    /// Distinct messages found in the journals.
    pub journaled: usize,
    /// Journaled but never acknowledged (fine: attempts whose answer was lost).
    pub unacked_journaled: usize,
    /// Acknowledged, found nowhere.
    pub lost: Vec<String>,
    /// Order violations per producer.
    pub reordered: Vec<String>,
    /// Same message processed twice by the same node at the same epoch.
    pub duplicates_same_owner: Vec<String>,
    /// Same message processed again by another node or at another epoch.
    pub duplicates_across_owners: Vec<String>,
    /// At-most-one-processor violations.
    pub g2_violations: Vec<String>,
    /// Offset problems of copies.
    pub offset_gaps: Vec<String>,
    /// Entries whose message id is not `key:producer:seq` of this load, or whose key or
    /// partition is wrong.
    pub foreign: Vec<String>,
    /// Messages given up on by producers.
    pub failures: usize,
    /// Changes of processing node, per partition, in time order.
    pub handovers: Vec<Handover>,
    /// Longest gap between successive processing times per partition: (partition, ms, at).
    pub journal_gaps: Vec<(u32, i64, i64)>,
    /// What was allowed.
    pub allowed: Allow,
}

impl Verdict {
    /// True if nothing beyond what was allowed went wrong.
    pub fn is_ok(&self) -> bool {
        self.lost.is_empty()
            && self.reordered.is_empty()
            && self.duplicates_same_owner.is_empty()
            && (self.allowed.failover_duplicates || self.duplicates_across_owners.is_empty())
            && self.g2_violations.is_empty()
            && (self.allowed.offset_gaps || self.offset_gaps.is_empty())
            && self.foreign.is_empty()
            && (self.allowed.failures || self.failures == 0)
    }

    /// One line of counts.
    pub fn summary(&self) -> String {
        format!(
            "verdict: {} — {} acked, {} journaled ({} unacked), lost {}, reordered {}, duplicates {} same-owner / {} across owners{}, G2 violations {}, offset gaps {}{}, foreign {}, given up {}{}, handovers {}",
            if self.is_ok() { "OK" } else { "FAIL" },
            self.acked,
            self.journaled,
            self.unacked_journaled,
            self.lost.len(),
            self.reordered.len(),
            self.duplicates_same_owner.len(),
            self.duplicates_across_owners.len(),
            if self.allowed.failover_duplicates { " (allowed)" } else { "" },
            self.g2_violations.len(),
            self.offset_gaps.len(),
            if self.allowed.offset_gaps { " (allowed)" } else { "" },
            self.foreign.len(),
            self.failures,
            if self.allowed.failures { " (allowed)" } else { "" },
            self.handovers.len(),
        )
    }

    /// The summary and up to `n` examples of each problem.
    pub fn details(&self, n: usize) -> String {
        let mut out = self.summary();
        for (what, items) in [
            ("lost", &self.lost),
            ("reordered", &self.reordered),
            ("duplicate (same owner)", &self.duplicates_same_owner),
            ("duplicate (across owners)", &self.duplicates_across_owners),
            ("G2", &self.g2_violations),
            ("offsets", &self.offset_gaps),
            ("foreign", &self.foreign),
        ] {
            for item in items.iter().take(n) {
                out.push_str(&format!("\n  {what}: {item}"));
            }
            if items.len() > n {
                out.push_str(&format!("\n  {what}: ... {} more", items.len() - n));
            }
        }
        out
    }

    /// Pauses at changes of processing node (ms): (count, median, max).
    pub fn handover_pauses(&self) -> (usize, i64, i64) {
        let mut pauses: Vec<i64> = self.handovers.iter().map(|h| h.pause_ms).collect();
        pauses.sort_unstable();
        let median = pauses.get(pauses.len() / 2).copied().unwrap_or(0);
        (pauses.len(), median, pauses.last().copied().unwrap_or(0))
    }

    /// Fails with the details unless [`Verdict::is_ok`].
    pub fn ensure_ok(&self) -> Result<()> {
        if self.is_ok() {
            Ok(())
        } else {
            bail!("{}", self.details(10))
        }
    }
}

/// Parses `key:producer:seq`.
fn parse_id(id: &str) -> Option<(&str, u32, u64)> {
    let mark = Mark::parse_id(id)?;
    Some((
        &id[..mark.key.len()],
        u32::try_from(mark.producer).ok()?,
        mark.seq,
    ))
}

/// Checks `report` against `histories`; see the module docs. Lost, reordered and duplicated
/// messages are judged by [`journal_check::check`] (each copy a read of the key's journal,
/// acknowledged messages the ones known to be sent); offsets, foreign entries and G2 here.
pub fn verify(report: &LoadReport, histories: &Histories, allow: Allow) -> Verdict {
    let mut verdict = Verdict {
        acked: report.acks.len(),
        failures: report.failures.len(),
        allowed: allow,
        ..Verdict::default()
    };
    let partitions = report.partitions();
    let mut journaled: HashSet<String> = HashSet::new();
    let mut lost: HashSet<Mark> = HashSet::new();
    let mut by_partition: BTreeMap<u32, Vec<Event>> = BTreeMap::new();

    for key in &report.config.keys {
        let copies = histories.keys.get(key).map(Vec::as_slice).unwrap_or(&[]);
        // Each copy in offset order: offsets and foreign entries.
        for copy in copies {
            let expected_start = if allow.offset_gaps {
                copy.entries.first().map(|e| e.offset).unwrap_or(0)
            } else {
                0
            };
            for (i, entry) in copy.entries.iter().enumerate() {
                if entry.offset != expected_start + i as u64 {
                    verdict.offset_gaps.push(format!(
                        "{key} in {}: entry {i} has offset {} (expected {})",
                        copy.source,
                        entry.offset,
                        expected_start + i as u64
                    ));
                    break;
                }
            }
            for entry in &copy.entries {
                let parsed = parse_id(&entry.message_id);
                let payload_ok = entry.payload == entry.message_id.as_bytes();
                let partition_ok = partitions.get(key).is_none_or(|&p| p == entry.partition);
                if parsed.map(|(k, _, _)| k) != Some(key.as_str()) || !payload_ok || !partition_ok {
                    verdict.foreign.push(format!(
                        "{key} in {}: offset {} id {:?} partition {} (payload matches id: {payload_ok})",
                        copy.source, entry.offset, entry.message_id, entry.partition
                    ));
                }
            }
        }
        let sent: Vec<Sent> = report
            .acks
            .iter()
            .filter(|a| &a.key == key)
            .map(|a| Sent {
                mark: Mark::new(a.key.clone(), u64::from(a.producer), a.seq),
                outcome: Outcome::Acked,
            })
            .collect();
        let reads: Vec<Vec<Entry>> = copies
            .iter()
            .map(|copy| copy.entries.iter().map(|e| check_entry(key, e)).collect())
            .collect();
        let checked = journal_check::check(Expected::AtLeast(&sent), &reads);
        let entry = |at: At| &copies[at.read].entries[at.index];
        // Duplicates are counted on the union of the copies, where a handed-off copy of an
        // entry is the same entry; order in each copy, and in the union with several copies.
        let union = if copies.len() > 1 {
            format!("{key} (union of {} copies)", copies.len())
        } else {
            key.clone()
        };
        for finding in checked.findings {
            match finding {
                Finding::Reordered { at, after, scope } => {
                    let what = match scope {
                        Scope::Read => format!("{key} in {}", copies[at.read].source),
                        Scope::Union => union.clone(),
                    };
                    let (e, mark) = (entry(at), journal_check::mark_at(&reads, at));
                    let prev = journal_check::mark_at(&reads, after).map_or(0, |m| m.seq);
                    verdict.reordered.push(format!(
                        "{what}: producer {} seq {} (offset {}, {}@{}, t={}) after seq {prev}",
                        mark.map_or(0, |m| m.producer),
                        mark.map_or(0, |m| m.seq),
                        e.offset,
                        e.processed_by,
                        e.epoch,
                        e.processed_at_unix_ms
                    ));
                }
                Finding::Duplicate { at, first, .. } => {
                    let (e, earlier) = (entry(at), entry(first));
                    let text = format!(
                        "{union}: {} at offset {} by {}@{} (first at offset {} by {}@{})",
                        e.message_id,
                        e.offset,
                        e.processed_by,
                        e.epoch,
                        earlier.offset,
                        earlier.processed_by,
                        earlier.epoch
                    );
                    if earlier.processed_by == e.processed_by && earlier.epoch == e.epoch {
                        verdict.duplicates_same_owner.push(text);
                    } else {
                        verdict.duplicates_across_owners.push(text);
                    }
                }
                Finding::Lost { mark } => {
                    lost.insert(mark);
                }
                // Foreign entries are judged above; copies from different places may hold
                // different messages at one offset (a journal that died with its node).
                Finding::Invalid { .. } | Finding::Unexpected { .. } | Finding::OffsetConflict { .. } => {}
            }
        }
        for &at in &checked.union {
            let e = entry(at);
            journaled.insert(e.message_id.clone());
            by_partition.entry(e.partition).or_default().push(event(key, e));
        }
    }

    verdict.journaled = journaled.len();
    let acked: BTreeSet<&str> = report.acks.iter().map(|a| a.message_id.as_str()).collect();
    verdict.unacked_journaled = journaled.iter().filter(|id| !acked.contains(id.as_str())).count();
    for ack in &report.acks {
        if lost.contains(&Mark::new(ack.key.clone(), u64::from(ack.producer), ack.seq)) {
            verdict.lost.push(format!(
                "{} (acked by {} via {} at epoch {}, +{:.3} s)",
                ack.message_id,
                ack.processed_by,
                ack.sent_to,
                ack.epoch,
                ack.acked_at.duration_since(report.started).as_secs_f64()
            ));
        }
    }

    for (partition, mut events) in by_partition {
        events.sort_by(|a, b| (a.at, &a.node, a.offset).cmp(&(b.at, &b.node, b.offset)));
        check_g2(partition, &events, &mut verdict);
        let mut gap = (0i64, 0i64);
        for pair in events.windows(2) {
            let g = pair[1].at - pair[0].at;
            if g > gap.0 {
                gap = (g, pair[0].at);
            }
            if pair[1].node != pair[0].node {
                verdict.handovers.push(Handover {
                    partition,
                    from: (pair[0].node.clone(), pair[0].epoch),
                    to: (pair[1].node.clone(), pair[1].epoch),
                    pause_ms: g,
                    at_unix_ms: pair[1].at,
                });
            }
        }
        verdict.journal_gaps.push((partition, gap.0, gap.1));
    }
    verdict.journal_gaps.sort_by_key(|g| std::cmp::Reverse(g.1));
    verdict
}

/// A journal entry as [`journal_check`] sees it: a message of this load's key, or foreign.
fn check_entry(key: &str, entry: &pb::JournalEntry) -> Entry {
    let seen = match parse_id(&entry.message_id) {
        Some((k, producer, seq)) if k == key => Seen::Message(Mark::new(k, u64::from(producer), seq)),
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

fn event(key: &str, entry: &pb::JournalEntry) -> Event {
    Event {
        key: key.to_string(),
        node: entry.processed_by.clone(),
        epoch: entry.epoch,
        at: entry.processed_at_unix_ms,
        offset: entry.offset,
    }
}

/// G2 on one partition's events (sorted by time): a node must not process under an older
/// epoch after another node processed under a newer one; two nodes under the same epoch must
/// not process at overlapping times.
fn check_g2(partition: u32, events: &[Event], verdict: &mut Verdict) {
    // Per (node, epoch): first and last processing time.
    let mut spans: BTreeMap<(u64, String), (i64, i64, &Event)> = BTreeMap::new();
    for e in events {
        spans
            .entry((e.epoch, e.node.clone()))
            .and_modify(|s| {
                s.0 = s.0.min(e.at);
                s.1 = s.1.max(e.at);
            })
            .or_insert((e.at, e.at, e));
    }
    let spans: Vec<_> = spans.into_iter().collect();
    for (i, ((epoch_a, node_a), (first_a, last_a, ev_a))) in spans.iter().enumerate() {
        for ((epoch_b, node_b), (first_b, last_b, _)) in &spans[i + 1..] {
            if node_a == node_b {
                continue;
            }
            if epoch_a == epoch_b {
                if last_a > first_b && last_b > first_a {
                    verdict.g2_violations.push(format!(
                        "partition {partition} (key {}): {node_a} and {node_b} both processed at epoch {epoch_a}, overlapping: [{first_a}, {last_a}] and [{first_b}, {last_b}]",
                        ev_a.key
                    ));
                }
            } else if last_a > first_b {
                // spans are sorted by epoch: epoch_a < epoch_b.
                verdict.g2_violations.push(format!(
                    "partition {partition} (key {}): {node_a} processed at epoch {epoch_a} until {last_a}, after {node_b} began at epoch {epoch_b} at {first_b} ({} ms of overlap)",
                    ev_a.key,
                    last_a - first_b
                ));
            }
        }
    }
}

/// Prints the figures a test reports: the load summary, the verdict, the longest
/// acknowledgement gaps and processing gaps, and the pauses at changes of processing node.
pub fn print_figures(test: &str, report: &LoadReport, verdict: &Verdict) {
    println!("[{test}] {}", report.summary());
    println!("[{test}] {}", verdict.summary());
    let gaps = report.ack_gaps();
    let top: Vec<String> = gaps
        .iter()
        .take(5)
        .map(|g| {
            format!(
                "{} p{} {} ms at +{:.1} s",
                g.key,
                g.partition,
                g.gap.as_millis(),
                g.from.as_secs_f64()
            )
        })
        .collect();
    println!("[{test}] longest ack gaps per key: {}", top.join(", "));
    let mut all: Vec<u128> = gaps.iter().map(|g| g.gap.as_millis()).collect();
    all.sort_unstable();
    if !all.is_empty() {
        println!(
            "[{test}] ack gap per key: median {} ms, p90 {} ms, max {} ms over {} keys",
            all[all.len() / 2],
            all[(all.len() * 9 / 10).min(all.len() - 1)],
            all[all.len() - 1],
            all.len()
        );
    }
    let top: Vec<String> = verdict
        .journal_gaps
        .iter()
        .take(5)
        .map(|(p, ms, _)| format!("p{p} {ms} ms"))
        .collect();
    println!(
        "[{test}] longest processing gaps per partition: {}",
        top.join(", ")
    );
    let (n, median, max) = verdict.handover_pauses();
    println!("[{test}] changes of processing node: {n}, pause median {median} ms, max {max} ms");
    if !report.errors.is_empty() {
        println!(
            "[{test}] failed attempts by node and code:\n{}",
            report.error_summary()
        );
    }
}

/// Route the load tests publish to: ordered, journal handler, key `{device_id}`.
pub const ROUTE: &str = "telemetry";

/// Holds the machine-wide lock of the load tests (released on drop).
pub struct Exclusive {
    _file: std::fs::File,
}

/// Takes a machine-wide lock so that load tests run one at a time even when the test runner
/// starts them in parallel: their timings (leases, failure detection) mean something only if
/// the nodes are not starved of CPU by another test's cluster.
pub async fn exclusive() -> Result<Exclusive> {
    tokio::task::spawn_blocking(|| {
        use std::os::fd::AsRawFd;
        let path = std::env::temp_dir().join("routemq-load-tests.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on a descriptor we own; released when the file closes.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!("flock {}: {}", path.display(), std::io::Error::last_os_error());
        }
        Ok(Exclusive { _file: file })
    })
    .await
    .context("lock task")?
}

/// Starts `n` nodes ([`TestCluster::start_with_args`]), creates [`ROUTE`] on topics
/// `sensors/{device_id}/data`, waits until every node applied it, and returns the cluster
/// with every node as a load target.
pub async fn cluster_with_route(
    n: usize,
    args: &[&str],
    net_cgroups: bool,
) -> Result<(TestCluster, Targets)> {
    let mut cluster = TestCluster::start_with_args(n, args, net_cgroups).await?;
    cluster
        .put_route(crate::ordered_journal_route(ROUTE, "sensors/{device_id}/data"))
        .await?;
    cluster
        .wait_route_everywhere(ROUTE, Duration::from_secs(20))
        .await?;
    let targets = Targets::new();
    for (id, node) in &cluster.nodes {
        targets.add(id, &node.grpc())?;
    }
    Ok((cluster, targets))
}

/// Keys named `{prefix}NNN` split by owner in the current (linearizable) partition table:
/// `owned` keys that `node` owns and `others` keys it does not own.
pub async fn keys_by_owner(
    cluster: &TestCluster,
    prefix: &str,
    node: &str,
    owned: usize,
    others: usize,
) -> Result<(Vec<String>, Vec<String>)> {
    let table = cluster
        .client()
        .await?
        .partitions(pb::ReadConsistency::Linearizable)
        .await?;
    let params = routemq_node::ring::RingParams {
        partitions: table.partition_count,
        vnodes_per_weight: table.vnodes_per_weight,
    };
    let (mut mine, mut rest) = (Vec::new(), Vec::new());
    for i in 0..100_000 {
        if mine.len() >= owned && rest.len() >= others {
            break;
        }
        let key = format!("{prefix}{i:03}");
        let partition = routemq_node::ring::partition_for_key(&params, &key) as usize;
        let owner = table
            .owners
            .get(partition)
            .and_then(|&i| table.nodes.get(i as usize))
            .context("partition table shorter than its partition count")?;
        if owner == node && mine.len() < owned {
            mine.push(key);
        } else if owner != node && rest.len() < others {
            rest.push(key);
        }
    }
    Ok((mine, rest))
}

/// kill -9 every running node (so that nothing moves any more), then reads every node's
/// data directory: one copy per node of each key's journal (`keys`: key -> partition).
pub fn kill_all_and_read_disks(
    cluster: &mut TestCluster,
    route: &str,
    keys: &BTreeMap<String, u32>,
) -> Result<Histories> {
    let ids: Vec<String> = cluster.nodes.keys().cloned().collect();
    for id in &ids {
        cluster.kill(id);
    }
    let mut histories = Histories::default();
    for id in &ids {
        let journals = read_offline_journals(&cluster.node(id).data_dir, route, keys)?;
        histories.add(&format!("{id} disk"), journals);
    }
    Ok(histories)
}

/// A key's partition: from the load's acknowledgements, else computed from `table`.
pub fn partitions_of(
    keys: &[String],
    reports: &[&LoadReport],
    table: &pb::PartitionTable,
) -> BTreeMap<String, u32> {
    let params = routemq_node::ring::RingParams {
        partitions: table.partition_count,
        vnodes_per_weight: table.vnodes_per_weight,
    };
    let mut out: BTreeMap<String, u32> = keys
        .iter()
        .map(|k| (k.clone(), routemq_node::ring::partition_for_key(&params, k)))
        .collect();
    for report in reports {
        out.extend(report.partitions());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        key: &str,
        producer: u32,
        seq: u64,
        offset: u64,
        node: &str,
        epoch: u64,
        at: i64,
    ) -> pb::JournalEntry {
        let id = format!("{key}:{producer}:{seq}");
        pb::JournalEntry {
            offset,
            message_id: id.clone(),
            topic: format!("sensors/{key}/data"),
            payload: id.into_bytes(),
            processed_by: node.into(),
            epoch,
            processed_at_unix_ms: at,
            partition: 7,
        }
    }

    fn report(acked: &[(u32, u64)]) -> LoadReport {
        let now = Instant::now();
        LoadReport {
            config: LoadConfig::new("r", vec!["k".into()]),
            started: now,
            started_unix_ms: 0,
            ended: now,
            acks: acked
                .iter()
                .map(|&(producer, seq)| Ack {
                    key: "k".into(),
                    producer,
                    seq,
                    message_id: format!("k:{producer}:{seq}"),
                    sent_to: "n1".into(),
                    processed_by: "n1".into(),
                    epoch: 1,
                    partition: 7,
                    attempts: 1,
                    first_sent: now,
                    acked_at: now,
                    acked_unix_ms: 0,
                })
                .collect(),
            errors: Vec::new(),
            failures: Vec::new(),
            started_messages: acked.len() as u64,
        }
    }

    fn clean() -> Vec<pb::JournalEntry> {
        vec![
            entry("k", 0, 0, 0, "n1", 1, 100),
            entry("k", 1, 0, 1, "n1", 1, 101),
            entry("k", 0, 1, 2, "n1", 1, 102),
            entry("k", 0, 2, 3, "n2", 2, 110),
            entry("k", 1, 1, 4, "n2", 2, 111),
        ]
    }

    fn check(entries: Vec<pb::JournalEntry>, allow: Allow) -> Verdict {
        let acked = [(0, 0), (1, 0), (0, 1), (0, 2), (1, 1)];
        let journals = BTreeMap::from([("k".to_string(), entries)]);
        verify(&report(&acked), &Histories::single("cluster", journals), allow)
    }

    #[test]
    fn a_clean_history_passes_and_reports_the_handover() {
        let verdict = check(clean(), Allow::default());
        assert!(verdict.is_ok(), "{}", verdict.details(5));
        assert_eq!(verdict.handovers.len(), 1);
        assert_eq!(verdict.handovers[0].pause_ms, 8);
    }

    #[test]
    fn a_missing_acknowledged_message_is_lost() {
        let mut entries = clean();
        entries.remove(2);
        for (i, e) in entries.iter_mut().enumerate() {
            e.offset = i as u64;
        }
        let verdict = check(entries, Allow::default());
        assert_eq!(verdict.lost.len(), 1, "{}", verdict.details(5));
        assert!(!verdict.is_ok());
    }

    #[test]
    fn swapped_messages_of_one_producer_are_reordered() {
        let mut entries = clean();
        let (a, b) = (entries[0].message_id.clone(), entries[2].message_id.clone());
        entries[0].message_id = b.clone();
        entries[0].payload = b.into_bytes();
        entries[2].message_id = a.clone();
        entries[2].payload = a.into_bytes();
        let verdict = check(entries, Allow::default());
        assert_eq!(verdict.reordered.len(), 1, "{}", verdict.details(5));
        assert!(!verdict.is_ok());
    }

    #[test]
    fn duplicates_are_classified() {
        let mut entries = clean();
        let mut dup = entries[4].clone();
        dup.offset = 5;
        dup.processed_at_unix_ms = 112;
        entries.push(dup);
        let verdict = check(entries.clone(), Allow::default());
        assert_eq!(verdict.duplicates_same_owner.len(), 1, "{}", verdict.details(5));
        assert!(!verdict.is_ok());

        let mut across = clean();
        let mut dup = across[2].clone();
        dup.offset = 5;
        dup.processed_by = "n2".into();
        dup.epoch = 2;
        dup.processed_at_unix_ms = 112;
        across.push(dup);
        let verdict = check(across.clone(), Allow::default());
        assert_eq!(
            verdict.duplicates_across_owners.len(),
            1,
            "{}",
            verdict.details(5)
        );
        assert!(!verdict.is_ok());
        let verdict = check(
            across,
            Allow {
                failover_duplicates: true,
                ..Allow::default()
            },
        );
        assert!(verdict.is_ok(), "{}", verdict.details(5));
    }

    #[test]
    fn interleaved_processing_of_two_nodes_violates_g2() {
        // n1 goes on processing under epoch 1 after n2 began under epoch 2.
        let mut entries = clean();
        entries[2].processed_at_unix_ms = 115;
        let verdict = check(entries, Allow::default());
        assert_eq!(verdict.g2_violations.len(), 1, "{}", verdict.details(5));
        assert!(!verdict.is_ok());

        // Two nodes under the same epoch at overlapping times.
        let mut entries = clean();
        entries[3].epoch = 1;
        entries[3].processed_at_unix_ms = 101;
        entries[1].processed_at_unix_ms = 103;
        let verdict = check(entries, Allow::default());
        assert!(!verdict.g2_violations.is_empty(), "{}", verdict.details(5));
    }

    #[test]
    fn split_brain_across_copies_is_found_in_the_union() {
        // The cluster's copy is clean; the cut-off node's disk shows it processed under the old
        // epoch after the new owner began.
        let journals = BTreeMap::from([("k".to_string(), clean())]);
        let mut histories = Histories::single("cluster", journals);
        let mut stale = clean()[..3].to_vec();
        stale.push(entry("k", 1, 1, 3, "n1", 1, 120));
        histories.add("n1 data dir", BTreeMap::from([("k".to_string(), stale)]));
        let acked = [(0, 0), (1, 0), (0, 1), (0, 2), (1, 1)];
        let verdict = verify(&report(&acked), &histories, Allow::default());
        assert!(!verdict.g2_violations.is_empty(), "{}", verdict.details(5));
        assert!(!verdict.duplicates_across_owners.is_empty());
    }

    #[test]
    fn offsets_must_be_contiguous_from_zero() {
        let mut entries = clean();
        entries.remove(0);
        let verdict = check(entries, Allow::default());
        assert!(!verdict.offset_gaps.is_empty());
    }

    #[test]
    fn ids_parse_from_the_right() {
        assert_eq!(parse_id("dev:07:3:12"), Some(("dev:07", 3, 12)));
        assert_eq!(parse_id("k:x:1"), None);
    }
}
