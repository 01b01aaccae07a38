//! What changes between two releases (P-strategy): paths added, removed
//! and changed, compared by content (chunk ids), mode, link target and kind.

use std::collections::BTreeMap;

use crate::{Entry, Manifest};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    /// Bytes of the files added or changed.
    pub changed_bytes: u64,
}

/// Directories are named with a trailing `/`.
fn name(e: &Entry) -> String {
    match e {
        Entry::Dir { path, .. } => format!("{path}/"),
        _ => e.path().to_string(),
    }
}

fn size(e: &Entry) -> u64 {
    if let Entry::File { size, .. } = e {
        *size
    } else {
        0
    }
}

pub fn diff(old: &Manifest, new: &Manifest) -> TreeDiff {
    let before: BTreeMap<&str, &Entry> = old.entries.iter().map(|e| (e.path().as_str(), e)).collect();
    let after: BTreeMap<&str, &Entry> = new.entries.iter().map(|e| (e.path().as_str(), e)).collect();
    let mut d = TreeDiff::default();
    for (p, e) in &after {
        match before.get(p) {
            None => {
                d.added.push(name(e));
                d.changed_bytes += size(e);
            }
            Some(o) if o != e => {
                d.changed.push(name(e));
                d.changed_bytes += size(e);
            }
            Some(_) => {}
        }
    }
    d.removed = before.iter().filter(|(p, _)| !after.contains_key(*p)).map(|(_, e)| name(e)).collect();
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChunkId, ChunkRef, RelPath};

    fn file(p: &str, data: &[u8]) -> Entry {
        Entry::File {
            path: RelPath::parse(p).unwrap(),
            mode: 0o644,
            size: data.len() as u64,
            chunks: vec![ChunkRef { id: ChunkId::of(data), len: data.len() as u32 }],
        }
    }

    #[test]
    fn names_what_was_added_removed_and_changed() {
        let d = |p: &str| Entry::Dir { path: RelPath::parse(p).unwrap(), mode: 0o755 };
        let old = Manifest::new(vec![d("a"), file("a/x", b"1"), file("keep", b"k"), file("gone", b"g")]);
        let new = Manifest::new(vec![d("a"), file("a/x", b"22"), file("keep", b"k"), d("b"), file("b/new", b"nnn")]);
        let got = diff(&old, &new);
        assert_eq!(got.added, vec!["b/", "b/new"]);
        assert_eq!(got.removed, vec!["gone"]);
        assert_eq!(got.changed, vec!["a/x"]);
        assert_eq!(got.changed_bytes, 5);
        assert_eq!(diff(&new, &new), TreeDiff::default());
    }
}
