//! The coordinator's shards as actix actors, spread over the service's
//! arbiters, with bounded mailboxes; and the directory through which the
//! REST API queries them.

use crate::coordinator::{ShardId, Shards};
use crate::engine::RuleSet;
use crate::runtime::{
    Barrier, Cut, KeyQuery, Persisted, Record, Records, Reload, Shard, ShardActor, ShardOutput,
};
use actix::dev::SendError;
use actix::{Actor, Addr, ArbiterHandle};
use futures::executor::block_on;
use futures::future::join_all;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The shards this process runs, for queries from outside the coordinator
/// (the REST API reads key state through it).
pub struct ShardDirectory {
    shards: RwLock<Vec<(ShardId, Addr<ShardActor>)>>,
    input_partitions: i32,
}

impl ShardDirectory {
    /// An empty directory for an input topic of `input_partitions`.
    pub fn new(input_partitions: i32) -> ShardDirectory {
        ShardDirectory {
            shards: RwLock::default(),
            input_partitions,
        }
    }

    /// Partitions of the input topic.
    pub fn input_partitions(&self) -> i32 {
        self.input_partitions
    }

    /// Whether a shard of this instance holds `partition` of the input topic.
    pub fn holds_input(&self, partition: i32) -> bool {
        self.shards
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .any(|(id, _)| *id == (0, partition))
    }

    /// One key's live state in whichever local shard holds it (each shard
    /// answers for the keys of its partition; a key lives in one).
    pub async fn key_view(&self, key: String) -> Result<Vec<serde_json::Value>, String> {
        let shards = self
            .shards
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let answers = join_all(shards.iter().map(|(_, a)| a.send(KeyQuery(key.clone())))).await;
        let mut found = Vec::new();
        for a in answers {
            found.extend(a.map_err(|e| format!("a shard did not answer: {e}"))?);
        }
        Ok(found)
    }

    fn publish(&self, shards: &BTreeMap<ShardId, Addr<ShardActor>>) {
        *self
            .shards
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            shards.iter().map(|(id, a)| (*id, a.clone())).collect();
    }
}

/// Shard actors, started round-robin on the arbiters.
pub struct ActorShards {
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: usize,
    /// Batches a shard's mailbox holds before it refuses more.
    capacity: usize,
    /// How long a full shard is waited for before its batch is refused.
    patience: Duration,
    addrs: BTreeMap<ShardId, Addr<ShardActor>>,
    directory: Arc<ShardDirectory>,
}

impl ActorShards {
    /// Shards on `arbiters`, each with a mailbox of `capacity` batches,
    /// waited for `patience` when full; published in `directory`.
    pub fn new(
        arbiters: Vec<ArbiterHandle>,
        capacity: usize,
        patience: Duration,
        directory: Arc<ShardDirectory>,
    ) -> ActorShards {
        ActorShards {
            arbiters,
            next_arbiter: 0,
            capacity,
            patience,
            addrs: BTreeMap::new(),
            directory,
        }
    }
}

impl Shards for ActorShards {
    fn start(&mut self, id: ShardId, shard: Shard) {
        let arbiter = &self.arbiters[self.next_arbiter % self.arbiters.len()];
        self.next_arbiter += 1;
        let capacity = self.capacity;
        let addr = ShardActor::start_in_arbiter(arbiter, move |ctx| {
            ctx.set_mailbox_capacity(capacity);
            ShardActor(shard)
        });
        self.addrs.insert(id, addr);
        self.directory.publish(&self.addrs);
    }

    fn stop(&mut self, id: ShardId) {
        // The actor stops once its last address is dropped.
        if self.addrs.remove(&id).is_some() {
            self.directory.publish(&self.addrs);
        }
    }

    fn offer(&mut self, id: ShardId, batch: Vec<Record>) -> Result<(), Vec<Record>> {
        let Some(addr) = self.addrs.get(&id) else {
            return Err(batch);
        };
        // A fetch response lands as one burst: a shard that is full now is
        // usually free again within a few milliseconds. Pausing costs more
        // (the consumer drops what it fetched ahead and fetches it again),
        // so a full shard is waited for that long before its partition is
        // paused.
        let started = super::service::now();
        let mut batch = Records(batch);
        loop {
            match addr.try_send(batch) {
                Ok(()) => return Ok(()),
                Err(SendError::Full(b)) if started.elapsed() < self.patience => {
                    batch = b;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(SendError::Full(Records(b)) | SendError::Closed(Records(b))) => return Err(b),
            }
        }
    }

    fn barrier(&mut self, ids: &[ShardId], barrier: Barrier) -> Vec<Option<ShardOutput>> {
        let sends = ids.iter().map(|id| {
            let addr = self.addrs.get(id).cloned();
            async move { addr?.send(Cut(barrier)).await.ok() }
        });
        block_on(join_all(sends))
    }

    fn reload(&mut self, id: ShardId, rules: Arc<RuleSet>, engine_rules: Arc<RuleSet>) {
        if let Some(addr) = self.addrs.get(&id) {
            // Past the mailbox bound on purpose: the swap must not wait
            // behind a full mailbox, and it is one message per shard.
            addr.do_send(Reload(rules, engine_rules));
        }
    }

    fn persisted(&mut self, id: ShardId, batch: u64, budget_bytes: usize) {
        if let Some(addr) = self.addrs.get(&id) {
            addr.do_send(Persisted {
                batch,
                budget_bytes,
            });
        }
    }
}
