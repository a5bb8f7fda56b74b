//! Scalar values read from events and produced by expressions.
//!
//! Numbers are `f64` (JSON numbers up to 2^53 are exact); strings are inline up
//! to 24 bytes (`CompactString`), so typical field values need no allocation.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::fmt;

/// A scalar value: what an event field or an expression evaluates to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// Missing field, JSON `null`, or an undefined result (e.g. `avg` of nothing).
    #[default]
    Null,
    /// A boolean.
    Bool(bool),
    /// A number.
    Num(f64),
    /// A string.
    Str(CompactString),
}

impl Value {
    /// The number, if this is one (booleans are not numbers).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Num(n) => Some(*n),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Truth in a condition: only `true` is true; null and non-booleans are false.
    pub fn is_true(&self) -> bool {
        matches!(self, Value::Bool(true))
    }

    /// Whether this is `Null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Equality as the rule language defines it: numbers by value, strings by
    /// content, null equals only null; values of different types are unequal.
    pub fn loose_eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Num(a), Value::Num(b)) => a == b,
            (Value::Str(a), Value::Str(b)) => a == b,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Null, Value::Null) => true,
            _ => false,
        }
    }

    /// Ordering for `<`, `<=`, `>`, `>=`: numbers with numbers, strings with
    /// strings; anything else (including null) is unordered.
    pub fn partial_order(&self, other: &Value) -> Option<Ordering> {
        match (self, other) {
            (Value::Num(a), Value::Num(b)) => a.partial_cmp(b),
            (Value::Str(a), Value::Str(b)) => Some(a.as_str().cmp(b.as_str())),
            _ => None,
        }
    }

    /// A stable name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Num(_) => "number",
            Value::Str(_) => "string",
        }
    }

    /// The value as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Num(n) => json_number(*n),
            Value::Str(s) => serde_json::Value::String(s.to_string()),
        }
    }
}

/// A JSON number for `n`: integral values print without a fraction, non-finite
/// values become null (JSON has no NaN).
pub fn json_number(n: f64) -> serde_json::Value {
    if let Some(i) = whole(n) {
        serde_json::Value::from(i)
    } else {
        serde_json::Number::from_f64(n)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null)
    }
}

/// `n` as an integer when it is whole and exactly representable: numbers
/// are written without a fraction then.
fn whole(n: f64) -> Option<i64> {
    (n.is_finite() && n.fract() == 0.0 && n.abs() < 9.0e15).then_some(n as i64)
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            // What `json_number` displays, without building a JSON value for
            // the common whole case (alert ids hash a key's display form).
            Value::Num(n) => match whole(*n) {
                Some(i) => write!(f, "{i}"),
                None => write!(f, "{}", json_number(*n)),
            },
            Value::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl From<f64> for Value {
    fn from(n: f64) -> Self {
        Value::Num(n)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(CompactString::from(s))
    }
}

/// A hashable form of a value, for `count distinct` and key maps. Numbers hash
/// by bit pattern after normalising `-0.0` to `0.0`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ValueKey {
    /// Null.
    Null,
    /// A boolean.
    Bool(bool),
    /// A number's bits.
    Num(u64),
    /// A string.
    Str(CompactString),
}

impl From<&Value> for ValueKey {
    fn from(v: &Value) -> Self {
        match v {
            Value::Null => ValueKey::Null,
            Value::Bool(b) => ValueKey::Bool(*b),
            Value::Num(n) => ValueKey::Num(if *n == 0.0 { 0 } else { n.to_bits() }),
            Value::Str(s) => ValueKey::Str(s.clone()),
        }
    }
}

impl From<&ValueKey> for Value {
    /// The value a key stands for (`-0.0` comes back as `0`, which it equals).
    fn from(k: &ValueKey) -> Self {
        match k {
            ValueKey::Null => Value::Null,
            ValueKey::Bool(b) => Value::Bool(*b),
            ValueKey::Num(bits) => Value::Num(f64::from_bits(*bits)),
            ValueKey::Str(s) => Value::Str(s.clone()),
        }
    }
}

impl fmt::Display for ValueKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueKey::Null => f.write_str("null"),
            ValueKey::Bool(b) => write!(f, "{b}"),
            ValueKey::Num(bits) => write!(f, "{}", json_number(f64::from_bits(*bits))),
            ValueKey::Str(s) => f.write_str(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_display_as_their_json_form() {
        for n in [
            0.0,
            -0.0,
            1.0,
            -17.0,
            5850.0,
            2.5,
            -0.125,
            1e15,
            8.999_999_999_999_99e15,
            9.0e15,
            1e300,
            f64::NAN,
            f64::INFINITY,
        ] {
            assert_eq!(Value::Num(n).to_string(), json_number(n).to_string(), "{n}");
        }
    }
}
