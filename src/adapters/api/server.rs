//! Serving the API's router on a listener with the limits an exposed
//! server needs, which `axum::serve` does not set: a time limit on reading
//! a request's head (and on an idle keep-alive connection, which hyper
//! times the same way), and a cap on open connections. A slow or idle
//! client holds a socket and a file descriptor; without these a few
//! hundred of them, before any authentication, starve the process of file
//! descriptors and the API of answers.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The server's limits (see `[api]` in `tripline.toml`).
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// How long a client may take to send a request's head, and how long a
    /// kept-alive connection may stay idle between requests.
    pub header_timeout: Duration,
    /// Open connections at most; past it a new connection is answered 503
    /// and closed.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_timeout: Duration::from_secs(10),
            max_connections: 256,
        }
    }
}

/// What a connection past the limit is told before it is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\n\
content-type: application/json\r\ncontent-length: 80\r\nretry-after: 1\r\n\r\n\
{\"error\":{\"code\":\"too_many_connections\",\"message\":\"too many open connections\"}}\n";

/// Serves `app` on `listener` until the listener fails, HTTP/1.1 with
/// `limits`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let (mut socket, _peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) if is_transient(&e) => {
                // Out of file descriptors or a connection reset before it
                // was taken: wait a little rather than spin on the error.
                tracing::warn!("REST API: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), socket.write_all(BUSY)).await;
            });
            continue;
        };
        let _ = socket.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(socket), service)
                .with_upgrades();
            if let Err(e) = connection.await {
                tracing::debug!("REST API connection: {e}");
            }
        });
    }
}

/// Errors of `accept` that concern one connection or a passing shortage,
/// not the listener.
fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock | TimedOut
    ) || e.raw_os_error().is_some_and(|c| c == 23 || c == 24) // ENFILE, EMFILE
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_busy_answer_says_its_length() {
        let text = std::str::from_utf8(super::BUSY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let _: serde_json::Value = serde_json::from_str(body).unwrap();
    }
}
