//! `tripline backtest --topic`: the same events read from a topic, on a real
//! Kafka-protocol broker (see `support/kafka.rs`), give the same report as
//! from a file, over a time range.

#[path = "support/kafka.rs"]
mod kafka_support;

use kafka_support::*;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use std::io::BufRead;
use std::process::Command;
use std::time::Duration;
use tripline::adapters::kafka;

#[test]
fn a_backtest_over_a_topic_range_equals_one_over_the_file() {
    let c = config("backtest-topic");
    let _files = TestFiles::of(&c);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let sample = std::fs::File::open(root.join("examples/handbook-sample.jsonl.gz")).unwrap();
    let lines: Vec<String> = std::io::BufReader::new(flate2::read::MultiGzDecoder::new(sample))
        .lines()
        .take(30_000)
        .map(Result::unwrap)
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    // Keyed by card, as producers of the input topic key it: a topic of
    // three partitions interleaves the cards' events in no time order.
    kafka::ensure_topics(&c.kafka, &broker(), &[&c.kafka.input_topic], 3).unwrap();
    let producer: ThreadedProducer<DefaultProducerContext> =
        kafka::client_config(&c.kafka, &broker()).create().unwrap();
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let key = v["CUSTOMER_ID"].to_string();
        let mut record = BaseRecord::<str, str>::to(&c.kafka.input_topic)
            .key(key.as_str())
            .payload(l.as_str());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();

    let run = |input: &[&str]| -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_tripline"))
            .args(["backtest", "--rules", "rules", "--alone"])
            .args([
                "--since",
                "2018-04-02T00:00:00Z",
                "--until",
                "2018-04-04T12:00:00Z",
            ])
            .args(input)
            .env("TRIPLINE__KAFKA__BROKERS", broker())
            .env("TRIPLINE__KAFKA__GROUP_ID", &c.kafka.group_id)
            .current_dir(root)
            .output()
            .expect("run tripline backtest");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(out.status.success(), "{input:?}: {stdout}{stderr}");
        stdout
    };
    let from_file = run(&["--events", file.to_str().unwrap()]);
    let from_topic = run(&["--topic", &c.kafka.input_topic]);
    assert_eq!(from_topic, from_file);
    // The range is applied: the report counts only the events within it.
    let first = from_file.lines().next().unwrap();
    let events: usize = first.split_whitespace().next().unwrap().parse().unwrap();
    assert!(events > 0 && events < lines.len(), "{first}");
    assert!(first.contains("over 3 days"), "{first}");
}
