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
    /// Whether approvals must be signed.
    pub signed_approvals: Option<bool>,
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
    if let Some(s) = a.signed_approvals {
        p.signed_approvals = s;
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
    if p.signed_approvals {
        line("  approvals       signed with each approver's key; agents check them (convoy trust approvers)");
    }
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
    let before = current.clone();
    let policy = apply(current, args)?;
    let e: EnvInfo = c.send_json(reqwest::Method::PUT, &format!("/envs/{name}"), &policy).await?;
    match fmt {
        Format::Json => output::json(&e),
        Format::Table => print_env(&e),
    }
    // agents follow the approver role in the signed targets, not this policy
    if e.policy.signed_approvals
        && (!before.signed_approvals
            || before.approvals != e.policy.approvals
            || before.approver_role != e.policy.approver_role)
    {
        eprintln!(
            "convoy: agents check approvals against {name}'s approver keys and threshold as published in the signed TUF targets: run `convoy trust approvers {name}` (with --targets-key when it is kept offline) to publish this change"
        );
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
        .send_json(
            reqwest::Method::POST,
            &format!("/deployments/{id}/{action}"),
            &Decision { note: note.into(), ..Default::default() },
        )
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
