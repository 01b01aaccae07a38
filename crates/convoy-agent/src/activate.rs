//! Go-live and rollback on one target. The live link `ROOT/current/APP`
//! changes only by renaming a fresh symlink over it, so the application is
//! on the old release or the new one, never between.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use convoy_pack::{open_dir_nofollow, open_parent_nofollow, openat_nofollow, Descriptor, RelPath, DESCRIPTOR_FILE};
use convoy_wire::{ReportKind, Work};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use crate::hooks::{self, HookEnv};
use crate::inventory::current_version;
use crate::stage::release_dir;
use crate::AgentConfig;

type Outcome = (ReportKind, BTreeMap<String, String>, String);

fn descriptor(dir: &Path) -> Result<Descriptor, String> {
    match std::fs::read_to_string(dir.join(DESCRIPTOR_FILE)) {
        Ok(text) => Descriptor::parse(&text).map_err(|e| e.to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Descriptor::default()),
        Err(e) => Err(format!("reading {DESCRIPTOR_FILE}: {e}")),
    }
}

fn link_path(root: &Path, app: &str) -> PathBuf {
    root.join("current").join(app)
}

/// Points `current/APP` at `version` (or removes it) by an atomic rename.
fn switch(root: &Path, app: &str, version: Option<&str>) -> std::io::Result<()> {
    let link = link_path(root, app);
    std::fs::create_dir_all(link.parent().expect("link has a parent"))?;
    match version {
        Some(v) => {
            let tmp = root.join("current").join(format!(".{app}.switch"));
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(Path::new("..").join("releases").join(app).join(v), &tmp)?;
            std::fs::rename(&tmp, &link)?;
            // make the switch itself durable before anyone is told of it
            std::fs::File::open(root.join("current"))?.sync_all()
        }
        None => match std::fs::remove_file(&link) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
    }
}

struct Log(String);
impl Log {
    fn add(&mut self, step: &str, out: &str) {
        if !out.trim().is_empty() {
            self.0.push_str(&format!("[{step}] {}\n", out.trim_end()));
        }
    }
}

async fn hook(name: &str, cmd: Option<&String>, dir: &Path, env: &HookEnv<'_>, timeout: u64, log: &mut Log) -> bool {
    let Some(cmd) = cmd else { return true };
    let r = hooks::run(name, cmd, dir, env, Duration::from_secs(timeout)).await;
    log.add(name, &r.output);
    r.ok
}

/// Runs `health` until it passes or its timeout ends. Returns the time it
/// took and the metrics of the passing run.
async fn health(
    d: &Descriptor,
    dir: &Path,
    env: &HookEnv<'_>,
    log: &mut Log,
) -> Result<(Duration, Vec<(String, String)>), String> {
    let start = Instant::now();
    let Some(cmd) = &d.hooks.health else {
        return Ok((Duration::ZERO, Vec::new()));
    };
    let deadline = start + Duration::from_secs(d.health.timeout_secs);
    loop {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
        let r = hooks::run("health", cmd, dir, env, left).await;
        if r.ok {
            log.add("health", &r.output);
            return Ok((start.elapsed(), hooks::metrics_of(&r.output)));
        }
        if Instant::now() + Duration::from_millis(d.health.interval_ms) >= deadline {
            log.add("health", &r.output);
            return Err(format!("health check did not pass within {}s", d.health.timeout_secs));
        }
        tokio::time::sleep(Duration::from_millis(d.health.interval_ms)).await;
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Copies the machine's own config files from the running release into the
/// new one (P-config); the package's copies are used only on first install.
/// No symlink is followed at any component, in either release: a file
/// reached through one is neither read nor written, and the copy replaces
/// the name in the new release by a rename, never writing through it.
fn carry_config(d: &Descriptor, from: &Path, to: &Path, log: &mut Log) {
    for f in &d.config_files {
        match carry_one(from, to, f) {
            Ok(true) => log.add("config", &format!("kept the machine's {f}")),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(file = %f, error = %e, "config file not carried over");
                log.add("config", &format!("did not keep the machine's {f}: {e}"));
            }
        }
    }
}

/// Copies one config file; `Ok(false)` if the running release has none.
fn carry_one(from: &Path, to: &Path, f: &str) -> io::Result<bool> {
    let rel = RelPath::parse(f).map_err(io::Error::other)?;
    let in_release =
        |which: &'static str| move |e: io::Error| io::Error::new(e.kind(), format!("{e} (in the {which} release)"));

    let src = open_parent_nofollow(open_dir_nofollow(from)?, &rel).and_then(|(dir, name)| {
        openat_nofollow(dir, name, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY, Mode::empty())
    });
    let mut src = match src {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(in_release("running")(e)),
    };
    let meta = src.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other(format!("{f} is not a regular file (in the running release)")));
    }

    let (dir, name) = open_parent_nofollow(open_dir_nofollow(to)?, &rel).map_err(in_release("new"))?;
    // the rename below replaces a link rather than following it; still, a
    // package that ships a link here keeps it
    if rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode).is_symlink())
    {
        return Err(io::Error::other(format!("{name} is a symlink, which is not followed (in the new release)")));
    }
    let tmp = format!(".{name}.convoy-carry");
    let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL;
    let mut out = std::fs::File::from(openat_nofollow(&dir, &tmp, flags, Mode::from_raw_mode(0o600))?);
    let written = io::copy(&mut src, &mut out)
        .and_then(|_| out.set_permissions(std::fs::Permissions::from_mode(meta.permissions().mode() & 0o777)))
        .and_then(|_| out.sync_all())
        .and_then(|_| rustix::fs::renameat(&dir, tmp.as_str(), &dir, name).map_err(io::Error::from));
    if let Err(e) = written {
        let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
        return Err(e);
    }
    rustix::fs::fsync(&dir)?;
    Ok(true)
}

pub async fn activate(cfg: &AgentConfig, w: &Work) -> Outcome {
    if let Some(at) = w.go_live_at {
        let wait = at - now_ms();
        if wait > 0 {
            tracing::info!(instruction = %w.instruction_id, wait_ms = wait, "waiting for go-live");
            tokio::time::sleep(Duration::from_millis(wait as u64)).await;
        }
    }
    let root = &cfg.root;
    let new_dir = release_dir(root, &w.app, &w.version);
    let mut log = Log(String::new());
    let mut metrics = BTreeMap::new();
    let fail = |m: String, log: Log| (ReportKind::Failed { message: m }, BTreeMap::new(), log.0);
    if !new_dir.is_dir() {
        return fail(format!("release {}@{} is not staged on this target", w.app, w.version), log);
    }
    let new_desc = match descriptor(&new_dir) {
        Ok(d) => d,
        Err(e) => return fail(e, log),
    };
    // The release to come back to: what is live now, or, if an earlier try
    // was cut off after the switch, what the server recorded as before.
    let prev = current_version(root, &w.app)
        .filter(|v| v != &w.version)
        .or_else(|| w.previous_version.clone().filter(|v| v != &w.version))
        .filter(|v| release_dir(root, &w.app, v).is_dir());
    let prev_dir = prev.as_ref().map(|v| release_dir(root, &w.app, v));
    let prev_desc = prev_dir.as_ref().map(|d| descriptor(d).unwrap_or_default());
    let new_env = HookEnv { root, app: &w.app, version: &w.version, previous: prev.as_deref() };
    let start = Instant::now();

    if current_version(root, &w.app).as_deref() == Some(w.version.as_str()) {
        // already live (deployed again, or an activation cut off after its
        // switch): stop it before starting it again
        let t = new_desc.hooks.timeout_secs;
        if !hook("stop", new_desc.hooks.stop.as_ref(), &new_dir, &new_env, t, &mut log).await {
            return (ReportKind::Failed { message: "the stop hook of the live release failed".into() }, metrics, log.0);
        }
    } else if let (Some(pd), Some(pdesc), Some(pv)) = (&prev_dir, &prev_desc, &prev) {
        // stop the running release
        let env = HookEnv { root, app: &w.app, version: pv, previous: None };
        if !hook("stop", pdesc.hooks.stop.as_ref(), pd, &env, pdesc.hooks.timeout_secs, &mut log).await {
            hook("start", pdesc.hooks.start.as_ref(), pd, &env, pdesc.hooks.timeout_secs, &mut log).await;
            return (ReportKind::RolledBack, metrics, log.0);
        }
        carry_config(&new_desc, pd, &new_dir, &mut log);
    }
    if let Err(e) = switch(root, &w.app, Some(&w.version)) {
        log.add("switch", &e.to_string());
        return restore(cfg, w, prev.as_deref(), &new_desc, log).await;
    }
    metrics.insert("switch_ms".into(), start.elapsed().as_millis().to_string());
    if let Some(at) = w.go_live_at {
        metrics.insert("golive_lag_ms".into(), (now_ms() - at).max(0).to_string());
    }

    let t = new_desc.hooks.timeout_secs;
    if !hook("migrate", new_desc.hooks.migrate.as_ref(), &new_dir, &new_env, t, &mut log).await
        || !hook("start", new_desc.hooks.start.as_ref(), &new_dir, &new_env, t, &mut log).await
    {
        return restore(cfg, w, prev.as_deref(), &new_desc, log).await;
    }
    match health(&new_desc, &new_dir, &new_env, &mut log).await {
        Ok((took, extra)) => {
            metrics.insert("health_ms".into(), took.as_millis().to_string());
            metrics.insert("activate_ms".into(), start.elapsed().as_millis().to_string());
            metrics.extend(extra);
            let protect: Vec<&str> = [Some(w.version.as_str()), prev.as_deref()].into_iter().flatten().collect();
            match crate::prune::prune(root, &w.app, cfg.keep_releases, &protect) {
                Ok(removed) if !removed.is_empty() => {
                    log.add("prune", &format!("removed old releases {}", removed.join(", ")))
                }
                Ok(_) => {}
                Err(e) => log.add("prune", &format!("could not remove old releases: {e}")),
            }
            (ReportKind::Succeeded, metrics, log.0)
        }
        Err(e) => {
            log.add("health", &e);
            restore(cfg, w, prev.as_deref(), &new_desc, log).await
        }
    }
}

/// After a failed activation: stop the new release, switch back, start the old.
async fn restore(cfg: &AgentConfig, w: &Work, prev: Option<&str>, new_desc: &Descriptor, mut log: Log) -> Outcome {
    let root = &cfg.root;
    let new_dir = release_dir(root, &w.app, &w.version);
    let env = HookEnv { root, app: &w.app, version: &w.version, previous: prev };
    hook("stop", new_desc.hooks.stop.as_ref(), &new_dir, &env, new_desc.hooks.timeout_secs, &mut log).await;
    if let Err(e) = switch(root, &w.app, prev) {
        log.add("switch-back", &e.to_string());
        return (
            ReportKind::Failed { message: format!("activation failed and switching back failed: {e}") },
            BTreeMap::new(),
            log.0,
        );
    }
    if let Some(pv) = prev {
        let pd = release_dir(root, &w.app, pv);
        let pdesc = descriptor(&pd).unwrap_or_default();
        let penv = HookEnv { root, app: &w.app, version: pv, previous: None };
        if !hook("start", pdesc.hooks.start.as_ref(), &pd, &penv, pdesc.hooks.timeout_secs, &mut log).await {
            return (
                ReportKind::Failed { message: "switched back, but the previous release did not start".into() },
                BTreeMap::new(),
                log.0,
            );
        }
    }
    log.add("rollback", &format!("switched back to {}", prev.unwrap_or("(nothing)")));
    (ReportKind::RolledBack, BTreeMap::new(), log.0)
}

/// Brings the target back to the release it had before the deployment.
pub async fn rollback(cfg: &AgentConfig, w: &Work) -> Outcome {
    let root = &cfg.root;
    let mut log = Log(String::new());
    let cur = current_version(root, &w.app);
    let target = w.previous_version.as_deref();
    if cur.as_deref() == target {
        log.add("rollback", "already on the previous release");
        return (ReportKind::RolledBack, BTreeMap::new(), log.0);
    }
    if let Some(t) = target {
        if !release_dir(root, &w.app, t).is_dir() {
            return (
                ReportKind::Failed { message: format!("previous release {}@{t} is no longer on this target", w.app) },
                BTreeMap::new(),
                log.0,
            );
        }
    }
    if let Some(cv) = &cur {
        let cd = release_dir(root, &w.app, cv);
        let cdesc = descriptor(&cd).unwrap_or_default();
        let env = HookEnv { root, app: &w.app, version: cv, previous: None };
        hook("stop", cdesc.hooks.stop.as_ref(), &cd, &env, cdesc.hooks.timeout_secs, &mut log).await;
    }
    if let Err(e) = switch(root, &w.app, target) {
        return (ReportKind::Failed { message: format!("switching back failed: {e}") }, BTreeMap::new(), log.0);
    }
    if let Some(t) = target {
        let td = release_dir(root, &w.app, t);
        let tdesc = descriptor(&td).unwrap_or_default();
        let env = HookEnv { root, app: &w.app, version: t, previous: cur.as_deref() };
        if !hook("start", tdesc.hooks.start.as_ref(), &td, &env, tdesc.hooks.timeout_secs, &mut log).await {
            return (
                ReportKind::Failed { message: "switched back, but the previous release did not start".into() },
                BTreeMap::new(),
                log.0,
            );
        }
        if let Err(e) = health(&tdesc, &td, &env, &mut log).await {
            return (ReportKind::Failed { message: format!("switched back, but {e}") }, BTreeMap::new(), log.0);
        }
    }
    log.add("rollback", &format!("now on {}", target.unwrap_or("(nothing)")));
    (ReportKind::RolledBack, BTreeMap::new(), log.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    /// A running release `old` and a new one `new`, both with `config/`,
    /// and a directory `outside` that neither may touch.
    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let (old, new, outside) = (t.path().join("old"), t.path().join("new"), t.path().join("outside"));
        for d in [&old, &new] {
            fs::create_dir_all(d.join("config")).unwrap();
        }
        fs::create_dir(&outside).unwrap();
        (t, old, new, outside)
    }

    fn carry(old: &Path, new: &Path) -> String {
        let d = Descriptor::parse("config_files = ['config/app.env']").unwrap();
        let mut log = Log(String::new());
        carry_config(&d, old, new, &mut log);
        log.0
    }

    #[test]
    fn keeps_the_machines_config() {
        let (_t, old, new, _) = setup();
        fs::write(old.join("config/app.env"), "machine").unwrap();
        fs::set_permissions(old.join("config/app.env"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::write(new.join("config/app.env"), "package").unwrap();
        let log = carry(&old, &new);
        assert!(log.contains("kept the machine's config/app.env"), "{log}");
        assert_eq!(fs::read_to_string(new.join("config/app.env")).unwrap(), "machine");
        assert_eq!(fs::metadata(new.join("config/app.env")).unwrap().permissions().mode() & 0o777, 0o640);
        assert_eq!(fs::read_dir(new.join("config")).unwrap().count(), 1, "no temporary file left");
        // nothing to keep on a first install
        fs::remove_file(old.join("config/app.env")).unwrap();
        assert_eq!(carry(&old, &new), "");
    }

    #[test]
    fn never_writes_through_a_symlink_in_the_new_release() {
        let (_t, old, new, outside) = setup();
        fs::write(old.join("config/app.env"), "machine").unwrap();
        fs::remove_dir(new.join("config")).unwrap();
        symlink(&outside, new.join("config")).unwrap();
        let log = carry(&old, &new);
        assert!(log.contains("config is a symlink"), "{log}");
        assert!(!outside.join("app.env").exists());

        // the file itself a link out of the release
        fs::remove_file(new.join("config")).unwrap();
        fs::create_dir(new.join("config")).unwrap();
        symlink(outside.join("target"), new.join("config/app.env")).unwrap();
        let log = carry(&old, &new);
        assert!(log.contains("app.env is a symlink"), "{log}");
        assert!(!outside.join("target").exists());
        assert!(new.join("config/app.env").is_symlink());
    }

    #[test]
    fn never_reads_through_a_symlink_in_the_running_release() {
        let (_t, old, new, outside) = setup();
        fs::write(outside.join("app.env"), "secret").unwrap();
        fs::write(new.join("config/app.env"), "package").unwrap();
        fs::remove_dir(old.join("config")).unwrap();
        symlink(&outside, old.join("config")).unwrap();
        let log = carry(&old, &new);
        assert!(log.contains("config is a symlink"), "{log}");
        assert_eq!(fs::read_to_string(new.join("config/app.env")).unwrap(), "package");

        fs::remove_file(old.join("config")).unwrap();
        fs::create_dir(old.join("config")).unwrap();
        symlink(outside.join("app.env"), old.join("config/app.env")).unwrap();
        let log = carry(&old, &new);
        assert!(log.contains("app.env is a symlink"), "{log}");
        assert_eq!(fs::read_to_string(new.join("config/app.env")).unwrap(), "package");
    }
}
