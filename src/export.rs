//! Feature rows out: what `tripline replay --features` writes, one row per
//! event, as CSV (a header, then one line per event) or JSON lines. The
//! rows are the engine's own feature vectors ([`crate::engine::FeatureRow`]),
//! so a model trained on them sees exactly what the service computes.

use crate::engine::FeatureRow;
use crate::event::{FieldPath, Value, json_number};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// How feature rows are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureFormat {
    /// Comma-separated values with a header line; null is an empty cell.
    Csv,
    /// One JSON object per line.
    JsonLines,
}

impl FeatureFormat {
    /// The format a file name implies: `.csv` or `.jsonl`/`.json`
    /// (optionally followed by nothing else).
    pub fn for_path(path: &Path) -> Option<FeatureFormat> {
        match path.extension()?.to_str()? {
            "csv" => Some(FeatureFormat::Csv),
            "jsonl" | "json" | "ndjson" => Some(FeatureFormat::JsonLines),
            _ => None,
        }
    }
}

/// Why feature rows could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A passed-through field has the name of a feature.
    #[error("`{0}` is both an event field to copy and a feature: rename one")]
    Clash(String),
    /// Writing failed.
    #[error("writing features: {0}")]
    Io(#[from] std::io::Error),
    /// Writing CSV failed.
    #[error("writing features: {0}")]
    Csv(#[from] csv::Error),
}

/// Writes [`FeatureRow`]s: first the event fields named at creation (read
/// from the record as it arrived, with their JSON types), then every
/// feature.
pub struct FeatureWriter<W: Write> {
    sink: Sink<W>,
    fields: Vec<(String, FieldPath)>,
    columns: Vec<Arc<str>>,
    header_written: bool,
    cells: Vec<String>,
    line: Vec<u8>,
    rows: u64,
}

enum Sink<W: Write> {
    Csv(Box<csv::Writer<W>>),
    Json(W),
}

impl<W: Write> FeatureWriter<W> {
    /// A writer of rows with `fields` (dotted paths into the event) and
    /// then the features `columns` ([`crate::engine::RuleSet::feature_columns`]).
    pub fn new(
        out: W,
        format: FeatureFormat,
        fields: &[String],
        columns: &[Arc<str>],
    ) -> Result<FeatureWriter<W>, ExportError> {
        let mut paths = Vec::with_capacity(fields.len());
        for f in fields {
            if columns.iter().any(|c| **c == **f) {
                return Err(ExportError::Clash(f.clone()));
            }
            let path = FieldPath::parse(f).unwrap_or_else(|| FieldPath::single(f));
            paths.push((f.clone(), path));
        }
        let sink = match format {
            FeatureFormat::Csv => Sink::Csv(Box::new(csv::Writer::from_writer(out))),
            FeatureFormat::JsonLines => Sink::Json(out),
        };
        Ok(FeatureWriter {
            sink,
            fields: paths,
            columns: columns.to_vec(),
            header_written: false,
            cells: Vec::new(),
            line: Vec::new(),
            rows: 0,
        })
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Writes one row.
    pub fn write(&mut self, row: &FeatureRow) -> Result<(), ExportError> {
        match &mut self.sink {
            Sink::Csv(w) => {
                let record: serde_json::Value = if self.fields.is_empty() {
                    serde_json::Value::Null
                } else {
                    // The decoder accepted the record, so it is a JSON object.
                    serde_json::from_str(&row.event.raw).unwrap_or(serde_json::Value::Null)
                };
                let copied = self.fields.iter().map(|(_, path)| {
                    path.0
                        .iter()
                        .try_fold(&record, |v, seg| v.get(seg.as_str()))
                        .unwrap_or(&serde_json::Value::Null)
                });
                if !self.header_written {
                    let names = self.fields.iter().map(|(n, _)| n.as_str());
                    w.write_record(names.chain(self.columns.iter().map(|c| &**c)))?;
                    self.header_written = true;
                }
                self.cells.clear();
                self.cells.extend(copied.map(json_cell));
                self.cells.extend(row.values.iter().map(value_cell));
                w.write_record(&self.cells)?;
            }
            Sink::Json(w) => {
                self.line.clear();
                row.write_json(&self.fields, &self.columns, &mut self.line)
                    .map_err(std::io::Error::from)?;
                self.line.push(b'\n');
                w.write_all(&self.line)?;
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// Flushes and returns the output.
    pub fn finish(self) -> Result<W, ExportError> {
        match self.sink {
            Sink::Csv(w) => w
                .into_inner()
                .map_err(|e| ExportError::Io(std::io::Error::other(e.to_string()))),
            Sink::Json(mut w) => {
                w.flush()?;
                Ok(w)
            }
        }
    }
}

fn value_cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Num(n) => json_number(*n).to_string(),
        Value::Str(s) | Value::NumText(s) => s.to_string(),
    }
}

fn json_cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
