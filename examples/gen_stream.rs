//! Writes the synthetic benchmark stream as JSON lines: `n` events over `keys`
//! keys, ~100 ms apart, of type A (10 %), B (30 %), C (10 %) or D (50 %).
//! Deterministic for a given seed.
//!
//! `cargo run --release --example gen_stream -- 1000000 10000 > /tmp/abc.jsonl`

#[path = "../benches/support/stream.rs"]
mod stream;

use std::io::Write;

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let keys: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    for line in stream::lines(n, keys, 42) {
        out.write_all(line.as_bytes())
            .and_then(|_| out.write_all(b"\n"))
            .expect("write");
    }
}
