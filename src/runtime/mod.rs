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

pub use tripline_core::shard::{
    AlertRecord, Barrier, DEFAULT_OUTPUT_LIMIT, DeadLetter, DeadLetterKind, Forward, OutRecord,
    PARTIALS_EVERY, Record, Role, STREAM_HEADER, Shard, ShardOutput, WatermarkMark, check_entry,
    value_text,
};

use crate::engine::RuleSet;
use actix::{Actor, Context, Handler, Message, MessageResult};
use std::sync::Arc;

/// A [`Shard`] as an actix actor: its mailbox orders records, barriers and
/// control messages; the records' clock is read here, on arrival.
pub struct ShardActor(pub Shard);

/// A batch of records of the shard's partition, in offset order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Records(pub Vec<Record>);

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

/// A [`Barrier`] sent to a shard actor, answered with its output.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "ShardOutput")]
pub struct Cut(pub Barrier);

impl Actor for ShardActor {
    type Context = Context<Self>;
}

impl Handler<Records> for ShardActor {
    type Result = ();
    fn handle(&mut self, msg: Records, _: &mut Context<Self>) {
        self.0.process_batch_at(msg.0, crate::telemetry::now_ms());
    }
}

impl Handler<Reload> for ShardActor {
    type Result = ();
    fn handle(&mut self, msg: Reload, _: &mut Context<Self>) {
        self.0.reload(msg.0, msg.1);
    }
}

impl Handler<Persisted> for ShardActor {
    type Result = ();
    fn handle(&mut self, msg: Persisted, _: &mut Context<Self>) {
        self.0.persisted(msg.batch, msg.budget_bytes);
    }
}

/// Asks a shard for one key's live state (see
/// [`crate::engine::inspect::key_view`]).
#[derive(Message)]
#[rtype(result = "Vec<serde_json::Value>")]
pub struct KeyQuery(pub String);

impl Handler<KeyQuery> for ShardActor {
    type Result = MessageResult<KeyQuery>;
    fn handle(&mut self, q: KeyQuery, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.0.key_view(&q.0))
    }
}

impl Handler<Cut> for ShardActor {
    type Result = MessageResult<Cut>;
    fn handle(&mut self, Cut(b): Cut, _: &mut Context<Self>) -> Self::Result {
        MessageResult(match b {
            Barrier::Checkpoint => {
                self.0.tick(crate::telemetry::now_ms());
                self.0.take_output()
            }
            Barrier::Flush => self.0.take_flush(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::RuleSet;
    use crate::event::Slot;
    use std::sync::Arc;
    use tripline_core::shard::MARKS_KEY;

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
    fn alerts_a_quiet_input_raises_are_committed_with_their_state() {
        let rules = RuleSet::from_source(
            "t.tl",
            r#"stream s { key card time ts time format epoch_ms lateness 5s advance after 1s }
               rule big { pattern { b: amount > 600 } }"#,
            None,
        )
        .unwrap();
        let t = 1_700_000_000_000i64;
        use tripline_core::state::StateStore;
        let mut store = tripline_core::state::MemoryStore::default();
        let mut s = Shard::standalone(0, rules.clone());
        s.process_batch_at(
            vec![rec(0, &format!(r#"{{"card":"c1","ts":{t},"amount":650}}"#))],
            t,
        );
        let first = s.take_output();
        assert!(first.alerts.is_empty(), "the event waits for its lateness");
        store.write(first.state).unwrap();
        // The input stays quiet: event time moves with the clock, the event
        // is released and alerts, with no record in this checkpoint.
        s.tick(t + 10_000);
        let second = s.take_output();
        assert_eq!((second.records, second.alerts.len()), (0, 1));
        store.write(second.state).unwrap();
        // A member restored from what was committed does not raise it again
        // when a later event moves event time past it.
        let mut restored = Shard::standalone(0, rules).restored(&store).unwrap();
        restored.process_batch_at(
            vec![rec(
                1,
                &format!(r#"{{"card":"c2","ts":{},"amount":1}}"#, t + 20_000),
            )],
            t + 20_000,
        );
        restored.tick(t + 40_000);
        let again = restored.take_output();
        assert_eq!(again.records, 1);
        assert_eq!(again.alerts.len(), 0, "the alert was committed once");
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
        let addr = ShardActor(Shard::standalone(0, rules())).start();
        addr.do_send(Records(vec![rec(0, r#"{"card":"a","ts":1,"amount":101}"#)]));
        addr.do_send(Records(vec![rec(1, r#"{"card":"b","ts":2,"amount":102}"#)]));
        let out = addr.send(Cut(Barrier::Checkpoint)).await.unwrap();
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
            .def()
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
        let mut s = Shard::new(0, full, own, Role::Source { forward, stream: 0 });
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
    fn every_part_of_the_rules_refuses_what_the_whole_refuses() {
        let (full, by_term, _) = by_terminal();
        let own = full.for_key(full.stream_key_slot());
        let empty = full.for_key(None);
        for bad in [
            r#"{"term":"t1","ts":1000,"amount":5}"#,
            r#"{"card":"c1","term":{"id":1},"ts":1000,"amount":5}"#,
            r#"{"card":"c1","term":"t1","amount":5}"#,
        ] {
            let whole = full.decoder().decode(bad.as_bytes(), 0).unwrap_err();
            for part in [&by_term, &own, &empty] {
                assert_eq!(
                    part.decoder().decode(bad.as_bytes(), 0),
                    Err(whole.clone()),
                    "{bad}"
                );
            }
        }
        let mut s = Shard::new(0, full.clone(), by_term, Role::Internal { sources: 1 });
        s.process(rec(0, r#"{"term":"t1","ts":1000,"amount":500}"#));
        let out = s.take_output();
        assert_eq!(out.dead_letters.len(), 1, "a record without the stream key");
        assert_eq!(out.dead_letters[0].kind, DeadLetterKind::Malformed);
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
