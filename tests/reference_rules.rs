//! The example rules that read reference data (`examples/rules`: a second
//! stream of logins, a table of customer profiles, a terminal blocklist)
//! over the bundled sample and the data `scripts/gen-reference-data` made
//! for it: `replay`, `backtest` and `serve` (a real Kafka-protocol broker,
//! see `support/kafka.rs`) give the same alerts.

#[path = "support/kafka.rs"]
mod kafka_support;
#[path = "support/serve.rs"]
mod serve_support;

use flate2::read::GzDecoder;
use kafka_support::*;
use serve_support::{Terminated, serve_command};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tripline::adapters::kafka;
use tripline::config::Config;

/// The sample's first days: every rule alerts in them (the first blocklist
/// entries start on the 4th).
const UNTIL: &str = "2018-04-06";
const PARTITIONS: i32 = 2;
const RULES: [&str; 3] = ["reset_then_spend", "over_card_limit", "blocked_terminal"];

fn lines_of(path: &str) -> Vec<String> {
    let f = std::fs::File::open(path).unwrap();
    let reader: Box<dyn BufRead> = if path.ends_with(".gz") {
        Box::new(BufReader::new(GzDecoder::new(f)))
    } else {
        Box::new(BufReader::new(f))
    };
    reader
        .lines()
        .map(Result::unwrap)
        .filter(|l| !l.trim().is_empty())
        .collect()
}

/// The events of `path` before [`UNTIL`] (by `time_field`), then one per
/// partition far past them: every partition's watermark then passes every
/// deadline, in the service as at the end of a replay's file.
fn events(path: &str, time_field: &str, ending: impl Fn(i32) -> String) -> Vec<String> {
    let mut out: Vec<String> = lines_of(path)
        .into_iter()
        .filter(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v[time_field].as_str().unwrap() < UNTIL
        })
        .collect();
    out.extend((0..PARTITIONS).map(ending));
    out
}

fn customer(line: &str) -> u64 {
    serde_json::from_str::<serde_json::Value>(line).unwrap()["CUSTOMER_ID"]
        .as_u64()
        .unwrap()
}

/// The ending events' customers: one of each partition, with no profile.
fn ending_customer(p: i32) -> u64 {
    1_000_000 + p as u64
}

/// `rules/stream.tl` (the main stream: it comes first) and the rules of
/// `examples/rules`, their topics named after the test's group (a broker
/// may be shared), as directories `main` and `examples` in the returned
/// one.
fn rules_dir(c: &Config) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{}-rules", c.kafka.group_id));
    std::fs::create_dir_all(dir.join("main")).unwrap();
    std::fs::create_dir_all(dir.join("examples")).unwrap();
    std::fs::copy("rules/stream.tl", dir.join("main/stream.tl")).unwrap();
    for f in std::fs::read_dir("examples/rules").unwrap() {
        let f = f.unwrap().path();
        let text = std::fs::read_to_string(&f).unwrap();
        let text = text
            .replace(
                "stream logins {\n",
                &format!(
                    "stream logins {{\n  topic \"{}.logins\"\n",
                    c.kafka.group_id
                ),
            )
            .replace(
                "table profiles {\n",
                &format!(
                    "table profiles {{\n  topic \"{}.profiles\"\n",
                    c.kafka.group_id
                ),
            );
        std::fs::write(dir.join("examples").join(f.file_name().unwrap()), text).unwrap();
    }
    dir
}

fn tripline(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tripline"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tripline {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn ids_by_rule(alerts: &[String]) -> BTreeMap<String, Vec<String>> {
    let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for a in alerts {
        let v: serde_json::Value = serde_json::from_str(a).unwrap();
        by.entry(v["rule"].as_str().unwrap().to_string())
            .or_default()
            .push(v["id"].to_string());
    }
    for ids in by.values_mut() {
        ids.sort();
    }
    by
}

#[test]
fn replay_backtest_and_serve_agree_on_the_reference_data_rules() {
    let c = config("reference");
    let _files = TestFiles::of(&c);
    let dir = rules_dir(&c);
    let tx = events("examples/handbook-sample.jsonl.gz", "TX_DATETIME", |p| {
        format!(
            r#"{{"TRANSACTION_ID":-{},"TX_DATETIME":"2018-06-01T00:00:00","CUSTOMER_ID":{},"TERMINAL_ID":-1,"TX_AMOUNT":0.0,"TX_FRAUD":0}}"#,
            p + 1,
            ending_customer(p)
        )
    });
    let logins = events("examples/handbook-logins.jsonl.gz", "LOGIN_DATETIME", |p| {
        format!(
            r#"{{"LOGIN_ID":-{},"LOGIN_DATETIME":"2018-06-01T00:00:00","CUSTOMER_ID":{},"KIND":"login","CHANNEL":"app"}}"#,
            p + 1,
            ending_customer(p)
        )
    });
    let (tx_file, logins_file) = (dir.join("tx.jsonl"), dir.join("logins.jsonl"));
    std::fs::write(&tx_file, tx.join("\n")).unwrap();
    std::fs::write(&logins_file, logins.join("\n")).unwrap();
    let profiles = "examples/handbook-profiles.jsonl";
    let blocked = "examples/handbook-blocked-terminals.csv";
    let (main_rules, example_rules) = (dir.join("main"), dir.join("examples"));
    let rules = [
        main_rules.to_str().unwrap(),
        example_rules.to_str().unwrap(),
    ];
    let tx_arg = tx_file.to_str().unwrap();
    let logins_arg = format!("logins={}", logins_file.display());
    let (table_arg, list_arg) = (
        format!("profiles={profiles}"),
        format!("blocked_terminals={blocked}"),
    );

    // The same rules and inputs for replay and backtest.
    let inputs = [
        "--rules",
        rules[0],
        rules[1],
        "--events",
        tx_arg,
        "--events",
        &logins_arg,
        "--table",
        &table_arg,
        "--list",
        &list_arg,
    ];

    // Replay.
    let replayed: Vec<String> = tripline(&[&["replay"][..], &inputs].concat())
        .lines()
        .map(str::to_string)
        .collect();
    let replayed = ids_by_rule(&replayed);
    for rule in RULES {
        assert!(
            replayed.get(rule).is_some_and(|ids| !ids.is_empty()),
            "{rule} alerts in the replay: {replayed:?}"
        );
    }

    // Backtest: the same count of alerts per rule.
    let report = tripline(&[&["backtest", "--alone"][..], &inputs].concat());
    for rule in RULES {
        let row = report
            .lines()
            .find(|l| l.starts_with(&format!("{rule} ")))
            .unwrap_or_else(|| panic!("no row for {rule}:\n{report}"));
        let alerts = row[rule.len()..].split_whitespace().next().unwrap();
        assert_eq!(
            alerts,
            replayed[rule].len().to_string(),
            "{rule}'s alerts in the backtest:\n{report}"
        );
    }

    // Serve: the table's rows and the list's entries on their topics first
    // (a member reads them whole before its first event), then both streams.
    let b = broker();
    let k = &c.kafka;
    let logins_topic = format!("{}.logins", k.group_id);
    let profiles_topic = format!("{}.profiles", k.group_id);
    kafka::ensure_topics(k, &b, &[&k.input_topic, &logins_topic], PARTITIONS).unwrap();
    kafka::ensure_topics_with(
        k,
        &b,
        &[&profiles_topic, &k.lists_topic],
        1,
        &[("cleanup.policy", "compact")],
    )
    .unwrap();
    let rows: Vec<Input> = lines_of(profiles)
        .into_iter()
        .map(|l| Input {
            key: Some(customer(&l).to_string()),
            partition: None,
            payload: Some(l.into_bytes()),
        })
        .collect();
    produce_to(&c, &profiles_topic, &rows);
    let text = std::fs::read_to_string(blocked).unwrap();
    let entries =
        tripline::list_files::parse_list_file("blocked_terminals", Path::new(blocked), &text)
            .unwrap();
    let entries: Vec<Input> = entries
        .iter()
        .map(|e| Input {
            key: Some(format!("{}\0{}", e.list, e.value)),
            partition: None,
            payload: Some(serde_json::to_vec(e).unwrap()),
        })
        .collect();
    produce_to(&c, &k.lists_topic, &entries);
    let keyed = |lines: &[String]| -> Vec<Input> {
        lines
            .iter()
            .map(|l| {
                let key = customer(l);
                Input {
                    key: Some(key.to_string()),
                    partition: Some((key % PARTITIONS as u64) as i32),
                    payload: Some(l.clone().into_bytes()),
                }
            })
            .collect()
    };
    produce_to(&c, &k.input_topic, &keyed(&tx));
    produce_to(&c, &logins_topic, &keyed(&logins));

    let log = std::env::temp_dir().join(format!("{}.log", k.group_id));
    let _member = Terminated(
        serve_command(&c)
            .env("TRIPLINE__KAFKA__PARTITIONS", PARTITIONS.to_string())
            .env("TRIPLINE__CHECKPOINT__INTERVAL_MS", "100")
            .env("TRIPLINE__API__LISTEN", "127.0.0.1:0")
            .env(
                "TRIPLINE__RULES__PATHS",
                serde_json::to_string(&rules).unwrap(),
            )
            .env("TRIPLINE__STATE__DIR", &c.state.dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("tripline serve starts"),
    );
    let want: usize = replayed.values().map(Vec::len).sum();
    wait_progressing(
        Duration::from_secs(120),
        || {
            let got = committed_alerts(&c).len();
            (got as u64, (got >= want).then_some(()))
        },
        |n| {
            format!(
                "{n} of {want} alerts committed; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        },
    );
    let served = ids_by_rule(&committed_alerts(&c));
    assert_eq!(served, replayed);
}
