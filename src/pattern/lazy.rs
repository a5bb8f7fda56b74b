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
//! `within`. The explicit matcher is kept behind, as a shadow: when the DFA
//! reports a match end it catches up on the events since it last ran (or
//! starts over from the window if it is further behind) and reports the
//! matches that end at the current event. Each event is matched at most once,
//! and only for keys that produce matches; keys whose partial matches never
//! complete cost a DFA step per event.
//!
//! Eligible rules: no skip strategy, a `within`, no negation, group, `until`,
//! greedy or timeout reporting, at most 8 stage conditions, none of which
//! reads the match, and a DFA within the size limit (counted repeats of
//! overlapping conditions can blow up determinization). Others use the
//! explicit matcher alone. The DFA's
//! language equals the matcher's (tested in `tests/matcher_props.rs`), so
//! the output does not depend on the mode.

use super::nfa::Nfa;
use crate::event::Event;
use crate::rules::ast::Contiguity;
use crate::rules::{QuantKind, RuleDef, SkipDef, StageBodyDef};
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
    /// Symbol bits of the stages a match can start with: a replay starts at
    /// the first recent event that has one.
    pub start_mask: u8,
    /// No stage is strictly contiguous (within or between stages): an
    /// event that meets no condition then changes no match, and is neither
    /// stepped nor kept.
    pub skips_empty: bool,
}

/// Per-key state in lazy mode.
#[derive(Clone, Debug)]
pub struct LazyState {
    /// The DFA state after the key's last event.
    pub dfa_state: StateID,
    /// The key's events of the last window, with their symbols.
    pub recent: VecDeque<(Arc<Event>, u8)>,
    /// Position (a per-key event counter) of the first event in `recent`.
    pub front_pos: u64,
    /// When the first event in `recent` leaves the window (`i64::MAX`:
    /// none): checking it costs no read of the event, which is cold in
    /// memory by then.
    pub expires_at: i64,
    /// The explicit matcher, kept behind the DFA: its state and the position
    /// of the last event it processed. It catches up only when the DFA reports
    /// a match end, so each event is matched at most once, and only for keys
    /// that produce matches. Not snapshotted: after a restore it is rebuilt
    /// from the window.
    pub shadow: Option<(Box<super::MatcherState>, u64)>,
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
        let mut start_mask = 0u8;
        for (i, s) in stages.iter().enumerate() {
            start_mask |= 1 << bit_of_stage[i];
            if !s.quant.optional {
                break;
            }
        }
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
        })
    }

    /// A fresh per-key state.
    pub fn new_state(&self) -> LazyState {
        LazyState {
            dfa_state: self.start,
            recent: VecDeque::new(),
            front_pos: 0,
            expires_at: i64::MAX,
            shadow: None,
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
            st.expires_at = event.time.saturating_add(self.window);
        }
        st.recent.push_back((event.clone(), symbol));
        st.dfa_state = self.dfa.next_state(st.dfa_state, symbol);
        self.dfa
            .is_match_state(self.dfa.next_eoi_state(st.dfa_state))
    }

    /// Drops the window's events that no match ending at `now` or later can
    /// use, and the shadow matcher once the window is empty.
    pub fn expire(&self, st: &mut LazyState, now: i64) {
        if now < st.expires_at {
            return;
        }
        while st
            .recent
            .front()
            .is_some_and(|(e, _)| now.saturating_sub(e.time) >= self.window)
        {
            st.recent.pop_front();
            st.front_pos += 1;
        }
        self.set_expiry(st);
        if st.recent.is_empty() {
            st.shadow = None;
        }
    }

    fn set_expiry(&self, st: &mut LazyState) {
        st.expires_at = st
            .recent
            .front()
            .map_or(i64::MAX, |(e, _)| e.time.saturating_add(self.window));
    }

    /// Rebuilds the DFA state from the recent symbols (after a restore): only
    /// matches that start within the window matter, and they start in `recent`.
    pub fn resync(&self, st: &mut LazyState) {
        let mut s = self.start;
        for (_, sym) in &st.recent {
            s = self.dfa.next_state(s, *sym);
        }
        st.dfa_state = s;
        self.set_expiry(st);
    }

    /// The DFA's size in bytes.
    pub fn memory_usage(&self) -> usize {
        self.dfa.memory_usage()
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::RuleSet;

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
