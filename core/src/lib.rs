//! tripline's pure core: the same events give the same alerts. Nothing here
//! reads a clock or a network; the only files it opens are the rule and
//! model files a caller asks it to load ([`rules::Compiler`],
//! [`model::Model`]). It is its own crate so that the compiler, not a
//! review, keeps I/O out: it does not depend on rdkafka, RocksDB, axum,
//! actix or tokio. The service (`tripline`) re-exports every module under
//! the same path (`tripline::engine`, …).
//!
//! Dependencies flow one way: `engine → {pattern, window} → {rules, time}
//! → event`, and `rules → model`.
//!
//! - [`event`]: an [`event::Event`] is one decoded JSON record; the
//!   [`event::Decoder`] keeps only the fields the rules read and never panics.
//! - [`rules`]: the rule language — lexer, parser, semantic checks with
//!   `file:line:col` diagnostics — producing a checked [`rules::RuleSetDef`].
//! - [`pattern`]: a rule's stages compiled to an NFA ([`pattern::nfa`]) with
//!   Flink CEP semantics, and the per-key [`pattern::Matcher`].
//! - [`window`]: incremental per-key window aggregates.
//! - [`lists`]: named lists the rules read (`x in blocked_terminals`),
//!   each entry with its history, looked up as of the event's time.
//! - [`model`]: trained models (ONNX) the rules declare: a flat-array
//!   evaluator for tree ensembles, tract for other graphs.
//! - [`time`]: watermarks and event-time timers.
//! - [`state`]: the versioned snapshot format and the [`state::StateStore`]
//!   interface with its in-memory reference store.
//! - [`engine`]: the [`engine::Engine`] that buffers events until the
//!   watermark releases them, keeps per-key state and emits
//!   [`engine::Alert`]s.
//! - [`shard`]: one input partition's engine fed raw records: decoding,
//!   dead letters, forwarding for rules keyed by other fields, watermark
//!   marks, and the output cut at each barrier.

pub mod coordinator;
pub mod engine;
pub mod event;
pub mod lists;
pub mod model;
pub mod pattern;
pub mod rules;
pub mod shard;
pub mod state;
pub mod tables;
pub mod time;
pub mod window;
