//! Reports journaled on disk before they are sent, keyed by
//! instruction, phase and attempt: work is done once, reports are re-sent.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use convoy_wire::{Report, Work};

pub fn key(w: &Work) -> String {
    format!("{}-{}-{}", w.instruction_id, w.phase.as_str(), w.attempt)
}

fn path(root: &Path, key: &str) -> PathBuf {
    crate::state_dir(root).join("reports").join(format!("{key}.json"))
}

pub fn load(root: &Path, key: &str) -> Option<Report> {
    serde_json::from_slice(&std::fs::read(path(root, key)).ok()?).ok()
}

pub fn save(root: &Path, key: &str, report: &Report) -> std::io::Result<()> {
    let p = path(root, key);
    std::fs::create_dir_all(p.parent().expect("journal path has a parent"))?;
    write_private(&p, &serde_json::to_vec(report).map_err(std::io::Error::other)?)
}

/// Writes a file atomically with mode 0600.
pub fn write_private(p: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = p.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_data()?;
    std::fs::rename(&tmp, p)
}
