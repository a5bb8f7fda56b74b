//! Any bytes given to the label reader (`tripline train --labels`) yield
//! labels or an error naming a line; what is known at any time is then
//! answerable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tripline::model::labels::Labels;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Labels::from_json_lines(&text) {
        Ok(labels) => {
            for t in [i64::MIN, 0, i64::MAX] {
                let _ = labels.fraud_at("1", t);
            }
            let _ = labels.first_known_fraud("1");
        }
        Err(e) => assert!(e.line >= 1),
    }
});
