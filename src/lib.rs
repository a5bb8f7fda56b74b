//! tripline: real-time complex-event processing and fraud detection.
//!
//! # Map of the crate
//!
//! The core is pure and deterministic — the same events give the same alerts
//! — and is its own crate, `tripline_core` (in `core/`), so that no I/O
//! crate can reach it; its modules are re-exported here under the same
//! paths. Dependencies flow one way:
//! `engine → {pattern, window} → {rules, time} → event`, and `rules → model`.
//!
//! - [`event`]: an [`event::Event`] is one decoded JSON record; the
//!   [`event::Decoder`] keeps only the fields the rules read and never panics.
//! - [`rules`]: the rule language — lexer, parser, semantic checks with
//!   `file:line:col` diagnostics — producing a checked [`rules::RuleSetDef`].
//! - [`pattern`]: a rule's stages compiled to an NFA ([`pattern::nfa`]) with
//!   Flink CEP semantics, and the per-key [`pattern::Matcher`].
//! - [`window`]: incremental per-key window aggregates.
//! - [`model`]: trained models (ONNX) the rules declare: a flat-array
//!   evaluator for tree ensembles, tract for other graphs.
//! - [`time`]: watermarks and event-time timers.
//! - [`state`]: the versioned snapshot format and the [`state::StateStore`]
//!   interface with its in-memory reference store.
//! - [`engine`]: the [`engine::Engine`] that buffers events until the
//!   watermark releases them, keeps per-key state and emits
//!   [`engine::Alert`]s.
//!
//! Between the core and the outside:
//!
//! - [`coordinator`]: the exactly-once protocol (checkpoints, rewinds,
//!   restores, rule swaps) as a synchronous state machine that reaches the
//!   outside only through its [`coordinator::ports`]; the Kafka service
//!   drives it for real, `core/tests/simulation` under a seeded fault injector.
//!
//! Around the core, and free to use threads, clocks and I/O:
//!
//! - [`files`]: rule files and model files read for the checker, which
//!   itself opens no file.
//! - [`runtime`]: the actix shard actors, one per input partition, each
//!   owning that partition's engine; checkpoint barriers travel in-band.
//! - [`adapters`]: Kafka (consumer group, transactional alerts and dead
//!   letters, internal topics for rules keyed by other fields, the embedded
//!   broker), the REST API (axum), webhook delivery of committed alerts
//!   (outbox in RocksDB, Standard Webhooks signatures, retries).
//! - [`config`]: the service configuration (`tripline.toml` + environment).
//! - [`export`]: feature rows as CSV or JSON lines (`replay --features`).
//! - [`backtest`]: a rule set scored against labelled history (precision,
//!   recall, alerts per day per rule).
//! - [`telemetry`]: logs, metrics (Prometheus `/metrics`, OTLP) and traces.
//!
//! Start with [`files::load_rules`] (or [`engine::RuleSet::from_source`])
//! and [`engine::Engine::on_event`]:
//!
//! ```
//! use tripline::engine::{Engine, Outputs, RuleSet};
//!
//! let rules = RuleSet::from_source("example.tl", r#"
//!     stream payments { key card  time ts  time format epoch_ms }
//!     rule probe_then_cashout {
//!         within 1h
//!         pattern {
//!             probe: amount < 2 repeat 2 consecutive
//!             then cashout: amount > 500
//!         }
//!     }
//! "#, None)?;
//! let mut engine = Engine::new(rules.clone());
//! let mut out = Outputs::default();
//! for (i, line) in [
//!     r#"{"card":"c1","ts":1000,"amount":1}"#,
//!     r#"{"card":"c1","ts":2000,"amount":1}"#,
//!     r#"{"card":"c1","ts":9000,"amount":900}"#,
//! ].iter().enumerate() {
//!     let event = rules.decoder().decode(line.as_bytes(), i as u64)?;
//!     engine.on_event(event, &mut out);
//! }
//! engine.finish(&mut out);
//! assert_eq!(out.alerts.len(), 1);
//! assert_eq!(&*out.alerts[0].rule, "probe_then_cashout");
//! assert_eq!(out.alerts[0].matches[0].1.len(), 2); // the two probes: the evidence
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod adapters;
pub use tripline_core::{
    coordinator, engine, event, lists, model, pattern, rules, state, tables, time, window,
};
pub mod backtest;
pub mod config;
pub mod export;
pub mod files;
pub mod list_files;
pub mod runtime;
pub mod table_files;
pub mod telemetry;
