//! HTTP routes of release deltas, compressed manifests and upgrade
//! descriptions (made in `app::content`): a delta from release A to B
//! carries B's manifest skeleton and B's release stream as patches of A's,
//! so a delta upgrade is one request; 204 with the reason when chunks are
//! cheaper.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use convoy_pack::DELTA_FORMAT;
use serde::Deserialize;

use crate::app::content::{changes, Made};
use crate::auth;
use crate::error::ApiResult;
use crate::state::AppState;

pub const H_FORMAT: &str = "x-convoy-delta-format";
pub const H_FROM: &str = "x-convoy-delta-from";
pub const H_SKIP: &str = "x-convoy-delta-skip";
pub const H_BASE: &str = "x-convoy-manifest-base";
pub const H_SIZE: &str = "x-convoy-release-size";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaQuery {
    /// The version the asking target holds.
    from: String,
}

fn header(name: &'static str, v: &str) -> (HeaderName, HeaderValue) {
    (HeaderName::from_static(name), HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("-")))
}

/// `GET /releases/{app}/{version}/delta?from=VERSION`: the delta (200), or
/// 204 with the reason in `x-convoy-delta-skip` when chunks are cheaper,
/// or 202 (the same header) when it is not made yet: it is being made, and
/// the caller stages by chunks rather than wait.
pub async fn get(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path((app, version)): Path<(String, String)>,
    q: Result<Query<DeltaQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    auth::reader(&st, &headers).await?;
    let Query(q) = q?;
    let (made, from_digest, size) = crate::app::content::delta(&st, &app, &q.from, &version).await?;
    Ok(match made {
        Made::Bytes(b) => {
            crate::metrics::add(&st.counters.delta_bytes_served, b.len() as u64);
            let hs = [header(H_FORMAT, DELTA_FORMAT), header(H_FROM, &from_digest), header(H_SIZE, &size)];
            (StatusCode::OK, hs, b).into_response()
        }
        Made::File(path) => {
            let (len, body) = file_body(&path).await?;
            crate::metrics::add(&st.counters.delta_bytes_served, len);
            let hs = [
                header(H_FORMAT, DELTA_FORMAT),
                header(H_FROM, &from_digest),
                header(H_SIZE, &size),
                header("content-length", &len.to_string()),
            ];
            (StatusCode::OK, hs, body).into_response()
        }
        Made::Skip(why) => (StatusCode::NO_CONTENT, [header(H_SKIP, &why)]).into_response(),
        // not made yet: relays keep 200 and 204 only, so this is asked again
        Made::NotReady(why) => (StatusCode::ACCEPTED, [header(H_SKIP, &why)]).into_response(),
    })
}

/// A kept file as a response body, streamed in 256 KiB reads (a delta may
/// be larger than the memory one response should hold).
async fn file_body(path: &std::path::Path) -> ApiResult<(u64, axum::body::Body)> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(path).await.map_err(crate::error::ApiError::internal)?;
    let len = file.metadata().await.map_err(crate::error::ApiError::internal)?.len();
    let stream = futures_util::stream::unfold(Some(file), |f| async move {
        let mut f = f?;
        let mut buf = vec![0u8; 256 << 10];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(buf)), Some(f)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    Ok((len, axum::body::Body::from_stream(stream)))
}

/// `GET /releases/{app}/{version}/stream`: the first-install stream (a
/// delta from no release: every file in one zstd stream), 204 with the
/// reason when chunks are cheaper, 202 when it is not made yet.
pub async fn stream(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path((app, version)): Path<(String, String)>,
) -> ApiResult<Response> {
    auth::reader(&st, &headers).await?;
    let (made, size) = crate::app::content::first_install(&st, &app, &version).await?;
    Ok(match made {
        Made::File(path) => {
            let (len, body) = file_body(&path).await?;
            crate::metrics::add(&st.counters.delta_bytes_served, len);
            let hs =
                [header(H_FORMAT, DELTA_FORMAT), header(H_SIZE, &size), header("content-length", &len.to_string())];
            (StatusCode::OK, hs, body).into_response()
        }
        Made::Bytes(_) => (StatusCode::NO_CONTENT, [header(H_SKIP, "not kept as a file")]).into_response(),
        Made::Skip(why) => (StatusCode::NO_CONTENT, [header(H_SKIP, &why)]).into_response(),
        Made::NotReady(why) => (StatusCode::ACCEPTED, [header(H_SKIP, &why)]).into_response(),
    })
}

/// `POST /releases/{app}/{version}/sync`: a drifted machine's files (a
/// zstd-compressed `convoy_wire::SyncRequest`, at most 16 MiB decoded);
/// the answer as `app::content::sync` makes it.
pub async fn sync(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path((app, version)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    auth::reader(&st, &headers).await?;
    let json = convoy_pack::decode_bounded(&[], &body, 16 << 20)
        .map_err(|e| crate::error::ApiError::bad_request(format!("sync request: {e}")))?;
    let req: convoy_wire::SyncRequest =
        serde_json::from_slice(&json).map_err(|e| crate::error::ApiError::bad_request(format!("sync request: {e}")))?;
    let out = crate::app::content::sync(&st, &app, &version, req).await?;
    crate::metrics::add(&st.counters.delta_bytes_served, out.len() as u64);
    Ok((StatusCode::OK, out).into_response())
}

/// `GET /releases/{app}/{version}/changes?from=VERSION`.
pub async fn get_changes(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path((app, version)): Path<(String, String)>,
    q: Result<Query<DeltaQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<axum::Json<convoy_wire::Changes>> {
    auth::reader(&st, &headers).await?;
    let Query(q) = q?;
    Ok(axum::Json(changes(&st, &app, &q.from, &version).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestQuery {
    /// A version the asking target holds: the manifest comes as a zstd
    /// patch against that version's manifest.
    base: Option<String>,
}

/// `GET /releases/{app}/{version}/manifest.zst[?base=VERSION]`: the
/// canonical manifest, zstd-compressed, as a patch against `base`'s
/// manifest when given (`x-convoy-manifest-base` names its digest).
pub async fn manifest_zst(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path((app, version)): Path<(String, String)>,
    q: Result<Query<ManifestQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    auth::reader(&st, &headers).await?;
    let Query(q) = q?;
    let (b, base_digest) = crate::app::content::manifest_patch(&st, &app, &version, q.base.as_deref()).await?;
    crate::metrics::add(&st.counters.delta_bytes_served, b.len() as u64);
    let mut resp = (StatusCode::OK, b).into_response();
    if let Some(d) = base_digest {
        let (k, v) = header(H_BASE, &d);
        resp.headers_mut().insert(k, v);
    }
    Ok(resp)
}
