//! Expression evaluation over an event, the partial match it would extend,
//! and the key's window aggregates. Total: never panics; type mismatches and
//! missing values evaluate to null (false in a condition).

use crate::event::{Event, Value};
use crate::rules::{AggFunc, CExpr, Func, MatchAgg, StageId};
use crate::rules::{BinOp, UnOp};
use compact_str::CompactString;
use std::borrow::Cow;
use std::sync::Arc;

/// The events of a partial match, oldest first, with the stage each was taken by.
pub type MatchPath = [(StageId, Arc<Event>)];

/// An owned [`MatchPath`]: one match's events, oldest first.
pub type Match = Vec<(StageId, Arc<Event>)>;

/// What an expression can see.
#[derive(Clone, Copy)]
pub struct Scope<'a> {
    /// The event fields without a stage refer to.
    pub event: &'a Event,
    /// The partial match so far.
    pub path: &'a MatchPath,
    /// Current values of the rule's window aggregates.
    pub windows: &'a [Value],
}

/// Evaluates `e`.
pub fn eval(e: &CExpr, s: Scope<'_>) -> Value {
    match e {
        CExpr::Lit(v) => v.clone(),
        CExpr::Field(slot) => s.event.field(*slot).clone(),
        CExpr::StageLast(stage, slot) => s
            .path
            .iter()
            .rev()
            .find(|(st, _)| st == stage)
            .map_or(Value::Null, |(_, ev)| ev.field(*slot).clone()),
        CExpr::Window(i) => s.windows.get(*i as usize).cloned().unwrap_or(Value::Null),
        CExpr::Unary(UnOp::Not, x) => match eval(x, s) {
            Value::Bool(b) => Value::Bool(!b),
            _ => Value::Null,
        },
        CExpr::Unary(UnOp::Neg, x) => match eval(x, s) {
            Value::Num(n) => Value::Num(-n),
            _ => Value::Null,
        },
        CExpr::Binary(BinOp::And, a, b) => {
            // SQL three-valued logic: false wins over null.
            let a = eval(a, s);
            if matches!(a, Value::Bool(false)) {
                return Value::Bool(false);
            }
            match (a, eval(b, s)) {
                (_, Value::Bool(false)) => Value::Bool(false),
                (Value::Bool(true), Value::Bool(true)) => Value::Bool(true),
                _ => Value::Null,
            }
        }
        CExpr::Binary(BinOp::Or, a, b) => {
            let a = eval(a, s);
            if a.is_true() {
                return Value::Bool(true);
            }
            match (a, eval(b, s)) {
                (_, Value::Bool(true)) => Value::Bool(true),
                (Value::Bool(false), Value::Bool(false)) => Value::Bool(false),
                _ => Value::Null,
            }
        }
        CExpr::Binary(op, a, b) => binary(*op, &operand(a, s), &operand(b, s)),
        CExpr::In(x, items, neg) => {
            let v = eval(x, s);
            if v.is_null() {
                return Value::Null;
            }
            let found = items.iter().any(|i| eval(i, s).loose_eq(&v));
            Value::Bool(found != *neg)
        }
        CExpr::Matches(x, re) => match eval(x, s) {
            Value::Str(st) => Value::Bool(re.is_match(st.as_str())),
            _ => Value::Null,
        },
        CExpr::IsNull(x, is) => Value::Bool(eval(x, s).is_null() == *is),
        CExpr::Func(f, args) => func(*f, args, s),
        CExpr::MatchAgg(a) => match_agg(a, s),
    }
}

/// Evaluates `e`, borrowing constants and fields instead of cloning them:
/// most conditions compare a field with a constant.
fn operand<'a>(e: &'a CExpr, s: Scope<'a>) -> Cow<'a, Value> {
    match e {
        CExpr::Lit(v) => Cow::Borrowed(v),
        CExpr::Field(slot) => Cow::Borrowed(s.event.field(*slot)),
        CExpr::Window(i) => s
            .windows
            .get(*i as usize)
            .map_or(Cow::Owned(Value::Null), Cow::Borrowed),
        _ => Cow::Owned(eval(e, s)),
    }
}

/// Whether `e` holds (only `true` does).
pub fn holds(e: &CExpr, s: Scope<'_>) -> bool {
    eval(e, s).is_true()
}

fn binary(op: BinOp, a: &Value, b: &Value) -> Value {
    use std::cmp::Ordering::*;
    match op {
        // SQL: a comparison with null is null (neither true nor false), so
        // `not (x == 1)` does not hold for a missing `x` either.
        BinOp::Eq | BinOp::Ne if a.is_null() || b.is_null() => Value::Null,
        BinOp::Eq => Value::Bool(a.loose_eq(b)),
        BinOp::Ne => Value::Bool(!a.loose_eq(b)),
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => match a.partial_order(b) {
            None => Value::Null,
            Some(o) => Value::Bool(match op {
                BinOp::Lt => o == Less,
                BinOp::Le => o != Greater,
                BinOp::Gt => o == Greater,
                _ => o != Less,
            }),
        },
        BinOp::Add => match (a, b) {
            (Value::Num(x), Value::Num(y)) => Value::Num(x + y),
            (Value::Str(x), Value::Str(y)) => {
                let mut s = CompactString::from(x.as_str());
                s.push_str(y);
                Value::Str(s)
            }
            _ => Value::Null,
        },
        BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Rem => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => {
                let r = match op {
                    BinOp::Sub => x - y,
                    BinOp::Mul => x * y,
                    BinOp::Div if y == 0.0 => return Value::Null,
                    BinOp::Div => x / y,
                    BinOp::Rem if y == 0.0 => return Value::Null,
                    _ => x % y,
                };
                Value::Num(r)
            }
            _ => Value::Null,
        },
        BinOp::And | BinOp::Or => Value::Null,
    }
}

fn num1(args: &[CExpr], s: Scope<'_>, f: impl Fn(f64) -> f64) -> Value {
    match args.first().map(|a| eval(a, s)) {
        Some(Value::Num(n)) => {
            let r = f(n);
            if r.is_finite() {
                Value::Num(r)
            } else {
                Value::Null
            }
        }
        _ => Value::Null,
    }
}

fn str2(args: &[CExpr], s: Scope<'_>, f: impl Fn(&str, &str) -> bool) -> Value {
    match (eval(&args[0], s), eval(&args[1], s)) {
        (Value::Str(a), Value::Str(b)) => Value::Bool(f(&a, &b)),
        _ => Value::Null,
    }
}

fn time_arg(args: &[CExpr], s: Scope<'_>) -> Option<i64> {
    match args.first() {
        None => Some(s.event.time),
        Some(a) => eval(a, s)
            .as_f64()
            .filter(|t| t.is_finite() && t.abs() < 9e15)
            .map(|t| t as i64),
    }
}

fn func(f: Func, args: &[CExpr], s: Scope<'_>) -> Value {
    const DAY: i64 = 86_400_000;
    match f {
        Func::Abs => num1(args, s, f64::abs),
        Func::Round => num1(args, s, f64::round),
        Func::Floor => num1(args, s, f64::floor),
        Func::Ceil => num1(args, s, f64::ceil),
        Func::Sqrt => num1(args, s, f64::sqrt),
        Func::Ln => num1(args, s, f64::ln),
        Func::Least | Func::Greatest => {
            let mut best: Option<Value> = None;
            for a in args {
                let v = eval(a, s);
                if v.is_null() {
                    continue;
                }
                best = match best {
                    None => Some(v),
                    Some(b) => match v.partial_order(&b) {
                        Some(std::cmp::Ordering::Less) if f == Func::Least => Some(v),
                        Some(std::cmp::Ordering::Greater) if f == Func::Greatest => Some(v),
                        Some(_) => Some(b),
                        None => return Value::Null,
                    },
                };
            }
            best.unwrap_or(Value::Null)
        }
        Func::Coalesce => args
            .iter()
            .map(|a| operand(a, s))
            .find(|v| !v.is_null())
            .map_or(Value::Null, Cow::into_owned),
        Func::Contains => str2(args, s, |a, b| a.contains(b)),
        Func::StartsWith => str2(args, s, |a, b| a.starts_with(b)),
        Func::EndsWith => str2(args, s, |a, b| a.ends_with(b)),
        Func::Lower => match eval(&args[0], s) {
            Value::Str(x) => Value::Str(x.to_lowercase()),
            _ => Value::Null,
        },
        Func::Upper => match eval(&args[0], s) {
            Value::Str(x) => Value::Str(x.to_uppercase()),
            _ => Value::Null,
        },
        Func::Len => match eval(&args[0], s) {
            Value::Str(x) => Value::Num(x.chars().count() as f64),
            _ => Value::Null,
        },
        Func::Hour => time_arg(args, s).map_or(Value::Null, |t| {
            Value::Num((t.rem_euclid(DAY) / 3_600_000) as f64)
        }),
        Func::Weekday => time_arg(args, s).map_or(Value::Null, |t| {
            // 1970-01-01 was a Thursday (4).
            Value::Num(((t.div_euclid(DAY) + 3).rem_euclid(7) + 1) as f64)
        }),
        Func::EventTime => Value::Num(s.event.time as f64),
        Func::If => {
            let branch = if holds(&args[0], s) {
                &args[1]
            } else {
                &args[2]
            };
            operand(branch, s).into_owned()
        }
    }
}

fn match_agg(a: &MatchAgg, s: Scope<'_>) -> Value {
    let events = s
        .path
        .iter()
        .filter(|(st, _)| a.stage.is_none_or(|want| *st == want))
        .map(|(_, ev)| ev);
    let value_of = |ev: &Arc<Event>| match &a.arg {
        Some(arg) => eval(
            arg,
            Scope {
                event: ev,
                path: s.path,
                windows: s.windows,
            },
        ),
        None => Value::Bool(true),
    };
    match a.func {
        AggFunc::First => events.map(value_of).nth(a.offset).unwrap_or(Value::Null),
        AggFunc::Last => {
            let v: Vec<&Arc<Event>> = events.collect();
            v.len()
                .checked_sub(1 + a.offset)
                .map_or(Value::Null, |i| value_of(v[i]))
        }
        AggFunc::Count => Value::Num(events.map(value_of).filter(|v| !v.is_null()).count() as f64),
        AggFunc::CountDistinct => {
            // A match holds few events: a linear scan beats hashing.
            let mut seen: smallvec::SmallVec<[Value; 8]> = smallvec::SmallVec::new();
            for v in events.map(value_of).filter(|v| !v.is_null()) {
                if !seen.contains(&v) {
                    seen.push(v);
                }
            }
            Value::Num(seen.len() as f64)
        }
        AggFunc::Sum => Value::Num(events.filter_map(|e| value_of(e).as_f64()).sum()),
        AggFunc::Avg => {
            let (n, sum) = events
                .filter_map(|e| value_of(e).as_f64())
                .fold((0usize, 0.0), |(n, s), v| (n + 1, s + v));
            if n == 0 {
                Value::Null
            } else {
                Value::Num(sum / n as f64)
            }
        }
        AggFunc::Min | AggFunc::Max => {
            let it = events.filter_map(|e| value_of(e).as_f64());
            let r = if a.func == AggFunc::Min {
                it.fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.min(v))))
            } else {
                it.fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
            };
            r.map_or(Value::Null, Value::Num)
        }
    }
}
