//! Runs a CEP conformance corpus file through tripline and prints one line
//! per case (`PASS id` / `FAIL id: why`), then `N passed, M failed`.
//!
//! `cargo run --release --example conformance -- tests/data/flink_cep_cases.jsonl`

#[path = "../tests/support/conformance.rs"]
mod conformance;

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: conformance <cases.jsonl>");
        std::process::exit(2);
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
    std::process::exit(if failed == 0 { 0 } else { 1 });
}
