//! The embedded Kafka-protocol broker (the `noida-db` crate) for `tripline
//! demo`, `serve` without configured brokers, and tests. It keeps everything
//! in memory and lives as long as the process.

use std::io;
use std::net::SocketAddr;

/// Starts a broker on `addr` (e.g. `127.0.0.1:0` for any free port) on
/// background threads and returns the address it listens on.
pub fn start(addr: &str) -> io::Result<SocketAddr> {
    noida::kafka::spawn(addr)
}
