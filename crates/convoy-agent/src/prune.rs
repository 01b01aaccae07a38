//! Keeps the disk bounded: old releases beyond the newest `keep` are
//! removed (never the live one, never the rollback target), and with them
//! the cached chunks no kept release needs.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use convoy_pack::{ChunkId, ChunkStore, Manifest};

use crate::stage::remove_tree;

/// Where the manifest of each staged release is kept.
pub fn manifest_path(root: &Path, app: &str, version: &str) -> PathBuf {
    crate::state_dir(root).join("manifests").join(app).join(format!("{version}.json"))
}

fn chunks_of(root: &Path, app: &str, version: &str) -> HashSet<ChunkId> {
    std::fs::read(manifest_path(root, app, version))
        .ok()
        .and_then(|b| Manifest::from_slice(&b).ok())
        .map(|m| m.chunk_ids().into_iter().collect())
        .unwrap_or_default()
}

/// Removes releases of `app` beyond the newest `keep`, sparing `protect`.
/// Returns the versions removed.
pub fn prune(root: &Path, app: &str, keep: usize, protect: &[&str]) -> std::io::Result<Vec<String>> {
    forget_old_reports(root);
    let dir = root.join("releases").join(app);
    let mut versions: Vec<(std::time::SystemTime, String)> = Vec::new();
    for e in std::fs::read_dir(&dir)? {
        let e = e?;
        let Ok(name) = e.file_name().into_string() else { continue };
        if name.starts_with('.') && (name.ends_with(".partial") || name.ends_with(".old")) {
            // left behind by an agent killed while assembling
            remove_tree(&e.path())?;
            continue;
        }
        if name.starts_with('.') || !e.file_type()?.is_dir() {
            continue;
        }
        versions.push((e.metadata()?.modified()?, name));
    }
    versions.sort_by(|a, b| b.cmp(a));
    let doomed: Vec<String> =
        versions.into_iter().skip(keep).map(|(_, v)| v).filter(|v| !protect.contains(&v.as_str())).collect();
    if doomed.is_empty() {
        return Ok(doomed);
    }
    let mut freed: HashSet<ChunkId> = HashSet::new();
    for v in &doomed {
        freed.extend(chunks_of(root, app, v));
        remove_tree(&dir.join(v))?;
        let _ = std::fs::remove_file(manifest_path(root, app, v));
    }
    // chunks still needed by any kept release of any app stay cached
    let manifests = crate::state_dir(root).join("manifests");
    for app_dir in std::fs::read_dir(&manifests).into_iter().flatten().flatten() {
        let Ok(a) = app_dir.file_name().into_string() else { continue };
        for m in std::fs::read_dir(app_dir.path()).into_iter().flatten().flatten() {
            if let Some(v) = m.file_name().to_str().and_then(|n| n.strip_suffix(".json")) {
                for id in chunks_of(root, &a, v) {
                    freed.remove(&id);
                }
            }
        }
    }
    let cache = ChunkStore::open(crate::state_dir(root).join("cache"))?;
    for id in freed {
        cache.remove(&id)?;
    }
    Ok(doomed)
}

/// Journaled reports are only needed until the server has them; keep a
/// month of them for inspection.
fn forget_old_reports(root: &Path) {
    const MONTH: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);
    for e in std::fs::read_dir(crate::state_dir(root).join("reports")).into_iter().flatten().flatten() {
        if e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|age| age > MONTH)) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_newest_and_protected_releases_and_their_chunks() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let cache = ChunkStore::open(crate::state_dir(r).join("cache")).unwrap();
        let shared = convoy_pack::VerifiedChunk::from_data(b"shared".to_vec());
        for (i, v) in ["1", "2", "3", "4"].iter().enumerate() {
            let src = r.join(format!("src{v}"));
            std::fs::create_dir_all(&src).unwrap();
            std::fs::write(src.join("own"), format!("content of {v}")).unwrap();
            std::fs::write(src.join("shared"), b"shared").unwrap();
            let m = convoy_pack::pack_tree(&src, |c| {
                cache.put(c, None).map_err(|e| convoy_pack::PackError::Chunk(e.to_string()))
            })
            .unwrap();
            std::fs::create_dir_all(r.join("releases/app").join(v)).unwrap();
            let mp = manifest_path(r, "app", v);
            std::fs::create_dir_all(mp.parent().unwrap()).unwrap();
            std::fs::write(mp, m.canonical_bytes()).unwrap();
            // distinct, increasing modification times
            let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000 + i as u64 * 10);
            std::fs::File::open(r.join("releases/app").join(v)).unwrap().set_modified(t).unwrap();
        }
        let own1 = convoy_pack::ChunkId::of(b"content of 1");
        let own2 = convoy_pack::ChunkId::of(b"content of 2");
        std::fs::create_dir_all(r.join("releases/app/.5.partial/x")).unwrap();
        // keep the newest two (4, 3) and protect 1
        let removed = prune(r, "app", 2, &["1"]).unwrap();
        assert_eq!(removed, vec!["2".to_owned()]);
        assert!(r.join("releases/app/1").is_dir() && !r.join("releases/app/2").exists());
        assert!(!r.join("releases/app/.5.partial").exists(), "leftovers of a killed assembly are gone");
        assert!(!cache.contains(&own2), "chunks only release 2 used are gone");
        assert!(cache.contains(&own1) && cache.contains(&shared.id()), "chunks kept releases use stay");
    }
}
