//! Backtesting: a rule set run over labelled history, scored per rule
//! against the labels (`tripline backtest`).
//!
//! An alert is *right* when its evidence (the events it matched) holds at
//! least one event the label marks (e.g. `TX_FRAUD = 1`). Per rule:
//! precision is the share of its alerts that are right; recall is the share
//! of all labelled events that appear in the evidence of its alerts; alerts
//! per day divide its alerts by the days of event time the input covers.
//! The same for all rules together (`(any rule)`), where an event caught by
//! two rules counts once. Deterministic: the same input gives the same
//! report.

use crate::engine::{Alert, Engine, Outputs, RuleSet};
use crate::event::{DecodeError, Event, EventTime};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// A rule's figures.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuleScore {
    /// The rule (or `(any rule)`).
    pub rule: String,
    /// Alerts it raised.
    pub alerts: u64,
    /// Of those, alerts whose evidence holds a labelled event.
    pub right: u64,
    /// Labelled events in the evidence of its alerts (each once).
    pub caught: u64,
}

impl RuleScore {
    /// Right alerts over alerts (`None`: no alert).
    pub fn precision(&self) -> Option<f64> {
        (self.alerts > 0).then(|| self.right as f64 / self.alerts as f64)
    }

    /// Caught labelled events over all labelled events (`None`: none).
    pub fn recall(&self, positives: u64) -> Option<f64> {
        (positives > 0).then(|| self.caught as f64 / positives as f64)
    }
}

/// What a backtest found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Events run (decoded).
    pub events: u64,
    /// Of those, labelled events.
    pub positives: u64,
    /// Distinct UTC days of event time.
    pub days: u64,
    /// Per rule of the rule set, in its order (feature sets, which raise
    /// no alert, left out).
    pub rules: Vec<RuleScore>,
    /// All rules together.
    pub any: RuleScore,
}

impl Report {
    /// Alerts per day of `score`.
    pub fn per_day(&self, score: &RuleScore) -> f64 {
        score.alerts as f64 / self.days.max(1) as f64
    }

    /// The score of rule `name`, if the rule set has it.
    pub fn rule(&self, name: &str) -> Option<&RuleScore> {
        self.rules.iter().find(|r| r.rule == name)
    }
}

/// A backtest in progress: feed it events, then [`Backtest::finish`].
pub struct Backtest {
    rules: Arc<RuleSet>,
    engine: Engine,
    outputs: Outputs,
    label: String,
    /// Labelled events.
    positives: BTreeSet<EventId>,
    days: BTreeSet<EventTime>,
    events: u64,
    per_rule: BTreeMap<Arc<str>, (u64, u64, BTreeSet<EventId>)>,
    caught_any: BTreeSet<EventId>,
    alerts_any: (u64, u64),
}

const DAY_MS: i64 = 86_400_000;

/// An event of the input: its stream and its position in that stream's.
type EventId = (u16, u64);

impl Backtest {
    /// A backtest of `rules`, whose events are labelled by the top-level
    /// field `label` (true, a non-zero number, or "1"/"true"/"yes").
    pub fn new(rules: Arc<RuleSet>, label: &str) -> Backtest {
        Backtest {
            engine: Engine::new(rules.clone()),
            rules,
            outputs: Outputs::default(),
            label: label.to_string(),
            positives: BTreeSet::new(),
            days: BTreeSet::new(),
            events: 0,
            per_rule: BTreeMap::new(),
            caught_any: BTreeSet::new(),
            alerts_any: (0, 0),
        }
    }

    /// Looks table lookups up in `tables` (see [`Engine::with_tables`]).
    pub fn with_tables(mut self, tables: Arc<crate::tables::Tables>) -> Backtest {
        self.engine = self.engine.with_tables(tables);
        self
    }

    /// Looks list lookups up in `lists` (see [`Engine::with_lists`]).
    pub fn with_lists(mut self, lists: Arc<crate::lists::Lists>) -> Backtest {
        self.engine = self.engine.with_lists(lists);
        self
    }

    /// Runs one event of the main stream (a JSON line; `seq` its position
    /// in the input).
    pub fn event(&mut self, line: &[u8], seq: u64) -> Result<(), DecodeError> {
        let event = self.rules.decoder().decode(line, seq)?;
        self.take(event);
        Ok(())
    }

    /// Reads the state that taking `events` will read first, ahead of
    /// taking them (see [`Engine::warm`]).
    pub fn warm<'e>(&self, events: impl IntoIterator<Item = &'e Event>) {
        self.engine.warm(events);
    }

    /// Runs one decoded event (owned or shared), of any of the rule set's
    /// streams.
    pub fn take(&mut self, event: impl Into<Arc<Event>>) {
        let event = event.into();
        self.days.insert(event.time.div_euclid(DAY_MS));
        if is_labelled(event.raw.as_bytes(), &self.label) {
            let stream = self.rules.def().stream_of(&event);
            self.positives.insert((stream, event.seq));
        }
        self.engine.on_event(event, &mut self.outputs);
        self.events += 1;
        self.collect();
    }

    fn collect(&mut self) {
        for alert in std::mem::take(&mut self.outputs.alerts) {
            self.score(&alert);
        }
        // Late events and rule errors are the caller's to report; a
        // backtest only counts alerts.
        self.outputs.late.clear();
        self.outputs.errors.clear();
    }

    fn score(&mut self, alert: &Alert) {
        let def = self.rules.def();
        let evidence: BTreeSet<EventId> = alert
            .matches
            .iter()
            .flat_map(|(_, events)| events.iter().map(|e| (def.stream_of(e), e.seq)))
            .filter(|s| self.positives.contains(s))
            .collect();
        let right = u64::from(!evidence.is_empty());
        let entry = self.per_rule.entry(alert.rule.clone()).or_default();
        entry.0 += 1;
        entry.1 += right;
        entry.2.extend(evidence.iter().copied());
        self.alerts_any.0 += 1;
        self.alerts_any.1 += right;
        self.caught_any.extend(evidence);
    }

    /// Events run so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The report; with `flush`, the watermark first advances to the end so
    /// that pending deadlines fire (as `replay --flush`).
    pub fn finish(mut self, flush: bool) -> Report {
        if flush {
            self.engine.finish(&mut self.outputs);
            self.collect();
        }
        let rules = self
            .rules
            .rules()
            .iter()
            .filter(|r| !r.def().features)
            .map(|r| {
                let (alerts, right, caught) = self
                    .per_rule
                    .get(r.name())
                    .map_or((0, 0, 0), |(a, w, c)| (*a, *w, c.len() as u64));
                RuleScore {
                    rule: r.name().to_string(),
                    alerts,
                    right,
                    caught,
                }
            })
            .collect();
        Report {
            events: self.events,
            positives: self.positives.len() as u64,
            days: self.days.len() as u64,
            rules,
            any: RuleScore {
                rule: "(any rule)".into(),
                alerts: self.alerts_any.0,
                right: self.alerts_any.1,
                caught: self.caught_any.len() as u64,
            },
        }
    }
}

/// Runs `backtest` over each stream's events, `inputs` (stream name, one
/// record per line), merged by event time; events of streams its rules do
/// not define, and records they do not decode, are left out. Returns the
/// report (after `flush`, as [`Backtest::finish`]) and the records left out.
pub fn run_streams(
    mut backtest: Backtest,
    inputs: &[(String, &[u8])],
    flush: bool,
) -> (Report, u64) {
    let def = backtest.rules.def();
    let readers: Vec<(u16, &[u8])> = inputs
        .iter()
        .filter_map(|(name, text)| def.stream_index(name).map(|i| (i, *text)))
        .collect();
    let mut merged = crate::event::MergedLines::new(readers);
    let rules = backtest.rules.clone();
    let mut left_out = 0;
    // In-memory readers do not fail.
    while let Ok(Some(m)) = merged.next(rules.decoders()) {
        match m.event {
            Ok(event) => backtest.take(event),
            Err(_) => left_out += 1,
        }
    }
    (backtest.finish(flush), left_out)
}

/// Whether the JSON object `line` has a truthy top-level field `label`.
fn is_labelled(line: &[u8], label: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Fields<'a>(#[serde(borrow)] BTreeMap<&'a str, &'a serde_json::value::RawValue>);
    let Ok(Fields(fields)) = serde_json::from_slice::<Fields>(line) else {
        return false;
    };
    let Some(v) = fields.get(label) else {
        return false;
    };
    match serde_json::from_str::<serde_json::Value>(v.get()) {
        Ok(serde_json::Value::Bool(b)) => b,
        Ok(serde_json::Value::Number(n)) => n.as_f64().is_some_and(|x| x != 0.0),
        Ok(serde_json::Value::String(s)) => {
            matches!(s.to_ascii_lowercase().as_str(), "1" | "true" | "yes")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = r#"
        stream s { key card  time ts  time format epoch_ms  lateness 0s }
        rule big { pattern { b: amount > 100 } }
        rule twice { pattern { a: amount > 50  then b: amount > 50 } }
        rule never { pattern { n: amount < 0 } }
    "#;

    fn run(lines: &[&str]) -> Report {
        let rules = RuleSet::from_source("t.tl", RULES, None).unwrap();
        let mut b = Backtest::new(rules, "fraud");
        for (i, l) in lines.iter().enumerate() {
            b.event(l.as_bytes(), i as u64).unwrap();
        }
        b.finish(true)
    }

    #[test]
    fn precision_recall_and_alerts_per_day() {
        let day = 86_400_000;
        let r = run(&[
            // c1: a big fraud (right for `big`), then a big legit one (wrong).
            r#"{"card":"c1","ts":0,"amount":500,"fraud":1}"#,
            r#"{"card":"c1","ts":1000,"amount":200,"fraud":0}"#,
            // c2: two medium amounts, the second fraud: `twice` is right.
            &format!(r#"{{"card":"c2","ts":{day},"amount":60,"fraud":false}}"#),
            &format!(
                r#"{{"card":"c2","ts":{},"amount":70,"fraud":true}}"#,
                day + 1
            ),
            // c3: a fraud no rule sees.
            &format!(
                r#"{{"card":"c3","ts":{},"amount":5,"fraud":"yes"}}"#,
                2 * day
            ),
        ]);
        assert_eq!((r.events, r.positives, r.days), (5, 3, 3));
        let big = r.rule("big").unwrap();
        assert_eq!((big.alerts, big.right, big.caught), (2, 1, 1));
        assert_eq!(big.precision(), Some(0.5));
        assert_eq!(big.recall(r.positives), Some(1.0 / 3.0));
        let twice = r.rule("twice").unwrap();
        // c1's two (500, 200) and c2's two (60, 70): both hold a fraud.
        assert_eq!((twice.alerts, twice.right, twice.caught), (2, 2, 2));
        let never = r.rule("never").unwrap();
        assert_eq!((never.alerts, never.precision()), (0, None));
        assert_eq!(r.per_day(big), 2.0 / 3.0);
        // Together: 4 alerts, 3 right; the c1 and c2 frauds caught, once each.
        assert_eq!((r.any.alerts, r.any.right, r.any.caught), (4, 3, 2));
    }

    #[test]
    fn labels_are_read_leniently_and_unlabelled_input_has_no_recall() {
        for (v, want) in [
            ("1", true),
            ("0", false),
            ("0.0", false),
            ("true", true),
            ("\"TRUE\"", true),
            ("\"no\"", false),
            ("null", false),
        ] {
            let line = format!(r#"{{"fraud":{v},"x":1}}"#);
            assert_eq!(is_labelled(line.as_bytes(), "fraud"), want, "{v}");
        }
        assert!(!is_labelled(b"not json", "fraud"));
        let r = run(&[r#"{"card":"c1","ts":0,"amount":500}"#]);
        assert_eq!(r.positives, 0);
        assert_eq!(r.rule("big").unwrap().recall(r.positives), None);
    }
}
