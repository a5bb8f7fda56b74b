//! The bundled handbook sample and the repository's rules, for tests that
//! replay them or change rule files.
// Shared by several test binaries, each using a part.
#![allow(dead_code)]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use tripline::engine::{Engine, Outputs};

/// Runs the first `n` events of `examples/handbook-sample.jsonl.gz`
/// through `engine` (which ends the input).
pub fn replay_sample(engine: &mut Engine, n: usize, out: &mut Outputs) {
    let rules = engine.rules().clone();
    let gz = flate2::read::GzDecoder::new(
        std::fs::File::open("examples/handbook-sample.jsonl.gz").unwrap(),
    );
    for (i, line) in std::io::BufReader::new(gz).lines().take(n).enumerate() {
        let event = rules
            .decoder()
            .decode(line.unwrap().as_bytes(), i as u64)
            .unwrap();
        engine.on_event(event, out);
    }
    engine.finish(out);
}

/// Copies `rules/` and `models/` under `root` (rule files name their models
/// by relative path) and returns the copied rules directory.
pub fn copy_rules_and_models(root: &Path) -> PathBuf {
    for dir in ["rules", "models"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
        for f in std::fs::read_dir(dir).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, root.join(dir).join(f.file_name().unwrap())).unwrap();
        }
    }
    root.join("rules")
}
