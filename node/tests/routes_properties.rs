//! Property tests for topic patterns and the route table.
//!
//! - A topic generated to fit a pattern matches it and yields the generated parameter values.
//! - A pattern and its MQTT filter match exactly the same topics, judged against a small
//!   reference MQTT filter matcher written here from the specification (§4.7).
//! - Patterns print and parse back to themselves; parsing arbitrary text never panics and an
//!   accepted text is already canonical.
//! - The route table does not depend on the order of its specs and picks the first route in
//!   matching order.

use proptest::prelude::*;
use routemq_node::routes::{
    validate_topic, HandlerSpec, Level, Pattern, RouteMode, RouteSpec, RouteTable, MAX_TOPIC_LEN,
};

/// One level of a generated pattern; parameter names are made unique when the pattern is built.
#[derive(Clone, Debug)]
enum Gen {
    Literal(String),
    Single,
    Param(String),
}

/// Literal levels: often from a tiny alphabet so that random topics hit them, sometimes wider;
/// never starting with `$`, which a pattern may not.
fn literal() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(str::to_owned),
        1 => "[a-z0-9é _.-][a-z0-9é _.$-]{0,3}",
    ]
}

fn gen_level() -> impl Strategy<Value = Gen> {
    prop_oneof![
        2 => literal().prop_map(Gen::Literal),
        1 => Just(Gen::Single),
        1 => "[a-z_][a-z0-9_]{0,5}".prop_map(Gen::Param),
    ]
}

/// A pattern's text and its parameter names: 1 to 8 levels, optionally ending in `#`.
fn pattern_text() -> impl Strategy<Value = (String, Vec<String>)> {
    (prop::collection::vec(gen_level(), 0..8), any::<bool>())
        .prop_filter("a pattern has a level", |(levels, multi)| {
            !levels.is_empty() || *multi
        })
        .prop_map(|(levels, multi)| {
            let mut names = Vec::new();
            let mut texts: Vec<String> = levels
                .iter()
                .enumerate()
                .map(|(i, level)| match level {
                    Gen::Literal(text) => text.clone(),
                    Gen::Single => "+".to_owned(),
                    Gen::Param(base) => {
                        let name = format!("{base}{i}");
                        names.push(name.clone());
                        format!("{{{name}}}")
                    }
                })
                .collect();
            if multi {
                texts.push("#".to_owned());
            }
            (texts.join("/"), names)
        })
}

fn pattern() -> impl Strategy<Value = Pattern> {
    pattern_text().prop_map(|(text, _)| Pattern::parse(&text).expect("generated patterns are valid"))
}

/// A topic level value: may be empty, may contain `$` (but see `fitting_topic`).
fn value() -> impl Strategy<Value = String> {
    "[a-c0-9é $._-]{0,4}"
}

/// A topic built to fit `pattern`, with the value each parameter was given.
fn fitting_topic(pattern: Pattern) -> impl Strategy<Value = (Pattern, String, Vec<(String, String)>)> {
    let n = pattern.levels().len();
    (
        prop::collection::vec(value(), n),
        prop::collection::vec(value(), 0..4),
    )
        .prop_map(move |(values, tail)| {
            let mut levels = Vec::new();
            let mut params = Vec::new();
            for (level, value) in pattern.levels().iter().zip(values) {
                match level {
                    Level::Literal(text) => levels.push(text.clone()),
                    Level::Single => levels.push(value),
                    Level::Param(name) => {
                        params.push((name.clone(), value.clone()));
                        levels.push(value);
                    }
                    Level::Multi => levels.extend(tail.iter().cloned()),
                }
            }
            // MQTT: a topic starting with `$` never matches a leading wildcard (and a literal
            // first level never starts with `$`), so keep generated topics clear of it.
            if let Some(first) = levels.first_mut().filter(|level| level.starts_with('$')) {
                first.replace_range(..1, "x");
                if let (Some(Level::Param(_)), Some(param)) = (pattern.levels().first(), params.first_mut()) {
                    param.1 = first.clone();
                }
            }
            (pattern.clone(), levels.join("/"), params)
        })
}

/// Topics from a small alphabet, with empty levels and `$`, so that they often match.
fn random_topic() -> impl Strategy<Value = String> {
    let level = prop_oneof![
        4 => prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(str::to_owned),
        1 => Just(String::new()),
        1 => Just("$x".to_owned()),
        1 => value(),
    ];
    prop::collection::vec(level, 1..8).prop_map(|levels| levels.join("/"))
}

/// MQTT topic filter matching, written straight from MQTT 3.1.1 §4.7 as an independent oracle.
fn reference_filter_match(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let filter: Vec<&str> = filter.split('/').collect();
    let topic: Vec<&str> = topic.split('/').collect();
    let mut i = 0;
    loop {
        match (filter.get(i), topic.get(i)) {
            (Some(&"#"), _) => return true,
            (Some(&"+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
        i += 1;
    }
}

fn spec(name: String, pattern: String, priority: i32) -> RouteSpec {
    RouteSpec {
        name,
        pattern,
        group: String::new(),
        key_param: None,
        qos: 1,
        mode: RouteMode::Shared { worker_count: 1 },
        handler: HandlerSpec::Log,
        priority,
        message_id_field: None,
    }
}

proptest! {
    // Integration tests have no source file proptest can keep regressions next to; a failure
    // prints its minimal input instead.
    #![proptest_config(ProptestConfig {
        cases: 1024,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_fitting_topic_matches_with_its_values(
        (pattern, topic, expected) in pattern().prop_flat_map(fitting_topic)
    ) {
        let params = pattern.matches(&topic);
        prop_assert!(params.is_some(), "{pattern} did not match {topic:?}");
        prop_assert_eq!(params.map(|p| p.into_vec()), Some(expected));
        prop_assert!(reference_filter_match(&pattern.mqtt_filter(), &topic));
    }

    #[test]
    fn the_mqtt_filter_matches_the_same_topics(pattern in pattern(), topic in random_topic()) {
        let ours = pattern.is_match(&topic);
        prop_assert_eq!(ours, pattern.matches(&topic).is_some());
        prop_assert_eq!(
            ours,
            reference_filter_match(&pattern.mqtt_filter(), &topic),
            "pattern {} (filter {}) on {:?}", pattern, pattern.mqtt_filter(), topic
        );
    }

    #[test]
    fn patterns_print_and_parse_back((text, names) in pattern_text()) {
        let pattern = Pattern::parse(&text).expect("generated patterns are valid");
        prop_assert_eq!(pattern.to_string(), text);
        prop_assert_eq!(Pattern::parse(&pattern.to_string()), Ok(pattern.clone()));
        prop_assert_eq!(pattern.params().collect::<Vec<_>>(), names);
        // The filter is itself a valid pattern without parameters, matching as MQTT says.
        let filter = Pattern::parse(&pattern.mqtt_filter()).expect("a filter is a valid pattern");
        prop_assert_eq!(filter.params().count(), 0);
    }

    #[test]
    fn parsing_arbitrary_text_never_panics(text in "[ab+#{}/$\0x_]{0,12}") {
        if let Ok(pattern) = Pattern::parse(&text) {
            prop_assert_eq!(pattern.to_string(), text.clone());
        }
        let _ = validate_topic(&text, MAX_TOPIC_LEN);
    }

    #[test]
    fn the_table_ignores_spec_order_and_first_match_wins(
        (specs, shuffled) in prop::collection::vec((pattern_text(), -2i32..3), 1..8).prop_flat_map(|routes| {
            let specs: Vec<RouteSpec> = routes
                .into_iter()
                .enumerate()
                .map(|(i, ((text, _), priority))| spec(format!("r{i}"), text, priority))
                .collect();
            (Just(specs.clone()), Just(specs).prop_shuffle())
        }),
        topics in prop::collection::vec(random_topic(), 1..8),
    ) {
        let table = RouteTable::build(specs).expect("valid specs");
        prop_assert_eq!(&RouteTable::build(shuffled).expect("valid specs"), &table);

        let order: Vec<(i32, &str)> = table.routes().iter().map(|r| (r.priority(), r.name())).collect();
        prop_assert!(order.windows(2).all(|w| w[0] < w[1]), "not in matching order: {order:?}");

        for topic in &topics {
            let first = table.routes().iter().find(|r| r.pattern().is_match(topic));
            let found = table.route_for(topic);
            prop_assert_eq!(found.as_ref().map(|m| m.route().name()), first.map(|r| r.name()));
            if let Some(found) = found {
                prop_assert_eq!(found.key(), topic.as_str());
            }
        }
    }
}

/// The generators are useful only if random topics both match and miss random patterns often
/// enough; this keeps them honest.
#[test]
fn random_topics_both_match_and_miss() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let strategy = (pattern(), random_topic());
    let samples = 2000;
    let mut matched = 0;
    for _ in 0..samples {
        let (pattern, topic) = strategy.new_tree(&mut runner).expect("strategy").current();
        if pattern.is_match(&topic) {
            matched += 1;
        }
    }
    assert!(
        (samples / 20..samples * 19 / 20).contains(&matched),
        "{matched} of {samples} random topics matched"
    );
}
