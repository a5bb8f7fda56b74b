//! The analyst's live view: the dashboard page, its figures
//! (`/v1/dashboard`), and the server-sent stream of committed alerts, with
//! a bound on how many follow it at once.

use super::*;

/// The dashboard page: static, embedded in the binary; it reads
/// `/v1/dashboard` and follows `/v1/alerts/stream`.
pub(super) async fn dashboard_page() -> Response {
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
    /// Its alerts among those kept (for a rule in `mode shadow`, on the
    /// shadow topic).
    pub alerts: usize,
    /// `live`, or `shadow`: its alerts go to the shadow topic only.
    pub mode: String,
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
    /// Records between what the last checkpoint covered and the
    /// partition's end (events waiting for the watermark are not lag).
    pub lag: Option<i64>,
    /// Wall clock minus the partition's watermark.
    pub watermark_delay_seconds: Option<f64>,
    /// Events waiting for the watermark to pass their time (see the
    /// stream's `lateness` and `advance after`).
    pub waiting_events: u64,
}

/// One rule's alerts over event time, among those kept.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuleSeries {
    /// The rule.
    pub rule: String,
    /// `live` or `shadow`.
    pub mode: String,
    /// Alerts per bucket, from [`Timeline::start`].
    pub counts: Vec<u32>,
}

/// Alerts per rule over event time.
#[derive(Debug, Serialize, ToSchema)]
pub struct Timeline {
    /// The first bucket's start (RFC 3339).
    pub start: Option<String>,
    /// A bucket's width in seconds (a minute to a week: at most 48 buckets).
    pub bucket_seconds: i64,
    /// Per rule with alerts kept.
    pub rules: Vec<RuleSeries>,
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
    /// Alerts per rule over event time.
    pub timeline: Timeline,
    /// The partitions held, with lag and watermark delay.
    pub partitions: Vec<PartitionView>,
}

/// The dashboard's figures: alerts per rule, the riskiest keys, the
/// partitions' lag and watermark delay.
#[utoipa::path(get, path = "/v1/dashboard",
    params(("top" = Option<usize>, Query, description = "how many keys to rank (1 to 100, default 10)")),
    responses((status = 200, body = Dashboard), (status = 401, body = ErrorBody), (status = 400, body = ErrorBody)),
    security((), ("bearer" = [])))]
pub(super) async fn dashboard(
    State(s): State<ApiState>,
    q: Result<Query<DashboardQuery>, QueryRejection>,
) -> Result<Json<Dashboard>, ApiError> {
    let Query(q) = q?;
    let top = q.top.unwrap_or(10);
    if !(1..=100).contains(&top) {
        return Err(ApiError::bad_request(format!("top {top} must be 1..=100")));
    }
    let rules = s.0.rules.current();
    let mode = |shadow: bool| if shadow { "shadow" } else { "live" }.to_string();
    let mut per_rule: Vec<RuleCount> = Vec::new();
    for shadow in [false, true] {
        per_rule.extend(
            s.0.alerts
                .rule_counts(shadow)
                .into_iter()
                .map(|(rule, n)| RuleCount {
                    rule: rule.to_string(),
                    alerts: n,
                    mode: mode(shadow),
                }),
        );
    }
    per_rule.sort_by(|a, b| b.alerts.cmp(&a.alerts).then_with(|| a.rule.cmp(&b.rule)));
    // Every running rule (feature sets raise no alert: not listed), in its
    // current mode, with none yet.
    for r in rules.def().rules.iter().filter(|r| !r.features) {
        if !per_rule
            .iter()
            .any(|c| *c.rule == *r.name && c.mode == mode(r.shadow))
        {
            per_rule.push(RuleCount {
                rule: r.name.to_string(),
                alerts: 0,
                mode: mode(r.shadow),
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
    let (width, lines) = s.0.alerts.timeline(48);
    let timeline = Timeline {
        start: lines.first().map(|l| crate::event::format_time(l.start)),
        bucket_seconds: width / 1000,
        rules: lines
            .into_iter()
            .map(|l| RuleSeries {
                rule: l.rule.to_string(),
                mode: mode(l.shadow),
                counts: l.counts,
            })
            .collect(),
    };
    let figures = s.0.health.figures().unwrap_or_default();
    let now = crate::telemetry::now_ms();
    Ok(Json(Dashboard {
        stream: rules.def().stream().name.to_string(),
        alerts_kept: s.0.alerts.len(),
        keys_resident: figures.keys_resident,
        keys_passivated: figures.keys_passivated,
        rules: per_rule,
        top_keys,
        timeline,
        partitions: figures
            .partitions
            .iter()
            .map(|p| PartitionView {
                topic: p.topic.clone(),
                partition: p.partition,
                lag: p.lag(),
                watermark_delay_seconds: p.watermark_delay(now),
                waiting_events: p.waiting_events,
            })
            .collect(),
    }))
}

/// `/v1/dashboard` parameters.
#[derive(Debug, Deserialize, IntoParams)]
pub(super) struct DashboardQuery {
    top: Option<usize>,
}

/// Alerts sent when a follower connects without `Last-Event-ID`.
pub(super) const STREAM_BACKLOG: usize = 50;

/// Committed alerts as server-sent events (`event: alert`, `id`: the
/// alert's position in the log, `data`: the alert's JSON): the latest 50,
/// then each as it arrives. With `Last-Event-ID`, those after it instead
/// (from the oldest kept, if it is gone). Not in the OpenAPI document: the
/// response never ends.
pub(super) async fn alert_stream(State(s): State<ApiState>, headers: HeaderMap) -> Response {
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
                        .data(a.json.get());
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
pub(super) struct Subscriber(Arc<std::sync::atomic::AtomicUsize>);

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

/// `GET /v1/rules/{name}/compare` parameters.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CompareQuery {
    /// The rule to compare with (a running rule's name).
    with: Option<String>,
    /// The period's start (RFC 3339); by default the first rule's first
    /// alert held.
    since: Option<String>,
}

/// One rule in a [`RuleComparison`].
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ComparedRuleView {
    /// The rule.
    pub rule: String,
    /// `live` or `shadow`.
    pub mode: String,
    /// Its alerts held in the period.
    pub alerts: usize,
    /// The distinct keys they are for.
    pub keys: usize,
    /// Keys it alerted on in the period and the other rule did not.
    pub only_keys: usize,
    /// Some of those keys, the most recently alerted first (at most 20).
    pub only_keys_sample: Vec<String>,
    /// Alerts per bucket, from [`RuleComparison::start`].
    pub counts: Vec<u32>,
}

/// Two rules' alerts over the same period of event time: a shadow rule
/// beside the live rule it may replace, before promoting it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RuleComparison {
    /// The period's start (RFC 3339).
    pub from: String,
    /// Its end: the latest alert of either rule held (RFC 3339).
    pub to: String,
    /// The first bucket's start (RFC 3339).
    pub start: String,
    /// A bucket's width in seconds.
    pub bucket_seconds: i64,
    /// The rule asked about, then the one it is compared with.
    pub rules: Vec<ComparedRuleView>,
    /// Keys both alerted on in the period.
    pub keys_in_both: usize,
}

/// A rule's alerts beside another's over the same period of event time,
/// among the alerts kept: counts, keys each alerted on alone, alerts per
/// bucket. For a rule in `mode shadow`, the period starts by default at
/// its first alert held.
#[utoipa::path(get, path = "/v1/rules/{name}/compare",
    params(("name" = String, Path, description = "rule name"), CompareQuery),
    responses((status = 200, body = RuleComparison), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)),
    security((), ("bearer" = [])))]
pub(super) async fn compare_rules(
    State(s): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
    q: Result<Query<CompareQuery>, QueryRejection>,
) -> Result<Json<RuleComparison>, ApiError> {
    let name = checked_name(name)?;
    let Query(q) = q?;
    let Some(with) = q.with else {
        return Err(ApiError::bad_request(
            "say which rule to compare with: `?with=NAME`",
        ));
    };
    let since = parse_since(q.since.as_deref())?;
    let rules = s.0.rules.current();
    let running = |n: &str| {
        rules
            .def()
            .rules
            .iter()
            .find(|r| r.name == n && !r.features)
            .map(|r| r.shadow)
            .ok_or_else(|| ApiError::not_found(format!("no running rule `{n}`")))
    };
    let a = (name.as_str(), running(&name)?);
    let b = (with.as_str(), running(&with)?);
    let mode = |shadow: bool| if shadow { "shadow" } else { "live" }.to_string();
    let c = s.0.alerts.compare(a, b, since, 48).ok_or_else(|| {
        ApiError::not_found(format!(
            "neither `{name}` nor `{with}` has an alert held in the period"
        ))
    })?;
    Ok(Json(RuleComparison {
        from: crate::event::format_time(c.from),
        to: crate::event::format_time(c.to),
        start: crate::event::format_time(c.start),
        bucket_seconds: c.width / 1000,
        keys_in_both: c.keys_in_both,
        rules: c
            .rules
            .into_iter()
            .map(|r| ComparedRuleView {
                rule: r.rule.to_string(),
                mode: mode(r.shadow),
                alerts: r.alerts,
                keys: r.keys,
                only_keys: r.only_keys,
                only_keys_sample: r.only_sample.iter().map(|k| k.to_string()).collect(),
                counts: r.counts,
            })
            .collect(),
    }))
}
