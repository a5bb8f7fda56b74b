//! The examples carried by the shipped rule files (`rules/*.tl`) hold.

use std::path::Path;
use tripline::engine::{RuleSet, run_example};

#[test]
fn shipped_rule_examples_hold() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let rs = tripline::files::load_rules(&[dir.as_path()], None, Default::default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(rs.def().examples.len() >= 4, "rule files carry examples");
    let failures: Vec<String> = rs
        .def()
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

/// A rule file whose example expects one alert too many.
const OFF_BY_ONE: &str = r#"
stream s { key k time t }
rule any { pattern { x: v > 1 } }
example "off by one" {
  events """
  {"k":1,"t":1,"v":5}
  """
  expect any 2
}"#;

#[test]
fn a_wrong_expectation_is_reported() {
    let rs = RuleSet::from_source("x.tl", OFF_BY_ONE, None).unwrap();
    let err = run_example(&rs, &rs.def().examples[0]).unwrap_err();
    assert!(err.contains("expected 2 alerts, got 1"), "{err}");
}

/// `tripline test`, the command rule authors run: the shipped examples pass,
/// and a wrong expectation fails the command with the example named.
#[test]
fn the_test_command_checks_examples() {
    let run = |paths: &[&Path]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tripline"))
            .arg("test")
            .args(paths)
            .output()
            .expect("run tripline test")
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = root.join("rules");
    // The shipped rules, and with them the example rules that read logins,
    // profiles and a blocklist (what `demo` runs).
    for paths in [
        vec![rules.as_path()],
        vec![&rules, &root.join("examples/rules")],
    ] {
        let out = run(&paths);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    }

    let dir = std::env::temp_dir().join(format!("tripline-test-cmd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("wrong.tl");
    std::fs::write(&file, OFF_BY_ONE).unwrap();
    let out = run(&[&file]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL off by one"), "{stdout}");
    assert!(stdout.contains("0 passed, 1 failed"), "{stdout}");
}
