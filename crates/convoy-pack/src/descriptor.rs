//! `convoy.toml`, the package descriptor in the root of a packed directory.
//!
//! ```toml
//! config_files = ["config/app.env"]   # owned by the machine, kept across upgrades
//! [hooks]                              # shell commands, run in the release directory
//! stop = "sh hooks/stop.sh"
//! migrate = "sh hooks/migrate.sh"
//! start = "sh hooks/start.sh"
//! health = "sh hooks/health.sh"       # exit 0 = healthy; `key=value` lines become metrics
//! prepare = "sh hooks/prepare.sh"     # preflight: prepares the machine (run in the agent's root)
//! timeout_secs = 300                   # per hook
//! [health]
//! timeout_secs = 30                    # how long health may take to pass
//! interval_ms = 500                    # pause between health attempts
//! [requires]                           # preflight checks before anything is deployed
//! commands = ["systemctl"]             # on the PATH
//! ports = [8080]                       # free TCP ports
//! checks = ["test -w /var/log"]        # shell commands that must exit 0
//! ```

use serde::Deserialize;

use crate::RelPath;

pub const DESCRIPTOR_FILE: &str = "convoy.toml";

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Descriptor {
    #[serde(default)]
    pub config_files: Vec<String>,
    #[serde(default)]
    pub hooks: Hooks,
    #[serde(default)]
    pub health: Health,
    #[serde(default)]
    pub requires: Requires,
}

/// What a machine must offer before the release is deployed (preflight).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requires {
    #[serde(default)]
    pub commands: Vec<String>,
    #[serde(default)]
    pub ports: Vec<u16>,
    #[serde(default)]
    pub checks: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    pub stop: Option<String>,
    pub migrate: Option<String>,
    pub start: Option<String>,
    pub health: Option<String>,
    pub prepare: Option<String>,
    #[serde(default = "default_hook_timeout")]
    pub timeout_secs: u64,
}

impl Default for Hooks {
    fn default() -> Self {
        Self {
            stop: None,
            migrate: None,
            start: None,
            health: None,
            prepare: None,
            timeout_secs: default_hook_timeout(),
        }
    }
}

fn default_hook_timeout() -> u64 {
    300
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    #[serde(default = "default_health_timeout")]
    pub timeout_secs: u64,
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
}

impl Default for Health {
    fn default() -> Self {
        Self { timeout_secs: default_health_timeout(), interval_ms: default_interval() }
    }
}

fn default_health_timeout() -> u64 {
    30
}
fn default_interval() -> u64 {
    500
}

#[derive(Debug, thiserror::Error)]
#[error("{DESCRIPTOR_FILE}: {0}")]
pub struct DescriptorError(pub String);

impl Descriptor {
    pub fn parse(text: &str) -> Result<Self, DescriptorError> {
        let d: Descriptor = toml::from_str(text).map_err(|e| DescriptorError(e.to_string()))?;
        for f in &d.config_files {
            RelPath::parse(f).map_err(|e| DescriptorError(format!("config_files: {e}")))?;
        }
        if d.health.timeout_secs == 0 || d.hooks.timeout_secs == 0 {
            return Err(DescriptorError("timeouts must be at least 1 second".into()));
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let d = Descriptor::parse("config_files=['c/app.env']\n[hooks]\nhealth='true'\n[health]\ntimeout_secs=5\n")
            .unwrap();
        assert_eq!(d.hooks.health.as_deref(), Some("true"));
        assert_eq!(d.health.timeout_secs, 5);
        assert_eq!(d.hooks.timeout_secs, 300);
        assert!(Descriptor::parse("[hooks]\nhealthy='x'").is_err());
        assert!(Descriptor::parse("config_files=['../etc/passwd']").is_err());
        assert_eq!(Descriptor::parse("").unwrap(), Descriptor::default());
    }
}
