//! Engine behaviour not covered by the matcher tests: memory is released for
//! keys that went quiet, in both matching modes.

use tripline::engine::{Engine, EngineOptions, Outputs, RuleSet};

const RULES: &str = r#"
stream s { key k time t time format epoch_ms }
rule abc { within 100ms pattern { a: v == "A" then b: v == "B" repeat 1.. then c: v == "C" } }
"#;

fn run(lazy: bool) -> (usize, usize) {
    let options = EngineOptions {
        lazy_regular_rules: lazy,
        ..EngineOptions::default()
    };
    let rs = RuleSet::from_source_with("e.tl", RULES, None, options).unwrap();
    assert_eq!(rs.rules[0].matcher.lazy.is_some(), lazy);
    let mut engine = Engine::new(rs.clone());
    let mut out = Outputs::default();
    let mut feed = |engine: &mut Engine, k: u32, t: i64, v: &str| {
        let line = format!(r#"{{"k":{k},"t":{t},"v":"{v}"}}"#);
        let ev = rs.decoder.decode(line.as_bytes(), t as u64).unwrap();
        engine.on_event(ev, &mut out);
    };
    // Key 1 starts a match and goes quiet; key 2 keeps the stream going.
    feed(&mut engine, 1, 0, "A");
    feed(&mut engine, 1, 10, "B");
    feed(&mut engine, 2, 20, "A");
    engine.sweep_idle_keys();
    let busy = engine.key_count();
    for t in 0..50 {
        feed(&mut engine, 2, 1_000 + t * 10, "D");
    }
    engine.sweep_idle_keys();
    (busy, engine.key_count())
}

#[test]
fn quiet_keys_are_released_in_both_modes() {
    // Explicit partial matches: after the window, neither key holds anything.
    assert_eq!(run(false), (2, 0));
    // Lazy mode: key 1's window has passed and is dropped; key 2 keeps its current window.
    assert_eq!(run(true), (2, 1));
}
