//! Release deltas: the canonical stream of a release is the bytes of its
//! files, concatenated in manifest order. A delta is the new stream
//! compressed by zstd with the old stream as a reference prefix
//! (`zstd --patch-from`), with a window that covers both.
//!
//! Memory: encoding and decoding hold the old and the new stream in memory
//! (`old + new` bytes, plus zstd's tables); [`delta_memory`] says how much,
//! and callers refuse deltas above their configured limit.
//!
//! Nothing decoded here is trusted: [`split_stream`] cuts a decoded stream
//! back into the manifest's chunks and each is hashed before use.

use std::io::{self, Read, Write};

use crate::{ChunkRef, Entry, Manifest, VerifiedChunk};

/// Format tag of a delta, sent with it; bumped on any change of encoding.
pub const DELTA_FORMAT: &str = "zstd-patch-1";

#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("delta does not decode against this reference: {0}")]
    Decode(String),
    #[error("delta decodes to more than the {0} bytes the release holds")]
    TooLong(u64),
    #[error("delta decodes to {got} bytes, the release holds {want}")]
    Length { got: u64, want: u64 },
}

/// The window log that lets the new stream refer to any byte of the old.
fn window_log(old: usize, new: usize) -> u32 {
    let span = (old + new).max(1 << 10) as u64;
    (64 - (span - 1).leading_zeros()).clamp(10, 31)
}

/// Bytes a delta between streams of these sizes needs in memory, about.
pub fn delta_memory(old: u64, new: u64) -> u64 {
    // both streams, the encoded delta (at most about `new`), and zstd's window
    old + new + new / 4 + (8 << 20)
}

/// The concatenation of every file of `m`, in manifest order, from a source
/// of verified chunks.
pub fn release_stream(
    m: &Manifest,
    mut chunk: impl FnMut(&ChunkRef) -> io::Result<VerifiedChunk>,
) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(m.total_size() as usize);
    for e in &m.entries {
        if let Entry::File { chunks, .. } = e {
            for c in chunks {
                let v = chunk(c)?;
                if v.id() != c.id {
                    return Err(io::Error::other(format!("chunk source gave {} for {}", v.id(), c.id)));
                }
                out.extend_from_slice(v.data());
            }
        }
    }
    Ok(out)
}

/// Cuts a stream back into the manifest's chunks, in order (repeats
/// included). The caller hashes each piece against its `ChunkRef`.
pub fn split_stream<'a>(m: &'a Manifest, stream: &'a [u8]) -> impl Iterator<Item = (&'a ChunkRef, &'a [u8])> + 'a {
    let mut at = 0usize;
    m.entries
        .iter()
        .filter_map(|e| if let Entry::File { chunks, .. } = e { Some(chunks) } else { None })
        .flatten()
        .map_while(move |c| {
            let end = at.checked_add(c.len as usize)?;
            let piece = stream.get(at..end)?;
            at = end;
            Some((c, piece))
        })
}

/// Encodes `new` against `old`. Level 19 is what `zstd --patch-from -19` uses.
pub fn encode_delta(old: &[u8], new: &[u8], level: i32) -> io::Result<Vec<u8>> {
    let mut enc = zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), level, old)?;
    enc.window_log(window_log(old.len(), new.len()))?;
    enc.set_pledged_src_size(Some(new.len() as u64))?;
    enc.include_checksum(true)?;
    if old.len() + new.len() > (128 << 20) {
        enc.long_distance_matching(true)?;
    }
    enc.write_all(new)?;
    enc.finish()
}

/// Decodes a delta against `old`; the result must be exactly `want` bytes.
pub fn decode_delta(old: &[u8], delta: &[u8], want: u64) -> Result<Vec<u8>, DeltaError> {
    let out = decode_bounded(old, delta, want)?;
    if out.len() as u64 != want {
        return Err(DeltaError::Length { got: out.len() as u64, want });
    }
    Ok(out)
}

/// Decodes a delta against `old` into at most `max` bytes.
pub fn decode_bounded(old: &[u8], delta: &[u8], max: u64) -> Result<Vec<u8>, DeltaError> {
    let err = |e: io::Error| DeltaError::Decode(e.to_string());
    let mut dec = zstd::stream::read::Decoder::with_ref_prefix(delta, old).map_err(err)?;
    dec.window_log_max(31).map_err(err)?;
    let mut out = Vec::with_capacity(max.min(64 << 20) as usize);
    let n = dec.take(max + 1).read_to_end(&mut out).map_err(err)? as u64;
    if n > max {
        return Err(DeltaError::TooLong(max));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChunkId, RelPath};

    fn pseudo(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn a_small_edit_costs_a_small_delta_and_round_trips() {
        let old = pseudo(7, 3 << 20);
        let mut new = old.clone();
        new[1_000_000..1_000_010].copy_from_slice(b"0123456789");
        new.extend_from_slice(b"appended");
        let d = encode_delta(&old, &new, 19).unwrap();
        assert!(d.len() < 1000, "delta of a 10-byte edit is {} bytes", d.len());
        assert_eq!(decode_delta(&old, &d, new.len() as u64).unwrap(), new);
    }

    #[test]
    fn a_wrong_reference_or_length_is_an_error_not_garbage() {
        let old = pseudo(1, 1 << 20);
        let mut new = old.clone();
        new[10] ^= 1;
        let d = encode_delta(&old, &new, 3).unwrap();
        let other = pseudo(2, 1 << 20);
        // the frame checksum catches a wrong reference
        assert!(decode_delta(&other, &d, new.len() as u64).is_err());
        assert!(matches!(decode_delta(&old, &d, 10), Err(DeltaError::TooLong(10))));
        assert!(matches!(decode_delta(&old, &d, new.len() as u64 + 1), Err(DeltaError::Length { .. })));
        assert!(decode_delta(&old, b"not zstd", 5).is_err());
    }

    #[test]
    fn streams_split_back_into_their_chunks() {
        let a = VerifiedChunk::from_data(b"hello ".to_vec());
        let b = VerifiedChunk::from_data(b"world".to_vec());
        let r = |c: &VerifiedChunk| ChunkRef { id: c.id(), len: c.data().len() as u32 };
        let m = Manifest::new(vec![
            Entry::File { path: RelPath::parse("x").unwrap(), mode: 0o644, size: 11, chunks: vec![r(&a), r(&b)] },
            Entry::File { path: RelPath::parse("y").unwrap(), mode: 0o644, size: 6, chunks: vec![r(&a)] },
        ]);
        let chunks = [a.clone(), b.clone()];
        let s = release_stream(&m, |c| Ok(chunks.iter().find(|v| v.id() == c.id).unwrap().clone())).unwrap();
        assert_eq!(s, b"hello worldhello ");
        let pieces: Vec<_> = split_stream(&m, &s).map(|(c, p)| (c.id, p.to_vec())).collect();
        assert_eq!(pieces.len(), 3);
        assert!(pieces.iter().all(|(id, p)| ChunkId::of(p) == *id));
        // a short stream yields only the chunks it holds
        assert_eq!(split_stream(&m, &s[..8]).count(), 1);
    }
}
