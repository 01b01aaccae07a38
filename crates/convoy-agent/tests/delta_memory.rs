//! The memory bounds of release deltas on a 200 MB release, read from this
//! process's peak RSS (`VmHWM` in `/proc/self/status`, reset between steps
//! through `/proc/self/clear_refs`): making a delta the way the server does
//! (from a chunk store) stays under 256 MiB, and the agent applies it in at
//! most 64 MiB plus twice the largest changed file.
//!
//! One test in its own binary, so no other test shares the process.

use std::collections::HashMap;
use std::path::Path;

use convoy_pack::{make_release_delta, pack_tree, ChunkRef, ChunkStore, Entry, Manifest, RelPath, VerifiedChunk};

const MIB: u64 = 1 << 20;

fn status(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// Resets the peak RSS to the current RSS and returns that.
fn reset_peak() -> u64 {
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting the peak RSS (Linux 4.0 or later)");
    let (hwm, rss) = (status("VmHWM:"), status("VmRSS:"));
    assert!(hwm <= rss + MIB, "the peak ({hwm}) was not reset to the current RSS ({rss})");
    rss
}

/// `len` pseudo-random bytes (incompressible, like built binaries).
fn noise(seed: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    blake3::Hasher::new().update(seed.as_bytes()).finalize_xof().fill(&mut out);
    out
}

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn pack(dir: &Path, store: &ChunkStore) -> Manifest {
    pack_tree(dir, |c| {
        store.put(c, None).map_err(|e| convoy_pack::PackError::Chunk(e.to_string()))?;
        Ok(())
    })
    .unwrap()
}

fn largest_changed(old: &Manifest, new: &Manifest) -> u64 {
    let before: HashMap<&str, &Vec<ChunkRef>> = old
        .entries
        .iter()
        .filter_map(|e| if let Entry::File { path, chunks, .. } = e { Some((path.as_str(), chunks)) } else { None })
        .collect();
    new.entries
        .iter()
        .filter_map(|e| match e {
            Entry::File { path, size, chunks, .. } if before.get(path.as_str()) != Some(&chunks) => Some(*size),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// Makes the delta from `old` to `new` as the server does, then applies it
/// as the agent does to the installed tree `installed`; returns the peak
/// RSS above the start of each step.
fn measure(tmp: &Path, store: &ChunkStore, old: &Manifest, new: &Manifest, installed: &Path) -> (u64, u64) {
    let read = |_: &RelPath, _: u64, c: &ChunkRef| -> std::io::Result<VerifiedChunk> {
        store.get(&c.id)?.ok_or_else(|| std::io::Error::other("missing chunk"))
    };
    let cost = |c: &ChunkRef| store.compressed_len(&c.id).unwrap_or(c.len as u64);
    let path = tmp.join("delta");
    let base = reset_peak();
    let out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).unwrap());
    let stats = make_release_delta(old, new, &mut { read }, &mut { read }, 19, &cost, out).unwrap();
    let making = status("VmHWM:").saturating_sub(base);
    eprintln!("delta {stats:?}");

    let cache = ChunkStore::open(tmp.join("agent-cache")).unwrap();
    let body = std::fs::File::open(&path).unwrap();
    let base = reset_peak();
    let applied = convoy_agent::seed::apply_downloaded(
        installed.to_owned(),
        old,
        &body,
        stats.bytes,
        new.total_size(),
        &new.digest(),
        &cache,
    )
    .unwrap();
    let applying = status("VmHWM:").saturating_sub(base);
    assert!(applied.manifest.is_some(), "the delta applied whole: {:?}", applied.skipped);
    assert_eq!(applied.manifest.unwrap().1.digest(), new.digest());
    std::fs::remove_dir_all(tmp.join("agent-cache")).unwrap();
    (making, applying)
}

#[test]
fn deltas_of_a_200_mb_release_are_made_and_applied_in_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(tmp.path().join("store")).unwrap();
    let (v1, v2) = (tmp.path().join("v1"), tmp.path().join("v2"));

    // 1: fifty 4 MB files; 2: 1 MB of one of them changed, one renamed, one new
    for i in 0..50 {
        let data = noise(&format!("file {i}"), 4 << 20);
        write(&v1, &format!("lib/part-{i}.bin"), &data);
        let mut data2 = data;
        if i == 7 {
            data2[1 << 20..2 << 20].copy_from_slice(&noise("change", 1 << 20));
        }
        let name = if i == 9 { "lib/renamed-9.bin".to_owned() } else { format!("lib/part-{i}.bin") };
        write(&v2, &name, &data2);
    }
    write(&v2, "lib/new.bin", &noise("new", 2 << 20));
    let (old, new) = (pack(&v1, &store), pack(&v2, &store));
    assert!(new.total_size() >= 200_000_000);
    let bound = 64 * MIB + 2 * largest_changed(&old, &new);
    let (making, applying) = measure(tmp.path(), &store, &old, &new, &v1);
    eprintln!("many files: making {} MiB, applying {} MiB (bound {} MiB)", making / MIB, applying / MIB, bound / MIB);
    assert!(making <= 256 * MIB, "making the delta took {} MiB", making / MIB);
    assert!(applying <= bound, "applying took {} MiB, over {} MiB", applying / MIB, bound / MIB);

    // one 200 MB file with 1 MB changed in the middle: patched in segments
    let (v3, v4) = (tmp.path().join("v3"), tmp.path().join("v4"));
    let big = noise("big", 200 << 20);
    write(&v3, "image.bin", &big);
    let mut big2 = big;
    big2[100 << 20..101 << 20].copy_from_slice(&noise("edit", 1 << 20));
    write(&v4, "image.bin", &big2);
    drop(big2);
    let (old, new) = (pack(&v3, &store), pack(&v4, &store));
    let (making, applying) = measure(tmp.path(), &store, &old, &new, &v3);
    eprintln!("one big file: making {} MiB, applying {} MiB", making / MIB, applying / MIB);
    assert!(making <= 256 * MIB, "making the delta took {} MiB", making / MIB);
    // the segment bound, far below twice the file
    assert!(applying <= 64 * MIB + 2 * convoy_pack::SEGMENT, "applying took {} MiB", applying / MIB);
}
