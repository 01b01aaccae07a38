//! Users and their roles, environments and their policy, and the audit log.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use convoy_domain::{Policy, Role};
use convoy_store::{new_secret, AuditFilter, EnvRecord, EventRecord, TokenKind, TokenRecord, UserRecord};
use convoy_wire::{EnvInfo, EventInfo, NewUser, UserInfo};
use serde::Deserialize;

use crate::auth;
use crate::error::{ApiError, ApiResult};
use crate::state::{now_ms, AppState};

fn valid_name(what: &str, s: &str) -> ApiResult<()> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{what} {s:?} must be 1-64 characters of letters, digits, '-', '_', '.', '@', starting with a letter or digit"
        )))
    }
}

async fn audit_event(st: &AppState, actor: &str, what: &str, note: String) -> ApiResult<()> {
    st.store
        .append_event(&EventRecord {
            seq: 0,
            deployment_id: String::new(),
            instruction_id: None,
            from_state: String::new(),
            to_state: what.into(),
            actor: actor.into(),
            note,
            at: now_ms(),
        })
        .await?;
    Ok(())
}

fn user_info(u: UserRecord, token: Option<String>) -> UserInfo {
    UserInfo { name: u.name, role: u.role, created_by: u.created_by, created_at: u.created_at, token }
}

/// `POST /users` (admin): a new user and its API token, shown once.
pub async fn add_user(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<NewUser>, JsonRejection>,
) -> ApiResult<Json<UserInfo>> {
    let admin = auth::require(&st, &headers, Role::Admin).await?;
    let Json(n) = body?;
    valid_name("user name", &n.name)?;
    let role = Role::parse(&n.role).map_err(|e| ApiError::bad_request(e.0))?;
    if n.name == "admin" {
        return Err(ApiError::conflict("the name admin belongs to the first administrator"));
    }
    let now = now_ms();
    let secret = new_secret();
    let rec = UserRecord {
        name: n.name.clone(),
        role: role.as_str().into(),
        created_by: admin.name.clone(),
        created_at: now,
    };
    let tok = TokenRecord::new(&secret, TokenKind::User, &n.name, now);
    st.store.add_user(&rec, &tok).await?;
    audit_event(&st, &admin.actor(), "user_added", format!("{} as {role}", n.name)).await?;
    tracing::info!(user = %n.name, %role, by = %admin.name, "user added");
    Ok(Json(user_info(rec, Some(secret))))
}

pub async fn list_users(State(st): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Vec<UserInfo>>> {
    auth::require(&st, &headers, Role::Admin).await?;
    Ok(Json(st.store.list_users().await?.into_iter().map(|u| user_info(u, None)).collect()))
}

/// `DELETE /users/{name}` (admin): removes the user and revokes its token.
pub async fn remove_user(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let admin = auth::require(&st, &headers, Role::Admin).await?;
    if !st.store.remove_user(&name).await? {
        return Err(ApiError::not_found(format!("user {name} not found")));
    }
    audit_event(&st, &admin.actor(), "user_removed", name.clone()).await?;
    Ok(Json(serde_json::json!({ "removed": name })))
}

fn env_info(e: EnvRecord) -> ApiResult<EnvInfo> {
    Ok(EnvInfo {
        name: e.name,
        policy: serde_json::from_str(&e.policy_json).map_err(ApiError::internal)?,
        updated_by: e.updated_by,
        updated_at: e.updated_at,
    })
}

/// `PUT /envs/{name}` (admin): creates or replaces an environment's policy.
/// Requests already made keep the policy they were made under.
pub async fn put_env(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Json<Policy>, JsonRejection>,
) -> ApiResult<Json<EnvInfo>> {
    let admin = auth::require(&st, &headers, Role::Admin).await?;
    valid_name("environment name", &name)?;
    let Json(policy) = body?;
    policy.validate().map_err(|e| ApiError::bad_request(e.0))?;
    let json = serde_json::to_string(&policy).map_err(ApiError::internal)?;
    let rec = EnvRecord {
        name: name.clone(),
        policy_json: json.clone(),
        updated_by: admin.name.clone(),
        updated_at: now_ms(),
    };
    st.store.put_env(&rec).await?;
    audit_event(&st, &admin.actor(), "env_set", format!("{name}: {json}")).await?;
    Ok(Json(env_info(rec)?))
}

pub async fn get_env(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<EnvInfo>> {
    auth::require(&st, &headers, Role::Viewer).await?;
    let e =
        st.store.get_env(&name).await?.ok_or_else(|| ApiError::not_found(format!("environment {name} not found")))?;
    Ok(Json(env_info(e)?))
}

pub async fn list_envs(State(st): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Vec<EnvInfo>>> {
    auth::require(&st, &headers, Role::Viewer).await?;
    st.store.list_envs().await?.into_iter().map(env_info).collect::<ApiResult<Vec<_>>>().map(Json)
}

#[derive(Deserialize)]
pub struct AuditQuery {
    deployment: Option<String>,
    /// A user name (`alice`), or an actor as events name it
    /// (`user:alice`, `agent:t-…`, `scheduler`).
    actor: Option<String>,
    limit: Option<u32>,
}

/// `GET /audit`: every state change of requests, deployments and
/// instructions (and user/environment changes), newest first.
pub async fn audit(
    State(st): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<EventInfo>>> {
    auth::require(&st, &headers, Role::Viewer).await?;
    let Query(q) = q?;
    let actor = q.actor.filter(|a| !a.is_empty()).map(|a| crate::app::audit_actor(&a));
    let f = AuditFilter {
        deployment: q.deployment.filter(|d| !d.is_empty()),
        actor,
        limit: q.limit.unwrap_or(200).clamp(1, 10_000),
    };
    let events = st.store.audit(&f).await?;
    Ok(Json(events.into_iter().map(crate::app::event_info).collect()))
}

/// `POST /users/{name}/keys` (an admin, or the user for their own name;
/// audited): registers a public key for signed approvals.
pub async fn add_user_key(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> ApiResult<Json<convoy_wire::UserKeyInfo>> {
    let user = auth::require(&st, &headers, Role::Viewer).await?;
    let Json(key) = body?;
    Ok(Json(crate::app::approvals::add_key(&st, &user, &name, &key).await?))
}

/// `GET /users/{name}/keys`: a user's registered public keys.
pub async fn user_keys(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<convoy_wire::UserKeyInfo>>> {
    auth::require(&st, &headers, Role::Viewer).await?;
    Ok(Json(crate::app::approvals::keys(&st, Some(&name)).await?))
}

/// `GET /envs/{name}/approvers`: the keys and threshold the environment's
/// TUF approver role should name (`convoy trust approvers`).
pub async fn approvers(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<convoy_wire::ApproverKeys>> {
    auth::require(&st, &headers, Role::Viewer).await?;
    Ok(Json(crate::app::approvals::approver_keys(&st, &name).await?))
}
