//! The tables' topics: each declared table (`table NAME { .. topic "T" }`)
//! is a compacted topic another system writes, one record per row, keyed
//! by the row's key, the row as a JSON object. Every instance reads every
//! table topic whole (a global table, as Kafka Streams' GlobalKTable:
//! terminals and merchants are looked up by fields other than the
//! partitioning key, so no instance can do with its own partitions' rows)
//! into its [`Tables`] before it consumes events, then follows them. A
//! record without a value deletes its key's row from the record's time.

use super::{ServiceError, ensure_topics_with};
use crate::adapters::worker::Worker;
use crate::config::Config;
use crate::rules::ir::TableDecl;
use crate::tables::{Row, Tables};
use rdkafka::message::{BorrowedMessage, Message};
use std::sync::Arc;

/// How far back in event time a row's versions are kept (30 days before the
/// row's latest version): an event older than that sees the version of 30
/// days before the latest, not the one of its own time. Without a bound, a
/// row updated every day would hold every version it ever had. The bound is
/// the row's own time, not the clock, so a replay of old data over the
/// table's topic sees what `replay` over its file sees.
const HISTORY_MS: i64 = 30 * 24 * 3_600_000;

/// Creates missing table topics (compacted), reads them whole into
/// `tables`, then keeps reading them until the worker is stopped. `None`
/// when the rules declare no table.
pub fn follow(
    config: &Config,
    brokers: &str,
    decls: &[TableDecl],
    tables: Arc<Tables>,
) -> Result<Option<Worker>, ServiceError> {
    if decls.is_empty() {
        return Ok(None);
    }
    let k = &config.kafka;
    let topics: Vec<String> = decls.iter().map(|d| d.topic.clone()).collect();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    ensure_topics_with(k, brokers, &names, 1, super::COMPACTED)?;
    let decls = decls.to_vec();
    let kept = tables.clone();
    let forget = tables.clone();
    let apply = move |m: &BorrowedMessage<'_>| {
        for d in decls.iter().filter(|d| d.topic == m.topic()) {
            apply_record(d, m, &tables);
        }
        // After the record's rows: a store that keeps them across restarts
        // never keeps a position past rows it lost.
        tables.set_position(m.topic(), m.partition(), m.offset() + 1);
    };
    super::compacted::read_then_follow(
        k,
        brokers,
        &topics,
        "tables",
        "tables",
        "tripline-tables",
        super::compacted::Resume {
            kept: &|topic, partition| kept.position(topic, partition),
            forget: &|| forget.clear(),
        },
        apply,
    )
    .map(Some)
}

/// What a disk store of tables is filled for: the cluster, and each
/// table's name, topic, key and time fields, and how far back its versions
/// go. A store filled for anything else is emptied.
pub fn store_identity(brokers: &str, decls: &[TableDecl]) -> String {
    let mut identity = format!("brokers {brokers}\nhistory {HISTORY_MS}\n");
    for d in decls {
        let time = d.spec.time.as_ref().map(ToString::to_string);
        identity.push_str(&format!(
            "table {} topic {} key {} time {}\n",
            d.spec.name,
            d.topic,
            d.spec.key,
            time.as_deref().unwrap_or("-")
        ));
    }
    identity
}

/// Applies one record of `decl`'s topic.
fn apply_record(decl: &TableDecl, m: &BorrowedMessage<'_>, tables: &Tables) {
    let table = &decl.spec.name;
    let Some(value) = m.payload() else {
        // A deletion: its key is the row's key, its time the record's.
        let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
        match (key, m.timestamp().to_millis()) {
            (Some(key), Some(at)) => {
                tables.put(table, &key, at, None);
                tables.forget_before(table, &key, at - HISTORY_MS);
            }
            _ => tracing::warn!(
                table,
                offset = m.offset(),
                "a deletion without a key or time: ignored"
            ),
        }
        return;
    };
    let row: Row = match serde_json::from_slice(value) {
        Ok(serde_json::Value::Object(row)) => row,
        _ => {
            tracing::warn!(
                table,
                offset = m.offset(),
                "a record that is not a JSON object: ignored"
            );
            return;
        }
    };
    match Tables::key_and_time(&decl.spec, &row) {
        Ok((key, at)) => {
            tables.put(table, &key, at, Some(row));
            tables.forget_before(table, &key, at - HISTORY_MS);
        }
        Err(e) => tracing::warn!(table, offset = m.offset(), "a row that cannot be used: {e}"),
    }
}
