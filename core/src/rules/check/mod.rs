//! Semantic checks: resolves names in the parsed files against the stream and
//! the rule's stages, validates quantifiers, skips and limits, and produces
//! the [`RuleSetDef`]. Every error of every file is collected in one pass.
//!
//! This module holds the [`Compiler`] (files, the stream, rule-level checks);
//! `pattern` checks stages, quantifiers and skips; `expr` resolves expressions.

use super::ast::*;
use super::diag::{Diagnostic, Diagnostics, SourceMap, Span, suggest};
use super::ir::*;
use super::parser::parse_file;
use crate::event::{FieldPath, Schema, TimeFormat, Value};
use crate::model::ModelError;
use std::collections::BTreeMap;
use std::path::Path;

mod expr;
mod pattern;

use pattern::estimate_states;

/// The most streams one rule set may define: a rule's streams are a bit
/// set in the engine's dispatch.
pub const MAX_STREAMS: usize = 64;
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
    /// Heap one compiled regular expression (`matches`) may take.
    pub max_regex_bytes: usize,
    /// Heap the regular expressions of a whole rule set may take: without
    /// it, a few hundred large ones in a small file take gigabytes.
    pub max_regex_total_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_states: 4096,
            max_repeat: 1000,
            max_stages: 256,
            max_regex_bytes: 2 << 20,
            max_regex_total_bytes: 32 << 20,
        }
    }
}

/// Whether `path` lies under `dir`, comparing the two made absolute and
/// with `.` and `..` resolved by their text (symbolic links inside `dir`
/// are the operator's own).
fn lexically_within(path: &Path, dir: &Path) -> bool {
    fn normal(p: &Path) -> std::path::PathBuf {
        use std::path::Component::*;
        let absolute = if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir().unwrap_or_default().join(p)
        };
        let mut out = std::path::PathBuf::new();
        for c in absolute.components() {
            match c {
                ParentDir => {
                    out.pop();
                }
                CurDir => {}
                other => out.push(other),
            }
        }
        out
    }
    normal(path).starts_with(normal(dir))
}

/// Where the checker gets the bytes of the models rules declare: the core
/// opens no file, so the CLI and the service hand it a reader of theirs.
pub trait ModelFiles: Send + Sync {
    /// The bytes of the model file at `path` (relative paths already
    /// resolved against the declaring rule file's directory).
    fn read(&self, path: &Path) -> Result<Vec<u8>, ModelError>;
}

/// The model reader a rule set was compiled with, kept so that the rules
/// some state was written under can be compiled again (`None`: models
/// cannot be loaded).
#[derive(Clone, Default)]
pub struct ModelReader(pub Option<Arc<dyn ModelFiles>>);

impl std::fmt::Debug for ModelReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "ModelReader(Some(..))"
        } else {
            "ModelReader(None)"
        })
    }
}

impl ModelReader {
    fn read(&self, path: &Path) -> Result<Vec<u8>, ModelError> {
        match &self.0 {
            Some(files) => files.read(path),
            None => Err(ModelError::Invalid(
                "models cannot be loaded here (the checker was given no model files)".into(),
            )),
        }
    }
}

/// Collects rule sources and compiles them into a [`RuleSetDef`].
#[derive(Default)]
pub struct Compiler {
    sources: SourceMap,
    files: Vec<(u32, FileAst)>,
    errors: Vec<Diagnostic>,
    io_errors: Vec<String>,
    stream: Option<StreamDef>,
    limits: Limits,
    models_dir: Option<std::path::PathBuf>,
    /// Sources whose models must be in `models_dir`.
    untrusted: Vec<u32>,
    models: ModelReader,
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

    /// Loads the models of sources added with
    /// [`Compiler::add_untrusted_source`] only from files under `dir` (by
    /// their path, `..` resolved, before the file is touched): rule text from
    /// the API, whose `model … from "/etc/shadow"` would otherwise read any
    /// file the process can, and tell by its error whether it exists.
    pub fn models_dir(&mut self, dir: &Path) -> &mut Compiler {
        self.models_dir = Some(dir.to_path_buf());
        self
    }

    /// Uses `stream` instead of (or in the absence of) a `stream` block.
    pub fn stream(&mut self, stream: StreamDef) -> &mut Compiler {
        self.stream = Some(stream);
        self
    }

    /// Adds source text from an untrusted origin (the API): its models are
    /// loaded only from [`Compiler::models_dir`].
    pub fn add_untrusted_source(&mut self, name: &str, text: &str) -> &mut Compiler {
        let before = self.files.len();
        self.add_source(name, text);
        if let Some((id, _)) = self.files.get(before) {
            self.untrusted.push(*id);
        }
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

    /// Reads declared models through `models`.
    pub fn model_files(&mut self, models: ModelReader) -> &mut Compiler {
        self.models = models;
        self
    }

    /// Records that a rule source could not be read: compiling then fails
    /// with it (and every other such error) before anything is checked.
    pub fn io_error(&mut self, message: String) -> &mut Compiler {
        self.io_errors.push(message);
        self
    }

    /// Checks everything and returns the rule set, or every error found.
    pub fn compile(mut self) -> Result<RuleSetDef, CompileError> {
        if !self.io_errors.is_empty() {
            return Err(CompileError::Io(self.io_errors));
        }
        let Some(streams) = self.resolve_streams() else {
            return Err(self.finish_err());
        };
        let mut schema = Schema::default();
        let stream_slots: Vec<StreamSlots> = streams
            .iter()
            .map(|s| StreamSlots {
                key: schema.intern(&s.key),
                time: schema.intern(&s.time),
                order: s
                    .order
                    .iter()
                    .map(|o| (schema.intern(&o.field), o.descending))
                    .collect(),
            })
            .collect();
        let stream_slot =
            (streams.len() > 1).then(|| schema.intern(&FieldPath::single(STREAM_FIELD)));
        let files = std::mem::take(&mut self.files);
        let derived = self.derived_names(&files);
        // Rules may name computed values wherever they may name fields.
        let mut visible = streams.clone();
        for stream in &mut visible {
            let Some(fields) = &mut stream.fields else {
                continue;
            };
            for (name, (_, span)) in &derived {
                let p = FieldPath::single(name);
                if fields.contains(&p) {
                    self.errors.push(
                        Diagnostic::error(
                            *span,
                            format!("`{name}` is a field of stream `{}`", stream.name),
                        )
                        .with_hint(
                            "a feature or model is read by name like a field: give it another name",
                        ),
                    );
                } else {
                    fields.push(p);
                }
            }
        }
        let models = self.load_models(&files, &derived, &visible, &mut schema);
        let model_inputs: BTreeMap<String, Vec<String>> = models
            .iter()
            .map(|m| (m.name.clone(), m.model.inputs().to_vec()))
            .collect();
        let mut rules = Vec::new();
        let mut regex_room = RegexBudget {
            room: self.limits.max_regex_total_bytes,
            refused: false,
        };
        let mut lookups = LookupTable::default();
        let mut field_uses = FieldUses::default();
        for (_, file) in &files {
            for l in &file.lists {
                if let Some(prev) = lookups.lists.get(&l.name) {
                    let (line, _) = self.sources.line_col(prev.file, prev.start);
                    self.errors.push(
                        Diagnostic::error(l.span, format!("list `{}` is declared twice", l.name))
                            .with_hint(format!(
                                "first declared in {} line {line}",
                                self.sources.get(prev.file).name
                            )),
                    );
                } else if derived.contains_key(&l.name) {
                    self.errors.push(Diagnostic::error(
                        l.span,
                        format!("`{}` is already a feature or model name", l.name),
                    ));
                } else {
                    lookups.lists.insert(l.name.clone(), l.span);
                }
            }
        }
        for (_, file) in &files {
            for t in &file.tables {
                self.declare_table(t, &derived, &mut lookups);
            }
        }
        let mut names: BTreeMap<String, Span> = BTreeMap::new();
        let mut feature_names: BTreeMap<String, String> = BTreeMap::new();
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
                if r.features {
                    // Features are columns of one row per event: one name, one column.
                    for (f, _) in &r.payload {
                        match feature_names.get(&f.name) {
                            Some(set) if *set != r.name.name => {
                                self.errors.push(
                                    Diagnostic::error(
                                        f.span,
                                        format!(
                                            "feature `{}` is also defined in feature set `{set}`",
                                            f.name
                                        ),
                                    )
                                    .with_hint("feature names are unique across feature sets"),
                                );
                            }
                            _ => {
                                feature_names.insert(f.name.clone(), r.name.name.clone());
                            }
                        }
                    }
                }
                let mut rc = RuleChecker {
                    errors: &mut self.errors,
                    schema: &mut schema,
                    streams: &visible,
                    rule_streams: Vec::new(),
                    default_stream: 0,
                    scope: Vec::new(),
                    stream_slot,
                    limits: self.limits,
                    stages: Vec::new(),
                    windows: Vec::new(),
                    derived: &derived,
                    model_inputs: &model_inputs,
                    in_features: r.features,
                    models_read: Vec::new(),
                    regex_room: &mut regex_room,
                    lookups: &mut lookups,
                    lookups_read: Vec::new(),
                    field_uses: &mut field_uses,
                    rule_name: r.name.name.clone(),
                };
                if let Some(def) = rc.rule(r) {
                    rules.push(def);
                }
            }
        }
        let mut examples = Vec::new();
        for (id, file) in &files {
            for ex in &file.examples {
                self.check_expected_values(&ex.expect_alerts, &rules, &lookups.defs);
                let expected = ex.expect.iter().map(|(r, _)| r);
                for rule in expected.chain(ex.expect_alerts.iter().map(|(r, _)| r)) {
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
                for (list, _) in &ex.lists {
                    if !lookups.lists.contains_key(&list.name) {
                        self.errors.push(
                            Diagnostic::error(list.span, format!("unknown list `{}`", list.name))
                                .with_hint(format!("declare it: `list {}`", list.name)),
                        );
                    }
                }
                for (table, rows, sp) in &ex.tables {
                    let Some((decl, _)) = lookups.tables.get(&table.name) else {
                        self.errors.push(
                            Diagnostic::error(
                                table.span,
                                format!("unknown table `{}`", table.name),
                            )
                            .with_hint(format!(
                                "declare it: `table {} {{ key FIELD, time FIELD }}`",
                                table.name
                            )),
                        );
                        continue;
                    };
                    let check = crate::tables::Tables::new();
                    for (i, row) in rows.lines().enumerate() {
                        if row.trim().is_empty() {
                            continue;
                        }
                        if let Err(e) = check.load(&decl.spec, row) {
                            self.errors.push(Diagnostic::error(
                                *sp,
                                format!("table `{}` row {}: {e}", table.name, i + 1),
                            ));
                        }
                    }
                }
                if ex.events.is_empty() {
                    self.errors.push(Diagnostic::error(
                        ex.name.span,
                        "example has no `events` block",
                    ));
                    continue;
                }
                let mut events: Vec<(u16, String)> = Vec::new();
                for (stream, text, sp) in &ex.events {
                    let index = match stream {
                        None => 0,
                        Some(name) => match streams.iter().position(|s| s.name == name.name) {
                            Some(i) => i as u16,
                            None => {
                                let d = Diagnostic::error(
                                    name.span,
                                    format!("unknown stream `{}`", name.name),
                                );
                                self.errors.push(hint_closest(
                                    d,
                                    &name.name,
                                    streams.iter().map(|s| s.name.as_str()),
                                ));
                                continue;
                            }
                        },
                    };
                    if events.iter().any(|(i, _)| *i == index) {
                        self.errors.push(Diagnostic::error(
                            *sp,
                            format!(
                                "the example gives the events of stream `{}` twice",
                                streams[index as usize].name
                            ),
                        ));
                        continue;
                    }
                    events.push((index, text.clone()));
                }
                examples.push(ExampleDef {
                    name: ex.name.name.clone(),
                    file: self.sources.get(*id).name.clone(),
                    events,
                    expect: ex
                        .expect
                        .iter()
                        .map(|(r, n)| (r.name.clone(), *n))
                        .collect(),
                    expect_alerts: ex
                        .expect_alerts
                        .iter()
                        .map(|(r, values)| {
                            let values = values
                                .iter()
                                .map(|(n, v, _)| (n.name.clone(), v.clone()))
                                .collect();
                            (r.name.clone(), values)
                        })
                        .collect(),
                    lists: ex
                        .lists
                        .iter()
                        .map(|(l, v)| (l.name.clone(), v.clone()))
                        .collect(),
                    tables: ex
                        .tables
                        .iter()
                        .map(|(t, rows, _)| (t.name.clone(), rows.clone()))
                        .collect(),
                });
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
        // One stream hashes as it did before rule sets could have several.
        for stream in &streams {
            h.update(format!("{stream:?}").as_bytes());
        }
        // A retrained model is a rule change: alerts and migration see it.
        for m in &models {
            h.update(&m.model.hash().to_le_bytes());
            if let Some(c) = &m.candidate {
                h.update(&c.model.hash().to_le_bytes());
            }
        }
        let origin = RuleOrigin {
            sources: files
                .iter()
                .map(|(id, _)| {
                    let s = self.sources.get(*id);
                    (s.name.clone(), s.text.clone())
                })
                .collect(),
            stream: self.stream.clone(),
        };
        Ok(RuleSetDef {
            streams,
            stream_slots,
            stream_slot,
            rules,
            examples,
            models,
            schema,
            lists: lookups.lists.keys().cloned().collect(),
            tables: lookups.tables.into_values().map(|(t, _)| t).collect(),
            lookups: lookups.defs,
            hash: h.digest(),
            origin: Arc::new(origin),
            model_files: std::mem::take(&mut self.models),
        })
    }

    /// Checks a `table` declaration and records it.
    fn declare_table(
        &mut self,
        t: &TableAst,
        derived: &BTreeMap<String, (Derived, Span)>,
        lookups: &mut LookupTable,
    ) {
        let name = &t.name.name;
        if let Some((_, prev)) = lookups.tables.get(name) {
            let (line, _) = self.sources.line_col(prev.file, prev.start);
            self.errors.push(
                Diagnostic::error(t.name.span, format!("table `{name}` is declared twice"))
                    .with_hint(format!(
                        "first declared in {} line {line}",
                        self.sources.get(prev.file).name
                    )),
            );
            return;
        }
        if lookups.lists.contains_key(name) || derived.contains_key(name) {
            self.errors.push(Diagnostic::error(
                t.name.span,
                format!("`{name}` is already a list, feature or model name"),
            ));
            return;
        }
        let path =
            |(p, sp): &(String, Span), errors: &mut Vec<Diagnostic>| match FieldPath::parse(p) {
                Some(f) => Some(f),
                None => {
                    errors.push(Diagnostic::error(*sp, format!("`{p}` is not a field path")));
                    None
                }
            };
        let Some(key) = &t.key else {
            self.errors.push(
                Diagnostic::error(t.name.span, format!("table `{name}` has no key"))
                    .with_hint("say which field of a row is its key: `key CUSTOMER_ID`"),
            );
            return;
        };
        let Some(key) = path(key, &mut self.errors) else {
            return;
        };
        let time = match &t.time {
            Some(time) => match path(time, &mut self.errors) {
                Some(f) => Some(f),
                None => return,
            },
            None => None,
        };
        let topic = t
            .topic
            .as_ref()
            .map_or_else(|| name.clone(), |(topic, _)| topic.clone());
        lookups.tables.insert(
            name.clone(),
            (
                TableDecl {
                    spec: crate::tables::TableSpec {
                        name: name.clone(),
                        key,
                        time,
                    },
                    topic,
                },
                t.name.span,
            ),
        );
    }

    /// Each name in an example's `expect RULE { … }` is one the rule's
    /// alerts carry: `key`, `event_time`, a payload value or a lookup's
    /// evidence (an unknown rule is reported with the counts').
    fn check_expected_values(
        &mut self,
        expected: &[(Ident, Vec<ExpectedValue>)],
        rules: &[RuleDef],
        lookups: &[LookupDef],
    ) {
        for (rule, values) in expected {
            let Some(def) = rules.iter().find(|r| r.name == rule.name) else {
                continue;
            };
            let names: Vec<&str> = ["key", "event_time"]
                .into_iter()
                .chain(def.payload.iter().map(|(n, _)| n.as_str()))
                .chain(def.lookups.iter().map(|&i| lookups[i].name.as_str()))
                .collect();
            for (name, value, sp) in values {
                if !names.contains(&name.name.as_str()) {
                    let d = Diagnostic::error(
                        name.span,
                        format!(
                            "rule `{}`'s alerts carry no value `{}`",
                            rule.name, name.name
                        ),
                    )
                    .with_hint(format!("they carry: {}", names.join(", ")));
                    self.errors.push(d);
                } else if name.name == "event_time"
                    && !matches!(value, crate::event::Value::Str(t) if crate::event::parse_time_str(t).is_some())
                {
                    self.errors.push(
                        Diagnostic::error(*sp, "`event_time` is a time in quotes")
                            .with_hint("e.g. `event_time = \"2018-04-10T10:00:00Z\"`"),
                    );
                }
            }
        }
    }

    fn finish_err(mut self) -> CompileError {
        self.errors.sort_by_key(|d| (d.span.file, d.span.start));
        CompileError::Rules(Diagnostics {
            errors: self.errors,
            sources: self.sources,
        })
    }

    /// The names events carry once computed: every feature, then every
    /// model's score, with where each is defined. Reports models named twice
    /// or after a feature.
    fn derived_names(&mut self, files: &[(u32, FileAst)]) -> BTreeMap<String, (Derived, Span)> {
        let mut derived = BTreeMap::new();
        for (_, file) in files {
            for r in file.rules.iter().filter(|r| r.features) {
                for (f, _) in &r.payload {
                    derived
                        .entry(f.name.clone())
                        .or_insert((Derived::Feature, f.span));
                }
            }
        }
        for (_, file) in files {
            for m in &file.models {
                match derived.get(&m.name.name) {
                    Some((what, _)) => {
                        let what = match what {
                            Derived::Feature => "a feature",
                            Derived::Model => "another model",
                        };
                        self.errors.push(Diagnostic::error(
                            m.name.span,
                            format!("model `{}` has the name of {what}", m.name.name),
                        ));
                    }
                    None => {
                        derived.insert(m.name.name.clone(), (Derived::Model, m.name.span));
                    }
                }
            }
        }
        derived
    }

    /// Loads every declared model (paths relative to the declaring file)
    /// and resolves its inputs to features or declared fields.
    fn load_models(
        &mut self,
        files: &[(u32, FileAst)],
        derived: &BTreeMap<String, (Derived, Span)>,
        visible: &[StreamDef],
        schema: &mut Schema,
    ) -> Vec<ModelDef> {
        let mut out = Vec::new();
        for (id, file) in files {
            let base = Path::new(&self.sources.get(*id).name)
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default();
            for m in &file.models {
                if derived
                    .get(&m.name.name)
                    .is_some_and(|(_, sp)| *sp != m.name.span)
                {
                    continue;
                }
                let name = &m.name.name;
                let Some(mut def) =
                    self.load_model(*id, &base, name, &m.path, derived, visible, schema)
                else {
                    continue;
                };
                def.slot = schema.intern(&FieldPath::single(name));
                if let Some(path) = &m.candidate {
                    let Some(mut candidate) =
                        self.load_model(*id, &base, name, path, derived, visible, schema)
                    else {
                        continue;
                    };
                    candidate.name = format!("{name}{}", crate::model::CANDIDATE_SUFFIX);
                    candidate.slot = schema.intern(&FieldPath::single(&candidate.name));
                    def.candidate = Some(Box::new(candidate));
                }
                out.push(def);
            }
        }
        out
    }

    /// Loads one model file of model `name` (a path relative to `base`, the
    /// declaring file's directory) and resolves its inputs; `None` after
    /// reporting why it cannot run. Its slot is the caller's to set.
    #[allow(clippy::too_many_arguments)]
    fn load_model(
        &mut self,
        id: u32,
        base: &Path,
        name: &str,
        (path, span): &(String, Span),
        derived: &BTreeMap<String, (Derived, Span)>,
        visible: &[StreamDef],
        schema: &mut Schema,
    ) -> Option<ModelDef> {
        let file = base.join(path);
        if let Some(dir) = &self.models_dir
            && self.untrusted.contains(&id)
            && !lexically_within(&file, dir)
        {
            self.errors.push(
                Diagnostic::error(
                    *span,
                    format!("model `{name}`: `{path}` is outside the models directory"),
                )
                .with_hint("models are loaded only from the models directory (rules.models_dir)"),
            );
            return None;
        }
        let model = match self
            .models
            .read(&file)
            .and_then(|bytes| crate::model::Model::from_bytes(&bytes))
        {
            Ok(model) => model,
            Err(e) => {
                // The path as the rule wrote it: the message tells
                // nothing of where the rule files live.
                let why = match e {
                    crate::model::ModelError::Io { source, .. } => source.to_string(),
                    e => e.to_string(),
                };
                self.errors.push(Diagnostic::error(
                    *span,
                    format!("cannot load model `{name}` from `{path}`: {why}"),
                ));
                return None;
            }
        };
        let mut inputs = Vec::new();
        for input in model.inputs() {
            let problem = match (FieldPath::parse(input), derived.get(input)) {
                (None, _) => Some(format!("`{input}` is not a field name")),
                (_, Some((Derived::Model, _))) => Some(format!(
                    "`{input}` is a model's score; models read features and fields"
                )),
                (Some(p), None) if !visible.iter().any(|s| s.may_hold(&p)) => {
                    let names: Vec<String> =
                        visible.iter().map(|s| format!("`{}`", s.name)).collect();
                    Some(format!(
                        "`{input}` is neither a feature nor a field of stream {}",
                        names.join(" or ")
                    ))
                }
                (Some(p), _) => {
                    inputs.push(schema.intern(&p));
                    None
                }
            };
            if let Some(problem) = problem {
                let d = Diagnostic::error(*span, format!("model `{name}` reads {problem}"));
                let cands: Vec<&str> = derived.keys().map(|s| s.as_str()).collect();
                self.errors.push(hint_closest(d, input, cands));
            }
        }
        if inputs.len() != model.inputs().len() {
            return None;
        }
        Some(ModelDef {
            name: name.to_string(),
            file: file.display().to_string(),
            slot: 0,
            model: Arc::new(model),
            inputs,
            candidate: None,
        })
    }

    /// Every declared stream, the first declared (the main stream) first.
    /// The stream given outside the sources (`--key`/`--time`) replaces the
    /// main stream's key and time, or is the main stream when none is
    /// declared.
    fn resolve_streams(&mut self) -> Option<Vec<StreamDef>> {
        let decls: Vec<StreamAst> = self
            .files
            .iter()
            .flat_map(|(_, f)| f.streams.iter().cloned())
            .collect();
        let mut out: Vec<StreamDef> = Vec::new();
        for (i, s) in decls.iter().enumerate() {
            if let Some(prev) = decls[..i].iter().find(|p| p.name.name == s.name.name) {
                let (line, _) = self
                    .sources
                    .line_col(prev.name.span.file, prev.name.span.start);
                self.errors.push(
                    Diagnostic::error(
                        s.name.span,
                        format!("stream `{}` is defined twice", s.name.name),
                    )
                    .with_hint(format!(
                        "first defined in {} line {line}",
                        self.sources.get(prev.name.span.file).name
                    )),
                );
                continue;
            }
            let base = if i == 0 { self.stream.clone() } else { None };
            out.push(self.resolve_stream(s, base));
        }
        if out.len() > MAX_STREAMS {
            self.errors.push(Diagnostic::error(
                decls[MAX_STREAMS].name.span,
                format!("a rule set may define at most {MAX_STREAMS} streams"),
            ));
        }
        if out.is_empty() {
            match self.stream.clone() {
                Some(s) => out.push(s),
                None => {
                    self.io_errors.push(
                        "no stream definition: add a `stream` block to the rules or pass --key and --time"
                            .into(),
                    );
                    return None;
                }
            }
        }
        Some(out)
    }

    fn resolve_stream(&mut self, s: &StreamAst, base: Option<StreamDef>) -> StreamDef {
        let mut def = StreamDef {
            name: s.name.name.clone(),
            key: FieldPath::single("key"),
            time: FieldPath::single("time"),
            event_type: None,
            time_format: TimeFormat::Auto,
            lateness_ms: s.lateness.map_or(0, |l| l.0),
            idle_ms: s.idle.map_or(0, |l| l.0),
            skew_ms: s.skew.map_or(crate::rules::ir::DEFAULT_SKEW_MS, |l| l.0),
            clock_skew_ms: s.clock_skew.map(|l| l.0),
            advance_after_ms: s.advance_after.map(|l| l.0),
            fields: None,
            order: Vec::new(),
            topic: s.topic.as_ref().map(|(t, _)| t.clone()),
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
        for (p, descending, sp) in &s.order {
            match FieldPath::parse(p) {
                Some(field) => def.order.push(crate::rules::ir::OrderKey {
                    field,
                    descending: *descending,
                }),
                None => self.errors.push(Diagnostic::error(
                    *sp,
                    format!("bad order field path `{p}`"),
                )),
            }
        }
        if let Some(fields) = &mut def.fields {
            for p in def
                .order
                .iter()
                .map(|o| &o.field)
                .chain([&def.key, &def.time])
            {
                if !fields.contains(p) {
                    fields.push(p.clone());
                }
            }
        }
        def
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

/// What a computed name is.
#[derive(Clone, Copy, PartialEq)]
enum Derived {
    Feature,
    Model,
}

struct RuleChecker<'a> {
    errors: &'a mut Vec<Diagnostic>,
    schema: &'a mut Schema,
    /// The streams, with features and models among their declared fields.
    streams: &'a [StreamDef],
    /// The streams the rule reads.
    rule_streams: Vec<u16>,
    /// The stream of stages that name none.
    default_stream: u16,
    /// The streams whose fields may be named where the checker is.
    scope: Vec<u16>,
    /// Where an event's stream is, with several streams.
    stream_slot: Option<crate::event::Slot>,
    limits: Limits,
    stages: Vec<StageInfo>,
    windows: Vec<WindowSpec>,
    /// Features and models, by name.
    derived: &'a BTreeMap<String, (Derived, Span)>,
    /// Each model's inputs.
    model_inputs: &'a BTreeMap<String, Vec<String>>,
    /// Checking a feature set (which may not read computed values).
    in_features: bool,
    /// Models the rule reads.
    models_read: Vec<String>,
    /// What is left of the rule set's regular expression budget.
    regex_room: &'a mut RegexBudget,
    /// Declared lists and the lookups rules make.
    lookups: &'a mut LookupTable,
    /// Lookups the rule reads.
    lookups_read: Vec<usize>,
    /// What fields are compared with, across the rule set.
    field_uses: &'a mut FieldUses,
    /// The rule being checked.
    rule_name: String,
}

/// What each field is compared with across the rule set (numbers or text),
/// by the streams in scope and the field's path: a field compared with
/// both is a rule that can never be what its author meant (`amount ==
/// "big"` where other rules read `amount > 100`).
#[derive(Default)]
pub(super) struct FieldUses(BTreeMap<(Vec<u16>, String), FieldUse>);

/// The first comparison of a field with a literal.
struct FieldUse {
    number: bool,
    /// The comparison, as written (`> 100`).
    shown: String,
    rule: String,
    /// A conflict was reported (once per field).
    reported: bool,
}

/// Declared lists and the lookups of every rule (shared: one lookup per
/// list and value expression, whichever rules read it).
#[derive(Default)]
pub(super) struct LookupTable {
    pub(super) lists: BTreeMap<String, Span>,
    pub(super) tables: BTreeMap<String, (TableDecl, Span)>,
    pub(super) defs: Vec<LookupDef>,
}

/// The memory left for a rule set's regular expressions.
pub(super) struct RegexBudget {
    pub(super) room: usize,
    /// One was refused: the rule set does not compile, and the others are
    /// not compiled (each attempt costs up to the per-expression limit).
    pub(super) refused: bool,
}

impl RuleChecker<'_> {
    fn err(&mut self, d: Diagnostic) {
        self.errors.push(d);
    }

    /// The index of the stream `name` names, reporting an unknown one.
    fn stream_named(&mut self, name: &Ident) -> Option<u16> {
        match self.streams.iter().position(|s| s.name == name.name) {
            Some(i) => Some(i as u16),
            None => {
                let d = Diagnostic::error(name.span, format!("unknown stream `{}`", name.name));
                let names: Vec<&str> = self.streams.iter().map(|s| s.name.as_str()).collect();
                let d = match suggest(&name.name, names.iter().copied()) {
                    Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                    None => d.with_hint(format!("the streams are: {}", names.join(", "))),
                };
                self.err(d);
                None
            }
        }
    }

    /// The stream of each condition stage (its own, or the rule's), into
    /// `out`; a group names none.
    fn stage_streams(&mut self, stages: &[StageAst], out: &mut Vec<u16>) {
        for s in stages {
            match &s.body {
                StageBody::Group(g) => {
                    if let Some(name) = &s.stream {
                        self.err(
                            Diagnostic::error(name.span, "a group takes no stream")
                                .with_hint("name the stream in the stages inside the group"),
                        );
                    }
                    self.stage_streams(&g.stages, out);
                }
                StageBody::Cond(_) => {
                    let stream = match &s.stream {
                        Some(name) => self.stream_named(name),
                        None => Some(self.default_stream),
                    };
                    out.extend(stream);
                }
            }
        }
    }

    /// The stream a condition stage reads, once [`Self::stage_streams`] has
    /// reported unknown names.
    pub(super) fn stage_stream(&self, s: &StageAst) -> u16 {
        s.stream
            .as_ref()
            .and_then(|n| self.streams.iter().position(|st| st.name == n.name))
            .map_or(self.default_stream, |i| i as u16)
    }

    /// The key of a rule reading `rule_streams` without a `key` clause:
    /// the key field they share.
    fn shared_key(&mut self, r: &RuleAst) -> FieldPath {
        let first = &self.streams[self.rule_streams[0] as usize];
        if let Some(&other) = self
            .rule_streams
            .iter()
            .find(|&&i| self.streams[i as usize].key != first.key)
        {
            let other = &self.streams[other as usize];
            let d = Diagnostic::error(
                r.name.span,
                format!(
                    "rule `{}` reads streams `{}` (key {}) and `{}` (key {}): a rule's events are grouped by one field",
                    r.name.name, first.name, first.key, other.name, other.key
                ),
            )
            .with_hint("give the streams the same key field, or add `key FIELD` naming a field events of both carry");
            self.err(d);
        }
        first.key.clone()
    }

    fn rule(&mut self, r: &RuleAst) -> Option<RuleDef> {
        let before = self.errors.len();
        self.default_stream = match &r.stream {
            Some(name) => self.stream_named(name).unwrap_or(0),
            None => 0,
        };
        let mut streams = Vec::new();
        if let Some(pat) = &r.pattern {
            self.stage_streams(&pat.stages, &mut streams);
        }
        if streams.is_empty() {
            streams.push(self.default_stream);
        }
        streams.sort_unstable();
        streams.dedup();
        self.rule_streams = streams;
        self.scope = self.rule_streams.clone();
        let key = match &r.key {
            Some((k, sp)) => match FieldPath::parse(k) {
                Some(p) => {
                    self.check_declared(&p, *sp);
                    p
                }
                None => {
                    self.err(Diagnostic::error(*sp, format!("bad key field path `{k}`")));
                    self.streams[self.default_stream as usize].key.clone()
                }
            },
            None => self.shared_key(r),
        };
        let key_slot = self.schema.intern(&key);
        let Some(pat) = &r.pattern else {
            if r.pattern_failed {
                // Its parse error says what is wrong.
                return None;
            }
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
        if let Some((d, sp)) = r.suppress
            && d <= 0
        {
            self.err(
                Diagnostic::error(sp, "`suppress` must be positive").with_hint(
                    "`suppress 24h` raises at most one alert per key every 24 hours of event time",
                ),
            );
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
                let what = if r.features {
                    "feature"
                } else {
                    "payload value"
                };
                self.err(Diagnostic::error(
                    name.span,
                    format!("{what} `{}` given twice", name.name),
                ));
            }
            if let Some(c) = self.expr(e, Ctx::Event) {
                payload.push((name.name.clone(), c));
            }
        }
        // The score and every input of each model the rule reads travel
        // with its alerts.
        for m in self.models_read.clone() {
            let inputs = self.model_inputs.get(&m).cloned().unwrap_or_default();
            for name in std::iter::once(&m).chain(&inputs) {
                if payload.iter().all(|(n, _)| n != name)
                    && let Some(p) = FieldPath::parse(name)
                {
                    payload.push((name.clone(), CExpr::Field(self.schema.intern(&p))));
                }
            }
        }
        let feature_slots = if r.features {
            payload
                .iter()
                .map(|(n, _)| self.schema.intern(&FieldPath::single(n)))
                .collect()
        } else {
            Vec::new()
        };
        if r.features && r.payload.is_empty() {
            self.err(
                Diagnostic::error(
                    r.name.span,
                    format!("feature set `{}` has no features", r.name.name),
                )
                .with_hint("add `NAME = EXPRESSION`, e.g. `nb_tx_1d = count(over 1d)`"),
            );
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
            notify: r.notify.iter().map(|n| n.name.as_str().into()).collect(),
            within: r.within.map(|w| w.0),
            skip,
            suppress_ms: r.suppress.map(|s| s.0),
            shadow: r.shadow.is_some_and(|s| s.0),
            report_timeouts: r.report_timeouts,
            inclusive_aggregates: r.inclusive_aggregates,
            stage_names: self.stages.iter().map(|s| s.name.clone()).collect(),
            pattern,
            payload,
            features: r.features,
            feature_slots,
            models: std::mem::take(&mut self.models_read),
            windows: std::mem::take(&mut self.windows),
            lookups: std::mem::take(&mut self.lookups_read),
            streams: self.rule_streams.clone(),
        })
    }
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
    fn feature_sets_compile_to_rules_that_raise_no_alert() {
        let src = format!(
            "{STREAM}features card {{\n  n_1d = count(over 1d)\n  avg_7d: avg(TX_AMOUNT over 7d),\n  key_is = CUSTOMER_ID\n}}\n\
             features terminal {{ key TERMINAL_ID  risk = avg(TX_AMOUNT over 28d ending 7d ago) }}"
        );
        let rs = compile(&src).unwrap();
        assert!(rs.rules.iter().all(|r| r.features));
        let names: Vec<&str> = rs.rules[0]
            .payload
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(names, ["n_1d", "avg_7d", "key_is"]);
        assert_eq!(rs.rules[0].windows.len(), 2);
        assert_eq!(rs.rules[1].key.to_string(), "TERMINAL_ID");
    }

    #[test]
    fn feature_set_errors_are_all_reported_with_positions() {
        let src = format!(
            "{STREAM}features a {{\n  x = count(over 1d)\n  y = TX_AMONT * 2\n  z = (1 +\n  w = 3\n}}\n\
             features b {{ x = 1 }}\nfeatures c {{ }}"
        );
        let err = compile(&src).unwrap_err();
        assert!(err.contains("did you mean `TX_AMOUNT`?"), "{err}");
        assert!(
            err.contains("feature `x` is also defined in feature set `a`"),
            "{err}"
        );
        assert!(err.contains("feature set `c` has no features"), "{err}");
        // The broken `z` does not hide what follows it.
        assert!(err.contains("4 errors"), "{err}");
        assert!(err.contains("t.tl:4:"), "{err}");
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
                "rule r { pattern { a: zscore(v over 30d) > 3 } }",
                "`zscore` does not work over this window",
            ),
            (
                "rule r { pattern { a: novel(v over decay 1d) == 1 } }",
                "`novel` does not work over this window",
            ),
            (
                "rule r { pattern { a: novel(v over 30d ending 7d ago) == 1 } }",
                "a window ending now",
            ),
            (
                "rule r { pattern { a: max(v over decay 1d) > 1 } }",
                "over `decay` windows: count, sum, avg, stddev, zscore",
            ),
            (
                "rule r { pattern { a: zscore(v) > 3 } }",
                "`zscore` needs a window",
            ),
            (
                "rule r { pattern { a: zscore(over decay 1d) > 3 } }",
                "needs a value",
            ),
            (
                "rule r { pattern { a: zscor(v) > 3 } }",
                "did you mean `zscore`?",
            ),
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
                "rule r { pattern { a: true optional then b: true } skip to first a }",
                "never advances",
            ),
            ("rule r { pattern { a: x == null } }", "use `is null`"),
            ("rule r { pattern { a: null != x } }", "use `is not null`"),
            ("rule r { pattern { a: x like 5 } }", "a pattern in quotes"),
            (
                "rule r { pattern { a: x like \"5!\" escape \"!\" } }",
                "ends with its escape",
            ),
            (
                "rule r { pattern { a: x like \"5\" escape \"!!\" } }",
                "one character",
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
