//! A group of window aggregates for one key (one rule's, or those of
//! several rules of a keying that see the same events: see the engine's
//! `WindowGroup`), laid out for the hot path: the
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
use smallvec::SmallVec;
use std::borrow::Cow;
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
    /// The distinct `(len, ago)` of the sliding aggregates: aggregates
    /// over the same window share its two cursors.
    spans: Vec<(i64, i64)>,
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
    /// Its place in [`Plan::spans`] (sliding aggregates only).
    span: u16,
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
            let span = match sliding {
                Some(w) => match plan.spans.iter().position(|&x| x == w) {
                    Some(i) => i as u16,
                    None => {
                        plan.spans.push(w);
                        (plan.spans.len() - 1) as u16
                    }
                },
                None => 0,
            };
            plan.aggs.push(AggPlan {
                func,
                window,
                col,
                slot,
                sliding,
                span,
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
    /// The logged events, oldest first.
    log: Log,
    /// The log index of the oldest logged event: indices grow with every
    /// logged event
    /// and are never reused, so cursors and min/max candidates name events.
    base: u64,
    /// The sliding windows' cursors, one pair per distinct window.
    spans: Vec<Span>,
    aggs: Vec<Agg>,
}

#[derive(Clone, Debug)]
enum Agg {
    Sliding(Sliding),
    /// Boxed: the aggregates of a key are read on each of its events, and
    /// a sliding one is a few words where a [`WindowState`] is a few
    /// hundred bytes.
    Own(Box<WindowState>),
}

/// A sliding window over the log: events `lo..hi` are inside it, `hi..`
/// are newer than its end (it ends `ago` in the past). The aggregates over
/// the same window (`members`, by index) share its cursors, so an event
/// enters and leaves a window once however many aggregates read it.
#[derive(Clone, Debug)]
struct Span {
    len: i64,
    ago: i64,
    lo: u64,
    hi: u64,
    /// No cursor moves before this time (at or before the earliest time
    /// one can): a key's events mostly leave and enter only some of its
    /// windows, and [`Windows::advance`] skips the others without reading
    /// the log, whose edges are cache misses.
    due: EventTime,
    members: SmallVec<[u16; 4]>,
}

impl Span {
    /// The earliest `now` at which an event at `t` enters the window (it
    /// must be at or before `now - ago`), or at or before it.
    fn entry_due(&self, t: EventTime) -> EventTime {
        if t == EventTime::MIN || self.ago < 0 {
            return EventTime::MIN;
        }
        t.saturating_add(self.ago)
    }

    /// The earliest `now` at which an event at `t` leaves the window (it
    /// must be at or before `now - ago - len`), or at or before it.
    fn exit_due(&self, t: EventTime) -> EventTime {
        if t == EventTime::MIN || self.ago < 0 || self.len < 0 {
            return EventTime::MIN;
        }
        t.saturating_add(self.len).saturating_add(self.ago)
    }

    /// Sets `due` from the times of the next events to enter and to leave
    /// (`None`: there is none).
    fn set_due(&mut self, entering: Option<EventTime>, leaving: Option<EventTime>) {
        let entry = entering.map_or(EventTime::MAX, |t| self.entry_due(t));
        let exit = leaving.map_or(EventTime::MAX, |t| self.exit_due(t));
        self.due = entry.min(exit);
    }
}

/// A sliding aggregate: its running value over its span's events.
#[derive(Clone, Debug)]
struct Sliding {
    func: WinFunc,
    counts_events: bool,
    slot: Option<u16>,
    span: u16,
    /// What its stored form numbers the event at log index `i`:
    /// `i + shift` (wrapping; an aggregate younger than the log numbers
    /// from its own start).
    shift: u64,
    run: Running,
}

/// What a sliding aggregate keeps of the events inside its window: only
/// what its function needs, since every key holds one per aggregate.
#[derive(Clone, Debug)]
enum Running {
    /// `count(over …)`: the window's number of events, which the span's
    /// cursors give.
    Events,
    /// `count(x)`, `sum`, `avg`, `stddev`: the non-null values' number,
    /// sum and sum of squares.
    Sums {
        non_null: u64,
        sum: f64,
        sum_sq: f64,
    },
    /// `min`, `max` (their candidates), `count(distinct)`, `novel` (the
    /// distinct values).
    Full(Box<Accum>),
}

impl Running {
    fn new(func: WinFunc, counts_events: bool) -> Running {
        match func {
            WinFunc::Count if counts_events => Running::Events,
            WinFunc::CountDistinct | WinFunc::Novel | WinFunc::Min | WinFunc::Max => {
                Running::Full(Box::default())
            }
            _ => Running::Sums {
                non_null: 0,
                sum: 0.0,
                sum_sq: 0.0,
            },
        }
    }

    /// As [`Accum::add`].
    fn add(&mut self, func: WinFunc, seq: u64, v: &Value) {
        match self {
            Running::Events => {}
            Running::Sums {
                non_null,
                sum,
                sum_sq,
            } => {
                if !v.is_null() {
                    *non_null += 1;
                    if let Some(x) = v.as_f64() {
                        *sum += x;
                        *sum_sq += x * x;
                    }
                }
            }
            Running::Full(a) => a.add(func, seq, v),
        }
    }

    /// As [`Accum::remove`]; `left` is the number of events the window
    /// holds without this one.
    fn remove(&mut self, func: WinFunc, seq: u64, v: &Value, left: u64) {
        match self {
            Running::Events => {}
            Running::Sums {
                non_null,
                sum,
                sum_sq,
            } => {
                if v.is_null() {
                    return;
                }
                *non_null = non_null.saturating_sub(1);
                if let Some(x) = v.as_f64() {
                    *sum -= x;
                    *sum_sq -= x * x;
                }
                if left == 0 {
                    *sum = 0.0;
                    *sum_sq = 0.0;
                }
            }
            Running::Full(a) => a.remove(func, seq, v),
        }
    }

    /// The aggregate's value over a window of `count` events.
    fn value(&self, func: WinFunc, counts_events: bool, count: u64) -> Value {
        match self {
            Running::Events => Value::Num(count as f64),
            Running::Sums {
                non_null,
                sum,
                sum_sq,
            } => super::sums_value(func, counts_events, count, *non_null, *sum, *sum_sq),
            Running::Full(a) => a.value(func, counts_events),
        }
    }

    /// How many times the window holds `v` (`novel`).
    fn distinct(&self, v: &Value) -> Option<u32> {
        match self {
            Running::Full(a) => a.distinct.get(&ValueKey::from(v)).copied(),
            _ => None,
        }
    }

    /// The stored form's accumulator over a window of `count` events.
    fn to_accum(&self, count: u64) -> Accum {
        match self {
            Running::Events => Accum {
                count,
                non_null: count,
                ..Accum::default()
            },
            Running::Sums {
                non_null,
                sum,
                sum_sq,
            } => Accum {
                count,
                non_null: *non_null,
                sum: *sum,
                sum_sq: *sum_sq,
                ..Accum::default()
            },
            Running::Full(a) => (**a).clone(),
        }
    }

    fn from_accum(func: WinFunc, counts_events: bool, acc: Accum) -> Running {
        match Running::new(func, counts_events) {
            Running::Events => Running::Events,
            Running::Sums { .. } => Running::Sums {
                non_null: acc.non_null,
                sum: acc.sum,
                sum_sq: acc.sum_sq,
            },
            Running::Full(_) => Running::Full(Box::new(acc)),
        }
    }
}

/// What an aggregate that counts events adds for each one.
static EVENT: Value = Value::Bool(true);

/// The bits that stand for a null column value in [`Log::words`]: a NaN
/// payload no arithmetic produces (a number with these bits switches the
/// log to [`Log::wide`], so no value is ever mistaken for another).
const NULL: u64 = 0x7ff4_7269_706c_6e00;

/// The logged events: each event's time and its logged column values in
/// one run of words (the time, then each column's `f64` bits), so that a
/// window's cursor reads an event's time and value from one cache line,
/// and a key's month of amounts takes 16 bytes an event. Columns are
/// numbers in the rules that matter for speed; the first value that is
/// not (a string, an exact number's text) moves every column value to
/// `wide`, which keeps [`Value`]s.
#[derive(Clone, Debug, Default)]
struct Log {
    words: VecDeque<u64>,
    /// Words per event: 1 + `cols`.
    stride: usize,
    cols: usize,
    /// Column values, `cols` per event, once some value is not a number.
    wide: Option<VecDeque<Value>>,
}

impl Log {
    fn new(cols: usize) -> Log {
        Log {
            words: VecDeque::new(),
            stride: 1 + cols,
            cols,
            wide: None,
        }
    }

    fn len(&self) -> usize {
        self.words.len() / self.stride
    }

    fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    fn time(&self, pos: usize) -> EventTime {
        self.words[pos * self.stride] as EventTime
    }

    /// The value of column `slot` (`None`: the event itself) of the event at `pos`.
    fn value(&self, pos: usize, slot: Option<u16>) -> Cow<'_, Value> {
        let Some(slot) = slot else {
            return Cow::Borrowed(&EVENT);
        };
        if let Some(wide) = &self.wide {
            return Cow::Borrowed(&wide[pos * self.cols + slot as usize]);
        }
        match self.words[pos * self.stride + 1 + slot as usize] {
            NULL => Cow::Owned(Value::Null),
            bits => Cow::Owned(Value::Num(f64::from_bits(bits))),
        }
    }

    fn word(v: &Value) -> Option<u64> {
        match v {
            Value::Null => Some(NULL),
            Value::Num(x) if x.to_bits() != NULL => Some(x.to_bits()),
            _ => None,
        }
    }

    /// Appends an event at `t` whose column values are `vals` (`cols` of them).
    fn push<'a>(&mut self, t: EventTime, vals: impl Iterator<Item = &'a Value> + Clone) {
        if self.wide.is_none() && vals.clone().any(|v| Log::word(v).is_none()) {
            self.widen();
        }
        self.words.push_back(t as u64);
        match &mut self.wide {
            None => {
                for v in vals {
                    self.words.push_back(Log::word(v).unwrap_or(NULL));
                }
            }
            Some(wide) => {
                for v in vals {
                    self.words.push_back(NULL);
                    wide.push_back(v.clone());
                }
            }
        }
    }

    fn widen(&mut self) {
        let wide = (0..self.len())
            .flat_map(|pos| (0..self.cols).map(move |c| (pos, c)))
            .map(|(pos, c)| self.value(pos, Some(c as u16)).into_owned())
            .collect();
        self.wide = Some(wide);
    }

    /// Drops the oldest `n` events.
    fn drop_front(&mut self, n: usize) {
        self.words.drain(..n * self.stride);
        if let Some(wide) = &mut self.wide {
            wide.drain(..n * self.cols);
        }
    }
}

impl Windows {
    /// Empty aggregates laid out by `plan`.
    pub fn new(plan: &Plan) -> Windows {
        let mut spans: Vec<Span> = plan
            .spans
            .iter()
            .map(|&(len, ago)| Span {
                len,
                ago,
                lo: 0,
                hi: 0,
                due: EventTime::MAX,
                members: SmallVec::new(),
            })
            .collect();
        let aggs = plan
            .aggs
            .iter()
            .enumerate()
            .map(|(i, a)| match a.sliding {
                Some(_) => {
                    spans[a.span as usize].members.push(i as u16);
                    Agg::Sliding(Sliding {
                        func: a.func,
                        counts_events: a.col.is_none(),
                        slot: a.slot,
                        span: a.span,
                        shift: 1,
                        run: Running::new(a.func, a.col.is_none()),
                    })
                }
                None => Agg::Own(Box::new(WindowState::new(
                    a.func,
                    &a.window,
                    a.col.is_none(),
                ))),
            })
            .collect();
        Windows {
            log: Log::new(plan.logged.len()),
            base: 0,
            spans,
            aggs,
        }
    }

    fn end(&self) -> u64 {
        self.base + self.log.len() as u64
    }

    /// Moves every window to end at `now` (relative to its `ago`) and drops
    /// the logged events no window holds any more.
    pub fn advance(&mut self, now: EventTime) {
        if self.log.is_empty() {
            return;
        }
        let (base, end) = (self.base, self.end());
        let mut keep_from = end;
        let Windows {
            log, spans, aggs, ..
        } = self;
        for span in spans.iter_mut() {
            if now < span.due {
                keep_from = keep_from.min(span.lo);
                continue;
            }
            let upper = now.saturating_sub(span.ago);
            let mut entering = None;
            while span.hi < end {
                let pos = (span.hi - base) as usize;
                let t = log.time(pos);
                if t > upper {
                    entering = Some(t);
                    break;
                }
                for &m in &span.members {
                    if let Agg::Sliding(s) = &mut aggs[m as usize] {
                        s.run.add(s.func, span.hi, &log.value(pos, s.slot));
                    }
                }
                span.hi += 1;
            }
            let lower = upper.saturating_sub(span.len);
            let mut leaving = None;
            while span.lo < span.hi {
                let pos = (span.lo - base) as usize;
                let t = log.time(pos);
                if t > lower {
                    leaving = Some(t);
                    break;
                }
                let left = span.hi - span.lo - 1;
                for &m in &span.members {
                    if let Agg::Sliding(s) = &mut aggs[m as usize] {
                        s.run.remove(s.func, span.lo, &log.value(pos, s.slot), left);
                    }
                }
                span.lo += 1;
            }
            span.set_due(entering, leaving);
            keep_from = keep_from.min(span.lo);
        }
        let drop = (keep_from - base) as usize;
        if drop > 0 {
            self.log.drop_front(drop);
            self.base = keep_from;
        }
    }

    /// Adds an event at `t` (after [`Windows::advance`]`(t)`) whose column
    /// values, in [`Plan::columns`] order, are `cols`.
    pub fn update(&mut self, plan: &Plan, t: EventTime, cols: &[Value]) {
        if plan.logs {
            let at = self.end();
            self.log.push(
                t,
                plan.logged
                    .iter()
                    .map(|&c| cols.get(c as usize).unwrap_or(&Value::Null)),
            );
            let pos = (at - self.base) as usize;
            for span in &mut self.spans {
                if span.ago != 0 {
                    if span.hi == at {
                        // The next to enter.
                        span.due = span.due.min(span.entry_due(t));
                    }
                    continue;
                }
                // A window ending now holds the event at once.
                for &m in &span.members {
                    if let Agg::Sliding(s) = &mut self.aggs[m as usize] {
                        s.run.add(s.func, at, &self.log.value(pos, s.slot));
                    }
                }
                if span.lo == at {
                    // The next to leave.
                    span.due = span.due.min(span.exit_due(t));
                }
                span.hi = at + 1;
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
        self.values_of(0..self.aggs.len(), out);
    }

    /// Writes the current values of the aggregates at places `range` into
    /// `out` (one per aggregate): a rule reads its own of a group's.
    pub fn values_of(&self, range: std::ops::Range<usize>, out: &mut [Value]) {
        let aggs = self.aggs.get(range).unwrap_or_default();
        for (agg, o) in aggs.iter().zip(out) {
            *o = match agg {
                Agg::Own(w) => w.value(),
                Agg::Sliding(s) => {
                    let span = &self.spans[s.span as usize];
                    if s.func == WinFunc::Novel {
                        // The newest event inside the window (it ends now).
                        if span.hi > span.lo {
                            let pos = (span.hi - 1 - self.base) as usize;
                            let v = self.log.value(pos, s.slot);
                            if v.is_null() {
                                Value::Null
                            } else {
                                let seen = s.run.distinct(&v);
                                Value::Num(if seen == Some(1) { 1.0 } else { 0.0 })
                            }
                        } else {
                            Value::Null
                        }
                    } else {
                        s.run.value(s.func, s.counts_events, span.hi - span.lo)
                    }
                }
            };
        }
    }

    /// Whether it holds nothing (safe to drop for an idle key).
    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
            && self.spans.iter().all(|s| s.hi == s.lo)
            && self.aggs.iter().all(|a| match a {
                Agg::Own(w) => w.is_empty(),
                Agg::Sliding(_) => true,
            })
    }

    /// The aggregates as stored: each a [`WindowState`] holding its own
    /// events, exactly as if it had always kept them.
    pub fn to_states(&self) -> Vec<WindowState> {
        let end = self.end();
        self.aggs
            .iter()
            .map(|agg| match agg {
                Agg::Own(w) => (**w).clone(),
                Agg::Sliding(s) => {
                    let span = &self.spans[s.span as usize];
                    let entry = |i: u64| {
                        let pos = (i - self.base) as usize;
                        (
                            self.log.time(pos),
                            i.wrapping_add(s.shift),
                            self.log.value(pos, s.slot).into_owned(),
                        )
                    };
                    let front = |i: u64, upto: u64| {
                        if i < upto {
                            self.log.time((i - self.base) as usize)
                        } else {
                            i64::MAX
                        }
                    };
                    let mut acc = s.run.to_accum(span.hi - span.lo);
                    for m in acc.mins.iter_mut().chain(acc.maxs.iter_mut()) {
                        m.0 = m.0.wrapping_add(s.shift);
                    }
                    WindowState {
                        func: s.func,
                        counts_events: s.counts_events,
                        kind: Kind::Sliding {
                            len: span.len,
                            ago: span.ago,
                        },
                        pending: (span.hi..end).map(entry).collect(),
                        active: (span.lo..span.hi).map(entry).collect(),
                        acc,
                        // The number of the newest event it has seen.
                        seq: end.wrapping_add(s.shift).wrapping_sub(1),
                        mark: None,
                        pending_front: front(span.hi, end),
                        active_front: front(span.lo, span.hi),
                    }
                }
            })
            .collect()
    }

    /// The aggregates from their stored form ([`Windows::to_states`], or
    /// state written when each aggregate kept its own events), laid out by
    /// `plan`. Every sliding window holds the latest of the key's events
    /// (those since it was created, or since its window's start), so their
    /// events line up from the newest: the longest is the log. Aggregates
    /// over one window share its cursors when they hold the same events
    /// (an aggregate younger than its window holds fewer, and keeps its own).
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
        let mut spans: Vec<Span> = Vec::new();
        for (i, (w, a)) in states.into_iter().zip(&plan.aggs).enumerate() {
            let Some((len, ago)) = a.sliding else {
                if matches!(w.kind, Kind::Sliding { .. }) {
                    return Err(format!(
                        "window aggregate {i} is stored as a sliding window"
                    ));
                }
                aggs.push(Agg::Own(Box::new(w)));
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
            let (lo, hi) = (offset as u64, (offset + w.active.len()) as u64);
            let span = match spans
                .iter()
                .position(|s| (s.len, s.ago, s.lo, s.hi) == (len, ago, lo, hi))
            {
                Some(k) => k,
                None => {
                    spans.push(Span {
                        len,
                        ago,
                        lo,
                        hi,
                        due: EventTime::MIN,
                        members: SmallVec::new(),
                    });
                    spans.len() - 1
                }
            };
            spans[span].members.push(i as u16);
            let counts_events = a.col.is_none();
            aggs.push(Agg::Sliding(Sliding {
                func: a.func,
                counts_events,
                slot: a.slot,
                span: span as u16,
                shift,
                run: Running::from_accum(a.func, counts_events, acc),
            }));
        }
        let times: Vec<EventTime> = times.into_iter().map(Option::unwrap_or_default).collect();
        if times.iter().zip(times.iter().skip(1)).any(|(a, b)| a > b) {
            return Err("window events out of time order".to_string());
        }
        let mut log = Log::new(stride);
        for (pos, &t) in times.iter().enumerate() {
            log.push(t, vals[pos * stride..(pos + 1) * stride].iter());
        }
        Ok(Windows {
            log,
            base: 0,
            spans,
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
    /// repeats, for `count`, `novel` and `count(distinct)`, and from
    /// event 200 on some strings (the log then keeps values as such).
    fn cols(i: i64) -> [Value; 2] {
        [
            Value::Num(((i * 37) % 23) as f64 + 0.5),
            if i % 7 == 3 {
                Value::Null
            } else if i >= 200 && i % 13 == 0 {
                Value::from(format!("t{}", i % 3).as_str())
            } else {
                Value::Num((i % 5) as f64)
            },
        ]
    }

    /// Numbers and nulls keep their exact bits in the numeric log, and a
    /// value it cannot hold as a number moves the log to values, losing
    /// nothing logged before.
    #[test]
    fn the_log_keeps_every_value_exactly() {
        let odd = [
            Value::Null,
            Value::Num(-0.0),
            Value::Num(f64::NAN),
            Value::Num(f64::from_bits(NULL)),
            Value::from("x"),
            Value::Num(1e300),
        ];
        // The log widens at a different event each time round.
        for turn in 0..odd.len() {
            let mut log = Log::new(2);
            let mut want = Vec::new();
            for i in 0..odd.len() {
                let v = &odd[(i + turn) % odd.len()];
                let row = [Value::Num(i as f64), v.clone()];
                log.push(i as i64, row.iter());
                want.push(row);
            }
            assert!(log.wide.is_some(), "a string and the null bits widen it");
            for (pos, row) in want.iter().enumerate() {
                assert_eq!(log.time(pos), pos as i64);
                for (c, v) in row.iter().enumerate() {
                    let got = log.value(pos, Some(c as u16));
                    match (v, &*got) {
                        (Value::Num(a), Value::Num(b)) => assert_eq!(a.to_bits(), b.to_bits()),
                        _ => assert_eq!(v, &*got),
                    }
                }
            }
        }
        let mut log = Log::new(1);
        for (i, v) in [Value::Num(-0.0), Value::Null, Value::Num(f64::NAN)]
            .iter()
            .enumerate()
        {
            log.push(i as i64, std::iter::once(v));
        }
        assert!(log.wide.is_none());
        assert_eq!(
            log.value(0, Some(0)).as_f64().map(f64::to_bits),
            Some((-0.0f64).to_bits())
        );
        assert_eq!(*log.value(1, Some(0)), Value::Null);
        log.drop_front(2);
        assert_eq!((log.len(), log.time(0)), (1, 2));
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
        assert_eq!(w.log.len(), 60);
        assert_eq!(w.log.words.len(), 120);
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
