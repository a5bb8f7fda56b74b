//! The REST API through its `Router` (`oneshot`), over real rule files in a
//! temporary directory, an engine that replayed part of the handbook sample
//! and the alerts it raised.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tower::ServiceExt;

#[path = "support/sample.rs"]
mod sample;
use tripline::adapters::api::alerts::AlertLog;
use tripline::adapters::api::rules::RuleStore;
use tripline::adapters::api::{
    ApiConfig, ApiState, Health, KeyLookup, KeyState, LookupError, Readiness, router,
};
use tripline::engine::{Engine, EngineOptions, Outputs, inspect};

const TOKEN: &str = "s3cret";

struct Keys(Mutex<Engine>);

/// Keys held here, except three made-up ones: `card-elsewhere` is held by
/// another instance, `card-moving` is in a partition being reassigned,
/// `card-stuck` is on a shard that does not answer.
impl KeyLookup for Keys {
    fn lookup(&self, key: String) -> BoxFuture<'static, Result<KeyState, LookupError>> {
        let found = match key.as_str() {
            "card-elsewhere" => Ok(KeyState::Elsewhere("http://10.0.0.2:8080".into())),
            "card-moving" => Ok(KeyState::Unassigned),
            "card-stuck" => Err(LookupError::Shard("Mailbox has closed".into())),
            _ => Ok(KeyState::Here(inspect::key_view(
                &mut self.0.lock().unwrap(),
                &key,
            ))),
        };
        Box::pin(async move { found })
    }
}

struct Ready(bool);

impl Health for Ready {
    fn readiness(&self) -> Readiness {
        Readiness {
            ready: self.0,
            detail: "test".into(),
        }
    }
}

/// The repository's rules and models, copied so the test may change them.
fn rules_dir(name: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("tripline-api-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    sample::copy_rules_and_models(&root)
}

struct Api {
    router: axum::Router,
    dir: PathBuf,
    changes: Arc<AtomicUsize>,
}

impl Drop for Api {
    fn drop(&mut self) {
        // rules_dir's root: the rules directory's parent, with the models.
        if let Some(root) = self.dir.parent() {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}

fn api(name: &str, config: ApiConfig, ready: bool) -> Api {
    api_with(name, config, ready, |_| {})
}

/// [`api`], its rule files changed by `prepare` first.
fn api_with(name: &str, config: ApiConfig, ready: bool, prepare: impl FnOnce(&Path)) -> Api {
    let dir = rules_dir(name);
    prepare(&dir);
    let rules =
        tripline::files::load_rules(&[dir.as_path()], None, EngineOptions::default()).unwrap();
    let mut engine = Engine::new(rules.clone());
    let mut out = Outputs::default();
    sample::replay_sample(&mut engine, 40_000, &mut out);
    assert!(out.alerts.len() > 10, "{} alerts", out.alerts.len());
    let log = AlertLog::new(10_000);
    log.extend(&out.alerts);
    let changes = Arc::new(AtomicUsize::new(0));
    let counter = changes.clone();
    let store = RuleStore::new(vec![dir.clone()], None, EngineOptions::default(), rules).on_change(
        Box::new(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        }),
    );
    let state = ApiState::new(
        config,
        store,
        log,
        Arc::new(Keys(Mutex::new(engine))),
        Arc::new(Ready(ready)),
    );
    Api {
        router: router(state),
        dir,
        changes,
    }
}

fn with_token() -> ApiConfig {
    ApiConfig {
        token: Some(TOKEN.into()),
        ..ApiConfig::default()
    }
}

async fn call(
    api: &Api,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, Json) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = api
        .router
        .clone()
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        panic!(
            "{method} {uri}: not JSON: {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, json)
}

fn error_code(j: &Json) -> &str {
    j["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {j}"))
}

#[tokio::test]
async fn health_readiness_and_the_openapi_document() {
    let a = api("health", ApiConfig::default(), false);
    let (s, j) = call(&a, "GET", "/healthz", None, "").await;
    assert_eq!((s, j["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (s, j) = call(&a, "GET", "/readyz", None, "").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(j["ready"], false);
    let (s, doc) = call(&a, "GET", "/openapi.json", None, "").await;
    assert_eq!(s, StatusCode::OK);
    for path in [
        "/v1/keys/{stream}/{key}/score",
        "/v1/alerts",
        "/v1/rules",
        "/v1/rules/{name}",
        "/v1/rules:validate",
        "/healthz",
        "/readyz",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    let ready = api("ready", ApiConfig::default(), true);
    assert_eq!(
        call(&ready, "GET", "/readyz", None, "").await.0,
        StatusCode::OK
    );
    // Unknown paths and methods answer JSON too.
    let (s, j) = call(&a, "GET", "/v2/nothing", None, "").await;
    assert_eq!((s, error_code(&j)), (StatusCode::NOT_FOUND, "not_found"));
    let (s, j) = call(&a, "POST", "/v1/rules", None, "").await;
    assert_eq!(
        (s, error_code(&j)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
}

#[tokio::test]
async fn a_keys_score_alerts_and_state() {
    let a = api("score", ApiConfig::default(), true);
    let (_, page) = call(&a, "GET", "/v1/alerts?limit=1", None, "").await;
    let alert = &page["alerts"][0];
    let key = alert["key"].to_string();
    let (s, j) = call(
        &a,
        "GET",
        &format!("/v1/keys/transactions/{key}/score"),
        None,
        "",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{j}");
    // Typed as the alert types it (a number for a numeric key field).
    assert_eq!(j["key"], alert["key"]);
    assert!(j["score"].as_f64().unwrap() > 0.0, "{j}");
    assert!(["low", "medium", "high"].contains(&j["risk"].as_str().unwrap()));
    assert_eq!(j["recent_alerts"][0]["id"], alert["id"]);
    let card = j["state"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key_field"] == "CUSTOMER_ID")
        .expect("card state");
    let n = card["features"]["CUSTOMER_ID_NB_TX_30DAY_WINDOW"]
        .as_f64()
        .unwrap();
    assert!(n >= 1.0, "{card}");
    // Unknown keys and streams are 404s with the error shape.
    let (s, j) = call(
        &a,
        "GET",
        "/v1/keys/transactions/no-such-card/score",
        None,
        "",
    )
    .await;
    assert_eq!((s, error_code(&j)), (StatusCode::NOT_FOUND, "not_found"));
    let (s, j) = call(
        &a,
        "GET",
        &format!("/v1/keys/payments/{key}/score"),
        None,
        "",
    )
    .await;
    assert_eq!((s, error_code(&j)), (StatusCode::NOT_FOUND, "not_found"));
    // A key of another instance: sent there, with the same request.
    let resp = a
        .router
        .clone()
        .oneshot(
            Request::get("/v1/keys/transactions/card-elsewhere/score")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        resp.headers()["location"],
        "http://10.0.0.2:8080/v1/keys/transactions/card-elsewhere/score"
    );
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let j: Json = serde_json::from_slice(&body).unwrap();
    assert_eq!(error_code(&j), "elsewhere");
    assert_eq!(j["error"]["owner"], "http://10.0.0.2:8080");
    // A key whose partition is changing hands: retry.
    let (s, j) = call(
        &a,
        "GET",
        "/v1/keys/transactions/card-moving/score",
        None,
        "",
    )
    .await;
    assert_eq!(
        (s, error_code(&j)),
        (StatusCode::SERVICE_UNAVAILABLE, "unassigned")
    );
    // A shard that does not answer: retry later, and the detail stays in
    // the service's log.
    let (s, j) = call(
        &a,
        "GET",
        "/v1/keys/transactions/card-stuck/score",
        None,
        "",
    )
    .await;
    assert_eq!(
        (s, error_code(&j)),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    );
    assert!(!j.to_string().contains("Mailbox"), "{j}");
}

#[tokio::test]
async fn alerts_page_by_key_rule_and_time() {
    let a = api("alerts", ApiConfig::default(), true);
    let (s, all) = call(&a, "GET", "/v1/alerts?limit=1000", None, "").await;
    assert_eq!(s, StatusCode::OK);
    let all = all["alerts"].as_array().unwrap().clone();
    let rule = all[0]["rule"].as_str().unwrap().to_string();
    let want: Vec<&Json> = all.iter().filter(|a| a["rule"] == rule.as_str()).collect();
    let mut got = Vec::new();
    let mut uri = format!("/v1/alerts?rule={rule}&limit=2");
    loop {
        let (s, page) = call(&a, "GET", &uri, None, "").await;
        assert_eq!(s, StatusCode::OK);
        got.extend(
            page["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["id"].clone()),
        );
        match page["next"].as_u64() {
            Some(c) => uri = format!("/v1/alerts?rule={rule}&limit=2&cursor={c}"),
            None => break,
        }
    }
    let want_ids: Vec<Json> = want.iter().map(|a| a["id"].clone()).collect();
    assert_eq!(got, want_ids);
    let since = all[all.len() / 2]["event_time"].as_str().unwrap();
    let (_, page) = call(
        &a,
        "GET",
        &format!("/v1/alerts?since={since}&limit=1000"),
        None,
        "",
    )
    .await;
    let n = page["alerts"].as_array().unwrap().len();
    assert_eq!(
        n,
        all.iter()
            .filter(|a| a["event_time"].as_str().unwrap() >= since)
            .count()
    );
    let (s, j) = call(&a, "GET", "/v1/alerts?since=yesterday", None, "").await;
    assert_eq!(
        (s, error_code(&j)),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    let (s, j) = call(&a, "GET", "/v1/alerts?limit=0", None, "").await;
    assert_eq!(
        (s, error_code(&j)),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
}

#[tokio::test]
async fn rules_are_listed_validated_changed_and_deleted() {
    let a = api("rules", with_token(), true);
    let (s, list) = call(&a, "GET", "/v1/rules", None, "").await;
    assert_eq!(s, StatusCode::OK);
    let names: Vec<&str> = list["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"amount_spike") && names.contains(&"card_model"),
        "{names:?}"
    );
    assert_eq!(list["models"][0]["name"], "card_rf");

    // A malformed rule: 422 with every error at file:line:col.
    let bad = "rule big {\n  pattern { x: TX_AMONT > 200 }\n}\n";
    let (s, j) = call(&a, "POST", "/v1/rules:validate", Some(TOKEN), bad).await;
    assert_eq!(
        (s, error_code(&j)),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_rules")
    );
    let d = &j["error"]["diagnostics"][0];
    assert_eq!(
        (d["line"].as_u64(), d["column"].as_u64()),
        (Some(2), Some(16)),
        "{j}"
    );
    assert!(d["message"].as_str().unwrap().contains("TX_AMONT"));
    assert_eq!(d["hint"], "did you mean `TX_AMOUNT`?");
    let good = "rule big {\n  severity high\n  pattern { x: TX_AMOUNT > 200 }\n}\n";
    let (s, j) = call(&a, "POST", "/v1/rules:validate", Some(TOKEN), good).await;
    assert_eq!(s, StatusCode::OK, "{j}");
    assert!(!a.dir.join("big.tl").exists(), "validation writes nothing");

    // Writes need the token.
    let (s, j) = call(&a, "PUT", "/v1/rules/big", None, good).await;
    assert_eq!(
        (s, error_code(&j)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let (s, _) = call(&a, "PUT", "/v1/rules/big", Some("wrong"), good).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, j) = call(&a, "PUT", "/v1/rules/big", Some(TOKEN), bad).await;
    assert_eq!(
        (s, error_code(&j)),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_rules")
    );
    let (s, j) = call(&a, "PUT", "/v1/rules/other", Some(TOKEN), good).await;
    assert_eq!(
        s,
        StatusCode::UNPROCESSABLE_ENTITY,
        "the body must define `other`: {j}"
    );
    assert_eq!(a.changes.load(Ordering::SeqCst), 0);

    let (s, j) = call(&a, "PUT", "/v1/rules/big", Some(TOKEN), good).await;
    assert_eq!(s, StatusCode::CREATED, "{j}");
    assert_eq!(std::fs::read_to_string(a.dir.join("big.tl")).unwrap(), good);
    // The set accepted is the one the service loads from the files (big.tl
    // sorts among them, not last): the same hash, so the file watch sees no
    // further change.
    let from_files =
        tripline::files::load_rules(&[a.dir.as_path()], None, EngineOptions::default()).unwrap();
    assert_eq!(j["rule_set"], format!("{:016x}", from_files.def().hash));
    let (_, list) = call(&a, "GET", "/v1/rules", None, "").await;
    assert_eq!(list["rule_set"], j["rule_set"]);
    assert!(
        list["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "big")
    );
    let (s, _) = call(&a, "PUT", "/v1/rules/big", Some(TOKEN), good).await;
    assert_eq!(s, StatusCode::OK, "replacing");
    assert_eq!(a.changes.load(Ordering::SeqCst), 2);

    // A rule that shares its file is not the API's to delete; the features
    // a model reads cannot go.
    let (s, j) = call(&a, "DELETE", "/v1/rules/customer", Some(TOKEN), "").await;
    assert_eq!((s, error_code(&j)), (StatusCode::CONFLICT, "conflict"));
    let (s, _) = call(&a, "DELETE", "/v1/rules/big", Some(TOKEN), "").await;
    assert_eq!(s, StatusCode::OK);
    assert!(!a.dir.join("big.tl").exists());
    let (s, j) = call(&a, "DELETE", "/v1/rules/big", Some(TOKEN), "").await;
    assert_eq!((s, error_code(&j)), (StatusCode::NOT_FOUND, "not_found"));
    let (s, j) = call(&a, "PUT", "/v1/rules/bad%20name", Some(TOKEN), good).await;
    assert_eq!(
        (s, error_code(&j)),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
}

/// A model's candidate is listed beside it, and promoting it makes it the
/// model: its declaration names the candidate's file, and nothing else in
/// the file changes.
#[tokio::test]
async fn a_models_candidate_is_listed_and_promoted() {
    const DECLARED: &str = "model card_rf from \"../models/card_rf.onnx\"";
    let a = api_with("candidate", with_token(), true, |dir| {
        let models = dir.parent().unwrap().join("models");
        std::fs::copy(
            models.join("card_rf.onnx"),
            models.join("card_rf.next.onnx"),
        )
        .unwrap();
        let file = dir.join("card_model.tl");
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains(DECLARED));
        let text = text.replace(
            DECLARED,
            &format!("{DECLARED}\n  candidate \"../models/card_rf.next.onnx\" # on trial"),
        );
        std::fs::write(file, text).unwrap();
    });
    let before = std::fs::read_to_string(a.dir.join("card_model.tl")).unwrap();
    let (_, list) = call(&a, "GET", "/v1/rules", None, "").await;
    let model = &list["models"][0];
    assert_eq!(model["name"], "card_rf");
    assert!(
        model["candidate"]["file"]
            .as_str()
            .unwrap()
            .ends_with("card_rf.next.onnx"),
        "{model}"
    );
    assert_eq!(model["candidate"]["inputs"], model["inputs"]);

    let (s, j) = call(&a, "POST", "/v1/models/card_rf/promote", None, "").await;
    assert_eq!(
        (s, error_code(&j)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let (s, j) = call(&a, "POST", "/v1/models/nothing/promote", Some(TOKEN), "").await;
    assert_eq!((s, error_code(&j)), (StatusCode::NOT_FOUND, "not_found"));
    let (s, j) = call(&a, "POST", "/v1/models/card_rf/promote", Some(TOKEN), "").await;
    assert_eq!(s, StatusCode::OK, "{j}");
    assert_eq!(j["file"], "card_model.tl");
    let after = std::fs::read_to_string(a.dir.join("card_model.tl")).unwrap();
    assert_eq!(
        after,
        before.replace(
            "\"../models/card_rf.onnx\"\n  candidate \"../models/card_rf.next.onnx\"",
            "\"../models/card_rf.next.onnx\""
        )
    );
    assert!(after.contains("# on trial"), "comments stay");
    assert_eq!(a.changes.load(Ordering::SeqCst), 1);
    let (_, list) = call(&a, "GET", "/v1/rules", None, "").await;
    let model = &list["models"][0];
    assert!(
        model["file"]
            .as_str()
            .unwrap()
            .ends_with("card_rf.next.onnx")
            && model["candidate"].is_null(),
        "{model}"
    );
    assert_eq!(list["rule_set"], j["rule_set"]);
    // Nothing left to promote.
    let (s, j) = call(&a, "POST", "/v1/models/card_rf/promote", Some(TOKEN), "").await;
    assert_eq!(
        (s, error_code(&j)),
        (StatusCode::CONFLICT, "conflict"),
        "{j}"
    );
}

#[tokio::test]
async fn limits_and_closed_reads() {
    let closed = ApiConfig {
        open_reads: false,
        max_body_bytes: 1000,
        ..with_token()
    };
    let a = api("limits", closed, true);
    let (s, j) = call(&a, "GET", "/v1/rules", None, "").await;
    assert_eq!(
        (s, error_code(&j)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    assert_eq!(
        call(&a, "GET", "/v1/rules", Some(TOKEN), "").await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&a, "GET", "/healthz", None, "").await.0,
        StatusCode::OK
    );
    let huge = format!("# {}\n", "x".repeat(5000));
    let (s, j) = call(&a, "POST", "/v1/rules:validate", Some(TOKEN), &huge).await;
    assert_eq!(
        (s, error_code(&j)),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    // No token configured: writes are off.
    let open = api("no-token", ApiConfig::default(), true);
    let (s, j) = call(&open, "DELETE", "/v1/rules/card_model", Some("x"), "").await;
    assert_eq!(
        (s, error_code(&j)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    assert!(Path::new(&open.dir.join("card_model.tl")).exists());
}

/// The next `n` server-sent events of `body`: (id, data).
async fn sse_events(body: &mut Body, n: usize) -> Vec<(u64, Json)> {
    let mut text = String::new();
    let mut events = Vec::new();
    while events.len() < n {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(5), body.frame())
            .await
            .expect("an event within 5 s")
            .expect("the stream goes on")
            .unwrap();
        let Ok(data) = frame.into_data() else {
            continue;
        };
        text.push_str(std::str::from_utf8(&data).unwrap());
        while let Some(end) = text.find("\n\n") {
            let chunk: String = text.drain(..end + 2).collect();
            let field = |name: &str| {
                chunk
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_string())
            };
            if field("event:").as_deref() == Some("alert") {
                let id = field("id:").unwrap().parse().unwrap();
                events.push((id, serde_json::from_str(&field("data:").unwrap()).unwrap()));
            }
        }
    }
    events
}

#[tokio::test]
async fn the_dashboard_page_its_figures_and_the_alert_stream() {
    let a = api("dashboard", ApiConfig::default(), true);
    let page = a
        .router
        .clone()
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&html).contains("<title>tripline</title>"));

    let (s, all) = call(&a, "GET", "/v1/alerts?limit=1000", None, "").await;
    assert_eq!(s, StatusCode::OK);
    let all = all["alerts"].as_array().unwrap().clone();
    let (s, d) = call(&a, "GET", "/v1/dashboard?top=5", None, "").await;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert_eq!(d["alerts_kept"].as_u64(), Some(all.len() as u64));
    // Every rule listed once, the counts adding up to the alerts kept.
    let rules = d["rules"].as_array().unwrap();
    let total: u64 = rules.iter().map(|r| r["alerts"].as_u64().unwrap()).sum();
    assert_eq!(total, all.len() as u64);
    // The shipped feature sets raise no alerts and are not listed.
    for set in ["customer", "terminal"] {
        assert!(rules.iter().all(|r| r["rule"] != set), "{rules:?}");
    }
    assert!(rules.iter().any(|r| r["rule"] == "velocity"));
    for r in rules {
        let name = r["rule"].as_str().unwrap();
        let n = all.iter().filter(|a| a["rule"] == name).count() as u64;
        assert_eq!(r["alerts"].as_u64(), Some(n), "{name}");
    }
    // The riskiest keys, each with the score its own endpoint gives.
    let top = d["top_keys"].as_array().unwrap();
    assert_eq!(top.len(), 5);
    let scores: Vec<f64> = top.iter().map(|k| k["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    let stream = d["stream"].as_str().unwrap();
    for k in top {
        let key = k["key"].as_str().unwrap();
        let (s, j) = call(
            &a,
            "GET",
            &format!("/v1/keys/{stream}/{key}/score"),
            None,
            "",
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(j["score"].as_f64(), k["score"].as_f64(), "{key}");
    }
    assert_eq!(d["partitions"].as_array().map(Vec::len), Some(0));
    let (s, j) = call(&a, "GET", "/v1/dashboard?top=0", None, "").await;
    assert_eq!(
        (s, error_code(&j)),
        (StatusCode::BAD_REQUEST, "bad_request")
    );

    // The stream: the latest 50 first, oldest first; with Last-Event-ID,
    // what follows it.
    let stream_from = |last: Option<u64>| {
        let mut req = Request::get("/v1/alerts/stream");
        if let Some(id) = last {
            req = req.header("last-event-id", id.to_string());
        }
        a.router.clone().oneshot(req.body(Body::empty()).unwrap())
    };
    let resp = stream_from(None).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let n = all.len().min(50);
    let backlog = sse_events(&mut body, n).await;
    let newest: Vec<&Json> = all.iter().take(n).rev().collect();
    let ids: Vec<&Json> = backlog.iter().map(|(_, a)| &a["id"]).collect();
    let want: Vec<&Json> = newest.iter().map(|a| &a["id"]).collect();
    assert_eq!(ids, want);
    let last = backlog.last().unwrap().0;
    let resp = stream_from(Some(last - 3)).await.unwrap();
    let resumed = sse_events(&mut resp.into_body(), 3).await;
    let ids: Vec<u64> = resumed.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, [last - 2, last - 1, last]);
}
