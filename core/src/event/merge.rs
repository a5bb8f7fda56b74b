//! Several streams' newline-delimited inputs read as one, in event-time
//! order: what `replay`, `backtest` and a rule file's examples give the
//! engine when a rule set has several streams. Each input is read in its
//! own order; of the inputs' next events the earliest goes first, ties to
//! the stream declared first, so the result depends only on the inputs'
//! contents (as the service's does once the watermark has passed).

use super::{DecodeError, Decoder, Event, EventLines};
use std::io::{self, BufRead};

/// One record of a [`MergedLines`].
#[derive(Debug)]
pub struct Merged {
    /// The stream it belongs to (index into the decoders).
    pub stream: u16,
    /// Its line in its stream's input (from 1).
    pub line: u64,
    /// The event, or why the record is not one. Records that do not decode
    /// come out as soon as they are read: they have no time to wait for.
    pub event: Result<Event, DecodeError>,
}

struct Input<R> {
    stream: u16,
    lines: EventLines<R>,
    /// Its next event, read ahead.
    head: Option<(u64, Event)>,
    done: bool,
}

/// Reads each stream's input and yields their events merged by time.
pub struct MergedLines<R> {
    inputs: Vec<Input<R>>,
}

impl<R: BufRead> MergedLines<R> {
    /// Merges `inputs`, each the records of one stream (by index).
    pub fn new(inputs: Vec<(u16, R)>) -> MergedLines<R> {
        MergedLines {
            inputs: inputs
                .into_iter()
                .map(|(stream, r)| Input {
                    stream,
                    lines: EventLines::new(r),
                    head: None,
                    done: false,
                })
                .collect(),
        }
    }

    /// The next record: a record that does not decode as soon as it is
    /// read, otherwise the earliest of the inputs' next events. `decoders`
    /// are the rule set's, by stream.
    pub fn next(&mut self, decoders: &[Decoder]) -> io::Result<Option<Merged>> {
        for i in 0..self.inputs.len() {
            let input = &mut self.inputs[i];
            if input.head.is_some() || input.done {
                continue;
            }
            let Some((n, bytes)) = input.lines.next_record()? else {
                input.done = true;
                continue;
            };
            let decoded = match decoders.get(input.stream as usize) {
                Some(d) => d.decode(bytes, n),
                None => Err(DecodeError::UnknownStream(input.stream)),
            };
            match decoded {
                Ok(e) => input.head = Some((n, e)),
                Err(e) => {
                    return Ok(Some(Merged {
                        stream: input.stream,
                        line: n,
                        event: Err(e),
                    }));
                }
            }
        }
        let first = self
            .inputs
            .iter()
            .enumerate()
            .filter_map(|(i, input)| input.head.as_ref().map(|(_, e)| (e.time, input.stream, i)))
            .min();
        let Some((_, _, i)) = first else {
            return Ok(None);
        };
        let input = &mut self.inputs[i];
        let Some((line, event)) = input.head.take() else {
            return Ok(None);
        };
        Ok(Some(Merged {
            stream: input.stream,
            line,
            event: Ok(event),
        }))
    }

    /// Lines read so far over every input, blank ones included.
    pub fn lines(&self) -> u64 {
        self.inputs.iter().map(|i| i.lines.lines()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{FieldPath, Schema, TimeFormat};
    use std::sync::Arc;

    fn decoders() -> Vec<Decoder> {
        let mut schema = Schema::default();
        let k = schema.intern(&FieldPath::single("k"));
        let t = schema.intern(&FieldPath::single("t"));
        let schema = Arc::new(schema);
        (0..2)
            .map(|_| {
                Decoder::new(
                    schema.clone(),
                    t,
                    vec![(k, true)],
                    TimeFormat::EpochMillis,
                    1 << 20,
                )
            })
            .collect()
    }

    #[test]
    fn merges_by_time_ties_to_the_first_stream_and_passes_bad_records_at_once() {
        let a = "{\"k\":1,\"t\":1}\n{\"k\":1,\"t\":5}\n{\"k\":1,\"t\":9}\n";
        let b = "{\"k\":1,\"t\":5}\nnot json\n{\"k\":1,\"t\":2}\n";
        let mut m = MergedLines::new(vec![(0, a.as_bytes()), (1, b.as_bytes())]);
        let d = decoders();
        let mut got = Vec::new();
        while let Some(r) = m.next(&d).unwrap() {
            got.push((r.stream, r.line, r.event.map(|e| e.time).ok()));
        }
        assert_eq!(
            got,
            [
                (0, 1, Some(1)),
                (0, 2, Some(5)),
                (1, 1, Some(5)),
                (1, 2, None),
                (1, 3, Some(2)),
                (0, 3, Some(9)),
            ]
        );
        assert_eq!(m.lines(), 6);
    }
}
