//! Scalar values read from events and produced by expressions.
//!
//! Numbers are `f64`. Where a number's identity matters (key fields), one
//! that an `f64` does not hold exactly — an integer beyond ±2^53, a decimal
//! with more than 15 significant digits — is kept as its text instead
//! ([`Value::NumText`]), so that distinct keys never merge. Strings are
//! inline up to 24 bytes (`CompactString`), so typical field values need no
//! allocation.

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
    /// A number no `f64` holds exactly, kept as its JSON text (see
    /// [`Value::exact_number`]). It equals only the same text (no `f64`
    /// equals it), and orders and computes as its nearest `f64`.
    NumText(CompactString),
}

impl Value {
    /// The number, if this is one (booleans are not numbers); a
    /// [`Value::NumText`] as its nearest `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Num(n) => Some(*n),
            Value::NumText(t) => t.parse().ok(),
            _ => None,
        }
    }

    /// The value of JSON number `text`, keeping its identity: a
    /// [`Value::Num`] when the `f64` stands for this number and no other
    /// text (integers exactly representable, decimals of at most 15
    /// significant digits, which `f64` tells apart), else the text as a
    /// [`Value::NumText`]. `None` when `text` is not a JSON number.
    pub fn exact_number(text: &str) -> Option<Value> {
        if let Some(n) = short_integer(text) {
            return Some(Value::Num(n as f64));
        }
        if !is_json_number(text) {
            return None;
        }
        if let Ok(i) = text.parse::<i64>() {
            return Some(if (i as f64) as i128 == i128::from(i) {
                Value::Num(i as f64)
            } else {
                Value::NumText(text.into())
            });
        }
        if let Ok(u) = text.parse::<u64>() {
            return Some(if (u as f64) as u128 == u128::from(u) {
                Value::Num(u as f64)
            } else {
                Value::NumText(text.into())
            });
        }
        let n: f64 = text.parse().ok()?;
        Some(if n.is_finite() && significant_digits(text) <= 15 {
            Value::Num(n)
        } else {
            Value::NumText(text.into())
        })
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
            (Value::NumText(a), Value::NumText(b)) => a == b,
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
            (Value::NumText(_), _) | (_, Value::NumText(_)) => {
                self.as_f64()?.partial_cmp(&other.as_f64()?)
            }
            _ => None,
        }
    }

    /// A total order for sorting: null, then booleans, then numbers (numeric
    /// text by its number), then strings; NaN after every other number.
    pub fn sort_order(&self, other: &Value) -> Ordering {
        fn rank(v: &Value) -> u8 {
            match v {
                Value::Null => 0,
                Value::Bool(_) => 1,
                Value::Num(_) | Value::NumText(_) => 2,
                Value::Str(_) => 3,
            }
        }
        match (self, other) {
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            (Value::Str(a), Value::Str(b)) => a.as_str().cmp(b.as_str()),
            _ if rank(self) == 2 && rank(other) == 2 => {
                let (a, b) = (self.as_f64(), other.as_f64());
                a.unwrap_or(f64::NAN).total_cmp(&b.unwrap_or(f64::NAN))
            }
            _ => rank(self).cmp(&rank(other)),
        }
    }

    /// A stable name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Num(_) | Value::NumText(_) => "number",
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
            // Integers up to 64 bits come back exact; a longer decimal as
            // its nearest f64 (writers that can, write the text itself).
            Value::NumText(t) => serde_json::from_str(t).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// `text` as an integer of at most 15 digits, in JSON's form (no leading
/// zero, no `+`), read in one pass: most key fields are such integers, and
/// below 10^15 (< 2^53) the `f64` of an integer stands for it alone.
fn short_integer(text: &str) -> Option<i64> {
    let (negative, digits) = match text.as_bytes() {
        [b'-', rest @ ..] => (true, rest),
        all => (false, all),
    };
    if digits.is_empty() || digits.len() > 15 || (digits.len() > 1 && digits[0] == b'0') {
        return None;
    }
    let mut n = 0i64;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + i64::from(d - b'0');
    }
    Some(if negative { -n } else { n })
}

/// Whether `text` is a number in JSON's grammar (no `+`, no leading zeros,
/// digits around the point), which Rust's float parser is more lenient about.
fn is_json_number(text: &str) -> bool {
    let b = text.strip_prefix('-').unwrap_or(text).as_bytes();
    let int_len = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if int_len == 0 || (int_len > 1 && b[0] == b'0') {
        return false;
    }
    let mut rest = &b[int_len..];
    if let Some(r) = rest.strip_prefix(b".") {
        let n = r.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return false;
        }
        rest = &r[n..];
    }
    if let Some(r) = rest.strip_prefix(b"e").or_else(|| rest.strip_prefix(b"E")) {
        let r = r
            .strip_prefix(b"+")
            .or_else(|| r.strip_prefix(b"-"))
            .unwrap_or(r);
        let n = r.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return false;
        }
        rest = &r[n..];
    }
    rest.is_empty()
}

/// The significant digits of a JSON number's mantissa (leading and trailing
/// zeros do not count).
fn significant_digits(text: &str) -> usize {
    let mantissa = text.split(['e', 'E']).next().unwrap_or(text);
    let digits: Vec<u8> = mantissa.bytes().filter(u8::is_ascii_digit).collect();
    let start = digits.iter().position(|&d| d != b'0');
    let end = digits.iter().rposition(|&d| d != b'0');
    match (start, end) {
        (Some(s), Some(e)) => e - s + 1,
        _ => 0,
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

/// `n` as an integer when it is whole and within `i64`: numbers are written
/// without a fraction then, every digit exact (an id of 2^60 prints as its
/// 19 digits, not as `1.152921504606847e18`).
fn whole(n: f64) -> Option<i64> {
    // 2^63 is exact in f64; below it every whole f64 fits in an i64.
    (n.is_finite() && n.fract() == 0.0 && n.abs() < 9_223_372_036_854_775_808.0).then_some(n as i64)
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
            Value::NumText(t) => f.write_str(t),
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
    /// A number's text ([`Value::NumText`]).
    NumText(CompactString),
}

impl From<&Value> for ValueKey {
    fn from(v: &Value) -> Self {
        match v {
            Value::Null => ValueKey::Null,
            Value::Bool(b) => ValueKey::Bool(*b),
            Value::Num(n) => ValueKey::Num(if *n == 0.0 { 0 } else { n.to_bits() }),
            Value::Str(s) => ValueKey::Str(s.clone()),
            Value::NumText(t) => ValueKey::NumText(t.clone()),
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
            ValueKey::NumText(t) => Value::NumText(t.clone()),
        }
    }
}

impl fmt::Display for ValueKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueKey::Null => f.write_str("null"),
            ValueKey::Bool(b) => write!(f, "{b}"),
            ValueKey::Num(bits) => write!(f, "{}", json_number(f64::from_bits(*bits))),
            ValueKey::Str(s) | ValueKey::NumText(s) => f.write_str(s),
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

    #[test]
    fn numbers_keep_their_identity() {
        let num = |t: &str| Value::exact_number(t).unwrap();
        // Neighbours beyond 2^53 stay apart, as text, and print as read.
        let (a, b) = (num("9007199254740992"), num("9007199254740993"));
        assert_eq!(a, Value::Num(9_007_199_254_740_992.0));
        assert_eq!(b, Value::NumText("9007199254740993".into()));
        assert!(!a.loose_eq(&b) && ValueKey::from(&a) != ValueKey::from(&b));
        assert_eq!(
            (a.to_string(), b.to_string()),
            ("9007199254740992".into(), "9007199254740993".into())
        );
        assert_eq!(b.to_json().to_string(), "9007199254740993");
        assert_eq!(
            num("18446744073709551615").to_json().to_string(),
            "18446744073709551615"
        );
        assert_eq!(
            num("-9223372036854775807"),
            Value::NumText("-9223372036854775807".into())
        );
        assert_eq!(
            num("1152921504606846976").to_string(),
            "1152921504606846976"
        );
        // Decimals: 15 significant digits are told apart by f64, more are kept.
        assert_eq!(num("12.5"), Value::Num(12.5));
        assert_eq!(num("1.00000000000000000000"), Value::Num(1.0));
        assert_eq!(
            num("1.00000000000000000001"),
            Value::NumText("1.00000000000000000001".into())
        );
        assert_eq!(num("1e400"), Value::NumText("1e400".into()));
        assert!(num("1.00000000000000000001").as_f64() == Some(1.0));
        assert!(num("9007199254740993").partial_order(&Value::Num(1.0)) == Some(Ordering::Greater));
        // Short integers (read in one pass) as the general reading has them.
        for (text, n) in [
            ("0", 0.0),
            ("-0", 0.0),
            ("7", 7.0),
            ("-42", -42.0),
            ("999999999999999", 999_999_999_999_999.0),
            ("-999999999999999", -999_999_999_999_999.0),
            ("1000000000000000", 1e15),
            ("9007199254740991", 9_007_199_254_740_991.0),
        ] {
            let v = num(text);
            assert!(
                matches!(v, Value::Num(x) if x == n && x.is_sign_positive() == (n >= 0.0)),
                "{text}: {v:?}"
            );
        }
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = (x % 2_000_000_000_000_000) as i64 - 1_000_000_000_000_000;
            let scaled = n / 10i64.pow((x >> 60) as u32 % 16);
            assert_eq!(
                num(&scaled.to_string()),
                Value::Num(scaled as f64),
                "{scaled}"
            );
        }
        for bad in [
            "", "-", "01", "-01", "00", "1.", ".5", "+1", "1e", "inf", "NaN", "1_0", " 1", "1 ",
            "--1", "1-",
        ] {
            assert_eq!(Value::exact_number(bad), None, "{bad:?}");
        }
    }
}
