//! Semantic checks of expressions: field and stage references, functions,
//! match aggregates and per-key window aggregates.

use super::*;

const SCALAR_FUNCS: &[(&str, Func, usize, usize)] = &[
    ("abs", Func::Abs, 1, 1),
    ("round", Func::Round, 1, 1),
    ("floor", Func::Floor, 1, 1),
    ("ceil", Func::Ceil, 1, 1),
    ("sqrt", Func::Sqrt, 1, 1),
    ("ln", Func::Ln, 1, 1),
    ("least", Func::Least, 2, 64),
    ("greatest", Func::Greatest, 2, 64),
    ("coalesce", Func::Coalesce, 1, 64),
    ("contains", Func::Contains, 2, 2),
    ("starts_with", Func::StartsWith, 2, 2),
    ("ends_with", Func::EndsWith, 2, 2),
    ("lower", Func::Lower, 1, 1),
    ("upper", Func::Upper, 1, 1),
    ("len", Func::Len, 1, 1),
    ("hour", Func::Hour, 0, 1),
    ("weekday", Func::Weekday, 0, 1),
    ("event_time", Func::EventTime, 0, 0),
    ("if", Func::If, 3, 3),
];

const AGG_NAMES: &[&str] = &[
    "count", "sum", "avg", "min", "max", "first", "last", "stddev",
];

impl RuleChecker<'_> {
    /// The fields that may be named where the checker is: those the
    /// streams in scope declare, or None when one of them declares none.
    fn scope_fields(&self) -> Option<Vec<FieldPath>> {
        let mut out: Vec<FieldPath> = Vec::new();
        for &i in &self.scope {
            for f in self.streams[i as usize].fields.as_ref()? {
                if !out.contains(f) {
                    out.push(f.clone());
                }
            }
        }
        Some(out)
    }

    /// "stream `a`" or "streams `a` and `b`", for messages.
    pub(super) fn scope_names(&self) -> String {
        let names: Vec<String> = self
            .scope
            .iter()
            .map(|&i| format!("`{}`", self.streams[i as usize].name))
            .collect();
        match names.as_slice() {
            [one] => format!("stream {one}"),
            _ => format!("streams {}", names.join(" and ")),
        }
    }

    pub(super) fn check_declared(&mut self, p: &FieldPath, sp: Span) {
        if p.0.len() > 1
            && self.stage_id(&p.0[0]).is_none()
            && let Some(s) = suggest(&p.0[0], self.stages.iter().map(|s| s.name.as_str()))
        {
            let d = Diagnostic::error(sp, format!("unknown stage `{}`", p.0[0]));
            self.err(d.with_hint(format!("did you mean `{s}`?")));
            return;
        }
        if p.0.len() > 1
            && self.stage_id(&p.0[0]).is_none()
            && let Some(fields) = self.scope_fields()
            && !fields.iter().any(|f| f.0.first() == p.0.first())
        {
            let stages: Vec<String> = self
                .stages
                .iter()
                .map(|s| format!("`{}`", s.name))
                .collect();
            let d =
                Diagnostic::error(sp, format!("unknown stage `{}`", p.0[0])).with_hint(format!(
                    "the stages here are {}, and {} declares no field `{}`",
                    stages.join(", "),
                    self.scope_names(),
                    p.0[0]
                ));
            self.err(d);
            return;
        }
        if let Some(fields) = self.scope_fields()
            && !fields.contains(p)
        {
            let name = p.to_string();
            let cands: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
            let mut cands_ref: Vec<&str> = cands.iter().map(|s| s.as_str()).collect();
            let stage_names: Vec<String> = self.stages.iter().map(|s| s.name.clone()).collect();
            cands_ref.extend(stage_names.iter().map(|s| s.as_str()));
            let d = Diagnostic::error(sp, format!("unknown field `{name}`"));
            let d = match suggest(&name, cands_ref) {
                Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                None => d.with_hint(format!(
                    "{} declares: {}",
                    self.scope_names(),
                    cands.join(", ")
                )),
            };
            self.err(d);
        }
    }

    /// Records that the event field `field` (if it is one) is compared
    /// with the literal `with` (if it is one; `field_left`: written first),
    /// reporting a field compared with a number in one place and with text
    /// in another.
    fn compared(&mut self, op: BinOp, (field, with): (&Expr, &Expr), field_left: bool, span: Span) {
        let ExprKind::Path(parts) = &field.kind else {
            return;
        };
        let parts = match parts.split_first() {
            Some((stage, rest)) if !rest.is_empty() && self.stage_id(&stage.name).is_some() => rest,
            _ => parts.as_slice(),
        };
        if parts.len() == 1 && self.derived.contains_key(&parts[0].name) {
            return;
        }
        let (number, literal) = match &with.kind {
            ExprKind::Num(n) => (true, n.to_string()),
            ExprKind::Str(s) => (false, format!("{s:?}")),
            _ => return,
        };
        let name = parts
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(".");
        let shown = match field_left {
            true => format!("{name} {} {literal}", op.symbol()),
            false => format!("{literal} {} {name}", op.symbol()),
        };
        let key = (self.scope.clone(), name.clone());
        let rule = self.rule_name.clone();
        let first = self.field_uses.0.entry(key).or_insert(FieldUse {
            number,
            shown: shown.clone(),
            rule,
            reported: false,
        });
        if first.number == number || first.reported {
            return;
        }
        first.reported = true;
        let kind = |number: bool| if number { "a number" } else { "text" };
        let d = Diagnostic::error(
            span,
            format!(
                "`{name}` is compared with {} here (`{shown}`), but with {} in rule `{}` (`{}`)",
                kind(number),
                kind(first.number),
                first.rule,
                first.shown
            ),
        )
        .with_hint(format!(
            "a field holds one type: a number is written `100`, text `\"100\"`; compare `{name}` \
             with the type its events carry"
        ));
        self.err(d);
    }

    pub(super) fn field(&mut self, parts: &[Ident]) -> Option<CExpr> {
        let path = FieldPath(parts.iter().map(|p| p.name.as_str().into()).collect());
        let sp = parts[0].span.to(parts[parts.len() - 1].span);
        if let [one] = parts
            && let Some((what, _)) = self.derived.get(&one.name)
        {
            let what = match what {
                Derived::Feature => "feature",
                Derived::Model => "model score",
            };
            if self.in_features {
                self.err(
                    Diagnostic::error(
                        sp,
                        format!("a feature set cannot read the {what} `{}`", one.name),
                    )
                    .with_hint("features are computed from the event and windows: write the expression out"),
                );
                return None;
            }
            if what == "model score" && !self.models_read.contains(&one.name) {
                self.models_read.push(one.name.clone());
            }
        }
        self.check_declared(&path, sp);
        Some(CExpr::Field(self.schema.intern(&path)))
    }

    pub(super) fn expr(&mut self, e: &Expr, ctx: Ctx) -> Option<CExpr> {
        Some(match &e.kind {
            ExprKind::Num(n) => CExpr::Lit(Value::Num(*n)),
            ExprKind::Str(s) => CExpr::Lit(Value::from(s.as_str())),
            ExprKind::Bool(b) => CExpr::Lit(Value::Bool(*b)),
            ExprKind::Null => CExpr::Lit(Value::Null),
            ExprKind::Path(parts) => return self.path(parts, ctx, e.span),
            ExprKind::Unary(op, x) => CExpr::Unary(*op, Box::new(self.expr(x, ctx)?)),
            ExprKind::Binary(op @ (BinOp::Eq | BinOp::Ne), a, b)
                if [a, b].iter().any(|x| matches!(x.kind, ExprKind::Null)) =>
            {
                let is = if *op == BinOp::Eq {
                    "is null"
                } else {
                    "is not null"
                };
                self.err(
                    Diagnostic::error(
                        e.span,
                        "a comparison with `null` is null, so it is never true",
                    )
                    .with_hint(format!("use `{is}`")),
                );
                return None;
            }
            ExprKind::Binary(op, a, b) => {
                if matches!(
                    op,
                    BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge
                ) {
                    self.compared(*op, (a, b), true, e.span);
                    self.compared(*op, (b, a), false, e.span);
                }
                let a = self.expr(a, ctx);
                let b = self.expr(b, ctx);
                CExpr::Binary(*op, Box::new(a?), Box::new(b?))
            }
            ExprKind::In(x, items, neg) => {
                let x = self.expr(x, ctx);
                let items: Vec<Option<CExpr>> = items.iter().map(|i| self.expr(i, ctx)).collect();
                CExpr::In(
                    Box::new(x?),
                    items.into_iter().collect::<Option<Vec<_>>>()?,
                    *neg,
                )
            }
            ExprKind::InList(x, list, negated) => {
                let key = self.expr(x, ctx);
                if !self.lookups.lists.contains_key(&list.name) {
                    let d = Diagnostic::error(list.span, format!("unknown list `{}`", list.name));
                    let d = if self.lookups.lists.is_empty() {
                        d.with_hint(format!("declare it: `list {}`", list.name))
                    } else {
                        let names: Vec<String> = self.lookups.lists.keys().cloned().collect();
                        hint_closest(d, &list.name, names.iter().map(|s| s.as_str()))
                    };
                    self.err(d);
                    return None;
                }
                let key = key?;
                if key.depends_on_match() || key.reads_windows() {
                    self.err(
                        Diagnostic::error(
                            x.span,
                            "a list lookup reads the event being tested, not the match or its windows",
                        )
                        .with_hint("look up a field of the event (`TERMINAL_ID in LIST`) in the stage that takes it"),
                    );
                    return None;
                }
                let i = self.lookup(&list.name, key, x);
                let found = CExpr::Field(self.lookups.defs[i].slot);
                if *negated {
                    CExpr::Unary(UnOp::Not, Box::new(found))
                } else {
                    found
                }
            }
            ExprKind::Matches(x, re, sp) => {
                let x = self.expr(x, ctx)?;
                if self.regex_room.refused {
                    return None;
                }
                let room = self.limits.max_regex_bytes.min(self.regex_room.room);
                let config = regex_automata::meta::Config::new()
                    .nfa_size_limit(Some(room))
                    .onepass_size_limit(Some(room))
                    .dfa_size_limit(Some(room))
                    .hybrid_cache_capacity(room.min(2 << 20));
                match regex_automata::meta::Regex::builder()
                    .configure(config)
                    .build(re)
                {
                    Ok(r) => {
                        self.regex_room.room =
                            self.regex_room.room.saturating_sub(r.memory_usage());
                        CExpr::Matches(Box::new(x), Arc::new(r))
                    }
                    Err(err) if err.size_limit().is_some() => {
                        self.regex_room.refused = true;
                        let d = Diagnostic::error(
                            *sp,
                            format!(
                                "regular expression too large: it needs more than {room} bytes"
                            ),
                        )
                        .with_hint(format!(
                            "one may take {} bytes, and all of a rule set's {} (large counted \
                             repetitions like `{{4900}}` of a class are the usual cause); the \
                             rule set's later regular expressions are not checked",
                            self.limits.max_regex_bytes, self.limits.max_regex_total_bytes
                        ));
                        self.err(d);
                        return None;
                    }
                    Err(err) => {
                        self.err(Diagnostic::error(
                            *sp,
                            format!("invalid regular expression: {err}"),
                        ));
                        return None;
                    }
                }
            }
            ExprKind::IsNull(x, is) => CExpr::IsNull(Box::new(self.expr(x, ctx)?), *is),
            ExprKind::Call(c) => return self.call(c, ctx, e.span),
            ExprKind::Member(inner, path) => return self.member(inner, path, ctx, e.span),
        })
    }

    pub(super) fn path(&mut self, parts: &[Ident], ctx: Ctx, span: Span) -> Option<CExpr> {
        let head = &parts[0].name;
        if self.stage_id(head).is_none() && self.lookups.tables.contains_key(head) {
            return self.table_path(parts, span);
        }
        if let Some(id) = self.stage_id(head) {
            if self.stages[id as usize].negated {
                self.err(Diagnostic::error(
                    parts[0].span,
                    format!("stage `{head}` is a negation: it never holds events"),
                ));
                return None;
            }
            if parts.len() == 1 {
                self.err(
                    Diagnostic::error(span, format!("stage `{head}` is not a value")).with_hint(
                        format!("name a field: `{head}.FIELD`, or count it: `count({head})`"),
                    ),
                );
                return None;
            }
            let field = self.field(&parts[1..])?;
            let CExpr::Field(slot) = field else {
                return None;
            };
            return match ctx {
                Ctx::Event => Some(CExpr::StageLast(id, slot)),
                Ctx::AggArg(Some(s)) if s == id => Some(CExpr::Field(slot)),
                Ctx::AggArg(_) => {
                    self.err(Diagnostic::error(
                        span,
                        "an aggregate may read only the stage it aggregates over",
                    ));
                    None
                }
                Ctx::WindowArg => {
                    self.err(
                        Diagnostic::error(
                            span,
                            "a window aggregate reads the key's events, not a stage's",
                        )
                        .with_hint("drop the stage name"),
                    );
                    None
                }
            };
        }
        if parts.len() == 1
            && let Some(declared) = self.scope_fields()
        {
            // Unknown single names may be misspelt stage names too.
            let known = declared.contains(&FieldPath::single(head));
            if !known {
                let stage_names: Vec<String> = self.stages.iter().map(|s| s.name.clone()).collect();
                let fields: Vec<String> = declared.iter().map(|f| f.to_string()).collect();
                let d = Diagnostic::error(span, format!("unknown field or stage `{head}`"));
                let d = match suggest(
                    head,
                    stage_names.iter().chain(fields.iter()).map(|s| s.as_str()),
                ) {
                    Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                    None => d.with_hint(format!(
                        "text is quoted (`\"{head}\"`); {} declares: {}",
                        self.scope_names(),
                        fields.join(", ")
                    )),
                };
                self.err(d);
                return None;
            }
        }
        self.field(parts)
    }

    /// Stage named in an aggregate argument, if exactly one.
    pub(super) fn agg_stage(&mut self, args: &[Expr]) -> Result<Option<StageId>, ()> {
        let mut found: Vec<(StageId, Span)> = Vec::new();
        for a in args {
            self.stage_refs(a, &mut found);
        }
        found.sort_by_key(|f| f.0);
        found.dedup_by_key(|f| f.0);
        match found.len() {
            0 => Ok(None),
            1 => Ok(Some(found[0].0)),
            _ => {
                self.err(Diagnostic::error(
                    found[1].1,
                    "an aggregate may read only one stage",
                ));
                Err(())
            }
        }
    }

    pub(super) fn stage_refs(&self, e: &Expr, out: &mut Vec<(StageId, Span)>) {
        match &e.kind {
            ExprKind::Path(p) => {
                if let Some(id) = self.stage_id(&p[0].name) {
                    out.push((id, p[0].span));
                }
            }
            ExprKind::Unary(_, x)
            | ExprKind::IsNull(x, _)
            | ExprKind::Matches(x, _, _)
            | ExprKind::InList(x, _, _) => self.stage_refs(x, out),
            ExprKind::Binary(_, a, b) => {
                self.stage_refs(a, out);
                self.stage_refs(b, out);
            }
            ExprKind::In(x, items, _) => {
                self.stage_refs(x, out);
                for i in items {
                    self.stage_refs(i, out);
                }
            }
            ExprKind::Call(_) | ExprKind::Member(..) => {}
            _ => {}
        }
    }

    /// The lookup of `key` (written `x`) in `list`, shared with any other
    /// rule that makes the same one; the rule reads it.
    fn lookup(&mut self, list: &str, key: CExpr, x: &Expr) -> usize {
        let name = format!("{} in {list}", self.written(x));
        self.shared_lookup(LookupSource::List(list.to_string()), key, name)
    }

    /// How alerts name a looked-up value: its field, or its place.
    fn written(&self, x: &Expr) -> String {
        match &x.kind {
            ExprKind::Path(parts) => parts
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join("."),
            _ => format!("value {}", self.lookups.defs.len() + 1),
        }
    }

    /// The lookup of `source` by `key`, named `name` in alerts, shared with
    /// any other rule that makes the same one; the rule reads it.
    fn shared_lookup(&mut self, source: LookupSource, key: CExpr, name: String) -> usize {
        let same = format!("{key:?}");
        let i = match self
            .lookups
            .defs
            .iter()
            .position(|d| d.source == source && format!("{:?}", d.key) == same)
        {
            Some(i) => i,
            None => {
                let slot = self.schema.intern(&FieldPath::single(&name));
                self.lookups.defs.push(LookupDef {
                    name,
                    source,
                    key,
                    slot,
                });
                self.lookups.defs.len() - 1
            }
        };
        if !self.lookups_read.contains(&i) {
            self.lookups_read.push(i);
        }
        i
    }

    /// A table lookup: field `field` of `table`'s row for `key` (an
    /// expression over the event), as of the event's time.
    fn table_lookup(
        &mut self,
        table: &str,
        key: CExpr,
        field: &[Ident],
        name: String,
        span: Span,
    ) -> Option<CExpr> {
        if key.depends_on_match() || key.reads_windows() {
            self.err(
                Diagnostic::error(
                    span,
                    "a table lookup reads the event being tested, not the match or its windows",
                )
                .with_hint("look up by a field of the event in the stage that takes it"),
            );
            return None;
        }
        let field = FieldPath(field.iter().map(|p| p.name.as_str().into()).collect());
        let source = LookupSource::Table {
            table: table.to_string(),
            field,
        };
        let i = self.shared_lookup(source, key, name);
        Some(CExpr::Field(self.lookups.defs[i].slot))
    }

    /// `TABLE.FIELD`: the row of the event's own value of the table's key
    /// field.
    fn table_path(&mut self, parts: &[Ident], span: Span) -> Option<CExpr> {
        let table = parts[0].name.clone();
        let key_path = self.lookups.tables[&table].0.spec.key.clone();
        if parts.len() == 1 {
            self.err(
                Diagnostic::error(span, format!("table `{table}` is not a value")).with_hint(
                    format!("name a field of its row: `{table}.FIELD`, or look a row up by another field: `lookup({table}, FIELD).FIELD`"),
                ),
            );
            return None;
        }
        self.check_declared(&key_path, parts[0].span);
        let key = CExpr::Field(self.schema.intern(&key_path));
        let name = parts
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(".");
        self.table_lookup(&table, key, &parts[1..], name, span)
    }

    /// `lookup(TABLE, x).FIELD`.
    fn table_member(&mut self, c: &Call, path: &[Ident], ctx: Ctx, span: Span) -> Option<CExpr> {
        let [table, key] = c.args.as_slice() else {
            self.err(
                Diagnostic::error(span, "`lookup` takes a table and a key")
                    .with_hint("`lookup(terminals, TERMINAL_ID).risk`"),
            );
            return None;
        };
        let table_name = match &table.kind {
            ExprKind::Path(p) if p.len() == 1 => p[0].name.clone(),
            _ => {
                self.err(Diagnostic::error(table.span, "name a table here"));
                return None;
            }
        };
        if !self.lookups.tables.contains_key(&table_name) {
            self.unknown_table(&table_name, table.span);
            return None;
        }
        let key_expr = self.expr(key, ctx)?;
        let written = self.written(key);
        let field: Vec<&str> = path.iter().map(|p| p.name.as_str()).collect();
        let name = format!("lookup({table_name}, {written}).{}", field.join("."));
        self.table_lookup(&table_name, key_expr, path, name, span)
    }

    fn unknown_table(&mut self, name: &str, span: Span) {
        let d = Diagnostic::error(span, format!("unknown table `{name}`"));
        let d = if self.lookups.tables.is_empty() {
            d.with_hint(format!(
                "declare it: `table {name} {{ key FIELD, time FIELD }}`"
            ))
        } else {
            let names: Vec<String> = self.lookups.tables.keys().cloned().collect();
            hint_closest(d, name, names.iter().map(|s| s.as_str()))
        };
        self.err(d);
    }

    pub(super) fn call(&mut self, c: &Call, ctx: Ctx, span: Span) -> Option<CExpr> {
        let name = c.name.name.as_str();
        if name == "lookup" {
            self.err(
                Diagnostic::error(span, "`lookup` gives a row: name its field")
                    .with_hint("`lookup(terminals, TERMINAL_ID).risk`"),
            );
            return None;
        }
        if name == "event_type" {
            if !c.args.is_empty() || c.star || c.window.is_some() {
                self.err(Diagnostic::error(span, "`event_type()` takes no argument"));
                return None;
            }
            let types: Vec<Option<FieldPath>> = self
                .scope
                .iter()
                .map(|&i| self.streams[i as usize].event_type.clone())
                .collect();
            let Some(Some(path)) = types.first().cloned() else {
                self.err(
                    Diagnostic::error(
                        span,
                        format!("{} declares no event type field", self.scope_names()),
                    )
                    .with_hint("add `type FIELD` to the stream block"),
                );
                return None;
            };
            if types.iter().any(|t| t.as_ref() != Some(&path)) {
                self.err(
                    Diagnostic::error(
                        span,
                        format!(
                            "{} do not name their event type by the same field",
                            self.scope_names()
                        ),
                    )
                    .with_hint("name the stream in the stage (`STAGE: STREAM where ..`) or compare the type field itself"),
                );
                return None;
            }
            return Some(CExpr::Field(self.schema.intern(&path)));
        }
        if let Some((w, wsp)) = &c.window {
            return self.window_call(c, w, *wsp, ctx);
        }
        // `count(distinct stage.FIELD)`: over the match. Otherwise
        // `distinct` belongs to a window.
        let over_match = c.args.first().is_some_and(|a| match &a.kind {
            ExprKind::Path(p) => p.len() >= 2 && self.stage_id(&p[0].name).is_some(),
            _ => false,
        });
        if c.distinct && !(name == "count" && over_match && c.args.len() == 1) {
            self.err(
                Diagnostic::error(c.name.span, "`distinct` needs a window or a stage's field")
                    .with_hint("e.g. `count(distinct TERMINAL_ID over 1d)`, or `count(distinct burst.TERMINAL_ID)` over a stage's events"),
            );
            return None;
        }
        if (name == "min" || name == "max") && c.args.len() >= 2 {
            let f = if name == "min" {
                Func::Least
            } else {
                Func::Greatest
            };
            let args = self.args(&c.args, ctx)?;
            return Some(CExpr::Func(f, args));
        }
        if name == "novel" || name == "zscore" {
            self.err(
                Diagnostic::error(span, format!("`{name}` needs a window")).with_hint(
                    if name == "novel" {
                        "e.g. `novel(TERMINAL_ID over 30d)`"
                    } else {
                        "e.g. `zscore(TX_AMOUNT over decay 7d)`"
                    },
                ),
            );
            return None;
        }
        if AGG_NAMES.contains(&name) {
            if name == "stddev" {
                self.err(
                    Diagnostic::error(span, "`stddev` needs a window")
                        .with_hint("e.g. `stddev(TX_AMOUNT over 30d)`"),
                );
                return None;
            }
            if matches!(ctx, Ctx::AggArg(_) | Ctx::WindowArg) {
                self.err(Diagnostic::error(span, "aggregates cannot be nested"));
                return None;
            }
            return self.match_agg(c, span);
        }
        let Some(&(_, f, lo, hi)) = SCALAR_FUNCS.iter().find(|(n, ..)| *n == name) else {
            let d = Diagnostic::error(c.name.span, format!("unknown function `{name}`"));
            let all = SCALAR_FUNCS
                .iter()
                .map(|f| f.0)
                .chain(AGG_NAMES.iter().copied())
                .chain(["novel", "zscore"]);
            self.err(hint_closest(d, name, all));
            return None;
        };
        if c.star || c.args.len() < lo || c.args.len() > hi {
            let want = if lo == hi {
                format!("{lo}")
            } else {
                format!("{lo} to {hi}")
            };
            self.err(Diagnostic::error(
                span,
                format!("`{name}` takes {want} argument(s)"),
            ));
            return None;
        }
        let args = self.args(&c.args, ctx)?;
        Some(CExpr::Func(f, args))
    }

    pub(super) fn args(&mut self, args: &[Expr], ctx: Ctx) -> Option<Vec<CExpr>> {
        let v: Vec<Option<CExpr>> = args.iter().map(|a| self.expr(a, ctx)).collect();
        v.into_iter().collect()
    }

    pub(super) fn match_agg(&mut self, c: &Call, span: Span) -> Option<CExpr> {
        let func = match c.name.name.as_str() {
            "count" if c.distinct => AggFunc::CountDistinct,
            "count" => AggFunc::Count,
            "sum" => AggFunc::Sum,
            "avg" => AggFunc::Avg,
            "min" => AggFunc::Min,
            "max" => AggFunc::Max,
            "first" => AggFunc::First,
            "last" => AggFunc::Last,
            _ => return None,
        };
        if c.star {
            if func != AggFunc::Count {
                self.err(Diagnostic::error(span, "`*` works only with `count`"));
                return None;
            }
            return Some(CExpr::MatchAgg(Box::new(MatchAgg {
                func,
                stage: None,
                arg: None,
                offset: 0,
            })));
        }
        let mut args: &[Expr] = &c.args;
        let mut offset = 0usize;
        if matches!(func, AggFunc::First | AggFunc::Last) && args.len() == 2 {
            match &args[1].kind {
                ExprKind::Num(n) if *n >= 0.0 && n.fract() == 0.0 && *n < 1e6 => {
                    offset = *n as usize
                }
                _ => {
                    self.err(Diagnostic::error(
                        args[1].span,
                        "the offset must be a whole number ≥ 0",
                    ));
                    return None;
                }
            }
            args = &args[..1];
        }
        if args.len() > 1 {
            self.err(Diagnostic::error(
                span,
                format!("`{}` takes one argument", c.name.name),
            ));
            return None;
        }
        if args.is_empty() {
            if func == AggFunc::Count {
                return Some(CExpr::MatchAgg(Box::new(MatchAgg {
                    func,
                    stage: None,
                    arg: None,
                    offset: 0,
                })));
            }
            self.err(Diagnostic::error(
                span,
                format!("`{}` needs an argument", c.name.name),
            ));
            return None;
        }
        // `count(stage)`, `first(stage)` (with a member access handled by the caller)
        if let ExprKind::Path(p) = &args[0].kind
            && p.len() == 1
            && let Some(id) = self.stage_id(&p[0].name)
        {
            if func != AggFunc::Count {
                self.err(
                    Diagnostic::error(
                        args[0].span,
                        format!("`{}` of a whole stage needs a field", c.name.name),
                    )
                    .with_hint(format!("e.g. `{}({}.FIELD)`", c.name.name, p[0].name)),
                );
                return None;
            }
            if self.stages[id as usize].negated {
                self.err(Diagnostic::error(
                    args[0].span,
                    "a negated stage never holds events",
                ));
                return None;
            }
            return Some(CExpr::MatchAgg(Box::new(MatchAgg {
                func,
                stage: Some(id),
                arg: None,
                offset: 0,
            })));
        }
        let stage = self.agg_stage(args).ok()?;
        let arg = self.expr(&args[0], Ctx::AggArg(stage))?;
        Some(CExpr::MatchAgg(Box::new(MatchAgg {
            func,
            stage,
            arg: Some(arg),
            offset,
        })))
    }

    pub(super) fn member(
        &mut self,
        inner: &Expr,
        path: &[Ident],
        _ctx: Ctx,
        span: Span,
    ) -> Option<CExpr> {
        let ExprKind::Call(c) = &inner.kind else {
            self.err(Diagnostic::error(
                span,
                "only `first(stage)` and `last(stage)` have fields",
            ));
            return None;
        };
        if c.name.name == "lookup" {
            return self.table_member(c, path, _ctx, span);
        }
        let func = match c.name.name.as_str() {
            "first" => AggFunc::First,
            "last" => AggFunc::Last,
            _ => {
                self.err(Diagnostic::error(
                    span,
                    "only `first(stage)` and `last(stage)` have fields",
                ));
                return None;
            }
        };
        let stage = match c.args.first().map(|a| &a.kind) {
            Some(ExprKind::Path(p)) if p.len() == 1 => match self.stage_id(&p[0].name) {
                Some(id) => id,
                None => {
                    let names: Vec<String> = self.stages.iter().map(|s| s.name.clone()).collect();
                    let d = Diagnostic::error(p[0].span, format!("unknown stage `{}`", p[0].name));
                    self.err(hint_closest(
                        d,
                        &p[0].name,
                        names.iter().map(|s| s.as_str()),
                    ));
                    return None;
                }
            },
            _ => {
                self.err(Diagnostic::error(
                    inner.span,
                    "expected `first(STAGE).FIELD`",
                ));
                return None;
            }
        };
        let offset = match c.args.get(1).map(|a| &a.kind) {
            None => 0,
            Some(ExprKind::Num(n)) if *n >= 0.0 && n.fract() == 0.0 => *n as usize,
            Some(_) => {
                self.err(Diagnostic::error(
                    inner.span,
                    "the offset must be a whole number ≥ 0",
                ));
                return None;
            }
        };
        let field = self.field(path)?;
        Some(CExpr::MatchAgg(Box::new(MatchAgg {
            func,
            stage: Some(stage),
            arg: Some(field),
            offset,
        })))
    }

    pub(super) fn window_call(
        &mut self,
        c: &Call,
        w: &WindowAst,
        wsp: Span,
        ctx: Ctx,
    ) -> Option<CExpr> {
        if matches!(ctx, Ctx::AggArg(_) | Ctx::WindowArg) {
            self.err(Diagnostic::error(
                c.name.span,
                "aggregates cannot be nested",
            ));
            return None;
        }
        let len_ok = match w {
            WindowAst::Sliding(l)
            | WindowAst::Tumbling(l)
            | WindowAst::Session(l)
            | WindowAst::Decay(l) => *l > 0,
            WindowAst::Ending(l, ago) => *l > 0 && *ago >= 0,
        };
        if !len_ok {
            self.err(Diagnostic::error(wsp, "window lengths must be positive"));
            return None;
        }
        let func = match (c.name.name.as_str(), c.distinct) {
            ("count", true) => WinFunc::CountDistinct,
            ("count", false) => WinFunc::Count,
            ("sum", false) => WinFunc::Sum,
            ("avg", false) => WinFunc::Avg,
            ("min", false) => WinFunc::Min,
            ("max", false) => WinFunc::Max,
            ("stddev", false) => WinFunc::Stddev,
            ("novel", false) => WinFunc::Novel,
            ("zscore", false) => WinFunc::Zscore,
            (n, true) => {
                self.err(Diagnostic::error(
                    c.name.span,
                    format!("`distinct` works only with `count`, not `{n}`"),
                ));
                return None;
            }
            (n, false) => {
                let d = Diagnostic::error(c.name.span, format!("`{n}` has no windowed form"));
                self.err(d.with_hint(
                    "windowed aggregates: count, count distinct, sum, avg, min, max, stddev, novel, zscore",
                ));
                return None;
            }
        };
        let decay = matches!(w, WindowAst::Decay(_));
        let fits = match func {
            WinFunc::Zscore => decay,
            WinFunc::Novel => matches!(w, WindowAst::Sliding(_)),
            WinFunc::Count | WinFunc::Sum | WinFunc::Avg | WinFunc::Stddev => true,
            WinFunc::CountDistinct | WinFunc::Min | WinFunc::Max => !decay,
        };
        if !fits {
            let hint = match func {
                WinFunc::Zscore => "e.g. `zscore(TX_AMOUNT over decay 7d)`",
                WinFunc::Novel => "e.g. `novel(TERMINAL_ID over 30d)`: a window ending now",
                _ => "over `decay` windows: count, sum, avg, stddev, zscore",
            };
            let d = Diagnostic::error(
                wsp,
                format!("`{}` does not work over this window", c.name.name),
            );
            self.err(d.with_hint(hint));
            return None;
        }
        let arg = match (c.star, c.args.len()) {
            (true, _) | (false, 0) => {
                if func != WinFunc::Count {
                    self.err(Diagnostic::error(
                        c.name.span,
                        format!("`{}` needs a value", c.name.name),
                    ));
                    return None;
                }
                None
            }
            (false, 1) => Some(self.expr(&c.args[0], Ctx::WindowArg)?),
            _ => {
                self.err(Diagnostic::error(
                    c.name.span,
                    "a window aggregate takes one value",
                ));
                return None;
            }
        };
        if arg.as_ref().is_some_and(|a| a.depends_on_match()) {
            self.err(Diagnostic::error(
                c.name.span,
                "a window aggregate cannot read the match",
            ));
            return None;
        }
        let spec = WindowSpec {
            func,
            arg,
            window: w.clone(),
        };
        // The same aggregate written twice (condition and payload) shares one state.
        let same = |a: &WindowSpec| {
            a.func == spec.func
                && a.window == spec.window
                && format!("{:?}", a.arg) == format!("{:?}", spec.arg)
        };
        if let Some(i) = self.windows.iter().position(same) {
            return Some(CExpr::Window(i as u16));
        }
        self.windows.push(spec);
        Some(CExpr::Window((self.windows.len() - 1) as u16))
    }
}
