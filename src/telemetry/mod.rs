//! Telemetry: the logs, metrics and traces tripline reports, and the one
//! place that sets them up.
//!
//! Every metric is an instrument of this module, recorded only by the typed
//! events in [`events`] (each with one `emit()` that logs and counts) or read
//! by the observers registered here ([`observe_service`],
//! [`observe_webhooks`]): names, units and attributes live in one place,
//! and `docs/operations.md` lists them.
//!
//! Exporters: the Prometheus text format at `/metrics` (a reader the REST
//! API asks at scrape time) and OTLP/HTTP to a collector (metrics pushed
//! every `otlp_interval_ms`, spans in batches). With neither configured the
//! instruments are OpenTelemetry's no-ops. Counting never touches the
//! per-event path: the figures come from the checkpoint, per partition and
//! per alert, and gauges are read only when an exporter asks.
//!
//! Traces exist only with an OTLP endpoint: a span per checkpoint, per rule
//! reload and per API request, and for a sampled share of input events (or
//! those whose record carries a sampled W3C `traceparent` header) a span for
//! the event's processing, with a child per alert it caused when that alert
//! commits; the alert's record carries the trace on in its own
//! `traceparent` header.

pub mod events;

use crate::config::TelemetryConfig;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_prometheus_text_exporter::PrometheusExporter;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The instrumentation scope of every metric and span.
const SCOPE: &str = "tripline";

/// The installed exporters; dropping it flushes and stops them.
pub struct Telemetry {
    meters: Option<SdkMeterProvider>,
    tracer: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(t) = self.tracer.take() {
            t.shutdown().ok();
        }
        if let Some(m) = self.meters.take() {
            m.shutdown().ok();
        }
    }
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("telemetry: {0}")]
pub struct TelemetryError(String);

static PROMETHEUS: OnceLock<PrometheusExporter> = OnceLock::new();
/// Whether spans are exported (an OTLP endpoint is set).
static TRACING: AtomicBool = AtomicBool::new(false);
/// `trace_sample_ratio` as a threshold on a random `u64`.
static SAMPLE_BELOW: AtomicU64 = AtomicU64::new(0);

/// Logs for commands that export nothing (`check`, `replay`): human or
/// JSON lines on stderr, filtered by `TRIPLINE_LOG`.
pub fn init_logs(json: bool) {
    let registry = tracing_subscriber::registry().with(log_filter());
    if json {
        registry.with(json_layer()).try_init().ok();
    } else {
        registry.with(human_layer()).try_init().ok();
    }
}

fn log_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("TRIPLINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,librdkafka=warn"))
}

fn human_layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
}

fn json_layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(std::io::stderr)
}

/// Sets up logs, the metric readers and the span exporter `config` asks
/// for, and makes them the process's global providers. Call it once,
/// before anything records; the returned guard flushes on drop.
pub fn init(config: &TelemetryConfig) -> Result<Telemetry, TelemetryError> {
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let otlp = config.otlp_endpoint.trim_end_matches('/');
    let mut meters = None;
    if config.prometheus || !otlp.is_empty() {
        let mut builder = SdkMeterProvider::builder().with_resource(resource.clone());
        if config.prometheus {
            let exporter = PrometheusExporter::builder().without_scope_info().build();
            builder = builder.with_reader(exporter.clone());
            PROMETHEUS.set(exporter).ok();
        }
        if !otlp.is_empty() {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_endpoint(format!("{otlp}/v1/metrics"))
                .with_timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| TelemetryError(format!("OTLP metrics exporter: {e}")))?;
            builder = builder.with_reader(
                PeriodicReader::builder(exporter)
                    .with_interval(Duration::from_millis(config.otlp_interval_ms))
                    .build(),
            );
        }
        let provider = builder.build();
        opentelemetry::global::set_meter_provider(provider.clone());
        meters = Some(provider);
    }
    let mut tracer = None;
    let registry = tracing_subscriber::registry().with(log_filter());
    let otel_layer = if otlp.is_empty() {
        None
    } else {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(format!("{otlp}/v1/traces"))
            .with_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| TelemetryError(format!("OTLP span exporter: {e}")))?;
        let provider = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_batch_exporter(exporter)
            .build();
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer(SCOPE));
        opentelemetry::global::set_tracer_provider(provider.clone());
        tracer = Some(provider);
        TRACING.store(true, Ordering::Relaxed);
        SAMPLE_BELOW.store(
            (config.trace_sample_ratio * u64::MAX as f64) as u64,
            Ordering::Relaxed,
        );
        Some(layer)
    };
    let registry = registry.with(otel_layer);
    if config.log_format == "json" {
        registry.with(json_layer()).try_init().ok();
    } else {
        registry.with(human_layer()).try_init().ok();
    }
    Ok(Telemetry { meters, tracer })
}

/// The metrics in Prometheus text format (`None`: `telemetry.prometheus`
/// is off).
pub fn prometheus_text() -> Option<Vec<u8>> {
    let exporter = PROMETHEUS.get()?;
    let mut out = Vec::with_capacity(16 * 1024);
    match exporter.export(&mut out) {
        Ok(()) => Some(out),
        Err(e) => {
            tracing::warn!("metrics could not be rendered: {e}");
            None
        }
    }
}

fn meter() -> Meter {
    opentelemetry::global::meter_provider().meter(SCOPE)
}

/// The synchronous instruments, created on first use from the global
/// provider (so after [`init`]).
pub(crate) struct Metrics {
    pub events_in: Counter<u64>,
    pub decode_errors: Counter<u64>,
    pub late_events: Counter<u64>,
    pub rule_errors: Counter<u64>,
    pub alerts_suppressed: Counter<u64>,
    pub dead_letters: Counter<u64>,
    pub alerts: Counter<u64>,
    pub alert_latency: Histogram<f64>,
    pub checkpoints: Counter<u64>,
    pub checkpoint_duration: Histogram<f64>,
    pub checkpoint_size: Histogram<u64>,
    pub aborts: Counter<u64>,
    pub rule_reloads: Counter<u64>,
    pub api_duration: Histogram<f64>,
}

/// Latency buckets in seconds: 1 ms to 1 min, about ×2.5 apart.
const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Size buckets in bytes: 1 KiB to 1 GiB, ×4 apart.
const BYTES: &[f64] = &[
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    16777216.0,
    67108864.0,
    268435456.0,
    1073741824.0,
];

pub(crate) fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = meter();
        Metrics {
            events_in: m
                .u64_counter("tripline_events_in")
                .with_description("Input records committed, per topic and partition")
                .build(),
            decode_errors: m
                .u64_counter("tripline_decode_errors")
                .with_description("Input records that are not events (dead-lettered)")
                .build(),
            late_events: m
                .u64_counter("tripline_late_events")
                .with_description("Events at or before the watermark (dead-lettered)")
                .build(),
            rule_errors: m
                .u64_counter("tripline_rule_errors")
                .with_description(
                    "A rule's limit hit for one key (partial matches trimmed, alerts of one event \
                     not raised, a state too large reset); logged with the rule and key",
                )
                .build(),
            alerts_suppressed: m
                .u64_counter("tripline_alerts_suppressed")
                .with_description(
                    "Alerts not raised because their rule's `suppress` period for the key was running",
                )
                .build(),
            dead_letters: m
                .u64_counter("tripline_dead_letters")
                .with_description("Records committed to the dead-letter topic, per reason")
                .build(),
            alerts: m
                .u64_counter("tripline_alerts")
                .with_description("Alerts committed, per rule and severity")
                .build(),
            alert_latency: m
                .f64_histogram("tripline_alert_latency")
                .with_unit("s")
                .with_description(
                    "From the append time of the input record that made an alert fire to the \
                     commit of that alert",
                )
                .with_boundaries(SECONDS.to_vec())
                .build(),
            checkpoints: m
                .u64_counter("tripline_checkpoints")
                .with_description("Checkpoint transactions committed")
                .build(),
            checkpoint_duration: m
                .f64_histogram("tripline_checkpoint_duration")
                .with_unit("s")
                .with_description("From the start of a checkpoint's transaction to its commit")
                .with_boundaries(SECONDS.to_vec())
                .build(),
            checkpoint_size: m
                .u64_histogram("tripline_checkpoint_size")
                .with_unit("By")
                .with_description("State changes a checkpoint writes to the changelogs")
                .with_boundaries(BYTES.to_vec())
                .build(),
            aborts: m
                .u64_counter("tripline_transaction_aborts")
                .with_description("Checkpoints that failed and were rolled back")
                .build(),
            rule_reloads: m
                .u64_counter("tripline_rule_reloads")
                .with_description("Rule set changes while running, per outcome")
                .build(),
            api_duration: m
                .f64_histogram("tripline_api_request_duration")
                .with_unit("s")
                .with_description("REST API requests, per route, method and status")
                .with_boundaries(SECONDS.to_vec())
                .build(),
        }
    })
}

/// Observable instruments registered so far, kept alive with the process.
static OBSERVERS: Mutex<Vec<Box<dyn std::any::Any + Send + Sync>>> = Mutex::new(Vec::new());

fn keep(instrument: impl std::any::Any + Send + Sync) {
    OBSERVERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(Box::new(instrument));
}

pub use tripline_core::coordinator::report::{PartitionFigures, ServiceFigures};

/// Registers the service's gauges; `read` is called at each collection.
/// Also starts the service's counters at zero, so that a scrape finds every
/// series before the first event of its kind.
pub fn observe_service(read: impl Fn() -> ServiceFigures + Send + Sync + 'static) {
    let c = metrics();
    for counter in [
        &c.decode_errors,
        &c.late_events,
        &c.rule_errors,
        &c.alerts_suppressed,
        &c.checkpoints,
        &c.aborts,
    ] {
        counter.add(0, &[]);
    }
    for reason in ["malformed", "late", "future", "internal"] {
        c.dead_letters.add(0, &[KeyValue::new("reason", reason)]);
    }
    for outcome in ["applied", "refused", "invalid"] {
        c.rule_reloads.add(0, &[KeyValue::new("outcome", outcome)]);
    }
    let read = std::sync::Arc::new(read);
    let m = meter();
    let gauge = |name: &'static str,
                 unit: &'static str,
                 description: &'static str,
                 f: fn(&ServiceFigures) -> u64| {
        let read = read.clone();
        let mut b = m
            .u64_observable_gauge(name)
            .with_description(description)
            .with_callback(move |o| o.observe(f(&read()), &[]));
        if !unit.is_empty() {
            b = b.with_unit(unit);
        }
        keep(b.build());
    };
    gauge(
        "tripline_partitions_assigned",
        "",
        "Input and internal partitions this process holds",
        |f| f.partitions_assigned,
    );
    gauge(
        "tripline_partitions_restoring",
        "",
        "Changelog partitions being read to restore state",
        |f| f.partitions_restoring,
    );
    gauge(
        "tripline_keys_resident",
        "",
        "Keys whose state is in memory (at the last checkpoint)",
        |f| f.keys_resident,
    );
    gauge(
        "tripline_keys_passivated",
        "",
        "Keys whose state is only in the data directory (at the last checkpoint)",
        |f| f.keys_passivated,
    );
    gauge(
        "tripline_state_resident",
        "By",
        "Estimated memory the resident keys' state holds",
        |f| f.state_bytes,
    );
    gauge(
        "tripline_checkpoints_failed_in_a_row",
        "",
        "Checkpoints failed since the last that committed (not ready from 3)",
        |f| f.checkpoints_failed_in_a_row,
    );
    gauge(
        "tripline_partial_matches",
        "",
        "Partial matches alive in resident keys (counted every few seconds)",
        |f| f.partitions.iter().filter_map(|p| p.partial_matches).sum(),
    );
    gauge(
        "tripline_events_waiting",
        "",
        "Events waiting for the watermark to pass their time (at the last checkpoint)",
        |f| f.partitions.iter().map(|p| p.waiting_events).sum(),
    );
    let pauses = read.clone();
    keep(
        m.u64_observable_counter("tripline_backpressure_pauses")
            .with_description(
                "Partitions paused because their shard's mailbox stayed full (backpressure)",
            )
            .with_callback(move |o| o.observe(pauses().backpressure_pauses, &[]))
            .build(),
    );
    let lag = read.clone();
    keep(
        m.i64_observable_gauge("tripline_consumer_lag")
            .with_description("Records between the committed offset and the partition's end")
            .with_callback(move |o| {
                for p in lag().partitions {
                    if let Some(lag) = p.lag() {
                        o.observe(lag, &partition_attributes(&p));
                    }
                }
            })
            .build(),
    );
    let delay = read;
    keep(
        m.f64_observable_gauge("tripline_watermark_delay")
            .with_unit("s")
            .with_description("Wall clock minus the partition's watermark")
            .with_callback(move |o| {
                let now = now_ms();
                for p in delay().partitions {
                    if let Some(d) = p.watermark_delay(now) {
                        o.observe(d, &partition_attributes(&p));
                    }
                }
            })
            .build(),
    );
}

fn partition_attributes(p: &PartitionFigures) -> [KeyValue; 2] {
    [
        KeyValue::new("topic", p.topic.clone()),
        KeyValue::new("partition", i64::from(p.partition)),
    ]
}

/// One webhook endpoint's delivery figures.
#[derive(Clone, Debug, Default)]
pub struct WebhookFigures {
    /// The endpoint's name.
    pub endpoint: String,
    /// Deliveries not finished.
    pub queued: i64,
    /// Of those in memory, failed at least once.
    pub retrying: i64,
    /// Requests on the way.
    pub in_flight: i64,
    /// Delivered since start.
    pub delivered: u64,
    /// Failed requests since start.
    pub failed_attempts: u64,
    /// Given up since start.
    pub dead: u64,
}

/// Registers the list gauge: how many values each list holds now.
pub fn observe_lists(read: impl Fn() -> Vec<(String, u64)> + Send + Sync + 'static) {
    keep(
        meter()
            .u64_observable_gauge("tripline_list_size")
            .with_description("Values on each list for events of now")
            .with_callback(move |o| {
                for (list, n) in read() {
                    o.observe(n, &[KeyValue::new("list", list)]);
                }
            })
            .build(),
    );
}

/// Registers the table gauge: how many keys each table has a row for.
pub fn observe_tables(read: impl Fn() -> Vec<(String, u64)> + Send + Sync + 'static) {
    keep(
        meter()
            .u64_observable_gauge("tripline_table_keys")
            .with_description("Keys each table has a row for (in any version)")
            .with_callback(move |o| {
                for (table, n) in read() {
                    o.observe(n, &[KeyValue::new("table", table)]);
                }
            })
            .build(),
    );
}

/// Registers the webhook delivery gauges and counters.
pub fn observe_webhooks(read: impl Fn() -> Vec<WebhookFigures> + Send + Sync + 'static) {
    let read = std::sync::Arc::new(read);
    let m = meter();
    let states = read.clone();
    keep(
        m.i64_observable_gauge("tripline_webhook_deliveries")
            .with_description(
                "Unfinished webhook deliveries per endpoint and state (queued, retrying, in_flight)",
            )
            .with_callback(move |o| {
                for e in states() {
                    for (state, n) in [
                        ("queued", e.queued),
                        ("retrying", e.retrying),
                        ("in_flight", e.in_flight),
                    ] {
                        o.observe(
                            n,
                            &[
                                KeyValue::new("endpoint", e.endpoint.clone()),
                                KeyValue::new("state", state),
                            ],
                        );
                    }
                }
            })
            .build(),
    );
    keep(
        m.u64_observable_counter("tripline_webhook_outcomes")
            .with_description(
                "Finished webhook requests and deliveries per endpoint and outcome \
                 (delivered, failed_attempt, dead)",
            )
            .with_callback(move |o| {
                for e in read() {
                    for (outcome, n) in [
                        ("delivered", e.delivered),
                        ("failed_attempt", e.failed_attempts),
                        ("dead", e.dead),
                    ] {
                        o.observe(
                            n,
                            &[
                                KeyValue::new("endpoint", e.endpoint.clone()),
                                KeyValue::new("outcome", outcome),
                            ],
                        );
                    }
                }
            })
            .build(),
    );
}

/// The wall clock in epoch milliseconds.
pub fn now_ms() -> i64 {
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now();
    now.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Whether spans are exported.
pub fn tracing_enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// The span of an input record's path to its alerts, when it is traced:
/// its `traceparent` header says so (sampled), or it falls in the sampled
/// share. `None` (and no cost past one load) when spans are not exported.
pub fn event_span(
    traceparent: Option<&[u8]>,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Option<tracing::Span> {
    if !tracing_enabled() {
        return None;
    }
    let parent = traceparent
        .and_then(|h| std::str::from_utf8(h).ok())
        .map(|h| TraceContextPropagator::new().extract(&Traceparent(Some(h.to_string()))))
        .filter(|cx| {
            use opentelemetry::trace::TraceContextExt;
            cx.span().span_context().is_sampled()
        });
    if parent.is_none() && fastrand::u64(..) >= SAMPLE_BELOW.load(Ordering::Relaxed) {
        return None;
    }
    let span = tracing::info_span!(
        "tripline.event",
        messaging.destination.name = topic,
        messaging.kafka.partition = partition,
        messaging.kafka.offset = offset,
    );
    if let Some(cx) = parent {
        span.set_parent(cx).ok();
    }
    Some(span)
}

/// The W3C `traceparent` header value of `span`, to carry its trace on.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let mut carrier = Traceparent(None);
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.0
}

/// The one header of W3C trace context tripline reads and writes
/// (`tracestate` is not carried).
struct Traceparent(Option<String>);

impl opentelemetry::propagation::Extractor for Traceparent {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.as_deref().filter(|_| key == "traceparent")
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

impl opentelemetry::propagation::Injector for Traceparent {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = Some(value);
        }
    }
}
