//! The checked form of rules: names resolved to slots and stage ids, every
//! construct validated. The pattern compiler and the engine consume this.

use super::vocab::{BinOp, Contiguity, Severity, UnOp, Window};
use crate::event::{FieldPath, Schema, Slot, TimeFormat, Value};
use std::sync::Arc;

/// Index of a stage within its rule (groups included).
pub type StageId = u16;

/// How the input stream is read.
#[derive(Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StreamDef {
    /// Its name.
    pub name: String,
    /// Key field.
    pub key: FieldPath,
    /// Event-time field.
    pub time: FieldPath,
    /// Optional event-type field.
    pub event_type: Option<FieldPath>,
    /// How the time field is written.
    pub time_format: TimeFormat,
    /// How late (in event time) an event may arrive and still be processed.
    pub lateness_ms: i64,
    /// After this long without events an input counts as idle (0 = never).
    pub idle_ms: i64,
    /// How far (ms) an event may be ahead of the latest event time seen and
    /// still be processed; further ahead it is dead-lettered as `future` and
    /// does not move the watermark (0 = no limit). See [`DEFAULT_SKEW_MS`].
    /// Only a `stream` block sets it, and stored definitions (the command
    /// line's stream, kept with the state) never do: not serialized, so
    /// state written before it existed still decodes.
    #[serde(skip, default = "default_skew")]
    pub skew_ms: i64,
    /// How far (ms) an event may be ahead of the wall clock, where the
    /// stream says so (`clock skew`); only the service has a clock. Not
    /// serialized, as `skew_ms`.
    #[serde(skip)]
    pub clock_skew_ms: Option<i64>,
    /// After this long (ms) of wall-clock time without events, the input's
    /// event time moves with the clock (`advance after`); only the service
    /// has a clock. Not serialized, as `skew_ms`.
    #[serde(skip)]
    pub advance_after_ms: Option<i64>,
    /// Declared fields; when given, rules may name only these.
    pub fields: Option<Vec<FieldPath>>,
    /// How events with the same time are ordered (`order` in the stream
    /// block; otherwise by arrival). Not serialized, as `skew_ms`.
    #[serde(skip)]
    pub order: Vec<OrderKey>,
    /// The topic the service reads it from (`topic`; default: the
    /// configured input topic for the main stream, the stream's name for
    /// the others). Not serialized, as `skew_ms`.
    #[serde(skip)]
    pub topic: Option<String>,
}

/// One field of a stream's `order`: events with the same time are
/// processed by these fields, in turn, before arrival order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderKey {
    /// The field.
    pub field: FieldPath,
    /// Largest first.
    pub descending: bool,
}

/// The default `skew`: seven days. A watermark moved years ahead by one
/// mistyped or hostile time would make every later event late; a week is
/// far beyond any real gap between a partition's events in a live stream,
/// and the service widens it by the wall-clock time the partition was quiet.
pub const DEFAULT_SKEW_MS: i64 = 7 * 86_400_000;

fn default_skew() -> i64 {
    DEFAULT_SKEW_MS
}

/// Written as the derived form was before `skew` and `clock skew` existed,
/// adding them only when they differ from their defaults: the rule set's
/// hash is taken over this text, and state stored under a rule set is
/// restored by recompiling it and comparing hashes.
impl std::fmt::Debug for StreamDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("StreamDef");
        d.field("name", &self.name)
            .field("key", &self.key)
            .field("time", &self.time)
            .field("event_type", &self.event_type)
            .field("time_format", &self.time_format)
            .field("lateness_ms", &self.lateness_ms)
            .field("idle_ms", &self.idle_ms)
            .field("fields", &self.fields);
        if self.skew_ms != DEFAULT_SKEW_MS {
            d.field("skew_ms", &self.skew_ms);
        }
        if let Some(c) = &self.clock_skew_ms {
            d.field("clock_skew_ms", c);
        }
        if !self.order.is_empty() {
            d.field("order", &self.order);
        }
        if let Some(t) = &self.topic {
            d.field("topic", t);
        }
        d.finish()
    }
}

impl StreamDef {
    /// Whether its events may carry the field: it declares the field, or
    /// declares none.
    pub fn may_hold(&self, p: &FieldPath) -> bool {
        self.fields.as_ref().is_none_or(|f| f.contains(p))
    }

    /// A stream keyed by `key` with time in `time`, no lateness.
    pub fn new(key: &str, time: &str) -> Option<StreamDef> {
        Some(StreamDef {
            name: "events".into(),
            key: FieldPath::parse(key)?,
            time: FieldPath::parse(time)?,
            event_type: None,
            time_format: TimeFormat::Auto,
            lateness_ms: 0,
            idle_ms: 0,
            skew_ms: DEFAULT_SKEW_MS,
            clock_skew_ms: None,
            advance_after_ms: None,
            fields: None,
            order: Vec::new(),
            topic: None,
        })
    }
}

/// Scalar functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Func {
    /// `abs(x)`
    Abs,
    /// `round(x)`
    Round,
    /// `floor(x)`
    Floor,
    /// `ceil(x)`
    Ceil,
    /// `sqrt(x)`
    Sqrt,
    /// `ln(x)`
    Ln,
    /// `least(a, b, ..)` (also `min` with 2+ arguments)
    Least,
    /// `greatest(a, b, ..)` (also `max` with 2+ arguments)
    Greatest,
    /// `coalesce(a, b, ..)`
    Coalesce,
    /// `contains(s, sub)`
    Contains,
    /// `starts_with(s, prefix)`
    StartsWith,
    /// `ends_with(s, suffix)`
    EndsWith,
    /// `lower(s)`
    Lower,
    /// `upper(s)`
    Upper,
    /// `len(s)`
    Len,
    /// `hour(t)`: hour of day (UTC) of a time in ms; no argument: the event's.
    Hour,
    /// `weekday(t)`: 1 = Monday .. 7 = Sunday (UTC).
    Weekday,
    /// `event_time()`: the current event's time in ms.
    EventTime,
    /// `if(cond, then, else)`: evaluates only the branch taken.
    If,
}

/// Aggregates over the events of a partial match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AggFunc {
    /// Number of events (with an argument: of non-null values).
    Count,
    /// Number of distinct non-null values.
    CountDistinct,
    /// Sum.
    Sum,
    /// Mean.
    Avg,
    /// Minimum.
    Min,
    /// Maximum.
    Max,
    /// The value at the first event (optionally the n-th from the first).
    First,
    /// The value at the last event (optionally the n-th from the last).
    Last,
}

/// Aggregates over a per-key window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WinFunc {
    /// Events (or non-null values) in the window.
    Count,
    /// Distinct non-null values.
    CountDistinct,
    /// Sum.
    Sum,
    /// Mean.
    Avg,
    /// Minimum.
    Min,
    /// Maximum.
    Max,
    /// Population standard deviation.
    Stddev,
    /// 1 when the current event's value is the only one of its kind in the
    /// window (seen for the first time within it), else 0.
    Novel,
    /// How many standard deviations the current value lies from the
    /// exponentially weighted mean of the earlier ones (decay windows).
    Zscore,
}

/// A per-key window aggregate used by a rule.
#[derive(Clone, Debug)]
pub struct WindowSpec {
    /// The aggregate.
    pub func: WinFunc,
    /// The value aggregated (None: count events).
    pub arg: Option<CExpr>,
    /// The window.
    pub window: Window,
}

/// A resolved expression.
#[derive(Clone, Debug)]
pub enum CExpr {
    /// A constant.
    Lit(Value),
    /// A field of the event in scope.
    Field(Slot),
    /// A field of the last event accepted into a stage (null if none).
    StageLast(StageId, Slot),
    /// Unary operator.
    Unary(UnOp, Box<CExpr>),
    /// Binary operator.
    Binary(BinOp, Box<CExpr>, Box<CExpr>),
    /// Membership.
    In(Box<CExpr>, Vec<CExpr>, bool),
    /// Regex match (unanchored unless the pattern anchors).
    Matches(Box<CExpr>, Arc<regex_automata::meta::Regex>),
    /// `is null` (true) / `is not null` (false).
    IsNull(Box<CExpr>, bool),
    /// A scalar function.
    Func(Func, Vec<CExpr>),
    /// An aggregate over the events of the partial match.
    MatchAgg(Box<MatchAgg>),
    /// A per-key window aggregate, by index into the rule's windows.
    Window(u16),
}

/// An aggregate over matched events.
#[derive(Clone, Debug)]
pub struct MatchAgg {
    /// Which aggregate.
    pub func: AggFunc,
    /// The stage, or every stage in match order.
    pub stage: Option<StageId>,
    /// Evaluated on each event (None: the event itself, for `count`).
    pub arg: Option<CExpr>,
    /// For first/last: how many events from the end.
    pub offset: usize,
}

impl CExpr {
    /// Whether the value depends on the partial match (and so cannot be
    /// cached per event across partial matches).
    pub fn depends_on_match(&self) -> bool {
        match self {
            CExpr::Lit(_) | CExpr::Field(_) | CExpr::Window(_) => false,
            CExpr::StageLast(..) | CExpr::MatchAgg(_) => true,
            CExpr::Unary(_, e) | CExpr::IsNull(e, _) | CExpr::Matches(e, _) => e.depends_on_match(),
            CExpr::Binary(_, a, b) => a.depends_on_match() || b.depends_on_match(),
            CExpr::In(e, items, _) => {
                e.depends_on_match() || items.iter().any(|i| i.depends_on_match())
            }
            CExpr::Func(_, args) => args.iter().any(|a| a.depends_on_match()),
        }
    }

    /// Whether the value depends on the key's window aggregates.
    pub fn reads_windows(&self) -> bool {
        match self {
            CExpr::Window(_) => true,
            CExpr::Lit(_) | CExpr::Field(_) | CExpr::StageLast(..) => false,
            CExpr::MatchAgg(a) => a.arg.as_ref().is_some_and(|e| e.reads_windows()),
            CExpr::Unary(_, e) | CExpr::IsNull(e, _) | CExpr::Matches(e, _) => e.reads_windows(),
            CExpr::Binary(_, a, b) => a.reads_windows() || b.reads_windows(),
            CExpr::In(e, items, _) => e.reads_windows() || items.iter().any(|i| i.reads_windows()),
            CExpr::Func(_, args) => args.iter().any(|a| a.reads_windows()),
        }
    }
}

/// The quantifier of a stage, normalised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantKind {
    /// Exactly once.
    Single,
    /// `from..=to` times (bounded).
    Times,
    /// `from` or more times.
    Looping,
}

/// Quantifier of a stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantDef {
    /// Shape.
    pub kind: QuantKind,
    /// Minimum count (≥ 1).
    pub from: u32,
    /// Maximum count (== from for Single and Looping).
    pub to: u32,
    /// May be skipped.
    pub optional: bool,
    /// Takes as many events as it can before the next stage may start.
    pub greedy: bool,
    /// Contiguity between the events the loop takes.
    pub inner: Contiguity,
}

impl QuantDef {
    /// Exactly once, not optional.
    pub const ONE: QuantDef = QuantDef {
        kind: QuantKind::Single,
        from: 1,
        to: 1,
        optional: false,
        greedy: false,
        inner: Contiguity::Relaxed,
    };
}

/// A stage's body.
#[derive(Clone, Debug)]
pub enum StageBodyDef {
    /// The condition an event must meet.
    Cond(CExpr),
    /// A nested sequence.
    Group(PatternDef),
}

/// One stage of a pattern.
#[derive(Clone, Debug)]
pub struct StageDef {
    /// Name.
    pub name: String,
    /// Id (index into [`RuleDef::stage_names`]).
    pub id: StageId,
    /// Relation to the previous stage.
    pub contiguity: Contiguity,
    /// Condition or group.
    pub body: StageBodyDef,
    /// Quantifier.
    pub quant: QuantDef,
    /// Loop ends at the first event meeting this.
    pub until: Option<CExpr>,
    /// Most time allowed since the previous stage's event (ms).
    pub gap: Option<i64>,
}

/// A sequence of stages.
#[derive(Clone, Debug, Default)]
pub struct PatternDef {
    /// In order.
    pub stages: Vec<StageDef>,
}

impl PatternDef {
    /// Why the number of matches one event completes can grow
    /// combinatorially with the events a key holds, if it can: a repeated
    /// stage that takes any combination of its events (`combinations`), or
    /// a stage after a repeated one that forks on every candidate (`then
    /// any`). Every such match is an alert unless an after-match skip prunes
    /// them (the caller checks the skip).
    pub fn growth(&self) -> Option<String> {
        let mut repeated: Option<&str> = None;
        for s in &self.stages {
            let loops = s.quant.kind == QuantKind::Looping || s.quant.to > s.quant.from;
            if loops && s.quant.inner == Contiguity::Any {
                return Some(format!(
                    "stage `{}` takes any combination of its events (`combinations`): the \
                     matches one event completes grow exponentially with the events of the key",
                    s.name
                ));
            }
            if s.contiguity == Contiguity::Any
                && let Some(r) = repeated
            {
                return Some(format!(
                    "stage `{}` follows the repeated stage `{r}` with `then any`: every candidate \
                     forks, and the matches one event completes grow with the events of the key",
                    s.name
                ));
            }
            if let StageBodyDef::Group(g) = &s.body
                && let Some(why) = g.growth()
            {
                return Some(why);
            }
            if loops {
                repeated = Some(&s.name);
            }
        }
        None
    }
}

/// After-match skip strategy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipDef {
    /// Keep every match.
    NoSkip,
    /// Drop partial matches starting at or before the match's first event.
    ToNext,
    /// Drop partial matches starting at or before the match's last event.
    PastLast,
    /// Drop partial matches starting before the stage's first event; `true`: a
    /// match without the stage is an error.
    ToFirst(StageId, bool),
    /// Drop partial matches starting before the stage's last event.
    ToLast(StageId, bool),
}

/// A checked rule.
#[derive(Clone, Debug)]
pub struct RuleDef {
    /// Name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Key field.
    pub key: FieldPath,
    /// Key slot.
    pub key_slot: Slot,
    /// Alert severity.
    pub severity: Severity,
    /// Score contribution per alert.
    pub score: f64,
    /// Webhook endpoints its alerts always go to (the alert's `notify`).
    pub notify: std::sync::Arc<[std::sync::Arc<str>]>,
    /// Whole-pattern window (ms).
    pub within: Option<i64>,
    /// After-match skip.
    pub skip: SkipDef,
    /// `suppress`: the event time (ms) after one of its alerts for a key
    /// during which its further alerts for that key are not raised.
    pub suppress_ms: Option<i64>,
    /// `mode shadow`: evaluated like any rule, its alerts go to the shadow
    /// topic (and the console), never to the alerts topic or webhooks.
    pub shadow: bool,
    /// Emit timed-out partial matches.
    pub report_timeouts: bool,
    /// A stage's condition sees the candidate event as the last event of its
    /// own stage in match aggregates.
    pub inclusive_aggregates: bool,
    /// The pattern.
    pub pattern: PatternDef,
    /// Stage names by id.
    pub stage_names: Vec<String>,
    /// Payload values; a feature set's features.
    pub payload: Vec<(String, CExpr)>,
    /// A feature set: it computes its payload for every event of its key
    /// and raises no alert.
    pub features: bool,
    /// A feature set's features: the event slot each one is written to, so
    /// that rules and models read it like a field.
    pub feature_slots: Vec<Slot>,
    /// The models the rule reads (names in [`RuleSetDef::models`]).
    pub models: Vec<String>,
    /// Window aggregates used by conditions and payload.
    pub windows: Vec<WindowSpec>,
    /// The list lookups the rule reads (indices into
    /// [`RuleSetDef::lookups`]): its alerts show their values.
    pub lookups: Vec<usize>,
    /// The streams whose events it reads (indices into
    /// [`RuleSetDef::streams`], ascending, never empty): events of other
    /// streams pass it by, as if they did not exist.
    pub streams: Vec<u16>,
}

/// What a lookup reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LookupSource {
    /// Whether the value is on a list (`x in LIST`).
    List(String),
    /// A field of a table's row (`TABLE.FIELD`, `lookup(TABLE, x).FIELD`).
    Table {
        /// The table.
        table: String,
        /// The field of its row.
        field: FieldPath,
    },
}

/// A lookup in a list (`x in LIST`) or a table (`profiles.HOME_COUNTRY`):
/// computed once per event, before features, into the event slot `slot`
/// (for a list true, false, or null for a null `x`; for a table the row's
/// field, or null), as of the event's time; conditions read the slot.
#[derive(Clone, Debug)]
pub struct LookupDef {
    /// How alerts name it (`TERMINAL_ID in blocked_terminals`).
    pub name: String,
    /// What it reads.
    pub source: LookupSource,
    /// The value looked up, over the event alone.
    pub key: CExpr,
    /// Where the result is written.
    pub slot: Slot,
}

/// A declared table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableDecl {
    /// Its name, key field and time field.
    pub spec: crate::tables::TableSpec,
    /// The topic the service reads its rows from (`topic`; default: the
    /// table's name).
    pub topic: String,
}

/// A declared model: its score is written to the event slot `slot` after
/// every feature of the event is computed.
#[derive(Clone, Debug)]
pub struct ModelDef {
    /// Its name (the field rules read its score from).
    pub name: String,
    /// The file, as resolved at compile time.
    pub file: String,
    /// The loaded model.
    pub model: Arc<crate::model::Model>,
    /// Slots of its inputs, in the model's order.
    pub inputs: Vec<Slot>,
    /// Slot its score is written to.
    pub slot: Slot,
    /// The version on trial ([`crate::model::CANDIDATE_SUFFIX`] ends its
    /// name): scored beside this one into a slot of its own that no rule
    /// reads. Never has a candidate itself.
    pub candidate: Option<Box<ModelDef>>,
}

/// One example: events in, alert counts out.
#[derive(Clone, Debug)]
pub struct ExampleDef {
    /// Name.
    pub name: String,
    /// File it is in.
    pub file: String,
    /// JSON lines of each stream (by index into [`RuleSetDef::streams`]).
    pub events: Vec<(u16, String)>,
    /// Expected alerts per rule.
    pub expect: Vec<(String, u64)>,
    /// Alerts expected by their values: for each, an alert of the rule
    /// whose `key`, `event_time` and payload values equal these.
    pub expect_alerts: Vec<(String, Vec<(String, crate::event::Value)>)>,
    /// Values on each list throughout the example.
    pub lists: Vec<(String, Vec<String>)>,
    /// Rows of each table (JSON lines) throughout the example.
    pub tables: Vec<(String, String)>,
}

/// A checked rule set: what the engine compiles and runs.
#[derive(Clone, Debug)]
pub struct RuleSetDef {
    /// The streams, the main one (rules that name none read it) first.
    pub streams: Vec<StreamDef>,
    /// Where each stream's key, time and `order` fields are, by stream.
    pub stream_slots: Vec<StreamSlots>,
    /// With several streams, the slot the decoder writes each event's
    /// stream (its index, a number) to: [`STREAM_FIELD`], which rules
    /// cannot name and input cannot set. Stored with the event's fields,
    /// so that state keeps where each event came from.
    pub stream_slot: Option<Slot>,
    /// Rules.
    pub rules: Vec<RuleDef>,
    /// Examples.
    pub examples: Vec<ExampleDef>,
    /// Models, in declaration order.
    pub models: Vec<ModelDef>,
    /// Fields read.
    pub schema: Schema,
    /// Declared lists (`list NAME`).
    pub lists: Vec<String>,
    /// Declared tables (`table NAME { key F, time G }`).
    pub tables: Vec<TableDecl>,
    /// List lookups, shared by the rules that read them.
    pub lookups: Vec<LookupDef>,
    /// Hash of the sources and stream definition; versions per-key state.
    pub hash: u64,
    /// What it was compiled from, so that state written under it can be
    /// read again after the rules change.
    pub origin: Arc<RuleOrigin>,
    /// How its models were read (the same reader compiles the origin again).
    pub model_files: super::check::ModelReader,
}

/// The field an event's stream is kept in when a rule set has several
/// ([`RuleSetDef::stream_slot`]): not a name the rule language can write.
pub const STREAM_FIELD: &str = "$stream";

/// Where a stream's fields are in the rule set's schema.
#[derive(Clone, Debug)]
pub struct StreamSlots {
    /// The key field.
    pub key: Slot,
    /// The time field.
    pub time: Slot,
    /// The stream's `order`: (slot, descending) of each field events with
    /// the same time are ordered by.
    pub order: Vec<(Slot, bool)>,
}

impl RuleSetDef {
    /// The main stream: the first declared, read by rules that name none.
    pub fn stream(&self) -> &StreamDef {
        &self.streams[0]
    }

    /// The index of the stream `event` came from.
    pub fn stream_of(&self, event: &crate::event::Event) -> u16 {
        match self.stream_slot.map(|s| event.field(s)) {
            Some(Value::Num(n)) => *n as u16,
            _ => 0,
        }
    }

    /// The index of the stream called `name`.
    pub fn stream_index(&self, name: &str) -> Option<u16> {
        self.streams
            .iter()
            .position(|s| s.name == name)
            .map(|i| i as u16)
    }
}

/// The inputs a rule set was compiled from.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RuleOrigin {
    /// (display name, text) of each source file, in the order added.
    pub sources: Vec<(String, String)>,
    /// The stream definition given outside the sources, if any.
    pub stream: Option<StreamDef>,
}

impl CExpr {
    /// Whether it reads some field slot for which `of` holds.
    pub fn reads_slot(&self, of: &dyn Fn(Slot) -> bool) -> bool {
        let mut found = false;
        self.clone().visit_slots(&mut |s| found |= of(*s));
        found
    }

    /// Calls `f` on every field slot the expression reads, in a fixed
    /// structural order.
    fn visit_slots(&mut self, f: &mut dyn FnMut(&mut Slot)) {
        match self {
            CExpr::Lit(_) | CExpr::Window(_) => {}
            CExpr::Field(s) | CExpr::StageLast(_, s) => f(s),
            CExpr::Unary(_, e) | CExpr::IsNull(e, _) | CExpr::Matches(e, _) => e.visit_slots(f),
            CExpr::Binary(_, a, b) => {
                a.visit_slots(f);
                b.visit_slots(f);
            }
            CExpr::In(e, items, _) => {
                e.visit_slots(f);
                items.iter_mut().for_each(|i| i.visit_slots(f));
            }
            CExpr::Func(_, args) => args.iter_mut().for_each(|a| a.visit_slots(f)),
            CExpr::MatchAgg(agg) => {
                if let Some(a) = &mut agg.arg {
                    a.visit_slots(f);
                }
            }
        }
    }
}

impl PatternDef {
    fn visit_slots(&mut self, f: &mut dyn FnMut(&mut Slot)) {
        for s in &mut self.stages {
            match &mut s.body {
                StageBodyDef::Cond(c) => c.visit_slots(f),
                StageBodyDef::Group(g) => g.visit_slots(f),
            }
            if let Some(u) = &mut s.until {
                u.visit_slots(f);
            }
        }
    }
}

/// A hash of `debug` output of a value whose slots were renumbered by first
/// use, together with the field paths in that order: equal for the same
/// construct in rule sets whose schemas number fields differently.
fn canonical_hash(schema: &Schema, visit: impl FnOnce(&mut dyn FnMut(&mut Slot)) -> String) -> u64 {
    let mut order: Vec<Slot> = Vec::new();
    let debug = visit(&mut |s: &mut Slot| {
        let canonical = match order.iter().position(|o| o == s) {
            Some(i) => i,
            None => {
                order.push(*s);
                order.len() - 1
            }
        };
        *s = canonical as Slot;
    });
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for s in order {
        h.update(schema.path(s).to_string().as_bytes());
        h.update(&[0]);
    }
    h.update(debug.as_bytes());
    h.digest()
}

impl WindowSpec {
    /// What the window's state means, independent of how the rule set
    /// numbers fields: two windows with the same fingerprint aggregate the
    /// same values the same way, so one's state can continue as the other's.
    pub fn fingerprint(&self, schema: &Schema) -> u64 {
        canonical_hash(schema, |f| {
            let mut w = self.clone();
            if let Some(a) = &mut w.arg {
                a.visit_slots(f);
            }
            format!("{w:?}")
        })
    }
}

impl RuleDef {
    /// What the rule's per-key state means (key, pattern, window, skip,
    /// window aggregates), independent of how the rule set numbers fields.
    /// Name, description, severity, score and payload are left out: they
    /// change what an alert says, not what state leads to it. Equal
    /// fingerprints: the rule's state carries over a rule change as it is.
    pub fn state_fingerprint(&self, set: &RuleSetDef) -> u64 {
        canonical_hash(&set.schema, |f| {
            let mut r = self.clone();
            f(&mut r.key_slot);
            r.pattern.visit_slots(f);
            for w in &mut r.windows {
                if let Some(a) = &mut w.arg {
                    a.visit_slots(f);
                }
            }
            let mut text = format!(
                "{:?}|{:?}|{:?}|{}|{}|{:?}|{:?}",
                r.key_slot,
                r.within,
                r.skip,
                r.report_timeouts,
                r.inclusive_aggregates,
                r.pattern,
                r.windows
            );
            // Rules of the main stream alone keep the fingerprint they had
            // before rule sets could have several streams; others name
            // theirs (names, not indices, which a new stream can shift).
            if r.streams != [0] {
                for &s in &r.streams {
                    text.push_str("|stream ");
                    text.push_str(&set.streams[s as usize].name);
                }
            }
            text
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stream as it was defined before `skew` existed, with the
    /// derived forms the rule set's hash and stored state were made of.
    #[derive(Debug, serde::Serialize)]
    #[allow(dead_code)]
    struct StreamDef {
        name: String,
        key: FieldPath,
        time: FieldPath,
        event_type: Option<FieldPath>,
        time_format: TimeFormat,
        lateness_ms: i64,
        idle_ms: i64,
        fields: Option<Vec<FieldPath>>,
    }

    /// Rule sets that do not use `skew` or `clock skew` keep their hash,
    /// and stored stream definitions their encoding: state written before
    /// these clauses existed restores.
    #[test]
    fn streams_without_the_new_clauses_hash_and_encode_as_before() {
        let mut new = super::StreamDef::new("card.id", "ts").unwrap();
        new.lateness_ms = 30_000;
        new.fields = Some(vec![FieldPath::single("amount")]);
        let old = StreamDef {
            name: new.name.clone(),
            key: new.key.clone(),
            time: new.time.clone(),
            event_type: None,
            time_format: new.time_format,
            lateness_ms: 30_000,
            idle_ms: 0,
            fields: new.fields.clone(),
        };
        assert_eq!(format!("{new:?}"), format!("{old:?}"));
        assert_eq!(
            postcard::to_allocvec(&new).unwrap(),
            postcard::to_allocvec(&old).unwrap()
        );
        let back: super::StreamDef =
            postcard::from_bytes(&postcard::to_allocvec(&old).unwrap()).unwrap();
        assert_eq!(back, new);
        new.skew_ms = 60_000;
        assert_ne!(
            format!("{new:?}"),
            format!("{old:?}"),
            "a set skew changes the hash"
        );
    }
}
