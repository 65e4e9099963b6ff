//! [`Client`] calls of the `routemq.v1.Routes` and `routemq.v1.Messages` services: the routes
//! table, publishing, and reading journals back.
//!
//! Retry rules, on top of [`crate::retry`]:
//! - Route writes ([`Client::put_route`], [`Client::delete_route`]) go to the Raft leader and
//!   follow NotLeader answers. A `FAILED_PRECONDITION` without leader metadata (a
//!   compare-and-set version mismatch) is final. A write whose attempt timed out may have been
//!   applied; its retry then sees the applied state (a CAS retry answers a version mismatch).
//! - Route reads follow the read consistency: linearizable at the leader, local anywhere.
//! - [`Client::publish`] goes to any node and moves on to another on `UNAVAILABLE`, transport
//!   failures and timeouts, always with the same message id: the client generates one (a UUID)
//!   when none is given, so a retried publish is a duplicate the journal suppresses.
//!   `NOT_FOUND` (no route), `INVALID_ARGUMENT` (bad topic, payload too large) and `INTERNAL`
//!   (the handler failed) are final.
//! - [`Client::read_journal`] goes to any node (the node forwards the read to the key's owner).

use routemq_proto::v1::messages_client::MessagesClient;
use routemq_proto::v1::routes_client::RoutesClient;
use routemq_proto::v1::{
    DeleteRouteRequest, GetRouteRequest, JournalEntry, ListRoutesRequest, PublishRequest, PublishResponse,
    PutRouteRequest, PutRouteResponse, ReadConsistency, ReadJournalRequest, ReadJournalResponse, Route,
};
use tonic::transport::Channel;
use tonic::Code;

use crate::client::{Client, Target};
use crate::error::ClientError;

/// Largest response the client decodes (journal pages of large payloads), 256 MiB.
const MAX_DECODING_BYTES: usize = 256 * 1024 * 1024;

/// Largest request the client encodes (a publish with a large payload), 64 MiB. The node
/// enforces its own payload limit and answers `INVALID_ARGUMENT` above it.
const MAX_ENCODING_BYTES: usize = 64 * 1024 * 1024;

fn routes(channel: Channel) -> RoutesClient<Channel> {
    RoutesClient::new(channel)
}

fn stats(channel: Channel) -> routemq_proto::v1::stats_client::StatsClient<Channel> {
    routemq_proto::v1::stats_client::StatsClient::new(channel)
}

fn messages(channel: Channel) -> MessagesClient<Channel> {
    MessagesClient::new(channel)
        .max_decoding_message_size(MAX_DECODING_BYTES)
        .max_encoding_message_size(MAX_ENCODING_BYTES)
}

/// A new message id: a random (v4) UUID in its hyphenated form.
pub fn new_message_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl Client {
    /// Creates or replaces a route. `expected_version`: `None` writes unconditionally;
    /// `Some(0)` creates only if no route has this name; `Some(v)` replaces only if the route's
    /// current version is `v`. A mismatch is `FAILED_PRECONDITION` (final). Answers the route as
    /// stored (with its new `version`) and the config epoch after the write.
    pub async fn put_route(
        &self,
        route: Route,
        expected_version: Option<u64>,
    ) -> Result<PutRouteResponse, ClientError> {
        let request = PutRouteRequest {
            route: Some(route),
            expected_version,
        };
        let (_, put) = self
            .call(Target::Leader, request, |channel, request| async move {
                routes(channel).put_route(request).await
            })
            .await?;
        Ok(put)
    }

    /// The route named `name`, or `None` when there is none.
    pub async fn get_route(
        &self,
        name: impl Into<String>,
        consistency: ReadConsistency,
    ) -> Result<Option<Route>, ClientError> {
        let request = GetRouteRequest {
            name: name.into(),
            consistency: consistency as i32,
        };
        let (_, got) = self
            .call(
                Target::for_read(consistency),
                request,
                |channel, request| async move { routes(channel).get_route(request).await },
            )
            .await?;
        Ok(got.route)
    }

    /// Every route, in matching order (priority, then name).
    pub async fn list_routes(&self, consistency: ReadConsistency) -> Result<Vec<Route>, ClientError> {
        let request = ListRoutesRequest {
            consistency: consistency as i32,
        };
        let (_, listed) = self
            .call(
                Target::for_read(consistency),
                request,
                |channel, request| async move { routes(channel).list_routes(request).await },
            )
            .await?;
        Ok(listed.routes)
    }

    /// Deletes a route; `expected_version` as in [`Client::put_route`] (`Some(v)`: only if its
    /// version is `v`). Answers false when no route has this name (the node's `NOT_FOUND`,
    /// which is also what the retry of an attempt that was applied but timed out sees).
    pub async fn delete_route(
        &self,
        name: impl Into<String>,
        expected_version: Option<u64>,
    ) -> Result<bool, ClientError> {
        let request = DeleteRouteRequest {
            name: name.into(),
            expected_version,
        };
        let result = self
            .call(Target::Leader, request, |channel, request| async move {
                routes(channel).delete_route(request).await
            })
            .await;
        match result {
            Ok((_, deleted)) => Ok(deleted.deleted),
            Err(ClientError::Rpc { status, .. }) if status.code() == Code::NotFound => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Publishes one message through any node; answers once the key's owner accepted it
    /// (journal: durably appended; other handlers: handler done). `message_id`: the producer's
    /// id for duplicate suppression; `None` generates one ([`new_message_id`]), kept across
    /// retries and returned in the response.
    pub async fn publish(
        &self,
        topic: impl Into<String>,
        payload: impl Into<Vec<u8>>,
        message_id: Option<String>,
    ) -> Result<PublishResponse, ClientError> {
        let message_id = message_id
            .filter(|id| !id.is_empty())
            .unwrap_or_else(new_message_id);
        let request = PublishRequest {
            topic: topic.into(),
            payload: payload.into(),
            message_id,
            request_id: 0,
        };
        let (_, published) = self
            .call(Target::Any, request, |channel, request| async move {
                messages(channel).publish(request).await
            })
            .await?;
        Ok(published)
    }

    /// The hot keys of `route` in the last complete counting window, merged over every member
    /// by the node that answers: at most `limit` keys (0: 10).
    pub async fn hot_keys(
        &self,
        route: impl Into<String>,
        limit: u32,
    ) -> Result<routemq_proto::v1::HotKeysResponse, ClientError> {
        let request = routemq_proto::v1::HotKeysRequest {
            route: route.into(),
            limit,
            local: false,
        };
        let (_, answer) = self
            .call(Target::Any, request, |channel, request| async move {
                stats(channel).get_hot_keys(request).await
            })
            .await?;
        Ok(answer)
    }

    /// One page of a key's journal: at most `limit` entries (0: the node's default, 1000) from
    /// offset `from_offset`.
    pub async fn read_journal(
        &self,
        route: impl Into<String>,
        key: impl Into<String>,
        from_offset: u64,
        limit: u32,
    ) -> Result<ReadJournalResponse, ClientError> {
        let request = ReadJournalRequest {
            route: route.into(),
            key: key.into(),
            from_offset,
            limit,
        };
        Ok(self.read_journal_page(request).await?.1)
    }

    async fn read_journal_page(
        &self,
        request: ReadJournalRequest,
    ) -> Result<(String, ReadJournalResponse), ClientError> {
        self.call(Target::Any, request, |channel, request| async move {
            messages(channel).read_journal(request).await
        })
        .await
    }

    /// A key's journal from `from_offset` to its end, page after page; answers the entries and
    /// the offset after the last one (where to continue later).
    pub async fn read_journal_from(
        &self,
        route: &str,
        key: &str,
        from_offset: u64,
    ) -> Result<(Vec<JournalEntry>, u64), ClientError> {
        let mut entries = Vec::new();
        let mut offset = from_offset;
        loop {
            let (addr, page) = self
                .read_journal_page(ReadJournalRequest {
                    route: route.to_string(),
                    key: key.to_string(),
                    from_offset: offset,
                    limit: 0,
                })
                .await?;
            let next = page.next_offset;
            let got = page.entries.len();
            entries.extend(page.entries);
            if page.end || got == 0 {
                return Ok((entries, next.max(offset)));
            }
            if next <= offset {
                return Err(ClientError::InvalidResponse {
                    addr,
                    reason: format!(
                        "journal of {key:?} on route {route:?}: page from offset {offset} has {got} entries but next offset {next}"
                    ),
                });
            }
            offset = next;
        }
    }

    /// A key's whole journal, page after page.
    pub async fn read_journal_all(&self, route: &str, key: &str) -> Result<Vec<JournalEntry>, ClientError> {
        Ok(self.read_journal_from(route, key, 0).await?.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_unique_uuids() {
        let a = new_message_id();
        let b = new_message_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert!(uuid::Uuid::parse_str(&a).is_ok());
    }

    #[test]
    fn futures_are_send() {
        fn send<T: Send>(_: &T) {}
        let client = Client::new(["a:1"], crate::ClientOptions::default()).unwrap();
        send(&client.put_route(Route::default(), None));
        send(&client.get_route("r", ReadConsistency::Local));
        send(&client.list_routes(ReadConsistency::Local));
        send(&client.delete_route("r", Some(3)));
        send(&client.publish("t", b"p".to_vec(), None));
        send(&client.read_journal("r", "k", 0, 0));
        send(&client.read_journal_all("r", "k"));
    }
}
