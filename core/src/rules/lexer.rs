//! The lexer: rule-file text to tokens with spans. Never panics; a bad
//! character becomes an error token the parser reports.

use super::diag::Span;

/// A token kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    /// An identifier or keyword (`rule`, `TX_AMOUNT`), or a backquoted name.
    Ident(String),
    /// A backquoted identifier: never a keyword.
    Quoted(String),
    /// A number.
    Num(f64),
    /// A duration, in milliseconds (`10m`, `250ms`).
    Dur(i64),
    /// A string in single or double quotes.
    Str(String),
    /// A `"""` block string (leading and trailing blank lines removed).
    Block(String),
    /// Punctuation or an operator.
    Sym(&'static str),
    /// A character or literal the lexer cannot read, with the reason.
    Bad(String),
    /// End of input.
    Eof,
}

/// A token and where it is.
#[derive(Clone, Debug)]
pub struct Token {
    /// What it is.
    pub tok: Tok,
    /// Where it is.
    pub span: Span,
}

const SYMBOLS: &[&str] = &[
    "..", "==", "!=", "<=", ">=", "&&", "||", "->", "{", "}", "(", ")", "[", "]", ",", ":", ".",
    "+", "-", "*", "/", "%", "<", ">", "=", "!", ";", "?",
];

/// Duration units and their length in ms, longest first so `ms` wins over `m`.
const UNITS: &[(&str, i64)] = &[
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
    ("w", 604_800_000),
];

/// Parses a duration as written in rules (`250ms`, `10s`, `5m`, `2h`, `30d`,
/// `1w`) into milliseconds.
pub fn parse_duration(s: &str) -> Option<i64> {
    let toks = lex(0, s.trim());
    match toks.as_slice() {
        [
            Token {
                tok: Tok::Dur(ms), ..
            },
            Token { tok: Tok::Eof, .. },
        ] => Some(*ms),
        [
            Token {
                tok: Tok::Num(n), ..
            },
            Token { tok: Tok::Eof, .. },
        ] if *n == 0.0 => Some(0),
        _ => None,
    }
}

/// Splits `text` (file index `file`) into tokens, ending with `Eof`.
pub fn lex(file: u32, text: &str) -> Vec<Token> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'#' || (c == b'/' && b.get(i + 1) == Some(&b'/')) {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        let start = i;
        let tok = if c.is_ascii_alphabetic() || c == b'_' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            Tok::Ident(text[start..i].to_string())
        } else if c == b'`' {
            i += 1;
            while i < b.len() && b[i] != b'`' && b[i] != b'\n' {
                i += 1;
            }
            if i < b.len() && b[i] == b'`' {
                i += 1;
                Tok::Quoted(text[start + 1..i - 1].to_string())
            } else {
                Tok::Bad("unterminated backquoted name".into())
            }
        } else if c.is_ascii_digit() {
            lex_number(text, &mut i)
        } else if c == b'"' && text[i..].starts_with("\"\"\"") {
            match text[i + 3..].find("\"\"\"") {
                Some(end) => {
                    let body = &text[i + 3..i + 3 + end];
                    i += end + 6;
                    Tok::Block(trim_block(body))
                }
                None => {
                    i = b.len();
                    Tok::Bad("unterminated \"\"\" block".into())
                }
            }
        } else if c == b'"' || c == b'\'' {
            lex_string(text, &mut i, c)
        } else if let Some(s) = SYMBOLS.iter().find(|s| text[i..].starts_with(**s)) {
            i += s.len();
            Tok::Sym(s)
        } else {
            let ch = text[i..].chars().next().unwrap_or('?');
            i += ch.len_utf8();
            Tok::Bad(format!("unexpected character `{ch}`"))
        };
        out.push(Token {
            tok,
            span: Span::new(file, start, i),
        });
    }
    out.push(Token {
        tok: Tok::Eof,
        span: Span::new(file, b.len(), b.len()),
    });
    out
}

fn lex_number(text: &str, i: &mut usize) -> Tok {
    let b = text.as_bytes();
    let start = *i;
    while *i < b.len() && (b[*i].is_ascii_digit() || b[*i] == b'_') {
        *i += 1;
    }
    // A fraction needs a digit after the dot, so `1..5` stays a range.
    if *i + 1 < b.len() && b[*i] == b'.' && b[*i + 1].is_ascii_digit() {
        *i += 1;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
    }
    if *i < b.len() && (b[*i] == b'e' || b[*i] == b'E') {
        let mut j = *i + 1;
        if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
            j += 1;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            *i = j;
        }
    }
    let num: f64 = match text[start..*i].replace('_', "").parse() {
        Ok(n) => n,
        Err(_) => return Tok::Bad(format!("bad number `{}`", &text[start..*i])),
    };
    let unit_start = *i;
    while *i < b.len() && b[*i].is_ascii_alphabetic() {
        *i += 1;
    }
    if unit_start == *i {
        return Tok::Num(num);
    }
    let unit = &text[unit_start..*i];
    match UNITS.iter().find(|(u, _)| *u == unit) {
        Some((_, ms)) => {
            let v = num * *ms as f64;
            if v.is_finite() && v.abs() < 9.0e15 {
                Tok::Dur(v.round() as i64)
            } else {
                Tok::Bad("duration out of range".into())
            }
        }
        None => Tok::Bad(format!(
            "unknown duration unit `{unit}` (use ms, s, m, h, d or w)"
        )),
    }
}

fn lex_string(text: &str, i: &mut usize, quote: u8) -> Tok {
    let b = text.as_bytes();
    *i += 1;
    let mut s = String::new();
    while *i < b.len() {
        let c = b[*i];
        if c == quote {
            *i += 1;
            return Tok::Str(s);
        }
        if c == b'\n' {
            break;
        }
        if c == b'\\' && *i + 1 < b.len() {
            let e = b[*i + 1];
            let r = match e {
                b'n' => '\n',
                b't' => '\t',
                b'r' => '\r',
                b'\\' => '\\',
                b'\'' => '\'',
                b'"' => '"',
                _ => {
                    // Step over the whole escaped character: it may be multi-byte.
                    let ch = text[*i + 1..].chars().next().unwrap_or('?');
                    *i += 1 + ch.len_utf8();
                    return Tok::Bad(format!("unknown escape `\\{ch}`"));
                }
            };
            s.push(r);
            *i += 2;
            continue;
        }
        let ch = text[*i..].chars().next().unwrap_or('?');
        s.push(ch);
        *i += ch.len_utf8();
    }
    Tok::Bad("unterminated string".into())
}

fn trim_block(body: &str) -> String {
    let lines: Vec<&str> = body.lines().collect();
    let first = lines
        .iter()
        .position(|l| !l.trim().is_empty())
        .unwrap_or(lines.len());
    let last = lines
        .iter()
        .rposition(|l| !l.trim().is_empty())
        .map_or(first, |p| p + 1);
    lines[first..last]
        .iter()
        .map(|l| l.trim())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        lex(0, s).into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn lexes_numbers_durations_ranges_and_strings() {
        assert_eq!(
            toks("x >= 1.5 and 10m 250ms 2..4 'a\\'b' \"c\""),
            vec![
                Tok::Ident("x".into()),
                Tok::Sym(">="),
                Tok::Num(1.5),
                Tok::Ident("and".into()),
                Tok::Dur(600_000),
                Tok::Dur(250),
                Tok::Num(2.0),
                Tok::Sym(".."),
                Tok::Num(4.0),
                Tok::Str("a'b".into()),
                Tok::Str("c".into()),
                Tok::Eof
            ]
        );
    }

    #[test]
    fn comments_blocks_and_bad_input() {
        assert_eq!(
            toks("# c\n// d\n`odd name`"),
            vec![Tok::Quoted("odd name".into()), Tok::Eof]
        );
        assert_eq!(
            toks("\"\"\"\n  {\"a\":1}\n\"\"\""),
            vec![Tok::Block("{\"a\":1}".into()), Tok::Eof]
        );
        assert!(matches!(toks("'open")[0], Tok::Bad(_)));
        assert!(matches!(toks("5parsecs")[0], Tok::Bad(_)));
        assert!(matches!(toks("é")[0], Tok::Bad(_)));
        // An unknown escape of a multi-byte character (found by tests/no_panic.rs).
        assert!(matches!(toks("'\\é' x")[0], Tok::Bad(_)));
    }
}
