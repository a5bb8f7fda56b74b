//! Rule changes while running: an engine migrated to another rule set at a
//! random point keeps the state of unchanged rules (their alerts equal a run
//! that never changed), keeps the window aggregates a changed rule still
//! uses, and its checkpoint restores under the new rules.

#[path = "support/feed.rs"]
mod feed_support;

use feed_support::feed;
use proptest::prelude::*;
use std::sync::Arc;
use tripline::engine::{Alert, Engine, Outputs, RuleChange, RuleSet};
use tripline::state::{MemoryStore, StateStore};

const STREAM: &str = "stream s { key k time t time format epoch_ms lateness 30ms }\n";

const SEQ: &str = "rule seq { within 40ms pattern { a: v == 0 then b: v == 1 repeat 1.. then c: v == 2 } payload { n = count(b) } }\n";
const ABSENT: &str = "rule absent { within 30ms pattern { a: v == 0 not then b: v == 1 } }\n";
const BURST: &str = "rule burst { within 25ms skip past last pattern { x: true repeat 3 } payload { n = count(over 30ms) } }\n";
const LABEL: &str = "rule late_label { key g pattern { x: count(over 50ms ending 20ms ago) >= 2 and avg(v over 50ms ending 20ms ago) > 0.5 } }\n";
const SPIKE: &str =
    "rule spike { pattern { x: count(over 40ms) >= 3 and v > 1.5 * avg(v over 40ms) } }\n";

fn compile(parts: &[&str]) -> Arc<RuleSet> {
    let mut text = STREAM.to_string();
    for p in parts {
        text.push_str(p);
    }
    RuleSet::from_source("m.tl", &text, None).expect("compiles")
}

fn lines(raw: &[(u8, u8, i64)]) -> Vec<String> {
    let mut t = 0;
    raw.iter()
        .map(|(k, v, dt)| {
            t += dt;
            // `w` is read only by rules added later, so adding them shifts
            // the field numbering the old rules were compiled with.
            format!(
                "{{\"w\":{v},\"k\":{k},\"g\":{},\"t\":{t},\"v\":{v}}}",
                (k + v) % 2
            )
        })
        .collect()
}

fn run(rs: &Arc<RuleSet>, input: &[String]) -> Vec<Alert> {
    let mut engine = Engine::new(rs.clone());
    let mut out = Outputs::default();
    feed(&mut engine, input, 0, &mut out);
    engine.finish(&mut out);
    out.alerts
}

/// Runs `old` over `input` and checkpoints: the engine, the store its
/// changes went to, and its outputs.
fn checkpointed(old: &Arc<RuleSet>, input: &[String]) -> (Engine, MemoryStore, Outputs) {
    let mut store = MemoryStore::default();
    let mut engine = Engine::new(old.clone()).track_changes();
    let mut out = Outputs::default();
    feed(&mut engine, input, 0, &mut out);
    store.write(engine.take_changes()).unwrap();
    (engine, store, out)
}

/// Runs `old` to `cut`, migrates to `new`, checkpoints, restores under
/// `new` from the checkpoint and runs to the end: the alerts of both halves.
fn run_changed(
    old: &Arc<RuleSet>,
    new: &Arc<RuleSet>,
    input: &[String],
    cut: usize,
) -> (Vec<Alert>, tripline::engine::Migration) {
    let (engine, mut store, mut out) = checkpointed(old, &input[..cut]);
    let (mut engine, migration) = engine.migrate(new.clone());
    store.write(engine.take_changes()).unwrap();
    let mut restored = Engine::restore(new.clone(), &store).expect("restores under the new rules");
    assert_eq!(restored.key_count(), engine.key_count());
    feed(&mut restored, &input[cut..], cut, &mut out);
    restored.finish(&mut out);
    (out.alerts, migration)
}

/// Runs `old` to `cut` and checkpoints; a new engine under `new` restores
/// that checkpoint (a restart after the rule files changed) and runs to the
/// end.
fn run_restarted(
    old: &Arc<RuleSet>,
    new: &Arc<RuleSet>,
    input: &[String],
    cut: usize,
) -> (Vec<Alert>, tripline::engine::Migration) {
    let (_, mut store, mut out) = checkpointed(old, &input[..cut]);
    let mut restored = Engine::new(new.clone())
        .track_changes()
        .restored(&store)
        .expect("state of other rules restores");
    let migration = restored.take_migration().expect("state was migrated");
    assert!(restored.needs_checkpoint());
    store.write(restored.take_changes()).unwrap();
    // Written back under the new rules: it restores without migrating.
    let mut again = Engine::new(new.clone()).restored(&store).unwrap();
    assert!(again.take_migration().is_none());
    feed(&mut restored, &input[cut..], cut, &mut out);
    restored.finish(&mut out);
    (out.alerts, migration)
}

fn view(alerts: &[Alert], rule: &str) -> Vec<String> {
    alerts
        .iter()
        .filter(|a| &*a.rule == rule)
        .map(|a| format!("{} {} {:?} {:?}", a.key, a.event_time, a.kind, a.values))
        .collect()
}

fn change_of(m: &tripline::engine::Migration, rule: &str) -> RuleChange {
    m.rules
        .iter()
        .find(|(r, _)| &**r == rule)
        .map(|(_, c)| c.clone())
        .expect("rule in plan")
}

fn input_strategy() -> impl Strategy<Value = (Vec<String>, usize)> {
    prop::collection::vec((0u8..3, 0u8..3, 0i64..12), 1..160).prop_flat_map(|raw| {
        let n = raw.len();
        (Just(lines(&raw)), 0..=n)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Rules added (reading a new field, listed first so field numbers
    /// shift) and one removed: the rules left unchanged alert exactly as if
    /// nothing had changed.
    #[test]
    fn unchanged_rules_alert_as_if_nothing_changed((input, cut) in input_strategy()) {
        let added = "rule wide { pattern { x: w == 2 then y: w == 2 } }\n";
        let old = compile(&[SEQ, ABSENT, BURST, LABEL, SPIKE]);
        let new = compile(&[added, SPIKE, LABEL, BURST, ABSENT]);
        let straight = run(&old, &input);
        let (changed, m) = run_changed(&old, &new, &input, cut);
        for rule in ["absent", "burst", "late_label", "spike"] {
            prop_assert_eq!(change_of(&m, rule), RuleChange::Kept);
            prop_assert_eq!(view(&changed, rule), view(&straight, rule), "rule {}", rule);
        }
        prop_assert_eq!(change_of(&m, "seq"), RuleChange::Removed);
        prop_assert_eq!(change_of(&m, "wide"), RuleChange::Added);
        prop_assert!(m.rejected.is_empty());
        let (restarted, m) = run_restarted(&old, &new, &input, cut);
        for rule in ["absent", "burst", "late_label", "spike"] {
            prop_assert_eq!(change_of(&m, rule), RuleChange::Kept);
            prop_assert_eq!(view(&restarted, rule), view(&straight, rule), "rule {}", rule);
        }
    }

    /// A changed condition over the same window aggregates: the windows
    /// carry over, so from the change on the rule alerts as the new rule
    /// would have had it always been running (it has one stage, so no
    /// partial match is lost).
    #[test]
    fn a_changed_rule_keeps_its_window_aggregates((input, cut) in input_strategy()) {
        let changed_spike = "rule spike { pattern { x: count(over 40ms) >= 3 and v > 1.2 * avg(v over 40ms) } }\n";
        let old = compile(&[SPIKE, SEQ]);
        let new = compile(&[changed_spike, SEQ]);
        let (changed, m) = run_changed(&old, &new, &input, cut);
        prop_assert_eq!(
            change_of(&m, "spike"),
            RuleChange::Migrated { windows_kept: 2, windows: 2 }
        );
        let cut_time = input[..cut].last().map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["t"].as_i64().unwrap()
        });
        let after = |alerts: &[Alert]| -> Vec<String> {
            let rest: Vec<Alert> = alerts
                .iter()
                .filter(|a| cut_time.is_none_or(|t| a.event_time > t))
                .cloned()
                .collect();
            view(&rest, "spike")
        };
        prop_assert_eq!(after(&changed), after(&run(&new, &input)));
        prop_assert_eq!(view(&changed, "seq"), view(&run(&old, &input), "seq"));
    }
}

#[test]
fn an_alert_only_change_keeps_state_and_alerts_with_the_new_severity() {
    let old = compile(&[SEQ]);
    let new = compile(&[&SEQ.replace("within 40ms", "severity critical score 90 within 40ms")]);
    let input = lines(&[
        (1, 0, 1),
        (1, 1, 1),
        (1, 1, 1),
        (1, 2, 1),
        (2, 0, 1),
        (2, 1, 1),
        (2, 2, 1),
    ]);
    // Cut inside the first match: its partial match must survive.
    let (alerts, m) = run_changed(&old, &new, &input, 3);
    assert_eq!(change_of(&m, "seq"), RuleChange::Kept);
    assert!(m.is_identity());
    assert_eq!(view(&alerts, "seq"), view(&run(&old, &input), "seq"));
    assert!(!alerts.is_empty());
    assert!(alerts.iter().all(|a| a.score == 90.0));
}

#[test]
fn a_changed_pattern_without_windows_resets() {
    let old = compile(&[SEQ]);
    let new = compile(&[&SEQ.replace("c: v == 2", "c: v == 0")]);
    let input = lines(&[(1, 0, 1), (1, 1, 1), (1, 2, 1)]);
    let (alerts, m) = run_changed(&old, &new, &input, 2);
    assert_eq!(change_of(&m, "seq"), RuleChange::Reset);
    assert!(alerts.is_empty(), "the partial match was reset");
}

#[test]
fn identical_rule_sets_migrate_as_identity_and_fingerprints_are_stable() {
    let a = compile(&[
        SEQ,
        ABSENT,
        BURST,
        LABEL,
        SPIKE,
        "rule re { pattern { x: k matches \"^1\" } }\n",
    ]);
    let b = compile(&[
        SEQ,
        ABSENT,
        BURST,
        LABEL,
        SPIKE,
        "rule re { pattern { x: k matches \"^1\" } }\n",
    ]);
    for (ra, rb) in a.rules().iter().zip(b.rules()) {
        assert_eq!(
            ra.def().state_fingerprint(a.def()),
            rb.def().state_fingerprint(b.def())
        );
    }
    let engine = Engine::new(a);
    let (_, m) = engine.migrate(b);
    assert!(m.is_identity(), "{:?}", m.rules);
}
