//! `convoy agent`: enrols, reports inventory, long-polls for work, stages
//! releases into `ROOT/releases/APP/VERSION/`, switches `ROOT/current/APP`,
//! runs hooks and health checks, and reports what it finds on its own disk.
//!
//! Invariants: nothing is installed that was not verified by hash; the live
//! link `ROOT/current/APP` only ever changes by an atomic rename; every
//! report is journaled before it is sent, so a restart re-sends, not redoes.

mod activate;

mod hooks;
mod inventory;
mod journal;
mod preflight;
mod prune;
mod relay;
pub mod seed;
mod stage;
mod tuf;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use convoy_wire::{EnrollRequest, EnrollResponse, Labels, Phase, Report, ReportKind, Work, WorkResponse};
use serde::{Deserialize, Serialize};

use convoy_client::{self as client, Client};

/// The agent's configuration (flags and `CONVOY_*` environment variables).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Server base URL, e.g. `http://127.0.0.1:7420`.
    pub server: String,
    /// Enrolment token; only needed until the agent has its own credential.
    pub token: Option<String>,
    /// PEM certificate authorities to trust for an `https://` server.
    pub ca_cert: Option<PathBuf>,
    /// Root directory: `releases/`, `current/`, and the agent's `.convoy/` state.
    pub root: PathBuf,
    pub labels: Labels,
    /// Name reported instead of the machine's hostname.
    pub name: Option<String>,
    /// Download rate limit in bytes per second.
    pub max_rate: Option<u64>,
    /// Seconds a work poll is held open by the server.
    pub poll_wait: u64,
    /// Releases kept on disk per app (besides the live one and its rollback target).
    pub keep_releases: usize,
    /// Memory staging may use, in bytes: a release delta needing more
    /// (`convoy_pack::delta_memory`) is fetched as chunks; 0 turns deltas off.
    pub max_memory: u64,
    /// Serve this site's agents as a relay.
    pub relay: Option<RelayConfig>,
    /// Long-poll this relay for work instead of the server (reports still
    /// go to the server); the server is polled while the relay is down.
    pub poll_via: Option<String>,
    /// Disk space (bytes) preflight keeps free for the machine's own use:
    /// a release fits only in the free space beyond it.
    pub reserve_disk: u64,
    /// The TUF root to trust; `None`: the server's, as of enrolment.
    pub trust_root: Option<PathBuf>,
    /// The environment this machine belongs to: only its deployments are
    /// taken, each with its approvers' signatures where the signed TUF
    /// targets name approvers for it.
    pub environment: Option<String>,
}

/// `--relay`: the agent also serves chunks, deltas and manifests to the
/// other agents of its site, fetching each once from its upstream.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Address to listen on.
    pub listen: std::net::SocketAddr,
    /// URL the site's agents reach it at (told to them by the server).
    pub url: String,
    /// Parent relay to fetch from instead of the server (relays chain).
    pub upstream: Option<String>,
}

/// Default of [`AgentConfig::max_memory`].
pub const DEFAULT_MAX_MEMORY: u64 = 512 << 20;

/// The agent's own credential, kept in `ROOT/.convoy/agent.json` (mode 0600).
#[derive(Serialize, Deserialize)]
struct Credentials {
    server: String,
    target_id: String,
    token: String,
    /// The server's public key (hex ed25519), learnt from the server itself
    /// at enrolment; work that does not verify against it is refused.
    #[serde(default)]
    server_key: Option<String>,
}

pub(crate) fn state_dir(root: &Path) -> PathBuf {
    root.join(".convoy")
}

/// Test hooks for fault injection, read from `CONVOY_AGENT_FAULT`:
/// `tamper-once` alters one staged file once, after assembly and before
/// hashing, as silent disk corruption would; the consistency gate must catch it.
/// `tamper-always` does so on every staging, so the gate must give up on the target.
pub(crate) fn fault(name: &str) -> bool {
    std::env::var("CONVOY_AGENT_FAULT").is_ok_and(|v| v.split(',').any(|f| f == name))
}

pub struct Agent {
    cfg: AgentConfig,
    client: Client,
    /// The server's public key: all work must verify against it.
    server_key: String,
    /// The read grant shown to relays and mirrors instead of the credential.
    grant: client::GrantCell,
    /// Trusted TUF metadata: what is staged or switched to must be in it.
    tuf: Arc<tuf::TufClient>,
    /// The server's clock minus this machine's (ms), learnt from the
    /// server: expiries are checked in the server's time.
    skew: Skew,
    /// `poll_via`'s client, and until when the relay is not asked after it failed.
    via: Option<(Client, std::sync::Mutex<Option<std::time::Instant>>)>,
    target_id: String,
    /// Work taken up and still under way (`journal::key`s); told to the
    /// server with each poll so it is not sent again.
    held: std::sync::Mutex<HashSet<String>>,
    /// Relayed work the server said is no longer pending (`journal::key`s):
    /// a relay replaying it is not asked about again.
    withdrawn: std::sync::Mutex<HashSet<String>>,
    /// One lock per app: work on an app never overlaps (a rollback waits
    /// for an activation that has begun), work on different apps may.
    app_locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// The server's clock minus this machine's, in ms.
pub(crate) type Skew = Arc<std::sync::atomic::AtomicI64>;

/// Now, by the server's clock as last learnt.
pub(crate) fn server_now(skew: &Skew) -> i64 {
    activate::now_ms() + skew.load(std::sync::atomic::Ordering::Relaxed)
}

/// Longest work answer taken from a relay.
const MAX_WORK_BYTES: usize = 8 << 20;

/// Activations planned further ahead than this wait in their own task, so
/// the agent keeps staging and serving other work meanwhile.
const DEFER_MS: i64 = 1_000;
/// How long an agent polls the server after its `poll_via` relay failed.
const VIA_RETRY: Duration = Duration::from_secs(60);
/// How long before go-live an activation re-checks that it still stands.
const CHECK_BEFORE_MS: i64 = 2_000;
/// How often a staging agent asks whether its work still stands.
const WITHDRAWN_CHECK: Duration = Duration::from_secs(2);

impl Agent {
    /// Loads the agent's credential or enrols with the enrolment token.
    pub async fn start(mut cfg: AgentConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(state_dir(&cfg.root)).with_context(|| format!("creating {}", cfg.root.display()))?;
        // hooks run inside release directories: give them an absolute root
        cfg.root = std::fs::canonicalize(&cfg.root).with_context(|| format!("resolving {}", cfg.root.display()))?;
        let cred_path = state_dir(&cfg.root).join("agent.json");
        let base = Client::new(&cfg.server, cfg.token.as_deref().unwrap_or(""), cfg.ca_cert.as_deref())?;
        let creds = match std::fs::read(&cred_path) {
            Ok(b) => {
                serde_json::from_slice::<Credentials>(&b).with_context(|| format!("reading {}", cred_path.display()))?
            }
            Err(_) => {
                let Some(token) = cfg.token.as_deref() else {
                    anyhow::bail!("this agent is not enrolled yet: pass --token with the server's enrolment token");
                };
                let inv = inventory::collect(&cfg);
                let enrol = base.with_token(token);
                let req = EnrollRequest { inventory: inv };
                let resp: EnrollResponse =
                    retry("enrolling", || enrol.send_json(reqwest::Method::POST, "/agent/enroll", &req)).await?;
                let creds = Credentials {
                    server: cfg.server.clone(),
                    target_id: resp.target_id,
                    token: resp.token,
                    server_key: Some(resp.server_key),
                };
                journal::write_private(&cred_path, &serde_json::to_vec_pretty(&creds)?)?;
                creds
            }
        };
        let client = base.with_token(&creds.token);
        let me: convoy_wire::AgentMe =
            retry("asking the server who this agent is", || client.get_json("/agent/me", Duration::from_secs(30)))
                .await?;
        // the key is learnt from the server itself, over the agent's own
        // authenticated connection; a changed key (rotated) replaces the old
        let creds = if creds.server_key.as_deref() == Some(me.server_key.as_str()) {
            creds
        } else {
            if let Some(old) = &creds.server_key {
                tracing::warn!(old = %old, new = %me.server_key, "the server signs with a new key; using it from now on");
            }
            let creds = Credentials { server_key: Some(me.server_key.clone()), ..creds };
            journal::write_private(&cred_path, &serde_json::to_vec_pretty(&creds)?)?;
            creds
        };
        let tuf = Arc::new(tuf::TufClient::open(&state_dir(&cfg.root), &client, cfg.trust_root.as_deref()).await?);
        let grant: client::GrantCell = Arc::new(std::sync::RwLock::new(me.grant.clone()));
        let skew: Skew =
            Arc::new(std::sync::atomic::AtomicI64::new(if me.now > 0 { me.now - activate::now_ms() } else { 0 }));
        tokio::spawn(renew_grant(client.clone(), grant.clone(), skew.clone(), me.grant_expires_at));
        tracing::info!(target_id = %creds.target_id, root = %cfg.root.display(), "agent ready");
        println!("convoy: agent {} serving {} from {}", creds.target_id, cfg.root.display(), cfg.server);
        let via = match &cfg.poll_via {
            Some(url) => Some((client.for_relay(url, &grant)?, std::sync::Mutex::new(None))),
            None => None,
        };
        let agent = Self {
            tuf,
            via,
            client,
            server_key: me.server_key.clone(),
            grant,
            skew,
            target_id: creds.target_id,
            cfg,
            held: Default::default(),
            withdrawn: Default::default(),
            app_locks: Default::default(),
        };
        if let Some(rc) = &agent.cfg.relay {
            let cache = convoy_pack::ChunkStore::open(state_dir(&agent.cfg.root).join("cache"))?;
            if me.relay_site.is_none() {
                tracing::warn!("this agent serves as a relay, but no operator granted it that: the server sends no agents here and refuses its site polls (convoy relays grant {} --site SITE)", agent.target_id);
            }
            let relay = relay::Relay::new(
                rc,
                agent.client.clone(),
                agent.grant.clone(),
                agent.server_key.clone(),
                agent.skew.clone(),
                cache,
                &agent.cfg.root,
            )?;
            relay::start(rc, Arc::new(relay)).await?;
        }
        let inv = inventory::collect(&agent.cfg);
        retry("reporting inventory", || {
            agent.client.send_json::<_, serde_json::Value>(reqwest::Method::PUT, "/agent/inventory", &inv)
        })
        .await?;
        Ok(agent)
    }

    /// Polls for work and does it, forever.
    pub async fn run(self: Arc<Self>) -> anyhow::Result<()> {
        let mut backoff = Duration::from_millis(200);
        loop {
            let holding: Vec<String> = self.held.lock().expect("held lock").iter().cloned().collect();
            let path = format!("/agent/work?wait={}&holding={}", self.cfg.poll_wait, holding.join(","));
            let asked = std::time::Instant::now();
            let (poll, source) = match &self.via {
                Some((relay, down)) if down.lock().expect("via lock").is_none_or(|t| t.elapsed() > VIA_RETRY) => {
                    let wait = Duration::from_secs(self.cfg.poll_wait + 15);
                    match relay.get_json_capped::<WorkResponse>(&path, wait, MAX_WORK_BYTES).await {
                        Err(e) => {
                            tracing::warn!(error = %client::short(&e), relay = %relay.server(), "polling the relay failed; polling the server meanwhile");
                            *down.lock().expect("via lock") = Some(std::time::Instant::now());
                            continue;
                        }
                        got => (got, Some(relay.server().to_owned())),
                    }
                }
                _ => (
                    self.client.get_json::<WorkResponse>(&path, Duration::from_secs(self.cfg.poll_wait + 15)).await,
                    None,
                ),
            };
            match poll {
                Ok(resp) => {
                    backoff = Duration::from_millis(200);
                    let (work, refused) = self.verified(resp, source.as_deref()).await;
                    if refused {
                        match &self.via {
                            // a relay that sends work that does not verify is passed over
                            Some((_, down)) if source.is_some() => {
                                *down.lock().expect("via lock") = Some(std::time::Instant::now());
                            }
                            _ => tokio::time::sleep(Duration::from_secs(5)).await,
                        }
                    }
                    let mut took = 0;
                    for w in work {
                        let key = journal::key(&w);
                        if source.is_some() && self.withdrawn.lock().expect("withdrawn lock").contains(&key) {
                            continue;
                        }
                        if !self.held.lock().expect("held lock").insert(key.clone()) {
                            continue;
                        }
                        took += 1;
                        let deferred = w.phase == Phase::Activate
                            && w.go_live_at.is_some_and(|at| at - activate::now_ms() > DEFER_MS);
                        let me = self.clone();
                        let relayed = source.is_some();
                        let task = async move {
                            me.handle(w, relayed).await;
                            me.held.lock().expect("held lock").remove(&key);
                        };
                        if deferred {
                            tokio::spawn(task);
                        } else {
                            task.await;
                        }
                    }
                    // a relay answering a long poll at once with nothing new
                    // (or with replays) is not let to spin the agent
                    if source.is_some() && took == 0 && asked.elapsed() < Duration::from_millis(500) {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                Err(e) if e.downcast_ref::<client::ServerError>().is_some_and(|s| s.status == 401) => {
                    tracing::error!(
                        error = %client::short(&e),
                        "the server no longer accepts this agent's credential; to enrol again, remove {} and restart with --token",
                        state_dir(&self.cfg.root).join("agent.json").display()
                    );
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %client::short(&e), "polling the server failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// The work that verifies against the server's key, for this target,
    /// unexpired (in the server's time); anything else is refused, logged
    /// and told to the server, once per poll. Returns whether something was
    /// refused.
    async fn verified(&self, resp: WorkResponse, source: Option<&str>) -> (Vec<Work>, bool) {
        let mut out = Vec::new();
        let mut refused: Vec<(Option<String>, String)> = Vec::new();
        for sw in resp.work {
            match sw.open(&self.server_key, &self.target_id, server_now(&self.skew)) {
                Ok(w) => out.push(w),
                Err(e) => {
                    let id = sw.unverified().map(|s| s.work.instruction_id).filter(|i| i.len() <= 64 && !i.is_empty());
                    refused.push((id, e.to_string()));
                }
            }
        }
        let Some((first_id, first_why)) = refused.first().cloned() else { return (out, false) };
        let from = source.unwrap_or(self.client.server()).to_owned();
        tracing::error!(source = %from, count = refused.len(), instruction = ?first_id, "refusing work that does not verify: {first_why}");
        let reason =
            if refused.len() == 1 { first_why } else { format!("{} items; first: {first_why}", refused.len()) };
        let r = convoy_wire::Refusal { source: from, reason, instruction_id: first_id };
        if let Err(e) = self.client.send_json::<_, serde_json::Value>(reqwest::Method::POST, "/agent/refused", &r).await
        {
            tracing::warn!(error = %client::short(&e), "could not tell the server of the refused work");
        }
        (out, true)
    }

    fn app_lock(&self, app: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.app_locks.lock().expect("app locks").entry(app.to_owned()).or_default().clone()
    }

    /// Does one piece of work. `relayed`: it came through a `--poll-via`
    /// relay, which may hold back or replay (signed) work: an activation or
    /// rollback from there is confirmed with the server first.
    async fn handle(&self, w: Work, relayed: bool) {
        // A planned activation waits for its time without holding the app,
        // so a rollback or other work on it is not held up meanwhile.
        if w.phase == Phase::Activate {
            self.until_shortly_before_go_live(&w).await;
        }
        let lock = self.app_lock(&w.app);
        let _app = lock.lock().await;
        let key = journal::key(&w);
        if let Some(report) = journal::load(&self.cfg.root, &key) {
            tracing::info!(instruction = %w.instruction_id, "re-sending the journaled report");
            self.send(report).await;
            return;
        }
        let started = std::time::Instant::now();
        let (kind, metrics, output) = match w.phase {
            Phase::Stage => {
                self.send(Report {
                    instruction_id: w.instruction_id.clone(),
                    phase: w.phase,
                    attempt: w.attempt,
                    report: ReportKind::Received,
                    metrics: Default::default(),
                    output: String::new(),
                    inventory: None,
                })
                .await;
                // only what the signed TUF metadata lists is staged
                let checked = std::time::Instant::now();
                let verdict = match self.tuf.check(&self.client, &w.app, &w.version, &w.digest).await {
                    Ok(()) => self.tuf.approved(&w, &self.target_id, self.cfg.environment.as_deref()).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = verdict {
                    tracing::error!(instruction = %w.instruction_id, "refusing to stage: {e:#}");
                    self.send(self.refusal(&w, &format!("{e:#}"))).await;
                    return;
                }
                let tuf_us = checked.elapsed().as_micros().to_string();
                // a transfer stops within seconds of the work being withdrawn
                // (a canceled or rolled-back deployment): the server is asked
                // every few seconds while staging goes on
                let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                tokio::select! {
                    r = stage::stage(&self.cfg, &self.client, &self.grant, &w, stop.clone()) => {
                        let (kind, mut metrics, output) = r;
                        metrics.insert("tuf_check_us".into(), tuf_us);
                        (kind, metrics, output)
                    }
                    () = self.until_withdrawn(&w) => {
                        stop.store(true, std::sync::atomic::Ordering::Relaxed);
                        let partial = stage::partial_dir(&self.cfg.root, &w.app, &w.version);
                        let _ = tokio::task::spawn_blocking(move || stage::remove_tree(&partial)).await;
                        tracing::info!(instruction = %w.instruction_id, "staging stopped: the server withdrew the work");
                        return;
                    }
                }
            }
            Phase::Activate => {
                if !self.still_current_at_go_live(&w, relayed).await {
                    if relayed {
                        self.note_withdrawn(&key);
                    }
                    tracing::info!(instruction = %w.instruction_id, "work was withdrawn before go-live (or the server could not confirm relayed work); not switching");
                    return;
                }
                let verdict = match self.tuf.check(&self.client, &w.app, &w.version, &w.digest).await {
                    Ok(()) => self.tuf.approved(&w, &self.target_id, self.cfg.environment.as_deref()).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = verdict {
                    tracing::error!(instruction = %w.instruction_id, "refusing to switch: {e:#}");
                    self.send(self.refusal(&w, &format!("{e:#}"))).await;
                    return;
                }
                activate::activate(&self.cfg, &w).await
            }
            Phase::Rollback => {
                if relayed && !self.server_confirms(&w).await {
                    self.note_withdrawn(&key);
                    tracing::info!(instruction = %w.instruction_id, "the server does not confirm this relayed rollback; not acting on it");
                    return;
                }
                activate::rollback(&self.cfg, &w).await
            }
            Phase::Preflight => preflight::run(&self.cfg, &w).await,
        };
        tracing::info!(target_id = %self.target_id, instruction = %w.instruction_id, phase = w.phase.as_str(), ms = started.elapsed().as_millis() as u64, "work done: {kind:?}");
        let report = Report {
            instruction_id: w.instruction_id.clone(),
            phase: w.phase,
            attempt: w.attempt,
            report: kind,
            metrics,
            output,
            inventory: Some(inventory::collect(&self.cfg)),
        };
        if let Err(e) = journal::save(&self.cfg.root, &key, &report) {
            tracing::warn!(error = %e, "could not journal the report");
        }
        self.send(report).await;
    }

    /// Returns once the server no longer has `w` pending for this target
    /// (asked every few seconds; an unreachable server withdraws nothing).
    async fn until_withdrawn(&self, w: &Work) {
        loop {
            tokio::time::sleep(WITHDRAWN_CHECK).await;
            if let Some(work) = self.pending_at_server().await {
                if !work
                    .iter()
                    .any(|x| x.instruction_id == w.instruction_id && x.phase == w.phase && x.attempt == w.attempt)
                {
                    return;
                }
            }
        }
    }

    /// The report of work refused because the signed metadata does not
    /// back it (or could not be had). Not journaled: the next attempt asks
    /// again, so a passing network fault never becomes a lasting refusal.
    fn refusal(&self, w: &Work, why: &str) -> Report {
        Report {
            instruction_id: w.instruction_id.clone(),
            phase: w.phase,
            attempt: w.attempt,
            report: ReportKind::Failed { message: format!("refused: {why}") },
            metrics: Default::default(),
            output: String::new(),
            inventory: None,
        }
    }

    async fn until_shortly_before_go_live(&self, w: &Work) {
        let Some(at) = w.go_live_at else { return };
        let wait = at - CHECK_BEFORE_MS - activate::now_ms();
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait as u64)).await;
        }
    }

    /// Asks the server, shortly before go-live, whether the activation still
    /// stands (an operator may have rolled back meanwhile). Work that came
    /// through a relay is always asked about, and does not go ahead while
    /// the server cannot say.
    async fn still_current_at_go_live(&self, w: &Work, relayed: bool) -> bool {
        if !relayed && w.go_live_at.is_none_or(|at| at - activate::now_ms() <= 0) {
            return true;
        }
        match self.pending_at_server().await {
            Some(work) => work
                .iter()
                .any(|x| x.instruction_id == w.instruction_id && x.phase == w.phase && x.attempt == w.attempt),
            // Unreachable server: the plan stands for work it sent itself
            None => !relayed,
        }
    }

    fn note_withdrawn(&self, key: &str) {
        let mut set = self.withdrawn.lock().expect("withdrawn lock");
        if set.len() >= 10_000 {
            set.clear();
        }
        set.insert(key.to_owned());
    }

    /// Whether the server itself still has this work pending for us.
    async fn server_confirms(&self, w: &Work) -> bool {
        self.pending_at_server().await.is_some_and(|work| {
            work.iter().any(|x| x.instruction_id == w.instruction_id && x.phase == w.phase && x.attempt == w.attempt)
        })
    }

    /// This target's pending work, asked of the server directly.
    async fn pending_at_server(&self) -> Option<Vec<Work>> {
        let r = self.client.get_json::<WorkResponse>("/agent/work?wait=0", Duration::from_secs(10)).await.ok()?;
        Some(
            r.work
                .iter()
                .filter_map(|sw| sw.open(&self.server_key, &self.target_id, server_now(&self.skew)).ok())
                .collect(),
        )
    }

    /// Sends a report until the server has it (or refuses it for good).
    async fn send(&self, report: Report) {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self
                .client
                .send_json::<_, convoy_wire::ReportResponse>(reqwest::Method::POST, "/agent/report", &report)
                .await
            {
                Ok(r) => {
                    if !r.accepted {
                        tracing::debug!(note = %r.note, "report not applied");
                    }
                    return;
                }
                Err(e) if client::is_permanent(&e) => {
                    tracing::warn!(error = %client::short(&e), "server refused the report; dropping it");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %client::short(&e), "sending the report failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Renews the read grant from the server well before it expires.
async fn renew_grant(client: Client, grant: client::GrantCell, skew: Skew, mut expires_at: i64) {
    loop {
        // at two thirds of its life, at least a minute apart
        let left = expires_at - server_now(&skew);
        tokio::time::sleep(Duration::from_millis((left * 2 / 3).max(60_000) as u64)).await;
        match client.get_json::<convoy_wire::AgentMe>("/agent/me", Duration::from_secs(30)).await {
            Ok(me) => {
                *grant.write().expect("grant lock") = me.grant;
                expires_at = me.grant_expires_at;
                if me.now > 0 {
                    skew.store(me.now - activate::now_ms(), std::sync::atomic::Ordering::Relaxed);
                }
            }
            Err(e) => {
                tracing::warn!(error = %client::short(&e), "renewing the read grant failed; retrying");
                expires_at = activate::now_ms() + 90_000;
            }
        }
    }
}

/// Retries a request through network failures (not through refusals),
/// waiting as long as the server asks when it says "too many".
async fn retry<T, F, Fut>(what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut backoff = Duration::from_millis(200);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if client::is_permanent(&e) => return Err(e.context(what.to_owned())),
            Err(e) => {
                let asked = e.downcast_ref::<client::ServerError>().and_then(|s| s.retry_after);
                tracing::warn!(error = %client::short(&e), retry_in_s = ?asked, "{what} failed; retrying");
                tokio::time::sleep(asked.map(Duration::from_secs).unwrap_or(backoff)).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Runs the agent until the process ends.
pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    Arc::new(Agent::start(cfg).await?).run().await
}
