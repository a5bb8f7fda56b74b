//! The actor runtime: one [`Shard`] actor per assigned input partition. A
//! shard owns the [`Engine`] of its partition, and through it the per-key
//! state machines of every key the partition carries — keys are values in
//! the engine's maps, not mailboxes, so millions fit.
//!
//! Messages travel in partition order through the shard's mailbox: batches
//! of [`Records`], and the [`Barrier`] of a checkpoint, which the shard
//! answers with everything it produced since the previous barrier and the
//! offset it has processed up to. Because the barrier queues behind the
//! records, its answer is a consistent cut: the outputs are exactly those of
//! the records before the reported offset.
//!
//! A shard never stops on input: a record that cannot be decoded or arrives
//! late becomes a [`DeadLetter`], and a panic while processing one record
//! (an engine bug) dead-letters that record and carries on.
//!
//! # Rules keyed by other fields
//!
//! The input is partitioned by the stream key. Rules keyed by another field
//! (a terminal, a merchant) need all events with the same value of that
//! field in one place, so a source shard *forwards* each event, keyed by
//! that field, to an internal topic, whose shards run those rules. Their
//! watermark is decided upstream: each source shard reports its watermark at
//! every barrier, the coordinator writes it into every internal partition as
//! a [`WatermarkMark`] after the forwarded events it covers, and an internal
//! shard's watermark is the minimum over the sources that are not idle.
//!
//! This module knows nothing of Kafka: records are plain bytes with a
//! partition and an offset, so the runtime is tested without a broker.

use crate::engine::{Engine, Migration, Outputs, RuleSet};
use crate::event::{EventTime, Slot, Value};
use crate::rules::ast::Severity;
use crate::state::{self, Change, SnapshotError, StateStore};
use actix::{Actor, Context, Handler, Message, MessageResult};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

/// One input record, copied out of the client's buffers.
#[derive(Clone, Debug)]
pub struct Record {
    /// Its offset in the partition.
    pub offset: i64,
    /// Its key, if any.
    pub key: Option<Vec<u8>>,
    /// Its value (`None`: a tombstone, dead-lettered).
    pub payload: Option<Vec<u8>>,
    /// Set on the watermark records of internal topics.
    pub mark: Option<WatermarkMark>,
    /// When the broker appended it (epoch ms), if known: the start of the
    /// latency of the alerts it makes fire.
    pub timestamp_ms: Option<i64>,
    /// Set when its path to its alerts is traced.
    pub span: Option<tracing::Span>,
}

impl Record {
    /// A data record.
    pub fn data(offset: i64, key: Option<Vec<u8>>, payload: Option<Vec<u8>>) -> Record {
        Record {
            offset,
            key,
            payload,
            mark: None,
            timestamp_ms: None,
            span: None,
        }
    }
}

/// A source partition's watermark, as written into internal topics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WatermarkMark {
    /// The source partition.
    pub source: u32,
    /// Its watermark.
    pub watermark: EventTime,
    /// It has had no input for the configured idle time and no longer holds
    /// the watermark back.
    pub idle: bool,
}

impl WatermarkMark {
    /// The header value that carries a mark: `source:watermark:idle`.
    pub fn encode(&self) -> String {
        format!("{}:{}:{}", self.source, self.watermark, u8::from(self.idle))
    }

    /// Reads [`WatermarkMark::encode`]'s form.
    pub fn decode(s: &[u8]) -> Option<WatermarkMark> {
        let s = std::str::from_utf8(s).ok()?;
        let mut it = s.split(':');
        let m = WatermarkMark {
            source: it.next()?.parse().ok()?,
            watermark: it.next()?.parse().ok()?,
            idle: match it.next()? {
                "0" => false,
                "1" => true,
                _ => return None,
            },
        };
        it.next().is_none().then_some(m)
    }
}

/// Where a source shard forwards events for rules keyed by another field.
#[derive(Clone, Copy, Debug)]
pub struct Forward {
    /// Index of the target among the internal topics.
    pub target: usize,
    /// The field the target partitions by.
    pub slot: Slot,
}

/// What a shard does with its partition.
#[derive(Clone, Debug)]
pub enum Role {
    /// A partition of the input topic: runs the rules keyed by the stream
    /// key and forwards events for the other keys.
    Source {
        /// One per other key field.
        forward: Vec<Forward>,
    },
    /// A partition of an internal topic: runs the rules keyed by its field,
    /// with the watermark of `sources` upstream partitions.
    Internal {
        /// The number of source partitions.
        sources: usize,
    },
}

/// A batch of records of the shard's partition, in offset order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Records(pub Vec<Record>);

/// A cut through the shard's partition: queued behind the records handed
/// over before it, it is answered with the shard's output since the last
/// cut and the offset that output covers (a consistent cut).
#[derive(Message, Clone, Copy, Debug, PartialEq, Eq)]
#[rtype(result = "ShardOutput")]
pub enum Barrier {
    /// The checkpoint's: its answer is committed.
    Checkpoint,
    /// Ahead of the checkpoint, so that the output so far can be produced
    /// while the interval runs out. It does not count as a barrier: the
    /// caller commits at the next [`Barrier::Checkpoint`], with both
    /// answers joined by [`ShardOutput::absorb`].
    Flush,
}

/// The shard's state changes up to batch `batch` ([`ShardOutput::batch`])
/// are in its store: idle keys may be passivated, to keep the shard near
/// `budget_bytes`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Persisted {
    /// The last batch written.
    pub batch: u64,
    /// The shard's memory budget.
    pub budget_bytes: usize,
}

/// New rules, to take effect between two records (sent at a checkpoint
/// boundary): the whole rule set and the part the shard runs.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reload(pub Arc<RuleSet>, pub Arc<RuleSet>);

/// A record to produce.
#[derive(Clone, Debug, PartialEq)]
pub struct OutRecord {
    /// Record key.
    pub key: Vec<u8>,
    /// Record value.
    pub value: Vec<u8>,
}

/// An alert to produce, with what telemetry reports of it.
#[derive(Clone, Debug)]
pub struct AlertRecord {
    /// The record: keyed by the rule's key, the alert's JSON as value.
    pub record: OutRecord,
    /// The rule that fired.
    pub rule: Arc<str>,
    /// Its severity.
    pub severity: Severity,
    /// The append time of the input record whose processing made it fire.
    pub cause_ms: Option<i64>,
    /// That record's span, when it is traced.
    pub span: Option<tracing::Span>,
}

/// Why a record was dead-lettered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadLetterKind {
    /// It could not be decoded as an event.
    Malformed,
    /// It arrived at or before the watermark.
    Late,
    /// Its time is further ahead than the stream allows (`skew`, `clock
    /// skew`); it did not move the watermark.
    Future,
    /// Processing it failed inside tripline (a bug); it was skipped.
    Internal,
}

impl DeadLetterKind {
    /// The name written to the dead-letter record's headers.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterKind::Malformed => "malformed",
            DeadLetterKind::Late => "late",
            DeadLetterKind::Future => "future",
            DeadLetterKind::Internal => "internal",
        }
    }
}

/// An input record that was not processed, and why.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// What went wrong, in a word.
    pub kind: DeadLetterKind,
    /// What went wrong, for people.
    pub reason: String,
    /// The record's offset in the input partition.
    pub offset: i64,
    /// The record's key.
    pub key: Option<Vec<u8>>,
    /// The record's value, unchanged (`None`: the record had none).
    pub value: Option<Vec<u8>>,
}

impl DeadLetter {
    /// This dead letter within `limit` bytes of key and value: a value that
    /// does not fit is left out, and the reason gives its size and XXH3-128
    /// hash (the record itself stays in the input topic at its offset); a
    /// key over [`crate::event::MAX_KEY_BYTES`] likewise.
    pub fn within(mut self, limit: usize) -> DeadLetter {
        // A reason may quote the record (an unreadable time's value).
        if self.reason.len() > MAX_REASON_BYTES {
            let mut end = MAX_REASON_BYTES;
            while !self.reason.is_char_boundary(end) {
                end -= 1;
            }
            self.reason.truncate(end);
            self.reason.push('…');
        }
        if self
            .key
            .as_ref()
            .is_some_and(|k| k.len() > crate::event::MAX_KEY_BYTES)
        {
            let key = self.key.take().unwrap_or_default();
            self.reason.push_str(&omitted_note("key", &key));
        }
        let key_len = self.key.as_ref().map_or(0, Vec::len);
        if self
            .value
            .as_ref()
            .is_some_and(|v| key_len + v.len() > limit)
        {
            let value = self.value.take().unwrap_or_default();
            self.reason.push_str(&omitted_note("value", &value));
        }
        self
    }
}

/// The longest dead-letter reason kept whole.
const MAX_REASON_BYTES: usize = 512;

/// How a dead letter says what it left out.
fn omitted_note(what: &str, bytes: &[u8]) -> String {
    format!(
        "; the record's {what} ({} bytes, xxh3-128 {:032x}) is left out: over the output limit",
        bytes.len(),
        xxhash_rust::xxh3::xxh3_128(bytes)
    )
}

/// What a shard produced between two barriers.
#[derive(Debug, Default)]
pub struct ShardOutput {
    /// Alerts, keyed by the rule's key.
    pub alerts: Vec<AlertRecord>,
    /// Events for internal topics: (target, record).
    pub forwarded: Vec<(usize, OutRecord)>,
    /// The shard's watermark.
    pub watermark: EventTime,
    /// Records that were not processed.
    pub dead_letters: Vec<DeadLetter>,
    /// The offset after the last record processed (`None`: none yet).
    pub next_offset: Option<i64>,
    /// Records processed since the last barrier.
    pub records: u64,
    /// Of these, watermark marks.
    pub marks: u64,
    /// Rule failures since the last barrier (logged; processing went on).
    pub rule_errors: u64,
    /// The state changes since the last barrier, as a store batch (empty
    /// when no record was processed): what the changelog records.
    pub state: Vec<Change>,
    /// The number of that batch (see [`Persisted`]).
    pub batch: u64,
    /// Passivated state could not be read back: this output is wrong and
    /// must not be committed; the shard must be rebuilt from its store.
    pub state_error: Option<SnapshotError>,
    /// Passivation counters, when on.
    pub passivation: Option<crate::engine::PassivationStats>,
    /// Keys resident in memory.
    pub resident_keys: u64,
    /// Partial matches alive in resident keys, when counted (every
    /// [`PARTIALS_EVERY`] barriers: the count walks every resident key).
    pub partial_matches: Option<u64>,
}

impl ShardOutput {
    /// Nothing to commit: no record processed and nothing produced (a
    /// reload's migrated state or dead letters count, with no record).
    pub fn is_empty(&self) -> bool {
        self.records == 0 && self.produces_nothing()
    }

    /// Joins `later`, the output that followed this one, into this one:
    /// what was produced is appended (state changes in order, so later ones
    /// win), counts add up, and the position and figures are `later`'s.
    pub fn absorb(&mut self, later: ShardOutput) {
        self.alerts.extend(later.alerts);
        self.forwarded.extend(later.forwarded);
        self.dead_letters.extend(later.dead_letters);
        self.state.extend(later.state);
        self.records += later.records;
        self.marks += later.marks;
        self.rule_errors += later.rule_errors;
        self.watermark = later.watermark;
        self.next_offset = later.next_offset.or(self.next_offset);
        self.batch = later.batch;
        self.state_error = later.state_error.or(self.state_error.take());
        self.passivation = later.passivation;
        self.resident_keys = later.resident_keys;
        self.partial_matches = later.partial_matches.or(self.partial_matches);
    }

    /// Nothing to produce: no alert, forwarded event, dead letter or state
    /// change (records may have been processed).
    pub fn produces_nothing(&self) -> bool {
        self.alerts.is_empty()
            && self.forwarded.is_empty()
            && self.dead_letters.is_empty()
            && self.state.is_empty()
    }
}

/// How many barriers apart partial matches are counted.
pub const PARTIALS_EVERY: u64 = 32;

/// The state entry holding an internal shard's latest source marks.
const MARKS_KEY: &[u8] = b"w";

/// Checks that `value` decodes as the shard state entry `key` names: the
/// engine's entries and the shard's own (its source marks). A changelog
/// record that fails this is corrupt, and restoring from it would lose
/// state.
pub fn check_entry(key: &[u8], value: &[u8]) -> Result<(), SnapshotError> {
    if key == MARKS_KEY {
        state::decode::<Vec<Option<WatermarkMark>>>(value, state::header_hash(value)?).map(drop)
    } else {
        crate::engine::check_entry(key, value)
    }
}

/// The actor of one input partition.
pub struct Shard {
    partition: i32,
    /// The whole rule set: its decoder checks every event.
    rules: Arc<RuleSet>,
    role: Role,
    engine: Engine,
    /// Internal shards: each source's latest mark.
    marks: Vec<Option<WatermarkMark>>,
    pending: ShardOutput,
    outputs: Outputs,
    /// The record being processed: its append time and span.
    cause: (Option<i64>, Option<tracing::Span>),
    barriers: u64,
    /// The largest record (key and value) the shard produces; see
    /// [`Shard::with_output_limit`].
    output_limit: usize,
}

/// The default [`Shard::with_output_limit`]: below librdkafka's default
/// `message.max.bytes` (1,000,000) by room for headers.
pub const DEFAULT_OUTPUT_LIMIT: usize = 1_000_000 - 16 * 1024;

impl Shard {
    /// A shard for `partition` with a fresh engine running `engine_rules`
    /// (the part of `rules` its role runs; see [`RuleSet::for_key`]).
    pub fn new(
        partition: i32,
        rules: Arc<RuleSet>,
        engine_rules: Arc<RuleSet>,
        role: Role,
    ) -> Shard {
        let (engine, marks) = match &role {
            Role::Source { .. } => (Engine::new(engine_rules).track_changes(), Vec::new()),
            Role::Internal { sources } => (
                Engine::with_external_watermark(engine_rules).track_changes(),
                vec![None; *sources],
            ),
        };
        Shard {
            partition,
            rules,
            role,
            engine,
            marks,
            pending: ShardOutput::default(),
            outputs: Outputs::default(),
            cause: (None, None),
            barriers: 0,
            output_limit: DEFAULT_OUTPUT_LIMIT,
        }
        .with_output_limit(DEFAULT_OUTPUT_LIMIT)
    }

    /// Bounds every record the shard produces (key and value) to `bytes`,
    /// the producer's limit less room for headers: a record over it could
    /// not be produced, and would fail every checkpoint that carried it.
    /// Alerts over it leave out the largest matched events (see
    /// [`crate::engine::Alert::write_json_within`]); dead letters leave
    /// out the record's value and say its size and hash; an event too large
    /// to forward is dead-lettered.
    pub fn with_output_limit(mut self, bytes: usize) -> Shard {
        self.output_limit = bytes;
        self.engine.limit_key_state(bytes);
        self
    }

    /// This fresh shard in the state last checkpointed to `store` (built
    /// from its changelog).
    pub fn restored(self, store: &impl StateStore) -> Result<Shard, SnapshotError> {
        let Shard {
            partition,
            rules,
            role,
            engine,
            mut marks,
            pending,
            outputs,
            cause,
            barriers,
            output_limit,
        } = self;
        if let Some(bytes) = store.get(MARKS_KEY)? {
            // Marks mean the same under any rules: read whatever wrote them.
            let stored: Vec<Option<WatermarkMark>> =
                state::decode(&bytes, state::header_hash(&bytes)?)?;
            if stored.len() != marks.len() {
                return Err(SnapshotError::Corrupt(format!(
                    "marks of {} sources, expected {}",
                    stored.len(),
                    marks.len()
                )));
            }
            marks = stored;
        }
        let mut shard = Shard {
            partition,
            rules,
            role,
            engine: engine.restored(store)?,
            marks,
            pending,
            outputs,
            cause,
            barriers,
            output_limit,
        };
        shard.engine.limit_key_state(output_limit);
        if let Some(m) = shard.engine.take_migration() {
            shard.migrated(m, "state written under other rules");
        }
        Ok(shard)
    }

    /// Moves the shard to new rules between two records: `rules` is the
    /// whole new rule set, `engine_rules` the part this shard runs. State is
    /// migrated rule by rule (see [`Engine::migrate`]); the next output
    /// carries the whole state under the new rules.
    pub fn reload(&mut self, rules: Arc<RuleSet>, engine_rules: Arc<RuleSet>) {
        let placeholder = Engine::new(engine_rules.clone());
        let engine = std::mem::replace(&mut self.engine, placeholder);
        let (engine, migration) = engine.migrate(engine_rules);
        self.engine = engine;
        self.engine.limit_key_state(self.output_limit);
        self.rules = rules;
        self.migrated(migration, "rules reloaded");
    }

    /// Logs what a migration did and dead-letters the buffered events the
    /// new rules cannot read.
    fn migrated(&mut self, m: Migration, why: &str) {
        for (rule, change) in &m.rules {
            tracing::info!(partition = self.partition, rule = %rule, "{why}: {change}");
        }
        if m.reset_states > 0 {
            tracing::warn!(
                partition = self.partition,
                states = m.reset_states,
                "{why}: rule states reset because an event they held no longer decodes"
            );
        }
        for (seq, raw, reason) in m.rejected {
            self.dead_letter(
                DeadLetterKind::Malformed,
                format!("no longer decodes under the new rules: {reason}"),
                seq as i64,
                None,
                Some(raw.as_bytes().to_vec()),
            );
        }
    }

    /// Turns passivation on: idle keys are evicted to `store` (the shard's
    /// local state, which receives every committed [`ShardOutput::state`])
    /// while the shard is over `budget_bytes`. Before [`Shard::restored`].
    pub fn with_passivation(
        mut self,
        store: Box<dyn StateStore + Send>,
        budget_bytes: usize,
    ) -> Shard {
        let placeholder = Engine::new(self.engine.rules().clone());
        let engine = std::mem::replace(&mut self.engine, placeholder);
        self.engine = engine.with_passivation(store, budget_bytes);
        self.engine.limit_key_state(self.output_limit);
        self
    }

    /// Batches up to `batch` are in the store: passivates idle keys while
    /// over `budget_bytes`.
    pub fn persisted(&mut self, batch: u64, budget_bytes: usize) {
        let evicted = self.engine.passivate(batch, budget_bytes);
        if evicted > 0 {
            tracing::debug!(
                partition = self.partition,
                evicted,
                resident = self.engine.key_count(),
                "idle keys passivated"
            );
        }
    }

    /// A source shard running all of `rules` itself (nothing forwarded).
    pub fn standalone(partition: i32, rules: Arc<RuleSet>) -> Shard {
        Shard::new(
            partition,
            rules.clone(),
            rules,
            Role::Source {
                forward: Vec::new(),
            },
        )
    }

    /// Processes a batch of records, as they came from the broker, with the
    /// wall clock of their arrival.
    pub fn process_batch(&mut self, records: Vec<Record>) {
        self.process_batch_at(records, crate::telemetry::now_ms());
    }

    /// Processes a batch of records that arrived when the clock read
    /// `clock_ms` (epoch ms): what [`Shard::process_batch`] does with a
    /// given clock, for runs that must repeat exactly.
    pub fn process_batch_at(&mut self, records: Vec<Record>, clock_ms: i64) {
        self.engine.set_clock(clock_ms);
        for r in records {
            self.process(r);
        }
    }

    /// Processes one record.
    pub fn process(&mut self, mut record: Record) {
        self.pending.records += 1;
        self.pending.next_offset = Some(record.offset + 1);
        let span = record.span.take();
        let _entered = span.as_ref().map(tracing::Span::enter);
        self.cause = (record.timestamp_ms, span.clone());
        if let Some(mark) = record.mark {
            self.pending.marks += 1;
            self.on_mark(mark);
            return;
        }
        let Some(payload) = record.payload else {
            self.dead_letter(
                DeadLetterKind::Malformed,
                "record has no value".into(),
                record.offset,
                record.key,
                None,
            );
            return;
        };
        let event = match self.rules.decoder.decode(&payload, record.offset as u64) {
            Ok(e) => e,
            Err(e) => {
                self.dead_letter(
                    DeadLetterKind::Malformed,
                    e.to_string(),
                    record.offset,
                    record.key,
                    Some(payload),
                );
                return;
            }
        };
        if let Role::Source { forward } = &self.role
            && !forward.is_empty()
            && !self.engine.refuses(event.time)
        {
            // Empty, without allocating, but for events too large to forward.
            let mut too_large = Vec::new();
            for f in forward {
                let v = event.field(f.slot);
                if v.is_null() {
                    continue;
                }
                let key = value_text(v).into_bytes();
                if key.len() + payload.len() > self.output_limit {
                    too_large.push(f.slot);
                    continue;
                }
                self.pending.forwarded.push((
                    f.target,
                    OutRecord {
                        key,
                        value: payload.clone(),
                    },
                ));
            }
            for slot in too_large {
                let reason = format!(
                    "the event is too large ({} bytes) to forward to the rules keyed by `{}` \
                     (output limit {} bytes); the rules keyed by the stream key saw it",
                    payload.len(),
                    self.rules.def.schema.path(slot),
                    self.output_limit
                );
                self.dead_letter(
                    DeadLetterKind::Malformed,
                    reason,
                    record.offset,
                    record.key.clone(),
                    Some(payload.clone()),
                );
            }
        }
        let engine = &mut self.engine;
        let outputs = &mut self.outputs;
        if catch_unwind(AssertUnwindSafe(|| engine.on_event(event, outputs))).is_err() {
            tracing::error!(
                partition = self.partition,
                offset = record.offset,
                "internal error while processing a record; it was dead-lettered and skipped"
            );
            self.dead_letter(
                DeadLetterKind::Internal,
                "internal error while processing this record".into(),
                record.offset,
                record.key,
                Some(payload),
            );
        }
        self.collect();
    }

    /// Takes the output since the last call, at a barrier.
    pub fn take_output(&mut self) -> ShardOutput {
        let mut out = self.take_flush();
        self.barriers += 1;
        // The count walks every resident key: every PARTIALS_EVERY-th only.
        if self.barriers % PARTIALS_EVERY == 1 {
            out.partial_matches = Some(self.engine.partial_matches());
        }
        out
    }

    /// Takes the output since the last call, ahead of a barrier (see
    /// [`Barrier::Flush`]).
    pub fn take_flush(&mut self) -> ShardOutput {
        let next = self.pending.next_offset;
        let mut out = std::mem::take(&mut self.pending);
        self.pending.next_offset = next;
        out.next_offset = next;
        out.watermark = self.engine.watermark();
        out.state_error = self.engine.take_state_error();
        if out.records > 0 || self.engine.needs_checkpoint() {
            out.state = self.engine.take_changes();
            for e in self.engine.take_reset_keys() {
                out.rule_errors += 1;
                tracing::error!(partition = self.partition, rules = %e.rule, key = %e.key, "{}", e.message);
            }
            if !self.marks.is_empty() {
                let hash = self.engine.rules().def.hash;
                out.state
                    .push((MARKS_KEY.to_vec(), Some(state::encode(hash, &self.marks))));
            }
        }
        out.batch = self.engine.batches();
        out.passivation = self.engine.passivation_stats();
        out.resident_keys = self.engine.key_count() as u64;
        // A traced record's span ends with the alerts it caused, not with
        // the next record, however long that takes.
        self.cause.1 = None;
        out
    }

    /// An upstream watermark: the shard's own is the minimum over the
    /// sources that are not idle (no progress while all are idle, or while a
    /// source has not reported yet).
    fn on_mark(&mut self, mark: WatermarkMark) {
        let Some(slot) = self.marks.get_mut(mark.source as usize) else {
            tracing::warn!(
                partition = self.partition,
                source = mark.source,
                "watermark from an unknown source partition"
            );
            return;
        };
        *slot = Some(mark);
        if self.marks.iter().any(Option::is_none) {
            return;
        }
        let w = self
            .marks
            .iter()
            .flatten()
            .filter(|m| !m.idle)
            .map(|m| m.watermark)
            .min();
        if let Some(w) = w
            && w > self.engine.watermark()
        {
            self.engine.advance_watermark(w, &mut self.outputs);
            self.collect();
        }
    }

    fn collect(&mut self) {
        for alert in self.outputs.alerts.drain(..) {
            let mut value = Vec::with_capacity(512);
            let key = value_text(&alert.key).into_bytes();
            if alert.write_json_within(&mut value, self.output_limit - key.len().min(1024)) {
                tracing::warn!(
                    partition = self.partition,
                    rule = %alert.rule,
                    id = %alert.id,
                    "alert over the output limit: its largest matched events were left out"
                );
            }
            self.pending.alerts.push(AlertRecord {
                record: OutRecord { key, value },
                rule: alert.rule.clone(),
                severity: alert.severity,
                cause_ms: self.cause.0,
                span: self.cause.1.clone(),
            });
        }
        for late in self.outputs.late.drain(..) {
            let time = crate::event::format_time(late.event.time);
            let (kind, reason) = match late.future_limit {
                None => (
                    DeadLetterKind::Late,
                    format!(
                        "event time {time} is at or before the watermark {}",
                        crate::event::format_time(late.watermark)
                    ),
                ),
                Some(limit) => (
                    DeadLetterKind::Future,
                    format!(
                        "event time {time} is after {}, the latest the stream takes now \
                         (its `skew` past the latest event time, or `clock skew` past the clock)",
                        crate::event::format_time(limit)
                    ),
                ),
            };
            let key = self
                .rules
                .stream_key_slot()
                .and_then(|slot| late.event.fields.get(slot as usize))
                .map(|v| value_text(v).into_bytes());
            self.pending.dead_letters.push(
                DeadLetter {
                    kind,
                    reason,
                    offset: late.event.seq as i64,
                    key,
                    value: Some(late.event.raw.as_bytes().to_vec()),
                }
                .within(self.output_limit),
            );
        }
        for e in self.outputs.errors.drain(..) {
            self.pending.rule_errors += 1;
            tracing::warn!(partition = self.partition, rule = %e.rule, key = %e.key, "rule error: {}", e.message);
        }
    }

    fn dead_letter(
        &mut self,
        kind: DeadLetterKind,
        reason: String,
        offset: i64,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
    ) {
        self.pending.dead_letters.push(
            DeadLetter {
                kind,
                reason,
                offset,
                key,
                value,
            }
            .within(self.output_limit),
        );
    }
}

/// The text of a key value as a record key: strings without quotes.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::Str(s) => s.to_string(),
        other => other.to_string(),
    }
}

impl Actor for Shard {
    type Context = Context<Self>;
}

impl Handler<Records> for Shard {
    type Result = ();
    fn handle(&mut self, msg: Records, _: &mut Context<Self>) {
        self.process_batch(msg.0);
    }
}

impl Handler<Reload> for Shard {
    type Result = ();
    fn handle(&mut self, msg: Reload, _: &mut Context<Self>) {
        self.reload(msg.0, msg.1);
    }
}

impl Handler<Persisted> for Shard {
    type Result = ();
    fn handle(&mut self, msg: Persisted, _: &mut Context<Self>) {
        self.persisted(msg.batch, msg.budget_bytes);
    }
}

/// Asks a shard for one key's live state (see
/// [`crate::engine::inspect::key_view`]).
#[derive(Message)]
#[rtype(result = "Vec<serde_json::Value>")]
pub struct KeyQuery(pub String);

impl Handler<KeyQuery> for Shard {
    type Result = MessageResult<KeyQuery>;
    fn handle(&mut self, q: KeyQuery, _: &mut Context<Self>) -> Self::Result {
        MessageResult(crate::engine::inspect::key_view(&mut self.engine, &q.0))
    }
}

impl Handler<Barrier> for Shard {
    type Result = MessageResult<Barrier>;
    fn handle(&mut self, b: Barrier, _: &mut Context<Self>) -> Self::Result {
        MessageResult(match b {
            Barrier::Checkpoint => self.take_output(),
            Barrier::Flush => self.take_flush(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Arc<RuleSet> {
        RuleSet::from_source(
            "t.tl",
            r#"stream s { key card time ts time format epoch_ms }
               rule big { pattern { b: amount > 100 } }"#,
            None,
        )
        .unwrap()
    }

    fn rec(offset: i64, v: &str) -> Record {
        Record::data(offset, Some(b"k".to_vec()), Some(v.as_bytes().to_vec()))
    }

    #[test]
    fn alerts_and_dead_letters_up_to_the_barrier() {
        let mut s = Shard::standalone(0, rules());
        s.process(rec(10, r#"{"card":"c1","ts":1000,"amount":500}"#));
        s.process(rec(11, r#"{"card":"c1","ts":"#));
        s.process(rec(12, r#"{"card":"c1","ts":1000,"amount":5}"#));
        s.process(Record::data(13, None, None));
        let out = s.take_output();
        assert_eq!(out.next_offset, Some(14));
        assert_eq!(out.records, 4);
        assert_eq!(out.alerts.len(), 1);
        assert_eq!(out.alerts[0].record.key, b"c1");
        assert_eq!(&*out.alerts[0].rule, "big");
        let alert: serde_json::Value = serde_json::from_slice(&out.alerts[0].record.value).unwrap();
        assert_eq!(alert["rule"], "big");
        let kinds: Vec<_> = out
            .dead_letters
            .iter()
            .map(|d| (d.kind, d.offset))
            .collect();
        assert_eq!(
            kinds,
            [
                (DeadLetterKind::Malformed, 11),
                (DeadLetterKind::Malformed, 13)
            ]
        );
        assert!(out.dead_letters[0].reason.contains("malformed JSON"));
        assert_eq!(
            out.dead_letters[0].value.as_deref(),
            Some(&br#"{"card":"c1","ts":"#[..])
        );
        let again = s.take_output();
        assert_eq!((again.records, again.next_offset), (0, Some(14)));
    }

    #[test]
    fn a_flush_then_the_barrier_add_up_to_the_barrier_alone() {
        let rules = RuleSet::from_source(
            "t.tl",
            r#"stream s { key card time ts time format epoch_ms }
               rule probe_then_big {
                 within 1h
                 pattern { p: amount < 5 repeat 2.. then b: amount > 100 }
               }"#,
            None,
        )
        .unwrap();
        let lines = [
            r#"{"card":"c1","ts":1000,"amount":1}"#,
            r#"{"card":"c2","ts":1100,"amount":2}"#,
            r#"{"card":"c1","ts":1200,"amount":"#,
            r#"{"card":"c1","ts":1300,"amount":3}"#,
            r#"{"card":"c2","ts":1400,"amount":1}"#,
            r#"{"card":"c1","ts":1500,"amount":500}"#,
            r#"{"card":"c1","ts":900,"amount":500}"#,
            r#"{"card":"c2","ts":1600,"amount":700}"#,
        ];
        let mut whole = Shard::standalone(0, rules.clone());
        let mut split = Shard::standalone(0, rules);
        for (i, line) in lines.iter().enumerate() {
            whole.process(rec(i as i64, line));
        }
        let mut joined = ShardOutput::default();
        for (i, line) in lines.iter().enumerate() {
            if i == 4 {
                joined = split.take_flush();
                assert_eq!(joined.alerts.len(), 0);
                assert_eq!(joined.next_offset, Some(4));
            }
            split.process(rec(i as i64, line));
        }
        joined.absorb(split.take_output());
        let expected = whole.take_output();
        let alerts = |o: &ShardOutput| -> Vec<Vec<u8>> {
            o.alerts.iter().map(|a| a.record.value.clone()).collect()
        };
        assert_eq!(alerts(&joined).len(), 2);
        assert_eq!(alerts(&joined), alerts(&expected));
        let dead = |o: &ShardOutput| -> Vec<(DeadLetterKind, i64)> {
            o.dead_letters.iter().map(|d| (d.kind, d.offset)).collect()
        };
        assert_eq!(
            dead(&joined),
            [(DeadLetterKind::Malformed, 2), (DeadLetterKind::Late, 6)]
        );
        assert_eq!(dead(&joined), dead(&expected));
        assert_eq!(
            (joined.records, joined.next_offset, joined.watermark),
            (expected.records, expected.next_offset, expected.watermark)
        );
        // The changes, applied in order, leave the state the barrier alone
        // writes.
        let applied = |o: &ShardOutput| {
            let mut m = std::collections::BTreeMap::new();
            for (k, v) in &o.state {
                m.insert(k.clone(), v.clone());
            }
            m
        };
        assert!(!joined.state.is_empty());
        assert_eq!(applied(&joined), applied(&expected));
    }

    #[test]
    fn late_events_are_dead_lettered_with_their_text() {
        let mut s = Shard::standalone(0, rules());
        s.process(rec(0, r#"{"card":"c1","ts":5000,"amount":1}"#));
        s.process(rec(1, r#"{"card":"c2","ts":1000,"amount":1}"#));
        let out = s.take_output();
        assert_eq!(out.dead_letters.len(), 1);
        let d = &out.dead_letters[0];
        assert_eq!((d.kind, d.offset), (DeadLetterKind::Late, 1));
        assert_eq!(d.key.as_deref(), Some(&b"c2"[..]));
        assert_eq!(
            d.value.as_deref(),
            Some(&br#"{"card":"c2","ts":1000,"amount":1}"#[..])
        );
    }

    #[actix_rt::test]
    async fn the_barrier_answers_after_queued_records() {
        let addr = Shard::standalone(0, rules()).start();
        addr.do_send(Records(vec![rec(0, r#"{"card":"a","ts":1,"amount":101}"#)]));
        addr.do_send(Records(vec![rec(1, r#"{"card":"b","ts":2,"amount":102}"#)]));
        let out = addr.send(Barrier::Checkpoint).await.unwrap();
        assert_eq!(out.alerts.len(), 2);
        assert_eq!(out.next_offset, Some(2));
    }

    fn by_terminal() -> (Arc<RuleSet>, Arc<RuleSet>, Slot) {
        let full = RuleSet::from_source(
            "t.tl",
            r#"stream s { key card time ts time format epoch_ms }
               rule own { pattern { b: amount > 1000 } }
               rule t { key term pattern { b: amount > 100 } }"#,
            None,
        )
        .unwrap();
        let slot = full
            .def
            .schema
            .slot(&crate::event::FieldPath::single("term"))
            .unwrap();
        (full.clone(), full.for_key(Some(slot)), slot)
    }

    fn mark(offset: i64, source: u32, watermark: i64, idle: bool) -> Record {
        Record {
            mark: Some(WatermarkMark {
                source,
                watermark,
                idle,
            }),
            ..Record::data(offset, None, None)
        }
    }

    #[test]
    fn a_source_forwards_events_for_other_keys_and_runs_its_own() {
        let (full, _, slot) = by_terminal();
        let own = full.for_key(full.stream_key_slot());
        let forward = vec![Forward { target: 0, slot }];
        let mut s = Shard::new(0, full, own, Role::Source { forward });
        s.process(rec(
            0,
            r#"{"card":"c1","term":"t1","ts":1000,"amount":5000}"#,
        ));
        s.process(rec(1, r#"{"card":"c1","ts":2000,"amount":5000}"#));
        let out = s.take_output();
        assert_eq!(
            out.alerts.len(),
            2,
            "rule `own` runs here, rule `t` does not"
        );
        assert_eq!(
            out.forwarded.len(),
            1,
            "an event without `term` is not forwarded"
        );
        assert_eq!(out.forwarded[0].0, 0);
        assert_eq!(out.forwarded[0].1.key, b"t1");
        assert_eq!(
            out.forwarded[0].1.value,
            br#"{"card":"c1","term":"t1","ts":1000,"amount":5000}"#
        );
        // Lateness 0: an event at the newest time seen (2000) is still on time.
        assert_eq!(out.watermark, 1999);
    }

    #[test]
    fn an_internal_shard_waits_for_the_slowest_source_that_is_not_idle() {
        let (full, by_term, _) = by_terminal();
        let mut s = Shard::new(0, full, by_term, Role::Internal { sources: 2 });
        s.process(rec(
            0,
            r#"{"card":"c1","term":"t1","ts":1000,"amount":500}"#,
        ));
        s.process(mark(1, 0, 5000, false));
        assert!(
            s.take_output().alerts.is_empty(),
            "source 1 has not reported"
        );
        s.process(mark(2, 1, 500, false));
        assert!(
            s.take_output().alerts.is_empty(),
            "source 1 is behind the event"
        );
        s.process(mark(3, 1, 500, true));
        let out = s.take_output();
        assert_eq!(
            out.alerts.len(),
            1,
            "an idle source no longer holds it back"
        );
        assert_eq!((out.records, out.marks, out.watermark), (1, 1, 5000));
        s.process(rec(
            4,
            r#"{"card":"c2","term":"t1","ts":6000,"amount":500}"#,
        ));
        s.process(mark(5, 1, 7000, false));
        assert!(s.take_output().alerts.is_empty(), "source 0 is at 5000");
    }

    #[test]
    fn every_entry_a_shard_writes_passes_the_changelog_check() {
        let (full, by_term, _) = by_terminal();
        let mut s = Shard::new(0, full, by_term, Role::Internal { sources: 1 });
        s.process(rec(0, r#"{"card":"c1","term":"t1","ts":1000,"amount":50}"#));
        s.process(mark(1, 0, 5000, false));
        let out = s.take_output();
        assert!(
            out.state.iter().any(|(k, _)| k == MARKS_KEY),
            "an internal shard writes its marks"
        );
        for (k, v) in &out.state {
            if let Some(v) = v {
                check_entry(k, v).unwrap_or_else(|e| panic!("{k:?}: {e}"));
            }
        }
        assert!(check_entry(MARKS_KEY, b"garbage").is_err());
    }

    #[test]
    fn marks_round_trip_and_reject_garbage() {
        let m = WatermarkMark {
            source: 3,
            watermark: -42,
            idle: true,
        };
        assert_eq!(WatermarkMark::decode(m.encode().as_bytes()), Some(m));
        for bad in ["", "1:2", "1:2:3", "x:2:0", "1:2:0:9", "1:ü:0"] {
            assert_eq!(WatermarkMark::decode(bad.as_bytes()), None, "{bad}");
        }
    }
}
