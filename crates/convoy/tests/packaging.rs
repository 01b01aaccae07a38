//! The files in `packaging/`: the systemd units are as locked down as
//! their jobs allow, by systemd's own measure.

use std::path::{Path, PathBuf};
use std::process::Command;

fn packaging(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging").join(file)
}

/// `systemd-analyze security --offline=true`'s overall exposure of a unit
/// file (0 = locked down, 10 = not at all).
fn exposure(unit: &str) -> f64 {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(packaging(unit))
        .current_dir(std::env::temp_dir())
        .output()
        .expect("systemd-analyze (Debian package systemd) rates the units");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level for {unit}: {text}{}", String::from_utf8_lossy(&out.stderr)));
    let (_, rest) = line.split_once(": ").unwrap();
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
#[ignore = "needs systemd-analyze (Debian package systemd): cargo test -- --include-ignored"]
fn the_systemd_units_are_locked_down_as_far_as_their_jobs_allow() {
    let server = exposure("convoy-server.service");
    assert!(server <= 3.0, "convoy-server.service exposure {server}, goal at most 3.0");
    // The agent runs hooks as root that install files and drive the
    // service manager; see the unit's comments for what it keeps.
    let agent = exposure("convoy-agent.service");
    assert!(agent <= 7.0, "convoy-agent.service exposure {agent}, was 6.4");
}

#[test]
fn the_sysusers_file_makes_the_user_the_server_unit_runs_as() {
    let unit = std::fs::read_to_string(packaging("convoy-server.service")).unwrap();
    let user = unit.lines().find_map(|l| l.strip_prefix("User=")).expect("the server unit names its user");
    let sysusers = std::fs::read_to_string(packaging("convoy.sysusers")).unwrap();
    assert!(
        sysusers.lines().any(|l| l.split_whitespace().take(2).eq(["u", user])),
        "convoy.sysusers does not make user {user}"
    );
    let tmpfiles = std::fs::read_to_string(packaging("convoy.tmpfiles")).unwrap();
    let state = tmpfiles.lines().find(|l| l.starts_with("d /var/lib/convoy")).expect("the data dir");
    assert!(state.split_whitespace().skip(3).take(2).eq([user, user]), "{state}");
}
