//! Opening paths inside a directory without following symlinks: each
//! component is opened on its own with `O_NOFOLLOW`, so a link planted
//! anywhere on the path is refused instead of walked through.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, CWD};

use crate::RelPath;

/// Opens `name` in `dir` with `flags` plus `O_NOFOLLOW | O_CLOEXEC`. If
/// `name` is a symlink the error says so.
pub fn openat_nofollow(dir: impl AsFd, name: &str, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
    let dir = dir.as_fd();
    rustix::fs::openat(dir, name, flags | OFlags::NOFOLLOW | OFlags::CLOEXEC, mode).map_err(
        |e| match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode).is_symlink() => {
                io::Error::other(format!("{name} is a symlink, which is not followed"))
            }
            _ => e.into(),
        },
    )
}

/// Opens the directory `dir`, refusing it if its last component is a symlink.
pub fn open_dir_nofollow(dir: &Path) -> io::Result<OwnedFd> {
    rustix::fs::openat(CWD, dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| match dir.symlink_metadata() {
            Ok(m) if m.is_symlink() => {
                io::Error::other(format!("{} is a symlink, which is not followed", dir.display()))
            }
            _ => e.into(),
        })
}

/// Opens the directory that holds `path` below `root`, one component at a
/// time, none of them followed if it is a symlink. Returns it with the last
/// name of `path`, to be opened or created relative to it.
pub fn open_parent_nofollow(root: impl AsFd, path: &RelPath) -> io::Result<(OwnedFd, &str)> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY;
    let (dirs, name) = match path.as_str().rsplit_once('/') {
        Some((dirs, name)) => (Some(dirs), name),
        None => (None, path.as_str()),
    };
    let mut dir = openat_nofollow(root, ".", flags, Mode::empty())?;
    for c in dirs.into_iter().flat_map(|d| d.split('/')) {
        dir = openat_nofollow(&dir, c, flags, Mode::empty())?;
    }
    Ok((dir, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn refuses_symlinks_at_any_component() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path().join("r");
        std::fs::create_dir_all(r.join("d/e")).unwrap();
        std::fs::create_dir(t.path().join("out")).unwrap();
        symlink("../out", r.join("l")).unwrap();
        symlink("e", r.join("d/le")).unwrap();
        let root = open_dir_nofollow(&r).unwrap();
        let rel = |s| RelPath::parse(s).unwrap();

        let p = rel("d/e/f");
        let (_, name) = open_parent_nofollow(&root, &p).unwrap();
        assert_eq!(name, "f");
        for bad in ["l/f", "d/le/f"] {
            let e = open_parent_nofollow(&root, &rel(bad)).unwrap_err();
            assert!(e.to_string().contains("is a symlink"), "{bad}: {e}");
        }
        let l = rel("l");
        let (dir, name) = open_parent_nofollow(&root, &l).unwrap();
        assert!(openat_nofollow(&dir, name, OFlags::RDONLY, Mode::empty()).is_err());
        assert!(open_dir_nofollow(&r.join("l")).is_err());
    }
}
