//! Adapters: the service's connections to the outside world, one folder
//! each. Only the application wiring (`app`) depends on them.

pub mod api;
pub mod kafka;
pub mod local;
pub mod table_store;
pub mod trials;
pub mod webhook;
pub mod worker;
