//! Who may do what, as operators decide it: enrolment tokens, relay
//! grants, target labels and token rotation. Every change is audited in
//! the same transaction that makes it.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use convoy_domain::Role;
use convoy_store::{new_id, new_secret, EnrolTokenRecord, EventRecord, RelayRecord, TokenKind, TokenRecord};
use convoy_wire::{
    EnrolTokenInfo, LabelChange, Labels, NewEnrolToken, RelayGrant, RelayInfo, RotatedToken, TargetInfo,
};

use super::agent::labels_text;
use crate::app::SITE_LABEL;
use crate::auth;
use crate::error::{ApiError, ApiResult};
use crate::state::{now_ms, AppState};

/// Ids of enrolment tokens that are DDI gateway tokens begin so.
pub(crate) const GATEWAY_PREFIX: &str = "g-";

/// Longest an enrolment token may live.
const MAX_EXPIRY_SECS: u64 = 366 * 24 * 3600;

fn enrol_info(e: EnrolTokenRecord, token: Option<String>) -> ApiResult<EnrolTokenInfo> {
    let labels = match &e.labels_json {
        Some(j) => Some(serde_json::from_str::<Labels>(j).map_err(ApiError::internal)?),
        None => None,
    };
    Ok(EnrolTokenInfo {
        gateway: e.id.starts_with(GATEWAY_PREFIX),
        id: e.id,
        labels,
        expires_at: e.expires_at,
        max_uses: e.max_uses,
        uses: e.uses,
        created_by: e.created_by,
        created_at: e.created_at,
        revoked_at: e.revoked_at,
        token,
    })
}

/// `POST /enrol-tokens` (admin): a new enrolment token, its secret shown once.
pub async fn create_enrol_token(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<NewEnrolToken>, JsonRejection>,
) -> ApiResult<Json<EnrolTokenInfo>> {
    let admin = auth::require(&st, &headers, Role::Admin).await?;
    let Json(n) = body?;
    if let Some(l) = &n.labels {
        l.validate().map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    if n.expires_in_secs.is_some_and(|s| s == 0 || s > MAX_EXPIRY_SECS) {
        return Err(ApiError::bad_request(format!("expiry must be 1 s to {} days", MAX_EXPIRY_SECS / 86_400)));
    }
    if n.uses.is_some_and(|u| u < 1) {
        return Err(ApiError::bad_request("uses must be at least 1"));
    }
    let now = now_ms();
    let secret = new_secret();
    let rec = EnrolTokenRecord {
        id: new_id(if n.gateway { &GATEWAY_PREFIX[..1] } else { "e" }),
        labels_json: n.labels.as_ref().map(serde_json::to_string).transpose().map_err(ApiError::internal)?,
        expires_at: n.expires_in_secs.map(|s| now + s as i64 * 1000),
        max_uses: n.uses,
        uses: 0,
        created_by: admin.name.clone(),
        created_at: now,
        revoked_at: None,
    };
    let scope = n.labels.as_ref().map_or("the labels each agent asks for".to_owned(), labels_text);
    let note = format!(
        "{}{}: {scope}, {}, {}",
        if n.gateway { "DDI gateway token " } else { "" },
        rec.id,
        n.expires_in_secs.map_or("no expiry".into(), |s| format!("expires in {s} s")),
        n.uses.map_or("any number of uses".into(), |u| format!("{u} uses"))
    );
    let ev = EventRecord::audit(&admin.actor(), "enrol_token_created", note, now);
    let kind = if n.gateway { TokenKind::Gateway } else { TokenKind::Enrol };
    st.store.create_enrol_token(&rec, &TokenRecord::new(&secret, kind, &rec.id, now), &ev).await?;
    tracing::info!(id = %rec.id, by = %admin.name, "enrolment token created");
    Ok(Json(enrol_info(rec, Some(secret))?))
}

pub async fn list_enrol_tokens(State(st): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Vec<EnrolTokenInfo>>> {
    auth::require(&st, &headers, Role::Admin).await?;
    st.store.list_enrol_tokens().await?.into_iter().map(|e| enrol_info(e, None)).collect::<ApiResult<_>>().map(Json)
}

/// `DELETE /enrol-tokens/{id}` (admin): no agent enrols with it any more;
/// agents already enrolled keep their own credentials.
pub async fn revoke_enrol_token(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<EnrolTokenInfo>> {
    let admin = auth::require(&st, &headers, Role::Admin).await?;
    let Some(e) = st.store.get_enrol_token(&id).await? else {
        return Err(ApiError::not_found(format!("enrolment token {id} not found")));
    };
    if e.revoked_at.is_some() {
        return Err(ApiError::conflict(format!("enrolment token {id} is already revoked")));
    }
    let ev = EventRecord::audit(
        &admin.actor(),
        "enrol_token_revoked",
        format!("{id}: revoked by {}", admin.actor()),
        now_ms(),
    );
    if !st.store.revoke_enrol_token(&id, &ev).await? {
        return Err(ApiError::conflict(format!("enrolment token {id} is already revoked")));
    }
    let e = st.store.get_enrol_token(&id).await?.ok_or_else(|| ApiError::internal("revoked token vanished"))?;
    Ok(Json(enrol_info(e, None)?))
}

/// `POST /users/{name}/token`: a new API token for a user (admin, or the
/// user itself); the old one stops working at once.
pub async fn rotate_user_token(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<RotatedToken>> {
    let caller = auth::require(&st, &headers, Role::Viewer).await?;
    if caller.role != Role::Admin && caller.name != name {
        return Err(ApiError::forbidden(format!("only an admin or {name} itself may rotate {name}'s token")));
    }
    // the first administrator (`admin`) holds the bootstrap admin token
    let kind = if name == "admin" {
        TokenKind::Admin
    } else if st.store.get_user(&name).await?.is_some() {
        TokenKind::User
    } else {
        return Err(ApiError::not_found(format!("user {name} not found")));
    };
    let now = now_ms();
    let secret = new_secret();
    let note = format!("rotated by {}", caller.actor());
    let ev = EventRecord::audit(&caller.actor(), "token_rotated", format!("{name}'s {} token", kind.as_str()), now);
    let revoked = st.store.rotate_token(&TokenRecord::new(&secret, kind, &name, now), &note, &ev).await?;
    tracing::info!(user = %name, by = %caller.name, revoked, "token rotated");
    Ok(Json(RotatedToken { subject: name, token: secret, revoked }))
}

async fn target_or_404(st: &AppState, id: &str) -> ApiResult<convoy_store::TargetRecord> {
    st.store.get_target(id).await?.ok_or_else(|| ApiError::not_found(format!("target {id} not found")))
}

/// `PATCH /targets/{id}/labels` (admin): sets and removes labels. The only
/// way a target's labels change after enrolment.
pub async fn label(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<LabelChange>, JsonRejection>,
) -> ApiResult<Json<TargetInfo>> {
    let admin = auth::require(&st, &headers, Role::Admin).await?;
    let Json(c) = body?;
    c.set.validate().map_err(|e| ApiError::bad_request(e.to_string()))?;
    if let Some(k) = c.remove.iter().find(|k| c.set.0.contains_key(*k)) {
        return Err(ApiError::bad_request(format!("label {k} is both set and removed")));
    }
    if c.set.0.is_empty() && c.remove.is_empty() {
        return Err(ApiError::bad_request("nothing to change: give k=v labels to set or --remove KEY"));
    }
    let t = target_or_404(&st, &id).await?;
    let before: Labels = serde_json::from_str(&t.labels_json).map_err(ApiError::internal)?;
    if let Some(k) = c.remove.iter().find(|k| !before.0.contains_key(*k)) {
        return Err(ApiError::bad_request(format!("target {id} has no label {k} to remove")));
    }
    let mut after = before.clone();
    after.0.extend(c.set.0.clone());
    for k in &c.remove {
        after.0.remove(k);
    }
    let json = serde_json::to_string(&after).map_err(ApiError::internal)?;
    let note = format!("{id} ({}): {} -> {}", t.hostname, labels_text(&before), labels_text(&after));
    let ev = EventRecord::audit(&admin.actor(), "target_labelled", note, now_ms());
    if !st.store.set_target_labels(&id, &json, &ev).await? {
        return Err(ApiError::not_found(format!("target {id} not found")));
    }
    st.note_site(&id, after.0.get(SITE_LABEL).map(String::as_str));
    // its stage work names its site's relays: let it ask again
    st.changed([id.as_str()]);
    tracing::info!(target_id = %id, by = %admin.name, "labels changed");
    let t = target_or_404(&st, &id).await?;
    Ok(Json(crate::app::target_info(&t, st.relay_site(&id))?))
}

fn relay_info(st: &AppState, r: RelayRecord, hostname: String) -> RelayInfo {
    let url = r.url.clone().or_else(|| st.relays_of(&r.site, &r.target_id).into_iter().next());
    RelayInfo {
        target_id: r.target_id,
        hostname,
        site: r.site,
        url,
        granted_by: r.granted_by,
        granted_at: r.granted_at,
    }
}

/// `PUT /relays/{target}` (admin): makes a target its site's relay.
pub async fn grant_relay(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<RelayGrant>, JsonRejection>,
) -> ApiResult<Json<RelayInfo>> {
    let admin = auth::require(&st, &headers, Role::Admin).await?;
    let Json(g) = body?;
    Labels::parse(&format!("{SITE_LABEL}={}", g.site)).map_err(|_| {
        ApiError::bad_request(format!(
            "site {:?} is not a valid label value (1-63 of letters, digits, . _ - /)",
            g.site
        ))
    })?;
    if let Some(u) = &g.url {
        super::agent::check_url(u)?;
    }
    let t = target_or_404(&st, &id).await?;
    let now = now_ms();
    let rec = RelayRecord {
        target_id: id.clone(),
        site: g.site.clone(),
        url: g.url.clone(),
        granted_by: admin.name.clone(),
        granted_at: now,
    };
    let note = format!(
        "{id} ({}) relays for site {} at {}",
        t.hostname,
        g.site,
        g.url.as_deref().unwrap_or("the URL it reports")
    );
    st.store.grant_relay(&rec, &EventRecord::audit(&admin.actor(), "relay_granted", note, now)).await?;
    if let Some(u) = serde_json::from_str::<convoy_wire::Inventory>(&t.inventory_json).ok().and_then(|i| i.relay) {
        st.note_relay_url(&id, Some(&u));
    }
    st.refresh_relays().await?;
    tracing::info!(target_id = %id, site = %g.site, by = %admin.name, "relay granted");
    Ok(Json(relay_info(&st, rec, t.hostname)))
}

/// `DELETE /relays/{target}` (admin): the target stops being a relay; its
/// site's agents are no longer sent to it and it may no longer site-poll.
pub async fn revoke_relay(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let admin = auth::require(&st, &headers, Role::Admin).await?;
    let ev = EventRecord::audit(&admin.actor(), "relay_revoked", id.clone(), now_ms());
    if !st.store.revoke_relay(&id, &ev).await? {
        return Err(ApiError::not_found(format!("target {id} is not a relay")));
    }
    st.refresh_relays().await?;
    tracing::info!(target_id = %id, by = %admin.name, "relay revoked");
    Ok(Json(serde_json::json!({ "revoked": id })))
}

pub async fn list_relays(State(st): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Vec<RelayInfo>>> {
    auth::require(&st, &headers, Role::Viewer).await?;
    let mut out = Vec::new();
    for r in st.store.list_relays().await? {
        let host = st.store.get_target(&r.target_id).await?.map(|t| t.hostname).unwrap_or_default();
        out.push(relay_info(&st, r, host));
    }
    Ok(Json(out))
}
