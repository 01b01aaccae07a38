//! The console's pages. Each reads through the application layer as the
//! signed-in user and renders HTML; every value shown is escaped.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use convoy_domain::{DeploymentState as D, Role};
use convoy_wire::{DeploymentDetail, DeploymentInfo, DetailQuery, InstructionInfo};
use serde::Deserialize;

use super::{ago, csrf_refusal, enc, error_page, esc, foreign_post, page, plots, time, viewer, Viewer};
use crate::app::{self, operations, requests, AppError};
use crate::error::ApiError;
use crate::state::AppState;

/// Signs in or returns the redirect to the sign-in page.
macro_rules! signed_in {
    ($st:expr, $headers:expr) => {
        match viewer(&$st, &$headers).await {
            Ok(v) => v,
            Err(r) => return r,
        }
    };
}

fn failed(e: AppError) -> Response {
    let e: ApiError = e.into();
    error_page(e.status, &e.message)
}

/// Targets a deployment page lists at once.
const PAGE: u32 = 200;
/// Plots are drawn for deployments of at most this many targets (they read
/// every instruction and event).
const PLOT_LIMIT: u32 = 5_000;

fn state_badge(state: &str) -> String {
    let kind = match state {
        "succeeded" | "passed" => "ok",
        "failed" | "rolled_back" | "rejected" | "expired" | "halted" | "canceled" => "bad",
        "awaiting_approval" | "awaiting_confirmation" | "preflight" => "wait",
        _ => "run",
    };
    format!("<span class=\"badge {kind}\">{}</span>", esc(&state.replace('_', " ")))
}

fn release_link(app: &str, version: &str) -> String {
    format!("<a href=\"/ui/releases/{}/{}\">{}@{}</a>", enc(app), enc(version), esc(app), esc(version))
}

fn deployment_link(id: &str) -> String {
    format!("<a href=\"/ui/deployments/{}\">{}</a>", enc(id), esc(id))
}

/// The first `n` characters (never cuts one in two: values may come from
/// hostile agents or publishers).
fn short(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

fn flash(done: Option<&str>) -> String {
    done.map(|d| format!("<p class=\"flash\" role=\"status\">{}</p>", esc(d))).unwrap_or_default()
}

// ---------------------------------------------------------------- deployments

#[derive(Deserialize, Default)]
pub struct FlashQuery {
    done: Option<String>,
}

pub async fn deployments(
    State(st): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<FlashQuery>, QueryRejection>,
) -> Response {
    let v = signed_in!(st, headers);
    let list = match operations::list(&st, None).await {
        Ok(l) => l,
        Err(e) => return failed(e),
    };
    let rows: String = list
        .iter()
        .map(|d| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                deployment_link(&d.id),
                release_link(&d.app, &d.version),
                state_badge(&d.state),
                esc(d.env.as_deref().unwrap_or("-")),
                esc(if d.selector.is_empty() { "every target" } else { &d.selector }),
                progress_cell(d),
                esc(&time(d.created_at)),
            )
        })
        .collect();
    let body = format!(
        "<h1>Deployments</h1>{}<p class=\"help\">The last 100, newest first.</p>\
         <div class=\"scroll\"><table><caption class=\"sr\">Deployments</caption><thead><tr><th scope=\"col\">Deployment</th>\
         <th scope=\"col\">Release</th><th scope=\"col\">State</th><th scope=\"col\">Environment</th>\
         <th scope=\"col\">Targets</th><th scope=\"col\">Progress</th><th scope=\"col\">Created</th></tr></thead>\
         <tbody>{}</tbody></table></div>",
        flash(q.as_ref().ok().and_then(|q| q.done.as_deref())),
        if rows.is_empty() { "<tr><td colspan=\"7\">No deployments yet.</td></tr>".to_owned() } else { rows }
    );
    page(Some(&v), "deployments", "Deployments", &body)
}

fn progress_cell(d: &DeploymentInfo) -> String {
    let c = &d.counts;
    if c.total == 0 {
        return "-".into();
    }
    let back = if c.rolled_back > 0 { format!(", {} rolled back", c.rolled_back) } else { String::new() };
    format!(
        "<meter min=\"0\" max=\"{}\" value=\"{}\" aria-label=\"live {} of {}\"></meter> {} live, {} staged, {} failed{back} of {}",
        c.total, c.live, c.live, c.total, c.live, c.staged, c.failed, c.total
    )
}

pub async fn deployment(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<FlashQuery>, QueryRejection>,
) -> Response {
    let v = signed_in!(st, headers);
    let detail = match operations::detail(&st, &id, &DetailQuery { limit: Some(PAGE), ..Default::default() }).await {
        Ok(d) => d,
        Err(e) => return failed(e),
    };
    let d = &detail.deployment;
    let live = match live_fragment(&st, &detail, &v).await {
        Ok(h) => h,
        Err(e) => return failed(e),
    };
    let mut facts = vec![
        ("Deployment", esc(&d.id)),
        ("Release", release_link(&d.app, &d.version)),
        ("Digest", format!("<code>{}</code>", esc(&d.digest))),
        ("Environment", esc(d.env.as_deref().unwrap_or("none (direct)"))),
        ("Targets", esc(if d.selector.is_empty() { "every target" } else { &d.selector })),
        ("Go-live", d.go_live_at.map_or("as soon as every copy is verified".into(), |t| esc(&time(t)))),
        ("Failure budget", d.max_failures.to_string()),
        ("Requested by", format!("{} at {}", esc(&d.created_by), esc(&time(d.created_at)))),
    ];
    if !d.reason.is_empty() {
        facts.push(("Reason", esc(&d.reason)));
    }
    if let Some(p) = &d.plan {
        facts.push(("Release plan", format!("{} / {}", esc(&p.name), esc(&p.entry))));
    }
    if let Some(by) = &d.paused_by {
        facts.push(("Paused by", esc(by)));
    }
    let facts: String = facts.into_iter().map(|(k, v)| format!("<dt>{k}</dt><dd>{v}</dd>")).collect();
    let events: String = detail
        .events
        .iter()
        .rev()
        .take(100)
        .map(|e| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{} → {}</td><td>{}</td></tr>",
                esc(&time(e.at)),
                esc(&e.actor),
                esc(if e.from.is_empty() { "∅" } else { &e.from }),
                esc(&e.to),
                esc(&e.note)
            )
        })
        .collect();
    let body = format!(
        "<h1>{} <span id=\"head-state\">{}</span></h1>{}<p class=\"note\">{}</p><dl class=\"facts\">{facts}</dl>{}{}{}\
         <section aria-labelledby=\"live-h\"><h2 id=\"live-h\">Progress</h2>\
         <div id=\"live\" data-stream=\"/ui/deployments/{}/stream\">{live}</div></section>\
         <section aria-labelledby=\"events-h\"><h2 id=\"events-h\">Events</h2><div class=\"scroll\"><table>\
         <thead><tr><th scope=\"col\">When</th><th scope=\"col\">Who</th><th scope=\"col\">Change</th><th scope=\"col\">Note</th></tr></thead>\
         <tbody>{events}</tbody></table></div></section>",
        release_link(&d.app, &d.version),
        state_badge(&d.state),
        flash(q.as_ref().ok().and_then(|q| q.done.as_deref())),
        esc(&d.note),
        actions(&v, &detail),
        request_section(&detail),
        checks_section(&detail),
        enc(&d.id),
    );
    page(Some(&v), "deployments", &format!("{} {}@{}", d.id, d.app, d.version), &body)
}

/// Approvals, the plan, preflight results: what a request shows before it
/// is staged.
fn request_section(detail: &DeploymentDetail) -> String {
    let mut out = String::new();
    let k = enc(&detail.deployment.id);
    if !detail.approvals.is_empty() {
        let rows: String = detail
            .approvals
            .iter()
            .map(|a| {
                format!(
                    "<li>{} {} {}{}{}</li>",
                    esc(&a.approver),
                    esc(&a.decision),
                    esc(&time(a.at)),
                    if a.note.is_empty() { String::new() } else { format!(": “{}”", esc(&a.note)) },
                    if a.current { "" } else { " <em>(before the request changed; no longer counts)</em>" }
                )
            })
            .collect();
        out.push_str(&format!(
            "<section aria-labelledby=\"appr-h-{k}\"><h2 id=\"appr-h-{k}\">Approvals</h2><ul>{rows}</ul></section>"
        ));
    }
    if let Some(plan) = &detail.plan {
        let mut per_wave: BTreeMap<u32, Vec<&str>> = BTreeMap::new();
        for (_, host, wave) in &plan.targets {
            per_wave.entry(*wave).or_default().push(host);
        }
        let waves: String = per_wave
            .iter()
            .map(|(w, hosts)| {
                let shown: Vec<String> = hosts.iter().take(30).map(|h| esc(h)).collect();
                let more = if hosts.len() > 30 { format!(" and {} more", hosts.len() - 30) } else { String::new() };
                format!("<li>Wave {w}: {} target(s): {}{more}</li>", hosts.len(), shown.join(", "))
            })
            .collect();
        out.push_str(&format!(
            "<section aria-labelledby=\"plan-h-{k}\"><h2 id=\"plan-h-{k}\">Plan</h2>{}<ol class=\"plain\">{waves}</ol></section>",
            plan.note.as_ref().map(|n| format!("<p>{}</p>", esc(n))).unwrap_or_default()
        ));
    }
    let revisions: Vec<&convoy_wire::EventInfo> =
        detail.events.iter().filter(|e| e.note.starts_with("changed") || e.note.contains("revised")).collect();
    if detail.deployment.revision > 0 {
        let items: String =
            revisions.iter().map(|e| format!("<li>{}: {}</li>", esc(&time(e.at)), esc(&e.note))).collect();
        out.push_str(&format!(
            "<section aria-labelledby=\"rev-h-{k}\"><h2 id=\"rev-h-{k}\">Changes to the request</h2><p>Revision {}; approvals given before a change no longer count.</p><ul>{items}</ul></section>",
            detail.deployment.revision
        ));
    }
    out
}

fn checks_section(detail: &DeploymentDetail) -> String {
    if detail.checks.is_empty() {
        return String::new();
    }
    let rows: String = detail
        .checks
        .iter()
        .map(|c| {
            let results: Vec<String> = c.results.iter().map(|(k, v)| format!("{}: {}", esc(k), esc(v))).collect();
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&c.hostname),
                state_badge(&c.state),
                results.join("<br>"),
                output_cell(&c.output, &c.hostname)
            )
        })
        .collect();
    format!(
        "<section aria-labelledby=\"pre-h\"><h2 id=\"pre-h\">Preflight</h2><div class=\"scroll\"><table><thead><tr>\
         <th scope=\"col\">Target</th><th scope=\"col\">State</th><th scope=\"col\">Checks</th><th scope=\"col\">Output</th></tr></thead>\
         <tbody>{rows}</tbody></table></div></section>"
    )
}

fn output_cell(output: &str, host: &str) -> String {
    if output.trim().is_empty() {
        return "-".into();
    }
    format!("<details><summary>Output of {}</summary><pre class=\"output\">{}</pre></details>", esc(host), esc(output))
}

/// The action forms the viewer may use in the deployment's state; the
/// server checks role and state again when one is posted.
/// Always a `<section id="actions">` whose `data-sig` names the forms in
/// it: the page's script swaps in a fresh copy (sent with each live
/// update) when the deployment's state changes what may be done.
fn actions(v: &Viewer, detail: &DeploymentDetail) -> String {
    let (sig, inner) = action_forms(v, detail);
    format!(
        "<section id=\"actions\" class=\"actions\" aria-label=\"Actions\" data-sig=\"{}\">{inner}</section>",
        esc(&sig)
    )
}

fn action_forms(v: &Viewer, detail: &DeploymentDetail) -> (String, String) {
    let d = &detail.deployment;
    let Some(state) = D::parse(&d.state) else { return (String::new(), String::new()) };
    if !v.may(Role::Deployer) {
        let note = "<p class=\"help\" id=\"no-actions\">You have the viewer role: you can look, not act.</p>";
        return ("viewer".into(), note.into());
    }
    let mut forms = Vec::new();
    let running = matches!(state, D::Staging | D::Scheduled | D::Activating);
    if running && d.paused_by.is_none() {
        forms.push(("pause", "Pause", "No new wave starts until it is resumed; targets already switching finish."));
    }
    if d.paused_by.is_some() || state == D::Halted {
        forms.push(("resume", "Resume", "Waves continue from where they stopped."));
    }
    if d.counts.failed + d.counts.rolled_back > 0 && matches!(state, D::Succeeded | D::Failed | D::Halted) {
        forms.push(("retry", "Retry failed targets", "Failed and canceled targets try again."));
    }
    if matches!(state, D::Staging | D::Scheduled | D::Activating | D::Succeeded | D::Halted | D::Failed) {
        forms.push(("rollback", "Roll back", "Every target still on this release goes back to the one it had."));
    }
    if state.is_request() || matches!(state, D::Staging | D::Scheduled) {
        forms.push(("cancel", "Cancel", "Nothing goes live; transfers stop within seconds."));
    }
    let mut html = String::new();
    let mut sig: Vec<&str> = forms.iter().map(|f| f.0).collect();
    let decided = detail.approvals.iter().any(|a| a.current && a.approver == v.user.name);
    if v.may(Role::Approver) && state == D::AwaitingApproval && d.created_by != v.user.name && !decided {
        sig.push("approve");
        html.push_str(&decision_forms(v, &d.id));
    }
    if state == D::AwaitingConfirmation {
        sig.push("confirm");
        html.push_str(&confirm_form(v, &d.id));
    }
    for (action, label, what) in forms {
        html.push_str(&format!(
            "<details class=\"action\"><summary>{label}…</summary>\
             <form method=\"post\" action=\"/ui/deployments/{id}/act\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"action\" value=\"{action}\">\
             <p>{what}</p>\
             <label for=\"{action}-reason\">Reason (kept in the audit log)</label>\
             <textarea id=\"{action}-reason\" name=\"reason\" required maxlength=\"1024\" rows=\"2\"></textarea>\
             <label class=\"check\"><input type=\"checkbox\" name=\"confirm\" value=\"yes\" required> \
             I confirm: {label} {idtext}</label>\
             <button type=\"submit\" class=\"danger\">{label}</button></form></details>",
            id = enc(&d.id),
            idtext = esc(&d.id),
            csrf = esc(&v.csrf),
        ));
    }
    if html.is_empty() {
        return (String::new(), String::new());
    }
    (sig.join(","), format!("<h2>Actions</h2>{html}"))
}

fn decision_forms(v: &Viewer, id: &str) -> String {
    let mut out = String::new();
    for (action, label) in [("approve", "Approve"), ("reject", "Reject")] {
        out.push_str(&format!(
            "<form method=\"post\" action=\"/ui/deployments/{eid}/act\" class=\"decision\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"action\" value=\"{action}\">\
             <label for=\"{action}-note-{hid}\">Note for {label}</label>\
             <input id=\"{action}-note-{hid}\" name=\"note\" maxlength=\"1024\">\
             <button type=\"submit\">{label} {hid}</button></form>",
            eid = enc(id),
            hid = esc(id),
            csrf = esc(&v.csrf)
        ));
    }
    out
}

fn confirm_form(v: &Viewer, id: &str) -> String {
    format!(
        "<form method=\"post\" action=\"/ui/deployments/{eid}/act\" class=\"decision\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"action\" value=\"confirm\">\
         <label class=\"check\"><input type=\"checkbox\" name=\"confirm\" value=\"yes\" required> I have read the plan and preflight results</label>\
         <button type=\"submit\">Confirm {hid}</button></form>",
        eid = enc(id),
        hid = esc(id),
        csrf = esc(&v.csrf)
    )
}

/// The part of a deployment's page that updates by itself: counts, waves,
/// targets, plots.
async fn live_fragment(st: &AppState, detail: &DeploymentDetail, v: &Viewer) -> Result<String, AppError> {
    let d = &detail.deployment;
    let (sig, forms) = action_forms(v, detail);
    let states: String = detail.states.iter().map(|(s, n)| format!("<li>{} {n}</li>", state_badge(s))).collect();
    let waves: String = detail
        .waves
        .iter()
        .map(|w| {
            let live = w.states.get("succeeded").copied().unwrap_or(0);
            let staged: u32 = ["staged", "activating", "succeeded"].iter().filter_map(|s| w.states.get(*s)).sum();
            let parts: Vec<String> = w.states.iter().map(|(s, n)| format!("{} {n}", esc(&s.replace('_', " ")))).collect();
            format!(
                "<tr><th scope=\"row\">Wave {}</th><td>{}</td><td><meter min=\"0\" max=\"{t}\" value=\"{staged}\" aria-label=\"staged {staged} of {t}\"></meter> {staged}/{t}</td>\
                 <td><meter min=\"0\" max=\"{t}\" value=\"{live}\" aria-label=\"live {live} of {t}\"></meter> {live}/{t}</td><td>{}</td></tr>",
                w.wave,
                w.total,
                parts.join(", "),
                t = w.total,
            )
        })
        .collect();
    let rows: String = detail.instructions.iter().map(|i| target_row(d, i)).collect();
    let more = if detail.matching as usize > detail.instructions.len() {
        format!("<p class=\"help\">Showing {} of {} targets.</p>", detail.instructions.len(), detail.matching)
    } else {
        String::new()
    };
    let plots = if d.counts.total == 0 {
        String::new()
    } else if d.counts.total > PLOT_LIMIT {
        format!("<p class=\"help\">Plots are drawn for deployments of up to {PLOT_LIMIT} targets.</p>")
    } else {
        let instrs = st.store.list_instructions(&d.id).await?;
        let events = st.store.events(&d.id).await?;
        let names = detail.instructions.iter().map(|i| (i.target_id.as_str(), i.hostname.as_str())).collect();
        plots::deployment(d, &instrs, &events, &names)
    };
    Ok(format!(
        "<p class=\"counts\" role=\"status\" aria-live=\"polite\" data-state=\"{}\">State: {} · {} targets: {} staged, {} live, {} failed, {} rolled back</p>\
         <ul class=\"states\" aria-label=\"Targets by state\">{states}</ul>\
         {}\
         <div class=\"scroll\"><table class=\"targets\"><caption>Targets</caption><thead><tr><th scope=\"col\">Target</th><th scope=\"col\">Wave</th>\
         <th scope=\"col\">State</th><th scope=\"col\">Digest check</th><th scope=\"col\">Progress</th><th scope=\"col\">Metrics</th>\
         <th scope=\"col\">Seen</th><th scope=\"col\">Output</th></tr></thead><tbody>{rows}</tbody></table></div>{more}{plots}\
         <template id=\"actions-fresh\" data-sig=\"{}\">{forms}</template>",
        esc(&d.state),
        state_badge(&d.state),
        d.counts.total,
        d.counts.staged,
        d.counts.live,
        d.counts.failed,
        d.counts.rolled_back,
        if waves.is_empty() {
            String::new()
        } else {
            format!(
                "<div class=\"scroll\"><table class=\"waves\"><caption>Waves</caption><thead><tr><th scope=\"col\">Wave</th><th scope=\"col\">Targets</th>\
                 <th scope=\"col\">Staged</th><th scope=\"col\">Live</th><th scope=\"col\">States</th></tr></thead><tbody>{waves}</tbody></table></div>"
            )
        },
        esc(&sig),
    ))
}

fn target_row(d: &DeploymentInfo, i: &InstructionInfo) -> String {
    let check = match &i.reported_digest {
        None => "<span class=\"muted\">not yet</span>".to_owned(),
        Some(r) if *r == d.digest => {
            "<span class=\"ok\" title=\"the target holds exactly the published bytes\">✓ matches</span>".into()
        }
        Some(r) => format!("<span class=\"bad\">✗ {}</span>", esc(&short(r, 16))),
    };
    let progress = match &i.progress {
        Some(p) if p.total_bytes > 0 => format!(
            "<meter min=\"0\" max=\"{}\" value=\"{}\" aria-label=\"downloaded\"></meter> {}%",
            p.total_bytes,
            p.done_bytes,
            (u128::from(p.done_bytes) * 100 / u128::from(p.total_bytes)).min(100)
        ),
        _ => "-".into(),
    };
    let metrics: Vec<String> = i.metrics.iter().take(8).map(|(k, v)| format!("{}={}", esc(k), esc(v))).collect();
    format!(
        "<tr><th scope=\"row\"><a href=\"/ui/targets/{}\">{}</a></th><td>{}</td><td>{}</td><td>{check}</td><td>{progress}</td>\
         <td class=\"metrics\">{}</td><td>{}</td><td>{}</td></tr>",
        enc(&i.target_id),
        esc(&i.hostname),
        i.wave,
        state_badge(&i.state),
        metrics.join(" "),
        esc(&ago(i.last_seen)),
        if i.note.is_empty() && i.output.is_empty() {
            "-".into()
        } else {
            let text = if i.output.is_empty() { i.note.clone() } else { format!("{}\n\n{}", i.note, i.output) };
            output_cell(&text, &i.hostname)
        }
    )
}

pub async fn deployment_live(State(st): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let v = signed_in!(st, headers);
    match live_for(&st, &id, &v).await {
        Ok((html, _)) => ([(axum::http::header::CACHE_CONTROL, "no-store")], Html(html)).into_response(),
        Err(e) => failed(e),
    }
}

async fn live_for(st: &AppState, id: &str, v: &Viewer) -> Result<(String, bool), AppError> {
    let detail = operations::detail(st, id, &DetailQuery { limit: Some(PAGE), ..Default::default() }).await?;
    let settled = D::parse(&detail.deployment.state).is_some_and(|s| s.is_settled());
    Ok((live_fragment(st, &detail, v).await?, settled))
}

/// How long one stream of a deployment's page runs; the browser then
/// reconnects (a bound on every wait).
const STREAM_LIFE: Duration = Duration::from_secs(3600);
/// How often a stream looks again (and checks its session is still good).
const STREAM_TICK: Duration = Duration::from_secs(2);

/// `text/event-stream` of the live part of a deployment's page: a `live`
/// event with the new HTML whenever it changed (looked at every 2 s),
/// and `done` once the deployment has settled or the session ended (sign-out,
/// a revoked token or a removed user stop the stream within a tick).
pub async fn deployment_stream(State(st): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let v = signed_in!(st, headers);
    let until = tokio::time::Instant::now() + STREAM_LIFE;
    struct S {
        st: AppState,
        v: Viewer,
        id: String,
        last: String,
        over: bool,
        done_next: bool,
        first: bool,
    }
    let start = S { st, v, id, last: String::new(), over: false, done_next: false, first: true };
    let stream = futures_util::stream::unfold(start, move |mut s| async move {
        if s.done_next {
            s.done_next = false;
            return Some((Ok(Event::default().event("done").data("settled")), s));
        }
        if s.over {
            return None;
        }
        loop {
            if !s.first {
                tokio::time::sleep(STREAM_TICK).await;
                // the session may have ended, or its token been revoked
                match super::session_user(&s.st, &s.v.session).await {
                    Ok(Some(v)) => s.v = v,
                    _ => {
                        s.over = true;
                        return Some((Ok(Event::default().event("done").data("signed out")), s));
                    }
                }
            }
            s.first = false;
            if tokio::time::Instant::now() >= until {
                s.over = true;
                return Some((Ok::<_, Infallible>(Event::default().event("done").data("stream ended; reload")), s));
            }
            let (html, settled) = match live_for(&s.st, &s.id, &s.v).await {
                Ok(x) => x,
                Err(e) => {
                    s.over = true;
                    return Some((Ok(Event::default().event("done").data(e.to_string())), s));
                }
            };
            if settled {
                // the last look, then `done` (the browser would reconnect to an ended stream)
                s.over = true;
                let done = Event::default().event("done").data("settled");
                if html == s.last {
                    return Some((Ok(done), s));
                }
                s.done_next = true;
                return Some((Ok(Event::default().event("live").data(html)), s));
            }
            if html != s.last {
                s.last = html.clone();
                return Some((Ok(Event::default().event("live").data(html)), s));
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}

#[derive(Deserialize)]
pub struct ActForm {
    #[serde(default)]
    csrf: String,
    action: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    note: String,
    #[serde(default)]
    confirm: String,
}

/// One of the action forms: checks the CSRF token, then calls the
/// application layer as the signed-in user (which checks role and state).
pub async fn act(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<ActForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if let Some(r) = foreign_post(&headers) {
        return r;
    }
    let v = signed_in!(st, headers);
    let Ok(Form(f)) = form else {
        return error_page(StatusCode::BAD_REQUEST, "The form was incomplete; reload the page and try again.");
    };
    if let Some(r) = csrf_refusal(&v, &f.csrf) {
        return r;
    }
    let reason = f.reason.trim();
    let needs_reason = matches!(f.action.as_str(), "pause" | "resume" | "retry" | "rollback" | "cancel");
    if needs_reason && (reason.is_empty() || f.confirm != "yes") {
        return error_page(StatusCode::BAD_REQUEST, "Give a reason and tick the confirmation to do this.");
    }
    if f.action == "confirm" && f.confirm != "yes" {
        return error_page(StatusCode::BAD_REQUEST, "Tick the confirmation to confirm the request.");
    }
    let decision = convoy_wire::Decision { note: f.note.trim().to_owned(), ..Default::default() };
    let u = &v.user;
    let r = match f.action.as_str() {
        "pause" => operations::pause(&st, u, &id, reason).await,
        "resume" => operations::resume(&st, u, &id, reason).await,
        "retry" => {
            operations::retry(&st, u, &id, convoy_wire::RetryRequest { note: reason.to_owned(), targets: Vec::new() })
                .await
        }
        "rollback" => operations::rollback(&st, u, &id, reason, false).await,
        "cancel" => requests::cancel(&st, u, &id, reason).await,
        "approve" => requests::approve(&st, u, &id, &decision).await,
        "reject" => requests::reject(&st, u, &id, &decision.note).await,
        "confirm" => requests::confirm(&st, u, &id).await,
        other => return error_page(StatusCode::BAD_REQUEST, &format!("unknown action {other:?}")),
    };
    match r {
        Ok(d) => {
            tracing::info!(user = %u.name, deployment = %id, action = %f.action, "console action");
            let done = format!("{}: {} is now {}", f.action, d.id, d.state.replace('_', " "));
            Redirect::to(&format!("/ui/deployments/{}?done={}", enc(&id), enc(&done))).into_response()
        }
        Err(e) => failed(e),
    }
}

// ---------------------------------------------------------------- approvals

pub async fn approvals(
    State(st): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<FlashQuery>, QueryRejection>,
) -> Response {
    let v = signed_in!(st, headers);
    let inbox = match requests::inbox(&st, &v.user, false).await {
        Ok(i) => i,
        Err(e) => return failed(e),
    };
    let mut items = String::new();
    for r in &inbox {
        let d = &r.deployment;
        let detail = match operations::detail(&st, &d.id, &DetailQuery { limit: Some(1), ..Default::default() }).await {
            Ok(x) => x,
            Err(e) => return failed(e),
        };
        let form = if r.waiting_for == "approve" { decision_forms(&v, &d.id) } else { confirm_form(&v, &d.id) };
        items.push_str(&format!(
            "<article class=\"request\" aria-labelledby=\"req-{hid}\"><h2 id=\"req-{hid}\">{hid}: {} {} in {}</h2>\
             <p>{} — requested by {} {}; waiting for you to <strong>{}</strong> ({} of {} approvals).</p>\
             <dl class=\"facts\"><dt>Targets</dt><dd>{}</dd><dt>Go-live</dt><dd>{}</dd><dt>Reason</dt><dd>{}</dd></dl>\
             {}{}<p><a href=\"/ui/deployments/{}\">Open {hid}</a></p></article>",
            release_link(&d.app, &d.version),
            state_badge(&d.state),
            esc(d.env.as_deref().unwrap_or("-")),
            esc(&d.note),
            esc(&d.created_by),
            esc(&ago(d.created_at)),
            esc(&r.waiting_for),
            r.approvals,
            r.approvals_needed,
            esc(if d.selector.is_empty() { "every target" } else { &d.selector }),
            d.go_live_at.map_or("as soon as every copy is verified".into(), |t| esc(&time(t))),
            esc(&d.reason),
            request_section(&detail),
            form,
            enc(&d.id),
            hid = esc(&d.id),
        ));
    }
    if items.is_empty() {
        items = "<p id=\"inbox-empty\">Nothing awaits you.</p>".into();
    }
    let body = format!("<h1>Approvals</h1>{}{items}", flash(q.as_ref().ok().and_then(|q| q.done.as_deref())));
    page(Some(&v), "approvals", "Approvals", &body)
}

// ---------------------------------------------------------------- fleet

#[derive(Deserialize, Default)]
pub struct TargetsQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    labels: String,
    #[serde(default)]
    release: String,
    #[serde(default)]
    seen: String,
}

/// Targets listed on one page of the fleet.
const FLEET_PAGE: usize = 500;

pub async fn targets(
    State(st): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<TargetsQuery>, QueryRejection>,
) -> Response {
    let v = signed_in!(st, headers);
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, &e.body_text()),
    };
    let selector = match convoy_domain::Selector::parse(&q.labels) {
        Ok(s) => s,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, &format!("labels filter: {e}")),
    };
    // narrow rows (id, host, labels) first; whole rows (inventory, last
    // seen) for the page only, or for every candidate when the release or
    // seen filter needs them
    let narrow = match st.store.list_target_labels().await {
        Ok(t) => t,
        Err(e) => return failed(e.into()),
    };
    let total = narrow.len();
    let needle = q.q.trim().to_lowercase();
    let mut candidates: Vec<(String, String)> = narrow
        .into_iter()
        .filter(|t| {
            needle.is_empty() || t.hostname.to_lowercase().contains(&needle) || t.id.to_lowercase().contains(&needle)
        })
        .filter(|t| serde_json::from_str::<convoy_wire::Labels>(&t.labels_json).is_ok_and(|l| selector.matches(&l)))
        .map(|t| (t.hostname, t.id))
        .collect();
    candidates.sort();
    let full_scan = !q.release.trim().is_empty() || !q.seen.is_empty();
    let wanted: Vec<String> = if full_scan {
        candidates.iter().map(|(_, id)| id.clone()).collect()
    } else {
        candidates.iter().take(FLEET_PAGE).map(|(_, id)| id.clone()).collect()
    };
    let mut rows = match st.store.get_targets(&wanted).await {
        Ok(t) => t,
        Err(e) => return failed(e.into()),
    };
    rows.sort_by(|a, b| (&a.hostname, &a.id).cmp(&(&b.hostname, &b.id)));
    let now = crate::state::now_ms();
    let mut shown = Vec::new();
    let mut matching = if full_scan { 0 } else { candidates.len() };
    for t in &rows {
        let Ok(info) = app::target_info(t, st.relay_site(&t.id)) else { continue };
        let online = now - info.last_seen <= crate::metrics::ONLINE_MS;
        let runs: Vec<String> = info.inventory.current.iter().map(|(a, v)| format!("{a}@{v}")).collect();
        let keep = (q.release.trim().is_empty() || runs.iter().any(|r| *r == q.release.trim()))
            && match q.seen.as_str() {
                "online" => online,
                "stale" => !online,
                _ => true,
            };
        if !keep {
            continue;
        }
        if full_scan {
            matching += 1;
        }
        if shown.len() < FLEET_PAGE {
            shown.push((info, online, runs));
        }
    }
    let rows: String = shown
        .iter()
        .map(|(t, online, runs)| {
            format!(
                "<tr><th scope=\"row\"><a href=\"/ui/targets/{}\">{}</a></th><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                enc(&t.id),
                esc(&t.hostname),
                esc(&t.id),
                esc(&t.labels.to_string()),
                esc(&if runs.is_empty() { "-".into() } else { runs.join(", ") }),
                if *online { "<span class=\"ok\">online</span>".to_owned() } else { format!("<span class=\"bad\">stale</span>, {}", esc(&ago(t.last_seen))) },
                esc(&t.warning),
            )
        })
        .collect();
    let sel = |v: &str| if q.seen == v { " selected" } else { "" };
    let body = format!(
        "<h1>Fleet</h1><form class=\"filters\" method=\"get\" action=\"/ui/targets\" role=\"search\">\
         <label for=\"f-q\">Host or id</label><input id=\"f-q\" name=\"q\" value=\"{}\">\
         <label for=\"f-labels\">Labels</label><input id=\"f-labels\" name=\"labels\" placeholder=\"site=sh,role=web\" value=\"{}\">\
         <label for=\"f-release\">Runs</label><input id=\"f-release\" name=\"release\" placeholder=\"app@version\" value=\"{}\">\
         <label for=\"f-seen\">Seen</label><select id=\"f-seen\" name=\"seen\"><option value=\"\">any</option>\
         <option value=\"online\"{}>online (last 90 s)</option><option value=\"stale\"{}>stale</option></select>\
         <button type=\"submit\">Filter</button></form>\
         <p class=\"help\" id=\"fleet-count\">{matching} of {} targets match{}.</p>\
         <div class=\"scroll\"><table><thead><tr><th scope=\"col\">Host</th><th scope=\"col\">Id</th><th scope=\"col\">Labels</th>\
         <th scope=\"col\">Live releases</th><th scope=\"col\">Seen</th><th scope=\"col\">Warning</th></tr></thead><tbody>{rows}</tbody></table></div>",
        esc(&q.q),
        esc(&q.labels),
        esc(&q.release),
        sel("online"),
        sel("stale"),
        total,
        if matching > FLEET_PAGE { format!("; the first {FLEET_PAGE} by host are shown") } else { String::new() },
    );
    page(Some(&v), "targets", "Fleet", &body)
}

pub async fn target(State(st): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let v = signed_in!(st, headers);
    let d = match app::target_detail(&st, &id).await {
        Ok(d) => d,
        Err(e) => return failed(e),
    };
    let t = &d.target;
    let runs: Vec<String> = t.inventory.current.iter().map(|(a, v)| release_link(a, v)).collect();
    let ddi = t.inventory.kind == convoy_wire::TargetKind::Ddi;
    let attributes: Vec<String> =
        t.inventory.attributes.iter().map(|(k, v)| format!("{}={}", esc(k), esc(v))).collect();
    let mut facts = vec![("Id", format!("<code>{}</code>", esc(&t.id))), ("Labels", esc(&t.labels.to_string()))];
    if ddi {
        facts.push(("Kind", "device speaking hawkBit DDI".into()));
        facts.push(("Attributes", if attributes.is_empty() { "-".into() } else { attributes.join(", ") }));
    } else {
        facts.push(("Platform", esc(&format!("{}/{}", t.inventory.os, t.inventory.arch))));
        facts.push(("Agent", esc(&t.inventory.agent_version)));
        facts.push(("Free disk", esc(&format!("{:.1} GiB", t.inventory.free_disk_bytes as f64 / (1u64 << 30) as f64))));
    }
    facts.extend([
        ("Live", if runs.is_empty() { "-".into() } else { runs.join(", ") }),
        ("Relay", esc(t.relay_site.as_deref().map_or("-", |s| s))),
        ("Enrolled", esc(&time(t.enrolled_at))),
        ("Seen", esc(&format!("{} ({})", ago(t.last_seen), time(t.last_seen)))),
    ]);
    let facts: String = facts.iter().map(|(k, v)| format!("<dt>{k}</dt><dd>{v}</dd>")).collect();
    let rows: String = d
        .history
        .iter()
        .map(|h| {
            let metrics: Vec<String> = h.metrics.iter().map(|(k, v)| format!("{}={}", esc(k), esc(v))).collect();
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"metrics\">{}</td><td>{}</td></tr>",
                deployment_link(&h.deployment_id),
                release_link(&h.app, &h.version),
                esc(h.previous_version.as_deref().unwrap_or("-")),
                h.wave,
                state_badge(&h.state),
                esc(&time(h.updated_at)),
                metrics.join(" "),
                esc(&h.note)
            )
        })
        .collect();
    let body = format!(
        "<h1>{}</h1>{}<dl class=\"facts\">{facts}</dl><section aria-labelledby=\"hist-h\"><h2 id=\"hist-h\">Deployments</h2>\
         <div class=\"scroll\"><table><thead><tr><th scope=\"col\">Deployment</th><th scope=\"col\">Release</th><th scope=\"col\">From</th>\
         <th scope=\"col\">Wave</th><th scope=\"col\">State</th><th scope=\"col\">Changed</th><th scope=\"col\">Metrics</th><th scope=\"col\">Note</th></tr></thead>\
         <tbody>{}</tbody></table></div></section>{}",
        esc(&t.hostname),
        if t.warning.is_empty() { String::new() } else { format!("<p class=\"error\">{}</p>", esc(&t.warning)) },
        if rows.is_empty() { "<tr><td colspan=\"8\">No deployment has included this target yet.</td></tr>".into() } else { rows },
        plots::target_metrics(&d.history),
    );
    page(Some(&v), "targets", &t.hostname, &body)
}

// ---------------------------------------------------------------- releases

/// How each release is signed, from the TUF targets metadata.
async fn signatures(st: &AppState) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    let Ok(t) = app::tuf::Repo::targets(st.store.as_ref()).await else { return out };
    if let Ok(releases) = st.store.list_releases().await {
        for r in releases {
            let path = convoy_wire::tuf::target_path(&r.app, &r.version);
            let what = if let Some(role) = t.delegated_to(&path) {
                format!("delegated to publisher role {}", role.name)
            } else if t.targets.contains_key(&path) {
                "signed (targets)".to_owned()
            } else {
                "not signed".to_owned()
            };
            out.insert((r.app, r.version), what);
        }
    }
    out
}

fn provenance_html(p: &Option<convoy_wire::Provenance>) -> String {
    let Some(p) = p else { return "-".into() };
    let mut parts = Vec::new();
    if !p.commit.is_empty() {
        parts.push(format!("<code>{}</code>", esc(&short(&p.commit, 12))));
    }
    if !p.branch.is_empty() {
        parts.push(format!("on {}", esc(&p.branch)));
    }
    if p.ci_url.starts_with("https://") || p.ci_url.starts_with("http://") {
        parts.push(format!("<a href=\"{}\" rel=\"noreferrer noopener\">CI run</a>", esc(&p.ci_url)));
    }
    parts.join(" ")
}

pub async fn releases(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let v = signed_in!(st, headers);
    let list = match st.store.list_releases().await {
        Ok(l) => l,
        Err(e) => return failed(e.into()),
    };
    let signed = signatures(&st).await;
    let mut by_app: BTreeMap<String, Vec<convoy_wire::ReleaseInfo>> = BTreeMap::new();
    for r in &list {
        by_app.entry(r.app.clone()).or_default().push(crate::routes::releases::info(r));
    }
    let mut body = String::from("<h1>Releases</h1>");
    if by_app.is_empty() {
        body.push_str("<p>Nothing published yet (<code>convoy publish DIR --app APP --version V</code>).</p>");
    }
    for (app, rs) in &by_app {
        let rows: String = rs
            .iter()
            .map(|r| {
                format!(
                    "<tr><th scope=\"row\">{}</th><td><code>{}</code></td><td>{}</td><td>{:.1} MiB</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    release_link(&r.app, &r.version),
                    esc(&short(&r.digest, 16)),
                    r.files,
                    r.total_size as f64 / (1u64 << 20) as f64,
                    esc(&time(r.created_at)),
                    esc(signed.get(&(r.app.clone(), r.version.clone())).map_or("-", String::as_str)),
                    provenance_html(&r.provenance),
                )
            })
            .collect();
        body.push_str(&format!(
            "<section aria-labelledby=\"app-{a}\"><h2 id=\"app-{a}\">{}</h2><div class=\"scroll\"><table><thead><tr><th scope=\"col\">Version</th>\
             <th scope=\"col\">Digest</th><th scope=\"col\">Files</th><th scope=\"col\">Size</th><th scope=\"col\">Published</th>\
             <th scope=\"col\">Signature</th><th scope=\"col\">Built from</th></tr></thead><tbody>{rows}</tbody></table></div></section>",
            esc(app),
            a = enc(app),
        ));
    }
    page(Some(&v), "releases", "Releases", &body)
}

#[derive(Deserialize, Default)]
pub struct ReleaseQuery {
    from: Option<String>,
}

pub async fn release(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path((app_name, version)): Path<(String, String)>,
    q: Result<Query<ReleaseQuery>, QueryRejection>,
) -> Response {
    let v = signed_in!(st, headers);
    let rec = match st.store.get_release(&app_name, &version).await {
        Ok(Some(r)) => r,
        Ok(None) => return error_page(StatusCode::NOT_FOUND, &format!("release {app_name}@{version} not found")),
        Err(e) => return failed(e.into()),
    };
    let r = crate::routes::releases::info(&rec);
    let others: Vec<String> = match st.store.list_releases().await {
        Ok(l) => l.into_iter().filter(|x| x.app == app_name && x.version != version).map(|x| x.version).collect(),
        Err(e) => return failed(e.into()),
    };
    let from = match q {
        Ok(Query(q)) => q.from.filter(|f| !f.is_empty()),
        Err(e) => return error_page(StatusCode::BAD_REQUEST, &e.body_text()),
    };
    let changes = match &from {
        None => String::new(),
        Some(f) => match app::content::changes(&st, &app_name, f, &version).await {
            Ok(c) => {
                let list = |what: &str, paths: &[String]| -> String {
                    if paths.is_empty() {
                        return String::new();
                    }
                    let items: String =
                        paths.iter().take(500).map(|p| format!("<li><code>{}</code></li>", esc(p))).collect();
                    format!("<h3>{what} ({})</h3><ul class=\"paths\">{items}</ul>", paths.len())
                };
                format!(
                    "<section aria-labelledby=\"chg-h\"><h2 id=\"chg-h\">Changes from {}</h2>{}{}{}</section>",
                    esc(f),
                    list("Added", &c.added),
                    list("Removed", &c.removed),
                    list("Changed", &c.changed)
                )
            }
            Err(e) => format!("<p class=\"error\" role=\"alert\">{}</p>", esc(&e.to_string())),
        },
    };
    let options: String = others
        .iter()
        .map(|o| {
            format!(
                "<option value=\"{}\"{}>{}</option>",
                esc(o),
                if from.as_deref() == Some(o) { " selected" } else { "" },
                esc(o)
            )
        })
        .collect();
    let signed = signatures(&st).await;
    let body = format!(
        "<h1>{}@{}</h1><dl class=\"facts\"><dt>Digest</dt><dd><code>{}</code></dd><dt>Files</dt><dd>{}</dd><dt>Size</dt><dd>{} bytes</dd>\
         <dt>Chunks</dt><dd>{}</dd><dt>Published</dt><dd>{}</dd><dt>Signature</dt><dd>{}</dd><dt>Built from</dt><dd>{}</dd></dl>\
         {}{changes}",
        esc(&r.app),
        esc(&r.version),
        esc(&r.digest),
        r.files,
        r.total_size,
        r.chunks,
        esc(&time(r.created_at)),
        esc(signed.get(&(r.app.clone(), r.version.clone())).map_or("-", String::as_str)),
        provenance_html(&r.provenance),
        if options.is_empty() {
            String::new()
        } else {
            format!(
                "<form method=\"get\" class=\"filters\"><label for=\"from\">Compare with</label><select id=\"from\" name=\"from\">{options}</select>\
                 <button type=\"submit\">Show changes</button></form>"
            )
        },
    );
    page(Some(&v), "releases", &format!("{app_name}@{version}"), &body)
}

// ---------------------------------------------------------------- audit

#[derive(Deserialize, Default)]
pub struct AuditQuery {
    #[serde(default)]
    deployment: String,
    #[serde(default)]
    actor: String,
    limit: Option<u32>,
}

pub async fn audit(
    State(st): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Response {
    let v = signed_in!(st, headers);
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, &e.body_text()),
    };
    let actor = q.actor.trim();
    let actor = (!actor.is_empty()).then(|| app::audit_actor(actor));
    let limit = q.limit.unwrap_or(200).clamp(1, 2000);
    let f = convoy_store::AuditFilter {
        deployment: Some(q.deployment.trim().to_owned()).filter(|d| !d.is_empty()),
        actor,
        limit,
    };
    let events = match st.store.audit(&f).await {
        Ok(e) => e,
        Err(e) => return failed(e.into()),
    };
    let rows: String = events
        .iter()
        .rev()
        .map(|e| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} → {}</td><td>{}</td></tr>",
                esc(&time(e.at)),
                esc(&e.actor),
                if e.deployment_id.is_empty() { "-".into() } else { deployment_link(&e.deployment_id) },
                esc(if e.from_state.is_empty() { "∅" } else { &e.from_state }),
                esc(&e.to_state),
                esc(&e.note)
            )
        })
        .collect();
    let body = format!(
        "<h1>Audit log</h1><form class=\"filters\" method=\"get\" action=\"/ui/audit\" role=\"search\">\
         <label for=\"a-dep\">Deployment</label><input id=\"a-dep\" name=\"deployment\" value=\"{}\">\
         <label for=\"a-actor\">Actor</label><input id=\"a-actor\" name=\"actor\" placeholder=\"alice, agent:ID, scheduler\" value=\"{}\">\
         <label for=\"a-limit\">Newest</label><input id=\"a-limit\" name=\"limit\" type=\"number\" min=\"1\" max=\"2000\" value=\"{limit}\">\
         <button type=\"submit\">Filter</button></form>\
         <div class=\"scroll\"><table><thead><tr><th scope=\"col\">When</th><th scope=\"col\">Actor</th><th scope=\"col\">Deployment</th>\
         <th scope=\"col\">Change</th><th scope=\"col\">Note</th></tr></thead><tbody>{rows}</tbody></table></div>",
        esc(&q.deployment),
        esc(&q.actor),
    );
    page(Some(&v), "audit", "Audit log", &body)
}
