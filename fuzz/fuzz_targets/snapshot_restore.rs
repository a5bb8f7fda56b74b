//! Any stored state — what a changelog or a damaged store could hold — either
//! restores into an engine that then runs normally, or is a typed error.
//! See `tests/support/damaged_state.rs` for how the input becomes a store.
#![no_main]

#[path = "../../tests/support/damaged_state.rs"]
mod damaged_state;

use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use tripline::engine::RuleSet;

fn rules() -> &'static Arc<RuleSet> {
    static RS: OnceLock<Arc<RuleSet>> = OnceLock::new();
    RS.get_or_init(damaged_state::rules)
}

fuzz_target!(|data: &[u8]| {
    let rs = rules();
    damaged_state::run(rs, &damaged_state::store_from(rs, data));
});
