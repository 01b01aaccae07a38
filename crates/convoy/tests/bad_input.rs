//! Bad input gets a clear error and changes nothing: server and CLI.

mod common;

use common::*;

fn manifest_with(entries: &str) -> String {
    format!(
        r#"{{"app":"web","version":"9.9","manifest":{{"format":1,"chunking":[16384,65536,262144],"entries":[{entries}]}}}}"#
    )
}

#[test]
fn server_refuses_bad_requests_and_changes_nothing() {
    let f = Fleet::start();
    let p = f.port;
    let post = |path: &str, token: Option<&str>, body: &[u8]| http(p, "POST", path, token, body).unwrap();

    // authentication
    assert_eq!(post("/api/v1/deployments", None, b"{}").0, 401);
    let (s, b) = post("/api/v1/deployments", Some("wrong-token"), b"{}");
    assert_eq!(s, 401);
    assert!(b.contains("unknown or revoked token"), "{b}");
    assert_eq!(post("/api/v1/deployments", Some(ENROL), b"{}").0, 403, "the enrolment token is not an operator token");

    // malformed JSON and unknown fields
    let (s, b) = post("/api/v1/deployments", Some(ADMIN), b"{\"app\": ");
    assert_eq!(s, 400, "{b}");
    assert!(b.contains("\"code\":\"bad_request\""), "{b}");
    assert_eq!(post("/api/v1/deployments", Some(ADMIN), br#"{"app":"web","version":"1","selectr":"x"}"#).0, 400);

    // unknown release, bad names
    let (s, b) = post("/api/v1/deployments", Some(ADMIN), br#"{"app":"web","version":"1.0"}"#);
    assert_eq!(s, 404, "{b}");
    assert!(b.contains("release web@1.0 not found"), "{b}");
    assert_eq!(post("/api/v1/deployments", Some(ADMIN), br#"{"app":"../etc","version":"1.0"}"#).0, 400);

    // a go-live time in the past
    let (s, b) = post("/api/v1/deployments", Some(ADMIN), br#"{"app":"web","version":"1.0","at":1000}"#);
    assert_eq!(s, 400, "{b}");
    assert!(b.contains("in the past"), "{b}");

    // manifests with escaping paths or links, or naming chunks never uploaded
    let file = |path: &str| format!(r#"{{"type":"file","path":"{path}","mode":420,"size":0,"chunks":[]}}"#);
    for entries in [
        file("../x"),
        file("/etc/x"),
        file("a/../../x"),
        r#"{"type":"symlink","path":"l","target":"../../etc/passwd"}"#.to_owned(),
        r#"{"type":"symlink","path":"l","target":"/etc/passwd"}"#.to_owned(),
        format!(r#"{{"type":"symlink","path":"l","target":"d"}},{}"#, file("l/x")),
        format!(
            r#"{{"type":"file","path":"a","mode":420,"size":5,"chunks":[{{"id":"{}","len":5}}]}}"#,
            "ab".repeat(32)
        ),
    ] {
        let (s, b) = post("/api/v1/releases", Some(ADMIN), manifest_with(&entries).as_bytes());
        assert_eq!(s, 400, "accepted {entries}: {b}");
    }

    // a chunk whose bytes do not hash to its id; bad chunk ids
    let data = zstd_frame(b"hello world");
    let wrong = "00".repeat(32);
    let (s, b) = http(p, "PUT", &format!("/api/v1/chunks/{wrong}"), Some(ADMIN), &data).unwrap();
    assert_eq!(s, 400, "{b}");
    assert!(b.contains("chunk refused"), "{b}");
    assert_eq!(
        http(p, "GET", &format!("/api/v1/chunks/{wrong}"), Some(ADMIN), b"").unwrap().0,
        404,
        "the bad chunk was not stored"
    );
    assert_eq!(http(p, "PUT", "/api/v1/chunks/xyz", Some(ADMIN), &data).unwrap().0, 400);

    // a stored chunk named with another length than it has
    let hello = convoy_pack::VerifiedChunk::from_data(b"hello world".to_vec());
    let (s, b) = http(p, "PUT", &format!("/api/v1/chunks/{}", hello.id()), Some(ADMIN), &data).unwrap();
    assert!(s == 200 || s == 201 || s == 204, "{s} {b}");
    for len in [5, 12] {
        let entries = format!(
            r#"{{"type":"file","path":"a","mode":420,"size":{len},"chunks":[{{"id":"{}","len":{len}}}]}}"#,
            hello.id()
        );
        let (s, b) = post("/api/v1/releases", Some(ADMIN), manifest_with(&entries).as_bytes());
        assert_eq!(s, 400, "accepted a chunk of 11 bytes as {len}: {b}");
        assert!(b.contains("disagree with the stored chunks"), "{b}");
    }
    // chained links that climb out through the release's own links
    let chained = r#"{"type":"dir","path":"a","mode":493},{"type":"symlink","path":"a/b","target":".."},{"type":"symlink","path":"x","target":"a/b/a/b/../../../etc/passwd"}"#;
    let (s, b) = post("/api/v1/releases", Some(ADMIN), manifest_with(chained).as_bytes());
    assert_eq!(s, 400, "accepted a chained escape: {b}");

    // oversized requests
    let big = vec![b' '; 3 << 20];
    assert_eq!(post("/api/v1/deployments", Some(ADMIN), &big).0, 413);
    let (s, _) =
        http(p, "PUT", &format!("/api/v1/chunks/{}", "11".repeat(32)), Some(ADMIN), &vec![0u8; 2 << 20]).unwrap();
    assert_eq!(s, 413);

    // agents only see their own instructions; an unknown route is a JSON 404
    let (s, b) = http(p, "GET", "/api/v1/nope", Some(ADMIN), b"").unwrap();
    assert_eq!(s, 404);
    assert!(b.contains("not_found"), "{b}");
    assert_eq!(http(p, "GET", "/api/v1/agent/work", Some(ADMIN), b"").unwrap().0, 403);

    // nothing was created by any of it
    assert_eq!(f.json(&["releases"]).as_array().unwrap().len(), 0);
    assert_eq!(f.json(&["deployments"]).as_array().unwrap().len(), 0);
}

/// A zstd frame built by the CLI's own path: pack a one-file tree.
fn zstd_frame(data: &[u8]) -> Vec<u8> {
    convoy_pack::VerifiedChunk::from_data(data.to_vec()).compress()
}

#[test]
fn cli_refuses_bad_input_with_clear_errors() {
    let f = Fleet::start();
    let src = f.path("src");
    write_app(&src, "1.0", 1000);
    f.ok(&["publish", src.to_str().unwrap(), "--app", "web", "--version", "1.0"]);
    let releases = f.json(&["releases"]);

    // the same version with other content is refused, and the release is unchanged
    std::fs::write(src.join("index.html"), "changed").unwrap();
    let out = f.cli(&["publish", src.to_str().unwrap(), "--app", "web", "--version", "1.0"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already exists") && err.contains("immutable"), "{err}");
    assert_eq!(f.json(&["releases"]), releases);

    // publishing identical content again is fine and uploads nothing
    std::fs::write(src.join("index.html"), "<h1>1.0</h1>\n").unwrap();
    let out = f.ok(&["publish", src.to_str().unwrap(), "--app", "web", "--version", "1.0"]);
    assert!(out.contains("already published") && out.contains("uploaded 0 of"), "{out}");

    for (args, needle) in [
        (vec!["deploy", "web", "--all"], "expected APP@VERSION"),
        (vec!["deploy", "web@1.0", "--selector", "role"], "invalid label"),
        (vec!["deploy", "web@1.0", "--all", "--at", "tomorrow"], "invalid --at"),
        (vec!["deploy", "web@2.0", "--all"], "not found"),
        (vec!["deploy", "web@1.0", "--selector", "role=db"], "matches no enrolled target"),
        (vec!["status", "d-nothere"], "not found"),
        (vec!["rollback", "d-nothere"], "not found"),
        (vec!["publish", "/nonexistent", "--app", "web", "--version", "3"], "not a directory"),
        (vec!["pack", src.to_str().unwrap(), "--app", "Web!", "--version", "1"], "invalid app name"),
    ] {
        let out = f.cli(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: expected {needle:?} in {err}");
    }
    let out = std::process::Command::new(EXE)
        .args(["targets"])
        .env_remove("CONVOY_TOKEN")
        .env("CONVOY_SERVER", &f.url)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no API token"));
    let out = std::process::Command::new(EXE)
        .args(["targets"])
        .env("CONVOY_SERVER", &f.url)
        .env("CONVOY_TOKEN", "bad-token")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown or revoked token"));

    // a descriptor with unknown keys cannot be packed
    std::fs::write(src.join("convoy.toml"), "[hooks]\nstrat = 'x'\n").unwrap();
    let out = f.cli(&["pack", src.to_str().unwrap(), "--app", "web", "--version", "2"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(f.json(&["deployments"]).as_array().unwrap().len(), 0);
}

#[test]
fn pack_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    write_app(dir.path(), "1.0", 200_000);
    let run = || {
        let out = std::process::Command::new(EXE)
            .args(["pack", dir.path().to_str().unwrap(), "--app", "web", "--version", "1"])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let a = run();
    assert_eq!(a.trim().len(), 64);
    assert_eq!(a, run());
}
