//! [`CachedStore`]: a [`Store`] that answers the hot reads of polling
//! agents from memory (P-pull): token lookups, and each target's pending
//! instructions and checks. Every write through it that can change those
//! answers drops what it changes (the target's entries, a subject's tokens,
//! or everything on a deployment-wide move), so a poll with nothing new
//! costs no database statement.
//!
//! The cache is exact only while this process is the only writer (or the
//! writers share invalidations through [`CachedStore::invalidate_target`] /
//! [`CachedStore::invalidate_all`]); otherwise entries are trusted for at
//! most [`SHARED_TTL`] ([`CachedStore::set_exact`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use convoy_domain::{DeploymentState, InstructionState};

use crate::*;

/// Told of the changes a process's writes make: a target, or everything.
pub type Notify = Box<dyn Fn(Option<&str>) + Send + Sync>;

/// Told instead of a target when every target's work changed (tokens did
/// not): other servers drop their work entries.
pub const ALL_WORK: &str = "*work";

/// How long an entry is trusted when other processes may write unseen.
pub const SHARED_TTL: Duration = Duration::from_secs(2);
/// Oldest a work entry is trusted even when exact (bounds what a lost
/// invalidation can cost).
const WORK_AGE: Duration = Duration::from_secs(300);
/// Oldest a token entry is trusted while exact and alone on the database:
/// every write is this process's own, so none can be missed; the bound
/// only limits what a bug could cost. An agent polls far more often than
/// this, so a fleet's tokens cost one read each per this period (a minute
/// was 1,700 reads a second at 100,000 agents).
const TOKEN_AGE: Duration = Duration::from_secs(300);
/// Oldest a token entry is trusted while exact through the cache bus (a
/// revocation whose message was lost, or one written by a server before it
/// joined the bus, holds no longer).
const TOKEN_AGE_SHARED: Duration = Duration::from_secs(60);
/// Entries kept before a map is emptied (bounds memory against floods of
/// unknown tokens). Small in this crate's unit tests, which fill it.
const MAX_ENTRIES: usize = if cfg!(test) { 64 } else { 1 << 20 };

struct Slot<T> {
    epoch: u64,
    at: Instant,
    value: T,
}

/// What is held of one target: one map entry (one copy of its id) for its
/// version and both kinds of work, since a fleet has one of each per
/// target.
#[derive(Default)]
struct TargetEntry {
    /// Bumped when the target's entries are dropped.
    version: u64,
    instructions: Option<Slot<Vec<InstructionRecord>>>,
    checks: Option<Slot<Vec<CheckRecord>>>,
}

/// A token's hash (lowercase hex, as [`hash_token`] writes it) as bytes:
/// the key of the token map, half the size of the text and held in the
/// map's own table. Any other text is not cached.
type TokenKey = [u8; 32];

/// A token as held: its record without the hash (the map's key is the
/// hash), made whole again on a hit.
#[derive(Clone)]
struct CachedToken {
    kind: TokenKind,
    subject: String,
    created_at: i64,
    revoked_at: Option<i64>,
    revoked_note: String,
}

impl CachedToken {
    fn held(t: &TokenRecord) -> Self {
        Self {
            kind: t.kind,
            subject: t.subject.clone(),
            created_at: t.created_at,
            revoked_at: t.revoked_at,
            revoked_note: t.revoked_note.clone(),
        }
    }

    fn record(self, hash: &str) -> TokenRecord {
        let Self { kind, subject, created_at, revoked_at, revoked_note } = self;
        TokenRecord { hash: hash.to_owned(), kind, subject, created_at, revoked_at, revoked_note }
    }
}

fn token_key(hash: &str) -> Option<TokenKey> {
    // `hex` reads uppercase too: that spelling is another token's text
    if hash.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut key = [0; 32];
    hex::decode_to_slice(hash, &mut key).ok()?;
    Some(key)
}

#[derive(Default)]
struct Inner {
    /// Bumped by [`CachedStore::invalidate_all`]: older entries are void.
    epoch: u64,
    /// Bumped when every target's work entries are dropped (tokens kept).
    work_gen: u64,
    /// Per target: its version and its work.
    targets: HashMap<Box<str>, TargetEntry>,
    /// Live tokens by hash (unknown ones are not kept: each costs a read).
    tokens: HashMap<TokenKey, Slot<CachedToken>>,
    /// Bumped by every token write: a lookup that read before it is not kept.
    token_gen: u64,
    /// Which target an instruction belongs to (learnt from reads and writes).
    owners: HashMap<String, String>,
}

impl Inner {
    /// What work entries are stamped with: changes with every drop of all
    /// entries, or of all work (both only grow).
    fn work_epoch(&self) -> u64 {
        self.epoch + self.work_gen
    }

    /// A target's version (0 when nothing is held of it).
    fn version(&self, target: &str) -> u64 {
        self.targets.get(target).map_or(0, |e| e.version)
    }

    /// A target's entry, made if missing. The map is bounded: when full it
    /// is emptied first, and every read under way is voided (a target's
    /// version starts again from 0, so only a new work epoch keeps a read
    /// from before from being taken as current).
    fn target_mut(&mut self, target: &str) -> &mut TargetEntry {
        if !self.targets.contains_key(target) {
            if self.targets.len() >= MAX_ENTRIES {
                self.work_gen += 1;
                self.targets.clear();
            }
            self.targets.insert(target.into(), TargetEntry::default());
        }
        self.targets.get_mut(target).expect("the entry was made above")
    }
}

/// See the module documentation.
pub struct CachedStore {
    inner: Arc<dyn Store>,
    /// Told of every change this process's writes made (a target, or
    /// everything), to pass on to other servers.
    notify: std::sync::OnceLock<Notify>,
    exact: AtomicBool,
    calls: AtomicU64,
    cache: Mutex<Inner>,
}

impl CachedStore {
    /// A cache in front of `inner`; exact (this process the only writer)
    /// until [`CachedStore::set_exact`] says otherwise.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            notify: Default::default(),
            exact: AtomicBool::new(true),
            calls: AtomicU64::new(0),
            cache: Default::default(),
        }
    }

    /// Where the changes this process's writes make are told (once).
    pub fn set_notify(&self, f: Notify) {
        let _ = self.notify.set(f);
    }

    /// A write here changed `target`'s work (or everything's): dropped
    /// here, and told to whoever listens.
    fn changed(&self, target: Option<&str>) {
        match target {
            Some(t) => self.invalidate_target(t),
            None => self.invalidate_all(),
        }
        if let Some(f) = self.notify.get() {
            f(target);
        }
    }

    /// A change to tokens: dropped here by the caller; other servers drop
    /// everything (token changes are rare).
    fn tokens_changed(&self) {
        if let Some(f) = self.notify.get() {
            f(None);
        }
    }

    /// Whether every write to the database is seen here (one server, or
    /// servers sharing invalidations); if not, entries live [`SHARED_TTL`].
    pub fn set_exact(&self, exact: bool) {
        self.exact.store(exact, Ordering::Relaxed);
    }

    /// The backend's own answer, past the cache (for tests).
    pub async fn inner_pending(&self, target: &str) -> Vec<InstructionRecord> {
        self.inner.pending_instructions(target).await.expect("pending instructions")
    }

    /// Calls that reached the database so far.
    pub fn backend_calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Drops what is cached of one target (its work changed elsewhere; not
    /// told on).
    pub fn invalidate_target(&self, target: &str) {
        let mut c = self.cache.lock().expect("cache lock");
        Self::drop_target(&mut c, target);
    }

    /// Drops everything (a deployment-wide change, or invalidations that
    /// may have been missed).
    pub fn invalidate_all(&self) {
        let mut c = self.cache.lock().expect("cache lock");
        c.epoch += 1;
        c.tokens.clear();
        c.targets.clear();
        c.owners.clear();
    }

    /// Drops every target's work entries, keeping tokens (a
    /// deployment-wide change to work).
    pub fn invalidate_work(&self) {
        let mut c = self.cache.lock().expect("cache lock");
        c.work_gen += 1;
        c.targets.clear();
    }

    fn drop_target(c: &mut Inner, target: &str) {
        let e = c.target_mut(target);
        e.version += 1;
        e.instructions = None;
        e.checks = None;
    }

    fn drop_tokens(&self, kind: TokenKind, subject: &str) {
        let mut c = self.cache.lock().expect("cache lock");
        c.token_gen += 1;
        c.tokens.retain(|_, s| !(s.value.kind == kind && s.value.subject == subject));
    }

    fn drop_token(&self, hash: &str) {
        let mut c = self.cache.lock().expect("cache lock");
        c.token_gen += 1;
        if let Some(key) = token_key(hash) {
            c.tokens.remove(&key);
        }
    }

    fn db(&self) -> &dyn Store {
        self.calls.fetch_add(1, Ordering::Relaxed);
        &*self.inner
    }

    fn fresh<T: Clone>(&self, epoch: u64, slot: Option<&Slot<T>>) -> Option<T> {
        let s = slot?;
        let age = s.at.elapsed();
        let young = age < SHARED_TTL || (self.exact.load(Ordering::Relaxed) && age < WORK_AGE);
        (s.epoch == epoch && young).then(|| s.value.clone())
    }

    /// The target an instruction belongs to, asking the database if unknown.
    async fn owner(&self, id: &str) -> Result<Option<String>> {
        if let Some(t) = self.cache.lock().expect("cache lock").owners.get(id) {
            return Ok(Some(t.clone()));
        }
        Ok(self.db().get_instruction(id).await?.map(|i| i.target_id))
    }

    /// Notes which target each instruction belongs to (its writer knows).
    pub fn note_owners<'a>(&self, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) {
        let mut c = self.cache.lock().expect("cache lock");
        for (instruction, target) in pairs {
            if c.owners.len() >= MAX_ENTRIES {
                c.owners.clear();
            }
            if !c.owners.contains_key(instruction) {
                c.owners.insert(instruction.to_owned(), target.to_owned());
            }
        }
    }

    fn learn_owners(c: &mut Inner, rows: &[InstructionRecord]) {
        if c.owners.len() + rows.len() > MAX_ENTRIES {
            c.owners.clear();
        }
        for i in rows {
            c.owners.insert(i.id.clone(), i.target_id.clone());
        }
    }
}

/// Runs its closure when dropped: a write's invalidation happens even when
/// the caller stops waiting for the write (its commit may still land).
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// Reads through a per-target map: a hit, or the database's answer kept
/// unless the target's entries were dropped while it was being read.
macro_rules! per_target {
    ($self:ident, $field:ident, $target:ident, $read:expr) => {{
        let (epoch, version) = {
            let c = $self.cache.lock().expect("cache lock");
            let held = c.targets.get($target).and_then(|e| e.$field.as_ref());
            if let Some(v) = $self.fresh(c.work_epoch(), held) {
                return Ok(v);
            }
            (c.work_epoch(), c.version($target))
        };
        let rows = $read.await?;
        let mut c = $self.cache.lock().expect("cache lock");
        if c.work_epoch() == epoch && c.version($target) == version {
            // (should a full map be emptied for it, the entry's epoch is
            // then past and it is never taken)
            c.target_mut($target).$field = Some(Slot { epoch, at: Instant::now(), value: rows.clone() });
        }
        Ok(rows)
    }};
}

#[async_trait]
impl Store for CachedStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn put_token(&self, t: &TokenRecord) -> Result<()> {
        let _after = OnDrop(|| {
            self.drop_token(&t.hash);
            self.tokens_changed();
        });
        self.db().put_token(t).await
    }
    async fn find_token(&self, hash: &str) -> Result<Option<TokenRecord>> {
        let (epoch, generation) = {
            let c = self.cache.lock().expect("cache lock");
            let age = if self.notify.get().is_some() { TOKEN_AGE_SHARED } else { TOKEN_AGE };
            let hit = token_key(hash).and_then(|k| c.tokens.get(&k)).filter(|s| s.at.elapsed() < age);
            if let Some(v) = self.fresh(c.epoch, hit) {
                return Ok(Some(v.record(hash)));
            }
            (c.epoch, c.token_gen)
        };
        let found = self.db().find_token(hash).await?;
        let mut c = self.cache.lock().expect("cache lock");
        let key = token_key(hash).filter(|_| c.epoch == epoch && c.token_gen == generation);
        if let (Some(t), Some(key)) = (found.as_ref(), key) {
            if c.tokens.len() >= MAX_ENTRIES {
                c.tokens.clear();
            }
            c.tokens.insert(key, Slot { epoch, at: Instant::now(), value: CachedToken::held(t) });
        }
        Ok(found)
    }
    async fn count_tokens(&self, kind: TokenKind) -> Result<u64> {
        self.db().count_tokens(kind).await
    }
    async fn rotate_token(&self, new: &TokenRecord, note: &str, event: &EventRecord) -> Result<u64> {
        let _after = OnDrop(|| {
            self.drop_tokens(new.kind, &new.subject);
            self.drop_token(&new.hash);
            self.tokens_changed();
        });
        self.db().rotate_token(new, note, event).await
    }
    async fn create_enrol_token(&self, e: &EnrolTokenRecord, token: &TokenRecord, event: &EventRecord) -> Result<()> {
        let _after = OnDrop(|| {
            self.drop_token(&token.hash);
            self.tokens_changed();
        });
        self.db().create_enrol_token(e, token, event).await
    }
    async fn get_enrol_token(&self, id: &str) -> Result<Option<EnrolTokenRecord>> {
        self.db().get_enrol_token(id).await
    }
    async fn list_enrol_tokens(&self) -> Result<Vec<EnrolTokenRecord>> {
        self.db().list_enrol_tokens().await
    }
    async fn revoke_enrol_token(&self, id: &str, event: &EventRecord) -> Result<bool> {
        let _after = OnDrop(|| {
            self.drop_tokens(TokenKind::Enrol, id);
            self.drop_tokens(TokenKind::Gateway, id);
            self.tokens_changed();
        });
        self.db().revoke_enrol_token(id, event).await
    }
    async fn enrol_target(
        &self,
        t: &TargetRecord,
        agent_token: &TokenRecord,
        enrol_token: Option<&str>,
        event: &EventRecord,
    ) -> Result<()> {
        let _after = OnDrop(|| {
            // a new random token: no other server can hold an answer for it
            self.drop_token(&agent_token.hash);
            self.changed(Some(&t.id));
        });
        self.db().enrol_target(t, agent_token, enrol_token, event).await
    }
    async fn insert_target(&self, t: &TargetRecord) -> Result<()> {
        let _after = OnDrop(|| {
            self.changed(Some(&t.id));
        });
        self.db().insert_target(t).await
    }
    async fn update_target(&self, id: &str, hostname: &str, inventory_json: &str, now: i64) -> Result<()> {
        self.db().update_target(id, hostname, inventory_json, now).await
    }
    async fn set_target_labels(&self, id: &str, labels_json: &str, event: &EventRecord) -> Result<bool> {
        self.db().set_target_labels(id, labels_json, event).await
    }
    async fn set_target_warning(&self, id: &str, warning: &str) -> Result<()> {
        self.db().set_target_warning(id, warning).await
    }
    async fn touch_targets(&self, seen: &[(String, i64)]) -> Result<()> {
        self.db().touch_targets(seen).await
    }
    async fn get_target(&self, id: &str) -> Result<Option<TargetRecord>> {
        self.db().get_target(id).await
    }
    async fn list_targets(&self) -> Result<Vec<TargetRecord>> {
        self.db().list_targets().await
    }
    async fn list_target_labels(&self) -> Result<Vec<TargetLabels>> {
        self.db().list_target_labels().await
    }
    async fn list_targets_having(&self, having: &[(String, String)]) -> Result<Vec<TargetRecord>> {
        self.db().list_targets_having(having).await
    }
    async fn get_targets(&self, ids: &[String]) -> Result<Vec<TargetRecord>> {
        self.db().get_targets(ids).await
    }
    async fn remove_target(&self, id: &str) -> Result<bool> {
        let _after = OnDrop(|| {
            self.drop_tokens(TokenKind::Agent, id);
            self.drop_tokens(TokenKind::Ddi, id);
            self.changed(None);
        });
        self.db().remove_target(id).await
    }

    async fn pause(&self, id: &str, by: &str, event: &EventRecord) -> Result<bool> {
        self.db().pause(id, by, event).await
    }
    async fn resume(&self, id: &str, event: &EventRecord) -> Result<bool> {
        self.db().resume(id, event).await
    }
    async fn paused_by(&self, id: &str) -> Result<Option<String>> {
        self.db().paused_by(id).await
    }

    async fn grant_relay(&self, r: &RelayRecord, event: &EventRecord) -> Result<()> {
        self.db().grant_relay(r, event).await
    }
    async fn revoke_relay(&self, target_id: &str, event: &EventRecord) -> Result<bool> {
        self.db().revoke_relay(target_id, event).await
    }
    async fn list_relays(&self) -> Result<Vec<RelayRecord>> {
        self.db().list_relays().await
    }

    async fn server_key(&self, name: &str, make: (String, String), now: i64) -> Result<(String, String)> {
        self.db().server_key(name, make, now).await
    }
    async fn put_tuf(&self, role: &str, version: u64, body: &[u8], now: i64) -> Result<bool> {
        self.db().put_tuf(role, version, body, now).await
    }
    async fn get_tuf(&self, role: &str, version: Option<u64>) -> Result<Option<(u64, Vec<u8>)>> {
        self.db().get_tuf(role, version).await
    }

    async fn insert_release(&self, r: &ReleaseRecord) -> Result<bool> {
        self.db().insert_release(r).await
    }
    async fn get_release(&self, app: &str, version: &str) -> Result<Option<ReleaseRecord>> {
        self.db().get_release(app, version).await
    }
    async fn list_releases(&self) -> Result<Vec<ReleaseRecord>> {
        self.db().list_releases().await
    }

    async fn create_deployment(
        &self,
        d: &DeploymentRecord,
        instructions: &[InstructionRecord],
        actor: &str,
    ) -> Result<()> {
        // after the write, even when the caller stops waiting for it (its
        // commit may still land)
        let written = AtomicBool::new(false);
        let _after = OnDrop(|| {
            let mut c = self.cache.lock().expect("cache lock");
            Self::learn_owners(&mut c, instructions);
            let (epoch, ok) = (c.work_epoch(), written.load(Ordering::Relaxed));
            for i in instructions {
                // a read under way saw the rows before: it must not be kept
                let e = c.target_mut(&i.target_id);
                e.version += 1;
                // a target whose pending work is held gets the new row
                // added (no read after a big deployment); else it reads again
                let add = ok
                    && matches!(
                        i.state,
                        InstructionState::Created
                            | InstructionState::Sent
                            | InstructionState::Received
                            | InstructionState::Activating
                            | InstructionState::RollingBack
                    );
                match &mut e.instructions {
                    // a poll that read after the commit may hold it already
                    Some(slot) if add && slot.epoch == epoch && slot.value.iter().any(|x| x.id == i.id) => {}
                    Some(slot) if add && slot.epoch == epoch => slot.value.push(i.clone()),
                    held => *held = None,
                }
            }
            drop(c);
            if let Some(f) = self.notify.get() {
                if instructions.len() > 100 {
                    f(Some(ALL_WORK));
                } else {
                    for i in instructions {
                        f(Some(&i.target_id));
                    }
                }
            }
        });
        self.db().create_deployment(d, instructions, actor).await?;
        written.store(true, Ordering::Relaxed);
        Ok(())
    }
    async fn get_deployment(&self, id: &str) -> Result<Option<DeploymentRecord>> {
        self.db().get_deployment(id).await
    }
    async fn list_deployments(&self, limit: u32) -> Result<Vec<DeploymentRecord>> {
        self.db().list_deployments(limit).await
    }
    async fn plan_deployments(&self, plan: &str) -> Result<Vec<DeploymentRecord>> {
        self.db().plan_deployments(plan).await
    }
    async fn active_deployments(&self) -> Result<Vec<DeploymentRecord>> {
        self.db().active_deployments().await
    }
    async fn list_instructions(&self, deployment_id: &str) -> Result<Vec<InstructionRecord>> {
        let rows = self.db().list_instructions(deployment_id).await?;
        Self::learn_owners(&mut self.cache.lock().expect("cache lock"), &rows);
        Ok(rows)
    }
    async fn previous_versions(&self, deployment_id: &str) -> Result<Vec<String>> {
        self.db().previous_versions(deployment_id).await
    }
    async fn instructions_page(
        &self,
        deployment_id: &str,
        states: &[InstructionState],
        wave: Option<u32>,
        after: &str,
        limit: u32,
    ) -> Result<Vec<InstructionRecord>> {
        let rows = self.db().instructions_page(deployment_id, states, wave, after, limit).await?;
        Self::learn_owners(&mut self.cache.lock().expect("cache lock"), &rows);
        Ok(rows)
    }
    async fn get_instruction(&self, id: &str) -> Result<Option<InstructionRecord>> {
        self.db().get_instruction(id).await
    }
    async fn get_instructions(&self, ids: &[String]) -> Result<Vec<InstructionRecord>> {
        let rows = self.db().get_instructions(ids).await?;
        Self::learn_owners(&mut self.cache.lock().expect("cache lock"), &rows);
        Ok(rows)
    }
    async fn target_instructions(&self, target_id: &str, limit: u32) -> Result<Vec<InstructionRecord>> {
        self.db().target_instructions(target_id, limit).await
    }
    async fn pending_instructions(&self, target_id: &str) -> Result<Vec<InstructionRecord>> {
        let read = async {
            let rows = self.db().pending_instructions(target_id).await?;
            Self::learn_owners(&mut self.cache.lock().expect("cache lock"), &rows);
            Ok::<_, StoreError>(rows)
        };
        per_target!(self, instructions, target_id, read)
    }
    async fn busy_targets(&self, app: &str) -> Result<Vec<String>> {
        self.db().busy_targets(app).await
    }

    async fn transition_instruction(
        &self,
        id: &str,
        from: InstructionState,
        from_attempt: u32,
        up: &InstructionUpdate,
        actor: &str,
        now: i64,
    ) -> Result<bool> {
        let owner = self.owner(id).await?;
        let _after = OnDrop(|| {
            self.changed(owner.as_deref());
        });
        self.db().transition_instruction(id, from, from_attempt, up, actor, now).await
    }
    async fn transition_deployment(&self, id: &str, m: &DeploymentMove<'_>) -> Result<bool> {
        let _after = OnDrop(|| {
            // instructions in bulk, new rows, and checks that hang on the
            // deployment's state: dropped for every target (tokens stay)
            self.invalidate_work();
            if let Some(f) = self.notify.get() {
                f(Some(ALL_WORK));
            }
        });
        self.db().transition_deployment(id, m).await
    }

    async fn events(&self, deployment_id: &str) -> Result<Vec<EventRecord>> {
        self.db().events(deployment_id).await
    }
    async fn events_of(&self, deployment_id: &str, instruction_ids: &[String]) -> Result<Vec<EventRecord>> {
        self.db().events_of(deployment_id, instruction_ids).await
    }
    async fn instruction_counts(&self, deployment_ids: &[String]) -> Result<Vec<(String, u32, InstructionState, u32)>> {
        self.db().instruction_counts(deployment_ids).await
    }
    async fn audit(&self, f: &AuditFilter) -> Result<Vec<EventRecord>> {
        self.db().audit(f).await
    }
    async fn append_event(&self, e: &EventRecord) -> Result<()> {
        self.db().append_event(e).await
    }

    async fn transition_instructions(&self, moves: &[InstructionMove], now: i64) -> Result<Vec<bool>> {
        self.transition_instructions_held(&mut crate::WriterHold::default(), moves, now).await
    }

    async fn transition_instructions_held(
        &self,
        hold: &mut crate::WriterHold,
        moves: &[InstructionMove],
        now: i64,
    ) -> Result<Vec<bool>> {
        // owners not noted: one read for them all (a report writer may be
        // holding the store's only writing connection meanwhile)
        let mut owners: Vec<Option<String>> = {
            let c = self.cache.lock().expect("cache lock");
            moves.iter().map(|m| c.owners.get(&m.id).cloned()).collect()
        };
        let mut missing: Vec<String> =
            moves.iter().zip(&owners).filter(|(_, o)| o.is_none()).map(|(m, _)| m.id.clone()).collect();
        if !missing.is_empty() {
            missing.sort_unstable();
            missing.dedup();
            let found: HashMap<String, String> =
                self.db().get_instructions(&missing).await?.into_iter().map(|i| (i.id, i.target_id)).collect();
            for (m, o) in moves.iter().zip(owners.iter_mut()) {
                if o.is_none() {
                    *o = found.get(&m.id).cloned();
                }
            }
        }
        let _after = OnDrop(|| {
            if owners.iter().any(Option::is_none) {
                self.invalidate_work();
                if let Some(f) = self.notify.get() {
                    f(Some(ALL_WORK));
                }
                return;
            }
            let unique: std::collections::BTreeSet<&String> = owners.iter().flatten().collect();
            {
                let mut c = self.cache.lock().expect("cache lock");
                for t in &unique {
                    Self::drop_target(&mut c, t);
                }
            }
            // other servers: one message for a big batch (they drop all work)
            if let Some(f) = self.notify.get() {
                if unique.len() > 100 {
                    f(Some(ALL_WORK));
                } else {
                    for t in unique {
                        f(Some(t));
                    }
                }
            }
        });
        self.db().transition_instructions_held(hold, moves, now).await
    }

    async fn add_user(&self, u: &UserRecord, token: &TokenRecord) -> Result<()> {
        let _after = OnDrop(|| {
            self.drop_token(&token.hash);
            self.tokens_changed();
        });
        self.db().add_user(u, token).await
    }
    async fn get_user(&self, name: &str) -> Result<Option<UserRecord>> {
        self.db().get_user(name).await
    }
    async fn list_users(&self) -> Result<Vec<UserRecord>> {
        self.db().list_users().await
    }
    async fn remove_user(&self, name: &str) -> Result<bool> {
        let _after = OnDrop(|| {
            self.drop_tokens(TokenKind::User, name);
            self.tokens_changed();
        });
        self.db().remove_user(name).await
    }
    async fn add_user_key(&self, k: &UserKeyRecord, event: &EventRecord) -> Result<bool> {
        self.db().add_user_key(k, event).await
    }
    async fn user_keys(&self, user: Option<&str>) -> Result<Vec<UserKeyRecord>> {
        self.db().user_keys(user).await
    }

    async fn put_env(&self, e: &EnvRecord) -> Result<()> {
        self.db().put_env(e).await
    }
    async fn get_env(&self, name: &str) -> Result<Option<EnvRecord>> {
        self.db().get_env(name).await
    }
    async fn list_envs(&self) -> Result<Vec<EnvRecord>> {
        self.db().list_envs().await
    }

    async fn add_approval(&self, a: &ApprovalRecord, state: DeploymentState, actor: &str) -> Result<bool> {
        let _after = OnDrop(|| {
            self.changed(None);
        });
        self.db().add_approval(a, state, actor).await
    }
    async fn list_approvals(&self, deployment_id: &str) -> Result<Vec<ApprovalRecord>> {
        self.db().list_approvals(deployment_id).await
    }
    #[allow(clippy::too_many_arguments)]
    async fn revise_request(
        &self,
        id: &str,
        from: DeploymentState,
        revision: u32,
        to: DeploymentState,
        selector: &str,
        go_live_at: Option<i64>,
        reason: &str,
        actor: &str,
        note: &str,
        now: i64,
    ) -> Result<bool> {
        let _after = OnDrop(|| {
            self.changed(None);
        });
        self.db().revise_request(id, from, revision, to, selector, go_live_at, reason, actor, note, now).await
    }

    async fn list_checks(&self, deployment_id: &str) -> Result<Vec<CheckRecord>> {
        self.db().list_checks(deployment_id).await
    }
    async fn pending_checks(&self, target_id: &str) -> Result<Vec<CheckRecord>> {
        per_target!(self, checks, target_id, self.db().pending_checks(target_id))
    }
    async fn get_check(&self, id: &str) -> Result<Option<CheckRecord>> {
        self.db().get_check(id).await
    }
    async fn finish_check(&self, c: &CheckRecord, actor: &str) -> Result<bool> {
        let _after = OnDrop(|| {
            self.changed(Some(&c.target_id));
        });
        self.db().finish_check(c, actor).await
    }

    async fn hold_lease(&self, name: &str, holder: &str, now: i64, ttl_ms: i64) -> Result<bool> {
        self.db().hold_lease(name, holder, now, ttl_ms).await
    }
    async fn state_counts(&self, online_since: i64) -> Result<StateCounts> {
        self.db().state_counts(online_since).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_keys_are_the_written_hash_only() {
        let h = hash_token("s");
        let k = token_key(&h).expect("a hash as written");
        assert_eq!(k.iter().map(|b| format!("{b:02x}")).collect::<String>(), h);
        for other in [h.to_uppercase(), h[1..].to_owned(), format!("+{}", &h[1..]), format!("{h}0"), "g".repeat(64)] {
            assert_eq!(token_key(&other), None, "{other}");
        }
    }

    /// The map of targets is bounded. Emptied when full, every target's
    /// version starts again from 0, so a read begun before (which noted
    /// version 0 of a target dropped since) would pass the version check:
    /// the new work epoch is what voids it.
    #[test]
    fn a_full_target_map_voids_reads_under_way() {
        let mut c = Inner::default();
        // a read of target "a" begins (per_target! notes these two)
        let before = (c.work_epoch(), c.version("a"));
        assert_eq!(before.1, 0, "nothing held of a");
        // a write drops a's work while the read is under way
        CachedStore::drop_target(&mut c, "a");
        assert_ne!((c.work_epoch(), c.version("a")), before, "the read is void");
        // other targets fill the map, which is emptied
        for k in 0..MAX_ENTRIES {
            c.target_mut(&format!("t-{k}"));
            assert!(c.targets.len() <= MAX_ENTRIES, "bounded");
        }
        assert_eq!(c.version("a"), 0, "a's version went with the emptied map");
        assert!(c.targets.len() < MAX_ENTRIES, "the map was emptied");
        assert_ne!((c.work_epoch(), c.version("a")), before, "the read is still void");
    }
}
