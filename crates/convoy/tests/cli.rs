//! The CLI as a shell user meets it: completions, what it says when no
//! server answers, `targets show`, and the log formats of long-running
//! commands.

mod common;

use std::process::Command;

use common::*;

fn convoy(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut c = Command::new(EXE);
    c.args(args).env_remove("CONVOY_SERVER").env_remove("CONVOY_TOKEN").env_remove("CONVOY_LOG_FORMAT");
    c.envs(env.iter().copied());
    c.output().unwrap()
}

#[test]
fn completion_scripts_for_bash_zsh_and_fish() {
    for (shell, marker) in [("bash", "complete -F _convoy"), ("zsh", "#compdef convoy"), ("fish", "complete -c convoy")]
    {
        let out = convoy(&["completions", shell], &[]);
        assert!(out.status.success(), "{shell}: {}", String::from_utf8_lossy(&out.stderr));
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains(marker), "{shell} script lacks {marker:?}");
        for sub in ["deploy", "rollback", "targets", "enrol-tokens"] {
            assert!(script.contains(sub), "{shell} script does not complete {sub}");
        }
    }
    let bad = convoy(&["completions", "cmd.exe"], &[]);
    assert_eq!(bad.status.code(), Some(2), "an unknown shell is a usage error");
}

#[test]
fn a_server_that_does_not_answer_gets_a_hint_at_what_to_check() {
    let port = free_port(); // nothing listens there
    let url = format!("http://127.0.0.1:{port}");
    let out = convoy(&["releases"], &[("CONVOY_SERVER", &url), ("CONVOY_TOKEN", "some-token-0123456789")]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("no convoy server answered at {url}")) && err.contains("CONVOY_SERVER"), "{err}");

    // a server that answers with an error gets no such hint
    let f = Fleet::start();
    let out = convoy(&["releases"], &[("CONVOY_SERVER", &f.url), ("CONVOY_TOKEN", "wrong-token-0123456789")]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401") && !err.contains("hint:"), "{err}");
}

#[test]
fn the_server_writes_json_logs_when_asked_and_refuses_an_unknown_format() {
    let mut f = Fleet::start();
    f.kill_server();
    f.server_env.push(("CONVOY_LOG_FORMAT".into(), "json".into()));
    f.server_env.push(("CONVOY_LOG".into(), "info".into()));
    f.start_server();
    f.ok(&["releases"]);
    let log = f.server.as_ref().unwrap().log_text();
    let mut seen = 0;
    for l in log.lines().filter(|l| !l.trim().is_empty() && !l.starts_with("convoy: ")) {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string() && v["fields"]["message"].is_string(), "{l}");
        seen += 1;
    }
    assert!(seen > 0, "no log line in\n{log}");

    let dir = tempfile::tempdir().unwrap();
    let out = convoy(
        &["server", "--listen", &format!("127.0.0.1:{}", free_port()), "--data-dir", dir.path().to_str().unwrap()],
        &[("CONVOY_LOG_FORMAT", "yaml")],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("use text (the default) or json"));
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "a refused start changes nothing");
}
