//! `tripline backtest`: a candidate rule set and the current one over the
//! same labelled history, side by side (see [`tripline::backtest`]).

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::ExitCode;
use std::sync::Arc;
use tripline::backtest::{Backtest, Report, RuleScore};
use tripline::engine::RuleSet;
use tripline::event::{Batched, MergedLines};

/// Counts the bytes read through it (the compressed ones, for a `.gz`
/// file), for the progress bar.
struct Counted<R> {
    inner: R,
    bar: ProgressBar,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

fn open(path: &str) -> Result<(Box<dyn BufRead>, ProgressBar)> {
    let (raw, bar): (Box<dyn Read>, ProgressBar) = if path == "-" {
        let bar = ProgressBar::new_spinner();
        (Box::new(std::io::stdin().lock()), bar)
    } else {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {path}"))?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {bytes}/{total_bytes} [{wide_bar}] {eta} {msg}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        (Box::new(file), bar)
    };
    let counted = Counted {
        inner: raw,
        bar: bar.clone(),
    };
    let reader: Box<dyn Read> = if path.ends_with(".gz") {
        Box::new(flate2::read::MultiGzDecoder::new(counted))
    } else {
        Box::new(counted)
    };
    Ok((Box::new(BufReader::with_capacity(1 << 16, reader)), bar))
}

/// Where a backtest's events come from.
pub enum Source {
    /// Files: the main stream's, and `STREAM=FILE` for the others.
    Files(Vec<String>),
    /// Topics read whole from the brokers of `config`: the main stream's,
    /// and `STREAM=TOPIC` for the others.
    Topics(Vec<String>, Box<tripline::config::Config>),
}

/// The event-time range a backtest keeps (`since` included, `until` not).
#[derive(Clone, Copy, Debug, Default)]
pub struct Range {
    /// The first event time kept.
    pub since: Option<tripline::event::EventTime>,
    /// The first event time left out.
    pub until: Option<tripline::event::EventTime>,
}

impl Range {
    fn holds(&self, t: tripline::event::EventTime) -> bool {
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t < u)
    }
}

/// Each stream's input, and the progress bar of the main stream's.
type Inputs = (Vec<(u16, Box<dyn BufRead>)>, ProgressBar);

fn open_files(candidate: &RuleSet, events: &[String]) -> Result<Inputs> {
    let mut bar = None;
    let mut inputs = Vec::new();
    for (stream, path) in crate::app::stream_inputs(candidate, events)? {
        let (input, b) = open(&path)?;
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            b.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        // The main stream's file shows the progress.
        if stream == 0 {
            bar = Some(b);
        }
        inputs.push((stream, input));
    }
    Ok((inputs, bar.unwrap_or_else(ProgressBar::hidden)))
}

/// Each stream's topic read whole, its records in event-time order (the
/// order a file of the same events has; a topic's partitions interleave
/// keys in no order), records that do not decode last.
fn open_topics(
    candidate: &RuleSet,
    topics: &[String],
    config: &tripline::config::Config,
) -> Result<Inputs> {
    let brokers = &config.kafka.brokers;
    if brokers.is_empty() {
        anyhow::bail!(
            "--topic reads from `kafka.brokers`, which is empty: set it in tripline.toml \
             (or TRIPLINE__KAFKA__BROKERS), or give the configuration with --config"
        );
    }
    let mut inputs: Vec<(u16, Box<dyn BufRead>)> = Vec::new();
    for (stream, topic) in crate::app::stream_inputs(candidate, topics)? {
        use tripline::adapters::kafka::history;
        let (records, partitions) = history::read_topic(&config.kafka, brokers, &topic, None)?;
        let decoder = candidate
            .decoder_for(stream)
            .context("a stream the rules do not define")?;
        let text = history::in_event_time_order(decoder, records);
        eprintln!(
            "backtest: read {} records of topic `{topic}` ({partitions} partitions)",
            text.iter().filter(|&&b| b == b'\n').count()
        );
        inputs.push((stream, Box::new(std::io::Cursor::new(text))));
    }
    Ok((inputs, ProgressBar::hidden()))
}

/// Runs `candidate` (and `current`, if given) over the events of `source`
/// within `range`; prints the comparison to stdout and invalid lines to
/// stderr.
#[allow(clippy::too_many_arguments)]
pub fn backtest(
    candidate: Arc<RuleSet>,
    current: Option<Arc<RuleSet>>,
    source: &Source,
    range: Range,
    label: &str,
    flush: bool,
    lists: std::sync::Arc<tripline::lists::Lists>,
    tables: std::sync::Arc<tripline::tables::Tables>,
) -> Result<ExitCode> {
    let (inputs, bar) = match source {
        Source::Files(events) => open_files(&candidate, events)?,
        Source::Topics(topics, config) => open_topics(&candidate, topics, config)?,
    };
    let mut cand = Backtest::new(candidate.clone(), label)
        .with_lists(lists.clone())
        .with_tables(tables.clone());
    let mut curr = current.map(|rs| {
        let b = Backtest::new(rs.clone(), label)
            .with_lists(lists.clone())
            .with_tables(tables.clone());
        (rs, b)
    });
    // Read a batch at a time, the candidate's state warmed before its
    // events are taken (see `Engine::warm`).
    let mut input = Batched::new(MergedLines::new(inputs), crate::app::WARM_AHEAD);
    let mut invalid = 0u64;
    let mut outside = 0u64;
    let mut repeated = crate::app::Repeated::default();
    let mut n = 0u64;
    while let Some(m) = input
        .next(candidate.decoders(), |batch| {
            cand.warm(batch.iter().filter_map(|m| m.event.as_deref().ok()));
        })
        .context("reading events")?
    {
        n += 1;
        let event = match m.event {
            Ok(event) => event,
            Err(ref e) => {
                invalid += 1;
                let place = crate::app::record_place(&candidate, &m);
                let problem = e.to_string();
                if repeated.note(&place, &problem) {
                    bar.suspend(|| eprintln!("{place}: {problem}"));
                }
                continue;
            }
        };
        if !range.holds(event.time) {
            outside += 1;
            continue;
        }
        if let Some((rs, c)) = &mut curr {
            // The current rules decode the record for themselves (they may
            // read other fields, or number the streams otherwise); invalid
            // for them only, it is left out of their figures, which the
            // summary shows.
            let name = &candidate.def().streams[m.stream as usize].name;
            let decoder = match rs.def().stream_index(name) {
                Some(i) => rs.decoder_for(i),
                None if m.stream == 0 => Some(rs.decoder()),
                None => None,
            };
            if let Some(Ok(e)) = decoder.map(|d| d.decode(event.raw.as_bytes(), event.seq)) {
                c.take(e);
            }
        }
        cand.take(event);
        if n.is_multiple_of(8192) {
            bar.set_message(format!("{} events", cand.events()));
        }
    }
    let lines = input.lines();
    bar.finish_and_clear();
    let cand = cand.finish(flush);
    let curr = curr.map(|(_, c)| c.finish(flush));
    let mut out = std::io::stdout().lock();
    print_report(&mut out, &cand, curr.as_ref(), label)?;
    out.flush()?;
    eprintln!("backtest: {lines} lines, {invalid} invalid, {outside} outside the time range");
    for line in repeated.summary() {
        eprintln!("backtest: {line}");
    }
    Ok(ExitCode::SUCCESS)
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "—".into(), |x| format!("{:.1} %", 100.0 * x))
}

fn print_report(
    out: &mut impl Write,
    cand: &Report,
    curr: Option<&Report>,
    label: &str,
) -> Result<()> {
    writeln!(
        out,
        "{} events over {} days, {} labelled by {label}",
        cand.events, cand.days, cand.positives
    )?;
    if let Some(c) = curr
        && c.events != cand.events
    {
        writeln!(out, "(the current rules decoded {} of them)", c.events)?;
    }
    writeln!(out)?;
    let cols = |s: Option<&RuleScore>, r: Option<&Report>| match (s, r) {
        (Some(s), Some(r)) => [
            s.alerts.to_string(),
            format!("{:.1}", r.per_day(s)),
            pct(s.precision()),
            pct(s.recall(r.positives)),
        ],
        _ => ["—".into(), "—".into(), "—".into(), "—".into()],
    };
    let mut names: Vec<&str> = cand.rules.iter().map(|r| r.rule.as_str()).collect();
    if let Some(c) = curr {
        for r in &c.rules {
            if !names.contains(&r.rule.as_str()) {
                names.push(&r.rule);
            }
        }
    }
    let width = names.iter().map(|n| n.len()).max().unwrap_or(4).max(10);
    if curr.is_some() {
        writeln!(
            out,
            "{:width$}  {:>17}  {:>17}  {:>19}  {:>19}",
            "rule",
            "alerts cand/curr",
            "per day cand/curr",
            "precision cand/curr",
            "recall cand/curr"
        )?;
    } else {
        writeln!(
            out,
            "{:width$}  {:>8}  {:>8}  {:>9}  {:>8}",
            "rule", "alerts", "per day", "precision", "recall"
        )?;
    }
    let mut row = |name: &str, a: Option<&RuleScore>, b: Option<&RuleScore>| -> Result<()> {
        let x = cols(a, Some(cand));
        if curr.is_some() {
            let y = cols(b, curr);
            writeln!(
                out,
                "{name:width$}  {:>17}  {:>17}  {:>19}  {:>19}",
                format!("{} / {}", x[0], y[0]),
                format!("{} / {}", x[1], y[1]),
                format!("{} / {}", x[2], y[2]),
                format!("{} / {}", x[3], y[3]),
            )?;
        } else {
            writeln!(
                out,
                "{name:width$}  {:>8}  {:>8}  {:>9}  {:>8}",
                x[0], x[1], x[2], x[3]
            )?;
        }
        Ok(())
    };
    for name in &names {
        row(name, cand.rule(name), curr.and_then(|c| c.rule(name)))?;
    }
    row("(any rule)", Some(&cand.any), curr.map(|c| &c.any))?;
    Ok(())
}
