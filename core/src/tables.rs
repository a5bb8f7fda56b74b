//! Reference tables the rules read (`profiles.HOME_COUNTRY`,
//! `lookup(terminals, TERMINAL_ID).risk`): the latest row per key of data
//! another system keeps (customer profiles, terminals, merchants). Each key
//! keeps its row's versions, each valid from the row's time, so a lookup is
//! *as of the event's time* (a temporal join): a replay over the same rows
//! gives the service's alerts, and a profile changed at 10:00 does not
//! change what a 09:59 payment is compared with.
//!
//! [`Tables`] is shared by the engines that read it and written by whoever
//! loads rows (a file for replay, the table's topic in the service); it
//! holds no I/O.

use crate::event::{EventTime, FieldPath, Value, parse_time_str};
use crate::lists::list_key;
use compact_str::CompactString;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// A row as read: its fields by name.
pub type Row = serde_json::Map<String, serde_json::Value>;

/// One version of a key's row.
#[derive(Clone, Debug)]
struct Version {
    /// The event time (ms) from which it applies.
    at: EventTime,
    /// The row (`None`: deleted from `at`).
    row: Option<Arc<Row>>,
}

/// How a table's rows are keyed and timed (from its `table` declaration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSpec {
    /// The table.
    pub name: String,
    /// The field of a row that is its key.
    pub key: FieldPath,
    /// The field of a row that says from when it applies (`None`: every
    /// row applies from the beginning of time).
    pub time: Option<FieldPath>,
}

/// Why a row cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    /// Not a JSON object.
    #[error("not a JSON object: {0}")]
    NotAnObject(String),
    /// The key field is missing, null, or not a string, number or boolean.
    #[error("no key: field `{0}` is missing, null, or not a string, number or boolean")]
    NoKey(String),
    /// The time field is missing or not a time.
    #[error("no time: field `{0}` is missing or not a time (RFC 3339, or epoch ms or s)")]
    NoTime(String),
}

/// Every declared table's rows, shared by the engines that read them.
#[derive(Debug, Default)]
pub struct Tables {
    inner: RwLock<BTreeMap<String, hashbrown::HashMap<CompactString, Vec<Version>>>>,
}

/// The value at `path` in `row` (`Null` if absent, or not a string, number
/// or boolean).
fn field_value(row: &Row, path: &FieldPath) -> Value {
    let mut parts = path.0.iter();
    let Some(first) = parts.next() else {
        return Value::Null;
    };
    let mut at = row.get(first.as_str());
    for p in parts {
        at = at
            .and_then(|v| v.as_object())
            .and_then(|o| o.get(p.as_str()));
    }
    match at {
        Some(serde_json::Value::String(s)) => Value::Str(CompactString::from(s.as_str())),
        Some(serde_json::Value::Bool(b)) => Value::Bool(*b),
        Some(serde_json::Value::Number(n)) => n.as_f64().map_or(Value::Null, Value::Num),
        _ => Value::Null,
    }
}

/// A time field's value: an RFC 3339 string or an epoch number (seconds
/// below 10^11, else milliseconds, as the streams' `time format auto`).
fn row_time(row: &Row, path: &FieldPath) -> Option<EventTime> {
    match field_value(row, path) {
        Value::Str(s) => parse_time_str(&s),
        Value::Num(n) => crate::event::epoch_to_millis(n, crate::event::TimeFormat::Auto),
        _ => None,
    }
}

impl Tables {
    /// No rows.
    pub fn new() -> Tables {
        Tables::default()
    }

    /// Field `field` of the row `key` had in `table` at event time `t`
    /// (`Null`: no such row then, the field is absent, or `key` is null).
    pub fn get(&self, table: &str, key: &Value, t: EventTime, field: &FieldPath) -> Value {
        let owned;
        let key = match key {
            Value::Str(s) => s.as_str(),
            other => match list_key(other) {
                Some(k) => {
                    owned = k;
                    owned.as_str()
                }
                None => return Value::Null,
            },
        };
        let tables = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let Some(versions) = tables.get(table).and_then(|rows| rows.get(key)) else {
            return Value::Null;
        };
        // Versions are in time order: the last one from at or before `t`.
        let i = versions.partition_point(|v| v.at <= t);
        match i.checked_sub(1).and_then(|i| versions[i].row.as_ref()) {
            Some(row) => field_value(row, field),
            None => Value::Null,
        }
    }

    /// Records `row` (or, for `None`, the key's deletion) as the version of
    /// `key` in `table` from event time `at`; a version already there from
    /// the same time is replaced.
    pub fn put(&self, table: &str, key: &str, at: EventTime, row: Option<Row>) {
        let mut tables = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let versions = tables
            .entry(table.to_string())
            .or_default()
            .entry(CompactString::from(key))
            .or_default();
        let version = Version {
            at,
            row: row.map(Arc::new),
        };
        let i = versions.partition_point(|v| v.at < at);
        match versions.get_mut(i) {
            Some(v) if v.at == at => *v = version,
            _ => versions.insert(i, version),
        }
    }

    /// Reads one row of `spec`'s table as its key and version time.
    pub fn key_and_time(spec: &TableSpec, row: &Row) -> Result<(String, EventTime), RowError> {
        let key = list_key(&field_value(row, &spec.key))
            .ok_or_else(|| RowError::NoKey(spec.key.to_string()))?;
        let at = match &spec.time {
            Some(path) => row_time(row, path).ok_or_else(|| RowError::NoTime(path.to_string()))?,
            None => EventTime::MIN,
        };
        Ok((key.to_string(), at))
    }

    /// Loads one row of `spec`'s table, given as a JSON object.
    pub fn load(&self, spec: &TableSpec, json: &str) -> Result<(), RowError> {
        let row: Row = match serde_json::from_str(json) {
            Ok(serde_json::Value::Object(o)) => o,
            Ok(_) => return Err(RowError::NotAnObject("another JSON value".into())),
            Err(e) => return Err(RowError::NotAnObject(e.to_string())),
        };
        let (key, at) = Tables::key_and_time(spec, &row)?;
        self.put(&spec.name, &key, at, Some(row));
        Ok(())
    }

    /// How many keys `table` has a row for (in any version).
    pub fn len(&self, table: &str) -> usize {
        let tables = self.inner.read().unwrap_or_else(|p| p.into_inner());
        tables.get(table).map_or(0, |rows| rows.len())
    }

    /// Whether `table` has no rows.
    pub fn is_empty(&self, table: &str) -> bool {
        self.len(table) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TableSpec {
        TableSpec {
            name: "profiles".into(),
            key: FieldPath::single("CUSTOMER_ID"),
            time: Some(FieldPath::single("UPDATED_AT")),
        }
    }

    fn country(t: &Tables, key: Value, at: EventTime) -> Value {
        t.get("profiles", &key, at, &FieldPath::single("HOME_COUNTRY"))
    }

    #[test]
    fn a_lookup_sees_the_row_as_of_the_events_time() {
        let t = Tables::new();
        let s = spec();
        t.load(
            &s,
            r#"{"CUSTOMER_ID": 7, "UPDATED_AT": 1000, "HOME_COUNTRY": "FR"}"#,
        )
        .unwrap();
        t.load(
            &s,
            r#"{"CUSTOMER_ID": 7, "UPDATED_AT": 5000, "HOME_COUNTRY": "DE"}"#,
        )
        .unwrap();
        // Epoch numbers below 10^11 are seconds: 1000 s and 5000 s.
        assert_eq!(country(&t, Value::Num(7.0), 999_999), Value::Null);
        assert_eq!(
            country(&t, Value::Num(7.0), 1_000_000),
            Value::Str("FR".into())
        );
        assert_eq!(
            country(&t, Value::Str("7".into()), 4_999_999),
            Value::Str("FR".into())
        );
        assert_eq!(
            country(&t, Value::Num(7.0), 5_000_000),
            Value::Str("DE".into())
        );
        assert_eq!(country(&t, Value::Num(8.0), 5_000_000), Value::Null);
        assert_eq!(country(&t, Value::Null, 5_000_000), Value::Null);
        t.put("profiles", "7", 6_000_000, None);
        assert_eq!(country(&t, Value::Num(7.0), 6_000_000), Value::Null);
        assert_eq!(
            country(&t, Value::Num(7.0), 5_500_000),
            Value::Str("DE".into())
        );
        assert_eq!(t.len("profiles"), 1);
    }

    #[test]
    fn rows_without_a_key_or_time_are_refused() {
        let t = Tables::new();
        let s = spec();
        assert_eq!(
            t.load(&s, r#"{"UPDATED_AT": 1, "HOME_COUNTRY": "FR"}"#),
            Err(RowError::NoKey("CUSTOMER_ID".into()))
        );
        assert_eq!(
            t.load(&s, r#"{"CUSTOMER_ID": 1, "UPDATED_AT": "soon"}"#),
            Err(RowError::NoTime("UPDATED_AT".into()))
        );
        assert!(matches!(t.load(&s, "[1]"), Err(RowError::NotAnObject(_))));
        assert!(t.is_empty("profiles"));
    }

    #[test]
    fn nested_fields_and_untimed_tables() {
        let t = Tables::new();
        let s = TableSpec {
            name: "terminals".into(),
            key: FieldPath::single("id"),
            time: None,
        };
        t.load(&s, r#"{"id": "T1", "risk": {"score": 0.9}, "tags": [1]}"#)
            .unwrap();
        let get = |path: &str| {
            t.get(
                "terminals",
                &Value::Str("T1".into()),
                EventTime::MIN + 1,
                &FieldPath::parse(path).unwrap(),
            )
        };
        assert_eq!(get("risk.score"), Value::Num(0.9));
        assert_eq!(get("tags"), Value::Null);
        assert_eq!(get("missing"), Value::Null);
    }
}
