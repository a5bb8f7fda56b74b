//! The recent alerts the API answers from: a bounded, in-memory log of
//! committed alerts (the oldest go first when it is full), indexed by key.
//! The alerts topic stays the record; this is the window onto it that
//! `GET /v1/alerts` and a key's score read.

use crate::engine::Alert;
use crate::event::{EventTime, Value};
use hashbrown::HashMap;
use serde_json::value::RawValue;
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
    /// Its severity (`low` … `critical`).
    pub severity: Arc<str>,
    /// The alert as committed to the alerts topic, byte for byte
    /// (docs/alerts.md).
    pub json: Arc<RawValue>,
    /// Raised by a rule in `mode shadow` (read from the shadow topic).
    pub shadow: bool,
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
    /// The sequence number the next alert gets, for followers of the log.
    next: tokio::sync::watch::Sender<u64>,
}

/// A key's risk as the dashboard ranks it.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyRisk {
    /// The key.
    pub key: Arc<str>,
    /// The sum of its alerts' scores over the score window before its latest.
    pub score: f64,
    /// Its alerts held.
    pub alerts: usize,
    /// The rule of its latest alert.
    pub last_rule: Arc<str>,
    /// The event time of its latest alert.
    pub last_event_time: EventTime,
}

/// One rule's alerts over event time ([`AlertLog::timeline`]).
#[derive(Clone, Debug, PartialEq)]
pub struct RuleTimeline {
    /// The rule.
    pub rule: Arc<str>,
    /// Its alerts are a shadow rule's.
    pub shadow: bool,
    /// The first bucket's start (epoch ms).
    pub start: EventTime,
    /// Alerts per bucket.
    pub counts: Vec<u32>,
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
    /// The alerts of rules in `mode shadow` instead of the live ones.
    pub shadow: bool,
}

/// Round bucket widths for alerts over time: a minute to a week.
const BUCKET_WIDTHS: [i64; 7] = [
    60_000,
    300_000,
    900_000,
    3_600_000,
    21_600_000,
    86_400_000,
    604_800_000,
];

/// The narrowest round width that cuts `span` ms into fewer than `buckets`.
fn bucket_width(span: i64, buckets: usize) -> i64 {
    BUCKET_WIDTHS
        .iter()
        .copied()
        .find(|w| span / w < buckets.max(1) as i64)
        .unwrap_or(BUCKET_WIDTHS[BUCKET_WIDTHS.len() - 1])
}

/// One side of a [`Comparison`]: a rule's alerts over the period.
#[derive(Clone, Debug, PartialEq)]
pub struct ComparedRule {
    /// The rule.
    pub rule: Arc<str>,
    /// Its alerts are a shadow rule's.
    pub shadow: bool,
    /// Its alerts held in the period.
    pub alerts: usize,
    /// The distinct keys they are for.
    pub keys: usize,
    /// Keys it alerted on and the other rule did not, in the period.
    pub only_keys: usize,
    /// Some of those keys (the most recently alerted first).
    pub only_sample: Vec<Arc<str>>,
    /// Alerts per bucket, from [`Comparison::from`] rounded down.
    pub counts: Vec<u32>,
}

/// Two rules' alerts over the same period of event time
/// ([`AlertLog::compare`]): a shadow rule beside the live rule it may
/// replace.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// The period's start: `since`, or the first rule's first alert held.
    pub from: EventTime,
    /// Its end: the latest alert of either rule held.
    pub to: EventTime,
    /// A bucket's width (ms).
    pub width: i64,
    /// The first bucket's start.
    pub start: EventTime,
    /// The two rules, in the order asked.
    pub rules: [ComparedRule; 2],
    /// Keys both rules alerted on in the period.
    pub keys_in_both: usize,
}

/// How many keys a comparison names per rule.
const ONLY_SAMPLE: usize = 20;

impl AlertLog {
    /// A log keeping the last `capacity` alerts.
    pub fn new(capacity: usize) -> Arc<AlertLog> {
        Arc::new(AlertLog {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
            next: tokio::sync::watch::Sender::new(0),
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
        let Ok(raw) = RawValue::from_string(String::from_utf8_lossy(json).into_owned()) else {
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
            severity: Arc::from(v["severity"].as_str().unwrap_or("")),
            json: Arc::from(raw),
            shadow: v["mode"] == "shadow",
        });
        self.trim(&mut g);
        let next = g.next;
        drop(g);
        self.next.send_replace(next);
    }

    /// Told the next sequence number whenever alerts are added.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.next.subscribe()
    }

    /// Alerts from sequence number `from` on (or the oldest held, if it is
    /// gone), oldest first, at most `limit`.
    pub fn since(&self, from: u64, limit: usize) -> Vec<LoggedAlert> {
        let g = self.lock();
        let first = g.alerts.front().map_or(0, |a| a.seq);
        let start = from.saturating_sub(first) as usize;
        g.alerts.iter().skip(start).take(limit).cloned().collect()
    }

    /// The latest `limit` alerts, oldest first.
    pub fn latest(&self, limit: usize) -> Vec<LoggedAlert> {
        let g = self.lock();
        let start = g.alerts.len().saturating_sub(limit);
        g.alerts.iter().skip(start).cloned().collect()
    }

    /// The alerts held per rule (live and shadow apart) per bucket of event
    /// time: buckets of a round width (a minute to a day) that cut the span
    /// of the alerts held into at most `buckets`; returns the width (ms)
    /// and, per rule, the counts of every bucket from the first alert's.
    pub fn timeline(&self, buckets: usize) -> (i64, Vec<RuleTimeline>) {
        let g = self.lock();
        let (Some(first), Some(last)) = (
            g.alerts.iter().map(|a| a.event_time).min(),
            g.alerts.iter().map(|a| a.event_time).max(),
        ) else {
            return (BUCKET_WIDTHS[0], Vec::new());
        };
        let width = bucket_width(last - first + 1, buckets);
        let start = first - first.rem_euclid(width);
        let n = ((last - start) / width + 1) as usize;
        let mut lines: Vec<RuleTimeline> = Vec::new();
        for a in &g.alerts {
            let i = ((a.event_time - start) / width) as usize;
            let line = match lines
                .iter_mut()
                .position(|l| l.rule == a.rule && l.shadow == a.shadow)
            {
                Some(at) => &mut lines[at],
                None => {
                    lines.push(RuleTimeline {
                        rule: a.rule.clone(),
                        shadow: a.shadow,
                        start,
                        counts: vec![0; n],
                    });
                    let at = lines.len() - 1;
                    &mut lines[at]
                }
            };
            line.counts[i] += 1;
        }
        lines.sort_by(|a, b| (a.shadow, &a.rule).cmp(&(b.shadow, &b.rule)));
        (width, lines)
    }

    /// The alerts of rule `a` (a shadow rule's when `a.1`) beside those of
    /// rule `b` over the same period of event time: from `since`, or else
    /// from `a`'s first alert held (when a shadow rule began to alert), to
    /// the latest of either. `None` when neither has an alert in it.
    pub fn compare(
        &self,
        a: (&str, bool),
        b: (&str, bool),
        since: Option<EventTime>,
        buckets: usize,
    ) -> Option<Comparison> {
        let g = self.lock();
        let of = |r: (&str, bool), x: &LoggedAlert| x.shadow == r.1 && &*x.rule == r.0;
        let first = |r: (&str, bool)| {
            g.alerts
                .iter()
                .filter(|x| of(r, x))
                .map(|x| x.event_time)
                .min()
        };
        let from = since.or_else(|| first(a)).or_else(|| first(b))?;
        let held = |r: (&str, bool)| {
            g.alerts
                .iter()
                .filter(|x| of(r, x))
                .filter(|x| x.event_time >= from)
                .collect::<Vec<_>>()
        };
        let (xs, ys) = (held(a), held(b));
        let to = xs.iter().chain(&ys).map(|x| x.event_time).max()?;
        let width = bucket_width(to - from + 1, buckets);
        let start = from - from.rem_euclid(width);
        let n = ((to - start) / width + 1) as usize;
        let keys = |v: &[&LoggedAlert]| -> hashbrown::HashSet<Arc<str>> {
            v.iter().map(|x| x.key.clone()).collect()
        };
        let (kx, ky) = (keys(&xs), keys(&ys));
        let summary = |r: (&str, bool),
                       v: &[&LoggedAlert],
                       mine: &hashbrown::HashSet<Arc<str>>,
                       other: &hashbrown::HashSet<Arc<str>>| {
            let mut counts = vec![0u32; n];
            for x in v {
                counts[((x.event_time - start) / width) as usize] += 1;
            }
            let mut sample: Vec<Arc<str>> = Vec::new();
            for x in v.iter().rev() {
                if !other.contains(&x.key) && !sample.contains(&x.key) {
                    sample.push(x.key.clone());
                    if sample.len() == ONLY_SAMPLE {
                        break;
                    }
                }
            }
            ComparedRule {
                rule: Arc::from(r.0),
                shadow: r.1,
                alerts: v.len(),
                keys: mine.len(),
                only_keys: mine.difference(other).count(),
                only_sample: sample,
                counts,
            }
        };
        Some(Comparison {
            from,
            to,
            width,
            start,
            keys_in_both: kx.intersection(&ky).count(),
            rules: [summary(a, &xs, &kx, &ky), summary(b, &ys, &ky, &kx)],
        })
    }

    /// Alerts held per rule, most first (ties by name): the live ones, or
    /// those of rules in `mode shadow`.
    pub fn rule_counts(&self, shadow: bool) -> Vec<(Arc<str>, usize)> {
        let g = self.lock();
        let mut counts: HashMap<Arc<str>, usize> = HashMap::new();
        for a in g.alerts.iter().filter(|a| a.shadow == shadow) {
            *counts.entry(a.rule.clone()).or_default() += 1;
        }
        let mut v: Vec<(Arc<str>, usize)> = counts.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }

    /// The `n` keys with the highest score: each key's alerts' scores summed
    /// over `window_ms` of event time before its latest alert (as a key's
    /// score is), highest first (ties by key).
    pub fn riskiest(&self, window_ms: i64, n: usize) -> Vec<KeyRisk> {
        let g = self.lock();
        let first = g.alerts.front().map_or(0, |a| a.seq);
        let mut v: Vec<KeyRisk> = g
            .by_key
            .iter()
            .filter_map(|(key, seqs)| {
                let get = |seq: &u64| g.alerts.get((seq - first) as usize);
                // A key's risk is its live alerts'; shadow rules are on trial.
                let live = || seqs.iter().filter_map(get).filter(|a| !a.shadow);
                let latest = live().next_back()?;
                let score = live()
                    .filter(|a| a.event_time > latest.event_time - window_ms)
                    .map(|a| a.score)
                    .sum();
                Some(KeyRisk {
                    key: key.clone(),
                    score,
                    alerts: live().count(),
                    last_rule: latest.rule.clone(),
                    last_event_time: latest.event_time,
                })
            })
            .collect();
        v.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.key.cmp(&b.key)));
        v.truncate(n);
        v
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
                && a.shadow == filter.shadow
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
            let ev = rules.decoder().decode(line.as_bytes(), i as u64).unwrap();
            e.on_event(ev, &mut out);
        }
        out.alerts
    }

    #[test]
    fn followers_read_after_a_sequence_number_and_are_told_of_new_alerts() {
        let all = alerts(40);
        let log = AlertLog::new(10);
        let mut rx = log.subscribe();
        log.extend(&all[..4]);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 4);
        let seqs = |v: Vec<LoggedAlert>| v.iter().map(|a| a.seq).collect::<Vec<_>>();
        assert_eq!(seqs(log.latest(2)), [2, 3]);
        assert_eq!(seqs(log.since(2, 10)), [2, 3]);
        assert_eq!(seqs(log.since(4, 10)), Vec::<u64>::new());
        // Past the capacity the oldest go: a follower that fell behind
        // resumes at the oldest still held.
        log.extend(&all[4..20]);
        assert_eq!(*rx.borrow_and_update(), 20);
        assert_eq!(seqs(log.since(2, 3)), [10, 11, 12]);
        assert_eq!(log.latest(100).len(), 10);
        assert_eq!(&*log.since(19, 1)[0].severity, "medium");
    }

    #[test]
    fn rules_and_keys_are_ranked() {
        let all = alerts(40);
        let log = AlertLog::new(1000);
        log.extend(&all);
        let counts = log.rule_counts(false);
        let count = |r: &str| all.iter().filter(|a| &*a.rule == r).count();
        assert_eq!(
            counts,
            [
                (Arc::from("big"), count("big")),
                (Arc::from("huge"), count("huge"))
            ]
        );
        // Scores: big 10, huge 30; with a window that holds one alert only
        // the latest counts, with a wide one all of the key's.
        let wide = log.riskiest(1_000_000, 3);
        assert_eq!(wide.len(), 3);
        for k in &wide {
            let of_key: Vec<&Alert> = all.iter().filter(|a| key_text(&a.key) == *k.key).collect();
            let total: f64 = of_key.iter().map(|a| a.score).sum();
            assert_eq!(k.score, total);
            assert_eq!(k.alerts, of_key.len());
            assert_eq!(k.last_rule, of_key.last().unwrap().rule);
        }
        assert!(wide.windows(2).all(|w| w[0].score >= w[1].score));
        // A 1 ms window holds the alerts at the key's latest instant only.
        let narrow = log.riskiest(1, 1);
        assert_eq!(narrow.len(), 1);
        let at_latest: f64 = all
            .iter()
            .filter(|a| {
                key_text(&a.key) == *narrow[0].key && a.event_time == narrow[0].last_event_time
            })
            .map(|a| a.score)
            .sum();
        assert_eq!(narrow[0].score, at_latest);
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

    #[test]
    fn shadow_alerts_are_listed_apart_and_score_nothing() {
        let all = alerts(40);
        let log = AlertLog::new(1000);
        for a in &all {
            let shadow = Alert {
                shadow: &*a.rule == "huge",
                ..a.clone()
            };
            log.push_published(shadow.to_json_line().as_bytes());
        }
        let live = log.page(&Filter::default(), 1000).alerts;
        let shadow = log
            .page(
                &Filter {
                    shadow: true,
                    ..Filter::default()
                },
                1000,
            )
            .alerts;
        assert!(live.iter().all(|a| &*a.rule == "big" && !a.shadow));
        assert!(shadow.iter().all(|a| &*a.rule == "huge" && a.shadow));
        assert_eq!(live.len() + shadow.len(), all.len());
        assert_eq!(log.rule_counts(true), [(Arc::from("huge"), shadow.len())]);
        // Scores count the live rule's alerts only (big: 10 each).
        for k in log.riskiest(1_000_000, 3) {
            let big = all
                .iter()
                .filter(|a| &*a.rule == "big" && key_text(&a.key) == *k.key)
                .count();
            assert_eq!(k.score, 10.0 * big as f64);
        }
    }

    #[test]
    fn the_timeline_counts_each_rules_alerts_per_bucket() {
        let all = alerts(40);
        let log = AlertLog::new(1000);
        log.extend(&all);
        // 40 events 1 s apart: one-minute buckets, one of them.
        let (width, lines) = log.timeline(48);
        assert_eq!(width, 60_000);
        for l in &lines {
            let n = all.iter().filter(|a| a.rule == l.rule).count() as u32;
            assert_eq!(l.counts.iter().sum::<u32>(), n, "{}", l.rule);
            assert_eq!(l.start, 0);
        }
        assert_eq!(lines.len(), 2);
        assert!(AlertLog::new(5).timeline(48).1.is_empty());
    }

    #[test]
    fn a_shadow_rule_is_compared_with_a_live_one_over_the_same_period() {
        let all = alerts(200);
        let log = AlertLog::new(1000);
        // The shadow rule alerts on one of the three keys only.
        for a in &all {
            let shadow = &*a.rule == "huge";
            if shadow && key_text(&a.key) != "c0" {
                continue;
            }
            log.push_published(
                Alert {
                    shadow,
                    ..a.clone()
                }
                .to_json_line()
                .as_bytes(),
            );
        }
        let c = log
            .compare(("huge", true), ("big", false), None, 48)
            .expect("both alerted");
        let first_huge = all
            .iter()
            .filter(|a| &*a.rule == "huge" && key_text(&a.key) == "c0")
            .map(|a| a.event_time)
            .min()
            .unwrap();
        assert_eq!(c.from, first_huge);
        let big_after = all
            .iter()
            .filter(|a| &*a.rule == "big" && a.event_time >= first_huge)
            .count();
        let [huge, big] = &c.rules;
        assert!(huge.shadow && !big.shadow);
        assert_eq!(big.alerts, big_after);
        assert_eq!(big.counts.iter().sum::<u32>() as usize, big_after);
        assert_eq!(huge.counts.iter().sum::<u32>() as usize, huge.alerts);
        assert_eq!(huge.counts.len(), big.counts.len());
        assert_eq!((huge.keys, big.keys, c.keys_in_both), (1, 3, 1));
        assert_eq!((huge.only_keys, big.only_keys), (0, 2));
        let mut only: Vec<&str> = big.only_sample.iter().map(|k| &**k).collect();
        only.sort();
        assert_eq!(only, ["c1", "c2"]);
        // From a later time, fewer of each; a rule without alerts counts none.
        let later = log
            .compare(("huge", true), ("big", false), Some(150_000), 48)
            .unwrap();
        assert!(later.rules[1].alerts < big.alerts && later.from == 150_000);
        let none = log
            .compare(("absent", true), ("big", false), None, 48)
            .unwrap();
        assert_eq!(none.rules[0].alerts, 0);
        assert_eq!(none.rules[1].only_keys, 3);
        assert!(
            log.compare(("absent", true), ("gone", false), None, 48)
                .is_none()
        );
    }
}
