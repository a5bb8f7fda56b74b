//! `tripline train`: a new version of a model from the feature log and the
//! labels known at a given time, with its figures on held-out weeks beside
//! the current model's, never overwriting the current one.
//!
//! The spans and the label rules are [`tripline::model::training`]'s. The
//! fitting is the project's scikit-learn recipe (`scripts/train_model.py
//! fit`, embedded in the binary and run with the Python named by `--python`);
//! everything else — which rows, which labels, the scores and the metrics —
//! happens here, with tripline's own evaluator, so the figures are those of
//! the model as the service will run it.

use crate::feature_log::{Columns, Incomplete, Log, parse_time, read_labels, read_log};
use anyhow::{Context, Result, bail, ensure};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use tripline::event::{EventTime, format_time};
use tripline::model::Model;
use tripline::model::metrics::Scored;
use tripline::model::training::{self, DAY_MS, Plan, Schedule, Split};
use tripline::model::trial::Figures;

/// The recipe, shipped inside the binary so a user's install can train.
const RECIPE: &str = include_str!("../scripts/train_model.py");

/// What `tripline train` is asked (its command-line arguments).
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// The feature log: `tripline replay --features` output (.csv or
    /// .jsonl), or the service's feature log topic read out as JSON lines
    /// (.jsonl, .jsonl.gz; rows of one transaction are merged), with the
    /// transaction id, card, time and the model's inputs.
    #[arg(long, value_name = "FILE", required_unless_present = "from_topics")]
    pub features: Option<PathBuf>,
    /// Labels, one JSON object per line (`transaction_id`, `fraud`,
    /// `known_at`); `.gz` allowed.
    #[arg(long, value_name = "FILE", required_unless_present = "from_topics")]
    pub labels: Option<PathBuf>,
    /// Read the feature log and the labels from the service's topics
    /// instead (`feature_log.topic` and `trial.labels_topic` of --config),
    /// read_committed, up to their ends when the read begins.
    #[arg(long, conflicts_with_all = ["features", "labels"])]
    pub from_topics: bool,
    /// The configuration that names the cluster and the topics (default:
    /// ./tripline.toml if it exists; TRIPLINE__ overrides apply).
    #[arg(long, value_name = "FILE", requires = "from_topics")]
    pub config: Option<PathBuf>,
    /// The model to retrain: the new version has its inputs and kind
    /// (a forest, or a linear model), and is compared with it.
    /// (Default, with --declare: the file the rules declare model NAME
    /// from, the version running.)
    #[arg(long, value_name = "FILE", required_unless_present = "declare")]
    pub model: Option<PathBuf>,
    /// The time of the retraining: labels known after it are not read
    /// (default: the end of the day of the feature log's last event).
    #[arg(long, value_name = "TIME")]
    pub as_of: Option<String>,
    /// How long labels take to arrive: training ends this long before
    /// `--as-of`.
    #[arg(long, default_value = "7d", value_parser = duration)]
    pub delay: i64,
    /// How much labelled history the model trains on.
    #[arg(long, default_value = "7d", value_parser = duration)]
    pub train: i64,
    /// The span the recipe and the current model are evaluated on.
    #[arg(long, default_value = "7d", value_parser = duration)]
    pub test: i64,
    /// The feature log's columns.
    #[command(flatten)]
    pub columns: Columns,
    /// Where the new version goes (default: beside --model).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// The Python that runs the recipe (at its default, TRIPLINE_PYTHON
    /// when set).
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Card precision counts the top k cards of each day.
    #[arg(long, default_value_t = 100)]
    pub top_k: usize,
    /// Declares the new version as the candidate of model NAME in the rule
    /// files of --rules (`candidate "FILE"` in its declaration, in place of
    /// an earlier one), if the rule set still compiles: a service running
    /// them puts it on trial.
    #[arg(long, value_name = "NAME", requires = "rules")]
    pub declare: Option<String>,
    /// The rule set's files or directories, as `replay --rules` takes them.
    #[arg(long, short = 'r', value_name = "PATH")]
    pub rules: Vec<PathBuf>,
}

/// A span argument (`7d`, `36h`) in milliseconds.
pub(crate) fn duration(s: &str) -> Result<i64, String> {
    tripline::rules::parse_duration(s)
        .ok_or_else(|| format!("`{s}` is not a duration (e.g. 7d, 36h)"))
}

/// The day of an event time, as the metrics count days.
fn day(t: EventTime) -> i64 {
    t.div_euclid(DAY_MS)
}

fn date(t: EventTime) -> String {
    format_time(t)[..10].to_string()
}

/// The last day of a span (its end is exclusive).
fn span(w: &std::ops::Range<EventTime>) -> String {
    format!("{} to {}", date(w.start), date(w.end - 1))
}

fn evaluate(model: &Model, log: &Log, test: &[(usize, bool)], k: usize) -> Result<Figures> {
    let mut scored = Vec::with_capacity(test.len());
    for &(i, fraud) in test {
        let score = model
            .score(log.row(i))
            .with_context(|| format!("the model failed to score row {}", i + 2))?;
        scored.push(Scored {
            day: day(log.times[i]),
            card: log.cards[i],
            score,
            fraud,
        });
    }
    Ok(Figures::of(&scored, k))
}

/// Writes the split's rows as the recipe's training CSV.
fn write_training_set(
    path: &Path,
    log: &Log,
    rows: &[(usize, bool)],
    inputs: &[String],
) -> Result<()> {
    let mut w = csv::Writer::from_path(path)?;
    let mut header: Vec<&str> = inputs.iter().map(String::as_str).collect();
    header.push("label");
    w.write_record(&header)?;
    let mut record = Vec::with_capacity(header.len());
    for &(i, fraud) in rows {
        record.clear();
        record.extend(log.row(i).iter().map(|v| v.to_string()));
        record.push(if fraud { "1" } else { "0" }.to_string());
        w.write_record(&record)?;
    }
    w.flush()?;
    Ok(())
}

/// Fits one model with the recipe; returns it loaded by tripline.
fn fit(python: &str, dir: &Path, name: &str, kind: &str, inputs: &[String]) -> Result<Model> {
    let script = dir.join("train_model.py");
    let train = dir.join(format!("{name}.csv"));
    let out = dir.join(format!("{name}.onnx"));
    let output = Command::new(python)
        .arg(&script)
        .args(["fit", "--kind", kind, "--inputs", &inputs.join(",")])
        .arg("--train")
        .arg(&train)
        .arg("--out")
        .arg(&out)
        .output()
        .with_context(|| format!("cannot run `{python}` (set --python)"))?;
    if !output.status.success() {
        bail!(
            "the recipe failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    let bytes = std::fs::read(&out).with_context(|| format!("cannot read {}", out.display()))?;
    Model::from_bytes(&bytes).with_context(|| format!("the fitted model {name} does not load"))
}

/// Checks the Python has what the recipe imports, with a message that
/// says how to get it.
fn check_python(python: &str) -> Result<()> {
    let output = Command::new(python)
        .args(["-c", "import sklearn, skl2onnx, onnx, numpy"])
        .output()
        .with_context(|| format!("cannot run `{python}`: name a Python 3 with --python"))?;
    if !output.status.success() {
        bail!(
            "`{python}` cannot import scikit-learn, skl2onnx, onnx and numpy:\n{}\n\
             install them (`{python} -m pip install scikit-learn skl2onnx onnx numpy`) \
             or name a Python that has them with --python",
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    Ok(())
}

/// The model's name without a version: `card_rf.2018-04-30.onnx` and
/// `card_rf.onnx` are both `card_rf`.
fn base_name(path: &Path) -> Result<String> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .with_context(|| format!("{}: no file name", path.display()))?;
    Ok(match stem.rsplit_once('.') {
        Some((base, version)) if jiff::civil::Date::strptime("%Y-%m-%d", version).is_ok() => {
            base.to_string()
        }
        _ => stem.to_string(),
    })
}

fn both_classes(rows: &[(usize, bool)]) -> bool {
    rows.iter().any(|r| r.1) && rows.iter().any(|r| !r.1)
}

fn needs_both_classes(what: &str, split: &Split, rows: &[(usize, bool)]) -> Result<()> {
    let frauds = rows.iter().filter(|r| r.1).count();
    ensure!(
        frauds > 0 && frauds < rows.len(),
        "{what} ({}, labels known at {}) has {} transactions, {frauds} of them fraud: \
         a model needs both; check --as-of, --delay, --train and that the labels match the log's ids",
        span(&split.window),
        format_time(split.labels_at),
        rows.len()
    );
    Ok(())
}

/// `on SPAN (WHEN): the NAME AP a CP@k b; the current model AP c CP@k d`.
fn figures_line(
    window: &std::ops::Range<EventTime>,
    when: &str,
    (name, ours): (&str, Figures),
    current: Figures,
    k: usize,
) -> String {
    format!(
        "on {} ({when}): the {name} AP {} CP@{k} {:.3}; the current model AP {} CP@{k} {:.3}",
        span(window),
        fmt(ours.ap),
        ours.card_precision,
        fmt(current.ap),
        current.card_precision
    )
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("{v:.3}"))
}

/// Runs `tripline train`.
/// The service's feature log and labels topics read out into `dir` as
/// JSON lines files, as `--features` and `--labels` take them.
fn read_topics(config: Option<&Path>, dir: &Path) -> Result<(PathBuf, PathBuf)> {
    use tripline::adapters::kafka::history::read_topic;
    let path = config.map(Path::to_path_buf).or_else(|| {
        let default = PathBuf::from("tripline.toml");
        default.exists().then_some(default)
    });
    let config = tripline::config::Config::load(path.as_deref())?;
    let k = &config.kafka;
    ensure!(
        !k.brokers.is_empty(),
        "kafka.brokers is empty: --from-topics reads the topics of a cluster (set it, or TRIPLINE__KAFKA__BROKERS)"
    );
    let mut out = Vec::new();
    for (what, topic, file) in [
        (
            "feature_log.topic",
            &config.feature_log.topic,
            "features.jsonl",
        ),
        (
            "trial.labels_topic",
            &config.trial.labels_topic,
            "labels.jsonl",
        ),
    ] {
        ensure!(
            !topic.is_empty(),
            "{what} is empty: --from-topics reads the feature log and the labels from their topics"
        );
        let (values, _) = read_topic(k, &k.brokers, topic, None)?;
        let path = dir.join(file);
        let mut w = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut bad = 0usize;
        for v in &values {
            // One record, one line: a record written over several lines
            // is compacted; one that is not JSON is counted and left out
            // (the topic keeps it; a file would be refused at its line).
            if v.contains(&b'\n') {
                match serde_json::from_slice::<serde_json::Value>(v) {
                    Ok(json) => serde_json::to_writer(&mut w, &json)?,
                    Err(_) => {
                        bad += 1;
                        continue;
                    }
                }
            } else {
                w.write_all(v)?;
            }
            w.write_all(b"\n")?;
        }
        w.flush()?;
        eprintln!("read {} records of {topic}", values.len() - bad);
        if bad > 0 {
            eprintln!("warning: {bad} records of {topic} are not JSON and are left out");
        }
        out.push(path);
    }
    Ok((out.remove(0), out.remove(0)))
}

/// The file the rule set of `paths` declares model `name` from.
fn declared_model(paths: &[PathBuf], name: &str) -> Result<PathBuf> {
    use tripline::files::AddPath;
    let mut c = tripline::files::compiler();
    for p in paths {
        c.add_path(p);
    }
    let rules = c.compile().context("the rules of --rules do not compile")?;
    let model = rules.models.iter().find(|m| m.name == name);
    let model = model.with_context(|| format!("the rules of --rules declare no model `{name}`"))?;
    Ok(PathBuf::from(&model.file))
}

/// `dir`-relative `file` when both are under one root, else `file`
/// absolute: how a rule file in `dir` names a model file.
fn relative_to(dir: &Path, file: &Path) -> Result<String> {
    let file = std::fs::canonicalize(file)?;
    let dir = std::fs::canonicalize(dir)?;
    let path = pathdiff::diff_paths(&file, &dir).unwrap_or(file);
    let text = path.to_str().with_context(|| {
        format!(
            "{}: a model path in the rules must be UTF-8",
            path.display()
        )
    })?;
    Ok(text.to_string())
}

/// Runs `tripline train`; returns the new version's file.
pub fn train(a: &TrainArgs) -> Result<PathBuf> {
    // TRIPLINE_PYTHON names the Python when --python is left at its default.
    let python = match std::env::var("TRIPLINE_PYTHON") {
        Ok(p) if a.python == "python3" && !p.is_empty() => p,
        _ => a.python.clone(),
    };
    let model_path = match (&a.model, &a.declare) {
        (Some(m), _) => m.clone(),
        (None, Some(name)) => declared_model(&a.rules, name)?,
        (None, None) => bail!("--model or --declare names the model to retrain"),
    };
    let current_bytes = std::fs::read(&model_path)
        .with_context(|| format!("cannot read {}", model_path.display()))?;
    let current = Model::from_bytes(&current_bytes)
        .with_context(|| format!("{} does not load", model_path.display()))?;
    let inputs = current.inputs().to_vec();
    let kind = if current.is_tree_ensemble() {
        "rf"
    } else if current.is_linear() {
        "lr"
    } else {
        bail!(
            "{} is neither a tree ensemble nor a linear model (its graph: {}): \
             tripline train retrains those two kinds only",
            model_path.display(),
            current.operators().join(", ")
        );
    };
    let name = base_name(&model_path)?;
    let read = tempfile::tempdir()?;
    let (features, labels) = match (&a.features, &a.labels) {
        (Some(f), Some(l)) => (f.clone(), l.clone()),
        _ => read_topics(a.config.as_deref(), read.path())?,
    };
    let log = read_log(&features, &a.columns, &inputs, Incomplete::Refuse)?;
    let labels = read_labels(&labels)?;
    drop(read);
    let as_of = match &a.as_of {
        Some(s) => parse_time(s).with_context(|| format!("--as-of `{s}` is not a time"))?,
        // The end of the log's last day: spans then fall on whole days.
        None => (day(log.times.iter().copied().max().unwrap_or(0)) + 1) * DAY_MS,
    };
    let schedule = Schedule {
        as_of,
        delay: a.delay,
        train: a.train,
        test: a.test,
    };
    let Plan {
        train,
        eval_train,
        test,
    } = schedule.plan().map_err(anyhow::Error::msg)?;
    let out_dir = match &a.out {
        Some(d) => d.clone(),
        None => model_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };
    let version = date(as_of);
    let onnx_path = out_dir.join(format!("{name}.{version}.onnx"));
    let card_path = out_dir.join(format!("{name}.{version}.md"));
    for p in [&onnx_path, &card_path] {
        ensure!(
            !p.exists(),
            "{} exists: a version is never overwritten (move it away, or train --as-of another day)",
            p.display()
        );
    }

    let rows = log.rows();
    let train_rows = training::labelled(&rows, &train, &labels);
    let eval_rows = training::labelled(&rows, &eval_train, &labels);
    let test_rows = training::test_rows(&rows, &test, &labels);
    needs_both_classes("the training span", &train, &train_rows)?;
    // Early in the data there is no span before the training one to
    // evaluate the recipe on: the version is still trained, without it.
    let evaluable = both_classes(&eval_rows) && both_classes(&test_rows);
    check_python(&python)?;

    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("train_model.py"), RECIPE)?;
    write_training_set(&dir.path().join("new.csv"), &log, &train_rows, &inputs)?;
    if evaluable {
        write_training_set(&dir.path().join("eval.csv"), &log, &eval_rows, &inputs)?;
    }
    eprintln!(
        "training {name} ({kind}) on {} ({} transactions)",
        span(&train.window),
        train_rows.len(),
    );
    let held_out = if evaluable {
        let evaluation = fit(&python, dir.path(), "eval", kind, &inputs)?;
        Some((
            evaluate(&evaluation, &log, &test_rows, a.top_k)?,
            evaluate(&current, &log, &test_rows, a.top_k)?,
        ))
    } else {
        None
    };
    let new = fit(&python, dir.path(), "new", kind, &inputs)?;
    // A backtest when the log already holds the span after `as_of` (the
    // handbook's protocol: train, a delay, then the test week), with every
    // label the file has.
    let following = Split {
        window: as_of..as_of + a.test,
        labels_at: EventTime::MAX,
    };
    let last = log.times.iter().copied().max().unwrap_or(0);
    let after_rows = training::test_rows(&rows, &following, &labels);
    let after = if day(last) >= day(following.window.end - 1) && after_rows.iter().any(|r| r.1) {
        Some((
            evaluate(&new, &log, &after_rows, a.top_k)?,
            evaluate(&current, &log, &after_rows, a.top_k)?,
        ))
    } else {
        None
    };

    std::fs::create_dir_all(&out_dir)?;
    // Written beside the target, then renamed into place: a reader never
    // sees half a model.
    let staged = out_dir.join(format!(".{name}.{version}.onnx.tmp"));
    std::fs::copy(dir.path().join("new.onnx"), &staged)?;
    std::fs::rename(&staged, &onnx_path)?;
    let card = model_card(&Card {
        name: &name,
        version: &version,
        kind,
        inputs: &inputs,
        schedule: &schedule,
        train: (&train, &train_rows),
        eval_train: (&eval_train, &eval_rows),
        test: (&test, &test_rows),
        held_out,
        following: (&following, &after_rows),
        after,
        current: &model_path,
        k: a.top_k,
    });
    let mut f = std::fs::File::create(&card_path)?;
    f.write_all(card.as_bytes())?;
    println!("wrote {} and {}", onnx_path.display(), card_path.display());
    if let Some((fresh, old)) = held_out {
        let line = figures_line(&test.window, "held out", ("recipe", fresh), old, a.top_k);
        println!("{line}");
    }
    if let Some((new, old)) = after {
        let line = figures_line(
            &following.window,
            "after --as-of",
            ("new model", new),
            old,
            a.top_k,
        );
        println!("{line}");
    }
    if let Some(model) = &a.declare {
        let file = crate::trial_cmd::rewrite_declaration(
            &a.rules,
            model,
            "given its candidate",
            |rules, text| {
                let dir = rules.parent().unwrap_or(Path::new("."));
                let candidate = relative_to(dir, &onnx_path)?;
                Ok(tripline::rules::declare_candidate(text, model, &candidate))
            },
        )?;
        println!(
            "declared: {} runs {} on trial beside model `{model}`",
            file.display(),
            onnx_path.display()
        );
    }
    Ok(onnx_path)
}

struct Card<'a> {
    name: &'a str,
    version: &'a str,
    kind: &'a str,
    inputs: &'a [String],
    schedule: &'a Schedule,
    train: (&'a Split, &'a [(usize, bool)]),
    eval_train: (&'a Split, &'a [(usize, bool)]),
    test: (&'a Split, &'a [(usize, bool)]),
    /// The recipe's evaluation model and the current model on the test
    /// span, when there was a span to train the first on.
    held_out: Option<(Figures, Figures)>,
    following: (&'a Split, &'a [(usize, bool)]),
    /// The new and the current model on the following span, when the log
    /// holds it.
    after: Option<(Figures, Figures)>,
    current: &'a Path,
    k: usize,
}

fn count(rows: &[(usize, bool)]) -> String {
    format!(
        "{} transactions, {} frauds",
        rows.len(),
        rows.iter().filter(|r| r.1).count()
    )
}

/// A model card's table: `ours` beside the current model.
fn figures_table(c: &Card<'_>, (name, ours): (&str, Figures), current: Figures) -> String {
    let row = |name: &str, f: Figures| {
        format!(
            "| {name} | {} | {} | {:.3} |\n",
            fmt(f.auc),
            fmt(f.ap),
            f.card_precision
        )
    };
    format!(
        "| model | AUC ROC | AP | card precision@{} |\n|---|---|---|---|\n{}{}",
        c.k,
        row(name, ours),
        row(&format!("current (`{}`)", c.current.display()), current)
    )
}

fn model_card(c: &Card<'_>) -> String {
    let kind = match c.kind {
        "rf" => "random forest",
        _ => "logistic regression",
    };
    let days = |ms: i64| format!("{} days", ms as f64 / DAY_MS as f64);
    let mut s = format!(
        "# Model card: `{}`, version {}\n\n\
         A {kind} scoring the probability that a transaction is fraud, written by\n\
         `tripline train` (the recipe of `scripts/train_model.py`). Do not edit by hand.\n\n\
         - Trained on: {} ({}), labels as known at {}\n\
         - Label delay allowed for: {}; training span {}\n\
         - Retrained from: `{}`\n\n\
         ## Inputs (in this order, ONNX metadata `tripline.features`)\n\n",
        c.name,
        c.version,
        span(&c.train.0.window),
        count(c.train.1),
        format_time(c.train.0.labels_at),
        days(c.schedule.delay),
        days(c.schedule.train),
        c.current.display(),
    );
    for (i, f) in c.inputs.iter().enumerate() {
        s += &format!("{}. `{f}`\n", i + 1);
    }
    s += "\n## Evaluation, held out\n\n";
    match c.held_out {
        Some((fresh, old)) => {
            s += &format!(
                "The same recipe, trained on {} ({}) with the labels known at {}, tested on\n\
                 {} ({}; each day without the cards already known to be compromised), beside\n\
                 the current model on the same transactions. The current model may have been\n\
                 trained on part of the test span, which flatters it.\n\n{}",
                span(&c.eval_train.0.window),
                count(c.eval_train.1),
                format_time(c.eval_train.0.labels_at),
                span(&c.test.0.window),
                count(c.test.1),
                figures_table(c, ("this recipe", fresh), old),
            );
        }
        None => {
            s += &format!(
                "None: the recipe would train on {} ({}) and be tested on {} ({}),\n\
                 and a model needs frauds and genuine transactions in both.\n",
                span(&c.eval_train.0.window),
                count(c.eval_train.1),
                span(&c.test.0.window),
                count(c.test.1),
            );
        }
    }
    s += &format!(
        "\n## The following span: {}\n\n",
        span(&c.following.0.window)
    );
    match c.after {
        Some((new, old)) => {
            s += &format!(
                "A backtest: this version and the current model on the span after the training\n\
                 time ({}; every label the file holds; each day without the cards already\n\
                 known to be compromised).\n\n{}",
                count(c.following.1),
                figures_table(c, ("this version", new), old),
            );
        }
        None => {
            s += "Not in the feature log (or no fraud labelled in it) when this version was\n\
                  trained: its figures there come once the span's labels have arrived.\n";
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_suffix_is_not_part_of_the_name() {
        assert_eq!(base_name(Path::new("m/card_rf.onnx")).unwrap(), "card_rf");
        assert_eq!(
            base_name(Path::new("m/card_rf.2018-04-30.onnx")).unwrap(),
            "card_rf"
        );
        assert_eq!(base_name(Path::new("a.b.onnx")).unwrap(), "a.b");
    }
}
