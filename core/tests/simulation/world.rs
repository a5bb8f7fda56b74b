//! The simulated cluster: logs with transactions (read_committed readers
//! see committed records only), a consumer group with a generation that
//! fences members who lost their partitions, producer epochs that fence a
//! crashed member's producer, and each member's disk (its local store,
//! which survives its crashes).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A transaction's fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnState {
    Open,
    Committed,
    Aborted,
}

/// One record of a log.
#[derive(Debug, Clone)]
pub struct LogRecord {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// 0: written outside a transaction (the input).
    pub txn: u64,
}

/// An open transaction's staged input offsets and the member that owns it.
#[derive(Debug, Default)]
pub struct Txn {
    pub state: Option<TxnState>,
    pub member: usize,
    pub offsets: Vec<(String, i32, i64)>,
}

/// A deliberate bug in the cluster, to show the invariants catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// An aborted transaction's records stay visible.
    AbortKeepsRecords,
    /// A commit applies its offsets but not its records.
    CommitDropsRecords,
}

#[derive(Debug, Default)]
pub struct World {
    pub logs: BTreeMap<(String, i32), Vec<LogRecord>>,
    pub txns: BTreeMap<u64, Txn>,
    pub next_txn: u64,
    /// The group's committed offsets.
    pub committed: BTreeMap<(String, i32), i64>,
    /// The group's generation: bumped by every rebalance.
    pub generation: u64,
    /// Which member owns each input partition now.
    pub owner: BTreeMap<(String, i32), usize>,
    /// Each member's producer epoch; an older epoch is fenced.
    pub epoch: BTreeMap<usize, u64>,
    /// Each member's disk: store name → entries.
    pub disks: BTreeMap<usize, Arc<Mutex<Disk>>>,
    pub bug: Option<Bug>,
}

/// A member's data directory.
pub type Disk = BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>;

impl World {
    pub fn log(&self, topic: &str, partition: i32) -> &[LogRecord] {
        self.logs
            .get(&(topic.to_string(), partition))
            .map_or(&[], Vec::as_slice)
    }

    pub fn append(&mut self, topic: &str, partition: i32, record: LogRecord) -> i64 {
        let log = self.logs.entry((topic.to_string(), partition)).or_default();
        log.push(record);
        log.len() as i64 - 1
    }

    /// Whether a read_committed reader sees the record.
    pub fn visible(&self, r: &LogRecord) -> bool {
        if r.txn == 0 {
            return true;
        }
        match self.txns.get(&r.txn).and_then(|t| t.state) {
            Some(TxnState::Committed) => self.bug != Some(Bug::CommitDropsRecords),
            Some(TxnState::Aborted) => self.bug == Some(Bug::AbortKeepsRecords),
            _ => false,
        }
    }

    /// The offset a read_committed reader stops before: the first record
    /// of a transaction still open (the last stable offset).
    pub fn stable_end(&self, topic: &str, partition: i32) -> i64 {
        let log = self.log(topic, partition);
        log.iter()
            .position(|r| {
                r.txn != 0 && self.txns.get(&r.txn).and_then(|t| t.state) == Some(TxnState::Open)
            })
            .map_or(log.len() as i64, |i| i as i64)
    }

    pub fn begin(&mut self, member: usize) -> u64 {
        self.next_txn += 1;
        self.txns.insert(
            self.next_txn,
            Txn {
                state: Some(TxnState::Open),
                member,
                offsets: Vec::new(),
            },
        );
        self.next_txn
    }

    pub fn commit(&mut self, txn: u64) {
        let t = self.txns.get_mut(&txn).expect("known transaction");
        t.state = Some(TxnState::Committed);
        if std::env::var("SIM_TRACE").is_ok() {
            eprintln!("commit txn {txn} of m{}: offsets {:?}", t.member, t.offsets);
        }
        for (topic, p, next) in std::mem::take(&mut t.offsets) {
            self.committed.insert((topic, p), next);
        }
    }

    pub fn abort(&mut self, txn: u64) {
        if let Some(t) = self.txns.get_mut(&txn) {
            t.state = Some(TxnState::Aborted);
            t.offsets.clear();
        }
    }

    /// Aborts every open transaction of `member` (a new producer of the same
    /// identity fences the old one).
    pub fn fence(&mut self, member: usize) {
        let open: Vec<u64> = self
            .txns
            .iter()
            .filter(|(_, t)| t.member == member && t.state == Some(TxnState::Open))
            .map(|(id, _)| *id)
            .collect();
        for id in open {
            self.abort(id);
        }
        *self.epoch.entry(member).or_default() += 1;
    }

    pub fn disk(&mut self, member: usize) -> Arc<Mutex<Disk>> {
        self.disks.entry(member).or_default().clone()
    }
}
