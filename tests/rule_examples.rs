//! The examples carried by the shipped rule files (`rules/*.tl`) hold.

use std::path::Path;
use tripline::engine::{RuleSet, run_example};

#[test]
fn shipped_rule_examples_hold() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let rs =
        RuleSet::load(&[dir.as_path()], None, Default::default()).unwrap_or_else(|e| panic!("{e}"));
    assert!(rs.def.examples.len() >= 4, "rule files carry examples");
    let failures: Vec<String> = rs
        .def
        .examples
        .iter()
        .filter_map(|ex| {
            run_example(&rs, ex)
                .err()
                .map(|e| format!("{}: {e}", ex.name))
        })
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn a_wrong_expectation_is_reported() {
    let src = r#"
stream s { key k time t }
rule any { pattern { x: v > 1 } }
example "off by one" {
  events """
  {"k":1,"t":1,"v":5}
  """
  expect any 2
}"#;
    let rs = RuleSet::from_source("x.tl", src, None).unwrap();
    let err = run_example(&rs, &rs.def.examples[0]).unwrap_err();
    assert!(err.contains("expected 2 alerts, got 1"), "{err}");
}
