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
    /// The children's names, apart from the children, shortest first:
    /// finding a record's key (every key of every record) compares it only
    /// with the names of its length, so a schema holding many names
    /// (features, scores) costs a record's keys no more than one with few.
    /// A plain `str` compares without decoding a compact representation.
    names: Vec<Box<str>>,
    children: Vec<TrieNode>,
    /// Bit `n` set when a name is `n` bytes long, for `n` < 63; bit 63
    /// stands for every longer name (a name's *length class*): most keys a
    /// record carries that the rules do not read are told apart by their
    /// length alone.
    lengths: u64,
    /// Where each length class starts in `names` (64 entries once a name
    /// is added).
    first: Vec<u16>,
}

/// A name's length class (see [`TrieNode::lengths`]).
fn length_class(name: &str) -> usize {
    name.len().min(63)
}

impl TrieNode {
    pub(crate) fn child(&self, name: &str) -> Option<&TrieNode> {
        self.children.get(self.find(name)?)
    }

    /// The index of child `name`.
    fn find(&self, name: &str) -> Option<usize> {
        let class = length_class(name);
        if self.lengths & (1 << class) == 0 {
            return None;
        }
        // Sorted by length: from the class's first name on, those not
        // longer than `name` are the ones of its length (of its class for
        // the longest, which the comparison then tells apart).
        let mut i = usize::from(*self.first.get(class)?);
        while let Some(n) = self.names.get(i) {
            if n.len() > name.len() {
                break;
            }
            if **n == *name {
                return Some(i);
            }
            i += 1;
        }
        None
    }

    /// Adds child `name`, keeping the names sorted by length; returns its
    /// index.
    fn add(&mut self, name: &str) -> usize {
        let at = self.names.partition_point(|n| n.len() <= name.len());
        self.names.insert(at, Box::from(name));
        self.children.insert(at, TrieNode::default());
        self.lengths |= 1 << length_class(name);
        self.first = (0..64)
            .map(|class| self.names.partition_point(|n| length_class(n) < class) as u16)
            .collect();
        at
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
            let idx = match node.find(seg) {
                Some(i) => i,
                None => node.add(seg),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_found_by_its_name_whatever_its_length() {
        // Lengths around the length mask's last bit, which stands for every
        // name of 63 bytes or more.
        let lengths = [0, 1, 2, 11, 31, 62, 63, 64, 70, 200];
        let mut schema = Schema::default();
        for &n in &lengths {
            for c in ['a', 'b'] {
                schema.intern(&FieldPath::single(&c.to_string().repeat(n)));
            }
        }
        let root = &schema.root;
        for &n in &lengths {
            for c in ['a', 'b'] {
                let name = c.to_string().repeat(n);
                let node = root.child(&name).expect("an interned name is found");
                let slot = node.slot.expect("a leaf has a slot");
                assert_eq!(schema.path(slot), &FieldPath::single(&name));
            }
            if n > 0 {
                assert!(
                    root.child(&"c".repeat(n)).is_none(),
                    "same length, other name"
                );
            }
        }
        for n in [3, 10, 65, 199, 201] {
            assert!(
                root.child(&"a".repeat(n)).is_none(),
                "length {n} was not interned"
            );
        }
    }
}
