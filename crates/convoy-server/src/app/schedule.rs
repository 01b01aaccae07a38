//! The scheduler's step over every unsettled deployment: requests are
//! bound by their environment's current policy, preflight settles, requests
//! waiting too long expire (the request machine), and deployments under
//! way advance with the domain's `advance` (deadlines, the gate, waves,
//! breaches), each move written with its instructions' moves in one
//! compare-and-set.

use convoy_domain::{
    advance, overdue, request_step, Deadlines, DeploymentState as D, DeploymentView, InstrAction,
    InstructionState as S, RequestEvent, RequestStep, Tally, WavePlan,
};
use convoy_store::{BulkMove, DeploymentMove, DeploymentRecord, InstructionRecord, InstructionUpdate, WaveFilter};

use super::rollout::{in_scope, instruction, policy_of, request_rules, settle_preflight, under_current_policy};
use super::{AppResult, Rules};
use crate::state::{now_ms, AppState};

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
        // a late target still staging when its wave goes live is left out
        InstrAction::ActivateWave { wave, at } => vec![
            BulkMove {
                from: vec![S::Staged],
                to: S::Activating,
                go_live_at: Some(at),
                note: format!("go live ({note})"),
                waves: WaveFilter::Only(wave),
            },
            BulkMove {
                from: vec![S::Created, S::Sent, S::Received],
                to: S::Canceled,
                go_live_at: None,
                note: "not staged when its wave went live; left out".into(),
                waves: WaveFilter::Only(wave),
            },
        ],
        InstrAction::RollBackLive => vec![back(WaveFilter::All), cancel(WaveFilter::All)],
        InstrAction::RollBackWave { wave } => vec![back(WaveFilter::Only(wave)), cancel(WaveFilter::After(wave))],
        InstrAction::CancelPending => vec![cancel(WaveFilter::All)],
        InstrAction::CancelAll => vec![
            cancel(WaveFilter::All),
            BulkMove {
                from: vec![S::Activating],
                to: S::Canceled,
                go_live_at: None,
                note: format!("canceled before its go-live ({note})"),
                waves: WaveFilter::All,
            },
        ],
    }
}

/// The tally of each planned wave (one wave without a plan).
pub fn tallies(plan: &[WavePlan], instrs: &[InstructionRecord]) -> Vec<Tally> {
    tally(plan, instrs.iter().map(|i| (i.wave, i.state, 1)))
}

/// [`tallies`] from counts per (deployment, wave, state).
pub fn tallies_counted(plan: &[WavePlan], counts: &[(String, u32, S, u32)]) -> Vec<Tally> {
    tally(plan, counts.iter().map(|(_, wave, state, n)| (*wave, *state, *n)))
}

/// Adds up (wave, state, count); waves past the plan count in its last.
fn tally(plan: &[WavePlan], counts: impl Iterator<Item = (u32, S, u32)>) -> Vec<Tally> {
    let waves = plan.len().max(1);
    let mut out = vec![Tally::default(); waves];
    for (wave, state, n) in counts {
        out[(wave.max(1) as usize - 1).min(waves - 1)].add_n(state, n);
    }
    out
}

/// What the domain's `advance` reads of a deployment.
pub fn view<'a>(d: &DeploymentRecord, r: &'a Rules) -> DeploymentView<'a> {
    DeploymentView {
        state: d.state,
        go_live_at: d.go_live_at,
        max_failures: d.max_failures,
        wave: d.wave,
        waves: &r.plan,
        gap_ms: r.policy.wave_gap_secs as i64 * 1000,
        windows: &r.windows,
        on_breach: r.policy.on_breach,
    }
}

/// One pass over the unsettled deployments. Returns how many moved. A
/// deployment whose step fails (its stored plan or policy is corrupt, say)
/// is logged and skipped; the others go on.
pub async fn tick(st: &AppState) -> AppResult<usize> {
    let mut moved = 0;
    let mut touched: Vec<String> = Vec::new();
    for d in st.store.active_deployments().await? {
        let id = d.id.clone();
        match one(st, d, &mut touched).await {
            Ok(n) => moved += n,
            Err(e @ super::AppError::Corrupt(_)) => {
                tracing::error!(deployment = %id, error = %e, "not advancing this deployment")
            }
            Err(e) => tracing::warn!(deployment = %id, error = %e, "scheduler step failed; retrying"),
        }
    }
    if moved > 0 {
        crate::metrics::add(&st.counters.scheduler_transitions, moved as u64);
        st.changed(touched.iter().map(String::as_str));
    }
    Ok(moved)
}

async fn one(st: &AppState, d: DeploymentRecord, touched: &mut Vec<String>) -> AppResult<usize> {
    let now = now_ms();
    // a request is bound by its environment's policy as it is now
    let d = under_current_policy(st, d).await?;
    if d.state == D::Preflight {
        return Ok(usize::from(settle_preflight(st, &d, now).await?));
    }
    if d.state.is_request() {
        let (policy, _) = policy_of(&d)?;
        let due = match d.state {
            D::AwaitingConfirmation => d.expires_at.is_some_and(|t| now >= t),
            _ => now >= d.updated_at + policy.approval_ttl_secs as i64 * 1000,
        };
        if !due {
            return Ok(0);
        }
        return match request_step(d.state, &RequestEvent::TimedOut, &request_rules(&policy)) {
            RequestStep::Move { to, note } => expire(st, &d, to, &note, now).await,
            _ => Ok(0),
        };
    }
    step(st, &d, now, touched).await
}

/// Ends a request that waited too long (for approvals or confirmation),
/// if it is still as seen, and tells the environment's webhook.
async fn expire(st: &AppState, d: &DeploymentRecord, to: D, why: &str, now: i64) -> AppResult<usize> {
    let m =
        DeploymentMove { from_revision: Some(d.revision), ..DeploymentMove::new(d.state, to, why, "scheduler", now) };
    if !st.store.transition_deployment(&d.id, &m).await? {
        return Ok(0);
    }
    if let Ok((policy, _)) = policy_of(d) {
        crate::notify::send(st, &policy, "expired", d, "scheduler", "");
    }
    Ok(1)
}

/// Advances one deployment past staging: deadlines, the gate, the waves.
/// A corrupt stored plan or policy stops here (an error), never becomes a
/// default (one wave of every target).
///
/// The step counts the instructions by wave and state in the database; it
/// reads them whole only when some may be overdue, late targets may join,
/// or a move must name the targets it touched (a deployment to many
/// targets is stepped after every batch of reports).
async fn step(st: &AppState, d: &DeploymentRecord, now: i64, touched: &mut Vec<String>) -> AppResult<usize> {
    let rules = Rules::of(d)?;
    let mut moved = 0;
    let deadlines = Deadlines { stage_by: d.stage_deadline, activate_within_ms: d.activate_timeout_ms };
    let counts = st.store.instruction_counts(std::slice::from_ref(&d.id)).await?;
    let any = |states: &[S]| counts.iter().any(|(_, _, s, n)| *n > 0 && states.contains(s));
    let may_be_overdue = match d.state {
        D::Staging => deadlines.stage_by.is_some_and(|t| now >= t) && any(&[S::Created, S::Sent, S::Received]),
        D::Scheduled | D::Activating => any(&[S::Activating]),
        _ => false,
    };
    let may_join = rules.policy.include_late
        && matches!(d.state, D::Scheduled | D::Activating)
        && d.wave < rules.plan.len().max(1) as u32;
    let mut instructions =
        if may_be_overdue || may_join { Some(st.store.list_instructions(&d.id).await?) } else { None };
    for i in instructions.iter_mut().flatten() {
        if let Some((to, note)) = overdue(d.state, i.state, i.go_live_at, deadlines, now) {
            let up = InstructionUpdate { to: Some(to), note: note.clone(), ..Default::default() };
            if st.store.transition_instruction(&i.id, i.state, i.attempt, &up, "scheduler", now).await? {
                tracing::warn!(deployment = %d.id, instruction = %i.id, target_id = %i.target_id, "{note}");
                i.state = to;
                moved += 1;
                touched.push(i.target_id.clone());
            }
        }
    }
    // late joiners are counted from the next pass on
    if let Some(list) = instructions.as_deref().filter(|_| may_join) {
        if include_late(st, d, &rules, list, now, touched).await? {
            return Ok(moved + 1);
        }
    }
    let waves = match &instructions {
        Some(list) => tallies(&rules.plan, list),
        None => tallies_counted(&rules.plan, &counts),
    };
    let Some(next) = advance(&view(d, &rules), &waves, now) else {
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
            let list = match instructions {
                Some(list) => Ok(list),
                None => st.store.list_instructions(&d.id).await,
            };
            match list {
                Ok(list) => touched.extend(list.into_iter().map(|i| i.target_id)),
                // the move stands: every held poll looks again instead
                Err(e) => {
                    tracing::warn!(deployment = %d.id, error = %e, "reading the moved targets failed; waking every poll");
                    st.wake_all();
                }
            }
        }
    }
    Ok(moved)
}

/// Targets that match the selector but enrolled after the rollout was
/// planned join its last wave, after the consistency gate and while that
/// wave has not gone live (policy `include_late`). A target that was
/// checked in preflight (and so failed it, or was not planned) never
/// joins, nor one another deployment of the app holds. One move,
/// compare-and-set on the current wave.
async fn include_late(
    st: &AppState,
    d: &DeploymentRecord,
    rules: &Rules,
    instructions: &[InstructionRecord],
    now: i64,
    touched: &mut Vec<String>,
) -> AppResult<bool> {
    let last = rules.plan.len().max(1) as u32;
    if !matches!(d.state, D::Scheduled | D::Activating) || d.wave >= last {
        return Ok(false);
    }
    let planned: std::collections::BTreeSet<&str> = instructions.iter().map(|i| i.target_id.as_str()).collect();
    let late: Vec<convoy_wire::TargetInfo> =
        in_scope(st, d).await?.into_iter().filter(|t| !planned.contains(t.id.as_str())).collect();
    if late.is_empty() {
        return Ok(false);
    }
    let checked: std::collections::BTreeSet<String> =
        st.store.list_checks(&d.id).await?.into_iter().map(|c| c.target_id).collect();
    let busy = st.store.busy_targets(&d.app).await?;
    let late: Vec<convoy_wire::TargetInfo> =
        late.into_iter().filter(|t| !checked.contains(&t.id) && !busy.contains(&t.id)).collect();
    if late.is_empty() {
        return Ok(false);
    }
    let planned_at = rules.plan.last().and_then(|w| w.at);
    let new: Vec<InstructionRecord> = late
        .iter()
        .map(|t| InstructionRecord {
            note: "enrolled after planning: joins the last wave (goes live with it if staged by then)".into(),
            ..instruction(d, t, last, planned_at, now)
        })
        .collect();
    let hosts: Vec<&str> = late.iter().map(|t| t.hostname.as_str()).collect();
    let note = format!(
        "{} enrolled after planning joined wave {last} (policy include_late): {}",
        convoy_domain::targets(late.len() as u64),
        hosts.join(", ")
    );
    let m = DeploymentMove {
        from_wave: Some(d.wave),
        new_instructions: &new,
        ..DeploymentMove::new(d.state, d.state, &note, "scheduler", now)
    };
    if !st.store.transition_deployment(&d.id, &m).await? {
        return Ok(false);
    }
    tracing::info!(deployment = %d.id, late = new.len(), "late targets joined the last wave");
    touched.extend(new.iter().map(|i| i.target_id.clone()));
    Ok(true)
}
