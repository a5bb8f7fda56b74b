//! Running `tripline serve` as a child process on a configuration's broker,
//! group and topics (the rest of its settings are the caller's).

use std::process::Command;
use tripline::config::Config;

/// `tripline serve` with the broker, group and topics of `c` in its
/// environment.
pub fn serve_command(c: &Config) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tripline"));
    cmd.arg("serve")
        .env("TRIPLINE__KAFKA__BROKERS", &c.kafka.brokers)
        .env("TRIPLINE__KAFKA__GROUP_ID", &c.kafka.group_id)
        .env("TRIPLINE__KAFKA__INPUT_TOPIC", &c.kafka.input_topic)
        .env("TRIPLINE__KAFKA__ALERTS_TOPIC", &c.kafka.alerts_topic)
        .env(
            "TRIPLINE__KAFKA__DEAD_LETTER_TOPIC",
            &c.kafka.dead_letter_topic,
        );
    cmd
}
