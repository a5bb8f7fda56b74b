//! Patterns: a rule's stages compiled to an NFA ([`nfa`]), the per-key
//! matcher that runs it ([`matcher`]), and expression evaluation ([`eval`]).

pub mod eval;
pub mod matcher;
pub mod nfa;

pub use matcher::{Matcher, MatcherState, Output, PartialLimitExceeded, Scratch};
pub use nfa::Nfa;
