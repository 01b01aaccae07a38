//! Release plans as code (`convoy plan apply`) and build provenance, through
//! the real binary.

mod common;

use std::time::Duration;

use common::*;

fn publish(f: &Fleet, version: &str, extra: &[&str]) -> String {
    let src = f.path(&format!("src/{version}"));
    write_app(&src, version, 10_000);
    let mut args = vec!["publish", src.to_str().unwrap(), "--app", "web", "--version", version];
    args.extend_from_slice(extra);
    f.ok(&args)
}

/// The plan's requests as the server has them: (entry, id, state), oldest first.
fn plan_requests(f: &Fleet, plan: &str) -> Vec<(String, String, String)> {
    let (status, body) = http(f.port, "GET", &format!("/api/v1/deployments?plan={plan}"), Some(ADMIN), b"").unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["plan"]["entry"].as_str().unwrap().to_owned(),
                d["id"].as_str().unwrap().to_owned(),
                d["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn apply(f: &Fleet, file: &std::path::Path, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut args = vec!["plan", "apply", file.to_str().unwrap(), "--output", "json"];
    args.extend_from_slice(extra);
    let out = f.cli(&args);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    (out.status.code().unwrap(), v)
}

fn actions(v: &serde_json::Value) -> Vec<(String, String)> {
    v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["entry"].as_str().unwrap().to_owned(), s["action"].as_str().unwrap().to_owned()))
        .collect()
}

#[test]
fn a_plan_applied_twice_changes_nothing_and_follows_its_file() {
    let mut f = Fleet::start();
    f.start_agent("a", "site=eu", &[], &[]);
    f.start_agent("b", "site=us", &[], &[]);
    publish(&f, "1.0", &[]);
    publish(&f, "2.0", &[]);
    f.ok(&["env", "set", "prod", "--approvals", "1"]);
    let later = chrono_like_rfc3339(3600);
    let file = f.path("plan.toml");
    let write = |body: &str| std::fs::write(&file, format!("plan = \"shop\"\n{body}")).unwrap();
    let eu = format!(
        "[[deployment]]\nname = \"eu\"\nrelease = \"web@2.0\"\nenv = \"prod\"\nselector = \"site=eu\"\nat = \"{later}\"\nreason = \"CHG-1\"\n"
    );
    let us = "[[deployment]]\nname = \"us\"\nrelease = \"web@2.0\"\nenv = \"prod\"\nselector = \"site=us\"\nreason = \"CHG-2\"\n";
    write(&format!("{eu}{us}"));

    // --dry-run says what would happen and changes nothing
    let (code, v) = apply(&f, &file, &["--dry-run"]);
    assert_eq!((code, actions(&v)), (0, vec![("eu".into(), "create".into()), ("us".into(), "create".into())]));
    assert!(plan_requests(&f, "shop").is_empty(), "a dry run requests nothing");
    let text = f.ok(&["plan", "apply", file.to_str().unwrap(), "--dry-run"]);
    assert!(text.contains("would create") && text.contains("web@2.0 in prod to site=eu"), "{text}");

    let (code, v) = apply(&f, &file, &[]);
    assert_eq!((code, actions(&v)), (0, vec![("eu".into(), "create".into()), ("us".into(), "create".into())]));
    let first = plan_requests(&f, "shop");
    assert_eq!(first.len(), 2);
    assert!(first.iter().all(|(_, _, s)| s == "awaiting_approval"), "{first:?}");
    let eu_request = f.json(&["status", &first[0].1]);
    assert_eq!(eu_request["deployment"]["reason"], "CHG-1");
    assert!(eu_request["deployment"]["go_live_at"].is_i64());

    // twice: nothing changes, not even the audit log
    let audit = f.json(&["audit"]).as_array().unwrap().len();
    let (code, v) = apply(&f, &file, &[]);
    assert_eq!((code, actions(&v)), (0, vec![("eu".into(), "unchanged".into()), ("us".into(), "unchanged".into())]));
    assert_eq!(plan_requests(&f, "shop"), first);
    assert_eq!(f.json(&["audit"]).as_array().unwrap().len(), audit, "applying again wrote nothing");

    // a changed entry replaces its request, which had not started
    write(&format!("{}{us}", eu.replace("CHG-1", "CHG-1b")));
    let (code, v) = apply(&f, &file, &[]);
    assert_eq!((code, actions(&v)), (0, vec![("eu".into(), "replace".into()), ("us".into(), "unchanged".into())]));
    let now = plan_requests(&f, "shop");
    assert_eq!(now.len(), 3);
    assert_eq!(now[0], (first[0].0.clone(), first[0].1.clone(), "canceled".into()), "{now:?}");
    assert_eq!((now[2].0.as_str(), now[2].2.as_str()), ("eu", "awaiting_approval"));
    assert_eq!(v["steps"][0]["previous"], first[0].1.as_str());

    // a removed entry's request is canceled, since it had not started
    write(&eu.replace("CHG-1", "CHG-1b"));
    let (code, v) = apply(&f, &file, &[]);
    assert_eq!((code, actions(&v)), (0, vec![("eu".into(), "unchanged".into()), ("us".into(), "cancel".into())]));
    let us_now = plan_requests(&f, "shop").into_iter().find(|(e, id, _)| e == "us" && *id == first[1].1).unwrap();
    assert_eq!(us_now.2, "canceled");

    // an entry whose request is under way is not touched, and the apply says so
    let direct =
        format!("[[deployment]]\nname = \"direct\"\nrelease = \"web@1.0\"\nselector = \"site=us\"\nat = \"{later}\"\n");
    write(&format!("{}{direct}", eu.replace("CHG-1", "CHG-1b")));
    let (code, _) = apply(&f, &file, &[]);
    assert_eq!(code, 0);
    let id = plan_requests(&f, "shop").into_iter().find(|(e, _, _)| e == "direct").unwrap().1;
    f.wait_state(&id, &["scheduled"], Duration::from_secs(60));
    write(&format!("{}{}", eu.replace("CHG-1", "CHG-1b"), direct.replace("web@1.0", "web@2.0")));
    let (code, v) = apply(&f, &file, &[]);
    assert_eq!((code, actions(&v)), (1, vec![("eu".into(), "unchanged".into()), ("direct".into(), "blocked".into())]));
    assert!(v["steps"][1]["note"].as_str().unwrap().contains("under way (scheduled)"), "{v:#}");
    assert_eq!(f.deployment(&id)["deployment"]["state"], "scheduled", "left as it was");

    // a bad plan is refused before anything is asked of the server
    std::fs::write(&file, "plan = \"shop\"\n[[deployment]]\nname = \"eu\"\nrelease = \"web@2.0\"\nat = \"+5m\"\n")
        .unwrap();
    let out = f.cli(&["plan", "apply", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("relative"));
    assert_eq!(plan_requests(&f, "shop").len(), 4, "nothing new");
}

/// `at` an hour from now, as RFC 3339 in UTC (whole seconds).
fn chrono_like_rfc3339(secs_from_now: u64) -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + secs_from_now;
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{t}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn publish_records_the_build_from_flags_or_the_ci() {
    let f = Fleet::start();
    let src = f.path("src/1.0");
    write_app(&src, "1.0", 1_000);
    let out = std::process::Command::new(EXE)
        .args(["publish", src.to_str().unwrap(), "--app", "web", "--version", "1.0"])
        .env("CONVOY_SERVER", &f.url)
        .env("CONVOY_TOKEN", ADMIN)
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_SHA", "4f2a9c1e0b7d4f2a9c1e0b7d4f2a9c1e0b7d4f2a")
        .env("GITHUB_REF_NAME", "main")
        .env("GITHUB_SERVER_URL", "https://github.com")
        .env("GITHUB_REPOSITORY", "acme/shop")
        .env("GITHUB_RUN_ID", "1234")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    publish(&f, "2.0", &["--commit", "abc123", "--branch", "release/2"]);
    let r = f.json(&["releases"]);
    let by_version = |v: &str| r.as_array().unwrap().iter().find(|x| x["version"] == v).unwrap().clone();
    let one = by_version("1.0");
    assert_eq!(one["provenance"]["commit"], "4f2a9c1e0b7d4f2a9c1e0b7d4f2a9c1e0b7d4f2a");
    assert_eq!(one["provenance"]["ci_url"], "https://github.com/acme/shop/actions/runs/1234");
    assert_eq!(by_version("2.0")["provenance"]["branch"], "release/2");
    let text = f.ok(&["releases"]);
    assert!(text.contains("4f2a9c1e0b7d (main)") && text.contains("abc123 (release/2)"), "{text}");
}
