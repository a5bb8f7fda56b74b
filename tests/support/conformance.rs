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
        out = out.replace("<>", "!=");
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
    let query = sql_text(case);
    let mut s = String::from("stream cases { key _k time _t time format epoch_ms");
    if sql {
        let ties = order_by(&query).into_iter().skip(1).collect::<Vec<_>>();
        if !ties.is_empty() {
            s.push_str("\n  order ");
            s.push_str(&ties.join(", "));
        }
    }
    s.push_str(" }\nrule case {\n");
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
    let skip = if sql {
        sql_skip(&query)?
    } else {
        case["skip"].as_str().unwrap_or("noSkip").to_string()
    };
    match skip.as_str() {
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
    if sql && let Some(measures) = sql_measures(&query) {
        s.push_str("  payload {\n");
        for (i, (expr, _)) in measures.iter().enumerate() {
            s.push_str(&format!("    m{i} = {}\n", condition(expr, true)));
        }
        s.push_str("  }\n");
    }
    s.push_str("}\n");
    Ok(s)
}

/// The query of a MATCH_RECOGNIZE case, with Java's `\\uXXXX` escapes (the
/// tests' source text keeps them) decoded.
fn sql_text(case: &J) -> String {
    let raw = case["sql"].as_str().unwrap_or("");
    let mut out = String::new();
    let mut rest = raw;
    while let Some(at) = rest.find("\\u") {
        out.push_str(&rest[..at]);
        let hex = rest.get(at + 2..at + 6).unwrap_or("");
        match u32::from_str_radix(hex, 16).ok().and_then(char::from_u32) {
            Some(c) if hex.len() == 4 => {
                out.push(c);
                rest = &rest[at + 6..];
            }
            _ => {
                out.push_str("\\u");
                rest = &rest[at + 2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The text of a clause: from after `start` to the first of `ends` (or the end).
fn clause<'a>(sql: &'a str, start: &str, ends: &[&str]) -> Option<&'a str> {
    let upper = sql.to_uppercase();
    let from = upper.find(start)? + start.len();
    let to = ends
        .iter()
        .filter_map(|k| upper[from..].find(k))
        .min()
        .map_or(sql.len(), |e| e + from);
    Some(&sql[from..to])
}

/// ORDER BY of the MATCH_RECOGNIZE clause, each key in the rule
/// language's spelling (`field`, `field desc`); the first is the time.
fn order_by(sql: &str) -> Vec<String> {
    let Some(body) = clause(
        sql,
        "ORDER BY",
        &["MEASURES", "ONE ROW", "ALL ROWS", "AFTER MATCH", "PATTERN"],
    ) else {
        return Vec::new();
    };
    body.split(',')
        .map(|k| {
            let words: Vec<&str> = k.split_whitespace().collect();
            match words.as_slice() {
                [f, d] if d.eq_ignore_ascii_case("desc") => format!("{} desc", ident(f)),
                [f, ..] => ident(f),
                [] => String::new(),
            }
        })
        .filter(|k| !k.is_empty())
        .collect()
}

/// AFTER MATCH of a query in the corpus's spelling; the SQL standard's
/// default, SKIP PAST LAST ROW, when the query has none.
fn sql_skip(sql: &str) -> Result<String, String> {
    let Some(body) = clause(sql, "AFTER MATCH", &["PATTERN", "DEFINE"]) else {
        return Ok("skipPastLastEvent".into());
    };
    let words: Vec<&str> = body.split_whitespace().collect();
    let upper: Vec<String> = words.iter().map(|w| w.to_uppercase()).collect();
    let upper: Vec<&str> = upper.iter().map(|w| w.as_str()).collect();
    Ok(match upper.as_slice() {
        ["SKIP", "PAST", "LAST", "ROW"] => "skipPastLastEvent".into(),
        ["SKIP", "TO", "NEXT", "ROW"] => "skipToNext".into(),
        ["SKIP", "TO", "FIRST", _] => format!("skipToFirst:{}", unquote(words[3])),
        ["SKIP", "TO", "LAST", _] | ["SKIP", "TO", _] => {
            format!("skipToLast:{}", unquote(words[words.len() - 1]))
        }
        _ => return Err(format!("unknown AFTER MATCH clause `{}`", body.trim())),
    })
}

fn unquote(name: &str) -> String {
    name.trim_matches('`').to_string()
}

/// The SELECT list: `None` for `*`, else the column names (qualifiers dropped).
fn select_list(sql: &str) -> Option<Vec<String>> {
    let body = clause(sql, "SELECT", &["FROM"])?.trim();
    if body == "*" {
        return None;
    }
    Some(
        body.split(',')
            .map(|c| {
                let c = c.trim();
                let c = c.rsplit_once(' ').map_or(c, |(_, alias)| alias);
                unquote(c.rsplit_once('.').map_or(c, |(_, col)| col))
            })
            .collect(),
    )
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

/// A row `{"seq": n, "watermark": W}`: the watermark moves to W.
fn is_watermark_row(row: &J) -> bool {
    row.get("watermark").is_some()
        && row.as_object().is_some_and(|o| {
            o.keys()
                .all(|k| ["seq", "ref", "t", "watermark"].contains(&k.as_str()))
        })
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
    let sql = case["kind"].as_str() == Some("sql_match_recognize");
    let query = sql_text(case);
    let partition_cols = if sql {
        partition_by(&query)
    } else {
        Vec::new()
    };
    let mut states: HashMap<String, tripline::pattern::MatcherState> = HashMap::new();
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
    // Each row decoded, in input order, with its time (None: no timestamp)
    // or, for a watermark row, the watermark.
    enum Row {
        Event(Arc<Event>, Option<i64>),
        Watermark(i64),
    }
    let mut rows = Vec::new();
    for (i, ev) in events.iter().enumerate() {
        if is_watermark_row(ev) {
            rows.push(Row::Watermark(ev["watermark"].as_i64().unwrap_or(i64::MIN)));
            continue;
        }
        let mut obj = ev.clone();
        let t_ms = match &ev["t"] {
            J::Number(n) => n.as_i64(),
            J::String(s) => tripline::event::parse_time_str(s),
            _ => None,
        };
        obj["_t"] = J::from(t_ms.unwrap_or(0));
        obj["_k"] = J::from(1);
        let seq = i as u64;
        by_seq.insert(seq, ev.clone());
        let event = rules
            .decoder()
            .decode(obj.to_string().as_bytes(), seq)
            .map_err(|e| format!("event {i}: {e}"))?;
        rows.push(Row::Event(Arc::new(event), t_ms));
    }
    // A MATCH_RECOGNIZE query in event time sees its rows sorted by ORDER BY
    // as the watermark passes them (rows at or before it are late and
    // dropped); the input ends with a watermark past every row. Everything
    // else is fed in input order, as the reference harness does.
    let event_time = sql && rows.iter().any(|r| matches!(r, Row::Event(_, Some(_))));
    let mut feed: Vec<(Arc<Event>, Option<i64>)> = Vec::new();
    if event_time {
        let mut pending: Vec<Arc<Event>> = Vec::new();
        let mut watermark = i64::MIN;
        let release = |upto: i64, pending: &mut Vec<Arc<Event>>, feed: &mut Vec<_>| {
            pending.sort_by(|a, b| rules.event_order(a, b).then(a.seq.cmp(&b.seq)));
            let keep = pending.split_off(pending.partition_point(|e| e.time <= upto));
            for e in std::mem::replace(pending, keep) {
                let t = e.time;
                feed.push((e, Some(t)));
            }
        };
        for row in rows {
            match row {
                Row::Event(e, _) if e.time <= watermark => {}
                Row::Event(e, _) => pending.push(e),
                Row::Watermark(w) => {
                    watermark = watermark.max(w);
                    release(watermark, &mut pending, &mut feed);
                }
            }
        }
        release(i64::MAX, &mut pending, &mut feed);
    } else {
        feed.extend(rows.into_iter().filter_map(|r| match r {
            Row::Event(e, t) => Some((e, t)),
            Row::Watermark(_) => None,
        }));
    }
    for (event, t_ms) in feed {
        let row = by_seq.get(&event.seq).cloned().unwrap_or(J::Null);
        let partition = partition_cols
            .iter()
            .map(|c| row[c].to_string())
            .collect::<Vec<_>>()
            .join(",");
        let state = states
            .entry(partition)
            .or_insert_with(|| matcher.new_state());
        if let Some(ts) = t_ms {
            out.clear();
            matcher.advance_time(state, ts, &mut out);
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
            .process(state, &event, &[], &mut scratch, &mut out)
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
    if sql && case["expected_rows"].is_array() {
        let measures: Vec<String> = sql_measures(&query)
            .unwrap_or_default()
            .into_iter()
            .map(|(_, alias)| unquote(&alias).to_lowercase())
            .collect();
        let select = select_list(&query);
        let mut got: Vec<String> = Vec::new();
        for (m, vals) in matches.iter().zip(&payloads) {
            let first = m
                .first()
                .and_then(|e| by_seq.get(&e.seq))
                .cloned()
                .unwrap_or(J::Null);
            let partition_value = |p: &str| match &first[p] {
                J::String(s) => s.clone(),
                v => v.to_string(),
            };
            let cols: Vec<String> = match &select {
                // SELECT *: the partition columns, then the measures.
                None => partition_cols
                    .iter()
                    .map(|p| partition_value(p))
                    .chain(vals.iter().cloned())
                    .collect(),
                Some(names) => names
                    .iter()
                    .map(|n| {
                        if let Some(i) = measures.iter().position(|m| *m == n.to_lowercase()) {
                            Ok(vals[i].clone())
                        } else if let Some(p) =
                            partition_cols.iter().find(|p| p.eq_ignore_ascii_case(n))
                        {
                            Ok(partition_value(p))
                        } else {
                            Err(format!(
                                "SELECT names `{n}`, neither a measure nor a partition column"
                            ))
                        }
                    })
                    .collect::<Result<_, _>>()?,
            };
            got.push(cols.join(","));
        }
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
