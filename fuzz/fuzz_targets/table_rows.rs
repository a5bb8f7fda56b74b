//! Any bytes as a table's rows (a table file's lines, a table topic's
//! records): each row loads or is refused with a reason, never a panic;
//! what loaded then answers lookups at any time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tripline::engine::RuleSet;
use tripline::event::{FieldPath, Value};

fn rules() -> &'static std::sync::Arc<RuleSet> {
    static RULES: OnceLock<std::sync::Arc<RuleSet>> = OnceLock::new();
    RULES.get_or_init(|| {
        RuleSet::from_source(
            "t.tl",
            "stream s { key card time ts }\n\
             table profiles { key card time UPDATED_AT }\n\
             rule abroad { pattern { tx: country != profiles.home } }\n",
            None,
        )
        .expect("compiles")
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let spec = &rules().def().tables[0].spec;
    let tables = tripline::tables::Tables::new();
    for line in text.lines() {
        let _ = tables.load(spec, line);
    }
    let home = FieldPath::parse("home").expect("a path");
    for key in [Value::Num(1.0), Value::Str("1".into()), Value::Null] {
        for t in [i64::MIN, 0, i64::MAX] {
            let _ = tables.get("profiles", &key, t, &home);
        }
    }
});
