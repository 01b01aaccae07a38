//! Running the package's hooks: `sh -c CMD` in the release directory, with
//! a timeout, output captured (tail kept for reports).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// Most hook output kept for a report.
const OUTPUT_TAIL: usize = 8 * 1024;

pub struct HookEnv<'a> {
    pub root: &'a Path,
    pub app: &'a str,
    pub version: &'a str,
    pub previous: Option<&'a str>,
}

pub struct HookRun {
    pub ok: bool,
    pub output: String,
}

pub async fn run(name: &str, cmd: &str, dir: &Path, env: &HookEnv<'_>, timeout: Duration) -> HookRun {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(cmd)
        // the agent's own secrets are not the package's business
        .env_remove("CONVOY_TOKEN")
        .env_remove("CONVOY_CONFIG")
        .current_dir(dir)
        .env("CONVOY_HOOK", name)
        .env("CONVOY_ROOT", env.root)
        .env("CONVOY_APP", env.app)
        .env("CONVOY_VERSION", env.version)
        .env("CONVOY_RELEASE_DIR", dir)
        .env("CONVOY_PREVIOUS_VERSION", env.previous.unwrap_or(""))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = match c.spawn() {
        Ok(c) => c,
        Err(e) => return HookRun { ok: false, output: format!("{name} hook could not start: {e}") },
    };
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => HookRun { ok: false, output: format!("{name} hook timed out after {}s", timeout.as_secs()) },
        Ok(Err(e)) => HookRun { ok: false, output: format!("{name} hook failed to run: {e}") },
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            if !out.status.success() {
                text.push_str(&format!("\n{name} hook exited with {}", out.status));
            }
            HookRun { ok: out.status.success(), output: tail(&text) }
        }
    }
}

pub fn tail(s: &str) -> String {
    if s.len() <= OUTPUT_TAIL {
        return s.to_owned();
    }
    let mut start = s.len() - OUTPUT_TAIL;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_owned()
}

/// `key=value` lines of a health hook's output, as metrics.
pub fn metrics_of(output: &str) -> Vec<(String, String)> {
    output
        .lines()
        .filter_map(|l| l.trim().split_once('='))
        .filter(|(k, v)| {
            !k.is_empty()
                && k.len() <= 64
                && v.len() <= 256
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        })
        .take(50)
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn metrics_lines() {
        let m = super::metrics_of("ok\nlatency_ms=12\nbad key=1\nversion=2.0\n=x");
        assert_eq!(m, vec![("latency_ms".into(), "12".into()), ("version".into(), "2.0".into())]);
    }
}
