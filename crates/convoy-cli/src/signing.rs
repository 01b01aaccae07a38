//! Signing: TUF keys (`convoy keys`), the server's roles and their
//! handover to offline keys (`convoy trust`), publisher delegations, and
//! releases and approvals signed here, on the operator's machine.

use anyhow::{bail, Context};
use convoy_client::Client;

use crate::output::{self, line, Format};

/// `convoy trust`: the server's TUF roles, their keys, thresholds and
/// expiry, and what the key arrangement gives up. `--root-out FILE` saves
/// the current root (to hand agents with `--trust-root`).
pub async fn trust(c: &Client, root_out: Option<&std::path::Path>, fmt: Format) -> anyhow::Result<()> {
    use convoy_wire::tuf;
    let root_raw = c.get_bytes("/tuf/metadata/root.json").await?;
    let root = tuf::parse_root(&root_raw)?;
    let mut roles = Vec::new();
    let mut delegated = Vec::new();
    for name in ["root", "targets", "snapshot", "timestamp"] {
        let raw = c.get_bytes(&format!("/tuf/metadata/{name}.json")).await?;
        let meta: serde_json::Value = serde_json::from_slice(&raw)?;
        if name == "targets" {
            let t: tuf::Targets = serde_json::from_value(meta["signed"].clone())?;
            for d in t.delegations.iter().flat_map(|d| d.roles.iter()) {
                delegated.push(serde_json::json!({
                    "role": d.name,
                    "threshold": d.threshold,
                    "keyids": d.keyids,
                    "paths": d.paths,
                }));
            }
        }
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
        Format::Json => output::json(
            &serde_json::json!({"roles": roles, "delegations": delegated, "mode": mode, "root_version": root.version}),
        ),
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
            if !delegated.is_empty() {
                line("");
                let rows: Vec<Vec<String>> = delegated
                    .iter()
                    .map(|d| {
                        let ids: Vec<String> = d["keyids"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|k| k.as_str().unwrap_or_default().chars().take(12).collect())
                            .collect();
                        let what = if d["role"].as_str().unwrap_or_default().starts_with("approve-") {
                            "approvals"
                        } else {
                            "releases"
                        };
                        vec![
                            d["role"].as_str().unwrap_or_default().to_owned(),
                            what.to_owned(),
                            format!("{} of {}", d["threshold"], ids.len()),
                            ids.join(","),
                        ]
                    })
                    .collect();
                output::table(&["DELEGATED ROLE", "SIGNS", "THRESHOLD", "KEYS"], &rows);
            }
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
    // delegations made in single-box mode carry over: say what is signed
    let current: convoy_wire::tuf::Targets = serde_json::from_value(t.clone())?;
    for d in current.delegations.iter().flat_map(|d| d.roles.iter()) {
        eprintln!(
            "carrying over {}: {} of {} key(s) ({}) sign {}",
            d.name,
            d.threshold,
            d.keyids.len(),
            d.keyids.iter().map(|k| k.get(..12).unwrap_or(k)).collect::<Vec<_>>().join(","),
            d.paths.join(", ")
        );
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

/// The server's newest top-level targets, checked to be signed by `key`
/// (what is re-signed must be what this key signed before: the server
/// cannot slip entries or delegations under it).
async fn my_targets(c: &Client, key: &convoy_wire::tuf::SigningKey) -> anyhow::Result<convoy_wire::tuf::Targets> {
    use convoy_wire::tuf;
    let raw = c.get_bytes("/tuf/metadata/targets.json").await?;
    let meta: serde_json::Value = serde_json::from_slice(&raw)?;
    let mine = tuf::RoleKeys { keyids: vec![key.public().id()], threshold: 1 };
    let keys = std::collections::BTreeMap::from([(key.public().id(), key.public().json())]);
    tuf::verify("targets", &meta, &keys, &mine).context(
        "the server's newest targets are not signed by this key: refusing to sign them (is it the targets key the root names?)",
    )?;
    Ok(serde_json::from_value(meta["signed"].clone())?)
}

/// Signs the next version of the top-level targets and uploads it;
/// `Ok(false)` when another signer got there first (sign the newest again).
async fn put_targets(
    c: &Client,
    mut t: convoy_wire::tuf::Targets,
    key: &convoy_wire::tuf::SigningKey,
) -> anyhow::Result<bool> {
    t.version += 1;
    t.expires = in_a_year();
    let meta = convoy_wire::tuf::sign(serde_json::to_value(&t)?, &[key])?;
    match c.send_json::<_, serde_json::Value>(reqwest::Method::PUT, "/tuf/targets", &meta).await {
        Ok(_) => Ok(true),
        Err(e) if conflict(&e) => Ok(false),
        Err(e) => Err(e.context("uploading the TUF targets")),
    }
}

fn conflict(e: &anyhow::Error) -> bool {
    e.downcast_ref::<convoy_client::ServerError>().is_some_and(|s| s.status == 409)
}

fn not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<convoy_client::ServerError>().is_some_and(|s| s.status == 404)
}

/// `convoy trust delegate APP --key PUB...`: the app's releases are signed
/// by these publisher keys (a threshold of them) from now on, never by the
/// server or the targets key. With `--targets-key` the delegation is signed
/// here; without, the server signs it (single-box mode only).
pub async fn trust_delegate(
    c: &Client,
    role: &str,
    keys: &[serde_json::Value],
    threshold: u32,
    targets_key: Option<&std::path::Path>,
    fmt: Format,
) -> anyhow::Result<()> {
    use convoy_wire::tuf;
    let paths = tuf::role_paths(role).context("a delegated role is app-APP or approve-ENV")?;
    let version = match targets_key {
        None => {
            let body = serde_json::json!({"keys": keys, "threshold": threshold});
            let r: serde_json::Value =
                c.send_json(reqwest::Method::PUT, &format!("/tuf/delegations/{role}"), &body).await?;
            r["targets_version"].as_u64().unwrap_or(0)
        }
        Some(path) => {
            let key = read_key(path)?;
            let mut done = None;
            for _ in 0..5 {
                let mut t = my_targets(c, &key).await?;
                t.delegate(role, keys, threshold, paths.clone())?;
                let v = t.version + 1;
                if put_targets(c, t, &key).await? {
                    done = Some(v);
                    break;
                }
            }
            done.context("the server's TUF targets kept changing; try again")?
        }
    };
    match fmt {
        Format::Json => output::json(
            &serde_json::json!({"role": role, "targets_version": version, "threshold": threshold, "keys": keys.len()}),
        ),
        Format::Table => line(format!(
            "{role}: {} of {} key(s) sign {} from targets version {version} on",
            threshold,
            keys.len(),
            paths.join(", ")
        )),
    }
    Ok(())
}

/// Public key files (`convoy keys generate`'s `.pub`, or a private key
/// file) as TUF key objects.
pub fn public_keys(files: &[std::path::PathBuf]) -> anyhow::Result<Vec<serde_json::Value>> {
    files.iter().map(|f| Ok(read_public(f)?.json())).collect()
}

/// Signs `app@version` into the server's TUF metadata: into the app's
/// publisher role when the targets delegate it (the keys must be that
/// role's), else into the top-level targets (offline targets key).
pub async fn sign_release(
    c: &Client,
    key_files: &[std::path::PathBuf],
    app: &str,
    version: &str,
    digest: &str,
    manifest: &[u8],
) -> anyhow::Result<()> {
    use convoy_wire::tuf;
    let keys: Vec<tuf::SigningKey> = key_files.iter().map(|p| read_key(p)).collect::<anyhow::Result<_>>()?;
    let file = tuf::TargetFile {
        length: manifest.len() as u64,
        hashes: std::collections::BTreeMap::from([("sha256".to_owned(), tuf::sha256(manifest))]),
        custom: Some(serde_json::json!({"convoy": {"digest": digest}})),
    };
    let path = tuf::target_path(app, version);
    for _ in 0..5 {
        let raw = c.get_bytes("/tuf/metadata/targets.json").await?;
        let top: tuf::Targets =
            serde_json::from_value(serde_json::from_slice::<serde_json::Value>(&raw)?["signed"].clone())?;
        let Some(role) = top.delegated_to(&path).cloned() else {
            let mut t = my_targets(c, &keys[0]).await?;
            t.targets.insert(path.clone(), file.clone());
            if put_targets(c, t, &keys[0]).await? {
                return Ok(());
            }
            continue;
        };
        let (_, dkeys) = top.delegation(&role.name).context("the delegation vanished")?;
        for k in &keys {
            if !role.keyids.contains(&k.public().id()) {
                bail!(
                    "key {} is not a publisher key of {app}: {} is signed by {} of {} (convoy trust shows them)",
                    k.public().id(),
                    role.name,
                    role.threshold,
                    role.keyids.join(", ")
                );
            }
        }
        // what is re-signed must be what the role's keys signed before
        let mut t = match c.get_bytes(&format!("/tuf/metadata/{}.json", role.name)).await {
            Ok(raw) => {
                let meta: serde_json::Value = serde_json::from_slice(&raw)?;
                let rk = tuf::RoleKeys { keyids: role.keyids.clone(), threshold: role.threshold };
                tuf::verify(&role.name, &meta, dkeys, &rk).with_context(|| {
                    format!("the server's {} is not signed by its publisher keys: refusing to sign it", role.name)
                })?;
                serde_json::from_value::<tuf::Targets>(meta["signed"].clone())?
            }
            Err(e) if not_found(&e) => tuf::Targets {
                kind: "targets".into(),
                spec_version: tuf::SPEC_VERSION.into(),
                version: 0,
                expires: String::new(),
                targets: Default::default(),
                delegations: None,
            },
            Err(e) => return Err(e),
        };
        t.targets.insert(path.clone(), file.clone());
        t.version += 1;
        t.expires = in_a_year();
        let refs: Vec<&tuf::SigningKey> = keys.iter().collect();
        let meta = tuf::sign(serde_json::to_value(&t)?, &refs)?;
        match c
            .send_json::<_, serde_json::Value>(reqwest::Method::PUT, &format!("/tuf/delegated/{}", role.name), &meta)
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if conflict(&e) => continue,
            Err(e) => return Err(e.context(format!("signing {app}@{version} into {}", role.name))),
        }
    }
    bail!("the server's TUF metadata kept changing; publish again with --sign-key")
}

/// `convoy users key NAME [--add KEY.pub]`: registers a public key for
/// signed approvals (never a private one), or lists the user's keys.
pub async fn user_key(c: &Client, name: &str, add: Option<&std::path::Path>, fmt: Format) -> anyhow::Result<()> {
    if let Some(file) = add {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(file).with_context(|| format!("reading {}", file.display()))?)
                .with_context(|| format!("{} is not a key file (convoy keys generate)", file.display()))?;
        if v["keyval"].get("private").is_some() {
            bail!("{} is a private key: register its public half ({}.pub)", file.display(), file.display());
        }
        let public = convoy_wire::tuf::PublicKey::from_json(&v)?;
        let k: convoy_wire::UserKeyInfo =
            c.send_json(reqwest::Method::POST, &format!("/users/{name}/keys"), &public.json()).await?;
        match fmt {
            Format::Json => output::json(&k),
            Format::Table => line(format!(
                "key {} registered for {name}; where approvals must be signed it counts once `convoy trust approvers ENV` publishes it",
                k.keyid
            )),
        }
        return Ok(());
    }
    let keys: Vec<convoy_wire::UserKeyInfo> =
        c.get_json(&format!("/users/{name}/keys"), std::time::Duration::from_secs(30)).await?;
    match fmt {
        Format::Json => output::json(&keys),
        Format::Table => {
            let rows: Vec<Vec<String>> =
                keys.iter().map(|k| vec![k.keyid.clone(), k.added_by.clone(), output::time(k.added_at)]).collect();
            output::table(&["KEYID", "ADDED BY", "ADDED"], &rows);
        }
    }
    Ok(())
}

/// `convoy approve REQ --sign-key KEY`: shows what is approved, signs that
/// statement with the approver's key, and sends the signature.
pub async fn approve_signed(
    c: &Client,
    id: &str,
    note: &str,
    key: &std::path::Path,
    fmt: Format,
) -> anyhow::Result<()> {
    use convoy_wire::approval::{self, Statement};
    let key = read_key(key)?;
    let s: Statement = c.get_json(&format!("/deployments/{id}/statement"), std::time::Duration::from_secs(30)).await?;
    if s.deployment != id || s.kind != approval::KIND {
        bail!("the server answered with a statement for {} ({}), not {id}", s.deployment, s.kind);
    }
    eprintln!(
        "signing: approve {}@{} (digest {}) in {} for {} target(s){}{}, requested by {}, valid until {}",
        s.app,
        s.version,
        s.digest,
        s.env,
        s.targets.len(),
        if s.selector.is_empty() { String::new() } else { format!(" matching {}", s.selector) },
        s.go_live_at.map(|t| format!(", go-live {}", output::time(t))).unwrap_or_default(),
        s.requested_by,
        s.expires
    );
    let sig = approval::sign(&s, &key)?;
    let body = convoy_wire::Decision { note: note.into(), statement: Some(s), signature: Some(sig) };
    let d: convoy_wire::DeploymentInfo =
        c.send_json(reqwest::Method::POST, &format!("/deployments/{id}/approve"), &body).await?;
    match fmt {
        Format::Json => output::json(&d),
        Format::Table => line(format!("{} {}@{}: {} ({})", d.id, d.app, d.version, d.state, d.note)),
    }
    Ok(())
}

/// `convoy trust approvers ENV`: the environment's approver role, made
/// from the server's list of who may approve there and their registered
/// keys, signed with the targets key (or by a single-box server).
pub async fn trust_approvers(
    c: &Client,
    env: &str,
    targets_key: Option<&std::path::Path>,
    fmt: Format,
) -> anyhow::Result<()> {
    let a: convoy_wire::ApproverKeys =
        c.get_json(&format!("/envs/{env}/approvers"), std::time::Duration::from_secs(30)).await?;
    if a.threshold == 0 {
        bail!("{env} needs no approvals; set some first (convoy env set {env} --approvals N --signed-approvals)");
    }
    if (a.keys.len() as u32) < a.threshold {
        bail!(
            "{env} needs {} approvals but only {} approver key(s) are registered (convoy users key NAME --add KEY.pub)",
            a.threshold,
            a.keys.len()
        );
    }
    // what the targets key is about to root: check it against what each
    // approver says their key is (the list comes from the server)
    eprintln!("{env}: {} approval(s) of distinct approvers needed; approver keys:", a.threshold);
    for k in &a.keys {
        let id = convoy_wire::tuf::PublicKey::from_json(k).map(|p| p.id()).unwrap_or_default();
        eprintln!("  {:<20} {id}", k[convoy_wire::approval::USER_FIELD].as_str().unwrap_or("?"));
    }
    trust_delegate(c, &convoy_wire::tuf::approvers_role(env), &a.keys, a.threshold, targets_key, fmt).await
}
