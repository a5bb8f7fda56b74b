//! Lists in the service, on a real Kafka-protocol broker (see
//! `support/kafka.rs`): a change made through one member's REST API reaches
//! the other member's next events; lookups are as of each event's time;
//! the lists survive a restart (they live in the lists topic); and `replay`
//! over the API's export gives the alerts the service committed.

#[path = "support/kafka.rs"]
mod kafka_support;
#[path = "support/serve.rs"]
mod serve_support;

use kafka_support::*;
use serve_support::{api_address, rules_member};
use std::process::Child;
use std::time::Duration;
use tripline::adapters::kafka;
use tripline::config::Config;

const TOKEN: &str = "lists-test-token";
const RULES: &str = r#"
stream s { key card  time ts  time format epoch_ms }
list blocked
rule at_blocked { pattern { tx: terminal in blocked } }
"#;

/// A `tripline serve` member, killed (SIGKILL) when dropped.
struct Member(Child, String);

impl Drop for Member {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

fn start(c: &Config, instance: &str, rules: &std::path::Path) -> Member {
    // A log per run: the restarted member's address is its own.
    static RUN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUN.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let log = std::env::temp_dir().join(format!("{}-{instance}-{run}.log", c.kafka.group_id));
    let state = std::env::temp_dir().join(format!("{}-{instance}.state", c.kafka.group_id));
    let child = rules_member(c, rules, &state, &log)
        .env("TRIPLINE__KAFKA__INSTANCE_ID", instance)
        .env("TRIPLINE__KAFKA__SESSION_TIMEOUT_MS", "6000")
        // A rebalance waits this long at most for the member killed below.
        .env("TRIPLINE__KAFKA__MAX_POLL_INTERVAL_MS", "10000")
        // The restarted member takes its partitions back at once.
        .env("TRIPLINE__KAFKA__STATIC_MEMBERSHIP", "true")
        .env("TRIPLINE__RUNTIME__SHARD_THREADS", "1")
        .env("TRIPLINE__API__TOKEN", TOKEN)
        .spawn()
        .expect("tripline serve starts");
    let api = format!("http://{}", api_address(&log));
    Member(child, api)
}

fn event(card: u32, ts: i64, terminal: &str) -> Input {
    Input {
        key: Some(card.to_string()),
        // Cards alternate between the two partitions, so both members see some.
        partition: Some((card % 2) as i32),
        payload: Some(
            format!(r#"{{"card":{card},"ts":{ts},"terminal":"{terminal}"}}"#).into_bytes(),
        ),
    }
}

/// The cards of the committed alerts, sorted.
fn alerted_cards(c: &Config) -> Vec<u64> {
    let mut cards: Vec<u64> = committed_alerts(c)
        .iter()
        .map(|a| serde_json::from_str::<serde_json::Value>(a).unwrap())
        .map(|a| a["key"].as_u64().unwrap())
        .collect();
    cards.sort();
    cards
}

/// Waits until `cards` alerted (no fewer, no more), the service having had
/// the time to commit.
fn wait_for_alerts(c: &Config, cards: &[u64]) {
    wait_progressing(
        Duration::from_secs(60),
        || {
            let got = alerted_cards(c);
            (got.len() as u64, (got == cards).then_some(()))
        },
        |n| format!("{n} alerts, want cards {cards:?}: {:?}", alerted_cards(c)),
    );
}

fn wait_ready(api: &str) {
    wait_progressing(
        Duration::from_secs(60),
        || {
            let ready = ureq::get(format!("{api}/readyz")).call().is_ok();
            (0, ready.then_some(()))
        },
        |_| format!("{api} not ready"),
    );
}

fn get(api: &str, path: &str) -> serde_json::Value {
    ureq::get(format!("{api}{path}"))
        .header("Authorization", &format!("Bearer {TOKEN}"))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap()
}

#[test]
fn a_list_change_through_one_member_reaches_every_member() {
    let c = config("lists");
    let _files = TestFiles::of(&c);
    kafka::ensure_topics(&c.kafka, &broker(), &[&c.kafka.input_topic], 2).unwrap();
    let rules = std::env::temp_dir().join(format!("{}-rules", c.kafka.group_id));
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("r.tl"), RULES).unwrap();
    let a = start(&c, "a", &rules);
    let b = start(&c, "b", &rules);
    wait_ready(&a.1);
    wait_ready(&b.1);

    // Before the change: T9 is on no list.
    let t0 = tripline::telemetry::now_ms();
    let before: Vec<Input> = (0..4).map(|card| event(card, t0, "T9")).collect();
    produce(&c, &before);

    // Writes need the token.
    let refused = ureq::post(format!("{}/v1/lists/blocked/entries", a.1))
        .send_json(serde_json::json!({"value": "T9"}));
    assert!(refused.is_err(), "a write without the token");
    let from = t0 + 1_000;
    let added: serde_json::Value = ureq::post(format!("{}/v1/lists/blocked/entries", a.1))
        .header("Authorization", &format!("Bearer {TOKEN}"))
        .send_json(serde_json::json!({
            "value": "T9", "from": from, "author": "ana", "comment": "attack 7"
        }))
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    assert_eq!(added["changes"][0]["author"], "ana", "{added}");

    // The other member has it, with its history.
    wait_progressing(
        Duration::from_secs(30),
        || {
            let l = get(&b.1, "/v1/lists/blocked");
            (0, (l["entries"][0]["value"] == "T9").then_some(()))
        },
        |_| "member b never saw the change".into(),
    );
    assert_eq!(get(&b.1, "/v1/lists")["lists"][0]["declared"], true);

    // Events of either member's partitions from `from` on are flagged;
    // one just before it is not (lookups are as of event time).
    let after: Vec<Input> = [event(20, from - 1, "T9")]
        .into_iter()
        .chain((10..14).map(|card| event(card, from, "T9")))
        .chain([event(21, from + 5, "T8")])
        .collect();
    produce(&c, &after);
    wait_for_alerts(&c, &[10, 11, 12, 13]);

    // Killed and restarted, a member reads the list back from its topic.
    drop(a);
    let a = start(&c, "a", &rules);
    wait_ready(&a.1);
    assert_eq!(get(&a.1, "/v1/lists/blocked")["size"], 1);

    // Removed through the restarted member: later events are not flagged.
    let removed: serde_json::Value = ureq::delete(format!(
        "{}/v1/lists/blocked/entries/T9?author=ben&comment=cleared",
        a.1
    ))
    .header("Authorization", &format!("Bearer {TOKEN}"))
    .call()
    .unwrap()
    .body_mut()
    .read_json()
    .unwrap();
    assert_eq!(removed["on"], false, "{removed}");
    let gone_at = removed["changes"][1]["from"].as_i64().unwrap();
    wait_progressing(
        Duration::from_secs(30),
        || {
            let l = get(&b.1, "/v1/lists/blocked");
            (0, (l["size"] == 0).then_some(()))
        },
        |_| "member b never saw the removal".into(),
    );
    produce(
        &c,
        &[
            event(30, gone_at + 1_000, "T9"),
            event(31, gone_at + 1_000, "T9"),
        ],
    );
    // A marker that alerts only once everything before it was processed.
    let marker = from.max(gone_at) + 2_000;
    let added = ureq::post(format!("{}/v1/lists/blocked/entries", a.1))
        .header("Authorization", &format!("Bearer {TOKEN}"))
        .send_json(serde_json::json!({"value": "MARK", "from": marker}))
        .unwrap();
    assert_eq!(added.status(), 200);
    wait_progressing(
        Duration::from_secs(30),
        || {
            let l = get(&b.1, "/v1/lists/blocked");
            (
                0,
                (l["entries"].as_array().is_some_and(|e| e.len() == 2)).then_some(()),
            )
        },
        |_| "member b never saw the marker".into(),
    );
    produce(&c, &[event(40, marker, "MARK"), event(41, marker, "MARK")]);
    wait_for_alerts(&c, &[10, 11, 12, 13, 40, 41]);

    // Replay over the export and the same events commits the same alerts.
    let export = ureq::get(format!("{}/v1/lists/blocked/export", b.1))
        .header("Authorization", &format!("Bearer {TOKEN}"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let list_file = rules.join("blocked.jsonl");
    std::fs::write(&list_file, export).unwrap();
    // In event-time order: the service's watermark is per partition, a
    // replay's is over the one file.
    let mut events: Vec<String> = read_committed(&c, &c.kafka.input_topic)
        .into_iter()
        .map(|(_, v, _)| String::from_utf8(v).unwrap())
        .collect();
    let ts = |e: &String| serde_json::from_str::<serde_json::Value>(e).unwrap()["ts"].as_i64();
    events.sort_by_key(ts);
    let events_file = rules.join("events.jsonl");
    std::fs::write(&events_file, events.join("\n")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tripline"))
        .args(["replay", "-r"])
        .arg(rules.join("r.tl"))
        .arg("-e")
        .arg(&events_file)
        .arg("--list")
        .arg(format!("blocked={}", list_file.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = |a: &str| serde_json::from_str::<serde_json::Value>(a).unwrap()["id"].clone();
    let mut replayed: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|a| id(a).to_string())
        .collect();
    let mut served: Vec<String> = committed_alerts(&c)
        .iter()
        .map(|a| id(a).to_string())
        .collect();
    replayed.sort();
    served.sort();
    assert_eq!(replayed, served);
    drop(b);
    drop(a);
}
