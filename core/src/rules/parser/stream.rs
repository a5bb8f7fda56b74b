//! The stream block (key, time, format, lateness, skew, idleness) and
//! rule examples.

use super::*;

impl Parser {
    pub(super) fn stream(&mut self) -> PResult<StreamAst> {
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
            order: Vec::new(),
        };
        const CLAUSES: &[&str] = &[
            "key", "time", "type", "lateness", "idle", "skew", "clock", "fields", "order",
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
                } else if self.eat_kw("order") {
                    self.eat_kw("by");
                    loop {
                        let (path, sp) = self.path()?;
                        let descending = self.eat_kw("desc");
                        if !descending {
                            self.eat_kw("asc");
                        }
                        s.order.push((path, descending, sp));
                        if !self.eat_sym(",") {
                            break;
                        }
                    }
                } else {
                    return self.error(
                        "key, time, type, lateness, idle, skew, clock skew, fields or order",
                    );
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

    /// `table NAME { key FIELD  time FIELD  topic "TOPIC" }`.
    pub(super) fn table(&mut self) -> PResult<TableAst> {
        self.bump();
        let Some(name) = self.name("a table name") else {
            self.skip_item(0);
            return None;
        };
        if self.expect_sym("{").is_none() {
            self.skip_item(0);
            return None;
        }
        let level = self.braces;
        let mut t = TableAst {
            name,
            key: None,
            time: None,
            topic: None,
        };
        const CLAUSES: &[&str] = &["key", "time", "topic"];
        loop {
            if self.eat_sym("}") {
                return Some(t);
            }
            if matches!(self.peek(), Tok::Eof) {
                self.error::<()>("`}`");
                return Some(t);
            }
            let ok = (|| -> PResult<()> {
                if self.eat_kw("key") {
                    t.key = Some(self.path()?);
                } else if self.eat_kw("time") {
                    t.time = Some(self.path()?);
                } else if self.eat_kw("topic") {
                    match self.peek().clone() {
                        Tok::Str(topic) => {
                            let span = self.bump().span;
                            t.topic = Some((topic, span));
                        }
                        _ => return self.error("the topic as a string (`\"customer-profiles\"`)"),
                    }
                } else {
                    return self.error("key, time or topic");
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

    pub(super) fn example(&mut self) -> PResult<ExampleAst> {
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
            lists: Vec::new(),
            tables: Vec::new(),
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
                } else if self.eat_kw("list") {
                    let name = self.ident("a list name")?;
                    let mut values = Vec::new();
                    loop {
                        match self.peek().clone() {
                            Tok::Str(v) => values.push(v),
                            Tok::Num(n) => values.push(crate::event::Value::Num(n).to_string()),
                            _ => return self.error("a value in quotes"),
                        }
                        self.bump();
                        if !self.eat_sym(",") {
                            break;
                        }
                    }
                    ex.lists.push((name, values));
                } else if self.eat_kw("table") {
                    let name = self.ident("a table name")?;
                    match self.peek().clone() {
                        Tok::Block(b) | Tok::Str(b) => {
                            let sp = self.bump().span;
                            ex.tables.push((name, b, sp));
                        }
                        _ => return self.error("a \"\"\" block of JSON rows, one per line"),
                    }
                } else {
                    return self.error("`events`, `expect`, `list` or `table`");
                }
                Some(())
            })();
            if ok.is_none() {
                let at = self.pos;
                self.sync_clause(&["events", "expect", "list", "table"], level);
                if self.pos == at {
                    self.bump();
                }
            }
        }
    }

    // ---- expressions ----
}
