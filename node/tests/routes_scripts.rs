//! Goldenscript scenarios for routes: patterns, topic validation, route validation and the
//! route table's matching order. Every file in `tests/testscripts/routes/` is one behaviour;
//! regenerate the expected output with `UPDATE_GOLDENFILES=1 cargo test --test routes_scripts`
//! and review it.
//!
//! Commands (quote anything with `+`, `#`, `{`, `$` or spaces; `#` starts a comment):
//!
//! - `pattern PATTERN [TOPIC...]`: parse a pattern on its own, print its canonical form and MQTT
//!   filter, then for each topic its parameters or `no match`.
//! - `topic TOPIC... [max=N]`: validate published topic names (default limit: the MQTT one).
//! - `route NAME PATTERN [group=G] [key=PARAM] [qos=Q] [shared=WORKERS] [priority=P]
//!   [handler=log|journal] [republish=TEMPLATE] [republish_qos=Q] [custom=HANDLER]`: add a route
//!   (ordered unless `shared` is given; handler `log` unless told) and rebuild the table from
//!   all routes; a rejected route fails the command and leaves the table as it was.
//! - `remove NAME...`: remove routes and rebuild.
//! - `reset`: start over with no routes.
//! - `table`: print the routes in matching order.
//! - `match TOPIC...`: print the route each topic goes to, with its params and key (and the
//!   republish topic), or `no route`.
//! - `matching TOPIC...`: print every route that matches each topic, in matching order.
//!
//! After every accepted change the runner checks what must hold for any table: building from
//! the specs in reverse order gives the same table, and every pattern parses back from its
//! text. After every `match` it checks that `route_for` agrees with the first of `matching`.

use std::error::Error;
use std::fmt::Write as _;
use std::path::Path;

use goldenscript::{Command, Runner};
use routemq_node::routes::{
    validate_topic, HandlerSpec, Params, Pattern, RouteMode, RouteSpec, RouteTable, MAX_TOPIC_LEN,
};

#[derive(Default)]
struct RoutesRunner {
    /// Specs in the order they were added, so a duplicate reaches `RouteTable::build`.
    specs: Vec<RouteSpec>,
    table: RouteTable,
}

impl RoutesRunner {
    fn apply(&mut self, specs: Vec<RouteSpec>) -> Result<(), Box<dyn Error>> {
        let table = RouteTable::build(specs.iter().cloned())?;
        check_invariants(&table, &specs)?;
        self.specs = specs;
        self.table = table;
        Ok(())
    }
}

fn check_invariants(table: &RouteTable, specs: &[RouteSpec]) -> Result<(), Box<dyn Error>> {
    if RouteTable::build(specs.iter().rev().cloned())? != *table {
        return Err("spec order changed the table".into());
    }
    for route in table.routes() {
        if Pattern::parse(&route.pattern().to_string())? != *route.pattern() {
            return Err(format!("pattern of {} did not round-trip", route.name()).into());
        }
    }
    Ok(())
}

fn format_params(params: &Params) -> String {
    let pairs: Vec<String> = params.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
    format!("{{{}}}", pairs.join(", "))
}

impl Runner for RoutesRunner {
    fn run(&mut self, command: &Command) -> Result<String, Box<dyn Error>> {
        let mut output = String::new();
        match command.name.as_str() {
            "pattern" => {
                let mut args = command.consume_args();
                let text = &args.next_pos().ok_or("pattern needs a pattern")?.value;
                let topics = args.rest_pos();
                args.reject_rest()?;
                let pattern = Pattern::parse(text)?;
                writeln!(output, "{pattern} (mqtt filter {})", pattern.mqtt_filter())?;
                for topic in topics {
                    match pattern.matches(&topic.value) {
                        Some(params) => writeln!(output, "{:?} → {}", topic.value, format_params(&params))?,
                        None => writeln!(output, "{:?} → no match", topic.value)?,
                    }
                }
            }

            "topic" => {
                let mut args = command.consume_args();
                let max = args.lookup_parse("max")?.unwrap_or(MAX_TOPIC_LEN);
                let topics = args.rest_pos();
                args.reject_rest()?;
                for topic in topics {
                    match validate_topic(&topic.value, max) {
                        Ok(()) => writeln!(output, "{:?} → ok", topic.value)?,
                        Err(error) => writeln!(output, "{:?} → {error}", topic.value)?,
                    }
                }
            }

            "route" => {
                let mut args = command.consume_args();
                let name = args.next_pos().ok_or("route needs a name")?.value.clone();
                let pattern = args.next_pos().ok_or("route needs a pattern")?.value.clone();
                let group = args.lookup_parse("group")?.unwrap_or_default();
                let key_param = args.lookup_parse("key")?;
                let qos = args.lookup_parse("qos")?.unwrap_or(1);
                let mode = match args.lookup_parse("shared")? {
                    Some(worker_count) => RouteMode::Shared { worker_count },
                    None => RouteMode::Ordered,
                };
                let priority = args.lookup_parse("priority")?.unwrap_or(0);
                let republish: Option<String> = args.lookup_parse("republish")?;
                let republish_qos = args.lookup_parse("republish_qos")?.unwrap_or(0);
                let custom: Option<String> = args.lookup_parse("custom")?;
                let named: Option<String> = args.lookup_parse("handler")?;
                args.reject_rest()?;
                let handler = match (republish, custom, named.as_deref()) {
                    (Some(topic_template), None, None) => HandlerSpec::Republish {
                        topic_template,
                        qos: republish_qos,
                    },
                    (None, Some(name), None) => HandlerSpec::Custom { name },
                    (None, None, None | Some("log")) => HandlerSpec::Log,
                    (None, None, Some("journal")) => HandlerSpec::Journal,
                    _ => return Err("give one of handler=log|journal, republish=, custom=".into()),
                };
                let mut specs = self.specs.clone();
                specs.push(RouteSpec {
                    name,
                    pattern,
                    group,
                    key_param,
                    qos,
                    mode,
                    handler,
                    priority,
                    message_id_field: None,
                });
                self.apply(specs)?;
            }

            "remove" => {
                let mut args = command.consume_args();
                let names = args.rest_pos();
                args.reject_rest()?;
                let mut specs = self.specs.clone();
                for arg in names {
                    let before = specs.len();
                    specs.retain(|spec| spec.name != arg.value);
                    if specs.len() == before {
                        return Err(format!("no route named {}", arg.value).into());
                    }
                }
                self.apply(specs)?;
            }

            "reset" => {
                command.consume_args().reject_rest()?;
                *self = Self::default();
            }

            "table" => {
                command.consume_args().reject_rest()?;
                if self.table.is_empty() {
                    writeln!(output, "no routes")?;
                }
                for (i, route) in self.table.routes().iter().enumerate() {
                    let key = route
                        .key_param()
                        .map_or("topic".to_owned(), |k| format!("{{{k}}}"));
                    writeln!(
                        output,
                        "{}. {} [priority {}]: {} (filter {}) key {key}, {}, qos {}, {}",
                        i + 1,
                        route.name(),
                        route.priority(),
                        route.pattern(),
                        route.pattern().mqtt_filter(),
                        route.mode(),
                        route.qos(),
                        route.handler(),
                    )?;
                }
            }

            "match" => {
                let mut args = command.consume_args();
                let topics = args.rest_pos();
                args.reject_rest()?;
                for topic in topics {
                    let found = self.table.route_for(&topic.value);
                    let first = self.table.matching(&topic.value).next();
                    if found.as_ref().map(|m| m.route()) != first {
                        return Err(format!("route_for and matching disagree on {:?}", topic.value).into());
                    }
                    let Some(found) = found else {
                        writeln!(output, "{:?} → no route", topic.value)?;
                        continue;
                    };
                    write!(
                        output,
                        "{:?} → {} key={:?} params {}",
                        topic.value,
                        found.route().name(),
                        found.key(),
                        format_params(found.params())
                    )?;
                    if let Some(target) = found.republish_topic() {
                        write!(output, " republish to {target:?}")?;
                    }
                    writeln!(output)?;
                }
            }

            "matching" => {
                let mut args = command.consume_args();
                let topics = args.rest_pos();
                args.reject_rest()?;
                for topic in topics {
                    let names: Vec<&str> = self.table.matching(&topic.value).map(|r| r.name()).collect();
                    let names = if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    };
                    writeln!(output, "{:?} → {names}", topic.value)?;
                }
            }

            name => return Err(format!("unknown command {name}").into()),
        }
        Ok(output)
    }
}

/// Runs every script in the directory, each with a fresh runner, and reports all that fail.
#[test]
fn routes_scripts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testscripts/routes");
    routemq_testkit::golden::run_dir(&dir, RoutesRunner::default);
}
