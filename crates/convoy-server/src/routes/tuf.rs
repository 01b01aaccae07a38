//! `/tuf/metadata/{file}` and `/tuf/targets/{app}/{version}/{file}`: the
//! TUF repository (`app::tuf`) for agents and any TUF client (python-tuf's
//! `ngclient` among them). Readers: operators, agents, grant holders.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};

use crate::auth;
use crate::error::ApiResult;
use crate::state::AppState;

pub async fn metadata(State(st): State<AppState>, headers: HeaderMap, Path(file): Path<String>) -> ApiResult<Response> {
    auth::reader(&st, &headers).await?;
    let body = crate::app::tuf::metadata(&st, &file).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

pub async fn target(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path((app, version, file)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    auth::reader(&st, &headers).await?;
    let body = crate::app::tuf::target(&st, &app, &version, &file).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `PUT /tuf/root` (admin; audited): `{root, targets}`: a new root made
/// offline and the targets re-signed by its targets keys.
pub async fn put_root(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<axum::Json<serde_json::Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<axum::Json<serde_json::Value>> {
    let user = auth::require(&st, &headers, convoy_domain::Role::Admin).await?;
    let axum::Json(b) = body?;
    let repo = st.tuf.get().ok_or_else(|| crate::error::ApiError::conflict("this server keeps no TUF repository"))?;
    let proof = b["handover_proof"].as_str().unwrap_or_default();
    let v = repo.upload_root(st.store.as_ref(), b["root"].clone(), b["targets"].clone(), proof).await?;
    audit(&st, &user, format!("TUF root version {v} uploaded by {}", user.name)).await?;
    Ok(axum::Json(serde_json::json!({"root_version": v})))
}

/// `PUT /tuf/targets` (deployer; audited): targets metadata signed offline
/// by the root's targets keys (`convoy publish --sign-key`).
pub async fn put_targets(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<axum::Json<serde_json::Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<axum::Json<serde_json::Value>> {
    let user = auth::require(&st, &headers, convoy_domain::Role::Deployer).await?;
    let axum::Json(b) = body?;
    let repo = st.tuf.get().ok_or_else(|| crate::error::ApiError::conflict("this server keeps no TUF repository"))?;
    let v = repo.upload_targets(st.store.as_ref(), b).await?;
    audit(&st, &user, format!("TUF targets version {v} signed offline, uploaded by {}", user.name)).await?;
    Ok(axum::Json(serde_json::json!({"targets_version": v})))
}

/// `PUT /tuf/delegated/{role}` (deployer; audited): a delegated role's
/// metadata signed by its keys (an app's publisher keys).
pub async fn put_delegated(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(role): Path<String>,
    body: Result<axum::Json<serde_json::Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<axum::Json<serde_json::Value>> {
    let user = auth::require(&st, &headers, convoy_domain::Role::Deployer).await?;
    let axum::Json(b) = body?;
    let repo = st.tuf.get().ok_or_else(|| crate::error::ApiError::conflict("this server keeps no TUF repository"))?;
    let v = repo.upload_delegated(st.store.as_ref(), &role, b).await?;
    audit(&st, &user, format!("TUF {role} version {v} signed by its keys, uploaded by {}", user.name)).await?;
    Ok(axum::Json(serde_json::json!({"role": role, "version": v})))
}

/// `PUT /tuf/delegations/{role}` (admin; audited; single-box mode only):
/// `{keys, threshold}` for `app-APP` (publishers) or `approve-ENV`
/// (approvers); the server signs the targets with the delegation.
pub async fn put_delegation(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(role): Path<String>,
    body: Result<axum::Json<serde_json::Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<axum::Json<serde_json::Value>> {
    let user = auth::require(&st, &headers, convoy_domain::Role::Admin).await?;
    let axum::Json(b) = body?;
    let repo = st.tuf.get().ok_or_else(|| crate::error::ApiError::conflict("this server keeps no TUF repository"))?;
    let paths = convoy_wire::tuf::role_paths(&role)
        .ok_or_else(|| crate::error::ApiError::bad_request("a delegated role is app-APP or approve-ENV"))?;
    let keys: Vec<serde_json::Value> = b["keys"].as_array().cloned().unwrap_or_default();
    let threshold = b["threshold"].as_u64().and_then(|t| u32::try_from(t).ok()).unwrap_or(0);
    let v = repo.delegate(st.store.as_ref(), &role, &keys, threshold, paths).await?;
    audit(
        &st,
        &user,
        format!(
            "TUF targets version {v}: {role} delegated to {} key(s), threshold {threshold}, by {}",
            keys.len(),
            user.name
        ),
    )
    .await?;
    Ok(axum::Json(serde_json::json!({"role": role, "targets_version": v})))
}

async fn audit(st: &AppState, user: &crate::auth::User, note: String) -> ApiResult<()> {
    let ev = convoy_store::EventRecord::audit(&user.actor(), "tuf", note, crate::state::now_ms());
    st.store.append_event(&ev).await?;
    Ok(())
}
