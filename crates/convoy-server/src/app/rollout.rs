//! A deployment's way from request to rollout (SPEC §4, P-request,
//! P-approval, P-preflight, P-confirm, P-plan): requests made in an
//! environment wait for approvals, run preflight on their targets, wait for
//! confirmation, and are then planned into waves and written as
//! instructions. Shared by the HTTP API, the NATS listener and the scheduler.

use std::collections::{BTreeMap, BTreeSet};

use convoy_domain::{
    plan, request_step, show_time, DeploymentState as D, InstructionState, PlanTarget, Policy, RequestEvent,
    RequestRules, RequestStep, Selector, Window,
};
use convoy_store::{new_id, CheckRecord, DeploymentMove, DeploymentRecord, InstructionRecord};
use convoy_wire::{PlanInfo, PreflightSpec, TargetInfo};

use super::{target_info, AppError, AppResult, Rules, SITE_LABEL};
use crate::state::{now_ms, AppState};

/// `d` under its environment's policy as it is now: a request is bound by
/// the policy at each step (a stricter one made after it applies), and
/// the policy is written with the request's next move. Settled and
/// rolling-out deployments keep the policy they were confirmed under.
pub async fn under_current_policy(st: &AppState, mut d: DeploymentRecord) -> AppResult<DeploymentRecord> {
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

/// The stored policy of `d` and its windows (corrupt: an error).
pub fn policy_of(d: &DeploymentRecord) -> AppResult<(Policy, Vec<Window>)> {
    let r = Rules::of(d)?;
    Ok((r.policy, r.windows))
}

/// What of a policy the request machine reads.
pub fn request_rules(p: &Policy) -> RequestRules {
    RequestRules {
        approvals: p.approvals,
        preflight_failure: p.preflight_failure,
        max_failures: p.max_failures,
        confirm: p.confirm,
    }
}

/// Enrolled targets the selector matches, by id.
/// Enrolled targets in scope of `d`: those its selector matches, and of
/// them only the ones it picked by id, if it picked any.
pub(super) async fn in_scope(st: &AppState, d: &DeploymentRecord) -> AppResult<Vec<TargetInfo>> {
    let selector = Selector::parse(&d.selector).map_err(|e| AppError::corrupt("selector", &d.id, e))?;
    let picked: BTreeSet<&str> = d.targets.split(',').filter(|s| !s.is_empty()).collect();
    let started = std::time::Instant::now();
    let rows = if picked.is_empty() {
        // one read of the targets the selector's terms may match (the
        // database narrows by the stored labels' text; matched exactly here)
        let having: Vec<(String, String)> = selector.0 .0.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        st.store.list_targets_having(&having).await?
    } else {
        let ids: Vec<String> = picked.iter().map(|s| (*s).to_owned()).collect();
        let mut rows = st.store.get_targets(&ids).await?;
        rows.sort_by(|a, b| (&a.hostname, &a.id).cmp(&(&b.hostname, &b.id)));
        rows
    };
    let read_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut out = Vec::with_capacity(rows.len());
    for t in &rows {
        let info = target_info(t, None)?;
        if selector.matches(&info.labels) {
            out.push(info);
        }
    }
    tracing::debug!(deployment = %d.id, read_ms, total_ms = started.elapsed().as_secs_f64() * 1e3, targets = out.len(), "targets in scope");
    Ok(out)
}

/// Resolves targets named by id or hostname to ids: each must be enrolled,
/// a hostname must name one target only, and each must match `selector`.
pub(super) async fn pick(st: &AppState, names: &[String], selector: &Selector) -> AppResult<Vec<String>> {
    if names.len() > 10_000 {
        return Err(AppError::bad_request("at most 10000 targets by name; use a selector"));
    }
    if names.is_empty() {
        // nothing picked: no read of every target
        return Ok(Vec::new());
    }
    let all = st.store.list_target_labels().await?;
    let mut out = BTreeSet::new();
    for n in names {
        let found: Vec<&convoy_store::TargetLabels> = all.iter().filter(|t| t.id == *n || t.hostname == *n).collect();
        let t = match found.as_slice() {
            [] => return Err(AppError::bad_request(format!("no enrolled target has the id or hostname {n:?}"))),
            [t] => *t,
            many => {
                let ids: Vec<&str> = many.iter().map(|t| t.id.as_str()).collect();
                return Err(AppError::bad_request(format!(
                    "hostname {n:?} names {} targets ({}); pick them by id",
                    many.len(),
                    ids.join(", ")
                )));
            }
        };
        let labels: convoy_wire::Labels =
            serde_json::from_str(&t.labels_json).map_err(|e| AppError::corrupt("labels", &t.id, e))?;
        if !selector.matches(&labels) {
            return Err(AppError::bad_request(format!(
                "target {} ({}) does not match the selector {:?}",
                t.id,
                t.hostname,
                selector.0.to_string()
            )));
        }
        out.insert(t.id.clone());
    }
    Ok(out.into_iter().collect())
}

pub(super) async fn refuse_busy(st: &AppState, app: &str, targets: &[TargetInfo]) -> AppResult<()> {
    let busy = st.store.busy_targets(app).await?;
    if let Some(t) = targets.iter().find(|t| busy.contains(&t.id)) {
        return Err(AppError::conflict(format!(
            "target {} ({}) is already in an unfinished deployment of {app}; wait for it or roll it back",
            t.id, t.hostname
        )));
    }
    Ok(())
}

pub(super) fn instruction(
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
pub(super) fn prepare_deltas(st: &AppState, d: &DeploymentRecord, instrs: &[InstructionRecord]) {
    let pairs: BTreeSet<String> =
        instrs.iter().filter_map(|i| i.previous_version.clone()).filter(|v| *v != d.version).collect();
    for from in pairs {
        let (st, app, to) = (st.clone(), d.app.clone(), d.version.clone());
        tokio::spawn(async move {
            if let Err(e) = super::content::begin(&st, &app, &from, &to).await {
                tracing::debug!(error = %e, %from, %to, "no delta prepared");
            }
        });
    }
}

/// Approved (or no approval needed): one pending check per target in scope.
pub async fn start_preflight(st: &AppState, d: &DeploymentRecord, note: &str, actor: &str) -> AppResult<bool> {
    let targets = in_scope(st, d).await?;
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

/// Settles a target's preflight check from its report.
pub async fn preflight_answer(
    st: &AppState,
    target: &str,
    r: &convoy_wire::Report,
) -> AppResult<convoy_wire::ReportResponse> {
    let c = st.store.get_check(&r.instruction_id).await?.filter(|c| c.target_id == target);
    let Some(c) = c else {
        return Err(AppError::not_found(format!("preflight {} not found for this target", r.instruction_id)));
    };
    let (state, note) = match &r.report {
        convoy_domain::ReportKind::Succeeded => ("passed", "preflight passed".to_owned()),
        convoy_domain::ReportKind::Failed { message } => ("failed", format!("preflight failed: {message}")),
        other => {
            return Ok(convoy_wire::ReportResponse {
                accepted: false,
                note: format!("{other:?} does not settle a preflight"),
            })
        }
    };
    let done = convoy_store::CheckRecord {
        state: state.into(),
        result_json: serde_json::to_string(&r.metrics).map_err(AppError::internal)?,
        output: r.output.clone(),
        updated_at: now_ms(),
        ..c
    };
    let moved = st.store.finish_check(&done, &format!("agent:{target}")).await?;
    if moved {
        tracing::info!(deployment = %done.deployment_id, target_id = %target, "{note}");
        st.wake.notify_one();
    }
    Ok(convoy_wire::ReportResponse { accepted: moved, note })
}

/// What a target must check for a request: the package's preparation and
/// requirements, then the environment's checks. Made once per request,
/// revision and policy, and kept in memory, since polls ask for it until
/// the target answers.
pub async fn preflight_spec(st: &AppState, d: &DeploymentRecord) -> AppResult<PreflightSpec> {
    let key = format!("{}:{}:{}", d.id, d.revision, blake3::hash(d.policy_json.as_bytes()).to_hex());
    if let Some(spec) = st.preflight_specs.lock().expect("spec cache lock").get(&key) {
        return Ok(spec.clone());
    }
    let spec = make_preflight_spec(st, d).await?;
    let mut cache = st.preflight_specs.lock().expect("spec cache lock");
    if cache.len() >= 1_000 {
        cache.clear();
    }
    cache.insert(key, spec.clone());
    Ok(spec)
}

async fn make_preflight_spec(st: &AppState, d: &DeploymentRecord) -> AppResult<PreflightSpec> {
    let (policy, _) = policy_of(d)?;
    let release = st
        .store
        .get_release(&d.app, &d.version)
        .await?
        .ok_or_else(|| AppError::internal("release of a request vanished"))?;
    let chunks = st.chunks.clone();
    let desc = tokio::task::spawn_blocking(move || {
        let m = convoy_pack::Manifest::from_slice(&release.manifest).ok()?;
        super::content::descriptor_of(&chunks, &m)
    })
    .await
    .map_err(AppError::internal)?
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
/// answered (or the time-out passed), the request machine says whether it
/// fails, waits for confirmation, or starts its rollout.
pub async fn settle_preflight(st: &AppState, d: &DeploymentRecord, now: i64) -> AppResult<bool> {
    let (policy, windows) = policy_of(d)?;
    let mut checks = st.store.list_checks(&d.id).await?;
    let overdue = now >= d.updated_at + policy.preflight_timeout_secs as i64 * 1000;
    let pending = checks.iter().filter(|c| c.state == "pending").count() as u32;
    let failed = checks.iter().filter(|c| c.state == "failed").count() as u32;
    let answers = RequestEvent::PreflightAnswers { total: checks.len() as u32, failed, pending, overdue };
    let step = request_step(d.state, &answers, &request_rules(&policy));
    if let RequestStep::Wait(_) | RequestStep::Refuse(_) = step {
        return Ok(false);
    }
    // the silent ones failed: record it before moving on
    for c in checks.iter_mut().filter(|c| c.state == "pending") {
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
    let names: Vec<String> = if failed.is_empty() {
        Vec::new()
    } else {
        let hosts = hostnames(st).await?;
        failed.iter().take(10).map(|c| describe_failure(c, &hosts)).collect()
    };
    let passed = total - failed.len() as u32;
    let skipped = if failed.is_empty() {
        String::new()
    } else {
        format!(
            "; going on without {} (within the failure budget): {}",
            convoy_domain::targets(failed.len() as u64),
            names.join("; ")
        )
    };
    // a planned go-live that passed meanwhile never goes live silently
    let missed = late_go_live(d, &policy, &windows, now).err().map(|e| e.to_string());
    let step = match (step, &missed) {
        (RequestStep::StartRollout { .. }, Some(_)) => {
            request_step(d.state, &RequestEvent::GoLiveMissed, &request_rules(&policy))
        }
        (s, _) => s,
    };
    match step {
        RequestStep::Move { to: D::Failed, .. } => {
            let note = format!("preflight failed on {} of {total}: {}", failed.len(), names.join("; "));
            let m = DeploymentMove {
                from_revision: Some(d.revision),
                ..DeploymentMove::new(D::Preflight, D::Failed, &note, "scheduler", now)
            };
            let moved = st.store.transition_deployment(&d.id, &m).await?;
            if moved {
                crate::notify::send(st, &policy, "preflight_failed", d, "scheduler", &note);
            }
            Ok(moved)
        }
        RequestStep::Move { to: D::AwaitingConfirmation, .. } => {
            let note = match &missed {
                Some(why) => format!("preflight passed on {passed} of {total}{skipped}; {why}; then confirm"),
                None => format!("preflight passed on {passed} of {total}{skipped}; waiting for confirmation"),
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
            Ok(moved)
        }
        RequestStep::StartRollout { .. } => {
            let note = format!("preflight passed on {passed} of {total}{skipped}; planned and staging");
            match start_rollout(st, d, "scheduler", &note).await {
                Ok(moved) => Ok(moved),
                // nothing can start (targets busy, none left): the request fails, saying why
                Err(e @ (AppError::Conflict(_) | AppError::Invalid(_))) => {
                    let note = format!("could not start: {e}");
                    let m = DeploymentMove::new(D::Preflight, D::Failed, &note, "scheduler", now);
                    Ok(st.store.transition_deployment(&d.id, &m).await?)
                }
                Err(e) => Err(e),
            }
        }
        other => Err(AppError::internal(format!("request machine answered {other:?} to preflight answers"))),
    }
}

async fn hostnames(st: &AppState) -> AppResult<BTreeMap<String, String>> {
    Ok(st.store.list_target_labels().await?.into_iter().map(|t| (t.id, t.hostname)).collect())
}

fn describe_failure(c: &CheckRecord, hosts: &BTreeMap<String, String>) -> String {
    let results: BTreeMap<String, String> = serde_json::from_str(&c.result_json).unwrap_or_default();
    let bad: Vec<String> =
        results.iter().filter(|(_, v)| v.starts_with("FAIL")).map(|(k, v)| format!("{k} {v}")).collect();
    format!("{} ({}): {}", c.target_id, hosts.get(&c.target_id).map_or("?", String::as_str), bad.join(", "))
}

/// The targets a request would deploy to now: those that passed preflight,
/// or (before preflight) every target in scope.
async fn rollout_targets(st: &AppState, d: &DeploymentRecord) -> AppResult<Vec<TargetInfo>> {
    let all = in_scope(st, d).await?;
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
        .map(|t| PlanTarget { id: t.id.clone(), site: t.labels.0.get(SITE_LABEL).cloned().unwrap_or_default() })
        .collect()
}

/// The plan as it stands (stored once confirmed; before that, as it would
/// be made now). Once planned, it names the targets of `hosts` (target id
/// to hostname: a page of the deployment's), not all of them.
pub async fn plan_view(
    st: &AppState,
    d: &DeploymentRecord,
    instrs: &[InstructionRecord],
    hosts: &BTreeMap<String, String>,
) -> AppResult<Option<PlanInfo>> {
    if d.env.is_none() {
        return Ok(None);
    }
    if !instrs.is_empty() {
        let waves = Rules::of(d)?.plan;
        let targets = instrs
            .iter()
            .filter_map(|i| hosts.get(&i.target_id).map(|h| (i.target_id.clone(), h.clone(), i.wave)))
            .collect();
        return Ok(Some(PlanInfo { waves, targets, note: None }));
    }
    if !d.state.is_request() {
        return Ok(None);
    }
    let (policy, windows) = policy_of(d)?;
    let targets = rollout_targets(st, d).await?;
    let host: BTreeMap<&str, &str> = targets.iter().map(|t| (t.id.as_str(), t.hostname.as_str())).collect();
    Ok(Some(match plan(&plan_targets(&targets), &policy, &windows, d.go_live_at) {
        Ok(p) => PlanInfo {
            waves: p.waves,
            targets: p
                .assignment
                .into_iter()
                .map(|(id, w)| {
                    let h = host.get(id.as_str()).copied().unwrap_or_default().to_owned();
                    (id, h, w)
                })
                .collect(),
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
) -> AppResult<(Option<i64>, String)> {
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
        Some(at) => Err(AppError::conflict(format!(
            "the planned go-live {} passed before request {} was ready; nothing goes live on a missed plan: give it a new time (convoy change {} --at ...)",
            show_time(at),
            d.id,
            d.id
        ))),
    }
}

pub async fn start_rollout(st: &AppState, d: &DeploymentRecord, actor: &str, note: &str) -> AppResult<bool> {
    let (policy, windows) = policy_of(d)?;
    let targets = rollout_targets(st, d).await?;
    if targets.is_empty() {
        return Err(AppError::bad_request("no target in scope passed preflight"));
    }
    refuse_busy(st, &d.app, &targets).await?;
    let now = now_ms();
    // a planned go-live that passed before the request was ready never goes
    // live silently: it moves to the next window, or waits for a new time
    let (at, late) = late_go_live(d, &policy, &windows, now)?;
    let note = format!("{note}{late}");
    let p = plan(&plan_targets(&targets), &policy, &windows, at).map_err(|e| AppError::bad_request(e.0))?;
    let by_id: BTreeMap<&str, &TargetInfo> = targets.iter().map(|t| (t.id.as_str(), t)).collect();
    let instrs: Vec<InstructionRecord> = p
        .assignment
        .iter()
        .map(|(id, w)| instruction(d, by_id[id.as_str()], *w, p.waves[*w as usize - 1].at, now))
        .collect();
    let plan_json = serde_json::to_string(&p.waves).map_err(AppError::internal)?;
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
