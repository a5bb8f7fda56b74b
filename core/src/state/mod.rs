//! State: the snapshot format of engine state and where snapshots are kept.
//!
//! Every encoded value starts with a header — magic `TLSN`, the format
//! version, and the hash of the rule set it was taken under — followed by a
//! postcard body. Automaton state ids and stage ids mean nothing to another
//! rule set, so decoding refuses a snapshot whose hash differs (migration
//! between rule sets is the caller's decision). Decoding never panics.
//!
//! [`StateStore`] is the storage interface (ordered keys, atomic batches);
//! [`MemoryStore`] is the in-memory reference implementation that other
//! stores are tested against.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;

/// The snapshot format this build writes (and reads).
pub const FORMAT_VERSION: u16 = 1;

const MAGIC: &[u8; 4] = b"TLSN";
/// The length of the header [`encode`] puts before a value's body.
pub const HEADER_LEN: usize = 4 + 2 + 8;

/// Why a snapshot could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SnapshotError {
    /// Not a snapshot.
    #[error("not a tripline snapshot (bad magic)")]
    BadMagic,
    /// Written by an unknown format version.
    #[error("snapshot format version {found} is not supported (this build reads {FORMAT_VERSION})")]
    Version {
        /// Its version.
        found: u16,
    },
    /// Taken under other rules.
    #[error(
        "snapshot was taken with rule set {found:016x}; the running rule set is {expected:016x}"
    )]
    RuleSetChanged {
        /// Its rule-set hash.
        found: u64,
        /// The running one.
        expected: u64,
    },
    /// Truncated or garbled, or inconsistent with the rules.
    #[error("corrupt snapshot: {0}")]
    Corrupt(String),
    /// The store failed.
    #[error("state store: {0}")]
    Store(String),
}

/// Encodes `value` with the header for `ruleset_hash`.
pub fn encode<T: Serialize>(ruleset_hash: u64, value: &T) -> Vec<u8> {
    let out = header(ruleset_hash, 50);
    // postcard only fails on writer errors or unsupported types, neither of which a Vec
    // and the derive-only types used here can produce.
    match postcard::to_extend(value, out) {
        Ok(v) => v,
        Err(e) => unreachable_encode(e),
    }
}

/// The header for `ruleset_hash`, with room for a body of `body_len`
/// bytes to be appended: what [`encode`] writes before the body.
pub fn header(ruleset_hash: u64, body_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body_len);
    push_header(&mut out, ruleset_hash);
    out
}

/// Appends the header for `ruleset_hash` to `out`.
pub fn push_header(out: &mut Vec<u8>, ruleset_hash: u64) {
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&ruleset_hash.to_le_bytes());
}

#[cold]
fn unreachable_encode(e: postcard::Error) -> Vec<u8> {
    // Keep the invariant visible in logs instead of panicking mid-checkpoint.
    eprintln!("snapshot encoding failed: {e}");
    Vec::new()
}

/// The rule-set hash in the header of a value written by [`encode`].
pub fn header_hash(bytes: &[u8]) -> Result<u64, SnapshotError> {
    if bytes.len() < HEADER_LEN || &bytes[..4] != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let mut h = [0u8; 8];
    h.copy_from_slice(&bytes[6..14]);
    Ok(u64::from_le_bytes(h))
}

/// Decodes a value written by [`encode`] under `expected_hash`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], expected_hash: u64) -> Result<T, SnapshotError> {
    decode_body(body(bytes, expected_hash)?)
}

/// The body of a value written by [`encode`] under `expected_hash`, once
/// its header is checked.
pub fn body(bytes: &[u8], expected_hash: u64) -> Result<&[u8], SnapshotError> {
    if bytes.len() < HEADER_LEN || &bytes[..4] != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != FORMAT_VERSION {
        return Err(SnapshotError::Version { found: version });
    }
    let mut h = [0u8; 8];
    h.copy_from_slice(&bytes[6..14]);
    let found = u64::from_le_bytes(h);
    if found != expected_hash {
        return Err(SnapshotError::RuleSetChanged {
            found,
            expected: expected_hash,
        });
    }
    Ok(&bytes[HEADER_LEN..])
}

/// Decodes a [`body`].
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, SnapshotError> {
    let (value, rest) =
        postcard::take_from_bytes(body).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
    if !rest.is_empty() {
        return Err(SnapshotError::Corrupt(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    Ok(value)
}

/// A stored key and value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// A change to a stored entry: its key, and its new value or `None` to delete it.
pub type Change = (Vec<u8>, Option<Vec<u8>>);

/// What [`StateStore::for_each_prefix`] calls on each entry (key, value).
pub type EntryVisitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), SnapshotError> + 'a;

/// Ordered key-value storage for engine state, written in atomic batches.
pub trait StateStore {
    /// The value under `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SnapshotError>;
    /// Applies puts (`Some`) and deletes (`None`) atomically.
    fn write(&mut self, batch: Vec<Change>) -> Result<(), SnapshotError>;
    /// Every entry whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<Entry>, SnapshotError>;
    /// Calls `f` on every entry whose key starts with `prefix`, in key
    /// order, stopping at its first error; stores that can stream (not
    /// holding every entry at once) should.
    fn for_each_prefix(
        &self,
        prefix: &[u8],
        f: &mut EntryVisitor<'_>,
    ) -> Result<(), SnapshotError> {
        for (k, v) in self.scan_prefix(prefix)? {
            f(&k, &v)?;
        }
        Ok(())
    }
}

/// The in-memory store.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl MemoryStore {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Total bytes of keys and values.
    pub fn size_bytes(&self) -> usize {
        self.map.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

impl StateStore for MemoryStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SnapshotError> {
        Ok(self.map.get(key).cloned())
    }

    fn write(&mut self, batch: Vec<Change>) -> Result<(), SnapshotError> {
        for (k, v) in batch {
            match v {
                Some(v) => self.map.insert(k, v),
                None => self.map.remove(&k),
            };
        }
        Ok(())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<Entry>, SnapshotError> {
        Ok(self
            .map
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_guards_version_hash_and_garbage() {
        let bytes = encode(7, &(1u32, "x".to_string()));
        assert_eq!(decode::<(u32, String)>(&bytes, 7).unwrap(), (1, "x".into()));
        assert_eq!(
            decode::<(u32, String)>(&bytes, 8),
            Err(SnapshotError::RuleSetChanged {
                found: 7,
                expected: 8
            })
        );
        assert_eq!(
            decode::<(u32, String)>(b"nope", 7),
            Err(SnapshotError::BadMagic)
        );
        let mut v2 = bytes.clone();
        v2[4] = 9;
        assert_eq!(
            decode::<(u32, String)>(&v2, 7),
            Err(SnapshotError::Version { found: 9 })
        );
        for cut in HEADER_LEN..bytes.len() {
            assert!(matches!(
                decode::<(u32, String)>(&bytes[..cut], 7),
                Err(SnapshotError::Corrupt(_))
            ));
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            decode::<(u32, String)>(&long, 7),
            Err(SnapshotError::Corrupt(_))
        ));
    }

    #[test]
    fn memory_store_batches_and_scans() {
        let mut s = MemoryStore::default();
        s.write(vec![
            (b"k/1".to_vec(), Some(b"a".to_vec())),
            (b"k/2".to_vec(), Some(b"b".to_vec())),
            (b"m".to_vec(), Some(b"c".to_vec())),
        ])
        .unwrap();
        s.write(vec![(b"k/1".to_vec(), None)]).unwrap();
        assert_eq!(
            s.scan_prefix(b"k/").unwrap(),
            vec![(b"k/2".to_vec(), b"b".to_vec())]
        );
        assert_eq!(s.get(b"m").unwrap(), Some(b"c".to_vec()));
    }
}
