//! The service's model trials: the rows of the feature log that carry a
//! model's score and its candidate's (`NAME`, `NAME@candidate`) and the
//! labels, both as read back from their topics, kept in a
//! [`TrialBook`] and judged by [`tripline::model::trial`]'s rules; with
//! `trial.promote = "auto"`, a candidate that wins is promoted in the rule
//! files. Reading the topics is `kafka::trials`'; this part holds no
//! connection and is tested without one.

use crate::config::TrialConfig;
use crate::event::{EventTime, TimeFormat, epoch_to_millis, parse_time_str};
use crate::model::CANDIDATE_SUFFIX;
use crate::model::labels::Label;
use crate::model::trial::{Comparison, Policy, TrialBook, Verdict};
use std::sync::{Mutex, PoisonError};

/// Promotes model `name`'s candidate; the file changed, or why not.
pub type Promote = Box<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

/// The trials under way, fed by the topics' readers.
pub struct Trials {
    book: Mutex<Book>,
    policy: Policy,
    auto: bool,
    id_field: String,
    key_field: String,
    time_field: String,
}

struct Book {
    book: TrialBook,
    /// The candidates the rules name (model, candidate file), as of the
    /// last judgement: rows of other models are left out (rows scored
    /// before a promotion, still on their way), and a trial whose
    /// candidate changes starts again.
    named: Vec<(String, String)>,
    bad_labels: u64,
}

/// A trial's state, as the API shows it.
#[derive(Clone, Debug)]
pub struct TrialView {
    /// The model.
    pub model: String,
    /// The judgement now.
    pub comparison: Comparison,
    /// The policy it was judged by.
    pub policy: Policy,
    /// Whether the service promotes a winning candidate itself.
    pub auto: bool,
}

fn time_of(v: &serde_json::Value) -> Option<EventTime> {
    match v {
        serde_json::Value::String(s) => parse_time_str(s),
        serde_json::Value::Number(n) => n
            .as_f64()
            .and_then(|n| epoch_to_millis(n, TimeFormat::Auto)),
        _ => None,
    }
}

fn text_of(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Trials {
    /// Trials by `config`, over feature log rows whose key and time are the
    /// fields `key_field` and `time_field` (the main stream's, which the
    /// feature log copies); `named` are the candidates the rules name now
    /// (model, candidate file).
    pub fn new(
        config: &TrialConfig,
        delay: i64,
        (key_field, time_field): (String, String),
        named: Vec<(String, String)>,
    ) -> Trials {
        Trials {
            book: Mutex::new(Book {
                book: TrialBook::new(config.max_rows),
                named,
                bad_labels: 0,
            }),
            policy: Policy {
                delay,
                margin: config.margin,
                min_frauds: config.min_frauds,
                top_k: config.top_k,
            },
            auto: config.promote == "auto",
            id_field: config.id_field.clone(),
            key_field,
            time_field,
        }
    }

    /// A feature log row (a JSON object): each model whose score and
    /// candidate's score it carries gets the transaction. Rows without
    /// them (other keyings, models without candidates) are not trials'.
    pub fn row(&self, json: &[u8]) {
        let Ok(serde_json::Value::Object(row)) = serde_json::from_slice(json) else {
            return;
        };
        let mut scored = row.iter().filter_map(|(k, v)| {
            let model = k.strip_suffix(CANDIDATE_SUFFIX)?;
            Some((model, row.get(model)?.as_f64()?, v.as_f64()?))
        });
        let Some(first) = scored.next() else {
            return;
        };
        let field = |name: &str| row.get(name);
        let (Some(id), Some(key), Some(time)) = (
            field(&self.id_field).and_then(text_of),
            field(&self.key_field).and_then(text_of),
            field(&self.time_field).and_then(time_of),
        ) else {
            return;
        };
        let mut b = self.book.lock().unwrap_or_else(PoisonError::into_inner);
        for (model, current, candidate) in std::iter::once(first).chain(scored) {
            if b.named.iter().any(|(m, _)| m == model) {
                let dropped = b
                    .book
                    .add(model, id.clone(), time, &key, (current, candidate));
                if dropped > 0 {
                    tracing::warn!(
                        model,
                        dropped,
                        "trial: trial.max_rows reached, the oldest rows go; if they span less than trial.delay, no row is ever judged"
                    );
                }
            }
        }
    }

    /// A record of the labels topic.
    pub fn label(&self, json: &[u8]) {
        let parsed = std::str::from_utf8(json)
            .map_err(|e| e.to_string())
            .and_then(Label::parse);
        let mut b = self.book.lock().unwrap_or_else(PoisonError::into_inner);
        match parsed {
            Ok(label) => b.book.label(label),
            Err(why) => {
                b.bad_labels += 1;
                if b.bad_labels.is_power_of_two() {
                    tracing::warn!(
                        bad_labels = b.bad_labels,
                        "trial: a record of the labels topic is not a label ({why}); it is left out"
                    );
                }
            }
        }
    }

    /// `model`'s trial, judged now.
    pub fn view(&self, model: &str) -> Option<TrialView> {
        let b = self.book.lock().unwrap_or_else(PoisonError::into_inner);
        let comparison = b.book.judge(model, &self.policy)?;
        Some(TrialView {
            model: model.to_string(),
            comparison,
            policy: self.policy,
            auto: self.auto,
        })
    }

    /// Every trial under way, judged now.
    pub fn views(&self) -> Vec<TrialView> {
        let models: Vec<String> = {
            let b = self.book.lock().unwrap_or_else(PoisonError::into_inner);
            b.book.models().map(str::to_string).collect()
        };
        models.iter().filter_map(|m| self.view(m)).collect()
    }

    /// Ends `model`'s trial (its candidate was promoted by the API).
    pub fn end(&self, model: &str) {
        let mut b = self.book.lock().unwrap_or_else(PoisonError::into_inner);
        b.book.end(model);
        b.named.retain(|(m, _)| m != model);
    }

    /// Judges every trial: ends those whose candidate the rules no longer
    /// name (`candidates`: each model's candidate file now), and with
    /// automatic promotion promotes each winner through `promote`.
    pub fn tick(&self, candidates: &[(String, String)], promote: &Promote) {
        {
            let mut b = self.book.lock().unwrap_or_else(PoisonError::into_inner);
            let gone: Vec<String> = b
                .named
                .iter()
                .filter(|named| !candidates.contains(named))
                .map(|(m, _)| m.clone())
                .collect();
            for model in gone {
                tracing::info!(model = %model, "trial: the rules name another candidate (or none): the trial ends");
                b.book.end(&model);
            }
            b.named = candidates.to_vec();
        }
        if !self.auto {
            return;
        }
        for v in self.views() {
            if v.comparison.verdict != Verdict::Promote {
                continue;
            }
            match promote(&v.model) {
                Ok(file) => {
                    tracing::info!(
                        model = %v.model,
                        file = %file,
                        candidate_ap = ?v.comparison.candidate.ap,
                        running_ap = ?v.comparison.current.ap,
                        "trial: the candidate won and is promoted; the service switches at its next checkpoint"
                    );
                    self.end(&v.model);
                }
                Err(e) => {
                    tracing::warn!(model = %v.model, "trial: promoting the candidate failed: {e}")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn trials(promote: &str) -> Trials {
        let config = TrialConfig {
            min_frauds: 1,
            margin: 0.1,
            promote: promote.into(),
            ..TrialConfig::default()
        };
        Trials::new(
            &config,
            0,
            ("card".into(), "t".into()),
            vec![("m".into(), "next.onnx".into())],
        )
    }

    /// Day 0: card 1 genuine, card 2 fraud; the candidate ranks the fraud
    /// first, the running version last.
    fn feed(t: &Trials) {
        t.row(
            br#"{"TRANSACTION_ID":1,"card":1,"t":"2018-04-01T10:00:00","m":0.9,"m@candidate":0.1}"#,
        );
        t.row(
            br#"{"TRANSACTION_ID":2,"card":2,"t":"2018-04-01T11:00:00","m":0.1,"m@candidate":0.8}"#,
        );
        // Another keying's row, and a row of a model without candidate.
        t.row(br#"{"TRANSACTION_ID":2,"terminal":5,"t":"2018-04-01T11:00:00","x":1}"#);
        t.row(br#"{"TRANSACTION_ID":3,"card":2,"t":"2018-04-01T12:00:00","n":0.5}"#);
        t.label(br#"{"transaction_id":2,"fraud":true,"known_at":"2018-04-02T00:00:00Z"}"#);
        t.label(b"not a label");
    }

    #[test]
    fn rows_with_both_scores_make_a_trial_judged_by_the_labels() {
        let t = trials("manual");
        feed(&t);
        let views = t.views();
        assert_eq!(views.len(), 1);
        let c = &views[0].comparison;
        assert_eq!(
            (views[0].model.as_str(), c.transactions, c.frauds),
            ("m", 2, 1)
        );
        assert_eq!((c.current.ap, c.candidate.ap), (Some(0.5), Some(1.0)));
        assert_eq!(c.verdict, Verdict::Promote);
        assert_eq!(t.book.lock().unwrap().bad_labels, 1);
    }

    #[test]
    fn only_automatic_trials_promote_and_a_new_candidate_restarts_the_trial() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let promote: Promote = Box::new(move |m| {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(format!("{m}.tl"))
        });
        let named = [("m".to_string(), "next.onnx".to_string())];
        let manual = trials("manual");
        feed(&manual);
        manual.tick(&named, &promote);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert!(manual.view("m").is_some());
        // Another candidate file: the rows so far were the old one's.
        manual.tick(&[("m".into(), "other.onnx".into())], &promote);
        assert!(manual.view("m").is_none());
        feed(&manual);
        assert!(manual.view("m").is_some(), "the new candidate's trial");
        // No candidate any more: rows still carrying one are left out.
        manual.tick(&[], &promote);
        feed(&manual);
        assert!(manual.view("m").is_none());

        let auto = trials("auto");
        feed(&auto);
        auto.tick(&named, &promote);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(auto.view("m").is_none(), "promoted: the trial ends");
    }
}
