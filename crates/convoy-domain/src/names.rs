//! Validated names used at every edge: apps, versions, labels, selectors.

use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("invalid app name {0:?}: use 1-64 chars of a-z, 0-9, '.', '_', '-', starting with a letter or digit")]
    App(String),
    #[error(
        "invalid version {0:?}: use 1-64 chars of A-Z, a-z, 0-9, '.', '_', '+', '-', starting with a letter or digit"
    )]
    Version(String),
    #[error("invalid label {0:?}: expected key=value with keys and values of a-z, A-Z, 0-9, '.', '_', '-', '/'")]
    Label(String),
    #[error("invalid release reference {0:?}: expected APP@VERSION")]
    Reference(String),
}

fn valid(s: &str, extra: &[char], upper: bool) -> bool {
    let ok_char = |c: char| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || (upper && c.is_ascii_uppercase()) || extra.contains(&c)
    };
    !s.is_empty()
        && s.len() <= 64
        && s.chars().all(ok_char)
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
}

/// An application name such as `shop-web`.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(try_from = "String", into = "String")]
pub struct AppName(String);

impl AppName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if valid(s, &['.', '_', '-'], false) {
            Ok(Self(s.to_owned()))
        } else {
            Err(NameError::App(s.to_owned()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A release version such as `2.4.1` or `2026.11.22+build7`.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(try_from = "String", into = "String")]
pub struct Version(String);

impl Version {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if valid(s, &['.', '_', '-', '+'], true) {
            Ok(Self(s.to_owned()))
        } else {
            Err(NameError::Version(s.to_owned()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_newtype {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::parse(&s)
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
string_newtype!(AppName);
string_newtype!(Version);

/// Parses `APP@VERSION`.
pub fn parse_reference(s: &str) -> Result<(AppName, Version), NameError> {
    let (a, v) = s.split_once('@').ok_or_else(|| NameError::Reference(s.to_owned()))?;
    Ok((AppName::parse(a)?, Version::parse(v)?))
}

/// Target labels: `site=sh,role=web`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Labels(pub BTreeMap<String, String>);

fn valid_label_part(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
}

impl Labels {
    /// Parses a comma-separated `k=v` list; an empty string is no labels.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let mut map = BTreeMap::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| NameError::Label(part.to_owned()))?;
            if !valid_label_part(k) || !valid_label_part(v) {
                return Err(NameError::Label(part.to_owned()));
            }
            map.insert(k.to_owned(), v.to_owned());
        }
        Ok(Self(map))
    }

    /// Checks every key and value, for labels that arrived as a map.
    pub fn validate(&self) -> Result<(), NameError> {
        for (k, v) in &self.0 {
            if !valid_label_part(k) || !valid_label_part(v) {
                return Err(NameError::Label(format!("{k}={v}")));
            }
        }
        Ok(())
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        f.write_str(&parts.join(","))
    }
}

/// A label selector: every `k=v` must be present on the target. Empty
/// selects all targets.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Selector(pub Labels);

impl Selector {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        Labels::parse(s).map(Self)
    }
    pub fn matches(&self, labels: &Labels) -> bool {
        self.0 .0.iter().all(|(k, v)| labels.0.get(k) == Some(v))
    }
}

/// `1 target`, `3 targets`.
pub fn targets(n: impl Into<u64>) -> String {
    match n.into() {
        1 => "1 target".to_owned(),
        n => format!("{n} targets"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(AppName::parse("shop-web").is_ok());
        assert!(AppName::parse("Shop").is_err());
        assert!(AppName::parse("../x").is_err());
        assert!(AppName::parse("").is_err());
        assert!(Version::parse("2.4.1+b7").is_ok());
        assert!(Version::parse("1/2").is_err());
        assert!(Version::parse(".1").is_err());
        assert_eq!(parse_reference("a@1").unwrap().1.as_str(), "1");
        assert!(parse_reference("a").is_err());
    }

    #[test]
    fn selectors() {
        let l = Labels::parse("site=sh, role=web").unwrap();
        assert!(Selector::parse("site=sh").unwrap().matches(&l));
        assert!(Selector::parse("").unwrap().matches(&l));
        assert!(!Selector::parse("site=bj").unwrap().matches(&l));
        assert!(Labels::parse("novalue").is_err());
        assert!(Labels::parse("a=b c").is_err());
        assert_eq!(l.to_string(), "role=web,site=sh");
    }
}
