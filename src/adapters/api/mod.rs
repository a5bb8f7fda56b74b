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
pub mod rules;
pub mod server;

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
    fn lookup(&self, key: String) -> BoxFuture<'static, Result<KeyState, String>>;
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
        }))
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

/// Every error the API returns.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    diagnostics: Option<Vec<DiagnosticJson>>,
    /// Another instance's REST API that has the answer.
    owner: Option<String>,
    /// The `Location` header: the same request at `owner`.
    location: Option<String>,
}

/// The body of every error response.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// See [`ErrorBody`].
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code (`unauthorized`, `not_found`,
    /// `invalid_rules`, `bad_request`, `payload_too_large`, `conflict`, …).
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
    /// For rules that do not compile: every error, with its position.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<Vec<DiagnosticJson>>,
    /// For a key held by another instance (`elsewhere`): that instance's
    /// REST API; the `Location` header has the same request there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// One rule error.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DiagnosticJson {
    /// File (as the rules name it).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            diagnostics: None,
            owner: None,
            location: None,
        }
    }

    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn rules(e: RuleChangeError) -> ApiError {
        match e {
            RuleChangeError::Invalid(CompileError::Rules(d)) => {
                let diagnostics: Vec<DiagnosticJson> = d
                    .errors
                    .iter()
                    .map(|e| {
                        let (line, column) = d.sources.line_col(e.span.file, e.span.start);
                        DiagnosticJson {
                            file: d.sources.get(e.span.file).name.clone(),
                            line,
                            column,
                            message: e.message.clone(),
                            hint: e.hint.clone(),
                        }
                    })
                    .collect();
                ApiError {
                    status: StatusCode::UNPROCESSABLE_ENTITY,
                    code: "invalid_rules",
                    message: format!("the rules do not compile: {} error(s)", diagnostics.len()),
                    diagnostics: Some(diagnostics),
                    owner: None,
                    location: None,
                }
            }
            RuleChangeError::Invalid(CompileError::Io(e)) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_rules",
                e.join("; "),
            ),
            RuleChangeError::Mismatch(m) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_rules", m)
            }
            RuleChangeError::Shared(m) | RuleChangeError::Conflict(m) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", m)
            }
            RuleChangeError::NotFound(n) => ApiError::not_found(format!("no rule `{n}`")),
            RuleChangeError::Io(m) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", m)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let location = self.location;
        let retry = self.status == StatusCode::SERVICE_UNAVAILABLE;
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                diagnostics: self.diagnostics,
                owner: self.owner,
            },
        };
        let mut r = (self.status, Json(body)).into_response();
        if let Some(l) = location.and_then(|l| header::HeaderValue::from_str(&l).ok()) {
            r.headers_mut().insert(header::LOCATION, l);
        }
        if retry {
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        r
    }
}

fn rejection(status: StatusCode, text: String) -> ApiError {
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        _ => "bad_request",
    };
    ApiError::new(status, code, text)
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        rejection(StatusCode::BAD_REQUEST, r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        rejection(StatusCode::BAD_REQUEST, r.body_text())
    }
}

impl From<StringRejection> for ApiError {
    fn from(r: StringRejection) -> Self {
        rejection(r.status(), r.body_text())
    }
}

/// A rule as listed.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct RuleInfo {
    /// Name.
    pub name: String,
    /// `rule` or `features`.
    pub kind: String,
    /// The key field it groups by.
    pub key: String,
    /// Severity of its alerts.
    pub severity: String,
    /// Score contribution of each alert.
    pub score: f64,
    /// Description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Models it reads.
    pub models: Vec<String>,
}

/// A model as listed.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ModelInfo {
    /// Name (the field rules read its score from).
    pub name: String,
    /// Its file.
    pub file: String,
    /// Its inputs, in order.
    pub inputs: Vec<String>,
}

/// The running rules.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct RuleList {
    /// Rule set hash (hex): changes with any rule or model. The set
    /// listed is the one the service runs.
    pub rule_set: String,
    /// A set accepted from the files or the API that the service does not
    /// run (yet, or at all: then `refused` says why).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingRules>,
    /// The stream.
    pub stream: String,
    /// Rules and feature sets.
    pub rules: Vec<RuleInfo>,
    /// Models.
    pub models: Vec<ModelInfo>,
}

/// A rule set accepted but not running (see [`RuleList::pending`]).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PendingRules {
    /// Its hash (hex).
    pub rule_set: String,
    /// Its rules and feature sets, by name.
    pub rules: Vec<String>,
    /// Why the service refused it; absent while it waits for the next
    /// checkpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

fn rule_list(rs: &RuleSet) -> RuleList {
    RuleList {
        rule_set: format!("{:016x}", rs.def.hash),
        pending: None,
        stream: rs.def.stream.name.clone(),
        rules: rs
            .rules
            .iter()
            .map(|r| RuleInfo {
                name: r.name.to_string(),
                kind: if r.def.features { "features" } else { "rule" }.into(),
                key: r.def.key.to_string(),
                severity: serde_json::to_value(r.def.severity)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                score: r.def.score,
                description: r.def.description.clone(),
                models: r.def.models.clone(),
            })
            .collect(),
        models: rs
            .def
            .models
            .iter()
            .map(|m| ModelInfo {
                name: m.name.clone(),
                file: m.file.clone(),
                inputs: m.model.inputs().to_vec(),
            })
            .collect(),
    }
}

/// The result of a rule change.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct RuleChange {
    /// The rule set now running (hex hash).
    pub rule_set: String,
    /// The rule did not exist before (`PUT`).
    pub created: bool,
    /// The file written or removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// The result of a validation.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Validation {
    /// Always true (invalid rules are a 422).
    pub valid: bool,
    /// The rules as they would run.
    pub rules: RuleList,
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
}

/// A page of alerts.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct AlertPage {
    /// Alerts, newest first, as published (docs/alerts.md).
    #[schema(value_type = Vec<Object>)]
    pub alerts: Vec<Json_>,
    /// Pass as `cursor` for the next (older) page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

/// A key's risk.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct KeyScore {
    /// The stream.
    pub stream: String,
    /// The key.
    pub key: String,
    /// Sum of the score contributions of the key's alerts over the score
    /// window before its latest alert.
    pub score: f64,
    /// `none` (no alert in the window), `low` (< 50), `medium` (< 100) or
    /// `high`.
    pub risk: String,
    /// Event time of its latest alert (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_alert_time: Option<String>,
    /// Its most recent alerts, newest first.
    #[schema(value_type = Vec<Object>)]
    pub recent_alerts: Vec<Json_>,
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

fn parse_json(text: &str) -> Json_ {
    serde_json::from_str(text).unwrap_or(Json_::Null)
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
    if stream != rules.def.stream.name {
        return Err(ApiError::not_found(format!(
            "no stream `{stream}` (this service reads `{}`)",
            rules.def.stream.name
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
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e,
            ));
        }
    };
    if state.is_empty() && page.alerts.is_empty() {
        return Err(ApiError::not_found(format!(
            "no state and no recent alert for key `{key}`"
        )));
    }
    Ok(Json(KeyScore {
        stream,
        key,
        score,
        risk: risk_level(score).into(),
        last_alert_time: latest.map(crate::event::format_time),
        recent_alerts: page
            .alerts
            .iter()
            .take(10)
            .map(|a| parse_json(&a.json))
            .collect(),
        state,
    }))
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
    let since = match &q.since {
        Some(t) => Some(crate::event::parse_time_str(t).ok_or_else(|| {
            ApiError::bad_request(format!(
                "`since` must be an RFC 3339 time (2018-04-01T00:00:00Z), not `{t}`"
            ))
        })?),
        None => None,
    };
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > s.0.config.max_page {
        return Err(ApiError::bad_request(format!(
            "`limit` must be between 1 and {}",
            s.0.config.max_page
        )));
    }
    let page = s.0.alerts.page(
        &Filter {
            key: q.key,
            rule: q.rule,
            since,
            before: q.cursor,
        },
        limit,
    );
    Ok(Json(AlertPage {
        alerts: page.alerts.iter().map(|a| parse_json(&a.json)).collect(),
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
    let deliveries = w
        .deliveries(&id)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))?;
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

#[utoipa::path(get, path = "/v1/rules",
    responses((status = 200, body = RuleList), (status = 401, body = ErrorBody)),
    security((), ("bearer" = [])))]
async fn list_rules(State(s): State<ApiState>) -> Json<RuleList> {
    let current = s.0.rules.current();
    let Some(status) = s.0.health.rules_status() else {
        return Json(rule_list(&current));
    };
    if status.running == current.def.hash {
        return Json(rule_list(&current));
    }
    let running = s.0.rules.recent(status.running);
    let mut list = match &running {
        Some(rs) => rule_list(rs),
        None => RuleList {
            rule_set: format!("{:016x}", status.running),
            ..rule_list(&current)
        },
    };
    if running.is_none() {
        // Only its hash is known here (it ran before this API started).
        list.rules.clear();
        list.models.clear();
    }
    list.pending = Some(PendingRules {
        rule_set: format!("{:016x}", current.def.hash),
        rules: current.rules.iter().map(|r| r.name.to_string()).collect(),
        refused: status
            .refused
            .filter(|(hash, _)| *hash == current.def.hash)
            .map(|(_, why)| why),
    });
    Json(list)
}

/// A rule as `PUT /v1/rules/{name}` takes it (also the OpenAPI example).
const RULE_EXAMPLE: &str =
    "rule large_purchase {\n  severity medium\n  score 20\n  pattern { tx: TX_AMOUNT > 5000 }\n}\n";

/// Checks rule text against the running rules (the files it would join,
/// less those whose every rule it redefines). Nothing changes.
#[utoipa::path(post, path = "/v1/rules:validate",
    request_body(content = String, content_type = "text/plain", description = "rule text (.tl)",
                 example = json!(RULE_EXAMPLE)),
    responses((status = 200, body = Validation), (status = 422, body = ErrorBody),
              (status = 409, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
async fn validate_rules(
    State(s): State<ApiState>,
    body: Result<String, StringRejection>,
) -> Result<Json<Validation>, ApiError> {
    let text = body?;
    let rules = compile(&s, move |store| store.validate(&text)).await?;
    Ok(Json(Validation {
        valid: true,
        rules: rule_list(&rules),
    }))
}

/// How long a rule compile may take, waiting for its turn included.
const COMPILE_BUDGET: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `f`, which compiles rules, away from the API's async threads (a
/// compile takes CPU for as long as its rules ask, and those threads answer
/// `/healthz` and every other request) and one at a time (each may take the
/// rule language's memory limits in full), within [`COMPILE_BUDGET`]. Past
/// it the request gets 503; the compile finishes on its own thread, still
/// holding the turn.
async fn compile<T: Send + 'static>(
    s: &ApiState,
    f: impl FnOnce(&RuleStore) -> Result<T, RuleChangeError> + Send + 'static,
) -> Result<T, ApiError> {
    let busy = |m: &str| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", m);
    let started = tokio::time::Instant::now();
    let turn = tokio::time::timeout(COMPILE_BUDGET, s.0.compile_slot.clone().acquire_owned())
        .await
        .map_err(|_| busy("another rule change or validation is still compiling; retry"))?
        .map_err(|_| busy("the API is stopping"))?;
    let inner = s.0.clone();
    let job = tokio::task::spawn_blocking(move || {
        let _turn = turn;
        f(&inner.rules)
    });
    let left = COMPILE_BUDGET.saturating_sub(started.elapsed());
    match tokio::time::timeout(left, job).await {
        Ok(Ok(result)) => result.map_err(|e| {
            let mut e = ApiError::rules(e);
            for d in e.diagnostics.iter_mut().flatten() {
                d.file = s.0.rules.display_name(&d.file);
            }
            e
        }),
        Ok(Err(_)) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the compile failed inside tripline",
        )),
        Err(_) => Err(busy(&format!(
            "the rules took longer than {} s to compile",
            COMPILE_BUDGET.as_secs()
        ))),
    }
}

fn checked_name(name: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(name) = name?;
    if !valid_name(&name) {
        return Err(ApiError::bad_request(format!(
            "`{name}` is not a rule name (letters, digits, `_` and `-`, at most 128)"
        )));
    }
    Ok(name)
}

/// Creates or replaces a rule. The body is rule text defining exactly that
/// rule (examples and models may come with it); the whole rule set must
/// compile with it. The service switches at its next checkpoint.
#[utoipa::path(put, path = "/v1/rules/{name}",
    params(("name" = String, Path, description = "rule name", example = "large_purchase")),
    request_body(content = String, content_type = "text/plain", description = "rule text (.tl)",
                 example = json!(RULE_EXAMPLE)),
    responses((status = 200, body = RuleChange), (status = 201, body = RuleChange),
              (status = 422, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
async fn put_rule(
    State(s): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
    body: Result<String, StringRejection>,
) -> Result<Response, ApiError> {
    let name = checked_name(name)?;
    let text = body?;
    let w = compile(&s, move |store| store.put(&name, &text)).await?;
    let status = if w.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(RuleChange {
            rule_set: format!("{:016x}", w.rules.def.hash),
            created: w.created,
            file: Some(s.0.rules.display_name(&w.file.display().to_string())),
        }),
    )
        .into_response())
}

/// Deletes a rule (its file must hold it alone); the rest must compile
/// without it.
#[utoipa::path(delete, path = "/v1/rules/{name}",
    params(("name" = String, Path, description = "rule name")),
    responses((status = 200, body = RuleChange), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 400, body = ErrorBody),
              (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
async fn delete_rule(
    State(s): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<RuleChange>, ApiError> {
    let name = checked_name(name)?;
    let rules = compile(&s, move |store| store.delete(&name)).await?;
    Ok(Json(RuleChange {
        rule_set: format!("{:016x}", rules.def.hash),
        created: false,
        file: None,
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
    paths(healthz, readyz, metrics, dashboard, key_score, list_alerts, alert_deliveries, list_webhooks, list_rules, validate_rules, put_rule, delete_rule, openapi_json),
    components(schemas(ErrorBody, ErrorDetail, DiagnosticJson, RuleInfo, ModelInfo, RuleList,
                        RuleChange, Validation, AlertPage, PendingRules, KeyScore, Healthy, Readiness,
                        WebhookList, EndpointView, Deliveries, DeliveryView,
                        Dashboard, RuleCount, RiskyKey, PartitionView)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// The dashboard page: static, embedded in the binary; it reads
/// `/v1/dashboard` and follows `/v1/alerts/stream`.
async fn dashboard_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("dashboard.html"),
    )
        .into_response()
}

/// Alerts per rule of the running rule set (feature sets left out), among
/// the alerts kept.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuleCount {
    /// The rule.
    pub rule: String,
    /// Its alerts among those kept.
    pub alerts: usize,
}

/// A key ranked by risk.
#[derive(Debug, Serialize, ToSchema)]
pub struct RiskyKey {
    /// The key.
    pub key: String,
    /// Its score: its alerts' scores over the score window before its
    /// latest alert.
    pub score: f64,
    /// Its alerts among those kept.
    pub alerts: usize,
    /// The rule of its latest alert.
    pub last_rule: String,
    /// The event time of its latest alert (RFC 3339).
    pub last_event_time: String,
}

/// A partition this instance holds.
#[derive(Debug, Serialize, ToSchema)]
pub struct PartitionView {
    /// The topic (input or internal).
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// Records between the committed offset and the partition's end.
    pub lag: Option<i64>,
    /// Wall clock minus the partition's watermark.
    pub watermark_delay_seconds: Option<f64>,
}

/// What the dashboard shows.
#[derive(Debug, Serialize, ToSchema)]
pub struct Dashboard {
    /// The stream the rules read.
    pub stream: String,
    /// Recent alerts kept (what the counts and scores cover).
    pub alerts_kept: usize,
    /// Keys whose state is in memory.
    pub keys_resident: u64,
    /// Keys whose state is only in the data directory.
    pub keys_passivated: u64,
    /// Per rule, most alerts first.
    pub rules: Vec<RuleCount>,
    /// The riskiest keys, highest score first.
    pub top_keys: Vec<RiskyKey>,
    /// The partitions held, with lag and watermark delay.
    pub partitions: Vec<PartitionView>,
}

/// The dashboard's figures: alerts per rule, the riskiest keys, the
/// partitions' lag and watermark delay.
#[utoipa::path(get, path = "/v1/dashboard",
    params(("top" = Option<usize>, Query, description = "how many keys to rank (1 to 100, default 10)")),
    responses((status = 200, body = Dashboard), (status = 401, body = ErrorBody), (status = 400, body = ErrorBody)),
    security((), ("bearer" = [])))]
async fn dashboard(
    State(s): State<ApiState>,
    q: Result<Query<DashboardQuery>, QueryRejection>,
) -> Result<Json<Dashboard>, ApiError> {
    let Query(q) = q?;
    let top = q.top.unwrap_or(10);
    if !(1..=100).contains(&top) {
        return Err(ApiError::bad_request(format!("top {top} must be 1..=100")));
    }
    let rules = s.0.rules.current();
    let counts = s.0.alerts.rule_counts();
    let mut per_rule: Vec<RuleCount> = counts
        .iter()
        .map(|(rule, n)| RuleCount {
            rule: rule.to_string(),
            alerts: *n,
        })
        .collect();
    // Feature sets raise no alert: not listed.
    for r in rules.def.rules.iter().filter(|r| !r.features) {
        if !counts.iter().any(|(name, _)| **name == *r.name) {
            per_rule.push(RuleCount {
                rule: r.name.to_string(),
                alerts: 0,
            });
        }
    }
    let top_keys =
        s.0.alerts
            .riskiest(s.0.config.score_window_ms, top)
            .into_iter()
            .map(|k| RiskyKey {
                key: k.key.to_string(),
                score: k.score,
                alerts: k.alerts,
                last_rule: k.last_rule.to_string(),
                last_event_time: crate::event::format_time(k.last_event_time),
            })
            .collect();
    let figures = s.0.health.figures().unwrap_or_default();
    let now = crate::telemetry::now_ms();
    Ok(Json(Dashboard {
        stream: rules.def.stream.name.to_string(),
        alerts_kept: s.0.alerts.len(),
        keys_resident: figures.keys_resident,
        keys_passivated: figures.keys_passivated,
        rules: per_rule,
        top_keys,
        partitions: figures
            .partitions
            .iter()
            .map(|p| PartitionView {
                topic: p.topic.clone(),
                partition: p.partition,
                lag: p.lag(),
                watermark_delay_seconds: p.watermark_delay(now),
            })
            .collect(),
    }))
}

/// `/v1/dashboard` parameters.
#[derive(Debug, Deserialize, IntoParams)]
struct DashboardQuery {
    top: Option<usize>,
}

/// Alerts sent when a follower connects without `Last-Event-ID`.
const STREAM_BACKLOG: usize = 50;

/// Committed alerts as server-sent events (`event: alert`, `id`: the
/// alert's position in the log, `data`: the alert's JSON): the latest 50,
/// then each as it arrives. With `Last-Event-ID`, those after it instead
/// (from the oldest kept, if it is gone). Not in the OpenAPI document: the
/// response never ends.
async fn alert_stream(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    let Some(subscriber) = Subscriber::join(&s.0.subscribers, s.0.config.max_stream_subscribers)
    else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_subscribers",
            format!(
                "the alert stream has its {} followers (api.max_stream_subscribers); \
                 poll /v1/alerts instead, or retry later",
                s.0.config.max_stream_subscribers
            ),
        )
        .into_response();
    };
    let log = s.0.alerts.clone();
    let rx = log.subscribe();
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let (from, backlog) = match resume {
        Some(id) => (id.saturating_add(1), Vec::new()),
        None => {
            let backlog = log.latest(STREAM_BACKLOG);
            let from = backlog.last().map_or(0, |a| a.seq + 1);
            (from, backlog)
        }
    };
    let state = (
        log,
        rx,
        from,
        std::collections::VecDeque::from(backlog),
        subscriber,
    );
    let events = futures::stream::unfold(
        state,
        |(log, mut rx, mut from, mut pending, subscriber)| async move {
            loop {
                if let Some(a) = pending.pop_front() {
                    let event = SseEvent::default()
                        .event("alert")
                        .id(a.seq.to_string())
                        .data(&*a.json);
                    return Some((
                        Ok::<_, std::convert::Infallible>(event),
                        (log, rx, from, pending, subscriber),
                    ));
                }
                rx.borrow_and_update();
                let batch = log.since(from, 256);
                if let Some(last) = batch.last() {
                    from = last.seq + 1;
                    pending.extend(batch);
                    continue;
                }
                // Nothing new: wait for the log to grow (or go away).
                rx.changed().await.ok()?;
            }
        },
    );
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// One follower of the alert stream, counted while its stream lives.
struct Subscriber(Arc<std::sync::atomic::AtomicUsize>);

impl Subscriber {
    /// Counts one more follower, unless there are `max` already.
    fn join(count: &Arc<std::sync::atomic::AtomicUsize>, max: usize) -> Option<Subscriber> {
        use std::sync::atomic::Ordering::SeqCst;
        count
            .fetch_update(SeqCst, SeqCst, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| Subscriber(count.clone()))
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

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

/// Times every routed request and, when spans are exported, runs it in a
/// span named by its route.
async fn observe(path: Option<MatchedPath>, req: Request, next: Next) -> Response {
    #[allow(clippy::disallowed_methods)]
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let route = path.as_ref().map_or("(unmatched)", MatchedPath::as_str);
    let response = if crate::telemetry::tracing_enabled() {
        let span = tracing::info_span!(
            "tripline.api",
            http.request.method = %method,
            http.route = route,
        );
        tracing::Instrument::instrument(next.run(req), span).await
    } else {
        next.run(req).await
    };
    ApiRequest {
        method: method.as_str(),
        route,
        status: response.status().as_u16(),
        duration: started.elapsed(),
    }
    .emit();
    response
}

/// Checks the bearer token of a read route, unless reads are open.
async fn authorize_read(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    if !s.0.config.open_reads
        && let Err(e) = check_token(&s.0.config, req.headers(), false)
    {
        return e.into_response();
    }
    next.run(req).await
}

/// Checks the bearer token of a write route (rule changes, and validation,
/// which compiles what it is sent): always, and refused when no token is
/// configured. Which routes write is decided where they are routed, never
/// from the request's path or method.
async fn authorize_write(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    if let Err(e) = check_token(&s.0.config, req.headers(), true) {
        return e.into_response();
    }
    next.run(req).await
}

/// Refuses requests a browser page of another site could have sent: a
/// `Host` that is not this server's (DNS rebinding: a page whose domain
/// resolves to this address names its own domain), and a request with a
/// cross-site `Origin` or `Sec-Fetch-Site` other than a plain read (a
/// `no-cors` POST is sent, only its answer hidden). Clients other than
/// browsers send neither header.
async fn same_site(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    let forbidden = |m: String| ApiError::new(StatusCode::FORBIDDEN, "forbidden", m);
    let headers = req.headers();
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if let Some(host) = host
        && !host_allowed(host, &s.0.config.allowed_hosts)
    {
        return forbidden(format!(
            "requests to host `{host}` are refused; add it to api.allowed_hosts if it names this server"
        ))
        .into_response();
    }
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    if !read {
        let cross_site = headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == "cross-site" || v == "same-site");
        let foreign_origin = headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|o| {
                let authority = o.split_once("://").map_or(o, |(_, a)| a);
                host != Some(authority)
            });
        if cross_site || foreign_origin {
            return forbidden("cross-site requests are refused".into()).into_response();
        }
    }
    next.run(req).await
}

/// Whether `host` (a `Host` header: name or address, and port) names this
/// server: an IP address, `localhost`, this machine's name, or a name in
/// `allowed`.
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6
                .split_once(']')
                .is_some_and(|(a, _)| a.parse::<std::net::Ipv6Addr>().is_ok());
        }
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    if name.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name == crate::adapters::kafka::service::host_name().to_ascii_lowercase()
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(&name))
}

fn check_token(config: &ApiConfig, headers: &HeaderMap, write: bool) -> Result<(), ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let Some(token) = &config.token else {
        return Err(unauthorized(if write {
            "rule changes are disabled: no API token is configured (api.token)"
        } else {
            "reads need a token, and none is configured (api.token)"
        }));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| unauthorized("missing `Authorization: Bearer <token>`"))?;
    use subtle::ConstantTimeEq;
    if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        Ok(())
    } else {
        Err(unauthorized("wrong token"))
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint (see /openapi.json)")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed here (see /openapi.json)",
    )
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
        .route("/metrics", get(metrics))
        .route("/v1/dashboard", get(dashboard))
        .route("/v1/alerts/stream", get(alert_stream))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            authorize_read,
        ));
    let writes = Router::new()
        .route("/v1/rules:validate", post(validate_rules))
        .route("/v1/rules/{name}", put(put_rule).delete(delete_rule))
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
