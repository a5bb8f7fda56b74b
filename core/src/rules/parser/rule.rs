//! Rules, feature blocks and models: their clauses, skip strategies and
//! pattern stages.

use super::*;

impl Parser {
    pub(super) fn rule(&mut self) -> PResult<RuleAst> {
        self.rule_block(false)
    }

    /// `model NAME from "PATH" [candidate "PATH"]`.
    pub(super) fn model(&mut self) -> PResult<ModelAst> {
        self.bump();
        let name = self.ident("a model name")?;
        if !self.eat_kw("from") {
            return self.error("`from \"FILE.onnx\"`");
        }
        let path = self.model_file("the model file as a string (`\"models/fraud.onnx\"`)")?;
        let candidate = if self.eat_kw("candidate") {
            Some(self.model_file(
                "the candidate's model file as a string (`\"models/fraud.2018-04-24.onnx\"`)",
            )?)
        } else {
            None
        };
        Some(ModelAst {
            name,
            path,
            candidate,
        })
    }

    fn model_file(&mut self, expected: &str) -> PResult<(String, Span)> {
        match self.peek().clone() {
            Tok::Str(path) => Some((path, self.bump().span)),
            _ => self.error(expected),
        }
    }

    /// `features NAME { key FIELD  stream NAME  description "…"  NAME = EXPR … }`:
    /// a rule whose pattern takes every event and whose payload is the
    /// feature vector.
    pub(super) fn features(&mut self) -> PResult<RuleAst> {
        self.rule_block(true)
    }

    /// A `rule` or `features` block: its name, then its clauses up to the
    /// closing brace, recovering at clause boundaries.
    pub(super) fn rule_block(&mut self, features: bool) -> PResult<RuleAst> {
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
            suppress: None,
            shadow: None,
            report_timeouts: false,
            inclusive_aggregates: false,
            pattern,
            pattern_failed: false,
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

    pub(super) fn feature_clause(&mut self, r: &mut RuleAst) -> PResult<()> {
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
    pub(super) fn sync_feature(&mut self, level: i32) {
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

    pub(super) fn rule_clause(&mut self, r: &mut RuleAst) -> PResult<()> {
        let kw_span = self.span();
        let kw = match self.peek() {
            Tok::Ident(s) => s.clone(),
            _ => {
                return self
                    .error("a rule clause (pattern, within, severity, score, key, skip, suppress, mode, payload)");
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
            "mode" => {
                self.bump();
                dup(self, r.shadow.is_some());
                let id = self.ident("`live` or `shadow`")?;
                let shadow = match id.name.as_str() {
                    "shadow" => true,
                    "live" => false,
                    _ => {
                        self.errors.push(
                            Diagnostic::error(id.span, format!("unknown mode `{}`", id.name))
                                .with_hint("use `mode shadow` (alerts to the shadow topic only) or `mode live`"),
                        );
                        return Some(());
                    }
                };
                r.shadow = Some((shadow, kw_span.to(id.span)));
            }
            "suppress" => {
                self.bump();
                dup(self, r.suppress.is_some());
                r.suppress = Some(self.duration("a duration, as in `suppress 24h`")?);
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
                r.pattern_failed = true;
                let open = self.expect_sym("{")?;
                let stages = self.stages("}")?;
                let close = self.expect_sym("}")?;
                r.pattern = Some(PatternAst {
                    stages,
                    span: open.to(close),
                });
                r.pattern_failed = false;
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
                let d = match crate::rules::diag::suggest(&kw, RULE_CLAUSES.iter().copied()) {
                    Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                    None => d.with_hint(format!("clauses are: {}", RULE_CLAUSES.join(", "))),
                };
                self.errors.push(d);
                return None;
            }
        }
        Some(())
    }

    pub(super) fn skip(&mut self) -> PResult<SkipAst> {
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
                    word.and_then(|w| crate::rules::diag::suggest(&w, ["next", "first", "last"]))
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

    pub(super) fn stages(&mut self, close: &str) -> PResult<Vec<StageAst>> {
        self.nested(|p| p.stages_at_depth(close))
    }

    pub(super) fn stages_at_depth(&mut self, close: &str) -> PResult<Vec<StageAst>> {
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

    pub(super) fn stage(
        &mut self,
        contiguity: Contiguity,
        contiguity_span: Span,
    ) -> PResult<StageAst> {
        let name = self.ident("a stage name")?;
        self.expect_sym(":")?;
        // `STREAM where COND`: an identifier followed by `where` cannot
        // start an expression, so the prefix is unambiguous.
        let stream = if matches!(self.peek(), Tok::Ident(_)) && self.is_kw_at(1, "where") {
            let s = self.ident("a stream name")?;
            self.bump();
            Some(s)
        } else {
            None
        };
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
            stream,
            contiguity,
            contiguity_span,
            body,
            quant: q,
            span,
        })
    }
}
