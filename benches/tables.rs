//! Tables benchmark (in memory, single thread):
//!
//! 1. loading: N profile rows (`{"CUSTOMER_ID", "UPDATED_AT", "HOME_COUNTRY",
//!    "MONTHLY_INCOME", "SEGMENT"}`, about 110 bytes of JSON each) applied
//!    as the service's table follower applies them (decode, put, forget
//!    old versions, record the position), in rows/s, and the heap bytes per
//!    row held, counted by a counting allocator (`stats_alloc`); with
//!    `disk`, the time to open the store again after a restart;
//! 2. a lookup: ns per `profiles.MONTHLY_INCOME` of a random key, as the
//!    engine makes it once per event;
//! 3. the engine with and without a table lookup: events/s of a rule that
//!    compares each event's amount with 5 × the customer's declared income,
//!    against the same rule with a constant, over the same events.
//!
//! `cargo bench --bench tables [-- ROWS] [disk]` (default 1000000 rows, in
//! memory). With `disk` the rows are held in the service's RocksDB store
//! (`state.tables = "disk"`, 64 MiB block cache) in a temporary directory;
//! the heap count then misses RocksDB's own memory, so the process's
//! resident memory after loading is printed too, with the store's size on
//! disk.

#[path = "support/heap.rs"]
mod heap;
use heap::allocated;
use std::sync::Arc;
use std::time::Instant;
use tripline::adapters::table_store::DiskRows;
use tripline::engine::{Engine, EngineOptions, Outputs, RuleSet};
use tripline::event::{FieldPath, Value};
use tripline::tables::Tables;

#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

const START: i64 = 1_522_540_800_000;
const EVENTS: u64 = 2_000_000;
/// How far back the service keeps a row's versions (its follower's bound).
const HISTORY_MS: i64 = 30 * 24 * 3_600_000;

fn rules(condition: &str) -> Arc<RuleSet> {
    let text = format!(
        "stream s {{ key CUSTOMER_ID  time ts  time format epoch_ms }}\n\
         table profiles {{ key CUSTOMER_ID  time UPDATED_AT }}\n\
         rule over_income {{ pattern {{ tx: {condition} }} }}\n"
    );
    let mut c = tripline::files::compiler();
    c.add_source("bench.tl", &text);
    RuleSet::build(
        c.compile().expect("bench rules compile"),
        EngineOptions::default(),
    )
}

fn row(i: u64) -> String {
    format!(
        r#"{{"CUSTOMER_ID":{i},"UPDATED_AT":{START},"HOME_COUNTRY":"FR","MONTHLY_INCOME":{}.5,"SEGMENT":"retail"}}"#,
        1000 + i % 4000
    )
}

/// Events/s of `rs` over `EVENTS` events on `rows` customers.
fn run(rs: &Arc<RuleSet>, tables: &Arc<Tables>, rows: u64) -> (f64, u64) {
    let mut engine = Engine::new(rs.clone()).with_tables(tables.clone());
    let mut out = Outputs::default();
    let lines: Vec<String> = (0..EVENTS)
        .map(|i| {
            format!(
                r#"{{"CUSTOMER_ID":{},"ts":{},"amount":{}}}"#,
                (i * 7919) % rows,
                START + 1000 + i as i64,
                i % 30_000
            )
        })
        .collect();
    let mut alerts = 0;
    let t = now();
    for (i, l) in lines.iter().enumerate() {
        engine
            .on_record(0, l.as_bytes(), i as u64, &mut out, |_, _| {})
            .expect("valid event");
        alerts += out.alerts.len() as u64;
        out.alerts.clear();
    }
    (EVENTS as f64 / t.elapsed().as_secs_f64(), alerts)
}

/// The process's resident memory (Linux; 0 elsewhere).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// The bytes of the files in `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn main() {
    let rows: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let disk = std::env::args().any(|a| a == "disk");
    let dir = std::env::temp_dir().join(format!("tripline-bench-tables-{}", std::process::id()));
    let rs = rules("amount > 5 * profiles.MONTHLY_INCOME");
    let spec = rs.def().tables[0].spec.clone();
    let lines: Vec<String> = (0..rows).map(row).collect();
    let json_bytes: usize = lines.iter().map(String::len).sum();

    let rss_before = rss_bytes();
    let tables = Arc::new(match disk {
        true => {
            Tables::on(DiskRows::open(&dir, 64 << 20, "bench").expect("a store in the temp dir"))
        }
        false => Tables::new(),
    });
    let before = allocated();
    let t = now();
    for (offset, l) in lines.iter().enumerate() {
        // As the service's follower applies a record of the table's topic.
        let row: tripline::tables::Row = serde_json::from_str(l).expect("a JSON object");
        let (key, at) = Tables::key_and_time(&spec, &row).expect("valid row");
        tables.put("profiles", &key, at, Some(row));
        tables.forget_before("profiles", &key, at - HISTORY_MS);
        tables.set_position("profiles", 0, offset as i64 + 1);
    }
    let load_s = t.elapsed().as_secs_f64();
    let held = allocated() - before;
    let rss_after = rss_bytes();
    drop(lines);
    println!(
        "load ({}): {rows} rows in {load_s:.2} s = {:.0} rows/s; {:.0} heap bytes per row held \
         ({:.0} bytes of JSON per row); resident memory {:.0} MiB more than before the load{}",
        if disk { "disk" } else { "memory" },
        rows as f64 / load_s,
        held as f64 / rows as f64,
        json_bytes as f64 / rows as f64,
        (rss_after.saturating_sub(rss_before)) as f64 / (1 << 20) as f64,
        if disk {
            format!(
                ", {:.0} MiB on disk",
                dir_bytes(&dir) as f64 / (1 << 20) as f64
            )
        } else {
            String::new()
        }
    );

    // A restart: the store is opened again with what it kept.
    let tables = match disk {
        true => {
            drop(tables);
            let rss_before = rss_bytes();
            let t = now();
            let tables =
                Tables::on(DiskRows::open(&dir, 64 << 20, "bench").expect("the store again"));
            let open_s = t.elapsed().as_secs_f64();
            assert_eq!(tables.len("profiles"), rows as usize);
            assert_eq!(tables.position("profiles", 0), Some(rows as i64));
            println!(
                "restart: the store opened again in {:.0} ms with its {rows} keys kept \
                 (resident memory {:.0} MiB more than before)",
                open_s * 1000.0,
                (rss_bytes().saturating_sub(rss_before)) as f64 / (1 << 20) as f64,
            );
            Arc::new(tables)
        }
        false => tables,
    };

    let field = FieldPath::single("MONTHLY_INCOME");
    let lookups = 2_000_000u64;
    let t = now();
    let mut found = 0u64;
    for i in 0..lookups {
        let key = Value::Num(((i * 7919) % rows) as f64);
        if !tables.get("profiles", &key, START + 1, &field).is_null() {
            found += 1;
        }
    }
    let ns = t.elapsed().as_secs_f64() * 1e9 / lookups as f64;
    assert_eq!(found, lookups);
    println!("lookup: {ns:.0} ns per lookup of a numeric key ({lookups} lookups)");

    let (with, a1) = run(&rs, &tables, rows);
    let constant = rules("amount > 5 * 3000.5");
    let (without, a2) = run(&constant, &tables, rows);
    println!(
        "engine: {with:.0} events/s with the table lookup ({a1} alerts), {without:.0} events/s \
         with a constant ({a2} alerts): {:.0} % more time per event",
        (without / with - 1.0) * 100.0
    );
    drop(tables);
    std::fs::remove_dir_all(&dir).ok();
}
