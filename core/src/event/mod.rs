//! Events: the decoded form of one input record, field paths and the schema
//! that maps them to slots, time parsing, the JSON decoder, and the reader
//! of newline-delimited records.
//!
//! An [`Event`] holds only the fields the compiled rule set reads (by slot),
//! its event time, its position in the input, and the original record text —
//! alerts carry matched events "as they were read".

mod decode;
mod lines;
mod merge;
mod schema;
mod timefmt;
mod value;

pub use decode::{DecodeError, Decoder, MAX_KEY_BYTES};
pub use lines::EventLines;
pub use merge::{Batched, Merged, MergedLines};
pub use schema::{FieldPath, Schema, Slot};
pub use timefmt::{
    EventTime, MAX_EVENT_TIME_MS, TimeFormat, epoch_to_millis, format_time, parse_time_str,
};
pub use value::{Value, ValueKey, json_number};

use smallvec::SmallVec;
use std::sync::Arc;

/// One decoded input record.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Event time, ms since the epoch (UTC).
    pub time: EventTime,
    /// Arrival position in the input; breaks ties between equal times.
    pub seq: u64,
    /// Field values by [`Slot`]; `Null` where absent.
    pub fields: SmallVec<[Value; 4]>,
    /// The record as it was read.
    pub raw: Arc<str>,
}

impl Event {
    /// The value in `slot` (`Null` if out of range).
    pub fn field(&self, slot: Slot) -> &Value {
        static NULL: Value = Value::Null;
        self.fields.get(slot as usize).unwrap_or(&NULL)
    }
}
