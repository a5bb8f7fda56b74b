//! tripline: real-time complex-event processing and fraud detection.
//!
//! # Map of the crate
//!
//! The core is pure and deterministic — the same events give the same alerts
//! — and depends on no I/O crate. Dependencies flow one way:
//! `engine → {pattern, window} → {rules, time} → event`.
//!
//! - [`event`]: an [`event::Event`] is one decoded JSON record; the
//!   [`event::Decoder`] keeps only the fields the rules read and never panics.
//! - [`rules`]: the rule language — lexer, parser, semantic checks with
//!   `file:line:col` diagnostics — producing a checked [`rules::RuleSetDef`].
//! - [`pattern`]: a rule's stages compiled to an NFA ([`pattern::nfa`]) with
//!   Flink CEP semantics, and the per-key [`pattern::Matcher`].
//! - [`window`]: incremental per-key window aggregates.
//! - [`time`]: watermarks and event-time timers.
//! - [`state`]: the versioned snapshot format and the [`state::StateStore`]
//!   interface with its in-memory reference store.
//! - [`engine`]: the [`engine::Engine`] that buffers events until the
//!   watermark releases them, keeps per-key state and emits
//!   [`engine::Alert`]s.
//!
//! Start with [`engine::RuleSet::load`] and [`engine::Engine::on_event`].

pub mod engine;
pub mod event;
pub mod pattern;
pub mod rules;
pub mod state;
pub mod time;
pub mod window;
