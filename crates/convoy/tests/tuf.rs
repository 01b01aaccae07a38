//! The server's TUF repository checked by an independent client: python-tuf
//! (`ngclient.Updater`, installed into a virtual environment by `.ci/run`,
//! which names its interpreter in `CONVOY_TEST_PYTHON`).

mod common;

use common::*;

/// The Python with python-tuf: `CONVOY_TEST_PYTHON`, or a virtual
/// environment in `target/tuf-venv`, made (from PyPI) when missing.
fn python() -> String {
    if let Ok(p) = std::env::var("CONVOY_TEST_PYTHON") {
        return p;
    }
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tuf-venv");
    let py = venv.join("bin/python");
    let has_tuf = |py: &std::path::Path| {
        std::process::Command::new(py).args(["-c", "import tuf.ngclient"]).output().is_ok_and(|o| o.status.success())
    };
    if !has_tuf(&py) {
        let run = |cmd: &str, args: &[&str]| {
            let out = std::process::Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
            assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        run("python3", &["-m", "venv", venv.to_str().unwrap()]);
        run(venv.join("bin/pip").to_str().unwrap(), &["install", "-q", "tuf>=7,<8"]);
        assert!(has_tuf(&py), "python-tuf did not install into {}", venv.display());
    }
    py.to_str().unwrap().to_owned()
}

fn client(f: &Fleet, root: &std::path::Path, target: &str, digest: &str) -> (i32, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tuf/client.py");
    let out = std::process::Command::new(python())
        .args([script, &format!("{}/api/v1", f.url), ADMIN, root.to_str().unwrap(), target, digest])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn python_tuf_verifies_the_repository_and_refuses_altered_metadata() {
    let f = Fleet::start();
    let src = f.path("src/1.0");
    write_app(&src, "1.0", 10_000);
    let out = f.json(&["publish", src.to_str().unwrap(), "--app", "web", "--version", "1.0"]);
    let digest = out["digest"].as_str().unwrap_or_else(|| panic!("{out}")).to_owned();
    // the root, given to the client out of band
    let (status, root) = http(f.port, "GET", "/api/v1/tuf/metadata/1.root.json", Some(ADMIN), b"").unwrap();
    assert_eq!(status, 200, "{root}");
    let root_file = f.path("root.json");
    std::fs::write(&root_file, &root).unwrap();
    let (code, text) = client(&f, &root_file, "web/1.0/manifest.json", &digest);
    assert_eq!(code, 0, "{text}");
    let (_, manifest) = http(f.port, "GET", "/api/v1/releases/web/1.0/manifest", Some(ADMIN), b"").unwrap();
    assert!(text.starts_with(&format!("OK {} ", manifest.len())), "{text}");
    // a release nobody published is not there
    let (code, text) = client(&f, &root_file, "web/9.9/manifest.json", &digest);
    assert_eq!(code, 2, "{text}");
    // someone with the server's disk changes the signed targets: refused
    let db = f.path("server/convoy.db");
    let alter = r#"
import json, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
version, body = db.execute("SELECT version, body FROM tuf_metadata WHERE role = 'targets' ORDER BY version DESC LIMIT 1").fetchone()
meta = json.loads(body)
meta["signed"]["targets"]["web/1.0/manifest.json"]["length"] += 1
db.execute("UPDATE tuf_metadata SET body = ? WHERE role = 'targets' AND version = ?", (json.dumps(meta).encode(), version))
db.commit()
"#;
    let out = std::process::Command::new(python()).args(["-c", alter, db.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (code, text) = client(&f, &root_file, "web/1.0/manifest.json", &digest);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("REFUSED: UnsignedMetadataError"), "{text}");
}

#[test]
fn agents_refuse_a_release_that_is_not_in_signed_metadata() {
    let mut f = Fleet::start();
    // the root handed to the agent out of band
    let root = f.path("trusted-root.json");
    let shown = f.ok(&["trust", "--root-out", root.to_str().unwrap()]);
    assert!(shown.contains("single-box") && shown.contains("timestamp"), "{shown}");
    f.start_agent("a", "role=web", &[], &["--trust-root", root.to_str().unwrap()]);
    let src = f.path("src/1.0");
    write_app(&src, "1.0", 10_000);
    f.ok(&["publish", src.to_str().unwrap(), "--app", "web", "--version", "1.0"]);
    let out = f.cli(&["deploy", "web@1.0", "--selector", "role=web", "--wait"]);
    assert!(out.status.success(), "a signed release goes live: {}", String::from_utf8_lossy(&out.stderr));
    assert!(f.agent_root("a").join(".convoy/tuf/root.json").exists(), "the agent keeps the root it trusts");
    // a release row put straight into the database: never signed
    let db = f.path("server/convoy.db");
    let insert = "import sqlite3, sys\n\
        db = sqlite3.connect(sys.argv[1])\n\
        db.execute(\"INSERT INTO releases (app, version, digest, manifest, files, total_size, chunks, created_at) \
        SELECT app, '6.6', digest, manifest, files, total_size, chunks, created_at + 1 FROM releases WHERE app = 'web' AND version = '1.0'\")\n\
        db.commit()\n";
    let o = std::process::Command::new("python3").args(["-c", insert, db.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = f.cli(&["deploy", "web@6.6", "--selector", "role=web", "--wait", "--output", "json"]);
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(d["deployment"]["state"], "failed", "{d:#}");
    let why = d["instructions"][0]["note"].as_str().unwrap();
    assert!(why.contains("not in the server's signed TUF metadata"), "{d:#}");
    assert_eq!(f.live("web"), vec![("a".into(), Some("1.0".into()))]);
}

#[test]
fn keys_are_made_private_and_never_overwritten() {
    let f = Fleet::start();
    let key = f.path("ci.key");
    let out = f.json(&["keys", "generate", key.to_str().unwrap()]);
    let keyid = out["keyid"].as_str().unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let public: serde_json::Value = serde_json::from_slice(&std::fs::read(f.path("ci.key.pub")).unwrap()).unwrap();
    assert_eq!(public["keyid"], keyid);
    assert!(public["keyval"].get("private").is_none(), "{public}");
    let before = std::fs::read(&key).unwrap();
    let again = f.cli(&["keys", "generate", key.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("never overwritten"));
    assert_eq!(std::fs::read(&key).unwrap(), before);
}

#[test]
fn an_offline_root_and_targets_key_take_over_and_agents_follow() {
    let mut f = Fleet::start();
    f.start_agent("a", "role=web", &[], &[]);
    let publish = |version: &str, key: Option<&str>| {
        let src = f.path(&format!("src/{version}"));
        write_app(&src, version, 10_000);
        let mut args = vec!["publish", src.to_str().unwrap(), "--app", "web", "--version", version];
        if let Some(k) = key {
            args.extend_from_slice(&["--sign-key", k]);
        }
        f.cli(&args)
    };
    assert!(publish("1.0", None).status.success());
    assert!(f.cli(&["deploy", "web@1.0", "--selector", "role=web", "--wait"]).status.success());
    let key = |name: &str| {
        let p = f.path(name);
        f.ok(&["keys", "generate", p.to_str().unwrap()]);
        p.to_str().unwrap().to_owned()
    };
    let (r1, r2, t) = (key("r1.key"), key("r2.key"), key("t.key"));
    let root = f.path("root2.json").to_str().unwrap().to_owned();
    let out = f.ok(&[
        "trust",
        "init",
        "--root-key",
        &r1,
        "--root-key",
        &r2,
        "--threshold",
        "2",
        "--targets-key",
        &format!("{t}.pub"),
        "--out",
        &root,
    ]);
    assert!(out.contains("root version 2"), "{out}");
    // one signature short of the new threshold: refused, nothing changes
    let mut short: serde_json::Value = serde_json::from_slice(&std::fs::read(&root).unwrap()).unwrap();
    short["signatures"].as_array_mut().unwrap().pop();
    let short_file = f.path("short.json");
    std::fs::write(&short_file, serde_json::to_vec(&short).unwrap()).unwrap();
    let secret = f.path("server/key-secret").to_str().unwrap().to_owned();
    // an admin token alone never moves the root out of single-box mode
    let o = f.cli(&["trust", "upload", &root, "--targets-key", &t]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("proof of this server's key secret"), "{o:?}");
    let o =
        f.cli(&["trust", "upload", short_file.to_str().unwrap(), "--targets-key", &t, "--key-secret-file", &secret]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("1 valid signature(s) of the 2 needed"), "{o:?}");
    assert!(f.ok(&["trust"]).contains("single-box"));
    // the full one: the server co-signs the handover and signs targets no more
    f.ok(&["trust", "upload", &root, "--targets-key", &t, "--key-secret-file", &secret]);
    let shown = f.ok(&["trust"]);
    assert!(!shown.contains("single-box") && shown.contains("2 of 2"), "{shown}");
    // published but not signed: agents refuse it
    let o = publish("2.0", None);
    assert!(String::from_utf8_lossy(&o.stderr).contains("NOT signed"), "{o:?}");
    let o = f.cli(&["deploy", "web@2.0", "--selector", "role=web", "--wait", "--output", "json"]);
    let d: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(d["deployment"]["state"], "failed", "{d:#}");
    assert!(
        d["instructions"][0]["note"].as_str().unwrap().contains("not in the server's signed TUF metadata"),
        "{d:#}"
    );
    // signed with the targets key: the enrolled agent follows the rotated root and installs it
    assert!(publish("2.0", Some(&t)).status.success());
    let o = f.cli(&["deploy", "web@2.0", "--selector", "role=web", "--wait"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(f.live("web"), vec![("a".into(), Some("2.0".into()))]);
    assert!(f.agents[0].1.log_text().contains("root was rotated"));
}
