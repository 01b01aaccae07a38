//! `/metrics` read by Prometheus' own parser (python `prometheus_client`):
//! per-deployment progress while a deployment runs, HTTP requests and
//! latency by route, report, go-live and health histograms, targets online,
//! build and process metrics.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

/// Every sample of the scrape, parsed by `prometheus_client`: name and
/// labels to value. Panics on anything the parser refuses.
fn scrape(f: &Fleet) -> Vec<(String, HashMap<String, String>, f64)> {
    let (status, text) = http(f.port, "GET", "/metrics", None, b"").unwrap();
    assert_eq!(status, 200);
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append([s.name, s.labels, s.value, fam.type])
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new(test_python("prometheus_client"))
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<(String, HashMap<String, String>, f64, String)> = serde_json::from_slice(&out.stdout).unwrap();
    rows.into_iter().map(|(n, l, v, _)| (n, l, v)).collect()
}

fn value(samples: &[(String, HashMap<String, String>, f64)], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
        .map(|(_, _, v)| *v)
}

#[test]
fn metrics_parse_and_carry_deployment_progress_latencies_and_the_process() {
    let mut f = Fleet::start();
    f.start_agent("a", "role=web", &[], &[]);
    f.start_agent("b", "role=web", &[], &[]);
    let src = f.path("src/1.0");
    write_app(&src, "1.0", 20_000);
    f.ok(&["publish", src.to_str().unwrap(), "--app", "web", "--version", "1.0"]);
    let id =
        f.json(&["deploy", "web@1.0", "--selector", "role=web", "--at", "+20s"])["id"].as_str().unwrap().to_owned();
    f.wait_state(&id, &["scheduled"], Duration::from_secs(60));

    // while it waits for its go-live, both targets hold the verified
    // release and wait to switch
    let s = scrape(&f);
    let mut names: std::collections::BTreeSet<String> = s.iter().map(|(n, _, _)| n.clone()).collect();
    let mine: Vec<_> = s.iter().filter(|(n, l, _)| n == "convoy_deployment_targets" && l["deployment"] == id).collect();
    let waiting =
        value(&s, "convoy_deployment_targets", &[("deployment", &id), ("state", "activating"), ("wave", "1")]);
    assert_eq!(waiting, Some(2.0), "{mine:?}");
    assert_eq!(
        value(
            &s,
            "convoy_deployment_info",
            &[("deployment", &id), ("app", "web"), ("version", "1.0"), ("state", "scheduled")]
        ),
        Some(1.0)
    );
    assert_eq!(value(&s, "convoy_targets_seen", &[("seen", "online")]), Some(2.0));
    assert_eq!(value(&s, "convoy_targets_seen", &[("seen", "stale")]), Some(0.0));

    let d = f.wait_state(&id, &["succeeded", "failed"], Duration::from_secs(90));
    assert_eq!(d["deployment"]["state"], "succeeded", "{d:#}");
    let s = scrape(&f);
    names.extend(s.iter().map(|(n, _, _)| n.clone()));
    assert_eq!(value(&s, "convoy_deployment_targets", &[("deployment", &id)]), None, "a settled deployment leaves");
    for h in ["convoy_golive_lag_seconds", "convoy_health_check_seconds"] {
        assert_eq!(value(&s, &format!("{h}_count"), &[]), Some(2.0), "{h}: one per target");
        assert_eq!(value(&s, &format!("{h}_bucket"), &[("le", "+Inf")]), Some(2.0), "{h}");
    }
    // staged, activating and succeeded from two agents at least
    assert!(value(&s, "convoy_report_write_seconds_count", &[]).unwrap() >= 6.0);
    let polls = value(
        &s,
        "convoy_http_requests_total",
        &[("route", "/api/v1/agent/work"), ("method", "GET"), ("status", "2xx")],
    );
    assert!(polls.unwrap() >= 2.0, "{polls:?}");
    let poll_time =
        value(&s, "convoy_http_request_duration_seconds_count", &[("route", "/api/v1/agent/work"), ("method", "GET")]);
    assert!(poll_time.unwrap() >= 2.0);
    assert!(
        value(&s, "convoy_http_requests_total", &[("route", "/api/v1/deployments/{id}")]).is_some(),
        "by pattern, not path"
    );
    assert!(!s.iter().any(|(_, l, _)| l.get("route").is_some_and(|r| r.contains(&id))), "no path becomes a series");
    assert_eq!(value(&s, "convoy_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), Some(1.0));
    assert!(value(&s, "process_resident_memory_bytes", &[]).unwrap() > 1e6);
    assert!(value(&s, "process_open_fds", &[]).unwrap() > 0.0);
    assert!(value(&s, "process_start_time_seconds", &[]).unwrap() > 1.7e9);

    // the Grafana dashboard asks only for series the server has
    let dashboard =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../packaging/grafana-convoy.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut asked = 0;
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for name in metric_names(expr) {
                asked += 1;
                assert!(names.contains(&name), "panel {:?} asks for {name}, which /metrics lacks", p["title"]);
            }
        }
    }
    assert!(asked >= 15);

    // an agent that stops is stale once its 90 s have passed; not waited
    // for here, but the split always adds up to the fleet
    f.kill_agent("b");
    let s = scrape(&f);
    let online = value(&s, "convoy_targets_seen", &[("seen", "online")]).unwrap();
    let stale = value(&s, "convoy_targets_seen", &[("seen", "stale")]).unwrap();
    assert_eq!(online + stale, 2.0);

    // `/metrics` needs no token: scrapes that come together share the
    // database's counting (fewer readings than requests), and each still
    // gets a reading that began after it arrived (checked above: every
    // scrape saw the change made just before it)
    let calls = |f: &Fleet| {
        let (_, text) = http(f.port, "GET", "/metrics", None, b"").unwrap();
        let line = text.lines().find(|l| l.starts_with("convoy_store_calls_total ")).unwrap().to_owned();
        line.split_whitespace().last().unwrap().parse::<f64>().unwrap()
    };
    let (one_before, one_after) = (calls(&f), calls(&f));
    let per_reading = one_after - one_before;
    assert!(per_reading >= 1.0, "a scrape counts the tables: {per_reading}");
    const SCRAPES: usize = 32;
    let go = std::sync::Arc::new(std::sync::Barrier::new(SCRAPES));
    let before = calls(&f);
    let scrapers: Vec<_> = (0..SCRAPES)
        .map(|_| {
            let (go, port) = (go.clone(), f.port);
            std::thread::spawn(move || {
                go.wait();
                assert_eq!(http(port, "GET", "/metrics", None, b"").unwrap().0, 200);
            })
        })
        .collect();
    for s in scrapers {
        s.join().unwrap();
    }
    let readings = (calls(&f) - before) / per_reading;
    eprintln!("{SCRAPES} scrapes at once, then one: {readings} readings of the database");
    assert!(readings < SCRAPES as f64, "{readings} readings for {SCRAPES} scrapes at once (and one after)");
}

/// The metric names in a PromQL expression: words starting `convoy_` or
/// `process_` that are not followed by `(` (functions) or inside quotes.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut quoted = false;
    let mut word = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c == '"' {
            quoted = !quoted;
        }
        if !quoted && (c.is_ascii_alphanumeric() || c == '_') {
            word.push(c);
            continue;
        }
        if (word.starts_with("convoy_") || word.starts_with("process_")) && c != '(' {
            out.push(std::mem::take(&mut word));
        }
        word.clear();
    }
    out
}
