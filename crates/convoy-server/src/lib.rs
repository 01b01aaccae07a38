//! `convoy server`: the HTTP API, the chunk store and the scheduler.
//!
//! Invariant: handlers never act on state they have not written first;
//! every transition goes through the store's compare-and-set.

// the OpenAPI document is one large `json!` literal
#![recursion_limit = "512"]

mod auth;
mod error;
mod metrics;
mod nats;
mod notify;
mod openapi;
mod reports;
mod routes;
pub mod scheduler;
mod state;
mod tls;
mod workflow;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use convoy_pack::ChunkStore;
use convoy_store::{hash_token, new_secret, Store, TokenKind, TokenRecord};
use tokio::net::TcpListener;

pub use state::AppState;

/// The server's configuration: flags, `CONVOY_*` environment variables, defaults.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Where the SQLite database and the chunk store live.
    pub data_dir: PathBuf,
    /// `postgres://...` or `sqlite://...`; default: SQLite in `data_dir`.
    pub database: Option<String>,
    /// Admin token to accept (stored hashed). Generated on first start if unset.
    pub admin_token: Option<Secret>,
    /// Agent enrolment token to accept. Generated on first start if unset.
    pub enrol_token: Option<Secret>,
    /// PEM certificate chain and private key: serve HTTPS instead of HTTP.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Mirrors agents may fetch content from (see `state::AppState::mirrors`).
    pub mirrors: Vec<String>,
    /// NATS server (`nats://HOST:PORT`) to take deployment requests from.
    pub nats: Option<String>,
    /// Subject those requests arrive on.
    pub nats_subject: String,
}

/// Default of [`ServerConfig::nats_subject`].
pub const DEFAULT_NATS_SUBJECT: &str = "convoy.deployments";

/// A secret that never shows in logs or debug output.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How often the last-seen times of polling targets are written.
const SEEN_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

/// Default request body limit; chunk uploads and manifests have their own.
const BODY_LIMIT: usize = 2 << 20;
const MANIFEST_LIMIT: usize = 64 << 20;
const CHUNK_LIMIT: usize = 1 << 20;

pub fn router(state: AppState) -> Router {
    use routes::*;
    let api = Router::new()
        .route("/health", get(|| async { Json(serde_json::json!({"status": "ok"})) }))
        .route("/openapi.json", get(|| async { Json(openapi::document()) }))
        .route("/chunks/missing", post(chunks::missing))
        .route("/chunks/fetch", post(chunks::fetch))
        .route("/chunks/{id}", put(chunks::upload).get(chunks::get).layer(DefaultBodyLimit::max(CHUNK_LIMIT)))
        .route("/releases", post(releases::publish).get(releases::list).layer(DefaultBodyLimit::max(MANIFEST_LIMIT)))
        .route("/releases/{app}/{version}", get(releases::get))
        .route("/releases/{app}/{version}/manifest", get(releases::manifest))
        .route("/releases/{app}/{version}/manifest.zst", get(deltas::manifest_zst))
        .route("/releases/{app}/{version}/delta", get(deltas::get))
        .route("/releases/{app}/{version}/changes", get(deltas::get_changes))
        .route("/targets", get(targets::list))
        .route("/targets/{id}", delete(targets::remove))
        .route("/deployments", post(deployments::create).get(deployments::list))
        .route("/deployments/{id}", get(deployments::get).patch(requests::revise))
        .route("/deployments/{id}/rollback", post(deployments::rollback))
        .route("/deployments/{id}/approve", post(requests::approve))
        .route("/deployments/{id}/reject", post(requests::reject))
        .route("/deployments/{id}/confirm", post(requests::confirm))
        .route("/deployments/{id}/cancel", post(requests::cancel))
        .route("/requests", get(requests::inbox))
        .route("/users", post(admin::add_user).get(admin::list_users))
        .route("/users/{name}", delete(admin::remove_user))
        .route("/envs", get(admin::list_envs))
        .route("/envs/{name}", put(admin::put_env).get(admin::get_env))
        .route("/audit", get(admin::audit))
        .route("/agent/enroll", post(agent::enroll))
        .route("/agent/work", get(agent::work))
        .route("/agent/report", post(agent::report))
        .route("/agent/progress", post(agent::progress))
        .route("/agent/inventory", put(agent::inventory))
        .route("/agent/me", get(agent::me))
        .route("/agent/site-poll", post(agent::site_poll))
        .fallback(|| async { error::ApiError::not_found("no such API route") });
    Router::new()
        .nest(convoy_wire::API, api)
        .route("/metrics", get(metrics::render))
        .fallback(|| async { error::ApiError::not_found("not found; the API lives under /api/v1") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// Serves on an already-bound listener until `shutdown` resolves, over
/// TLS when given an acceptor.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tokio::spawn(scheduler::run(state.clone()));
    if let Some(rx) = state.report_rx.lock().expect("report queue lock").take() {
        tokio::spawn(reports::run(state.clone(), rx));
    }
    if let Some((url, subject)) = &state.nats {
        tokio::spawn(nats::run(state.clone(), url.clone(), subject.clone()));
    }
    let flusher = state.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(SEEN_FLUSH).await;
            if let Err(e) = flusher.flush_seen().await {
                tracing::warn!(error = %e, "recording last-seen times failed");
            }
        }
    });
    let stopping = state.stopping.clone();
    let shutdown = async move {
        shutdown.await;
        // end long polls now rather than when they time out
        stopping.send_replace(true);
    };
    let app = router(state);
    match tls {
        Some(acceptor) => axum::serve(tls::TlsListener::new(listener, acceptor)?, app)
            .with_graceful_shutdown(shutdown)
            .await
            .context("serving HTTPS"),
        None => axum::serve(listener, app).with_graceful_shutdown(shutdown).await.context("serving HTTP"),
    }
}

pub async fn open_store(config: &ServerConfig) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match config.database.as_deref() {
        None => {
            let path = config.data_dir.join("convoy.db");
            Arc::new(
                convoy_store_sqlite::SqliteStore::open(&path)
                    .await
                    .with_context(|| format!("opening {}", path.display()))?,
            )
        }
        Some(url) if url.starts_with("sqlite:") => {
            Arc::new(convoy_store_sqlite::SqliteStore::open_url(url).await.context("opening SQLite database")?)
        }
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Arc::new(convoy_store_postgres::PgStore::connect(url, None).await.context("connecting to PostgreSQL")?)
        }
        Some(other) => {
            anyhow::bail!("unsupported database URL {other:?}: use postgres://... or sqlite://...")
        }
    })
}

/// Stores the configured tokens, or on first start makes and prints new ones.
async fn bootstrap_tokens(store: &dyn Store, config: &ServerConfig) -> anyhow::Result<()> {
    for (kind, given, subject, what) in [
        (TokenKind::Admin, &config.admin_token, "admin", "admin token"),
        (TokenKind::Enrol, &config.enrol_token, "enrolment", "agent enrolment token"),
    ] {
        let secret = match given {
            Some(Secret(t)) if t.len() < 16 => anyhow::bail!("the {what} must be at least 16 characters"),
            Some(Secret(t)) => t.clone(),
            None if store.count_tokens(kind).await? > 0 => continue,
            None => {
                let t = new_secret();
                println!("convoy: {what} (shown once, stored hashed): {t}");
                t
            }
        };
        store
            .put_token(&TokenRecord {
                hash: hash_token(&secret),
                kind,
                subject: subject.into(),
                created_at: state::now_ms(),
            })
            .await?;
    }
    Ok(())
}

/// Runs the server until Ctrl-C or SIGTERM.
pub async fn run(config: ServerConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
    let tls = config.tls.as_ref().map(|(cert, key)| tls::acceptor(cert, key)).transpose()?;
    let store = open_store(&config).await?;
    bootstrap_tokens(store.as_ref(), &config).await?;
    let chunks = ChunkStore::open(config.data_dir.join("chunks")).context("opening the chunk store")?;
    let listener = TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, backend = store.backend(), data_dir = %config.data_dir.display(), "convoy server listening");
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!(
        "convoy: server listening on {scheme}://{addr} ({} database, data in {})",
        store.backend(),
        config.data_dir.display()
    );
    let deltas = routes::deltas::Deltas::open(config.data_dir.join("deltas")).context("opening the delta store")?;
    for m in &config.mirrors {
        let plain = m.strip_prefix("store+").unwrap_or(m);
        if !(plain.starts_with("http://") || plain.starts_with("https://")) || m.len() > 256 {
            anyhow::bail!("mirror {m:?}: expected http(s)://HOST:PORT or store+http(s)://HOST/PATH");
        }
    }
    if let Some(url) = &config.nats {
        nats::check(url, &config.nats_subject)?;
    }
    let mut state = AppState::new(store, chunks, deltas);
    state.mirrors = Arc::new(config.mirrors.clone());
    state.nats = config.nats.clone().map(|u| (u, config.nats_subject.clone()));
    state.load_relays().await.context("loading the relay directory")?;
    serve(listener, state, tls, shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("installing SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}
