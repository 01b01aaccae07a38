//! A release's files as DDI artifacts: sizes and the sha1/md5/sha256
//! hawkBit clients check (computed once per release from verified chunks),
//! and downloads with HTTP Range.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use convoy_pack::{ChunkRef, ChunkStore, Entry, Manifest};
use md5::Digest as _;

/// One file of a release, as a device downloads it.
#[derive(Debug, Clone)]
pub struct ArtifactFile {
    pub filename: String,
    pub size: u64,
    pub sha1: String,
    pub md5: String,
    pub sha256: String,
    chunks: Vec<ChunkRef>,
}

/// Releases whose artifacts are kept at once (by root digest).
const KEPT: usize = 64;

/// When a release's files were last used (a counter), and the files.
type Kept = (u64, Arc<Vec<ArtifactFile>>);

#[derive(Default)]
pub struct Artifacts {
    /// By root digest: when last used (a counter), and the files.
    by_digest: Mutex<HashMap<String, Kept>>,
    uses: std::sync::atomic::AtomicU64,
    /// One release is hashed at a time: devices asking for the same new
    /// release together wait for one pass over its chunks.
    hashing: tokio::sync::Mutex<()>,
}

impl Artifacts {
    /// The files of a release (its manifest, which hashes to `digest`),
    /// with their hashes, computed on first use from verified chunks.
    pub async fn of(
        &self,
        chunks: &ChunkStore,
        digest: &str,
        manifest: &[u8],
    ) -> Result<Arc<Vec<ArtifactFile>>, String> {
        if let Some(a) = self.kept(digest) {
            return Ok(a);
        }
        let _one = self.hashing.lock().await;
        if let Some(a) = self.kept(digest) {
            return Ok(a);
        }
        let m = Manifest::from_slice(manifest).map_err(|e| e.to_string())?;
        let store = chunks.clone();
        let files = tokio::task::spawn_blocking(move || hash_files(&store, &m)).await.map_err(|e| e.to_string())??;
        let files = Arc::new(files);
        let mut kept = self.by_digest.lock().expect("artifacts lock");
        if kept.len() >= KEPT {
            // the least lately used goes
            if let Some(old) = kept.iter().min_by_key(|(_, (used, _))| *used).map(|(k, _)| k.clone()) {
                kept.remove(&old);
            }
        }
        let used = self.uses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        kept.insert(digest.to_owned(), (used, files.clone()));
        Ok(files)
    }

    fn kept(&self, digest: &str) -> Option<Arc<Vec<ArtifactFile>>> {
        let mut kept = self.by_digest.lock().expect("artifacts lock");
        let (used, files) = kept.get_mut(digest)?;
        *used = self.uses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(files.clone())
    }
}

fn hash_files(store: &ChunkStore, m: &Manifest) -> Result<Vec<ArtifactFile>, String> {
    let mut out = Vec::new();
    for e in &m.entries {
        let Entry::File { path, size, chunks, .. } = e else { continue };
        let (mut sha1, mut md5, mut sha256) = (sha1::Sha1::new(), md5::Md5::new(), sha2::Sha256::new());
        for c in chunks {
            let chunk = store
                .get(&c.id)
                .map_err(|e| format!("reading chunk {}: {e}", c.id.to_hex()))?
                .ok_or_else(|| format!("chunk {} of {path} is missing from the store", c.id.to_hex()))?;
            sha1.update(chunk.data());
            md5.update(chunk.data());
            sha256.update(chunk.data());
        }
        out.push(ArtifactFile {
            filename: path.as_str().to_owned(),
            size: *size,
            sha1: hex::encode(sha1.finalize()),
            md5: hex::encode(md5.finalize()),
            sha256: hex::encode(sha256.finalize()),
            chunks: chunks.clone(),
        });
    }
    Ok(out)
}

/// What a `Range` header asks of a file of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Wanted {
    /// No range (or one this server does not serve piecewise): all of it.
    All,
    /// Bytes `start..=end`.
    Part(u64, u64),
    /// Nothing the file holds (416).
    Unsatisfiable,
}

/// Reads `bytes=S-E`, `bytes=S-`, `bytes=-N`. Several ranges are answered
/// with the whole file (allowed by RFC 9110); a malformed one is 416, as
/// hawkBit answers it.
pub fn wanted(range: Option<&str>, size: u64) -> Wanted {
    let Some(r) = range else { return Wanted::All };
    let Some(spec) = r.trim().strip_prefix("bytes=") else { return Wanted::Unsatisfiable };
    if spec.contains(',') {
        return Wanted::All;
    }
    let Some((s, e)) = spec.trim().split_once('-') else { return Wanted::Unsatisfiable };
    let num = |t: &str| -> Option<Option<u64>> {
        if t.is_empty() {
            Some(None)
        } else if t.bytes().all(|b| b.is_ascii_digit()) {
            t.parse().ok().map(Some)
        } else {
            None
        }
    };
    let (Some(s), Some(e)) = (num(s.trim()), num(e.trim())) else { return Wanted::Unsatisfiable };
    let (start, end) = match (s, e) {
        (Some(s), Some(e)) => (s, e.min(size.saturating_sub(1))),
        (Some(s), None) => (s, size.saturating_sub(1)),
        (None, Some(n)) if n > 0 => (size.saturating_sub(n), size.saturating_sub(1)),
        _ => return Wanted::Unsatisfiable,
    };
    if size == 0 || start >= size || start > end || s.is_some_and(|s| e.is_some_and(|e| s > e)) {
        return Wanted::Unsatisfiable;
    }
    Wanted::Part(start, end)
}

/// The artifact's bytes (or the range asked for), streamed chunk by
/// chunk; each chunk is verified by the store as it is read.
pub fn download(store: &ChunkStore, file: &ArtifactFile, headers: &HeaderMap) -> Response {
    let etag = format!("\"{}\"", file.sha1);
    let mut range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    // If-Range naming another version of the file: send it all
    if let Some(ir) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        if ir.trim() != etag && ir.trim() != file.sha1 {
            range = None;
        }
    }
    let (status, start, end) = match wanted(range, file.size) {
        Wanted::All => (StatusCode::OK, 0, file.size),
        Wanted::Part(s, e) => (StatusCode::PARTIAL_CONTENT, s, e + 1),
        Wanted::Unsatisfiable => {
            let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", file.size)) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    // the chunks overlapping start..end, with the part of each to send
    let mut pieces = Vec::new();
    let mut at = 0u64;
    for c in &file.chunks {
        let (from, to) = (at, at + c.len as u64);
        at = to;
        if to <= start || from >= end {
            continue;
        }
        pieces.push((c.id, (start.max(from) - from) as usize, (end.min(to) - from) as usize));
    }
    let store = store.clone();
    let stream = futures_util::stream::unfold(pieces.into_iter(), move |mut left| {
        let store = store.clone();
        async move {
            let (id, a, b) = left.next()?;
            let got = tokio::task::spawn_blocking(move || store.get(&id)).await;
            let item = match got {
                Ok(Ok(Some(c))) if b <= c.data().len() => Ok(Bytes::copy_from_slice(&c.data()[a..b])),
                Ok(Ok(Some(_))) => Err(std::io::Error::other(format!("chunk {} is shorter than listed", id.to_hex()))),
                Ok(Ok(None)) => Err(std::io::Error::other(format!("chunk {} is missing", id.to_hex()))),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            if let Err(e) = &item {
                tracing::error!(error = %e, "artifact download stopped");
                return Some((item, Vec::new().into_iter()));
            }
            Some((item, left))
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    let name = file.filename.rsplit('/').next().unwrap_or(&file.filename);
    let mut set = |k: header::HeaderName, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    set(header::CONTENT_TYPE, "application/octet-stream".into());
    set(header::CONTENT_LENGTH, (end - start).to_string());
    set(header::ACCEPT_RANGES, "bytes".into());
    set(header::ETAG, etag);
    set(header::CONTENT_DISPOSITION, format!("attachment;filename={}", quoted_name(name)));
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff".into());
    if status == StatusCode::PARTIAL_CONTENT {
        set(header::CONTENT_RANGE, format!("bytes {start}-{}/{}", end - 1, file.size));
    }
    resp
}

/// `FILE.MD5SUM`: `MD5  FILE` (two spaces), as `md5sum` prints it.
pub fn md5sum(file: &ArtifactFile) -> Response {
    let name = file.filename.rsplit('/').next().unwrap_or(&file.filename);
    let body = format!("{}  {name}", file.md5);
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment;filename={}.MD5SUM", quoted_name(name))) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    resp
}

/// A file name fit for a header: quoted when it has RFC 2045 specials,
/// with anything not printable ASCII replaced.
fn quoted_name(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '_' })
        .filter(|c| *c != '"' && *c != '\\')
        .collect();
    if clean.chars().any(|c| "()<>@,;:\\/[]?= ".contains(c)) {
        format!("\"{clean}\"")
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(wanted(None, 10), Wanted::All);
        assert_eq!(wanted(Some("bytes=0-3"), 10), Wanted::Part(0, 3));
        assert_eq!(wanted(Some("bytes=4-"), 10), Wanted::Part(4, 9));
        assert_eq!(wanted(Some("bytes=-3"), 10), Wanted::Part(7, 9));
        assert_eq!(wanted(Some("bytes=-30"), 10), Wanted::Part(0, 9));
        assert_eq!(wanted(Some("bytes=5-100"), 10), Wanted::Part(5, 9));
        assert_eq!(wanted(Some("bytes=0-1,4-5"), 10), Wanted::All);
        for bad in ["bytes=10-", "bytes=5-2", "bytes=-0", "bytes=a-b", "items=0-1", "bytes=-", "bytes=1"] {
            assert_eq!(wanted(Some(bad), 10), Wanted::Unsatisfiable, "{bad}");
        }
        assert_eq!(wanted(Some("bytes=0-0"), 0), Wanted::Unsatisfiable);
    }

    #[test]
    fn header_names() {
        assert_eq!(quoted_name("app.swu"), "app.swu");
        assert_eq!(quoted_name("a b.swu"), "\"a b.swu\"");
        assert_eq!(quoted_name("x\"\n.bin"), "x_.bin");
    }
}
