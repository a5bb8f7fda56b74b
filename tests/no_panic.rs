//! The entry points the fuzz targets drive, on random input in every test run:
//! the rule compiler, the event decoder, and the readers of labels, list
//! files, table rows and the configuration return errors, never panic.

use proptest::prelude::*;
use tripline::engine::{Engine, Outputs, RuleSet};
use tripline::rules::{Compiler, StreamDef};

/// Fragments of the rule language, so random input reaches deep into the parser.
const WORDS: &[&str] = &[
    "rule",
    "r",
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    "pattern",
    "a",
    "b",
    ":",
    "then",
    "next",
    "not",
    "any",
    "repeat",
    "1",
    "2..3",
    "3..",
    "optional",
    "greedy",
    "consecutive",
    "combinations",
    "until",
    "gap",
    "5s",
    "within",
    "10m",
    "skip",
    "to",
    "first",
    "last",
    "past",
    "event",
    "or",
    "fail",
    "and",
    "in",
    "matches",
    "'x'",
    "\"y\"",
    "==",
    "<",
    "+",
    "*",
    "/",
    "-",
    "sum",
    "count",
    "avg",
    "over",
    "ending",
    "ago",
    "distinct",
    "first(a).v",
    "v",
    "a.v",
    ",",
    "payload",
    "=",
    "severity",
    "high",
    "score",
    "stream",
    "key",
    "time",
    "example",
    "events",
    "\"\"\"",
    "expect",
    "#",
    "\n",
    "`q`",
    "aggregates",
    "include",
    "current",
    "report",
    "timeouts",
    "session",
    "tumbling",
    "null",
    "is",
    "true",
    "%",
    "1e400",
    "9999999999999999999999ms",
];

fn compile_and_run(text: &str) {
    let mut c = Compiler::new();
    c.stream(StreamDef::new("k", "t").expect("paths"));
    c.add_source("p.tl", text);
    match c.compile() {
        Ok(def) => {
            let rs = RuleSet::build(def, Default::default());
            let mut engine = Engine::new(rs.clone());
            let mut out = Outputs::default();
            for (i, l) in [
                r#"{"k":1,"t":1,"v":1}"#,
                r#"{"k":1,"t":2,"v":2}"#,
                r#"{"k":2,"t":3,"v":"x"}"#,
            ]
            .iter()
            .enumerate()
            {
                if let Ok(ev) = rs.decoder().decode(l.as_bytes(), i as u64) {
                    engine.on_event(ev, &mut out);
                }
            }
            engine.finish(&mut out);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn rule_compiler_never_panics_on_token_soup(words in prop::collection::vec(prop::sample::select(WORDS), 0..60)) {
        compile_and_run(&words.join(" "));
    }

    #[test]
    fn rule_compiler_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        compile_and_run(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300), prefix in prop::sample::select(vec!["", "{\"k\":1,\"t\":", "{\"k\":{\"", "[", "{\"t\":\"2018-"])) {
        let rs = RuleSet::from_source("d.tl", "stream s { key k time t } rule r { pattern { a: v > 1 } }", None).expect("compiles");
        let mut input = prefix.as_bytes().to_vec();
        input.extend_from_slice(&bytes);
        let _ = rs.decoder().decode(&input, 0);
    }

    #[test]
    fn list_file_readers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300), prefix in prop::sample::select(vec!["", "value,from,until,op\n", "value\n1,", "{\"list\":\"blocked\",\"value\":", "value,from\n1,2018-"])) {
        use tripline::list_files::{CsvDefaults, parse_list_csv, parse_list_file};
        let mut input = prefix.as_bytes().to_vec();
        input.extend_from_slice(&bytes);
        let text = String::from_utf8_lossy(&input);
        if let Ok(entries) = parse_list_csv("blocked", &text, &CsvDefaults::default()) {
            let lists = tripline::lists::Lists::new();
            for e in entries {
                lists.put(e);
            }
            let _ = lists.contains("blocked", &tripline::event::Value::Num(1.0), i64::MAX);
        }
        let _ = parse_list_file("blocked", std::path::Path::new("b.jsonl"), &text);
    }

    #[test]
    fn table_rows_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300), prefix in prop::sample::select(vec!["", "{\"card\":", "{\"card\":1,\"UPDATED_AT\":", "{\"card\":\"1\",\"UPDATED_AT\":\"2018-", "{\"card\":1,\"UPDATED_AT\":1,\"home\":"])) {
        let rs = RuleSet::from_source(
            "t.tl",
            "stream s { key card time ts }\ntable profiles { key card time UPDATED_AT }\nrule abroad { pattern { tx: country != profiles.home } }",
            None,
        ).expect("compiles");
        let mut input = prefix.as_bytes().to_vec();
        input.extend_from_slice(&bytes);
        let tables = tripline::tables::Tables::new();
        let _ = tables.load(&rs.def().tables[0].spec, &String::from_utf8_lossy(&input));
        let home = tripline::event::FieldPath::parse("home").expect("a path");
        let _ = tables.get("profiles", &tripline::event::Value::Num(1.0), i64::MAX, &home);
    }

    #[test]
    fn config_reader_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300), prefix in prop::sample::select(vec!["", "[kafka]\n", "[kafka]\nbrokers = ", "[rules]\nmax_alerts_per_event = ", "[state]\ndir = \"", "[[webhooks]]\nname = "]), env in prop::option::of(("TRIPLINE__[A-Z_]{1,30}", ".{0,12}"))) {
        let mut input = prefix.as_bytes().to_vec();
        input.extend_from_slice(&bytes);
        if let Err(e) = tripline::config::Config::from_toml(&String::from_utf8_lossy(&input), "p.toml", env) {
            prop_assert!(!e.problems.is_empty());
        }
    }

    #[test]
    fn label_reader_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300), prefix in prop::sample::select(vec!["", "{\"transaction_id\":", "{\"transaction_id\":1,\"fraud\":true,\"known_at\":", "{\"fraud\":1,\"known_at\":\"2018-"])) {
        let mut input = prefix.as_bytes().to_vec();
        input.extend_from_slice(&bytes);
        if let Ok(labels) = tripline::model::labels::Labels::from_json_lines(&String::from_utf8_lossy(&input)) {
            let _ = labels.fraud_at("1", i64::MAX);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Damaged model files (bytes overwritten anywhere, or cut short) load
    /// as an error or as a model that scores without panicking.
    #[test]
    fn model_loader_never_panics(
        which in prop::sample::select(vec!["fraud_lr", "card_rf"]),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = std::fs::read(format!("models/{which}.onnx")).expect("model");
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        if let Ok(m) = tripline::model::Model::from_bytes(&bytes) {
            let _ = m.score(&vec![1.0; m.inputs().len()]);
            let _ = m.score(&vec![f32::NAN; m.inputs().len()]);
        }
    }
}

#[test]
fn pathological_inputs_are_errors() {
    let rs = RuleSet::from_source(
        "d.tl",
        "stream s { key k time t } rule r { pattern { a: v > 1 } }",
        None,
    )
    .unwrap();
    for input in [
        "{\"k\":1,\"t\":1e999}".to_string(),
        format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000)),
        format!("{{\"k\":\"{}\",\"t\":1}}", "x".repeat(2_000_000)),
        "{\"k\":1,\"t\":\"2018-13-45T99:99:99\"}".to_string(),
        "{\"k\":null,\"t\":1}".to_string(),
        "{\"k\":1,\"t\":-9223372036854775808}".to_string(),
    ] {
        assert!(
            rs.decoder().decode(input.as_bytes(), 0).is_err(),
            "{}",
            &input[..input.len().min(60)]
        );
    }
}
