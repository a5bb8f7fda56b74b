//! The `tripline` command: parses the command line and hands over to [`app`].

use clap::Parser;
use std::process::ExitCode;

mod app;
mod backtest_cmd;
mod feature_log;
mod retrain;
mod serve;
mod train_cmd;
mod trial_cmd;

// The engine allocates per event (the event, its text, match nodes); mimalloc's
// thread-local free lists make that markedly cheaper than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = app::Cli::parse();
    match app::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
