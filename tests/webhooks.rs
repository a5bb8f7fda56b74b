//! Webhook delivery end to end: `tripline serve` on a real Kafka-protocol
//! broker (see `support/kafka.rs`) POSTs committed alerts to a real HTTP
//! receiver on loopback (`support/receiver.rs`) that fails, times out, is
//! down and comes back; the service is killed and restarted. Every
//! committed alert must arrive, signed, in order per key, and an aborted
//! transaction's alerts never.

#[path = "support/kafka.rs"]
mod kafka_support;
#[path = "support/receiver.rs"]
mod receiver;
#[path = "support/serve.rs"]
mod serve_support;

use kafka_support::*;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use receiver::{Mode, Receiver};
use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::Duration;
use tripline::adapters::kafka;
use tripline::config::Config;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A `tripline serve` process, killed (SIGKILL) when dropped.
struct Serve {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

impl Serve {
    /// Stops it with SIGTERM and waits until it has exited.
    fn terminate(mut self) {
        let pid = self.child.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "serve exited with {status}");
    }

    /// Starts `tripline serve` with one webhook endpoint (`endpoint` is its
    /// TOML settings besides name, url and secret).
    fn start(c: &Config, run: &str, receiver: &Receiver, endpoint: &str) -> Serve {
        let log = std::env::temp_dir().join(format!("{}-{run}.log", c.kafka.group_id));
        let file = std::fs::File::create(&log).unwrap();
        let endpoints = format!(
            r#"[{{name = "receiver", url = "{}", secret = "{SECRET}", {endpoint}}}]"#,
            receiver.url()
        );
        let child = serve_support::serve_command(c)
            .env("TRIPLINE__KAFKA__INSTANCE_ID", &c.kafka.instance_id)
            .env(
                "TRIPLINE__KAFKA__STATIC_MEMBERSHIP",
                c.kafka.static_membership.to_string(),
            )
            .env("TRIPLINE__KAFKA__SESSION_TIMEOUT_MS", "6000")
            .env("TRIPLINE__KAFKA__MAX_POLL_INTERVAL_MS", "10000")
            .env("TRIPLINE__CHECKPOINT__INTERVAL_MS", "100")
            .env("TRIPLINE__RUNTIME__SHARD_THREADS", "1")
            .env("TRIPLINE__API__LISTEN", "127.0.0.1:0")
            .env("TRIPLINE__STATE__DIR", &c.state.dir)
            .env("TRIPLINE__WEBHOOKS__ENDPOINTS", endpoints)
            .env(
                "TRIPLINE__WEBHOOKS__DEAD_LETTER_TOPIC",
                &c.webhooks.dead_letter_topic,
            )
            .env("TRIPLINE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Serve { child, log }
    }

    /// The REST API's base URL, once it listens.
    fn api(&self) -> String {
        format!("http://{}", serve_support::api_address(&self.log))
    }
}

fn get_json(url: &str) -> (u16, serde_json::Value) {
    match ureq::get(url).call() {
        Ok(mut r) => (r.status().as_u16(), r.body_mut().read_json().unwrap()),
        Err(ureq::Error::StatusCode(code)) => (code, serde_json::Value::Null),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

/// The committed alerts as (id, key), in the alerts topic's order.
fn committed(c: &Config) -> Vec<(String, String)> {
    read_committed(c, &c.kafka.alerts_topic)
        .into_iter()
        .map(|(k, v, _)| {
            let a: serde_json::Value = serde_json::from_slice(&v).unwrap();
            (
                a["id"].as_str().unwrap().to_string(),
                String::from_utf8(k.unwrap()).unwrap(),
            )
        })
        .collect()
}

/// Waits until the receiver has accepted every id in `ids`, for as long as
/// deliveries keep arriving (fails after `patience` without one).
fn wait_delivered(receiver: &Receiver, ids: &[String], patience: Duration) {
    wait_progressing(
        patience,
        || {
            let got: std::collections::BTreeSet<String> =
                receiver.delivered().into_iter().collect();
            let missing = ids.iter().filter(|i| !got.contains(*i)).count();
            (got.len() as u64, (missing == 0).then_some(()))
        },
        |got| format!("{got} deliveries accepted; {} alerts expected", ids.len()),
    )
}

/// Every request was signed, carried the alert id as idempotency key, and
/// each key's alerts were first accepted in the alerts topic's order.
fn check_requests(receiver: &Receiver, alerts: &[(String, String)]) {
    let requests = receiver.requests();
    for r in &requests {
        assert!(r.signature_ok, "bad signature on {}", r.id);
        assert_eq!(r.idempotency_key, r.id);
        assert_eq!(r.body["id"].as_str(), Some(r.id.as_str()));
    }
    let key_of: BTreeMap<&str, &str> = alerts
        .iter()
        .map(|(id, k)| (id.as_str(), k.as_str()))
        .collect();
    let mut expected: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (id, k) in alerts {
        expected.entry(k).or_default().push(id);
    }
    let mut got: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for id in receiver.delivered() {
        let k = key_of
            .get(id.as_str())
            .expect("only committed alerts arrive");
        got.entry(k).or_default().push(id);
    }
    for (k, ids) in expected {
        assert_eq!(got[k], ids, "key {k}: delivered out of order");
    }
}

fn produce_sample(c: &Config) {
    kafka::ensure_topics(
        &c.kafka,
        &broker(),
        &[&c.kafka.input_topic],
        c.kafka.partitions,
    )
    .unwrap();
    let (input, _) = sample_input(c.kafka.partitions);
    produce(c, &input);
}

/// Waits until `at_least` alerts are on the alerts topic, for as long as
/// their number grows (the logs of `serves` explain a failure).
fn wait_for_alerts(c: &Config, at_least: usize, serves: &[&Serve]) -> Vec<(String, String)> {
    wait_progressing(
        Duration::from_secs(120),
        || {
            let alerts = committed(c);
            (
                alerts.len() as u64,
                (alerts.len() >= at_least).then_some(alerts),
            )
        },
        |n| {
            let logs: Vec<String> = serves
                .iter()
                .map(|s| std::fs::read_to_string(&s.log).unwrap_or_default())
                .collect();
            format!(
                "{n} of {at_least} alerts committed; logs:\n{}",
                logs.join("\n")
            )
        },
    )
}

fn expected_alert_count() -> usize {
    let (_, lines) = sample_input(4);
    replay(&shipped_rules(), &lines).len()
}

#[test]
fn every_alert_arrives_through_failures_timeouts_and_an_outage() {
    let c = config("webhook-faults");
    let _files = TestFiles::of(&c);
    let mut receiver = Receiver::start(SECRET, Duration::from_secs(2));
    receiver.set_mode(Mode::Fail);
    produce_sample(&c);
    let serve = Serve::start(
        &c,
        "faults",
        &receiver,
        r#"timeout_ms = 300, max_concurrency = 4, retry = {initial_backoff_ms = 50, max_backoff_ms = 400, give_up_after = "10m"}"#,
    );
    let api = serve.api();
    let alerts = wait_for_alerts(&c, expected_alert_count(), &[&serve]);
    // 500s, then answers too late, then nobody listening, then 503 with
    // Retry-After, then the receiver recovers.
    for (mode, secs) in [(Mode::Fail, 1), (Mode::Slow, 2)] {
        receiver.set_mode(mode);
        std::thread::sleep(Duration::from_secs(secs));
    }
    receiver.down();
    std::thread::sleep(Duration::from_secs(2));
    receiver.set_mode(Mode::Busy);
    receiver.up();
    std::thread::sleep(Duration::from_secs(2));
    let before_recovery = receiver.delivered().len();
    receiver.set_mode(Mode::Accept);
    let ids: Vec<String> = alerts.iter().map(|(id, _)| id.clone()).collect();
    wait_delivered(&receiver, &ids, Duration::from_secs(60));
    assert!(
        before_recovery < ids.len(),
        "the failures were not exercised: {before_recovery} delivered before recovery"
    );
    check_requests(&receiver, &alerts);
    let statuses: Vec<u16> = receiver.requests().iter().map(|r| r.status).collect();
    for failed in [500, 503] {
        assert!(statuses.contains(&failed), "no {failed} answered");
    }

    // The status as the REST API has it.
    let (code, d) = get_json(&format!("{api}/v1/alerts/{}/deliveries", ids[0]));
    assert_eq!(code, 200);
    let d = &d["deliveries"][0];
    assert_eq!(d["endpoint"], "receiver");
    assert_eq!(d["state"], "delivered");
    assert!(d["attempts"].as_u64().unwrap() >= 2, "{d}");
    let started = now();
    loop {
        let (_, w) = get_json(&format!("{api}/v1/webhooks"));
        let e = &w["endpoints"][0];
        if e["queued"] == 0 {
            assert_eq!(e["delivered"].as_u64().unwrap() as usize, ids.len(), "{e}");
            assert!(e["failed_attempts"].as_u64().unwrap() > 0, "{e}");
            assert_eq!(e["dead"], 0, "{e}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{w}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, _) = get_json(&format!("{api}/v1/alerts/{}/deliveries", "0".repeat(32)));
    assert_eq!(code, 404);
}

#[test]
fn a_killed_service_delivers_what_was_pending_after_restart() {
    let c = config("webhook-crash");
    let _files = TestFiles::of(&c);
    let receiver = Receiver::start(SECRET, Duration::from_secs(2));
    receiver.set_mode(Mode::Fail);
    produce_sample(&c);
    let endpoint =
        r#"retry = {initial_backoff_ms = 50, max_backoff_ms = 200, give_up_after = "10m"}"#;
    let serve = Serve::start(&c, "crash-1", &receiver, endpoint);
    let alerts = wait_for_alerts(&c, expected_alert_count(), &[&serve]);
    // Some delivered, the rest pending, when the service is killed: the
    // later half of the alerts fails until then (and holds back its keys'
    // later alerts).
    for (id, _) in &alerts[alerts.len() / 2..] {
        receiver.answer(id, Mode::Fail);
    }
    receiver.set_mode(Mode::Accept);
    let started = now();
    let mut last = (0, now());
    while last.0 == 0 || last.1.elapsed() < Duration::from_secs(1) {
        let n = receiver.delivered().len();
        if n != last.0 {
            last = (n, now());
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no delivery after the receiver recovered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(serve); // SIGKILL
    let before = receiver.delivered().len();
    assert!(before < alerts.len(), "nothing was pending at the kill");
    receiver.clear_answers();
    let _serve = Serve::start(&c, "crash-2", &receiver, endpoint);
    let ids: Vec<String> = alerts.iter().map(|(id, _)| id.clone()).collect();
    wait_delivered(&receiver, &ids, Duration::from_secs(90));
    check_requests(&receiver, &alerts);
}

/// The service SIGKILLed while alerts are still being committed — before
/// its webhooks consumer has read them into the outbox — and restarted:
/// every group it subscribes in takes its partitions back at once (static
/// membership), so the alerts committed after the restart are delivered
/// too, not only those the outbox held at the kill. (Without
/// `group.instance.id` on the webhooks consumer its group waited for the
/// dead member, and no later alert was delivered.)
#[test]
fn a_service_killed_before_reading_its_alerts_delivers_them_after_restart() {
    let mut c = config("webhook-kill-early");
    c.kafka.static_membership = true;
    let _files = TestFiles::of(&c);
    let receiver = Receiver::start(SECRET, Duration::from_secs(2));
    receiver.set_mode(Mode::Fail);
    produce_sample(&c);
    let endpoint =
        r#"retry = {initial_backoff_ms = 50, max_backoff_ms = 200, give_up_after = "10m"}"#;
    let serve = Serve::start(&c, "early-1", &receiver, endpoint);
    let first = wait_for_alerts(&c, 1, &[&serve]);
    drop(serve); // SIGKILL, with alerts still to commit
    let expected = expected_alert_count();
    assert!(
        first.len() < expected,
        "every alert was committed before the kill"
    );
    receiver.set_mode(Mode::Accept);
    let _serve = Serve::start(&c, "early-2", &receiver, endpoint);
    let alerts = wait_for_alerts(&c, expected, &[&_serve]);
    let ids: Vec<String> = alerts.iter().map(|(id, _)| id.clone()).collect();
    wait_delivered(&receiver, &ids, Duration::from_secs(90));
    check_requests(&receiver, &alerts);
}

/// Produces alert records to the alerts topic in one transaction, then
/// commits or aborts it.
fn produce_alerts(c: &Config, txn: &str, alerts: &[(&str, &str)], commit: bool) {
    let producer: ThreadedProducer<DefaultProducerContext> =
        kafka::client_config(&c.kafka, &broker())
            .set("transactional.id", format!("{}-{txn}", c.kafka.group_id))
            .create()
            .unwrap();
    producer.init_transactions(Duration::from_secs(30)).unwrap();
    producer.begin_transaction().unwrap();
    for (key, body) in alerts {
        kafka::send_waiting(
            &producer,
            BaseRecord::to(&c.kafka.alerts_topic)
                .key(*key)
                .payload(*body)
                .partition(0),
        )
        .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    if commit {
        producer
            .commit_transaction(Duration::from_secs(30))
            .unwrap();
    } else {
        producer.abort_transaction(Duration::from_secs(30)).unwrap();
    }
}

/// The input topic, and a one-partition alerts topic for alerts produced
/// straight to it (their order is the partition's).
fn alert_topics(c: &Config) {
    kafka::ensure_topics(&c.kafka, &broker(), &[&c.kafka.input_topic], 4).unwrap();
    kafka::ensure_topics(&c.kafka, &broker(), &[&c.kafka.alerts_topic], 1).unwrap();
}

/// Waits until the webhooks' dead-letter topic holds `n` records.
fn wait_for_dead_letters(c: &Config, n: usize) -> Vec<ReadRecord> {
    let started = now();
    loop {
        let dead = read_committed(c, &c.webhooks.dead_letter_topic);
        if dead.len() >= n {
            return dead;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "dead letters: {dead:?}"
        );
    }
}

/// A record header's value (empty when absent).
fn header(r: &ReadRecord, name: &str) -> String {
    r.2.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// An alert of rule `velocity`, severity high.
fn alert(id: &str, key: &str) -> String {
    alert_with(id, key, "high", "")
}

#[test]
fn aborted_alerts_never_arrive_and_given_up_ones_are_dead_lettered() {
    let mut c = config("webhook-abort");
    let _files = TestFiles::of(&c);
    c.webhooks.dead_letter_topic = format!("{}.webhook-dlq", c.kafka.group_id);
    alert_topics(&c);
    let id = |n: u32| format!("{n:032x}");
    let aborted = alert(&id(1), "k1");
    let gone = alert(&id(2), "k1");
    let failing = alert(&id(3), "k2");
    let last = alert(&id(4), "k1");
    produce_alerts(&c, "a", &[("k1", &aborted)], false);
    produce_alerts(
        &c,
        "b",
        &[("k1", &gone), ("k2", &failing), ("x", "not an alert")],
        true,
    );
    produce_alerts(&c, "c", &[("k1", &aborted)], false);
    produce_alerts(&c, "d", &[("k1", &last)], true);
    let receiver = Receiver::start(SECRET, Duration::from_secs(2));
    receiver.answer(&id(2), Mode::Gone);
    receiver.answer(&id(3), Mode::Fail);
    let serve = Serve::start(
        &c,
        "abort",
        &receiver,
        r#"retry = {initial_backoff_ms = 50, max_backoff_ms = 200, give_up_after = "2s"}"#,
    );
    let api = serve.api();
    // The 410 is not retried, so the key's next alert follows it; the 500s
    // go on until the give-up horizon.
    wait_delivered(&receiver, &[id(4)], Duration::from_secs(60));
    let dead = wait_for_dead_letters(&c, 3);
    let requests = receiver.requests();
    assert!(
        requests.iter().all(|r| r.id != id(1)),
        "an aborted alert was delivered"
    );
    assert_eq!(requests.iter().filter(|r| r.id == id(2)).count(), 1);
    assert!(requests.iter().filter(|r| r.id == id(3)).count() > 1);
    let by_alert = |n: u32| {
        dead.iter()
            .find(|r| header(r, "tripline.alert.id") == id(n))
            .unwrap_or_else(|| panic!("alert {n} not dead-lettered: {dead:?}"))
    };
    let d2 = by_alert(2);
    assert_eq!(d2.1, gone.as_bytes(), "the alert goes unchanged");
    assert_eq!(header(d2, "tripline.webhook.endpoint"), "receiver");
    assert_eq!(header(d2, "tripline.webhook.last_status"), "410");
    assert!(header(d2, "tripline.webhook.error").starts_with("not retried: HTTP 410"));
    let d3 = by_alert(3);
    assert!(
        header(d3, "tripline.webhook.error").starts_with("gave up after"),
        "{d3:?}"
    );
    assert!(
        dead.iter().any(|r| r.1 == b"not an alert"
            && header(r, "tripline.webhook.error").contains("not an alert")),
        "{dead:?}"
    );
    let (code, d) = get_json(&format!("{api}/v1/alerts/{}/deliveries", id(3)));
    assert_eq!(code, 200);
    assert_eq!(d["deliveries"][0]["state"], "dead", "{d}");
    assert_eq!(d["deliveries"][0]["last_status"], 500, "{d}");
    let (code, _) = get_json(&format!("{api}/v1/alerts/{}/deliveries", id(1)));
    assert_eq!(code, 404, "an aborted alert has no delivery");
}

/// The receivers' example in `docs/examples/verify_webhook.py` accepts a
/// request as sent, and refuses it with one byte of the body changed.
#[test]
fn the_documented_python_check_verifies_a_delivered_request() {
    let c = config("webhook-docs");
    let _files = TestFiles::of(&c);
    alert_topics(&c);
    let id = format!("{:032x}", 42);
    produce_alerts(&c, "a", &[("k", &alert(&id, "k"))], true);
    let receiver = Receiver::start(SECRET, Duration::from_secs(2));
    let _serve = Serve::start(&c, "docs", &receiver, "timeout_ms = 2000");
    wait_delivered(
        &receiver,
        std::slice::from_ref(&id),
        Duration::from_secs(60),
    );
    let r = receiver.requests().remove(0);
    let check = |body: &[u8]| {
        let file = std::env::temp_dir().join(format!("{}.body", c.kafka.group_id));
        std::fs::write(&file, body).unwrap();
        std::process::Command::new("python3")
            .arg("docs/examples/verify_webhook.py")
            .args([SECRET, &r.id, &r.timestamp, &r.signature])
            .arg(&file)
            .status()
            .expect("python3 runs the documented check")
            .success()
    };
    assert!(
        check(&r.raw),
        "the documented check refuses a genuine request"
    );
    let mut tampered = r.raw.clone();
    tampered[10] ^= 1;
    assert!(
        !check(&tampered),
        "the documented check accepts a changed body"
    );
}

fn alert_with(id: &str, key: &str, severity: &str, notify: &str) -> String {
    format!(
        r#"{{"id":"{id}","rule":"velocity","key":"{key}","event_time":"2018-04-01T10:00:00Z","severity":"{severity}","score":20,"kind":"match","matches":{{}},"values":{{}}{notify}}}"#
    )
}

/// A rule's `notify` sends its alerts to the endpoint whatever the
/// endpoint's filters; one naming an endpoint not configured is
/// dead-lettered with that reason.
#[test]
fn notify_in_the_alert_routes_past_the_endpoint_filters() {
    let mut c = config("webhook-notify");
    let _files = TestFiles::of(&c);
    c.webhooks.dead_letter_topic = format!("{}.webhook-dlq", c.kafka.group_id);
    alert_topics(&c);
    let id = |n: u32| format!("{n:032x}");
    let filtered = alert_with(&id(1), "k", "high", "");
    let named = alert_with(&id(2), "k", "high", r#","notify":["receiver"]"#);
    let unknown = alert_with(&id(3), "k", "high", r#","notify":["elsewhere"]"#);
    let critical = alert_with(&id(4), "k", "critical", "");
    produce_alerts(
        &c,
        "a",
        &[
            ("k", &filtered),
            ("k", &named),
            ("k", &unknown),
            ("k", &critical),
        ],
        true,
    );
    let receiver = Receiver::start(SECRET, Duration::from_secs(2));
    let _serve = Serve::start(&c, "notify", &receiver, r#"min_severity = "critical""#);
    wait_delivered(&receiver, &[id(2), id(4)], Duration::from_secs(60));
    assert_eq!(receiver.delivered(), [id(2), id(4)]);
    let dead = wait_for_dead_letters(&c, 1);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        header(&dead[0], "tripline.webhook.error"),
        "rule `velocity` notifies endpoint `elsewhere`, which is not in webhooks.endpoints"
    );
}

/// `serve` does not start with a rule that names an endpoint not configured.
#[test]
fn serve_refuses_rules_that_notify_an_unknown_endpoint() {
    let c = config("webhook-notify-check");
    let _files = TestFiles::of(&c);
    let dir = std::env::temp_dir().join(format!("{}.rules", c.kafka.group_id));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy("rules/stream.tl", dir.join("stream.tl")).unwrap();
    std::fs::write(
        dir.join("big.tl"),
        "rule big {\n  notify pager\n  pattern { x: TX_AMOUNT > 1000 }\n}\n",
    )
    .unwrap();
    let receiver = Receiver::start(SECRET, Duration::from_secs(1));
    let out = serve_support::serve_command(&c)
        .env(
            "TRIPLINE__RULES__PATHS",
            serde_json::to_string(&[&dir]).unwrap(),
        )
        .env("TRIPLINE__STATE__DIR", &c.state.dir)
        .env("TRIPLINE__API__LISTEN", "")
        .env(
            "TRIPLINE__WEBHOOKS__ENDPOINTS",
            format!(
                r#"[{{name = "receiver", url = "{}", secret = "{SECRET}"}}]"#,
                receiver.url()
            ),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "rule `big` notifies `pager`: not in webhooks.endpoints (configured: receiver)"
        ),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// Two instances share the alerts topic's partitions (consumer group
/// `{group}-webhooks`); one stops (SIGTERM) with deliveries pending, and
/// the other takes its partitions over and delivers what it left. (A
/// member that dies without leaving is covered by the crash test above,
/// which restarts it: the test broker does not expire a dead member's
/// session on its own, as Kafka does.)
#[test]
fn the_other_instance_delivers_what_a_stopped_one_left() {
    let c = config("webhook-two");
    let _files = TestFiles::of(&c);
    let receiver = Receiver::start(SECRET, Duration::from_secs(2));
    receiver.set_mode(Mode::Fail);
    produce_sample(&c);
    let endpoint =
        r#"retry = {initial_backoff_ms = 50, max_backoff_ms = 200, give_up_after = "10m"}"#;
    let mut a = c.clone();
    a.kafka.instance_id = format!("{}-a", c.kafka.instance_id);
    a.state.dir = c.state.dir.with_extension("a");
    let mut b = c.clone();
    b.kafka.instance_id = format!("{}-b", c.kafka.instance_id);
    b.state.dir = c.state.dir.with_extension("b");
    let serve_a = Serve::start(&a, "two-a", &receiver, endpoint);
    let serve_b = Serve::start(&b, "two-b", &receiver, endpoint);
    let apis = [serve_a.api(), serve_b.api()];
    let alerts = wait_for_alerts(&c, expected_alert_count(), &[&serve_a, &serve_b]);
    // Both instances have deliveries queued (the receiver fails them all)
    // when one is killed: only the other can deliver the killed one's.
    let started = now();
    loop {
        let queued = apis.clone().map(|api| {
            let (_, w) = get_json(&format!("{api}/v1/webhooks"));
            w["endpoints"][0]["queued"].as_i64().unwrap_or(0)
        });
        if queued.iter().all(|n| *n > 0) && queued.iter().sum::<i64>() == alerts.len() as i64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "queued: {queued:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    serve_a.terminate();
    receiver.set_mode(Mode::Accept);
    let ids: Vec<String> = alerts.iter().map(|(id, _)| id.clone()).collect();
    wait_delivered(&receiver, &ids, Duration::from_secs(120));
    check_requests(&receiver, &alerts);
}
