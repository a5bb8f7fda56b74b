//! Field paths and the schema: which fields of an event the compiled rule set
//! reads, each given a slot so that evaluation indexes an array instead of
//! looking up names.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A path into a JSON object: `card.country` is `["card", "country"]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FieldPath(pub Vec<CompactString>);

impl FieldPath {
    /// Parses a dotted path (`a.b.c`). Empty segments are rejected.
    pub fn parse(s: &str) -> Option<FieldPath> {
        let segs: Vec<CompactString> = s.split('.').map(CompactString::from).collect();
        if segs.iter().any(|s| s.is_empty()) {
            return None;
        }
        Some(FieldPath(segs))
    }

    /// A single-segment path.
    pub fn single(name: &str) -> FieldPath {
        FieldPath(vec![CompactString::from(name)])
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            f.write_str(s)?;
        }
        Ok(())
    }
}

/// Index of a field in [`crate::event::Event::fields`].
pub type Slot = u16;

/// The fields a compiled rule set reads, as slots, with a trie for decoding.
#[derive(Clone, Debug, Default)]
pub struct Schema {
    paths: Vec<FieldPath>,
    pub(crate) root: TrieNode,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct TrieNode {
    pub(crate) slot: Option<Slot>,
    /// The children's names, apart from the children: finding a record's
    /// key scans them (every key of every record), and a plain `str`
    /// compares its length first without decoding a compact
    /// representation.
    names: Vec<Box<str>>,
    children: Vec<TrieNode>,
}

impl TrieNode {
    pub(crate) fn child(&self, name: &str) -> Option<&TrieNode> {
        let i = self.names.iter().position(|n| **n == *name)?;
        self.children.get(i)
    }
}

impl Schema {
    /// The slot of `path`, adding it if new.
    pub fn intern(&mut self, path: &FieldPath) -> Slot {
        if let Some(i) = self.paths.iter().position(|p| p == path) {
            return i as Slot;
        }
        let slot = self.paths.len() as Slot;
        self.paths.push(path.clone());
        let mut node = &mut self.root;
        for seg in &path.0 {
            let idx = match node.names.iter().position(|n| **n == **seg) {
                Some(i) => i,
                None => {
                    node.names.push(Box::from(seg.as_str()));
                    node.children.push(TrieNode::default());
                    node.children.len() - 1
                }
            };
            node = &mut node.children[idx];
        }
        node.slot = Some(slot);
        slot
    }

    /// The slot of `path`, if interned.
    pub fn slot(&self, path: &FieldPath) -> Option<Slot> {
        self.paths.iter().position(|p| p == path).map(|i| i as Slot)
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether no field is read.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The path of a slot.
    pub fn path(&self, slot: Slot) -> &FieldPath {
        &self.paths[slot as usize]
    }
}
