//! Any bytes as `tripline.toml`, with the environment's overrides taken
//! from lines `TRIPLINE__…=value` at its start: a checked configuration or
//! an error listing the problems, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tripline::config::Config;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let env: Vec<(String, String)> = text
        .lines()
        .take_while(|l| l.starts_with("TRIPLINE__"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let body: String = text.lines().skip(env.len()).collect::<Vec<_>>().join("\n");
    if let Err(e) = Config::from_toml(&body, "fuzz.toml", env) {
        assert!(!e.problems.is_empty());
    }
});
