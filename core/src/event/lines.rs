//! Newline-delimited event records, as `replay`, `backtest` and a rule
//! file's examples read them: one JSON object per line, blank lines
//! skipped, each record numbered by its line so errors point at it.

use std::io::{self, BufRead};

/// Reads the records of newline-delimited input, reusing one buffer.
pub struct EventLines<R> {
    input: R,
    line: Vec<u8>,
    lines: u64,
}

impl<R: BufRead> EventLines<R> {
    /// Records of `input`.
    pub fn new(input: R) -> EventLines<R> {
        EventLines {
            input,
            line: Vec::with_capacity(1024),
            lines: 0,
        }
    }

    /// The next record that is not blank and its line number (from 1), or
    /// `None` at the end of the input.
    pub fn next_record(&mut self) -> io::Result<Option<(u64, &[u8])>> {
        loop {
            self.line.clear();
            if self.input.read_until(b'\n', &mut self.line)? == 0 {
                return Ok(None);
            }
            self.lines += 1;
            if !self.line.iter().all(u8::is_ascii_whitespace) {
                return Ok(Some((self.lines, &self.line)));
            }
        }
    }

    /// Lines read so far, blank ones included.
    pub fn lines(&self) -> u64 {
        self.lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_records_by_line_and_skips_blank_ones() {
        let mut r = EventLines::new(&b"{\"a\":1}\n\n  \t\n{\"a\":2}\r\n{\"a\":3}"[..]);
        let mut got = Vec::new();
        while let Some((n, line)) = r.next_record().unwrap() {
            got.push((n, String::from_utf8(line.to_vec()).unwrap()));
        }
        assert_eq!(
            got,
            [
                (1, "{\"a\":1}\n".to_string()),
                (4, "{\"a\":2}\r\n".to_string()),
                (5, "{\"a\":3}".to_string()),
            ]
        );
        assert_eq!(r.lines(), 5);
    }

    #[test]
    fn blank_input_has_no_records() {
        let mut r = EventLines::new(&b"\n \n"[..]);
        assert!(r.next_record().unwrap().is_none());
        assert_eq!(r.lines(), 2);
    }
}
