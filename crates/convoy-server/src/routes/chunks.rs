//! The chunk store over HTTP: ask what is missing, upload verified chunks,
//! fetch one or many.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use convoy_domain::Role;
use convoy_pack::{ChunkId, VerifiedChunk};
use convoy_wire::ChunkIds;

use crate::auth;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Most ids one `missing` question may carry.
const MAX_IDS: usize = 200_000;
/// Most chunks one `fetch` may ask for.
const MAX_FETCH: usize = 256;

fn parse_ids(ids: &[String], max: usize) -> ApiResult<Vec<ChunkId>> {
    if ids.len() > max {
        return Err(ApiError::bad_request(format!("at most {max} chunk ids per request")));
    }
    ids.iter().map(|s| ChunkId::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))).collect()
}

pub async fn missing(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<ChunkIds>, JsonRejection>,
) -> ApiResult<Json<ChunkIds>> {
    auth::require(&st, &headers, Role::Deployer).await?;
    let Json(req) = body?;
    let ids = parse_ids(&req.ids, MAX_IDS)?;
    let chunks = st.chunks.clone();
    let missing = tokio::task::spawn_blocking(move || missing_of(&chunks, &ids)).await.map_err(ApiError::internal)?;
    Ok(Json(ChunkIds { ids: missing }))
}

/// Threads that look for chunks at once: an object store answers each
/// lookup with a round trip, so a big release's lookups overlap.
const LOOKUPS: usize = 16;

/// The ids the store lacks, in the order asked.
fn missing_of(chunks: &convoy_pack::ChunkStore, ids: &[ChunkId]) -> Vec<String> {
    let per = ids.len().div_ceil(LOOKUPS).max(64);
    std::thread::scope(|s| {
        let parts: Vec<_> = ids
            .chunks(per)
            .map(|part| {
                s.spawn(move || part.iter().filter(|id| !chunks.contains(id)).map(|id| id.to_hex()).collect::<Vec<_>>())
            })
            .collect();
        parts.into_iter().flat_map(|p| p.join().expect("a chunk lookup thread panicked")).collect()
    })
}

pub async fn upload(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<StatusCode> {
    auth::require(&st, &headers, Role::Deployer).await?;
    let id = ChunkId::parse(&id).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let body = body?;
    let len = body.len() as u64;
    let chunks = st.chunks.clone();
    tokio::task::spawn_blocking(move || {
        let chunk = VerifiedChunk::from_compressed(id, &body)
            .map_err(|e| ApiError::bad_request(format!("chunk refused: {e}")))?;
        chunks.put(&chunk, Some(&body)).map_err(ApiError::internal)
    })
    .await
    .map_err(ApiError::internal)??;
    crate::metrics::add(&st.counters.chunks_uploaded, 1);
    crate::metrics::add(&st.counters.chunk_bytes_uploaded, len);
    Ok(StatusCode::NO_CONTENT)
}

pub async fn get(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    auth::reader(&st, &headers).await?;
    let id = ChunkId::parse(&id).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let chunks = st.chunks.clone();
    let found = tokio::task::spawn_blocking(move || chunks.get_compressed(&id))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    match found {
        Some(b) => {
            crate::metrics::add(&st.counters.chunk_bytes_served, b.len() as u64);
            Ok(([(axum::http::header::CONTENT_TYPE, "application/zstd")], b))
        }
        None => Err(ApiError::not_found(format!("chunk {id} not found"))),
    }
}

/// Many chunks in one response, as frames (see `convoy_pack::encode_frame`),
/// so a high-latency link is not dominated by round trips.
pub async fn fetch(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<ChunkIds>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    auth::reader(&st, &headers).await?;
    let Json(req) = body?;
    let ids = parse_ids(&req.ids, MAX_FETCH)?;
    let chunks = st.chunks.clone();
    let out = tokio::task::spawn_blocking(move || -> ApiResult<Vec<u8>> {
        let mut out = Vec::new();
        for id in ids {
            let b = chunks
                .get_compressed(&id)
                .map_err(ApiError::internal)?
                .ok_or_else(|| ApiError::not_found(format!("chunk {id} not found")))?;
            convoy_pack::encode_frame(&mut out, &id, &b);
        }
        Ok(out)
    })
    .await
    .map_err(ApiError::internal)??;
    crate::metrics::add(&st.counters.chunk_bytes_served, out.len() as u64);
    Ok(([(axum::http::header::CONTENT_TYPE, "application/octet-stream")], out))
}
