//! The checkpoint: cut every shard at a barrier, produce the cut's outputs
//! (alerts, forwarded events, dead letters, state changes, watermark marks)
//! in one transaction with the input offsets it covers, commit, then copy
//! the state changes to the local store; and the rewind after a checkpoint
//! that failed.

use super::ports::{
    Clock, Fault, LocalStore, Observer, Outgoing, PortError, Ports, Shards, Source, TxSink,
};
use super::report::{AlertCommit, CheckpointCommitted, CheckpointFailed, PartitionCommit};
use super::{CoordError, Coordinator, ShardId};
use crate::shard::{
    Barrier, DeadLetter, DeadLetterKind, OutRecord, Role, STREAM_HEADER, ShardOutput, WatermarkMark,
};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The header that marks a watermark record in an internal topic.
pub const MARK_HEADER: &str = "tripline.watermark";

impl<P: Ports> Coordinator<P> {
    /// Commits everything processed so far in one transaction. On error
    /// the caller rewinds with [`Coordinator::recover`].
    pub fn checkpoint<S: Source<Group = P::Group>>(&mut self, src: &S) -> Result<(), CoordError> {
        self.timed(|c| c.commit_processed(src)).0
    }

    /// Produces the shards' output so far into the transaction (beginning
    /// it), a little before the checkpoint: its records are then
    /// acknowledged by the time the checkpoint commits, which only adds
    /// the rest of the interval's. The outputs are kept for the
    /// checkpoint's bookkeeping. On error the caller rewinds.
    pub fn flush<S: Source>(&mut self, src: &S) -> Result<(), CoordError> {
        let (result, took) = self.timed(|c| {
            let outputs = c.ask_shards(src, Barrier::Flush)?;
            c.produce(&outputs)?;
            for (id, out) in outputs {
                c.flushed.entry(id).or_default().absorb(out);
            }
            Ok(())
        });
        self.progress
            .flush_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        result
    }

    /// Runs a part of checkpointing, counting the time it takes; returns
    /// that time too.
    fn timed(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<(), CoordError>,
    ) -> (Result<(), CoordError>, Duration) {
        let started = self.clock.now();
        let result = f(self);
        let took = self.clock.now().saturating_sub(started);
        self.progress
            .checkpoint_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        (result, took)
    }

    /// Hands everything polled to the shards and asks each for its output
    /// so far, at `barrier`.
    fn ask_shards<S: Source>(
        &mut self,
        src: &S,
        barrier: Barrier,
    ) -> Result<Vec<(ShardId, ShardOutput)>, CoordError> {
        // Everything polled goes to the shards first, so the cut covers it
        // (a refused batch waits: its partition's offset stops before it).
        self.hand_over(src);
        let ids = self.held();
        let started = self.clock.now();
        let answers = self.shards.barrier(&ids, barrier);
        let took = self.clock.now().saturating_sub(started);
        let waited = match barrier {
            Barrier::Checkpoint => &self.progress.barrier_micros,
            Barrier::Flush => &self.progress.flush_wait_micros,
        };
        waited.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        let mut outputs: Vec<(ShardId, ShardOutput)> = Vec::with_capacity(answers.len());
        for (id, a) in ids.into_iter().zip(answers) {
            let Some(mut out) = a else {
                return Err(CoordError::ShardGone {
                    topic: self.topic(id.0).to_string(),
                    partition: id.1,
                });
            };
            if let Some(e) = out.state_error.take() {
                // Its output used empty state for a key it could not read
                // back: rebuilt from the store and the changelog instead.
                return Err(CoordError::PassivatedState {
                    topic: self.topic(id.0).to_string(),
                    partition: id.1,
                    error: e,
                });
            }
            outputs.push((id, out));
        }
        Ok(outputs)
    }

    /// Begins the transaction, unless it is open.
    fn begin(&mut self) -> Result<(), CoordError> {
        if !self.txn_open {
            self.sink.begin()?;
            self.txn_open = true;
        }
        Ok(())
    }

    /// Sends the records of `outputs` in the transaction (begun if need
    /// be), without waiting for them.
    fn produce(&mut self, outputs: &[(ShardId, ShardOutput)]) -> Result<(), CoordError> {
        if outputs.iter().all(|(_, o)| o.produces_nothing()) {
            return Ok(());
        }
        self.begin()?;
        let topology = self.topology.clone();
        let alerts_topic = self.settings.alerts_topic.clone();
        let shadow_topic = self.settings.shadow_topic.clone();
        let feature_log = self.settings.feature_log.clone();
        for (id, out) in outputs {
            let (t, p) = *id;
            let source = topology.topics[t].name.as_str();
            for a in &out.alerts {
                let r = Outgoing {
                    topic: if a.shadow {
                        &shadow_topic
                    } else {
                        &alerts_topic
                    },
                    partition: None,
                    key: Some(&a.record.key),
                    value: Some(&a.record.value),
                    headers: &[],
                    changelog_of: None,
                    span: a.span.as_ref(),
                };
                let what = || format!("an alert of rule `{}`", a.rule);
                self.send_or_dead_letter(r, what, &a.record, source, p)?;
            }
            // With several streams, a forwarded event says which it is of.
            let stream: Vec<(&str, &[u8])> = match &topology.topics[t].role {
                Role::Source { stream, .. } if topology.rules.def.streams.len() > 1 => {
                    let name = &topology.rules.def.streams[*stream as usize].name;
                    vec![(STREAM_HEADER, name.as_bytes())]
                }
                _ => Vec::new(),
            };
            for (target, r) in &out.forwarded {
                let to = topology.internal_topic(*target).name.as_str();
                let record = Outgoing {
                    topic: to,
                    partition: None,
                    key: Some(&r.key),
                    value: Some(&r.value),
                    headers: &stream,
                    changelog_of: None,
                    span: None,
                };
                let what = || format!("an event forwarded to `{to}`");
                self.send_or_dead_letter(record, what, r, source, p)?;
            }
            if let Some(log) = &feature_log {
                for r in &out.features {
                    let record = Outgoing {
                        topic: &log.topic,
                        partition: None,
                        key: Some(&r.key),
                        value: Some(&r.value),
                        headers: &[],
                        changelog_of: None,
                        span: None,
                    };
                    let what = || "a feature row".to_string();
                    self.send_or_dead_letter(record, what, r, source, p)?;
                }
            }
            for d in &out.dead_letters {
                self.send_dead_letter(d, source, p)?;
            }
            let changelog = topology.topics[t].changelog.as_str();
            for (key, value) in &out.state {
                self.sink.send(Outgoing {
                    topic: changelog,
                    partition: Some(p),
                    key: Some(key),
                    value: value.as_deref(),
                    headers: &[],
                    changelog_of: Some(*id),
                    span: None,
                })?;
            }
        }
        Ok(())
    }

    /// Sends a dead letter, with headers saying why and where it came from.
    fn send_dead_letter(
        &mut self,
        d: &DeadLetter,
        source_topic: &str,
        source_partition: i32,
    ) -> Result<(), CoordError> {
        let partition = source_partition.to_string();
        let offset = d.offset.to_string();
        let headers: [(&str, &[u8]); 5] = [
            ("tripline.error.kind", d.kind.as_str().as_bytes()),
            ("tripline.error.reason", d.reason.as_bytes()),
            ("tripline.source.topic", source_topic.as_bytes()),
            ("tripline.source.partition", partition.as_bytes()),
            ("tripline.source.offset", offset.as_bytes()),
        ];
        self.sink.send(Outgoing {
            topic: &self.settings.dead_letter_topic,
            partition: None,
            key: d.key.as_deref(),
            value: d.value.as_deref(),
            headers: &headers,
            changelog_of: None,
            span: None,
        })?;
        Ok(())
    }

    /// Sends `record`; one the sink refuses on its own (too large for it,
    /// however it got so) goes to the dead-letter topic instead, small,
    /// with the refusal: a record that can never be produced must not fail
    /// the checkpoint, which would be retried, fail again, and stop the
    /// partition for good.
    fn send_or_dead_letter(
        &mut self,
        record: Outgoing<'_>,
        what: impl Fn() -> String,
        out: &OutRecord,
        source_topic: &str,
        source_partition: i32,
    ) -> Result<(), CoordError> {
        let error = match self.sink.send(record) {
            Ok(()) => return Ok(()),
            Err(e) if e.fault == Fault::Refused => e,
            Err(e) => return Err(e.into()),
        };
        tracing::error!(
            "{} could not be produced ({} bytes): {}; dead-lettered instead",
            what(),
            out.key.len() + out.value.len(),
            error.message
        );
        let d = DeadLetter {
            kind: DeadLetterKind::Internal,
            reason: format!("{} could not be produced: {}", what(), error.message),
            offset: -1,
            key: Some(out.key.clone()),
            value: Some(out.value.clone()),
        }
        .within(0);
        self.send_dead_letter(&d, source_topic, source_partition)
    }

    fn commit_processed<S: Source<Group = P::Group>>(&mut self, src: &S) -> Result<(), CoordError> {
        self.report_written();
        let mut outputs = self.ask_shards(src, Barrier::Checkpoint)?;
        let started = self.clock.now();
        self.produce(&outputs)?;
        // Join what was flushed ahead of the barrier, for the bookkeeping.
        for (id, out) in &mut outputs {
            if let Some(mut earlier) = self.flushed.remove(id) {
                earlier.absorb(std::mem::take(out));
                *out = earlier;
            }
        }
        // A shard gone since the flush would leave its flushed output here
        // (none does: revocation checkpoints first); it is committed too.
        outputs.extend(std::mem::take(&mut self.flushed));
        self.observe_state(&outputs);
        let marks = self.new_marks(&outputs);
        if !self.txn_open && marks.is_empty() && outputs.iter().all(|(_, o)| o.is_empty()) {
            return Ok(());
        }
        let _span = tracing::info_span!("tripline.checkpoint").entered();
        self.begin()?;
        let topology = self.topology.clone();
        let mut offsets: Vec<(&str, i32, i64)> = Vec::new();
        let mut forwarded = 0u64;
        let mut state_bytes = 0u64;
        for ((t, p), out) in &outputs {
            for (key, value) in &out.state {
                state_bytes += (key.len() + value.as_ref().map_or(0, Vec::len)) as u64;
            }
            if let Some(next) = out.next_offset {
                offsets.push((topology.topics[*t].name.as_str(), *p, next));
            }
            forwarded += out.forwarded.len() as u64;
        }
        // Marks go after the forwarded events they cover (same producer,
        // same partition: the log keeps the order).
        for mark in &marks {
            let value = mark.encode();
            let headers: [(&str, &[u8]); 1] = [(MARK_HEADER, value.as_bytes())];
            for internal in topology.internal() {
                for partition in 0..topology.internal_partitions() as i32 {
                    self.sink.send(Outgoing {
                        topic: internal,
                        partition: Some(partition),
                        key: None,
                        value: Some(&[]),
                        headers: &headers,
                        changelog_of: None,
                        span: None,
                    })?;
                }
            }
        }
        let group = src.group()?;
        let produced = self.clock.now().saturating_sub(started);
        self.sink.send_offsets(&offsets, &group)?;
        let offsets_done = self.clock.now().saturating_sub(started);
        // The offsets travel while the records are being acknowledged.
        self.sink.deliver()?;
        let delivered = self.clock.now().saturating_sub(started);
        let ends = self.sink.commit()?;
        let commit = self.clock.now().saturating_sub(started);
        self.txn_open = false;
        self.progress.checkpoint_outcome(None);
        self.write_local(&mut outputs, &ends);
        let local = self
            .clock
            .now()
            .saturating_sub(started)
            .saturating_sub(commit);
        self.progress
            .local_micros
            .fetch_add(local.as_micros() as u64, Ordering::Relaxed);
        let mut committed = CheckpointCommitted {
            partitions: outputs
                .iter()
                .map(|((t, p), out)| PartitionCommit {
                    topic: &topology.topics[*t].name,
                    partition: *p,
                    events: out.records - out.marks,
                })
                .collect(),
            alerts: outputs
                .iter()
                .flat_map(|(_, out)| &out.alerts)
                .map(|a| AlertCommit {
                    rule: &a.rule,
                    severity: a.severity.as_str(),
                    shadow: a.shadow,
                    cause_ms: a.cause_ms,
                    span: a.span.as_ref(),
                })
                .collect(),
            forwarded,
            marks: marks.len(),
            state_bytes,
            produced,
            offsets: offsets_done,
            delivered,
            commit,
            total: self.clock.now().saturating_sub(started),
            committed_ms: self.clock.epoch_ms(),
            ..CheckpointCommitted::default()
        };
        committed.rule_errors = outputs.iter().map(|(_, out)| out.rule_errors).sum();
        committed.silenced = outputs.iter().map(|(_, out)| out.silenced).sum();
        for d in outputs.iter().flat_map(|(_, out)| &out.dead_letters) {
            match d.kind {
                DeadLetterKind::Malformed => committed.malformed += 1,
                DeadLetterKind::Late => committed.late += 1,
                DeadLetterKind::Future => committed.future += 1,
                DeadLetterKind::Internal => committed.internal += 1,
            }
        }
        // One account of the checkpoint: the counters and the telemetry.
        self.progress.count(&committed, |name| {
            topology.inputs.iter().any(|i| i.name == name)
        });
        self.observer.checkpoint_committed(&committed);
        for ((t, p), out) in &outputs {
            let polled_to = self.slots.get(&(*t, *p)).and_then(|s| s.polled_to);
            self.progress
                .with_partition(&topology.topics[*t].name, *p, |f| {
                    if out.watermark != crate::time::MIN_WATERMARK {
                        f.watermark_ms = Some(out.watermark);
                    }
                    if let Some(next) = out.next_offset {
                        f.committed_offset = Some(next);
                    }
                    if let Some(covered) = out.covered_offset {
                        f.covered_offset = Some(covered);
                    }
                    f.all_committed =
                        out.covered_offset.is_some() && out.covered_offset == polled_to;
                });
        }
        for mark in marks {
            if let Some((last, _)) = self.marks.get_mut(&mark.source) {
                *last = Some(mark);
            }
        }
        Ok(())
    }

    /// The watermark marks to write for the source partitions held: those
    /// that moved or changed idleness since they were last written.
    fn new_marks(&mut self, outputs: &[(ShardId, ShardOutput)]) -> Vec<WatermarkMark> {
        if self.topology.internal().next().is_none() {
            return Vec::new();
        }
        let now = self.clock.now();
        let mut marks = Vec::new();
        for ((topic, p), out) in outputs {
            let Some(source) = self.topology.source_id(*topic, *p) else {
                continue;
            };
            let idle_ms = self.topology.rules.def.streams[*topic].idle_ms;
            let Some((last, active)) = self.marks.get_mut(&source) else {
                continue;
            };
            if out.records > 0 {
                *active = now;
            }
            let idle =
                crate::time::is_idle(active.as_millis() as i64, now.as_millis() as i64, idle_ms);
            let mark = WatermarkMark {
                source,
                watermark: out.watermark,
                idle,
            };
            if *last != Some(mark) {
                marks.push(mark);
            }
        }
        marks
    }

    /// Publishes the shards' memory figures.
    fn observe_state(&self, outputs: &[(ShardId, ShardOutput)]) {
        let (mut resident, mut cold, mut bytes, mut loads) = (0, 0, 0, 0);
        for ((t, p), out) in outputs {
            resident += out.resident_keys;
            if let Some(n) = out.partial_matches {
                self.progress
                    .with_partition(self.topic(*t), *p, |f| f.partial_matches = Some(n));
            }
            self.progress.with_partition(self.topic(*t), *p, |f| {
                f.waiting_events = out.waiting_events;
            });
            if let Some(p) = &out.passivation {
                cold += p.cold_keys;
                bytes += p.resident_bytes;
                loads += p.loads;
            }
        }
        let p = &self.progress;
        p.resident_keys.store(resident, Ordering::Relaxed);
        p.passivated_keys.store(cold, Ordering::Relaxed);
        p.resident_bytes.store(bytes, Ordering::Relaxed);
        p.key_loads.store(loads, Ordering::Relaxed);
    }

    /// Copies a committed checkpoint's state changes to the local store,
    /// with the positions they bring each shard to (the store writes them
    /// away from this thread); the shards may passivate what is stored
    /// once it is written ([`Coordinator::report_written`]).
    fn write_local(
        &mut self,
        outputs: &mut [(ShardId, ShardOutput)],
        ends: &BTreeMap<ShardId, i64>,
    ) {
        if self.local.is_none() {
            return;
        }
        let mut writes = Vec::new();
        let mut stored = Vec::new();
        for (id, out) in outputs.iter_mut() {
            let Some(slot) = self.slots.get_mut(id) else {
                continue;
            };
            let before = slot.position;
            if let Some(&end) = ends.get(id).filter(|e| **e >= 0) {
                slot.position.changelog = end;
            }
            if let Some(next) = out.next_offset {
                slot.position.input = next;
            }
            if slot.position == before && out.state.is_empty() {
                continue;
            }
            if let Some(store) = &slot.store {
                writes.push((store.clone(), std::mem::take(&mut out.state), slot.position));
                stored.push((*id, out.batch));
            }
        }
        if writes.is_empty() {
            return;
        }
        let committed = match &mut self.local {
            Some(local) => local.commit(writes),
            None => return,
        };
        match committed {
            Ok(n) => self.unwritten.push_back((n, stored)),
            Err(e) => self.local_failed(&e),
        }
        self.report_written();
    }

    /// Tells the shards which of their batches the local store has written
    /// since the last call, so that they may passivate what it holds.
    pub(super) fn report_written(&mut self) {
        let Some(local) = &mut self.local else {
            return;
        };
        let written = match local.written() {
            Ok(n) => n,
            Err(e) => return self.local_failed(&e),
        };
        let budget = self.shard_budget(0);
        while self.unwritten.front().is_some_and(|(n, _)| *n <= written) {
            let (_, stored) = self.unwritten.pop_front().expect("a front");
            for (id, batch) in stored {
                if self.slots.get(&id).is_some_and(|s| s.store.is_some()) {
                    self.shards.persisted(id, batch, budget);
                }
            }
        }
    }

    /// Waits until the local store has written every batch committed (a
    /// restore reads it), then reports them written.
    pub(super) fn flush_local(&mut self) {
        if let Some(local) = &mut self.local
            && let Err(e) = local.flush()
        {
            return self.local_failed(&e);
        }
        self.report_written();
    }

    /// A local write failed: the checkpoint committed all the same (a
    /// restart reads more changelog). Later batches are not written
    /// either: the copy would skip this one's changes yet claim a later
    /// position.
    fn local_failed(&mut self, e: &PortError) {
        tracing::error!(
            "local state not updated, and no longer written by this process \
             (a restart reads the changelog from its last position): {e}"
        );
        self.local = None;
        self.unwritten.clear();
    }

    /// After a failed checkpoint: abort the transaction and rewind every
    /// shard to the last commit (its partition paused and sought back, its
    /// state restored again as on assignment). An error here (or a fatal `error`) is the
    /// service's end, returned for the caller to stop on.
    pub fn recover<S: Source>(&mut self, src: &S, error: CoordError) -> Result<(), CoordError> {
        self.observer.checkpoint_failed(&CheckpointFailed {
            error: &error,
            aborting: self.txn_open,
        });
        self.progress.checkpoint_outcome(Some(error.to_string()));
        if error.is_fatal() {
            return Err(error);
        }
        // A checkpoint can fail before its transaction began (a shard that
        // does not answer): then there is nothing to abort, only to rewind.
        // What was flushed is in the transaction, and goes with it.
        self.flushed.clear();
        if self.txn_open {
            if let Err(e) = self.sink.abort() {
                tracing::error!("cannot abort the transaction: {e}");
                return Err(e.into());
            }
            self.txn_open = false;
            self.progress.aborts.fetch_add(1, Ordering::Relaxed);
            self.sink.renew()?;
        }
        let ids = self.held();
        let partitions: Vec<(&str, i32)> = ids.iter().map(|&(t, p)| (self.topic(t), p)).collect();
        let committed = src.committed(&partitions)?;
        for &id in &ids {
            self.slots.remove(&id);
            self.shards.stop(id);
        }
        for (id, offset) in ids.into_iter().zip(committed) {
            self.queue_restore(src, id, Vec::new());
            src.seek(self.topic(id.0), id.1, offset)?;
        }
        self.start_restore()
    }
}
