use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;

use crate::{ChunkId, VerifiedChunk};

/// Compressed chunks on disk, laid out as `ROOT/ab/<id>.zst`. Writes are
/// atomic (temp file + rename), so a crash never leaves a torn chunk.
#[derive(Debug, Clone)]
pub struct ChunkStore {
    root: PathBuf,
}

impl ChunkStore {
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root)?;
        Ok(Self { root })
    }

    fn path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.root.join(&hex[..2]).join(format!("{hex}.zst"))
    }

    pub fn contains(&self, id: &ChunkId) -> bool {
        self.path(id).is_file()
    }

    /// The chunk's uncompressed length: from its zstd frame header, else
    /// by decompressing it (which also verifies it). `None` if absent.
    pub fn raw_len(&self, id: &ChunkId) -> io::Result<Option<u64>> {
        let bytes = match fs::read(self.path(id)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if let Ok(Some(n)) = zstd::zstd_safe::get_frame_content_size(&bytes) {
            return Ok(Some(n));
        }
        Ok(self.get(id)?.map(|c| c.data().len() as u64))
    }

    /// Stores a verified chunk; `compressed` is its zstd encoding if the
    /// caller already has it.
    pub fn put(&self, chunk: &VerifiedChunk, compressed: Option<&[u8]>) -> io::Result<()> {
        let path = self.path(&chunk.id());
        if path.is_file() {
            return Ok(());
        }
        let owned;
        let bytes = match compressed {
            Some(b) => b,
            None => {
                owned = chunk.compress();
                &owned
            }
        };
        let dir = path.parent().expect("chunk path has a parent");
        fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{}.{}.tmp", chunk.id().to_hex(), std::process::id()));
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
        drop(f);
        fs::rename(&tmp, &path)
    }

    /// Removes a chunk if present.
    pub fn remove(&self, id: &ChunkId) -> io::Result<()> {
        match fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Size of the stored compressed chunk, if present.
    pub fn compressed_len(&self, id: &ChunkId) -> Option<u64> {
        fs::metadata(self.path(id)).ok().map(|m| m.len())
    }

    /// The stored compressed bytes, unverified (for serving).
    pub fn get_compressed(&self, id: &ChunkId) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.path(id)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The chunk, verified. A stored chunk that fails its hash (disk
    /// corruption, tampering) is removed and reported as absent.
    pub fn get(&self, id: &ChunkId) -> io::Result<Option<VerifiedChunk>> {
        let Some(bytes) = self.get_compressed(id)? else {
            return Ok(None);
        };
        match VerifiedChunk::from_compressed(*id, &bytes) {
            Ok(c) => Ok(Some(c)),
            Err(_) => {
                let _ = fs::remove_file(self.path(id));
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_chunks_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let c = VerifiedChunk::from_data(vec![7u8; 1000]);
        store.put(&c, None).unwrap();
        assert!(store.contains(&c.id()));
        assert_eq!(store.get(&c.id()).unwrap().unwrap().data(), c.data());
        fs::write(store.path(&c.id()), zstd::bulk::compress(b"evil", 3).unwrap()).unwrap();
        assert!(store.get(&c.id()).unwrap().is_none());
        assert!(!store.contains(&c.id()));
    }
}
