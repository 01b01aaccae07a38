//! The server's TUF repository checked by an independent client: python-tuf
//! (`ngclient.Updater`, installed into a virtual environment by `.ci/run`,
//! which names its interpreter in `CONVOY_TEST_PYTHON`).

mod common;

use common::*;

fn python() -> String {
    test_python("tuf.ngclient")
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
    // a next root signed by one of the two root keys, put on the server's disk: agents refuse it
    let r1_key =
        convoy_wire::tuf::SigningKey::from_file(&serde_json::from_slice(&std::fs::read(&r1).unwrap()).unwrap())
            .unwrap();
    let (_, mut cur) = Forger::new(&f).latest("root");
    let mut next = cur["signed"].take();
    next["version"] = 3.into();
    Forger::new(&f).put("root", 3, &convoy_wire::tuf::sign(next, &[&r1_key]).unwrap());
    let why = refused(&f, "1.0");
    assert!(why.contains("root version 3 refused") && why.contains("1 valid signature(s) of the 2 needed"), "{why}");
    assert_eq!(f.live("web"), vec![("a".into(), Some("2.0".into()))]);
}

/// Runs Python's sqlite3 on the server's database: `arg` is JSON, the
/// script's output is returned.
fn py_sql(db: &std::path::Path, script: &str, arg: &serde_json::Value) -> String {
    let code = format!("import json, sqlite3, sys\ndb = sqlite3.connect(sys.argv[1])\narg = json.loads(sys.argv[2])\n{script}\ndb.commit()\n");
    let out = std::process::Command::new("python3")
        .args(["-c", &code, db.to_str().unwrap(), &arg.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Someone who holds the server's database and its key secret, and so its
/// online timestamp and snapshot keys: signs metadata as the server would.
struct Forger {
    db: std::path::PathBuf,
    snapshot: convoy_wire::tuf::SigningKey,
    timestamp: convoy_wire::tuf::SigningKey,
}

impl Forger {
    fn new(f: &Fleet) -> Self {
        let db = f.path("server/convoy.db");
        let kek: [u8; 32] =
            hex_bytes(std::fs::read_to_string(f.path("server/key-secret")).unwrap().trim()).try_into().unwrap();
        let out = py_sql(
            &db,
            "print(json.dumps(dict(db.execute(\"SELECT name, secret FROM server_keys WHERE name LIKE 'tuf-%'\").fetchall())))",
            &serde_json::Value::Null,
        );
        let sealed: serde_json::Value = serde_json::from_str(&out).unwrap();
        let key = |name: &str| {
            let secret = convoy_wire::sign::open_secret(&kek, sealed[name].as_str().unwrap()).unwrap();
            convoy_wire::tuf::SigningKey::from_pkcs8(&hex_bytes(&secret)).unwrap()
        };
        Forger { snapshot: key("tuf-snapshot"), timestamp: key("tuf-timestamp"), db }
    }

    fn latest(&self, role: &str) -> (u64, serde_json::Value) {
        let out = py_sql(
            &self.db,
            "v, b = db.execute('SELECT version, body FROM tuf_metadata WHERE role = ? ORDER BY version DESC LIMIT 1', (arg,)).fetchone()\nprint(json.dumps([v, json.loads(b)]))",
            &serde_json::json!(role),
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        (v[0].as_u64().unwrap(), v[1].clone())
    }

    fn put(&self, role: &str, version: u64, meta: &serde_json::Value) {
        py_sql(
            &self.db,
            "db.execute('INSERT INTO tuf_metadata (role, version, body, created_at) VALUES (?, ?, ?, 0)', (arg[0], arg[1], json.dumps(arg[2]).encode()))",
            &serde_json::json!([role, version, meta]),
        );
    }

    /// A new snapshot naming `role` at `version` (besides what the newest
    /// names), and a timestamp for it that expires at `expires` (unix s).
    fn snapshot_and_timestamp(&self, role: Option<(&str, u64)>, expires: i64) {
        use convoy_wire::tuf::sign;
        let (sv, mut snap) = self.latest("snapshot");
        let mut s = snap["signed"].take();
        if let Some((role, version)) = role {
            s["meta"][format!("{role}.json")] = serde_json::json!({"version": version});
        }
        s["version"] = (sv + 1).into();
        self.put("snapshot", sv + 1, &sign(s, &[&self.snapshot]).unwrap());
        self.timestamp(sv + 1, expires);
    }

    fn timestamp(&self, snapshot: u64, expires: i64) {
        use convoy_wire::tuf::{format_time, sign};
        let (tv, mut ts) = self.latest("timestamp");
        let mut t = ts["signed"].take();
        t["meta"]["snapshot.json"]["version"] = snapshot.into();
        t["version"] = (tv + 1).into();
        t["expires"] = format_time(expires).into();
        self.put("timestamp", tv + 1, &sign(t, &[&self.timestamp]).unwrap());
    }
}

fn hex_bytes(h: &str) -> Vec<u8> {
    (0..h.len()).step_by(2).map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap()).collect()
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Deploys `web@version` to every `role=web` target and returns the first
/// instruction's note, which must say the deployment failed.
fn refused(f: &Fleet, version: &str) -> String {
    let o = f.cli(&["deploy", &format!("web@{version}"), "--selector", "role=web", "--wait", "--output", "json"]);
    let d: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{o:?}"));
    assert_eq!(d["deployment"]["state"], "failed", "{d:#}");
    d["instructions"][0]["note"].as_str().unwrap().to_owned()
}

#[test]
fn publisher_keys_sign_their_app_and_agents_refuse_forged_replayed_and_expired_metadata() {
    let mut f = Fleet::start();
    f.start_agent("a", "role=web", &[], &[]);
    let key = |name: &str| {
        let p = f.path(name);
        f.ok(&["keys", "generate", p.to_str().unwrap()]);
        p.to_str().unwrap().to_owned()
    };
    let (web_key, api_key) = (key("web.key"), key("api.key"));
    // single-box: the server signs the delegations; each app gets its publisher key
    let out = f.ok(&["trust", "delegate", "web", "--key", &format!("{web_key}.pub")]);
    assert!(out.contains("app-web: 1 of 1"), "{out}");
    f.ok(&["trust", "delegate", "api", "--key", &format!("{api_key}.pub")]);
    let publish = |version: &str, key: Option<&str>| {
        let src = f.path(&format!("src/{version}"));
        if !src.exists() {
            write_app(&src, version, 10_000);
        }
        let mut args = vec!["publish", src.to_str().unwrap(), "--app", "web", "--version", version];
        if let Some(k) = key {
            args.extend_from_slice(&["--sign-key", k]);
        }
        f.cli(&args)
    };
    // the server no longer signs web's releases itself; another app's key may not
    let o = publish("1.0", None);
    assert!(String::from_utf8_lossy(&o.stderr).contains("NOT signed"), "{o:?}");
    let o = publish("1.0", Some(&api_key));
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not a publisher key of web"), "{o:?}");
    assert!(publish("1.0", Some(&web_key)).status.success());
    assert!(f.cli(&["deploy", "web@1.0", "--selector", "role=web", "--wait"]).status.success());
    // python-tuf follows the delegation too
    let (_, root) = http(f.port, "GET", "/api/v1/tuf/metadata/1.root.json", Some(ADMIN), b"").unwrap();
    let root_file = f.path("root.json");
    std::fs::write(&root_file, &root).unwrap();
    let digest = f.json(&["releases"]).as_array().unwrap()[0]["digest"].as_str().unwrap().to_owned();
    let (code, text) = client(&f, &root_file, "web/1.0/manifest.json", &digest);
    assert_eq!(code, 0, "{text}");

    assert!(publish("2.0", Some(&web_key)).status.success());
    assert!(f.cli(&["deploy", "web@2.0", "--selector", "role=web", "--wait"]).status.success());
    let forger = Forger::new(&f);
    // replayed older metadata: the server serves the timestamp before the one the agent trusts
    let db = f.path("server/convoy.db");
    let (newest, _) = forger.latest("timestamp");
    py_sql(
        &db,
        "db.execute('CREATE TABLE held AS SELECT * FROM tuf_metadata WHERE role = ? AND version = ?', ('timestamp', arg))\n\
         db.execute('DELETE FROM tuf_metadata WHERE role = ? AND version = ?', ('timestamp', arg))",
        &newest.into(),
    );
    let why = refused(&f, "1.0");
    assert!(why.contains("TUF timestamp refused") && why.contains("version"), "{why}");
    py_sql(&db, "db.execute('INSERT INTO tuf_metadata SELECT * FROM held')\ndb.execute('DROP TABLE held')", &0.into());
    // an expired timestamp, validly signed: a frozen repository
    let (sv, _) = forger.latest("snapshot");
    forger.timestamp(sv, now_secs() - 60);
    let why = refused(&f, "1.0");
    assert!(why.contains("expired"), "{why}");
    // a release signed by another app's publisher key, listed by a server that signs its snapshot
    assert!(publish("6.6", None).status.success());
    let (rv, mut role) = forger.latest("app-web");
    let mut t = role["signed"].take();
    let src_manifest = f.ok(&["pack", f.path("src/6.6").to_str().unwrap(), "--app", "web", "--version", "6.6"]);
    let (_, manifest) = http(f.port, "GET", "/api/v1/releases/web/6.6/manifest", Some(ADMIN), b"").unwrap();
    t["targets"]["web/6.6/manifest.json"] = serde_json::json!({
        "length": manifest.len(),
        "hashes": {"sha256": convoy_wire::tuf::sha256(manifest.as_bytes())},
        "custom": {"convoy": {"digest": src_manifest.trim()}},
    });
    t["version"] = (rv + 1).into();
    let api =
        convoy_wire::tuf::SigningKey::from_file(&serde_json::from_slice(&std::fs::read(&api_key).unwrap()).unwrap())
            .unwrap();
    forger.put("app-web", rv + 1, &convoy_wire::tuf::sign(t, &[&api]).unwrap());
    forger.snapshot_and_timestamp(Some(("app-web", rv + 1)), now_secs() + 3_600);
    let why = refused(&f, "6.6");
    assert!(why.contains("app-web refused") && why.contains("0 valid signature"), "{why}");
    assert_eq!(f.live("web"), vec![("a".into(), Some("2.0".into()))]);
}

/// The note of the instruction for `host` in deployment `id`, once the
/// deployment is in one of `states`.
fn note_of(f: &Fleet, id: &str, host: &str, states: &[&str]) -> String {
    let d = f.wait_state(id, states, std::time::Duration::from_secs(120));
    let i =
        d["instructions"].as_array().unwrap().iter().find(|i| i["hostname"] == host).unwrap_or_else(|| panic!("{d:#}"));
    format!("{} {}", i["state"].as_str().unwrap(), i["note"].as_str().unwrap())
}

#[test]
fn agents_switch_only_with_a_threshold_of_approvers_signatures_over_exactly_what_was_approved() {
    let mut f = Fleet::start();
    let token = |name: &str, role: &str| f.ok(&["users", "add", name, "--role", role]).trim().to_owned();
    let (rita, alice, bob) = (token("rita", "approver"), token("alice", "approver"), token("bob", "approver"));
    let key = |name: &str| {
        let p = f.path(name);
        f.ok(&["keys", "generate", p.to_str().unwrap()]);
        p.to_str().unwrap().to_owned()
    };
    let (rita_key, alice_key, bob_key) = (key("rita.key"), key("alice.key"), key("bob.key"));
    // approvers register their public keys (their own, or an admin for them); never a private one
    let o = as_user(&f, &alice, &["users", "key", "alice", "--add", &alice_key]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("is a private key"), "{o:?}");
    ok_as(&f, &alice, &["users", "key", "alice", "--add", &format!("{alice_key}.pub")]);
    let o = as_user(&f, &alice, &["users", "key", "bob", "--add", &format!("{bob_key}.pub")]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("only an admin"), "{o:?}");
    f.ok(&["users", "key", "bob", "--add", &format!("{bob_key}.pub")]);
    f.ok(&["users", "key", "rita", "--add", &format!("{rita_key}.pub")]);
    f.ok(&["env", "set", "prod", "--approvals", "2", "--signed-approvals"]);
    let out = f.ok(&["trust", "approvers", "prod"]);
    assert!(out.contains("approve-prod: 2 of 3"), "{out}");
    for (name, tier) in [("a", "1"), ("b", "2")] {
        f.start_agent(name, &format!("role=web,tier={tier}"), &[], &["--environment", "prod"]);
    }
    let publish = |version: &str| {
        let src = f.path(&format!("src/{version}"));
        write_app(&src, version, 10_000);
        f.ok(&["publish", src.to_str().unwrap(), "--app", "web", "--version", version]);
    };
    publish("1.0");
    publish("2.0");
    publish("3.0");
    let request = |version: &str, extra: &[&str]| {
        let mut args = vec!["deploy", version, "--env", "prod", "--selector", "tier=1", "--output", "json"];
        args.extend_from_slice(extra);
        let d: serde_json::Value = serde_json::from_str(&ok_as(&f, &rita, &args)).unwrap();
        d["id"].as_str().unwrap().to_owned()
    };
    let approve = |token: &str, id: &str, key: &str| ok_as(&f, token, &["approve", id, "--sign-key", key]);
    let db = f.path("server/convoy.db");

    // two approvers sign: it goes live where it was approved
    let id = request("web@1.0", &[]);
    let o = as_user(&f, &alice, &["approve", &id]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("requires signed approvals"), "{o:?}");
    let o = as_user(&f, &alice, &["approve", &id, "--sign-key", &bob_key]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not registered for alice"), "{o:?}");
    approve(&alice, &id, &alice_key);
    approve(&bob, &id, &bob_key);
    assert!(note_of(&f, &id, "a", &["succeeded"]).starts_with("succeeded"));
    assert_eq!(f.live("web"), vec![("a".into(), Some("1.0".into())), ("b".into(), None)]);

    // one signature short of the threshold the signed targets name
    f.ok(&["env", "set", "prod", "--approvals", "1"]);
    let id = request("web@2.0", &[]);
    approve(&alice, &id, &alice_key);
    let why = note_of(&f, &id, "a", &["failed"]);
    assert!(why.contains("1 valid signature(s) of the 2 needed"), "{why}");
    f.ok(&["env", "set", "prod", "--approvals", "2"]);

    // an approval put straight into the database, signed with the requester's own key
    let id = request("web@2.0", &[]);
    let st: serde_json::Value = {
        let (_, body) = http(f.port, "GET", &format!("/api/v1/deployments/{id}/statement"), Some(ADMIN), b"").unwrap();
        serde_json::from_str(&body).unwrap()
    };
    let rk =
        convoy_wire::tuf::SigningKey::from_file(&serde_json::from_slice(&std::fs::read(&rita_key).unwrap()).unwrap())
            .unwrap();
    let s: convoy_wire::approval::Statement = serde_json::from_value(st.clone()).unwrap();
    let forged = serde_json::json!({"statement": st, "signature": convoy_wire::approval::sign(&s, &rk).unwrap()});
    py_sql(
        &db,
        "db.execute(\"INSERT INTO approvals (deployment_id, revision, approver, decision, note, at, signed) VALUES (?, ?, 'bob', 'approve', '', 0, ?)\", (arg[0], arg[1], arg[2]))",
        &serde_json::json!([id, s.revision, forged.to_string()]),
    );
    approve(&alice, &id, &alice_key);
    let why = note_of(&f, &id, "a", &["failed"]);
    assert!(why.contains("1 valid signature(s) of the 2 needed"), "{why}");

    // a wider selector put into the database after the first signature: the
    // target outside what was approved refuses, the approved one goes ahead
    let id = request("web@2.0", &[]);
    approve(&alice, &id, &alice_key);
    py_sql(
        &db,
        "db.execute(\"UPDATE deployments SET selector = 'role=web' WHERE id = ?\", (arg,))",
        &id.clone().into(),
    );
    approve(&bob, &id, &bob_key);
    let why = note_of(&f, &id, "b", &["failed", "succeeded", "halted"]);
    assert!(why.contains("is not among them"), "{why}");
    // (a may be rolled back: b's refusal breaks the wave's failure budget)
    assert_eq!(f.live("web")[1], ("b".into(), None));

    // the signed statement altered while the request waits for confirmation: refused
    let before = f.live("web");
    f.ok(&["env", "set", "prod", "--confirm"]);
    let id = request("web@3.0", &[]);
    approve(&alice, &id, &alice_key);
    approve(&bob, &id, &bob_key);
    f.wait_state(&id, &["awaiting_confirmation"], std::time::Duration::from_secs(60));
    py_sql(
        &db,
        "for (r, s) in db.execute('SELECT rowid, signed FROM approvals WHERE deployment_id = ?', (arg,)).fetchall():\n    v = json.loads(s)\n    v['statement']['selector'] = 'role=web'\n    db.execute('UPDATE approvals SET signed = ? WHERE rowid = ?', (json.dumps(v), r))",
        &id.clone().into(),
    );
    ok_as(&f, &rita, &["confirm", &id]);
    let why = note_of(&f, &id, "a", &["failed", "rolled_back", "succeeded", "halted"]);
    assert!(why.contains("does not hold"), "{why}");
    assert_eq!(f.live("web"), before);
}
