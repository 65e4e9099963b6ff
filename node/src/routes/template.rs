//! Topic templates for the `republish` handler: text with `{param}` placeholders.

use std::fmt;

use super::pattern::{is_valid_param_name, Params, MAX_PARAM_NAME_LEN};
use super::topic::{validate_topic, TopicError, MAX_TOPIC_LEN};

/// Why a string is not a valid [`Template`]. Positions are byte offsets in the template.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template is not a valid topic name once read as text (empty, `+`, `#`, NUL, too
    /// long). Braces are ordinary topic characters, so this is checked on the template itself.
    #[error("template is not a valid topic: {0}")]
    InvalidTopic(TopicError),
    /// The template starts with `$`; clients may not publish to system topics.
    #[error("template starts with '$': cannot republish to a system topic")]
    SystemTopic,
    /// A `{` without a closing `}` before the next `{` or the end.
    #[error("template has an unclosed '{{' at byte {position}")]
    UnclosedPlaceholder {
        /// Offset of the `{`.
        position: usize,
    },
    /// A `}` that closes nothing.
    #[error("template has an unmatched '}}' at byte {position}")]
    UnmatchedBrace {
        /// Offset of the `}`.
        position: usize,
    },
    /// `{}`: a placeholder without a name.
    #[error("template has an empty placeholder '{{}}' at byte {position}")]
    EmptyPlaceholder {
        /// Offset of the `{`.
        position: usize,
    },
    /// A placeholder name that cannot be a parameter name (`[A-Za-z_][A-Za-z0-9_]*`, at most
    /// [`MAX_PARAM_NAME_LEN`] bytes).
    #[error("template placeholder {{{name}}} at byte {position} is not a valid parameter name")]
    InvalidPlaceholder {
        /// Offset of the `{`.
        position: usize,
        /// The text between the braces.
        name: String,
    },
}

/// One piece of a parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Param(String),
}

/// A topic template such as `processed/{device_id}/v1` or `out/dev-{id}`: text with `{name}`
/// placeholders, which may sit anywhere in a level. Rendering replaces each placeholder with
/// the value of the parameter of that name.
///
/// Parsing checks the shape only: balanced, well-named placeholders, and that the template read
/// as text is a publishable topic not starting with `$`. Whether each placeholder is a
/// parameter of the route's pattern is checked by [`RouteSpec::validate`](super::RouteSpec::validate).
/// A rendered topic can still be invalid (an empty value where it is the whole topic, or
/// longer than the limit with long values), so the caller runs
/// [`validate_topic`] on it before publishing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

impl Template {
    /// Parses and checks a template.
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        validate_topic(source, MAX_TOPIC_LEN).map_err(TemplateError::InvalidTopic)?;
        if source.starts_with('$') {
            return Err(TemplateError::SystemTopic);
        }
        let mut parts = Vec::new();
        let mut rest = source;
        let mut offset = 0;
        while let Some(i) = rest.find(['{', '}']) {
            let position = offset + i;
            if rest[i..].starts_with('}') {
                return Err(TemplateError::UnmatchedBrace { position });
            }
            if i > 0 {
                parts.push(Part::Text(rest[..i].to_owned()));
            }
            let after = &rest[i + 1..];
            let close = match after.find(['{', '}']) {
                Some(j) if after[j..].starts_with('}') => j,
                _ => return Err(TemplateError::UnclosedPlaceholder { position }),
            };
            let name = &after[..close];
            if name.is_empty() {
                return Err(TemplateError::EmptyPlaceholder { position });
            }
            if !is_valid_param_name(name) || name.len() > MAX_PARAM_NAME_LEN {
                return Err(TemplateError::InvalidPlaceholder {
                    position,
                    name: name.to_owned(),
                });
            }
            parts.push(Part::Param(name.to_owned()));
            offset = position + 1 + close + 1;
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template {
            source: source.to_owned(),
            parts,
        })
    }

    /// The template text as given.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The placeholder names in order of appearance (repeats included).
    pub fn params(&self) -> impl Iterator<Item = &str> + '_ {
        self.parts.iter().filter_map(|part| match part {
            Part::Param(name) => Some(name.as_str()),
            Part::Text(_) => None,
        })
    }

    /// Replaces each placeholder with its value from `params`. A placeholder without a value
    /// (not possible for a template checked against its route) is left as `{name}`.
    pub fn render(&self, params: &Params) -> String {
        self.render_with(|name| params.get(name))
    }

    /// Replaces each placeholder with `value(name)`; one without a value (`None`) is left as
    /// `{name}`. Values are copied as they are: braces, `/` or placeholder-like text in a value
    /// are not read again, so a value cannot pull in another parameter.
    pub fn render_with<'v>(&self, value: impl Fn(&str) -> Option<&'v str>) -> String {
        let mut out = String::with_capacity(self.source.len());
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Param(name) => match value(name) {
                    Some(value) => out.push_str(value),
                    None => {
                        out.push('{');
                        out.push_str(name);
                        out.push('}');
                    }
                },
            }
        }
        out
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&str, &str)]) -> Params {
        pairs.iter().copied().collect()
    }

    #[test]
    fn parses_and_renders_placeholders_anywhere() {
        let template = Template::parse("processed/{device_id}/dev-{kind}{n}/x").unwrap();
        assert_eq!(template.params().collect::<Vec<_>>(), ["device_id", "kind", "n"]);
        let params = values(&[("device_id", "d1"), ("kind", "temp"), ("n", "7")]);
        assert_eq!(template.render(&params), "processed/d1/dev-temp7/x");
        assert_eq!(template.to_string(), "processed/{device_id}/dev-{kind}{n}/x");
        assert_eq!(template.as_str(), "processed/{device_id}/dev-{kind}{n}/x");
        assert_eq!(
            Template::parse("{a}").unwrap().render(&values(&[("a", "v")])),
            "v"
        );
        assert_eq!(Template::parse("plain/topic").unwrap().params().count(), 0);
    }

    #[test]
    fn leaves_missing_values_visible() {
        let template = Template::parse("out/{a}/{b}").unwrap();
        assert_eq!(template.render(&values(&[("a", "1")])), "out/1/{b}");
    }

    #[test]
    fn rejects_bad_shapes() {
        let err = |text: &str| Template::parse(text).unwrap_err();
        assert_eq!(err(""), TemplateError::InvalidTopic(TopicError::Empty));
        assert_eq!(
            err("out/+/{a}"),
            TemplateError::InvalidTopic(TopicError::Wildcard {
                wildcard: '+',
                position: 4
            })
        );
        assert_eq!(
            err("out/#"),
            TemplateError::InvalidTopic(TopicError::Wildcard {
                wildcard: '#',
                position: 4
            })
        );
        assert_eq!(
            err("a\0"),
            TemplateError::InvalidTopic(TopicError::Nul { position: 1 })
        );
        assert_eq!(err("$SYS/{a}"), TemplateError::SystemTopic);
        assert_eq!(err("out/{a"), TemplateError::UnclosedPlaceholder { position: 4 });
        assert_eq!(
            err("out/{a{b}"),
            TemplateError::UnclosedPlaceholder { position: 4 }
        );
        assert_eq!(err("out/a}"), TemplateError::UnmatchedBrace { position: 5 });
        assert_eq!(err("{a}/b}"), TemplateError::UnmatchedBrace { position: 5 });
        assert_eq!(err("out/{}"), TemplateError::EmptyPlaceholder { position: 4 });
        assert_eq!(
            err("{a}/{1x}"),
            TemplateError::InvalidPlaceholder {
                position: 4,
                name: "1x".into()
            }
        );
        let long = "x".repeat(MAX_PARAM_NAME_LEN + 1);
        assert!(matches!(
            err(&format!("{{{long}}}")),
            TemplateError::InvalidPlaceholder { position: 0, .. }
        ));
    }

    #[test]
    fn values_are_copied_verbatim_and_never_read_again() {
        let template = Template::parse("out/{a}/{b}").unwrap();
        // A value that looks like a placeholder stays text, whatever the parameter order.
        assert_eq!(template.render(&values(&[("a", "{b}"), ("b", "x")])), "out/{b}/x");
        assert_eq!(template.render(&values(&[("b", "x"), ("a", "{b}")])), "out/{b}/x");
        // Empty values, slashes and stray braces are inserted as they are.
        assert_eq!(template.render(&values(&[("a", ""), ("b", "}{")])), "out//}{");
        assert_eq!(template.render(&values(&[("a", "p/q"), ("b", "é")])), "out/p/q/é");
        // Repeated placeholders each get the value.
        assert_eq!(
            Template::parse("{a}-{a}").unwrap().render(&values(&[("a", "1")])),
            "1-1"
        );
    }

    #[test]
    fn render_with_takes_values_from_any_lookup() {
        let template = Template::parse("processed/{id}/{kind}").unwrap();
        let pairs = [("id".to_string(), "d1".to_string())];
        let lookup = |name: &str| pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(template.render_with(lookup), "processed/d1/{kind}");
        assert_eq!(
            template.render_with(|_| None),
            "processed/{id}/{kind}",
            "no values: the template as written"
        );
    }
}
