//! The coordinator's ports over the simulated cluster, each call a place
//! where the fault injector may fail it or kill the member. A killed
//! member's calls have no effect from then on: what it had not committed
//! is lost, as when a process dies.

use crate::world::{Disk, LogRecord, TxnState, World};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tripline_core::coordinator::report::{CheckpointCommitted, CheckpointFailed, RulesReload};
use tripline_core::coordinator::{
    ChangelogEvent, ChangelogReader, Clock, CoordError, LocalShard, LocalStore, LocalWrite,
    Observer, Outgoing, PortError, Ports, Position, RestoreDone, RestoreJob, Restorer, ShardId,
    Shards, Source, TxSink,
};
use tripline_core::engine::RuleSet;
use tripline_core::shard::{Barrier, Record, Shard, ShardOutput};
use tripline_core::state::{Change, Entry, SnapshotError, StateStore};

/// What the injector does to one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    /// The call fails (a retriable error).
    Fail,
    /// The member dies at this call.
    Crash,
    /// The commit is applied, then reported failed (a timeout after the
    /// broker committed).
    Ambiguous,
}

/// The seeded fault injector and the run's schedule.
pub struct Faults {
    pub rng: fastrand::Rng,
    /// Chance in 1000 that a call fails, and that it kills the member.
    pub fail_per_mille: u32,
    pub crash_per_mille: u32,
    /// Every step and fault, for the report of a failing seed.
    pub schedule: Vec<String>,
}

impl Faults {
    pub fn roll(&mut self, member: usize, call: &'static str) -> Option<Injected> {
        let n = self.rng.u32(0..1000);
        let injected = if n < self.crash_per_mille {
            Injected::Crash
        } else if n < self.crash_per_mille + self.fail_per_mille {
            if call == "commit" && self.rng.bool() {
                Injected::Ambiguous
            } else {
                Injected::Fail
            }
        } else {
            return None;
        };
        self.schedule
            .push(format!("  m{member} {call}: {injected:?}"));
        Some(injected)
    }

    pub fn note(&mut self, step: String) {
        self.schedule.push(step);
    }
}

/// What one member's ports share: whether the process is alive.
pub struct Link {
    pub member: usize,
    pub alive: Cell<bool>,
    pub world: Rc<RefCell<World>>,
    pub faults: Rc<RefCell<Faults>>,
}

impl Link {
    /// Whether the call goes through; the injector may fail it or kill
    /// the member here.
    fn call(&self, call: &'static str) -> Result<Option<Injected>, PortError> {
        if !self.alive.get() {
            return Err(PortError::fatal(call, "the process is dead"));
        }
        match self.faults.borrow_mut().roll(self.member, call) {
            None => Ok(None),
            Some(Injected::Crash) => {
                self.alive.set(false);
                Err(PortError::fatal(call, "the process died"))
            }
            Some(Injected::Fail) => Err(PortError::retry(call, "injected failure")),
            Some(Injected::Ambiguous) => Ok(Some(Injected::Ambiguous)),
        }
    }
}

/// The simulated time, in microseconds.
#[derive(Clone, Default)]
pub struct SimClock(pub Rc<Cell<u64>>);

impl Clock for SimClock {
    fn now(&self) -> Duration {
        Duration::from_micros(self.0.get())
    }

    fn epoch_ms(&self) -> i64 {
        (self.0.get() / 1000) as i64
    }
}

/// What the protocol reports goes nowhere: the invariants are checked on
/// what it commits.
pub struct Quiet;

impl Observer for Quiet {
    fn checkpoint_committed(&self, _: &CheckpointCommitted<'_>) {}
    fn checkpoint_failed(&self, _: &CheckpointFailed<'_>) {}
    fn rules_reloaded(&self, _: &RulesReload<'_>) {}
}

/// The membership a member's offsets are committed under.
#[derive(Debug, Clone, Copy)]
pub struct SimGroup {
    pub member: usize,
    pub generation: u64,
}

/// A member's consumer: its fetch positions, paused partitions and the
/// generation it last joined.
pub struct SimSource {
    pub link: Rc<Link>,
    pub positions: RefCell<BTreeMap<(String, i32), i64>>,
    pub paused: RefCell<std::collections::BTreeSet<(String, i32)>>,
    pub generation: Cell<u64>,
}

impl Source for SimSource {
    type Group = SimGroup;

    fn pause(&self, topic: &str, partition: i32, pause: bool) -> Result<(), PortError> {
        self.link.call("pause")?;
        let tp = (topic.to_string(), partition);
        if pause {
            self.paused.borrow_mut().insert(tp);
        } else {
            self.paused.borrow_mut().remove(&tp);
        }
        Ok(())
    }

    fn seek(&self, topic: &str, partition: i32, offset: Option<i64>) -> Result<(), PortError> {
        self.link.call("seek")?;
        self.positions
            .borrow_mut()
            .insert((topic.to_string(), partition), offset.unwrap_or(0));
        Ok(())
    }

    fn committed(&self, partitions: &[(&str, i32)]) -> Result<Vec<Option<i64>>, PortError> {
        self.link.call("committed")?;
        let world = self.link.world.borrow();
        Ok(partitions
            .iter()
            .map(|&(t, p)| world.committed.get(&(t.to_string(), p)).copied())
            .collect())
    }

    fn group(&self) -> Result<SimGroup, PortError> {
        self.link.call("group")?;
        Ok(SimGroup {
            member: self.link.member,
            generation: self.generation.get(),
        })
    }
}

/// Records whose alerts the sink refuses, by key (see the oracle).
pub const REFUSED_KEY: &[u8] = b"7";

/// A member's transactional producer.
pub struct SimSink {
    pub link: Rc<Link>,
    pub epoch: u64,
    pub txn: Option<u64>,
    pub ends: BTreeMap<ShardId, i64>,
}

impl SimSink {
    fn live(&self, call: &'static str) -> Result<Option<Injected>, PortError> {
        let injected = self.link.call(call)?;
        let current = self
            .link
            .world
            .borrow()
            .epoch
            .get(&self.link.member)
            .copied()
            .unwrap_or(0);
        if self.epoch != current {
            return Err(PortError::fatal(call, "producer fenced"));
        }
        Ok(injected)
    }
}

impl TxSink for SimSink {
    type Group = SimGroup;

    fn begin(&mut self) -> Result<(), PortError> {
        self.live("begin")?;
        self.txn = Some(self.link.world.borrow_mut().begin(self.link.member));
        self.ends.clear();
        Ok(())
    }

    fn send(&mut self, r: Outgoing<'_>) -> Result<(), PortError> {
        self.live("send")?;
        let Some(txn) = self.txn else {
            return Err(PortError::fatal("send", "no transaction"));
        };
        if r.topic == crate::ALERTS && r.key == Some(REFUSED_KEY) {
            return Err(PortError::refused("send", "record too large"));
        }
        let record = LogRecord {
            key: r.key.map(<[u8]>::to_vec),
            value: r.value.map(<[u8]>::to_vec),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect(),
            txn,
        };
        let offset = self
            .link
            .world
            .borrow_mut()
            .append(r.topic, r.partition.unwrap_or(0), record);
        if let Some(id) = r.changelog_of {
            let end = self.ends.entry(id).or_insert(-1);
            *end = (*end).max(offset + 1);
        }
        Ok(())
    }

    fn send_offsets(
        &mut self,
        offsets: &[(&str, i32, i64)],
        group: &SimGroup,
    ) -> Result<(), PortError> {
        self.live("send offsets")?;
        let mut world = self.link.world.borrow_mut();
        let owned = offsets
            .iter()
            .all(|(t, p, _)| world.owner.get(&(t.to_string(), *p)) == Some(&group.member));
        if group.generation != world.generation || !owned {
            return Err(PortError::retry("send offsets", "illegal generation"));
        }
        let txn = self
            .txn
            .ok_or_else(|| PortError::fatal("send offsets", "no transaction"))?;
        let t = world.txns.get_mut(&txn).expect("open transaction");
        t.offsets
            .extend(offsets.iter().map(|(t, p, o)| (t.to_string(), *p, *o)));
        Ok(())
    }

    fn deliver(&mut self) -> Result<(), PortError> {
        self.live("deliver")?;
        Ok(())
    }

    fn commit(&mut self) -> Result<BTreeMap<ShardId, i64>, PortError> {
        let injected = self.live("commit")?;
        let txn = self
            .txn
            .ok_or_else(|| PortError::fatal("commit", "no transaction"))?;
        self.link.world.borrow_mut().commit(txn);
        if injected == Some(Injected::Ambiguous) {
            return Err(PortError::retry("commit", "timed out (but committed)"));
        }
        self.txn = None;
        Ok(std::mem::take(&mut self.ends))
    }

    fn abort(&mut self) -> Result<(), PortError> {
        self.live("abort")?;
        let Some(txn) = self.txn.take() else {
            return Ok(());
        };
        let mut world = self.link.world.borrow_mut();
        if world.txns.get(&txn).and_then(|t| t.state) == Some(TxnState::Committed) {
            return Err(PortError::fatal("abort", "the transaction has committed"));
        }
        world.abort(txn);
        Ok(())
    }

    fn renew(&mut self) -> Result<(), PortError> {
        self.live("renew")?;
        let mut world = self.link.world.borrow_mut();
        world.fence(self.link.member);
        self.epoch = world.epoch[&self.link.member];
        Ok(())
    }
}

/// Reads changelogs from the simulated logs.
#[derive(Clone)]
pub struct SimChangelog {
    pub link: Rc<Link>,
}

impl ChangelogReader for SimChangelog {
    fn read(
        &mut self,
        changelog: &str,
        from: &[(i32, Option<i64>)],
        visit: &mut dyn FnMut(ChangelogEvent<'_>) -> Result<(), CoordError>,
    ) -> Result<(), CoordError> {
        for &(p, start) in from {
            self.link.call("changelog read")?;
            let len = self.link.world.borrow().log(changelog, p).len() as i64;
            let start = match start {
                None => 0,
                Some(s) if (0..=len).contains(&s) => s,
                Some(_) => {
                    visit(ChangelogEvent::Reset(p))?;
                    0
                }
            };
            let (records, end): (Vec<(i64, LogRecord)>, i64) = {
                let world = self.link.world.borrow();
                let end = world.stable_end(changelog, p);
                if end < len {
                    // A reader waits until the transaction ends; here
                    // nothing else runs meanwhile, so the read times out.
                    return Err(CoordError::Port(PortError::retry(
                        "changelog read",
                        "timed out behind an open transaction",
                    )));
                }
                let log = world.log(changelog, p);
                let records = (start..end)
                    .filter(|&o| world.visible(&log[o as usize]))
                    .map(|o| (o, log[o as usize].clone()))
                    .collect();
                (records, end)
            };
            for (offset, r) in records {
                // A read can fail half way.
                if offset % 7 == 3 {
                    self.link.call("changelog read")?;
                }
                visit(ChangelogEvent::Record {
                    partition: p,
                    offset,
                    key: r.key.as_deref(),
                    value: r.value.as_deref(),
                })?;
            }
            visit(ChangelogEvent::End(p, end))?;
        }
        Ok(())
    }
}

/// One shard's part of a member's disk.
#[derive(Clone)]
pub struct SimLocalShard {
    disk: Arc<Mutex<Disk>>,
    name: String,
}

const POSITION_KEY: &[u8] = b"~position";

impl StateStore for SimLocalShard {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SnapshotError> {
        let disk = self.disk.lock().unwrap();
        Ok(disk.get(&self.name).and_then(|m| m.get(key).cloned()))
    }

    fn write(&mut self, batch: Vec<Change>) -> Result<(), SnapshotError> {
        let mut disk = self.disk.lock().unwrap();
        let m = disk.entry(self.name.clone()).or_default();
        for (k, v) in batch {
            match v {
                Some(v) => m.insert(k, v),
                None => m.remove(&k),
            };
        }
        Ok(())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<Entry>, SnapshotError> {
        let disk = self.disk.lock().unwrap();
        Ok(disk
            .get(&self.name)
            .map(|m| {
                m.range(prefix.to_vec()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }
}

impl LocalShard for SimLocalShard {
    fn name(&self) -> &str {
        &self.name
    }

    fn position(&self) -> Result<Option<Position>, SnapshotError> {
        Ok(self.get(POSITION_KEY)?.map(|b| {
            let n: [i64; 2] = serde_json::from_slice(&b).expect("position");
            Position {
                input: n[0],
                changelog: n[1],
            }
        }))
    }

    fn set_position(&mut self, p: Position) -> Result<(), SnapshotError> {
        let b = serde_json::to_vec(&[p.input, p.changelog]).expect("encodes");
        self.write(vec![(POSITION_KEY.to_vec(), Some(b))])
    }

    fn clear(&mut self) -> Result<(), SnapshotError> {
        self.disk.lock().unwrap().remove(&self.name);
        Ok(())
    }
}

/// A member's data directory.
pub struct SimLocal {
    pub link: Rc<Link>,
    pub disk: Arc<Mutex<Disk>>,
    /// Batches committed and not written yet (lost if the member dies).
    pub queued: VecDeque<Vec<LocalWrite<SimLocalShard>>>,
    /// Batches committed.
    pub committed: u64,
}

impl LocalStore for SimLocal {
    type Shard = SimLocalShard;

    fn shard(&self, topic: &str, partition: i32) -> Result<SimLocalShard, PortError> {
        self.link.call("local open")?;
        Ok(SimLocalShard {
            disk: self.disk.clone(),
            name: format!("{topic}/{partition}"),
        })
    }

    /// Queued: a batch is written at the next call after the one that
    /// queued it, or at a flush, as a writer thread behind would.
    fn commit(&mut self, writes: Vec<LocalWrite<SimLocalShard>>) -> Result<u64, PortError> {
        self.link.call("local write")?;
        self.queued.push_back(writes);
        self.committed += 1;
        Ok(self.committed)
    }

    fn written(&mut self) -> Result<u64, PortError> {
        while self.queued.len() > 1 {
            self.write_one();
        }
        Ok(self.committed - self.queued.len() as u64)
    }

    fn flush(&mut self) -> Result<u64, PortError> {
        while !self.queued.is_empty() {
            self.write_one();
        }
        Ok(self.committed)
    }
}

impl SimLocal {
    fn write_one(&mut self) {
        if let Some(writes) = self.queued.pop_front() {
            for (mut store, changes, position) in writes {
                store.write(changes).expect("memory");
                store.set_position(position).expect("memory");
            }
        }
    }
}

/// A member's shards, called directly: each has a queue of batches it
/// takes one at a time when the scheduler lets it.
pub struct ShardsInner {
    pub shards: BTreeMap<ShardId, (Shard, VecDeque<Vec<Record>>)>,
    pub capacity: usize,
}

impl ShardsInner {
    /// Processes one queued batch of shard `id`; whether there was one.
    pub fn step(&mut self, id: ShardId, clock_ms: i64) -> bool {
        let Some((shard, queue)) = self.shards.get_mut(&id) else {
            return false;
        };
        let Some(batch) = queue.pop_front() else {
            return false;
        };
        shard.process_batch_at(batch, clock_ms);
        true
    }
}

/// The shards port: shared with the scheduler, which runs their queues.
pub struct SimShards {
    pub inner: Rc<RefCell<ShardsInner>>,
    pub link: Rc<Link>,
    pub clock: SimClock,
}

impl Shards for SimShards {
    fn start(&mut self, id: ShardId, shard: Shard) {
        self.inner
            .borrow_mut()
            .shards
            .insert(id, (shard, VecDeque::new()));
    }

    fn stop(&mut self, id: ShardId) {
        self.inner.borrow_mut().shards.remove(&id);
    }

    fn offer(&mut self, id: ShardId, batch: Vec<Record>) -> Result<(), Vec<Record>> {
        let mut inner = self.inner.borrow_mut();
        let capacity = inner.capacity;
        match inner.shards.get_mut(&id) {
            Some((_, queue)) if queue.len() < capacity => {
                queue.push_back(batch);
                Ok(())
            }
            _ => Err(batch),
        }
    }

    fn barrier(&mut self, ids: &[ShardId], barrier: Barrier) -> Vec<Option<ShardOutput>> {
        let clock_ms = (self.clock.0.get() / 1000) as i64;
        let mut inner = self.inner.borrow_mut();
        ids.iter()
            .map(|id| {
                if self.link.call("barrier").is_err() {
                    // The shard's thread died.
                    return None;
                }
                let (shard, queue) = inner.shards.get_mut(id)?;
                for batch in queue.drain(..) {
                    shard.process_batch_at(batch, clock_ms);
                }
                Some(match barrier {
                    Barrier::Checkpoint => shard.take_output(),
                    Barrier::Flush => shard.take_flush(),
                })
            })
            .collect()
    }

    fn reload(
        &mut self,
        id: ShardId,
        rules: std::sync::Arc<RuleSet>,
        engine_rules: std::sync::Arc<RuleSet>,
    ) {
        if let Some((shard, _)) = self.inner.borrow_mut().shards.get_mut(&id) {
            shard.reload(rules, engine_rules);
        }
    }

    fn persisted(&mut self, id: ShardId, batch: u64, budget_bytes: usize) {
        if let Some((shard, _)) = self.inner.borrow_mut().shards.get_mut(&id) {
            shard.persisted(batch, budget_bytes);
        }
    }
}

/// A member's restore jobs: they run when the schedule says (so a
/// rebalance, a kill or a checkpoint can fall while one runs).
#[derive(Default)]
pub struct RestoresInner {
    pub queued: VecDeque<RestoreJob<SimPorts>>,
    pub done: Vec<RestoreDone<SimPorts>>,
}

impl RestoresInner {
    /// Runs the oldest job queued; whether there was one.
    pub fn run_one(&mut self) -> bool {
        match self.queued.pop_front() {
            Some(job) => {
                self.done.push(job.run());
                true
            }
            None => false,
        }
    }
}

/// The coordinator's handle on its member's restore jobs.
pub struct SimRestorer(pub Rc<RefCell<RestoresInner>>);

impl Restorer<SimPorts> for SimRestorer {
    fn start(&mut self, job: RestoreJob<SimPorts>) {
        self.0.borrow_mut().queued.push_back(job);
    }

    fn finished(&mut self) -> Vec<RestoreDone<SimPorts>> {
        std::mem::take(&mut self.0.borrow_mut().done)
    }

    /// A stopped job ends at once: it is dropped unrun.
    fn wait(&mut self) {
        self.0.borrow_mut().queued.clear();
    }
}

/// The simulation's port types.
pub struct SimPorts;

impl Ports for SimPorts {
    type Group = SimGroup;
    type Sink = SimSink;
    type Changelog = SimChangelog;
    type Local = SimLocal;
    type Shards = SimShards;
    type Clock = SimClock;
    type Observer = Quiet;
    type Restorer = SimRestorer;
}
