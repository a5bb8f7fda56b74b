//! Several streams' newline-delimited inputs read as one, in event-time
//! order: what `replay`, `backtest` and a rule file's examples give the
//! engine when a rule set has several streams. Each input is read in its
//! own order; of the inputs' next events the earliest goes first, ties to
//! the stream declared first, so the result depends only on the inputs'
//! contents (as the service's does once the watermark has passed).

use super::{DecodeError, Decoder, Event, EventLines};
use std::collections::VecDeque;
use std::io::{self, BufRead};
use std::sync::Arc;

/// One record of a [`MergedLines`].
#[derive(Debug)]
pub struct Merged {
    /// The stream it belongs to (index into the decoders).
    pub stream: u16,
    /// Its line in its stream's input (from 1).
    pub line: u64,
    /// The event, or why the record is not one. Records that do not decode
    /// come out as soon as they are read: they have no time to wait for.
    pub event: Result<Arc<Event>, DecodeError>,
}

struct Input<R> {
    stream: u16,
    lines: EventLines<R>,
    /// Its next event, read ahead.
    head: Option<(u64, Arc<Event>)>,
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
                // Shared from here on: the engine keeps events in an `Arc`,
                // and a pointer moves through the batch where an event would
                // be copied at every step.
                Ok(e) => input.head = Some((n, Arc::new(e))),
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

/// A [`MergedLines`] read a batch of records at a time, so that a caller
/// can look at the next records before taking them one by one (`replay`
/// and `backtest` have the engine warm their state: `Engine::warm`). A read
/// error comes after the records read before it.
pub struct Batched<R> {
    lines: MergedLines<R>,
    batch: VecDeque<Merged>,
    size: usize,
    failed: Option<io::Error>,
}

impl<R: BufRead> Batched<R> {
    /// Reads `lines` `size` records at a time (at least one).
    pub fn new(lines: MergedLines<R>, size: usize) -> Batched<R> {
        Batched {
            lines,
            batch: VecDeque::with_capacity(size.max(1)),
            size: size.max(1),
            failed: None,
        }
    }

    /// The next record; `fresh` sees each batch as it is read, before its
    /// first record is taken.
    pub fn next(
        &mut self,
        decoders: &[Decoder],
        fresh: impl FnOnce(&VecDeque<Merged>),
    ) -> io::Result<Option<Merged>> {
        if self.batch.is_empty() {
            if let Some(e) = self.failed.take() {
                return Err(e);
            }
            while self.batch.len() < self.size {
                match self.lines.next(decoders) {
                    Ok(Some(m)) => self.batch.push_back(m),
                    Ok(None) => break,
                    Err(e) => {
                        self.failed = Some(e);
                        break;
                    }
                }
            }
            if self.batch.is_empty() {
                return self.failed.take().map_or(Ok(None), Err);
            }
            fresh(&self.batch);
        }
        Ok(self.batch.pop_front())
    }

    /// The lines read so far (see [`MergedLines::lines`]).
    pub fn lines(&self) -> u64 {
        self.lines.lines()
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

    /// Three good lines, then a read error.
    struct Failing(&'static [u8]);

    impl io::Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::Error::other("disk gone"));
            }
            let n = buf.len().min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn batches_give_every_record_in_order_and_an_error_after_those_read_before_it() {
        let text = "{\"k\":1,\"t\":1}\n{\"k\":1,\"t\":2}\n{\"k\":1,\"t\":3}\n";
        let d = decoders();
        for size in [1, 2, 5] {
            let lines = MergedLines::new(vec![(0, io::BufReader::new(Failing(text.as_bytes())))]);
            let mut b = Batched::new(lines, size);
            let (mut times, mut batches) = (Vec::new(), Vec::new());
            let end = loop {
                match b.next(&d, |batch| batches.push(batch.len())) {
                    Ok(Some(m)) => times.push(m.event.unwrap().time),
                    Ok(None) => break None,
                    Err(e) => break Some(e.to_string()),
                }
            };
            assert_eq!(times, [1, 2, 3], "batches of {size}");
            assert_eq!(end.as_deref(), Some("disk gone"), "batches of {size}");
            assert_eq!(batches.iter().sum::<usize>(), 3, "batches of {size}");
            assert!(batches.iter().all(|&n| n <= size), "batches of {size}");
        }
    }
}
