//! JSON messages straight into Arrow, with bad messages set aside.
//!
//! The fast path feeds every message to one arrow-json decoder. A message
//! that does not look like one JSON object is refused before it reaches
//! the decoder; one that fails inside it (a syntax error poisons the
//! decoder's state) is set aside and the decoder rebuilt from the good
//! ones; a value of the wrong type only shows when the batch is flushed,
//! and then the batch is decoded again message by message to find the
//! culprits. Good messages are never
//! dropped because a neighbour was bad.

use arrow::datatypes::SchemaRef;
use arrow::json::ReaderBuilder;
use arrow::json::reader::Decoder;
use arrow::record_batch::RecordBatch;

use crate::Result;

/// Decodes batches of messages into record batches of one schema.
pub struct JsonDecoder {
    schema: SchemaRef,
    /// The last batch's decoder, flushed, with its capacity in rows: its
    /// buffers (megabytes for a micro-batch) are used again rather than
    /// allocated, faulted in and freed per batch.
    reusable: Option<(Decoder, usize)>,
}

/// One batch, decoded.
#[derive(Debug)]
pub struct Decoded {
    /// The good messages, in order, as rows.
    pub batch: RecordBatch,
    /// The bad ones: (index in the input, why).
    pub bad: Vec<(usize, String)>,
}

impl JsonDecoder {
    pub fn new(schema: SchemaRef) -> JsonDecoder {
        JsonDecoder { schema, reusable: None }
    }

    fn decoder(&self, capacity: usize) -> Result<Decoder> {
        Ok(ReaderBuilder::new(self.schema.clone()).with_batch_size(capacity.max(1)).build_decoder()?)
    }

    pub fn decode(&mut self, messages: &[&[u8]]) -> Result<Decoded> {
        let mut bad = Vec::new();
        let mut good = Vec::with_capacity(messages.len());
        let (mut decoder, capacity) = match self.reusable.take() {
            Some((decoder, capacity)) if capacity >= messages.len() => (decoder, capacity),
            _ => (self.decoder(messages.len())?, messages.len()),
        };
        for (i, message) in messages.iter().enumerate() {
            let message = match one_object(message) {
                Ok(object) => object,
                Err(why) => {
                    bad.push((i, why));
                    continue;
                }
            };
            let before = decoder.len();
            match decoder.decode(message) {
                Ok(n) if n == message.len() && !decoder.has_partial_record() && decoder.len() == before + 1 => {
                    good.push(i)
                }
                Ok(_) => {
                    // `{"a": 1}{"b": 2}`, or an object left open: take nothing of it.
                    bad.push((i, "not exactly one JSON object".into()));
                    decoder = self.replay(messages, &good)?;
                }
                Err(e) => {
                    bad.push((i, e.to_string()));
                    decoder = self.replay(messages, &good)?;
                }
            }
        }
        match decoder.flush() {
            Ok(batch) => {
                let batch = batch.unwrap_or_else(|| RecordBatch::new_empty(self.schema.clone()));
                if bad.is_empty() {
                    self.reusable = Some((decoder, capacity));
                }
                bad.sort_unstable_by_key(|(i, _)| *i);
                Ok(Decoded { batch, bad })
            }
            // A value of the wrong type somewhere: find it, one message at a time.
            Err(_) => self.one_by_one(messages, &good, bad),
        }
    }

    /// A fresh decoder holding the messages at `good` again.
    fn replay(&self, messages: &[&[u8]], good: &[usize]) -> Result<Decoder> {
        let mut decoder = self.decoder(messages.len())?;
        for &i in good {
            decoder.decode(trimmed(messages[i]))?;
        }
        Ok(decoder)
    }

    fn one_by_one(&self, messages: &[&[u8]], candidates: &[usize], mut bad: Vec<(usize, String)>) -> Result<Decoded> {
        let mut good = Vec::with_capacity(candidates.len());
        for &i in candidates {
            let mut one = self.decoder(1)?;
            match one.decode(trimmed(messages[i])).and_then(|_| one.flush()) {
                Ok(_) => good.push(i),
                Err(e) => bad.push((i, e.to_string())),
            }
        }
        let mut decoder = self.replay(messages, &good)?;
        let batch = decoder.flush()?.unwrap_or_else(|| RecordBatch::new_empty(self.schema.clone()));
        bad.sort_unstable_by_key(|(i, _)| *i);
        Ok(Decoded { batch, bad })
    }
}

/// A cheap first look: one object starts and ends the message, which is
/// returned for the decoder to check the rest (and the count of rows it
/// made).
fn one_object(message: &[u8]) -> Result<&[u8], String> {
    let text = trimmed(message);
    match (text.first(), text.last()) {
        (None, _) => Err("empty message".into()),
        (Some(b'{'), Some(b'}')) => Ok(text),
        _ => Err("not a JSON object".into()),
    }
}

/// The message without surrounding whitespace or a leading UTF-8
/// byte-order mark, which RFC 8259 lets a parser ignore and some Windows
/// producers write.
fn trimmed(message: &[u8]) -> &[u8] {
    message.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(message).trim_ascii()
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, Int64Array, StringArray};

    use super::*;
    use crate::schema::schema_of;

    fn decoder() -> JsonDecoder {
        JsonDecoder::new(schema_of(&[("id".into(), "Int64".into()), ("url".into(), "Utf8".into())]).unwrap())
    }

    #[test]
    fn good_messages_become_rows_in_order() {
        let messages: Vec<&[u8]> = vec![
            br#"{"id": 1, "url": "/a"}"#,
            br#"{"url": "/b", "id": 2, "extra": true}"#,
            br#"{"id": 3}"#,
            b"\xEF\xBB\xBF{\"id\": 4} ",
        ];
        let out = decoder().decode(&messages).unwrap();
        assert!(out.bad.is_empty(), "{:?}", out.bad);
        let ids = out.batch.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(ids.values(), &[1, 2, 3, 4], "a byte-order mark before the object is ignored");
        let urls = out.batch.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        assert!(urls.is_null(2), "a missing key reads as null");
    }

    #[test]
    fn bad_messages_are_named_and_their_neighbours_kept() {
        let messages: Vec<&[u8]> = vec![
            br#"{"id": 1, "url": "/a"}"#,
            b"not json",
            br#"{"id": 2, "url": "/b""#,
            br#"{"id": "three", "url": "/c"}"#,
            br#"[1, 2]"#,
            br#"{"id": 4, "url": "/d"}"#,
            b"",
        ];
        let out = decoder().decode(&messages).unwrap();
        let bad: Vec<usize> = out.bad.iter().map(|(i, _)| *i).collect();
        assert_eq!(bad, [1, 2, 3, 4, 6], "{:?}", out.bad);
        let ids = out.batch.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(ids.values(), &[1, 4]);
        assert!(out.bad[2].1.to_lowercase().contains("three") || out.bad[2].1.contains("Int64"), "{}", out.bad[2].1);
    }

    #[test]
    fn a_decoder_used_again_gives_each_batch_only_its_own_rows() {
        let mut decoder = decoder();
        let ids = |out: &Decoded| out.batch.column(0).as_any().downcast_ref::<Int64Array>().unwrap().values().to_vec();
        let first: Vec<&[u8]> = vec![br#"{"id": 1}"#, br#"{"id": 2}"#];
        assert_eq!(ids(&decoder.decode(&first).unwrap()), [1, 2]);
        // Larger than the decoder was built for, then with a bad message
        let larger: Vec<&[u8]> = vec![br#"{"id": 3}"#, br#"{"id": 4}"#, br#"{"id": 5}"#];
        assert_eq!(ids(&decoder.decode(&larger).unwrap()), [3, 4, 5]);
        let with_bad: Vec<&[u8]> = vec![br#"{"id": 6}"#, br#"{"id": "seven"}"#, br#"{"id": 8"#];
        let out = decoder.decode(&with_bad).unwrap();
        assert_eq!((ids(&out), out.bad.len()), (vec![6], 2));
        let last: Vec<&[u8]> = vec![br#"{"id": 9}"#];
        assert_eq!(ids(&decoder.decode(&last).unwrap()), [9]);
    }

    /// A message: JSON objects with the declared keys and values of any
    /// type, or any bytes at all.
    fn message() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let value = prop_oneof![
            any::<i64>().prop_map(|v| v.to_string()),
            any::<f64>().prop_map(|v| format!("{v:?}")),
            Just("1e400".to_string()),
            Just("null".to_string()),
            Just("[1, 2]".to_string()),
            Just("{\"x\": 1}".to_string()),
            "[a-z\\\\\"]{0,5}".prop_map(|s| format!("\"{s}\"")),
        ];
        prop_oneof![
            3 => (value.clone(), value).prop_map(|(id, url)| format!(r#"{{"id": {id}, "url": {url}}}"#).into_bytes()),
            1 => proptest::collection::vec(any::<u8>(), 0..40),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, ..Default::default() })]

        /// Whatever Kafka delivers, every message is a row or is named bad, and nothing panics.
        #[test]
        fn any_messages_are_rows_or_named_bad(messages in proptest::collection::vec(message(), 0..20)) {
            let views: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
            let out = decoder().decode(&views).unwrap();
            proptest::prop_assert_eq!(out.batch.num_rows() + out.bad.len(), messages.len());
        }
    }
}
