//! Records through the service on a real broker: one record must never
//! stop its partition.

use crate::kafka_support::*;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tripline::adapters::kafka;
use tripline::engine::RuleSet;

/// Produces `values` to partition 0 of the input, with a producer that
/// takes records of up to 2 MB (as a careless upstream's may).
fn produce_large(c: &tripline::config::Config, values: &[Option<Vec<u8>>]) {
    let producer: ThreadedProducer<DefaultProducerContext> =
        kafka::client_config(&c.kafka, &broker())
            .set("message.max.bytes", "2000000")
            .create()
            .unwrap();
    for v in values {
        let mut r = BaseRecord::<str, [u8]>::to(&c.kafka.input_topic)
            .partition(0)
            .key("k");
        if let Some(v) = v {
            r = r.payload(v.as_slice());
        }
        kafka::send_waiting(&producer, r).unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

fn padded(card: &str, ts: i64, amount: u32, pad: usize) -> Vec<u8> {
    format!(
        r#"{{"card":"{card}","ts":{ts},"amount":{amount},"pad":"{}"}}"#,
        "x".repeat(pad)
    )
    .into_bytes()
}

/// A 1,040,000-byte record that is not JSON, and an alert pairing two
/// 600 KB events, each once made every checkpoint fail (librdkafka refuses
/// records over 1,000,000 bytes), rewinding the partition for ever. Now
/// both commit, bounded, with the records after them, without an abort.
#[test]
fn a_poison_pill_does_not_stop_its_partition() {
    let mut c = config("poison");
    let _files = TestFiles::of(&c);
    c.kafka.partitions = 1;
    let rules = RuleSet::from_source(
        "p.tl",
        r#"stream s { key card time ts time format epoch_ms }
           rule pair { within 1h pattern { a: amount > 100 then b: amount > 100 } }"#,
        None,
    )
    .unwrap();
    kafka::ensure_topics(&c.kafka, &broker(), &[&c.kafka.input_topic], 1).unwrap();
    let values = vec![
        Some(vec![b'#'; 1_040_000]),
        Some(padded("c1", 1_000, 500, 600_000)),
        Some(padded("c1", 2_000, 500, 600_000)),
        None,
        Some(padded("c2", 3_000, 500, 10)),
        Some(padded("c2", 4_000, 500, 10)),
    ];
    produce_large(&c, &values);
    let progress = serve_until_caught_up(&c, rules, values.len() as u64);
    assert_eq!(
        progress.aborts.load(Ordering::SeqCst),
        0,
        "no checkpoint failed"
    );

    let alerts = read_committed(&c, &c.kafka.alerts_topic);
    let keys: Vec<_> = alerts.iter().map(|a| a.0.clone().unwrap()).collect();
    assert_eq!(keys, [b"c1".to_vec(), b"c2".to_vec()]);
    let big: serde_json::Value = serde_json::from_slice(&alerts[0].1).unwrap();
    assert!(alerts[0].1.len() < 1_000_000);
    assert!(
        big["truncated"]["events"].as_u64().unwrap() >= 1,
        "{}",
        big["truncated"]
    );

    let dead = read_committed(&c, &c.kafka.dead_letter_topic);
    let values = read_committed_values(&c, &c.kafka.dead_letter_topic);
    assert_eq!(dead.len(), 2);
    let reason = |i: usize| {
        dead[i]
            .2
            .iter()
            .find(|(k, _)| k == "tripline.error.reason")
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert!(reason(0).contains("1040000 bytes"), "{}", reason(0));
    assert_eq!(values[0], None, "the oversized value is left out");
    assert!(reason(1).contains("no value"), "{}", reason(1));
    assert_eq!(
        values[1], None,
        "a record without a value is dead-lettered as it was"
    );
}
