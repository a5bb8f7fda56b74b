//! The engine: events in, alerts out, deterministically. It buffers events
//! until the watermark releases them in event-time order, keeps per-key state
//! (each rule's partial matches and window aggregates), fires deadlines from
//! a timer queue, and returns late events to the caller for dead-lettering.
//!
//! Events at or before the watermark are late. With allowed lateness `L`,
//! events up to `max seen - L` are released at once (ties keep arrival order),
//! so in-order input is never buffered.

mod alert;
pub mod inspect;
mod migrate;
mod passivate;
mod ruleset;
mod snapshot;
mod waiting;

pub use alert::{Alert, AlertKind};
pub use migrate::{Migration, RuleChange};
pub use passivate::PassivationStats;
pub use ruleset::{CompiledRule, EngineOptions, Keying, RuleSet};
pub use snapshot::check_entry;

use crate::event::{DecodeError, Event, EventTime, Value, ValueKey};
use crate::pattern::eval::{Flat, Leaf, Scope, eval};
use crate::pattern::{MatcherState, Output, Scratch};
use crate::rules::ir::LookupSource;
use crate::time::{TimerQueue, WatermarkTracker};
use crate::window::{WindowState, Windows};
use hashbrown::HashMap;
use smallvec::SmallVec;
use std::sync::Arc;

/// A rule that failed for one key (its state was trimmed; processing goes on).
#[derive(Clone, Debug)]
pub struct RuleError {
    /// Rule.
    pub rule: Arc<str>,
    /// Key.
    pub key: Value,
    /// What happened.
    pub message: String,
}

/// An event whose time the engine does not take: at or before the
/// watermark (late), or too far ahead of the stream (future).
#[derive(Clone, Debug)]
pub struct LateEvent {
    /// The event.
    pub event: Event,
    /// The watermark it missed (late), or the watermark when it came.
    pub watermark: EventTime,
    /// Set when the event is *future*: the latest time it could have had
    /// (see [`crate::rules::StreamDef::skew_ms`]).
    pub future_limit: Option<EventTime>,
}

/// The features of one event: what every feature set computed for it.
#[derive(Clone, Debug)]
pub struct FeatureRow {
    /// The event.
    pub event: Arc<Event>,
    /// By [`RuleSet::feature_columns`]; `Null` for a feature set whose key
    /// the event lacks.
    pub values: Vec<Value>,
}

impl FeatureRow {
    /// Writes this row to `out` as one JSON object: first the event fields
    /// `fields` (name, path) as the record carried them, with their JSON
    /// types (null when absent), then each feature of `columns`
    /// ([`RuleSet::feature_columns`]) by name. The feature log's record, and
    /// a line of `replay --features` as JSON lines.
    pub fn write_json(
        &self,
        fields: &[(String, crate::event::FieldPath)],
        columns: &[Arc<str>],
        out: &mut Vec<u8>,
    ) -> Result<(), serde_json::Error> {
        let record: serde_json::Value = if fields.is_empty() {
            serde_json::Value::Null
        } else {
            // The decoder accepted the record, so it is a JSON object.
            serde_json::from_str(&self.event.raw).unwrap_or(serde_json::Value::Null)
        };
        let mut obj = serde_json::Map::with_capacity(fields.len() + self.values.len());
        for (name, path) in fields {
            let v = path
                .0
                .iter()
                .try_fold(&record, |v, seg| v.get(seg.as_str()))
                .unwrap_or(&serde_json::Value::Null);
            obj.insert(name.clone(), v.clone());
        }
        for (name, v) in columns.iter().zip(&self.values) {
            obj.insert(name.to_string(), v.to_json());
        }
        serde_json::to_writer(out, &obj)
    }
}

/// What processing produced.
#[derive(Debug, Default)]
pub struct Outputs {
    /// Alerts, in the order they fired.
    pub alerts: Vec<Alert>,
    /// Each event's features, in processing order, when the engine
    /// collects them ([`Engine::collect_features`]).
    pub features: Vec<FeatureRow>,
    /// Late events (to dead-letter).
    pub late: Vec<LateEvent>,
    /// Rule errors.
    pub errors: Vec<RuleError>,
}

/// Counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct EngineStats {
    /// Events processed (released by the watermark).
    pub events: u64,
    /// Late events.
    pub late: u64,
    /// Future events (too far ahead; not kept in snapshots).
    pub future: u64,
    /// Alerts not raised: over the budget of one event (not kept in
    /// snapshots).
    pub suppressed: u64,
    /// Alerts not raised because their rule's `suppress` period for the
    /// key was running (not kept in snapshots).
    pub silenced: u64,
    /// Alerts emitted.
    pub alerts: u64,
    /// Rule errors.
    pub rule_errors: u64,
    /// Times an event lacked the key field of some rules (those rules skipped it;
    /// events without the stream's own key are rejected by the decoder).
    pub unkeyed: u64,
}

/// The state of one key for the rules of one keying.
#[derive(Clone, Debug)]
struct KeyState {
    key: Value,
    /// Per rule of the keying: matcher state.
    matchers: Vec<MatcherState>,
    /// Per window group of the keying ([`Keying::groups`]): the window
    /// aggregates. Their values are computed when read
    /// ([`Windows::values_of`], into a buffer the engine keeps) rather
    /// than kept per key: a key's state is then a few cache lines smaller,
    /// and those lines are the cache misses of the hot path. Inline for
    /// one group (most keyings have one), in the key's own allocation.
    windows: smallvec::SmallVec<[Windows; 1]>,
    timer: Option<EventTime>,
    /// Per rule of the keying, for rules with `suppress`: the event time
    /// before which its alerts for this key are not raised (`i64::MIN`:
    /// none). Empty until a rule of the keying first alerts with it.
    quiet: Vec<EventTime>,
    /// The number of the [`Engine::take_changes`] batch that holds its
    /// latest change (0: none since the restore): it may be passivated once
    /// that batch is persisted.
    written: u64,
    /// Estimated memory it holds (see [`passivate`]); kept only with
    /// passivation on.
    bytes: u32,
}

impl KeyState {
    /// A key's state before its first event.
    fn fresh(rules: &RuleSet, keying: &Keying, key: &Value) -> KeyState {
        KeyState {
            key: key.clone(),
            matchers: keying
                .rules
                .iter()
                .map(|&r| rules.rules[r].matcher.new_state())
                .collect(),
            windows: keying
                .groups
                .iter()
                .map(|g| Windows::new(&g.plan))
                .collect(),
            timer: None,
            quiet: Vec::new(),
            written: 0,
            bytes: 0,
        }
    }

    /// Reads the lines of its own state that processing an event reads
    /// (see [`Engine::warm`]).
    fn warm_entry(&self) -> u64 {
        let mut acc = self.written ^ self.matchers.len() as u64;
        for w in &self.windows {
            acc ^= w.warm_entry();
        }
        acc
    }

    /// Reads what processing an event at `now` reads beyond its own state:
    /// the matchers and the window logs' edges (see [`Engine::warm`]).
    fn warm_logs(&self, now: EventTime) -> u64 {
        let mut acc = 0;
        for m in &self.matchers {
            acc ^= m.deadline as u64 ^ m.partials.first().map_or(0, |p| p.start_ts as u64);
        }
        for w in &self.windows {
            acc ^= w.warm_logs(now);
        }
        acc
    }

    /// The bytes its windows' logs hold in memory, which its stored entry
    /// leaves out (the log is stored in chunks of its own): its memory
    /// estimate adds them to the entry's size.
    fn log_bytes(&self) -> usize {
        self.windows.iter().map(Windows::log_bytes).sum()
    }

    /// Its window aggregates in their stored form, per rule of the keying
    /// (each aggregate with its own events: [`Windows::to_states`]), with
    /// their current values.
    fn rule_windows(
        &self,
        rules: &RuleSet,
        keying: &Keying,
        events: bool,
    ) -> (Vec<Vec<WindowState>>, Vec<Vec<Value>>) {
        let mut states = vec![Vec::new(); keying.rules.len()];
        let mut values = vec![Vec::new(); keying.rules.len()];
        for (g, group) in keying.groups.iter().enumerate() {
            let mut all = self.windows[g].to_states(&group.plan, events).into_iter();
            for &local in &group.members {
                let rule = &rules.rules[keying.rules[local]];
                states[local] = all.by_ref().take(rule.def.windows.len()).collect();
                values[local] = self.rule_values(keying, rule);
            }
        }
        (states, values)
    }

    /// Lays out window aggregates stored per rule of the keying (as
    /// [`KeyState::rule_windows`] gives them) in the keying's groups. A group
    /// whose aggregates do not line up is left as it was, and reported by
    /// its index with the reason. The stored values are checked for their
    /// number only: values are computed from the aggregates when read.
    /// With `logs` (per group: where its log ends, which rows the store
    /// holds, and the rows read back for a group stored without its
    /// events), each group's log gets its stored numbering.
    fn set_rule_windows(
        &mut self,
        rules: &RuleSet,
        keying: &Keying,
        mut states: Vec<Vec<WindowState>>,
        values: Vec<Vec<Value>>,
        logs: Option<(&[snapshot::GroupLog], &[snapshot::GroupRows])>,
    ) -> Result<(), (usize, String)> {
        self.windows
            .resize_with(keying.groups.len(), Windows::default);
        for (g, group) in keying.groups.iter().enumerate() {
            let mut all = Vec::with_capacity(group.plan.len());
            for &local in &group.members {
                let rule = &rules.rules[keying.rules[local]];
                let n = rule.def.windows.len();
                let s = std::mem::take(&mut states[local]);
                let v = values.get(local).map_or(0, Vec::len);
                if s.len() != n || v != n {
                    return Err((
                        g,
                        format!(
                            "rule {} has {} window aggregates and {} values stored for {n}",
                            rule.name,
                            s.len(),
                            v
                        ),
                    ));
                }
                all.extend(s);
            }
            let log = logs.and_then(|(l, rows)| Some((l.get(g)?, rows.get(g)?)));
            if let Some((log, rows)) = log
                && let Some(cursors) = &log.cursors
            {
                Windows::refill(&group.plan, &mut all, log.end, cursors, rows)
                    .map_err(|e| (g, e))?;
            }
            let mut w = Windows::from_states(&group.plan, all).map_err(|e| (g, e))?;
            if let Some((log, _)) = log {
                let n = w.log_range().1;
                if n > log.end {
                    return Err((g, format!("{n} logged events end at index {}", log.end)));
                }
                w.rebase(log.end - n);
                w.set_stored(log.stored);
            }
            self.windows[g] = w;
        }
        Ok(())
    }

    /// The current values of `rule`'s window aggregates (the rule is of
    /// this key's keying), in a vector of their own: for reading state
    /// outside the hot path (snapshots, inspection).
    fn rule_values(&self, keying: &Keying, rule: &CompiledRule) -> Vec<Value> {
        let mut buf = Vec::new();
        group_values(keying, &self.windows, rule, &mut buf);
        buf
    }
}

/// `rule`'s window values, computed from its group's aggregates in a key's
/// `windows` into `buf` (a function of the field alone, so the key's
/// matchers can be borrowed at the same time).
fn group_values<'a>(
    keying: &Keying,
    windows: &[Windows],
    rule: &CompiledRule,
    buf: &'a mut Vec<Value>,
) -> &'a [Value] {
    match rule.windows {
        Some(w) => {
            // Only the rule's own aggregates: a group's others are other rules'.
            buf.resize(w.range().len(), Value::Null);
            windows[w.group].values_of(&keying.groups[w.group].plan, w.range(), buf);
            buf
        }
        None => &[],
    }
}

/// A key's entry in the engine's key maps: its state in memory, or, while
/// the key is idle, that state encoded as the store holds it, less the
/// header every entry shares (frozen; see [`passivate`]), a fraction of
/// the memory. A frozen key is decoded again by its next event or timer.
#[derive(Debug)]
enum KeyCell {
    Live(Box<KeyState>),
    /// Its store entry value's body.
    Frozen(Box<[u8]>),
}

impl KeyCell {
    fn live(ks: KeyState) -> KeyCell {
        KeyCell::Live(Box::new(ks))
    }

    fn live_mut(&mut self) -> Option<&mut KeyState> {
        match self {
            KeyCell::Live(ks) => Some(ks),
            KeyCell::Frozen(_) => None,
        }
    }

    /// The number of the batch holding its latest change. Frozen keys
    /// count as changed before any batch: their change is persisted, and
    /// they are the idle ones, so they are evicted first.
    fn written(&self) -> u64 {
        match self {
            KeyCell::Live(ks) => ks.written,
            KeyCell::Frozen(_) => 0,
        }
    }

    /// The memory estimate the budget counts for it.
    fn estimate(&self) -> usize {
        match self {
            KeyCell::Live(ks) => ks.bytes as usize,
            KeyCell::Frozen(body) => body.len() + passivate::FROZEN_OVERHEAD,
        }
    }
}

/// Runs a rule set over a stream of events.
pub struct Engine {
    rules: Arc<RuleSet>,
    keys: Vec<HashMap<ValueKey, KeyCell>>,
    /// Events waiting for the watermark, in processing order.
    buffer: waiting::Waiting,
    watermark: WatermarkTracker,
    timers: TimerQueue<(u32, ValueKey)>,
    scratch: Scratch,
    matcher_out: Vec<Output>,
    stats: EngineStats,
    since_sweep: u32,
    /// The watermark comes only from [`Engine::advance_watermark`], not
    /// from the events (inputs whose watermark is decided upstream).
    external_watermark: bool,
    /// Keys touched since the last [`Engine::take_changes`], when tracked.
    dirty: Option<hashbrown::HashSet<(u32, ValueKey)>>,
    /// The buffered events (time, seq) the last checkpoint wrote or the
    /// restore read.
    stored_buffer: std::collections::BTreeSet<(EventTime, u64)>,
    /// The next [`Engine::take_changes`] rewrites every buffered event (the
    /// rule set changed, so their stored encoding is stale).
    rewrite_buffer: bool,
    /// When changes are tracked: the buffered events the store does not
    /// hold yet, by (time, seq), for the next [`Engine::take_changes`] to
    /// write. It and `released_buffer` make a checkpoint's buffer work
    /// proportional to what changed, not to what waits (a terminal's
    /// shard may hold tens of thousands of events for a slow partition).
    unstored_buffer: HashMap<(EventTime, u64), Arc<Event>>,
    /// When changes are tracked: stored buffered events released since the
    /// last [`Engine::take_changes`], for it to delete.
    released_buffer: Vec<(EventTime, u64)>,
    /// The waiting events are left out of the changes: the caller's input
    /// holds them (see [`Engine::waiting_from_input`]).
    waiting_in_input: bool,
    /// The store holds the rules entry of the current rules.
    rules_stored: bool,
    /// What the restore that made this engine migrated.
    migration: Option<Migration>,
    /// Batches [`Engine::take_changes`] has returned.
    batches: u64,
    /// Idle keys evicted to the store, when on (see [`passivate`]).
    passive: Option<passivate::Passivation>,
    /// Every event's feature row goes to [`Outputs::features`].
    collect_features: bool,
    /// A model's input row, reused.
    model_row: Vec<f32>,
    /// The column values a window group aggregates, for the event at hand.
    cols: Vec<Value>,
    /// The window values of the rule being evaluated (see [`KeyState::windows`]).
    window_values: Vec<Value>,
    /// The wall clock (epoch ms) where there is one ([`Engine::set_clock`]).
    clock: Option<i64>,
    /// The wall-clock time the latest event time seen last moved.
    advanced_at: Option<i64>,
    /// The wall-clock time the last event on time arrived.
    arrived_at: Option<i64>,
    /// The largest key state a checkpoint writes ([`Engine::limit_key_state`]).
    state_limit: Option<usize>,
    /// Keys reset for their state's size, to report.
    reset_keys: Vec<RuleError>,
    /// The stored rows of logged events (see [`snapshot`]) of keys dropped
    /// since the last [`Engine::take_changes`], which deletes them: per
    /// key and window group, a range of log indices.
    log_deletes: Vec<snapshot::RowRange>,
    /// The lists the rules look values up in.
    lists: Arc<crate::lists::Lists>,
    /// The tables the rules look rows up in.
    tables: Arc<crate::tables::Tables>,
    /// The latest event time processed (an event dispatched or a deadline
    /// fired): every later alert is at or after it, so a `suppress` period
    /// ending by then holds nothing back (see [`is_idle`]).
    processed_to: EventTime,
}

impl Engine {
    /// An engine for `rules` with its stream's lateness.
    pub fn new(rules: Arc<RuleSet>) -> Engine {
        // One watermark for every stream: the most lateness any allows.
        let lateness = rules
            .def
            .streams
            .iter()
            .map(|s| s.lateness_ms)
            .max()
            .unwrap_or(0);
        Engine {
            keys: rules.keyings.iter().map(|_| HashMap::new()).collect(),
            buffer: waiting::Waiting::default(),
            watermark: WatermarkTracker::new(1, lateness, 0),
            timers: TimerQueue::default(),
            scratch: Scratch::default(),
            matcher_out: Vec::new(),
            stats: EngineStats::default(),
            since_sweep: 0,
            external_watermark: false,
            dirty: None,
            stored_buffer: Default::default(),
            rewrite_buffer: false,
            unstored_buffer: HashMap::new(),
            released_buffer: Vec::new(),
            waiting_in_input: false,
            rules_stored: false,
            migration: None,
            batches: 0,
            passive: None,
            collect_features: false,
            model_row: Vec::new(),
            cols: Vec::new(),
            window_values: Vec::new(),
            clock: None,
            advanced_at: None,
            arrived_at: None,
            state_limit: None,
            reset_keys: Vec::new(),
            log_deletes: Vec::new(),
            lists: Arc::default(),
            tables: Arc::default(),
            processed_to: EventTime::MIN,
            rules,
        }
    }

    /// Reads table lookups (`profiles.HOME_COUNTRY`) from `tables`, which
    /// others may change while the engine runs (without it, every table is
    /// empty).
    pub fn with_tables(mut self, tables: Arc<crate::tables::Tables>) -> Engine {
        self.tables = tables;
        self
    }

    /// Reads list lookups (`x in LIST`) from `lists`, which others may
    /// change while the engine runs (without it, every list is empty).
    pub fn with_lists(mut self, lists: Arc<crate::lists::Lists>) -> Engine {
        self.lists = lists;
        self
    }

    /// Gives the engine the wall clock (epoch ms), for the stream's limits on
    /// future events: `clock skew`, and `skew` widened by the time the input
    /// has been quiet, so that a real gap longer than the skew (a partition
    /// without events for a week) is not taken for a future event. Without a
    /// clock (replay, tests) the engine is deterministic.
    pub fn set_clock(&mut self, now_ms: i64) {
        self.clock = Some(now_ms);
        self.advanced_at.get_or_insert(now_ms);
    }

    /// The latest event time the engine takes now, if it limits them: an
    /// event past it is future.
    fn future_limit(&self, stream: u16) -> Option<EventTime> {
        if self.external_watermark {
            // Decided upstream, where each event was checked.
            return None;
        }
        let stream = &self.rules.def.streams[stream as usize];
        let quiet = match (self.clock, self.advanced_at) {
            (Some(now), Some(at)) => now.saturating_sub(at).max(0),
            _ => 0,
        };
        let by_stream = (stream.skew_ms > 0)
            .then(|| self.watermark.max_seen())
            .flatten()
            .map(|m| m.saturating_add(stream.skew_ms).saturating_add(quiet));
        let by_clock = stream
            .clock_skew_ms
            .zip(self.clock)
            .map(|(skew, now)| now.saturating_add(skew));
        match (by_stream, by_clock) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Collects every processed event's features (the rule set's feature
    /// sets) in [`Outputs::features`]. Off by default: alerting does not
    /// need the rows.
    pub fn collect_features(mut self) -> Engine {
        self.collect_features = true;
        self
    }

    /// Tracks which keys change, for [`Engine::take_changes`] (incremental
    /// checkpoints to a changelog). Off by default: replay does not need it.
    pub fn track_changes(mut self) -> Engine {
        self.dirty = Some(hashbrown::HashSet::new());
        self
    }

    /// Leaves the events waiting for the watermark out of
    /// [`Engine::take_changes`] (and deletes those a store restored from
    /// holds): the caller keeps its input from the earliest waiting event
    /// on ([`Engine::earliest_waiting`]) and, after a restore, takes the
    /// events of that input after [`Engine::release_bound`] again. Most
    /// events wait across a checkpoint where the watermark comes from
    /// upstream; in the state each was written, then deleted.
    pub fn waiting_from_input(mut self) -> Engine {
        self.waiting_in_input = true;
        self
    }

    /// The input position (`seq`) of the earliest waiting event.
    pub fn earliest_waiting(&self) -> Option<u64> {
        self.buffer.iter().map(|e| e.seq).min()
    }

    /// The latest event time seen on time (`None`: none, or the watermark
    /// comes from upstream).
    pub fn latest_seen(&self) -> Option<EventTime> {
        self.watermark.max_seen()
    }

    /// The latest event time the engine has processed through: every
    /// event it took at or before it has been processed (or refused), every
    /// later one it took waits.
    pub fn release_bound(&self) -> EventTime {
        self.release_upto(self.watermark.current().saturating_add(1))
    }

    /// An engine whose watermark moves only by [`Engine::advance_watermark`]:
    /// events wait until the watermark passes them. For input merged from
    /// several upstream partitions, whose watermark is the minimum of theirs.
    pub fn with_external_watermark(rules: Arc<RuleSet>) -> Engine {
        Engine {
            external_watermark: true,
            ..Engine::new(rules)
        }
    }

    /// Whether an event at `t` would be late.
    pub fn is_late(&self, t: EventTime) -> bool {
        self.watermark.is_late(t)
    }

    /// Whether `event` would be refused, late or future: such events are
    /// not forwarded to the shards of other keys.
    pub fn refuses_event(&self, event: &Event) -> bool {
        let t = event.time;
        self.is_late(t)
            || self
                .future_limit(self.rules.def.stream_of(event))
                .is_some_and(|l| t > l)
    }

    /// The rule set.
    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    /// Counters.
    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// The current watermark.
    pub fn watermark(&self) -> EventTime {
        self.watermark.current()
    }

    /// Keys with state, per keying.
    pub fn key_count(&self) -> usize {
        self.keys.iter().map(|k| k.len()).sum()
    }

    /// Partial matches alive in resident keys (a lazily matched rule's
    /// window counts as one while it holds events). Walks every resident
    /// key: for telemetry, now and then.
    pub fn partial_matches(&self) -> u64 {
        let mut n = 0u64;
        for cell in self.keys.iter().flat_map(|k| k.values()) {
            if let KeyCell::Live(ks) = cell {
                for m in &ks.matchers {
                    n += m.partials.iter().filter(|p| p.start.is_some()).count() as u64;
                    n += m.completed.len() as u64;
                    n += u64::from(m.lazy.as_ref().is_some_and(|l| !l.recent.is_empty()));
                }
            }
        }
        n
    }

    /// Events waiting for the watermark.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Decodes one input record with the rule set's decoder and takes the
    /// event (see [`Engine::on_event`]): the one path from bytes to the
    /// engine for `replay`, backtests, rule examples and the service's
    /// shards, so they cannot disagree on what an event is. `before` sees
    /// the decoded event first, with whether the engine will refuse it
    /// (late or future; see [`Engine::refuses`]). `stream` is the index of
    /// the record's stream ([`RuleSetDef::stream_index`]; 0 is the main
    /// stream) and `seq` its position in its input. A record that does not
    /// decode changes nothing.
    ///
    /// [`RuleSetDef::stream_index`]: crate::rules::RuleSetDef::stream_index
    pub fn on_record(
        &mut self,
        stream: u16,
        bytes: &[u8],
        seq: u64,
        out: &mut Outputs,
        before: impl FnOnce(&Event, bool),
    ) -> Result<(), DecodeError> {
        let event = self.decode(stream, bytes, seq)?;
        before(&event, self.refuses_event(&event));
        self.on_event(event, out);
        Ok(())
    }

    /// Decodes one input record of stream `stream` (see
    /// [`Engine::on_record`]) without taking it.
    pub fn decode(&self, stream: u16, bytes: &[u8], seq: u64) -> Result<Event, DecodeError> {
        let Some(decoder) = self.rules.decoder_for(stream) else {
            return Err(DecodeError::UnknownStream(stream));
        };
        decoder.decode(bytes, seq)
    }

    /// Takes one event (owned, or already shared). Late events go to
    /// `out.late`.
    pub fn on_event(&mut self, event: impl Into<Arc<Event>>, out: &mut Outputs) {
        let event = event.into();
        if self.watermark.is_late(event.time) {
            self.stats.late += 1;
            out.late.push(LateEvent {
                watermark: self.watermark.current(),
                future_limit: None,
                event: Arc::unwrap_or_clone(event),
            });
            return;
        }
        if let Some(limit) = self.future_limit(self.rules.def.stream_of(&event))
            && event.time > limit
        {
            // It must not move the watermark: every later event would be late.
            self.stats.future += 1;
            out.late.push(LateEvent {
                watermark: self.watermark.current(),
                future_limit: Some(limit),
                event: Arc::unwrap_or_clone(event),
            });
            return;
        }
        let w = if self.external_watermark {
            self.watermark.current()
        } else {
            if self.watermark.max_seen().is_none_or(|m| event.time > m) {
                self.advanced_at = self.clock;
            }
            self.arrived_at = self.clock;
            self.watermark.observe(0, event.time, 0)
        };
        let frontier = w.saturating_add(1);
        if self.buffer.is_empty() && event.time <= self.release_upto(frontier) {
            // Deadlines up to the event's time fire first, as on the buffered path.
            self.fire_timers(event.time, out);
            self.dispatch(event, out);
            self.fire_timers(frontier, out);
        } else {
            self.buffer_insert(event);
            self.release(frontier, out);
        }
    }

    /// Reads the state that [`Engine::on_event`] will read first for each
    /// of `events` — their keys' entries, their window logs' edges, their
    /// matchers — without changing anything. A caller that holds the next
    /// events calls it before processing them. A key's state is a chain of
    /// dependent cache misses (the map's bucket, the key's state, its log);
    /// walked one event at a time, each miss stalls the event's path in
    /// turn. Here each link of the chain is read for all the events before
    /// the next link, so the misses of different events are in flight
    /// together (a few latencies per batch instead of a few per event).
    pub fn warm<'e>(&self, events: impl IntoIterator<Item = &'e Event>) {
        let mut found: SmallVec<[(&KeyState, EventTime); 64]> = SmallVec::new();
        for event in events {
            let bit = self.rules.stream_bit(event);
            for (ki, keying) in self.rules.keyings.iter().enumerate() {
                if !(keying.patterns || keying.features) || keying.streams & bit == 0 {
                    continue;
                }
                let key_value = event.field(keying.slot);
                if key_value.is_null() {
                    continue;
                }
                if let Some(KeyCell::Live(ks)) = self.keys[ki].get(&ValueKey::from(key_value)) {
                    found.push((ks, event.time));
                }
            }
        }
        let mut acc = 0u64;
        for (ks, _) in &found {
            acc ^= ks.warm_entry();
        }
        for (ks, now) in &found {
            acc ^= ks.warm_logs(*now);
        }
        std::hint::black_box(acc);
    }

    /// The latest event time that may be processed once the watermark is
    /// `frontier - 1`: events at `frontier` are on time, but when the stream
    /// orders events of the same time by fields, one that comes later may
    /// still go first.
    fn release_upto(&self, frontier: EventTime) -> EventTime {
        if self.rules.orders_ties() {
            frontier.saturating_sub(1)
        } else {
            frontier
        }
    }

    /// Buffers `event` in processing order ([`RuleSet::event_order`], then
    /// arrival).
    fn buffer_insert(&mut self, event: Arc<Event>) {
        let id = (event.time, event.seq);
        if self.dirty.is_some() && !self.waiting_in_input && !self.stored_buffer.contains(&id) {
            self.unstored_buffer.insert(id, event.clone());
        }
        self.buffer.insert(&self.rules, event);
    }

    /// Moves the watermark to `w` (from outside: idle inputs, end of input).
    pub fn advance_watermark(&mut self, w: EventTime, out: &mut Outputs) {
        let w = self.watermark.advance_to(w);
        self.release(w.saturating_add(1), out);
    }

    /// Moves event time with the wall clock (`now_ms`, epoch ms) when the
    /// input has been quiet for a stream's `advance after`: the watermark
    /// becomes the latest event time seen plus the wall-clock time since
    /// it was seen, less the lateness, so that events waiting for a later
    /// one (and deadlines) are not held for as long as the input is quiet.
    /// Returns whether the watermark moved. Only an engine that keeps its
    /// own watermark advances; one fed from upstream follows its sources.
    pub fn advance_with_clock(&mut self, now_ms: i64, out: &mut Outputs) -> bool {
        let after = self
            .rules
            .def
            .streams
            .iter()
            .filter_map(|s| s.advance_after_ms)
            .min();
        self.set_clock(now_ms);
        self.arrived_at.get_or_insert(now_ms);
        let (Some(after), Some(moved), Some(arrived)) = (after, self.advanced_at, self.arrived_at)
        else {
            return false;
        };
        if self.external_watermark || now_ms.saturating_sub(arrived) < after {
            return false;
        }
        match self.watermark.projected(now_ms.saturating_sub(moved)) {
            Some(w) if w > self.watermark.current() => {
                self.advance_watermark(w, out);
                true
            }
            _ => false,
        }
    }

    /// End of input: releases every buffered event and fires every deadline.
    pub fn finish(&mut self, out: &mut Outputs) {
        self.advance_watermark(i64::MAX - 1, out);
    }

    fn release(&mut self, frontier: EventTime, out: &mut Outputs) {
        let upto = self.release_upto(frontier);
        while let Some(ev) = self.buffer.pop_due(&self.rules, upto) {
            if self.dirty.is_some() {
                let id = (ev.time, ev.seq);
                if self.unstored_buffer.remove(&id).is_none() && self.stored_buffer.remove(&id) {
                    self.released_buffer.push(id);
                }
            }
            self.fire_timers(ev.time, out);
            self.dispatch(ev, out);
        }
        self.fire_timers(frontier, out);
    }

    fn fire_timers(&mut self, upto: EventTime, out: &mut Outputs) {
        while let Some((at, (keying, key))) = self.timers.pop_due(upto) {
            self.processed_to = self.processed_to.max(at);
            let now = self.processed_to;
            let rules = self.rules.clone();
            if self.passive.as_ref().is_some_and(|p| p.has_cold()) {
                self.revive(keying as usize, &key);
            }
            let Some(cell) = self.keys[keying as usize].get_mut(&key) else {
                continue;
            };
            if let Some(p) = &mut self.passive
                && !p.thaw(&rules, keying as usize, &key, cell)
            {
                // Unreadable: reported by `take_state_error`, and this
                // output is discarded.
                self.keys[keying as usize].remove(&key);
                continue;
            }
            let Some(ks) = cell.live_mut() else {
                continue;
            };
            if ks.timer != Some(at) {
                // A stale entry: the key's deadline moved after it was
                // queued. Nothing changes, so the key is not written again.
                continue;
            }
            if let Some(d) = &mut self.dirty {
                d.insert((keying, key.clone()));
            }
            ks.written = self.batches + 1;
            ks.timer = None;
            let timed = &rules.keyings[keying as usize].timed;
            for &local in timed {
                let rule = &rules.rules[rules.keyings[keying as usize].rules[local]];
                self.matcher_out.clear();
                rule.matcher
                    .advance_time(&mut ks.matchers[local], at, &mut self.matcher_out);
                let windows: &[Value] = if self.matcher_out.is_empty() {
                    &[]
                } else {
                    group_values(
                        &rules.keyings[keying as usize],
                        &ks.windows,
                        rule,
                        &mut self.window_values,
                    )
                };
                emit(
                    rule,
                    ks,
                    windows,
                    local,
                    at,
                    &mut self.matcher_out,
                    out,
                    &mut self.stats,
                    rules.options.max_alerts_per_event,
                );
            }
            // After advancing to `at` no deadline can be at or before it. One
            // that is (state restored from a damaged snapshot) would fire
            // again at once, forever: the key's state is dropped instead.
            let next = earliest_deadline_among(ks, timed.iter().copied());
            if let Some((n, local)) = next
                && n <= at
            {
                self.stats.rule_errors += 1;
                out.errors.push(RuleError {
                    rule: rules.rules[rules.keyings[keying as usize].rules[local]].name.clone(),
                    key: ks.key.clone(),
                    message: format!(
                        "a deadline at or before {} survived advancing to it (damaged state); the key's state was dropped",
                        crate::event::format_time(at)
                    ),
                });
                self.drop_key(keying as usize, &key);
                continue;
            }
            Self::schedule(keying as usize, &key, ks, next, &mut self.timers);
            if is_idle_among(ks, timed.iter().copied(), now) {
                self.drop_key(keying as usize, &key);
            }
        }
    }

    /// Queues the key's earliest deadline `next` unless an earlier entry is
    /// already queued.
    fn schedule(
        keying: usize,
        key: &ValueKey,
        ks: &mut KeyState,
        next: Option<(EventTime, usize)>,
        timers: &mut TimerQueue<(u32, ValueKey)>,
    ) {
        // Timers are deleted lazily: a key keeps its queued entry when its
        // deadline moves later (the entry fires, finds nothing due, and
        // re-queues), so most events cost no tree operation.
        if let Some((n, _)) = next
            && ks.timer.is_none_or(|t| n < t)
        {
            timers.insert(n, (keying as u32, key.clone()));
            ks.timer = Some(n);
        }
    }

    fn dispatch(&mut self, mut event: Arc<Event>, out: &mut Outputs) {
        self.stats.events += 1;
        self.processed_to = self.processed_to.max(event.time);
        if self.rules.derives {
            let rules = self.rules.clone();
            self.derive(&rules, Arc::make_mut(&mut event));
        }
        // The rules are borrowed field by field rather than cloned: an Arc
        // clone and drop per event are two atomic operations on the hot path.
        let bit = self.rules.stream_bit(&event);
        for ki in 0..self.rules.keyings.len() {
            let keying = &self.rules.keyings[ki];
            if !keying.patterns || keying.streams & bit == 0 {
                continue;
            }
            let key_value = event.field(keying.slot);
            if key_value.is_null() {
                self.stats.unkeyed += 1;
                continue;
            }
            let key = ValueKey::from(key_value);
            self.touch_key(ki, &key);
            let rules = &*self.rules;
            let keying = &rules.keyings[ki];
            let Some(ks) = live_key(
                &mut self.keys[ki],
                &mut self.passive,
                self.batches + 1,
                rules,
                ki,
                &key,
                key_value,
            ) else {
                continue;
            };
            for (local, &ri) in keying.rules.iter().enumerate() {
                let rule = &rules.rules[ri];
                if rule.def.features || rule.streams & bit == 0 {
                    continue;
                }
                update_windows(keying, rule, ks, &event, &mut self.cols);
                let windows = group_values(keying, &ks.windows, rule, &mut self.window_values);
                self.matcher_out.clear();
                if rule.matcher.keeps_state() {
                    rule.matcher.advance_time(
                        &mut ks.matchers[local],
                        event.time,
                        &mut self.matcher_out,
                    );
                }
                let r = rule.matcher.process(
                    &mut ks.matchers[local],
                    &event,
                    windows,
                    &mut self.scratch,
                    &mut self.matcher_out,
                );
                if let Err(e) = r {
                    self.stats.rule_errors += 1;
                    out.errors.push(RuleError {
                        rule: rule.name.clone(),
                        key: ks.key.clone(),
                        message: e.to_string(),
                    });
                }
                emit(
                    rule,
                    ks,
                    windows,
                    local,
                    event.time,
                    &mut self.matcher_out,
                    out,
                    &mut self.stats,
                    rules.options.max_alerts_per_event,
                );
            }
            let next = earliest_deadline_among(ks, keying.timed.iter().copied());
            Self::schedule(ki, &key, ks, next, &mut self.timers);
        }
        let rules = &*self.rules;
        if self.collect_features && !rules.feature_slots.is_empty() {
            let values = rules
                .feature_slots
                .iter()
                .map(|&s| event.field(s).clone())
                .collect();
            out.features.push(FeatureRow { event, values });
        }
        self.since_sweep += 1;
        if self.since_sweep >= SWEEP_EVERY {
            self.sweep_idle_keys();
        }
    }

    /// The first phase of an event: every feature set updates its windows
    /// and writes its features into the event, then every model scores it,
    /// so the rules that follow read features and scores like fields.
    fn derive(&mut self, rules: &RuleSet, event: &mut Event) {
        let width = rules.def.schema.len();
        if event.fields.len() < width {
            event.fields.resize_with(width, || Value::Null);
        }
        // Lookups first: features and models may read them.
        for l in &rules.def.lookups {
            let key = eval(
                &l.key,
                Scope {
                    event,
                    path: &[],
                    windows: &[],
                },
            );
            event.fields[l.slot as usize] = match &l.source {
                LookupSource::List(list) => self
                    .lists
                    .contains(list, &key, event.time)
                    .map_or(Value::Null, Value::Bool),
                LookupSource::Table { table, field } => {
                    self.tables.get(table, &key, event.time, field)
                }
            };
        }
        let bit = rules.stream_bit(event);
        for (ki, keying) in rules.keyings.iter().enumerate() {
            if !keying.features {
                continue;
            }
            if keying.streams & bit == 0 {
                // Feature sets of other streams: their features are missing
                // (and not whatever the input carried under their names).
                for &ri in &keying.rules {
                    for &slot in &rules.rules[ri].def.feature_slots {
                        event.fields[slot as usize] = Value::Null;
                    }
                }
                continue;
            }
            let key_value = event.field(keying.slot).clone();
            let mut ks = if key_value.is_null() {
                self.stats.unkeyed += 1;
                None
            } else {
                let key = ValueKey::from(&key_value);
                self.touch_key(ki, &key);
                live_key(
                    &mut self.keys[ki],
                    &mut self.passive,
                    self.batches + 1,
                    rules,
                    ki,
                    &key,
                    &key_value,
                )
            };
            for &ri in &keying.rules {
                let rule = &rules.rules[ri];
                if !rule.def.features {
                    continue;
                }
                if rule.streams & bit == 0 {
                    for &slot in &rule.def.feature_slots {
                        event.fields[slot as usize] = Value::Null;
                    }
                    continue;
                }
                let Some(ks) = ks.as_deref_mut() else {
                    // Without its key, the set's features are missing
                    // (and not whatever the input carried under their names).
                    for &slot in &rule.def.feature_slots {
                        event.fields[slot as usize] = Value::Null;
                    }
                    continue;
                };
                update_windows(keying, rule, ks, event, &mut self.cols);
                let windows = group_values(keying, &ks.windows, rule, &mut self.window_values);
                for (f, &slot) in rule.features.iter().zip(&rule.def.feature_slots) {
                    // Most features are a window's value: copied here, without
                    // the call, whose frame costs more than the copy.
                    let v = match f {
                        Flat::Leaf(Leaf::Window(i)) => {
                            windows.get(*i as usize).cloned().unwrap_or_default()
                        }
                        _ => f.eval(Scope {
                            event,
                            path: &[],
                            windows,
                        }),
                    };
                    event.fields[slot as usize] = v;
                }
            }
        }
        for m in &rules.def.models {
            for m in std::iter::once(m).chain(m.candidate.as_deref()) {
                self.model_row.clear();
                self.model_row
                    .extend(m.inputs.iter().map(|&s| match event.field(s) {
                        Value::Num(n) => *n as f32,
                        Value::Bool(b) => f32::from(u8::from(*b)),
                        _ => f32::NAN,
                    }));
                event.fields[m.slot as usize] = match m.model.score(&self.model_row) {
                    Some(v) if v.is_finite() => Value::Num(v),
                    _ => Value::Null,
                };
            }
        }
    }

    /// Marks `key` of keying `ki` changed and reads it back from the store
    /// if it was evicted: what precedes [`live_key`].
    fn touch_key(&mut self, ki: usize, key: &ValueKey) {
        if let Some(d) = &mut self.dirty {
            d.insert((ki as u32, key.clone()));
        }
        if self.passive.as_ref().is_some_and(|p| p.has_cold()) {
            self.revive(ki, key);
        }
    }

    /// Drops the state of keys that hold nothing (no partial match, no window
    /// content, no timer). Done in sweeps rather than per event, so a key that
    /// is busy but momentarily idle keeps its allocations.
    pub fn sweep_idle_keys(&mut self) {
        self.since_sweep = 0;
        let now = self.watermark.current();
        let processed_to = self.processed_to;
        let mut freed = 0usize;
        for (keying, keys) in self.keys.iter_mut().enumerate() {
            let rules = &self.rules.keyings[keying].rules;
            let lazy = rules
                .iter()
                .any(|&ri| self.rules.rules[ri].matcher.is_lazy());
            let dirty = &mut self.dirty;
            let log_deletes = &mut self.log_deletes;
            keys.retain(|key, cell| {
                // A frozen key held state when frozen; its next event or
                // timer decides whether it still does.
                let Some(ks) = cell.live_mut() else {
                    return true;
                };
                // Window content keeps a key whatever its matchers hold, and
                // is asked first: it sits in the key's own allocation, where
                // the matchers are another (a sweep reads every key, and
                // most keys of a keying with windows hold some).
                if !lazy && ks.windows.iter().any(|w| !w.is_empty()) {
                    return true;
                }
                for (local, &ri) in rules.iter().enumerate() {
                    self.rules.rules[ri]
                        .matcher
                        .expire_lazy(&mut ks.matchers[local], now);
                }
                let keep = !is_idle(ks, processed_to);
                if !keep {
                    freed += ks.bytes as usize;
                    snapshot::forget_rows(log_deletes, keying, key, ks);
                    if let Some(d) = dirty.as_mut() {
                        d.insert((keying as u32, key.clone()));
                    }
                }
                keep
            });
        }
        if let Some(p) = &mut self.passive {
            p.release(freed);
        }
    }
}

/// Events between sweeps of idle key state.
const SWEEP_EVERY: u32 = 1 << 16;

/// The key's earliest deadline and the index (within its keying) of the
/// rule it belongs to.
fn earliest_deadline(ks: &KeyState) -> Option<(EventTime, usize)> {
    earliest_deadline_among(ks, 0..ks.matchers.len())
}

/// [`earliest_deadline`] among the matchers at places `among` in the
/// keying. Per event and deadline, the keying's [`Keying::timed`]: only
/// their matchers can have one, and the others' state is not read.
fn earliest_deadline_among(
    ks: &KeyState,
    among: impl IntoIterator<Item = usize>,
) -> Option<(EventTime, usize)> {
    among
        .into_iter()
        .filter_map(|i| ks.matchers[i].next_deadline().map(|n| (n, i)))
        .min()
}

/// The live state of `key` in keying `ki` (after [`Engine::touch_key`]),
/// created or thawed as needed. `None` only for a key still frozen after a
/// failed thaw. Takes the engine's fields apart so the caller can go on
/// using the others.
fn live_key<'a>(
    keys: &'a mut HashMap<ValueKey, KeyCell>,
    passive: &mut Option<passivate::Passivation>,
    batch: u64,
    rules: &RuleSet,
    ki: usize,
    key: &ValueKey,
    key_value: &Value,
) -> Option<&'a mut KeyState> {
    let keying = &rules.keyings[ki];
    let cell = keys
        .entry(key.clone())
        .or_insert_with(|| KeyCell::live(KeyState::fresh(rules, keying, key_value)));
    if let Some(p) = passive
        && !p.thaw(rules, ki, key, cell)
    {
        // Unreadable: reported by `take_state_error`, and this output is
        // discarded; the key goes on from empty state.
        *cell = KeyCell::live(KeyState::fresh(rules, keying, key_value));
    }
    let ks = cell.live_mut()?;
    ks.written = batch;
    Some(ks)
}

/// Moves `rule`'s window group to the event and adds it, if the group
/// takes its events on this rule's turn.
fn update_windows(
    keying: &Keying,
    rule: &CompiledRule,
    ks: &mut KeyState,
    event: &Event,
    cols: &mut Vec<Value>,
) {
    let Some(w) = rule.windows.filter(|w| w.updates) else {
        return;
    };
    let g = w.group;
    let plan = &keying.groups[g].plan;
    // Each value aggregated is evaluated once, however many windows read
    // it, into a buffer the engine keeps (no allocation or copy per event).
    cols.clear();
    cols.extend(plan.columns().iter().map(|c| {
        eval(
            c,
            Scope {
                event,
                path: &[],
                windows: &[],
            },
        )
    }));
    let ws = &mut ks.windows[g];
    ws.advance(plan, event.time);
    ws.update(plan, event.time, cols);
}

/// Whether the key holds nothing that later events could need, once event
/// time `now` is processed: no partial match, window content, timer, or
/// `suppress` period running past `now` (every later alert is at or after
/// it).
fn is_idle(ks: &KeyState, now: EventTime) -> bool {
    is_idle_among(ks, 0..ks.matchers.len(), now)
}

/// [`is_idle`] reading only the matcher states at places `among` (after a
/// deadline, the keying's [`Keying::timed`], the only ones that can hold
/// anything), and the key's own fields before the windows: what a deadline
/// asks of a key that is mostly not idle.
fn is_idle_among(ks: &KeyState, among: impl IntoIterator<Item = usize>, now: EventTime) -> bool {
    ks.timer.is_none()
        && ks.quiet.iter().all(|&q| q <= now)
        && among.into_iter().all(|i| ks.matchers[i].is_idle())
        && ks.windows.iter().all(|w| w.is_empty())
}

/// Raises the alerts of `produced`, at most `budget` of them: one event
/// (or deadline) can complete a number of matches that grows with the
/// partial matches a key holds (`repeat 2.. combinations` gives thousands
/// per event), and each alert is a record to produce and deliver. The rest
/// are counted ([`EngineStats::suppressed`]) and reported as a rule error.
#[allow(clippy::too_many_arguments)]
fn emit(
    rule: &CompiledRule,
    ks: &mut KeyState,
    windows: &[Value],
    local: usize,
    at: EventTime,
    produced: &mut Vec<Output>,
    out: &mut Outputs,
    stats: &mut EngineStats,
    budget: usize,
) {
    if produced.len() > budget {
        let over = produced.len() - budget;
        produced.truncate(budget);
        stats.suppressed += over as u64;
        stats.rule_errors += 1;
        out.errors.push(RuleError {
            rule: rule.name.clone(),
            key: ks.key.clone(),
            message: format!(
                "{} matches completed at once; the first {budget} were raised and {over} \
                 were not (rules.max_alerts_per_event)",
                budget + over
            ),
        });
    }
    for o in produced.drain(..) {
        let (kind, path, at) = match o {
            Output::Match(p) => (AlertKind::Match, p, at),
            Output::Timeout { path, at } => (AlertKind::Timeout, path, at),
        };
        if let Some(period) = rule.def.suppress_ms {
            if ks.quiet.len() <= local {
                ks.quiet
                    .resize(ks.matchers.len().max(local + 1), EventTime::MIN);
            }
            if at < ks.quiet[local] {
                stats.silenced += 1;
                continue;
            }
            ks.quiet[local] = at.saturating_add(period);
        }
        let mut values: Vec<(Arc<str>, Value)> = match path.last() {
            Some((_, last)) => rule
                .def
                .payload
                .iter()
                .map(|(name, e)| {
                    let v = eval(
                        e,
                        Scope {
                            event: last,
                            path: &path,
                            windows,
                        },
                    );
                    (Arc::from(name.as_str()), v)
                })
                .collect(),
            None => Vec::new(),
        };
        // The evidence of each list lookup: a hit if a matched event had
        // one, else what the last event found.
        for (name, slot) in &rule.lookups {
            let hit = path
                .iter()
                .rev()
                .map(|(_, e)| e.field(*slot))
                .find(|v| v.is_true());
            let v = hit.or_else(|| path.last().map(|(_, e)| e.field(*slot)));
            values.push((name.clone(), v.cloned().unwrap_or(Value::Null)));
        }
        let matches = group_by_stage(&rule.stage_names, path);
        let id = Alert::compute_id(&rule.name, &ks.key, kind, &matches);
        stats.alerts += 1;
        out.alerts.push(Alert {
            id,
            rule: rule.name.clone(),
            key: ks.key.clone(),
            event_time: at,
            severity: rule.def.severity,
            score: rule.def.score,
            kind,
            matches,
            values,
            notify: rule.def.notify.clone(),
            shadow: rule.def.shadow,
        });
    }
}

/// The matched events per stage, stages in pattern order, each stage's
/// events in match order. The path's events are moved, not cloned: each
/// clone of an event that has gone cold is a cache miss and an atomic.
fn group_by_stage(
    names: &[Arc<str>],
    mut path: Vec<(crate::rules::StageId, Arc<Event>)>,
) -> Vec<(Arc<str>, Vec<Arc<Event>>)> {
    // Stable: a stage's events keep their order. Usually sorted already
    // (stages are taken in pattern order but for quantified groups).
    path.sort_by_key(|(s, _)| *s);
    let mut matches: Vec<(Arc<str>, Vec<Arc<Event>>)> = Vec::new();
    let mut current = None;
    for (stage, ev) in path {
        match matches.last_mut() {
            Some((_, evs)) if current == Some(stage) => evs.push(ev),
            _ => {
                current = Some(stage);
                matches.push((names[stage as usize].clone(), vec![ev]));
            }
        }
    }
    matches
}

/// Runs a rule file's example through a fresh engine (watermark flushed at
/// the end) and compares alert counts per rule and the alerts expected by
/// their values. An example's events are a description, not an arrival
/// order: they are taken in event-time order (ties as written), so they
/// may be grouped by key. On failure, says what differs and lists the
/// alerts of the rules at fault.
pub fn run_example(rules: &Arc<RuleSet>, ex: &crate::rules::ExampleDef) -> Result<(), String> {
    let lists = crate::lists::Lists::new();
    for (list, values) in &ex.lists {
        for v in values {
            let on = crate::lists::ListChange {
                op: crate::lists::ListOp::Add,
                at: EventTime::MIN,
                until: None,
                author: None,
                comment: Some(format!("example {}", ex.name)),
                recorded: None,
            };
            lists.apply(list, v, on);
        }
    }
    let tables = crate::tables::Tables::new();
    for (table, rows) in &ex.tables {
        let Some(decl) = rules.def.tables.iter().find(|t| &t.spec.name == table) else {
            return Err(format!("unknown table `{table}`"));
        };
        for row in rows.lines().filter(|r| !r.trim().is_empty()) {
            tables
                .load(&decl.spec, row)
                .map_err(|e| format!("table `{table}`: {e}"))?;
        }
    }
    let mut engine = Engine::new(rules.clone())
        .with_lists(Arc::new(lists))
        .with_tables(Arc::new(tables));
    let mut out = Outputs::default();
    let several = rules.def.streams.len() > 1;
    let mut events = crate::event::MergedLines::new(
        ex.events
            .iter()
            .map(|(stream, text)| (*stream, text.as_bytes()))
            .collect(),
    );
    let mut taken = Vec::new();
    while let Some(m) = events.next(&rules.decoders).map_err(|e| e.to_string())? {
        let event = m.event.map_err(|e| {
            let n = m.line;
            match several {
                true => format!(
                    "event {n} of stream `{}`: {e}",
                    rules.def.streams[m.stream as usize].name
                ),
                false => format!("event {n}: {e}"),
            }
        })?;
        taken.push(event);
    }
    taken.sort_by_key(|e| e.time);
    for event in taken {
        engine.on_event(event, &mut out);
    }
    engine.finish(&mut out);
    if let Some(l) = out.late.first() {
        let what = if l.future_limit.is_some() {
            "future (further ahead than the stream's `skew`)"
        } else {
            "late"
        };
        return Err(format!("event {} is {what}", l.event.seq));
    }
    let mut problems = Vec::new();
    let mut show: Vec<&str> = Vec::new();
    for (rule, want) in &ex.expect {
        let got = out.alerts.iter().filter(|a| &*a.rule == rule).count() as u64;
        if got != *want {
            problems.push(format!("{rule}: expected {want} alerts, got {got}"));
            show.push(rule);
        }
    }
    for (rule, values) in &ex.expect_alerts {
        let found = out
            .alerts
            .iter()
            .any(|a| &*a.rule == rule && values.iter().all(|(n, v)| alert_has(a, n, v)));
        if !found {
            let wanted: Vec<String> = values.iter().map(|(n, v)| format!("{n} = {v}")).collect();
            problems.push(format!(
                "{rule}: expected an alert with {}, and none has",
                wanted.join(", ")
            ));
            show.push(rule);
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    show.dedup();
    let mut text = problems.join("\n");
    for rule in show {
        let alerts: Vec<&Alert> = out.alerts.iter().filter(|a| &*a.rule == rule).collect();
        if alerts.is_empty() {
            continue;
        }
        text.push_str(&format!("\n  the alerts of `{rule}`:"));
        for a in alerts {
            text.push_str(&format!("\n    {}", a.summary()));
        }
    }
    Err(text)
}

/// Whether alert `a` carries `want` under `name`: its key, its event time
/// (given as text) or a payload value. Numbers agree to 1 part in 10⁹ (a
/// computed average is written with the digits it shows), and a number and
/// a text agree when they read the same (a key field of numbers in text).
fn alert_has(a: &Alert, name: &str, want: &Value) -> bool {
    let got = match name {
        "key" => &a.key,
        "event_time" => {
            return matches!(want, Value::Str(t)
                if crate::event::parse_time_str(t) == Some(a.event_time));
        }
        _ => match a.values.iter().find(|(n, _)| &**n == name) {
            Some((_, v)) => v,
            None => return false,
        },
    };
    let text = |v: &Value| match v {
        Value::Str(s) => s.to_string(),
        other => other.to_string(),
    };
    match (got, want) {
        (Value::Num(x), Value::Num(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        _ => got == want || (!got.is_null() && text(got) == text(want)),
    }
}
