//! Topic patterns: parsing, validation and MQTT matching.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest accepted pattern, in bytes (after the group prefix is applied).
pub const MAX_PATTERN_LEN: usize = 1024;

/// Most levels a pattern may have (after the group prefix is applied).
pub const MAX_PATTERN_LEVELS: usize = 32;

/// Longest accepted parameter name, in bytes.
pub const MAX_PARAM_NAME_LEN: usize = 64;

/// One level of a [`Pattern`], the text between two `/`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Level {
    /// Matches exactly this text. Never empty, never contains `+`, `#`, `{`, `}` or NUL.
    Literal(String),
    /// `+`: matches any one level, including an empty one.
    Single,
    /// `{name}`: matches any one level, like `+`, and captures it under `name`.
    Param(String),
    /// `#`: matches zero or more trailing levels. Only ever the last level.
    Multi,
}

impl Level {
    /// True for `+`, `{name}` and `#`: the levels that never match the first level of a topic
    /// starting with `$`.
    pub fn is_wildcard(&self) -> bool {
        !matches!(self, Level::Literal(_))
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Level::Literal(text) => f.write_str(text),
            Level::Single => f.write_str("+"),
            Level::Param(name) => write!(f, "{{{name}}}"),
            Level::Multi => f.write_str("#"),
        }
    }
}

/// Why a string is not a valid [`Pattern`]. Levels are numbered from 1.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The pattern is the empty string.
    #[error("pattern is empty")]
    Empty,
    /// The pattern is longer than [`MAX_PATTERN_LEN`] bytes.
    #[error("pattern is {len} bytes long; the limit is {MAX_PATTERN_LEN}")]
    TooLong {
        /// Length of the pattern in bytes.
        len: usize,
    },
    /// The pattern has more than [`MAX_PATTERN_LEVELS`] levels.
    #[error("pattern has {levels} levels; the limit is {MAX_PATTERN_LEVELS}")]
    TooManyLevels {
        /// Number of levels in the pattern.
        levels: usize,
    },
    /// The pattern contains a NUL character.
    #[error("pattern contains a NUL character at byte {position}")]
    Nul {
        /// Byte offset of the NUL.
        position: usize,
    },
    /// The pattern starts with `$`: system topics (`$SYS/...`) are the broker's, not routable.
    #[error("pattern starts with '$' in level {level:?}: system topics cannot be routed")]
    SystemTopic {
        /// The first level.
        level: String,
    },
    /// A level is empty (`a//b`, `/a`, `a/`). MQTT allows empty levels in topics, and `+`
    /// matches them, but a pattern must spell out every level.
    #[error("level {index} is empty: patterns may not have a leading, trailing or double '/'")]
    EmptyLevel {
        /// The empty level's number.
        index: usize,
    },
    /// `#` is not the last level.
    #[error("'#' is level {index} of {levels}: it may only be the last level")]
    MultiNotLast {
        /// The `#` level's number.
        index: usize,
        /// Number of levels in the pattern.
        levels: usize,
    },
    /// `+` or `#` shares a level with other characters (`a+`, `#b`, `{+}`).
    #[error(
        "level {index} {level:?} mixes a wildcard with other characters: '+' and '#' must be a whole level"
    )]
    WildcardInLevel {
        /// The level's number.
        index: usize,
        /// The level's text.
        level: String,
    },
    /// A level opens `{` without closing it.
    #[error("level {index} {level:?} has an unclosed '{{'")]
    UnclosedParam {
        /// The level's number.
        index: usize,
        /// The level's text.
        level: String,
    },
    /// A `{`/`}` appears other than as a whole-level `{name}` (`{x}y`, `a{x}`, `x}`, `{a}{b}`).
    #[error("level {index} {level:?} is not a parameter: a parameter is a whole level, as in {{name}}")]
    MalformedParam {
        /// The level's number.
        index: usize,
        /// The level's text.
        level: String,
    },
    /// `{}`: a parameter without a name.
    #[error("level {index} is '{{}}': a parameter needs a name")]
    EmptyParamName {
        /// The level's number.
        index: usize,
    },
    /// A parameter name is not `[A-Za-z_][A-Za-z0-9_]*`.
    #[error("parameter name {name:?} in level {index} is invalid: use a letter or '_', then letters, digits or '_'")]
    InvalidParamName {
        /// The level's number.
        index: usize,
        /// The name between the braces.
        name: String,
    },
    /// A parameter name is longer than [`MAX_PARAM_NAME_LEN`] bytes.
    #[error(
        "parameter name {name:?} in level {index} is {len} bytes long; the limit is {MAX_PARAM_NAME_LEN}"
    )]
    ParamNameTooLong {
        /// The level's number.
        index: usize,
        /// The name between the braces.
        name: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The same parameter name appears twice.
    #[error("parameter {{{name}}} appears more than once (again in level {index})")]
    DuplicateParam {
        /// The level's number of the second occurrence.
        index: usize,
        /// The repeated name.
        name: String,
    },
}

/// A parameter name is `[A-Za-z_][A-Za-z0-9_]*`; the length limit is checked separately.
pub(crate) fn is_valid_param_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks a parameter name; `index` is reported in the error.
fn check_param_name(index: usize, name: &str) -> Result<(), PatternError> {
    if name.is_empty() {
        return Err(PatternError::EmptyParamName { index });
    }
    if !is_valid_param_name(name) {
        return Err(PatternError::InvalidParamName {
            index,
            name: name.to_owned(),
        });
    }
    if name.len() > MAX_PARAM_NAME_LEN {
        return Err(PatternError::ParamNameTooLong {
            index,
            name: name.to_owned(),
            len: name.len(),
        });
    }
    Ok(())
}

/// Parses one non-`#`, non-empty level; `index` is the level's number.
fn parse_level(index: usize, text: &str) -> Result<Level, PatternError> {
    if text == "+" {
        return Ok(Level::Single);
    }
    if text.contains(['+', '#']) {
        return Err(PatternError::WildcardInLevel {
            index,
            level: text.to_owned(),
        });
    }
    if !text.contains(['{', '}']) {
        return Ok(Level::Literal(text.to_owned()));
    }
    let Some(rest) = text.strip_prefix('{') else {
        return Err(PatternError::MalformedParam {
            index,
            level: text.to_owned(),
        });
    };
    let Some(close) = rest.find('}') else {
        return Err(PatternError::UnclosedParam {
            index,
            level: text.to_owned(),
        });
    };
    let name = &rest[..close];
    if close + 1 != rest.len() || name.contains('{') {
        return Err(PatternError::MalformedParam {
            index,
            level: text.to_owned(),
        });
    }
    check_param_name(index, name)?;
    Ok(Level::Param(name.to_owned()))
}

/// A route's topic pattern: MQTT filter syntax plus named single-level parameters.
///
/// Levels are separated by `/`. Each level is a literal, `+` (any one level), `{name}` (any one
/// level, captured as parameter `name`) or `#` (zero or more trailing levels, last level only).
/// Parsing is strict (see [`PatternError`]): no empty levels, no wildcard or brace mixed into a
/// literal, unique parameter names, at most [`MAX_PATTERN_LEN`] bytes and
/// [`MAX_PATTERN_LEVELS`] levels, no NUL, no leading `$`.
///
/// Matching follows MQTT 3.1.1/5 §4.7: `+` and `{name}` match exactly one level, which may be
/// empty (`+/+` matches `/finance`); `#` matches the parent level too (`a/#` matches `a`); a
/// topic starting with `$` never matches a pattern whose first level is a wildcard. Since a
/// pattern may not start with `$` either, topics starting with `$` match no pattern at all.
///
/// `Display` gives the canonical text, and parsing it gives the same pattern back. Serialized
/// as that text.
///
/// ```
/// use routemq_node::routes::Pattern;
///
/// let pattern: Pattern = "sensors/{device_id}/#".parse()?;
/// let params = pattern.matches("sensors/d-7/temp/raw").expect("matches");
/// assert_eq!(params.get("device_id"), Some("d-7"));
/// assert_eq!(pattern.mqtt_filter(), "sensors/+/#");
/// assert!(pattern.matches("sensors").is_none());
/// # Ok::<(), routemq_node::routes::PatternError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Pattern {
    levels: Vec<Level>,
}

impl Pattern {
    /// Parses and validates a pattern.
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        if text.len() > MAX_PATTERN_LEN {
            return Err(PatternError::TooLong { len: text.len() });
        }
        if let Some(position) = text.find('\0') {
            return Err(PatternError::Nul { position });
        }
        if text.starts_with('$') {
            let level = text.split('/').next().unwrap_or_default();
            return Err(PatternError::SystemTopic {
                level: level.to_owned(),
            });
        }
        let count = text.split('/').count();
        if count > MAX_PATTERN_LEVELS {
            return Err(PatternError::TooManyLevels { levels: count });
        }
        let mut levels: Vec<Level> = Vec::with_capacity(count);
        for (i, text) in text.split('/').enumerate() {
            let index = i + 1;
            let level = match text {
                "" => return Err(PatternError::EmptyLevel { index }),
                "#" if index != count => {
                    return Err(PatternError::MultiNotLast { index, levels: count });
                }
                "#" => Level::Multi,
                _ => parse_level(index, text)?,
            };
            if let Level::Param(name) = &level {
                if levels.iter().any(|l| matches!(l, Level::Param(n) if n == name)) {
                    return Err(PatternError::DuplicateParam {
                        index,
                        name: name.clone(),
                    });
                }
            }
            levels.push(level);
        }
        Ok(Pattern { levels })
    }

    /// The levels, first to last (never empty).
    pub fn levels(&self) -> &[Level] {
        &self.levels
    }

    /// The parameter names, in the order they appear.
    pub fn params(&self) -> impl Iterator<Item = &str> + '_ {
        self.levels.iter().filter_map(|level| match level {
            Level::Param(name) => Some(name.as_str()),
            _ => None,
        })
    }

    /// True when `{name}` is one of the pattern's levels.
    pub fn has_param(&self, name: &str) -> bool {
        self.params().any(|n| n == name)
    }

    /// The pattern as an MQTT subscription filter: every `{name}` becomes `+`.
    pub fn mqtt_filter(&self) -> String {
        let levels: Vec<String> = self
            .levels
            .iter()
            .map(|level| match level {
                Level::Param(_) => "+".to_owned(),
                other => other.to_string(),
            })
            .collect();
        levels.join("/")
    }

    /// True when `topic` matches. Does not allocate beyond splitting the topic lazily.
    pub fn is_match(&self, topic: &str) -> bool {
        if topic.starts_with('$') && self.levels.first().is_some_and(Level::is_wildcard) {
            return false;
        }
        let mut topic_levels = topic.split('/');
        for level in &self.levels {
            let topic_level = match level {
                Level::Multi => return true,
                _ => topic_levels.next(),
            };
            match (level, topic_level) {
                (_, None) => return false,
                (Level::Literal(text), Some(t)) if text != t => return false,
                _ => {}
            }
        }
        topic_levels.next().is_none()
    }

    /// Matches `topic` (which should be valid, see [`validate_topic`](super::validate_topic))
    /// and returns the value of every `{name}` in pattern order, or `None` if it does not
    /// match.
    pub fn matches(&self, topic: &str) -> Option<Params> {
        if !self.is_match(topic) {
            return None;
        }
        let pairs = self
            .levels
            .iter()
            .zip(topic.split('/'))
            .filter_map(|(level, value)| match level {
                Level::Param(name) => Some((name.clone(), value.to_owned())),
                _ => None,
            })
            .collect();
        Some(Params { pairs })
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, level) in self.levels.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            write!(f, "{level}")?;
        }
        Ok(())
    }
}

impl FromStr for Pattern {
    type Err = PatternError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Pattern::parse(text)
    }
}

impl TryFrom<String> for Pattern {
    type Error = PatternError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Pattern::parse(&text)
    }
}

impl From<Pattern> for String {
    fn from(pattern: Pattern) -> String {
        pattern.to_string()
    }
}

/// The values a topic gave a pattern's `{name}` levels, in pattern order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// No parameters.
    pub fn new() -> Params {
        Params::default()
    }

    /// The value of parameter `name`, if the pattern has it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value.as_str())
    }

    /// `(name, value)` pairs in pattern order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.pairs.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The `(name, value)` pairs in pattern order.
    pub fn into_vec(self) -> Vec<(String, String)> {
        self.pairs
    }
}

impl<N: Into<String>, V: Into<String>> FromIterator<(N, V)> for Params {
    /// Collects pairs as given; used to render templates with hand-made values.
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        Params {
            pairs: iter.into_iter().map(|(n, v)| (n.into(), v.into())).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Pattern {
        Pattern::parse(text).unwrap()
    }

    fn err(text: &str) -> PatternError {
        Pattern::parse(text).unwrap_err()
    }

    fn params(pairs: &[(&str, &str)]) -> Option<Params> {
        Some(pairs.iter().copied().collect())
    }

    #[test]
    fn parses_every_level_kind() {
        let pattern = p("sensors/{device_id}/+/#");
        assert_eq!(
            pattern.levels(),
            &[
                Level::Literal("sensors".into()),
                Level::Param("device_id".into()),
                Level::Single,
                Level::Multi,
            ]
        );
        assert_eq!(pattern.params().collect::<Vec<_>>(), ["device_id"]);
        assert!(pattern.has_param("device_id"));
        assert!(!pattern.has_param("sensors"));
        assert_eq!(pattern.to_string(), "sensors/{device_id}/+/#");
        assert_eq!(pattern.mqtt_filter(), "sensors/+/+/#");
    }

    #[test]
    fn accepts_what_mqtt_allows_in_literals() {
        for text in ["#", "+", "a b/ü/$x/x$", "a/b-c.d/_/🙂", "{_}", "{a1}/{B_2}"] {
            assert_eq!(p(text).to_string(), text);
        }
    }

    #[test]
    fn rejects_empty_too_long_nul_and_system() {
        assert_eq!(err(""), PatternError::Empty);
        let long = "a".repeat(MAX_PATTERN_LEN + 1);
        assert_eq!(err(&long), PatternError::TooLong { len: 1025 });
        assert!(Pattern::parse(&"a".repeat(MAX_PATTERN_LEN)).is_ok());
        assert_eq!(err("a/b\0c"), PatternError::Nul { position: 3 });
        assert_eq!(
            err("$SYS/broker/#"),
            PatternError::SystemTopic { level: "$SYS".into() }
        );
        assert_eq!(err("$"), PatternError::SystemTopic { level: "$".into() });
    }

    #[test]
    fn limits_the_number_of_levels() {
        let ok = vec!["a"; MAX_PATTERN_LEVELS].join("/");
        assert!(Pattern::parse(&ok).is_ok());
        let over = vec!["a"; MAX_PATTERN_LEVELS + 1].join("/");
        assert_eq!(err(&over), PatternError::TooManyLevels { levels: 33 });
    }

    #[test]
    fn rejects_empty_levels() {
        assert_eq!(err("a//b"), PatternError::EmptyLevel { index: 2 });
        assert_eq!(err("/a"), PatternError::EmptyLevel { index: 1 });
        assert_eq!(err("a/"), PatternError::EmptyLevel { index: 2 });
        assert_eq!(err("/"), PatternError::EmptyLevel { index: 1 });
    }

    #[test]
    fn rejects_misplaced_or_mixed_wildcards() {
        assert_eq!(err("#/a"), PatternError::MultiNotLast { index: 1, levels: 2 });
        assert_eq!(err("a/#/#"), PatternError::MultiNotLast { index: 2, levels: 3 });
        for (text, index, level) in [
            ("a+", 1, "a+"),
            ("a/+b", 2, "+b"),
            ("a/b#", 2, "b#"),
            ("++", 1, "++"),
            ("##", 1, "##"),
            ("a/{+}", 2, "{+}"),
            ("{x}#", 1, "{x}#"),
        ] {
            assert_eq!(
                err(text),
                PatternError::WildcardInLevel {
                    index,
                    level: level.into()
                },
                "{text}"
            );
        }
    }

    #[test]
    fn rejects_malformed_params() {
        let malformed = |index, level: &str| PatternError::MalformedParam {
            index,
            level: level.into(),
        };
        assert_eq!(err("a/{x}y"), malformed(2, "{x}y"));
        assert_eq!(err("a{x}"), malformed(1, "a{x}"));
        assert_eq!(err("x}"), malformed(1, "x}"));
        assert_eq!(err("a{"), malformed(1, "a{"));
        assert_eq!(err("{a}{b}"), malformed(1, "{a}{b}"));
        assert_eq!(err("{{a}"), malformed(1, "{{a}"));
        assert_eq!(err("{a}}"), malformed(1, "{a}}"));
        assert_eq!(
            err("a/{x"),
            PatternError::UnclosedParam {
                index: 2,
                level: "{x".into()
            }
        );
        assert_eq!(err("a/{}"), PatternError::EmptyParamName { index: 2 });
        for name in ["1x", "a-b", "a b", "é", "a.b", "$x"] {
            assert_eq!(
                err(&format!("t/{{{name}}}")),
                PatternError::InvalidParamName {
                    index: 2,
                    name: name.into()
                }
            );
        }
        let long = "x".repeat(MAX_PARAM_NAME_LEN + 1);
        assert_eq!(
            err(&format!("{{{long}}}")),
            PatternError::ParamNameTooLong {
                index: 1,
                name: long.clone(),
                len: 65
            }
        );
        assert!(Pattern::parse(&format!("{{{}}}", &long[1..])).is_ok());
    }

    #[test]
    fn rejects_duplicate_params() {
        assert_eq!(
            err("{id}/x/{id}"),
            PatternError::DuplicateParam {
                index: 3,
                name: "id".into()
            }
        );
        assert!(Pattern::parse("{id}/x/{Id}").is_ok());
    }

    #[test]
    fn error_messages_name_the_bad_part() {
        assert_eq!(
            err("a/{x}y").to_string(),
            "level 2 \"{x}y\" is not a parameter: a parameter is a whole level, as in {name}"
        );
        assert_eq!(
            err("{a}/{a}").to_string(),
            "parameter {a} appears more than once (again in level 2)"
        );
        assert_eq!(
            err("a/{}").to_string(),
            "level 2 is '{}': a parameter needs a name"
        );
        assert_eq!(err("a/{x").to_string(), "level 2 \"{x\" has an unclosed '{'");
    }

    /// MQTT 3.1.1 §4.7.1.2: the multi-level wildcard.
    #[test]
    fn mqtt_spec_multi_level_examples() {
        let pattern = p("sport/tennis/player1/#");
        for topic in [
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "sport/tennis/player1/score/wimbledon",
        ] {
            assert!(pattern.is_match(topic), "{topic}");
        }
        assert!(!pattern.is_match("sport/tennis/player2"));
        assert!(!pattern.is_match("sport/tennis"));
        assert!(p("sport/#").is_match("sport"));
        assert!(p("#").is_match("sport/tennis"));
        assert!(p("#").is_match("/"));
    }

    /// MQTT 3.1.1 §4.7.1.3: the single-level wildcard.
    #[test]
    fn mqtt_spec_single_level_examples() {
        assert!(p("sport/tennis/+").is_match("sport/tennis/player1"));
        assert!(p("sport/tennis/+").is_match("sport/tennis/player2"));
        assert!(!p("sport/tennis/+").is_match("sport/tennis/player1/ranking"));
        assert!(p("sport/+").is_match("sport/"));
        assert!(!p("sport/+").is_match("sport"));
        assert!(!p("sport/+").is_match("sport/tennis/player1"));
        assert!(p("+/+").is_match("/finance"));
        assert!(p("+/finance").is_match("/finance"));
        assert!(!p("+").is_match("/finance"));
        assert!(p("+/tennis/#").is_match("sport/tennis/player1"));
    }

    /// MQTT 3.1.1 §4.7.2: topics beginning with `$`.
    #[test]
    fn mqtt_spec_system_topic_examples() {
        assert!(!p("#").is_match("$SYS/broker/clients"));
        assert!(!p("+/monitor/Clients").is_match("$SYS/monitor/Clients"));
        assert!(!p("{x}/monitor/Clients").is_match("$SYS/monitor/Clients"));
        assert!(!p("+").is_match("$"));
        // A literal first level cannot start with `$`, so these never match either.
        assert!(!p("SYS/#").is_match("$SYS/broker"));
        // `$` later in the topic is ordinary.
        assert!(p("a/+").is_match("a/$b"));
        assert!(p("a/#").is_match("a/$SYS"));
        assert!(p("+/#").is_match("a$/x"));
    }

    #[test]
    fn literals_match_exactly() {
        assert!(p("a/b").is_match("a/b"));
        assert!(!p("a/b").is_match("a/B"));
        assert!(!p("a/b").is_match("a/b/"));
        assert!(!p("a/b").is_match("a"));
        assert!(!p("a/b").is_match("a/bc"));
        assert!(!p("a").is_match(""));
        assert!(p("+").is_match(""));
    }

    #[test]
    fn named_params_capture_levels_in_order() {
        let pattern = p("sensors/{device_id}/{kind}/#");
        assert_eq!(
            pattern.matches("sensors/d1/temp"),
            params(&[("device_id", "d1"), ("kind", "temp")])
        );
        assert_eq!(
            pattern.matches("sensors/d1/temp/x/y"),
            params(&[("device_id", "d1"), ("kind", "temp")])
        );
        assert_eq!(
            pattern.matches("sensors//"),
            params(&[("device_id", ""), ("kind", "")])
        );
        assert_eq!(pattern.matches("sensors/d1"), None);
        assert_eq!(p("{a}/+/{b}").matches("1/2/3"), params(&[("a", "1"), ("b", "3")]));
        assert_eq!(p("a/+").matches("a/x"), params(&[]));
        let found = pattern.matches("sensors/d1/temp").unwrap();
        assert_eq!(found.get("kind"), Some("temp"));
        assert_eq!(found.get("other"), None);
        assert_eq!(found.len(), 2);
        assert_eq!(
            found.iter().collect::<Vec<_>>(),
            [("device_id", "d1"), ("kind", "temp")]
        );
    }

    #[test]
    fn round_trips_through_text_and_serde() {
        let pattern = p("a/{b}/+/#");
        assert_eq!(p(&pattern.to_string()), pattern);
        let json = serde_json::to_string(&pattern).unwrap();
        assert_eq!(json, "\"a/{b}/+/#\"");
        assert_eq!(serde_json::from_str::<Pattern>(&json).unwrap(), pattern);
        assert!(serde_json::from_str::<Pattern>("\"a//b\"").is_err());
    }
}
