//! Site relays through the real binary: agents fetch through their site's
//! relay, the relay fetches each object once, and a relay that dies or
//! serves bad bytes costs time, never correctness, and is reported.

mod common;

use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(120);

fn start_relay(f: &mut Fleet, name: &str, env: &[(&str, &str)]) -> String {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    f.start_agent(name, "site=sh,role=relay", env, &["--relay", "--listen", &listen]);
    let url = format!("http://{listen}");
    // an operator makes it the site's relay; it reports its URL
    f.grant_relay(name, "sh", &url);
    url
}

fn publish(f: &Fleet, version: &str, size: usize) {
    let src = f.path(&format!("src/{version}"));
    write_app(&src, version, size);
    if version != "1.0" {
        // a small change inside the large file, as upgrades have
        let data = src.join("data.bin");
        let mut bytes = std::fs::read(&data).unwrap();
        bytes[size / 2..size / 2 + version.len()].copy_from_slice(version.as_bytes());
        std::fs::write(&data, bytes).unwrap();
    }
    f.ok(&["publish", src.to_str().unwrap(), "--app", "web", "--version", version]);
}

fn instructions(d: &serde_json::Value) -> Vec<serde_json::Value> {
    d["instructions"].as_array().unwrap().clone()
}

fn relay_stats(url: &str) -> serde_json::Value {
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let (status, body) = http(port, "GET", "/api/v1/relay/stats", None, b"").unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn source_failures(f: &Fleet) -> u64 {
    let (_, metrics) = http(f.port, "GET", "/metrics", None, b"").unwrap();
    metrics.lines().find_map(|l| l.strip_prefix("convoy_source_failures_total ")).unwrap().parse().unwrap()
}

#[test]
fn a_site_fetches_through_its_relay_once() {
    let mut f = Fleet::start();
    let relay = start_relay(&mut f, "relay", &[]);
    for n in ["w1", "w2", "w3"] {
        f.start_agent(n, "site=sh,role=web", &[], &[]);
    }
    f.start_agent("far", "site=bj,role=web", &[], &[]);
    publish(&f, "1.0", 2_000_000);
    let d = f.json(&["deploy", "web@1.0", "--selector", "role=web", "--wait"]);
    assert_eq!(d["deployment"]["state"], "succeeded", "{d:#}");
    let mut site_bytes = 0;
    for i in instructions(&d) {
        assert_eq!(i["reported_digest"], d["deployment"]["digest"]);
        if i["hostname"] == "far" {
            assert!(i["metrics"]["via"].is_null(), "no relay in bj: {i:#}");
        } else {
            assert_eq!(i["metrics"]["via"], relay.as_str(), "{i:#}");
            assert!(i["metrics"]["source_failures"].is_null(), "{i:#}");
            site_bytes += i["metrics"]["bytes_fetched"].as_str().unwrap().parse::<u64>().unwrap();
        }
    }
    // the relay's upstream carried one copy; the site's agents three
    let s = relay_stats(&relay);
    let upstream = s["upstream_bytes"].as_u64().unwrap();
    assert!(upstream > 2_000_000 && upstream < site_bytes / 2, "upstream {upstream}, site {site_bytes}: {s}");
    assert_eq!(s["served_bytes"].as_u64().unwrap(), site_bytes, "{s}");

    // the upgrade's delta is fetched once by the relay too
    publish(&f, "2.0", 2_000_000);
    f.wait_delta("web", "1.0", "2.0");
    let before = relay_stats(&relay)["upstream_bytes"].as_u64().unwrap();
    let d = f.json(&["deploy", "web@2.0", "--selector", "role=web", "--wait"]);
    assert_eq!(d["deployment"]["state"], "succeeded", "{d:#}");
    for i in instructions(&d) {
        assert_eq!(i["metrics"]["transfer"], "delta", "{i:#}");
    }
    let one_delta: u64 = instructions(&d)[0]["metrics"]["delta_bytes"].as_str().unwrap().parse().unwrap();
    let fetched = relay_stats(&relay)["upstream_bytes"].as_u64().unwrap() - before;
    assert_eq!(fetched, one_delta, "the relay fetched the delta once");
    assert_eq!(source_failures(&f), 0);

    // only a relay may poll for a site, and only for its own site's targets
    let cred = |h: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(f.agent_root(h).join(".convoy/agent.json")).unwrap()).unwrap()
    };
    let (w1, far, r) = (cred("w1"), cred("far"), cred("relay"));
    let poll = |token: &serde_json::Value, target: &serde_json::Value| {
        let body = format!(r#"{{"epoch":null,"wait":0,"targets":[{{"id":{target},"gen":0}}]}}"#);
        http(f.port, "POST", "/api/v1/agent/site-poll", token["token"].as_str(), body.as_bytes()).unwrap()
    };
    let (status, body) = poll(&w1, &w1["target_id"]);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("only a relay"), "{body}");
    // another site's target is named back as refused, never served
    let (status, body) = poll(&r, &far["target_id"]);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["refused"], serde_json::json!([far["target_id"]]), "{body}");
    assert_eq!(v["targets"], serde_json::json!([]), "{body}");
    let (status, body) = poll(&r, &w1["target_id"]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(w1["target_id"].as_str().unwrap()), "{body}");
}

#[test]
fn a_corrupt_relay_is_passed_over_and_reported() {
    let mut f = Fleet::start();
    let relay = start_relay(&mut f, "relay", &[("CONVOY_AGENT_FAULT", "relay-corrupt")]);
    f.start_agent("w1", "site=sh,role=web", &[], &[]);
    f.start_agent("w2", "site=sh,role=web", &[], &[]);
    publish(&f, "1.0", 1_000_000);
    let d = f.json(&["deploy", "web@1.0", "--selector", "role=web", "--wait"]);
    assert_eq!(d["deployment"]["state"], "succeeded", "{d:#}");
    for i in instructions(&d) {
        assert_eq!(i["reported_digest"], d["deployment"]["digest"], "{i:#}");
        let why = i["metrics"]["source_failures"].as_str().unwrap_or_else(|| panic!("not reported: {i:#}"));
        assert!(why.contains(&relay), "{why}");
        assert!(i["metrics"]["via"].as_str().unwrap().ends_with(&format!(":{}", f.port)), "{i:#}");
    }
    // a bad delta from the relay is caught the same way
    publish(&f, "2.0", 1_000_000);
    f.wait_delta("web", "1.0", "2.0");
    let d = f.json(&["deploy", "web@2.0", "--selector", "role=web", "--wait"]);
    assert_eq!(d["deployment"]["state"], "succeeded", "{d:#}");
    for i in instructions(&d) {
        assert_eq!(i["metrics"]["transfer"], "delta", "{i:#}");
        assert!(i["metrics"]["source_failures"].as_str().unwrap().contains(&relay), "{i:#}");
    }
    for h in ["w1", "w2"] {
        assert_eq!(
            std::fs::read(f.agent_root(h).join("current/web/data.bin")).unwrap(),
            std::fs::read(f.path("src/2.0/data.bin")).unwrap()
        );
    }
    assert!(source_failures(&f) >= 4);
}

#[test]
fn agents_finish_when_their_relay_dies_mid_transfer() {
    let mut f = Fleet::start();
    let relay = start_relay(&mut f, "relay", &[]);
    // slow agents, so the relay dies while they are still fetching
    f.start_agent("w1", "site=sh,role=web", &[], &["--max-rate", "1000000"]);
    f.start_agent("w2", "site=sh,role=web", &[], &["--max-rate", "1000000"]);
    publish(&f, "1.0", 6_000_000);
    let id = f.json(&["deploy", "web@1.0", "--selector", "role=web"])["id"].as_str().unwrap().to_owned();
    wait_until("the relay to serve some", LONG, || {
        (relay_stats(&relay)["served_bytes"].as_u64().unwrap() > 1_000_000).then_some(())
    });
    f.kill_agent("relay");
    let d = f.wait_state(&id, &["succeeded", "failed"], LONG);
    assert_eq!(d["deployment"]["state"], "succeeded", "{d:#}");
    // an agent whose fetch the relay's death cut says so; one that had
    // fetched everything through the relay before it died has nothing to
    // report (the two agents' timing is the machine's), but one at least
    // was cut
    let mut cut = 0;
    for i in instructions(&d) {
        assert_eq!(i["reported_digest"], d["deployment"]["digest"]);
        if let Some(failures) = i["metrics"]["source_failures"].as_str() {
            assert!(failures.contains(&relay), "{i:#}");
            cut += 1;
        }
    }
    assert!(cut >= 1, "no agent reported the relay failing: {d:#}");
    for h in ["w1", "w2"] {
        assert_eq!(
            std::fs::read(f.agent_root(h).join("current/web/data.bin")).unwrap(),
            std::fs::read(f.path("src/1.0/data.bin")).unwrap()
        );
    }
}

#[test]
fn mirrors_serve_chunks_in_each_targets_order_and_dead_ones_are_passed_over() {
    // a plain HTTP copy of the chunk store, and a mirror that is down
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("server/chunks");
    std::fs::create_dir_all(&store).unwrap();
    let mut files = std::process::Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string(), "--directory", store.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mirror = format!("store+http://127.0.0.1:{port}");
    let dead = format!("http://127.0.0.1:{}", free_port());
    let mut f = Fleet::start_with_args(&["--mirror", &dead, "--mirror", &mirror]);
    for n in ["m1", "m2", "m3", "m4"] {
        f.start_agent(n, "role=web", &[], &[]);
    }
    publish(&f, "1.0", 1_000_000);
    // the mirror holds a copy of the server's chunks (as rsync or an object store would)
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        let ok = std::process::Command::new("cp").arg("-a").arg(format!("{}/.", from.display())).arg(to).status();
        assert!(ok.unwrap().success());
    };
    copy(&f.path("server/chunks"), &store);
    wait_until("the mirror to answer", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
    });
    let d = f.json(&["deploy", "web@1.0", "--selector", "role=web", "--wait"]);
    assert_eq!(d["deployment"]["state"], "succeeded", "{d:#}");
    let mut passed_dead = 0;
    for i in instructions(&d) {
        assert_eq!(i["reported_digest"], d["deployment"]["digest"]);
        assert_eq!(i["metrics"]["via"], mirror.strip_prefix("store+").unwrap(), "{i:#}");
        if i["metrics"]["source_failures"].as_str().is_some_and(|s| s.contains(&dead)) {
            passed_dead += 1;
        }
    }
    // targets are spread over the mirrors: some had the dead one first
    assert!(passed_dead > 0, "{d:#}");
    // the server itself sent manifests only
    let (_, metrics) = http(f.port, "GET", "/metrics", None, b"").unwrap();
    let served: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("convoy_chunk_bytes_total{direction=\"out\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(served, 0, "chunks came from the mirror");
    let _ = files.kill();
    let _ = files.wait();
}

fn server_polls(f: &Fleet) -> u64 {
    let (_, metrics) = http(f.port, "GET", "/metrics", None, b"").unwrap();
    metrics.lines().find_map(|l| l.strip_prefix("convoy_agent_polls_total ")).unwrap().parse().unwrap()
}

#[test]
fn agents_poll_their_relay_which_polls_once_for_the_site() {
    let mut f = Fleet::start();
    let relay = start_relay(&mut f, "relay", &[]);
    for n in ["w1", "w2", "w3"] {
        f.start_agent(n, "site=sh,role=web", &[], &["--poll-via", &relay, "--poll-wait", "1"]);
    }
    wait_until("the agents to poll the relay", LONG, || {
        (relay_stats(&relay)["agents_polling"].as_u64() == Some(3)).then_some(())
    });
    // a window of polling: three agents poll the relay every second, the
    // server sees only the relay's own polls (every 5 s) and its site poll
    let (before, relay_before) = (server_polls(&f), relay_stats(&relay)["polls_served"].as_u64().unwrap());
    std::thread::sleep(Duration::from_secs(3));
    let (after, relay_after) = (server_polls(&f), relay_stats(&relay)["polls_served"].as_u64().unwrap());
    assert!(after - before <= 2, "the server answered {} polls", after - before);
    assert!(relay_after - relay_before >= 6, "the relay answered {} polls", relay_after - relay_before);

    publish(&f, "1.0", 200_000);
    let d = f.json(&["deploy", "web@1.0", "--selector", "role=web", "--wait"]);
    assert_eq!(d["deployment"]["state"], "succeeded", "{d:#}");

    // with the relay gone, agents poll the server and carry on
    f.kill_agent("relay");
    publish(&f, "2.0", 200_000);
    let d = f.json(&["deploy", "web@2.0", "--selector", "role=web", "--wait"]);
    assert_eq!(d["deployment"]["state"], "succeeded", "{d:#}");
    assert_eq!(
        f.live("web").into_iter().filter(|(h, _)| h.starts_with('w')).map(|(_, v)| v).collect::<Vec<_>>(),
        vec![Some("2.0".to_owned()); 3]
    );
}

#[test]
fn relays_chain_through_a_parent_relay() {
    let mut f = Fleet::start();
    // a regional relay (its own site), and a site relay that fetches from it
    let port = free_port();
    let parent = format!("http://127.0.0.1:{port}");
    f.start_agent("region", "site=eu,role=relay", &[], &["--relay", "--listen", &format!("127.0.0.1:{port}")]);
    let port = free_port();
    let child = format!("http://127.0.0.1:{port}");
    f.start_agent(
        "site-relay",
        "site=sh,role=relay",
        &[],
        &["--relay", "--listen", &format!("127.0.0.1:{port}"), "--upstream", &parent],
    );
    f.grant_relay("region", "eu", &parent);
    f.grant_relay("site-relay", "sh", &child);
    for n in ["w1", "w2"] {
        f.start_agent(n, "site=sh,role=web", &[], &[]);
    }
    publish(&f, "1.0", 1_500_000);
    let d = f.json(&["deploy", "web@1.0", "--selector", "role=web", "--wait"]);
    assert_eq!(d["deployment"]["state"], "succeeded", "{d:#}");
    for i in instructions(&d) {
        assert_eq!(i["reported_digest"], d["deployment"]["digest"]);
        assert_eq!(i["metrics"]["via"], child.as_str(), "{i:#}");
    }
    // the site relay fetched one copy, from the regional relay, which
    // fetched one copy from the server
    let (c, p) = (relay_stats(&child), relay_stats(&parent));
    let (c_up, p_served, p_up) = (
        c["upstream_bytes"].as_u64().unwrap(),
        p["served_bytes"].as_u64().unwrap(),
        p["upstream_bytes"].as_u64().unwrap(),
    );
    assert!(c_up > 1_500_000 && c_up < 2 * 1_500_000, "site relay upstream {c_up}: {c}");
    assert!(p_served >= c_up * 9 / 10, "the parent served the site relay: {p} vs {c}");
    assert!(p_up > 1_500_000 && p_up < 2 * 1_500_000, "one copy to the region: {p}");
}
