//! The parser: tokens to a [`FileAst`]. Recovers at clause and item
//! boundaries so one pass reports every syntax error in a file.

use super::ast::*;
use super::diag::{Diagnostic, Span};
use super::lexer::{Tok, Token, lex};

mod expr;
mod rule;
mod stream;

/// Nesting limit for expressions and groups: deeper input is rejected, not
/// allowed to exhaust the stack.
const MAX_DEPTH: usize = 64;

const RULE_CLAUSES: &[&str] = &[
    "key",
    "notify",
    "stream",
    "description",
    "severity",
    "score",
    "within",
    "skip",
    "suppress",
    "mode",
    "report",
    "aggregates",
    "pattern",
    "payload",
];

/// The one stage of a feature set's pattern: every event.
fn every_event(at: Span) -> PatternAst {
    let stage = StageAst {
        name: Ident {
            name: "event".into(),
            span: at,
        },
        stream: None,
        contiguity: Contiguity::Relaxed,
        contiguity_span: at,
        body: StageBody::Cond(Expr {
            kind: ExprKind::Bool(true),
            span: at,
        }),
        quant: QuantAst::default(),
        span: at,
    };
    PatternAst {
        stages: vec![stage],
        span: at,
    }
}

/// Parses one file. Returns the tree of what parsed and every syntax error.
pub fn parse_file(file: u32, text: &str) -> (FileAst, Vec<Diagnostic>) {
    let mut p = Parser {
        toks: lex(file, text),
        pos: 0,
        errors: Vec::new(),
        depth: 0,
        braces: 0,
    };
    let ast = p.file();
    (ast, p.errors)
}

/// Parses a standalone expression (used by tests and the REST API later).
pub fn parse_expr(file: u32, text: &str) -> Result<Expr, Vec<Diagnostic>> {
    let mut p = Parser {
        toks: lex(file, text),
        pos: 0,
        errors: Vec::new(),
        depth: 0,
        braces: 0,
    };
    let e = p.expr();
    if p.errors.is_empty() && !matches!(p.peek(), Tok::Eof) {
        let sp = p.span();
        p.errors.push(Diagnostic::error(
            sp,
            "unexpected input after the expression",
        ));
    }
    match e {
        Some(e) if p.errors.is_empty() => Ok(e),
        _ => Err(p.errors),
    }
}

struct Parser {
    toks: Vec<Token>,
    pos: usize,
    errors: Vec<Diagnostic>,
    depth: usize,
    /// `{` consumed minus `}` consumed: lets recovery stop at the right brace.
    braces: i32,
}

type PResult<T> = Option<T>;

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos].tok
    }
    fn peek_at(&self, n: usize) -> &Tok {
        &self.toks[(self.pos + n).min(self.toks.len() - 1)].tok
    }
    fn span(&self) -> Span {
        self.toks[self.pos].span
    }
    fn prev_span(&self) -> Span {
        self.toks[self.pos.saturating_sub(1)].span
    }
    fn bump(&mut self) -> Token {
        let t = self.toks[self.pos].clone();
        match t.tok {
            Tok::Sym("{") => self.braces += 1,
            Tok::Sym("}") => self.braces -= 1,
            _ => {}
        }
        if self.pos < self.toks.len() - 1 {
            self.pos += 1;
        }
        t
    }
    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Tok::Ident(s) if s.eq_ignore_ascii_case(kw))
    }
    fn is_kw_at(&self, n: usize, kw: &str) -> bool {
        matches!(self.peek_at(n), Tok::Ident(s) if s.eq_ignore_ascii_case(kw))
    }
    fn is_sym(&self, s: &str) -> bool {
        matches!(self.peek(), Tok::Sym(x) if *x == s)
    }
    fn eat_kw(&mut self, kw: &str) -> bool {
        if self.is_kw(kw) {
            self.bump();
            true
        } else {
            false
        }
    }
    fn eat_sym(&mut self, s: &str) -> bool {
        if self.is_sym(s) {
            self.bump();
            true
        } else {
            false
        }
    }

    fn describe(tok: &Tok) -> String {
        match tok {
            Tok::Ident(s) | Tok::Quoted(s) => format!("`{s}`"),
            Tok::Num(n) => format!("number {n}"),
            Tok::Dur(_) => "a duration".into(),
            Tok::Str(_) => "a string".into(),
            Tok::Block(_) => "a \"\"\" block".into(),
            Tok::Sym(s) => format!("`{s}`"),
            Tok::Bad(why) => why.clone(),
            Tok::Eof => "end of file".into(),
        }
    }

    fn error<T>(&mut self, expected: &str) -> PResult<T> {
        let sp = self.span();
        let found = Self::describe(self.peek());
        let mut d = Diagnostic::error(sp, format!("expected {expected}, found {found}"));
        if let Tok::Bad(why) = self.peek() {
            d = Diagnostic::error(sp, why.clone());
        } else if self.is_sym("=") && expected.contains("operator") {
            d = d.with_hint("use `==` to compare");
        } else if self.is_sym("&&") || self.is_sym("||") || self.is_sym("!") {
            d = d.with_hint("use `and`, `or`, `not`");
        }
        self.errors.push(d);
        None
    }

    fn expect_sym(&mut self, s: &str) -> PResult<Span> {
        if self.is_sym(s) {
            Some(self.bump().span)
        } else {
            self.error(&format!("`{s}`"))
        }
    }

    fn ident(&mut self, what: &str) -> PResult<Ident> {
        match self.peek().clone() {
            Tok::Ident(name) | Tok::Quoted(name) => {
                let span = self.bump().span;
                Some(Ident { name, span })
            }
            _ => self.error(what),
        }
    }

    /// A name: identifier, backquoted or quoted string.
    fn name(&mut self, what: &str) -> PResult<Ident> {
        if let Tok::Str(s) = self.peek().clone() {
            let span = self.bump().span;
            return Some(Ident { name: s, span });
        }
        self.ident(what)
    }

    fn path(&mut self) -> PResult<(String, Span)> {
        let first = self.ident("a field name")?;
        let mut s = first.name;
        let mut span = first.span;
        while self.is_sym(".") {
            self.bump();
            let next = self.ident("a field name after `.`")?;
            s.push('.');
            s.push_str(&next.name);
            span = span.to(next.span);
        }
        Some((s, span))
    }

    fn duration(&mut self, what: &str) -> PResult<(i64, Span)> {
        match self.peek().clone() {
            Tok::Dur(ms) => Some((ms, self.bump().span)),
            Tok::Num(_) => {
                let sp = self.span();
                self.errors.push(
                    Diagnostic::error(sp, format!("expected {what}, found a bare number"))
                        .with_hint("give a unit: 500ms, 10s, 5m, 2h, 30d, 1w"),
                );
                None
            }
            _ => self.error(what),
        }
    }

    fn count(&mut self, what: &str) -> PResult<(u32, Span)> {
        match self.peek().clone() {
            Tok::Num(n) if n >= 0.0 && n.fract() == 0.0 && n <= u32::MAX as f64 => {
                Some((n as u32, self.bump().span))
            }
            _ => self.error(what),
        }
    }

    /// Skips to the end of the current `{ ... }` item (depth 0 → after `}`).
    fn skip_item(&mut self, mut depth: i32) {
        loop {
            match self.peek() {
                Tok::Eof => return,
                Tok::Sym("{") => depth += 1,
                Tok::Sym("}") => {
                    depth -= 1;
                    if depth <= 0 {
                        self.bump();
                        return;
                    }
                }
                Tok::Ident(s)
                    if depth == 0
                        && [
                            "rule", "features", "stream", "example", "model", "list", "table",
                        ]
                        .contains(&s.as_str()) =>
                {
                    return;
                }
                _ => {}
            }
            self.bump();
        }
    }

    /// Reads the clauses of a `{ … }` block whose `{` was just read, up to
    /// its `}` (or the end of the file): `clause` reads one; after an
    /// error, reading goes on at the next of `names` that starts a line.
    /// With `semicolons`, a `;` may end a clause.
    fn block_clauses(
        &mut self,
        names: &[&str],
        semicolons: bool,
        mut clause: impl FnMut(&mut Parser) -> PResult<()>,
    ) {
        let level = self.braces;
        loop {
            if self.eat_sym("}") {
                return;
            }
            if matches!(self.peek(), Tok::Eof) {
                self.error::<()>("`}`");
                return;
            }
            if clause(self).is_none() {
                let at = self.pos;
                self.sync_clause(names, level);
                if self.pos == at {
                    self.bump();
                }
            }
            if semicolons {
                self.eat_sym(";");
            }
        }
    }

    /// Skips to the next clause keyword at brace level `level`, or to the
    /// `}` that closes that level (not consumed).
    fn sync_clause(&mut self, clauses: &[&str], level: i32) {
        loop {
            match self.peek() {
                Tok::Eof => return,
                Tok::Sym("}") if self.braces <= level => return,
                Tok::Ident(s) if self.braces == level && clauses.contains(&s.as_str()) => {
                    // A clause keyword at the start of a line begins a new clause.
                    let here = self.span().start as usize;
                    let prev_end = self.prev_span().end as usize;
                    let text_between_has_newline = self.pos > 0 && here > prev_end;
                    if text_between_has_newline {
                        return;
                    }
                }
                _ => {}
            }
            self.bump();
        }
    }

    fn file(&mut self) -> FileAst {
        let mut ast = FileAst::default();
        loop {
            match self.peek() {
                Tok::Eof => break,
                Tok::Ident(s) if s == "rule" => {
                    if let Some(r) = self.rule() {
                        ast.rules.push(r);
                    }
                }
                Tok::Ident(s) if s == "features" => {
                    if let Some(r) = self.features() {
                        ast.rules.push(r);
                    }
                }
                Tok::Ident(s) if s == "stream" => {
                    if let Some(s) = self.stream() {
                        ast.streams.push(s);
                    }
                }
                Tok::Ident(s) if s == "example" => {
                    if let Some(e) = self.example() {
                        ast.examples.push(e);
                    }
                }
                Tok::Ident(s) if s == "model" => match self.model() {
                    Some(m) => ast.models.push(m),
                    None => self.skip_item(0),
                },
                Tok::Ident(s) if s == "list" => {
                    self.bump();
                    match self.ident("a list name") {
                        Some(name) => ast.lists.push(name),
                        None => self.skip_item(0),
                    }
                }
                Tok::Ident(s) if s == "table" => {
                    if let Some(t) = self.table() {
                        ast.tables.push(t);
                    }
                }
                _ => {
                    let _: PResult<()> = self.error(
                        "`rule`, `features`, `model`, `list`, `table`, `stream` or `example`",
                    );
                    self.bump();
                    self.skip_item(0);
                }
            }
        }
        ast
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_takes_endpoint_names_only() {
        let src = "rule r {\n  notify \"a b\"\n  pattern { x: A > 1 }\n}";
        let (_, errs) = parse_file(0, src);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].message.contains("`a b` is not an endpoint name"),
            "{errs:?}"
        );
        assert_eq!(errs[0].span.start, 18, "points at the name");
    }

    /// `like` is the anchored regular expression it means, with every
    /// character but `%`, `_` and the escape taken literally.
    #[test]
    fn like_means_an_anchored_regular_expression() {
        let regex = |src: &str| match parse_expr(0, src).map(|e| e.kind) {
            Ok(ExprKind::Matches(_, re, _)) => re,
            other => panic!("{src}: {other:?}"),
        };
        let cases = [
            ("x like 'a%b_'", "(?s)^a.*b.$"),
            ("x like '1.5 (x)*'", r"(?s)^1\.5 \(x\)\*$"),
            ("x like '50!%!_!!' escape '!'", r"(?s)^50%_!$"),
        ];
        for (src, want) in cases {
            assert_eq!(regex(src), want, "{src}");
        }
        let negated = parse_expr(0, "x not like 'a%'").map(|e| e.kind);
        assert!(
            matches!(negated, Ok(ExprKind::Unary(UnOp::Not, ref m)) if matches!(m.kind, ExprKind::Matches(..))),
            "{negated:?}"
        );
    }

    #[test]
    fn parses_a_rule_with_every_clause() {
        let src = r#"
rule card_testing {
  key CUSTOMER_ID
  severity high
  score 40
  notify "fraud-desk", ops
  within 1h
  skip past last event
  pattern {
    small: TX_AMOUNT < 5 repeat 3.. consecutive greedy
    then large: TX_AMOUNT > 10 * max(small.TX_AMOUNT) and TERMINAL_ID not in [1, 2]
    not then refund: kind == "refund"
  }
  payload { total = sum(small.TX_AMOUNT) + large.TX_AMOUNT }
}"#;
        let (ast, errs) = parse_file(0, src);
        assert!(errs.is_empty(), "{errs:?}");
        let r = &ast.rules[0];
        assert_eq!(r.name.name, "card_testing");
        let notify: Vec<&str> = r.notify.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(notify, ["fraud-desk", "ops"]);
        assert_eq!(r.within.unwrap().0, 3_600_000);
        assert_eq!(r.skip.as_ref().unwrap().0, SkipAst::PastLast);
        let p = r.pattern.as_ref().unwrap();
        assert_eq!(p.stages.len(), 3);
        assert_eq!(
            p.stages[0].quant.repeat.map(|r| (r.0, r.1)),
            Some((3, None))
        );
        assert_eq!(p.stages[2].contiguity, Contiguity::NotFollow);
        assert_eq!(r.payload.len(), 1);
    }

    #[test]
    fn reports_several_errors_in_one_pass() {
        let src =
            "rule a {\n  score x\n  within 5\n  pattern { s: a = 1 }\n}\nrule b { sevrity high }\n";
        let (_, errs) = parse_file(0, src);
        assert_eq!(errs.len(), 4, "{errs:#?}");
        assert!(errs[1].hint.as_deref().unwrap().contains("unit"));
        assert!(errs[2].hint.as_deref().unwrap().contains("=="));
        assert!(errs[3].hint.as_deref().unwrap().contains("severity"));
    }

    #[test]
    fn groups_and_member_access() {
        let src = "rule g { pattern { a: x > 1 then g: (b: y == 'b' next c: true) repeat 2 then d: price == first(a).price } }";
        let (ast, errs) = parse_file(0, src);
        assert!(errs.is_empty(), "{errs:?}");
        let st = &ast.rules[0].pattern.as_ref().unwrap().stages;
        assert!(matches!(st[1].body, StageBody::Group(_)));
        assert!(
            matches!(&st[2].body, StageBody::Cond(Expr { kind: ExprKind::Binary(_, _, r), .. }) if matches!(r.kind, ExprKind::Member(..)))
        );
    }

    #[test]
    fn deep_nesting_is_rejected() {
        let src = format!(
            "rule d {{ pattern {{ a: {}1{} }} }}",
            "(".repeat(500),
            ")".repeat(500)
        );
        let (_, errs) = parse_file(0, &src);
        assert!(!errs.is_empty());
    }
}
