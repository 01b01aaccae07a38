use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::{ChunkId, PathError, RelPath, CHUNK_AVG, CHUNK_MAX, CHUNK_MIN};

/// Version of the manifest format. Bumped on any change to its encoding.
pub const MANIFEST_FORMAT: u32 = 1;

/// A chunk of a file: its id and uncompressed length.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkRef {
    pub id: ChunkId,
    pub len: u32,
}

/// One entry of a release tree. Modes are permission bits only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Entry {
    Dir { path: RelPath, mode: u32 },
    File { path: RelPath, mode: u32, size: u64, chunks: Vec<ChunkRef> },
    Symlink { path: RelPath, target: String },
}

impl Entry {
    pub fn path(&self) -> &RelPath {
        match self {
            Entry::Dir { path, .. } | Entry::File { path, .. } | Entry::Symlink { path, .. } => path,
        }
    }
}

/// The canonical description of a release's content. Its BLAKE3 hash over
/// [`Manifest::canonical_bytes`] is the release's root digest. It names no
/// app, version or time, so the same tree always has the same digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// FastCDC `[min, avg, max]` the chunks were cut with.
    pub chunking: [u32; 3],
    /// Sorted by path, unique.
    pub entries: Vec<Entry>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid: {0}")]
    Parse(String),
    #[error("manifest format {0} is not supported (this build reads format {MANIFEST_FORMAT})")]
    Format(u32),
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("manifest is not canonical: {0}")]
    Structure(String),
}

impl Manifest {
    pub fn new(mut entries: Vec<Entry>) -> Self {
        entries.sort_by(|a, b| a.path().as_str().as_bytes().cmp(b.path().as_str().as_bytes()));
        Self { format: MANIFEST_FORMAT, chunking: [CHUNK_MIN, CHUNK_AVG, CHUNK_MAX], entries }
    }

    /// The exact bytes hashed for the root digest.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("manifest serialises")
    }

    /// The root digest: hex BLAKE3 of the canonical bytes.
    pub fn digest(&self) -> String {
        blake3::hash(&self.canonical_bytes()).to_hex().to_string()
    }

    /// Parses untrusted bytes and checks every rule of the format.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, ManifestError> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| ManifestError::Parse(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    /// Checks format, chunking, ordering, parents, links, sizes and modes.
    /// Every symlink is resolved through the release's other links as the
    /// kernel will, and refused if that ever leaves the release or loops.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let bad = |s: String| Err(ManifestError::Structure(s));
        if self.format != MANIFEST_FORMAT {
            return Err(ManifestError::Format(self.format));
        }
        if self.chunking != [CHUNK_MIN, CHUNK_AVG, CHUNK_MAX] {
            return bad(format!("chunking {:?} differs from this build's", self.chunking));
        }
        let mut dirs: HashSet<&str> = HashSet::new();
        let mut prev: Option<&str> = None;
        for e in &self.entries {
            let p = e.path();
            if let Some(prev) = prev {
                if prev.as_bytes() >= p.as_str().as_bytes() {
                    return bad(format!("entries out of order or repeated at {p}"));
                }
            }
            prev = Some(p.as_str());
            if let Some(parent) = p.parent() {
                if !dirs.contains(parent.as_str()) {
                    return bad(format!("{p}: parent {parent} is not a directory of the release"));
                }
            }
            match e {
                Entry::Dir { mode, .. } => {
                    if *mode > 0o777 {
                        return bad(format!("{p}: mode {mode:o} has bits beyond 0777"));
                    }
                    dirs.insert(p.as_str());
                }
                Entry::File { mode, size, chunks, .. } => {
                    if *mode > 0o777 {
                        return bad(format!("{p}: mode {mode:o} has bits beyond 0777"));
                    }
                    let sum: u64 = chunks.iter().map(|c| c.len as u64).sum();
                    if sum != *size {
                        return bad(format!("{p}: size {size} but chunks add up to {sum}"));
                    }
                    if chunks.iter().any(|c| c.len == 0 || c.len > CHUNK_MAX) {
                        return bad(format!("{p}: a chunk is empty or larger than {CHUNK_MAX}"));
                    }
                }
                Entry::Symlink { target, .. } => p.check_link_target(target)?,
            }
        }
        crate::links::check_links(&self.entries)?;
        Ok(())
    }

    /// Every distinct chunk, in first-use order.
    pub fn chunk_ids(&self) -> Vec<ChunkId> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for e in &self.entries {
            if let Entry::File { chunks, .. } = e {
                for c in chunks {
                    if seen.insert(c.id) {
                        out.push(c.id);
                    }
                }
            }
        }
        out
    }

    /// Total bytes of all files.
    pub fn total_size(&self) -> u64 {
        self.entries.iter().map(|e| if let Entry::File { size, .. } = e { *size } else { 0 }).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Untrusted bytes never panic the decoder; whatever it accepts is
        /// valid and re-encodes to exactly the canonical form.
        #[test]
        fn decoder_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(m) = Manifest::from_slice(&bytes) {
                prop_assert!(m.validate().is_ok());
            }
        }

        #[test]
        fn decoder_survives_mutated_manifests(pos in 0usize..400, byte in any::<u8>(), cut in 0usize..400) {
            let m = Manifest::new(vec![
                Entry::Dir { path: p("d"), mode: 0o755 },
                Entry::File { path: p("d/f"), mode: 0o644, size: 5, chunks: vec![ChunkRef { id: ChunkId::of(b"hello"), len: 5 }] },
                Entry::Symlink { path: p("d/l"), target: "f".into() },
            ]);
            let mut bytes = m.canonical_bytes();
            let i = pos % bytes.len();
            bytes[i] = byte;
            bytes.truncate(bytes.len() - cut % bytes.len());
            if let Ok(parsed) = Manifest::from_slice(&bytes) {
                prop_assert!(parsed.validate().is_ok());
                prop_assert_eq!(Manifest::from_slice(&parsed.canonical_bytes()).unwrap(), parsed);
            }
        }
    }

    fn p(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }

    #[test]
    fn rejects_bad_manifests() {
        let ok = Manifest::new(vec![
            Entry::Dir { path: p("a"), mode: 0o755 },
            Entry::Symlink { path: p("a/l"), target: "../x".into() },
        ]);
        assert!(Manifest::from_slice(&ok.canonical_bytes()).is_ok());

        let cases = [
            r#"{"format":1,"chunking":[16384,65536,262144],"entries":[{"type":"file","path":"../x","mode":420,"size":0,"chunks":[]}]}"#,
            r#"{"format":1,"chunking":[16384,65536,262144],"entries":[{"type":"file","path":"/etc/x","mode":420,"size":0,"chunks":[]}]}"#,
            r#"{"format":1,"chunking":[16384,65536,262144],"entries":[{"type":"symlink","path":"l","target":"../etc"}]}"#,
            r#"{"format":1,"chunking":[16384,65536,262144],"entries":[{"type":"symlink","path":"l","target":"/etc"}]}"#,
            r#"{"format":1,"chunking":[16384,65536,262144],"entries":[{"type":"symlink","path":"l","target":"x"},{"type":"file","path":"l/passwd","mode":420,"size":0,"chunks":[]}]}"#,
            r#"{"format":1,"chunking":[16384,65536,262144],"entries":[{"type":"file","path":"b","mode":420,"size":0,"chunks":[]},{"type":"file","path":"a","mode":420,"size":0,"chunks":[]}]}"#,
            r#"{"format":1,"chunking":[16384,65536,262144],"entries":[{"type":"file","path":"a","mode":420,"size":5,"chunks":[]}]}"#,
            r#"{"format":1,"chunking":[16384,65536,262144],"entries":[{"type":"file","path":"a","mode":2541,"size":0,"chunks":[]}]}"#,
            r#"{"format":2,"chunking":[16384,65536,262144],"entries":[]}"#,
            r#"{"format":1,"chunking":[16384,65536,262144],"entries":[],"extra":1}"#,
            r#"{"format":1"#,
        ];
        for c in cases {
            assert!(Manifest::from_slice(c.as_bytes()).is_err(), "accepted {c}");
        }
    }

    #[test]
    fn format_fixture_v1_is_stable() {
        // A format-1 manifest and its digest, kept so an encoding change is caught.
        let m = Manifest::new(vec![
            Entry::File {
                path: p("a.txt"),
                mode: 0o644,
                size: 5,
                chunks: vec![ChunkRef { id: ChunkId::of(b"hello"), len: 5 }],
            },
            Entry::Dir { path: p("d"), mode: 0o755 },
            Entry::Symlink { path: p("d/l"), target: "../a.txt".into() },
        ]);
        let fixture = include_str!("../tests/fixtures/manifest-v1.json").trim_end();
        assert_eq!(String::from_utf8(m.canonical_bytes()).unwrap(), fixture);
        assert_eq!(Manifest::from_slice(fixture.as_bytes()).unwrap().digest(), m.digest());
    }
}
