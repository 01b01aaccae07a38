//! Walking a directory into a [`Manifest`], and writing a manifest back out.

use std::fs;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use crate::{
    open_dir_nofollow, open_parent_nofollow, openat_nofollow, ChunkRef, Descriptor, Entry, Manifest, RelPath,
    VerifiedChunk, CHUNK_AVG, CHUNK_MAX, CHUNK_MIN, DESCRIPTOR_FILE,
};

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Path(#[from] crate::PathError),
    #[error(transparent)]
    Descriptor(#[from] crate::DescriptorError),
    #[error("{0}: only regular files, directories and symlinks can be packed")]
    Unsupported(PathBuf),
    #[error("{0}: file name is not UTF-8")]
    NonUtf8(PathBuf),
    #[error("{0}")]
    Chunk(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PackError + '_ {
    move |source| PackError::Io { path: path.to_owned(), source }
}

/// Cuts a file into content-defined chunks, calling `f` for each.
pub fn chunk_file(path: &Path, mut f: impl FnMut(VerifiedChunk) -> Result<(), PackError>) -> Result<u64, PackError> {
    let file = fs::File::open(path).map_err(io_err(path))?;
    let mut size = 0;
    for c in fastcdc::v2020::StreamCDC::new(file, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX) {
        let c = c.map_err(|e| PackError::Io { path: path.to_owned(), source: io::Error::other(e.to_string()) })?;
        size += c.length as u64;
        f(VerifiedChunk::from_data(c.data))?;
    }
    Ok(size)
}

/// Packs the tree under `root`. `on_chunk` sees every chunk (repeats
/// included) so the caller can store or upload it. A `convoy.toml` in the
/// root is validated.
pub fn pack_tree(
    root: &Path,
    on_chunk: impl FnMut(&VerifiedChunk) -> Result<(), PackError>,
) -> Result<Manifest, PackError> {
    let desc = root.join(DESCRIPTOR_FILE);
    if desc.is_file() {
        Descriptor::parse(&fs::read_to_string(&desc).map_err(io_err(&desc))?)?;
    }
    let m = scan_tree(root, on_chunk)?;
    crate::links::check_links(&m.entries)?;
    Ok(m)
}

/// The manifest of the tree under `root` as it is, parsing none of its
/// files: for hashing what is on a target's disk, where a damaged
/// `convoy.toml` must show as a digest mismatch, not as a parse error.
pub fn scan_tree(
    root: &Path,
    mut on_chunk: impl FnMut(&VerifiedChunk) -> Result<(), PackError>,
) -> Result<Manifest, PackError> {
    let mut entries = Vec::new();
    walk(root, None, &mut entries, &mut on_chunk)?;
    Ok(Manifest::new(entries))
}

fn walk(
    dir: &Path,
    prefix: Option<&str>,
    out: &mut Vec<Entry>,
    on_chunk: &mut impl FnMut(&VerifiedChunk) -> Result<(), PackError>,
) -> Result<(), PackError> {
    let mut names = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        let name = e.file_name().into_string().map_err(|_| PackError::NonUtf8(e.path()))?;
        names.push(name);
    }
    names.sort();
    for name in names {
        let full = dir.join(&name);
        let rel = match prefix {
            Some(p) => format!("{p}/{name}"),
            None => name,
        };
        let path = RelPath::parse(&rel)?;
        let meta = fs::symlink_metadata(&full).map_err(io_err(&full))?;
        let mode = meta.permissions().mode() & 0o777;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(&full).map_err(io_err(&full))?;
            let target = target.into_os_string().into_string().map_err(|_| PackError::NonUtf8(full.clone()))?;
            path.check_link_target(&target)?;
            out.push(Entry::Symlink { path, target });
        } else if ft.is_dir() {
            out.push(Entry::Dir { path, mode });
            walk(&full, Some(&rel), out, on_chunk)?;
        } else if ft.is_file() {
            let mut chunks = Vec::new();
            let size = chunk_file(&full, |c| {
                chunks.push(ChunkRef { id: c.id(), len: c.data().len() as u32 });
                on_chunk(&c)
            })?;
            out.push(Entry::File { path, mode, size, chunks });
        } else {
            return Err(PackError::Unsupported(full));
        }
    }
    Ok(())
}

/// Writes the release into `dest`, which must not exist yet. `chunk` gives
/// each chunk, verified. The manifest must be valid, so no path can leave
/// `dest`; every entry is made relative to its parent directory opened
/// component by component without following symlinks, and files are
/// created new, so nothing is ever written through a link.
pub fn unpack(
    manifest: &Manifest,
    dest: &Path,
    mut chunk: impl FnMut(&ChunkRef) -> Result<VerifiedChunk, PackError>,
) -> Result<(), PackError> {
    manifest.validate().map_err(|e| PackError::Chunk(e.to_string()))?;
    fs::create_dir(dest).map_err(io_err(dest))?;
    let root = open_dir_nofollow(dest).map_err(io_err(dest))?;
    // the directory of the previous entry, as most entries share it
    let mut last: Option<(Option<RelPath>, OwnedFd)> = None;
    let mut dirs = Vec::new();
    for e in &manifest.entries {
        let full = dest.join(e.path().as_str());
        let parent = e.path().parent();
        let dir = match last.take() {
            Some((p, fd)) if p == parent => fd,
            _ => open_parent_nofollow(&root, e.path()).map_err(io_err(&full))?.0,
        };
        let name = e.path().as_str().rsplit('/').next().unwrap_or_default();
        match e {
            Entry::Dir { path, mode } => {
                rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700)).map_err(|e| io_err(&full)(e.into()))?;
                dirs.push((path, *mode));
            }
            Entry::Symlink { target, .. } => {
                rustix::fs::symlinkat(target.as_str(), &dir, name).map_err(|e| io_err(&full)(e.into()))?
            }
            Entry::File { mode, chunks, .. } => {
                let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL;
                let mut f = fs::File::from(
                    openat_nofollow(&dir, name, flags, Mode::from_raw_mode(0o600)).map_err(io_err(&full))?,
                );
                for c in chunks {
                    let data = chunk(c)?;
                    if data.id() != c.id {
                        return Err(PackError::Chunk(format!("chunk source returned {} for {}", data.id(), c.id)));
                    }
                    f.write_all(data.data()).map_err(io_err(&full))?;
                }
                f.sync_data().map_err(io_err(&full))?;
                f.set_permissions(fs::Permissions::from_mode(*mode)).map_err(io_err(&full))?;
            }
        }
        last = Some((parent, dir));
    }
    // children first, so a directory without write permission is finished
    for (path, mode) in dirs.into_iter().rev() {
        let full = dest.join(path.as_str());
        let set = open_parent_nofollow(&root, path)
            .and_then(|(dir, name)| openat_nofollow(&dir, name, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()))
            .and_then(|d| fs::File::from(d).set_permissions(fs::Permissions::from_mode(mode)));
        set.map_err(io_err(&full))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::unix::fs::symlink;

    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Node {
        File(Vec<u8>, u32),
        Dir,
        Link(String),
    }

    fn content() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            (any::<u64>(), 1usize..300_000).prop_map(|(seed, len)| {
                let mut x = seed | 1;
                (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        (x >> 24) as u8
                    })
                    .collect()
            }),
        ]
    }

    fn node() -> impl Strategy<Value = Node> {
        prop_oneof![
            4 => (content(), prop_oneof![Just(0o644u32), Just(0o755), Just(0o600)]).prop_map(|(c, m)| Node::File(c, m)),
            1 => Just(Node::Dir),
            1 => "[a-z]{1,3}".prop_map(Node::Link),
        ]
    }

    fn tree() -> impl Strategy<Value = Vec<(String, Node)>> {
        proptest::collection::vec(("[a-z]{1,3}(/[a-z]{1,3}){0,2}", node()), 0..8)
    }

    /// Builds the tree; returns the files actually written (first of a path wins).
    fn build(root: &Path, nodes: &[(String, Node)]) -> Vec<(String, Vec<u8>)> {
        let mut files = Vec::new();
        for (path, node) in nodes {
            let full = root.join(path);
            if full.symlink_metadata().is_ok() || full.ancestors().skip(1).any(|a| a.is_file() || a.is_symlink()) {
                continue;
            }
            fs::create_dir_all(full.parent().unwrap()).unwrap();
            match node {
                Node::File(data, mode) => {
                    fs::write(&full, data).unwrap();
                    files.push((path.clone(), data.clone()));
                    fs::set_permissions(&full, fs::Permissions::from_mode(*mode)).unwrap();
                }
                Node::Dir => fs::create_dir(&full).unwrap(),
                Node::Link(t) => symlink(t, &full).unwrap(),
            }
        }
        files
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        /// Packing any tree, unpacking it elsewhere and packing again gives
        /// the same manifest; packing twice gives the same digest.
        #[test]
        fn pack_unpack_round_trips(nodes in tree()) {
            let src = tempfile::tempdir().unwrap();
            let files = build(src.path(), &nodes);
            let mut chunks = HashMap::new();
            let m = match pack_tree(src.path(), |c| { chunks.insert(c.id(), c.clone()); Ok(()) }) {
                // links named by random names can form loops
                Err(PackError::Path(e)) if e.why.contains("loop") => return Ok(()),
                m => m.unwrap(),
            };
            prop_assert_eq!(pack_tree(src.path(), |_| Ok(())).unwrap().digest(), m.digest());
            let again = Manifest::from_slice(&m.canonical_bytes()).unwrap();
            prop_assert_eq!(&again, &m);

            let out = tempfile::tempdir().unwrap();
            let dest = out.path().join("r");
            unpack(&m, &dest, |c| Ok(chunks[&c.id].clone())).unwrap();
            let m2 = pack_tree(&dest, |_| Ok(())).unwrap();
            prop_assert_eq!(m2.digest(), m.digest());
            for (path, data) in &files {
                prop_assert_eq!(&fs::read(dest.join(path)).unwrap(), data);
            }
        }
    }

    #[test]
    fn refuses_escaping_links_when_packing() {
        let src = tempfile::tempdir().unwrap();
        symlink("/etc/passwd", src.path().join("evil")).unwrap();
        assert!(matches!(pack_tree(src.path(), |_| Ok(())), Err(PackError::Path(_))));
    }

    #[test]
    fn refuses_chains_of_links_that_climb_out_when_packing() {
        let src = tempfile::tempdir().unwrap();
        fs::create_dir(src.path().join("a")).unwrap();
        symlink("..", src.path().join("a/b")).unwrap();
        symlink("a/b/a/b/../../../etc/passwd", src.path().join("x")).unwrap();
        assert!(matches!(pack_tree(src.path(), |_| Ok(())), Err(PackError::Path(_))));
    }

    #[test]
    fn unpack_never_writes_through_a_symlinked_parent() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let data = VerifiedChunk::from_data(b"data".to_vec());
        let file = |p: &str| Entry::File {
            path: RelPath::parse(p).unwrap(),
            mode: 0o644,
            size: 4,
            chunks: vec![ChunkRef { id: data.id(), len: 4 }],
        };
        // sorted: a, a-b, a/x; while a-b is written, `a` is swapped for a link
        let m = Manifest::new(vec![
            Entry::Dir { path: RelPath::parse("a").unwrap(), mode: 0o755 },
            file("a-b"),
            file("a/x"),
        ]);
        let dest = t.path().join("r");
        let r = unpack(&m, &dest, |_| {
            if !dest.join("a").is_symlink() {
                fs::rename(dest.join("a"), dest.join("moved")).unwrap();
                symlink(&outside, dest.join("a")).unwrap();
            }
            Ok(data.clone())
        });
        assert!(r.unwrap_err().to_string().contains("is a symlink"));
        assert!(!outside.join("x").exists());
    }

    #[test]
    fn unpack_never_writes_into_existing_dest() {
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("a"), b"x").unwrap();
        let m = pack_tree(src.path(), |_| Ok(())).unwrap();
        assert!(unpack(&m, src.path(), |_| unreachable!()).is_err());
    }
}
