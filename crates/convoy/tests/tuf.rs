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
