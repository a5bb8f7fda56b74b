//! Messages a person can act on: each mistake a new user made is reported
//! once, where it is, in the terms they wrote, with what to do.

use tripline::engine::RuleSet;

/// The diagnostics of `rules` (which must not compile), as printed.
fn diagnostics(rules: &str) -> String {
    RuleSet::from_source("r.tl", rules, None)
        .err()
        .unwrap_or_else(|| panic!("compiled:\n{rules}"))
        .to_string()
}

const STREAM: &str = "stream tx { key card time ts fields card, ts, status, amount }\n";

#[test]
fn a_pattern_that_does_not_parse_is_not_also_missing() {
    let d = diagnostics(&format!(
        "{STREAM}rule r {{ pattern {{ a: status == then b: amount > 5 }} }}"
    ));
    assert!(!d.contains("has no pattern"), "{d}");
    assert!(d.contains("r.tl:2:33"), "{d}");
    assert!(
        d.contains("expected a value or a field, found `then`"),
        "{d}"
    );
    assert!(d.starts_with("error") && d.ends_with("1 error"), "{d}");
}

#[test]
fn a_word_that_is_no_field_is_told_to_be_quoted() {
    let d = diagnostics(&format!(
        "{STREAM}rule r {{ pattern {{ a: status == declined }} }}"
    ));
    assert!(d.contains("unknown field or stage `declined`"), "{d}");
    assert!(d.contains(r#"text is quoted (`"declined"`)"#), "{d}");
}

#[test]
fn a_stage_that_does_not_exist_is_called_a_stage() {
    let d = diagnostics(&format!(
        "{STREAM}rule r {{ pattern {{ a: status == \"declined\" then b: approved.amount > 5 }} }}"
    ));
    assert!(d.contains("unknown stage `approved`"), "{d}");
    assert!(d.contains("the stages here are `a`, `b`"), "{d}");
    assert!(!d.contains("unknown field"), "{d}");
}

#[test]
fn a_field_compared_with_a_number_and_with_text_is_refused() {
    let d = diagnostics(
        "stream tx { key card time ts }\n\
         rule r { pattern { a: status > 5 and amount == \"big\" } }\n\
         rule s { pattern { a: status == \"declined\" then b: 1000 < amount } }",
    );
    assert!(
        d.contains(
            "`status` is compared with text here (`status == \"declined\"`), \
             but with a number in rule `r` (`status > 5`)"
        ),
        "{d}"
    );
    assert!(
        d.contains("`amount` is compared with a number here (`1000 < amount`)"),
        "{d}"
    );
    assert!(d.ends_with("2 errors"), "{d}");
    // The same field of two streams may hold two types; a stage's field is
    // the field; a number against a number is fine.
    RuleSet::from_source(
        "ok.tl",
        "stream tx { key card time ts }\n\
         stream logins { key card time ts }\n\
         rule r { pattern { a: logins where kind == \"reset\" then b: tx where kind > 2 and b.amount > a.amount + 5 } }\n\
         rule s { pattern { a: amount >= 10 then b: a.amount < 3 } }",
        None,
    )
    .unwrap();
}
