//! Settings from the environment: `TRIPLINE__SECTION__KEY=value`
//! overrides, checked against the known fields.

/// Every setting's name, for suggestions (a test checks that every
/// setting `tripline.toml` documents is here).
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
    "shadow_topic",
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
    "feature_log",
    "trial",
    "labels_topic",
    "id_field",
    "delay",
    "margin",
    "min_frauds",
    "top_k",
    "promote",
    "every",
    "max_rows",
    "train",
    "models",
    "span",
    "test",
    "python",
    "out",
    "topic",
    "fields",
    "retention",
    "log_format",
    "prometheus",
    "otlp_endpoint",
    "otlp_interval_ms",
    "trace_sample_ratio",
    "service_name",
    "alerts_kept",
    "api",
    "listen",
    "max_body_bytes",
    "memory_budget_mb",
    "open_reads",
    "score_window",
    "tables",
    "tables_cache_mb",
    "token",
];

pub(super) fn unknown_field(path: &str) -> String {
    let last = path.rsplit('.').next().unwrap_or(path);
    match crate::rules::suggest(last, FIELDS.iter().copied()) {
        Some(s) => format!("unknown field `{path}` (did you mean `{s}`?)"),
        None => format!("unknown field `{path}`"),
    }
}

/// An unknown setting given by the environment variable `var`.
pub(super) fn unknown_variable(var: &str, path: &str) -> String {
    let last = path.rsplit('.').next().unwrap_or(path);
    let hint = match crate::rules::suggest(last, FIELDS.iter().copied()) {
        Some(s) => {
            let at = var.len() - last.len();
            format!(" (did you mean {}{}?)", &var[..at], s.to_ascii_uppercase())
        }
        None => String::new(),
    };
    format!("environment variable {var}: no setting `{path}`{hint}")
}

/// A type error of serde's (`invalid type: string "two", expected i32` and
/// `in `kafka.partitions``) in the configuration's terms, with the dotted
/// path it is at, when it says.
pub(super) fn type_problem(error: &str) -> (String, Option<String>) {
    let (message, path) = match error.trim_end().rsplit_once("\nin `") {
        Some((m, p)) => (m.trim(), Some(p.trim_end_matches('`').to_string())),
        None => (error.trim(), None),
    };
    let Some((_, expected)) = message.split_once(", expected ") else {
        return (message.to_string(), path);
    };
    let expected = match expected.trim() {
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".to_string(),
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number, 0 or more".to_string(),
        "f32" | "f64" => "a number".to_string(),
        "a boolean" => "true or false".to_string(),
        "a string" => "text, in quotes".to_string(),
        "a sequence" => "a list, in [ ]".to_string(),
        other => other.to_string(),
    };
    (format!("expected {expected}"), path)
}

/// The value at dotted `path` in `table`, as TOML writes it.
pub(super) fn value_at(table: &toml::Table, path: &str) -> String {
    let mut cur = table;
    let segments: Vec<&str> = path.split('.').collect();
    for (i, seg) in segments.iter().enumerate() {
        match cur.get(*seg) {
            Some(toml::Value::Table(t)) if i + 1 < segments.len() => cur = t,
            Some(v) if i + 1 == segments.len() => return v.to_string(),
            _ => break,
        }
    }
    "(a value)".to_string()
}

/// Removes the value at dotted `path` (so that its default applies);
/// whether there was one.
pub(super) fn remove_at(table: &mut toml::Table, path: &str) -> bool {
    let Some((parents, last)) = path.rsplit_once('.').map_or(Some(("", path)), Some) else {
        return false;
    };
    let mut cur = table;
    if !parents.is_empty() {
        for seg in parents.split('.') {
            match cur.get_mut(seg) {
                Some(toml::Value::Table(t)) => cur = t,
                _ => return false,
            }
        }
    }
    cur.remove(last).is_some()
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

#[cfg(test)]
mod tests {
    /// Every setting the shipped `tripline.toml` documents (set, or
    /// commented out; in inline tables too) gets suggested when misspelt.
    #[test]
    fn every_documented_setting_is_known() {
        let is_name =
            |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        let mut missing = Vec::new();
        let mut check = |name: &str| {
            if is_name(name)
                && !super::FIELDS.contains(&name)
                && !missing.contains(&name.to_string())
            {
                missing.push(name.to_string());
            }
        };
        for line in include_str!("../../tripline.toml").lines() {
            let line = line.trim_start_matches(['#', ' ']);
            if let Some(section) = line.strip_prefix('[') {
                section
                    .trim_matches(['[', ']'])
                    .split('.')
                    .for_each(&mut check);
                continue;
            }
            for part in line.split(['{', ',']) {
                if let Some((name, _)) = part.split_once('=') {
                    check(name.trim());
                }
            }
        }
        assert!(
            missing.is_empty(),
            "settings missing from FIELDS: {missing:?}"
        );
    }
}
