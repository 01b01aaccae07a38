//! What the agent reports about its machine, read fresh each time.

use std::collections::BTreeMap;
use std::path::Path;

use convoy_wire::Inventory;

use crate::AgentConfig;

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

pub fn free_disk(root: &Path) -> u64 {
    rustix::fs::statvfs(root).map(|s| s.f_bavail * s.f_frsize).unwrap_or(0)
}

/// The version `ROOT/current/APP` points at, if any.
pub fn current_version(root: &Path, app: &str) -> Option<String> {
    let target = std::fs::read_link(root.join("current").join(app)).ok()?;
    Some(target.file_name()?.to_str()?.to_owned())
}

pub fn collect(cfg: &AgentConfig) -> Inventory {
    let mut installed = BTreeMap::new();
    let mut current = BTreeMap::new();
    if let Ok(apps) = std::fs::read_dir(cfg.root.join("releases")) {
        for app in apps.flatten() {
            let Ok(name) = app.file_name().into_string() else {
                continue;
            };
            let mut versions: Vec<String> = std::fs::read_dir(app.path())
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|v| v.file_name().into_string().ok())
                .filter(|v| !v.starts_with('.'))
                .collect();
            versions.sort();
            if let Some(v) = current_version(&cfg.root, &name) {
                current.insert(name.clone(), v);
            }
            installed.insert(name, versions);
        }
    }
    Inventory {
        hostname: cfg.name.clone().unwrap_or_else(hostname),
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
        free_disk_bytes: free_disk(&cfg.root),
        labels: cfg.labels.clone(),
        installed,
        current,
        agent_version: env!("CARGO_PKG_VERSION").into(),
        relay: cfg.relay.as_ref().map(|r| r.url.clone()),
        ..Default::default()
    }
}
