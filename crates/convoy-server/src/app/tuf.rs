//! The server's TUF repository: root, targets, snapshot and timestamp
//! metadata (every version kept, served at `/tuf/metadata/N.ROLE.json`),
//! with each release's canonical manifest as a target
//! (`APP/VERSION/manifest.json`: length, SHA-256, and the BLAKE3 root digest
//! in `custom.convoy.digest`). Publishing a release signs a new targets
//! version, then a new snapshot and timestamp; the timestamp (valid one
//! day) and snapshot (seven days) are re-signed on their own before they
//! expire. Versions only grow: each is written once (`put_tuf`), so two
//! servers sharing a database never sign two different documents under
//! one version.
//!
//! Single-box mode: this server makes and holds every key (root and
//! targets too) and says so at start; whoever controls it, or its database
//! together with its key secret, can sign releases.

use std::collections::BTreeMap;

use convoy_store::{ReleaseRecord, Store};
use convoy_wire::tuf::{self, format_time, MetaFile, RoleKeys, Root, SigningKey, TargetFile, Targets, Versions};
use serde_json::Value;

use super::{AppError, AppResult};
use crate::state::{now_ms, AppState};

const DAY: i64 = 86_400;
const ROOT_LIFE: i64 = 365 * DAY;
const TARGETS_LIFE: i64 = 365 * DAY;
const SNAPSHOT_LIFE: i64 = 7 * DAY;
/// Timestamps expire within a day (TUF's freeze defence).
const TIMESTAMP_LIFE: i64 = DAY;
/// Re-sign a role when less than this is left of it.
const RENEW_TIMESTAMP: i64 = DAY / 2;
const RENEW_SNAPSHOT: i64 = 2 * DAY;
const RENEW_TARGETS: i64 = 30 * DAY;

pub const ROLES: [&str; 4] = ["root", "targets", "snapshot", "timestamp"];

/// The keys this server holds, and one writer at a time.
pub struct Repo {
    keys: BTreeMap<&'static str, SigningKey>,
    /// The key secret: a single-box handover must prove it holds it.
    kek: [u8; 32],
    writing: tokio::sync::Mutex<()>,
}

fn now_secs() -> i64 {
    now_ms() / 1000
}

fn corrupt(role: &str, e: impl std::fmt::Display) -> AppError {
    AppError::Corrupt(format!("stored TUF {role} metadata: {e}"))
}

impl Repo {
    /// Loads (or, on first start, makes) the keys, sealed under the key
    /// secret like the work-signing key, and makes version 1 of every role
    /// that has none, listing every release already published.
    pub async fn open(store: &dyn Store, kek: &[u8; 32]) -> anyhow::Result<Repo> {
        use convoy_wire::sign::{open_secret, seal_secret};
        let mut keys = BTreeMap::new();
        for role in ROLES {
            let fresh = SigningKey::generate();
            let made = (fresh.public().hex(), seal_secret(kek, &fresh.pkcs8_hex()));
            let (public, sealed) = store.server_key(&format!("tuf-{role}"), made, now_ms()).await?;
            let secret = open_secret(kek, &sealed).ok_or_else(|| {
                anyhow::anyhow!("the TUF {role} key in the database was sealed with another key secret")
            })?;
            let key = SigningKey::from_pkcs8(&hex::decode(secret)?)?;
            anyhow::ensure!(key.public().hex() == public, "the stored TUF {role} key does not match its public half");
            keys.insert(role, key);
        }
        let repo = Repo { keys, kek: *kek, writing: Default::default() };
        if store.get_tuf("root", None).await?.is_none() {
            let root = repo.new_root(1);
            let body = serde_json::to_vec(&tuf::sign(root, &[&repo.keys["root"]])?)?;
            store.put_tuf("root", 1, &body, now_ms()).await?;
            println!(
                "convoy: TUF repository in single-box mode: this server made and holds every key (root, targets, \
                 snapshot, timestamp), so whoever controls it (or its database with its key secret) can sign \
                 releases; agents and TUF clients still refuse anything not in its signed metadata"
            );
        }
        if store.get_tuf("targets", None).await?.is_none() {
            let mut targets = BTreeMap::new();
            for r in store.list_releases().await? {
                if let Some(full) = store.get_release(&r.app, &r.version).await? {
                    targets.insert(tuf::target_path(&full.app, &full.version), target_file(&full));
                }
            }
            let t = Targets {
                kind: "targets".into(),
                spec_version: tuf::SPEC_VERSION.into(),
                version: 1,
                expires: format_time(now_secs() + TARGETS_LIFE),
                targets,
                delegations: None,
            };
            repo.put(store, "targets", 1, serde_json::to_value(t)?).await?;
        }
        if store.get_tuf("timestamp", None).await?.is_none() {
            repo.snapshot_and_timestamp(store).await?;
        }
        Ok(repo)
    }

    fn new_root(&self, version: u64) -> Value {
        let keys: BTreeMap<String, Value> = self.keys.values().map(|k| (k.public().id(), k.public().json())).collect();
        let roles: BTreeMap<String, RoleKeys> = self
            .keys
            .iter()
            .map(|(role, k)| ((*role).to_owned(), RoleKeys { keyids: vec![k.public().id()], threshold: 1 }))
            .collect();
        serde_json::to_value(Root {
            kind: "root".into(),
            spec_version: tuf::SPEC_VERSION.into(),
            version,
            expires: format_time(now_secs() + ROOT_LIFE),
            consistent_snapshot: true,
            keys,
            roles,
        })
        .expect("root serialises")
    }

    async fn put(&self, store: &dyn Store, role: &'static str, version: u64, signed: Value) -> AppResult<()> {
        let meta = tuf::sign(signed, &[&self.keys[role]]).map_err(AppError::internal)?;
        let body = serde_json::to_vec(&meta).map_err(AppError::internal)?;
        if !store.put_tuf(role, version, &body, now_ms()).await? {
            return Err(AppError::conflict(format!("TUF {role} version {version} was written meanwhile")));
        }
        Ok(())
    }

    /// The newest version of a role and its `signed` part.
    async fn latest(store: &dyn Store, role: &str) -> AppResult<(u64, Value)> {
        let (v, body) = store.get_tuf(role, None).await?.ok_or_else(|| corrupt(role, "missing"))?;
        let meta: Value = serde_json::from_slice(&body).map_err(|e| corrupt(role, e))?;
        Ok((v, meta["signed"].clone()))
    }

    /// A new snapshot naming the newest targets, then a new timestamp.
    async fn snapshot_and_timestamp(&self, store: &dyn Store) -> AppResult<()> {
        let (targets, signed) = Self::latest(store, "targets").await?;
        let mut meta =
            BTreeMap::from([("targets.json".into(), MetaFile { version: targets, length: None, hashes: None })]);
        // every delegated role that has metadata, at its newest version
        let t: Targets = serde_json::from_value(signed).map_err(|e| corrupt("targets", e))?;
        for r in t.delegations.iter().flat_map(|d| d.roles.iter()) {
            if let Some((v, _)) = store.get_tuf(&r.name, None).await? {
                meta.insert(format!("{}.json", r.name), MetaFile { version: v, length: None, hashes: None });
            }
        }
        let snap = store.get_tuf("snapshot", None).await?.map_or(0, |(v, _)| v) + 1;
        let s = Versions {
            kind: "snapshot".into(),
            spec_version: tuf::SPEC_VERSION.into(),
            version: snap,
            expires: format_time(now_secs() + SNAPSHOT_LIFE),
            meta,
        };
        self.put(store, "snapshot", snap, serde_json::to_value(s).map_err(AppError::internal)?).await?;
        self.timestamp(store, snap).await
    }

    async fn timestamp(&self, store: &dyn Store, snapshot: u64) -> AppResult<()> {
        let version = store.get_tuf("timestamp", None).await?.map_or(0, |(v, _)| v) + 1;
        let t = Versions {
            kind: "timestamp".into(),
            spec_version: tuf::SPEC_VERSION.into(),
            version,
            expires: format_time(now_secs() + TIMESTAMP_LIFE),
            meta: BTreeMap::from([(
                "snapshot.json".into(),
                MetaFile { version: snapshot, length: None, hashes: None },
            )]),
        };
        self.put(store, "timestamp", version, serde_json::to_value(t).map_err(AppError::internal)?).await
    }

    /// Whether the newest root lets this server sign `role` with its key.
    async fn holds(&self, store: &dyn Store, role: &str) -> AppResult<bool> {
        let (_, root) = Self::latest(store, "root").await?;
        let root: Root = serde_json::from_value(root).map_err(|e| corrupt("root", e))?;
        let mine = self.keys.get(role).map(|k| k.public().id());
        // it holds a role only if its key alone meets the threshold
        Ok(root.roles.get(role).is_some_and(|r| r.threshold == 1 && mine.is_some_and(|m| r.keyids.contains(&m))))
    }

    /// Adds a published release to the signed targets, then a snapshot and
    /// timestamp naming it. Retried when another server signed meanwhile.
    /// `Ok(false)` when the targets role is kept offline: the publisher
    /// signs (`upload_targets`).
    pub async fn add_release(&self, store: &dyn Store, r: &ReleaseRecord) -> AppResult<bool> {
        let _one = self.writing.lock().await;
        if !self.holds(store, "targets").await? {
            return Ok(false);
        }
        for _ in 0..5 {
            let (version, signed) = Self::latest(store, "targets").await?;
            let mut t: Targets = serde_json::from_value(signed).map_err(|e| corrupt("targets", e))?;
            let path = tuf::target_path(&r.app, &r.version);
            if t.delegated_to(&path).is_some() {
                // the app's publisher keys sign its releases, never this server
                return Ok(false);
            }
            if t.targets.get(&path) == Some(&target_file(r)) {
                return Ok(true);
            }
            t.targets.insert(path, target_file(r));
            t.version = version + 1;
            t.expires = format_time(now_secs() + TARGETS_LIFE);
            match self.put(store, "targets", version + 1, serde_json::to_value(&t).map_err(AppError::internal)?).await {
                Err(AppError::Conflict(_)) => continue,
                other => other?,
            }
            self.snapshot_and_timestamp(store).await?;
            return Ok(true);
        }
        Err(AppError::conflict("TUF targets kept changing; publish again"))
    }

    /// A new root made offline (`convoy trust init`): version N+1, signed by
    /// its own root threshold and by the current root's (the server adds
    /// its signature while it holds the current root key, as in
    /// single-box mode), with this server's keys for timestamp and
    /// snapshot. With it comes the targets metadata re-signed by the new
    /// targets keys. From then on the server signs only what the root
    /// lets it.
    pub async fn upload_root(
        &self,
        store: &dyn Store,
        mut root_meta: Value,
        targets_meta: Value,
        proof: &str,
    ) -> AppResult<u64> {
        let _one = self.writing.lock().await;
        let bad = |m: String| AppError::bad_request(m);
        let (cur_v, cur) = Self::latest(store, "root").await?;
        let cur: Root = serde_json::from_value(cur).map_err(|e| corrupt("root", e))?;
        let new: Root = serde_json::from_value(root_meta["signed"].clone())
            .map_err(|e| bad(format!("not TUF root metadata: {e}")))?;
        if new.kind != "root" || new.version != cur_v + 1 {
            return Err(bad(format!(
                "a new root must be root version {} (got {} {})",
                cur_v + 1,
                new.kind,
                new.version
            )));
        }
        if tuf::parse_time(&new.expires).is_none_or(|t| t <= now_secs()) {
            return Err(bad(format!("the new root expires {}: in the past or unreadable", new.expires)));
        }
        for role in ["timestamp", "snapshot"] {
            let want = RoleKeys { keyids: vec![self.keys[role].public().id()], threshold: 1 };
            if new.roles.get(role) != Some(&want) {
                return Err(bad(format!(
                    "the new root must give the {role} role to this server's online key {} (threshold 1): `convoy trust` shows it",
                    want.keyids[0]
                )));
            }
        }
        for role in ["timestamp", "snapshot"] {
            let id = self.keys[role].public().id();
            if new.keys.get(&id) != Some(&self.keys[role].public().json()) {
                return Err(bad(format!("the new root must list this server's {role} key {id}")));
            }
        }
        if new.spec_version.split('.').next() != Some("1") {
            return Err(bad(format!("unsupported spec_version {:?}", new.spec_version)));
        }
        let own = new.roles.get("root").ok_or_else(|| bad("the new root names no root role".into()))?;
        tuf::verify("root", &root_meta, &new.keys, own).map_err(|e| bad(format!("the new root: {e}")))?;
        let old = cur.roles.get("root").ok_or_else(|| corrupt("root", "no root role"))?;
        if tuf::verify("root", &root_meta, &cur.keys, old).is_err() {
            // the old root's key is this server's (single-box): it signs the
            // handover, but only for someone who holds the server's key
            // secret (an API token alone never moves the root)
            if old.keyids.contains(&self.keys["root"].public().id()) {
                let want = tuf::handover_proof(&self.kek, &root_meta).map_err(|e| bad(e.to_string()))?;
                if !ring_eq(proof, &want) {
                    return Err(AppError::forbidden(
                        "handing the root over from single-box mode needs proof of this server's key secret: \
                         convoy trust upload ... --key-secret-file (the server's DATA_DIR/key-secret)",
                    ));
                }
                tuf::add_signature(&mut root_meta, &self.keys["root"]).map_err(AppError::internal)?;
            }
            tuf::verify("root", &root_meta, &cur.keys, old)
                .map_err(|e| bad(format!("the new root is not signed by the current root's threshold: {e}")))?;
        }
        // the targets, signed by the new targets keys, next version
        let (tv, _) = Self::latest(store, "targets").await?;
        let role = new.roles.get("targets").ok_or_else(|| bad("the new root names no targets role".into()))?;
        check_targets(&targets_meta, &new.keys, role, tv + 1)?;
        let body = serde_json::to_vec(&root_meta).map_err(AppError::internal)?;
        if !store.put_tuf("root", cur_v + 1, &body, now_ms()).await? {
            return Err(AppError::conflict("the root changed meanwhile"));
        }
        let body = serde_json::to_vec(&targets_meta).map_err(AppError::internal)?;
        if !store.put_tuf("targets", tv + 1, &body, now_ms()).await? {
            return Err(AppError::conflict("the targets changed meanwhile; upload again"));
        }
        self.snapshot_and_timestamp(store).await?;
        Ok(cur_v + 1)
    }

    /// Targets signed offline by the targets role (`publish --sign-key`):
    /// the next version, signed by the root's targets threshold, unexpired.
    pub async fn upload_targets(&self, store: &dyn Store, meta: Value) -> AppResult<u64> {
        let _one = self.writing.lock().await;
        let (_, root) = Self::latest(store, "root").await?;
        let root: Root = serde_json::from_value(root).map_err(|e| corrupt("root", e))?;
        let role = root.roles.get("targets").ok_or_else(|| corrupt("root", "no targets role"))?;
        let (tv, _) = Self::latest(store, "targets").await?;
        check_targets(&meta, &root.keys, role, tv + 1)?;
        let body = serde_json::to_vec(&meta).map_err(AppError::internal)?;
        if !store.put_tuf("targets", tv + 1, &body, now_ms()).await? {
            return Err(AppError::conflict("the targets changed meanwhile; sign the newest again"));
        }
        self.snapshot_and_timestamp(store).await?;
        Ok(tv + 1)
    }

    /// Delegated targets metadata signed by an app's publisher keys
    /// (`convoy publish --sign-key`): the role must be delegated in the
    /// newest targets, signed by its threshold, the next version, list only
    /// paths delegated to it, and delegate nothing further.
    pub async fn upload_delegated(&self, store: &dyn Store, name: &str, meta: Value) -> AppResult<u64> {
        let _one = self.writing.lock().await;
        let bad = |m: String| AppError::bad_request(m);
        let (_, signed) = Self::latest(store, "targets").await?;
        let top: Targets = serde_json::from_value(signed).map_err(|e| corrupt("targets", e))?;
        let (role, keys) = top.delegation(name).ok_or_else(|| {
            AppError::not_found(format!("the TUF targets delegate no role {name:?}: convoy trust delegate"))
        })?;
        let version = store.get_tuf(name, None).await?.map_or(0, |(v, _)| v) + 1;
        let t: Targets = serde_json::from_value(meta["signed"].clone())
            .map_err(|e| bad(format!("not TUF targets metadata: {e}")))?;
        if t.kind == "targets" && t.version < version {
            // another publisher signed meanwhile: sign the newest again
            return Err(AppError::conflict(format!("{name} is at version {} now; sign the newest again", version - 1)));
        }
        if t.kind != "targets" || t.version != version {
            return Err(bad(format!("{name} must be targets version {version} (got {} {})", t.kind, t.version)));
        }
        if tuf::parse_time(&t.expires).is_none_or(|x| x <= now_secs()) {
            return Err(bad(format!("{name} expires {}: in the past or unreadable", t.expires)));
        }
        if t.delegations.as_ref().is_some_and(|d| !d.roles.is_empty()) {
            return Err(bad(format!("{name} may not delegate further")));
        }
        if let Some(p) = t.targets.keys().find(|p| !role.paths.iter().any(|pat| tuf::path_matches(pat, p))) {
            return Err(AppError::forbidden(format!("{name} may not list {p}: only {}", role.paths.join(", "))));
        }
        tuf::verify(name, &meta, keys, &RoleKeys { keyids: role.keyids.clone(), threshold: role.threshold })
            .map_err(|e| AppError::forbidden(format!("{name}: {e} (is this a publisher key of the app?)")))?;
        let body = serde_json::to_vec(&meta).map_err(AppError::internal)?;
        if !store.put_tuf(name, version, &body, now_ms()).await? {
            return Err(AppError::conflict(format!("{name} changed meanwhile; sign the newest again")));
        }
        self.snapshot_and_timestamp(store).await?;
        Ok(version)
    }

    /// Delegates a role in the targets this server signs (single-box
    /// mode): publisher keys for an app, approver keys for an environment.
    /// With the targets key offline the operator signs the delegation
    /// (`convoy trust delegate --targets-key`).
    pub async fn delegate(
        &self,
        store: &dyn Store,
        name: &str,
        keys: &[Value],
        threshold: u32,
        paths: Vec<String>,
    ) -> AppResult<u64> {
        let _one = self.writing.lock().await;
        if !self.holds(store, "targets").await? {
            return Err(AppError::conflict(
                "the TUF targets are signed offline: sign the delegation with the targets key (convoy trust delegate ... --targets-key KEY)",
            ));
        }
        if !tuf::valid_role_name(name) || ROLES.contains(&name) {
            return Err(AppError::bad_request(format!("{name:?} cannot name a role")));
        }
        let (version, signed) = Self::latest(store, "targets").await?;
        let mut t: Targets = serde_json::from_value(signed).map_err(|e| corrupt("targets", e))?;
        t.delegate(name, keys, threshold, paths).map_err(|e| AppError::bad_request(e.to_string()))?;
        t.version = version + 1;
        t.expires = format_time(now_secs() + TARGETS_LIFE);
        self.put(store, "targets", version + 1, serde_json::to_value(&t).map_err(AppError::internal)?).await?;
        self.snapshot_and_timestamp(store).await?;
        Ok(version + 1)
    }

    /// The newest top-level targets as trusted by this server (its own
    /// signed copy): for the delegations agents will see.
    pub async fn targets(store: &dyn Store) -> AppResult<Targets> {
        let (_, signed) = Self::latest(store, "targets").await?;
        serde_json::from_value(signed).map_err(|e| corrupt("targets", e))
    }

    /// Re-signs what is about to expire: the timestamp, the snapshot, the
    /// targets (and, in single-box mode, the root). Returns what it renewed.
    pub async fn renew(&self, store: &dyn Store) -> AppResult<Vec<&'static str>> {
        let _one = self.writing.lock().await;
        let now = now_secs();
        let left = |signed: &Value| tuf::parse_time(signed["expires"].as_str().unwrap_or_default()).unwrap_or(0) - now;
        let mut renewed = Vec::new();
        let (rv, root) = Self::latest(store, "root").await?;
        let (holds_root, holds_targets) = (self.holds(store, "root").await?, self.holds(store, "targets").await?);
        if left(&root) < RENEW_TARGETS && !holds_root {
            tracing::warn!(expires = %root["expires"], "the TUF root is kept offline and expires soon: sign a new one (convoy trust init, upload)");
        }
        // only a single-box root is re-made here (every role the server's)
        if left(&root) < RENEW_TARGETS && holds_root && holds_targets {
            let meta = tuf::sign(self.new_root(rv + 1), &[&self.keys["root"]]).map_err(AppError::internal)?;
            let body = serde_json::to_vec(&meta).map_err(AppError::internal)?;
            if store.put_tuf("root", rv + 1, &body, now_ms()).await? {
                renewed.push("root");
            }
        }
        let (tv, targets) = Self::latest(store, "targets").await?;
        // only what is signed already is re-signed: a release row that
        // appeared in the database without a publish stays unsigned
        let mut t: Targets = serde_json::from_value(targets.clone()).map_err(|e| corrupt("targets", e))?;
        if left(&targets) < RENEW_TARGETS && !holds_targets {
            tracing::warn!(expires = %targets["expires"], "the TUF targets are signed offline and expire soon: publish with --sign-key");
        }
        if left(&targets) < RENEW_TARGETS && holds_targets {
            t.version = tv + 1;
            t.expires = format_time(now + TARGETS_LIFE);
            self.put(store, "targets", tv + 1, serde_json::to_value(&t).map_err(AppError::internal)?).await?;
            renewed.push("targets");
        }
        let (sv, snapshot) = Self::latest(store, "snapshot").await?;
        let snap_targets = snapshot["meta"]["targets.json"]["version"].as_u64().unwrap_or(0);
        let (_, targets) = Self::latest(store, "targets").await?;
        if left(&snapshot) < RENEW_SNAPSHOT || snap_targets != targets["version"].as_u64().unwrap_or(0) {
            self.snapshot_and_timestamp(store).await?;
            renewed.extend(["snapshot", "timestamp"]);
            return Ok(renewed);
        }
        let (_, stamp) = Self::latest(store, "timestamp").await?;
        if left(&stamp) < RENEW_TIMESTAMP {
            self.timestamp(store, sv).await?;
            renewed.push("timestamp");
        }
        Ok(renewed)
    }
}

/// A release's canonical manifest as a TUF target.
pub fn target_file(r: &ReleaseRecord) -> TargetFile {
    TargetFile {
        length: r.manifest.len() as u64,
        hashes: BTreeMap::from([("sha256".to_owned(), tuf::sha256(&r.manifest))]),
        custom: Some(serde_json::json!({"convoy": {"digest": r.digest}})),
    }
}

/// Compares two strings in constant time.
fn ring_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks targets metadata uploaded for `version`: signed by `role`'s
/// threshold, of type targets, unexpired.
fn check_targets(meta: &Value, keys: &BTreeMap<String, Value>, role: &RoleKeys, version: u64) -> AppResult<()> {
    let bad = |m: String| AppError::bad_request(m);
    let t: Targets =
        serde_json::from_value(meta["signed"].clone()).map_err(|e| bad(format!("not TUF targets metadata: {e}")))?;
    if t.kind == "targets" && t.version < version {
        return Err(AppError::conflict(format!(
            "the targets are at version {} now; sign the newest again",
            version - 1
        )));
    }
    if t.kind != "targets" || t.version != version {
        return Err(bad(format!("targets must be version {version} (got {} {})", t.kind, t.version)));
    }
    if tuf::parse_time(&t.expires).is_none_or(|x| x <= now_secs()) {
        return Err(bad(format!("the targets expire {}: in the past or unreadable", t.expires)));
    }
    for r in t.delegations.iter().flat_map(|d| d.roles.iter()) {
        if !tuf::valid_role_name(&r.name) || ROLES.contains(&r.name.as_str()) {
            return Err(bad(format!("targets delegate to a role named {:?}, which cannot be a metadata file", r.name)));
        }
        if r.threshold == 0 || r.threshold as usize > r.keyids.len() {
            return Err(bad(format!(
                "delegated role {} has threshold {} of {} keys",
                r.name,
                r.threshold,
                r.keyids.len()
            )));
        }
    }
    tuf::verify("targets", meta, keys, role).map_err(|e| bad(format!("targets: {e}")))
}

/// Signs a published release into the metadata (every publish, also one
/// of a release already stored: publishing again signs in one whose
/// signing failed). Agents refuse a release until it is signed. `false`:
/// the targets role is offline, the publisher signs.
pub async fn published(st: &AppState, r: &ReleaseRecord) -> AppResult<bool> {
    let Some(repo) = st.tuf.get() else { return Ok(false) };
    repo.add_release(st.store.as_ref(), r).await.map_err(|e| {
        tracing::error!(app = %r.app, version = %r.version, error = %e, "could not sign the release into TUF metadata");
        AppError::internal(format!("{}@{} is stored but not signed ({e}); publish it again", r.app, r.version))
    })
}

/// Re-signs expiring metadata every few minutes, for as long as the server runs.
pub async fn renew_forever(st: AppState) {
    loop {
        if let Some(repo) = st.tuf.get() {
            match repo.renew(st.store.as_ref()).await {
                Ok(r) if !r.is_empty() => tracing::info!(renewed = ?r, "TUF metadata re-signed"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "re-signing TUF metadata failed; retrying"),
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(300)).await;
    }
}

/// A metadata file as a TUF client asks for it: `ROLE.json` (the newest)
/// or `N.ROLE.json`.
pub async fn metadata(st: &AppState, file: &str) -> AppResult<Vec<u8>> {
    let name = file.strip_suffix(".json").ok_or_else(|| AppError::not_found(format!("no metadata {file:?}")))?;
    let (version, role) = match name.split_once('.') {
        Some((v, role)) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
            (Some(v.parse::<u64>().map_err(|_| AppError::not_found("no such version"))?), role)
        }
        _ => (None, name),
    };
    if !ROLES.contains(&role) && !tuf::valid_role_name(role) {
        return Err(AppError::not_found(format!("no metadata for role {role:?}")));
    }
    let (_, body) = st.store.get_tuf(role, version).await?.ok_or_else(|| {
        AppError::not_found(format!(
            "no {role} metadata{}",
            version.map(|v| format!(" version {v}")).unwrap_or_default()
        ))
    })?;
    Ok(body)
}

/// A release's canonical manifest as a TUF target file: `manifest.json`,
/// or `SHA256.manifest.json` (consistent snapshots), which must match.
pub async fn target(st: &AppState, app: &str, version: &str, file: &str) -> AppResult<Vec<u8>> {
    let hash = match file {
        "manifest.json" => None,
        _ => Some(
            file.strip_suffix(".manifest.json")
                .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| AppError::not_found(format!("no target file {file:?}")))?,
        ),
    };
    let r = super::content::find(st, app, version).await?;
    if hash.is_some_and(|h| h != tuf::sha256(&r.manifest)) {
        return Err(AppError::not_found(format!("{app}@{version} has no manifest with that hash")));
    }
    Ok(r.manifest)
}
