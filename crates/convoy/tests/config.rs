//! First start, config files, and restarts as an operator meets them.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn tokens(log: &str) -> (String, String) {
    let find = |what: &str| {
        log.lines()
            .find(|l| l.contains(what))
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no {what} in {log}"))
    };
    (find("admin token"), find("enrolment token"))
}

#[test]
fn first_start_prints_tokens_once_and_config_files_work() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let start = |n: usize| {
        let log = dir.path().join(format!("server{n}.log"));
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new(EXE)
            .args([
                "server",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
                dir.path().join("data").to_str().unwrap(),
            ])
            .env_remove("CONVOY_ADMIN_TOKEN")
            .env_remove("CONVOY_ENROL_TOKEN")
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap();
        wait_until("the server", Duration::from_secs(30), || {
            http(port, "GET", "/api/v1/health", None, b"").ok().filter(|r| r.0 == 200)
        });
        (child, log)
    };
    let (mut s1, log1) = start(1);
    let (admin, enrol) = tokens(&std::fs::read_to_string(&log1).unwrap());
    assert_eq!(admin.len(), 64);
    let targets = || {
        Command::new(EXE)
            .args(["targets", "--output", "json"])
            .env("CONVOY_SERVER", &url)
            .env("CONVOY_TOKEN", &admin)
            .output()
            .unwrap()
    };
    assert!(targets().status.success());
    s1.kill().unwrap();
    s1.wait().unwrap();

    let (mut s2, log2) = start(2);
    let text = std::fs::read_to_string(&log2).unwrap();
    assert!(!text.contains("admin token"), "tokens are printed on first start only: {text}");
    assert!(targets().status.success(), "the first token still works");
    assert_eq!(http(port, "GET", "/api/v1/targets", Some(&enrol), b"").unwrap().0, 403);

    // an agent configured by file
    let root = dir.path().join("agent");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, format!("server = '{url}'\ntoken = '{enrol}'\nroot = '{}'\nname = 'kiosk-7'\nlabels = {{ site = 'hz', role = 'kiosk' }}\n", root.display())).unwrap();
    let mut agent = Command::new(EXE)
        .args(["agent", "--config", cfg.to_str().unwrap()])
        .env_remove("CONVOY_TOKEN")
        .env_remove("CONVOY_SERVER")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = wait_until("the agent to enrol", Duration::from_secs(30), || {
        let out = targets();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v.as_array().filter(|a| a.len() == 1).map(|a| a[0].clone())
    });
    assert_eq!(t["hostname"], "kiosk-7");
    assert_eq!(t["labels"]["site"], "hz");
    // the server lists the target as soon as it enrols; the agent keeps its
    // credential a moment later
    wait_until("the agent to keep its credential", Duration::from_secs(10), || {
        root.join(".convoy/agent.json").exists().then_some(())
    });
    let _ = agent.kill();
    let _ = agent.wait();
    s2.kill().unwrap();
    s2.wait().unwrap();

    // a config file with an unknown key is refused, clearly
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "listen = '127.0.0.1:1'\ndatadir = '/tmp'\n").unwrap();
    let out = Command::new(EXE).args(["server", "--config", bad.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown field `datadir`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // an agent with no credential and no token says what is missing
    let out = Command::new(EXE)
        .args(["agent", "--root", dir.path().join("new").to_str().unwrap(), "--server", &url])
        .env_remove("CONVOY_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not enrolled yet"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sigterm_stops_the_server_promptly_while_agents_long_poll() {
    let mut f = Fleet::start();
    f.start_agent("a", "role=web", &[], &["--poll-wait", "60"]);
    // let the agent settle into a long poll
    std::thread::sleep(Duration::from_millis(500));
    let pid = f.server_pid();
    let started = std::time::Instant::now();
    assert!(Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success());
    wait_until("the server to exit", Duration::from_secs(10), || f.server_exited());
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}
