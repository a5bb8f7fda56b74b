//! The REST API (axum): a key's risk score and state, recent alerts, the
//! rules and live rule changes, health and readiness, and its own OpenAPI
//! document at `/openapi.json`, generated from the handlers' annotations.
//!
//! [`router`] builds the whole API over an [`ApiState`]; the service serves
//! it next to the consumer group, and tests call it through
//! `tower::ServiceExt::oneshot`. Every error is JSON of one shape,
//! `{"error": {"code", "message", "diagnostics"?}}` ([`ApiError`]).
//!
//! Writes (`PUT`/`DELETE` of rules) need `Authorization: Bearer <token>`
//! with the configured token (and are refused when none is configured);
//! reads need it too unless reads are configured open. Health, readiness
//! and the OpenAPI document are always open.

pub mod alerts;
mod dashboard;
mod error;
mod guard;
mod list_routes;
mod rule_routes;
pub mod rules;
pub mod server;
mod table_routes;

use dashboard::*;
pub use dashboard::{
    ComparedRuleView, Dashboard, PartitionView, RiskyKey, RuleComparison, RuleCount,
};
pub use error::{ApiError, DiagnosticJson, ErrorBody, ErrorDetail};
use guard::*;
use list_routes::*;
pub use list_routes::{
    AddEntry, BulkResult, ListChangeView, ListEntryView, ListSummary, ListView, ListWriteError,
    ListWriter, ListsPage,
};
use rule_routes::*;
pub use rule_routes::{
    BacktestFigures, BacktestReport, BacktestRow, CandidateInfo, ModelInfo, PendingRules,
    RuleChange, RuleInfo, RuleList, RuleSource, TrialFigures, TrialReport, Validation,
};
pub use table_routes::{RowVersionView, TableRowView, TableSummary, TablesPage};

use self::alerts::{AlertLog, Filter};
use self::rules::{RuleChangeError, RuleStore, valid_name};
use crate::adapters::webhook::{DeliveryStatus, DeliveryView, EndpointView};
use crate::engine::RuleSet;
use crate::rules::CompileError;
use crate::telemetry::ServiceFigures;
use crate::telemetry::events::ApiRequest;
use axum::extract::rejection::{PathRejection, QueryRejection, StringRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json_;
use serde_json::value::RawValue;
use std::sync::Arc;
use utoipa::{IntoParams, OpenApi, ToSchema};

/// API settings.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Bearer token for writes (and for reads unless `open_reads`); no
    /// token: writes are refused.
    pub token: Option<String>,
    /// Reads need no token.
    pub open_reads: bool,
    /// Largest request body accepted (bytes).
    pub max_body_bytes: usize,
    /// Largest page of alerts.
    pub max_page: usize,
    /// A key's score sums the scores of its alerts over this much event
    /// time before its latest alert (ms).
    pub score_window_ms: i64,
    /// Followers of `/v1/alerts/stream` at once; past it, 503.
    pub max_stream_subscribers: usize,
    /// Host names requests may address besides IP addresses, `localhost`
    /// and this machine's name (a browser page whose domain resolves to
    /// this server — DNS rebinding — names its own domain).
    pub allowed_hosts: Vec<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            token: None,
            open_reads: true,
            max_body_bytes: 256 * 1024,
            max_page: 1000,
            score_window_ms: 24 * 3600 * 1000,
            max_stream_subscribers: 64,
            allowed_hosts: Vec::new(),
        }
    }
}

/// Where a key's live state is read.
pub trait KeyLookup: Send + Sync {
    /// The state of `key` under every key field that has some (one JSON
    /// object each), from whichever shard owns it, or where it is.
    fn lookup(&self, key: String) -> BoxFuture<'static, Result<KeyState, LookupError>>;
}

/// Why a key's state could not be read. Every kind passes (a shard
/// restarts, the group settles): the API answers 503 and logs the detail.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// A shard of this instance did not answer.
    #[error("a shard did not answer: {0}")]
    Shard(String),
    /// Which instance holds the key's partition could not be learned.
    #[error("the consumer group's assignment could not be read: {0}")]
    Owners(String),
}

/// Where a key's state is.
#[derive(Debug)]
pub enum KeyState {
    /// Held by this instance: one JSON object per key field with state.
    Here(Vec<Json_>),
    /// Held by another instance of the group, whose REST API is at this URL.
    Elsewhere(String),
    /// The key's partition has no owner at the moment (a rebalance).
    Unassigned,
}

/// Each stream's events (by its index in the rule set), one record per
/// line in event-time order.
pub type StreamEvents = Vec<(u16, Vec<u8>)>;

/// Why the input could not be read.
pub type HistoryReadError = Box<dyn std::error::Error + Send + Sync>;

/// The service's recent input, for backtesting a rule edit.
pub trait History: Send + Sync {
    /// Each stream's events appended since `since_ms` (epoch ms).
    fn events(&self, rules: &RuleSet, since_ms: i64) -> Result<StreamEvents, HistoryReadError>;
}

/// Whether the service can answer.
pub trait Health: Send + Sync {
    /// Ready: partitions assigned and their state restored.
    fn readiness(&self) -> Readiness;

    /// The service's figures for the dashboard (none: not known here).
    fn figures(&self) -> Option<ServiceFigures> {
        None
    }

    /// Which rule set the service runs, and the last it refused (none: not
    /// known here; the API's accepted set is then taken as running).
    fn rules_status(&self) -> Option<RulesStatus> {
        None
    }
}

/// What the service reports of its rules (see [`Health::rules_status`]).
#[derive(Clone, Debug)]
pub struct RulesStatus {
    /// The hash of the rule set running.
    pub running: u64,
    /// The last rule set refused (its hash) and why, until one is applied.
    pub refused: Option<(u64, String)>,
}

/// See [`Health`].
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// Ready to serve.
    pub ready: bool,
    /// Why not, or what it runs.
    pub detail: String,
}

struct Inner {
    config: ApiConfig,
    rules: RuleStore,
    alerts: Arc<AlertLog>,
    keys: Arc<dyn KeyLookup>,
    health: Arc<dyn Health>,
    webhooks: std::sync::OnceLock<Arc<dyn DeliveryStatus>>,
    /// Followers of the alert stream now.
    subscribers: Arc<std::sync::atomic::AtomicUsize>,
    /// One rule compile at a time (see [`compile`]).
    compile_slot: Arc<tokio::sync::Semaphore>,
    /// The lists and how to change them; without them, list writes are 503.
    lists: std::sync::OnceLock<ListAccess>,
    /// The tables' rows; without them, every table is empty.
    tables: std::sync::OnceLock<Arc<crate::tables::Tables>>,
    /// The input's recent events, for the editor's backtest; without it,
    /// backtests are 503.
    history: std::sync::OnceLock<Arc<dyn History>>,
    /// Model trials judged by the service; without them, none is shown.
    trials: std::sync::OnceLock<Arc<crate::adapters::trials::Trials>>,
}

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState(Arc<Inner>);

impl ApiState {
    /// The state of an API over these parts.
    pub fn new(
        config: ApiConfig,
        rules: RuleStore,
        alerts: Arc<AlertLog>,
        keys: Arc<dyn KeyLookup>,
        health: Arc<dyn Health>,
    ) -> ApiState {
        ApiState(Arc::new(Inner {
            config,
            rules,
            alerts,
            keys,
            health,
            webhooks: std::sync::OnceLock::new(),
            subscribers: Default::default(),
            compile_slot: Arc::new(tokio::sync::Semaphore::new(1)),
            lists: std::sync::OnceLock::new(),
            tables: std::sync::OnceLock::new(),
            history: std::sync::OnceLock::new(),
            trials: std::sync::OnceLock::new(),
        }))
    }

    /// Backtests rule edits over `history` (`POST /v1/rules:backtest`).
    pub fn set_history(&self, history: Arc<dyn History>) {
        self.0.history.set(history).ok();
    }

    /// Shows `trials` (`/v1/models/{name}/trial`), and ends a trial when
    /// its candidate is promoted through the API.
    pub fn set_trials(&self, trials: Arc<crate::adapters::trials::Trials>) {
        self.0.trials.set(trials).ok();
    }

    /// Serves `tables` (`/v1/tables`).
    pub fn set_tables(&self, tables: Arc<crate::tables::Tables>) {
        self.0.tables.set(tables).ok();
    }

    /// Serves `lists` (`/v1/lists`), changed through `writer`.
    pub fn set_lists(&self, lists: Arc<crate::lists::Lists>, writer: Arc<dyn ListWriter>) {
        self.0.lists.set(ListAccess { lists, writer }).ok();
    }

    /// Shows the webhooks' delivery status (`/v1/webhooks`, and an
    /// alert's deliveries); without it, no endpoint is configured.
    pub fn set_webhooks(&self, status: Arc<dyn DeliveryStatus>) {
        self.0.webhooks.set(status).ok();
    }

    /// The rule store (to record rule sets loaded from edited files).
    pub fn rules(&self) -> &RuleStore {
        &self.0.rules
    }
}

/// `GET /v1/alerts` parameters.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AlertQuery {
    /// Only this key.
    key: Option<String>,
    /// Only this rule.
    rule: Option<String>,
    /// Only alerts at or after this event time (RFC 3339).
    since: Option<String>,
    /// Page size (default 100).
    limit: Option<usize>,
    /// The `next` cursor of the previous page.
    cursor: Option<u64>,
    /// `live` (default): the alerts topic's; `shadow`: those of rules in
    /// `mode shadow`, from the shadow topic.
    mode: Option<String>,
}

/// A page of alerts.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct AlertPage {
    /// Alerts, newest first, each the bytes committed to the alerts topic
    /// (docs/alerts.md; field order included).
    #[schema(value_type = Vec<Object>)]
    pub alerts: Vec<Arc<RawValue>>,
    /// Pass as `cursor` for the next (older) page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

/// A key's risk.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct KeyScore {
    /// The stream.
    pub stream: String,
    /// The key, typed as in its alerts and state (a number for a numeric
    /// key field).
    #[schema(value_type = Value)]
    pub key: Json_,
    /// Sum of the score contributions of the key's alerts over the score
    /// window before its latest alert.
    pub score: f64,
    /// `none` (no alert in the window), `low` (< 50), `medium` (< 100) or
    /// `high`.
    pub risk: String,
    /// Event time of its latest alert (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_alert_time: Option<String>,
    /// Its most recent alerts, newest first, as committed.
    #[schema(value_type = Vec<Object>)]
    pub recent_alerts: Vec<Arc<RawValue>>,
    /// Its state per key field: features as of its latest event (those
    /// that read the event's own fields are null), window aggregates,
    /// pending deadlines.
    #[schema(value_type = Vec<Object>)]
    pub state: Vec<Json_>,
}

/// `GET /healthz` answer.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Healthy {
    /// `ok`.
    pub status: String,
}

fn risk_level(score: f64) -> &'static str {
    match score {
        s if s <= 0.0 => "none",
        s if s < 50.0 => "low",
        s if s < 100.0 => "medium",
        _ => "high",
    }
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Healthy)))]
async fn healthz() -> Json<Healthy> {
    Json(Healthy {
        status: "ok".into(),
    })
}

/// Readiness: partitions assigned and their state restored.
#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, body = Readiness), (status = 503, body = Readiness)))]
async fn readyz(State(s): State<ApiState>) -> Response {
    let r = s.0.health.readiness();
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(r)).into_response()
}

/// A key's current risk score, recent alerts and state.
#[utoipa::path(get, path = "/v1/keys/{stream}/{key}/score",
    params(("stream" = String, Path, description = "stream name", example = "transactions"),
           ("key" = String, Path, description = "key value", example = "4625")),
    responses((status = 200, body = KeyScore), (status = 404, body = ErrorBody),
              (status = 307, body = ErrorBody, description = "the key is held by another instance: `Location` and `error.owner` say which"),
              (status = 503, body = ErrorBody, description = "the key's partition is being reassigned; retry"),
              (status = 401, body = ErrorBody), (status = 400, body = ErrorBody)),
    security((), ("bearer" = [])))]
async fn key_score(
    State(s): State<ApiState>,
    uri: axum::http::Uri,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<KeyScore>, ApiError> {
    let Path((stream, key)) = p?;
    let rules = s.0.rules.current();
    if stream != rules.def().stream().name {
        return Err(ApiError::not_found(format!(
            "no stream `{stream}` (this service reads `{}`)",
            rules.def().stream().name
        )));
    }
    let page = s.0.alerts.page(
        &Filter {
            key: Some(key.clone()),
            ..Filter::default()
        },
        s.0.config.max_page,
    );
    let latest = page.alerts.first().map(|a| a.event_time);
    let score: f64 = match latest {
        Some(t) => page
            .alerts
            .iter()
            .filter(|a| a.event_time > t - s.0.config.score_window_ms)
            .map(|a| a.score)
            .sum(),
        None => 0.0,
    };
    let state = match s.0.keys.lookup(key.clone()).await {
        Ok(KeyState::Here(state)) => state,
        Ok(KeyState::Elsewhere(owner)) => {
            let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
            return Err(ApiError {
                location: Some(format!("{}{path}", owner.trim_end_matches('/'))),
                owner: Some(owner.clone()),
                ..ApiError::new(
                    StatusCode::TEMPORARY_REDIRECT,
                    "elsewhere",
                    format!("key `{key}` is held by the instance at {owner}"),
                )
            });
        }
        Ok(KeyState::Unassigned) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unassigned",
                format!("the partition of key `{key}` is being reassigned; retry shortly"),
            ));
        }
        Err(e) => {
            return Err(ApiError::internal(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the key's state cannot be read now; retry shortly",
                e,
            ));
        }
    };
    if state.is_empty() && page.alerts.is_empty() {
        return Err(ApiError::not_found(format!(
            "no state and no recent alert for key `{key}`"
        )));
    }
    // The path gives the key as text; its alerts and state say its type.
    let typed_key = state
        .iter()
        .find_map(|s| s.get("key").cloned())
        .or_else(|| {
            page.alerts
                .first()
                .and_then(|a| serde_json::from_str::<Json_>(a.json.get()).ok())
                .map(|v| v["key"].clone())
        })
        .unwrap_or(Json_::String(key));
    Ok(Json(KeyScore {
        stream,
        key: typed_key,
        score,
        risk: risk_level(score).into(),
        last_alert_time: latest.map(crate::event::format_time),
        recent_alerts: page
            .alerts
            .iter()
            .take(10)
            .map(|a| a.json.clone())
            .collect(),
        state,
    }))
}

/// A `since` query parameter: an RFC 3339 time, as epoch ms.
fn parse_since(since: Option<&str>) -> Result<Option<crate::event::EventTime>, ApiError> {
    since
        .map(|t| {
            crate::event::parse_time_str(t).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "`since` must be an RFC 3339 time (2018-04-01T00:00:00Z), not `{t}`"
                ))
            })
        })
        .transpose()
}

/// Recent alerts, newest first, paginated.
#[utoipa::path(get, path = "/v1/alerts", params(AlertQuery),
    responses((status = 200, body = AlertPage), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody)),
    security((), ("bearer" = [])))]
async fn list_alerts(
    State(s): State<ApiState>,
    q: Result<Query<AlertQuery>, QueryRejection>,
) -> Result<Json<AlertPage>, ApiError> {
    let Query(q) = q?;
    let since = parse_since(q.since.as_deref())?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > s.0.config.max_page {
        return Err(ApiError::bad_request(format!(
            "`limit` must be between 1 and {}",
            s.0.config.max_page
        )));
    }
    let shadow = match q.mode.as_deref() {
        None | Some("live") => false,
        Some("shadow") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "`mode` is `live` or `shadow`, not `{other}`"
            )));
        }
    };
    let page = s.0.alerts.page(
        &Filter {
            key: q.key,
            rule: q.rule,
            since,
            before: q.cursor,
            shadow,
        },
        limit,
    );
    Ok(Json(AlertPage {
        alerts: page.alerts.iter().map(|a| a.json.clone()).collect(),
        next: page.next,
    }))
}

/// The running rules and models.
/// The webhook endpoints and their delivery counters.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct WebhookList {
    /// Every configured endpoint (none: webhooks are off).
    pub endpoints: Vec<EndpointView>,
}

/// Where an alert's webhook deliveries stand.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Deliveries {
    /// The alert's id.
    pub alert_id: String,
    /// One per endpoint the alert went to.
    pub deliveries: Vec<DeliveryView>,
}

/// The webhook endpoints with their queues and counters.
#[utoipa::path(get, path = "/v1/webhooks",
    responses((status = 200, body = WebhookList), (status = 401, body = ErrorBody)),
    security((), ("bearer" = [])))]
async fn list_webhooks(State(s): State<ApiState>) -> Json<WebhookList> {
    Json(WebhookList {
        endpoints: s
            .0
            .webhooks
            .get()
            .map(|w| w.endpoints())
            .unwrap_or_default(),
    })
}

/// An alert's webhook deliveries, one per endpoint: pending, retrying,
/// delivered or dead, with attempts and the last error. Known on the
/// instance that delivers the alert's partition, while the status is kept
/// (`webhooks.status_retention`).
#[utoipa::path(get, path = "/v1/alerts/{id}/deliveries",
    params(("id" = String, Path, description = "the alert's id (32 hex digits)",
            example = "c4a87cf63becc4bf1d556a7cd629e086")),
    responses((status = 200, body = Deliveries), (status = 404, body = ErrorBody),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 500, body = ErrorBody)),
    security((), ("bearer" = [])))]
async fn alert_deliveries(
    State(s): State<ApiState>,
    p: Result<Path<String>, PathRejection>,
) -> Result<Json<Deliveries>, ApiError> {
    let Path(id) = p?;
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request(format!(
            "`{id}` is not an alert id (32 hex digits)"
        )));
    }
    let Some(w) = s.0.webhooks.get() else {
        return Err(ApiError::not_found(
            "no webhook endpoints are configured (webhooks.endpoints)",
        ));
    };
    let deliveries = w.deliveries(&id).map_err(|e| {
        ApiError::internal(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the delivery log could not be read",
            e,
        )
    })?;
    if deliveries.is_empty() {
        return Err(ApiError::not_found(format!(
            "no webhook deliveries of alert `{id}` here (none selected it, its status expired, or another instance delivers its partition)"
        )));
    }
    Ok(Json(Deliveries {
        alert_id: id,
        deliveries,
    }))
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "the OpenAPI document")))]
async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let c = api.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document of [`router`].
#[derive(OpenApi)]
#[openapi(
    info(title = "tripline", description = "Risk scores, alerts and rules of a tripline service."),
    paths(healthz, readyz, metrics, dashboard::dashboard, dashboard::compare_rules, key_score, list_alerts, alert_deliveries, list_webhooks, rule_routes::list_rules, rule_routes::validate_rules, rule_routes::put_rule, rule_routes::delete_rule, rule_routes::promote_rule, rule_routes::promote_model, rule_routes::model_trial, rule_routes::get_rule, rule_routes::backtest_rules,
          list_routes::lists, list_routes::list, list_routes::add_entry, list_routes::remove_entry, list_routes::bulk_load, list_routes::export,
          table_routes::list_tables, table_routes::table_row, openapi_json),
    components(schemas(ErrorBody, ErrorDetail, DiagnosticJson, RuleInfo, ModelInfo, CandidateInfo, TrialReport, TrialFigures, RuleList,
                        RuleChange, RuleSource, Validation, BacktestReport, BacktestRow, BacktestFigures, AlertPage, PendingRules, KeyScore, Healthy, Readiness,
                        WebhookList, EndpointView, Deliveries, DeliveryView,
                        Dashboard, RuleCount, RiskyKey, PartitionView, Timeline, RuleSeries, RuleComparison, ComparedRuleView,
                        ListsPage, ListSummary, ListView, ListEntryView, ListChangeView, AddEntry, BulkResult,
                        TablesPage, TableSummary, TableRowView, RowVersionView)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// The metrics in Prometheus text format (404 when `telemetry.prometheus`
/// is off). Needs the token unless reads are open.
#[utoipa::path(get, path = "/metrics", responses(
    (status = 200, description = "Prometheus text exposition format 0.0.4", content_type = "text/plain", body = String),
    (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security((), ("bearer" = [])))]
async fn metrics() -> Response {
    match crate::telemetry::prometheus_text() {
        Some(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "metrics are not served here (telemetry.prometheus is off)",
        )
        .into_response(),
    }
}

/// The API over `state`.
pub fn router(state: ApiState) -> Router {
    let limit = state.0.config.max_body_bytes;
    let reads = Router::new()
        .route("/v1/keys/{stream}/{key}/score", get(key_score))
        .route("/v1/alerts", get(list_alerts))
        .route("/v1/alerts/{id}/deliveries", get(alert_deliveries))
        .route("/v1/webhooks", get(list_webhooks))
        .route("/v1/rules", get(list_rules))
        .route("/v1/models/{name}/trial", get(model_trial))
        .route("/metrics", get(metrics))
        .route("/v1/dashboard", get(dashboard::dashboard))
        .route("/v1/rules/{name}/compare", get(dashboard::compare_rules))
        .route("/v1/alerts/stream", get(alert_stream))
        .route("/v1/lists", get(list_routes::lists))
        .route("/v1/lists/{name}", get(list_routes::list))
        .route("/v1/lists/{name}/export", get(list_routes::export))
        .route("/v1/tables", get(table_routes::list_tables))
        .route("/v1/tables/{name}/rows/{key}", get(table_routes::table_row))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            authorize_read,
        ));
    let writes = Router::new()
        .route("/v1/rules:validate", post(validate_rules))
        .route("/v1/rules:backtest", post(backtest_rules))
        .route(
            "/v1/rules/{name}",
            put(put_rule).delete(delete_rule).get(get_rule),
        )
        .route("/v1/rules/{name}/promote", post(promote_rule))
        .route("/v1/models/{name}/promote", post(promote_model))
        .route("/v1/lists/{name}/entries", post(list_routes::add_entry))
        .route(
            "/v1/lists/{name}/entries:bulk",
            post(list_routes::bulk_load),
        )
        .route(
            "/v1/lists/{name}/entries/{value}",
            axum::routing::delete(list_routes::remove_entry),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            authorize_write,
        ));
    Router::new()
        .route("/", get(dashboard_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi_json))
        .merge(reads)
        .merge(writes)
        .route_layer(middleware::from_fn(observe))
        .layer(middleware::from_fn_with_state(state.clone(), same_site))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn internal_errors_give_an_incident_not_the_detail() {
        let e = ApiError::internal(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the delivery log could not be read",
            "IO error: /var/lib/tripline/outbox/000123.sst: Permission denied",
        );
        let response = e.into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        let body: ErrorBody = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(body.error.code, "internal");
        assert!(
            body.error
                .message
                .starts_with("the delivery log could not be read (incident ")
        );
        assert!(
            !body.error.message.contains("/var/lib"),
            "{}",
            body.error.message
        );
    }
}
