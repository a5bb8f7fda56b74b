//! `tripline trial`: a model's candidate judged beside the running version
//! on the transactions both scored (the feature log's columns `NAME` and
//! `NAME@candidate`), once their labels have arrived, by
//! [`tripline::model::trial`]; with `--promote`, the candidate that wins
//! becomes the model in the rule files.

use crate::feature_log::{Columns, Incomplete, parse_time, read_labels, read_log};
use anyhow::{Context, Result, bail, ensure};
use std::path::PathBuf;
use tripline::event::{EventTime, format_time};
use tripline::files::AddPath;
use tripline::model::CANDIDATE_SUFFIX;
use tripline::model::training::DAY_MS;
use tripline::model::trial::{self, Comparison, Figures, Policy, TrialRow, Verdict};

/// What `tripline trial` is asked (its command-line arguments).
#[derive(clap::Args, Debug)]
pub struct TrialArgs {
    /// The feature log with both versions' scores: `tripline replay
    /// --features` output (.csv or .jsonl), or the service's feature log
    /// topic read out as JSON lines. Rows without the candidate's score
    /// (before it was declared) are left out.
    #[arg(long, value_name = "FILE")]
    pub features: PathBuf,
    /// Labels, one JSON object per line (`transaction_id`, `fraud`,
    /// `known_at`); `.gz` allowed.
    #[arg(long, value_name = "FILE")]
    pub labels: PathBuf,
    /// The model on trial, by its name in the rules (its columns are NAME
    /// and NAME@candidate).
    #[arg(long)]
    pub model: String,
    /// The time of the judgement: labels known after it are not read, and
    /// transactions younger than --delay are not judged (default: the end
    /// of the day of the log's last event, plus --delay: every transaction
    /// judged, with every label of the file).
    #[arg(long, value_name = "TIME")]
    pub as_of: Option<String>,
    /// When the trial began: earlier rows are left out (a replay scores the
    /// candidate from the first event, weeks it may have trained on).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// How long labels take to arrive.
    #[arg(long, default_value = "7d", value_parser = crate::train_cmd::duration)]
    pub delay: i64,
    /// How much higher the candidate's average precision must be.
    #[arg(long, default_value_t = 0.01)]
    pub margin: f64,
    /// The labelled frauds the judged transactions must hold.
    #[arg(long, default_value_t = 50)]
    pub min_frauds: usize,
    /// Card precision counts the top k cards of each day.
    #[arg(long, default_value_t = 100)]
    pub top_k: usize,
    /// The feature log's columns.
    #[command(flatten)]
    pub columns: Columns,
    /// The rule set's files or directories, as `replay --rules` takes them:
    /// where `--promote` rewrites the model's declaration.
    #[arg(long, short = 'r', value_name = "PATH")]
    pub rules: Vec<PathBuf>,
    /// When the candidate wins, make it the model: its declaration in the
    /// rule files becomes `model NAME from "CANDIDATE"` (the rule set must
    /// still compile).
    #[arg(long, requires = "rules")]
    pub promote: bool,
}

fn figures_line(who: &str, f: &Figures, k: usize) -> String {
    let opt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.3}"));
    format!(
        "  {who:<9} AUC {}  AP {}  CP@{k} {:.3}",
        opt(f.auc),
        opt(f.ap),
        f.card_precision
    )
}

fn report(name: &str, c: &Comparison, k: usize) -> String {
    let date = |t: EventTime| format_time(t)[..10].to_string();
    let window = c
        .window
        .as_ref()
        .map_or("no transaction old enough".into(), |w| {
            format!("{} to {}", date(w.start), date(w.end - 1))
        });
    let verdict = match &c.verdict {
        Verdict::Promote => "promote: the candidate ranks fraud better".to_string(),
        Verdict::Keep(why) => format!("keep the running version: {why}"),
        Verdict::Wait(why) => format!("wait: {why}"),
    };
    format!(
        "trial of {name}: {window}, labels known at {}: {} transactions, {} frauds\n{}\n{}\n{verdict}\n",
        format_time(c.labels_at),
        c.transactions,
        c.frauds,
        figures_line("running", &c.current, k),
        figures_line("candidate", &c.candidate, k),
    )
}

/// Rewrites the declaration of model `name` in the rule files under
/// `paths` by `edit` (the file's path and text; `Ok(None)` when the file
/// does not declare the model), if the rule set still compiles with it
/// (`what`: the change, for the error); the file changed.
pub(crate) fn rewrite_declaration(
    paths: &[PathBuf],
    name: &str,
    what: &str,
    edit: impl Fn(&std::path::Path, &str) -> Result<Option<String>>,
) -> Result<PathBuf> {
    let mut files = Vec::new();
    for p in paths {
        files.extend(
            tripline::files::rule_files(p)
                .map_err(|e| anyhow::anyhow!("{}", e.join("; ")))
                .with_context(|| format!("cannot list {}", p.display()))?,
        );
    }
    let mut changed = None;
    for f in &files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        if let Some(new) = edit(f, &text).with_context(|| format!("{}", f.display()))? {
            changed = Some((f.clone(), new));
            break;
        }
    }
    let Some((file, text)) = changed else {
        bail!("no rule file of --rules declares model `{name}`");
    };
    let mut c = tripline::files::compiler();
    for f in &files {
        if f == &file {
            c.add_source(&f.display().to_string(), &text);
        } else {
            c.add_path(f);
        }
    }
    c.compile()
        .with_context(|| format!("the rules do not compile with model `{name}` {what}"))?;
    tripline::files::write_atomically(&file, &text)
        .with_context(|| format!("cannot write {}", file.display()))?;
    Ok(file)
}

/// Makes model `name`'s candidate the model in the rule files under
/// `paths`; the file changed.
fn promote(paths: &[PathBuf], name: &str) -> Result<PathBuf> {
    rewrite_declaration(paths, name, "promoted", |_, text| {
        Ok(tripline::rules::promote_candidate(text, name)?)
    })
}

/// Runs `tripline trial`: prints the comparison, and promotes when asked
/// and the candidate wins.
pub fn trial(a: &TrialArgs) -> Result<()> {
    let columns = [a.model.clone(), format!("{}{CANDIDATE_SUFFIX}", a.model)];
    let log = read_log(&a.features, &a.columns, &columns, Incomplete::Nan)?;
    let labels = read_labels(&a.labels)?;
    let now = match &a.as_of {
        Some(s) => parse_time(s).with_context(|| format!("--as-of `{s}` is not a time"))?,
        None => {
            let last = log.times.iter().copied().max().unwrap_or_default();
            (last.div_euclid(DAY_MS) + 1) * DAY_MS + a.delay
        }
    };
    let since = match &a.since {
        Some(s) => parse_time(s).with_context(|| format!("--since `{s}` is not a time"))?,
        None => EventTime::MIN,
    };
    // On trial: what both versions scored since it began; the rest is
    // history, whose compromised cards the trial's days leave out.
    let on_trial = |i: usize| log.times[i] >= since && log.row(i).iter().all(|v| v.is_finite());
    let rows: Vec<TrialRow> = (0..log.ids.len())
        .filter(|&i| on_trial(i))
        .map(|i| TrialRow {
            id: log.ids[i].clone(),
            time: log.times[i],
            card: log.cards[i],
            current: f64::from(log.row(i)[0]),
            candidate: f64::from(log.row(i)[1]),
        })
        .collect();
    ensure!(
        !rows.is_empty(),
        "{}: no row since the trial began has both `{}` and `{}`",
        a.features.display(),
        columns[0],
        columns[1]
    );
    let all = log.rows();
    let history: Vec<_> = (0..all.len())
        .filter(|&i| !on_trial(i))
        .map(|i| all[i])
        .collect();
    let policy = Policy {
        delay: a.delay,
        margin: a.margin,
        min_frauds: a.min_frauds,
        top_k: a.top_k,
    };
    let c = trial::compare(&rows, &history, &labels, now, &policy);
    print!("{}", report(&a.model, &c, a.top_k));
    if a.promote && c.verdict == Verdict::Promote {
        let file = promote(&a.rules, &a.model)?;
        println!(
            "promoted: {} now runs the candidate as model `{}`",
            file.display(),
            a.model
        );
    }
    Ok(())
}
