//! The outbox: every delivery not yet finished, with its alert, and the
//! status of every delivery (finished ones for `webhooks.status_retention`),
//! in a RocksDB database of its own under the data directory.
//!
//! Keys: `q{endpoint}\0{seq}` (big-endian, so an endpoint's deliveries
//! iterate in the order they were queued) → [`Queued`]; `s{alert id}\0{endpoint}`
//! → [`Status`]. A queued delivery always has a status record; a status
//! record without a queued one is finished.

use rocksdb::{DB, DBIterator, Direction, IteratorMode, Options, ReadOptions, WriteBatch};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// An outbox that failed: the operation and RocksDB's reason.
#[derive(Debug, thiserror::Error)]
#[error("webhook outbox: {what}: {source}")]
pub struct OutboxError {
    what: &'static str,
    #[source]
    source: rocksdb::Error,
}

fn err(what: &'static str) -> impl FnOnce(rocksdb::Error) -> OutboxError {
    move |source| OutboxError { what, source }
}

/// A delivery waiting for its endpoint: the alert and where it was read.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Queued {
    /// The alert's id (the `Idempotency-Key`).
    pub alert_id: String,
    /// The alerts-topic record's key: deliveries of one key go in order.
    pub key: Vec<u8>,
    /// The alerts-topic partition it was read from.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
    /// The alert's JSON, the request body.
    pub body: Vec<u8>,
}

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Queued, not tried yet.
    Pending,
    /// Tried and failed; tried again at `next_attempt`.
    Retrying,
    /// The endpoint answered 2xx.
    Delivered,
    /// Given up, and written to the webhooks' dead-letter topic.
    Dead,
}

/// A delivery's status (kept for finished deliveries too).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    /// Where it stands.
    pub state: State,
    /// Requests made.
    pub attempts: u32,
    /// When it was queued (ms since the epoch).
    pub queued_ms: i64,
    /// When the first request was made.
    pub first_attempt_ms: Option<i64>,
    /// When the last request was made.
    pub last_attempt_ms: Option<i64>,
    /// When the next request is due.
    pub next_attempt_ms: i64,
    /// The last failure.
    pub last_error: Option<String>,
    /// The last HTTP status received.
    pub last_status: Option<u16>,
    /// When it was delivered or given up.
    pub finished_ms: Option<i64>,
}

impl Status {
    /// A delivery queued at `now_ms`, due at once.
    pub fn queued(now_ms: i64) -> Status {
        Status {
            state: State::Pending,
            attempts: 0,
            queued_ms: now_ms,
            first_attempt_ms: None,
            last_attempt_ms: None,
            next_attempt_ms: now_ms,
            last_error: None,
            last_status: None,
            finished_ms: None,
        }
    }
}

/// A queued delivery as listed at start: enough to rebuild the counters.
pub struct Listed {
    /// The endpoint's name.
    pub endpoint: String,
    /// Its position in the endpoint's queue.
    pub seq: u64,
    /// The delivery.
    pub queued: Queued,
}

/// The outbox database.
pub struct Outbox {
    db: DB,
}

fn queue_key(endpoint: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(endpoint.len() + 10);
    k.push(b'q');
    k.extend_from_slice(endpoint.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn status_key(alert_id: &str, endpoint: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(alert_id.len() + endpoint.len() + 2);
    k.push(b's');
    k.extend_from_slice(alert_id.as_bytes());
    k.push(0);
    k.extend_from_slice(endpoint.as_bytes());
    k
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // postcard only fails on writers that fail, and a Vec does not.
    postcard::to_allocvec(v).unwrap_or_default()
}

/// The first key past every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            break;
        }
    }
    end
}

impl Outbox {
    /// Iterates from `from` to the end of `prefix`. The bound matters: past
    /// it, a scan would wade through the deletions of other endpoints'
    /// finished deliveries before finding the next live key.
    fn scan(&self, from: &[u8], prefix: &[u8]) -> DBIterator<'_> {
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(prefix_end(prefix));
        self.db
            .iterator_opt(IteratorMode::From(from, Direction::Forward), opts)
    }

    /// Opens (or creates) the outbox in `dir`.
    pub fn open(dir: &Path) -> Result<Outbox, OutboxError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        let db = DB::open(&opts, dir).map_err(err("opening"))?;
        Ok(Outbox { db })
    }

    /// Queues deliveries (`(endpoint, seq, delivery)`) and their status in
    /// one atomic write.
    pub fn enqueue(&self, items: &[(&str, u64, Queued)], now_ms: i64) -> Result<(), OutboxError> {
        let mut b = WriteBatch::default();
        let status = encode(&Status::queued(now_ms));
        for (endpoint, seq, q) in items {
            b.put(queue_key(endpoint, *seq), encode(q));
            b.put(status_key(&q.alert_id, endpoint), &status);
        }
        self.db.write(b).map_err(err("queueing deliveries"))
    }

    /// Whether the alert was ever queued for the endpoint (and its status
    /// is still kept).
    pub fn known(&self, alert_id: &str, endpoint: &str) -> Result<bool, OutboxError> {
        Ok(self
            .db
            .get_pinned(status_key(alert_id, endpoint))
            .map_err(err("reading a status"))?
            .is_some())
    }

    /// Up to `limit` of the endpoint's queued deliveries from `seq` on, with
    /// their status.
    pub fn load(
        &self,
        endpoint: &str,
        seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Queued, Status)>, OutboxError> {
        let from = queue_key(endpoint, seq);
        let prefix = &from[..from.len() - 8];
        let mut out = Vec::new();
        for kv in self.scan(&from, prefix) {
            let (k, v) = kv.map_err(err("reading the queue"))?;
            if !k.starts_with(prefix) || k.len() != prefix.len() + 8 || out.len() >= limit {
                break;
            }
            let seq = u64::from_be_bytes(k[prefix.len()..].try_into().unwrap_or_default());
            let Ok(q) = postcard::from_bytes::<Queued>(&v) else {
                tracing::error!(endpoint, seq, "unreadable queued delivery skipped");
                continue;
            };
            let status = self
                .status(&q.alert_id, endpoint)?
                .unwrap_or_else(|| Status::queued(0));
            out.push((seq, q, status));
        }
        Ok(out)
    }

    /// Whether a queued delivery is still queued.
    pub fn is_queued(&self, endpoint: &str, seq: u64) -> Result<bool, OutboxError> {
        Ok(self
            .db
            .get_pinned(queue_key(endpoint, seq))
            .map_err(err("reading the queue"))?
            .is_some())
    }

    /// A delivery's status.
    pub fn status(&self, alert_id: &str, endpoint: &str) -> Result<Option<Status>, OutboxError> {
        let v = self
            .db
            .get_pinned(status_key(alert_id, endpoint))
            .map_err(err("reading a status"))?;
        Ok(v.and_then(|v| postcard::from_bytes(&v).ok()))
    }

    /// Every endpoint's status for an alert, by endpoint name.
    pub fn statuses(&self, alert_id: &str) -> Result<Vec<(String, Status)>, OutboxError> {
        let mut prefix = vec![b's'];
        prefix.extend_from_slice(alert_id.as_bytes());
        prefix.push(0);
        let mut out = Vec::new();
        for kv in self.scan(&prefix, &prefix) {
            let (k, v) = kv.map_err(err("reading statuses"))?;
            if !k.starts_with(&prefix) {
                break;
            }
            if let Ok(s) = postcard::from_bytes(&v) {
                out.push((String::from_utf8_lossy(&k[prefix.len()..]).into_owned(), s));
            }
        }
        Ok(out)
    }

    /// Records a new status of a queued delivery.
    pub fn update(&self, alert_id: &str, endpoint: &str, s: &Status) -> Result<(), OutboxError> {
        self.db
            .put(status_key(alert_id, endpoint), encode(s))
            .map_err(err("recording a status"))
    }

    /// Takes a delivery off the queue with its final status.
    pub fn finish(
        &self,
        endpoint: &str,
        seq: u64,
        alert_id: &str,
        s: &Status,
    ) -> Result<(), OutboxError> {
        let mut b = WriteBatch::default();
        b.delete(queue_key(endpoint, seq));
        b.put(status_key(alert_id, endpoint), encode(s));
        self.db.write(b).map_err(err("finishing a delivery"))
    }

    /// Forgets queued deliveries and their status altogether (their
    /// partition went to another instance, which delivers them).
    pub fn forget(&self, items: &[(String, u64, String)]) -> Result<(), OutboxError> {
        let mut b = WriteBatch::default();
        for (endpoint, seq, alert_id) in items {
            b.delete(queue_key(endpoint, *seq));
            b.delete(status_key(alert_id, endpoint));
        }
        self.db.write(b).map_err(err("forgetting deliveries"))
    }

    /// Every queued delivery, for the counters and the partitions' low
    /// watermarks at start.
    pub fn list(&self) -> Result<Vec<Listed>, OutboxError> {
        let mut out = Vec::new();
        for kv in self.scan(b"q", b"q") {
            let (k, v) = kv.map_err(err("listing the queue"))?;
            if k.first() != Some(&b'q') {
                break;
            }
            let Some(split) = k.len().checked_sub(9).filter(|&i| k[i] == 0) else {
                continue;
            };
            let (Ok(queued), Ok(seq)) = (
                postcard::from_bytes::<Queued>(&v),
                <[u8; 8]>::try_from(&k[split + 1..]),
            ) else {
                continue;
            };
            out.push(Listed {
                endpoint: String::from_utf8_lossy(&k[1..split]).into_owned(),
                seq: u64::from_be_bytes(seq),
                queued,
            });
        }
        Ok(out)
    }

    /// Deletes the status of deliveries finished before `before_ms`;
    /// returns how many.
    pub fn prune(&self, before_ms: i64) -> Result<usize, OutboxError> {
        let mut b = WriteBatch::default();
        for kv in self.scan(b"s", b"s") {
            let (k, v) = kv.map_err(err("pruning statuses"))?;
            if k.first() != Some(&b's') {
                break;
            }
            let old = postcard::from_bytes::<Status>(&v)
                .map(|s| s.finished_ms.is_some_and(|t| t < before_ms))
                .unwrap_or(false);
            if old {
                b.delete(&k);
            }
        }
        let n = b.len();
        self.db.write(b).map_err(err("pruning statuses"))?;
        Ok(n)
    }

    /// Makes every write so far durable (before the alerts topic's offsets
    /// are committed past them).
    pub fn sync(&self) -> Result<(), OutboxError> {
        self.db.flush_wal(true).map_err(err("syncing"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(id: &str, offset: i64) -> Queued {
        Queued {
            alert_id: id.into(),
            key: b"k".to_vec(),
            partition: 1,
            offset,
            body: b"{}".to_vec(),
        }
    }

    #[test]
    fn queues_in_order_and_keeps_the_status_of_finished_deliveries() {
        let dir = tempdir("order");
        let o = Outbox::open(&dir).unwrap();
        o.enqueue(
            &[
                ("a", 2, queued("x2", 20)),
                ("a", 1, queued("x1", 10)),
                ("ab", 0, queued("y", 5)),
            ],
            100,
        )
        .unwrap();
        let got: Vec<u64> = o.load("a", 0, 10).unwrap().iter().map(|x| x.0).collect();
        assert_eq!(got, [1, 2], "endpoint `ab` is not part of `a`");
        assert_eq!(o.load("a", 2, 10).unwrap().len(), 1);
        assert_eq!(o.list().unwrap().len(), 3);
        assert!(o.known("x1", "a").unwrap() && !o.known("x1", "ab").unwrap());
        let mut s = Status::queued(100);
        s.state = State::Delivered;
        s.finished_ms = Some(150);
        o.finish("a", 1, "x1", &s).unwrap();
        assert!(!o.is_queued("a", 1).unwrap());
        assert_eq!(o.statuses("x1").unwrap()[0].1.state, State::Delivered);
        assert_eq!(o.prune(151).unwrap(), 1);
        assert!(!o.known("x1", "a").unwrap());
        assert!(o.known("x2", "a").unwrap(), "unfinished statuses stay");
        drop(o);
        let o = Outbox::open(&dir).unwrap();
        assert_eq!(o.list().unwrap().len(), 2, "kept across a reopen");
        std::fs::remove_dir_all(dir).ok();
    }

    fn tempdir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("tripline-outbox-{name}-{}", std::process::id()));
        std::fs::remove_dir_all(&d).ok();
        d
    }
}
