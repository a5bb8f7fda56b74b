//! The telemetry events: each a type whose one `emit()` writes the log
//! record and records the metrics, so that what is logged and what is
//! counted cannot drift apart.

use super::metrics;
use opentelemetry::KeyValue;
use std::time::Duration;

/// One partition's share of a committed checkpoint.
#[derive(Clone, Copy, Debug)]
pub struct PartitionCommit<'a> {
    /// The topic (input or internal).
    pub topic: &'a str,
    /// The partition.
    pub partition: i32,
    /// Events committed (watermark marks not counted).
    pub events: u64,
}

/// An alert in a committed checkpoint.
#[derive(Clone, Copy, Debug)]
pub struct AlertCommit<'a> {
    /// The rule that fired.
    pub rule: &'a str,
    /// Its severity (`low` … `critical`).
    pub severity: &'static str,
    /// The append time (epoch ms) of the input record that made it fire.
    pub cause_ms: Option<i64>,
    /// The traced event that made it fire, if it was traced.
    pub span: Option<&'a tracing::Span>,
}

/// A checkpoint's transaction committed: events in, alerts out, dead
/// letters, its duration and size.
#[derive(Debug, Default)]
pub struct CheckpointCommitted<'a> {
    /// Per partition that moved.
    pub partitions: Vec<PartitionCommit<'a>>,
    /// Every alert committed.
    pub alerts: Vec<AlertCommit<'a>>,
    /// Records that are not events.
    pub malformed: u64,
    /// Events at or before the watermark.
    pub late: u64,
    /// Events too far ahead of the stream.
    pub future: u64,
    /// Rule limits hit (see `tripline_rule_errors`).
    pub rule_errors: u64,
    /// Records skipped after an internal error.
    pub internal: u64,
    /// Events forwarded to internal topics.
    pub forwarded: u64,
    /// Watermark marks written to internal topics.
    pub marks: usize,
    /// Bytes of state changes written to the changelogs.
    pub state_bytes: u64,
    /// From the barrier's answers until the records they brought were
    /// handed to the producer (the rest of the interval's went ahead).
    pub produced: Duration,
    /// Until the offsets were added to the transaction.
    pub offsets: Duration,
    /// Until every record was acknowledged by the brokers.
    pub delivered: Duration,
    /// Until the commit.
    pub total: Duration,
    /// The commit's wall-clock time, epoch ms.
    pub committed_ms: i64,
}

impl CheckpointCommitted<'_> {
    /// Logs (debug) and counts it.
    pub fn emit(&self) {
        let m = metrics();
        let mut records = 0;
        for p in &self.partitions {
            records += p.events;
            if p.events > 0 {
                m.events_in.add(
                    p.events,
                    &[
                        KeyValue::new("topic", p.topic.to_string()),
                        KeyValue::new("partition", i64::from(p.partition)),
                    ],
                );
            }
        }
        for a in &self.alerts {
            m.alerts.add(
                1,
                &[
                    KeyValue::new("rule", a.rule.to_string()),
                    KeyValue::new("severity", a.severity),
                ],
            );
            if let Some(at) = a.cause_ms {
                let latency = (self.committed_ms - at).max(0) as f64 / 1000.0;
                m.alert_latency.record(latency, &[]);
            }
            if let Some(event) = a.span {
                // A child of the event's span, closed at once: the trace
                // shows when the alert became visible to consumers.
                event.in_scope(|| {
                    tracing::info_span!("tripline.alert.commit", rule = a.rule).in_scope(|| ())
                });
            }
        }
        for (reason, n) in [
            ("malformed", self.malformed),
            ("late", self.late),
            ("future", self.future),
            ("internal", self.internal),
        ] {
            if n > 0 {
                m.dead_letters.add(n, &[KeyValue::new("reason", reason)]);
            }
        }
        if self.malformed > 0 {
            m.decode_errors.add(self.malformed, &[]);
        }
        if self.late > 0 {
            m.late_events.add(self.late, &[]);
        }
        if self.rule_errors > 0 {
            m.rule_errors.add(self.rule_errors, &[]);
        }
        m.checkpoints.add(1, &[]);
        m.checkpoint_duration.record(self.total.as_secs_f64(), &[]);
        m.checkpoint_size.record(self.state_bytes, &[]);
        tracing::debug!(
            records,
            forwarded = self.forwarded,
            alerts = self.alerts.len(),
            dead = self.malformed + self.late + self.future + self.internal,
            marks = self.marks,
            state_bytes = self.state_bytes,
            produced_ms = self.produced.as_secs_f64() * 1000.0,
            offsets_ms = self.offsets.as_secs_f64() * 1000.0,
            delivered_ms = self.delivered.as_secs_f64() * 1000.0,
            ms = self.total.as_secs_f64() * 1000.0,
            "checkpoint committed"
        );
    }
}

/// The span a checkpoint runs in.
pub fn checkpoint_span() -> tracing::Span {
    tracing::info_span!("tripline.checkpoint")
}

/// A checkpoint failed; its transaction is rolled back and the shards
/// rewound to the last commit.
pub struct CheckpointFailed<'a> {
    /// Why.
    pub error: &'a dyn std::fmt::Display,
    /// Whether its transaction had begun (and is now aborted).
    pub aborting: bool,
}

impl CheckpointFailed<'_> {
    /// Logs (warn) and counts it.
    pub fn emit(&self) {
        if self.aborting {
            metrics().aborts.add(1, &[]);
        }
        tracing::warn!(
            "checkpoint failed, rewinding to the last commit: {}",
            self.error
        );
    }
}

/// What became of a rule set change while running.
#[derive(Debug)]
pub enum RulesReload<'a> {
    /// The new rules run.
    Applied {
        /// How many rules.
        rules: usize,
        /// The rule set's hash.
        hash: u64,
    },
    /// The new rules were refused; the running ones stay.
    Refused {
        /// Why.
        reason: &'a str,
    },
    /// The rule files do not compile; the running rules stay.
    Invalid {
        /// The diagnostics.
        errors: &'a str,
    },
}

impl RulesReload<'_> {
    /// Logs and counts it.
    pub fn emit(&self) {
        let outcome = match self {
            RulesReload::Applied { rules, hash } => {
                tracing::info!(rules, hash = format!("{hash:016x}"), "rules reloaded");
                "applied"
            }
            RulesReload::Refused { reason } => {
                tracing::error!("rule change refused, the running rules stay: {reason}");
                "refused"
            }
            RulesReload::Invalid { errors } => {
                tracing::error!(
                    "rule files changed but do not compile; the running rules stay:\n{errors}"
                );
                "invalid"
            }
        };
        metrics()
            .rule_reloads
            .add(1, &[KeyValue::new("outcome", outcome)]);
    }
}

/// The span a rule reload runs in.
pub fn reload_span() -> tracing::Span {
    tracing::info_span!("tripline.rules.reload")
}

/// A REST API request was answered.
#[derive(Debug)]
pub struct ApiRequest<'a> {
    /// GET, PUT, …
    pub method: &'a str,
    /// The route's pattern (`/v1/alerts/{id}/deliveries`), not the path,
    /// so that keys and ids do not become series.
    pub route: &'a str,
    /// The response status.
    pub status: u16,
    /// From the request to the response's head.
    pub duration: Duration,
}

impl ApiRequest<'_> {
    /// Logs (debug) and counts it.
    pub fn emit(&self) {
        metrics().api_duration.record(
            self.duration.as_secs_f64(),
            &[
                KeyValue::new("method", self.method.to_string()),
                KeyValue::new("route", self.route.to_string()),
                KeyValue::new("status", i64::from(self.status)),
            ],
        );
        tracing::debug!(
            method = self.method,
            route = self.route,
            status = self.status,
            ms = self.duration.as_secs_f64() * 1000.0,
            "api request"
        );
    }
}
