//! Per-key window aggregates: sliding windows (optionally ending in the
//! past, for labels that arrive late), tumbling bins, sessions, and decay
//! windows (exponentially weighted, the anomaly detectors' baseline). Each
//! is maintained incrementally as the key's events arrive in event-time
//! order — adding the new event and evicting what left the window, never
//! rescanning.
//!
//! The detectors: `novel` (the current value is new within a sliding
//! window) keeps the window's distinct values; `zscore` over a decay window
//! keeps three running sums and the time of the last update, a fixed size
//! whatever the key's history.
//!
//! A rule's aggregates for one key are a [`Windows`], in which sliding
//! windows share one log of the key's events ([`shared`]); a
//! [`WindowState`] is one aggregate on its own, and the form every
//! aggregate is stored in.
//!
//! Invariant: `update(t, v)` is called with non-decreasing `t`.

pub mod shared;
pub use shared::{LogRow, Plan, Rows, Windows};

use crate::event::{EventTime, Value, ValueKey};
use crate::rules::WinFunc;
use crate::rules::Window;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// Running aggregate over a multiset of values with removal.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Accum {
    count: u64,
    non_null: u64,
    sum: f64,
    sum_sq: f64,
    /// Monotonic deques of (seq, value) for min and max.
    mins: VecDeque<(u64, f64)>,
    maxs: VecDeque<(u64, f64)>,
    distinct: BTreeMap<ValueKey, u32>,
}

impl Accum {
    fn add(&mut self, func: WinFunc, seq: u64, v: &Value) {
        self.count += 1;
        if v.is_null() {
            return;
        }
        self.non_null += 1;
        match func {
            WinFunc::CountDistinct | WinFunc::Novel => {
                *self.distinct.entry(ValueKey::from(v)).or_insert(0) += 1
            }
            WinFunc::Min => {
                if let Some(x) = v.as_f64() {
                    while self.mins.back().is_some_and(|b| b.1 >= x) {
                        self.mins.pop_back();
                    }
                    self.mins.push_back((seq, x));
                }
            }
            WinFunc::Max => {
                if let Some(x) = v.as_f64() {
                    while self.maxs.back().is_some_and(|b| b.1 <= x) {
                        self.maxs.pop_back();
                    }
                    self.maxs.push_back((seq, x));
                }
            }
            _ => {
                if let Some(x) = v.as_f64() {
                    self.sum += x;
                    self.sum_sq += x * x;
                }
            }
        }
    }

    fn remove(&mut self, func: WinFunc, seq: u64, v: &Value) {
        self.count = self.count.saturating_sub(1);
        if v.is_null() {
            return;
        }
        self.non_null = self.non_null.saturating_sub(1);
        match func {
            WinFunc::CountDistinct | WinFunc::Novel => {
                let k = ValueKey::from(v);
                if let Some(c) = self.distinct.get_mut(&k) {
                    *c = c.saturating_sub(1);
                    if *c == 0 {
                        self.distinct.remove(&k);
                    }
                }
            }
            WinFunc::Min => {
                if self.mins.front().is_some_and(|f| f.0 == seq) {
                    self.mins.pop_front();
                }
            }
            WinFunc::Max => {
                if self.maxs.front().is_some_and(|f| f.0 == seq) {
                    self.maxs.pop_front();
                }
            }
            _ => {
                if let Some(x) = v.as_f64() {
                    self.sum -= x;
                    self.sum_sq -= x * x;
                }
            }
        }
        if self.count == 0 {
            // Drop accumulated rounding error whenever the window empties.
            self.sum = 0.0;
            self.sum_sq = 0.0;
        }
    }

    fn value(&self, func: WinFunc, counts_events: bool) -> Value {
        match func {
            WinFunc::CountDistinct => Value::Num(self.distinct.len() as f64),
            WinFunc::Min => self.mins.front().map_or(Value::Null, |m| Value::Num(m.1)),
            WinFunc::Max => self.maxs.front().map_or(Value::Null, |m| Value::Num(m.1)),
            _ => sums_value(
                func,
                counts_events,
                self.count,
                self.non_null,
                self.sum,
                self.sum_sq,
            ),
        }
    }
}

/// The value of an aggregate computed from running sums: `count`, `sum`,
/// `avg`, `stddev` over `count` events, `non_null` of them with a value.
/// The others are read elsewhere (`novel` and `zscore` by the window,
/// which knows the current value) and are null here.
fn sums_value(
    func: WinFunc,
    counts_events: bool,
    count: u64,
    non_null: u64,
    sum: f64,
    sum_sq: f64,
) -> Value {
    let n = non_null as f64;
    match func {
        WinFunc::Count if counts_events => Value::Num(count as f64),
        WinFunc::Count => Value::Num(n),
        WinFunc::Sum => Value::Num(sum),
        WinFunc::Avg | WinFunc::Stddev if non_null == 0 => Value::Null,
        WinFunc::Avg => Value::Num(sum / n),
        WinFunc::Stddev => {
            let mean = sum / n;
            Value::Num((sum_sq / n - mean * mean).max(0.0).sqrt())
        }
        _ => Value::Null,
    }
}

/// One window aggregate's state for one key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WindowState {
    func: WinFunc,
    counts_events: bool,
    kind: Kind,
    /// Events not yet inside the window (it ends in the past): (time, seq, value).
    pending: VecDeque<(EventTime, u64, Value)>,
    /// Events inside the window.
    active: VecDeque<(EventTime, u64, Value)>,
    acc: Accum,
    seq: u64,
    /// Tumbling bin start / session last event time.
    mark: Option<EventTime>,
    /// Time of the oldest pending / active entry (`i64::MAX` when empty), so
    /// `advance` reads no deque when nothing moves.
    pending_front: EventTime,
    active_front: EventTime,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
enum Kind {
    /// Events with `now - len - ago < t <= now - ago`.
    Sliding { len: i64, ago: i64 },
    /// Events in the bin containing `now`.
    Tumbling { width: i64 },
    /// Events since the last gap longer than `gap`.
    Session { gap: i64 },
    /// Every event, its weight halving every `half_life`: the weighted
    /// count, sum and sum of squares as of `last`, and the z-score of the
    /// latest value against the earlier ones.
    Decay {
        half_life: i64,
        last: EventTime,
        weight: f64,
        sum: f64,
        sum_sq: f64,
        z: Option<f64>,
    },
}

/// The weighted history a z-score needs: about two earlier values.
const MIN_ZSCORE_WEIGHT: f64 = 2.0;

impl WindowState {
    /// Empty state for `func` over `window`; `counts_events` when the aggregate
    /// counts events rather than values.
    pub fn new(func: WinFunc, window: &Window, counts_events: bool) -> WindowState {
        let kind = match *window {
            Window::Sliding(len) => Kind::Sliding { len, ago: 0 },
            Window::Ending(len, ago) => Kind::Sliding { len, ago },
            Window::Tumbling(width) => Kind::Tumbling { width },
            Window::Session(gap) => Kind::Session { gap },
            Window::Decay(half_life) => Kind::Decay {
                half_life,
                last: EventTime::MIN,
                weight: 0.0,
                sum: 0.0,
                sum_sq: 0.0,
                z: None,
            },
        };
        WindowState {
            func,
            counts_events,
            kind,
            pending: VecDeque::new(),
            active: VecDeque::new(),
            acc: Accum::default(),
            seq: 0,
            mark: None,
            pending_front: i64::MAX,
            active_front: i64::MAX,
        }
    }

    fn clear(&mut self) {
        self.active.clear();
        self.pending.clear();
        self.acc = Accum::default();
        self.pending_front = i64::MAX;
        self.active_front = i64::MAX;
    }

    /// Moves the window to end at `now` (relative to its `ago`).
    pub fn advance(&mut self, now: EventTime) {
        if let Kind::Sliding { len, ago } = self.kind {
            let upper = now.saturating_sub(ago);
            if self.pending_front > upper && self.active_front > upper.saturating_sub(len) {
                return;
            }
            while self.pending.front().is_some_and(|p| p.0 <= upper) {
                if let Some((t, s, v)) = self.pending.pop_front() {
                    self.acc.add(self.func, s, &v);
                    self.active.push_back((t, s, v));
                }
            }
            let lower = upper.saturating_sub(len);
            while self.active.front().is_some_and(|a| a.0 <= lower) {
                if let Some((_, s, v)) = self.active.pop_front() {
                    self.acc.remove(self.func, s, &v);
                }
            }
            self.pending_front = self.pending.front().map_or(i64::MAX, |p| p.0);
            self.active_front = self.active.front().map_or(i64::MAX, |a| a.0);
        }
    }

    /// Adds an event at `t` with value `v` (after `advance(t)`).
    pub fn update(&mut self, t: EventTime, v: Value) {
        self.seq += 1;
        let seq = self.seq;
        match self.kind {
            Kind::Sliding { ago, .. } => {
                if ago == 0 {
                    self.acc.add(self.func, seq, &v);
                    self.active.push_back((t, seq, v));
                    self.active_front = self.active_front.min(t);
                } else {
                    self.pending.push_back((t, seq, v));
                    self.pending_front = self.pending_front.min(t);
                }
            }
            Kind::Tumbling { width } => {
                let bin = t - t.rem_euclid(width);
                if self.mark != Some(bin) {
                    self.clear();
                    self.mark = Some(bin);
                }
                self.acc.add(self.func, seq, &v);
                self.active.push_back((t, seq, v));
                // Only min/max need the values; others keep the accumulator alone.
                if !matches!(self.func, WinFunc::Min | WinFunc::Max) {
                    self.active.clear();
                }
            }
            Kind::Decay {
                half_life,
                ref mut last,
                ref mut weight,
                ref mut sum,
                ref mut sum_sq,
                ref mut z,
            } => {
                if *weight > 0.0 && t > *last {
                    let k = (-((t - *last) as f64) / half_life as f64).exp2();
                    *weight *= k;
                    *sum *= k;
                    *sum_sq *= k;
                }
                *last = t;
                let x = if self.counts_events {
                    Some(0.0)
                } else {
                    v.as_f64().filter(|x| x.is_finite())
                };
                *z = None;
                if let Some(x) = x {
                    if *weight >= MIN_ZSCORE_WEIGHT {
                        let mean = *sum / *weight;
                        let sd = (*sum_sq / *weight - mean * mean).max(0.0).sqrt();
                        // A constant history has no spread to measure against.
                        if sd > 1e-9 * mean.abs().max(1.0) {
                            *z = Some((x - mean) / sd);
                        }
                    }
                    *weight += 1.0;
                    *sum += x;
                    *sum_sq += x * x;
                }
            }
            Kind::Session { gap } => {
                if self.mark.is_some_and(|m| t - m > gap) {
                    self.clear();
                }
                self.mark = Some(t);
                self.acc.add(self.func, seq, &v);
                if !matches!(self.func, WinFunc::Min | WinFunc::Max) {
                    self.active.clear();
                } else {
                    self.active.push_back((t, seq, v));
                }
            }
        }
    }

    /// The aggregate's current value.
    pub fn value(&self) -> Value {
        if let Kind::Decay {
            weight,
            sum,
            sum_sq,
            z,
            ..
        } = self.kind
        {
            let mean = sum / weight;
            return match self.func {
                WinFunc::Count => Value::Num(weight),
                WinFunc::Sum => Value::Num(sum),
                _ if weight <= 0.0 => Value::Null,
                WinFunc::Avg => Value::Num(mean),
                WinFunc::Stddev => Value::Num((sum_sq / weight - mean * mean).max(0.0).sqrt()),
                WinFunc::Zscore => z.map_or(Value::Null, Value::Num),
                _ => Value::Null,
            };
        }
        if self.func == WinFunc::Novel {
            // The current event is the newest of the window (it ends now).
            return match self.active.back() {
                Some((_, _, v)) if !v.is_null() => {
                    let seen = self.acc.distinct.get(&ValueKey::from(v)).copied();
                    Value::Num(if seen == Some(1) { 1.0 } else { 0.0 })
                }
                _ => Value::Null,
            };
        }
        self.acc.value(self.func, self.counts_events)
    }

    /// Whether the state holds nothing (safe to drop for an idle key). A
    /// decay window never is once it has seen an event: its history is the
    /// detector's baseline.
    pub fn is_empty(&self) -> bool {
        let decay_empty = match self.kind {
            Kind::Decay { weight, .. } => weight == 0.0,
            _ => true,
        };
        decay_empty && self.pending.is_empty() && self.active.is_empty() && self.acc.count == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(func: WinFunc, w: Window, events: &[(i64, f64)]) -> Vec<Value> {
        let mut s = WindowState::new(func, &w, false);
        events
            .iter()
            .map(|&(t, v)| {
                s.advance(t);
                s.update(t, Value::Num(v));
                s.value()
            })
            .collect()
    }

    /// The definition, computed by rescanning: what the incremental state must equal.
    fn naive(func: WinFunc, len: i64, ago: i64, events: &[(i64, f64)], i: usize) -> Value {
        let now = events[i].0;
        let vals: Vec<f64> = events[..=i]
            .iter()
            .filter(|(t, _)| *t > now - ago - len && *t <= now - ago)
            .map(|e| e.1)
            .collect();
        let n = vals.len() as f64;
        match func {
            WinFunc::Count => Value::Num(n),
            WinFunc::Sum => Value::Num(vals.iter().sum()),
            WinFunc::Avg if vals.is_empty() => Value::Null,
            WinFunc::Avg => Value::Num(vals.iter().sum::<f64>() / n),
            WinFunc::Min => vals
                .iter()
                .cloned()
                .reduce(f64::min)
                .map_or(Value::Null, Value::Num),
            WinFunc::Max => vals
                .iter()
                .cloned()
                .reduce(f64::max)
                .map_or(Value::Null, Value::Num),
            _ => unreachable!(),
        }
    }

    #[test]
    fn sliding_and_past_windows_equal_a_rescan() {
        let mut events: Vec<(i64, f64)> = (0..300)
            .map(|i| (i * 7 + (i % 5) * 3, ((i * 37) % 23) as f64))
            .collect();
        events.sort_by_key(|e| e.0);
        for func in [
            WinFunc::Count,
            WinFunc::Sum,
            WinFunc::Avg,
            WinFunc::Min,
            WinFunc::Max,
        ] {
            for (len, ago) in [(50, 0), (100, 30), (10, 200)] {
                let w = if ago == 0 {
                    Window::Sliding(len)
                } else {
                    Window::Ending(len, ago)
                };
                let got = run(func, w, &events);
                for (i, g) in got.iter().enumerate() {
                    let want = naive(func, len, ago, &events, i);
                    let close = match (g, &want) {
                        (Value::Num(a), Value::Num(b)) => (a - b).abs() < 1e-9,
                        (a, b) => a == b,
                    };
                    assert!(
                        close,
                        "{func:?} len {len} ago {ago} at {i}: {g:?} vs {want:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn tumbling_session_distinct_stddev() {
        let t = run(
            WinFunc::Sum,
            Window::Tumbling(10),
            &[(1, 1.0), (9, 2.0), (10, 4.0), (19, 1.0)],
        );
        assert_eq!(
            t,
            vec![
                Value::Num(1.0),
                Value::Num(3.0),
                Value::Num(4.0),
                Value::Num(5.0)
            ]
        );
        let s = run(
            WinFunc::Count,
            Window::Session(5),
            &[(0, 1.0), (5, 1.0), (11, 1.0), (12, 1.0)],
        );
        assert_eq!(
            s,
            vec![
                Value::Num(1.0),
                Value::Num(2.0),
                Value::Num(1.0),
                Value::Num(2.0)
            ]
        );
        let d = run(
            WinFunc::CountDistinct,
            Window::Sliding(3),
            &[(0, 1.0), (1, 1.0), (2, 2.0), (4, 2.0), (6, 3.0)],
        );
        assert_eq!(
            d,
            vec![
                Value::Num(1.0),
                Value::Num(1.0),
                Value::Num(2.0),
                Value::Num(1.0),
                Value::Num(2.0)
            ]
        );
        let sd = run(WinFunc::Stddev, Window::Sliding(100), &[(0, 2.0), (1, 4.0)]);
        assert_eq!(sd[1], Value::Num(1.0));
    }

    /// The detectors against their definitions, rescanning every earlier event.
    #[test]
    fn novel_and_zscore_equal_their_definitions() {
        let events: Vec<(i64, f64)> = (0..400)
            .map(|i| {
                (
                    i * 5 + (i % 3),
                    ((i * 13) % 17) as f64 + (i % 3) as f64 * 0.25,
                )
            })
            .collect();
        let novel = run(WinFunc::Novel, Window::Sliding(60), &events);
        for (i, got) in novel.iter().enumerate() {
            let (now, x) = events[i];
            let seen = events[..i].iter().any(|&(t, v)| t > now - 60 && v == x);
            assert_eq!(*got, Value::Num(if seen { 0.0 } else { 1.0 }), "event {i}");
        }
        let half_life = 40;
        let z = run(WinFunc::Zscore, Window::Decay(half_life), &events);
        let avg = run(WinFunc::Avg, Window::Decay(half_life), &events);
        for i in 0..events.len() {
            let (now, x) = events[i];
            let w = |t: i64| (-((now - t) as f64) / half_life as f64).exp2();
            let total: f64 = events[..=i].iter().map(|e| w(e.0)).sum();
            let mean_all: f64 = events[..=i].iter().map(|e| w(e.0) * e.1).sum::<f64>() / total;
            assert!(
                matches!(avg[i], Value::Num(m) if (m - mean_all).abs() < 1e-9),
                "avg at {i}: {mean_all} vs {:?}",
                avg[i]
            );
            let before = &events[..i];
            let weight: f64 = before.iter().map(|e| w(e.0)).sum();
            let want = if weight < MIN_ZSCORE_WEIGHT {
                None
            } else {
                let mean = before.iter().map(|e| w(e.0) * e.1).sum::<f64>() / weight;
                let var =
                    before.iter().map(|e| w(e.0) * e.1 * e.1).sum::<f64>() / weight - mean * mean;
                Some((x - mean) / var.max(0.0).sqrt())
            };
            match (want, &z[i]) {
                (None, Value::Null) => {}
                (Some(w), Value::Num(g)) => assert!((w - g).abs() < 1e-6, "z at {i}: {w} vs {g}"),
                (w, g) => panic!("z at {i}: want {w:?}, got {g:?}"),
            }
        }
        // An outlier after a steady history stands out.
        let mut steady: Vec<(i64, f64)> =
            (0..50).map(|i| (i * 10, 100.0 + (i % 2) as f64)).collect();
        steady.push((500, 400.0));
        let z = run(WinFunc::Zscore, Window::Decay(1000), &steady);
        assert!(matches!(z[50], Value::Num(v) if v > 100.0), "{:?}", z[50]);
    }

    #[test]
    fn a_detector_state_is_small_and_fixed() {
        let mut s = WindowState::new(WinFunc::Zscore, &Window::Decay(86_400_000), false);
        let before = postcard::to_allocvec(&s).unwrap().len();
        for i in 0..10_000 {
            s.advance(i * 60_000);
            s.update(i * 60_000, Value::Num((i % 97) as f64));
        }
        let after = postcard::to_allocvec(&s).unwrap().len();
        assert!(after <= 96, "{after} bytes encoded");
        assert!(
            after <= before + 16,
            "{before} -> {after}: it does not grow with history"
        );
    }
}
