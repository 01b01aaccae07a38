//! `/metrics` in the Prometheus text format: process counters plus the
//! fleet's state read from the store at scrape time. Unauthenticated, like
//! most scrape targets; it names no target, release or secret.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::response::IntoResponse;

use crate::error::ApiResult;
use crate::state::AppState;

#[derive(Default)]
pub struct Counters {
    pub polls: AtomicU64,
    /// Relays' aggregated polls for their sites.
    pub site_polls: AtomicU64,
    pub reports_accepted: AtomicU64,
    pub reports_stale: AtomicU64,
    pub chunks_uploaded: AtomicU64,
    pub chunk_bytes_uploaded: AtomicU64,
    pub chunk_bytes_served: AtomicU64,
    /// Delta and compressed-manifest bytes sent to agents.
    pub delta_bytes_served: AtomicU64,
    /// Reports naming a content source (relay) that failed or sent bad bytes.
    pub source_failures: AtomicU64,
    pub scheduler_transitions: AtomicU64,
    /// 1 while this process holds the scheduler lease.
    pub scheduler_leader: AtomicU64,
    pub webhooks_sent: AtomicU64,
    pub webhook_failures: AtomicU64,
    /// Reports written, and the batches they were written in.
    pub report_batches: AtomicU64,
    pub nats_requests: AtomicU64,
    /// Work agents refused because it did not verify (altered or invented).
    pub refused_work: AtomicU64,
}

pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

pub async fn render(State(st): State<AppState>) -> ApiResult<impl IntoResponse> {
    let counts = st.store.state_counts().await?;
    let c = &st.counters;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let by_state = |rows: &[(String, i64)]| -> Vec<(String, u64)> {
        rows.iter().map(|(s, n)| (format!("{{state=\"{s}\"}}"), *n as u64)).collect()
    };
    metric("convoy_targets", "gauge", "Enrolled targets.", &[(String::new(), counts.targets as u64)]);
    metric("convoy_deployments", "gauge", "Deployments by state.", &by_state(&counts.deployments));
    metric("convoy_instructions", "gauge", "Instructions by state.", &by_state(&counts.instructions));
    metric("convoy_agent_polls_total", "counter", "Work polls answered.", &[(String::new(), get(&c.polls))]);
    metric(
        "convoy_store_calls_total",
        "counter",
        "Store calls that reached the database (the rest were answered from the poll cache).",
        &[(String::new(), st.cache.backend_calls())],
    );
    metric(
        "convoy_site_polls_total",
        "counter",
        "Relays' polls on behalf of their sites' agents.",
        &[(String::new(), get(&c.site_polls))],
    );
    metric(
        "convoy_agent_reports_total",
        "counter",
        "Agent reports, by whether they moved an instruction.",
        &[
            ("{result=\"accepted\"}".into(), get(&c.reports_accepted)),
            ("{result=\"stale\"}".into(), get(&c.reports_stale)),
        ],
    );
    metric(
        "convoy_chunks_uploaded_total",
        "counter",
        "Chunks accepted by upload.",
        &[(String::new(), get(&c.chunks_uploaded))],
    );
    metric(
        "convoy_chunk_bytes_total",
        "counter",
        "Compressed chunk bytes, by direction.",
        &[
            ("{direction=\"in\"}".into(), get(&c.chunk_bytes_uploaded)),
            ("{direction=\"out\"}".into(), get(&c.chunk_bytes_served)),
        ],
    );
    metric(
        "convoy_delta_bytes_served_total",
        "counter",
        "Release delta and compressed manifest bytes sent.",
        &[(String::new(), get(&c.delta_bytes_served))],
    );
    metric(
        "convoy_source_failures_total",
        "counter",
        "Agent reports naming a relay or mirror that was down or sent bad bytes.",
        &[(String::new(), get(&c.source_failures))],
    );
    metric(
        "convoy_scheduler_transitions_total",
        "counter",
        "Deployment transitions made by the scheduler.",
        &[(String::new(), get(&c.scheduler_transitions))],
    );
    metric(
        "convoy_scheduler_leader",
        "gauge",
        "1 if this server holds the scheduler lease (one per database).",
        &[(String::new(), get(&c.scheduler_leader))],
    );
    metric(
        "convoy_webhooks_total",
        "counter",
        "Request notifications to webhooks, by result.",
        &[
            ("{result=\"sent\"}".into(), get(&c.webhooks_sent)),
            ("{result=\"failed\"}".into(), get(&c.webhook_failures)),
        ],
    );
    metric(
        "convoy_report_batches_total",
        "counter",
        "Transactions in which queued agent reports were written.",
        &[(String::new(), get(&c.report_batches))],
    );
    metric(
        "convoy_nats_requests_total",
        "counter",
        "Deployment requests taken from NATS.",
        &[(String::new(), get(&c.nats_requests))],
    );
    metric(
        "convoy_refused_work_total",
        "counter",
        "Work items agents refused because they did not verify against the server's key.",
        &[(String::new(), get(&c.refused_work))],
    );
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}
