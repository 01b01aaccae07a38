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

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::{ChunkId, ChunkRef, Entry, Manifest, RelPath, VerifiedChunk, CHUNK_AVG, CHUNK_MAX, CHUNK_MIN};

/// Format tag of a delta, sent with it; bumped on any change of encoding.
/// A delta body is: 8 bytes big-endian length of the skeleton patch, the
/// skeleton patch (zstd against the old skeleton), then the stream patch
/// (zstd against the old stream).
pub const DELTA_FORMAT: &str = "convoy-delta-2";

/// A manifest without its chunk lists: what the stream alone cannot say.
/// The chunks follow from the files' bytes (FastCDC is deterministic), so a
/// delta need not carry 32 random bytes per changed chunk; the receiver
/// rebuilds the manifest and checks it against the root digest.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Skeleton {
    format: u32,
    chunking: [u32; 3],
    entries: Vec<SkelEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum SkelEntry {
    Dir {
        path: RelPath,
        mode: u32,
    },
    File {
        path: RelPath,
        mode: u32,
        size: u64,
        /// Its bytes are in the delta's stream; otherwise they are the old
        /// release's file at the same path, unchanged.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        fresh: bool,
    },
    Symlink {
        path: RelPath,
        target: String,
    },
}

/// The canonical bytes of `m`'s skeleton; files not in `unchanged` are fresh.
fn skeleton_bytes(m: &Manifest, unchanged: &HashSet<&str>) -> Vec<u8> {
    let entries = m
        .entries
        .iter()
        .map(|e| match e {
            Entry::Dir { path, mode } => SkelEntry::Dir { path: path.clone(), mode: *mode },
            Entry::File { path, mode, size, .. } => SkelEntry::File {
                path: path.clone(),
                mode: *mode,
                size: *size,
                fresh: !unchanged.contains(path.as_str()),
            },
            Entry::Symlink { path, target } => SkelEntry::Symlink { path: path.clone(), target: target.clone() },
        })
        .collect();
    serde_json::to_vec(&Skeleton { format: m.format, chunking: m.chunking, entries }).expect("skeleton serialises")
}

/// Every file of `m` by path: its chunks and where its bytes start in the stream.
fn file_index(m: &Manifest) -> HashMap<&str, (&[ChunkRef], u64, u64)> {
    let mut at = 0u64;
    let mut out = HashMap::new();
    for e in &m.entries {
        if let Entry::File { path, size, chunks, .. } = e {
            out.insert(path.as_str(), (chunks.as_slice(), at, *size));
            at += size;
        }
    }
    out
}

/// The reference skeleton both sides build from the old manifest.
fn reference_skeleton(old: &Manifest) -> Vec<u8> {
    let all: HashSet<&str> = old.entries.iter().map(|e| e.path().as_str()).collect();
    skeleton_bytes(old, &all)
}

/// Makes the delta body from `old` to `new` (see [`DELTA_FORMAT`]). Files
/// whose content did not change travel as a flag in the skeleton; only the
/// others are in the stream patch, which may still refer to any byte of
/// the old release (moved or edited content).
pub fn make_release_delta(
    old: &Manifest,
    old_stream: &[u8],
    new: &Manifest,
    new_stream: &[u8],
    level: i32,
) -> io::Result<Vec<u8>> {
    let old_files = file_index(old);
    let mut unchanged = HashSet::new();
    let mut fresh = Vec::new();
    let mut at = 0usize;
    for e in &new.entries {
        if let Entry::File { path, size, chunks, .. } = e {
            let end = at + *size as usize;
            if old_files.get(path.as_str()).is_some_and(|(c, _, _)| *c == chunks.as_slice()) {
                unchanged.insert(path.as_str());
            } else {
                fresh.extend_from_slice(&new_stream[at..end]);
            }
            at = end;
        }
    }
    let skeleton = encode_delta(&reference_skeleton(old), &skeleton_bytes(new, &unchanged), level)?;
    let stream = encode_delta(old_stream, &fresh, level)?;
    Ok(join_delta(&skeleton, &stream))
}

/// Applies a delta body to the old release: the new manifest (validated;
/// the caller compares its digest with the root digest it trusts) and the
/// new release stream. At most `max_size` bytes of new stream are made.
pub fn apply_release_delta(
    old: &Manifest,
    old_stream: &[u8],
    body: &[u8],
    max_size: u64,
) -> Result<(Manifest, Vec<u8>), DeltaError> {
    let bad = |s: String| DeltaError::Decode(s);
    let (skel_patch, stream_patch) = split_delta(body)?;
    let skeleton = decode_bounded(&reference_skeleton(old), skel_patch, 64 << 20)?;
    let s: Skeleton = serde_json::from_slice(&skeleton).map_err(|e| bad(format!("skeleton: {e}")))?;
    let total: u64 =
        s.entries.iter().filter_map(|e| if let SkelEntry::File { size, .. } = e { Some(size) } else { None }).sum();
    if total > max_size {
        return Err(DeltaError::TooLong(max_size));
    }
    let fresh = decode_bounded(old_stream, stream_patch, total)?;
    let old_files = file_index(old);
    let mut stream = Vec::with_capacity(total as usize);
    let mut at = 0usize;
    let mut entries = Vec::with_capacity(s.entries.len());
    for e in s.entries {
        entries.push(match e {
            SkelEntry::Dir { path, mode } => Entry::Dir { path, mode },
            SkelEntry::Symlink { path, target } => Entry::Symlink { path, target },
            SkelEntry::File { path, mode, size, fresh: true } => {
                let end = usize::try_from(size).ok().and_then(|n| at.checked_add(n)).filter(|e| *e <= fresh.len());
                let end = end.ok_or_else(|| bad(format!("{path}: the stream ends before the file does")))?;
                let data = &fresh[at..end];
                at = end;
                stream.extend_from_slice(data);
                let chunks = fastcdc::v2020::FastCDC::new(data, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX)
                    .map(|c| ChunkRef { id: ChunkId::of(&data[c.offset..c.offset + c.length]), len: c.length as u32 })
                    .collect();
                Entry::File { path, mode, size, chunks }
            }
            SkelEntry::File { path, mode, size, fresh: false } => {
                let (chunks, from, len) = old_files
                    .get(path.as_str())
                    .filter(|(_, _, len)| *len == size)
                    .ok_or_else(|| bad(format!("{path}: no file of that size in the old release")))?;
                let piece = old_stream
                    .get(*from as usize..(*from + *len) as usize)
                    .ok_or_else(|| bad("the old stream is shorter than its manifest".into()))?;
                stream.extend_from_slice(piece);
                Entry::File { path, mode, size, chunks: chunks.to_vec() }
            }
        });
    }
    if at != fresh.len() {
        return Err(bad(format!("the stream has {} bytes beyond the last file", fresh.len() - at)));
    }
    let m = Manifest { format: s.format, chunking: s.chunking, entries };
    m.validate().map_err(|e| bad(e.to_string()))?;
    Ok((m, stream))
}

/// Joins a skeleton patch and a stream patch into one delta body.
fn join_delta(skeleton_patch: &[u8], stream_patch: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + skeleton_patch.len() + stream_patch.len());
    out.extend_from_slice(&(skeleton_patch.len() as u64).to_be_bytes());
    out.extend_from_slice(skeleton_patch);
    out.extend_from_slice(stream_patch);
    out
}

/// Splits a delta body into its skeleton patch and stream patch.
fn split_delta(body: &[u8]) -> Result<(&[u8], &[u8]), DeltaError> {
    let n = body.get(..8).map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")));
    let end = n.and_then(|n| usize::try_from(n).ok()).and_then(|n| n.checked_add(8)).filter(|e| *e <= body.len());
    let end = end.ok_or_else(|| DeltaError::Decode("delta body is truncated".into()))?;
    Ok((&body[8..end], &body[end..]))
}

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
    if window_log(old.len(), new.len()) > 23 {
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

    fn tree(files: &[(&str, Vec<u8>)]) -> (tempfile::TempDir, Manifest, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        for (p, data) in files {
            let full = dir.path().join(p);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(full, data).unwrap();
        }
        std::os::unix::fs::symlink("d/small", dir.path().join("link")).unwrap();
        let mut chunks = HashMap::new();
        let m = crate::pack_tree(dir.path(), |c| {
            chunks.insert(c.id(), c.clone());
            Ok(())
        })
        .unwrap();
        let stream = release_stream(&m, |c| Ok(chunks[&c.id].clone())).unwrap();
        (dir, m, stream)
    }

    #[test]
    fn release_deltas_rebuild_the_manifest_and_stream() {
        let big = pseudo(3, 700_000);
        let mut edited = big.clone();
        edited[300_000..300_004].copy_from_slice(b"edit");
        let (_a, old, old_stream) =
            tree(&[("big", big.clone()), ("empty", vec![]), ("d/small", b"hello".to_vec()), ("gone", pseudo(4, 9))]);
        let (_b, new, new_stream) = tree(&[
            ("big", edited),
            ("moved", big),
            ("empty", vec![]),
            ("d/small", b"hello".to_vec()),
            ("new", b"fresh".to_vec()),
        ]);
        let body = make_release_delta(&old, &old_stream, &new, &new_stream, 19).unwrap();
        assert!(body.len() < 1_000, "delta of an edit and a copy is {} bytes", body.len());
        let (m, s) = apply_release_delta(&old, &old_stream, &body, u64::MAX).unwrap();
        assert_eq!(m.digest(), new.digest());
        assert_eq!(s, new_stream);
        // a different old stream yields another release or an error, never the new one
        let mut other = old_stream.clone();
        other[10] ^= 1;
        assert!(apply_release_delta(&old, &other, &body, u64::MAX).map_or(true, |(m, _)| m.digest() != new.digest()));
        assert!(matches!(apply_release_delta(&old, &old_stream, &body, 1000), Err(DeltaError::TooLong(1000))));
        assert!(apply_release_delta(&old, &old_stream, &body[..body.len() - 3], u64::MAX).is_err());
        assert!(apply_release_delta(&old, &old_stream, &body[..5], u64::MAX).is_err());
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
