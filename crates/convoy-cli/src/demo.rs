//! `convoy demo`: a server and three agents as separate processes on
//! loopback, in a temporary directory; v1 → v2 → a v3 whose health check
//! fails on one target and is rolled back everywhere; then v3.1 through an
//! environment (request, approval, preflight, confirmation, two waves);
//! then v3.2 signed by a CI key with a signed approval, after the agents
//! refused it unsigned.
//! Exits 0 only if every step ended as expected.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use convoy_client::Client;
use convoy_wire::{DeployRequest, DeploymentDetail, DeploymentInfo, TargetInfo};
use tokio::process::{Child, Command};

use crate::output::{self, line};
use crate::{publish, watch};

const APP: &str = "shop-web";
const AGENTS: [(&str, &str); 3] =
    [("web-1", "site=sh,role=web"), ("web-2", "site=sh,role=web"), ("web-3", "site=bj,role=web")];

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.start_kill();
        }
    }
}

fn spawn(exe: &Path, args: &[&str], log: &Path, env: &[(&str, &str)]) -> anyhow::Result<Child> {
    let out = std::fs::File::create(log)?;
    let mut c = Command::new(exe);
    c.args(args).stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out).kill_on_drop(true);
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().with_context(|| format!("starting {} {}", exe.display(), args.join(" ")))
}

async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > end {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes version `v` of the sample web app. `fragile` adds a health check
/// that fails on machines where `$CONVOY_ROOT/simulate-outage` exists.
fn write_app(dir: &Path, v: &str, edit: usize, fragile: bool) -> anyhow::Result<()> {
    let w = |p: &str, data: &[u8]| -> anyhow::Result<()> {
        let full = dir.join(p);
        std::fs::create_dir_all(full.parent().expect("parent"))?;
        std::fs::write(&full, data).with_context(|| format!("writing {}", full.display()))
    };
    let timeout = if fragile { 3 } else { 10 };
    w(
        "convoy.toml",
        format!(
            "config_files = [\"config/app.env\"]\n[hooks]\nstop = \"sh hooks/stop.sh\"\nstart = \"sh hooks/start.sh\"\nhealth = \"sh hooks/health.sh\"\n[health]\ntimeout_secs = {timeout}\ninterval_ms = 200\n"
        )
        .as_bytes(),
    )?;
    w(
        "index.html",
        format!("<!doctype html><title>shop</title><h1>shop-web {v}</h1><script src=assets/app.js></script>\n")
            .as_bytes(),
    )?;
    // A 2 MB bundle in which each version changes a few functions.
    let mut js = String::new();
    for i in 0..40_000u32 {
        let k = if i % 9_973 == 0 { i + edit as u32 } else { i };
        js.push_str(&format!("function f{i}(x) {{ return x * {k} + {}; }}\n", k % 97));
    }
    w("assets/app.js", js.as_bytes())?;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let logo: Vec<u8> = (0..1_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    w("assets/logo.bin", &logo)?;
    w("config/app.env", b"GREETING=hello\n")?;
    w(
        "hooks/start.sh",
        b"mkdir -p \"$CONVOY_ROOT/run\" && echo \"$CONVOY_VERSION\" > \"$CONVOY_ROOT/run/$CONVOY_APP.running\"\n",
    )?;
    w("hooks/stop.sh", b"rm -f \"$CONVOY_ROOT/run/$CONVOY_APP.running\"\n")?;
    let outage = if fragile {
        "if [ -e \"$CONVOY_ROOT/simulate-outage\" ]; then echo 'GET /healthz -> 503: database unreachable'; exit 1; fi\n"
    } else {
        ""
    };
    w(
        "hooks/health.sh",
        format!(
            "{outage}test \"$(cat \"$CONVOY_ROOT/run/$CONVOY_APP.running\" 2>/dev/null)\" = \"$CONVOY_VERSION\" || {{ echo 'not running'; exit 1; }}\necho version=$CONVOY_VERSION\necho requests_ok=100\necho p99_ms=12\n"
        )
        .as_bytes(),
    )?;
    Ok(())
}

/// How the targets got the release: by delta, by chunks, or both.
fn transfer_note(d: &DeploymentDetail) -> &'static str {
    let delta = d.instructions.iter().filter(|i| i.metrics.get("transfer").is_some_and(|t| t == "delta")).count();
    match delta {
        0 => "only the changed chunks travelled",
        n if n == d.instructions.len() => "each target got a binary delta from the release it runs",
        _ => "binary deltas where targets held the old release intact, chunks elsewhere",
    }
}

fn moved(d: &DeploymentDetail) -> u64 {
    d.instructions.iter().filter_map(|i| i.metrics.get("bytes_fetched")?.parse::<u64>().ok()).sum()
}

async fn deploy(c: &Client, version: &str, at: Option<i64>) -> anyhow::Result<DeploymentDetail> {
    let req = DeployRequest {
        app: APP.into(),
        version: version.into(),
        selector: "role=web".into(),
        at,
        max_failures: 0,
        stage_timeout_secs: None,
        activate_timeout_secs: None,
        env: None,
        reason: String::new(),
        targets: Vec::new(),
        plan: None,
    };
    let d: DeploymentInfo = c.send_json(reqwest::Method::POST, "/deployments", &req).await?;
    line(format!("deployment {} created; staging to {}", d.id, convoy_domain::targets(d.counts.total)));
    let fin = watch::watch(c, &d.id, false).await?;
    line("");
    watch::print_summary(&fin);
    Ok(fin)
}

async fn publish_step(c: &Client, src: &Path, version: &str) -> anyhow::Result<()> {
    let s = publish::publish(c, src, APP, version, Default::default()).await?;
    line(format!(
        "published {APP}@{version}: digest {}…, uploaded {} of {} chunks ({})",
        &s.digest[..16],
        s.chunks_uploaded,
        s.chunks_total,
        output::bytes(s.bytes_uploaded)
    ));
    Ok(())
}

/// A request for `APP@version` on every role=web target through environment prod.
fn prod_request(version: &str, reason: &str) -> DeployRequest {
    DeployRequest {
        app: APP.into(),
        version: version.into(),
        selector: "role=web".into(),
        at: None,
        max_failures: 0,
        stage_timeout_secs: None,
        activate_timeout_secs: None,
        env: Some("prod".into()),
        reason: reason.into(),
        targets: Vec::new(),
        plan: None,
    }
}

/// Step 6: users with roles, an environment, and a request through it.
async fn workflow_step(admin: &Client, url: &str) -> anyhow::Result<(DeploymentDetail, Client, Client)> {
    let policy = convoy_domain::Policy {
        approvals: 1,
        confirm: true,
        waves: convoy_domain::parse_waves("1,100%")?,
        wave_gap_secs: 2,
        ..Default::default()
    };
    let _: convoy_wire::EnvInfo = admin.send_json(reqwest::Method::PUT, "/envs/prod", &policy).await?;
    line("environment prod: 1 approval (approver role), confirmation, waves 1 then the rest, 2 s apart");
    let mut tokens = Vec::new();
    for (name, role) in [("ana", "deployer"), ("ben", "approver")] {
        let u: convoy_wire::UserInfo = admin
            .send_json(reqwest::Method::POST, "/users", &convoy_wire::NewUser { name: name.into(), role: role.into() })
            .await?;
        line(format!("user {name} added as {role}"));
        tokens.push(u.token.context("the new user's token")?);
    }
    let (ana, ben) = (Client::new(url, &tokens[0], None)?, Client::new(url, &tokens[1], None)?);
    let req = prod_request("3.1", "CHG-7: fix for the v3.0 outage");
    let r: DeploymentInfo = ana.send_json(reqwest::Method::POST, "/deployments", &req).await?;
    line(format!("ana requests {APP}@3.1 in prod: {} is {}", r.id, r.state));
    let approve = format!("/deployments/{}/approve", r.id);
    let decision = convoy_wire::Decision { note: "reviewed the fix".into(), ..Default::default() };
    match ana.send_json::<_, DeploymentInfo>(reqwest::Method::POST, &approve, &decision).await {
        Ok(_) => bail!("the requester approved her own request"),
        Err(e) => line(format!("ana tries to approve it herself: {}", convoy_client::short(&e))),
    }
    let a: DeploymentInfo = ben.send_json(reqwest::Method::POST, &approve, &decision).await?;
    line(format!("ben approves: {} ({})", a.state, a.note));
    let ready = wait_for("preflight", Duration::from_secs(60), || async {
        watch::detail(admin, &r.id).await.ok().filter(|d| d.deployment.state != "preflight")
    })
    .await?;
    ensure!(ready.deployment.state == "awaiting_confirmation", "after preflight: {}", ready.deployment.state);
    watch::print_summary(&ready);
    let c: DeploymentInfo =
        ana.send_json(reqwest::Method::POST, &format!("/deployments/{}/confirm", r.id), &serde_json::json!({})).await?;
    line(format!("ana confirms: {}", c.note));
    let fin = watch::watch(admin, &r.id, false).await?;
    line("");
    watch::print_summary(&fin);
    Ok((fin, ana, ben))
}

/// Step 7: releases signed by a CI key delegated for the app, approvals
/// signed by the approver's key, and an agent refusing what is unsigned.
async fn signing_step(admin: &Client, ana: &Client, ben: &Client, base: &Path) -> anyhow::Result<DeploymentDetail> {
    use convoy_wire::tuf::SigningKey;
    let keys = base.join("keys");
    std::fs::create_dir_all(&keys)?;
    let write_key = |name: &str| -> anyhow::Result<PathBuf> {
        let k = SigningKey::generate();
        let p = keys.join(name);
        std::fs::write(&p, serde_json::to_vec(&k.to_file())?)?;
        std::fs::write(keys.join(format!("{name}.pub")), serde_json::to_vec(&k.public().json())?)?;
        Ok(p)
    };
    let (ci, ben_key) = (write_key("ci.key")?, write_key("ben.key")?);
    let ci_pub = crate::signing::public_keys(&[keys.join("ci.key.pub")])?;
    crate::signing::trust_delegate(admin, &convoy_wire::tuf::app_role(APP), &ci_pub, 1, None, output::Format::Table)
        .await?;
    line(format!("{APP}'s releases are now signed by the CI key only (delegated TUF role app-{APP})"));
    let src = base.join("src");
    write_app(&src.join("3.2"), "3.2", 4, false)?;
    let s = publish::publish(admin, &src.join("3.2"), APP, "3.2", Default::default()).await?;
    ensure!(!s.signed, "the server signed a release of a delegated app");
    line(format!("published {APP}@3.2 without the CI key: stored, but NOT signed"));
    let refused = deploy(admin, "3.2", None).await?;
    ensure!(refused.deployment.state == "failed", "an unsigned release ended {}", refused.deployment.state);
    let why = refused.instructions.first().map(|i| i.note.clone()).unwrap_or_default();
    line(format!("every agent refused it: {why}"));
    crate::signing::sign_release(admin, &[ci], APP, "3.2", &s.digest, &s.manifest).await?;
    line(format!("the CI key signs {APP}@3.2 into app-{APP}"));

    crate::signing::user_key(ben, "ben", Some(&keys.join("ben.key.pub")), output::Format::Table).await?;
    let mut env: convoy_wire::EnvInfo = admin.get_json("/envs/prod", Duration::from_secs(5)).await?;
    env.policy.signed_approvals = true;
    let _: convoy_wire::EnvInfo = admin.send_json(reqwest::Method::PUT, "/envs/prod", &env.policy).await?;
    crate::signing::trust_approvers(admin, "prod", None, output::Format::Table).await?;
    line("prod now needs approvals signed by an approver's key; agents check them against approve-prod");
    let req = prod_request("3.2", "CHG-8: signed release");
    let r: DeploymentInfo = ana.send_json(reqwest::Method::POST, "/deployments", &req).await?;
    line(format!("ana requests {APP}@3.2 in prod: {}", r.id));
    crate::signing::approve_signed(ben, &r.id, "signed off", &ben_key, output::Format::Table).await?;
    wait_for("preflight", Duration::from_secs(60), || async {
        watch::detail(admin, &r.id).await.ok().filter(|d| d.deployment.state == "awaiting_confirmation")
    })
    .await?;
    let _: DeploymentInfo =
        ana.send_json(reqwest::Method::POST, &format!("/deployments/{}/confirm", r.id), &serde_json::json!({})).await?;
    let fin = watch::watch(admin, &r.id, false).await?;
    line("");
    watch::print_summary(&fin);
    Ok(fin)
}

fn step(n: u32, s: &str) {
    line(format!("\n== {n}. {s}"));
}

pub async fn run(keep: bool) -> anyhow::Result<i32> {
    let exe = std::env::current_exe().context("finding the convoy binary")?;
    let tmp = tempfile::Builder::new().prefix("convoy-demo-").tempdir()?;
    let base: PathBuf = tmp.path().to_owned();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("http://127.0.0.1:{port}");
    let admin = crate::output::random_token();
    let enrol = crate::output::random_token();
    std::fs::create_dir_all(base.join("logs"))?;

    step(1, &format!("starting a server on {url} and three agents (work dir {})", base.display()));
    let mut procs = Procs(Vec::new());
    let data = base.join("server");
    let listen = format!("127.0.0.1:{port}");
    procs.0.push(spawn(
        &exe,
        &["server", "--listen", &listen, "--data-dir", data.to_str().context("path")?],
        &base.join("logs/server.log"),
        &[("CONVOY_ADMIN_TOKEN", &admin), ("CONVOY_ENROL_TOKEN", &enrol)],
    )?);
    let c = Client::new(&url, &admin, None)?;
    wait_for("the server", Duration::from_secs(30), || async {
        c.get_json::<serde_json::Value>("/health", Duration::from_secs(2)).await.ok()
    })
    .await?;
    for (name, labels) in AGENTS {
        let root = base.join("agents").join(name);
        procs.0.push(spawn(
            &exe,
            &[
                "agent",
                "--server",
                &url,
                "--root",
                root.to_str().context("path")?,
                "--labels",
                labels,
                "--name",
                name,
                "--poll-wait",
                "20",
            ],
            &base.join(format!("logs/{name}.log")),
            &[("CONVOY_TOKEN", &enrol)],
        )?);
    }
    wait_for("three agents to enrol", Duration::from_secs(30), || async {
        c.get_json::<Vec<TargetInfo>>("/targets", Duration::from_secs(2)).await.ok().filter(|t| t.len() == AGENTS.len())
    })
    .await?;
    crate::targets(&c, "", output::Format::Table).await?;

    step(2, "publishing and deploying v1.0 of the sample web app (role=web)");
    let src = base.join("src");
    write_app(&src.join("1.0"), "1.0", 0, false)?;
    publish_step(&c, &src.join("1.0"), "1.0").await?;
    let d1 = deploy(&c, "1.0", None).await?;
    ensure!(d1.deployment.state == "succeeded", "v1.0 ended {}", d1.deployment.state);
    let v1_bytes = moved(&d1);
    line(format!("v1.0 moved {} to {} targets (a first install)", output::bytes(v1_bytes), d1.instructions.len()));

    let edited = base.join("agents/web-1/current").join(APP).join("config/app.env");
    std::fs::write(&edited, "GREETING=hello from web-1's operator\n")?;
    line("web-1's operator edits its own config/app.env (declared machine-owned in convoy.toml)");

    step(3, "publishing v2.0 (a few functions changed) and deploying it with go-live in 4 s");
    write_app(&src.join("2.0"), "2.0", 1, false)?;
    publish_step(&c, &src.join("2.0"), "2.0").await?;
    let at = chrono::Utc::now().timestamp_millis() + 4_000;
    line(format!("go-live planned at {}", output::time(at)));
    let d2 = deploy(&c, "2.0", Some(at)).await?;
    ensure!(d2.deployment.state == "succeeded", "v2.0 ended {}", d2.deployment.state);
    let v2_bytes = moved(&d2);
    line(format!(
        "v2.0 moved {} to {} targets: {:.2}% of v1.0's bytes ({})",
        output::bytes(v2_bytes),
        d2.instructions.len(),
        100.0 * v2_bytes as f64 / v1_bytes.max(1) as f64,
        transfer_note(&d2)
    ));
    let kept = std::fs::read_to_string(&edited)?;
    ensure!(kept.contains("web-1's operator"), "web-1's config was not kept: {kept}");
    line("web-1 kept its own config/app.env across the upgrade");

    step(4, "publishing v3.0, whose health check fails on web-3 (simulated database outage)");
    std::fs::write(base.join("agents/web-3/simulate-outage"), b"")?;
    write_app(&src.join("3.0"), "3.0", 2, true)?;
    publish_step(&c, &src.join("3.0"), "3.0").await?;
    let d3 = deploy(&c, "3.0", None).await?;
    ensure!(d3.deployment.state == "rolled_back", "v3.0 ended {} (expected rolled_back)", d3.deployment.state);

    step(5, "every target is back on v2.0");
    let targets: Vec<TargetInfo> = c.get_json("/targets", Duration::from_secs(5)).await?;
    crate::targets(&c, "", output::Format::Table).await?;
    for t in &targets {
        ensure!(
            t.inventory.current.get(APP).map(String::as_str) == Some("2.0"),
            "{} is on {:?}",
            t.hostname,
            t.inventory.current.get(APP)
        );
    }

    step(6, "v3.1, the fix, through environment prod: a request, an approval, preflight, confirmation, two waves");
    std::fs::remove_file(base.join("agents/web-3/simulate-outage"))?;
    write_app(&src.join("3.1"), "3.1", 3, false)?;
    publish_step(&c, &src.join("3.1"), "3.1").await?;
    let (d4, ana, ben) = workflow_step(&c, &url).await?;
    ensure!(d4.deployment.state == "succeeded", "v3.1 ended {}", d4.deployment.state);

    step(7, "v3.2 signed: a CI key signs the release, the approver's key signs the approval; unsigned is refused");
    let d5 = signing_step(&c, &ana, &ben, &base).await?;
    ensure!(d5.deployment.state == "succeeded", "v3.2 ended {}", d5.deployment.state);

    line(format!(
        "\ndemo passed: v1.0 moved {}, v2.0 moved {}, v3.0 moved {} and was rolled back on every target; \
         v3.1 went live in two waves after approval and confirmation; unsigned v3.2 was refused, \
         and went live once signed by the CI key with a signed approval",
        output::bytes(v1_bytes),
        output::bytes(v2_bytes),
        output::bytes(moved(&d3))
    ));
    drop(procs);
    if keep {
        let kept = tmp.keep();
        line(format!("work directory kept at {}", kept.display()));
    }
    Ok(0)
}
