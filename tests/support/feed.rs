//! Feeding JSON lines to an engine, as the tests that compare runs do.

use tripline::engine::{Engine, Outputs};

/// Decodes `lines` under the engine's rules, numbering them from `from` (as
/// a record's offset would), and processes them.
pub fn feed(engine: &mut Engine, lines: &[String], from: usize, out: &mut Outputs) {
    let rs = engine.rules().clone();
    for (i, l) in lines.iter().enumerate() {
        let ev = rs
            .decoder()
            .decode(l.as_bytes(), (from + i) as u64)
            .expect("decodes");
        engine.on_event(ev, out);
    }
}
