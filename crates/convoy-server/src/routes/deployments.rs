//! `/deployments`: create (a deployment, or a request in an environment),
//! list, detail, retry, pause, resume, rollback. Adapters over
//! `app::requests` and `app::operations`.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use convoy_domain::Role;
use convoy_wire::{DeployRequest, DeploymentDetail, DeploymentInfo, DetailQuery};

use crate::app::{operations, requests};
use crate::auth;
use crate::error::ApiResult;
use crate::state::AppState;

/// An optional JSON body: none (no content type) is the default.
pub fn optional<T: Default>(body: Result<Json<T>, JsonRejection>) -> ApiResult<T> {
    match body {
        Ok(Json(b)) => Ok(b),
        Err(JsonRejection::MissingJsonContentType(_)) => Ok(T::default()),
        Err(e) => Err(e.into()),
    }
}

pub async fn create(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<DeployRequest>, JsonRejection>,
) -> ApiResult<Json<DeploymentInfo>> {
    let user = auth::require(&st, &headers, Role::Deployer).await?;
    let Json(req) = body?;
    Ok(Json(requests::submit(&st, &user, req).await?))
}

/// `GET /deployments[?plan=NAME]`: the last 100, or every one made from a
/// release plan.
pub async fn list(
    State(st): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<convoy_wire::ListQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<DeploymentInfo>>> {
    auth::require(&st, &headers, Role::Viewer).await?;
    let Query(q) = q?;
    Ok(Json(operations::list(&st, q.plan.as_deref()).await?))
}

/// `GET /deployments/{id}?state=&wave=&label=&limit=&after=&late=`: the
/// summary and a page of targets.
pub async fn get(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<DetailQuery>, QueryRejection>,
) -> ApiResult<Json<DeploymentDetail>> {
    auth::require(&st, &headers, Role::Viewer).await?;
    let Query(q) = q?;
    Ok(Json(operations::detail(&st, &id, &q).await?))
}

/// `POST /deployments/{id}/retry` (deployer; audited).
pub async fn retry(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<convoy_wire::RetryRequest>, JsonRejection>,
) -> ApiResult<Json<DeploymentInfo>> {
    let user = auth::require(&st, &headers, Role::Viewer).await?;
    let req = optional(body)?;
    Ok(Json(operations::retry(&st, &user, &id, req).await?))
}

/// `POST /deployments/{id}/pause` (deployer; audited with a reason).
pub async fn pause(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<convoy_wire::Decision>, JsonRejection>,
) -> ApiResult<Json<DeploymentInfo>> {
    let user = auth::require(&st, &headers, Role::Viewer).await?;
    let d = optional(body)?;
    Ok(Json(operations::pause(&st, &user, &id, &d.note).await?))
}

/// `POST /deployments/{id}/resume` (deployer; audited with a reason).
pub async fn resume(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<convoy_wire::Decision>, JsonRejection>,
) -> ApiResult<Json<DeploymentInfo>> {
    let user = auth::require(&st, &headers, Role::Viewer).await?;
    let d = optional(body)?;
    Ok(Json(operations::resume(&st, &user, &id, &d.note).await?))
}

/// `POST /deployments/{id}/rollback` (deployer; audited with a reason).
pub async fn rollback(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<convoy_wire::RollbackRequest>, JsonRejection>,
) -> ApiResult<Json<DeploymentInfo>> {
    let user = auth::require(&st, &headers, Role::Viewer).await?;
    let req = optional(body)?;
    Ok(Json(operations::rollback(&st, &user, &id, &req.note, req.uninstall).await?))
}
