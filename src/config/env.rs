//! Settings from the environment: `TRIPLINE__SECTION__KEY=value`
//! overrides, checked against the known fields.

const FIELDS: &[&str] = &[
    "max_alerts_per_event",
    "models_dir",
    "header_timeout_ms",
    "max_connections",
    "max_stream_subscribers",
    "allowed_hosts",
    "kafka",
    "rules",
    "stream",
    "checkpoint",
    "runtime",
    "state",
    "dir",
    "brokers",
    "group_id",
    "instance_id",
    "static_membership",
    "input_topic",
    "input_partitioner",
    "advertise",
    "alerts_topic",
    "dead_letter_topic",
    "lists_topic",
    "partitions",
    "session_timeout_ms",
    "transaction_timeout_ms",
    "max_poll_interval_ms",
    "client",
    "paths",
    "max_partials_per_key",
    "max_record_bytes",
    "reload_interval_ms",
    "key",
    "time",
    "time_format",
    "lateness",
    "interval_ms",
    "shard_threads",
    "batch_size",
    "max_queued_batches",
    "full_shard_wait_ms",
    "webhooks",
    "endpoints",
    "name",
    "url",
    "min_severity",
    "secret",
    "secret_env",
    "timeout_ms",
    "max_concurrency",
    "queue",
    "retry",
    "initial_backoff_ms",
    "max_backoff_ms",
    "give_up_after",
    "status_retention",
    "telemetry",
    "log_format",
    "prometheus",
    "otlp_endpoint",
    "otlp_interval_ms",
    "trace_sample_ratio",
    "service_name",
];

pub(super) fn unknown_field(path: &str) -> String {
    let last = path.rsplit('.').next().unwrap_or(path);
    match crate::rules::suggest(last, FIELDS.iter().copied()) {
        Some(s) => format!("unknown field `{path}` (did you mean `{s}`?)"),
        None => format!("unknown field `{path}`"),
    }
}

/// Sets `a__b__c` (lower-cased) in `table` to `value`.
pub(super) fn apply_override(
    table: &mut toml::Table,
    path: &str,
    value: &str,
) -> Result<(), String> {
    let segments: Vec<String> = path.split("__").map(|s| s.to_ascii_lowercase()).collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err("empty path segment".into());
    }
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let (last, parents) = segments.split_last().ok_or("empty path")?;
    let mut cur = table;
    for seg in parents {
        let entry = cur
            .entry(seg.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{seg}` is not a section"))?;
    }
    cur.insert(last.clone(), parsed);
    Ok(())
}
