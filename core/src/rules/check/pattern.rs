//! Semantic checks of patterns: stage names, quantifiers and modifiers,
//! negations, skip strategies, and the estimate that bounds automaton size.

use super::*;

impl RuleChecker<'_> {
    pub(super) fn collect_stages(&mut self, stages: &[StageAst], absent: bool) {
        for s in stages {
            if let Some(prev) = self.stages.iter().find(|p| p.name == s.name.name) {
                let d = Diagnostic::error(
                    s.name.span,
                    format!("stage name `{}` is used twice", s.name.name),
                );
                let d = d.with_hint(format!(
                    "the first is at byte {}; stage names must be unique in a rule",
                    prev.span.start
                ));
                self.err(d);
            }
            let may_be_absent = absent
                || s.quant.optional.is_some()
                || s.quant.repeat.is_some_and(|r| r.0 == 0)
                || matches!(s.contiguity, Contiguity::NotNext | Contiguity::NotFollow);
            self.stages.push(StageInfo {
                name: s.name.name.clone(),
                span: s.name.span,
                negated: matches!(s.contiguity, Contiguity::NotNext | Contiguity::NotFollow),
                group: matches!(s.body, StageBody::Group(_)),
                may_be_absent,
            });
            if let StageBody::Group(g) = &s.body {
                self.collect_stages(&g.stages, may_be_absent);
            }
        }
    }

    pub(super) fn stage_id(&self, name: &str) -> Option<StageId> {
        self.stages
            .iter()
            .position(|s| s.name == name)
            .map(|i| i as StageId)
    }

    pub(super) fn pattern(
        &mut self,
        stages: &[StageAst],
        next_id: &mut u16,
        top: bool,
    ) -> Option<PatternDef> {
        let mut out = Vec::new();
        let mut ok = true;
        for (i, s) in stages.iter().enumerate() {
            let id = *next_id;
            *next_id += 1;
            let negated = matches!(s.contiguity, Contiguity::NotNext | Contiguity::NotFollow);
            if i == 0 && negated {
                self.err(Diagnostic::error(
                    s.contiguity_span,
                    "a pattern cannot start with a negation",
                ));
                ok = false;
            }
            let q = &s.quant;
            if negated {
                let extra = [
                    q.repeat.map(|r| r.2),
                    q.optional,
                    q.greedy,
                    q.inner.map(|i| i.1),
                    q.until.as_ref().map(|u| u.span),
                ];
                if let Some(sp) = extra.into_iter().flatten().next() {
                    self.err(
                        Diagnostic::error(sp, "a negated stage matches exactly one event")
                            .with_hint("remove repeat/optional/greedy/until from `not next`/`not then` stages"),
                    );
                    ok = false;
                }
                if matches!(s.body, StageBody::Group(_)) {
                    self.err(Diagnostic::error(
                        s.name.span,
                        "a negated stage cannot be a group",
                    ));
                    ok = false;
                }
                if !top && i + 1 == stages.len() {
                    self.err(Diagnostic::error(
                        s.contiguity_span,
                        "a group cannot end with a negation",
                    ));
                    ok = false;
                }
            }
            if let Some((_, sp)) = q.gap
                && i == 0
                && top
            {
                self.err(Diagnostic::error(
                    sp,
                    "the first stage has no previous stage to measure a gap from",
                ));
                ok = false;
            }
            // Resolve every part even when one fails, so all errors are reported.
            let quant = self.quant(s);
            // A condition sees the fields of its stage's stream; when the
            // rule reads several streams it also tests where the event
            // comes from.
            let rule_scope = std::mem::take(&mut self.scope);
            let stream = self.stage_stream(s);
            self.scope = vec![stream];
            let stream_slot = self.stream_slot;
            let from_stream = |c: CExpr| match stream_slot {
                Some(slot) if rule_scope.len() > 1 => {
                    let test = CExpr::Binary(
                        BinOp::Eq,
                        Box::new(CExpr::Field(slot)),
                        Box::new(CExpr::Lit(Value::Num(f64::from(stream)))),
                    );
                    CExpr::Binary(BinOp::And, Box::new(test), Box::new(c))
                }
                _ => c,
            };
            let until = match &q.until {
                Some(u) => {
                    if quant.is_some_and(|q| q.kind != QuantKind::Looping) {
                        self.err(
                            Diagnostic::error(u.span, "`until` applies only to open-ended repeats")
                                .with_hint("use `repeat N..` with `until`"),
                        );
                        ok = false;
                    }
                    self.expr(u, Ctx::Event).map(from_stream)
                }
                None => None,
            };
            let body = match &s.body {
                StageBody::Cond(e) => self
                    .expr(e, Ctx::Event)
                    .map(|c| StageBodyDef::Cond(from_stream(c))),
                StageBody::Group(g) => {
                    self.scope = rule_scope.clone();
                    self.pattern(&g.stages, next_id, false)
                        .map(StageBodyDef::Group)
                }
            };
            self.scope = rule_scope;
            let (Some(quant), Some(body)) = (quant, body) else {
                ok = false;
                continue;
            };
            out.push(StageDef {
                name: s.name.name.clone(),
                id,
                contiguity: s.contiguity,
                body,
                quant,
                until,
                gap: q.gap.map(|g| g.0),
            });
        }
        ok.then_some(PatternDef { stages: out })
    }

    pub(super) fn quant(&mut self, s: &StageAst) -> Option<QuantDef> {
        let q = &s.quant;
        let mut d = QuantDef::ONE;
        d.optional = q.optional.is_some();
        d.greedy = q.greedy.is_some();
        if let Some((lo, hi, sp)) = q.repeat {
            let mut lo = lo;
            if lo == 0 {
                if hi == Some(0) {
                    self.err(Diagnostic::error(sp, "`repeat 0` matches nothing"));
                    return None;
                }
                d.optional = true;
                lo = 1;
            }
            if let Some(h) = hi
                && h < lo
            {
                self.err(Diagnostic::error(
                    sp,
                    format!("repeat range {lo}..{h} is empty"),
                ));
                return None;
            }
            if lo > self.limits.max_repeat || hi.is_some_and(|h| h > self.limits.max_repeat) {
                self.err(Diagnostic::error(
                    sp,
                    format!(
                        "repeat counts above {} are not allowed",
                        self.limits.max_repeat
                    ),
                ));
                return None;
            }
            match hi {
                None => {
                    d.kind = QuantKind::Looping;
                    d.from = lo;
                    d.to = lo;
                }
                Some(h) if h == lo && h == 1 => {}
                Some(h) => {
                    d.kind = QuantKind::Times;
                    d.from = lo;
                    d.to = h;
                }
            }
        }
        if let Some((c, sp)) = q.inner {
            if d.kind == QuantKind::Single {
                self.err(
                    Diagnostic::error(sp, "`consecutive`/`combinations` apply to repeated stages")
                        .with_hint("add `repeat N..M`"),
                );
                return None;
            }
            d.inner = c;
        }
        if let Some(sp) = q.greedy
            && d.kind == QuantKind::Single
        {
            self.err(
                Diagnostic::error(sp, "`greedy` applies to repeated stages")
                    .with_hint("add `repeat N..`"),
            );
            return None;
        }
        Some(d)
    }

    pub(super) fn skip(&mut self, s: &SkipAst, sp: Span, pattern: &PatternDef) -> Option<SkipDef> {
        Some(match s {
            SkipAst::NoSkip => SkipDef::NoSkip,
            SkipAst::ToNext => SkipDef::ToNext,
            SkipAst::PastLast => SkipDef::PastLast,
            SkipAst::ToFirst(st, strict) | SkipAst::ToLast(st, strict) => {
                let first = matches!(s, SkipAst::ToFirst(..));
                let Some(id) = self.stage_id(&st.name) else {
                    let d = Diagnostic::error(st.span, format!("unknown stage `{}`", st.name));
                    let names: Vec<String> = self.stages.iter().map(|s| s.name.clone()).collect();
                    self.err(hint_closest(d, &st.name, names.iter().map(|s| s.as_str())));
                    return None;
                };
                let info = &self.stages[id as usize];
                if info.negated || info.group {
                    self.err(Diagnostic::error(
                        st.span,
                        "skip must name a stage that takes events (not a negation or group)",
                    ));
                    return None;
                }
                if *strict && info.may_be_absent {
                    self.err(
                        Diagnostic::error(st.span, format!("stage `{}` may be absent from a match", st.name))
                            .with_hint("`or fail` needs a stage present in every match; drop `or fail` to skip nothing when it is absent"),
                    );
                    return None;
                }
                // When the first stage takes part in a match, its first event
                // is the match's first: resuming there would find the same
                // match again (Flink fails such a query at run time).
                if first && pattern.stages.first().is_some_and(|f| f.id == id) {
                    self.err(
                        Diagnostic::error(
                            sp,
                            "skipping to the first event of the first stage never advances",
                        )
                        .with_hint("use `skip to next`"),
                    );
                    return None;
                }
                if first {
                    SkipDef::ToFirst(id, *strict)
                } else {
                    SkipDef::ToLast(id, *strict)
                }
            }
        })
    }
}

/// A rough upper bound on the automaton states a pattern compiles to.
pub(super) fn estimate_states(p: &PatternDef) -> usize {
    p.stages
        .iter()
        .map(|s| {
            let per = match &s.body {
                StageBodyDef::Cond(_) => 3,
                StageBodyDef::Group(g) => estimate_states(g) + 1,
            };
            let copies = match s.quant.kind {
                QuantKind::Single => 1,
                QuantKind::Times => s.quant.to as usize,
                QuantKind::Looping => s.quant.from as usize + 1,
            };
            per.saturating_mul(copies)
        })
        .fold(2usize, |a, b| a.saturating_add(b))
}
