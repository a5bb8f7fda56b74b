//! A watch on the service loop: how long since it last polled, and what it
//! is doing. A group member that goes longer than `max.poll.interval.ms`
//! without polling is put out of its group, and the log then only says
//! that it was; the watch says, while it happens, which step holds the
//! loop (a checkpoint waiting on the broker, a rebalance callback, a
//! flush), so that an operator knows what to look at.

use crate::adapters::worker::{Stop, Worker};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::time::Duration;

/// What the service loop is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Polling the consumer (waiting for records).
    Poll = 0,
    /// Handing polled records to the coordinator.
    Records,
    /// Starting restored shards.
    Restores,
    /// Handing batches to the shards.
    HandOver,
    /// Producing the shards' output ahead of a checkpoint.
    Flush,
    /// Committing a checkpoint (barrier, produce, commit).
    Checkpoint,
    /// Rewinding after a failed checkpoint.
    Recover,
    /// In a rebalance callback: revoking (a checkpoint first).
    Revoke,
    /// In a rebalance callback: assigning.
    Assign,
}

impl Phase {
    const ALL: [Phase; 9] = [
        Phase::Poll,
        Phase::Records,
        Phase::Restores,
        Phase::HandOver,
        Phase::Flush,
        Phase::Checkpoint,
        Phase::Recover,
        Phase::Revoke,
        Phase::Assign,
    ];

    fn name(self) -> &'static str {
        match self {
            Phase::Poll => "polling",
            Phase::Records => "handing polled records over",
            Phase::Restores => "starting restored shards",
            Phase::HandOver => "handing batches to the shards",
            Phase::Flush => "flushing output ahead of a checkpoint",
            Phase::Checkpoint => "committing a checkpoint",
            Phase::Recover => "rewinding after a failed checkpoint",
            Phase::Revoke => "revoking partitions (checkpointing first)",
            Phase::Assign => "assigning partitions",
        }
    }
}

/// Where the loop is, shared with the watch thread.
#[derive(Debug, Default)]
pub struct LoopState {
    /// When the loop last entered a poll (epoch ms).
    polled_ms: AtomicI64,
    phase: AtomicU8,
}

impl LoopState {
    /// The loop enters a poll.
    pub fn polling(&self) {
        self.polled_ms
            .store(crate::telemetry::now_ms(), Ordering::Relaxed);
        self.phase.store(Phase::Poll as u8, Ordering::Relaxed);
    }

    /// The loop (or a callback inside its poll) moves to `phase`.
    pub fn enter(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    fn phase(&self) -> Phase {
        let p = self.phase.load(Ordering::Relaxed);
        Phase::ALL
            .into_iter()
            .find(|x| *x as u8 == p)
            .unwrap_or(Phase::Poll)
    }
}

/// Starts the watch: it warns once per stall when the loop has gone
/// `warn_after` without polling (outside a poll's own wait).
pub fn start(state: Arc<LoopState>, warn_after: Duration) -> Option<Worker> {
    let spawned = Worker::spawn("tripline-loop-watch", move |stop: Stop| {
        let mut warned_for = 0;
        while !stop.requested() {
            std::thread::sleep(Duration::from_millis(250));
            let since = state.polled_ms.load(Ordering::Relaxed);
            let phase = state.phase();
            if since == 0 || phase == Phase::Poll {
                continue;
            }
            let idle = crate::telemetry::now_ms().saturating_sub(since);
            if idle >= warn_after.as_millis() as i64 && warned_for != since {
                warned_for = since;
                tracing::warn!(
                    seconds = idle / 1000,
                    step = phase.name(),
                    "the service loop has not polled for {} s: it is {}; past \
                     kafka.max_poll_interval_ms the group takes this member's partitions away",
                    idle / 1000,
                    phase.name()
                );
            }
        }
        Ok(())
    });
    match spawned {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!("the service loop runs unwatched: {e}");
            None
        }
    }
}
