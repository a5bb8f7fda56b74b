//! A webhook receiver on loopback (axum) whose answers the caller scripts:
//! accept, fail with 500, answer too late, ask to come back later (503
//! with `Retry-After`), or be down altogether (connections refused). It
//! checks every request's signature and records it.
// Shared by several test and bench binaries, each using a part.
#![allow(dead_code)]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tripline::adapters::webhook::sign::SigningKey;

/// How the receiver answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// 204.
    Accept = 0,
    /// 500.
    Fail = 1,
    /// 200, after `slow` (longer than the sender waits).
    Slow = 2,
    /// 503 with `Retry-After: 1`.
    Busy = 3,
    /// 410 (not retried).
    Gone = 4,
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct Received {
    /// `webhook-id`.
    pub id: String,
    /// `Idempotency-Key`.
    pub idempotency_key: String,
    /// Whether `webhook-signature` verified over id, timestamp and body.
    pub signature_ok: bool,
    /// `webhook-timestamp`.
    pub timestamp: String,
    /// `webhook-signature`.
    pub signature: String,
    /// The body as received.
    pub raw: Vec<u8>,
    /// The alert.
    pub body: serde_json::Value,
    /// The status answered.
    pub status: u16,
}

struct Shared {
    mode: AtomicU8,
    key: SigningKey,
    slow: Duration,
    log: Mutex<Vec<Received>>,
    /// Alert ids answered with this mode whatever the receiver's mode.
    special: Mutex<Vec<(String, Mode)>>,
}

/// The receiver; its port stays the same across `down` and `up`.
pub struct Receiver {
    pub port: u16,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Receiver {
    /// Starts accepting on a free loopback port; `secret` verifies signatures.
    pub fn start(secret: &str, slow: Duration) -> Receiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut r = Receiver {
            port,
            shared: Arc::new(Shared {
                mode: AtomicU8::new(Mode::Accept as u8),
                key: SigningKey::from_secret(secret).unwrap(),
                slow,
                log: Mutex::new(Vec::new()),
                special: Mutex::new(Vec::new()),
            }),
            runtime: None,
        };
        r.serve(listener);
        r
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    pub fn set_mode(&self, m: Mode) {
        self.shared.mode.store(m as u8, Ordering::SeqCst);
    }

    /// Answers requests for `alert_id` with `m`, whatever the mode.
    pub fn answer(&self, alert_id: &str, m: Mode) {
        self.shared
            .special
            .lock()
            .unwrap()
            .push((alert_id.to_string(), m));
    }

    /// Forgets the answers set by [`Receiver::answer`].
    pub fn clear_answers(&self) {
        self.shared.special.lock().unwrap().clear();
    }

    /// Stops listening and drops every open connection.
    pub fn down(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }

    /// Listens again on the same port.
    pub fn up(&mut self) {
        let listener = loop {
            match std::net::TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        self.serve(listener);
    }

    fn serve(&mut self, listener: std::net::TcpListener) {
        listener.set_nonblocking(true).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(self.shared.clone());
        rt.spawn(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(l, app).await.ok();
        });
        self.runtime = Some(rt);
    }

    /// Every request so far, in the order answered.
    pub fn requests(&self) -> Vec<Received> {
        self.shared.log.lock().unwrap().clone()
    }

    /// How many requests were answered 2xx.
    pub fn accepted(&self) -> usize {
        let log = self.shared.log.lock().unwrap();
        log.iter()
            .filter(|r| (200..300).contains(&r.status))
            .count()
    }

    /// The ids of alerts answered 2xx, each once, in the order first answered.
    pub fn delivered(&self) -> Vec<String> {
        let mut seen = std::collections::BTreeSet::new();
        self.requests()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status) && seen.insert(r.id.clone()))
            .map(|r| r.id)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.down();
    }
}

fn header(h: &HeaderMap, name: &str) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

async fn hook(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let id = header(&headers, "webhook-id");
    let timestamp: i64 = header(&headers, "webhook-timestamp").parse().unwrap_or(0);
    let signature_ok = s.key.verify(
        &id,
        timestamp,
        &body,
        &header(&headers, "webhook-signature"),
    );
    let special = s
        .special
        .lock()
        .unwrap()
        .iter()
        .find(|(a, _)| *a == id)
        .map(|(_, m)| *m);
    let mode = special.unwrap_or(match s.mode.load(Ordering::SeqCst) {
        0 => Mode::Accept,
        1 => Mode::Fail,
        2 => Mode::Slow,
        3 => Mode::Busy,
        _ => Mode::Gone,
    });
    if mode == Mode::Slow {
        tokio::time::sleep(s.slow).await;
    }
    let status = match mode {
        Mode::Accept => StatusCode::NO_CONTENT,
        Mode::Fail => StatusCode::INTERNAL_SERVER_ERROR,
        Mode::Slow => StatusCode::OK,
        Mode::Busy => StatusCode::SERVICE_UNAVAILABLE,
        Mode::Gone => StatusCode::GONE,
    };
    s.log.lock().unwrap().push(Received {
        id,
        idempotency_key: header(&headers, "idempotency-key"),
        signature_ok,
        timestamp: header(&headers, "webhook-timestamp"),
        signature: header(&headers, "webhook-signature"),
        raw: body.to_vec(),
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        status: status.as_u16(),
    });
    if mode == Mode::Busy {
        return (status, [("retry-after", "1")], "busy").into_response();
    }
    (status, "").into_response()
}
