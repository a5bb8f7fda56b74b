//! Alerts: what a rule emits for a match, with its evidence. The JSON form is
//! the stable output schema (see `docs/alerts.md`); its `id` is a hash of the
//! rule, the key and the matched events, so the same match always has the
//! same id and consumers can deduplicate.

use crate::event::{Event, EventTime, Value, format_time};
use crate::rules::ast::Severity;
use serde::ser::{Serialize, SerializeMap, Serializer};
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
}

impl Alert {
    /// The deterministic id for a rule, key and matched events.
    pub fn compute_id(
        rule: &str,
        key: &Value,
        kind: AlertKind,
        matches: &[(Arc<str>, Vec<Arc<Event>>)],
    ) -> String {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(rule.as_bytes());
        h.update(&[0]);
        h.update(key.to_string().as_bytes());
        h.update(&[0, kind as u8]);
        for (stage, events) in matches {
            h.update(stage.as_bytes());
            h.update(&[0]);
            for e in events {
                h.update(&e.time.to_le_bytes());
                h.update(&xxhash_rust::xxh3::xxh3_64(e.raw.as_bytes()).to_le_bytes());
            }
        }
        format!("{:032x}", h.digest128())
    }

    /// One line of JSON.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

struct RawEvents<'a>(&'a [Arc<Event>]);

impl Serialize for RawEvents<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for e in self.0 {
            // The record as it was read; it was valid JSON when decoded.
            match serde_json::value::RawValue::from_string(e.raw.to_string()) {
                Ok(raw) => seq.serialize_element(&raw)?,
                Err(_) => seq.serialize_element(&*e.raw)?,
            }
        }
        seq.end()
    }
}

struct Pairs<'a, T>(&'a [(Arc<str>, T)]);

impl Serialize for Pairs<'_, Vec<Arc<Event>>> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            m.serialize_entry(&**k, &RawEvents(v))?;
        }
        m.end()
    }
}

impl Serialize for Pairs<'_, Value> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            m.serialize_entry(&**k, &v.to_json())?;
        }
        m.end()
    }
}

impl Serialize for Alert {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(9))?;
        m.serialize_entry("id", &self.id)?;
        m.serialize_entry("rule", &*self.rule)?;
        m.serialize_entry("key", &self.key.to_json())?;
        m.serialize_entry("event_time", &format_time(self.event_time))?;
        m.serialize_entry("severity", &self.severity)?;
        m.serialize_entry("score", &crate::event::json_number(self.score))?;
        m.serialize_entry(
            "kind",
            match self.kind {
                AlertKind::Match => "match",
                AlertKind::Timeout => "timeout",
            },
        )?;
        m.serialize_entry("matches", &Pairs(&self.matches))?;
        m.serialize_entry("values", &Pairs(&self.values))?;
        m.end()
    }
}
