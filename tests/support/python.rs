//! The Python that runs the training recipe, for the tests that train.

use std::path::PathBuf;

/// A Python with scikit-learn, skl2onnx, onnx and numpy: TRIPLINE_PYTHON,
/// or the venv `scripts/prerequisites --tests` makes (TRIPLINE_VENV, by
/// default ~/.cache/tripline-venv).
pub fn python() -> String {
    if let Ok(p) = std::env::var("TRIPLINE_PYTHON") {
        return p;
    }
    let venv = std::env::var("TRIPLINE_VENV").map_or_else(
        |_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/tripline-venv"),
        PathBuf::from,
    );
    let p = venv.join("bin/python");
    let ok = std::process::Command::new(&p)
        .args(["-c", "import sklearn, skl2onnx, onnx, numpy"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "no Python with scikit-learn, skl2onnx, onnx and numpy at {}: run scripts/prerequisites --tests, or set TRIPLINE_PYTHON",
        p.display()
    );
    p.display().to_string()
}
