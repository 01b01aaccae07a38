//! `convoy pack` and `convoy publish`: chunk the tree, ask the server which
//! chunks it lacks, upload only those (verified server-side), then the manifest.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use convoy_client::Client;
use convoy_domain::{AppName, Version};
use convoy_pack::{chunk_file, pack_tree, ChunkId, Entry, Manifest};
use convoy_wire::{ChunkIds, PublishRequest, PublishResponse};
use serde::Serialize;

/// Uploads (and compressions) in flight at once.
const PARALLEL_UPLOADS: usize = 4;

#[derive(Debug, Serialize)]
pub struct PackSummary {
    pub digest: String,
    pub files: usize,
    pub total_size: u64,
    pub chunks: usize,
}

pub fn summarize(m: &Manifest) -> PackSummary {
    PackSummary {
        digest: m.digest(),
        files: m.entries.iter().filter(|e| matches!(e, Entry::File { .. })).count(),
        total_size: m.total_size(),
        chunks: m.chunk_ids().len(),
    }
}

pub fn check_names(app: &str, version: &str) -> anyhow::Result<()> {
    AppName::parse(app)?;
    Version::parse(version)?;
    Ok(())
}

pub async fn pack(dir: &Path) -> anyhow::Result<Manifest> {
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let d = dir.to_owned();
    tokio::task::spawn_blocking(move || pack_tree(&d, |_| Ok(())))
        .await?
        .with_context(|| format!("packing {}", dir.display()))
}

#[derive(Debug, Serialize)]
pub struct PublishSummary {
    pub app: String,
    pub version: String,
    pub digest: String,
    pub created: bool,
    pub chunks_total: usize,
    pub chunks_uploaded: usize,
    pub bytes_uploaded: u64,
    /// Signed into the server's TUF targets (by the server, or here with a key).
    pub signed: bool,
    #[serde(skip)]
    pub manifest: Vec<u8>,
}

pub async fn publish(client: &Client, dir: &Path, app: &str, version: &str) -> anyhow::Result<PublishSummary> {
    check_names(app, version)?;
    let manifest = pack(dir).await?;
    let ids: Vec<String> = manifest.chunk_ids().iter().map(|i| i.to_hex()).collect();
    let total = ids.len();
    let mut missing: HashSet<ChunkId> = HashSet::new();
    for part in ids.chunks(50_000) {
        let r: ChunkIds =
            client.send_json(reqwest::Method::POST, "/chunks/missing", &ChunkIds { ids: part.to_vec() }).await?;
        for id in r.ids {
            missing.insert(ChunkId::parse(&id)?);
        }
    }
    let uploaded = missing.len();
    let bytes = upload(client, dir, &manifest, missing).await?;
    let req = PublishRequest { app: app.into(), version: version.into(), manifest: serde_json::to_value(&manifest)? };
    let r: PublishResponse = client.send_json(reqwest::Method::POST, "/releases", &req).await?;
    if r.release.digest != manifest.digest() {
        bail!("server computed digest {} but the local tree has {}", r.release.digest, manifest.digest());
    }
    Ok(PublishSummary {
        app: app.into(),
        version: version.into(),
        digest: r.release.digest,
        created: r.created,
        chunks_total: total,
        chunks_uploaded: uploaded,
        bytes_uploaded: bytes,
        signed: r.signed,
        manifest: manifest.canonical_bytes(),
    })
}

/// Re-reads the files and uploads the chunks in `missing`, a few at a time.
/// Memory stays bounded: chunks flow through a small channel.
async fn upload(client: &Client, dir: &Path, m: &Manifest, mut missing: HashSet<ChunkId>) -> anyhow::Result<u64> {
    if missing.is_empty() {
        return Ok(0);
    }
    let files: Vec<PathBuf> = m
        .entries
        .iter()
        .filter_map(|e| match e {
            Entry::File { path, chunks, .. } if chunks.iter().any(|c| missing.contains(&c.id)) => {
                Some(dir.join(path.as_str()))
            }
            _ => None,
        })
        .collect();
    // One thread reads and cuts; compression runs on the blocking pool inside
    // each upload task, so it uses every core.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<convoy_pack::VerifiedChunk>(PARALLEL_UPLOADS * 2);
    let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        for f in files {
            chunk_file(&f, |c| {
                if missing.remove(&c.id()) {
                    tx.blocking_send(c).map_err(|_| convoy_pack::PackError::Chunk("upload stopped".into()))?;
                }
                Ok(())
            })?;
        }
        if !missing.is_empty() {
            bail!("{} chunks changed on disk while publishing; publish again", missing.len());
        }
        Ok(())
    });
    let sem = Arc::new(tokio::sync::Semaphore::new(PARALLEL_UPLOADS));
    let mut tasks = tokio::task::JoinSet::new();
    let mut bytes = 0u64;
    while let Some(chunk) = rx.recv().await {
        let permit = sem.clone().acquire_owned().await?;
        let c = client.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let id = chunk.id();
            let body = tokio::task::spawn_blocking(move || chunk.compress()).await?;
            let len = body.len() as u64;
            let resp = c
                .request(reqwest::Method::PUT, &format!("/chunks/{id}"))
                .body(body)
                .send()
                .await
                .context("uploading a chunk")?;
            Client::check(resp).await.map(|_| len)
        });
        while let Some(r) = tasks.try_join_next() {
            bytes += r??;
        }
    }
    while let Some(r) = tasks.join_next().await {
        bytes += r??;
    }
    reader.await??;
    Ok(bytes)
}
