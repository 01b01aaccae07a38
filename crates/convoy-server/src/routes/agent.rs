//! The agent side of the API: enrolment, long-polled work, reports.
//! An agent sees only its own instructions.

use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use convoy_domain::{InstructionState, ReportKind};
use convoy_store::{new_id, new_secret, TargetRecord, TokenKind, TokenRecord};
use convoy_wire::{
    sign::SignedWork, EnrollRequest, EnrollResponse, Inventory, ProgressReport, Report, ReportResponse, Work,
    WorkResponse,
};
use serde::Deserialize;

use crate::app::SITE_LABEL;
use crate::auth::{self, Caller};
use crate::error::{ApiError, ApiResult};
use crate::state::{now_ms, AppState};

/// Longest a poll is held open.
const MAX_WAIT_SECS: u64 = 60;

fn check_inventory(inv: &Inventory) -> ApiResult<()> {
    inv.labels.validate().map_err(|e| ApiError::bad_request(e.to_string()))?;
    if inv.hostname.is_empty() || inv.hostname.len() > 253 || inv.hostname.contains(char::is_control) {
        return Err(ApiError::bad_request("hostname must be 1-253 characters, none of them control characters"));
    }
    // the kind and DDI attributes are the server's to record
    if !inv.kind.is_agent() || !inv.attributes.is_empty() || inv.gateway.is_some() {
        return Err(ApiError::bad_request("an agent's inventory names no kind and no DDI attributes"));
    }
    if let Some(url) = &inv.relay {
        check_url(url)?;
    }
    Ok(())
}

pub(crate) fn check_url(url: &str) -> ApiResult<()> {
    match reqwest_like_url(url) {
        Some(()) => Ok(()),
        None => Err(ApiError::bad_request(format!("relay URL {url:?} is not http(s)://HOST:PORT"))),
    }
}

/// The labels a new target gets: its enrolment token's when the token has
/// a label scope (asking for any other is refused), else the ones it asks for.
fn enrol_labels(scope: Option<&convoy_wire::Labels>, asked: &convoy_wire::Labels) -> ApiResult<convoy_wire::Labels> {
    let Some(scope) = scope else { return Ok(asked.clone()) };
    let refused: Vec<String> = asked
        .0
        .iter()
        .filter(|(k, v)| scope.0.get(*k) != Some(*v))
        .map(|(k, v)| match scope.0.get(k) {
            Some(allowed) => format!("{k}={v} (the token gives {k}={allowed})"),
            None => format!("{k}={v} (the token gives no {k})"),
        })
        .collect();
    if !refused.is_empty() {
        return Err(ApiError::forbidden(format!(
            "this enrolment token does not allow the labels {}; it gives {}",
            refused.join(", "),
            labels_text(scope)
        )));
    }
    Ok(scope.clone())
}

/// Text an agent sent, fit for logs, terminals and the audit log: control
/// characters (terminal escapes) become `?`.
pub(crate) fn clean(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

pub(crate) fn labels_text(l: &convoy_wire::Labels) -> String {
    if l.0.is_empty() {
        return "no labels".into();
    }
    l.0.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

pub async fn enroll(
    State(st): State<AppState>,
    headers: HeaderMap,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<crate::PeerAddr>>>,
    body: Result<Json<EnrollRequest>, JsonRejection>,
) -> ApiResult<Json<EnrollResponse>> {
    let now = now_ms();
    let ip = peer.map(|p| p.0 .0 .0.ip());
    let addr = ip.map(|i| i.to_string()).unwrap_or_else(|| "unknown".into());
    // attempts from one address are limited before any token is looked at
    if let Some(ip) = ip {
        if let Err((wait, why)) = st.enrol_limits.take_address(ip) {
            tracing::warn!(%addr, "enrolment rate limited ({why})");
            return Err(ApiError::rate_limited(format!("too many enrolments: at most {why}; retry later"), wait));
        }
    }
    let (token_id, actor, scope) = match auth::authenticate(&st, &headers).await? {
        Caller::Enrol(id) => {
            let Some(e) = st.store.get_enrol_token(&id).await? else {
                return Err(ApiError::unauthorized(format!("enrolment token {id} no longer exists")));
            };
            if let Some(why) = e.unusable(now) {
                return Err(ApiError::unauthorized(why));
            }
            let scope = match &e.labels_json {
                Some(j) => Some(serde_json::from_str::<convoy_wire::Labels>(j).map_err(ApiError::internal)?),
                None => None,
            };
            (Some(id.clone()), format!("enrol-token:{id}"), scope)
        }
        Caller::Operator(u) if u.role == convoy_domain::Role::Admin => (None, u.actor(), None),
        Caller::Operator(u) => {
            return Err(ApiError::forbidden(format!("enrolling agents needs the admin role; {} is {}", u.name, u.role)))
        }
        Caller::Ddi(_) | Caller::Gateway(_) => {
            return Err(ApiError::forbidden("DDI tokens are for the DDI endpoint (/{tenant}/controller/v1/...) only"))
        }
        Caller::Agent(_) | Caller::Grant => {
            return Err(ApiError::forbidden("an enrolled agent cannot enrol again; use the enrolment token"))
        }
    };
    let Json(req) = body?;
    check_inventory(&req.inventory)?;
    let labels = match enrol_labels(scope.as_ref(), &req.inventory.labels) {
        Ok(l) => l,
        Err(e) => {
            // a refused enrolment is audited (bounded by the address limit)
            let note = format!("refused {} from {addr}: {}", clean(&req.inventory.hostname), e.message);
            st.store.append_event(&convoy_store::EventRecord::audit(&actor, "enrolment_refused", note, now)).await?;
            return Err(e);
        }
    };
    if let Err((wait, why)) = st.enrol_limits.take_token(token_id.as_deref().unwrap_or(&actor)) {
        tracing::warn!(token = %actor, %addr, "enrolment rate limited ({why})");
        return Err(ApiError::rate_limited(format!("too many enrolments: at most {why}; retry later"), wait));
    }
    let id = new_id("t");
    let token = new_secret();
    let target = TargetRecord {
        id: id.clone(),
        hostname: req.inventory.hostname.clone(),
        labels_json: serde_json::to_string(&labels).map_err(ApiError::internal)?,
        inventory_json: serde_json::to_string(&req.inventory).map_err(ApiError::internal)?,
        enrolled_at: now,
        last_seen: now,
        warning: String::new(),
    };
    let note = format!("{id} ({}) from {addr} with {}", clean(&req.inventory.hostname), labels_text(&labels));
    let event = convoy_store::EventRecord::audit(&actor, "target_enrolled", note, now);
    match st
        .store
        .enrol_target(&target, &TokenRecord::new(&token, TokenKind::Agent, &id, now), token_id.as_deref(), &event)
        .await
    {
        Ok(()) => {}
        // the token was used up (or revoked) between the check and now
        Err(convoy_store::StoreError::Conflict(why)) => return Err(ApiError::unauthorized(why)),
        Err(e) => return Err(e.into()),
    }
    st.note_site(&id, labels.0.get(SITE_LABEL).map(String::as_str));
    tracing::info!(target_id = %id, hostname = %req.inventory.hostname, by = %actor, "agent enrolled");
    Ok(Json(EnrollResponse { target_id: id, token, server_key: st.key.public_hex().to_owned() }))
}

pub async fn inventory(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<Inventory>, JsonRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let target = auth::agent(&st, &headers).await?;
    let Json(inv) = body?;
    check_inventory(&inv)?;
    save_inventory(&st, &target, &inv).await?;
    Ok(Json(serde_json::json!({"ok": true})))
}

/// Keeps what an agent reports about itself (hostname, platform, disk,
/// releases). Labels and the relay role are the server's: labels it asks
/// for that differ are ignored with a warning, and a relay URL counts only
/// for a target an operator granted the relay role.
async fn save_inventory(st: &AppState, target: &str, inv: &Inventory) -> ApiResult<()> {
    let Some(t) = st.store.get_target(target).await? else {
        return Err(ApiError::unauthorized("this target was removed"));
    };
    let held: convoy_wire::Labels = serde_json::from_str(&t.labels_json).map_err(ApiError::internal)?;
    let differs: Vec<String> =
        inv.labels.0.iter().filter(|(k, v)| held.0.get(*k) != Some(*v)).map(|(k, v)| format!("{k}={v}")).collect();
    let mut warning = if differs.is_empty() {
        String::new()
    } else {
        format!(
            "ignored labels the agent asks for: {} (labels are set by operators: convoy targets label)",
            differs.join(",")
        )
    };
    if st.is_relay(target) {
        st.note_relay_url(target, inv.relay.as_deref());
    } else if let Some(url) = &inv.relay {
        let w = format!("ignored its claim to relay at {url} (relays are granted by operators: convoy relays grant)");
        warning = if warning.is_empty() { w } else { format!("{warning}; {w}") };
    }
    // a refusal of work stays the warning until something else replaces it
    if warning != t.warning && !(warning.is_empty() && t.warning.starts_with("refused work")) {
        if !warning.is_empty() {
            tracing::warn!(target_id = %target, "{warning}");
        }
        st.store.set_target_warning(target, &warning).await?;
    }
    let json = serde_json::to_string(inv).map_err(ApiError::internal)?;
    st.store.update_target(target, &inv.hostname, &json, now_ms()).await?;
    Ok(())
}

#[derive(Deserialize)]
pub struct WorkQuery {
    #[serde(default)]
    wait: u64,
    /// Work the agent already has under way, as `INSTRUCTION-PHASE-ATTEMPT`
    /// keys, comma-separated; it is not sent again.
    #[serde(default)]
    holding: String,
}

/// How often a poll held by a server that is not the scheduler looks for
/// work the scheduler (in another process) may have made.
const FOLLOWER_RECHECK: Duration = Duration::from_secs(2);

/// Most polls one target may hold at once (an agent holds one).
const MAX_HELD_PER_TARGET: usize = 4;

/// Most held keys a poll may name.
const MAX_HOLDING: usize = 1_000;

/// Returns the target's pending work, holding the request open up to
/// `wait` seconds while there is none.
pub async fn work(
    State(st): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<WorkQuery>, QueryRejection>,
) -> ApiResult<Json<WorkResponse>> {
    // a held poll keeps only what it needs: the futures of the steps
    // before and between waits live on the heap while they run
    let target = Box::pin(auth::agent(&st, &headers)).await?;
    drop(headers);
    let Query(q) = q?;
    let holding: std::collections::HashSet<&str> = q.holding.split(',').filter(|k| !k.is_empty()).collect();
    if holding.len() > MAX_HOLDING {
        return Err(ApiError::bad_request(format!("at most {MAX_HOLDING} held work items per poll")));
    }
    let mut changes = st.watch_target(&target, false);
    // an agent holds one poll; past a few, polls of one target are answered
    // at once (a client that opens polls and hangs up cannot pile them up:
    // a held poll's connection is not watched for closing, see serve.rs)
    let wait = if changes.holders > MAX_HELD_PER_TARGET { 0 } else { q.wait.min(MAX_WAIT_SECS) };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    let mut stopping = st.stopping.subscribe();
    st.saw(&target);
    crate::metrics::add(&st.counters.polls, 1);
    loop {
        changes.borrow_and_update();
        let mut work = Box::pin(pending_work(&st, &target)).await?;
        work.retain(|sw| {
            let Some(w) = sw.unverified().map(|s| s.work) else { return true };
            !holding.contains(format!("{}-{}-{}", w.instruction_id, w.phase.as_str(), w.attempt).as_str())
        });
        if !work.is_empty() {
            return Ok(Json(WorkResponse { work }));
        }
        if *stopping.borrow() {
            return Ok(Json(WorkResponse { work: Vec::new() }));
        }
        // a server that does not run the scheduler is not told of the
        // scheduler's moves (unless through the cache bus): it looks again
        // every few seconds
        let now = tokio::time::Instant::now();
        let told = st.bus.get().is_some_and(|b| b.up.load(std::sync::atomic::Ordering::Relaxed));
        let until = if told || st.counters.scheduler_leader.load(std::sync::atomic::Ordering::Relaxed) == 1 {
            deadline
        } else {
            deadline.min(now + FOLLOWER_RECHECK)
        };
        tokio::select! {
            r = tokio::time::timeout_at(until, changes.changed()) => match r {
                Ok(Ok(())) => continue,
                _ if until < deadline => continue,
                _ => return Ok(Json(WorkResponse { work: Vec::new() })),
            },
            _ = stopping.changed() => return Ok(Json(WorkResponse { work: Vec::new() })),
        }
    }
}

/// Where a target fetches content, in order, before the server itself:
/// the relays of its site (by the `site` label; parent relays are theirs
/// to know), then the mirrors in the target's order.
/// Sites come from the server's memory (kept by enrolment and label
/// changes, re-read every few seconds): a poll reads no target row.
fn sources_for(st: &AppState, target: &str) -> Vec<String> {
    let mut out = match st.site_of(target) {
        Some(site) => st.relays_of(&site, target),
        None => Vec::new(),
    };
    out.extend(st.mirrors_for(target));
    out
}

/// A target's pending work, each item signed for it.
async fn pending_work(st: &AppState, target: &str) -> ApiResult<Vec<SignedWork>> {
    Ok(unsigned_work(st, target).await?.into_iter().map(|w| st.sign_work(target, w)).collect())
}

async fn unsigned_work(st: &AppState, target: &str) -> ApiResult<Vec<Work>> {
    let mut out = Vec::new();
    for i in st.store.pending_instructions(target).await? {
        let Some(phase) = i.state.phase() else {
            continue;
        };
        let Some(d) = st.work_deployment(&i.deployment_id).await? else {
            continue;
        };
        if i.state == InstructionState::Created {
            crate::app::reports::delivered(st, target, &i.id, i.attempt);
        }
        let approval = match phase {
            // approvals are read fresh (the cached record's fields above never change)
            convoy_wire::Phase::Stage | convoy_wire::Phase::Activate if d.env.is_some() => {
                match st.store.get_deployment(&d.id).await? {
                    Some(fresh) => crate::app::approvals::envelope(st, &fresh).await?,
                    None => None,
                }
            }
            _ => None,
        };
        out.push(Work {
            instruction_id: i.id,
            deployment_id: d.id.clone(),
            phase,
            attempt: i.attempt,
            app: d.app.clone(),
            version: d.version.clone(),
            digest: d.digest.clone(),
            go_live_at: i.go_live_at,
            previous_version: i.previous_version,
            sources: if phase == convoy_wire::Phase::Stage { sources_for(st, target) } else { Vec::new() },
            preflight: None,
            approval,
            env: d.env.clone(),
        });
    }
    for c in st.store.pending_checks(target).await? {
        let Some(d) = st.store.get_deployment(&c.deployment_id).await? else {
            continue;
        };
        out.push(Work {
            instruction_id: c.id,
            deployment_id: d.id.clone(),
            phase: convoy_wire::Phase::Preflight,
            attempt: 0,
            app: d.app.clone(),
            version: d.version.clone(),
            digest: d.digest.clone(),
            go_live_at: None,
            previous_version: None,
            sources: Vec::new(),
            preflight: Some(crate::app::rollout::preflight_spec(st, &d).await?),
            env: d.env.clone(),
            approval: None,
        });
    }
    Ok(out)
}

pub async fn report(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<Report>, JsonRejection>,
) -> ApiResult<Json<ReportResponse>> {
    let target = auth::agent(&st, &headers).await?;
    let Json(r) = body?;
    if r.metrics.len() > 100
        || r.metrics.iter().any(|(k, v)| k.len() > 64 || v.len() > 256)
        || r.output.len() > 64 * 1024
        || r.instruction_id.len() > 64
    {
        return Err(ApiError::bad_request(
            "report too large: at most 100 metrics (keys ≤ 64, values ≤ 256 bytes) and 64 KiB of output",
        ));
    }
    // stored as sent: a NUL would fail the whole batch it is written in on
    // PostgreSQL (text holds none), and with it other agents' reports
    let kind_text = match &r.report {
        ReportKind::Staged { digest } => digest.as_str(),
        ReportKind::Failed { message } => message.as_str(),
        _ => "",
    };
    if [r.instruction_id.as_str(), r.output.as_str(), kind_text]
        .into_iter()
        .chain(r.metrics.iter().flat_map(|(k, v)| [k.as_str(), v.as_str()]))
        .any(|t| t.contains('\0'))
    {
        return Err(ApiError::bad_request("a report's text may not hold NUL characters"));
    }
    if let Some(inv) = &r.inventory {
        check_inventory(inv)?;
        save_inventory(&st, &target, inv).await?;
    }
    if r.phase == convoy_wire::Phase::Preflight {
        return Ok(Json(crate::app::rollout::preflight_answer(&st, &target, &r).await?));
    }
    // written with others in one transaction; answered once persisted
    Ok(Json(crate::app::reports::submit(&st, target, r).await?))
}

/// Most targets one relay may poll for.
const MAX_SITE_TARGETS: usize = 20_000;

/// `POST /agent/site-poll`: a relay's one long poll for its site's agents
/// (server load grows with sites, not machines). Only a relay may call it,
/// and only for targets with its `site` label; a poll without changes
/// touches no database.
pub async fn site_poll(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<convoy_wire::SitePoll>, JsonRejection>,
) -> ApiResult<Json<convoy_wire::SitePollResponse>> {
    let relay = auth::agent(&st, &headers).await?;
    let Json(req) = body?;
    let site = st.relay_site(&relay).ok_or_else(|| {
        ApiError::forbidden(
            "only a relay may poll for a site; an operator grants that: convoy relays grant TARGET --site SITE",
        )
    })?;
    if req.targets.len() > MAX_SITE_TARGETS {
        return Err(ApiError::bad_request(format!("at most {MAX_SITE_TARGETS} targets per site poll")));
    }
    for t in &req.targets {
        if st.site_of(&t.id).is_none() {
            // enrolled through another server on the database
            if let Some(rec) = st.store.get_target(&t.id).await? {
                let labels: convoy_wire::Labels = serde_json::from_str(&rec.labels_json).map_err(ApiError::internal)?;
                st.note_site(&t.id, labels.0.get(SITE_LABEL).map(String::as_str));
            }
        }
    }
    // targets of other sites (relabelled, removed) are named back, not
    // served; the rest of the site goes on
    let (mine, foreign): (Vec<_>, Vec<_>) =
        req.targets.iter().partition(|t| st.site_of(&t.id).as_deref() == Some(site.as_str()));
    let refused: Vec<String> = foreign.iter().map(|t| t.id.clone()).collect();
    if !refused.is_empty() {
        tracing::info!(relay = %relay, %site, refused = ?refused, "site poll names targets of other sites; not served");
    }
    let reply = |targets: Vec<convoy_wire::SiteWork>| {
        Json(convoy_wire::SitePollResponse { epoch: st.epoch.clone(), targets, refused: refused.clone() })
    };
    if !refused.is_empty() {
        return Ok(reply(Vec::new()));
    }
    let stale = req.epoch.as_deref() != Some(st.epoch.as_str());
    let mut watches: Vec<_> = mine.into_iter().map(|t| (t, st.watch_target(&t.id, true))).collect();
    for (t, _) in &watches {
        st.saw(&t.id);
    }
    crate::metrics::add(&st.counters.site_polls, 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(req.wait.min(MAX_WAIT_SECS));
    let mut stopping = st.stopping.subscribe();
    loop {
        let changed: Vec<usize> =
            (0..watches.len()).filter(|i| stale || *watches[*i].1.borrow() != watches[*i].0.gen).collect();
        if !changed.is_empty() {
            let mut out = Vec::with_capacity(changed.len());
            for i in changed {
                let (t, rx) = &mut watches[i];
                let gen = *rx.borrow_and_update();
                out.push(convoy_wire::SiteWork { id: t.id.clone(), gen, work: pending_work(&st, &t.id).await? });
            }
            return Ok(reply(out));
        }
        if watches.is_empty() || *stopping.borrow() {
            return Ok(reply(Vec::new()));
        }
        let any = futures_util::future::select_all(watches.iter_mut().map(|(_, rx)| Box::pin(rx.changed())));
        tokio::select! {
            r = tokio::time::timeout_at(deadline, any) => if r.is_err() {
                return Ok(reply(Vec::new()));
            },
            _ = stopping.changed() => {}
        }
    }
}

/// A relay URL must be plain `http(s)://host:port[/path]`, at most 256 bytes.
fn reqwest_like_url(url: &str) -> Option<()> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"))?;
    (url.len() <= 256 && !rest.is_empty() && !rest.contains(|c: char| c.is_whitespace() || c.is_control()))
        .then_some(())
}

/// `GET /agent/me`: who the agent is to the server, the server's key, and
/// a fresh read grant for relays and mirrors.
pub async fn me(State(st): State<AppState>, headers: HeaderMap) -> ApiResult<Json<convoy_wire::AgentMe>> {
    let target = auth::agent(&st, &headers).await?;
    let t = st.store.get_target(&target).await?.ok_or_else(|| ApiError::unauthorized("this target was removed"))?;
    let labels: convoy_wire::Labels = serde_json::from_str(&t.labels_json).map_err(ApiError::internal)?;
    st.note_site(&target, labels.0.get(SITE_LABEL).map(String::as_str));
    let (grant, grant_expires_at) = st.grant_for(&target);
    Ok(Json(convoy_wire::AgentMe {
        target_id: target.clone(),
        labels,
        server_key: st.key.public_hex().to_owned(),
        grant,
        grant_expires_at,
        relay_site: st.relay_site(&target),
        now: now_ms(),
    }))
}

/// `POST /agent/refused`: an agent refused work that did not verify (a
/// relay or something on the way altered or invented it). Audited, shown
/// in the target's status and counted.
pub async fn refused(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<convoy_wire::Refusal>, JsonRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let target = auth::agent(&st, &headers).await?;
    let Json(r) = body?;
    if r.source.len() > 256 || r.reason.len() > 1024 || r.instruction_id.as_ref().is_some_and(|i| i.len() > 64) {
        return Err(ApiError::bad_request("refusal too large: source ≤ 256, reason ≤ 1024, instruction id ≤ 64 bytes"));
    }
    let what = format!(
        "refused work{} from {}: {}",
        r.instruction_id.as_deref().map(|i| format!(" ({})", clean(i))).unwrap_or_default(),
        clean(&r.source),
        clean(&r.reason)
    );
    crate::metrics::add(&st.counters.refused_work, 1);
    // one audit event per target per few seconds, however often it says so
    if !st.note_refusal(&target) {
        return Ok(Json(serde_json::json!({"ok": true})));
    }
    tracing::warn!(target_id = %target, "{what}");
    st.store.set_target_warning(&target, &what).await?;
    st.store
        .append_event(&convoy_store::EventRecord::audit(&format!("agent:{target}"), "work_refused", what, now_ms()))
        .await?;
    Ok(Json(serde_json::json!({"ok": true})))
}

/// Most instructions whose progress is remembered at once.
const MAX_PROGRESS: usize = 100_000;

/// Staging progress, kept in memory for `status` and `watch`; never persisted.
pub async fn progress(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<ProgressReport>, JsonRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let target = auth::agent(&st, &headers).await?;
    let Json(p) = body?;
    if p.progress.done_bytes > p.progress.total_bytes || p.instruction_id.len() > 64 {
        return Err(ApiError::bad_request(
            "progress: done_bytes exceeds total_bytes, or the instruction id is malformed",
        ));
    }
    let mut map = st.progress.lock().expect("progress lock");
    if map.len() < MAX_PROGRESS || map.contains_key(&p.instruction_id) {
        map.insert(p.instruction_id, (target, p.progress));
    }
    Ok(Json(serde_json::json!({"ok": true})))
}
