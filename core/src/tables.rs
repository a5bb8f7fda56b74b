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
use std::sync::RwLock;

/// A row as read: its fields by name.
pub type Row = serde_json::Map<String, serde_json::Value>;

/// A row as held: its fields that are strings, numbers or booleans, by
/// path (`a.b` for field `b` of object `a`), sorted by path. Flat and
/// without the JSON's other values, it takes a fraction of the parsed
/// JSON's memory and is read without walking objects.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HeldRow(Box<[(CompactString, Value)]>);

impl HeldRow {
    /// The row of `row`'s scalar fields.
    pub fn of(row: &Row) -> HeldRow {
        fn flatten(prefix: &str, row: &Row, out: &mut Vec<(CompactString, Value)>) {
            for (k, v) in row {
                let path = if prefix.is_empty() {
                    CompactString::from(k.as_str())
                } else {
                    let mut p = CompactString::from(prefix);
                    p.push('.');
                    p.push_str(k);
                    p
                };
                match v {
                    serde_json::Value::Object(o) => flatten(&path, o, out),
                    other => {
                        let value = scalar(other);
                        if !value.is_null() {
                            out.push((path, value));
                        }
                    }
                }
            }
        }
        let mut fields = Vec::new();
        flatten("", row, &mut fields);
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        HeldRow(fields.into_boxed_slice())
    }

    /// The value at `path` (`a.b`), or `Null`.
    pub fn get(&self, path: &str) -> Value {
        match self.0.binary_search_by(|(p, _)| p.as_str().cmp(path)) {
            Ok(i) => self.0[i].1.clone(),
            Err(_) => Value::Null,
        }
    }

    /// The row as a JSON object of its paths.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.0
                .iter()
                .map(|(p, v)| {
                    let json = match v {
                        Value::Str(s) => serde_json::Value::String(s.to_string()),
                        Value::Bool(b) => serde_json::Value::Bool(*b),
                        Value::Num(n) => serde_json::Number::from_f64(*n)
                            .map_or(serde_json::Value::Null, serde_json::Value::Number),
                        Value::NumText(t) => serde_json::from_str(t)
                            .unwrap_or_else(|_| serde_json::Value::String(t.to_string())),
                        Value::Null => serde_json::Value::Null,
                    };
                    (p.to_string(), json)
                })
                .collect(),
        )
    }
}

/// A JSON scalar as a value (`Null` for objects and arrays).
fn scalar(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::String(s) => Value::Str(CompactString::from(s.as_str())),
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => n.as_f64().map_or(Value::Null, Value::Num),
        _ => Value::Null,
    }
}

/// One version of a key's row.
#[derive(Clone, Debug)]
struct Version {
    /// The event time (ms) from which it applies.
    at: EventTime,
    /// The row (`None`: deleted from `at`).
    row: Option<Box<HeldRow>>,
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

/// Where the tables' row versions are held: in memory ([`MemoryRows`],
/// the default), or on disk for tables larger than memory (the service's
/// RocksDB store). Keys are the text [`list_key`] gives.
pub trait RowStore: Send + Sync + std::fmt::Debug {
    /// Calls `f` with the version of `key`'s row in `table` in force at
    /// event time `t`: the latest from at or before `t` (`None`: no row
    /// then, or deleted).
    fn with_row_at(
        &self,
        table: &str,
        key: &str,
        t: EventTime,
        f: &mut dyn FnMut(Option<&HeldRow>),
    );
    /// Records `row` (`None`: the key's deletion) as the version of `key`
    /// from `at`, replacing one from the same time.
    fn put(&self, table: &str, key: &str, at: EventTime, row: Option<HeldRow>);
    /// Drops the versions no event from `from` on can see: those before
    /// the last version at or before `from`.
    fn forget_before(&self, table: &str, key: &str, from: EventTime);
    /// The versions of `key`'s row, in time order.
    fn versions(&self, table: &str, key: &str) -> Vec<(EventTime, Option<HeldRow>)>;
    /// How many keys `table` has a row for (in any version).
    fn len(&self, table: &str) -> usize;
    /// Where the store's copy of a source's partition ends (the next
    /// offset to read), for a store that keeps its rows across restarts;
    /// `None` (the default): read the partition from its beginning.
    fn position(&self, _source: &str, _partition: i32) -> Option<i64> {
        None
    }
    /// Records that the records of `source`'s `partition` before `next`
    /// are in the store. A store that keeps its rows across restarts must
    /// never keep a position past rows it lost.
    fn set_position(&self, _source: &str, _partition: i32, _next: i64) {}
    /// Forgets every row and position (the sources went back: a topic
    /// deleted and made again).
    fn clear(&self);
}

/// Row versions in memory: per table, per key, in time order.
#[derive(Debug, Default)]
pub struct MemoryRows {
    inner: RwLock<BTreeMap<String, hashbrown::HashMap<CompactString, Vec<Version>>>>,
}

impl RowStore for MemoryRows {
    fn with_row_at(
        &self,
        table: &str,
        key: &str,
        t: EventTime,
        f: &mut dyn FnMut(Option<&HeldRow>),
    ) {
        let tables = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let Some(versions) = tables.get(table).and_then(|rows| rows.get(key)) else {
            return f(None);
        };
        // Versions are in time order: the last one from at or before `t`.
        let i = versions.partition_point(|v| v.at <= t);
        f(i.checked_sub(1).and_then(|i| versions[i].row.as_deref()))
    }

    fn put(&self, table: &str, key: &str, at: EventTime, row: Option<HeldRow>) {
        let mut tables = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let versions = tables
            .entry(table.to_string())
            .or_default()
            .entry(CompactString::from(key))
            .or_default();
        let version = Version {
            at,
            row: row.map(Box::new),
        };
        let i = versions.partition_point(|v| v.at < at);
        match versions.get_mut(i) {
            Some(v) if v.at == at => *v = version,
            _ => versions.insert(i, version),
        }
    }

    fn forget_before(&self, table: &str, key: &str, from: EventTime) {
        let mut tables = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if let Some(versions) = tables.get_mut(table).and_then(|rows| rows.get_mut(key)) {
            let seen = versions.partition_point(|v| v.at <= from);
            if seen > 1 {
                versions.drain(..seen - 1);
            }
        }
    }

    fn versions(&self, table: &str, key: &str) -> Vec<(EventTime, Option<HeldRow>)> {
        let tables = self.inner.read().unwrap_or_else(|p| p.into_inner());
        tables
            .get(table)
            .and_then(|rows| rows.get(key))
            .map(|v| {
                v.iter()
                    .map(|v| (v.at, v.row.as_deref().cloned()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn len(&self, table: &str) -> usize {
        let tables = self.inner.read().unwrap_or_else(|p| p.into_inner());
        tables.get(table).map_or(0, |rows| rows.len())
    }

    fn clear(&self) {
        self.inner
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// Every declared table's rows, shared by the engines that read them.
#[derive(Debug)]
pub struct Tables {
    store: Box<dyn RowStore>,
}

impl Default for Tables {
    fn default() -> Tables {
        Tables::on(MemoryRows::default())
    }
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
    at.map_or(Value::Null, scalar)
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
    /// No rows, held in memory.
    pub fn new() -> Tables {
        Tables::default()
    }

    /// No rows yet, held in `store`.
    pub fn on(store: impl RowStore + 'static) -> Tables {
        Tables {
            store: Box::new(store),
        }
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
        let mut out = Value::Null;
        self.store.with_row_at(table, key, t, &mut |row| {
            let Some(row) = row else {
                return;
            };
            out = match field.0.as_slice() {
                [one] => row.get(one),
                parts => {
                    // Paths are short: joined inline, without allocating.
                    let mut path = CompactString::default();
                    for (n, p) in parts.iter().enumerate() {
                        if n > 0 {
                            path.push('.');
                        }
                        path.push_str(p);
                    }
                    row.get(&path)
                }
            };
        });
        out
    }

    /// Records `row` (or, for `None`, the key's deletion) as the version of
    /// `key` in `table` from event time `at`; a version already there from
    /// the same time is replaced.
    pub fn put(&self, table: &str, key: &str, at: EventTime, row: Option<Row>) {
        self.store
            .put(table, key, at, row.as_ref().map(HeldRow::of));
    }

    /// Drops the versions of `key`'s row in `table` that no event from
    /// `from` on can see: those before the last version at or before
    /// `from` (which stays, for events from `from` until the next).
    pub fn forget_before(&self, table: &str, key: &str, from: EventTime) {
        self.store.forget_before(table, key, from);
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

    /// The versions of `key`'s row in `table`, in time order: from when
    /// each applies, and the row (`None`: deleted from then).
    pub fn versions(&self, table: &str, key: &str) -> Vec<(EventTime, Option<HeldRow>)> {
        self.store.versions(table, key)
    }

    /// How many keys `table` has a row for (in any version).
    pub fn len(&self, table: &str) -> usize {
        self.store.len(table)
    }

    /// Whether `table` has no rows.
    pub fn is_empty(&self, table: &str) -> bool {
        self.len(table) == 0
    }

    /// Where the rows read from `source`'s `partition` end, when the store
    /// kept them across a restart (see [`RowStore::position`]).
    pub fn position(&self, source: &str, partition: i32) -> Option<i64> {
        self.store.position(source, partition)
    }

    /// Records that the records of `source`'s `partition` before `next`
    /// are applied (see [`RowStore::set_position`]).
    pub fn set_position(&self, source: &str, partition: i32, next: i64) {
        self.store.set_position(source, partition, next)
    }

    /// Forgets every row and position.
    pub fn clear(&self) {
        self.store.clear()
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
        assert_eq!(
            t.versions("profiles", "7")
                .iter()
                .map(|(at, _)| *at)
                .collect::<Vec<_>>(),
            [1_000_000, 5_000_000]
        );
        t.put("profiles", "7", 6_000_000, None);
        // Events from 5,500,000 on see the DE row or the deletion: the FR
        // row can go.
        t.forget_before("profiles", "7", 5_500_000);
        assert_eq!(t.versions("profiles", "7").len(), 2);
        assert_eq!(
            country(&t, Value::Num(7.0), 5_500_000),
            Value::Str("DE".into())
        );
        t.forget_before("profiles", "7", 1);
        assert_eq!(t.versions("profiles", "7").len(), 2);
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
        assert_eq!(get("risk"), Value::Null);
        let (_, row) = &t.versions("terminals", "T1")[0];
        assert_eq!(
            row.as_ref().unwrap().to_json(),
            serde_json::json!({"id": "T1", "risk.score": 0.9})
        );
    }
}
