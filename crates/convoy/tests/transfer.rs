//! Fewest bytes: release deltas, seeding from installed releases, and the
//! fall-back to chunks, through the real binary.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

fn deploy_wait(f: &Fleet, release: &str) -> serde_json::Value {
    let out = f.cli(&["deploy", release, "--selector", "role=web", "--wait", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    assert_eq!(v["deployment"]["state"], "succeeded", "{v:#}");
    v
}

fn metric(d: &serde_json::Value, host: &str, key: &str) -> String {
    let i = d["instructions"].as_array().unwrap().iter().find(|i| i["hostname"] == host).unwrap();
    assert_eq!(i["reported_digest"], d["deployment"]["digest"], "{host} holds the release: {i:#}");
    i["metrics"][key].as_str().unwrap_or_else(|| panic!("{host} has no metric {key}: {i:#}")).to_owned()
}

fn num(d: &serde_json::Value, host: &str, key: &str) -> u64 {
    metric(d, host, key).parse().unwrap()
}

fn overwrite(path: &std::path::Path, at: usize, bytes: &[u8]) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut data = std::fs::read(path).unwrap();
    data[at..at + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, data).unwrap();
}

#[test]
fn deltas_rebuild_identical_releases_and_modified_installs_fall_back_to_chunks() {
    let mut f = Fleet::start();
    f.start_agent("a", "role=web", &[], &[]);
    f.start_agent("b", "role=web", &[], &[]);
    f.start_agent("c", "role=web", &[], &["--max-memory", "0"]);

    let v1 = f.path("src/1.0");
    write_app(&v1, "1.0", 3_000_000);
    f.ok(&["publish", v1.to_str().unwrap(), "--app", "web", "--version", "1.0"]);
    deploy_wait(&f, "web@1.0");

    // 2.0 changes a few bytes in the middle of the large file
    let v2 = f.path("src/2.0");
    write_app(&v2, "2.0", 3_000_000);
    overwrite(&v2.join("data.bin"), 1_500_000, b"a small change");
    std::fs::write(v2.join("config/app.env"), "PORT=9090\n").unwrap();
    f.ok(&["publish", v2.to_str().unwrap(), "--app", "web", "--version", "2.0"]);
    f.wait_delta("web", "1.0", "2.0");

    // b's installed 1.0 was modified on the machine and its chunk cache is
    // gone: its copy of data.bin is no reference for that file's patch any more, and health.sh is deleted
    overwrite(&f.agent_root("b").join("releases/web/1.0/data.bin"), 100, b"local edit");
    std::fs::remove_file(f.agent_root("b").join("releases/web/1.0/health.sh")).unwrap();
    std::fs::remove_dir_all(f.agent_root("b").join(".convoy/cache")).unwrap();

    let d = deploy_wait(&f, "web@2.0");
    // the upgrade's description: what changed, config defaults, hooks
    let ch = &d["changes"][0];
    assert_eq!(ch["from_version"], "1.0");
    assert_eq!(ch["changed"], serde_json::json!(["config/app.env", "data.bin", "index.html"]), "{ch:#}");
    assert_eq!(ch["added"], serde_json::json!([]));
    assert_eq!(ch["config_changed"], serde_json::json!(["config/app.env"]));
    let id = d["deployment"]["id"].as_str().unwrap();
    let status = f.ok(&["status", id]);
    assert!(status.contains("changes  from 1.0: 0 added, 0 removed, 3 changed"), "{status}");
    assert!(status.contains("config defaults changed: config/app.env"), "{status}");
    let listed = f.ok(&["changes", "web@2.0", "--from", "1.0"]);
    assert!(listed.contains("  ~ data.bin") && listed.contains("  ~ index.html"), "{listed}");
    let bad = f.cli(&["changes", "web@2.0", "--from", "9.9"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("web@9.9 not found"), "{bad:?}");
    // a: one delta of a few hundred bytes instead of a 64 KiB chunk
    assert_eq!(metric(&d, "a", "transfer"), "delta");
    assert!(num(&d, "a", "bytes_fetched") < 4_000, "a fetched {}", num(&d, "a", "bytes_fetched"));
    assert!(num(&d, "a", "chunks_from_delta") >= 1);
    // b: the delta's other files patched, data.bin (modified here) left
    // out; seeded what its files still hold; data.bin synced from its own
    // copy (block signatures up, copy/literal instructions down), so the
    // changed chunk and the locally edited one never travel whole
    assert_eq!(metric(&d, "b", "transfer"), "delta+sync+chunks");
    assert!(num(&d, "b", "chunks_seeded") >= 30, "b seeded {}", num(&d, "b", "chunks_seeded"));
    assert_eq!(num(&d, "b", "chunks_synced"), 3, "data.bin's changed and locally edited chunks, health.sh");
    assert_eq!(num(&d, "b", "chunks_fetched"), 0);
    assert!(num(&d, "b", "sync_bytes") < 40_000, "sync cost {}", num(&d, "b", "sync_bytes"));
    assert!(num(&d, "b", "bytes_fetched") < 50_000, "b moved {}", num(&d, "b", "bytes_fetched"));
    // c: deltas off, the changed chunk as a chunk
    assert_eq!(metric(&d, "c", "transfer"), "chunks");
    assert!(num(&d, "c", "bytes_fetched") > 16_000);
    for h in ["a", "b", "c"] {
        for file in ["data.bin", "index.html", "health.sh"] {
            assert!(
                std::fs::read(f.agent_root(h).join("current/web").join(file)).unwrap()
                    == std::fs::read(v2.join(file)).unwrap(),
                "{h}: {file} differs from the published one"
            );
        }
    }
    // the server made the delta once for the pair, and says what it sent
    let (_, metrics) = http(f.port, "GET", "/metrics", None, b"").unwrap();
    let sent: u64 =
        metrics.lines().find_map(|l| l.strip_prefix("convoy_delta_bytes_served_total ")).unwrap().parse().unwrap();
    assert!(sent > 0 && sent < 20_000, "delta and sync bytes served {sent}");
    let deltas = std::fs::read_dir(f.path("server/deltas"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".zst"))
        .filter(|e| !e.as_ref().unwrap().file_name().to_string_lossy().starts_with("m-"))
        .count();
    assert_eq!(deltas, 1);

    // a third release: a's delta reference is now 2.0 and still intact
    let v3 = f.path("src/3.0");
    write_app(&v3, "3.0", 3_000_000);
    overwrite(&v3.join("data.bin"), 2_500_000, b"another change");
    f.ok(&["publish", v3.to_str().unwrap(), "--app", "web", "--version", "3.0"]);
    f.wait_delta("web", "2.0", "3.0");
    let d = deploy_wait(&f, "web@3.0");
    assert_eq!(metric(&d, "a", "transfer"), "delta");
    assert_eq!(metric(&d, "b", "transfer"), "delta", "b's 2.0 is intact again");
}

#[test]
fn deltas_are_made_at_publish_and_never_waited_for() {
    let f = Fleet::start();
    for v in ["1.0", "2.0", "3.0", "4.0", "5.0"] {
        let src = f.path(&format!("src/{v}"));
        write_app(&src, v, 2_000_000);
        overwrite(&src.join("data.bin"), 1_000_000, v.as_bytes());
        f.ok(&["publish", src.to_str().unwrap(), "--app", "web", "--version", v]);
    }
    // made at publish, from the last releases, before anyone deployed
    for from in ["2.0", "3.0", "4.0"] {
        assert_eq!(f.wait_delta("web", from, "5.0"), 200, "{from} -> 5.0");
    }
    // a pair nobody prepared: the asker is told at once to use chunks, and it is made meanwhile
    let (status, body) = http(f.port, "GET", "/api/v1/releases/web/5.0/delta?from=1.0", Some(ADMIN), b"").unwrap();
    assert_eq!(status, 202, "{body}");
    assert_eq!(f.wait_delta("web", "1.0", "5.0"), 200);
    // an agent holding 1.0 stages 2.0 by delta only if it was made; here it was
    let mut f = f;
    f.start_agent("a", "role=web", &[], &[]);
    deploy_wait(&f, "web@1.0");
    let d = deploy_wait(&f, "web@2.0");
    assert_eq!(metric(&d, "a", "transfer"), "delta");
}

#[test]
fn first_installs_come_as_one_stream_and_a_damaged_one_falls_back_to_chunks() {
    let mut f = Fleet::start();
    f.start_agent("a", "role=web", &[], &[]);
    f.start_agent("c", "role=web", &[], &["--max-memory", "0"]);
    // text-like files that compress together better than one by one
    let catalogs = |dir: &std::path::Path| {
        std::fs::create_dir_all(dir.join("locale")).unwrap();
        for i in 0..40 {
            let text: String =
                (0..400).map(|j| format!("msgid \"line {j} of catalog\"\nmsgstr \"Zeile {j} {i}\"\n")).collect();
            std::fs::write(dir.join(format!("locale/{i}.po")), text).unwrap();
        }
    };
    let v1 = f.path("src/1.0");
    write_app(&v1, "1.0", 10_000);
    catalogs(&v1);
    f.ok(&["publish", v1.to_str().unwrap(), "--app", "web", "--version", "1.0"]);
    let stream = |v: &str| {
        wait_until("the first-install stream", std::time::Duration::from_secs(120), || {
            let (status, _) =
                http(f.port, "GET", &format!("/api/v1/releases/web/{v}/stream"), Some(ADMIN), b"").ok()?;
            (status != 202).then_some(status)
        })
    };
    assert_eq!(stream("1.0"), 200);
    let d = deploy_wait(&f, "web@1.0");
    assert_eq!(metric(&d, "a", "transfer"), "stream");
    assert_eq!(metric(&d, "c", "transfer"), "chunks");
    let (a, c) = (num(&d, "a", "bytes_fetched"), num(&d, "c", "bytes_fetched"));
    assert!(a * 2 < c, "the stream cost {a} bytes, chunks {c}");

    // a damaged stream: refused (it does not rebuild the release), chunks instead
    let v2 = f.path("src/2.0");
    write_app(&v2, "2.0", 10_000);
    catalogs(&v2);
    std::fs::write(v2.join("extra.txt"), "x".repeat(50_000)).unwrap();
    f.ok(&["publish", v2.to_str().unwrap(), "--app", "web", "--version", "2.0"]);
    assert_eq!(stream("2.0"), 200);
    for e in std::fs::read_dir(f.path("server/deltas")).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().starts_with("full-") {
            let mut b = std::fs::read(&p).unwrap();
            let n = b.len();
            b[n / 3] ^= 0x20;
            std::fs::write(&p, b).unwrap();
        }
    }
    f.start_agent("b", "role=web", &[], &[]);
    let d = deploy_wait(&f, "web@2.0");
    assert_eq!(metric(&d, "b", "transfer"), "chunks");
    assert_eq!(
        std::fs::read(f.agent_root("b").join("current/web/extra.txt")).unwrap(),
        std::fs::read(v2.join("extra.txt")).unwrap()
    );
}
