//! Tables in `replay`, `backtest` and examples: `--table NAME=FILE` fills a
//! declared table, rows are read as of each event's time (a temporal
//! join), a missing row is null, alerts show the values they read, and bad
//! declarations, references and rows get clear errors.

#[path = "support/cli.rs"]
mod cli;

use cli::{tripline, write};

const RULES: &str = r#"
stream s { key CUSTOMER_ID  time ts  time format epoch_ms }
table profiles { key CUSTOMER_ID  time UPDATED_AT }
table terminals { key id }
rule abroad {
  pattern { tx: COUNTRY != profiles.HOME_COUNTRY }
}
rule over_income {
  pattern { tx: amount > 5 * profiles.MONTHLY_INCOME }
}
rule risky_terminal {
  pattern { tx: lookup(terminals, TERMINAL_ID).risk >= 0.8 }
}
"#;

fn alerts(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn replay_reads_rows_as_of_each_event_time() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "r.tl", RULES);
    // Customer 1 lives in FR until 3000 ms, then in DE; customer 2 has no row.
    let profiles = write(
        dir.path(),
        "profiles.jsonl",
        "{\"CUSTOMER_ID\": 1, \"UPDATED_AT\": \"1970-01-01T00:00:01Z\", \"HOME_COUNTRY\": \"FR\", \"MONTHLY_INCOME\": 100}\n\
         {\"CUSTOMER_ID\": 1, \"UPDATED_AT\": \"1970-01-01T00:00:03Z\", \"HOME_COUNTRY\": \"DE\", \"MONTHLY_INCOME\": 1000}\n",
    );
    let terminals = write(
        dir.path(),
        "terminals.jsonl",
        "{\"id\": \"T1\", \"risk\": 0.9}\n{\"id\": \"T2\", \"risk\": 0.1}\n",
    );
    // Out of arrival order on purpose: rows are read by event time.
    let events = write(
        dir.path(),
        "e.jsonl",
        &[
            (1, 2000, "DE", 600, "T2"),
            (1, 500, "DE", 10, "T2"),
            (1, 3000, "DE", 600, "T1"),
            (2, 4000, "US", 10, "T3"),
        ]
        .iter()
        .map(|(c, t, country, amount, term)| {
            format!(
                r#"{{"CUSTOMER_ID":{c},"ts":{t},"COUNTRY":"{country}","amount":{amount},"TERMINAL_ID":"{term}"}}"#
            )
        })
        .collect::<Vec<_>>()
        .join("\n"),
    );
    let (ok, stdout, stderr) = tripline(&[
        "replay",
        "-r",
        &rules,
        "-e",
        &events,
        "--table",
        &format!("profiles={profiles}"),
        "--table",
        &format!("terminals={terminals}"),
    ]);
    assert!(ok, "{stderr}");
    let mut got: Vec<(String, i64)> = alerts(&stdout)
        .iter()
        .map(|a| {
            (
                a["rule"].as_str().unwrap().to_string(),
                a["matches"]["tx"][0]["ts"].as_i64().unwrap(),
            )
        })
        .collect();
    got.sort();
    // At 500 ms there is no row yet (null: no alert); at 2000 ms the
    // customer lives in FR and earns 100; from 3000 ms in DE, earning 1000.
    // Customer 2 has no row: null compares to nothing.
    assert_eq!(
        got,
        [
            ("abroad".to_string(), 2000),
            ("over_income".to_string(), 2000),
            ("risky_terminal".to_string(), 3000),
        ]
    );
    for a in alerts(&stdout) {
        match a["rule"].as_str().unwrap() {
            "abroad" => assert_eq!(a["values"]["profiles.HOME_COUNTRY"], "FR", "{a}"),
            "over_income" => assert_eq!(a["values"]["profiles.MONTHLY_INCOME"], 100.0, "{a}"),
            _ => assert_eq!(
                a["values"]["lookup(terminals, TERMINAL_ID).risk"], 0.9,
                "{a}"
            ),
        }
    }
}

#[test]
fn tables_are_named_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "r.tl", RULES);
    let events = write(dir.path(), "e.jsonl", "");
    // A table the rules do not declare.
    let other = write(dir.path(), "o.jsonl", "");
    let (ok, _, stderr) = tripline(&[
        "replay",
        "-r",
        &rules,
        "-e",
        &events,
        "--table",
        &format!("profile={other}"),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("no table `profile` (they declare: profiles, terminals)"),
        "{stderr}"
    );
    // A row without its key, with the line it is on.
    let bad = write(
        dir.path(),
        "bad.jsonl",
        "{\"CUSTOMER_ID\": 1, \"UPDATED_AT\": 5}\n{\"UPDATED_AT\": 5}\n",
    );
    let (ok, _, stderr) = tripline(&[
        "replay",
        "-r",
        &rules,
        "-e",
        &events,
        "--table",
        &format!("profiles={bad}"),
    ]);
    assert!(!ok);
    assert!(stderr.contains("bad.jsonl line 2"), "{stderr}");
    assert!(stderr.contains("no key: field `CUSTOMER_ID`"), "{stderr}");
    // Not given: a note, and lookups are null.
    let (ok, _, stderr) = tripline(&["replay", "-r", &rules, "-e", &events]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("table `profiles` is empty (give its rows with --table profiles=FILE)"),
        "{stderr}"
    );
}

#[test]
fn bad_table_references_are_rejected_with_hints() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "table t { time x }\nrule r { pattern { a: true } }",
            "table `t` has no key",
        ),
        (
            "table profiles { key c }\nrule r { pattern { a: profiles > 1 } }",
            "table `profiles` is not a value",
        ),
        (
            "table profiles { key c }\nrule r { pattern { a: lookup(profile, c).x > 1 } }",
            "unknown table `profile`",
        ),
        (
            "table profiles { key c }\nrule r { pattern { a: lookup(profiles, c) > 1 } }",
            "`lookup` gives a row: name its field",
        ),
        (
            "table profiles { key c }\ntable profiles { key d }\nrule r { pattern { a: true } }",
            "table `profiles` is declared twice",
        ),
        (
            "table profiles { key c  colour red }\nrule r { pattern { a: true } }",
            "key, time or topic",
        ),
    ];
    for (i, (body, want)) in cases.iter().enumerate() {
        let text = format!("stream s {{ key c  time ts }}\n{body}\n");
        let file = write(dir.path(), &format!("bad{i}.tl"), &text);
        let (ok, stdout, stderr) = tripline(&["check", &file]);
        assert!(!ok, "case {i} passed check:\n{text}");
        let said = format!("{stdout}{stderr}");
        assert!(said.contains(want), "case {i}: wanted {want:?} in:\n{said}");
        assert!(
            said.contains(&format!("bad{i}.tl:")),
            "case {i}: no file:line in:\n{said}"
        );
    }
}

#[test]
fn examples_give_rows_to_their_tables() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{RULES}\n{}",
        r#"
example home_and_away {
  table profiles """
{"CUSTOMER_ID": 1, "UPDATED_AT": 0, "HOME_COUNTRY": "FR", "MONTHLY_INCOME": 1000}
"""
  events """
{"CUSTOMER_ID": 1, "ts": 1000, "COUNTRY": "FR", "amount": 10, "TERMINAL_ID": "T1"}
{"CUSTOMER_ID": 1, "ts": 2000, "COUNTRY": "IT", "amount": 10, "TERMINAL_ID": "T1"}
"""
  expect abroad 1
  expect over_income 0
  expect risky_terminal 0
}
"#
    );
    let file = write(dir.path(), "ex.tl", &text);
    let (ok, stdout, stderr) = tripline(&["test", &file]);
    assert!(ok, "{stdout}{stderr}");
    // The same example expecting what the row rules out fails.
    let wrong = text.replace("expect abroad 1", "expect abroad 2");
    let file = write(dir.path(), "wrong.tl", &wrong);
    let (ok, stdout, stderr) = tripline(&["test", &file]);
    assert!(!ok, "{stdout}{stderr}");
}
