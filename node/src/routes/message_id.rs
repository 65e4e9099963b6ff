//! Message ids taken from the payload: a route's `message_id_field`, a JSON pointer
//! (RFC 6901, e.g. `/id` or `/meta/msg_id`) into a JSON payload whose string or number value
//! is the message's id.
//!
//! MQTT 3.1.1 carries no producer message id, so without this a broker redelivery (the same
//! message again, after a failover or a reconnect) looks like a new message and a `journal`
//! route would append it twice. With the id read from the payload, both copies carry the same
//! id and the journal keeps one. The journal deduplicates per route and key, so the id need not
//! be unique beyond one key of one route, and it is used as is (no prefix).
//!
//! Pure functions, no I/O: [`validate_message_id_field`] checks a pointer when a route is
//! validated, [`message_id_from_payload`] reads the id from one payload and says why when it
//! cannot ([`MissingMessageId`]); the caller falls back to a generated id and counts it.

use serde_json::Value;

/// Longest accepted `message_id_field` pointer, in bytes.
pub const MAX_MESSAGE_ID_FIELD_LEN: usize = 256;

/// Longest message id taken from a payload, in bytes; a longer value counts as missing.
pub const MAX_MESSAGE_ID_LEN: usize = 256;

/// Why a `message_id_field` pointer is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MessageIdFieldError {
    /// The pointer does not start with `/` (the empty pointer included).
    #[error("a JSON pointer must start with '/' (e.g. \"/id\")")]
    NoLeadingSlash,
    /// The pointer is longer than [`MAX_MESSAGE_ID_FIELD_LEN`] bytes.
    #[error("longer than {MAX_MESSAGE_ID_FIELD_LEN} bytes")]
    TooLong,
    /// The pointer contains a NUL character.
    #[error("contains NUL")]
    Nul,
    /// A `~` not followed by `0` or `1`.
    #[error("'~' must be followed by '0' or '1' (RFC 6901 escapes)")]
    BadEscape,
}

/// Checks a `message_id_field` pointer: 1 to [`MAX_MESSAGE_ID_FIELD_LEN`] bytes, starting with
/// `/`, every `~` followed by `0` or `1` (RFC 6901 escapes), no NUL. Returns why not.
pub fn validate_message_id_field(pointer: &str) -> Result<(), MessageIdFieldError> {
    if !pointer.starts_with('/') {
        return Err(MessageIdFieldError::NoLeadingSlash);
    }
    if pointer.len() > MAX_MESSAGE_ID_FIELD_LEN {
        return Err(MessageIdFieldError::TooLong);
    }
    if pointer.contains('\0') {
        return Err(MessageIdFieldError::Nul);
    }
    let mut chars = pointer.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(MessageIdFieldError::BadEscape);
        }
    }
    Ok(())
}

/// Why no message id could be read from a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MissingMessageId {
    /// The payload is not a JSON document.
    #[error("the payload is not JSON")]
    NotJson,
    /// Nothing is at the pointer.
    #[error("the payload has no value at the message id field")]
    Absent,
    /// The value is not a string or a number (null, boolean, object, array).
    #[error("the message id field is not a string or a number")]
    NotScalar,
    /// The value is an empty string.
    #[error("the message id field is empty")]
    Empty,
    /// The value is longer than [`MAX_MESSAGE_ID_LEN`] bytes.
    #[error("the message id field is longer than {MAX_MESSAGE_ID_LEN} bytes")]
    TooLong,
}

impl MissingMessageId {
    /// Short snake_case name, for a metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            MissingMessageId::NotJson => "not_json",
            MissingMessageId::Absent => "absent",
            MissingMessageId::NotScalar => "not_scalar",
            MissingMessageId::Empty => "empty",
            MissingMessageId::TooLong => "too_long",
        }
    }
}

/// The message id at `pointer` in a JSON `payload`: a string as is, a number as its JSON text
/// (`42`, `4.5`). The pointer is expected to have passed [`validate_message_id_field`]; one
/// that did not finds nothing.
pub fn message_id_from_payload(pointer: &str, payload: &[u8]) -> Result<String, MissingMessageId> {
    let document: Value = serde_json::from_slice(payload).map_err(|_| MissingMessageId::NotJson)?;
    let id = match document.pointer(pointer) {
        None => return Err(MissingMessageId::Absent),
        Some(Value::String(text)) => text.clone(),
        Some(Value::Number(number)) => number.to_string(),
        Some(_) => return Err(MissingMessageId::NotScalar),
    };
    if id.is_empty() {
        return Err(MissingMessageId::Empty);
    }
    if id.len() > MAX_MESSAGE_ID_LEN {
        return Err(MissingMessageId::TooLong);
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_are_validated() {
        for ok in ["/id", "/meta/msg_id", "/a~1b", "/m~0n", "/0", "/", "/é"] {
            assert_eq!(validate_message_id_field(ok), Ok(()), "{ok}");
        }
        use MessageIdFieldError::*;
        for (bad, why) in [
            ("", NoLeadingSlash),
            ("id", NoLeadingSlash),
            ("meta/id", NoLeadingSlash),
            ("/a~", BadEscape),
            ("/a~2", BadEscape),
            ("/a\0", Nul),
            (&format!("/{}", "x".repeat(256)), TooLong),
        ] {
            assert_eq!(validate_message_id_field(bad), Err(why), "{bad:?}");
        }
        assert_eq!(
            NoLeadingSlash.to_string(),
            "a JSON pointer must start with '/' (e.g. \"/id\")"
        );
        assert!(validate_message_id_field(&format!("/{}", "x".repeat(255))).is_ok());
    }

    #[test]
    fn ids_come_from_strings_and_numbers() {
        let id = |pointer: &str, payload: &str| message_id_from_payload(pointer, payload.as_bytes());
        assert_eq!(id("/id", r#"{"id":"m-1","t":21.5}"#), Ok("m-1".into()));
        assert_eq!(id("/id", r#"{"id":42}"#), Ok("42".into()));
        assert_eq!(id("/id", r#"{"id":-4.5}"#), Ok("-4.5".into()));
        assert_eq!(id("/meta/seq", r#"{"meta":{"seq":7}}"#), Ok("7".into()));
        assert_eq!(id("/a~1b", r#"{"a/b":"x"}"#), Ok("x".into()));
        assert_eq!(id("/ids/1", r#"{"ids":["a","b"]}"#), Ok("b".into()));
        assert_eq!(id("/id", " {\"id\" : \"spaced\"}\n"), Ok("spaced".into()));
    }

    #[test]
    fn missing_ids_say_why() {
        let id = |pointer: &str, payload: &[u8]| message_id_from_payload(pointer, payload);
        assert_eq!(id("/id", b"21.5 C"), Err(MissingMessageId::NotJson));
        assert_eq!(id("/id", b""), Err(MissingMessageId::NotJson));
        assert_eq!(id("/id", b"\xff\xfe"), Err(MissingMessageId::NotJson));
        assert_eq!(id("/id", br#"{"id":"x""#), Err(MissingMessageId::NotJson));
        assert_eq!(id("/id", br#"{"other":1}"#), Err(MissingMessageId::Absent));
        assert_eq!(id("/id", b"42"), Err(MissingMessageId::Absent));
        assert_eq!(id("/id/x", br#"{"id":"s"}"#), Err(MissingMessageId::Absent));
        for value in ["null", "true", "{}", "[1]"] {
            let payload = format!(r#"{{"id":{value}}}"#);
            assert_eq!(
                id("/id", payload.as_bytes()),
                Err(MissingMessageId::NotScalar),
                "{value}"
            );
        }
        assert_eq!(id("/id", br#"{"id":""}"#), Err(MissingMessageId::Empty));
        let long = format!(r#"{{"id":"{}"}}"#, "x".repeat(MAX_MESSAGE_ID_LEN + 1));
        assert_eq!(id("/id", long.as_bytes()), Err(MissingMessageId::TooLong));
        let longest = format!(r#"{{"id":"{}"}}"#, "x".repeat(MAX_MESSAGE_ID_LEN));
        assert!(id("/id", longest.as_bytes()).is_ok());
        assert_eq!(MissingMessageId::NotJson.reason(), "not_json");
    }
}
