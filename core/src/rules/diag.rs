//! Diagnostics: an error with `file:line:col`, the source line, a caret under
//! the offending span, and an optional hint.

use std::fmt;
use std::sync::Arc;

/// A byte range in one source file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Span {
    /// Index of the file in the [`SourceMap`].
    pub file: u32,
    /// First byte.
    pub start: u32,
    /// One past the last byte.
    pub end: u32,
}

impl Span {
    /// A span from `start` to `end` in `file`.
    pub fn new(file: u32, start: usize, end: usize) -> Span {
        Span {
            file,
            start: start as u32,
            end: end.max(start) as u32,
        }
    }

    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span {
            file: self.file,
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
}

/// One source file.
#[derive(Debug)]
pub struct Source {
    /// Display name (usually the path).
    pub name: String,
    /// The text.
    pub text: String,
}

/// The source files of one compilation, for rendering diagnostics.
#[derive(Clone, Debug, Default)]
pub struct SourceMap {
    files: Vec<Arc<Source>>,
}

impl SourceMap {
    /// Adds a file and returns its index.
    pub fn add(&mut self, name: impl Into<String>, text: impl Into<String>) -> u32 {
        self.files.push(Arc::new(Source {
            name: name.into(),
            text: text.into(),
        }));
        (self.files.len() - 1) as u32
    }

    /// The file with index `i`.
    pub fn get(&self, i: u32) -> &Source {
        &self.files[i as usize]
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, file: u32, offset: u32) -> (usize, usize) {
        let text = &self.get(file).text;
        let offset = (offset as usize).min(text.len());
        let before = &text[..floor_char_boundary(text, offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// A compile error in a rule file.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    /// Where.
    pub span: Span,
    /// What is wrong.
    pub message: String,
    /// How to fix it, when known.
    pub hint: Option<String>,
}

impl Diagnostic {
    /// An error at `span`.
    pub fn error(span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            span,
            message: message.into(),
            hint: None,
        }
    }

    /// Adds a hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Diagnostic {
        self.hint = Some(hint.into());
        self
    }

    /// Renders with the source line and a caret.
    pub fn render(&self, sources: &SourceMap) -> String {
        let src = sources.get(self.span.file);
        let (line, col) = sources.line_col(self.span.file, self.span.start);
        let line_text = src.text.lines().nth(line - 1).unwrap_or("");
        let width = {
            let (end_line, end_col) = sources.line_col(self.span.file, self.span.end);
            if end_line == line && end_col > col {
                end_col - col
            } else {
                1
            }
        };
        let gutter = line.to_string().len();
        let mut out = format!(
            "error: {}\n{:gutter$}--> {}:{}:{}\n{:gutter$} |\n{} | {}\n{:gutter$} | {}{}",
            self.message,
            "",
            src.name,
            line,
            col,
            "",
            line,
            line_text,
            "",
            " ".repeat(col - 1),
            "^".repeat(width),
        );
        if let Some(h) = &self.hint {
            out.push_str(&format!("\n{:gutter$} = hint: {}", "", h));
        }
        out
    }
}

/// All the diagnostics of a compilation, with the sources to render them.
#[derive(Clone, Debug)]
pub struct Diagnostics {
    /// The errors, in file order.
    pub errors: Vec<Diagnostic>,
    /// The sources they refer to.
    pub sources: SourceMap,
}

impl Diagnostics {
    /// `file:line:col: message` for each error, one per line (for logs and APIs).
    pub fn short(&self) -> Vec<String> {
        self.errors
            .iter()
            .map(|d| {
                let (l, c) = self.sources.line_col(d.span.file, d.span.start);
                format!(
                    "{}:{}:{}: {}",
                    self.sources.get(d.span.file).name,
                    l,
                    c,
                    d.message
                )
            })
            .collect()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            writeln!(f, "{}", d.render(&self.sources))?;
        }
        write!(
            f,
            "{} error{}",
            self.errors.len(),
            if self.errors.len() == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for Diagnostics {}

/// The closest candidate to `name` by edit distance, if close enough to be a
/// plausible typo.
pub fn suggest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| {
            (
                strsim::damerau_levenshtein(&name.to_lowercase(), &c.to_lowercase()),
                c,
            )
        })
        .filter(|(d, c)| *d <= (c.len().max(name.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_line_col_caret_and_hint() {
        let mut sm = SourceMap::default();
        let f = sm.add("r.tl", "rule x {\n  score abc\n}\n");
        let d = Diagnostic::error(Span::new(f, 17, 20), "expected a number")
            .with_hint("write `score 10`");
        let text = d.render(&sm);
        assert!(text.contains("--> r.tl:2:9"), "{text}");
        assert!(text.contains("2 |   score abc"), "{text}");
        assert!(text.contains("  |         ^^^"), "{text}");
        assert!(text.contains("hint: write `score 10`"), "{text}");
    }

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(suggest("smal", ["small", "large"]), Some("small"));
        assert_eq!(
            suggest("TX_AMOUT", ["TX_AMOUNT", "TX_FRAUD"]),
            Some("TX_AMOUNT")
        );
        assert_eq!(suggest("zzz", ["small", "large"]), None);
    }
}
