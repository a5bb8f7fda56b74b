//! The service end to end against a real Kafka-protocol broker (see
//! `support/kafka.rs`). Events go in with a real producer; alerts and dead
//! letters are read back with a read_committed consumer.

#[path = "support/kafka.rs"]
mod kafka_support;

use kafka_support::*;
use tripline::adapters::kafka;
use tripline::engine::{EngineOptions, RuleSet};

#[test]
fn alerts_topic_holds_exactly_what_replay_produces() {
    let c = config("e2e");
    let _files = TestFiles::of(&c);
    let rules = shipped_rules();
    kafka::ensure_topics(&c.kafka, &broker(), &[&c.kafka.input_topic], 4).unwrap();
    let (input, lines) = sample_input(4);
    produce(&c, &input);
    serve_until_caught_up(&c, rules.clone(), input.len() as u64);

    let mut expected = replay(&rules, &lines);
    let got = committed_alerts(&c);
    expected.sort();
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
fn a_full_shard_pauses_its_partition_and_nothing_is_lost() {
    let mut c = config("pause");
    let _files = TestFiles::of(&c);
    // A shard that holds one small batch and a coordinator that does not
    // wait for room: every fetch burst overfills the shard, so partitions
    // are paused and resumed (re-fetching what was dropped) all along.
    c.runtime.batch_size = 128;
    c.runtime.max_queued_batches = 1;
    c.runtime.full_shard_wait_ms = 0;
    let rules = shipped_rules();
    kafka::ensure_topics(&c.kafka, &broker(), &[&c.kafka.input_topic], 2).unwrap();
    let (input, lines) = sample_head_input(2, 10_000);
    produce(&c, &input);
    let progress = serve_until_caught_up(&c, rules.clone(), input.len() as u64);

    let pauses = progress
        .backpressure_pauses
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(pauses > 0, "the shards were never full");
    let mut expected = replay(&rules, &lines);
    expected.sort();
    assert!(!expected.is_empty());
    assert_eq!(committed_alerts(&c), expected, "after {pauses} pauses");
    assert!(read_committed(&c, &c.kafka.dead_letter_topic).is_empty());
}

#[test]
fn bad_input_is_dead_lettered_with_its_reason_and_processing_goes_on() {
    let mut c = config("dlq");
    let _files = TestFiles::of(&c);
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

/// The REST API finds a key's partition as the input's producers chose it:
/// both partitioners agree with librdkafka's own on a real topic.
#[test]
fn key_partitions_agree_with_the_producers_partitioner() {
    use kafka::owners::Partitioner;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let c = config("partitioner");
    let _files = TestFiles::of(&c);
    let topic = format!("{}.keys", c.kafka.input_topic);
    kafka::ensure_topics(&c.kafka, &broker(), &[&topic], 7).unwrap();
    for (name, partitioner) in [
        ("consistent_random", Partitioner::Consistent),
        ("murmur2_random", Partitioner::Murmur2),
    ] {
        let producer: FutureProducer = kafka::client_config(&c.kafka, &broker())
            .set("partitioner", name)
            .create()
            .unwrap();
        let mut spread = std::collections::BTreeSet::new();
        for i in 0..200 {
            let key = format!("card-{i}");
            let record = FutureRecord::to(&topic).key(key.as_str()).payload("{}");
            let delivered = futures::executor::block_on(
                producer.send(record, std::time::Duration::from_secs(10)),
            )
            .unwrap();
            assert_eq!(
                partitioner.partition(key.as_bytes(), 7),
                delivered.partition,
                "{name}: key {key}"
            );
            spread.insert(delivered.partition);
        }
        assert_eq!(spread.len(), 7, "{name}: keys reach every partition");
    }
}

/// A changelog read waits for an open transaction of another producer (a
/// member that lost the partition and has not noticed) instead of stopping
/// at it: the records committed after it are part of the state.
#[test]
fn a_restore_reads_past_another_producers_open_transaction() {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    use std::time::Duration;
    use tripline::adapters::kafka::changelog::KafkaChangelog;
    use tripline::coordinator::{ChangelogEvent, ChangelogReader};

    let c = config("restore-lso");
    let brokers = broker();
    let topic = format!("{}.state", c.kafka.group_id);
    kafka::ensure_topics(&c.kafka, &brokers, &[&topic], 1).unwrap();
    let producer = |id: &str| -> ThreadedProducer<DefaultProducerContext> {
        let p: ThreadedProducer<DefaultProducerContext> = kafka::client_config(&c.kafka, &brokers)
            .set("transactional.id", format!("{}-{id}", c.kafka.group_id))
            .create()
            .unwrap();
        p.init_transactions(Duration::from_secs(30)).unwrap();
        p
    };
    let send = |p: &ThreadedProducer<DefaultProducerContext>, key: &str| {
        p.send(
            BaseRecord::<str, str>::to(&topic)
                .partition(0)
                .key(key)
                .payload("v"),
        )
        .map_err(|(e, _)| e)
        .unwrap();
        p.flush(Duration::from_secs(30)).unwrap();
    };
    let zombie = producer("zombie");
    zombie.begin_transaction().unwrap();
    send(&zombie, "left-open");
    let owner = producer("owner");
    owner.begin_transaction().unwrap();
    send(&owner, "committed-after");
    owner.commit_transaction(Duration::from_secs(30)).unwrap();
    // The zombie notices a second later and aborts.
    let aborter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        zombie.abort_transaction(Duration::from_secs(30)).unwrap();
    });

    let mut reader = KafkaChangelog::new(c.kafka.clone(), brokers.clone());
    let mut keys = Vec::new();
    let mut end = None;
    reader
        .read(&topic, &[(0, None)], &mut |event| {
            match event {
                ChangelogEvent::Record { key, .. } => {
                    keys.push(String::from_utf8_lossy(key.unwrap_or_default()).into_owned());
                }
                ChangelogEvent::End(_, at) => end = Some(at),
                ChangelogEvent::Reset(_) | ChangelogEvent::Waiting => {}
            }
            Ok(())
        })
        .unwrap();
    aborter.join().unwrap();
    assert_eq!(
        keys,
        ["committed-after"],
        "the aborted record is skipped, the committed one read"
    );
    assert!(end.is_some_and(|e| e >= 2), "read to the end: {end:?}");
}

/// The feature log holds every event's features exactly once per keying
/// (the card shard's and the terminal shard's), with the copied fields,
/// and merged by transaction they are what `replay --features` computes.
#[test]
fn the_feature_log_holds_each_events_features_once_as_replay_computes_them() {
    let mut c = config("features");
    let _files = TestFiles::of(&c);
    c.feature_log.topic = format!("{}.features", c.kafka.group_id);
    c.feature_log.fields = vec!["TRANSACTION_ID".into(), "TX_AMOUNT".into()];
    let rules = shipped_rules();
    kafka::ensure_topics(&c.kafka, &broker(), &[&c.kafka.input_topic], 4).unwrap();
    let (input, lines) = sample_head_input(4, 5_000);
    produce(&c, &input);
    serve_until_caught_up(&c, rules.clone(), input.len() as u64);

    // What replay computes, by transaction.
    let mut engine = tripline::engine::Engine::new(rules.clone()).collect_features();
    let mut out = tripline::engine::Outputs::default();
    for (i, l) in lines.iter().enumerate() {
        engine.on_event(
            rules.decoder().decode(l.as_bytes(), i as u64).unwrap(),
            &mut out,
        );
    }
    engine.finish(&mut out);
    let columns = rules.feature_columns();
    let mut expected = std::collections::BTreeMap::new();
    for row in &out.features {
        let event: serde_json::Value = serde_json::from_str(&row.event.raw).unwrap();
        let features: serde_json::Map<String, serde_json::Value> = columns
            .iter()
            .zip(&row.values)
            .map(|(c, v)| (c.to_string(), v.to_json()))
            .collect();
        expected.insert(event["TRANSACTION_ID"].to_string(), (event, features));
    }

    let rows = read_committed(&c, &c.feature_log.topic);
    let mut merged: std::collections::BTreeMap<String, (usize, serde_json::Map<_, _>)> =
        std::collections::BTreeMap::new();
    for (key, value, _) in &rows {
        let row: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(value).unwrap();
        let id = row["TRANSACTION_ID"].to_string();
        let (event, _) = &expected[&id];
        let card = match &event["CUSTOMER_ID"] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        assert_eq!(
            key.as_deref(),
            Some(card.as_bytes()),
            "keyed by the stream key"
        );
        for field in ["TRANSACTION_ID", "TX_AMOUNT", "CUSTOMER_ID", "TX_DATETIME"] {
            assert_eq!(row[field], event[field], "{field} copied as it arrived");
        }
        let entry = merged.entry(id).or_default();
        entry.0 += 1;
        for (name, v) in row {
            if columns.iter().any(|c| **c == *name) {
                assert!(
                    entry.1.insert(name.clone(), v).is_none(),
                    "{name} written twice"
                );
            }
        }
    }
    assert_eq!(merged.len(), expected.len(), "every event has rows");
    for (id, (count, features)) in &merged {
        assert_eq!(
            *count, 2,
            "transaction {id}: one row per keying (card, terminal)"
        );
        // Equal up to the rounding of a running sum, which depends on when
        // old events leave the window (the shard's watermark, not replay's).
        let want = &expected[id].1;
        assert_eq!(
            features.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "transaction {id}"
        );
        for (name, v) in features {
            let (a, b) = (v.as_f64(), want[name].as_f64());
            let close = match (a, b) {
                (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0),
                _ => v == &want[name],
            };
            assert!(
                close,
                "transaction {id}, {name}: {v} in the log, {} by replay",
                want[name]
            );
        }
    }
}
