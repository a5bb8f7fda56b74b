//! Expression evaluation over an event, the partial match it would extend,
//! and the key's window aggregates, and [`Flat`], the form feature sets'
//! common expressions are evaluated in without recursion. Total: never
//! panics; type mismatches and missing values evaluate to null (false in a
//! condition).

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

const DAY: i64 = 86_400_000;

/// `hour(t)`: the hour of the day (UTC) of epoch milliseconds `t`.
fn hour_of(t: i64) -> Value {
    Value::Num((t.rem_euclid(DAY) / 3_600_000) as f64)
}

/// `weekday(t)`: the ISO day of the week (Monday 1) of epoch milliseconds `t`.
fn weekday_of(t: i64) -> Value {
    // 1970-01-01 was a Thursday (4).
    Value::Num(((t.div_euclid(DAY) + 3).rem_euclid(7) + 1) as f64)
}

fn func(f: Func, args: &[CExpr], s: Scope<'_>) -> Value {
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
        Func::Hour => time_arg(args, s).map_or(Value::Null, hour_of),
        Func::Weekday => time_arg(args, s).map_or(Value::Null, weekday_of),
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

/// An operand [`Flat`] reads without a call to the evaluator.
#[derive(Clone, Debug)]
pub enum Leaf {
    /// A constant.
    Lit(Value),
    /// A field of the event.
    Field(crate::event::Slot),
    /// A window aggregate's value.
    Window(u16),
    /// `hour()`: the event time's hour of the day.
    Hour,
    /// `weekday()`: the event time's day of the week.
    Weekday,
}

/// An expression in a flat form for the shapes feature sets write most —
/// a window's value, `coalesce` of plain operands, a comparison of two, and
/// `if` on such a comparison choosing between two — which it evaluates
/// without recursion: each call of [`eval`] costs a frame (six saved
/// registers, a quarter of a kilobyte of stack), more than these shapes'
/// own work. Any other expression is kept as it is and given to [`eval`];
/// either way the value is [`eval`]'s.
#[derive(Clone, Debug)]
pub enum Flat {
    /// A plain operand.
    Leaf(Leaf),
    /// `a op b`, for an operator other than `and` / `or`.
    Binary(BinOp, Leaf, Leaf),
    /// `if(a op b, then, else)`, the operator other than `and` / `or`.
    If(BinOp, [Leaf; 4]),
    /// `coalesce(a, b, ..)`.
    Coalesce(Box<[Leaf]>),
    /// Anything else.
    Expr(CExpr),
}

impl Leaf {
    fn of(e: &CExpr) -> Option<Leaf> {
        Some(match e {
            CExpr::Lit(v) => Leaf::Lit(v.clone()),
            CExpr::Field(slot) => Leaf::Field(*slot),
            CExpr::Window(i) => Leaf::Window(*i),
            CExpr::Func(Func::Hour, args) if args.is_empty() => Leaf::Hour,
            CExpr::Func(Func::Weekday, args) if args.is_empty() => Leaf::Weekday,
            _ => return None,
        })
    }

    #[inline(always)]
    fn get<'a>(&'a self, s: Scope<'a>) -> Cow<'a, Value> {
        match self {
            Leaf::Lit(v) => Cow::Borrowed(v),
            Leaf::Field(slot) => Cow::Borrowed(s.event.field(*slot)),
            Leaf::Window(i) => s
                .windows
                .get(*i as usize)
                .map_or(Cow::Owned(Value::Null), Cow::Borrowed),
            Leaf::Hour => Cow::Owned(hour_of(s.event.time)),
            Leaf::Weekday => Cow::Owned(weekday_of(s.event.time)),
        }
    }
}

impl Flat {
    /// `e` in its flat form where its shape has one.
    pub fn new(e: &CExpr) -> Flat {
        let plain = |op: &BinOp| !matches!(op, BinOp::And | BinOp::Or);
        let shape = match e {
            CExpr::Binary(op, a, b) if plain(op) => Leaf::of(a)
                .zip(Leaf::of(b))
                .map(|(a, b)| Flat::Binary(*op, a, b)),
            CExpr::Func(Func::If, args) => match args.as_slice() {
                [CExpr::Binary(op, a, b), then, other] if plain(op) => (|| {
                    Some(Flat::If(
                        *op,
                        [
                            Leaf::of(a)?,
                            Leaf::of(b)?,
                            Leaf::of(then)?,
                            Leaf::of(other)?,
                        ],
                    ))
                })(),
                _ => None,
            },
            CExpr::Func(Func::Coalesce, args) => args
                .iter()
                .map(Leaf::of)
                .collect::<Option<Box<[Leaf]>>>()
                .map(Flat::Coalesce),
            _ => Leaf::of(e).map(Flat::Leaf),
        };
        shape.unwrap_or_else(|| Flat::Expr(e.clone()))
    }

    /// Evaluates it: the value [`eval`] gives the expression it was made of.
    pub fn eval(&self, s: Scope<'_>) -> Value {
        match self {
            Flat::Leaf(l) => l.get(s).into_owned(),
            Flat::Binary(op, a, b) => binary(*op, &a.get(s), &b.get(s)),
            Flat::If(op, [a, b, then, other]) => {
                let branch = if binary(*op, &a.get(s), &b.get(s)).is_true() {
                    then
                } else {
                    other
                };
                branch.get(s).into_owned()
            }
            Flat::Coalesce(leaves) => leaves
                .iter()
                .map(|l| l.get(s))
                .find(|v| !v.is_null())
                .map_or(Value::Null, Cow::into_owned),
            Flat::Expr(e) => eval(e, s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    fn value(rng: &mut fastrand::Rng) -> Value {
        match rng.u8(0..8) {
            0 => Value::Null,
            1 => Value::Bool(rng.bool()),
            2 => Value::Str(CompactString::from(["a", "b", ""][rng.usize(0..3)])),
            3 => Value::Num(rng.f64() * 10.0 - 3.0),
            _ => Value::Num(rng.i64(-2..9) as f64),
        }
    }

    fn leaf(rng: &mut fastrand::Rng) -> CExpr {
        match rng.u8(0..5) {
            0 => CExpr::Lit(value(rng)),
            // Slot 5 is past the event's fields, window 3 past the windows.
            1 => CExpr::Field(rng.u16(0..6)),
            2 => CExpr::Window(rng.u16(0..4)),
            3 => CExpr::Func(Func::Hour, vec![]),
            _ => CExpr::Func(Func::Weekday, vec![]),
        }
    }

    fn op(rng: &mut fastrand::Rng) -> BinOp {
        use BinOp::*;
        [Or, And, Eq, Ne, Lt, Le, Gt, Ge, Add, Sub, Mul, Div, Rem][rng.usize(0..13)]
    }

    fn binary_of(rng: &mut fastrand::Rng) -> CExpr {
        CExpr::Binary(op(rng), Box::new(leaf(rng)), Box::new(leaf(rng)))
    }

    /// An expression of one of the flat shapes, or near one (an operand
    /// that is not plain, `and` / `or`, a condition that is no comparison).
    fn expr(rng: &mut fastrand::Rng) -> CExpr {
        let operand = |rng: &mut fastrand::Rng| {
            if rng.u8(0..8) == 0 {
                CExpr::Func(Func::Abs, vec![leaf(rng)])
            } else {
                leaf(rng)
            }
        };
        match rng.u8(0..4) {
            0 => leaf(rng),
            1 => CExpr::Binary(op(rng), Box::new(operand(rng)), Box::new(operand(rng))),
            2 => {
                let cond = if rng.u8(0..8) == 0 {
                    leaf(rng)
                } else {
                    binary_of(rng)
                };
                CExpr::Func(Func::If, vec![cond, operand(rng), operand(rng)])
            }
            _ => CExpr::Func(
                Func::Coalesce,
                (0..rng.usize(1..4)).map(|_| operand(rng)).collect(),
            ),
        }
    }

    #[test]
    fn the_flat_form_evaluates_as_the_expression_does() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut flat = 0;
        for _ in 0..20_000 {
            let event = Event {
                time: rng.i64(-400_000_000_000..4_000_000_000_000),
                seq: 0,
                fields: (0..5).map(|_| value(&mut rng)).collect(),
                raw: "".into(),
            };
            let windows: Vec<Value> = (0..3).map(|_| value(&mut rng)).collect();
            let s = Scope {
                event: &event,
                path: &[],
                windows: &windows,
            };
            let e = expr(&mut rng);
            let f = Flat::new(&e);
            flat += usize::from(!matches!(f, Flat::Expr(_)));
            // Debug forms, so that NaN equals NaN.
            assert_eq!(
                format!("{:?}", f.eval(s)),
                format!("{:?}", eval(&e, s)),
                "{e:?} at {} over {:?} and {windows:?}",
                event.time,
                event.fields
            );
        }
        // Most of the shapes drawn are flat ones: the fast paths are what
        // was compared, not only the fallback.
        assert!(flat > 12_000, "{flat} of 20000 flat");
    }

    #[test]
    fn only_the_flat_shapes_are_made_flat() {
        let hour = || CExpr::Func(Func::Hour, vec![]);
        let lit = |n: f64| CExpr::Lit(Value::Num(n));
        let cmp = |op| CExpr::Binary(op, Box::new(hour()), Box::new(lit(6.0)));
        let flat_if = CExpr::Func(Func::If, vec![cmp(BinOp::Le), lit(1.0), lit(0.0)]);
        assert!(matches!(Flat::new(&flat_if), Flat::If(BinOp::Le, _)));
        let and_if = CExpr::Func(Func::If, vec![cmp(BinOp::And), lit(1.0), lit(0.0)]);
        assert!(matches!(Flat::new(&and_if), Flat::Expr(_)));
        let coalesce = CExpr::Func(Func::Coalesce, vec![CExpr::Window(2), lit(0.0)]);
        assert!(matches!(Flat::new(&coalesce), Flat::Coalesce(l) if l.len() == 2));
        let hour_of_field = CExpr::Func(Func::Hour, vec![CExpr::Field(0)]);
        assert!(matches!(Flat::new(&hour_of_field), Flat::Expr(_)));
        assert!(matches!(
            Flat::new(&CExpr::Window(1)),
            Flat::Leaf(Leaf::Window(1))
        ));
    }
}
