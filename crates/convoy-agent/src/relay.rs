//! `convoy agent --relay`: serves chunks, release deltas and manifests to
//! the other agents of its site (P-hierarchy), so a site's slow line
//! carries each object once.
//!
//! - Chunks: each is fetched once from upstream (the server or a parent
//!   relay), verified, cached, and streamed to every agent waiting for it
//!   as soon as it lands; agents asking meanwhile wait for the same fetch.
//! - Deltas and manifests (immutable for a given URL, because releases are
//!   immutable) are fetched once and kept under `ROOT/.convoy/relay/`.
//! - Callers must hold an agent token that upstream accepts (checked once
//!   per token and remembered for a few minutes).
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
use convoy_wire::ChunkIds;
use tokio::sync::watch;

use crate::RelayConfig;

/// How long a checked agent token is trusted without asking upstream.
const TOKEN_TTL: Duration = Duration::from_secs(300);
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
    cache: ChunkStore,
    objects: PathBuf,
    inflight: std::sync::Mutex<HashMap<ChunkId, watch::Receiver<Fetch>>>,
    proxied: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    tokens: std::sync::Mutex<HashMap<[u8; 32], Instant>>,
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
    pub fn new(cfg: &RelayConfig, upstream: Client, cache: ChunkStore, root: &std::path::Path) -> anyhow::Result<Self> {
        let upstream = match &cfg.upstream {
            Some(u) => upstream.with_base(u)?,
            None => upstream,
        };
        let objects = crate::state_dir(root).join("relay");
        std::fs::create_dir_all(&objects)?;
        Ok(Self {
            upstream,
            cache,
            objects,
            inflight: Default::default(),
            proxied: Default::default(),
            tokens: Default::default(),
            served: AtomicU64::new(0),
            fetched: AtomicU64::new(0),
        })
    }

    /// Accepts a caller whose agent token upstream knows.
    async fn check(&self, headers: &HeaderMap) -> Result<(), Response> {
        let token = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .filter(|t| !t.is_empty() && t.len() <= 256)
            .ok_or_else(|| err(StatusCode::UNAUTHORIZED, "missing Authorization: Bearer <agent token>"))?;
        let key = *blake3::hash(token.as_bytes()).as_bytes();
        if self.tokens.lock().expect("tokens lock").get(&key).is_some_and(|t| t.elapsed() < TOKEN_TTL) {
            return Ok(());
        }
        let who = self.upstream.with_token(token);
        match who.get_json::<serde_json::Value>("/agent/me", Duration::from_secs(30)).await {
            Ok(_) => {
                let mut map = self.tokens.lock().expect("tokens lock");
                map.retain(|_, t| t.elapsed() < TOKEN_TTL);
                map.insert(key, Instant::now());
                Ok(())
            }
            Err(e) if convoy_client::is_permanent(&e) => {
                Err(err(StatusCode::UNAUTHORIZED, "upstream does not accept this agent token"))
            }
            Err(e) => Err(err(StatusCode::BAD_GATEWAY, &format!("upstream unreachable: {e:#}"))),
        }
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
    if let Err(resp) = r.check(&headers).await {
        return resp;
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
    if let Err(resp) = r.check(req.headers()).await {
        return resp;
    }
    // inside the nested API router the path comes without the API prefix
    let Some(path) = req.uri().path_and_query().map(|p| p.as_str().to_owned()) else {
        return err(StatusCode::BAD_REQUEST, "no path");
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

/// `GET /api/v1/agent/me`: passed upstream with the caller's token, so
/// relays chain.
async fn me(State(r): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(resp) = r.check(&headers).await {
        return resp;
    }
    Json(serde_json::json!({"relay": true})).into_response()
}

/// `GET /api/v1/relay/stats`: bytes served to agents and fetched upstream.
async fn stats(State(r): State<Shared>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "served_bytes": r.served.load(Ordering::Relaxed),
        "upstream_bytes": r.fetched.load(Ordering::Relaxed),
    }))
}

pub fn router(relay: Shared) -> Router {
    let api = Router::new()
        .route("/health", get(|| async { Json(serde_json::json!({"status": "ok", "relay": true})) }))
        .route("/chunks/fetch", post(fetch))
        .route("/releases/{app}/{version}/manifest", get(proxy))
        .route("/releases/{app}/{version}/manifest.zst", get(proxy))
        .route("/releases/{app}/{version}/delta", get(proxy))
        .route("/agent/me", get(me))
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
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(relay)).await {
            tracing::error!(error = %e, "relay stopped");
        }
    });
    Ok(())
}
