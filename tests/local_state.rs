//! The RocksDB store against the in-memory reference store: the same
//! operations give the same answers, across column families and reopening.

use proptest::prelude::*;
use std::sync::atomic::{AtomicU32, Ordering};
use tripline::adapters::local::{LocalState, Position};
use tripline::state::{Change, MemoryStore, StateStore};

fn fresh_dir() -> std::path::PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tripline-local-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::remove_dir_all(&dir).ok();
    dir
}

#[derive(Debug, Clone)]
enum Op {
    /// Puts (`Some`) and deletes on one shard, as one batch.
    Write(usize, Vec<Change>),
    Get(usize, Vec<u8>),
    Scan(usize, Vec<u8>),
    /// Close the database and open it again.
    Reopen,
    Clear(usize),
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    // Few distinct bytes so that keys collide and prefixes share.
    prop::collection::vec(
        prop::sample::select(vec![b'k', b'/', b'a', 0u8, 0xff]),
        0..5,
    )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, prop::collection::vec(
            (key(), prop::option::of(prop::collection::vec(any::<u8>(), 0..8))),
            0..6,
        ))
            .prop_map(|(s, b)| Op::Write(s, b)),
        2 => (0..2usize, key()).prop_map(|(s, k)| Op::Get(s, k)),
        2 => (0..2usize, key()).prop_map(|(s, k)| Op::Scan(s, k)),
        1 => Just(Op::Reopen),
        1 => (0..2usize).prop_map(Op::Clear),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn rocksdb_store_behaves_like_the_memory_store(ops in prop::collection::vec(op(), 1..40)) {
        let dir = fresh_dir();
        let mut local = LocalState::open(&dir).unwrap();
        let mut stores = [local.shard("t", 0).unwrap(), local.shard("t", 1).unwrap()];
        let mut models = [MemoryStore::default(), MemoryStore::default()];
        for op in ops {
            match op {
                Op::Write(s, batch) => {
                    stores[s].write(batch.clone()).unwrap();
                    models[s].write(batch).unwrap();
                }
                Op::Get(s, k) => {
                    prop_assert_eq!(stores[s].get(&k).unwrap(), models[s].get(&k).unwrap());
                }
                Op::Scan(s, k) => {
                    prop_assert_eq!(
                        stores[s].scan_prefix(&k).unwrap(),
                        models[s].scan_prefix(&k).unwrap()
                    );
                }
                Op::Reopen => {
                    drop(stores);
                    drop(local);
                    local = LocalState::open(&dir).unwrap();
                    stores = [local.shard("t", 0).unwrap(), local.shard("t", 1).unwrap()];
                }
                Op::Clear(s) => {
                    stores[s].clear().unwrap();
                    models[s] = MemoryStore::default();
                }
            }
        }
        for s in 0..2 {
            prop_assert_eq!(stores[s].scan_prefix(b"").unwrap(), models[s].scan_prefix(b"").unwrap());
        }
        drop(stores);
        drop(local);
        std::fs::remove_dir_all(&dir).ok();
    }
}

#[test]
fn one_commit_writes_every_shard_and_its_position() {
    let dir = fresh_dir();
    let local = LocalState::open(&dir).unwrap();
    let a = local.shard("in", 0).unwrap();
    let b = local.shard("in", 1).unwrap();
    let pa = Position {
        input: 10,
        changelog: 7,
    };
    let pb = Position {
        input: 3,
        changelog: 2,
    };
    let changes_a = [(b"k/x".to_vec(), Some(b"1".to_vec()))];
    let changes_b = [(b"k/y".to_vec(), None)];
    local
        .commit([(&a, &changes_a[..], pa), (&b, &changes_b[..], pb)])
        .unwrap();
    drop((a, b, local));
    let local = LocalState::open(&dir).unwrap();
    let a = local.shard("in", 0).unwrap();
    let b = local.shard("in", 1).unwrap();
    assert_eq!(a.position().unwrap(), Some(pa));
    assert_eq!(b.position().unwrap(), Some(pb));
    assert_eq!(a.get(b"k/x").unwrap(), Some(b"1".to_vec()));
    // The position is not engine state: a scan of engine keys leaves it out.
    assert_eq!(a.scan_prefix(b"k/").unwrap().len(), 1);
    assert_eq!(local.shard("in", 2).unwrap().position().unwrap(), None);
    drop((a, b, local));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_directory_in_use_is_refused_with_its_name() {
    let dir = fresh_dir();
    let _held = LocalState::open(&dir).unwrap();
    let err = LocalState::open(&dir).unwrap_err().to_string();
    assert!(err.contains(&dir.display().to_string()), "{err}");
    assert!(err.to_lowercase().contains("lock"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
