//! Routes as people write them: handler and mode text of the command line, routes files
//! (TOML `[[route]]` tables), and what a route does with a topic (its effective pattern,
//! whether a topic matches it, and the key of a topic).
//!
//! Nothing here validates a route the way the node does (names, parameters, QoS ranges): the
//! node is the authority and answers `INVALID_ARGUMENT` with the reason. This module only
//! turns text into the protobuf [`Route`] and rejects what cannot be represented.
//!
//! ## Routes file
//!
//! ```toml
//! [[route]]
//! name = "telemetry"
//! pattern = "sensors/{device_id}/data"
//! key_param = "device_id"        # optional; default: the whole topic is the key
//! qos = 1                        # optional, default 0
//! mode = "ordered"               # or { shared = { worker_count = 4 } }; default "ordered"
//! handler = "journal"            # "log" | "journal" | { republish = { topic_template = "out/{device_id}", qos = 1 } }
//!                                # | { custom = { name = "billing" } }; default "log"
//! group = "plant1"               # optional route-group prefix
//! priority = 0                   # optional, lower matches first
//! message_id_field = "/id"       # optional JSON pointer to the message id in JSON payloads
//! ```
//!
//! The node's own form (`mode = { kind = "shared", worker_count = 4 }`,
//! `handler = { kind = "republish", topic_template = "...", qos = 1 }`) is accepted as well,
//! so one file serves both `routemq start --routes` and `routemq-ctl routes apply`.

use routemq_proto::v1::{handler, Handler, JournalHandler, LogHandler, RepublishHandler, Route, RouteMode};
use toml::{Table, Value};

/// A route's handler from command-line text: `log`, `journal`, `republish:TOPIC_TEMPLATE`
/// (published at `republish_qos`) or `custom:NAME`.
pub fn parse_handler(text: &str, republish_qos: u32) -> Result<Handler, String> {
    let kind = match text.split_once(':') {
        None => match text {
            "log" => handler::Kind::Log(LogHandler {}),
            "journal" => handler::Kind::Journal(JournalHandler {}),
            "republish" => return Err("republish needs a topic template: republish:TOPIC_TEMPLATE".into()),
            "custom" => return Err("custom needs a handler name: custom:NAME".into()),
            other => return Err(unknown_handler(other)),
        },
        Some(("republish", topic)) if !topic.is_empty() => handler::Kind::Republish(RepublishHandler {
            topic: topic.to_string(),
            qos: republish_qos,
        }),
        Some(("custom", name)) if !name.is_empty() => handler::Kind::Custom(name.to_string()),
        Some(("republish", _)) => {
            return Err("republish needs a topic template: republish:TOPIC_TEMPLATE".into())
        }
        Some(("custom", _)) => return Err("custom needs a handler name: custom:NAME".into()),
        Some(_) => return Err(unknown_handler(text)),
    };
    Ok(Handler { kind: Some(kind) })
}

fn unknown_handler(text: &str) -> String {
    format!("unknown handler {text:?} (use log, journal, republish:TOPIC_TEMPLATE or custom:NAME)")
}

/// A route mode from command-line text: `ordered` or `shared`.
pub fn parse_mode(text: &str) -> Result<RouteMode, String> {
    match text {
        "ordered" => Ok(RouteMode::Ordered),
        "shared" => Ok(RouteMode::Shared),
        other => Err(format!("unknown mode {other:?} (use ordered or shared)")),
    }
}

/// Lowercase name of a route mode value ("ordered", "shared", or "unknown").
pub fn mode_name(value: i32) -> &'static str {
    match RouteMode::try_from(value) {
        Ok(RouteMode::Ordered) => "ordered",
        Ok(RouteMode::Shared) => "shared",
        Err(_) => "unknown",
    }
}

/// A handler in one short line: `log`, `journal`, `republish:TOPIC (qos N)`, `custom:NAME`;
/// `log` when absent (the node's default).
pub fn handler_label(handler: Option<&Handler>) -> String {
    match handler.and_then(|h| h.kind.as_ref()) {
        None | Some(handler::Kind::Log(_)) => "log".into(),
        Some(handler::Kind::Journal(_)) => "journal".into(),
        Some(handler::Kind::Republish(r)) => format!("republish:{} (qos {})", r.topic, r.qos),
        Some(handler::Kind::Custom(name)) => format!("custom:{name}"),
    }
}

/// True when the route's handler is the journal.
pub fn is_journal(route: &Route) -> bool {
    matches!(
        route.handler.as_ref().and_then(|h| h.kind.as_ref()),
        Some(handler::Kind::Journal(_))
    )
}

/// The pattern topics are matched against: `group/pattern`, or `pattern` without a group.
pub fn effective_pattern(route: &Route) -> String {
    let group = route.group.trim_end_matches('/');
    if group.is_empty() {
        route.pattern.clone()
    } else {
        format!("{group}/{}", route.pattern)
    }
}

fn is_param(level: &str) -> bool {
    level.len() > 2 && level.starts_with('{') && level.ends_with('}')
}

/// Whether `topic` matches `pattern` (`{param}` and `+` match one level, a final `#` any
/// number of levels, including none). A topic starting with `$` never matches a wildcard
/// first level, as in MQTT.
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('/').collect();
    let topic: Vec<&str> = topic.split('/').collect();
    for (i, level) in pattern.iter().enumerate() {
        if *level == "#" {
            return i + 1 == pattern.len() && !(i == 0 && topic[0].starts_with('$'));
        }
        let Some(got) = topic.get(i) else {
            return false;
        };
        let wildcard = *level == "+" || is_param(level);
        if wildcard {
            if i == 0 && got.starts_with('$') {
                return false;
            }
        } else if level != got {
            return false;
        }
    }
    pattern.len() == topic.len()
}

/// The ordering (and journal) key the route gives `topic`: the value of its key parameter,
/// or the whole topic when it has none. `None` when the topic does not match the route or the
/// key parameter is not a level of its pattern.
pub fn key_of(route: &Route, topic: &str) -> Option<String> {
    let pattern = effective_pattern(route);
    if !topic_matches(&pattern, topic) {
        return None;
    }
    if route.key_param.is_empty() {
        return Some(topic.to_string());
    }
    let wanted = format!("{{{}}}", route.key_param);
    let index = pattern.split('/').position(|level| level == wanted)?;
    topic.split('/').nth(index).map(str::to_string)
}

/// True when two routes have the same definition (everything but the server-set version).
pub fn same_definition(a: &Route, b: &Route) -> bool {
    let normalise = |route: &Route| {
        let mut route = route.clone();
        route.version = 0;
        if route.handler.as_ref().is_none_or(|h| h.kind.is_none()) {
            route.handler = Some(Handler {
                kind: Some(handler::Kind::Log(LogHandler {})),
            });
        }
        if route.mode == RouteMode::Ordered as i32 {
            route.worker_count = 0;
        }
        route
    };
    normalise(a) == normalise(b)
}

/// Why a routes file was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutesFileError {
    /// Not valid TOML.
    #[error("not valid TOML: {0}")]
    Toml(String),
    /// Valid TOML, but not a routes file.
    #[error("{0}")]
    Shape(String),
    /// One route is malformed.
    #[error("route #{index}{}: {reason}", name.as_ref().map(|n| format!(" ({n:?})")).unwrap_or_default())]
    Route {
        /// 1-based position in the file.
        index: usize,
        /// Its name, when it has one.
        name: Option<String>,
        /// What is wrong.
        reason: String,
    },
}

/// Parses a routes file: `[[route]]` tables (see the module docs). Unknown keys are errors,
/// so a typo does not silently fall back to a default. Two routes with one name are an error.
pub fn parse_routes_file(text: &str) -> Result<Vec<Route>, RoutesFileError> {
    let table: Table = text
        .parse()
        .map_err(|e: toml::de::Error| RoutesFileError::Toml(one_line(&e.to_string())))?;
    for key in table.keys() {
        if key != "route" {
            return Err(RoutesFileError::Shape(format!(
                "unknown top-level key {key:?}: a routes file has only [[route]] tables"
            )));
        }
    }
    let routes = match table.get("route") {
        None => return Ok(Vec::new()),
        Some(Value::Array(routes)) => routes,
        Some(_) => {
            return Err(RoutesFileError::Shape(
                "`route` must be an array of tables: write [[route]]".into(),
            ))
        }
    };
    let mut parsed: Vec<Route> = Vec::with_capacity(routes.len());
    for (i, value) in routes.iter().enumerate() {
        let name = value.get("name").and_then(Value::as_str).map(str::to_string);
        let fail = |reason: String| RoutesFileError::Route {
            index: i + 1,
            name: name.clone(),
            reason,
        };
        let Value::Table(fields) = value else {
            return Err(fail("must be a table".into()));
        };
        let route = route_from_table(fields).map_err(fail)?;
        if parsed.iter().any(|r| r.name == route.name) {
            return Err(fail("a route with this name appears earlier in the file".into()));
        }
        parsed.push(route);
    }
    Ok(parsed)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn route_from_table(fields: &Table) -> Result<Route, String> {
    const KNOWN: [&str; 9] = [
        "name",
        "pattern",
        "key_param",
        "qos",
        "mode",
        "handler",
        "group",
        "priority",
        "message_id_field",
    ];
    if let Some(key) = fields.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(format!("unknown field {key:?} (known: {})", KNOWN.join(", ")));
    }
    let name = required_str(fields, "name")?;
    let pattern = required_str(fields, "pattern")?;
    let key_param = optional_str(fields, "key_param")?.unwrap_or_default();
    let group = optional_str(fields, "group")?.unwrap_or_default();
    let message_id_field = optional_str(fields, "message_id_field")?.unwrap_or_default();
    let qos = optional_int(fields, "qos", 0, u32::MAX as i64)?.unwrap_or(0) as u32;
    let priority = optional_int(fields, "priority", i32::MIN as i64, i32::MAX as i64)?.unwrap_or(0) as i32;
    let (mode, worker_count) = match fields.get("mode") {
        None => (RouteMode::Ordered, 0),
        Some(value) => mode_from_value(value).map_err(|e| format!("mode: {e}"))?,
    };
    let handler = match fields.get("handler") {
        None => Handler {
            kind: Some(handler::Kind::Log(LogHandler {})),
        },
        Some(value) => handler_from_value(value).map_err(|e| format!("handler: {e}"))?,
    };
    Ok(Route {
        name,
        pattern,
        key_param,
        qos,
        mode: mode as i32,
        worker_count,
        handler: Some(handler),
        group,
        version: 0,
        priority,
        message_id_field,
    })
}

fn required_str(fields: &Table, key: &str) -> Result<String, String> {
    optional_str(fields, key)?.ok_or_else(|| format!("missing field {key:?}"))
}

fn optional_str(fields: &Table, key: &str) -> Result<Option<String>, String> {
    match fields.get(key) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(other) => Err(format!("{key}: expected a string, found {}", other.type_str())),
    }
}

fn optional_int(fields: &Table, key: &str, min: i64, max: i64) -> Result<Option<i64>, String> {
    match fields.get(key) {
        None => Ok(None),
        Some(Value::Integer(n)) if (min..=max).contains(n) => Ok(Some(*n)),
        Some(Value::Integer(n)) => Err(format!("{key}: {n} is out of range")),
        Some(other) => Err(format!("{key}: expected an integer, found {}", other.type_str())),
    }
}

const MODE_FORMS: &str = "expected \"ordered\", \"shared\" or { shared = { worker_count = N } }";

fn mode_from_value(value: &Value) -> Result<(RouteMode, u32), String> {
    let worker_count = |fields: &Table| -> Result<u32, String> {
        for key in fields.keys() {
            if key != "worker_count" && key != "kind" {
                return Err(format!("unknown field {key:?} of a shared mode"));
            }
        }
        Ok(optional_int(fields, "worker_count", 1, u32::MAX as i64)?.unwrap_or(1) as u32)
    };
    match value {
        Value::String(text) => match text.as_str() {
            "ordered" => Ok((RouteMode::Ordered, 0)),
            "shared" => Ok((RouteMode::Shared, 1)),
            other => Err(format!("unknown mode {other:?}; {MODE_FORMS}")),
        },
        Value::Table(fields) => {
            // The node's form: { kind = "shared", worker_count = 4 }.
            if let Some(kind) = fields.get("kind") {
                return match kind.as_str() {
                    Some("ordered") if fields.len() == 1 => Ok((RouteMode::Ordered, 0)),
                    Some("ordered") => Err("an ordered mode has no other fields".into()),
                    Some("shared") => Ok((RouteMode::Shared, worker_count(fields)?)),
                    _ => Err(format!("unknown kind {kind}; {MODE_FORMS}")),
                };
            }
            let mut entries = fields.iter();
            match (entries.next(), entries.next()) {
                (Some((name, body)), None) => match (name.as_str(), body) {
                    ("ordered", Value::Table(t)) if t.is_empty() => Ok((RouteMode::Ordered, 0)),
                    ("shared", Value::Table(t)) => Ok((RouteMode::Shared, worker_count(t)?)),
                    _ => Err(MODE_FORMS.into()),
                },
                _ => Err(MODE_FORMS.into()),
            }
        }
        other => Err(format!("found {}; {MODE_FORMS}", other.type_str())),
    }
}

const HANDLER_FORMS: &str = "expected \"log\", \"journal\", { republish = { topic_template = \"...\", qos = 1 } } or { custom = { name = \"...\" } }";

fn handler_from_value(value: &Value) -> Result<Handler, String> {
    let republish = |fields: &Table| -> Result<handler::Kind, String> {
        for key in fields.keys() {
            if !matches!(key.as_str(), "topic_template" | "qos" | "kind") {
                return Err(format!("unknown field {key:?} of a republish handler"));
            }
        }
        Ok(handler::Kind::Republish(RepublishHandler {
            topic: required_str(fields, "topic_template")?,
            qos: optional_int(fields, "qos", 0, u32::MAX as i64)?.unwrap_or(0) as u32,
        }))
    };
    let custom = |fields: &Table| -> Result<handler::Kind, String> {
        for key in fields.keys() {
            if !matches!(key.as_str(), "name" | "kind") {
                return Err(format!("unknown field {key:?} of a custom handler"));
            }
        }
        Ok(handler::Kind::Custom(required_str(fields, "name")?))
    };
    let unit = |name: &str| match name {
        "log" => Some(handler::Kind::Log(LogHandler {})),
        "journal" => Some(handler::Kind::Journal(JournalHandler {})),
        _ => None,
    };
    let kind = match value {
        Value::String(text) => {
            unit(text).ok_or_else(|| format!("unknown handler {text:?}; {HANDLER_FORMS}"))?
        }
        Value::Table(fields) => {
            if let Some(kind) = fields.get("kind") {
                // The node's form: { kind = "republish", topic_template = "...", qos = 1 }.
                match kind.as_str() {
                    Some(name @ ("log" | "journal")) if fields.len() == 1 => {
                        unit(name).expect("unit handler")
                    }
                    Some("log" | "journal") => return Err("log and journal handlers have no fields".into()),
                    Some("republish") => republish(fields)?,
                    Some("custom") => custom(fields)?,
                    _ => return Err(format!("unknown kind {kind}; {HANDLER_FORMS}")),
                }
            } else {
                let mut entries = fields.iter();
                match (entries.next(), entries.next()) {
                    (Some((name, Value::Table(body))), None) => match name.as_str() {
                        "republish" => republish(body)?,
                        "custom" => custom(body)?,
                        "log" | "journal" if body.is_empty() => unit(name).expect("unit handler"),
                        other => return Err(format!("unknown handler {other:?}; {HANDLER_FORMS}")),
                    },
                    _ => return Err(HANDLER_FORMS.into()),
                }
            }
        }
        other => return Err(format!("found {}; {HANDLER_FORMS}", other.type_str())),
    };
    Ok(Handler { kind: Some(kind) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(pattern: &str, group: &str, key_param: &str) -> Route {
        Route {
            name: "r".into(),
            pattern: pattern.into(),
            group: group.into(),
            key_param: key_param.into(),
            ..Route::default()
        }
    }

    #[test]
    fn handlers_from_text() {
        assert_eq!(handler_label(Some(&parse_handler("log", 0).unwrap())), "log");
        assert_eq!(
            handler_label(Some(&parse_handler("journal", 0).unwrap())),
            "journal"
        );
        assert_eq!(
            parse_handler("republish:out/{device_id}/x", 1).unwrap(),
            Handler {
                kind: Some(handler::Kind::Republish(RepublishHandler {
                    topic: "out/{device_id}/x".into(),
                    qos: 1
                }))
            }
        );
        assert_eq!(
            handler_label(Some(&parse_handler("custom:billing", 0).unwrap())),
            "custom:billing"
        );
        assert_eq!(handler_label(None), "log");
        for bad in ["", "republish", "republish:", "custom:", "logs", "webhook:x"] {
            let err = parse_handler(bad, 0).unwrap_err();
            assert!(!err.contains('\n') && !err.is_empty(), "{bad:?}: {err}");
        }
        assert_eq!(parse_mode("shared"), Ok(RouteMode::Shared));
        assert!(parse_mode("fifo").unwrap_err().contains("ordered or shared"));
        assert_eq!(mode_name(1), "shared");
        assert_eq!(mode_name(7), "unknown");
    }

    #[test]
    fn matching_and_keys() {
        assert!(topic_matches("sensors/{id}/data", "sensors/d1/data"));
        assert!(!topic_matches("sensors/{id}/data", "sensors/d1"));
        assert!(!topic_matches("sensors/{id}/data", "sensors/d1/data/x"));
        assert!(topic_matches("sensors/+/#", "sensors/d1"));
        assert!(topic_matches("sensors/+/#", "sensors/d1/a/b"));
        assert!(topic_matches("#", "a/b"));
        assert!(!topic_matches("#", "$SYS/x"));
        assert!(!topic_matches("+/x", "$SYS/x"));
        assert!(!topic_matches("sensors/{id}/data", "sensors/d1/info"));

        let r = route("{device}/data", "plant1/line2", "device");
        assert_eq!(effective_pattern(&r), "plant1/line2/{device}/data");
        assert_eq!(key_of(&r, "plant1/line2/d9/data").as_deref(), Some("d9"));
        assert_eq!(key_of(&r, "d9/data"), None);
        let whole = route("bench/+/data", "", "");
        assert_eq!(key_of(&whole, "bench/k1/data").as_deref(), Some("bench/k1/data"));
        let missing_param = route("bench/+/data", "", "device");
        assert_eq!(key_of(&missing_param, "bench/k1/data"), None);
    }

    #[test]
    fn same_definition_ignores_version_and_defaults() {
        let mut a = route("a/{k}", "", "k");
        let mut b = a.clone();
        b.version = 9;
        b.handler = Some(Handler {
            kind: Some(handler::Kind::Log(LogHandler {})),
        });
        assert!(same_definition(&a, &b));
        a.priority = 1;
        assert!(!same_definition(&a, &b));
    }

    #[test]
    fn routes_file_short_and_node_forms() {
        let text = r#"
            [[route]]
            name = "telemetry"
            pattern = "sensors/{device_id}/data"
            key_param = "device_id"
            qos = 1
            handler = "journal"
            message_id_field = "/id"

            [[route]]
            name = "fanout"
            pattern = "events/#"
            mode = { shared = { worker_count = 4 } }
            handler = { republish = { topic_template = "out/all", qos = 1 } }
            group = "plant1"
            priority = -2

            [[route]]
            name = "billing"
            pattern = "bill/{id}"
            mode = { kind = "shared", worker_count = 2 }
            handler = { kind = "custom", name = "billing" }

            [[route]]
            name = "plain"
            pattern = "plain/+"
            mode = { kind = "ordered" }
            handler = { kind = "log" }
        "#;
        let routes = parse_routes_file(text).unwrap();
        assert_eq!(routes.len(), 4);
        let t = &routes[0];
        assert_eq!(
            (
                t.name.as_str(),
                t.key_param.as_str(),
                t.qos,
                t.mode,
                t.worker_count
            ),
            ("telemetry", "device_id", 1, RouteMode::Ordered as i32, 0)
        );
        assert!(is_journal(t));
        assert_eq!(t.message_id_field, "/id");
        let f = &routes[1];
        assert_eq!(f.message_id_field, "");
        assert_eq!(
            (f.mode, f.worker_count, f.priority),
            (RouteMode::Shared as i32, 4, -2)
        );
        assert_eq!(f.group, "plant1");
        assert_eq!(handler_label(f.handler.as_ref()), "republish:out/all (qos 1)");
        assert_eq!(routes[2].worker_count, 2);
        assert_eq!(handler_label(routes[2].handler.as_ref()), "custom:billing");
        assert_eq!(routes[3].mode, RouteMode::Ordered as i32);
        assert_eq!(handler_label(routes[3].handler.as_ref()), "log");
        assert!(parse_routes_file("").unwrap().is_empty());
    }

    #[test]
    fn routes_file_errors_name_the_route_and_field() {
        for (text, want) in [
            ("[[route]\n", "not valid TOML"),
            ("route = 1", "array of tables"),
            ("[other]\nx = 1", "unknown top-level key \"other\""),
            ("[[route]]\npattern = \"a\"", "route #1: missing field \"name\""),
            (
                "[[route]]\nname = \"a\"\npattern = \"a\"\nqos = \"1\"",
                "route #1 (\"a\"): qos: expected an integer",
            ),
            (
                "[[route]]\nname = \"a\"\npattern = \"a\"\nworkers = 3",
                "unknown field \"workers\"",
            ),
            (
                "[[route]]\nname = \"a\"\npattern = \"a\"\nmessage_id_field = 1",
                "message_id_field: expected a string",
            ),
            (
                "[[route]]\nname = \"a\"\npattern = \"a\"\nmode = \"fifo\"",
                "mode: unknown mode \"fifo\"",
            ),
            (
                "[[route]]\nname = \"a\"\npattern = \"a\"\nmode = { shared = { workers = 2 } }",
                "unknown field \"workers\" of a shared mode",
            ),
            (
                "[[route]]\nname = \"a\"\npattern = \"a\"\nhandler = \"webhook\"",
                "handler: unknown handler \"webhook\"",
            ),
            (
                "[[route]]\nname = \"a\"\npattern = \"a\"\nhandler = { republish = { qos = 1 } }",
                "missing field \"topic_template\"",
            ),
            (
                "[[route]]\nname = \"a\"\npattern = \"a\"\n[[route]]\nname = \"a\"\npattern = \"b\"",
                "route #2 (\"a\"): a route with this name appears earlier",
            ),
        ] {
            let err = parse_routes_file(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err:?} lacks {want:?}");
            assert!(!err.contains('\n'), "{err:?}");
        }
    }
}
