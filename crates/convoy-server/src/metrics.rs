//! `/metrics` in the Prometheus text format: process counters and
//! histograms, HTTP requests by route, and the fleet's state read from the
//! store at scrape time (per-deployment progress included). Unauthenticated,
//! like most scrape targets: it names deployments, apps and versions, never a
//! target, host or secret.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};

use crate::error::ApiResult;
use crate::state::{now_ms, AppState};

/// A target counts as online when it polled or reported this recently
/// (long polls are held up to 60 s).
pub const ONLINE_MS: i64 = 90_000;

#[derive(Default)]
pub struct Counters {
    /// The last reading of the database's part of `/metrics`.
    pub scan: Scan,
    pub polls: AtomicU64,
    /// Relays' aggregated polls for their sites.
    pub site_polls: AtomicU64,
    /// Polls of DDI devices, and their artifact downloads.
    pub ddi_polls: AtomicU64,
    pub ddi_downloads: AtomicU64,
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
    /// From a report's arrival to the commit of the batch that wrote it.
    pub report_latency: Histogram,
    /// What agents report of going live: planned go-live to their switch
    /// (`golive_lag_ms`), and how long the health check took to pass
    /// (`health_ms`).
    pub golive_lag: Histogram,
    pub health_latency: Histogram,
    /// Requests by route and method.
    pub http: HttpStats,
}

/// Upper bounds (seconds) of every histogram's buckets: 1 ms to 5 min.
const BUCKETS: [f64; 16] =
    [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// A Prometheus histogram of durations, updated without locks.
#[derive(Default)]
pub struct Histogram {
    /// Observations at or below each bound of [`BUCKETS`] (not cumulative).
    buckets: [AtomicU64; BUCKETS.len()],
    /// Observations above the last bound.
    over: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        match BUCKETS.iter().position(|b| secs <= *b) {
            Some(i) => self.buckets[i].fetch_add(1, Ordering::Relaxed),
            None => self.over.fetch_add(1, Ordering::Relaxed),
        };
        self.sum_micros.fetch_add(d.as_micros().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// A value in milliseconds that an agent reported: ignored unless it
    /// is a plain number below a day (an agent's word is not trusted further).
    pub fn observe_reported_ms(&self, v: Option<&String>) {
        if let Some(ms) = v.and_then(|v| v.trim().parse::<u64>().ok()).filter(|ms| *ms < 86_400_000) {
            self.observe(Duration::from_millis(ms));
        }
    }

    /// `_bucket`, `_sum` and `_count` lines; `labels` is `k="v",...` or empty.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut total = 0;
        for (b, n) in BUCKETS.iter().zip(&self.buckets) {
            total += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {total}");
        }
        total += self.over.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = |l: &str| if l.is_empty() { String::new() } else { format!("{{{l}}}") };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {total}", braces(labels));
    }
}

/// Requests of one route and method.
#[derive(Default)]
pub struct RouteStats {
    duration: Histogram,
    /// Answers by status class, 1xx to 5xx.
    status: [AtomicU64; 5],
}

/// Requests by route (the pattern, such as `/api/v1/deployments/{id}`, never
/// the path itself, so the series stay few) and method.
#[derive(Default)]
pub struct HttpStats(RwLock<Routes>);

/// Route pattern to its methods' stats.
type Routes = HashMap<String, Vec<(Method, Arc<RouteStats>)>>;

impl HttpStats {
    fn of(&self, route: &str, method: &Method) -> Arc<RouteStats> {
        let find = |m: &Routes| m.get(route).and_then(|v| v.iter().find(|(k, _)| k == method).map(|(_, s)| s.clone()));
        if let Some(s) = find(&self.0.read().expect("http stats lock")) {
            return s;
        }
        let mut m = self.0.write().expect("http stats lock");
        if let Some(s) = find(&m) {
            return s;
        }
        let s = Arc::new(RouteStats::default());
        m.entry(route.to_owned()).or_default().push((method.clone(), s.clone()));
        s
    }
}

/// Layer: counts every request by route, method and status class, and
/// times it (a long poll's time includes its wait). A plain wrapper around
/// each route: a request carries no boxed future and no copy of the state
/// for it, which matters for thousands of held polls.
#[derive(Clone)]
pub struct Track(pub Arc<Counters>);

impl<S> tower::Layer<S> for Track {
    type Service = Tracked<S>;

    fn layer(&self, inner: S) -> Tracked<S> {
        Tracked { inner, counters: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct Tracked<S> {
    inner: S,
    counters: Arc<Counters>,
}

impl<S> tower::Service<Request> for Tracked<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |m| m.as_str());
        // only the methods axum routes; anything else counts as OTHER
        let method = match *req.method() {
            Method::GET | Method::POST | Method::PUT | Method::PATCH | Method::DELETE | Method::HEAD => {
                req.method().clone()
            }
            _ => Method::OPTIONS,
        };
        let stats = self.counters.http.of(route, &method);
        TrackedFuture { inner: self.inner.call(req), stats, start: Instant::now() }
    }
}

pin_project_lite::pin_project! {
    pub struct TrackedFuture<F> {
        #[pin]
        inner: F,
        stats: Arc<RouteStats>,
        start: Instant,
    }
}

impl<F, E> std::future::Future for TrackedFuture<F>
where
    F: std::future::Future<Output = Result<Response, E>>,
{
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        this.stats.duration.observe(this.start.elapsed());
        if let Ok(resp) = &out {
            let class = (resp.status().as_u16() / 100).clamp(1, 5) as usize - 1;
            this.stats.status[class].fetch_add(1, Ordering::Relaxed);
        }
        std::task::Poll::Ready(out)
    }
}

pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// The part of `/metrics` read from the database (whole-table counts), and
/// when its reading began.
#[derive(Default)]
pub struct Scan(tokio::sync::Mutex<Option<(std::time::Instant, convoy_store::StateCounts, String)>>);

/// The database's part of `/metrics`: one reading at a time, and a request
/// takes a reading that began after it arrived if there is one (never an
/// older one). Scrapes that come together cost one or two readings, not
/// one each, and `/metrics`, which needs no token, cannot make the
/// server count its tables many times at once.
async fn scanned(st: &AppState) -> ApiResult<(convoy_store::StateCounts, String)> {
    let asked = std::time::Instant::now();
    let mut slot = st.counters.scan.0.lock().await;
    if let Some((_, counts, text)) = slot.as_ref().filter(|(at, _, _)| *at >= asked) {
        return Ok((counts.clone(), text.clone()));
    }
    let at = std::time::Instant::now();
    let counts = st.store.state_counts(now_ms() - ONLINE_MS).await?;
    let mut text = String::new();
    deployment_progress(st, &mut text).await?;
    *slot = Some((at, counts.clone(), text.clone()));
    Ok((counts, text))
}

pub async fn render(State(st): State<AppState>) -> ApiResult<impl IntoResponse> {
    let (counts, progress) = scanned(&st).await?;
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
    metric(
        "convoy_targets_seen",
        "gauge",
        "Enrolled targets by whether they were seen in the last 90 s (online) or not (stale).",
        &[
            ("{seen=\"online\"}".into(), counts.targets_online as u64),
            ("{seen=\"stale\"}".into(), (counts.targets - counts.targets_online).max(0) as u64),
        ],
    );
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
        "convoy_ddi_polls_total",
        "counter",
        "Polls of devices speaking hawkBit DDI.",
        &[(String::new(), get(&c.ddi_polls))],
    );
    metric(
        "convoy_ddi_downloads_total",
        "counter",
        "Artifact downloads by DDI devices (ranges included).",
        &[(String::new(), get(&c.ddi_downloads))],
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
    out.push_str(&progress);
    let histograms = [
        (
            "convoy_report_write_seconds",
            "From an agent report's arrival to the commit that wrote it.",
            &c.report_latency,
        ),
        ("convoy_golive_lag_seconds", "Planned go-live to the target's switch, as agents report it.", &c.golive_lag),
        (
            "convoy_health_check_seconds",
            "How long targets' health checks took to pass after a switch.",
            &c.health_latency,
        ),
    ];
    for (name, help, h) in histograms {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        h.render(&mut out, name, "");
    }
    http_metrics(&c.http, &mut out);
    build_and_process(&mut out);
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}

/// `convoy_deployment_targets`: targets of each unsettled deployment by
/// wave and state.
async fn deployment_progress(st: &AppState, out: &mut String) -> ApiResult<()> {
    let active = st.store.active_deployments().await?;
    let ids: Vec<String> = active.iter().map(|d| d.id.clone()).collect();
    let counts = if ids.is_empty() { Vec::new() } else { st.store.instruction_counts(&ids).await? };
    let name = "convoy_deployment_targets";
    let _ = writeln!(out, "# HELP {name} Targets of each unsettled deployment by wave and state.\n# TYPE {name} gauge");
    let by_id: HashMap<&str, &convoy_store::DeploymentRecord> = active.iter().map(|d| (d.id.as_str(), d)).collect();
    for (id, wave, state, n) in counts {
        let Some(d) = by_id.get(id.as_str()) else { continue };
        let _ = writeln!(
            out,
            "{name}{{deployment=\"{}\",app=\"{}\",version=\"{}\",wave=\"{wave}\",state=\"{}\"}} {n}",
            label(&id),
            label(&d.app),
            label(&d.version),
            state.as_str()
        );
    }
    let name = "convoy_deployment_info";
    let _ = writeln!(out, "# HELP {name} Unsettled deployments and their state.\n# TYPE {name} gauge");
    for d in &active {
        let _ = writeln!(
            out,
            "{name}{{deployment=\"{}\",app=\"{}\",version=\"{}\",state=\"{}\",wave=\"{}\"}} 1",
            label(&d.id),
            label(&d.app),
            label(&d.version),
            d.state.as_str(),
            d.wave
        );
    }
    Ok(())
}

fn http_metrics(http: &HttpStats, out: &mut String) {
    let routes = http.0.read().expect("http stats lock");
    let mut rows: Vec<(&String, &Method, &Arc<RouteStats>)> =
        routes.iter().flat_map(|(r, v)| v.iter().map(move |(m, s)| (r, m, s))).collect();
    rows.sort_by(|a, b| (a.0, a.1.as_str()).cmp(&(b.0, b.1.as_str())));
    let name = "convoy_http_requests_total";
    let _ = writeln!(out, "# HELP {name} HTTP requests by route, method and status class.\n# TYPE {name} counter");
    for (route, method, s) in &rows {
        for (i, n) in s.status.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "{name}{{route=\"{}\",method=\"{method}\",status=\"{}xx\"}} {n}",
                    label(route),
                    i + 1
                );
            }
        }
    }
    let name = "convoy_http_request_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} HTTP request durations by route and method (long polls include their wait).\n# TYPE {name} histogram"
    );
    for (route, method, s) in &rows {
        s.duration.render(out, name, &format!("route=\"{}\",method=\"{method}\"", label(route)));
    }
}

/// `convoy_build_info` and the standard `process_*` metrics (from /proc).
fn build_and_process(out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP convoy_build_info The running build.\n# TYPE convoy_build_info gauge\n\
         convoy_build_info{{version=\"{}\",revision=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        label(option_env!("CONVOY_BUILD_REVISION").unwrap_or("unknown"))
    );
    let Some(p) = ProcessStats::read() else { return };
    let mut gauge = |name: &str, kind: &str, help: &str, v: f64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    };
    gauge("process_cpu_seconds_total", "counter", "User and system CPU time spent in seconds.", p.cpu_seconds);
    gauge("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", p.rss_bytes);
    gauge("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", p.vsize_bytes);
    gauge(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch in seconds.",
        p.start_time,
    );
    gauge("process_open_fds", "gauge", "Number of open file descriptors.", p.open_fds);
    if let Some(max) = p.max_fds {
        gauge("process_max_fds", "gauge", "Maximum number of open file descriptors.", max);
    }
    gauge("process_threads", "gauge", "Number of OS threads in the process.", p.threads);
}

struct ProcessStats {
    cpu_seconds: f64,
    rss_bytes: f64,
    vsize_bytes: f64,
    start_time: f64,
    open_fds: f64,
    max_fds: Option<f64>,
    threads: f64,
}

impl ProcessStats {
    /// From `/proc/self` (Linux); `None` elsewhere.
    fn read() -> Option<Self> {
        // USER_HZ: 100 on every Linux architecture (part of its ABI)
        const TICKS: f64 = 100.0;
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // fields after the command name, which is in parentheses and may hold spaces
        let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
        // field n of proc(5) is f[n - 3]
        let cpu_seconds = (num(11)? + num(12)?) / TICKS;
        let threads = num(17)?;
        let start_ticks = num(19)?;
        let vsize_bytes = num(20)?;
        let rss_bytes = std::fs::read_to_string("/proc/self/status").ok()?.lines().find_map(|l| {
            l.strip_prefix("VmRSS:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })? * 1024.0;
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok()))?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
        let max_fds = std::fs::read_to_string("/proc/self/limits").ok().and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse::<f64>().ok()))
        });
        Some(Self {
            cpu_seconds,
            rss_bytes,
            vsize_bytes,
            start_time: boot + start_ticks / TICKS,
            open_fds,
            max_fds,
            threads,
        })
    }
}

/// A label value with `\\`, `"` and newlines escaped (Prometheus text format).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
