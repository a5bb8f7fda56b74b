//! Table files: what `replay` and `backtest` read for `--table NAME=FILE`.
//! A file holds one row per line as a JSON object, as the table's topic
//! carries them; each row is keyed and timed by the fields its `table`
//! declaration names, and applies from its time on (a lookup is as of each
//! event's time).

use crate::engine::RuleSet;
use crate::tables::Tables;
use anyhow::{Context, Result, bail};
use std::sync::Arc;

/// Reads `NAME=FILE` specs into tables for `rules`; every NAME must be a
/// table the rules declare. Tables the rules declare and no spec names stay
/// empty (returned, so that the caller can say so).
pub fn load_table_files(specs: &[String], rules: &RuleSet) -> Result<(Arc<Tables>, Vec<String>)> {
    let tables = Tables::new();
    let declared = &rules.def().tables;
    let mut named = Vec::new();
    for spec in specs {
        let Some((name, file)) = spec.split_once('=') else {
            bail!("--table {spec}: expected NAME=FILE");
        };
        let Some(decl) = declared.iter().find(|d| d.spec.name == name) else {
            let names: Vec<&str> = declared.iter().map(|d| d.spec.name.as_str()).collect();
            bail!(
                "--table {spec}: the rules declare no table `{name}` (they declare: {})",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            );
        };
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            tables
                .load(&decl.spec, line)
                .with_context(|| format!("{file} line {}", i + 1))?;
        }
        named.push(name.to_string());
    }
    let empty = declared
        .iter()
        .map(|d| d.spec.name.clone())
        .filter(|d| !named.contains(d))
        .collect();
    Ok((Arc::new(tables), empty))
}
