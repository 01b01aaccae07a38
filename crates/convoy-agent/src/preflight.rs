//! Preflight (P-preflight): before anything is deployed, the target runs
//! the package's `prepare` hook and checks that it can take the release:
//! free disk (less the space it is told to keep free), commands on the
//! PATH, free TCP ports, and custom check commands. Each check's result is
//! reported as a metric (`disk`, `command:NAME`, `port:N`, `check:K`,
//! `prepare`) whose value starts with `ok` or `FAIL`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use convoy_wire::{ReportKind, Work};

use crate::hooks::{self, HookEnv};
use crate::AgentConfig;

fn on_path(cmd: &str) -> bool {
    if cmd.contains('/') {
        return Path::new(cmd).is_file();
    }
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file())).unwrap_or(false)
}

fn port_free(port: u16) -> Result<(), String> {
    std::net::TcpListener::bind(("0.0.0.0", port)).map(drop).map_err(|e| e.to_string())
}

fn size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub async fn run(cfg: &AgentConfig, w: &Work) -> (ReportKind, BTreeMap<String, String>, String) {
    let spec = w.preflight.clone().unwrap_or_default();
    let mut results = BTreeMap::new();
    let mut output = String::new();
    let timeout = Duration::from_secs(spec.timeout_secs.clamp(1, 3600));
    let env = HookEnv { root: &cfg.root, app: &w.app, version: &w.version, previous: None };
    if let Some(cmd) = &spec.prepare {
        let r = hooks::run("prepare", cmd, &cfg.root, &env, timeout).await;
        output.push_str(&r.output);
        results.insert("prepare".into(), if r.ok { "ok".into() } else { "FAIL: the prepare hook failed".into() });
    }
    let free = crate::inventory::free_disk(&cfg.root);
    let usable = free.saturating_sub(cfg.reserve_disk);
    results.insert(
        "disk".into(),
        if usable >= spec.release_size {
            format!("ok: {} usable, the release needs {}", size(usable), size(spec.release_size))
        } else {
            format!(
                "FAIL: {} free, {} kept free, the release needs {}",
                size(free),
                size(cfg.reserve_disk),
                size(spec.release_size)
            )
        },
    );
    for c in &spec.commands {
        let ok = on_path(c);
        results.insert(format!("command:{c}"), if ok { "ok".into() } else { "FAIL: not found on the PATH".into() });
    }
    for p in &spec.ports {
        results.insert(
            format!("port:{p}"),
            match port_free(*p) {
                Ok(()) => "ok: free".into(),
                Err(e) => format!("FAIL: in use ({e})"),
            },
        );
    }
    for (k, cmd) in spec.checks.iter().enumerate() {
        let r = hooks::run("check", cmd, &cfg.root, &env, timeout).await;
        if !r.output.is_empty() {
            output.push_str(&format!("$ {cmd}\n{}", r.output));
        }
        results.insert(format!("check:{}", k + 1), if r.ok { format!("ok: {cmd}") } else { format!("FAIL: {cmd}") });
    }
    let failed: Vec<String> =
        results.iter().filter(|(_, v)| v.starts_with("FAIL")).map(|(k, v)| format!("{k} {v}")).collect();
    let kind =
        if failed.is_empty() { ReportKind::Succeeded } else { ReportKind::Failed { message: failed.join("; ") } };
    (kind, results, hooks::tail(&output))
}
