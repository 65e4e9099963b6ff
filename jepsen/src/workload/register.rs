//! The config register workload (G1): each route name is a compare-and-set register.
//!
//! Operations, on a few independent keys at once (each key is retired after `ops_per_key`
//! operations and replaced by a fresh one, which keeps every key's history small enough for an
//! exhaustive linearizability search):
//! - `read`: `Routes.GetRoute` with `READ_CONSISTENCY_LINEARIZABLE`; ok value = the integer
//!   encoded in the route's pattern (`jreg/<key>/v<value>`), or `null` when absent;
//!   `extra.version` = the route's version.
//! - `write v`: unconditional `Routes.PutRoute` of the route encoding `v` (a value never used
//!   before).
//! - `cas [old, new]`: `PutRoute` with `expected_version` = the version this client last saw
//!   with `old` (0 when `old` is `null`: create only if absent). A version mismatch is `fail`.
//!
//! After the faults are healed, a fresh process reads every key once more (`read`, part of the
//! checked history).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use routemq_proto::v1::routes_client::RoutesClient;
use routemq_proto::v1::{
    handler, GetRouteRequest, Handler, LogHandler, PutRouteRequest, ReadConsistency, Route, RouteMode,
};
use serde_json::{json, Value};
use tokio::time::{sleep, timeout, Instant};

use super::{classify, status_text, Channels, Classified, WorkloadConfig};
use crate::history::{Op, OpKind, Process, Recorder};

/// Route-name prefix of the register keys.
const KEY_PREFIX: &str = "jreg-";

/// The route that stores `value` under `key`.
pub fn encode(key: &str, value: u64) -> Route {
    Route {
        name: key.to_string(),
        pattern: format!("jreg/{key}/v{value}"),
        key_param: String::new(),
        qos: 0,
        mode: RouteMode::Shared as i32,
        worker_count: 1,
        handler: Some(Handler {
            kind: Some(handler::Kind::Log(LogHandler {})),
        }),
        group: String::new(),
        version: 0,
        priority: 0,
        message_id_field: String::new(),
    }
}

/// The value a route stores, if it is one of ours.
pub fn decode(key: &str, route: &Route) -> Option<u64> {
    route.pattern.strip_prefix(&format!("jreg/{key}/v"))?.parse().ok()
}

/// Keys in use and fresh values, shared by all register clients.
pub struct Shared {
    pool: Mutex<Pool>,
    next_value: AtomicU64,
}

struct Pool {
    slots: Vec<(String, usize)>,
    all: Vec<String>,
    ops_per_key: usize,
}

impl Pool {
    fn fresh(&mut self) -> String {
        let key = format!("{KEY_PREFIX}{}", self.all.len());
        self.all.push(key.clone());
        key
    }
}

impl Shared {
    /// `keys` keys in use at a time, each for `ops_per_key` operations.
    pub fn new(keys: usize, ops_per_key: usize) -> Arc<Shared> {
        let mut pool = Pool {
            slots: Vec::new(),
            all: Vec::new(),
            ops_per_key: ops_per_key.max(1),
        };
        for _ in 0..keys.max(1) {
            let k = pool.fresh();
            pool.slots.push((k, 0));
        }
        Arc::new(Shared {
            pool: Mutex::new(pool),
            next_value: AtomicU64::new(1),
        })
    }

    fn pick(&self, rng: &mut StdRng) -> String {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let i = rng.random_range(0..pool.slots.len());
        if pool.slots[i].1 >= pool.ops_per_key {
            let k = pool.fresh();
            pool.slots[i] = (k, 0);
        }
        pool.slots[i].1 += 1;
        pool.slots[i].0.clone()
    }

    /// Every key used so far.
    pub fn all_keys(&self) -> Vec<String> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).all.clone()
    }

    fn value(&self) -> u64 {
        self.next_value.fetch_add(1, Ordering::Relaxed)
    }
}

/// One logical client.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    /// First process id.
    pub process: u64,
    /// Added to the process id after an `info`.
    pub stride: u64,
    /// Node the client is bound to.
    pub node: String,
    /// That node's gRPC address.
    pub addr: String,
    /// RNG seed.
    pub seed: u64,
}

/// `PutRoute` at `addr`, following NotLeader answers.
async fn put(channels: &mut Channels, addr: &str, req: PutRouteRequest) -> Result<(Route, u64), Classified> {
    let mut at = addr.to_string();
    for hop in 0..4 {
        let channel = channels.get(&at).map_err(|s| Classified::Fail(status_text(&s)))?;
        match RoutesClient::new(channel).put_route(req.clone()).await {
            Ok(resp) => {
                let resp = resp.into_inner();
                let route = resp.route.unwrap_or_default();
                return Ok((route, resp.epoch));
            }
            Err(status) => match classify(&status, false) {
                Classified::Redirect(leader) if hop < 3 => at = leader,
                Classified::Redirect(leader) => {
                    return Err(Classified::Fail(format!(
                        "NOT_LEADER: too many redirects (last {leader})"
                    )))
                }
                Classified::Info(text) if is_refused(&text) => return Err(Classified::Fail(text)),
                other => return Err(other),
            },
        }
    }
    unreachable!("the loop returns")
}

/// A connection that was refused never carried the request.
fn is_refused(text: &str) -> bool {
    text.to_ascii_lowercase().contains("connection refused")
}

/// `GetRoute` at `addr` (linearizable unless `local`), following NotLeader answers.
async fn get(
    channels: &mut Channels,
    addr: &str,
    name: &str,
    local: bool,
) -> Result<Option<Route>, Classified> {
    let consistency = if local {
        ReadConsistency::Local
    } else {
        ReadConsistency::Linearizable
    };
    let req = GetRouteRequest {
        name: name.to_string(),
        consistency: consistency as i32,
    };
    let mut at = addr.to_string();
    for hop in 0..4 {
        let channel = channels.get(&at).map_err(|s| Classified::Fail(status_text(&s)))?;
        match RoutesClient::new(channel).get_route(req.clone()).await {
            Ok(resp) => return Ok(resp.into_inner().route),
            Err(status) => match classify(&status, true) {
                Classified::Redirect(leader) if hop < 3 => at = leader,
                Classified::Redirect(leader) => {
                    return Err(Classified::Fail(format!(
                        "NOT_LEADER: too many redirects (last {leader})"
                    )))
                }
                other => return Err(other),
            },
        }
    }
    unreachable!("the loop returns")
}

/// Performs and records one read by `process`; returns false when its outcome was not ok.
#[allow(clippy::too_many_arguments)]
async fn read_once(
    recorder: &Recorder,
    channels: &mut Channels,
    process: u64,
    node: &str,
    addr: &str,
    key: &str,
    op_timeout: Duration,
    local: bool,
    seen: &mut HashMap<String, (Option<u64>, u64)>,
) -> bool {
    let mut invoke = Op::new(OpKind::Invoke, Process::Client(process), "read")
        .key(key)
        .node(node);
    if local {
        invoke = invoke.extra(json!({"consistency": "local"}));
    }
    let invoke = recorder.record(invoke);
    let done = match timeout(op_timeout, get(channels, addr, key, local)).await {
        Ok(Ok(route)) => {
            let version = route.as_ref().map(|r| r.version).unwrap_or(0);
            match route.as_ref().map(|r| decode(key, r)) {
                None => {
                    seen.insert(key.to_string(), (None, 0));
                    Op::completion_of(&invoke, OpKind::Ok).extra(json!({"version": 0}))
                }
                Some(Some(v)) => {
                    seen.insert(key.to_string(), (Some(v), version));
                    Op::completion_of(&invoke, OpKind::Ok)
                        .value(json!(v))
                        .extra(json!({"version": version}))
                }
                Some(None) => Op::completion_of(&invoke, OpKind::Fail).error(format!(
                    "UNPARSABLE: route pattern {:?} does not encode a value",
                    route.map(|r| r.pattern).unwrap_or_default()
                )),
            }
        }
        Ok(Err(Classified::Fail(e) | Classified::Info(e) | Classified::Redirect(e))) => {
            Op::completion_of(&invoke, OpKind::Fail).error(e)
        }
        Err(_) => Op::completion_of(&invoke, OpKind::Fail)
            .error(format!("TIMEOUT: no answer within {op_timeout:?}")),
    };
    let ok = done.kind == OpKind::Ok;
    recorder.record(done);
    ok
}

/// Runs one client until `deadline`.
pub async fn run_client(
    spec: ClientSpec,
    shared: Arc<Shared>,
    cfg: WorkloadConfig,
    recorder: Arc<Recorder>,
    deadline: Instant,
) {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut channels = Channels::default();
    let mut process = spec.process;
    // key -> (value, version) this client saw last, for compare-and-set.
    let mut seen: HashMap<String, (Option<u64>, u64)> = HashMap::new();
    loop {
        let think = cfg.think.mul_f64(rng.random_range(0.0..2.0));
        if Instant::now() + think >= deadline {
            break;
        }
        sleep(think).await;
        let key = shared.pick(&mut rng);
        let dice: f64 = rng.random();
        if dice < 0.4 {
            if !read_once(
                &recorder,
                &mut channels,
                process,
                &spec.node,
                &spec.addr,
                &key,
                cfg.op_timeout,
                cfg.local_reads,
                &mut seen,
            )
            .await
            {
                sleep(Duration::from_millis(200)).await;
            }
            continue;
        }
        let new = shared.value();
        let (f, value, expected) = if dice < 0.7 {
            ("write", json!(new), None)
        } else {
            match seen.get(&key) {
                Some(&(old, version)) => (
                    "cas",
                    json!([old, new]),
                    Some(if old.is_none() { 0 } else { version }),
                ),
                None => ("cas", json!([Value::Null, new]), Some(0)),
            }
        };
        let invoke = recorder.record(
            Op::new(OpKind::Invoke, Process::Client(process), f)
                .key(&key)
                .node(&spec.node)
                .value(value.clone())
                .extra(
                    expected
                        .map(|v| json!({"expected_version": v}))
                        .unwrap_or(Value::Null),
                ),
        );
        let req = PutRouteRequest {
            route: Some(encode(&key, new)),
            expected_version: expected,
        };
        let done = match timeout(cfg.op_timeout, put(&mut channels, &spec.addr, req)).await {
            Ok(Ok((route, epoch))) => {
                seen.insert(key.clone(), (Some(new), route.version));
                Op::completion_of(&invoke, OpKind::Ok)
                    .value(value)
                    .extra(json!({"version": route.version, "epoch": epoch}))
            }
            Ok(Err(Classified::Fail(e) | Classified::Redirect(e))) => {
                Op::completion_of(&invoke, OpKind::Fail).value(value).error(e)
            }
            Ok(Err(Classified::Info(e))) => Op::completion_of(&invoke, OpKind::Info).value(value).error(e),
            Err(_) => Op::completion_of(&invoke, OpKind::Info)
                .value(value)
                .error(format!("TIMEOUT: no answer within {:?}", cfg.op_timeout)),
        };
        let kind = done.kind;
        let unimplemented = done
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("UNIMPLEMENTED"));
        recorder.record(done);
        match kind {
            OpKind::Info => {
                process += spec.stride;
                sleep(Duration::from_millis(200)).await;
            }
            OpKind::Fail if unimplemented => sleep(Duration::from_secs(1)).await,
            _ => {}
        }
    }
}

/// After healing: a fresh process per key reads it (linearizable) until one read succeeds or
/// `within` passes, trying the nodes in turn. Returns keys never read.
pub async fn final_reads(
    shared: &Shared,
    recorder: &Recorder,
    nodes: &[(String, String)],
    first_process: u64,
    op_timeout: Duration,
    within: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut channels = Channels::default();
    let mut unread = Vec::new();
    let mut seen = HashMap::new();
    for (i, key) in shared.all_keys().into_iter().enumerate() {
        let process = first_process + i as u64;
        let mut attempt = 0usize;
        loop {
            let (node, addr) = &nodes[(i + attempt) % nodes.len()];
            if read_once(
                recorder,
                &mut channels,
                process,
                node,
                addr,
                &key,
                op_timeout,
                false,
                &mut seen,
            )
            .await
            {
                break;
            }
            attempt += 1;
            if Instant::now() > deadline {
                unread.push(key.clone());
                break;
            }
            sleep(Duration::from_millis(300)).await;
        }
    }
    unread
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_routes() {
        let r = encode("jreg-3", 42);
        assert_eq!(decode("jreg-3", &r), Some(42));
        assert_eq!(decode("jreg-4", &r), None);
    }

    #[test]
    fn keys_are_retired_after_their_operations() {
        let shared = Shared::new(1, 2);
        let mut rng = StdRng::seed_from_u64(1);
        let picks: Vec<String> = (0..5).map(|_| shared.pick(&mut rng)).collect();
        assert_eq!(picks, ["jreg-0", "jreg-0", "jreg-1", "jreg-1", "jreg-2"]);
        assert_eq!(shared.all_keys().len(), 3);
    }
}
