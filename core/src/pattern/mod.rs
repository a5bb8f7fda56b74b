//! Patterns: a rule's stages compiled to an NFA ([`nfa`]), the per-key
//! matcher that runs it ([`matcher`]), a symbol DFA (regex-automata) that
//! lets regular rules run lazily ([`lazy`]), and expression evaluation
//! ([`eval`]).

pub mod eval;
pub mod lazy;
pub mod matcher;
pub mod nfa;

pub use matcher::{Matcher, MatcherState, Output, PartialLimitExceeded, Scratch};
pub use nfa::Nfa;
