//! Runs a compiled [`Nfa`] for one key: the per-key [`MatcherState`] holds
//! the partial matches, each a pointer into a shared chain of taken events
//! (prefixes are shared between branches, as in Flink's shared buffer).
//!
//! Invariants: `partials` is ordered by start event (the start state last);
//! events reach [`Matcher::process`] in event-time order, preceded by
//! [`Matcher::advance_time`] to their timestamp. Under no skip strategy, the
//! matches one event completes are reported in one canonical order (by
//! their events), the same in the lazy mode.

use super::eval::{MatchPath, Scope, holds};
use super::lazy::{LazyState, Recent, SymbolDfa};
use super::nfa::{Action, Cond, CondId, Nfa, StateId, StateKind};
use crate::event::{Event, MAX_EVENT_TIME_MS, Value};
use crate::rules::{SkipDef, StageId};
use std::sync::Arc;

/// A link in the chain of events a partial match has taken.
#[derive(Debug)]
pub struct Node {
    /// Stage that took the event.
    pub stage: StageId,
    /// The event.
    pub event: Arc<Event>,
    /// The events taken before it.
    pub prev: Option<Arc<Node>>,
}

/// Identity of an event for ordering partial matches: (time, arrival).
pub type EventKey = (i64, u64);

fn key_of(e: &Event) -> EventKey {
    (e.time, e.seq)
}

/// One partial match.
#[derive(Clone, Debug)]
pub struct Partial {
    /// Current state.
    pub state: StateId,
    /// Last taken event (None before the first).
    pub node: Option<Arc<Node>>,
    /// Time of the first taken event.
    pub start_ts: i64,
    /// Time of the last taken event.
    pub prev_ts: i64,
    /// The first taken event.
    pub start: Option<EventKey>,
}

impl Partial {
    fn order(&self) -> EventKey {
        self.start.unwrap_or((i64::MAX, u64::MAX))
    }

    /// The taken events, oldest first.
    pub fn path(&self) -> Vec<(StageId, Arc<Event>)> {
        chain(self.node.as_ref())
    }
}

/// The events of the chain ending at `last`, oldest first.
fn chain(last: Option<&Arc<Node>>) -> Vec<(StageId, Arc<Event>)> {
    let mut v = Vec::new();
    let mut n = last;
    while let Some(node) = n {
        v.push((node.stage, node.event.clone()));
        n = node.prev.as_ref();
    }
    v.reverse();
    v
}

/// Sorts matches that end at the same event into the canonical order: by
/// their events' (time, arrival, stage), first event first. The explicit
/// matcher and the lazy search find the same matches in different orders;
/// both report them in this one, so the output does not depend on the mode.
fn sort_matches(outs: &mut [Output]) {
    fn path(o: &Output) -> &[(StageId, Arc<Event>)] {
        match o {
            Output::Match(p) => p,
            Output::Timeout { path, .. } => path,
        }
    }
    outs.sort_by(|a, b| compare_paths(path(a), path(b)));
}

fn compare_paths(a: &[(StageId, Arc<Event>)], b: &[(StageId, Arc<Event>)]) -> std::cmp::Ordering {
    let key = |(stage, e): &(StageId, Arc<Event>)| (e.time, e.seq, *stage);
    a.iter().map(key).cmp(b.iter().map(key))
}

/// The per-key state of one rule's matcher.
#[derive(Clone, Debug)]
pub struct MatcherState {
    /// Live partial matches, ordered by start event (start state last).
    pub partials: Vec<Partial>,
    /// Completed matches held back until earlier-started partial matches
    /// resolve (skip strategies only).
    pub completed: Vec<Partial>,
    /// Earliest time a partial match can time out (`i64::MAX`: none); kept
    /// current by the matcher so idle keys are skipped without a scan.
    pub deadline: i64,
    /// Lazy mode: the symbol DFA's state and the window's events.
    pub lazy: Option<LazyState>,
}

impl MatcherState {
    /// Whether only the start state is left (nothing to keep for this key).
    pub fn is_idle(&self) -> bool {
        self.completed.is_empty()
            && self.partials.iter().all(|p| p.start.is_none())
            && self.lazy.as_ref().is_none_or(|l| l.recent.is_empty())
    }

    /// The earliest time at which a partial match here can time out.
    pub fn next_deadline(&self) -> Option<i64> {
        (self.deadline != i64::MAX).then_some(self.deadline)
    }

    fn compute_deadline(&self, nfa: &Nfa) -> Option<i64> {
        self.partials
            .iter()
            .filter(|p| p.start.is_some())
            .filter_map(|p| {
                let w = (nfa.window > 0).then(|| p.start_ts.saturating_add(nfa.window));
                let g = nfa.states[p.state as usize]
                    .stage
                    .and_then(|s| nfa.gaps[s as usize])
                    .map(|g| p.prev_ts.saturating_add(g));
                match (w, g) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            })
            .min()
    }
}

/// A matcher state in flat, serializable form: the shared event chains
/// become a node table, events are referenced by index into the key's event
/// table (so an event shared by many partial matches is stored once).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MatcherSnapshot {
    /// (stage, event index, previous node index).
    pub nodes: Vec<(StageId, u32, Option<u32>)>,
    /// Partial matches.
    pub partials: Vec<PartialSnapshot>,
    /// Held-back completed matches.
    pub completed: Vec<PartialSnapshot>,
    /// Lazy mode: the window's events (event index, symbol).
    pub recent: Option<Vec<(u32, u8)>>,
}

/// A partial match in flat form.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PartialSnapshot {
    /// State id.
    pub state: StateId,
    /// Node index of the last taken event.
    pub node: Option<u32>,
    /// First event time.
    pub start_ts: i64,
    /// Last event time.
    pub prev_ts: i64,
    /// First event (time, arrival).
    pub start: Option<EventKey>,
}

/// Why a snapshot does not fit the compiled rules.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid matcher snapshot: {0}")]
pub struct SnapshotMismatch(pub String);

/// Interns events by identity while flattening.
#[derive(Default)]
pub struct EventTable {
    /// The events, in first-seen order.
    pub events: Vec<Arc<Event>>,
    index: hashbrown::HashMap<*const Event, u32>,
}

impl EventTable {
    fn intern(&mut self, e: &Arc<Event>) -> u32 {
        let ptr = Arc::as_ptr(e);
        if let Some(i) = self.index.get(&ptr) {
            return *i;
        }
        let i = self.events.len() as u32;
        self.events.push(e.clone());
        self.index.insert(ptr, i);
        i
    }
}

impl MatcherState {
    /// Flattens this state, interning its events into `events`.
    pub fn to_snapshot(&self, events: &mut EventTable) -> MatcherSnapshot {
        let mut nodes: Vec<(StageId, u32, Option<u32>)> = Vec::new();
        let mut index: hashbrown::HashMap<*const Node, u32> = hashbrown::HashMap::new();
        let mut node_of = |n: &Option<Arc<Node>>| -> Option<u32> {
            // Walk back to the first node not yet numbered, then number forwards,
            // so a node's predecessor always has a smaller index.
            let mut chain = Vec::new();
            let mut cur = n.as_ref();
            while let Some(node) = cur {
                if index.contains_key(&Arc::as_ptr(node)) {
                    break;
                }
                chain.push(node.clone());
                cur = node.prev.as_ref();
            }
            for node in chain.into_iter().rev() {
                let prev = node.prev.as_ref().map(|p| index[&Arc::as_ptr(p)]);
                let ev = events.intern(&node.event);
                index.insert(Arc::as_ptr(&node), nodes.len() as u32);
                nodes.push((node.stage, ev, prev));
            }
            n.as_ref().map(|node| index[&Arc::as_ptr(node)])
        };
        let mut flat = |p: &Partial| PartialSnapshot {
            state: p.state,
            node: node_of(&p.node),
            start_ts: p.start_ts,
            prev_ts: p.prev_ts,
            start: p.start,
        };
        let partials = self.partials.iter().map(&mut flat).collect();
        let completed = self.completed.iter().map(&mut flat).collect();
        let recent = self.lazy.as_ref().map(|l| {
            l.recent
                .iter()
                .map(|r| (events.intern(&r.event), r.symbol))
                .collect()
        });
        MatcherSnapshot {
            nodes,
            partials,
            completed,
            recent,
        }
    }

    /// Rebuilds a state from its flat form, checking every index against the
    /// automaton and the event table.
    pub fn from_snapshot(
        s: &MatcherSnapshot,
        events: &[Arc<Event>],
        nfa: &Nfa,
        lazy: Option<&SymbolDfa>,
    ) -> Result<MatcherState, SnapshotMismatch> {
        let bad = |m: String| Err(SnapshotMismatch(m));
        let mut nodes: Vec<Arc<Node>> = Vec::with_capacity(s.nodes.len());
        for (i, &(stage, ev, prev)) in s.nodes.iter().enumerate() {
            if (stage as usize) >= nfa.gaps.len() {
                return bad(format!("node {i} names stage {stage}"));
            }
            let Some(event) = events.get(ev as usize) else {
                return bad(format!("node {i} names event {ev}"));
            };
            let prev = match prev {
                None => None,
                Some(p) if (p as usize) < i => Some(nodes[p as usize].clone()),
                Some(p) => return bad(format!("node {i} points forward to {p}")),
            };
            nodes.push(Arc::new(Node {
                stage,
                event: event.clone(),
                prev,
            }));
        }
        let mut unflat = |p: &PartialSnapshot| -> Result<Partial, SnapshotMismatch> {
            if (p.state as usize) >= nfa.states.len() {
                return Err(SnapshotMismatch(format!("state {} out of range", p.state)));
            }
            // Times no event can have would make deadlines saturate and never fire.
            let times = [p.start_ts, p.prev_ts, p.start.map_or(0, |s| s.0)];
            if times.iter().any(|t| t.abs() > MAX_EVENT_TIME_MS) {
                return Err(SnapshotMismatch(format!(
                    "partial match times {times:?} out of range"
                )));
            }
            let node = match p.node {
                None => None,
                Some(n) => Some(
                    nodes
                        .get(n as usize)
                        .cloned()
                        .ok_or_else(|| SnapshotMismatch(format!("node {n} out of range")))?,
                ),
            };
            Ok(Partial {
                state: p.state,
                node,
                start_ts: p.start_ts,
                prev_ts: p.prev_ts,
                start: p.start,
            })
        };
        let partials = s
            .partials
            .iter()
            .map(&mut unflat)
            .collect::<Result<Vec<_>, _>>()?;
        let completed = s
            .completed
            .iter()
            .map(&mut unflat)
            .collect::<Result<Vec<_>, _>>()?;
        if !partials
            .iter()
            .any(|p| p.state == nfa.start && p.start.is_none())
        {
            return bad("no start state".into());
        }
        let lazy = match (lazy, &s.recent) {
            (None, None) => None,
            (Some(dfa), Some(recent)) => {
                let mut ls = dfa.new_state();
                // The DFA state is not stored; it is rebuilt from the window.
                for &(e, sym) in recent {
                    let ev = events.get(e as usize).ok_or_else(|| {
                        SnapshotMismatch(format!("recent event {e} out of range"))
                    })?;
                    ls.recent.push_back(Recent {
                        time: ev.time,
                        event: ev.clone(),
                        symbol: sym,
                    });
                }
                dfa.resync(&mut ls);
                Some(ls)
            }
            _ => return bad("lazy state does not match the rule".into()),
        };
        let mut st = MatcherState {
            partials,
            completed,
            deadline: i64::MAX,
            lazy,
        };
        st.deadline = st.compute_deadline(nfa).unwrap_or(i64::MAX);
        Ok(st)
    }
}

/// What the matcher produced.
#[derive(Clone, Debug)]
pub enum Output {
    /// A complete match: the events, oldest first, with their stages.
    Match(Vec<(StageId, Arc<Event>)>),
    /// A partial match that ran out of time (only when timeouts are reported).
    Timeout {
        /// The events taken so far.
        path: Vec<(StageId, Arc<Event>)>,
        /// When it timed out.
        at: i64,
    },
}

/// Too many partial matches for one key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "{live} live partial matches exceed the limit of {limit}; the {dropped} latest-started were dropped"
)]
pub struct PartialLimitExceeded {
    /// How many there were.
    pub live: usize,
    /// The limit.
    pub limit: usize,
    /// How many were dropped.
    pub dropped: usize,
}

/// Reusable per-event buffers, so matching does not allocate per event.
#[derive(Default)]
pub struct Scratch {
    cache: Vec<u8>,
    next: Vec<Partial>,
    potential: Vec<Partial>,
    stack: Vec<StateId>,
    edges: Vec<(Action, StateId, StateId, Option<StateId>)>,
}

/// Runs one rule's NFA. Immutable and shared by all keys.
#[derive(Clone, Debug)]
pub struct Matcher {
    /// The automaton.
    pub nfa: Arc<Nfa>,
    skip: SkipDef,
    report_timeouts: bool,
    max_partials: usize,
    /// Present when the rule runs lazily.
    pub lazy: Option<Arc<SymbolDfa>>,
    /// A pattern of one mandatory stage: its (stage, predicate). Every event
    /// meeting the condition is a match on its own and nothing is ever
    /// pending, so the automaton is not stepped.
    single: Option<(StageId, u32)>,
}

struct Ctx<'a> {
    event: &'a Arc<Event>,
    windows: &'a [Value],
    path: Option<Vec<(StageId, Arc<Event>)>>,
    node: Option<&'a Arc<Node>>,
}

impl Matcher {
    /// A matcher for `nfa`.
    pub fn new(
        nfa: Arc<Nfa>,
        skip: SkipDef,
        report_timeouts: bool,
        max_partials: usize,
    ) -> Matcher {
        Matcher {
            nfa,
            skip,
            report_timeouts,
            max_partials,
            lazy: None,
            single: None,
        }
    }

    /// Marks the pattern as one mandatory stage with condition predicate `pred`.
    pub fn with_single_stage(mut self, single: Option<(StageId, u32)>) -> Matcher {
        self.single = single;
        self
    }

    /// Whether its per-key state can hold partial matches, and so
    /// deadlines: a single-stage pattern's never does.
    pub fn keeps_state(&self) -> bool {
        self.single.is_none()
    }

    /// Whether it runs lazily (keeps its window's events for the DFA).
    pub fn is_lazy(&self) -> bool {
        self.lazy.is_some()
    }

    /// Runs lazily with `dfa` (see [`super::lazy`]).
    pub fn with_lazy(mut self, dfa: Option<SymbolDfa>) -> Matcher {
        self.lazy = dfa.map(Arc::new);
        self
    }

    /// A fresh per-key state.
    pub fn new_state(&self) -> MatcherState {
        MatcherState {
            partials: vec![Partial {
                state: self.nfa.start,
                node: None,
                start_ts: 0,
                prev_ts: 0,
                start: None,
            }],
            completed: Vec::new(),
            deadline: i64::MAX,
            lazy: self.lazy.as_ref().map(|d| d.new_state()),
        }
    }

    fn is_start(&self, p: &Partial) -> bool {
        self.nfa.states[p.state as usize].kind == StateKind::Start
    }

    /// Moves time to `now`: prunes partial matches whose window or gap has
    /// run out, completes pending (trailing `not then`) matches.
    pub fn advance_time(&self, st: &mut MatcherState, now: i64, out: &mut Vec<Output>) {
        let nfa = &*self.nfa;
        if now < st.deadline {
            return;
        }
        let expired = |p: &Partial| -> Option<bool> {
            // Some(gap ran out) for a partial match that timed out.
            if self.is_start(p) {
                return None;
            }
            let gap = nfa.states[p.state as usize]
                .stage
                .and_then(|s| nfa.gaps[s as usize]);
            let gap_out = gap.is_some_and(|g| g > 0 && now.saturating_sub(p.prev_ts) >= g);
            let window_out = nfa.window > 0 && now.saturating_sub(p.start_ts) >= nfa.window;
            (gap_out || window_out).then_some(gap_out)
        };
        let mut potential = Vec::new();
        // Remove in place: the survivors keep their order and their buffer.
        for p in st.partials.extract_if(.., |p| expired(p).is_some()) {
            if nfa.states[p.state as usize].kind == StateKind::Pending {
                potential.push(p);
                continue;
            }
            if self.report_timeouts {
                let gap = nfa.states[p.state as usize]
                    .stage
                    .and_then(|s| nfa.gaps[s as usize]);
                let gap_out = expired(&p) == Some(true);
                let at = if gap_out {
                    p.prev_ts + gap.unwrap_or(0)
                } else {
                    p.start_ts + nfa.window
                };
                out.push(Output::Timeout { path: p.path(), at });
            }
        }
        self.emit_by_skip(st, potential, out);
        st.deadline = st.compute_deadline(nfa).unwrap_or(i64::MAX);
    }

    /// Lets go of lazy-mode events too old for any future match (keys that went
    /// quiet would otherwise keep their last window forever).
    pub fn expire_lazy(&self, st: &mut MatcherState, now: i64) {
        if let (Some(dfa), Some(ls)) = (&self.lazy, st.lazy.as_mut()) {
            dfa.expire(ls, now);
        }
    }

    /// Whether predicate `p` holds for `event`, outside any partial match.
    fn pred_holds(&self, p: usize, event: &Arc<Event>, windows: &[Value]) -> bool {
        let scope = Scope {
            event,
            path: &[],
            windows,
        };
        holds(&self.nfa.preds[p], scope)
    }

    /// Feeds one event (after `advance_time` to its time).
    pub fn process(
        &self,
        st: &mut MatcherState,
        event: &Arc<Event>,
        windows: &[Value],
        scratch: &mut Scratch,
        out: &mut Vec<Output>,
    ) -> Result<(), PartialLimitExceeded> {
        if let Some((stage, pred)) = self.single {
            if self.pred_holds(pred as usize, event, windows) {
                out.push(Output::Match(vec![(stage, event.clone())]));
            }
            return Ok(());
        }
        match (&self.lazy, st.lazy.as_mut()) {
            (Some(dfa), Some(ls)) => self.process_lazy(dfa, ls, event, windows, scratch, out),
            _ => self.process_streaming(st, event, windows, scratch, out, None),
        }
    }

    /// Lazy mode: one DFA step; only when the DFA reports a match end are
    /// the matches that end at this event looked for.
    fn process_lazy(
        &self,
        dfa: &SymbolDfa,
        ls: &mut LazyState,
        event: &Arc<Event>,
        windows: &[Value],
        scratch: &mut Scratch,
        out: &mut Vec<Output>,
    ) -> Result<(), PartialLimitExceeded> {
        let mut symbol = 0u8;
        for p in 0..self.nfa.preds.len() {
            if self.pred_holds(p, event, windows) {
                symbol |= 1 << p;
            }
        }
        if !dfa.step(ls, event, symbol) {
            return Ok(());
        }
        if let Some(found) = dfa.matches_ending_last(&ls.recent, self.max_partials) {
            let first = out.len();
            out.extend(found.into_iter().map(Output::Match));
            sort_matches(&mut out[first..]);
            return Ok(());
        }
        // The search gave up: run the explicit matcher over the window (it
        // starts at an event that meets a first stage: see `SymbolDfa::trim`).
        let mut explicit = MatcherState {
            lazy: None,
            ..self.new_state()
        };
        let mut produced = Vec::new();
        let mut result = Ok(());
        for r in &ls.recent {
            produced.clear();
            self.advance_time(&mut explicit, r.time, &mut produced);
            if let Err(err) = self.process_streaming(
                &mut explicit,
                &r.event,
                &[],
                scratch,
                &mut produced,
                Some(r.symbol),
            ) {
                result = Err(err);
            }
        }
        // Only the current event can end a match: the DFA reported none before it.
        out.append(&mut produced);
        result
    }

    /// The explicit matcher. `preset` gives the predicates' results as a
    /// symbol (lazy replay), instead of evaluating them.
    fn process_streaming(
        &self,
        st: &mut MatcherState,
        event: &Arc<Event>,
        windows: &[Value],
        scratch: &mut Scratch,
        out: &mut Vec<Output>,
        preset: Option<u8>,
    ) -> Result<(), PartialLimitExceeded> {
        let nfa = &*self.nfa;
        scratch.cache.clear();
        match preset {
            None => scratch.cache.resize(nfa.preds.len(), 0),
            Some(sym) => scratch
                .cache
                .extend((0..nfa.preds.len()).map(|p| 1 + ((sym >> p) & 1))),
        }
        let mut next: Vec<Partial> = std::mem::take(&mut scratch.next);
        next.clear();
        let mut potential: Vec<Partial> = std::mem::take(&mut scratch.potential);
        potential.clear();
        let mut old = std::mem::take(&mut st.partials);
        for p in old.drain(..) {
            let start_before = next.len();
            let was_start = self.is_start(&p);
            let stopped = self.next_states(p, event, windows, scratch, &mut next, &mut potential);
            if stopped {
                // A negation fired on this branch: discard the partial matches it
                // produced (matches it completed on this event stand); the start
                // state is never lost.
                next.truncate(start_before);
                if was_start {
                    next.push(self.new_state().partials.remove(0));
                }
            }
        }
        // Keep the order by start event; ties keep creation order.
        if !next.is_sorted_by_key(|p| p.order()) {
            next.sort_by_key(|p| p.order());
        }
        st.partials = next;
        scratch.next = old;
        if self.skip == SkipDef::NoSkip {
            let first = out.len();
            for m in potential.drain(..) {
                out.push(Output::Match(m.path()));
            }
            if out.len() - first > 1 {
                sort_matches(&mut out[first..]);
            }
            scratch.potential = potential;
        } else {
            self.emit_by_skip(st, potential, out);
        }
        st.deadline = st.compute_deadline(nfa).unwrap_or(i64::MAX);
        if st.partials.len() > self.max_partials {
            let live = st.partials.len();
            // Keep the start state so matching can go on.
            let start = st.partials.pop();
            st.partials.truncate(self.max_partials.saturating_sub(1));
            st.partials.extend(start);
            return Err(PartialLimitExceeded {
                live,
                limit: self.max_partials,
                dropped: live - st.partials.len(),
            });
        }
        Ok(())
    }

    /// Computes the successors of `p` on `event`. Returns true if the branch
    /// reached a stop state.
    fn next_states(
        &self,
        p: Partial,
        event: &Arc<Event>,
        windows: &[Value],
        scratch: &mut Scratch,
        next: &mut Vec<Partial>,
        potential: &mut Vec<Partial>,
    ) -> bool {
        let nfa = &*self.nfa;
        let is_start = self.is_start(&p);
        {
            let mut ctx = Ctx {
                event,
                windows,
                path: None,
                node: p.node.as_ref(),
            };
            // The decision graph: follow proceed edges depth-first, collecting
            // take and ignore edges whose guards hold.
            scratch.edges.clear();
            scratch.stack.clear();
            scratch.stack.push(p.state);
            while let Some(s) = scratch.stack.pop() {
                for t in &nfa.states[s as usize].transitions {
                    if !self.check(t.cond, &mut ctx, &mut scratch.cache) {
                        continue;
                    }
                    match t.action {
                        Action::Proceed => scratch.stack.push(t.target),
                        a => scratch.edges.push((a, s, t.target, None)),
                    }
                }
            }
            // A state reached by a take that can proceed straight to the end is
            // also a match; its guards see the match as it was before the take.
            for i in 0..scratch.edges.len() {
                if scratch.edges[i].0 == Action::Take {
                    let target = scratch.edges[i].2;
                    scratch.edges[i].3 = self.final_after_proceed(
                        target,
                        &mut ctx,
                        &mut scratch.cache,
                        &mut scratch.stack,
                    );
                }
            }
        }
        let mut stopped = false;
        let mut push = |q: Partial, next: &mut Vec<Partial>, potential: &mut Vec<Partial>| match nfa
            .states[q.state as usize]
            .kind
        {
            StateKind::Final => potential.push(q),
            StateKind::Stop => stopped = true,
            _ => next.push(q),
        };
        // Successors share `p`'s chain: clone it for all uses but the last,
        // which takes it (a clone of a cold node is a cache miss and an atomic).
        let mut uses = scratch
            .edges
            .iter()
            .filter(|e| e.0 == Action::Take || !is_start)
            .count()
            + is_start as usize;
        let mut p = Some(p);
        let mut take_p = || {
            uses -= 1;
            if uses == 0 { p.take() } else { p.clone() }
        };
        for &(action, source, target, fin) in &scratch.edges {
            match action {
                Action::Ignore if !is_start => {
                    if let Some(q) = take_p() {
                        push(Partial { state: target, ..q }, next, potential);
                    }
                }
                Action::Take => {
                    let Some(q) = take_p() else { continue };
                    let stage = nfa.states[source as usize].stage.unwrap_or(0);
                    let (start_ts, start) = if is_start {
                        (event.time, Some(key_of(event)))
                    } else {
                        (q.start_ts, q.start)
                    };
                    let taken = Partial {
                        state: target,
                        node: Some(Arc::new(Node {
                            stage,
                            event: event.clone(),
                            prev: q.node,
                        })),
                        start_ts,
                        prev_ts: event.time,
                        start,
                    };
                    let done = fin.map(|f| Partial {
                        state: f,
                        ..taken.clone()
                    });
                    push(taken, next, potential);
                    if let Some(d) = done {
                        push(d, next, potential);
                    }
                }
                _ => {}
            }
        }
        if is_start && let Some(q) = take_p() {
            next.push(q);
        }
        stopped
    }

    fn final_after_proceed(
        &self,
        from: StateId,
        ctx: &mut Ctx<'_>,
        cache: &mut [u8],
        stack: &mut Vec<StateId>,
    ) -> Option<StateId> {
        let nfa = &*self.nfa;
        stack.clear();
        stack.push(from);
        while let Some(s) = stack.pop() {
            for t in &nfa.states[s as usize].transitions {
                if t.action == Action::Proceed && self.check(t.cond, ctx, cache) {
                    if nfa.states[t.target as usize].kind == StateKind::Final {
                        return Some(t.target);
                    }
                    stack.push(t.target);
                }
            }
        }
        None
    }

    fn check(&self, c: CondId, ctx: &mut Ctx<'_>, cache: &mut [u8]) -> bool {
        match &self.nfa.conds[c as usize] {
            Cond::True => true,
            Cond::Not(x) => !self.check(*x, ctx, cache),
            Cond::And(a, b) => self.check(*a, ctx, cache) && self.check(*b, ctx, cache),
            Cond::Or(a, b) => self.check(*a, ctx, cache) || self.check(*b, ctx, cache),
            Cond::Pred(p) => {
                let p = *p as usize;
                if self.nfa.pred_depends_on_match[p] {
                    if ctx.path.is_none() {
                        ctx.path = Some(chain(ctx.node));
                    }
                    let path: &MatchPath = ctx.path.as_deref().unwrap_or(&[]);
                    if self.nfa.inclusive {
                        let mut with_candidate = path.to_vec();
                        with_candidate.push((self.nfa.pred_stage[p], ctx.event.clone()));
                        return holds(
                            &self.nfa.preds[p],
                            Scope {
                                event: ctx.event,
                                path: &with_candidate,
                                windows: ctx.windows,
                            },
                        );
                    }
                    return holds(
                        &self.nfa.preds[p],
                        Scope {
                            event: ctx.event,
                            path,
                            windows: ctx.windows,
                        },
                    );
                }
                match cache[p] {
                    1 => false,
                    2 => true,
                    _ => {
                        let r = holds(
                            &self.nfa.preds[p],
                            Scope {
                                event: ctx.event,
                                path: &[],
                                windows: ctx.windows,
                            },
                        );
                        cache[p] = 1 + r as u8;
                        r
                    }
                }
            }
        }
    }

    /// Emits completed matches that no earlier-started partial match can
    /// precede, applying the skip strategy to what remains.
    fn emit_by_skip(&self, st: &mut MatcherState, potential: Vec<Partial>, out: &mut Vec<Output>) {
        if potential.is_empty() && st.completed.is_empty() {
            return;
        }
        st.completed.extend(potential);
        st.completed.sort_by_key(|p| p.order());
        while let Some(first) = st.completed.first() {
            let earliest_partial = st.partials.first().map(|p| p.order());
            if earliest_partial.is_some_and(|e| first.order() > e) {
                break;
            }
            let m = st.completed.remove(0);
            let path = m.path();
            if let Some(pruning) = self.pruning_key(&path) {
                let prune = |p: &Partial| match (p.start, self.skip) {
                    (None, _) => false,
                    (Some(s), SkipDef::ToFirst(..) | SkipDef::ToLast(..)) => s < pruning,
                    (Some(s), _) => s <= pruning,
                };
                st.partials.retain(|p| !prune(p));
                st.completed.retain(|p| !prune(p));
            }
            out.push(Output::Match(path));
        }
    }

    fn pruning_key(&self, path: &[(StageId, Arc<Event>)]) -> Option<EventKey> {
        let keys = |stage: StageId| {
            path.iter()
                .filter(move |(s, _)| *s == stage)
                .map(|(_, e)| key_of(e))
        };
        match self.skip {
            SkipDef::NoSkip => None,
            SkipDef::ToNext => path.iter().map(|(_, e)| key_of(e)).min(),
            SkipDef::PastLast => path.iter().map(|(_, e)| key_of(e)).max(),
            SkipDef::ToFirst(s, _) => keys(s).min(),
            SkipDef::ToLast(s, _) => keys(s).max(),
        }
    }
}
