//! Expressions, by precedence climbing, with a nesting limit.

use super::*;

impl Parser {
    /// Runs `f` one nesting level deeper, refusing input nested past
    /// [`MAX_DEPTH`] instead of letting it exhaust the stack.
    pub(super) fn nested<T>(&mut self, f: impl FnOnce(&mut Self) -> PResult<T>) -> PResult<T> {
        self.depth += 1;
        let r = if self.depth > MAX_DEPTH {
            self.error("less deeply nested input")
        } else {
            f(self)
        };
        self.depth -= 1;
        r
    }

    pub(super) fn expr(&mut self) -> PResult<Expr> {
        self.nested(Self::or_expr)
    }

    /// A prefix operator applied to what `operand` parses.
    pub(super) fn prefix(
        &mut self,
        op: UnOp,
        operand: fn(&mut Self) -> PResult<Expr>,
    ) -> PResult<Expr> {
        let sp = self.bump().span;
        let e = self.nested(operand)?;
        let span = sp.to(e.span);
        Some(Expr {
            kind: ExprKind::Unary(op, Box::new(e)),
            span,
        })
    }

    pub(super) fn or_expr(&mut self) -> PResult<Expr> {
        let mut l = self.and_expr()?;
        while self.eat_kw("or") {
            let r = self.and_expr()?;
            l = bin(BinOp::Or, l, r);
        }
        Some(l)
    }

    pub(super) fn and_expr(&mut self) -> PResult<Expr> {
        let mut l = self.not_expr()?;
        while self.eat_kw("and") {
            let r = self.not_expr()?;
            l = bin(BinOp::And, l, r);
        }
        Some(l)
    }

    pub(super) fn not_expr(&mut self) -> PResult<Expr> {
        if self.is_kw("not") && !self.is_kw_at(1, "next") && !self.is_kw_at(1, "then") {
            return self.prefix(UnOp::Not, Self::not_expr);
        }
        self.cmp_expr()
    }

    pub(super) fn cmp_expr(&mut self) -> PResult<Expr> {
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
        let negated = self.is_kw("not") && (self.is_kw_at(1, "in") || self.is_kw_at(1, "like"));
        if negated {
            self.bump();
        }
        if self.eat_kw("like") {
            let like = self.like(l)?;
            if !negated {
                return Some(like);
            }
            let span = like.span;
            return Some(Expr {
                kind: ExprKind::Unary(UnOp::Not, Box::new(like)),
                span,
            });
        }
        if self.eat_kw("in") {
            if let Tok::Ident(_) = self.peek() {
                let list = self.ident("a list name")?;
                let span = l.span.to(list.span);
                return Some(Expr {
                    kind: ExprKind::InList(Box::new(l), list, negated),
                    span,
                });
            }
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

    /// The rest of `x like 'pattern' [escape 'c']` (SQL: `%` is any run of
    /// characters, `_` any one, the whole value must match), as the regular
    /// expression it means.
    fn like(&mut self, l: Expr) -> PResult<Expr> {
        let Tok::Str(pattern) = self.peek().clone() else {
            return self.error("a pattern in quotes (`%` any run of characters, `_` any one)");
        };
        let pattern_span = self.bump().span;
        let mut escape = None;
        if self.eat_kw("escape") {
            let sp = self.span();
            match self.peek().clone() {
                Tok::Str(e) if e.chars().count() == 1 => {
                    self.bump();
                    escape = e.chars().next();
                }
                _ => {
                    self.errors.push(Diagnostic::error(
                        sp,
                        "the escape must be one character in quotes",
                    ));
                    return None;
                }
            }
        }
        let mut re = String::from("(?s)^");
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            match c {
                c if Some(c) == escape => match chars.next() {
                    Some(next) => re.push_str(&regex_syntax::escape(next.encode_utf8(&mut [0; 4]))),
                    None => {
                        self.errors.push(
                            Diagnostic::error(
                                pattern_span,
                                "the pattern ends with its escape character",
                            )
                            .with_hint("escape `%`, `_` or the escape character itself"),
                        );
                        return None;
                    }
                },
                '%' => re.push_str(".*"),
                '_' => re.push('.'),
                c => re.push_str(&regex_syntax::escape(c.encode_utf8(&mut [0; 4]))),
            }
        }
        re.push('$');
        let span = l.span.to(self.prev_span());
        Some(Expr {
            kind: ExprKind::Matches(Box::new(l), re, pattern_span),
            span,
        })
    }

    pub(super) fn add_expr(&mut self) -> PResult<Expr> {
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

    pub(super) fn mul_expr(&mut self) -> PResult<Expr> {
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

    pub(super) fn unary_expr(&mut self) -> PResult<Expr> {
        if self.is_sym("-") {
            return self.prefix(UnOp::Neg, Self::unary_expr);
        }
        self.postfix_expr()
    }

    pub(super) fn postfix_expr(&mut self) -> PResult<Expr> {
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

    pub(super) fn primary(&mut self) -> PResult<Expr> {
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
            // A connector where a value belongs: the value is missing
            // (`status == then b: …`), not a field named `then`.
            Tok::Ident(s)
                if ["then", "next"].contains(&s.to_ascii_lowercase().as_str())
                    && !matches!(self.peek_at(1), Tok::Sym(".")) =>
            {
                let r = self.error("a value or a field");
                if let Some(last) = self.errors.last_mut() {
                    last.hint = Some(format!(
                        "`{s}` starts the next stage; a field named `{s}` is written `` `{s}` ``"
                    ));
                }
                return r;
            }
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

    pub(super) fn call(&mut self) -> PResult<Expr> {
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
