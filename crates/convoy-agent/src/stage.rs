//! Staging: fetch what the chunk cache lacks, verify every chunk, assemble
//! the release beside the live one, and hash what ended up on disk.
//!
//! Resumable: verified chunks land in `ROOT/.convoy/cache` one by one (atomic
//! writes), so a killed agent fetches only what it did not have yet. The tree
//! is assembled in `releases/APP/.VERSION.partial` and renamed into place.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use convoy_pack::{
    scan_tree, unpack, ChunkId, ChunkStore, Entry, FrameDecoder, Manifest, PackError, VerifiedChunk, CHUNK_MAX,
};
use convoy_wire::{ChunkIds, Progress, ProgressReport, ReportKind, Work};

use crate::AgentConfig;
use convoy_client::Client;

/// Retries of one batch through network trouble before the attempt fails.
const FETCH_RETRIES: u32 = 5;

/// A download cut short: worth retrying, unlike a chunk that fails its hash.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Interrupted(String);

/// Network failures and server-side (5xx) errors pass; refusals and bad
/// bytes do not.
fn transient(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<reqwest::Error>().is_some()
            || c.downcast_ref::<Interrupted>().is_some()
            || c.downcast_ref::<convoy_client::ServerError>().is_some_and(|s| s.status >= 500)
    })
}

/// Chunks asked for in one request, and about how many bytes.
const BATCH_CHUNKS: usize = 128;
const BATCH_BYTES: u64 = 8 << 20;

pub fn release_dir(root: &Path, app: &str, version: &str) -> PathBuf {
    root.join("releases").join(app).join(version)
}

/// Where a release is assembled before it is renamed into place.
pub fn partial_dir(root: &Path, app: &str, version: &str) -> PathBuf {
    root.join("releases").join(app).join(format!(".{version}.partial"))
}

/// Computes the root digest of a tree on disk, hashing before parsing
/// anything in it: damage anywhere (`convoy.toml` included) is a mismatch.
pub fn digest_of(dir: &Path) -> Result<String, PackError> {
    Ok(scan_tree(dir, |_| Ok(()))?.digest())
}

/// Stages `w`. `stop` set (the work was withdrawn) makes assembly give
/// up at the next chunk and remove its partial directory; the caller drops
/// this future, which ends any transfer at once.
pub async fn stage(
    cfg: &AgentConfig,
    client: &Client,
    grant: &convoy_client::GrantCell,
    w: &Work,
    stop: Arc<AtomicBool>,
) -> (ReportKind, BTreeMap<String, String>, String) {
    match stage_inner(cfg, client, grant, w, stop).await {
        Ok((digest, metrics)) => (ReportKind::Staged { digest }, metrics, String::new()),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "staging failed");
            (ReportKind::Failed { message: format!("{e:#}") }, BTreeMap::new(), String::new())
        }
    }
}

async fn stage_inner(
    cfg: &AgentConfig,
    client: &Client,
    grant: &convoy_client::GrantCell,
    w: &Work,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(String, BTreeMap<String, String>)> {
    let started = Instant::now();
    let dest = release_dir(&cfg.root, &w.app, &w.version);
    let mut metrics = BTreeMap::new();

    // A copy already on disk that hashes right is kept as it is (first try only:
    // a re-stage means the server saw this copy differ).
    if w.attempt == 0 && dest.is_dir() {
        let d = dest.clone();
        if let Ok(digest) = tokio::task::spawn_blocking(move || digest_of(&d)).await? {
            if digest == w.digest {
                metrics.insert("bytes_fetched".into(), "0".into());
                metrics.insert("stage_ms".into(), started.elapsed().as_millis().to_string());
                return Ok((digest, metrics));
            }
        }
    }

    let cache = ChunkStore::open(crate::state_dir(&cfg.root).join("cache"))?;
    // everything this attempt moved: a delta, the manifest, chunk frames
    let mut fetched_bytes = 0;
    let mut limiter = RateLimit::new(cfg.max_rate);
    // From a release it holds intact, the target asks for one delta that
    // carries the whole upgrade; anything short of that falls back to chunks.
    // Content comes from the site's relays first, then the server; a relay
    // that is down or sends bad bytes is passed over and reported.
    let mut sources = Sources::new(client, grant, &w.sources);
    let mut mode = "chunks";
    let mut from_delta = None;
    let mut partial_added = Vec::new();
    // A first install asks for the release as one compressed stream instead.
    let first = w.previous_version.is_none();
    if cfg.max_memory > 0 && w.previous_version.as_ref().is_none_or(|p| *p != w.version) {
        loop {
            let (src, last) = sources.current_api();
            let got = if first {
                crate::seed::apply_stream(cfg, src, w, &cache).await
            } else {
                crate::seed::apply_delta(cfg, src, w, &cache).await
            };
            match got {
                // bytes that did not apply: a relay's fault, or the end of it
                Ok(d) if d.bytes > 0 && d.skipped.is_some() && !last => {
                    fetched_bytes += d.bytes;
                    sources.failed_api(d.skipped.as_deref().unwrap_or_default());
                }
                Ok(d) => {
                    fetched_bytes += d.bytes;
                    limiter.consumed(d.bytes).await;
                    metrics.insert("delta_bytes".into(), d.bytes.to_string());
                    metrics.insert("chunks_from_delta".into(), d.chunks.to_string());
                    match (d.skipped, d.partial) {
                        (Some(why), _) => tracing::info!(reason = %why, "no release delta; staging by chunks"),
                        (None, Some(why)) => {
                            tracing::info!(reason = %why, "release delta used in part");
                            mode = "delta+chunks";
                        }
                        (None, None) => mode = if first { "stream" } else { "delta" },
                    }
                    from_delta = d.manifest;
                    partial_added = d.added;
                    break;
                }
                Err(e) if !last => sources.failed_api(&format!("{e:#}")),
                Err(e) if transient(&e) => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "release delta unavailable; staging by chunks");
                    break;
                }
            }
        }
    }
    let manifest = match from_delta {
        Some((_, m)) => m,
        None => loop {
            let (src, last) = sources.current_api();
            let (bytes, wire) = match crate::seed::fetch_manifest(cfg, src, w).await {
                Ok(got) => got,
                Err(e) if !last => {
                    sources.failed_api(&format!("{e:#}"));
                    continue;
                }
                Err(e) if transient(&e) => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "compressed manifest refused; fetching it plain");
                    let b = client.get_bytes(&format!("/releases/{}/{}/manifest", w.app, w.version)).await?;
                    let n = b.len() as u64;
                    (b, n)
                }
            };
            fetched_bytes += wire;
            limiter.consumed(wire).await;
            let got = blake3::hash(&bytes).to_hex().to_string();
            if got != w.digest {
                if !last {
                    sources.failed_api(&format!("manifest hashes to {got}, expected {}", w.digest));
                    continue;
                }
                bail!("manifest from the server hashes to {got}, expected {}; refusing it", w.digest);
            }
            break Manifest::from_slice(&bytes)?;
        },
    };

    // what a partial delta made that this release does not use is not kept
    if !partial_added.is_empty() {
        let named: HashSet<ChunkId> = manifest.chunk_ids().into_iter().collect();
        for id in partial_added.iter().filter(|id| !named.contains(id)) {
            let _ = cache.remove(id);
        }
    }
    let sizes: BTreeMap<ChunkId, u32> = manifest
        .entries
        .iter()
        .filter_map(|e| if let Entry::File { chunks, .. } = e { Some(chunks) } else { None })
        .flatten()
        .map(|c| (c.id, c.len))
        .collect();
    let c2 = cache.clone();
    let ids = manifest.chunk_ids();
    let (root, app) = (cfg.root.clone(), w.app.clone());
    let (missing, cached, seeded): (Vec<ChunkId>, usize, usize) = tokio::task::spawn_blocking(move || {
        let wanted: HashSet<ChunkId> = ids.iter().filter(|id| !c2.contains(id)).copied().collect();
        let cached = ids.len() - wanted.len();
        // chunks the files of installed releases still hold, verified
        let seeded = if wanted.is_empty() { 0 } else { crate::seed::seed_from_installed(&root, &app, &wanted, &c2) };
        (ids.into_iter().filter(|id| !c2.contains(id)).collect(), cached, seeded)
    })
    .await?;
    // A drifted install: what its own files hold, synced file by file.
    let missing = if !missing.is_empty() && cfg.max_memory > 0 && w.previous_version.is_some() {
        let want: HashSet<ChunkId> = missing.iter().copied().collect();
        match crate::seed::sync_drifted(cfg, client, w, &manifest, &want, &cache).await {
            Ok((moved, n)) => {
                fetched_bytes += moved;
                limiter.consumed(moved).await;
                if moved > 0 {
                    metrics.insert("sync_bytes".into(), moved.to_string());
                    metrics.insert("chunks_synced".into(), n.to_string());
                    if n > 0 {
                        mode = match mode {
                            "chunks" => "sync+chunks",
                            "delta+chunks" => "delta+sync+chunks",
                            m => m,
                        };
                    }
                }
                missing.into_iter().filter(|id| !cache.contains(id)).collect()
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "syncing drifted files failed; fetching chunks");
                missing
            }
        }
    } else {
        missing
    };
    metrics.insert("chunks_total".into(), sizes.len().to_string());
    metrics.insert("chunks_cached".into(), cached.to_string());
    metrics.insert("chunks_seeded".into(), seeded.to_string());
    let transfer = if mode != "chunks" || !missing.is_empty() { mode } else { "local" };
    metrics.insert("transfer".into(), transfer.into());

    // Room for the assembled tree plus the chunks still to fetch (at most
    // their raw size), with 5% to spare; refuse early rather than fill the disk.
    let to_fetch: u64 = missing.iter().map(|id| sizes.get(id).copied().unwrap_or(0) as u64).sum();
    let need = (manifest.total_size() + to_fetch) / 20 * 21;
    let free = rustix::fs::statvfs(&cfg.root).map(|s| s.f_bavail * s.f_frsize).unwrap_or(u64::MAX);
    if free < need {
        bail!("not enough disk: {} free under {}, staging needs about {need} bytes", free, cfg.root.display());
    }

    let done = Arc::new(AtomicU64::new(0));
    let reporter = tokio::spawn(report_progress(client.clone(), w.instruction_id.clone(), done.clone(), to_fetch));
    let mut batch: Vec<ChunkId> = Vec::new();
    let mut batch_bytes = 0u64;
    let mut result = Ok(());
    for (n, id) in missing.iter().enumerate() {
        batch.push(*id);
        batch_bytes += sizes.get(id).copied().unwrap_or(CHUNK_MAX) as u64;
        if batch.len() >= BATCH_CHUNKS || batch_bytes >= BATCH_BYTES || n + 1 == missing.len() {
            let mut tries = 0;
            let outcome = loop {
                // what an interrupted try already cached is not asked for again
                let todo: Vec<ChunkId> = batch.iter().filter(|id| !cache.contains(id)).copied().collect();
                let (src, last) = sources.current();
                let fetched = match src {
                    Source::Api(c) => fetch_batch(c, &cache, &todo, &mut limiter, &done).await,
                    Source::Store { http, base } => fetch_store(http, base, &cache, &todo, &mut limiter, &done).await,
                };
                match fetched {
                    Ok(n) => break Ok(n),
                    Err(e) if !last => sources.failed(&format!("{e:#}")),
                    Err(e) if tries < FETCH_RETRIES && transient(&e) => {
                        tries += 1;
                        tracing::warn!(error = %format!("{e:#}"), tries, "fetching chunks failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1 << tries.min(4))).await;
                    }
                    Err(e) => break Err(e),
                }
            };
            match outcome {
                Ok(n) => fetched_bytes += n,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            batch.clear();
            batch_bytes = 0;
        }
    }
    reporter.abort();
    sources.record(&mut metrics);
    result?;
    metrics.insert("chunks_fetched".into(), missing.len().to_string());
    metrics.insert("bytes_fetched".into(), fetched_bytes.to_string());

    let root = cfg.root.clone();
    let (app, version) = (w.app.clone(), w.version.clone());
    let digest =
        tokio::task::spawn_blocking(move || assemble(&root, &app, &version, &manifest, &cache, &stop)).await??;
    metrics.insert("stage_ms".into(), started.elapsed().as_millis().to_string());
    Ok((digest, metrics))
}

/// Where content comes from: the relays the server named, in order, then
/// the server. A source that fails is dropped for the rest of the attempt
/// and named in the report (`source_failures`).
struct Sources {
    list: Vec<Source>,
    /// Sources that failed this attempt (never the server, the last).
    dead: Vec<bool>,
    /// The source chunks last came from.
    used: usize,
    failures: Vec<String>,
}

/// A place content can come from.
enum Source {
    /// The convoy API: a relay, a mirror server, the server itself.
    Api(Client),
    /// A plain HTTP copy of the server's chunk store (`ab/<id>.zst`):
    /// chunks only, fetched without any token.
    Store { http: reqwest::Client, base: String },
}

impl Source {
    fn url(&self) -> &str {
        match self {
            Source::Api(c) => c.server(),
            Source::Store { base, .. } => base,
        }
    }
}

impl Sources {
    /// Relays and mirrors see the agent's read grant, never its credential.
    fn new(origin: &Client, grant: &convoy_client::GrantCell, urls: &[String]) -> Self {
        let mut list: Vec<Source> = urls
            .iter()
            .filter_map(|u| match u.strip_prefix("store+") {
                Some(base) => {
                    Some(Source::Store { http: origin.http().clone(), base: base.trim_end_matches('/').to_owned() })
                }
                None => origin.for_relay(u, grant).ok().map(Source::Api),
            })
            .collect();
        list.push(Source::Api(origin.clone()));
        let dead = vec![false; list.len()];
        Self { list, dead, used: 0, failures: Vec::new() }
    }
    fn first(&self, api_only: bool) -> usize {
        (0..self.list.len())
            .find(|i| !self.dead[*i] && (!api_only || matches!(self.list[*i], Source::Api(_))))
            .unwrap_or(self.list.len() - 1)
    }
    /// The source for chunks now, and whether it is the last (the server).
    fn current(&mut self) -> (&Source, bool) {
        self.used = self.first(false);
        (&self.list[self.used], self.used + 1 == self.list.len())
    }
    /// The API source for manifests and deltas now (a chunk store mirror
    /// serves neither), and whether it is the last.
    fn current_api(&mut self) -> (&Client, bool) {
        let i = self.first(true);
        self.used = i;
        let Source::Api(c) = &self.list[i] else { unreachable!("the server is an API source") };
        (c, i + 1 == self.list.len())
    }
    fn failed_api(&mut self, why: &str) {
        self.fail(self.first(true), why);
    }
    fn failed(&mut self, why: &str) {
        self.fail(self.first(false), why);
    }
    fn fail(&mut self, i: usize, why: &str) {
        let url = self.list[i].url().to_owned();
        tracing::warn!(source = %url, error = %why, "content source failed; trying the next");
        self.failures.push(format!("{url}: {}", why.chars().take(120).collect::<String>()));
        if i + 1 < self.list.len() {
            self.dead[i] = true;
        }
    }
    fn record(&self, metrics: &mut BTreeMap<String, String>) {
        if self.list.len() > 1 {
            metrics.insert("via".into(), self.list[self.used].url().to_owned());
        }
        if !self.failures.is_empty() {
            let mut all = self.failures.join("; ");
            all.truncate(all.char_indices().nth(250).map_or(all.len(), |(i, _)| i));
            metrics.insert("source_failures".into(), all);
        }
    }
}

/// Fetches a batch of chunks in one request, verifying and caching each as
/// it arrives. Returns the bytes received.
async fn fetch_batch(
    client: &Client,
    cache: &ChunkStore,
    ids: &[ChunkId],
    limiter: &mut RateLimit,
    done: &AtomicU64,
) -> anyhow::Result<u64> {
    let body = ChunkIds { ids: ids.iter().map(|i| i.to_hex()).collect() };
    let mut resp = Client::check(
        client
            .request(reqwest::Method::POST, "/chunks/fetch")
            .timeout(Duration::from_secs(600))
            .json(&body)
            .send()
            .await
            .context("fetching chunks")?,
    )
    .await?;
    let mut frames = FrameDecoder::default();
    let mut total = 0u64;
    let mut expected = ids.iter();
    while let Some(piece) = resp.chunk().await.context("reading chunks")? {
        total += piece.len() as u64;
        limiter.consumed(piece.len() as u64).await;
        frames.push(&piece);
        while let Some((id, compressed)) = frames.next_frame()? {
            if expected.next() != Some(&id) {
                bail!("server sent chunk {id} out of order");
            }
            let chunk = VerifiedChunk::from_compressed(id, &compressed)
                .map_err(|e| anyhow::anyhow!("chunk from the server failed verification: {e}"))?;
            cache.put(&chunk, Some(&compressed))?;
            done.fetch_add(chunk.data().len() as u64, Ordering::Relaxed);
        }
    }
    if expected.next().is_some() || frames.pending() > 0 {
        return Err(Interrupted("the chunk download ended early".into()).into());
    }
    Ok(total)
}

/// Fetches chunks one GET each from a plain copy of the chunk store, a
/// few at a time, verifying and caching each.
async fn fetch_store(
    http: &reqwest::Client,
    base: &str,
    cache: &ChunkStore,
    ids: &[ChunkId],
    limiter: &mut RateLimit,
    done: &AtomicU64,
) -> anyhow::Result<u64> {
    const PARALLEL: usize = 8;
    let mut total = 0;
    for group in ids.chunks(PARALLEL) {
        let gets = group.iter().map(|id| {
            let hex = id.to_hex();
            let url = format!("{base}/{}/{hex}.zst", &hex[..2]);
            async move {
                let resp = http.get(&url).timeout(Duration::from_secs(300)).send().await?.error_for_status()?;
                anyhow::Ok((*id, resp.bytes().await?))
            }
        });
        for got in futures_util::future::join_all(gets).await {
            let (id, compressed) = got?;
            total += compressed.len() as u64;
            limiter.consumed(compressed.len() as u64).await;
            let chunk = VerifiedChunk::from_compressed(id, &compressed)
                .map_err(|e| anyhow::anyhow!("chunk from the mirror failed verification: {e}"))?;
            cache.put(&chunk, Some(&compressed))?;
            done.fetch_add(chunk.data().len() as u64, Ordering::Relaxed);
        }
    }
    Ok(total)
}

/// Tells the server every few seconds how far the download has come, for
/// operators watching a slow link. Best effort: failures are ignored.
async fn report_progress(client: Client, instruction_id: String, done: Arc<AtomicU64>, total: u64) {
    const EVERY: Duration = Duration::from_secs(2);
    loop {
        tokio::time::sleep(EVERY).await;
        let p = ProgressReport {
            instruction_id: instruction_id.clone(),
            progress: Progress { done_bytes: done.load(Ordering::Relaxed).min(total), total_bytes: total },
        };
        let _ = client.send_json::<_, serde_json::Value>(reqwest::Method::POST, "/agent/progress", &p).await;
    }
}

/// Writes the release from verified cached chunks into a fresh partial
/// directory, moves it into place, and returns the digest of what is on disk.
fn assemble(
    root: &Path,
    app: &str,
    version: &str,
    m: &Manifest,
    cache: &ChunkStore,
    stop: &AtomicBool,
) -> anyhow::Result<String> {
    let app_dir = root.join("releases").join(app);
    std::fs::create_dir_all(&app_dir)?;
    let partial = partial_dir(root, app, version);
    remove_tree(&partial)?;
    let unpacked = unpack(m, &partial, |c| {
        if stop.load(Ordering::Relaxed) {
            return Err(PackError::Chunk("staging was stopped: the work was withdrawn".into()));
        }
        cache
            .get(&c.id)
            .map_err(|e| PackError::Chunk(e.to_string()))?
            .ok_or_else(|| PackError::Chunk(format!("chunk {} missing from the cache", c.id)))
    });
    if let Err(e) = unpacked {
        // nothing half-written stays behind
        let _ = remove_tree(&partial);
        return Err(e.into());
    }
    if stop.load(Ordering::Relaxed) {
        let _ = remove_tree(&partial);
        anyhow::bail!("staging was stopped: the work was withdrawn");
    }
    let dest = app_dir.join(version);
    if dest.exists() {
        let old = app_dir.join(format!(".{version}.old"));
        remove_tree(&old)?;
        std::fs::rename(&dest, &old)?;
        std::fs::rename(&partial, &dest)?;
        remove_tree(&old)?;
    } else {
        std::fs::rename(&partial, &dest)?;
    }
    let mp = crate::prune::manifest_path(root, app, version);
    std::fs::create_dir_all(mp.parent().expect("manifest path has a parent"))?;
    crate::journal::write_private(&mp, &m.canonical_bytes())?;
    if crate::fault("tamper-once") || crate::fault("tamper-always") {
        tamper(root, &dest, m)?;
    }
    Ok(digest_of(&dest)?)
}

fn tamper(root: &Path, dest: &Path, m: &Manifest) -> anyhow::Result<()> {
    let marker = crate::state_dir(root).join("fault-tampered");
    if marker.exists() && !crate::fault("tamper-always") {
        return Ok(());
    }
    if let Some(Entry::File { path, .. }) = m.entries.iter().find(|e| matches!(e, Entry::File { .. })) {
        use std::io::Write;
        let p = dest.join(path.as_str());
        let mut perms = std::fs::metadata(&p)?.permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
        std::fs::set_permissions(&p, perms)?;
        std::fs::OpenOptions::new().append(true).open(&p)?.write_all(b"tampered")?;
        std::fs::write(marker, path.as_str())?;
        tracing::warn!(file = %p.display(), "fault injection: tampered with a staged file");
    }
    Ok(())
}

/// Removes a directory tree, first making read-only directories writable.
pub fn remove_tree(p: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::symlink_metadata(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(m) if !m.is_dir() => return std::fs::remove_file(p),
        Ok(_) => {}
    }
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))?;
    for e in std::fs::read_dir(p)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            remove_tree(&e.path())?;
        } else {
            std::fs::remove_file(e.path())?;
        }
    }
    std::fs::remove_dir(p)
}

/// Keeps the average download rate under a limit.
struct RateLimit {
    rate: Option<u64>,
    start: Instant,
    bytes: u64,
}

impl RateLimit {
    fn new(rate: Option<u64>) -> Self {
        Self { rate, start: Instant::now(), bytes: 0 }
    }
    async fn consumed(&mut self, n: u64) {
        let Some(rate) = self.rate.filter(|r| *r > 0) else {
            return;
        };
        self.bytes += n;
        let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
        let elapsed = self.start.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_damaged_descriptor_is_a_digest_mismatch_not_a_parse_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("convoy.toml"), "[hooks]\nstart = \"true\"\n").unwrap();
        std::fs::write(dir.path().join("app.txt"), "v1").unwrap();
        let good = super::digest_of(dir.path()).unwrap();
        assert_eq!(good, convoy_pack::pack_tree(dir.path(), |_| Ok(())).unwrap().digest());
        std::fs::write(dir.path().join("convoy.toml"), "[hooks\ngarbage").unwrap();
        let bad = super::digest_of(dir.path()).expect("hashing does not parse convoy.toml");
        assert_ne!(bad, good);
    }
}
