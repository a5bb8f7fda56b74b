//! The stream block (key, time, format, lateness, skew, idleness, advance) and
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
            advance_after: None,
            fields: Vec::new(),
            order: Vec::new(),
            topic: None,
        };
        const CLAUSES: &[&str] = &[
            "key", "time", "type", "lateness", "idle", "skew", "clock", "advance", "fields",
            "order", "topic",
        ];
        self.block_clauses(CLAUSES, true, |p| {
            if p.eat_kw("key") {
                s.key = Some(p.path()?);
            } else if p.eat_kw("time") {
                if p.eat_kw("format") {
                    let id = p.ident("auto, epoch_ms or epoch_s")?;
                    s.time_format = Some((id.name, id.span));
                } else {
                    s.time = Some(p.path()?);
                }
            } else if p.eat_kw("type") {
                s.event_type = Some(p.path()?);
            } else if p.eat_kw("lateness") {
                s.lateness = Some(p.duration("a duration")?);
            } else if p.eat_kw("idle") {
                s.idle = Some(p.duration("a duration")?);
            } else if p.eat_kw("skew") {
                let at = p.span();
                s.skew = Some(if p.eat_kw("none") {
                    (0, at)
                } else {
                    p.duration("a duration or `none`")?
                });
            } else if p.eat_kw("clock") {
                if !p.eat_kw("skew") {
                    return p.error("`skew` (as in `clock skew 5m`)");
                }
                s.clock_skew = Some(p.duration("a duration")?);
            } else if p.eat_kw("advance") {
                if !p.eat_kw("after") {
                    return p.error("`after` (as in `advance after 30s`)");
                }
                s.advance_after = Some(p.duration("a duration")?);
            } else if p.eat_kw("fields") {
                s.fields.push(p.path()?);
                while p.eat_sym(",") {
                    s.fields.push(p.path()?);
                }
            } else if p.eat_kw("order") {
                p.eat_kw("by");
                loop {
                    let (path, sp) = p.path()?;
                    let descending = p.eat_kw("desc");
                    if !descending {
                        p.eat_kw("asc");
                    }
                    s.order.push((path, descending, sp));
                    if !p.eat_sym(",") {
                        break;
                    }
                }
            } else if p.eat_kw("topic") {
                match p.peek().clone() {
                    Tok::Str(topic) => {
                        let span = p.bump().span;
                        s.topic = Some((topic, span));
                    }
                    _ => return p.error("the topic as a string (`\"logins\"`)"),
                }
            } else {
                return p.error(
"key, time, type, lateness, idle, skew, clock skew, advance after, fields, order or topic",
                );
            }
            Some(())
        });
        Some(s)
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
        let mut t = TableAst {
            name,
            key: None,
            time: None,
            topic: None,
        };
        const CLAUSES: &[&str] = &["key", "time", "topic"];
        self.block_clauses(CLAUSES, true, |p| {
            if p.eat_kw("key") {
                t.key = Some(p.path()?);
            } else if p.eat_kw("time") {
                t.time = Some(p.path()?);
            } else if p.eat_kw("topic") {
                match p.peek().clone() {
                    Tok::Str(topic) => {
                        let span = p.bump().span;
                        t.topic = Some((topic, span));
                    }
                    _ => return p.error("the topic as a string (`\"customer-profiles\"`)"),
                }
            } else {
                return p.error("key, time or topic");
            }
            Some(())
        });
        Some(t)
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
        let mut ex = ExampleAst {
            name,
            events: Vec::new(),
            expect: Vec::new(),
            expect_alerts: Vec::new(),
            lists: Vec::new(),
            tables: Vec::new(),
        };
        self.block_clauses(&["events", "expect", "list", "table"], false, |p| {
            if p.eat_kw("events") {
                let stream = match p.peek() {
                    Tok::Ident(_) => Some(p.ident("a stream name")?),
                    _ => None,
                };
                match p.peek().clone() {
                    Tok::Block(b) | Tok::Str(b) => {
                        let sp = p.bump().span;
                        ex.events.push((stream, b, sp));
                    }
                    _ => return p.error("a \"\"\" block of JSON events, one per line"),
                }
            } else if p.eat_kw("expect") {
                let rule = p.name("a rule name")?;
                if p.eat_sym("{") {
                    let values = p.expected_values()?;
                    ex.expect_alerts.push((rule, values));
                } else {
                    let (n, _) = p.count("an alert count, or `{ NAME = VALUE, … }`")?;
                    ex.expect.push((rule, n as u64));
                }
            } else if p.eat_kw("list") {
                let name = p.ident("a list name")?;
                let mut values = Vec::new();
                loop {
                    match p.peek().clone() {
                        Tok::Str(v) => values.push(v),
                        Tok::Num(n) => values.push(crate::event::Value::Num(n).to_string()),
                        _ => return p.error("a value in quotes"),
                    }
                    p.bump();
                    if !p.eat_sym(",") {
                        break;
                    }
                }
                ex.lists.push((name, values));
            } else if p.eat_kw("table") {
                let name = p.ident("a table name")?;
                match p.peek().clone() {
                    Tok::Block(b) | Tok::Str(b) => {
                        let sp = p.bump().span;
                        ex.tables.push((name, b, sp));
                    }
                    _ => return p.error("a \"\"\" block of JSON rows, one per line"),
                }
            } else {
                return p.error("`events`, `expect`, `list` or `table`");
            }
            Some(())
        });
        Some(ex)
    }

    /// The `NAME = VALUE, …` of `expect RULE { … }` after its `{`, and
    /// the `}`: each value a literal (number, string, `true`, `false`,
    /// `null`).
    fn expected_values(&mut self) -> PResult<Vec<ExpectedValue>> {
        use crate::event::Value;
        let mut values = Vec::new();
        while !self.eat_sym("}") {
            let name = self.name("a payload name, `key` or `event_time`")?;
            if !self.eat_sym("=") && !self.eat_sym(":") {
                return self.error("`=`");
            }
            let start = self.span();
            let neg = self.eat_sym("-");
            let v = match self.peek().clone() {
                Tok::Num(n) => Value::Num(if neg { -n } else { n }),
                Tok::Str(s) if !neg => Value::Str(s.as_str().into()),
                Tok::Ident(s) if !neg && s.eq_ignore_ascii_case("true") => Value::Bool(true),
                Tok::Ident(s) if !neg && s.eq_ignore_ascii_case("false") => Value::Bool(false),
                Tok::Ident(s) if !neg && s.eq_ignore_ascii_case("null") => Value::Null,
                _ => return self.error("a number, a string in quotes, `true`, `false` or `null`"),
            };
            let sp = start.to(self.bump().span);
            values.push((name, v, sp));
            if !self.eat_sym(",") {
                self.eat_sym(";");
            }
        }
        Some(values)
    }

    // ---- expressions ----
}
