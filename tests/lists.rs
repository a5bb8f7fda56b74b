//! Lists in `replay` and `backtest`: `--list NAME=FILE` fills a declared
//! list, lookups are as of each event's time, alerts show what they found,
//! and a list the rules do not declare is refused.

#[path = "support/cli.rs"]
mod cli;

use cli::{tripline, write};

const RULES: &str = r#"
stream s { key card  time ts  time format epoch_ms }
list blocked
rule at_blocked { pattern { tx: terminal in blocked } }
"#;

#[test]
fn replay_looks_lists_up_as_of_each_event_time() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "r.tl", RULES);
    // T1 blocked from 1000 until removed at 3000; T2 from 2000, expiring at 2500.
    let list = write(
        dir.path(),
        "blocked.csv",
        "value,from,until,op,author,comment\n\
         T1,1000,,,ana,attack 7\n\
         T2,2000,2500,,ana,\n\
         T1,3000,,remove,ben,cleared\n",
    );
    // Events out of arrival order on purpose: lookups follow event time.
    let events = write(
        dir.path(),
        "e.jsonl",
        &[
            (1, 999, "T1"),
            (1, 1000, "T1"),
            (2, 2499, "T2"),
            (2, 2500, "T2"),
            (1, 2999, "T1"),
            (1, 3000, "T1"),
            (3, 4000, "T3"),
        ]
        .iter()
        .map(|(c, t, term)| format!(r#"{{"card":{c},"ts":{t},"terminal":"{term}"}}"#))
        .collect::<Vec<_>>()
        .join("\n"),
    );
    let list_arg = format!("blocked={list}");
    let (ok, stdout, stderr) =
        tripline(&["replay", "-r", &rules, "-e", &events, "--list", &list_arg]);
    assert!(ok, "{stderr}");
    let alerts: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let at: Vec<i64> = alerts
        .iter()
        .map(|a| a["matches"]["tx"][0]["ts"].as_i64().unwrap())
        .collect();
    assert_eq!(at, [1000, 2499, 2999]);
    for a in &alerts {
        assert_eq!(a["values"]["terminal in blocked"], true, "{a}");
    }

    // Without the list: empty, and said so.
    let (ok, stdout, stderr) = tripline(&["replay", "-r", &rules, "-e", &events]);
    assert!(ok && stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("list `blocked` is empty"), "{stderr}");

    // A list the rules do not declare, and a bad file, are errors.
    let other = format!("allowed={list}");
    let (ok, _, stderr) = tripline(&["replay", "-r", &rules, "-e", &events, "--list", &other]);
    assert!(
        !ok && stderr.contains("declare no list `allowed`"),
        "{stderr}"
    );
    let bad = write(dir.path(), "bad.csv", "value,from\nT1,soon\n");
    let bad_arg = format!("blocked={bad}");
    let (ok, _, stderr) = tripline(&["replay", "-r", &rules, "-e", &events, "--list", &bad_arg]);
    assert!(
        !ok && stderr.contains("line 2: bad from time `soon`"),
        "{stderr}"
    );
}
