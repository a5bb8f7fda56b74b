//! The rules over HTTP: the running set and what is pending or refused,
//! validation, and live changes of one rule file (`PUT`/`DELETE`), each
//! compiled off the async threads within a time budget.

use super::*;

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
    /// `live`, or `shadow` (`mode shadow`: its alerts go to the shadow
    /// topic only, until it is promoted).
    pub mode: String,
    /// `suppress`: at most one alert per key in this many ms of event time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suppress_ms: Option<i64>,
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
    /// The version on trial beside it (`candidate "FILE"`): scored on
    /// every event, read by no rule until promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<CandidateInfo>,
}

/// A model's candidate as listed.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct CandidateInfo {
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

pub(super) fn rule_list(rs: &RuleSet) -> RuleList {
    RuleList {
        rule_set: format!("{:016x}", rs.def().hash),
        pending: None,
        stream: rs.def().stream().name.clone(),
        rules: rs
            .rules()
            .iter()
            .map(|r| RuleInfo {
                name: r.name().to_string(),
                kind: if r.def().features { "features" } else { "rule" }.into(),
                key: r.def().key.to_string(),
                severity: serde_json::to_value(r.def().severity)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                score: r.def().score,
                description: r.def().description.clone(),
                models: r.def().models.clone(),
                mode: if r.def().shadow { "shadow" } else { "live" }.into(),
                suppress_ms: r.def().suppress_ms,
            })
            .collect(),
        models: rs
            .def()
            .models
            .iter()
            .map(|m| ModelInfo {
                name: m.name.clone(),
                file: m.file.clone(),
                inputs: m.model.inputs().to_vec(),
                candidate: m.candidate.as_ref().map(|c| CandidateInfo {
                    file: c.file.clone(),
                    inputs: c.model.inputs().to_vec(),
                }),
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

#[utoipa::path(get, path = "/v1/rules",
    responses((status = 200, body = RuleList), (status = 401, body = ErrorBody)),
    security((), ("bearer" = [])))]
pub(super) async fn list_rules(State(s): State<ApiState>) -> Json<RuleList> {
    let current = s.0.rules.current();
    let Some(status) = s.0.health.rules_status() else {
        return Json(rule_list(&current));
    };
    if status.running == current.def().hash {
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
        rule_set: format!("{:016x}", current.def().hash),
        rules: current
            .rules()
            .iter()
            .map(|r| r.name().to_string())
            .collect(),
        refused: status
            .refused
            .filter(|(hash, _)| *hash == current.def().hash)
            .map(|(_, why)| why),
    });
    Json(list)
}

/// A rule as `PUT /v1/rules/{name}` takes it (also the OpenAPI example).
pub(super) const RULE_EXAMPLE: &str =
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
pub(super) async fn validate_rules(
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
pub(super) const COMPILE_BUDGET: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `f`, which compiles rules, away from the API's async threads (a
/// compile takes CPU for as long as its rules ask, and those threads answer
/// `/healthz` and every other request) and one at a time (each may take the
/// rule language's memory limits in full), within [`COMPILE_BUDGET`]. Past
/// it the request gets 503; the compile finishes on its own thread, still
/// holding the turn.
pub(super) async fn compile<T: Send + 'static>(
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

pub(super) fn checked_name(name: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
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
pub(super) async fn put_rule(
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
            rule_set: format!("{:016x}", w.rules.def().hash),
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
pub(super) async fn delete_rule(
    State(s): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<RuleChange>, ApiError> {
    let name = checked_name(name)?;
    let rules = compile(&s, move |store| store.delete(&name)).await?;
    Ok(Json(RuleChange {
        rule_set: format!("{:016x}", rules.def().hash),
        created: false,
        file: None,
    }))
}

/// Takes a rule out of shadow mode (`mode shadow` removed from its file):
/// its alerts go to the alerts topic, and to webhooks, from the checkpoint
/// at which the service switches rules; its state (partial matches, window
/// aggregates) carries over.
#[utoipa::path(post, path = "/v1/rules/{name}/promote",
    params(("name" = String, Path, description = "rule name")),
    responses((status = 200, body = RuleChange), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 400, body = ErrorBody),
              (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn promote_rule(
    State(s): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<RuleChange>, ApiError> {
    let name = checked_name(name)?;
    let w = compile(&s, move |store| store.promote(&name)).await?;
    Ok(Json(RuleChange {
        rule_set: format!("{:016x}", w.rules.def().hash),
        created: false,
        file: Some(s.0.rules.display_name(&w.file.display().to_string())),
    }))
}

/// Promotes a model's candidate: its declaration's `candidate "NEXT"`
/// becomes its file (`model NAME from "NEXT"`), so the rules read the
/// candidate's scores from the checkpoint at which the service switches
/// rules; rule state (partial matches, window aggregates) carries over.
#[utoipa::path(post, path = "/v1/models/{name}/promote",
    params(("name" = String, Path, description = "model name")),
    responses((status = 200, body = RuleChange), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 400, body = ErrorBody),
              (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn promote_model(
    State(s): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<RuleChange>, ApiError> {
    let name = checked_name(name)?;
    let model = name.clone();
    let w = compile(&s, move |store| store.promote_model(&model)).await?;
    if let Some(trials) = s.0.trials.get() {
        trials.end(&name);
    }
    Ok(Json(RuleChange {
        rule_set: format!("{:016x}", w.rules.def().hash),
        created: false,
        file: Some(s.0.rules.display_name(&w.file.display().to_string())),
    }))
}

/// One version's figures in a trial.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct TrialFigures {
    /// Area under the ROC curve (absent without both classes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auc: Option<f64>,
    /// Average precision (absent without a fraud).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ap: Option<f64>,
    /// Card precision@`top_k`, the mean over the days.
    pub card_precision: f64,
}

/// A model's candidate on trial beside it, judged now.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct TrialReport {
    /// The model.
    pub model: String,
    /// The first event time judged (absent: no transaction is a label
    /// delay old yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The end of the event times judged (exclusive): a label delay before
    /// `labels_at`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Labels known at or before this time were read: the latest time the
    /// trial has seen, an event's or a label's.
    pub labels_at: String,
    /// Transactions judged (cards known compromised left out).
    pub transactions: usize,
    /// Labelled frauds among them.
    pub frauds: usize,
    /// The version the rules read.
    pub running: TrialFigures,
    /// The candidate.
    pub candidate: TrialFigures,
    /// `promote`, `keep` or `wait`.
    pub verdict: String,
    /// Why, unless `promote`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How much higher the candidate's average precision must be.
    pub margin: f64,
    /// Labelled frauds needed before a verdict.
    pub min_frauds: usize,
    /// Card precision counts the top k keys of each day.
    pub top_k: usize,
    /// The service promotes a winning candidate itself (`trial.promote =
    /// "auto"`).
    pub auto: bool,
}

impl From<crate::adapters::trials::TrialView> for TrialReport {
    fn from(v: crate::adapters::trials::TrialView) -> TrialReport {
        use crate::model::trial::Verdict;
        let c = v.comparison;
        let figures = |f: crate::model::trial::Figures| TrialFigures {
            auc: f.auc,
            ap: f.ap,
            card_precision: f.card_precision,
        };
        let (verdict, reason) = match c.verdict {
            Verdict::Promote => ("promote", None),
            Verdict::Keep(why) => ("keep", Some(why)),
            Verdict::Wait(why) => ("wait", Some(why)),
        };
        TrialReport {
            model: v.model,
            from: c
                .window
                .as_ref()
                .map(|w| crate::event::format_time(w.start)),
            until: c.window.as_ref().map(|w| crate::event::format_time(w.end)),
            labels_at: crate::event::format_time(c.labels_at),
            transactions: c.transactions,
            frauds: c.frauds,
            running: figures(c.current),
            candidate: figures(c.candidate),
            verdict: verdict.into(),
            reason,
            margin: v.policy.margin,
            min_frauds: v.policy.min_frauds,
            top_k: v.policy.top_k,
            auto: v.auto,
        }
    }
}

/// A model's trial: its candidate beside it on the transactions both
/// scored, by the labels that have arrived (needs `trial.labels_topic`).
#[utoipa::path(get, path = "/v1/models/{name}/trial",
    params(("name" = String, Path, description = "model name")),
    responses((status = 200, body = TrialReport), (status = 404, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 400, body = ErrorBody)),
    security((), ("bearer" = [])))]
pub(super) async fn model_trial(
    State(s): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<TrialReport>, ApiError> {
    let name = checked_name(name)?;
    let Some(trials) = s.0.trials.get() else {
        return Err(ApiError::not_found(
            "the service judges no trial: set trial.labels_topic (and feature_log.topic)",
        ));
    };
    match trials.view(&name) {
        Some(v) => Ok(Json(v.into())),
        None => Err(ApiError::not_found(format!(
            "no trial of model `{name}`: the feature log has brought no row with both its scores (is a candidate declared?)"
        ))),
    }
}

/// A rule's text, as its file has it.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct RuleSource {
    /// The rule.
    pub name: String,
    /// Its file, relative to the rules directory.
    pub file: String,
    /// Its block (`rule NAME { … }`): what `PUT /v1/rules/{name}` takes back.
    pub text: String,
}

/// A rule's text, for editing. It needs the token as writes do, open reads
/// or not: a rule's text says what the fraud team looks for.
#[utoipa::path(get, path = "/v1/rules/{name}",
    params(("name" = String, Path, description = "rule name")),
    responses((status = 200, body = RuleSource), (status = 404, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn get_rule(
    State(s): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<RuleSource>, ApiError> {
    let name = checked_name(name)?;
    let store = s.0.clone();
    let found = tokio::task::spawn_blocking(move || {
        store
            .rules
            .source(&name)
            .map(|(path, text)| (name, path, text))
    })
    .await
    .map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "reading the rule failed inside tripline",
        )
    })?
    .map_err(ApiError::rules)?;
    let (name, path, text) = found;
    Ok(Json(RuleSource {
        name,
        file: s.0.rules.display_name(&path.display().to_string()),
        text,
    }))
}

/// `POST /v1/rules:backtest` parameters.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BacktestQuery {
    /// The events appended in the last this many hours (1 to 720; default
    /// 24).
    hours: Option<i64>,
    /// The top-level field that marks an event as fraud (default
    /// `TX_FRAUD`).
    label: Option<String>,
}

/// One rule's figures in a backtest.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct BacktestFigures {
    /// Alerts raised.
    pub alerts: u64,
    /// Alerts per day of event time.
    pub per_day: f64,
    /// Share of its alerts whose evidence holds a labelled event (absent:
    /// no alert).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision: Option<f64>,
    /// Share of the labelled events in its alerts' evidence (absent: none
    /// labelled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recall: Option<f64>,
}

/// A rule of either rule set, side by side.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct BacktestRow {
    /// The rule, or `(any rule)`.
    pub rule: String,
    /// With the edit (absent: the edit removes it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate: Option<BacktestFigures>,
    /// As running (absent: the edit adds it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<BacktestFigures>,
}

/// What an edit would have done over the recent input.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct BacktestReport {
    /// Events run (decoded by the edited rules).
    pub events: u64,
    /// Days of event time they cover.
    pub days: u64,
    /// Of them, labelled.
    pub positives: u64,
    /// Records the edited rules could not decode (left out).
    pub left_out: u64,
    /// Per rule.
    pub rules: Vec<BacktestRow>,
}

/// How long a backtest may take, its compile included.
const BACKTEST_BUDGET: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs rule text, as `:validate` checks it, and the running rules over the
/// input appended in the last `hours` (read from the input topics, in
/// event-time order) and compares them rule by rule: what the edit would
/// have raised before it is saved. Changes nothing.
#[utoipa::path(post, path = "/v1/rules:backtest", params(BacktestQuery),
    request_body(content = String, content_type = "text/plain", description = "rule text (.tl)",
                 example = json!(RULE_EXAMPLE)),
    responses((status = 200, body = BacktestReport), (status = 422, body = ErrorBody),
              (status = 409, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn backtest_rules(
    State(s): State<ApiState>,
    q: Result<Query<BacktestQuery>, QueryRejection>,
    body: Result<String, StringRejection>,
) -> Result<Json<BacktestReport>, ApiError> {
    let Query(q) = q?;
    let hours = q.hours.unwrap_or(24);
    if !(1..=720).contains(&hours) {
        return Err(ApiError::bad_request(format!(
            "`hours` {hours} must be 1..=720"
        )));
    }
    let label = q.label.unwrap_or_else(|| "TX_FRAUD".into());
    let Some(history) = s.0.history.get().cloned() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "backtests need the service's input topics: not available here",
        ));
    };
    let text = body?;
    let candidate = compile(&s, move |store| store.validate(&text)).await?;
    let current = s.0.rules.current();
    let lists = s.0.lists.get().map(|l| l.lists.clone()).unwrap_or_default();
    let tables = s.0.tables.get().cloned().unwrap_or_default();
    let since = crate::telemetry::now_ms() - hours * 3_600_000;
    let job = tokio::task::spawn_blocking(move || {
        let events = history.events(&candidate, since)?;
        let named: Vec<(String, &[u8])> = events
            .iter()
            .map(|(i, text)| {
                let name = candidate.def().streams[*i as usize].name.clone();
                (name, text.as_slice())
            })
            .collect();
        let run = |rules: Arc<RuleSet>| {
            let b = crate::backtest::Backtest::new(rules, &label)
                .with_lists(lists.clone())
                .with_tables(tables.clone());
            crate::backtest::run_streams(b, &named, true)
        };
        let (cand, left_out) = run(candidate);
        let (curr, _) = run(current);
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((cand, curr, left_out))
    });
    let (cand, curr, left_out) = match tokio::time::timeout(BACKTEST_BUDGET, job).await {
        Ok(Ok(Ok(r))) => r,
        Ok(Ok(Err(e))) => {
            return Err(ApiError::internal(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the input topics could not be read; retry",
                e,
            ));
        }
        Ok(Err(_)) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the backtest failed inside tripline",
            ));
        }
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                format!(
                    "the backtest took longer than {} s; try fewer hours",
                    BACKTEST_BUDGET.as_secs()
                ),
            ));
        }
    };
    let figures =
        |r: &crate::backtest::Report, score: &crate::backtest::RuleScore| BacktestFigures {
            alerts: score.alerts,
            per_day: r.per_day(score),
            precision: score.precision(),
            recall: score.recall(r.positives),
        };
    let mut names: Vec<&str> = cand.rules.iter().map(|r| r.rule.as_str()).collect();
    for r in &curr.rules {
        if !names.contains(&r.rule.as_str()) {
            names.push(&r.rule);
        }
    }
    let mut rows: Vec<BacktestRow> = names
        .iter()
        .map(|name| BacktestRow {
            rule: name.to_string(),
            candidate: cand.rule(name).map(|s| figures(&cand, s)),
            current: curr.rule(name).map(|s| figures(&curr, s)),
        })
        .collect();
    rows.push(BacktestRow {
        rule: "(any rule)".into(),
        candidate: Some(figures(&cand, &cand.any)),
        current: Some(figures(&curr, &curr.any)),
    });
    Ok(Json(BacktestReport {
        events: cand.events,
        days: cand.days,
        positives: cand.positives,
        left_out,
        rules: rows,
    }))
}
