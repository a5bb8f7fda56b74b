//! Compiles a checked pattern into an NFA of states and guarded transitions
//! (take / ignore / proceed), the construction Flink CEP uses, so that every
//! contiguity, quantifier, greedy, `until`, group and negation behaves as it
//! does there. The result is immutable and shared by every key.
//!
//! The construction walks the stages from last to first; each stage becomes
//! one or more states pointing at the states built for what follows. Guards
//! are trees over the rule's predicates ([`Cond`]); a predicate is a stage
//! condition or `until` expression, evaluated once per event where it does
//! not depend on the partial match.

use crate::rules::Contiguity;
use crate::rules::{CExpr, PatternDef, QuantKind, StageBodyDef, StageDef, StageId};
use hashbrown::HashMap;

/// Index of a state.
pub type StateId = u32;
/// Index of a guard.
pub type CondId = u32;
/// Index of a predicate.
pub type PredId = u32;

/// What a state is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateKind {
    /// Where every partial match begins (no event taken yet).
    Start,
    /// An intermediate state.
    Normal,
    /// Reaching it completes a match.
    Final,
    /// Reaching it kills the partial match (a negation was seen).
    Stop,
    /// A match that completes when its window closes (trailing `not then`).
    Pending,
}

/// What a transition does with the event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Add the event to the match and move.
    Take,
    /// Skip the event and move.
    Ignore,
    /// Move without consuming the event (an epsilon edge).
    Proceed,
}

/// A guarded transition.
#[derive(Clone, Debug)]
pub struct Transition {
    /// Action.
    pub action: Action,
    /// Target state.
    pub target: StateId,
    /// Guard.
    pub cond: CondId,
}

/// A state.
#[derive(Clone, Debug)]
pub struct State {
    /// Stage that built it: events it takes are recorded under this stage,
    /// and this stage's gap limit applies while a match waits here.
    pub stage: Option<StageId>,
    /// Kind.
    pub kind: StateKind,
    /// Outgoing transitions, in construction order (the order matters for
    /// how partial matches branch).
    pub transitions: Vec<Transition>,
}

/// A guard: a boolean tree over predicates.
#[derive(Clone, Debug)]
pub enum Cond {
    /// Always.
    True,
    /// A predicate holds.
    Pred(PredId),
    /// Negation.
    Not(CondId),
    /// Conjunction.
    And(CondId, CondId),
    /// Disjunction.
    Or(CondId, CondId),
}

/// A compiled pattern.
#[derive(Clone, Debug)]
pub struct Nfa {
    /// States; [`Nfa::start`] is where matching begins.
    pub states: Vec<State>,
    /// Guards.
    pub conds: Vec<Cond>,
    /// Predicates.
    pub preds: Vec<CExpr>,
    /// Whether each predicate depends on the partial match.
    pub pred_depends_on_match: Vec<bool>,
    /// The stage each predicate belongs to.
    pub pred_stage: Vec<StageId>,
    /// Predicates see the candidate event as part of their own stage.
    pub inclusive: bool,
    /// The start state.
    pub start: StateId,
    /// Whole-pattern window (ms), 0 for none.
    pub window: i64,
    /// Gap limit per stage id (ms).
    pub gaps: Vec<Option<i64>>,
}

/// Compiles `pattern` (with whole-pattern window `within`, if any).
pub fn compile(
    pattern: &PatternDef,
    within: Option<i64>,
    stage_count: usize,
    inclusive: bool,
) -> Nfa {
    let mut b = Builder {
        nfa: Nfa {
            states: Vec::new(),
            conds: vec![Cond::True],
            preds: Vec::new(),
            pred_depends_on_match: Vec::new(),
            pred_stage: Vec::new(),
            inclusive,
            start: 0,
            window: within.unwrap_or(0),
            gaps: vec![None; stage_count],
        },
        stop_states: HashMap::new(),
        original_state_map: HashMap::new(),
        pred_of: HashMap::new(),
        current: Pat {
            chain: &pattern.stages,
            idx: pattern.stages.len() - 1,
        },
        following: None,
        group: None,
        first_of_loop: HashMap::new(),
    };
    collect_gaps(pattern, &mut b.nfa.gaps);
    let end = b.state(None, StateKind::Final);
    let sink = b.middle_states(end);
    let start = b.convert(sink);
    b.nfa.states[start as usize].kind = StateKind::Start;
    b.nfa.start = start;
    b.nfa
}

fn collect_gaps(p: &PatternDef, gaps: &mut [Option<i64>]) {
    for s in &p.stages {
        gaps[s.id as usize] = s.gap;
        if let StageBodyDef::Group(g) = &s.body {
            collect_gaps(g, gaps);
        }
    }
}

/// A stage with its place in its sequence, so `previous()` can be asked.
#[derive(Clone, Copy)]
struct Pat<'a> {
    chain: &'a [StageDef],
    idx: usize,
}

impl<'a> Pat<'a> {
    fn def(&self) -> &'a StageDef {
        &self.chain[self.idx]
    }
    fn previous(&self) -> Option<Pat<'a>> {
        (self.idx > 0).then(|| Pat {
            chain: self.chain,
            idx: self.idx - 1,
        })
    }
    fn is_group(&self) -> bool {
        matches!(self.def().body, StageBodyDef::Group(_))
    }
    fn group_last(&self) -> Pat<'a> {
        match &self.def().body {
            StageBodyDef::Group(g) => Pat {
                chain: &g.stages,
                idx: g.stages.len() - 1,
            },
            StageBodyDef::Cond(_) => *self,
        }
    }
    fn looping(&self) -> bool {
        self.def().quant.kind == QuantKind::Looping
    }
    fn times(&self) -> bool {
        self.def().quant.kind == QuantKind::Times
    }
    fn optional(&self) -> bool {
        self.def().quant.optional
    }
    fn greedy(&self) -> bool {
        self.def().quant.greedy
    }
    fn strategy(&self) -> Contiguity {
        self.def().contiguity
    }
    fn inner_strategy(&self) -> Contiguity {
        self.def().quant.inner
    }
    fn times_range(&self) -> (u32, u32) {
        (self.def().quant.from, self.def().quant.to)
    }
}

struct Builder<'a> {
    nfa: Nfa,
    stop_states: HashMap<StageId, StateId>,
    original_state_map: HashMap<StateId, StateId>,
    pred_of: HashMap<(StageId, bool), PredId>,
    current: Pat<'a>,
    following: Option<Pat<'a>>,
    group: Option<Pat<'a>>,
    first_of_loop: HashMap<StageId, bool>,
}

const TRUE: CondId = 0;

impl<'a> Builder<'a> {
    fn state(&mut self, stage: Option<StageId>, kind: StateKind) -> StateId {
        self.nfa.states.push(State {
            stage,
            kind,
            transitions: Vec::new(),
        });
        (self.nfa.states.len() - 1) as StateId
    }

    fn cur_state(&mut self, kind: StateKind) -> StateId {
        let id = self.current.def().id;
        self.state(Some(id), kind)
    }

    fn add(&mut self, from: StateId, action: Action, target: StateId, cond: CondId) {
        self.nfa.states[from as usize].transitions.push(Transition {
            action,
            target,
            cond,
        });
    }

    fn cond(&mut self, c: Cond) -> CondId {
        self.nfa.conds.push(c);
        (self.nfa.conds.len() - 1) as CondId
    }
    fn not(&mut self, c: CondId) -> CondId {
        self.cond(Cond::Not(c))
    }
    fn and(&mut self, a: CondId, b: CondId) -> CondId {
        self.cond(Cond::And(a, b))
    }

    fn pred(&mut self, stage: StageId, until: bool, expr: &CExpr) -> CondId {
        let id = match self.pred_of.get(&(stage, until)) {
            Some(p) => *p,
            None => {
                self.nfa.preds.push(expr.clone());
                self.nfa.pred_depends_on_match.push(expr.depends_on_match());
                self.nfa.pred_stage.push(stage);
                let p = (self.nfa.preds.len() - 1) as PredId;
                self.pred_of.insert((stage, until), p);
                p
            }
        };
        self.cond(Cond::Pred(id))
    }

    /// The stage's own condition (a group's is `true`).
    fn raw_condition(&mut self, p: Pat<'a>) -> CondId {
        match &p.def().body {
            StageBodyDef::Cond(e) => self.pred(p.def().id, false, e),
            StageBodyDef::Group(_) => TRUE,
        }
    }

    fn until_of(&mut self, p: Option<Pat<'a>>) -> Option<CondId> {
        let p = p?;
        let u = p.def().until.as_ref()?;
        Some(self.pred(p.def().id, true, u))
    }

    fn extend_with_until(
        &mut self,
        cond: Option<CondId>,
        until: Option<CondId>,
        is_take: bool,
    ) -> Option<CondId> {
        match (cond, until) {
            (Some(c), Some(u)) => {
                let nu = self.not(u);
                Some(self.and(nu, c))
            }
            (None, Some(u)) if is_take => Some(self.not(u)),
            _ => cond,
        }
    }

    fn head_of_group(&self, p: Pat<'a>) -> bool {
        self.group.is_some() && p.previous().is_none()
    }

    fn group_first_of_loop(&self) -> bool {
        match self.group {
            Some(g) => *self.first_of_loop.get(&g.def().id).unwrap_or(&true),
            None => true,
        }
    }

    fn set_first_of_loop(&mut self, v: bool) {
        if self.current.is_group() {
            self.first_of_loop.insert(self.current.def().id, v);
        }
    }

    fn take_condition(&mut self, p: Pat<'a>) -> CondId {
        let c = self.raw_condition(p);
        let gu = self.until_of(self.group);
        self.extend_with_until(Some(c), gu, true).unwrap_or(c)
    }

    fn true_function(&mut self) -> CondId {
        let gu = self.until_of(self.group);
        self.extend_with_until(Some(TRUE), gu, true).unwrap_or(TRUE)
    }

    fn ignore_for(&mut self, p: Pat<'a>, strategy: Contiguity) -> Option<CondId> {
        let c = match strategy {
            Contiguity::Strict => None,
            Contiguity::Relaxed => {
                let raw = self.raw_condition(p);
                Some(self.not(raw))
            }
            Contiguity::Any => Some(TRUE),
            Contiguity::NotNext | Contiguity::NotFollow => None,
        };
        let gu = self.until_of(self.group);
        self.extend_with_until(c, gu, false)
    }

    fn inner_ignore_condition(&mut self, p: Pat<'a>) -> Option<CondId> {
        let strategy = if self.head_of_group(p) {
            self.group
                .map_or(p.inner_strategy(), |g| g.inner_strategy())
        } else {
            p.inner_strategy()
        };
        self.ignore_for(p, strategy)
    }

    fn ignore_condition(&mut self, p: Pat<'a>) -> Option<CondId> {
        let strategy = match self.group {
            Some(g) if self.head_of_group(p) => {
                if self.group_first_of_loop() {
                    g.strategy()
                } else {
                    g.inner_strategy()
                }
            }
            _ => p.strategy(),
        };
        self.ignore_for(p, strategy)
    }

    fn is_pattern_optional(&self, p: Pat<'a>) -> bool {
        match self.group {
            Some(g) if self.head_of_group(p) => self.group_first_of_loop() && g.optional(),
            _ => p.optional(),
        }
    }

    /// NOT_FOLLOW guards that apply while waiting at the current stage: the
    /// `not then` stages reachable backwards through optional stages.
    fn current_not_conditions(&mut self) -> Vec<(CondId, StageId)> {
        let mut out = Vec::new();
        let mut p = self.current;
        while let Some(prev) = p.previous() {
            if !(prev.optional() || prev.strategy() == Contiguity::NotFollow) {
                break;
            }
            p = prev;
            if p.strategy() == Contiguity::NotFollow {
                let c = self.take_condition(p);
                out.push((c, p.def().id));
            }
        }
        out
    }

    fn stop_state(&mut self, not_cond: CondId, stage: StageId) -> StateId {
        if let Some(s) = self.stop_states.get(&stage) {
            return *s;
        }
        let s = self.state(Some(stage), StateKind::Stop);
        self.add(s, Action::Take, s, not_cond);
        self.stop_states.insert(stage, s);
        s
    }

    fn middle_states(&mut self, sink: StateId) -> StateId {
        let mut last_sink = sink;
        while let Some(prev) = self.current.previous() {
            match self.current.strategy() {
                Contiguity::NotFollow => {
                    let at_end = self.nfa.states[last_sink as usize].kind == StateKind::Final;
                    let timed = self.current.def().gap.is_some() || self.nfa.window > 0;
                    if at_end && timed {
                        let pending = self.cur_state(StateKind::Pending);
                        let not_cond = self.take_condition(self.current);
                        let stop = self.stop_state(not_cond, self.current.def().id);
                        self.add(pending, Action::Proceed, stop, not_cond);
                        let ign = self.not(not_cond);
                        self.add(pending, Action::Ignore, pending, ign);
                        last_sink = pending;
                    }
                    // Otherwise it becomes stop guards on the neighbouring states.
                }
                Contiguity::NotNext => {
                    let not_next = self.cur_state(StateKind::Normal);
                    let not_cond = self.take_condition(self.current);
                    let stop = self.stop_state(not_cond, self.current.def().id);
                    let ok = self.not(not_cond);
                    if self.nfa.states[last_sink as usize].kind == StateKind::Final {
                        // An ignore, so the proceed to the final state does not fire on this event.
                        self.add(not_next, Action::Ignore, last_sink, ok);
                    } else {
                        self.add(not_next, Action::Proceed, last_sink, ok);
                    }
                    self.add(not_next, Action::Proceed, stop, not_cond);
                    last_sink = not_next;
                }
                _ => last_sink = self.convert(last_sink),
            }
            self.following = Some(self.current);
            self.current = prev;
        }
        last_sink
    }

    fn convert(&mut self, sink: StateId) -> StateId {
        let last = if self.current.looping() {
            self.set_first_of_loop(false);
            let s = self.copy_without_transitive_nots(sink);
            let looping = self.looping(s);
            self.set_first_of_loop(true);
            let times = self.current.times_range();
            self.times_state(looping, Some(sink), times)
        } else if self.current.times() {
            let times = self.current.times_range();
            self.times_state(sink, Some(sink), times)
        } else {
            let take = self.take_condition(self.current);
            let ignore = self.ignore_condition(self.current);
            let opt = self.is_pattern_optional(self.current);
            self.singleton(sink, Some(sink), take, ignore, opt)
        };
        self.add_stop_states(last);
        last
    }

    fn copy_without_transitive_nots(&mut self, sink: StateId) -> StateId {
        let nots = self.current_not_conditions();
        if nots.is_empty() || !self.current.optional() {
            return sink;
        }
        let src = self.nfa.states[sink as usize].clone();
        let copy = self.state(src.stage, src.kind);
        for t in &src.transitions {
            if t.action == Action::Proceed {
                let target_state = &self.nfa.states[t.target as usize];
                if target_state.kind == StateKind::Stop {
                    let removed = nots.iter().any(|(_, st)| Some(*st) == target_state.stage);
                    if !removed {
                        self.add(copy, t.action, t.target, t.cond);
                    }
                } else {
                    let target = self.copy_without_transitive_nots(t.target);
                    self.add(copy, t.action, target, t.cond);
                }
            } else {
                let target = if t.target == sink { copy } else { t.target };
                self.add(copy, t.action, target, t.cond);
            }
        }
        copy
    }

    fn copy(&mut self, s: StateId) -> StateId {
        let src = self.nfa.states[s as usize].clone();
        let copy = self.state(src.stage, src.kind);
        for t in &src.transitions {
            let target = if t.target == s { copy } else { t.target };
            self.add(copy, t.action, target, t.cond);
        }
        copy
    }

    fn add_stop_states(&mut self, state: StateId) {
        for (c, stage) in self.current_not_conditions() {
            let stop = self.stop_state(c, stage);
            self.add(state, Action::Proceed, stop, c);
        }
    }

    fn add_stop_state_to_looping(&mut self, state: StateId) {
        if let Some(f) = self.following
            && f.strategy() == Contiguity::NotFollow
        {
            let c = self.take_condition(f);
            let stop = self.stop_state(c, f.def().id);
            self.add(state, Action::Proceed, stop, c);
        }
    }

    fn update_with_greedy_condition(&mut self, state: StateId, take: CondId) {
        let n = self.nfa.states[state as usize].transitions.len();
        for i in 0..n {
            let old = self.nfa.states[state as usize].transitions[i].cond;
            let nt = self.not(take);
            let c = self.and(old, nt);
            self.nfa.states[state as usize].transitions[i].cond = c;
        }
    }

    fn times_state(
        &mut self,
        sink: StateId,
        proceed: Option<StateId>,
        (from, to): (u32, u32),
    ) -> StateId {
        let mut last = sink;
        self.set_first_of_loop(false);
        let until = self.until_of(Some(self.current));
        let inner = self.inner_ignore_condition(self.current);
        let inner_ignore = self.extend_with_until(inner, until, false);
        let raw_take = self.take_condition(self.current);
        let take = self
            .extend_with_until(Some(raw_take), until, true)
            .unwrap_or(raw_take);
        if self.current.greedy() && from != to {
            if until.is_some() {
                let c = self.copy(sink);
                self.original_state_map.insert(sink, c);
            }
            self.update_with_greedy_condition(sink, take);
        }
        for _ in from..to {
            last = self.singleton(last, proceed, take, inner_ignore, true);
            self.add_stop_state_to_looping(last);
        }
        for _ in 0..from.saturating_sub(1) {
            last = self.singleton(last, None, take, inner_ignore, false);
            self.add_stop_state_to_looping(last);
        }
        self.set_first_of_loop(true);
        let ignore = self.ignore_condition(self.current);
        let optional = self.current.optional();
        self.singleton(last, proceed, take, ignore, optional)
    }

    fn singleton(
        &mut self,
        sink: StateId,
        proceed: Option<StateId>,
        take: CondId,
        ignore: Option<CondId>,
        optional: bool,
    ) -> StateId {
        if self.current.is_group() {
            return self.group_state(self.current, sink, proceed, optional);
        }
        let single = self.cur_state(StateKind::Normal);
        let s = self.copy_without_transitive_nots(sink);
        self.add(single, Action::Take, s, take);
        let proceed_cond = self.true_function();
        if optional && !self.head_of_group(self.current) {
            let proceed = proceed.expect("optional states always have a proceed target");
            if self.current.greedy() {
                let until = self.until_of(Some(self.current));
                if let Some(u) = until {
                    let target = *self.original_state_map.get(&proceed).unwrap_or(&proceed);
                    let c = self.and(proceed_cond, u);
                    self.add(single, Action::Proceed, target, c);
                }
                let c = match until {
                    Some(u) => {
                        let nu = self.not(u);
                        self.and(proceed_cond, nu)
                    }
                    None => proceed_cond,
                };
                self.add(single, Action::Proceed, proceed, c);
            } else {
                self.add(single, Action::Proceed, proceed, proceed_cond);
            }
        }
        if let Some(ign) = ignore {
            let ignore_state = if optional {
                let st = self.cur_state(StateKind::Normal);
                self.add(st, Action::Take, s, take);
                self.add(st, Action::Ignore, st, ign);
                self.add_stop_states(st);
                st
            } else {
                single
            };
            self.add(single, Action::Ignore, ignore_state, ign);
        }
        single
    }

    fn enter_group(&mut self, g: Pat<'a>) -> (Pat<'a>, Option<Pat<'a>>, Option<Pat<'a>>) {
        let saved = (self.current, self.following, self.group);
        self.group = Some(g);
        self.current = g.group_last();
        saved
    }

    fn leave_group(&mut self, saved: (Pat<'a>, Option<Pat<'a>>, Option<Pat<'a>>)) {
        (self.current, self.following, self.group) = saved;
    }

    fn group_state(
        &mut self,
        g: Pat<'a>,
        sink: StateId,
        proceed: Option<StateId>,
        optional: bool,
    ) -> StateId {
        let proceed_cond = self.true_function();
        let saved = self.enter_group(g);
        let mut last = self.middle_states(sink);
        last = self.convert(last);
        if optional && let Some(p) = proceed {
            self.add(last, Action::Proceed, p, proceed_cond);
        }
        self.leave_group(saved);
        last
    }

    fn looping_group_state(&mut self, g: Pat<'a>, sink: StateId) -> StateId {
        let proceed_cond = self.true_function();
        let dummy = self.cur_state(StateKind::Normal);
        let saved = self.enter_group(g);
        let mut last = self.middle_states(dummy);
        last = self.convert(last);
        self.add(last, Action::Proceed, sink, proceed_cond);
        self.add(dummy, Action::Proceed, last, proceed_cond);
        self.leave_group(saved);
        last
    }

    fn looping(&mut self, sink: StateId) -> StateId {
        if self.current.is_group() {
            return self.looping_group_state(self.current, sink);
        }
        let until = self.until_of(Some(self.current));
        let inner = self.inner_ignore_condition(self.current);
        let ignore = self.extend_with_until(inner, until, false);
        let raw_take = self.take_condition(self.current);
        let take = self
            .extend_with_until(Some(raw_take), until, true)
            .unwrap_or(raw_take);
        let proceed_cond = self.true_function();
        let looping = self.cur_state(StateKind::Normal);
        if self.current.greedy() {
            if let Some(u) = until {
                let copy = self.copy(sink);
                let c = self.and(proceed_cond, u);
                self.add(looping, Action::Proceed, copy, c);
                self.original_state_map.insert(sink, copy);
            }
            let c = match until {
                Some(u) => {
                    let nu = self.not(u);
                    self.and(proceed_cond, nu)
                }
                None => proceed_cond,
            };
            self.add(looping, Action::Proceed, sink, c);
            let raw = self.take_condition(self.current);
            self.update_with_greedy_condition(sink, raw);
        } else {
            self.add(looping, Action::Proceed, sink, proceed_cond);
        }
        self.add(looping, Action::Take, looping, take);
        self.add_stop_state_to_looping(looping);
        if let Some(ign) = ignore {
            let ignore_state = self.cur_state(StateKind::Normal);
            self.add(ignore_state, Action::Take, looping, take);
            self.add(ignore_state, Action::Ignore, ignore_state, ign);
            self.add(looping, Action::Ignore, ignore_state, ign);
            self.add_stop_state_to_looping(ignore_state);
        }
        looping
    }
}
