//! Handlers: what runs for a message once it reached the node that processes it.
//!
//! A [`Handler`] receives the [`Message`] (route, topic, params, key, payload) and a
//! [`HandlerContext`] (node id, an MQTT [`Publisher`], the journal). Built-ins a user can
//! configure without Rust: [`LogHandler`], [`RepublishHandler`], [`JournalHandler`]. Rust users
//! register their own handlers by name in a [`HandlerRegistry`] (the equivalent of the Python
//! RouteMQ's controllers) and wrap them in [`Middleware`] that can run code before and after
//! `next`, or exit early. [`RateLimit`] is the built-in middleware (per key or per route).
//!
//! Handlers run on the owner, one message at a time per partition for ordered routes. A
//! handler that fails or panics never takes the node down: the processor counts it, logs it and
//! writes it to the dead-letter journal (see `processor.rs`).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use async_trait::async_trait;

use crate::journal::{Journal, JournalRecord};
use crate::routes::{validate_topic, CompiledRoute, HandlerSpec, Template, TopicError, MAX_TOPIC_LEN};

/// A message being processed.
#[derive(Debug, Clone)]
pub struct Message {
    /// Route name.
    pub route: String,
    /// Topic it arrived on.
    pub topic: String,
    /// Named parameters extracted from the topic.
    pub params: Vec<(String, String)>,
    /// Ordering key.
    pub key: String,
    /// Partition of the key.
    pub partition: u32,
    /// Payload.
    pub payload: Vec<u8>,
    /// Producer message id.
    pub message_id: String,
    /// Config epoch under which it is processed.
    pub epoch: u64,
}

impl Message {
    /// The value of a named parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The journal entry recording this message as processed by `processed_by` now; with
    /// `error`, a dead letter saying why processing failed. Its offset is assigned by
    /// [`Journal::append`]. The one place a message becomes a [`JournalRecord`].
    pub fn journal_record(&self, processed_by: &str, error: Option<&HandlerError>) -> JournalRecord {
        JournalRecord {
            offset: 0,
            message_id: self.message_id.clone(),
            topic: self.topic.clone(),
            payload: self.payload.clone(),
            processed_by: processed_by.to_owned(),
            epoch: self.epoch,
            processed_at_unix_ms: now_unix_ms(),
            partition: self.partition,
            error: error.map(ToString::to_string).unwrap_or_default(),
        }
    }
}

/// Handler failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Middleware stopped the message (e.g. rate limited).
    #[error("rejected by middleware: {0}")]
    Rejected(String),
    /// The handler failed.
    #[error("{0}")]
    Failed(String),
}

/// Why a message could not be republished.
#[derive(Debug, thiserror::Error)]
pub enum RepublishError {
    /// The node has no MQTT broker to publish to.
    #[error("cannot republish to {topic:?}: no MQTT broker configured")]
    NoBroker {
        /// The target topic.
        topic: String,
    },
    /// The template rendered to a topic that cannot be published (an empty value where it is
    /// the whole topic, or too long with long values).
    #[error("cannot republish to {topic:?}: {source}")]
    InvalidTopic {
        /// The rendered topic.
        topic: String,
        /// What is wrong with it.
        source: TopicError,
    },
    /// The broker did not acknowledge the publish: not connected in time, the connection lost
    /// before the PUBACK (QoS 1), no PUBACK in time, or the publisher stopped.
    #[error("cannot republish to {topic:?}: {reason}")]
    NotAcknowledged {
        /// The target topic.
        topic: String,
        /// What went wrong.
        reason: String,
    },
    /// The payload is over the node's payload limit (`--max-payload-bytes`).
    #[error("cannot republish {size} bytes to {topic:?}: over the payload limit of {limit} bytes")]
    TooLarge {
        /// The target topic.
        topic: String,
        /// Payload size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The MQTT client refused the publish.
    #[error("cannot publish to {topic:?}: {source}")]
    Client {
        /// The target topic.
        topic: String,
        /// The client's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Publishes MQTT messages (used by `republish`).
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publishes `payload` to `topic` with `qos`; resolves when the broker acknowledged it
    /// (QoS 1; QoS 0: once written), never when it is only queued.
    async fn publish(&self, topic: &str, payload: &[u8], qos: u8) -> Result<(), RepublishError>;
}

/// A publisher for nodes without a broker: every publish fails with a clear reason.
pub struct NoBroker;

#[async_trait]
impl Publisher for NoBroker {
    async fn publish(&self, topic: &str, _payload: &[u8], _qos: u8) -> Result<(), RepublishError> {
        Err(RepublishError::NoBroker {
            topic: topic.to_owned(),
        })
    }
}

/// What a handler can use.
#[derive(Clone)]
pub struct HandlerContext {
    /// This node's id.
    pub node_id: String,
    /// MQTT publisher.
    pub publisher: Arc<dyn Publisher>,
    /// The node's journal.
    pub journal: Journal,
    /// Live statistics (rates, latency, hot keys) for the console.
    pub stats: crate::stats::NodeStats,
}

/// What a handler reports back (for the journal: where the entry went).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Handled {
    /// Journal offset, for journal handlers.
    pub journal_offset: Option<u64>,
    /// True when the message id was already processed (duplicate suppressed).
    pub duplicate: bool,
}

/// Processes messages of a route.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Handles one message.
    async fn handle(&self, ctx: &HandlerContext, message: &Message) -> Result<Handled, HandlerError>;
}

/// Runs around a handler; calls `next.run(..)` to continue, or returns early.
#[async_trait]
pub trait Middleware: Send + Sync + 'static {
    /// Handles one message, usually by calling `next`.
    async fn call(
        &self,
        ctx: &HandlerContext,
        message: &Message,
        next: Next<'_>,
    ) -> Result<Handled, HandlerError>;
}

/// The rest of a middleware chain.
pub struct Next<'a> {
    middleware: &'a [Arc<dyn Middleware>],
    handler: &'a dyn Handler,
}

impl Next<'_> {
    /// Runs the remaining middleware, then the handler.
    pub async fn run(self, ctx: &HandlerContext, message: &Message) -> Result<Handled, HandlerError> {
        match self.middleware.split_first() {
            Some((first, rest)) => {
                first
                    .call(
                        ctx,
                        message,
                        Next {
                            middleware: rest,
                            handler: self.handler,
                        },
                    )
                    .await
            }
            None => self.handler.handle(ctx, message).await,
        }
    }
}

/// A handler with its middleware, ready to run.
#[derive(Clone)]
pub struct Pipeline {
    middleware: Vec<Arc<dyn Middleware>>,
    handler: Arc<dyn Handler>,
}

impl Pipeline {
    /// A pipeline of `middleware` (outermost first) around `handler`.
    pub fn new(middleware: Vec<Arc<dyn Middleware>>, handler: Arc<dyn Handler>) -> Self {
        Self { middleware, handler }
    }

    /// Runs the message through the middleware and the handler.
    pub async fn run(&self, ctx: &HandlerContext, message: &Message) -> Result<Handled, HandlerError> {
        Next {
            middleware: &self.middleware,
            handler: self.handler.as_ref(),
        }
        .run(ctx, message)
        .await
    }
}

/// Logs each message at info level.
pub struct LogHandler;

#[async_trait]
impl Handler for LogHandler {
    async fn handle(&self, _ctx: &HandlerContext, message: &Message) -> Result<Handled, HandlerError> {
        tracing::info!(route = %message.route, topic = %message.topic, key = %message.key,
            message_id = %message.message_id, bytes = message.payload.len(), "message");
        Ok(Handled::default())
    }
}

/// Republishes each message to the topic its route's template renders to (see [`Template`]).
pub struct RepublishHandler {
    /// Topic template, parsed once when the route was validated
    /// ([`CompiledRoute::republish_template`](crate::routes::CompiledRoute::republish_template)).
    pub topic_template: Template,
    /// QoS of the republished message.
    pub qos: u8,
}

impl RepublishHandler {
    /// The republish handler of `route`, with the template parsed when the route was
    /// validated; `None` when `route` is not a republish route.
    pub fn of_route(route: &CompiledRoute) -> Option<Self> {
        match (route.handler(), route.republish_template()) {
            (HandlerSpec::Republish { qos, .. }, Some(template)) => Some(Self {
                topic_template: template.clone(),
                qos: *qos,
            }),
            _ => None,
        }
    }

    /// The topic `message` is republished to: the template rendered with the message's
    /// parameters, checked with [`validate_topic`].
    pub fn target_topic(&self, message: &Message) -> Result<String, RepublishError> {
        let topic = self.topic_template.render_with(|name| message.param(name));
        match validate_topic(&topic, MAX_TOPIC_LEN) {
            Ok(()) => Ok(topic),
            Err(source) => Err(RepublishError::InvalidTopic { topic, source }),
        }
    }
}

#[async_trait]
impl Handler for RepublishHandler {
    async fn handle(&self, ctx: &HandlerContext, message: &Message) -> Result<Handled, HandlerError> {
        let failed = |e: RepublishError| HandlerError::Failed(e.to_string());
        let topic = self.target_topic(message).map_err(failed)?;
        ctx.publisher
            .publish(&topic, &message.payload, self.qos)
            .await
            .map_err(failed)?;
        Ok(Handled::default())
    }
}

/// Appends each message to the key's durable journal, suppressing duplicate message ids.
pub struct JournalHandler;

#[async_trait]
impl Handler for JournalHandler {
    async fn handle(&self, ctx: &HandlerContext, message: &Message) -> Result<Handled, HandlerError> {
        let record = message.journal_record(&ctx.node_id, None);
        let journal = ctx.journal.clone();
        let (route, key) = (message.route.clone(), message.key.clone());
        let appended = tokio::task::spawn_blocking(move || journal.append(&route, &key, record))
            .await
            .map_err(|e| HandlerError::Failed(format!("journal task: {e}")))?
            .map_err(|e| HandlerError::Failed(e.to_string()))?;
        Ok(Handled {
            journal_offset: Some(appended.offset),
            duplicate: appended.duplicate,
        })
    }
}

/// Wall-clock time in Unix milliseconds (0 if the clock is before 1970).
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What a rate limit counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitScope {
    /// One budget per key.
    PerKey,
    /// One budget for the whole route.
    PerRoute,
}

/// Middleware that rejects messages over `per_second` (with a burst of the same size), per key
/// or per route. Rejected messages go to the dead-letter journal like failures.
pub struct RateLimit {
    scope: RateLimitScope,
    limiter: governor::DefaultKeyedRateLimiter<String>,
}

impl RateLimit {
    /// A limit of `per_second` messages per second.
    pub fn new(scope: RateLimitScope, per_second: NonZeroU32) -> Self {
        Self {
            scope,
            limiter: governor::RateLimiter::keyed(governor::Quota::per_second(per_second)),
        }
    }
}

#[async_trait]
impl Middleware for RateLimit {
    async fn call(
        &self,
        ctx: &HandlerContext,
        message: &Message,
        next: Next<'_>,
    ) -> Result<Handled, HandlerError> {
        let bucket = match self.scope {
            RateLimitScope::PerKey => format!("{}\u{0}{}", message.route, message.key),
            RateLimitScope::PerRoute => message.route.clone(),
        };
        if self.limiter.check_key(&bucket).is_err() {
            metrics::counter!(crate::metrics::RATE_LIMITED, "route" => message.route.clone()).increment(1);
            return Err(HandlerError::Rejected(format!(
                "rate limit exceeded for {bucket:?}"
            )));
        }
        next.run(ctx, message).await
    }
}

/// Custom handlers and middleware registered by name through the library API.
#[derive(Clone, Default)]
pub struct HandlerRegistry {
    handlers: HashMap<String, Arc<dyn Handler>>,
    middleware: Vec<Arc<dyn Middleware>>,
}

impl HandlerRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a handler that routes can name with `handler = { custom = "<name>" }`.
    pub fn handler(mut self, name: impl Into<String>, handler: impl Handler) -> Self {
        self.handlers.insert(name.into(), Arc::new(handler));
        self
    }

    /// Adds middleware run around every route's handler (outermost first).
    pub fn middleware(mut self, middleware: impl Middleware) -> Self {
        self.middleware.push(Arc::new(middleware));
        self
    }

    /// The registered handler `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Handler>> {
        self.handlers.get(name).cloned()
    }

    /// Middleware in order.
    pub fn middleware_chain(&self) -> Vec<Arc<dyn Middleware>> {
        self.middleware.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Recording(Arc<Mutex<Vec<String>>>);

    #[async_trait]
    impl Handler for Recording {
        async fn handle(&self, _ctx: &HandlerContext, message: &Message) -> Result<Handled, HandlerError> {
            self.0.lock().unwrap().push(message.message_id.clone());
            Ok(Handled::default())
        }
    }

    struct Tag(&'static str, Arc<Mutex<Vec<String>>>);

    #[async_trait]
    impl Middleware for Tag {
        async fn call(
            &self,
            ctx: &HandlerContext,
            message: &Message,
            next: Next<'_>,
        ) -> Result<Handled, HandlerError> {
            self.1.lock().unwrap().push(format!("{}>", self.0));
            let result = next.run(ctx, message).await;
            self.1.lock().unwrap().push(format!("<{}", self.0));
            result
        }
    }

    fn ctx() -> (HandlerContext, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        (
            HandlerContext {
                node_id: "n1".into(),
                publisher: Arc::new(NoBroker),
                journal,
                stats: Default::default(),
            },
            dir,
        )
    }

    fn message(id: &str, key: &str) -> Message {
        Message {
            route: "r".into(),
            topic: format!("s/{key}/d"),
            params: vec![("id".into(), key.into())],
            key: key.into(),
            partition: 3,
            payload: b"x".to_vec(),
            message_id: id.into(),
            epoch: 1,
        }
    }

    #[tokio::test]
    async fn middleware_wraps_in_order_and_can_exit_early() {
        let (ctx, _dir) = ctx();
        let log = Arc::new(Mutex::new(Vec::new()));
        let pipeline = Pipeline::new(
            vec![Arc::new(Tag("a", log.clone())), Arc::new(Tag("b", log.clone()))],
            Arc::new(Recording(log.clone())),
        );
        pipeline.run(&ctx, &message("m1", "k")).await.unwrap();
        assert_eq!(*log.lock().unwrap(), ["a>", "b>", "m1", "<b", "<a"]);

        let limited = Pipeline::new(
            vec![Arc::new(RateLimit::new(
                RateLimitScope::PerKey,
                NonZeroU32::new(2).unwrap(),
            ))],
            Arc::new(Recording(log.clone())),
        );
        log.lock().unwrap().clear();
        let results: Vec<bool> = futures::future::join_all((0..4).map(|i| {
            let ctx = ctx.clone();
            let limited = limited.clone();
            async move { limited.run(&ctx, &message(&format!("m{i}"), "k")).await.is_ok() }
        }))
        .await;
        assert_eq!(results.iter().filter(|ok| **ok).count(), 2, "burst of 2 per key");
        // Another key has its own budget.
        assert!(limited.run(&ctx, &message("x", "other")).await.is_ok());
    }

    #[tokio::test]
    async fn journal_handler_suppresses_duplicates() {
        let (ctx, _dir) = ctx();
        let first = JournalHandler.handle(&ctx, &message("m1", "k")).await.unwrap();
        let again = JournalHandler.handle(&ctx, &message("m1", "k")).await.unwrap();
        assert_eq!((first.journal_offset, first.duplicate), (Some(0), false));
        assert_eq!((again.journal_offset, again.duplicate), (Some(0), true));
    }

    fn republish(template: &str) -> RepublishHandler {
        RepublishHandler {
            topic_template: Template::parse(template).unwrap(),
            qos: 1,
        }
    }

    #[tokio::test]
    async fn republish_renders_the_template_and_reports_a_missing_broker() {
        let mut m = message("m1", "k");
        m.params = vec![("id".into(), "d1".into()), ("kind".into(), "t".into())];
        assert_eq!(
            republish("out/{id}/x-{kind}").target_topic(&m).unwrap(),
            "out/d1/x-t"
        );
        // A parameter the message lacks (not possible for a validated route) stays visible.
        assert_eq!(republish("out/{other}").target_topic(&m).unwrap(), "out/{other}");
        // Values are inserted as they are, never read as placeholders themselves.
        m.params = vec![("id".into(), "{kind}".into()), ("kind".into(), "t".into())];
        assert_eq!(
            republish("out/{id}/{kind}").target_topic(&m).unwrap(),
            "out/{kind}/t"
        );

        let (ctx, _dir) = ctx();
        let err = republish("out/{id}")
            .handle(&ctx, &message("m1", "k"))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            HandlerError::Failed("cannot republish to \"out/k\": no MQTT broker configured".into())
        );
    }

    #[tokio::test]
    async fn republish_refuses_a_rendered_topic_that_cannot_be_published() {
        let mut m = message("m1", "k");
        m.params = vec![("id".into(), String::new())];
        let err = republish("{id}").target_topic(&m).unwrap_err();
        assert!(
            matches!(&err, RepublishError::InvalidTopic { topic, source: TopicError::Empty } if topic.is_empty()),
            "{err}"
        );
        let (ctx, _dir) = ctx();
        let failed = republish("{id}").handle(&ctx, &m).await.unwrap_err();
        assert_eq!(failed, HandlerError::Failed(err.to_string()));
    }

    #[test]
    fn republish_handlers_come_from_validated_routes() {
        let route = |handler: HandlerSpec| {
            crate::routes::RouteSpec {
                name: "r".into(),
                pattern: "s/{id}/d".into(),
                group: String::new(),
                key_param: Some("id".into()),
                qos: 1,
                mode: crate::routes::RouteMode::Ordered,
                handler,
                priority: 0,
                message_id_field: None,
            }
            .validate()
            .unwrap()
        };
        let handler = RepublishHandler::of_route(&route(HandlerSpec::Republish {
            topic_template: "out/{id}".into(),
            qos: 0,
        }))
        .unwrap();
        assert_eq!((handler.topic_template.as_str(), handler.qos), ("out/{id}", 0));
        assert!(RepublishHandler::of_route(&route(HandlerSpec::Log)).is_none());
    }

    #[test]
    fn journal_records_carry_the_message_and_the_failure() {
        let m = message("m1", "k");
        let record = m.journal_record("n2", None);
        assert_eq!(
            (
                record.offset,
                record.message_id.as_str(),
                record.topic.as_str(),
                record.payload.as_slice(),
                record.processed_by.as_str(),
                record.epoch,
                record.partition,
                record.error.as_str()
            ),
            (0, "m1", "s/k/d", b"x".as_slice(), "n2", 1, 3, "")
        );
        assert!(record.processed_at_unix_ms > 0);
        let dead = m.journal_record("n2", Some(&HandlerError::Failed("boom".into())));
        assert_eq!(dead.error, "boom");
        assert_eq!(
            JournalRecord {
                error: String::new(),
                processed_at_unix_ms: 0,
                ..dead
            },
            JournalRecord {
                processed_at_unix_ms: 0,
                ..record
            }
        );
    }
}
