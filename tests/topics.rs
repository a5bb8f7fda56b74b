//! `tripline topics` on a real Kafka-protocol broker (see
//! `support/kafka.rs`): it creates every topic the rules and configuration
//! need, with the configured partitions, and leaves existing ones alone.

#[path = "support/kafka.rs"]
mod kafka_support;
#[path = "support/serve.rs"]
mod serve_support;

use kafka_support::*;
use tripline::adapters::kafka;

#[test]
fn topics_creates_what_the_service_needs_once() {
    let c = config("topics");
    let _files = TestFiles::of(&c);
    let rules = std::env::temp_dir().join(format!("{}-rules.tl", c.kafka.group_id));
    let logins = format!("{}.logins", c.kafka.group_id);
    let features = format!("{}.features", c.kafka.group_id);
    let profiles = format!("{}.profiles", c.kafka.group_id);
    std::fs::write(
        &rules,
        format!(
            "stream tx {{ key card time ts }}\n\
             stream logins {{ key card time ts topic \"{logins}\" }}\n\
             table profiles {{ key card topic \"{profiles}\" }}\n\
             rule r {{ pattern {{ a: logins where kind == \"reset\" then b: tx where amount > profiles.limit }} }}\n"
        ),
    )
    .unwrap();
    // The input topic exists already, with 2 partitions.
    kafka::ensure_topics(&c.kafka, &broker(), &[&c.kafka.input_topic], 2).unwrap();
    let run = || {
        let out = serve_support::tripline_command(&c, "topics")
            .env("TRIPLINE__KAFKA__PARTITIONS", "3")
            .env("TRIPLINE__FEATURE_LOG__TOPIC", &features)
            .env(
                "TRIPLINE__RULES__PATHS",
                serde_json::to_string(&[&rules]).unwrap(),
            )
            .current_dir(std::env::temp_dir())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let first = run();
    let line = |out: &str, topic: &str| -> String {
        out.lines()
            .find(|l| l.starts_with(&format!("{topic} ")))
            .unwrap_or_else(|| panic!("no {topic} in:\n{out}"))
            .to_string()
    };
    assert!(
        line(&first, &c.kafka.input_topic).ends_with("exists, 2 partitions"),
        "{first}"
    );
    for (topic, what) in [
        (&logins, "created, 3 partitions"),
        (&c.kafka.alerts_topic, "created, 3 partitions"),
        (&c.kafka.dead_letter_topic, "created, 3 partitions"),
        (&c.kafka.lists_topic, "created, 1 partitions"),
        (&profiles, "created, 1 partitions"),
        (&features, "created, 3 partitions"),
    ] {
        assert!(line(&first, topic).ends_with(what), "{topic}: {first}");
    }
    assert!(
        line(&first, &profiles).contains("table `profiles` (compacted)"),
        "{first}"
    );
    assert!(
        line(&first, &features).contains("feature log (retention 90d)"),
        "{first}"
    );
    let again = run();
    assert!(!again.contains("created"), "{again}");
    assert_eq!(
        kafka::partition_counts(&c.kafka, &broker(), &[&logins, &profiles]).unwrap(),
        [Some(3), Some(1)]
    );
    std::fs::remove_file(&rules).ok();
}
