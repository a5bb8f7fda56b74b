//! `tripline backtest` as a user runs it: a candidate rule set (the shipped
//! rules with one threshold lowered) against the shipped ones over the
//! bundled labelled sample. Its figures must agree with what `tripline
//! replay` gives for each rule set, scored here independently from the
//! alerts' evidence and the labels.

#[path = "support/sample.rs"]
mod sample;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

const SAMPLE: &str = "examples/handbook-sample.jsonl.gz";

fn tripline(args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tripline"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert!(out.status.success(), "{args:?}: {stderr}");
    (stdout, stderr)
}

/// Per rule: (alerts, alerts whose evidence holds a fraud, frauds caught),
/// from `replay`'s alerts.
fn scored_replay(rules: &Path) -> BTreeMap<String, (u64, u64, BTreeSet<String>)> {
    let (alerts, _) = tripline(&[
        "replay",
        "--rules",
        rules.to_str().unwrap(),
        "--events",
        SAMPLE,
        "--flush",
    ]);
    let mut per_rule: BTreeMap<String, (u64, u64, BTreeSet<String>)> = BTreeMap::new();
    for line in alerts.lines() {
        let a: serde_json::Value = serde_json::from_str(line).unwrap();
        let frauds: BTreeSet<String> = a["matches"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|events| events.as_array().unwrap())
            .filter(|e| e["TX_FRAUD"] == 1)
            .map(|e| e["TRANSACTION_ID"].to_string())
            .collect();
        let entry = per_rule
            .entry(a["rule"].as_str().unwrap().to_string())
            .or_default();
        entry.0 += 1;
        entry.1 += u64::from(!frauds.is_empty());
        entry.2.extend(frauds);
    }
    per_rule
}

/// The sample's frauds and days.
fn sample_labels() -> (usize, usize) {
    let text = std::io::read_to_string(flate2::read::GzDecoder::new(
        std::fs::File::open(Path::new(env!("CARGO_MANIFEST_DIR")).join(SAMPLE)).unwrap(),
    ))
    .unwrap();
    let mut frauds = 0;
    let mut days = BTreeSet::new();
    for line in text.lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        frauds += usize::from(e["TX_FRAUD"] == 1);
        days.insert(e["TX_DATETIME"].as_str().unwrap()[..10].to_string());
    }
    (frauds, days.len())
}

fn pct(right: u64, of: u64) -> String {
    if of == 0 {
        "—".into()
    } else {
        format!("{:.1} %", 100.0 * right as f64 / of as f64)
    }
}

#[test]
fn backtest_compares_a_candidate_with_the_current_rules() {
    let root = std::env::temp_dir().join(format!("tripline-backtest-{}", std::process::id()));
    std::fs::remove_dir_all(&root).ok();
    let candidate = sample::copy_rules_and_models(&root);
    let spike = candidate.join("amount_spike.tl");
    let text = std::fs::read_to_string(&spike).unwrap();
    assert!(text.contains("TX_AMOUNT > 4 * avg"));
    std::fs::write(
        &spike,
        text.replace("TX_AMOUNT > 4 * avg", "TX_AMOUNT > 3 * avg"),
    )
    .unwrap();

    let (report, summary) = tripline(&[
        "backtest",
        "--rules",
        candidate.to_str().unwrap(),
        "--current",
        "rules",
        "--events",
        SAMPLE,
        "--label",
        "TX_FRAUD",
        "--flush",
    ]);
    assert!(summary.contains("0 invalid"), "{summary}");
    let (frauds, days) = sample_labels();
    assert!(
        report.starts_with(&format!(
            "95815 events over {days} days, {frauds} labelled by TX_FRAUD"
        )),
        "{report}"
    );
    let row = |rule: &str| -> Vec<String> {
        let line = report
            .lines()
            .find(|l| l.starts_with(&format!("{rule} ")))
            .unwrap_or_else(|| panic!("no row for {rule}:\n{report}"));
        // Columns are "cand / curr" pairs.
        line[rule.len()..]
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect()
    };
    let cand = scored_replay(&candidate);
    let curr = scored_replay(Path::new("rules"));
    assert!(
        cand["amount_spike"].0 > curr["amount_spike"].0,
        "the lower threshold fires more"
    );
    for rule in ["amount_spike", "card_model", "risky_terminal"] {
        let (c, k) = (&cand[rule], &curr[rule]);
        let cols = row(rule);
        assert_eq!(cols[0], format!("{} / {}", c.0, k.0), "{rule} alerts");
        assert_eq!(
            cols[1],
            format!(
                "{:.1} / {:.1}",
                c.0 as f64 / days as f64,
                k.0 as f64 / days as f64
            ),
            "{rule} per day"
        );
        assert_eq!(cols[2], format!("{} / {}", pct(c.1, c.0), pct(k.1, k.0)));
        assert_eq!(
            cols[3],
            format!(
                "{} / {}",
                pct(c.2.len() as u64, frauds as u64),
                pct(k.2.len() as u64, frauds as u64)
            ),
            "{rule} recall"
        );
    }
    // A rule that never fires has no precision.
    assert_eq!(row("velocity")[2], "— / —");
    let any = row("(any rule)");
    let total =
        |s: &BTreeMap<String, (u64, u64, BTreeSet<String>)>| s.values().map(|v| v.0).sum::<u64>();
    assert_eq!(any[0], format!("{} / {}", total(&cand), total(&curr)));

    // Alone: the candidate's columns only.
    let (alone, _) = tripline(&[
        "backtest",
        "--rules",
        candidate.to_str().unwrap(),
        "--alone",
        "--events",
        SAMPLE,
        "--flush",
    ]);
    let line = alone
        .lines()
        .find(|l| l.starts_with("amount_spike"))
        .unwrap();
    assert_eq!(
        line.split_whitespace().nth(1),
        Some(cand["amount_spike"].0.to_string().as_str())
    );
    assert!(!alone.contains(" / "), "{alone}");
    std::fs::remove_dir_all(&root).ok();
}
