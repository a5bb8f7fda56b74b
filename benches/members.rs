//! The consumer group as the distributed engine: 1, 2 and 4 service members
//! in one group on one input topic, on a Kafka-protocol broker (the one at
//! `KAFKA_BOOTSTRAP`, else an embedded one).
//!
//! 1. spread: for each number of members, a group of its own reads the same
//!    synthetic A/B/C stream (benches/abc_10m.tl) to committed alerts;
//!    printed per member: the partitions it holds, the records and alerts it
//!    committed, the keys and memory its state holds. Every group must
//!    commit the same alerts as the single member.
//! 2. state follows: one member reads the first third of the stream, a
//!    second joins for the second third, then leaves the last third to the
//!    first. The partitions that move take their keys' partial matches with
//!    them (each new owner restores them from the changelogs), so the group
//!    commits the single member's alerts; printed: each hand-over's time
//!    and the changelog records each member read.
//!
//! `cargo bench --bench members [-- EVENTS [PARTITIONS]]` (default 1000000
//! events over 10 k keys, 8 partitions). The members run in this process
//! (each with its own clients, shards, state directory and transactional
//! identity), so they share its cores as members on one machine would: the
//! rates tell what the group adds, not what more machines give.

#[path = "support/kafka.rs"]
mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use support::{cpu_seconds, now};
use tripline::adapters::kafka::{self, service};
use tripline::config::Config;
use tripline::engine::{EngineOptions, RuleSet};

const KEYS: u64 = 10_000;
const TIMEOUT: Duration = Duration::from_secs(600);

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn rules() -> Arc<RuleSet> {
    tripline::files::load_rules(
        &[Path::new("benches/abc_10m.tl")],
        None,
        EngineOptions::default(),
    )
    .expect("benches/abc_10m.tl")
}

/// A group of members reading `input`, each with its own transactional
/// identity and state directory. A member that left keeps its counters.
struct Group {
    config: Config,
    members: Vec<Option<service::ServiceHandle>>,
    progress: Vec<Arc<service::Progress>>,
}

impl Group {
    fn new(brokers: &str, name: &str, input: &str, partitions: i32) -> Group {
        let mut config = support::config(brokers, name, partitions);
        config.kafka.input_topic = input.to_string();
        Group {
            config,
            members: Vec::new(),
            progress: Vec::new(),
        }
    }

    fn state_dir(&self, member: usize) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("{}-{member}.state", self.config.kafka.group_id))
    }

    fn join(&mut self, rules: &Arc<RuleSet>) {
        let mut c = self.config.clone();
        let i = self.members.len();
        c.kafka.instance_id = format!("{}-{i}", c.kafka.group_id);
        c.state.dir = self.state_dir(i);
        let brokers = c.kafka.brokers.clone();
        let handle = service::start(
            c,
            brokers,
            rules.clone(),
            Default::default(),
            Default::default(),
        )
        .expect("member starts");
        self.progress.push(handle.progress().clone());
        self.members.push(Some(handle));
    }

    /// Member `i` stops: its last checkpoint, then it leaves the group.
    fn leave(&mut self, i: usize) {
        if let Some(m) = self.members[i].take() {
            m.stop();
            m.join().expect("member stops cleanly");
            std::fs::remove_dir_all(self.state_dir(i)).ok();
        }
    }

    fn running(&self) -> impl Iterator<Item = &service::ServiceHandle> {
        self.members.iter().flatten()
    }

    fn sum(&self, f: impl Fn(&service::Progress) -> u64) -> u64 {
        self.progress.iter().map(|p| f(p)).sum()
    }

    /// Waits until the members have committed `records` input records
    /// between them.
    fn wait_committed(&self, records: u64) {
        let start = now();
        while self.sum(|p| get(&p.records)) < records {
            assert!(self.running().all(|m| !m.is_finished()), "a member stopped");
            assert!(
                start.elapsed() < TIMEOUT,
                "{} of {records} records committed",
                self.sum(|p| get(&p.records))
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits until the running members hold every partition, each some,
    /// and none is being restored.
    fn wait_settled(&self, partitions: u64) {
        let start = now();
        let held = |m: &service::ServiceHandle| get(&m.progress().partitions);
        while self.running().map(held).sum::<u64>() != partitions
            || self.running().any(|m| held(m) == 0)
            || self.sum(|p| get(&p.restoring_partitions)) > 0
        {
            assert!(start.elapsed() < TIMEOUT, "the group never settled");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn print_members(&self) {
        for (i, (p, m)) in self.progress.iter().zip(&self.members).enumerate() {
            let gone = if m.is_none() { " (left)" } else { "" };
            println!(
                "    member {i}: {:>2} partitions, {:>8} records, {:>6} alerts, {:>6} keys, {:>7.1} MiB of state, {:>7} changelog records restored{gone}",
                get(&p.partitions),
                get(&p.records),
                get(&p.alerts),
                get(&p.resident_keys),
                get(&p.resident_bytes) as f64 / (1 << 20) as f64,
                get(&p.restored_records),
            );
        }
    }

    fn stop(mut self) {
        for m in self.running() {
            m.stop();
        }
        for i in 0..self.members.len() {
            self.leave(i);
        }
    }
}

/// Each group of `n` members reads the whole stream; returns the alerts of
/// the first (one member).
fn spread(brokers: &str, events: usize, partitions: i32, rules: &Arc<RuleSet>) -> u64 {
    let c = support::config(brokers, "members-in", partitions);
    let input = c.kafka.input_topic.clone();
    kafka::ensure_topics(&c.kafka, brokers, &[&input], partitions).expect("topic");
    support::produce_part(&c, events, KEYS, 0..events);
    println!(
        "spread: {events} events over {KEYS} keys on {partitions} partitions, checkpoint every {} ms",
        c.checkpoint.interval_ms
    );
    let mut single = None;
    for n in [1, 2, 4] {
        let mut g = Group::new(brokers, &format!("members-{n}"), &input, partitions);
        let (t0, cpu0) = (now(), cpu_seconds());
        for _ in 0..n {
            g.join(rules);
        }
        g.wait_committed(events as u64);
        let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
        // The state gauges are set at a checkpoint: wait for one past the
        // last record's.
        std::thread::sleep(Duration::from_millis(3 * g.config.checkpoint.interval_ms));
        let alerts = g.sum(|p| get(&p.alerts));
        println!(
            "  {n} member(s): {:>9.0} events/s wall from the start, {:>9.0} per CPU-second, {alerts} alerts, {} keys, {:.1} MiB of state",
            events as f64 / wall,
            events as f64 / cpu.max(1e-9),
            g.sum(|p| get(&p.resident_keys)),
            g.sum(|p| get(&p.resident_bytes)) as f64 / (1 << 20) as f64,
        );
        g.print_members();
        println!(
            "members,{n},{events},{:.0},{:.0},{alerts},{}",
            events as f64 / wall,
            events as f64 / cpu.max(1e-9),
            g.sum(|p| get(&p.resident_bytes))
        );
        g.stop();
        let single = *single.get_or_insert(alerts);
        assert_eq!(alerts, single, "{n} members commit one member's alerts");
    }
    single.unwrap_or_default()
}

/// The stream in thirds: one member reads the first, a second member joins
/// for the second, then leaves the third to the first again.
fn follows(brokers: &str, events: usize, partitions: i32, rules: &Arc<RuleSet>, single: u64) {
    let c = support::config(brokers, "follows-in", partitions);
    let input = c.kafka.input_topic.clone();
    kafka::ensure_topics(&c.kafka, brokers, &[&input], partitions).expect("topic");
    let thirds = [0, events / 3, 2 * events / 3, events];
    let mut g = Group::new(brokers, "follows", &input, partitions);
    g.join(rules);
    support::produce_part(&c, events, KEYS, thirds[0]..thirds[1]);
    g.wait_committed(thirds[1] as u64);
    println!("state follows: one member reads {} events", thirds[1]);
    g.print_members();

    let t0 = now();
    g.join(rules);
    g.wait_settled(partitions as u64);
    println!(
        "  a second member joins: {:.2} s from its start until both hold partitions and neither restores",
        t0.elapsed().as_secs_f64()
    );
    support::produce_part(&c, events, KEYS, thirds[1]..thirds[2]);
    g.wait_committed(thirds[2] as u64);
    g.print_members();

    let t0 = now();
    g.leave(1);
    g.wait_settled(partitions as u64);
    println!(
        "  the second member leaves: {:.2} s from its stop until the first holds every partition and restores none",
        t0.elapsed().as_secs_f64()
    );
    support::produce_part(&c, events, KEYS, thirds[2]..thirds[3]);
    g.wait_committed(events as u64);
    std::thread::sleep(Duration::from_millis(3 * g.config.checkpoint.interval_ms));
    let alerts = g.sum(|p| get(&p.alerts));
    println!("  after the last third: {alerts} alerts (one member alone: {single})");
    g.print_members();
    g.stop();
    assert_eq!(alerts, single, "the moved partitions' matches carry on");
}

fn main() {
    if std::env::var_os("TRIPLINE_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("TRIPLINE_LOG"))
            .init();
    }
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let events = args.first().copied().unwrap_or(1_000_000).max(2);
    let partitions = args.get(1).copied().unwrap_or(8).max(1) as i32;
    let brokers = support::brokers();
    println!("broker {brokers}");
    let rules = rules();
    let single = spread(&brokers, events, partitions, &rules);
    follows(&brokers, events, partitions, &rules, single);
}
