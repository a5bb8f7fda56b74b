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

fn tripline(args: &[&str], env: &[(&str, &str)], dir: &std::path::Path) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tripline"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A scratch directory, removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("tripline-messages-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

#[test]
fn a_problem_every_line_has_is_shown_a_few_times_then_counted() {
    let dir = Scratch::new("replay");
    let lines: Vec<String> = (0..40)
        .map(|i| format!(r#"{{"card":{i},"ts":{i},"amount":5}}"#))
        .collect();
    std::fs::write(dir.0.join("e.jsonl"), lines.join("\n")).unwrap();
    std::fs::write(
        dir.0.join("r.tl"),
        "stream tx { key NOPE time ts time format epoch_ms }\nrule r { pattern { a: amount > 1 } }",
    )
    .unwrap();
    let (ok, err) = tripline(&["replay", "-r", "r.tl", "-e", "e.jsonl"], &[], &dir.0);
    assert!(ok, "{err}");
    let shown = err
        .lines()
        .filter(|l| l.ends_with("key field `NOPE` is missing"))
        .count();
    assert_eq!(shown, 5, "{err}");
    assert!(
        err.contains("40 records with the problem of line 1: key field `NOPE` is missing (5 shown"),
        "{err}"
    );
    assert!(
        err.contains("no line was an event: check the key field `NOPE`"),
        "{err}"
    );
}

#[test]
fn a_missing_rules_directory_names_the_setting() {
    let dir = Scratch::new("rulez");
    std::fs::write(
        dir.0.join("tripline.toml"),
        "[rules]\npaths = [\"rulez\"]\n",
    )
    .unwrap();
    let (ok, err) = tripline(&["serve"], &[], &dir.0);
    assert!(!ok);
    assert!(
        err.contains("rulez: no such file or directory, named by `rules.paths` in tripline.toml"),
        "{err}"
    );
    assert!(err.contains("TRIPLINE__RULES__PATHS"), "{err}");
}

#[test]
fn an_api_address_in_use_stops_the_demo_before_it_produces() {
    let dir = Scratch::new("demo-port");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let (ok, err) = tripline(
        &["demo", "--rules", rules.to_str().unwrap()],
        &[("TRIPLINE__API__LISTEN", &addr)],
        &dir.0,
    );
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "api.listen: cannot listen on {addr}: the address is in use"
        )),
        "{err}"
    );
    assert!(!err.contains("produced"), "{err}");
}

#[test]
fn a_broker_that_does_not_answer_is_named_with_its_setting() {
    let dir = Scratch::new("broker");
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let brokers = format!("127.0.0.1:{port}");
    let (ok, err) = tripline(
        &["serve"],
        &[
            ("TRIPLINE__KAFKA__BROKERS", &brokers),
            (
                "TRIPLINE__RULES__PATHS",
                &format!("[{:?}]", rules.to_str().unwrap()),
            ),
            (
                "TRIPLINE__STATE__DIR",
                dir.0.join("state").to_str().unwrap(),
            ),
        ],
        &dir.0,
    );
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "no Kafka broker answered at `{brokers}` (TRIPLINE__KAFKA__BROKERS)"
        )),
        "{err}"
    );
    assert!(!err.contains("webhooks"), "{err}");
    assert_eq!(err.matches("BrokerTransportFailure").count(), 1, "{err}");
}
