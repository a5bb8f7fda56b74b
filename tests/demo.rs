//! `tripline demo` as a new user meets it: each alert says what it found,
//! in event-time order, then a summary per rule and the commands to try
//! next. Runs on the embedded broker.

use std::process::Command;

/// A card with a steady month, then a spike (the `amount_spike` rule's own
/// example), and the same amount on a card without history.
const EVENTS: &str = r#"{"TRANSACTION_ID":1,"TX_DATETIME":"2018-04-01T10:00:00","CUSTOMER_ID":7,"TERMINAL_ID":1,"TX_AMOUNT":40.0,"TX_FRAUD":0}
{"TRANSACTION_ID":2,"TX_DATETIME":"2018-04-02T10:00:00","CUSTOMER_ID":7,"TERMINAL_ID":1,"TX_AMOUNT":35.0,"TX_FRAUD":0}
{"TRANSACTION_ID":3,"TX_DATETIME":"2018-04-03T10:00:00","CUSTOMER_ID":7,"TERMINAL_ID":2,"TX_AMOUNT":50.0,"TX_FRAUD":0}
{"TRANSACTION_ID":4,"TX_DATETIME":"2018-04-04T10:00:00","CUSTOMER_ID":7,"TERMINAL_ID":1,"TX_AMOUNT":45.0,"TX_FRAUD":0}
{"TRANSACTION_ID":5,"TX_DATETIME":"2018-04-05T10:00:00","CUSTOMER_ID":7,"TERMINAL_ID":3,"TX_AMOUNT":30.0,"TX_FRAUD":0}
{"TRANSACTION_ID":6,"TX_DATETIME":"2018-04-06T10:00:00","CUSTOMER_ID":7,"TERMINAL_ID":1,"TX_AMOUNT":42.0,"TX_FRAUD":0}
{"TRANSACTION_ID":7,"TX_DATETIME":"2018-04-07T10:00:00","CUSTOMER_ID":7,"TERMINAL_ID":1,"TX_AMOUNT":38.0,"TX_FRAUD":0}
{"TRANSACTION_ID":8,"TX_DATETIME":"2018-04-08T10:00:00","CUSTOMER_ID":7,"TERMINAL_ID":2,"TX_AMOUNT":41.0,"TX_FRAUD":0}
{"TRANSACTION_ID":9,"TX_DATETIME":"2018-04-09T10:00:00","CUSTOMER_ID":7,"TERMINAL_ID":1,"TX_AMOUNT":39.0,"TX_FRAUD":0}
{"TRANSACTION_ID":10,"TX_DATETIME":"2018-04-10T10:00:00","CUSTOMER_ID":7,"TERMINAL_ID":1,"TX_AMOUNT":900.0,"TX_FRAUD":1}
{"TRANSACTION_ID":11,"TX_DATETIME":"2018-04-11T10:00:00","CUSTOMER_ID":8,"TERMINAL_ID":1,"TX_AMOUNT":900.0,"TX_FRAUD":0}
"#;

#[test]
fn the_demo_explains_its_alerts_and_says_what_to_try_next() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, EVENTS).unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_tripline"))
        .args(["demo", "--rules"])
        .arg(root.join("rules"))
        .arg("--events")
        .arg(&events)
        .env("TRIPLINE__API__LISTEN", "127.0.0.1:0")
        .env("TRIPLINE__STATE__DIR", dir.path().join("state"))
        .current_dir(dir.path())
        .output()
        .expect("run tripline demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    let alerts: Vec<&str> = stdout.lines().filter(|l| l.starts_with("2018-")).collect();
    // What each alert found: the spike's amount against the card's average.
    let spike = alerts
        .iter()
        .find(|l| l.contains("amount_spike"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(spike.starts_with("2018-04-10 10:00:00"), "{spike}");
    assert!(spike.contains("key 7"), "{spike}");
    assert!(spike.contains("amount = 900"), "{spike}");
    assert!(spike.contains("avg_30d = "), "{spike}");
    assert!(spike.contains("terminal = 1"), "{spike}");
    let mut sorted = alerts.clone();
    sorted.sort();
    assert_eq!(alerts, sorted, "alerts in event-time order");
    // The summary: alerts per rule, and how many fell on labelled fraud.
    let header = stdout
        .lines()
        .find(|l| l.starts_with("rule "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        header.contains("alerts") && header.contains("on fraud"),
        "{header}"
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with("amount_spike "))
        .unwrap_or_else(|| panic!("{stdout}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells, ["amount_spike", "1", "1"], "{row}");
    assert!(
        stderr.contains("checkpoints (Kafka transactions)"),
        "{stderr}"
    );
    assert!(!stderr.contains(" transactions;"), "{stderr}");
    assert!(stderr.contains("next:"), "{stderr}");
    assert!(stderr.contains("tripline replay --rules rules"), "{stderr}");
}
