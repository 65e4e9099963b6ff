//! Replicated partitions: the deciding core, without I/O.
//!
//! Each partition has R replicas: its owner and the next members clockwise on the ring (in
//! distinct zones first). The owner streams its appends to the followers; an entry is
//! acknowledged only once every member of the partition's in-sync set (ISR), at least
//! min-insync of them, has it on disk. The Raft config holds each partition's ISR and changes
//! it only by commands fenced by the epoch; the owner is the first in-sync replica in
//! placement order, so a failover always lands on a copy with every acknowledged entry.
//! `ARCHITECTURE.md` (*Replication*) explains the design and what survives what.
//!
//! | module | decides |
//! |---|---|
//! | [`placement`] | the replicas of each partition, a pure function of the config |
//! | [`isr`] | the ISR kept in the config: carried over member changes, altered by owners, and the owner it implies |
//! | [`log`] | a follower's log: epoch fencing of appends, truncation against a new owner (KIP-101/279), acknowledgements |
//! | [`commit`] | the owner's commit point, the min-insync check, follower lag, and the ISR changes to ask for |
//! | [`table`] | the replicas, ISR and owner of every partition at one config |
//!
//! Non-goals here: moving bytes (the replication stream, the journal's group commit), timers
//! (time is passed in), and talking to Raft (the callers propose what these return).

pub mod commit;
pub mod isr;
pub mod log;
pub mod placement;
pub mod table;
