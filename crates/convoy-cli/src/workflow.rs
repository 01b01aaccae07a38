//! Users, environments, requests (approve, reject, confirm, cancel) and the
//! audit log.

use std::time::Duration;

use anyhow::{bail, Context};
use convoy_client::Client;
use convoy_domain::{parse_waves, Amount, OutsideWindow, Policy, PreflightFailure, Role};
use convoy_wire::{Decision, DeploymentInfo, EnvInfo, EventInfo, NewUser, RequestInfo, UserInfo};

use crate::output::{self, line, Format};

pub async fn users_add(c: &Client, name: &str, role: &str, fmt: Format) -> anyhow::Result<()> {
    Role::parse(role)?;
    let u: UserInfo =
        c.send_json(reqwest::Method::POST, "/users", &NewUser { name: name.into(), role: role.into() }).await?;
    match fmt {
        Format::Json => output::json(&u),
        Format::Table => {
            line(u.token.clone().unwrap_or_default());
            eprintln!("user {} added as {}; the token above is shown only now (it is stored hashed)", u.name, u.role);
        }
    }
    Ok(())
}

pub async fn users_list(c: &Client, fmt: Format) -> anyhow::Result<()> {
    let users: Vec<UserInfo> = c.get_json("/users", Duration::from_secs(30)).await?;
    match fmt {
        Format::Json => output::json(&users),
        Format::Table => {
            let rows: Vec<Vec<String>> = users
                .iter()
                .map(|u| vec![u.name.clone(), u.role.clone(), u.created_by.clone(), output::time(u.created_at)])
                .collect();
            output::table(&["USER", "ROLE", "ADDED BY", "ADDED"], &rows);
        }
    }
    Ok(())
}

pub async fn users_remove(c: &Client, name: &str, fmt: Format) -> anyhow::Result<()> {
    let resp =
        c.request(reqwest::Method::DELETE, &format!("/users/{name}")).send().await.context("removing the user")?;
    let v: serde_json::Value = Client::check(resp).await?.json().await?;
    match fmt {
        Format::Json => output::json(&v),
        Format::Table => line(format!("user {name} removed; its token no longer works")),
    }
    Ok(())
}

/// `convoy env set` options; `None` keeps the environment's current value.
#[derive(Debug, Default)]
pub struct EnvArgs<'a> {
    pub approvals: Option<u32>,
    pub approver_role: Option<&'a str>,
    pub confirm: Option<bool>,
    pub confirm_ttl: Option<&'a str>,
    /// Who besides the requester may confirm: a role, or "" for nobody.
    pub confirm_role: Option<&'a str>,
    /// What a wave breaking its budget does: `all`, `wave` or `pause`.
    pub on_breach: Option<&'a str>,
    /// Whether targets enrolled after planning join the last wave.
    pub include_late: Option<bool>,
    /// How long a request waits for approvals.
    pub approval_ttl: Option<&'a str>,
    pub windows: Option<Vec<String>>,
    pub outside_window: Option<&'a str>,
    pub waves: Option<&'a str>,
    pub wave_gap: Option<&'a str>,
    pub max_failures: Option<&'a str>,
    pub preflight_failure: Option<&'a str>,
    pub checks: Option<Vec<String>>,
    pub preflight_timeout: Option<&'a str>,
    pub webhook: Option<&'a str>,
}

/// Applies the given options over a policy.
pub fn apply(mut p: Policy, a: &EnvArgs<'_>) -> anyhow::Result<Policy> {
    if let Some(n) = a.approvals {
        p.approvals = n;
    }
    if let Some(r) = a.approver_role {
        p.approver_role = Role::parse(r)?;
    }
    if let Some(c) = a.confirm {
        p.confirm = c;
    }
    if let Some(t) = a.confirm_ttl {
        p.confirm_ttl_secs = crate::parse_duration(t)?;
    }
    if let Some(t) = a.approval_ttl {
        p.approval_ttl_secs = crate::parse_duration(t)?;
    }
    if let Some(l) = a.include_late {
        p.include_late = l;
    }
    if let Some(b) = a.on_breach {
        p.on_breach = match b {
            "all" => convoy_domain::OnBreach::RollbackAll,
            "wave" => convoy_domain::OnBreach::RollbackWave,
            "pause" => convoy_domain::OnBreach::Pause,
            _ => {
                bail!("--on-breach must be all (roll back every wave that went live), wave (only the breaching one) or pause (halt; an operator resumes or rolls back)")
            }
        };
    }
    if let Some(r) = a.confirm_role {
        p.confirm_role = if r.is_empty() || r == "none" { None } else { Some(Role::parse(r)?) };
    }
    if let Some(w) = &a.windows {
        p.windows = w.iter().filter(|w| !w.is_empty()).cloned().collect();
    }
    if let Some(o) = a.outside_window {
        p.outside_window = match o {
            "refuse" => OutsideWindow::Refuse,
            "next" => OutsideWindow::Next,
            _ => bail!("--outside-window must be refuse or next"),
        };
    }
    if let Some(w) = a.waves {
        p.waves = parse_waves(w)?;
    }
    if let Some(g) = a.wave_gap {
        p.wave_gap_secs = crate::parse_duration(g)?;
    }
    if let Some(m) = a.max_failures {
        p.max_failures = Amount::parse(m)?;
    }
    if let Some(f) = a.preflight_failure {
        p.preflight_failure = match f {
            "block" => PreflightFailure::Block,
            "skip" => PreflightFailure::Skip,
            _ => bail!("--preflight-failure must be block or skip"),
        };
    }
    if let Some(c) = &a.checks {
        p.checks = c.iter().filter(|c| !c.is_empty()).cloned().collect();
    }
    if let Some(t) = a.preflight_timeout {
        p.preflight_timeout_secs = crate::parse_duration(t)?;
    }
    if let Some(w) = a.webhook {
        p.webhook = (!w.is_empty()).then(|| w.to_owned());
    }
    p.validate()?;
    Ok(p)
}

fn print_env(e: &EnvInfo) {
    let p = &e.policy;
    let waves: Vec<String> = p.waves.iter().map(Amount::to_string).collect();
    line(format!("environment {}", e.name));
    line(format!(
        "  approvals       {} from {} or above, within {}s",
        p.approvals, p.approver_role, p.approval_ttl_secs
    ));
    line(format!(
        "  confirmation    {}",
        if p.confirm {
            let who = p.confirm_role.map_or("the requester".to_owned(), |r| format!("the requester or a {r} or above"));
            format!("required, within {}s, by {who}", p.confirm_ttl_secs)
        } else {
            "not needed".into()
        }
    ));
    if p.windows.is_empty() {
        line("  windows         any time");
    } else {
        let outside = match p.outside_window {
            OutsideWindow::Refuse => "refused",
            OutsideWindow::Next => "moved to the next window",
        };
        line(format!("  windows         {} (a go-live outside is {outside})", p.windows.join("; ")));
    }
    line(format!("  waves           {} (gap {}s)", waves.join(","), p.wave_gap_secs));
    line(format!("  max failures    {} per wave (a wave whose every target fails always halts)", p.max_failures));
    line(format!(
        "  on a breach     {}",
        match p.on_breach {
            convoy_domain::OnBreach::RollbackAll => "roll back every wave that went live",
            convoy_domain::OnBreach::RollbackWave => "roll back the breaching wave only; the deployment ends halted",
            convoy_domain::OnBreach::Pause =>
                "halt where it is; `convoy resume` starts the next wave, `convoy rollback` rolls back",
        }
    ));
    line(format!(
        "  late targets    {}",
        if p.include_late { "join the last wave before it goes live" } else { "listed as not in the deployment" }
    ));
    let on_failure = match p.preflight_failure {
        PreflightFailure::Block => "a failed target blocks the request",
        PreflightFailure::Skip => "failed targets are left out within the budget",
    };
    line(format!(
        "  preflight       {on_failure}; time-out {}s{}",
        p.preflight_timeout_secs,
        if p.checks.is_empty() { String::new() } else { format!(", checks: {}", p.checks.join(" ; ")) }
    ));
    if let Some(w) = &p.webhook {
        line(format!("  webhook         {w}"));
    }
    line(format!("  updated         {} by {}", output::time(e.updated_at), e.updated_by));
}

pub async fn env_set(c: &Client, name: &str, args: &EnvArgs<'_>, fmt: Format) -> anyhow::Result<()> {
    let current = match c.get_json::<EnvInfo>(&format!("/envs/{name}"), Duration::from_secs(30)).await {
        Ok(e) => e.policy,
        Err(e) if e.downcast_ref::<convoy_client::ServerError>().is_some_and(|s| s.status == 404) => Policy::default(),
        Err(e) => return Err(e),
    };
    let policy = apply(current, args)?;
    let e: EnvInfo = c.send_json(reqwest::Method::PUT, &format!("/envs/{name}"), &policy).await?;
    match fmt {
        Format::Json => output::json(&e),
        Format::Table => print_env(&e),
    }
    Ok(())
}

pub async fn env_show(c: &Client, name: Option<&str>, fmt: Format) -> anyhow::Result<()> {
    let envs: Vec<EnvInfo> = match name {
        Some(n) => vec![c.get_json(&format!("/envs/{n}"), Duration::from_secs(30)).await?],
        None => c.get_json("/envs", Duration::from_secs(30)).await?,
    };
    match fmt {
        Format::Json if name.is_some() => output::json(&envs[0]),
        Format::Json => output::json(&envs),
        Format::Table => {
            for e in &envs {
                print_env(e);
            }
            if envs.is_empty() {
                line("no environments; an admin makes one with `convoy env set NAME ...`");
            }
        }
    }
    Ok(())
}

pub async fn requests(c: &Client, all: bool, fmt: Format) -> anyhow::Result<()> {
    let path = if all { "/requests?all=true" } else { "/requests" };
    let r: Vec<RequestInfo> = c.get_json(path, Duration::from_secs(30)).await?;
    match fmt {
        Format::Json => output::json(&r),
        Format::Table => {
            let rows: Vec<Vec<String>> = r
                .iter()
                .map(|r| {
                    let d = &r.deployment;
                    vec![
                        d.id.clone(),
                        format!("{}@{}", d.app, d.version),
                        d.env.clone().unwrap_or_default(),
                        d.state.clone(),
                        if r.waiting_for.is_empty() { "-".into() } else { r.waiting_for.clone() },
                        format!("{}/{}", r.approvals, r.approvals_needed),
                        d.created_by.clone(),
                        d.reason.clone(),
                        d.go_live_at.map_or("-".into(), output::time),
                    ]
                })
                .collect();
            if rows.is_empty() {
                line(if all { "no open requests" } else { "nothing waits for you" });
            } else {
                output::table(
                    &["REQUEST", "RELEASE", "ENV", "STATE", "YOU MAY", "APPROVALS", "BY", "REASON", "GO-LIVE"],
                    &rows,
                );
            }
        }
    }
    Ok(())
}

/// `convoy change`: a request's go-live, selector or reason.
pub async fn change(
    c: &Client,
    id: &str,
    at: Option<&str>,
    asap: bool,
    selector: Option<&str>,
    reason: Option<&str>,
    fmt: Format,
) -> anyhow::Result<()> {
    if at.is_none() && !asap && selector.is_none() && reason.is_none() {
        bail!("nothing to change: give --at, --asap, --selector or --reason");
    }
    let now = chrono::Utc::now().timestamp_millis();
    let req = convoy_wire::ReviseRequest {
        selector: selector.map(str::to_owned),
        at: at.map(|a| crate::parse_at(a, now)).transpose()?,
        clear_at: asap,
        reason: reason.map(str::to_owned),
    };
    let d: DeploymentInfo = c.send_json(reqwest::Method::PATCH, &format!("/deployments/{id}"), &req).await?;
    match fmt {
        Format::Json => output::json(&d),
        Format::Table => line(format!("{} {}@{}: {} ({})", d.id, d.app, d.version, d.state, d.note)),
    }
    Ok(())
}

/// approve / reject / confirm / cancel (the note is the reason).
pub async fn act(c: &Client, id: &str, action: &str, note: &str, fmt: Format) -> anyhow::Result<()> {
    let d: DeploymentInfo = c
        .send_json(reqwest::Method::POST, &format!("/deployments/{id}/{action}"), &Decision { note: note.into() })
        .await?;
    match fmt {
        Format::Json => output::json(&d),
        Format::Table => line(format!("{} {}@{}: {} ({})", d.id, d.app, d.version, d.state, d.note)),
    }
    Ok(())
}

pub async fn audit(
    c: &Client,
    deployment: Option<&str>,
    actor: Option<&str>,
    limit: u32,
    fmt: Format,
) -> anyhow::Result<()> {
    let mut q = format!("/audit?limit={limit}");
    if let Some(d) = deployment {
        q.push_str(&format!("&deployment={d}"));
    }
    if let Some(a) = actor {
        q.push_str(&format!("&actor={a}"));
    }
    let ev: Vec<EventInfo> = c.get_json(&q, Duration::from_secs(30)).await?;
    match fmt {
        Format::Json => output::json(&ev),
        Format::Table => {
            let rows: Vec<Vec<String>> = ev
                .iter()
                .rev()
                .map(|e| {
                    let what = e.instruction_id.clone().unwrap_or_else(|| e.deployment_id.clone());
                    let mv = if e.from.is_empty() { e.to.clone() } else { format!("{} -> {}", e.from, e.to) };
                    vec![output::time(e.at), e.actor.clone(), what, mv, e.note.clone()]
                })
                .collect();
            output::table(&["TIME", "ACTOR", "OBJECT", "CHANGE", "NOTE"], &rows);
        }
    }
    Ok(())
}

/// `convoy trust`: the server's TUF roles, their keys, thresholds and
/// expiry, and what the key arrangement gives up. `--root-out FILE` saves
/// the current root (to hand agents with `--trust-root`).
pub async fn trust(c: &Client, root_out: Option<&std::path::Path>, fmt: Format) -> anyhow::Result<()> {
    use convoy_wire::tuf;
    let root_raw = c.get_bytes("/tuf/metadata/root.json").await?;
    let root = tuf::parse_root(&root_raw)?;
    let mut roles = Vec::new();
    for name in ["root", "targets", "snapshot", "timestamp"] {
        let raw = c.get_bytes(&format!("/tuf/metadata/{name}.json")).await?;
        let meta: serde_json::Value = serde_json::from_slice(&raw)?;
        let keys = root.roles.get(name).cloned().unwrap_or(tuf::RoleKeys { keyids: Vec::new(), threshold: 0 });
        roles.push(serde_json::json!({
            "role": name,
            "version": meta["signed"]["version"],
            "expires": meta["signed"]["expires"],
            "threshold": keys.threshold,
            "keyids": keys.keyids,
        }));
    }
    // one key held for every role: the server made them all (single-box mode)
    let mut all: Vec<&String> = root.roles.values().flat_map(|r| r.keyids.iter()).collect();
    all.sort();
    all.dedup();
    let single_box =
        root.roles.values().all(|r| r.threshold == 1 && r.keyids.len() == 1) && all.len() == root.roles.len();
    let mode = if single_box {
        "single-box: the server made and holds every key (root and targets too); whoever controls the server, \
         or its database together with its key secret, can sign releases. Agents still refuse anything not in \
         the signed metadata, and old or expired metadata."
    } else {
        "keys as the root lists them"
    };
    if let Some(p) = root_out {
        std::fs::write(p, &root_raw)?;
    }
    match fmt {
        Format::Json => output::json(&serde_json::json!({"roles": roles, "mode": mode, "root_version": root.version})),
        Format::Table => {
            let rows: Vec<Vec<String>> = roles
                .iter()
                .map(|r| {
                    let ids: Vec<String> = r["keyids"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|k| k.as_str().unwrap_or_default().chars().take(12).collect())
                        .collect();
                    vec![
                        r["role"].as_str().unwrap_or_default().to_owned(),
                        r["version"].to_string(),
                        format!("{} of {}", r["threshold"], ids.len()),
                        ids.join(","),
                        r["expires"].as_str().unwrap_or_default().to_owned(),
                    ]
                })
                .collect();
            output::table(&["ROLE", "VERSION", "THRESHOLD", "KEYS", "EXPIRES"], &rows);
            line(format!("mode: {mode}"));
            if let Some(p) = root_out {
                line(format!("root version {} saved to {}", root.version, p.display()));
            }
        }
    }
    Ok(())
}

/// `convoy keys generate FILE`: a new ed25519 key pair for TUF roles (root,
/// targets, a publisher or an approver): the private key in `FILE` (mode
/// 0600, never overwritten), the public key in `FILE.pub`.
pub fn keys_generate(file: &std::path::Path, fmt: Format) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = convoy_wire::tuf::SigningKey::generate();
    let public = key.public();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("creating {} (an existing key is never overwritten)", file.display()))?;
    f.write_all(&serde_json::to_vec_pretty(&key.to_file())?)?;
    f.sync_all()?;
    let pub_file = std::path::PathBuf::from(format!("{}.pub", file.display()));
    let mut pj = public.json();
    pj["keyid"] = serde_json::Value::String(public.id());
    std::fs::write(&pub_file, serde_json::to_vec_pretty(&pj)?)
        .with_context(|| format!("writing {}", pub_file.display()))?;
    match fmt {
        Format::Json => output::json(
            &serde_json::json!({"keyid": public.id(), "public": public.hex(), "private_file": file, "public_file": pub_file}),
        ),
        Format::Table => line(format!(
            "ed25519 key {}\n  private {} (0600: keep it offline for root and targets)\n  public  {}",
            public.id(),
            file.display(),
            pub_file.display()
        )),
    }
    Ok(())
}

fn read_key(path: &std::path::Path) -> anyhow::Result<convoy_wire::tuf::SigningKey> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
            .with_context(|| format!("{} is not a key file (convoy keys generate)", path.display()))?;
    convoy_wire::tuf::SigningKey::from_file(&v).with_context(|| format!("{} holds no private key", path.display()))
}

fn read_public(path: &std::path::Path) -> anyhow::Result<convoy_wire::tuf::PublicKey> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
            .with_context(|| format!("{} is not a key file (convoy keys generate)", path.display()))?;
    Ok(convoy_wire::tuf::PublicKey::from_json(&v)?)
}

fn in_a_year() -> String {
    convoy_wire::tuf::format_time(chrono::Utc::now().timestamp() + 365 * 86_400)
}

/// The newest signed part of a role's metadata on the server.
async fn latest_signed(c: &Client, role: &str) -> anyhow::Result<serde_json::Value> {
    let raw = c.get_bytes(&format!("/tuf/metadata/{role}.json")).await?;
    let meta: serde_json::Value = serde_json::from_slice(&raw)?;
    Ok(meta["signed"].clone())
}

/// `convoy trust init`: a new root, made here (offline keys): the given
/// root keys and threshold, the targets key, and the server's own online
/// keys for timestamp and snapshot; signed by every root key given.
pub async fn trust_init(
    c: &Client,
    root_keys: &[std::path::PathBuf],
    threshold: u32,
    targets_key: &std::path::Path,
    out: &std::path::Path,
    fmt: Format,
) -> anyhow::Result<()> {
    use convoy_wire::tuf;
    if root_keys.is_empty() || threshold == 0 || threshold as usize > root_keys.len() {
        bail!("give at least --threshold root keys (--root-key FILE, repeatable) and a threshold of 1 or more");
    }
    let signers: Vec<tuf::SigningKey> = root_keys.iter().map(|p| read_key(p)).collect::<anyhow::Result<_>>()?;
    let targets = read_public(targets_key)?;
    let cur: tuf::Root = serde_json::from_value(latest_signed(c, "root").await?)?;
    let mut keys = std::collections::BTreeMap::new();
    let mut roles = std::collections::BTreeMap::new();
    for role in ["timestamp", "snapshot"] {
        let r = cur.roles.get(role).context("the server's root names no such role")?.clone();
        for id in &r.keyids {
            keys.insert(id.clone(), cur.keys.get(id).context("the server's root lacks a key")?.clone());
        }
        roles.insert(role.to_owned(), r);
    }
    let root_ids: Vec<String> = signers.iter().map(|k| k.public().id()).collect();
    for k in &signers {
        keys.insert(k.public().id(), k.public().json());
    }
    keys.insert(targets.id(), targets.json());
    roles.insert("root".into(), tuf::RoleKeys { keyids: root_ids, threshold });
    roles.insert("targets".into(), tuf::RoleKeys { keyids: vec![targets.id()], threshold: 1 });
    let root = tuf::Root {
        kind: "root".into(),
        spec_version: tuf::SPEC_VERSION.into(),
        version: cur.version + 1,
        expires: in_a_year(),
        consistent_snapshot: true,
        keys,
        roles,
    };
    let refs: Vec<&tuf::SigningKey> = signers.iter().collect();
    let meta = tuf::sign(serde_json::to_value(&root)?, &refs)?;
    std::fs::write(out, serde_json::to_vec_pretty(&meta)?).with_context(|| format!("writing {}", out.display()))?;
    match fmt {
        Format::Json => output::json(&serde_json::json!({"root_version": root.version, "file": out})),
        Format::Table => line(format!(
            "root version {} ({} of {} root keys; targets key {}) written to {}; install it with `convoy trust upload {} --targets-key KEY`",
            root.version,
            threshold,
            root_keys.len(),
            targets.id(),
            out.display(),
            out.display()
        )),
    }
    Ok(())
}

/// `convoy trust upload ROOT --targets-key KEY`: installs a root made with
/// `trust init`, with the current targets re-signed by the new targets key.
pub async fn trust_upload(
    c: &Client,
    root: &std::path::Path,
    targets_key: &std::path::Path,
    key_secret: Option<&std::path::Path>,
    fmt: Format,
) -> anyhow::Result<()> {
    let root_meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root).with_context(|| format!("reading {}", root.display()))?)?;
    let key = read_key(targets_key)?;
    let mut t = latest_signed(c, "targets").await?;
    if t.get("delegations").is_some_and(|d| !d.is_null()) {
        bail!("the server's targets delegate to other keys; refusing to sign them with {}", targets_key.display());
    }
    t["version"] = (t["version"].as_u64().unwrap_or(0) + 1).into();
    t["expires"] = in_a_year().into();
    let targets = convoy_wire::tuf::sign(t, &[&key])?;
    // leaving single-box mode: proof of the server's key secret (read on
    // the server machine), so an API token alone never moves the root
    let proof = match key_secret {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let bytes: [u8; 32] = hex::decode(text.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .with_context(|| format!("{} must hold 64 hex digits", p.display()))?;
            convoy_wire::tuf::handover_proof(&bytes, &root_meta)?
        }
        None => String::new(),
    };
    let body = serde_json::json!({"root": root_meta, "targets": targets, "handover_proof": proof});
    let r: serde_json::Value = c.send_json(reqwest::Method::PUT, "/tuf/root", &body).await?;
    match fmt {
        Format::Json => output::json(&r),
        Format::Table => line(format!(
            "root version {} installed: the server now signs only timestamp and snapshot; publish with --sign-key {}",
            r["root_version"],
            targets_key.display()
        )),
    }
    Ok(())
}

/// Signs `app@version` into the server's TUF targets with the targets key
/// (offline targets): the newest targets plus this release, next version.
pub async fn sign_release(
    c: &Client,
    key: &std::path::Path,
    app: &str,
    version: &str,
    digest: &str,
    manifest: &[u8],
) -> anyhow::Result<()> {
    use convoy_wire::tuf;
    let key = read_key(key)?;
    let file = tuf::TargetFile {
        length: manifest.len() as u64,
        hashes: std::collections::BTreeMap::from([("sha256".to_owned(), tuf::sha256(manifest))]),
        custom: Some(serde_json::json!({"convoy": {"digest": digest}})),
    };
    for _ in 0..5 {
        // what is re-signed must be what this key signed before: the
        // server cannot slip entries or delegations under the key
        let raw = c.get_bytes("/tuf/metadata/targets.json").await?;
        let meta: serde_json::Value = serde_json::from_slice(&raw)?;
        let mine = tuf::RoleKeys { keyids: vec![key.public().id()], threshold: 1 };
        let keys = std::collections::BTreeMap::from([(key.public().id(), key.public().json())]);
        tuf::verify("targets", &meta, &keys, &mine).context(
            "the server's newest targets are not signed by this key: refusing to sign them (was the root handed over with it?)",
        )?;
        let mut t: tuf::Targets = serde_json::from_value(meta["signed"].clone())?;
        if t.delegations.is_some() {
            bail!("the server's targets carry delegations this key did not make; refusing to sign");
        }
        t.targets.insert(tuf::target_path(app, version), file.clone());
        t.version += 1;
        t.expires = in_a_year();
        let meta = tuf::sign(serde_json::to_value(&t)?, &[&key])?;
        match c.send_json::<_, serde_json::Value>(reqwest::Method::PUT, "/tuf/targets", &meta).await {
            Ok(_) => return Ok(()),
            Err(e) if e.downcast_ref::<convoy_client::ServerError>().is_some_and(|s| s.status == 409) => continue,
            Err(e) => return Err(e.context("signing the release into the server's TUF targets")),
        }
    }
    bail!("the server's TUF targets kept changing; publish again with --sign-key")
}
