//! Named lists the rules read (`TERMINAL_ID in blocked_terminals`): sets of
//! values a fraud team edits while the service runs. Each entry keeps its
//! history of changes, each effective from an event time, so a lookup is
//! *as of the event's time*: a replay over the same changes gives the
//! service's alerts, and an entry added at 10:00 does not flag a 09:59
//! payment that arrives late.
//!
//! [`Lists`] is shared by the engines that read it and written by whoever
//! applies changes (the API, a file for replay, the topic every service
//! instance reads); it holds no I/O.

use crate::event::{EventTime, Value};
use compact_str::CompactString;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::RwLock;

/// What a change does to an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListOp {
    /// The value is on the list from `at` (until `until`, if set).
    Add,
    /// The value is off the list from `at`.
    Remove,
}

/// One change to one entry, as recorded.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ListChange {
    /// Add or remove.
    pub op: ListOp,
    /// The event time (ms) from which it applies.
    pub at: EventTime,
    /// For an add: the event time (ms) at which the entry expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<EventTime>,
    /// Who made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// When it was made (wall clock, epoch ms), where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded: Option<i64>,
}

/// One value's history on one list: what the list topic holds per entry,
/// so that compaction keeps the whole history.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ListEntry {
    /// The list.
    pub list: String,
    /// The value, as text (numbers in their shortest form).
    pub value: String,
    /// Its changes in the order they were made.
    pub changes: Vec<ListChange>,
}

impl ListEntry {
    /// Whether the value is on the list at event time `t`: the last change
    /// effective at or before `t` (ties: the later made) is an add that has
    /// not expired.
    pub fn contains_at(&self, t: EventTime) -> bool {
        let mut on = false;
        let mut best = EventTime::MIN;
        for c in &self.changes {
            if c.at <= t && c.at >= best {
                best = c.at;
                on = c.op == ListOp::Add && c.until.is_none_or(|u| t < u);
            }
        }
        on
    }
}

/// The text a value is listed under: strings as they are, numbers in their
/// shortest form (so `123`, `123.0` and `"123"` are one entry; a number no
/// `f64` holds exactly, as its text), booleans as `true`/`false`; None for
/// null.
pub fn list_key(v: &Value) -> Option<CompactString> {
    match v {
        Value::Null => None,
        Value::Str(s) => Some(s.clone()),
        // A number no f64 holds exactly is its own text (see `Value::NumText`).
        Value::NumText(t) => Some(t.clone()),
        Value::Num(n) => Some(num_key(*n)),
        Value::Bool(b) => Some(CompactString::const_new(if *b { "true" } else { "false" })),
    }
}

fn num_key(n: f64) -> CompactString {
    let mut s = CompactString::default();
    let _ = write!(s, "{}", Value::Num(n));
    s
}

/// Every declared list's entries, shared by the engines that read them.
#[derive(Debug, Default)]
pub struct Lists {
    inner: RwLock<BTreeMap<String, hashbrown::HashMap<CompactString, ListEntry>>>,
}

impl Lists {
    /// No lists.
    pub fn new() -> Lists {
        Lists::default()
    }

    /// Whether `value` is on `list` at event time `t` (false for an unknown
    /// list; None for a null value).
    pub fn contains(&self, list: &str, value: &Value, t: EventTime) -> Option<bool> {
        // Once per event and lookup: a string, the usual key, is looked up
        // as it is, not copied.
        let owned;
        let key = match value {
            Value::Str(s) => s.as_str(),
            other => {
                owned = list_key(other)?;
                owned.as_str()
            }
        };
        let lists = self.inner.read().unwrap_or_else(|p| p.into_inner());
        Some(
            lists
                .get(list)
                .and_then(|l| l.get(key))
                .is_some_and(|e| e.contains_at(t)),
        )
    }

    /// Replaces an entry's history with `entry`'s (what a record of the
    /// list topic carries); an entry without changes is removed.
    pub fn put(&self, entry: ListEntry) {
        let mut lists = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let list = lists.entry(entry.list.clone()).or_default();
        if entry.changes.is_empty() {
            list.remove(entry.value.as_str());
        } else {
            list.insert(CompactString::from(entry.value.as_str()), entry);
        }
    }

    /// Appends `change` to the history of `value` on `list` and returns the
    /// entry as it now is.
    pub fn apply(&self, list: &str, value: &str, change: ListChange) -> ListEntry {
        let mut lists = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let entry = lists
            .entry(list.to_string())
            .or_default()
            .entry(CompactString::from(value))
            .or_insert_with(|| ListEntry {
                list: list.to_string(),
                value: value.to_string(),
                changes: Vec::new(),
            });
        entry.changes.push(change);
        entry.clone()
    }

    /// The entry for `value` on `list`, if it has any history.
    pub fn entry(&self, list: &str, value: &str) -> Option<ListEntry> {
        let lists = self.inner.read().unwrap_or_else(|p| p.into_inner());
        lists.get(list)?.get(value).cloned()
    }

    /// Every entry of `list` with a history, sorted by value.
    pub fn entries(&self, list: &str) -> Vec<ListEntry> {
        let lists = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<ListEntry> = lists
            .get(list)
            .map(|l| l.values().cloned().collect())
            .unwrap_or_default();
        out.sort_by(|a, b| a.value.cmp(&b.value));
        out
    }

    /// The lists that have entries, sorted.
    pub fn names(&self) -> Vec<String> {
        let lists = self.inner.read().unwrap_or_else(|p| p.into_inner());
        lists
            .iter()
            .filter(|(_, l)| !l.is_empty())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// How many values of `list` have a history (on it or not).
    pub fn len(&self, list: &str) -> usize {
        let lists = self.inner.read().unwrap_or_else(|p| p.into_inner());
        lists.get(list).map_or(0, |l| l.len())
    }

    /// How many values are on `list` at event time `t`.
    pub fn size_at(&self, list: &str, t: EventTime) -> usize {
        let lists = self.inner.read().unwrap_or_else(|p| p.into_inner());
        lists
            .get(list)
            .map_or(0, |l| l.values().filter(|e| e.contains_at(t)).count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(op: ListOp, at: EventTime, until: Option<EventTime>) -> ListChange {
        ListChange {
            op,
            at,
            until,
            author: None,
            comment: None,
            recorded: None,
        }
    }

    #[test]
    fn a_lookup_is_as_of_the_event_time() {
        let lists = Lists::new();
        lists.apply("blocked", "T1", change(ListOp::Add, 100, Some(500)));
        lists.apply("blocked", "T1", change(ListOp::Remove, 300, None));
        lists.apply("blocked", "T1", change(ListOp::Add, 400, None));
        let on = |t| lists.contains("blocked", &Value::from("T1"), t);
        let got: Vec<Option<bool>> = [99, 100, 299, 300, 399, 400, 10_000].map(on).to_vec();
        let want = [false, true, true, false, false, true, true]
            .map(Some)
            .to_vec();
        assert_eq!(got, want);
        assert_eq!(lists.contains("blocked", &Value::Null, 200), None);
        assert_eq!(
            lists.contains("other", &Value::from("T1"), 200),
            Some(false)
        );
        // Expiry: an add with `until` ends by itself.
        lists.apply("blocked", "T2", change(ListOp::Add, 0, Some(50)));
        assert_eq!(lists.size_at("blocked", 10), 1);
        assert_eq!(lists.size_at("blocked", 150), 1, "T1 on, T2 expired");
    }

    #[test]
    fn numbers_and_their_text_are_one_entry() {
        let lists = Lists::new();
        lists.apply("terminals", "123", change(ListOp::Add, 0, None));
        for v in [
            Value::Num(123.0),
            Value::from("123"),
            Value::exact_number("123.0").unwrap(),
        ] {
            assert_eq!(lists.contains("terminals", &v, 1), Some(true), "{v:?}");
        }
        assert_eq!(
            lists.contains("terminals", &Value::Num(123.5), 1),
            Some(false)
        );
    }
}
