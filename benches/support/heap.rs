//! Heap bytes held, counted by a counting allocator (`stats_alloc`): a
//! bench that includes this module measures memory per key, row or event.

use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use std::alloc::System;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes held on the heap now (a reallocation's difference is counted in
/// `bytes_allocated` or `bytes_deallocated` already).
pub fn allocated() -> isize {
    let s = INSTRUMENTED_SYSTEM.stats();
    s.bytes_allocated as isize - s.bytes_deallocated as isize
}
