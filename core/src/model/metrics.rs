//! How well a model's scores rank fraud, by the definitions of the fraud
//! handbook (Le Borgne et al., "Reproducible Machine Learning for Credit
//! Card Fraud Detection", chapter 4): the area under the ROC curve, average
//! precision, and card precision@k, the share of compromised cards among
//! the k cards an investigator checks each day, a card found on one day
//! left out of the days after.

/// One scored transaction: its day, card, score and label (fraud or not).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scored {
    /// The day it happened on (days since the data's start).
    pub day: i64,
    /// Its card.
    pub card: i64,
    /// The model's score.
    pub score: f64,
    /// Fraud.
    pub fraud: bool,
}

/// The area under the ROC curve: the chance that a fraud scores above a
/// genuine transaction, ties counting half (scikit-learn's
/// `roc_auc_score`). `None` without both classes.
pub fn auc_roc(rows: &[Scored]) -> Option<f64> {
    let positives = rows.iter().filter(|r| r.fraud).count() as f64;
    let negatives = rows.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return None;
    }
    let mut sorted: Vec<&Scored> = rows.iter().collect();
    sorted.sort_by(|a, b| a.score.total_cmp(&b.score));
    // Sum of the positives' ranks, ties given their mean rank.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j < sorted.len() && sorted[j].score == sorted[i].score {
            j += 1;
        }
        let mean_rank = (i + 1 + j) as f64 / 2.0;
        rank_sum += mean_rank * sorted[i..j].iter().filter(|r| r.fraud).count() as f64;
        i = j;
    }
    Some((rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives))
}

/// Average precision: the precision at each threshold weighted by the
/// recall it adds, thresholds at every distinct score, highest first
/// (scikit-learn's `average_precision_score`). `None` without a fraud.
pub fn average_precision(rows: &[Scored]) -> Option<f64> {
    let positives = rows.iter().filter(|r| r.fraud).count() as f64;
    if positives == 0.0 {
        return None;
    }
    let mut sorted: Vec<&Scored> = rows.iter().collect();
    sorted.sort_by(|a, b| b.score.total_cmp(&a.score));
    let (mut ap, mut taken, mut found) = (0.0, 0.0, 0.0);
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        let mut new = 0.0;
        while j < sorted.len() && sorted[j].score == sorted[i].score {
            new += f64::from(u8::from(sorted[j].fraud));
            j += 1;
        }
        taken += (j - i) as f64;
        found += new;
        ap += (new / positives) * (found / taken);
        i = j;
    }
    Some(ap)
}

/// Card precision@k per day, in day order, and their mean: each day, the
/// cards not yet found are ranked by their highest score of the day, and
/// the share of the top `k` with a fraud that day is the day's precision;
/// those cards count as found from the next day (the handbook's
/// `card_precision_top_k` with detected cards removed). Ties rank by card.
pub fn card_precision_at(rows: &[Scored], k: usize) -> (Vec<f64>, f64) {
    let mut days: Vec<i64> = rows.iter().map(|r| r.day).collect();
    days.sort_unstable();
    days.dedup();
    let mut found = hashbrown::HashSet::new();
    let mut per_day = Vec::with_capacity(days.len());
    for d in days {
        let mut cards: hashbrown::HashMap<i64, (f64, bool)> = hashbrown::HashMap::new();
        for r in rows
            .iter()
            .filter(|r| r.day == d && !found.contains(&r.card))
        {
            let c = cards.entry(r.card).or_insert((f64::NEG_INFINITY, false));
            c.0 = c.0.max(r.score);
            c.1 |= r.fraud;
        }
        let mut ranked: Vec<(i64, f64, bool)> =
            cards.into_iter().map(|(c, (s, f))| (c, s, f)).collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let caught: Vec<i64> = ranked.iter().take(k).filter(|c| c.2).map(|c| c.0).collect();
        per_day.push(caught.len() as f64 / k.max(1) as f64);
        found.extend(caught);
    }
    let mean = if per_day.is_empty() {
        0.0
    } else {
        per_day.iter().sum::<f64>() / per_day.len() as f64
    };
    (per_day, mean)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(day: i64, card: i64, score: f64, fraud: bool) -> Scored {
        Scored {
            day,
            card,
            score,
            fraud,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    /// Four transactions, by hand: scores 0.9 (fraud), 0.8, 0.7 (fraud),
    /// 0.1. AUC: of the 2 × 2 pairs, the frauds outrank 3 (0.9 > both, 0.7 >
    /// 0.1): 3/4. AP: thresholds 0.9 (recall ½, precision 1) and 0.7
    /// (recall 1, precision ⅔): ½ · 1 + ½ · ⅔ = 5/6.
    #[test]
    fn auc_and_average_precision_by_hand() {
        let rows = [
            row(0, 1, 0.9, true),
            row(0, 2, 0.8, false),
            row(0, 3, 0.7, true),
            row(0, 4, 0.1, false),
        ];
        assert!(close(auc_roc(&rows).unwrap(), 0.75));
        assert!(close(average_precision(&rows).unwrap(), 5.0 / 6.0));
        // A tie between a fraud and a genuine transaction counts half, and
        // is one threshold: AUC (1 + ½) / 2, AP 1 · ½ = ½ (at 0.5: both
        // taken, one fraud among two, all the recall).
        let tied = [
            row(0, 1, 0.5, true),
            row(0, 2, 0.5, false),
            row(0, 3, 0.2, false),
        ];
        assert!(close(auc_roc(&tied).unwrap(), 0.75));
        assert!(close(average_precision(&tied).unwrap(), 0.5));
        assert_eq!(auc_roc(&rows[1..2]), None);
        assert_eq!(average_precision(&[row(0, 2, 0.8, false)]), None);
    }

    /// Two days, k = 2. Day 0: cards 1 (0.9, fraud; its other transaction
    /// 0.2 genuine: the card's max score and any fraud count), 2 (0.8), 3
    /// (0.3, fraud): the top 2 are 1 and 2, one fraud: ½; card 1 is found.
    /// Day 1: card 1 (0.95, fraud again) is left out, so the top 2 are 3
    /// (0.6, fraud) and 4 (0.5): ½. Had card 1 counted again, day 1 would
    /// have been 1 and 3: 1.
    #[test]
    fn card_precision_leaves_out_cards_already_found() {
        let rows = [
            row(0, 1, 0.9, true),
            row(0, 1, 0.2, false),
            row(0, 2, 0.8, false),
            row(0, 3, 0.3, true),
            row(1, 1, 0.95, true),
            row(1, 3, 0.6, true),
            row(1, 4, 0.5, false),
        ];
        let (per_day, mean) = card_precision_at(&rows, 2);
        assert_eq!(per_day, [0.5, 0.5]);
        assert!(close(mean, 0.5));
        // Fewer cards than k: the day's precision is still over k.
        let (per_day, _) = card_precision_at(&rows[..1], 2);
        assert_eq!(per_day, [0.5]);
    }
}
