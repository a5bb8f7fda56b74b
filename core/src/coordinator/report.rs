//! What the protocol reports as it runs: the events a checkpoint or a rule
//! change gives the [`Observer`](super::Observer) port (logged and counted
//! by the service's telemetry), and the figures its gauges read.

use std::time::Duration;

/// One partition's share of a committed checkpoint.
#[derive(Clone, Copy, Debug)]
pub struct PartitionCommit<'a> {
    /// The topic (input or internal).
    pub topic: &'a str,
    /// The partition.
    pub partition: i32,
    /// Events committed (watermark marks not counted).
    pub events: u64,
}

/// An alert in a committed checkpoint.
#[derive(Clone, Copy, Debug)]
pub struct AlertCommit<'a> {
    /// The rule that fired.
    pub rule: &'a str,
    /// Its severity (`low` … `critical`).
    pub severity: &'static str,
    /// Of a rule in `mode shadow` (committed to the shadow topic).
    pub shadow: bool,
    /// The append time (epoch ms) of the input record that made it fire.
    pub cause_ms: Option<i64>,
    /// The traced event that made it fire, if it was traced.
    pub span: Option<&'a tracing::Span>,
}

/// A checkpoint's transaction committed: events in, alerts out, dead
/// letters, its duration and size.
#[derive(Debug, Default)]
pub struct CheckpointCommitted<'a> {
    /// Per partition that moved.
    pub partitions: Vec<PartitionCommit<'a>>,
    /// Every alert committed.
    pub alerts: Vec<AlertCommit<'a>>,
    /// Records that are not events.
    pub malformed: u64,
    /// Events at or before the watermark.
    pub late: u64,
    /// Events too far ahead of the stream.
    pub future: u64,
    /// Rule limits hit (see `tripline_rule_errors`).
    pub rule_errors: u64,
    /// Alerts not raised: their rule's `suppress` period for the key was
    /// running.
    pub silenced: u64,
    /// Records skipped after an internal error.
    pub internal: u64,
    /// Events forwarded to internal topics.
    pub forwarded: u64,
    /// Watermark marks written to internal topics.
    pub marks: usize,
    /// Bytes of state changes written to the changelogs.
    pub state_bytes: u64,
    /// From the barrier's answers until the records they brought were
    /// handed to the producer (the rest of the interval's went ahead).
    pub produced: Duration,
    /// Until the offsets were added to the transaction.
    pub offsets: Duration,
    /// Until every record was acknowledged by the brokers.
    pub delivered: Duration,
    /// Until the transaction committed (its alerts readable from then on).
    pub commit: Duration,
    /// Until the commit and the local copy of the state written.
    pub total: Duration,
    /// The commit's wall-clock time, epoch ms.
    pub committed_ms: i64,
}

/// A checkpoint failed; its transaction is rolled back and the shards
/// rewound to the last commit.
pub struct CheckpointFailed<'a> {
    /// Why.
    pub error: &'a dyn std::fmt::Display,
    /// Whether its transaction had begun (and is now aborted).
    pub aborting: bool,
}

/// What became of a rule set change while running.
#[derive(Debug)]
pub enum RulesReload<'a> {
    /// The new rules run.
    Applied {
        /// How many rules.
        rules: usize,
        /// The rule set's hash.
        hash: u64,
    },
    /// The new rules were refused; the running ones stay.
    Refused {
        /// Why.
        reason: &'a str,
    },
    /// The rule files do not compile; the running rules stay.
    Invalid {
        /// The diagnostics.
        errors: &'a str,
    },
}

/// One input or internal partition's figures, read when a metric reader asks.
#[derive(Clone, Debug)]
pub struct PartitionFigures {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The partition's end as the consumer last saw it (`None`: not yet).
    pub end_offset: Option<i64>,
    /// Whether the consumer had fetched to that end.
    pub fetched_all: bool,
    /// The offset the last checkpoint committed (`None`: none yet): that of
    /// the earliest event still waiting for the watermark, or else
    /// `covered_offset`.
    pub committed_offset: Option<i64>,
    /// The offset after the last record the last checkpoint covered
    /// (`None`: none yet).
    pub covered_offset: Option<i64>,
    /// Whether that checkpoint covered every record polled.
    pub all_committed: bool,
    /// The shard's watermark in epoch milliseconds (`None`: none yet).
    pub watermark_ms: Option<i64>,
    /// Partial matches alive in the shard's resident keys, as last counted.
    pub partial_matches: Option<u64>,
    /// Events waiting for the shard's watermark, at the last checkpoint.
    pub waiting_events: u64,
}

impl PartitionFigures {
    /// Records between what the last checkpoint covered and the
    /// partition's end (`None`: one of them is not known yet). Events
    /// waiting for the watermark are not lag: they were read and are held
    /// for it.
    pub fn lag(&self) -> Option<i64> {
        let (end, committed) = (
            self.end_offset?,
            self.covered_offset.or(self.committed_offset)?,
        );
        // Fetched to the end and all of it committed: what remains between
        // the offset and the end are transaction markers, not records.
        Some(if self.fetched_all && self.all_committed {
            0
        } else {
            (end - committed).max(0)
        })
    }

    /// Wall clock (`now_ms`) minus the watermark, in seconds.
    pub fn watermark_delay(&self, now_ms: i64) -> Option<f64> {
        self.watermark_ms.map(|w| (now_ms - w) as f64 / 1000.0)
    }
}

/// The service's gauges, read when a metric reader asks.
#[derive(Clone, Debug, Default)]
pub struct ServiceFigures {
    /// Partitions this process holds.
    pub partitions_assigned: u64,
    /// Changelog partitions being restored.
    pub partitions_restoring: u64,
    /// Keys whose state is in memory.
    pub keys_resident: u64,
    /// Keys whose state is only in the data directory.
    pub keys_passivated: u64,
    /// Estimated memory resident keys hold.
    pub state_bytes: u64,
    /// Partitions paused so far because their shard could not keep up.
    pub backpressure_pauses: u64,
    /// Checkpoints failed since the last that committed (0 while they commit).
    pub checkpoints_failed_in_a_row: u64,
    /// Per partition.
    pub partitions: Vec<PartitionFigures>,
}
