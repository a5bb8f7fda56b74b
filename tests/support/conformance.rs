//! Conformance runner: translates each case of the CEP corpus (a neutral
//! description of events, pattern and expected matches) into tripline's rule
//! language, compiles it, drives the matcher as the reference harness does
//! (advance time to each event's timestamp, then feed it; no final advance)
//! and compares matches as multisets of events by value.
//!
//! The translator is generic over the corpus format, not over case ids.

#![allow(dead_code)]

use serde_json::Value as J;
use std::collections::BTreeMap as HashMap;
use std::sync::Arc;
use tripline::engine::RuleSet;
use tripline::event::Event;
use tripline::pattern::{Output, Scratch};
use tripline::rules::CompileError;

/// A timed-out partial match and when it timed out.
type TimedOut = (Vec<(u16, Arc<Event>)>, i64);

/// The outcome of one case.
pub struct CaseResult {
    pub id: String,
    pub outcome: Result<(), String>,
}

pub fn run_file(path: &std::path::Path) -> Vec<CaseResult> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, line)| match serde_json::from_str::<J>(line) {
            Ok(case) => CaseResult {
                id: case["id"].as_str().unwrap_or("?").to_string(),
                outcome: run_case(&case),
            },
            Err(e) => CaseResult {
                id: format!("line {}", i + 1),
                outcome: Err(format!("bad case JSON: {e}")),
            },
        })
        .collect()
}

fn ident(name: &str) -> String {
    format!("`{name}`")
}

fn contiguity(c: &J) -> Result<&'static str, String> {
    Ok(match c.as_str() {
        None => "",
        Some("strict") => "next ",
        Some("relaxed") => "then ",
        Some("nondeterministic-relaxed") => "then any ",
        Some("notNext") => "not next ",
        Some("notFollowedBy") => "not then ",
        Some(other) => return Err(format!("unknown contiguity {other}")),
    })
}

/// Condition text from the corpus to the rule language (SQL spellings included).
fn condition(c: &str, sql: bool) -> String {
    let mut out = c.to_string();
    if sql {
        out = rewrite_weighted_avg(&out);
        out = rewrite_sql_sum(&out);
        // SQL `=` compares; the rule language spells it `==`.
        let mut s = String::new();
        let b: Vec<char> = out.chars().collect();
        for (i, ch) in b.iter().enumerate() {
            let prev = if i > 0 { b[i - 1] } else { ' ' };
            let next = b.get(i + 1).copied().unwrap_or(' ');
            if *ch == '=' && !"<>!=".contains(prev) && next != '=' {
                s.push_str("==");
            } else {
                s.push(*ch);
            }
        }
        out = s;
    }
    out
}

/// SQL's SUM over no (non-null) values is NULL; tripline's `sum` is 0 there.
fn rewrite_sql_sum(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find("SUM(") {
        let boundary =
            pos == 0 || !rest[..pos].ends_with(|c: char| c.is_alphanumeric() || c == '_');
        let args_start = pos + 4;
        let mut depth = 1;
        let mut end = None;
        for (i, c) in rest[args_start..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(args_start + i);
                        break;
                    }
                }
                _ => {}
            }
        }
        let (Some(end), true) = (end, boundary) else {
            out.push_str(&rest[..args_start]);
            rest = &rest[args_start..];
            continue;
        };
        let arg = rewrite_sql_sum(&rest[args_start..end]);
        out.push_str(&rest[..pos]);
        out.push_str(&format!("if(count({arg}) == 0, null, sum({arg}))"));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// `weightedAvg(x, w)` is a user-defined aggregate in the SQL tests.
fn rewrite_weighted_avg(s: &str) -> String {
    let mut out = s.to_string();
    while let Some(pos) = out.find("weightedAvg(") {
        let args_start = pos + "weightedAvg(".len();
        let Some(close) = out[args_start..].find(')') else {
            break;
        };
        let args = &out[args_start..args_start + close];
        let parts: Vec<&str> = args.split(',').map(|p| p.trim()).collect();
        if parts.len() != 2 {
            break;
        }
        let repl = format!("(sum({} * {}) / sum({}))", parts[0], parts[1], parts[1]);
        out.replace_range(pos..args_start + close + 1, &repl);
    }
    out
}

fn stages_dsl(
    stages: &[J],
    case: &J,
    sql: bool,
    out: &mut String,
    depth: usize,
    groups: &mut usize,
) -> Result<(), String> {
    for (i, st) in stages.iter().enumerate() {
        let group_name;
        let name = match st["name"].as_str() {
            Some(n) => n,
            None => {
                // Groups are anonymous in the corpus; the rule language names every stage.
                *groups += 1;
                group_name = format!("group{}", *groups);
                &group_name
            }
        };
        let conn = if i == 0 {
            ""
        } else {
            contiguity(&st["contiguity"])?
        };
        out.push_str(&"  ".repeat(depth));
        out.push_str(conn);
        out.push_str(&ident(name));
        out.push_str(": ");
        if st["kind"].as_str() == Some("group") {
            out.push_str("(\n");
            let inner = st["group"].as_array().ok_or("group without stages")?;
            stages_dsl(inner, case, sql, out, depth + 1, groups)?;
            out.push_str(&"  ".repeat(depth));
            out.push(')');
        } else {
            let c = st["condition"].as_str().unwrap_or("true");
            out.push_str(&condition(c, sql));
        }
        let q = &st["quantifier"];
        let min = q["min"].as_u64().unwrap_or(1);
        let max = q["max"].as_u64();
        match q["kind"].as_str().unwrap_or("one") {
            "one" => {}
            "times" => out.push_str(&format!(" repeat {min}")),
            "times_range" => out.push_str(&format!(
                " repeat {min}..{}",
                max.ok_or("times_range without max")?
            )),
            "oneOrMore" => out.push_str(" repeat 1.."),
            "timesOrMore" => out.push_str(&format!(" repeat {min}..")),
            k => return Err(format!("unknown quantifier {k}")),
        }
        if q["optional"].as_bool() == Some(true) {
            out.push_str(" optional");
        }
        if q["greedy"].as_bool() == Some(true) {
            out.push_str(" greedy");
        }
        match q["inner_contiguity"].as_str() {
            Some("strict") => out.push_str(" consecutive"),
            Some("nondeterministic-relaxed") => out.push_str(" combinations"),
            _ => {}
        }
        if let Some(u) = q["until"].as_str() {
            out.push_str(&format!(" until {}", condition(u, sql)));
        }
        if case["within_type"].as_str() == Some("PREVIOUS_AND_CURRENT")
            && case["within_stage"].as_str() == Some(name)
            && let Some(ms) = case["within_ms"].as_i64()
        {
            out.push_str(&format!(" gap {ms}ms"));
        }
        out.push('\n');
    }
    Ok(())
}

/// The rule-language text for a case.
pub fn translate(case: &J) -> Result<String, String> {
    let sql = case["kind"].as_str() == Some("sql_match_recognize");
    let mut s = String::from("stream cases { key _k time _t time format epoch_ms }\nrule case {\n");
    if sql {
        s.push_str("  aggregates include current\n");
    }
    let prev_and_current = case["within_type"].as_str() == Some("PREVIOUS_AND_CURRENT");
    if let Some(ms) = case["within_ms"].as_i64()
        && !prev_and_current
    {
        s.push_str(&format!("  within {ms}ms\n"));
    }
    if case["timeout_handling"].as_bool() == Some(true) {
        s.push_str("  report timeouts\n");
    }
    let fail = if case["skip_throw_exception_on_miss"].as_bool() == Some(true) {
        " or fail"
    } else {
        ""
    };
    match case["skip"].as_str().unwrap_or("noSkip") {
        "noSkip" => {}
        "skipToNext" => s.push_str("  skip to next\n"),
        "skipPastLastEvent" => s.push_str("  skip past last\n"),
        other => {
            let (kind, stage) = other
                .split_once(':')
                .ok_or(format!("unknown skip {other}"))?;
            let which = match kind {
                "skipToFirst" => "first",
                "skipToLast" => "last",
                _ => return Err(format!("unknown skip {other}")),
            };
            s.push_str(&format!("  skip to {which} {}{fail}\n", ident(stage)));
        }
    }
    s.push_str("  pattern {\n");
    let stages = case["pattern"]["stages"].as_array().ok_or("no stages")?;
    stages_dsl(stages, case, sql, &mut s, 2, &mut 0)?;
    s.push_str("  }\n");
    if sql && let Some(measures) = sql_measures(case["sql"].as_str().unwrap_or("")) {
        s.push_str("  payload {\n");
        for (i, (expr, _)) in measures.iter().enumerate() {
            s.push_str(&format!("    m{i} = {}\n", condition(expr, true)));
        }
        s.push_str("  }\n");
    }
    s.push_str("}\n");
    Ok(s)
}

/// MEASURES of a MATCH_RECOGNIZE query: (expression, alias).
fn sql_measures(sql: &str) -> Option<Vec<(String, String)>> {
    let upper = sql.to_uppercase();
    let start = upper.find("MEASURES")? + "MEASURES".len();
    let end = [
        "ONE ROW PER MATCH",
        "ALL ROWS PER MATCH",
        "AFTER MATCH",
        "PATTERN",
    ]
    .iter()
    .filter_map(|k| upper[start..].find(k))
    .min()?
        + start;
    let body = &sql[start..end];
    let mut parts = Vec::new();
    let (mut depth, mut last) = (0i32, 0usize);
    for (i, c) in body.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&body[last..i]);
                last = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&body[last..]);
    parts
        .into_iter()
        .map(|p| {
            let p = p.trim();
            let pu = p.to_uppercase();
            let at = pu.rfind(" AS ")?;
            Some((p[..at].trim().to_string(), p[at + 4..].trim().to_string()))
        })
        .collect()
}

fn partition_by(sql: &str) -> Vec<String> {
    let upper = sql.to_uppercase();
    let Some(s) = upper.find("PARTITION BY") else {
        return Vec::new();
    };
    let rest = &sql[s + "PARTITION BY".len()..];
    let end = rest.to_uppercase().find("ORDER BY").unwrap_or(rest.len());
    rest[..end]
        .split(',')
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .collect()
}

fn is_expected_error(case: &J) -> bool {
    case.get("expected_error").is_some_and(|e| !e.is_null())
}

/// Value identity of an event for comparison: the case fields but `seq`/`ref`/`t`.
fn event_identity(ev: &J) -> String {
    let mut m: Vec<(String, String)> = ev
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| !["seq", "ref", "t", "_t", "_k"].contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect()
        })
        .unwrap_or_default();
    m.sort();
    format!("{m:?}")
}

pub fn run_case(case: &J) -> Result<(), String> {
    let dsl = translate(case)?;
    let rules = match RuleSet::from_source("case.tl", &dsl, None) {
        Ok(r) => r,
        Err(e) => {
            if is_expected_error(case) {
                return Ok(());
            }
            let msg = match e {
                CompileError::Rules(d) => d.short().join("; "),
                other => other.to_string(),
            };
            return Err(format!("rule did not compile: {msg}\n{dsl}"));
        }
    };
    if is_expected_error(case) {
        return Err(format!(
            "expected the pattern to be rejected ({})",
            case["expected_error"]
        ));
    }
    let rule = &rules.rules()[0];
    let matcher = &rule.matcher();
    let mut state = matcher.new_state();
    let mut scratch = Scratch::default();
    let only_pending = case["expected_matches_source"]
        .as_str()
        .is_some_and(|s| s.contains("advanceTime"));
    let mut matches: Vec<Vec<Arc<Event>>> = Vec::new();
    let mut timeouts: Vec<TimedOut> = Vec::new();
    let mut payloads: Vec<Vec<String>> = Vec::new();
    let mut by_seq: HashMap<u64, J> = HashMap::new();
    let mut out = Vec::new();
    let events = case["events"].as_array().ok_or("no events")?;
    for (i, ev) in events.iter().enumerate() {
        if ev.get("watermark").is_some() && ev.get("symbol").is_none() && ev.get("name").is_none() {
            continue;
        }
        let mut obj = ev.clone();
        let t = &ev["t"];
        let t_ms = match t {
            J::Null => None,
            J::Number(n) => n.as_i64(),
            J::String(s) => tripline::event::parse_time_str(s),
            _ => None,
        };
        obj["_t"] = J::from(t_ms.unwrap_or(0));
        obj["_k"] = J::from(1);
        let line = obj.to_string();
        let seq = i as u64;
        by_seq.insert(seq, ev.clone());
        let event = rules
            .decoder()
            .decode(line.as_bytes(), seq)
            .map_err(|e| format!("event {i}: {e}"))?;
        let event = Arc::new(event);
        if let Some(ts) = t_ms {
            out.clear();
            matcher.advance_time(&mut state, ts, &mut out);
            collect(
                &out,
                &mut matches,
                &mut timeouts,
                &mut payloads,
                rule,
                &event,
            );
        }
        out.clear();
        matcher
            .process(&mut state, &event, &[], &mut scratch, &mut out)
            .map_err(|e| e.to_string())?;
        if !only_pending {
            collect(
                &out,
                &mut matches,
                &mut timeouts,
                &mut payloads,
                rule,
                &event,
            );
        }
    }
    let identity_of =
        |e: &Arc<Event>| -> String { by_seq.get(&e.seq).map(event_identity).unwrap_or_default() };
    // Timeout cases assert counts and timed-out partial matches.
    if case["timeout_handling"].as_bool() == Some(true) {
        if let Some(n) = case["expected_match_count"].as_u64()
            && matches.len() as u64 != n
        {
            return Err(format!("expected {n} matches, got {}", matches.len()));
        }
        let refs: HashMap<&str, &J> = events
            .iter()
            .filter_map(|e| Some((e["ref"].as_str()?, e)))
            .collect();
        let mut want: Vec<String> = Vec::new();
        for t in case["expected_timeouts"].as_array().into_iter().flatten() {
            let mut evs: Vec<String> = Vec::new();
            for (_, list) in t["partial"].as_object().into_iter().flatten() {
                for r in list.as_array().into_iter().flatten() {
                    evs.push(event_identity(
                        refs.get(r.as_str().unwrap_or(""))
                            .copied()
                            .unwrap_or(&J::Null),
                    ));
                }
            }
            evs.sort();
            want.push(format!("{evs:?}@{}", t["timeout_timestamp"]));
        }
        let mut got: Vec<String> = timeouts
            .iter()
            .map(|(path, at)| {
                let mut evs: Vec<String> = path.iter().map(|(_, e)| identity_of(e)).collect();
                evs.sort();
                format!("{evs:?}@{at}")
            })
            .collect();
        want.sort();
        got.sort();
        if want != got {
            return Err(format!("timeouts differ:\n want {want:?}\n got  {got:?}"));
        }
        return Ok(());
    }
    if case["kind"].as_str() == Some("sql_match_recognize") && case["expected_rows"].is_array() {
        let sql = case["sql"].as_str().unwrap_or("");
        let parts = partition_by(sql);
        let mut got: Vec<String> = matches
            .iter()
            .zip(&payloads)
            .map(|(m, vals)| {
                let first = m
                    .first()
                    .and_then(|e| by_seq.get(&e.seq))
                    .cloned()
                    .unwrap_or(J::Null);
                let mut cols: Vec<String> = parts
                    .iter()
                    .map(|p| match &first[p] {
                        J::String(s) => s.clone(),
                        v => v.to_string(),
                    })
                    .collect();
                cols.extend(vals.iter().cloned());
                cols.join(",")
            })
            .collect();
        let mut want: Vec<String> = case["expected_rows"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str().map(String::from))
            .collect();
        got.sort();
        want.sort();
        if got != want {
            return Err(format!(
                "rows differ:\n want {want:?}\n got  {got:?}\n{dsl}"
            ));
        }
        return Ok(());
    }
    let expected = &case["expected_matches"];
    let refs: HashMap<&str, &J> = events
        .iter()
        .filter_map(|e| Some((e["ref"].as_str()?, e)))
        .collect();
    let mut want: Vec<Vec<String>> = Vec::new();
    // A null list means the test asserts that nothing matches.
    for m in expected.as_array().map(|a| a.as_slice()).unwrap_or(&[]) {
        let mut ids: Vec<String> = Vec::new();
        for r in m.as_array().ok_or("match is not a list")? {
            let ev = refs
                .get(r.as_str().unwrap_or(""))
                .ok_or(format!("unknown ref {r}"))?;
            ids.push(event_identity(ev));
        }
        ids.sort();
        want.push(ids);
    }
    let mut got: Vec<Vec<String>> = matches
        .iter()
        .map(|m| {
            let mut ids: Vec<String> = m.iter().map(identity_of).collect();
            ids.sort();
            ids
        })
        .collect();
    want.sort();
    got.sort();
    if want != got {
        let refs_of = |m: &Vec<Arc<Event>>| -> Vec<String> {
            m.iter()
                .map(|e| {
                    by_seq
                        .get(&e.seq)
                        .and_then(|j| j["ref"].as_str())
                        .unwrap_or("?")
                        .to_string()
                })
                .collect()
        };
        let got_refs: Vec<Vec<String>> = matches.iter().map(refs_of).collect();
        return Err(format!(
            "matches differ: want {} matches, got {}\n want {}\n got  {:?}\n{dsl}",
            want.len(),
            got.len(),
            expected,
            got_refs
        ));
    }
    Ok(())
}

fn collect(
    out: &[Output],
    matches: &mut Vec<Vec<Arc<Event>>>,
    timeouts: &mut Vec<TimedOut>,
    payloads: &mut Vec<Vec<String>>,
    rule: &tripline::engine::CompiledRule,
    current: &Arc<Event>,
) {
    for o in out {
        match o {
            Output::Match(path) => {
                matches.push(path.iter().map(|(_, e)| e.clone()).collect());
                let last = path
                    .last()
                    .map(|(_, e)| e.clone())
                    .unwrap_or_else(|| current.clone());
                let vals = rule
                    .def()
                    .payload
                    .iter()
                    .map(|(_, e)| {
                        let v = tripline::pattern::eval::eval(
                            e,
                            tripline::pattern::eval::Scope {
                                event: &last,
                                path,
                                windows: &[],
                            },
                        );
                        v.to_json().to_string().trim_matches('"').to_string()
                    })
                    .collect();
                payloads.push(vals);
            }
            Output::Timeout { path, at } => timeouts.push((path.clone(), *at)),
        }
    }
}
