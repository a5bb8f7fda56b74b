//! The syntax tree of a rule file, as parsed (names unresolved).

use super::diag::Span;
pub use super::vocab::{BinOp, Contiguity, Severity, UnOp, Window as WindowAst};

/// A name and where it is written.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    /// The name.
    pub name: String,
    /// Where.
    pub span: Span,
}

/// A parsed file.
#[derive(Clone, Debug, Default)]
pub struct FileAst {
    /// Rules in file order.
    pub rules: Vec<RuleAst>,
    /// Stream definitions.
    pub streams: Vec<StreamAst>,
    /// Examples (events in, expected alerts out).
    pub examples: Vec<ExampleAst>,
    /// Model declarations.
    pub models: Vec<ModelAst>,
    /// `list NAME` declarations.
    pub lists: Vec<Ident>,
    /// `table NAME { .. }` declarations.
    pub tables: Vec<TableAst>,
}

/// `table NAME { key FIELD  time FIELD  topic "TOPIC" }`: reference rows
/// the rules look up by key, as of the event's time.
#[derive(Clone, Debug)]
pub struct TableAst {
    /// Its name.
    pub name: Ident,
    /// The field of a row that is its key.
    pub key: Option<(String, Span)>,
    /// The field of a row that says from when it applies.
    pub time: Option<(String, Span)>,
    /// The topic the service reads it from.
    pub topic: Option<(String, Span)>,
}

/// `model NAME from "PATH" [candidate "PATH"]`: a trained model whose
/// score is readable as `NAME`, and the version on trial beside it.
#[derive(Clone, Debug)]
pub struct ModelAst {
    /// Its name.
    pub name: Ident,
    /// The ONNX file, relative to the file that declares it.
    pub path: (String, Span),
    /// The candidate's ONNX file: scored on every event beside the model,
    /// read by no rule, until it is promoted.
    pub candidate: Option<(String, Span)>,
}

/// `stream NAME { key ..; time ..; ... }`.
#[derive(Clone, Debug)]
pub struct StreamAst {
    /// Its name.
    pub name: Ident,
    /// Key field path.
    pub key: Option<(String, Span)>,
    /// Time field path.
    pub time: Option<(String, Span)>,
    /// Optional event-type field path.
    pub event_type: Option<(String, Span)>,
    /// `time format auto|epoch_ms|epoch_s`.
    pub time_format: Option<(String, Span)>,
    /// Allowed lateness (ms).
    pub lateness: Option<(i64, Span)>,
    /// Idle timeout (ms).
    pub idle: Option<(i64, Span)>,
    /// `skew DURATION|none`: how far ahead of the latest event time (ms; 0
    /// for none).
    pub skew: Option<(i64, Span)>,
    /// `clock skew DURATION`: how far ahead of the wall clock (ms).
    pub clock_skew: Option<(i64, Span)>,
    /// `advance after DURATION`: how long (ms) the input may be quiet
    /// before its event time moves with the wall clock.
    pub advance_after: Option<(i64, Span)>,
    /// Declared fields, for checking names in rules.
    pub fields: Vec<(String, Span)>,
    /// `order F [desc], ..`: how events with the same time are ordered
    /// (field path, descending, where).
    pub order: Vec<(String, bool, Span)>,
    /// `topic "NAME"`: the topic the service reads the stream from.
    pub topic: Option<(String, Span)>,
}

/// `example NAME { events """...""" expect RULE N ... }`.
#[derive(Clone, Debug)]
pub struct ExampleAst {
    /// Its name.
    pub name: Ident,
    /// The events, one JSON object per line, of the main stream (no name)
    /// or of a named stream (`events logins """.."""`).
    pub events: Vec<(Option<Ident>, String, Span)>,
    /// Expected alert counts per rule.
    pub expect: Vec<(Ident, u64)>,
    /// `expect RULE { NAME = VALUE, … }`: an alert of the rule whose key
    /// (`key`), time (`event_time`) and payload values are these.
    pub expect_alerts: Vec<(Ident, Vec<ExpectedValue>)>,
    /// `list NAME "v1", "v2"`: values on a list throughout the example.
    pub lists: Vec<(Ident, Vec<String>)>,
    /// `table NAME """rows"""`: rows of a table throughout the example,
    /// one JSON object per line.
    pub tables: Vec<(Ident, String, Span)>,
}

/// One `NAME = VALUE` of an `expect RULE { … }`, with the value's span.
pub type ExpectedValue = (Ident, crate::event::Value, Span);

/// After-match skip strategy, as written.
#[derive(Clone, Debug, PartialEq)]
pub enum SkipAst {
    /// Every match is kept.
    NoSkip,
    /// Drop partial matches that started at or before the match's first event.
    ToNext,
    /// Drop partial matches that started at or before the match's last event.
    PastLast,
    /// Drop partial matches that started before the first event of a stage.
    ToFirst(Ident, bool),
    /// Drop partial matches that started before the last event of a stage.
    ToLast(Ident, bool),
}

/// `rule NAME { ... }`, or `features NAME { ... }` (a feature set).
#[derive(Clone, Debug)]
pub struct RuleAst {
    /// Its name.
    pub name: Ident,
    /// The key field, overriding the stream's.
    pub key: Option<(String, Span)>,
    /// Stream name.
    pub stream: Option<Ident>,
    /// Free text.
    pub description: Option<String>,
    /// Severity of its alerts.
    pub severity: Option<(Severity, Span)>,
    /// Score contribution of each alert.
    pub score: Option<(f64, Span)>,
    /// Webhook endpoints its alerts always go to, by name.
    pub notify: Vec<Ident>,
    /// Window of the whole pattern (ms).
    pub within: Option<(i64, Span)>,
    /// After-match skip.
    pub skip: Option<(SkipAst, Span)>,
    /// `suppress DURATION`: after an alert for a key, the rule's alerts
    /// for that key are not raised until that much event time has passed.
    pub suppress: Option<(i64, Span)>,
    /// `mode shadow` (true) or `mode live`, with the clause's span (from
    /// `mode` to its word: what promotion removes).
    pub shadow: Option<(bool, Span)>,
    /// Emit timed-out partial matches as alerts too.
    pub report_timeouts: bool,
    /// Stage conditions see the candidate event in their own stage's
    /// aggregates (MATCH_RECOGNIZE running semantics).
    pub inclusive_aggregates: bool,
    /// The pattern.
    pub pattern: Option<PatternAst>,
    /// A `pattern` clause was written but did not parse (its error says
    /// why; the rule is not also reported as having no pattern).
    pub pattern_failed: bool,
    /// Computed values added to the alert; for a feature set, its features.
    pub payload: Vec<(Ident, Expr)>,
    /// A `features` block: computes its payload for every event of its key
    /// and raises no alert.
    pub features: bool,
    /// The whole rule.
    pub span: Span,
}

/// A sequence of stages.
#[derive(Clone, Debug)]
pub struct PatternAst {
    /// Stages in order.
    pub stages: Vec<StageAst>,
    /// Where.
    pub span: Span,
}

/// One stage.
#[derive(Clone, Debug)]
pub struct StageAst {
    /// Its name.
    pub name: Ident,
    /// The stream its events come from (`name: STREAM where COND`); none:
    /// the rule's stream.
    pub stream: Option<Ident>,
    /// Relation to the previous stage (`Relaxed` for the first).
    pub contiguity: Contiguity,
    /// Where the connector is written.
    pub contiguity_span: Span,
    /// The condition or nested group.
    pub body: StageBody,
    /// Quantifier and modifiers.
    pub quant: QuantAst,
    /// Where the stage is.
    pub span: Span,
}

/// A stage's body.
#[derive(Clone, Debug)]
pub enum StageBody {
    /// A condition on one event.
    Cond(Expr),
    /// A parenthesised sub-pattern.
    Group(PatternAst),
}

/// Quantifier and modifiers as written.
#[derive(Clone, Debug, Default)]
pub struct QuantAst {
    /// `repeat N`, `repeat N..M`, `repeat N..`.
    pub repeat: Option<(u32, Option<u32>, Span)>,
    /// `optional`.
    pub optional: Option<Span>,
    /// `greedy`.
    pub greedy: Option<Span>,
    /// `consecutive` (strict) or `combinations` (any) between the events a loop takes.
    pub inner: Option<(Contiguity, Span)>,
    /// `until COND`.
    pub until: Option<Expr>,
    /// `gap DUR`: at most this long after the previous stage's event.
    pub gap: Option<(i64, Span)>,
}

/// An expression.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    /// What.
    pub kind: ExprKind,
    /// Where.
    pub span: Span,
}

/// Expression kinds.
#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    /// A number (durations are numbers of milliseconds).
    Num(f64),
    /// A string.
    Str(String),
    /// A boolean.
    Bool(bool),
    /// `null`.
    Null,
    /// A dotted name: a field path, or `stage.field`.
    Path(Vec<Ident>),
    /// Unary operator.
    Unary(UnOp, Box<Expr>),
    /// Binary operator.
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `x in [..]` / `x not in [..]`.
    In(Box<Expr>, Vec<Expr>, bool),
    /// `x matches "regex"`.
    Matches(Box<Expr>, String, Span),
    /// `x in LIST` / `x not in LIST` (negated): membership in a declared
    /// list, as of the event's time.
    InList(Box<Expr>, Ident, bool),
    /// `x is null` / `x is not null`.
    IsNull(Box<Expr>, bool),
    /// A function or aggregate call.
    Call(Box<Call>),
    /// `call(..).field`: a field of the event a call returns (`first(s).price`).
    Member(Box<Expr>, Vec<Ident>),
}

/// A call: `f(args)`, `count(*)`, `count(distinct x over 1d)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    /// Function name (lower-cased).
    pub name: Ident,
    /// Arguments.
    pub args: Vec<Expr>,
    /// `*` as the argument.
    pub star: bool,
    /// `distinct` before the argument.
    pub distinct: bool,
    /// `over WINDOW`.
    pub window: Option<(WindowAst, Span)>,
}
