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
//! What every key's aggregates share — their functions, windows, columns,
//! which aggregates move with which cursors — is the [`Plan`], made once
//! per rule set; a key keeps only what changes: the cursors and the
//! running sums, inline in its state, so that a key's window state is a
//! few adjacent cache lines (a `count(over …)` keeps nothing of its own:
//! its cursors give it).
//!
//! Tumbling, session and decay windows keep no events (or only their
//! min/max candidates) and stay [`WindowState`]s of their own.
//!
//! Stored state keeps the form it had when every aggregate was a
//! [`WindowState`] with its own events ([`Windows::to_states`],
//! [`Windows::from_states`]): checkpoints written before and after read
//! alike. A checkpoint may leave the events out of that form and store the
//! log's rows apart, one entry per logged event ([`Windows::row`]), so that
//! it writes only the rows logged since the last one; [`Windows::refill`]
//! puts them back before [`Windows::from_states`], and [`Windows::rebase`]
//! gives the log its stored numbering again.

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
    /// Per span: the aggregates over it.
    members: Vec<SmallVec<[u16; 4]>>,
    /// The number of [`Place::Sums`] and of [`Place::Boxed`].
    sums: usize,
    boxed: usize,
    /// Some aggregate is a sliding window: the key's events are logged.
    logs: bool,
    /// Some aggregate is a window of another kind ([`Boxed::Own`]).
    owns: bool,
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
    /// Where a key keeps its running state.
    place: Place,
}

impl AggPlan {
    fn counts_events(&self) -> bool {
        self.col.is_none()
    }
}

/// Where a key keeps an aggregate's running state: only what its function
/// needs, since every key holds one per aggregate.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Place {
    /// `count(over …)`: the window's number of events, which its cursors
    /// give; nothing of its own.
    Events,
    /// `count(x)`, `sum`, `avg`, `stddev`: [`Windows::sums`].
    Sums(u16),
    /// [`Windows::boxed`]: a sliding `min`, `max` (their candidates),
    /// `count(distinct)` or `novel` (the distinct values), or a window of
    /// another kind.
    Boxed(u16),
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
        for (i, (func, window, col, sliding)) in cols.into_iter().enumerate() {
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
            plan.owns |= sliding.is_none();
            let span = match sliding {
                Some(w) => match plan.spans.iter().position(|&x| x == w) {
                    Some(k) => k,
                    None => {
                        plan.spans.push(w);
                        plan.members.push(SmallVec::new());
                        plan.spans.len() - 1
                    }
                },
                None => 0,
            };
            if sliding.is_some() {
                plan.members[span].push(i as u16);
            }
            let place = match (sliding, func) {
                (Some(_), WinFunc::Count) if col.is_none() => Place::Events,
                (
                    Some(_),
                    WinFunc::CountDistinct | WinFunc::Novel | WinFunc::Min | WinFunc::Max,
                )
                | (None, _) => {
                    plan.boxed += 1;
                    Place::Boxed((plan.boxed - 1) as u16)
                }
                (Some(_), _) => {
                    plan.sums += 1;
                    Place::Sums((plan.sums - 1) as u16)
                }
            };
            plan.aggs.push(AggPlan {
                func,
                window,
                col,
                slot,
                sliding,
                span: span as u16,
                place,
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

/// A group's window aggregates for one key (see the module docs), laid
/// out by its [`Plan`], which every call passes.
#[derive(Clone, Debug, Default)]
pub struct Windows {
    /// The logged events, oldest first.
    log: Log,
    /// The log index of the oldest logged event: indices grow with every
    /// logged event
    /// and are never reused, so cursors and min/max candidates name events.
    base: u64,
    /// The sliding windows' cursors: one per [`Plan::spans`], in its order
    /// (unless `irregular`).
    cursors: SmallVec<[Cursor; 3]>,
    /// The running sums of the [`Place::Sums`] aggregates.
    sums: SmallVec<[Sums; 3]>,
    /// The [`Place::Boxed`] aggregates.
    boxed: Box<[Boxed]>,
    /// What the stored form numbers the event at log index `i`: `i +
    /// shift` (wrapping; unless `irregular`).
    shift: u64,
    /// Restored aggregates that started at different times (a rule change
    /// kept some and added others): until their events age out, they
    /// number events differently, and those over one window hold
    /// different events, so need cursors of their own.
    irregular: Option<Box<Irregular>>,
    /// The log indices `lo..hi` whose rows the store holds as entries of
    /// their own (see the module docs): what the next checkpoint need not
    /// write again, or must delete.
    stored: (u64, u64),
}

/// One logged event as a store entry holds it: its time and its logged
/// column values, in the plan's log order.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LogRow {
    /// The event's time.
    pub time: EventTime,
    /// Its logged column values.
    pub values: Vec<Value>,
}

/// Log rows borrowed for serialization ([`Windows::rows`]).
pub struct Rows<'a> {
    w: &'a Windows,
    from: u64,
    to: u64,
}

impl serde::Serialize for Rows<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some((self.to - self.from) as usize))?;
        for i in self.from..self.to {
            seq.serialize_element(&RowRef {
                log: &self.w.log,
                pos: (i - self.w.base) as usize,
            })?;
        }
        seq.end()
    }
}

/// One log row as [`LogRow`] serializes.
struct RowRef<'a> {
    log: &'a Log,
    pos: usize,
}

impl serde::Serialize for RowRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut row = s.serialize_struct("LogRow", 2)?;
        row.serialize_field("time", &self.log.time(self.pos))?;
        row.serialize_field("values", &ValuesRef(self))?;
        row.end()
    }
}

/// A row's column values as `Vec<Value>` serializes.
struct ValuesRef<'a, 'b>(&'b RowRef<'a>);

impl serde::Serialize for ValuesRef<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let log = self.0.log;
        let mut seq = s.serialize_seq(Some(log.cols as usize))?;
        for c in 0..log.cols {
            seq.serialize_element(&*log.value(self.0.pos, Some(c as u16)))?;
        }
        seq.end()
    }
}

/// Per aggregate, where the plan's shared layout does not hold.
#[derive(Clone, Debug)]
struct Irregular {
    /// Per cursor, its window in [`Plan::spans`].
    span: Vec<u16>,
    /// Its cursor (sliding aggregates only).
    cursor: Vec<u16>,
    /// Its [`Windows::shift`].
    shift: Vec<u64>,
}

/// A sliding window over the log: events `lo..hi` are inside it, `hi..`
/// are newer than its end (it ends `ago` in the past). The aggregates over
/// the same window share its cursors, so an event enters and leaves a
/// window once however many aggregates read it.
#[derive(Clone, Copy, Debug)]
struct Cursor {
    lo: u64,
    hi: u64,
    /// No cursor moves before this time (at or before the earliest time
    /// one can): a key's events mostly leave and enter only some of its
    /// windows, and [`Windows::advance`] skips the others without reading
    /// the log, whose edges are cache misses.
    due: EventTime,
}

/// The earliest `now` at which an event at `t` enters a window `(len,
/// ago)` (it must be at or before `now - ago`), or at or before it.
fn entry_due((_, ago): (i64, i64), t: EventTime) -> EventTime {
    if t == EventTime::MIN || ago < 0 {
        return EventTime::MIN;
    }
    t.saturating_add(ago)
}

/// The earliest `now` at which an event at `t` leaves a window `(len,
/// ago)` (it must be at or before `now - ago - len`), or at or before it.
fn exit_due((len, ago): (i64, i64), t: EventTime) -> EventTime {
    if t == EventTime::MIN || ago < 0 || len < 0 {
        return EventTime::MIN;
    }
    t.saturating_add(len).saturating_add(ago)
}

/// The non-null values' number, sum and sum of squares over a window.
#[derive(Clone, Copy, Debug, Default)]
struct Sums {
    non_null: u64,
    sum: f64,
    sum_sq: f64,
}

impl Sums {
    /// As [`Accum::add`].
    fn add(&mut self, v: &Value) {
        if !v.is_null() {
            self.non_null += 1;
            if let Some(x) = v.as_f64() {
                self.sum += x;
                self.sum_sq += x * x;
            }
        }
    }

    /// As [`Accum::remove`]; `left` is the number of events the window
    /// holds without this one.
    fn remove(&mut self, v: &Value, left: u64) {
        if v.is_null() {
            return;
        }
        self.non_null = self.non_null.saturating_sub(1);
        if let Some(x) = v.as_f64() {
            self.sum -= x;
            self.sum_sq -= x * x;
        }
        if left == 0 {
            self.sum = 0.0;
            self.sum_sq = 0.0;
        }
    }
}

/// An aggregate kept apart from the inline state.
#[derive(Clone, Debug)]
enum Boxed {
    /// A sliding aggregate's accumulator (its log index numbers events).
    Full(Box<Accum>),
    /// A window of another kind.
    Own(Box<WindowState>),
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
    stride: u32,
    cols: u32,
    /// Column values, `cols` per event, once some value is not a number
    /// (boxed: rare, and every key's state holds the field).
    #[expect(
        clippy::box_collection,
        reason = "a pointer where a deque is four words, in every key's state"
    )]
    wide: Option<Box<VecDeque<Value>>>,
}

impl Log {
    fn new(cols: usize) -> Log {
        Log {
            words: VecDeque::new(),
            stride: 1 + cols as u32,
            cols: cols as u32,
            wide: None,
        }
    }

    fn len(&self) -> usize {
        self.words.len() / self.stride as usize
    }

    fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    fn time(&self, pos: usize) -> EventTime {
        self.words[pos * self.stride as usize] as EventTime
    }

    /// The value of column `slot` (`None`: the event itself) of the event at `pos`.
    fn value(&self, pos: usize, slot: Option<u16>) -> Cow<'_, Value> {
        let Some(slot) = slot else {
            return Cow::Borrowed(&EVENT);
        };
        if let Some(wide) = &self.wide {
            return Cow::Borrowed(&wide[pos * self.cols as usize + slot as usize]);
        }
        match self.words[pos * self.stride as usize + 1 + slot as usize] {
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
        self.wide = Some(Box::new(wide));
    }

    /// Drops the oldest `n` events.
    fn drop_front(&mut self, n: usize) {
        self.words.drain(..n * self.stride as usize);
        if let Some(wide) = &mut self.wide {
            wide.drain(..n * self.cols as usize);
        }
    }
}

/// The window of cursor `k` in [`Plan::spans`].
#[inline]
fn window_of(plan: &Plan, irregular: Option<&Irregular>, k: usize) -> (i64, i64) {
    plan.spans[irregular.map_or(k, |x| x.span[k] as usize)]
}

/// Calls `f` with each aggregate over cursor `k`.
#[inline]
fn for_members(plan: &Plan, irregular: Option<&Irregular>, k: usize, mut f: impl FnMut(usize)) {
    match irregular {
        None => {
            for &m in &plan.members[k] {
                f(m as usize);
            }
        }
        Some(x) => {
            for (m, a) in plan.aggs.iter().enumerate() {
                if a.sliding.is_some() && x.cursor[m] as usize == k {
                    f(m);
                }
            }
        }
    }
}

/// Adds the logged event at `pos` (log index `seq`) to sliding aggregate
/// `a`'s running state, or removes it when `left` (the events its window
/// holds without it) is given.
#[inline]
fn running(
    a: &AggPlan,
    sums: &mut [Sums],
    boxed: &mut [Boxed],
    log: &Log,
    pos: usize,
    seq: u64,
    left: Option<u64>,
) {
    match (a.place, left) {
        (Place::Events, _) => {}
        (Place::Sums(j), None) => sums[j as usize].add(&log.value(pos, a.slot)),
        (Place::Sums(j), Some(left)) => sums[j as usize].remove(&log.value(pos, a.slot), left),
        (Place::Boxed(j), _) => {
            if let Boxed::Full(acc) = &mut boxed[j as usize] {
                let v = log.value(pos, a.slot);
                match left {
                    None => acc.add(a.func, seq, &v),
                    Some(_) => acc.remove(a.func, seq, &v),
                }
            }
        }
    }
}

impl Windows {
    /// Empty aggregates laid out by `plan`.
    pub fn new(plan: &Plan) -> Windows {
        let cursors = (0..plan.spans.len())
            .map(|_| Cursor {
                lo: 0,
                hi: 0,
                due: EventTime::MAX,
            })
            .collect();
        let boxed = plan
            .aggs
            .iter()
            .filter(|a| matches!(a.place, Place::Boxed(_)))
            .map(|a| match a.sliding {
                Some(_) => Boxed::Full(Box::default()),
                None => Boxed::Own(Box::new(WindowState::new(
                    a.func,
                    &a.window,
                    a.counts_events(),
                ))),
            })
            .collect();
        Windows {
            log: Log::new(plan.logged.len()),
            base: 0,
            cursors,
            sums: smallvec::smallvec![Sums::default(); plan.sums],
            boxed,
            shift: 1,
            irregular: None,
            stored: (0, 0),
        }
    }

    fn end(&self) -> u64 {
        self.base + self.log.len() as u64
    }

    /// Reads the cursors and sums (see [`Windows::warm_logs`]).
    pub fn warm_entry(&self) -> u64 {
        let mut acc = self.base ^ self.log.words.len() as u64;
        for cur in &self.cursors {
            acc ^= cur.due as u64;
        }
        acc ^ self.sums.len() as u64
    }

    /// Reads the words [`Windows::advance`] and [`Windows::update`] will
    /// read first for an event at `now` — each due cursor's edges and the
    /// log's end — ahead of that event, so that their cache misses overlap
    /// with other keys' (see `Engine::warm`). Returns a value made of them,
    /// for the caller to keep from being optimised away.
    pub fn warm_logs(&self, now: EventTime) -> u64 {
        let words = &self.log.words;
        let stride = self.log.stride as usize;
        let at = |i: u64| {
            let pos = i.wrapping_sub(self.base) as usize * stride;
            words.get(pos).copied().unwrap_or(0)
        };
        let mut acc = at(self.end().wrapping_sub(1));
        for cur in &self.cursors {
            if now >= cur.due {
                acc ^= at(cur.lo) ^ at(cur.hi);
            }
        }
        acc
    }

    /// The columns each logged event keeps.
    pub fn log_cols(&self) -> usize {
        self.log.cols as usize
    }

    /// The log indices of the logged events: `base..end`.
    pub fn log_range(&self) -> (u64, u64) {
        (self.base, self.end())
    }

    /// The log indices whose rows the store holds as entries of their own.
    pub fn stored(&self) -> (u64, u64) {
        self.stored
    }

    /// Records that the store holds the rows of log indices `lo..hi`.
    pub fn set_stored(&mut self, range: (u64, u64)) {
        self.stored = range;
    }

    /// The row of the logged event at log index `i` (within
    /// [`Windows::log_range`]).
    pub fn row(&self, i: u64) -> LogRow {
        let pos = (i - self.base) as usize;
        LogRow {
            time: self.log.time(pos),
            values: (0..self.log.cols)
                .map(|c| self.log.value(pos, Some(c as u16)).into_owned())
                .collect(),
        }
    }

    /// The logged events at log indices `from..to` as a sequence of
    /// [`LogRow`]s for serde, without building them: serialized, the
    /// same bytes as a `Vec<LogRow>` of [`Windows::row`].
    pub fn rows(&self, from: u64, to: u64) -> Rows<'_> {
        Rows {
            w: self,
            from,
            to: to.max(from),
        }
    }

    /// The bytes the log holds in memory.
    pub fn log_bytes(&self) -> usize {
        self.log.words.len() * 8
            + self
                .log
                .wide
                .as_ref()
                .map_or(0, |w| w.len() * std::mem::size_of::<Value>())
    }

    /// Per aggregate, the log indices `lo..hi` of the events inside its
    /// window (`(0, 0)` for a window of another kind): with
    /// [`Windows::log_range`], where its stored form's events are, when
    /// [`Windows::to_states`] leaves them out.
    pub fn agg_cursors(&self, plan: &Plan) -> Vec<(u64, u64)> {
        plan.aggs
            .iter()
            .enumerate()
            .map(|(i, a)| match a.sliding {
                Some(_) => {
                    let c = self.cursor_of(plan, i);
                    (c.lo, c.hi)
                }
                None => (0, 0),
            })
            .collect()
    }

    /// Renumbers the log so that its oldest event has index `base` (what
    /// [`Windows::from_states`] gives starts at 0): the stored form's
    /// numbering of events does not change.
    pub fn rebase(&mut self, base: u64) {
        let d = base.wrapping_sub(self.base);
        if d == 0 {
            return;
        }
        self.base = base;
        for c in &mut self.cursors {
            c.lo = c.lo.wrapping_add(d);
            c.hi = c.hi.wrapping_add(d);
        }
        for b in self.boxed.iter_mut() {
            if let Boxed::Full(acc) = b {
                for m in acc.mins.iter_mut().chain(acc.maxs.iter_mut()) {
                    m.0 = m.0.wrapping_add(d);
                }
            }
        }
        self.shift = self.shift.wrapping_sub(d);
        if let Some(x) = &mut self.irregular {
            for s in &mut x.shift {
                *s = s.wrapping_sub(d);
            }
        }
    }

    /// The cursor of sliding aggregate `i`.
    fn cursor_of(&self, plan: &Plan, i: usize) -> &Cursor {
        let k = match &self.irregular {
            None => plan.aggs[i].span as usize,
            Some(x) => x.cursor[i] as usize,
        };
        &self.cursors[k]
    }

    /// What aggregate `i`'s stored form adds to a log index.
    fn shift_of(&self, i: usize) -> u64 {
        self.irregular.as_ref().map_or(self.shift, |x| x.shift[i])
    }

    /// Moves every window to end at `now` (relative to its `ago`) and drops
    /// the logged events no window holds any more.
    pub fn advance(&mut self, plan: &Plan, now: EventTime) {
        if self.log.is_empty() {
            return;
        }
        let (base, end) = (self.base, self.end());
        let mut keep_from = end;
        let Windows {
            log,
            cursors,
            sums,
            boxed,
            irregular,
            ..
        } = self;
        let irregular = irregular.as_deref();
        for (k, cur) in cursors.iter_mut().enumerate() {
            if now < cur.due {
                keep_from = keep_from.min(cur.lo);
                continue;
            }
            let window = window_of(plan, irregular, k);
            let (len, ago) = window;
            let upper = now.saturating_sub(ago);
            let mut entering = None;
            while cur.hi < end {
                let pos = (cur.hi - base) as usize;
                let t = log.time(pos);
                if t > upper {
                    entering = Some(t);
                    break;
                }
                let seq = cur.hi;
                for_members(plan, irregular, k, |m| {
                    running(&plan.aggs[m], sums, boxed, log, pos, seq, None);
                });
                cur.hi += 1;
            }
            let lower = upper.saturating_sub(len);
            let mut leaving = None;
            while cur.lo < cur.hi {
                let pos = (cur.lo - base) as usize;
                let t = log.time(pos);
                if t > lower {
                    leaving = Some(t);
                    break;
                }
                let left = cur.hi - cur.lo - 1;
                let seq = cur.lo;
                for_members(plan, irregular, k, |m| {
                    running(&plan.aggs[m], sums, boxed, log, pos, seq, Some(left));
                });
                cur.lo += 1;
            }
            let entry = entering.map_or(EventTime::MAX, |t| entry_due(window, t));
            let exit = leaving.map_or(EventTime::MAX, |t| exit_due(window, t));
            cur.due = entry.min(exit);
            keep_from = keep_from.min(cur.lo);
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
            let Windows {
                log,
                cursors,
                sums,
                boxed,
                irregular,
                ..
            } = self;
            let irregular = irregular.as_deref();
            for (k, cur) in cursors.iter_mut().enumerate() {
                let window = window_of(plan, irregular, k);
                if window.1 != 0 {
                    if cur.hi == at {
                        // The next to enter.
                        cur.due = cur.due.min(entry_due(window, t));
                    }
                    continue;
                }
                // A window ending now holds the event at once.
                for_members(plan, irregular, k, |m| {
                    running(&plan.aggs[m], sums, boxed, log, pos, at, None);
                });
                if cur.lo == at {
                    // The next to leave.
                    cur.due = cur.due.min(exit_due(window, t));
                }
                cur.hi = at + 1;
            }
        }
        if !plan.owns {
            return;
        }
        for a in &plan.aggs {
            if let (None, Place::Boxed(j)) = (a.sliding, a.place)
                && let Boxed::Own(w) = &mut self.boxed[j as usize]
            {
                let v = match a.col {
                    Some(c) => cols.get(c as usize).cloned().unwrap_or_default(),
                    None => Value::Bool(true),
                };
                w.update(t, v);
            }
        }
    }

    /// Writes the current values of the aggregates at places `range` into
    /// `out` (one per aggregate): a rule reads its own of a group's.
    pub fn values_of(&self, plan: &Plan, range: std::ops::Range<usize>, out: &mut [Value]) {
        for (i, o) in range.zip(out) {
            let Some(a) = plan.aggs.get(i) else {
                break;
            };
            if a.sliding.is_none() {
                *o = match &self.boxed.get(Self::boxed_index(a)) {
                    Some(Boxed::Own(w)) => w.value(),
                    _ => Value::Null,
                };
                continue;
            }
            let cur = self.cursor_of(plan, i);
            let count = cur.hi - cur.lo;
            *o = match a.place {
                Place::Events => Value::Num(count as f64),
                Place::Sums(j) => {
                    let s = &self.sums[j as usize];
                    let counts = a.counts_events();
                    super::sums_value(a.func, counts, count, s.non_null, s.sum, s.sum_sq)
                }
                Place::Boxed(j) => {
                    let Boxed::Full(acc) = &self.boxed[j as usize] else {
                        *o = Value::Null;
                        continue;
                    };
                    if a.func == WinFunc::Novel {
                        // The newest event inside the window (it ends now).
                        if cur.hi > cur.lo {
                            let pos = (cur.hi - 1 - self.base) as usize;
                            let v = self.log.value(pos, a.slot);
                            if v.is_null() {
                                Value::Null
                            } else {
                                let seen = acc.distinct.get(&ValueKey::from(&*v)).copied();
                                Value::Num(if seen == Some(1) { 1.0 } else { 0.0 })
                            }
                        } else {
                            Value::Null
                        }
                    } else {
                        acc.value(a.func, a.counts_events())
                    }
                }
            };
        }
    }

    fn boxed_index(a: &AggPlan) -> usize {
        match a.place {
            Place::Boxed(j) => j as usize,
            _ => usize::MAX,
        }
    }

    /// Whether it holds nothing (safe to drop for an idle key).
    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
            && self.cursors.iter().all(|c| c.hi == c.lo)
            && self.boxed.iter().all(|b| match b {
                Boxed::Own(w) => w.is_empty(),
                Boxed::Full(_) => true,
            })
    }

    /// The aggregates as stored: each a [`WindowState`] holding its own
    /// events, exactly as if it had always kept them; without `events`,
    /// their events are left out (the store keeps the log's rows apart:
    /// see [`Windows::refill`]).
    pub fn to_states(&self, plan: &Plan, events: bool) -> Vec<WindowState> {
        let end = self.end();
        plan.aggs
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let Some((len, ago)) = a.sliding else {
                    return match self.boxed.get(Self::boxed_index(a)) {
                        Some(Boxed::Own(w)) => (**w).clone(),
                        _ => WindowState::new(a.func, &a.window, a.counts_events()),
                    };
                };
                let cur = self.cursor_of(plan, i);
                let shift = self.shift_of(i);
                let entry = |i: u64| {
                    let pos = (i - self.base) as usize;
                    (
                        self.log.time(pos),
                        i.wrapping_add(shift),
                        self.log.value(pos, a.slot).into_owned(),
                    )
                };
                let front = |i: u64, upto: u64| {
                    if i < upto {
                        self.log.time((i - self.base) as usize)
                    } else {
                        i64::MAX
                    }
                };
                let count = cur.hi - cur.lo;
                let mut acc = match a.place {
                    Place::Events => Accum {
                        count,
                        non_null: count,
                        ..Accum::default()
                    },
                    Place::Sums(j) => {
                        let s = &self.sums[j as usize];
                        Accum {
                            count,
                            non_null: s.non_null,
                            sum: s.sum,
                            sum_sq: s.sum_sq,
                            ..Accum::default()
                        }
                    }
                    Place::Boxed(j) => match &self.boxed[j as usize] {
                        Boxed::Full(acc) => (**acc).clone(),
                        Boxed::Own(_) => Accum::default(),
                    },
                };
                for m in acc.mins.iter_mut().chain(acc.maxs.iter_mut()) {
                    m.0 = m.0.wrapping_add(shift);
                }
                WindowState {
                    func: a.func,
                    counts_events: a.counts_events(),
                    kind: Kind::Sliding { len, ago },
                    pending: if events {
                        (cur.hi..end).map(entry).collect()
                    } else {
                        VecDeque::new()
                    },
                    active: if events {
                        (cur.lo..cur.hi).map(entry).collect()
                    } else {
                        VecDeque::new()
                    },
                    acc,
                    // The number of the newest event it has seen.
                    seq: end.wrapping_add(shift).wrapping_sub(1),
                    mark: None,
                    pending_front: front(cur.hi, end),
                    active_front: front(cur.lo, cur.hi),
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
        let mut cursors: SmallVec<[Cursor; 3]> = SmallVec::new();
        let mut cursor_span: Vec<u16> = Vec::new();
        let mut sums: SmallVec<[Sums; 3]> = smallvec::smallvec![Sums::default(); plan.sums];
        let mut boxed = Vec::with_capacity(plan.boxed);
        let mut cursor_of = vec![0u16; plan.aggs.len()];
        let mut shifts = vec![None; plan.aggs.len()];
        for (i, (w, a)) in states.into_iter().zip(&plan.aggs).enumerate() {
            let Some((len, ago)) = a.sliding else {
                if matches!(w.kind, Kind::Sliding { .. }) {
                    return Err(format!(
                        "window aggregate {i} is stored as a sliding window"
                    ));
                }
                boxed.push(Boxed::Own(Box::new(w)));
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
            let k = match (cursors.iter().zip(&cursor_span))
                .position(|(c, &s)| (s, c.lo, c.hi) == (a.span, lo, hi))
            {
                Some(k) => k,
                None => {
                    cursors.push(Cursor {
                        lo,
                        hi,
                        due: EventTime::MIN,
                    });
                    cursor_span.push(a.span);
                    cursors.len() - 1
                }
            };
            debug_assert_eq!(plan.spans[a.span as usize], (len, ago));
            cursor_of[i] = k as u16;
            shifts[i] = Some(shift);
            match a.place {
                Place::Events => {}
                Place::Sums(j) => {
                    sums[j as usize] = Sums {
                        non_null: acc.non_null,
                        sum: acc.sum,
                        sum_sq: acc.sum_sq,
                    }
                }
                Place::Boxed(_) => boxed.push(Boxed::Full(Box::new(acc))),
            }
        }
        let times: Vec<EventTime> = times.into_iter().map(Option::unwrap_or_default).collect();
        if times.iter().zip(times.iter().skip(1)).any(|(a, b)| a > b) {
            return Err("window events out of time order".to_string());
        }
        let mut log = Log::new(stride);
        for (pos, &t) in times.iter().enumerate() {
            log.push(t, vals[pos * stride..(pos + 1) * stride].iter());
        }
        // The plan's layout holds when every window has one cursor, in the
        // plan's order, and every aggregate numbers events alike.
        let shift = shifts.iter().flatten().next().copied().unwrap_or(1);
        let regular = cursors.len() == plan.spans.len()
            && (plan.aggs.iter().zip(&cursor_of)).all(|(a, &k)| a.sliding.is_none() || k == a.span)
            && shifts.iter().flatten().all(|&s| s == shift);
        let irregular = (!regular).then(|| {
            Box::new(Irregular {
                span: cursor_span,
                cursor: cursor_of,
                shift: shifts.iter().map(|s| s.unwrap_or(shift)).collect(),
            })
        });
        Ok(Windows {
            log,
            base: 0,
            cursors,
            sums,
            boxed: boxed.into_boxed_slice(),
            shift,
            irregular,
            stored: (0, 0),
        })
    }

    /// Puts back the events [`Windows::to_states`] left out of `states`
    /// (laid out by `plan`): each sliding aggregate's are the `rows` from
    /// its cursor's `lo` (in `cursors`, as [`Windows::agg_cursors`] gave
    /// them) to `end`, those from `hi` on not yet inside its window.
    /// `rows` are the log's rows with their indices, contiguous and ending
    /// at `end`.
    pub fn refill(
        plan: &Plan,
        states: &mut [WindowState],
        end: u64,
        cursors: &[(u64, u64)],
        rows: &[(u64, LogRow)],
    ) -> Result<(), String> {
        if states.len() != plan.aggs.len() || cursors.len() != plan.aggs.len() {
            return Err(format!(
                "{} window aggregates and {} cursors stored, the rule has {}",
                states.len(),
                cursors.len(),
                plan.aggs.len()
            ));
        }
        let first = end.wrapping_sub(rows.len() as u64);
        if first > end
            || (rows.iter().enumerate()).any(|(k, (i, _))| *i != first.wrapping_add(k as u64))
        {
            return Err("the logged events are not contiguous".into());
        }
        for (i, r) in rows {
            if r.values.len() != plan.logged.len() {
                return Err(format!(
                    "logged event {i} has {} values for {} columns",
                    r.values.len(),
                    plan.logged.len()
                ));
            }
        }
        for (i, (w, a)) in states.iter_mut().zip(&plan.aggs).enumerate() {
            if a.sliding.is_none() {
                continue;
            }
            let (lo, hi) = cursors[i];
            if !(first <= lo && lo <= hi && hi <= end) {
                return Err(format!(
                    "window aggregate {i} holds events {lo}..{hi}, the log {first}..{end}"
                ));
            }
            if !matches!(w.kind, Kind::Sliding { .. }) {
                return Err(format!(
                    "window aggregate {i} is not stored as a sliding window"
                ));
            }
            let newest = w.seq;
            let entry = |j: u64| {
                let row = &rows[(j - first) as usize].1;
                let v = match a.slot {
                    Some(s) => row.values[s as usize].clone(),
                    None => EVENT.clone(),
                };
                (row.time, newest.wrapping_sub(end - 1 - j), v)
            };
            w.active = (lo..hi).map(entry).collect();
            w.pending = (hi..end).map(entry).collect();
            w.active_front = w.active.front().map_or(i64::MAX, |e| e.0);
            w.pending_front = w.pending.front().map_or(i64::MAX, |e| e.0);
        }
        Ok(())
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

    /// `w` stored without its events, restored from its log's rows: the
    /// same log indices and the same stored form.
    fn restored_from_rows(plan: &Plan, w: &Windows) -> Windows {
        let (base, end) = w.log_range();
        let rows: Vec<(u64, LogRow)> = (base..end).map(|i| (i, w.row(i))).collect();
        // What a checkpoint writes of them, borrowed, is what they encode to.
        for from in [base, (base + end) / 2, end] {
            let built: Vec<LogRow> = (from..end).map(|i| w.row(i)).collect();
            assert_eq!(
                postcard::to_allocvec(&w.rows(from, end)).expect("encodes"),
                postcard::to_allocvec(&built).expect("encodes")
            );
        }
        let mut states = w.to_states(plan, false);
        Windows::refill(plan, &mut states, end, &w.agg_cursors(plan), &rows).expect("refills");
        let mut back = Windows::from_states(plan, states).expect("restores");
        back.rebase(end - back.log_range().1);
        assert_eq!(back.log_range().1, end);
        assert_eq!(
            encoded(&back.to_states(plan, true)),
            encoded(&w.to_states(plan, true))
        );
        back
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
                shared.advance(&plan, t);
                shared.update(&plan, t, &plan_cols(&plan, &c));
                step_reference(&mut alone, &specs, t, &c);
                shared.values_of(&plan, 0..specs.len(), &mut got);
                let want: Vec<Value> = alone.iter().map(WindowState::value).collect();
                assert_eq!(got, want, "seed {seed} event {i}: {specs:?}");
                if i % 37 == 0 {
                    assert_eq!(
                        encoded(&shared.to_states(&plan, true)),
                        encoded(&alone),
                        "seed {seed} event {i}"
                    );
                    // Restored from the stored form, with its events or
                    // from its rows, it goes on alike.
                    shared = if i % 74 == 0 {
                        Windows::from_states(&plan, shared.to_states(&plan, true))
                            .expect("restores")
                    } else {
                        restored_from_rows(&plan, &shared)
                    };
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
                    w.advance(&plan, t);
                    w.update(&plan, t, &plan_cols(&plan, &c));
                }
                if let Some(w) = &shared {
                    w.values_of(&plan, 0..got.len(), &mut got);
                    let want: Vec<Value> = alone.iter().map(WindowState::value).collect();
                    assert_eq!(got, want, "seed {seed} event {i}: {specs:?} {starts:?}");
                    assert_eq!(
                        encoded(&w.to_states(&plan, true)),
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
            w.advance(&plan, t);
            w.update(&plan, t, &[Value::Num(i as f64)]);
        }
        // 30 days of events at two a day, the newest included.
        assert_eq!(w.log.len(), 60);
        assert_eq!(w.log.words.len(), 120);
        let mut got = vec![Value::Null; 6];
        w.values_of(&plan, 0..got.len(), &mut got);
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
