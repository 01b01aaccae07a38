//! The scheduler (P-scheduler): advances every unsettled deployment with
//! the domain's `advance` and writes the result; settles preflight and
//! expires unconfirmed requests. Stateless between ticks, so a restarted
//! server resumes from what the database says. Servers sharing a database
//! take turns through a lease in it: only the holder acts.

use std::time::Duration;

use convoy_domain::{
    advance, overdue, Deadlines, DeploymentState as D, DeploymentView, InstrAction, InstructionState as S, Tally,
    WavePlan,
};
use convoy_store::{BulkMove, DeploymentMove, DeploymentRecord, InstructionUpdate, WaveFilter};

use crate::state::{now_ms, AppState};

/// How often the scheduler looks even without a wake-up.
const TICK: Duration = Duration::from_millis(250);

/// The scheduler lease: held this long, renewed when a third is left.
pub const LEASE_MS: i64 = 10_000;
const LEASE_NAME: &str = "scheduler";

const PENDING: [S; 4] = [S::Created, S::Sent, S::Received, S::Staged];

/// The instruction moves that go with a deployment transition.
pub fn bulk_for(action: InstrAction, note: &str) -> Vec<BulkMove> {
    let cancel = |waves| BulkMove {
        from: PENDING.to_vec(),
        to: S::Canceled,
        go_live_at: None,
        note: format!("canceled ({note})"),
        waves,
    };
    let back = |waves| BulkMove {
        from: vec![S::Succeeded, S::Activating],
        to: S::RollingBack,
        go_live_at: None,
        note: format!("roll back ({note})"),
        waves,
    };
    match action {
        InstrAction::None => Vec::new(),
        InstrAction::ActivateWave { wave, at } => vec![BulkMove {
            from: vec![S::Staged],
            to: S::Activating,
            go_live_at: Some(at),
            note: format!("go live ({note})"),
            waves: WaveFilter::Only(wave),
        }],
        InstrAction::RollBackLive => vec![back(WaveFilter::All), cancel(WaveFilter::All)],
        InstrAction::RollBackWave { wave } => vec![back(WaveFilter::Only(wave)), cancel(WaveFilter::After(wave))],
        InstrAction::CancelPending => vec![cancel(WaveFilter::All)],
    }
}

/// One pass over the unsettled deployments. Returns how many moved.
pub async fn tick(st: &AppState) -> Result<usize, convoy_store::StoreError> {
    let mut moved = 0;
    let mut touched: Vec<String> = Vec::new();
    for d in st.store.active_deployments().await? {
        let now = now_ms();
        // a request is bound by its environment's policy as it is now
        let d = match crate::workflow::under_current_policy(st, d).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e.message, "reading an environment's policy failed");
                continue;
            }
        };
        match d.state {
            D::Preflight => match crate::workflow::settle_preflight(st, &d, now).await {
                Ok(true) => moved += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(deployment = %d.id, error = %e.message, "preflight step failed"),
            },
            D::AwaitingConfirmation if d.expires_at.is_some_and(|t| now >= t) => {
                moved += expire(st, &d, "not confirmed in time; request it again", now).await?;
            }
            D::AwaitingApproval
                if crate::workflow::policy_of(&d)
                    .is_ok_and(|(p, _)| now >= d.updated_at + p.approval_ttl_secs as i64 * 1000) =>
            {
                moved += expire(st, &d, "not approved in time; request it again", now).await?;
            }
            D::AwaitingApproval | D::AwaitingConfirmation => {}
            _ => moved += step(st, &d, now, &mut touched).await?,
        }
    }
    if moved > 0 {
        crate::metrics::add(&st.counters.scheduler_transitions, moved as u64);
        st.changed(touched.iter().map(String::as_str));
    }
    Ok(moved)
}

/// Ends a request that waited too long (for approvals or confirmation),
/// if it is still as seen, and tells the environment's webhook.
async fn expire(st: &AppState, d: &DeploymentRecord, why: &str, now: i64) -> Result<usize, convoy_store::StoreError> {
    let m = DeploymentMove {
        from_revision: Some(d.revision),
        ..DeploymentMove::new(d.state, D::Expired, why, "scheduler", now)
    };
    if !st.store.transition_deployment(&d.id, &m).await? {
        return Ok(0);
    }
    if let Ok((policy, _)) = crate::workflow::policy_of(d) {
        crate::notify::send(st, &policy, "expired", d, "scheduler", "");
    }
    Ok(1)
}

/// Advances one deployment past staging: deadlines, the gate, the waves.
async fn step(
    st: &AppState,
    d: &DeploymentRecord,
    now: i64,
    touched: &mut Vec<String>,
) -> Result<usize, convoy_store::StoreError> {
    let mut moved = 0;
    let deadlines = Deadlines { stage_by: d.stage_deadline, activate_within_ms: d.activate_timeout_ms };
    // a corrupt stored plan or policy halts this deployment's steps, loudly;
    // it never becomes a default (one wave of every target)
    let plan: Vec<WavePlan> = if d.plan_json.is_empty() {
        Vec::new()
    } else {
        match serde_json::from_str(&d.plan_json) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(deployment = %d.id, error = %e, "stored plan is corrupt; not advancing this deployment");
                return Ok(0);
            }
        }
    };
    let Ok((policy, windows)) = crate::workflow::policy_of(d) else {
        tracing::error!(deployment = %d.id, "stored policy is corrupt; not advancing this deployment");
        return Ok(0);
    };
    let waves = plan.len().max(1);
    let mut tallies = vec![Tally::default(); waves];
    let instructions = st.store.list_instructions(&d.id).await?;
    for i in &instructions {
        let mut state = i.state;
        if let Some((to, note)) = overdue(d.state, i.state, i.go_live_at, deadlines, now) {
            let up = InstructionUpdate { to: Some(to), note: note.clone(), ..Default::default() };
            if st.store.transition_instruction(&i.id, i.state, i.attempt, &up, "scheduler", now).await? {
                tracing::warn!(deployment = %d.id, instruction = %i.id, target_id = %i.target_id, "{note}");
                state = to;
                moved += 1;
                touched.push(i.target_id.clone());
            }
        }
        tallies[(i.wave.max(1) as usize - 1).min(waves - 1)].add(state);
    }
    let view = DeploymentView {
        state: d.state,
        go_live_at: d.go_live_at,
        max_failures: d.max_failures,
        wave: d.wave,
        waves: &plan,
        gap_ms: policy.wave_gap_secs as i64 * 1000,
        windows: &windows,
        on_breach: policy.on_breach,
    };
    let Some(next) = advance(&view, &tallies, now) else {
        return Ok(moved);
    };
    // a paused deployment starts no new wave (rollbacks and failures go on)
    if matches!(next.action, InstrAction::ActivateWave { .. }) {
        if let Some(by) = st.store.paused_by(&d.id).await? {
            tracing::debug!(deployment = %d.id, paused_by = %by, "paused: not starting the next wave");
            return Ok(moved);
        }
    }
    let bulk = bulk_for(next.action, &next.note);
    let (wave, go_live_at) = match next.action {
        InstrAction::ActivateWave { wave, at } => (Some(wave), Some(at)),
        _ => (None, None),
    };
    let m = DeploymentMove {
        bulk: &bulk,
        from_wave: Some(d.wave),
        wave,
        go_live_at,
        ..DeploymentMove::new(d.state, next.to, &next.note, "scheduler", now)
    };
    if st.store.transition_deployment(&d.id, &m).await? {
        tracing::info!(deployment = %d.id, from = d.state.as_str(), to = next.to.as_str(), "{}", next.note);
        moved += 1;
        if !bulk.is_empty() {
            touched.extend(instructions.iter().map(|i| i.target_id.clone()));
        }
    }
    Ok(moved)
}

/// Runs until the process ends; acts only while this process holds the
/// scheduler lease.
pub async fn run(st: AppState) {
    let mut held_until = 0i64;
    loop {
        let now = now_ms();
        if now >= held_until - LEASE_MS / 3 {
            match st.store.hold_lease(LEASE_NAME, &st.epoch, now, LEASE_MS).await {
                Ok(true) => {
                    if held_until <= now {
                        tracing::info!(holder = %st.epoch, "this server now runs the scheduler");
                    }
                    held_until = now + LEASE_MS;
                }
                Ok(false) => {
                    if held_until > now {
                        tracing::warn!("another server took the scheduler lease");
                    }
                    held_until = 0;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "renewing the scheduler lease failed");
                }
            }
        }
        let leader = now_ms() < held_until;
        st.counters.scheduler_leader.store(u64::from(leader), std::sync::atomic::Ordering::Relaxed);
        if leader {
            if let Err(e) = tick(&st).await {
                tracing::warn!(error = %e, "scheduler pass failed; retrying");
            }
        }
        let wait = if leader { TICK } else { Duration::from_millis(LEASE_MS as u64 / 4) };
        let _ = tokio::time::timeout(wait, st.wake.notified()).await;
    }
}
