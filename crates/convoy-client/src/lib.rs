//! HTTP client of the convoy API, shared by the agent and the operator CLI:
//! bearer token, JSON errors decoded into [`ServerError`].

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use convoy_wire::{ErrorBody, API};
use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    /// For relays and mirrors: the agent's current read grant, sent
    /// instead of any token (see `convoy_wire::sign`).
    grant: Option<GrantCell>,
}

/// A read grant shared by every client that shows it, renewed in place.
pub type GrantCell = std::sync::Arc<std::sync::RwLock<String>>;

/// An error the server answered with (4xx/5xx), as opposed to a network error.
#[derive(Debug, thiserror::Error)]
#[error("server said {status}: {message}")]
pub struct ServerError {
    pub status: u16,
    pub message: String,
    /// Seconds the server asked the client to wait (`Retry-After`, on 429/503).
    pub retry_after: Option<u64>,
}

/// Whether `e` says no server answered at all (refused, unreachable, timed
/// out, TLS or DNS failure), as opposed to a server that answered with an
/// error.
pub fn unreachable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<reqwest::Error>().is_some_and(|r| r.is_connect() || r.is_timeout()))
}

impl Client {
    /// A client of `server` (`http://` or `https://`). `ca_cert` is a PEM
    /// file of certificate authorities to trust besides the system's, for
    /// servers with a private or self-signed certificate.
    pub fn new(server: &str, token: &str, ca_cert: Option<&Path>) -> anyhow::Result<Self> {
        let url = reqwest::Url::parse(server)
            .with_context(|| format!("invalid server URL {server:?}: expected http(s)://HOST:PORT"))?;
        if !matches!(url.scheme(), "http" | "https") {
            anyhow::bail!("invalid server URL {server:?}: expected http(s)://HOST:PORT");
        }
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path).with_context(|| format!("reading CA certificate {}", path.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("parsing CA certificate {}", path.display()))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().context("building HTTP client")?;
        Ok(Self { http, base: format!("{}{API}", server.trim_end_matches('/')), token: token.to_owned(), grant: None })
    }

    /// The same client (TLS roots, token) talking to another base URL.
    pub fn with_base(&self, server: &str) -> anyhow::Result<Self> {
        let url = reqwest::Url::parse(server)
            .with_context(|| format!("invalid server URL {server:?}: expected http(s)://HOST:PORT"))?;
        if !matches!(url.scheme(), "http" | "https") {
            anyhow::bail!("invalid server URL {server:?}: expected http(s)://HOST:PORT");
        }
        Ok(Self { base: format!("{}{API}", server.trim_end_matches('/')), ..self.clone() })
    }

    /// The base URL this client talks to (without the API prefix).
    pub fn server(&self) -> &str {
        self.base.strip_suffix(API).unwrap_or(&self.base)
    }

    /// The underlying HTTP client (TLS roots, no token): for plain file
    /// mirrors, which must never see a convoy token.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn with_token(&self, token: &str) -> Self {
        Self { token: token.to_owned(), grant: None, ..self.clone() }
    }

    /// The same client talking to a relay or mirror at `server`: it shows
    /// the read grant and never the token (an agent's credential goes to
    /// its server only).
    pub fn for_relay(&self, server: &str, grant: &GrantCell) -> anyhow::Result<Self> {
        Ok(Self { token: String::new(), grant: Some(grant.clone()), ..self.with_base(server)? })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, self.url(path));
        match &self.grant {
            Some(g) => req.header(convoy_wire::sign::GRANT_HEADER, g.read().expect("grant lock").as_str()),
            None => req.bearer_auth(&self.token),
        }
    }

    pub async fn check(resp: reqwest::Response) -> anyhow::Result<reqwest::Response> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| s.min(3600));
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ErrorBody>(&text).map(|b| b.error.message).unwrap_or(text);
        Err(ServerError { status: status.as_u16(), message, retry_after }.into())
    }

    pub async fn get_json<T: DeserializeOwned>(&self, path: &str, timeout: Duration) -> anyhow::Result<T> {
        let resp = self
            .request(reqwest::Method::GET, path)
            .timeout(timeout)
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        Self::check(resp).await?.json().await.with_context(|| format!("decoding answer of GET {path}"))
    }

    /// [`Client::get_json`] refusing answers longer than `max` bytes (from
    /// a relay or mirror that may be hostile).
    pub async fn get_json_capped<T: DeserializeOwned>(
        &self,
        path: &str,
        timeout: Duration,
        max: usize,
    ) -> anyhow::Result<T> {
        let body = self.get_bytes_capped(path, timeout, max).await?;
        serde_json::from_slice(&body).with_context(|| format!("decoding answer of GET {path}"))
    }

    /// The answer's bytes, refused once longer than `max`.
    pub async fn get_bytes_capped(&self, path: &str, timeout: Duration, max: usize) -> anyhow::Result<Vec<u8>> {
        let resp = self
            .request(reqwest::Method::GET, path)
            .timeout(timeout)
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let mut resp = Self::check(resp).await?;
        if resp.content_length().is_some_and(|n| n > max as u64) {
            anyhow::bail!("answer of GET {path} is longer than {max} bytes");
        }
        let mut body = Vec::new();
        while let Some(piece) = resp.chunk().await.with_context(|| format!("reading answer of GET {path}"))? {
            if body.len() + piece.len() > max {
                anyhow::bail!("answer of GET {path} is longer than {max} bytes");
            }
            body.extend_from_slice(&piece);
        }
        Ok(body)
    }

    pub async fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let resp = self
            .request(method.clone(), path)
            .timeout(Duration::from_secs(120))
            .json(body)
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        Self::check(resp).await?.json().await.with_context(|| format!("decoding answer of {method} {path}"))
    }

    pub async fn get_bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let resp = self
            .request(reqwest::Method::GET, path)
            .timeout(Duration::from_secs(300))
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        Ok(Self::check(resp).await?.bytes().await?.to_vec())
    }
}

/// True when retrying cannot help (the server refused the request itself).
pub fn is_permanent(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ServerError>()
        .is_some_and(|s| (400..500).contains(&s.status) && s.status != 408 && s.status != 429)
}

pub fn short(e: &anyhow::Error) -> String {
    format!("{e:#}")
}
