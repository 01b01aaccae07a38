use std::fmt;

/// FastCDC bounds. Part of the manifest format: changing them changes digests.
pub const CHUNK_MIN: u32 = 16 * 1024;
pub const CHUNK_AVG: u32 = 64 * 1024;
pub const CHUNK_MAX: u32 = 256 * 1024;

/// Where `data` (one file's bytes) is cut into chunks: (offset, length).
pub fn cut(data: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    fastcdc::v2020::FastCDC::new(data, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX).map(|c| (c.offset, c.length))
}

/// The BLAKE3 hash of a chunk's uncompressed bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkId(pub [u8; 32]);

#[derive(Debug, thiserror::Error)]
#[error("invalid chunk id {0:?}: expected 64 lowercase hex digits")]
pub struct ChunkIdError(pub String);

impl ChunkId {
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }
    pub fn parse(s: &str) -> Result<Self, ChunkIdError> {
        let mut out = [0u8; 32];
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ChunkIdError(s.chars().take(80).collect()));
        }
        hex::decode_to_slice(s, &mut out).map_err(|_| ChunkIdError(s.chars().take(80).collect()))?;
        Ok(Self(out))
    }
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}
impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..12])
    }
}
impl serde::Serialize for ChunkId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}
impl<'de> serde::Deserialize<'de> for ChunkId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A chunk whose bytes were hashed and found equal to its id. Only this
/// type is accepted by stores and by assembly.
#[derive(Clone)]
pub struct VerifiedChunk {
    id: ChunkId,
    data: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk {0}: not valid zstd or larger than {CHUNK_MAX} bytes")]
    Decode(ChunkId),
    #[error("chunk {expected}: bytes hash to {actual}")]
    Mismatch { expected: ChunkId, actual: ChunkId },
}

impl VerifiedChunk {
    pub fn from_data(data: Vec<u8>) -> Self {
        Self { id: ChunkId::of(&data), data }
    }
    /// Decompresses (bounded by [`CHUNK_MAX`]) and checks the hash.
    pub fn from_compressed(id: ChunkId, compressed: &[u8]) -> Result<Self, ChunkError> {
        let data = zstd::bulk::decompress(compressed, CHUNK_MAX as usize).map_err(|_| ChunkError::Decode(id))?;
        let actual = ChunkId::of(&data);
        if actual != id {
            return Err(ChunkError::Mismatch { expected: id, actual });
        }
        Ok(Self { id, data })
    }
    pub fn id(&self) -> ChunkId {
        self.id
    }
    pub fn data(&self) -> &[u8] {
        &self.data
    }
    pub fn compress(&self) -> Vec<u8> {
        zstd::bulk::compress(&self.data, 3).expect("zstd compression of an in-memory buffer")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_and_verify() {
        let c = VerifiedChunk::from_data(b"hello".to_vec());
        assert_eq!(ChunkId::parse(&c.id().to_hex()).unwrap(), c.id());
        assert!(ChunkId::parse("zz").is_err());
        assert!(ChunkId::parse(&c.id().to_hex().to_uppercase()).is_err());
        let z = c.compress();
        assert!(VerifiedChunk::from_compressed(c.id(), &z).is_ok());
        let other = ChunkId::of(b"other");
        assert!(matches!(VerifiedChunk::from_compressed(other, &z), Err(ChunkError::Mismatch { .. })));
        assert!(matches!(VerifiedChunk::from_compressed(other, b"garbage"), Err(ChunkError::Decode(_))));
    }
}
