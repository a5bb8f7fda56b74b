//! Decoding one JSON record into an [`Event`]: a single pass over the bytes
//! that keeps only the fields the schema names, never panics, and reports a
//! typed [`DecodeError`] the caller can dead-letter with its reason.

use super::schema::{Schema, Slot, TrieNode};
use super::timefmt::{TimeFormat, epoch_to_millis, parse_time_str};
use super::{Event, Value};
use compact_str::CompactString;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use smallvec::SmallVec;
use std::fmt;
use std::sync::Arc;

/// Why a record could not become an event.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The record is larger than the configured limit.
    #[error("record of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The record's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The record was read from an input the rule set has no stream for.
    #[error("the rule set has no stream number {0}")]
    UnknownStream(u16),
    /// The bytes are not UTF-8.
    #[error("record is not valid UTF-8 (at byte {0})")]
    NotUtf8(usize),
    /// The bytes are not JSON.
    #[error("malformed JSON: {0}")]
    Json(String),
    /// The JSON is not an object.
    #[error("record is a JSON {0}, expected an object")]
    NotAnObject(&'static str),
    /// The key field is absent or null.
    #[error("key field `{0}` is missing")]
    MissingKey(String),
    /// The key field is not a string, number or boolean.
    #[error("key field `{0}` must be a string or number")]
    BadKey(String),
    /// The key field's value is longer than keys may be.
    #[error("key field `{field}` is {len} bytes long; keys may have at most {MAX_KEY_BYTES}")]
    KeyTooLong {
        /// The key field.
        field: String,
        /// Its value's length.
        len: usize,
    },
    /// The time field is absent or null.
    #[error("time field `{0}` is missing")]
    MissingTime(String),
    /// The time field cannot be read as a time.
    #[error("time field `{field}` has unreadable value {value}")]
    BadTime {
        /// The time field.
        field: String,
        /// Its value.
        value: String,
    },
}

/// The longest key value, in bytes. A key names a customer, a card or a
/// terminal; it is copied into every alert and output record, and a
/// record-sized key would make them too large to produce.
pub const MAX_KEY_BYTES: usize = 1024;

/// Decodes records against a schema. Cheap to clone; shared by all keys.
#[derive(Clone, Debug)]
pub struct Decoder {
    schema: Arc<Schema>,
    time_slot: Slot,
    /// Key fields, and whether each must be present.
    key_slots: Vec<(Slot, bool)>,
    time_format: TimeFormat,
    max_record_bytes: usize,
    /// By slot: the field is a key, whose numbers keep their exact value
    /// ([`Value::exact_number`]) so that distinct keys never merge.
    exact: Vec<bool>,
    /// With several streams: the slot each event's stream goes to, and
    /// this decoder's stream.
    stream: Option<(Slot, u16)>,
}

impl Decoder {
    /// A decoder reading `time_slot` as the event time. Each `(slot, required)`
    /// in `key_slots` must hold a string, number or boolean when present, and
    /// must be present when `required`.
    pub fn new(
        schema: Arc<Schema>,
        time_slot: Slot,
        key_slots: Vec<(Slot, bool)>,
        time_format: TimeFormat,
        max_record_bytes: usize,
    ) -> Decoder {
        let mut exact = vec![false; schema.len()];
        for &(slot, _) in &key_slots {
            if let Some(e) = exact.get_mut(slot as usize) {
                *e = true;
            }
        }
        Decoder {
            schema,
            time_slot,
            key_slots,
            time_format,
            max_record_bytes,
            exact,
            stream: None,
        }
    }

    /// Marks every event it decodes as from stream `index`, in `slot`
    /// (whatever the record holds there).
    pub fn for_stream(mut self, slot: Slot, index: u16) -> Decoder {
        self.stream = Some((slot, index));
        self
    }

    /// The schema.
    pub fn schema(&self) -> &Arc<Schema> {
        &self.schema
    }

    /// Decodes one record; `seq` is its position in the input (for ordering ties).
    pub fn decode(&self, bytes: &[u8], seq: u64) -> Result<Event, DecodeError> {
        if bytes.len() > self.max_record_bytes {
            return Err(DecodeError::TooLarge {
                size: bytes.len(),
                limit: self.max_record_bytes,
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|e| DecodeError::NotUtf8(e.valid_up_to()))?;
        let text = text.trim_end_matches(['\n', '\r']);
        // Collected rather than `from_elem`, which clones a `Null` per slot
        // (a match on the value each time); past the inline four, the
        // vector's buffer is taken as it is.
        let width = self.schema.len();
        let mut fields: SmallVec<[Value; 4]> = if width <= 4 {
            SmallVec::from_elem(Value::Null, width)
        } else {
            SmallVec::from_vec((0..width).map(|_| Value::Null).collect())
        };
        let mut nested: u64 = 0;
        let mut de = serde_json::Deserializer::from_str(text);
        let top = ObjectSeed {
            node: &self.schema.root,
            slots: &mut fields,
            nested: &mut nested,
            exact: &self.exact,
            top: true,
        };
        match top
            .deserialize(&mut de)
            .and_then(|kind| de.end().map(|_| kind))
        {
            Ok(None) => {}
            Ok(Some(kind)) => return Err(DecodeError::NotAnObject(kind)),
            Err(e) => return Err(DecodeError::Json(e.to_string())),
        }
        let is_nested = |slot: Slot| slot < 64 && nested & (1 << slot) != 0;
        for &(k, required) in &self.key_slots {
            if is_nested(k) {
                return Err(DecodeError::BadKey(self.schema.path(k).to_string()));
            }
            if required && fields[k as usize].is_null() {
                return Err(DecodeError::MissingKey(self.schema.path(k).to_string()));
            }
            if let Value::Str(t) | Value::NumText(t) = &fields[k as usize]
                && t.len() > MAX_KEY_BYTES
            {
                return Err(DecodeError::KeyTooLong {
                    field: self.schema.path(k).to_string(),
                    len: t.len(),
                });
            }
        }
        if is_nested(self.time_slot) {
            return Err(DecodeError::BadTime {
                field: self.schema.path(self.time_slot).to_string(),
                value: "an object or array".into(),
            });
        }
        let time = self.read_time(&fields[self.time_slot as usize])?;
        if let Some((slot, index)) = self.stream {
            fields[slot as usize] = Value::Num(f64::from(index));
        }
        Ok(Event {
            time,
            seq,
            fields,
            raw: Arc::from(text),
        })
    }

    fn read_time(&self, v: &Value) -> Result<i64, DecodeError> {
        let field = || self.schema.path(self.time_slot).to_string();
        let parsed = match v {
            Value::Null => return Err(DecodeError::MissingTime(field())),
            Value::Str(s) => parse_time_str(s),
            Value::Num(n) => epoch_to_millis(*n, self.time_format),
            Value::Bool(_) | Value::NumText(_) => None,
        };
        parsed.ok_or_else(|| DecodeError::BadTime {
            field: field(),
            value: v.to_string(),
        })
    }
}

/// Visits an object, storing the fields whose path is in the trie. Returns
/// `Some(kind)` when the top-level value is not an object.
struct ObjectSeed<'a> {
    node: &'a TrieNode,
    slots: &'a mut [Value],
    /// Bit per slot (first 64): the field held an object or array.
    nested: &'a mut u64,
    exact: &'a [bool],
    top: bool,
}

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_> {
    type Value = Option<&'static str>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed<'_> {
    type Value = Option<&'static str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while let Some(child) = map.next_key_seed(KeySeed(self.node))? {
            match child {
                Some(node) => {
                    map.next_value_seed(FieldSeed {
                        node,
                        slots: &mut *self.slots,
                        nested: &mut *self.nested,
                        exact: self.exact,
                    })?;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(None)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(self.top.then_some("array"))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(self.top.then_some("boolean"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(self.top.then_some("number"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(self.top.then_some("number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(self.top.then_some("number"))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(self.top.then_some("string"))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(self.top.then_some("null"))
    }
}

/// Finds a key among the trie node's children without allocating.
struct KeySeed<'a>(&'a TrieNode);

impl<'de, 'a> DeserializeSeed<'de> for KeySeed<'a> {
    type Value = Option<&'a TrieNode>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, 'a> Visitor<'de> for KeySeed<'a> {
    type Value = Option<&'a TrieNode>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.child(v))
    }
}

/// A field's value: a scalar stored in its slot, or an object to descend into.
struct FieldSeed<'a> {
    node: &'a TrieNode,
    slots: &'a mut [Value],
    nested: &'a mut u64,
    exact: &'a [bool],
}

impl FieldSeed<'_> {
    /// Whether the field is a key whose number must keep its exact value.
    fn is_exact(&self) -> bool {
        self.node
            .slot
            .is_some_and(|s| self.exact.get(s as usize).copied().unwrap_or(false))
    }

    fn store(self, v: Value) {
        if let Some(s) = self.node.slot {
            self.slots[s as usize] = v;
        }
    }

    /// The field is an object or array where the rules read a value.
    fn mark_nested(&mut self) {
        if let Some(s) = self.node.slot.filter(|s| *s < 64) {
            *self.nested |= 1 << s;
        }
    }
}

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if !self.is_exact() {
            return d.deserialize_any(self);
        }
        // A key field: a number is read from its text, which serde's number
        // visitors no longer have (they give an f64 for anything past u64).
        let raw = <&serde_json::value::RawValue>::deserialize(d)?;
        if let Some(v) = Value::exact_number(raw.get()) {
            self.store(v);
            return Ok(());
        }
        let mut inner = serde_json::Deserializer::from_str(raw.get());
        de::Deserializer::deserialize_any(&mut inner, self).map_err(de::Error::custom)
    }
}

impl<'de> Visitor<'de> for FieldSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.store(Value::Bool(v));
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.store(Value::Num(v as f64));
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.store(Value::Num(v as f64));
        Ok(())
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.store(Value::Num(v));
        Ok(())
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.store(Value::Str(CompactString::from(v)));
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.mark_nested();
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(mut self, map: A) -> Result<(), A::Error> {
        self.mark_nested();
        ObjectSeed {
            node: self.node,
            slots: self.slots,
            nested: self.nested,
            exact: self.exact,
            top: false,
        }
        .visit_map(map)
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::FieldPath;

    fn decoder() -> Decoder {
        let mut s = Schema::default();
        let key = s.intern(&FieldPath::parse("card.id").unwrap());
        let time = s.intern(&FieldPath::single("ts"));
        s.intern(&FieldPath::single("amount"));
        Decoder::new(Arc::new(s), time, vec![(key, true)], TimeFormat::Auto, 1024)
    }

    #[test]
    fn keeps_named_fields_and_skips_the_rest() {
        let e = decoder()
            .decode(br#"{"x":[1,{"y":2}],"card":{"id":"c1","z":1},"ts":"2018-04-01T00:00:31","amount":5.5}"#, 7)
            .unwrap();
        assert_eq!(e.fields[0], Value::from("c1"));
        assert_eq!(e.fields[2], Value::Num(5.5));
        assert_eq!(e.time, 1_522_540_831_000);
        assert_eq!(e.seq, 7);
    }

    #[test]
    fn reports_each_kind_of_bad_record() {
        let d = decoder();
        let err = |b: &[u8]| d.decode(b, 0).unwrap_err();
        assert!(matches!(err(b"{\"card\":"), DecodeError::Json(_)));
        assert!(matches!(err(b"[1,2]"), DecodeError::NotAnObject("array")));
        assert!(matches!(err(b"{\"ts\":1}"), DecodeError::MissingKey(k) if k == "card.id"));
        assert!(matches!(
            err(b"{\"card\":{\"id\":1}}"),
            DecodeError::MissingTime(_)
        ));
        assert!(matches!(
            err(b"{\"card\":{\"id\":1},\"ts\":\"soon\"}"),
            DecodeError::BadTime { .. }
        ));
        assert!(matches!(err(&[b'{'; 2000]), DecodeError::TooLarge { .. }));
        assert!(matches!(err(b"{\"a\":\"\xff\"}"), DecodeError::NotUtf8(_)));
        assert!(matches!(err(b"{} {}"), DecodeError::Json(_)));
        assert!(matches!(
            err(br#"{"card":{"id":{"x":1}},"ts":1}"#),
            DecodeError::BadKey(_)
        ));
        assert!(matches!(
            err(br#"{"card":{"id":[1]},"ts":1}"#),
            DecodeError::BadKey(_)
        ));
        assert!(matches!(
            err(br#"{"card":{"id":1},"ts":{"s":1}}"#),
            DecodeError::BadTime { .. }
        ));
    }

    #[test]
    fn numeric_keys_keep_their_exact_value() {
        let d = decoder();
        let key = |b: &str| d.decode(b.as_bytes(), 0).unwrap().fields[0].clone();
        let a = key(r#"{"card":{"id":9007199254740992},"ts":1}"#);
        let b = key(r#"{"card":{"id":9007199254740993},"ts":1}"#);
        assert_eq!(a, Value::Num(9_007_199_254_740_992.0));
        assert_eq!(b, Value::NumText("9007199254740993".into()));
        assert_eq!(
            key(r#"{"card":{"id": 1.00000000000000000001 },"ts":1}"#),
            Value::NumText("1.00000000000000000001".into())
        );
        assert_eq!(key(r#"{"card":{"id":"x\"y"},"ts":1}"#), Value::from("x\"y"));
        assert_eq!(key(r#"{"card":{"id":true},"ts":1}"#), Value::Bool(true));
        // Other fields are plain numbers.
        let e = d
            .decode(br#"{"card":{"id":1},"ts":1,"amount":9007199254740993}"#, 0)
            .unwrap();
        assert_eq!(e.fields[2], Value::Num(9_007_199_254_740_992.0));
        assert!(matches!(
            d.decode(br#"{"card":{"id":[1]},"ts":1}"#, 0),
            Err(DecodeError::BadKey(_))
        ));
        assert!(matches!(
            d.decode(br#"{"card":{"id":null},"ts":1}"#, 0),
            Err(DecodeError::MissingKey(_))
        ));
        let long = format!(
            r#"{{"card":{{"id":"{}"}},"ts":1}}"#,
            "k".repeat(MAX_KEY_BYTES + 1)
        );
        let d = Decoder::new(
            d.schema.clone(),
            1,
            vec![(0, true)],
            TimeFormat::Auto,
            1 << 20,
        );
        assert!(matches!(
            d.decode(long.as_bytes(), 0),
            Err(DecodeError::KeyTooLong { len, .. }) if len == MAX_KEY_BYTES + 1
        ));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let mut deep = Vec::new();
        for _ in 0..200 {
            deep.extend_from_slice(b"{\"a\":");
        }
        assert!(decoder().decode(&deep, 0).is_err());
    }
}
