//! The adversarial suite: inputs a hostile or careless user can send —
//! records, rules, requests, webhook receivers — and what the service must
//! do with each: keep processing other and later input, stay within its
//! limits, lose nothing, and say what it refused and why.
//!
//! Each module is one class of input. Cases that need a broker use the
//! tests' shared broker support (an embedded one without `KAFKA_BOOTSTRAP`).

#[path = "../support/kafka.rs"]
mod kafka_support;

mod api;
mod kafka;
mod records;
mod rules;
mod webhooks;
