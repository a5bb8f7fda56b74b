//! Several streams in one rule set: stages name the stream their events
//! come from, `replay` and `backtest` merge one file per stream by event
//! time, examples give events per stream, rules of one stream are blind to
//! the others, state carries over when a stream is added, and mistakes get
//! errors that point at them.

#[path = "support/cli.rs"]
mod cli;

use cli::{tripline, write};
use std::sync::Arc;
use tripline::engine::{Engine, Outputs, RuleChange, RuleSet};

const STREAMS: &str = r#"
stream transactions {
  key CUSTOMER_ID  time ts  time format epoch_ms
  fields amount, new_payee, TX_FRAUD
}
stream logins {
  key CUSTOMER_ID  time ts  time format epoch_ms
  fields kind
}
"#;

const RULES: &str = r#"
rule reset_then_transfer {
  within 1h
  pattern {
    reset: logins where kind == "password_reset"
    then transfer: amount > 1000 and new_payee
  }
  payload { kind = reset.kind }
}

rule reset_next_transfer {
  within 1h
  pattern {
    reset: logins where kind == "password_reset"
    next transfer: transactions where amount > 1000
  }
}

rule big { pattern { tx: amount > 5000 } }

rule logins_burst {
  stream logins
  within 10m
  pattern { l: kind == "login" repeat 3 }
}
"#;

fn tx(c: u32, t: i64, amount: u32, new_payee: bool) -> String {
    format!(
        "{{\"CUSTOMER_ID\":{c},\"ts\":{t},\"amount\":{amount},\"new_payee\":{new_payee},\"TX_FRAUD\":{}}}\n",
        u8::from(amount > 1000 && new_payee)
    )
}

fn login(c: u32, t: i64, kind: &str) -> String {
    // `amount` on a login: rules of the transactions stream must not see it.
    format!("{{\"CUSTOMER_ID\":{c},\"ts\":{t},\"kind\":\"{kind}\",\"amount\":9999}}\n")
}

const MIN: i64 = 60_000;

/// Customer 1: a reset, then a transfer to a new payee 10 minutes later.
/// Customer 2: a transfer before the reset. Customer 3: a reset, then a
/// transfer two hours later. Customer 4: a reset, a login, a transfer (the
/// login breaks `next`). Customer 5: three logins.
fn inputs() -> (String, String) {
    let txs = [
        tx(1, 10 * MIN, 2000, true),
        tx(2, 11 * MIN, 3000, true),
        tx(4, 12 * MIN, 1500, false),
        tx(3, 125 * MIN, 2500, true),
        tx(1, 130 * MIN, 7000, false),
    ]
    .concat();
    let logins = [
        login(4, 0, "password_reset"),
        login(1, MIN, "password_reset"),
        login(4, 2 * MIN, "login"),
        login(5, 3 * MIN, "login"),
        login(3, 4 * MIN, "password_reset"),
        login(5, 5 * MIN, "login"),
        login(5, 6 * MIN, "login"),
        login(2, 20 * MIN, "password_reset"),
    ]
    .concat();
    (txs, logins)
}

fn alerts(stdout: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["rule"].as_str().unwrap().to_string(),
                v["key"].to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn replay_merges_the_streams_files_by_event_time() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "r.tl", &format!("{STREAMS}{RULES}"));
    let (txs, logins) = inputs();
    let txs = write(dir.path(), "tx.jsonl", &txs);
    let logins_file = write(dir.path(), "logins.jsonl", &logins);
    let (ok, stdout, stderr) = tripline(&[
        "replay",
        "--rules",
        &rules,
        "--events",
        &txs,
        "--events",
        &format!("logins={logins_file}"),
        "--flush",
    ]);
    assert!(ok, "{stderr}");
    let got = alerts(&stdout);
    let want: Vec<(String, String)> = [
        ("big", "1"),
        ("logins_burst", "5"),
        ("reset_next_transfer", "1"),
        ("reset_then_transfer", "1"),
    ]
    .iter()
    .map(|(r, k)| (r.to_string(), k.to_string()))
    .collect();
    assert_eq!(got, want, "{stderr}");
    // The alert shows the reset it matched.
    let first: serde_json::Value = serde_json::from_str(
        stdout
            .lines()
            .find(|l| l.contains("\"reset_then_transfer\""))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["values"]["kind"], "password_reset", "{first}");

    // The same events in the other file order: the merge is by time.
    let reversed: String = logins
        .lines()
        .rev()
        .map(|l| format!("{l}\n"))
        .collect::<String>();
    let late = write(dir.path(), "logins-reversed.jsonl", &reversed);
    let (ok, stdout, stderr) = tripline(&[
        "replay",
        "--rules",
        &rules,
        "--events",
        &txs,
        "--events",
        &format!("logins={late}"),
        "--flush",
    ]);
    assert!(ok, "{stderr}");
    // Without lateness, a login file in reverse order makes all but its
    // first (the latest) login late: reported, not silently dropped.
    assert!(stderr.contains("7 late"), "{stderr}");
    assert!(!alerts(&stdout).iter().any(|(r, _)| r == "logins_burst"));

    // A stream named on the command line must exist.
    let (ok, _, stderr) = tripline(&[
        "replay",
        "--rules",
        &rules,
        "--events",
        &txs,
        "--events",
        &format!("login={logins_file}"),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("no stream `login` (streams: transactions, logins)"),
        "{stderr}"
    );
}

#[test]
fn backtest_counts_labels_of_the_main_stream_only() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "r.tl", &format!("{STREAMS}{RULES}"));
    let (txs, logins) = inputs();
    let txs = write(dir.path(), "tx.jsonl", &txs);
    let logins = write(dir.path(), "logins.jsonl", &logins);
    let (ok, stdout, stderr) = tripline(&[
        "backtest",
        "--rules",
        &rules,
        "--alone",
        "--events",
        &txs,
        "--events",
        &format!("logins={logins}"),
    ]);
    assert!(ok, "{stderr}");
    // 13 events; the transfers of customers 1, 2 and 3 are labelled.
    assert!(
        stdout.contains("13 events over 1 days, 3 labelled"),
        "{stdout}"
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with("reset_then_transfer"))
        .unwrap();
    // One alert, right, catching one of three.
    assert!(row.contains("100.0 %") && row.contains("33.3 %"), "{row}");
}

#[test]
fn examples_give_events_per_stream() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{STREAMS}{RULES}\n\
         example \"reset then transfer\" {{\n\
           events \"\"\"\n{}\"\"\"\n\
           events logins \"\"\"\n{}\"\"\"\n\
           expect reset_then_transfer 1\n\
           expect big 0\n\
         }}\n",
        tx(1, 10 * MIN, 2000, true),
        login(1, MIN, "password_reset"),
    );
    let rules = write(dir.path(), "r.tl", &text);
    let (ok, stdout, stderr) = tripline(&["test", &rules]);
    assert!(ok, "{stdout}{stderr}");

    let wrong = text.replace(
        "expect reset_then_transfer 1",
        "expect reset_then_transfer 2",
    );
    let rules = write(dir.path(), "wrong.tl", &wrong);
    let (ok, stdout, stderr) = tripline(&["test", &rules]);
    assert!(!ok);
    assert!(
        format!("{stdout}{stderr}").contains("reset_then_transfer: expected 2 alerts, got 1"),
        "{stdout}{stderr}"
    );
}

fn check_error(rules: &str, wanted: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "bad.tl", rules);
    let (ok, stdout, stderr) = tripline(&["check", &path]);
    assert!(!ok, "compiled: {rules}");
    let all = format!("{stdout}{stderr}");
    for w in wanted {
        assert!(all.contains(w), "missing `{w}` in:\n{all}");
    }
}

#[test]
fn mistakes_are_reported_where_they_are_written() {
    check_error(
        &format!("{STREAMS}rule r {{ pattern {{ a: login where kind == \"x\" }} }}\n"),
        &[
            "bad.tl:10:",
            "unknown stream `login`",
            "did you mean `logins`?",
        ],
    );
    check_error(
        &format!("{STREAMS}rule r {{ pattern {{ a: logins where amount > 1 }} }}\n"),
        &[
            "unknown field or stage `amount`",
            "stream `logins` declares: kind",
        ],
    );
    check_error(
        &format!(
            "{STREAMS}rule r {{ pattern {{ g: logins where (a: kind == \"x\" then b: amount > 1) }} }}\n"
        ),
        &["a group takes no stream"],
    );
    check_error(
        "stream a { key k  time t }\nstream b { key user  time t }\n\
         rule r { pattern { x: a where v > 1 then y: b where v > 2 } }\n",
        &[
            "rule `r` reads streams `a` (key k) and `b` (key user)",
            "add `key FIELD`",
        ],
    );
    check_error(
        "stream a { key k  time t }\nstream a { key k  time t }\n",
        &["bad.tl:2:8", "stream `a` is defined twice"],
    );
    check_error(
        &format!(
            "{STREAMS}rule big {{ pattern {{ tx: amount > 1 }} }}\n\
             example e {{ events logon \"\"\"{{}}\"\"\" expect big 0 }}\n"
        ),
        &["unknown stream `logon`"],
    );
}

/// A rule keyed by a field both streams carry reads them under that key.
#[test]
fn streams_with_other_keys_meet_under_a_key_clause() {
    let rules = "stream cards { key card  time t  time format epoch_ms }\n\
                 stream devices { key device  time t  time format epoch_ms }\n\
                 rule new_device_then_spend {\n\
                   key customer\n\
                   within 1h\n\
                   pattern { d: devices where first_seen then c: cards where amount > 100 }\n\
                 }\n";
    let rs = RuleSet::from_source("k.tl", rules, None).unwrap();
    let mut engine = Engine::new(rs.clone());
    let mut out = Outputs::default();
    let records = [
        (
            1,
            r#"{"device":"D1","customer":"C1","t":1000,"first_seen":true}"#,
        ),
        (0, r#"{"card":"K9","customer":"C1","t":2000,"amount":500}"#),
        (0, r#"{"card":"K8","customer":"C2","t":3000,"amount":500}"#),
    ];
    for (i, (stream, r)) in records.iter().enumerate() {
        engine
            .on_record(*stream, r.as_bytes(), i as u64, &mut out, |_, _| {})
            .unwrap();
    }
    engine.finish(&mut out);
    let keys: Vec<&tripline::event::Value> = out.alerts.iter().map(|a| &a.key).collect();
    assert_eq!(keys, [&tripline::event::Value::from("C1")]);
}

/// Adding a stream keeps the state of the rules of the main stream: a
/// sequence half matched before the change completes after it.
#[test]
fn adding_a_stream_keeps_the_main_streams_rules_state() {
    let one = RuleSet::from_source(
        "a.tl",
        "stream transactions { key CUSTOMER_ID  time ts  time format epoch_ms }\n\
         rule two_big { within 1h pattern { a: amount > 1000 then b: amount > 1000 } }\n",
        None,
    )
    .unwrap();
    let two = RuleSet::from_source(
        "b.tl",
        &format!(
            "{}rule two_big {{ within 1h pattern {{ a: amount > 1000 then b: amount > 1000 }} }}\n",
            STREAMS.replace("fields amount, new_payee, TX_FRAUD", "")
        ),
        None,
    )
    .unwrap();
    let mut engine = Engine::new(one);
    let mut out = Outputs::default();
    engine
        .on_record(
            0,
            tx(1, MIN, 2000, false).as_bytes(),
            0,
            &mut out,
            |_, _| {},
        )
        .unwrap();
    let (mut engine, migration) = engine.migrate(Arc::clone(&two));
    assert_eq!(
        migration.rules,
        [(Arc::from("two_big"), RuleChange::Kept)],
        "{migration:?}"
    );
    engine
        .on_record(
            1,
            login(1, 2 * MIN, "login").as_bytes(),
            1,
            &mut out,
            |_, _| {},
        )
        .unwrap();
    engine
        .on_record(
            0,
            tx(1, 3 * MIN, 3000, false).as_bytes(),
            2,
            &mut out,
            |_, _| {},
        )
        .unwrap();
    engine.finish(&mut out);
    assert_eq!(out.alerts.len(), 1, "{:?}", out.alerts);
}
