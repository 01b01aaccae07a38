//! Deployment requests over NATS (P-instructions): the server subscribes
//! to a subject (in the queue group `convoy`, so one of several servers
//! takes each message) and treats every message like `POST /deployments`:
//! the same validation, the same authentication (a token in the message),
//! the same result, sent back to the message's reply subject.
//!
//! Message: `{"token": "...", "request": DeployRequest}`.
//! Reply: `{"ok": true, "deployment": DeploymentInfo}` or
//! `{"ok": false, "error": {"code", "message"}}`.
//!
//! The client is the NATS text protocol (INFO, CONNECT, SUB, MSG, PUB,
//! PING/PONG) over one TCP connection, reconnecting with back-off.

use std::time::Duration;

use anyhow::{bail, Context};
use convoy_domain::Role;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::error::ApiError;
use crate::state::AppState;

/// Largest message taken (NATS' own default limit is 1 MiB).
const MAX_MESSAGE: usize = 1 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Message {
    token: String,
    request: convoy_wire::DeployRequest,
}

/// Runs until the process ends.
pub async fn run(st: AppState, url: String, subject: String) {
    let mut backoff = Duration::from_millis(500);
    loop {
        match session(&st, &url, &subject).await {
            Ok(()) => backoff = Duration::from_millis(500),
            Err(e) => tracing::warn!(%url, error = %format!("{e:#}"), "NATS connection lost; reconnecting"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

fn host_port(url: &str) -> anyhow::Result<&str> {
    let rest = url.strip_prefix("nats://").unwrap_or(url);
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || rest.contains('@') {
        bail!("NATS URL {url:?} must be nats://HOST:PORT");
    }
    Ok(rest)
}

/// Checks a NATS URL and subject before the server starts.
pub fn check(url: &str, subject: &str) -> anyhow::Result<()> {
    host_port(url)?;
    if subject.is_empty() || subject.len() > 256 || subject.contains(char::is_whitespace) {
        bail!("NATS subject {subject:?} must be non-empty, without spaces");
    }
    Ok(())
}

async fn session(st: &AppState, url: &str, subject: &str) -> anyhow::Result<()> {
    let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(host_port(url)?))
        .await
        .context("connecting")??;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    r.read_line(&mut line).await?;
    if !line.starts_with("INFO") {
        bail!("not a NATS server: {:?}", line.trim());
    }
    let connect = serde_json::json!({"verbose": false, "pedantic": false, "name": "convoy-server", "lang": "rust", "version": env!("CARGO_PKG_VERSION"), "protocol": 1});
    w.write_all(format!("CONNECT {connect}\r\nSUB {subject} convoy 1\r\nPING\r\n").as_bytes()).await?;
    tracing::info!(%url, %subject, "taking deployment requests from NATS");
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            bail!("the NATS server closed the connection");
        }
        let l = line.trim_end();
        let mut parts = l.split_ascii_whitespace();
        match parts.next() {
            Some("PING") => w.write_all(b"PONG\r\n").await?,
            Some("PONG" | "+OK" | "INFO") => {}
            Some("-ERR") => bail!("NATS error: {l}"),
            Some("MSG") => {
                let args: Vec<&str> = parts.collect();
                let (reply, len) = match args[..] {
                    [_, _, len] => (None, len),
                    [_, _, reply, len] => (Some(reply.to_owned()), len),
                    _ => bail!("malformed MSG line {l:?}"),
                };
                let len: usize = len.parse().context("MSG length")?;
                let mut payload = vec![0; len + 2];
                r.read_exact(&mut payload).await?;
                payload.truncate(len);
                let answer = handle(st, &payload).await;
                if let Some(reply) = reply {
                    let body = answer.to_string();
                    w.write_all(format!("PUB {reply} {}\r\n{body}\r\n", body.len()).as_bytes()).await?;
                }
            }
            _ => tracing::debug!(line = %l, "ignoring NATS line"),
        }
    }
}

fn refusal(e: ApiError) -> serde_json::Value {
    serde_json::json!({"ok": false, "error": {"code": e.code, "status": e.status.as_u16(), "message": e.message}})
}

async fn handle(st: &AppState, payload: &[u8]) -> serde_json::Value {
    crate::metrics::add(&st.counters.nats_requests, 1);
    if payload.len() > MAX_MESSAGE {
        return refusal(ApiError::bad_request(format!("message larger than {MAX_MESSAGE} bytes")));
    }
    let m: Message = match serde_json::from_slice(payload) {
        Ok(m) => m,
        Err(e) => {
            return refusal(ApiError::bad_request(format!(
                "malformed request: {e}; expected {{\"token\": \"...\", \"request\": {{\"app\", \"version\", \"selector\", ...}}}}"
            )))
        }
    };
    let user = match crate::auth::require_token(st, &m.token, Role::Deployer).await {
        Ok(u) => u,
        Err(e) => return refusal(e),
    };
    match crate::app::requests::submit(st, &user, m.request).await.map_err(ApiError::from) {
        Ok(d) => {
            tracing::info!(deployment = %d.id, user = %user.name, "deployment requested over NATS");
            serde_json::json!({"ok": true, "deployment": d})
        }
        Err(e) => refusal(e),
    }
}
