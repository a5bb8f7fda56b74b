//! Any bytes given to the event decoder yield an event or a typed error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tripline::engine::RuleSet;

fn rules() -> &'static std::sync::Arc<RuleSet> {
    static RS: OnceLock<std::sync::Arc<RuleSet>> = OnceLock::new();
    RS.get_or_init(|| {
        let src = "stream s { key card.id time ts lateness 1s }\n\
                   rule r { pattern { a: amount > 1 and tags.kind matches \"^x\" then b: contains(name, 'q') } }";
        RuleSet::from_source("fuzz.tl", src, None).expect("compiles")
    })
}

fuzz_target!(|data: &[u8]| {
    let rs = rules();
    if let Ok(ev) = rs.decoder().decode(data, 0) {
        let mut engine = tripline::engine::Engine::new(rs.clone());
        let mut out = tripline::engine::Outputs::default();
        engine.on_event(ev, &mut out);
        engine.finish(&mut out);
        for a in &out.alerts {
            let _ = a.to_json_line();
        }
    }
});
