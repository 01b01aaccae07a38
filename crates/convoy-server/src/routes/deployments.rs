//! Creating, reading and rolling back deployments. A deployment and one
//! instruction per selected target are written before anything acts on them.

use std::collections::BTreeMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use convoy_domain::{request_rollback, AppName, DeploymentState, InstructionState, Selector, Tally, Version};
use convoy_store::{new_id, DeploymentMove, DeploymentRecord, InstructionRecord};
use convoy_wire::{Counts, DeployRequest, DeploymentDetail, DeploymentInfo, EventInfo, InstructionInfo, Labels};

use crate::auth;
use crate::error::{ApiError, ApiResult};
use crate::scheduler::bulk_for;
use crate::state::{now_ms, AppState};

/// How long after go-live a target may stay silent, unless the request says.
const DEFAULT_ACTIVATE_TIMEOUT_SECS: u64 = 900;

/// How far in the past a go-live time may be (clock skew, typing time).
const PAST_GRACE_MS: i64 = 60_000;

pub fn counts(instrs: &[InstructionRecord]) -> Counts {
    let mut t = Tally::default();
    for i in instrs {
        t.add(i.state);
    }
    Counts {
        total: t.total(),
        // every target past the gate: staged, then live or rolled back
        staged: t.staged + t.activating + t.succeeded + t.rolling_back + t.rolled_back,
        live: t.succeeded,
        failed: t.failed,
        rolled_back: t.rolled_back,
    }
}

pub fn info(d: &DeploymentRecord, instrs: &[InstructionRecord]) -> DeploymentInfo {
    DeploymentInfo {
        id: d.id.clone(),
        app: d.app.clone(),
        version: d.version.clone(),
        digest: d.digest.clone(),
        selector: d.selector.clone(),
        state: d.state.as_str().to_owned(),
        go_live_at: d.go_live_at,
        max_failures: d.max_failures,
        stage_deadline: d.stage_deadline,
        activate_timeout_secs: (d.activate_timeout_ms / 1000) as u64,
        created_by: d.created_by.clone(),
        created_at: d.created_at,
        updated_at: d.updated_at,
        note: d.note.clone(),
        counts: counts(instrs),
    }
}

pub async fn create(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<DeployRequest>, JsonRejection>,
) -> ApiResult<Json<DeploymentInfo>> {
    let user = auth::operator(&st, &headers).await?;
    let Json(req) = body?;
    let app = AppName::parse(&req.app).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let version = Version::parse(&req.version).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let selector = Selector::parse(&req.selector).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let now = now_ms();
    if let Some(at) = req.at {
        if at < now - PAST_GRACE_MS {
            return Err(ApiError::bad_request(format!(
                "go-live time is {}s in the past; give a future time, or none to go live as soon as every copy matches",
                (now - at) / 1000
            )));
        }
    }
    for (what, v, max) in [
        ("stage_timeout_secs", req.stage_timeout_secs, 30 * 86_400),
        ("activate_timeout_secs", req.activate_timeout_secs, 7 * 86_400),
    ] {
        if v.is_some_and(|v| v == 0 || v > max) {
            return Err(ApiError::bad_request(format!("{what} must be between 1 and {max}")));
        }
    }
    let release = st
        .store
        .get_release(app.as_str(), version.as_str())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("release {app}@{version} not found; publish it first")))?;
    let mut chosen = Vec::new();
    for t in st.store.list_targets().await? {
        let info = super::target_info(&t)?;
        if selector.matches(&info.labels) {
            chosen.push(info);
        }
    }
    if chosen.is_empty() {
        return Err(ApiError::bad_request(format!("selector {:?} matches no enrolled target", req.selector)));
    }
    let busy = st.store.busy_targets(app.as_str()).await?;
    if let Some(t) = chosen.iter().find(|t| busy.contains(&t.id)) {
        return Err(ApiError::conflict(format!(
            "target {} ({}) is already in an unfinished deployment of {app}; wait for it or roll it back",
            t.id, t.hostname
        )));
    }
    let dep = DeploymentRecord {
        id: new_id("d"),
        app: app.to_string(),
        version: version.to_string(),
        digest: release.digest.clone(),
        selector: selector.0.to_string(),
        state: DeploymentState::Staging,
        go_live_at: req.at,
        max_failures: req.max_failures,
        stage_deadline: req.stage_timeout_secs.map(|s| now + s as i64 * 1000),
        activate_timeout_ms: req.activate_timeout_secs.unwrap_or(DEFAULT_ACTIVATE_TIMEOUT_SECS) as i64 * 1000,
        created_by: user.clone(),
        created_at: now,
        updated_at: now,
        note: format!("staging {app}@{version} to {}", convoy_domain::targets(chosen.len() as u64)),
    };
    let instrs: Vec<InstructionRecord> = chosen
        .iter()
        .map(|t| InstructionRecord {
            id: new_id("i"),
            deployment_id: dep.id.clone(),
            target_id: t.id.clone(),
            state: InstructionState::Created,
            attempt: 0,
            previous_version: t.inventory.current.get(app.as_str()).cloned(),
            go_live_at: None,
            reported_digest: None,
            metrics_json: "{}".into(),
            output: String::new(),
            note: "stage the release".into(),
            updated_at: now,
        })
        .collect();
    st.store.create_deployment(&dep, &instrs, &format!("user:{user}")).await?;
    tracing::info!(deployment = %dep.id, app = %app, version = %version, targets = instrs.len(), "deployment created");
    st.changed(instrs.iter().map(|i| i.target_id.as_str()));
    // make the deltas this fleet will ask for while agents read manifests
    let pairs: std::collections::BTreeSet<String> =
        instrs.iter().filter_map(|i| i.previous_version.clone()).filter(|v| *v != dep.version).collect();
    for from in pairs {
        let (st, app, to) = (st.clone(), dep.app.clone(), dep.version.clone());
        tokio::spawn(async move {
            if let Err(e) = super::deltas::prepare(&st, &app, &from, &to).await {
                tracing::debug!(error = %e.message, %from, %to, "no delta prepared");
            }
        });
    }
    Ok(Json(info(&dep, &instrs)))
}

pub async fn list(State(st): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Vec<DeploymentInfo>>> {
    auth::operator(&st, &headers).await?;
    let mut out = Vec::new();
    for d in st.store.list_deployments(100).await? {
        let instrs = st.store.list_instructions(&d.id).await?;
        out.push(info(&d, &instrs));
    }
    Ok(Json(out))
}

async fn find(st: &AppState, id: &str) -> ApiResult<DeploymentRecord> {
    st.store.get_deployment(id).await?.ok_or_else(|| ApiError::not_found(format!("deployment {id} not found")))
}

pub async fn get(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<DeploymentDetail>> {
    auth::operator(&st, &headers).await?;
    let d = find(&st, &id).await?;
    let instrs = st.store.list_instructions(&id).await?;
    let targets: BTreeMap<String, _> = st.store.list_targets().await?.into_iter().map(|t| (t.id.clone(), t)).collect();
    let mut out = Vec::new();
    for i in &instrs {
        let (hostname, labels, last_seen) = match targets.get(&i.target_id) {
            Some(t) => {
                (t.hostname.clone(), serde_json::from_str::<Labels>(&t.labels_json).unwrap_or_default(), t.last_seen)
            }
            None => (String::new(), Labels::default(), 0),
        };
        out.push(InstructionInfo {
            id: i.id.clone(),
            target_id: i.target_id.clone(),
            hostname,
            labels,
            state: i.state.as_str().to_owned(),
            attempt: i.attempt,
            previous_version: i.previous_version.clone(),
            reported_digest: i.reported_digest.clone(),
            metrics: serde_json::from_str(&i.metrics_json).unwrap_or_default(),
            output: i.output.clone(),
            note: i.note.clone(),
            updated_at: i.updated_at,
            last_seen,
            progress: i
                .state
                .phase()
                .filter(|p| *p == convoy_domain::Phase::Stage)
                .and_then(|_| st.progress.lock().expect("progress lock").get(&i.id).cloned())
                .filter(|(t, _)| *t == i.target_id)
                .map(|(_, p)| p),
        });
    }
    out.sort_by(|a, b| (&a.hostname, &a.target_id).cmp(&(&b.hostname, &b.target_id)));
    let events = st
        .store
        .events(&id)
        .await?
        .into_iter()
        .map(|e| EventInfo {
            at: e.at,
            deployment_id: e.deployment_id,
            instruction_id: e.instruction_id,
            from: e.from_state,
            to: e.to_state,
            actor: e.actor,
            note: e.note,
        })
        .collect();
    let froms: std::collections::BTreeSet<&String> =
        instrs.iter().filter_map(|i| i.previous_version.as_ref()).filter(|v| **v != d.version).collect();
    let mut changes = Vec::new();
    for from in froms {
        match super::deltas::changes(&st, &d.app, from, &d.version).await {
            Ok(c) => changes.push(c),
            Err(e) => tracing::debug!(error = %e.message, %from, "no change description"),
        }
    }
    Ok(Json(DeploymentDetail { deployment: info(&d, &instrs), instructions: out, events, changes }))
}

pub async fn rollback(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<DeploymentInfo>> {
    let user = auth::operator(&st, &headers).await?;
    let d = find(&st, &id).await?;
    let step = request_rollback(d.state).map_err(|m| ApiError::conflict(format!("cannot roll back {id}: {m}")))?;
    let bulk = bulk_for(step.action, "rollback requested by operator");
    let actor = format!("user:{user}");
    let m = DeploymentMove {
        from: d.state,
        to: step.to,
        note: &step.note,
        bulk: bulk.as_ref(),
        actor: &actor,
        now: now_ms(),
    };
    let moved = st.store.transition_deployment(&id, &m).await?;
    if !moved {
        return Err(ApiError::conflict(format!("deployment {id} changed state meanwhile; try again")));
    }
    tracing::info!(deployment = %id, %user, "rollback requested");
    let instrs = st.store.list_instructions(&id).await?;
    st.changed(instrs.iter().map(|i| i.target_id.as_str()));
    let d = find(&st, &id).await?;
    Ok(Json(info(&d, &instrs)))
}
