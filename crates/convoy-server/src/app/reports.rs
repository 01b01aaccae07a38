//! Agent reports (P-states) go through a queue and are written in batches:
//! one read of the reported instructions, and one transaction of set-wise
//! statements for up to [`BATCH`] reports, so a burst of reports costs few
//! statements and commits and never holds up polls (which read only). A
//! report is answered only once its move is persisted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use convoy_domain::{on_report, InstructionState, InstructionView, Outcome, ReportKind};
use convoy_store::{DeploymentRecord, InstructionMove, InstructionUpdate, WriterHold};
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
    /// When it arrived (`convoy_report_write_seconds`).
    at: std::time::Instant,
}

pub type Queue = mpsc::Sender<Queued>;

/// Queues a report and waits until it is written (or found stale).
pub async fn submit(st: &AppState, target: String, report: Report) -> AppResult<ReportResponse> {
    let (reply, answer) = oneshot::channel();
    st.reports
        .send(Queued { target, report, reply: Some(reply), at: std::time::Instant::now() })
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
    let _ =
        st.reports.try_send(Queued { target: target.to_owned(), report, reply: None, at: std::time::Instant::now() });
}

/// The writer: takes what is queued, up to [`BATCH`] at a time (all that
/// came while the last batch was written, so batches grow with the load).
///
/// While reports keep coming, the writer keeps the store's writing
/// connection from one batch to the next (no hand-over to the pool and
/// back between them). It gives it back as soon as the queue is empty,
/// and once it has held it for [`HOLD_MAX`] (looked at between writes),
/// so that the store's other writers (SQLite has one connection for them
/// all) wait no longer than that and one batch's judging and write.
pub async fn run(st: AppState, mut rx: mpsc::Receiver<Queued>) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut known = HashMap::new();
    let mut hold = WriterHold::default();
    let mut held_since = std::time::Instant::now();
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        if !hold.is_held() {
            held_since = std::time::Instant::now();
        }
        let (judged, moves) = judge(&st, std::mem::take(&mut batch), &known, true).await;
        let written = write(&st, &mut hold, moves).await;
        let again = finish(&st, judged, written, &mut known);
        if !again.is_empty() {
            // judged from memory that was behind: again, from reads
            if held_since.elapsed() >= HOLD_MAX {
                hold.release();
            }
            let (judged, moves) = judge(&st, again, &known, false).await;
            let written = write(&st, &mut hold, moves).await;
            finish(&st, judged, written, &mut known);
        }
        if rx.is_empty() || held_since.elapsed() >= HOLD_MAX {
            hold.release();
        }
    }
}

/// Longest the writer keeps the store's writing connection through a run
/// of batches before it lets the store's other writers have it.
const HOLD_MAX: std::time::Duration = std::time::Duration::from_millis(20);

/// A batch's moves, which of them landed, and how long the write took
/// (ms).
type Written = (Vec<InstructionMove>, convoy_store::Result<Vec<bool>>, f64);

/// Writes a batch's moves in one transaction.
async fn write(st: &AppState, hold: &mut WriterHold, moves: Vec<InstructionMove>) -> Written {
    let started = std::time::Instant::now();
    let written = if moves.is_empty() {
        Ok(Vec::new())
    } else {
        st.store.transition_instructions_held(hold, &moves, now_ms()).await
    };
    (moves, written, started.elapsed().as_secs_f64() * 1e3)
}

/// What the writer last wrote of an instruction, so that the next report
/// on it needs no read. It is exact unless another writer (the scheduler,
/// an operator, another server) moved the instruction since; then the
/// guarded update finds another state and the report is judged again from
/// a fresh read. Nothing is answered from it alone. Shared text, so that a
/// copy costs no allocation.
#[derive(Clone)]
struct Known {
    target: Arc<str>,
    deployment: Arc<str>,
    state: InstructionState,
    attempt: u32,
    metrics_json: Arc<str>,
}

/// Most instructions the writer remembers (a few hundred bytes each).
const KNOWN: usize = 20_000;

impl From<convoy_store::InstructionRecord> for Known {
    fn from(i: convoy_store::InstructionRecord) -> Self {
        Known {
            target: i.target_id.into(),
            deployment: i.deployment_id.into(),
            state: i.state,
            attempt: i.attempt,
            metrics_json: i.metrics_json.into(),
        }
    }
}

struct Pending {
    queued: Option<Queued>,
    /// Index into the moves, the answer already known, or `None`: judged
    /// from what the writer remembered, which turned out stale (judged
    /// again from a read).
    outcome: Result<usize, Option<AppResult<ReportResponse>>>,
    note: String,
    to: InstructionState,
    deployment: Option<Arc<DeploymentRecord>>,
}

/// A judged batch, waiting for its moves to be written.
struct Judged {
    started: std::time::Instant,
    size: usize,
    judge_ms: f64,
    /// Whether each move was judged from memory (not a read).
    remembered: Vec<bool>,
    pending: Vec<Pending>,
    /// What the batch makes of each instruction it moves (and whether
    /// judged from memory).
    seen: HashMap<String, (Known, bool)>,
    trust_known: bool,
}

/// Judges a batch: from what this batch already did to an instruction,
/// then memory (only when `trust_known`), then one read of all the
/// others. Returns the judged batch and the moves to write.
async fn judge(
    st: &AppState,
    items: Vec<Queued>,
    known: &HashMap<String, Known>,
    trust_known: bool,
) -> (Judged, Vec<InstructionMove>) {
    let started = std::time::Instant::now();
    let size = items.len();
    let mut moves: Vec<InstructionMove> = Vec::new();
    let mut remembered: Vec<bool> = Vec::new();
    let mut pending: Vec<Pending> = Vec::with_capacity(items.len());
    let mut deployments: HashMap<Arc<str>, Arc<DeploymentRecord>> = HashMap::new();
    // what this batch already did to an instruction, so two reports for one
    // instruction in a batch see each other (and whether from memory)
    let mut seen: HashMap<String, (Known, bool)> = HashMap::new();
    // instructions whose reports are judged again: later ones too, in order
    let mut again: std::collections::HashSet<String> = Default::default();
    // every reported instruction not remembered, in one read
    let mut ids: Vec<String> = items
        .iter()
        .map(|q| &q.report.instruction_id)
        .filter(|id| !(trust_known && known.contains_key(*id)))
        .cloned()
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let read = if ids.is_empty() {
        Ok(HashMap::new())
    } else {
        st.store
            .get_instructions(&ids)
            .await
            .map(|rows| rows.into_iter().map(|i| (i.id.clone(), Known::from(i))).collect::<HashMap<String, Known>>())
    };
    for q in items {
        let r = &q.report;
        let mut p = Pending {
            queued: None,
            outcome: Err(Some(Ok(ReportResponse { accepted: false, note: String::new() }))),
            note: String::new(),
            to: InstructionState::Created,
            deployment: None,
        };
        if again.contains(&r.instruction_id) {
            p.outcome = Err(None);
            p.queued = Some(q);
            pending.push(p);
            continue;
        }
        let base = match seen.get(&r.instruction_id) {
            Some((k, from_memory)) => Some((k.clone(), *from_memory)),
            None => known.get(&r.instruction_id).filter(|_| trust_known).map(|k| (k.clone(), true)),
        };
        let base = match base {
            Some(b) => Some(b),
            None => match &read {
                Ok(rows) => rows.get(&r.instruction_id).map(|k| (k.clone(), false)),
                Err(e) => {
                    p.outcome = Err(Some(Err(AppError::internal(e))));
                    p.queued = Some(q);
                    pending.push(p);
                    continue;
                }
            },
        };
        // an instruction's target never changes: memory is exact here
        let Some((base, from_memory)) = base.filter(|(k, _)| *k.target == *q.target) else {
            p.outcome = Err(Some(Err(AppError::not_found(format!(
                "instruction {} not found for this target",
                r.instruction_id
            )))));
            p.queued = Some(q);
            pending.push(p);
            continue;
        };
        if !deployments.contains_key(&base.deployment) {
            match st.work_deployment(&base.deployment).await {
                Ok(Some(d)) => {
                    deployments.insert(base.deployment.clone(), d);
                }
                Ok(None) => {
                    p.outcome = Err(Some(Err(AppError::internal("instruction without deployment"))));
                    p.queued = Some(q);
                    pending.push(p);
                    continue;
                }
                Err(e) => {
                    p.outcome = Err(Some(Err(e.into())));
                    p.queued = Some(q);
                    pending.push(p);
                    continue;
                }
            }
        }
        let d = deployments[&base.deployment].clone();
        let (state, attempt) = (base.state, base.attempt);
        if q.reply.is_none() {
            // the server's own record of delivery: created→sent, if still
            // created (memory may be behind: the database decides)
            if from_memory || (state == InstructionState::Created && attempt == r.attempt) {
                let up = InstructionUpdate {
                    to: Some(InstructionState::Sent),
                    note: "delivered to agent".into(),
                    ..Default::default()
                };
                moves.push(InstructionMove {
                    id: r.instruction_id.clone(),
                    from: InstructionState::Created,
                    from_attempt: r.attempt,
                    up,
                    actor: "server".into(),
                });
                remembered.push(from_memory);
                let next = Known { state: InstructionState::Sent, attempt: r.attempt, ..base };
                seen.insert(r.instruction_id.clone(), (next, from_memory));
            }
            continue;
        }
        let outcome = on_report(InstructionView { state, attempt }, r.phase, r.attempt, &r.report, &d.digest);
        let (to, new_attempt, note) = match outcome {
            Outcome::Stale(_) if from_memory => {
                // memory may be behind: judged again from a read
                again.insert(r.instruction_id.clone());
                p.outcome = Err(None);
                p.queued = Some(q);
                pending.push(p);
                continue;
            }
            Outcome::Stale(note) => {
                crate::metrics::add(&st.counters.reports_stale, 1);
                p.outcome = Err(Some(Ok(ReportResponse { accepted: false, note })));
                p.queued = Some(q);
                pending.push(p);
                continue;
            }
            Outcome::Move { to, attempt, note } => (to, attempt, note),
        };
        if let Some(bad) = r.metrics.get("source_failures") {
            tracing::warn!(target_id = %q.target, instruction = %r.instruction_id, "content source reported failing: {bad}");
            crate::metrics::add(&st.counters.source_failures, 1);
        }
        // a report without metrics leaves the stored ones as they are
        let metrics_json: Option<Arc<str>> = (!r.metrics.is_empty()).then(|| {
            // owned: stored text with escapes cannot be borrowed
            let mut metrics: BTreeMap<String, String> = serde_json::from_str(&base.metrics_json).unwrap_or_default();
            metrics.extend(r.metrics.iter().map(|(k, v)| (k.clone(), v.clone())));
            serde_json::to_string(&metrics).unwrap_or_else(|_| "{}".into()).into()
        });
        let up = InstructionUpdate {
            to: Some(to),
            attempt: Some(new_attempt),
            reported_digest: match &r.report {
                ReportKind::Staged { digest } => Some(digest.clone()),
                _ => None,
            },
            metrics_json: metrics_json.as_deref().map(str::to_owned),
            output: (!r.output.is_empty()).then(|| r.output.clone()),
            note: note.clone(),
            ..Default::default()
        };
        moves.push(InstructionMove {
            id: r.instruction_id.clone(),
            from: state,
            from_attempt: attempt,
            up,
            actor: format!("agent:{}", q.target),
        });
        remembered.push(from_memory);
        let next = Known {
            state: to,
            attempt: new_attempt,
            metrics_json: metrics_json.unwrap_or_else(|| base.metrics_json.clone()),
            ..base
        };
        seen.insert(r.instruction_id.clone(), (next, from_memory));
        p.outcome = Ok(moves.len() - 1);
        p.note = note;
        p.to = to;
        p.deployment = Some(d);
        p.queued = Some(q);
        pending.push(p);
    }
    // the cache learns whose instructions these are (no read to find out)
    st.cache.note_owners(moves.iter().filter_map(|m| seen.get(&m.id).map(|(k, _)| (m.id.as_str(), &*k.target))));
    // counted when it carries agents' reports (not only the server's own
    // records of delivery)
    if !moves.is_empty() && pending.iter().any(|p| p.outcome.is_ok()) {
        crate::metrics::add(&st.counters.report_batches, 1);
    }
    let judge_ms = started.elapsed().as_secs_f64() * 1e3;
    (Judged { started, size, judge_ms, remembered, pending, seen, trust_known }, moves)
}

/// After a batch's write: updates memory, answers each report, wakes the
/// targets moved. Returns the reports to judge again from a read (only
/// when judged with memory).
fn finish(
    st: &AppState,
    j: Judged,
    (moves, written, write_ms): Written,
    known: &mut HashMap<String, Known>,
) -> Vec<Queued> {
    let Judged { started, size, judge_ms, remembered, pending, seen, trust_known } = j;
    // what the writer remembers: the last move of each instruction that
    // landed; one that did not land is forgotten
    if let Ok(done) = &written {
        for (k, m) in moves.iter().enumerate() {
            if done.get(k).copied().unwrap_or(false) {
                if let Some((next, _)) = seen.get(&m.id) {
                    if next.state == m.up.to.unwrap_or(m.from) {
                        known.insert(m.id.clone(), next.clone());
                    }
                }
            } else {
                known.remove(&m.id);
            }
        }
        if known.len() > KNOWN {
            known.clear();
        }
    } else {
        for id in seen.keys() {
            known.remove(id);
        }
    }
    let mut retry = Vec::new();
    let mut touched = Vec::new();
    for mut p in pending {
        let Some(q) = p.queued.take() else { continue };
        let answer = match p.outcome {
            Err(Some(known)) => known,
            Err(None) => {
                retry.push(q);
                continue;
            }
            Ok(k) => match &written {
                Err(e) => Err(AppError::internal(e)),
                Ok(done) => {
                    let moved = done.get(k).copied().unwrap_or(false);
                    if !moved && remembered[k] {
                        // judged from memory that was behind: again, from a read
                        retry.push(q);
                        continue;
                    }
                    crate::metrics::add(
                        if moved { &st.counters.reports_accepted } else { &st.counters.reports_stale },
                        1,
                    );
                    if moved {
                        if p.to != InstructionState::Received {
                            st.progress.lock().expect("progress lock").remove(&moves[k].id);
                        }
                        // every move is an event in the store; the log names
                        // failures (a line per move would be thousands a second)
                        let deployment = p.deployment.as_ref().map_or("", |d| d.id.as_str());
                        if p.to == InstructionState::Failed {
                            tracing::info!(deployment, instruction = %moves[k].id, target_id = %q.target, from = moves[k].from.as_str(), to = p.to.as_str(), "{}", p.note);
                        } else {
                            tracing::debug!(deployment, instruction = %moves[k].id, target_id = %q.target, from = moves[k].from.as_str(), to = p.to.as_str(), "{}", p.note);
                        }
                        if p.to == InstructionState::Succeeded {
                            let m = &q.report.metrics;
                            st.counters.golive_lag.observe_reported_ms(m.get("golive_lag_ms"));
                            st.counters.health_latency.observe_reported_ms(m.get("health_ms"));
                        }
                        touched.push(q.target.clone());
                    }
                    Ok(ReportResponse { accepted: moved, note: p.note })
                }
            },
        };
        if let Some(reply) = q.reply {
            st.counters.report_latency.observe(q.at.elapsed());
            let _ = reply.send(answer);
        }
    }
    if !touched.is_empty() {
        st.changed(touched.iter().map(String::as_str));
    }
    tracing::debug!(
        size,
        moves = moves.len(),
        retry = retry.len(),
        judge_ms,
        write_ms,
        total_ms = started.elapsed().as_secs_f64() * 1e3,
        "report batch"
    );
    if trust_known {
        retry
    } else {
        // judged from reads only: nothing comes back (defensive)
        Vec::new()
    }
}
