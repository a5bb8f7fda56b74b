//! Semantic checks: resolves names in the parsed files against the stream and
//! the rule's stages, validates quantifiers, skips and limits, and produces
//! the [`RuleSetDef`]. Every error of every file is collected in one pass.

use super::ast::*;
use super::diag::{Diagnostic, Diagnostics, SourceMap, Span, suggest};
use super::ir::*;
use super::parser::parse_file;
use crate::event::{FieldPath, Schema, TimeFormat, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Limits on what user input may compile to.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most automaton states one rule may compile to.
    pub max_states: usize,
    /// Largest repeat count.
    pub max_repeat: u32,
    /// Most stages in one rule.
    pub max_stages: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_states: 4096,
            max_repeat: 1000,
            max_stages: 256,
        }
    }
}

const SCALAR_FUNCS: &[(&str, Func, usize, usize)] = &[
    ("abs", Func::Abs, 1, 1),
    ("round", Func::Round, 1, 1),
    ("floor", Func::Floor, 1, 1),
    ("ceil", Func::Ceil, 1, 1),
    ("sqrt", Func::Sqrt, 1, 1),
    ("ln", Func::Ln, 1, 1),
    ("least", Func::Least, 2, 64),
    ("greatest", Func::Greatest, 2, 64),
    ("coalesce", Func::Coalesce, 1, 64),
    ("contains", Func::Contains, 2, 2),
    ("starts_with", Func::StartsWith, 2, 2),
    ("ends_with", Func::EndsWith, 2, 2),
    ("lower", Func::Lower, 1, 1),
    ("upper", Func::Upper, 1, 1),
    ("len", Func::Len, 1, 1),
    ("hour", Func::Hour, 0, 1),
    ("weekday", Func::Weekday, 0, 1),
    ("event_time", Func::EventTime, 0, 0),
    ("if", Func::If, 3, 3),
];

const AGG_NAMES: &[&str] = &[
    "count", "sum", "avg", "min", "max", "first", "last", "stddev",
];

/// Collects rule files and compiles them into a [`RuleSetDef`].
#[derive(Default)]
pub struct Compiler {
    sources: SourceMap,
    files: Vec<(u32, FileAst)>,
    errors: Vec<Diagnostic>,
    io_errors: Vec<String>,
    stream: Option<StreamDef>,
    limits: Limits,
}

impl Compiler {
    /// A compiler with default limits.
    pub fn new() -> Compiler {
        Compiler::default()
    }

    /// Overrides the limits.
    pub fn limits(mut self, limits: Limits) -> Compiler {
        self.limits = limits;
        self
    }

    /// Uses `stream` instead of (or in the absence of) a `stream` block.
    pub fn stream(&mut self, stream: StreamDef) -> &mut Compiler {
        self.stream = Some(stream);
        self
    }

    /// Adds source text under a display name.
    pub fn add_source(&mut self, name: &str, text: &str) -> &mut Compiler {
        let id = self.sources.add(name, text);
        let (ast, errs) = parse_file(id, text);
        self.errors.extend(errs);
        self.files.push((id, ast));
        self
    }

    /// Adds a `.tl` file, or every `.tl` file under a directory (sorted, so
    /// the result does not depend on directory order).
    pub fn add_path(&mut self, path: &Path) -> &mut Compiler {
        if path.is_dir() {
            let mut files = Vec::new();
            collect_tl(path, &mut files, &mut self.io_errors);
            files.sort();
            if files.is_empty() {
                self.io_errors
                    .push(format!("{}: no .tl rule files found", path.display()));
            }
            for f in files {
                self.add_file(&f);
            }
        } else {
            self.add_file(path);
        }
        self
    }

    fn add_file(&mut self, path: &Path) {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                self.add_source(&path.display().to_string(), &text);
            }
            Err(e) => self.io_errors.push(format!("{}: {e}", path.display())),
        }
    }

    /// Checks everything and returns the rule set, or every error found.
    pub fn compile(mut self) -> Result<RuleSetDef, CompileError> {
        if !self.io_errors.is_empty() {
            return Err(CompileError::Io(self.io_errors));
        }
        let stream = self.resolve_stream();
        let Some(stream) = stream else {
            return Err(self.finish_err());
        };
        let mut schema = Schema::default();
        let key_slot = schema.intern(&stream.key);
        let time_slot = schema.intern(&stream.time);
        let _ = key_slot;
        let mut rules = Vec::new();
        let mut names: BTreeMap<String, Span> = BTreeMap::new();
        let files = std::mem::take(&mut self.files);
        for (_, file) in &files {
            for r in &file.rules {
                if let Some(prev) = names.get(&r.name.name) {
                    let (l, _) = self.sources.line_col(prev.file, prev.start);
                    let d = Diagnostic::error(
                        r.name.span,
                        format!("rule `{}` is defined twice", r.name.name),
                    )
                    .with_hint(format!(
                        "first defined in {} line {l}",
                        self.sources.get(prev.file).name
                    ));
                    self.errors.push(d);
                    continue;
                }
                names.insert(r.name.name.clone(), r.name.span);
                let mut rc = RuleChecker {
                    errors: &mut self.errors,
                    schema: &mut schema,
                    stream: &stream,
                    limits: self.limits,
                    stages: Vec::new(),
                    windows: Vec::new(),
                };
                if let Some(def) = rc.rule(r) {
                    rules.push(def);
                }
            }
        }
        let mut examples = Vec::new();
        for (id, file) in &files {
            for ex in &file.examples {
                for (rule, _) in &ex.expect {
                    if !names.contains_key(&rule.name) {
                        let d =
                            Diagnostic::error(rule.span, format!("unknown rule `{}`", rule.name));
                        self.errors.push(hint_closest(
                            d,
                            &rule.name,
                            names.keys().map(|s| s.as_str()),
                        ));
                    }
                }
                match &ex.events {
                    Some((events, _)) => examples.push(ExampleDef {
                        name: ex.name.name.clone(),
                        file: self.sources.get(*id).name.clone(),
                        events: events.clone(),
                        expect: ex
                            .expect
                            .iter()
                            .map(|(r, n)| (r.name.clone(), *n))
                            .collect(),
                    }),
                    None => self.errors.push(Diagnostic::error(
                        ex.name.span,
                        "example has no `events` block",
                    )),
                }
            }
        }
        if !self.errors.is_empty() {
            return Err(self.finish_err());
        }
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for (id, _) in &files {
            let s = self.sources.get(*id);
            h.update(s.name.as_bytes());
            h.update(&[0]);
            h.update(s.text.as_bytes());
            h.update(&[0]);
        }
        h.update(format!("{stream:?}").as_bytes());
        Ok(RuleSetDef {
            stream,
            rules,
            examples,
            schema,
            time_slot,
            hash: h.digest(),
        })
    }

    fn finish_err(mut self) -> CompileError {
        self.errors.sort_by_key(|d| (d.span.file, d.span.start));
        CompileError::Rules(Diagnostics {
            errors: self.errors,
            sources: self.sources,
        })
    }

    fn resolve_stream(&mut self) -> Option<StreamDef> {
        let decls: Vec<&StreamAst> = self
            .files
            .iter()
            .flat_map(|(_, f)| f.streams.iter())
            .collect();
        if decls.len() > 1 {
            self.errors.push(
                Diagnostic::error(
                    decls[1].name.span,
                    "only one stream may be defined per rule set",
                )
                .with_hint(format!("`{}` is already defined", decls[0].name.name)),
            );
        }
        let mut base = self.stream.clone();
        if let Some(s) = decls.first() {
            let mut def = StreamDef {
                name: s.name.name.clone(),
                key: FieldPath::single("key"),
                time: FieldPath::single("time"),
                event_type: None,
                time_format: TimeFormat::Auto,
                lateness_ms: s.lateness.map_or(0, |l| l.0),
                idle_ms: s.idle.map_or(0, |l| l.0),
                fields: None,
            };
            let path = |p: &Option<(String, Span)>,
                        what: &str,
                        errs: &mut Vec<Diagnostic>|
             -> Option<FieldPath> {
                match p {
                    Some((p, sp)) => {
                        let fp = FieldPath::parse(p);
                        if fp.is_none() {
                            errs.push(Diagnostic::error(
                                *sp,
                                format!("bad {what} field path `{p}`"),
                            ));
                        }
                        fp
                    }
                    None => None,
                }
            };
            let key = path(&s.key, "key", &mut self.errors);
            let time = path(&s.time, "time", &mut self.errors);
            def.event_type = path(&s.event_type, "type", &mut self.errors);
            if let Some((f, sp)) = &s.time_format {
                def.time_format = match f.as_str() {
                    "auto" => TimeFormat::Auto,
                    "epoch_ms" => TimeFormat::EpochMillis,
                    "epoch_s" => TimeFormat::EpochSeconds,
                    _ => {
                        self.errors.push(
                            Diagnostic::error(*sp, format!("unknown time format `{f}`"))
                                .with_hint("use auto, epoch_ms or epoch_s"),
                        );
                        TimeFormat::Auto
                    }
                };
            }
            if !s.fields.is_empty() {
                def.fields = Some(
                    s.fields
                        .iter()
                        .filter_map(|(p, _)| FieldPath::parse(p))
                        .collect(),
                );
            }
            // Flags given on the command line win over the file.
            match &base {
                Some(b) => {
                    def.key = b.key.clone();
                    def.time = b.time.clone();
                    def.lateness_ms = b.lateness_ms.max(def.lateness_ms);
                }
                None => {
                    match key {
                        Some(k) => def.key = k,
                        None => self.errors.push(
                            Diagnostic::error(s.name.span, "stream has no `key` field")
                                .with_hint("add `key FIELD` (the field events are grouped by)"),
                        ),
                    }
                    match time {
                        Some(t) => def.time = t,
                        None => self.errors.push(
                            Diagnostic::error(s.name.span, "stream has no `time` field")
                                .with_hint("add `time FIELD` (the event-time field)"),
                        ),
                    }
                }
            }
            if let Some(fields) = &mut def.fields {
                for p in [&def.key, &def.time] {
                    if !fields.contains(p) {
                        fields.push(p.clone());
                    }
                }
            }
            base = Some(def);
        }
        if base.is_none() {
            self.io_errors.push(
                "no stream definition: add a `stream` block to the rules or pass --key and --time"
                    .into(),
            );
            return None;
        }
        base
    }
}

/// Why a rule set did not compile.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// Files could not be read, or no stream is defined.
    #[error("{}", .0.join("\n"))]
    Io(Vec<String>),
    /// Errors in the rule files.
    #[error("{0}")]
    Rules(Diagnostics),
}

fn collect_tl(dir: &Path, out: &mut Vec<std::path::PathBuf>, errs: &mut Vec<String>) {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            errs.push(format!("{}: {e}", dir.display()));
            return;
        }
    };
    for entry in rd.flatten() {
        let p = entry.path();
        if p.is_dir() {
            collect_tl(&p, out, errs);
        } else if p.extension().is_some_and(|e| e == "tl") {
            out.push(p);
        }
    }
}

fn hint_closest<'a>(
    d: Diagnostic,
    name: &str,
    cands: impl IntoIterator<Item = &'a str>,
) -> Diagnostic {
    match suggest(name, cands) {
        Some(s) => d.with_hint(format!("did you mean `{s}`?")),
        None => d,
    }
}

struct StageInfo {
    name: String,
    span: Span,
    negated: bool,
    group: bool,
    /// May be absent from a match (optional itself or inside an optional group).
    may_be_absent: bool,
}

/// What a field reference means where it is written.
#[derive(Clone, Copy, PartialEq)]
enum Ctx {
    /// In a stage condition or payload: plain fields are the current event.
    Event,
    /// Inside a match aggregate over `stage` (None: every stage).
    AggArg(Option<StageId>),
    /// Inside a window aggregate's argument: only plain fields.
    WindowArg,
}

struct RuleChecker<'a> {
    errors: &'a mut Vec<Diagnostic>,
    schema: &'a mut Schema,
    stream: &'a StreamDef,
    limits: Limits,
    stages: Vec<StageInfo>,
    windows: Vec<WindowSpec>,
}

impl RuleChecker<'_> {
    fn err(&mut self, d: Diagnostic) {
        self.errors.push(d);
    }

    fn rule(&mut self, r: &RuleAst) -> Option<RuleDef> {
        let before = self.errors.len();
        let key = match &r.key {
            Some((k, sp)) => match FieldPath::parse(k) {
                Some(p) => {
                    self.check_declared(&p, *sp);
                    p
                }
                None => {
                    self.err(Diagnostic::error(*sp, format!("bad key field path `{k}`")));
                    self.stream.key.clone()
                }
            },
            None => self.stream.key.clone(),
        };
        let key_slot = self.schema.intern(&key);
        let Some(pat) = &r.pattern else {
            self.err(
                Diagnostic::error(
                    r.name.span,
                    format!("rule `{}` has no pattern", r.name.name),
                )
                .with_hint("add `pattern { stage: CONDITION }`"),
            );
            return None;
        };
        self.collect_stages(&pat.stages, false);
        if self.stages.len() > self.limits.max_stages {
            self.err(Diagnostic::error(
                pat.span,
                format!(
                    "{} stages exceed the limit of {}",
                    self.stages.len(),
                    self.limits.max_stages
                ),
            ));
            return None;
        }
        let mut next_id = 0u16;
        let pattern = self
            .pattern(&pat.stages, &mut next_id, true)
            .unwrap_or_default();
        if let Some((w, sp)) = r.within
            && w <= 0
        {
            self.err(Diagnostic::error(sp, "`within` must be positive"));
        }
        if let Some(last) = pat.stages.last()
            && last.contiguity == Contiguity::NotFollow
            && r.within.is_none()
            && last.quant.gap.is_none()
        {
            self.err(
                Diagnostic::error(last.contiguity_span, "a pattern that ends with `not then` needs `within` (or a `gap` on that stage)")
                    .with_hint("add e.g. `within 10m`: the match is emitted when the window closes without the event"),
            );
        }
        let estimate = estimate_states(&pattern);
        if estimate > self.limits.max_states {
            self.err(
                Diagnostic::error(
                    pat.span,
                    format!(
                        "pattern compiles to about {estimate} automaton states, over the limit of {}",
                        self.limits.max_states
                    ),
                )
                .with_hint("lower the repeat counts or split the rule"),
            );
        }
        let skip = match &r.skip {
            None => SkipDef::NoSkip,
            Some((s, sp)) => self.skip(s, *sp, &pattern).unwrap_or(SkipDef::NoSkip),
        };
        let mut payload = Vec::new();
        for (name, e) in &r.payload {
            if payload
                .iter()
                .any(|(n, _): &(String, CExpr)| *n == name.name)
            {
                self.err(Diagnostic::error(
                    name.span,
                    format!("payload value `{}` given twice", name.name),
                ));
            }
            if let Some(c) = self.expr(e, Ctx::Event) {
                payload.push((name.name.clone(), c));
            }
        }
        if self.errors.len() > before {
            return None;
        }
        Some(RuleDef {
            name: r.name.name.clone(),
            description: r.description.clone(),
            key,
            key_slot,
            severity: r.severity.map_or(Severity::Medium, |s| s.0),
            score: r.score.map_or(0.0, |s| s.0),
            within: r.within.map(|w| w.0),
            skip,
            report_timeouts: r.report_timeouts,
            inclusive_aggregates: r.inclusive_aggregates,
            stage_names: self.stages.iter().map(|s| s.name.clone()).collect(),
            pattern,
            payload,
            windows: std::mem::take(&mut self.windows),
        })
    }

    fn collect_stages(&mut self, stages: &[StageAst], absent: bool) {
        for s in stages {
            if let Some(prev) = self.stages.iter().find(|p| p.name == s.name.name) {
                let d = Diagnostic::error(
                    s.name.span,
                    format!("stage name `{}` is used twice", s.name.name),
                );
                let d = d.with_hint(format!(
                    "the first is at byte {}; stage names must be unique in a rule",
                    prev.span.start
                ));
                self.err(d);
            }
            let may_be_absent = absent
                || s.quant.optional.is_some()
                || s.quant.repeat.is_some_and(|r| r.0 == 0)
                || matches!(s.contiguity, Contiguity::NotNext | Contiguity::NotFollow);
            self.stages.push(StageInfo {
                name: s.name.name.clone(),
                span: s.name.span,
                negated: matches!(s.contiguity, Contiguity::NotNext | Contiguity::NotFollow),
                group: matches!(s.body, StageBody::Group(_)),
                may_be_absent,
            });
            if let StageBody::Group(g) = &s.body {
                self.collect_stages(&g.stages, may_be_absent);
            }
        }
    }

    fn stage_id(&self, name: &str) -> Option<StageId> {
        self.stages
            .iter()
            .position(|s| s.name == name)
            .map(|i| i as StageId)
    }

    fn pattern(&mut self, stages: &[StageAst], next_id: &mut u16, top: bool) -> Option<PatternDef> {
        let mut out = Vec::new();
        let mut ok = true;
        for (i, s) in stages.iter().enumerate() {
            let id = *next_id;
            *next_id += 1;
            let negated = matches!(s.contiguity, Contiguity::NotNext | Contiguity::NotFollow);
            if i == 0 && negated {
                self.err(Diagnostic::error(
                    s.contiguity_span,
                    "a pattern cannot start with a negation",
                ));
                ok = false;
            }
            let q = &s.quant;
            if negated {
                let extra = [
                    q.repeat.map(|r| r.2),
                    q.optional,
                    q.greedy,
                    q.inner.map(|i| i.1),
                    q.until.as_ref().map(|u| u.span),
                ];
                if let Some(sp) = extra.into_iter().flatten().next() {
                    self.err(
                        Diagnostic::error(sp, "a negated stage matches exactly one event")
                            .with_hint("remove repeat/optional/greedy/until from `not next`/`not then` stages"),
                    );
                    ok = false;
                }
                if matches!(s.body, StageBody::Group(_)) {
                    self.err(Diagnostic::error(
                        s.name.span,
                        "a negated stage cannot be a group",
                    ));
                    ok = false;
                }
                if !top && i + 1 == stages.len() {
                    self.err(Diagnostic::error(
                        s.contiguity_span,
                        "a group cannot end with a negation",
                    ));
                    ok = false;
                }
            }
            if let Some((_, sp)) = q.gap
                && i == 0
                && top
            {
                self.err(Diagnostic::error(
                    sp,
                    "the first stage has no previous stage to measure a gap from",
                ));
                ok = false;
            }
            // Resolve every part even when one fails, so all errors are reported.
            let quant = self.quant(s);
            let until = match &q.until {
                Some(u) => {
                    if quant.is_some_and(|q| q.kind != QuantKind::Looping) {
                        self.err(
                            Diagnostic::error(u.span, "`until` applies only to open-ended repeats")
                                .with_hint("use `repeat N..` with `until`"),
                        );
                        ok = false;
                    }
                    self.expr(u, Ctx::Event)
                }
                None => None,
            };
            let body = match &s.body {
                StageBody::Cond(e) => self.expr(e, Ctx::Event).map(StageBodyDef::Cond),
                StageBody::Group(g) => self
                    .pattern(&g.stages, next_id, false)
                    .map(StageBodyDef::Group),
            };
            let (Some(quant), Some(body)) = (quant, body) else {
                ok = false;
                continue;
            };
            out.push(StageDef {
                name: s.name.name.clone(),
                id,
                contiguity: s.contiguity,
                body,
                quant,
                until,
                gap: q.gap.map(|g| g.0),
            });
        }
        ok.then_some(PatternDef { stages: out })
    }

    fn quant(&mut self, s: &StageAst) -> Option<QuantDef> {
        let q = &s.quant;
        let mut d = QuantDef::ONE;
        d.optional = q.optional.is_some();
        d.greedy = q.greedy.is_some();
        if let Some((lo, hi, sp)) = q.repeat {
            let mut lo = lo;
            if lo == 0 {
                if hi == Some(0) {
                    self.err(Diagnostic::error(sp, "`repeat 0` matches nothing"));
                    return None;
                }
                d.optional = true;
                lo = 1;
            }
            if let Some(h) = hi
                && h < lo
            {
                self.err(Diagnostic::error(
                    sp,
                    format!("repeat range {lo}..{h} is empty"),
                ));
                return None;
            }
            if lo > self.limits.max_repeat || hi.is_some_and(|h| h > self.limits.max_repeat) {
                self.err(Diagnostic::error(
                    sp,
                    format!(
                        "repeat counts above {} are not allowed",
                        self.limits.max_repeat
                    ),
                ));
                return None;
            }
            match hi {
                None => {
                    d.kind = QuantKind::Looping;
                    d.from = lo;
                    d.to = lo;
                }
                Some(h) if h == lo && h == 1 => {}
                Some(h) => {
                    d.kind = QuantKind::Times;
                    d.from = lo;
                    d.to = h;
                }
            }
        }
        if let Some((c, sp)) = q.inner {
            if d.kind == QuantKind::Single {
                self.err(
                    Diagnostic::error(sp, "`consecutive`/`combinations` apply to repeated stages")
                        .with_hint("add `repeat N..M`"),
                );
                return None;
            }
            d.inner = c;
        }
        if let Some(sp) = q.greedy
            && d.kind == QuantKind::Single
        {
            self.err(
                Diagnostic::error(sp, "`greedy` applies to repeated stages")
                    .with_hint("add `repeat N..`"),
            );
            return None;
        }
        Some(d)
    }

    fn skip(&mut self, s: &SkipAst, sp: Span, pattern: &PatternDef) -> Option<SkipDef> {
        Some(match s {
            SkipAst::NoSkip => SkipDef::NoSkip,
            SkipAst::ToNext => SkipDef::ToNext,
            SkipAst::PastLast => SkipDef::PastLast,
            SkipAst::ToFirst(st, strict) | SkipAst::ToLast(st, strict) => {
                let first = matches!(s, SkipAst::ToFirst(..));
                let Some(id) = self.stage_id(&st.name) else {
                    let d = Diagnostic::error(st.span, format!("unknown stage `{}`", st.name));
                    let names: Vec<String> = self.stages.iter().map(|s| s.name.clone()).collect();
                    self.err(hint_closest(d, &st.name, names.iter().map(|s| s.as_str())));
                    return None;
                };
                let info = &self.stages[id as usize];
                if info.negated || info.group {
                    self.err(Diagnostic::error(
                        st.span,
                        "skip must name a stage that takes events (not a negation or group)",
                    ));
                    return None;
                }
                if *strict {
                    if info.may_be_absent {
                        self.err(
                            Diagnostic::error(st.span, format!("stage `{}` may be absent from a match", st.name))
                                .with_hint("`or fail` needs a stage present in every match; drop `or fail` to skip nothing when it is absent"),
                        );
                        return None;
                    }
                    if first && pattern.stages.first().is_some_and(|f| f.id == id) {
                        self.err(
                            Diagnostic::error(
                                sp,
                                "skipping to the first event of the first stage never advances",
                            )
                            .with_hint("use `skip to next`"),
                        );
                        return None;
                    }
                }
                if first {
                    SkipDef::ToFirst(id, *strict)
                } else {
                    SkipDef::ToLast(id, *strict)
                }
            }
        })
    }

    fn check_declared(&mut self, p: &FieldPath, sp: Span) {
        if p.0.len() > 1
            && self.stage_id(&p.0[0]).is_none()
            && let Some(s) = suggest(&p.0[0], self.stages.iter().map(|s| s.name.as_str()))
        {
            let d = Diagnostic::error(sp, format!("unknown stage `{}`", p.0[0]));
            self.err(d.with_hint(format!("did you mean `{s}`?")));
            return;
        }
        if let Some(fields) = &self.stream.fields
            && !fields.contains(p)
        {
            let name = p.to_string();
            let cands: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
            let mut cands_ref: Vec<&str> = cands.iter().map(|s| s.as_str()).collect();
            let stage_names: Vec<String> = self.stages.iter().map(|s| s.name.clone()).collect();
            cands_ref.extend(stage_names.iter().map(|s| s.as_str()));
            let d = Diagnostic::error(sp, format!("unknown field `{name}`"));
            let d = match suggest(&name, cands_ref) {
                Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                None => d.with_hint(format!(
                    "stream `{}` declares: {}",
                    self.stream.name,
                    cands.join(", ")
                )),
            };
            self.err(d);
        }
    }

    fn field(&mut self, parts: &[Ident]) -> Option<CExpr> {
        let path = FieldPath(parts.iter().map(|p| p.name.as_str().into()).collect());
        let sp = parts[0].span.to(parts[parts.len() - 1].span);
        self.check_declared(&path, sp);
        Some(CExpr::Field(self.schema.intern(&path)))
    }

    fn expr(&mut self, e: &Expr, ctx: Ctx) -> Option<CExpr> {
        Some(match &e.kind {
            ExprKind::Num(n) => CExpr::Lit(Value::Num(*n)),
            ExprKind::Str(s) => CExpr::Lit(Value::from(s.as_str())),
            ExprKind::Bool(b) => CExpr::Lit(Value::Bool(*b)),
            ExprKind::Null => CExpr::Lit(Value::Null),
            ExprKind::Path(parts) => return self.path(parts, ctx, e.span),
            ExprKind::Unary(op, x) => CExpr::Unary(*op, Box::new(self.expr(x, ctx)?)),
            ExprKind::Binary(op, a, b) => {
                let a = self.expr(a, ctx);
                let b = self.expr(b, ctx);
                CExpr::Binary(*op, Box::new(a?), Box::new(b?))
            }
            ExprKind::In(x, items, neg) => {
                let x = self.expr(x, ctx);
                let items: Vec<Option<CExpr>> = items.iter().map(|i| self.expr(i, ctx)).collect();
                CExpr::In(
                    Box::new(x?),
                    items.into_iter().collect::<Option<Vec<_>>>()?,
                    *neg,
                )
            }
            ExprKind::Matches(x, re, sp) => {
                let x = self.expr(x, ctx)?;
                match regex_automata::meta::Regex::new(re) {
                    Ok(r) => CExpr::Matches(Box::new(x), Arc::new(r)),
                    Err(err) => {
                        self.err(Diagnostic::error(
                            *sp,
                            format!("invalid regular expression: {err}"),
                        ));
                        return None;
                    }
                }
            }
            ExprKind::IsNull(x, is) => CExpr::IsNull(Box::new(self.expr(x, ctx)?), *is),
            ExprKind::Call(c) => return self.call(c, ctx, e.span),
            ExprKind::Member(inner, path) => return self.member(inner, path, ctx, e.span),
        })
    }

    fn path(&mut self, parts: &[Ident], ctx: Ctx, span: Span) -> Option<CExpr> {
        let head = &parts[0].name;
        if let Some(id) = self.stage_id(head) {
            if self.stages[id as usize].negated {
                self.err(Diagnostic::error(
                    parts[0].span,
                    format!("stage `{head}` is a negation: it never holds events"),
                ));
                return None;
            }
            if parts.len() == 1 {
                self.err(
                    Diagnostic::error(span, format!("stage `{head}` is not a value")).with_hint(
                        format!("name a field: `{head}.FIELD`, or count it: `count({head})`"),
                    ),
                );
                return None;
            }
            let field = self.field(&parts[1..])?;
            let CExpr::Field(slot) = field else {
                return None;
            };
            return match ctx {
                Ctx::Event => Some(CExpr::StageLast(id, slot)),
                Ctx::AggArg(Some(s)) if s == id => Some(CExpr::Field(slot)),
                Ctx::AggArg(_) => {
                    self.err(Diagnostic::error(
                        span,
                        "an aggregate may read only the stage it aggregates over",
                    ));
                    None
                }
                Ctx::WindowArg => {
                    self.err(
                        Diagnostic::error(
                            span,
                            "a window aggregate reads the key's events, not a stage's",
                        )
                        .with_hint("drop the stage name"),
                    );
                    None
                }
            };
        }
        if parts.len() == 1 && self.stream.fields.is_some() {
            // Unknown single names may be misspelt stage names too.
            let known = self
                .stream
                .fields
                .as_ref()
                .is_some_and(|f| f.contains(&FieldPath::single(head)));
            if !known {
                let stage_names: Vec<String> = self.stages.iter().map(|s| s.name.clone()).collect();
                let fields: Vec<String> = self
                    .stream
                    .fields
                    .iter()
                    .flatten()
                    .map(|f| f.to_string())
                    .collect();
                let d = Diagnostic::error(span, format!("unknown field or stage `{head}`"));
                self.err(hint_closest(
                    d,
                    head,
                    stage_names.iter().chain(fields.iter()).map(|s| s.as_str()),
                ));
                return None;
            }
        }
        self.field(parts)
    }

    /// Stage named in an aggregate argument, if exactly one.
    fn agg_stage(&mut self, args: &[Expr]) -> Result<Option<StageId>, ()> {
        let mut found: Vec<(StageId, Span)> = Vec::new();
        for a in args {
            self.stage_refs(a, &mut found);
        }
        found.sort_by_key(|f| f.0);
        found.dedup_by_key(|f| f.0);
        match found.len() {
            0 => Ok(None),
            1 => Ok(Some(found[0].0)),
            _ => {
                self.err(Diagnostic::error(
                    found[1].1,
                    "an aggregate may read only one stage",
                ));
                Err(())
            }
        }
    }

    fn stage_refs(&self, e: &Expr, out: &mut Vec<(StageId, Span)>) {
        match &e.kind {
            ExprKind::Path(p) => {
                if let Some(id) = self.stage_id(&p[0].name) {
                    out.push((id, p[0].span));
                }
            }
            ExprKind::Unary(_, x) | ExprKind::IsNull(x, _) | ExprKind::Matches(x, _, _) => {
                self.stage_refs(x, out)
            }
            ExprKind::Binary(_, a, b) => {
                self.stage_refs(a, out);
                self.stage_refs(b, out);
            }
            ExprKind::In(x, items, _) => {
                self.stage_refs(x, out);
                for i in items {
                    self.stage_refs(i, out);
                }
            }
            ExprKind::Call(_) | ExprKind::Member(..) => {}
            _ => {}
        }
    }

    fn call(&mut self, c: &Call, ctx: Ctx, span: Span) -> Option<CExpr> {
        let name = c.name.name.as_str();
        if name == "event_type" {
            if !c.args.is_empty() || c.star || c.window.is_some() {
                self.err(Diagnostic::error(span, "`event_type()` takes no argument"));
                return None;
            }
            let Some(path) = self.stream.event_type.clone() else {
                self.err(
                    Diagnostic::error(
                        span,
                        format!("stream `{}` declares no event type field", self.stream.name),
                    )
                    .with_hint("add `type FIELD` to the stream block"),
                );
                return None;
            };
            return Some(CExpr::Field(self.schema.intern(&path)));
        }
        if let Some((w, wsp)) = &c.window {
            return self.window_call(c, w, *wsp, ctx);
        }
        if c.distinct {
            self.err(
                Diagnostic::error(c.name.span, "`distinct` needs a window")
                    .with_hint("e.g. `count(distinct TERMINAL_ID over 1d)`"),
            );
            return None;
        }
        if (name == "min" || name == "max") && c.args.len() >= 2 {
            let f = if name == "min" {
                Func::Least
            } else {
                Func::Greatest
            };
            let args = self.args(&c.args, ctx)?;
            return Some(CExpr::Func(f, args));
        }
        if AGG_NAMES.contains(&name) {
            if name == "stddev" {
                self.err(
                    Diagnostic::error(span, "`stddev` needs a window")
                        .with_hint("e.g. `stddev(TX_AMOUNT over 30d)`"),
                );
                return None;
            }
            if matches!(ctx, Ctx::AggArg(_) | Ctx::WindowArg) {
                self.err(Diagnostic::error(span, "aggregates cannot be nested"));
                return None;
            }
            return self.match_agg(c, span);
        }
        let Some(&(_, f, lo, hi)) = SCALAR_FUNCS.iter().find(|(n, ..)| *n == name) else {
            let d = Diagnostic::error(c.name.span, format!("unknown function `{name}`"));
            let all = SCALAR_FUNCS
                .iter()
                .map(|f| f.0)
                .chain(AGG_NAMES.iter().copied());
            self.err(hint_closest(d, name, all));
            return None;
        };
        if c.star || c.args.len() < lo || c.args.len() > hi {
            let want = if lo == hi {
                format!("{lo}")
            } else {
                format!("{lo} to {hi}")
            };
            self.err(Diagnostic::error(
                span,
                format!("`{name}` takes {want} argument(s)"),
            ));
            return None;
        }
        let args = self.args(&c.args, ctx)?;
        Some(CExpr::Func(f, args))
    }

    fn args(&mut self, args: &[Expr], ctx: Ctx) -> Option<Vec<CExpr>> {
        let v: Vec<Option<CExpr>> = args.iter().map(|a| self.expr(a, ctx)).collect();
        v.into_iter().collect()
    }

    fn match_agg(&mut self, c: &Call, span: Span) -> Option<CExpr> {
        let func = match c.name.name.as_str() {
            "count" => AggFunc::Count,
            "sum" => AggFunc::Sum,
            "avg" => AggFunc::Avg,
            "min" => AggFunc::Min,
            "max" => AggFunc::Max,
            "first" => AggFunc::First,
            "last" => AggFunc::Last,
            _ => return None,
        };
        if c.star {
            if func != AggFunc::Count {
                self.err(Diagnostic::error(span, "`*` works only with `count`"));
                return None;
            }
            return Some(CExpr::MatchAgg(Box::new(MatchAgg {
                func,
                stage: None,
                arg: None,
                offset: 0,
            })));
        }
        let mut args: &[Expr] = &c.args;
        let mut offset = 0usize;
        if matches!(func, AggFunc::First | AggFunc::Last) && args.len() == 2 {
            match &args[1].kind {
                ExprKind::Num(n) if *n >= 0.0 && n.fract() == 0.0 && *n < 1e6 => {
                    offset = *n as usize
                }
                _ => {
                    self.err(Diagnostic::error(
                        args[1].span,
                        "the offset must be a whole number ≥ 0",
                    ));
                    return None;
                }
            }
            args = &args[..1];
        }
        if args.len() > 1 {
            self.err(Diagnostic::error(
                span,
                format!("`{}` takes one argument", c.name.name),
            ));
            return None;
        }
        if args.is_empty() {
            if func == AggFunc::Count {
                return Some(CExpr::MatchAgg(Box::new(MatchAgg {
                    func,
                    stage: None,
                    arg: None,
                    offset: 0,
                })));
            }
            self.err(Diagnostic::error(
                span,
                format!("`{}` needs an argument", c.name.name),
            ));
            return None;
        }
        // `count(stage)`, `first(stage)` (with a member access handled by the caller)
        if let ExprKind::Path(p) = &args[0].kind
            && p.len() == 1
            && let Some(id) = self.stage_id(&p[0].name)
        {
            if func != AggFunc::Count {
                self.err(
                    Diagnostic::error(
                        args[0].span,
                        format!("`{}` of a whole stage needs a field", c.name.name),
                    )
                    .with_hint(format!("e.g. `{}({}.FIELD)`", c.name.name, p[0].name)),
                );
                return None;
            }
            if self.stages[id as usize].negated {
                self.err(Diagnostic::error(
                    args[0].span,
                    "a negated stage never holds events",
                ));
                return None;
            }
            return Some(CExpr::MatchAgg(Box::new(MatchAgg {
                func,
                stage: Some(id),
                arg: None,
                offset: 0,
            })));
        }
        let stage = self.agg_stage(args).ok()?;
        let arg = self.expr(&args[0], Ctx::AggArg(stage))?;
        Some(CExpr::MatchAgg(Box::new(MatchAgg {
            func,
            stage,
            arg: Some(arg),
            offset,
        })))
    }

    fn member(&mut self, inner: &Expr, path: &[Ident], _ctx: Ctx, span: Span) -> Option<CExpr> {
        let ExprKind::Call(c) = &inner.kind else {
            self.err(Diagnostic::error(
                span,
                "only `first(stage)` and `last(stage)` have fields",
            ));
            return None;
        };
        let func = match c.name.name.as_str() {
            "first" => AggFunc::First,
            "last" => AggFunc::Last,
            _ => {
                self.err(Diagnostic::error(
                    span,
                    "only `first(stage)` and `last(stage)` have fields",
                ));
                return None;
            }
        };
        let stage = match c.args.first().map(|a| &a.kind) {
            Some(ExprKind::Path(p)) if p.len() == 1 => match self.stage_id(&p[0].name) {
                Some(id) => id,
                None => {
                    let names: Vec<String> = self.stages.iter().map(|s| s.name.clone()).collect();
                    let d = Diagnostic::error(p[0].span, format!("unknown stage `{}`", p[0].name));
                    self.err(hint_closest(
                        d,
                        &p[0].name,
                        names.iter().map(|s| s.as_str()),
                    ));
                    return None;
                }
            },
            _ => {
                self.err(Diagnostic::error(
                    inner.span,
                    "expected `first(STAGE).FIELD`",
                ));
                return None;
            }
        };
        let offset = match c.args.get(1).map(|a| &a.kind) {
            None => 0,
            Some(ExprKind::Num(n)) if *n >= 0.0 && n.fract() == 0.0 => *n as usize,
            Some(_) => {
                self.err(Diagnostic::error(
                    inner.span,
                    "the offset must be a whole number ≥ 0",
                ));
                return None;
            }
        };
        let field = self.field(path)?;
        Some(CExpr::MatchAgg(Box::new(MatchAgg {
            func,
            stage: Some(stage),
            arg: Some(field),
            offset,
        })))
    }

    fn window_call(&mut self, c: &Call, w: &WindowAst, wsp: Span, ctx: Ctx) -> Option<CExpr> {
        if matches!(ctx, Ctx::AggArg(_) | Ctx::WindowArg) {
            self.err(Diagnostic::error(
                c.name.span,
                "aggregates cannot be nested",
            ));
            return None;
        }
        let len_ok = match w {
            WindowAst::Sliding(l) | WindowAst::Tumbling(l) | WindowAst::Session(l) => *l > 0,
            WindowAst::Ending(l, ago) => *l > 0 && *ago >= 0,
        };
        if !len_ok {
            self.err(Diagnostic::error(wsp, "window lengths must be positive"));
            return None;
        }
        let func = match (c.name.name.as_str(), c.distinct) {
            ("count", true) => WinFunc::CountDistinct,
            ("count", false) => WinFunc::Count,
            ("sum", false) => WinFunc::Sum,
            ("avg", false) => WinFunc::Avg,
            ("min", false) => WinFunc::Min,
            ("max", false) => WinFunc::Max,
            ("stddev", false) => WinFunc::Stddev,
            (n, true) => {
                self.err(Diagnostic::error(
                    c.name.span,
                    format!("`distinct` works only with `count`, not `{n}`"),
                ));
                return None;
            }
            (n, false) => {
                let d = Diagnostic::error(c.name.span, format!("`{n}` has no windowed form"));
                self.err(d.with_hint(
                    "windowed aggregates: count, count distinct, sum, avg, min, max, stddev",
                ));
                return None;
            }
        };
        let arg = match (c.star, c.args.len()) {
            (true, _) | (false, 0) => {
                if func != WinFunc::Count {
                    self.err(Diagnostic::error(
                        c.name.span,
                        format!("`{}` needs a value", c.name.name),
                    ));
                    return None;
                }
                None
            }
            (false, 1) => Some(self.expr(&c.args[0], Ctx::WindowArg)?),
            _ => {
                self.err(Diagnostic::error(
                    c.name.span,
                    "a window aggregate takes one value",
                ));
                return None;
            }
        };
        if arg.as_ref().is_some_and(|a| a.depends_on_match()) {
            self.err(Diagnostic::error(
                c.name.span,
                "a window aggregate cannot read the match",
            ));
            return None;
        }
        let spec = WindowSpec {
            func,
            arg,
            window: w.clone(),
        };
        // The same aggregate written twice (condition and payload) shares one state.
        let same = |a: &WindowSpec| {
            a.func == spec.func
                && a.window == spec.window
                && format!("{:?}", a.arg) == format!("{:?}", spec.arg)
        };
        if let Some(i) = self.windows.iter().position(same) {
            return Some(CExpr::Window(i as u16));
        }
        self.windows.push(spec);
        Some(CExpr::Window((self.windows.len() - 1) as u16))
    }
}

/// A rough upper bound on the automaton states a pattern compiles to.
fn estimate_states(p: &PatternDef) -> usize {
    p.stages
        .iter()
        .map(|s| {
            let per = match &s.body {
                StageBodyDef::Cond(_) => 3,
                StageBodyDef::Group(g) => estimate_states(g) + 1,
            };
            let copies = match s.quant.kind {
                QuantKind::Single => 1,
                QuantKind::Times => s.quant.to as usize,
                QuantKind::Looping => s.quant.from as usize + 1,
            };
            per.saturating_mul(copies)
        })
        .fold(2usize, |a, b| a.saturating_add(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(src: &str) -> Result<RuleSetDef, String> {
        let mut c = Compiler::new();
        c.add_source("t.tl", src);
        c.compile().map_err(|e| e.to_string())
    }

    const STREAM: &str =
        "stream tx { key CUSTOMER_ID time TX_DATETIME fields TX_AMOUNT, TERMINAL_ID }\n";

    #[test]
    fn resolves_stages_fields_and_windows() {
        let src = format!(
            "{STREAM}rule r {{ pattern {{ a: TX_AMOUNT > 2 * avg(TX_AMOUNT over 30d) then b: TX_AMOUNT > sum(a.TX_AMOUNT) and b.TX_AMOUNT > 0 }} }}"
        );
        let rs = compile(&src).unwrap();
        let r = &rs.rules[0];
        assert_eq!(r.stage_names, vec!["a", "b"]);
        assert_eq!(r.windows.len(), 1);
    }

    #[test]
    fn unknown_names_get_suggestions_in_one_pass() {
        let src = format!(
            "{STREAM}rule r {{ pattern {{ small: TX_AMOUNT < 5 then large: TX_AMOUT > max(smal.TX_AMOUNT) }} skip to first larg }}"
        );
        let err = compile(&src).unwrap_err();
        assert!(err.contains("did you mean `TX_AMOUNT`?"), "{err}");
        assert!(err.contains("did you mean `small`?"), "{err}");
        assert!(err.contains("did you mean `large`?"), "{err}");
        assert!(err.contains("3 errors"), "{err}");
    }

    #[test]
    fn rejects_invalid_constructs() {
        let cases = [
            (
                "rule r { pattern { a: true not then b: true } }",
                "needs `within`",
            ),
            (
                "rule r { pattern { a: true then b: true until true } }",
                "open-ended",
            ),
            ("rule r { pattern { a: true repeat 5..2 } }", "empty"),
            (
                "rule r { pattern { a: true repeat 1000000 } }",
                "not allowed",
            ),
            ("rule r { pattern { a: true greedy } }", "repeated"),
            (
                "rule r { pattern { a: true then b: true optional } skip to first b or fail }",
                "absent",
            ),
            (
                "rule r { pattern { a: true } skip to first a or fail }",
                "never advances",
            ),
            (
                "rule r { pattern { a: true repeat 300 then b: (c: true next d: true repeat 300) repeat 10 } }",
                "automaton states",
            ),
            (
                "rule r { pattern { a: x matches \"(\" } }",
                "regular expression",
            ),
            (
                "rule r { pattern { a: frobnicate(x) } }",
                "unknown function",
            ),
            (
                "rule r { pattern { a: true } } rule r { pattern { a: true } }",
                "defined twice",
            ),
        ];
        for (src, want) in cases {
            let err = compile(&format!("stream s {{ key k time t }}\n{src}")).unwrap_err();
            assert!(err.contains(want), "{src}: {err}");
        }
    }
}
