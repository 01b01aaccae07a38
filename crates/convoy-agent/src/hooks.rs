//! Running the package's hooks: `sh -c CMD` in the release directory, in a
//! process group of its own, with a timeout, output captured (the tail is
//! kept for reports).
//!
//! A hook is over when its shell has exited and every process it started
//! has closed the hook's output. A hook that times out is ended with its
//! whole process group (TERM, then KILL), so nothing it started keeps a
//! port after a rollback. A hook whose shell exits while a process it left
//! in the background still holds the output (a daemon started without
//! redirecting it) fails within [`HELD_OUTPUT_GRACE`], saying so, rather
//! than hanging until the timeout; that process is ended with the group.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::time::Instant;

/// Most hook output kept for a report.
const OUTPUT_TAIL: usize = 8 * 1024;

/// How long the output may stay open after the hook's shell has exited.
pub const HELD_OUTPUT_GRACE: Duration = Duration::from_secs(3);

/// How long a process group has between TERM and KILL.
const TERM_GRACE: Duration = Duration::from_secs(2);

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
    let deadline = Instant::now() + timeout;
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
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match c.spawn() {
        Ok(c) => c,
        Err(e) => return HookRun { ok: false, output: format!("{name} hook could not start: {e}") },
    };
    let group = Group(child.id().and_then(|id| rustix::process::Pid::from_raw(id as i32)));
    let output = Arc::new(Mutex::new(Vec::new()));
    let readers = [
        child.stdout.take().map(|o| tokio::spawn(collect(o, output.clone()))),
        child.stderr.take().map(|e| tokio::spawn(collect(e, output.clone()))),
    ];
    let text = |extra: String| {
        let mut t = String::from_utf8_lossy(&output.lock().expect("hook output lock")).into_owned();
        if !extra.is_empty() {
            if !t.is_empty() && !t.ends_with('\n') {
                t.push('\n');
            }
            t.push_str(&extra);
        }
        tail(&t)
    };
    let status = match tokio::time::timeout_at(deadline, child.wait()).await {
        Err(_) => {
            group.end(&mut child).await;
            let msg = format!(
                "{name} hook timed out after {}s; its process group was ended (hooks.timeout_secs sets the limit)",
                timeout.as_secs()
            );
            return HookRun { ok: false, output: text(msg) };
        }
        Ok(Err(e)) => {
            group.end(&mut child).await;
            return HookRun { ok: false, output: text(format!("{name} hook failed to run: {e}")) };
        }
        Ok(Ok(status)) => status,
    };
    let closed = async {
        for r in readers.into_iter().flatten() {
            let _ = r.await;
        }
    };
    let grace = HELD_OUTPUT_GRACE.min(deadline.saturating_duration_since(Instant::now()));
    if tokio::time::timeout(grace, closed).await.is_err() {
        group.end(&mut child).await;
        let msg = format!(
            "{name} hook exited ({status}) but a process it started still held the hook's output {}s later, \
             so it was ended with the hook's process group: start daemons with their output redirected \
             (`cmd >log 2>&1 &`, or `setsid cmd >/dev/null 2>&1 &`) or through a service manager (systemctl start)",
            grace.as_secs()
        );
        return HookRun { ok: false, output: text(msg) };
    }
    let ok = status.success();
    HookRun { ok, output: text(if ok { String::new() } else { format!("{name} hook exited with {status}") }) }
}

/// Appends what `r` gives to `out`, keeping at most the last
/// [`OUTPUT_TAIL`] bytes (and a little slack, so trimming is rare).
async fn collect(mut r: impl AsyncRead + Unpin, out: Arc<Mutex<Vec<u8>>>) {
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = r.read(&mut buf).await {
        let mut o = out.lock().expect("hook output lock");
        o.extend_from_slice(&buf[..n]);
        if o.len() > 2 * OUTPUT_TAIL {
            let cut = o.len() - OUTPUT_TAIL;
            o.drain(..cut);
        }
    }
}

/// A hook's process group (its id is the shell's pid).
struct Group(Option<rustix::process::Pid>);

impl Group {
    /// TERM to every process of the group, then KILL to what is left
    /// after [`TERM_GRACE`].
    async fn end(&self, leader: &mut tokio::process::Child) {
        use rustix::process::Signal;
        use rustix::process::{kill_process_group, test_kill_process_group};
        let Some(pid) = self.0 else { return };
        if kill_process_group(pid, Signal::TERM).is_err() {
            return; // no process of the group is left
        }
        let until = Instant::now() + TERM_GRACE;
        while Instant::now() < until && test_kill_process_group(pid).is_ok() {
            let _ = leader.try_wait(); // reaps the shell, which would linger as a zombie of the group
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = kill_process_group(pid, Signal::KILL);
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
    use std::path::Path;
    use std::time::{Duration, Instant};

    use super::{run, HookEnv};

    fn env(root: &Path) -> HookEnv<'_> {
        HookEnv { root, app: "web", version: "1.0", previous: None }
    }

    /// Whether the process whose pid is in `file` still runs (a zombie
    /// does not count).
    fn alive(file: &Path) -> bool {
        let pid = std::fs::read_to_string(file).unwrap();
        match std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())) {
            Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
            Err(_) => false,
        }
    }

    fn wait_dead(file: &Path) {
        let until = Instant::now() + Duration::from_secs(10);
        while alive(file) {
            assert!(Instant::now() < until, "the hook's background process still runs");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[tokio::test]
    async fn a_hook_that_times_out_is_ended_with_everything_it_started() {
        let d = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let r = run(
            "start",
            "sleep 60 >/dev/null 2>&1 & echo $! > bg.pid; echo starting; sleep 60",
            d.path(),
            &env(d.path()),
            Duration::from_secs(1),
        )
        .await;
        assert!(!r.ok);
        assert!(r.output.contains("starting") && r.output.contains("timed out after 1s"), "{}", r.output);
        assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
        wait_dead(&d.path().join("bg.pid"));
    }

    #[tokio::test]
    async fn a_daemon_left_holding_the_output_fails_the_hook_at_once_and_is_ended() {
        let d = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let r = run(
            "start",
            "sleep 60 & echo $! > bg.pid; echo started",
            d.path(),
            &env(d.path()),
            Duration::from_secs(300),
        )
        .await;
        assert!(!r.ok);
        assert!(r.output.contains("started") && r.output.contains("still held the hook's output"), "{}", r.output);
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        wait_dead(&d.path().join("bg.pid"));
    }

    #[tokio::test]
    async fn a_daemon_started_with_its_output_redirected_keeps_running() {
        let d = tempfile::tempdir().unwrap();
        let r = run(
            "start",
            "sleep 30 >/dev/null 2>&1 & echo $! > bg.pid; echo up",
            d.path(),
            &env(d.path()),
            Duration::from_secs(30),
        )
        .await;
        assert!(r.ok, "{}", r.output);
        assert_eq!(r.output.trim(), "up");
        let pid_file = d.path().join("bg.pid");
        assert!(alive(&pid_file));
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        std::process::Command::new("kill").arg(pid.trim()).status().unwrap();
    }

    #[tokio::test]
    async fn a_failing_hook_reports_its_output_and_exit_status() {
        let d = tempfile::tempdir().unwrap();
        let r =
            run("migrate", "echo out; echo err >&2; exit 3", d.path(), &env(d.path()), Duration::from_secs(30)).await;
        assert!(!r.ok);
        assert!(
            r.output.contains("out") && r.output.contains("err") && r.output.contains("exit status: 3"),
            "{}",
            r.output
        );
    }

    #[test]
    fn metrics_lines() {
        let m = super::metrics_of("ok\nlatency_ms=12\nbad key=1\nversion=2.0\n=x");
        assert_eq!(m, vec![("latency_ms".into(), "12".into()), ("version".into(), "2.0".into())]);
    }
}
