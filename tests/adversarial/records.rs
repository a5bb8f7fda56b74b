//! Records: times, keys and values that once blinded or merged detection.

use tripline::engine::{Engine, Outputs, RuleSet};
use tripline::runtime::{DeadLetterKind, Record, Shard};

const DAY: i64 = 86_400_000;

fn rules(stream_extra: &str) -> std::sync::Arc<RuleSet> {
    RuleSet::from_source(
        "r.tl",
        &format!(
            r#"stream tx {{ key CUSTOMER_ID time TX_DATETIME {stream_extra} }}
               rule big {{ pattern {{ b: TX_AMOUNT > 100 }} }}
               rule pair {{ within 1h pattern {{ a: TX_AMOUNT > 0 then b: TX_AMOUNT > 0 }} }}"#
        ),
        None,
    )
    .unwrap()
}

fn feed(rs: &RuleSet, engine: &mut Engine, out: &mut Outputs, lines: &[String]) {
    for (i, line) in lines.iter().enumerate() {
        let ev = rs.decoder().decode(line.as_bytes(), i as u64).unwrap();
        engine.on_event(ev, out);
    }
}

/// `lines` through a fresh engine to the end of input.
fn run(rs: &std::sync::Arc<RuleSet>, lines: &[String]) -> (Engine, Outputs) {
    let mut engine = Engine::new(rs.clone());
    let mut out = Outputs::default();
    feed(rs, &mut engine, &mut out, lines);
    engine.finish(&mut out);
    (engine, out)
}

fn tx(customer: &str, time: &str, amount: f64) -> String {
    format!(r#"{{"CUSTOMER_ID":{customer},"TX_DATETIME":"{time}","TX_AMOUNT":{amount}}}"#)
}

/// One event dated in the year 9000 used to move the watermark there: every
/// later event was late. It is refused as future and the stream goes on.
#[test]
fn a_future_dated_event_does_not_blind_the_stream() {
    let (engine, out) = run(
        &rules(""),
        &[
            tx("1", "2018-04-01T00:00:00Z", 5.0),
            tx("1", "9000-01-01T00:00:00Z", 500.0),
            tx("1", "2018-04-01T00:01:00Z", 500.0),
            tx("2", "2018-04-02T00:00:00Z", 500.0),
        ],
    );
    let refused: Vec<_> = out
        .late
        .iter()
        .map(|l| (l.event.seq, l.future_limit.is_some()))
        .collect();
    assert_eq!(refused, [(1, true)], "only the future event is refused");
    let big: Vec<_> = out
        .alerts
        .iter()
        .filter(|a| &*a.rule == "big")
        .map(|a| a.key.to_string())
        .collect();
    assert_eq!(big, ["1", "2"]);
    assert_eq!(engine.stats().future, 1);
    assert_eq!(engine.stats().late, 0);
}

/// A partition quiet for longer than the skew is not blinded the other way:
/// the service's clock widens the skew by the time the input was quiet.
#[test]
fn a_real_gap_longer_than_the_skew_is_taken_with_a_clock() {
    let rs = rules("skew 1d");
    let lines = [
        tx("1", "2018-04-01T00:00:00Z", 5.0),
        tx("1", "2018-04-05T00:00:00Z", 500.0),
    ];
    // Without a clock (replay): four days past the latest time is future.
    let (_, out) = run(&rs, &lines);
    assert_eq!(out.late.len(), 1);
    // With a clock that moved four days while the input was quiet: taken.
    let mut engine = Engine::new(rs.clone());
    let mut out = Outputs::default();
    let now = 1_700_000_000_000;
    engine.set_clock(now);
    feed(&rs, &mut engine, &mut out, &lines[..1]);
    engine.set_clock(now + 4 * DAY);
    feed(&rs, &mut engine, &mut out, &lines[1..]);
    assert!(out.late.is_empty(), "{:?}", out.late);
    // `skew none` takes anything.
    let (_, out) = run(&rules("skew none"), &lines);
    assert!(out.late.is_empty());
}

/// `clock skew` refuses events ahead of the wall clock, as the shard's dead
/// letters of kind `future`, even as the first event of a partition.
#[test]
fn clock_skew_refuses_events_ahead_of_the_clock_as_future() {
    let rs = rules("clock skew 1h");
    let mut shard = Shard::standalone(0, rs);
    let now = tripline::telemetry::now_ms();
    let at = |ms: i64| tripline::event::format_time(ms);
    let records = vec![
        Record::data(
            0,
            None,
            Some(tx("1", &at(now + 3 * 3_600_000), 500.0).into_bytes()),
        ),
        Record::data(
            1,
            None,
            Some(tx("1", &at(now - 60_000), 500.0).into_bytes()),
        ),
    ];
    shard.process_batch_at(records, now);
    let out = shard.take_output();
    let dead: Vec<_> = out
        .dead_letters
        .iter()
        .map(|d| (d.kind, d.offset))
        .collect();
    assert_eq!(dead, [(DeadLetterKind::Future, 0)]);
    assert!(
        out.dead_letters[0].reason.contains("clock skew"),
        "{}",
        out.dead_letters[0].reason
    );
    assert_eq!(out.alerts.len(), 1, "the event on time is processed");
}

/// Customers 2^53 and 2^53 + 1 were one key (both read as the same f64),
/// and one alert paired their events.
#[test]
fn numeric_keys_beyond_2_pow_53_stay_apart() {
    let (engine, out) = run(
        &rules(""),
        &[
            tx("9007199254740992", "2018-04-01T00:00:00Z", 5.0),
            tx("9007199254740993", "2018-04-01T00:00:01Z", 5.0),
            tx("18446744073709551617", "2018-04-01T00:00:02Z", 5.0),
            tx("18446744073709551618", "2018-04-01T00:00:03Z", 5.0),
            tx("9007199254740993", "2018-04-01T00:00:05Z", 500.0),
        ],
    );
    assert_eq!(engine.key_count(), 4);
    let pairs: Vec<_> = out
        .alerts
        .iter()
        .filter(|a| &*a.rule == "pair")
        .map(|a| a.key.to_string())
        .collect();
    assert_eq!(
        pairs,
        ["9007199254740993"],
        "only one customer's own events pair up"
    );
    // Alerts carry the key as read, as a JSON number, and as the record key.
    let big = out.alerts.iter().find(|a| &*a.rule == "big").unwrap();
    let json = big.to_json_line();
    assert!(json.contains(r#""key":9007199254740993,"#), "{json}");
    assert_eq!(tripline::runtime::value_text(&big.key), "9007199254740993");
}

/// A record with a null value (a tombstone) is dead-lettered as it was: no
/// value, not an empty one.
#[test]
fn a_null_record_is_dead_lettered_with_no_value() {
    let mut shard = Shard::standalone(0, rules(""));
    shard.process_batch_at(vec![Record::data(7, Some(b"k".to_vec()), None)], 0);
    let out = shard.take_output();
    assert_eq!(out.dead_letters.len(), 1);
    assert_eq!(out.dead_letters[0].value, None);
    assert_eq!(out.dead_letters[0].key.as_deref(), Some(&b"k"[..]));
}

fn padded(card: &str, ts: i64, amount: u32, pad: usize) -> Vec<u8> {
    format!(
        r#"{{"card":"{card}","ts":{ts},"amount":{amount},"pad":"{}"}}"#,
        "x".repeat(pad)
    )
    .into_bytes()
}

fn pair_rules() -> std::sync::Arc<RuleSet> {
    RuleSet::from_source(
        "p.tl",
        r#"stream s { key card time ts time format epoch_ms }
           rule pair { within 1h pattern { a: amount > 0 then b: amount > 0 } payload { note = b.pad } }"#,
        None,
    )
    .unwrap()
}

/// Outputs stay below the producer's limit: a record over it could never be
/// produced and would fail every checkpoint carrying it. An alert over the
/// limit leaves out its largest events (with their size and hash); a dead
/// letter leaves out the record's value.
#[test]
fn outputs_are_bounded_below_the_producer_limit() {
    let limit = 700_000;
    let mut shard = Shard::standalone(0, pair_rules()).with_output_limit(limit);
    let poison = vec![b'#'; 1_040_000];
    shard.process_batch_at(
        vec![
            Record::data(0, Some(b"k".to_vec()), Some(poison.clone())),
            Record::data(1, None, Some(padded("c1", 1_000, 5, 600_000))),
            Record::data(2, None, Some(padded("c1", 2_000, 5, 600_000))),
        ],
        0,
    );
    let out = shard.take_output();
    assert_eq!(out.dead_letters.len(), 1);
    let d = &out.dead_letters[0];
    assert_eq!(
        (d.kind, d.offset, d.value.as_ref()),
        (DeadLetterKind::Malformed, 0, None)
    );
    let hash = format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&poison));
    assert!(
        d.reason.contains("1040000 bytes") && d.reason.contains(&hash),
        "{}",
        d.reason
    );
    assert_eq!(out.alerts.len(), 1);
    let a = &out.alerts[0].record;
    assert!(
        a.key.len() + a.value.len() <= limit,
        "{} bytes",
        a.value.len()
    );
    let json: serde_json::Value = serde_json::from_slice(&a.value).expect("still JSON");
    let a_events = &json["matches"]["a"];
    let b_events = &json["matches"]["b"];
    let omitted = [a_events[0].clone(), b_events[0].clone()]
        .iter()
        .filter(|e| e.get("tripline.omitted").is_some())
        .count();
    assert!(omitted >= 1, "{json}");
    assert!(
        json["truncated"]["bytes"].as_u64().unwrap() >= 600_000,
        "{}",
        json["truncated"]
    );
    assert_eq!(json["key"], "c1", "id, rule and key stay whole");
    assert_eq!(json["id"].as_str().unwrap().len(), 32);
}

/// A key as long as a record would be copied into every output: keys are
/// bounded, and a longer one is dead-lettered with the reason.
#[test]
fn a_record_sized_key_is_refused() {
    let mut shard = Shard::standalone(0, pair_rules());
    shard.process_batch_at(
        vec![Record::data(
            0,
            None,
            Some(padded(&"k".repeat(600_000), 1_000, 5, 0)),
        )],
        0,
    );
    let out = shard.take_output();
    assert_eq!(out.dead_letters.len(), 1);
    assert!(
        out.dead_letters[0].reason.contains("keys may have at most"),
        "{}",
        out.dead_letters[0].reason
    );
}
