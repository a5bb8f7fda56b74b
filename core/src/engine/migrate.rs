//! Moving an engine's state to another rule set (a rule change while
//! running, or state written under older rules).
//!
//! Rules are matched by name. A rule whose state means the same under both
//! sets ([`RuleDef::state_fingerprint`](crate::rules::RuleDef::state_fingerprint):
//! same key, pattern, skip, window and window aggregates) keeps its partial
//! matches and windows as they are, even if its alert (severity, score,
//! payload) changed. A rule whose pattern changed loses its partial matches —
//! they were runs of another automaton — but keeps each window aggregate that
//! the new rule still uses, so a 30-day average does not start from nothing.
//! New rules start empty; removed rules' state is dropped. Every decision is
//! returned for the caller to log.
//!
//! Events held in state are decoded again from their raw text, because the
//! new rule set may read other fields (and number them differently); their
//! time and arrival position are kept. Buffered events that no longer decode
//! are returned, never silently dropped.

use super::{Engine, KeyCell, KeyState, Keying, RuleSet, earliest_deadline, is_idle};
use crate::event::Event;
use crate::pattern::MatcherState;
use crate::pattern::matcher::EventTable;
use hashbrown::HashMap;
use std::sync::Arc;

/// What happens to one rule's state in a migration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleChange {
    /// Same state meaning (the alert may differ): state kept whole.
    Kept,
    /// The pattern changed: partial matches reset; `windows_kept` of the new
    /// rule's `windows` window aggregates carried over.
    Migrated {
        /// Window aggregates carried over.
        windows_kept: usize,
        /// Window aggregates of the new rule.
        windows: usize,
    },
    /// The pattern changed and no window aggregate survives: state reset.
    Reset,
    /// A new rule: starts empty.
    Added,
    /// A removed rule: its state is dropped.
    Removed,
}

impl std::fmt::Display for RuleChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuleChange::Kept => f.write_str("state kept"),
            RuleChange::Migrated {
                windows_kept,
                windows,
            } => write!(
                f,
                "pattern changed: partial matches reset, {windows_kept} of {windows} window aggregates kept"
            ),
            RuleChange::Reset => f.write_str("pattern changed: state reset"),
            RuleChange::Added => f.write_str("new rule: starts empty"),
            RuleChange::Removed => f.write_str("removed: state dropped"),
        }
    }
}

/// What a migration did.
#[derive(Debug, Default)]
pub struct Migration {
    /// Each rule of either set, by name, with what happened to its state.
    pub rules: Vec<(Arc<str>, RuleChange)>,
    /// Keys whose state moved to the new rule set.
    pub keys: usize,
    /// Per-key rule states reset because an event they held no longer
    /// decodes under the new rules, and groups of window aggregates reset
    /// because the kept aggregates had seen different events (a rule that
    /// changed its streams, now grouped with others).
    pub reset_states: usize,
    /// Buffered events that no longer decode (arrival position — the
    /// record's offset in a service —, raw text, reason): for the
    /// dead-letter topic.
    pub rejected: Vec<(u64, Arc<str>, String)>,
}

impl Migration {
    /// Whether nothing changes for any rule.
    pub fn is_identity(&self) -> bool {
        self.rules.iter().all(|(_, c)| *c == RuleChange::Kept)
    }
}

/// How one new rule takes its state from an old one.
enum Source {
    /// Fresh state.
    None,
    /// The old rule's state, whole (old keying-local index).
    Whole(usize),
    /// Of the old rule (old keying-local index): window `i` of the new rule
    /// continues old window `Some(j)`.
    Windows(usize, Vec<Option<usize>>),
}

/// What the rules of `old` become under `new`, rule by rule.
pub fn plan(old: &RuleSet, new: &RuleSet) -> Vec<(Arc<str>, RuleChange)> {
    let mut out = Vec::new();
    for (ki, keying) in new.keyings.iter().enumerate() {
        for (local, source) in sources(old, new, ki).into_iter().enumerate() {
            let rule = &new.rules[keying.rules[local]];
            let change = match source {
                Source::None => {
                    if old.rules.iter().any(|r| r.name == rule.name) {
                        RuleChange::Reset
                    } else {
                        RuleChange::Added
                    }
                }
                Source::Whole(_) => RuleChange::Kept,
                Source::Windows(_, w) => RuleChange::Migrated {
                    windows_kept: w.iter().flatten().count(),
                    windows: w.len(),
                },
            };
            out.push((rule.name.clone(), change));
        }
    }
    for r in &old.rules {
        if !new.rules.iter().any(|n| n.name == r.name) {
            out.push((r.name.clone(), RuleChange::Removed));
        }
    }
    out
}

/// The old keying whose key is the same field as new keying `ki`.
fn old_keying(old: &RuleSet, new: &RuleSet, ki: usize) -> Option<usize> {
    let path = new.def.schema.path(new.keyings[ki].slot);
    old.keyings
        .iter()
        .position(|k| old.def.schema.path(k.slot) == path)
}

/// Where each rule of new keying `ki` takes its state from.
fn sources(old: &RuleSet, new: &RuleSet, ki: usize) -> Vec<Source> {
    let keying = &new.keyings[ki];
    let from = old_keying(old, new, ki).map(|ok| &old.keyings[ok]);
    keying
        .rules
        .iter()
        .map(|&ri| {
            let rule = &new.rules[ri];
            let Some((ol, orule)) = from.and_then(|k: &Keying| {
                k.rules
                    .iter()
                    .enumerate()
                    .find(|(_, r)| old.rules[**r].name == rule.name)
                    .map(|(l, &r)| (l, &old.rules[r]))
            }) else {
                return Source::None;
            };
            if orule.def.state_fingerprint(&old.def) == rule.def.state_fingerprint(&new.def) {
                return Source::Whole(ol);
            }
            let old_windows: Vec<u64> = orule
                .def
                .windows
                .iter()
                .map(|w| w.fingerprint(&old.def.schema))
                .collect();
            let windows: Vec<Option<usize>> = rule
                .def
                .windows
                .iter()
                .map(|w| {
                    let f = w.fingerprint(&new.def.schema);
                    old_windows.iter().position(|o| *o == f)
                })
                .collect();
            if windows.iter().all(Option::is_none) {
                Source::None
            } else {
                Source::Windows(ol, windows)
            }
        })
        .collect()
}

impl Engine {
    /// This engine's state under `rules` (see the module docs for what is
    /// kept), with what happened to each rule. Watermark and counters carry
    /// over; with change tracking on, the next [`Engine::take_changes`]
    /// rewrites every key and buffered event under the new rules (and
    /// deletes those of keyings that are gone).
    pub fn migrate(mut self, rules: Arc<RuleSet>) -> (Engine, Migration) {
        self.revive_all();
        let old = self.rules.clone();
        let mut migration = Migration {
            rules: plan(&old, &rules),
            ..Migration::default()
        };
        let mut engine = Engine {
            external_watermark: self.external_watermark,
            waiting_in_input: self.waiting_in_input,
            dirty: self.dirty.as_ref().map(|_| hashbrown::HashSet::new()),
            lists: self.lists.clone(),
            tables: self.tables.clone(),
            collect_features: self.collect_features,
            ..Engine::new(rules.clone())
        };
        self.hand_over_passivation(&mut engine);
        engine.watermark = self.watermark;
        engine.stats = self.stats;
        engine.processed_to = self.processed_to;
        engine.stored_buffer = self.stored_buffer;
        engine.rewrite_buffer = true;
        let old_streams = &old.def;
        let redecode = |e: &Event| -> Result<Event, String> {
            // By the stream it came from, which the new rules may number
            // differently or no longer define.
            let name = &old_streams.streams[old_streams.stream_of(e) as usize].name;
            let decoder = match rules.def.stream_index(name) {
                Some(i) => rules.decoder_for(i),
                None if rules.def.streams.len() == 1 && old_streams.streams.len() == 1 => {
                    rules.decoder_for(0)
                }
                None => None,
            }
            .ok_or_else(|| format!("its stream `{name}` is no longer defined"))?;
            let fresh = decoder
                .decode(e.raw.as_bytes(), e.seq)
                .map_err(|err| err.to_string())?;
            Ok(Event {
                time: e.time,
                seq: e.seq,
                fields: fresh.fields,
                raw: e.raw.clone(),
            })
        };
        for e in self.buffer.iter() {
            match redecode(e) {
                Ok(e) => engine.buffer_insert(Arc::new(e)),
                Err(why) => migration.rejected.push((e.seq, e.raw.clone(), why)),
            }
        }
        let mut old_keys = self.keys;
        if let Some(d) = &mut engine.dirty {
            // Every stored key is rewritten (new encoding) or deleted, and
            // so are its logged events: the new rules number their logs
            // afresh.
            for (ki, keys) in old_keys.iter().enumerate() {
                d.extend(keys.keys().map(|k| (ki as u32, k.clone())));
                for (key, cell) in keys {
                    if let KeyCell::Live(ks) = cell {
                        super::snapshot::forget_rows(&mut engine.log_deletes, ki, key, ks);
                    }
                }
            }
        }
        for ki in 0..rules.keyings.len() {
            let Some(ok) = old_keying(&old, &rules, ki) else {
                continue;
            };
            let sources = sources(&old, &rules, ki);
            let keying = &rules.keyings[ki];
            for (key, cell) in std::mem::take(&mut old_keys[ok]) {
                // `revive_all` decoded every frozen key (one that failed to
                // decode was dropped and reported).
                let KeyCell::Live(ks) = cell else { continue };
                let mut fresh = KeyState::fresh(&rules, keying, &ks.key);
                // Window aggregates go over in their stored form, each with
                // its own events, and are laid out again by the new rules'
                // groups.
                let (old_states, old_values) = ks.rule_windows(&old, &old.keyings[ok], true);
                let (fresh_states, fresh_values) = fresh.rule_windows(&rules, keying, true);
                let (mut states, mut values) = (fresh_states.clone(), fresh_values.clone());
                // Redecoded events, shared by the matchers that keep them.
                let mut decoded: HashMap<*const Event, Option<Arc<Event>>> = HashMap::new();
                for (local, source) in sources.iter().enumerate() {
                    let ri = keying.rules[local];
                    match source {
                        Source::None => {}
                        Source::Whole(ol) => {
                            match carry_matcher(&ks.matchers[*ol], &rules, ri, &mut |e| {
                                decoded
                                    .entry(Arc::as_ptr(e))
                                    .or_insert_with(|| redecode(e).ok().map(Arc::new))
                                    .clone()
                            }) {
                                Some(m) => fresh.matchers[local] = m,
                                None => migration.reset_states += 1,
                            }
                            carry_quiet(&ks, *ol, &mut fresh, local, &rules.rules[ri]);
                            states[local] = old_states[*ol].clone();
                            values[local] = old_values[*ol].clone();
                        }
                        Source::Windows(ol, map) => {
                            // The rule is the same one, changed: its
                            // suppression goes on too.
                            carry_quiet(&ks, *ol, &mut fresh, local, &rules.rules[ri]);
                            for (wi, from) in map.iter().enumerate() {
                                if let Some(j) = from {
                                    states[local][wi] = old_states[*ol][*j].clone();
                                    values[local][wi] = old_values[*ol][*j].clone();
                                }
                            }
                        }
                    }
                }
                // A group whose kept aggregates do not line up (they saw
                // other events) starts empty.
                while let Err((g, _)) =
                    fresh.set_rule_windows(&rules, keying, states.clone(), values.clone(), None)
                {
                    migration.reset_states += 1;
                    for &l in &keying.groups[g].members {
                        states[l] = fresh_states[l].clone();
                        values[l] = fresh_values[l].clone();
                    }
                }
                if let Some(d) = &mut engine.dirty {
                    d.insert((ki as u32, key.clone()));
                }
                fresh.written = engine.batches + 1;
                if is_idle(&fresh, engine.processed_to) {
                    continue;
                }
                let next = earliest_deadline(&fresh);
                Engine::schedule(ki, &key, &mut fresh, next, &mut engine.timers);
                migration.keys += 1;
                engine.keys[ki].insert(key, KeyCell::live(fresh));
            }
        }
        (engine, migration)
    }
}

/// Carries rule `old_local`'s running `suppress` period of old key state
/// `ks` to rule `local` of `fresh` (one key's alert stays the one alert of
/// its period when the rule is edited), if the rule still suppresses.
fn carry_quiet(
    ks: &KeyState,
    old_local: usize,
    fresh: &mut KeyState,
    local: usize,
    rule: &super::CompiledRule,
) {
    if rule.def.suppress_ms.is_some()
        && let Some(&q) = ks.quiet.get(old_local)
        && q != crate::event::EventTime::MIN
    {
        if fresh.quiet.len() <= local {
            fresh
                .quiet
                .resize(fresh.matchers.len().max(local + 1), i64::MIN);
        }
        fresh.quiet[local] = q;
    }
}

/// A matcher state of an unchanged rule, rebuilt under the new rule set
/// through its snapshot form (automaton state ids are per compiled rule),
/// with each event it holds replaced by `redecode`'s. `None`: an event no
/// longer decodes, or the snapshot does not fit (the rule's state resets).
fn carry_matcher(
    state: &MatcherState,
    rules: &RuleSet,
    ri: usize,
    redecode: &mut dyn FnMut(&Arc<Event>) -> Option<Arc<Event>>,
) -> Option<MatcherState> {
    let mut table = EventTable::default();
    let snapshot = state.to_snapshot(&mut table);
    let events: Vec<Arc<Event>> = table
        .events
        .iter()
        .map(&mut *redecode)
        .collect::<Option<_>>()?;
    let matcher = &rules.rules[ri].matcher;
    MatcherState::from_snapshot(&snapshot, &events, &matcher.nfa, matcher.lazy.as_deref()).ok()
}
