//! Reading stored engine state for operators (`tripline state inspect`):
//! what a shard's store holds, and one key's state, decoded under the rules
//! it was written with (which the store keeps, so this works after the
//! running rules changed).

use super::snapshot::{
    BUFFER_PREFIX, KEY_PREFIX, LOG_PREFIX, META_KEY, Meta, RULES_KEY, StoredRules,
    decode_key_state, key_bytes, key_snapshot,
};
use super::{Engine, RuleSet, earliest_deadline};
use crate::event::{Event, Value, ValueKey, format_time};
use crate::pattern::eval::{Scope, eval};
use crate::rules::ModelReader;
use crate::state::{SnapshotError, StateStore, decode, header_hash};
use serde_json::{Value as Json, json};
use std::sync::Arc;

/// The rules a store's state was written under, rebuilt from the copy it
/// holds, its models read by `models` (`None`: the store holds no engine
/// state).
pub fn stored_rules(
    store: &impl StateStore,
    models: &ModelReader,
) -> Result<Option<Arc<RuleSet>>, SnapshotError> {
    let Some(bytes) = store.get(RULES_KEY)? else {
        return Ok(None);
    };
    let hash = header_hash(&bytes)?;
    let stored: StoredRules = decode(&bytes, hash)?;
    let rules = RuleSet::rebuild(&stored.origin, models, &stored.rules, Default::default())
        .map_err(|e| SnapshotError::Corrupt(format!("the stored rules do not compile: {e}")))?;
    if rules.def.hash != hash {
        return Err(SnapshotError::Corrupt(format!(
            "the stored rules compile to rule set {:016x}, not {hash:016x}",
            rules.def.hash
        )));
    }
    Ok(Some(rules))
}

/// A summary of a store's engine state: rules, watermark, counters, keys
/// and buffered events.
pub fn summary(store: &impl StateStore, models: &ModelReader) -> Result<Json, SnapshotError> {
    let Some(rules) = stored_rules(store, models)? else {
        return Ok(json!({ "rules": null }));
    };
    let hash = rules.def.hash;
    let meta: Option<Meta> = match store.get(META_KEY)? {
        Some(b) => Some(decode(&b, hash)?),
        None => None,
    };
    let mut keys = 0u64;
    let mut key_bytes_total = 0u64;
    store.for_each_prefix(KEY_PREFIX, &mut |_, v| {
        keys += 1;
        key_bytes_total += v.len() as u64;
        Ok(())
    })?;
    let mut buffered = 0u64;
    store.for_each_prefix(BUFFER_PREFIX, &mut |_, _| {
        buffered += 1;
        Ok(())
    })?;
    let mut logged = 0u64;
    store.for_each_prefix(LOG_PREFIX, &mut |_, v| {
        logged += 1;
        key_bytes_total += v.len() as u64;
        Ok(())
    })?;
    Ok(json!({
        "rule_set": format!("{hash:016x}"),
        "rules": rules.rules.iter().map(|r| r.name.to_string()).collect::<Vec<_>>(),
        "watermark": meta.as_ref().map(|m| format_time(m.watermark.current())),
        "events": meta.as_ref().map(|m| m.stats.0),
        "alerts": meta.as_ref().map(|m| m.stats.2),
        "keys": keys,
        "key_bytes": key_bytes_total,
        "log_chunks": logged,
        "buffered_events": buffered,
    }))
}

/// The values a key given as text may be: the string, and the number it
/// spells, if any.
fn key_candidates(key: &str) -> Vec<Value> {
    let mut candidates = vec![Value::Str(key.into())];
    candidates.extend(Value::exact_number(key));
    candidates
}

/// One key's state in a store, per keying that has it: its rules' window
/// aggregates and next deadlines, and the whole stored record. Numeric keys
/// may be given as text.
pub fn inspect_key(
    store: &impl StateStore,
    models: &ModelReader,
    key: &str,
) -> Result<Vec<Json>, SnapshotError> {
    let Some(rules) = stored_rules(store, models)? else {
        return Ok(Vec::new());
    };
    let candidates = key_candidates(key);
    let mut found = Vec::new();
    for (ki, keying) in rules.keyings.iter().enumerate() {
        for k in &candidates {
            let Some(bytes) = store.get(&key_bytes(ki as u32, &ValueKey::from(k)))? else {
                continue;
            };
            let ks = decode_key_state(&rules, ki, &bytes, Some(store))?;
            // The whole state, the window events stored apart included.
            let raw = key_snapshot(&rules, ki, &ks, true);
            let per_rule: Vec<Json> = keying
                .rules
                .iter()
                .enumerate()
                .map(|(local, &ri)| {
                    let rule = &rules.rules[ri];
                    let windows: Vec<Json> = rule
                        .def
                        .windows
                        .iter()
                        .zip(ks.rule_values(keying, rule))
                        .map(|(w, v)| json!({ "aggregate": format!("{:?}", w.func).to_lowercase(), "value": v.to_json() }))
                        .collect();
                    json!({
                        "rule": rule.name.to_string(),
                        "idle": ks.matchers[local].is_idle(),
                        "next_deadline": ks.matchers[local].next_deadline().map(format_time),
                        "suppressed_until": ks.quiet.get(local).filter(|&&q| q != i64::MIN).map(|&q| format_time(q)),
                        "windows": windows,
                    })
                })
                .collect();
            found.push(json!({
                "key": ks.key.to_json(),
                "key_field": rules.def.schema.path(keying.slot).to_string(),
                "timer": ks.timer.map(format_time),
                "earliest_deadline": earliest_deadline(&ks).map(|(t, _)| format_time(t)),
                "stored_bytes": bytes.len(),
                "rules": per_rule,
                "state": serde_json::to_value(&raw).unwrap_or(Json::Null),
            }));
        }
    }
    Ok(found)
}

/// One key's live state, per keying that holds it, as the API shows it:
/// the features of its feature sets as of its latest event (computed from
/// its windows; features that read the event's own fields are null), each
/// rule's window aggregates and whether it has a partial match, and its
/// next deadline. Numeric keys may be given as text.
pub fn key_view(engine: &mut Engine, key: &str) -> Vec<Json> {
    let rules = engine.rules.clone();
    let candidates = key_candidates(key);
    let mut found = Vec::new();
    for (ki, keying) in rules.keyings.iter().enumerate() {
        for k in &candidates {
            let vk = ValueKey::from(k);
            engine.revive(ki, &vk);
            let Some(cell) = engine.keys[ki].get_mut(&vk) else {
                continue;
            };
            if let Some(p) = &mut engine.passive
                && !p.thaw(&rules, ki, &vk, cell)
            {
                continue;
            }
            let Some(ks) = cell.live_mut() else {
                continue;
            };
            let empty = Event {
                time: engine.watermark.current(),
                seq: 0,
                fields: smallvec::smallvec![Value::Null; rules.def.schema.len()],
                raw: Arc::from(""),
            };
            let mut features = serde_json::Map::new();
            let mut per_rule = Vec::new();
            for (local, &ri) in keying.rules.iter().enumerate() {
                let rule = &rules.rules[ri];
                if rule.def.features {
                    let values = ks.rule_values(keying, rule);
                    for (name, e) in &rule.def.payload {
                        let scope = Scope {
                            event: &empty,
                            path: &[],
                            windows: &values,
                        };
                        features.insert(name.clone(), eval(e, scope).to_json());
                    }
                    continue;
                }
                per_rule.push(json!({
                    "rule": rule.name.to_string(),
                    "partial_match": !ks.matchers[local].is_idle(),
                    "next_deadline": ks.matchers[local].next_deadline().map(format_time),
                    "suppressed_until": ks.quiet.get(local).filter(|&&q| q != i64::MIN).map(|&q| format_time(q)),
                    "windows": rule.def.windows.iter().zip(ks.rule_values(keying, rule))
                        .map(|(w, v)| json!({ "aggregate": format!("{:?}", w.func).to_lowercase(), "value": v.to_json() }))
                        .collect::<Vec<_>>(),
                }));
            }
            found.push(json!({
                "key_field": rules.def.schema.path(keying.slot).to_string(),
                "key": ks.key.to_json(),
                "features": features,
                "rules": per_rule,
                "next_deadline": earliest_deadline(ks).map(|(t, _)| format_time(t)),
            }));
        }
    }
    found
}
