//! Validation of published topic names.

/// The MQTT limit on a topic name, in bytes (a UTF-8 string with a 16-bit length prefix).
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Why a topic name cannot be published.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The topic is the empty string; MQTT topic names have at least one character.
    #[error("topic is empty")]
    Empty,
    /// The topic is longer than the limit.
    #[error("topic is {len} bytes long; the limit is {max}")]
    TooLong {
        /// Length of the topic in bytes.
        len: usize,
        /// The limit that applied.
        max: usize,
    },
    /// The topic contains `+` or `#`, which only subscription filters may use.
    #[error("topic contains the wildcard '{wildcard}' at byte {position}: wildcards belong in subscriptions, not in published topics")]
    Wildcard {
        /// `+` or `#`.
        wildcard: char,
        /// Byte offset of the wildcard.
        position: usize,
    },
    /// The topic contains a NUL character.
    #[error("topic contains a NUL character at byte {position}")]
    Nul {
        /// Byte offset of the NUL.
        position: usize,
    },
    /// The topic bytes are not UTF-8.
    #[error("topic is not valid UTF-8: the bytes from offset {valid_up_to} on are malformed")]
    InvalidUtf8 {
        /// Length of the longest valid UTF-8 prefix.
        valid_up_to: usize,
    },
}

/// Checks that `topic` can be published: non-empty, at most `max_len` bytes (and never more
/// than [`MAX_TOPIC_LEN`], whatever `max_len` says), no `+`, `#` or NUL.
///
/// Empty levels (`a//b`, `/a`) are valid topic names in MQTT and accepted. Topics starting with
/// `$` are valid names too, but no route matches them (see [`Pattern`](super::Pattern)), so a
/// publish to one fails as "no route". Control characters other than NUL are discouraged by
/// MQTT but not forbidden, and are accepted.
pub fn validate_topic(topic: &str, max_len: usize) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    let max = max_len.min(MAX_TOPIC_LEN);
    if topic.len() > max {
        return Err(TopicError::TooLong {
            len: topic.len(),
            max,
        });
    }
    match topic.char_indices().find(|(_, c)| matches!(c, '+' | '#' | '\0')) {
        None => Ok(()),
        Some((position, '\0')) => Err(TopicError::Nul { position }),
        Some((position, wildcard)) => Err(TopicError::Wildcard { wildcard, position }),
    }
}

/// Reads a topic name from raw bytes (an MQTT packet, a gRPC field given as bytes), rejecting
/// malformed UTF-8. Only converts: call [`validate_topic`] on the result.
pub fn topic_from_bytes(bytes: &[u8]) -> Result<&str, TopicError> {
    std::str::from_utf8(bytes).map_err(|error| TopicError::InvalidUtf8 {
        valid_up_to: error.valid_up_to(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_topics() {
        for topic in ["a", "a/b", "/", "a//b", "/finance", "$SYS/x", "ü/🙂", "a b\t"] {
            assert_eq!(validate_topic(topic, MAX_TOPIC_LEN), Ok(()), "{topic:?}");
        }
    }

    #[test]
    fn rejects_empty_wildcards_and_nul() {
        assert_eq!(validate_topic("", 10), Err(TopicError::Empty));
        assert_eq!(
            validate_topic("a/+/b", 100),
            Err(TopicError::Wildcard {
                wildcard: '+',
                position: 2
            })
        );
        assert_eq!(
            validate_topic("ü/#", 100),
            Err(TopicError::Wildcard {
                wildcard: '#',
                position: 3
            })
        );
        assert_eq!(validate_topic("a\0", 100), Err(TopicError::Nul { position: 1 }));
    }

    #[test]
    fn applies_the_smaller_of_the_configured_and_mqtt_limits() {
        assert_eq!(validate_topic("abcd", 4), Ok(()));
        assert_eq!(
            validate_topic("abcde", 4),
            Err(TopicError::TooLong { len: 5, max: 4 })
        );
        let long = "a".repeat(MAX_TOPIC_LEN + 1);
        assert_eq!(
            validate_topic(&long, usize::MAX),
            Err(TopicError::TooLong {
                len: 65_536,
                max: MAX_TOPIC_LEN
            })
        );
        assert_eq!(validate_topic(&long[1..], usize::MAX), Ok(()));
        assert_eq!(
            validate_topic("ü", 1),
            Err(TopicError::TooLong { len: 2, max: 1 })
        );
    }

    #[test]
    fn converts_bytes_and_reports_malformed_utf8() {
        assert_eq!(topic_from_bytes(b"a/b"), Ok("a/b"));
        assert_eq!(
            topic_from_bytes(b"ab\xffcd"),
            Err(TopicError::InvalidUtf8 { valid_up_to: 2 })
        );
        assert_eq!(
            topic_from_bytes(b"a\xc3"),
            Err(TopicError::InvalidUtf8 { valid_up_to: 1 })
        );
        assert_eq!(
            TopicError::InvalidUtf8 { valid_up_to: 2 }.to_string(),
            "topic is not valid UTF-8: the bytes from offset 2 on are malformed"
        );
    }
}
