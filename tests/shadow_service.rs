//! A rule in `mode shadow` in the service, on a real Kafka-protocol broker
//! (see `support/kafka.rs`): its alerts go to the shadow topic only, the API
//! lists them apart, and once promoted (one API call) its alerts go to the
//! alerts topic from the next checkpoint, its state kept: a match begun
//! before the promotion completes after it.

#[path = "support/kafka.rs"]
mod kafka_support;
#[path = "support/serve.rs"]
mod serve_support;

use kafka_support::*;
use serve_support::{Terminated, api_address, rules_member};
use std::time::Duration;
use tripline::adapters::kafka;

const TOKEN: &str = "shadow-token";

fn event(card: u32, t: i64, v: u32) -> Input {
    Input {
        key: Some(card.to_string()),
        partition: Some(0),
        payload: Some(format!(r#"{{"card":{card},"t":{t},"v":{v}}}"#).into_bytes()),
    }
}

#[test]
fn a_promoted_shadow_rule_keeps_its_state_and_goes_live() {
    let c = config("shadow");
    let _files = TestFiles::of(&c);
    kafka::ensure_topics(&c.kafka, &broker(), &[&c.kafka.input_topic], 1).unwrap();
    let rules = std::env::temp_dir().join(format!("{}-rules.tl", c.kafka.group_id));
    std::fs::write(
        &rules,
        "stream s { key card  time t  time format epoch_ms }\n\
         rule pair {\n  severity high\n  mode shadow\n  within 1h\n  \
         pattern { a: v == 1 then b: v == 2 }\n}\n",
    )
    .unwrap();
    let log = std::env::temp_dir().join(format!("{}.log", c.kafka.group_id));
    let state = std::env::temp_dir().join(format!("{}.state", c.kafka.group_id));
    let member = Terminated(
        rules_member(&c, &rules, &state, &log)
            .env("TRIPLINE__API__TOKEN", TOKEN)
            .spawn()
            .expect("tripline serve starts"),
    );
    let api = format!("http://{}", api_address(&log));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let get = |path: &str| -> serde_json::Value {
        agent
            .get(format!("{api}{path}"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .call()
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap()
    };

    // Card 1 matches in shadow; card 2 begins a match (its state: a partial
    // match holding `a`).
    let t0 = 1_700_000_000_000i64;
    produce(
        &c,
        &[
            event(1, t0, 1),
            event(1, t0 + 1000, 2),
            event(2, t0 + 2000, 1),
        ],
    );
    let shadow = wait_progressing(
        Duration::from_secs(60),
        || {
            let got = read_committed(&c, &c.kafka.shadow_topic);
            (got.len() as u64, (!got.is_empty()).then_some(got))
        },
        |n| format!("{n} shadow alerts"),
    );
    assert_eq!(shadow.len(), 1);
    let a: serde_json::Value = serde_json::from_slice(&shadow[0].1).unwrap();
    assert_eq!(
        (a["rule"].as_str(), a["key"].as_u64()),
        (Some("pair"), Some(1))
    );
    assert_eq!(a["mode"], "shadow");
    // The API lists it as a shadow alert, not a live one.
    let listed = get("/v1/alerts?mode=shadow");
    assert_eq!(
        listed["alerts"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    assert_eq!(
        get("/v1/alerts")["alerts"].as_array().map(Vec::len),
        Some(0)
    );
    assert!(committed_alerts(&c).is_empty());

    // Promotion: refused without the token, done with it.
    let url = format!("{api}/v1/rules/pair/promote");
    assert_eq!(
        agent.post(&url).send_empty().unwrap().status().as_u16(),
        401
    );
    let mut r = agent
        .post(&url)
        .header("authorization", format!("Bearer {TOKEN}"))
        .send_empty()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let change: serde_json::Value = r.body_mut().read_json().unwrap();
    let hash = change["rule_set"].as_str().unwrap().to_string();
    let text = std::fs::read_to_string(&rules).unwrap();
    assert!(!text.contains("mode"), "{text}");
    assert!(text.contains("  severity high\n  within 1h\n"), "{text}");
    // Promoting it again is a conflict: it is live.
    let again = agent
        .post(&url)
        .header("authorization", format!("Bearer {TOKEN}"))
        .send_empty()
        .unwrap();
    assert_eq!(again.status().as_u16(), 409);
    wait_progressing(
        Duration::from_secs(30),
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let done = text.contains("rules reloaded") && text.contains(&hash);
            (0, done.then_some(()))
        },
        |_| std::fs::read_to_string(&log).unwrap_or_default(),
    );
    let listed = get("/v1/rules");
    assert_eq!(listed["rules"][0]["mode"], "live", "{listed}");

    // Card 2's match, begun in shadow, completes live: one alert on the
    // alerts topic holding both events, and none more in shadow.
    produce(&c, &[event(2, t0 + 3000, 2)]);
    let live = wait_progressing(
        Duration::from_secs(60),
        || {
            let got = committed_alerts(&c);
            (got.len() as u64, (!got.is_empty()).then_some(got))
        },
        |n| format!("{n} alerts"),
    );
    assert_eq!(live.len(), 1);
    let a: serde_json::Value = serde_json::from_str(&live[0]).unwrap();
    assert_eq!(a["key"], 2);
    assert!(a.get("mode").is_none(), "{a}");
    assert_eq!(a["matches"]["a"][0]["t"], t0 + 2000, "{a}");
    assert_eq!(read_committed(&c, &c.kafka.shadow_topic).len(), 1);
    drop(member);
}
