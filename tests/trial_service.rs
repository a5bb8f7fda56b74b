//! A model's candidate on trial in the service, on a real Kafka-protocol
//! broker (see `support/kafka.rs`): the rules declare the card model with a
//! candidate, the service writes both scores to its feature log, reads them
//! back with the labels topic, shows the trial on the API, and, with
//! `trial.promote = "auto"`, promotes the candidate in the rule file once
//! it wins; the running service then reads the candidate. With `"manual"`,
//! the console's models panel (headless Chromium) shows the API's figures
//! and promotes the candidate. With `[train]`, the service retrains the
//! model on its own feature log and labels and declares the new version;
//! stopped mid-training, it leaves neither the training's Python nor its
//! files behind.

#[path = "support/browser.rs"]
mod browser_support;
#[path = "support/kafka.rs"]
mod kafka_support;
#[path = "support/python.rs"]
mod python_support;
#[path = "support/serve.rs"]
mod serve_support;

use kafka_support::*;
use serve_support::{Terminated, api_address, rules_member};
use std::time::Duration;
use tripline::event::{format_time, parse_time_str};

/// The label a fraud team would send for handbook transaction `e` if it is
/// a fraud: known `delay_ms` after the transaction.
fn fraud_label(e: &serde_json::Value, delay_ms: i64) -> Option<Input> {
    if e["TX_FRAUD"] != 1 {
        return None;
    }
    let t = parse_time_str(e["TX_DATETIME"].as_str().unwrap()).unwrap();
    let label = format!(
        r#"{{"transaction_id":{},"fraud":true,"known_at":"{}"}}"#,
        e["TRANSACTION_ID"],
        format_time(t + delay_ms)
    );
    Some(Input {
        key: None,
        partition: Some(0),
        payload: Some(label.into_bytes()),
    })
}

const TOKEN: &str = "trial-token";

/// A service running the card model with its twin as candidate, the
/// handbook sample's head on its input and the sample's frauds on its labels
/// topic (each known 12 hours after it), promoting by `promote`.
struct Trial {
    c: tripline::config::Config,
    _files: TestFiles,
    rules: std::path::PathBuf,
    log: std::path::PathBuf,
    features: String,
    api: String,
    member: Option<Terminated>,
}

impl Trial {
    fn start(name: &str, promote: &str) -> Trial {
        let c = config(name);
        let files = TestFiles::of(&c);
        let dir = std::env::temp_dir().join(format!("{}-rules", c.kafka.group_id));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["stream.tl", "features.tl"] {
            std::fs::copy(format!("rules/{f}"), dir.join(f)).unwrap();
        }
        // The candidate is the card model's twin: the same scores, so with
        // no margin it wins as soon as enough frauds are labelled.
        let models = std::fs::canonicalize("models").unwrap();
        std::fs::copy(models.join("card_rf.onnx"), dir.join("card_rf.next.onnx")).unwrap();
        let rules = dir.join("card_model.tl");
        std::fs::write(
            &rules,
            format!(
                "model card_rf from \"{}\"\n  candidate \"card_rf.next.onnx\"\n\
                 rule card_model {{\n  severity high\n  pattern {{ tx: card_rf >= 0.5 }}\n}}\n",
                models.join("card_rf.onnx").display()
            ),
        )
        .unwrap();
        let features = format!("{}.features", c.kafka.group_id);
        let labels = format!("{}.labels", c.kafka.group_id);

        let (input, lines) = sample_head_input(c.kafka.partitions, 30_000);
        tripline::adapters::kafka::ensure_topics(&c.kafka, &broker(), &[&c.kafka.input_topic], 4)
            .unwrap();
        tripline::adapters::kafka::ensure_topics(&c.kafka, &broker(), &[&labels], 1).unwrap();
        let frauds: Vec<Input> = (lines.iter())
            .filter_map(|l| fraud_label(&serde_json::from_str(l).unwrap(), 43_200_000))
            .collect();
        assert!(frauds.len() > 20, "{} frauds", frauds.len());
        produce_to(&c, &labels, &frauds);

        let log = std::env::temp_dir().join(format!("{}.log", c.kafka.group_id));
        let state = std::env::temp_dir().join(format!("{}.state", c.kafka.group_id));
        let member = Terminated(
            rules_member(&c, &dir, &state, &log)
                .env("TRIPLINE__API__TOKEN", TOKEN)
                .env("TRIPLINE__FEATURE_LOG__TOPIC", &features)
                .env("TRIPLINE__FEATURE_LOG__FIELDS", r#"["TRANSACTION_ID"]"#)
                .env("TRIPLINE__TRIAL__LABELS_TOPIC", &labels)
                .env("TRIPLINE__TRIAL__DELAY", "1d")
                .env("TRIPLINE__TRIAL__MARGIN", "0")
                .env("TRIPLINE__TRIAL__MIN_FRAUDS", "10")
                .env("TRIPLINE__TRIAL__PROMOTE", promote)
                .env("TRIPLINE__TRIAL__EVERY", "1s")
                .spawn()
                .expect("tripline serve starts"),
        );
        let api = format!("http://{}", api_address(&log));
        let trial = Trial {
            c,
            _files: files,
            rules,
            log,
            features,
            api,
            member: Some(member),
        };
        // Before any row: no trial to show.
        let (status, body) = trial.call("GET", "/v1/models/card_rf/trial");
        assert_eq!(status, 404, "{body}");
        produce(&trial.c, &input);
        trial
    }

    fn call(&self, method: &str, path: &str) -> (u16, serde_json::Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let url = format!("{}{path}", self.api);
        let auth = format!("Bearer {TOKEN}");
        let mut r = match method {
            "POST" => agent.post(url).header("authorization", auth).send_empty(),
            _ => agent.get(url).header("authorization", auth).call(),
        }
        .unwrap();
        (r.status().as_u16(), r.body_mut().read_json().unwrap())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The rule file once the candidate's declaration is gone from it and
    /// the service has reloaded it.
    fn promoted(&self) -> String {
        let text = wait_progressing(
            Duration::from_secs(120),
            || {
                let text = std::fs::read_to_string(&self.rules).unwrap();
                let log_text = self.log_text();
                let done = !text.contains("candidate") && log_text.contains("rules reloaded");
                (log_text.len() as u64, done.then_some(text))
            },
            |_| self.log_text(),
        );
        assert!(
            text.starts_with("model card_rf from \"card_rf.next.onnx\"\nrule card_model"),
            "{text}"
        );
        let (_, listed) = self.call("GET", "/v1/rules");
        let model = &listed["models"][0];
        assert!(
            model["file"]
                .as_str()
                .unwrap()
                .ends_with("card_rf.next.onnx")
                && model["candidate"].is_null(),
            "{listed}"
        );
        // The trial is over.
        let (status, _) = self.call("GET", "/v1/models/card_rf/trial");
        assert_eq!(status, 404);
        text
    }

    /// The feature log carried both scores, equal, on the card rows.
    fn check_feature_log(&self) {
        let rows = read_committed(&self.c, &self.features);
        let both = rows
            .iter()
            .filter_map(|(_, v, _)| serde_json::from_slice::<serde_json::Value>(v).ok())
            .filter(|r| r.get("card_rf@candidate").is_some_and(|v| !v.is_null()))
            .inspect(|r| assert_eq!(r["card_rf"], r["card_rf@candidate"], "{r}"))
            .count();
        assert!(both > 1000, "{both} rows with both scores");
    }
}

impl Drop for Trial {
    fn drop(&mut self) {
        drop(self.member.take());
        let _ = std::fs::remove_dir_all(self.rules.parent().unwrap());
        let _ = std::fs::remove_file(&self.log);
    }
}

#[test]
fn a_candidate_that_wins_its_trial_is_promoted_by_the_service() {
    let t = Trial::start("trial", "auto");
    t.promoted();
    assert!(
        t.log_text().contains("the candidate won and is promoted"),
        "{}",
        t.log_text()
    );
    t.check_feature_log();
}

#[test]
fn a_manual_trial_is_shown_by_the_api_and_the_console_and_promoted_from_it() {
    let t = Trial::start("trial-manual", "manual");
    // The trial's judgement, once enough frauds are a label delay old.
    let report = wait_progressing(
        Duration::from_secs(120),
        || {
            let (status, body) = t.call("GET", "/v1/models/card_rf/trial");
            let done = status == 200 && body["verdict"] == "promote";
            (t.log_text().len() as u64, done.then_some(body))
        },
        |_| t.log_text(),
    );
    assert_eq!(report["model"], "card_rf");
    assert_eq!(report["auto"], false);
    assert!(report["frauds"].as_u64().unwrap() >= 10, "{report}");
    assert!(
        report["transactions"].as_u64().unwrap() > report["frauds"].as_u64().unwrap(),
        "{report}"
    );
    // Twins: the same figures, every one of them there.
    for figure in ["auc", "ap", "card_precision"] {
        assert!(report["running"][figure].is_f64(), "{report}");
        assert_eq!(
            report["running"][figure], report["candidate"][figure],
            "{report}"
        );
    }
    assert!(report["from"].as_str().unwrap() < report["until"].as_str().unwrap());
    // Manual: the service does not promote by itself.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        std::fs::read_to_string(&t.rules)
            .unwrap()
            .contains("candidate"),
        "promoted without being asked"
    );
    // The console shows both versions' figures and promotes the candidate
    // (a write: it asks for the token).
    let browser = browser_support::browser();
    let tab = browser.new_tab().unwrap();
    tab.navigate_to(&format!("{}/", t.api))
        .unwrap()
        .wait_until_navigated()
        .unwrap();
    let minute = Duration::from_secs(60);
    let candidate = "#models tr[data-version=\"candidate\"]";
    // Compared in lower case: the verdict is styled upper case, which the
    // rendered text follows once the page's styles apply.
    browser_support::wait_text(&tab, candidate, minute, &|t| {
        t.to_lowercase().contains("promote:")
    });
    // The page's figures are the API's (rows may still be arriving: the
    // page refreshes every 10 s).
    let running_row = "#models tr[data-version=\"running\"]";
    let shown = browser_support::wait_text(&tab, running_row, minute, &|shown| {
        let (_, now) = t.call("GET", "/v1/models/card_rf/trial");
        let ap = format!("{:.3}", now["running"]["ap"].as_f64().unwrap());
        let auc = format!("{:.3}", now["candidate"]["auc"].as_f64().unwrap());
        shown.starts_with("card_rf") && shown.contains(&ap) && shown.contains(&auc)
    });
    assert!(shown.contains("card_rf.onnx"), "{shown}");
    let shown = browser_support::text_of(&tab, candidate);
    assert!(shown.contains("card_rf.next.onnx"), "{shown}");
    let js = |code: &str| tab.evaluate(code, false).unwrap();
    js(&format!(
        "document.getElementById('token-input').value = '{TOKEN}';\
         document.getElementById('token').requestSubmit();"
    ));
    js(&format!(
        "document.querySelector('{candidate} button').click()"
    ));
    browser_support::wait_text(&tab, "#model-result", minute, &|t| {
        t.contains("card_rf now runs card_rf.next.onnx")
    });
    t.promoted();
    assert!(!t.log_text().contains("the candidate won and is promoted"));
    // Promoted: the model runs alone, with no trial.
    browser_support::wait_text(&tab, "#models", minute, &|t| {
        let t = t.to_lowercase();
        t.contains("no candidate") && !t.contains("promote:")
    });
}

/// A service retraining the card model every 3 s with `python` on its own
/// feature log and a labels topic holding the whole sample's frauds (each
/// known a day after it), its temporary files under `tmp`.
struct Retraining {
    _files: TestFiles,
    dir: std::path::PathBuf,
    rules: std::path::PathBuf,
    log: std::path::PathBuf,
    member: Option<Terminated>,
}

impl Retraining {
    fn start(name: &str, python: &str, tmp: &std::path::Path) -> Retraining {
        let c = config(name);
        let files = TestFiles::of(&c);
        let dir = std::env::temp_dir().join(format!("{}-rules", c.kafka.group_id));
        std::fs::create_dir_all(dir.join("models")).unwrap();
        for f in ["stream.tl", "features.tl"] {
            std::fs::copy(format!("rules/{f}"), dir.join(f)).unwrap();
        }
        std::fs::copy("models/card_rf.onnx", dir.join("models/card_rf.onnx")).unwrap();
        let rules = dir.join("card_model.tl");
        std::fs::write(
            &rules,
            "model card_rf from \"models/card_rf.onnx\"\n\
             rule card_model {\n  severity high\n  pattern { tx: card_rf >= 0.5 }\n}\n",
        )
        .unwrap();
        let features = format!("{}.features", c.kafka.group_id);
        let labels = format!("{}.labels", c.kafka.group_id);
        tripline::adapters::kafka::ensure_topics(&c.kafka, &broker(), &[&c.kafka.input_topic], 4)
            .unwrap();
        tripline::adapters::kafka::ensure_topics(&c.kafka, &broker(), &[&labels], 1).unwrap();
        let lines = sample_lines();
        let mut input = Vec::new();
        let mut frauds = Vec::new();
        for l in &lines {
            let e: serde_json::Value = serde_json::from_str(l).unwrap();
            input.push(Input {
                key: Some(e["CUSTOMER_ID"].to_string()),
                partition: None,
                payload: Some(l.clone().into_bytes()),
            });
            frauds.extend(fraud_label(&e, 86_400_000));
        }
        produce_to(&c, &labels, &frauds);

        let log = std::env::temp_dir().join(format!("{}.log", c.kafka.group_id));
        let state = std::env::temp_dir().join(format!("{}.state", c.kafka.group_id));
        let member = Terminated(
            rules_member(&c, &dir, &state, &log)
                .env("TMPDIR", tmp)
                .env("TRIPLINE__FEATURE_LOG__TOPIC", &features)
                .env("TRIPLINE__FEATURE_LOG__FIELDS", r#"["TRANSACTION_ID"]"#)
                .env("TRIPLINE__TRIAL__LABELS_TOPIC", &labels)
                .env("TRIPLINE__TRAIN__MODELS", r#"["card_rf"]"#)
                .env("TRIPLINE__TRAIN__EVERY", "3s")
                .env("TRIPLINE__TRAIN__DELAY", "2d")
                .env("TRIPLINE__TRAIN__SPAN", "3d")
                .env("TRIPLINE__TRAIN__TEST", "2d")
                .env("TRIPLINE__TRAIN__PYTHON", python)
                .spawn()
                .expect("tripline serve starts"),
        );
        let _ = api_address(&log);
        produce(&c, &input);
        Retraining {
            _files: files,
            dir,
            rules,
            log,
            member: Some(member),
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log's lines about trainings.
    fn trainings(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("train:")).collect();
        lines.join("\n")
    }
}

impl Drop for Retraining {
    fn drop(&mut self) {
        drop(self.member.take());
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(&self.log);
    }
}

/// `[train]`: the service retrains the card model on its own feature log
/// and the labels topic on schedule, writes the version with its card
/// beside the running one, and declares it as the model's candidate in the
/// rule file, which it then runs.
#[test]
fn the_service_retrains_a_model_on_schedule_and_declares_the_version() {
    let tmp = tempfile::tempdir().unwrap();
    let t = Retraining::start("retrain", &python_support::python(), tmp.path());
    // Trainings log every few seconds whether they succeed or not, so
    // progress is no measure here: a fixed deadline is.
    let deadline = now() + Duration::from_secs(300);
    let declared = loop {
        let text = std::fs::read_to_string(&t.rules).unwrap();
        let version = text
            .split_once("candidate \"models/")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(file, _)| file.to_string());
        if let Some(v) = version.filter(|_| t.log_text().contains("rules reloaded")) {
            break v;
        }
        assert!(
            now() < deadline,
            "no version declared in 300 s; trainings:\n{}",
            t.trainings()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        declared.starts_with("card_rf.2018-04-") && declared.ends_with(".onnx"),
        "{declared}"
    );
    let card = t.dir.join("models").join(declared.replace(".onnx", ".md"));
    assert!(card.exists(), "no model card {}", card.display());
    let running = t.log_text();
    assert!(running.contains("train: wrote"), "{running}");
}

/// A service stopped in the middle of a retraining stops the training's
/// Python with it and leaves none of the training's temporary files (a
/// copy of the feature log, the training set) behind.
#[test]
fn a_service_stopped_mid_training_leaves_no_process_or_file_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    // A Python that fits for ever: it says its pid, then sleeps in its place.
    let started = work.path().join("fitting");
    let python = work.path().join("python");
    std::fs::write(
        &python,
        format!(
            "#!/bin/sh\ncase \"$*\" in *train_model.py*) echo $$ > '{}'; exec sleep 600 ;; esac\n\
             exec '{}' \"$@\"\n",
            started.display(),
            python_support::python()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&python, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut t = Retraining::start("retrain-stop", python.to_str().unwrap(), tmp.path());
    let deadline = now() + Duration::from_secs(300);
    let pid = loop {
        let said = std::fs::read_to_string(&started).unwrap_or_default();
        if said.ends_with('\n') {
            break said.trim().to_string();
        }
        assert!(
            now() < deadline,
            "no fit started in 300 s; trainings:\n{}",
            t.trainings()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(
        !left.is_empty(),
        "the training keeps its files under TMPDIR"
    );

    drop(t.member.take());
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            // A zombie (state Z) has ended: only its parent has yet to reap it.
            .is_ok_and(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
            })
    };
    let gone = now() + Duration::from_secs(10);
    while alive() && now() < gone {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !alive(),
        "the training's Python ({pid}) outlives the service"
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(
        t.log_text().contains("train: stopped with the service"),
        "{}",
        t.trainings()
    );
}
