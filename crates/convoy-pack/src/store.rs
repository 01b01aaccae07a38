use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;

use crate::{ChunkId, VerifiedChunk};

/// An object store (S3 and the like) that holds a chunk store's objects
/// instead of the local directory. Keys are `chunks/ab/<id>.zst`; the
/// implementation adds its own prefix. Every call has a deadline.
pub trait Remote: Send + Sync + std::fmt::Debug {
    /// The object's bytes; `None` if there is none.
    fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>>;
    /// The object's size; `None` if there is none.
    fn head(&self, key: &str) -> io::Result<Option<u64>>;
    /// Writes the object whole (readers see the old or the new bytes).
    fn put(&self, key: &str, bytes: &[u8]) -> io::Result<()>;
    /// Removes the object if present.
    fn delete(&self, key: &str) -> io::Result<()>;
}

/// Compressed chunks, laid out as `ROOT/ab/<id>.zst` on disk or as
/// `chunks/ab/<id>.zst` in a [`Remote`]. Disk writes are atomic (a temp
/// file, then rename), so a crash never leaves a torn chunk. Reads verify
/// (`get`) or serve the bytes as stored (`get_compressed`: their reader
/// verifies).
#[derive(Debug, Clone)]
pub struct ChunkStore {
    root: PathBuf,
    remote: Option<Arc<dyn Remote>>,
}

impl ChunkStore {
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root)?;
        Ok(Self { root, remote: None })
    }

    /// A chunk store whose objects live in `remote`.
    pub fn remote(remote: Arc<dyn Remote>) -> Self {
        Self { root: PathBuf::new(), remote: Some(remote) }
    }

    /// Where the chunks live, for messages.
    pub fn describe(&self) -> String {
        match &self.remote {
            Some(r) => format!("{r:?}"),
            None => self.root.display().to_string(),
        }
    }

    fn key(id: &ChunkId) -> String {
        let hex = id.to_hex();
        format!("chunks/{}/{hex}.zst", &hex[..2])
    }

    fn path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.root.join(&hex[..2]).join(format!("{hex}.zst"))
    }

    pub fn contains(&self, id: &ChunkId) -> bool {
        match &self.remote {
            Some(r) => matches!(r.head(&Self::key(id)), Ok(Some(_))),
            None => self.path(id).is_file(),
        }
    }

    /// The chunk's uncompressed length: from its zstd frame header, else
    /// by decompressing it (which also verifies it). `None` if absent.
    pub fn raw_len(&self, id: &ChunkId) -> io::Result<Option<u64>> {
        let Some(bytes) = self.get_compressed(id)? else {
            return Ok(None);
        };
        if let Ok(Some(n)) = zstd::zstd_safe::get_frame_content_size(&bytes) {
            return Ok(Some(n));
        }
        Ok(self.get(id)?.map(|c| c.data().len() as u64))
    }

    /// Stores a verified chunk; `compressed` is its zstd encoding if the
    /// caller already has it.
    pub fn put(&self, chunk: &VerifiedChunk, compressed: Option<&[u8]>) -> io::Result<()> {
        if self.contains(&chunk.id()) {
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
        self.write(&chunk.id(), bytes)
    }

    /// Writes bytes as the chunk `id`, unchecked.
    fn write(&self, id: &ChunkId, bytes: &[u8]) -> io::Result<()> {
        if let Some(r) = &self.remote {
            return r.put(&Self::key(id), bytes);
        }
        let path = self.path(id);
        let dir = path.parent().expect("chunk path has a parent");
        fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{}.{}.tmp", id.to_hex(), std::process::id()));
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
        drop(f);
        fs::rename(&tmp, &path)
    }

    /// Removes a chunk if present.
    pub fn remove(&self, id: &ChunkId) -> io::Result<()> {
        if let Some(r) = &self.remote {
            return r.delete(&Self::key(id));
        }
        match fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Size of the stored compressed chunk, if present (an error reading
    /// it counts as absent: for estimates only).
    pub fn compressed_len(&self, id: &ChunkId) -> Option<u64> {
        self.try_compressed_len(id).ok().flatten()
    }

    /// Size of the stored compressed chunk, `None` if absent; an error if
    /// the store could not say (an object store that is down).
    pub fn try_compressed_len(&self, id: &ChunkId) -> io::Result<Option<u64>> {
        match &self.remote {
            Some(r) => r.head(&Self::key(id)),
            None => match fs::metadata(self.path(id)) {
                Ok(m) => Ok(Some(m.len())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            },
        }
    }

    /// The stored compressed bytes, unverified (for serving).
    pub fn get_compressed(&self, id: &ChunkId) -> io::Result<Option<Vec<u8>>> {
        if let Some(r) = &self.remote {
            return r.get(&Self::key(id));
        }
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
                let _ = self.remove(id);
                Ok(None)
            }
        }
    }
}

/// What every chunk store must do, local or remote: run by this crate's
/// tests on disk and by the server's against an S3 server. Panics on the
/// first difference.
pub fn conformance(store: &ChunkStore) {
    // fresh bytes each run: a shared bucket may hold an earlier run's
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let seed = (now.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)).to_le_bytes();
    let data = |n: usize, k: u8| -> Vec<u8> { (0..n).map(|i| seed[i % 8] ^ (i as u8).wrapping_mul(k)).collect() };
    let a = VerifiedChunk::from_data(data(100_000, 7));
    let b = VerifiedChunk::from_data(data(1_000, 13));
    let empty = VerifiedChunk::from_data(Vec::new());
    for c in [&a, &b, &empty] {
        assert!(!store.contains(&c.id()), "a new chunk is absent");
        assert_eq!(store.get(&c.id()).unwrap().map(|c| c.id()), None);
        assert_eq!(store.get_compressed(&c.id()).unwrap(), None);
        assert_eq!(store.raw_len(&c.id()).unwrap(), None);
        assert_eq!(store.compressed_len(&c.id()), None);
        store.remove(&c.id()).expect("removing an absent chunk is no error");
    }
    store.put(&a, None).unwrap();
    let packed = b.compress();
    store.put(&b, Some(&packed)).unwrap();
    store.put(&b, Some(&packed)).unwrap(); // again: no error, no change
    store.put(&empty, None).unwrap();
    for c in [&a, &b, &empty] {
        assert!(store.contains(&c.id()));
        assert_eq!(store.get(&c.id()).unwrap().unwrap().data(), c.data());
        assert_eq!(store.raw_len(&c.id()).unwrap(), Some(c.data().len() as u64));
        let stored = store.get_compressed(&c.id()).unwrap().unwrap();
        assert_eq!(store.compressed_len(&c.id()), Some(stored.len() as u64));
        assert_eq!(VerifiedChunk::from_compressed(c.id(), &stored).unwrap().data(), c.data());
    }
    assert_eq!(store.get_compressed(&b.id()).unwrap().unwrap(), packed, "given bytes are kept as given");
    // bytes that do not hash to their name are dropped on a verified read
    store.write(&a.id(), &zstd::bulk::compress(b"evil", 3).unwrap()).unwrap();
    assert!(store.get(&a.id()).unwrap().is_none());
    assert!(!store.contains(&a.id()), "a corrupt chunk is removed");
    store.write(&a.id(), b"not even zstd").unwrap();
    assert!(store.get(&a.id()).unwrap().is_none());
    store.put(&a, None).unwrap();
    assert_eq!(store.get(&a.id()).unwrap().unwrap().data(), a.data(), "stored again after the corruption");
    for c in [&a, &b, &empty] {
        store.remove(&c.id()).unwrap();
        assert!(!store.contains(&c.id()));
        assert!(store.get(&c.id()).unwrap().is_none());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_disk_store_conforms() {
        let dir = tempfile::tempdir().unwrap();
        conformance(&ChunkStore::open(dir.path()).unwrap());
    }

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
