//! The compiled rule set: checked rules, their automata, the decoder for the
//! fields they read, and which key each rule groups by. Immutable; shared
//! (`Arc`) by every key and swapped whole on reload.

use crate::event::{Decoder, Event, Slot};
use crate::pattern::eval::Flat;
use crate::pattern::lazy::SymbolDfa;
use crate::pattern::{Matcher, nfa};
use crate::rules::{CompileError, Compiler, RuleDef, RuleSetDef, StreamDef, WindowSpec};
use std::sync::Arc;

/// The (stage, condition predicate) of a pattern that is one mandatory stage
/// with a plain condition.
fn single_stage(r: &RuleDef, nfa: &nfa::Nfa) -> Option<(u16, u32)> {
    let [s] = r.pattern.stages.as_slice() else {
        return None;
    };
    let plain = matches!(s.body, crate::rules::StageBodyDef::Cond(_))
        && s.quant == crate::rules::QuantDef::ONE
        && s.until.is_none()
        && s.gap.is_none()
        && !r.inclusive_aggregates;
    if !plain {
        return None;
    }
    let pred = nfa.pred_stage.iter().position(|st| *st == s.id)?;
    Some((s.id, pred as u32))
}

/// Engine limits and defaults.
#[derive(Clone, Copy, Debug)]
pub struct EngineOptions {
    /// Most live partial matches per rule and key.
    pub max_partials_per_key: usize,
    /// Largest accepted record (bytes).
    pub max_record_bytes: usize,
    /// Run rules that are regular over their predicates lazily, on a symbol
    /// DFA (same output; see `pattern::lazy`).
    pub lazy_regular_rules: bool,
    /// Most alerts one rule raises for one key at one event or deadline;
    /// the rest are suppressed and reported.
    pub max_alerts_per_event: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            max_partials_per_key: 10_000,
            max_record_bytes: 1 << 20,
            lazy_regular_rules: true,
            max_alerts_per_event: 100,
        }
    }
}

/// One rule, compiled.
#[derive(Debug)]
pub struct CompiledRule {
    /// The checked rule.
    pub(crate) def: RuleDef,
    /// Its name, shared by its alerts.
    pub(crate) name: Arc<str>,
    /// Stage names by id, shared by its alerts.
    pub(crate) stage_names: Vec<Arc<str>>,
    /// The matcher.
    pub(crate) matcher: Matcher,
    /// The list lookups it reads (name, event slot): its alerts show them.
    pub(crate) lookups: Vec<(Arc<str>, Slot)>,
    /// The streams it reads, a bit each.
    pub(crate) streams: u64,
    /// Where its keying keeps its window aggregates (`None`: it has none).
    pub(crate) windows: Option<RuleWindows>,
    /// A feature set's features in their flat form (see [`Flat`]), in
    /// [`RuleDef::payload`] order; empty for a rule.
    pub(crate) features: Vec<Flat>,
}

impl CompiledRule {
    /// The checked rule.
    pub fn def(&self) -> &RuleDef {
        &self.def
    }

    /// Its name, shared by its alerts.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The matcher.
    pub fn matcher(&self) -> &Matcher {
        &self.matcher
    }
}

/// Rules that group events by the same key field.
#[derive(Debug)]
pub struct Keying {
    /// The key field's slot.
    pub slot: Slot,
    /// Indices into [`RuleSet::rules`].
    pub rules: Vec<usize>,
    /// Some of its rules are feature sets.
    pub features: bool,
    /// Some of its rules are patterns.
    pub patterns: bool,
    /// The streams its rules read, a bit each.
    pub streams: u64,
    /// Its rules' window aggregates, in groups kept together per key
    /// (each rule's place: [`CompiledRule::windows`]).
    pub(crate) groups: Vec<WindowGroup>,
    /// The places in `rules` of the patterns whose matchers keep state
    /// ([`Matcher::keeps_state`]): only theirs can have a deadline.
    pub(crate) timed: Vec<usize>,
}

/// The window aggregates of rules of one keying, kept together per key:
/// one log of the key's events and one pair of cursors per distinct window
/// (a feature set's `count(over 30d)` and a rule's `avg(amount over 30d)`
/// move over the same events once). Rules share a group when their
/// aggregates see the same events at the same point of an event's
/// processing: they read the same streams, and none aggregates a value a
/// feature set or a model derives (the group takes each event once, on its
/// first rule's turn: a value derived later in that event's processing
/// would differ from the rule's own turn). Feature sets come first: a rule's
/// aggregates join a feature set's group when they can, since feature sets
/// take each event first.
#[derive(Debug)]
pub(crate) struct WindowGroup {
    /// The layout of its rules' aggregates, one rule's after another's.
    pub(crate) plan: crate::window::Plan,
    /// Its rules (by place in the keying), in the order of their aggregates.
    pub(crate) members: Vec<usize>,
}

/// Where one rule's window aggregates are kept (see [`WindowGroup`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RuleWindows {
    /// Its group, by index into [`Keying::groups`].
    pub(crate) group: usize,
    /// The place of its first aggregate among the group's.
    pub(crate) offset: usize,
    /// Its number of aggregates.
    pub(crate) len: usize,
    /// The group takes each event on this rule's turn: it is the group's
    /// first rule to see the event.
    pub(crate) updates: bool,
}

impl RuleWindows {
    /// Its aggregates' places among the group's.
    pub(crate) fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len
    }
}

/// Lays out the window aggregates of `keying`'s rules in groups (see
/// [`WindowGroup`]).
fn window_groups(
    def: &RuleSetDef,
    rules: &[CompiledRule],
    keying: &Keying,
) -> (Vec<WindowGroup>, Vec<Option<RuleWindows>>) {
    let derived: Vec<Slot> = def
        .rules
        .iter()
        .filter(|r| r.features)
        .flat_map(|r| r.feature_slots.iter().copied())
        .chain(
            def.models
                .iter()
                .flat_map(|m| std::iter::once(m).chain(m.candidate.as_deref()))
                .map(|m| m.slot),
        )
        .collect();
    // (streams, open to other rules) of each group.
    let mut kinds: Vec<(u64, bool)> = Vec::new();
    let mut members: Vec<Vec<usize>> = Vec::new();
    let mut windows_of: Vec<Option<RuleWindows>> = vec![None; keying.rules.len()];
    // Feature sets first: they take each event before the rules do.
    let order = (0..keying.rules.len())
        .filter(|&l| rules[keying.rules[l]].def.features)
        .chain((0..keying.rules.len()).filter(|&l| !rules[keying.rules[l]].def.features));
    for local in order {
        let rule = &rules[keying.rules[local]];
        if rule.def.windows.is_empty() {
            continue;
        }
        let reads_derived = rule.def.windows.iter().any(|w| {
            w.arg
                .as_ref()
                .is_some_and(|a| a.reads_slot(&|s| derived.contains(&s)))
        });
        // A feature set without features derives nothing, and the engine
        // does not run its `derive` phase for it alone.
        let idle_set = rule.def.features && rule.def.feature_slots.is_empty();
        let open = !reads_derived && !idle_set;
        let found = open
            .then(|| {
                kinds
                    .iter()
                    .position(|&(streams, o)| o && streams == rule.streams)
            })
            .flatten();
        let group = match found {
            Some(g) => g,
            None => {
                kinds.push((rule.streams, open));
                members.push(Vec::new());
                kinds.len() - 1
            }
        };
        let offset = members[group]
            .iter()
            .map(|&l| rules[keying.rules[l]].def.windows.len())
            .sum();
        windows_of[local] = Some(RuleWindows {
            group,
            offset,
            len: rule.def.windows.len(),
            updates: members[group].is_empty(),
        });
        members[group].push(local);
    }
    let groups = members
        .into_iter()
        .map(|members| {
            let specs: Vec<WindowSpec> = members
                .iter()
                .flat_map(|&l| rules[keying.rules[l]].def.windows.iter().cloned())
                .collect();
            WindowGroup {
                plan: crate::window::Plan::new(&specs),
                members,
            }
        })
        .collect();
    (groups, windows_of)
}

/// A compiled rule set.
#[derive(Debug)]
pub struct RuleSet {
    /// The checked definitions.
    pub(crate) def: RuleSetDef,
    /// Rules in definition order.
    pub(crate) rules: Vec<CompiledRule>,
    /// Key fields in use.
    pub(crate) keyings: Vec<Keying>,
    /// Decoder of each stream's records, by stream.
    pub(crate) decoders: Vec<Decoder>,
    /// Options it was built with.
    pub(crate) options: EngineOptions,
    /// The features of every feature set, in definition order, then the
    /// score of each model and of its candidate: the columns of
    /// [`super::FeatureRow::values`].
    pub(crate) feature_columns: Vec<Arc<str>>,
    /// The event slots of [`RuleSet::feature_columns`].
    pub(crate) feature_slots: Vec<crate::event::Slot>,
    /// Events get computed values (features or model scores) before the
    /// rules see them.
    pub(crate) derives: bool,
}

impl RuleSet {
    /// The checked definitions.
    pub fn def(&self) -> &RuleSetDef {
        &self.def
    }

    /// Rules in definition order.
    pub fn rules(&self) -> &[CompiledRule] {
        &self.rules
    }

    /// Key fields in use.
    pub fn keyings(&self) -> &[Keying] {
        &self.keyings
    }

    /// Decoder of the main stream's records.
    pub fn decoder(&self) -> &Decoder {
        &self.decoders[0]
    }

    /// Decoders of every stream's records, by stream.
    pub fn decoders(&self) -> &[Decoder] {
        &self.decoders
    }

    /// Decoder of the records of stream `index` (see
    /// [`RuleSetDef::stream_index`]).
    pub fn decoder_for(&self, index: u16) -> Option<&Decoder> {
        self.decoders.get(index as usize)
    }

    /// Whether events with the same time wait until no more of that time
    /// can come: a stream orders them by fields (`order`), or events of
    /// several streams meet, whose order must not depend on which input
    /// delivered first.
    pub fn orders_ties(&self) -> bool {
        self.def.streams.len() > 1 || self.def.stream_slots.iter().any(|s| !s.order.is_empty())
    }

    /// The order a key's events are processed in: event time, then stream
    /// (in declaration order), then the stream's `order` fields (null first
    /// when ascending); events equal in all keep their arrival order.
    pub fn event_order(&self, a: &Event, b: &Event) -> std::cmp::Ordering {
        a.time.cmp(&b.time).then_with(|| {
            let (sa, sb) = (self.def.stream_of(a), self.def.stream_of(b));
            sa.cmp(&sb).then_with(|| {
                self.def.stream_slots[sa as usize]
                    .order
                    .iter()
                    .map(|&(slot, descending)| {
                        let o = a.field(slot).sort_order(b.field(slot));
                        if descending { o.reverse() } else { o }
                    })
                    .find(|o| o.is_ne())
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
        })
    }

    /// The bit of the stream `event` comes from (see [`Keying::streams`]).
    pub(crate) fn stream_bit(&self, event: &Event) -> u64 {
        1 << self.def.stream_of(event)
    }

    /// The features of every feature set, in definition order, then the
    /// score of each model and of its candidate: the columns of
    /// [`super::FeatureRow::values`].
    pub fn feature_columns(&self) -> &[Arc<str>] {
        &self.feature_columns
    }

    /// Compiles checked rules.
    pub fn build(def: RuleSetDef, options: EngineOptions) -> Arc<RuleSet> {
        Arc::new(RuleSet::compile(def, options))
    }

    fn compile(def: RuleSetDef, options: EngineOptions) -> RuleSet {
        let mut keyings: Vec<Keying> = Vec::new();
        let mut rules = Vec::new();
        let mut feature_columns: Vec<Arc<str>> = Vec::new();
        let mut feature_slots = Vec::new();
        for (i, r) in def.rules.iter().enumerate() {
            if r.features {
                feature_columns.extend(r.payload.iter().map(|(n, _)| Arc::from(n.as_str())));
                feature_slots.extend(&r.feature_slots);
            }
            let keying = match keyings.iter().position(|k| k.slot == r.key_slot) {
                Some(k) => k,
                None => {
                    keyings.push(Keying {
                        slot: r.key_slot,
                        rules: Vec::new(),
                        features: false,
                        patterns: false,
                        streams: 0,
                        groups: Vec::new(),
                        timed: Vec::new(),
                    });
                    keyings.len() - 1
                }
            };
            keyings[keying].rules.push(i);
            keyings[keying].features |= r.features;
            keyings[keying].patterns |= !r.features;
            let streams = r.streams.iter().fold(0u64, |m, &s| m | 1 << s);
            keyings[keying].streams |= streams;
            let nfa = nfa::compile(
                &r.pattern,
                r.within,
                r.stage_names.len(),
                r.inclusive_aggregates,
            );
            let single = single_stage(r, &nfa);
            let lazy = if single.is_none() && options.lazy_regular_rules {
                SymbolDfa::build(r, &nfa)
            } else {
                None
            };
            let nfa = Arc::new(nfa);
            rules.push(CompiledRule {
                name: Arc::from(r.name.as_str()),
                stage_names: r
                    .stage_names
                    .iter()
                    .map(|s| Arc::from(s.as_str()))
                    .collect(),
                matcher: Matcher::new(nfa, r.skip, r.report_timeouts, options.max_partials_per_key)
                    .with_lazy(lazy)
                    .with_single_stage(single),
                lookups: r
                    .lookups
                    .iter()
                    .map(|&i| (Arc::from(def.lookups[i].name.as_str()), def.lookups[i].slot))
                    .collect(),
                streams,
                windows: None,
                features: if r.features {
                    r.payload.iter().map(|(_, e)| Flat::new(e)).collect()
                } else {
                    Vec::new()
                },
                def: r.clone(),
            });
        }
        for k in &mut keyings {
            k.timed = (0..k.rules.len())
                .filter(|&local| {
                    let r = &rules[k.rules[local]];
                    !r.def.features && r.matcher.keeps_state()
                })
                .collect();
            let (groups, windows_of) = window_groups(&def, &rules, k);
            k.groups = groups;
            for (&ri, w) in k.rules.iter().zip(windows_of) {
                rules[ri].windows = w;
            }
        }
        let schema = Arc::new(def.schema.clone());
        // A stream's own key is required of its events; rules keyed by other
        // fields skip events without them (counted by the engine), so those
        // are checked for type only.
        let decoders = def
            .streams
            .iter()
            .zip(&def.stream_slots)
            .enumerate()
            .map(|(i, (stream, slots))| {
                let key_slots: Vec<(Slot, bool)> = keyings
                    .iter()
                    .map(|k| (k.slot, k.slot == slots.key))
                    .collect();
                let d = Decoder::new(
                    schema.clone(),
                    slots.time,
                    key_slots,
                    stream.time_format,
                    options.max_record_bytes,
                );
                match def.stream_slot {
                    Some(slot) => d.for_stream(slot, i as u16),
                    None => d,
                }
            })
            .collect();
        let derives =
            !feature_slots.is_empty() || !def.models.is_empty() || !def.lookups.is_empty();
        // Model scores after the features, each candidate's beside its
        // model's: what a trial compares once labels arrive.
        if !feature_slots.is_empty() {
            for m in &def.models {
                for m in std::iter::once(m).chain(m.candidate.as_deref()) {
                    feature_columns.push(Arc::from(m.name.as_str()));
                    feature_slots.push(m.slot);
                }
            }
        }
        RuleSet {
            def,
            rules,
            keyings,
            decoders,
            options,
            feature_columns,
            feature_slots,
            derives,
        }
    }

    /// The rules keyed by `slot` as a rule set of their own, with the same
    /// schema, decoder and hash: what a runtime runs on events partitioned
    /// by that field. Its decoder is the whole set's, so every part accepts
    /// and refuses the same records as `replay` of the whole set does. No
    /// rule is keyed by `slot`: an empty set.
    pub fn for_key(&self, slot: Option<Slot>) -> Arc<RuleSet> {
        self.part(|r| Some(r.key_slot) == slot)
    }

    /// The rules `keep` keeps as a rule set of their own, with the same
    /// schema, decoders and hash (see [`RuleSet::for_key`]).
    pub fn part(&self, keep: impl Fn(&RuleDef) -> bool) -> Arc<RuleSet> {
        let mut def = self.def.clone();
        def.rules.retain(|r| keep(r));
        def.examples.clear();
        def.models
            .retain(|m| def.rules.iter().any(|r| r.models.contains(&m.name)));
        Arc::new(RuleSet {
            decoders: self.decoders.clone(),
            ..RuleSet::compile(def, self.options)
        })
    }

    /// Rules that read a model whose inputs include features computed under
    /// another key. One engine computes every key's features for each event
    /// (replay), but the service computes them on the partitions of their
    /// own key, where the other key's features do not exist: such a rule
    /// set cannot run there. One message per such rule.
    pub fn cross_key_models(&self) -> Vec<String> {
        self.cross_part_models(|r| r.key_slot)
    }

    /// As [`RuleSet::cross_key_models`], for the service's parts: a rule
    /// that reads a model whose inputs are computed by a feature set that
    /// `part` puts elsewhere.
    pub fn cross_part_models<P: PartialEq>(&self, part: impl Fn(&RuleDef) -> P) -> Vec<String> {
        let mut problems = Vec::new();
        for r in self.rules.iter().filter(|r| !r.def.features) {
            for name in &r.def.models {
                let Some(m) = self.def.models.iter().find(|m| &m.name == name) else {
                    continue;
                };
                let other = m
                    .model
                    .inputs()
                    .iter()
                    .zip(&m.inputs)
                    .find_map(|(input, slot)| {
                        self.rules
                            .iter()
                            .find(|f| f.def.features && f.def.feature_slots.contains(slot))
                            .filter(|f| part(&f.def) != part(&r.def))
                            .map(|f| (input, f))
                    });
                if let Some((input, set)) = other {
                    problems.push(format!(
                        "rule `{}` (keyed by {}) reads model `{name}`, whose input `{input}` is computed per {} by feature set `{}`: \
                         the service computes features on the partitions of their own key and stream, so a model there may read only \
                         features of its rule's key and streams (run this rule set with `tripline replay`)",
                        r.name, r.def.key, set.def.key, set.name
                    ));
                }
            }
        }
        problems
    }

    /// The rule set `origin` compiles to, restricted to the rules named in
    /// `rules` (as [`RuleSet::for_key`] restricts): the rules some state
    /// was written under, rebuilt to read that state.
    /// `models` reads its models (see [`crate::rules::RuleSetDef::model_files`]).
    pub fn rebuild(
        origin: &crate::rules::RuleOrigin,
        models: &crate::rules::ModelReader,
        rules: &[String],
        options: EngineOptions,
    ) -> Result<Arc<RuleSet>, CompileError> {
        let mut c = Compiler::new();
        c.model_files(models.clone());
        if let Some(s) = &origin.stream {
            c.stream(s.clone());
        }
        for (name, text) in &origin.sources {
            c.add_source(name, text);
        }
        let mut def = c.compile()?;
        def.rules.retain(|r| rules.contains(&r.name));
        def.examples.clear();
        Ok(RuleSet::build(def, options))
    }

    /// The key fields of rules keyed by a field other than the stream's
    /// key, sorted: each needs an internal topic, which the service creates
    /// at start, so a running service takes only rule sets with the same.
    pub fn other_keys(&self) -> Vec<String> {
        let stream_key = self.stream_key_slot();
        let mut keys: Vec<String> = self
            .keyings
            .iter()
            .filter(|k| Some(k.slot) != stream_key)
            .map(|k| self.def.schema.path(k.slot).to_string())
            .collect();
        keys.sort();
        keys
    }

    /// The slot of the stream's key field.
    pub fn stream_key_slot(&self) -> Option<Slot> {
        self.def.schema.slot(&self.def.stream().key)
    }

    /// Compiles rules from source text (for tests and the API).
    pub fn from_source(
        name: &str,
        text: &str,
        stream: Option<StreamDef>,
    ) -> Result<Arc<RuleSet>, CompileError> {
        Self::from_source_with(name, text, stream, EngineOptions::default())
    }

    /// Compiles rules from source text with `options`.
    pub fn from_source_with(
        name: &str,
        text: &str,
        stream: Option<StreamDef>,
        options: EngineOptions,
    ) -> Result<Arc<RuleSet>, CompileError> {
        Self::compile_with(stream, options, |c| {
            c.add_source(name, text);
        })
    }

    fn compile_with(
        stream: Option<StreamDef>,
        options: EngineOptions,
        add: impl FnOnce(&mut Compiler),
    ) -> Result<Arc<RuleSet>, CompileError> {
        let mut c = Compiler::new();
        if let Some(s) = stream {
            c.stream(s);
        }
        add(&mut c);
        Ok(RuleSet::build(c.compile()?, options))
    }
}
