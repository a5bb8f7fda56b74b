//! `tripline state inspect|compact` on a real RocksDB data directory written
//! the way the service writes it (a shard's output state and a position per
//! shard), run as the binary an operator runs.

use std::path::Path;
use std::process::{Command, Output};
use tripline::adapters::local::{LocalState, Position};
use tripline::engine::RuleSet;
use tripline::state::StateStore;
use tripline_core::shard::{Record, Shard};

const RULES: &str = r#"
stream tx { key card time ts time format epoch_ms lateness 0ms }
rule big_spend { pattern { a: amount > 100 and sum(amount over 1h) > 500 } }
rule pair { within 10m report timeouts pattern { a: amount > 50 then b: amount > 50 } }
"#;

/// A data directory with one shard `tx/3` holding cards `c1` (three
/// events, 30+40+60) and `c2` (one, 70), at input offset 4. Removed when
/// dropped.
fn data_dir(name: &str) -> tempfile::TempDir {
    let temp = tempfile::Builder::new()
        .prefix(&format!("tripline-state-cli-{name}-"))
        .tempdir()
        .expect("a temporary directory");
    let dir = temp.path();
    let rs = RuleSet::from_source("r.tl", RULES, None).expect("compiles");
    let mut shard = Shard::standalone(3, rs);
    let events = [
        ("c1", 30, 1_000),
        ("c1", 40, 2_000),
        ("c2", 70, 3_000),
        ("c1", 60, 4_000),
    ];
    for (i, (card, amount, ts)) in events.iter().enumerate() {
        let line = format!(r#"{{"card":"{card}","amount":{amount},"ts":{ts}}}"#);
        shard.process(Record::data(i as i64, None, Some(line.into_bytes())));
    }
    let local = LocalState::open(dir).expect("opens");
    let mut store = local.shard("tx", 3).expect("shard");
    store.write(shard.take_output().state).expect("writes");
    store
        .set_position(Position {
            input: 4,
            changelog: 2,
        })
        .expect("position");
    temp
}

fn tripline(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tripline"))
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("runs")
}

/// Runs `tripline` with `args` on `dir`, which must succeed: its JSON
/// output lines.
fn ok_json(args: &[&str], dir: &Path) -> Vec<serde_json::Value> {
    let out = tripline(args, dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_lines(&out)
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::Deserializer::from_str(&text)
        .into_iter::<serde_json::Value>()
        .map(|v| v.expect("JSON output"))
        .collect()
}

#[test]
fn inspect_summarises_each_shard() {
    let temp = data_dir("summary");
    let dir = temp.path();
    let lines = ok_json(&["state", "inspect"], dir);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let s = &lines[0];
    assert_eq!(s["shard"], "tx/3");
    assert_eq!(s["input_offset"], 4);
    assert_eq!(s["covered_offset"], 4);
    assert_eq!(s["changelog_offset"], 2);
    assert_eq!(s["state"]["keys"], 2);
    assert_eq!(s["state"]["events"], 4);
    assert_eq!(
        s["state"]["rules"],
        serde_json::json!(["big_spend", "pair"])
    );
}

#[test]
fn inspect_shows_one_keys_windows_and_partial_matches() {
    let temp = data_dir("key");
    let dir = temp.path();
    let lines = ok_json(&["state", "inspect", "--key", "c1"], dir);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let k = &lines[0]["key_state"];
    assert_eq!(lines[0]["shard"], "tx/3");
    assert_eq!(k["key"], "c1");
    let rules = k["rules"].as_array().expect("rules");
    let big = rules
        .iter()
        .find(|r| r["rule"] == "big_spend")
        .expect("big_spend");
    assert_eq!(big["windows"][0]["aggregate"], "sum");
    assert_eq!(big["windows"][0]["value"], 130.0);
    // `pair` is waiting for a second amount over 50 after c1's first one
    // (60 at 4 s), until 10 minutes later.
    let pair = rules.iter().find(|r| r["rule"] == "pair").expect("pair");
    assert_eq!(pair["idle"], false);
    assert_eq!(pair["next_deadline"], "1970-01-01T00:10:04Z");
}

#[test]
fn inspect_of_an_unknown_key_or_shard_fails_clearly() {
    let temp = data_dir("unknown");
    let dir = temp.path();
    let out = tripline(&["state", "inspect", "--key", "nobody"], dir);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no state for key `nobody`"));
    let out = tripline(&["state", "inspect", "--shard", "tx/9"], dir);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no shard `tx/9`"));
    let out = tripline(&["state", "inspect"], &dir.join("missing"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such data directory"));
}

#[test]
fn compact_keeps_the_state() {
    let temp = data_dir("compact");
    let dir = temp.path();
    let before = json_lines(&tripline(&["state", "inspect", "--key", "c2"], dir));
    let out = tripline(&["state", "compact"], dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("compacted"));
    let after = json_lines(&tripline(&["state", "inspect", "--key", "c2"], dir));
    assert_eq!(before, after);
    assert_eq!(after[0]["key_state"]["key"], "c2");
}
