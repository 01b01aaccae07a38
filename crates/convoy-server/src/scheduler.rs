//! The scheduler: advances every unsettled deployment with the domain's
//! `advance` and writes the result. Stateless between ticks, so a restarted
//! server resumes from what the database says.

use std::time::Duration;

use convoy_domain::{advance, overdue, Deadlines, DeploymentView, InstrAction, InstructionState as S, Tally};
use convoy_store::{BulkMove, DeploymentMove, InstructionUpdate};

use crate::state::{now_ms, AppState};

/// How often the scheduler looks even without a wake-up.
const TICK: Duration = Duration::from_millis(250);

/// The instruction moves that go with a deployment transition.
pub fn bulk_for(action: InstrAction, note: &str) -> Option<BulkMove> {
    match action {
        InstrAction::None => None,
        InstrAction::ActivateStaged { at } => Some(BulkMove {
            from: vec![S::Staged],
            to: S::Activating,
            go_live_at: Some(at),
            note: format!("go live ({note})"),
        }),
        InstrAction::RollBackLive => Some(BulkMove {
            from: vec![S::Succeeded, S::Activating],
            to: S::RollingBack,
            go_live_at: None,
            note: format!("roll back ({note})"),
        }),
        InstrAction::CancelPending => Some(BulkMove {
            from: vec![S::Created, S::Sent, S::Received, S::Staged],
            to: S::Canceled,
            go_live_at: None,
            note: format!("canceled ({note})"),
        }),
    }
}

/// One pass over the unsettled deployments. Returns how many moved.
pub async fn tick(st: &AppState) -> Result<usize, convoy_store::StoreError> {
    let mut moved = 0;
    let mut touched: Vec<String> = Vec::new();
    for d in st.store.active_deployments().await? {
        let now = now_ms();
        let deadlines = Deadlines { stage_by: d.stage_deadline, activate_within_ms: d.activate_timeout_ms };
        let mut tally = Tally::default();
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
            tally.add(state);
        }
        let view = DeploymentView { state: d.state, go_live_at: d.go_live_at, max_failures: d.max_failures };
        let Some(step) = advance(view, tally, now) else {
            continue;
        };
        let bulk = bulk_for(step.action, &step.note);
        if st
            .store
            .transition_deployment(
                &d.id,
                &DeploymentMove {
                    from: d.state,
                    to: step.to,
                    note: &step.note,
                    bulk: bulk.as_ref(),
                    actor: "scheduler",
                    now,
                },
            )
            .await?
        {
            tracing::info!(deployment = %d.id, from = d.state.as_str(), to = step.to.as_str(), "{}", step.note);
            moved += 1;
            if bulk.is_some() {
                touched.extend(instructions.iter().map(|i| i.target_id.clone()));
            }
        }
    }
    if moved > 0 {
        crate::metrics::add(&st.counters.scheduler_transitions, moved as u64);
        st.changed(touched.iter().map(String::as_str));
    }
    Ok(moved)
}

/// Runs until the process ends.
pub async fn run(st: AppState) {
    loop {
        if let Err(e) = tick(&st).await {
            tracing::warn!(error = %e, "scheduler pass failed; retrying");
        }
        let _ = tokio::time::timeout(TICK, st.wake.notified()).await;
    }
}
