//! `routemq.v1.Handoff` messages: fetch requests, the chunked answers, returns, active-of.

use std::collections::HashMap;

use routemq_proto::v1 as pb;

use crate::journal::PartitionData;
use crate::ownership::Answer;
use crate::peer::{ActiveOf, FetchReply, FetchRequest, PartitionAnswer, PeerError, ReturnRequest};

/// Largest chunk of one partition's data, bytes (roughly).
pub const CHUNK_BYTES: usize = 2 << 20;

impl From<FetchRequest> for pb::FetchRequest {
    fn from(r: FetchRequest) -> Self {
        pb::FetchRequest {
            requester: r.requester,
            epoch: r.epoch,
            partitions: r.partitions,
        }
    }
}

impl From<pb::FetchRequest> for FetchRequest {
    fn from(r: pb::FetchRequest) -> Self {
        FetchRequest {
            requester: r.requester,
            epoch: r.epoch,
            partitions: r.partitions,
        }
    }
}

fn pairs(kvs: Vec<pb::KeyValue>) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> {
    kvs.into_iter().map(|kv| (kv.key, kv.value))
}

fn kvs(pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<pb::KeyValue> {
    pairs
        .into_iter()
        .map(|(key, value)| pb::KeyValue { key, value })
        .collect()
}

impl From<ReturnRequest> for pb::ReturnRequest {
    fn from(r: ReturnRequest) -> Self {
        pb::ReturnRequest {
            from: r.from,
            partition: r.partition,
            version: r.version,
            entries: kvs(r.data.entries),
            ids: kvs(r.data.ids),
        }
    }
}

impl From<pb::ReturnRequest> for ReturnRequest {
    fn from(r: pb::ReturnRequest) -> Self {
        ReturnRequest {
            from: r.from,
            partition: r.partition,
            version: r.version,
            data: PartitionData {
                entries: pairs(r.entries).collect(),
                ids: pairs(r.ids).collect(),
            },
        }
    }
}

impl From<ActiveOf> for pb::ActiveOfResponse {
    fn from(a: ActiveOf) -> Self {
        pb::ActiveOfResponse {
            active: a.active,
            epoch: a.epoch,
        }
    }
}

impl From<pb::ActiveOfResponse> for ActiveOf {
    fn from(a: pb::ActiveOfResponse) -> Self {
        ActiveOf {
            active: a.active,
            epoch: a.epoch,
        }
    }
}

/// The chunks answering a fetch of one partition: a status chunk, or the data in chunks of
/// about [`CHUNK_BYTES`] (the last one flagged).
pub fn chunks((partition, answer, data): PartitionAnswer) -> Vec<pb::FetchChunk> {
    let status_chunk = |status: pb::FetchStatus| pb::FetchChunk {
        partition,
        status: status as i32,
        last: true,
        ..Default::default()
    };
    match (answer, data) {
        (Answer::NotHolder, _) => vec![status_chunk(pb::FetchStatus::NotHolder)],
        (Answer::Data { version }, Some(data)) => data_chunks(partition, version, data),
        (Answer::NotYet, _) | (Answer::Data { .. }, None) => vec![status_chunk(pb::FetchStatus::NotYet)],
    }
}

fn data_chunks(partition: u32, version: u64, data: PartitionData) -> Vec<pb::FetchChunk> {
    let empty = || pb::FetchChunk {
        partition,
        status: pb::FetchStatus::Data as i32,
        version,
        ..Default::default()
    };
    let mut chunks = Vec::new();
    let mut current = empty();
    let mut size = 0usize;
    let pairs = data
        .entries
        .into_iter()
        .map(|kv| (true, kv))
        .chain(data.ids.into_iter().map(|kv| (false, kv)));
    for (is_entry, (key, value)) in pairs {
        size += key.len() + value.len();
        let kv = pb::KeyValue { key, value };
        if is_entry {
            current.entries.push(kv);
        } else {
            current.ids.push(kv);
        }
        if size >= CHUNK_BYTES {
            chunks.push(std::mem::replace(&mut current, empty()));
            size = 0;
        }
    }
    current.last = true;
    chunks.push(current);
    chunks
}

/// Puts a fetch answer back together from its chunks, in the order they arrive.
#[derive(Default)]
pub struct Assembler {
    out: FetchReply,
    partial: HashMap<u32, (u64, PartitionData)>,
}

impl Assembler {
    /// Takes the next chunk.
    pub fn push(&mut self, chunk: pb::FetchChunk) -> Result<(), PeerError> {
        let p = chunk.partition;
        match pb::FetchStatus::try_from(chunk.status) {
            Ok(pb::FetchStatus::NotHolder) => {
                self.out.insert(p, (Answer::NotHolder, None));
            }
            Ok(pb::FetchStatus::NotYet) => {
                self.out.insert(p, (Answer::NotYet, None));
            }
            Ok(pb::FetchStatus::Data) => {
                let entry = self
                    .partial
                    .entry(p)
                    .or_insert_with(|| (chunk.version, PartitionData::default()));
                entry.1.entries.extend(pairs(chunk.entries));
                entry.1.ids.extend(pairs(chunk.ids));
                if chunk.last {
                    if let Some((version, data)) = self.partial.remove(&p) {
                        self.out.insert(p, (Answer::Data { version }, Some(data)));
                    }
                }
            }
            _ => {
                return Err(PeerError::Protocol(format!(
                    "unknown fetch status {}",
                    chunk.status
                )))
            }
        }
        Ok(())
    }

    /// Every partition answered completely.
    pub fn finish(self) -> FetchReply {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_reassemble_into_the_answer() {
        let big = vec![7u8; CHUNK_BYTES / 2 + 1];
        let data = PartitionData {
            entries: (0..5u8).map(|i| (vec![0, 0, 0, 3, i], big.clone())).collect(),
            ids: vec![(vec![0, 0, 0, 3, 9], b"id".to_vec())],
        };
        let answers = vec![
            (3, Answer::Data { version: 4 }, Some(data.clone())),
            (4, Answer::NotYet, None),
            (5, Answer::NotHolder, None),
        ];
        let mut assembler = Assembler::default();
        let mut count = 0;
        for answer in answers {
            for chunk in chunks(answer) {
                count += 1;
                assembler.push(chunk).unwrap();
            }
        }
        assert!(count > 4, "the data of partition 3 is split");
        let reply = assembler.finish();
        assert_eq!(reply[&3], (Answer::Data { version: 4 }, Some(data)));
        assert_eq!(reply[&4], (Answer::NotYet, None));
        assert_eq!(reply[&5], (Answer::NotHolder, None));
    }
}
