//! The shard: one input partition's engine, fed records in offset order.
//! It runs each record through the engine ([`Engine::on_record`]: the
//! decoder and engine that `replay` uses), forwards it for rules keyed by
//! other fields, and keeps what it produced until the next
//! barrier; a record that cannot be processed becomes a dead letter, never
//! an error. Synchronous, and given the clock rather than reading one: the
//! service runs it as an actor (`tripline::runtime`), the deterministic
//! simulation calls it directly.

mod messages;
mod output;

use crate::engine::{Engine, Migration, Outputs, RuleSet};
use crate::event::{FieldPath, Value};
use crate::state::{self, SnapshotError, StateStore};
pub use messages::{Barrier, Forward, Record, Role, STREAM_HEADER, WatermarkMark};
pub use output::{AlertRecord, DeadLetter, DeadLetterKind, OutRecord, ShardOutput};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

/// How many barriers apart partial matches are counted.
pub const PARTIALS_EVERY: u64 = 32;

/// The state entry holding an internal shard's latest source marks.
pub const MARKS_KEY: &[u8] = b"w";

/// The state entry holding the shard's [`InputCut`].
pub const INPUT_KEY: &[u8] = b"i";

/// Where the shard's input stood at the state's cut. The events waiting
/// for the watermark are not in the state: the committed input offset
/// stays at the earliest of them, and a shard restored from the state
/// reads its input again from there. Of the records before `next`, it
/// takes again those that were waiting: the ones that decode, come after
/// `bound` ([`Engine::release_bound`]) and not after `latest`, and were not
/// refused (`refused`); everything else they did (forwarded copies, dead
/// letters, watermark marks, processed events) is in the state and the
/// outputs already. A record that did not decode is not listed: it does
/// not decode again.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InputCut {
    /// The input offset committed with the state (the earliest waiting
    /// event's, or `next`).
    pub from: u64,
    /// The offset after the last record the state covers.
    pub next: u64,
    /// The latest event time processed through.
    pub bound: i64,
    /// The latest event time taken (`None`: the watermark comes from
    /// upstream, which refused what it would).
    pub latest: Option<i64>,
    /// Records from the committed offset on that decode to a time in
    /// `bound..=latest` yet were refused (future when they came, or failed).
    pub refused: Vec<u64>,
}

impl InputCut {
    /// The cut `store` holds, if any. What it means is the same under any
    /// rules: it is read whatever rules wrote it.
    pub fn stored(store: &impl StateStore) -> Result<Option<InputCut>, SnapshotError> {
        match store.get(INPUT_KEY)? {
            Some(bytes) => Ok(Some(state::decode(&bytes, state::header_hash(&bytes)?)?)),
            None => Ok(None),
        }
    }
}

/// Checks that `value` decodes as the shard state entry `key` names: the
/// engine's entries and the shard's own (its source marks). A changelog
/// record that fails this is corrupt, and restoring from it would lose
/// state.
pub fn check_entry(key: &[u8], value: &[u8]) -> Result<(), SnapshotError> {
    if key == MARKS_KEY {
        state::decode::<Vec<Option<WatermarkMark>>>(value, state::header_hash(value)?).map(drop)
    } else if key == INPUT_KEY {
        state::decode::<InputCut>(value, state::header_hash(value)?).map(drop)
    } else {
        crate::engine::check_entry(key, value)
    }
}

/// The actor of one input partition.
pub struct Shard {
    partition: i32,
    /// The whole rule set, of which the engine runs a part (see
    /// [`RuleSet::for_key`]).
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
    /// The engine's count of alerts its rules' `suppress` held back, as
    /// of the last output.
    silenced_seen: u64,
    /// The clock moved event time on since the last output ([`Shard::tick`]):
    /// the state changed with no record to say so.
    ticked: bool,
    /// With a feature log: the event fields each row copies (name, path).
    feature_log: Option<Arc<[(String, FieldPath)]>>,
    /// The cut the shard was restored at: the records before its `next`
    /// are read again for their waiting events only.
    restored_at: Option<InputCut>,
    /// Records refused from the committed offset on, by offset, with
    /// their event time (`i64::MIN`: unknown); see [`InputCut::refused`].
    refused: std::collections::BTreeMap<u64, i64>,
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
            Role::Source { .. } => (
                Engine::new(engine_rules)
                    .track_changes()
                    .waiting_from_input(),
                Vec::new(),
            ),
            Role::Internal { sources } => (
                Engine::with_external_watermark(engine_rules)
                    .track_changes()
                    .waiting_from_input(),
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
            silenced_seen: 0,
            ticked: false,
            feature_log: None,
            restored_at: None,
            refused: Default::default(),
        }
        .with_output_limit(DEFAULT_OUTPUT_LIMIT)
    }

    /// Writes every event's features to the feature log
    /// ([`ShardOutput::features`]): one JSON object per event, keyed by the
    /// event's stream key, with the event fields `fields` (name, path) and
    /// the features this shard's rules compute (see
    /// [`crate::engine::FeatureRow::write_json`]).
    pub fn with_feature_log(mut self, fields: Arc<[(String, FieldPath)]>) -> Shard {
        let placeholder = Engine::new(self.engine.rules().clone());
        let engine = std::mem::replace(&mut self.engine, placeholder);
        self.engine = engine.collect_features();
        self.feature_log = Some(fields);
        self
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

    /// Looks table lookups up in `tables` (see [`Engine::with_tables`]).
    pub fn with_tables(mut self, tables: Arc<crate::tables::Tables>) -> Shard {
        let placeholder = Engine::new(self.engine.rules().clone());
        let engine = std::mem::replace(&mut self.engine, placeholder);
        self.engine = engine.with_tables(tables);
        self
    }

    /// Looks list lookups up in `lists` (see [`Engine::with_lists`]).
    pub fn with_lists(mut self, lists: Arc<crate::lists::Lists>) -> Shard {
        let placeholder = Engine::new(self.engine.rules().clone());
        let engine = std::mem::replace(&mut self.engine, placeholder);
        self.engine = engine.with_lists(lists);
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
            silenced_seen,
            ticked,
            feature_log,
            restored_at: _,
            refused: _,
        } = self;
        let restored_at = InputCut::stored(store)?;
        let refused = restored_at
            .as_ref()
            .map(|c| c.refused.iter().map(|&o| (o, i64::MIN)).collect())
            .unwrap_or_default();
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
            silenced_seen,
            ticked,
            feature_log,
            restored_at,
            refused,
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
        self.silenced_seen = self.engine.stats().silenced;
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
                stream: 0,
            },
        )
    }

    /// Processes a batch of records, as they came from the broker, that
    /// arrived when the clock read `clock_ms` (epoch ms; see
    /// [`Engine::set_clock`]).
    pub fn process_batch_at(&mut self, records: Vec<Record>, clock_ms: i64) {
        self.engine.set_clock(clock_ms);
        for r in records {
            self.process(r);
        }
    }

    /// Lets event time move with the wall clock (`clock_ms`, epoch ms) on
    /// a quiet input (the stream's `advance after`; see
    /// [`Engine::advance_with_clock`]). Called at checkpoints, so that what
    /// it releases is in that checkpoint's output.
    pub fn tick(&mut self, clock_ms: i64) {
        if self.reading_again() {
            // Not before every event that waited at the cut waits again.
            return;
        }
        if self.engine.advance_with_clock(clock_ms, &mut self.outputs) {
            self.ticked = true;
            self.collect();
        }
    }

    /// Processes one record.
    pub fn process(&mut self, mut record: Record) {
        self.pending.next_offset = Some(record.offset + 1);
        if let Some(cut) = &self.restored_at
            && (record.offset as u64) < cut.next
        {
            let cut = (
                cut.bound,
                cut.latest,
                self.refused.contains_key(&(record.offset as u64)),
            );
            self.take_again(record, cut);
            return;
        }
        self.pending.records += 1;
        let span = record.span.take();
        let _entered = span.as_ref().map(tracing::Span::enter);
        self.cause = (record.timestamp_ms, span.clone());
        if let Some(mark) = record.mark {
            self.pending.marks += 1;
            self.on_mark(mark);
            return;
        }
        let stream = stream_of(&self.role, &self.engine, &record);
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
        let Shard {
            engine,
            outputs,
            role,
            pending,
            output_limit,
            ..
        } = self;
        // Empty, without allocating, but for events too large to forward.
        let mut too_large = Vec::new();
        let processed = catch_unwind(AssertUnwindSafe(|| {
            engine.on_record(
                stream,
                &payload,
                record.offset as u64,
                outputs,
                |event, refused| {
                    if let Role::Source { forward, .. } = role
                        && !refused
                    {
                        for f in forward {
                            let v = event.field(f.slot);
                            if v.is_null() {
                                continue;
                            }
                            let key = value_text(v).into_bytes();
                            if key.len() + payload.len() > *output_limit {
                                too_large.push(f.slot);
                                continue;
                            }
                            let value = payload.clone();
                            pending.forwarded.push((f.target, OutRecord { key, value }));
                        }
                    }
                },
            )
        }));
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
        match processed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.dead_letter(
                    DeadLetterKind::Malformed,
                    e.to_string(),
                    record.offset,
                    record.key,
                    Some(payload),
                );
                return;
            }
            Err(_) => {
                self.refused.insert(record.offset as u64, i64::MIN);
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
        }
        self.collect();
    }

    /// Whether records the restored state covers are still to be read
    /// again (see [`InputCut`]).
    fn reading_again(&self) -> bool {
        self.restored_at.as_ref().is_some_and(|cut| {
            let read_to = self.pending.next_offset.map_or(cut.from, |n| n as u64);
            read_to < cut.next
        })
    }

    /// A record the state's cut covers, read again after a restore: it is
    /// taken again only if it was waiting at the cut (`cut`: the time the
    /// engine had processed through, the latest it had taken, and whether
    /// the record was refused). Everything else it did is in the state and
    /// the committed outputs.
    fn take_again(&mut self, record: Record, cut: (i64, Option<i64>, bool)) {
        let (bound, latest, refused) = cut;
        let (None, Some(payload), false) = (record.mark, &record.payload, refused) else {
            return;
        };
        let stream = stream_of(&self.role, &self.engine, &record);
        let Ok(event) = self.engine.decode(stream, payload, record.offset as u64) else {
            return;
        };
        if event.time <= bound || latest.is_some_and(|l| event.time > l) {
            return;
        }
        let Shard {
            engine, outputs, ..
        } = self;
        let taken = catch_unwind(AssertUnwindSafe(|| engine.on_event(event, outputs)));
        if taken.is_err() {
            tracing::error!(
                partition = self.partition,
                offset = record.offset,
                "internal error while taking a waiting event again; it was skipped"
            );
        }
        // It was refused or taken the first time; it is neither again.
        self.outputs.late.clear();
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
        // The input is committed up to the earliest waiting event: the
        // state leaves the waiting events out (see [`InputCut`]).
        // Midway through reading again, the state still covers the cut.
        out.covered_offset = next.max(self.restored_at.as_ref().map(|c| c.next as i64));
        out.next_offset = next.map(|n| {
            self.engine
                .earliest_waiting()
                .map_or(n, |w| n.min(w as i64))
        });
        if let Some(committed) = out.next_offset {
            self.refused = self.refused.split_off(&(committed as u64));
        }
        out.watermark = self.engine.watermark();
        out.waiting_events = self.engine.buffered() as u64;
        let silenced = self.engine.stats().silenced;
        out.silenced = silenced.saturating_sub(self.silenced_seen);
        self.silenced_seen = silenced;
        out.state_error = self.engine.take_state_error();
        // A tick's alerts go with the state that raised them (events
        // released, deadlines fired, the watermark): committed without it,
        // a restore would release and raise them once more.
        if out.records > 0 || std::mem::take(&mut self.ticked) || self.engine.needs_checkpoint() {
            out.state = self.engine.take_changes();
            for e in self.engine.take_reset_keys() {
                out.rule_errors += 1;
                tracing::error!(partition = self.partition, rules = %e.rule, key = %e.key, "{}", e.message);
            }
            let hash = self.engine.rules().def.hash;
            if !self.marks.is_empty() {
                out.state
                    .push((MARKS_KEY.to_vec(), Some(state::encode(hash, &self.marks))));
            }
            let from = out
                .next_offset
                .map(|n| n as u64)
                .or(self.restored_at.as_ref().map(|c| c.from));
            if let (Some(from), Some(next)) = (from, out.covered_offset) {
                let latest = self.engine.latest_seen();
                let cut = InputCut {
                    from,
                    next: next as u64,
                    bound: self.engine.release_bound(),
                    latest,
                    // Those after the latest time are told apart by it.
                    refused: self
                        .refused
                        .iter()
                        .filter(|(_, t)| latest.is_none_or(|l| **t <= l))
                        .map(|(o, _)| *o)
                        .collect(),
                };
                out.state
                    .push((INPUT_KEY.to_vec(), Some(state::encode(hash, &cut))));
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
        let w = crate::time::min_over_active(
            self.marks
                .iter()
                .map(|m| m.map_or((None, false), |m| (Some(m.watermark), m.idle))),
        );
        if let Some(w) = w
            && w > self.engine.watermark()
        {
            self.engine.advance_watermark(w, &mut self.outputs);
            self.collect();
        }
    }

    fn collect(&mut self) {
        if let Some(fields) = &self.feature_log {
            let columns = self.engine.rules().feature_columns();
            for row in self.outputs.features.drain(..) {
                let key = self
                    .rules
                    .stream_key_slot()
                    .and_then(|slot| row.event.fields.get(slot as usize))
                    .map(|v| value_text(v).into_bytes())
                    .unwrap_or_default();
                let mut value = Vec::with_capacity(256);
                if let Err(e) = row.write_json(fields, columns, &mut value) {
                    tracing::error!(
                        partition = self.partition,
                        offset = row.event.seq,
                        "feature row not written: {e}"
                    );
                    continue;
                }
                if key.len() + value.len() > self.output_limit {
                    // A row is its fields and numbers: only copied fields
                    // this large can make it so.
                    tracing::error!(
                        partition = self.partition,
                        offset = row.event.seq,
                        bytes = value.len(),
                        "feature row over the output limit: not written (copy fewer or smaller fields)"
                    );
                    continue;
                }
                self.pending.features.push(OutRecord { key, value });
            }
        }
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
                shadow: alert.shadow,
                cause_ms: self.cause.0,
                span: self.cause.1.clone(),
            });
        }
        for late in self.outputs.late.drain(..) {
            if late.future_limit.is_some() {
                self.refused.insert(late.event.seq, late.event.time);
            }
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

    /// One key's live state (see [`crate::engine::inspect::key_view`]).
    pub fn key_view(&mut self, key: &str) -> Vec<serde_json::Value> {
        crate::engine::inspect::key_view(&mut self.engine, key)
    }
}

/// The stream of `record`'s event: a stream's topic holds that stream's
/// events; an internal topic those of every stream its rules read, each
/// marked with its stream (unmarked: the main stream's, as before rule sets
/// had several).
fn stream_of(role: &Role, engine: &Engine, record: &Record) -> u16 {
    match (role, &record.stream) {
        (Role::Source { stream, .. }, _) => *stream,
        (Role::Internal { .. }, None) => 0,
        (Role::Internal { .. }, Some(name)) => {
            engine.rules().def().stream_index(name).unwrap_or(u16::MAX)
        }
    }
}

/// The text of a key value as a record key: strings without quotes.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::Str(s) => s.to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryStore;

    const RULES: &str = r#"
        stream s { key k time t time format epoch_ms lateness 2s skew 1s }
        rule pair { within 1s pattern { a: v == 0 then b: v == 1 } }
        rule seven { pattern { a: v == 7 } }
    "#;

    fn rec(offset: i64, k: &str, t: i64, v: i64) -> Record {
        let json = format!(r#"{{"k":"{k}","t":{t},"v":{v}}}"#);
        Record::data(offset, None, Some(json.into_bytes()))
    }

    /// Before the cut (offsets 0 to 8), then after it.
    fn input() -> Vec<Record> {
        let events = [
            ("z", 1200, 0),
            ("x", 1000, 0),
            ("", 0, 0),
            // Further than `skew` past the latest time (1200) when they
            // come; `y` no longer by the cut, when the latest is 3100, `u`
            // only after a restore, when `skew` past it (4100) is later.
            ("y", 2300, 7),
            ("u", 3500, 7),
            ("x", 1010, 1),
            ("q", 1600, 0),
            ("w", 2500, 0),
            ("w", 3100, 0),
            ("z", 1210, 1),
            ("r", 4000, 0),
            ("r", 5000, 0),
            ("r", 6000, 0),
        ];
        let record = |(o, &(k, t, v)): (usize, &(&str, i64, i64))| match k {
            "" => Record::data(o as i64, None, Some(b"{".to_vec())),
            _ => rec(o as i64, k, t, v),
        };
        events.iter().enumerate().map(record).collect()
    }

    fn alerts(out: &ShardOutput) -> Vec<(String, String)> {
        out.alerts
            .iter()
            .map(|a| {
                let key = String::from_utf8_lossy(&a.record.key).into_owned();
                (a.rule.to_string(), key)
            })
            .collect()
    }

    #[test]
    fn waiting_events_stay_in_the_input_and_are_taken_again_once() {
        let rules = RuleSet::from_source("t.tl", RULES, None).unwrap();
        let mut a = Shard::standalone(0, rules.clone());
        let mut records = input();
        let after: Vec<Record> = records.split_off(9);
        for r in records {
            a.process(r);
        }
        let cut = a.take_output();
        assert_eq!(alerts(&cut), [("pair".to_string(), "x".to_string())]);
        assert_eq!(cut.dead_letters.len(), 3, "{:?}", cut.dead_letters);
        // `z` (offset 0), `q` and `w` wait: the input is committed at `z`,
        // and the state holds none of them.
        assert_eq!((cut.next_offset, cut.covered_offset), (Some(0), Some(9)));
        assert!(
            !cut.state.iter().any(|(k, _)| k.starts_with(b"b/")),
            "waiting events in the state"
        );
        // Only `y` is listed as refused: the malformed record does not
        // decode again, and `u` is after the latest time taken.
        let (_, entry) = cut.state.iter().find(|(k, _)| k == INPUT_KEY).unwrap();
        let entry = entry.as_deref().unwrap();
        let stored: InputCut = state::decode(entry, state::header_hash(entry).unwrap()).unwrap();
        assert_eq!((stored.refused, stored.latest), (vec![3], Some(3100)));
        let mut store = MemoryStore::default();
        store.write(cut.state).unwrap();

        // The uninterrupted shard goes on; one restored from the cut reads
        // its input again from the committed offset.
        for r in after.iter().cloned() {
            a.process(r);
        }
        let want = a.take_output();
        let mut b = Shard::standalone(0, rules).restored(&store).unwrap();
        for r in input() {
            b.process(r);
        }
        let got = b.take_output();
        assert_eq!(alerts(&want), [("pair".to_string(), "z".to_string())]);
        assert_eq!(alerts(&got), alerts(&want));
        assert!(got.dead_letters.is_empty(), "{:?}", got.dead_letters);
        assert_eq!(got.records, want.records);
        assert_eq!(
            (got.next_offset, got.covered_offset),
            (want.next_offset, want.covered_offset)
        );
        let entry = |out: &ShardOutput| {
            out.state
                .iter()
                .find(|(k, _)| k == INPUT_KEY)
                .and_then(|(_, v)| v.clone())
        };
        assert_eq!(entry(&got), entry(&want));
    }

    #[test]
    fn the_clock_moves_event_time_only_once_the_waiting_events_are_read_again() {
        let rules = RuleSet::from_source(
            "t.tl",
            r#"stream s { key k time t time format epoch_ms lateness 500ms advance after 1s }
               rule seven { pattern { a: v == 7 } }"#,
            None,
        )
        .unwrap();
        let mut a = Shard::standalone(0, rules.clone());
        a.process_batch_at(vec![rec(0, "x", 1000, 7)], 10_000);
        let cut = a.take_output();
        assert_eq!((cut.next_offset, cut.covered_offset), (Some(0), Some(1)));
        let mut store = MemoryStore::default();
        store.write(cut.state).unwrap();

        let mut b = Shard::standalone(0, rules).restored(&store).unwrap();
        // Moved now, event time would pass `x` before it waits again, and
        // `x` would be late.
        b.tick(60_000);
        b.tick(90_000);
        assert!(b.take_output().alerts.is_empty());
        b.process_batch_at(vec![rec(0, "x", 1000, 7)], 90_000);
        b.tick(95_000);
        let out = b.take_output();
        assert_eq!(alerts(&out), [("seven".to_string(), "x".to_string())]);
        assert_eq!(out.next_offset, Some(1));
    }
}
