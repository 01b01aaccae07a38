//! Release deltas, file by file (format [`DELTA_FORMAT`]).
//!
//! A delta from release A to B says, for every file of B, how to have it:
//! the same file of A (`same`), another file of A with the same bytes
//! (`copy`: moves), a zstd patch against one file of A (`patch`: the file
//! at the same path, or the most similar one that B no longer has, for
//! renames and hashed asset names), the next bytes of one zstd stream of
//! all wholly new files (`literal`, so new files still share a window), or
//! plain chunks when none of that is cheaper (`chunks`). That list is the
//! new manifest's *skeleton*: no chunk lists for the files the delta
//! carries; the receiver cuts their bytes into chunks (FastCDC is
//! deterministic) and checks the rebuilt manifest against the root digest.
//!
//! Memory is bounded whatever the release size: a file is patched in
//! segments of at most [`SEGMENT`] bytes, each against a window of at most
//! [`SEGMENT`] + 2 × [`MARGIN`] bytes of its reference around the same
//! relative position; the literal stream's window is 16 MiB; nothing else
//! is held but the manifests. Both sides read release bytes chunk by chunk
//! through a [`ChunkSource`] that verifies each chunk.
//!
//! Nothing decoded here is trusted: chunks handed to the sink are hashed by
//! their own bytes (content-addressed, so a bad delta only adds chunks
//! nothing uses), and the caller compares the rebuilt manifest's digest with
//! the root digest it was given before using any of it.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::{ChunkId, ChunkRef, Entry, Manifest, RelPath, VerifiedChunk, CHUNK_AVG, CHUNK_MAX, CHUNK_MIN};

/// Format tag of a delta, sent with it; bumped on any change of encoding.
///
/// A delta body is: the patch sections (for each `patch` file in skeleton
/// order, for each of its segments: its length as LEB128, then a zstd
/// frame made with the segment's reference window as prefix; a file of one
/// segment has a byte before its frame: 0 for that, 1 for a frame made
/// with the chain of files patched just before it ahead of the window (see
/// `CHAIN_FILES`); length 0: the segment is the reference's bytes at the
/// same offset), the literal
/// stream (one zstd frame, maybe empty), the skeleton as a zstd patch of the
/// old release's skeleton, and a trailer of three 8-byte big-endian
/// lengths: patch sections, literal stream, skeleton patch.
pub const DELTA_FORMAT: &str = "convoy-delta-5";

/// Largest piece of a file patched at once.
pub const SEGMENT: u64 = 16 << 20;
/// Reference bytes on each side of a segment's relative position.
pub const MARGIN: u64 = 8 << 20;
/// Window of the literal stream (16 MiB).
const LITERAL_WINDOW_LOG: u32 = 24;
/// A patch of a file of one segment also refers to the last
/// `CHAIN_FILES` such files patched before it (each at most `CHAIN_MAX`
/// bytes), in skeleton order, placed before its reference: a change that
/// lands in many files (built bundles) is paid for once.
const CHAIN_FILES: usize = 2;
const CHAIN_MAX: u64 = 4 << 20;
/// Level of a patch against the chain (loading a big prefix costs about
/// its size in work at 15 and above, a tenth of that here).
const CHAIN_LEVEL: i32 = 12;

/// Largest skeleton accepted.
const SKELETON_MAX: u64 = 64 << 20;
const TRAILER: u64 = 24;

/// How a file of the new release is had.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum How {
    /// The old release's file at the same path, unchanged.
    Same,
    /// The old release's file at this path: the same bytes (moved, copied).
    Copy(RelPath),
    /// A patch of the old release's file at this path (patch sections).
    Patch(RelPath),
    /// The next bytes of the literal stream.
    Literal,
    /// Not in the delta: fetched as these chunks.
    Chunks(Vec<ChunkRef>),
}

/// A manifest whose files say how to have them instead of listing chunks.
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
    Dir { path: RelPath, mode: u32 },
    File { path: RelPath, mode: u32, size: u64, how: How },
    Symlink { path: RelPath, target: String },
}

fn skeleton_bytes(m: &Manifest, mut how: impl FnMut(&RelPath) -> How) -> Vec<u8> {
    let entries = m
        .entries
        .iter()
        .map(|e| match e {
            Entry::Dir { path, mode } => SkelEntry::Dir { path: path.clone(), mode: *mode },
            Entry::File { path, mode, size, .. } => {
                SkelEntry::File { path: path.clone(), mode: *mode, size: *size, how: how(path) }
            }
            Entry::Symlink { path, target } => SkelEntry::Symlink { path: path.clone(), target: target.clone() },
        })
        .collect();
    serde_json::to_vec(&Skeleton { format: m.format, chunking: m.chunking, entries }).expect("skeleton serialises")
}

/// The reference skeleton both sides build from the old manifest.
fn reference_skeleton(old: &Manifest) -> Vec<u8> {
    skeleton_bytes(old, |_| How::Same)
}

/// Verified bytes of a release's files, one chunk at a time.
pub trait ChunkSource {
    /// Chunk `c` of file `path`, where it starts at byte `offset`.
    fn chunk(&mut self, path: &RelPath, offset: u64, c: &ChunkRef) -> io::Result<VerifiedChunk>;
}

impl<F: FnMut(&RelPath, u64, &ChunkRef) -> io::Result<VerifiedChunk>> ChunkSource for F {
    fn chunk(&mut self, path: &RelPath, offset: u64, c: &ChunkRef) -> io::Result<VerifiedChunk> {
        self(path, offset, c)
    }
}

/// Bytes `[from, from + len)` of the file `path` made of `chunks`.
pub fn read_range(
    src: &mut impl ChunkSource,
    path: &RelPath,
    chunks: &[ChunkRef],
    from: u64,
    len: u64,
) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(len as usize);
    let end = from + len;
    let mut at = 0u64;
    for c in chunks {
        if at >= end {
            break;
        }
        let c_end = at + c.len as u64;
        if c_end > from {
            let v = src.chunk(path, at, c)?;
            if v.id() != c.id || v.data().len() != c.len as usize {
                return Err(io::Error::other(format!("{path}: the chunk source gave {} for {}", v.id(), c.id)));
            }
            let (lo, hi) = (from.saturating_sub(at) as usize, (end.min(c_end) - at) as usize);
            out.extend_from_slice(&v.data()[lo..hi]);
        }
        at = c_end;
    }
    if out.len() as u64 != len {
        return Err(io::Error::other(format!("{path}: {len} bytes from {from} are beyond its end")));
    }
    Ok(out)
}

/// One piece of a patched file and the window of its reference it is
/// patched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    ref_from: u64,
    ref_len: u64,
    out_len: u64,
}

/// How a file of `new` bytes is patched from one of `old` bytes; both sides
/// compute it, so it is not sent.
fn segments(old: u64, new: u64) -> Vec<Segment> {
    let whole = old <= SEGMENT + 2 * MARGIN;
    (0..new.div_ceil(SEGMENT))
        .map(|i| {
            let out_from = i * SEGMENT;
            let out_len = SEGMENT.min(new - out_from);
            if whole {
                return Segment { ref_from: 0, ref_len: old, out_len };
            }
            // the same relative position in the old file, with a margin
            let centre = (out_from as u128 * old as u128 / new.max(1) as u128) as u64;
            let ref_from = centre.saturating_sub(MARGIN).min(old - (SEGMENT + 2 * MARGIN));
            Segment { ref_from, ref_len: SEGMENT + 2 * MARGIN, out_len }
        })
        .collect()
}

/// Bytes of memory applying a delta between releases of these sizes needs
/// at most (reference window, segment, literal window, zstd's tables).
pub fn delta_memory(old: u64, new: u64) -> u64 {
    old.min(SEGMENT + 2 * MARGIN) + 2 * new.min(SEGMENT) + new.min(1 << LITERAL_WINDOW_LOG) + (8 << 20)
}

/// A file name with its version numbers and content hashes taken out, so
/// `app-4f3a9b2c.js` and `app-77c0d1e5.js`, or `pkg-1.2.dist-info/RECORD` and
/// `pkg-1.3.dist-info/RECORD`, look alike.
fn similar_key(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        let hashlike = token.len() >= 8 && token.bytes().all(|b| b.is_ascii_alphanumeric());
        if token.bytes().any(|b| b.is_ascii_digit()) || hashlike {
            out.push('#');
        } else {
            out.push_str(token);
        }
        token.clear();
    };
    for ch in path.chars() {
        if matches!(ch, '/' | '.' | '-' | '_' | '+' | '~' | '@') {
            flush(&mut token, &mut out);
            out.push(ch);
        } else {
            token.push(ch);
        }
    }
    flush(&mut token, &mut out);
    out
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The prefix of a one-segment patch: the chain, then the reference.
fn chained(recent: &std::collections::VecDeque<Vec<u8>>, window: Vec<u8>) -> Vec<u8> {
    if recent.is_empty() {
        return window;
    }
    let mut p = Vec::with_capacity(recent.iter().map(Vec::len).sum::<usize>() + window.len());
    for r in recent {
        p.extend_from_slice(r);
    }
    p.extend_from_slice(&window);
    p
}

/// Keeps a one-segment patched file's new bytes in the chain.
fn remember(recent: &mut std::collections::VecDeque<Vec<u8>>, file: Vec<u8>) {
    if file.len() as u64 <= CHAIN_MAX {
        recent.push_back(file);
        if recent.len() > CHAIN_FILES {
            recent.pop_front();
        }
    }
}

/// What making a delta came to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeltaStats {
    /// Bytes of the delta body.
    pub bytes: u64,
    pub same: usize,
    pub copied: usize,
    pub patched: usize,
    pub literal: usize,
    pub chunked: usize,
}

/// A writer that counts.
struct Counting<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn window_log(span: u64) -> u32 {
    let span = span.max(1 << 10);
    (64 - (span - 1).leading_zeros()).clamp(10, 31)
}

/// Pieces larger than this are patched at level 18 at most.
const BIG_PIECE: usize = 4 << 20;

/// Encodes `new` with `prefix` as reference (`zstd --patch-from`).
fn encode_with(prefix: &[u8], new: &[u8], level: i32, checksum: bool) -> io::Result<Vec<u8>> {
    let mut enc = zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), level, prefix)?;
    let wlog = window_log((prefix.len() + new.len()) as u64);
    enc.window_log(wlog)?;
    enc.set_pledged_src_size(Some(new.len() as u64))?;
    enc.include_checksum(checksum)?;
    if wlog > 23 {
        enc.long_distance_matching(true)?;
    }
    enc.write_all(new)?;
    enc.finish()
}

/// Old files by what they can be a reference for.
struct OldIndex<'a> {
    by_path: HashMap<&'a str, (&'a RelPath, &'a [ChunkRef], u64)>,
    by_chunks: HashMap<&'a [ChunkRef], &'a RelPath>,
    /// Files the new release no longer has, by similar path, and by
    /// similar name anywhere.
    gone_similar: HashMap<String, Vec<(&'a RelPath, u64)>>,
    gone_name: HashMap<String, Vec<(&'a RelPath, u64)>>,
}

impl<'a> OldIndex<'a> {
    fn new(old: &'a Manifest, new: &Manifest) -> Self {
        let kept: HashSet<&str> = new.entries.iter().map(|e| e.path().as_str()).collect();
        let mut ix = OldIndex {
            by_path: HashMap::new(),
            by_chunks: HashMap::new(),
            gone_similar: HashMap::new(),
            gone_name: HashMap::new(),
        };
        for e in &old.entries {
            let Entry::File { path, size, chunks, .. } = e else { continue };
            ix.by_path.insert(path.as_str(), (path, chunks.as_slice(), *size));
            if !chunks.is_empty() {
                ix.by_chunks.entry(chunks.as_slice()).or_insert(path);
            }
            if !kept.contains(path.as_str()) && *size > 0 {
                ix.gone_similar.entry(similar_key(path.as_str())).or_default().push((path, *size));
                ix.gone_name.entry(similar_key(base_name(path.as_str()))).or_default().push((path, *size));
            }
        }
        ix
    }

    /// How to have a new file, before weighing a patch against chunks.
    fn how(&self, path: &RelPath, size: u64, chunks: &[ChunkRef]) -> How {
        if chunks.is_empty() {
            return How::Chunks(Vec::new());
        }
        if let Some((_, c, _)) = self.by_path.get(path.as_str()) {
            if *c == chunks {
                return How::Same;
            }
        }
        if let Some(from) = self.by_chunks.get(chunks) {
            return How::Copy((*from).clone());
        }
        if let Some((p, _, s)) = self.by_path.get(path.as_str()) {
            if *s > 0 {
                return How::Patch((*p).clone());
            }
        }
        let closest = |c: Option<&Vec<(&RelPath, u64)>>| {
            c.and_then(|c| c.iter().min_by_key(|(p, s)| (s.abs_diff(size), p.as_str())).map(|(p, _)| (*p).clone()))
        };
        closest(self.gone_similar.get(&similar_key(path.as_str())))
            .or_else(|| closest(self.gone_name.get(&similar_key(base_name(path.as_str())))))
            .map_or(How::Literal, How::Patch)
    }
}

/// Makes the delta body from `old` to `new` into `out` (see
/// [`DELTA_FORMAT`]). `chunk_cost` is what sending a chunk alone costs
/// (its compressed size); a file whose patch would cost more than its
/// chunks the old release lacks is sent as chunks.
pub fn make_release_delta(
    old: &Manifest,
    new: &Manifest,
    old_src: &mut impl ChunkSource,
    new_src: &mut impl ChunkSource,
    level: i32,
    chunk_cost: &dyn Fn(&ChunkRef) -> u64,
    out: impl Write,
) -> io::Result<DeltaStats> {
    let ix = OldIndex::new(old, new);
    let old_chunks: HashSet<ChunkId> = old.chunk_ids().into_iter().collect();
    let mut out = Counting { inner: out, n: 0 };
    let mut stats = DeltaStats::default();
    let mut hows: HashMap<&str, How> = HashMap::new();
    let mut literal: Vec<(&RelPath, &[ChunkRef], u64)> = Vec::new();
    let mut recent = std::collections::VecDeque::new();

    // pass 1: decide, and write the patch sections
    for e in &new.entries {
        let Entry::File { path, size, chunks, .. } = e else { continue };
        let mut how = ix.how(path, *size, chunks);
        if let How::Patch(from) = how.clone() {
            let (_, ref_chunks, ref_size) = ix.by_path[from.as_str()];
            let segs = segments(ref_size, *size);
            let mut out_from = 0u64;
            let mut frames = Vec::new();
            let mut whole = Vec::new();
            for s in &segs {
                let piece = read_range(new_src, path, chunks, out_from, s.out_len)?;
                let in_place = out_from + s.out_len <= ref_size
                    && read_range(old_src, &from, ref_chunks, out_from, s.out_len)? == piece;
                out_from += s.out_len;
                let frame = if in_place {
                    Vec::new()
                } else {
                    let window = read_range(old_src, &from, ref_chunks, s.ref_from, s.ref_len)?;
                    // no frame checksum: every chunk made of it is hashed; big
                    // pieces at 18 at most (a quarter less CPU and a third less
                    // memory than 19 for under 1% more bytes, on a 10 MB binary)
                    let level = if piece.len() > BIG_PIECE { level.min(18) } else { level };
                    if segs.len() == 1 {
                        // a flag byte: 0 against the window, 1 against the chain
                        // too (made at a level that loads a big prefix cheaply),
                        // whichever is smaller
                        let chain = if recent.is_empty() {
                            None
                        } else {
                            Some(encode_with(&chained(&recent, window.clone()), &piece, CHAIN_LEVEL, false)?)
                        };
                        let plain = encode_with(&window, &piece, level, false)?;
                        match chain {
                            Some(c) if c.len() < plain.len() => [&[1u8][..], &c].concat(),
                            _ => [&[0u8][..], &plain].concat(),
                        }
                    } else {
                        encode_with(&window, &piece, level, false)?
                    }
                };
                if segs.len() == 1 {
                    frames.push(frame);
                    whole = piece;
                } else {
                    // a big file: written as it goes, never weighed
                    write_varint(&mut out, frame.len() as u64)?;
                    out.write_all(&frame)?;
                }
            }
            if segs.len() == 1 {
                let patch: u64 = frames.iter().map(|f| f.len() as u64 + 3).sum();
                // a chunk id costs about 32 bytes in the skeleton
                let as_chunks: u64 =
                    chunks.iter().filter(|c| !old_chunks.contains(&c.id)).map(|c| chunk_cost(c) + 32).sum();
                if patch >= as_chunks {
                    how = How::Chunks(chunks.clone());
                } else {
                    for f in frames {
                        write_varint(&mut out, f.len() as u64)?;
                        out.write_all(&f)?;
                    }
                    remember(&mut recent, whole);
                }
            }
        }
        match &how {
            How::Same => stats.same += 1,
            How::Copy(_) => stats.copied += 1,
            How::Patch(_) => stats.patched += 1,
            How::Chunks(_) => stats.chunked += 1,
            How::Literal => {
                stats.literal += 1;
                literal.push((path, chunks, *size));
            }
        }
        hows.insert(path.as_str(), how);
    }
    let patches_len = out.n;

    // pass 2: the literal stream
    let total: u64 = literal.iter().map(|(_, _, s)| s).sum();
    if total > 0 {
        let mut enc = zstd::stream::write::Encoder::new(&mut out, level)?;
        enc.window_log(window_log(total).min(LITERAL_WINDOW_LOG))?;
        enc.set_pledged_src_size(Some(total))?;
        enc.include_checksum(false)?;
        for (path, chunks, _) in &literal {
            let mut at = 0;
            for c in chunks.iter() {
                let v = new_src.chunk(path, at, c)?;
                if v.id() != c.id {
                    return Err(io::Error::other(format!("{path}: the chunk source gave {} for {}", v.id(), c.id)));
                }
                enc.write_all(v.data())?;
                at += c.len as u64;
            }
        }
        enc.finish()?;
    }
    let literal_len = out.n - patches_len;

    let skeleton = skeleton_bytes(new, |p| hows.remove(p.as_str()).expect("every file was decided"));
    let skeleton = encode_with(&reference_skeleton(old), &skeleton, level, false)?;
    out.write_all(&skeleton)?;
    for n in [patches_len, literal_len, skeleton.len() as u64] {
        out.write_all(&n.to_be_bytes())?;
    }
    out.flush()?;
    stats.bytes = out.n;
    Ok(stats)
}

/// Bytes that can be read at any offset (a file, or bytes in memory).
pub trait ReadAt {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

impl ReadAt for std::fs::File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = (offset as usize).min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

/// A range of a [`ReadAt`], read in order.
struct Section<'a, R: ?Sized> {
    body: &'a R,
    at: u64,
    end: u64,
}

impl<R: ReadAt + ?Sized> Read for Section<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.end - self.at) as usize;
        if n == 0 {
            return Ok(0);
        }
        let got = self.body.read_at(&mut buf[..n], self.at)?;
        if got == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.at += got as u64;
        Ok(got)
    }
}

impl<R: ReadAt + ?Sized> Section<'_, R> {
    fn read_n(&mut self, n: u64) -> Result<Vec<u8>, DeltaError> {
        if n > self.end - self.at {
            return Err(DeltaError::Decode("a section runs past its end".into()));
        }
        let mut buf = vec![0; n as usize];
        self.read_exact(&mut buf).map_err(|e| DeltaError::Decode(format!("reading the delta: {e}")))?;
        Ok(buf)
    }
    fn varint(&mut self) -> Result<u64, DeltaError> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.read_n(1)?[0];
            n |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(DeltaError::Decode("a length runs past 64 bits".into()))
    }
    fn next_frame(&mut self) -> Result<Vec<u8>, DeltaError> {
        let n = self.varint()?;
        // a segment's frame is never much larger than the segment
        if n > SEGMENT + (1 << 20) {
            return Err(DeltaError::Decode(format!("a patch frame of {n} bytes")));
        }
        self.read_n(n)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("delta does not decode against this reference: {0}")]
    Decode(String),
    #[error("delta decodes to more than the {0} bytes the release holds")]
    TooLong(u64),
    #[error("delta decodes to {got} bytes, the release holds {want}")]
    Length { got: u64, want: u64 },
    #[error("writing a chunk: {0}")]
    Sink(io::Error),
}

/// What applying a delta came to.
pub enum Applied {
    /// Every file was had: the new manifest (validated; the caller compares
    /// its digest with the root digest it trusts).
    Complete(Manifest),
    /// These files' references could not be read intact here (a modified
    /// install): their bytes are missing, the others' chunks were handed
    /// to the sink; the caller fetches the manifest and the rest as chunks.
    Partial(Vec<String>),
}

/// Cuts `data` (one file's bytes, read in order) into chunks for `sink`.
fn chunk_into(
    data: impl Read,
    sink: &mut impl FnMut(VerifiedChunk) -> io::Result<()>,
) -> Result<Vec<ChunkRef>, io::Error> {
    let mut refs = Vec::new();
    for c in fastcdc::v2020::StreamCDC::new(data, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX) {
        let c = c.map_err(|e| match e {
            fastcdc::v2020::Error::IoError(e) => e,
            e => io::Error::other(e.to_string()),
        })?;
        let v = VerifiedChunk::from_data(c.data);
        refs.push(ChunkRef { id: v.id(), len: c.length as u32 });
        sink(v).map_err(|e| io::Error::new(io::ErrorKind::Interrupted, SinkFailed(e)))?;
    }
    Ok(refs)
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SinkFailed(io::Error);

/// Why a patched file's bytes stopped.
enum Stop {
    /// Its reference could not be read intact here.
    Reference(String),
    Delta(DeltaError),
}

/// A patched file's bytes, segment by segment.
struct Patched<'a, 'b, S: ChunkSource, R: ReadAt + ?Sized> {
    segs: std::vec::IntoIter<Segment>,
    /// Where the next segment starts in the file.
    out_from: u64,
    ref_size: u64,
    buf: Vec<u8>,
    pos: usize,
    src: &'a mut S,
    from: &'a RelPath,
    ref_chunks: &'a [ChunkRef],
    patches: &'a mut Section<'b, R>,
    /// The files patched just before (for a file of one segment).
    chain: &'a std::collections::VecDeque<Vec<u8>>,
    single: bool,
    stop: Option<Stop>,
}

impl<S: ChunkSource, R: ReadAt + ?Sized> Read for Patched<'_, '_, S, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            let Some(s) = self.segs.next() else { return Ok(0) };
            // the last segment is spent: not held while the next is decoded
            (self.buf, self.pos) = (Vec::new(), 0);
            let next = (|| -> Result<Vec<u8>, Stop> {
                let frame = self.patches.next_frame().map_err(Stop::Delta)?;
                if frame.is_empty() && self.out_from + s.out_len > self.ref_size {
                    return Err(Stop::Delta(DeltaError::Decode(format!("{}: copy beyond its end", self.from))));
                }
                let (out_from, from, ref_chunks) = (self.out_from, self.from, self.ref_chunks);
                let (single, chain) = (self.single, self.chain);
                let mut reference = |at, len| {
                    read_range(self.src, from, ref_chunks, at, len).map_err(|e| Stop::Reference(e.to_string()))
                };
                if frame.is_empty() {
                    // the same bytes at the same offset
                    return reference(out_from, s.out_len);
                }
                let window = reference(s.ref_from, s.ref_len)?;
                let (prefix, frame) = match (single, frame.split_first()) {
                    (false, _) => (window, &frame[..]),
                    (true, Some((0, rest))) => (window, rest),
                    (true, Some((1, rest))) => (chained(chain, window), rest),
                    _ => return Err(Stop::Delta(DeltaError::Decode(format!("{}: unknown patch kind", self.from)))),
                };
                decode_delta(&prefix, frame, s.out_len).map_err(Stop::Delta)
            })();
            self.out_from += s.out_len;
            match next {
                Ok(b) => (self.buf, self.pos) = (b, 0),
                Err(stop) => {
                    self.stop = Some(stop);
                    return Err(io::Error::other("patch stopped"));
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Applies a delta body to the old release, whose files `old_src` reads
/// (verifying every chunk). The bytes of each file the delta carries are
/// cut into chunks and handed to `sink` as they are made; at most
/// `max_size` bytes of files are made. Memory: see [`delta_memory`].
pub fn apply_release_delta<R: ReadAt + ?Sized>(
    old: &Manifest,
    old_src: &mut impl ChunkSource,
    body: &R,
    body_len: u64,
    max_size: u64,
    sink: &mut impl FnMut(VerifiedChunk) -> io::Result<()>,
) -> Result<Applied, DeltaError> {
    let bad = |s: String| DeltaError::Decode(s);
    // the trailer, then the three sections
    let mut trailer = Section { body, at: body_len.saturating_sub(TRAILER), end: body_len };
    let mut len =
        || -> Result<u64, DeltaError> { Ok(u64::from_be_bytes(trailer.read_n(8)?.try_into().expect("8 bytes"))) };
    let (patches_len, literal_len, skeleton_len) = (len()?, len()?, len()?);
    let sum = patches_len.checked_add(literal_len).and_then(|n| n.checked_add(skeleton_len));
    if body_len < TRAILER || sum != Some(body_len - TRAILER) || skeleton_len > SKELETON_MAX {
        return Err(bad("the delta's sections do not add up to its length".into()));
    }
    let mut patches = Section { body, at: 0, end: patches_len };
    let literal_at = patches_len;
    let skel_at = literal_at + literal_len;
    let skel_patch = Section { body, at: skel_at, end: skel_at + skeleton_len }.read_n(skeleton_len)?;
    let skeleton = decode_bounded(&reference_skeleton(old), &skel_patch, SKELETON_MAX)?;
    drop(skel_patch);
    let s: Skeleton = serde_json::from_slice(&skeleton).map_err(|e| bad(format!("skeleton: {e}")))?;
    drop(skeleton);
    let total = s.entries.iter().try_fold(0u64, |n, e| match e {
        SkelEntry::File { size, .. } => n.checked_add(*size),
        _ => Some(n),
    });
    if total.is_none_or(|t| t > max_size) {
        return Err(DeltaError::TooLong(max_size));
    }
    let literal_total: u64 = s
        .entries
        .iter()
        .map(|e| match e {
            SkelEntry::File { size, how: How::Literal, .. } => *size,
            _ => 0,
        })
        .sum();
    let mut literal = if literal_len > 0 {
        let section = Section { body, at: literal_at, end: literal_at + literal_len };
        let mut dec = zstd::stream::read::Decoder::new(section).map_err(|e| bad(e.to_string()))?;
        dec.window_log_max(LITERAL_WINDOW_LOG).map_err(|e| bad(e.to_string()))?;
        Some(dec.take(literal_total))
    } else {
        None
    };

    let old_files: HashMap<&str, (&RelPath, &[ChunkRef], u64)> = old
        .entries
        .iter()
        .filter_map(|e| match e {
            Entry::File { path, size, chunks, .. } => Some((path.as_str(), (path, chunks.as_slice(), *size))),
            _ => None,
        })
        .collect();
    let old_file = |p: &RelPath| {
        old_files.get(p.as_str()).copied().ok_or_else(|| bad(format!("{p}: no such file in the old release")))
    };
    let sunk = |e: io::Error| {
        let msg = e.to_string();
        match e.into_inner().map(|i| i.downcast::<SinkFailed>()) {
            Some(Ok(s)) => DeltaError::Sink(s.0),
            _ => bad(msg),
        }
    };
    let mut failed = Vec::new();
    let mut recent = std::collections::VecDeque::new();
    let mut entries = Vec::with_capacity(s.entries.len());
    for e in s.entries {
        entries.push(match e {
            SkelEntry::Dir { path, mode } => Entry::Dir { path, mode },
            SkelEntry::Symlink { path, target } => Entry::Symlink { path, target },
            SkelEntry::File { path, mode, size, how } => {
                let chunks = match how {
                    How::Same | How::Copy(_) => {
                        let from = if let How::Copy(f) = &how { f } else { &path };
                        let (_, chunks, len) = old_file(from)?;
                        if len != size {
                            return Err(bad(format!("{path}: {from} in the old release is not {size} bytes")));
                        }
                        chunks.to_vec()
                    }
                    How::Chunks(c) => c,
                    How::Literal => {
                        let lit = literal.as_mut().ok_or_else(|| bad(format!("{path}: no literal stream")))?;
                        let before = lit.limit();
                        let refs = chunk_into(lit.by_ref().take(size), sink).map_err(sunk)?;
                        if before - lit.limit() != size {
                            return Err(bad(format!("{path}: the literal stream ends before the file does")));
                        }
                        refs
                    }
                    How::Patch(from) => {
                        let (from, ref_chunks, ref_size) = old_file(&from)?;
                        let segs = segments(ref_size, size);
                        let single = segs.len() == 1;
                        let mut r = Patched {
                            chain: &recent,
                            single,
                            segs: segs.into_iter(),
                            out_from: 0,
                            ref_size,
                            buf: Vec::new(),
                            pos: 0,
                            src: &mut *old_src,
                            from,
                            ref_chunks,
                            patches: &mut patches,
                            stop: None,
                        };
                        let made = chunk_into(&mut r, sink);
                        let (stop, left) = (r.stop.take(), r.segs.len());
                        let file = std::mem::take(&mut r.buf);
                        match (made, stop) {
                            (Ok(refs), _) => {
                                if single {
                                    remember(&mut recent, file);
                                }
                                refs
                            }
                            (Err(_), Some(Stop::Reference(why))) => {
                                // skip what is left of this file's sections
                                for _ in 0..left {
                                    patches.next_frame()?;
                                }
                                failed.push(format!("{path}: {why}"));
                                Vec::new()
                            }
                            (Err(_), Some(Stop::Delta(e))) => return Err(e),
                            (Err(e), None) => return Err(sunk(e)),
                        }
                    }
                };
                Entry::File { path, mode, size, chunks }
            }
        });
    }
    if patches.at != patches.end {
        return Err(bad(format!("{} bytes of patches are left over", patches.end - patches.at)));
    }
    if let Some(mut lit) = literal {
        let mut extra = [0u8; 1];
        let inner = lit.get_mut();
        if inner.read(&mut extra).map_err(|e| bad(e.to_string()))? != 0 {
            return Err(bad("the literal stream has bytes beyond the last file".into()));
        }
    }
    if !failed.is_empty() {
        return Ok(Applied::Partial(failed));
    }
    let m = Manifest { format: s.format, chunking: s.chunking, entries };
    m.validate().map_err(|e| bad(e.to_string()))?;
    Ok(Applied::Complete(m))
}

/// Encodes `new` against `old`. Level 19 is what `zstd --patch-from -19` uses.
pub fn encode_delta(old: &[u8], new: &[u8], level: i32) -> io::Result<Vec<u8>> {
    encode_with(old, new, level, true)
}

/// An unsigned LEB128 number.
fn write_varint(out: &mut impl Write, mut n: u64) -> io::Result<()> {
    let mut buf = [0u8; 10];
    let mut i = 0;
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            buf[i] = b;
            i += 1;
            break;
        }
        buf[i] = b | 0x80;
        i += 1;
    }
    out.write_all(&buf[..i])
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
    // a segment's window (32 MiB of reference + 16 MiB) needs 2^26; a frame
    // asking for more is refused rather than given the memory
    dec.window_log_max(27).map_err(err)?;
    let mut out = Vec::with_capacity(max.min(64 << 20) as usize);
    let n = dec.take(max + 1).read_to_end(&mut out).map_err(err)? as u64;
    if n > max {
        return Err(DeltaError::TooLong(max));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

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

    /// Text-like bytes: words from a small vocabulary, so files compress and
    /// resemble each other as source files do.
    fn words(seed: u64, len: usize) -> Vec<u8> {
        const W: [&str; 12] = ["fn ", "let ", "self", ".map(", "x", ") ", "{\n", "}\n", "return ", "42", "Ok(", "err"];
        pseudo(seed, len).iter().flat_map(|b| W[*b as usize % W.len()].bytes()).take(len).collect()
    }

    /// A release made in memory from files (parents made directories).
    struct Tree {
        m: Manifest,
        chunks: HashMap<ChunkId, VerifiedChunk>,
    }

    fn tree(files: &BTreeMap<String, Vec<u8>>) -> Tree {
        let mut entries = Vec::new();
        let mut dirs = HashSet::new();
        let mut chunks = HashMap::new();
        for (p, data) in files {
            let mut at = 0;
            while let Some(i) = p[at..].find('/') {
                let d = &p[..at + i];
                if dirs.insert(d.to_owned()) {
                    entries.push(Entry::Dir { path: RelPath::parse(d).unwrap(), mode: 0o755 });
                }
                at += i + 1;
            }
            let refs = fastcdc::v2020::FastCDC::new(data, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX)
                .map(|c| {
                    let v = VerifiedChunk::from_data(data[c.offset..c.offset + c.length].to_vec());
                    let r = ChunkRef { id: v.id(), len: c.length as u32 };
                    chunks.insert(v.id(), v);
                    r
                })
                .collect();
            entries.push(Entry::File {
                path: RelPath::parse(p).unwrap(),
                mode: 0o644,
                size: data.len() as u64,
                chunks: refs,
            });
        }
        Tree { m: Manifest::new(entries), chunks }
    }

    fn source(t: &Tree) -> impl FnMut(&RelPath, u64, &ChunkRef) -> io::Result<VerifiedChunk> + '_ {
        |_, _, c| t.chunks.get(&c.id).cloned().ok_or_else(|| io::Error::other("no such chunk"))
    }

    fn make(old: &Tree, new: &Tree) -> (Vec<u8>, DeltaStats) {
        let mut body = Vec::new();
        let cost = |c: &ChunkRef| c.len as u64 / 2;
        let stats =
            make_release_delta(&old.m, &new.m, &mut source(old), &mut source(new), 19, &cost, &mut body).unwrap();
        assert_eq!(stats.bytes, body.len() as u64);
        (body, stats)
    }

    /// Applies `body` to `old`; the new release's files rebuilt from the
    /// chunks the delta made and the old release's.
    fn apply(old: &Tree, body: &[u8]) -> Result<(Applied, HashMap<ChunkId, VerifiedChunk>), DeltaError> {
        let mut made = HashMap::new();
        let mut sink = |v: VerifiedChunk| {
            made.insert(v.id(), v);
            Ok(())
        };
        let a = apply_release_delta(&old.m, &mut source(old), body, body.len() as u64, u64::MAX, &mut sink)?;
        Ok((a, made))
    }

    fn files_of(m: &Manifest, chunks: &HashMap<ChunkId, VerifiedChunk>) -> BTreeMap<String, Vec<u8>> {
        m.entries
            .iter()
            .filter_map(|e| match e {
                Entry::File { path, chunks: refs, .. } => {
                    Some((path.to_string(), refs.iter().flat_map(|r| chunks[&r.id].data().to_vec()).collect()))
                }
                _ => None,
            })
            .collect()
    }

    fn check_round_trip(old: &BTreeMap<String, Vec<u8>>, new: &BTreeMap<String, Vec<u8>>) -> DeltaStats {
        let (a, b) = (tree(old), tree(new));
        let (body, stats) = make(&a, &b);
        let (applied, mut made) = apply(&a, &body).unwrap();
        let Applied::Complete(m) = applied else { panic!("every reference is intact") };
        assert_eq!(m.digest(), b.m.digest());
        made.extend(a.chunks.clone());
        // only the files sent as chunks name chunks neither side made or held
        let fetched = m
            .entries
            .iter()
            .filter(|e| matches!(e, Entry::File { chunks, .. } if chunks.iter().any(|c| !made.contains_key(&c.id))))
            .count();
        assert!(fetched <= stats.chunked, "{fetched} files lack chunks, {} were sent as chunks", stats.chunked);
        made.extend(b.chunks.clone());
        assert_eq!(&files_of(&m, &made), new);
        stats
    }

    fn files(list: &[(&str, Vec<u8>)]) -> BTreeMap<String, Vec<u8>> {
        list.iter().map(|(p, d)| (p.to_string(), d.clone())).collect()
    }

    #[test]
    fn edits_renames_hashed_names_and_new_files_round_trip_cheaply() {
        let big = words(3, 700_000);
        let mut edited = big.clone();
        edited[300_000..300_004].copy_from_slice(b"edit");
        let app_js = words(5, 90_000);
        let mut app_js2 = app_js.clone();
        app_js2.extend_from_slice(b"console.log(1)\n");
        let old = files(&[
            ("big", big.clone()),
            ("empty", vec![]),
            ("d/small", b"hello".to_vec()),
            ("gone", pseudo(4, 9)),
            ("assets/app-4f3a9b2c.js", app_js),
            ("pkg-1.2.dist-info/RECORD", words(6, 20_000)),
        ]);
        let mut record = words(6, 20_000);
        record[100] = b'!';
        let new = files(&[
            ("big", edited),
            ("moved/big", big),
            ("empty", vec![]),
            ("d/small", b"hello".to_vec()),
            ("new", b"fresh".to_vec()),
            ("assets/app-77c0d1e5.js", app_js2),
            ("pkg-1.3.dist-info/RECORD", record),
        ]);
        let stats = check_round_trip(&old, &new);
        assert!(stats.bytes < 1_200, "delta of small edits, a move and renames is {} bytes: {stats:?}", stats.bytes);
        assert_eq!((stats.same, stats.copied, stats.patched, stats.literal), (1, 1, 3, 1), "{stats:?}");
    }

    #[test]
    fn a_change_landing_in_many_files_is_paid_about_once() {
        // three builds of one bundle: the same new 6 KB lands in each
        let change = pseudo(77, 6_000);
        let mut old = BTreeMap::new();
        let mut new = BTreeMap::new();
        for (i, name) in ["a.js", "b.js", "c.js"].iter().enumerate() {
            let base = words(i as u64 + 40, 120_000);
            let mut edited = base.clone();
            edited.splice(60_000..60_000, change.iter().copied());
            old.insert(name.to_string(), base);
            new.insert(name.to_string(), edited);
        }
        let stats = check_round_trip(&old, &new);
        assert_eq!(stats.patched, 3);
        assert!(stats.bytes < 9_000, "the change cost {} bytes over three files", stats.bytes);
    }

    #[test]
    fn similar_names_ignore_versions_and_hashes() {
        assert_eq!(similar_key("assets/app-4f3a9b2c.js"), similar_key("assets/app-77c0d1e5.js"));
        assert_eq!(similar_key("pkg-1.2.dist-info/RECORD"), similar_key("pkg-1.10.dist-info/RECORD"));
        assert_eq!(similar_key("lib/libfoo.so.1.2.3"), "lib/libfoo.so.#.#.#");
        assert_ne!(similar_key("assets/app-4f3a9b2c.js"), similar_key("assets/vendor-4f3a9b2c.js"));
    }

    #[test]
    fn a_modified_reference_leaves_that_file_out_and_the_rest_in() {
        let a = words(1, 200_000);
        let mut a2 = a.clone();
        a2[5] = b'?';
        let b = words(2, 200_000);
        let mut b2 = b.clone();
        b2[7] = b'?';
        let (old, new) = (tree(&files(&[("a", a), ("b", b)])), tree(&files(&[("a", a2), ("b", b2)])));
        let (body, _) = make(&old, &new);
        // this machine's copy of `a` does not verify
        let mut src = |p: &RelPath, _: u64, c: &ChunkRef| {
            if p.as_str() == "a" {
                return Err(io::Error::other("modified on this machine"));
            }
            Ok(old.chunks[&c.id].clone())
        };
        let mut made = Vec::new();
        let mut sink = |v: VerifiedChunk| {
            made.push(v.id());
            Ok(())
        };
        let applied = apply_release_delta(&old.m, &mut src, &body[..], body.len() as u64, u64::MAX, &mut sink).unwrap();
        let Applied::Partial(failed) = applied else { panic!("a's reference is modified") };
        assert_eq!(failed.len(), 1);
        assert!(failed[0].starts_with("a: "), "{failed:?}");
        // b's new chunks were made all the same
        let b_chunks = new.m.entries.iter().find(|e| e.path().as_str() == "b").unwrap();
        let Entry::File { chunks, .. } = b_chunks else { unreachable!() };
        assert!(chunks.iter().all(|c| made.contains(&c.id)));
    }

    #[test]
    fn a_file_cheaper_as_chunks_goes_as_chunks() {
        // an unrelated file under an old name: patching it gains nothing
        let (old, new) = (files(&[("x", pseudo(1, 100_000))]), files(&[("x", pseudo(2, 100_000))]));
        let stats = check_round_trip(&old, &new);
        assert_eq!(stats.chunked, 1, "{stats:?}");
    }

    #[test]
    fn a_wrong_or_damaged_body_is_an_error_or_another_release_never_a_panic() {
        let old = files(&[("a", words(1, 100_000)), ("b", words(2, 50_000))]);
        let mut new = old.clone();
        new.get_mut("a").unwrap()[10] = b'#';
        new.insert("c".into(), words(3, 30_000));
        let (a, b) = (tree(&old), tree(&new));
        let (body, _) = make(&a, &b);
        for cut in [1, 8, 24, body.len() / 2, body.len() - 1] {
            assert!(apply(&a, &body[..body.len() - cut]).is_err(), "cut {cut}");
        }
        // a flipped bit: an error, or some release the caller's digest check
        // refuses (frames carry no checksum; chunks and the manifest are hashed)
        let mut refused = 0;
        for i in (0..body.len()).step_by(7) {
            let mut bad = body.clone();
            bad[i] ^= 0x40;
            match apply(&a, &bad) {
                Ok((Applied::Complete(m), _)) if m.digest() == b.m.digest() => {}
                _ => refused += 1,
            }
        }
        assert!(refused > 0);
        // too large for the caller's limit
        let mut sink = |_: VerifiedChunk| Ok(());
        let r = apply_release_delta(&a.m, &mut source(&a), &body[..], body.len() as u64, 1000, &mut sink);
        assert!(matches!(r, Err(DeltaError::TooLong(1000))));
        // against another old release: an error, or a release that is not the new one
        let other = tree(&files(&[("a", words(9, 100_000)), ("b", words(2, 50_000))]));
        if let Ok((Applied::Complete(m), _)) = apply(&other, &body) {
            assert_ne!(m.digest(), b.m.digest());
        }
    }

    #[test]
    fn segments_cover_the_file_within_bounded_windows() {
        for (old, new) in [(0, 5), (10, 0), (100 << 20, 100 << 20), (300 << 20, 40 << 20), (40 << 20, 300 << 20)] {
            let segs = segments(old, new);
            assert_eq!(segs.iter().map(|s| s.out_len).sum::<u64>(), new);
            for s in &segs {
                assert!(s.out_len <= SEGMENT && s.ref_len <= SEGMENT + 2 * MARGIN);
                assert!(s.ref_from + s.ref_len <= old, "{old} {new} {s:?}");
            }
        }
    }

    /// An edit to a tree: what a new release does to the files of the last.
    #[derive(Debug, Clone)]
    enum Edit {
        Change { file: usize, at: usize, bytes: Vec<u8> },
        Insert { file: usize, at: usize, bytes: Vec<u8> },
        Remove { file: usize },
        Rename { file: usize, to: String },
        Add { name: String, seed: u64, len: usize },
    }

    fn edit() -> impl Strategy<Value = Edit> {
        let name = "[a-c]{1,2}(/[a-c]{1,2})?(-[0-9a-f]{8})?\\.(js|txt)";
        prop_oneof![
            (any::<usize>(), any::<usize>(), proptest::collection::vec(any::<u8>(), 1..64))
                .prop_map(|(file, at, bytes)| Edit::Change { file, at, bytes }),
            (any::<usize>(), any::<usize>(), proptest::collection::vec(any::<u8>(), 1..2000))
                .prop_map(|(file, at, bytes)| Edit::Insert { file, at, bytes }),
            any::<usize>().prop_map(|file| Edit::Remove { file }),
            (any::<usize>(), name).prop_map(|(file, to)| Edit::Rename { file, to }),
            (name, any::<u64>(), 0usize..150_000).prop_map(|(name, seed, len)| Edit::Add { name, seed, len }),
        ]
    }

    fn edited(old: &BTreeMap<String, Vec<u8>>, edits: &[Edit]) -> BTreeMap<String, Vec<u8>> {
        let mut t = old.clone();
        let pick = |t: &BTreeMap<String, Vec<u8>>, i: usize| t.keys().nth(i % t.len().max(1)).cloned();
        for e in edits {
            match e {
                Edit::Change { file, at, bytes } => {
                    if let Some(k) = pick(&t, *file) {
                        let f = t.get_mut(&k).unwrap();
                        if !f.is_empty() {
                            let at = at % f.len();
                            let n = bytes.len().min(f.len() - at);
                            f[at..at + n].copy_from_slice(&bytes[..n]);
                        }
                    }
                }
                Edit::Insert { file, at, bytes } => {
                    if let Some(k) = pick(&t, *file) {
                        let f = t.get_mut(&k).unwrap();
                        let at = at % (f.len() + 1);
                        f.splice(at..at, bytes.iter().copied());
                    }
                }
                Edit::Remove { file } => {
                    if let Some(k) = pick(&t, *file) {
                        t.remove(&k);
                    }
                }
                Edit::Rename { file, to } => {
                    if let Some(k) = pick(&t, *file) {
                        let f = t.remove(&k).unwrap();
                        t.insert(to.clone(), f);
                    }
                }
                Edit::Add { name, seed, len } => {
                    t.insert(name.clone(), words(*seed, *len));
                }
            }
        }
        // a path cannot be both a file and a directory
        let all: Vec<String> = t.keys().cloned().collect();
        t.retain(|k, _| !all.iter().any(|o| o.starts_with(&format!("{k}/"))));
        t
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Per-file deltas rebuild the exact release from any tree and any
        /// edits, renames included.
        #[test]
        fn per_file_deltas_rebuild_the_exact_release(
            seeds in proptest::collection::vec((0u64..1000, 0usize..120_000), 1..8),
            edits in proptest::collection::vec(edit(), 0..10),
        ) {
            let old: BTreeMap<String, Vec<u8>> = seeds
                .iter()
                .enumerate()
                .map(|(i, (seed, len))| (format!("f{}/n{i}.txt", i % 3), words(*seed, *len)))
                .collect();
            let new = edited(&old, &edits);
            check_round_trip(&old, &new);
        }
    }
}
