//! Resolving a release's symlinks the way the kernel will once it is
//! unpacked, so that no chain of links can lead outside the release.
//!
//! Invariant: a release is accepted only if following any of its symlinks,
//! through the release's own links, never steps above the release root, not
//! even for one component, and ends within [`MAX_HOPS`] links.

use std::collections::HashMap;

use crate::{Entry, PathError};

/// Links the kernel follows in one path lookup before it gives up (ELOOP).
pub const MAX_HOPS: u32 = 40;

const ESCAPES: &str = "symlink leads outside the release";
const LOOPS: &str = "symlink loop, or a chain of more than 40 symlinks";

/// A place inside the release during a walk: an entry (`None` is the root)
/// and how many names below it were not in the release. Names that are
/// missing, or below a file, are walked as if they were plain directories,
/// so a link that is dangling now cannot escape once they are created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pos {
    pub node: Option<usize>,
    pub missing: usize,
}

#[derive(Clone, Copy)]
enum State {
    Unvisited,
    Active,
    Done(Pos, u32),
}

/// The tree of a manifest whose entries are sorted and whose parents are
/// directories, with each symlink's resolution worked out at most once.
pub(crate) struct Links<'a> {
    entries: &'a [Entry],
    parent: Vec<Option<usize>>,
    child: HashMap<(Option<usize>, &'a str), usize>,
    state: Vec<State>,
}

impl<'a> Links<'a> {
    /// Entries must already have passed the manifest's order and parent rules.
    pub fn new(entries: &'a [Entry]) -> Self {
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(entries.len());
        let mut parent = Vec::with_capacity(entries.len());
        let mut child = HashMap::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            let path = e.path().as_str();
            let (p, name) = match path.rsplit_once('/') {
                Some((dir, name)) => (index.get(dir).copied(), name),
                None => (None, path),
            };
            index.insert(path, i);
            parent.push(p);
            child.insert((p, name), i);
        }
        Self { entries, parent, child, state: vec![State::Unvisited; entries.len()] }
    }

    /// Where the symlink at entry `i` leads, following the release's links
    /// as the kernel does: `..` applies to the directory reached so far, a
    /// name that is a link is replaced by that link's resolution. Refused if
    /// any step goes above the root, or if more than [`MAX_HOPS`] links are
    /// followed (which every loop does).
    pub fn resolve_link(&mut self, i: usize) -> Result<Pos, PathError> {
        self.resolve(i, 0).map(|(pos, _)| pos)
    }

    fn resolve(&mut self, i: usize, depth: u32) -> Result<(Pos, u32), PathError> {
        let entries = self.entries;
        let Entry::Symlink { path, target } = &entries[i] else {
            return Ok((Pos { node: Some(i), missing: 0 }, 0));
        };
        let refuse = |why| PathError { path: format!("{path} -> {target}"), why };
        match self.state[i] {
            State::Done(pos, hops) => return Ok((pos, hops)),
            State::Active => return Err(refuse(LOOPS)),
            State::Unvisited if depth >= MAX_HOPS => return Err(refuse(LOOPS)),
            State::Unvisited => {}
        }
        self.state[i] = State::Active;
        let walked = self.walk(self.parent[i], target, depth, &refuse);
        self.state[i] = match walked {
            Ok((pos, hops)) => State::Done(pos, hops),
            Err(_) => State::Unvisited,
        };
        walked
    }

    /// Walks a link's `target` from its directory `dir`. The link itself
    /// counts as one hop, plus the hops of every link followed on the way.
    fn walk(
        &mut self,
        dir: Option<usize>,
        target: &'a str,
        depth: u32,
        refuse: &dyn Fn(&'static str) -> PathError,
    ) -> Result<(Pos, u32), PathError> {
        if target.starts_with('/') {
            return Err(refuse(ESCAPES));
        }
        let mut at = Pos { node: dir, missing: 0 };
        let mut hops = 1;
        for c in target.split('/') {
            match c {
                "" | "." => {}
                ".." if at.missing > 0 => at.missing -= 1,
                ".." => match at.node {
                    Some(n) => at.node = self.parent[n],
                    None => return Err(refuse(ESCAPES)),
                },
                name => match self.child.get(&(at.node, name)).copied().filter(|_| at.missing == 0) {
                    Some(n) => {
                        let (pos, h) = self.resolve(n, depth + 1)?;
                        hops += h;
                        if hops > MAX_HOPS {
                            return Err(refuse(LOOPS));
                        }
                        at = pos;
                    }
                    None => at.missing += 1,
                },
            }
        }
        Ok((at, hops))
    }
}

/// Checks every symlink of a manifest whose entries are sorted and whose
/// parents are directories; see the module's invariant.
pub(crate) fn check_links(entries: &[Entry]) -> Result<(), PathError> {
    let mut links = Links::new(entries);
    for (i, e) in entries.iter().enumerate() {
        if matches!(e, Entry::Symlink { .. }) {
            links.resolve_link(i)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;
    use std::path::{Path, PathBuf};

    use proptest::prelude::*;

    use super::*;
    use crate::{unpack, Manifest, RelPath};

    fn dir(p: &str) -> Entry {
        Entry::Dir { path: RelPath::parse(p).unwrap(), mode: 0o755 }
    }
    fn file(p: &str) -> Entry {
        Entry::File { path: RelPath::parse(p).unwrap(), mode: 0o644, size: 0, chunks: vec![] }
    }
    fn link(p: &str, target: &str) -> Entry {
        Entry::Symlink { path: RelPath::parse(p).unwrap(), target: target.into() }
    }
    fn why(entries: Vec<Entry>) -> Option<&'static str> {
        match Manifest::new(entries).validate() {
            Ok(()) => None,
            Err(crate::ManifestError::Path(e)) => Some(e.why),
            Err(e) => panic!("not a link error: {e}"),
        }
    }

    /// Writes entries as they are, with no check at all: what an unchecked
    /// unpacker would leave on disk.
    fn materialize(entries: &[Entry], at: &Path) {
        std::fs::create_dir_all(at).unwrap();
        for e in entries {
            let full = at.join(e.path().as_str());
            match e {
                Entry::Dir { .. } => std::fs::create_dir(&full).unwrap(),
                Entry::File { .. } => std::fs::write(&full, b"").unwrap(),
                Entry::Symlink { target, .. } => symlink(target, &full).unwrap(),
            }
        }
    }

    fn path_of(entries: &[Entry], pos: Pos) -> String {
        pos.node.map(|n| entries[n].path().as_str().to_owned()).unwrap_or_default()
    }

    #[test]
    fn chained_links_cannot_climb_out() {
        // each link alone looks harmless; together they reach /etc/passwd
        let attack = vec![dir("a"), link("a/b", ".."), link("x", "a/b/a/b/../../../etc/passwd")];
        assert_eq!(why(attack), Some(ESCAPES));
        // above the root for one step is outside, even if it would come back
        assert_eq!(why(vec![dir("a"), link("a/b", ".."), link("x", "a/b/../a")]), Some(ESCAPES));
        // a missing name is walked as a directory that may appear later
        assert_eq!(why(vec![dir("a"), link("a/b", ".."), link("x", "a/b/nodir/../..")]), Some(ESCAPES));
        assert_eq!(why(vec![dir("a"), link("a/b", ".."), file("f"), link("x", "a/b/f/../..")]), Some(ESCAPES));
        assert!(Manifest::from_slice(
            br#"{"format":1,"chunking":[16384,65536,262144],"entries":[{"type":"dir","path":"a","mode":493},{"type":"symlink","path":"a/b","target":".."},{"type":"symlink","path":"x","target":"a/b/a/b/../../../etc/passwd"}]}"#
        )
        .is_err());
    }

    #[test]
    fn loops_are_refused() {
        assert_eq!(why(vec![link("a", "b"), link("b", "a")]), Some(LOOPS));
        assert_eq!(why(vec![link("a", "a/x")]), Some(LOOPS));
        assert_eq!(why(vec![link("s", "s")]), Some(LOOPS));
        assert_eq!(why(vec![dir("d"), link("d/l", "../d/l/x")]), Some(LOOPS));
        // a link to its own directory is not a loop until it is walked on
        assert_eq!(why(vec![link("a", "."), link("b", "a/a/a/a")]), None);
    }

    #[test]
    fn legitimate_chains_are_accepted_and_resolve_where_the_kernel_does() {
        let entries = vec![
            dir("d"),
            dir("lib64"),
            file("lib64/x"),
            link("lib", "lib64"),
            link("cur", "d/../lib/x"),
            link("d/up", ".."),
            link("d/x", "up/lib/x"),
            link("dangling", "d/nothing/../../nowhere"),
        ];
        let m = Manifest::new(entries);
        m.validate().unwrap();
        let t = tempfile::tempdir().unwrap();
        let r = t.path().join("r");
        unpack(&m, &r, |_| unreachable!()).unwrap();
        let mut links = Links::new(&m.entries);
        for (i, e) in m.entries.iter().enumerate() {
            let Entry::Symlink { path, .. } = e else { continue };
            let pos = links.resolve_link(i).unwrap();
            match std::fs::canonicalize(r.join(path.as_str())) {
                Ok(real) => assert_eq!(real, r.canonicalize().unwrap().join(path_of(&m.entries, pos)), "{path}"),
                Err(_) => assert_eq!(path.as_str(), "dangling"),
            }
        }
    }

    #[test]
    fn at_most_forty_links_are_followed_like_the_kernel() {
        let chain = |n: usize| {
            let mut e = vec![file("f"), link("l00", "f")];
            e.extend((1..n).map(|i| link(&format!("l{i:02}"), &format!("l{:02}", i - 1))));
            e
        };
        assert_eq!(why(chain(40)), None);
        assert_eq!(why(chain(41)), Some(LOOPS));
        let t = tempfile::tempdir().unwrap();
        materialize(&Manifest::new(chain(41)).entries, t.path());
        assert!(std::fs::canonicalize(t.path().join("l39")).is_ok());
        assert!(std::fs::canonicalize(t.path().join("l40")).is_err());
    }

    const NAMES: [&str; 2] = ["a", "b"];

    #[derive(Debug, Clone)]
    enum Kind {
        Dir,
        File,
        Link(Vec<usize>),
    }

    /// Small trees: each node goes under an earlier directory; link targets
    /// are made of `..`, `.` and the names used in the tree.
    fn tree() -> impl Strategy<Value = Vec<Entry>> {
        let kind = prop_oneof![
            2 => Just(Kind::Dir),
            1 => Just(Kind::File),
            // short ones (`.`, `..`) make shortcuts, long ones walk through them
            1 => proptest::collection::vec(0usize..4, 1..2).prop_map(Kind::Link),
            2 => proptest::collection::vec(0usize..8, 2..7).prop_map(Kind::Link),
        ];
        proptest::collection::vec((any::<prop::sample::Index>(), 0..NAMES.len(), kind), 1..14).prop_map(|nodes| {
            let mut dirs = vec![String::new()];
            let mut entries: Vec<Entry> = Vec::new();
            for (parent, name, kind) in nodes {
                let parent = &dirs[parent.index(dirs.len())];
                let path = if parent.is_empty() { NAMES[name].to_owned() } else { format!("{parent}/{}", NAMES[name]) };
                if entries.iter().any(|e| e.path().as_str() == path) {
                    continue;
                }
                entries.push(match kind {
                    Kind::Dir => {
                        dirs.push(path.clone());
                        dir(&path)
                    }
                    Kind::File => file(&path),
                    Kind::Link(parts) => {
                        let parts: Vec<&str> =
                            parts.iter().map(|&p| [".", "..", "..", "..", "a", "a", "b", "b"][p]).collect();
                        link(&path, &parts.join("/"))
                    }
                });
            }
            Manifest::new(entries).entries
        })
    }

    /// The release at `TMP/zz/zz/zz/zz`, with a copy of the tree in each
    /// `zz` above it, so a walk that leaves the release usually finds
    /// something real outside and the kernel says where it ended.
    fn nest(t: &Path, entries: &[Entry], release: impl FnOnce(&Path)) -> PathBuf {
        let mut at = t.to_owned();
        for _ in 0..3 {
            at = at.join("zz");
            materialize(entries, &at);
        }
        let r = at.join("zz");
        release(&r);
        r.canonicalize().unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        /// The kernel is the oracle. When the manifest is accepted, every
        /// link of the unpacked tree that resolves at all resolves inside it;
        /// when any link of the tree, written out unchecked, resolves outside,
        /// the manifest is refused. The model agrees with the kernel on where
        /// each link leads, and on loops.
        #[test]
        fn links_resolve_inside_as_the_kernel_finds(entries in tree()) {
            let m = Manifest::new(entries.clone());
            prop_assert_eq!(&m.entries, &entries);
            let accepted = m.validate();
            let t = tempfile::tempdir().unwrap();
            let r = nest(t.path(), &entries, |r| match &accepted {
                Ok(()) => unpack(&m, r, |_| unreachable!()).unwrap(),
                Err(_) => materialize(&entries, r),
            });
            let mut links = Links::new(&entries);
            for (i, e) in entries.iter().enumerate() {
                let Entry::Symlink { path, .. } = e else { continue };
                let real = std::fs::canonicalize(r.join(path.as_str()));
                let model = links.resolve_link(i);
                if let Ok(real) = &real {
                    if !real.starts_with(&r) {
                        prop_assert!(accepted.is_err(), "accepted, but {} leads to {}", path, real.display());
                        prop_assert!(model.is_err(), "{} leads to {}", path, real.display());
                    }
                }
                match (&model, &real) {
                    (Ok(pos), Ok(real)) if real.starts_with(&r) => {
                        prop_assert_eq!(pos.missing, 0);
                        prop_assert_eq!(real, &r.join(path_of(&entries, *pos)));
                    }
                    (Err(e), _) if e.why == LOOPS => prop_assert!(real.is_err(), "{} is no loop", path),
                    _ => {}
                }
            }
        }
    }
}
