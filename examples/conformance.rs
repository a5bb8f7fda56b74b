//! Runs a CEP conformance corpus file through tripline and prints one line
//! per case (`PASS id` / `FAIL id: why`), then `N passed, M failed`.
//!
//! `cargo run --release --example conformance -- tests/data/flink_cep_cases.jsonl`

#[path = "../tests/support/conformance.rs"]
mod conformance;

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: conformance <cases.jsonl>");
        return ExitCode::from(2);
    };
    let results = conformance::run_file(std::path::Path::new(&path));
    let mut failed = 0;
    for r in &results {
        match &r.outcome {
            Ok(()) => println!("PASS {}", r.id),
            Err(why) => {
                failed += 1;
                println!("FAIL {}: {}", r.id, why.lines().next().unwrap_or(""));
            }
        }
    }
    println!("{} passed, {} failed", results.len() - failed, failed);
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
