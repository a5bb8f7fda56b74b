//! The service configuration: one TOML file (`tripline.toml`) with
//! environment overrides, read into one [`Config`] tree.
//!
//! Every field has a default, so an empty file is a valid configuration (it
//! runs the shipped rules against the embedded broker). An environment
//! variable `TRIPLINE__SECTION__FIELD` (double underscores between path
//! segments) overrides a field; its value is read as a TOML value when it is
//! one (`500`, `true`, `["a","b"]`) and as a string otherwise.
//!
//! Loading reports every problem at once: unknown fields (with the closest
//! known name), then every failed validation check.

use crate::rules::Severity;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

mod check;
mod env;

use env::{apply_override, unknown_field};

/// The prefix of environment overrides.
pub const ENV_PREFIX: &str = "TRIPLINE__";

/// The whole configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Brokers, topics and client settings.
    pub kafka: KafkaConfig,
    /// Where the rules are.
    pub rules: RulesConfig,
    /// Overrides of the rules' `stream` block.
    pub stream: StreamConfig,
    /// How often alerts and offsets commit.
    pub checkpoint: CheckpointConfig,
    /// Threads and buffers.
    pub runtime: RuntimeConfig,
    /// Where the local copy of the state is kept.
    pub state: StateConfig,
    /// The REST API.
    pub api: ApiSettings,
    /// Webhook endpoints that receive committed alerts.
    pub webhooks: WebhooksConfig,
    /// Logs, metrics and traces.
    pub telemetry: TelemetryConfig,
    /// Every event's features, to a topic, for retraining models.
    pub feature_log: FeatureLogConfig,
    /// Models' candidates judged in the service, from the feature log and
    /// the labels topic.
    pub trial: TrialConfig,
    /// Models retrained on a schedule.
    pub train: TrainConfig,
    /// The file this configuration was read from (none: defaults and the
    /// environment only).
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

/// Models the service retrains on a schedule (see `docs/models.md`,
/// Retraining): every `every`, `tripline train --from-topics --declare`
/// for each, on the feature log and the labels topic.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// The models (names the rules declare) retrained; empty (the
    /// default): none.
    pub models: Vec<String>,
    /// How often (wall clock); the first run is at the start.
    pub every: String,
    /// How long labels take to arrive (`train --delay`).
    pub delay: String,
    /// How much labelled history a version trains on (`train --train`).
    pub span: String,
    /// The span the recipe is evaluated on (`train --test`).
    pub test: String,
    /// The Python with the recipe's packages (`train --python`).
    pub python: String,
    /// Where new versions go; empty: beside the running version's file.
    pub out: String,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            models: Vec::new(),
            every: "7d".into(),
            delay: "7d".into(),
            span: "7d".into(),
            test: "7d".into(),
            python: "python3".into(),
            out: String::new(),
        }
    }
}

/// How the service judges a model's candidate (see `docs/models.md`,
/// Promotion): it reads the feature log's rows (both versions' scores) and
/// the labels topic, and judges each trial every `every`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct TrialConfig {
    /// The topic labels arrive on (JSON objects: `transaction_id`, `fraud`,
    /// `known_at`); empty (the default): the service judges no trial.
    pub labels_topic: String,
    /// The event field labels name transactions by; the feature log must
    /// copy it (`feature_log.fields`).
    pub id_field: String,
    /// How long labels take to arrive: younger transactions are not judged.
    pub delay: String,
    /// How much higher the candidate's average precision must be.
    pub margin: f64,
    /// Labelled frauds needed before a verdict.
    pub min_frauds: usize,
    /// Card precision counts the top k keys of each day.
    pub top_k: usize,
    /// `manual`: promotion by `POST /v1/models/{name}/promote`; `auto`: the
    /// service promotes a candidate as soon as its trial says so.
    pub promote: String,
    /// How often trials are judged.
    pub every: String,
    /// Rows kept per trial: past it, the oldest quarter goes.
    pub max_rows: usize,
}

impl Default for TrialConfig {
    fn default() -> Self {
        TrialConfig {
            labels_topic: String::new(),
            id_field: "TRANSACTION_ID".into(),
            delay: "7d".into(),
            margin: 0.01,
            min_frauds: 50,
            top_k: 100,
            promote: "manual".into(),
            every: "1m".into(),
            max_rows: 4_000_000,
        }
    }
}

/// The feature log (see `docs/models.md`, Retraining): every event's
/// features, as the rules computed them at its event time, written to a
/// topic in the same transactions as the alerts.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct FeatureLogConfig {
    /// The topic; empty (the default): no feature log.
    pub topic: String,
    /// Event fields each row copies beside the features (dotted paths):
    /// the id labels name, say. The stream's key and time fields are always
    /// copied, and so is every event field a model of the rules at start
    /// reads that is not a feature.
    pub fields: Vec<String>,
    /// How long the broker keeps rows (`retention.ms` of the topic when
    /// tripline creates it), e.g. `90d`: longer than the history a model
    /// trains on plus the label delay.
    pub retention: String,
}

impl FeatureLogConfig {
    /// `retention` in milliseconds (`retention.ms`); 90 days when it does
    /// not parse (the configuration check refuses that first).
    pub fn retention_ms(&self) -> i64 {
        crate::rules::parse_duration(&self.retention).unwrap_or(90 * 86_400_000)
    }
}

impl Default for FeatureLogConfig {
    fn default() -> Self {
        FeatureLogConfig {
            topic: String::new(),
            fields: Vec::new(),
            retention: "90d".into(),
        }
    }
}

/// Logs, metrics and traces (see `docs/operations.md`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct TelemetryConfig {
    /// `human` (one readable line per record) or `json` (one object per
    /// line, for log collectors).
    pub log_format: String,
    /// Serve the metrics in Prometheus text format at `/metrics` on the API.
    pub prometheus: bool,
    /// An OpenTelemetry collector's OTLP/HTTP base URL, e.g.
    /// `http://otel-collector:4318`: metrics go to `/v1/metrics`, spans to
    /// `/v1/traces`. Empty: no OTLP export (and no spans recorded).
    pub otlp_endpoint: String,
    /// How often metrics are pushed over OTLP.
    pub otlp_interval_ms: u64,
    /// The share of input events whose path to their alerts is traced
    /// (0 to 1), besides every event whose record carries a sampled W3C
    /// `traceparent` header. Only with `otlp_endpoint`.
    pub trace_sample_ratio: f64,
    /// The `service.name` resource attribute.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_format: "human".into(),
            prometheus: true,
            otlp_endpoint: String::new(),
            otlp_interval_ms: 10_000,
            trace_sample_ratio: 0.001,
            service_name: "tripline".into(),
        }
    }
}

/// Webhook delivery of committed alerts (see `docs/webhooks.md`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct WebhooksConfig {
    /// Where deliveries that were given up go: the alert unchanged, with the
    /// endpoint, the attempts and the last error in record headers.
    pub dead_letter_topic: String,
    /// How long the status of a finished delivery (delivered or dead) stays
    /// queryable, e.g. `7d`. Longer than every endpoint's `give_up_after`.
    pub status_retention: String,
    /// The endpoints; each alert goes to every endpoint that selects it.
    pub endpoints: Vec<WebhookEndpoint>,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            dead_letter_topic: "tripline.webhooks.dead-letter".into(),
            status_retention: "7d".into(),
            endpoints: Vec::new(),
        }
    }
}

/// One webhook endpoint.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct WebhookEndpoint {
    /// Names the endpoint in status, metrics, dead letters and rules'
    /// `notify`: letters, digits, `_` and `-`.
    pub name: String,
    /// `https://` (or `http://`) URL alerts are POSTed to.
    pub url: String,
    /// Rules whose alerts go here (a trailing `*` matches a prefix). Empty:
    /// every rule. Alerts of rules that name the endpoint in `notify` come
    /// here whatever `rules` and `min_severity` say.
    pub rules: Vec<String>,
    /// The lowest severity sent here.
    pub min_severity: Severity,
    /// The signing key: `whsec_` and base64 (as Standard Webhooks), or any
    /// other text, whose bytes are the key. Prefer `secret_env`.
    pub secret: Secret,
    /// The environment variable that holds the signing key instead.
    pub secret_env: String,
    /// How long one request may take, connecting included.
    pub timeout_ms: u64,
    /// Requests in flight at once (to different keys: one key's alerts go
    /// one after the other).
    pub max_concurrency: usize,
    /// Deliveries held in memory for this endpoint; the rest wait in the
    /// outbox on disk.
    pub queue: usize,
    /// Retries of failed deliveries.
    pub retry: RetryPolicy,
}

impl Default for WebhookEndpoint {
    fn default() -> Self {
        WebhookEndpoint {
            name: String::new(),
            url: String::new(),
            rules: Vec::new(),
            min_severity: Severity::Low,
            secret: Secret::default(),
            secret_env: String::new(),
            timeout_ms: 5_000,
            max_concurrency: 8,
            queue: 1_000,
            retry: RetryPolicy::default(),
        }
    }
}

/// Backoff between attempts: the `n`th retry waits a random time between
/// half and all of `min(initial_backoff_ms * 2^(n-1), max_backoff_ms)`, or
/// what the receiver's `Retry-After` asks on 429 and 503 (at most
/// `max_backoff_ms`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct RetryPolicy {
    /// The first retry's backoff.
    pub initial_backoff_ms: u64,
    /// The longest backoff.
    pub max_backoff_ms: u64,
    /// A delivery still failing this long after its first attempt goes to
    /// the dead-letter topic, e.g. `24h`.
    pub give_up_after: String,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_backoff_ms: 500,
            max_backoff_ms: 60_000,
            give_up_after: "24h".into(),
        }
    }
}

/// A secret: never printed (`Debug` shows whether it is set, not what it is).
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "(none)" } else { "(set)" })
    }
}

/// The REST API (scores, alerts, rules; see the README).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct ApiSettings {
    /// Address to listen on, e.g. `127.0.0.1:8080`. Empty: no API.
    pub listen: String,
    /// Bearer token rule changes need (and reads, unless `open_reads`).
    /// Empty: rule changes through the API are off. Set it from the
    /// environment (`TRIPLINE__API__TOKEN`) rather than the file.
    pub token: String,
    /// Reads need no token.
    pub open_reads: bool,
    /// Largest request body (bytes).
    pub max_body_bytes: usize,
    /// Recent alerts kept in memory for `/v1/alerts` and scores.
    pub alerts_kept: usize,
    /// A key's score sums its alerts' scores over this much event time
    /// before its latest alert, e.g. `24h`.
    pub score_window: String,
    /// The URL other instances send clients to for keys this instance owns
    /// (e.g. `http://10.0.0.7:8080`), as Kafka Streams' `application.server`.
    /// Empty: `http://` and the bound address (the host name instead of an
    /// unspecified address such as `0.0.0.0`).
    pub advertise: String,
    /// How long a client may take to send a request's head, and how long a
    /// kept-alive connection may stay idle (ms).
    pub header_timeout_ms: u64,
    /// Open connections at most; past it new ones are answered 503.
    pub max_connections: usize,
    /// Followers of `/v1/alerts/stream` at most; past it, 503.
    pub max_stream_subscribers: usize,
    /// Host names clients may reach the API by, besides IP addresses,
    /// `localhost` and this machine's name (and the host of `advertise`).
    /// Requests naming another host are refused: a web page whose domain
    /// resolves to this server (DNS rebinding) names its own.
    pub allowed_hosts: Vec<String>,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            listen: "127.0.0.1:8080".into(),
            token: String::new(),
            open_reads: true,
            max_body_bytes: 256 * 1024,
            alerts_kept: 100_000,
            score_window: "24h".into(),
            advertise: String::new(),
            header_timeout_ms: 10_000,
            max_connections: 256,
            max_stream_subscribers: 64,
            allowed_hosts: Vec::new(),
        }
    }
}

/// Kafka settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct KafkaConfig {
    /// Bootstrap servers (`host:port,...`). Empty: start the embedded broker.
    pub brokers: String,
    /// Consumer group.
    pub group_id: String,
    /// Identifies this process among the group's members; it names the
    /// transactional producer, so it must be stable across restarts (a restart
    /// then aborts the previous run's open transaction at once, see
    /// [`crate::adapters::kafka::identity`]) and unique among running
    /// processes. Default: the host name.
    pub instance_id: String,
    /// Static group membership (KIP-345): `instance_id` is also the
    /// consumer's `group.instance.id`, so an instance that restarts (after a
    /// crash or a deploy) takes its partitions back at once, without a
    /// rebalance; one that stops keeps them until its session times out.
    pub static_membership: bool,
    /// The topic events are read from; its records are keyed by the stream key.
    pub input_topic: String,
    /// How the input topic's producers choose a record's partition from its
    /// key: `consistent_random` (CRC-32, librdkafka's default) or
    /// `murmur2_random` (the Java client's default). The REST API uses it to
    /// find the instance that holds a key.
    pub input_partitioner: String,
    /// The topic alerts are written to (key: the rule's key).
    pub alerts_topic: String,
    /// The topic the alerts of rules in `mode shadow` are written to,
    /// beside the alerts topic (webhooks never read it).
    pub shadow_topic: String,
    /// The topic malformed and late events are written to, unchanged, with the
    /// reason in record headers.
    pub dead_letter_topic: String,
    /// The compacted topic that holds the lists' entries (one record per
    /// list and value, with its whole history), which every instance reads
    /// whole; the REST API writes it.
    pub lists_topic: String,
    /// Partitions for topics tripline creates (input topic on the embedded
    /// broker, alerts, dead letters). Existing topics are left as they are.
    pub partitions: i32,
    /// Consumer group session timeout.
    pub session_timeout_ms: u64,
    /// Producer transaction timeout: how long an unfinished transaction of a
    /// crashed process can hold back read_committed consumers.
    pub transaction_timeout_ms: u64,
    /// How long a member may go between polls (a checkpoint or a state
    /// restore counts against it) before it is taken out of the group. A
    /// rebalance may wait this long for a member that died without leaving.
    pub max_poll_interval_ms: u64,
    /// Extra librdkafka properties for every client (TLS, SASL, tuning), e.g.
    /// `"security.protocol" = "SASL_SSL"`. Numbers and booleans are taken
    /// as librdkafka reads them, as text (`"fetch.max.bytes" = 1048576`).
    #[serde(deserialize_with = "librdkafka_properties")]
    pub client: BTreeMap<String, String>,
}

/// librdkafka properties: every value as text, whether written as a
/// string, a number or a boolean (an environment override of a number
/// arrives as a number).
fn librdkafka_properties<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    BTreeMap::<String, toml::Value>::deserialize(d)?
        .into_iter()
        .map(|(k, v)| match v {
            toml::Value::String(s) => Ok((k, s)),
            toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => {
                Ok((k, v.to_string()))
            }
            other => Err(serde::de::Error::custom(format!(
                "`{k}`: a librdkafka property is a string, number or boolean, not {}",
                other.type_str()
            ))),
        })
        .collect()
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: String::new(),
            group_id: "tripline".into(),
            instance_id: String::new(),
            static_membership: false,
            input_topic: "transactions".into(),
            input_partitioner: "consistent_random".into(),
            alerts_topic: "tripline.alerts".into(),
            shadow_topic: "tripline.shadow-alerts".into(),
            dead_letter_topic: "tripline.dead-letter".into(),
            lists_topic: "tripline.lists".into(),
            partitions: 4,
            session_timeout_ms: 10_000,
            transaction_timeout_ms: 10_000,
            max_poll_interval_ms: 60_000,
            client: BTreeMap::new(),
        }
    }
}

/// Rule files.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct RulesConfig {
    /// Rule files or directories of `.tl` files.
    pub paths: Vec<PathBuf>,
    /// Most live partial matches per rule and key.
    pub max_partials_per_key: usize,
    /// Most alerts one rule raises for one key at one event or deadline;
    /// the rest are suppressed, counted and logged as a rule error.
    pub max_alerts_per_event: usize,
    /// Largest accepted record in bytes; larger ones are dead-lettered.
    /// Events are copied into outputs (forwarded, buffered in the state), so
    /// it must fit below the producer's `message.max.bytes` with room for
    /// headers (see [`crate::adapters::kafka::output_limit`]).
    pub max_record_bytes: usize,
    /// How often `serve` re-reads the rule files for changes (0: never).
    pub reload_interval_ms: u64,
    /// The directory rule text sent over the API may load models from
    /// (rule files on disk are trusted and may name any model file).
    pub models_dir: PathBuf,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            paths: vec![PathBuf::from("rules")],
            max_partials_per_key: 10_000,
            max_alerts_per_event: 100,
            max_record_bytes: 900 << 10,
            reload_interval_ms: 2000,
            models_dir: PathBuf::from("models"),
        }
    }
}

/// Overrides of the `stream` block of the rules (all optional).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct StreamConfig {
    /// Key field path.
    pub key: Option<String>,
    /// Event-time field path.
    pub time: Option<String>,
    /// `auto`, `epoch_ms` or `epoch_s`.
    pub time_format: Option<String>,
    /// Allowed lateness, e.g. `30s`.
    pub lateness: Option<String>,
}

/// Checkpoints: each one commits the alerts, dead letters and input offsets
/// of the interval in one Kafka transaction.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct CheckpointConfig {
    /// Milliseconds between commits (alert latency is at most about this
    /// plus the watermark delay).
    pub interval_ms: u64,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig { interval_ms: 200 }
    }
}

/// The local copy of the shards' state (see [`crate::adapters::local`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct StateConfig {
    /// The data directory (RocksDB), one per running process. Empty: no
    /// local copy; every shard that starts reads its whole changelog.
    pub dir: PathBuf,
    /// Memory for key state, in MiB, shared by the process's shards: past
    /// it, keys idle since their last stored checkpoint are evicted to the
    /// data directory and read back on their next event or deadline. 0: no
    /// limit. Needs `dir`.
    pub memory_budget_mb: usize,
    /// Where the tables' rows are held: `memory`, or `disk` (a RocksDB
    /// store beside `dir`, `<dir>.tables`, rebuilt from the tables' topics at start, its
    /// memory bounded by `tables_cache_mb`) for tables larger than memory.
    pub tables: String,
    /// The disk tables' block cache, in MiB.
    pub tables_cache_mb: usize,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: PathBuf::from("tripline-state"),
            memory_budget_mb: 1024,
            tables: "memory".into(),
            tables_cache_mb: 64,
        }
    }
}

/// Threads and buffers.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct RuntimeConfig {
    /// Threads running shard actors (0: one per core).
    pub shard_threads: usize,
    /// Records handed to a shard in one message.
    pub batch_size: usize,
    /// Batches a shard may have queued before its partition is paused.
    pub max_queued_batches: usize,
    /// How long a batch waits for room in a full shard before the shard's
    /// partition is paused instead. Pausing drops what the consumer fetched
    /// ahead, so riding out a short burst is cheaper.
    pub full_shard_wait_ms: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            shard_threads: 0,
            batch_size: 512,
            max_queued_batches: 16,
            full_shard_wait_ms: 10,
        }
    }
}

/// A configuration that could not be loaded: every problem found.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// Where the configuration came from.
    pub source_name: String,
    /// One line per problem.
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} problem(s) in the configuration {}:",
            self.problems.len(),
            self.source_name
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads `path` (absent: all defaults) and applies the environment's overrides.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (text, name) = match path {
            Some(p) => match std::fs::read_to_string(p) {
                Ok(t) => (t, p.display().to_string()),
                Err(e) => {
                    return Err(ConfigError {
                        source_name: p.display().to_string(),
                        problems: vec![format!("cannot read it: {e}")],
                    });
                }
            },
            None => (String::new(), "(defaults)".to_string()),
        };
        let mut config = Config::from_toml(&text, &name, std::env::vars())?;
        config.file = path.map(Path::to_path_buf);
        Ok(config)
    }

    /// Parses TOML text, applies `env` overrides and validates.
    pub fn from_toml(
        text: &str,
        source_name: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let fail = |problems: Vec<String>| ConfigError {
            source_name: source_name.to_string(),
            problems,
        };
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            fail(vec![e.to_string().trim_end().replace('\n', "\n    ")])
        })?;
        let mut problems = Vec::new();
        // Settings from the environment, by dotted path, with their variable:
        // their problems name the variable, not the file.
        let mut from_env: Vec<(String, String)> = Vec::new();
        for (name, value) in env {
            let Some(path) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            match apply_override(&mut table, path, &value) {
                Ok(()) => from_env.push((
                    path.split("__")
                        .collect::<Vec<_>>()
                        .join(".")
                        .to_ascii_lowercase(),
                    name,
                )),
                Err(p) => problems.push(format!("environment variable {name}: {p}")),
            }
        }
        let var_of = |path: &str| {
            from_env
                .iter()
                .find(|(p, _)| p == path)
                .map(|(_, v)| v.clone())
        };
        // A value of the wrong type stops serde at the first: each is
        // reported and taken out (its default applies), until none is left,
        // so that every problem is reported at once.
        let mut unknown = Vec::new();
        let config = loop {
            unknown.clear();
            let attempt: Result<Config, _> =
                serde_ignored::deserialize(toml::Value::Table(table.clone()), |path| {
                    unknown.push(path.to_string())
                });
            match attempt {
                Ok(c) => break Some(c),
                Err(e) => {
                    let (problem, path) = env::type_problem(&e.to_string());
                    match path {
                        Some(path) => {
                            let shown = env::value_at(&table, &path);
                            problems.push(match var_of(&path) {
                                Some(var) => format!(
                                    "environment variable {var}: `{path}` = {shown}: {problem}"
                                ),
                                None => format!("`{path}` = {shown}: {problem}"),
                            });
                            if !env::remove_at(&mut table, &path) || problems.len() > 100 {
                                break None;
                            }
                        }
                        None => {
                            problems.push(problem);
                            break None;
                        }
                    }
                }
            }
        };
        for path in unknown {
            problems.push(match var_of(&path) {
                Some(var) => env::unknown_variable(&var, &path),
                None => unknown_field(&path),
            });
        }
        let name = if from_env.is_empty() {
            source_name.to_string()
        } else {
            format!("{source_name} with the environment's {ENV_PREFIX} overrides")
        };
        let fail = |problems: Vec<String>| ConfigError {
            source_name: name.clone(),
            problems,
        };
        match config {
            Some(c) => {
                problems.extend(c.problems());
                if problems.is_empty() {
                    Ok(c)
                } else {
                    Err(fail(problems))
                }
            }
            None => Err(fail(problems)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml(
            text,
            "test.toml",
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.kafka.input_topic, "transactions");
        assert_eq!(c.checkpoint.interval_ms, 200);
        assert!(c.kafka.brokers.is_empty());
    }

    #[test]
    fn environment_overrides_file() {
        let c = load(
            "[kafka]\nbrokers = \"a:1\"\n[checkpoint]\ninterval_ms = 300",
            &[
                ("TRIPLINE__KAFKA__BROKERS", "b:2"),
                ("TRIPLINE__CHECKPOINT__INTERVAL_MS", "900"),
                ("TRIPLINE__KAFKA__CLIENT__security.protocol", "SSL"),
                (
                    "TRIPLINE__KAFKA__CLIENT__receive.message.max.bytes",
                    "200000000",
                ),
                ("TRIPLINE__KAFKA__CLIENT__socket.keepalive.enable", "true"),
                ("OTHER", "x"),
            ],
        )
        .unwrap();
        assert_eq!(c.kafka.brokers, "b:2");
        assert_eq!(c.checkpoint.interval_ms, 900);
        assert_eq!(c.kafka.client["security.protocol"], "SSL");
        assert_eq!(c.kafka.client["receive.message.max.bytes"], "200000000");
        assert_eq!(c.kafka.client["socket.keepalive.enable"], "true");
    }

    #[test]
    fn a_librdkafka_property_must_be_a_plain_value() {
        let e = load("[kafka.client]\n\"fetch.max.bytes\" = [1]", &[]).unwrap_err();
        assert!(
            e.to_string().contains(
                "`fetch.max.bytes`: a librdkafka property is a string, number or boolean, not array"
            ),
            "{e}"
        );
    }

    #[test]
    fn reports_every_problem_at_once() {
        let e = load(
            "[kafka]\nbrokrs = \"x\"\nalerts_topic = \"bad topic\"\npartitions = 0\n\
             [kafka.client]\n\"transactional.id\" = \"t\"\n[checkpoint]\ninterval_ms = 1",
            &[],
        )
        .unwrap_err();
        let text = e.to_string();
        assert_eq!(e.problems.len(), 5, "{text}");
        assert!(text.contains("unknown field `kafka.brokrs` (did you mean `brokers`?)"));
        assert!(text.contains("kafka.alerts_topic `bad topic`"));
        assert!(text.contains("kafka.partitions 0"));
        assert!(text.contains("\"transactional.id\" is set by tripline"));
        assert!(text.contains("checkpoint.interval_ms 1 must be"), "{text}");
    }

    /// The configuration the container image and the systemd unit ship.
    #[test]
    fn the_deployed_configuration_loads() {
        let c = load(include_str!("../../deploy/tripline.toml"), &[]).unwrap();
        assert_eq!(c.rules.paths, [PathBuf::from("/etc/tripline/rules")]);
        assert_eq!(c.state.dir, PathBuf::from("/var/lib/tripline/state"));
    }

    #[test]
    fn values_of_the_wrong_type_are_all_reported_in_the_configurations_terms() {
        let e = load(
            "[kafka]\npartitions = \"two\"\n[rules]\nreload_interval_ms = -5\n[api]\nlistn = \"x\"",
            &[],
        )
        .unwrap_err();
        assert_eq!(
            e.problems,
            [
                "`kafka.partitions` = \"two\": expected a whole number",
                "`rules.reload_interval_ms` = -5: expected a whole number, 0 or more",
                "unknown field `api.listn` (did you mean `listen`?)",
            ],
            "{e}"
        );
    }

    #[test]
    fn a_setting_from_the_environment_is_blamed_on_its_variable() {
        let e = load(
            "[kafka]\nbrokers = \"a:1\"",
            &[
                ("TRIPLINE__KAFKA__BROKER", "b:2"),
                ("TRIPLINE__CHECKPOINT__INTERVAL_MS", "soon"),
            ],
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("test.toml with the environment's TRIPLINE__ overrides"),
            "{text}"
        );
        assert!(
            text.contains(
                "environment variable TRIPLINE__KAFKA__BROKER: no setting `kafka.broker` \
                 (did you mean TRIPLINE__KAFKA__BROKERS?)"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "environment variable TRIPLINE__CHECKPOINT__INTERVAL_MS: \
                 `checkpoint.interval_ms` = \"soon\": expected a whole number"
            ),
            "{text}"
        );
    }

    #[test]
    fn syntax_and_type_errors_are_reported() {
        assert!(load("[kafka", &[]).is_err());
        let e = load("[checkpoint]\ninterval_ms = \"soon\"", &[]).unwrap_err();
        assert!(e.to_string().contains("interval_ms"), "{e}");
    }

    #[test]
    fn telemetry_settings_are_checked() {
        let ok = load(
            "[telemetry]\nlog_format = \"json\"\notlp_endpoint = \"http://collector:4318\"",
            &[],
        )
        .unwrap();
        assert!(ok.telemetry.prometheus);
        assert_eq!(ok.telemetry.otlp_interval_ms, 10_000);
        let bad = load(
            "[telemetry]\nlog_format = \"xml\"\notlp_endpoint = \"collector:4318\"\n\
             trace_sample_ratio = 1.5\notlp_interval_ms = 5\nservice_name = \" \"\nprometheus_port = 1",
            &[],
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "telemetry.log_format `xml` must be `human` or `json`",
            "telemetry.otlp_endpoint `collector:4318` must be an http:// or https:// URL",
            "telemetry.trace_sample_ratio 1.5 must be between 0 and 1",
            "telemetry.otlp_interval_ms 5",
            "telemetry.service_name must not be empty",
            "prometheus_port",
        ] {
            assert!(bad.contains(needle), "`{needle}` not in:\n{bad}");
        }
    }

    #[test]
    fn webhook_endpoints_are_checked() {
        let ok = load(
            "[[webhooks.endpoints]]\nname = \"ops\"\nurl = \"https://hooks.example.com/t\"\n\
             secret_env = \"OPS_SECRET\"\nrules = [\"velocity\"]\nmin_severity = \"high\"",
            &[],
        )
        .unwrap();
        let e = &ok.webhooks.endpoints[0];
        assert_eq!((e.timeout_ms, e.max_concurrency), (5000, 8));
        assert_eq!(format!("{:?}", e.secret), "(none)");
        let bad = load(
            "[[webhooks.endpoints]]\nname = \"a b\"\nurl = \"ftp://x\"\nmax_concurrency = 0\n\
             retry = { give_up_after = \"30d\" }\n\
             [[webhooks.endpoints]]\nname = \"c\"\nurl = \"http://x\"\nsecret = \"s\"\nsecret_env = \"S\"\n\
             [[webhooks.endpoints]]\nname = \"c\"\nurl = \"http://x\"\nsecret = \"s\"",
            &[("TRIPLINE__STATE__DIR", "\"\"")],
        )
        .unwrap_err();
        let text = bad.to_string();
        for needle in [
            "webhooks need state.dir",
            "name must be letters",
            "url `ftp://x` is not an http(s) URL",
            "webhook `a b`: set one of secret and secret_env",
            "max_concurrency 0",
            "give_up_after `30d` must be shorter than webhooks.status_retention `7d`",
            "webhook `c`: set one of secret and secret_env",
            "webhook `c`: two endpoints have this name",
        ] {
            assert!(text.contains(needle), "`{needle}` not in:\n{text}");
        }
        let secret = load(
            "[[webhooks.endpoints]]\nname = \"a\"\nurl = \"http://x\"\nsecret = \"hunter2hunter2hunter2\"",
            &[],
        )
        .unwrap();
        assert!(
            !format!("{secret:?}").contains("hunter2"),
            "secrets are not printed"
        );
    }

    #[test]
    fn trials_need_the_feature_log_the_api_and_sane_settings() {
        let e = load(
            "[api]\nlisten = \"\"\n[trial]\nlabels_topic = \"labels\"\ndelay = \"soon\"\n\
             every = \"0s\"\nmargin = 2.0\ntop_k = 0\npromote = \"always\"",
            &[],
        )
        .unwrap_err()
        .to_string();
        for problem in [
            "trial.labels_topic needs feature_log.topic",
            "trial.labels_topic needs api.listen",
            "trial.id_field `TRANSACTION_ID` must be among feature_log.fields",
            "trial.delay `soon` is not a duration",
            "trial.every `0s` is not a duration",
            "trial.margin 2 must be -1..=1",
            "trial.top_k must be at least 1",
            "trial.promote `always` must be `manual` or `auto`",
        ] {
            assert!(e.contains(problem), "{problem} not in {e}");
        }
        let c = load(
            "[feature_log]\ntopic = \"features\"\nfields = [\"TRANSACTION_ID\"]\n\
             [trial]\nlabels_topic = \"labels\"\npromote = \"auto\"",
            &[],
        )
        .unwrap();
        assert_eq!(
            (c.trial.delay.as_str(), c.trial.promote.as_str()),
            ("7d", "auto")
        );
    }

    #[test]
    fn shipped_example_is_valid() {
        let text = include_str!("../../tripline.toml");
        load(text, &[]).unwrap();
    }
}
