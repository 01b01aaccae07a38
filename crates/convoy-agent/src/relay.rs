//! `convoy agent --relay`: serves chunks, release deltas and manifests to
//! the other agents of its site (P-hierarchy), so a site's slow line
//! carries each object once.
//!
//! - Chunks: each is fetched once from upstream (the server or a parent
//!   relay), verified, cached, and streamed to every agent waiting for it
//!   as soon as it lands; agents asking meanwhile wait for the same fetch.
//! - Deltas and manifests (immutable for a given URL, because releases are
//!   immutable) are fetched once and kept under `ROOT/.convoy/relay/`.
//! - Callers show a read grant the server signed (`x-convoy-grant`), never
//!   a credential: content for any of the server's targets (and relays
//!   further down a chain), work only for agents of the site an operator
//!   granted this relay. Upstream, it shows its own grant to a parent relay
//!   and its own credential to the server only.
//!
//! A relay is never trusted: agents verify every chunk and every rebuilt
//! manifest, and fall back to the next source when a relay fails them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use convoy_client::Client;
use convoy_pack::{encode_frame, ChunkId, ChunkStore, FrameDecoder, VerifiedChunk};
use convoy_wire::sign::{Grant, GRANT_HEADER};
use convoy_wire::ChunkIds;
use tokio::sync::watch;

use crate::RelayConfig;

/// Most chunks one request may ask for (as the server).
const MAX_FETCH: usize = 256;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fetch {
    Pending,
    Done,
    Failed,
}

pub struct Relay {
    upstream: Client,
    /// The server itself (site polls never chain through parent relays).
    origin: Client,
    site: SiteControl,
    cache: ChunkStore,
    objects: PathBuf,
    inflight: std::sync::Mutex<HashMap<ChunkId, watch::Receiver<Fetch>>>,
    proxied: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// This relay's own read grant (its `site` is the site it was granted).
    grant: convoy_client::GrantCell,
    /// The server's public key, to check callers' grants with.
    server_key: String,
    /// The server's clock minus this machine's.
    skew: crate::Skew,
    /// Work kept for the `relay-replay` test hook.
    kept: std::sync::Mutex<HashMap<String, Vec<convoy_wire::sign::SignedWork>>>,
    /// When the relay last asked the server for its grant (a grant to
    /// relay may have come since).
    asked: std::sync::Mutex<Option<Instant>>,
    /// Bytes sent to agents, and fetched from upstream.
    served: AtomicU64,
    fetched: AtomicU64,
}

type Shared = Arc<Relay>;

fn err(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({"error": {"code": "relay", "message": message}});
    (status, Json(body)).into_response()
}

impl Relay {
    /// `origin` talks to the server with this agent's own credential;
    /// a parent relay gets only `grant`.
    pub fn new(
        cfg: &RelayConfig,
        origin: Client,
        grant: convoy_client::GrantCell,
        server_key: String,
        skew: crate::Skew,
        cache: ChunkStore,
        root: &std::path::Path,
    ) -> anyhow::Result<Self> {
        let upstream = match &cfg.upstream {
            Some(u) => origin.for_relay(u, &grant)?,
            None => origin.clone(),
        };
        let objects = crate::state_dir(root).join("relay");
        std::fs::create_dir_all(&objects)?;
        Ok(Self {
            upstream,
            origin,
            site: SiteControl::default(),
            cache,
            objects,
            inflight: Default::default(),
            proxied: Default::default(),
            grant,
            server_key,
            skew,
            kept: Default::default(),
            asked: Default::default(),
            served: AtomicU64::new(0),
            fetched: AtomicU64::new(0),
        })
    }

    /// Accepts a caller with a read grant the server signed; returns it.
    /// Nothing else is accepted: a relay takes no credentials.
    fn check(&self, headers: &HeaderMap) -> Result<Grant, Box<Response>> {
        let g = headers.get(GRANT_HEADER).and_then(|v| v.to_str().ok()).ok_or_else(|| {
            Box::new(err(StatusCode::UNAUTHORIZED, "missing x-convoy-grant: a relay takes read grants, never tokens"))
        })?;
        Grant::verify(g, &self.server_key, crate::server_now(&self.skew))
            .map_err(|e| Box::new(err(StatusCode::UNAUTHORIZED, &format!("read grant refused: {e}"))))
    }

    /// Test hook (`CONVOY_AGENT_FAULT=relay-replay`): a hostile relay that
    /// keeps every signed work item it ever passed to an agent and serves
    /// them all again, withdrawn ones included.
    fn replay(&self, target: &str, work: Vec<convoy_wire::sign::SignedWork>) -> Vec<convoy_wire::sign::SignedWork> {
        let mut kept = self.kept.lock().expect("kept lock");
        let all = kept.entry(target.to_owned()).or_default();
        for w in work {
            if !all.contains(&w) && all.iter().all(|k| k.unverified().map(|s| s.work) != w.unverified().map(|s| s.work))
            {
                all.push(w);
            }
        }
        all.clone()
    }

    /// The site an operator granted this relay, asking the server again
    /// (at most every few seconds) while it has none or another.
    async fn site_for(&self, wanted: Option<&str>) -> Option<String> {
        let site = self.site();
        if site.is_some() && site.as_deref() == wanted {
            return site;
        }
        {
            let mut asked = self.asked.lock().expect("asked lock");
            if asked.is_some_and(|t| t.elapsed() < Duration::from_secs(5)) {
                return site;
            }
            *asked = Some(Instant::now());
        }
        match self.origin.get_json::<convoy_wire::AgentMe>("/agent/me", Duration::from_secs(30)).await {
            Ok(me) => *self.grant.write().expect("grant lock") = me.grant,
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "relay: asking the server for its grant failed"),
        }
        self.site()
    }

    /// The site an operator granted this relay, from its own grant.
    fn site(&self) -> Option<String> {
        let g = self.grant.read().expect("grant lock").clone();
        let payload = g.split_once('.')?.0;
        let g: Grant = serde_json::from_slice(&hex::decode(payload).ok()?).ok()?;
        g.relay.then_some(g.site).flatten()
    }

    /// Waiters for each id; starts one upstream fetch for those nobody is
    /// fetching yet. Cached ids get no waiter.
    fn start(self: &Arc<Self>, ids: &[ChunkId]) -> Vec<Option<watch::Receiver<Fetch>>> {
        let mut mine = Vec::new();
        let mut map = self.inflight.lock().expect("inflight lock");
        let out = ids
            .iter()
            .map(|id| {
                if let Some(rx) = map.get(id) {
                    return Some(rx.clone());
                }
                if self.cache.contains(id) {
                    return None;
                }
                let (tx, rx) = watch::channel(Fetch::Pending);
                map.insert(*id, rx.clone());
                mine.push((*id, tx));
                Some(rx)
            })
            .collect();
        drop(map);
        if !mine.is_empty() {
            tokio::spawn(self.clone().fetch_upstream(mine));
        }
        out
    }

    async fn fetch_upstream(self: Arc<Self>, mine: Vec<(ChunkId, watch::Sender<Fetch>)>) {
        let mut left = mine.into_iter().peekable();
        while left.peek().is_some() {
            let batch: Vec<_> = left.by_ref().take(MAX_FETCH).collect();
            let mut senders: HashMap<ChunkId, watch::Sender<Fetch>> = batch.into_iter().collect();
            let ids: Vec<ChunkId> = senders.keys().copied().collect();
            if let Err(e) = self.fetch_batch(&ids, &mut senders).await {
                tracing::warn!(error = %format!("{e:#}"), "relay: fetching chunks upstream failed");
            }
            let mut map = self.inflight.lock().expect("inflight lock");
            for (id, tx) in senders {
                tx.send_replace(if self.cache.contains(&id) { Fetch::Done } else { Fetch::Failed });
                map.remove(&id);
            }
        }
    }

    async fn fetch_batch(
        &self,
        ids: &[ChunkId],
        senders: &mut HashMap<ChunkId, watch::Sender<Fetch>>,
    ) -> anyhow::Result<()> {
        let body = ChunkIds { ids: ids.iter().map(|i| i.to_hex()).collect() };
        let req = self.upstream.request(reqwest::Method::POST, "/chunks/fetch").timeout(Duration::from_secs(600));
        let mut resp = Client::check(req.json(&body).send().await?).await?;
        let mut frames = FrameDecoder::default();
        while let Some(piece) = resp.chunk().await? {
            self.fetched.fetch_add(piece.len() as u64, Ordering::Relaxed);
            frames.push(&piece);
            while let Some((id, compressed)) = frames.next_frame()? {
                let chunk = VerifiedChunk::from_compressed(id, &compressed)?;
                let cache = self.cache.clone();
                tokio::task::spawn_blocking(move || cache.put(&chunk, Some(&compressed))).await??;
                if let Some(tx) = senders.remove(&id) {
                    tx.send_replace(Fetch::Done);
                    self.inflight.lock().expect("inflight lock").remove(&id);
                }
            }
        }
        Ok(())
    }
}

/// `POST /api/v1/chunks/fetch`: frames in the order asked, each sent as
/// soon as it is here.
async fn fetch(State(r): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(resp) = r.check(&headers) {
        return *resp;
    }
    let Ok(req) = serde_json::from_slice::<ChunkIds>(&body) else {
        return err(StatusCode::BAD_REQUEST, "expected {\"ids\": [...]}");
    };
    if req.ids.len() > MAX_FETCH {
        return err(StatusCode::BAD_REQUEST, &format!("at most {MAX_FETCH} chunk ids per request"));
    }
    let Ok(ids) = req.ids.iter().map(|s| ChunkId::parse(s)).collect::<Result<Vec<_>, _>>() else {
        return err(StatusCode::BAD_REQUEST, "malformed chunk id");
    };
    let waits = r.start(&ids);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    tokio::spawn(async move {
        for (id, wait) in ids.into_iter().zip(waits) {
            if let Some(mut w) = wait {
                let _ = w.wait_for(|s| *s != Fetch::Pending).await;
            }
            let frame = match r.cache.get_compressed(&id) {
                Ok(Some(mut b)) => {
                    if crate::fault("relay-corrupt") {
                        corrupt(&mut b);
                    }
                    let mut out = Vec::with_capacity(b.len() + 40);
                    encode_frame(&mut out, &id, &b);
                    r.served.fetch_add(out.len() as u64, Ordering::Relaxed);
                    Ok(Bytes::from(out))
                }
                _ => Err(std::io::Error::other(format!("chunk {id} is not available upstream"))),
            };
            let failed = frame.is_err();
            if tx.send(frame).await.is_err() || failed {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    ([(axum::http::header::CONTENT_TYPE, "application/octet-stream")], Body::from_stream(stream)).into_response()
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    status: u16,
    headers: Vec<(String, String)>,
}

/// GETs of immutable objects (manifests, deltas): fetched once, kept.
async fn proxy(State(r): State<Shared>, req: Request) -> Response {
    if let Err(resp) = r.check(req.headers()) {
        return *resp;
    }
    // inside the nested API router the path comes without the API prefix;
    // only plain names and a `from` version go upstream (and into the cache key)
    let Some(path) = clean_path(req.uri()) else {
        return err(
            StatusCode::BAD_REQUEST,
            "malformed path: names of letters, digits, . _ + - and ?from=VERSION only",
        );
    };
    let rel = path.as_str();
    let key = blake3::hash(path.as_bytes()).to_hex().to_string();
    let (meta_path, body_path) = (r.objects.join(format!("{key}.meta")), r.objects.join(format!("{key}.body")));
    let lock = r.proxied.lock().expect("proxied lock").entry(key.clone()).or_default().clone();
    let _held = lock.lock().await;
    if let (Ok(m), Ok(b)) = (std::fs::read(&meta_path), std::fs::read(&body_path)) {
        if let Ok(meta) = serde_json::from_slice::<Meta>(&m) {
            return respond(&r, meta, b);
        }
    }
    let resp = match r.upstream.request(reqwest::Method::GET, rel).timeout(Duration::from_secs(600)).send().await {
        Ok(resp) => resp,
        Err(e) => return err(StatusCode::BAD_GATEWAY, &format!("upstream: {e}")),
    };
    let status = resp.status().as_u16();
    let headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("x-convoy-") || *k == "content-type")
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let body = match resp.bytes().await {
        Ok(b) => b.to_vec(),
        Err(e) => return err(StatusCode::BAD_GATEWAY, &format!("upstream: {e}")),
    };
    r.fetched.fetch_add(body.len() as u64, Ordering::Relaxed);
    let meta = Meta { status, headers };
    if status == 200 || status == 204 {
        let tmp = r.objects.join(format!(".{key}.tmp"));
        let kept = std::fs::write(&tmp, &body)
            .and_then(|_| std::fs::rename(&tmp, &body_path))
            .and_then(|_| std::fs::write(&meta_path, serde_json::to_vec(&meta).expect("meta serialises")));
        if let Err(e) = kept {
            tracing::warn!(error = %e, "relay: could not keep an object");
        }
    }
    respond(&r, meta, body)
}

/// The request's path and query if every segment is a plain name and the
/// only query is `from=VERSION`.
fn clean_path(uri: &axum::http::Uri) -> Option<String> {
    let plain = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s != "."
            && s != ".."
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'))
    };
    let path = uri.path();
    if !path.starts_with('/') || !path[1..].split('/').all(plain) {
        return None;
    }
    match uri.query() {
        None => Some(path.to_owned()),
        Some(q) => q.strip_prefix("from=").filter(|v| plain(v)).map(|_| format!("{path}?{q}")),
    }
}

/// Test hook (`CONVOY_AGENT_FAULT=relay-corrupt`): a relay with bad disks
/// or bad intent, flipping a byte of everything it serves.
fn corrupt(b: &mut [u8]) {
    if let Some(x) = b.last_mut() {
        *x ^= 0x55;
    }
}

fn respond(r: &Relay, meta: Meta, mut body: Vec<u8>) -> Response {
    if crate::fault("relay-corrupt") {
        corrupt(&mut body);
    }
    r.served.fetch_add(body.len() as u64, Ordering::Relaxed);
    let mut resp = (StatusCode::from_u16(meta.status).unwrap_or(StatusCode::BAD_GATEWAY), body).into_response();
    for (k, v) in meta.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}

/// The site's agents that poll this relay for work, and what the server
/// last said each has pending. One upstream site poll serves them all.
#[derive(Default)]
struct SiteControl {
    entries: std::sync::Mutex<HashMap<String, SiteEntry>>,
    epoch: std::sync::Mutex<Option<String>>,
    /// Wakes the upstream loop when an agent polls here for the first time.
    kick: tokio::sync::Notify,
    polls: AtomicU64,
    /// Set while the site poll fails (the server unreachable, or this
    /// relay's grant revoked): agents are sent to the server meanwhile,
    /// never answered from what the relay last knew.
    failing: std::sync::atomic::AtomicBool,
    /// Agents the server said are not of this relay's site, and since when.
    refused: std::sync::Mutex<HashMap<String, Instant>>,
}

struct SiteEntry {
    /// Generation of `work` (0: not heard from the server yet).
    gen: u64,
    work: Vec<convoy_wire::sign::SignedWork>,
    seen: Instant,
    tx: watch::Sender<u64>,
}

/// Agents that have not polled for this long are no longer polled for.
const SITE_FORGET: Duration = Duration::from_secs(120);

#[derive(serde::Deserialize)]
struct WorkQuery {
    #[serde(default)]
    wait: u64,
    #[serde(default)]
    holding: String,
}

/// `GET /api/v1/agent/work`: an agent's long poll, answered from what the
/// relay's one site poll learnt.
async fn work(State(r): State<Shared>, headers: HeaderMap, q: axum::extract::Query<WorkQuery>) -> Response {
    let target = match r.check(&headers) {
        Ok(g) if !g.relay && g.site.is_some() && g.site == r.site_for(g.site.as_deref()).await => g.target,
        Ok(g) => {
            return err(
                StatusCode::FORBIDDEN,
                &format!("target {} is not an agent of the site this relay was granted", g.target),
            )
        }
        Err(resp) => return *resp,
    };
    if r.site.refused.lock().expect("refused lock").get(&target).is_some_and(|t| t.elapsed() < SITE_FORGET) {
        return err(StatusCode::FORBIDDEN, &format!("the server says target {target} is not of this relay's site"));
    }
    r.site.polls.fetch_add(1, Ordering::Relaxed);
    let holding: std::collections::HashSet<&str> = q.holding.split(',').filter(|k| !k.is_empty()).collect();
    let mut rx = {
        let mut map = r.site.entries.lock().expect("site lock");
        let new = !map.contains_key(&target);
        let e = map.entry(target.clone()).or_insert_with(|| SiteEntry {
            gen: 0,
            work: Vec::new(),
            seen: Instant::now(),
            tx: watch::channel(0).0,
        });
        e.seen = Instant::now();
        if new {
            r.site.kick.notify_one();
        }
        e.tx.subscribe()
    };
    // registered above, so the site poll includes this agent next time
    if r.site.failing.load(Ordering::Relaxed) {
        return err(
            StatusCode::SERVICE_UNAVAILABLE,
            "this relay cannot poll the server for its site now; ask the server",
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(q.wait.min(60));
    loop {
        // passed on as the server signed it; the agent checks the signature
        let work: Vec<convoy_wire::sign::SignedWork> = {
            let map = r.site.entries.lock().expect("site lock");
            map.get(&target)
                .map(|e| {
                    e.work
                        .iter()
                        .filter(|sw| {
                            let Some(w) = sw.unverified().map(|s| s.work) else { return true };
                            !holding
                                .contains(format!("{}-{}-{}", w.instruction_id, w.phase.as_str(), w.attempt).as_str())
                        })
                        .cloned()
                        .collect()
                })
                .unwrap_or_default()
        };
        let work = if crate::fault("relay-replay") { r.replay(&target, work) } else { work };
        if !work.is_empty() {
            let work = if crate::fault("relay-forge-work") { forge(work) } else { work };
            return Json(convoy_wire::WorkResponse { work }).into_response();
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            _ => return Json(convoy_wire::WorkResponse { work: Vec::new() }).into_response(),
        }
    }
}

/// The relay's one long poll upstream for every agent polling it.
async fn site_loop(r: Shared) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let targets: Vec<convoy_wire::SiteTarget> = {
            let mut map = r.site.entries.lock().expect("site lock");
            map.retain(|_, e| e.seen.elapsed() < SITE_FORGET);
            map.iter().map(|(id, e)| convoy_wire::SiteTarget { id: id.clone(), gen: e.gen }).collect()
        };
        if targets.is_empty() {
            tokio::select! {
                _ = r.site.kick.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            continue;
        }
        let req = convoy_wire::SitePoll { epoch: r.site.epoch.lock().expect("epoch lock").clone(), wait: 25, targets };
        let call =
            r.origin.send_json::<_, convoy_wire::SitePollResponse>(reqwest::Method::POST, "/agent/site-poll", &req);
        tokio::select! {
            got = call => match got {
                Ok(resp) => {
                    backoff = Duration::from_millis(500);
                    r.site.failing.store(false, Ordering::Relaxed);
                    *r.site.epoch.lock().expect("epoch lock") = Some(resp.epoch);
                    let mut map = r.site.entries.lock().expect("site lock");
                    if !resp.refused.is_empty() {
                        let mut refused = r.site.refused.lock().expect("refused lock");
                        refused.retain(|_, t| t.elapsed() < SITE_FORGET);
                        for id in resp.refused {
                            tracing::info!(target_id = %id, "relay: the server says this agent is not of this site; not serving it");
                            if let Some(e) = map.remove(&id) {
                                e.tx.send_modify(|g| *g += 1);
                            }
                            refused.insert(id, Instant::now());
                        }
                    }
                    for t in resp.targets {
                        if let Some(e) = map.get_mut(&t.id) {
                            e.gen = t.gen;
                            e.work = t.work;
                            e.tx.send_modify(|g| *g += 1);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "relay: site poll failed; retrying");
                    // what it knew may be stale by the time it polls again
                    r.site.failing.store(true, Ordering::Relaxed);
                    *r.site.epoch.lock().expect("epoch lock") = None;
                    for e in r.site.entries.lock().expect("site lock").values_mut() {
                        e.gen = 0;
                        e.work.clear();
                        e.tx.send_modify(|g| *g += 1);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            },
            // a new agent: poll again with it included
            _ = r.site.kick.notified() => {}
        }
    }
}

/// Test hook (`CONVOY_AGENT_FAULT=relay-forge-work`): a hostile relay that
/// alters the work it passes on (another version, the signature kept) and
/// invents more (signed with a key of its own). Agents must refuse both.
fn forge(work: Vec<convoy_wire::sign::SignedWork>) -> Vec<convoy_wire::sign::SignedWork> {
    let mut out = Vec::new();
    for sw in work {
        let Some(mut st) = sw.unverified() else { continue };
        st.work.version = "6.6.6-forged".into();
        out.push(convoy_wire::sign::SignedWork {
            payload: serde_json::to_string(&st).expect("work serialises"),
            sig: sw.sig.clone(),
        });
        let own = convoy_wire::sign::ServerKey::from_secret(&convoy_wire::sign::ServerKey::generate().1)
            .expect("a fresh key");
        st.work.instruction_id = "i-invented".into();
        out.push(own.sign_work(&st.target, st.expires_at, st.work));
    }
    out
}

/// `GET /api/v1/relay/stats`: bytes served to agents and fetched upstream.
async fn stats(State(r): State<Shared>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "served_bytes": r.served.load(Ordering::Relaxed),
        "upstream_bytes": r.fetched.load(Ordering::Relaxed),
        "polls_served": r.site.polls.load(Ordering::Relaxed),
        "agents_polling": r.site.entries.lock().expect("site lock").len(),
    }))
}

pub fn router(relay: Shared) -> Router {
    let api = Router::new()
        .route("/health", get(|| async { Json(serde_json::json!({"status": "ok", "relay": true})) }))
        .route("/chunks/fetch", post(fetch))
        .route("/releases/{app}/{version}/manifest", get(proxy))
        .route("/releases/{app}/{version}/manifest.zst", get(proxy))
        .route("/releases/{app}/{version}/delta", get(proxy))
        .route("/releases/{app}/{version}/stream", get(proxy))
        .route("/agent/work", get(work))
        .route("/relay/stats", get(stats))
        .fallback(|| async { err(StatusCode::NOT_FOUND, "a relay serves content only; ask the server") });
    Router::new().nest(convoy_wire::API, api).with_state(relay)
}

/// Binds the relay's address and serves it in the background.
pub async fn start(cfg: &RelayConfig, relay: Shared) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("relay: binding {}: {e}", cfg.listen))?;
    tracing::info!(listen = %cfg.listen, url = %cfg.url, "relay serving its site");
    println!("convoy: relay serving {} on {}", cfg.url, cfg.listen);
    tokio::spawn(site_loop(relay.clone()));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(relay)).await {
            tracing::error!(error = %e, "relay stopped");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_plain_paths_and_from_go_upstream() {
        let ok = |u: &str| super::clean_path(&u.parse().unwrap());
        assert_eq!(ok("/releases/web/1.0/delta?from=0.9").as_deref(), Some("/releases/web/1.0/delta?from=0.9"));
        assert_eq!(ok("/releases/web/1.0/manifest").as_deref(), Some("/releases/web/1.0/manifest"));
        for bad in [
            "/releases/../agent/me",
            "/releases/web/1.0/delta?from=0.9&x=1",
            "/releases/web/1.0/delta?x=1",
            "/releases/w%2e/1/manifest",
            "/releases//1/manifest",
        ] {
            assert_eq!(ok(bad), None, "{bad}");
        }
    }
}
