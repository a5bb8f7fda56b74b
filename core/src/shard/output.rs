//! What a shard produces between two barriers: alerts, forwarded events,
//! dead letters (bounded in size), state changes and figures.

use crate::event::EventTime;
use crate::rules::Severity;
use crate::state::{Change, SnapshotError};
use std::sync::Arc;

/// A record to produce.
#[derive(Clone, Debug, PartialEq)]
pub struct OutRecord {
    /// Record key.
    pub key: Vec<u8>,
    /// Record value.
    pub value: Vec<u8>,
}

/// An alert to produce, with what telemetry reports of it.
#[derive(Clone, Debug)]
pub struct AlertRecord {
    /// The record: keyed by the rule's key, the alert's JSON as value.
    pub record: OutRecord,
    /// The rule that fired.
    pub rule: Arc<str>,
    /// Its severity.
    pub severity: Severity,
    /// Of a rule in `mode shadow`: produced to the shadow topic.
    pub shadow: bool,
    /// The append time of the input record whose processing made it fire.
    pub cause_ms: Option<i64>,
    /// That record's span, when it is traced.
    pub span: Option<tracing::Span>,
}

/// Why a record was dead-lettered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadLetterKind {
    /// It could not be decoded as an event.
    Malformed,
    /// It arrived at or before the watermark.
    Late,
    /// Its time is further ahead than the stream allows (`skew`, `clock
    /// skew`); it did not move the watermark.
    Future,
    /// Processing it failed inside tripline (a bug); it was skipped.
    Internal,
}

impl DeadLetterKind {
    /// The name written to the dead-letter record's headers.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterKind::Malformed => "malformed",
            DeadLetterKind::Late => "late",
            DeadLetterKind::Future => "future",
            DeadLetterKind::Internal => "internal",
        }
    }
}

/// An input record that was not processed, and why.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// What went wrong, in a word.
    pub kind: DeadLetterKind,
    /// What went wrong, for people.
    pub reason: String,
    /// The record's offset in the input partition.
    pub offset: i64,
    /// The record's key.
    pub key: Option<Vec<u8>>,
    /// The record's value, unchanged (`None`: the record had none).
    pub value: Option<Vec<u8>>,
}

impl DeadLetter {
    /// This dead letter within `limit` bytes of key and value: a value that
    /// does not fit is left out, and the reason gives its size and XXH3-128
    /// hash (the record itself stays in the input topic at its offset); a
    /// key over [`crate::event::MAX_KEY_BYTES`] likewise.
    pub fn within(mut self, limit: usize) -> DeadLetter {
        // A reason may quote the record (an unreadable time's value).
        if self.reason.len() > MAX_REASON_BYTES {
            let mut end = MAX_REASON_BYTES;
            while !self.reason.is_char_boundary(end) {
                end -= 1;
            }
            self.reason.truncate(end);
            self.reason.push('…');
        }
        if self
            .key
            .as_ref()
            .is_some_and(|k| k.len() > crate::event::MAX_KEY_BYTES)
        {
            let key = self.key.take().unwrap_or_default();
            self.reason.push_str(&omitted_note("key", &key));
        }
        let key_len = self.key.as_ref().map_or(0, Vec::len);
        if self
            .value
            .as_ref()
            .is_some_and(|v| key_len + v.len() > limit)
        {
            let value = self.value.take().unwrap_or_default();
            self.reason.push_str(&omitted_note("value", &value));
        }
        self
    }
}

/// The longest dead-letter reason kept whole.
const MAX_REASON_BYTES: usize = 512;

/// How a dead letter says what it left out.
fn omitted_note(what: &str, bytes: &[u8]) -> String {
    format!(
        "; the record's {what} ({} bytes, xxh3-128 {:032x}) is left out: over the output limit",
        bytes.len(),
        xxhash_rust::xxh3::xxh3_128(bytes)
    )
}

/// What a shard produced between two barriers.
#[derive(Debug, Default)]
pub struct ShardOutput {
    /// Alerts, keyed by the rule's key.
    pub alerts: Vec<AlertRecord>,
    /// Events for internal topics: (target, record).
    pub forwarded: Vec<(usize, OutRecord)>,
    /// Feature log rows, keyed by the event's stream key (with a feature
    /// log only; see [`super::Shard::with_feature_log`]).
    pub features: Vec<OutRecord>,
    /// The shard's watermark.
    pub watermark: EventTime,
    /// Records that were not processed.
    pub dead_letters: Vec<DeadLetter>,
    /// The offset to commit (`None`: none yet): that of the earliest event
    /// still waiting for the watermark, which the state leaves to the input
    /// (see [`super::InputCut`]), or else `covered_offset`.
    pub next_offset: Option<i64>,
    /// The offset after the last record the output covers (`None`: none
    /// yet).
    pub covered_offset: Option<i64>,
    /// Records processed since the last barrier.
    pub records: u64,
    /// Of these, watermark marks.
    pub marks: u64,
    /// Rule failures since the last barrier (logged; processing went on).
    pub rule_errors: u64,
    /// Alerts not raised since the last barrier because their rule's
    /// `suppress` period for the key was running.
    pub silenced: u64,
    /// The state changes since the last barrier, as a store batch (empty
    /// when no record was processed): what the changelog records.
    pub state: Vec<Change>,
    /// The number of that batch (see [`Persisted`]).
    pub batch: u64,
    /// Passivated state could not be read back: this output is wrong and
    /// must not be committed; the shard must be rebuilt from its store.
    pub state_error: Option<SnapshotError>,
    /// Passivation counters, when on.
    pub passivation: Option<crate::engine::PassivationStats>,
    /// Keys resident in memory.
    pub resident_keys: u64,
    /// Partial matches alive in resident keys, when counted (every
    /// [`PARTIALS_EVERY`] barriers: the count walks every resident key).
    pub partial_matches: Option<u64>,
    /// Events waiting for the watermark to pass their time.
    pub waiting_events: u64,
}

impl ShardOutput {
    /// Nothing to commit: no record processed and nothing produced (a
    /// reload's migrated state or dead letters count, with no record).
    pub fn is_empty(&self) -> bool {
        self.records == 0 && self.produces_nothing()
    }

    /// Joins `later`, the output that followed this one, into this one:
    /// what was produced is appended (state changes in order, so later ones
    /// win), counts add up, and the position and figures are `later`'s.
    pub fn absorb(&mut self, later: ShardOutput) {
        self.alerts.extend(later.alerts);
        self.forwarded.extend(later.forwarded);
        self.features.extend(later.features);
        self.dead_letters.extend(later.dead_letters);
        self.state.extend(later.state);
        self.records += later.records;
        self.marks += later.marks;
        self.rule_errors += later.rule_errors;
        self.silenced += later.silenced;
        self.watermark = later.watermark;
        self.next_offset = later.next_offset.or(self.next_offset);
        self.covered_offset = later.covered_offset.or(self.covered_offset);
        self.batch = later.batch;
        self.state_error = later.state_error.or(self.state_error.take());
        self.passivation = later.passivation;
        self.resident_keys = later.resident_keys;
        self.partial_matches = later.partial_matches.or(self.partial_matches);
        self.waiting_events = later.waiting_events;
    }

    /// Nothing to produce: no alert, forwarded event, feature row, dead
    /// letter or state change (records may have been processed).
    pub fn produces_nothing(&self) -> bool {
        self.alerts.is_empty()
            && self.forwarded.is_empty()
            && self.features.is_empty()
            && self.dead_letters.is_empty()
            && self.state.is_empty()
    }
}
