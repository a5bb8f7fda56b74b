//! Wiring of the service commands: `serve` runs tripline against Kafka until
//! it is told to stop; `demo` does the same against the embedded broker,
//! feeds it the bundled sample of card transactions and shows the alerts.

use anyhow::{Context, Result};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use std::io::BufRead;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tripline::adapters::api::alerts::AlertLog;
use tripline::adapters::api::rules::RuleStore;
use tripline::adapters::api::server::{self, ServerLimits};
use tripline::adapters::api::{
    ApiConfig, ApiState, Health, KeyLookup, KeyState, LookupError, Readiness, RulesStatus, router,
};
use tripline::adapters::kafka::alerts::{AlertsReader, StartAt};
use tripline::adapters::kafka::owners::{GroupOwners, Partitioner};
use tripline::adapters::kafka::{self, ServiceHandle, service};
use tripline::adapters::webhook::Webhooks;
use tripline::adapters::worker::Worker;
use tripline::config::Config;
use tripline::engine::{EngineOptions, RuleSet};
use tripline::files::AddPath;
use tripline::rules::StreamDef;
use tripline::telemetry;
use tripline::telemetry::events::{Observer, RulesReload, Telemetry};

/// How the running rules were read, to read them again the same way.
pub struct RuleSource {
    /// The stream definition from the configuration, if any.
    pub stream: Option<StreamDef>,
    /// Engine options from the configuration.
    pub options: EngineOptions,
}

/// Watches the rule files: re-reads and checks them every interval, and
/// hands a changed rule set that compiles to the service. Polling the
/// content rather than subscribing to file events also sees changes that
/// event watches miss (a Kubernetes ConfigMap swaps a symlink; network file
/// systems send no events), and the rules are small enough to re-read.
struct RuleWatch {
    paths: Vec<std::path::PathBuf>,
    source: RuleSource,
    every: Duration,
    next: std::time::Instant,
    /// The last rule set handed over (or running at start).
    seen: u64,
    /// The last errors reported, so each distinct failure is logged once.
    failed: Option<String>,
    /// The REST API, told of rule sets loaded from the files.
    api: Option<ApiState>,
}

impl RuleWatch {
    fn poll(&mut self, handle: &ServiceHandle) {
        #[allow(clippy::disallowed_methods)]
        let now = std::time::Instant::now();
        if self.every.is_zero() || now < self.next {
            return;
        }
        self.next = now + self.every;
        let mut c = tripline::files::compiler();
        if let Some(s) = &self.source.stream {
            c.stream(s.clone());
        }
        for p in &self.paths {
            c.add_path(p);
        }
        match c.compile() {
            Ok(def) => {
                self.failed = None;
                // A set the API accepted is already on its way to the
                // service: its files are not a change to hand over again.
                let accepted = self.api.as_ref().map(|a| a.rules().current().def().hash);
                let changed = def.hash != self.seen && Some(def.hash) != accepted;
                self.seen = def.hash;
                if !changed {
                    return;
                }
                tracing::info!(
                    rules = def.rules.len(),
                    "rule files changed and compile; swapping them in at the next checkpoint"
                );
                let rules = RuleSet::build(def, self.source.options);
                if let Some(api) = &self.api {
                    api.rules().set_current(rules.clone());
                }
                handle.reload(rules);
            }
            Err(e) => {
                let text = e.to_string();
                if self.failed.as_ref() != Some(&text) {
                    Telemetry.rules_reloaded(&RulesReload::Invalid { errors: &text });
                    self.failed = Some(text);
                }
            }
        }
    }
}

/// Starts judging model trials when `trial.labels_topic` is set: the
/// feature log and the labels read back into the API's trials, each
/// candidate promoted through the API's rule store when `trial.promote =
/// "auto"` and it wins.
fn start_trials(
    config: &Config,
    brokers: &str,
    state: &ApiState,
    rules: &RuleSet,
) -> Result<Option<Worker>> {
    let t = &config.trial;
    if t.labels_topic.is_empty() {
        return Ok(None);
    }
    let ms = |s: &str| tripline::rules::parse_duration(s).unwrap_or_default();
    let Some(stream) = rules.def().streams.first() else {
        return Ok(None);
    };
    let candidates = |rules: &RuleSet| -> Vec<(String, String)> {
        rules
            .def()
            .models
            .iter()
            .filter_map(|m| Some((m.name.clone(), m.candidate.as_ref()?.file.clone())))
            .collect()
    };
    let trials = Arc::new(tripline::adapters::trials::Trials::new(
        t,
        ms(&t.delay),
        (stream.key.to_string(), stream.time.to_string()),
        candidates(rules),
    ));
    state.set_trials(trials.clone());
    let (current, promoting) = (state.clone(), state.clone());
    let worker = kafka::trials::start(
        config,
        brokers,
        trials,
        Duration::from_millis(ms(&t.every).max(1) as u64),
        Box::new(move || candidates(&current.rules().current())),
        Box::new(move |model| {
            promoting
                .rules()
                .promote_model(model)
                .map(|w| w.file.display().to_string())
                .map_err(|e| e.to_string())
        }),
    )?;
    Ok(Some(worker))
}

/// `tripline serve`: runs until SIGINT or SIGTERM, then commits and leaves;
/// rule file changes are picked up while it runs.
pub fn serve(config: Config, rules: Arc<RuleSet>, source: RuleSource) -> Result<ExitCode> {
    let brokers = brokers_or_embedded(&config)?;
    let mut service = Service::start(&config, brokers, rules, source)?;
    service.run_until_signal(|| {})?;
    service.stop()?;
    Ok(ExitCode::SUCCESS)
}

/// The service with what runs beside it, started together and stopped in
/// one order: the REST API (with its reader of the alerts topic), the
/// webhooks, and the watch on the rule files.
struct Service {
    handle: ServiceHandle,
    watch: RuleWatch,
    api: Option<Api>,
    webhooks: Option<Webhooks>,
    /// Reads the lists topic into the lists the engines read.
    lists: Worker,
    /// Reads the tables' topics into the tables the engines read.
    tables: Option<Worker>,
    /// Retrains `train.models` on their schedule.
    training: Option<Worker>,
}

/// The REST API's server and the reader that feeds it committed alerts.
struct Api {
    server: Worker,
    tail: Worker,
    /// The reader of the feature log and labels that judges model trials.
    trials: Option<Worker>,
}

impl Service {
    /// Runs until SIGINT, SIGTERM or the service's end, polling the rule
    /// files and calling `on_tick` every 200 ms.
    fn run_until_signal(&mut self, on_tick: impl FnMut()) -> Result<()> {
        wait_for_signal(&self.handle, &mut self.watch, on_tick)
    }

    /// Whether the service has ended on its own (a fatal error).
    fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Stops every part and waits for them: the service first (its last
    /// checkpoint commits what it has processed, so the readers of the
    /// alerts topic can still see those alerts), then the API and its feed,
    /// then the webhooks (what they have not delivered stays in their
    /// outbox for the next start). Returns how the service ended.
    fn stop(self) -> Result<()> {
        // A training under way is killed: the next start runs it again.
        if let Some(t) = &self.training {
            t.stop();
        }
        self.handle.stop();
        let ended = self.handle.join();
        if let Some(api) = self.api {
            api.server.stop();
            api.tail.stop();
            api.server.join().ok();
            api.tail.join().ok();
            if let Some(t) = api.trials {
                t.stop();
                t.join().ok();
            }
        }
        if let Some(w) = self.webhooks {
            w.stop();
        }
        self.lists.stop();
        self.lists.join().ok();
        if let Some(t) = self.tables {
            t.stop();
            t.join().ok();
        }
        if let Some(t) = self.training {
            t.join().ok();
        }
        Ok(ended?)
    }
    /// Starts the parts, each after what it needs.
    fn start(
        config: &Config,
        brokers: String,
        rules: Arc<RuleSet>,
        source: RuleSource,
    ) -> Result<Service> {
        #[allow(clippy::disallowed_methods)]
        let start = std::time::Instant::now();
        let mut watch = RuleWatch {
            paths: config.rules.paths.clone(),
            every: Duration::from_millis(config.rules.reload_interval_ms),
            next: start + Duration::from_millis(config.rules.reload_interval_ms),
            seen: rules.def().hash,
            failed: None,
            api: None,
            source,
        };
        // Bound before the service starts: its group membership carries the
        // API's address (for the other instances to send clients here).
        let mut config = config.clone();
        let listener = bind_api(&mut config)?;
        check_notify(&config, &rules)?;
        // Before the service: a webhook that cannot start (a missing secret)
        // stops `serve` before it consumes anything.
        let webhooks = Webhooks::start(&config, &brokers)?;
        // Before the service: its first events see the lists as the topic has them.
        let lists = Arc::new(tripline::lists::Lists::new());
        let lists_reader = kafka::lists::follow(&config, &brokers, lists.clone())?;
        let sizes = lists.clone();
        telemetry::observe_lists(move || {
            let now = telemetry::now_ms();
            let names = sizes.names();
            names
                .into_iter()
                .map(|n| {
                    let size = sizes.size_at(&n, now) as u64;
                    (n, size)
                })
                .collect()
        });
        // Before the service too: its first events see every table's rows.
        let tables = Arc::new(match config.state.tables.as_str() {
            "disk" => {
                tripline::tables::Tables::on(tripline::adapters::table_store::DiskRows::open(
                    &tripline::adapters::table_store::dir_beside(&config.state.dir),
                    config.state.tables_cache_mb << 20,
                    &kafka::tables::store_identity(&brokers, &rules.def().tables),
                )?)
            }
            _ => tripline::tables::Tables::new(),
        });
        let tables_reader =
            kafka::tables::follow(&config, &brokers, &rules.def().tables, tables.clone())?;
        let names: Vec<String> = rules
            .def()
            .tables
            .iter()
            .map(|d| d.spec.name.clone())
            .collect();
        let sizes = tables.clone();
        telemetry::observe_tables(move || {
            names
                .iter()
                .map(|n| (n.clone(), sizes.len(n) as u64))
                .collect()
        });
        let handle = service::start(
            config.clone(),
            brokers.clone(),
            rules.clone(),
            lists.clone(),
            tables.clone(),
        )?;
        let progress = handle.progress().clone();
        telemetry::observe_service(move || progress.figures());
        if let Some(w) = &webhooks {
            let status = w.status();
            telemetry::observe_webhooks(move || {
                status
                    .endpoints()
                    .into_iter()
                    .map(|e| telemetry::WebhookFigures {
                        endpoint: e.name,
                        queued: e.queued,
                        retrying: e.retrying,
                        in_flight: e.in_flight,
                        delivered: e.delivered,
                        failed_attempts: e.failed_attempts,
                        dead: e.dead,
                    })
                    .collect()
            });
        }
        let mut api = None;
        if let Some(listener) = listener {
            // Alerts as the alerts topic has them (read_committed): those of
            // every instance, and those from before a restart.
            let log = AlertLog::new(config.api.alerts_kept);
            let feed = log.clone();
            let tail = kafka::alerts::tail(
                &config,
                &brokers,
                config.api.alerts_kept,
                Arc::new(move |json: &[u8]| feed.push_published(json)),
            )?;
            let rules_now = rules.clone();
            let (state, server) = start_api(
                &config,
                &brokers,
                &handle,
                rules,
                &watch.source,
                log,
                listener,
                |state| {
                    let writer =
                        kafka::lists::KafkaListWriter::new(&config, &brokers, lists.clone())?;
                    state.set_lists(lists, Arc::new(writer));
                    state.set_tables(tables);
                    state.set_history(Arc::new(kafka::history::KafkaHistory {
                        config: config.kafka.clone(),
                        brokers: brokers.clone(),
                    }));
                    if let Some(w) = &webhooks {
                        state.set_webhooks(w.status());
                    }
                    Ok(())
                },
            )?;
            let trials = start_trials(&config, &brokers, &state, &rules_now)?;
            watch.api = Some(state);
            api = Some(Api {
                server,
                tail,
                trials,
            });
        }
        let training = crate::retrain::start(&config)?;
        Ok(Service {
            handle,
            watch,
            api,
            webhooks,
            lists: lists_reader,
            tables: tables_reader,
            training,
        })
    }
}

/// Every endpoint a rule names in `notify` must be configured (unless
/// webhooks are off altogether).
fn check_notify(config: &Config, rules: &RuleSet) -> Result<()> {
    let endpoints = &config.webhooks.endpoints;
    let mut unknown = Vec::new();
    for r in &rules.def().rules {
        for name in r.notify.iter() {
            if !endpoints.iter().any(|e| e.name == **name) {
                unknown.push(format!("rule `{}` notifies `{name}`", r.name));
            }
        }
    }
    if unknown.is_empty() {
        return Ok(());
    }
    if endpoints.is_empty() {
        tracing::warn!(
            "no webhook endpoints are configured, so `notify` goes nowhere: {}",
            unknown.join(", ")
        );
        return Ok(());
    }
    let names: Vec<&str> = endpoints.iter().map(|e| e.name.as_str()).collect();
    anyhow::bail!(
        "{}: not in webhooks.endpoints (configured: {})",
        unknown.join(", "),
        names.join(", ")
    )
}

/// Binds `api.listen` (none when empty) and fills in `api.advertise` from
/// the bound address when it is not set.
fn bind_api(config: &mut Config) -> Result<Option<std::net::TcpListener>> {
    let a = &mut config.api;
    if a.listen.is_empty() {
        return Ok(None);
    }
    let listener =
        std::net::TcpListener::bind(&a.listen).map_err(|e| cannot_listen(&a.listen, e))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    if a.advertise.is_empty() {
        a.advertise = if addr.ip().is_unspecified() {
            format!("http://{}:{}", service::host_name(), addr.port())
        } else {
            format!("http://{addr}")
        };
    }
    Ok(Some(listener))
}

/// Why the API cannot listen on `listen`, and what to do.
fn cannot_listen(listen: &str, e: std::io::Error) -> anyhow::Error {
    let what = match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            "the address is in use (another tripline, or another program, listens there)"
        }
        std::io::ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need privileges)"
        }
        _ => "",
    };
    let what = if what.is_empty() {
        e.to_string()
    } else {
        what.to_string()
    };
    anyhow::anyhow!(
        "api.listen: cannot listen on {listen}: {what}; stop what holds it, or set `api.listen` \
         (or TRIPLINE__API__LISTEN) to another address, e.g. 127.0.0.1:0 for any free port"
    )
}

/// Key state from the service's shards, or the instance that has it.
struct ShardKeys {
    shards: Arc<service::ShardDirectory>,
    owners: Arc<GroupOwners>,
    partitioner: Partitioner,
    input_topic: String,
    /// This instance's advertised API.
    me: String,
}

impl KeyLookup for ShardKeys {
    fn lookup(
        &self,
        key: String,
    ) -> futures::future::BoxFuture<'static, Result<KeyState, LookupError>> {
        let partition = self
            .partitioner
            .partition(key.as_bytes(), self.shards.input_partitions());
        let shards = self.shards.clone();
        let owners = self.owners.clone();
        let at = (self.input_topic.clone(), partition);
        let me = self.me.clone();
        Box::pin(async move {
            if shards.holds_input(partition) {
                return shards
                    .key_view(key)
                    .await
                    .map(KeyState::Here)
                    .map_err(LookupError::Shard);
            }
            let map = tokio::task::spawn_blocking(move || owners.owners(Duration::from_secs(5)))
                .await
                .map_err(|e| LookupError::Owners(e.to_string()))?
                .map_err(LookupError::Owners)?;
            Ok(match map.get(&at) {
                Some(url) if *url != me => KeyState::Elsewhere(url.clone()),
                // Assigned here but not started yet, or not assigned.
                _ => KeyState::Unassigned,
            })
        })
    }
}

struct ServiceHealth(Arc<kafka::service::Progress>);

impl Health for ServiceHealth {
    fn readiness(&self) -> Readiness {
        let (ready, detail) = self.0.readiness();
        Readiness { ready, detail }
    }

    fn figures(&self) -> Option<telemetry::ServiceFigures> {
        Some(self.0.figures())
    }

    fn rules_status(&self) -> Option<RulesStatus> {
        let refused = self
            .0
            .refused_rules
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        Some(RulesStatus {
            running: self.0.rules_hash.load(Ordering::SeqCst),
            refused,
        })
    }
}

/// The host names the API answers to: the configured ones and the host of
/// the advertised URL.
fn allowed_hosts(a: &tripline::config::ApiSettings) -> Vec<String> {
    let mut hosts = a.allowed_hosts.clone();
    let advertised = a
        .advertise
        .split_once("://")
        .map_or(&*a.advertise, |(_, rest)| rest);
    let authority = advertised.split('/').next().unwrap_or_default();
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    if !host.is_empty() {
        hosts.push(host.to_string());
    }
    hosts
}

/// Starts the REST API on its own thread, on the bound `listener`; it
/// serves until the returned worker is stopped.
/// Builds the API's state, lets `prepare` give it what the handlers read
/// (lists, tables, history, webhooks), then serves: a request that arrives
/// as soon as the API listens finds them there, not a 404.
#[allow(clippy::too_many_arguments)]
fn start_api(
    config: &Config,
    brokers: &str,
    handle: &ServiceHandle,
    rules: Arc<RuleSet>,
    source: &RuleSource,
    log: Arc<AlertLog>,
    listener: std::net::TcpListener,
    prepare: impl FnOnce(&ApiState) -> Result<()>,
) -> Result<(ApiState, Worker)> {
    let a = &config.api;
    let addr = listener.local_addr()?;
    let store = RuleStore::new(
        config.rules.paths.clone(),
        source.stream.clone(),
        source.options,
        rules,
    )
    .on_change(Box::new(handle.reloader()))
    .models_dir(config.rules.models_dir.clone());
    let api_config = ApiConfig {
        token: (!a.token.is_empty()).then(|| a.token.clone()),
        open_reads: a.open_reads,
        max_body_bytes: a.max_body_bytes,
        max_page: 1000,
        score_window_ms: tripline::rules::parse_duration(&a.score_window).unwrap_or(86_400_000),
        max_stream_subscribers: a.max_stream_subscribers,
        allowed_hosts: allowed_hosts(a),
    };
    let limits = ServerLimits {
        header_timeout: Duration::from_millis(a.header_timeout_ms),
        max_connections: a.max_connections,
    };
    let state = ApiState::new(
        api_config,
        store,
        log,
        Arc::new(ShardKeys {
            shards: handle.directory().clone(),
            owners: Arc::new(GroupOwners::new(
                &kafka::client_config(&config.kafka, brokers),
                &config.kafka.group_id,
                Duration::from_secs(2),
            )?),
            partitioner: Partitioner::from_name(&config.kafka.input_partitioner)
                .unwrap_or(Partitioner::Consistent),
            input_topic: config.kafka.input_topic.clone(),
            me: a.advertise.clone(),
        }),
        Arc::new(ServiceHealth(handle.progress().clone())),
    );
    prepare(&state)?;
    let app = router(state.clone());
    let server = Worker::spawn("tripline-api", move |stop| {
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!("REST API runtime: {e}");
                return Ok(());
            }
        };
        rt.block_on(async move {
            let l = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => return tracing::error!("REST API listener: {e}"),
            };
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tokio::select! {
                r = server::serve(l, app, limits) => {
                    if let Err(e) = r {
                        tracing::error!("REST API stopped: {e}");
                    }
                }
                _ = async { while !stop.requested() { tick.tick().await; } } => {}
            }
        });
        // Requests still on the way end with the runtime.
        rt.shutdown_timeout(Duration::from_secs(1));
        Ok(())
    })?;
    tracing::info!(%addr, advertised = %a.advertise, "REST API listening");
    eprintln!("REST API listening on http://{addr}");
    Ok((state, server))
}

/// The configured brokers, or the embedded broker with the input topic.
fn brokers_or_embedded(config: &Config) -> Result<String> {
    if !config.kafka.brokers.is_empty() {
        reachable(config)?;
        return Ok(config.kafka.brokers.clone());
    }
    let brokers = embedded(config)?;
    eprintln!(
        "no kafka.brokers configured: started the embedded broker on {brokers}; \
         produce events to topic `{}`",
        config.kafka.input_topic
    );
    Ok(brokers)
}

/// A topic `tripline topics` makes: its name, what it is, its partitions
/// when created and its configuration.
struct TopicPlan {
    name: String,
    what: String,
    partitions: i32,
    configs: Vec<(&'static str, String)>,
}

impl TopicPlan {
    fn new(name: &str, what: impl Into<String>, partitions: i32) -> Self {
        TopicPlan {
            name: name.to_string(),
            what: what.into(),
            partitions,
            configs: Vec::new(),
        }
    }

    fn compacted(self) -> Self {
        (kafka::COMPACTED.iter()).fold(self, |p, (k, v)| p.with(k, v.to_string()))
    }

    fn with(mut self, key: &'static str, value: String) -> Self {
        self.configs.push((key, value));
        self
    }
}

/// `tripline topics`: creates the topics the service reads and writes that
/// do not exist, and lists each with its partitions. (The internal and
/// changelog topics, whose partitions follow the inputs', are the
/// service's to create.)
pub fn create_topics(config: &Config, rules: &RuleSet) -> Result<ExitCode> {
    let k = &config.kafka;
    if k.brokers.is_empty() {
        anyhow::bail!(
            "kafka.brokers is empty: set it (or TRIPLINE__KAFKA__BROKERS) to the cluster to \
             create the topics on (the embedded broker makes its own)"
        );
    }
    reachable(config)?;
    let mut plan: Vec<TopicPlan> = Vec::new();
    let inputs = tripline::coordinator::Topology::input_topics(rules, &k.input_topic);
    for (topic, stream) in inputs.iter().zip(&rules.def().streams) {
        let what = format!("input of stream `{}`", stream.name);
        plan.push(TopicPlan::new(topic, what, k.partitions));
    }
    plan.push(TopicPlan::new(&k.alerts_topic, "alerts", k.partitions));
    plan.push(TopicPlan::new(
        &k.shadow_topic,
        "shadow rules' alerts",
        k.partitions,
    ));
    plan.push(TopicPlan::new(
        &k.dead_letter_topic,
        "dead letters",
        k.partitions,
    ));
    plan.push(TopicPlan::new(&k.lists_topic, "lists (compacted)", 1).compacted());
    for t in &rules.def().tables {
        let what = format!("table `{}` (compacted)", t.spec.name);
        plan.push(TopicPlan::new(&t.topic, what, 1).compacted());
    }
    let f = &config.feature_log;
    if !f.topic.is_empty() {
        let retention = f.retention_ms();
        let what = format!("feature log (retention {})", f.retention);
        plan.push(
            TopicPlan::new(&f.topic, what, k.partitions)
                .with("retention.ms", retention.to_string()),
        );
    }
    if !config.trial.labels_topic.is_empty() {
        plan.push(TopicPlan::new(
            &config.trial.labels_topic,
            "labels",
            k.partitions,
        ));
    }
    if !config.webhooks.endpoints.is_empty() {
        let topic = &config.webhooks.dead_letter_topic;
        plan.push(TopicPlan::new(
            topic,
            "webhooks' dead letters",
            k.partitions,
        ));
    }
    let before = kafka::Topics::fetch(k, &k.brokers)?;
    let configs: Vec<Vec<(&str, &str)>> = (plan.iter())
        .map(|p| p.configs.iter().map(|(k, v)| (*k, v.as_str())).collect())
        .collect();
    let specs: Vec<kafka::TopicSpec<'_>> = (plan.iter().zip(&configs))
        .map(|(p, c)| kafka::TopicSpec::new(&p.name, p.partitions).with(c))
        .collect();
    kafka::create_missing(k, &k.brokers, &before, &specs)?;
    let after = kafka::Topics::fetch(k, &k.brokers)?;
    for p in &plan {
        let state = match (before.partitions(&p.name), after.partitions(&p.name)) {
            (Some(n), _) => format!("exists, {n} partitions"),
            (None, Some(n)) => format!("created, {n} partitions"),
            (None, None) => "not created".to_string(),
        };
        println!("{:<32} {:<32} {state}", p.name, p.what);
    }
    Ok(ExitCode::SUCCESS)
}

/// Fails with what to check when no broker of `kafka.brokers` answers,
/// before anything else (webhooks, lists, tables) tries and fails in its
/// own terms.
fn reachable(config: &Config) -> Result<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    const WAIT: Duration = Duration::from_secs(10);
    let brokers = &config.kafka.brokers;
    let client: BaseConsumer = kafka::client_config(&config.kafka, brokers)
        .create()
        .with_context(|| format!("kafka.brokers `{brokers}`"))?;
    if let Err(e) = client.fetch_metadata(None, WAIT) {
        let why = e
            .rdkafka_error_code()
            .map_or_else(|| e.to_string(), |c| c.to_string());
        let from = match std::env::var("TRIPLINE__KAFKA__BROKERS") {
            Ok(_) => "TRIPLINE__KAFKA__BROKERS",
            Err(_) => "`kafka.brokers`",
        };
        anyhow::bail!(
            "no Kafka broker answered at `{brokers}` ({from}) within {} s: {why}. \
             Check that a broker runs there and that the address and port are right \
             (and `kafka.client` security settings, if the cluster needs them); \
             leave `kafka.brokers` empty to run on the embedded broker",
            WAIT.as_secs()
        );
    }
    Ok(())
}

#[cfg(feature = "embedded-broker")]
fn embedded(config: &Config) -> Result<String> {
    let addr = kafka::broker::start("127.0.0.1:0").context("starting the embedded broker")?;
    let brokers = addr.to_string();
    kafka::ensure_topics(
        &config.kafka,
        &brokers,
        &[&config.kafka.input_topic],
        config.kafka.partitions,
    )?;
    Ok(brokers)
}

#[cfg(not(feature = "embedded-broker"))]
fn embedded(_: &Config) -> Result<String> {
    anyhow::bail!(
        "no kafka.brokers configured, and this build has no embedded broker (feature `embedded-broker`)"
    )
}

/// Runs until SIGINT, SIGTERM or the service's end, polling the rule files
/// and calling `on_tick` every 200 ms.
fn wait_for_signal(
    handle: &ServiceHandle,
    watch: &mut RuleWatch,
    mut on_tick: impl FnMut(),
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = term.recv() => return Ok(()),
                _ = tick.tick() => {
                    if handle.is_finished() {
                        return Ok(());
                    }
                    watch.poll(handle);
                    on_tick();
                }
            }
        }
    })
}

/// The bundled sample (`examples/`; `scripts/gen-reference-data` derives
/// all but the transactions from them): the file `demo` feeds a stream,
/// table or list of that name when it is given none.
const SAMPLE_STREAMS: &[(&str, &str)] = &[
    ("transactions", "examples/handbook-sample.jsonl.gz"),
    ("logins", "examples/handbook-logins.jsonl.gz"),
];
const SAMPLE_TABLES: &[(&str, &str)] = &[("profiles", "examples/handbook-profiles.jsonl")];
const SAMPLE_LISTS: &[(&str, &str)] = &[(
    "blocked_terminals",
    "examples/handbook-blocked-terminals.csv",
)];

/// What `demo` feeds the service, as `replay` takes it: `FILE` or
/// `STREAM=FILE` per stream, `NAME=FILE` per table and per list.
#[derive(Debug, Default)]
pub struct DemoInputs {
    /// Events of each stream.
    pub events: Vec<String>,
    /// Rows of each table.
    pub tables: Vec<String>,
    /// Changes of each list.
    pub lists: Vec<String>,
}

impl DemoInputs {
    /// These inputs, with the bundled sample's file added for what the
    /// rules declare and nothing was given for: every stream when no
    /// events were given (the main stream reads the card transactions
    /// whatever its name), each table and list not named.
    pub fn with_sample(mut self, rules: &RuleSet) -> DemoInputs {
        let sample = |of: &[(&str, &'static str)], name: &str| {
            of.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
        };
        let named = |given: &[String], name: &str| {
            given
                .iter()
                .any(|g| g.split_once('=').is_some_and(|(n, _)| n == name))
        };
        let def = rules.def();
        if self.events.is_empty() {
            for (i, s) in def.streams.iter().enumerate() {
                match (i, sample(SAMPLE_STREAMS, &s.name)) {
                    (0, file) => self.events.push(file.unwrap_or(SAMPLE_STREAMS[0].1).into()),
                    (_, Some(file)) => self.events.push(format!("{}={file}", s.name)),
                    (_, None) => {}
                }
            }
        }
        for t in &def.tables {
            let name = &t.spec.name;
            if let Some(file) = sample(SAMPLE_TABLES, name).filter(|_| !named(&self.tables, name)) {
                self.tables.push(format!("{name}={file}"));
            }
        }
        for name in &def.lists {
            if let Some(file) = sample(SAMPLE_LISTS, name).filter(|_| !named(&self.lists, name)) {
                self.lists.push(format!("{name}={file}"));
            }
        }
        self
    }
}

/// `tripline demo`: the embedded broker, the bundled sample, live alerts.
pub fn demo(
    mut config: Config,
    rules: Arc<RuleSet>,
    source: RuleSource,
    inputs: DemoInputs,
    keep_running: bool,
) -> Result<ExitCode> {
    config.kafka.brokers.clear();
    // The embedded broker keeps nothing once the demo ends; neither does
    // the demo's local state.
    let state_dir = std::env::temp_dir().join(format!("tripline-demo-{}", std::process::id()));
    config.state.dir = state_dir.clone();
    let _cleanup = RemoveOnDrop(state_dir);
    let inputs = inputs.with_sample(&rules);
    // Every file is read before anything is produced: a wrong name or a
    // bad row stops the demo before it starts the broker.
    let (lists, _) = tripline::list_files::load_list_files(&inputs.lists, &rules)?;
    tripline::table_files::load_table_files(&inputs.tables, &rules)?;
    let streams = crate::app::stream_inputs(&rules, &inputs.events)?;
    // The API's address is tried before the sample is produced: taken, the
    // demo would stop only once the whole sample was in.
    if !config.api.listen.is_empty() {
        drop(
            std::net::TcpListener::bind(&config.api.listen)
                .map_err(|e| cannot_listen(&config.api.listen, e))?,
        );
    }
    let brokers = brokers_or_embedded(&config)?;
    let produced = produce_events(&config, &brokers, &rules, &streams)?;
    produce_tables(&config, &brokers, &rules, &inputs.tables)?;
    write_lists(&config, &brokers, &rules, &lists)?;
    let k = &config.kafka;
    kafka::ensure_topics(
        k,
        &brokers,
        &[&k.alerts_topic, &k.dead_letter_topic],
        k.partitions,
    )?;
    let reader = AlertsReader::assigned(&config, &brokers, "demo-reader", StartAt::Beginning)?;
    let mut service = Service::start(&config, brokers.clone(), rules.clone(), source)?;
    let progress = service.handle.progress().clone();
    // The sample's alerts are gathered while it is processed and printed
    // in event-time order (they commit in partition order); alerts of
    // events produced later (`--keep-running`) print as they commit.
    let mut seen = DemoAlerts::default();
    loop {
        seen.read(&reader, Duration::from_millis(100));
        if service.is_finished() || progress.caught_up(produced) {
            break;
        }
    }
    let api = (!config.api.listen.is_empty()).then(|| format!("http://{}", config.api.listen));
    if keep_running && !service.is_finished() {
        seen.read(&reader, Duration::from_secs(1));
        seen.print_pending();
        if let Some(api) = &api {
            eprintln!("demo: the dashboard is at {api}/dashboard, the API at {api}/v1/alerts");
        }
        // Scripts wait for this line: the sample is consumed and committed.
        eprintln!("serving on {brokers} until Ctrl-C");
        service.run_until_signal(|| {
            seen.read(&reader, Duration::ZERO);
            seen.print_pending();
        })?;
    }
    service.stop()?;
    // Alerts committed by the last checkpoint may still be on their way:
    // read until nothing more arrives for a second (the service has
    // stopped, so everything committed is readable by then).
    while seen.read(&reader, Duration::from_secs(1)) > 0 {}
    seen.print_pending();
    seen.print_summary(&rules);
    eprintln!(
        "demo: {} events committed, {} alerts, {} dead-lettered, in {} checkpoints (Kafka \
         transactions); {} alerts read back from `{}` (read_committed)",
        progress.records.load(Ordering::Relaxed),
        progress.alerts.load(Ordering::Relaxed),
        progress.dead_letters.load(Ordering::Relaxed),
        progress.commits.load(Ordering::Relaxed),
        seen.all.len(),
        config.kafka.alerts_topic,
    );
    if !keep_running {
        eprintln!(
            "
next:
  tripline demo --keep-running            the same, then keep serving: the dashboard at {}/dashboard
  tripline replay --rules rules --events examples/handbook-sample.jsonl.gz
                                          the same rules over the same file, no broker: the same alerts
  tripline backtest --rules rules --events examples/handbook-sample.jsonl.gz
                                          precision and recall per rule against the sample's labels
  docs/rules.md                           write a rule; docs/service.md: run on your Kafka",
            api.as_deref().unwrap_or("http://127.0.0.1:8080")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A producer for the demo's inputs.
fn demo_producer(
    config: &Config,
    brokers: &str,
) -> Result<ThreadedProducer<DefaultProducerContext>> {
    Ok(kafka::client_config(&config.kafka, brokers)
        .set("linger.ms", "5")
        .create()?)
}

/// Produces each stream's file to the stream's topic, each line keyed by
/// the stream's key; returns how many records.
fn produce_events(
    config: &Config,
    brokers: &str,
    rules: &RuleSet,
    streams: &[(u16, String)],
) -> Result<u64> {
    let k = &config.kafka;
    let topics = tripline::coordinator::Topology::input_topics(rules, &k.input_topic);
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    kafka::ensure_topics(k, brokers, &refs, k.partitions)?;
    let producer = demo_producer(config, brokers)?;
    let mut total = 0u64;
    for (stream, path) in streams {
        let (topic, decoder) = (&topics[*stream as usize], rules.decoder_for(*stream));
        let key_slot = rules.def().stream_slots[*stream as usize].key;
        let input = crate::app::open_events(path)?;
        let mut n = 0u64;
        for (i, line) in input.lines().enumerate() {
            let line = line.with_context(|| format!("reading {path}"))?;
            if line.trim().is_empty() {
                continue;
            }
            // Keyed by the stream key so each key's events stay in one
            // partition; lines that cannot be decoded go unkeyed (tripline
            // dead-letters them).
            let key = decoder
                .and_then(|d| d.decode(line.as_bytes(), i as u64).ok())
                .map(|e| tripline::runtime::value_text(e.field(key_slot)));
            let mut record = BaseRecord::<str, str>::to(topic).payload(&line);
            if let Some(k) = &key {
                record = record.key(k.as_str());
            }
            kafka::send_waiting(&producer, record)
                .with_context(|| format!("producing to `{topic}`"))?;
            n += 1;
        }
        eprintln!("produced {n} events from {path} to `{topic}`");
        total += n;
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(total)
}

/// Produces each table file's rows to the table's topic, keyed by the
/// row's key (the service reads the topics whole before it starts).
fn produce_tables(config: &Config, brokers: &str, rules: &RuleSet, specs: &[String]) -> Result<()> {
    let k = &config.kafka;
    let producer = demo_producer(config, brokers)?;
    for spec in specs {
        let Some((name, file)) = spec.split_once('=') else {
            continue;
        };
        let Some(decl) = rules.def().tables.iter().find(|d| d.spec.name == name) else {
            continue;
        };
        kafka::ensure_topics_with(k, brokers, &[&decl.topic], 1, kafka::COMPACTED)?;
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
        let mut n = 0u64;
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let row: tripline::tables::Row =
                serde_json::from_str(line).with_context(|| format!("{file} line {}", i + 1))?;
            let (key, _) = tripline::tables::Tables::key_and_time(&decl.spec, &row)
                .with_context(|| format!("{file} line {}", i + 1))?;
            let record = BaseRecord::<str, str>::to(&decl.topic)
                .key(&key)
                .payload(line);
            kafka::send_waiting(&producer, record)
                .with_context(|| format!("producing to `{}`", decl.topic))?;
            n += 1;
        }
        eprintln!(
            "produced {n} rows of table `{name}` from {file} to `{}`",
            decl.topic
        );
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(())
}

/// Writes the lists' entries to the lists topic, as the API would.
fn write_lists(
    config: &Config,
    brokers: &str,
    rules: &RuleSet,
    lists: &Arc<tripline::lists::Lists>,
) -> Result<()> {
    use tripline::adapters::api::ListWriter;
    let entries: Vec<_> = rules
        .def()
        .lists
        .iter()
        .flat_map(|l| lists.entries(l))
        .collect();
    if entries.is_empty() {
        return Ok(());
    }
    let n = entries.len();
    let k = &config.kafka;
    kafka::ensure_topics_with(k, brokers, &[&k.lists_topic], 1, kafka::COMPACTED)?;
    let writer = kafka::lists::KafkaListWriter::new(config, brokers, Arc::new(Default::default()))?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(writer.write(entries))
        .map_err(|e| anyhow::anyhow!("writing to `{}`: {e}", k.lists_topic))?;
    eprintln!("wrote {n} list entries to `{}`", k.lists_topic);
    Ok(())
}

/// One committed alert as the demo shows it.
struct DemoAlert {
    event_time: String,
    rule: String,
    severity: String,
    key: String,
    /// What it found: its payload values, or the last matched event.
    what: String,
    /// Whether its last matched event is labelled fraud (`TX_FRAUD`), where
    /// the events say.
    fraud: Option<bool>,
}

/// The alerts the demo has read, and those not printed yet.
#[derive(Default)]
struct DemoAlerts {
    all: Vec<DemoAlert>,
    printed: usize,
}

impl DemoAlerts {
    /// Reads the alerts that arrive within `wait`; returns how many.
    fn read(&mut self, reader: &AlertsReader, wait: Duration) -> usize {
        reader.read(wait, usize::MAX, |a| {
            self.all
                .push(match serde_json::from_slice::<AlertJson>(a.value) {
                    Ok(v) => DemoAlert::of(&v),
                    Err(e) => DemoAlert {
                        event_time: String::new(),
                        rule: "?".into(),
                        severity: "?".into(),
                        key: String::from_utf8_lossy(a.key).into_owned(),
                        what: format!("an unreadable alert: {e}"),
                        fraud: None,
                    },
                })
        })
    }

    /// Prints the alerts read since the last call, in event-time order.
    fn print_pending(&mut self) {
        let pending = &mut self.all[self.printed..];
        pending.sort_by(|a, b| a.event_time.cmp(&b.event_time));
        for a in pending.iter() {
            let time = a.event_time.replace('T', " ").replace('Z', "");
            println!(
                "{time}  {:<16} {:<8} key {:<6} {}",
                a.rule, a.severity, a.key, a.what
            );
        }
        self.printed = self.all.len();
    }

    /// Alerts per rule, with how many fell on transactions labelled fraud
    /// where the events carry the label.
    fn print_summary(&self, rules: &RuleSet) {
        println!();
        let labelled = self.all.iter().any(|a| a.fraud.is_some());
        match labelled {
            true => println!("{:<20} {:>7} {:>10}", "rule", "alerts", "on fraud"),
            false => println!("{:<20} {:>7}", "rule", "alerts"),
        }
        for r in rules.rules().iter().filter(|r| !r.def().features) {
            let of_rule = self.all.iter().filter(|a| *a.rule == **r.name());
            let (n, fraud) = of_rule.fold((0, 0), |(n, f), a| {
                (n + 1, f + usize::from(a.fraud == Some(true)))
            });
            match labelled {
                true => println!("{:<20} {n:>7} {fraud:>10}", r.name()),
                false => println!("{:<20} {n:>7}", r.name()),
            }
        }
    }
}

/// The parts of a committed alert the demo shows, its objects' fields in
/// the order the alert has them (stages in pattern order, values in the
/// rule's payload order).
#[derive(serde::Deserialize)]
struct AlertJson {
    #[serde(default)]
    event_time: serde_json::Value,
    #[serde(default)]
    rule: serde_json::Value,
    #[serde(default)]
    severity: serde_json::Value,
    #[serde(default)]
    key: serde_json::Value,
    #[serde(default)]
    matches: Ordered,
    #[serde(default)]
    values: Ordered,
}

/// A JSON object's fields in their order.
#[derive(Default)]
struct Ordered(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Ordered, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Ordered, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = m.next_entry()? {
                    fields.push(entry);
                }
                Ok(Ordered(fields))
            }
        }
        d.deserialize_map(Fields)
    }
}

impl DemoAlert {
    fn of(v: &AlertJson) -> DemoAlert {
        let text = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_string();
        let last = v
            .matches
            .0
            .last()
            .and_then(|(_, events)| events.as_array()?.last());
        let what = match (v.values.0.is_empty(), last) {
            (false, _) => v
                .values
                .0
                .iter()
                .map(|(n, v)| format!("{n} = {}", short_number(v)))
                .collect::<Vec<_>>()
                .join(", "),
            (true, Some(event)) => format!("on {event}"),
            (true, None) => String::new(),
        };
        let fraud = last.and_then(|e| match &e["TX_FRAUD"] {
            serde_json::Value::Number(n) => Some(n.as_f64() != Some(0.0)),
            serde_json::Value::Bool(b) => Some(*b),
            _ => None,
        });
        DemoAlert {
            event_time: text(&v.event_time),
            rule: text(&v.rule),
            severity: text(&v.severity),
            key: match &v.key {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            },
            what,
            fraud,
        }
    }
}

/// A value as a person reads it: numbers to two decimals at most.
fn short_number(v: &serde_json::Value) -> String {
    match v.as_f64() {
        Some(n) if n.fract() != 0.0 => format!("{:.2}", n),
        _ => v.to_string(),
    }
}

/// Removes a directory when dropped.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}
