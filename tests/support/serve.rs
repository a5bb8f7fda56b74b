//! Running `tripline serve` as a child process on a configuration's broker,
//! group and topics (the rest of its settings are the caller's).
// Shared by several test and bench binaries, each using a part.
#![allow(dead_code)]

use std::process::{Child, Command};
use std::time::Duration;
use tripline::config::Config;

/// `tripline serve` of `c` running the rule files `rules`, with its state
/// in `state` and its log (standard error) in `log`, its API on a port of
/// its choosing (see [`api_address`]) and checkpoints every 100 ms: what the
/// service tests run, before their own settings.
pub fn rules_member(
    c: &Config,
    rules: &std::path::Path,
    state: &std::path::Path,
    log: &std::path::Path,
) -> Command {
    let mut cmd = serve_command(c);
    cmd.env("TRIPLINE__CHECKPOINT__INTERVAL_MS", "100")
        .env("TRIPLINE__API__LISTEN", "127.0.0.1:0")
        .env(
            "TRIPLINE__RULES__PATHS",
            serde_json::to_string(&[rules]).unwrap(),
        )
        .env("TRIPLINE__STATE__DIR", state)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    cmd
}

/// `tripline serve` with the broker, group and topics of `c` in its
/// environment.
pub fn serve_command(c: &Config) -> Command {
    tripline_command(c, "serve")
}

/// `tripline SUBCOMMAND` with the broker, group and topics of `c` in its
/// environment.
pub fn tripline_command(c: &Config, subcommand: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tripline"));
    cmd.arg(subcommand)
        .env("TRIPLINE__KAFKA__BROKERS", &c.kafka.brokers)
        .env("TRIPLINE__KAFKA__GROUP_ID", &c.kafka.group_id)
        .env("TRIPLINE__KAFKA__INPUT_TOPIC", &c.kafka.input_topic)
        .env("TRIPLINE__KAFKA__ALERTS_TOPIC", &c.kafka.alerts_topic)
        .env("TRIPLINE__KAFKA__SHADOW_TOPIC", &c.kafka.shadow_topic)
        .env(
            "TRIPLINE__KAFKA__DEAD_LETTER_TOPIC",
            &c.kafka.dead_letter_topic,
        )
        .env("TRIPLINE__KAFKA__LISTS_TOPIC", &c.kafka.lists_topic);
    cmd
}

/// A `tripline serve` process, stopped with SIGTERM (and waited for) when
/// dropped.
pub struct Terminated(pub Child);

impl Drop for Terminated {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// The Prometheus text the REST API at `api` (`http://host:port`) serves.
pub fn metrics(api: &str) -> String {
    ureq::get(format!("{api}/metrics"))
        .call()
        .expect("GET /metrics")
        .body_mut()
        .read_to_string()
        .expect("the metrics' text")
}

/// The REST API's `host:port`, once the log of `serve` at `log` says it
/// listens (within 60 s).
pub fn api_address(log: &std::path::Path) -> String {
    #[allow(clippy::disallowed_methods)]
    let started = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(at) = text.find("REST API listening on http://") {
            let rest = &text[at + "REST API listening on http://".len()..];
            // Only a whole line: the log may be read while the service is
            // still writing it, and half an address does not resolve.
            if let Some((address, _)) = rest.split_once('\n') {
                return address.trim().to_string();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no API address in:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
