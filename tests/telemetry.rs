//! Telemetry end to end: `tripline serve` on a real Kafka-protocol broker
//! (see `support/kafka.rs`), scraped at `/metrics` over HTTP, and exporting
//! OTLP/HTTP to a collector on loopback that decodes what it receives. The
//! figures must agree with what the topics hold.

#[path = "support/kafka.rs"]
mod kafka_support;
#[path = "support/receiver.rs"]
mod receiver;
#[path = "support/serve.rs"]
mod serve_support;

use kafka_support::*;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as Number;
use prost::Message;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use receiver::Receiver;
use serve_support::Terminated;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tripline::adapters::kafka;
use tripline::config::Config;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The samples of a scrape, and its text.
struct Scrape(Vec<prometheus_parse::Sample>, String);

impl Scrape {
    fn get(api: &str) -> Scrape {
        let text = ureq::get(format!("{api}/metrics"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        let lines = text.lines().map(|l| Ok(l.to_string()));
        Scrape(
            prometheus_parse::Scrape::parse(lines).unwrap().samples,
            text,
        )
    }

    /// The samples of `metric` whose labels include every pair of `labels`.
    fn samples<'a>(
        &'a self,
        metric: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a prometheus_parse::Sample> + 'a {
        self.0.iter().filter(move |s| {
            s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
    }

    /// The sum of the values of those samples (`None`: there are none).
    fn sum(&self, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = false;
        let total = self
            .samples(metric, labels)
            .map(|s| {
                found = true;
                match s.value {
                    prometheus_parse::Value::Counter(v)
                    | prometheus_parse::Value::Gauge(v)
                    | prometheus_parse::Value::Untyped(v) => v,
                    _ => 0.0,
                }
            })
            .sum();
        found.then_some(total)
    }
}

/// How many committed records `topic` holds: read until two reads agree
/// (one read stops at two quiet seconds, which a slow fetch can cut short).
fn records_in(c: &Config, topic: &str) -> f64 {
    let mut last = read_committed(c, topic).len();
    loop {
        let n = read_committed(c, topic).len();
        if n == last {
            return n as f64;
        }
        last = n;
    }
}

/// Produces the handbook sample with malformed and late records; returns
/// how many records, malformed, late, and the alerts replay gives for them.
fn produce_sample_with_bad_records(c: &Config) -> (u64, u64, u64, usize) {
    let (mut input, lines) = sample_input(c.kafka.partitions);
    let expected_alerts = replay(&shipped_rules(), &lines).len();
    let malformed = 3;
    for i in 0..malformed {
        input.push(Input {
            key: Some(format!("bad-{i}")),
            partition: Some(i),
            payload: Some(b"{\"TRANSACTION_ID\": oops".to_vec()),
        });
    }
    // After partition 0's closing events (weeks after the sample): late.
    input.push(Input {
        key: Some("end-0".into()),
        partition: Some(0),
        payload: Some(
            br#"{"TRANSACTION_ID":-100,"TX_DATETIME":"2018-04-01T00:00:00","CUSTOMER_ID":"end-0","TERMINAL_ID":"t","TX_AMOUNT":1,"TX_TIME_SECONDS":0,"TX_TIME_DAYS":0,"TX_FRAUD":0}"#
                .to_vec(),
        ),
    });
    kafka::ensure_topics(
        &c.kafka,
        &broker(),
        &[&c.kafka.input_topic],
        c.kafka.partitions,
    )
    .unwrap();
    produce(c, &input);
    (input.len() as u64, malformed as u64, 1, expected_alerts)
}

#[test]
fn metrics_scrape_agrees_with_the_topics() {
    let c = config("metrics");
    let _files = TestFiles::of(&c);
    let receiver = Receiver::start(SECRET, Duration::from_secs(2));
    let (produced, malformed, late, expected_alerts) = produce_sample_with_bad_records(&c);
    // A list with one value on it and one expired, as the API writes them.
    kafka::ensure_topics_with(
        &c.kafka,
        &broker(),
        &[&c.kafka.lists_topic],
        1,
        &[("cleanup.policy", "compact")],
    )
    .unwrap();
    let entry = |value: &str, until: Option<i64>| Input {
        key: Some(format!("blocked\u{0}{value}")),
        partition: None,
        payload: Some(
            serde_json::json!({"list": "blocked", "value": value,
                               "changes": [{"op": "add", "at": 0, "until": until}]})
            .to_string()
            .into_bytes(),
        ),
    };
    produce_to(
        &c,
        &c.kafka.lists_topic,
        &[entry("T1", None), entry("T2", Some(1_000))],
    );
    let log = std::env::temp_dir().join(format!("{}.log", c.kafka.group_id));
    let endpoints = format!(
        r#"[{{name = "desk", url = "{}", secret = "{SECRET}"}}]"#,
        receiver.url()
    );
    let _serve = Terminated(
        serve_support::serve_command(&c)
            .env("TRIPLINE__KAFKA__INSTANCE_ID", &c.kafka.instance_id)
            .env("TRIPLINE__CHECKPOINT__INTERVAL_MS", "100")
            .env("TRIPLINE__API__LISTEN", "127.0.0.1:0")
            .env("TRIPLINE__STATE__DIR", &c.state.dir)
            .env("TRIPLINE__WEBHOOKS__ENDPOINTS", endpoints)
            .env(
                "TRIPLINE__WEBHOOKS__DEAD_LETTER_TOPIC",
                &c.webhooks.dead_letter_topic,
            )
            .env("TRIPLINE__KAFKA__CLIENT__statistics.interval.ms", "500")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let api = format!("http://{}", serve_support::api_address(&log));
    let input = [("topic", c.kafka.input_topic.as_str())];
    // Caught up: every input record counted, nothing behind on any topic
    // (the internal one included), every alert replay gives committed and
    // delivered; then the topics are read and the counters read again.
    let scrape = wait_progressing(
        Duration::from_secs(120),
        || {
            let s = Scrape::get(&api);
            let delivered = s.sum(
                "tripline_webhook_outcomes_total",
                &[("endpoint", "desk"), ("outcome", "delivered")],
            );
            let events_in = s.sum("tripline_events_in_total", &input);
            let alerts = s.sum("tripline_alerts_total", &[]);
            let figure = [events_in, delivered, alerts]
                .iter()
                .map(|v| v.unwrap_or(0.0) as u64)
                .sum();
            let done = events_in == Some(produced as f64)
                && s.sum("tripline_consumer_lag", &[]) == Some(0.0)
                && s.samples("tripline_consumer_lag", &[]).count() == 8
                // Alerts of the terminal-keyed rules fire as the watermark
                // reaches the internal topic's shards, after the last event:
                // caught up is when all of replay's are out, not before.
                && delivered == Some(expected_alerts as f64)
                && alerts == delivered
                && delivered == Some(records_in(&c, &c.kafka.alerts_topic));
            (figure, done.then_some(s))
        },
        |_| {
            let s = Scrape::get(&api);
            format!(
                "not caught up: events in {:?} of {produced}, lag {:?}, alerts {:?}; log:\n{}",
                s.sum("tripline_events_in_total", &input),
                s.samples("tripline_consumer_lag", &[])
                    .map(|s| format!("{:?} {:?}", s.labels, s.value))
                    .collect::<Vec<_>>(),
                s.sum("tripline_alerts_total", &[]),
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        },
    );
    let alerts = records_in(&c, &c.kafka.alerts_topic);
    let dead = records_in(&c, &c.kafka.dead_letter_topic);
    assert_eq!(receiver.delivered().len() as f64, alerts);
    assert!(alerts > 0.0);
    assert_eq!(scrape.sum("tripline_alerts_total", &[]), Some(alerts));
    assert_eq!(
        scrape.sum("tripline_list_size", &[("list", "blocked")]),
        Some(1.0),
        "T1 is on the list, T2 expired"
    );
    assert_eq!(
        scrape.sum("tripline_alert_latency_seconds_count", &[]),
        Some(alerts)
    );
    // Every shipped rule that fired has its series, with a severity.
    for s in scrape.samples("tripline_alerts_total", &[]) {
        assert!(s.labels.get("rule").is_some() && s.labels.get("severity").is_some());
    }
    assert_eq!(
        scrape.sum("tripline_decode_errors_total", &[]),
        Some(malformed as f64)
    );
    assert_eq!(
        scrape.sum("tripline_late_events_total", &[]),
        Some(late as f64)
    );
    assert_eq!(scrape.sum("tripline_dead_letters_total", &[]), Some(dead));
    assert_eq!(dead, (malformed + late) as f64);
    assert_eq!(
        scrape.sum(
            "tripline_webhook_outcomes_total",
            &[("outcome", "delivered")]
        ),
        Some(alerts),
        "every alert delivered once to the one endpoint"
    );
    assert_eq!(
        scrape.sum("tripline_webhook_deliveries", &[("state", "queued")]),
        Some(0.0)
    );
    let checkpoints = scrape.sum("tripline_checkpoints_total", &[]).unwrap();
    assert!(checkpoints >= 1.0);
    assert_eq!(
        scrape.sum("tripline_checkpoint_duration_seconds_count", &[]),
        Some(checkpoints)
    );
    assert!(
        scrape
            .sum("tripline_checkpoint_size_bytes_sum", &[])
            .unwrap()
            > 0.0
    );
    assert_eq!(
        scrape.sum("tripline_transaction_aborts_total", &[]),
        Some(0.0)
    );
    // Per input partition: lag and watermark delay (the sample ends in
    // 2018, so its watermark is years behind the wall clock).
    for p in 0..c.kafka.partitions {
        let part = p.to_string();
        let labels = [input[0], ("partition", part.as_str())];
        assert_eq!(scrape.sum("tripline_consumer_lag", &labels), Some(0.0));
        assert!(
            scrape
                .sum("tripline_watermark_delay_seconds", &labels)
                .unwrap()
                > 86_400.0 * 365.0
        );
        assert!(scrape.sum("tripline_events_in_total", &labels).unwrap() > 0.0);
    }
    assert!(scrape.sum("tripline_keys_resident", &[]).unwrap() > 100.0);
    assert_eq!(scrape.sum("tripline_keys_passivated", &[]), Some(0.0));
    assert!(scrape.sum("tripline_partial_matches", &[]).is_some());
    assert!(
        scrape
            .sum("tripline_backpressure_pauses_total", &[])
            .is_some()
    );
    assert_eq!(
        scrape.sum("tripline_partitions_assigned", &[]),
        Some(f64::from(c.kafka.partitions) * 2.0),
        "the input's partitions and those of the terminal-keyed internal topic"
    );
    // API latency, per route pattern (not per path).
    let key = ureq::get(format!("{api}/v1/keys/transactions/42/score")).call();
    assert!(key.is_ok() || matches!(key, Err(ureq::Error::StatusCode(_))));
    let after = Scrape::get(&api);
    // (The parser does not take braces inside label values, which route
    // patterns have: this one is looked for in the text.)
    assert!(
        after.1.lines().any(|l| {
            l.starts_with("tripline_api_request_duration_seconds_count{")
                && l.contains(r#"route="/v1/keys/{stream}/{key}/score""#)
                && l.contains(r#"method="GET""#)
        }),
        "{}",
        after.1
    );
    assert!(
        after
            .sum(
                "tripline_api_request_duration_seconds_count",
                &[("route", "/metrics")]
            )
            .is_some_and(|n| n >= 1.0)
    );
    std::fs::remove_dir_all(&c.state.dir).ok();
    std::fs::remove_file(&log).ok();
}

/// What the collector received.
#[derive(Default)]
struct Received {
    metrics: Vec<ExportMetricsServiceRequest>,
    traces: Vec<ExportTraceServiceRequest>,
}

/// An OTLP/HTTP collector (protobuf) on loopback; returns its base URL.
fn collector(received: Arc<Mutex<Received>>) -> String {
    use axum::body::Bytes;
    use axum::routing::post;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (m, t) = (received.clone(), received);
    let app = axum::Router::new()
        .route(
            "/v1/metrics",
            post(move |body: Bytes| async move {
                let req = ExportMetricsServiceRequest::decode(body).unwrap();
                m.lock().unwrap().metrics.push(req);
                ""
            }),
        )
        .route(
            "/v1/traces",
            post(move |body: Bytes| async move {
                let req = ExportTraceServiceRequest::decode(body).unwrap();
                t.lock().unwrap().traces.push(req);
                ""
            }),
        );
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let l = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(l, app).await.unwrap();
            });
    });
    url
}

/// The latest cumulative value of the sum `name` with attribute
/// `topic` = `topic`, over every export received.
fn latest_sum(r: &Received, name: &str, topic: &str) -> Option<i64> {
    let mut latest = None;
    for req in &r.metrics {
        let mut total = None;
        for rm in &req.resource_metrics {
            for sm in &rm.scope_metrics {
                for m in sm.metrics.iter().filter(|m| m.name == name) {
                    let Some(Data::Sum(sum)) = &m.data else {
                        continue;
                    };
                    for p in &sum.data_points {
                        let of_topic = p.attributes.iter().any(|a| {
                            a.key == "topic"
                                && a.value.as_ref().and_then(|v| v.value.as_ref())
                                    == Some(&AnyValue::StringValue(topic.to_string()))
                        });
                        if let (true, Some(Number::AsInt(v))) = (of_topic, p.value) {
                            *total.get_or_insert(0) += v;
                        }
                    }
                }
            }
        }
        latest = total.or(latest);
    }
    latest
}

#[test]
fn otlp_exports_metrics_and_traces_to_a_collector() {
    let c = config("otlp");
    let _files = TestFiles::of(&c);
    let received = Arc::new(Mutex::new(Received::default()));
    let url = collector(received.clone());
    let rules = std::env::temp_dir().join(format!("{}.rules", c.kafka.group_id));
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("big.tl"),
        "stream payments { key card  time ts  time format epoch_ms  lateness 0s }\n\
         rule big { severity high pattern { b: amount > 100 } }\n",
    )
    .unwrap();
    // One event carries a trace from its producer; it is the one that alerts.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let producer: ThreadedProducer<DefaultProducerContext> =
        kafka::client_config(&c.kafka, &broker()).create().unwrap();
    kafka::ensure_topics(&c.kafka, &broker(), &[&c.kafka.input_topic], 4).unwrap();
    let events = 40;
    for i in 0..events {
        let amount = if i == 20 { 500 } else { 10 };
        let payload = format!(
            r#"{{"card":"c{}","ts":{},"amount":{amount}}}"#,
            i % 4,
            1000 * i
        );
        let key = format!("c{}", i % 4);
        let mut r = BaseRecord::<str, str>::to(&c.kafka.input_topic)
            .key(&key)
            .payload(&payload);
        if i == 20 {
            r = r.headers(OwnedHeaders::new().insert(Header {
                key: "traceparent",
                value: Some(parent.as_str()),
            }));
        }
        kafka::send_waiting(&producer, r).unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let log = std::env::temp_dir().join(format!("{}.log", c.kafka.group_id));
    let serve = Terminated(
        serve_support::serve_command(&c)
            .env("TRIPLINE__KAFKA__INSTANCE_ID", &c.kafka.instance_id)
            .env(
                "TRIPLINE__RULES__PATHS",
                format!("[\"{}\"]", rules.display()),
            )
            .env("TRIPLINE__CHECKPOINT__INTERVAL_MS", "100")
            .env("TRIPLINE__API__LISTEN", "127.0.0.1:0")
            .env("TRIPLINE__STATE__DIR", &c.state.dir)
            .env("TRIPLINE__TELEMETRY__OTLP_ENDPOINT", &url)
            .env("TRIPLINE__TELEMETRY__OTLP_INTERVAL_MS", "300")
            .env("TRIPLINE__TELEMETRY__TRACE_SAMPLE_RATIO", "0")
            .env("TRIPLINE__TELEMETRY__LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let api = format!("http://{}", serve_support::api_address(&log));
    let started = now();
    while latest_sum(
        &received.lock().unwrap(),
        "tripline_events_in",
        &c.kafka.input_topic,
    ) != Some(events)
    {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the collector did not receive all events in; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    ureq::get(format!("{api}/v1/alerts")).call().unwrap();
    // Stopping flushes the spans still batched.
    drop(serve);

    let r = received.lock().unwrap();
    let service_name = r.metrics[0].resource_metrics[0]
        .resource
        .as_ref()
        .unwrap()
        .attributes
        .iter()
        .find(|a| a.key == "service.name")
        .and_then(|a| a.value.clone())
        .and_then(|v| v.value);
    assert_eq!(service_name, Some(AnyValue::StringValue("tripline".into())));
    let spans: Vec<_> = r
        .traces
        .iter()
        .flat_map(|t| &t.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .collect();
    let named = |n: &'static str| spans.iter().filter(move |s| s.name == n);
    assert!(named("tripline.checkpoint").count() >= 1);
    assert!(named("tripline.api").count() >= 1);
    let trace = hex(trace_id);
    // Only the event with a sampled traceparent was traced (ratio 0): its
    // span continues the producer's trace, and the alert's commit is its child.
    let event: Vec<_> = named("tripline.event").collect();
    assert_eq!(event.len(), 1, "{event:?}");
    assert_eq!(event[0].trace_id, trace);
    assert_eq!(event[0].parent_span_id, hex("00f067aa0ba902b7"));
    let commit: Vec<_> = named("tripline.alert.commit").collect();
    assert_eq!(commit.len(), 1);
    assert_eq!(commit[0].trace_id, trace);
    assert_eq!(commit[0].parent_span_id, event[0].span_id);
    // The alert's record carries the trace on.
    let alerts = read_committed(&c, &c.kafka.alerts_topic);
    assert_eq!(alerts.len(), 1);
    let header = alerts[0]
        .2
        .iter()
        .find(|(k, _)| k == "traceparent")
        .map(|(_, v)| v.clone())
        .expect("a traceparent header on the alert");
    assert!(header.starts_with(&format!("00-{trace_id}-")), "{header}");
    // JSON logs: every line of the log is one JSON object.
    let text = std::fs::read_to_string(&log).unwrap();
    let json_lines = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .inspect(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert!(v["level"].is_string() && v["message"].is_string(), "{l}");
        })
        .count();
    assert!(json_lines > 3);
    std::fs::remove_dir_all(&c.state.dir).ok();
    std::fs::remove_dir_all(&rules).ok();
    std::fs::remove_file(&log).ok();
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
