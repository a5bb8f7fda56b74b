//! `tripline train` as a user runs it: the bundled sample's features from
//! `tripline replay --features`, labels that arrive days after their
//! transactions, and the shipped card model retrained from them. Needs a
//! Python with the recipe's packages: `scripts/prerequisites --tests` makes
//! one (scripts/python-env), or name one in TRIPLINE_PYTHON. Reading the
//! service's topics needs a Kafka-protocol broker (see `support/kafka.rs`).

#[path = "support/cli.rs"]
mod cli;
#[path = "support/kafka.rs"]
mod kafka_support;
#[path = "support/python.rs"]
mod python_support;
#[path = "support/serve.rs"]
mod serve_support;

use cli::{tripline, write};
use python_support::python;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use tripline::event::{format_time, parse_time_str};
use tripline::model::Model;

const SAMPLE: &str = "examples/handbook-sample.jsonl.gz";

/// The handbook's 30 days when `TRIPLINE_HANDBOOK_DIR` names where they
/// are (CI sets it where the data is), else the bundled 10.
fn month() -> Option<PathBuf> {
    std::env::var_os("TRIPLINE_HANDBOOK_DIR")
        .map(|d| PathBuf::from(d).join("transactions_2018-04.jsonl.gz"))
}
const DAY: i64 = 86_400_000;

/// The sample's features, with the columns training reads.
fn features(dir: &Path) -> String {
    features_of(dir, SAMPLE)
}

fn features_of(dir: &Path, events: &str) -> String {
    features_to(dir, events, "features.csv")
}

/// `replay --features` of `events` into `dir/file` (.csv or .jsonl).
fn features_to(dir: &Path, events: &str, file: &str) -> String {
    let path = dir.join(file).display().to_string();
    let (ok, _, err) = tripline(&[
        "replay",
        "--rules",
        "rules/stream.tl",
        "--rules",
        "rules/features.tl",
        "--events",
        events,
        "--features",
        &path,
        "--with",
        "TRANSACTION_ID,CUSTOMER_ID,TX_DATETIME,TX_AMOUNT",
    ]);
    assert!(ok, "{err}");
    path
}

/// One label per fraud of the sample, known `delay(id)` after it.
fn labels(dir: &Path, delay: impl Fn(i64) -> i64) -> String {
    labels_of(dir, SAMPLE, delay)
}

fn labels_of(dir: &Path, events: &str, delay: impl Fn(i64) -> i64) -> String {
    let gz = flate2::read::GzDecoder::new(std::fs::File::open(events).unwrap());
    let mut out = String::new();
    for line in std::io::BufReader::new(gz).lines() {
        let e: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        if e["TX_FRAUD"] != 1 {
            continue;
        }
        let id = e["TRANSACTION_ID"].as_i64().unwrap();
        let t = parse_time_str(e["TX_DATETIME"].as_str().unwrap()).unwrap();
        out += &format!(
            "{{\"transaction_id\": {id}, \"fraud\": true, \"known_at\": \"{}\"}}\n",
            format_time(t + delay(id))
        );
    }
    write(dir, "labels.jsonl", &out)
}

fn model_in(dir: &Path) -> String {
    let p = dir.join("card_rf.onnx");
    std::fs::copy("models/card_rf.onnx", &p).unwrap();
    p.display().to_string()
}

/// `tripline train` over these files, the sample's spans after.
fn train_args<'a>(
    features: &'a str,
    labels: &'a str,
    model: &'a str,
    python: &'a str,
) -> Vec<&'a str> {
    let mut args = vec![
        "train",
        "--features",
        features,
        "--labels",
        labels,
        "--model",
        model,
        "--python",
        python,
    ];
    args.extend(SPANS);
    args
}

/// The sample's ten days: labels arrive within two days, the model trains
/// on three and is evaluated on two.
const SPANS: [&str; 6] = ["--delay", "2d", "--train", "3d", "--test", "2d"];

#[test]
fn a_new_version_is_written_with_its_card_and_never_over_another() {
    let dir = tempfile::tempdir().unwrap();
    let features = features(dir.path());
    let labels = labels(dir.path(), |id| DAY + id % 2 * DAY);
    let model = model_in(dir.path());
    let python = python();
    let args = train_args(&features, &labels, &model, &python);
    let (ok, out, err) = tripline(&args);
    assert!(ok, "{err}");
    // The sample ends on 2018-04-10: as of the next midnight, labels are
    // complete up to two days before.
    let new = dir.path().join("card_rf.2018-04-11.onnx");
    let card = dir.path().join("card_rf.2018-04-11.md");
    assert!(out.contains("wrote"), "{out}");

    let current = Model::from_bytes(&std::fs::read(&model).unwrap()).unwrap();
    let bytes = std::fs::read(&new).unwrap();
    let fresh = Model::from_bytes(&bytes).unwrap();
    assert_eq!(fresh.inputs(), current.inputs());
    assert!(
        fresh.is_tree_ensemble(),
        "a forest is retrained as a forest"
    );
    assert_ne!(fresh.hash(), current.hash());

    let text = std::fs::read_to_string(&card).unwrap();
    for needle in [
        "version 2018-04-11",
        "Trained on: 2018-04-06 to 2018-04-08",
        "labels as known at 2018-04-11T00:00:00Z",
        // The evaluation's model knew only what was known when the test
        // span began, and trained a delay before it.
        "trained on 2018-04-02 to 2018-04-04",
        "tested on\n2018-04-07 to 2018-04-08",
        "| this recipe |",
        "| current (",
    ] {
        assert!(text.contains(needle), "`{needle}` not in the card:\n{text}");
    }

    // Once more: the version exists, and stays as it was.
    let (ok, _, err) = tripline(&args);
    assert!(!ok);
    assert!(err.contains("never overwritten"), "{err}");
    assert_eq!(std::fs::read(&new).unwrap(), bytes);
}

#[test]
fn a_label_known_after_the_training_time_is_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let features = features(dir.path());
    // Every fraud becomes known 30 days later: after the sample's end, so
    // none is known when training as of its end.
    let labels = labels(dir.path(), |_| 30 * DAY);
    let model = model_in(dir.path());
    let args = train_args(&features, &labels, &model, "no-python-is-needed-to-refuse");
    let (ok, _, err) = tripline(&args);
    assert!(!ok);
    assert!(
        err.contains("the training span (2018-04-06 to 2018-04-08")
            && err.contains(" 0 of them fraud"),
        "{err}"
    );
    assert!(std::fs::read_dir(dir.path()).unwrap().all(|e| {
        !e.unwrap()
            .file_name()
            .to_string_lossy()
            .contains("2018-04-11")
    }));
}

#[test]
fn bad_input_is_named_before_anything_is_trained() {
    let dir = tempfile::tempdir().unwrap();
    let features = features(dir.path());
    let model = model_in(dir.path());
    let bad_labels = write(
        dir.path(),
        "bad.jsonl",
        "{\"transaction_id\": 1, \"fraud\": true, \"known_at\": \"2018-04-03\"}\n{\"transaction_id\": 2, \"fraud\": \"maybe\", \"known_at\": \"2018-04-03\"}\n",
    );
    let run = |labels: &str, features: &str, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--features",
            features,
            "--labels",
            labels,
            "--model",
            &model,
        ];
        args.extend(extra);
        tripline(&args)
    };
    let (ok, _, err) = run(&bad_labels, &features, &[]);
    assert!(!ok);
    assert!(
        err.contains("bad.jsonl") && err.contains("line 2") && err.contains("`fraud`"),
        "{err}"
    );

    let good_labels = labels(dir.path(), |_| DAY);
    let (ok, _, err) = run(&good_labels, &features, &["--card", "CARD"]);
    assert!(!ok);
    assert!(
        err.contains("no column `CARD`") && err.contains("CUSTOMER_ID"),
        "{err}"
    );

    let no_amount = write(
        dir.path(),
        "f.csv",
        "TRANSACTION_ID,CUSTOMER_ID,TX_DATETIME\n1,2,2018-04-01T00:00:00\n",
    );
    let (ok, _, err) = run(&good_labels, &no_amount, &[]);
    assert!(!ok);
    assert!(
        err.contains("no column `TX_AMOUNT` (an input of the model)"),
        "{err}"
    );

    // A trial needs both versions' scores.
    let (ok, _, err) = tripline(&[
        "trial",
        "--features",
        &features,
        "--labels",
        &good_labels,
        "--model",
        "card_rf",
    ]);
    assert!(!ok);
    assert!(
        err.contains("no column `card_rf` (a version's score)"),
        "{err}"
    );

    let mut spans = SPANS.to_vec();
    spans.extend(["--python", "/nonexistent/python"]);
    let (ok, _, err) = run(&good_labels, &features, &spans);
    assert!(!ok);
    assert!(
        err.contains("/nonexistent/python") && err.contains("--python"),
        "{err}"
    );
}

/// "AP a CP@100 b; the current model AP c CP@100 d" → ((a, b), (c, d)).
fn figures_after(out: &str) -> ((f64, f64), (f64, f64)) {
    let line = out
        .lines()
        .find(|l| l.contains("(after --as-of)"))
        .unwrap_or_else(|| panic!("no figures after the training time in:\n{out}"));
    let nums: Vec<f64> = line
        .split([' ', ';'])
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(nums.len(), 4, "{line}");
    ((nums[0], nums[1]), (nums[2], nums[3]))
}

#[test]
fn a_weekly_retrain_beats_the_model_it_replaces_on_the_next_week() {
    let dir = tempfile::tempdir().unwrap();
    // The handbook's protocol on its month: labels 7 days late, a week to
    // train on, the next week to test; on the bundled 10 days, shorter.
    let (events, spans, first, second) = match month() {
        Some(m) => (
            m.display().to_string(),
            ["--delay", "7d", "--train", "7d", "--test", "7d"],
            "2018-04-17",
            "2018-04-24",
        ),
        None => (SAMPLE.to_string(), SPANS, "2018-04-06", "2018-04-08"),
    };
    let features = features_of(dir.path(), &events);
    let delay = if month().is_some() { 7 * DAY } else { DAY };
    let labels = labels_of(dir.path(), &events, |_| delay);
    let shipped = dir.path().join("fraud_rf.onnx");
    std::fs::copy("models/fraud_rf.onnx", &shipped).unwrap();
    let python = python();
    let train = |model: &Path, as_of: &str| {
        let mut args = vec![
            "train",
            "--features",
            &features,
            "--labels",
            &labels,
            "--model",
            model.to_str().unwrap(),
            "--as-of",
            as_of,
            "--python",
            &python,
        ];
        args.extend(spans);
        let (ok, out, err) = tripline(&args);
        assert!(ok, "{err}");
        out
    };
    // A version trained as of the first date, then the next one trained
    // from it: both are tested on the span after the second date, which
    // neither trained on.
    train(&shipped, first);
    let previous = dir.path().join(format!("fraud_rf.{first}.onnx"));
    let out = train(&previous, second);
    let ((new_ap, new_cp), (old_ap, old_cp)) = figures_after(&out);
    for v in [new_ap, new_cp, old_ap, old_cp] {
        assert!((0.0..=1.0).contains(&v), "{out}");
    }
    let card = std::fs::read_to_string(dir.path().join(format!("fraud_rf.{second}.md"))).unwrap();
    assert!(
        card.contains("| this version |") && card.contains(&format!("fraud_rf.{first}.onnx")),
        "{card}"
    );
    if month().is_some() {
        // On the month, the second version trains on days whose terminal
        // windows have filled; the first trained on days they had not.
        assert!(new_ap > old_ap && new_cp > old_cp, "{out}");
    }

    // The new version on trial beside the one it would replace: the rules
    // score both on every event, the trial judges them on the week after
    // the new one's training time once its labels are in, and promotes it
    // in the rule file.
    let rules = write(
        dir.path(),
        "fraud.tl",
        &format!(
            "model fraud_rf from \"fraud_rf.{first}.onnx\"\n  candidate \"fraud_rf.{second}.onnx\"\n\
             rule likely_fraud {{\n  severity high\n  pattern {{ tx: fraud_rf >= 0.5 }}\n}}\n"
        ),
    );
    let scores = dir.path().join("scores.csv").display().to_string();
    let (ok, _, err) = tripline(&[
        "replay",
        "--rules",
        "rules/stream.tl",
        "--rules",
        "rules/features.tl",
        "--rules",
        &rules,
        "--events",
        &events,
        "--features",
        &scores,
        "--with",
        "TRANSACTION_ID,CUSTOMER_ID,TX_DATETIME",
    ]);
    assert!(ok, "{err}");
    // Judged: the span the training command backtested on, [second, second
    // + test), with the labels known a delay later.
    let delay_arg = spans[1];
    let test_days = if month().is_some() { 7 } else { 2 };
    let as_of = format_time(
        parse_time_str(&format!("{second}T00:00:00Z")).unwrap()
            + (test_days + delay_arg.trim_end_matches('d').parse::<i64>().unwrap()) * DAY,
    );
    let min_frauds = if month().is_some() { "50" } else { "1" };
    let (ok, out, err) = tripline(&[
        "trial",
        "--features",
        &scores,
        "--labels",
        &labels,
        "--model",
        "fraud_rf",
        "--since",
        second,
        "--as-of",
        &as_of,
        "--delay",
        delay_arg,
        "--min-frauds",
        min_frauds,
        "--rules",
        "rules/stream.tl",
        "--rules",
        "rules/features.tl",
        "--rules",
        &rules,
        "--promote",
    ]);
    assert!(ok, "{err}");
    let figures = |who: &str| -> (f64, f64) {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(who))
            .unwrap_or_else(|| panic!("no {who} line in:\n{out}"));
        let nums: Vec<f64> = line.split(' ').filter_map(|w| w.parse().ok()).collect();
        (nums[1], nums[2])
    };
    let (trial_old, trial_new) = (figures("running"), figures("candidate"));
    // The trial reads the scores the engine computed while replaying; the
    // training command scored the same days with the same models offline.
    for (served, offline) in [(trial_new, (new_ap, new_cp)), (trial_old, (old_ap, old_cp))] {
        assert!(
            (served.0 - offline.0).abs() < 0.002 && (served.1 - offline.1).abs() < 0.002,
            "trial {served:?} and train {offline:?}:\n{out}"
        );
    }
    let promoted = out.contains("promote: the candidate ranks fraud better");
    let text = std::fs::read_to_string(&rules).unwrap();
    assert_eq!(
        text.starts_with(&format!(
            "model fraud_rf from \"fraud_rf.{second}.onnx\"\nrule"
        )),
        promoted,
        "{out}\n{text}"
    );
    if month().is_some() {
        assert!(promoted, "{out}");
    }
}

/// The service's feature log has a row per event and keying (card features
/// in one, terminal features in another): merged by transaction, it trains
/// the very model the replay's one-row-per-event CSV trains.
#[test]
fn a_log_split_by_keying_trains_what_the_csv_trains() {
    let dir = tempfile::tempdir().unwrap();
    let csv = features(dir.path());
    let whole = features_to(dir.path(), SAMPLE, "whole.jsonl");
    let common = ["TRANSACTION_ID", "CUSTOMER_ID", "TX_DATETIME"];
    let mut split = String::new();
    for line in std::fs::read_to_string(&whole).unwrap().lines() {
        let row: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line).unwrap();
        let (terminal, card): (Vec<_>, Vec<_>) = row
            .iter()
            .filter(|(k, _)| !common.contains(&k.as_str()))
            .partition(|(k, _)| k.starts_with("TERMINAL_ID_"));
        for part in [terminal, card] {
            let mut out: serde_json::Map<String, serde_json::Value> = common
                .iter()
                .map(|c| (c.to_string(), row[*c].clone()))
                .collect();
            out.extend(part.into_iter().map(|(k, v)| (k.clone(), v.clone())));
            split += &serde_json::Value::Object(out).to_string();
            split.push('\n');
        }
    }
    let split = write(dir.path(), "split.jsonl", &split);
    let labels = labels(dir.path(), |_| DAY);
    let python = python();
    let mut trained = Vec::new();
    for (log, out) in [(csv.as_str(), "from-csv"), (split.as_str(), "from-split")] {
        let out = dir.path().join(out);
        let mut args = vec![
            "train",
            "--features",
            log,
            "--labels",
            &labels,
            "--model",
            "models/fraud_rf.onnx",
            "--out",
            out.to_str().unwrap(),
            "--python",
            &python,
        ];
        args.extend(SPANS);
        let (ok, _, err) = tripline(&args);
        assert!(ok, "{log}: {err}");
        trained.push(std::fs::read(out.join("fraud_rf.2018-04-11.onnx")).unwrap());
    }
    assert!(
        trained[0] == trained[1],
        "the two logs trained different models"
    );
}

/// `train --from-topics` reads the service's feature log and labels topics
/// (read_committed; a record that is not JSON left out, with a warning),
/// trains what the same rows in files train, and `--declare` puts the new
/// version on trial in the rule file, by a path relative to it.
#[test]
fn a_version_trained_from_the_topics_is_declared_as_the_candidate() {
    use kafka_support::{Input, TestFiles, config, produce_to};
    let dir = tempfile::tempdir().unwrap();
    let rows = features_to(dir.path(), SAMPLE, "rows.jsonl");
    let labels = labels(dir.path(), |_| DAY);
    let python = python();
    let c = config("train-topics");
    let _files = TestFiles::of(&c);
    let (features_topic, labels_topic) = (
        format!("{}.features", c.kafka.group_id),
        format!("{}.labels", c.kafka.group_id),
    );
    let records = |path: &str, extra: &[&str]| -> Vec<Input> {
        let text = std::fs::read_to_string(path).unwrap();
        (text.lines().chain(extra.iter().copied()))
            .map(|l| Input {
                key: None,
                partition: Some(0),
                payload: Some(l.as_bytes().to_vec()),
            })
            .collect()
    };
    for topic in [&features_topic, &labels_topic] {
        tripline::adapters::kafka::ensure_topics(&c.kafka, &kafka_support::broker(), &[topic], 1)
            .unwrap();
    }
    produce_to(&c, &features_topic, &records(&rows, &[]));
    // A label over two lines is read; one that is not JSON is left out.
    let split_label = "{\"transaction_id\": 999999999,\n \"fraud\": false, \"known_at\": \"2018-04-02T00:00:00Z\"}";
    produce_to(
        &c,
        &labels_topic,
        &records(&labels, &[split_label, "not a\nlabel"]),
    );

    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    for f in ["stream.tl", "features.tl"] {
        std::fs::copy(format!("rules/{f}"), rules.join(f)).unwrap();
    }
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::copy("models/card_rf.onnx", models.join("card_rf.onnx")).unwrap();
    let card = rules.join("card.tl");
    std::fs::write(
        &card,
        "model card_rf from \"../models/card_rf.onnx\" # the card model\n\
         rule card_model { severity high pattern { tx: card_rf >= 0.5 } }\n",
    )
    .unwrap();
    let out = serve_support::tripline_command(&c, "train")
        .env("TRIPLINE__FEATURE_LOG__TOPIC", &features_topic)
        .env("TRIPLINE__FEATURE_LOG__FIELDS", r#"["TRANSACTION_ID"]"#)
        .env("TRIPLINE__TRIAL__LABELS_TOPIC", &labels_topic)
        .args(["--from-topics", "--model"])
        .arg(models.join("card_rf.onnx"))
        .args(["--python", &python, "--declare", "card_rf", "-r"])
        .arg(&rules)
        .args(SPANS)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("1 records of") && stderr.contains("not JSON"),
        "{stderr}"
    );
    assert!(stdout.contains("declared:"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(&card).unwrap(),
        "model card_rf from \"../models/card_rf.onnx\"\n  candidate \"../models/card_rf.2018-04-11.onnx\" # the card model\n\
         rule card_model { severity high pattern { tx: card_rf >= 0.5 } }\n"
    );
    let (ok, _, err) = tripline(&["check", "-r", rules.to_str().unwrap()]);
    assert!(ok, "{err}");

    // The same rows and labels as files train the same model.
    let from_files = dir.path().join("from-files");
    let mut args = vec![
        "train",
        "--features",
        &rows,
        "--labels",
        &labels,
        "--model",
        "models/card_rf.onnx",
        "--out",
        from_files.to_str().unwrap(),
        "--python",
        &python,
    ];
    args.extend(SPANS);
    let (ok, _, err) = tripline(&args);
    assert!(ok, "{err}");
    assert!(
        std::fs::read(models.join("card_rf.2018-04-11.onnx")).unwrap()
            == std::fs::read(from_files.join("card_rf.2018-04-11.onnx")).unwrap(),
        "the topics trained another model than the files"
    );
}
