//! Requests over NATS, and two servers sharing one PostgreSQL database
//! (only one runs the scheduler). Each runs when CI's services are named:
//! `CONVOY_TEST_NATS_URL`, `CONVOY_TEST_DATABASE_URL`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(90);

/// One request-reply over NATS' text protocol: publishes `payload` on
/// `subject` and returns the reply.
fn nats_request(url: &str, subject: &str, payload: &[u8]) -> serde_json::Value {
    let addr = url.strip_prefix("nats://").unwrap_or(url);
    let s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("INFO"), "{line}");
    let inbox = format!("_INBOX.convoy-test.{:016x}", rand::random::<u64>());
    write!(w, "CONNECT {{\"verbose\":false}}\r\nSUB {inbox} 1\r\nPING\r\n").unwrap();
    // wait for the subscription to be in place before publishing
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.starts_with("PONG") {
            break;
        }
    }
    write!(w, "PUB {subject} {inbox} {}\r\n", payload.len()).unwrap();
    w.write_all(payload).unwrap();
    w.write_all(b"\r\n").unwrap();
    loop {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "NATS closed the connection");
        if line.starts_with("PING") {
            w.write_all(b"PONG\r\n").unwrap();
        }
        if let Some(rest) = line.strip_prefix("MSG ") {
            let len: usize = rest.split_whitespace().last().unwrap().parse().unwrap();
            let mut body = vec![0; len + 2];
            r.read_exact(&mut body).unwrap();
            body.truncate(len);
            return serde_json::from_slice(&body).unwrap();
        }
    }
}

#[test]
#[ignore = "needs NATS (CONVOY_TEST_NATS_URL, else 127.0.0.1:4222): cargo test -- --include-ignored"]
fn a_request_over_nats_ends_like_one_over_http() {
    let nats = service_url("CONVOY_TEST_NATS_URL", "nats://127.0.0.1:4222");
    let subject = format!("convoy.test.{:016x}", rand::random::<u64>());
    let mut f = Fleet::start_with_args(&["--nats", &nats, "--nats-subject", &subject]);
    wait_until("the server to subscribe", Duration::from_secs(20), || {
        f.server.as_ref().unwrap().log_text().contains("taking deployment requests from NATS").then_some(())
    });
    f.start_agent("a", "site=sh,role=web", &[], &[]);
    f.start_agent("b", "site=bj,role=web", &[], &[]);
    for v in ["1.0", "2.0"] {
        let src = f.path(&format!("src/{v}"));
        write_app(&src, v, 20_000);
        f.ok(&["publish", src.to_str().unwrap(), "--app", "web", "--version", v]);
    }
    let alice = f.ok(&["users", "add", "alice", "--role", "deployer"]).trim().to_owned();
    let viewer = f.ok(&["users", "add", "vic", "--role", "viewer"]).trim().to_owned();
    f.ok(&["env", "set", "prod", "--waves", "1,100%"]);

    // over HTTP
    let out = std::process::Command::new(EXE)
        .args(["deploy", "web@1.0", "--env", "prod", "--selector", "role=web", "--reason", "http", "--output", "json"])
        .env("CONVOY_SERVER", &f.url)
        .env("CONVOY_TOKEN", &alice)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let http_id = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["id"].as_str().unwrap().to_owned();
    let by_http = f.wait_state(&http_id, &["succeeded", "failed", "rolled_back"], LONG);

    // the same request over NATS
    let msg = serde_json::json!({"token": alice, "request": {"app": "web", "version": "2.0", "selector": "role=web", "env": "prod", "reason": "nats"}});
    let reply = nats_request(&nats, &subject, msg.to_string().as_bytes());
    assert_eq!(reply["ok"], true, "{reply:#}");
    let nats_id = reply["deployment"]["id"].as_str().unwrap().to_owned();
    let by_nats = f.wait_state(&nats_id, &["succeeded", "failed", "rolled_back"], LONG);

    for (what, d) in [("http", &by_http), ("nats", &by_nats)] {
        assert_eq!(d["deployment"]["state"], "succeeded", "{what}: {d:#}");
        assert_eq!(d["deployment"]["created_by"], "alice", "{what}");
        assert_eq!(d["deployment"]["env"], "prod", "{what}");
        assert_eq!(d["deployment"]["reason"], what);
        let waves: Vec<i64> =
            d["plan"]["waves"].as_array().unwrap().iter().map(|w| w["targets"].as_i64().unwrap()).collect();
        assert_eq!(waves, vec![1, 1], "{what}");
        let states: Vec<&str> = d["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["instruction_id"].is_null())
            .map(|e| e["to"].as_str().unwrap())
            .collect();
        assert_eq!(
            states,
            by_http["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["instruction_id"].is_null())
                .map(|e| e["to"].as_str().unwrap())
                .collect::<Vec<_>>(),
            "{what}: the same path"
        );
    }
    assert_eq!(f.live("web"), vec![("a".to_owned(), Some("2.0".to_owned())), ("b".to_owned(), Some("2.0".to_owned()))]);

    // the same validation and authentication: nothing recorded for any of these
    let before = f.json(&["deployments"]).as_array().unwrap().len();
    for (payload, want) in [
        (serde_json::json!({"token": viewer, "request": {"app": "web", "version": "2.0", "selector": "role=web"}}).to_string(), "deployer role"),
        (serde_json::json!({"token": "wrong-token-wrong", "request": {"app": "web", "version": "2.0"}}).to_string(), "unknown or revoked token"),
        (serde_json::json!({"token": alice, "request": {"app": "web", "version": "9.9", "selector": "role=web", "env": "prod"}}).to_string(), "not found"),
        (serde_json::json!({"token": alice, "request": {"app": "web", "version": "2.0", "selector": "role=web", "env": "nope"}}).to_string(), "environment \"nope\" not found"),
        ("{not json".to_owned(), "malformed request"),
        (serde_json::json!({"token": alice, "request": {"app": "web", "version": "2.0", "selector": "role=web"}}).to_string(), "add --env NAME"),
    ] {
        let reply = nats_request(&nats, &subject, payload.as_bytes());
        assert_eq!(reply["ok"], false, "{payload}: {reply:#}");
        let msg = reply["error"]["message"].as_str().unwrap();
        assert!(msg.contains(want), "{payload}: {msg}");
    }
    assert_eq!(f.json(&["deployments"]).as_array().unwrap().len(), before);
}

/// A PostgreSQL schema of the test's own, migrated, and dropped with the
/// value (declared before the servers that use it, so dropped after them).
struct Schema {
    name: String,
    /// `url` with the schema as its search path.
    url: String,
    rt: tokio::runtime::Runtime,
    store: Option<convoy_store_postgres::PgStore>,
}

impl Schema {
    fn new(url: &str, prefix: &str) -> Self {
        let name = format!("{prefix}{:016x}", rand::random::<u64>());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let store = rt.block_on(convoy_store_postgres::PgStore::connect(url, Some(&name))).unwrap();
        let sep = if url.contains('?') { '&' } else { '?' };
        let url = format!("{url}{sep}options[search_path]={name}");
        Schema { name, url, rt, store: Some(store) }
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        if let Some(store) = self.store.take() {
            if let Err(e) = self.rt.block_on(store.drop_schema(&self.name)) {
                eprintln!("could not drop the test schema {}: {e}", self.name);
            }
        }
    }
}

fn metric(port: u16, name: &str) -> u64 {
    let (_, body) = http(port, "GET", "/metrics", None, b"").unwrap();
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {body}"))
}

#[test]
#[ignore = "needs PostgreSQL (CONVOY_TEST_DATABASE_URL, else 127.0.0.1:5432): cargo test -- --include-ignored"]
fn two_servers_on_one_postgres_one_scheduler() {
    let url = postgres_url();
    let pg = Schema::new(&url, "convoy_two_");
    let db = pg.url.clone();
    let mut one = Fleet::start_with(Some(db.clone()));
    let mut two = Fleet::start_with(Some(db));
    let leaders = || [metric(one.port, "convoy_scheduler_leader"), metric(two.port, "convoy_scheduler_leader")];
    let l = wait_until("one scheduler", Duration::from_secs(20), || {
        let l = leaders();
        (l.iter().sum::<u64>() == 1).then_some(l)
    });
    // it stays one
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(leaders().iter().sum::<u64>(), 1, "{:?}", leaders());
    }
    // a deployment through the server that is not the leader still moves:
    // the leader dispatches it
    let (leader, follower) = if l[0] == 1 { (&mut one, &mut two) } else { (&mut two, &mut one) };
    // the agent holds its polls open long: it learns of the leader's moves
    // because the server it polls looks again every few seconds
    follower.start_agent("a", "role=web", &[], &["--poll-wait", "60"]);
    let src = follower.path("src/1.0");
    write_app(&src, "1.0", 10_000);
    follower.ok(&["publish", src.to_str().unwrap(), "--app", "web", "--version", "1.0"]);
    let started = std::time::Instant::now();
    let id = follower.json(&["deploy", "web@1.0", "--selector", "role=web"])["id"].as_str().unwrap().to_owned();
    let d = follower.wait_state(&id, &["succeeded", "failed", "rolled_back"], LONG);
    assert!(started.elapsed() < Duration::from_secs(45), "the poll was not held for its whole minute");
    assert_eq!(d["deployment"]["state"], "succeeded", "{d:#}");
    assert!(d["events"].as_array().unwrap().iter().any(|e| e["actor"] == "scheduler"));
    assert!(metric(leader.port, "convoy_scheduler_transitions_total") > 0);
    assert_eq!(metric(follower.port, "convoy_scheduler_transitions_total"), 0, "only the leader dispatches");

    // the leader dies: the other takes over once its lease runs out
    leader.kill_server();
    let fport = follower.port;
    wait_until("the other server to take over", Duration::from_secs(30), || {
        (metric(fport, "convoy_scheduler_leader") == 1).then_some(())
    });
}

/// A Redis of the test's own on a free loopback port (no persistence), so
/// that it can be stopped and started again.
struct Redis {
    child: std::process::Child,
    port: u16,
}

impl Redis {
    fn start(port: u16) -> Self {
        Self::start_with(port, &[])
    }
    fn start_with(port: u16, extra: &[&str]) -> Self {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) runs the cache bus test");
        wait_until("redis-server to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Self { child, port }
    }
    fn stop(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two servers on one PostgreSQL and one Redis: the scheduler's moves on
/// one wake a poll held on the other at once (its poll cache is told
/// through Redis, so it holds polls for their whole wait), and work made
/// while Redis is down still arrives.
#[test]
#[ignore = "needs PostgreSQL (CONVOY_TEST_DATABASE_URL, else 127.0.0.1:5432) and redis-server: cargo test -- --include-ignored"]
fn two_servers_share_wake_ups_through_redis_and_lose_nothing_when_it_restarts() {
    let url = postgres_url();
    let mut redis = Redis::start(free_port());
    let cache = format!("redis://127.0.0.1:{}", redis.port);
    let pg = Schema::new(&url, "convoy_bus_");
    let db = pg.url.clone();
    let mut one = Fleet::start_on(db.clone(), &["--cache", &cache]);
    let mut two = Fleet::start_on(db, &["--cache", &cache]);
    let l = wait_until("one scheduler", Duration::from_secs(20), || {
        let l = [metric(one.port, "convoy_scheduler_leader"), metric(two.port, "convoy_scheduler_leader")];
        (l.iter().sum::<u64>() == 1).then_some(l)
    });
    let follower = if l[0] == 1 { &mut two } else { &mut one };
    wait_until("the follower to subscribe", Duration::from_secs(20), || {
        follower.server.as_ref().unwrap().log_text().contains("through Redis").then_some(())
    });
    // polls held for a whole minute: only a wake-up through Redis ends them early
    follower.start_agent("a", "role=web", &[], &["--poll-wait", "60"]);
    for v in ["1.0", "2.0"] {
        let src = follower.path(&format!("src/{v}"));
        write_app(&src, v, 10_000);
        follower.ok(&["publish", src.to_str().unwrap(), "--app", "web", "--version", v]);
    }
    // let the agent's first poll settle into its long wait
    std::thread::sleep(Duration::from_secs(3));
    let started = std::time::Instant::now();
    let id = follower.json(&["deploy", "web@1.0", "--selector", "role=web"])["id"].as_str().unwrap().to_owned();
    let d = follower.wait_state(&id, &["succeeded", "failed", "rolled_back"], LONG);
    assert_eq!(d["deployment"]["state"], "succeeded", "{d:#}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "a poll waited {:?}: not woken through Redis",
        started.elapsed()
    );

    // Redis goes away; work made meanwhile arrives (polls read the database
    // again), and the bus is used again once Redis is back
    redis.stop();
    let id = follower.json(&["deploy", "web@2.0", "--selector", "role=web"])["id"].as_str().unwrap().to_owned();
    let d = follower.wait_state(&id, &["succeeded", "failed", "rolled_back"], LONG);
    assert_eq!(d["deployment"]["state"], "succeeded", "{d:#}");
    let redis = Redis::start(redis.port);
    let log = || follower.server.as_ref().unwrap().log_text();
    wait_until("the follower to subscribe again", Duration::from_secs(30), || {
        (log().matches("through Redis").count() >= 2).then_some(())
    });

    // a server that starts with a new admin token replaces the old one
    // before it is on the bus; the other server, which has the old one
    // cached (afresh: it dropped everything when it subscribed again), is
    // told through Redis and refuses it at once, not a minute later
    let subscribed = |f: &Fleet| f.server.as_ref().unwrap().log_text().matches("through Redis").count() >= 2;
    wait_until("both servers on the bus again", Duration::from_secs(30), || {
        (subscribed(&one) && subscribed(&two)).then_some(())
    });
    let releases = |port: u16, token: &str| http(port, "GET", "/api/v1/releases", Some(token), b"").unwrap().0;
    assert_eq!(releases(one.port, ADMIN), 200);
    const NEW_ADMIN: &str = "a-new-admin-token-0123456789";
    two.kill_server();
    two.server_env.push(("CONVOY_ADMIN_TOKEN".into(), NEW_ADMIN.into()));
    two.start_server();
    wait_until("the replaced admin token refused by the other server", Duration::from_secs(15), || {
        (releases(one.port, ADMIN) == 401).then_some(())
    });
    assert_eq!(releases(one.port, NEW_ADMIN), 200);
    drop(redis);
}

/// The chunk store on S3 (a real Garage of the test's own) does what the
/// one on disk does: convoy-pack's chunk store conformance, unchanged.
#[test]
#[ignore = "needs garage (CONVOY_TEST_GARAGE or PATH; .ci/run builds it): cargo test -- --include-ignored"]
fn the_s3_chunk_store_passes_the_chunk_store_conformance_against_garage() {
    let g = Garage::start();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let _in = rt.enter();
    for prefix in ["", "/conformance/two"] {
        let c = convoy_server::objects::S3Config {
            url: format!("s3://{}{prefix}", g.bucket),
            endpoint: Some(g.endpoint.clone()),
            region: Some("garage".into()),
            access_key_id: Some(g.key_id.clone()),
            secret_access_key: Some(g.secret.clone()),
        };
        let store =
            convoy_pack::ChunkStore::remote(std::sync::Arc::new(convoy_server::objects::S3Chunks::open(&c).unwrap()));
        convoy_pack::chunk_store_conformance(&store);
    }
    // a wrong key is an error, never "absent"
    let c = convoy_server::objects::S3Config {
        url: format!("s3://{}", g.bucket),
        endpoint: Some(g.endpoint.clone()),
        region: Some("garage".into()),
        access_key_id: Some(g.key_id.clone()),
        secret_access_key: Some("0".repeat(64)),
    };
    let wrong = convoy_server::objects::S3Chunks::open(&c).unwrap();
    let e = convoy_pack::Remote::get(&wrong, "chunks/00/none.zst").unwrap_err();
    assert!(e.to_string().contains("s3://convoy/"), "{e}");
}

/// Scale-out on existing engines: two servers on one PostgreSQL, one Redis
/// and one object store (Garage). A release published through one is
/// installed by an agent of the other; neither keeps chunks on its disk.
/// A server given a wrong key for the store says so at start and stops.
#[test]
#[ignore = "needs PostgreSQL (CONVOY_TEST_DATABASE_URL, else 127.0.0.1:5432), redis-server and garage: cargo test -- --include-ignored"]
fn two_servers_on_postgres_redis_and_an_object_store_serve_one_fleet() {
    let url = postgres_url();
    let g = Garage::start();
    let redis = Redis::start(free_port());
    let cache = format!("redis://127.0.0.1:{}", redis.port);
    let pg = Schema::new(&url, "convoy_s3_");
    let (schema, db) = (pg.name.clone(), pg.url.clone());
    let store = format!("s3://{}/{schema}", g.bucket);
    let args = ["--cache", &cache, "--store", &store, "--s3-endpoint", &g.endpoint, "--s3-region", "garage"];
    let one = Fleet::start_on_env(db.clone(), &args, &g.env());
    let mut two = Fleet::start_on_env(db.clone(), &args, &g.env());
    assert!(one.server.as_ref().unwrap().log_text().contains(&format!("chunks in s3://{}/{schema}", g.bucket)));
    two.start_agent("a", "role=web", &[], &[]);
    let src = one.path("src/1.0");
    write_app(&src, "1.0", 200_000);
    one.ok(&["publish", src.to_str().unwrap(), "--app", "web", "--version", "1.0"]);
    let id = two.json(&["deploy", "web@1.0", "--selector", "role=web"])["id"].as_str().unwrap().to_owned();
    let d = two.wait_state(&id, &["succeeded", "failed", "rolled_back"], LONG);
    assert_eq!(d["deployment"]["state"], "succeeded", "{d:#}");
    for f in [&one, &two] {
        assert!(!f.path("server/chunks").exists(), "chunks live in the object store only");
    }

    // a wrong secret: a clear error at start, and the server stops
    let data = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = std::process::Command::new(EXE)
        .args(["server", "--listen", &listen, "--data-dir", data.path().to_str().unwrap(), "--database", &db])
        .args(args)
        .env("AWS_ACCESS_KEY_ID", &g.key_id)
        .env("AWS_SECRET_ACCESS_KEY", "0".repeat(64))
        .env("CONVOY_KEY_SECRET_FILE", shared_key_secret())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_until("the misconfigured server to stop", Duration::from_secs(60), || child.try_wait().unwrap());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success() && err.contains("reaching the object store"), "{status}: {err}");
}

/// A Redis that wants a password: the server gives it (`redis://:PW@...`),
/// and one with a wrong password says so and keeps serving without the bus.
#[test]
#[ignore = "needs redis-server (Debian package redis-server): cargo test -- --include-ignored"]
fn the_cache_bus_authenticates_to_redis() {
    let redis = Redis::start_with(free_port(), &["--requirepass", "bus-secret-0123"]);
    let good = Fleet::start_with_args(&["--cache", &format!("redis://:bus-secret-0123@127.0.0.1:{}", redis.port)]);
    wait_until("the server to subscribe", Duration::from_secs(20), || {
        good.server.as_ref().unwrap().log_text().contains("through Redis").then_some(())
    });
    let bad = Fleet::start_with_args(&["--cache", &format!("redis://:wrong@127.0.0.1:{}", redis.port)]);
    let log = wait_until("the server to report the refusal", Duration::from_secs(20), || {
        let log = bad.server.as_ref().unwrap().log_text();
        log.contains("refused the credentials").then_some(log)
    });
    assert!(!log.contains("wrong"), "the password is never logged: {log}");
    assert!(!log.contains("through Redis"), "{log}");
    let (status, _) = http(bad.port, "GET", "/api/v1/health", None, b"").unwrap();
    assert_eq!(status, 200, "it serves on without the bus");
}
