//! `convoy server`: the HTTP API, the chunk store and the scheduler.
//!
//! Invariant: handlers never act on state they have not written first;
//! every transition goes through the store's compare-and-set.

// the OpenAPI document is one large `json!` literal
#![recursion_limit = "512"]

mod app;
mod auth;
mod bus;
mod console;
pub mod ddi;
mod error;
mod limit;
mod metrics;
mod nats;
mod notify;
pub mod objects;
mod openapi;
mod routes;
pub mod scheduler;
mod serve;
mod state;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, patch, post, put};
use axum::{Json, Router};
use convoy_pack::ChunkStore;
use convoy_store::{hash_token, new_id, new_secret, EnrolTokenRecord, EventRecord, Store, TokenKind, TokenRecord};
use tokio::net::TcpListener;

pub use app::content::{DELTA_CACHE_MIB, DELTA_FROM_LAST};
pub use limit::{DEFAULT_PER_ADDRESS as DEFAULT_ENROL_RATE_ADDRESS, DEFAULT_PER_TOKEN as DEFAULT_ENROL_RATE_TOKEN};
pub use state::AppState;

/// The server's configuration: flags, `CONVOY_*` environment variables, defaults.
#[derive(Clone)]
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
    /// Enrolments allowed per minute per enrolment token, and per source
    /// address (0: unlimited).
    pub enrol_rate_token: u32,
    pub enrol_rate_address: u32,
    /// File holding the secret that seals the server's signing key in the
    /// database [default: DATA_DIR/key-secret]; the same on every server
    /// sharing a database.
    pub key_secret_file: Option<PathBuf>,
    /// Deltas to a new release are made at publish from this many of the
    /// app's releases before it (and from every version the fleet runs).
    pub delta_from_last: usize,
    /// MiB of deltas and first-install streams kept in DATA_DIR/deltas
    /// (the oldest are removed first).
    pub delta_cache_mib: u64,
    /// `redis://HOST:PORT`: servers sharing a database share poll-cache
    /// invalidations and wake-ups through it.
    pub cache: Option<String>,
    /// Chunks in an S3-compatible object store instead of DATA_DIR/chunks.
    pub objects: Option<objects::S3Config>,
    /// The tenant of the DDI endpoint (`/{tenant}/controller/v1/...`).
    pub ddi_tenant: String,
    /// Seconds DDI devices are told to wait between polls.
    pub ddi_poll_secs: u64,
}

/// Shows no secret: tokens are `Secret`s, the S3 secret key is masked,
/// and the cache URL's password is left out.
impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cache = self.cache.as_deref().map(without_password);
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("database", &self.database.as_deref().map(without_password))
            .field("admin_token", &self.admin_token)
            .field("enrol_token", &self.enrol_token)
            .field("tls", &self.tls)
            .field("mirrors", &self.mirrors)
            .field("nats", &self.nats.as_deref().map(without_password))
            .field("nats_subject", &self.nats_subject)
            .field("enrol_rate_token", &self.enrol_rate_token)
            .field("enrol_rate_address", &self.enrol_rate_address)
            .field("key_secret_file", &self.key_secret_file)
            .field("delta_from_last", &self.delta_from_last)
            .field("delta_cache_mib", &self.delta_cache_mib)
            .field("cache", &cache)
            .field("objects", &self.objects)
            .field("ddi_tenant", &self.ddi_tenant)
            .field("ddi_poll_secs", &self.ddi_poll_secs)
            .finish()
    }
}

/// A URL with any `user:password@` reduced to `user:***@`.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (auth, host) = match rest.split_once('@') {
        Some((a, h)) if !a.contains('/') => (a, h),
        _ => return url.to_owned(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod debug_tests {
    #[test]
    fn config_debug_shows_no_secret() {
        let c = super::ServerConfig {
            listen: "127.0.0.1:1".parse().unwrap(),
            data_dir: "d".into(),
            database: Some("postgres://convoy:dbpass@db/convoy".into()),
            admin_token: Some(super::Secret("admin-secret-token".into())),
            enrol_token: None,
            tls: None,
            mirrors: Vec::new(),
            nats: None,
            nats_subject: String::new(),
            enrol_rate_token: 0,
            enrol_rate_address: 0,
            key_secret_file: None,
            delta_from_last: 0,
            delta_cache_mib: 0,
            cache: Some("redis://:redispass@127.0.0.1:6379".into()),
            objects: Some(crate::objects::S3Config {
                url: "s3://b".into(),
                secret_access_key: Some("s3secret".into()),
                ..Default::default()
            }),
            ddi_tenant: "DEFAULT".into(),
            ddi_poll_secs: 60,
        };
        let text = format!("{c:?}");
        for secret in ["dbpass", "admin-secret-token", "redispass", "s3secret"] {
            assert!(!text.contains(secret), "{secret} shows in {text}");
        }
        assert!(text.contains("postgres://convoy:***@db/convoy"), "{text}");
    }
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
        .route("/releases/{app}/{version}/stream", get(deltas::stream))
        .route("/releases/{app}/{version}/sync", post(deltas::sync).layer(DefaultBodyLimit::max(8 << 20)))
        .route("/releases/{app}/{version}/changes", get(deltas::get_changes))
        .route("/targets", get(targets::list))
        .route("/targets/{id}", get(targets::get).delete(targets::remove))
        .route("/targets/{id}/labels", patch(trust::label))
        .route("/relays", get(trust::list_relays))
        .route("/relays/{id}", put(trust::grant_relay).delete(trust::revoke_relay))
        .route("/enrol-tokens", post(trust::create_enrol_token).get(trust::list_enrol_tokens))
        .route("/enrol-tokens/{id}", delete(trust::revoke_enrol_token))
        .route("/users/{name}/token", post(trust::rotate_user_token))
        .route("/deployments", post(deployments::create).get(deployments::list))
        .route("/deployments/{id}", get(deployments::get).patch(requests::revise))
        .route("/deployments/{id}/rollback", post(deployments::rollback))
        .route("/deployments/{id}/pause", post(deployments::pause))
        .route("/deployments/{id}/retry", post(deployments::retry))
        .route("/deployments/{id}/resume", post(deployments::resume))
        .route("/deployments/{id}/approve", post(requests::approve))
        .route("/deployments/{id}/statement", get(requests::statement))
        .route("/deployments/{id}/reject", post(requests::reject))
        .route("/deployments/{id}/confirm", post(requests::confirm))
        .route("/deployments/{id}/cancel", post(requests::cancel))
        .route("/requests", get(requests::inbox))
        .route("/users", post(admin::add_user).get(admin::list_users))
        .route("/users/{name}", delete(admin::remove_user))
        .route("/users/{name}/keys", post(admin::add_user_key).get(admin::user_keys))
        .route("/envs/{name}/approvers", get(admin::approvers))
        .route("/envs", get(admin::list_envs))
        .route("/envs/{name}", put(admin::put_env).get(admin::get_env))
        .route("/audit", get(admin::audit))
        .route("/ddi/targets", post(crate::ddi::create_target))
        .route("/agent/enroll", post(agent::enroll))
        .route("/agent/work", get(agent::work))
        .route("/agent/report", post(agent::report))
        .route("/agent/progress", post(agent::progress))
        .route("/agent/inventory", put(agent::inventory))
        .route("/agent/me", get(agent::me))
        .route("/agent/site-poll", post(agent::site_poll))
        .route("/agent/refused", post(agent::refused))
        .route("/tuf/metadata/{file}", get(tuf::metadata))
        .route("/tuf/root", put(tuf::put_root))
        .route("/tuf/targets", put(tuf::put_targets))
        .route("/tuf/delegated/{role}", put(tuf::put_delegated))
        .route("/tuf/delegations/{role}", put(tuf::put_delegation))
        .route("/tuf/targets/{app}/{version}/{file}", get(tuf::target))
        .fallback(|| async { error::ApiError::not_found("no such API route") });
    Router::new()
        .nest(convoy_wire::API, api)
        .route("/metrics", get(metrics::render))
        .merge(console::router())
        .merge(ddi::router())
        .fallback(|| async { error::ApiError::not_found("not found; the API lives under /api/v1") })
        .layer(metrics::Track(state.counters.clone()))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// Hands the memory freed since the last call back to the system. glibc
/// keeps what a burst freed (thousands of held polls waking, a deployment
/// to a big fleet made) inside its heaps, so without this a server at rest
/// stays as big as its busiest moment. Called every 10 s; it takes a few
/// milliseconds on a blocking thread.
async fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    let _ = tokio::task::spawn_blocking(|| {
        // SAFETY: malloc_trim takes no pointers and is thread-safe (it
        // locks each arena while it returns that arena's free pages).
        unsafe { libc::malloc_trim(0) }
    })
    .await;
}

/// Tunes glibc's malloc for a server process, before its threads start.
///
/// - Arenas are capped at two (by default up to eight per core): the
///   threads share fewer heaps, so what one burst frees is reused by the
///   next instead of sitting in another thread's arena, and
///   [`release_free_memory`] has less to do.
/// - Blocks of 128 KiB and more are always mapped on their own (glibc
///   raises that threshold by default each time such a block is freed, up
///   to 32 MiB). The blocks this concerns are few and big (the poll
///   cache's tables as they grow, a deployment's instruction list), and
///   each goes back to the system when freed instead of leaving a hole in
///   a heap that SQLite's small blocks then fill and pin.
///
/// An operator's `MALLOC_ARENA_MAX` / `MALLOC_MMAP_THRESHOLD_` (or the same in
/// `GLIBC_TUNABLES`) stand.
pub fn tune_c_malloc() {
    // the operator's setting, as a variable or a glibc tunable, stands
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    let set_by_operator = |var: &str, tunable: &str| {
        std::env::var_os(var).is_some()
            || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains(&format!("glibc.malloc.{tunable}=")))
    };
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if !set_by_operator("MALLOC_ARENA_MAX", "arena_max") {
        #[allow(unsafe_code)]
        // SAFETY: mallopt takes two integers; it is called before the
        // runtime's threads exist
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if !set_by_operator("MALLOC_MMAP_THRESHOLD_", "mmap_threshold") {
        #[allow(unsafe_code)]
        // SAFETY: as above
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
        }
    }
}

/// Serves on an already-bound listener until `shutdown` resolves, over
/// TLS when given an acceptor.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // not known to be alone on the database until the scheduler (or the
    // cache bus) has looked
    state.cache.set_exact(false);
    state.set_alone(false);
    tokio::spawn(scheduler::run(state.clone()));
    tokio::spawn(app::tuf::renew_forever(state.clone()));
    if let Some(rx) = state.report_rx.lock().expect("report queue lock").take() {
        tokio::spawn(app::reports::run(state.clone(), rx));
    }
    if let Some((url, subject)) = &state.nats {
        tokio::spawn(nats::run(state.clone(), url.clone(), subject.clone()));
    }
    let flusher = state.clone();
    tokio::spawn(async move {
        for tick in 1u64.. {
            tokio::time::sleep(SEEN_FLUSH).await;
            if tick % 15 == 0 {
                if let Err(e) = flusher.refresh_sites().await {
                    tracing::warn!(error = %e, "re-reading target sites failed");
                }
            }
            if tick % 5 == 0 {
                release_free_memory().await;
            }
            if let Err(e) = flusher.flush_seen().await {
                tracing::warn!(error = %e, "recording last-seen times failed");
            }
            // grants made through another server on the database
            if let Err(e) = flusher.refresh_relays().await {
                tracing::warn!(error = %e, "re-reading relay grants failed");
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
    // the accept loop runs as a task on the runtime's threads, not on the
    // thread that called (the process's main thread, which would be a
    // third thread on two cores, and one that never gives back memory it
    // freed while idle: `on_thread_park` runs on the runtime's own)
    let accepting = match tls {
        Some(acceptor) => {
            let listener = tls::TlsListener::new(listener, acceptor)?;
            tokio::spawn(async move { serve::serve(listener, app, shutdown).await.context("serving HTTPS") })
        }
        None => tokio::spawn(async move { serve::serve(listener, app, shutdown).await.context("serving HTTP") }),
    };
    // dropping this future stops the loop, as when it ran here
    let _stop = AbortOnDrop(accepting.abort_handle());
    accepting.await.context("the accept loop stopped")?
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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

/// Stores the configured tokens, or on first start makes and prints new
/// ones. A configured token the server has not seen replaces (revokes) the
/// previous one of its kind: changing the config rotates it. A configured
/// token that was revoked stays revoked.
/// Makes or replaces the configured admin and enrolment tokens; returns
/// whether it wrote any (other servers' caches must then drop theirs: it
/// runs before this server joins the cache bus).
async fn bootstrap_tokens(store: &dyn Store, config: &ServerConfig) -> anyhow::Result<bool> {
    let now = state::now_ms();
    let mut wrote = false;
    // the first administrator
    match &config.admin_token {
        Some(Secret(t)) if t.len() < 16 => anyhow::bail!("the admin token must be at least 16 characters"),
        Some(Secret(t)) => match store.find_token(&hash_token(t)).await? {
            Some(rec) if rec.revoked_at.is_some() => {
                tracing::warn!(note = %rec.revoked_note, "the configured admin token was revoked; it stays revoked: configure a new one or use a rotated token");
            }
            Some(_) => {}
            None => {
                let ev = EventRecord::audit(
                    "server",
                    "token_rotated",
                    "admin's admin token, from the configuration".into(),
                    now,
                );
                let n = store
                    .rotate_token(
                        &TokenRecord::new(t, TokenKind::Admin, "admin", now),
                        "replaced by a new admin token in the configuration",
                        &ev,
                    )
                    .await?;
                wrote = true;
                if n > 0 {
                    println!("convoy: the configured admin token replaces the previous one, which no longer works");
                }
            }
        },
        None if store.count_tokens(TokenKind::Admin).await? > 0 => {}
        None => {
            let t = new_secret();
            store.put_token(&TokenRecord::new(&t, TokenKind::Admin, "admin", now)).await?;
            wrote = true;
            println!("convoy: admin token (shown once, stored hashed): {t}");
        }
    }
    // the bootstrap enrolment token: no label scope, no expiry
    let secret = match &config.enrol_token {
        Some(Secret(t)) if t.len() < 16 => anyhow::bail!("the agent enrolment token must be at least 16 characters"),
        Some(Secret(t)) => match store.find_token(&hash_token(t)).await? {
            Some(rec) if rec.revoked_at.is_some() => {
                tracing::warn!("the configured enrolment token was revoked; it stays revoked (convoy enrol-tokens create makes new ones)");
                None
            }
            Some(_) => None,
            None => Some((t.clone(), false)),
        },
        None if store.count_tokens(TokenKind::Enrol).await? > 0 || !store.list_enrol_tokens().await?.is_empty() => None,
        None => Some((new_secret(), true)),
    };
    if let Some((t, print)) = secret {
        let by = if print { "first-start" } else { "config" };
        let rec = EnrolTokenRecord {
            id: new_id("e"),
            labels_json: None,
            expires_at: None,
            max_uses: None,
            uses: 0,
            created_by: by.into(),
            created_at: now,
            revoked_at: None,
        };
        let ev = EventRecord::audit(
            "server",
            "enrol_token_created",
            format!("{}: bootstrap enrolment token ({by})", rec.id),
            now,
        );
        store.create_enrol_token(&rec, &TokenRecord::new(&t, TokenKind::Enrol, &rec.id, now), &ev).await?;
        wrote = true;
        // servers starting together: whichever record holds the secret stands
        let current = store.find_token(&hash_token(&t)).await?.map(|r| r.subject).unwrap_or(rec.id.clone());
        // the configuration's earlier tokens are replaced
        for old in store.list_enrol_tokens().await? {
            let bootstrap = matches!(old.created_by.as_str(), "config" | "first-start" | "bootstrap");
            if old.revoked_at.is_none() && bootstrap && old.id != current {
                let ev = EventRecord::audit(
                    "server",
                    "enrol_token_revoked",
                    format!("{}: replaced by a new enrolment token in the configuration", old.id),
                    now,
                );
                if store.revoke_enrol_token(&old.id, &ev).await? && old.id != rec.id {
                    println!(
                        "convoy: enrolment token {} replaced by the configured one; it no longer enrols agents",
                        old.id
                    );
                }
            }
        }
        if print {
            println!("convoy: agent enrolment token (shown once, stored hashed): {t}");
        }
    }
    Ok(wrote)
}

/// The server's work-signing key: made on first start and kept in the
/// database encrypted under the key secret (a file outside the database),
/// so every server sharing the database and the key secret signs with the
/// same key, and a copy of the database alone signs nothing.
pub async fn server_key(store: &dyn Store, kek: &[u8; 32]) -> anyhow::Result<convoy_wire::sign::ServerKey> {
    use convoy_wire::sign::{open_secret, seal_secret, ServerKey};
    let (public, secret) = ServerKey::generate();
    let (public, sealed) = store.server_key("work", (public, seal_secret(kek, &secret)), state::now_ms()).await?;
    let secret = open_secret(kek, &sealed).ok_or_else(|| {
        anyhow::anyhow!(
            "the server's signing key in the database was sealed with another key secret: give every server on this database the same key secret file (key_secret_file)"
        )
    })?;
    let key = ServerKey::from_secret(&secret).context("the stored server key is corrupt")?;
    anyhow::ensure!(key.public_hex() == public, "the stored server key does not match its public half");
    Ok(key)
}

/// The key secret: 32 bytes (hex) in a file only the server reads, made on
/// first start if missing.
pub fn key_secret(path: &std::path::Path) -> anyhow::Result<[u8; 32]> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mode = std::fs::metadata(path)?.permissions().mode();
            if mode & 0o077 != 0 {
                anyhow::bail!(
                    "key secret file {} is readable by others (mode {:o}); chmod 600 it",
                    path.display(),
                    mode & 0o777
                );
            }
            let bytes = hex::decode(text.trim()).ok().filter(|b| b.len() == 32).ok_or_else(|| {
                anyhow::anyhow!("key secret file {} must hold 64 hex digits (32 bytes)", path.display())
            })?;
            Ok(bytes.try_into().expect("32 bytes"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret: [u8; 32] = rand::random();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("creating key secret file {}", path.display()))?;
            f.write_all(hex::encode(secret).as_bytes())?;
            f.sync_all()?;
            println!(
                "convoy: made the key secret {} (back it up; servers sharing a database need the same one)",
                path.display()
            );
            Ok(secret)
        }
        Err(e) => Err(anyhow::anyhow!("reading key secret file {}: {e}", path.display())),
    }
}

/// The address a request came from (for enrolment rate limits and audit).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Runs the server until Ctrl-C or SIGTERM.
pub async fn run(config: ServerConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
    let tls = config.tls.as_ref().map(|(cert, key)| tls::acceptor(cert, key)).transpose()?;
    let store = open_store(&config).await?;
    let wrote_tokens = bootstrap_tokens(store.as_ref(), &config).await?;
    let chunks = match &config.objects {
        None => ChunkStore::open(config.data_dir.join("chunks")).context("opening the chunk store")?,
        Some(c) => {
            let remote = std::sync::Arc::new(objects::S3Chunks::open(c)?);
            // reach it now: a wrong endpoint, bucket or key is told at start
            let probe = remote.clone();
            tokio::task::spawn_blocking(move || convoy_pack::Remote::head(probe.as_ref(), "chunks/.probe"))
                .await?
                .with_context(|| format!("reaching the object store {}", c.url))?;
            ChunkStore::remote(remote)
        }
    };
    let listener = TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, backend = store.backend(), data_dir = %config.data_dir.display(), "convoy server listening");
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!(
        "convoy: server listening on {scheme}://{addr} ({} database, data in {}, chunks in {})",
        store.backend(),
        config.data_dir.display(),
        chunks.describe()
    );
    let mut deltas = app::content::Deltas::open(config.data_dir.join("deltas")).context("opening the delta store")?;
    deltas.from_last = config.delta_from_last;
    deltas.max_bytes = config.delta_cache_mib.saturating_mul(1 << 20);
    for m in &config.mirrors {
        let plain = m.strip_prefix("store+").unwrap_or(m);
        if !(plain.starts_with("http://") || plain.starts_with("https://")) || m.len() > 256 {
            anyhow::bail!("mirror {m:?}: expected http(s)://HOST:PORT or store+http(s)://HOST/PATH");
        }
    }
    if let Some(url) = &config.nats {
        nats::check(url, &config.nats_subject)?;
    }
    let kek_path = config.key_secret_file.clone().unwrap_or_else(|| config.data_dir.join("key-secret"));
    let kek = key_secret(&kek_path)?;
    let key = server_key(store.as_ref(), &kek).await?;
    let repo = app::tuf::Repo::open(store.as_ref(), &kek).await.context("opening the TUF repository")?;
    let mut state = AppState::new(store, chunks, deltas, key);
    let _ = state.tuf.set(repo);
    state.setup().enrol_limits = Arc::new(limit::Limits::new(config.enrol_rate_token, config.enrol_rate_address));
    state.setup().mirrors = Arc::new(config.mirrors.clone());
    state.setup().tls = config.tls.is_some();
    state.setup().ddi = Arc::new(ddi::Ddi::new(config.ddi_tenant.clone(), config.ddi_poll_secs));
    state.setup().nats = config.nats.clone().map(|u| (u, config.nats_subject.clone()));
    state.load_relays().await.context("loading the relay directory")?;
    if let Some(url) = &config.cache {
        let bus = bus::start(&state, url)?;
        let (b, origin) = (bus.clone(), state.epoch.clone());
        state.cache.set_notify(Box::new(move |t| b.publish(&origin, 'i', t)));
        if wrote_tokens {
            // written before this server was on the bus: the others drop
            // everything they cached (a replaced token stops working now)
            bus.publish(&state.epoch, 'i', None);
        }
        let _ = state.bus.set(bus);
    }
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
