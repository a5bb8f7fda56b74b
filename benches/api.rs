//! REST API latency while the service consumes at full speed, with the load
//! from a second process: `wrk` (Debian package `wrk`) on loopback asks
//! `GET /v1/keys/synthetic/{key}/score` for keys spread over the stream's
//! 10,000 keys, first while `tripline serve` works through a backlog of the
//! synthetic stream (benches/abc_10m.tl), then once it has caught up.
//!
//! `cargo bench --bench api [-- EVENTS]` (default 1,500,000 events; more
//! keep the service busy for longer). Run it against a standalone broker,
//! `KAFKA_BOOTSTRAP=$(scripts/kafka-broker start)`; `WRK_SECONDS` (default
//! 10) and `WRK_CONNECTIONS` (default 8) set the load.

#[path = "../tests/support/serve.rs"]
mod serve;
#[path = "support/kafka.rs"]
mod support;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tripline::adapters::kafka;
use tripline::config::Config;

#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

const PARTITIONS: i32 = 4;
const KEYS: u64 = 10_000;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Starts `tripline serve` on the bench's topics; returns it and its API.
fn serve(c: &Config) -> (serve::Terminated, String) {
    let mut child = serve::serve_command(c)
        .env("TRIPLINE__KAFKA__INSTANCE_ID", &c.kafka.instance_id)
        .env("TRIPLINE__KAFKA__SESSION_TIMEOUT_MS", "6000")
        .env("TRIPLINE__RULES__PATHS", "[\"benches/abc_10m.tl\"]")
        .env("TRIPLINE__STATE__DIR", &c.state.dir)
        .env("TRIPLINE__API__LISTEN", "127.0.0.1:0")
        .env("TRIPLINE_LOG", "warn")
        // The test broker answers a fetch with all it holds past the offset,
        // whatever the request's size limits; a backlog of millions of
        // events exceeds librdkafka's default limit on a response (100 MB).
        .env(
            "TRIPLINE__KAFKA__CLIENT__receive.message.max.bytes",
            "2000000000",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tripline serve");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let api = loop {
        let line = lines
            .next()
            .expect("tripline serve ended before its API started")
            .unwrap();
        if let Some(a) = line.strip_prefix("REST API listening on ") {
            break a.trim().to_string();
        }
    };
    // Keep draining its stderr (warnings and errors only) so that it never
    // blocks on a full pipe, and so that a stall can be diagnosed.
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            eprintln!("serve: {line}");
        }
    });
    (serve::Terminated(child), api)
}

/// Offsets the group has committed, summed over the input's partitions.
fn committed(c: &Config, reader: &BaseConsumer) -> i64 {
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(&c.kafka.input_topic, p);
    }
    let got = reader
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    got.elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}

/// Records of the input partitions the service has yet to read, by its
/// dashboard (`None`: not known yet for every partition). The group's
/// committed offsets cannot say: they stop at the earliest event waiting
/// for the watermark, which the service has read.
fn backlog(agent: &ureq::Agent, api: &str, topic: &str) -> Option<i64> {
    let body: serde_json::Value = agent
        .get(format!("{api}/v1/dashboard"))
        .call()
        .ok()?
        .body_mut()
        .read_json()
        .ok()?;
    let lags: Vec<i64> = body["partitions"]
        .as_array()?
        .iter()
        .filter(|p| p["topic"] == topic)
        .map(|p| p["lag"].as_i64())
        .collect::<Option<_>>()?;
    (lags.len() == PARTITIONS as usize).then(|| lags.iter().sum())
}

/// The Lua script: rotating keys, and percentiles (µs) printed at the end.
const WRK_SCRIPT: &str = r#"
local n = 0
request = function()
  n = n + 1
  local key = (n * 7919) % 10000
  return wrk.format("GET", "/v1/keys/synthetic/" .. key .. "/score")
end
local statuses = {}
response = function(status)
  statuses[status] = (statuses[status] or 0) + 1
end
done = function(summary, latency, requests)
  for _, p in ipairs({50, 90, 99, 99.9}) do
    io.write(string.format("p%s %d\n", p, latency:percentile(p)))
  end
  io.write(string.format("requests %d\n", summary.requests))
  io.write(string.format("errors %d\n", summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout))
end
"#;

struct Load {
    requests: u64,
    errors: u64,
    percentiles: Vec<(String, f64)>,
}

fn wrk(api: &str, seconds: u64, connections: u64) -> Load {
    let script =
        std::env::temp_dir().join(format!("tripline-api-bench-{}.lua", std::process::id()));
    std::fs::write(&script, WRK_SCRIPT).unwrap();
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "-s",
            script.to_str().unwrap(),
            api,
        ])
        .output()
        .expect("wrk (apt-get install wrk)");
    std::fs::remove_file(&script).ok();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut load = Load {
        requests: 0,
        errors: 0,
        percentiles: Vec::new(),
    };
    for line in text.lines() {
        let mut f = line.split_whitespace();
        match (f.next(), f.next().and_then(|v| v.parse::<f64>().ok())) {
            (Some("requests"), Some(v)) => load.requests = v as u64,
            (Some("errors"), Some(v)) => load.errors = v as u64,
            (Some(p), Some(v)) if p.starts_with('p') => load.percentiles.push((p.into(), v)),
            _ => {}
        }
    }
    assert!(!load.percentiles.is_empty(), "wrk said:\n{text}");
    load
}

fn report(what: &str, load: &Load, seconds: u64) {
    let ps: Vec<String> = load
        .percentiles
        .iter()
        .map(|(p, us)| format!("{p} {:.2} ms", us / 1000.0))
        .collect();
    println!(
        "  {what}: {:.0} requests/s, {} ({} errors)",
        load.requests as f64 / seconds as f64,
        ps.join(", "),
        load.errors
    );
}

fn main() {
    let events: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_500_000);
    let seconds = env_or("WRK_SECONDS", 10);
    let connections = env_or("WRK_CONNECTIONS", 8);
    let brokers = support::brokers();
    let c = support::config(&brokers, "api", PARTITIONS);
    kafka::ensure_topics(&c.kafka, &brokers, &[&c.kafka.input_topic], PARTITIONS).unwrap();
    eprintln!("producing {events} events");
    support::produce_stream(&c, events, KEYS);
    eprintln!("produced; starting tripline serve");
    let reader: BaseConsumer = kafka::client_config(&c.kafka, &brokers)
        .set("group.id", &c.kafka.group_id)
        .create()
        .unwrap();

    let (served, api) = serve(&c);
    // Ready: partitions assigned and restored; consumption has begun.
    let agent = ureq::Agent::new_with_defaults();
    let started = now();
    while agent.get(&format!("{api}/readyz")).call().is_err() {
        assert!(started.elapsed() < Duration::from_secs(60), "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("ready at {api}; load while consuming");
    let (t0, before) = (now(), committed(&c, &reader));
    let busy = wrk(&api, seconds, connections);
    let (wall, after) = (t0.elapsed().as_secs_f64(), committed(&c, &reader));
    let topic = c.kafka.input_topic.as_str();
    assert!(
        backlog(&agent, &api, topic) != Some(0),
        "the service caught up during the load run: use more events"
    );
    // Then the same load on a service with nothing left to consume.
    eprintln!("waiting for the service to catch up");
    let (mut last, mut progressed) = (after, now());
    while backlog(&agent, &api, topic) != Some(0) {
        let done = committed(&c, &reader);
        if done > last {
            (last, progressed) = (done, now());
        }
        assert!(
            progressed.elapsed() < Duration::from_secs(120),
            "no progress for 2 minutes at {done} of {events} committed events"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let idle = wrk(&api, seconds, connections);

    println!(
        "api under load: wrk -t1 -c{connections} -d{seconds}s on GET /v1/keys/synthetic/{{key}}/score ({KEYS} keys), {events} events backlog over {PARTITIONS} partitions"
    );
    report("while consuming", &busy, seconds);
    println!(
        "    the service meanwhile committed {:.0} events/s",
        (after - before) as f64 / wall
    );
    report("after catching up", &idle, seconds);
    drop(served);
    std::fs::remove_dir_all(&c.state.dir).ok();
}
