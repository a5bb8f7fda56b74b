//! Any stored state — what a changelog or a damaged store could hold — either
//! restores into an engine that then runs normally, or is a typed error.
//! The input is read as entries `[key length: u8][value length: u16 LE][key][value]`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use tripline::engine::{Engine, Outputs, RuleSet};
use tripline::state::{MemoryStore, StateStore};

fn rules() -> &'static Arc<RuleSet> {
    static RS: OnceLock<Arc<RuleSet>> = OnceLock::new();
    RS.get_or_init(|| {
        let src = "stream s { key k time t time format epoch_ms lateness 30ms }\n\
                   rule seq { within 40ms pattern { a: v == 0 then b: v == 1 repeat 1.. then c: v == 2 } }\n\
                   rule absent { within 30ms pattern { a: v == 0 not then b: v == 1 } }\n\
                   rule w { key g pattern { x: count(over 50ms ending 20ms ago) >= 2 } }";
        RuleSet::from_source("fuzz.tl", src, None).expect("compiles")
    })
}

/// A checkpoint of an engine mid-match (partials, windows, buffered events).
fn real_checkpoint(rs: &Arc<RuleSet>) -> MemoryStore {
    let mut e = Engine::new(rs.clone());
    let mut out = Outputs::default();
    let events = [
        r#"{"k":1,"g":0,"t":5,"v":0}"#,
        r#"{"k":1,"g":0,"t":9,"v":1}"#,
        r#"{"k":2,"g":0,"t":20,"v":0}"#,
        r#"{"k":1,"g":1,"t":35,"v":1}"#,
        r#"{"k":3,"g":1,"t":30,"v":2}"#,
    ];
    for (i, l) in events.iter().enumerate() {
        e.on_event(rs.decoder.decode(l.as_bytes(), i as u64).expect("decodes"), &mut out);
    }
    let mut store = MemoryStore::default();
    let _ = e.checkpoint(&mut store);
    store
}

fuzz_target!(|data: &[u8]| {
    let rs = rules();
    let mut store = MemoryStore::default();
    if let Some((&0, edits)) = data.split_first() {
        // Damage a real checkpoint: each edit `[entry: u8][at: u16 LE][xor: u8]`
        // flips bits of one stored value, so the fuzzer works past the headers.
        store = real_checkpoint(rs);
        let entries = store.scan_prefix(b"").unwrap_or_default();
        for edit in edits.chunks_exact(4) {
            if entries.is_empty() {
                break;
            }
            let (key, mut value) = entries[edit[0] as usize % entries.len()].clone();
            if !value.is_empty() {
                let at = u16::from_le_bytes([edit[1], edit[2]]) as usize % value.len();
                value[at] ^= edit[3];
            }
            let _ = store.write(vec![(key, Some(value))]);
        }
    } else {
        let mut rest = data;
        while rest.len() >= 3 {
            let kl = rest[0] as usize;
            let vl = u16::from_le_bytes([rest[1], rest[2]]) as usize;
            rest = &rest[3..];
            if rest.len() < kl + vl {
                break;
            }
            let (k, r) = rest.split_at(kl);
            let (v, r) = r.split_at(vl);
            rest = r;
            let _ = store.write(vec![(k.to_vec(), Some(v.to_vec()))]);
        }
    }
    if let Ok(mut engine) = Engine::new(rs.clone()).track_changes().restored(&store) {
        let mut out = Outputs::default();
        for (i, l) in [r#"{"k":1,"g":0,"t":50,"v":2}"#, r#"{"k":2,"g":1,"t":60,"v":0}"#].iter().enumerate() {
            engine.on_event(rs.decoder.decode(l.as_bytes(), 100 + i as u64).expect("decodes"), &mut out);
        }
        let _ = engine.take_changes();
        engine.finish(&mut out);
        for a in &out.alerts {
            let _ = a.to_json_line();
        }
    }
});
