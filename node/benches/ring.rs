//! Ring benchmarks, with baselines measured in the same run.
//!
//! - `locate_n100`: one key lookup at 100 members and default parameters, beside two
//!   baselines on the same BLAKE3 hash: `hash % N` (what the Python RouteMQ does; no
//!   rebalancing at all) and jump consistent hash (Lamping & Veach; minimal movement but
//!   members can only be added or removed at the end). The three sit in one group so the
//!   ns/lookup compare directly; most of each is the BLAKE3 hash of the key.
//! - `build_n100`: `Ring::build` at 100 members and default parameters, which runs once per
//!   config epoch.
//!
//! Run with `cargo bench --bench ring`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use routemq_node::ring::{Ring, RingParams};

const MEMBERS: usize = 100;

/// Keys cycled through by every lookup benchmark, shaped like real route keys.
fn keys() -> Vec<String> {
    (0..4096).map(|i| format!("sensors/device-{i:06}/data")).collect()
}

fn members() -> Vec<(String, u32)> {
    (0..MEMBERS).map(|i| (format!("node-{i}"), 1)).collect()
}

/// The same 64-bit key hash the ring uses: the first 8 bytes of BLAKE3, little endian.
fn hash_u64(key: &str) -> u64 {
    let [b0, b1, b2, b3, b4, b5, b6, b7, ..] = *blake3::hash(key.as_bytes()).as_bytes();
    u64::from_le_bytes([b0, b1, b2, b3, b4, b5, b6, b7])
}

/// Jump consistent hash (Lamping & Veach, 2014): the bucket in `0..buckets` for `key`.
fn jump_consistent_hash(mut key: u64, buckets: u32) -> u32 {
    let mut bucket: i64 = -1;
    let mut next: i64 = 0;
    while next < i64::from(buckets) {
        bucket = next;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        next = ((bucket + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    bucket as u32
}

fn locate(c: &mut Criterion) {
    let keys = keys();
    let members = members();
    let node_ids: Vec<&str> = members.iter().map(|(id, _)| id.as_str()).collect();
    let ring = Ring::build(&RingParams::default(), members.clone()).expect("valid ring");

    let mut group = c.benchmark_group("locate_n100");
    // Each baseline also maps its bucket to the node id, as `locate` does.
    group.bench_function("ring_locate", |b| {
        let mut next = keys.iter().cycle();
        b.iter(|| ring.locate(black_box(next.next().expect("keys cycle"))).owner)
    });
    group.bench_function("hash_mod_n", |b| {
        let mut next = keys.iter().cycle();
        b.iter(|| {
            let hash = hash_u64(black_box(next.next().expect("keys cycle")));
            node_ids[(hash % node_ids.len() as u64) as usize]
        })
    });
    group.bench_function("jump_hash", |b| {
        let mut next = keys.iter().cycle();
        b.iter(|| {
            let hash = hash_u64(black_box(next.next().expect("keys cycle")));
            node_ids[jump_consistent_hash(hash, node_ids.len() as u32) as usize]
        })
    });
    group.finish();
}

fn build(c: &mut Criterion) {
    let members = members();
    let params = RingParams::default();
    let mut group = c.benchmark_group("build_n100");
    group.sample_size(20);
    group.bench_function("ring_build", |b| {
        b.iter(|| {
            Ring::build(
                black_box(&params),
                black_box(&members).iter().map(|(id, w)| (id, *w)),
            )
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = locate, build
}
criterion_main!(benches);
