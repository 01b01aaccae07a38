//! Fewer bytes over the wire: the manifest as a patch against one the agent
//! holds, chunks seeded from the files of releases already on disk, and the
//! release delta from the installed release (P-incremental, P-strategy).
//!
//! Everything here only adds *verified* chunks to the cache: bytes from disk
//! or decoded from a delta are hashed against the manifest's chunk ids
//! before they are kept, so a drifted tree or a bad delta costs bytes, never
//! correctness. Staging then fetches whatever is still missing as chunks.

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{bail, Context};
use convoy_client::Client;
use convoy_pack::{
    apply_ops, apply_release_delta, block_size, cut, decode_bounded, decode_delta, delta_memory, signatures, Applied,
    ChunkId, ChunkRef, ChunkSource, ChunkStore, Entry, Manifest, RelPath, VerifiedChunk, DELTA_FORMAT, SYNC_MAX_FILE,
};
use convoy_wire::{SyncFile, SyncHave, SyncRequest, Work};

use crate::stage::release_dir;
use crate::AgentConfig;

/// Largest manifest the agent accepts.
const MANIFEST_MAX: u64 = 64 << 20;

/// The manifest of a release staged earlier, as the agent stored it.
fn local_manifest(root: &Path, app: &str, version: &str) -> Option<(Vec<u8>, Manifest)> {
    let bytes = std::fs::read(crate::prune::manifest_path(root, app, version)).ok()?;
    let m = Manifest::from_slice(&bytes).ok()?;
    Some((bytes, m))
}

/// Fetches the release's manifest, as a zstd patch against the manifest of
/// the release the target runs when it has one. Returns the manifest bytes
/// (checked against the digest by the caller) and the bytes moved.
pub async fn fetch_manifest(cfg: &AgentConfig, client: &Client, w: &Work) -> anyhow::Result<(Vec<u8>, u64)> {
    let base = w.previous_version.as_deref().filter(|v| *v != w.version);
    let local = base.and_then(|b| local_manifest(&cfg.root, &w.app, b).map(|(bytes, _)| (b, bytes)));
    let path = match &local {
        Some((b, _)) => format!("/releases/{}/{}/manifest.zst?base={b}", w.app, w.version),
        None => format!("/releases/{}/{}/manifest.zst", w.app, w.version),
    };
    let resp =
        Client::check(client.request(reqwest::Method::GET, &path).send().await.context("fetching manifest")?).await?;
    let named = resp.headers().get("x-convoy-manifest-base").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = resp.bytes().await.context("reading manifest")?;
    let reference: &[u8] = match (&named, &local) {
        (None, _) => &[],
        (Some(d), Some((_, bytes))) if *d == blake3::hash(bytes).to_hex().as_str() => bytes,
        (Some(d), _) => bail!("the server patched the manifest against {d}, which this agent does not hold"),
    };
    let bytes = decode_bounded(reference, &body, MANIFEST_MAX).context("decoding the manifest")?;
    Ok((bytes, body.len() as u64))
}

/// Copies into the cache every wanted chunk found, verified, in the files
/// of releases of this app already on disk. Returns how many were found.
pub fn seed_from_installed(root: &Path, app: &str, wanted: &HashSet<ChunkId>, cache: &ChunkStore) -> usize {
    let mut left: HashSet<ChunkId> = wanted.iter().filter(|id| !cache.contains(id)).copied().collect();
    let mut found = 0;
    let Ok(dirs) = std::fs::read_dir(root.join("releases").join(app)) else { return 0 };
    for d in dirs.flatten() {
        let name = d.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || left.is_empty() {
            continue;
        }
        let Some((_, m)) = local_manifest(root, app, &name) else { continue };
        let dir = release_dir(root, app, &name);
        for e in &m.entries {
            let Entry::File { path, chunks, .. } = e else { continue };
            if !chunks.iter().any(|c| left.contains(&c.id)) {
                continue;
            }
            // never follow a link out of the release: open regular files only
            let full = dir.join(path.as_str());
            if !std::fs::symlink_metadata(&full).is_ok_and(|md| md.is_file()) {
                continue;
            }
            let Ok(mut f) = std::fs::File::open(&full) else { continue };
            let mut offset = 0u64;
            let mut buf = Vec::new();
            for c in chunks {
                if left.contains(&c.id) {
                    buf.resize(c.len as usize, 0);
                    let ok = f.seek(SeekFrom::Start(offset)).is_ok() && f.read_exact(&mut buf).is_ok();
                    if ok && ChunkId::of(&buf) == c.id {
                        let chunk = VerifiedChunk::from_data(std::mem::take(&mut buf));
                        if cache.put(&chunk, None).is_ok() {
                            left.remove(&c.id);
                            found += 1;
                        }
                    }
                }
                offset += c.len as u64;
            }
        }
    }
    found
}

/// Verified chunks of the installed release `dir`: read from its files at
/// their offsets (regular files only, never through a link) and hashed,
/// or taken from the cache; an error if neither holds it intact.
pub struct Installed<'a> {
    dir: std::path::PathBuf,
    cache: &'a ChunkStore,
    open: Option<(String, Option<std::fs::File>)>,
}

impl<'a> Installed<'a> {
    pub fn new(dir: std::path::PathBuf, cache: &'a ChunkStore) -> Self {
        Self { dir, cache, open: None }
    }
}

impl ChunkSource for Installed<'_> {
    fn chunk(&mut self, path: &RelPath, offset: u64, c: &ChunkRef) -> std::io::Result<VerifiedChunk> {
        if self.open.as_ref().is_none_or(|(p, _)| p != path.as_str()) {
            let full = self.dir.join(path.as_str());
            let file = std::fs::symlink_metadata(&full)
                .ok()
                .filter(|md| md.is_file())
                .and_then(|_| std::fs::File::open(&full).ok());
            self.open = Some((path.as_str().to_owned(), file));
        }
        if let Some((_, Some(f))) = &self.open {
            let mut buf = vec![0u8; c.len as usize];
            if std::os::unix::fs::FileExt::read_exact_at(f, &mut buf, offset).is_ok() && ChunkId::of(&buf) == c.id {
                return Ok(VerifiedChunk::from_data(buf));
            }
        }
        match self.cache.get(&c.id)? {
            Some(v) => Ok(v),
            None => Err(std::io::Error::other(format!("modified here (chunk {} at {offset} differs)", c.id))),
        }
    }
}

/// What a delta attempt came to.
pub struct DeltaOutcome {
    /// Bytes received (0 if no delta was sent).
    pub bytes: u64,
    /// The release's manifest bytes and manifest, rebuilt from the delta
    /// and checked against the root digest; `None` if no delta was used.
    pub manifest: Option<(Vec<u8>, Manifest)>,
    /// Chunks it put in the cache.
    pub chunks: usize,
    /// Why no delta was used, if none was.
    pub skipped: Option<String>,
    /// Why only part of it could be used (files of the installed release
    /// modified here): the rest comes as chunks.
    pub partial: Option<String>,
    /// Chunks a partial delta added to the cache: those the manifest
    /// checked against the root digest does not name are removed again.
    pub added: Vec<ChunkId>,
}

impl DeltaOutcome {
    fn skip(bytes: u64, why: impl Into<String>) -> Self {
        Self { bytes, manifest: None, chunks: 0, skipped: Some(why.into()), partial: None, added: Vec::new() }
    }
}

/// Applies a downloaded delta `body` (of `len` bytes) to the release
/// installed in `dir` (manifest `old`), caching the chunks it makes. The
/// rebuilt manifest must hash to `digest`; if it does not, the chunks this
/// attempt added are removed again. Memory: `convoy_pack::delta_memory`.
pub fn apply_downloaded(
    dir: std::path::PathBuf,
    old: &Manifest,
    body: &std::fs::File,
    len: u64,
    max_size: u64,
    digest: &str,
    cache: &ChunkStore,
) -> anyhow::Result<DeltaOutcome> {
    let mut added = Vec::new();
    let mut sink = |v: VerifiedChunk| -> std::io::Result<()> {
        if !cache.contains(&v.id()) {
            cache.put(&v, None)?;
            added.push(v.id());
        }
        Ok(())
    };
    let mut src = Installed::new(dir, cache);
    let applied = apply_release_delta(old, &mut src, body, len, max_size, &mut sink);
    let chunks = added.len();
    match applied {
        Ok(Applied::Complete(m)) => {
            let bytes = m.canonical_bytes();
            let got = blake3::hash(&bytes).to_hex().to_string();
            if got != digest {
                // content-addressed, but nothing will use them: not kept
                for id in &added {
                    let _ = cache.remove(id);
                }
                bail!("the release rebuilt from the delta hashes to {got}, expected {digest}");
            }
            Ok(DeltaOutcome {
                bytes: len,
                manifest: Some((bytes, m)),
                chunks,
                skipped: None,
                partial: None,
                added: Vec::new(),
            })
        }
        // the files whose reference was modified here come as chunks; the
        // chunks made of the others are kept (each hashed by its bytes, used
        // only where the manifest checked against the root digest names it)
        Ok(Applied::Partial(failed)) => Ok(DeltaOutcome {
            bytes: len,
            manifest: None,
            chunks,
            added,
            skipped: None,
            partial: Some(format!(
                "{} file(s) of the installed release were modified here ({}); they come as chunks",
                failed.len(),
                failed.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
            )),
        }),
        Err(e) => {
            for id in &added {
                let _ = cache.remove(id);
            }
            Err(e.into())
        }
    }
}

/// Largest delta body accepted for a release of `size` bytes.
fn body_limit(size: u64) -> u64 {
    size.saturating_add(size / 8).saturating_add(4 << 20)
}

/// One request: the delta from the release the target runs to the one it
/// stages, written to disk as it arrives, then applied file by file. The
/// manifest is rebuilt from it and must hash to the root digest. On any
/// shortfall the caller stages the rest by chunks.
pub async fn apply_delta(
    cfg: &AgentConfig,
    client: &Client,
    w: &Work,
    cache: &ChunkStore,
) -> anyhow::Result<DeltaOutcome> {
    let Some(prev) = w.previous_version.clone().filter(|v| *v != w.version) else {
        return Ok(DeltaOutcome::skip(0, "no release installed to patch"));
    };
    let Some((old_bytes, old)) = local_manifest(&cfg.root, &w.app, &prev) else {
        return Ok(DeltaOutcome::skip(0, format!("no manifest kept for {prev}")));
    };
    if delta_memory(old.total_size(), 0) > cfg.max_memory {
        return Ok(DeltaOutcome::skip(0, format!("{prev} alone exceeds the memory limit {}", cfg.max_memory)));
    }
    let path = format!("/releases/{}/{}/delta?from={prev}", w.app, w.version);
    let old_digest = blake3::hash(&old_bytes).to_hex().to_string();
    let dir = release_dir(&cfg.root, &w.app, &prev);
    fetch_and_apply(cfg, client, w, cache, &path, old, Some(old_digest), dir).await
}

/// A first install: the release's files in one zstd stream (a delta from
/// no release), cut into chunks here and checked against the root digest,
/// instead of one compressed chunk at a time.
pub async fn apply_stream(
    cfg: &AgentConfig,
    client: &Client,
    w: &Work,
    cache: &ChunkStore,
) -> anyhow::Result<DeltaOutcome> {
    // a stream cut short is not resumed: an agent stopped in the middle of
    // one (this marker left behind) goes on by chunks, keeping what it cached
    let marker = crate::state_dir(&cfg.root).join("tmp").join(format!("stream-{}", w.instruction_id));
    if marker.exists() {
        return Ok(DeltaOutcome::skip(0, "an earlier stream of this release was cut short; resuming by chunks"));
    }
    std::fs::create_dir_all(marker.parent().expect("a parent"))?;
    std::fs::write(&marker, b"")?;
    let path = format!("/releases/{}/{}/stream", w.app, w.version);
    let none = Manifest::new(Vec::new());
    let got = fetch_and_apply(cfg, client, w, cache, &path, none, None, cfg.root.join(".convoy/none")).await;
    let _ = std::fs::remove_file(&marker);
    got
}

/// GETs `path`, a delta from `old` (whose digest the server must name, if
/// given), to disk, then applies it against the files in `dir`.
#[allow(clippy::too_many_arguments)]
async fn fetch_and_apply(
    cfg: &AgentConfig,
    client: &Client,
    w: &Work,
    cache: &ChunkStore,
    path: &str,
    old: Manifest,
    old_digest: Option<String>,
    dir: std::path::PathBuf,
) -> anyhow::Result<DeltaOutcome> {
    let mut resp =
        Client::check(client.request(reqwest::Method::GET, path).send().await.context("fetching delta")?).await?;
    let header = |n: &str| resp.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    // 204: chunks are cheaper; 202: not made yet (never waited for)
    if resp.status() == reqwest::StatusCode::NO_CONTENT || resp.status() == reqwest::StatusCode::ACCEPTED {
        return Ok(DeltaOutcome::skip(0, header("x-convoy-delta-skip").unwrap_or_else(|| "no delta offered".into())));
    }
    let (format, from) = (header("x-convoy-delta-format"), header("x-convoy-delta-from"));
    if format.as_deref() != Some(DELTA_FORMAT) || from != old_digest {
        return Ok(DeltaOutcome::skip(0, format!("delta format {format:?} from {from:?} does not fit")));
    }
    let size: u64 = header("x-convoy-release-size").and_then(|s| s.parse().ok()).unwrap_or(u64::MAX);
    let mem = delta_memory(old.total_size(), size);
    if mem > cfg.max_memory {
        return Ok(DeltaOutcome::skip(
            0,
            format!("a delta needs {mem} bytes of memory, over the limit {}", cfg.max_memory),
        ));
    }
    // to disk as it arrives: a delta is never held in memory
    let tmp_dir = crate::state_dir(&cfg.root).join("tmp");
    std::fs::create_dir_all(&tmp_dir)?;
    let tmp = tmp_dir.join(format!("delta-{}", w.instruction_id));
    // the size comes from the source (a relay may lie): never past the disk's free space beyond the reserve
    let free = rustix::fs::statvfs(&cfg.root).map(|s| s.f_bavail * s.f_frsize).unwrap_or(u64::MAX);
    let limit = body_limit(size).min(free.saturating_sub(cfg.reserve_disk));
    let mut file = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&tmp)?;
    let _ = std::fs::remove_file(&tmp); // the open handle is all that is needed
    let mut bytes = 0u64;
    while let Some(piece) = resp.chunk().await.context("reading delta")? {
        bytes += piece.len() as u64;
        if bytes > limit {
            return Ok(DeltaOutcome::skip(bytes, format!("the delta exceeds {limit} bytes for a {size}-byte release")));
        }
        std::io::Write::write_all(&mut file, &piece)?;
    }
    // what it may decode to: the claimed size, never past the disk's free space
    let size = size.min(free.saturating_sub(cfg.reserve_disk));
    let (cache, digest) = (cache.clone(), w.digest.clone());
    let applied =
        tokio::task::spawn_blocking(move || apply_downloaded(dir, &old, &file, bytes, size, &digest, &cache)).await?;
    match applied {
        Ok(o) => Ok(o),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "release delta did not apply; staging by chunks");
            Ok(DeltaOutcome::skip(bytes, format!("delta did not apply: {e:#}")))
        }
    }
}

/// Most bytes of files one sync request asks for (its answer is held in
/// memory on both sides).
const SYNC_BATCH: u64 = 128 << 20;

/// A file of the release this machine lacks, and what it holds at its path.
struct Drifted {
    path: String,
    size: u64,
    want: Vec<ChunkRef>,
    local: std::path::PathBuf,
    block: u32,
}

/// The references a sync answer names (files of the new release this
/// machine holds, see `convoy_wire::SyncRequest`): their bytes end to end,
/// and the rest of the payload.
fn references<'a>(payload: &'a [u8], held: &dyn Fn(&str) -> Option<Vec<u8>>) -> Option<(Vec<u8>, &'a [u8])> {
    let count = *payload.first()? as usize;
    let mut at = 1;
    let mut prefix = Vec::new();
    for _ in 0..count {
        let n = u16::from_be_bytes(payload.get(at..at + 2)?.try_into().ok()?) as usize;
        let path = std::str::from_utf8(payload.get(at + 2..at + 2 + n)?).ok()?;
        at += 2 + n;
        prefix.extend(held(path)?);
        if prefix.len() > 16 << 20 {
            return None;
        }
    }
    Some((prefix, payload.get(at..)?))
}

/// A machine whose installed files differ from what was published (edited
/// here, or the delta could not be used): for each file of the release it
/// still lacks chunks of and holds a file at the same path, it says in one
/// request what it holds (the published file it is, verified by its
/// chunks, or block signatures of bytes the server cannot know) and gets a
/// zstd patch or copy/literal instructions back. What that rebuilds is
/// cached only where it cuts into exactly the manifest's chunks. Returns
/// the bytes sent and received, and the chunks cached.
pub async fn sync_drifted(
    cfg: &AgentConfig,
    client: &Client,
    w: &Work,
    new: &Manifest,
    missing: &HashSet<ChunkId>,
    cache: &ChunkStore,
) -> anyhow::Result<(u64, usize)> {
    let Some(prev) = w.previous_version.clone().filter(|v| *v != w.version) else { return Ok((0, 0)) };
    let installed = local_manifest(&cfg.root, &w.app, &prev).map(|(_, m)| m);
    let dir = release_dir(&cfg.root, &w.app, &prev);
    let wanted: Vec<(String, u64, Vec<ChunkRef>)> = new
        .entries
        .iter()
        .filter_map(|e| match e {
            Entry::File { path, size, chunks, .. }
                if *size <= SYNC_MAX_FILE && chunks.iter().any(|c| missing.contains(&c.id)) =>
            {
                Some((path.to_string(), *size, chunks.clone()))
            }
            _ => None,
        })
        .collect();
    if wanted.is_empty() {
        return Ok((0, 0));
    }
    let prev2 = prev.clone();
    // behind a relay, files held nowhere here come as chunks: the relay
    // fetches those once for the whole site
    let relayed = !w.sources.is_empty();
    let (files, request) = tokio::task::spawn_blocking(move || {
        let mut files = Vec::new();
        let mut request = Vec::new();
        let mut total = 0u64;
        for (path, size, want) in wanted {
            // one answer is held in memory: at most SYNC_BATCH bytes of files
            if total + size > SYNC_BATCH {
                continue;
            }
            let local = dir.join(&path);
            let bytes = match std::fs::symlink_metadata(&local) {
                Ok(md) if md.is_file() && md.len() <= SYNC_MAX_FILE => std::fs::read(&local).unwrap_or_default(),
                _ => Vec::new(),
            };
            if bytes.is_empty() {
                if relayed {
                    continue;
                }
                // nothing usable here (deleted, or not a file): the file itself, compressed
                total += size;
                request.push(SyncFile { path: path.clone(), have: SyncHave::Nothing });
                files.push(Drifted { path, size, want, local, block: 0 });
                continue;
            }
            let refs: Vec<ChunkRef> =
                cut(&bytes).map(|(at, n)| ChunkRef { id: ChunkId::of(&bytes[at..at + n]), len: n as u32 }).collect();
            let published = installed.as_ref().is_some_and(|m| {
                m.entries
                    .iter()
                    .any(|e| matches!(e, Entry::File { path: p, chunks, .. } if p.as_str() == path && *chunks == refs))
            });
            let block = block_size(bytes.len() as u64);
            let have = if published {
                SyncHave::Known { version: prev2.clone(), path: path.clone() }
            } else {
                SyncHave::Signatures { size: bytes.len() as u64, block, sums: hex::encode(signatures(&bytes, block)) }
            };
            total += size;
            request.push(SyncFile { path: path.clone(), have });
            files.push(Drifted { path, size, want, local, block });
        }
        (files, request)
    })
    .await?;
    if files.is_empty() {
        return Ok((0, 0));
    }
    let json = serde_json::to_vec(&SyncRequest { files: request })?;
    let body = convoy_pack::encode_delta(&[], &json, 3)?;
    let sent = body.len() as u64;
    let path = format!("/releases/{}/{}/sync", w.app, w.version);
    let mut resp =
        Client::check(client.request(reqwest::Method::POST, &path).body(body).send().await.context("sync")?).await?;
    let limit: u64 = files.iter().map(|f| f.size + f.size / 8 + 64).sum::<u64>() + (1 << 20);
    let mut answer = Vec::new();
    while let Some(piece) = resp.chunk().await.context("reading the sync answer")? {
        answer.extend_from_slice(&piece);
        if answer.len() as u64 > limit {
            bail!("the sync answer has more than {limit} bytes");
        }
    }
    let received = answer.len() as u64;
    let cache = cache.clone();
    let files_of: std::collections::HashMap<String, Vec<ChunkRef>> = new
        .entries
        .iter()
        .filter_map(|e| match e {
            Entry::File { path, chunks, .. } => Some((path.to_string(), chunks.clone())),
            _ => None,
        })
        .collect();
    let cached = tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
        // a file of the new release, from the cache (each chunk hashed)
        let held = |path: &str| -> Option<Vec<u8>> {
            let refs = files_of.get(path)?;
            // a reference is never more than the answer may use
            if refs.iter().map(|c| c.len as u64).sum::<u64>() > 16 << 20 {
                return None;
            }
            let mut out = Vec::new();
            for c in refs {
                out.extend_from_slice(cache.get(&c.id).ok()??.data());
            }
            Some(out)
        };
        let mut at = 0usize;
        let mut n = 0;
        for f in files {
            let kind = *answer.get(at).context("the sync answer ends early")?;
            let len = answer.get(at + 1..at + 9).context("the sync answer ends early")?;
            let len = usize::try_from(u64::from_be_bytes(len.try_into().expect("8 bytes")))?;
            let end = (at + 9).checked_add(len).context("the sync answer is malformed")?;
            let payload = answer.get(at + 9..end).context("the sync answer ends early")?;
            at += 9 + len;
            let rebuilt = match kind {
                1 => decode_delta(&std::fs::read(&f.local).unwrap_or_default(), payload, f.size).ok(),
                2 => references(payload, &held).and_then(|(prefix, rest)| {
                    apply_ops(rest, &std::fs::read(&f.local).unwrap_or_default(), f.block, f.size, &prefix).ok()
                }),
                3 => references(payload, &held).and_then(|(prefix, rest)| decode_delta(&prefix, rest, f.size).ok()),
                _ => None,
            };
            let Some(data) = rebuilt else { continue };
            let pieces: Vec<(usize, usize)> = cut(&data).collect();
            let same = pieces.len() == f.want.len()
                && pieces
                    .iter()
                    .zip(&f.want)
                    .all(|((o, l), c)| *l == c.len as usize && ChunkId::of(&data[*o..o + l]) == c.id);
            if !same {
                tracing::warn!(path = %f.path, "a synced file did not rebuild the published one; fetching its chunks");
                continue;
            }
            for (o, l) in pieces {
                let v = VerifiedChunk::from_data(data[o..o + l].to_vec());
                if !cache.contains(&v.id()) {
                    cache.put(&v, None)?;
                    n += 1;
                }
            }
        }
        Ok(n)
    })
    .await??;
    Ok((sent + received, cached))
}
