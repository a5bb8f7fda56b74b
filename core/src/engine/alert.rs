//! Alerts: what a rule emits for a match, with its evidence. The JSON form is
//! the stable output schema (see `docs/alerts.md`); its `id` is a hash of the
//! rule, the key and the matched events, so the same match always has the
//! same id and consumers can deduplicate.

use crate::event::{Event, EventTime, Value, format_time};
use crate::rules::Severity;
use std::fmt::Write as _;
use std::sync::Arc;

/// Why an alert was raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertKind {
    /// The pattern matched.
    Match,
    /// A partial match ran out of time (rules with `report timeouts`).
    Timeout,
}

/// One alert.
#[derive(Clone, Debug)]
pub struct Alert {
    /// Deterministic id (32 hex digits).
    pub id: String,
    /// Rule name.
    pub rule: Arc<str>,
    /// The key the rule matched on.
    pub key: Value,
    /// Event time at which the alert fired.
    pub event_time: EventTime,
    /// Severity.
    pub severity: Severity,
    /// Score contribution.
    pub score: f64,
    /// Match or timeout.
    pub kind: AlertKind,
    /// Matched events per stage, stages in pattern order.
    pub matches: Vec<(Arc<str>, Vec<Arc<Event>>)>,
    /// Computed payload values.
    pub values: Vec<(Arc<str>, Value)>,
    /// Webhook endpoints the rule names (`notify`).
    pub notify: Arc<[Arc<str>]>,
    /// Raised by a rule in `mode shadow`: it goes to the shadow topic.
    pub shadow: bool,
}

impl Alert {
    /// The deterministic id for a rule, key and matched events.
    pub fn compute_id(
        rule: &str,
        key: &Value,
        kind: AlertKind,
        matches: &[(Arc<str>, Vec<Arc<Event>>)],
    ) -> String {
        // The id is the XXH3-128 of this byte string. Built whole and hashed
        // once, it costs a fraction of the streaming hasher's per-piece
        // updates (the same digest: XXH3 does not depend on the chunking).
        let mut text: Vec<u8> = Vec::with_capacity(256);
        text.extend_from_slice(rule.as_bytes());
        text.push(0);
        // The key's display form, written in place (no string built).
        let _ = write!(ByteWriter(&mut text), "{key}");
        text.extend_from_slice(&[0, kind as u8]);
        for (stage, events) in matches {
            text.extend_from_slice(stage.as_bytes());
            text.push(0);
            for e in events {
                text.extend_from_slice(&e.time.to_le_bytes());
                text.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(e.raw.as_bytes()).to_le_bytes());
            }
        }
        hex32(xxhash_rust::xxh3::xxh3_128(&text))
    }

    /// One line for a person: key, time, kind if not a match, and the
    /// payload values (`key 7 at 2018-04-10T10:00:00Z: amount = 900`).
    pub fn summary(&self) -> String {
        let mut line = format!("key {} at {}", self.key, format_time(self.event_time));
        if self.kind != AlertKind::Match {
            line.push_str(" (timeout)");
        }
        for (i, (name, v)) in self.values.iter().enumerate() {
            line.push_str(if i == 0 { ": " } else { ", " });
            let _ = write!(line, "{name} = {v}");
        }
        line
    }

    /// One line of JSON (no trailing newline).
    pub fn to_json_line(&self) -> String {
        let mut out = Vec::with_capacity(256);
        self.write_json(&mut out);
        // Everything written is UTF-8: serde_json output and event text that was
        // validated as UTF-8 when it was decoded.
        String::from_utf8(out).unwrap_or_default()
    }

    /// Writes the alert as JSON. Matched events are written as they were
    /// read: their text was valid JSON when decoded, so it is copied, not
    /// re-parsed.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        self.write_json_omitting(out, &|_| false, false);
    }

    /// Writes the alert as JSON of at most `limit` bytes where it can (an
    /// alert is a Kafka record, and a record over the producer's limit
    /// cannot be produced). Past the limit, the largest matched events are
    /// left out first, each replaced by a marker with its size and hash
    /// (`{"tripline.omitted":{"bytes":N,"xxh3":"…"}}`), then long string
    /// values; the alert then says how much it left out
    /// (`"truncated":{"events":N,"bytes":M}`). Its id, rule, key and times
    /// are always whole. Returns whether anything was left out.
    pub fn write_json_within(&self, out: &mut Vec<u8>, limit: usize) -> bool {
        let start = out.len();
        self.write_json(out);
        if out.len() - start <= limit {
            return false;
        }
        let mut excess = out.len() - start - limit + TRUNCATED_NOTE;
        let mut sizes: Vec<(usize, *const Event)> = self
            .matches
            .iter()
            .flat_map(|(_, events)| events.iter())
            .map(|e| (e.raw.len(), Arc::as_ptr(e)))
            .collect();
        sizes.sort_unstable_by_key(|&(len, _)| std::cmp::Reverse(len));
        let mut omitted: Vec<*const Event> = Vec::new();
        for (len, e) in sizes {
            if excess == 0 {
                break;
            }
            excess = excess.saturating_sub(len.saturating_sub(OMITTED_MARKER));
            omitted.push(e);
        }
        let omit_values = excess > 0;
        out.truncate(start);
        self.write_json_omitting(out, &|e| omitted.contains(&Arc::as_ptr(e)), omit_values);
        true
    }

    fn write_json_omitting(
        &self,
        out: &mut Vec<u8>,
        omitted: &dyn Fn(&Arc<Event>) -> bool,
        omit_values: bool,
    ) {
        // serde_json only fails on non-string keys or writer errors; neither
        // can happen for strings and values written to a Vec.
        out.extend_from_slice(b"{\"id\":");
        put_json(out, &self.id.as_str());
        out.extend_from_slice(b",\"rule\":");
        put_json(out, &&*self.rule);
        out.extend_from_slice(b",\"key\":");
        match &self.key {
            // Valid JSON number text, kept as read (no f64 holds it).
            Value::NumText(t) => out.extend_from_slice(t.as_bytes()),
            key => put_json(out, &key.to_json()),
        }
        out.extend_from_slice(b",\"event_time\":");
        put_json(out, &format_time(self.event_time).as_str());
        out.extend_from_slice(b",\"severity\":");
        put_json(out, &self.severity);
        out.extend_from_slice(b",\"score\":");
        put_json(out, &crate::event::json_number(self.score));
        out.extend_from_slice(match self.kind {
            AlertKind::Match => b",\"kind\":\"match\",\"matches\":{",
            AlertKind::Timeout => b",\"kind\":\"timeout\",\"matches\":{",
        });
        let (mut left_out, mut left_out_bytes) = (0usize, 0usize);
        for (i, (stage, events)) in self.matches.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            put_json(out, &&**stage);
            out.extend_from_slice(b":[");
            for (j, e) in events.iter().enumerate() {
                if j > 0 {
                    out.push(b',');
                }
                if omitted(e) {
                    left_out += 1;
                    left_out_bytes += e.raw.len();
                    write_omitted(out, e.raw.as_bytes());
                } else {
                    out.extend_from_slice(e.raw.as_bytes());
                }
            }
            out.push(b']');
        }
        out.extend_from_slice(b"},\"values\":{");
        for (i, (name, v)) in self.values.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            put_json(out, &&**name);
            out.push(b':');
            match v {
                Value::Str(text) if omit_values && text.len() > LONG_VALUE => {
                    left_out_bytes += text.len();
                    write_omitted(out, text.as_bytes());
                }
                v => put_json(out, &v.to_json()),
            }
        }
        out.push(b'}');
        if !self.notify.is_empty() {
            out.extend_from_slice(b",\"notify\":");
            put_json(out, &self.notify);
        }
        if self.shadow {
            out.extend_from_slice(b",\"mode\":\"shadow\"");
        }
        if left_out_bytes > 0 {
            let _ = write!(
                ByteWriter(out),
                ",\"truncated\":{{\"events\":{left_out},\"bytes\":{left_out_bytes}}}"
            );
        }
        out.push(b'}');
    }
}

/// Room the `truncated` note of a bounded alert takes.
const TRUNCATED_NOTE: usize = 64;
/// Room the marker of a left-out event or value takes.
const OMITTED_MARKER: usize = 80;
/// A string value longer than this may be left out of an oversized alert.
const LONG_VALUE: usize = 256;

/// The marker standing for left-out text: its size and XXH3-64 hash, so
/// that it can be matched with the input record.
fn write_omitted(out: &mut Vec<u8>, text: &[u8]) {
    let _ = write!(
        ByteWriter(out),
        "{{\"tripline.omitted\":{{\"bytes\":{},\"xxh3\":\"{:016x}\"}}}}",
        text.len(),
        xxhash_rust::xxh3::xxh3_64(text)
    );
}

/// Appends formatted text to a byte buffer.
struct ByteWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// The 32 lower-case hex digits of `v` (what `{:032x}` prints, without the
/// formatting machinery: an id is computed for every alert).
fn hex32(v: u128) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 32];
    for (i, byte) in v.to_be_bytes().into_iter().enumerate() {
        text[2 * i] = DIGITS[(byte >> 4) as usize];
        text[2 * i + 1] = DIGITS[(byte & 0xf) as usize];
    }
    // Hex digits are ASCII: the conversion cannot fail.
    std::str::from_utf8(&text).unwrap_or_default().to_owned()
}

/// Appends `v` as JSON. serde_json fails only on non-string map keys or
/// writer errors, neither possible for these values written to a Vec.
fn put_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    let _ = serde_json::to_writer(out, v);
}

#[cfg(test)]
mod tests {
    use super::*;
    use smallvec::smallvec;

    #[test]
    fn json_is_valid_ordered_and_carries_events_verbatim() {
        let ev = |raw: &str, t| {
            Arc::new(Event {
                time: t,
                seq: 0,
                fields: smallvec![],
                raw: Arc::from(raw),
            })
        };
        let a = Alert {
            id: "00ff".into(),
            rule: Arc::from("r\"1"),
            key: Value::from("k\n"),
            event_time: 1500,
            severity: Severity::High,
            score: 2.5,
            kind: AlertKind::Timeout,
            matches: vec![
                (Arc::from("a"), vec![ev(r#"{"x": 1,  "y":"é"}"#, 1000)]),
                (
                    Arc::from("b"),
                    vec![ev(r#"{"x":2}"#, 1200), ev(r#"{"x":3}"#, 1500)],
                ),
            ],
            values: vec![
                (Arc::from("n"), Value::Num(3.0)),
                (Arc::from("s"), Value::Null),
            ],
            notify: Arc::from([]),
            shadow: false,
        };
        let line = a.to_json_line();
        let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(v["rule"], "r\"1");
        assert_eq!(v["key"], "k\n");
        assert_eq!(v["event_time"], "1970-01-01T00:00:01.500Z");
        assert_eq!(v["severity"], "high");
        assert_eq!(v["kind"], "timeout");
        assert_eq!(v["matches"]["b"][1]["x"], 3);
        assert_eq!(v["values"]["n"], 3);
        assert!(v["values"]["s"].is_null());
        assert!(
            line.contains(r#"{"x": 1,  "y":"é"}"#),
            "events verbatim: {line}"
        );
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert_eq!(keys.len(), 9);
        assert!(line.starts_with(r#"{"id":"00ff","rule":"#), "{line}");
        let notifying = Alert {
            notify: Arc::from([Arc::from("fraud-desk"), Arc::from("ops")]),
            ..a.clone()
        };
        let line = notifying.to_json_line();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["notify"], serde_json::json!(["fraud-desk", "ops"]));
        assert!(
            line.ends_with(r#""values":{"n":3,"s":null},"notify":["fraud-desk","ops"]}"#),
            "{line}"
        );
        // A shadow rule's alert says so, last; the same alert of a live
        // rule says nothing (its bytes are as before modes existed).
        let shadow = Alert {
            shadow: true,
            ..a.clone()
        };
        let line = shadow.to_json_line();
        assert!(line.ends_with(r#","mode":"shadow"}"#), "{line}");
        assert_eq!(shadow.id, a.id);
        for v in [0u128, 1, 0xdead_beef, u128::MAX, 1 << 127] {
            assert_eq!(hex32(v), format!("{v:032x}"));
        }
        // The id is the streaming XXH3-128 of rule, key, kind and events, as
        // it was first defined (ids must not change between versions).
        let streamed = |a: &Alert| {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(a.rule.as_bytes());
            h.update(&[0]);
            h.update(a.key.to_string().as_bytes());
            h.update(&[0, a.kind as u8]);
            for (stage, events) in &a.matches {
                h.update(stage.as_bytes());
                h.update(&[0]);
                for e in events {
                    h.update(&e.time.to_le_bytes());
                    h.update(&xxhash_rust::xxh3::xxh3_64(e.raw.as_bytes()).to_le_bytes());
                }
            }
            format!("{:032x}", h.digest128())
        };
        let long_key = Value::from("k".repeat(300).as_str());
        for (key, alert) in [
            (a.key.clone(), &a),
            (long_key.clone(), &a),
            (Value::Num(7.5), &a),
        ] {
            let id = Alert::compute_id(&alert.rule, &key, alert.kind, &alert.matches);
            let mut with_key = alert.clone();
            with_key.key = key;
            assert_eq!(id, streamed(&with_key));
        }
    }
}
