//! The shipped models scored by tripline's evaluators against scikit-learn's
//! own probabilities (`tests/data/model-check.csv`, written by
//! `scripts/train-model` with the models).

use std::path::Path;
use std::sync::Arc;
use tripline::engine::{Engine, EngineOptions, Outputs, RuleSet};
use tripline::event::FieldPath;
use tripline::files::AddPath;
use tripline::model::Model;

#[path = "support/sample.rs"]
mod sample;

fn check_rows() -> (Vec<String>, Vec<Vec<f64>>) {
    let mut r = csv::Reader::from_path("tests/data/model-check.csv").expect("model-check.csv");
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    let rows = r
        .records()
        .map(|rec| {
            rec.unwrap()
                .iter()
                .map(|v| v.parse::<f64>().unwrap())
                .collect()
        })
        .collect();
    (header, rows)
}

fn agrees_with_scikit_learn(name: &str, tolerance: f64) {
    let model = tripline::files::load_model(Path::new(&format!("models/{name}.onnx"))).unwrap();
    let (header, rows) = check_rows();
    let cols: Vec<usize> = model
        .inputs()
        .iter()
        .map(|i| header.iter().position(|h| h == i).expect("input column"))
        .collect();
    let col = header
        .iter()
        .position(|h| *h == format!("{name}_proba"))
        .expect("expected probabilities column");
    assert!(rows.len() >= 1000);
    let mut worst = 0f64;
    let mut positives = 0;
    for row in &rows {
        let x: Vec<f32> = cols.iter().map(|&c| row[c] as f32).collect();
        let got = model.score(&x).expect("scores");
        let want = row[col];
        worst = worst.max((got - want).abs());
        positives += usize::from(want > 0.5);
    }
    assert!(
        worst <= tolerance,
        "{name}: largest difference from scikit-learn {worst:e} over {} rows",
        rows.len()
    );
    // The rows must exercise both sides of the decision.
    assert!(
        positives > 0 && positives < rows.len(),
        "{name}: {positives} rows above 0.5"
    );
}

#[test]
fn the_forest_scores_as_scikit_learn_does() {
    agrees_with_scikit_learn("fraud_rf", 1e-6);
}

#[test]
fn the_card_forest_scores_as_scikit_learn_does() {
    agrees_with_scikit_learn("card_rf", 1e-6);
}

#[test]
fn the_logistic_regression_scores_as_scikit_learn_does() {
    agrees_with_scikit_learn("fraud_lr", 1e-5);
}

#[test]
fn a_model_knows_its_kind() {
    let load = |name: &str| tripline::files::load_model(Path::new(name)).unwrap();
    let (forest, linear) = (load("models/fraud_rf.onnx"), load("models/fraud_lr.onnx"));
    assert!(forest.is_tree_ensemble() && !forest.is_linear());
    assert!(linear.is_linear() && !linear.is_tree_ensemble());
    assert!(
        (linear.operators().iter()).any(|o| o == "LinearClassifier"),
        "{:?}",
        linear.operators()
    );
}

#[test]
fn models_without_their_input_names_are_refused() {
    let mut bytes = std::fs::read("models/fraud_lr.onnx").unwrap();
    // Corrupt the property name: the model no longer says what it reads.
    let at = bytes
        .windows(17)
        .position(|w| w == b"tripline.features")
        .expect("metadata in the file");
    bytes[at] = b'X';
    let e = Model::from_bytes(&bytes).unwrap_err().to_string();
    assert!(e.contains("does not name its inputs"), "{e}");
}

fn rule_set(extra: &[(&str, &str)]) -> Result<Arc<RuleSet>, String> {
    let mut c = tripline::files::compiler();
    c.add_path(Path::new("rules/stream.tl"));
    c.add_path(Path::new("rules/features.tl"));
    for (name, text) in extra {
        c.add_source(name, text);
    }
    c.compile()
        .map(|def| RuleSet::build(def, EngineOptions::default()))
        .map_err(|e| e.to_string())
}

/// The rule fires exactly on the events whose features the model scores
/// 0.5 or more, and each alert carries that score and the model's inputs.
#[test]
fn a_rule_reads_the_model_score_and_its_alerts_carry_the_features() {
    let text = std::fs::read_to_string("models/fraud.tl").unwrap();
    let rules = rule_set(&[("models/fraud.tl", &text)]).unwrap();
    let model = tripline::files::load_model(Path::new("models/fraud_rf.onnx")).unwrap();
    let cols: Vec<usize> = model
        .inputs()
        .iter()
        .map(|i| {
            rules
                .feature_columns()
                .iter()
                .position(|c| &**c == i)
                .unwrap_or(usize::MAX)
        })
        .collect();
    let amount = rules
        .def()
        .schema
        .slot(&FieldPath::single("TX_AMOUNT"))
        .unwrap();
    let mut engine = Engine::new(rules.clone()).collect_features();
    let mut out = Outputs::default();
    sample::replay_sample(&mut engine, 30_000, &mut out);
    let mut expected = Vec::new();
    for row in &out.features {
        let x: Vec<f32> = cols
            .iter()
            .map(|&c| match c {
                usize::MAX => row.event.field(amount).as_f64().unwrap() as f32,
                c => row.values[c].as_f64().unwrap() as f32,
            })
            .collect();
        let score = model.score(&x).unwrap();
        if score >= 0.5 {
            expected.push((row.event.seq, score, x));
        }
    }
    let alerts: Vec<_> = out
        .alerts
        .iter()
        .filter(|a| &*a.rule == "likely_fraud")
        .collect();
    assert!(
        expected.len() >= 10,
        "{} events score 0.5 or more",
        expected.len()
    );
    assert_eq!(alerts.len(), expected.len());
    for (alert, (seq, score, x)) in alerts.iter().zip(&expected) {
        assert_eq!(alert.matches[0].1[0].seq, *seq);
        let value = |name: &str| {
            alert
                .values
                .iter()
                .find(|(n, _)| &**n == name)
                .and_then(|(_, v)| v.as_f64())
                .unwrap_or_else(|| panic!("alert lacks {name}"))
        };
        assert_eq!(value("fraud_rf"), *score);
        for (name, v) in model.inputs().iter().zip(x) {
            assert_eq!(value(name) as f32, *v, "{name}");
        }
    }
}

#[test]
fn model_declarations_are_checked() {
    let err = |text: &str| rule_set(&[("models/t.tl", text)]).unwrap_err();
    let e = err("model m from \"missing.onnx\"\n");
    assert!(
        e.contains("models/t.tl:1:14") && e.contains("cannot load model `m`"),
        "{e}"
    );
    // A feature set that redefines one of the handbook features.
    let e = err(
        "model m from \"fraud_rf.onnx\"\nfeatures x { key TERMINAL_ID  TX_DURING_NIGHT = 1 }\n",
    );
    assert!(
        e.contains("feature `TX_DURING_NIGHT` is also defined"),
        "{e}"
    );
    let e = err("features f { ratio = TX_AMOUNT / CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW }\n");
    assert!(
        e.contains("a feature set cannot read the feature `CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW`"),
        "{e}"
    );
    let e = err("model TX_DURING_NIGHT from \"fraud_rf.onnx\"\n");
    assert!(e.contains("has the name of a feature"), "{e}");
    // A model whose inputs the rules cannot provide.
    let mut c = tripline::files::compiler();
    c.add_path(Path::new("rules/stream.tl"));
    c.add_source("models/t.tl", "model m from \"fraud_rf.onnx\"\n");
    let e = c.compile().unwrap_err().to_string();
    assert!(
        e.contains("model `m` reads `TX_DURING_WEEKEND` is neither a feature nor a field of stream `transactions`"),
        "{e}"
    );
}

#[test]
fn the_service_refuses_models_that_read_another_keys_features() {
    let fraud = std::fs::read_to_string("models/fraud.tl").unwrap();
    let rules = rule_set(&[("models/fraud.tl", &fraud)]).unwrap();
    let problems = rules.cross_key_models();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("rule `likely_fraud` (keyed by CUSTOMER_ID) reads model `fraud_rf`")
            && problems[0].contains("computed per TERMINAL_ID by feature set `terminal`"),
        "{}",
        problems[0]
    );
    // The card model reads card features only: it runs partitioned, and the
    // card partitions' rule set keeps it (and only it).
    let card = std::fs::read_to_string("rules/card_model.tl").unwrap();
    let rules = rule_set(&[("rules/card_model.tl", &card)]).unwrap();
    assert!(rules.cross_key_models().is_empty());
    let by_card = rules.for_key(rules.stream_key_slot());
    let names: Vec<_> = by_card
        .def()
        .models
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(names, ["card_rf"]);
    let by_terminal = rules.for_key(Some(rules.keyings()[1].slot));
    assert!(by_terminal.def().models.is_empty());
}

/// A candidate scores every event beside its model, into its own column of
/// the features, and changes no alert: the rules read the model alone.
#[test]
fn a_candidate_scores_beside_its_model_and_no_rule_reads_it() {
    let text = std::fs::read_to_string("models/fraud.tl").unwrap();
    let with = text.replace(
        "model fraud_rf from \"fraud_rf.onnx\"",
        "model fraud_rf from \"fraud_rf.onnx\"\n  candidate \"fraud_lr.onnx\"",
    );
    assert_ne!(with, text);
    let run = |text: &str| {
        let rules = rule_set(&[("models/fraud.tl", text)]).unwrap();
        let mut engine = Engine::new(rules.clone()).collect_features();
        let mut out = Outputs::default();
        sample::replay_sample(&mut engine, 20_000, &mut out);
        (rules, out)
    };
    let (plain, before) = run(&text);
    let (rules, after) = run(&with);
    let alerts = |o: &Outputs| -> Vec<(u64, String)> {
        o.alerts
            .iter()
            .map(|a| (a.matches[0].1[0].seq, a.rule.to_string()))
            .collect()
    };
    assert_eq!(alerts(&before), alerts(&after));
    let columns = rules.feature_columns();
    let col = |name: &str| {
        columns
            .iter()
            .position(|c| &**c == name)
            .unwrap_or_else(|| panic!("no column {name} in {columns:?}"))
    };
    assert_eq!(
        &columns[..columns.len() - 1],
        plain.feature_columns(),
        "the candidate's column comes last"
    );
    let lr = tripline::files::load_model(Path::new("models/fraud_lr.onnx")).unwrap();
    let amount = rules
        .def()
        .schema
        .slot(&FieldPath::single("TX_AMOUNT"))
        .unwrap();
    let mut differ = 0;
    for row in &after.features {
        let x: Vec<f32> = lr
            .inputs()
            .iter()
            .map(|i| match i.as_str() {
                "TX_AMOUNT" => row.event.field(amount).as_f64().unwrap() as f32,
                i => row.values[col(i)].as_f64().unwrap() as f32,
            })
            .collect();
        let candidate = row.values[col("fraud_rf@candidate")].as_f64();
        assert_eq!(candidate, lr.score(&x));
        differ += usize::from(candidate != row.values[col("fraud_rf")].as_f64());
    }
    assert!(differ > after.features.len() / 2, "{differ}");
}

#[test]
fn a_candidate_is_checked_as_its_model_is() {
    let err = |text: &str| rule_set(&[("models/t.tl", text)]).unwrap_err();
    let e = err("model m from \"fraud_rf.onnx\" candidate \"missing.onnx\"\n");
    assert!(
        e.contains("models/t.tl:1:40") && e.contains("cannot load model `m` from `missing.onnx`"),
        "{e}"
    );
    let e = err("model m from \"fraud_rf.onnx\" candidate fraud_lr\n");
    assert!(
        e.contains("models/t.tl:1:40")
            && e.contains("expected the candidate's model file as a string"),
        "{e}"
    );
    // Its score is no field a rule may read.
    let e = err(
        "model m from \"fraud_rf.onnx\" candidate \"fraud_lr.onnx\"\n\
         rule r { pattern { x: m@candidate > 0.5 } }\n",
    );
    assert!(e.contains("models/t.tl:2:"), "{e}");
}
