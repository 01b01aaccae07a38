//! A deployment's way from request to rollout (SPEC §4, P-request,
//! P-approval, P-preflight, P-confirm, P-plan): requests made in an
//! environment wait for approvals, run preflight on their targets, wait for
//! confirmation, and are then planned into waves and written as
//! instructions. Shared by the HTTP API, the NATS listener and the scheduler.

use std::collections::{BTreeMap, BTreeSet};

use convoy_domain::{
    check_go_live, plan, show_time, AppName, DeploymentState as D, InstructionState, PlanTarget, Policy,
    PreflightFailure, Selector, Version, Window,
};
use convoy_store::{new_id, CheckRecord, DeploymentMove, DeploymentRecord, InstructionRecord};
use convoy_wire::{DeployRequest, DeploymentInfo, PlanInfo, PreflightSpec, TargetInfo};

use crate::auth::User;
use crate::error::{ApiError, ApiResult};
use crate::routes::deployments::info;
use crate::state::{now_ms, AppState};

/// How long after go-live a target may stay silent, unless the request says.
const DEFAULT_ACTIVATE_TIMEOUT_SECS: u64 = 900;

/// How far in the past a go-live time may be (clock skew, typing time).
const PAST_GRACE_MS: i64 = 60_000;

/// The environment's policy as stored with a request, and its windows.
/// `d` under its environment's policy as it is now: a request is bound by
/// the policy at each step (a stricter one made after it applies), and
/// the policy is written with the request's next move. Settled and
/// rolling-out deployments keep the policy they were confirmed under.
pub async fn under_current_policy(st: &AppState, mut d: DeploymentRecord) -> ApiResult<DeploymentRecord> {
    if !d.state.is_request() {
        return Ok(d);
    }
    if let Some(env) = &d.env {
        if let Some(e) = st.store.get_env(env).await? {
            if e.policy_json != d.policy_json {
                tracing::debug!(deployment = %d.id, env = %env, "the environment's policy changed since the request; it applies");
                d.policy_json = e.policy_json;
            }
        }
    }
    Ok(d)
}

pub fn policy_of(d: &DeploymentRecord) -> ApiResult<(Policy, Vec<Window>)> {
    if d.policy_json.is_empty() {
        return Ok((Policy::default(), Vec::new()));
    }
    let p: Policy = serde_json::from_str(&d.policy_json).map_err(ApiError::internal)?;
    let w = p.validate().map_err(ApiError::internal)?;
    Ok((p, w))
}

/// Enrolled targets the selector matches, by id.
async fn in_scope(st: &AppState, selector: &Selector) -> ApiResult<Vec<TargetInfo>> {
    let mut out = Vec::new();
    for t in st.store.list_targets().await? {
        let info = crate::routes::target_info(&t, None)?;
        if selector.matches(&info.labels) {
            out.push(info);
        }
    }
    Ok(out)
}

async fn refuse_busy(st: &AppState, app: &str, targets: &[TargetInfo]) -> ApiResult<()> {
    let busy = st.store.busy_targets(app).await?;
    if let Some(t) = targets.iter().find(|t| busy.contains(&t.id)) {
        return Err(ApiError::conflict(format!(
            "target {} ({}) is already in an unfinished deployment of {app}; wait for it or roll it back",
            t.id, t.hostname
        )));
    }
    Ok(())
}

/// Validates and records a deployment request: at once as a deployment
/// without an environment, or as a request that goes through the
/// environment's approvals, preflight and confirmation.
pub async fn submit(st: &AppState, user: &User, req: DeployRequest) -> ApiResult<DeploymentInfo> {
    let app = AppName::parse(&req.app).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let version = Version::parse(&req.version).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let selector = Selector::parse(&req.selector).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if req.reason.len() > 1024 {
        return Err(ApiError::bad_request("reason must be at most 1024 bytes"));
    }
    let now = now_ms();
    if let Some(at) = req.at {
        if at < now - PAST_GRACE_MS {
            return Err(ApiError::bad_request(format!(
                "go-live time is {}s in the past; give a future time, or none to go live as soon as every copy matches",
                (now - at) / 1000
            )));
        }
    }
    for (what, v, max) in [
        ("stage_timeout_secs", req.stage_timeout_secs, 30 * 86_400),
        ("activate_timeout_secs", req.activate_timeout_secs, 7 * 86_400),
    ] {
        if v.is_some_and(|v| v == 0 || v > max) {
            return Err(ApiError::bad_request(format!("{what} must be between 1 and {max}")));
        }
    }
    let env = match &req.env {
        // without an environment nothing is approved: only admins may
        None if user.role < convoy_domain::Role::Admin => {
            return Err(ApiError::forbidden(format!(
                "{} ({}) deploys through an environment: add --env NAME (deployments without one need the admin role)",
                user.name, user.role
            )))
        }
        None => None,
        Some(name) => {
            let rec = st.store.get_env(name).await?.ok_or_else(|| {
                ApiError::not_found(format!(
                    "environment {name:?} not found; an admin creates it with `convoy env set {name}`"
                ))
            })?;
            let policy: Policy = serde_json::from_str(&rec.policy_json).map_err(ApiError::internal)?;
            Some((rec.name, policy))
        }
    };
    let release = st
        .store
        .get_release(app.as_str(), version.as_str())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("release {app}@{version} not found; publish it first")))?;
    let chosen = in_scope(st, &selector).await?;
    if chosen.is_empty() {
        return Err(ApiError::bad_request(format!("selector {:?} matches no enrolled target", req.selector)));
    }
    refuse_busy(st, app.as_str(), &chosen).await?;
    let mut dep = DeploymentRecord {
        id: new_id("d"),
        app: app.to_string(),
        version: version.to_string(),
        digest: release.digest.clone(),
        selector: selector.0.to_string(),
        state: D::Staging,
        go_live_at: req.at,
        max_failures: req.max_failures,
        stage_deadline: req.stage_timeout_secs.map(|s| now + s as i64 * 1000),
        activate_timeout_ms: req.activate_timeout_secs.unwrap_or(DEFAULT_ACTIVATE_TIMEOUT_SECS) as i64 * 1000,
        created_by: user.name.clone(),
        created_at: now,
        updated_at: now,
        note: format!("staging {app}@{version} to {}", convoy_domain::targets(chosen.len() as u64)),
        env: None,
        reason: req.reason.clone(),
        policy_json: String::new(),
        plan_json: String::new(),
        wave: 0,
        revision: 0,
        expires_at: None,
    };
    let Some((env, policy)) = env else {
        let instrs: Vec<InstructionRecord> = chosen.iter().map(|t| instruction(&dep, t, 1, None, now)).collect();
        st.store.create_deployment(&dep, &instrs, &user.actor()).await?;
        tracing::info!(deployment = %dep.id, app = %app, version = %version, targets = instrs.len(), "deployment created");
        st.changed(instrs.iter().map(|i| i.target_id.as_str()));
        prepare_deltas(st, &dep, &instrs);
        return Ok(info(&dep, &instrs));
    };
    let windows = policy.validate().map_err(ApiError::internal)?;
    let (at, moved) = check_go_live(&policy, &windows, req.at).map_err(|e| ApiError::bad_request(e.0))?;
    dep.go_live_at = at;
    dep.env = Some(env.clone());
    dep.policy_json = serde_json::to_string(&policy).map_err(ApiError::internal)?;
    dep.max_failures = policy.max_failures.floor_of(chosen.len() as u32);
    dep.state = D::AwaitingApproval;
    dep.note = format!(
        "requested in {env}: {} approval(s) from {} or above needed{}",
        policy.approvals,
        policy.approver_role,
        moved.map(|m| format!("; {m}")).unwrap_or_default()
    );
    st.store.create_deployment(&dep, &[], &user.actor()).await?;
    tracing::info!(deployment = %dep.id, %env, app = %app, version = %version, "deployment requested");
    if policy.approvals == 0 {
        start_preflight(st, &dep, "no approval needed; preflight", &user.actor()).await?;
    } else {
        crate::notify::send(st, &policy, "approval_requested", &dep, &user.actor(), &req.reason);
    }
    let dep = st.store.get_deployment(&dep.id).await?.ok_or_else(|| ApiError::internal("request vanished"))?;
    Ok(info(&dep, &[]))
}

fn instruction(
    d: &DeploymentRecord,
    t: &TargetInfo,
    wave: u32,
    planned_at: Option<i64>,
    now: i64,
) -> InstructionRecord {
    InstructionRecord {
        id: new_id("i"),
        deployment_id: d.id.clone(),
        target_id: t.id.clone(),
        state: InstructionState::Created,
        attempt: 0,
        previous_version: t.inventory.current.get(&d.app).cloned(),
        go_live_at: None,
        reported_digest: None,
        metrics_json: "{}".into(),
        output: String::new(),
        note: "stage the release".into(),
        updated_at: now,
        wave,
        planned_at,
    }
}

/// Makes the deltas this fleet will ask for while agents read manifests.
fn prepare_deltas(st: &AppState, d: &DeploymentRecord, instrs: &[InstructionRecord]) {
    let pairs: BTreeSet<String> =
        instrs.iter().filter_map(|i| i.previous_version.clone()).filter(|v| *v != d.version).collect();
    for from in pairs {
        let (st, app, to) = (st.clone(), d.app.clone(), d.version.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::routes::deltas::prepare(&st, &app, &from, &to).await {
                tracing::debug!(error = %e.message, %from, %to, "no delta prepared");
            }
        });
    }
}

/// Approved (or no approval needed): one pending check per target in scope.
pub async fn start_preflight(st: &AppState, d: &DeploymentRecord, note: &str, actor: &str) -> ApiResult<bool> {
    let selector = Selector::parse(&d.selector).map_err(ApiError::internal)?;
    let targets = in_scope(st, &selector).await?;
    let now = now_ms();
    if targets.is_empty() {
        let m = DeploymentMove {
            from_revision: Some(d.revision),
            ..DeploymentMove::new(d.state, D::Failed, "the selector matches no enrolled target any more", actor, now)
        };
        return Ok(st.store.transition_deployment(&d.id, &m).await?);
    }
    let checks: Vec<CheckRecord> = targets
        .iter()
        .map(|t| CheckRecord {
            id: new_id("c"),
            deployment_id: d.id.clone(),
            target_id: t.id.clone(),
            state: "pending".into(),
            result_json: "{}".into(),
            output: String::new(),
            updated_at: now,
        })
        .collect();
    let note = format!("{note} on {}", convoy_domain::targets(checks.len() as u64));
    let m = DeploymentMove {
        from_revision: Some(d.revision),
        new_checks: &checks,
        policy_json: Some(&d.policy_json),
        ..DeploymentMove::new(d.state, D::Preflight, &note, actor, now)
    };
    let moved = st.store.transition_deployment(&d.id, &m).await?;
    if moved {
        st.changed(checks.iter().map(|c| c.target_id.as_str()));
    }
    Ok(moved)
}

/// What a target must check for a request: the package's preparation and
/// requirements, then the environment's checks. Made once per request (its
/// release and policy never change) and kept in memory, since polls ask
/// for it until the target answers.
pub async fn preflight_spec(st: &AppState, d: &DeploymentRecord) -> ApiResult<PreflightSpec> {
    if let Some(spec) = st.preflight_specs.lock().expect("spec cache lock").get(&d.id) {
        return Ok(spec.clone());
    }
    let spec = make_preflight_spec(st, d).await?;
    let mut cache = st.preflight_specs.lock().expect("spec cache lock");
    if cache.len() >= 1_000 {
        cache.clear();
    }
    cache.insert(d.id.clone(), spec.clone());
    Ok(spec)
}

async fn make_preflight_spec(st: &AppState, d: &DeploymentRecord) -> ApiResult<PreflightSpec> {
    let (policy, _) = policy_of(d)?;
    let release = st
        .store
        .get_release(&d.app, &d.version)
        .await?
        .ok_or_else(|| ApiError::internal("release of a request vanished"))?;
    let chunks = st.chunks.clone();
    let desc = tokio::task::spawn_blocking(move || {
        let m = convoy_pack::Manifest::from_slice(&release.manifest).ok()?;
        crate::routes::deltas::descriptor_of(&chunks, &m)
    })
    .await
    .map_err(ApiError::internal)?
    .unwrap_or_default();
    let mut checks = desc.requires.checks;
    checks.extend(policy.checks.iter().cloned());
    Ok(PreflightSpec {
        release_size: release.total_size.max(0) as u64,
        prepare: desc.hooks.prepare,
        commands: desc.requires.commands,
        ports: desc.requires.ports,
        checks,
        timeout_secs: desc.hooks.timeout_secs.min(policy.preflight_timeout_secs),
    })
}

/// The scheduler's step for a request in preflight: once every target
/// answered (or the time-out passed), fail it or move it on.
pub async fn settle_preflight(st: &AppState, d: &DeploymentRecord, now: i64) -> ApiResult<bool> {
    let (policy, windows) = policy_of(d)?;
    let mut checks = st.store.list_checks(&d.id).await?;
    let overdue = now >= d.updated_at + policy.preflight_timeout_secs as i64 * 1000;
    for c in checks.iter_mut().filter(|c| c.state == "pending") {
        if !overdue {
            return Ok(false);
        }
        let done = CheckRecord {
            state: "failed".into(),
            result_json:
                serde_json::json!({"answer": format!("FAIL: no answer within {}s", policy.preflight_timeout_secs)})
                    .to_string(),
            updated_at: now,
            ..c.clone()
        };
        if st.store.finish_check(&done, "scheduler").await? {
            *c = done;
        }
    }
    let failed: Vec<&CheckRecord> = checks.iter().filter(|c| c.state == "failed").collect();
    let total = checks.len() as u32;
    let budget = policy.max_failures.floor_of(total);
    let names: Vec<String> = if failed.is_empty() {
        Vec::new()
    } else {
        let hosts = hostnames(st).await?;
        failed.iter().take(10).map(|c| describe_failure(c, &hosts)).collect()
    };
    let blocked = match policy.preflight_failure {
        PreflightFailure::Block => !failed.is_empty(),
        PreflightFailure::Skip => failed.len() as u32 > budget || failed.len() as u32 == total,
    };
    if blocked {
        let note = format!("preflight failed on {} of {total}: {}", failed.len(), names.join("; "));
        let m = DeploymentMove {
            from_revision: Some(d.revision),
            ..DeploymentMove::new(D::Preflight, D::Failed, &note, "scheduler", now)
        };
        let moved = st.store.transition_deployment(&d.id, &m).await?;
        if moved {
            crate::notify::send(st, &policy, "preflight_failed", d, "scheduler", &note);
        }
        return Ok(moved);
    }
    let skipped = if failed.is_empty() {
        String::new()
    } else {
        format!(
            "; going on without {} (within the failure budget): {}",
            convoy_domain::targets(failed.len() as u64),
            names.join("; ")
        )
    };
    let missed = late_go_live(d, &policy, &windows, now).err().map(|e| e.message);
    if policy.confirm || missed.is_some() {
        let note = match &missed {
            Some(why) => {
                format!("preflight passed on {} of {total}{skipped}; {why}; then confirm", total - failed.len() as u32)
            }
            None => format!(
                "preflight passed on {} of {total}{skipped}; waiting for confirmation",
                total - failed.len() as u32
            ),
        };
        let m = DeploymentMove {
            from_revision: Some(d.revision),
            expires_at: Some(now + policy.confirm_ttl_secs as i64 * 1000),
            ..DeploymentMove::new(D::Preflight, D::AwaitingConfirmation, &note, "scheduler", now)
        };
        let moved = st.store.transition_deployment(&d.id, &m).await?;
        if moved {
            crate::notify::send(st, &policy, "confirmation_requested", d, "scheduler", &note);
        }
        return Ok(moved);
    }
    let note = format!("preflight passed on {} of {total}{skipped}; planned and staging", total - failed.len() as u32);
    match start_rollout(st, d, "scheduler", &note).await {
        Ok(moved) => Ok(moved),
        Err(e) if e.status == axum::http::StatusCode::CONFLICT || e.status == axum::http::StatusCode::BAD_REQUEST => {
            let note = format!("could not start: {}", e.message);
            let m = DeploymentMove::new(D::Preflight, D::Failed, &note, "scheduler", now);
            Ok(st.store.transition_deployment(&d.id, &m).await?)
        }
        Err(e) => Err(e),
    }
}

async fn hostnames(st: &AppState) -> ApiResult<BTreeMap<String, String>> {
    Ok(st.store.list_targets().await?.into_iter().map(|t| (t.id, t.hostname)).collect())
}

fn describe_failure(c: &CheckRecord, hosts: &BTreeMap<String, String>) -> String {
    let results: BTreeMap<String, String> = serde_json::from_str(&c.result_json).unwrap_or_default();
    let bad: Vec<String> =
        results.iter().filter(|(_, v)| v.starts_with("FAIL")).map(|(k, v)| format!("{k} {v}")).collect();
    format!("{} ({}): {}", c.target_id, hosts.get(&c.target_id).map_or("?", String::as_str), bad.join(", "))
}

/// The targets a request would deploy to now: those that passed preflight,
/// or (before preflight) every target in scope.
async fn rollout_targets(st: &AppState, d: &DeploymentRecord) -> ApiResult<Vec<TargetInfo>> {
    let selector = Selector::parse(&d.selector).map_err(ApiError::internal)?;
    let all = in_scope(st, &selector).await?;
    let checks = st.store.list_checks(&d.id).await?;
    if checks.is_empty() {
        return Ok(all);
    }
    let passed: BTreeSet<&str> = checks.iter().filter(|c| c.state != "failed").map(|c| c.target_id.as_str()).collect();
    Ok(all.into_iter().filter(|t| passed.contains(t.id.as_str())).collect())
}

fn plan_targets(targets: &[TargetInfo]) -> Vec<PlanTarget> {
    targets
        .iter()
        .map(|t| PlanTarget {
            id: t.id.clone(),
            site: t.labels.0.get(crate::routes::agent::SITE_LABEL).cloned().unwrap_or_default(),
        })
        .collect()
}

/// The plan as it stands (stored once confirmed; before that, as it would
/// be made now).
/// `hosts` maps target ids to hostnames.
pub async fn plan_view(
    st: &AppState,
    d: &DeploymentRecord,
    instrs: &[InstructionRecord],
    hosts: &BTreeMap<String, String>,
) -> ApiResult<Option<PlanInfo>> {
    if d.env.is_none() {
        return Ok(None);
    }
    let host = |id: &str| hosts.get(id).cloned().unwrap_or_default();
    if !instrs.is_empty() {
        let waves = serde_json::from_str(&d.plan_json).unwrap_or_default();
        let targets = instrs.iter().map(|i| (i.target_id.clone(), host(&i.target_id), i.wave)).collect();
        return Ok(Some(PlanInfo { waves, targets, note: None }));
    }
    if !d.state.is_request() {
        return Ok(None);
    }
    let (policy, windows) = policy_of(d)?;
    let targets = rollout_targets(st, d).await?;
    Ok(Some(match plan(&plan_targets(&targets), &policy, &windows, d.go_live_at) {
        Ok(p) => PlanInfo {
            waves: p.waves,
            targets: p.assignment.into_iter().map(|(id, w)| (id.clone(), host(&id), w)).collect(),
            note: p.moved,
        },
        Err(e) => PlanInfo { waves: Vec::new(), targets: Vec::new(), note: Some(e.0) },
    }))
}

/// Confirmed (or no confirmation needed): plans the waves and writes one
/// instruction per target; staging of every wave starts at once.
/// The go-live a request starts its rollout with, and a note when its
/// planned time has passed: moved to the next window (`--outside-window
/// next`), or refused (`Conflict`) until the request is given a new time.
pub fn late_go_live(
    d: &DeploymentRecord,
    policy: &Policy,
    windows: &[Window],
    now: i64,
) -> ApiResult<(Option<i64>, String)> {
    match d.go_live_at {
        None => Ok((None, String::new())),
        Some(at) if at > now => Ok((Some(at), String::new())),
        Some(at) if !windows.is_empty() && policy.outside_window == convoy_domain::OutsideWindow::Next => {
            let next = convoy_domain::next_allowed(windows, now);
            Ok((
                Some(next),
                format!(
                    "; the planned go-live {} passed before the request was ready: moved to the next window, {}",
                    show_time(at),
                    show_time(next)
                ),
            ))
        }
        Some(at) => Err(ApiError::conflict(format!(
            "the planned go-live {} passed before request {} was ready; nothing goes live on a missed plan: give it a new time (convoy change {} --at ...)",
            show_time(at),
            d.id,
            d.id
        ))),
    }
}

pub async fn start_rollout(st: &AppState, d: &DeploymentRecord, actor: &str, note: &str) -> ApiResult<bool> {
    let (policy, windows) = policy_of(d)?;
    let targets = rollout_targets(st, d).await?;
    if targets.is_empty() {
        return Err(ApiError::bad_request("no target in scope passed preflight"));
    }
    refuse_busy(st, &d.app, &targets).await?;
    let now = now_ms();
    // a planned go-live that passed before the request was ready never goes
    // live silently: it moves to the next window, or waits for a new time
    let (at, late) = late_go_live(d, &policy, &windows, now)?;
    let note = format!("{note}{late}");
    let p = plan(&plan_targets(&targets), &policy, &windows, at).map_err(|e| ApiError::bad_request(e.0))?;
    let by_id: BTreeMap<&str, &TargetInfo> = targets.iter().map(|t| (t.id.as_str(), t)).collect();
    let instrs: Vec<InstructionRecord> = p
        .assignment
        .iter()
        .map(|(id, w)| instruction(d, by_id[id.as_str()], *w, p.waves[*w as usize - 1].at, now))
        .collect();
    let plan_json = serde_json::to_string(&p.waves).map_err(ApiError::internal)?;
    let waves: Vec<String> = p.waves.iter().map(|w| w.targets.to_string()).collect();
    let note = format!(
        "{note}; {} in {} wave(s) of {}",
        convoy_domain::targets(instrs.len() as u64),
        p.waves.len(),
        waves.join("/")
    );
    let m = DeploymentMove {
        from_revision: Some(d.revision),
        plan_json: Some(&plan_json),
        policy_json: Some(&d.policy_json),
        new_instructions: &instrs,
        ..DeploymentMove::new(d.state, D::Staging, &note, actor, now)
    };
    let moved = st.store.transition_deployment(&d.id, &m).await?;
    if moved {
        tracing::info!(deployment = %d.id, targets = instrs.len(), waves = p.waves.len(), "{note}");
        st.changed(instrs.iter().map(|i| i.target_id.as_str()));
        prepare_deltas(st, d, &instrs);
        st.wake.notify_one();
    }
    Ok(moved)
}
