//! RouteMQ's Jepsen-style fault-injection harness.
//!
//! A test starts 5 `routemq` nodes and a Mosquitto broker, each in its own network namespace
//! with its own address on a private bridge ([`net`], [`cluster`]); runs a workload of logical
//! client processes, each bound to one node and doing one operation at a time ([`workload`]);
//! injects faults on a schedule ([`nemesis`]); records every operation as invoke then
//! ok / fail / info with one monotonic clock ([`history`]); heals, waits, reads everything back;
//! and checks the history against the guarantees G1-G5 ([`checker`]). The run's directory gets
//! `history.jsonl`, `results.json`, node logs and `report.html` ([`report`]).
//!
//! [`runner`] ties one test together; [`suite`] names the tests of the smoke and the matrix and
//! what each is expected to show.
//!
//! Checkers and the nemesis' pure parts (grudges, schedules) need neither root nor a network
//! and are unit-tested; everything that touches namespaces runs only from the binary.

pub mod checker;
pub mod cluster;
pub mod history;
pub mod nemesis;
pub mod net;
pub mod report;
pub mod runner;
pub mod suite;
pub mod workload;
