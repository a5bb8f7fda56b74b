//! The service end to end against a real Kafka-protocol broker: the one at
//! `KAFKA_BOOTSTRAP` (CI starts one with `scripts/kafka-broker`; a real Apache
//! Kafka works too), otherwise the embedded broker started in this process.
//! Events go in with a real producer; alerts and dead letters are read back
//! with a read_committed consumer.

use flate2::read::GzDecoder;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tripline::adapters::kafka::{self, service};
use tripline::config::Config;
use tripline::engine::{Engine, EngineOptions, Outputs, RuleSet};

/// Tests pace themselves by the wall clock (waiting for a broker), never
/// judge results by it.
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

fn broker() -> String {
    static BROKER: OnceLock<String> = OnceLock::new();
    BROKER
        .get_or_init(|| match std::env::var("KAFKA_BOOTSTRAP") {
            Ok(b) if !b.is_empty() => b,
            _ => kafka::broker::start("127.0.0.1:0")
                .expect("embedded broker")
                .to_string(),
        })
        .clone()
}

/// A configuration with topics and group of its own, so tests can share a broker.
fn config(test: &str) -> Config {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "{test}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let mut c = Config::default();
    c.kafka.brokers = broker();
    c.kafka.group_id = format!("g-{name}");
    c.kafka.instance_id = name.clone();
    c.kafka.input_topic = format!("{name}.in");
    c.kafka.alerts_topic = format!("{name}.alerts");
    c.kafka.dead_letter_topic = format!("{name}.dlq");
    c.kafka.session_timeout_ms = 6000;
    c.kafka.partitions = 4;
    c.checkpoint.interval_ms = 100;
    c.runtime.shard_threads = 2;
    c
}

struct Input {
    key: Option<String>,
    partition: Option<i32>,
    payload: Option<Vec<u8>>,
}

fn produce(c: &Config, records: &[Input]) {
    let producer: ThreadedProducer<DefaultProducerContext> =
        kafka::client_config(&c.kafka, &broker())
            .set("linger.ms", "5")
            .create()
            .unwrap();
    for r in records {
        let mut rec = BaseRecord::<str, [u8]>::to(&c.kafka.input_topic);
        if let Some(k) = &r.key {
            rec = rec.key(k.as_str());
        }
        if let Some(p) = r.partition {
            rec = rec.partition(p);
        }
        if let Some(v) = &r.payload {
            rec = rec.payload(v.as_slice());
        }
        let mut rec = Some(rec);
        while let Some(x) = rec.take() {
            if let Err((_, x)) = producer.send(x) {
                std::thread::sleep(Duration::from_millis(5));
                rec = Some(x);
            }
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// A committed record read back: key, value, headers.
type ReadRecord = (Option<Vec<u8>>, Vec<u8>, Vec<(String, String)>);

/// Every committed record of `topic`, read until two quiet seconds.
fn read_committed(c: &Config, topic: &str) -> Vec<ReadRecord> {
    let consumer: BaseConsumer = kafka::client_config(&c.kafka, &broker())
        .set("group.id", format!("{}-reader", c.kafka.group_id))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let n = kafka::partition_counts(&c.kafka, &broker(), &[topic]).unwrap()[0].unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..n as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut quiet_since = now();
    while quiet_since.elapsed() < Duration::from_secs(2) {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push((
                m.key().map(<[u8]>::to_vec),
                m.payload().unwrap_or_default().to_vec(),
                headers,
            ));
            quiet_since = now();
        }
    }
    out
}

/// Runs the service until it has committed `produced` input records (and
/// what it forwarded), then stops it.
fn serve_until_caught_up(c: &Config, rules: Arc<RuleSet>, produced: u64) {
    let handle = service::start(c.clone(), broker(), rules).unwrap();
    let started = now();
    while !handle.progress().caught_up(produced) {
        assert!(
            !handle.is_finished(),
            "the service stopped early: {:?}",
            handle.join()
        );
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "not caught up after 300 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    handle.stop();
    handle.join().unwrap();
}

fn sample_lines() -> Vec<String> {
    let f = std::fs::File::open("examples/handbook-sample.jsonl.gz").unwrap();
    BufReader::new(GzDecoder::new(f))
        .lines()
        .map(Result::unwrap)
        .filter(|l| !l.trim().is_empty())
        .collect()
}

/// What `tripline replay --flush` writes for these lines, one JSON alert each.
fn replay(rules: &Arc<RuleSet>, lines: &[String]) -> Vec<String> {
    let mut engine = Engine::new(rules.clone());
    let mut out = Outputs::default();
    for (i, l) in lines.iter().enumerate() {
        engine.on_event(
            rules.decoder.decode(l.as_bytes(), i as u64).unwrap(),
            &mut out,
        );
    }
    engine.finish(&mut out);
    out.alerts.iter().map(|a| a.to_json_line()).collect()
}

fn shipped_rules() -> Arc<RuleSet> {
    RuleSet::load(&[Path::new("rules")], None, EngineOptions::default()).unwrap()
}

#[test]
fn alerts_topic_holds_exactly_what_replay_produces() {
    let c = config("e2e");
    let rules = shipped_rules();
    kafka::ensure_topics(&c.kafka, &broker(), &[&c.kafka.input_topic], 4).unwrap();
    let mut lines = sample_lines();
    let mut input: Vec<Input> = lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Input {
                key: Some(v["CUSTOMER_ID"].to_string()),
                partition: None,
                payload: Some(l.clone().into_bytes()),
            }
        })
        .collect();
    // One event per partition far past the sample moves every partition's
    // watermark beyond every deadline, as `replay --flush` does at the end.
    for p in 0..4 {
        let end = format!(
            r#"{{"TRANSACTION_ID":-{p},"TX_DATETIME":"2018-06-01T00:00:00","CUSTOMER_ID":"end-{p}","TERMINAL_ID":"end-{p}","TX_AMOUNT":0,"TX_TIME_SECONDS":0,"TX_TIME_DAYS":0,"TX_FRAUD":0}}"#
        );
        input.push(Input {
            key: Some(format!("end-{p}")),
            partition: Some(p),
            payload: Some(end.clone().into_bytes()),
        });
        lines.push(end);
    }
    produce(&c, &input);
    serve_until_caught_up(&c, rules.clone(), input.len() as u64);

    let mut expected = replay(&rules, &lines);
    let mut got: Vec<String> = read_committed(&c, &c.kafka.alerts_topic)
        .into_iter()
        .map(|(_, v, _)| String::from_utf8(v).unwrap())
        .collect();
    expected.sort();
    got.sort();
    assert!(
        expected.len() >= 17,
        "the sample gives alerts of several rules"
    );
    assert!(
        expected.iter().any(|a| a.contains("risky_terminal")),
        "a rule keyed by another field is covered"
    );
    assert_eq!(
        got.len(),
        expected.len(),
        "same number of alerts, no duplicates"
    );
    assert_eq!(got, expected);
    assert!(read_committed(&c, &c.kafka.dead_letter_topic).is_empty());
}

#[test]
fn bad_input_is_dead_lettered_with_its_reason_and_processing_goes_on() {
    let mut c = config("dlq");
    c.kafka.partitions = 1;
    let rules = RuleSet::from_source_with(
        "t.tl",
        r#"stream s { key card time ts time format epoch_ms }
           rule big { pattern { b: amount > 100 } }"#,
        None,
        EngineOptions {
            max_record_bytes: 512,
            ..EngineOptions::default()
        },
    )
    .unwrap();
    kafka::ensure_topics(&c.kafka, &broker(), &[&c.kafka.input_topic], 1).unwrap();
    let rec = |payload: &[u8]| Input {
        key: Some("k".into()),
        partition: Some(0),
        payload: Some(payload.to_vec()),
    };
    let huge = format!(r#"{{"card":"c1","ts":1000,"pad":"{}"}}"#, "x".repeat(1000));
    let input = vec![
        rec(br#"{"card":"c1","ts":5000,"amount":500}"#),
        rec(br#"{"card":"c1","ts":"#),
        rec(br#"{"ts":6000,"amount":500}"#),
        rec(br#"{"card":"c1","amount":500}"#),
        rec(br#"{"card":{"id":1},"ts":6000}"#),
        rec(br#"[1,2,3]"#),
        rec(huge.as_bytes()),
        rec(b"{\"card\":\"\xff\",\"ts\":1}"),
        Input {
            key: Some("k".into()),
            partition: Some(0),
            payload: None,
        },
        rec(br#"{"card":"c2","ts":1000,"amount":500}"#),
        rec(br#"{"card":"c3","ts":7000,"amount":700}"#),
    ];
    produce(&c, &input);
    serve_until_caught_up(&c, rules, input.len() as u64);

    let alerts = read_committed(&c, &c.kafka.alerts_topic);
    let keys: Vec<_> = alerts.iter().map(|(k, _, _)| k.clone().unwrap()).collect();
    assert_eq!(
        keys,
        [b"c1".to_vec(), b"c3".to_vec()],
        "good events around bad ones are processed"
    );

    let dead = read_committed(&c, &c.kafka.dead_letter_topic);
    let header = |r: &ReadRecord, k: &str| {
        r.2.iter()
            .find(|(hk, _)| hk == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let got: Vec<(String, String)> = dead
        .iter()
        .map(|r| {
            (
                header(r, "tripline.source.offset"),
                header(r, "tripline.error.kind"),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        (1, "malformed"),
        (2, "malformed"),
        (3, "malformed"),
        (4, "malformed"),
        (5, "malformed"),
        (6, "malformed"),
        (7, "malformed"),
        (8, "malformed"),
        (9, "late"),
    ]
    .iter()
    .map(|(o, k)| (o.to_string(), k.to_string()))
    .collect();
    assert_eq!(got, expected);
    let reasons: Vec<String> = dead
        .iter()
        .map(|r| header(r, "tripline.error.reason"))
        .collect();
    for (i, want) in [
        "malformed JSON",
        "key field `card` is missing",
        "time field `ts` is missing",
        "key field `card` must be",
        "expected an object",
        "exceeds the limit of 512 bytes",
        "not valid UTF-8",
        "no value",
        "at or before the watermark",
    ]
    .iter()
    .enumerate()
    {
        assert!(
            reasons[i].contains(want),
            "reason {i}: {} (want {want})",
            reasons[i]
        );
    }
    // The records are dead-lettered unchanged.
    assert_eq!(dead[5].1, huge.as_bytes());
    assert_eq!(dead[6].1, b"{\"card\":\"\xff\",\"ts\":1}");
    assert_eq!(
        header(&dead[0], "tripline.source.topic"),
        c.kafka.input_topic
    );
}
