//! A burst of 10,000 agent reports: they are written in batches through a
//! queue, each answered once persisted, and polls keep being answered
//! meanwhile (P-states).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const TARGETS: usize = 100;
const REPORTS_EACH: usize = 100;

fn post(port: u16, path: &str, token: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let (code, text) = http(port, "POST", path, Some(token), body.to_string().as_bytes()).unwrap();
    (code, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

fn metric(port: u16, name: &str) -> u64 {
    let (_, body) = http(port, "GET", "/metrics", None, b"").unwrap();
    body.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_burst_of_reports_is_batched_and_polls_go_on() {
    let f = Fleet::start();
    // enrol simulated targets through the API
    let mut tokens = Vec::new();
    for n in 0..TARGETS {
        let inv = serde_json::json!({"inventory": {"hostname": format!("sim-{n:03}"), "os": "linux", "arch": "x86_64",
            "free_disk_bytes": 1u64 << 40, "labels": {"role": "sim"}, "installed": {}, "current": {}, "agent_version": "test"}});
        let (code, r) = post(f.port, "/api/v1/agent/enroll", ENROL, &inv);
        assert_eq!(code, 200, "{r}");
        tokens.push(r["token"].as_str().unwrap().to_owned());
    }
    let src = f.path("src/1.0");
    write_app(&src, "1.0", 1000);
    f.ok(&["publish", src.to_str().unwrap(), "--app", "web", "--version", "1.0"]);
    let id = f.json(&["deploy", "web@1.0", "--selector", "role=sim"])["id"].as_str().unwrap().to_owned();
    // each target takes its work
    let mut work = Vec::new();
    for t in &tokens {
        let (code, text) = http(f.port, "GET", "/api/v1/agent/work?wait=0", Some(t), b"").unwrap();
        assert_eq!(code, 200);
        let w: serde_json::Value = serde_json::from_str(&text).unwrap();
        // each item is signed: the work is inside its payload
        let signed: serde_json::Value = serde_json::from_str(w["work"][0]["payload"].as_str().unwrap()).unwrap();
        work.push(signed["work"]["instruction_id"].as_str().unwrap().to_owned());
    }

    // the burst: every target says "received" many times over, from 16
    // threads; meanwhile one target keeps polling
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worst_poll = Arc::new(AtomicU64::new(0));
    let poller = {
        let (stop, worst, token, port) = (stop.clone(), worst_poll.clone(), tokens[0].clone(), f.port);
        std::thread::spawn(move || {
            let mut polls = 0;
            while !stop.load(Ordering::Relaxed) && polls < 10_000 {
                let t = Instant::now();
                let (code, _) = http(port, "GET", "/api/v1/agent/work?wait=0", Some(&token), b"").unwrap();
                assert_eq!(code, 200);
                worst.fetch_max(t.elapsed().as_millis() as u64, Ordering::Relaxed);
                polls += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            polls
        })
    };
    let jobs: Vec<(String, String)> =
        (0..REPORTS_EACH).flat_map(|_| tokens.iter().cloned().zip(work.iter().cloned())).collect();
    let jobs = Arc::new(std::sync::Mutex::new(jobs));
    let accepted = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let senders: Vec<_> = (0..16)
        .map(|_| {
            let (jobs, accepted, answered, port) = (jobs.clone(), accepted.clone(), answered.clone(), f.port);
            std::thread::spawn(move || loop {
                let Some((token, iid)) = jobs.lock().unwrap().pop() else { return };
                let report = serde_json::json!({"instruction_id": iid, "phase": "stage", "attempt": 0, "report": {"kind": "received"}});
                let (code, r) = post(port, "/api/v1/agent/report", &token, &report);
                assert_eq!(code, 200, "{r}");
                answered.fetch_add(1, Ordering::Relaxed);
                if r["accepted"] == true {
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let polls = poller.join().unwrap();
    let batches = metric(f.port, "convoy_report_batches_total");
    eprintln!(
        "{} reports in {took:?}; {} moved in {batches} write batches; {polls} polls meanwhile, slowest {} ms",
        answered.load(Ordering::Relaxed),
        accepted.load(Ordering::Relaxed),
        worst_poll.load(Ordering::Relaxed)
    );
    assert_eq!(answered.load(Ordering::Relaxed), (TARGETS * REPORTS_EACH) as u64);
    assert_eq!(accepted.load(Ordering::Relaxed), TARGETS as u64, "one move per instruction, the rest stale");
    assert!(batches >= 1 && batches < TARGETS as u64, "{batches} transactions for {TARGETS} moves: not batched");
    assert!(polls > 0 && worst_poll.load(Ordering::Relaxed) < 5_000, "polls were held up");
    // a NUL in a report's text is refused before it is queued (PostgreSQL
    // text holds none: it would fail the whole batch, other agents' too)
    for bad in [
        serde_json::json!({"instruction_id": work[1], "phase": "stage", "attempt": 0, "report": {"kind": "staged", "digest": "sha256:\u{0}"}}),
        serde_json::json!({"instruction_id": work[1], "phase": "stage", "attempt": 0, "report": {"kind": "received"}, "output": "a\u{0}b"}),
        serde_json::json!({"instruction_id": work[1], "phase": "stage", "attempt": 0, "report": {"kind": "received"}, "metrics": {"k": "\u{0}"}}),
    ] {
        let (code, r) = post(f.port, "/api/v1/agent/report", &tokens[1], &bad);
        assert_eq!(code, 400, "{r}");
        assert!(r.to_string().contains("NUL"), "{r}");
    }
    // nor a control character in a hostname or a relay URL an agent sends
    for (hostname, relay, why) in
        [("sim\u{0}x", None, "control characters"), ("sim-x", Some("http://relay\u{0}:8080"), "is not http(s)")]
    {
        let inv = serde_json::json!({"inventory": {"hostname": hostname, "os": "linux", "arch": "x86_64", "free_disk_bytes": 1u64 << 40,
            "labels": {"role": "sim"}, "installed": {}, "current": {}, "agent_version": "test", "relay": relay}});
        let (code, r) = post(f.port, "/api/v1/agent/enroll", ENROL, &inv);
        assert_eq!(code, 400, "{r}");
        assert!(r.to_string().contains(why), "{r}");
    }
    // acknowledged means persisted: every instruction reads back as received
    let d = f.deployment(&id);
    assert!(d["instructions"].as_array().unwrap().iter().all(|i| i["state"] == "received"), "{d:#}");
}
