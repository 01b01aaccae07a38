//! The agent's TUF client: before it stages and before it switches, it
//! updates its trusted metadata from the server the TUF way (root by root,
//! then timestamp, snapshot, targets, delegations; `convoy_wire::tuf::
//! Trusted` checks signatures, versions and expiry) and refuses a release
//! the signed metadata does not list with the digest the work names.
//!
//! The first root is the one given with `--trust-root`, or else the one
//! the server showed at enrolment (trusted then, like the server's work
//! key). Trusted metadata is kept in `.convoy/tuf/`, so a server (or a
//! relay) that later serves older metadata is refused even across
//! restarts. Polls never touch any of this: only staging and switching do.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use convoy_client::Client;
use convoy_wire::tuf::{self, Trusted};

const META: &str = "/tuf/metadata";
/// Most root rotations taken in one update.
const MAX_ROOT_ROTATIONS: u64 = 32;

pub struct TufClient {
    dir: PathBuf,
    trusted: tokio::sync::Mutex<Option<Trusted>>,
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Most bytes a metadata file may have (a hostile server sending endless
/// data is cut off): timestamps are tiny, targets grow with releases.
fn max_len(file: &str) -> usize {
    if file.ends_with("timestamp.json") {
        64 << 10
    } else if file.ends_with("root.json") {
        1 << 20
    } else {
        32 << 20
    }
}

/// Bytes of a metadata file, or `None` if the server has no such file.
async fn fetch(client: &Client, file: &str) -> anyhow::Result<Option<Vec<u8>>> {
    match client.get_bytes_capped(&format!("{META}/{file}"), Duration::from_secs(60), max_len(file)).await {
        Ok(b) => Ok(Some(b.to_vec())),
        Err(e) if e.downcast_ref::<convoy_client::ServerError>().is_some_and(|s| s.status == 404) => Ok(None),
        Err(e) => Err(e.context(format!("fetching TUF {file}"))),
    }
}

/// Keeps trusted timestamp/snapshot metadata as the floor for versions
/// after a restart: replaced by rename, not synced to disk (after a power
/// loss the floor is the one before, still signed and still a floor).
fn keep(p: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, p)
}

impl TufClient {
    /// Sets up trust: a root file given by the operator, or (first start)
    /// the server's current root as shown at enrolment.
    pub async fn open(state: &Path, client: &Client, trust_root: Option<&Path>) -> anyhow::Result<Self> {
        let dir = state.join("tuf");
        std::fs::create_dir_all(&dir)?;
        let root_file = dir.join("root.json");
        if let Some(given) = trust_root {
            let raw = std::fs::read(given).with_context(|| format!("reading --trust-root {}", given.display()))?;
            tuf::self_signed_root(&raw)
                .with_context(|| format!("--trust-root {} is no valid TUF root", given.display()))?;
            // a root given by the operator replaces whatever was trusted
            // before it (trusted on first use, or an earlier given root)
            let mark = dir.join("given-root.sha256");
            let hash = tuf::sha256(&raw);
            if std::fs::read_to_string(&mark).ok().as_deref() != Some(hash.as_str()) {
                for f in ["timestamp.json", "snapshot.json"] {
                    let _ = std::fs::remove_file(dir.join(f));
                }
                crate::journal::write_private(&root_file, &raw)?;
                crate::journal::write_private(&mark, hash.as_bytes())?;
                tracing::info!(root = %given.display(), "trusting the TUF root given with --trust-root");
            }
        } else if !root_file.exists() {
            let raw = fetch(client, "1.root.json")
                .await?
                .ok_or_else(|| anyhow::anyhow!("the server publishes no TUF root (an older server?)"))?;
            tuf::self_signed_root(&raw).context("the server's TUF root does not verify")?;
            crate::journal::write_private(&root_file, &raw)?;
            tracing::info!("trusting the server's TUF root as of enrolment");
        }
        Ok(Self { dir, trusted: Default::default() })
    }

    async fn load(&self) -> anyhow::Result<Trusted> {
        let raw = std::fs::read(self.dir.join("root.json")).context("reading the trusted TUF root")?;
        let mut t = Trusted::new(&raw)?;
        // what was trusted before: never accept anything older
        let now = now_secs();
        if let Ok(ts) = std::fs::read(self.dir.join("timestamp.json")) {
            // an expired one still bounds versions: check it against a time it was valid
            let _ = t.update_timestamp(&ts, now).or_else(|_| t.update_timestamp(&ts, 0));
        }
        if let Ok(s) = std::fs::read(self.dir.join("snapshot.json")) {
            let _ = t.update_snapshot(&s, now).or_else(|_| t.update_snapshot(&s, 0));
        }
        Ok(t)
    }

    /// Brings the trusted metadata up to date and checks that `app@version`
    /// is a signed target whose BLAKE3 root digest is `digest`.
    pub async fn check(&self, client: &Client, app: &str, version: &str, digest: &str) -> anyhow::Result<()> {
        let mut guard = self.trusted.lock().await;
        let mut t = match guard.take() {
            Some(t) => t,
            None => self.load().await?,
        };
        let r = self.update(client, &mut t, app, version, digest).await;
        *guard = Some(t);
        r
    }

    async fn update(
        &self,
        client: &Client,
        t: &mut Trusted,
        app: &str,
        version: &str,
        digest: &str,
    ) -> anyhow::Result<()> {
        let now = now_secs();
        // newer roots first, each signed by the one before; the timestamp is
        // asked for at the same time and used only if no root came
        let next_root = format!("{}.root.json", t.root.version.saturating_add(1));
        let (root, stamp) = tokio::join!(fetch(client, &next_root), fetch(client, "timestamp.json"));
        let mut stamp = stamp?;
        if let Some(mut raw) = root? {
            for _ in 0..MAX_ROOT_ROTATIONS {
                let next = t.root.version + 1;
                t.update_root(&raw).with_context(|| format!("root version {next} refused"))?;
                crate::journal::write_private(&self.dir.join("root.json"), &raw)?;
                tracing::warn!(version = next, "the server's TUF root was rotated; trusting the new one");
                match fetch(client, &format!("{}.root.json", next.saturating_add(1))).await? {
                    Some(r) => raw = r,
                    None => break,
                }
            }
            stamp = fetch(client, "timestamp.json").await?;
        }
        let raw = stamp.ok_or_else(|| anyhow::anyhow!("no TUF timestamp"))?;
        if t.update_timestamp(&raw, now).context("TUF timestamp refused")? {
            keep(&self.dir.join("timestamp.json"), &raw)?;
        }
        let snap = t.snapshot_version().expect("a trusted timestamp names a snapshot");
        if t.snapshot.as_ref().map(|s| s.version) != Some(snap) {
            let raw = fetch(client, &format!("{snap}.snapshot.json"))
                .await?
                .ok_or_else(|| anyhow::anyhow!("TUF snapshot {snap} is missing"))?;
            t.update_snapshot(&raw, now).context("TUF snapshot refused")?;
            keep(&self.dir.join("snapshot.json"), &raw)?;
        }
        let want = t.role_version("targets").ok_or_else(|| anyhow::anyhow!("the TUF snapshot names no targets"))?;
        if t.targets.as_ref().map(|x| x.version) != Some(want) {
            let raw = fetch(client, &format!("{want}.targets.json"))
                .await?
                .ok_or_else(|| anyhow::anyhow!("TUF targets {want} is missing"))?;
            t.update_targets(&raw, now).context("TUF targets refused")?;
        }
        // nothing trusted may be past its expiry, even if unchanged (freeze)
        t.unexpired(now).context("trusted TUF metadata")?;
        let path = tuf::target_path(app, version);
        // a role the snapshot does not name has signed nothing yet
        if let Some((role, want)) = t.delegate_for(&path).and_then(|r| Some((r.clone(), t.role_version(&r)?))) {
            if t.delegated.get(&role).map(|x| x.version) != Some(want) {
                let raw = fetch(client, &format!("{want}.{role}.json"))
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("TUF {role} {want} is missing"))?;
                t.update_delegated(&role, &raw, now).with_context(|| format!("TUF {role} refused"))?;
            }
        }
        let Some(target) = t.find(&path) else {
            anyhow::bail!(
                "{app}@{version} is not in the server's signed TUF metadata: it was not published through signing (refusing it)"
            );
        };
        match target.digest() {
            Some(d) if d == digest => Ok(()),
            Some(d) => anyhow::bail!(
                "the work names digest {digest} for {app}@{version}, but the signed TUF metadata says {d} (refusing it)"
            ),
            None => anyhow::bail!("the signed TUF target {path} carries no convoy digest (refusing it)"),
        }
    }
}

impl TufClient {
    /// After [`Self::check`]: a deployment in an environment whose approver
    /// role the trusted targets delegate goes ahead only with a threshold of
    /// approvers' signatures (never the requester's) over a statement that
    /// names this very deployment, release, digest and environment, and
    /// this target; not after the statement expires, not before the go-live
    /// it approved. An agent pinned to an environment (`--environment`)
    /// takes no work of any other (or of none).
    pub async fn approved(&self, w: &convoy_wire::Work, target_id: &str, pinned: Option<&str>) -> anyhow::Result<()> {
        use convoy_wire::approval;
        if let Some(p) = pinned {
            if w.env.as_deref() != Some(p) {
                anyhow::bail!(
                    "this agent takes releases of environment {p} only, and the work is for {} (refusing it)",
                    w.env.as_deref().map_or("no environment".to_owned(), |e| format!("environment {e}"))
                );
            }
        }
        let Some(env) = w.env.as_deref() else { return Ok(()) };
        let guard = self.trusted.lock().await;
        let targets = guard
            .as_ref()
            .and_then(|t| t.targets.as_ref())
            .ok_or_else(|| anyhow::anyhow!("no trusted TUF targets to check approvals against"))?;
        let Some((role, keys)) = targets.delegation(&tuf::approvers_role(env)) else { return Ok(()) };
        let envelope = w.approval.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "{env} needs {} approvers' signatures and the work carries none (refusing it)",
                role.threshold
            )
        })?;
        let s = approval::check(role, keys, envelope, now_secs())
            .with_context(|| format!("the approval of {} in {env} does not hold (refusing it)", w.deployment_id))?;
        let differs = [
            ("deployment", s.deployment.as_str(), w.deployment_id.as_str()),
            ("app", &s.app, &w.app),
            ("version", &s.version, &w.version),
            ("digest", &s.digest, &w.digest),
            ("environment", &s.env, env),
        ]
        .into_iter()
        .find(|(_, signed, work)| signed != work);
        if let Some((what, signed, work)) = differs {
            anyhow::bail!("the approvers signed {what} {signed}, but the work names {work} (refusing it)");
        }
        if !s.targets.iter().any(|t| t == target_id) {
            anyhow::bail!(
                "the approvers approved {} target(s), and this one ({target_id}) is not among them (refusing it)",
                s.targets.len()
            );
        }
        // never earlier than the approved go-live, by the work or by this machine's clock
        if let Some(approved) = s.go_live_at {
            let now = now_secs() * 1000;
            let at = w.go_live_at.unwrap_or(now);
            if at + 60_000 < approved || (w.phase == convoy_wire::Phase::Activate && now + 60_000 < approved) {
                anyhow::bail!("the work goes live before the go-live the approvers approved (refusing it)");
            }
        }
        Ok(())
    }
}
