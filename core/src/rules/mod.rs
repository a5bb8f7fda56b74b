//! The rule language: lexer, parser, syntax tree, semantic checks and
//! diagnostics. Its output, a [`RuleSetDef`], is the checked form the pattern
//! compiler and the engine build on. See `docs/rules.md` for the language.

pub mod ast;
mod check;
mod diag;
mod edit;
pub mod ir;
mod lexer;
mod parser;
mod vocab;

pub use check::{CompileError, Compiler, Limits, ModelFiles, ModelReader};
pub use diag::{Diagnostic, Diagnostics, SourceMap, Span, suggest};
pub use edit::{PromoteError, declare_candidate, promote_candidate};
pub use ir::*;
pub use lexer::parse_duration;
pub use parser::{parse_expr, parse_file};
pub use vocab::{BinOp, Contiguity, Severity, UnOp, Window};
