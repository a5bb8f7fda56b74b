//! `tripline serve` processes that stop, crash and hand partitions over,
//! on a real Kafka-protocol broker (see `support/kafka.rs`): whatever
//! happens, the read_committed alerts topic ends up holding exactly the
//! alerts `replay` gives for the same events — none lost, none twice.

#[path = "support/kafka.rs"]
mod kafka_support;
#[path = "support/sample.rs"]
mod sample;
#[path = "support/serve.rs"]
mod serve_support;

use kafka_support::*;
use serve_support::serve_command;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tripline::adapters::kafka;
use tripline::config::Config;

/// A `tripline serve` process, killed if the test ends without stopping it.
struct Serve(Option<Child>);

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }
}

impl Serve {
    fn child(&mut self) -> Child {
        self.0.take().expect("running")
    }
}

/// Starts `tripline serve` configured by environment overrides only.
fn serve(c: &Config, instance: &str) -> Serve {
    Serve(Some(spawn(c, instance, false, &state_dir(c, instance))))
}

/// A member with static membership: its restart takes over its partitions.
fn serve_static(c: &Config, instance: &str) -> Serve {
    Serve(Some(spawn(c, instance, true, &state_dir(c, instance))))
}

/// Each instance's data directory: its restarts find their local state.
fn state_dir(c: &Config, instance: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{}-{instance}.state", c.kafka.group_id))
}

fn log_path(c: &Config, instance: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{}-{instance}.log", c.kafka.group_id))
}

/// Waits until the instance's log (all its runs) says `needle` `n` times.
fn wait_for_log(c: &Config, instance: &str, needle: &str, n: usize) {
    // Progress is the log growing: a loaded machine gets the time it needs.
    wait_progressing(
        Duration::from_secs(120),
        || {
            let log = std::fs::read_to_string(log_path(c, instance)).unwrap_or_default();
            (
                log.len() as u64,
                (log.matches(needle).count() >= n).then_some(()),
            )
        },
        |_| format!("`{needle}` not logged {n} times by {instance}"),
    )
}

fn spawn(c: &Config, instance: &str, static_membership: bool, dir: &std::path::Path) -> Child {
    spawn_with_rules(
        c,
        instance,
        static_membership,
        dir,
        std::path::Path::new("rules"),
    )
}

fn spawn_with_rules(
    c: &Config,
    instance: &str,
    static_membership: bool,
    dir: &std::path::Path,
    rules: &std::path::Path,
) -> Child {
    let log = log_path(c, instance);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    serve_command(c)
        .env("TRIPLINE__KAFKA__INSTANCE_ID", instance)
        .env("TRIPLINE__KAFKA__SESSION_TIMEOUT_MS", "6000")
        .env("TRIPLINE__KAFKA__MAX_POLL_INTERVAL_MS", "10000")
        .env("TRIPLINE__CHECKPOINT__INTERVAL_MS", "100")
        .env("TRIPLINE__RUNTIME__SHARD_THREADS", "1")
        // Several members run at once: each takes a free port.
        .env("TRIPLINE__API__LISTEN", "127.0.0.1:0")
        .env("TRIPLINE__API__TOKEN", API_TOKEN)
        .env(
            "TRIPLINE__RULES__PATHS",
            serde_json::to_string(&[rules]).unwrap(),
        )
        .env("TRIPLINE__RULES__RELOAD_INTERVAL_MS", "200")
        .env("TRIPLINE__STATE__DIR", dir)
        // Far less than the sample's keys hold: idle keys are passivated
        // and read back all the time, crashes included.
        .env("TRIPLINE__STATE__MEMORY_BUDGET_MB", "1")
        // The test broker answers a fetch with all it holds past the offset,
        // whatever the request's size limits; a long run's backlog exceeds
        // librdkafka's default limit on a response (100 MB).
        .env(
            "TRIPLINE__KAFKA__CLIENT__receive.message.max.bytes",
            "2000000000",
        )
        .env(
            "TRIPLINE__KAFKA__STATIC_MEMBERSHIP",
            static_membership.to_string(),
        )
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("tripline serve starts")
}

const API_TOKEN: &str = "test-token";

/// The REST API's address, from the member's log.
fn api_address(c: &Config, instance: &str) -> String {
    serve_support::api_address(&log_path(c, instance))
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

/// Stops a process with SIGTERM and checks it exited cleanly.
fn terminate(mut s: Serve) {
    let mut child = s.child();
    signal(&child, "-TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "tripline serve exited with {status}");
}

fn kill(mut s: Serve) {
    let mut child = s.child();
    signal(&child, "-KILL");
    child.wait().unwrap();
}

/// Waits until the alerts topic holds `n` alerts (or fails after a while).
fn wait_for_alerts(c: &Config, n: usize) -> Vec<String> {
    let started = now();
    loop {
        let got = committed_alerts(c);
        if got.len() >= n {
            return got;
        }
        // Long runs (TRIPLINE_CRASH_EVENTS) may take longer to catch up.
        let limit = Duration::from_secs(240 + n as u64 / 500);
        if started.elapsed() >= limit {
            diagnose(c);
        }
        assert!(
            started.elapsed() < limit,
            "{} of {n} alerts after {limit:?}",
            got.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits until the alerts topic holds `n` alerts, then a little longer, as
/// anything produced twice would show up within a few more checkpoints:
/// the count when `n` was first reached, and the sorted alerts after.
fn settled_alerts(c: &Config, n: usize) -> (usize, Vec<String>) {
    let first_count = wait_for_alerts(c, n).len();
    std::thread::sleep(Duration::from_secs(2));
    (first_count, committed_alerts(c))
}

fn setup(test: &str) -> (Config, Vec<Input>, Vec<String>) {
    let c = config(test);
    kafka::ensure_topics(&c.kafka, &broker(), &[&c.kafka.input_topic], 4).unwrap();
    let (input, lines) = sample_input(4);
    let mut expected = replay(&shipped_rules(), &lines);
    expected.sort();
    (c, input, expected)
}

#[test]
fn a_member_that_stops_hands_its_partitions_over() {
    let (c, input, expected) = setup("handover");
    let _files = TestFiles::of(&c);
    let half = input.len() / 2;
    produce(&c, &input[..half]);
    let a = serve(&c, "a");
    std::thread::sleep(Duration::from_secs(4));
    let b = serve(&c, "b");
    // Long enough for the group to rebalance and both members to work.
    std::thread::sleep(Duration::from_secs(8));
    terminate(a);
    produce(&c, &input[half..]);
    let (first_count, got) = settled_alerts(&c, expected.len());
    terminate(b);
    assert_eq!(got.len(), first_count, "no alert arrives twice");
    assert_eq!(got, expected);
}

/// A small deterministic generator for kill delays (the seed is printed,
/// so a failing run can be repeated with `TRIPLINE_CRASH_SEED`).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// SIGKILL at random moments while input arrives, `TRIPLINE_CRASH_KILLS`
/// times (20 by default), over the handbook sample or, with
/// `TRIPLINE_CRASH_EVENTS`, that many events (the sample repeated); see
/// the README for the long run.
#[test]
fn repeated_crashes_lose_nothing_and_duplicate_nothing() {
    let events = env_or("TRIPLINE_CRASH_EVENTS", 0) as usize;
    let (c, input, expected) = if events == 0 {
        setup("crash")
    } else {
        let c = config("crash");
        kafka::ensure_topics(&c.kafka, &broker(), &[&c.kafka.input_topic], 4).unwrap();
        let (input, lines) = scaled_input(4, events);
        let mut expected = replay(&shipped_rules(), &lines);
        expected.sort();
        (c, input, expected)
    };
    let _files = TestFiles::of(&c);
    eprintln!(
        "crash test: {} events, {} expected alerts",
        input.len(),
        expected.len()
    );
    let kills = env_or("TRIPLINE_CRASH_KILLS", 20) as usize;
    let random = {
        use std::hash::{BuildHasher, Hasher};
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    };
    let seed = env_or("TRIPLINE_CRASH_SEED", random | 1);
    eprintln!("crash test: {kills} kills, TRIPLINE_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    // The input arrives while the member is being killed, so that kills
    // land while checkpoints are producing and committing: a restart must
    // abort what the killed run left open and produce it again, once.
    // Static membership lets each restart take the partitions back at once
    // rather than wait for the dead member's session to expire.
    let chunk = input.len().div_ceil(kills);
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (config, input) = (&c, &input);
        let feeder = scope.spawn(move || {
            for part in input.chunks(chunk) {
                produce(config, part);
                if rx.recv().is_err() {
                    break;
                }
            }
        });
        for round in 0..kills {
            let p = serve_static(&c, "only");
            wait_for_log(&c, "only", "partitions assigned", round + 1);
            std::thread::sleep(Duration::from_millis(100 + rng.below(1500)));
            kill(p);
            tx.send(()).ok();
        }
        drop(tx);
        feeder.join().unwrap();
    });
    let p = serve_static(&c, "only");
    let (first_count, got) = settled_alerts(&c, expected.len());
    terminate(p);
    assert_eq!(got.len(), first_count, "no alert arrives twice");
    assert_eq!(got, expected);
}

#[test]
fn a_replacement_with_an_empty_data_directory_restores_from_the_changelog() {
    let (c, input, expected) = setup("handoff");
    let _files = TestFiles::of(&c);
    let half = input.len() / 2;
    produce(&c, &input[..half]);
    // The member dies; its replacement (same name, as a rescheduled
    // instance would have, but a new machine: an empty data directory)
    // must rebuild the state from the changelogs alone.
    let a = Serve(Some(spawn(&c, "node", true, &state_dir(&c, "node-a"))));
    wait_for_log(&c, "node", "partitions assigned", 1);
    // Killed once it has committed state (a first alert is on the topic),
    // however slow the machine, so that there is a changelog to restore.
    wait_for_alerts(&c, 1);
    kill(a);
    produce(&c, &input[half..]);
    let b = Serve(Some(spawn(&c, "node", true, &state_dir(&c, "node-b"))));
    let (first_count, got) = settled_alerts(&c, expected.len());
    terminate(b);
    assert_eq!(got.len(), first_count, "no alert arrives twice");
    assert_eq!(got, expected);
    let log = std::fs::read_to_string(log_path(&c, "node")).unwrap();
    assert!(
        log.contains("changelog tail applied"),
        "the replacement read the changelogs:\n{log}"
    );
}

#[test]
fn rules_changed_while_running_keep_the_state_of_the_others() {
    let (c, input, expected) = setup("reload");
    let _files = TestFiles::of(&c);
    let rules = sample::copy_rules_and_models(
        &std::env::temp_dir().join(format!("{}.rules", c.kafka.group_id)),
    );
    let half = input.len() / 2;
    produce(&c, &input[..half]);
    let p = Serve(Some(spawn_with_rules(
        &c,
        "only",
        false,
        &state_dir(&c, "only"),
        &rules,
    )));
    wait_for_alerts(&c, 1);
    // A file that does not compile is refused; the running rules stay.
    std::fs::write(
        rules.join("big.tl"),
        "rule big { pattern { x: TX_AMONT > 200 } }\n",
    )
    .unwrap();
    wait_for_log(&c, "only", "do not compile", 1);
    std::fs::write(
        rules.join("big.tl"),
        "rule big { severity low pattern { x: TX_AMOUNT > 200 } }\n",
    )
    .unwrap();
    wait_for_log(&c, "only", "rules reloaded", 1);
    produce(&c, &input[half..]);
    let rule_of = |line: &String| -> String {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        v["rule"].as_str().unwrap().to_string()
    };
    let started = now();
    let (old, big) = loop {
        let all = committed_alerts(&c);
        let (big, old): (Vec<String>, Vec<String>) =
            all.into_iter().partition(|l| rule_of(l) == "big");
        if old.len() >= expected.len() || started.elapsed() > Duration::from_secs(240) {
            break (old, big);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    terminate(p);
    // The shipped rules kept their state across the change: exactly their
    // alerts of an uninterrupted run, none lost, none twice.
    assert_eq!(old, expected);
    // The new rule saw at least every event produced after it was swapped
    // in, each once.
    let big_after = input[half..]
        .iter()
        .filter_map(|i| i.payload.as_ref())
        .map(|p| serde_json::from_slice::<serde_json::Value>(p).unwrap())
        .filter(|v| v["TX_AMOUNT"].as_f64().unwrap() > 200.0)
        .count();
    let mut ids: Vec<String> = big
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["matches"]["x"][0]["TRANSACTION_ID"].to_string()
        })
        .collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "no event alerted twice by the new rule");
    assert!(
        n >= big_after && big_after > 0,
        "{n} alerts of the new rule, {big_after} events for it after the swap"
    );
    let log = std::fs::read_to_string(log_path(&c, "only")).unwrap();
    assert!(
        log.contains("rules reloaded: new rule: starts empty"),
        "{log}"
    );
    assert!(log.contains("rules reloaded: state kept"), "{log}");
}

/// A changelog record that does not decode: a member that must read it
/// stops with an error naming the record, rather than run on without that
/// state.
#[test]
fn a_corrupt_changelog_record_stops_the_member_naming_it() {
    let (c, input, _) = setup("corrupt");
    let _files = TestFiles::of(&c);
    produce(&c, &input);
    let a = serve(&c, "a");
    wait_for_alerts(&c, 1);
    terminate(a);
    let changelog = kafka::topology::changelog_topic(&c.kafka.group_id, &c.kafka.input_topic);
    produce_to(
        &c,
        &changelog,
        &[Input {
            key: Some("k/\0\0\0\0garbled".into()),
            partition: Some(2),
            payload: Some(b"not a snapshot".to_vec()),
        }],
    );
    // On an empty data directory: the whole changelog is read.
    let mut b = Serve(Some(spawn(&c, "b", false, &state_dir(&c, "b"))));
    let mut child = b.child();
    let started = now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "still running two minutes after starting on a corrupt changelog"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success());
    let log = std::fs::read_to_string(log_path(&c, "b")).unwrap();
    assert!(
        log.contains(&format!("changelog `{changelog}` partition 2 offset ")),
        "{log}"
    );
    assert!(log.contains("not a tripline snapshot"), "{log}");
}

/// Where the internal topics' readers stand: committed offset, high
/// watermark, and how much a read_committed and a read_uncommitted reader
/// can read past the committed offset.
fn diagnose(c: &Config) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    for iso in ["read_committed", "read_uncommitted"] {
        let cons: BaseConsumer = kafka::client_config(&c.kafka, &broker())
            .set("group.id", &c.kafka.group_id)
            .set("isolation.level", iso)
            .create()
            .unwrap();
        let topic = format!("{}.by.TERMINAL_ID", c.kafka.group_id);
        for p in 0..4 {
            let (lo, hi) = cons
                .fetch_watermarks(&topic, p, Duration::from_secs(5))
                .unwrap();
            let mut tpl = rdkafka::TopicPartitionList::new();
            tpl.add_partition(&topic, p);
            let committed = cons.committed_offsets(tpl, Duration::from_secs(5)).unwrap();
            let off = committed.elements()[0].offset();
            let reader: BaseConsumer = kafka::client_config(&c.kafka, &broker())
                .set("group.id", "diag")
                .set("isolation.level", iso)
                .create()
                .unwrap();
            let mut t2 = rdkafka::TopicPartitionList::new();
            t2.add_partition_offset(&topic, p, off).unwrap();
            reader.assign(&t2).unwrap();
            let mut n = 0;
            let t0 = now();
            while t0.elapsed() < Duration::from_secs(2) {
                if let Some(Ok(_)) = reader.poll(Duration::from_millis(100)) {
                    n += 1;
                }
            }
            eprintln!("{iso} {topic}[{p}] low {lo} high {hi} committed {off:?}: {n} readable");
        }
    }
}

/// The REST API of a running member, with a real HTTP client: readiness,
/// committed alerts, a key's score and state, and a rule change that the
/// service runs.
#[test]
fn the_rest_api_answers_from_the_running_service() {
    let (c, input, expected) = setup("api");
    let _files = TestFiles::of(&c);
    // A copy of the rules (with the models beside them): the API writes
    // into the rules directory.
    let root = std::env::temp_dir().join(format!("{}.rules", c.kafka.group_id));
    let rules = sample::copy_rules_and_models(&root);
    produce(&c, &input);
    let s = Serve(Some(spawn_with_rules(
        &c,
        "api",
        false,
        &state_dir(&c, "api"),
        &rules,
    )));
    let committed = wait_for_alerts(&c, expected.len());
    let base = format!("http://{}", api_address(&c, "api"));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let get = |path: &str| -> (u16, serde_json::Value) {
        let mut r = agent.get(&format!("{base}{path}")).call().unwrap();
        let status = r.status().as_u16();
        (status, r.body_mut().read_json().unwrap())
    };
    // Ready: its partitions held and restored (on a loaded machine the
    // group may be rebalancing when the alerts are in: it settles).
    let started = now();
    loop {
        let (status, ready) = get("/readyz");
        if status == 200 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{ready}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Every committed alert is listed (the log keeps them all here).
    let started = now();
    let alerts = loop {
        let (status, page) = get("/v1/alerts?limit=1000");
        assert_eq!(status, 200);
        let alerts = page["alerts"].as_array().unwrap().clone();
        if alerts.len() >= expected.len() || started.elapsed() > Duration::from_secs(30) {
            break alerts;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(alerts.len(), expected.len());
    // Each listed alert is the record the alerts topic holds, byte for byte
    // (field order included), not a re-serialisation of it.
    #[derive(serde::Deserialize)]
    struct RawPage {
        alerts: Vec<Box<serde_json::value::RawValue>>,
    }
    let raw: RawPage = agent
        .get(&format!("{base}/v1/alerts?limit=1000"))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    let mut listed: Vec<&str> = raw.alerts.iter().map(|a| a.get()).collect();
    let mut on_topic: Vec<&str> = committed.iter().map(|a| a.trim_end()).collect();
    listed.sort();
    on_topic.sort();
    assert_eq!(listed, on_topic);
    let card = alerts
        .iter()
        .find(|a| a["rule"] == "amount_spike")
        .expect("an amount_spike alert");
    let key = card["key"].to_string();
    let (status, score) = get(&format!("/v1/keys/transactions/{key}/score"));
    assert_eq!(status, 200, "{score}");
    assert!(score["score"].as_f64().unwrap() >= 40.0, "{score}");
    let state = score["state"].as_array().unwrap();
    assert!(
        state.iter().any(|s| s["key_field"] == "CUSTOMER_ID"
            && s["features"]["CUSTOMER_ID_NB_TX_30DAY_WINDOW"]
                .as_f64()
                .unwrap_or(0.0)
                >= 10.0),
        "{score}"
    );
    let (status, _) = get("/v1/keys/transactions/no-such-card/score");
    assert_eq!(status, 404);
    // A rule change: refused without the token, run with it.
    let rule = "rule api_big {\n  pattern { x: TX_AMOUNT > 100000 }\n}\n";
    let url = format!("{base}/v1/rules/api_big");
    let r = agent.put(&url).send(rule).unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = agent
        .put(&url)
        .header("authorization", &format!("Bearer {API_TOKEN}"))
        .send(rule)
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let mut r = r;
    let change: serde_json::Value = r.body_mut().read_json().unwrap();
    let hash = change["rule_set"].as_str().unwrap().to_string();
    assert!(root.join("rules/api_big.tl").exists());
    let started = now();
    loop {
        let (_, list) = get("/v1/rules");
        let log = std::fs::read_to_string(log_path(&c, "api")).unwrap();
        if list["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "api_big")
            && log.contains("rules reloaded")
            && log.contains(&hash)
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{log}");
        std::thread::sleep(Duration::from_millis(200));
    }
    terminate(s);
}

/// With two members, each answers for the keys of its own partitions and
/// sends clients asking for the other's keys there (307 with `Location`).
#[test]
fn a_member_sends_clients_to_the_member_that_holds_a_key() {
    let (c, input, expected) = setup("owners");
    let _files = TestFiles::of(&c);
    produce(&c, &input);
    let a = serve(&c, "a");
    let b = serve(&c, "b");
    let alerts = wait_for_alerts(&c, expected.len());
    let apis = [
        format!("http://{}", api_address(&c, "a")),
        format!("http://{}", api_address(&c, "b")),
    ];
    // Card keys with alerts (rules keyed by the input's key).
    let keys: Vec<String> = alerts
        .iter()
        .map(|a| serde_json::from_str::<serde_json::Value>(a).unwrap())
        .filter(|a| a["rule"] == "amount_spike")
        .map(|a| a["key"].to_string())
        .collect();
    assert!(keys.len() >= 2);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let ask = |base: &str, key: &str| {
        let path = format!("/v1/keys/transactions/{key}/score");
        let mut r = agent.get(&format!("{base}{path}")).call().unwrap();
        let location = r
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_string());
        let body: serde_json::Value = r.body_mut().read_json().unwrap();
        (r.status().as_u16(), location, body, path)
    };
    for key in &keys {
        // Until the group has settled, a partition may be between members
        // (503); then exactly one member holds the key.
        let started = now();
        let (owner, other) = loop {
            let answers = [ask(&apis[0], key), ask(&apis[1], key)];
            let statuses = (answers[0].0, answers[1].0);
            match statuses {
                (200, 307) => break (0, answers[1].clone()),
                (307, 200) => break (1, answers[0].clone()),
                _ => {
                    assert!(
                        started.elapsed() < Duration::from_secs(60),
                        "key {key}: {:?} / {:?}",
                        answers[0],
                        answers[1]
                    );
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
        };
        let (_, location, body, path) = other;
        assert_eq!(body["error"]["code"], "elsewhere", "{body}");
        assert_eq!(body["error"]["owner"], apis[owner].as_str());
        assert_eq!(
            location.as_deref(),
            Some(format!("{}{path}", apis[owner]).as_str())
        );
    }
    // Alerts are not partitioned: each member lists those of both, read
    // back from the alerts topic.
    let mut want: Vec<String> = alerts
        .iter()
        .map(|a| serde_json::from_str::<serde_json::Value>(a).unwrap()["id"].to_string())
        .collect();
    want.sort();
    for api in &apis {
        let started = now();
        loop {
            let mut r = agent
                .get(&format!("{api}/v1/alerts?limit=1000"))
                .call()
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
            let page: serde_json::Value = r.body_mut().read_json().unwrap();
            let mut got: Vec<String> = page["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["id"].to_string())
                .collect();
            got.sort();
            if got == want {
                break;
            }
            assert!(
                got.len() < want.len() && started.elapsed() < Duration::from_secs(30),
                "{api} lists {} alerts, the topic holds {}",
                got.len(),
                want.len()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    terminate(a);
    terminate(b);
}

/// Rules reloaded while no input arrives: the events the new rules cannot
/// read, still waiting for the watermark, are dead-lettered at once (the
/// reload's output is committed without waiting for a record), and a
/// restart neither brings them back nor repeats anything.
#[test]
fn a_reload_commits_its_dead_letters_without_new_input() {
    let c = config("reload-idle");
    let _files = TestFiles::of(&c);
    kafka::ensure_topics(&c.kafka, &broker(), &[&c.kafka.input_topic], 1).unwrap();
    let rules = std::env::temp_dir().join(format!("{}.rules", c.kafka.group_id));
    std::fs::create_dir_all(&rules).unwrap();
    let write_rules = |time_field: &str| {
        std::fs::write(
            rules.join("r.tl"),
            format!(
                "stream s {{ key card time {time_field} time format epoch_ms lateness 1h }}\n\
                 rule big {{ pattern {{ x: amount > 100 }} }}\n"
            ),
        )
        .unwrap();
    };
    write_rules("ts");
    let event = |ts: i64| Input {
        key: Some("c1".into()),
        partition: Some(0),
        payload: Some(format!(r#"{{"card":"c1","ts":{ts},"amount":500}}"#).into_bytes()),
    };
    // The second event moves the watermark past the first, which alerts;
    // it stays buffered itself, an hour ahead of the watermark.
    produce(&c, &[event(0), event(7_200_000)]);
    let dir = state_dir(&c, "only");
    let p = Serve(Some(spawn_with_rules(&c, "only", false, &dir, &rules)));
    wait_for_alerts(&c, 1);
    // The new rules read the time from a field these events lack.
    write_rules("ts2");
    wait_for_log(&c, "only", "rules reloaded", 1);
    let dead = wait_progressing(
        Duration::from_secs(60),
        || {
            let dead = read_committed(&c, &c.kafka.dead_letter_topic);
            (dead.len() as u64, (!dead.is_empty()).then_some(dead))
        },
        |_| "no dead letter committed after the reload".into(),
    );
    assert_eq!(dead.len(), 1);
    let (_, value, headers) = &dead[0];
    assert_eq!(
        String::from_utf8_lossy(value),
        r#"{"card":"c1","ts":7200000,"amount":500}"#
    );
    let reason = headers
        .iter()
        .find(|(k, _)| k == "tripline.error.reason")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    assert!(
        reason.contains("no longer decodes under the new rules") && reason.contains("ts2"),
        "{reason}"
    );
    terminate(p);
    // A restart under the new rules starts from the migrated state.
    let p = Serve(Some(spawn_with_rules(&c, "only", false, &dir, &rules)));
    wait_for_log(&c, "only", "partitions assigned", 2);
    std::thread::sleep(Duration::from_secs(2));
    terminate(p);
    assert_eq!(read_committed(&c, &c.kafka.dead_letter_topic).len(), 1);
    assert_eq!(committed_alerts(&c).len(), 1);
}
