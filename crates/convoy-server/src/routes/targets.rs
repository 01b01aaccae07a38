use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use convoy_domain::Role;
use convoy_wire::TargetInfo;

use crate::auth;
use crate::error::{ApiError, ApiResult};
use crate::state::{now_ms, AppState};

pub async fn list(State(st): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Vec<TargetInfo>>> {
    auth::require(&st, &headers, Role::Viewer).await?;
    st.store
        .list_targets()
        .await?
        .iter()
        .map(|t| crate::app::target_info(t, st.relay_site(&t.id)).map_err(ApiError::from))
        .collect::<ApiResult<Vec<_>>>()
        .map(Json)
}

/// A target and its last deployments.
pub async fn get(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<convoy_wire::TargetDetail>> {
    auth::require(&st, &headers, Role::Viewer).await?;
    Ok(Json(crate::app::target_detail(&st, &id).await?))
}

/// Forgets a decommissioned target and revokes its credential.
pub async fn remove(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let user = auth::require(&st, &headers, Role::Admin).await?;
    let was_relay = st.relay_site(&id);
    let host = st.store.get_target(&id).await?.map(|t| t.hostname).unwrap_or_default();
    if !st.store.remove_target(&id).await? {
        return Err(ApiError::not_found(format!("target {id} not found")));
    }
    let note = match &was_relay {
        Some(site) => format!("{id} ({host}); its credential and its relay grant for site {site} revoked"),
        None => format!("{id} ({host}); its credential revoked"),
    };
    st.store.append_event(&convoy_store::EventRecord::audit(&user.actor(), "target_removed", note, now_ms())).await?;
    st.refresh_relays().await?;
    st.note_site(&id, None);
    tracing::info!(target_id = %id, user = %user.name, "target removed");
    Ok(Json(serde_json::json!({"removed": id})))
}
