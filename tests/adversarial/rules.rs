//! Rules: legal rule text whose cost grows with its input.

use tripline::engine::{Engine, EngineOptions, Outputs, RuleSet};

/// `a: true repeat 2.. combinations then b: true` once gave 61,369 alerts
/// (32 MB) for 24 events of one key, ~5,000 per event. Each event now
/// raises at most the per-event budget; the rest are counted and reported.
#[test]
fn one_event_raises_at_most_the_alert_budget() {
    let options = EngineOptions {
        max_alerts_per_event: 50,
        ..EngineOptions::default()
    };
    let rs = RuleSet::from_source_with(
        "blowup.tl",
        r#"stream s { key k time t time format epoch_ms }
           rule blowup { within 30d pattern { a: true repeat 2.. combinations then b: true } }"#,
        None,
        options,
    )
    .unwrap();
    let mut engine = Engine::new(rs.clone());
    let mut out = Outputs::default();
    let mut per_event = Vec::new();
    for i in 0..24u64 {
        let line = format!(r#"{{"k":"one","t":{}}}"#, 1_000 + i * 1_000);
        let before = out.alerts.len();
        engine.on_event(rs.decoder().decode(line.as_bytes(), i).unwrap(), &mut out);
        per_event.push(out.alerts.len() - before);
    }
    engine.finish(&mut out);
    assert!(per_event.iter().all(|&n| n <= 50), "{per_event:?}");
    assert!(out.alerts.len() <= 24 * 50);
    let stats = engine.stats();
    assert!(stats.suppressed > 10_000, "{} suppressed", stats.suppressed);
    assert!(!out.errors.is_empty());
    assert!(
        out.errors[0].message.contains("max_alerts_per_event"),
        "{}",
        out.errors[0].message
    );
}

/// `tripline check` warns about a rule whose matches per event can grow
/// combinatorially, and not about the shipped rules.
#[test]
fn check_warns_of_combinatorial_patterns() {
    let dir = std::env::temp_dir().join(format!("tripline-adv-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("blowup.tl");
    std::fs::write(
        &file,
        "stream s { key k time t }\n\
         rule blowup { within 30d pattern { a: true repeat 2.. combinations then b: true } }\n\
         rule forks { within 1h pattern { a: true repeat 2.. then any b: true } }\n\
         rule pruned { within 30d skip past last event pattern { a: true repeat 2.. combinations then b: true } }\n\
         rule plain { within 1h pattern { a: true repeat 2..5 consecutive then b: true } }\n",
    )
    .unwrap();
    let check = |path: &std::path::Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tripline"))
            .arg("check")
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let text = check(&file);
    std::fs::remove_dir_all(&dir).unwrap();
    let warned: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("warning: rule `"))
        .map(|l| l.split('`').next().unwrap())
        .collect();
    assert_eq!(warned, ["blowup", "forks"], "{text}");
    let shipped = check(std::path::Path::new("rules"));
    assert!(!shipped.contains("warning"), "{shipped}");
}
