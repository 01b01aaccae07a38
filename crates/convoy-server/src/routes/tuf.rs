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
