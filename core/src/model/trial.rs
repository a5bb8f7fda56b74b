//! A model's candidate on trial: the running version and the candidate
//! score the same transactions (`model NAME from … candidate …`), and once
//! their labels have arrived both are measured by the handbook's metrics
//! on those transactions alone. The candidate is promoted when it ranks
//! fraud better by a set margin; until enough frauds are labelled, the
//! trial waits.
//!
//! Only transactions older than the label delay count (their labels are
//! complete), labels are read as known at the time of the comparison, and
//! each day leaves out the cards already known to be compromised when it
//! began (as [`super::training::test_rows`] does for a model's test span).

use super::labels::Labels;
use super::metrics::{self, Scored};
use super::training::{self, DAY_MS, Row, Split};
use crate::event::EventTime;
use std::ops::Range;

/// One transaction both versions scored.
#[derive(Clone, Debug, PartialEq)]
pub struct TrialRow {
    /// Its id, as labels name it.
    pub id: String,
    /// Its event time.
    pub time: EventTime,
    /// Its card (what card precision counts).
    pub card: i64,
    /// The running version's score.
    pub current: f64,
    /// The candidate's score.
    pub candidate: f64,
}

/// When a candidate is promoted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    /// How long labels take to arrive: younger transactions are not judged.
    pub delay: i64,
    /// How much higher the candidate's average precision must be.
    pub margin: f64,
    /// The frauds labelled among the judged transactions before any verdict.
    pub min_frauds: usize,
    /// Card precision counts the top k cards of each day.
    pub top_k: usize,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            delay: 7 * DAY_MS,
            margin: 0.01,
            min_frauds: 50,
            top_k: 100,
        }
    }
}

/// One version's figures on the judged transactions.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Figures {
    /// Area under the ROC curve (`None` without both classes).
    pub auc: Option<f64>,
    /// Average precision (`None` without a fraud).
    pub ap: Option<f64>,
    /// Card precision@k, the mean over the days.
    pub card_precision: f64,
}

impl Figures {
    /// The figures of `scored`, card precision at `k`.
    pub fn of(scored: &[Scored], k: usize) -> Figures {
        Figures {
            auc: metrics::auc_roc(scored),
            ap: metrics::average_precision(scored),
            card_precision: metrics::card_precision_at(scored, k).1,
        }
    }
}

/// What the trial says.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// The candidate ranks fraud better by the margin.
    Promote,
    /// The candidate is not better enough (why).
    Keep(String),
    /// Too few labelled frauds to judge yet (why).
    Wait(String),
}

/// Both versions on the same transactions.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// The event times judged (`None`: no transaction old enough).
    pub window: Option<Range<EventTime>>,
    /// Labels known at or before this time were read.
    pub labels_at: EventTime,
    /// Transactions judged (known-compromised cards left out).
    pub transactions: usize,
    /// Frauds among them.
    pub frauds: usize,
    /// The running version.
    pub current: Figures,
    /// The candidate.
    pub candidate: Figures,
    /// The outcome.
    pub verdict: Verdict,
}

/// Judges the trial at time `now`: the rows older than `policy.delay`,
/// with the labels known at `now`. `history` holds transactions not on
/// trial (before it began): their cards, once known compromised, are left
/// out of the days after as the trial's own are.
pub fn compare(
    rows: &[TrialRow],
    history: &[Row<'_>],
    labels: &Labels,
    now: EventTime,
    policy: &Policy,
) -> Comparison {
    let complete = now.saturating_sub(policy.delay);
    let start = rows.iter().map(|r| r.time).filter(|&t| t < complete).min();
    let window = start.map(|s| s..complete);
    let judged = match &window {
        Some(w) => {
            let keys: Vec<Row<'_>> = history
                .iter()
                .copied()
                .chain(rows.iter().map(|r| Row {
                    id: &r.id,
                    time: r.time,
                    card: r.card,
                }))
                .collect();
            let split = Split {
                window: w.clone(),
                labels_at: now,
            };
            training::test_rows(&keys, &split, labels)
                .into_iter()
                .filter_map(|(i, fraud)| i.checked_sub(history.len()).map(|i| (i, fraud)))
                .collect()
        }
        None => Vec::new(),
    };
    let scored = |score: fn(&TrialRow) -> f64| -> Vec<Scored> {
        judged
            .iter()
            .map(|&(i, fraud)| Scored {
                day: rows[i].time.div_euclid(DAY_MS),
                card: rows[i].card,
                score: score(&rows[i]),
                fraud,
            })
            .collect()
    };
    let current = Figures::of(&scored(|r| r.current), policy.top_k);
    let candidate = Figures::of(&scored(|r| r.candidate), policy.top_k);
    let frauds = judged.iter().filter(|(_, f)| *f).count();
    let verdict = verdict(current, candidate, frauds, judged.len(), policy);
    Comparison {
        window,
        labels_at: now,
        transactions: judged.len(),
        frauds,
        current,
        candidate,
        verdict,
    }
}

fn verdict(
    current: Figures,
    candidate: Figures,
    frauds: usize,
    transactions: usize,
    policy: &Policy,
) -> Verdict {
    if frauds < policy.min_frauds.max(1) || frauds == transactions {
        return Verdict::Wait(format!(
            "{frauds} frauds labelled among {transactions} transactions old enough to judge; the trial needs {}",
            policy.min_frauds.max(1)
        ));
    }
    // Both exist: there are frauds and genuine transactions.
    let (now, next) = (
        current.ap.unwrap_or_default(),
        candidate.ap.unwrap_or_default(),
    );
    if next < now + policy.margin {
        return Verdict::Keep(format!(
            "the candidate's average precision {next:.3} is not {:.3} above the running version's {now:.3}",
            policy.margin
        ));
    }
    if candidate.card_precision < current.card_precision {
        return Verdict::Keep(format!(
            "the candidate's card precision@{k} {:.3} is below the running version's {:.3}",
            candidate.card_precision,
            current.card_precision,
            k = policy.top_k
        ));
    }
    Verdict::Promote
}

/// The trials of a running service: each model's rows as the feature log
/// brings them (both versions' scores), and the labels as they arrive. Its
/// clock is the latest time it has seen, an event's or a label's, so a
/// judgement reads what had arrived by then however fast the data is
/// replayed.
#[derive(Debug)]
pub struct TrialBook {
    trials: std::collections::BTreeMap<String, Vec<TrialRow>>,
    cards: hashbrown::HashMap<String, i64>,
    labels: Labels,
    now: EventTime,
    max_rows: usize,
}

impl TrialBook {
    /// A book keeping at most `max_rows` rows per model: past it, the
    /// oldest quarter goes (the trial then judges the latest rows).
    pub fn new(max_rows: usize) -> TrialBook {
        TrialBook {
            trials: Default::default(),
            cards: Default::default(),
            labels: Labels::default(),
            now: EventTime::MIN,
            max_rows: max_rows.max(4),
        }
    }

    /// A transaction both versions of `model` scored; `card` is its key.
    /// Returns the rows dropped to make room (the oldest quarter, at the
    /// bound), for the caller to report.
    pub fn add(
        &mut self,
        model: &str,
        id: String,
        time: EventTime,
        card: &str,
        (current, candidate): (f64, f64),
    ) -> usize {
        let next = self.cards.len() as i64;
        let card = match self.cards.get(card) {
            Some(&c) => c,
            None => *self.cards.entry(card.to_string()).or_insert(next),
        };
        self.now = self.now.max(time);
        let rows = match self.trials.get_mut(model) {
            Some(rows) => rows,
            None => self.trials.entry(model.to_string()).or_default(),
        };
        let dropped = if rows.len() >= self.max_rows {
            rows.drain(..self.max_rows / 4).len()
        } else {
            0
        };
        rows.push(TrialRow {
            id,
            time,
            card,
            current,
            candidate,
        });
        dropped
    }

    /// A label as it arrives.
    pub fn label(&mut self, label: super::labels::Label) {
        self.now = self.now.max(label.known_at);
        self.labels.insert(label);
    }

    /// The models with a trial under way.
    pub fn models(&self) -> impl Iterator<Item = &str> {
        self.trials.keys().map(String::as_str)
    }

    /// Ends `model`'s trial (promoted, or its candidate changed): its rows
    /// go, the labels stay.
    pub fn end(&mut self, model: &str) {
        self.trials.remove(model);
    }

    /// The latest time seen.
    pub fn now(&self) -> EventTime {
        self.now
    }

    /// Labels received.
    pub fn labels(&self) -> usize {
        self.labels.len()
    }

    /// `model`'s trial judged now, if it has one. Transactions are those
    /// since the trial began (the book has no rows before it), so a card
    /// compromised before counts only from its first fraud on trial.
    pub fn judge(&self, model: &str, policy: &Policy) -> Option<Comparison> {
        let rows = self.trials.get(model)?;
        Some(compare(rows, &[], &self.labels, self.now, policy))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::labels::Label;

    const T0: EventTime = 100 * DAY_MS;

    fn row(id: u32, day: i64, card: i64, current: f64, candidate: f64) -> TrialRow {
        TrialRow {
            id: id.to_string(),
            time: T0 + day * DAY_MS + 3_600_000,
            card,
            current,
            candidate,
        }
    }

    fn fraud(labels: &mut Labels, id: u32, known_at: EventTime) {
        labels.insert(Label {
            transaction_id: id.to_string(),
            fraud: true,
            known_at,
        });
    }

    fn policy() -> Policy {
        Policy {
            delay: 2 * DAY_MS,
            margin: 0.05,
            min_frauds: 1,
            top_k: 1,
        }
    }

    /// Two days, two cards a day: the candidate ranks the fraud first, the
    /// running version last.
    fn trial() -> (Vec<TrialRow>, Labels) {
        let rows = vec![
            row(1, 0, 1, 0.9, 0.1),
            row(2, 0, 2, 0.1, 0.8),
            row(3, 1, 3, 0.7, 0.2),
            row(4, 1, 4, 0.3, 0.9),
            // Too young to judge at T0 + 3 days with a 2-day delay.
            row(5, 2, 5, 0.0, 0.0),
        ];
        let mut labels = Labels::default();
        fraud(&mut labels, 2, T0 + DAY_MS);
        fraud(&mut labels, 4, T0 + 2 * DAY_MS);
        (rows, labels)
    }

    #[test]
    fn the_candidate_that_ranks_fraud_first_is_promoted() {
        let (rows, labels) = trial();
        let c = compare(&rows, &[], &labels, T0 + 3 * DAY_MS, &policy());
        // Judged: what is older than now - delay = T0 + 1d, day 0.
        assert_eq!(c.window, Some(rows[0].time..T0 + DAY_MS));
        assert_eq!((c.transactions, c.frauds), (2, 1));
        assert_eq!(c.current.ap, Some(0.5));
        assert_eq!(c.candidate.ap, Some(1.0));
        assert_eq!(c.current.auc, Some(0.0));
        assert_eq!(c.candidate.auc, Some(1.0));
        assert_eq!(
            (c.current.card_precision, c.candidate.card_precision),
            (0.0, 1.0)
        );
        assert_eq!(c.verdict, Verdict::Promote);
    }

    #[test]
    fn labels_not_yet_known_are_not_read_and_the_trial_waits() {
        let (rows, labels) = trial();
        // At T0 + 0.5d nothing is two days old.
        let c = compare(&rows, &[], &labels, T0 + DAY_MS / 2, &policy());
        assert_eq!((c.window.clone(), c.transactions), (None, 0));
        assert!(matches!(c.verdict, Verdict::Wait(_)), "{:?}", c.verdict);
        let late = Policy {
            delay: 0,
            ..policy()
        };
        // With no delay, day 1's fraud (known at T0 + 2d) is read as
        // genuine at T0 + 1.5d.
        let c = compare(&rows, &[], &labels, T0 + DAY_MS + DAY_MS / 2, &late);
        assert_eq!((c.transactions, c.frauds), (4, 1));
    }

    #[test]
    fn a_candidate_within_the_margin_or_worse_by_cards_is_kept() {
        let (mut rows, labels) = trial();
        let wide = Policy {
            delay: 0,
            margin: 0.6,
            ..policy()
        };
        let c = compare(&rows, &[], &labels, T0 + 3 * DAY_MS, &wide);
        assert!(
            matches!(&c.verdict, Verdict::Keep(why) if why.contains("not 0.600 above")),
            "{:?}",
            c.verdict
        );
        // As good by average precision (0.5 each), but on day 1 it shows a
        // genuine card first where the running version showed the fraud.
        rows[3].current = 0.8;
        rows[0].candidate = 0.85;
        rows[2].candidate = 0.95;
        let c = compare(
            &rows,
            &[],
            &labels,
            T0 + 3 * DAY_MS,
            &Policy {
                delay: 0,
                margin: 0.0,
                ..policy()
            },
        );
        assert!(
            matches!(&c.verdict, Verdict::Keep(why) if why.contains("card precision@1")),
            "{:?} {c:?}",
            c.verdict
        );
    }

    #[test]
    fn the_book_judges_each_model_on_its_rows_at_the_latest_time_seen() {
        let (rows, _) = trial();
        let mut book = TrialBook::new(100);
        assert!(book.judge("m", &policy()).is_none());
        for r in &rows {
            let card = format!("card-{}", r.card);
            book.add("m", r.id.clone(), r.time, &card, (r.current, r.candidate));
            book.add("other", r.id.clone(), r.time, &card, (0.5, 0.5));
        }
        let mut labels = Labels::default();
        for id in [2, 4] {
            fraud(&mut labels, id, T0 + 3 * DAY_MS);
            book.label(Label {
                transaction_id: id.to_string(),
                fraud: true,
                known_at: T0 + 3 * DAY_MS,
            });
        }
        assert_eq!(book.now(), T0 + 3 * DAY_MS);
        let by_book = book.judge("m", &policy()).unwrap();
        assert_eq!(
            by_book,
            compare(&rows, &[], &labels, T0 + 3 * DAY_MS, &policy())
        );
        assert_eq!(by_book.verdict, Verdict::Promote);
        assert_eq!(book.models().collect::<Vec<_>>(), ["m", "other"]);
        book.end("m");
        assert!(book.judge("m", &policy()).is_none());
        // Past its bound, the oldest quarter goes.
        let mut small = TrialBook::new(4);
        let dropped: usize = (rows.iter().enumerate())
            .map(|(i, r)| small.add("m", i.to_string(), r.time, "c", (0.0, 0.0)))
            .sum();
        assert_eq!((small.trials["m"].len(), dropped), (4, rows.len() - 4));
        assert_eq!(small.trials["m"][0].id, "1");
    }

    #[test]
    fn a_card_known_compromised_is_left_out_of_the_days_after() {
        let (mut rows, labels) = trial();
        // Card 2 again on day 2, after its fraud of day 0 became known (at
        // the start of day 1): not shown again.
        rows.push(row(6, 2, 2, 0.0, 1.0));
        let c = compare(
            &rows,
            &[],
            &labels,
            T0 + 3 * DAY_MS,
            &Policy {
                delay: 0,
                ..policy()
            },
        );
        assert_eq!((c.transactions, c.frauds), (5, 2));
        // The same card compromised before the trial began.
        let mut labels = labels;
        fraud(&mut labels, 99, T0 - DAY_MS);
        let before = [Row {
            id: "99",
            time: T0 - 2 * DAY_MS,
            card: 3,
        }];
        let all = Policy {
            delay: 0,
            ..policy()
        };
        let c = compare(&rows, &before, &labels, T0 + 3 * DAY_MS, &all);
        assert_eq!((c.transactions, c.frauds), (4, 2), "card 3 left out");
    }
}
