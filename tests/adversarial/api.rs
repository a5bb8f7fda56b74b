//! Requests: who may compile rules, what rule text may read or cost, and
//! clients that are slow, idle, numerous or from another site.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use serde_json::Value as Json;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;
use tripline::adapters::api::alerts::AlertLog;
use tripline::adapters::api::rules::RuleStore;
use tripline::adapters::api::server::{ServerLimits, serve};
use tripline::adapters::api::{
    ApiConfig, ApiState, Health, KeyLookup, KeyState, LookupError, Readiness, router,
};
use tripline::engine::EngineOptions;

const TOKEN: &str = "s3cret-token";
const STREAM: &str = "stream tx { key CUSTOMER_ID time TX_DATETIME }\n";

struct NoKeys;
impl KeyLookup for NoKeys {
    fn lookup(&self, _: String) -> BoxFuture<'static, Result<KeyState, LookupError>> {
        Box::pin(async { Ok(KeyState::Here(Vec::new())) })
    }
}

struct Ready;
impl Health for Ready {
    fn readiness(&self) -> Readiness {
        Readiness {
            ready: true,
            detail: "test".into(),
        }
    }
}

/// A rules directory with one stream file, beside a models directory; both
/// removed when dropped.
struct Dirs {
    root: PathBuf,
}

impl Dirs {
    fn new(name: &str) -> Dirs {
        let root = std::env::temp_dir().join(format!("tripline-adv-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("rules")).unwrap();
        std::fs::create_dir_all(root.join("models")).unwrap();
        std::fs::write(root.join("rules/stream.tl"), STREAM).unwrap();
        Dirs { root }
    }
    fn rules(&self) -> PathBuf {
        self.root.join("rules")
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn state(dirs: &Dirs, config: ApiConfig) -> ApiState {
    let rules =
        tripline::files::load_rules(&[dirs.rules().as_path()], None, EngineOptions::default())
            .unwrap();
    let store = RuleStore::new(vec![dirs.rules()], None, EngineOptions::default(), rules)
        .models_dir(dirs.root.join("models"));
    ApiState::new(
        config,
        store,
        AlertLog::new(100),
        Arc::new(NoKeys),
        Arc::new(Ready),
    )
}

fn with_token() -> ApiConfig {
    ApiConfig {
        token: Some(TOKEN.into()),
        ..ApiConfig::default()
    }
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, Json) {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Json::Null))
}

const BEARER: (&str, &str) = ("authorization", "Bearer s3cret-token");
const GOOD: &str = "rule big { pattern { t: TX_AMOUNT > 100 } }";

/// Validation compiles what it is sent: a write, with the token, and
/// refused when none is configured. Which routes write is a property of the
/// route: `PUT /v1/rules/x:validate` is a rule change like any other.
#[tokio::test]
async fn validation_is_a_write() {
    let dirs = Dirs::new("validate");
    let app = router(state(&dirs, with_token()));
    let (s, _) = call(&app, "POST", "/v1/rules:validate", &[], GOOD).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, j) = call(&app, "POST", "/v1/rules:validate", &[BEARER], GOOD).await;
    assert_eq!(s, StatusCode::OK, "{j}");
    let (s, _) = call(&app, "PUT", "/v1/rules/x:validate", &[], GOOD).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(!dirs.rules().join("x:validate.tl").exists());
    let open = router(state(&dirs, ApiConfig::default()));
    let (s, j) = call(&open, "POST", "/v1/rules:validate", &[], GOOD).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "no token configured: {j}");
}

/// A page of another site may send a POST (`no-cors`) though it cannot
/// read the answer; a page whose domain resolves to this server (DNS
/// rebinding) names its own host. Both are refused; other clients send
/// neither header.
#[tokio::test]
async fn cross_site_and_rebinding_requests_are_refused() {
    let dirs = Dirs::new("origin");
    let app = router(state(&dirs, with_token()));
    let evil = ("origin", "http://evil.example");
    let (s, j) = call(
        &app,
        "POST",
        "/v1/rules:validate",
        &[BEARER, evil, ("host", "127.0.0.1:8080")],
        GOOD,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{j}");
    let site = ("sec-fetch-site", "cross-site");
    let (s, _) = call(&app, "PUT", "/v1/rules/big", &[BEARER, site], GOOD).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(!dirs.rules().join("big.tl").exists());
    let (s, _) = call(
        &app,
        "GET",
        "/v1/alerts",
        &[("host", "rebind.evil.example:8080")],
        "",
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // The same origin, and the server's own names, are fine.
    let same = [
        BEARER,
        ("origin", "http://127.0.0.1:8080"),
        ("host", "127.0.0.1:8080"),
    ];
    let (s, j) = call(&app, "POST", "/v1/rules:validate", &same, GOOD).await;
    assert_eq!(s, StatusCode::OK, "{j}");
    for host in ["localhost:8080", "[::1]:8080", "10.1.2.3"] {
        let (s, _) = call(&app, "GET", "/v1/alerts", &[("host", host)], "").await;
        assert_eq!(s, StatusCode::OK, "{host}");
    }
    let allowed = router(state(
        &dirs,
        ApiConfig {
            allowed_hosts: vec!["tripline.internal".into()],
            ..with_token()
        },
    ));
    let (s, _) = call(
        &allowed,
        "GET",
        "/v1/alerts",
        &[("host", "tripline.internal")],
        "",
    )
    .await;
    assert_eq!(s, StatusCode::OK);
}

/// `model m from "/dev/zero"` once read until the process had 4 GB, and the
/// error told `/etc/shadow` (exists) from `~/.ssh/id_rsa` (does not). Rule
/// text from the API loads models only from the models directory, only
/// regular files; errors name files as the rule wrote them.
#[tokio::test]
async fn models_load_only_from_the_models_directory() {
    let dirs = Dirs::new("models");
    let app = router(state(&dirs, with_token()));
    let rule =
        |path: &str| format!("model m from \"{path}\"\nrule r {{ pattern {{ t: m > 0.5 }} }}\n");
    let mut messages = Vec::new();
    for path in [
        "/dev/zero",
        "/etc/passwd",
        "/nonexistent/id_rsa",
        "../../../../etc/hostname",
    ] {
        let (s, j) = call(&app, "POST", "/v1/rules:validate", &[BEARER], &rule(path)).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {j}");
        let d = &j["error"]["diagnostics"][0];
        assert_eq!(
            d["file"], "request.tl",
            "named relative to the rules directory"
        );
        let text = d["message"].as_str().unwrap().replace(path, "PATH");
        messages.push(text);
    }
    assert!(
        messages.windows(2).all(|w| w[0] == w[1]),
        "the answer must not depend on what exists: {messages:?}"
    );
    assert!(
        messages[0].contains("outside the models directory"),
        "{}",
        messages[0]
    );
    let root = dirs.root.display().to_string();
    // Inside the directory: a device behind a link is not a regular file.
    std::os::unix::fs::symlink("/dev/zero", dirs.root.join("models/zero.onnx")).unwrap();
    let (s, j) = call(
        &app,
        "POST",
        "/v1/rules:validate",
        &[BEARER],
        &rule("../models/zero.onnx"),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(j.to_string().contains("not a regular file"), "{j}");
    assert!(!j.to_string().contains(&root), "no absolute path in {j}");
}

/// 300 regexes of `[\w\W]{4900}` in 14 KB took 67 s and 1.9 GB: each one
/// and the rule set as a whole now have a memory budget, and the compile is
/// refused with the reason at once.
#[tokio::test]
async fn regexes_have_a_budget_per_rule_set() {
    let dirs = Dirs::new("regex");
    let app = router(state(&dirs, with_token()));
    let mut text = String::new();
    for i in 0..300 {
        text.push_str(&format!(
            "rule r{i} {{ pattern {{ t: MERCHANT matches \"[\\\\w\\\\W]{{4900}}\" }} }}\n"
        ));
    }
    assert!(text.len() < 20_000);
    let (s, j) = call(&app, "POST", "/v1/rules:validate", &[BEARER], &text).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{j}");
    let d = &j["error"]["diagnostics"][0];
    assert!(d["message"].as_str().unwrap().contains("too large"), "{d}");
    // Many small ones are fine until the rule set's budget is spent.
    let (s, j) = call(
        &app,
        "POST",
        "/v1/rules:validate",
        &[BEARER],
        "rule ok { pattern { t: MERCHANT matches \"^shop-[0-9]+$\" } }",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{j}");
}

/// Serves `config` on a real socket with `limits`; returns its address.
async fn server(dirs: &Dirs, config: ApiConfig, limits: ServerLimits) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(state(dirs, config));
    tokio::spawn(serve(listener, app, limits));
    addr
}

/// Reads what the server sends until it closes the connection (or `limit`).
fn read_until_closed(s: &mut std::net::TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, false),
        }
    }
}

/// A client that sends half a request head, or stays idle, is cut off; past
/// the connection cap new connections are told 503 and closed, and the
/// server answers again once they go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_idle_and_numerous_clients_are_bounded() {
    let dirs = Dirs::new("conns");
    let limits = ServerLimits {
        header_timeout: Duration::from_millis(300),
        max_connections: 4,
    };
    let addr = server(&dirs, ApiConfig::default(), limits).await;
    tokio::task::spawn_blocking(move || {
        let mut partial = std::net::TcpStream::connect(addr).unwrap();
        partial
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .unwrap();
        let (_, closed) = read_until_closed(&mut partial, Duration::from_secs(20));
        assert!(closed, "a partial request head is cut off");
        let mut idle = std::net::TcpStream::connect(addr).unwrap();
        let (_, closed) = read_until_closed(&mut idle, Duration::from_secs(20));
        assert!(closed, "an idle connection is cut off");

        let limits_hold: Vec<_> = (0..4)
            .map(|_| {
                let mut c = std::net::TcpStream::connect(addr).unwrap();
                c.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    .unwrap();
                let mut first = [0u8; 12];
                c.read_exact(&mut first).unwrap();
                assert_eq!(&first, b"HTTP/1.1 200");
                c
            })
            .collect();
        let mut over = std::net::TcpStream::connect(addr).unwrap();
        let (answer, closed) = read_until_closed(&mut over, Duration::from_secs(20));
        let answer = String::from_utf8_lossy(&answer);
        assert!(closed && answer.starts_with("HTTP/1.1 503"), "{answer}");
        drop(limits_hold);
        // The slots come back as their connections close.
        let deadline = crate::kafka_support::now() + Duration::from_secs(20);
        loop {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .unwrap();
            let (answer, _) = read_until_closed(&mut c, Duration::from_secs(5));
            if answer.starts_with(b"HTTP/1.1 200") {
                break;
            }
            assert!(crate::kafka_support::now() < deadline, "no slot came back");
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
}

/// Followers of the alert stream are capped: past the cap, 503.
#[tokio::test]
async fn alert_stream_followers_are_capped() {
    let dirs = Dirs::new("sse");
    let app = router(state(
        &dirs,
        ApiConfig {
            max_stream_subscribers: 2,
            ..ApiConfig::default()
        },
    ));
    let open = |app: axum::Router| async move {
        app.oneshot(
            Request::get("/v1/alerts/stream")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap()
    };
    let a = open(app.clone()).await;
    let b = open(app.clone()).await;
    assert_eq!((a.status(), b.status()), (StatusCode::OK, StatusCode::OK));
    let c = open(app.clone()).await;
    assert_eq!(c.status(), StatusCode::SERVICE_UNAVAILABLE);
    drop(a);
    let d = open(app.clone()).await;
    assert_eq!(
        d.status(),
        StatusCode::OK,
        "a follower that left frees its place"
    );
}

/// `PUT` of one changed score once rewrote the rule's whole file, dropping
/// its comments and examples; a rule keyed by another field was accepted
/// (201) and then refused by the service. Now a PUT changes exactly the
/// rule it names, and a change the running service cannot take is 409.
#[tokio::test]
async fn a_rule_change_changes_that_rule_and_nothing_else() {
    let dirs = Dirs::new("put");
    let file = dirs.rules().join("card.tl");
    let original = "# Card rules: owned by the fraud desk.\n\
        rule small { score 10 pattern { t: TX_AMOUNT < 5 } }\n\n\
        rule big { score 20 pattern { t: TX_AMOUNT > 500 } }\n\n\
        example \"one big\" {\n  events \"\"\"\n\
        {\"CUSTOMER_ID\":1,\"TX_DATETIME\":\"2018-04-01T00:00:00Z\",\"TX_AMOUNT\":900}\n\
        \"\"\"\n  expect big 1\n}\n";
    std::fs::write(&file, original).unwrap();
    let state = state(&dirs, with_token());
    let app = router(state);
    let changed = "rule big { score 35 pattern { t: TX_AMOUNT > 500 } }";
    let (s, j) = call(&app, "PUT", "/v1/rules/big", &[BEARER], changed).await;
    assert_eq!(s, StatusCode::OK, "{j}");
    assert_eq!(
        j["file"], "card.tl",
        "named relative to the rules directory"
    );
    let now = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        now,
        original.replace(
            "rule big { score 20 pattern { t: TX_AMOUNT > 500 } }",
            changed
        ),
        "everything but the rule's block is kept byte for byte"
    );
    // Keyed by another field: the running service would need another
    // internal topic. Refused here, with the reason, and nothing written.
    let other = "rule per_terminal { key TERMINAL_ID pattern { t: TX_AMOUNT > 500 } }";
    let (s, j) = call(&app, "PUT", "/v1/rules/per_terminal", &[BEARER], other).await;
    assert_eq!(s, StatusCode::CONFLICT, "{j}");
    assert!(
        j["error"]["message"]
            .as_str()
            .unwrap()
            .contains("TERMINAL_ID"),
        "{j}"
    );
    assert!(!dirs.rules().join("per_terminal.tl").exists());
    let (s, j) = call(&app, "POST", "/v1/rules:validate", &[BEARER], other).await;
    assert_eq!(s, StatusCode::CONFLICT, "validation says the same: {j}");
    let (_, list) = call(&app, "GET", "/v1/rules", &[], "").await;
    let names: Vec<&str> = list["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["small", "big"]);
}
