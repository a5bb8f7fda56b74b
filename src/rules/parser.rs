//! The parser: tokens to a [`FileAst`]. Recovers at clause and item
//! boundaries so one pass reports every syntax error in a file.

use super::ast::*;
use super::diag::{Diagnostic, Span};
use super::lexer::{Tok, Token, lex};

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
                        && ["rule", "features", "stream", "example", "model"]
                            .contains(&s.as_str()) =>
                {
                    return;
                }
                _ => {}
            }
            self.bump();
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
                _ => {
                    let _: PResult<()> =
                        self.error("`rule`, `features`, `model`, `stream` or `example`");
                    self.bump();
                    self.skip_item(0);
                }
            }
        }
        ast
    }

    fn rule(&mut self) -> PResult<RuleAst> {
        self.rule_block(false)
    }

    /// `model NAME from "PATH"`.
    fn model(&mut self) -> PResult<ModelAst> {
        self.bump();
        let name = self.ident("a model name")?;
        if !self.eat_kw("from") {
            return self.error("`from \"FILE.onnx\"`");
        }
        match self.peek().clone() {
            Tok::Str(path) => {
                let span = self.bump().span;
                Some(ModelAst {
                    name,
                    path: (path, span),
                })
            }
            _ => self.error("the model file as a string (`\"models/fraud.onnx\"`)"),
        }
    }

    /// `features NAME { key FIELD  stream NAME  description "…"  NAME = EXPR … }`:
    /// a rule whose pattern takes every event and whose payload is the
    /// feature vector.
    fn features(&mut self) -> PResult<RuleAst> {
        self.rule_block(true)
    }

    /// A `rule` or `features` block: its name, then its clauses up to the
    /// closing brace, recovering at clause boundaries.
    fn rule_block(&mut self, features: bool) -> PResult<RuleAst> {
        let (what, named) = if features {
            ("feature set", "a feature set name")
        } else {
            ("rule", "a rule name")
        };
        let start = self.bump().span;
        let Some(name) = self.name(named) else {
            self.skip_item(0);
            return None;
        };
        if self.expect_sym("{").is_none() {
            self.skip_item(0);
            return None;
        }
        let level = self.braces;
        let pattern = features.then(|| every_event(name.span));
        let mut r = RuleAst {
            name,
            key: None,
            stream: None,
            description: None,
            severity: None,
            score: None,
            notify: Vec::new(),
            within: None,
            skip: None,
            report_timeouts: false,
            inclusive_aggregates: false,
            pattern,
            payload: Vec::new(),
            features,
            span: start,
        };
        loop {
            if self.is_sym("}") {
                r.span = start.to(self.bump().span);
                return Some(r);
            }
            if matches!(self.peek(), Tok::Eof) {
                self.error::<()>(&format!("`}}` to close the {what}"));
                return Some(r);
            }
            let at = self.pos;
            if features {
                if self.feature_clause(&mut r).is_none() {
                    self.sync_feature(level);
                }
            } else if self.rule_clause(&mut r).is_none() {
                self.sync_clause(RULE_CLAUSES, level);
            }
            if self.pos == at {
                self.bump();
            }
            if !(features && self.eat_sym(",")) {
                self.eat_sym(";");
            }
        }
    }

    fn feature_clause(&mut self, r: &mut RuleAst) -> PResult<()> {
        // `key`, `stream` and `description` are clauses as in a rule, unless
        // they name a feature (`key = …`).
        let clause = ["key", "stream", "description"]
            .iter()
            .any(|kw| self.is_kw(kw))
            && !matches!(self.peek_at(1), Tok::Sym("=") | Tok::Sym(":"));
        if clause {
            return self.rule_clause(r);
        }
        let name = self.ident("a feature name (`NAME = EXPRESSION`) or `key FIELD`")?;
        if !self.eat_sym("=") && !self.eat_sym(":") {
            return self.error("`=`");
        }
        let e = self.expr()?;
        r.payload.push((name, e));
        Some(())
    }

    /// Recovery inside a feature set: skips to the next `NAME =` or
    /// clause keyword at its level, or to its closing brace (not consumed).
    fn sync_feature(&mut self, level: i32) {
        loop {
            match self.peek() {
                Tok::Eof => return,
                Tok::Sym("}") if self.braces <= level => return,
                Tok::Ident(s) if self.braces == level => {
                    let clause = ["key", "stream", "description"].contains(&s.as_str());
                    if clause || matches!(self.peek_at(1), Tok::Sym("=")) {
                        return;
                    }
                }
                _ => {}
            }
            self.bump();
        }
    }

    fn rule_clause(&mut self, r: &mut RuleAst) -> PResult<()> {
        let kw_span = self.span();
        let kw = match self.peek() {
            Tok::Ident(s) => s.clone(),
            _ => {
                return self
                    .error("a rule clause (pattern, within, severity, score, key, skip, payload)");
            }
        };
        let owner = if r.features { "feature set" } else { "rule" };
        let dup = |this: &mut Self, seen: bool| {
            if seen {
                this.errors.push(Diagnostic::error(
                    kw_span,
                    format!("`{kw}` is given twice in this {owner}"),
                ));
            }
        };
        match kw.as_str() {
            "key" => {
                self.bump();
                dup(self, r.key.is_some());
                r.key = Some(self.path()?);
            }
            "stream" => {
                self.bump();
                r.stream = Some(self.ident("a stream name")?);
            }
            "description" => {
                self.bump();
                match self.peek().clone() {
                    Tok::Str(s) | Tok::Block(s) => {
                        self.bump();
                        r.description = Some(s);
                    }
                    _ => return self.error("a string"),
                }
            }
            "severity" => {
                self.bump();
                dup(self, r.severity.is_some());
                let id = self.ident("a severity")?;
                let sev = match id.name.as_str() {
                    "low" => Severity::Low,
                    "medium" => Severity::Medium,
                    "high" => Severity::High,
                    "critical" => Severity::Critical,
                    _ => {
                        self.errors.push(
                            Diagnostic::error(id.span, format!("unknown severity `{}`", id.name))
                                .with_hint("use low, medium, high or critical"),
                        );
                        return Some(());
                    }
                };
                r.severity = Some((sev, id.span));
            }
            "notify" => {
                self.bump();
                dup(self, !r.notify.is_empty());
                loop {
                    let name = self.name("a webhook endpoint's name")?;
                    if name.name.is_empty()
                        || !name
                            .name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                    {
                        self.errors.push(
                            Diagnostic::error(
                                name.span,
                                format!("`{}` is not an endpoint name", name.name),
                            )
                            .with_hint("endpoint names are letters, digits, `_` and `-`"),
                        );
                    }
                    r.notify.push(name);
                    if !self.eat_sym(",") {
                        break;
                    }
                }
            }
            "score" => {
                self.bump();
                dup(self, r.score.is_some());
                let neg = self.eat_sym("-");
                match self.peek().clone() {
                    Tok::Num(n) => {
                        let sp = self.bump().span;
                        r.score = Some((if neg { -n } else { n }, sp));
                    }
                    _ => return self.error("a number"),
                }
            }
            "within" => {
                self.bump();
                dup(self, r.within.is_some());
                r.within = Some(self.duration("a duration")?);
            }
            "skip" => {
                self.bump();
                dup(self, r.skip.is_some());
                let s = self.skip()?;
                r.skip = Some((s, kw_span.to(self.prev_span())));
            }
            "report" => {
                self.bump();
                if !self.eat_kw("timeouts") {
                    return self.error("`timeouts`");
                }
                r.report_timeouts = true;
            }
            "aggregates" => {
                self.bump();
                if !self.eat_kw("include") || !self.eat_kw("current") {
                    return self.error("`include current`");
                }
                r.inclusive_aggregates = true;
            }
            "pattern" => {
                self.bump();
                dup(self, r.pattern.is_some());
                let open = self.expect_sym("{")?;
                let stages = self.stages("}")?;
                let close = self.expect_sym("}")?;
                r.pattern = Some(PatternAst {
                    stages,
                    span: open.to(close),
                });
            }
            "payload" => {
                self.bump();
                self.expect_sym("{")?;
                while !self.is_sym("}") {
                    if matches!(self.peek(), Tok::Eof) {
                        return self.error("`}`");
                    }
                    let name = self.ident("a payload name")?;
                    if !self.eat_sym("=") && !self.eat_sym(":") {
                        return self.error("`=`");
                    }
                    let e = self.expr()?;
                    r.payload.push((name, e));
                    if !self.eat_sym(",") {
                        self.eat_sym(";");
                    }
                }
                self.bump();
            }
            _ => {
                let d = Diagnostic::error(kw_span, format!("unknown rule clause `{kw}`"));
                let d = match super::diag::suggest(&kw, RULE_CLAUSES.iter().copied()) {
                    Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                    None => d.with_hint(format!("clauses are: {}", RULE_CLAUSES.join(", "))),
                };
                self.errors.push(d);
                return None;
            }
        }
        Some(())
    }

    fn skip(&mut self) -> PResult<SkipAst> {
        if self.eat_kw("none") || self.eat_kw("no_skip") {
            return Some(SkipAst::NoSkip);
        }
        if self.eat_kw("past") {
            if !self.eat_kw("last") {
                return self.error("`last`");
            }
            self.eat_kw("event");
            return Some(SkipAst::PastLast);
        }
        if self.eat_kw("to") {
            if self.eat_kw("next") {
                return Some(SkipAst::ToNext);
            }
            let first = if self.eat_kw("first") {
                true
            } else if self.eat_kw("last") {
                false
            } else {
                let word = match self.peek() {
                    Tok::Ident(w) => Some(w.clone()),
                    _ => None,
                };
                let r = self.error("`next`, `first STAGE` or `last STAGE`");
                if let Some(s) =
                    word.and_then(|w| super::diag::suggest(&w, ["next", "first", "last"]))
                    && let Some(last) = self.errors.last_mut()
                {
                    last.hint = Some(format!("did you mean `{s}`?"));
                }
                return r;
            };
            let stage = self.ident("a stage name")?;
            let strict = if self.eat_kw("or") {
                if !self.eat_kw("fail") {
                    return self.error("`fail`");
                }
                true
            } else {
                false
            };
            return Some(if first {
                SkipAst::ToFirst(stage, strict)
            } else {
                SkipAst::ToLast(stage, strict)
            });
        }
        self.error("`none`, `to next`, `past last`, `to first STAGE` or `to last STAGE`")
    }

    fn stages(&mut self, close: &str) -> PResult<Vec<StageAst>> {
        self.nested(|p| p.stages_at_depth(close))
    }

    fn stages_at_depth(&mut self, close: &str) -> PResult<Vec<StageAst>> {
        let mut stages = Vec::new();
        let mut first = true;
        while !self.is_sym(close) {
            if matches!(self.peek(), Tok::Eof) {
                return self.error(&format!("`{close}`"));
            }
            let conn_span = self.span();
            let contiguity = if first {
                Contiguity::Relaxed
            } else if self.eat_kw("next") {
                Contiguity::Strict
            } else if self.eat_kw("then") {
                if self.eat_kw("any") {
                    Contiguity::Any
                } else {
                    Contiguity::Relaxed
                }
            } else if self.is_kw("not") && (self.is_kw_at(1, "next") || self.is_kw_at(1, "then")) {
                self.bump();
                if self.eat_kw("next") {
                    Contiguity::NotNext
                } else {
                    self.bump();
                    Contiguity::NotFollow
                }
            } else {
                let r = self.error(
                    "`next`, `then`, `then any`, `not next` or `not then` before the next stage",
                );
                if let Some(last) = self.errors.last_mut()
                    && matches!(self.toks[self.pos].tok, Tok::Ident(_))
                {
                    last.hint = Some(
                        "a stage's condition ended here; start the next stage with a connector"
                            .into(),
                    );
                }
                return r;
            };
            let conn_span = conn_span.to(self.prev_span());
            let stage = self.stage(contiguity, conn_span)?;
            stages.push(stage);
            first = false;
        }
        if stages.is_empty() {
            let sp = self.span();
            self.errors
                .push(Diagnostic::error(sp, "a pattern needs at least one stage"));
            return None;
        }
        Some(stages)
    }

    fn stage(&mut self, contiguity: Contiguity, contiguity_span: Span) -> PResult<StageAst> {
        let name = self.ident("a stage name")?;
        self.expect_sym(":")?;
        let body = if self.is_sym("(")
            && matches!(self.peek_at(1), Tok::Ident(_) | Tok::Quoted(_))
            && matches!(self.peek_at(2), Tok::Sym(":"))
        {
            let open = self.bump().span;
            let stages = self.stages(")")?;
            let close = self.expect_sym(")")?;
            StageBody::Group(PatternAst {
                stages,
                span: open.to(close),
            })
        } else {
            StageBody::Cond(self.expr()?)
        };
        let mut q = QuantAst::default();
        loop {
            let sp = self.span();
            if self.eat_kw("repeat") {
                let (lo, _) = self.count("a repeat count")?;
                let hi = if self.eat_sym("..") {
                    match self.peek() {
                        Tok::Num(_) => Some(self.count("an upper bound")?.0),
                        _ => None,
                    }
                } else {
                    Some(lo)
                };
                q.repeat = Some((lo, hi, sp.to(self.prev_span())));
            } else if self.eat_kw("optional") {
                q.optional = Some(sp);
            } else if self.eat_kw("greedy") {
                q.greedy = Some(sp);
            } else if self.eat_kw("consecutive") {
                q.inner = Some((Contiguity::Strict, sp));
            } else if self.eat_kw("combinations") {
                q.inner = Some((Contiguity::Any, sp));
            } else if self.eat_kw("until") {
                q.until = Some(self.expr()?);
            } else if self.eat_kw("gap") {
                q.gap = Some(self.duration("a duration")?);
            } else {
                break;
            }
        }
        let span = name.span.to(self.prev_span());
        Some(StageAst {
            name,
            contiguity,
            contiguity_span,
            body,
            quant: q,
            span,
        })
    }

    fn stream(&mut self) -> PResult<StreamAst> {
        self.bump();
        let Some(name) = self.name("a stream name") else {
            self.skip_item(0);
            return None;
        };
        if self.expect_sym("{").is_none() {
            self.skip_item(0);
            return None;
        }
        let level = self.braces;
        let mut s = StreamAst {
            name,
            key: None,
            time: None,
            event_type: None,
            time_format: None,
            lateness: None,
            idle: None,
            skew: None,
            clock_skew: None,
            fields: Vec::new(),
        };
        const CLAUSES: &[&str] = &[
            "key", "time", "type", "lateness", "idle", "skew", "clock", "fields",
        ];
        loop {
            if self.eat_sym("}") {
                return Some(s);
            }
            if matches!(self.peek(), Tok::Eof) {
                self.error::<()>("`}`");
                return Some(s);
            }
            let ok = (|| -> PResult<()> {
                if self.eat_kw("key") {
                    s.key = Some(self.path()?);
                } else if self.eat_kw("time") {
                    if self.eat_kw("format") {
                        let id = self.ident("auto, epoch_ms or epoch_s")?;
                        s.time_format = Some((id.name, id.span));
                    } else {
                        s.time = Some(self.path()?);
                    }
                } else if self.eat_kw("type") {
                    s.event_type = Some(self.path()?);
                } else if self.eat_kw("lateness") {
                    s.lateness = Some(self.duration("a duration")?);
                } else if self.eat_kw("idle") {
                    s.idle = Some(self.duration("a duration")?);
                } else if self.eat_kw("skew") {
                    let at = self.span();
                    s.skew = Some(if self.eat_kw("none") {
                        (0, at)
                    } else {
                        self.duration("a duration or `none`")?
                    });
                } else if self.eat_kw("clock") {
                    if !self.eat_kw("skew") {
                        return self.error("`skew` (as in `clock skew 5m`)");
                    }
                    s.clock_skew = Some(self.duration("a duration")?);
                } else if self.eat_kw("fields") {
                    s.fields.push(self.path()?);
                    while self.eat_sym(",") {
                        s.fields.push(self.path()?);
                    }
                } else {
                    return self
                        .error("key, time, type, lateness, idle, skew, clock skew or fields");
                }
                Some(())
            })();
            if ok.is_none() {
                let at = self.pos;
                self.sync_clause(CLAUSES, level);
                if self.pos == at {
                    self.bump();
                }
            }
            self.eat_sym(";");
        }
    }

    fn example(&mut self) -> PResult<ExampleAst> {
        self.bump();
        let Some(name) = self.name("an example name") else {
            self.skip_item(0);
            return None;
        };
        if self.expect_sym("{").is_none() {
            self.skip_item(0);
            return None;
        }
        let level = self.braces;
        let mut ex = ExampleAst {
            name,
            events: None,
            expect: Vec::new(),
        };
        loop {
            if self.eat_sym("}") {
                return Some(ex);
            }
            if matches!(self.peek(), Tok::Eof) {
                self.error::<()>("`}`");
                return Some(ex);
            }
            let ok = (|| -> PResult<()> {
                if self.eat_kw("events") {
                    match self.peek().clone() {
                        Tok::Block(b) | Tok::Str(b) => {
                            let sp = self.bump().span;
                            ex.events = Some((b, sp));
                        }
                        _ => return self.error("a \"\"\" block of JSON events, one per line"),
                    }
                } else if self.eat_kw("expect") {
                    let rule = self.name("a rule name")?;
                    let (n, _) = self.count("an alert count")?;
                    ex.expect.push((rule, n as u64));
                } else {
                    return self.error("`events` or `expect`");
                }
                Some(())
            })();
            if ok.is_none() {
                let at = self.pos;
                self.sync_clause(&["events", "expect"], level);
                if self.pos == at {
                    self.bump();
                }
            }
        }
    }

    // ---- expressions ----

    /// Runs `f` one nesting level deeper, refusing input nested past
    /// [`MAX_DEPTH`] instead of letting it exhaust the stack.
    fn nested<T>(&mut self, f: impl FnOnce(&mut Self) -> PResult<T>) -> PResult<T> {
        self.depth += 1;
        let r = if self.depth > MAX_DEPTH {
            self.error("less deeply nested input")
        } else {
            f(self)
        };
        self.depth -= 1;
        r
    }

    fn expr(&mut self) -> PResult<Expr> {
        self.nested(Self::or_expr)
    }

    /// A prefix operator applied to what `operand` parses.
    fn prefix(&mut self, op: UnOp, operand: fn(&mut Self) -> PResult<Expr>) -> PResult<Expr> {
        let sp = self.bump().span;
        let e = self.nested(operand)?;
        let span = sp.to(e.span);
        Some(Expr {
            kind: ExprKind::Unary(op, Box::new(e)),
            span,
        })
    }

    fn or_expr(&mut self) -> PResult<Expr> {
        let mut l = self.and_expr()?;
        while self.eat_kw("or") {
            let r = self.and_expr()?;
            l = bin(BinOp::Or, l, r);
        }
        Some(l)
    }

    fn and_expr(&mut self) -> PResult<Expr> {
        let mut l = self.not_expr()?;
        while self.eat_kw("and") {
            let r = self.not_expr()?;
            l = bin(BinOp::And, l, r);
        }
        Some(l)
    }

    fn not_expr(&mut self) -> PResult<Expr> {
        if self.is_kw("not") && !self.is_kw_at(1, "next") && !self.is_kw_at(1, "then") {
            return self.prefix(UnOp::Not, Self::not_expr);
        }
        self.cmp_expr()
    }

    fn cmp_expr(&mut self) -> PResult<Expr> {
        let l = self.add_expr()?;
        let op = match self.peek() {
            Tok::Sym("==") => Some(BinOp::Eq),
            Tok::Sym("!=") => Some(BinOp::Ne),
            Tok::Sym("<") => Some(BinOp::Lt),
            Tok::Sym("<=") => Some(BinOp::Le),
            Tok::Sym(">") => Some(BinOp::Gt),
            Tok::Sym(">=") => Some(BinOp::Ge),
            Tok::Sym("=") => {
                let sp = self.span();
                self.errors.push(
                    Diagnostic::error(sp, "`=` is not a comparison")
                        .with_hint("use `==` to compare"),
                );
                return None;
            }
            _ => None,
        };
        if let Some(op) = op {
            self.bump();
            let r = self.add_expr()?;
            return Some(bin(op, l, r));
        }
        let negated = self.is_kw("not") && self.is_kw_at(1, "in");
        if negated {
            self.bump();
        }
        if self.eat_kw("in") {
            self.expect_sym("[")?;
            let mut items = Vec::new();
            while !self.is_sym("]") {
                items.push(self.expr()?);
                if !self.eat_sym(",") {
                    break;
                }
            }
            let close = self.expect_sym("]")?;
            let span = l.span.to(close);
            return Some(Expr {
                kind: ExprKind::In(Box::new(l), items, negated),
                span,
            });
        }
        if self.eat_kw("matches") {
            match self.peek().clone() {
                Tok::Str(re) => {
                    let sp = self.bump().span;
                    let span = l.span.to(sp);
                    return Some(Expr {
                        kind: ExprKind::Matches(Box::new(l), re, sp),
                        span,
                    });
                }
                _ => return self.error("a regular expression in quotes"),
            }
        }
        if self.eat_kw("is") {
            let not = self.eat_kw("not");
            if !self.eat_kw("null") {
                return self.error("`null`");
            }
            let span = l.span.to(self.prev_span());
            return Some(Expr {
                kind: ExprKind::IsNull(Box::new(l), !not),
                span,
            });
        }
        Some(l)
    }

    fn add_expr(&mut self) -> PResult<Expr> {
        let mut l = self.mul_expr()?;
        loop {
            let op = match self.peek() {
                Tok::Sym("+") => BinOp::Add,
                Tok::Sym("-") => BinOp::Sub,
                _ => return Some(l),
            };
            self.bump();
            let r = self.mul_expr()?;
            l = bin(op, l, r);
        }
    }

    fn mul_expr(&mut self) -> PResult<Expr> {
        let mut l = self.unary_expr()?;
        loop {
            let op = match self.peek() {
                Tok::Sym("*") => BinOp::Mul,
                Tok::Sym("/") => BinOp::Div,
                Tok::Sym("%") => BinOp::Rem,
                _ => return Some(l),
            };
            self.bump();
            let r = self.unary_expr()?;
            l = bin(op, l, r);
        }
    }

    fn unary_expr(&mut self) -> PResult<Expr> {
        if self.is_sym("-") {
            return self.prefix(UnOp::Neg, Self::unary_expr);
        }
        self.postfix_expr()
    }

    fn postfix_expr(&mut self) -> PResult<Expr> {
        let e = self.primary()?;
        if matches!(e.kind, ExprKind::Call(_)) && self.is_sym(".") {
            let mut path = Vec::new();
            while self.eat_sym(".") {
                path.push(self.ident("a field name")?);
            }
            let span = e.span.to(self.prev_span());
            return Some(Expr {
                kind: ExprKind::Member(Box::new(e), path),
                span,
            });
        }
        Some(e)
    }

    fn primary(&mut self) -> PResult<Expr> {
        let sp = self.span();
        let kind = match self.peek().clone() {
            Tok::Num(n) => {
                self.bump();
                ExprKind::Num(n)
            }
            Tok::Dur(ms) => {
                self.bump();
                ExprKind::Num(ms as f64)
            }
            Tok::Str(s) => {
                self.bump();
                ExprKind::Str(s)
            }
            Tok::Sym("(") => {
                self.bump();
                let e = self.expr()?;
                let close = self.expect_sym(")")?;
                return Some(Expr {
                    kind: e.kind,
                    span: sp.to(close),
                });
            }
            Tok::Ident(s) if s.eq_ignore_ascii_case("true") => {
                self.bump();
                ExprKind::Bool(true)
            }
            Tok::Ident(s) if s.eq_ignore_ascii_case("false") => {
                self.bump();
                ExprKind::Bool(false)
            }
            Tok::Ident(s) if s.eq_ignore_ascii_case("null") => {
                self.bump();
                ExprKind::Null
            }
            Tok::Ident(_) if matches!(self.peek_at(1), Tok::Sym("(")) => return self.call(),
            Tok::Ident(_) | Tok::Quoted(_) => {
                let mut parts = vec![self.ident("a name")?];
                while self.is_sym(".") && matches!(self.peek_at(1), Tok::Ident(_) | Tok::Quoted(_))
                {
                    self.bump();
                    parts.push(self.ident("a field name")?);
                }
                let span = parts[0].span.to(parts[parts.len() - 1].span);
                return Some(Expr {
                    kind: ExprKind::Path(parts),
                    span,
                });
            }
            _ => return self.error("an expression"),
        };
        Some(Expr { kind, span: sp })
    }

    fn call(&mut self) -> PResult<Expr> {
        let mut name = self.ident("a function name")?;
        name.name = name.name.to_ascii_lowercase();
        self.expect_sym("(")?;
        let mut c = Call {
            name,
            args: Vec::new(),
            star: false,
            distinct: false,
            window: None,
        };
        if self.eat_sym("*") {
            c.star = true;
        } else {
            c.distinct =
                self.is_kw("distinct") && !matches!(self.peek_at(1), Tok::Sym(")") | Tok::Sym(","));
            if c.distinct {
                self.bump();
            }
            while !self.is_sym(")") && !self.is_kw("over") {
                c.args.push(self.expr()?);
                if !self.eat_sym(",") {
                    break;
                }
            }
        }
        if self.is_kw("over") {
            let over = self.bump().span;
            let w = if self.eat_kw("tumbling") {
                WindowAst::Tumbling(self.duration("a window width")?.0)
            } else if self.eat_kw("session") {
                WindowAst::Session(self.duration("a session gap")?.0)
            } else if self.eat_kw("decay") {
                WindowAst::Decay(self.duration("a half-life")?.0)
            } else {
                let (len, _) =
                    self.duration("a window length, `tumbling`, `session` or `decay`")?;
                if self.eat_kw("ending") {
                    let (ago, _) = self.duration("how long ago the window ends")?;
                    if !self.eat_kw("ago") {
                        return self.error("`ago`");
                    }
                    WindowAst::Ending(len, ago)
                } else {
                    WindowAst::Sliding(len)
                }
            };
            c.window = Some((w, over.to(self.prev_span())));
        }
        let close = self.expect_sym(")")?;
        let span = c.name.span.to(close);
        Some(Expr {
            kind: ExprKind::Call(Box::new(c)),
            span,
        })
    }
}

fn bin(op: BinOp, l: Expr, r: Expr) -> Expr {
    let span = l.span.to(r.span);
    Expr {
        kind: ExprKind::Binary(op, Box::new(l), Box::new(r)),
        span,
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
