//! Syncing one file the server does not know (a machine's own edit of an
//! installed file) the way rsync does: the machine sends block signatures
//! of what it holds, the server answers with the runs of those blocks the
//! new file contains and the new file as a zstd patch against them (so the
//! bytes between the runs are compressed with the whole matched file as
//! context, where rsync's zlib stream has 32 KiB of it).
//!
//! Nothing here is trusted: what [`apply_ops`] rebuilds is cut into chunks
//! and used only where the manifest (checked against the root digest)
//! names exactly those chunks.

use std::collections::HashMap;

/// Bytes of the strong hash kept per block (a truncated BLAKE3; checked
/// only where the 32-bit rolling checksum matched). A false match only
/// costs a fall-back: the result is checked against the chunks.
const STRONG: usize = 3;
/// Largest file synced this way (both sides hold it whole).
pub const SYNC_MAX_FILE: u64 = 64 << 20;

/// The block size for a file of `len` bytes: about its square root, as
/// rsync chooses, between 512 bytes and 16 KiB.
pub fn block_size(len: u64) -> u32 {
    ((len as f64).sqrt() as u32).next_multiple_of(64).clamp(512, 16 << 10)
}

/// A rolling checksum of a window (rsync's: two 16-bit sums).
#[derive(Clone, Copy)]
struct Rolling {
    a: u32,
    b: u32,
    len: u32,
}

impl Rolling {
    fn of(data: &[u8]) -> Self {
        let (mut a, mut b) = (0u32, 0u32);
        for (i, &x) in data.iter().enumerate() {
            a = a.wrapping_add(x as u32);
            b = b.wrapping_add(((data.len() - i) as u32).wrapping_mul(x as u32));
        }
        Self { a: a & 0xffff, b: b & 0xffff, len: data.len() as u32 }
    }
    fn digest(&self) -> u32 {
        self.a | (self.b << 16)
    }
    /// Moves the window one byte: `out` leaves, `inn` enters.
    fn roll(&mut self, out: u8, inn: u8) {
        self.a = self.a.wrapping_sub(out as u32).wrapping_add(inn as u32) & 0xffff;
        self.b = self.b.wrapping_sub(self.len.wrapping_mul(out as u32)).wrapping_add(self.a) & 0xffff;
    }
}

fn strong(data: &[u8]) -> [u8; STRONG] {
    blake3::hash(data).as_bytes()[..STRONG].try_into().expect("STRONG bytes")
}

/// The signatures of `data` in blocks of `block` bytes (the last may be
/// shorter): 4 bytes rolling checksum and the strong hash, per block.
pub fn signatures(data: &[u8], block: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / block as usize * (4 + STRONG) + 16);
    for b in data.chunks(block as usize) {
        out.extend_from_slice(&Rolling::of(b).digest().to_be_bytes());
        out.extend_from_slice(&strong(b));
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("block signatures are malformed: {0}")]
    Signatures(String),
    #[error("sync instructions are malformed: {0}")]
    Ops(String),
}

/// Instructions rebuilding `new` from a file whose signatures (made with
/// `block`, of a file of `their_len` bytes) are `sigs`: `u32` count of
/// runs, each `u32` first block and `u32` count (big-endian), then `new`
/// as a zstd patch against `context` (other bytes both sides hold) and
/// those runs' bytes, laid end to end.
pub fn make_ops(new: &[u8], sigs: &[u8], block: u32, their_len: u64, context: &[u8]) -> Result<Vec<u8>, SyncError> {
    let bad = |s: &str| SyncError::Signatures(s.to_owned());
    if block == 0 || !sigs.len().is_multiple_of(4 + STRONG) {
        return Err(bad("not a whole number of entries"));
    }
    let n = sigs.len() / (4 + STRONG);
    if n as u64 != their_len.div_ceil(block as u64) {
        return Err(bad("the number of blocks does not fit the file's length"));
    }
    // only whole blocks are matched while rolling; a short last block only at the end
    let last_len = (their_len - (n as u64).saturating_sub(1) * block as u64) as usize;
    // each (weak, strong) pair names one block: a lookup per position costs
    // one strong hash at most, and failed checks have a budget
    let mut by_weak: HashMap<u32, HashMap<[u8; STRONG], u32>> = HashMap::new();
    for (i, e) in sigs.chunks(4 + STRONG).enumerate() {
        if i + 1 < n || last_len == block as usize {
            let weak = u32::from_be_bytes(e[..4].try_into().expect("4 bytes"));
            by_weak.entry(weak).or_default().entry(e[4..].try_into().expect("STRONG bytes")).or_insert(i as u32);
        }
    }
    let mut misses_left = 4 * n as u64 + (1 << 16);
    let sig = |i: u32| &sigs[i as usize * (4 + STRONG) + 4..(i as usize + 1) * (4 + STRONG)];
    let block = block as usize;
    // runs of their blocks (first, count) and the bytes they hold, in the new file's order
    let mut runs: Vec<(u32, u32)> = Vec::new();
    let mut matched: Vec<u8> = context.to_vec();
    let mut take = |runs: &mut Vec<(u32, u32)>, c: u32, bytes: &[u8]| {
        matched.extend_from_slice(bytes);
        match runs.last_mut() {
            Some((at, count)) if *at + *count == c => *count += 1,
            _ => runs.push((c, 1)),
        }
    };
    let mut i = 0usize;
    let mut roll = (new.len() >= block).then(|| Rolling::of(&new[..block]));
    let mut continuing = false;
    while i < new.len() {
        let mut hit = None;
        if let Some(r) = roll.filter(|_| i + block <= new.len() && misses_left > 0) {
            if let Some(cands) = by_weak.get(&r.digest()) {
                let s = strong(&new[i..i + block]);
                // prefer the block that continues the current run
                let next = runs
                    .last()
                    .filter(|_| continuing)
                    .map(|(at, count)| at + count)
                    .filter(|c| (*c as usize) < n && sig(*c) == s);
                hit = next.or_else(|| cands.get(&s).copied());
                if hit.is_none() {
                    misses_left -= 1;
                }
            }
        }
        // the short last block, matched only at the very end of the new file
        if hit.is_none() && last_len < block && new.len() - i == last_len && n > 0 {
            let e = &sigs[(n - 1) * (4 + STRONG)..];
            let tail = &new[i..];
            if Rolling::of(tail).digest().to_be_bytes() == e[..4] && strong(tail) == e[4..] {
                take(&mut runs, (n - 1) as u32, tail);
                break;
            }
        }
        match hit {
            Some(c) => {
                take(&mut runs, c, &new[i..i + block]);
                continuing = true;
                i += block;
                roll = (i + block <= new.len()).then(|| Rolling::of(&new[i..i + block]));
            }
            None => {
                continuing = false;
                if let Some(r) = roll.as_mut() {
                    if i + block < new.len() {
                        r.roll(new[i], new[i + block]);
                    }
                }
                i += 1;
            }
        }
    }
    let mut out = Vec::with_capacity(4 + runs.len() * 8 + 1024);
    out.extend_from_slice(&(runs.len() as u32).to_be_bytes());
    for (at, count) in &runs {
        out.extend_from_slice(&at.to_be_bytes());
        out.extend_from_slice(&count.to_be_bytes());
    }
    let level = if new.len() <= 16 << 20 { 19 } else { 9 };
    out.extend(crate::encode_delta(&matched, new, level).map_err(|e| SyncError::Ops(e.to_string()))?);
    Ok(out)
}

/// Rebuilds a file from instructions, the `context` they were made with
/// and the file the signatures were made of (`theirs`, in blocks of
/// `block`); at most `max` bytes.
pub fn apply_ops(ops: &[u8], theirs: &[u8], block: u32, max: u64, context: &[u8]) -> Result<Vec<u8>, SyncError> {
    let bad = |s: String| SyncError::Ops(s);
    let word = |at: usize| -> Result<u32, SyncError> {
        ops.get(at..at + 4)
            .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
            .ok_or_else(|| bad("truncated".into()))
    };
    let runs = word(0)? as usize;
    let body = runs.checked_mul(8).and_then(|n| n.checked_add(4)).filter(|n| *n <= ops.len());
    let Some(body) = body else { return Err(bad(format!("{runs} runs do not fit the instructions"))) };
    // the runs' bytes are parts of the new file: never more than it
    let mut matched = context.to_vec();
    for r in 0..runs {
        let (from, count) = (word(4 + 8 * r)? as usize, word(8 + 8 * r)? as usize);
        let start = from.checked_mul(block as usize).filter(|s| *s < theirs.len());
        let end = from.checked_add(count).and_then(|e| e.checked_mul(block as usize)).map(|e| e.min(theirs.len()));
        match (start, end) {
            (Some(s), Some(e)) if s < e && (matched.len() - context.len() + e - s) as u64 <= max => {
                matched.extend_from_slice(&theirs[s..e])
            }
            _ => return Err(bad(format!("copy of blocks {from}+{count} beyond the file or the limit"))),
        }
    }
    crate::decode_bounded(&matched, &ops[body..], max).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn text(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b"abcdefgh ijk\n"[(x % 13) as usize]
            })
            .collect()
    }

    fn sync(theirs: &[u8], new: &[u8]) -> (Vec<u8>, usize) {
        let block = block_size(theirs.len() as u64);
        let sigs = signatures(theirs, block);
        let ops = make_ops(new, &sigs, block, theirs.len() as u64, b"context").unwrap();
        (apply_ops(&ops, theirs, block, new.len() as u64, b"context").unwrap(), ops.len() + sigs.len())
    }

    #[test]
    fn a_local_edit_costs_about_the_edit() {
        let published = text(1, 300_000);
        let mut edited = published.clone();
        edited.splice(150_000..150_000, b"# edited on this machine\n".iter().copied());
        // the machine holds `edited`; it needs `published` back
        let (got, cost) = sync(&edited, &published);
        assert_eq!(got, published);
        assert!(cost < 12_000, "signatures and instructions cost {cost} bytes for a 300 KB file");
    }

    #[test]
    fn bytes_between_runs_are_compressed_with_the_file_as_context() {
        // like source code: lines that recur across the file; a change
        // every 16 KB costs a block of new bytes, made of lines found elsewhere
        let lines: Vec<Vec<u8>> = (0..300).map(|i| text(i + 10, 40)).collect();
        let theirs: Vec<u8> = (0..10_000u64).flat_map(|i| lines[(i * 7919 % 300) as usize].clone()).collect();
        let mut new = theirs.clone();
        for at in (8_000..400_000).step_by(16_000) {
            new[at] ^= 1;
        }
        let (got, cost) = sync(&theirs, &new);
        assert_eq!(got, new);
        let sigs = signatures(&theirs, block_size(theirs.len() as u64)).len();
        assert!(cost - sigs < 2_000, "instructions cost {} bytes for 25 one-byte changes", cost - sigs);
    }

    #[test]
    fn bad_instructions_are_errors() {
        let theirs = text(2, 10_000);
        let block = block_size(10_000);
        let frame = crate::encode_delta(&[], b"abc", 3).unwrap();
        let with = |head: &[u8]| [head, &frame[..]].concat();
        assert!(apply_ops(b"not zstd", &theirs, block, 100, &[]).is_err());
        assert!(apply_ops(&with(&[0, 0, 0, 0]), &theirs, block, 100, &[]).is_ok());
        assert!(
            apply_ops(&with(&[0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 1]), &theirs, block, 1 << 20, &[]).is_err(),
            "beyond"
        );
        assert!(apply_ops(&with(&[0, 0, 0, 9]), &theirs, block, 1 << 20, &[]).is_err(), "truncated runs");
        assert!(
            apply_ops(&with(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9]), &theirs, block, 100, &[]).is_err(),
            "over the limit"
        );
        assert!(apply_ops(&with(&[0, 0, 0, 0]), &theirs, block, 2, &[]).is_err(), "rebuilds over the limit");
        assert!(make_ops(b"x", &[1, 2, 3], block, 10, &[]).is_err());
        assert!(make_ops(b"x", &signatures(&theirs, block), block, 99_999, &[]).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Any file rebuilds exactly from any other, with any edits.
        #[test]
        fn files_rebuild_exactly(
            seed in 0u64..1000,
            len in 0usize..40_000,
            edits in proptest::collection::vec((any::<usize>(), 0usize..300, proptest::collection::vec(any::<u8>(), 0..300)), 0..6),
        ) {
            let theirs = text(seed, len);
            let mut new = theirs.clone();
            for (at, cut, bytes) in edits {
                let at = at % (new.len() + 1);
                let end = (at + cut).min(new.len());
                new.splice(at..end, bytes);
            }
            prop_assert_eq!(sync(&theirs, &new).0, new.clone());
            prop_assert_eq!(sync(&new, &theirs).0, theirs);
        }
    }
}
