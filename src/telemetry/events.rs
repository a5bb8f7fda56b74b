//! The telemetry events: each written to the log and counted in the
//! metrics in one place, so that what is logged and what is counted cannot
//! drift apart. The protocol's own (checkpoints, rule changes) are types of
//! the core, reported through its observer port, which [`Telemetry`]
//! implements.

use super::metrics;
use opentelemetry::KeyValue;
use std::time::Duration;
pub use tripline_core::coordinator::Observer;
pub use tripline_core::coordinator::report::{
    AlertCommit, CheckpointCommitted, CheckpointFailed, PartitionCommit, RulesReload,
};

/// The coordinator's observer: logs and counts what it reports.
#[derive(Debug, Default, Clone, Copy)]
pub struct Telemetry;

impl Observer for Telemetry {
    /// Logs (debug) and counts it.
    fn checkpoint_committed(&self, e: &CheckpointCommitted<'_>) {
        let m = metrics();
        let mut records = 0;
        for p in &e.partitions {
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
        for a in &e.alerts {
            m.alerts.add(
                1,
                &[
                    KeyValue::new("rule", a.rule.to_string()),
                    KeyValue::new("severity", a.severity),
                    KeyValue::new("mode", if a.shadow { "shadow" } else { "live" }),
                ],
            );
            if let Some(at) = a.cause_ms {
                let latency = (e.committed_ms - at).max(0) as f64 / 1000.0;
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
            ("malformed", e.malformed),
            ("late", e.late),
            ("future", e.future),
            ("internal", e.internal),
        ] {
            if n > 0 {
                m.dead_letters.add(n, &[KeyValue::new("reason", reason)]);
            }
        }
        if e.malformed > 0 {
            m.decode_errors.add(e.malformed, &[]);
        }
        if e.late > 0 {
            m.late_events.add(e.late, &[]);
        }
        if e.rule_errors > 0 {
            m.rule_errors.add(e.rule_errors, &[]);
        }
        if e.silenced > 0 {
            m.alerts_suppressed.add(e.silenced, &[]);
        }
        m.checkpoints.add(1, &[]);
        m.checkpoint_duration.record(e.total.as_secs_f64(), &[]);
        m.checkpoint_size.record(e.state_bytes, &[]);
        tracing::debug!(
            records,
            forwarded = e.forwarded,
            alerts = e.alerts.len(),
            dead = e.malformed + e.late + e.future + e.internal,
            marks = e.marks,
            state_bytes = e.state_bytes,
            produced_ms = e.produced.as_secs_f64() * 1000.0,
            offsets_ms = e.offsets.as_secs_f64() * 1000.0,
            delivered_ms = e.delivered.as_secs_f64() * 1000.0,
            commit_ms = e.commit.as_secs_f64() * 1000.0,
            ms = e.total.as_secs_f64() * 1000.0,
            "checkpoint committed"
        );
    }

    /// Logs (warn) and counts it.
    fn checkpoint_failed(&self, e: &CheckpointFailed<'_>) {
        if e.aborting {
            metrics().aborts.add(1, &[]);
        }
        tracing::warn!(
            "checkpoint failed, rewinding to the last commit: {}",
            e.error
        );
    }

    /// Logs and counts it (applied, refused, or invalid).
    fn rules_reloaded(&self, e: &RulesReload<'_>) {
        let outcome = match e {
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
