//! `ReadJournal` messages (the public `Messages` service and the peer `Forward` service).

use routemq_proto::v1 as pb;

use crate::journal::JournalRecord;
use crate::peer::{JournalPage, JournalQuery};

impl From<pb::ReadJournalRequest> for JournalQuery {
    fn from(r: pb::ReadJournalRequest) -> Self {
        JournalQuery {
            route: r.route,
            key: r.key,
            from_offset: r.from_offset,
            limit: r.limit,
        }
    }
}

impl From<JournalQuery> for pb::ReadJournalRequest {
    fn from(q: JournalQuery) -> Self {
        pb::ReadJournalRequest {
            route: q.route,
            key: q.key,
            from_offset: q.from_offset,
            limit: q.limit,
        }
    }
}

impl From<JournalRecord> for pb::JournalEntry {
    fn from(r: JournalRecord) -> Self {
        pb::JournalEntry {
            offset: r.offset,
            message_id: r.message_id,
            topic: r.topic,
            payload: r.payload,
            processed_by: r.processed_by,
            epoch: r.epoch,
            processed_at_unix_ms: r.processed_at_unix_ms,
            partition: r.partition,
        }
    }
}

impl From<pb::JournalEntry> for JournalRecord {
    fn from(e: pb::JournalEntry) -> Self {
        JournalRecord {
            offset: e.offset,
            message_id: e.message_id,
            topic: e.topic,
            payload: e.payload,
            processed_by: e.processed_by,
            epoch: e.epoch,
            processed_at_unix_ms: e.processed_at_unix_ms,
            partition: e.partition,
            error: String::new(),
        }
    }
}

impl From<JournalPage> for pb::ReadJournalResponse {
    fn from(p: JournalPage) -> Self {
        pb::ReadJournalResponse {
            entries: p.entries.into_iter().map(Into::into).collect(),
            next_offset: p.next_offset,
            end: p.end,
        }
    }
}

impl From<pb::ReadJournalResponse> for JournalPage {
    fn from(r: pb::ReadJournalResponse) -> Self {
        JournalPage {
            entries: r.entries.into_iter().map(Into::into).collect(),
            next_offset: r.next_offset,
            end: r.end,
        }
    }
}
