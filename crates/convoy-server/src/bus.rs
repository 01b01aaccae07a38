//! Servers sharing one database tell each other what changed through Redis
//! (`convoy server --cache redis://HOST:PORT`): each publishes, on one
//! channel, the targets whose cached work its writes dropped and the
//! targets whose long polls it woke; each subscribes and does the same to
//! its own cache and polls. The database stays the only record: a server
//! that (re)subscribes drops its whole cache and wakes every poll it
//! holds, so nothing published while Redis was away is lost, and while it
//! is away the poll cache keeps entries only a couple of seconds.
//!
//! The client is RESP over TCP (PUBLISH on one connection, SUBSCRIBE on
//! another), reconnecting with back-off, like `nats.rs`.
//!
//! Message: `ORIGIN i TARGET|*` (cache entries dropped) or
//! `ORIGIN w TARGET|*` (long polls to wake); a server ignores its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// A subscription silent this long is asked for a PING; one that does not
/// answer within `IO_TIMEOUT` is dropped (and with it exactness).
const QUIET: Duration = Duration::from_secs(15);
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::state::AppState;

/// Messages waiting for the publishing connection; past this, they are
/// folded into one "everything changed".
const BACKLOG: usize = 10_000;
/// Largest message read (a target id is far smaller).
const MAX_MESSAGE: usize = 4096;
/// Longest a connection attempt or a reply may take.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Bus {
    tx: mpsc::Sender<String>,
    overflow: AtomicBool,
    /// Subscribed now: other servers' changes reach this one.
    pub up: AtomicBool,
    channel: String,
}

impl Bus {
    /// Publishes that `target` (or every target) changed: `kind` `i` for
    /// cached entries dropped, `w` for polls to wake.
    pub fn publish(&self, origin: &str, kind: char, target: Option<&str>) {
        let msg = format!("{origin} {kind} {}", target.unwrap_or("*"));
        if self.tx.try_send(msg).is_err() {
            self.overflow.store(true, Ordering::Relaxed);
        }
    }
}

/// Where Redis is, and the credentials it wants (`AUTH`), if any.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: String,
    auth: Option<(Option<String>, String)>,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the password
        f.write_str(&self.addr)
    }
}

/// `redis://[[USER]:PASSWORD@]HOST[:PORT][/...]`.
pub fn address(url: &str) -> anyhow::Result<Endpoint> {
    const FORM: &str = "the cache URL must be redis://[[USER]:PASSWORD@]HOST[:PORT]";
    let rest = url.strip_prefix("redis://").context(FORM)?;
    // credentials end at the last `@` (a password may hold `/`); the path
    // after the host is ignored
    let (creds, after) = match rest.rsplit_once('@') {
        Some((c, a)) => (Some(c), a),
        None => (None, rest),
    };
    let host = after.split('/').next().unwrap_or_default();
    let authority = match creds {
        Some(c) => format!("{c}@{host}"),
        None => host.to_owned(),
    };
    let (auth, hostport) = match authority.rsplit_once('@') {
        None => (None, authority.as_str()),
        Some((creds, hostport)) => {
            let (user, password) = creds.split_once(':').context(FORM)?;
            if password.is_empty() {
                bail!("{FORM}: the password is empty");
            }
            ((Some((Some(user.to_owned()).filter(|u| !u.is_empty()), password.to_owned()))), hostport)
        }
    };
    if hostport.is_empty() || hostport.contains('@') || hostport.len() > 255 {
        bail!("{FORM}");
    }
    let addr = if hostport.contains(':') { hostport.to_owned() } else { format!("{hostport}:6379") };
    Ok(Endpoint { addr, auth })
}

/// Starts publishing and subscribing for `st`; the cache publishes its
/// writes' changes through it from now on.
pub fn start(st: &AppState, url: &str) -> anyhow::Result<Arc<Bus>> {
    let addr = address(url)?;
    let (tx, rx) = mpsc::channel(BACKLOG);
    let bus = Arc::new(Bus {
        tx,
        overflow: AtomicBool::new(false),
        up: AtomicBool::new(false),
        channel: "convoy:changes".into(),
    });
    tokio::spawn(publisher(bus.clone(), addr.clone(), rx));
    tokio::spawn(subscriber(st.clone(), bus.clone(), addr));
    Ok(bus)
}

fn command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

async fn connect(to: &Endpoint) -> anyhow::Result<TcpStream> {
    let addr = &to.addr;
    let mut s = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .with_context(|| format!("connecting to Redis at {addr} timed out"))?
        .with_context(|| format!("connecting to Redis at {addr}"))?;
    s.set_nodelay(true).ok();
    if let Some((user, password)) = &to.auth {
        let cmd = match user {
            Some(u) => command(&["AUTH", u, password]),
            None => command(&["AUTH", password]),
        };
        let answer = tokio::time::timeout(IO_TIMEOUT, async {
            s.write_all(&cmd).await?;
            line(&mut BufReader::new(&mut s)).await
        })
        .await
        .with_context(|| format!("Redis at {addr} did not answer AUTH in time"))?
        .with_context(|| format!("Redis at {addr} refused the credentials"))?;
        if answer != "+OK" {
            bail!("Redis at {addr} answered AUTH with {answer:?}");
        }
    }
    Ok(s)
}

/// One RESP reply line (`+OK`, `:1`, `*3`, `$7`...), without CRLF.
async fn line(r: &mut BufReader<impl tokio::io::AsyncRead + Unpin>) -> anyhow::Result<String> {
    let mut raw = Vec::new();
    let n = (&mut *r).take(MAX_MESSAGE as u64 + 2).read_until(b'\n', &mut raw).await?;
    if n == 0 {
        bail!("Redis closed the connection");
    }
    if !raw.ends_with(b"\n") {
        bail!("a Redis reply line is too long");
    }
    let l = String::from_utf8(raw).context("a Redis reply is not UTF-8")?;
    if let Some(e) = l.strip_prefix('-') {
        bail!("Redis: {}", e.trim_end());
    }
    Ok(l.trim_end().to_owned())
}

/// A bulk string after its `$N` line.
async fn bulk(r: &mut BufReader<impl tokio::io::AsyncRead + Unpin>) -> anyhow::Result<String> {
    let head = line(r).await?;
    let n: usize = head.strip_prefix('$').and_then(|n| n.parse().ok()).context("expected a bulk string")?;
    if n > MAX_MESSAGE {
        bail!("a Redis message is too long ({n} bytes)");
    }
    let mut buf = vec![0; n + 2];
    r.read_exact(&mut buf).await?;
    buf.truncate(n);
    String::from_utf8(buf).context("a Redis message is not UTF-8")
}

async fn publisher(bus: Arc<Bus>, addr: Endpoint, mut rx: mpsc::Receiver<String>) {
    let mut backoff = Duration::from_millis(200);
    let mut held: Option<String> = None;
    loop {
        let run = async {
            let s = connect(&addr).await?;
            let (r, mut w) = s.into_split();
            let mut r = BufReader::new(r);
            loop {
                let msg = match held.take() {
                    Some(m) => m,
                    None => rx.recv().await.context("the server is stopping")?,
                };
                // messages dropped while the queue was full: everything changed
                let msg = if bus.overflow.swap(false, Ordering::Relaxed) {
                    let origin = msg.split(' ').next().unwrap_or_default().to_owned();
                    while rx.try_recv().is_ok() {}
                    for kind in ["i", "w"] {
                        let all = format!("{origin} {kind} *");
                        w.write_all(&command(&["PUBLISH", &bus.channel, &all])).await?;
                        tokio::time::timeout(IO_TIMEOUT, line(&mut r)).await.context("Redis did not answer")??;
                    }
                    continue;
                } else {
                    msg
                };
                held = Some(msg.clone());
                w.write_all(&command(&["PUBLISH", &bus.channel, &msg])).await?;
                tokio::time::timeout(IO_TIMEOUT, line(&mut r)).await.context("Redis did not answer")??;
                held = None;
                backoff = Duration::from_millis(200);
            }
            #[allow(unreachable_code)]
            Ok::<(), anyhow::Error>(())
        };
        if let Err(e) = run.await {
            if rx.is_closed() {
                return;
            }
            tracing::warn!(error = %format!("{e:#}"), "publishing changes to Redis failed; reconnecting");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn subscriber(st: AppState, bus: Arc<Bus>, addr: Endpoint) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let run = async {
            let s = connect(&addr).await?;
            let (r, mut w) = s.into_split();
            let mut r = BufReader::new(r);
            w.write_all(&command(&["SUBSCRIBE", &bus.channel])).await?;
            // *3 $9 subscribe $CHANNEL :1
            let head = tokio::time::timeout(IO_TIMEOUT, line(&mut r)).await.context("Redis did not answer")??;
            if head != "*3" || bulk(&mut r).await? != "subscribe" {
                bail!("Redis did not confirm the subscription");
            }
            bulk(&mut r).await?;
            line(&mut r).await?;
            // from now on nothing is missed; what was, is read again
            bus.up.store(true, Ordering::SeqCst);
            st.cache.set_exact(true);
            st.cache.invalidate_all();
            st.wake_all();
            tracing::info!(%addr, "sharing cache invalidations and wake-ups through Redis");
            backoff = Duration::from_millis(200);
            let mut pinged = false;
            loop {
                let wait = if pinged { IO_TIMEOUT } else { QUIET };
                let head = match tokio::time::timeout(wait, line(&mut r)).await {
                    Ok(head) => head?,
                    Err(_) if !pinged => {
                        w.write_all(&command(&["PING"])).await?;
                        pinged = true;
                        continue;
                    }
                    Err(_) => bail!("Redis did not answer a PING within {IO_TIMEOUT:?}"),
                };
                pinged = false;
                if head == "*2" {
                    // the answer to a PING in subscribed mode: "pong", ""
                    bulk(&mut r).await?;
                    bulk(&mut r).await?;
                    continue;
                }
                if head != "*3" {
                    bail!("unexpected Redis push {head:?}");
                }
                let kind = bulk(&mut r).await?;
                let _channel = bulk(&mut r).await?;
                let payload = bulk(&mut r).await?;
                if kind != "message" {
                    continue;
                }
                let mut parts = payload.splitn(3, ' ');
                let (Some(origin), Some(what), Some(target)) = (parts.next(), parts.next(), parts.next()) else {
                    tracing::debug!(%payload, "ignoring a malformed change message");
                    continue;
                };
                if origin == st.epoch {
                    continue;
                }
                match (what, target) {
                    ("i", "*") => st.cache.invalidate_all(),
                    ("i", convoy_store::ALL_WORK) => st.cache.invalidate_work(),
                    ("i", t) => st.cache.invalidate_target(t),
                    ("w", "*") => st.wake_all(),
                    ("w", t) => {
                        st.cache.invalidate_target(t);
                        st.wake_local([t]);
                    }
                    _ => tracing::debug!(%payload, "ignoring an unknown change message"),
                }
            }
        };
        let r: anyhow::Result<()> = run.await;
        bus.up.store(false, Ordering::SeqCst);
        st.cache.set_exact(false);
        if let Err(e) = r {
            tracing::warn!(error = %format!("{e:#}"), "the Redis subscription ended; polls read the database until it is back");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cache_urls() {
        assert_eq!(super::address("redis://127.0.0.1:6380").unwrap().addr, "127.0.0.1:6380");
        assert_eq!(super::address("redis://cache/0").unwrap().addr, "cache:6379");
        assert!(super::address("http://x").is_err());
        let e = super::address("redis://user:pw@x:1").unwrap();
        assert_eq!((e.addr.as_str(), e.auth), ("x:1", Some((Some("user".into()), "pw".into()))));
        assert_eq!(super::address("redis://:pw@x").unwrap().auth, Some((None, "pw".into())));
        assert!(super::address("redis://pw@x").is_err(), "USER:PASSWORD or :PASSWORD");
        assert!(super::address("redis://u:@x").is_err());
        assert_eq!(super::address("redis://:secret@x").unwrap().to_string(), "x:6379", "never shown");
        let e = super::address("redis://:ab/cd@x:2/0").unwrap();
        assert_eq!((e.addr.as_str(), e.auth), ("x:2", Some((None, "ab/cd".into()))), "a password with a slash");
    }
}
