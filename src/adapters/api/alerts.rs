//! The recent alerts the API answers from: a bounded, in-memory log of
//! committed alerts (the oldest go first when it is full), indexed by key.
//! The alerts topic stays the record; this is the window onto it that
//! `GET /v1/alerts` and a key's score read.

use crate::engine::Alert;
use crate::event::{EventTime, Value};
use hashbrown::HashMap;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

/// One logged alert.
#[derive(Clone, Debug)]
pub struct LoggedAlert {
    /// Position in the log (increasing; the pagination cursor).
    pub seq: u64,
    /// The rule.
    pub rule: Arc<str>,
    /// The key, as text.
    pub key: Arc<str>,
    /// Event time of the alert.
    pub event_time: EventTime,
    /// The rule's score contribution.
    pub score: f64,
    /// The alert as published (docs/alerts.md).
    pub json: Arc<str>,
}

/// A key as the API names it: strings as they are, numbers in their JSON
/// form (`42`, not `42.0`).
pub fn key_text(v: &Value) -> String {
    match v {
        Value::Str(s) => s.to_string(),
        other => other.to_json().to_string(),
    }
}

#[derive(Default)]
struct Inner {
    alerts: VecDeque<LoggedAlert>,
    by_key: HashMap<Arc<str>, VecDeque<u64>>,
    next: u64,
}

/// The log (cheap to share: clone the `Arc`).
pub struct AlertLog {
    capacity: usize,
    inner: Mutex<Inner>,
}

/// A page of alerts.
#[derive(Debug)]
pub struct Page {
    /// Alerts, newest first.
    pub alerts: Vec<LoggedAlert>,
    /// The cursor of the next (older) page, if any.
    pub next: Option<u64>,
}

/// What to list.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only this key.
    pub key: Option<String>,
    /// Only this rule.
    pub rule: Option<String>,
    /// Only alerts at or after this event time.
    pub since: Option<EventTime>,
    /// Only alerts older than this cursor.
    pub before: Option<u64>,
}

impl AlertLog {
    /// A log keeping the last `capacity` alerts.
    pub fn new(capacity: usize) -> Arc<AlertLog> {
        Arc::new(AlertLog {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds committed alerts, in commit order.
    pub fn extend<'a>(&self, alerts: impl IntoIterator<Item = &'a Alert>) {
        for a in alerts {
            self.push_published(a.to_json_line().as_bytes());
        }
    }

    /// Adds a committed alert as published (the JSON of docs/alerts.md);
    /// records that are not alerts are ignored.
    pub fn push_published(&self, json: &[u8]) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(json) else {
            return;
        };
        let (Some(rule), Some(time)) = (
            v["rule"].as_str(),
            v["event_time"]
                .as_str()
                .and_then(crate::event::parse_time_str),
        ) else {
            return;
        };
        let key = match &v["key"] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let mut g = self.lock();
        let seq = g.next;
        g.next += 1;
        let key: Arc<str> = Arc::from(key);
        g.by_key.entry(key.clone()).or_default().push_back(seq);
        g.alerts.push_back(LoggedAlert {
            seq,
            rule: Arc::from(rule),
            key,
            event_time: time,
            score: v["score"].as_f64().unwrap_or(0.0),
            json: Arc::from(String::from_utf8_lossy(json)),
        });
        self.trim(&mut g);
    }

    fn trim(&self, g: &mut Inner) {
        while g.alerts.len() > self.capacity {
            let Some(old) = g.alerts.pop_front() else {
                break;
            };
            if let Some(q) = g.by_key.get_mut(&old.key) {
                q.pop_front();
                if q.is_empty() {
                    g.by_key.remove(&old.key);
                }
            }
        }
    }

    /// Alerts matching `filter`, newest first, at most `limit`.
    pub fn page(&self, filter: &Filter, limit: usize) -> Page {
        let g = self.lock();
        let first = g.alerts.front().map_or(0, |a| a.seq);
        let get = |seq: u64| g.alerts.get((seq - first) as usize);
        let before = filter.before.unwrap_or(u64::MAX);
        let keep = |a: &LoggedAlert| {
            a.seq < before
                && filter.rule.as_deref().is_none_or(|r| *a.rule == *r)
                && filter.since.is_none_or(|t| a.event_time >= t)
        };
        let mut alerts = Vec::new();
        let mut more = false;
        let mut take = |a: &LoggedAlert| {
            if !keep(a) {
                return true;
            }
            if alerts.len() == limit {
                more = true;
                return false;
            }
            alerts.push(a.clone());
            true
        };
        match &filter.key {
            Some(k) => {
                if let Some(q) = g.by_key.get(k.as_str()) {
                    for &seq in q.iter().rev() {
                        if let Some(a) = get(seq)
                            && !take(a)
                        {
                            break;
                        }
                    }
                }
            }
            None => {
                for a in g.alerts.iter().rev() {
                    if !take(a) {
                        break;
                    }
                }
            }
        }
        let next = if more {
            alerts.last().map(|a| a.seq)
        } else {
            None
        };
        Page { alerts, next }
    }

    /// Alerts held.
    pub fn len(&self) -> usize {
        self.lock().alerts.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, Outputs, RuleSet};

    fn alerts(n: usize) -> Vec<Alert> {
        let rules = RuleSet::from_source(
            "t.tl",
            "stream s { key k time t time format epoch_ms }\n\
             rule big { score 10 pattern { a: v > 1 } }\n\
             rule huge { score 30 pattern { a: v > 5 } }",
            None,
        )
        .unwrap();
        let mut e = Engine::new(rules.clone());
        let mut out = Outputs::default();
        for i in 0..n {
            let line = format!(r#"{{"k":"c{}","t":{},"v":{}}}"#, i % 3, i * 1000, i % 8);
            let ev = rules.decoder.decode(line.as_bytes(), i as u64).unwrap();
            e.on_event(ev, &mut out);
        }
        out.alerts
    }

    #[test]
    fn pages_go_newest_first_and_filters_combine() {
        let all = alerts(40);
        let log = AlertLog::new(1000);
        log.extend(&all);
        assert_eq!(log.len(), all.len());
        let mut seen = Vec::new();
        let mut f = Filter {
            key: Some("c1".into()),
            rule: Some("big".into()),
            ..Filter::default()
        };
        loop {
            let p = log.page(&f, 3);
            assert!(p.alerts.len() <= 3);
            seen.extend(p.alerts.iter().map(|a| a.seq));
            match p.next {
                Some(n) => f.before = Some(n),
                None => break,
            }
        }
        let want: Vec<u64> = all
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, a)| &*a.rule == "big" && key_text(&a.key) == "c1")
            .map(|(i, _)| i as u64)
            .collect();
        assert!(!want.is_empty());
        assert_eq!(seen, want);
        let since = log.page(
            &Filter {
                since: Some(30_000),
                ..Filter::default()
            },
            1000,
        );
        assert!(since.alerts.iter().all(|a| a.event_time >= 30_000));
        assert_eq!(
            since.alerts.len(),
            all.iter().filter(|a| a.event_time >= 30_000).count()
        );
    }

    #[test]
    fn a_full_log_forgets_the_oldest() {
        let all = alerts(40);
        let log = AlertLog::new(5);
        log.extend(&all);
        let p = log.page(&Filter::default(), 100);
        let seqs: Vec<u64> = p.alerts.iter().map(|a| a.seq).collect();
        let n = all.len() as u64;
        assert_eq!(seqs, (n - 5..n).rev().collect::<Vec<_>>());
        // The key index forgot them too.
        let total: usize = ["c0", "c1", "c2"]
            .iter()
            .map(|k| {
                log.page(
                    &Filter {
                        key: Some(k.to_string()),
                        ..Filter::default()
                    },
                    100,
                )
                .alerts
                .len()
            })
            .sum();
        assert_eq!(total, 5);
    }
}
