//! Operations on deployments under way or done: the detail view, retry
//! of failed targets, pause/resume (and resume after a breach paused it),
//! and rollback that knows what happened since. Each takes a reason and is
//! audited, refusals too.

use std::collections::BTreeMap;

use convoy_domain::{
    request_rollback, resume_after_breach, DeploymentState as D, InstrAction, InstructionState as S, Role,
};
use convoy_store::{DeploymentMove, DeploymentRecord, InstructionRecord, InstructionUpdate, TargetRecord};
use convoy_wire::{
    ApprovalInfo, CheckInfo, DeploymentDetail, DeploymentInfo, DetailQuery, InstructionInfo, Labels, WaveCounts,
    DETAIL_LIMIT, DETAIL_MAX_LIMIT,
};

use super::schedule::{bulk_for, tallies};
use super::{audited, event_info, find, info, need_role, AppError, AppResult, Rules};
use crate::auth::User;
use crate::state::{now_ms, AppState};

/// The newest deployments (at most 100) with their counts (one grouped
/// query for all of them).
pub async fn list(st: &AppState, plan: Option<&str>) -> AppResult<Vec<DeploymentInfo>> {
    let deps = match plan {
        None => st.store.list_deployments(100).await?,
        Some(name) => {
            let probe = convoy_wire::PlanRef { name: name.to_owned(), entry: "-".into(), digest: String::new() };
            probe.check().map_err(AppError::bad_request)?;
            st.store.plan_deployments(name).await?
        }
    };
    let ids: Vec<String> = deps.iter().map(|d| d.id.clone()).collect();
    let mut per: BTreeMap<String, Vec<(S, u32)>> = BTreeMap::new();
    for (dep, _, state, n) in st.store.instruction_counts(&ids).await? {
        per.entry(dep).or_default().push((state, n));
    }
    Ok(deps.iter().map(|d| super::info_counted(d, per.get(&d.id).map(Vec::as_slice).unwrap_or(&[]))).collect())
}

/// A deployment with the counts of its targets per state and wave, a page
/// of its targets (filtered by state, wave and labels; in instruction id
/// order), their events, the deployment's own events, upgrade
/// descriptions, approvals, preflight checks and plan. Reads only the
/// deployment's instructions and the targets it needs; every enrolled
/// target only when asked for late ones (`late`).
pub async fn detail(st: &AppState, id: &str, q: &DetailQuery) -> AppResult<DeploymentDetail> {
    let states: Option<Vec<S>> = match q.state.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(list) => Some(
            list.split(',')
                .map(|s| {
                    S::parse(s.trim()).ok_or_else(|| {
                        AppError::bad_request(format!(
                            "state {s:?} is not an instruction state (created, sent, received, staged, activating, succeeded, failed, canceled, rolling_back, rolled_back, superseded)"
                        ))
                    })
                })
                .collect::<AppResult<_>>()?,
        ),
    };
    let label = match q.label.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(l) => {
            Some(convoy_domain::Selector::parse(l).map_err(|e| AppError::bad_request(format!("label {l:?}: {e}")))?)
        }
    };
    let limit = q.limit.unwrap_or(DETAIL_LIMIT);
    if limit == 0 || limit > DETAIL_MAX_LIMIT {
        return Err(AppError::bad_request(format!("limit is 1 to {DETAIL_MAX_LIMIT}")));
    }
    let d = find(st, id).await?;
    // the summary: per state and per wave, over the whole deployment
    // (counted in the database)
    let counts = st.store.instruction_counts(std::slice::from_ref(&d.id)).await?;
    let mut by_state: BTreeMap<String, u32> = BTreeMap::new();
    let mut by_wave: BTreeMap<u32, WaveCounts> = BTreeMap::new();
    let wanted =
        |state: S, wave: u32| states.as_ref().is_none_or(|s| s.contains(&state)) && q.wave.is_none_or(|w| w == wave);
    let mut matching = 0;
    for (_, wave, state, n) in &counts {
        *by_state.entry(state.as_str().to_owned()).or_default() += n;
        let w = by_wave.entry(*wave).or_insert_with(|| WaveCounts { wave: *wave, ..Default::default() });
        w.total += n;
        *w.states.entry(state.as_str().to_owned()).or_default() += n;
        if wanted(*state, *wave) {
            matching += n;
        }
    }
    let after = q.after.as_deref().unwrap_or("");
    let targets: BTreeMap<String, TargetRecord>;
    let (page, next, matching) = match &label {
        // by state and wave: one page read in id order (one more row tells
        // whether a next page exists)
        None => {
            let filter: Vec<S> = states.clone().unwrap_or_default();
            let mut page = st.store.instructions_page(&d.id, &filter, q.wave, after, limit + 1).await?;
            let more = page.len() > limit as usize;
            page.truncate(limit as usize);
            let next = more.then(|| page.last().map(|i| i.id.clone())).flatten();
            let ids: Vec<String> = page.iter().map(|i| i.target_id.clone()).collect();
            targets = st.store.get_targets(&ids).await?.into_iter().map(|t| (t.id.clone(), t)).collect();
            (page, next, matching)
        }
        // labels live with the targets: the deployment's instructions and
        // their targets are read, then matched
        Some(sel) => {
            let mut picked: Vec<InstructionRecord> =
                st.store.list_instructions(id).await?.into_iter().filter(|i| wanted(i.state, i.wave)).collect();
            let ids: Vec<String> = picked.iter().map(|i| i.target_id.clone()).collect();
            targets = st.store.get_targets(&ids).await?.into_iter().map(|t| (t.id.clone(), t)).collect();
            picked.retain(|i| {
                targets
                    .get(&i.target_id)
                    .is_some_and(|t| sel.matches(&serde_json::from_str::<Labels>(&t.labels_json).unwrap_or_default()))
            });
            let matching = picked.len() as u32;
            // instructions come in id order (list_instructions sorts them)
            let mut rest: Vec<InstructionRecord> = picked.into_iter().filter(|i| i.id.as_str() > after).collect();
            let more = rest.len() > limit as usize;
            rest.truncate(limit as usize);
            let next = more.then(|| rest.last().map(|i| i.id.clone())).flatten();
            (rest, next, matching)
        }
    };
    let mut out = Vec::with_capacity(page.len());
    for i in &page {
        let (hostname, labels, last_seen) = match targets.get(&i.target_id) {
            Some(t) => {
                (t.hostname.clone(), serde_json::from_str::<Labels>(&t.labels_json).unwrap_or_default(), t.last_seen)
            }
            None => (String::new(), Labels::default(), 0),
        };
        out.push(InstructionInfo {
            id: i.id.clone(),
            target_id: i.target_id.clone(),
            hostname,
            labels,
            state: i.state.as_str().to_owned(),
            attempt: i.attempt,
            previous_version: i.previous_version.clone(),
            reported_digest: i.reported_digest.clone(),
            metrics: serde_json::from_str(&i.metrics_json).unwrap_or_default(),
            output: i.output.clone(),
            note: i.note.clone(),
            updated_at: i.updated_at,
            wave: i.wave,
            planned_at: i.planned_at,
            last_seen,
            progress: i
                .state
                .phase()
                .filter(|p| *p == convoy_domain::Phase::Stage)
                .and_then(|_| st.progress.lock().expect("progress lock").get(&i.id).cloned())
                .filter(|(t, _)| *t == i.target_id)
                .map(|(_, p)| p),
        });
    }
    let page_ids: Vec<String> = page.iter().map(|i| i.id.clone()).collect();
    let events = st.store.events_of(id, &page_ids).await?.into_iter().map(event_info).collect();
    let froms: Vec<String> = st.store.previous_versions(id).await?.into_iter().filter(|v| *v != d.version).collect();
    let mut changes = Vec::new();
    for from in froms {
        match super::content::changes(st, &d.app, &from, &d.version).await {
            Ok(c) => changes.push(c),
            Err(e) => tracing::debug!(error = %e, %from, "no change description"),
        }
    }
    let approvals = st
        .store
        .list_approvals(id)
        .await?
        .into_iter()
        .map(|a| ApprovalInfo {
            current: a.revision == d.revision,
            signed_with: serde_json::from_str::<serde_json::Value>(&a.signed)
                .ok()
                .and_then(|v| v["signature"]["keyid"].as_str().map(str::to_owned)),
            approver: a.approver,
            decision: a.decision,
            note: a.note,
            at: a.at,
        })
        .collect();
    // preflight checks are a request's (its targets are in scope)
    let checks = st.store.list_checks(id).await?;
    let check_hosts: BTreeMap<String, String> = if checks.is_empty() {
        BTreeMap::new()
    } else {
        let ids: Vec<String> = checks.iter().map(|c| c.target_id.clone()).collect();
        st.store.get_targets(&ids).await?.into_iter().map(|t| (t.id, t.hostname)).collect()
    };
    let checks = checks
        .into_iter()
        .map(|c| CheckInfo {
            hostname: check_hosts.get(&c.target_id).cloned().unwrap_or_default(),
            target_id: c.target_id,
            state: c.state,
            results: serde_json::from_str(&c.result_json).unwrap_or_default(),
            output: c.output,
            updated_at: c.updated_at,
        })
        .collect();
    // the page's targets only (a label filter read more)
    let hosts: BTreeMap<String, String> = page
        .iter()
        .filter_map(|i| targets.get(&i.target_id).map(|t| (i.target_id.clone(), t.hostname.clone())))
        .collect();
    let total: u32 = counts.iter().map(|c| c.3).sum();
    let plan = match d.env {
        // planned: the waves, and the page's targets in them
        Some(_) if total > 0 => Some(convoy_wire::PlanInfo {
            waves: Rules::of(&d)?.plan,
            targets: page
                .iter()
                .filter_map(|i| hosts.get(&i.target_id).map(|h| (i.target_id.clone(), h.clone(), i.wave)))
                .collect(),
            note: None,
        }),
        _ => super::rollout::plan_view(st, &d, &[], &hosts).await?,
    };
    // late targets: the selector matches them, the deployment has none of their work
    let mut not_included = Vec::new();
    if q.late == Some(true) && total > 0 {
        // in scope: the selector matches them (and, with picked targets, they were picked)
        let instrs = st.store.list_instructions(id).await?;
        let planned: std::collections::BTreeSet<&str> = instrs.iter().map(|i| i.target_id.as_str()).collect();
        for t in super::rollout::in_scope(st, &d).await? {
            if !planned.contains(t.id.as_str()) {
                not_included.push(format!("{} ({})", t.hostname, t.id));
            }
        }
        not_included.sort();
    }
    let by: Vec<(S, u32)> = counts.iter().map(|c| (c.2, c.3)).collect();
    let mut deployment = super::info_counted(&d, &by);
    deployment.paused_by = st.store.paused_by(id).await?;
    Ok(DeploymentDetail {
        deployment,
        instructions: out,
        events,
        changes,
        approvals,
        checks,
        plan,
        not_included,
        states: by_state,
        waves: by_wave.into_values().collect(),
        matching,
        next,
    })
}

/// The failed or canceled targets of a finished deployment (all, or those
/// named by id or hostname) stage and go live again with a new attempt;
/// healthy targets are untouched. Audited, with the reason.
pub async fn retry(st: &AppState, user: &User, id: &str, req: convoy_wire::RetryRequest) -> AppResult<DeploymentInfo> {
    let r = retry_unaudited(st, user, id, req).await;
    audited(st, user, "retry", id, r).await
}

/// An operator's rollback: targets still on the deployment's release go
/// back to the release they had; those a later deployment moved on are
/// left alone (`superseded`) and named. A first install needs `uninstall`.
pub async fn rollback(
    st: &AppState,
    user: &User,
    id: &str,
    reason: &str,
    uninstall: bool,
) -> AppResult<DeploymentInfo> {
    let reason: String = reason.chars().take(1024).collect();
    let r = rollback_unaudited(st, user, id, &reason, uninstall).await;
    audited(st, user, "rollback", id, r).await
}

async fn retry_unaudited(
    st: &AppState,
    user: &User,
    id: &str,
    req: convoy_wire::RetryRequest,
) -> AppResult<DeploymentInfo> {
    need_role(user, Role::Deployer, "retrying")?;
    if req.targets.len() > 10_000 || req.note.len() > 1024 {
        return Err(AppError::bad_request("at most 10000 targets and a reason of 1024 bytes"));
    }
    let d = find(st, id).await?;
    if !matches!(d.state, D::Succeeded | D::Failed | D::Halted) {
        return Err(AppError::conflict(format!(
            "{id} is {}; only a finished deployment (succeeded, failed or halted) is retried; {}",
            d.state.as_str(),
            if d.state.is_settled() { "deploy the release again" } else { "wait for it to finish" }
        )));
    }
    let instrs = st.store.list_instructions(id).await?;
    let all = st.store.list_target_labels().await?;
    let host: BTreeMap<&str, &str> = all.iter().map(|t| (t.id.as_str(), t.hostname.as_str())).collect();
    let named = |i: &InstructionRecord| {
        req.targets.is_empty()
            || req.targets.iter().any(|t| *t == i.target_id || host.get(i.target_id.as_str()) == Some(&t.as_str()))
    };
    if let Some(t) = req
        .targets
        .iter()
        .find(|t| !instrs.iter().any(|i| i.target_id == **t || host.get(i.target_id.as_str()) == Some(&t.as_str())))
    {
        return Err(AppError::bad_request(format!("{t} is not a target of {id}")));
    }
    let again: Vec<&InstructionRecord> = instrs
        .iter()
        .filter(|i| {
            // failed: it failed, or failed and switched back (rolled_back)
            matches!(i.state, S::Failed | S::Canceled | S::RolledBack)
                && named(i)
                && host.contains_key(i.target_id.as_str())
        })
        .collect();
    if again.is_empty() {
        return Err(AppError::conflict(format!("{id} has no failed or canceled target (of those named) to retry")));
    }
    // never over a later deployment's release, never beside unfinished work
    let later = moved_on(st, &d).await?;
    if let Some(i) = again.iter().find(|i| later.contains_key(&i.target_id)) {
        return Err(AppError::conflict(format!(
            "target {} has since been moved on by {}; retry that one instead",
            i.target_id, later[&i.target_id].0
        )));
    }
    let busy = st.store.busy_targets(&d.app).await?;
    if let Some(i) = again.iter().find(|i| busy.contains(&i.target_id)) {
        return Err(AppError::conflict(format!("target {} is in an unfinished deployment of {}", i.target_id, d.app)));
    }
    let now = now_ms();
    let actor = user.actor();
    let names: Vec<String> =
        again.iter().map(|i| host.get(i.target_id.as_str()).copied().unwrap_or("?").to_owned()).collect();
    let why = if req.note.trim().is_empty() { String::new() } else { format!(": {}", req.note) };
    let note =
        format!("retry of {} by {}{why}: {}", convoy_domain::targets(again.len() as u64), user.name, names.join(", "));
    // the deployment reopens first (so nothing is left pending under a
    // settled deployment), then each retried target gets a new attempt
    // the failures not retried are accepted: they count neither against a
    // wave's budget nor as a wave that failed entirely
    let rules = Rules::of(&d)?;
    let mut plan = if rules.plan.is_empty() {
        vec![convoy_domain::WavePlan {
            wave: 1,
            targets: instrs.len() as u32,
            at: None,
            budget: d.max_failures,
            accepted: 0,
        }]
    } else {
        rules.plan.clone()
    };
    let retried: std::collections::BTreeSet<&str> = again.iter().map(|i| i.id.as_str()).collect();
    let last = plan.len() as u32;
    for w in plan.iter_mut() {
        w.accepted = instrs
            .iter()
            .filter(|i| i.wave.clamp(1, last) == w.wave)
            .filter(|i| matches!(i.state, S::Failed | S::RolledBack) && !retried.contains(i.id.as_str()))
            .count() as u32;
    }
    let plan_json = serde_json::to_string(&plan).map_err(AppError::internal)?;
    let m = DeploymentMove {
        wave: Some(0),
        plan_json: Some(&plan_json),
        ..DeploymentMove::new(d.state, D::Staging, &note, &actor, now)
    };
    if !st.store.transition_deployment(id, &m).await? {
        return Err(AppError::conflict(format!("deployment {id} changed state meanwhile; try again")));
    }
    for i in &again {
        let up = InstructionUpdate {
            to: Some(S::Created),
            attempt: Some(i.attempt + 1),
            note: format!("retry (attempt {}){why}", i.attempt + 1),
            ..Default::default()
        };
        st.store.transition_instruction(&i.id, i.state, i.attempt, &up, &actor, now).await?;
    }
    tracing::info!(deployment = %id, user = %user.name, targets = again.len(), "retry");
    st.changed(again.iter().map(|i| i.target_id.as_str()));
    let instrs = st.store.list_instructions(id).await?;
    Ok(info(&find(st, id).await?, &instrs))
}

/// A paused deployment starts no new wave; staging goes on, and a wave
/// already going live finishes.
pub async fn pause(st: &AppState, user: &User, id: &str, reason: &str) -> AppResult<DeploymentInfo> {
    let r = pause_or_resume(st, user, id, reason, true).await;
    audited(st, user, "pause", id, r).await
}

/// Lifts a pause; a deployment a breach halted (policy `pause`) goes on
/// with its next wave, its failures accepted.
pub async fn resume(st: &AppState, user: &User, id: &str, reason: &str) -> AppResult<DeploymentInfo> {
    let r = pause_or_resume(st, user, id, reason, false).await;
    audited(st, user, "resume", id, r).await
}

async fn pause_or_resume(
    st: &AppState,
    user: &User,
    id: &str,
    reason: &str,
    pausing: bool,
) -> AppResult<DeploymentInfo> {
    let reason: String = reason.chars().take(1024).collect();
    let what = if pausing { "pause" } else { "resume" };
    need_role(user, Role::Deployer, what)?;
    let d = find(st, id).await?;
    let why = if reason.trim().is_empty() { String::new() } else { format!(": {reason}") };
    if !pausing && d.state == D::Halted {
        return resume_halted(st, user, &d, &why).await;
    }
    let ev = convoy_store::EventRecord {
        deployment_id: id.to_owned(),
        ..convoy_store::EventRecord::audit(
            &user.actor(),
            if pausing { "paused" } else { "resumed" },
            format!("{} by {}{why}", if pausing { "paused" } else { "resumed" }, user.name),
            now_ms(),
        )
    };
    let done = if pausing { st.store.pause(id, &user.name, &ev).await? } else { st.store.resume(id, &ev).await? };
    if !done {
        return Err(AppError::conflict(if pausing {
            format!("{id} is {} or already paused; only a deployment under way can be paused", d.state.as_str())
        } else {
            format!("{id} is not paused")
        }));
    }
    tracing::info!(deployment = %id, user = %user.name, "{what}d");
    if pausing && d.state == D::Scheduled {
        hold_back_planned_wave(st, user, &d).await?;
    }
    st.wake.notify_one();
    let instrs = st.store.list_instructions(id).await?;
    let mut out = info(&find(st, id).await?, &instrs);
    out.paused_by = st.store.paused_by(id).await?;
    Ok(out)
}

/// A pause of a deployment whose next wave is planned to go live later:
/// the wave is held back (its activations become staged again; agents
/// re-check with the server before switching), so nothing goes live until
/// it is resumed. A wave about to go live (within 5 s) is not held back.
async fn hold_back_planned_wave(st: &AppState, user: &User, d: &DeploymentRecord) -> AppResult<()> {
    let now = now_ms();
    if d.go_live_at.is_none_or(|t| t <= now + 5_000) {
        return Err(AppError::conflict(format!(
            "{} is paused, but wave {} is going live now; `convoy rollback {}` stops it",
            d.id, d.wave, d.id
        )));
    }
    let bulk = [convoy_store::BulkMove {
        from: vec![S::Activating],
        to: S::Staged,
        go_live_at: None,
        note: "held back: the deployment was paused before this wave's go-live".into(),
        waves: convoy_store::WaveFilter::Only(d.wave),
    }];
    let to = if d.wave <= 1 { D::Staging } else { D::Activating };
    let note = format!("paused by {} before wave {} went live; it waits for resume", user.name, d.wave);
    let actor = user.actor();
    let m = DeploymentMove {
        bulk: &bulk,
        from_wave: Some(d.wave),
        wave: Some(d.wave.saturating_sub(1)),
        ..DeploymentMove::new(D::Scheduled, to, &note, &actor, now)
    };
    if !st.store.transition_deployment(&d.id, &m).await? {
        return Err(AppError::conflict(format!("{} is paused, but its wave moved meanwhile; look again", d.id)));
    }
    let instrs = st.store.list_instructions(&d.id).await?;
    st.changed(instrs.iter().map(|i| i.target_id.as_str()));
    Ok(())
}

/// Resume of a deployment a breach halted: the next wave goes live.
async fn resume_halted(st: &AppState, user: &User, d: &DeploymentRecord, why: &str) -> AppResult<DeploymentInfo> {
    let rules = Rules::of(d)?;
    let instrs = st.store.list_instructions(&d.id).await?;
    let waves = tallies(&rules.plan, &instrs);
    let now = now_ms();
    let view = super::schedule::view(d, &rules);
    let step = resume_after_breach(&view, &waves, now)
        .map_err(|m| AppError::conflict(format!("cannot resume {}: {m}", d.id)))?;
    let bulk = bulk_for(step.action, &step.note);
    let (wave, go_live_at) = match step.action {
        InstrAction::ActivateWave { wave, at } => (Some(wave), Some(at)),
        _ => (None, None),
    };
    let note = format!("{} (by {}{why})", step.note, user.name);
    let actor = user.actor();
    let m = DeploymentMove {
        bulk: &bulk,
        from_wave: Some(d.wave),
        wave,
        go_live_at,
        ..DeploymentMove::new(d.state, step.to, &note, &actor, now)
    };
    if !st.store.transition_deployment(&d.id, &m).await? {
        return Err(AppError::conflict(format!("deployment {} changed state meanwhile; try again", d.id)));
    }
    tracing::info!(deployment = %d.id, user = %user.name, "resumed after a breach");
    st.changed(instrs.iter().map(|i| i.target_id.as_str()));
    st.wake.notify_one();
    let instrs = st.store.list_instructions(&d.id).await?;
    Ok(info(&find(st, &d.id).await?, &instrs))
}

/// Targets of `d` that a later deployment of the same app went live on
/// (or is going live on): target → (that deployment, its version).
async fn moved_on(st: &AppState, d: &DeploymentRecord) -> AppResult<BTreeMap<String, (String, String)>> {
    let mut out = BTreeMap::new();
    // newest first: the newest deployment that moved a target names it
    for later in st.store.list_deployments(1000).await? {
        if later.id == d.id || later.app != d.app || later.created_at < d.created_at || later.state.is_request() {
            continue;
        }
        if later.created_at == d.created_at && later.id < d.id {
            continue;
        }
        for i in st.store.list_instructions(&later.id).await? {
            if matches!(i.state, S::Succeeded | S::Activating) {
                out.entry(i.target_id).or_insert_with(|| (later.id.clone(), later.version.clone()));
            }
        }
    }
    Ok(out)
}

async fn rollback_unaudited(
    st: &AppState,
    user: &User,
    id: &str,
    reason: &str,
    uninstall: bool,
) -> AppResult<DeploymentInfo> {
    need_role(user, Role::Deployer, "rolling back")?;
    let d = find(st, id).await?;
    // a request has nothing to roll back: it is canceled, by its requester or an admin
    if d.state.is_request() {
        return super::requests::cancel_unaudited(st, user, id, reason).await;
    }
    roll_back_deployment(st, user, d, reason, uninstall).await
}

/// Rolls back (or, before go-live, cancels) a deployment that is no request.
pub(super) async fn roll_back_deployment(
    st: &AppState,
    user: &User,
    d: DeploymentRecord,
    reason: &str,
    uninstall: bool,
) -> AppResult<DeploymentInfo> {
    let (st, id) = (st.clone(), d.id.clone());
    let now = now_ms();
    let instrs = st.store.list_instructions(&id).await?;
    // may a target have switched? one went live, or its go-live passed
    let switched = |i: &InstructionRecord| {
        i.state == S::Succeeded || (i.state == S::Activating && i.go_live_at.is_none_or(|t| t <= now))
    };
    let step = request_rollback(d.state, instrs.iter().any(switched))
        .map_err(|m| AppError::conflict(format!("cannot roll back {id}: {m}")))?;
    let actor = user.actor();
    // targets a later deployment moved on are left alone; removed targets
    // can roll nothing back; the rest go back. Every refusal comes before
    // anything is written.
    let (mut removed, mut gone, mut back): (Vec<&InstructionRecord>, Vec<&InstructionRecord>, Vec<&InstructionRecord>) =
        Default::default();
    let later = if step.action == InstrAction::RollBackLive { moved_on(&st, &d).await? } else { BTreeMap::new() };
    if step.action == InstrAction::RollBackLive {
        for i in instrs.iter().filter(|i| matches!(i.state, S::Succeeded | S::Activating)) {
            if st.store.get_target(&i.target_id).await?.is_none() {
                removed.push(i);
            } else if later.contains_key(&i.target_id) {
                gone.push(i);
            } else {
                back.push(i);
            }
        }
        if back.is_empty() && !gone.is_empty() {
            let (newer, _) = &later[&gone[0].target_id];
            return Err(AppError::conflict(format!(
                "cannot roll back {id}: every target it went live on has since been moved on by {newer}; roll that one back instead"
            )));
        }
        let first: Vec<&str> =
            back.iter().filter(|i| i.previous_version.is_none() && switched(i)).map(|i| i.target_id.as_str()).collect();
        if !first.is_empty() && !uninstall {
            return Err(AppError::conflict(format!(
                "cannot roll back {id}: it was the first install of {} on {} target(s) ({}); rolling back would stop it and remove it: pass --uninstall to do that",
                d.app,
                first.len(),
                first.join(", ")
            )));
        }
    }
    for i in removed {
        // rather than leaving the rollback waiting for ever
        let up = InstructionUpdate {
            to: Some(S::Failed),
            note: format!("target {} was removed; nothing to roll back", i.target_id),
            ..Default::default()
        };
        st.store.transition_instruction(&i.id, i.state, i.attempt, &up, &actor, now).await?;
    }
    let mut left = Vec::new();
    for i in gone {
        let (newer, version) = &later[&i.target_id];
        let up = InstructionUpdate {
            to: Some(S::Superseded),
            note: format!("left alone: {newer} moved it on to {}@{version}", d.app),
            ..Default::default()
        };
        if st.store.transition_instruction(&i.id, i.state, i.attempt, &up, &actor, now).await? {
            left.push(format!("{} ({newer})", i.target_id));
        }
    }
    let bulk = bulk_for(step.action, "rollback requested by operator");
    let left = if left.is_empty() {
        String::new()
    } else {
        format!("; left alone, moved on by later deployments: {}", left.join(", "))
    };
    let note = if reason.trim().is_empty() {
        format!("{} (by {}){left}", step.note, user.name)
    } else {
        format!("{} (by {}: {reason}){left}", step.note, user.name)
    };
    let m = DeploymentMove { bulk: &bulk, ..DeploymentMove::new(d.state, step.to, &note, &actor, now) };
    let moved = st.store.transition_deployment(&id, &m).await?;
    if !moved {
        return Err(AppError::conflict(format!("deployment {id} changed state meanwhile; try again")));
    }
    tracing::info!(deployment = %id, user = %user.name, "rollback requested");
    let instrs = st.store.list_instructions(&id).await?;
    st.changed(instrs.iter().map(|i| i.target_id.as_str()));
    let d = find(&st, &id).await?;
    Ok(info(&d, &instrs))
}
