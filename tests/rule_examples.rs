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

/// An example whose events are grouped by key (each key's events in time
/// order, the keys' times interleaved), with alerts expected by their key,
/// time and payload values.
const BY_KEY: &str = r#"
stream s { key card time t }
rule big { suppress 1h pattern { x: amount > 100 } payload { amount = x.amount, shop = x.shop } }
example "grouped by card" {
  events """
  {"card":1,"t":"2018-04-01T10:00:00Z","amount":150,"shop":"a"}
  {"card":1,"t":"2018-04-01T12:00:00Z","amount":300.5,"shop":"b"}
  {"card":2,"t":"2018-04-01T09:00:00Z","amount":120,"shop":"c"}
  {"card":2,"t":"2018-04-01T09:30:00Z","amount":130,"shop":"d"}
  """
  expect big 3
  expect big { key = 1, event_time = "2018-04-01T12:00:00Z", amount = 300.5, shop = "b" }
  expect big { key = 2, amount = 120 }
}"#;

#[test]
fn examples_may_group_events_by_key_and_expect_values() {
    let rs = RuleSet::from_source("k.tl", BY_KEY, None).unwrap_or_else(|e| panic!("{e}"));
    run_example(&rs, &rs.def().examples[0]).unwrap_or_else(|e| panic!("{e}"));

    // A value no alert has: the failure names it and lists the alerts.
    let wrong = BY_KEY.replace("amount = 120 }", "amount = 130 }");
    let rs = RuleSet::from_source("k.tl", &wrong, None).unwrap();
    let err = run_example(&rs, &rs.def().examples[0]).unwrap_err();
    assert!(
        err.contains("big: expected an alert with key = 2, amount = 130, and none has"),
        "{err}"
    );
    assert!(
        err.contains("key 2 at 2018-04-01T09:00:00Z: amount = 120, shop = \"c\""),
        "{err}"
    );
    // The 09:30 alert of card 2 is suppressed (within the hour).
    assert!(!err.contains("amount = 130, shop"), "{err}");

    // Names the rule's alerts do not carry are rejected with where they are.
    let unknown = BY_KEY.replace("shop = \"b\" }", "shops = \"b\" }");
    let e = RuleSet::from_source("k.tl", &unknown, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("k.tl:12:"), "{e}");
    assert!(
        e.contains("rule `big`'s alerts carry no value `shops`"),
        "{e}"
    );
    assert!(
        e.contains("they carry: key, event_time, amount, shop"),
        "{e}"
    );
    let bad_time = BY_KEY.replace("\"2018-04-01T12:00:00Z\", amount", "12, amount");
    let e = RuleSet::from_source("k.tl", &bad_time, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`event_time` is a time in quotes"), "{e}");
}

/// `tripline test`, the command rule authors run: the shipped examples pass,
/// and a wrong expectation fails the command with the example named.
#[test]
fn the_test_command_checks_examples() {
    let run = |paths: &[&Path]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tripline"))
            .args(["test", "--rules"])
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
    // What the rule raised, to compare with what was expected.
    assert!(stdout.contains("the alerts of `any`:"), "{stdout}");
    assert!(stdout.contains("key 1 at "), "{stdout}");
    assert!(stdout.contains("0 passed, 1 failed"), "{stdout}");
}
