//! Route definitions, their validation, and the route table that matches topics to routes.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::message_id::{
    message_id_from_payload, validate_message_id_field, MessageIdFieldError, MissingMessageId,
};
use super::pattern::{Level, Params, Pattern, PatternError};
use super::template::{Template, TemplateError};

/// Longest accepted route name (and custom handler name), in bytes.
pub const MAX_ROUTE_NAME_LEN: usize = 128;

/// Largest accepted `worker_count` of a shared route.
pub const MAX_WORKER_COUNT: u32 = 64;

/// How a route's messages are processed.
///
/// Serialized with a `kind` tag: `{"kind":"ordered"}`, `{"kind":"shared","worker_count":4}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RouteMode {
    /// One owner per key: a key's messages are processed one at a time, in order, on the
    /// node owning the key's partition.
    Ordered,
    /// Any node may process, with no order: `worker_count` concurrent workers (and MQTT
    /// shared-subscription consumers) per node, from 1 to [`MAX_WORKER_COUNT`].
    Shared {
        /// Workers per node.
        worker_count: u32,
    },
}

/// What a route does with a message. Only the built-in handlers are interpreted here;
/// `Custom` names a handler registered through the Rust library API, which the node resolves.
///
/// Serialized with a `kind` tag: `{"kind":"log"}`,
/// `{"kind":"republish","topic_template":"out/{id}","qos":1}`, `{"kind":"journal"}`,
/// `{"kind":"custom","name":"billing"}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HandlerSpec {
    /// Logs each message.
    Log,
    /// Publishes each message to the topic rendered from `topic_template` (see [`Template`]).
    Republish {
        /// Topic template whose `{param}` placeholders are parameters of the route's pattern.
        topic_template: String,
        /// QoS of the republished message: 0 or 1.
        qos: u8,
    },
    /// Appends each message to the key's durable journal.
    Journal,
    /// A handler registered through the library API under this name (same charset as route
    /// names). Whether it is registered is checked by the node, not here.
    Custom {
        /// Registered handler name.
        name: String,
    },
}

/// A route as configured: the serde form stored in the Raft config and read from config
/// files, and the counterpart of the protobuf `routemq.v1.Route` (without its server-set
/// `version`). [`RouteSpec::validate`] turns it into a [`CompiledRoute`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RouteSpec {
    /// Unique name: 1 to [`MAX_ROUTE_NAME_LEN`] of `[A-Za-z0-9_.-]`.
    pub name: String,
    /// Topic pattern, e.g. `sensors/{device_id}/data` (see [`Pattern`]).
    pub pattern: String,
    /// Route-group prefix: literal levels such as `plant1` or `plant1/line2`; empty for none.
    /// The effective pattern is `group/pattern`.
    #[serde(default)]
    pub group: String,
    /// Parameter of the pattern whose value is the ordering key; `None`: the whole topic.
    #[serde(default)]
    pub key_param: Option<String>,
    /// QoS at which the route takes messages from the broker: 0 or 1 (2 is rejected).
    #[serde(default)]
    pub qos: u8,
    /// Ordered or shared processing.
    pub mode: RouteMode,
    /// What to do with each message.
    pub handler: HandlerSpec,
    /// Matching order: lower first, ties broken by name.
    #[serde(default)]
    pub priority: i32,
    /// JSON pointer (RFC 6901, e.g. `/id`) into a JSON payload whose string or number value is
    /// the message id, for messages that arrive without one (MQTT, gRPC without
    /// `message_id`): a redelivered copy then carries the same id and the journal keeps one.
    /// `None`: ids are generated. Omitted from the serde form when `None`, so routes written
    /// before the field existed read back unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id_field: Option<String>,
}

/// Why a [`RouteSpec`] or a set of them is invalid. Each variant names the field at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// `name` is empty, too long, or has a character outside `[A-Za-z0-9_.-]`.
    #[error(
        "route name {name:?} is invalid: use 1 to {MAX_ROUTE_NAME_LEN} letters, digits, '_', '.' or '-'"
    )]
    InvalidName {
        /// The name given.
        name: String,
    },
    /// `pattern` (or, when only the combination is at fault, `group/pattern`) is not a valid
    /// pattern.
    #[error("route pattern {pattern:?} is invalid: {source}")]
    InvalidPattern {
        /// The pattern text that failed.
        pattern: String,
        /// Why.
        source: PatternError,
    },
    /// `group` is not a valid pattern prefix.
    #[error("route group {group:?} is invalid: {source}")]
    InvalidGroup {
        /// The group given.
        group: String,
        /// Why.
        source: PatternError,
    },
    /// `group` has a wildcard or parameter level; a group is literal levels only.
    #[error("route group {group:?} has the level {level:?}: a group is literal levels only, without '+', '#' or {{param}}")]
    GroupNotLiteral {
        /// The group given.
        group: String,
        /// The offending level.
        level: String,
    },
    /// `key_param` is not a `{name}` of the pattern.
    #[error("key_param {key_param:?} is not a parameter of the pattern {pattern:?}")]
    KeyParamNotInPattern {
        /// The key parameter given.
        key_param: String,
        /// The effective pattern.
        pattern: String,
    },
    /// `qos` is 2, which the message path does not support.
    #[error("qos {qos} not supported: routes take messages at qos 0 or 1")]
    UnsupportedQos {
        /// The QoS given.
        qos: u8,
    },
    /// `qos` is not an MQTT QoS level at all.
    #[error("qos {qos} is not an MQTT qos level; routes take qos 0 or 1")]
    InvalidQos {
        /// The QoS given.
        qos: u8,
    },
    /// A shared route's `worker_count` is outside 1..=[`MAX_WORKER_COUNT`].
    #[error(
        "worker_count {worker_count} is out of range: a shared route has 1 to {MAX_WORKER_COUNT} workers"
    )]
    BadWorkerCount {
        /// The worker count given.
        worker_count: u32,
    },
    /// The republish handler's `topic_template` is malformed.
    #[error("republish topic_template {template:?} is invalid: {source}")]
    InvalidTemplate {
        /// The template given.
        template: String,
        /// Why.
        source: TemplateError,
    },
    /// A `{param}` of the republish template is not a parameter of the pattern.
    #[error(
        "republish topic_template placeholder {{{param}}} is not a parameter of the pattern {pattern:?}"
    )]
    TemplateParamNotInPattern {
        /// The placeholder name.
        param: String,
        /// The effective pattern.
        pattern: String,
    },
    /// The republish handler's `qos` is 2, which is not supported.
    #[error("republish qos {qos} not supported: republish at qos 0 or 1")]
    UnsupportedRepublishQos {
        /// The QoS given.
        qos: u8,
    },
    /// The republish handler's `qos` is not an MQTT QoS level at all.
    #[error("republish qos {qos} is not an MQTT qos level; republish at qos 0 or 1")]
    InvalidRepublishQos {
        /// The QoS given.
        qos: u8,
    },
    /// A custom handler's `name` is empty, too long or has a character outside
    /// `[A-Za-z0-9_.-]`.
    #[error("custom handler name {name:?} is invalid: use 1 to {MAX_ROUTE_NAME_LEN} letters, digits, '_', '.' or '-'")]
    InvalidHandlerName {
        /// The name given.
        name: String,
    },
    /// `message_id_field` is not a JSON pointer the node accepts.
    #[error("message_id_field {field:?} is invalid: {reason}")]
    InvalidMessageIdField {
        /// The pointer given.
        field: String,
        /// Why.
        reason: MessageIdFieldError,
    },
    /// Two routes of one table have the same name.
    #[error("route name {name:?} is used more than once")]
    DuplicateName {
        /// The repeated name.
        name: String,
    },
}

/// True for 1 to [`MAX_ROUTE_NAME_LEN`] bytes of `[A-Za-z0-9_.-]`: the rule for route names
/// and custom handler names.
pub fn is_valid_route_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ROUTE_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn check_qos(qos: u8) -> Result<(), RouteError> {
    match qos {
        0 | 1 => Ok(()),
        2 => Err(RouteError::UnsupportedQos { qos }),
        _ => Err(RouteError::InvalidQos { qos }),
    }
}

impl RouteSpec {
    /// The pattern text matching uses: `group/pattern`, or `pattern` when the group is empty.
    pub fn effective_pattern(&self) -> String {
        if self.group.is_empty() {
            self.pattern.clone()
        } else {
            format!("{}/{}", self.group, self.pattern)
        }
    }

    /// Checks every field and compiles the route. Fields are checked in declaration order
    /// (name, pattern, group, the combined pattern, key_param, qos, mode, handler,
    /// message_id_field) and the first fault is returned.
    ///
    /// The pattern and the group are each parsed on their own first, so an error points at
    /// the field the user wrote; the combination can then only fail the length and level
    /// limits, reported as [`RouteError::InvalidPattern`] on the combined text.
    pub fn validate(&self) -> Result<CompiledRoute, RouteError> {
        if !is_valid_route_name(&self.name) {
            return Err(RouteError::InvalidName {
                name: self.name.clone(),
            });
        }
        let own = Pattern::parse(&self.pattern).map_err(|source| RouteError::InvalidPattern {
            pattern: self.pattern.clone(),
            source,
        })?;
        let pattern = if self.group.is_empty() {
            own
        } else {
            let group = Pattern::parse(&self.group).map_err(|source| RouteError::InvalidGroup {
                group: self.group.clone(),
                source,
            })?;
            if let Some(level) = group.levels().iter().find(|level| level.is_wildcard()) {
                return Err(RouteError::GroupNotLiteral {
                    group: self.group.clone(),
                    level: level.to_string(),
                });
            }
            let effective = self.effective_pattern();
            Pattern::parse(&effective).map_err(|source| RouteError::InvalidPattern {
                pattern: effective.clone(),
                source,
            })?
        };
        let key_index = match &self.key_param {
            None => None,
            Some(key_param) => {
                let index = pattern.levels().iter().position(|level| match level {
                    Level::Param(name) => name == key_param,
                    _ => false,
                });
                Some(index.ok_or_else(|| RouteError::KeyParamNotInPattern {
                    key_param: key_param.clone(),
                    pattern: pattern.to_string(),
                })?)
            }
        };
        check_qos(self.qos)?;
        if let RouteMode::Shared { worker_count } = self.mode {
            if !(1..=MAX_WORKER_COUNT).contains(&worker_count) {
                return Err(RouteError::BadWorkerCount { worker_count });
            }
        }
        let template = match &self.handler {
            HandlerSpec::Log | HandlerSpec::Journal => None,
            HandlerSpec::Custom { name } => {
                if !is_valid_route_name(name) {
                    return Err(RouteError::InvalidHandlerName { name: name.clone() });
                }
                None
            }
            HandlerSpec::Republish { topic_template, qos } => {
                let template =
                    Template::parse(topic_template).map_err(|source| RouteError::InvalidTemplate {
                        template: topic_template.clone(),
                        source,
                    })?;
                if let Some(param) = template.params().find(|param| !pattern.has_param(param)) {
                    return Err(RouteError::TemplateParamNotInPattern {
                        param: param.to_owned(),
                        pattern: pattern.to_string(),
                    });
                }
                match *qos {
                    0 | 1 => {}
                    2 => return Err(RouteError::UnsupportedRepublishQos { qos: 2 }),
                    qos => return Err(RouteError::InvalidRepublishQos { qos }),
                }
                Some(template)
            }
        };
        if let Some(field) = &self.message_id_field {
            validate_message_id_field(field).map_err(|reason| RouteError::InvalidMessageIdField {
                field: field.clone(),
                reason,
            })?;
        }
        Ok(CompiledRoute {
            spec: self.clone(),
            pattern,
            key_index,
            template,
        })
    }
}

/// A validated route: its spec, its effective pattern, and its parsed republish template.
/// Only [`RouteSpec::validate`] makes one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledRoute {
    spec: RouteSpec,
    pattern: Pattern,
    /// Level of the key parameter in `pattern`; `None`: the key is the whole topic.
    key_index: Option<usize>,
    template: Option<Template>,
}

impl CompiledRoute {
    /// The spec it was compiled from, as given.
    pub fn spec(&self) -> &RouteSpec {
        &self.spec
    }

    /// The route's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The effective pattern (group prefix applied).
    pub fn pattern(&self) -> &Pattern {
        &self.pattern
    }

    /// The key parameter, if the key is not the whole topic.
    pub fn key_param(&self) -> Option<&str> {
        self.spec.key_param.as_deref()
    }

    /// QoS at which the route takes messages: 0 or 1.
    pub fn qos(&self) -> u8 {
        self.spec.qos
    }

    /// Ordered or shared.
    pub fn mode(&self) -> RouteMode {
        self.spec.mode
    }

    /// The handler.
    pub fn handler(&self) -> &HandlerSpec {
        &self.spec.handler
    }

    /// Matching priority: lower first.
    pub fn priority(&self) -> i32 {
        self.spec.priority
    }

    /// The JSON pointer the message id is read from, if the route has one.
    pub fn message_id_field(&self) -> Option<&str> {
        self.spec.message_id_field.as_deref()
    }

    /// The message id this route reads from `payload`: `Ok(None)` when the route has no
    /// `message_id_field`, `Err` (why) when it has one but the payload does not carry an id.
    pub fn message_id_of(&self, payload: &[u8]) -> Result<Option<String>, MissingMessageId> {
        match &self.spec.message_id_field {
            None => Ok(None),
            Some(field) => message_id_from_payload(field, payload).map(Some),
        }
    }

    /// The parsed republish template, for a republish route.
    pub fn republish_template(&self) -> Option<&Template> {
        self.template.as_ref()
    }

    /// Matches `topic` against this route alone: the params and the key, or `None`.
    pub fn match_topic(&self, topic: &str) -> Option<(Params, String)> {
        let params = self.pattern.matches(topic)?;
        let key = self.key_of(topic);
        Some((params, key))
    }

    /// The key of a topic this route matches: the key parameter's level, else the topic.
    fn key_of(&self, topic: &str) -> String {
        match self.key_index {
            Some(index) => topic.split('/').nth(index).unwrap_or_default().to_owned(),
            None => topic.to_owned(),
        }
    }
}

/// The route a topic matched, with the topic's parameter values and its ordering key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteMatch {
    route: Arc<CompiledRoute>,
    params: Params,
    key: String,
}

impl RouteMatch {
    /// The matched route.
    pub fn route(&self) -> &Arc<CompiledRoute> {
        &self.route
    }

    /// The values of the pattern's `{name}` levels in the topic.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The ordering key: the value of the route's `key_param` (possibly empty, for a topic
    /// with an empty level there), or the whole topic when the route has none.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// For a republish route, the rendered target topic (to be checked with
    /// [`validate_topic`](super::validate_topic) before publishing); `None` otherwise.
    pub fn republish_topic(&self) -> Option<String> {
        self.route.template.as_ref().map(|t| t.render(&self.params))
    }
}

/// The set of routes and the order in which a topic is tried against them.
///
/// **First match wins, lowest priority number first, ties broken by name** (byte-wise, so
/// `B` < `a`). The order is a pure function of the specs, whatever order they are given in,
/// so every node routes a topic to the same route. Matching tries routes in that order,
/// which costs O(routes × levels) per topic.
///
/// Routes are shared as `Arc`s, so cloning a table or holding a [`RouteMatch`] is cheap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteTable {
    /// In matching order.
    routes: Vec<Arc<CompiledRoute>>,
}

impl RouteTable {
    /// A table without routes: no topic matches.
    pub fn empty() -> RouteTable {
        RouteTable::default()
    }

    /// Validates every spec and builds the table; rejects the first invalid spec (in the
    /// order given) and repeated names.
    pub fn build<I>(specs: I) -> Result<RouteTable, RouteError>
    where
        I: IntoIterator<Item = RouteSpec>,
    {
        let mut routes = Vec::new();
        for spec in specs {
            routes.push(Arc::new(spec.validate()?));
        }
        routes.sort_by(|a, b| matching_order(a, b));
        if let Some(pair) = find_duplicate(&routes) {
            return Err(RouteError::DuplicateName {
                name: pair.to_owned(),
            });
        }
        Ok(RouteTable { routes })
    }

    /// Adds `spec`, or replaces the route with the same name; returns the replaced route.
    /// The table is unchanged when the spec is invalid.
    pub fn upsert(&mut self, spec: RouteSpec) -> Result<Option<Arc<CompiledRoute>>, RouteError> {
        let route = Arc::new(spec.validate()?);
        let old = self.remove(route.name());
        let at = self
            .routes
            .partition_point(|r| matching_order(r, &route) == std::cmp::Ordering::Less);
        self.routes.insert(at, route);
        Ok(old)
    }

    /// Removes the route named `name`, returning it.
    pub fn remove(&mut self, name: &str) -> Option<Arc<CompiledRoute>> {
        let at = self.routes.iter().position(|r| r.name() == name)?;
        Some(self.routes.remove(at))
    }

    /// The first route in matching order whose pattern matches `topic`, with the topic's
    /// params and key; `None` when no route matches. Does not validate the topic: call
    /// [`validate_topic`](super::validate_topic) at the edge first.
    pub fn route_for(&self, topic: &str) -> Option<RouteMatch> {
        self.routes.iter().find_map(|route| {
            let (params, key) = route.match_topic(topic)?;
            Some(RouteMatch {
                route: Arc::clone(route),
                params,
                key,
            })
        })
    }

    /// Every route whose pattern matches `topic`, in matching order; the first is the one
    /// [`route_for`](Self::route_for) picks, the rest are shadowed for this topic.
    pub fn matching<'a>(&'a self, topic: &'a str) -> impl Iterator<Item = &'a Arc<CompiledRoute>> + 'a {
        self.routes
            .iter()
            .filter(move |route| route.pattern.is_match(topic))
    }

    /// The routes in matching order.
    pub fn routes(&self) -> &[Arc<CompiledRoute>] {
        &self.routes
    }

    /// The route named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<CompiledRoute>> {
        self.routes.iter().find(|r| r.name() == name)
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// True when there are no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

fn matching_order(a: &CompiledRoute, b: &CompiledRoute) -> std::cmp::Ordering {
    (a.priority(), a.name()).cmp(&(b.priority(), b.name()))
}

/// The first name that two routes share, if any.
fn find_duplicate(routes: &[Arc<CompiledRoute>]) -> Option<&str> {
    let mut names: Vec<&str> = routes.iter().map(|r| r.name()).collect();
    names.sort_unstable();
    names.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

impl fmt::Display for RouteMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteMode::Ordered => f.write_str("ordered"),
            RouteMode::Shared { worker_count } => write!(f, "shared({worker_count})"),
        }
    }
}

impl fmt::Display for HandlerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandlerSpec::Log => f.write_str("log"),
            HandlerSpec::Republish { topic_template, qos } => {
                write!(f, "republish({topic_template:?}, qos {qos})")
            }
            HandlerSpec::Journal => f.write_str("journal"),
            HandlerSpec::Custom { name } => write!(f, "custom({name})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, pattern: &str) -> RouteSpec {
        RouteSpec {
            name: name.into(),
            pattern: pattern.into(),
            group: String::new(),
            key_param: None,
            qos: 1,
            mode: RouteMode::Ordered,
            handler: HandlerSpec::Log,
            priority: 0,
            message_id_field: None,
        }
    }

    fn with(mut spec: RouteSpec, edit: impl FnOnce(&mut RouteSpec)) -> RouteSpec {
        edit(&mut spec);
        spec
    }

    fn republish(template: &str, qos: u8) -> HandlerSpec {
        HandlerSpec::Republish {
            topic_template: template.into(),
            qos,
        }
    }

    fn err(spec: RouteSpec) -> RouteError {
        spec.validate().unwrap_err()
    }

    #[test]
    fn validates_a_complete_route() {
        let route = with(spec("temp.v1", "sensors/{device_id}/{kind}"), |s| {
            s.group = "plant1/line-2".into();
            s.key_param = Some("device_id".into());
            s.mode = RouteMode::Shared { worker_count: 64 };
            s.handler = republish("processed/{kind}/{device_id}", 0);
            s.priority = -3;
        })
        .validate()
        .unwrap();
        assert_eq!(route.name(), "temp.v1");
        assert_eq!(
            route.pattern().to_string(),
            "plant1/line-2/sensors/{device_id}/{kind}"
        );
        assert_eq!(route.key_param(), Some("device_id"));
        assert_eq!(route.qos(), 1);
        assert_eq!(route.mode(), RouteMode::Shared { worker_count: 64 });
        assert_eq!(route.priority(), -3);
        assert_eq!(
            route.republish_template().unwrap().as_str(),
            "processed/{kind}/{device_id}"
        );
        assert_eq!(route.spec().group, "plant1/line-2");
        let (params, key) = route.match_topic("plant1/line-2/sensors/d9/temp").unwrap();
        assert_eq!(params.get("kind"), Some("temp"));
        assert_eq!(key, "d9");
        assert!(route.match_topic("sensors/d9/temp").is_none());
    }

    #[test]
    fn rejects_bad_names() {
        for name in ["", "a b", "a/b", "é", "a:b", &"x".repeat(MAX_ROUTE_NAME_LEN + 1)] {
            assert_eq!(
                err(spec(name, "a")),
                RouteError::InvalidName { name: name.into() }
            );
        }
        for name in ["a", "A-z_0.9", &"x".repeat(MAX_ROUTE_NAME_LEN)] {
            assert!(spec(name, "a").validate().is_ok(), "{name}");
        }
    }

    #[test]
    fn rejects_bad_patterns_and_groups() {
        assert_eq!(
            err(spec("r", "a//b")),
            RouteError::InvalidPattern {
                pattern: "a//b".into(),
                source: PatternError::EmptyLevel { index: 2 }
            }
        );
        let grouped = |group: &str, pattern: &str| with(spec("r", pattern), |s| s.group = group.into());
        assert_eq!(
            err(grouped("g/", "x")),
            RouteError::InvalidGroup {
                group: "g/".into(),
                source: PatternError::EmptyLevel { index: 2 }
            }
        );
        assert_eq!(
            err(grouped("g", "/x")),
            RouteError::InvalidPattern {
                pattern: "/x".into(),
                source: PatternError::EmptyLevel { index: 1 }
            }
        );
        assert_eq!(
            err(grouped("$SYS", "x")),
            RouteError::InvalidGroup {
                group: "$SYS".into(),
                source: PatternError::SystemTopic { level: "$SYS".into() }
            }
        );
        for (group, level) in [("g/+", "+"), ("#", "#"), ("{t}", "{t}")] {
            assert_eq!(
                err(grouped(group, "x")),
                RouteError::GroupNotLiteral {
                    group: group.into(),
                    level: level.into()
                }
            );
        }
        let deep = vec!["g"; 30].join("/");
        assert_eq!(
            err(grouped(&deep, "a/b/c")),
            RouteError::InvalidPattern {
                pattern: format!("{deep}/a/b/c"),
                source: PatternError::TooManyLevels { levels: 33 }
            }
        );
        // A pattern starting with `$` stays rejected behind a group.
        assert!(matches!(
            err(grouped("g", "$x")),
            RouteError::InvalidPattern {
                source: PatternError::SystemTopic { .. },
                ..
            }
        ));
    }

    #[test]
    fn key_param_must_be_a_named_param() {
        for key in ["id", "", "+", "{device_id}"] {
            assert_eq!(
                err(with(spec("r", "g/{device_id}/+"), |s| s.key_param = Some(key.into()))),
                RouteError::KeyParamNotInPattern {
                    key_param: key.into(),
                    pattern: "g/{device_id}/+".into()
                }
            );
        }
    }

    #[test]
    fn qos_is_0_or_1() {
        assert!(with(spec("r", "a"), |s| s.qos = 0).validate().is_ok());
        assert_eq!(
            err(with(spec("r", "a"), |s| s.qos = 2)),
            RouteError::UnsupportedQos { qos: 2 }
        );
        assert_eq!(
            err(with(spec("r", "a"), |s| s.qos = 3)),
            RouteError::InvalidQos { qos: 3 }
        );
        assert_eq!(
            RouteError::UnsupportedQos { qos: 2 }.to_string(),
            "qos 2 not supported: routes take messages at qos 0 or 1"
        );
    }

    #[test]
    fn shared_worker_count_is_1_to_64() {
        for worker_count in [0, 65, u32::MAX] {
            assert_eq!(
                err(with(spec("r", "a"), |s| s.mode = RouteMode::Shared { worker_count })),
                RouteError::BadWorkerCount { worker_count }
            );
        }
        for worker_count in [1, 64] {
            let shared = with(spec("r", "a"), |s| s.mode = RouteMode::Shared { worker_count });
            assert!(shared.validate().is_ok());
        }
    }

    #[test]
    fn checks_handlers() {
        let handled = |handler: HandlerSpec| with(spec("r", "d/{id}/#"), |s| s.handler = handler);
        assert!(handled(HandlerSpec::Journal).validate().is_ok());
        assert!(handled(HandlerSpec::Custom {
            name: "my.handler-1".into()
        })
        .validate()
        .is_ok());
        assert_eq!(
            err(handled(HandlerSpec::Custom {
                name: "no way".into()
            })),
            RouteError::InvalidHandlerName {
                name: "no way".into()
            }
        );
        assert!(handled(republish("out/{id}", 1)).validate().is_ok());
        assert_eq!(
            err(handled(republish("out/{device}", 1))),
            RouteError::TemplateParamNotInPattern {
                param: "device".into(),
                pattern: "d/{id}/#".into()
            }
        );
        assert_eq!(
            err(handled(republish("out/+", 1))),
            RouteError::InvalidTemplate {
                template: "out/+".into(),
                source: TemplateError::InvalidTopic(super::super::TopicError::Wildcard {
                    wildcard: '+',
                    position: 4
                })
            }
        );
        assert_eq!(
            err(handled(republish("out/{id}", 2))),
            RouteError::UnsupportedRepublishQos { qos: 2 }
        );
        assert_eq!(
            err(handled(republish("out/{id}", 7))),
            RouteError::InvalidRepublishQos { qos: 7 }
        );
    }

    #[test]
    fn message_id_field_is_a_json_pointer() {
        let field = |f: &str| with(spec("r", "d/{id}"), |s| s.message_id_field = Some(f.into()));
        let route = field("/meta/id").validate().unwrap();
        assert_eq!(route.message_id_field(), Some("/meta/id"));
        assert_eq!(
            route.message_id_of(br#"{"meta":{"id":"m-7"}}"#),
            Ok(Some("m-7".into()))
        );
        assert_eq!(route.message_id_of(b"not json"), Err(MissingMessageId::NotJson));
        let plain = spec("r", "d/{id}").validate().unwrap();
        assert_eq!(plain.message_id_field(), None);
        assert_eq!(plain.message_id_of(br#"{"id":"x"}"#), Ok(None));
        for bad in ["", "id", "/a~2"] {
            assert!(
                matches!(err(field(bad)), RouteError::InvalidMessageIdField { field, .. } if field == bad),
                "{bad:?}"
            );
        }
        assert_eq!(
            err(field("id")).to_string(),
            "message_id_field \"id\" is invalid: a JSON pointer must start with '/' (e.g. \"/id\")"
        );
        // In the serde form only when set; older forms load with none.
        let json = serde_json::to_string(&field("/id")).unwrap();
        assert!(
            json.ends_with(r#","priority":0,"message_id_field":"/id"}"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<RouteSpec>(&json).unwrap(), field("/id"));
    }

    #[test]
    fn table_orders_by_priority_then_name() {
        let table = RouteTable::build([
            with(spec("b", "x/#"), |s| s.priority = 1),
            with(spec("a", "x/y"), |s| s.priority = 1),
            with(spec("z", "x/+"), |s| s.priority = -1),
            spec("B", "#"),
            spec("a0", "#"),
        ])
        .unwrap();
        let names: Vec<_> = table.routes().iter().map(|r| r.name()).collect();
        assert_eq!(names, ["z", "B", "a0", "a", "b"]);
        assert_eq!(table.route_for("x/y").unwrap().route().name(), "z");
        assert_eq!(table.route_for("x/y/z").unwrap().route().name(), "B");
        let all: Vec<_> = table.matching("x/y").map(|r| r.name()).collect();
        assert_eq!(all, ["z", "B", "a0", "a", "b"]);
        assert_eq!(table.get("a").unwrap().pattern().to_string(), "x/y");
        assert!(table.get("nope").is_none());
        assert_eq!(table.len(), 5);
    }

    #[test]
    fn table_rejects_duplicates_and_invalid_specs() {
        assert_eq!(
            RouteTable::build([spec("a", "x"), with(spec("a", "y"), |s| s.priority = 9)]),
            Err(RouteError::DuplicateName { name: "a".into() })
        );
        assert_eq!(
            RouteTable::build([spec("a", "x"), spec("b", "x+")]),
            Err(RouteError::InvalidPattern {
                pattern: "x+".into(),
                source: PatternError::WildcardInLevel {
                    index: 1,
                    level: "x+".into()
                }
            })
        );
    }

    #[test]
    fn route_for_gives_params_and_key() {
        let table = RouteTable::build([
            with(spec("keyed", "s/{site}/{dev}/#"), |s| {
                s.key_param = Some("dev".into())
            }),
            spec("whole", "t/+"),
            with(spec("rep", "r/{x}"), |s| s.handler = republish("copy/{x}/v", 0)),
        ])
        .unwrap();
        let found = table.route_for("s/north/d7/temp/raw").unwrap();
        assert_eq!(found.route().name(), "keyed");
        assert_eq!(found.key(), "d7");
        assert_eq!(found.params().get("site"), Some("north"));
        assert_eq!(found.republish_topic(), None);
        let found = table.route_for("s/north/d7").unwrap();
        assert_eq!(found.key(), "d7");
        let found = table.route_for("s/north/").unwrap();
        assert_eq!(found.key(), "");
        let found = table.route_for("r/abc").unwrap();
        assert_eq!(found.key(), "r/abc");
        assert_eq!(found.republish_topic().as_deref(), Some("copy/abc/v"));
        assert_eq!(table.route_for("t/a").unwrap().key(), "t/a");
        assert!(table.route_for("t/a/b").is_none());
        assert!(table.route_for("$SYS/x").is_none());
        assert!(RouteTable::empty().route_for("a").is_none());
    }

    #[test]
    fn upsert_and_remove_keep_matching_order() {
        let mut table = RouteTable::build([spec("a", "x"), spec("c", "x")]).unwrap();
        assert_eq!(table.upsert(spec("b", "x")).unwrap(), None);
        let old = table.upsert(with(spec("a", "x/#"), |s| s.priority = 5)).unwrap();
        assert_eq!(old.unwrap().pattern().to_string(), "x");
        let names: Vec<_> = table.routes().iter().map(|r| r.name()).collect();
        assert_eq!(names, ["b", "c", "a"]);
        assert!(table.upsert(spec("b", "")).is_err());
        assert_eq!(table.get("b").unwrap().pattern().to_string(), "x");
        assert_eq!(table.remove("c").unwrap().name(), "c");
        assert!(table.remove("c").is_none());
        let rebuilt = RouteTable::build(table.routes().iter().map(|r| r.spec().clone())).unwrap();
        assert_eq!(rebuilt, table);
    }

    #[test]
    fn spec_serde_form_is_stable() {
        let route = with(spec("r", "a/{id}"), |s| {
            s.key_param = Some("id".into());
            s.mode = RouteMode::Shared { worker_count: 2 };
            s.handler = republish("b/{id}", 1);
        });
        let json = serde_json::to_string(&route).unwrap();
        assert_eq!(
            json,
            r#"{"name":"r","pattern":"a/{id}","group":"","key_param":"id","qos":1,"mode":{"kind":"shared","worker_count":2},"handler":{"kind":"republish","topic_template":"b/{id}","qos":1},"priority":0}"#
        );
        assert_eq!(serde_json::from_str::<RouteSpec>(&json).unwrap(), route);
        let minimal: RouteSpec = serde_json::from_str(
            r#"{"name":"m","pattern":"x","mode":{"kind":"ordered"},"handler":{"kind":"journal"}}"#,
        )
        .unwrap();
        assert_eq!(
            minimal,
            with(spec("m", "x"), |s| {
                s.qos = 0;
                s.handler = HandlerSpec::Journal;
            })
        );
    }
}
