//! People's part of a request (P-approval, P-confirm): the inbox, approve,
//! reject, confirm, cancel, and changing a request. Adapters over
//! `app::requests`, which audits refusals.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use convoy_domain::Role;
use convoy_wire::{Decision, DeploymentInfo, RequestInfo, ReviseRequest};
use serde::Deserialize;

use super::deployments::optional;
use crate::app::requests;
use crate::auth;
use crate::error::ApiResult;
use crate::state::AppState;

pub async fn approve(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<Decision>, JsonRejection>,
) -> ApiResult<Json<DeploymentInfo>> {
    let user = auth::require(&st, &headers, Role::Viewer).await?;
    let d = optional(body)?;
    Ok(Json(requests::approve(&st, &user, &id, &d).await?))
}

pub async fn reject(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<Decision>, JsonRejection>,
) -> ApiResult<Json<DeploymentInfo>> {
    let user = auth::require(&st, &headers, Role::Viewer).await?;
    let d = optional(body)?;
    Ok(Json(requests::reject(&st, &user, &id, &d.note).await?))
}

pub async fn confirm(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<DeploymentInfo>> {
    let user = auth::require(&st, &headers, Role::Viewer).await?;
    Ok(Json(requests::confirm(&st, &user, &id).await?))
}

pub async fn cancel(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<Decision>, JsonRejection>,
) -> ApiResult<Json<DeploymentInfo>> {
    let user = auth::require(&st, &headers, Role::Viewer).await?;
    let d = optional(body)?;
    Ok(Json(requests::cancel(&st, &user, &id, &d.note).await?))
}

/// `PATCH /deployments/{id}`: changes a request; its approvals are void.
pub async fn revise(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<ReviseRequest>, JsonRejection>,
) -> ApiResult<Json<DeploymentInfo>> {
    let user = auth::require(&st, &headers, Role::Viewer).await?;
    let Json(r) = body?;
    Ok(Json(requests::revise(&st, &user, &id, r).await?))
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
    Ok(Json(requests::inbox(&st, &user, q.all).await?))
}

/// `GET /deployments/{id}/statement`: what an approver signs.
pub async fn statement(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<convoy_wire::approval::Statement>> {
    auth::require(&st, &headers, Role::Viewer).await?;
    let d = crate::app::find(&st, &id).await?;
    Ok(Json(crate::app::approvals::statement(&st, &d).await?))
}
