//! Which transactions train a model and which evaluate it, at a given
//! time, so that neither reads a label from its future.
//!
//! Retraining at `as_of` (the fraud handbook's protocol, chapter 5, with
//! labels as they arrive instead of a fixed delay):
//!
//! - Labels take up to `delay` to arrive, so only transactions before
//!   `complete = as_of - delay` have all theirs. The new model trains on
//!   the `train` span that ends there, labelled as known at `as_of`.
//! - Its figures come from the same recipe one `test` span earlier: a
//!   model trained with only what was known when the last complete span
//!   began, then tested on that span (`[complete - test, complete)`).
//!   The current model is tested on the same span, for comparison.
//! - Each test day leaves out the cards already known to be compromised
//!   when the day began: an investigator would not be shown them again.

use super::labels::Labels;
use crate::event::EventTime;
use hashbrown::HashMap;
use std::ops::Range;

/// A day in milliseconds.
pub const DAY_MS: i64 = 86_400_000;

/// When to retrain and over which spans (all in milliseconds).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// The time of the retraining: no label known after it is read.
    pub as_of: EventTime,
    /// How long labels take to arrive.
    pub delay: i64,
    /// How much labelled history a model trains on.
    pub train: i64,
    /// The span a model is evaluated on.
    pub test: i64,
}

/// A span of transactions and the time their labels are read at.
#[derive(Clone, Debug, PartialEq)]
pub struct Split {
    /// The transactions' event times.
    pub window: Range<EventTime>,
    /// Labels known at or before this time count.
    pub labels_at: EventTime,
}

/// The three spans of one retraining.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// What the new model trains on.
    pub train: Split,
    /// What the recipe trains on to be evaluated.
    pub eval_train: Split,
    /// What both the recipe's evaluation model and the current model are
    /// tested on.
    pub test: Split,
}

impl Schedule {
    /// The spans, or why the schedule makes none.
    pub fn plan(&self) -> Result<Plan, String> {
        if self.delay < 0 {
            return Err("the label delay is negative".into());
        }
        if self.train <= 0 || self.test <= 0 {
            return Err("the training and test spans must be longer than zero".into());
        }
        let complete = self.as_of - self.delay;
        let test_start = complete - self.test;
        let eval_complete = test_start - self.delay;
        Ok(Plan {
            train: Split {
                window: complete - self.train..complete,
                labels_at: self.as_of,
            },
            eval_train: Split {
                window: eval_complete - self.train..eval_complete,
                labels_at: test_start,
            },
            test: Split {
                window: test_start..complete,
                labels_at: self.as_of,
            },
        })
    }
}

/// A transaction of the feature log, as training needs it.
#[derive(Clone, Copy, Debug)]
pub struct Row<'a> {
    /// Its id, as labels name it.
    pub id: &'a str,
    /// Its event time.
    pub time: EventTime,
    /// Its card (or whatever key an investigator checks).
    pub card: i64,
}

/// The rows in `split`'s window with their labels as known then: (index
/// into `rows`, fraud).
pub fn labelled(rows: &[Row<'_>], split: &Split, labels: &Labels) -> Vec<(usize, bool)> {
    rows.iter()
        .enumerate()
        .filter(|(_, r)| split.window.contains(&r.time))
        .map(|(i, r)| (i, labels.fraud_at(r.id, split.labels_at)))
        .collect()
}

/// The test rows: [`labelled`], less on each day the cards known to be
/// compromised before the day began (by a fraud label on any of their
/// transactions in `rows`).
pub fn test_rows(rows: &[Row<'_>], split: &Split, labels: &Labels) -> Vec<(usize, bool)> {
    let mut known: HashMap<i64, EventTime> = HashMap::new();
    for r in rows {
        if let Some(t) = labels.first_known_fraud(r.id) {
            known
                .entry(r.card)
                .and_modify(|k| *k = (*k).min(t))
                .or_insert(t);
        }
    }
    labelled(rows, split, labels)
        .into_iter()
        .filter(|&(i, _)| {
            let day_start = rows[i].time.div_euclid(DAY_MS) * DAY_MS;
            known.get(&rows[i].card).is_none_or(|&k| k >= day_start)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::labels::Label;

    const D: i64 = DAY_MS;

    #[test]
    fn the_spans_end_where_labels_are_complete_and_the_evaluation_precedes_them() {
        let plan = Schedule {
            as_of: 30 * D,
            delay: 7 * D,
            train: 7 * D,
            test: 7 * D,
        }
        .plan()
        .unwrap();
        assert_eq!(plan.train.window, 16 * D..23 * D);
        assert_eq!(plan.train.labels_at, 30 * D);
        assert_eq!(plan.test.window, 16 * D..23 * D);
        // The evaluation model knows only what was known when the test
        // span began, so its training ends a delay before that.
        assert_eq!(plan.eval_train.window, 2 * D..9 * D);
        assert_eq!(plan.eval_train.labels_at, 16 * D);
        let bad = Schedule {
            as_of: 0,
            delay: D,
            train: 0,
            test: D,
        };
        assert!(bad.plan().is_err());
    }

    fn label(id: &str, known_at: i64) -> Label {
        Label {
            transaction_id: id.into(),
            fraud: true,
            known_at,
        }
    }

    #[test]
    fn training_reads_only_labels_known_by_its_time() {
        let rows = [
            Row {
                id: "a",
                time: D,
                card: 1,
            },
            Row {
                id: "b",
                time: 2 * D,
                card: 2,
            },
            Row {
                id: "c",
                time: 9 * D,
                card: 3,
            },
        ];
        let mut labels = Labels::default();
        labels.insert(label("a", 3 * D));
        labels.insert(label("b", 8 * D));
        let split = Split {
            window: 0..5 * D,
            labels_at: 5 * D,
        };
        // `b`'s fraud becomes known after the training time: genuine then.
        assert_eq!(
            labelled(&rows, &split, &labels),
            vec![(0, true), (1, false)]
        );
    }

    #[test]
    fn a_test_day_leaves_out_cards_known_compromised_before_it() {
        let rows = [
            // Card 1's fraud on day 1 is known on day 3.
            Row {
                id: "f",
                time: D,
                card: 1,
            },
            Row {
                id: "g",
                time: 3 * D + 10,
                card: 1,
            },
            Row {
                id: "h",
                time: 4 * D,
                card: 1,
            },
            Row {
                id: "i",
                time: 4 * D,
                card: 2,
            },
        ];
        let mut labels = Labels::default();
        labels.insert(label("f", 3 * D + 5));
        let split = Split {
            window: 3 * D..5 * D,
            labels_at: 10 * D,
        };
        // Day 3 began before the label: card 1 is still shown that day,
        // and not on day 4.
        assert_eq!(
            test_rows(&rows, &split, &labels),
            vec![(1, false), (3, false)]
        );
    }
}
