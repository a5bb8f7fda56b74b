//! The `tripline` command: parses the command line and hands over to [`app`].

use clap::Parser;
use std::process::ExitCode;

mod app;

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
