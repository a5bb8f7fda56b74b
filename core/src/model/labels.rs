//! Labels as they arrive: fraud confirmations and chargebacks, each naming
//! a transaction, saying whether it was fraud, and when that became known.
//!
//! A label comes days or weeks after its transaction, and may be revised (a
//! chargeback reversed), so the store keeps every label with its time and
//! answers "what was known about this transaction at time t": training at t
//! then never reads a label from its future. A transaction without a label
//! known at t counts as genuine, which is how card fraud is labelled (no
//! chargeback, no fraud).
//!
//! One label per JSON line:
//!
//! ```json
//! {"transaction_id": "1747", "fraud": true, "known_at": "2018-04-09T10:00:00Z"}
//! ```
//!
//! `transaction_id` is a string or an integer (compared as text); `fraud` is
//! a boolean or 0/1; `known_at` is any time the event decoder reads (RFC
//! 3339, zone-less ISO-8601 as UTC, epoch seconds or milliseconds).

use crate::event::{EventTime, TimeFormat, epoch_to_millis, parse_time_str};
use hashbrown::HashMap;
use serde_json::Value;

/// One label.
#[derive(Clone, Debug, PartialEq)]
pub struct Label {
    /// The transaction it is about.
    pub transaction_id: String,
    /// Fraud (true) or confirmed genuine (false).
    pub fraud: bool,
    /// When it became known.
    pub known_at: EventTime,
}

/// A line that is not a label, and why.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("line {line}: {reason}")]
pub struct LabelError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

impl Label {
    /// Reads one label from a line of JSON.
    pub fn parse(line: &str) -> Result<Label, String> {
        let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
        let Value::Object(o) = v else {
            return Err("not a JSON object".into());
        };
        let transaction_id = match o.get("transaction_id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(_) => return Err("`transaction_id` is not a non-empty string or a number".into()),
            None => return Err("no `transaction_id`".into()),
        };
        let fraud = match o.get("fraud") {
            Some(Value::Bool(b)) => *b,
            Some(Value::Number(n)) if n.as_u64() == Some(0) => false,
            Some(Value::Number(n)) if n.as_u64() == Some(1) => true,
            Some(_) => return Err("`fraud` is not true, false, 0 or 1".into()),
            None => return Err("no `fraud`".into()),
        };
        let known_at = match o.get("known_at") {
            Some(Value::String(s)) => parse_time_str(s),
            Some(Value::Number(n)) => n
                .as_f64()
                .and_then(|n| epoch_to_millis(n, TimeFormat::Auto)),
            _ => None,
        }
        .ok_or("no `known_at`, or not a time (RFC 3339, ISO-8601 or epoch)")?;
        Ok(Label {
            transaction_id,
            fraud,
            known_at,
        })
    }
}

/// Every label read, by transaction.
#[derive(Debug, Default)]
pub struct Labels {
    /// Each transaction's labels, ordered by `known_at` (then arrival).
    by_id: HashMap<String, Vec<(EventTime, bool)>>,
    count: usize,
}

impl Labels {
    /// Reads labels from JSON lines; blank lines are skipped, and the first
    /// bad line is an error naming it (a label lost silently would train a
    /// model on a fraud called genuine).
    pub fn from_json_lines(text: &str) -> Result<Labels, LabelError> {
        let mut labels = Labels::default();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let label = Label::parse(line).map_err(|reason| LabelError {
                line: i + 1,
                reason,
            })?;
            labels.insert(label);
        }
        Ok(labels)
    }

    /// Adds a label.
    pub fn insert(&mut self, label: Label) {
        let list = self.by_id.entry(label.transaction_id).or_default();
        let at = list.partition_point(|&(t, _)| t <= label.known_at);
        list.insert(at, (label.known_at, label.fraud));
        self.count += 1;
    }

    /// How many labels were read.
    pub fn len(&self) -> usize {
        self.count
    }

    /// No label at all.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether `transaction_id` was known as fraud at `t`: its latest label
    /// known at or before `t` says so. No label by then: genuine.
    pub fn fraud_at(&self, transaction_id: &str, t: EventTime) -> bool {
        self.by_id.get(transaction_id).is_some_and(|list| {
            let known = list.partition_point(|&(k, _)| k <= t);
            known > 0 && list[known - 1].1
        })
    }

    /// When `transaction_id` was first known as fraud, if ever.
    pub fn first_known_fraud(&self, transaction_id: &str) -> Option<EventTime> {
        self.by_id
            .get(transaction_id)?
            .iter()
            .find(|&&(_, fraud)| fraud)
            .map(|&(t, _)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    #[test]
    fn reads_ids_as_text_flags_as_bools_and_times_in_every_format() {
        let l = Label::parse(r#"{"transaction_id": 17, "fraud": 1, "known_at": "1970-01-02"}"#)
            .unwrap();
        assert_eq!(
            l,
            Label {
                transaction_id: "17".into(),
                fraud: true,
                known_at: DAY
            }
        );
        let l =
            Label::parse(r#"{"transaction_id": "a", "fraud": false, "known_at": 86400}"#).unwrap();
        assert_eq!((l.fraud, l.known_at), (false, DAY));
        let l =
            Label::parse(r#"{"transaction_id": "a", "fraud": true, "known_at": 1000000000000}"#)
                .unwrap();
        assert_eq!(l.known_at, 1_000_000_000_000, "milliseconds from 10^11 up");
    }

    #[test]
    fn a_bad_line_is_named_with_its_reason() {
        let text = "{\"transaction_id\": 1, \"fraud\": 1, \"known_at\": 0}\n\n{\"transaction_id\": 2, \"fraud\": \"yes\", \"known_at\": 0}\n";
        let e = Labels::from_json_lines(text).unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.reason.contains("`fraud`"), "{e}");
        for (line, reason) in [
            ("[]", "not a JSON object"),
            ("{", "not JSON"),
            (r#"{"fraud": 1, "known_at": 0}"#, "no `transaction_id`"),
            (
                r#"{"transaction_id": "", "fraud": 1, "known_at": 0}"#,
                "non-empty",
            ),
            (r#"{"transaction_id": 1, "known_at": 0}"#, "no `fraud`"),
            (
                r#"{"transaction_id": 1, "fraud": 2, "known_at": 0}"#,
                "`fraud` is not",
            ),
            (r#"{"transaction_id": 1, "fraud": 1}"#, "no `known_at`"),
            (
                r#"{"transaction_id": 1, "fraud": 1, "known_at": "soon"}"#,
                "not a time",
            ),
            (
                r#"{"transaction_id": 1, "fraud": 1, "known_at": 1e300}"#,
                "not a time",
            ),
        ] {
            let e = Label::parse(line).unwrap_err();
            assert!(e.contains(reason), "{line}: {e}");
        }
    }

    #[test]
    fn what_is_known_at_a_time_is_the_latest_label_by_then() {
        let mut labels = Labels::default();
        // A chargeback on day 5, reversed on day 9; read out of order.
        labels.insert(Label {
            transaction_id: "t".into(),
            fraud: false,
            known_at: 9 * DAY,
        });
        labels.insert(Label {
            transaction_id: "t".into(),
            fraud: true,
            known_at: 5 * DAY,
        });
        assert!(!labels.fraud_at("t", 5 * DAY - 1), "not known yet");
        assert!(labels.fraud_at("t", 5 * DAY));
        assert!(labels.fraud_at("t", 9 * DAY - 1));
        assert!(!labels.fraud_at("t", 9 * DAY), "reversed");
        assert!(!labels.fraud_at("other", 100 * DAY), "no label: genuine");
        assert_eq!(labels.first_known_fraud("t"), Some(5 * DAY));
        assert_eq!(labels.first_known_fraud("other"), None);
        assert_eq!(labels.len(), 2);
    }
}
