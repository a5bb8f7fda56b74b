//! One rule's window aggregates for one key, laid out for the hot path: the
//! sliding windows (`over 7d`, `over 30d ending 7d ago`) share one log of
//! the key's events instead of each keeping its own copy, and every value
//! they aggregate (a column: `TX_AMOUNT` in `avg(TX_AMOUNT over 1d)`) is
//! evaluated once per event, however many aggregates read it. A sliding
//! aggregate is then two cursors into the log (the first event inside the
//! window, the first not yet inside when it ends in the past) and its
//! running accumulator. The fraud handbook's six card features keep one log
//! of (time, amount) rather than six deques of events.
//!
//! Tumbling, session and decay windows keep no events (or only their
//! min/max candidates) and stay [`WindowState`]s of their own.
//!
//! Stored state keeps the form it had when every aggregate was a
//! [`WindowState`] with its own events ([`Windows::to_states`],
//! [`Windows::from_states`]): checkpoints written before and after read
//! alike, and the encoding is what it was byte for byte.

use super::{Accum, Kind, WindowState};
use crate::event::{EventTime, Value, ValueKey};
use crate::rules::{CExpr, WinFunc, Window, WindowSpec};
use std::collections::VecDeque;

/// How a rule's window aggregates are laid out: the distinct values they
/// aggregate, each evaluated once per event, and where each aggregate
/// reads its own. Made once per rule when the rule set compiles.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    columns: Vec<CExpr>,
    aggs: Vec<AggPlan>,
    /// Columns kept in the log (those some sliding aggregate reads), in log order.
    logged: Vec<u16>,
    /// Some aggregate is a sliding window: the key's events are logged.
    logs: bool,
}

#[derive(Clone, Debug)]
struct AggPlan {
    func: WinFunc,
    window: Window,
    /// The column it aggregates; `None`: it counts events.
    col: Option<u16>,
    /// Its column's place in each logged event (sliding aggregates only).
    slot: Option<u16>,
    /// `(len, ago)` for a sliding window.
    sliding: Option<(i64, i64)>,
}

impl Plan {
    /// The layout of `specs`, a rule's window aggregates in their order.
    pub fn new(specs: &[WindowSpec]) -> Plan {
        let mut keys: Vec<String> = Vec::new();
        let mut plan = Plan::default();
        let mut cols = Vec::with_capacity(specs.len());
        for s in specs {
            // Two aggregates read one column when their expressions are
            // the same; the debug form names slots, so equal text is an
            // equal expression within one rule set.
            let col = s.arg.as_ref().map(|a| {
                let k = format!("{a:?}");
                match keys.iter().position(|x| *x == k) {
                    Some(i) => i as u16,
                    None => {
                        keys.push(k);
                        plan.columns.push(a.clone());
                        (keys.len() - 1) as u16
                    }
                }
            });
            let sliding = match s.window {
                Window::Sliding(len) => Some((len, 0)),
                Window::Ending(len, ago) => Some((len, ago)),
                _ => None,
            };
            cols.push((s.func, s.window.clone(), col, sliding));
        }
        for (func, window, col, sliding) in cols {
            let slot = match (sliding, col) {
                (Some(_), Some(c)) => Some(match plan.logged.iter().position(|&x| x == c) {
                    Some(i) => i as u16,
                    None => {
                        plan.logged.push(c);
                        (plan.logged.len() - 1) as u16
                    }
                }),
                _ => None,
            };
            plan.logs |= sliding.is_some();
            plan.aggs.push(AggPlan {
                func,
                window,
                col,
                slot,
                sliding,
            });
        }
        plan
    }

    /// The distinct values the aggregates read, to evaluate once per event
    /// and pass to [`Windows::update`] in this order.
    pub fn columns(&self) -> &[CExpr] {
        &self.columns
    }

    /// The number of aggregates.
    pub fn len(&self) -> usize {
        self.aggs.len()
    }

    /// Whether the rule has no window aggregate.
    pub fn is_empty(&self) -> bool {
        self.aggs.is_empty()
    }
}

/// A rule's window aggregates for one key (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct Windows {
    /// Times of the logged events, oldest first.
    times: VecDeque<EventTime>,
    /// Their logged column values, `stride` per event.
    vals: VecDeque<Value>,
    stride: usize,
    /// The log index of `times[0]`: indices grow with every logged event
    /// and are never reused, so cursors and min/max candidates name events.
    base: u64,
    aggs: Vec<Agg>,
}

#[derive(Clone, Debug)]
enum Agg {
    Sliding(Sliding),
    Own(WindowState),
}

/// A sliding aggregate over the log: events `lo..hi` are inside the window,
/// `hi..` are newer than its end (it ends `ago` in the past).
#[derive(Clone, Debug)]
struct Sliding {
    func: WinFunc,
    counts_events: bool,
    slot: Option<u16>,
    len: i64,
    ago: i64,
    lo: u64,
    hi: u64,
    /// What its stored form numbers the event at log index `i`:
    /// `i + shift` (wrapping; an aggregate younger than the log numbers
    /// from its own start).
    shift: u64,
    acc: Accum,
}

/// What an aggregate that counts events adds for each one.
static EVENT: Value = Value::Bool(true);

fn value_at(vals: &VecDeque<Value>, stride: usize, pos: usize, slot: Option<u16>) -> &Value {
    match slot {
        Some(s) => &vals[pos * stride + s as usize],
        None => &EVENT,
    }
}

impl Windows {
    /// Empty aggregates laid out by `plan`.
    pub fn new(plan: &Plan) -> Windows {
        Windows {
            times: VecDeque::new(),
            vals: VecDeque::new(),
            stride: plan.logged.len(),
            base: 0,
            aggs: plan
                .aggs
                .iter()
                .map(|a| match a.sliding {
                    Some((len, ago)) => Agg::Sliding(Sliding {
                        func: a.func,
                        counts_events: a.col.is_none(),
                        slot: a.slot,
                        len,
                        ago,
                        lo: 0,
                        hi: 0,
                        shift: 1,
                        acc: Accum::default(),
                    }),
                    None => Agg::Own(WindowState::new(a.func, &a.window, a.col.is_none())),
                })
                .collect(),
        }
    }

    fn end(&self) -> u64 {
        self.base + self.times.len() as u64
    }

    /// Moves every window to end at `now` (relative to its `ago`) and drops
    /// the logged events no window holds any more.
    pub fn advance(&mut self, now: EventTime) {
        if self.times.is_empty() {
            return;
        }
        let (base, end) = (self.base, self.end());
        let mut keep_from = end;
        for agg in &mut self.aggs {
            let Agg::Sliding(s) = agg else { continue };
            let upper = now.saturating_sub(s.ago);
            while s.hi < end && self.times[(s.hi - base) as usize] <= upper {
                let v = value_at(&self.vals, self.stride, (s.hi - base) as usize, s.slot);
                s.acc.add(s.func, s.hi, v);
                s.hi += 1;
            }
            let lower = upper.saturating_sub(s.len);
            while s.lo < s.hi && self.times[(s.lo - base) as usize] <= lower {
                let v = value_at(&self.vals, self.stride, (s.lo - base) as usize, s.slot);
                s.acc.remove(s.func, s.lo, v);
                s.lo += 1;
            }
            keep_from = keep_from.min(s.lo);
        }
        let drop = (keep_from - base) as usize;
        if drop > 0 {
            self.times.drain(..drop);
            self.vals.drain(..drop * self.stride);
            self.base = keep_from;
        }
    }

    /// Adds an event at `t` (after [`Windows::advance`]`(t)`) whose column
    /// values, in [`Plan::columns`] order, are `cols`.
    pub fn update(&mut self, plan: &Plan, t: EventTime, cols: &[Value]) {
        if plan.logs {
            let at = self.end();
            self.times.push_back(t);
            for &c in &plan.logged {
                self.vals
                    .push_back(cols.get(c as usize).cloned().unwrap_or_default());
            }
            let pos = (at - self.base) as usize;
            for agg in &mut self.aggs {
                if let Agg::Sliding(s) = agg
                    && s.ago == 0
                {
                    // A window ending now holds the event at once.
                    s.acc
                        .add(s.func, at, value_at(&self.vals, self.stride, pos, s.slot));
                    s.hi = at + 1;
                }
            }
        }
        for (agg, a) in self.aggs.iter_mut().zip(&plan.aggs) {
            if let Agg::Own(w) = agg {
                let v = match a.col {
                    Some(c) => cols.get(c as usize).cloned().unwrap_or_default(),
                    None => Value::Bool(true),
                };
                w.update(t, v);
            }
        }
    }

    /// Writes each aggregate's current value into `out` (one per aggregate).
    pub fn values_into(&self, out: &mut [Value]) {
        for (agg, o) in self.aggs.iter().zip(out) {
            *o = match agg {
                Agg::Own(w) => w.value(),
                Agg::Sliding(s) if s.func == WinFunc::Novel => {
                    // The newest event inside the window (it ends now).
                    if s.hi > s.lo {
                        let pos = (s.hi - 1 - self.base) as usize;
                        let v = value_at(&self.vals, self.stride, pos, s.slot);
                        if v.is_null() {
                            Value::Null
                        } else {
                            let seen = s.acc.distinct.get(&ValueKey::from(v)).copied();
                            Value::Num(if seen == Some(1) { 1.0 } else { 0.0 })
                        }
                    } else {
                        Value::Null
                    }
                }
                Agg::Sliding(s) => s.acc.value(s.func, s.counts_events),
            };
        }
    }

    /// Whether it holds nothing (safe to drop for an idle key).
    pub fn is_empty(&self) -> bool {
        self.times.is_empty()
            && self.aggs.iter().all(|a| match a {
                Agg::Own(w) => w.is_empty(),
                Agg::Sliding(s) => s.acc.count == 0,
            })
    }

    /// The aggregates as stored: each a [`WindowState`] holding its own
    /// events, exactly as if it had always kept them.
    pub fn to_states(&self) -> Vec<WindowState> {
        let end = self.end();
        self.aggs
            .iter()
            .map(|agg| match agg {
                Agg::Own(w) => w.clone(),
                Agg::Sliding(s) => {
                    let entry = |i: u64| {
                        let pos = (i - self.base) as usize;
                        (
                            self.times[pos],
                            i.wrapping_add(s.shift),
                            value_at(&self.vals, self.stride, pos, s.slot).clone(),
                        )
                    };
                    let front = |i: u64, upto: u64| {
                        if i < upto {
                            self.times[(i - self.base) as usize]
                        } else {
                            i64::MAX
                        }
                    };
                    let mut acc = s.acc.clone();
                    for m in acc.mins.iter_mut().chain(acc.maxs.iter_mut()) {
                        m.0 = m.0.wrapping_add(s.shift);
                    }
                    WindowState {
                        func: s.func,
                        counts_events: s.counts_events,
                        kind: Kind::Sliding {
                            len: s.len,
                            ago: s.ago,
                        },
                        pending: (s.hi..end).map(entry).collect(),
                        active: (s.lo..s.hi).map(entry).collect(),
                        acc,
                        // The number of the newest event it has seen.
                        seq: end.wrapping_add(s.shift).wrapping_sub(1),
                        mark: None,
                        pending_front: front(s.hi, end),
                        active_front: front(s.lo, s.hi),
                    }
                }
            })
            .collect()
    }

    /// The aggregates from their stored form ([`Windows::to_states`], or
    /// state written when each aggregate kept its own events), laid out by
    /// `plan`. Every sliding window holds the latest of the key's events
    /// (those since it was created, or since its window's start), so their
    /// events line up from the newest: the longest is the log.
    pub fn from_states(plan: &Plan, states: Vec<WindowState>) -> Result<Windows, String> {
        if states.len() != plan.aggs.len() {
            return Err(format!(
                "{} window aggregates stored, the rule has {}",
                states.len(),
                plan.aggs.len()
            ));
        }
        let stride = plan.logged.len();
        let n = states
            .iter()
            .map(|s| s.active.len() + s.pending.len())
            .zip(&plan.aggs)
            .filter(|(_, a)| a.sliding.is_some())
            .map(|(n, _)| n)
            .max()
            .unwrap_or(0);
        let mut times: Vec<Option<EventTime>> = vec![None; n];
        let mut vals: Vec<Value> = vec![Value::Null; n * stride];
        let mut aggs = Vec::with_capacity(states.len());
        for (i, (w, a)) in states.into_iter().zip(&plan.aggs).enumerate() {
            let Some((len, ago)) = a.sliding else {
                if matches!(w.kind, Kind::Sliding { .. }) {
                    return Err(format!(
                        "window aggregate {i} is stored as a sliding window"
                    ));
                }
                aggs.push(Agg::Own(w));
                continue;
            };
            if !matches!(w.kind, Kind::Sliding { .. }) {
                return Err(format!(
                    "window aggregate {i} is not stored as a sliding window"
                ));
            }
            let held = w.active.len() + w.pending.len();
            let offset = n - held;
            // The newest event is the log's last: index n - 1.
            let shift = w.seq.wrapping_add(1).wrapping_sub(n as u64);
            let first = (offset as u64).wrapping_add(shift);
            for (k, (t, seq, v)) in w.active.iter().chain(&w.pending).enumerate() {
                if *seq != first.wrapping_add(k as u64) {
                    return Err(format!("window aggregate {i} skips an event"));
                }
                let pos = offset + k;
                match times[pos] {
                    Some(t0) if t0 != *t => {
                        return Err(format!(
                            "window aggregates disagree on an event's time ({t0} and {t})"
                        ));
                    }
                    _ => times[pos] = Some(*t),
                }
                if let Some(s) = a.slot {
                    vals[pos * stride + s as usize] = v.clone();
                }
            }
            let mut acc = w.acc;
            let to_log = |q: u64| -> Result<u64, String> {
                Some(q.wrapping_sub(shift))
                    .filter(|&a| a >= offset as u64 && a < n as u64)
                    .ok_or_else(|| format!("window aggregate {i} keeps an event it does not hold"))
            };
            for m in acc.mins.iter_mut().chain(acc.maxs.iter_mut()) {
                m.0 = to_log(m.0)?;
            }
            aggs.push(Agg::Sliding(Sliding {
                func: a.func,
                counts_events: a.col.is_none(),
                slot: a.slot,
                len,
                ago,
                lo: offset as u64,
                hi: (offset + w.active.len()) as u64,
                shift,
                acc,
            }));
        }
        let times: VecDeque<EventTime> = times.into_iter().map(Option::unwrap_or_default).collect();
        if times.iter().zip(times.iter().skip(1)).any(|(a, b)| a > b) {
            return Err("window events out of time order".to_string());
        }
        Ok(Windows {
            times,
            vals: vals.into(),
            stride,
            base: 0,
            aggs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::CExpr;

    /// Aggregates of every kind over two columns and windows of several
    /// lengths, some ending in the past.
    fn specs(rng: &mut fastrand::Rng) -> Vec<WindowSpec> {
        let funcs = [
            WinFunc::Count,
            WinFunc::CountDistinct,
            WinFunc::Sum,
            WinFunc::Avg,
            WinFunc::Min,
            WinFunc::Max,
            WinFunc::Stddev,
            WinFunc::Novel,
        ];
        (0..rng.usize(1..8))
            .map(|_| {
                let window = match rng.u8(0..10) {
                    0 => Window::Tumbling(rng.i64(5..60)),
                    1 => Window::Session(rng.i64(2..20)),
                    2 => Window::Decay(rng.i64(5..60)),
                    3..=5 => Window::Ending(rng.i64(1..80), rng.i64(1..50)),
                    _ => Window::Sliding(rng.i64(1..120)),
                };
                let func = funcs[rng.usize(..funcs.len())];
                let arg = match rng.u8(0..3) {
                    0 if func == WinFunc::Count => None,
                    k => Some(CExpr::Lit(Value::Num(f64::from(k % 2)))),
                };
                WindowSpec { func, arg, window }
            })
            .collect()
    }

    fn reference(specs: &[WindowSpec]) -> Vec<WindowState> {
        specs
            .iter()
            .map(|s| WindowState::new(s.func, &s.window, s.arg.is_none()))
            .collect()
    }

    fn encoded(states: &[WindowState]) -> Vec<u8> {
        postcard::to_allocvec(states).expect("encodes")
    }

    /// The column values of event `i`: the second column has nulls and
    /// repeats, for `count`, `novel` and `count(distinct)`.
    fn cols(i: i64) -> [Value; 2] {
        [
            Value::Num(((i * 37) % 23) as f64 + 0.5),
            if i % 7 == 3 {
                Value::Null
            } else {
                Value::Num((i % 5) as f64)
            },
        ]
    }

    /// The values of the plan's columns: `Lit(k)` stands for `c[k]`.
    fn plan_cols(plan: &Plan, c: &[Value]) -> Vec<Value> {
        plan.columns()
            .iter()
            .map(|e| match e {
                CExpr::Lit(Value::Num(k)) => c[*k as usize].clone(),
                _ => Value::Bool(true),
            })
            .collect()
    }

    fn step_reference(states: &mut [WindowState], specs: &[WindowSpec], t: i64, c: &[Value]) {
        for (w, s) in states.iter_mut().zip(specs) {
            w.advance(t);
            let v = match &s.arg {
                Some(CExpr::Lit(Value::Num(k))) => c[*k as usize].clone(),
                _ => Value::Bool(true),
            };
            w.update(t, v);
        }
    }

    /// The shared log gives every aggregate the value it had with its own
    /// events, and stores exactly what it stored then, event after event.
    #[test]
    fn the_shared_log_equals_an_aggregate_per_window() {
        for seed in 0..300 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let specs = specs(&mut rng);
            let plan = Plan::new(&specs);
            let mut shared = Windows::new(&plan);
            let mut alone = reference(&specs);
            let mut got = vec![Value::Null; specs.len()];
            let mut t = 0;
            for i in 0..400 {
                t += rng.i64(0..6);
                let c = cols(i);
                shared.advance(t);
                shared.update(&plan, t, &plan_cols(&plan, &c));
                step_reference(&mut alone, &specs, t, &c);
                shared.values_into(&mut got);
                let want: Vec<Value> = alone.iter().map(WindowState::value).collect();
                assert_eq!(got, want, "seed {seed} event {i}: {specs:?}");
                if i % 37 == 0 {
                    assert_eq!(
                        encoded(&shared.to_states()),
                        encoded(&alone),
                        "seed {seed} event {i}"
                    );
                    // Restored from the stored form, it goes on alike.
                    shared = Windows::from_states(&plan, shared.to_states()).expect("restores");
                }
                assert_eq!(shared.is_empty(), alone.iter().all(WindowState::is_empty));
            }
        }
    }

    /// Aggregates that started at different times (a rule change kept some
    /// and added others) line up from their newest event.
    #[test]
    fn aggregates_of_different_ages_restore_into_one_log() {
        for seed in 0..200 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let specs = specs(&mut rng);
            let plan = Plan::new(&specs);
            let mut alone = reference(&specs);
            let mut t = 0;
            let mut i = 0;
            // Every aggregate exists by the time the log is made (a rule
            // change creates the new ones then).
            let starts: Vec<i64> = (0..specs.len()).map(|_| rng.i64(0..=250)).collect();
            let mut got = vec![Value::Null; specs.len()];
            let mut shared: Option<Windows> = None;
            while i < 400 {
                t += rng.i64(0..6);
                let c = cols(i);
                for ((w, s), &start) in alone.iter_mut().zip(&specs).zip(&starts) {
                    if i >= start {
                        step_reference(std::slice::from_mut(w), std::slice::from_ref(s), t, &c);
                    }
                }
                if i == 250 {
                    shared = Some(Windows::from_states(&plan, alone.clone()).expect("lines up"));
                } else if let Some(w) = &mut shared {
                    w.advance(t);
                    w.update(&plan, t, &plan_cols(&plan, &c));
                }
                if let Some(w) = &shared {
                    w.values_into(&mut got);
                    let want: Vec<Value> = alone.iter().map(WindowState::value).collect();
                    assert_eq!(got, want, "seed {seed} event {i}: {specs:?} {starts:?}");
                    assert_eq!(
                        encoded(&w.to_states()),
                        encoded(&alone),
                        "seed {seed} event {i}"
                    );
                }
                i += 1;
            }
        }
    }

    /// Count and average over 1, 7 and 30 days of one amount: one column,
    /// one log, as long as the longest window.
    #[test]
    fn one_log_for_the_handbook_card_features() {
        let amount = Some(CExpr::Field(4));
        let day = 86_400_000;
        let specs: Vec<WindowSpec> = [1, 7, 30]
            .iter()
            .flat_map(|d| {
                [
                    WindowSpec {
                        func: WinFunc::Count,
                        arg: None,
                        window: Window::Sliding(d * day),
                    },
                    WindowSpec {
                        func: WinFunc::Avg,
                        arg: amount.clone(),
                        window: Window::Sliding(d * day),
                    },
                ]
            })
            .collect();
        let plan = Plan::new(&specs);
        assert_eq!(plan.columns().len(), 1);
        let mut w = Windows::new(&plan);
        for i in 0..100 {
            let t = i * day / 2;
            w.advance(t);
            w.update(&plan, t, &[Value::Num(i as f64)]);
        }
        // 30 days of events at two a day, the newest included.
        assert_eq!(w.times.len(), 60);
        assert_eq!(w.vals.len(), 60);
        let mut got = vec![Value::Null; 6];
        w.values_into(&mut got);
        assert_eq!(got[0], Value::Num(2.0));
        assert_eq!(got[1], Value::Num(98.5));
        assert_eq!(got[4], Value::Num(60.0));
    }

    #[test]
    fn inconsistent_stored_aggregates_are_refused() {
        let specs = vec![
            WindowSpec {
                func: WinFunc::Sum,
                arg: Some(CExpr::Field(0)),
                window: Window::Sliding(100),
            },
            WindowSpec {
                func: WinFunc::Count,
                arg: None,
                window: Window::Sliding(50),
            },
        ];
        let plan = Plan::new(&specs);
        let mut a = reference(&specs);
        for t in [1, 2, 3] {
            step_reference(&mut a, &specs, t, &[Value::Num(1.0), Value::Null]);
        }
        let mut b = a.clone();
        b[1].active[0].0 = 7;
        let e = Windows::from_states(&plan, b).unwrap_err();
        assert!(e.contains("disagree"), "{e}");
        let e = Windows::from_states(&plan, a[..1].to_vec()).unwrap_err();
        assert!(
            e.contains("1 window aggregates stored, the rule has 2"),
            "{e}"
        );
    }
}
