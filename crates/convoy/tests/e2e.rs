//! End to end through the real binary: server, agents, CLI.

mod common;

use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(90);
const EXIT_NOT_SUCCEEDED: i32 = 3;

fn publish(f: &Fleet, version: &str, extra: usize) {
    let src = f.path(&format!("src/{version}"));
    write_app(&src, version, extra);
    let out = f.ok(&["publish", src.to_str().unwrap(), "--app", "web", "--version", version]);
    assert!(out.contains("published web@"), "{out}");
}

fn deploy_wait(f: &Fleet, args: &[&str]) -> (i32, serde_json::Value) {
    let mut a = vec!["deploy"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["--wait", "--output", "json"]);
    let out = f.cli(&a);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    (out.status.code().unwrap(), v)
}

fn instruction<'a>(d: &'a serde_json::Value, host: &str) -> &'a serde_json::Value {
    d["instructions"].as_array().unwrap().iter().find(|i| i["hostname"] == host).unwrap()
}

#[test]
fn upgrade_gate_health_failure_and_rollback() {
    let mut f = Fleet::start();
    f.start_agent("a", "site=sh,role=web", &[], &[]);
    // b silently corrupts its first staged copy; the gate must catch it.
    f.start_agent("b", "site=sh,role=web", &[("CONVOY_AGENT_FAULT", "tamper-once")], &[]);
    f.start_agent("c", "site=bj,role=web", &[], &[]);

    publish(&f, "1.0", 300_000);
    let (code, d1) = deploy_wait(&f, &["web@1.0", "--selector", "role=web"]);
    assert_eq!((code, d1["deployment"]["state"].as_str()), (0, Some("succeeded")), "{d1:#}");
    let b = instruction(&d1, "b");
    assert_eq!(b["attempt"], 1, "b was re-staged once: {b:#}");
    assert_eq!(b["reported_digest"], d1["deployment"]["digest"]);
    let gate = d1["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["note"].as_str().unwrap().contains("consistency gate: target reported digest"))
        .expect("gate event");
    assert_eq!(gate["actor"].as_str().unwrap(), format!("agent:{}", b["target_id"].as_str().unwrap()));
    assert!(f.agent_root("b").join(".convoy/fault-tampered").exists());
    for h in ["a", "b", "c"] {
        let i = instruction(&d1, h);
        assert_eq!(i["state"], "succeeded");
        assert_eq!(i["metrics"]["served_version"], "1.0", "health metrics reported: {i:#}");
        assert!(i["metrics"]["switch_ms"].as_str().is_some());
    }
    let (status, metrics) = http(f.port, "GET", "/metrics", None, b"").unwrap();
    assert_eq!(status, 200);
    for line in
        ["convoy_targets 3", "convoy_instructions{state=\"succeeded\"} 3", "convoy_deployments{state=\"succeeded\"} 1"]
    {
        assert!(metrics.lines().any(|l| l == line), "{line} missing from\n{metrics}");
    }
    let served: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("convoy_chunk_bytes_total{direction=\"out\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(served > 3 * 300_000 / 2, "served {served} bytes of chunks");
    let hook_env = std::fs::read_to_string(f.agent_root("a").join("run/env")).unwrap();
    assert!(hook_env.contains("CONVOY_VERSION=1.0") && hook_env.contains("CONVOY_RELEASE_DIR="), "{hook_env}");
    assert!(!hook_env.contains(ENROL), "hooks do not see the agent's token");
    let staged = std::fs::read(f.agent_root("b").join("current/web/data.bin")).unwrap();
    assert_eq!(staged, std::fs::read(f.path("src/1.0/data.bin")).unwrap(), "b's live copy is the published one");

    // v2 fails its health check on c only; one failure is within the budget.
    std::fs::write(f.agent_root("c").join("simulate-outage"), b"").unwrap();
    publish(&f, "2.0", 300_000);
    let (code, d2) = deploy_wait(&f, &["web@2.0", "--selector", "role=web", "--max-failures", "1"]);
    assert_eq!((code, d2["deployment"]["state"].as_str()), (0, Some("succeeded")), "{d2:#}");
    let c = instruction(&d2, "c");
    assert_eq!(c["state"], "rolled_back");
    assert!(c["output"].as_str().unwrap().contains("service unavailable"), "hook output reported: {c:#}");
    assert_eq!(
        f.live("web"),
        vec![("a".into(), Some("2.0".into())), ("b".into(), Some("2.0".into())), ("c".into(), Some("1.0".into()))]
    );
    assert_eq!(
        std::fs::read_to_string(f.agent_root("c").join("run/app")).unwrap().trim(),
        "1.0",
        "c runs its old release again"
    );

    // roll the whole deployment back
    let id = d2["deployment"]["id"].as_str().unwrap();
    let out = f.cli(&["rollback", id, "--wait", "--output", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let after = f.deployment(id);
    assert_eq!(after["deployment"]["state"], "rolled_back");
    assert_eq!(
        f.live("web"),
        vec![("a".into(), Some("1.0".into())), ("b".into(), Some("1.0".into())), ("c".into(), Some("1.0".into()))]
    );
    for h in ["a", "b", "c"] {
        assert_eq!(std::fs::read_to_string(f.agent_root(h).join("run/app")).unwrap().trim(), "1.0");
    }
    // the audit trail shows who moved what
    let events = f.ok(&["status", id, "--events"]);
    assert!(
        events.contains("rolling_back") && events.contains("user:admin") && events.contains("scheduler"),
        "{events}"
    );
    // the human view names every target
    let status = f.ok(&["status", id]);
    for h in ["a", "b", "c"] {
        assert!(status.contains(&format!("\n{h} ")), "{status}");
    }

    // a target's own page: its deployments, newest change first, with the
    // metrics and notes it reported
    let c_id = c["target_id"].as_str().unwrap();
    let t = f.json(&["targets", "show", c_id]);
    assert_eq!(t["target"]["hostname"], "c");
    let history: Vec<(&str, &str, &str)> = t["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (h["version"].as_str().unwrap(), h["state"].as_str().unwrap(), h["deployment_state"].as_str().unwrap())
        })
        .collect();
    assert_eq!(history, vec![("2.0", "rolled_back", "rolled_back"), ("1.0", "succeeded", "succeeded")], "{t:#}");
    assert_eq!(t["history"][1]["metrics"]["served_version"], "1.0");
    let text = f.ok(&["targets", "show", c_id]);
    assert!(text.contains("web@2.0") && text.contains("web@1.0") && text.contains("rolled_back"), "{text}");
    let missing = f.cli(&["targets", "show", "no-such-target"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("target no-such-target not found"));
}

#[test]
fn agent_killed_while_staging_resumes() {
    let mut f = Fleet::start();
    // 1 MB/s so that staging 8 MB takes long enough to be interrupted
    f.start_agent("slow", "role=web", &[], &["--max-rate", "1000000"]);
    publish(&f, "1.0", 8_000_000);
    let out = f.json(&["deploy", "web@1.0", "--selector", "role=web"]);
    let id = out["id"].as_str().unwrap().to_owned();
    let cache = f.agent_root("slow").join(".convoy/cache");
    let count = |p: &std::path::Path| walk_files(p);
    // operators see the download advance while it runs
    let p = wait_until("progress to be reported", LONG, || {
        let d = f.deployment(&id);
        let p = d["instructions"][0]["progress"].clone();
        (p["done_bytes"].as_u64().unwrap_or(0) > 0).then_some(p)
    });
    assert!(p["done_bytes"].as_u64().unwrap() < p["total_bytes"].as_u64().unwrap(), "{p}");
    assert!(p["total_bytes"].as_u64().unwrap() >= 8_000_000, "{p}");
    let human = f.ok(&["status", &id]);
    assert!(human.lines().any(|l| l.starts_with("slow ") && l.contains('%')), "{human}");
    wait_until("some chunks to be cached", LONG, || (count(&cache) >= 10).then_some(()));
    f.kill_agent("slow");
    let before = count(&cache);
    assert!(before < 110, "killed before staging finished ({before} chunks cached)");
    f.start_agent("slow", "role=web", &[], &[]);
    let d = f.wait_state(&id, &["succeeded", "failed"], LONG);
    assert_eq!(d["deployment"]["state"], "succeeded", "{d:#}");
    let i = instruction(&d, "slow");
    assert_eq!(i["reported_digest"], d["deployment"]["digest"]);
    let fetched: usize = i["metrics"]["chunks_fetched"].as_str().unwrap().parse().unwrap();
    let total: usize = i["metrics"]["chunks_total"].as_str().unwrap().parse().unwrap();
    assert!(fetched + before <= total + 2, "resumed: fetched {fetched} of {total} after {before} were cached");
    assert_eq!(
        std::fs::read(f.agent_root("slow").join("current/web/data.bin")).unwrap(),
        std::fs::read(f.path("src/1.0/data.bin")).unwrap()
    );
}

fn walk_files(p: &std::path::Path) -> usize {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        walk_files(&e.path())
                    } else {
                        e.path().extension().is_some_and(|x| x == "zst") as usize
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn server_killed_during_deployment_resumes() {
    let mut f = Fleet::start();
    f.start_agent("a", "role=web", &[], &[]);
    f.start_agent("b", "role=web", &[], &[]);
    publish(&f, "1.0", 100_000);
    let out = f.json(&["deploy", "web@1.0", "--selector", "role=web", "--at", "+3s"]);
    let id = out["id"].as_str().unwrap().to_owned();
    f.kill_server();
    std::thread::sleep(Duration::from_millis(500));
    f.start_server();
    let d = f.wait_state(&id, &["succeeded", "failed", "rolled_back"], LONG);
    assert_eq!(d["deployment"]["state"], "succeeded", "{d:#}");
    assert_eq!(f.live("web"), vec![("a".into(), Some("1.0".into())), ("b".into(), Some("1.0".into()))]);
    // and once more while it is scheduled (gate passed, go-live pending)
    publish(&f, "2.0", 100_000);
    let out = f.json(&["deploy", "web@2.0", "--selector", "role=web", "--at", "+8s"]);
    let id = out["id"].as_str().unwrap().to_owned();
    f.wait_state(&id, &["scheduled"], LONG);
    f.kill_server();
    f.start_server();
    let d = f.wait_state(&id, &["succeeded", "failed", "rolled_back"], LONG);
    assert_eq!(d["deployment"]["state"], "succeeded", "{d:#}");
    assert_eq!(f.live("web"), vec![("a".into(), Some("2.0".into())), ("b".into(), Some("2.0".into()))]);
}

#[test]
fn rollback_before_go_live_never_switches() {
    let mut f = Fleet::start();
    f.start_agent("a", "role=web", &[], &[]);
    publish(&f, "1.0", 10_000);
    let (code, _) = deploy_wait(&f, &["web@1.0", "--selector", "role=web"]);
    assert_eq!(code, 0);
    publish(&f, "2.0", 10_000);
    let out = f.json(&["deploy", "web@2.0", "--selector", "role=web", "--at", "+10s"]);
    let id = out["id"].as_str().unwrap().to_owned();
    let d = f.wait_state(&id, &["scheduled"], LONG);
    let go_live = d["deployment"]["go_live_at"].as_i64().unwrap();
    // one unfinished deployment per app and target
    let out = f.cli(&["deploy", "web@1.0", "--selector", "role=web"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already in an unfinished deployment"));
    f.ok(&["rollback", &id]);
    // nothing went live: the deployment reads canceled, never rolled_back
    let d = f.wait_state(&id, &["canceled", "rolled_back", "failed"], LONG);
    assert_eq!(d["deployment"]["state"], "canceled", "{d:#}");
    assert_eq!(instruction(&d, "a")["state"], "canceled", "{d:#}");
    // past the planned go-live, the agent has seen the plan withdrawn and
    // never switched or restarted the app
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    std::thread::sleep(Duration::from_millis((go_live + 1_000 - now).max(0) as u64));
    assert_eq!(f.live("web"), vec![("a".into(), Some("1.0".into()))]);
    assert!(instruction(&d, "a")["metrics"].get("switch_ms").is_none(), "{d:#}");
    let log = f.agents[0].1.log_text();
    assert!(log.contains("withdrawn before go-live"), "{log}");
}

#[test]
fn gate_reports_a_target_that_keeps_differing() {
    let mut f = Fleet::start();
    f.start_agent("good", "role=web,site=sh", &[], &[]);
    f.start_agent("bad", "role=web,site=bj", &[("CONVOY_AGENT_FAULT", "tamper-always")], &[]);
    publish(&f, "1.0", 50_000);

    // no failure budget: nothing goes live, and the bad copy is reported
    let (code, d) = deploy_wait(&f, &["web@1.0", "--selector", "role=web"]);
    assert_eq!((code, d["deployment"]["state"].as_str()), (EXIT_NOT_SUCCEEDED, Some("failed")), "{d:#}");
    assert!(d["deployment"]["note"].as_str().unwrap().contains("consistency gate: 1 of 2 targets"), "{d:#}");
    let bad = instruction(&d, "bad");
    assert_eq!(bad["state"], "failed");
    assert_eq!(bad["attempt"], 2, "three stagings, then it gave up");
    assert_ne!(bad["reported_digest"], d["deployment"]["digest"]);
    assert!(bad["note"].as_str().unwrap().contains("gave up after 3 attempts"), "{bad:#}");
    assert_eq!(instruction(&d, "good")["state"], "canceled");
    assert_eq!(f.live("web"), vec![("bad".into(), None), ("good".into(), None)]);
    let status = f.ok(&["status", d["deployment"]["id"].as_str().unwrap()]);
    let line = status.lines().find(|l| l.starts_with("bad ")).unwrap();
    assert!(
        line.contains("MISMATCH") && line.contains("site=bj") && line.contains(bad["target_id"].as_str().unwrap()),
        "{status}"
    );

    // a budget of one lets the release go ahead without it
    let (code, d) = deploy_wait(&f, &["web@1.0", "--selector", "role=web", "--max-failures", "1"]);
    assert_eq!((code, d["deployment"]["state"].as_str()), (0, Some("succeeded")), "{d:#}");
    assert_eq!(f.live("web"), vec![("bad".into(), None), ("good".into(), Some("1.0".into()))]);
}

#[test]
fn agent_killed_mid_switch_ends_on_the_old_or_the_new_release() {
    let mut f = Fleet::start();
    f.start_agent("a", "role=web", &[], &[]);
    publish(&f, "1.0", 10_000);
    assert_eq!(deploy_wait(&f, &["web@1.0", "--selector", "role=web"]).0, 0);

    // v2 migrates slowly, and its health check will fail on this machine
    let src = f.path("src/2.0");
    write_app(&src, "2.0", 10_000);
    let toml = std::fs::read_to_string(src.join("convoy.toml")).unwrap();
    std::fs::write(
        src.join("convoy.toml"),
        toml.replace("[hooks]\n", "[hooks]\nmigrate = \"touch $CONVOY_ROOT/migrating; sleep 2\"\n"),
    )
    .unwrap();
    f.ok(&["publish", src.to_str().unwrap(), "--app", "web", "--version", "2.0"]);
    std::fs::write(f.agent_root("a").join("simulate-outage"), b"").unwrap();
    let id = f.json(&["deploy", "web@2.0", "--selector", "role=web"])["id"].as_str().unwrap().to_owned();

    // kill the agent after the switch, in the middle of migrate
    let root = f.agent_root("a");
    wait_until("migrate to start", LONG, || root.join("migrating").exists().then_some(()));
    f.kill_agent("a");
    let link = std::fs::read_link(root.join("current/web")).unwrap();
    assert!(link.ends_with("2.0"), "killed after the switch: {link:?}");

    f.start_agent("a", "role=web", &[], &[]);
    let d = f.wait_state(&id, &["succeeded", "failed", "rolled_back"], LONG);
    assert_eq!(instruction(&d, "a")["state"], "rolled_back", "{d:#}");
    assert!(std::fs::read_link(root.join("current/web")).unwrap().ends_with("1.0"));
    assert_eq!(std::fs::read_to_string(root.join("run/app")).unwrap().trim(), "1.0");
    assert_eq!(f.live("web"), vec![("a".into(), Some("1.0".into()))]);
}

#[test]
fn a_corrupt_chunk_is_never_installed() {
    let mut f = Fleet::start();
    // chunks only: a first-install stream made before the damage would hold the right bytes
    f.start_agent("a", "role=web", &[], &["--max-memory", "0"]);
    publish(&f, "1.0", 100_000);
    // corrupt every stored chunk of data.bin on the server's disk: valid zstd, wrong bytes
    let m: serde_json::Value =
        serde_json::from_str(&http(f.port, "GET", "/api/v1/releases/web/1.0/manifest", Some(ADMIN), b"").unwrap().1)
            .unwrap();
    let entry = m["entries"].as_array().unwrap().iter().find(|e| e["path"] == "data.bin").unwrap();
    for c in entry["chunks"].as_array().unwrap() {
        let id = c["id"].as_str().unwrap();
        let path = f.path(&format!("server/chunks/{}/{id}.zst", &id[..2]));
        std::fs::write(path, convoy_pack::VerifiedChunk::from_data(b"evil".to_vec()).compress()).unwrap();
    }
    let (code, d) = deploy_wait(&f, &["web@1.0", "--selector", "role=web"]);
    assert_eq!((code, d["deployment"]["state"].as_str()), (EXIT_NOT_SUCCEEDED, Some("failed")), "{d:#}");
    let i = instruction(&d, "a");
    // the agent's hash check refuses the bytes; or the server's own check,
    // reading the chunk first (making the first-install stream), dropped it
    let note = i["note"].as_str().unwrap();
    assert!(note.contains("failed verification") || note.contains("not found"), "{i:#}");
    let root = f.agent_root("a");
    assert!(!root.join("releases/web/1.0").exists() && !root.join("current/web").exists(), "nothing installed");
}

#[test]
fn a_planned_go_live_does_not_hold_up_other_apps() {
    let mut f = Fleet::start();
    f.start_agent("a", "role=web", &[], &[]);
    publish(&f, "1.0", 10_000);
    let web =
        f.json(&["deploy", "web@1.0", "--selector", "role=web", "--at", "+15s"])["id"].as_str().unwrap().to_owned();
    f.wait_state(&web, &["scheduled"], LONG);

    // another app on the same target goes live while web waits for its time
    let src = f.path("src/api");
    write_app(&src, "7", 10_000);
    f.ok(&["publish", src.to_str().unwrap(), "--app", "api", "--version", "7"]);
    let (code, api) = deploy_wait(&f, &["api@7", "--selector", "role=web"]);
    assert_eq!((code, api["deployment"]["state"].as_str()), (0, Some("succeeded")), "{api:#}");
    assert_eq!(f.deployment(&web)["deployment"]["state"], "scheduled", "web still waits for its go-live");

    let d = f.wait_state(&web, &["succeeded", "failed", "rolled_back"], LONG);
    assert_eq!(d["deployment"]["state"], "succeeded", "{d:#}");
    let lag: i64 = instruction(&d, "a")["metrics"]["golive_lag_ms"].as_str().unwrap().parse().unwrap();
    assert!(lag < 1_000, "switched {lag} ms after the planned time");
    assert_eq!(f.live("api"), vec![("a".into(), Some("7".into()))]);
    assert_eq!(f.live("web"), vec![("a".into(), Some("1.0".into()))]);
}

#[test]
fn rolling_back_a_first_install_stops_and_unlinks_it() {
    let mut f = Fleet::start();
    f.start_agent("a", "role=web", &[], &[]);
    publish(&f, "1.0", 10_000);
    let (code, d) = deploy_wait(&f, &["web@1.0", "--selector", "role=web"]);
    assert_eq!(code, 0);
    let root = f.agent_root("a");
    assert!(root.join("run/app").exists());
    let id = d["deployment"]["id"].as_str().unwrap();
    // it would uninstall: refused, clearly, changing nothing, unless asked for
    let out = f.cli(&["rollback", id, "--wait"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--uninstall"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(f.deployment(id)["deployment"]["state"], "succeeded");
    assert_eq!(f.live("web"), vec![("a".into(), Some("1.0".into()))]);
    let out = f.cli(&["rollback", id, "--wait", "--uninstall"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(f.live("web"), vec![("a".into(), None)]);
    assert!(!root.join("current/web").exists(), "no live link");
    assert!(!root.join("run/app").exists(), "the stop hook ran");
    assert!(root.join("releases/web/1.0").is_dir(), "the staged release stays on disk");
    // rolling back twice is refused, clearly
    let out = f.cli(&["rollback", id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already rolled_back"));
}

#[test]
fn an_agent_with_a_relative_root_gives_hooks_an_absolute_one() {
    let f = Fleet::start();
    let cwd = f.path("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    let mut agent = std::process::Command::new(EXE)
        .args([
            "agent",
            "--server",
            &f.url,
            "--root",
            "./ag",
            "--labels",
            "role=web",
            "--name",
            "rel",
            "--poll-wait",
            "5",
        ])
        .current_dir(&cwd)
        .env("CONVOY_TOKEN", ENROL)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the agent to enrol", LONG, || cwd.join("ag/.convoy/agent.json").exists().then_some(()));
    publish(&f, "1.0", 1_000);
    let (code, d) = deploy_wait(&f, &["web@1.0", "--selector", "role=web"]);
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(code, 0, "{d:#}");
    assert_eq!(std::fs::read_to_string(cwd.join("ag/run/app")).unwrap().trim(), "1.0");
}

#[test]
fn deadlines_keep_a_silent_target_from_holding_the_fleet() {
    let mut f = Fleet::start();
    f.start_agent("a", "role=web", &[], &[]);
    f.start_agent("b", "role=web", &[], &[]);
    publish(&f, "1.0", 10_000);

    // b is down: after the stage deadline it counts as failed, and the
    // budget lets a go ahead
    f.kill_agent("b");
    let (code, d) =
        deploy_wait(&f, &["web@1.0", "--selector", "role=web", "--stage-timeout", "3s", "--max-failures", "1"]);
    assert_eq!((code, d["deployment"]["state"].as_str()), (0, Some("succeeded")), "{d:#}");
    let b = instruction(&d, "b");
    assert_eq!(b["state"], "failed");
    assert!(b["note"].as_str().unwrap().contains("stage deadline"), "{b:#}");
    assert_eq!(f.live("web"), vec![("a".into(), Some("1.0".into())), ("b".into(), None)]);

    // b goes silent after staging v2: after go-live plus the activation
    // timeout it counts as failed and a is rolled back; b is told to switch
    // back when it returns, and the deployment waits for it, saying so
    f.start_agent("b", "role=web", &[], &[]);
    publish(&f, "2.0", 10_000);
    let out = f.json(&["deploy", "web@2.0", "--selector", "role=web", "--at", "+6s", "--activate-timeout", "2s"]);
    let id = out["id"].as_str().unwrap().to_owned();
    f.wait_state(&id, &["scheduled"], LONG);
    f.kill_agent("b");
    let d = f.wait_state(&id, &["rolling_back"], LONG);
    wait_until("a to be rolled back", LONG, || {
        (instruction(&f.deployment(&id), "a")["state"] == "rolled_back").then_some(())
    });
    assert!(instruction(&d, "b")["note"].as_str().unwrap().contains("no report within 2s"), "{d:#}");
    let status = f.ok(&["status", &id]);
    assert!(status.contains("waiting  for b (rolling_back"), "{status}");
    f.start_agent("b", "role=web", &[], &[]);
    let d = f.wait_state(&id, &["rolled_back"], LONG);
    assert_eq!(instruction(&d, "b")["state"], "rolled_back");
    assert_eq!(f.live("web"), vec![("a".into(), Some("1.0".into())), ("b".into(), None)]);
}

#[test]
fn decommissioned_targets_are_removed_and_lose_their_credential() {
    let mut f = Fleet::start();
    f.start_agent("a", "role=web,site=sh", &[], &[]);
    f.start_agent("b", "role=web,site=bj", &[], &[]);
    let hosts = |v: serde_json::Value| -> Vec<String> {
        v.as_array().unwrap().iter().map(|t| t["hostname"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(hosts(f.json(&["targets", "--selector", "site=bj"])), vec!["b"]);
    let b = f.json(&["targets", "--selector", "site=bj"])[0]["id"].as_str().unwrap().to_owned();

    // a target with work under way cannot be removed
    publish(&f, "1.0", 1_000);
    let id =
        f.json(&["deploy", "web@1.0", "--selector", "role=web", "--at", "+30s"])["id"].as_str().unwrap().to_owned();
    f.wait_state(&id, &["scheduled"], LONG);
    let out = f.cli(&["targets", "remove", &b]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unfinished deployment"));
    f.ok(&["rollback", &id, "--wait"]);

    f.ok(&["targets", "remove", &b]);
    assert_eq!(hosts(f.json(&["targets"])), vec!["a"]);
    let out = f.cli(&["targets", "remove", &b]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    // its agent is told its credential is gone
    let log = f.agents.iter().find(|(n, _)| n == "b").unwrap().1.log.clone();
    wait_until("b to notice", LONG, || {
        std::fs::read_to_string(&log).unwrap().contains("no longer accepts").then_some(())
    });
}

#[test]
fn deploying_the_live_release_again_restarts_it_once() {
    let mut f = Fleet::start();
    f.start_agent("a", "role=web", &[], &[]);
    let src = f.path("src/1.0");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("convoy.toml"),
        "[hooks]\nstop = \"echo stop $CONVOY_VERSION >> $CONVOY_ROOT/hooks.log\"\nstart = \"echo start $CONVOY_VERSION >> $CONVOY_ROOT/hooks.log\"\n",
    )
    .unwrap();
    f.ok(&["publish", src.to_str().unwrap(), "--app", "web", "--version", "1.0"]);
    for _ in 0..2 {
        assert_eq!(deploy_wait(&f, &["web@1.0", "--selector", "role=web"]).0, 0);
    }
    let log = std::fs::read_to_string(f.agent_root("a").join("hooks.log")).unwrap();
    assert_eq!(log, "start 1.0\nstop 1.0\nstart 1.0\n");
}

#[test]
fn a_server_restart_mid_download_costs_no_attempt() {
    let mut f = Fleet::start();
    f.start_agent("a", "role=web", &[], &["--max-rate", "1000000"]);
    publish(&f, "1.0", 6_000_000);
    let id = f.json(&["deploy", "web@1.0", "--selector", "role=web"])["id"].as_str().unwrap().to_owned();
    let cache = f.agent_root("a").join(".convoy/cache");
    wait_until("the download to start", LONG, || (walk_files(&cache) >= 5).then_some(()));
    f.kill_server();
    std::thread::sleep(Duration::from_millis(1500));
    f.start_server();
    let d = f.wait_state(&id, &["succeeded", "failed"], LONG);
    assert_eq!(d["deployment"]["state"], "succeeded", "{d:#}");
    assert_eq!(instruction(&d, "a")["attempt"], 0, "the agent retried the download, not the whole staging: {d:#}");
}

#[test]
fn rollback_leaves_targets_a_later_deployment_moved_on() {
    let mut f = Fleet::start();
    f.start_agent("a", "role=web", &[], &[]);
    f.start_agent("b", "role=web", &[], &[]);
    for v in ["1.0", "2.0", "2.1"] {
        publish(&f, v, 10_000);
    }
    let mut ids = Vec::new();
    for v in ["1.0", "2.0", "2.1"] {
        let (code, d) = deploy_wait(&f, &[&format!("web@{v}"), "--selector", "role=web"]);
        assert_eq!(code, 0, "{d:#}");
        ids.push(d["deployment"]["id"].as_str().unwrap().to_owned());
    }
    // 2.0 was superseded on every target: refused, naming the newer one;
    // the fleet and the newer deployment are untouched
    let out = f.cli(&["rollback", &ids[1]]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("moved on by") && err.contains(&ids[2]), "{err}");
    assert_eq!(f.deployment(&ids[1])["deployment"]["state"], "succeeded");
    assert_eq!(f.deployment(&ids[2])["deployment"]["state"], "succeeded");
    assert_eq!(f.live("web"), vec![("a".into(), Some("2.1".into())), ("b".into(), Some("2.1".into()))]);
    // newest first: 2.1 back to 2.0, then 2.0 back to 1.0
    f.ok(&["rollback", &ids[2], "--wait"]);
    assert_eq!(f.live("web"), vec![("a".into(), Some("2.0".into())), ("b".into(), Some("2.0".into()))]);
    f.ok(&["rollback", &ids[1], "--wait"]);
    assert_eq!(f.live("web"), vec![("a".into(), Some("1.0".into())), ("b".into(), Some("1.0".into()))]);
}

#[test]
fn rollback_of_a_partly_superseded_deployment_moves_only_its_own_targets() {
    let mut f = Fleet::start();
    f.start_agent("a", "role=web,tier=canary", &[], &[]);
    f.start_agent("b", "role=web", &[], &[]);
    for v in ["1.0", "2.0", "2.1"] {
        publish(&f, v, 10_000);
    }
    deploy_wait(&f, &["web@1.0", "--selector", "role=web"]);
    let (_, d2) = deploy_wait(&f, &["web@2.0", "--selector", "role=web"]);
    let d2 = d2["deployment"]["id"].as_str().unwrap().to_owned();
    let (code, d3) = deploy_wait(&f, &["web@2.1", "--selector", "tier=canary"]);
    assert_eq!(code, 0, "{d3:#}");
    let d3 = d3["deployment"]["id"].as_str().unwrap().to_owned();
    f.ok(&["rollback", &d2, "--wait", "--reason", "2.0 is slow"]);
    // b goes back to 1.0; a stays on 2.1, which d3 still rightly reports
    assert_eq!(f.live("web"), vec![("a".into(), Some("2.1".into())), ("b".into(), Some("1.0".into()))]);
    let after = f.deployment(&d2);
    assert_eq!(after["deployment"]["state"], "rolled_back", "{after:#}");
    let note = after["deployment"]["note"].as_str().unwrap();
    assert!(note.contains("left on the later deployment"), "{note}");
    let a = instruction(&after, "a");
    assert_eq!(a["state"], "superseded", "{a:#}");
    assert!(a["note"].as_str().unwrap().contains(&d3), "{a:#}");
    assert_eq!(f.deployment(&d3)["deployment"]["state"], "succeeded");
    let events = f.json(&["audit", "--deployment", &d2]);
    assert!(events.as_array().unwrap().iter().any(|e| e["note"].as_str().unwrap_or_default().contains("2.0 is slow")));
}

#[test]
fn rolling_back_after_a_target_was_removed_finishes() {
    let mut f = Fleet::start();
    f.start_agent("a", "role=web", &[], &[]);
    f.start_agent("b", "role=web", &[], &[]);
    publish(&f, "1.0", 10_000);
    publish(&f, "2.0", 10_000);
    deploy_wait(&f, &["web@1.0", "--selector", "role=web"]);
    let (_, d) = deploy_wait(&f, &["web@2.0", "--selector", "role=web"]);
    let id = d["deployment"]["id"].as_str().unwrap().to_owned();
    let b = instruction(&d, "b")["target_id"].as_str().unwrap().to_owned();
    f.kill_agent("b");
    f.ok(&["targets", "remove", &b]);
    f.ok(&["rollback", &id]);
    let after = f.wait_state(&id, &["rolled_back"], Duration::from_secs(60));
    let gone = after["instructions"].as_array().unwrap().iter().find(|i| i["target_id"] == b.as_str()).unwrap();
    assert_eq!(gone["state"], "failed", "{gone:#}");
    assert!(gone["note"].as_str().unwrap().contains("was removed"), "{gone:#}");
    assert_eq!(instruction(&after, "a")["state"], "rolled_back");
    assert_eq!(f.live("web"), vec![("a".into(), Some("1.0".into()))]);
}

#[test]
fn targets_enrolled_after_planning_are_named_not_silently_left_out() {
    let mut f = Fleet::start();
    f.start_agent("a", "role=web", &[], &[]);
    publish(&f, "1.0", 10_000);
    let (_, d) = deploy_wait(&f, &["web@1.0", "--selector", "role=web"]);
    let id = d["deployment"]["id"].as_str().unwrap().to_owned();
    let all = |f: &Fleet| f.json(&["status", &id, "--all"]);
    assert!(all(&f)["not_included"].is_null(), "nobody is left out yet");
    f.start_agent("late", "role=web", &[], &[]);
    assert!(f.deployment(&id)["not_included"].is_null(), "looked for only with --all (it reads every target)");
    let after = all(&f);
    let late = after["not_included"].as_array().unwrap();
    assert_eq!(late.len(), 1, "{after:#}");
    assert!(late[0].as_str().unwrap().starts_with("late ("), "{late:?}");
    let table = f.ok(&["status", &id, "--all"]);
    assert!(table.contains("not in this deployment") && table.contains("late ("), "{table}");
}

#[test]
fn a_paused_deployment_starts_no_wave_until_resumed() {
    let mut f = Fleet::start();
    // a slow line: staging takes seconds, time enough to pause
    f.start_agent("a", "role=web", &[], &["--max-rate", "300000"]);
    publish(&f, "1.0", 2_000_000);
    let id = f.json(&["deploy", "web@1.0", "--selector", "role=web"])["id"].as_str().unwrap().to_owned();
    f.ok(&["pause", &id, "--reason", "hold for the sale"]);
    let out = f.cli(&["pause", &id]);
    assert_eq!(out.status.code(), Some(1), "pausing twice is refused");
    // every copy staged, yet nothing goes live while paused
    wait_until("the target to stage", LONG, || {
        let d = f.deployment(&id);
        (instruction(&d, "a")["state"] == "staged").then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let d = f.deployment(&id);
    assert_eq!(d["deployment"]["state"], "staging", "{d:#}");
    assert_eq!(d["deployment"]["paused_by"], "admin");
    assert!(f.ok(&["status", &id]).contains("paused   by admin"));
    assert_eq!(f.live("web"), vec![("a".into(), None)]);
    f.ok(&["resume", &id, "--reason", "sale over"]);
    let d = f.wait_state(&id, &["succeeded", "failed"], LONG);
    assert_eq!(d["deployment"]["state"], "succeeded", "{d:#}");
    let notes: Vec<String> =
        d["events"].as_array().unwrap().iter().map(|e| e["note"].as_str().unwrap().to_owned()).collect();
    assert!(
        notes.iter().any(|n| n.contains("hold for the sale")) && notes.iter().any(|n| n.contains("sale over")),
        "{notes:?}"
    );
}

#[test]
fn retry_takes_only_the_failed_targets_again() {
    let mut f = Fleet::start();
    for n in ["a", "b", "c"] {
        f.start_agent(n, "role=web", &[], &[]);
    }
    publish(&f, "1.0", 10_000);
    publish(&f, "2.0", 10_000);
    deploy_wait(&f, &["web@1.0", "--selector", "role=web"]);
    std::fs::write(f.agent_root("c").join("simulate-outage"), b"").unwrap();
    let (code, d) = deploy_wait(&f, &["web@2.0", "--selector", "role=web", "--max-failures", "1"]);
    assert_eq!((code, d["deployment"]["state"].as_str()), (0, Some("succeeded")), "{d:#}");
    assert_eq!(instruction(&d, "c")["state"], "rolled_back");
    let id = d["deployment"]["id"].as_str().unwrap().to_owned();
    let c_attempt = instruction(&d, "c")["attempt"].as_i64().unwrap();
    let before: Vec<(String, i64)> =
        ["a", "b"].iter().map(|h| (h.to_string(), instruction(&d, h)["updated_at"].as_i64().unwrap())).collect();
    // bad targets are refused clearly, changing nothing
    let out = f.cli(&["retry", &id, "--target", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a target of"));
    let out = f.cli(&["retry", &id, "--target", "a"]);
    assert_eq!(out.status.code(), Some(1), "a is healthy: nothing to retry");
    // the outage is over: retry c only
    std::fs::remove_file(f.agent_root("c").join("simulate-outage")).unwrap();
    let out = f.cli(&["retry", &id, "--target", "c", "--reason", "outage fixed", "--wait", "--output", "json"]);
    assert!(
        out.status.success(),
        "{:?}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let after = f.deployment(&id);
    assert_eq!(after["deployment"]["state"], "succeeded", "{after:#}");
    assert_eq!(instruction(&after, "c")["state"], "succeeded");
    assert_eq!(instruction(&after, "c")["attempt"].as_i64().unwrap(), c_attempt + 1, "a new attempt");
    for (h, at) in before {
        assert_eq!(instruction(&after, &h)["updated_at"].as_i64().unwrap(), at, "{h} was untouched");
    }
    assert_eq!(
        f.live("web"),
        vec![("a".into(), Some("2.0".into())), ("b".into(), Some("2.0".into())), ("c".into(), Some("2.0".into()))]
    );
    assert!(f.ok(&["status", &id, "--events"]).contains("outage fixed"));
}

#[test]
fn cancel_stops_a_transfer_in_flight_within_seconds() {
    let mut f = Fleet::start();
    // 8 MB over a 200 KB/s line: some 40 s of download
    f.start_agent("a", "role=web", &[], &["--max-rate", "200000"]);
    publish(&f, "1.0", 8_000_000);
    let id = f.json(&["deploy", "web@1.0", "--selector", "role=web"])["id"].as_str().unwrap().to_owned();
    wait_until("the download to start", LONG, || {
        let d = f.deployment(&id);
        (instruction(&d, "a")["state"] == "received").then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let canceled = std::time::Instant::now();
    let d: serde_json::Value =
        serde_json::from_str(&f.ok(&["cancel", &id, "--reason", "wrong build", "--output", "json"])).unwrap();
    assert_eq!(d["state"], "canceled", "{d:#}");
    let agent_log = f.path("agent-a-0.log");
    wait_until("the agent to stop its transfer", Duration::from_secs(15), || {
        std::fs::read_to_string(&agent_log).unwrap_or_default().contains("staging stopped").then_some(())
    });
    let web = f.agent_root("a").join("releases/web");
    assert!(!web.join(".1.0.partial").exists() && !web.join("1.0").exists(), "nothing half-written stays");
    // the line is free at once: a small release goes live long before the
    // first download would have ended
    publish(&f, "1.1", 10_000);
    let (code, d) = deploy_wait(&f, &["web@1.1", "--selector", "role=web"]);
    assert_eq!((code, d["deployment"]["state"].as_str()), (0, Some("succeeded")), "{d:#}");
    assert!(canceled.elapsed() < Duration::from_secs(25), "took {:?}", canceled.elapsed());
    assert_eq!(f.live("web"), vec![("a".into(), Some("1.1".into()))]);
    let events = f.ok(&["status", &id, "--events"]);
    assert!(events.contains("wrong build"), "{events}");
}

#[test]
fn deploy_picks_single_targets_by_id_or_hostname() {
    let mut f = Fleet::start();
    for n in ["a", "b", "c"] {
        f.start_agent(n, "role=web", &[], &[]);
    }
    publish(&f, "1.0", 10_000);
    let b = f.target_id("b");
    let (code, d) = deploy_wait(&f, &["web@1.0", "--target", "a", "--target", &b]);
    assert_eq!((code, d["deployment"]["state"].as_str()), (0, Some("succeeded")), "{d:#}");
    assert_eq!(
        f.live("web"),
        vec![("a".into(), Some("1.0".into())), ("b".into(), Some("1.0".into())), ("c".into(), None)]
    );
    // a name that is no target, or one outside the selector, is refused and changes nothing
    let out = f.cli(&["deploy", "web@1.0", "--target", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no enrolled target has the id or hostname"));
    let out = f.cli(&["deploy", "web@1.0", "--selector", "role=db", "--target", "c"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not match the selector"));
}

/// The README's first command: the demo runs every step on embedded
/// defaults and says it passed (signed releases and approvals included).
#[test]
fn the_demo_passes() {
    let out = std::process::Command::new(EXE)
        .arg("demo")
        .env_remove("CONVOY_SERVER")
        .env_remove("CONVOY_TOKEN")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("demo passed"), "{text}");
    assert!(
        text.contains("every agent refused it") && text.contains("not in the server's signed TUF metadata"),
        "{text}"
    );
    assert!(text.contains("(signed, key "), "{text}");
}
