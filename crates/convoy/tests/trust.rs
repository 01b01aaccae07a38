//! Who may do what, tried as an attacker would through the real binary:
//! relays exist only by an operator's grant and never see an agent's
//! credential, a relay cannot alter or invent work, labels belong to the
//! server, and tokens can be scoped, used up, revoked, rotated and rate
//! limited.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(120);

/// A TCP proxy that records every byte clients send through it (request
/// lines, headers, bodies) before passing them on.
struct Recorder {
    url: String,
    seen: Arc<Mutex<Vec<u8>>>,
}

fn recorder(upstream: u16) -> Recorder {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rec = seen.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let rec = rec.clone();
            std::thread::spawn(move || {
                let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else { return };
                let (mut c2, mut up2) = (c.try_clone().unwrap(), up.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut up2, &mut c2);
                });
                let (mut c, mut up) = (c, up);
                let mut buf = [0u8; 16384];
                loop {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            rec.lock().unwrap().extend_from_slice(&buf[..n]);
                            if up.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = up.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    Recorder { url, seen }
}

fn put_json(port: u16, path: &str, token: &str, body: &serde_json::Value) -> (u16, String) {
    http(port, "PUT", path, Some(token), body.to_string().as_bytes()).unwrap()
}

fn inventory(host: &str, labels: serde_json::Value, relay: Option<&str>) -> serde_json::Value {
    let mut inv = serde_json::json!({"hostname": host, "os": "linux", "arch": "x86_64", "free_disk_bytes": 1u64 << 40,
        "labels": labels, "installed": {}, "current": {}, "agent_version": "test"});
    if let Some(r) = relay {
        inv["relay"] = r.into();
    }
    inv
}

fn target<'a>(ts: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    ts.as_array().unwrap().iter().find(|t| t["id"] == id).unwrap()
}

fn audit_has(f: &Fleet, what: &str, needle: &str) -> bool {
    f.json(&["audit", "--limit", "1000"])
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["to"] == what && e["note"].as_str().unwrap_or_default().contains(needle))
}

#[test]
fn relays_are_granted_never_claimed_and_see_no_agent_token() {
    let mut f = Fleet::start();
    // the relay listens behind a recorder: everything sent to it is kept
    let port = free_port();
    let rec = recorder(port);
    f.start_agent("relay", "site=sh,role=relay", &[], &["--relay", "--listen", &format!("127.0.0.1:{port}")]);
    f.ok(&["relays", "grant", &f.target_id("relay"), "--site", "sh", "--url", &rec.url]);
    for n in ["w1", "w2"] {
        f.start_agent(n, "site=sh,role=web", &[], &["--poll-via", &rec.url, "--poll-wait", "1"]);
    }

    // an enrolled machine of another site claims site sh and a relay URL
    f.start_agent("evil", "site=bj,role=web", &[], &[]);
    let evil = f.target_id("evil");
    let trap = TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let trap_url = format!("http://{}", trap.local_addr().unwrap());
    let claim = inventory("evil", serde_json::json!({"site": "sh", "role": "web", "owned": "yes"}), Some(&trap_url));
    let (code, body) = put_json(f.port, "/api/v1/agent/inventory", &f.agent_token("evil"), &claim);
    assert_eq!(code, 200, "{body}");
    // a relay it is not: site polls are refused
    let poll = serde_json::json!({"epoch": null, "wait": 0, "targets": []});
    let (code, body) =
        http(f.port, "POST", "/api/v1/agent/site-poll", Some(&f.agent_token("evil")), poll.to_string().as_bytes())
            .unwrap();
    assert_eq!(code, 403, "{body}");

    let src = f.path("src/1.0");
    write_app(&src, "1.0", 600_000);
    f.ok(&["publish", src.to_str().unwrap(), "--app", "web", "--version", "1.0"]);
    let d = f.json(&["deploy", "web@1.0", "--selector", "site=sh", "--wait"]);
    assert_eq!(d["deployment"]["state"], "succeeded", "{d:#}");
    let hosts: Vec<&str> =
        d["instructions"].as_array().unwrap().iter().map(|i| i["hostname"].as_str().unwrap()).collect();
    assert!(!hosts.contains(&"evil"), "a machine that relabelled itself was picked: {hosts:?}");
    for i in d["instructions"].as_array().unwrap() {
        if i["hostname"] != "relay" {
            assert_eq!(i["metrics"]["via"], rec.url.as_str(), "content came through the relay: {i:#}");
        }
    }

    // the relay saw polls and content requests, and not one credential
    let seen = String::from_utf8_lossy(&rec.seen.lock().unwrap()).to_lowercase();
    assert!(seen.contains("get /api/v1/agent/work"), "agents polled through the relay");
    assert!(seen.contains("x-convoy-grant"), "agents showed read grants");
    assert!(!seen.contains("authorization:"), "an Authorization header reached the relay");
    for n in ["w1", "w2", "relay", "evil"] {
        assert!(!seen.contains(&f.agent_token(n).to_lowercase()), "{n}'s token reached the relay");
    }
    assert!(!seen.contains(&ENROL.to_lowercase()) && !seen.contains(&ADMIN.to_lowercase()));

    // the claim changed nothing: labels, relays, the trap was never asked
    let ts = f.json(&["targets"]);
    let t = target(&ts, &evil);
    assert_eq!(t["labels"], serde_json::json!({"site": "bj", "role": "web"}), "{t:#}");
    let w = t["warning"].as_str().unwrap();
    assert!(w.contains("site=sh") && w.contains("relays are granted"), "{w}");
    let relays = f.json(&["relays", "list"]);
    assert_eq!(relays.as_array().unwrap().len(), 1, "{relays:#}");
    assert_eq!(relays[0]["target_id"], f.target_id("relay").as_str());
    assert!(trap.accept().is_err(), "an agent was sent to the claimed relay");
    assert!(audit_has(&f, "relay_granted", &f.target_id("relay")));

    // revoking the relay: agents fetch from the server again, audited
    f.ok(&["relays", "revoke", &f.target_id("relay")]);
    assert!(audit_has(&f, "relay_revoked", &f.target_id("relay")));
    assert_eq!(f.json(&["relays", "list"]).as_array().unwrap().len(), 0);
    let src = f.path("src/2.0");
    write_app(&src, "2.0", 600_000);
    f.ok(&["publish", src.to_str().unwrap(), "--app", "web", "--version", "2.0"]);
    let d = f.json(&["deploy", "web@2.0", "--selector", "site=sh", "--wait"]);
    assert_eq!(d["deployment"]["state"], "succeeded", "{d:#}");
    for i in d["instructions"].as_array().unwrap() {
        assert!(i["metrics"]["via"].is_null(), "no relay after revocation: {i:#}");
    }
    // errors change nothing
    let out = f.cli(&["relays", "grant", "t-000000000000", "--site", "sh"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    let out = f.cli(&["relays", "grant", &evil, "--site", "bad site!"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(f.json(&["relays", "list"]).as_array().unwrap().len(), 0);
}

/// A granted relay of site sh behaving as the fault says, and an agent
/// w1 that long-polls it for work.
fn hostile_relay(f: &mut Fleet, fault: &str) {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    f.start_agent(
        "relay",
        "site=sh,role=relay",
        &[("CONVOY_AGENT_FAULT", fault)],
        &["--relay", "--listen", &format!("127.0.0.1:{port}")],
    );
    f.grant_relay("relay", "sh", &url);
    f.start_agent("w1", "site=sh,role=web", &[], &["--poll-via", &url, "--poll-wait", "1"]);
}

#[test]
fn agents_refuse_work_a_relay_altered_or_invented() {
    let mut f = Fleet::start();
    hostile_relay(&mut f, "relay-forge-work");
    let w1 = f.target_id("w1");
    let src = f.path("src/1.0");
    write_app(&src, "1.0", 50_000);
    f.ok(&["publish", src.to_str().unwrap(), "--app", "web", "--version", "1.0"]);
    let id = f.json(&["deploy", "web@1.0", "--selector", "role=web"])["id"].as_str().unwrap().to_owned();
    // the agent refuses what the relay sent, says so, and gets its real
    // work from the server instead
    wait_until("the refusal to be reported", LONG, || {
        let ts = f.json(&["targets"]);
        target(&ts, &w1)["warning"].as_str().unwrap_or_default().contains("refused work").then_some(())
    });
    let d = f.json(&["watch", &id]);
    assert_eq!(d["deployment"]["state"], "succeeded", "{d:#}");
    assert!(audit_has(&f, "work_refused", "signature"), "the refusal is audited");
    let (_, metrics) = http(f.port, "GET", "/metrics", None, b"").unwrap();
    let refused: u64 =
        metrics.lines().find_map(|l| l.strip_prefix("convoy_refused_work_total ")).unwrap().parse().unwrap();
    assert!(refused >= 1, "{refused}");
    // nothing of the forged work was installed or staged
    let releases = f.agent_root("w1").join("releases/web");
    let names: Vec<String> =
        std::fs::read_dir(&releases).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.contains("forged")), "{names:?}");
    assert_eq!(f.live("web").into_iter().find(|(h, _)| h == "w1").unwrap().1.as_deref(), Some("1.0"));
    let log = f.agents.iter().find(|(n, _)| n == "w1").unwrap().1.log_text();
    assert!(log.contains("refusing work that does not verify"), "{log}");
}

/// Runs `convoy agent` until it exits (it must, within the limit).
fn agent_once(f: &Fleet, name: &str, labels: &str, token: &str) -> (bool, String) {
    let root = f.agent_root(name);
    std::fs::create_dir_all(&root).unwrap();
    let mut c = Command::new(EXE)
        .args(["agent", "--server", &f.url, "--root", root.to_str().unwrap(), "--labels", labels, "--name", name])
        .env("CONVOY_TOKEN", token)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_until("the refused agent to exit", Duration::from_secs(30), || c.try_wait().unwrap());
    let mut err = String::new();
    c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (status.success(), err)
}

fn secret(out: &str) -> String {
    out.lines().next().unwrap().trim().to_owned()
}

#[test]
fn labels_belong_to_the_server_and_enrolment_tokens_are_scoped() {
    let mut f = Fleet::start();
    let made = f.json(&["enrol-tokens", "create", "--labels", "site=sh,role=web", "--uses", "2", "--expires", "1h"]);
    let (tok_id, tok) = (made["id"].as_str().unwrap().to_owned(), made["token"].as_str().unwrap().to_owned());
    // a label the token does not allow is refused at enrolment, clearly
    let (ok, err) = agent_once(&f, "bad", "site=bj", &tok);
    assert!(!ok && err.contains("does not allow the labels site=bj"), "{err}");
    assert!(!f.agent_root("bad").join(".convoy/agent.json").exists());
    // asking for nothing (or the same) gets the token's labels
    f.start_agent("a1", "", &[("CONVOY_TOKEN", tok.as_str())], &[]);
    f.start_agent("a2", "site=sh", &[("CONVOY_TOKEN", tok.as_str())], &[]);
    let ts = f.json(&["targets"]);
    for n in ["a1", "a2"] {
        assert_eq!(target(&ts, &f.target_id(n))["labels"], serde_json::json!({"site": "sh", "role": "web"}));
    }
    assert!(audit_has(&f, "target_enrolled", &f.target_id("a1")));
    let audit = f.json(&["audit", "--actor", &format!("enrol-token:{tok_id}")]);
    let by = |what: &str| audit.as_array().unwrap().iter().filter(|e| e["to"] == what).count();
    assert_eq!(by("target_enrolled"), 2, "every enrolment names its token: {audit:#}");
    assert_eq!(by("enrolment_refused"), 1, "the refused one too: {audit:#}");
    // used up
    let (ok, err) = agent_once(&f, "a3", "", &tok);
    assert!(!ok && err.contains("used up"), "{err}");

    // an enrolled agent cannot move itself to another site
    let a1 = f.target_id("a1");
    let (code, body) = put_json(
        f.port,
        "/api/v1/agent/inventory",
        &f.agent_token("a1"),
        &inventory("a1", serde_json::json!({"site": "bj"}), None),
    );
    assert_eq!(code, 200, "{body}");
    let ts = f.json(&["targets"]);
    assert_eq!(target(&ts, &a1)["labels"]["site"], "sh");
    assert!(target(&ts, &a1)["warning"].as_str().unwrap().contains("site=bj"));
    let src = f.path("src/1.0");
    write_app(&src, "1.0", 10_000);
    f.ok(&["publish", src.to_str().unwrap(), "--app", "web", "--version", "1.0"]);
    let out = f.cli(&["deploy", "web@1.0", "--selector", "site=bj"]);
    assert!(!out.status.success(), "nothing is in bj yet");

    // an operator moves it; audited; selectors follow
    f.ok(&["targets", "label", &a1, "site=bj", "tier=gold", "--remove", "role"]);
    let ts = f.json(&["targets"]);
    assert_eq!(target(&ts, &a1)["labels"], serde_json::json!({"site": "bj", "tier": "gold"}));
    assert!(audit_has(&f, "target_labelled", "site=bj"));
    let d = f.json(&["deploy", "web@1.0", "--selector", "site=bj", "--wait"]);
    assert_eq!(d["deployment"]["state"], "succeeded", "{d:#}");
    assert_eq!(d["instructions"].as_array().unwrap().len(), 1);
    assert_eq!(d["instructions"][0]["target_id"], a1.as_str());
    // bad relabels change nothing
    for bad in [
        vec!["targets", "label", &a1, "site=bj", "--remove", "site"],
        vec!["targets", "label", &a1, "--remove", "nope"],
        vec!["targets", "label", "t-000000000000", "x=y"],
        vec!["targets", "label", &a1, "bad label"],
    ] {
        let out = f.cli(&bad);
        assert_eq!(out.status.code(), Some(1), "{bad:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(target(&f.json(&["targets"]), &a1)["labels"], serde_json::json!({"site": "bj", "tier": "gold"}));

    // a revoked token says so; enrolled agents keep working
    let other = f.json(&["enrol-tokens", "create"]);
    let other_id = other["id"].as_str().unwrap();
    f.ok(&["enrol-tokens", "revoke", other_id]);
    let (ok, err) = agent_once(&f, "a4", "", other["token"].as_str().unwrap());
    assert!(!ok && err.contains("revoked"), "{err}");
    assert!(audit_has(&f, "enrol_token_revoked", other_id));
    let out = f.cli(&["enrol-tokens", "revoke", other_id]);
    assert_eq!(out.status.code(), Some(1), "revoking twice is an error");
    let list = f.json(&["enrol-tokens", "list"]);
    let row = list.as_array().unwrap().iter().find(|t| t["id"] == other_id).unwrap();
    assert!(row["revoked_at"].is_i64() && row["token"].is_null(), "{row:#}");
}

#[test]
fn tokens_rotate_and_the_old_ones_stop_working() {
    let mut f = Fleet::start();
    // a user's token
    let alice = secret(&f.ok(&["users", "add", "alice", "--role", "viewer"]));
    assert!(as_user(&f, &alice, &["deployments"]).status.success());
    let fresh = secret(&String::from_utf8_lossy(&as_user(&f, &alice, &["users", "token", "alice", "--rotate"]).stdout));
    let out = as_user(&f, &alice, &["deployments"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoked"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(as_user(&f, &fresh, &["deployments"]).status.success());
    let out = as_user(&f, &fresh, &["users", "token", "admin", "--rotate"]);
    assert!(!out.status.success(), "a viewer cannot rotate another's token");
    assert!(audit_has(&f, "token_rotated", "alice"));

    // the first administrator's token
    let admin2 = secret(&f.ok(&["users", "token", "admin", "--rotate"]));
    let (code, body) = http(f.port, "GET", "/api/v1/targets", Some(ADMIN), b"").unwrap();
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("revoked"), "{body}");
    assert!(as_user(&f, &admin2, &["targets"]).status.success());
    // a restart with the old token still configured does not bring it back
    f.kill_server();
    f.start_server();
    let (code, _) = http(f.port, "GET", "/api/v1/targets", Some(ADMIN), b"").unwrap();
    assert_eq!(code, 401);
    assert!(as_user(&f, &admin2, &["targets"]).status.success());

    // the bootstrap enrolment token: a new one in the configuration revokes the old
    let new_enrol = "rotated-enrol-token-0123456789";
    f.kill_server();
    f.server_env = vec![("CONVOY_ENROL_TOKEN".into(), new_enrol.into())];
    f.start_server();
    let inv = serde_json::json!({"inventory": inventory("x", serde_json::json!({}), None)});
    let (code, body) = http(f.port, "POST", "/api/v1/agent/enroll", Some(ENROL), inv.to_string().as_bytes()).unwrap();
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("revoked"), "{body}");
    let (code, body) =
        http(f.port, "POST", "/api/v1/agent/enroll", Some(new_enrol), inv.to_string().as_bytes()).unwrap();
    assert_eq!(code, 200, "{body}");
}

#[test]
fn enrolment_is_rate_limited_per_address() {
    let mut f = Fleet::start_with_args(&["--enrol-rate-address", "5"]);
    let inv = serde_json::json!({"inventory": inventory("burst", serde_json::json!({}), None)}).to_string();
    let codes: Vec<u16> =
        (0..12).map(|_| http(f.port, "POST", "/api/v1/agent/enroll", Some(ENROL), inv.as_bytes()).unwrap().0).collect();
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 5, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 7, "{codes:?}");
    // a 429 says when to come back
    let mut s = TcpStream::connect(("127.0.0.1", f.port)).unwrap();
    write!(
        s,
        "POST /api/v1/agent/enroll HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ENROL}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{inv}",
        inv.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 429"), "{resp}");
    assert!(resp.to_lowercase().contains("retry-after:"), "{resp}");
    assert!(resp.contains("too many enrolments"), "{resp}");
    assert_eq!(f.json(&["targets"]).as_array().unwrap().len(), 5, "refused enrolments wrote nothing");
    f.kill_server();
}

#[test]
fn a_relay_replaying_withdrawn_work_switches_nothing() {
    let mut f = Fleet::start();
    hostile_relay(&mut f, "relay-replay");
    let src = f.path("src/1.0");
    write_app(&src, "1.0", 20_000);
    f.ok(&["publish", src.to_str().unwrap(), "--app", "web", "--version", "1.0"]);
    // planned go-live; the operator withdraws it once every copy is staged
    let id =
        f.json(&["deploy", "web@1.0", "--selector", "role=web", "--at", "+15s"])["id"].as_str().unwrap().to_owned();
    wait_until("the deployment to be scheduled", LONG, || {
        (f.deployment(&id)["deployment"]["state"] == "scheduled").then_some(())
    });
    // the relay has now passed on the signed activation; withdraw it
    std::thread::sleep(Duration::from_secs(2));
    f.ok(&["rollback", &id]);
    // past the planned time the relay keeps serving the old activation: the
    // agent asks the server about relayed work, and switches nothing
    std::thread::sleep(Duration::from_secs(20));
    let live = f.live("web").into_iter().find(|(h, _)| h == "w1").unwrap().1;
    assert_eq!(live, None, "a withdrawn activation replayed by a relay went live");
    assert!(!f.agent_root("w1").join("current/web").exists());
    let log = f.agents.iter().find(|(n, _)| n == "w1").unwrap().1.log_text();
    assert!(log.contains("not switching"), "{log}");
}
