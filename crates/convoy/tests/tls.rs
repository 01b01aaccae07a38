//! HTTPS end to end: a server with its own certificate, an agent and the CLI
//! that trust it through --ca-cert, and clients that do not.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn https_with_a_private_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();

    let mut f = Fleet::start_full(None, Some((cert.clone(), key.clone())));
    assert!(f.url.starts_with("https://"));
    f.start_agent("a", "role=web", &[], &[]);
    let src = f.path("src");
    write_app(&src, "1.0", 100_000);
    f.ok(&["publish", src.to_str().unwrap(), "--app", "web", "--version", "1.0"]);
    let out = f.ok(&["deploy", "web@1.0", "--selector", "role=web", "--wait"]);
    assert!(out.contains("succeeded"), "{out}");
    assert_eq!(f.live("web"), vec![("a".into(), Some("1.0".into()))]);

    // a client that does not trust the certificate is refused, clearly
    let out = std::process::Command::new(EXE)
        .args(["targets"])
        .env("CONVOY_SERVER", &f.url)
        .env("CONVOY_TOKEN", ADMIN)
        .env_remove("CONVOY_CA_CERT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    // plain HTTP to the HTTPS port gets no answer
    let plain = http(f.port, "GET", "/api/v1/health", None, b"");
    assert!(plain.map(|(s, _)| s != 200).unwrap_or(true));
    // and the server keeps serving after that garbage
    wait_until("the server to answer again", Duration::from_secs(10), || {
        f.cli(&["releases"]).status.success().then_some(())
    });

    // half a TLS configuration is refused at start
    let out = std::process::Command::new(EXE).args(["server", "--tls-cert", cert.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}
