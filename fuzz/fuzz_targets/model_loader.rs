//! Any bytes given to the model loader yield a model or a typed error, and
//! a model that loads scores any row without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(model) = tripline::model::Model::from_bytes(data) {
        let n = model.inputs().len();
        for fill in [0.0f32, -1e9, 1e9, f32::NAN] {
            let _ = model.score(&vec![fill; n]);
        }
    }
});
