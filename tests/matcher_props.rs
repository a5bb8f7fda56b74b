//! Model-based property tests.
//!
//! 1. The NFA matcher, and the lazy symbol-DFA mode for patterns with a
//!    window, against a brute-force reference: for random patterns
//!    (stages with strict / relaxed / any contiguity, optional stages, bounded
//!    and open repeats with every inner contiguity, a window) and random
//!    streams, the set of matches equals the set of assignments of events to
//!    stages that satisfy the semantics written out in `reference_matches`.
//! 2. The engine is deterministic, and events shuffled within the allowed
//!    lateness give the same alerts as the ordered stream.
//! 3. `suppress D` keeps exactly the alerts that a per-key filter of the
//!    same rule's alerts without it keeps: an alert is raised when no alert
//!    of its key was raised in the `D` before its time.

use proptest::prelude::*;
use std::collections::BTreeSet;
use std::sync::Arc;
use tripline::engine::{Engine, EngineOptions, Outputs, RuleSet};
use tripline::pattern::{Output, Scratch};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Contig {
    Strict,
    Relaxed,
    Any,
}

#[derive(Clone, Debug)]
struct Stage {
    /// Condition: v == c (Some) or true (None), optionally negated.
    value: Option<u8>,
    negate: bool,
    contiguity: Contig,
    min: u32,
    /// None: open-ended.
    max: Option<u32>,
    optional: bool,
    inner: Contig,
}

impl Stage {
    fn holds(&self, v: u8) -> bool {
        match self.value {
            None => true,
            Some(c) => (v == c) != self.negate,
        }
    }
    fn is_loop(&self) -> bool {
        self.max != Some(1)
    }
}

fn stage() -> impl Strategy<Value = Stage> {
    (
        prop::option::weighted(0.85, 0u8..3),
        any::<bool>(),
        prop_oneof![
            Just(Contig::Strict),
            Just(Contig::Relaxed),
            Just(Contig::Any)
        ],
        prop_oneof![
            3 => Just((1u32, Some(1u32))),
            1 => (1u32..3).prop_flat_map(|lo| (Just(lo), (lo..4).prop_map(Some))),
            1 => (1u32..3).prop_map(|lo| (lo, None)),
        ],
        prop::bool::weighted(0.25),
        prop_oneof![
            Just(Contig::Strict),
            Just(Contig::Relaxed),
            Just(Contig::Any)
        ],
    )
        .prop_map(
            |(value, negate, contiguity, (min, max), optional, inner)| Stage {
                value,
                negate,
                contiguity,
                min,
                max,
                optional,
                inner,
            },
        )
}

fn render(stages: &[Stage], within: Option<i64>) -> String {
    let mut s = String::from("stream s { key k time t time format epoch_ms }\nrule r {\n");
    if let Some(w) = within {
        s.push_str(&format!("  within {w}ms\n"));
    }
    s.push_str("  pattern {\n");
    for (i, st) in stages.iter().enumerate() {
        let conn = if i == 0 {
            ""
        } else {
            match st.contiguity {
                Contig::Strict => "next ",
                Contig::Relaxed => "then ",
                Contig::Any => "then any ",
            }
        };
        let cond = match st.value {
            None => "true".to_string(),
            Some(c) => format!("v {} {c}", if st.negate { "!=" } else { "==" }),
        };
        s.push_str(&format!("    {conn}s{i}: {cond}"));
        match st.max {
            Some(1) => {}
            Some(m) => s.push_str(&format!(" repeat {}..{m}", st.min)),
            None => s.push_str(&format!(" repeat {}..", st.min)),
        }
        if st.optional {
            s.push_str(" optional");
        }
        if st.is_loop() {
            match st.inner {
                Contig::Strict => s.push_str(" consecutive"),
                Contig::Any => s.push_str(" combinations"),
                Contig::Relaxed => {}
            }
        }
        s.push('\n');
    }
    s.push_str("  }\n}\n");
    s
}

type Match = Vec<(u16, usize)>;

/// Every assignment of events to stages that is a match:
/// - stage i takes between min and max events (or none if optional), each
///   meeting its condition, in stream order, stages in pattern order;
/// - between two consecutive taken events x < y, with y taken by stage j:
///   if x was taken by j too, j's inner contiguity holds, otherwise j's
///   contiguity: strict = adjacent, relaxed = no event in between meets j's
///   condition, any = no constraint;
/// - with a window W, last.t - first.t < W; at least one event is taken.
fn reference_matches(
    stages: &[Stage],
    events: &[(u8, i64)],
    within: Option<i64>,
) -> BTreeSet<Match> {
    let mut out = BTreeSet::new();
    let mut cur: Match = Vec::new();
    fn ok_between(
        stages: &[Stage],
        events: &[(u8, i64)],
        x: usize,
        y: usize,
        same: bool,
        j: usize,
    ) -> bool {
        let c = if same {
            stages[j].inner
        } else {
            stages[j].contiguity
        };
        match c {
            Contig::Strict => y == x + 1,
            Contig::Relaxed => !(x + 1..y).any(|z| stages[j].holds(events[z].0)),
            Contig::Any => true,
        }
    }
    #[allow(clippy::too_many_arguments)]
    fn go(
        stages: &[Stage],
        events: &[(u8, i64)],
        within: Option<i64>,
        stage: usize,
        count: u32,
        cur: &mut Match,
        out: &mut BTreeSet<Match>,
    ) {
        let st = &stages[stage];
        let satisfied = count >= st.min || (count == 0 && st.optional);
        // Completed: every later stage can be skipped.
        if satisfied && !cur.is_empty() && stages[stage + 1..].iter().all(|s| s.optional) {
            out.insert(cur.clone());
        }
        // Take another event for this stage.
        if st.max.is_none_or(|m| count < m) {
            try_take(stages, events, within, stage, count, cur, out);
        }
        // Move on to the next stage (skipping optional ones in between).
        if satisfied && stage + 1 < stages.len() {
            go(stages, events, within, stage + 1, 0, cur, out);
        }
    }
    fn try_take(
        stages: &[Stage],
        events: &[(u8, i64)],
        within: Option<i64>,
        stage: usize,
        count: u32,
        cur: &mut Match,
        out: &mut BTreeSet<Match>,
    ) {
        let from = cur.last().map_or(0, |l| l.1 + 1);
        for y in from..events.len() {
            if !stages[stage].holds(events[y].0) {
                continue;
            }
            if let Some(&(ls, x)) = cur.last()
                && !ok_between(
                    stages,
                    events,
                    x,
                    y,
                    ls as usize == stage && count > 0,
                    stage,
                )
            {
                continue;
            }
            if let (Some(w), Some(first)) = (within, cur.first())
                && events[y].1 - events[first.1].1 >= w
            {
                continue;
            }
            cur.push((stage as u16, y));
            go(stages, events, within, stage, count + 1, cur, out);
            cur.pop();
        }
    }
    go(stages, events, within, 0, 0, &mut cur, &mut out);
    out
}

fn nfa_matches(
    stages: &[Stage],
    events: &[(u8, i64)],
    within: Option<i64>,
    lazy: bool,
) -> Vec<Match> {
    let src = render(stages, within);
    let options = EngineOptions {
        lazy_regular_rules: lazy,
        ..EngineOptions::default()
    };
    let rs = RuleSet::from_source_with("p.tl", &src, None, options)
        .unwrap_or_else(|e| panic!("{e}\n{src}"));
    // Only windowed patterns can run lazily (and only if their DFA fits the size limit).
    if !lazy || within.is_none() {
        assert!(rs.rules()[0].matcher().lazy.is_none(), "{src}");
    }
    let m = &rs.rules()[0].matcher();
    let mut st = m.new_state();
    let mut scratch = Scratch::default();
    let mut out = Vec::new();
    let mut found = Vec::new();
    for (i, (v, t)) in events.iter().enumerate() {
        let line = format!("{{\"k\":1,\"t\":{t},\"v\":{v}}}");
        let e = Arc::new(
            rs.decoder()
                .decode(line.as_bytes(), i as u64)
                .expect("decodes"),
        );
        m.advance_time(&mut st, *t, &mut out);
        m.process(&mut st, &e, &[], &mut scratch, &mut out)
            .expect("within limits");
        for o in out.drain(..) {
            if let Output::Match(path) = o {
                found.push(path.iter().map(|(s, e)| (*s, e.seq as usize)).collect());
            }
        }
    }
    found
}

fn events() -> impl Strategy<Value = Vec<(u8, i64)>> {
    prop::collection::vec((0u8..3, 1i64..3), 0..9).prop_map(|v| {
        let mut t = 0;
        v.into_iter()
            .map(|(x, dt)| {
                t += dt;
                (x, t)
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn nfa_equals_reference(
        stages in prop::collection::vec(stage(), 1..4),
        evs in events(),
        within in prop::option::of(2i64..8),
    ) {
        let want = reference_matches(&stages, &evs, within);
        let streaming = nfa_matches(&stages, &evs, within, false);
        let found: BTreeSet<Match> = streaming.iter().cloned().collect();
        prop_assert_eq!(found.len(), streaming.len(), "a match reported twice");
        prop_assert_eq!(&found, &want, "explicit matcher\npattern:\n{}events: {:?}", render(&stages, within), evs);
        // The lazy mode reports the same matches in the same order.
        let lazy = nfa_matches(&stages, &evs, within, true);
        prop_assert_eq!(&lazy, &streaming, "symbol DFA + lazy search\npattern:\n{}events: {:?}", render(&stages, within), evs);
    }
}

const ENGINE_RULES: &str = r#"
stream s { key k time t time format epoch_ms lateness 50ms }
rule seq { within 40ms pattern { a: v == 0 then b: v == 1 repeat 1.. then c: v == 2 } }
rule absent { within 30ms pattern { a: v == 0 not then b: v == 1 } }
rule burst { within 20ms skip past last pattern { x: true repeat 3 } payload { n = count(over 30ms) } }
rule quiet { within 30ms suppress 25ms pattern { a: v == 0 then b: v == 2 } }
"#;

fn run_engine(lines: &[String]) -> Vec<String> {
    run_rules(ENGINE_RULES, lines)
}

fn run_rules(source: &str, lines: &[String]) -> Vec<String> {
    let rs = RuleSet::from_source("e.tl", source, None).expect("compiles");
    let mut engine = Engine::new(rs.clone());
    let mut out = Outputs::default();
    for (i, l) in lines.iter().enumerate() {
        let ev = rs
            .decoder()
            .decode(l.as_bytes(), i as u64)
            .expect("decodes");
        engine.on_event(ev, &mut out);
    }
    engine.finish(&mut out);
    assert!(
        out.late.is_empty(),
        "no event is late within the allowed lateness"
    );
    out.alerts.iter().map(|a| a.to_json_line()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn engine_is_deterministic_and_order_insensitive_within_lateness(
        raw in prop::collection::vec((0u8..3, 0u8..3, 0i64..6), 1..60),
        shuffle_seed in any::<u64>(),
    ) {
        // Distinct times per key keep the expected order independent of arrival order.
        let mut t = 0;
        let events: Vec<(u8, u8, i64)> = raw.iter().map(|(k, v, dt)| { t += dt + 1; (*k, *v, t) }).collect();
        let lines: Vec<String> = events
            .iter()
            .map(|(k, v, t)| format!("{{\"k\":{k},\"t\":{t},\"v\":{v}}}"))
            .collect();
        let first = run_engine(&lines);
        prop_assert_eq!(&first, &run_engine(&lines), "same input, same output");

        // Swap neighbours whose times differ by less than the lateness.
        let mut shuffled = events.clone();
        let mut s = shuffle_seed | 1;
        for i in 1..shuffled.len() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            if s % 2 == 0 && shuffled[i].2 - shuffled[i - 1].2 < 40 {
                shuffled.swap(i, i - 1);
            }
        }
        let shuffled_lines: Vec<String> = shuffled
            .iter()
            .map(|(k, v, t)| format!("{{\"k\":{k},\"t\":{t},\"v\":{v}}}"))
            .collect();
        let mut a = first.clone();
        let mut b = run_engine(&shuffled_lines);
        a.sort();
        b.sort();
        prop_assert_eq!(a, b);
    }
}

/// A rule with every kind of output (matches, timeouts, several matches at
/// one event), with and without `suppress`.
fn suppress_rules(suppress: Option<i64>) -> String {
    let clause = suppress.map_or(String::new(), |d| format!("suppress {d}ms"));
    format!(
        r#"
stream s {{ key k time t time format epoch_ms lateness 50ms }}
rule r {{ within 30ms report timeouts {clause} pattern {{ a: v == 0 then b: v == 1 repeat 1.. then c: v == 2 }} }}
"#
    )
}

/// The reference: `alerts` (JSON lines, in the order raised) filtered per
/// key, keeping an alert when its key's last kept alert is `period` or more
/// before it.
fn suppressed_reference(alerts: &[String], period: i64) -> Vec<String> {
    let mut last: std::collections::BTreeMap<String, i64> = Default::default();
    let mut kept = Vec::new();
    for line in alerts {
        let a: serde_json::Value = serde_json::from_str(line).expect("alert JSON");
        let key = a["key"].to_string();
        let at = a["event_time"]
            .as_str()
            .expect("time")
            .parse::<jiff::Timestamp>()
            .expect("an RFC 3339 time")
            .as_millisecond();
        if last.get(&key).is_none_or(|&l| at >= l + period) {
            last.insert(key, at);
            kept.push(line.clone());
        }
    }
    kept
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn suppress_keeps_what_a_per_key_cooldown_keeps(
        raw in prop::collection::vec((0u8..3, 0u8..3, 0i64..6), 1..80),
        period in 1i64..40,
    ) {
        let mut t = 0;
        let lines: Vec<String> = raw
            .iter()
            .map(|(k, v, dt)| { t += dt; format!("{{\"k\":{k},\"t\":{t},\"v\":{v}}}") })
            .collect();
        let all = run_rules(&suppress_rules(None), &lines);
        let got = run_rules(&suppress_rules(Some(period)), &lines);
        prop_assert_eq!(got, suppressed_reference(&all, period));
    }
}
