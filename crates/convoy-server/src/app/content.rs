//! Release content the application hands out besides chunks: release
//! deltas (made once per pair, kept in `DATA_DIR/deltas/`), compressed
//! manifests, upgrade descriptions and a release's `convoy.toml`
//! (P-strategy, P-incremental). The HTTP routes in `routes/deltas.rs`
//! serve them.
//!
//! Deltas are made ahead of need, in the background, one at a time: at
//! publish from the app's last few releases and from every version the
//! fleet runs, at deploy from each target's previous version. An agent
//! that asks for a delta not made yet is told so at once (202) and stages
//! by chunks; it never waits for one to be made.
//!
//! Memory: a delta is made file by file, big files in segments
//! (`convoy_pack::SEGMENT`) against a bounded window of their reference,
//! and written to disk as it is made, so making one needs at most about
//! 200 MiB whatever the release size. One delta is made at a time.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use convoy_pack::{encode_delta, make_release_delta, ChunkRef, ChunkStore, Manifest, RelPath, VerifiedChunk};
use convoy_store::ReleaseRecord;

use super::{AppError, AppResult};
use crate::state::AppState;

/// Most bytes of files one sync request may ask for (the answer is held
/// in memory).
const SYNC_BATCH: u64 = 256 << 20;

/// Most deltas and streams queued or being made at once.
const QUEUE_MAX: usize = 64;

/// zstd level for deltas: they are made once and sent many times.
pub const DELTA_LEVEL: i32 = 19;

/// Releases of an app before a new one that deltas are made from at
/// publish (besides every version the fleet runs).
pub const DELTA_FROM_LAST: usize = 3;

/// Generated deltas and compressed manifests on disk, made once each.
pub struct Deltas {
    dir: PathBuf,
    inflight: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Deltas being made in the background (queued or running).
    making: std::sync::Mutex<HashSet<String>>,
    /// Queued deltas and first-install streams, made one at a time by one
    /// worker (started with the first job).
    queue: std::sync::Mutex<(Queue, Queue)>,
    worker: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
    /// Sync requests of drifted machines answered at once (each holds
    /// files of up to `SYNC_MAX_FILE` bytes).
    syncs: Arc<tokio::sync::Semaphore>,
    /// Releases before a new one its deltas are made from at publish.
    pub from_last: usize,
    /// Bytes of deltas and streams kept on disk; the oldest go first.
    pub max_bytes: u64,
}

/// Default of [`Deltas::max_bytes`].
pub const DELTA_CACHE_MIB: u64 = 4096;
/// How long a failed generation is not tried again.
const FAILED_FOR: std::time::Duration = std::time::Duration::from_secs(600);

/// What the background worker makes first: deltas, then streams.
#[derive(Clone, Copy)]
pub enum Job {
    Delta,
    Stream,
}

type Maker = Box<dyn FnOnce() -> Result<Made, String> + Send + 'static>;
type Queue = std::collections::VecDeque<(String, Maker)>;

/// What a cached generation produced.
pub enum Made {
    Bytes(Vec<u8>),
    /// Kept in this file (a delta, written as it was made).
    File(PathBuf),
    /// Not worth sending; the reason.
    Skip(String),
    /// Not made yet (it is being made): stage by other means now.
    NotReady(String),
}

impl Deltas {
    pub fn open(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            inflight: Default::default(),
            making: Default::default(),
            queue: Default::default(),
            worker: Default::default(),
            wake: Default::default(),
            syncs: Arc::new(tokio::sync::Semaphore::new(2)),
            from_last: DELTA_FROM_LAST,
            max_bytes: DELTA_CACHE_MIB << 20,
        })
    }

    /// What is made for `key`, or `None` after queueing `make` in the
    /// background (once, however many ask); never waits for it. Deltas
    /// (`Job::Delta`) are made before first-install streams (`Job::Stream`),
    /// each kind in the order asked.
    pub fn start(
        self: &Arc<Self>,
        key: String,
        job: Job,
        make: impl FnOnce() -> Result<Made, String> + Send + 'static,
    ) -> Option<Made> {
        if let Some(m) = self.read(&key) {
            return Some(m);
        }
        {
            let mut making = self.making.lock().expect("making lock");
            // a full queue takes nothing more (askers use chunks)
            if making.len() >= QUEUE_MAX || !making.insert(key.clone()) {
                return None;
            }
        }
        {
            let mut q = self.queue.lock().expect("queue lock");
            let (deltas, streams) = &mut *q;
            match job {
                Job::Delta => deltas.push_back((key, Box::new(make))),
                Job::Stream => streams.push_back((key, Box::new(make))),
            }
        }
        if !self.worker.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let me = self.clone();
            tokio::spawn(async move { me.work().await });
        }
        self.wake.notify_one();
        None
    }

    /// The one worker: makes queued deltas one at a time, for the life of
    /// the server (bounds its memory and CPU).
    async fn work(self: Arc<Self>) {
        loop {
            let next = {
                let mut q = self.queue.lock().expect("queue lock");
                let (deltas, streams) = &mut *q;
                deltas.pop_front().or_else(|| streams.pop_front())
            };
            let Some((key, make)) = next else {
                self.wake.notified().await;
                continue;
            };
            let made = if self.read(&key).is_none() {
                let started = std::time::Instant::now();
                let r = tokio::task::spawn_blocking(make).await;
                tracing::debug!(%key, ms = started.elapsed().as_millis() as u64, "delta made in the background");
                r
            } else {
                Ok(Err("made meanwhile".to_owned()))
            };
            let failed = match made {
                Ok(Ok(m)) => {
                    if let Err(e) = self.write(&key, &m) {
                        tracing::warn!(error = %e, %key, "could not keep a delta");
                    }
                    None
                }
                Ok(Err(e)) if e == "made meanwhile" => None,
                Ok(Err(e)) => Some(e),
                Err(e) => Some(e.to_string()),
            };
            if let Some(e) = failed {
                // not tried again for a while: asking again costs nothing
                tracing::warn!(error = %e, %key, "making a delta failed");
                let why = format!("making it failed; tried again after {} s: {e}", FAILED_FOR.as_secs());
                let _ = std::fs::write(self.dir.join(format!("{key}.failed")), why);
            }
            self.prune();
            self.making.lock().expect("making lock").remove(&key);
        }
    }

    /// A turn to answer a sync request.
    pub async fn sync_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.syncs.clone().acquire_owned().await.ok()
    }

    /// Where the made bytes of `key` are kept.
    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.zst"))
    }

    fn read(&self, key: &str) -> Option<Made> {
        let path = self.path(key);
        if path.is_file() {
            return Some(Made::File(path));
        }
        if let Ok(why) = std::fs::read_to_string(self.dir.join(format!("{key}.skip"))) {
            return Some(Made::Skip(why));
        }
        let failed = self.dir.join(format!("{key}.failed"));
        let recent = std::fs::metadata(&failed)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < FAILED_FOR));
        recent.then(|| std::fs::read_to_string(&failed).ok().map(Made::Skip)).flatten()
    }

    /// Removes the oldest kept deltas and streams until they fit in
    /// `max_bytes` (one being served stays readable until it is closed).
    fn prune(&self) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else { return };
        let mut kept: Vec<(std::time::SystemTime, u64, PathBuf)> = dir
            .flatten()
            .filter_map(|e| {
                let md = e.metadata().ok()?;
                let name = e.file_name();
                let name = name.to_str()?;
                let modified = md.modified().ok()?;
                (md.is_file() && !name.starts_with('.')).then(|| (modified, md.len(), e.path()))
            })
            .collect();
        let mut total: u64 = kept.iter().map(|k| k.1).sum();
        if total <= self.max_bytes {
            return;
        }
        kept.sort();
        for (_, len, path) in kept {
            if total <= self.max_bytes {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                tracing::info!(path = %path.display(), bytes = len, "removed an old delta (the delta cache is full)");
                total -= len;
            }
        }
    }

    fn write(&self, key: &str, made: &Made) -> std::io::Result<()> {
        let (name, bytes) = match made {
            Made::Bytes(b) => (format!("{key}.zst"), b.as_slice()),
            Made::Skip(why) => (format!("{key}.skip"), why.as_bytes()),
            Made::NotReady(_) | Made::File(_) => return Ok(()),
        };
        let tmp = self.dir.join(format!(".{name}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(tmp, self.dir.join(name))
    }

    /// The cached result for `key`, or the result of `make` (run once even
    /// when many ask at the same time), stored for next time.
    pub async fn cached(
        &self,
        key: String,
        make: impl FnOnce() -> Result<Made, String> + Send + 'static,
    ) -> AppResult<Made> {
        if let Some(m) = self.read(&key) {
            return Ok(m);
        }
        let lock = self.inflight.lock().expect("inflight lock").entry(key.clone()).or_default().clone();
        let _held = lock.lock().await;
        if let Some(m) = self.read(&key) {
            return Ok(m);
        }
        let made = tokio::task::spawn_blocking(make).await.map_err(AppError::internal)?.map_err(AppError::internal)?;
        self.write(&key, &made).map_err(AppError::internal)?;
        self.inflight.lock().expect("inflight lock").remove(&key);
        Ok(made)
    }
}

/// Makes the delta from `from` to `to` into `dest`, or says why chunks are
/// cheaper. Release bytes are read chunk by chunk from the store.
fn make_delta(chunks: &ChunkStore, from: &[u8], to: &[u8], dest: &std::path::Path) -> Result<Made, String> {
    // no old release: the first-install stream
    let old = if from.is_empty() {
        Manifest::new(Vec::new())
    } else {
        Manifest::from_slice(from).map_err(|e| e.to_string())?
    };
    let new = Manifest::from_slice(to).map_err(|e| e.to_string())?;
    // what a holder of the old release lacks, sent as chunks
    let have: HashSet<_> = old.chunk_ids().into_iter().collect();
    // a store that cannot say is an error (tried again later), never a
    // lasting "chunks are cheaper"
    let mut chunk_cost: u64 = 0;
    for id in new.chunk_ids().iter().filter(|id| !have.contains(id)) {
        match chunks.try_compressed_len(id) {
            Ok(Some(n)) => chunk_cost += n,
            Ok(None) => return Err(format!("chunk {id} of the new release is missing from the chunk store")),
            Err(e) => return Err(format!("reading the size of chunk {id}: {e}")),
        }
    }
    if chunk_cost == 0 {
        return Ok(Made::Skip("the old release holds every chunk of the new one".into()));
    }
    let read = |_: &RelPath, _: u64, c: &ChunkRef| -> std::io::Result<VerifiedChunk> {
        chunks.get(&c.id)?.ok_or_else(|| std::io::Error::other(format!("chunk {} missing", c.id)))
    };
    let cost = |c: &ChunkRef| chunks.compressed_len(&c.id).unwrap_or(c.len as u64);
    let tmp = dest.with_extension(format!("{}.tmp", std::process::id()));
    let started = std::time::Instant::now();
    let made = std::fs::File::create(&tmp).map_err(|e| e.to_string()).and_then(|f| {
        let out = std::io::BufWriter::with_capacity(1 << 20, f);
        make_release_delta(&old, &new, &mut { read }, &mut { read }, DELTA_LEVEL, &cost, out)
            .map_err(|e| format!("encoding delta: {e}"))
    });
    let stats = match made {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    tracing::info!(
        delta = stats.bytes,
        chunk_cost,
        same = stats.same,
        copied = stats.copied,
        patched = stats.patched,
        literal = stats.literal,
        chunked = stats.chunked,
        ms = started.elapsed().as_millis() as u64,
        "release delta made"
    );
    if stats.bytes >= chunk_cost {
        let _ = std::fs::remove_file(&tmp);
        return Ok(Made::Skip(format!(
            "the missing chunks ({chunk_cost} bytes) cost less than a delta ({})",
            stats.bytes
        )));
    }
    std::fs::rename(&tmp, dest).map_err(|e| e.to_string())?;
    Ok(Made::File(dest.to_owned()))
}

pub fn find(st: &AppState, app: &str, version: &str) -> impl std::future::Future<Output = AppResult<ReleaseRecord>> {
    let (st, app, version) = (st.clone(), app.to_owned(), version.to_owned());
    async move {
        st.store
            .get_release(&app, &version)
            .await?
            .ok_or_else(|| AppError::not_found(format!("release {app}@{version} not found")))
    }
}

/// Starts making (once, in the background) the delta between two
/// releases of an app; `true` if it is made already.
pub async fn begin(st: &AppState, app: &str, from: &str, to: &str) -> AppResult<bool> {
    let (from, to) = (find(st, app, from).await?, find(st, app, to).await?);
    if from.digest == to.digest {
        return Ok(true);
    }
    let chunks = st.chunks.clone();
    let key = format!("v5-{}-{}", from.digest, to.digest);
    let dest = st.deltas.path(&key);
    Ok(st.deltas.start(key, Job::Delta, move || make_delta(&chunks, &from.manifest, &to.manifest, &dest)).is_some())
}

/// The key and maker of a release's first-install stream: every file in
/// one zstd stream (a delta from no release), so a first install costs
/// about what `tar | zstd -19` of the tree does, not one compressed chunk
/// at a time. The agent cuts it into chunks and hashes each.
fn full_stream(st: &AppState, to: ReleaseRecord) -> (String, impl FnOnce() -> Result<Made, String> + Send + 'static) {
    let key = format!("full-v5-{}", to.digest);
    let (chunks, dest) = (st.chunks.clone(), st.deltas.path(&key));
    (key, move || make_delta(&chunks, &[], &to.manifest, &dest))
}

/// The first-install stream of `app@version` (see [`full_stream`]), or why
/// not (yet), and the release's size.
pub async fn first_install(st: &AppState, app: &str, version: &str) -> AppResult<(Made, String)> {
    let to = find(st, app, version).await?;
    let size = to.total_size.to_string();
    let (key, make) = full_stream(st, to);
    let made = st.deltas.start(key, Job::Stream, make).unwrap_or_else(|| {
        Made::NotReady("the stream is still being made; staging by chunks instead of waiting".into())
    });
    Ok((made, size))
}

/// A release was published: deltas to it from the app's last
/// `--delta-from-last` releases and from every version the fleet runs are
/// made in the background, before anyone deploys it.
pub async fn published(st: &AppState, rec: &ReleaseRecord) -> AppResult<()> {
    let mut from: std::collections::BTreeSet<String> = st
        .store
        .list_releases()
        .await?
        .into_iter()
        .filter(|r| r.app == rec.app && r.version != rec.version && r.created_at <= rec.created_at)
        .take(st.deltas.from_last)
        .map(|r| r.version)
        .collect();
    for t in st.store.list_targets().await? {
        if let Ok(inv) = serde_json::from_str::<convoy_wire::Inventory>(&t.inventory_json) {
            from.extend(inv.current.get(rec.app.as_str()).filter(|v| **v != rec.version).cloned());
        }
    }
    for v in from {
        if let Err(e) = begin(st, &rec.app, &v, &rec.version).await {
            tracing::debug!(error = %e, from = %v, to = %rec.version, "no delta prepared");
        }
    }
    // after the deltas (one is made at a time, in order): machines new to the app
    let (key, make) = full_stream(st, rec.clone());
    st.deltas.start(key, Job::Stream, make);
    Ok(())
}

/// The description of the upgrade from `from` to `to`, computed once per
/// pair and kept in memory.
/// The release's `convoy.toml`, read from the chunk store (`None` if it
/// has none or it does not parse).
pub fn descriptor_of(chunks: &ChunkStore, m: &Manifest) -> Option<convoy_pack::Descriptor> {
    m.entries.iter().find_map(|e| match e {
        convoy_pack::Entry::File { path, chunks: refs, .. } if path.as_str() == convoy_pack::DESCRIPTOR_FILE => {
            let mut text = Vec::new();
            for r in refs {
                text.extend_from_slice(chunks.get(&r.id).ok()??.data());
            }
            convoy_pack::Descriptor::parse(&String::from_utf8_lossy(&text)).ok()
        }
        _ => None,
    })
}

pub async fn changes(st: &AppState, app: &str, from: &str, to: &str) -> AppResult<convoy_wire::Changes> {
    let (old, new) = (find(st, app, from).await?, find(st, app, to).await?);
    let key = format!("{}-{}", old.digest, new.digest);
    if let Some(c) = st.upgrades.lock().expect("upgrades lock").get(&key) {
        return Ok(c.clone());
    }
    let chunks = st.chunks.clone();
    let c = tokio::task::spawn_blocking(move || -> Result<convoy_wire::Changes, String> {
        let (a, b) = (
            Manifest::from_slice(&old.manifest).map_err(|e| e.to_string())?,
            Manifest::from_slice(&new.manifest).map_err(|e| e.to_string())?,
        );
        let d = convoy_pack::diff(&a, &b);
        let descriptor = descriptor_of(&chunks, &b);
        let (config_changed, migrate) = match descriptor {
            Some(desc) => (
                desc.config_files.into_iter().filter(|f| d.added.contains(f) || d.changed.contains(f)).collect(),
                desc.hooks.migrate,
            ),
            None => (Vec::new(), None),
        };
        Ok(convoy_wire::Changes {
            app: new.app.clone(),
            from_version: old.version.clone(),
            to_version: new.version.clone(),
            from_digest: old.digest.clone(),
            to_digest: new.digest.clone(),
            added: d.added,
            removed: d.removed,
            changed: d.changed,
            changed_bytes: d.changed_bytes,
            total_size: b.total_size(),
            config_changed,
            migrate,
            published_at: new.created_at,
        })
    })
    .await
    .map_err(AppError::internal)?
    .map_err(AppError::internal)?;
    let mut map = st.upgrades.lock().expect("upgrades lock");
    if map.len() > 1_000 {
        map.clear();
    }
    map.insert(key, c.clone());
    Ok(c)
}

/// The delta from `from` to `to` (or why chunks are cheaper), the digest
/// of `from` and the new release's size.
pub async fn delta(st: &AppState, app: &str, from: &str, to: &str) -> AppResult<(Made, String, String)> {
    let (from, to) = (find(st, app, from).await?, find(st, app, to).await?);
    if from.digest == to.digest {
        return Err(AppError::bad_request(format!(
            "{app}@{} and {app}@{} are the same release",
            from.version, to.version
        )));
    }
    let from_digest = from.digest.clone();
    let size = to.total_size.to_string();
    let chunks = st.chunks.clone();
    let key = format!("v5-{}-{}", from.digest, to.digest);
    let dest = st.deltas.path(&key);
    let made = st
        .deltas
        .start(key, Job::Delta, move || make_delta(&chunks, &from.manifest, &to.manifest, &dest))
        .unwrap_or_else(|| {
            Made::NotReady("the delta is still being made; staging by chunks instead of waiting".into())
        });
    Ok((made, from_digest, size))
}

/// The canonical manifest of `app@version`, zstd-compressed, as a patch
/// against `base`'s manifest when given (and its digest).
pub async fn manifest_patch(
    st: &AppState,
    app: &str,
    version: &str,
    base: Option<&str>,
) -> AppResult<(Vec<u8>, Option<String>)> {
    let to = find(st, app, version).await?;
    let base = match base {
        Some(b) => st.store.get_release(app, b).await?,
        None => None,
    };
    let base_digest = base.as_ref().map(|b| b.digest.clone());
    let key = format!("m-{}-{}", base_digest.as_deref().unwrap_or("none"), to.digest);
    let made = st
        .deltas
        .cached(key, move || {
            let old = base.map(|b| b.manifest).unwrap_or_default();
            encode_delta(&old, &to.manifest, DELTA_LEVEL).map(Made::Bytes).map_err(|e| e.to_string())
        })
        .await?;
    let b = match made {
        Made::Bytes(b) => b,
        Made::File(p) => std::fs::read(p).map_err(AppError::internal)?,
        _ => return Err(AppError::internal("manifest encoding was skipped")),
    };
    Ok((b, base_digest))
}

/// The bytes of the file at `path` of release `m`, from the store, if it
/// is a regular file of at most `convoy_pack::SYNC_MAX_FILE` bytes.
fn file_bytes(chunks: &ChunkStore, m: &Manifest, path: &str) -> Result<Option<Vec<u8>>, String> {
    let Some(convoy_pack::Entry::File { path: p, size, chunks: refs, .. }) =
        m.entries.iter().find(|e| e.path().as_str() == path)
    else {
        return Ok(None);
    };
    if *size > convoy_pack::SYNC_MAX_FILE {
        return Ok(None);
    }
    let mut read = |_: &RelPath, _: u64, c: &ChunkRef| -> std::io::Result<VerifiedChunk> {
        chunks.get(&c.id)?.ok_or_else(|| std::io::Error::other(format!("chunk {} missing", c.id)))
    };
    convoy_pack::read_range(&mut read, p, refs, 0, *size).map(Some).map_err(|e| e.to_string())
}

/// Largest file used as a reference for a file a machine lacks.
const REFERENCE_MAX: u64 = 8 << 20;

fn parent_dir(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(d, _)| d)
}

/// Up to two files of `held` (by directory) a file the machine lacks is
/// compressed against: in its directory, with its extension, the names
/// sharing the most of its start and end (`vue.runtime.global.js` and
/// `vue.global.js`), then the nearest in size; at most 16 MiB together.
fn references<'a>(path: &str, size: u64, held: &HashMap<&str, Vec<(&'a str, u64)>>) -> Vec<&'a str> {
    let name = |p: &'a str| p.rsplit_once('/').map_or(p, |(_, n)| n);
    let ext = |n: &str| n.rsplit_once('.').map(|(_, e)| e.to_owned());
    let mine = path.rsplit_once('/').map_or(path, |(_, n)| n);
    let shared = |other: &str| {
        let start = mine.bytes().zip(other.bytes()).take_while(|(a, b)| a == b).count();
        let end = mine.bytes().rev().zip(other.bytes().rev()).take_while(|(a, b)| a == b).count();
        (start + end).min(mine.len().min(other.len()))
    };
    let Some(candidates) = held.get(parent_dir(path)) else { return Vec::new() };
    let mut scored: Vec<(usize, u64, &'a str, u64)> = candidates
        .iter()
        .filter(|(p, s)| ext(name(p)) == ext(mine) && *s > 0 && *p != path)
        .map(|(p, s)| (shared(name(p)), s.abs_diff(size), *p, *s))
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(b.2)));
    let mut out = Vec::new();
    let mut total = 0;
    for (_, _, p, s) in scored.into_iter().take(2) {
        if total + s <= 16 << 20 {
            total += s;
            out.push(p);
        }
    }
    out
}

/// Answers a drifted machine's sync request for `app@version` (see
/// `convoy_wire::SyncRequest`): per file, a zstd patch of the published
/// file it holds, or copy/literal instructions against the bytes whose
/// signatures it sent; nothing (chunks) for files too big or unknown.
pub async fn sync(st: &AppState, app: &str, version: &str, req: convoy_wire::SyncRequest) -> AppResult<Vec<u8>> {
    if req.files.len() > convoy_wire::SYNC_MAX_FILES {
        return Err(AppError::bad_request(format!("at most {} files per sync request", convoy_wire::SYNC_MAX_FILES)));
    }
    let to = find(st, app, version).await?;
    // the published releases the machine says it holds files of
    let mut known: HashMap<String, Vec<u8>> = HashMap::new();
    for f in &req.files {
        if let convoy_wire::SyncHave::Known { version: v, .. } = &f.have {
            if !known.contains_key(v) {
                if known.len() >= 4 {
                    return Err(AppError::bad_request("a sync request may name files of at most 4 releases"));
                }
                let r = find(st, app, v).await?;
                known.insert(v.clone(), r.manifest);
            }
        }
    }
    let chunks = st.chunks.clone();
    let release = format!("{app}@{version}");
    // held by the work itself: a caller that goes away does not free it early
    let permit = st.deltas.sync_permit().await;
    tokio::task::spawn_blocking(move || -> Result<Vec<u8>, AppError> {
        let _permit = permit;
        let bad = |e: String| AppError::bad_request(e);
        let new = Manifest::from_slice(&to.manifest).map_err(AppError::internal)?;
        let known: HashMap<String, Manifest> = known
            .into_iter()
            .map(|(v, m)| Manifest::from_slice(&m).map(|m| (v, m)))
            .collect::<Result<_, _>>()
            .map_err(AppError::internal)?;
        // files of the new release the machine holds whole: every one the
        // request does not name, and each answered before (by directory)
        let named: HashSet<&str> = req.files.iter().map(|f| f.path.as_str()).collect();
        let mut held: HashMap<&str, Vec<(&str, u64)>> = HashMap::new();
        for e in &new.entries {
            if let convoy_pack::Entry::File { path, size, .. } = e {
                if !named.contains(path.as_str()) && *size <= REFERENCE_MAX {
                    held.entry(parent_dir(path.as_str())).or_default().push((path.as_str(), *size));
                }
            }
        }
        let sizes: HashMap<&str, u64> = new
            .entries
            .iter()
            .filter_map(|e| match e {
                convoy_pack::Entry::File { path, size, .. } => Some((path.as_str(), *size)),
                _ => None,
            })
            .collect();
        let mut out = Vec::new();
        let mut total = 0u64;
        for f in &req.files {
            let Some(wanted) = file_bytes(&chunks, &new, &f.path).map_err(AppError::internal)? else {
                return Err(bad(format!(
                    "{}: no such file of at most {} bytes in {release}",
                    f.path,
                    convoy_pack::SYNC_MAX_FILE
                )));
            };
            total += wanted.len() as u64;
            if total > SYNC_BATCH {
                return Err(bad(format!("a sync request may ask for at most {SYNC_BATCH} bytes of files")));
            }
            // the names of similar files the machine holds, and their bytes
            let context = |path: &str, size: u64| -> Result<(Vec<u8>, Vec<u8>), AppError> {
                let refs = references(path, size, &held);
                let mut head = vec![refs.len() as u8];
                let mut prefix = Vec::new();
                for r in &refs {
                    head.extend_from_slice(&(r.len() as u16).to_be_bytes());
                    head.extend_from_slice(r.as_bytes());
                    let bytes = file_bytes(&chunks, &new, r).map_err(AppError::internal)?;
                    prefix.extend(bytes.ok_or_else(|| AppError::internal(format!("{r}: not in the release")))?);
                }
                Ok((head, prefix))
            };
            // references are read and compressed against too: they count
            let mut context = |path: &str, size: u64| -> Result<(Vec<u8>, Vec<u8>), AppError> {
                let (head, prefix) = context(path, size)?;
                total += prefix.len() as u64;
                if total > 2 * SYNC_BATCH {
                    return Err(bad(format!("a sync request may cost at most {} bytes of files", 2 * SYNC_BATCH)));
                }
                Ok((head, prefix))
            };
            let (kind, payload) = match &f.have {
                convoy_wire::SyncHave::Known { version: v, path } => {
                    match file_bytes(&chunks, &known[v], path).map_err(AppError::internal)? {
                        Some(old) => (1u8, encode_delta(&old, &wanted, DELTA_LEVEL).map_err(AppError::internal)?),
                        None => (0, Vec::new()),
                    }
                }
                convoy_wire::SyncHave::Nothing => {
                    let (mut payload, prefix) = context(&f.path, wanted.len() as u64)?;
                    payload.extend(encode_delta(&prefix, &wanted, DELTA_LEVEL).map_err(AppError::internal)?);
                    (3, payload)
                }
                convoy_wire::SyncHave::Signatures { size, block, sums } => {
                    let (size, block) = (*size, *block);
                    if size > convoy_pack::SYNC_MAX_FILE || block == 0 {
                        (0, Vec::new())
                    } else {
                        if block != convoy_pack::block_size(size) {
                            let want = convoy_pack::block_size(size);
                            return Err(bad(format!("{}: block size {block} is not {want}", f.path)));
                        }
                        let sums = hex::decode(sums).map_err(|e| bad(format!("{}: signatures: {e}", f.path)))?;
                        let (mut payload, prefix) = context(&f.path, wanted.len() as u64)?;
                        let ops = convoy_pack::make_ops(&wanted, &sums, block, size, &prefix)
                            .map_err(|e| bad(format!("{}: {e}", f.path)))?;
                        payload.extend(ops);
                        (2, payload)
                    }
                }
            };
            if kind != 0 {
                // rebuilt on the machine before the next file is: a reference for it
                held.entry(parent_dir(&f.path)).or_default().push((&f.path, sizes[f.path.as_str()]));
            }
            out.push(kind);
            out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
            out.extend_from_slice(&payload);
        }
        Ok(out)
    })
    .await
    .map_err(AppError::internal)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_compressed_against_its_namesakes() {
        let held: HashMap<&str, Vec<(&str, u64)>> = HashMap::from([(
            "dist",
            vec![
                ("dist/vue.global.js", 519_000),
                ("dist/vue.esm-browser.js", 488_000),
                ("dist/vue.global.prod.js", 147_000),
                ("dist/vue.global.d.ts", 300),
                ("dist/empty.js", 0),
            ],
        )]);
        // the most of its name shared, then the nearest in size
        assert_eq!(
            references("dist/vue.runtime.global.js", 354_000, &held),
            ["dist/vue.global.js", "dist/vue.esm-browser.js"],
        );
        assert_eq!(references("dist/vue.runtime.global.prod.js", 91_000, &held)[0], "dist/vue.global.prod.js");
        assert!(references("lib/other.js", 1_000, &held).is_empty(), "only its own directory");
        assert!(references("dist/readme.md", 1_000, &held).is_empty(), "only its own extension");
    }

    /// An object store that answers nothing.
    #[derive(Debug)]
    struct Down;

    impl convoy_pack::Remote for Down {
        fn get(&self, _: &str) -> std::io::Result<Option<Vec<u8>>> {
            Err(std::io::Error::other("store unreachable"))
        }
        fn head(&self, _: &str) -> std::io::Result<Option<u64>> {
            Err(std::io::Error::other("store unreachable"))
        }
        fn put(&self, _: &str, _: &[u8]) -> std::io::Result<()> {
            Err(std::io::Error::other("store unreachable"))
        }
        fn delete(&self, _: &str) -> std::io::Result<()> {
            Err(std::io::Error::other("store unreachable"))
        }
    }

    #[test]
    fn a_chunk_store_that_cannot_answer_fails_a_delta_and_never_skips_it() {
        let file = |name: &str, data: &[u8]| convoy_pack::Entry::File {
            path: RelPath::parse(name).unwrap(),
            mode: 0o644,
            size: data.len() as u64,
            chunks: vec![ChunkRef { id: convoy_pack::ChunkId::of(data), len: data.len() as u32 }],
        };
        let old = Manifest::new(vec![file("a.txt", b"old bytes")]).canonical_bytes();
        let new = Manifest::new(vec![file("a.txt", b"new bytes")]).canonical_bytes();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("d.zst");
        let down = ChunkStore::remote(Arc::new(Down));
        let made = make_delta(&down, &old, &new, &dest);
        assert!(
            made.as_ref().is_err_and(|e| e.contains("store unreachable")),
            "an error, not a skip: {:?}",
            made.map(|_| ())
        );
        // a chunk missing from a store that answers is an error too
        let empty = ChunkStore::open(dir.path().join("chunks")).unwrap();
        let made = make_delta(&empty, &old, &new, &dest);
        assert!(made.as_ref().is_err_and(|e| e.contains("missing")), "{:?}", made.map(|_| ()));
    }

    #[test]
    fn the_oldest_deltas_go_when_the_cache_is_full() {
        let dir = std::env::temp_dir().join(format!("convoy-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut d = Deltas::open(dir.clone()).unwrap();
        d.max_bytes = 2500;
        for (i, key) in ["a", "b", "c"].iter().enumerate() {
            d.write(key, &Made::Bytes(vec![0; 1000])).unwrap();
            let t = std::time::SystemTime::now() - std::time::Duration::from_secs(100 - i as u64);
            std::fs::File::options().write(true).open(d.path(key)).unwrap().set_modified(t).unwrap();
        }
        d.prune();
        assert!(d.read("a").is_none(), "the oldest is removed");
        assert!(matches!(d.read("b"), Some(Made::File(_))) && matches!(d.read("c"), Some(Made::File(_))));
        // a failure is remembered for a while, then tried again
        std::fs::write(dir.join("x.failed"), "making it failed").unwrap();
        assert!(matches!(d.read("x"), Some(Made::Skip(_))));
        let old = std::time::SystemTime::now() - FAILED_FOR;
        std::fs::File::options().write(true).open(dir.join("x.failed")).unwrap().set_modified(old).unwrap();
        assert!(d.read("x").is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
