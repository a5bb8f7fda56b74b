//! Any bytes as a list file (`--list NAME=FILE`, and the API's CSV upload),
//! read as CSV and as JSON lines: entries or an error, never a panic; the
//! entries read then answer lookups at any time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use tripline::list_files::{CsvDefaults, parse_list_csv, parse_list_file};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let read = [
        parse_list_csv("blocked", &text, &CsvDefaults::default()).map_err(|e| e.to_string()),
        parse_list_file("blocked", Path::new("blocked.jsonl"), &text).map_err(|e| e.to_string()),
    ];
    for entries in read {
        match entries {
            Ok(entries) => {
                let lists = tripline::lists::Lists::new();
                for e in entries {
                    lists.put(e);
                }
                for t in [i64::MIN, 0, i64::MAX] {
                    let _ = lists.contains("blocked", &tripline::event::Value::Num(1.0), t);
                }
            }
            Err(e) => assert!(!e.is_empty()),
        }
    }
});
