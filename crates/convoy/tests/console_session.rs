//! Console sessions end with their token: a live stream open in a browser
//! stops within a tick of the user's token being rotated (no browser needed
//! here: raw HTTP on loopback).

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;

fn raw(port: u16, request: &str) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    s
}

#[test]
fn a_live_stream_ends_when_its_users_token_is_rotated() {
    let mut f = Fleet::start();
    f.start_agent("a", "role=web", &[], &[]);
    let src = f.path("src/1.0");
    write_app(&src, "1.0", 1_000);
    f.ok(&["publish", src.to_str().unwrap(), "--app", "web", "--version", "1.0"]);
    let id =
        f.json(&["deploy", "web@1.0", "--selector", "role=web", "--at", "+120s"])["id"].as_str().unwrap().to_owned();
    let token = f.ok(&["users", "add", "vic", "--role", "viewer"]).trim().to_owned();

    // sign in: the answer sets the session cookie
    let body = format!("token={token}");
    let mut s = raw(
        f.port,
        &format!(
            "POST /ui/login HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            f.port,
            body.len()
        ),
    );
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let cookie = answer
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: ").or_else(|| l.strip_prefix("Set-Cookie: ")))
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("no session cookie: {answer}"))
        .to_owned();
    assert!(answer.to_ascii_lowercase().contains("httponly"), "{answer}");

    // a cross-site sign-in is refused
    let mut s = raw(
        f.port,
        &format!(
            "POST /ui/login HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nOrigin: https://evil.example\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            f.port,
            body.len()
        ),
    );
    let mut refused = String::new();
    s.read_to_string(&mut refused).unwrap();
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");

    // the live stream sends the page's live part, then runs on
    let mut stream = raw(
        f.port,
        &format!("GET /ui/deployments/{id}/stream HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nCookie: {cookie}\r\n\r\n", f.port),
    );
    stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut seen = Vec::new();
    let read_until = |stream: &mut std::net::TcpStream, seen: &mut Vec<u8>, what: &str, limit: Duration| {
        let until = Instant::now() + limit;
        let mut buf = [0u8; 8192];
        while !String::from_utf8_lossy(seen).contains(what) {
            assert!(Instant::now() < until, "no {what:?} within {limit:?}: {}", String::from_utf8_lossy(seen));
            if let Ok(n) = stream.read(&mut buf) {
                assert!(n > 0 || String::from_utf8_lossy(seen).contains(what), "the stream closed early");
                seen.extend_from_slice(&buf[..n]);
            }
        }
    };
    read_until(&mut stream, &mut seen, "event: live", Duration::from_secs(10));
    assert!(!String::from_utf8_lossy(&seen).contains("event: done"));

    // rotating the token ends the session, and the stream within a tick
    f.ok(&["users", "token", "vic", "--rotate"]);
    read_until(&mut stream, &mut seen, "signed out", Duration::from_secs(10));
    let (status, _) = http(f.port, "GET", &format!("/ui/deployments/{id}"), None, b"").unwrap();
    assert_eq!(status, 303, "without a session the page sends the browser to sign in");
}
