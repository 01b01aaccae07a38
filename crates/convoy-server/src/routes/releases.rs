//! Publishing and reading releases. A release is accepted only when its
//! manifest is valid and every chunk it names is in the store (each chunk
//! was hash-checked on upload). Releases are immutable.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::Json;
use convoy_domain::Role;
use convoy_domain::{AppName, Version};
use convoy_pack::{Entry, Manifest};
use convoy_store::ReleaseRecord;
use convoy_wire::{Provenance, PublishRequest, PublishResponse, ReleaseInfo};

use crate::auth;
use crate::error::{ApiError, ApiResult};
use crate::state::{now_ms, AppState};

pub fn info(r: &ReleaseRecord) -> ReleaseInfo {
    ReleaseInfo {
        app: r.app.clone(),
        version: r.version.clone(),
        digest: r.digest.clone(),
        files: r.files as u64,
        total_size: r.total_size as u64,
        chunks: r.chunks as u64,
        created_at: r.created_at,
        provenance: serde_json::from_str(&r.provenance_json).ok().filter(|p: &Provenance| !p.is_empty()),
    }
}

pub async fn publish(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<PublishRequest>, JsonRejection>,
) -> ApiResult<Json<PublishResponse>> {
    let user = auth::require(&st, &headers, Role::Deployer).await?;
    let Json(req) = body?;
    let app = AppName::parse(&req.app).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let version = Version::parse(&req.version).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let manifest: Manifest = serde_json::from_value(req.manifest)
        .map_err(|e| ApiError::bad_request(format!("manifest is not valid: {e}")))?;
    manifest.validate().map_err(|e| ApiError::bad_request(e.to_string()))?;
    if let Some(p) = &req.provenance {
        for (what, v) in
            [("commit", &p.commit), ("branch", &p.branch), ("ci_url", &p.ci_url), ("repository", &p.repository)]
        {
            if v.len() > 512 || v.chars().any(char::is_control) {
                return Err(ApiError::bad_request(format!(
                    "provenance {what}: at most 512 bytes, without control characters"
                )));
            }
        }
    }
    // every chunk the manifest names is stored, with the length it says
    let mut lens: std::collections::BTreeMap<convoy_pack::ChunkId, u32> = Default::default();
    for e in &manifest.entries {
        if let Entry::File { path, chunks, .. } = e {
            for c in chunks {
                if *lens.entry(c.id).or_insert(c.len) != c.len {
                    return Err(ApiError::bad_request(format!(
                        "{path}: chunk {} is given two different lengths",
                        c.id
                    )));
                }
            }
        }
    }
    let chunks = st.chunks.clone();
    let (absent, wrong) = tokio::task::spawn_blocking(move || {
        let (mut absent, mut wrong) = (Vec::new(), Vec::new());
        for (id, len) in lens {
            match chunks.raw_len(&id) {
                Ok(Some(n)) if n == u64::from(len) => {}
                Ok(Some(n)) => wrong.push(format!("{id} is {n} bytes, not {len}")),
                Ok(None) => absent.push(id.to_hex()),
                Err(e) => wrong.push(format!("{id} is unreadable: {e}")),
            }
        }
        (absent, wrong)
    })
    .await
    .map_err(ApiError::internal)?;
    if !absent.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{} chunks named by the manifest were not uploaded (first: {}); upload them first",
            absent.len(),
            absent[0]
        )));
    }
    if let Some(w) = wrong.first() {
        return Err(ApiError::bad_request(format!(
            "the manifest's chunk lengths disagree with the stored chunks ({} of them; first: chunk {w})",
            wrong.len()
        )));
    }
    let rec = ReleaseRecord {
        app: app.to_string(),
        version: version.to_string(),
        digest: manifest.digest(),
        manifest: manifest.canonical_bytes(),
        files: manifest.entries.iter().filter(|e| matches!(e, Entry::File { .. })).count() as i64,
        total_size: manifest.total_size() as i64,
        chunks: manifest.chunk_ids().len() as i64,
        created_at: now_ms(),
        provenance_json: match &req.provenance {
            Some(p) if !p.is_empty() => serde_json::to_string(p).map_err(ApiError::internal)?,
            _ => String::new(),
        },
    };
    let created = st.store.insert_release(&rec).await?;
    let signed = crate::app::tuf::published(&st, &rec).await?;
    if created {
        tracing::info!(app = %app, version = %version, digest = %rec.digest, user = %user.name, "release published");
        // deltas from recent releases and from what the fleet runs, made
        // in the background before anyone deploys
        crate::app::content::published(&st, &rec).await?;
    }
    let stored =
        st.store.get_release(&rec.app, &rec.version).await?.ok_or_else(|| ApiError::internal("release vanished"))?;
    Ok(Json(PublishResponse { release: info(&stored), created, signed }))
}

pub async fn list(State(st): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Vec<ReleaseInfo>>> {
    auth::require(&st, &headers, Role::Viewer).await?;
    Ok(Json(st.store.list_releases().await?.iter().map(info).collect()))
}

async fn find(st: &AppState, app: &str, version: &str) -> ApiResult<ReleaseRecord> {
    st.store
        .get_release(app, version)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("release {app}@{version} not found")))
}

pub async fn get(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path((app, version)): Path<(String, String)>,
) -> ApiResult<Json<ReleaseInfo>> {
    auth::reader(&st, &headers).await?;
    Ok(Json(info(&find(&st, &app, &version).await?)))
}

/// The canonical manifest bytes; their BLAKE3 is the root digest.
pub async fn manifest(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path((app, version)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    auth::reader(&st, &headers).await?;
    let r = find(&st, &app, &version).await?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], r.manifest))
}
