//! Any text given to the rule compiler yields a rule set or diagnostics that
//! render; it never panics or loops.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut c = tripline::rules::Compiler::new();
    c.stream(tripline::rules::StreamDef::new("k", "t").expect("valid paths"));
    c.add_source("fuzz.tl", &text);
    match c.compile() {
        Ok(def) => {
            let rs = tripline::engine::RuleSet::build(def, Default::default());
            let mut engine = tripline::engine::Engine::new(rs.clone());
            let mut out = tripline::engine::Outputs::default();
            for (i, line) in [r#"{"k":1,"t":1,"v":1}"#, r#"{"k":1,"t":2,"v":"x"}"#]
                .iter()
                .enumerate()
            {
                if let Ok(ev) = rs.decoder().decode(line.as_bytes(), i as u64) {
                    engine.on_event(ev, &mut out);
                }
            }
            engine.finish(&mut out);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
