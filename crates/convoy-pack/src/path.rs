use std::fmt;

/// A path inside a release: relative, `/`-separated, with no empty, `.` or
/// `..` component. It cannot name anything outside the release directory.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("path {path:?} is not allowed in a release: {why}")]
pub struct PathError {
    pub path: String,
    pub why: &'static str,
}

impl RelPath {
    pub fn parse(s: &str) -> Result<Self, PathError> {
        let err = |why| Err(PathError { path: s.chars().take(200).collect(), why });
        if s.is_empty() {
            return err("empty path");
        }
        if s.len() > 4096 {
            return err("longer than 4096 bytes");
        }
        if s.starts_with('/') {
            return err("absolute path");
        }
        if s.contains('\0') {
            return err("contains NUL");
        }
        for c in s.split('/') {
            match c {
                "" => return err("empty component"),
                "." | ".." => return err("'.' or '..' component"),
                _ if c.len() > 255 => return err("component longer than 255 bytes"),
                _ => {}
            }
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The parent path, `None` at the top level.
    pub fn parent(&self) -> Option<RelPath> {
        self.0.rsplit_once('/').map(|(p, _)| RelPath(p.to_owned()))
    }
    /// Checks the text of a symlink target alone: relative, and never
    /// climbing above the release root if no component were a link. Links
    /// reached through other links are checked by [`crate::Manifest::validate`].
    pub fn check_link_target(&self, target: &str) -> Result<(), PathError> {
        let err = |why| Err(PathError { path: format!("{} -> {}", self.0, target), why });
        if target.is_empty() || target.starts_with('/') {
            return err("symlink target is absolute or empty");
        }
        if target.contains('\0') || target.len() > 4096 {
            return err("symlink target is malformed");
        }
        let mut depth: i64 = self.0.matches('/').count() as i64;
        for c in target.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    depth -= 1;
                    if depth < 0 {
                        return err("symlink points outside the release");
                    }
                }
                _ => depth += 1,
            }
        }
        Ok(())
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}
impl serde::Serialize for RelPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}
impl<'de> serde::Deserialize<'de> for RelPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        for bad in ["", "/etc/x", "../x", "a/../../x", "a//b", "./a", "a/.", "a\0b"] {
            assert!(RelPath::parse(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "a/b.txt", "..a", "a..", ".hidden/x"] {
            assert!(RelPath::parse(good).is_ok(), "{good:?}");
        }
        let p = RelPath::parse("a/b/link").unwrap();
        assert!(p.check_link_target("../c").is_ok());
        assert!(p.check_link_target("../../c").is_ok());
        assert!(p.check_link_target("../../../c").is_err());
        assert!(p.check_link_target("/etc/passwd").is_err());
        assert!(RelPath::parse("top").unwrap().check_link_target("../x").is_err());
        assert!(RelPath::parse("top").unwrap().check_link_target("x/../../y").is_err());
    }

    proptest! {
        /// Any path with a `..` component, or absolute, is refused; anything
        /// accepted joins under a root and stays under it lexically.
        #[test]
        fn never_escapes(parts in proptest::collection::vec(prop_oneof![Just("..".to_string()), Just(".".to_string()), Just("".to_string()), "[a-z.]{1,4}"], 1..6), abs in any::<bool>()) {
            let s = format!("{}{}", if abs { "/" } else { "" }, parts.join("/"));
            let escaping = abs || parts.iter().any(|p| p == ".." || p == "." || p.is_empty());
            match RelPath::parse(&s) {
                Ok(p) => {
                    prop_assert!(!escaping, "accepted {:?}", s);
                    let joined = std::path::Path::new("/root").join(p.as_str());
                    prop_assert!(joined.components().all(|c| !matches!(c, std::path::Component::ParentDir)));
                    prop_assert!(joined.starts_with("/root"));
                }
                Err(_) => prop_assert!(escaping, "refused {:?}", s),
            }
        }

        #[test]
        fn link_targets_stay_inside(depth in 0usize..4, ups in 0usize..6, tail in "[a-z]{1,3}") {
            let link = RelPath::parse(&(0..=depth).map(|i| format!("d{i}")).collect::<Vec<_>>().join("/")).unwrap();
            let target = format!("{}{}", "../".repeat(ups), tail);
            prop_assert_eq!(link.check_link_target(&target).is_ok(), ups <= depth);
        }
    }
}
