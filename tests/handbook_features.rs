//! Handbook parity: the 15 features of the fraud handbook, computed by
//! `rules/features.tl` through `tripline replay --features`, equal the
//! handbook's own values (`tests/data/README.md`).
//!
//! By default this checks the bundled first 10 days (95,815 transactions);
//! with `TRIPLINE_HANDBOOK_DIR` naming a directory holding the full
//! `transactions_2018-04.jsonl.gz` and `features_2018-04.csv.gz`, all
//! 288,062 (CI sets it where the data is present).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

fn inputs() -> (PathBuf, PathBuf) {
    match std::env::var_os("TRIPLINE_HANDBOOK_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            (
                dir.join("transactions_2018-04.jsonl.gz"),
                dir.join("features_2018-04.csv.gz"),
            )
        }
        None => {
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            (
                root.join("examples/handbook-sample.jsonl.gz"),
                root.join("tests/data/handbook-features-sample.csv.gz"),
            )
        }
    }
}

fn gunzip(path: &Path) -> String {
    let mut s = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap_or_else(|e| {
        panic!("{}: {e}", path.display());
    }))
    .read_to_string(&mut s)
    .unwrap();
    s
}

/// Rows by transaction id, as (column names, values).
fn read_csv(text: &str) -> (Vec<String>, BTreeMap<u64, Vec<f64>>) {
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(header[0], "TRANSACTION_ID");
    let mut rows = BTreeMap::new();
    for rec in r.records() {
        let rec = rec.unwrap();
        let id: u64 = rec[0].parse().unwrap();
        let vals = rec
            .iter()
            .skip(1)
            .map(|c| {
                if c.is_empty() {
                    f64::NAN
                } else {
                    c.parse().unwrap()
                }
            })
            .collect();
        rows.insert(id, vals);
    }
    (header[1..].to_vec(), rows)
}

#[test]
fn handbook_features_match_the_handbook() {
    let (transactions, expected) = inputs();
    let out = std::env::temp_dir().join(format!("tripline-features-{}.csv", std::process::id()));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new(env!("CARGO_BIN_EXE_tripline"))
        .current_dir(root)
        .args([
            "replay",
            "--rules",
            "rules/stream.tl",
            "rules/features.tl",
            "--events",
        ])
        .arg(&transactions)
        .arg("--features")
        .arg(&out)
        .args(["--with", "TRANSACTION_ID"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let got_text = std::fs::read_to_string(&out).unwrap();
    std::fs::remove_file(&out).ok();
    let (got_cols, got) = read_csv(&got_text);
    let (want_cols, want) = read_csv(&gunzip(&expected));
    assert_eq!(
        got_cols, want_cols,
        "the same 15 features, in the handbook's order"
    );
    assert_eq!(got.len(), want.len(), "one row per transaction");

    // Which transactions share a second with another of the same card: the
    // handbook orders those arbitrarily, tripline by transaction id.
    let mut per_second: BTreeMap<(u64, String), u32> = BTreeMap::new();
    let mut customer_second: BTreeMap<u64, (u64, String)> = BTreeMap::new();
    for line in gunzip(&transactions).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let key = (
            v["CUSTOMER_ID"].as_u64().unwrap(),
            v["TX_DATETIME"].as_str().unwrap().to_string(),
        );
        *per_second.entry(key.clone()).or_default() += 1;
        customer_second.insert(v["TRANSACTION_ID"].as_u64().unwrap(), key);
    }

    let mut differing = Vec::new();
    for (id, w) in &want {
        let g = got
            .get(id)
            .unwrap_or_else(|| panic!("no features for transaction {id}"));
        let bad: Vec<&str> = want_cols
            .iter()
            .zip(w.iter().zip(g))
            // The handbook rounds to 8 decimals; NaN (a missing cell) never matches.
            .filter(|(_, (w, g))| {
                let close = (*w - *g).abs() <= 1e-6 * w.abs().max(1.0);
                !close
            })
            .map(|(c, _)| c.as_str())
            .collect();
        if !bad.is_empty() {
            differing.push((*id, bad));
        }
    }
    differing.sort();
    for (id, cols) in &differing {
        let tie = per_second[&customer_second[id]] > 1;
        assert!(
            tie && cols.iter().all(|c| c.starts_with("CUSTOMER_ID_")),
            "transaction {id} differs in {cols:?}: expected {:?}, got {:?}",
            want[id],
            got[id]
        );
    }
    assert!(
        differing.len() <= 25,
        "{} rows differ (only same-second ties may): {differing:?}",
        differing.len()
    );
    eprintln!(
        "{} transactions, {} differ (same-second ties of one card)",
        want.len(),
        differing.len()
    );
}
