//! Chunks in an S3-compatible object store (`--store s3://BUCKET/PREFIX`),
//! so that several servers share one copy: a [`convoy_pack::Remote`] over
//! the `object_store` crate. The chunk store's calls are blocking (they run
//! on blocking threads); each one runs on the server's runtime with a
//! deadline and a bounded number of retries.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, PutPayload, RetryConfig};

/// Where and how to reach the object store.
#[derive(Clone, Default)]
pub struct S3Config {
    /// `s3://BUCKET` or `s3://BUCKET/PREFIX`.
    pub url: String,
    /// `http(s)://HOST:PORT` of an S3-compatible server; AWS when unset.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

/// Never shows the secret key (logs, panics).
impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("url", &self.url)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Longest any one object call may take, retries included.
const DEADLINE: Duration = Duration::from_secs(60);

pub struct S3Chunks {
    store: Arc<dyn ObjectStore>,
    bucket: String,
    prefix: String,
    rt: tokio::runtime::Handle,
}

impl std::fmt::Debug for S3Chunks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

impl S3Chunks {
    /// Connects lazily (the first call reaches the server); call from
    /// within the server's runtime. Credentials come from the config, else
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
    pub fn open(c: &S3Config) -> anyhow::Result<Self> {
        let rest = c
            .url
            .strip_prefix("s3://")
            .with_context(|| format!("object store {:?}: expected s3://BUCKET[/PREFIX]", c.url))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        anyhow::ensure!(
            !bucket.is_empty() && bucket.len() <= 63,
            "object store {:?}: the bucket name is 1 to 63 characters",
            c.url
        );
        let prefix = prefix.trim_matches('/').to_owned();
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(Duration::from_secs(30))
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_allow_http(c.endpoint.as_deref().is_some_and(|e| e.starts_with("http://"))),
            )
            .with_retry(RetryConfig { max_retries: 3, retry_timeout: DEADLINE / 2, backoff: Default::default() });
        if let Some(e) = &c.endpoint {
            b = b.with_endpoint(e);
        }
        if let Some(r) = &c.region {
            b = b.with_region(r);
        }
        if let Some(k) = &c.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(k) = &c.secret_access_key {
            b = b.with_secret_access_key(k);
        }
        let store = b.build().with_context(|| format!("object store {}", c.url))?;
        Ok(Self {
            store: Arc::new(store),
            bucket: bucket.to_owned(),
            prefix,
            rt: tokio::runtime::Handle::try_current().context("the object store needs the server's runtime")?,
        })
    }

    fn path(&self, key: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{}/{key}", self.prefix))
        }
    }

    /// Runs `f` on the runtime from a blocking caller, within [`DEADLINE`].
    fn block<T>(&self, what: &str, key: &str, f: impl Future<Output = object_store::Result<T>>) -> io::Result<T> {
        // the deadline is made inside the runtime (a caller may have none)
        let fut = async move { tokio::time::timeout(DEADLINE, f).await };
        let run = || self.rt.block_on(fut);
        let r = match tokio::runtime::Handle::try_current() {
            // on a worker thread: let the others carry on meanwhile
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(run)
            }
            _ => run(),
        };
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(io::Error::other(format!("{what} {self:?}/{key}: {e}"))),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{what} {self:?}/{key}: no answer within {}s", DEADLINE.as_secs()),
            )),
        }
    }
}

fn absent<T>(r: object_store::Result<T>) -> object_store::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

impl convoy_pack::Remote for S3Chunks {
    fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        let path = self.path(key);
        self.block("reading", key, async {
            match absent(self.store.get(&path).await)? {
                Some(r) => Ok(Some(r.bytes().await?.to_vec())),
                None => Ok(None),
            }
        })
    }

    fn head(&self, key: &str) -> io::Result<Option<u64>> {
        let path = self.path(key);
        self.block("looking up", key, async { Ok(absent(self.store.head(&path).await)?.map(|m| m.size)) })
    }

    fn put(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
        let path = self.path(key);
        let payload = PutPayload::from(bytes.to_vec());
        self.block("writing", key, async { self.store.put(&path, payload).await.map(|_| ()) })
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        let path = self.path(key);
        self.block("removing", key, async { absent(self.store.delete(&path).await).map(|_| ()) })
    }
}
