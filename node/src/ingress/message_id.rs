//! The message id of a message that arrives without one (MQTT 3.1.1 carries none; a gRPC
//! publish may leave `message_id` empty), read from its payload through the route's
//! `message_id_field`, with the fallback counted.
//!
//! Used by the MQTT ingress and by gRPC `Publish`, so both count misses in the same metric,
//! [`MESSAGE_ID_MISSING`] (`route`, `reason` labels). A miss never rejects the message: it gets
//! a generated id, as it would without the option, and only loses duplicate suppression.

use crate::routes::message_id_from_payload;

/// Messages of a route with a `message_id_field` whose payload did not carry an id (not JSON,
/// no such field, not a string or number, empty, too long), by route and reason. Each got a
/// generated id.
pub const MESSAGE_ID_MISSING: &str = "routemq_message_id_missing_total";

/// The message id at `field` in `payload`, or `None` (counted in [`MESSAGE_ID_MISSING`] for
/// `route`) when the payload has none.
pub fn payload_message_id(route: &str, field: &str, payload: &[u8]) -> Option<String> {
    match message_id_from_payload(field, payload) {
        Ok(id) => Some(id),
        Err(why) => {
            metrics::counter!(MESSAGE_ID_MISSING, "route" => route.to_string(), "reason" => why.reason())
                .increment(1);
            tracing::debug!(
                route,
                field,
                reason = why.reason(),
                "message without an id in its payload: {why}"
            );
            None
        }
    }
}

/// A fresh message id (a random UUID), for a message that has none.
pub fn generated_message_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_id_or_falls_back() {
        assert_eq!(
            payload_message_id("r", "/id", br#"{"id":"m-1"}"#).as_deref(),
            Some("m-1")
        );
        assert_eq!(payload_message_id("r", "/id", b"21.5"), None);
        let a = generated_message_id();
        assert_eq!(a.len(), 36);
        assert_ne!(a, generated_message_id());
    }
}
