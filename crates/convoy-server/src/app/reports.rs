//! Agent reports (P-states) go through a queue and are written in batches:
//! one read of the reported instructions, and one transaction of set-wise
//! statements for up to [`BATCH`] reports, so a burst of reports costs few
//! statements and commits and never holds up polls (which read only). A
//! report is answered only once its move is persisted.

use std::collections::{BTreeMap, HashMap};

use convoy_domain::{on_report, InstructionState, InstructionView, Outcome, ReportKind};
use convoy_store::{DeploymentRecord, InstructionMove, InstructionUpdate};
use convoy_wire::{Report, ReportResponse};
use tokio::sync::{mpsc, oneshot};

use super::{AppError, AppResult};
use crate::state::{now_ms, AppState};

/// Most reports written in one transaction.
pub const BATCH: usize = 500;
/// Reports waiting to be written; senders wait when it is full.
pub const QUEUE: usize = 20_000;

pub struct Queued {
    target: String,
    report: Report,
    /// `None`: the server's own created→sent move (nobody waits for it).
    reply: Option<oneshot::Sender<AppResult<ReportResponse>>>,
}

pub type Queue = mpsc::Sender<Queued>;

/// Queues a report and waits until it is written (or found stale).
pub async fn submit(st: &AppState, target: String, report: Report) -> AppResult<ReportResponse> {
    let (reply, answer) = oneshot::channel();
    st.reports
        .send(Queued { target, report, reply: Some(reply) })
        .await
        .map_err(|_| AppError::internal("the report writer has stopped"))?;
    answer.await.map_err(|_| AppError::internal("the report writer dropped a report"))?
}

/// Records, in the writer's next batch, that work for a created
/// instruction went out to its target (created→sent); a poll does not
/// wait for it. Dropped when the queue is full: the instruction stays
/// created and goes out again with the next poll, which the agent
/// recognises as work it holds.
pub fn delivered(st: &AppState, target: &str, instruction: &str, attempt: u32) {
    let report = Report {
        instruction_id: instruction.to_owned(),
        phase: convoy_wire::Phase::Stage,
        attempt,
        report: ReportKind::Received,
        metrics: Default::default(),
        output: String::new(),
        inventory: None,
    };
    let _ = st.reports.try_send(Queued { target: target.to_owned(), report, reply: None });
}

/// The writer: takes what is queued, up to [`BATCH`] at a time.
pub async fn run(st: AppState, mut rx: mpsc::Receiver<Queued>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let items = std::mem::take(&mut batch);
        write(&st, items).await;
    }
}

struct Pending {
    reply: Option<oneshot::Sender<AppResult<ReportResponse>>>,
    /// Index into the moves, or the answer already known.
    outcome: Result<usize, AppResult<ReportResponse>>,
    note: String,
    target: String,
    to: InstructionState,
    deployment: String,
}

async fn write(st: &AppState, items: Vec<Queued>) {
    let mut moves: Vec<InstructionMove> = Vec::new();
    let mut pending: Vec<Pending> = Vec::with_capacity(items.len());
    let mut deployments: HashMap<String, DeploymentRecord> = HashMap::new();
    // what this batch already did to an instruction, so two reports for one
    // instruction in a batch see each other
    let mut seen: HashMap<String, (InstructionState, u32, String)> = HashMap::new();
    // every reported instruction in one read
    let ids: Vec<String> = items.iter().map(|q| q.report.instruction_id.clone()).collect();
    let read = st.store.get_instructions(&ids).await.map(|rows| {
        rows.into_iter().map(|i| (i.id.clone(), i)).collect::<HashMap<String, convoy_store::InstructionRecord>>()
    });
    for q in items {
        let r = &q.report;
        let mut p = Pending {
            reply: q.reply,
            outcome: Err(Ok(ReportResponse { accepted: false, note: String::new() })),
            note: String::new(),
            target: q.target.clone(),
            to: InstructionState::Created,
            deployment: String::new(),
        };
        let found = match &read {
            Ok(rows) => rows.get(&r.instruction_id).filter(|i| i.target_id == q.target).cloned(),
            Err(e) => {
                p.outcome = Err(Err(AppError::internal(e)));
                pending.push(p);
                continue;
            }
        };
        let Some(i) = found else {
            p.outcome =
                Err(Err(AppError::not_found(format!("instruction {} not found for this target", r.instruction_id))));
            pending.push(p);
            continue;
        };
        if !deployments.contains_key(&i.deployment_id) {
            match st.store.get_deployment(&i.deployment_id).await {
                Ok(Some(d)) => {
                    deployments.insert(d.id.clone(), d);
                }
                Ok(None) => {
                    p.outcome = Err(Err(AppError::internal("instruction without deployment")));
                    pending.push(p);
                    continue;
                }
                Err(e) => {
                    p.outcome = Err(Err(e.into()));
                    pending.push(p);
                    continue;
                }
            }
        }
        let d = &deployments[&i.deployment_id];
        let (state, attempt, metrics_json) =
            seen.get(&i.id).cloned().unwrap_or((i.state, i.attempt, i.metrics_json.clone()));
        if p.reply.is_none() {
            // the server's own record of delivery: created→sent, if still created
            if state == InstructionState::Created && attempt == r.attempt {
                let up = InstructionUpdate {
                    to: Some(InstructionState::Sent),
                    note: "delivered to agent".into(),
                    ..Default::default()
                };
                moves.push(InstructionMove {
                    id: i.id.clone(),
                    from: state,
                    from_attempt: attempt,
                    up,
                    actor: "server".into(),
                });
                seen.insert(i.id.clone(), (InstructionState::Sent, attempt, metrics_json));
            }
            continue;
        }
        let outcome = on_report(InstructionView { state, attempt }, r.phase, r.attempt, &r.report, &d.digest);
        let (to, new_attempt, note) = match outcome {
            Outcome::Stale(note) => {
                crate::metrics::add(&st.counters.reports_stale, 1);
                p.outcome = Err(Ok(ReportResponse { accepted: false, note }));
                pending.push(p);
                continue;
            }
            Outcome::Move { to, attempt, note } => (to, attempt, note),
        };
        if let Some(bad) = r.metrics.get("source_failures") {
            tracing::warn!(target_id = %q.target, instruction = %i.id, "content source reported failing: {bad}");
            crate::metrics::add(&st.counters.source_failures, 1);
        }
        let mut metrics: BTreeMap<String, String> = serde_json::from_str(&metrics_json).unwrap_or_default();
        metrics.extend(r.metrics.clone());
        let metrics_json = serde_json::to_string(&metrics).unwrap_or_else(|_| "{}".into());
        let up = InstructionUpdate {
            to: Some(to),
            attempt: Some(new_attempt),
            reported_digest: match &r.report {
                ReportKind::Staged { digest } => Some(digest.clone()),
                _ => None,
            },
            metrics_json: Some(metrics_json.clone()),
            output: (!r.output.is_empty()).then(|| r.output.clone()),
            note: note.clone(),
            ..Default::default()
        };
        moves.push(InstructionMove {
            id: i.id.clone(),
            from: state,
            from_attempt: attempt,
            up,
            actor: format!("agent:{}", q.target),
        });
        seen.insert(i.id.clone(), (to, new_attempt, metrics_json));
        p.outcome = Ok(moves.len() - 1);
        p.note = note;
        p.to = to;
        p.deployment = d.id.clone();
        pending.push(p);
    }
    let written = if moves.is_empty() {
        Ok(Vec::new())
    } else {
        // counted when it carries agents' reports (not only the server's
        // own records of delivery)
        if pending.iter().any(|p| p.outcome.is_ok()) {
            crate::metrics::add(&st.counters.report_batches, 1);
        }
        st.store.transition_instructions(&moves, now_ms()).await
    };
    let mut touched = Vec::new();
    for p in pending {
        let answer = match p.outcome {
            Err(known) => known,
            Ok(k) => match &written {
                Err(e) => Err(AppError::internal(e)),
                Ok(done) => {
                    let moved = done.get(k).copied().unwrap_or(false);
                    crate::metrics::add(
                        if moved { &st.counters.reports_accepted } else { &st.counters.reports_stale },
                        1,
                    );
                    if moved {
                        if p.to != InstructionState::Received {
                            st.progress.lock().expect("progress lock").remove(&moves[k].id);
                        }
                        tracing::info!(deployment = %p.deployment, instruction = %moves[k].id, target_id = %p.target, from = moves[k].from.as_str(), to = p.to.as_str(), "{}", p.note);
                        touched.push(p.target.clone());
                    }
                    Ok(ReportResponse { accepted: moved, note: p.note })
                }
            },
        };
        if let Some(reply) = p.reply {
            let _ = reply.send(answer);
        }
    }
    if !touched.is_empty() {
        st.changed(touched.iter().map(String::as_str));
    }
}
