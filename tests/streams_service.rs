//! Several streams in the service, on a real Kafka-protocol broker (see
//! `support/kafka.rs`): each stream is read from its own topic (here with
//! different partition counts, so not co-partitioned), rules of one stream
//! run on its topic, rules reading several meet on the internal topic of
//! their key, and the committed alerts are those `replay` makes over one
//! file per stream.

#[path = "support/cli.rs"]
mod cli;
#[path = "support/kafka.rs"]
mod kafka_support;

use kafka_support::*;
use std::time::Duration;
use tripline::adapters::kafka::{self, service};
use tripline::config::Config;
use tripline::coordinator::Topology;
use tripline::engine::RuleSet;

fn rules(c: &Config) -> String {
    format!(
        r#"
stream transactions {{
  key CUSTOMER_ID  time ts  time format epoch_ms  idle 1s
}}
stream logins {{
  key CUSTOMER_ID  time ts  time format epoch_ms  idle 1s
  topic "{}.logins"
}}

rule reset_then_transfer {{
  within 1h
  pattern {{
    reset: logins where kind == "password_reset"
    then transfer: amount > 1000 and new_payee
  }}
}}

rule reset_next_transfer {{
  within 1h
  pattern {{
    reset: logins where kind == "password_reset"
    next transfer: transactions where amount > 1000
  }}
}}

rule big {{ pattern {{ tx: amount > 5000 }} }}

rule login_burst {{
  stream logins
  within 10m
  pattern {{ l: kind == "login" repeat 3 }}
}}
"#,
        c.kafka.group_id
    )
}

const MIN: i64 = 60_000;
const TX_PARTITIONS: i32 = 2;
const LOGIN_PARTITIONS: i32 = 3;

fn tx(c: u32, t: i64, amount: u32, new_payee: bool) -> Event {
    let json =
        format!(r#"{{"CUSTOMER_ID":{c},"ts":{t},"amount":{amount},"new_payee":{new_payee}}}"#);
    let input = Input {
        key: Some(c.to_string()),
        partition: Some(c as i32 % TX_PARTITIONS),
        payload: Some(json.clone().into_bytes()),
    };
    (input, json)
}

fn login(c: u32, t: i64, kind: &str) -> Event {
    let json = format!(r#"{{"CUSTOMER_ID":{c},"ts":{t},"kind":"{kind}"}}"#);
    let input = Input {
        key: Some(c.to_string()),
        partition: Some(c as i32 % LOGIN_PARTITIONS),
        payload: Some(json.clone().into_bytes()),
    };
    (input, json)
}

/// An event as produced, and as the line `replay` reads.
type Event = (Input, String);

/// Both streams' events.
fn events(t0: i64) -> (Vec<Event>, Vec<Event>) {
    let mut txs = Vec::new();
    let mut logins = Vec::new();
    for c in 0..30u32 {
        let t = t0 + i64::from(c) * 1000;
        match c % 5 {
            // A reset, then a transfer to a new payee 10 minutes later.
            0 => {
                logins.push(login(c, t, "password_reset"));
                txs.push(tx(c, t + 10 * MIN, 2000, true));
            }
            // A reset, a login, then a big transfer (`next` is broken).
            1 => {
                logins.push(login(c, t, "password_reset"));
                logins.push(login(c, t + MIN, "login"));
                txs.push(tx(c, t + 2 * MIN, 6000, false));
            }
            // A transfer, then a reset.
            2 => {
                txs.push(tx(c, t, 3000, true));
                logins.push(login(c, t + MIN, "password_reset"));
            }
            // Three logins.
            3 => {
                for i in 0..3 {
                    logins.push(login(c, t + i * MIN, "login"));
                }
            }
            // A reset, then a transfer two hours later.
            _ => {
                logins.push(login(c, t, "password_reset"));
                txs.push(tx(c, t + 120 * MIN, 2500, true));
            }
        }
    }
    // Each stream's events are produced in time order, as a system writing
    // them as they happen would.
    let ts =
        |(_, json): &Event| serde_json::from_str::<serde_json::Value>(json).unwrap()["ts"].as_i64();
    txs.sort_by_key(ts);
    logins.sort_by_key(ts);
    // Every partition of both topics moves past everything before: the
    // last deadlines fire in both runs.
    let end = t0 + 24 * 60 * MIN;
    for p in 0..TX_PARTITIONS {
        txs.push(tx(100 + p as u32, end, 0, false));
        txs.last_mut().unwrap().0.partition = Some(p);
    }
    for p in 0..LOGIN_PARTITIONS {
        logins.push(login(200 + p as u32, end, "end"));
        logins.last_mut().unwrap().0.partition = Some(p);
    }
    (txs, logins)
}

fn ids(alerts: &[String]) -> Vec<String> {
    let mut ids: Vec<String> = alerts
        .iter()
        .map(|a| serde_json::from_str::<serde_json::Value>(a).unwrap()["id"].to_string())
        .collect();
    ids.sort();
    ids
}

#[test]
fn the_service_commits_the_alerts_replay_makes_over_both_streams() {
    let c = config("streams");
    let _files = TestFiles::of(&c);
    let logins_topic = format!("{}.logins", c.kafka.group_id);
    kafka::ensure_topics(&c.kafka, &broker(), &[&c.kafka.input_topic], TX_PARTITIONS).unwrap();
    kafka::ensure_topics(&c.kafka, &broker(), &[&logins_topic], LOGIN_PARTITIONS).unwrap();
    let dir = std::env::temp_dir().join(format!("{}-rules", c.kafka.group_id));
    std::fs::create_dir_all(&dir).unwrap();
    let text = rules(&c);
    let rules_file = cli::write(&dir, "r.tl", &text);
    let rs = RuleSet::from_source("r.tl", &text, None).unwrap();

    // The plan: each stream's rules on its topic, the rules reading both
    // on the internal topic of their key, fed by both topics.
    let names = Topology::input_topics(&rs, &c.kafka.input_topic);
    assert_eq!(names, [c.kafka.input_topic.clone(), logins_topic.clone()]);

    let t0 = tripline::telemetry::now_ms() - 48 * 60 * MIN;
    let (txs, logins) = events(t0);
    let lines =
        |v: &[Event]| -> String { v.iter().map(|(_, j)| format!("{j}\n")).collect::<String>() };
    let tx_file = cli::write(&dir, "tx.jsonl", &lines(&txs));
    let login_file = cli::write(&dir, "logins.jsonl", &lines(&logins));
    let (ok, stdout, stderr) = cli::tripline(&[
        "replay",
        "--rules",
        &rules_file,
        "--events",
        &tx_file,
        "--events",
        &format!("logins={login_file}"),
    ]);
    assert!(ok, "{stderr}");
    let replayed: Vec<String> = stdout.lines().map(str::to_string).collect();
    let rules_fired: std::collections::BTreeSet<String> = replayed
        .iter()
        .map(|a| serde_json::from_str::<serde_json::Value>(a).unwrap()["rule"].to_string())
        .collect();
    assert_eq!(rules_fired.len(), 4, "every rule fires: {rules_fired:?}");
    let want = ids(&replayed);

    produce(&c, &txs.into_iter().map(|(i, _)| i).collect::<Vec<_>>());
    produce_to(
        &c,
        &logins_topic,
        &logins.into_iter().map(|(i, _)| i).collect::<Vec<_>>(),
    );
    let handle = service::start(
        c.clone(),
        broker(),
        rs,
        Default::default(),
        Default::default(),
    )
    .unwrap();
    wait_progressing(
        Duration::from_secs(90),
        || {
            assert!(!handle.is_finished(), "the service stopped early");
            let got = ids(&committed_alerts(&c));
            (got.len() as u64, (got == want).then_some(()))
        },
        |n| format!("{n} alerts committed, want {}", want.len()),
    );
    let progress = handle.progress().clone();
    handle.stop();
    handle.join().unwrap();
    // Events of both streams went through the internal topic.
    assert!(
        progress.forwarded.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "nothing forwarded"
    );
    std::fs::remove_dir_all(&dir).ok();
}
