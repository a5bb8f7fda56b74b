//! Webhook delivery throughput. `tripline serve` delivers alerts committed
//! to its alerts topic (produced there directly, 1,000 keys over 4
//! partitions) to a receiver on loopback that answers at once
//! (`tests/support/receiver.rs`: it checks each signature and records the
//! request); then beside a second endpoint that also answers at once (the
//! cost of a second endpoint on two shared cores); then beside one whose
//! every answer comes 1 s late, which should cost the first no more than a
//! fast one does.
//!
//! `cargo bench --bench webhooks [-- ALERTS]` (default 20,000), against a
//! standalone broker: `KAFKA_BOOTSTRAP=$(scripts/kafka-broker start)`.

#[path = "../tests/support/receiver.rs"]
mod receiver;
#[path = "../tests/support/serve.rs"]
mod serve;
#[path = "support/kafka.rs"]
mod support;

use receiver::{Mode, Receiver};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tripline::adapters::kafka;
use tripline::config::Config;

#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const KEYS: usize = 1_000;

fn endpoint(name: &str, r: &Receiver, timeout_ms: u64) -> String {
    format!(
        r#"{{name = "{name}", url = "{}", secret = "{SECRET}", timeout_ms = {timeout_ms}, max_concurrency = 16}}"#,
        r.url()
    )
}

/// Delivers `alerts` alerts to `fast` (and to `slow` beside it, if given);
/// returns the fast endpoint's deliveries per second from its first to
/// its last, and how many the slow one had by then.
fn run(brokers: &str, alerts: usize, other: Option<Mode>) -> (f64, Duration, usize) {
    let name = match other {
        None => "webhooks",
        Some(Mode::Slow) => "webhooks-slow",
        Some(_) => "webhooks-two",
    };
    let c: Config = support::config(brokers, name, 4);
    let k = &c.kafka;
    kafka::ensure_topics(k, brokers, &[&k.input_topic, &k.alerts_topic], 4).unwrap();
    let p = support::producer(&c);
    for i in 0..alerts {
        let key = (i % KEYS).to_string();
        let body = format!(
            r#"{{"id":"{i:032x}","rule":"velocity","key":{key},"event_time":"2018-04-01T10:00:00Z","severity":"high","score":20,"kind":"match","matches":{{"burst":[{{"TX_AMOUNT":10.5,"CUSTOMER_ID":{key}}}]}},"values":{{"total":10.5}}}}"#
        );
        support::send(&p, &k.alerts_topic, &key, &body);
    }
    rdkafka::producer::Producer::flush(&p, Duration::from_secs(60)).unwrap();
    let fast = Receiver::start(SECRET, Duration::ZERO);
    let second = Receiver::start(SECRET, Duration::from_secs(1));
    let mut endpoints = vec![endpoint("fast", &fast, 5000)];
    if let Some(mode) = other {
        second.set_mode(mode);
        endpoints.push(endpoint("second", &second, 5000));
    }
    let serve = serve::Terminated(
        serve::serve_command(&c)
            .env("TRIPLINE__KAFKA__INSTANCE_ID", &k.instance_id)
            .env("TRIPLINE__STATE__DIR", &c.state.dir)
            .env("TRIPLINE__API__LISTEN", "")
            .env(
                "TRIPLINE__WEBHOOKS__ENDPOINTS",
                format!("[{}]", endpoints.join(", ")),
            )
            .env(
                "TRIPLINE__WEBHOOKS__DEAD_LETTER_TOPIC",
                format!("{}.webhook-dlq", k.group_id),
            )
            .env("TRIPLINE_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = now();
    let mut first = None;
    loop {
        let n = fast.accepted();
        if n > 0 && first.is_none() {
            first = Some(now());
        }
        if n >= alerts {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{n} of {alerts} delivered in 600 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let span = first.unwrap().elapsed();
    drop(serve);
    std::fs::remove_dir_all(&c.state.dir).ok();
    (alerts as f64 / span.as_secs_f64(), span, second.accepted())
}

fn main() {
    let alerts: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    let brokers = std::env::var("KAFKA_BOOTSTRAP")
        .expect("KAFKA_BOOTSTRAP: a broker, e.g. $(scripts/kafka-broker start)");
    for (other, what) in [
        (None, "alone"),
        (Some(Mode::Accept), "beside a second fast endpoint"),
        (Some(Mode::Slow), "beside an endpoint answering 1 s late"),
    ] {
        let (rate, span, second) = run(&brokers, alerts, other);
        println!(
            "webhooks: {alerts} alerts, fast endpoint {what}: {rate:.0} deliveries/s ({:.2} s first to last; the second endpoint had {second} by then)",
            span.as_secs_f64()
        );
    }
}
