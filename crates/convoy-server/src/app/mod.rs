//! The application layer: what convoy does, below any transport. Submit,
//! revise, approve/reject, preflight, confirm, rollout, pause/resume/retry,
//! rollback, the report batch and the scheduler's step, over the `Store`
//! trait, with its own error type. HTTP routes, the NATS listener and the
//! scheduler loop are adapters: they parse, check the caller's base role,
//! and call in here.
//!
//! This layer never sees HTTP (no status codes, headers or extractors), and
//! decides nothing the domain's state machines decide: it gathers facts,
//! asks `convoy_domain`, and writes the answer with one compare-and-set.

pub mod approvals;
pub mod content;
pub mod operations;
pub mod reports;
pub mod requests;
pub mod rollout;
pub mod schedule;
#[cfg(test)]
mod tests;
pub mod tuf;

use convoy_domain::{InstructionState, Policy, Tally, WavePlan, Window};
use convoy_store::{DeploymentRecord, InstructionRecord, StoreError, TargetRecord};
use convoy_wire::{Counts, DeploymentInfo, Inventory, Labels, TargetInfo};

use crate::auth::User;
use crate::state::{now_ms, AppState};

/// The label that names a target's site (relays serve one site).
pub const SITE_LABEL: &str = "site";

/// Why an application step did not happen. Nothing was changed.
#[derive(Debug)]
pub enum AppError {
    /// The input is wrong; saying what would be right.
    Invalid(String),
    NotFound(String),
    /// The caller may not do this.
    Forbidden(String),
    /// Not in this state (or it changed meanwhile).
    Conflict(String),
    /// Stored data does not decode (a plan, a policy): never a default.
    Corrupt(String),
    /// The store failed, or something that should not fail did.
    Internal(String),
}

pub type AppResult<T> = Result<T, AppError>;

impl AppError {
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::Invalid(m.into())
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::NotFound(m.into())
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::Forbidden(m.into())
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::Conflict(m.into())
    }
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self::Internal(cause.to_string())
    }
    pub fn corrupt(what: &str, d: &str, cause: impl std::fmt::Display) -> Self {
        Self::Corrupt(format!("stored {what} of {d} is corrupt: {cause}"))
    }
    /// A refusal a person should see in the audit log (not a fault).
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Forbidden(_) | Self::Conflict(_))
    }
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Invalid(m) | Self::NotFound(m) | Self::Forbidden(m) | Self::Conflict(m) | Self::Corrupt(m) => {
                f.write_str(m)
            }
            Self::Internal(m) => write!(f, "internal error: {m}"),
        }
    }
}

impl std::error::Error for AppError {}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => Self::Conflict(m),
            other => Self::Internal(other.to_string()),
        }
    }
}

/// A deployment's stored rules, decoded once: the policy (the default for
/// deployments made without an environment), its windows, and the plan.
/// Corrupt stored JSON is an error, never a default.
pub struct Rules {
    pub policy: Policy,
    pub windows: Vec<Window>,
    pub plan: Vec<WavePlan>,
}

impl Rules {
    pub fn of(d: &DeploymentRecord) -> AppResult<Rules> {
        let policy: Policy = if d.policy_json.is_empty() {
            Policy::default()
        } else {
            serde_json::from_str(&d.policy_json).map_err(|e| AppError::corrupt("policy", &d.id, e))?
        };
        let windows = policy.validate().map_err(|e| AppError::corrupt("policy", &d.id, e))?;
        let plan = if d.plan_json.is_empty() {
            Vec::new()
        } else {
            serde_json::from_str(&d.plan_json).map_err(|e| AppError::corrupt("plan", &d.id, e))?
        };
        Ok(Rules { policy, windows, plan })
    }
}

/// A deployment's counts from its instructions counted per state.
pub fn counts_of(states: &[(InstructionState, u32)]) -> Counts {
    let mut t = Tally::default();
    for (s, n) in states {
        t.add_n(*s, *n);
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

/// A deployment as the API shows it.
pub fn info(d: &DeploymentRecord, instrs: &[InstructionRecord]) -> DeploymentInfo {
    let states: Vec<(InstructionState, u32)> = instrs.iter().map(|i| (i.state, 1)).collect();
    info_counted(d, &states)
}

/// [`info`] from instructions counted per state.
pub fn info_counted(d: &DeploymentRecord, states: &[(InstructionState, u32)]) -> DeploymentInfo {
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
        counts: counts_of(states),
        env: d.env.clone(),
        reason: d.reason.clone(),
        wave: d.wave,
        revision: d.revision,
        expires_at: d.expires_at,
        paused_by: None,
        plan: (!d.plan_name.is_empty()).then(|| convoy_wire::PlanRef {
            name: d.plan_name.clone(),
            entry: d.plan_entry.clone(),
            digest: d.plan_digest.clone(),
        }),
    }
}

/// An event of the store as the API shows it.
pub fn event_info(e: convoy_store::EventRecord) -> convoy_wire::EventInfo {
    convoy_wire::EventInfo {
        at: e.at,
        deployment_id: e.deployment_id,
        instruction_id: e.instruction_id,
        from: e.from_state,
        to: e.to_state,
        actor: e.actor,
        note: e.note,
    }
}

pub fn target_info(t: &TargetRecord, relay_site: Option<String>) -> AppResult<TargetInfo> {
    let labels: Labels = serde_json::from_str(&t.labels_json).map_err(|e| AppError::corrupt("labels", &t.id, e))?;
    let inventory: Inventory =
        serde_json::from_str(&t.inventory_json).map_err(|e| AppError::corrupt("inventory", &t.id, e))?;
    Ok(TargetInfo {
        id: t.id.clone(),
        hostname: t.hostname.clone(),
        labels,
        inventory,
        enrolled_at: t.enrolled_at,
        last_seen: t.last_seen,
        warning: t.warning.clone(),
        relay_site,
    })
}

/// How many of a target's instructions `GET /targets/{id}` shows.
pub const TARGET_HISTORY: u32 = 50;

/// A target and its last deployments, most recently changed first.
pub async fn target_detail(st: &AppState, id: &str) -> AppResult<convoy_wire::TargetDetail> {
    let t = st.store.get_target(id).await?.ok_or_else(|| AppError::not_found(format!("target {id} not found")))?;
    let target = target_info(&t, st.relay_site(id))?;
    let rows = st.store.target_instructions(id, TARGET_HISTORY).await?;
    let mut deployments = std::collections::HashMap::new();
    let mut history = Vec::with_capacity(rows.len());
    for i in rows {
        if !deployments.contains_key(&i.deployment_id) {
            let d = st.store.get_deployment(&i.deployment_id).await?;
            deployments.insert(i.deployment_id.clone(), d);
        }
        let Some(d) = &deployments[&i.deployment_id] else { continue };
        history.push(convoy_wire::TargetHistoryEntry {
            deployment_id: d.id.clone(),
            app: d.app.clone(),
            version: d.version.clone(),
            deployment_state: d.state.as_str().to_owned(),
            metrics: serde_json::from_str(&i.metrics_json).unwrap_or_default(),
            instruction_id: i.id,
            state: i.state.as_str().to_owned(),
            attempt: i.attempt,
            wave: i.wave,
            previous_version: i.previous_version,
            reported_digest: i.reported_digest,
            note: i.note,
            updated_at: i.updated_at,
        });
    }
    Ok(convoy_wire::TargetDetail { target, history })
}

/// An audit filter's actor as events name it: `alice` means `user:alice`;
/// `agent:ID`, `user:NAME`, `scheduler` and `server` stay as given.
pub fn audit_actor(a: &str) -> String {
    if a.contains(':') || a == "scheduler" || a == "server" {
        a.to_owned()
    } else {
        format!("user:{a}")
    }
}

/// The deployment `id`, or not found.
pub async fn find(st: &AppState, id: &str) -> AppResult<DeploymentRecord> {
    st.store.get_deployment(id).await?.ok_or_else(|| AppError::not_found(format!("deployment {id} not found")))
}

/// Records a refused attempt (who, what, why) in the audit log of the
/// deployment it was about, and passes the refusal on. One record per
/// user, action and deployment every 10 s, so refusals cannot flood the log.
pub async fn audited<T>(st: &AppState, user: &User, action: &str, id: &str, r: AppResult<T>) -> AppResult<T> {
    let Err(e) = r else { return r };
    if e.is_refusal()
        && id.len() <= 64
        && st.store.get_deployment(id).await?.is_some()
        && st.note_refusal(&format!("audit\0{}\0{action}\0{id}", user.name))
    {
        let ev = convoy_store::EventRecord {
            deployment_id: id.to_owned(),
            ..convoy_store::EventRecord::audit(&user.actor(), "refused", format!("{action} refused: {e}"), now_ms())
        };
        st.store.append_event(&ev).await?;
        tracing::info!(deployment = %id, user = %user.name, action, "refused: {e}");
    }
    Err(e)
}

/// The caller must hold at least `role` for `what`.
pub fn need_role(user: &User, role: convoy_domain::Role, what: &str) -> AppResult<()> {
    if user.role < role {
        return Err(AppError::forbidden(format!(
            "{what} needs the {role} role or higher; {} is {}",
            user.name, user.role
        )));
    }
    Ok(())
}
