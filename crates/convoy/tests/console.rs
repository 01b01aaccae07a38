//! The web console in a real headless Chromium: sign in, approve a request,
//! pause and resume it, watch it go live with the page updating by itself,
//! open a failed target's output, the other pages, CSRF refusals, sign out,
//! and a viewer on a narrow screen who sees no buttons. The browser steps
//! are in `tests/console/console.test.mjs` (playwright-core driving
//! Debian's chromium, both installed by `.ci/run`); screenshots of every
//! page go to `target/console-shots/`.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

fn chromium() -> String {
    std::env::var("CONVOY_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

fn publish(f: &Fleet, version: &str) {
    let src = f.path(&format!("src/{version}"));
    write_app(&src, version, 30_000);
    f.ok(&[
        "publish",
        src.to_str().unwrap(),
        "--app",
        "web",
        "--version",
        version,
        "--commit",
        "0123456789abcdef",
        "--branch",
        "main",
    ]);
}

#[test]
#[ignore = "needs chromium and node with playwright-core (.ci/run installs them): cargo test -- --include-ignored"]
fn the_console_in_a_real_browser() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/console");
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: npm ci --prefix {} (.ci/run does it)",
        dir.display()
    );
    assert!(
        std::path::Path::new(&chromium()).exists(),
        "{} is missing: apt-get install chromium (.ci/run does it)",
        chromium()
    );

    let mut f = Fleet::start();
    f.start_agent("a", "site=eu,role=web", &[], &[]);
    f.start_agent("b", "site=us,role=web", &[], &[]);
    for v in ["1.0", "2.0", "3.0"] {
        publish(&f, v);
    }
    // a deployment where b fails its health check and rolls back
    f.ok(&["deploy", "web@1.0", "--selector", "role=web", "--wait"]);
    std::fs::write(f.agent_root("b").join("simulate-outage"), b"").unwrap();
    let failed = f.json(&["deploy", "web@2.0", "--selector", "role=web", "--max-failures", "1"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let d = f.wait_state(&failed, &["succeeded", "failed", "halted"], Duration::from_secs(90));
    assert!(d["instructions"].as_array().unwrap().iter().any(|i| i["state"] == "rolled_back"), "{d:#}");
    std::fs::remove_file(f.agent_root("b").join("simulate-outage")).unwrap();

    // people and a request that needs an approval
    let add = |name: &str, role: &str| f.ok(&["users", "add", name, "--role", role]).trim().to_owned();
    let alice = add("alice", "deployer");
    let bob = add("bob", "approver");
    let vic = add("vic", "viewer");
    f.ok(&["env", "set", "prod", "--approvals", "1"]);
    let request = serde_json::from_str::<serde_json::Value>(&ok_as(
        &f,
        &alice,
        &[
            "deploy",
            "web@3.0",
            "--selector",
            "site=eu",
            "--env",
            "prod",
            "--at",
            "+25s",
            "--reason",
            "CHG-7",
            "--output",
            "json",
        ],
    ))
    .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/console-shots");
    let input = serde_json::json!({
        "url": f.url,
        "chromium": chromium(),
        "shots": shots,
        "approver": bob,
        "approver_name": "bob",
        "viewer": vic,
        "request": request,
        "failed": failed,
    });
    let mut child = std::process::Command::new("node")
        .arg(dir.join("console.test.mjs"))
        .current_dir(&dir)
        .env("CONVOY_CONSOLE_TEST", input.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node (Debian package nodejs) runs the browser test");
    let started = std::time::Instant::now();
    let out = loop {
        if let Some(_status) = child.try_wait().unwrap() {
            break child.wait_with_output().unwrap();
        }
        if started.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("the browser test ran over 300 s:\n{}", String::from_utf8_lossy(&out.stdout));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the browser test failed:\n{text}\n--- server log ---\n{}",
        f.server.as_ref().map(|s| s.log_text()).unwrap_or_default()
    );
    assert!(text.contains("every step passed"), "{text}");
    for name in ["01-login", "03-approvals", "05-live", "06-failed-output", "12-viewer-390"] {
        assert!(shots.join(format!("{name}.png")).is_file(), "screenshot {name} missing");
    }
    // what the browser did is in the audit log, by the people who did it
    let audit = f.ok(&["audit", "--deployment", &request]);
    assert!(audit.contains("user:bob") && audit.contains("hold for the release call"), "{audit}");
}
