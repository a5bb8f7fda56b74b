//! Tables in the service, on a real Kafka-protocol broker (see
//! `support/kafka.rs`): a member reads a table's topic whole before its
//! first event, lookups are as of each event's time, a row changed while
//! the member was down (killed) is read back at restart (into the disk
//! store, `state.tables = "disk"`, which a second kill does not lose: only
//! the rows written meanwhile are read), and `replay` over
//! the same rows and events commits the same alerts.

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

/// A `tripline serve` member, its API's address and its log, killed
/// (SIGKILL) when dropped.
struct Member(Child, String, std::path::PathBuf);

impl Drop for Member {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

fn rules(c: &Config) -> String {
    format!(
        r#"
stream s {{ key card  time ts  time format epoch_ms }}
table profiles {{ key card  time UPDATED_AT  topic "{}.profiles" }}
rule abroad {{ pattern {{ tx: country != profiles.home }} }}
"#,
        c.kafka.group_id
    )
}

/// Where a member holds the tables' rows (`state.tables`).
#[derive(Clone, Copy)]
enum Store {
    Memory,
    Disk,
}

fn start(c: &Config, rules: &std::path::Path, store: Store) -> Member {
    static RUN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUN.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let log = std::env::temp_dir().join(format!("{}-{run}.log", c.kafka.group_id));
    let state = std::env::temp_dir().join(format!("{}.state", c.kafka.group_id));
    let child = rules_member(c, rules, &state, &log)
        .env("TRIPLINE__KAFKA__INSTANCE_ID", &c.kafka.instance_id)
        .env("TRIPLINE__KAFKA__SESSION_TIMEOUT_MS", "6000")
        .env("TRIPLINE__KAFKA__MAX_POLL_INTERVAL_MS", "10000")
        // The restarted member takes its partitions back at once.
        .env("TRIPLINE__KAFKA__STATIC_MEMBERSHIP", "true")
        .env("TRIPLINE__RUNTIME__SHARD_THREADS", "1")
        .env(
            "TRIPLINE__STATE__TABLES",
            match store {
                Store::Memory => "memory",
                Store::Disk => "disk",
            },
        )
        .spawn()
        .expect("tripline serve starts");
    // Listening means the tables were read: they are read first.
    let api = format!("http://{}", api_address(&log));
    Member(child, api, log)
}

fn event(card: u32, ts: i64, country: &str) -> Input {
    Input {
        key: Some(card.to_string()),
        partition: Some((card % 2) as i32),
        payload: Some(format!(r#"{{"card":{card},"ts":{ts},"country":"{country}"}}"#).into_bytes()),
    }
}

fn row(card: u32, at: i64, home: &str) -> (Input, String) {
    let json = format!(r#"{{"card":{card},"UPDATED_AT":{at},"home":"{home}"}}"#);
    (
        Input {
            key: Some(card.to_string()),
            partition: None,
            payload: Some(json.clone().into_bytes()),
        },
        json,
    )
}

/// Appends a row to the table file `replay` reads, returning its record.
fn keep(dir: &std::path::Path, record: Input, json: &str) -> Input {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("profiles.jsonl"))
        .unwrap();
    std::io::Write::write_all(&mut f, format!("{json}\n").as_bytes()).unwrap();
    record
}

/// The (card, ts) of the committed alerts, sorted.
fn alerted(c: &Config) -> Vec<(u64, i64)> {
    let mut got: Vec<(u64, i64)> = committed_alerts(c)
        .iter()
        .map(|a| serde_json::from_str::<serde_json::Value>(a).unwrap())
        .map(|a| {
            (
                a["key"].as_u64().unwrap(),
                a["matches"]["tx"][0]["ts"].as_i64().unwrap(),
            )
        })
        .collect();
    got.sort();
    got
}

fn wait_for_alerts(c: &Config, want: &[(u64, i64)]) {
    wait_progressing(
        Duration::from_secs(60),
        || {
            let got = alerted(c);
            (got.len() as u64, (got == want).then_some(()))
        },
        |n| format!("{n} alerts, want {want:?}: {:?}", alerted(c)),
    );
}

#[test]
fn members_read_tables_as_of_event_time_and_after_a_kill() {
    let c = config("tables");
    let _files = TestFiles::of(&c);
    kafka::ensure_topics(&c.kafka, &broker(), &[&c.kafka.input_topic], 2).unwrap();
    let dir = std::env::temp_dir().join(format!("{}-rules", c.kafka.group_id));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("r.tl"), rules(&c)).unwrap();
    let table_topic = format!("{}.profiles", c.kafka.group_id);

    // Rows before the service starts: card 1 lives in FR, card 2 in DE.
    let t0 = tripline::telemetry::now_ms();
    let rows = [row(1, t0, "FR"), row(2, t0, "DE")];
    let inputs: Vec<Input> = rows
        .into_iter()
        .map(|(i, json)| keep(&dir, i, &json))
        .collect();
    kafka::ensure_topics_with(
        &c.kafka,
        &broker(),
        &[&table_topic],
        1,
        &[("cleanup.policy", "compact")],
    )
    .unwrap();
    produce_to(&c, &table_topic, &inputs);
    let member = start(&c, &dir, Store::Memory);
    // Card 3 has no row: null compares to nothing.
    produce(
        &c,
        &[
            event(1, t0 + 1_000, "FR"),
            event(1, t0 + 1_000, "IT"),
            event(2, t0 + 1_000, "DE"),
            event(3, t0 + 1_000, "US"),
        ],
    );
    wait_for_alerts(&c, &[(1, t0 + 1_000)]);

    // Killed; meanwhile card 2 moves to IT from t1 (a row whose time is
    // ahead of some events still to come).
    drop(member);
    let t1 = t0 + 10_000;
    let (moved, json) = row(2, t1, "IT");
    let moved = keep(&dir, moved, &json);
    // Card 5 marks the end, from a row of its own.
    let (mark, json) = row(5, t0, "NL");
    let mark = keep(&dir, mark, &json);
    produce_to(&c, &table_topic, &[moved, mark]);
    // Restarted with the rows on disk: the store is rebuilt from the topic.
    let member = start(&c, &dir, Store::Disk);
    // The API shows what the member holds: the table, and a key's versions.
    let get = |path: &str| -> (u16, serde_json::Value) {
        match ureq::get(format!("{}{path}", member.1)).call() {
            Ok(mut r) => (r.status().as_u16(), r.body_mut().read_json().unwrap()),
            Err(ureq::Error::StatusCode(code)) => (code, serde_json::Value::Null),
            Err(e) => panic!("GET {path}: {e}"),
        }
    };
    let (code, page) = get("/v1/tables");
    assert_eq!(code, 200);
    assert_eq!(page["tables"][0]["name"], "profiles", "{page}");
    assert_eq!(page["tables"][0]["keys"], 3, "{page}");
    assert_eq!(page["tables"][0]["time"], "UPDATED_AT", "{page}");
    let (code, rows2) = get("/v1/tables/profiles/rows/2");
    assert_eq!(code, 200);
    let versions: Vec<(i64, String)> = rows2["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["from"].as_i64().unwrap(),
                v["row"]["home"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(versions, [(t0, "DE".to_string()), (t1, "IT".to_string())]);
    assert_eq!(get("/v1/tables/profiles/rows/9").0, 404);
    let metrics = serve_support::metrics(&member.1);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tripline_table_keys{")
                && l.contains("table=\"profiles\"")
                && l.ends_with(" 3")),
        "{metrics}"
    );
    assert_eq!(get("/v1/tables/nope/rows/2").0, 404);
    // Paid in IT just before the move (home DE then: abroad) and at it
    // (home IT: not abroad).
    produce(
        &c,
        &[
            event(2, t1 - 1, "IT"),
            event(2, t1, "IT"),
            event(5, t1 + 5, "BE"),
        ],
    );
    wait_for_alerts(&c, &[(1, t0 + 1_000), (2, t1 - 1), (5, t1 + 5)]);

    // Replay over the same rows and events commits the same alerts.
    let mut events: Vec<String> = read_committed(&c, &c.kafka.input_topic)
        .into_iter()
        .map(|(_, v, _)| String::from_utf8(v).unwrap())
        .collect();
    let ts = |e: &String| serde_json::from_str::<serde_json::Value>(e).unwrap()["ts"].as_i64();
    events.sort_by_key(ts);
    std::fs::write(dir.join("events.jsonl"), events.join("\n")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tripline"))
        .args(["replay", "-r"])
        .arg(dir.join("r.tl"))
        .arg("-e")
        .arg(dir.join("events.jsonl"))
        .arg("--table")
        .arg(format!("profiles={}", dir.join("profiles.jsonl").display()))
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

    // Killed again, card 2 moves to ES meanwhile: the restarted member
    // keeps what its disk store held and reads only the new row.
    drop(member);
    let t2 = t1 + 10_000;
    let (moved, json) = row(2, t2, "ES");
    produce_to(&c, &table_topic, &[keep(&dir, moved, &json)]);
    let member = start(&c, &dir, Store::Disk);
    let log = std::fs::read_to_string(&member.2).unwrap();
    let read = log
        .lines()
        .find(|l| l.contains("tables read"))
        .unwrap_or_else(|| panic!("no `tables read` in:\n{log}"));
    // The topic holds 5 records: 4 were kept, 1 is read.
    assert!(read.contains("kept=4") && read.contains("read=1"), "{read}");
    let row2 = ureq::get(format!("{}/v1/tables/profiles/rows/2", member.1))
        .call()
        .unwrap()
        .body_mut()
        .read_json::<serde_json::Value>()
        .unwrap();
    let homes: Vec<&str> = row2["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["row"]["home"].as_str().unwrap())
        .collect();
    assert_eq!(homes, ["DE", "IT", "ES"], "{row2}");
    drop(member);
    std::fs::remove_dir_all(&dir).ok();
}
