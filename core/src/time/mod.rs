//! Event time: watermarks and the timer queue.
//!
//! A watermark `W` promises that no event with time `<= W` will still be
//! processed: such events are late. Per input, `W = max seen - lateness - 1`;
//! across inputs it is the minimum over the inputs that are not idle.

use crate::event::EventTime;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// The watermark before any event: everything is on time.
pub const MIN_WATERMARK: EventTime = i64::MIN;

/// The watermark of several inputs: the least over those that are not
/// idle, each given as (its watermark if it has one yet, whether it is
/// idle). An input that is not idle and has no watermark yet holds it
/// back (`None`); so does having no active input.
pub fn min_over_active(
    inputs: impl IntoIterator<Item = (Option<EventTime>, bool)>,
) -> Option<EventTime> {
    inputs
        .into_iter()
        .filter(|(_, idle)| !idle)
        .map(|(w, _)| w)
        .min()
        .flatten()
}

/// Whether an input last active at `last_active_ms` is idle at `now_ms`,
/// for an idle time of `idle_after_ms` (0: inputs never turn idle).
pub fn is_idle(last_active_ms: i64, now_ms: i64, idle_after_ms: i64) -> bool {
    idle_after_ms > 0 && now_ms.saturating_sub(last_active_ms) >= idle_after_ms
}

/// Tracks the watermark of one or more inputs (e.g. Kafka partitions).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct WatermarkTracker {
    lateness: i64,
    idle_after: i64,
    inputs: Vec<Input>,
    current: EventTime,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Input {
    max_seen: Option<EventTime>,
    /// Processing-time (ms) of the last event, for idleness.
    last_active: i64,
    idle: bool,
}

impl WatermarkTracker {
    /// A tracker for `inputs` inputs with `lateness` ms of allowed lateness; an
    /// input with no event for `idle_after` ms of processing time (0: never)
    /// stops holding the watermark back.
    pub fn new(inputs: usize, lateness: i64, idle_after: i64) -> WatermarkTracker {
        WatermarkTracker {
            lateness: lateness.max(0),
            idle_after,
            inputs: (0..inputs.max(1))
                .map(|_| Input {
                    max_seen: None,
                    last_active: 0,
                    idle: false,
                })
                .collect(),
            current: MIN_WATERMARK,
        }
    }

    /// The current watermark.
    pub fn current(&self) -> EventTime {
        self.current
    }

    /// The latest event time seen on any input, if any.
    pub fn max_seen(&self) -> Option<EventTime> {
        self.inputs.iter().filter_map(|i| i.max_seen).max()
    }

    /// Whether an event at `t` is late.
    pub fn is_late(&self, t: EventTime) -> bool {
        t <= self.current
    }

    /// Records an event at `t` on `input` (at processing time `now_ms`);
    /// returns the watermark, which never goes back.
    pub fn observe(&mut self, input: usize, t: EventTime, now_ms: i64) -> EventTime {
        if let Some(i) = self.inputs.get_mut(input) {
            i.max_seen = Some(i.max_seen.map_or(t, |m| m.max(t)));
            i.last_active = now_ms;
            i.idle = false;
        }
        self.recompute()
    }

    /// Marks inputs idle that have been quiet since `now_ms - idle_after`.
    pub fn tick(&mut self, now_ms: i64) -> EventTime {
        for i in &mut self.inputs {
            i.idle |= is_idle(i.last_active, now_ms, self.idle_after);
        }
        self.recompute()
    }

    fn recompute(&mut self) -> EventTime {
        let min = min_over_active(self.inputs.iter().map(|i| (i.max_seen, i.idle)));
        if let Some(m) = min {
            let w = m.saturating_sub(self.lateness).saturating_sub(1);
            if w > self.current {
                self.current = w;
            }
        }
        self.current
    }

    /// The watermark event time would have if it had gone on from the
    /// latest time seen for `elapsed` ms (`None`: nothing seen yet).
    pub fn projected(&self, elapsed: i64) -> Option<EventTime> {
        let max = self.max_seen()?;
        Some(
            max.saturating_add(elapsed.max(0))
                .saturating_sub(self.lateness)
                .saturating_sub(1),
        )
    }

    /// Moves the watermark to `w` (e.g. end of input); never backwards.
    pub fn advance_to(&mut self, w: EventTime) -> EventTime {
        self.current = self.current.max(w);
        self.current
    }
}

/// Event-time timers: `(deadline, owner)`, fired in deadline order (ties by
/// owner, so firing order is deterministic). Owners cancel lazily: a fired
/// timer whose owner no longer wants it is ignored by the owner, which is
/// why there is no `remove`.
#[derive(Clone, Debug)]
pub struct TimerQueue<K: Ord + Clone> {
    heap: BinaryHeap<Reverse<(EventTime, K)>>,
}

impl<K: Ord + Clone> Default for TimerQueue<K> {
    fn default() -> Self {
        TimerQueue {
            heap: BinaryHeap::new(),
        }
    }
}

impl<K: Ord + Clone> TimerQueue<K> {
    /// Registers a timer.
    pub fn insert(&mut self, at: EventTime, owner: K) {
        self.heap.push(Reverse((at, owner)));
    }

    /// Pops the earliest timer due at or before `w`.
    pub fn pop_due(&mut self, w: EventTime) -> Option<(EventTime, K)> {
        if self.heap.peek().is_some_and(|Reverse((t, _))| *t <= w) {
            self.heap.pop().map(|Reverse(e)| e)
        } else {
            None
        }
    }

    /// Number of timers (including ones their owners no longer want).
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_is_min_over_active_inputs_and_monotonic() {
        let mut w = WatermarkTracker::new(2, 10, 1000);
        assert_eq!(w.observe(0, 100, 0), MIN_WATERMARK);
        assert_eq!(w.observe(1, 50, 0), 39);
        assert!(w.is_late(39) && !w.is_late(40));
        assert_eq!(w.observe(1, 200, 0), 89);
        // Input 0 goes quiet; once idle it no longer holds the watermark back.
        w.observe(1, 300, 900);
        assert_eq!(w.tick(1000), 289);
        assert_eq!(w.observe(0, 120, 1001), 289, "never goes back");
    }

    #[test]
    fn timers_fire_in_order() {
        let mut q = TimerQueue::default();
        q.insert(5, "b");
        q.insert(3, "a");
        q.insert(9, "c");
        assert_eq!(q.pop_due(6), Some((3, "a")));
        assert_eq!(q.pop_due(6), Some((5, "b")));
        assert_eq!(q.pop_due(6), None);
        assert_eq!(q.len(), 1);
    }
}
