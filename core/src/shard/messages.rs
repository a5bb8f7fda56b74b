//! What travels to a shard: input records (with the watermark marks of
//! internal topics) and the barriers that cut its output; and a shard's
//! role in the topology.

use crate::event::{EventTime, Slot};

/// One input record, copied out of the client's buffers.
#[derive(Clone, Debug)]
pub struct Record {
    /// Its offset in the partition.
    pub offset: i64,
    /// Its key, if any.
    pub key: Option<Vec<u8>>,
    /// Its value (`None`: a tombstone, dead-lettered).
    pub payload: Option<Vec<u8>>,
    /// Set on the watermark records of internal topics.
    pub mark: Option<WatermarkMark>,
    /// When the broker appended it (epoch ms), if known: the start of the
    /// latency of the alerts it makes fire.
    pub timestamp_ms: Option<i64>,
    /// Set when its path to its alerts is traced.
    pub span: Option<tracing::Span>,
    /// On an internal topic, the stream the event is of (the
    /// [`STREAM_HEADER`]), when the rules have several.
    pub stream: Option<Box<str>>,
}

/// The header that says which stream a record forwarded to an internal
/// topic is of, when the rules define several.
pub const STREAM_HEADER: &str = "tripline.stream";

impl Record {
    /// A data record.
    pub fn data(offset: i64, key: Option<Vec<u8>>, payload: Option<Vec<u8>>) -> Record {
        Record {
            offset,
            key,
            payload,
            mark: None,
            timestamp_ms: None,
            span: None,
            stream: None,
        }
    }
}

/// A source partition's watermark, as written into internal topics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WatermarkMark {
    /// The source partition.
    pub source: u32,
    /// Its watermark.
    pub watermark: EventTime,
    /// It has had no input for the configured idle time and no longer holds
    /// the watermark back.
    pub idle: bool,
}

impl WatermarkMark {
    /// The header value that carries a mark: `source:watermark:idle`.
    pub fn encode(&self) -> String {
        format!("{}:{}:{}", self.source, self.watermark, u8::from(self.idle))
    }

    /// Reads [`WatermarkMark::encode`]'s form.
    pub fn decode(s: &[u8]) -> Option<WatermarkMark> {
        let s = std::str::from_utf8(s).ok()?;
        let mut it = s.split(':');
        let m = WatermarkMark {
            source: it.next()?.parse().ok()?,
            watermark: it.next()?.parse().ok()?,
            idle: match it.next()? {
                "0" => false,
                "1" => true,
                _ => return None,
            },
        };
        it.next().is_none().then_some(m)
    }
}

/// Where a source shard forwards events for rules keyed by another field.
#[derive(Clone, Copy, Debug)]
pub struct Forward {
    /// Index of the target among the internal topics.
    pub target: usize,
    /// The field the target partitions by.
    pub slot: Slot,
}

/// What a shard does with its partition.
#[derive(Clone, Debug)]
pub enum Role {
    /// A partition of the input topic: runs the rules keyed by the stream
    /// key and forwards events for the other keys.
    Source {
        /// One per internal topic its stream feeds.
        forward: Vec<Forward>,
        /// The stream whose topic the partition is of.
        stream: u16,
    },
    /// A partition of an internal topic: runs the rules keyed by its field,
    /// with the watermark of `sources` upstream partitions.
    Internal {
        /// The number of source partitions.
        sources: usize,
    },
}

/// A cut through the shard's partition: queued behind the records handed
/// over before it, it is answered with the shard's output since the last
/// cut and the offset that output covers (a consistent cut).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Barrier {
    /// The checkpoint's: its answer is committed.
    Checkpoint,
    /// Ahead of the checkpoint, so that the output so far can be produced
    /// while the interval runs out. It does not count as a barrier: the
    /// caller commits at the next [`Barrier::Checkpoint`], with both
    /// answers joined by [`ShardOutput::absorb`].
    Flush,
}
