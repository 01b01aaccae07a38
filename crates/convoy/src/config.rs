//! Layered configuration of the long-running processes: built-in defaults,
//! then a TOML file (`--config`), then `CONVOY_*` environment variables, then
//! flags (clap merges the last two). Unknown keys in the file are refused.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// `convoy server --config FILE`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// Address to listen on (default 127.0.0.1:7420).
    pub listen: Option<SocketAddr>,
    /// SQLite database and chunk store (default ./convoy-data).
    pub data_dir: Option<PathBuf>,
    /// `postgres://...` or `sqlite://...` (default: SQLite in data_dir).
    pub database: Option<String>,
    /// Admin token to accept; stored hashed.
    pub admin_token: Option<String>,
    /// Agent enrolment token to accept; stored hashed.
    pub enrol_token: Option<String>,
    /// PEM certificate chain; with `tls_key`, the server speaks HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Mirrors agents may fetch content from: `http(s)://` convoy servers
    /// sharing the database, or `store+http(s)://` copies of the chunk store.
    pub mirrors: Option<Vec<String>>,
    pub nats: Option<String>,
    pub nats_subject: Option<String>,
    /// Enrolments per minute per enrolment token / per source address (0: no limit).
    pub enrol_rate_token: Option<u32>,
    pub enrol_rate_address: Option<u32>,
    /// Secret sealing the server's signing key (same on servers sharing a database).
    pub key_secret_file: Option<PathBuf>,
    /// Releases before a new one that its deltas are made from at publish (default 3).
    pub delta_from_last: Option<usize>,
    /// MiB of made deltas and first-install streams kept on disk (default 4096).
    pub delta_cache_mib: Option<u64>,
    /// redis://HOST:PORT shared by servers on one database.
    pub cache: Option<String>,
    /// s3://BUCKET[/PREFIX]: chunks in an S3-compatible object store.
    pub store: Option<String>,
    /// http(s)://HOST:PORT of the object store (default: AWS).
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    /// Credentials (default: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<String>,
    /// Tenant of the hawkBit DDI endpoint (default DEFAULT).
    pub ddi_tenant: Option<String>,
    /// Seconds DDI devices wait between polls (default 60).
    pub ddi_poll_secs: Option<u64>,
}

/// `convoy agent --config FILE`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    /// Server URL.
    pub server: Option<String>,
    /// Enrolment token (only needed until the agent has enrolled).
    pub token: Option<String>,
    /// PEM certificate authorities to trust for an `https://` server.
    pub ca_cert: Option<PathBuf>,
    /// Directory for releases/, current/ and the agent's state.
    pub root: Option<PathBuf>,
    /// Labels, e.g. `{ site = "sh", role = "web" }`.
    pub labels: Option<BTreeMap<String, String>>,
    /// Name reported instead of the hostname.
    pub name: Option<String>,
    /// Download rate limit in bytes per second.
    pub max_rate: Option<u64>,
    /// Seconds a work poll stays open (1-60, default 25).
    pub poll_wait: Option<u64>,
    /// Releases kept per app besides the live one and its rollback target (default 5).
    pub keep_releases: Option<usize>,
    pub reserve_disk: Option<String>,
    /// Memory staging may use, in bytes; larger deltas are fetched as chunks (0: no deltas).
    pub max_memory: Option<u64>,
    /// Serve this site's agents as a relay (needs `listen`).
    pub relay: Option<bool>,
    /// Address the relay listens on.
    pub listen: Option<std::net::SocketAddr>,
    /// URL agents reach the relay at (default `http://LISTEN`).
    pub relay_url: Option<String>,
    /// Parent relay to fetch from instead of the server.
    pub upstream: Option<String>,
    /// The environment this machine belongs to (only its deployments, with
    /// its approvers' signatures where it has an approver role).
    pub environment: Option<String>,
    /// Long-poll this relay for work instead of the server.
    pub poll_via: Option<String>,
}

pub fn load<T: for<'de> Deserialize<'de> + Default>(path: Option<&Path>) -> anyhow::Result<T> {
    let Some(path) = path else { return Ok(T::default()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_parse_and_refuse_unknown_keys() {
        let a: AgentFile = toml::from_str("root = '/srv'\nlabels = { site = 'sh' }\nmax_rate = 1000\n").unwrap();
        assert_eq!(a.labels.unwrap()["site"], "sh");
        assert!(toml::from_str::<AgentFile>("roots = '/srv'").is_err());
        assert!(toml::from_str::<ServerFile>("listen = 'not an address'").is_err());
        let s: ServerFile = toml::from_str("listen = '127.0.0.1:9000'\n").unwrap();
        assert_eq!(s.listen.unwrap().port(), 9000);
    }

    /// The samples shipped in packaging/ stay valid.
    #[test]
    fn packaged_samples_parse() {
        let s: ServerFile = toml::from_str(include_str!("../../../packaging/server.toml")).unwrap();
        assert_eq!(s.data_dir.unwrap(), PathBuf::from("/var/lib/convoy"));
        let a: AgentFile = toml::from_str(include_str!("../../../packaging/agent.toml")).unwrap();
        assert_eq!(a.labels.unwrap()["role"], "web");
    }
}
