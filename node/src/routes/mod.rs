//! Routes: topic patterns, their matching, the validation of route definitions, and the route
//! table that picks the route for a topic.
//!
//! # What it owns
//!
//! - [`Pattern`]: a topic pattern such as `sensors/{device_id}/data` or `devices/+/#`, MQTT
//!   filter syntax plus named single-level parameters, and its MQTT matching
//!   ([`Pattern::matches`] gives the parameter values) and filter form
//!   ([`Pattern::mqtt_filter`]).
//! - [`validate_topic`] and [`topic_from_bytes`]: what a published topic name must be.
//! - [`RouteSpec`]: a route as configured (the serde form in the Raft config, the counterpart
//!   of the protobuf `Route`), and [`RouteSpec::validate`], which checks every field and yields
//!   a [`CompiledRoute`].
//! - [`Template`]: the `republish` handler's topic templates, parsed once when the route is
//!   validated ([`CompiledRoute::republish_template`]) and rendered per message; the one
//!   template renderer of the node.
//! - [`message_id_from_payload`]: a route's `message_id_field`, the JSON pointer that gives a
//!   message without a producer id (MQTT 3.1.1 has none) a stable id read from its payload, so
//!   that a redelivered copy is recognised as a duplicate.
//! - [`RouteTable`]: the validated routes in matching order, and [`RouteTable::route_for`],
//!   which gives a topic's [`RouteMatch`]: the route, the parameters, and the ordering key.
//!
//! # Promises
//!
//! - **Deterministic matching order.** First match wins, lowest priority number first, ties
//!   broken by name (byte order). The table is a pure function of the set of specs, so every
//!   node that applied the same config routes a topic to the same route with the same key.
//! - **Validation at the edge.** Nothing reaches the table unchecked: [`RouteSpec::validate`]
//!   rejects a bad name, pattern, group, key parameter, QoS, worker count, handler or message
//!   id field with a [`RouteError`] naming the field, and [`RouteTable::build`] rejects
//!   repeated names. Every check returns an error, none panics. Topics are checked by the
//!   caller with [`validate_topic`] before matching; matching itself accepts any string.
//! - **MQTT semantics.** `+` and `{name}` match one level (possibly empty), `#` zero or more
//!   trailing levels including the parent, and topics starting with `$` match no route, as
//!   MQTT 3.1.1/5 §4.7 prescribes for wildcards and as patterns cannot start with `$`.
//!
//! # Decisions
//!
//! - Patterns may not contain empty levels (`a//b`, `/a`, `a/`) although MQTT topics may:
//!   a pattern must say every level it means. An empty topic level is still matched by `+`,
//!   `{name}` and `#`, so `sensors/{id}/data` matches `sensors//data` with `id` empty.
//! - Literal levels cannot contain `{` or `}`; such topic levels are matched by `+`.
//! - A group is literal levels only; the effective pattern is `group/pattern`.
//! - QoS 2 is rejected, for the route and for republishing: the message path delivers at
//!   QoS 0 or 1.
//!
//! # Non-goals
//!
//! - **I/O.** No subscriptions, no publishing, no storage. Subscribing to the brokers with
//!   [`Pattern::mqtt_filter`] is the MQTT ingress's job, running handlers the node's.
//! - **Whether a custom handler exists.** A [`HandlerSpec::Custom`] name is checked for
//!   shape only; the node resolves it against the handlers registered through the library.
//! - **Versions.** The protobuf `Route.version` (compare-and-set) belongs to the config layer.

mod message_id;
mod pattern;
mod table;
mod template;
mod topic;

pub use message_id::{
    message_id_from_payload, validate_message_id_field, MessageIdFieldError, MissingMessageId,
    MAX_MESSAGE_ID_FIELD_LEN, MAX_MESSAGE_ID_LEN,
};
pub use pattern::{
    Level, Params, Pattern, PatternError, MAX_PARAM_NAME_LEN, MAX_PATTERN_LEN, MAX_PATTERN_LEVELS,
};
pub use table::{
    is_valid_route_name, CompiledRoute, HandlerSpec, RouteError, RouteMatch, RouteMode, RouteSpec,
    RouteTable, MAX_ROUTE_NAME_LEN, MAX_WORKER_COUNT,
};
pub use template::{Template, TemplateError};
pub use topic::{topic_from_bytes, validate_topic, TopicError, MAX_TOPIC_LEN};
