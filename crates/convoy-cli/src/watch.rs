//! `convoy watch` and `convoy status`: progress bars while a deployment
//! runs, then one line per target.

use std::io::IsTerminal;
use std::time::Duration;

use convoy_client::Client;
use convoy_domain::DeploymentState;
use convoy_wire::{DeploymentDetail, DetailQuery, InstructionInfo};

use crate::output::{self, line};

/// One page of a deployment's detail, as `q` asks.
pub async fn page(client: &Client, id: &str, q: &DetailQuery) -> anyhow::Result<DeploymentDetail> {
    let mut query: Vec<String> = Vec::new();
    let mut add = |k: &str, v: String| query.push(format!("{k}={}", encode(&v)));
    if let Some(v) = &q.state {
        add("state", v.clone());
    }
    if let Some(v) = q.wave {
        add("wave", v.to_string());
    }
    if let Some(v) = &q.label {
        add("label", v.clone());
    }
    if let Some(v) = q.limit {
        add("limit", v.to_string());
    }
    if let Some(v) = &q.after {
        add("after", v.clone());
    }
    if let Some(v) = q.late {
        add("late", v.to_string());
    }
    let sep = if query.is_empty() { "" } else { "?" };
    client.get_json(&format!("/deployments/{}{sep}{}", encode(id), query.join("&")), Duration::from_secs(30)).await
}

/// Percent-encodes all but RFC 3986's unreserved characters.
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Rows shown without `--all` when a deployment has more targets.
pub const SHOWN: u32 = 50;
/// States that count as failing (shown first).
const FAILING: &str = "failed,rolled_back,canceled";

/// What `status` shows: the summary with every target of a small
/// deployment; of a bigger one (over [`SHOWN`] targets) the failing ones
/// first, up to [`SHOWN`]. `all`: every target, page by page, and the
/// targets the deployment left out.
pub async fn view(client: &Client, id: &str, all: bool) -> anyhow::Result<DeploymentDetail> {
    if all {
        let q = DetailQuery { limit: Some(convoy_wire::DETAIL_MAX_LIMIT), late: Some(true), ..Default::default() };
        let mut d = page(client, id, &q).await?;
        let mut after = d.next.take();
        while let Some(a) = after {
            let q = DetailQuery { limit: Some(convoy_wire::DETAIL_MAX_LIMIT), after: Some(a), ..Default::default() };
            let more = page(client, id, &q).await?;
            d.instructions.extend(more.instructions);
            // a later page repeats the deployment's own events
            d.events.extend(more.events.into_iter().filter(|e| e.instruction_id.is_some()));
            if let (Some(p), Some(m)) = (&mut d.plan, more.plan) {
                p.targets.extend(m.targets);
            }
            after = more.next;
        }
        d.events.sort_by_key(|e| e.at);
        return Ok(d);
    }
    // one request for a big deployment: the summary and its failing targets
    let failing =
        page(client, id, &DetailQuery { limit: Some(SHOWN), state: Some(FAILING.into()), ..Default::default() })
            .await?;
    if failing.deployment.counts.total > SHOWN {
        return Ok(failing);
    }
    page(client, id, &DetailQuery { limit: Some(SHOWN), ..Default::default() }).await
}

/// The whole deployment's detail as one value (every page).
pub async fn detail(client: &Client, id: &str) -> anyhow::Result<DeploymentDetail> {
    view(client, id, true).await
}

pub fn settled(d: &DeploymentDetail) -> bool {
    DeploymentState::parse(&d.deployment.state).is_some_and(|s| s.is_settled())
}

fn fill(n: u32, total: u32) -> String {
    const W: u32 = 24;
    let filled = (n * W).checked_div(total).unwrap_or(0).min(W);
    format!("[{}{}]", "#".repeat(filled as usize), "-".repeat((W - filled) as usize))
}

fn bar(n: u32, total: u32) -> String {
    format!("{} {n}/{total}", fill(n, total))
}

fn progress(d: &DeploymentDetail) -> Vec<String> {
    let c = &d.deployment.counts;
    let extra = if c.failed + c.rolled_back > 0 {
        format!("   failed {}  rolled back {}", c.failed, c.rolled_back)
    } else {
        String::new()
    };
    let mut lines = vec![
        format!("  staged {}   {}", bar(c.staged, c.total), d.deployment.state),
        format!("  live   {}{extra}", bar(c.live, c.total)),
    ];
    // bytes still on their way to targets that are fetching
    let (done, total) = d
        .instructions
        .iter()
        .filter_map(|i| i.progress)
        .fold((0u64, 0u64), |(d, t), p| (d + p.done_bytes, t + p.total_bytes));
    if let Some(pct) = (done * 100).checked_div(total).map(|p| p as u32) {
        lines.push(format!("  bytes  {} {pct}% of {}", fill(pct, 100), output::bytes(total)));
    }
    lines
}

/// Polls until the deployment settles, drawing progress. Returns the final view.
pub async fn watch(client: &Client, id: &str, quiet: bool) -> anyhow::Result<DeploymentDetail> {
    let tty = std::io::stdout().is_terminal() && !quiet;
    let mut last: Option<Vec<String>> = None;
    // the counts, and the targets still fetching (their bytes)
    let fetching = DetailQuery {
        state: Some("created,sent,received".into()),
        limit: Some(convoy_wire::DETAIL_MAX_LIMIT),
        ..Default::default()
    };
    loop {
        let d = page(client, id, &fetching).await?;
        let p = progress(&d);
        if !quiet && last.as_ref() != Some(&p) {
            if let (true, Some(prev)) = (tty, &last) {
                // move back over the previous drawing and clear what it left
                print!("\x1b[{}A\x1b[J", prev.len());
            }
            for l in &p {
                line(if tty { format!("\x1b[2K{l}") } else { l.clone() });
            }
            last = Some(p);
        }
        if settled(&d) {
            return view(client, id, false).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn metric_summary(i: &InstructionInfo) -> String {
    let mut parts = Vec::new();
    if let Some(b) = i.metrics.get("bytes_fetched").and_then(|b| b.parse::<u64>().ok()) {
        parts.push(format!("fetched={}", output::bytes(b).replace(' ', "")));
    }
    for k in ["switch_ms", "golive_lag_ms", "health_ms"] {
        if let Some(v) = i.metrics.get(k) {
            parts.push(format!("{k}={v}"));
        }
    }
    // what the health hook reported: every metric convoy does not set itself
    const OWN: [&str; 9] = [
        "bytes_fetched",
        "switch_ms",
        "golive_lag_ms",
        "health_ms",
        "stage_ms",
        "activate_ms",
        "chunks_total",
        "chunks_cached",
        "chunks_fetched",
    ];
    parts.extend(i.metrics.iter().filter(|(k, _)| !OWN.contains(&k.as_str())).map(|(k, v)| format!("{k}={v}")));
    parts.join(" ")
}

/// The per-target summary printed by `status` and at the end of `watch`.
/// One line about an upgrade: counts, bytes, config files, migrate hook.
pub fn changes_line(c: &convoy_wire::Changes) -> String {
    let mut s = format!(
        "from {}: {} added, {} removed, {} changed ({} of {})",
        c.from_version,
        c.added.len(),
        c.removed.len(),
        c.changed.len(),
        output::bytes(c.changed_bytes),
        output::bytes(c.total_size)
    );
    if !c.config_changed.is_empty() {
        s.push_str(&format!("; config defaults changed: {} (machines keep theirs)", c.config_changed.join(", ")));
    }
    if let Some(m) = &c.migrate {
        s.push_str(&format!("; migrate hook: {m}"));
    }
    s
}

pub fn print_summary(d: &DeploymentDetail) {
    line(summary(d, chrono::Utc::now().timestamp_millis()));
}

/// [`print_summary`]'s text, as of `now`.
pub fn summary(d: &DeploymentDetail, now: i64) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut line = |s: String| out.push(s);
    let dep = &d.deployment;
    line(format!("deployment {}  {}@{}  {}", dep.id, dep.app, dep.version, dep.state));
    line(format!("  digest   {}", dep.digest));
    if let Some(at) = dep.go_live_at {
        line(format!("  go-live  {}", output::time(at)));
    }
    line(format!("  note     {}", dep.note));
    if let Some(env) = &dep.env {
        let reason = if dep.reason.is_empty() { String::new() } else { format!(": {}", dep.reason) };
        line(format!("  request  in {env} by {}{reason} (revision {})", dep.created_by, dep.revision));
    }
    let approvals: Vec<String> = d
        .approvals
        .iter()
        .map(|a| {
            let void = if a.current { "" } else { ", void" };
            let note = if a.note.is_empty() { String::new() } else { format!(": {}", a.note) };
            let decided = match a.decision.as_str() {
                "approve" => "approved",
                "reject" => "rejected",
                other => other,
            };
            let signed = match &a.signed_with {
                Some(k) => format!(" (signed, key {})", k.get(..12).unwrap_or(k)),
                None => String::new(),
            };
            format!("{} {decided}{signed}{void}{note}", a.approver)
        })
        .collect();
    if !approvals.is_empty() {
        line(format!("  approvals {}", approvals.join("; ")));
    }
    if let (Some(t), "awaiting_confirmation") = (dep.expires_at, dep.state.as_str()) {
        line(format!("  confirm  before {} (convoy confirm {})", output::time(t), dep.id));
    }
    if !d.checks.is_empty() {
        let n = |s: &str| d.checks.iter().filter(|c| c.state == s).count();
        line(format!("  preflight {} passed, {} failed, {} pending", n("passed"), n("failed"), n("pending")));
        for c in d.checks.iter().filter(|c| c.state == "failed") {
            let bad: Vec<String> =
                c.results.iter().filter(|(_, v)| v.starts_with("FAIL")).map(|(k, v)| format!("{k} {v}")).collect();
            line(format!("    {} ({}): {}", c.hostname, c.target_id, bad.join("; ")));
        }
    }
    if let Some(plan) = &d.plan {
        if let Some(note) = &plan.note {
            line(format!("  plan     {note}"));
        }
        for w in &plan.waves {
            let hosts: Vec<&str> =
                plan.targets.iter().filter(|(_, _, k)| *k == w.wave).map(|(_, h, _)| h.as_str()).take(8).collect();
            let more = if w.targets as usize > hosts.len() { " ..." } else { "" };
            let when = match (w.at, w.wave) {
                (Some(at), _) => format!("at {}", output::time(at)),
                (None, 1) => "when every copy matches".into(),
                (None, k) => format!("after wave {}", k - 1),
            };
            let current = if dep.wave == w.wave && !settled(d) { "  <- now" } else { "" };
            line(format!(
                "  wave {}   {} {when}, may fail {}: {}{more}{current}",
                w.wave,
                convoy_domain::targets(w.targets),
                w.budget,
                hosts.join(" ")
            ));
        }
    }
    for c in &d.changes {
        line(format!("  changes  {}", changes_line(c)));
    }
    if let Some(by) = &dep.paused_by {
        line(format!("  paused   by {by}: no new wave starts until `convoy resume {}`", dep.id));
    }
    if d.deployment.counts.total > 0 {
        let states: Vec<String> = d.states.iter().map(|(s, n)| format!("{n} {s}")).collect();
        line(format!("  targets  {}: {}", dep.counts.total, states.join(", ")));
        if d.waves.len() > 1 {
            for w in &d.waves {
                let states: Vec<String> = w.states.iter().map(|(s, n)| format!("{n} {s}")).collect();
                line(format!("    wave {}: {}", w.wave, states.join(", ")));
            }
        }
    }
    if !d.not_included.is_empty() {
        line(format!(
            "  not in this deployment (matched the selector after it was planned): {}",
            d.not_included.join(", ")
        ));
    }
    let waiting: Vec<String> = d
        .instructions
        .iter()
        .filter(|i| matches!(i.state.as_str(), "created" | "sent" | "received" | "activating" | "rolling_back"))
        .map(|i| match i.last_seen {
            // a target removed meanwhile, or one never heard from
            t if t <= 0 => format!("{} ({}, never seen)", i.hostname, i.state),
            t => format!("{} ({}, last seen {}s ago)", i.hostname, i.state, (now - t).max(0) / 1000),
        })
        .collect();
    if !waiting.is_empty() && !settled(d) {
        line(format!("  waiting  for {}", waiting.join(", ")));
    }
    if let (Some(at), "scheduled") = (dep.go_live_at, dep.state.as_str()) {
        line(format!("  go-live  in {}s", ((at - now).max(0) + 999) / 1000));
    }
    // failing targets first, then by hostname
    let mut shown: Vec<&InstructionInfo> = d.instructions.iter().collect();
    shown.sort_by_key(|i| (!FAILING.split(',').any(|f| f == i.state), &i.hostname, &i.target_id));
    let rows: Vec<Vec<String>> = shown
        .iter()
        .map(|i| {
            let digest = match &i.reported_digest {
                Some(r) if *r == dep.digest => "match".to_owned(),
                Some(r) => format!("MISMATCH {}", r.chars().take(16).collect::<String>()),
                None => "-".into(),
            };
            let mut row = vec![
                i.hostname.clone(),
                i.target_id.clone(),
                i.labels.to_string(),
                match i.progress {
                    Some(p) if p.total_bytes > 0 => format!("{} {}%", i.state, p.done_bytes * 100 / p.total_bytes),
                    _ => i.state.clone(),
                },
                digest,
                i.previous_version.clone().unwrap_or_else(|| "-".into()),
                metric_summary(i),
            ];
            if d.plan.is_some() {
                row.insert(3, i.wave.to_string());
            }
            row
        })
        .collect();
    let total = dep.counts.total as usize;
    if d.instructions.len() < total {
        let which = if d.instructions.is_empty() { "none is failing" } else { "the failing ones" };
        line(format!(
            "  shown    {} of {total} targets ({which}); `convoy status {} --all` lists every one",
            d.instructions.len(),
            dep.id
        ));
    }
    if d.instructions.is_empty() {
        return out.join("\n");
    }
    line(String::new());
    if d.plan.is_some() {
        line(output::render_table(
            &["HOST", "TARGET", "LABELS", "WAVE", "STATE", "DIGEST", "PREVIOUS", "METRICS"],
            &rows,
        ));
    } else {
        line(output::render_table(&["HOST", "TARGET", "LABELS", "STATE", "DIGEST", "PREVIOUS", "METRICS"], &rows));
    }
    let troubled = shown.iter().filter(|i| i.state == "failed" || i.note.contains("failed") || i.attempt > 0);
    for i in troubled {
        let tries = if i.attempt > 0 { format!(" (after {} stagings)", i.attempt + 1) } else { String::new() };
        line(format!("\n{} ({}, {}): {}{tries}", i.hostname, i.target_id, i.labels, i.note));
        let said: Vec<&str> = i.output.lines().filter(|l| !l.trim().is_empty()).collect();
        for l in &said[said.len().saturating_sub(8)..] {
            line(format!("    {l}"));
        }
    }
    out.join("\n")
}

/// The deployment's audit trail: every state change, oldest first.
pub fn print_events(d: &DeploymentDetail) {
    line(events(d));
}

/// [`print_events`]'s text.
pub fn events(d: &DeploymentDetail) -> String {
    let host: std::collections::HashMap<&str, &str> =
        d.instructions.iter().map(|i| (i.id.as_str(), i.hostname.as_str())).collect();
    let rows: Vec<Vec<String>> = d
        .events
        .iter()
        .map(|e| {
            let subject = match &e.instruction_id {
                Some(i) => host.get(i.as_str()).map(|h| h.to_string()).unwrap_or_else(|| i.clone()),
                None => "deployment".into(),
            };
            let from = if e.from.is_empty() { "·" } else { e.from.as_str() };
            vec![output::time(e.at), subject, format!("{from} → {}", e.to), e.actor.clone(), e.note.clone()]
        })
        .collect();
    output::render_table(&["TIME", "SUBJECT", "CHANGE", "ACTOR", "NOTE"], &rows)
}

#[cfg(test)]
mod tests {
    use convoy_wire::{Counts, DeploymentInfo, EventInfo, Labels, Progress};
    use expect_test::expect;

    use super::*;

    fn instr(host: &str, state: &str, digest: Option<&str>) -> InstructionInfo {
        InstructionInfo {
            id: format!("i-{host}"),
            target_id: format!("t-{host}"),
            hostname: host.into(),
            labels: Labels::parse("role=web,site=sh").unwrap(),
            state: state.into(),
            attempt: 0,
            previous_version: Some("1.0".into()),
            reported_digest: digest.map(str::to_owned),
            metrics: Default::default(),
            output: String::new(),
            note: String::new(),
            updated_at: 0,
            wave: 1,
            planned_at: None,
            last_seen: 1_000_000,
            progress: None,
        }
    }

    fn fixture() -> DeploymentDetail {
        let mut live = instr("web-1", "staged", Some("aaaa"));
        live.metrics = [("bytes_fetched", "48162"), ("stage_ms", "80"), ("requests_ok", "100")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let mut bad = instr("web-2", "failed", Some("bbbbbbbbbbbbbbbbbbbbbbbb"));
        bad.attempt = 2;
        bad.note = "consistency gate: target reported digest bbbb, release is aaaa; gave up after 3 attempts".into();
        bad.output = "first line\n\nlast line".into();
        let mut slow = instr("web-3", "received", None);
        slow.progress = Some(Progress { done_bytes: 450, total_bytes: 1000 });
        DeploymentDetail {
            deployment: DeploymentInfo {
                id: "d-1".into(),
                app: "shop-web".into(),
                version: "2.0".into(),
                digest: "aaaa".into(),
                selector: "role=web".into(),
                state: "staging".into(),
                go_live_at: Some(1_790_000_000_000),
                max_failures: 1,
                stage_deadline: None,
                activate_timeout_secs: 900,
                created_by: "admin".into(),
                created_at: 0,
                updated_at: 0,
                note: "staging shop-web@2.0 to 3 targets".into(),
                counts: Counts { total: 3, staged: 1, live: 0, failed: 1, rolled_back: 0 },
                env: None,
                reason: String::new(),
                wave: 0,
                revision: 0,
                expires_at: None,
                paused_by: None,
                plan: None,
            },
            instructions: vec![live, bad, slow],
            events: vec![
                EventInfo {
                    at: 0,
                    deployment_id: "d-1".into(),
                    instruction_id: None,
                    from: String::new(),
                    to: "staging".into(),
                    actor: "user:admin".into(),
                    note: "staging shop-web@2.0 to 3 targets".into(),
                },
                EventInfo {
                    at: 61_000,
                    deployment_id: "d-1".into(),
                    instruction_id: Some("i-web-2".into()),
                    from: "received".into(),
                    to: "failed".into(),
                    actor: "agent:t-web-2".into(),
                    note: "gave up".into(),
                },
            ],
            changes: vec![convoy_wire::Changes {
                app: "shop-web".into(),
                from_version: "1.0".into(),
                to_version: "2.0".into(),
                from_digest: "cccc".into(),
                to_digest: "aaaa".into(),
                added: vec!["static/new.js".into()],
                removed: vec![],
                changed: vec!["app.js".into(), "config/app.env".into()],
                changed_bytes: 48_000,
                total_size: 1_200_000,
                config_changed: vec!["config/app.env".into()],
                migrate: Some("sh hooks/migrate.sh".into()),
                published_at: 0,
            }],
            approvals: vec![],
            checks: vec![],
            plan: None,
            not_included: vec![],
            states: [("failed".to_owned(), 1), ("received".to_owned(), 1), ("staged".to_owned(), 1)].into(),
            waves: vec![],
            matching: 3,
            next: None,
        }
    }

    #[test]
    fn status_summary() {
        expect![[r#"
            deployment d-1  shop-web@2.0  staging
              digest   aaaa
              go-live  2026-09-21T14:13:20Z
              note     staging shop-web@2.0 to 3 targets
              changes  from 1.0: 1 added, 0 removed, 2 changed (46.9 KiB of 1.1 MiB); config defaults changed: config/app.env (machines keep theirs); migrate hook: sh hooks/migrate.sh
              targets  3: 1 failed, 1 received, 1 staged
              waiting  for web-3 (received, last seen 12s ago)

            HOST   TARGET   LABELS            STATE         DIGEST                     PREVIOUS  METRICS
            web-2  t-web-2  role=web,site=sh  failed        MISMATCH bbbbbbbbbbbbbbbb  1.0
            web-1  t-web-1  role=web,site=sh  staged        match                      1.0       fetched=47.0KiB requests_ok=100
            web-3  t-web-3  role=web,site=sh  received 45%  -                          1.0

            web-2 (t-web-2, role=web,site=sh): consistency gate: target reported digest bbbb, release is aaaa; gave up after 3 attempts (after 3 stagings)
                first line
                last line"#]].assert_eq(&summary(&fixture(), 1_012_000));
    }

    #[test]
    fn audit_trail() {
        expect![[r#"
            TIME                  SUBJECT     CHANGE             ACTOR          NOTE
            1970-01-01T00:00:00Z  deployment  · → staging        user:admin     staging shop-web@2.0 to 3 targets
            1970-01-01T00:01:01Z  web-2       received → failed  agent:t-web-2  gave up"#]]
        .assert_eq(&events(&fixture()));
    }

    #[test]
    fn progress_lines() {
        // `|` keeps the leading spaces visible to the snapshot
        let lines: Vec<String> = progress(&fixture()).iter().map(|l| format!("|{l}")).collect();
        expect![[r#"
            |  staged [########----------------] 1/3   staging
            |  live   [------------------------] 0/3   failed 1  rolled back 0
            |  bytes  [##########--------------] 45% of 1000 B"#]]
        .assert_eq(&lines.join("\n"));
    }
}
