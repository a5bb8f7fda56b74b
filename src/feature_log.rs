//! The feature log as `tripline train` and `tripline trial` read it: the
//! rows of `tripline replay --features` (CSV or JSON lines), or of the
//! service's feature log topic read out as JSON lines (a row per event and
//! keying, merged here by transaction id), and the labels files.

use anyhow::{Context, Result, bail, ensure};
use hashbrown::HashMap;
use std::io::{BufRead, Read};
use std::path::Path;
use tripline::event::{EventTime, TimeFormat, epoch_to_millis, parse_time_str};
use tripline::model::labels::Labels;
use tripline::model::training::Row;

/// Which columns of the feature log say what.
#[derive(clap::Args, Clone, Debug)]
pub struct Columns {
    /// The feature log's transaction-id column (labels name it).
    #[arg(long, default_value = "TRANSACTION_ID")]
    pub id: String,
    /// The column an investigator checks by (card precision counts it).
    #[arg(long, default_value = "CUSTOMER_ID")]
    pub card: String,
    /// The event-time column.
    #[arg(long, default_value = "TX_DATETIME")]
    pub time: String,
}

/// The feature log, column by column as training needs it.
pub struct Log {
    /// Each row's transaction id.
    pub ids: Vec<String>,
    /// Each row's event time.
    pub times: Vec<EventTime>,
    /// Each row's card, numbered in order of appearance.
    pub cards: Vec<i64>,
    /// Row-major: `inputs` values per row.
    values: Vec<f32>,
    width: usize,
}

/// What a row lacking one of the columns read means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Incomplete {
    /// An error naming the row: a model cannot train without an input.
    Refuse,
    /// The row is kept, NaN for what it lacks: scores of a version that was
    /// not running yet.
    Nan,
}

impl Incomplete {
    /// What the columns read are, for messages.
    fn what(self) -> &'static str {
        match self {
            Incomplete::Refuse => "an input of the model",
            Incomplete::Nan => "a version's score",
        }
    }
}

impl Log {
    fn new(width: usize) -> Log {
        Log {
            ids: Vec::new(),
            times: Vec::new(),
            cards: Vec::new(),
            values: Vec::new(),
            width,
        }
    }

    /// The rows, as the spans select them.
    pub fn rows(&self) -> Vec<Row<'_>> {
        (0..self.ids.len())
            .map(|i| Row {
                id: &self.ids[i],
                time: self.times[i],
                card: self.cards[i],
            })
            .collect()
    }

    /// Row `i`'s values of the columns read.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.width..(i + 1) * self.width]
    }
}

/// Reads the feature log: CSV (`replay --features x.csv`), or JSON lines
/// (`replay --features x.jsonl`, or the service's feature log topic read
/// out), `.gz` allowed for the latter.
/// `inputs` are the columns read beside id, card and time.
pub fn read_log(
    path: &Path,
    c: &Columns,
    inputs: &[String],
    incomplete: Incomplete,
) -> Result<Log> {
    let name = path.to_string_lossy();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    if [".jsonl", ".json", ".ndjson"]
        .iter()
        .any(|e| name.ends_with(e))
    {
        return read_json_log(path, c, inputs, incomplete);
    }
    read_csv_log(path, c, inputs, incomplete)
}

/// A JSON value as the text labels compare ids by.
fn id_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// JSON lines, one object per row. The service writes a row per event and
/// keying (each shard its own features), so rows of one transaction id are
/// merged: a later row's values fill in what earlier ones lacked.
fn read_json_log(
    path: &Path,
    c: &Columns,
    inputs: &[String],
    incomplete: Incomplete,
) -> Result<Log> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader: Box<dyn std::io::BufRead> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(std::io::BufReader::new(flate2::read::MultiGzDecoder::new(
            file,
        )))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut cards: HashMap<String, i64> = HashMap::new();
    let mut values: Vec<Option<f32>> = Vec::new();
    let mut log = Log::new(inputs.len());
    for (n, line) in reader.lines().enumerate() {
        let line_no = n + 1;
        let at = || format!("{}:{line_no}", path.display());
        let line = line.with_context(at)?;
        if line.trim().is_empty() {
            continue;
        }
        let row: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&line).with_context(|| format!("{}: not a JSON object", at()))?;
        let field = |name: &str, what: &str| {
            row.get(name)
                .and_then(id_text)
                .with_context(|| format!("{}: no `{name}` ({what})", at()))
        };
        let id = field(&c.id, "the transaction id, --id")?;
        let i = match index.get(&id) {
            Some(&i) => i,
            None => {
                let t = field(&c.time, "the event time, --time")?;
                let t = parse_time(&t)
                    .with_context(|| format!("{}: `{t}` in `{}` is not a time", at(), c.time))?;
                let card = field(&c.card, "the card, --card")?;
                let next = cards.len() as i64;
                log.cards.push(*cards.entry(card).or_insert(next));
                log.times.push(t);
                log.ids.push(id.clone());
                values.extend(std::iter::repeat_n(None, inputs.len()));
                index.insert(id, log.ids.len() - 1);
                log.ids.len() - 1
            }
        };
        for (j, name) in inputs.iter().enumerate() {
            match row.get(name) {
                None | Some(serde_json::Value::Null) => {}
                // Through the text, as the CSV reader does: an f64 rounded
                // to f32 can differ from the decimal rounded to f32.
                Some(serde_json::Value::Number(v)) => {
                    values[i * inputs.len() + j] = v.to_string().parse().ok();
                }
                Some(other) => bail!("{}: `{name}` is {other}, not a number", at()),
            }
        }
    }
    ensure!(!log.ids.is_empty(), "{}: no rows", path.display());
    let mut complete = Log::new(inputs.len());
    for (i, row) in values.chunks(inputs.len().max(1)).enumerate() {
        if let Some(j) = row.iter().position(Option::is_none)
            && incomplete == Incomplete::Refuse
        {
            bail!(
                "{}: transaction `{}` has no `{}` in any row ({})",
                path.display(),
                log.ids[i],
                inputs[j],
                incomplete.what()
            );
        }
        complete.ids.push(std::mem::take(&mut log.ids[i]));
        complete.times.push(log.times[i]);
        complete.cards.push(log.cards[i]);
        complete
            .values
            .extend(row.iter().map(|v| v.unwrap_or(f32::NAN)));
    }
    Ok(complete)
}

fn read_csv_log(
    path: &Path,
    c: &Columns,
    inputs: &[String],
    incomplete: Incomplete,
) -> Result<Log> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut reader = csv::Reader::from_reader(std::io::BufReader::new(file));
    let header = reader
        .headers()
        .with_context(|| format!("{}: no CSV header", path.display()))?
        .clone();
    let column = |name: &str, what: &str| {
        header.iter().position(|h| h == name).with_context(|| {
            format!(
                "{}: no column `{name}` ({what}); the columns are {}",
                path.display(),
                header.iter().collect::<Vec<_>>().join(", ")
            )
        })
    };
    let id = column(&c.id, "the transaction id, --id")?;
    let card = column(&c.card, "the card, --card")?;
    let time = column(&c.time, "the event time, --time")?;
    let input_cols = inputs
        .iter()
        .map(|f| column(f, incomplete.what()))
        .collect::<Result<Vec<_>>>()?;
    let mut cards: HashMap<String, i64> = HashMap::new();
    let mut log = Log::new(inputs.len());
    for (n, record) in reader.records().enumerate() {
        // Line 1 is the header.
        let line = n + 2;
        let record = record.with_context(|| format!("{}:{line}", path.display()))?;
        let field = |i: usize| record.get(i).unwrap_or("");
        let t = parse_time(field(time)).with_context(|| {
            format!(
                "{}:{line}: `{}` in `{}` is not a time",
                path.display(),
                field(time),
                c.time
            )
        })?;
        let next = cards.len() as i64;
        let card = *cards.entry(field(card).to_string()).or_insert(next);
        for (&c, name) in input_cols.iter().zip(inputs) {
            if incomplete == Incomplete::Nan && field(c).is_empty() {
                log.values.push(f32::NAN);
                continue;
            }
            let v: f32 = field(c).parse().with_context(|| {
                format!(
                    "{}:{line}: `{}` in `{name}` is not a number",
                    path.display(),
                    field(c)
                )
            })?;
            log.values.push(v);
        }
        log.ids.push(field(id).to_string());
        log.times.push(t);
        log.cards.push(card);
    }
    ensure!(!log.ids.is_empty(), "{}: no rows", path.display());
    Ok(log)
}

/// A time as the feature log writes it: any text the event decoder reads,
/// or epoch seconds or milliseconds.
pub fn parse_time(s: &str) -> Option<EventTime> {
    parse_time_str(s).or_else(|| {
        s.parse::<f64>()
            .ok()
            .and_then(|n| epoch_to_millis(n, TimeFormat::Auto))
    })
}

/// Reads a labels file (JSON lines, `.gz` allowed).
pub fn read_labels(path: &Path) -> Result<Labels> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut text = String::new();
    if path.extension().is_some_and(|e| e == "gz") {
        flate2::read::MultiGzDecoder::new(file).read_to_string(&mut text)
    } else {
        std::io::BufReader::new(file).read_to_string(&mut text)
    }
    .with_context(|| format!("cannot read {}", path.display()))?;
    Labels::from_json_lines(&text).with_context(|| format!("{}", path.display()))
}
