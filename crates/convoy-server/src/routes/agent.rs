//! The agent side of the API: enrolment, long-polled work, reports.
//! An agent sees only its own instructions.

use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use convoy_domain::{InstructionState, ReportKind};
use convoy_store::{hash_token, new_id, new_secret, InstructionUpdate, TargetRecord, TokenKind, TokenRecord};
use convoy_wire::{
    EnrollRequest, EnrollResponse, Inventory, ProgressReport, Report, ReportResponse, Work, WorkResponse,
};
use serde::Deserialize;

use crate::auth::{self, Caller};
use crate::error::{ApiError, ApiResult};
use crate::state::{now_ms, AppState};

/// Longest a poll is held open.
const MAX_WAIT_SECS: u64 = 60;

fn check_inventory(inv: &Inventory) -> ApiResult<()> {
    inv.labels.validate().map_err(|e| ApiError::bad_request(e.to_string()))?;
    if inv.hostname.is_empty() || inv.hostname.len() > 253 {
        return Err(ApiError::bad_request("hostname must be 1-253 characters"));
    }
    Ok(())
}

pub async fn enroll(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<EnrollRequest>, JsonRejection>,
) -> ApiResult<Json<EnrollResponse>> {
    match auth::authenticate(&st, &headers).await? {
        Caller::Enrol => {}
        Caller::Operator(u) if u.role == convoy_domain::Role::Admin => {}
        Caller::Operator(u) => {
            return Err(ApiError::forbidden(format!("enrolling agents needs the admin role; {} is {}", u.name, u.role)))
        }
        Caller::Agent(_) => {
            return Err(ApiError::forbidden("an enrolled agent cannot enrol again; use the enrolment token"))
        }
    }
    let Json(req) = body?;
    check_inventory(&req.inventory)?;
    let now = now_ms();
    let id = new_id("t");
    let token = new_secret();
    st.store
        .insert_target(&TargetRecord {
            id: id.clone(),
            hostname: req.inventory.hostname.clone(),
            labels_json: serde_json::to_string(&req.inventory.labels).map_err(ApiError::internal)?,
            inventory_json: serde_json::to_string(&req.inventory).map_err(ApiError::internal)?,
            enrolled_at: now,
            last_seen: now,
        })
        .await?;
    st.store
        .put_token(&TokenRecord {
            hash: hash_token(&token),
            kind: TokenKind::Agent,
            subject: id.clone(),
            created_at: now,
        })
        .await?;
    tracing::info!(target_id = %id, hostname = %req.inventory.hostname, "agent enrolled");
    Ok(Json(EnrollResponse { target_id: id, token }))
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

async fn save_inventory(st: &AppState, target: &str, inv: &Inventory) -> ApiResult<()> {
    if let Some(url) = &inv.relay {
        if reqwest_like_url(url).is_none() {
            return Err(ApiError::bad_request(format!("relay URL {url:?} is not http(s)://HOST:PORT")));
        }
    }
    st.note_relay(target, inv.labels.0.get(SITE_LABEL).map(String::as_str), inv.relay.as_deref());
    let labels = serde_json::to_string(&inv.labels).map_err(ApiError::internal)?;
    let json = serde_json::to_string(inv).map_err(ApiError::internal)?;
    st.store.update_target(target, &inv.hostname, &labels, &json, now_ms()).await?;
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

/// Most held keys a poll may name.
const MAX_HOLDING: usize = 1_000;

/// Returns the target's pending work, holding the request open up to
/// `wait` seconds while there is none.
pub async fn work(
    State(st): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<WorkQuery>, QueryRejection>,
) -> ApiResult<Json<WorkResponse>> {
    let target = auth::agent(&st, &headers).await?;
    let Query(q) = q?;
    let holding: std::collections::HashSet<&str> = q.holding.split(',').filter(|k| !k.is_empty()).collect();
    if holding.len() > MAX_HOLDING {
        return Err(ApiError::bad_request(format!("at most {MAX_HOLDING} held work items per poll")));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(q.wait.min(MAX_WAIT_SECS));
    let mut changes = st.watch_target(&target);
    let mut stopping = st.stopping.subscribe();
    st.saw(&target);
    crate::metrics::add(&st.counters.polls, 1);
    loop {
        changes.borrow_and_update();
        let mut work = pending_work(&st, &target).await?;
        work.retain(|w| !holding.contains(format!("{}-{}-{}", w.instruction_id, w.phase.as_str(), w.attempt).as_str()));
        if !work.is_empty() {
            return Ok(Json(WorkResponse { work }));
        }
        if *stopping.borrow() {
            return Ok(Json(WorkResponse { work: Vec::new() }));
        }
        // a server that does not run the scheduler is not told of the
        // scheduler's moves: it looks again every few seconds
        let now = tokio::time::Instant::now();
        let until = if st.counters.scheduler_leader.load(std::sync::atomic::Ordering::Relaxed) == 1 {
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

/// The label that groups targets into sites served by a relay.
pub const SITE_LABEL: &str = "site";

/// Where a target fetches content, in order, before the server itself:
/// the relays of its site (by the `site` label; parent relays are theirs
/// to know), then the mirrors in the target's order.
async fn sources_for(st: &AppState, target: &str) -> ApiResult<Vec<String>> {
    let Some(t) = st.store.get_target(target).await? else { return Ok(Vec::new()) };
    let labels: convoy_wire::Labels = serde_json::from_str(&t.labels_json).map_err(ApiError::internal)?;
    let mut out = match labels.0.get(SITE_LABEL) {
        Some(site) => st.relays_of(site, target),
        None => Vec::new(),
    };
    out.extend(st.mirrors_for(target));
    Ok(out)
}

async fn pending_work(st: &AppState, target: &str) -> ApiResult<Vec<Work>> {
    let mut out = Vec::new();
    for i in st.store.pending_instructions(target).await? {
        let Some(phase) = i.state.phase() else {
            continue;
        };
        let Some(d) = st.store.get_deployment(&i.deployment_id).await? else {
            continue;
        };
        if i.state == InstructionState::Created {
            let up = InstructionUpdate {
                to: Some(InstructionState::Sent),
                note: "delivered to agent".into(),
                ..Default::default()
            };
            st.store.transition_instruction(&i.id, i.state, i.attempt, &up, "server", now_ms()).await?;
        }
        out.push(Work {
            instruction_id: i.id,
            deployment_id: d.id,
            phase,
            attempt: i.attempt,
            app: d.app,
            version: d.version,
            digest: d.digest,
            go_live_at: i.go_live_at,
            previous_version: i.previous_version,
            sources: if phase == convoy_wire::Phase::Stage { sources_for(st, target).await? } else { Vec::new() },
            preflight: None,
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
            preflight: Some(crate::workflow::preflight_spec(st, &d).await?),
        });
    }
    Ok(out)
}

/// Settles a target's preflight check from its report.
async fn preflight_report(st: &AppState, target: &str, r: &Report) -> ApiResult<Json<ReportResponse>> {
    let c = st.store.get_check(&r.instruction_id).await?.filter(|c| c.target_id == target);
    let Some(c) = c else {
        return Err(ApiError::not_found(format!("preflight {} not found for this target", r.instruction_id)));
    };
    let (state, note) = match &r.report {
        ReportKind::Succeeded => ("passed", "preflight passed".to_owned()),
        ReportKind::Failed { message } => ("failed", format!("preflight failed: {message}")),
        other => {
            return Ok(Json(ReportResponse { accepted: false, note: format!("{other:?} does not settle a preflight") }))
        }
    };
    let done = convoy_store::CheckRecord {
        state: state.into(),
        result_json: serde_json::to_string(&r.metrics).map_err(ApiError::internal)?,
        output: r.output.clone(),
        updated_at: now_ms(),
        ..c
    };
    let moved = st.store.finish_check(&done, &format!("agent:{target}")).await?;
    if moved {
        tracing::info!(deployment = %done.deployment_id, target_id = %target, "{note}");
        st.wake.notify_one();
    }
    Ok(Json(ReportResponse { accepted: moved, note }))
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
    if let Some(inv) = &r.inventory {
        check_inventory(inv)?;
        save_inventory(&st, &target, inv).await?;
    }
    if r.phase == convoy_wire::Phase::Preflight {
        return preflight_report(&st, &target, &r).await;
    }
    // written with others in one transaction; answered once persisted
    Ok(Json(crate::reports::submit(&st, target, r).await?))
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
        ApiError::forbidden("only a relay (an agent with --relay and a site label) may poll for a site")
    })?;
    if req.targets.len() > MAX_SITE_TARGETS {
        return Err(ApiError::bad_request(format!("at most {MAX_SITE_TARGETS} targets per site poll")));
    }
    if let Some(t) = req.targets.iter().find(|t| st.site_of(&t.id).as_deref() != Some(site.as_str())) {
        return Err(ApiError::forbidden(format!("target {} is not in site {site}", t.id)));
    }
    let stale = req.epoch.as_deref() != Some(st.epoch.as_str());
    let mut watches: Vec<_> = req.targets.iter().map(|t| (t, st.watch_target(&t.id))).collect();
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
            return Ok(Json(convoy_wire::SitePollResponse { epoch: st.epoch.clone(), targets: out }));
        }
        if watches.is_empty() || *stopping.borrow() {
            return Ok(Json(convoy_wire::SitePollResponse { epoch: st.epoch.clone(), targets: Vec::new() }));
        }
        let any = futures_util::future::select_all(watches.iter_mut().map(|(_, rx)| Box::pin(rx.changed())));
        tokio::select! {
            r = tokio::time::timeout_at(deadline, any) => if r.is_err() {
                return Ok(Json(convoy_wire::SitePollResponse { epoch: st.epoch.clone(), targets: Vec::new() }));
            },
            _ = stopping.changed() => {}
        }
    }
}

/// A relay URL must be plain `http(s)://host:port[/path]`, at most 256 bytes.
fn reqwest_like_url(url: &str) -> Option<()> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"))?;
    (url.len() <= 256 && !rest.is_empty() && !rest.contains(char::is_whitespace)).then_some(())
}

/// `GET /agent/me`: who this agent token belongs to (relays check the
/// tokens of the agents they serve with it).
pub async fn me(State(st): State<AppState>, headers: HeaderMap) -> ApiResult<Json<serde_json::Value>> {
    let target = auth::agent(&st, &headers).await?;
    Ok(Json(serde_json::json!({ "target_id": target })))
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
