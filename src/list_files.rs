//! List files: what `replay` and `backtest` read for `--list NAME=FILE`,
//! and the bulk format the API takes. A `.csv` file has a header with a
//! `value` column and optionally `from`, `until` (event times: epoch ms or
//! RFC 3339), `op` (`add`, the default, or `remove`), `author` and
//! `comment`; a row without `from` applies from the beginning of time. A
//! `.jsonl` file holds entries as the list topic and `GET /lists/NAME/export`
//! write them (`{"list":…,"value":…,"changes":[…]}`), so a replay over an
//! export sees the lists the service saw.

use crate::engine::RuleSet;
use crate::event::{EventTime, parse_time_str};
use crate::lists::{ListChange, ListEntry, ListOp, Lists};
use anyhow::{Context, Result, bail};
use std::path::Path;
use std::sync::Arc;

/// Reads `NAME=FILE` specs into lists for `rules`; every NAME must be a
/// list the rules declare. Lists the rules declare and no spec names stay
/// empty (returned, so that the caller can say so).
pub fn load_list_files(specs: &[String], rules: &RuleSet) -> Result<(Arc<Lists>, Vec<String>)> {
    let lists = Lists::new();
    let declared = &rules.def().lists;
    let mut named = Vec::new();
    for spec in specs {
        let Some((name, file)) = spec.split_once('=') else {
            bail!("--list {spec}: expected NAME=FILE");
        };
        if !declared.iter().any(|d| d == name) {
            bail!(
                "--list {spec}: the rules declare no list `{name}` (they declare: {})",
                if declared.is_empty() {
                    "none".to_string()
                } else {
                    declared.join(", ")
                }
            );
        }
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
        let entries = parse_list_file(name, Path::new(file), &text)?;
        for e in entries {
            lists.put(e);
        }
        named.push(name.to_string());
    }
    let empty = declared
        .iter()
        .filter(|d| !named.contains(d))
        .cloned()
        .collect();
    Ok((Arc::new(lists), empty))
}

/// The entries of list `name` in `text`, read as `path`'s extension says.
pub fn parse_list_file(name: &str, path: &Path, text: &str) -> Result<Vec<ListEntry>> {
    let jsonl = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl") || e.eq_ignore_ascii_case("json"));
    if jsonl {
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let mut e: ListEntry = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not a list entry", path.display(), i + 1))?;
            if e.list.is_empty() {
                e.list = name.to_string();
            }
            if e.list != name {
                continue;
            }
            out.push(e);
        }
        return Ok(out);
    }
    parse_list_csv(name, text, &CsvDefaults::default())
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// What a CSV row that leaves them out gets.
#[derive(Clone, Copy, Debug)]
pub struct CsvDefaults<'a> {
    /// The author.
    pub author: Option<&'a str>,
    /// The time a change applies from (files: the beginning of time; the
    /// API: now).
    pub from: EventTime,
    /// When the changes were made.
    pub recorded: Option<i64>,
}

impl Default for CsvDefaults<'_> {
    fn default() -> Self {
        CsvDefaults {
            author: None,
            from: EventTime::MIN,
            recorded: None,
        }
    }
}

/// Rows of a CSV list file as changes of list `name` (see the module docs),
/// with `defaults` for what a row leaves out. Errors name the line.
pub fn parse_list_csv(
    name: &str,
    text: &str,
    defaults: &CsvDefaults<'_>,
) -> Result<Vec<ListEntry>, String> {
    let CsvDefaults {
        author,
        from: default_from,
        recorded,
    } = *defaults;
    let mut rd = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = rd.headers().map_err(|e| e.to_string())?.clone();
    let col = |n: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(n));
    let Some(value_col) = col("value") else {
        return Err(
            "no `value` column (the header names value[,from][,until][,op][,author][,comment])"
                .into(),
        );
    };
    let known = ["value", "from", "until", "op", "author", "comment"];
    if let Some(h) = headers
        .iter()
        .find(|h| !known.iter().any(|k| h.eq_ignore_ascii_case(k)))
    {
        return Err(format!(
            "unknown column `{h}` (the header names value[,from][,until][,op][,author][,comment])"
        ));
    }
    let (from, until, op, who, why) = (
        col("from"),
        col("until"),
        col("op"),
        col("author"),
        col("comment"),
    );
    let mut entries: Vec<ListEntry> = Vec::new();
    let mut index: hashbrown::HashMap<String, usize> = Default::default();
    for row in rd.records() {
        let row = row.map_err(|e| e.to_string())?;
        let line = row.position().map_or(0, |p| p.line());
        let cell = |c: Option<usize>| c.and_then(|c| row.get(c)).filter(|s| !s.is_empty());
        let value = cell(Some(value_col)).ok_or(format!("line {line}: empty value"))?;
        let time = |c: Option<usize>, what: &str| -> Result<Option<EventTime>, String> {
            cell(c)
                .map(|s| {
                    parse_event_time(s).ok_or(format!(
                        "line {line}: bad {what} time `{s}` (epoch ms or RFC 3339)"
                    ))
                })
                .transpose()
        };
        let change = ListChange {
            op: match cell(op).map(|s| s.to_ascii_lowercase()) {
                None => ListOp::Add,
                Some(s) if s == "add" => ListOp::Add,
                Some(s) if s == "remove" => ListOp::Remove,
                Some(s) => return Err(format!("line {line}: bad op `{s}` (add or remove)")),
            },
            at: time(from, "from")?.unwrap_or(default_from),
            until: time(until, "until")?,
            author: cell(who).or(author).map(String::from),
            comment: cell(why).map(String::from),
            recorded,
        };
        let i = *index.entry(value.to_string()).or_insert_with(|| {
            entries.push(ListEntry {
                list: name.to_string(),
                value: value.to_string(),
                changes: Vec::new(),
            });
            entries.len() - 1
        });
        entries[i].changes.push(change);
    }
    Ok(entries)
}

/// An event time written as epoch milliseconds or a date-time.
pub fn parse_event_time(s: &str) -> Option<EventTime> {
    s.parse::<i64>().ok().or_else(|| parse_time_str(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_are_changes_from_their_times() {
        let text = "value,from,until,op,comment\nT1,,,,\nT2,1000,2000,,attack 7\nT1,1500,,remove,cleared\n";
        let defaults = CsvDefaults {
            author: Some("ops"),
            ..CsvDefaults::default()
        };
        let entries = parse_list_csv("blocked", text, &defaults).unwrap();
        let lists = Lists::new();
        for e in entries {
            lists.put(e);
        }
        let on = |v: &str, t| {
            lists
                .contains("blocked", &crate::event::Value::from(v), t)
                .unwrap()
        };
        assert!(on("T1", 0) && on("T1", 1499) && !on("T1", 1500));
        assert!(!on("T2", 999) && on("T2", 1000) && !on("T2", 2000));
        let t2 = lists.entry("blocked", "T2").unwrap();
        assert_eq!(t2.changes[0].author.as_deref(), Some("ops"));
        assert_eq!(t2.changes[0].comment.as_deref(), Some("attack 7"));
    }

    #[test]
    fn bad_rows_name_their_line() {
        for (text, want) in [
            ("val\nT1\n", "no `value` column"),
            ("value,colour\nT1,red\n", "unknown column `colour`"),
            ("value,from\nT1,yesterday\n", "line 2: bad from time"),
            ("value,op\nT1,flip\n", "line 2: bad op `flip`"),
            ("value\n\"\"\n", "line 2: empty value"),
        ] {
            let err = parse_list_csv("l", text, &CsvDefaults::default()).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
