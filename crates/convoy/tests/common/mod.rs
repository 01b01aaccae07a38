//! A harness that runs the real `convoy` binary: a server, agents and CLI
//! commands, each in its own temporary directory, on loopback ports.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod ddi;

pub const EXE: &str = env!("CARGO_BIN_EXE_convoy");
pub const ADMIN: &str = "test-admin-token-0123456789";
pub const ENROL: &str = "test-enrol-token-0123456789";

/// One key secret file for every test server on PostgreSQL (made once,
/// atomically, mode 0600).
pub fn shared_key_secret() -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::temp_dir().join("convoy-test-key-secret");
    if !path.exists() {
        let tmp = std::env::temp_dir().join(format!("convoy-test-key-secret.{}", std::process::id()));
        std::fs::write(&tmp, "ab".repeat(32)).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }
    path
}

/// The address of a service that the tests marked `#[ignore = "needs ..."]`
/// talk to. Those tests run with `cargo test --workspace -- --include-ignored`
/// (the README's test command, and `.ci/run`'s): `var` names the service,
/// else this machine's own at `default` is used. A service that does not
/// answer fails the test with what to set; it never counts as passed.
pub fn service_url(var: &str, default: &str) -> String {
    use std::net::ToSocketAddrs;
    let url = std::env::var(var).unwrap_or_else(|_| default.to_owned());
    let authority = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let authority = authority.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let answers = host_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.find(|a| std::net::TcpStream::connect_timeout(a, Duration::from_secs(3)).is_ok()));
    if answers.is_none() {
        panic!(
            "nothing answers at {host_port} ({var}={url}): start that service, or set {var} to one that runs; \
             plain `cargo test` (without --include-ignored) leaves this test out and says so"
        );
    }
    url
}

/// Python packages the tests use as independent checkers, by the module
/// each is imported as: python-tuf (a TUF client), prometheus_client (the
/// reference parser of the metrics format), openapi-spec-validator and
/// schemathesis (the OpenAPI document against the live server).
pub const TEST_PYTHON_PACKAGES: &[(&str, &str)] = &[
    ("tuf.ngclient", "tuf>=7,<8"),
    ("prometheus_client", "prometheus_client>=0.20,<1"),
    ("openapi_spec_validator", "openapi-spec-validator>=0.7,<1"),
    ("schemathesis", "schemathesis>=4,<5"),
];

/// A Python that can `import module`: `CONVOY_TEST_PYTHON` (`.ci/run` sets
/// it), else a virtual environment in `target/test-venv`, made from PyPI
/// with every package of [`TEST_PYTHON_PACKAGES`] when one is missing.
pub fn test_python(module: &str) -> String {
    if let Ok(p) = std::env::var("CONVOY_TEST_PYTHON") {
        return p;
    }
    static MADE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = MADE.lock().unwrap_or_else(|e| e.into_inner());
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-venv");
    let py = venv.join("bin/python");
    let imports = |py: &Path, m: &str| {
        Command::new(py).args(["-c", &format!("import {m}")]).output().is_ok_and(|o| o.status.success())
    };
    if !TEST_PYTHON_PACKAGES.iter().all(|(m, _)| imports(&py, m)) {
        let run = |cmd: &str, args: &[&str]| {
            let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
            assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        run("python3", &["-m", "venv", venv.to_str().unwrap()]);
        let mut args = vec!["install", "-q"];
        args.extend(TEST_PYTHON_PACKAGES.iter().map(|(_, pip)| *pip));
        run(venv.join("bin/pip").to_str().unwrap(), &args);
    }
    assert!(imports(&py, module), "{module} did not install into {}", venv.display());
    py.to_str().unwrap().to_owned()
}

/// PostgreSQL of the tests that need one: `CONVOY_TEST_DATABASE_URL`, else
/// this machine's (`postgres://postgres@127.0.0.1:5432/test`).
pub fn postgres_url() -> String {
    service_url("CONVOY_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `f` every 100 ms until it returns `Some`, failing after `limit`.
pub fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub struct Proc {
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    fn spawn(args: &[&str], env: &[(&str, &str)], log: PathBuf) -> Self {
        let f = std::fs::File::create(&log).unwrap();
        let mut c = Command::new(EXE);
        c.args(args).stdin(Stdio::null()).stdout(f.try_clone().unwrap()).stderr(f).env_remove("CONVOY_TOKEN");
        for (k, v) in env {
            c.env(k, v);
        }
        Self { child: c.spawn().unwrap(), log }
    }
    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub url: String,
    pub server: Option<Proc>,
    pub agents: Vec<(String, Proc)>,
    /// `--database` for the server; `None` is the embedded SQLite.
    pub database: Option<String>,
    /// PEM certificate and key: the server speaks HTTPS; clients trust the cert.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// More flags for `convoy server`.
    pub server_args: Vec<String>,
    /// Environment for `convoy server`, over the harness's own.
    pub server_env: Vec<(String, String)>,
}

impl Fleet {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    pub fn start_with(database: Option<String>) -> Self {
        Self::start_full(database, None)
    }

    pub fn start_full(database: Option<String>, tls: Option<(PathBuf, PathBuf)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{port}");
        let mut f = Fleet {
            url,
            dir,
            port,
            server: None,
            agents: Vec::new(),
            database,
            tls,
            server_args: Vec::new(),
            server_env: Vec::new(),
        };
        f.start_server();
        f
    }

    /// A fleet whose server uses this database and gets these extra flags.
    pub fn start_on(database: String, args: &[&str]) -> Self {
        Self::start_on_env(database, args, &[])
    }

    /// [`Fleet::start_on`] with more environment for the server.
    pub fn start_on_env(database: String, args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut f = Fleet {
            url: format!("http://127.0.0.1:{port}"),
            dir,
            port,
            server: None,
            agents: Vec::new(),
            database: Some(database),
            tls: None,
            server_args: args.iter().map(|a| a.to_string()).collect(),
            server_env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        f.start_server();
        f
    }

    /// A fleet whose server gets these extra flags.
    pub fn start_with_args(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let server_args = args.iter().map(|a| a.to_string()).collect();
        let mut f = Fleet {
            url,
            dir,
            port,
            server: None,
            agents: Vec::new(),
            database: None,
            tls: None,
            server_args,
            server_env: Vec::new(),
        };
        f.start_server();
        f
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn start_server(&mut self) {
        let listen = format!("127.0.0.1:{}", self.port);
        let data = self.path("server");
        let n = std::fs::read_dir(self.dir.path()).unwrap().count();
        let mut args = vec!["server", "--listen", &listen, "--data-dir", data.to_str().unwrap()];
        if let Some(db) = &self.database {
            args.extend_from_slice(&["--database", db]);
        }
        args.extend(self.server_args.iter().map(String::as_str));
        if let Some((cert, key)) = &self.tls {
            args.extend_from_slice(&["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
        }
        // tests enrol many agents from one address at once
        let mut env = vec![
            ("CONVOY_ADMIN_TOKEN", ADMIN),
            ("CONVOY_ENROL_TOKEN", ENROL),
            ("CONVOY_ENROL_RATE_TOKEN", "0"),
            ("CONVOY_ENROL_RATE_ADDRESS", "0"),
        ];
        // servers sharing a database share the secret that seals its signing key
        let shared_secret;
        if self.database.is_some() {
            shared_secret = shared_key_secret();
            env.push(("CONVOY_KEY_SECRET_FILE", shared_secret.to_str().unwrap()));
        }
        env.retain(|(k, _)| !self.server_env.iter().any(|(o, _)| o == k));
        env.extend(self.server_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let p = Proc::spawn(&args, &env, self.path(&format!("server-{n}.log")));
        self.server = Some(p);
        wait_until("the server to answer", Duration::from_secs(30), || match self.tls {
            None => http(self.port, "GET", "/api/v1/health", None, b"").ok().filter(|(s, _)| *s == 200).map(|_| ()),
            Some(_) => self.cli(&["releases"]).status.success().then_some(()),
        });
    }

    pub fn server_pid(&self) -> u32 {
        self.server.as_ref().unwrap().child.id()
    }

    /// `Some` once the server process has exited.
    pub fn server_exited(&mut self) -> Option<()> {
        self.server.as_mut().unwrap().child.try_wait().unwrap().map(|_| ())
    }

    pub fn kill_server(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.kill();
        }
    }

    pub fn agent_root(&self, name: &str) -> PathBuf {
        self.path(&format!("agents/{name}"))
    }

    /// Starts (or restarts) an agent and waits until it has enrolled.
    pub fn start_agent(&mut self, name: &str, labels: &str, env: &[(&str, &str)], extra: &[&str]) {
        let root = self.agent_root(name);
        std::fs::create_dir_all(&root).unwrap();
        let ca = self.tls.as_ref().map(|(c, _)| c.to_str().unwrap().to_owned());
        let mut args =
            vec!["agent", "--server", &self.url, "--root", root.to_str().unwrap(), "--labels", labels, "--name", name];
        if !extra.contains(&"--poll-wait") {
            args.extend_from_slice(&["--poll-wait", "5"]);
        }
        args.extend_from_slice(extra);
        if let Some(ca) = &ca {
            args.extend_from_slice(&["--ca-cert", ca]);
        }
        let mut env = env.to_vec();
        if !env.iter().any(|(k, _)| *k == "CONVOY_TOKEN") {
            env.push(("CONVOY_TOKEN", ENROL));
        }
        let n = self.agents.len();
        let p = Proc::spawn(&args, &env, self.path(&format!("agent-{name}-{n}.log")));
        self.agents.retain(|(n, _)| n != name);
        self.agents.push((name.to_owned(), p));
        wait_until(&format!("agent {name} to enrol"), Duration::from_secs(30), || {
            root.join(".convoy/agent.json").exists().then_some(())
        });
    }

    /// The target id an agent enrolled as.
    pub fn target_id(&self, name: &str) -> String {
        let creds = std::fs::read_to_string(self.agent_root(name).join(".convoy/agent.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&creds).unwrap();
        v["target_id"].as_str().unwrap().to_owned()
    }

    /// The agent's own credential, as it keeps it.
    pub fn agent_token(&self, name: &str) -> String {
        let creds = std::fs::read_to_string(self.agent_root(name).join(".convoy/agent.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&creds).unwrap();
        v["token"].as_str().unwrap().to_owned()
    }

    /// Grants an agent the relay role for `site` (as an operator would) and
    /// waits until the server names it with its URL.
    pub fn grant_relay(&self, name: &str, site: &str, url: &str) {
        let id = self.target_id(name);
        self.ok(&["relays", "grant", &id, "--site", site]);
        wait_until("the relay to report its URL", Duration::from_secs(30), || {
            let list = self.json(&["relays", "list"]);
            list.as_array()?.iter().any(|r| r["target_id"] == id.as_str() && r["url"] == url).then_some(())
        });
    }

    pub fn kill_agent(&mut self, name: &str) {
        if let Some((_, p)) = self.agents.iter_mut().find(|(n, _)| n == name) {
            p.kill();
        }
    }

    /// Runs a CLI command as the admin.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut c = Command::new(EXE);
        c.args(args).env("CONVOY_SERVER", &self.url).env("CONVOY_TOKEN", ADMIN).env_remove("CONVOY_CA_CERT");
        if let Some((cert, _)) = &self.tls {
            c.env("CONVOY_CA_CERT", cert);
        }
        c.output().unwrap()
    }

    /// Runs a CLI command that must succeed, returning stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "convoy {args:?} failed ({:?}):\n{}\n{}\n--- server log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.server.as_ref().map(|s| s.log_text()).unwrap_or_default()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend_from_slice(&["--output", "json"]);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    pub fn deployment(&self, id: &str) -> serde_json::Value {
        self.json(&["status", id])
    }

    pub fn wait_state(&self, id: &str, states: &[&str], limit: Duration) -> serde_json::Value {
        wait_until(&format!("deployment {id} to reach {states:?}"), limit, || {
            let d = self.deployment(id);
            states.contains(&d["deployment"]["state"].as_str().unwrap()).then_some(d)
        })
    }

    /// Waits until the server has made the delta from `from` to `to` (or
    /// decided chunks are cheaper): deltas are made in the background and
    /// an agent that asks earlier stages by chunks.
    pub fn wait_delta(&self, app: &str, from: &str, to: &str) -> u16 {
        let path = format!("/api/v1/releases/{app}/{to}/delta?from={from}");
        wait_until(&format!("the delta {app} {from} -> {to}"), Duration::from_secs(120), || {
            let (status, _) = http(self.port, "GET", &path, Some(ADMIN), b"").ok()?;
            (status != 202).then_some(status)
        })
    }

    /// The live version of `app` per target hostname.
    pub fn live(&self, app: &str) -> Vec<(String, Option<String>)> {
        let t = self.json(&["targets"]);
        let mut v: Vec<(String, Option<String>)> = t
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (t["hostname"].as_str().unwrap().to_owned(), t["inventory"]["current"][app].as_str().map(str::to_owned))
            })
            .collect();
        v.sort();
        v
    }
}

/// One raw HTTP/1.1 request on loopback: (status, body).
pub fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> std::io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())?;
    s.write_all(body)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// A small app: `convoy.toml` with hooks that record the running version
/// under `$CONVOY_ROOT/run`, and a health check that fails where
/// `$CONVOY_ROOT/simulate-outage` exists.
pub fn write_app(dir: &Path, version: &str, extra_bytes: usize) {
    let w = |p: &str, data: &[u8]| {
        let full = dir.join(p);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, data).unwrap();
    };
    w(
        "convoy.toml",
        b"config_files = [\"config/app.env\"]\n[hooks]\nstop = \"rm -f $CONVOY_ROOT/run/app\"\nstart = \"mkdir -p $CONVOY_ROOT/run && echo $CONVOY_VERSION > $CONVOY_ROOT/run/app && env > $CONVOY_ROOT/run/env\"\nhealth = \"sh health.sh\"\n[health]\ntimeout_secs = 2\ninterval_ms = 100\n",
    );
    w(
        "health.sh",
        b"if [ -e \"$CONVOY_ROOT/simulate-outage\" ]; then echo 'service unavailable'; exit 1; fi\ntest \"$(cat $CONVOY_ROOT/run/app)\" = \"$CONVOY_VERSION\" || exit 1\necho served_version=$CONVOY_VERSION\n",
    );
    w("index.html", format!("<h1>{version}</h1>\n").as_bytes());
    w("config/app.env", b"PORT=8080\n");
    std::fs::create_dir_all(dir.join("empty/dir")).unwrap();
    std::os::unix::fs::symlink("../index.html", dir.join("empty/link")).ok();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let data: Vec<u8> = (0..extra_bytes)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    w("data.bin", &data);
}

/// Runs the CLI with a user's token.
pub fn as_user(f: &Fleet, token: &str, args: &[&str]) -> Output {
    Command::new(EXE)
        .args(args)
        .env("CONVOY_SERVER", &f.url)
        .env("CONVOY_TOKEN", token)
        .env_remove("CONVOY_CA_CERT")
        .output()
        .unwrap()
}

/// Runs the CLI with a user's token; it must succeed. Returns stdout.
pub fn ok_as(f: &Fleet, token: &str, args: &[&str]) -> String {
    let out = as_user(f, token, args);
    assert!(
        out.status.success(),
        "convoy {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The `garage` binary: `CONVOY_TEST_GARAGE`, else on PATH, else in
/// `~/.cargo/bin` (where `.ci/run` builds it). Missing is a failure, not
/// a skip.
pub fn garage_exe() -> PathBuf {
    if let Some(p) = std::env::var_os("CONVOY_TEST_GARAGE") {
        return PathBuf::from(p);
    }
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join("garage")).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "garage (the S3-compatible object store these tests run against) is not installed: .ci/run builds it, \
             or `cargo install garage --locked --no-default-features --features sqlite,bundled-libs`"
        )
    })
}

/// A single-node Garage of the test's own on loopback ports (SQLite
/// metadata in a temporary directory), with one bucket and one key that
/// may read and write it.
pub struct Garage {
    child: Child,
    config: PathBuf,
    _dir: tempfile::TempDir,
    pub endpoint: String,
    pub bucket: String,
    pub key_id: String,
    pub secret: String,
}

impl Garage {
    pub fn start() -> Self {
        let exe = garage_exe();
        let dir = tempfile::tempdir().unwrap();
        let (s3, rpc) = (free_port(), free_port());
        let config = dir.path().join("garage.toml");
        let secret: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
        std::fs::write(
            &config,
            format!(
                "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"sqlite\"\nreplication_factor = 1\n\
                 rpc_bind_addr = \"127.0.0.1:{rpc}\"\nrpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\
                 [s3_api]\napi_bind_addr = \"127.0.0.1:{s3}\"\ns3_region = \"garage\"\n",
                d = dir.path().display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("garage.log")).unwrap();
        let child = Command::new(&exe)
            .args(["-c", config.to_str().unwrap(), "server"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut g = Garage {
            child,
            config,
            _dir: dir,
            endpoint: format!("http://127.0.0.1:{s3}"),
            bucket: "convoy".into(),
            key_id: String::new(),
            secret: String::new(),
        };
        let node = wait_until("garage to answer", Duration::from_secs(30), || {
            let out = g.cli(&["node", "id", "-q"]);
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).split('@').next().unwrap().trim().to_owned())
        });
        // the node id is read from disk: wait for the server's RPC too
        wait_until("garage's RPC port to answer", Duration::from_secs(30), || {
            g.cli(&["status"]).status.success().then_some(())
        });
        g.ok(&["layout", "assign", "-z", "dc1", "-c", "1G", &node[..16]]);
        g.ok(&["layout", "apply", "--version", "1"]);
        g.ok(&["bucket", "create", "convoy"]);
        let key = g.ok(&["key", "create", "convoy-test"]);
        let field = |name: &str| {
            key.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| panic!("no {name} in {key}"))
        };
        g.key_id = field("Key ID:");
        g.secret = field("Secret key:");
        g.ok(&["bucket", "allow", "--read", "--write", "convoy", "--key", "convoy-test"]);
        g
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(garage_exe()).arg("-c").arg(&self.config).args(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "garage {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Environment giving a server this store's key.
    pub fn env(&self) -> Vec<(&str, &str)> {
        vec![("AWS_ACCESS_KEY_ID", self.key_id.as_str()), ("AWS_SECRET_ACCESS_KEY", self.secret.as_str())]
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
