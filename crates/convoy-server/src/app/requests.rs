//! The request half of a deployment (P-request, P-approval, P-confirm):
//! submit, approve, reject, confirm, cancel, change, the inbox. Each step
//! reads the environment's policy as it is now, asks the domain's request
//! machine (`convoy_domain::request_step`) what follows, and writes it with
//! a compare-and-set on the request's revision. Refused attempts are
//! audited (actor, action, why).

use convoy_domain::{
    check_go_live, request_step, AppName, DeploymentState as D, Policy, RequestEvent, RequestStep, Role, Selector,
    Version,
};
use convoy_store::{new_id, ApprovalRecord, DeploymentMove, DeploymentRecord, InstructionRecord};
use convoy_wire::{DeployRequest, DeploymentInfo, RequestInfo, ReviseRequest};

use super::rollout::{
    in_scope, instruction, pick, policy_of, prepare_deltas, refuse_busy, request_rules, start_preflight, start_rollout,
    under_current_policy,
};
use super::{audited, info, need_role, AppError, AppResult};
use crate::auth::User;
use crate::state::{now_ms, AppState};

/// How long after go-live a target may stay silent, unless the request says.
const DEFAULT_ACTIVATE_TIMEOUT_SECS: u64 = 900;

/// How far in the past a go-live time may be (clock skew, typing time).
const PAST_GRACE_MS: i64 = 60_000;

pub async fn approve(st: &AppState, user: &User, id: &str, d: &convoy_wire::Decision) -> AppResult<DeploymentInfo> {
    let r = approve_unaudited(st, user, id, d).await;
    audited(st, user, "approve", id, r).await
}

pub async fn reject(st: &AppState, user: &User, id: &str, note: &str) -> AppResult<DeploymentInfo> {
    if note.trim().is_empty() {
        return Err(AppError::bad_request("a rejection needs a note saying why (--note)"));
    }
    let r = reject_unaudited(st, user, id, note).await;
    audited(st, user, "reject", id, r).await
}

pub async fn confirm(st: &AppState, user: &User, id: &str) -> AppResult<DeploymentInfo> {
    let r = confirm_unaudited(st, user, id).await;
    audited(st, user, "confirm", id, r).await
}

pub async fn cancel(st: &AppState, user: &User, id: &str, reason: &str) -> AppResult<DeploymentInfo> {
    let r = cancel_unaudited(st, user, id, reason).await;
    audited(st, user, "cancel", id, r).await
}

/// Validates and records a deployment request: at once as a deployment
/// without an environment, or as a request that goes through the
/// environment's approvals, preflight and confirmation.
pub async fn submit(st: &AppState, user: &User, req: DeployRequest) -> AppResult<DeploymentInfo> {
    let app = AppName::parse(&req.app).map_err(|e| AppError::bad_request(e.to_string()))?;
    let version = Version::parse(&req.version).map_err(|e| AppError::bad_request(e.to_string()))?;
    let selector = Selector::parse(&req.selector).map_err(|e| AppError::bad_request(e.to_string()))?;
    if req.reason.len() > 1024 {
        return Err(AppError::bad_request("reason must be at most 1024 bytes"));
    }
    let now = now_ms();
    if let Some(at) = req.at {
        if at < now - PAST_GRACE_MS {
            return Err(AppError::bad_request(format!(
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
            return Err(AppError::bad_request(format!("{what} must be between 1 and {max}")));
        }
    }
    let env = match &req.env {
        // without an environment nothing is approved: only admins may
        None if user.role < convoy_domain::Role::Admin => {
            return Err(AppError::forbidden(format!(
                "{} ({}) deploys through an environment: add --env NAME (deployments without one need the admin role)",
                user.name, user.role
            )))
        }
        None => None,
        Some(name) => {
            let rec = st.store.get_env(name).await?.ok_or_else(|| {
                AppError::not_found(format!(
                    "environment {name:?} not found; an admin creates it with `convoy env set {name}`"
                ))
            })?;
            let policy: Policy = serde_json::from_str(&rec.policy_json).map_err(AppError::internal)?;
            Some((rec.name, policy))
        }
    };
    let release = st
        .store
        .get_release(app.as_str(), version.as_str())
        .await?
        .ok_or_else(|| AppError::not_found(format!("release {app}@{version} not found; publish it first")))?;
    if let Some(plan) = &req.plan {
        plan.check().map_err(AppError::bad_request)?;
    }
    let picked = pick(st, &req.targets, &selector).await?;
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
        note: String::new(),
        env: None,
        reason: req.reason.clone(),
        policy_json: String::new(),
        plan_json: String::new(),
        wave: 0,
        revision: 0,
        expires_at: None,
        targets: picked.join(","),
        plan_name: req.plan.as_ref().map(|p| p.name.clone()).unwrap_or_default(),
        plan_entry: req.plan.as_ref().map(|p| p.entry.clone()).unwrap_or_default(),
        plan_digest: req.plan.as_ref().map(|p| p.digest.clone()).unwrap_or_default(),
    };
    let started = std::time::Instant::now();
    let chosen = in_scope(st, &dep).await?;
    let scope_ms = started.elapsed().as_millis() as u64;
    if chosen.is_empty() {
        return Err(AppError::bad_request(format!("selector {:?} matches no enrolled target", req.selector)));
    }
    refuse_busy(st, app.as_str(), &chosen).await?;
    dep.note = format!("staging {app}@{version} to {}", convoy_domain::targets(chosen.len() as u64));
    if !picked.is_empty() {
        let hosts: Vec<&str> = chosen.iter().map(|t| t.hostname.as_str()).collect();
        dep.note = format!("{} picked: {}", dep.note, hosts.join(", "));
    }
    let Some((env, policy)) = env else {
        let instrs: Vec<InstructionRecord> = chosen.iter().map(|t| instruction(&dep, t, 1, None, now)).collect();
        let written = std::time::Instant::now();
        st.store.create_deployment(&dep, &instrs, &user.actor()).await?;
        let write_ms = written.elapsed().as_millis() as u64;
        tracing::info!(deployment = %dep.id, app = %app, version = %version, targets = instrs.len(), scope_ms, write_ms, total_ms = started.elapsed().as_millis() as u64, "deployment created");
        st.changed(instrs.iter().map(|i| i.target_id.as_str()));
        prepare_deltas(st, &dep, &instrs);
        return Ok(info(&dep, &instrs));
    };
    let windows = policy.validate().map_err(AppError::internal)?;
    let (at, moved) = check_go_live(&policy, &windows, req.at).map_err(|e| AppError::bad_request(e.0))?;
    dep.go_live_at = at;
    dep.env = Some(env.clone());
    dep.policy_json = serde_json::to_string(&policy).map_err(AppError::internal)?;
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
    if let RequestStep::StartPreflight { note } =
        request_step(dep.state, &RequestEvent::Submitted, &request_rules(&policy))
    {
        start_preflight(st, &dep, &note, &user.actor()).await?;
    } else {
        crate::notify::send(st, &policy, "approval_requested", &dep, &user.actor(), &req.reason);
    }
    let dep = super::find(st, &dep.id).await?;
    Ok(info(&dep, &[]))
}

/// Changes a request before it is staged. Approvals given so far no longer
/// count: it goes back to awaiting approval (or straight to preflight in an
/// environment that needs none).
pub async fn revise(st: &AppState, user: &User, id: &str, r: ReviseRequest) -> AppResult<DeploymentInfo> {
    let res = revise_unaudited(st, user, id, r).await;
    audited(st, user, "change", id, res).await
}

/// The request, under its environment's policy as it is now.
async fn find(st: &AppState, id: &str) -> AppResult<DeploymentRecord> {
    let d = st.store.get_deployment(id).await?.ok_or_else(|| AppError::not_found(format!("request {id} not found")))?;
    under_current_policy(st, d).await
}

async fn current(st: &AppState, id: &str) -> AppResult<DeploymentInfo> {
    let d = find(st, id).await?;
    let instrs = st.store.list_instructions(id).await?;
    Ok(info(&d, &instrs))
}

/// Approvals of the request's current revision.
async fn approvals_now(st: &AppState, d: &DeploymentRecord) -> AppResult<Vec<ApprovalRecord>> {
    Ok(st.store.list_approvals(&d.id).await?.into_iter().filter(|a| a.revision == d.revision).collect())
}

fn may_decide(d: &DeploymentRecord, user: &User, needed: Role) -> AppResult<()> {
    if user.name == d.created_by {
        return Err(AppError::forbidden("a requester can never approve or reject their own request"));
    }
    if user.role < needed {
        return Err(AppError::forbidden(format!(
            "approving requests in {} needs the {needed} role or higher; {} is {}",
            d.env.as_deref().unwrap_or("this environment"),
            user.name,
            user.role
        )));
    }
    if d.state != D::AwaitingApproval {
        return Err(AppError::conflict(format!("request {} is {}, not awaiting approval", d.id, d.state.as_str())));
    }
    Ok(())
}

async fn approve_unaudited(
    st: &AppState,
    user: &User,
    id: &str,
    decision: &convoy_wire::Decision,
) -> AppResult<DeploymentInfo> {
    let (st, id) = (st.clone(), id.to_owned());
    let user = user.clone();
    let d = find(&st, &id).await?;
    let (policy, _) = policy_of(&d)?;
    may_decide(&d, &user, policy.approver_role)?;
    if d.state != D::AwaitingApproval {
        return Err(AppError::conflict(format!("not awaiting approval: the request is {}", d.state.as_str())));
    }
    let signed = match (&decision.statement, &decision.signature) {
        (Some(s), Some(sig)) => super::approvals::check(&st, &user, &d, Some((s, sig))).await?,
        (None, None) => super::approvals::check(&st, &user, &d, None).await?,
        _ => return Err(AppError::bad_request("a signed approval gives both the statement and the signature")),
    };
    let rec = ApprovalRecord {
        deployment_id: id.clone(),
        revision: d.revision,
        approver: user.name.clone(),
        decision: "approve".into(),
        note: decision.note.chars().take(1024).collect(),
        at: now_ms(),
        signed,
    };
    if !st.store.add_approval(&rec, D::AwaitingApproval, &user.actor()).await? {
        return Err(AppError::conflict(format!(
            "{} already decided on this request (revision {}), or it changed meanwhile; each approver counts once",
            user.name, d.revision
        )));
    }
    let have = approvals_now(&st, &d).await?.iter().filter(|a| a.decision == "approve").count() as u32;
    tracing::info!(deployment = %id, approver = %user.name, have, need = policy.approvals, "request approved");
    crate::notify::send(&st, &policy, "approved", &d, &user.actor(), &rec.note);
    if let RequestStep::StartPreflight { note } =
        request_step(d.state, &RequestEvent::Approved { given: have }, &request_rules(&policy))
    {
        start_preflight(&st, &d, &note, &user.actor()).await?;
    }
    current(&st, &id).await
}

async fn reject_unaudited(st: &AppState, user: &User, id: &str, note: &str) -> AppResult<DeploymentInfo> {
    let (st, id) = (st.clone(), id.to_owned());
    let user = user.clone();
    let d = find(&st, &id).await?;
    let (policy, _) = policy_of(&d)?;
    may_decide(&d, &user, policy.approver_role)?;
    let now = now_ms();
    let note: String = note.chars().take(1024).collect();
    let rec = ApprovalRecord {
        deployment_id: id.clone(),
        revision: d.revision,
        approver: user.name.clone(),
        decision: "reject".into(),
        note: note.clone(),
        at: now,
        signed: String::new(),
    };
    if !st.store.add_approval(&rec, D::AwaitingApproval, &user.actor()).await? {
        return Err(AppError::conflict(format!("{} already decided on this request", user.name)));
    }
    let why = format!("rejected by {}: {note}", user.name);
    end(&st, &d, D::Rejected, &why, &user, "rejected", &note).await
}

/// Ends a request (rejected, canceled) if it is still as the caller saw it,
/// tells the environment's webhook, and answers with what it is now.
async fn end(
    st: &AppState,
    d: &DeploymentRecord,
    to: D,
    why: &str,
    user: &User,
    event: &str,
    note: &str,
) -> AppResult<DeploymentInfo> {
    let actor = user.actor();
    let m =
        DeploymentMove { from_revision: Some(d.revision), ..DeploymentMove::new(d.state, to, why, &actor, now_ms()) };
    if !st.store.transition_deployment(&d.id, &m).await? {
        return Err(AppError::conflict(format!("request {} changed meanwhile; look again", d.id)));
    }
    let (policy, _) = policy_of(d)?;
    crate::notify::send(st, &policy, event, d, &actor, note);
    current(st, &d.id).await
}

/// Whether `user` may confirm `d`: its requester, or a user with the role
/// the environment names.
fn may_confirm(d: &DeploymentRecord, user: &User) -> AppResult<()> {
    if user.name == d.created_by {
        return Ok(());
    }
    let (policy, _) = policy_of(d)?;
    match policy.confirm_role {
        Some(r) if user.role >= r => Ok(()),
        Some(r) => Err(AppError::forbidden(format!(
            "only the requester ({}) or someone with the {r} role or above confirms this request; {} is {}",
            d.created_by, user.name, user.role
        ))),
        None => Err(AppError::forbidden(format!(
            "only the requester ({}) confirms this request (the environment names no other role)",
            d.created_by
        ))),
    }
}

async fn confirm_unaudited(st: &AppState, user: &User, id: &str) -> AppResult<DeploymentInfo> {
    let (st, id) = (st.clone(), id.to_owned());
    need_role(user, Role::Deployer, "confirming")?;
    let d = find(&st, &id).await?;
    may_confirm(&d, user)?;
    let (policy, _) = policy_of(&d)?;
    if let RequestStep::Refuse(why) = request_step(d.state, &RequestEvent::Confirmed, &request_rules(&policy)) {
        return Err(AppError::conflict(format!("cannot confirm {id}: {why}")));
    }
    if d.expires_at.is_some_and(|t| now_ms() >= t) {
        return Err(AppError::conflict(format!("request {id} expired before it was confirmed; request it again")));
    }
    let note = format!("confirmed by {}", user.name);
    if !start_rollout(&st, &d, &user.actor(), &note).await? {
        return Err(AppError::conflict(format!("request {id} changed meanwhile; look again")));
    }
    crate::notify::send(&st, &policy, "confirmed", &d, &user.actor(), "");
    current(&st, &id).await
}

pub(super) async fn cancel_unaudited(st: &AppState, user: &User, id: &str, reason: &str) -> AppResult<DeploymentInfo> {
    need_role(user, Role::Deployer, "canceling")?;
    let reason: String = reason.chars().take(1024).collect();
    let why = if reason.trim().is_empty() {
        format!("canceled by {}", user.name)
    } else {
        format!("canceled by {}: {reason}", user.name)
    };
    // the scheduler may move the request (preflight, confirmation) while we
    // look: cancel it in whichever request state it is now
    for _ in 0..5 {
        let d = find(st, id).await?;
        if user.name != d.created_by && user.role < Role::Admin {
            return Err(AppError::forbidden(format!(
                "only the requester ({}) or an admin may cancel this request",
                d.created_by
            )));
        }
        // under way: before anything went live the transfers stop and nothing
        // switches (what went live, after a retry, is rolled back)
        if matches!(d.state, D::Staging | D::Scheduled) {
            return super::operations::roll_back_deployment(st, user, d, &reason, false).await;
        }
        let (policy, _) = policy_of(&d)?;
        let to = match request_step(d.state, &RequestEvent::Canceled, &request_rules(&policy)) {
            RequestStep::Move { to, .. } => to,
            _ => {
                return Err(AppError::conflict(format!(
                "{id} is {}; only a request or a deployment still staging can be canceled; use `convoy rollback {id}`",
                d.state.as_str()
            )))
            }
        };
        let actor = user.actor();
        let m = DeploymentMove {
            from_revision: Some(d.revision),
            ..DeploymentMove::new(d.state, to, &why, &actor, now_ms())
        };
        if st.store.transition_deployment(&d.id, &m).await? {
            crate::notify::send(st, &policy, "canceled", &d, &actor, &reason);
            return current(st, &d.id).await;
        }
    }
    Err(AppError::conflict(format!("request {id} keeps changing; look again")))
}

async fn revise_unaudited(st: &AppState, user: &User, id: &str, r: ReviseRequest) -> AppResult<DeploymentInfo> {
    let (st, id) = (st.clone(), id.to_owned());
    let user = user.clone();
    need_role(&user, Role::Deployer, "changing a request")?;
    let d = find(&st, &id).await?;
    if user.name != d.created_by && user.role < Role::Admin {
        return Err(AppError::forbidden("only the requester (or an admin) may change a request"));
    }
    if let RequestStep::Refuse(why) = request_step(d.state, &RequestEvent::Submitted, &request_rules(&policy_of(&d)?.0))
    {
        return Err(AppError::conflict(format!("cannot change {id}: {why}")));
    }
    let selector = match &r.selector {
        Some(s) => Selector::parse(s).map_err(|e| AppError::bad_request(e.to_string()))?.0.to_string(),
        None => d.selector.clone(),
    };
    let (policy, windows) = policy_of(&d)?;
    let at = if r.clear_at { None } else { r.at.or(d.go_live_at) };
    if let Some(t) = r.at {
        if t < now_ms() - 60_000 {
            return Err(AppError::bad_request("go-live time is in the past"));
        }
    }
    let (at, moved) = check_go_live(&policy, &windows, at).map_err(|e| AppError::bad_request(e.0))?;
    let reason = r.reason.clone().unwrap_or_else(|| d.reason.clone());
    if reason.len() > 1024 {
        return Err(AppError::bad_request("reason must be at most 1024 bytes"));
    }
    let voided = approvals_now(&st, &d).await?.len();
    // the audit keeps what changed, from what to what
    let mut diff = Vec::new();
    if selector != d.selector {
        diff.push(format!("selector {} -> {selector}", shown(&d.selector)));
    }
    if at != d.go_live_at {
        diff.push(format!("go-live {} -> {}", time_text(d.go_live_at), time_text(at)));
    }
    if reason != d.reason {
        diff.push(format!("reason {:?} -> {reason:?}", d.reason));
    }
    let note = format!(
        "changed by {}: {}; {voided} approval(s) voided{}",
        user.name,
        if diff.is_empty() { "nothing but the revision".to_owned() } else { diff.join("; ") },
        moved.map(|m| format!("; {m}")).unwrap_or_default()
    );
    let now = now_ms();
    if !st
        .store
        .revise_request(
            &id,
            d.state,
            d.revision,
            D::AwaitingApproval,
            &selector,
            at,
            &reason,
            &user.actor(),
            &note,
            now,
        )
        .await?
    {
        return Err(AppError::conflict(format!("request {id} changed meanwhile; look again")));
    }
    let d = find(&st, &id).await?;
    if let RequestStep::StartPreflight { note } =
        request_step(d.state, &RequestEvent::Submitted, &request_rules(&policy))
    {
        start_preflight(&st, &d, &note, &user.actor()).await?;
    } else {
        crate::notify::send(&st, &policy, "approval_requested", &d, &user.actor(), &note);
    }
    current(&st, &id).await
}

fn shown(selector: &str) -> &str {
    if selector.is_empty() {
        "(all)"
    } else {
        selector
    }
}

fn time_text(at: Option<i64>) -> String {
    match at.and_then(|t| jiff::Timestamp::from_millisecond(t).ok()) {
        Some(t) => t.to_string(),
        None => "as soon as staged".into(),
    }
}

/// Requests waiting for `user` (to approve or to confirm), or with `all`
/// every open request.
pub async fn inbox(st: &AppState, user: &User, all: bool) -> AppResult<Vec<RequestInfo>> {
    let mut out = Vec::new();
    for d in st.store.list_deployments(1000).await? {
        if !d.state.is_request() {
            continue;
        }
        let d = under_current_policy(st, d).await?;
        let (policy, _) = policy_of(&d)?;
        let approvals = approvals_now(st, &d).await?;
        let given = approvals.iter().filter(|a| a.decision == "approve").count() as u32;
        let waiting_for = match d.state {
            D::AwaitingApproval
                if user.role >= policy.approver_role
                    && user.name != d.created_by
                    && !approvals.iter().any(|a| a.approver == user.name) =>
            {
                "approve"
            }
            D::AwaitingConfirmation if user.role >= Role::Deployer && may_confirm(&d, user).is_ok() => "confirm",
            _ => "",
        };
        if waiting_for.is_empty() && !all {
            continue;
        }
        out.push(RequestInfo {
            deployment: info(&d, &[]),
            waiting_for: waiting_for.into(),
            approvals: given,
            approvals_needed: policy.approvals,
        });
    }
    Ok(out)
}
