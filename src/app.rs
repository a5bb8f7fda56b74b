//! Wiring for the command line: `check` validates rules, `replay` runs them
//! over a file of events, `test` runs the examples rule files carry,
//! `serve` and `demo` run the service (see `serve.rs`), and `state` looks
//! into a data directory.

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;
use tripline::adapters::local::LocalState;
use tripline::config::Config;
use tripline::engine::{Engine, EngineOptions, Outputs, RuleSet, inspect};
use tripline::event::{Batched, FieldPath, Merged, MergedLines, TimeFormat, format_time};
use tripline::export::{FeatureFormat, FeatureWriter};
use tripline::rules::{CompileError, StreamDef, parse_duration};
use tripline::telemetry::Telemetry;

/// Real-time complex-event processing and fraud detection.
#[derive(Parser, Debug)]
#[command(
    name = "tripline",
    version,
    about,
    after_help = "Every command that reads rules takes them as `--rules PATH…` (files or \
directories of .tl files; default: ./rules).

Examples:
  tripline demo                                  run the service on the bundled sample
  tripline check --rules rules                   validate rules
  tripline test --rules rules                    run the rules' examples
  tripline replay --rules rules --events examples/handbook-sample.jsonl.gz
  tripline serve -c tripline.toml                run the service"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate rule files; print every error with file:line:col (exit 1 on any).
    #[command(after_help = "Examples:
  tripline check --rules rules
  tripline check -r rules/velocity.tl examples/rules
  tripline check -r my_rules.tl --key CUSTOMER_ID --time TX_DATETIME   (no `stream` block)")]
    Check {
        #[command(flatten)]
        rules: RuleArgs,
        #[command(flatten)]
        stream: StreamArgs,
    },
    /// Run rules over a file of JSON events (one per line); alerts go to stdout.
    #[command(after_help = "Examples:
  tripline replay --rules rules --events examples/handbook-sample.jsonl.gz > alerts.jsonl
  tripline replay -r rules -e events.jsonl --flush --features features.csv
  tripline replay -r rules examples/rules -e examples/handbook-sample.jsonl.gz \\
      --events logins=examples/handbook-logins.jsonl.gz \\
      --table profiles=examples/handbook-profiles.jsonl \\
      --list blocked_terminals=examples/handbook-blocked-terminals.csv")]
    Replay {
        #[command(flatten)]
        rules: RuleArgs,
        /// Events: a .jsonl or .jsonl.gz file, or `-` for standard input.
        /// With several streams, repeat it as `--events STREAM=FILE` for
        /// each stream but the main one; the files are merged by event time.
        #[arg(long, short, required = true)]
        events: Vec<String>,
        /// At end of input, advance the watermark to the end so that pending
        /// deadlines (windows, trailing `not then`) fire.
        #[arg(long)]
        flush: bool,
        /// Most live partial matches per rule and key.
        #[arg(long, default_value_t = 10_000)]
        max_partials: usize,
        /// `auto`: rules regular over their conditions run on a symbol DFA and
        /// match lazily; `explicit`: every rule keeps explicit partial matches.
        /// The output is the same.
        #[arg(long, default_value = "auto", value_parser = ["auto", "explicit"])]
        matcher: String,
        /// Write every event's features (the rules' `features` sets) to this
        /// file: `.csv` or `.jsonl`.
        #[arg(long, value_name = "FILE")]
        features: Option<PathBuf>,
        /// Event fields copied into each feature row before the features
        /// (default: the stream's key and time fields).
        #[arg(
            long = "with",
            value_name = "FIELD",
            value_delimiter = ',',
            requires = "features"
        )]
        with_fields: Vec<String>,
        #[command(flatten)]
        lists: ListArgs,
        #[command(flatten)]
        stream: StreamArgs,
    },
    /// Train a new version of a model from a feature log and the labels
    /// known at a time; report it beside the current model on held-out days.
    #[command(after_help = "Examples:
  tripline replay -r rules -e transactions.jsonl.gz --features features.csv \\
      --with TRANSACTION_ID,CUSTOMER_ID,TX_DATETIME
  tripline train --features features.csv --labels labels.jsonl --model models/card_rf.onnx
  tripline train --features features.csv --labels labels.jsonl.gz --model models/card_rf.onnx \\
      --as-of 2018-04-30T00:00:00Z --delay 7d --train 7d --test 7d --out models/next

Writes <out>/<name>.<as-of date>.onnx and its model card <name>.<as-of date>.md; an existing
version is never overwritten. The recipe runs on a Python with scikit-learn, skl2onnx, onnx
and numpy (--python, or TRIPLINE_PYTHON).")]
    Train(crate::train_cmd::TrainArgs),
    /// Judge a model's candidate beside the running version on the
    /// transactions both scored, once their labels have arrived; promote it
    /// in the rule files when it ranks fraud better by the margin.
    #[command(after_help = "Examples:
  tripline replay -r rules -e transactions.jsonl.gz --features scores.csv \\
      --with TRANSACTION_ID,CUSTOMER_ID,TX_DATETIME
  tripline trial --features scores.csv --labels labels.jsonl --model card_rf
  tripline trial --features scores.csv --labels labels.jsonl --model card_rf \\
      --as-of 2018-05-08T00:00:00Z --delay 7d --margin 0.02 --rules rules --promote

The rules declare the candidate beside the model (`model card_rf from \"card_rf.onnx\"
candidate \"card_rf.next.onnx\"`), so the feature log holds both scores: columns card_rf and
card_rf@candidate. Transactions younger than --delay are not judged; each day leaves out the
cards already known to be compromised. The candidate wins when its average precision is at
least --margin higher and its card precision@k no lower.")]
    Trial(crate::trial_cmd::TrialArgs),
    /// Score a candidate rule set against labelled history, beside the
    /// current rules: alerts, alerts per day, precision and recall per rule.
    #[command(after_help = "Examples:
  tripline backtest --rules candidate/ --events examples/handbook-sample.jsonl.gz
  tripline backtest -r candidate/ --current rules -e history.jsonl.gz --label IS_FRAUD
  tripline backtest -r candidate/ --alone -e history.jsonl.gz
  tripline backtest -r candidate/ --topic transactions --since 2018-04-01T00:00:00Z -c tripline.toml")]
    #[command(group(clap::ArgGroup::new("input").required(true).args(["events", "topic"])))]
    Backtest {
        /// The candidate rules: files or directories of `.tl` files.
        #[arg(long, short, required = true, num_args = 1.., value_name = "PATH")]
        rules: Vec<PathBuf>,
        /// The current rule files or directories, to compare with (default:
        /// `rules`, when it exists and is not the candidate).
        #[arg(long, num_args = 1..)]
        current: Vec<PathBuf>,
        /// Only the candidate, no comparison.
        #[arg(long, conflicts_with = "current")]
        alone: bool,
        /// Labelled events: a .jsonl or .jsonl.gz file, or `-` for standard
        /// input; with several streams, `--events STREAM=FILE` for each
        /// stream but the main one.
        #[arg(long, short)]
        events: Vec<String>,
        /// Labelled events from a topic instead, read whole (read_committed)
        /// from `kafka.brokers` and taken in event-time order; with several
        /// streams, `--topic STREAM=TOPIC` for each stream but the main one.
        #[arg(long, value_name = "TOPIC", conflicts_with = "events")]
        topic: Vec<String>,
        /// Only events at or after this time (RFC 3339).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Only events before this time (RFC 3339).
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// The configuration whose `kafka` settings `--topic` reads with
        /// (default: ./tripline.toml if it exists).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The top-level field that marks an event as what the rules should
        /// catch (true, a non-zero number, or "1"/"true"/"yes").
        #[arg(long, default_value = "TX_FRAUD")]
        label: String,
        /// At end of input, advance the watermark to the end so that pending
        /// deadlines fire.
        #[arg(long)]
        flush: bool,
        #[command(flatten)]
        lists: ListArgs,
        #[command(flatten)]
        stream: StreamArgs,
    },
    /// Run the service: consume the input topic in a consumer group, commit
    /// alerts and dead letters exactly once. Stops on SIGINT/SIGTERM.
    #[command(
        after_help = "Every setting of the configuration file can be overridden by an \
environment variable: TRIPLINE__<SECTION>__<KEY>, e.g. TRIPLINE__KAFKA__BROKERS=kafka-1:9092 or \
TRIPLINE__API__LISTEN=0.0.0.0:8080 (values are TOML: numbers and true/false as such, anything else \
as text). Every setting is documented in tripline.toml; see docs/service.md.

Examples:
  tripline topics -c tripline.toml && tripline serve -c tripline.toml
  TRIPLINE__KAFKA__BROKERS=kafka-1:9092,kafka-2:9092 tripline serve"
    )]
    Serve {
        /// The configuration file (default: ./tripline.toml if it exists).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Create the topics the service reads and writes on `kafka.brokers`:
    /// each stream's input topic (`kafka.partitions` partitions), the alerts
    /// and dead-letter topics, and the compacted lists and table topics.
    /// Topics that exist are left as they are and listed with their
    /// partitions. The service makes its internal topics itself.
    ///
    #[command(after_help = "Example:
  tripline topics -c tripline.toml")]
    Topics {
        /// The configuration file (default: ./tripline.toml if it exists).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Start the embedded broker, feed it the bundled sample of card
    /// transactions, run the service and print the alerts as they commit.
    #[command(after_help = "Examples:
  tripline demo
  tripline demo --keep-running        then open http://127.0.0.1:8080/dashboard
  tripline demo --rules rules --events my-events.jsonl.gz")]
    Demo {
        /// The configuration file (default: ./tripline.toml if it exists);
        /// its brokers are ignored.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Events to produce (.jsonl or .jsonl.gz): a file for the main
        /// stream, `STREAM=FILE` for another (default: the bundled sample's
        /// file of each stream the rules define, under `examples/`).
        #[arg(long, short)]
        events: Vec<String>,
        /// The lists' and tables' contents, as `replay` takes them (default:
        /// the bundled sample's, for those it has).
        #[command(flatten)]
        reference: ListArgs,
        /// Rule files or directories (default: the configuration's
        /// `rules.paths`, and `examples/rules`: the example rules that read
        /// logins, customer profiles and a terminal blocklist).
        #[arg(long, short, num_args = 1.., value_name = "PATH")]
        rules: Vec<PathBuf>,
        /// Keep serving after the sample is processed, until Ctrl-C.
        #[arg(long)]
        keep_running: bool,
    },
    /// Run the examples in rule files (events in, alerts out; the syntax is
    /// in docs/rules.md#examples). On a failure, prints what was expected
    /// and the alerts the rule raised.
    #[command(after_help = "Examples:
  tripline test --rules rules
  tripline test -r rules examples/rules")]
    Test {
        #[command(flatten)]
        rules: RuleArgs,
    },
    /// Look into a data directory (`state.dir`): its shards, or one key's
    /// state; or compact it.
    #[command(subcommand)]
    State(StateCommand),
}

/// `tripline state …`.
#[derive(Subcommand, Debug)]
enum StateCommand {
    /// Print each shard's position and state summary, or with `--key` the
    /// state of that key (window aggregates, deadlines, partial matches,
    /// held events) as JSON. Reads a copy while the service runs.
    #[command(after_help = "Examples:
  tripline state inspect -c tripline.toml
  tripline state inspect --dir /var/lib/tripline --key 3833")]
    Inspect {
        #[command(flatten)]
        dir: StateDir,
        /// A key (the value of the rules' key field).
        #[arg(long, short)]
        key: Option<String>,
        /// Only this shard: `<topic>/<partition>`.
        #[arg(long, short)]
        shard: Option<String>,
    },
    /// Compact every shard's store, dropping overwritten and deleted
    /// entries. The service must be stopped.
    #[command(after_help = "Example:
  tripline state compact --dir /var/lib/tripline")]
    Compact {
        #[command(flatten)]
        dir: StateDir,
    },
}

/// Where the data directory is.
#[derive(Args, Debug)]
struct StateDir {
    /// The data directory (default: `state.dir` of the configuration).
    #[arg(long, short)]
    dir: Option<PathBuf>,
    /// The configuration file (default: ./tripline.toml if it exists).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

impl StateDir {
    fn resolve(&self) -> Result<PathBuf> {
        if let Some(d) = &self.dir {
            return Ok(d.clone());
        }
        let path = self.config.clone().or_else(|| {
            let default = PathBuf::from("tripline.toml");
            default.exists().then_some(default)
        });
        let dir = Config::load(path.as_deref())?.state.dir;
        if dir.as_os_str().is_empty() {
            bail!("no data directory: `state.dir` is empty; pass --dir");
        }
        Ok(dir)
    }
}

/// The rules a command reads: `--rules PATH…`, the one way every command
/// names them (`check` and `test` also take the paths as arguments, as
/// they once did).
#[derive(Args, Debug)]
struct RuleArgs {
    /// Rule files or directories of `.tl` files [default: rules]
    #[arg(long = "rules", short = 'r', num_args = 1.., value_name = "PATH")]
    rules: Vec<PathBuf>,
    #[arg(value_name = "PATH", hide = true)]
    positional: Vec<PathBuf>,
}

impl RuleArgs {
    /// The paths given, or `./rules`.
    fn paths(self) -> Result<Vec<PathBuf>> {
        let mut paths = self.rules;
        paths.extend(self.positional);
        if paths.is_empty() {
            let default = PathBuf::from("rules");
            if !default.is_dir() {
                bail!(
                    "no rules given, and there is no `rules` directory here: \
                     pass the rule files or directories with --rules PATH…"
                );
            }
            paths.push(default);
        }
        Ok(paths)
    }
}

/// The contents of the lists and tables the rules declare.
#[derive(Args, Debug)]
struct ListArgs {
    /// A list's changes: `NAME=FILE`, a `.csv` (value[,from][,until][,op]
    /// [,author][,comment]) or the `.jsonl` the API exports. Repeat for
    /// each list; lookups are as of each event's time.
    #[arg(long = "list", value_name = "NAME=FILE")]
    lists: Vec<String>,
    /// A table's rows: `NAME=FILE`, one JSON object per line, keyed and
    /// timed by the fields the table's declaration names. Repeat for each
    /// table; lookups are as of each event's time.
    #[arg(long = "table", value_name = "NAME=FILE")]
    tables: Vec<String>,
}

/// The lists and tables rules look values up in.
type Reference = (
    Arc<tripline_core::lists::Lists>,
    Arc<tripline_core::tables::Tables>,
);

impl ListArgs {
    /// The lists and tables for `rules`, saying on standard error which
    /// declared ones no file fills.
    fn load(&self, rules: &RuleSet) -> Result<Reference> {
        let (lists, empty) = tripline::list_files::load_list_files(&self.lists, rules)?;
        for name in empty {
            eprintln!("note: list `{name}` is empty (give its entries with --list {name}=FILE)");
        }
        let (tables, empty) = tripline::table_files::load_table_files(&self.tables, rules)?;
        for name in empty {
            eprintln!("note: table `{name}` is empty (give its rows with --table {name}=FILE)");
        }
        Ok((lists, tables))
    }
}

/// The stream definition from flags (overrides a `stream` block).
#[derive(Args, Debug)]
struct StreamArgs {
    /// Key field path (e.g. `CUSTOMER_ID` or `card.id`).
    #[arg(long)]
    key: Option<String>,
    /// Event-time field path.
    #[arg(long)]
    time: Option<String>,
    /// How the time field is written: auto, epoch_ms, epoch_s.
    #[arg(long)]
    time_format: Option<String>,
    /// Allowed lateness, e.g. `30s`.
    #[arg(long)]
    lateness: Option<String>,
}

impl StreamArgs {
    fn to_def(&self) -> Result<Option<StreamDef>> {
        let (key, time) = match (&self.key, &self.time) {
            (Some(k), Some(t)) => (k, t),
            (None, None) if self.lateness.is_none() && self.time_format.is_none() => {
                return Ok(None);
            }
            _ => bail!("--key and --time go together (or define a `stream` block in the rules)"),
        };
        let mut def = StreamDef::new(key, time)
            .with_context(|| format!("bad field path in --key {key} / --time {time}"))?;
        if let Some(l) = &self.lateness {
            def.lateness_ms = parse_duration(l)
                .with_context(|| format!("bad --lateness `{l}` (e.g. 30s, 5m)"))?;
        }
        if let Some(f) = &self.time_format {
            def.time_format = match f.as_str() {
                "auto" => TimeFormat::Auto,
                "epoch_ms" => TimeFormat::EpochMillis,
                "epoch_s" => TimeFormat::EpochSeconds,
                _ => bail!("bad --time-format `{f}` (auto, epoch_ms, epoch_s)"),
            };
        }
        let _ = FieldPath::parse(key);
        Ok(Some(def))
    }
}

/// Runs a command.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Check { rules, stream } => check(&rules.paths()?, stream.to_def()?),
        Command::Replay {
            rules,
            events,
            flush,
            max_partials,
            matcher,
            features,
            with_fields,
            lists,
            stream,
        } => {
            let options = EngineOptions {
                max_partials_per_key: max_partials,
                lazy_regular_rules: matcher == "auto",
                ..EngineOptions::default()
            };
            let Some(rs) = load(&rules.paths()?, stream.to_def()?, options)? else {
                return Ok(ExitCode::from(1));
            };
            let features = match features {
                Some(path) => Some(feature_writer(&rs, &path, with_fields)?),
                None => None,
            };
            let reference = lists.load(&rs)?;
            replay(rs, &events, flush, features, reference)
        }
        Command::Train(args) => {
            crate::train_cmd::train(&args).map(drop)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Trial(args) => {
            crate::trial_cmd::trial(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Backtest {
            rules,
            current,
            alone,
            events,
            topic,
            since,
            until,
            config,
            label,
            flush,
            lists,
            stream,
        } => {
            let def = stream.to_def()?;
            let Some(candidate) = load(&rules, def.clone(), EngineOptions::default())? else {
                return Ok(ExitCode::from(1));
            };
            let (list_data, table_data) = lists.load(&candidate)?;
            let current = if alone {
                Vec::new()
            } else if current.is_empty() {
                let default = PathBuf::from("rules");
                let same = rules
                    .iter()
                    .any(|r| r.canonicalize().ok() == default.canonicalize().ok());
                if default.is_dir() && !same {
                    vec![default]
                } else {
                    Vec::new()
                }
            } else {
                current
            };
            let current = if current.is_empty() {
                None
            } else {
                match load(&current, def, EngineOptions::default())? {
                    Some(rs) => Some(rs),
                    None => return Ok(ExitCode::from(1)),
                }
            };
            let time = |flag: &str, t: Option<String>| -> Result<Option<i64>> {
                t.map(|t| {
                    tripline::event::parse_time_str(&t).with_context(|| {
                        format!("--{flag} `{t}` is not a time (RFC 3339: 2018-04-01T00:00:00Z)")
                    })
                })
                .transpose()
            };
            let range = crate::backtest_cmd::Range {
                since: time("since", since)?,
                until: time("until", until)?,
            };
            let source = if topic.is_empty() {
                crate::backtest_cmd::Source::Files(events)
            } else {
                let path = config.or_else(|| {
                    let default = PathBuf::from("tripline.toml");
                    default.exists().then_some(default)
                });
                let config = Config::load(path.as_deref())?;
                crate::backtest_cmd::Source::Topics(topic, Box::new(config))
            };
            crate::backtest_cmd::backtest(
                candidate, current, &source, range, &label, flush, list_data, table_data,
            )
        }
        Command::Test { rules } => test_examples(&rules.paths()?),
        Command::Serve { config } => {
            let (config, rules, _telemetry) = service_setup(config, RulePaths::Configured)?;
            match rules {
                Some((rules, source)) => crate::serve::serve(config, rules, source),
                None => Ok(ExitCode::from(1)),
            }
        }
        Command::Topics { config } => {
            let (config, rules, _telemetry) = service_setup(config, RulePaths::Configured)?;
            match rules {
                Some((rules, _)) => crate::serve::create_topics(&config, &rules),
                None => Ok(ExitCode::from(1)),
            }
        }
        Command::Demo {
            config,
            events,
            reference,
            rules,
            keep_running,
        } => {
            let paths = match rules.is_empty() {
                true => RulePaths::WithExamples,
                false => RulePaths::Given(rules),
            };
            let (config, rules, _telemetry) = service_setup(config, paths)?;
            let inputs = crate::serve::DemoInputs {
                events,
                tables: reference.tables,
                lists: reference.lists,
            };
            match rules {
                Some((rules, source)) => {
                    crate::serve::demo(config, rules, source, inputs, keep_running)
                }
                None => Ok(ExitCode::from(1)),
            }
        }
        Command::State(StateCommand::Inspect { dir, key, shard }) => {
            state_inspect(&dir.resolve()?, key.as_deref(), shard.as_deref())
        }
        Command::State(StateCommand::Compact { dir }) => {
            let dir = dir.resolve()?;
            let local = LocalState::open(&dir)?;
            let (before, after) = local.compact()?;
            println!(
                "{}: compacted, {before} → {after} bytes in SST files",
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `tripline state inspect`: one JSON object per shard (or per shard that
/// holds the key).
fn state_inspect(dir: &Path, key: Option<&str>, only: Option<&str>) -> Result<ExitCode> {
    if !dir.exists() {
        bail!("{}: no such data directory", dir.display());
    }
    let local = LocalState::open_read_only(dir)?;
    let mut out = std::io::stdout().lock();
    let mut found = false;
    let shards = local.shards()?;
    if let Some(name) = only
        && !shards.iter().any(|(t, p)| format!("{t}/{p}") == name)
    {
        bail!(
            "{}: no shard `{name}` (see `tripline state inspect` for the list)",
            dir.display()
        );
    }
    for (topic, partition) in shards {
        let name = format!("{topic}/{partition}");
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let Some(store) = local.existing_shard(&topic, partition) else {
            continue;
        };
        let shard_err = |e: tripline::state::SnapshotError| anyhow::anyhow!("{name}: {e}");
        match key {
            None => {
                let position = store.position().map_err(shard_err)?;
                let summary =
                    inspect::summary(&store, &tripline::files::disk_models()).map_err(shard_err)?;
                let covered = tripline_core::shard::InputCut::stored(&store).map_err(shard_err)?;
                let line = serde_json::json!({
                    "shard": name,
                    "input_offset": position.map(|p| p.input),
                    "covered_offset": covered.map(|c| c.next),
                    "changelog_offset": position.map(|p| p.changelog),
                    "sst_bytes": store.sst_bytes(),
                    "state": summary,
                });
                if !print_line(&mut out, format_args!("{line}"))? {
                    return Ok(ExitCode::SUCCESS);
                }
                found = true;
            }
            Some(k) => {
                for state in inspect::inspect_key(&store, &tripline::files::disk_models(), k)
                    .map_err(shard_err)?
                {
                    let line = serde_json::json!({ "shard": name, "key_state": state });
                    if !print_line(&mut out, format_args!("{line:#}"))? {
                        return Ok(ExitCode::SUCCESS);
                    }
                    found = true;
                }
            }
        }
    }
    if !found {
        match key {
            Some(k) => eprintln!("no state for key `{k}` in {}", dir.display()),
            None => eprintln!("no shard state in {}", dir.display()),
        }
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes a line of output; `false` when the reader has gone (`| head`),
/// which ends the output without an error.
fn print_line(out: &mut impl Write, line: std::fmt::Arguments<'_>) -> Result<bool> {
    match writeln!(out, "{line}") {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("writing to stdout"),
    }
}

/// Loads the configuration and the rules it names (`None`: the rules have
/// errors, already printed), with telemetry set up as it says (kept until
/// the command ends: dropping it flushes the exporters).
#[allow(clippy::type_complexity)]
/// A service command's configuration, its rules (`None`: they did not
/// compile, the errors printed) and its telemetry.
type ServiceSetup = (
    Config,
    Option<(Arc<RuleSet>, crate::serve::RuleSource)>,
    Telemetry,
);

/// Which rules a service command runs.
enum RulePaths {
    /// The configuration's `rules.paths`.
    Configured,
    /// The configuration's, and the example rules of a checkout's
    /// `examples/rules` when it is there (`demo`).
    WithExamples,
    /// These (`demo --rules`).
    Given(Vec<PathBuf>),
}

/// The configuration at `path` (default: ./tripline.toml if it exists),
/// its telemetry, and the rules of `rule_paths`.
fn service_setup(path: Option<PathBuf>, rule_paths: RulePaths) -> Result<ServiceSetup> {
    let path = path.or_else(|| {
        let default = PathBuf::from("tripline.toml");
        default.exists().then_some(default)
    });
    let mut config = Config::load(path.as_deref())?;
    let given = matches!(rule_paths, RulePaths::Given(_));
    match rule_paths {
        RulePaths::Configured => {}
        RulePaths::WithExamples => {
            let examples = PathBuf::from("examples/rules");
            if examples.is_dir() && !config.rules.paths.contains(&examples) {
                config.rules.paths.push(examples);
            }
        }
        RulePaths::Given(paths) => config.rules.paths = paths,
    }
    if let Some(missing) = config.rules.paths.iter().find(|p| !p.exists()) {
        let from = match &path {
            _ if given => "--rules".to_string(),
            Some(p) => format!("`rules.paths` in {}", p.display()),
            None => "`rules.paths` (no tripline.toml here: the default)".to_string(),
        };
        let cwd = std::env::current_dir().map_or_else(|_| "?".into(), |d| d.display().to_string());
        bail!(
            "{}: no such file or directory, named by {from} (relative paths are from {cwd}); \
             point `rules.paths` (or TRIPLINE__RULES__PATHS) at the rule files or directories",
            missing.display()
        );
    }
    let telemetry = tripline::telemetry::init(&config.telemetry)?;
    let s = &config.stream;
    let stream = StreamArgs {
        key: s.key.clone(),
        time: s.time.clone(),
        time_format: s.time_format.clone(),
        lateness: s.lateness.clone(),
    }
    .to_def()?;
    let options = EngineOptions {
        max_partials_per_key: config.rules.max_partials_per_key,
        max_record_bytes: config.rules.max_record_bytes,
        max_alerts_per_event: config.rules.max_alerts_per_event,
        ..EngineOptions::default()
    };
    let rules = load(&config.rules.paths, stream.clone(), options)?;
    Ok((
        config,
        rules.map(|r| (r, crate::serve::RuleSource { stream, options })),
        telemetry,
    ))
}

fn load(
    paths: &[PathBuf],
    stream: Option<StreamDef>,
    options: EngineOptions,
) -> Result<Option<Arc<RuleSet>>> {
    let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
    match tripline::files::load_rules(&refs, stream, options) {
        Ok(rs) => Ok(Some(rs)),
        Err(CompileError::Rules(d)) => {
            eprintln!("{d}");
            Ok(None)
        }
        Err(e) => bail!("{e}"),
    }
}

fn check(paths: &[PathBuf], stream: Option<StreamDef>) -> Result<ExitCode> {
    let Some(rs) = load(paths, stream, EngineOptions::default())? else {
        return Ok(ExitCode::from(1));
    };
    for r in rs.rules() {
        println!(
            "ok  {:<28} key {:<14} {} stages, {} automaton states",
            r.def().name,
            r.def().key.to_string(),
            r.def().stage_names.len(),
            r.matcher().nfa.states.len()
        );
        if r.def().skip == tripline::rules::SkipDef::NoSkip
            && let Some(why) = r.def().pattern.growth()
        {
            println!(
                "warning: rule `{}`: {why}; each event raises at most rules.max_alerts_per_event \
                 alerts (the rest are suppressed); consider `skip past last event`, a bounded \
                 `repeat N..M`, or `consecutive`",
                r.def().name
            );
        }
    }
    println!(
        "{} rules, {} examples, rule set {:016x}",
        rs.rules().len(),
        rs.def().examples.len(),
        rs.def().hash
    );
    Ok(ExitCode::SUCCESS)
}

/// The inputs of `--events` (`FILE` for the main stream, `STREAM=FILE` for
/// any stream), by stream index, each stream at most once.
pub(crate) fn stream_inputs(rs: &RuleSet, events: &[String]) -> Result<Vec<(u16, String)>> {
    let def = rs.def();
    let mut out: Vec<(u16, String)> = Vec::new();
    for e in events {
        // A path may hold `=`: only a declared stream's name makes a prefix.
        let (stream, path) = match e.split_once('=') {
            Some((name, path)) if def.stream_index(name).is_some() => {
                (def.stream_index(name).unwrap_or(0), path.to_string())
            }
            Some((name, _)) if !name.contains(['/', '.']) && !std::path::Path::new(e).exists() => {
                let names: Vec<&str> = def.streams.iter().map(|s| s.name.as_str()).collect();
                bail!(
                    "--events {e}: the rules define no stream `{name}` (streams: {})",
                    names.join(", ")
                );
            }
            _ => (0, e.clone()),
        };
        if out.iter().any(|(s, _)| *s == stream) {
            bail!(
                "--events: two inputs for stream `{}`",
                def.streams[stream as usize].name
            );
        }
        out.push((stream, path));
    }
    Ok(out)
}

/// The merged records of `--events` (see [`stream_inputs`]).
pub(crate) fn open_stream_inputs(
    rs: &RuleSet,
    events: &[String],
) -> Result<MergedLines<Box<dyn BufRead>>> {
    let inputs = stream_inputs(rs, events)?
        .into_iter()
        .map(|(stream, path)| Ok((stream, open_events(&path)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(MergedLines::new(inputs))
}

/// Where a record of a merged input is, for messages: its line, and its
/// stream when the rules define several.
pub(crate) fn record_place(rs: &RuleSet, m: &Merged) -> String {
    match rs.def().streams.len() {
        1 => format!("line {}", m.line),
        _ => format!(
            "{} line {}",
            rs.def().streams[m.stream as usize].name,
            m.line
        ),
    }
}

pub fn open_events(path: &str) -> Result<Box<dyn BufRead>> {
    let raw: Box<dyn Read> = if path == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::fs::File::open(path).with_context(|| format!("cannot open {path}"))?)
    };
    let raw: Box<dyn Read> = if path.ends_with(".gz") {
        Box::new(flate2::read::MultiGzDecoder::new(raw))
    } else {
        raw
    };
    Ok(Box::new(BufReader::with_capacity(1 << 16, raw)))
}

/// Counters of one replay.
#[derive(Default)]
struct Summary {
    invalid: u64,
    late: u64,
    errors: u64,
    repeated: Repeated,
}

/// Per-record problems, each kind shown for its first few records and then
/// only counted: a wrong `--key` makes every line of a file invalid, and
/// 95,815 identical lines help no one.
#[derive(Default)]
pub(crate) struct Repeated {
    /// By kind (the message without its digits): how many, the first
    /// message and where it was.
    kinds: std::collections::BTreeMap<String, (u64, String)>,
}

impl Repeated {
    /// Records of a kind shown before they are only counted.
    const SHOWN: u64 = 5;

    /// Notes `problem` at `place`; whether to show it.
    pub(crate) fn note(&mut self, place: &str, problem: &str) -> bool {
        let kind: String = problem.chars().filter(|c| !c.is_ascii_digit()).collect();
        let entry = self
            .kinds
            .entry(kind)
            .or_insert_with(|| (0, format!("{place}: {problem}")));
        entry.0 += 1;
        entry.0 <= Self::SHOWN
    }

    /// One line per kind with more records than were shown.
    pub(crate) fn summary(&self) -> Vec<String> {
        self.kinds
            .values()
            .filter(|(n, _)| *n > Self::SHOWN)
            .map(|(n, first)| {
                format!(
                    "{n} records with the problem of {first} ({} shown, the rest counted)",
                    Self::SHOWN
                )
            })
            .collect()
    }
}

type FeatureFile = FeatureWriter<BufWriter<std::fs::File>>;

/// The writer of `replay --features PATH`.
fn feature_writer(rs: &RuleSet, path: &Path, with: Vec<String>) -> Result<FeatureFile> {
    if rs.feature_columns().is_empty() {
        bail!("--features: the rules define no `features` set (see docs/rules.md, Features)");
    }
    let Some(format) = FeatureFormat::for_path(path) else {
        bail!("--features {}: name a .csv or .jsonl file", path.display());
    };
    let with = if with.is_empty() {
        let s = &rs.def().stream();
        vec![s.key.to_string(), s.time.to_string()]
    } else {
        with
    };
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    Ok(FeatureWriter::new(
        BufWriter::with_capacity(1 << 16, file),
        format,
        &with,
        rs.feature_columns(),
    )?)
}

/// How many records `replay` and `backtest` read ahead to warm their
/// state together.
pub(crate) const WARM_AHEAD: usize = 32;

fn replay(
    rs: Arc<RuleSet>,
    events: &[String],
    flush: bool,
    mut features: Option<FeatureFile>,
    (lists, tables): Reference,
) -> Result<ExitCode> {
    let input = open_stream_inputs(&rs, events)?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut err = std::io::stderr().lock();
    let mut engine = Engine::new(rs.clone())
        .with_lists(lists)
        .with_tables(tables);
    if features.is_some() {
        engine = engine.collect_features();
    }
    let mut outputs = Outputs::default();
    let mut per_rule = vec![0u64; rs.rules().len()];
    let mut summary = Summary::default();
    let mut buf = Vec::with_capacity(1024);
    // Wall-clock time only for the throughput summary, never for processing.
    #[allow(clippy::disallowed_methods)]
    let started = Instant::now();
    // Records are read a batch at a time and the engine warms their state
    // before taking them one by one (see `Engine::warm`).
    let mut input = Batched::new(input, WARM_AHEAD);
    while let Some(m) = input
        .next(rs.decoders(), |batch| {
            engine.warm(batch.iter().filter_map(|m| m.event.as_deref().ok()));
        })
        .context("reading events")?
    {
        match m.event {
            Ok(event) => engine.on_event(event, &mut outputs),
            Err(ref e) => {
                summary.invalid += 1;
                let place = record_place(&rs, &m);
                let problem = e.to_string();
                if summary.repeated.note(&place, &problem) {
                    writeln!(err, "{place}: {problem}")?;
                }
            }
        }
        drain(
            &mut buf,
            &mut outputs,
            &mut out,
            &mut err,
            &rs,
            &mut per_rule,
            &mut summary,
        )?;
        write_features(&mut outputs, &mut features)?;
    }
    if flush {
        engine.finish(&mut outputs);
        drain(
            &mut buf,
            &mut outputs,
            &mut out,
            &mut err,
            &rs,
            &mut per_rule,
            &mut summary,
        )?;
        write_features(&mut outputs, &mut features)?;
    }
    out.flush()?;
    if let Some(f) = features {
        writeln!(err, "replay: {} feature rows written", f.rows())?;
        f.finish()?;
    }
    let secs = started.elapsed().as_secs_f64();
    let stats = engine.stats();
    let by_rule: Vec<String> = rs
        .rules()
        .iter()
        .zip(&per_rule)
        .map(|(r, n)| format!("{}={n}", r.name()))
        .collect();
    writeln!(
        err,
        "replay: {} lines, {} events, {} invalid, {} late, {} future, {} without some rule's key, {} rule errors, {} alerts ({}), {} buffered at end; {:.3} s, {:.0} events/s",
        input.lines(),
        stats.events,
        summary.invalid,
        summary.late,
        stats.future,
        stats.unkeyed,
        summary.errors,
        stats.alerts,
        by_rule.join(", "),
        engine.buffered(),
        secs,
        stats.events as f64 / secs.max(1e-9),
    )?;
    if stats.silenced > 0 {
        writeln!(
            err,
            "replay: {} alerts not raised: their rule's `suppress` period for the key was running",
            stats.silenced
        )?;
    }
    for line in summary.repeated.summary() {
        writeln!(err, "replay: {line}")?;
    }
    if stats.events == 0 && summary.invalid > 0 {
        let s = rs.def().stream();
        writeln!(
            err,
            "replay: no line was an event: check the key field `{}` and time field `{}` \
             (`--key`/`--time`, or the rules' `stream` block) against the events' fields",
            s.key, s.time
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::too_many_arguments)]
fn write_features(outputs: &mut Outputs, features: &mut Option<FeatureFile>) -> Result<()> {
    if let Some(f) = features {
        for row in outputs.features.drain(..) {
            f.write(&row)?;
        }
    }
    Ok(())
}

fn drain(
    buf: &mut Vec<u8>,
    outputs: &mut Outputs,
    out: &mut impl Write,
    err: &mut impl Write,
    rs: &RuleSet,
    per_rule: &mut [u64],
    summary: &mut Summary,
) -> Result<()> {
    for a in outputs.alerts.drain(..) {
        if let Some(i) = rs.rules().iter().position(|r| *r.name() == a.rule) {
            per_rule[i] += 1;
        }
        buf.clear();
        a.write_json(buf);
        buf.push(b'\n');
        out.write_all(buf)?;
    }
    for l in outputs.late.drain(..) {
        let place = format!("line {}", l.event.seq);
        let problem = match l.future_limit {
            None => {
                summary.late += 1;
                format!(
                    "late event: time {} is at or before the watermark {}",
                    format_time(l.event.time),
                    format_time(l.watermark)
                )
            }
            Some(limit) => format!(
                "future event: time {} is after {}, the stream's `skew` past the latest event time",
                format_time(l.event.time),
                format_time(limit)
            ),
        };
        if summary.repeated.note(&place, &problem) {
            writeln!(err, "{place}: {problem}")?;
        }
    }
    for e in outputs.errors.drain(..) {
        summary.errors += 1;
        let place = format!("rule {} key {}", e.rule, e.key);
        if summary.repeated.note(&place, &e.message) {
            writeln!(err, "{place}: {}", e.message)?;
        }
    }
    Ok(())
}

fn test_examples(paths: &[PathBuf]) -> Result<ExitCode> {
    let Some(rs) = load(paths, None, EngineOptions::default())? else {
        return Ok(ExitCode::from(1));
    };
    let (mut passed, mut failed) = (0, 0);
    for ex in &rs.def().examples {
        match tripline::engine::run_example(&rs, ex) {
            Ok(()) => {
                passed += 1;
                println!("PASS {} ({})", ex.name, ex.file);
            }
            Err(why) => {
                failed += 1;
                println!("FAIL {} ({})", ex.name, ex.file);
                for line in why.lines() {
                    println!("  {line}");
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
