//! `convoy pack` and `convoy publish`: chunk the tree, ask the server which
//! chunks it lacks, upload only those (verified server-side), then the manifest.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use convoy_client::Client;
use convoy_domain::{AppName, Version};
use convoy_pack::{chunk_file, pack_tree, ChunkId, Entry, Manifest};
use convoy_wire::{ChunkIds, Provenance, PublishRequest, PublishResponse};
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

/// The build's provenance: `given` (from flags) where set, else what the CI
/// says in its own environment variables (GitHub Actions, GitLab CI).
pub fn provenance(given: Provenance, env: impl Fn(&str) -> Option<String>) -> Provenance {
    let var = |k: &str| env(k).filter(|v| !v.is_empty());
    let from_ci = if var("GITHUB_ACTIONS").is_some() {
        let server = var("GITHUB_SERVER_URL").unwrap_or_else(|| "https://github.com".into());
        let repo = var("GITHUB_REPOSITORY");
        Provenance {
            commit: var("GITHUB_SHA").unwrap_or_default(),
            branch: var("GITHUB_HEAD_REF").or_else(|| var("GITHUB_REF_NAME")).unwrap_or_default(),
            ci_url: match (&repo, var("GITHUB_RUN_ID")) {
                (Some(r), Some(id)) => format!("{server}/{r}/actions/runs/{id}"),
                _ => String::new(),
            },
            repository: repo.map(|r| format!("{server}/{r}")).unwrap_or_default(),
        }
    } else if var("GITLAB_CI").is_some() {
        Provenance {
            commit: var("CI_COMMIT_SHA").unwrap_or_default(),
            branch: var("CI_COMMIT_REF_NAME").unwrap_or_default(),
            ci_url: var("CI_JOB_URL").or_else(|| var("CI_PIPELINE_URL")).unwrap_or_default(),
            repository: var("CI_PROJECT_URL").unwrap_or_default(),
        }
    } else {
        Provenance::default()
    };
    let pick = |flag: String, ci: String| if flag.is_empty() { ci } else { flag };
    Provenance {
        commit: pick(given.commit, from_ci.commit),
        branch: pick(given.branch, from_ci.branch),
        ci_url: pick(given.ci_url, from_ci.ci_url),
        repository: pick(given.repository, from_ci.repository),
    }
}

pub async fn publish(
    client: &Client,
    dir: &Path,
    app: &str,
    version: &str,
    provenance: Provenance,
) -> anyhow::Result<PublishSummary> {
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
    let req = PublishRequest {
        app: app.into(),
        version: version.into(),
        manifest: serde_json::to_value(&manifest)?,
        provenance: (!provenance.is_empty()).then_some(provenance),
    };
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

#[cfg(test)]
mod provenance_tests {
    use convoy_wire::Provenance;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn provenance_comes_from_flags_then_the_ci() {
        let gh = [
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_SHA", "0123abcd"),
            ("GITHUB_REF_NAME", "main"),
            ("GITHUB_SERVER_URL", "https://github.com"),
            ("GITHUB_REPOSITORY", "acme/shop"),
            ("GITHUB_RUN_ID", "42"),
        ];
        let p = super::provenance(Provenance::default(), env(&gh));
        assert_eq!(p.commit, "0123abcd");
        assert_eq!(p.branch, "main");
        assert_eq!(p.ci_url, "https://github.com/acme/shop/actions/runs/42");
        assert_eq!(p.repository, "https://github.com/acme/shop");
        let flags = Provenance { commit: "feedbeef".into(), ..Default::default() };
        assert_eq!(super::provenance(flags, env(&gh)).commit, "feedbeef", "a flag wins");
        let gl = [
            ("GITLAB_CI", "true"),
            ("CI_COMMIT_SHA", "99aa"),
            ("CI_COMMIT_REF_NAME", "release/2"),
            ("CI_JOB_URL", "https://gitlab.example/acme/shop/-/jobs/7"),
        ];
        let p = super::provenance(Provenance::default(), env(&gl));
        assert_eq!((p.commit.as_str(), p.branch.as_str()), ("99aa", "release/2"));
        assert_eq!(p.ci_url, "https://gitlab.example/acme/shop/-/jobs/7");
        assert!(super::provenance(Provenance::default(), env(&[])).is_empty(), "outside CI: nothing");
    }
}
