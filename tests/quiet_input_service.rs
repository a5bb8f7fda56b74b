//! A quiet input in the service, on a real Kafka-protocol broker (see
//! `support/kafka.rs`): an event waiting for the watermark (`lateness`) is
//! shown as waiting on the dashboard, and with `advance after` its alert
//! comes once the partition has been quiet that long, with no later event.

#[path = "support/kafka.rs"]
mod kafka_support;
#[path = "support/serve.rs"]
mod serve_support;

use kafka_support::*;
use serve_support::{Terminated, api_address, rules_member};
use std::time::Duration;
use tripline::adapters::kafka;

#[test]
fn a_quiet_partition_raises_its_alert_after_advance_after() {
    let c = config("quiet");
    let _files = TestFiles::of(&c);
    kafka::ensure_topics(&c.kafka, &broker(), &[&c.kafka.input_topic], 1).unwrap();
    let rules = std::env::temp_dir().join(format!("{}-rules.tl", c.kafka.group_id));
    std::fs::write(
        &rules,
        "stream s { key card  time t  time format epoch_ms  lateness 5s  advance after 1s }\n\
         rule big { pattern { b: amount > 600 } }\n",
    )
    .unwrap();
    let log = std::env::temp_dir().join(format!("{}.log", c.kafka.group_id));
    let state = std::env::temp_dir().join(format!("{}.state", c.kafka.group_id));
    let member = Terminated(
        rules_member(&c, &rules, &state, &log)
            .spawn()
            .expect("tripline serve starts"),
    );
    let api = format!("http://{}", api_address(&log));
    let waiting = || -> Option<u64> {
        let d: serde_json::Value = ureq::get(format!("{api}/v1/dashboard"))
            .call()
            .ok()?
            .body_mut()
            .read_json()
            .ok()?;
        d["partitions"][0]["waiting_events"].as_u64()
    };

    // One approval of 650 and nothing after it.
    let t = tripline::telemetry::now_ms();
    produce(
        &c,
        &[Input {
            key: Some("7".into()),
            partition: Some(0),
            payload: Some(format!(r#"{{"card":7,"t":{t},"amount":650}}"#).into_bytes()),
        }],
    );
    // It waits for the watermark for the 5 s of lateness (the partition
    // being quiet, event time moves with the clock after 1 s)...
    let mut seen_waiting = false;
    let alerts = wait_progressing(
        Duration::from_secs(60),
        || {
            seen_waiting |= waiting() == Some(1);
            let alerts = committed_alerts(&c);
            (alerts.len() as u64, (!alerts.is_empty()).then_some(alerts))
        },
        |n| format!("{n} alerts; waiting: {:?}", waiting()),
    );
    assert!(seen_waiting, "the event was never shown waiting");
    // ...then its alert comes, with no later event, and nothing waits.
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert!(alerts[0].contains("\"big\""), "{}", alerts[0]);
    wait_progressing(
        Duration::from_secs(30),
        || (0, (waiting() == Some(0)).then_some(())),
        |_| format!("waiting: {:?}", waiting()),
    );
    let metrics = serve_support::metrics(&api);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tripline_events_waiting") && l.ends_with(" 0")),
        "{metrics}"
    );
    drop(member);
}
