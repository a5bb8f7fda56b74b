//! Lazy matching for rules that are regular over their predicates.
//!
//! Each event becomes a symbol — a byte whose bit `i` says whether the
//! rule's `i`-th stage condition holds — and the pattern becomes a regular
//! expression over those bytes: stage `s` is the class of symbols with its bit
//! set, relaxed contiguity into it is "any number of symbols without its bit"
//! first, followed-by-any is "any symbols", repeats and optional stages map to
//! counted repetitions. `regex-automata` compiles that into a dense DFA that
//! says, one transition per event, whether some match ends at this event.
//!
//! A key in lazy mode keeps the DFA state and the events of the last
//! `within` with their symbols; no partial matches. When the DFA reports a
//! match end, a backward search over the window's symbols from the current
//! event ([`SymbolDfa::matches_ending_last`]) finds the matches that end
//! there, touching only the events they hold. Keys whose partial matches
//! never complete cost a DFA step per event; keys that match cost a search
//! per match end, however long the window. Where the search gives up (too
//! many matches, or a very long one), the explicit matcher runs over the
//! window from its first possible start instead.
//!
//! Eligible rules: no skip strategy, a `within`, no negation, group, `until`,
//! greedy or timeout reporting, at most 8 stage conditions, none of which
//! reads the match, and a DFA within the size limit (counted repeats of
//! overlapping conditions can blow up determinization). Others use the
//! explicit matcher alone. The DFA's
//! language equals the matcher's (tested in `tests/matcher_props.rs`), so
//! the output does not depend on the mode.

use super::eval::Match;
use super::nfa::Nfa;
use crate::event::Event;
use crate::rules::Contiguity;
use crate::rules::{QuantKind, RuleDef, SkipDef, StageBodyDef, StageId};
use regex_automata::dfa::{Automaton, dense};
use regex_automata::nfa::thompson;
use regex_automata::util::primitives::StateID;
use regex_automata::{Anchored, MatchKind};
use regex_syntax::hir::{Class, ClassBytes, ClassBytesRange, Hir, Repetition};
use std::collections::VecDeque;
use std::sync::Arc;

/// Largest DFA a rule may compile to before it falls back to the matcher alone.
const DFA_SIZE_LIMIT: usize = 1 << 20;

/// A rule's symbol DFA.
#[derive(Clone, Debug)]
pub struct SymbolDfa {
    dfa: dense::DFA<Vec<u32>>,
    start: StateID,
    /// Predicate id of each symbol bit.
    pub bit_preds: Vec<u32>,
    /// The rule's window (ms).
    pub window: i64,
    /// Symbol bits of the stages a match can start with: a key's window
    /// starts at an event that has one.
    pub start_mask: u8,
    /// No stage is strictly contiguous (within or between stages): an
    /// event that meets no condition then changes no match, and is neither
    /// stepped nor kept.
    pub skips_empty: bool,
    /// The stages, in pattern order, as the match search reads them.
    shapes: Vec<Shape>,
}

/// A stage as [`SymbolDfa::matches_ending_last`] reads it.
#[derive(Clone, Debug)]
struct Shape {
    id: StageId,
    /// The stage's symbol bit.
    mask: u8,
    /// Contiguity from the last event of an earlier stage.
    into: Contiguity,
    /// Contiguity between the stage's own events.
    inner: Contiguity,
    min: u32,
    /// `None`: open-ended.
    max: Option<u32>,
    /// Every stage before this one is optional: a match may start here.
    may_start: bool,
    /// Every stage after this one is optional: a match may end here.
    may_end: bool,
    /// Stages whose last event may come right before this stage's first:
    /// the earlier ones with only optional stages in between.
    after: Vec<u8>,
}

/// Most events a match found by the search may hold (the search recurses
/// once per event); longer matches are left to the explicit matcher.
const SEARCH_DEPTH: usize = 256;

/// The backward search for the matches that end at the window's last event.
struct Search<'a> {
    shapes: &'a [Shape],
    recent: &'a VecDeque<Recent>,
    /// The taken events from the last backwards: (stage index, position).
    path: Vec<(u8, u32)>,
    found: Vec<Match>,
    limit: usize,
    /// Steps left (visits and scanned events).
    budget: usize,
}

/// The search gave up: too many matches, steps or events in one match.
struct GaveUp;

impl Search<'_> {
    /// Takes the event at `y` for stage `j`, the `n`-th of that stage counted
    /// from the back, and extends the match backwards in every allowed way.
    fn visit(&mut self, j: usize, y: usize, n: u32) -> Result<(), GaveUp> {
        self.spend(1)?;
        if self.path.len() >= SEARCH_DEPTH {
            return Err(GaveUp);
        }
        self.path.push((j as u8, y as u32));
        let shape = &self.shapes[j];
        let closed = n >= shape.min;
        if closed && shape.may_start {
            if self.found.len() >= self.limit {
                return Err(GaveUp);
            }
            let m = self
                .path
                .iter()
                .rev()
                .map(|&(st, pos)| {
                    (
                        self.shapes[st as usize].id,
                        self.recent[pos as usize].event.clone(),
                    )
                })
                .collect();
            self.found.push(m);
        }
        if shape.max.is_none_or(|m| n < m) {
            let from = self.earliest(shape.inner, shape.mask, y)?;
            for x in (from..y).rev() {
                if self.recent[x].symbol & shape.mask != 0 {
                    self.visit(j, x, n + 1)?;
                }
            }
        }
        if closed && !shape.after.is_empty() {
            let from = self.earliest(shape.into, shape.mask, y)?;
            for x in (from..y).rev() {
                let sym = self.recent[x].symbol;
                for &i in &shape.after {
                    if sym & self.shapes[i as usize].mask != 0 {
                        self.visit(i as usize, x, 1)?;
                    }
                }
            }
        }
        self.path.pop();
        Ok(())
    }

    /// The earliest position the event before `y` may have under
    /// `contiguity` into a stage with symbol bit `mask`: relaxed contiguity
    /// forbids skipping an event that meets the stage's condition.
    fn earliest(&mut self, contiguity: Contiguity, mask: u8, y: usize) -> Result<usize, GaveUp> {
        Ok(match contiguity {
            Contiguity::Strict => y.saturating_sub(1),
            Contiguity::Any => 0,
            _ => {
                let mut x = y;
                while x > 0 {
                    x -= 1;
                    self.spend(1)?;
                    if self.recent[x].symbol & mask != 0 {
                        return Ok(x);
                    }
                }
                0
            }
        })
    }

    fn spend(&mut self, steps: usize) -> Result<(), GaveUp> {
        self.budget = self.budget.checked_sub(steps).ok_or(GaveUp)?;
        Ok(())
    }
}

/// An event of a key's window in lazy mode.
#[derive(Clone, Debug)]
pub struct Recent {
    /// The event's time, beside it: expiring the window reads it, and by
    /// then the event is cold in memory.
    pub time: i64,
    /// The event.
    pub event: Arc<Event>,
    /// Its symbol: which stage conditions it meets.
    pub symbol: u8,
}

/// Per-key state in lazy mode.
#[derive(Clone, Debug)]
pub struct LazyState {
    /// The DFA state after the key's last event.
    pub dfa_state: StateID,
    /// The key's events of the last window with their symbols, from the
    /// first that meets a first stage (no match can hold an earlier one).
    pub recent: VecDeque<Recent>,
    /// When the first event in `recent` leaves the window (`i64::MAX`:
    /// none): checking it costs no read of the event, which is cold in
    /// memory by then.
    pub expires_at: i64,
}

impl SymbolDfa {
    /// The DFA for `rule`, if it is eligible and the DFA fits the limit.
    pub fn build(rule: &RuleDef, nfa: &Nfa) -> Option<SymbolDfa> {
        let window = rule.within?;
        if rule.skip != SkipDef::NoSkip || rule.report_timeouts || rule.inclusive_aggregates {
            return None;
        }
        if nfa.preds.len() > 8 || nfa.pred_depends_on_match.iter().any(|d| *d) {
            return None;
        }
        let stages = &rule.pattern.stages;
        let mut bit_of_stage = Vec::with_capacity(stages.len());
        for s in stages {
            let eligible = matches!(s.body, StageBodyDef::Cond(_))
                && matches!(
                    s.contiguity,
                    Contiguity::Strict | Contiguity::Relaxed | Contiguity::Any
                )
                && s.until.is_none()
                && !s.quant.greedy
                && s.gap.is_none();
            if !eligible {
                return None;
            }
            // Each stage has one predicate: its condition.
            let pred = nfa.pred_stage.iter().position(|st| *st == s.id)?;
            bit_of_stage.push(pred as u32);
        }
        let alphabet: u8 = ((1u16 << nfa.preds.len()) - 1) as u8;
        let class = |bit: u32, set: bool| -> Hir {
            let ranges: Vec<ClassBytesRange> = (0..=alphabet)
                .filter(|b| ((b >> bit) & 1 == 1) == set)
                .map(|b| ClassBytesRange::new(b, b))
                .collect();
            Hir::class(Class::Bytes(ClassBytes::new(ranges)))
        };
        let any = || {
            Hir::class(Class::Bytes(ClassBytes::new([ClassBytesRange::new(
                0, alphabet,
            )])))
        };
        let star = |h: Hir| {
            Hir::repetition(Repetition {
                min: 0,
                max: None,
                greedy: true,
                sub: Box::new(h),
            })
        };
        let gap = |c: Contiguity, bit: u32| -> Hir {
            match c {
                Contiguity::Strict => Hir::empty(),
                Contiguity::Any => star(any()),
                _ => star(class(bit, false)),
            }
        };
        let body = |i: usize, first: bool| -> Hir {
            let s = &stages[i];
            let bit = bit_of_stage[i];
            let mut parts = Vec::new();
            if !first {
                parts.push(gap(s.contiguity, bit));
            }
            parts.push(class(bit, true));
            let (more_min, more_max) = match s.quant.kind {
                QuantKind::Single => (0, Some(0)),
                QuantKind::Times => (s.quant.from - 1, Some(s.quant.to - 1)),
                QuantKind::Looping => (s.quant.from - 1, None),
            };
            if more_max != Some(0) {
                parts.push(Hir::repetition(Repetition {
                    min: more_min,
                    max: more_max,
                    greedy: true,
                    sub: Box::new(Hir::concat(vec![gap(s.quant.inner, bit), class(bit, true)])),
                }));
            }
            Hir::concat(parts)
        };
        let optional = |h: Hir| {
            Hir::repetition(Repetition {
                min: 0,
                max: Some(1),
                greedy: true,
                sub: Box::new(h),
            })
        };
        // A match starts at its first taken stage f; every stage before f is skipped.
        let mut alternatives = Vec::new();
        for f in 0..stages.len() {
            if stages[..f].iter().any(|s| !s.quant.optional) {
                break;
            }
            let mut seq = vec![body(f, true)];
            for (j, s) in stages.iter().enumerate().skip(f + 1) {
                let b = body(j, false);
                seq.push(if s.quant.optional { optional(b) } else { b });
            }
            alternatives.push(Hir::concat(seq));
        }
        let hir = Hir::alternation(alternatives);
        let tnfa = thompson::NFA::compiler()
            .configure(thompson::NFA::config().utf8(false).shrink(true))
            .build_from_hir(&hir)
            .ok()?;
        let dfa = dense::Builder::new()
            .configure(
                dense::Config::new()
                    .match_kind(MatchKind::All)
                    .start_kind(regex_automata::dfa::StartKind::Unanchored)
                    .dfa_size_limit(Some(DFA_SIZE_LIMIT))
                    .determinize_size_limit(Some(DFA_SIZE_LIMIT)),
            )
            .build_from_nfa(&tnfa)
            .ok()?;
        let start = dfa.universal_start_state(Anchored::No)?;
        let shapes: Vec<Shape> = stages
            .iter()
            .enumerate()
            .map(|(j, s)| {
                let (min, max) = match s.quant.kind {
                    QuantKind::Single => (1, Some(1)),
                    QuantKind::Times => (s.quant.from, Some(s.quant.to)),
                    QuantKind::Looping => (s.quant.from, None),
                };
                let mut after = Vec::new();
                for i in (0..j).rev() {
                    after.push(i as u8);
                    if !stages[i].quant.optional {
                        break;
                    }
                }
                Shape {
                    id: s.id,
                    mask: 1 << bit_of_stage[j],
                    into: s.contiguity,
                    inner: s.quant.inner,
                    min,
                    max,
                    may_start: stages[..j].iter().all(|p| p.quant.optional),
                    may_end: stages[j + 1..].iter().all(|p| p.quant.optional),
                    after,
                }
            })
            .collect();
        let start_mask = shapes
            .iter()
            .filter(|s| s.may_start)
            .fold(0, |m, s| m | s.mask);
        let skips_empty = stages.iter().enumerate().all(|(i, s)| {
            (i == 0 || s.contiguity != Contiguity::Strict)
                && (s.quant.kind == QuantKind::Single || s.quant.inner != Contiguity::Strict)
        });
        Some(SymbolDfa {
            dfa,
            start,
            bit_preds: bit_of_stage,
            window,
            start_mask,
            skips_empty,
            shapes,
        })
    }

    /// A fresh per-key state.
    pub fn new_state(&self) -> LazyState {
        LazyState {
            dfa_state: self.start,
            recent: VecDeque::new(),
            expires_at: i64::MAX,
        }
    }

    /// Feeds one event's symbol; returns whether a match of the pattern's
    /// language ends at this event. An empty symbol under
    /// [`SymbolDfa::skips_empty`] only expires the window: every gap of the
    /// pattern accepts it, so the DFA would stay in a state of the same
    /// language, and no match can hold it.
    pub fn step(&self, st: &mut LazyState, event: &Arc<Event>, symbol: u8) -> bool {
        self.expire(st, event.time);
        if symbol == 0 && self.skips_empty {
            return false;
        }
        if st.recent.is_empty() {
            if symbol & self.start_mask == 0 {
                // No match starts before this event in the window, nor at
                // it: it can be in none, now or later.
                st.dfa_state = self.dfa.next_state(st.dfa_state, symbol);
                return false;
            }
            st.expires_at = event.time.saturating_add(self.window);
        }
        st.recent.push_back(Recent {
            time: event.time,
            event: event.clone(),
            symbol,
        });
        st.dfa_state = self.dfa.next_state(st.dfa_state, symbol);
        self.dfa
            .is_match_state(self.dfa.next_eoi_state(st.dfa_state))
    }

    /// The matches that end at the window's last event, each oldest first
    /// (in no particular order: the matcher sorts them as it sorts its own).
    /// A backward search from that event: each step takes an earlier event
    /// for the same stage or an earlier one, as contiguity allows, and a
    /// match is complete where it may start. It touches the window's symbols
    /// and the matched events only, where the explicit matcher steps every
    /// partial match over every event.
    ///
    /// `None` when there are more than `limit` matches, or the search runs
    /// past its step budget (16 steps per allowed match) or a match past 256
    /// events: the caller then runs the explicit matcher, whose limits and
    /// errors apply.
    pub fn matches_ending_last(
        &self,
        recent: &VecDeque<Recent>,
        limit: usize,
    ) -> Option<Vec<Match>> {
        let last = recent.len().checked_sub(1)?;
        let mut search = Search {
            shapes: &self.shapes,
            recent,
            path: Vec::new(),
            found: Vec::new(),
            limit,
            budget: limit.saturating_mul(16).max(1024),
        };
        let symbol = recent[last].symbol;
        for (j, shape) in self.shapes.iter().enumerate() {
            if shape.may_end && symbol & shape.mask != 0 {
                search.visit(j, last, 1).ok()?;
            }
        }
        Some(search.found)
    }

    /// Drops the window's events that no match ending at `now` or later can
    /// use.
    pub fn expire(&self, st: &mut LazyState, now: i64) {
        if now < st.expires_at {
            return;
        }
        while st
            .recent
            .front()
            .is_some_and(|r| now.saturating_sub(r.time) >= self.window)
        {
            st.recent.pop_front();
        }
        self.trim(st);
    }

    /// Drops the events before the window's first possible start: a match
    /// starts at an event meeting a first stage, so they can be in none.
    /// Keeping the window this short keeps the per-key memory, and the
    /// search, to what a match can use.
    fn trim(&self, st: &mut LazyState) {
        while st
            .recent
            .front()
            .is_some_and(|r| r.symbol & self.start_mask == 0)
        {
            st.recent.pop_front();
        }
        self.set_expiry(st);
    }

    fn set_expiry(&self, st: &mut LazyState) {
        st.expires_at = st
            .recent
            .front()
            .map_or(i64::MAX, |r| r.time.saturating_add(self.window));
    }

    /// Rebuilds the DFA state from the recent symbols (after a restore): only
    /// matches that start within the window matter, and they start in `recent`.
    pub fn resync(&self, st: &mut LazyState) {
        let mut s = self.start;
        for r in &st.recent {
            s = self.dfa.next_state(s, r.symbol);
        }
        st.dfa_state = s;
        self.trim(st);
    }

    /// The DFA's size in bytes.
    pub fn memory_usage(&self) -> usize {
        self.dfa.memory_usage()
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::{EngineOptions, RuleSet};
    use crate::pattern::{Output, PartialLimitExceeded, Scratch};
    use std::sync::Arc;

    /// Runs `values` (one event per ms) through the rule in `src`, lazily or
    /// not: the matches as (stage, event time) lists, and the errors.
    fn run(
        src: &str,
        values: &[&str],
        lazy: bool,
        max_partials: usize,
    ) -> (Vec<Vec<(u16, i64)>>, Vec<PartialLimitExceeded>) {
        let options = EngineOptions {
            lazy_regular_rules: lazy,
            max_partials_per_key: max_partials,
            ..EngineOptions::default()
        };
        let rs = RuleSet::from_source_with("l.tl", src, None, options).unwrap();
        let m = &rs.rules[0].matcher;
        assert_eq!(m.lazy.is_some(), lazy);
        let mut st = m.new_state();
        let (mut scratch, mut out) = (Scratch::default(), Vec::new());
        let (mut found, mut errors) = (Vec::new(), Vec::new());
        for (i, v) in values.iter().enumerate() {
            let line = format!(r#"{{"k":1,"t":{i},"v":"{v}"}}"#);
            let e = Arc::new(rs.decoder().decode(line.as_bytes(), i as u64).unwrap());
            m.advance_time(&mut st, e.time, &mut out);
            if let Err(err) = m.process(&mut st, &e, &[], &mut scratch, &mut out) {
                errors.push(err);
            }
            for o in out.drain(..) {
                if let Output::Match(p) = o {
                    found.push(p.iter().map(|(s, e)| (*s, e.time)).collect());
                }
            }
        }
        (found, errors)
    }

    #[test]
    fn a_match_too_long_for_the_search_is_found_by_the_matcher() {
        let src = r#"
stream s { key k time t time format epoch_ms }
rule abc { within 1h pattern { a: v == "A" then b: v == "B" repeat 1.. then c: v == "C" } }
"#;
        let mut values = vec!["A"];
        values.extend(std::iter::repeat_n("B", super::SEARCH_DEPTH + 10));
        values.push("C");
        let (lazy, errors) = run(src, &values, true, 10_000);
        assert!(errors.is_empty());
        assert_eq!(lazy.len(), super::SEARCH_DEPTH + 10);
        assert_eq!(
            lazy.iter().map(Vec::len).max(),
            Some(super::SEARCH_DEPTH + 12)
        );
        assert_eq!((lazy, errors), run(src, &values, false, 10_000));
    }

    #[test]
    fn too_many_matches_for_the_search_meet_the_matchers_limit() {
        // The first B is taken (relaxed contiguity into `b`), then any subset
        // of the other eleven: 2^11 matches.
        let src = r#"
stream s { key k time t time format epoch_ms }
rule abc { within 1h pattern { a: v == "A" then b: v == "B" repeat 1.. combinations then c: v == "C" } }
"#;
        let mut values = vec!["A"];
        values.extend(std::iter::repeat_n("B", 12));
        values.push("C");
        let (all, errors) = run(src, &values, true, 10_000);
        assert!(errors.is_empty());
        assert_eq!(all.len(), 1 << 11);
        assert_eq!((all, errors), run(src, &values, false, 10_000));
        // Under a limit of 100 the search gives up and the matcher reports
        // the limit and keeps the same matches as without the DFA (which
        // reports it at each event over the limit, not once per search).
        let (lazy, errors) = run(src, &values, true, 100);
        let (streaming, streaming_errors) = run(src, &values, false, 100);
        assert_eq!(lazy, streaming);
        assert!(lazy.len() < 1 << 11);
        assert_eq!(errors.last(), streaming_errors.last());
    }

    #[test]
    fn eligible_rules_get_a_dfa_and_others_do_not() {
        let src = r#"
stream s { key k time t }
rule abc { within 10m pattern { a: v == "A" then b: v == "B" repeat 1.. then c: v == "C" } }
rule skip { within 10m skip past last pattern { a: v == "A" then c: v == "C" } }
rule neg { within 10m pattern { a: v == "A" not then c: v == "C" then d: true } }
rule reads_match { within 10m pattern { a: v == "A" then c: x > sum(a.x) } }
rule no_window { pattern { a: v == "A" then c: v == "C" } }
"#;
        let rs = RuleSet::from_source("l.tl", src, None).unwrap();
        let lazy: Vec<bool> = rs.rules.iter().map(|r| r.matcher.lazy.is_some()).collect();
        assert_eq!(lazy, vec![true, false, false, false, false]);
    }
}
