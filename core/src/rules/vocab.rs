//! The words the rule language and its compiled form share: severities,
//! how stages follow each other, operators and aggregate windows. The
//! parser writes them into the syntax tree, the checker carries them into
//! the IR, and the engine, matcher and windows read them from there.

/// Alert severity.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Informational.
    Low,
    /// Worth a look.
    Medium,
    /// Act soon.
    High,
    /// Act now.
    Critical,
}

impl Severity {
    /// Its name as written in rules and alerts (`low` … `critical`).
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// How a stage relates to the one before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contiguity {
    /// `next`: the very next event.
    Strict,
    /// `then`: skipping events that do not match.
    Relaxed,
    /// `then any`: skipping any events (every matching event forks).
    Any,
    /// `not next`: the next event must not match.
    NotNext,
    /// `not then`: no matching event until the next stage.
    NotFollow,
}

/// Unary operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnOp {
    /// `not`
    Not,
    /// `-`
    Neg,
}

/// Binary operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    /// `or`
    Or,
    /// `and`
    And,
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Rem,
}

impl BinOp {
    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "or",
            BinOp::And => "and",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
        }
    }
}

/// A window for a per-key aggregate.
#[derive(Clone, Debug, PartialEq)]
pub enum Window {
    /// `over 30d`: (t - 30d, t].
    Sliding(i64),
    /// `over 30d ending 7d ago`: (t - 37d, t - 7d].
    Ending(i64, i64),
    /// `over tumbling 1h`: the current aligned bin.
    Tumbling(i64),
    /// `over session 30m`: events since the last gap longer than 30m.
    Session(i64),
    /// `over decay 7d`: every earlier event, weighted by age with this
    /// half-life (exponentially weighted aggregates).
    Decay(i64),
}
