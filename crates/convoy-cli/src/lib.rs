//! The operator's commands: pack, publish, deploy, status, watch, rollback,
//! targets, releases, and the self-contained demo. All talk to the server's
//! HTTP API through `convoy-client`.

pub mod demo;
pub mod output;
pub mod plan;
pub mod publish;
pub mod signing;
pub mod trust;
pub mod watch;
pub mod workflow;

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use convoy_client::Client;
use convoy_domain::{parse_reference, Selector};
use convoy_wire::{DeployRequest, DeploymentInfo, ReleaseInfo, TargetInfo};

use output::{line, Format};

/// Exit code when a deployment that was waited for did not succeed.
pub const EXIT_NOT_SUCCEEDED: i32 = 3;

pub fn client(server: &str, token: Option<&str>, ca_cert: Option<&Path>) -> anyhow::Result<Client> {
    let Some(token) = token else {
        bail!("no API token: pass --token or set CONVOY_TOKEN (the server printed its admin token on first start)");
    };
    Client::new(server, token, ca_cert)
}

pub async fn pack(dir: &Path, app: &str, version: &str, fmt: Format) -> anyhow::Result<()> {
    publish::check_names(app, version)?;
    let m = publish::pack(dir).await?;
    let s = publish::summarize(&m);
    match fmt {
        Format::Json => output::json(&s),
        Format::Table => {
            line(&s.digest);
            eprintln!("{app}@{version}: {} files, {}, {} chunks", s.files, output::bytes(s.total_size), s.chunks);
        }
    }
    Ok(())
}

pub async fn publish(
    c: &Client,
    dir: &Path,
    app: &str,
    version: &str,
    sign_keys: &[std::path::PathBuf],
    provenance: convoy_wire::Provenance,
    fmt: Format,
) -> anyhow::Result<()> {
    let provenance = publish::provenance(provenance, |k| std::env::var(k).ok());
    let mut s = publish::publish(c, dir, app, version, provenance).await?;
    if !sign_keys.is_empty() {
        signing::sign_release(c, sign_keys, &s.app, &s.version, &s.digest, &s.manifest).await?;
        s.signed = true;
    }
    match fmt {
        Format::Json => output::json(&s),
        Format::Table => line(format!(
            "{} {}@{} digest {}\nuploaded {} of {} chunks ({})",
            if s.created { "published" } else { "already published (same content):" },
            s.app,
            s.version,
            s.digest,
            s.chunks_uploaded,
            s.chunks_total,
            output::bytes(s.bytes_uploaded)
        )),
    }
    if !s.signed {
        eprintln!(
            "convoy: {}@{} is NOT signed: its signing keys are kept offline (the app's publisher keys, or the targets key), and agents refuse it until it is signed (publish again with --sign-key KEY)",
            s.app, s.version
        );
    }
    Ok(())
}

/// Parses a duration: `90s`, `5m`, `2h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> anyhow::Result<u64> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().with_context(|| format!("invalid duration {s:?}: use 90s, 5m or 2h"))?;
    let mult = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3_600,
        _ => bail!("invalid duration {s:?}: use 90s, 5m or 2h"),
    };
    n.checked_mul(mult).with_context(|| format!("duration {s:?} is too long"))
}

/// Parses `--at`: RFC 3339 (`2026-12-05T01:30:00+08:00`) or `+90s` / `+5m`.
pub fn parse_at(s: &str, now_ms: i64) -> anyhow::Result<i64> {
    if let Some(rel) = s.strip_prefix('+') {
        let secs = parse_duration(rel).with_context(|| format!("invalid relative time {s:?}"))?;
        return Ok(now_ms + secs as i64 * 1000);
    }
    let t = chrono::DateTime::parse_from_rfc3339(s)
        .or_else(|_| chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M%:z"))
        .with_context(|| format!("invalid --at {s:?}: expected RFC 3339 like 2026-12-05T01:30:00+08:00, or +90s"))?;
    Ok(t.timestamp_millis())
}

pub struct DeployArgs<'a> {
    pub reference: &'a str,
    pub selector: &'a str,
    pub at: Option<&'a str>,
    pub max_failures: u32,
    pub stage_timeout: Option<&'a str>,
    pub activate_timeout: Option<&'a str>,
    pub wait: bool,
    pub env: Option<&'a str>,
    pub reason: &'a str,
    /// Targets by id or hostname, besides the selector.
    pub targets: &'a [String],
}

pub async fn deploy(c: &Client, a: DeployArgs<'_>, fmt: Format) -> anyhow::Result<i32> {
    let (app, version) = parse_reference(a.reference)?;
    Selector::parse(a.selector)?;
    let now = chrono::Utc::now().timestamp_millis();
    let at = a.at.map(|s| parse_at(s, now)).transpose()?;
    let req = DeployRequest {
        app: app.to_string(),
        version: version.to_string(),
        selector: a.selector.into(),
        at,
        max_failures: a.max_failures,
        stage_timeout_secs: a.stage_timeout.map(parse_duration).transpose()?,
        activate_timeout_secs: a.activate_timeout.map(parse_duration).transpose()?,
        env: a.env.map(str::to_owned),
        reason: a.reason.into(),
        targets: a.targets.to_vec(),
        plan: None,
    };
    let d: DeploymentInfo = c.send_json(reqwest::Method::POST, "/deployments", &req).await?;
    if !a.wait {
        match fmt {
            Format::Json => output::json(&d),
            Format::Table if d.env.is_some() => line(format!(
                "request {} in {}: {}@{} is {} ({})\nsee `convoy status {}`; approvers find it with `convoy requests`",
                d.id,
                d.env.as_deref().unwrap_or_default(),
                d.app,
                d.version,
                d.state,
                d.note,
                d.id
            )),
            Format::Table => line(format!(
                "deployment {} created: {}@{} to {} ({})",
                d.id,
                d.app,
                d.version,
                convoy_domain::targets(d.counts.total),
                d.note
            )),
        }
        return Ok(0);
    }
    if fmt == Format::Table {
        line(format!("deployment {}: {}@{} to {}", d.id, d.app, d.version, convoy_domain::targets(d.counts.total)));
    }
    finish(c, &d.id, fmt).await
}

async fn finish(c: &Client, id: &str, fmt: Format) -> anyhow::Result<i32> {
    let d = watch::watch(c, id, fmt == Format::Json).await?;
    match fmt {
        Format::Json => output::json(&d),
        Format::Table => {
            line("");
            watch::print_summary(&d);
        }
    }
    // success: it went live, or an operator's rollback (or cancel) finished
    let by_operator = match d.deployment.state.as_str() {
        "rolled_back" => rolled_back_by_operator(&d),
        "canceled" => {
            d.events.iter().any(|e| e.instruction_id.is_none() && e.actor.starts_with("user:") && e.to == "canceled")
        }
        _ => false,
    };
    Ok(if d.deployment.state == "succeeded" || by_operator { 0 } else { EXIT_NOT_SUCCEEDED })
}

fn rolled_back_by_operator(d: &convoy_wire::DeploymentDetail) -> bool {
    d.events.iter().any(|e| e.instruction_id.is_none() && e.actor.starts_with("user:") && e.to == "rolling_back")
}

pub async fn status(c: &Client, id: &str, events: bool, all: bool, fmt: Format) -> anyhow::Result<()> {
    let d = watch::view(c, id, all).await?;
    match fmt {
        Format::Json => output::json(&d),
        Format::Table => {
            watch::print_summary(&d);
            if events {
                line("");
                watch::print_events(&d);
            }
        }
    }
    Ok(())
}

pub async fn watch_cmd(c: &Client, id: &str, fmt: Format) -> anyhow::Result<i32> {
    finish(c, id, fmt).await
}

pub async fn retry(
    c: &Client,
    id: &str,
    targets: &[String],
    reason: &str,
    wait: bool,
    fmt: Format,
) -> anyhow::Result<i32> {
    let body = convoy_wire::RetryRequest { note: reason.into(), targets: targets.to_vec() };
    let d: DeploymentInfo = c.send_json(reqwest::Method::POST, &format!("/deployments/{id}/retry"), &body).await?;
    if wait {
        return finish(c, id, fmt).await;
    }
    match fmt {
        Format::Json => output::json(&d),
        Format::Table => line(format!("deployment {}: {} ({})", d.id, d.state, d.note)),
    }
    Ok(0)
}

pub async fn rollback(
    c: &Client,
    id: &str,
    wait: bool,
    reason: &str,
    uninstall: bool,
    fmt: Format,
) -> anyhow::Result<i32> {
    let body = convoy_wire::RollbackRequest { note: reason.into(), uninstall };
    let d: DeploymentInfo = c.send_json(reqwest::Method::POST, &format!("/deployments/{id}/rollback"), &body).await?;
    if wait {
        return finish(c, id, fmt).await;
    }
    match fmt {
        Format::Json => output::json(&d),
        Format::Table => line(format!("deployment {}: {} ({})", d.id, d.state, d.note)),
    }
    Ok(0)
}

pub async fn remove_target(c: &Client, id: &str, fmt: Format) -> anyhow::Result<()> {
    let resp =
        c.request(reqwest::Method::DELETE, &format!("/targets/{id}")).send().await.context("removing the target")?;
    let v: serde_json::Value = Client::check(resp).await?.json().await?;
    match fmt {
        Format::Json => output::json(&v),
        Format::Table => line(format!("target {id} removed; its credential no longer works")),
    }
    Ok(())
}

/// `convoy targets show ID`: a target, its inventory and its last deployments.
pub async fn target_show(c: &Client, id: &str, fmt: Format) -> anyhow::Result<()> {
    let d: convoy_wire::TargetDetail =
        c.get_json(&format!("/targets/{}", watch::encode(id)), Duration::from_secs(30)).await?;
    let t = &d.target;
    match fmt {
        Format::Json => output::json(&d),
        Format::Table => {
            let current: Vec<String> = t.inventory.current.iter().map(|(a, v)| format!("{a}@{v}")).collect();
            let rows = [
                ("target", t.id.clone()),
                ("host", t.hostname.clone()),
                ("labels", t.labels.to_string()),
                ("platform", platform(&t.inventory)),
                ("agent", if t.inventory.kind.is_agent() { t.inventory.agent_version.clone() } else { "-".into() }),
                (
                    "free disk",
                    if t.inventory.kind.is_agent() { output::bytes(t.inventory.free_disk_bytes) } else { "-".into() },
                ),
                ("live", if current.is_empty() { "-".into() } else { current.join(", ") }),
                ("role", t.relay_site.as_ref().map_or("-".into(), |s| format!("relay for site {s}"))),
                ("enrolled", output::time(t.enrolled_at)),
                ("seen", format!("{} ({})", seen(t.last_seen), output::time(t.last_seen))),
            ];
            for (k, v) in rows {
                line(format!("{k:<10} {v}"));
            }
            for (k, v) in &t.inventory.attributes {
                line(format!("{:<10} {k}={v}", "attribute"));
            }
            if !t.warning.is_empty() {
                line(format!("{:<10} {}", "warning", t.warning));
            }
            line("");
            if d.history.is_empty() {
                line("no deployment has included this target yet");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = d
                .history
                .iter()
                .map(|h| {
                    let metrics: Vec<String> = h.metrics.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    vec![
                        h.deployment_id.clone(),
                        format!("{}@{}", h.app, h.version),
                        h.previous_version.clone().unwrap_or_else(|| "-".into()),
                        h.wave.to_string(),
                        h.state.clone(),
                        h.deployment_state.clone(),
                        output::time(h.updated_at),
                        if metrics.is_empty() { h.note.clone() } else { metrics.join(" ") },
                    ]
                })
                .collect();
            output::table(
                &["DEPLOYMENT", "RELEASE", "FROM", "WAVE", "TARGET STATE", "DEPLOYMENT", "CHANGED", "NOTE"],
                &rows,
            );
        }
    }
    Ok(())
}

pub async fn targets(c: &Client, selector: &str, fmt: Format) -> anyhow::Result<()> {
    let selector = Selector::parse(selector)?;
    let mut t: Vec<TargetInfo> = c.get_json("/targets", Duration::from_secs(30)).await?;
    t.retain(|t| selector.matches(&t.labels));
    match fmt {
        Format::Json => output::json(&t),
        Format::Table => {
            let rows = t
                .iter()
                .map(|t| {
                    let current: Vec<String> = t.inventory.current.iter().map(|(a, v)| format!("{a}@{v}")).collect();
                    vec![
                        t.id.clone(),
                        t.hostname.clone(),
                        t.labels.to_string(),
                        platform(&t.inventory),
                        if t.inventory.kind.is_agent() {
                            output::bytes(t.inventory.free_disk_bytes)
                        } else {
                            "-".into()
                        },
                        if current.is_empty() { "-".into() } else { current.join(",") },
                        t.relay_site.as_ref().map_or("-".into(), |s| format!("relay for {s}")),
                        seen(t.last_seen),
                    ]
                })
                .collect::<Vec<_>>();
            output::table(&["TARGET", "HOST", "LABELS", "PLATFORM", "FREE DISK", "LIVE", "ROLE", "SEEN"], &rows);
            for t in t.iter().filter(|t| !t.warning.is_empty()) {
                eprintln!("warning: {} ({}): {}", t.id, t.hostname, t.warning);
            }
        }
    }
    Ok(())
}

/// What a target runs on: OS/arch for an agent, `ddi device` for a device
/// speaking hawkBit DDI.
fn platform(inv: &convoy_wire::Inventory) -> String {
    match inv.kind {
        convoy_wire::TargetKind::Agent => format!("{}/{}", inv.os, inv.arch),
        convoy_wire::TargetKind::Ddi => "ddi device".into(),
    }
}

/// A device speaking hawkBit DDI, known before it first polls: prints its
/// `TargetToken` once, and how to point SWUpdate at the server.
pub async fn add_ddi(c: &Client, controller: &str, labels: Option<&str>, fmt: Format) -> anyhow::Result<()> {
    let req = convoy_wire::ddi::NewDdiTarget {
        controller_id: controller.to_owned(),
        labels: labels.map(convoy_wire::Labels::parse).transpose()?.unwrap_or_default(),
    };
    let t: convoy_wire::ddi::DdiTargetCreated = c.send_json(reqwest::Method::POST, "/ddi/targets", &req).await?;
    match fmt {
        Format::Json => output::json(&t),
        Format::Table => {
            line(&t.token);
            let tenant = t.path.trim_start_matches('/').split('/').next().unwrap_or("DEFAULT");
            eprintln!(
                "DDI device {} added as {} with {}. The TargetToken above is shown only now.\n\
                 Point the device at {}{} (SWUpdate: swupdate -u \"-t {tenant} -u {} -i {} -k TOKEN\").",
                t.controller_id,
                t.target_id,
                req.labels,
                c.server(),
                t.path,
                c.server(),
                t.controller_id
            );
        }
    }
    Ok(())
}

/// `online` when the agent polled within the last minute (polls are held
/// open up to 60 s), otherwise how long ago it was seen.
fn seen(last_seen: i64) -> String {
    let ago = (chrono::Utc::now().timestamp_millis() - last_seen).max(0) / 1000;
    match ago {
        0..=90 => "online".into(),
        91..=5_399 => format!("{}m ago", ago / 60),
        5_400..=172_799 => format!("{}h ago", ago / 3600),
        _ => format!("{}d ago", ago / 86_400),
    }
}

pub async fn changes(c: &Client, release: &str, from: &str, fmt: Format) -> anyhow::Result<()> {
    let (app, version) = convoy_domain::parse_reference(release)?;
    let from = convoy_domain::Version::parse(from)?;
    let ch: convoy_wire::Changes =
        c.get_json(&format!("/releases/{app}/{version}/changes?from={from}"), Duration::from_secs(60)).await?;
    match fmt {
        Format::Json => output::json(&ch),
        Format::Table => {
            line(watch::changes_line(&ch));
            for (what, paths) in [("+", &ch.added), ("-", &ch.removed), ("~", &ch.changed)] {
                for p in paths.iter() {
                    line(format!("  {what} {p}"));
                }
            }
        }
    }
    Ok(())
}

pub async fn releases(c: &Client, fmt: Format) -> anyhow::Result<()> {
    let r: Vec<ReleaseInfo> = c.get_json("/releases", Duration::from_secs(30)).await?;
    match fmt {
        Format::Json => output::json(&r),
        Format::Table => {
            let rows = r
                .iter()
                .map(|r| {
                    let built = r.provenance.as_ref().map_or_else(
                        || "-".to_owned(),
                        |p| {
                            let commit: String = p.commit.chars().take(12).collect();
                            match (commit.is_empty(), p.branch.is_empty()) {
                                (false, false) => format!("{commit} ({})", p.branch),
                                (false, true) => commit,
                                (true, _) => p.branch.clone(),
                            }
                        },
                    );
                    vec![
                        format!("{}@{}", r.app, r.version),
                        r.digest[..16].to_owned(),
                        r.files.to_string(),
                        output::bytes(r.total_size),
                        r.chunks.to_string(),
                        output::time(r.created_at),
                        built,
                    ]
                })
                .collect::<Vec<_>>();
            output::table(&["RELEASE", "DIGEST", "FILES", "SIZE", "CHUNKS", "PUBLISHED", "BUILT FROM"], &rows);
        }
    }
    Ok(())
}

pub async fn deployments(c: &Client, fmt: Format) -> anyhow::Result<()> {
    let r: Vec<DeploymentInfo> = c.get_json("/deployments", Duration::from_secs(30)).await?;
    match fmt {
        Format::Json => output::json(&r),
        Format::Table => {
            let rows = r
                .iter()
                .map(|d| {
                    vec![
                        d.id.clone(),
                        format!("{}@{}", d.app, d.version),
                        d.state.clone(),
                        format!("{}/{}", d.counts.live, d.counts.total),
                        d.selector.clone(),
                        output::time(d.created_at),
                    ]
                })
                .collect::<Vec<_>>();
            output::table(&["DEPLOYMENT", "RELEASE", "STATE", "LIVE", "SELECTOR", "CREATED"], &rows);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_at;

    #[test]
    fn go_live_times() {
        assert_eq!(parse_at("+90s", 1000).unwrap(), 91_000);
        assert_eq!(parse_at("+2m", 0).unwrap(), 120_000);
        assert_eq!(parse_at("1970-01-01T08:00:01+08:00", 0).unwrap(), 1000);
        assert_eq!(parse_at("2026-12-05T01:30+08:00", 0).unwrap(), parse_at("2026-12-04T17:30:00Z", 0).unwrap());
        assert!(parse_at("tomorrow", 0).is_err());
        assert!(parse_at("+5d", 0).is_err());
        assert_eq!(super::parse_duration("2h").unwrap(), 7200);
        assert_eq!(super::parse_duration("45").unwrap(), 45);
        assert!(super::parse_duration("m").is_err());
    }
}
