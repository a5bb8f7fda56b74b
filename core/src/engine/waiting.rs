//! The events an engine holds until the watermark passes them, in the
//! order they will be processed: event time, then stream, then the stream's
//! `order` fields ([`RuleSet::event_order`]), then position in the input,
//! then arrival.
//!
//! Most events come in that order and are appended to a run. Those that come
//! before some event already waiting — a terminal's events forwarded from
//! several source partitions, each in order but interleaved in chunks — go
//! to an ordered map instead, so placing one costs a logarithm of what
//! waits rather than shifting every event after it (a chunk of thousands
//! per event, with a deque). Events leave from whichever front is first.

use super::RuleSet;
use crate::event::{Event, EventTime, Value};
use std::cmp::Ordering;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// The waiting events (see the module docs).
#[derive(Default)]
pub(super) struct Waiting {
    /// Events that came in processing order, each at or after the one
    /// before, with their arrival number.
    run: VecDeque<(u64, Arc<Event>)>,
    /// Events that came before some event of `run`, by their place.
    early: BTreeMap<Place, Arc<Event>>,
    /// Arrival numbers: what orders events equal in all else.
    arrivals: u64,
}

/// An event's place in processing order.
#[derive(Debug)]
struct Place {
    time: EventTime,
    stream: u16,
    /// The stream's `order` fields' values, each with whether it descends.
    order: Box<[(Value, bool)]>,
    seq: u64,
    arrival: u64,
}

impl Place {
    fn of(rules: &RuleSet, event: &Event, arrival: u64) -> Place {
        let stream = rules.def.stream_of(event);
        Place {
            time: event.time,
            stream,
            order: rules.def.stream_slots[stream as usize]
                .order
                .iter()
                .map(|&(slot, descending)| (event.field(slot).clone(), descending))
                .collect(),
            seq: event.seq,
            arrival,
        }
    }
}

impl Ord for Place {
    fn cmp(&self, other: &Place) -> Ordering {
        self.time
            .cmp(&other.time)
            .then(self.stream.cmp(&other.stream))
            .then_with(|| {
                // Places of one stream have the same order fields.
                self.order
                    .iter()
                    .zip(&other.order)
                    .map(|((a, descending), (b, _))| {
                        let o = a.sort_order(b);
                        if *descending { o.reverse() } else { o }
                    })
                    .find(|o| o.is_ne())
                    .unwrap_or(Ordering::Equal)
            })
            .then(self.seq.cmp(&other.seq))
            .then(self.arrival.cmp(&other.arrival))
    }
}

impl PartialOrd for Place {
    fn partial_cmp(&self, other: &Place) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Place {
    fn eq(&self, other: &Place) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Place {}

impl Waiting {
    /// How many events wait.
    pub(super) fn len(&self) -> usize {
        self.run.len() + self.early.len()
    }

    /// Whether none waits.
    pub(super) fn is_empty(&self) -> bool {
        self.run.is_empty() && self.early.is_empty()
    }

    /// Every waiting event, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Arc<Event>> {
        self.run.iter().map(|(_, e)| e).chain(self.early.values())
    }

    /// Adds `event` after every waiting event it does not go before.
    pub(super) fn insert(&mut self, rules: &RuleSet, event: Arc<Event>) {
        let arrival = self.arrivals;
        self.arrivals += 1;
        let in_order = self.run.back().is_none_or(|(_, last)| {
            rules
                .event_order(last, &event)
                .then(last.seq.cmp(&event.seq))
                .is_le()
        });
        if in_order {
            self.run.push_back((arrival, event));
        } else {
            self.early.insert(Place::of(rules, &event, arrival), event);
        }
    }

    /// Takes the first event in processing order if its time is at or
    /// before `upto`.
    pub(super) fn pop_due(&mut self, rules: &RuleSet, upto: EventTime) -> Option<Arc<Event>> {
        let run_first = match (self.run.front(), self.early.first_key_value()) {
            (None, None) => return None,
            // Most of the time: nothing came out of order.
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some((arrival, e)), Some((place, _))) => Place::of(rules, e, *arrival) < *place,
        };
        // Time orders first: when the first event is not due, none is.
        if run_first {
            if self.run.front()?.1.time > upto {
                return None;
            }
            self.run.pop_front().map(|(_, e)| e)
        } else {
            if self.early.first_key_value()?.0.time > upto {
                return None;
            }
            self.early.pop_first().map(|(_, e)| e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events taken out, by arrival number, from a random mix of inserts
    /// and takes: `Waiting`'s order against a plain model, the first of
    /// what waits by event order, then position, then arrival.
    fn check(source: &str, line: impl Fn(&mut fastrand::Rng) -> String) {
        let rules = RuleSet::from_source("w.tl", source, None).unwrap();
        for seed in 0..200 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut waiting = Waiting::default();
            let mut model: Vec<(u64, Arc<Event>)> = Vec::new();
            let (mut got, mut want) = (Vec::new(), Vec::new());
            let mut arrival = 0;
            for _ in 0..300 {
                if rng.u8(..3) > 0 {
                    let text = line(&mut rng);
                    let e = rules
                        .decoder()
                        .decode(text.as_bytes(), rng.u64(..4))
                        .unwrap();
                    let e = Arc::new(e);
                    waiting.insert(&rules, e.clone());
                    model.push((arrival, e));
                    arrival += 1;
                } else {
                    let first = model
                        .iter()
                        .enumerate()
                        .min_by(|(_, a), (_, b)| {
                            rules
                                .event_order(&a.1, &b.1)
                                .then(a.1.seq.cmp(&b.1.seq))
                                .then(a.0.cmp(&b.0))
                        })
                        .map(|(i, _)| i);
                    let upto = rng.i64(-1..9);
                    let due = first.filter(|&i| model[i].1.time <= upto);
                    let expected = due.map(|i| model.remove(i).1);
                    let taken = waiting.pop_due(&rules, upto);
                    assert_eq!(taken.is_some(), expected.is_some(), "seed {seed}");
                    got.extend(taken);
                    want.extend(expected);
                }
                assert_eq!(waiting.len(), model.len(), "seed {seed}");
            }
            let same =
                got.len() == want.len() && got.iter().zip(&want).all(|(a, b)| Arc::ptr_eq(a, b));
            assert!(same, "seed {seed}: the events left in another order");
        }
    }

    #[test]
    fn events_leave_by_time_then_position_then_arrival() {
        check(
            "stream s { key k time t time format epoch_ms }\nrule r { pattern { a: v > 0 } }",
            |rng| format!(r#"{{"k":1,"t":{},"v":1}}"#, rng.i64(0..8)),
        );
    }

    #[test]
    fn events_of_the_same_time_leave_by_the_order_fields() {
        check(
            "stream s { key k time t time format epoch_ms order p desc, id }\n\
             rule r { pattern { a: v > 0 } }",
            |rng| {
                let p = ["null", "1", "2", "\"x\""][rng.usize(..4)];
                format!(
                    r#"{{"k":1,"t":{},"v":1,"p":{p},"id":{}}}"#,
                    rng.i64(0..5),
                    rng.u8(..3)
                )
            },
        );
    }
}
