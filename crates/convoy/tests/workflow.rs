//! The deployment workflow through the real binary: users and roles,
//! environments, approvals, preflight, confirmation, planned waves, the
//! audit log, go-live windows.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(120);

fn json_as(f: &Fleet, token: &str, args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.extend_from_slice(&["--output", "json"]);
    serde_json::from_str(&ok_as(f, token, &a)).unwrap()
}

/// Fails, and says why on stderr containing `why`.
fn refused_as(f: &Fleet, token: &str, args: &[&str], why: &str) {
    let out = as_user(f, token, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(why), "convoy {args:?} should fail with {why:?}: {err}");
}

fn add_user(f: &Fleet, name: &str, role: &str) -> String {
    let out = f.ok(&["users", "add", name, "--role", role]);
    out.trim().to_owned()
}

fn publish(f: &Fleet, version: &str) {
    let src = f.path(&format!("src/{version}"));
    write_app(&src, version, 50_000);
    f.ok(&["publish", src.to_str().unwrap(), "--app", "web", "--version", version]);
}

/// A webhook receiver on loopback: collects every JSON body POSTed to it.
fn webhook() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    let got: Arc<Mutex<Vec<serde_json::Value>>> = Default::default();
    let sink = got.clone();
    std::thread::spawn(move || {
        for s in l.incoming().take(200) {
            let Ok(mut s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            if r.read_exact(&mut body).is_ok() {
                if let Ok(v) = serde_json::from_slice(&body) {
                    sink.lock().unwrap().push(v);
                }
            }
            let _ = s.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (url, got)
}

#[test]
fn approvals_preflight_confirmation_and_waves() {
    let mut f = Fleet::start();
    for (name, site) in [("a", "sh"), ("b", "sh"), ("c", "sh"), ("d", "bj"), ("e", "bj")] {
        f.start_agent(name, &format!("site={site},role=web"), &[], &[]);
    }
    // a machine whose disk must stay free: preflight finds no room for the release
    f.start_agent("tiny", "site=bj,role=web", &[], &["--reserve-disk", "1000T"]);
    publish(&f, "1.0");

    let alice = add_user(&f, "alice", "deployer");
    let bob = add_user(&f, "bob", "approver");
    let carol = add_user(&f, "carol", "approver");
    let victor = add_user(&f, "victor", "viewer");
    let (hook, events) = webhook();
    f.ok(&[
        "env",
        "set",
        "prod",
        "--approvals",
        "2",
        "--confirm",
        "--waves",
        "1,60%,100%",
        "--wave-gap",
        "2s",
        "--max-failures",
        "20%",
        "--preflight-failure",
        "skip",
        "--webhook",
        &hook,
    ]);

    let req = json_as(
        &f,
        &alice,
        &["deploy", "web@1.0", "--env", "prod", "--selector", "role=web", "--at", "+40s", "--reason", "CHG-1234"],
    );
    let id = req["id"].as_str().unwrap().to_owned();
    assert_eq!(req["state"], "awaiting_approval", "{req:#}");
    let at = req["go_live_at"].as_i64().unwrap();

    // the approvers' inbox has it; the requester's does not
    let inbox = json_as(&f, &bob, &["requests"]);
    assert!(inbox.as_array().unwrap().iter().any(|r| r["deployment"]["id"] == id && r["waiting_for"] == "approve"));
    assert!(json_as(&f, &alice, &["requests"]).as_array().unwrap().is_empty());

    refused_as(&f, &alice, &["approve", &id], "can never approve"); // never one's own (and a deployer)
    refused_as(&f, &victor, &["approve", &id], "approver role");
    let one = json_as(&f, &bob, &["approve", &id, "--note", "looks fine"]);
    assert_eq!(one["state"], "awaiting_approval", "one approval of two is not enough");
    refused_as(&f, &bob, &["approve", &id], "counts once");
    let two = json_as(&f, &carol, &["approve", &id]);
    assert_eq!(two["state"], "preflight", "{two:#}");

    // preflight: the machine without room is reported, the rest pass; the
    // environment lets the request go on without it (within 20% of 6)
    let d = f.wait_state(&id, &["awaiting_confirmation", "failed"], LONG);
    assert_eq!(d["deployment"]["state"], "awaiting_confirmation", "{d:#}");
    let checks = d["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 6);
    let tiny = checks.iter().find(|c| c["hostname"] == "tiny").unwrap();
    assert_eq!(tiny["state"], "failed", "{tiny:#}");
    assert!(tiny["results"]["disk"].as_str().unwrap().starts_with("FAIL"), "{tiny:#}");
    assert!(checks.iter().filter(|c| c["hostname"] != "tiny").all(|c| c["state"] == "passed"), "{checks:#?}");
    let table = f.ok(&["status", &id]);
    assert!(table.contains("preflight 5 passed, 1 failed") && table.contains("tiny"), "{table}");
    // the plan is visible before confirmation
    let plan = &d["plan"];
    let sizes: Vec<i64> = plan["waves"].as_array().unwrap().iter().map(|w| w["targets"].as_i64().unwrap()).collect();
    assert_eq!(sizes, vec![1, 2, 2], "{plan:#}");
    assert!(d["instructions"].as_array().unwrap().is_empty(), "no instructions before confirmation");
    assert!(table.contains("wave 3"), "{table}");

    // confirmation makes one instruction per target with its wave's planned time
    refused_as(&f, &victor, &["confirm", &id], "deployer role");
    let c = json_as(&f, &alice, &["confirm", &id]);
    assert_eq!(c["state"], "staging", "{c:#}");
    let d = f.deployment(&id);
    let instrs = d["instructions"].as_array().unwrap();
    assert_eq!(instrs.len(), 5, "tiny is left out");
    for i in instrs {
        let wave = i["wave"].as_i64().unwrap();
        assert_eq!(i["planned_at"].as_i64().unwrap(), at + (wave - 1) * 2000, "{i:#}");
    }
    let in_wave = |k: i64| -> Vec<String> {
        instrs.iter().filter(|i| i["wave"] == k).map(|i| i["hostname"].as_str().unwrap().to_owned()).collect()
    };
    let (w1, w2, w3) = (in_wave(1), in_wave(2), in_wave(3));
    // one machine of wave 2 will fail its health check at go-live
    std::fs::write(f.agent_root(&w2[0]).join("simulate-outage"), b"").unwrap();

    // wave 1 goes live; wave 2 breaks its budget: every wave that went live
    // is rolled back (the default) and wave 3 never starts
    let d = f.wait_state(&id, &["rolled_back", "failed", "succeeded"], LONG);
    assert_eq!(d["deployment"]["state"], "rolled_back", "{d:#}");
    assert!(d["deployment"]["note"].as_str().unwrap().contains("rolled back"), "{d:#}");
    let state = |h: &str| {
        d["instructions"].as_array().unwrap().iter().find(|i| i["hostname"] == h).unwrap()["state"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(state(&w1[0]), "rolled_back", "wave 1 goes back too");
    for h in &w2 {
        assert_eq!(state(h), "rolled_back", "{h}: {d:#}");
    }
    for h in &w3 {
        assert_eq!(state(h), "canceled", "{h} (wave 3) is untouched");
    }
    let halt = d["events"].as_array().unwrap().iter().find(|e| e["to"] == "rolling_back").unwrap();
    assert!(halt["note"].as_str().unwrap().contains("wave 2 of 3"), "{halt:#}");
    let live = f.live("web");
    for (host, v) in &live {
        assert_eq!(*v, None, "{host}: nothing stays on the release: {live:?}");
    }
    // the waves went live in order: wave 2 only after wave 1 was live
    let at_of = |h: &str, to: &str| {
        let iid = &d["instructions"].as_array().unwrap().iter().find(|i| i["hostname"] == h).unwrap()["id"];
        d["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["to"] == to && e["instruction_id"] == *iid)
            .map(|e| e["at"].as_i64().unwrap())
            .unwrap_or_else(|| panic!("{h} never went {to}"))
    };
    assert!(at_of(&w1[0], "succeeded") <= at_of(&w2[0], "activating"));
    assert!(at_of(&w2[0], "rolled_back") >= at + 2000, "wave 2 went live at its planned time or later");

    // the audit log, by deployment and by actor
    let audit = json_as(&f, &victor, &["audit", "--deployment", &id]);
    let notes: Vec<&str> = audit.as_array().unwrap().iter().map(|e| e["note"].as_str().unwrap()).collect();
    assert!(notes.iter().any(|n| n.contains("approved by bob: looks fine")), "{notes:#?}");
    let by_carol = json_as(&f, &victor, &["audit", "--actor", "carol"]);
    assert!(by_carol.as_array().unwrap().iter().all(|e| e["actor"] == "user:carol"));
    assert!(by_carol.as_array().unwrap().len() >= 2, "{by_carol:#}");

    // approvers were told
    let seen = wait_until("webhook events", Duration::from_secs(20), || {
        let kinds: Vec<String> =
            events.lock().unwrap().iter().map(|e| e["event"].as_str().unwrap_or("").to_owned()).collect();
        ["approval_requested", "approved", "confirmation_requested", "confirmed"]
            .iter()
            .all(|k| kinds.iter().any(|x| x == k))
            .then_some(kinds)
    });
    assert_eq!(seen.iter().filter(|k| *k == "approved").count(), 2, "{seen:?}");
    let first = events.lock().unwrap()[0].clone();
    assert_eq!(first["request"]["reason"], "CHG-1234", "{first:#}");
}

#[test]
fn changing_a_request_voids_approvals_and_rejection_ends_it() {
    let mut f = Fleet::start();
    f.start_agent("a", "role=web", &[], &[]);
    publish(&f, "1.0");
    let alice = add_user(&f, "alice", "deployer");
    let bob = add_user(&f, "bob", "approver");
    let carol = add_user(&f, "carol", "approver");
    f.ok(&["env", "set", "prod", "--approvals", "2"]);
    let id = json_as(&f, &alice, &["deploy", "web@1.0", "--env", "prod", "--selector", "role=web"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    json_as(&f, &bob, &["approve", &id]);
    // the requester changes the request: bob's approval no longer counts
    let (code, body) =
        http(f.port, "PATCH", &format!("/api/v1/deployments/{id}"), Some(&alice), br#"{"reason":"CHG-2, wider"}"#)
            .unwrap();
    assert_eq!(code, 200, "{body}");
    let d = f.deployment(&id);
    assert_eq!(d["deployment"]["revision"], 1);
    assert!(d["approvals"].as_array().unwrap().iter().all(|a| a["current"] == false), "{d:#}");
    let after = json_as(&f, &carol, &["approve", &id]);
    assert_eq!(after["state"], "awaiting_approval", "one current approval of two");
    // bob may approve the new revision
    json_as(&f, &bob, &["approve", &id]);
    let d = f.wait_state(&id, &["preflight", "staging", "succeeded", "activating", "scheduled"], LONG);
    assert_ne!(d["deployment"]["state"], "awaiting_approval");

    // a rejection ends a request
    publish(&f, "2.0");
    let f2 = f.wait_state(&id, &["succeeded"], LONG);
    assert_eq!(f2["deployment"]["state"], "succeeded");
    let id2 = json_as(&f, &alice, &["deploy", "web@2.0", "--env", "prod", "--selector", "role=web"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    refused_as(&f, &bob, &["reject", &id2, "--note", ""], "needs a note");
    let r = json_as(&f, &bob, &["reject", &id2, "--note", "not during the sale"]);
    assert_eq!(r["state"], "rejected");
    refused_as(&f, &carol, &["approve", &id2], "not awaiting approval");
    refused_as(&f, &alice, &["confirm", &id2], "not awaiting confirmation");
}

#[test]
fn go_live_outside_the_window_is_refused_or_moved() {
    let mut f = Fleet::start();
    f.start_agent("a", "role=web", &[], &[]);
    publish(&f, "1.0");
    f.ok(&["env", "set", "prod", "--confirm", "--window", "Sat 01:00-05:00 Asia/Shanghai"]);
    // Monday 2030-12-02 10:00 in Shanghai
    let out =
        f.cli(&["deploy", "web@1.0", "--env", "prod", "--selector", "role=web", "--at", "2030-12-02T10:00:00+08:00"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused");
    assert!(err.contains("outside the allowed windows") && err.contains("2030-12-06T17:00:00Z"), "{err}");
    assert!(f.json(&["deployments"]).as_array().unwrap().is_empty(), "nothing was recorded");

    // inside the window it is taken as asked
    let inside =
        f.json(&["deploy", "web@1.0", "--env", "prod", "--selector", "role=web", "--at", "2030-12-07T02:00:00+08:00"]);
    assert_eq!(inside["go_live_at"].as_i64().unwrap(), 1_922_810_400_000, "{inside:#}");
    f.ok(&["cancel", inside["id"].as_str().unwrap()]);

    // an environment that moves such times to the next window
    f.ok(&["env", "set", "prod", "--outside-window", "next"]);
    let d =
        f.json(&["deploy", "web@1.0", "--env", "prod", "--selector", "role=web", "--at", "2030-12-02T10:00:00+08:00"]);
    // Saturday 2030-12-07 01:00 in Shanghai
    assert_eq!(d["go_live_at"].as_i64().unwrap(), 1_922_806_800_000, "{d:#}");
    let id = d["id"].as_str().unwrap();
    let events = f.deployment(id)["events"].clone();
    let first = events[0]["note"].as_str().unwrap();
    assert!(first.contains("moved to 2030-12-06T17:00:00Z"), "{events:#}");
    let w = f.wait_state(id, &["awaiting_confirmation"], LONG);
    assert_eq!(w["plan"]["waves"][0]["at"].as_i64().unwrap(), 1_922_806_800_000);
    let c = f.json(&["cancel", id]);
    assert_eq!(c["state"], "canceled");
}

#[test]
fn roles_allow_and_refuse_as_documented() {
    let mut f = Fleet::start();
    f.start_agent("a", "role=web", &[], &[]);
    publish(&f, "1.0");
    let tokens: Vec<(&str, String)> =
        ["viewer", "deployer", "approver", "admin"].iter().map(|r| (*r, add_user(&f, &format!("u-{r}"), r))).collect();
    let src = f.path("src/9.0");
    write_app(&src, "9.0", 1000);
    let src = src.to_str().unwrap().to_owned();
    f.ok(&["env", "set", "staging"]);
    // (command, least role that may run it)
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["targets"], "viewer"),
        (vec!["releases"], "viewer"),
        (vec!["deployments"], "viewer"),
        (vec!["requests"], "viewer"),
        (vec!["audit"], "viewer"),
        (vec!["env", "show"], "viewer"),
        (vec!["publish", &src, "--app", "web", "--version", "9.0"], "deployer"),
        (vec!["env", "set", "staging", "--approvals", "0"], "admin"),
        (vec!["users", "list"], "admin"),
    ];
    let rank = |r: &str| ["viewer", "deployer", "approver", "admin"].iter().position(|x| *x == r).unwrap();
    for (args, least) in &cases {
        for (role, token) in &tokens {
            let out = as_user(&f, token, args);
            let allowed = rank(role) >= rank(least);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.success(), allowed, "{role} running {args:?}: {err}");
            if !allowed {
                assert!(err.contains("403") || err.contains("role"), "{role} running {args:?}: {err}");
            }
        }
    }
    // deploying: a deployer may, a viewer may not
    let (_, viewer) = &tokens[0];
    let (_, deployer) = &tokens[1];
    refused_as(&f, viewer, &["deploy", "web@1.0", "--selector", "role=web"], "deployer role");
    // without an environment nothing is approved: a deployer must name one
    refused_as(&f, deployer, &["deploy", "web@1.0", "--selector", "role=web"], "add --env NAME");
    let d = json_as(&f, deployer, &["deploy", "web@1.0", "--selector", "role=web", "--env", "staging"]);
    let id = d["id"].as_str().unwrap().to_owned();
    refused_as(&f, viewer, &["rollback", &id], "deployer role");
    f.wait_state(&id, &["succeeded"], LONG);
    // target removal is for admins
    let t = f.json(&["targets"])[0]["id"].as_str().unwrap().to_owned();
    refused_as(&f, deployer, &["targets", "remove", &t], "admin role");
    // unknown and removed tokens get 401; agents and the enrolment token 403
    refused_as(&f, "not-a-token-at-all", &["targets"], "401");
    f.ok(&["users", "remove", "u-viewer"]);
    refused_as(&f, viewer, &["targets"], "401");
    refused_as(&f, ENROL, &["targets"], "operator");
    let agent_token: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.agent_root("a").join(".convoy/agent.json")).unwrap()).unwrap();
    refused_as(&f, agent_token["token"].as_str().unwrap(), &["deployments"], "operator");
    // a bad role or name changes nothing
    let out = f.cli(&["users", "add", "x", "--role", "root"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("unknown role"));
    let (code, body) =
        http(f.port, "POST", "/api/v1/users", Some(ADMIN), br#"{"name":"../x","role":"viewer"}"#).unwrap();
    assert_eq!(code, 400, "{body}");
    let users = f.json(&["users", "list"]);
    assert_eq!(users.as_array().unwrap().len(), 3, "{users:#}");
}

#[test]
fn unconfirmed_requests_expire_and_failed_preflight_blocks() {
    let mut f = Fleet::start();
    f.start_agent("a", "role=web", &[], &[]);
    publish(&f, "1.0");
    f.ok(&["env", "set", "quick", "--confirm", "--confirm-ttl", "2s"]);
    let id =
        f.json(&["deploy", "web@1.0", "--env", "quick", "--selector", "role=web"])["id"].as_str().unwrap().to_owned();
    let d = f.wait_state(&id, &["expired"], LONG);
    assert!(d["deployment"]["note"].as_str().unwrap().contains("not confirmed in time"), "{d:#}");
    let out = f.cli(&["confirm", &id]);
    assert!(!out.status.success(), "an expired request cannot be confirmed");
    assert!(d["instructions"].as_array().unwrap().is_empty());

    // nor does a request wait for its approvals for ever
    f.ok(&["env", "set", "slow", "--approvals", "1", "--approval-ttl", "2s"]);
    let id =
        f.json(&["deploy", "web@1.0", "--env", "slow", "--selector", "role=web"])["id"].as_str().unwrap().to_owned();
    let d = f.wait_state(&id, &["expired"], LONG);
    assert!(d["deployment"]["note"].as_str().unwrap().contains("not approved in time"), "{d:#}");

    // a failing custom check blocks the request (the default policy)
    f.ok(&["env", "set", "strict", "--check", "test -e /nonexistent-convoy-precondition"]);
    let id =
        f.json(&["deploy", "web@1.0", "--env", "strict", "--selector", "role=web"])["id"].as_str().unwrap().to_owned();
    let d = f.wait_state(&id, &["failed", "staging", "succeeded"], LONG);
    assert_eq!(d["deployment"]["state"], "failed", "{d:#}");
    let note = d["deployment"]["note"].as_str().unwrap();
    assert!(note.contains("preflight failed on 1 of 1") && note.contains("check:1"), "{note}");
    assert_eq!(f.live("web"), vec![("a".to_owned(), None)], "nothing was deployed");
}

#[test]
fn only_the_requester_confirms_and_every_refusal_and_change_is_audited() {
    let mut f = Fleet::start();
    f.start_agent("a", "site=sh,role=web", &[], &[]);
    publish(&f, "1.0");
    let alice = add_user(&f, "alice", "deployer");
    let dave = add_user(&f, "dave", "deployer");
    let carol = add_user(&f, "carol", "approver");
    f.ok(&["env", "set", "prod", "--confirm"]);
    let req = |who: &str| {
        json_as(&f, who, &["deploy", "web@1.0", "--env", "prod", "--selector", "role=web"])["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let audit = |id: &str| f.json(&["audit", "--deployment", id]).as_array().unwrap().clone();

    // another deployer neither confirms nor cancels alice's request; both are audited
    let id = req(&alice);
    f.wait_state(&id, &["awaiting_confirmation"], LONG);
    refused_as(&f, &dave, &["confirm", &id], "only the requester (alice) confirms");
    refused_as(&f, &dave, &["cancel", &id], "only the requester (alice) or an admin");
    let refusals: Vec<String> = audit(&id)
        .iter()
        .filter(|e| e["to"] == "refused" && e["actor"] == "user:dave")
        .map(|e| e["note"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    assert!(refusals[0].starts_with("cancel refused") || refusals[1].starts_with("cancel refused"), "{refusals:?}");

    // a change is audited with what changed, from what to what
    let (code, body) = http(
        f.port,
        "PATCH",
        &format!("/api/v1/deployments/{id}"),
        Some(&alice),
        br#"{"selector":"site=sh","reason":"CHG-9"}"#,
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let changed = audit(&id).iter().find_map(|e| {
        let n = e["note"].as_str().unwrap_or_default();
        n.starts_with("changed by alice").then(|| n.to_owned())
    });
    let changed = changed.expect("the change is in the audit log");
    assert!(changed.contains("selector role=web -> site=sh") && changed.contains("\"CHG-9\""), "{changed}");

    // alice cancels with a reason, kept
    f.wait_state(&id, &["awaiting_confirmation"], LONG);
    json_as(&f, &alice, &["cancel", &id, "--reason", "wrong window"]);
    assert!(audit(&id).iter().any(|e| e["note"].as_str().unwrap_or_default().contains("wrong window")));

    // an environment may let approvers confirm too
    f.ok(&["env", "set", "prod", "--confirm-role", "approver"]);
    let id = req(&alice);
    f.wait_state(&id, &["awaiting_confirmation"], LONG);
    refused_as(&f, &dave, &["confirm", &id], "or someone with the approver role or above");
    assert_eq!(json_as(&f, &carol, &["confirm", &id])["state"], "staging");
    let d = f.wait_state(&id, &["succeeded"], LONG);
    assert_eq!(d["deployment"]["state"], "succeeded", "{d:#}");

    // a rollback says why
    json_as(&f, &alice, &["rollback", &id, "--reason", "error rate up", "--uninstall"]);
    assert!(audit(&id).iter().any(|e| e["note"].as_str().unwrap_or_default().contains("error rate up")));
}

#[test]
fn a_request_approved_after_its_planned_go_live_waits_for_a_new_time() {
    let mut f = Fleet::start();
    f.start_agent("a", "role=web", &[], &[]);
    publish(&f, "1.0");
    let alice = add_user(&f, "alice", "deployer");
    let bob = add_user(&f, "bob", "approver");
    f.ok(&["env", "set", "late", "--approvals", "1"]);
    let id = json_as(&f, &alice, &["deploy", "web@1.0", "--env", "late", "--selector", "role=web", "--at", "+3s"])
        ["id"]
        .as_str()
        .unwrap()
        .to_owned();
    std::thread::sleep(Duration::from_secs(5));
    // approved after the planned time: nothing goes live on the missed plan
    json_as(&f, &bob, &["approve", &id]);
    let d = f.wait_state(&id, &["awaiting_confirmation", "staging", "succeeded", "failed"], LONG);
    assert_eq!(d["deployment"]["state"], "awaiting_confirmation", "{d:#}");
    assert!(d["deployment"]["note"].as_str().unwrap().contains("passed before request"), "{d:#}");
    assert!(d["instructions"].as_array().unwrap().is_empty());
    refused_as(&f, &alice, &["confirm", &id], "give it a new time");
    assert_eq!(f.live("web"), vec![("a".to_owned(), None)]);
    // a new time, approved again, goes live then
    let c = json_as(&f, &alice, &["change", &id, "--at", "+20s"]);
    assert_eq!(c["state"], "awaiting_approval", "{c:#}");
    json_as(&f, &bob, &["approve", &id]);
    let d = f.wait_state(&id, &["succeeded", "failed", "rolled_back"], LONG);
    assert_eq!(d["deployment"]["state"], "succeeded", "{d:#}");
    assert_eq!(f.live("web"), vec![("a".to_owned(), Some("1.0".to_owned()))]);
    let audit = f.json(&["audit", "--deployment", &id]);
    assert!(audit.as_array().unwrap().iter().any(|e| e["note"].as_str().unwrap_or_default().contains("passed before")));
}

#[test]
fn a_policy_made_stricter_after_a_request_binds_it() {
    let mut f = Fleet::start();
    f.start_agent("a", "role=web", &[], &[]);
    publish(&f, "1.0");
    let alice = add_user(&f, "alice", "deployer");
    let bob = add_user(&f, "bob", "approver");
    let carol = add_user(&f, "carol", "approver");
    f.ok(&["env", "set", "prod", "--approvals", "1"]);
    let id = json_as(&f, &alice, &["deploy", "web@1.0", "--env", "prod", "--selector", "role=web"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // the environment now wants two approvals and a confirmation
    f.ok(&["env", "set", "prod", "--approvals", "2", "--confirm"]);
    let one = json_as(&f, &bob, &["approve", &id]);
    assert_eq!(one["state"], "awaiting_approval", "one approval no longer suffices: {one:#}");
    let two = json_as(&f, &carol, &["approve", &id]);
    assert_eq!(two["state"], "preflight", "{two:#}");
    let d = f.wait_state(&id, &["awaiting_confirmation", "staging", "succeeded"], LONG);
    assert_eq!(d["deployment"]["state"], "awaiting_confirmation", "the new policy wants a confirmation: {d:#}");
    let inbox = json_as(&f, &bob, &["requests", "--all"]);
    let r = inbox.as_array().unwrap().iter().find(|r| r["deployment"]["id"] == id.as_str()).unwrap();
    assert_eq!(r["approvals_needed"], 2, "{r:#}");
}
