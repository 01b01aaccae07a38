use std::collections::HashMap;
use std::sync::Arc;

use convoy_pack::ChunkStore;
use convoy_store::Store;
use tokio::sync::{watch, Notify};

/// A relay grant as kept in memory: the site, and the URL it names.
type Granted = (String, Option<String>);

/// Shared by every handler and the scheduler: one pointer, so that the
/// clone each request makes of it is one reference count.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

impl std::ops::Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// What [`AppState`] points to.
pub struct AppInner {
    /// The database behind [`convoy_store::CachedStore`] (polls are
    /// answered from memory).
    pub store: Arc<dyn Store>,
    /// The same cache, for what only it does (exactness, invalidation).
    pub cache: Arc<convoy_store::CachedStore>,
    /// See [`AppState::set_alone`].
    alone: Arc<std::sync::atomic::AtomicBool>,
    /// The cache bus through Redis, when servers share one (`--cache`).
    pub bus: Arc<std::sync::OnceLock<Arc<crate::bus::Bus>>>,
    pub chunks: ChunkStore,
    /// Release deltas and compressed manifests, made once each.
    pub deltas: Arc<crate::app::content::Deltas>,
    /// One generation counter per target, bumped when its instructions
    /// change; a target's long poll waits on its own only.
    changes: Arc<std::sync::Mutex<Changes>>,
    /// Wakes the scheduler early (after a report).
    pub wake: Arc<Notify>,
    pub counters: Arc<crate::metrics::Counters>,
    /// Set when the server is stopping: long polls end at once.
    pub stopping: watch::Sender<bool>,
    /// When targets last polled, written to the store in batches.
    pub seen: Arc<std::sync::Mutex<HashMap<String, i64>>>,
    /// Mirrors: convoy servers sharing the database, or `store+` URLs of
    /// plain HTTP copies of the chunk store. Each target gets them in its
    /// own order (see [`AppState::mirrors_for`]).
    pub mirrors: Arc<Vec<String>>,
    /// Agent reports waiting to be written in batches (see `reports`).
    pub reports: crate::app::reports::Queue,
    /// The queue's receiving end, until the writer takes it.
    pub report_rx: Arc<std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<crate::app::reports::Queued>>>>,
    /// Preflight specs by request id (see `workflow::preflight_spec`).
    pub preflight_specs: Arc<std::sync::Mutex<HashMap<String, convoy_wire::PreflightSpec>>>,
    /// NATS server and subject deployment requests arrive on.
    pub nats: Option<(String, String)>,
    /// Every target's `site` label, for relays polling on their site's behalf.
    sites: Arc<std::sync::Mutex<HashMap<String, String>>>,
    /// See [`AppState::work_deployment`].
    work_deployments: Arc<std::sync::Mutex<HashMap<String, Arc<convoy_store::DeploymentRecord>>>>,
    /// Source of change generations: strictly increasing across all
    /// targets, so a forgotten and re-made watch never repeats a value a
    /// relay has seen.
    tick: Arc<std::sync::atomic::AtomicU64>,
    /// This process's identity, so relays notice a restarted server.
    pub epoch: String,
    /// Upgrade descriptions by `FROM_DIGEST-TO_DIGEST`, made on demand.
    pub upgrades: Arc<std::sync::Mutex<HashMap<String, convoy_wire::Changes>>>,
    /// Relays by target: (site, URL), from operators' grants only (the URL
    /// the grant names, else the one the granted relay reports).
    relays: Arc<std::sync::Mutex<HashMap<String, Granted>>>,
    /// URLs that granted relays report, for grants without one.
    relay_urls: Arc<std::sync::Mutex<HashMap<String, String>>>,
    /// The server's online signing key (work items, read grants).
    pub key: Arc<convoy_wire::sign::ServerKey>,
    /// Enrolments lately, per enrolment token and per source address.
    pub enrol_limits: Arc<crate::limit::Limits>,
    /// When each target last had a refusal of work recorded.
    refusals: Arc<std::sync::Mutex<HashMap<String, std::time::Instant>>>,
    /// Staging progress by instruction: (target, progress). Memory only.
    pub progress: Arc<std::sync::Mutex<std::collections::HashMap<String, (String, convoy_wire::Progress)>>>,
    /// The TUF repository (set once at start; unset in tests that need none).
    pub tuf: Arc<std::sync::OnceLock<crate::app::tuf::Repo>>,
    /// Web console sign-ins (memory only).
    pub sessions: Arc<crate::console::Sessions>,
    /// Served over HTTPS (console cookies are then `Secure`).
    pub tls: bool,
    /// The DDI endpoint's settings and memory.
    pub ddi: Arc<crate::ddi::Ddi>,
}

impl AppState {
    pub fn new(
        store: Arc<dyn Store>,
        chunks: ChunkStore,
        deltas: crate::app::content::Deltas,
        key: convoy_wire::sign::ServerKey,
    ) -> Self {
        let (reports, rx) = tokio::sync::mpsc::channel(crate::app::reports::QUEUE);
        let cache = Arc::new(convoy_store::CachedStore::new(store));
        Self(Arc::new(AppInner {
            reports,
            report_rx: Arc::new(std::sync::Mutex::new(Some(rx))),
            store: cache.clone(),
            cache,
            alone: Arc::new(true.into()),
            bus: Default::default(),
            chunks,
            deltas: Arc::new(deltas),
            changes: Default::default(),
            wake: Arc::new(Notify::new()),
            counters: Default::default(),
            stopping: watch::channel(false).0,
            progress: Default::default(),
            relays: Default::default(),
            relay_urls: Default::default(),
            key: Arc::new(key),
            enrol_limits: Default::default(),
            refusals: Default::default(),
            mirrors: Default::default(),
            nats: None,
            preflight_specs: Default::default(),
            tuf: Default::default(),
            sessions: Default::default(),
            tls: false,
            ddi: Default::default(),
            upgrades: Default::default(),
            sites: Default::default(),
            work_deployments: Default::default(),
            tick: Arc::new(std::sync::atomic::AtomicU64::new(1)),
            epoch: convoy_store::new_secret()[..16].to_owned(),
            seen: Default::default(),
        }))
    }

    /// The settings made at start-up, before the state is shared (it
    /// panics once a handler or task holds a copy).
    pub fn setup(&mut self) -> &mut AppInner {
        Arc::get_mut(&mut self.0).expect("the server's state is set up before it is shared")
    }

    /// Notes a target's `site` label (the server's, set by operators).
    pub fn note_site(&self, target: &str, site: Option<&str>) {
        let mut sites = self.sites.lock().expect("sites lock");
        match site {
            Some(s) => sites.insert(target.to_owned(), s.to_owned()),
            None => sites.remove(target),
        };
    }

    /// Notes the URL a target reports serving its site on; used only if an
    /// operator granted it the relay role without naming a URL.
    pub fn note_relay_url(&self, target: &str, url: Option<&str>) {
        let mut map = self.relay_urls.lock().expect("relay urls lock");
        match url {
            Some(u) => map.insert(target.to_owned(), u.to_owned()),
            None => map.remove(target),
        };
    }

    /// The relays of a site, in a stable order; a relay comes first in its
    /// own list, so what it stages for itself crosses the site's line once
    /// with what it fetches for the site. Only granted relays with a URL.
    pub fn relays_of(&self, site: &str, target: &str) -> Vec<String> {
        let map = self.relays.lock().expect("relays lock");
        let urls = self.relay_urls.lock().expect("relay urls lock");
        let mut out: Vec<(bool, &String, String)> = map
            .iter()
            .filter(|(_, (s, _))| s == site)
            .filter_map(|(t, (_, u))| Some((t != target, t, u.clone().or_else(|| urls.get(t).cloned())?)))
            .collect();
        out.sort();
        out.into_iter().map(|(_, _, u)| u).collect()
    }

    /// The mirrors in this target's order: targets are spread evenly over
    /// the mirrors by a hash of their id (each mirror is the first choice of
    /// an equal share), the others follow as fail-over.
    pub fn mirrors_for(&self, target: &str) -> Vec<String> {
        if self.mirrors.is_empty() {
            return Vec::new();
        }
        let h = blake3::hash(target.as_bytes());
        let k = u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes")) as usize % self.mirrors.len();
        self.mirrors.iter().cycle().skip(k).take(self.mirrors.len()).cloned().collect()
    }

    /// Loads the relay directory from the operators' grants, and every
    /// target's site from its labels.
    /// Whether this server sees every write to its database (it is the
    /// only server, or servers share invalidations): the poll cache is
    /// exact then. Becoming exact drops what was cached before.
    pub fn set_alone(&self, alone: bool) {
        if self.bus.get().is_some() {
            // the bus decides: exact while subscribed
            return;
        }
        let was = self.alone.swap(alone, std::sync::atomic::Ordering::SeqCst);
        if alone && !was {
            self.cache.invalidate_all();
        }
        self.cache.set_exact(alone);
    }

    pub async fn load_relays(&self) -> Result<(), convoy_store::StoreError> {
        let grants = self.store.list_relays().await?;
        let mut urls = HashMap::new();
        for t in self.store.list_target_labels().await? {
            if let Ok(labels) = serde_json::from_str::<convoy_wire::Labels>(&t.labels_json) {
                self.note_site(&t.id, labels.0.get(crate::app::SITE_LABEL).map(String::as_str));
            }
        }
        let granted: Vec<String> = grants.iter().map(|g| g.target_id.clone()).collect();
        for t in self.store.get_targets(&granted).await? {
            if let Some(u) =
                serde_json::from_str::<convoy_wire::Inventory>(&t.inventory_json).ok().and_then(|i| i.relay)
            {
                urls.insert(t.id.clone(), u);
            }
        }
        self.reload_grants(grants, urls);
        Ok(())
    }

    /// Re-reads the grants and the URLs granted relays report (another
    /// server sharing the database may have changed them).
    pub async fn refresh_relays(&self) -> Result<(), convoy_store::StoreError> {
        let grants = self.store.list_relays().await?;
        let mut urls = HashMap::new();
        for g in grants.iter().filter(|g| g.url.is_none()) {
            if let Some(t) = self.store.get_target(&g.target_id).await? {
                if let Some(u) =
                    serde_json::from_str::<convoy_wire::Inventory>(&t.inventory_json).ok().and_then(|i| i.relay)
                {
                    urls.insert(g.target_id.clone(), u);
                }
            }
        }
        self.reload_grants(grants, urls);
        Ok(())
    }

    /// Re-reads every target's site (an operator may have relabelled one
    /// through another server on the database).
    pub async fn refresh_sites(&self) -> Result<(), convoy_store::StoreError> {
        let mut sites = HashMap::new();
        for t in self.store.list_target_labels().await? {
            if let Some(site) = serde_json::from_str::<convoy_wire::Labels>(&t.labels_json)
                .ok()
                .and_then(|l| l.0.get(crate::app::SITE_LABEL).cloned())
            {
                sites.insert(t.id, site);
            }
        }
        *self.sites.lock().expect("sites lock") = sites;
        Ok(())
    }

    fn reload_grants(&self, grants: Vec<convoy_store::RelayRecord>, urls: HashMap<String, String>) {
        *self.relays.lock().expect("relays lock") =
            grants.into_iter().map(|g| (g.target_id, (g.site, g.url))).collect();
        *self.relay_urls.lock().expect("relay urls lock") = urls;
    }

    /// Whether a refusal of work by `target` is to be recorded now (at most
    /// one every 10 s per target).
    pub fn note_refusal(&self, target: &str) -> bool {
        let mut map = self.refusals.lock().expect("refusals lock");
        if map.get(target).is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(10)) {
            return false;
        }
        if map.len() > 100_000 {
            map.retain(|_, t| t.elapsed() < std::time::Duration::from_secs(10));
        }
        map.insert(target.to_owned(), std::time::Instant::now());
        true
    }

    /// Whether an operator granted this target the relay role.
    pub fn is_relay(&self, target: &str) -> bool {
        self.relays.lock().expect("relays lock").contains_key(target)
    }

    /// A read grant for `target`, good for [`GRANT_TTL_MS`], as the string
    /// agents show relays and mirrors, and when it expires.
    pub fn grant_for(&self, target: &str) -> (String, i64) {
        let expires_at = now_ms() + GRANT_TTL_MS;
        // a relay's grant names the site it was granted (which it serves)
        let relay = self.relay_site(target);
        let g = convoy_wire::sign::Grant {
            target: target.to_owned(),
            site: relay.clone().or_else(|| self.site_of(target)),
            relay: relay.is_some(),
            expires_at,
        };
        (self.key.grant(&g), expires_at)
    }

    /// Signs a target's work for it.
    pub fn sign_work(&self, target: &str, w: convoy_wire::Work) -> convoy_wire::sign::SignedWork {
        self.key.sign_work(target, now_ms() + convoy_wire::sign::WORK_TTL_MS, w)
    }

    /// Notes that a target polled; [`AppState::flush_seen`] writes it.
    pub fn saw(&self, target: &str) {
        self.seen.lock().expect("seen lock").insert(target.to_owned(), now_ms());
    }

    /// Writes the last-seen times noted since the previous flush, in one
    /// transaction, so polls themselves never write to the database.
    pub async fn flush_seen(&self) -> Result<(), convoy_store::StoreError> {
        let batch: Vec<(String, i64)> =
            std::mem::take(&mut *self.seen.lock().expect("seen lock")).into_iter().collect();
        self.store.touch_targets(&batch).await
    }

    /// Subscribes to changes of one target's instructions, for as long as
    /// the returned watch lives. `relayed`: its generation is shown to a
    /// relay, which compares it later (it is kept when the watch ends).
    pub fn watch_target(&self, target: &str, relayed: bool) -> TargetWatch {
        let mut c = self.changes.lock().expect("changes lock");
        let rx = match c.live.get_mut(target) {
            Some((tx, r)) => {
                *r |= relayed;
                tx.subscribe()
            }
            None => {
                // a relay may hold the resting generation: kept, and the
                // channel stays relayed
                let rested = c.resting.remove(target);
                let gen = match rested {
                    Some(gen) => gen.max(c.floor),
                    None => self.next_tick(),
                };
                let (tx, rx) = watch::channel(gen);
                c.live.insert(target.to_owned(), (tx, relayed || rested.is_some()));
                rx
            }
        };
        let holders = c.live.get(target).map_or(1, |(tx, _)| tx.receiver_count());
        TargetWatch { rx: Some(rx), target: target.to_owned(), changes: self.changes.clone(), holders }
    }

    fn next_tick(&self) -> u64 {
        self.tick.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// The site a relay was granted, if `target` is one.
    pub fn relay_site(&self, target: &str) -> Option<String> {
        self.relays.lock().expect("relays lock").get(target).map(|(s, _)| s.clone())
    }

    /// A deployment as polls need it: its id, app, version, digest and
    /// environment, which never change once it exists (so a copy kept in
    /// memory is never stale in them; nothing else of it may be read).
    pub async fn work_deployment(
        &self,
        id: &str,
    ) -> Result<Option<Arc<convoy_store::DeploymentRecord>>, convoy_store::StoreError> {
        if let Some(d) = self.work_deployments.lock().expect("deployments lock").get(id) {
            return Ok(Some(d.clone()));
        }
        let Some(d) = self.store.get_deployment(id).await? else { return Ok(None) };
        let d = Arc::new(d);
        let mut kept = self.work_deployments.lock().expect("deployments lock");
        if kept.len() >= WORK_DEPLOYMENTS {
            kept.clear();
        }
        kept.insert(id.to_owned(), d.clone());
        Ok(Some(d))
    }

    /// A target's `site` label.
    pub fn site_of(&self, target: &str) -> Option<String> {
        self.sites.lock().expect("sites lock").get(target).cloned()
    }

    /// Wakes the long polls of these targets (on every server sharing the
    /// cache bus), and the scheduler.
    pub fn changed<'a>(&self, targets: impl IntoIterator<Item = &'a str>) {
        let targets: Vec<&str> = targets.into_iter().collect();
        if let Some(bus) = self.bus.get() {
            if targets.len() > 1_000 {
                bus.publish(&self.epoch, 'w', None);
            } else {
                for t in &targets {
                    bus.publish(&self.epoch, 'w', Some(t));
                }
            }
        }
        self.wake_local(targets);
    }

    /// Wakes every long poll this server holds.
    pub fn wake_all(&self) {
        let mut c = self.changes.lock().expect("changes lock");
        for (tx, _) in c.live.values() {
            tx.send_replace(self.next_tick());
        }
        // every resting generation is now below this one
        c.floor = self.next_tick();
        drop(c);
        self.wake.notify_one();
    }

    /// Wakes the long polls of these targets held by this server.
    pub fn wake_local<'a>(&self, targets: impl IntoIterator<Item = &'a str>) {
        let mut c = self.changes.lock().expect("changes lock");
        for t in targets {
            if let Some((tx, _)) = c.live.get(t) {
                tx.send_replace(self.next_tick());
            } else if c.resting.contains_key(t) {
                let gen = self.next_tick();
                c.resting.insert(t.to_owned(), gen);
            }
        }
        drop(c);
        self.wake.notify_one();
    }
}

/// How long a read grant lasts; agents renew theirs well before.
/// Deployments kept for polls (all are dropped when it is full).
const WORK_DEPLOYMENTS: usize = 4_096;

pub const GRANT_TTL_MS: i64 = 60 * 60 * 1000;

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Change generations: a channel per target while a poll waits on it, and
/// the last generation of targets a relay was shown, while none does (a
/// held poll costs its channel; a target at rest, a number).
#[derive(Default)]
pub struct Changes {
    live: HashMap<String, (watch::Sender<u64>, bool)>,
    resting: HashMap<String, u64>,
    /// Set by a change of every target: resting generations below it
    /// count as it.
    floor: u64,
}

/// Most resting generations kept; past it they are dropped, and each
/// relay fetches those targets' work once more.
const RESTING: usize = 1 << 20;

/// A poll's subscription to one target's changes (see
/// [`AppState::watch_target`]); the last one to end puts the channel away.
pub struct TargetWatch {
    rx: Option<watch::Receiver<u64>>,
    target: String,
    changes: Arc<std::sync::Mutex<Changes>>,
    /// Watches of this target when this one began, itself included.
    pub holders: usize,
}

impl std::ops::Deref for TargetWatch {
    type Target = watch::Receiver<u64>;
    fn deref(&self) -> &Self::Target {
        self.rx.as_ref().expect("live watch")
    }
}

impl std::ops::DerefMut for TargetWatch {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.rx.as_mut().expect("live watch")
    }
}

impl Drop for TargetWatch {
    fn drop(&mut self) {
        let mut c = self.changes.lock().expect("changes lock");
        drop(self.rx.take());
        let Some((tx, relayed)) = c.live.get(&self.target) else { return };
        if tx.receiver_count() > 0 {
            return;
        }
        let (gen, relayed) = (*tx.borrow(), *relayed);
        c.live.remove(&self.target);
        if relayed {
            if c.resting.len() >= RESTING {
                c.resting.clear();
            }
            c.resting.insert(std::mem::take(&mut self.target), gen);
        }
    }
}
