//! People's part of a request (P-approval, P-confirm): the inbox, approve,
//! reject, confirm, cancel, and changing a request (which voids its
//! approvals).

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use convoy_domain::{check_go_live, DeploymentState as D, Role, Selector};
use convoy_store::{ApprovalRecord, DeploymentMove, DeploymentRecord};
use convoy_wire::{Decision, DeploymentInfo, RequestInfo, ReviseRequest};
use serde::Deserialize;

use crate::auth::{self, User};
use crate::error::{ApiError, ApiResult};
use crate::routes::deployments::info;
use crate::state::{now_ms, AppState};
use crate::workflow::{policy_of, start_preflight, start_rollout};

/// The request, under its environment's policy as it is now.
async fn find(st: &AppState, id: &str) -> ApiResult<DeploymentRecord> {
    let d = st.store.get_deployment(id).await?.ok_or_else(|| ApiError::not_found(format!("request {id} not found")))?;
    crate::workflow::under_current_policy(st, d).await
}

async fn current(st: &AppState, id: &str) -> ApiResult<Json<DeploymentInfo>> {
    let d = find(st, id).await?;
    let instrs = st.store.list_instructions(id).await?;
    Ok(Json(info(&d, &instrs)))
}

fn body_or_default(body: Result<Json<Decision>, JsonRejection>) -> ApiResult<Decision> {
    match body {
        Ok(Json(d)) => Ok(d),
        Err(JsonRejection::MissingJsonContentType(_)) => Ok(Decision::default()),
        Err(e) => Err(e.into()),
    }
}

/// Approvals of the request's current revision.
async fn approvals_now(st: &AppState, d: &DeploymentRecord) -> ApiResult<Vec<ApprovalRecord>> {
    Ok(st.store.list_approvals(&d.id).await?.into_iter().filter(|a| a.revision == d.revision).collect())
}

fn may_decide(d: &DeploymentRecord, user: &User, needed: Role) -> ApiResult<()> {
    if user.name == d.created_by {
        return Err(ApiError::forbidden("a requester can never approve or reject their own request"));
    }
    if user.role < needed {
        return Err(ApiError::forbidden(format!(
            "approving requests in {} needs the {needed} role or higher; {} is {}",
            d.env.as_deref().unwrap_or("this environment"),
            user.name,
            user.role
        )));
    }
    if d.state != D::AwaitingApproval {
        return Err(ApiError::conflict(format!("request {} is {}, not awaiting approval", d.id, d.state.as_str())));
    }
    Ok(())
}

/// Records a refused attempt (who, what, why) in the audit log of the
/// deployment it was about, and passes the refusal on.
pub(crate) async fn audit_refusal<T>(
    st: &AppState,
    user: &User,
    action: &str,
    id: &str,
    r: ApiResult<T>,
) -> ApiResult<T> {
    let Err(e) = r else { return r };
    if matches!(e.status.as_u16(), 403 | 409) && id.len() <= 64 && st.store.get_deployment(id).await?.is_some() {
        let ev = convoy_store::EventRecord {
            deployment_id: id.to_owned(),
            ..convoy_store::EventRecord::audit(
                &user.actor(),
                "refused",
                format!("{action} refused: {}", e.message),
                now_ms(),
            )
        };
        st.store.append_event(&ev).await?;
        tracing::info!(deployment = %id, user = %user.name, action, "refused: {}", e.message);
    }
    Err(e)
}

pub async fn approve(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<Decision>, JsonRejection>,
) -> ApiResult<Json<DeploymentInfo>> {
    let user = auth::require(&st, &headers, Role::Viewer).await?;
    let body = body_or_default(body)?;
    let r = approve_as(&st, &user, &id, body).await;
    audit_refusal(&st, &user, "approve", &id, r).await
}

async fn approve_as(st: &AppState, user: &User, id: &str, body: Decision) -> ApiResult<Json<DeploymentInfo>> {
    let (st, id) = (st.clone(), id.to_owned());
    let user = user.clone();
    let d = find(&st, &id).await?;
    let (policy, _) = policy_of(&d)?;
    may_decide(&d, &user, policy.approver_role)?;
    let rec = ApprovalRecord {
        deployment_id: id.clone(),
        revision: d.revision,
        approver: user.name.clone(),
        decision: "approve".into(),
        note: body.note.chars().take(1024).collect(),
        at: now_ms(),
    };
    if !st.store.add_approval(&rec, D::AwaitingApproval, &user.actor()).await? {
        return Err(ApiError::conflict(format!(
            "{} already decided on this request (revision {}), or it changed meanwhile; each approver counts once",
            user.name, d.revision
        )));
    }
    let have = approvals_now(&st, &d).await?.iter().filter(|a| a.decision == "approve").count() as u32;
    tracing::info!(deployment = %id, approver = %user.name, have, need = policy.approvals, "request approved");
    crate::notify::send(&st, &policy, "approved", &d, &user.actor(), &rec.note);
    if have >= policy.approvals {
        let note = format!("approved ({have} of {}); preflight", policy.approvals);
        start_preflight(&st, &d, &note, &user.actor()).await?;
    }
    current(&st, &id).await
}

pub async fn reject(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<Decision>, JsonRejection>,
) -> ApiResult<Json<DeploymentInfo>> {
    let user = auth::require(&st, &headers, Role::Viewer).await?;
    let body = body_or_default(body)?;
    if body.note.trim().is_empty() {
        return Err(ApiError::bad_request("a rejection needs a note saying why (--note)"));
    }
    let r = reject_as(&st, &user, &id, body).await;
    audit_refusal(&st, &user, "reject", &id, r).await
}

async fn reject_as(st: &AppState, user: &User, id: &str, body: Decision) -> ApiResult<Json<DeploymentInfo>> {
    let (st, id) = (st.clone(), id.to_owned());
    let user = user.clone();
    let d = find(&st, &id).await?;
    let (policy, _) = policy_of(&d)?;
    may_decide(&d, &user, policy.approver_role)?;
    let now = now_ms();
    let note: String = body.note.chars().take(1024).collect();
    let rec = ApprovalRecord {
        deployment_id: id.clone(),
        revision: d.revision,
        approver: user.name.clone(),
        decision: "reject".into(),
        note: note.clone(),
        at: now,
    };
    if !st.store.add_approval(&rec, D::AwaitingApproval, &user.actor()).await? {
        return Err(ApiError::conflict(format!("{} already decided on this request", user.name)));
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
) -> ApiResult<Json<DeploymentInfo>> {
    let actor = user.actor();
    let m =
        DeploymentMove { from_revision: Some(d.revision), ..DeploymentMove::new(d.state, to, why, &actor, now_ms()) };
    if !st.store.transition_deployment(&d.id, &m).await? {
        return Err(ApiError::conflict(format!("request {} changed meanwhile; look again", d.id)));
    }
    let (policy, _) = policy_of(d)?;
    crate::notify::send(st, &policy, event, d, &actor, note);
    current(st, &d.id).await
}

/// Whether `user` may confirm `d`: its requester, or a user with the role
/// the environment names.
fn may_confirm(d: &DeploymentRecord, user: &User) -> ApiResult<()> {
    if user.name == d.created_by {
        return Ok(());
    }
    let (policy, _) = policy_of(d)?;
    match policy.confirm_role {
        Some(r) if user.role >= r => Ok(()),
        Some(r) => Err(ApiError::forbidden(format!(
            "only the requester ({}) or someone with the {r} role or above confirms this request; {} is {}",
            d.created_by, user.name, user.role
        ))),
        None => Err(ApiError::forbidden(format!(
            "only the requester ({}) confirms this request (the environment names no other role)",
            d.created_by
        ))),
    }
}

pub async fn confirm(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<DeploymentInfo>> {
    let user = auth::require(&st, &headers, Role::Viewer).await?;
    let r = confirm_as(&st, &user, &id).await;
    audit_refusal(&st, &user, "confirm", &id, r).await
}

async fn confirm_as(st: &AppState, user: &User, id: &str) -> ApiResult<Json<DeploymentInfo>> {
    let (st, id) = (st.clone(), id.to_owned());
    if user.role < Role::Deployer {
        return Err(ApiError::forbidden(format!(
            "confirming needs the deployer role or higher; {} is {}",
            user.name, user.role
        )));
    }
    let d = find(&st, &id).await?;
    may_confirm(&d, user)?;
    if d.state != D::AwaitingConfirmation {
        return Err(ApiError::conflict(format!("request {id} is {}, not awaiting confirmation", d.state.as_str())));
    }
    if d.expires_at.is_some_and(|t| now_ms() >= t) {
        return Err(ApiError::conflict(format!("request {id} expired before it was confirmed; request it again")));
    }
    let note = format!("confirmed by {}", user.name);
    if !start_rollout(&st, &d, &user.actor(), &note).await? {
        return Err(ApiError::conflict(format!("request {id} changed meanwhile; look again")));
    }
    let (policy, _) = policy_of(&d)?;
    crate::notify::send(&st, &policy, "confirmed", &d, &user.actor(), "");
    current(&st, &id).await
}

pub async fn cancel(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<Decision>, JsonRejection>,
) -> ApiResult<Json<DeploymentInfo>> {
    let user = auth::require(&st, &headers, Role::Viewer).await?;
    let body = body_or_default(body)?;
    let r = cancel_as(&st, &user, &id, &body.note).await;
    audit_refusal(&st, &user, "cancel", &id, r).await
}

async fn cancel_as(st: &AppState, user: &User, id: &str, reason: &str) -> ApiResult<Json<DeploymentInfo>> {
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
            return Err(ApiError::forbidden(format!(
                "only the requester ({}) or an admin may cancel this request",
                d.created_by
            )));
        }
        if !d.state.is_request() {
            return Err(ApiError::conflict(format!(
                "{id} is {}; only a request (before staging) can be canceled; use `convoy rollback {id}`",
                d.state.as_str()
            )));
        }
        let actor = user.actor();
        let m = DeploymentMove {
            from_revision: Some(d.revision),
            ..DeploymentMove::new(d.state, D::Canceled, &why, &actor, now_ms())
        };
        if st.store.transition_deployment(&d.id, &m).await? {
            let (policy, _) = policy_of(&d)?;
            crate::notify::send(st, &policy, "canceled", &d, &actor, &reason);
            return current(st, &d.id).await;
        }
    }
    Err(ApiError::conflict(format!("request {id} keeps changing; look again")))
}

/// Changes a request before it is staged. Approvals given so far no longer
/// count: it goes back to awaiting approval (or straight to preflight in an
/// environment that needs none).
pub async fn revise(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<ReviseRequest>, JsonRejection>,
) -> ApiResult<Json<DeploymentInfo>> {
    let user = auth::require(&st, &headers, Role::Viewer).await?;
    let Json(r) = body?;
    let res = revise_as(&st, &user, &id, r).await;
    audit_refusal(&st, &user, "change", &id, res).await
}

async fn revise_as(st: &AppState, user: &User, id: &str, r: ReviseRequest) -> ApiResult<Json<DeploymentInfo>> {
    let (st, id) = (st.clone(), id.to_owned());
    let user = user.clone();
    if user.role < Role::Deployer {
        return Err(ApiError::forbidden(format!(
            "changing a request needs the deployer role or higher; {} is {}",
            user.name, user.role
        )));
    }
    let d = find(&st, &id).await?;
    if user.name != d.created_by && user.role < Role::Admin {
        return Err(ApiError::forbidden("only the requester (or an admin) may change a request"));
    }
    if !d.state.is_request() {
        return Err(ApiError::conflict(format!("{id} is {}; only a request can be changed", d.state.as_str())));
    }
    let selector = match &r.selector {
        Some(s) => Selector::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))?.0.to_string(),
        None => d.selector.clone(),
    };
    let (policy, windows) = policy_of(&d)?;
    let at = if r.clear_at { None } else { r.at.or(d.go_live_at) };
    if let Some(t) = r.at {
        if t < now_ms() - 60_000 {
            return Err(ApiError::bad_request("go-live time is in the past"));
        }
    }
    let (at, moved) = check_go_live(&policy, &windows, at).map_err(|e| ApiError::bad_request(e.0))?;
    let reason = r.reason.clone().unwrap_or_else(|| d.reason.clone());
    if reason.len() > 1024 {
        return Err(ApiError::bad_request("reason must be at most 1024 bytes"));
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
        return Err(ApiError::conflict(format!("request {id} changed meanwhile; look again")));
    }
    let d = find(&st, &id).await?;
    if policy.approvals == 0 {
        start_preflight(&st, &d, "no approval needed; preflight", &user.actor()).await?;
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

#[derive(Deserialize)]
pub struct InboxQuery {
    /// Every open request, not only those waiting for the caller.
    #[serde(default)]
    all: bool,
}

/// `GET /requests`: requests waiting for the caller (to approve or to
/// confirm), or with `all=true` every open request.
pub async fn inbox(
    State(st): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<InboxQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<RequestInfo>>> {
    let user = auth::require(&st, &headers, Role::Viewer).await?;
    let Query(q) = q?;
    let mut out = Vec::new();
    for d in st.store.list_deployments(1000).await? {
        if !d.state.is_request() {
            continue;
        }
        let d = crate::workflow::under_current_policy(&st, d).await?;
        let (policy, _) = policy_of(&d)?;
        let approvals = approvals_now(&st, &d).await?;
        let given = approvals.iter().filter(|a| a.decision == "approve").count() as u32;
        let waiting_for = match d.state {
            D::AwaitingApproval
                if user.role >= policy.approver_role
                    && user.name != d.created_by
                    && !approvals.iter().any(|a| a.approver == user.name) =>
            {
                "approve"
            }
            D::AwaitingConfirmation if user.role >= Role::Deployer && may_confirm(&d, &user).is_ok() => "confirm",
            _ => "",
        };
        if waiting_for.is_empty() && !q.all {
            continue;
        }
        out.push(RequestInfo {
            deployment: info(&d, &[]),
            waiting_for: waiting_for.into(),
            approvals: given,
            approvals_needed: policy.approvals,
        });
    }
    Ok(Json(out))
}
