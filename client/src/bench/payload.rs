//! What a bench message carries: its key, producer and per-producer sequence number, in a
//! payload header `key|producer|seq|` padded to the requested size, and in its message id
//! `<run>-<producer>-<seq>`.
//!
//! The payload is the identity that survives every path: MQTT has no message id, so the
//! verifier reads identities from journal payloads and uses the message id only as a
//! cross-check when it has the bench's form.

/// Byte used to pad payloads to the requested size.
pub const PAD: u8 = b'.';

/// The identity of one bench message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Header {
    /// The bench key (not necessarily the route's key: that is derived from the topic).
    pub key: String,
    /// Producer index.
    pub producer: u32,
    /// Sequence number within the producer, from 0, strictly increasing in send order.
    pub seq: u64,
}

/// The payload of a message: `key|producer|seq|` then [`PAD`] bytes up to `size` bytes. A
/// header longer than `size` is kept whole (the payload is then longer than asked).
///
/// Keys must not contain `|` (bench keys never do).
pub fn encode(header: &Header, size: usize) -> Vec<u8> {
    let mut payload = format!("{}|{}|{}|", header.key, header.producer, header.seq).into_bytes();
    if payload.len() < size {
        payload.resize(size, PAD);
    }
    payload
}

/// The header of a bench payload; `None` when the payload is not one.
pub fn decode(payload: &[u8]) -> Option<Header> {
    let mut fields = payload.splitn(4, |b| *b == b'|');
    let key = std::str::from_utf8(fields.next()?).ok()?;
    let producer = parse_number(fields.next()?)?;
    let seq = parse_number(fields.next()?)?;
    // The third separator must be there (splitn yields a 4th field, maybe empty).
    fields.next()?;
    if key.is_empty() {
        return None;
    }
    Some(Header {
        key: key.to_string(),
        producer: u32::try_from(producer).ok()?,
        seq,
    })
}

fn parse_number(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// The message id of a bench message: `<run>-<producer>-<seq>`.
pub fn message_id(run_id: &str, producer: u32, seq: u64) -> String {
    format!("{run_id}-{producer}-{seq}")
}

/// `(producer, seq)` from a message id of run `run_id`; `None` for any other id.
pub fn parse_message_id(run_id: &str, id: &str) -> Option<(u32, u64)> {
    let rest = id.strip_prefix(run_id)?.strip_prefix('-')?;
    let (producer, seq) = rest.split_once('-')?;
    Some((
        u32::try_from(parse_number(producer.as_bytes())?).ok()?,
        parse_number(seq.as_bytes())?,
    ))
}

/// The bench key with index `index` in run `run_id`: `<run>-<index>`. Keys are fresh per run,
/// so a run's journals hold only its own messages.
pub fn key_name(run_id: &str, index: u32) -> String {
    format!("{run_id}-{index}")
}

/// The topic of a key: the template with every `{key}` replaced.
pub fn topic(template: &str, key: &str) -> String {
    template.replace("{key}", key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(key: &str, producer: u32, seq: u64) -> Header {
        Header {
            key: key.into(),
            producer,
            seq,
        }
    }

    #[test]
    fn encodes_padded_and_decodes_back() {
        let h = header("ab12cd34-7", 3, 42);
        let payload = encode(&h, 100);
        assert_eq!(payload.len(), 100);
        assert!(payload.starts_with(b"ab12cd34-7|3|42|...."));
        assert_eq!(decode(&payload), Some(h.clone()));

        // A header longer than the size is kept whole.
        let short = encode(&h, 4);
        assert_eq!(short, b"ab12cd34-7|3|42|".to_vec());
        assert_eq!(decode(&short), Some(h));

        let big = header("k", u32::MAX, u64::MAX);
        assert_eq!(decode(&encode(&big, 0)), Some(big));
    }

    #[test]
    fn rejects_what_is_not_a_bench_payload() {
        for bad in [
            &b""[..],
            b"hello",
            b"k|1|2",
            b"|1|2|",
            b"k|x|2|",
            b"k|1|-2|",
            b"k|1||",
            b"k|99999999999|2|",
            b"\xff|1|2|",
            b"k|1|2 |",
        ] {
            assert_eq!(decode(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn message_ids_round_trip() {
        let id = message_id("ab12cd34", 2, 17);
        assert_eq!(id, "ab12cd34-2-17");
        assert_eq!(parse_message_id("ab12cd34", &id), Some((2, 17)));
        assert_eq!(parse_message_id("other", &id), None);
        assert_eq!(parse_message_id("ab12cd34", "ab12cd34-2"), None);
        assert_eq!(parse_message_id("ab12cd34", "ab12cd34-2-x"), None);
        assert_eq!(parse_message_id("ab12cd34", "ab12cd34x-2-1"), None);
    }

    #[test]
    fn keys_and_topics() {
        assert_eq!(key_name("run1", 7), "run1-7");
        assert_eq!(topic("bench/{key}/data", "run1-7"), "bench/run1-7/data");
        assert_eq!(topic("a/{key}/{key}", "k"), "a/k/k");
    }
}
