//! An adapter like `nats.rs`: Eclipse hawkBit's Direct Device Integration
//! API under `/{tenant}/controller/v1/{controllerId}`, so devices running a
//! DDI client (SWUpdate's suricatta, rauc-hawkbit-updater) take convoy
//! deployments unchanged.
//!
//! A DDI device is a target of kind `ddi` with id `ddi-{controllerId}`.
//! Each of its instructions is a DDI action (a number derived from the
//! instruction and attempt). While the instruction stages, the action is
//! offered with the maintenance window `unavailable` (`update: skip`:
//! download, do not install); when its wave goes live the window opens
//! (`update: forced`). Feedback becomes ordinary agent reports through the
//! report writer, so waves, budgets, approvals and the audit apply as to
//! any target. A rollback is an action installing the previous release; a
//! canceled action is offered as `cancelAction` until the device answers.
//! Polls with nothing new are answered from memory (the poll cache).

mod artifacts;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use convoy_domain::{InstructionState, Phase, ReportKind};
use convoy_store::{new_secret, EventRecord, InstructionRecord, TargetRecord, TokenKind, TokenRecord};
use convoy_wire::ddi::{self as wire, ActionFeedback, Execution, Finished};
use serde::Deserialize;

pub use artifacts::Artifacts;

use crate::auth::{self, Caller};
use crate::error::ApiError;
use crate::routes::agent::{clean, labels_text};
use crate::state::{now_ms, AppState};

/// The DDI routes, outside `/api/v1` where devices look for them.
pub fn router() -> Router<AppState> {
    const BASE: &str = "/{tenant}/controller/v1/{controller}";
    Router::new()
        .route(BASE, get(poll))
        .route(&format!("{BASE}/deploymentBase/{{action}}"), get(deployment_base))
        .route(&format!("{BASE}/deploymentBase/{{action}}/feedback"), post(deployment_feedback))
        .route(&format!("{BASE}/cancelAction/{{action}}"), get(cancel_action))
        .route(&format!("{BASE}/cancelAction/{{action}}/feedback"), post(cancel_feedback))
        .route(&format!("{BASE}/configData"), put(config_data))
        .route(&format!("{BASE}/installedBase/{{action}}"), get(installed_base))
        .route(&format!("{BASE}/softwaremodules/{{module}}/artifacts"), get(artifact_list))
        .route(&format!("{BASE}/softwaremodules/{{module}}/artifacts/{{file}}"), get(artifact))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FEEDBACK))
}

/// The DDI side of the server's memory.
pub struct Ddi {
    /// The tenant devices name in their URLs (case-insensitive).
    pub tenant: String,
    /// `config.polling.sleep` told to devices.
    pub poll_secs: u64,
    pub artifacts: Artifacts,
    /// The action each device was last shown, to offer `cancelAction`
    /// when its instruction is canceled (memory only).
    shown: Mutex<HashMap<String, Shown>>,
    /// Whether each device's attributes are wanted (`configData`): read
    /// from its row the first time this process sees it, then kept
    /// for `configData`).
    attributes: Mutex<HashMap<String, bool>>,
    /// The last action each device installed (for `installedBase`).
    installed: Mutex<HashMap<String, u64>>,
    /// (gateway token, device) pairs lately checked: when, and the
    /// token's expiry.
    gateways: Mutex<HashMap<(String, String), GatewayRight>>,
}

/// When a gateway token was found to speak for a device, and its expiry.
type GatewayRight = (std::time::Instant, Option<i64>);

/// How long a gateway token's right to speak for a device is taken from
/// memory: a relabelled device leaves the token's scope within it.
const GATEWAY_TTL: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Clone)]
struct Shown {
    instruction: String,
    action: u64,
    /// Known to be canceled: offered as `cancelAction`.
    canceled: bool,
}

/// Most devices remembered in each of the maps above.
const MAX_REMEMBERED: usize = 200_000;

impl Default for Ddi {
    fn default() -> Self {
        Self::new(DEFAULT_TENANT.into(), DEFAULT_POLL_SECS)
    }
}

impl Ddi {
    pub fn new(tenant: String, poll_secs: u64) -> Self {
        Self {
            tenant,
            poll_secs,
            artifacts: Artifacts::default(),
            shown: Default::default(),
            attributes: Default::default(),
            installed: Default::default(),
            gateways: Default::default(),
        }
    }
}

pub const DEFAULT_TENANT: &str = "DEFAULT";
pub const DEFAULT_POLL_SECS: u64 = 60;

fn remember<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, k: K, v: V) {
    if map.len() >= MAX_REMEMBERED {
        map.clear();
    }
    map.insert(k, v);
}

/// The target id of a device.
pub fn target_id(controller: &str) -> String {
    format!("ddi-{controller}")
}

/// The DDI action id of an instruction's attempt, different for a
/// rollback: a positive number below 2^31, as SWUpdate reads action ids
/// into a C `int` (ids are only ever matched among one device's own).
pub fn action_id(instruction: &str, attempt: u32, rollback: bool) -> u64 {
    let h = blake3::hash(format!("ddi-action\0{instruction}\0{attempt}\0{rollback}").as_bytes());
    let n = u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes")) & 0x7fff_ffff;
    n.max(1)
}

/// The number a release goes by as a DDI software module.
fn module_id(app: &str, version: &str) -> u64 {
    action_id(&format!("module\0{app}\0{version}"), 0, false)
}

// ---------------------------------------------------------------- errors

/// An error as hawkBit sends it: a status and `{errorCode, message}`.
#[derive(Debug)]
pub struct DdiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl DdiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
    fn unauthorized(m: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "hawkbit.server.error.unauthorized", m)
    }
    fn forbidden(m: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "hawkbit.server.error.forbidden", m)
    }
    fn not_found(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "hawkbit.server.error.repo.entityNotFound", m)
    }
    fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "hawkbit.server.error.rest.body.notReadable", m)
    }
    fn gone(m: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, "hawkbit.server.error.action.closed", m)
    }
}

impl From<ApiError> for DdiError {
    fn from(e: ApiError) -> Self {
        let code = match e.status {
            StatusCode::UNAUTHORIZED => "hawkbit.server.error.unauthorized",
            StatusCode::FORBIDDEN => "hawkbit.server.error.forbidden",
            StatusCode::NOT_FOUND => "hawkbit.server.error.repo.entityNotFound",
            StatusCode::TOO_MANY_REQUESTS => "hawkbit.server.error.quota.tooManyRequests",
            StatusCode::CONFLICT => "hawkbit.server.error.repo.concurrentModification",
            _ => "hawkbit.server.error.internal",
        };
        Self { status: e.status, code, message: e.message }
    }
}

impl From<convoy_store::StoreError> for DdiError {
    fn from(e: convoy_store::StoreError) -> Self {
        ApiError::from(e).into()
    }
}

impl IntoResponse for DdiError {
    fn into_response(self) -> Response {
        let body = wire::ExceptionInfo { error_code: self.code.to_owned(), message: self.message };
        (self.status, axum::Json(body)).into_response()
    }
}

type DdiResult<T> = Result<T, DdiError>;

/// An error of the server's own (logged; the device sees a 500).
fn internal(e: impl std::fmt::Display) -> DdiError {
    ApiError::internal(e).into()
}

/// A DDI device's inventory, as the server keeps it.
fn inventory_of(t: &TargetRecord) -> DdiResult<convoy_wire::Inventory> {
    serde_json::from_str(&t.inventory_json).map_err(internal)
}

// ------------------------------------------------------- content types

/// The media type of a JSON answer: hal+json unless the client asks for
/// plain JSON; 406 for a client that takes neither.
fn negotiate(headers: &HeaderMap) -> DdiResult<&'static str> {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok("application/hal+json");
    };
    for range in accept.split(',') {
        let m = range.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match m.as_str() {
            "application/hal+json" | "*/*" | "application/*" | "" => return Ok("application/hal+json"),
            "application/json" => return Ok("application/json"),
            _ => {}
        }
    }
    Err(DdiError::new(
        StatusCode::NOT_ACCEPTABLE,
        "hawkbit.server.error.rest.notAcceptable",
        format!("this resource is application/hal+json or application/json; the request accepts {accept}"),
    ))
}

fn json_answer<T: serde::Serialize>(headers: &HeaderMap, body: &T) -> DdiResult<Response> {
    let ctype = negotiate(headers)?;
    let bytes = serde_json::to_vec(body).map_err(internal)?;
    Ok(([(header::CONTENT_TYPE, ctype)], bytes).into_response())
}

/// A request body must be JSON (`application/json`); hawkBit answers
/// other types, hal+json included, 415.
fn json_body<T: serde::de::DeserializeOwned>(headers: &HeaderMap, body: &Bytes) -> DdiResult<T> {
    let ctype = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media = ctype.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if media != "application/json" {
        return Err(DdiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "hawkbit.server.error.rest.unsupportedMediaType",
            format!("the body must be application/json, not {ctype:?}"),
        ));
    }
    serde_json::from_slice(body).map_err(|e| DdiError::bad_request(format!("invalid body: {e}")))
}

// -------------------------------------------------------------- devices

/// The address a request came from (for rate limits and the audit log).
struct Peer(Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        let info = parts.extensions.get::<axum::extract::ConnectInfo<crate::PeerAddr>>();
        Ok(Peer(info.map(|i| i.0 .0.ip())))
    }
}

/// The device a request speaks for, once its credential is checked.
struct Device {
    target: String,
    controller: String,
}

/// Checks tenant, controller id and credential: the device's own
/// `TargetToken`, or a `GatewayToken` whose label scope covers it (which
/// registers a device it has not seen, taking one use of the token).
async fn device(st: &AppState, peer: &Peer, headers: &HeaderMap, tenant: &str, controller: &str) -> DdiResult<Device> {
    if !tenant.eq_ignore_ascii_case(&st.ddi.tenant) {
        return Err(DdiError::unauthorized(format!(
            "this server serves the DDI tenant {}, not {tenant:?}",
            st.ddi.tenant
        )));
    }
    if !wire::valid_controller_id(controller) {
        return Err(DdiError::bad_request("a controllerId is 1-64 characters: letters, digits, '.', '_', '-', ':'"));
    }
    let target = target_id(controller);
    let value = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).ok_or_else(|| {
        DdiError::unauthorized("missing Authorization: TargetToken <token> (or GatewayToken <token>) header")
    })?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    let caller = match scheme {
        "TargetToken" | "GatewayToken" => auth::authenticate_token(st, token.trim()).await?,
        _ => return Err(DdiError::unauthorized("expected Authorization: TargetToken <token> or GatewayToken <token>")),
    };
    match (scheme, caller) {
        ("TargetToken", Caller::Ddi(t)) if t == target => Ok(Device { target, controller: controller.to_owned() }),
        ("TargetToken", Caller::Ddi(_)) => Err(DdiError::unauthorized("this TargetToken belongs to another device")),
        ("GatewayToken", Caller::Gateway(id)) => gateway(st, peer, &id, target, controller).await,
        _ => Err(DdiError::unauthorized(format!("this is not a DDI {scheme}"))),
    }
}

async fn gateway(st: &AppState, peer: &Peer, id: &str, target: String, controller: &str) -> DdiResult<Device> {
    let now = now_ms();
    let dev = Device { target: target.clone(), controller: controller.to_owned() };
    // a device this token was lately found to speak for: from memory (a
    // revoked token never gets here: the token cache drops it at once)
    let key = (id.to_owned(), target.clone());
    if let Some((at, expires)) = st.ddi.gateways.lock().expect("ddi lock").get(&key) {
        if at.elapsed() < GATEWAY_TTL && expires.is_none_or(|x| x > now) {
            return Ok(dev);
        }
    }
    let e =
        st.store.get_enrol_token(id).await?.ok_or_else(|| DdiError::unauthorized("this gateway token was removed"))?;
    if let Some(at) = e.revoked_at {
        return Err(DdiError::unauthorized(format!("gateway token {id} was revoked (at {at} ms)")));
    }
    if e.expires_at.is_some_and(|x| x <= now) {
        return Err(DdiError::unauthorized(format!("gateway token {id} has expired")));
    }
    let scope: Option<convoy_wire::Labels> = match &e.labels_json {
        Some(j) => Some(serde_json::from_str(j).map_err(internal)?),
        None => None,
    };
    if let Some(t) = st.store.get_target(&target).await? {
        let inv = inventory_of(&t)?;
        if inv.gateway.as_deref() != Some(id) {
            return Err(DdiError::forbidden(format!(
                "{controller} was not registered through gateway token {id}: it speaks with its own TargetToken{}",
                inv.gateway.map(|g| format!(" or gateway token {g}")).unwrap_or_default()
            )));
        }
        let labels: convoy_wire::Labels = serde_json::from_str(&t.labels_json).map_err(internal)?;
        if let Some(scope) = &scope {
            if scope.0.iter().any(|(k, v)| labels.0.get(k) != Some(v)) {
                return Err(DdiError::forbidden(format!(
                    "gateway token {id} speaks for devices with {}; {controller} has {}",
                    labels_text(scope),
                    labels_text(&labels)
                )));
            }
        }
        remember(&mut st.ddi.gateways.lock().expect("ddi lock"), key, (std::time::Instant::now(), e.expires_at));
        return Ok(dev);
    }
    // a device the gateway has not registered yet
    if let Some(why) = e.unusable(now) {
        return Err(DdiError::unauthorized(format!("{why}: it registers no new device")));
    }
    let limited = |(wait, why): (std::time::Duration, String)| {
        DdiError::from(ApiError::rate_limited(format!("too many registrations: at most {why}; retry later"), wait))
    };
    if let Some(ip) = peer.0 {
        st.enrol_limits.take_address(ip).map_err(limited)?;
    }
    st.enrol_limits.take_token(id).map_err(limited)?;
    let labels = scope.unwrap_or_default();
    let actor = format!("enrol-token:{id}");
    let from = peer.0.map_or("an unknown address".to_owned(), |ip| ip.to_string());
    let note = format!(
        "DDI device {target} ({controller}) registered from {from} through gateway token {id} with {}",
        labels_text(&labels)
    );
    // the device's own TargetToken is made too (stored hashed, never
    // shown): the device keeps using the gateway token
    register(st, &target, controller, &labels, &new_secret(), Some(id), &actor, note).await?;
    Ok(dev)
}

/// Writes a DDI target and its token, audited.
#[allow(clippy::too_many_arguments)]
async fn register(
    st: &AppState,
    target: &str,
    controller: &str,
    labels: &convoy_wire::Labels,
    token: &str,
    enrol_token: Option<&str>,
    actor: &str,
    note: String,
) -> Result<(), ApiError> {
    let now = now_ms();
    let inv = convoy_wire::Inventory {
        hostname: controller.to_owned(),
        labels: labels.clone(),
        kind: convoy_wire::TargetKind::Ddi,
        gateway: enrol_token.map(str::to_owned),
        ..Default::default()
    };
    let rec = TargetRecord {
        id: target.to_owned(),
        hostname: controller.to_owned(),
        labels_json: serde_json::to_string(labels).map_err(ApiError::internal)?,
        inventory_json: serde_json::to_string(&inv).map_err(ApiError::internal)?,
        enrolled_at: now,
        last_seen: now,
        warning: String::new(),
    };
    let event = EventRecord::audit(actor, "target_enrolled", note, now);
    match st.store.enrol_target(&rec, &TokenRecord::new(token, TokenKind::Ddi, target, now), enrol_token, &event).await
    {
        Ok(()) => {}
        Err(convoy_store::StoreError::Conflict(why)) => return Err(ApiError::conflict(why)),
        Err(e) => return Err(e.into()),
    }
    st.note_site(target, labels.0.get(crate::app::SITE_LABEL).map(String::as_str));
    tracing::info!(target_id = %target, by = %actor, "DDI device registered");
    Ok(())
}

/// `POST /api/v1/ddi/targets` (admin; audited): a DDI device known before
/// it first polls, and its `TargetToken` (shown once).
pub async fn create_target(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<axum::Json<wire::NewDdiTarget>, axum::extract::rejection::JsonRejection>,
) -> Result<axum::Json<wire::DdiTargetCreated>, ApiError> {
    let admin = auth::require(&st, &headers, convoy_domain::Role::Admin).await?;
    let axum::Json(n) = body?;
    if !wire::valid_controller_id(&n.controller_id) {
        return Err(ApiError::bad_request("a controller id is 1-64 characters: letters, digits, '.', '_', '-', ':'"));
    }
    n.labels.validate().map_err(|e| ApiError::bad_request(e.to_string()))?;
    let target = target_id(&n.controller_id);
    if st.store.get_target(&target).await?.is_some() {
        return Err(ApiError::conflict(format!("DDI device {} is already known as {target}", n.controller_id)));
    }
    let token = new_secret();
    let note = format!("DDI device {target} ({}) added with {}", n.controller_id, labels_text(&n.labels));
    register(&st, &target, &n.controller_id, &n.labels, &token, None, &admin.actor(), note).await?;
    let path = format!("/{}/controller/v1/{}", st.ddi.tenant, n.controller_id);
    Ok(axum::Json(wire::DdiTargetCreated { target_id: target, controller_id: n.controller_id, token, path }))
}

// -------------------------------------------------------------- actions

/// What a device is asked to do for an instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Staging: download (window unavailable, `update: skip`).
    Download,
    /// Staged, waiting for its wave (window still unavailable).
    Wait,
    /// Its wave is live: install (window available).
    Install,
    /// Rolled back: install the previous release.
    Rollback,
    /// Rolled back from a first install: a DDI device cannot uninstall.
    Uninstall,
}

#[derive(Clone)]
struct Action {
    id: u64,
    step: Step,
    instruction: InstructionRecord,
    deployment: Arc<convoy_store::DeploymentRecord>,
}

impl Action {
    /// The release the action installs: the deployment's, or the one
    /// before it for a rollback.
    fn release(&self) -> (&str, &str) {
        match (self.step, &self.instruction.previous_version) {
            (Step::Rollback, Some(prev)) => (&self.deployment.app, prev),
            _ => (&self.deployment.app, &self.deployment.version),
        }
    }
    fn window_open(&self) -> bool {
        matches!(self.step, Step::Install | Step::Rollback)
    }
    /// hawkBit's `c`: changes when what the device should do changes.
    fn c(&self) -> i32 {
        let h = blake3::hash(format!("{}\0{}", self.id, self.window_open()).as_bytes());
        i32::from_le_bytes(h.as_bytes()[..4].try_into().expect("4 bytes"))
    }
}

fn step_of(i: &InstructionRecord, now: i64) -> Option<Step> {
    use InstructionState as S;
    match i.state {
        S::Created | S::Sent | S::Received => Some(Step::Download),
        S::Staged => Some(Step::Wait),
        // its wave is live but its planned time has not come
        S::Activating if i.go_live_at.is_some_and(|t| t > now) => Some(Step::Wait),
        S::Activating => Some(Step::Install),
        S::RollingBack if i.previous_version.is_some() => Some(Step::Rollback),
        S::RollingBack => Some(Step::Uninstall),
        _ => None,
    }
}

fn id_of(i: &InstructionRecord, step: Step) -> u64 {
    action_id(&i.id, i.attempt, step == Step::Rollback)
}

/// The device's open actions, most urgent first (installs and rollbacks,
/// then downloads, then those waiting), from the poll cache.
async fn open_actions(st: &AppState, target: &str) -> DdiResult<Vec<Action>> {
    let mut out = Vec::new();
    let now = now_ms();
    for i in st.store.pending_instructions(target).await? {
        let Some(step) = step_of(&i, now) else { continue };
        let Some(d) = st.work_deployment(&i.deployment_id).await? else { continue };
        out.push(Action { id: id_of(&i, step), step, instruction: i, deployment: d });
    }
    out.sort_by_key(|a| match a.step {
        Step::Install | Step::Rollback | Step::Uninstall => 0,
        Step::Download => 1,
        Step::Wait => 2,
    });
    Ok(out)
}

/// An action of this device that is no longer open, with its state: read
/// from the database (feedback and downloads for closed actions only).
async fn closed_action(st: &AppState, target: &str, action: u64) -> DdiResult<Option<(InstructionRecord, bool)>> {
    for i in own_history(st, target).await? {
        for rollback in [false, true] {
            if action_id(&i.id, i.attempt, rollback) == action {
                return Ok(Some((i, rollback)));
            }
        }
    }
    Ok(None)
}

/// The device's last instructions, from its enrolment on: a device
/// registered again under a removed device's controller id does not see
/// that device's history.
async fn own_history(st: &AppState, target: &str) -> DdiResult<Vec<InstructionRecord>> {
    let Some(t) = st.store.get_target(target).await? else { return Ok(Vec::new()) };
    let mut list = st.store.target_instructions(target, 100).await?;
    list.retain(|i| i.updated_at >= t.enrolled_at);
    Ok(list)
}

fn parse_action(s: &str) -> DdiResult<u64> {
    s.parse().map_err(|_| DdiError::not_found(format!("no action {s:?}: action ids are numbers")))
}

/// Base URL of the DDI paths for links, from the request's Host.
fn base_url(st: &AppState, headers: &HeaderMap, tenant: &str, controller: &str) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty() && h.len() <= 255 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost");
    // behind a proxy that ends TLS, links keep the scheme the device used
    let forwarded_https =
        headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).is_some_and(|p| p.eq_ignore_ascii_case("https"));
    let scheme = if st.tls || forwarded_https { "https" } else { "http" };
    format!("{scheme}://{host}/{tenant}/controller/v1/{controller}")
}

// ---------------------------------------------------------------- poll

/// `GET /{tenant}/controller/v1/{controllerId}`.
async fn poll(
    State(st): State<AppState>,
    peer: Peer,
    headers: HeaderMap,
    Path((tenant, controller)): Path<(String, String)>,
) -> DdiResult<Response> {
    let dev = device(&st, &peer, &headers, &tenant, &controller).await?;
    st.saw(&dev.target);
    crate::metrics::add(&st.counters.ddi_polls, 1);
    answer_checks(&st, &dev.target).await?;
    let base = base_url(&st, &headers, &tenant, &controller);
    let mut links = BTreeMap::new();
    let mut actions = open_actions(&st, &dev.target).await?;
    if actions.iter().any(|a| a.step == Step::Uninstall) {
        refuse_uninstall(&st, &dev.target, &actions).await?;
        actions = open_actions(&st, &dev.target).await?;
        actions.retain(|a| a.step != Step::Uninstall);
    }
    if let Some(a) = actions.first() {
        links.insert(
            "deploymentBase".into(),
            wire::Link { href: format!("{base}/deploymentBase/{}?c={}", a.id, a.c()) },
        );
        note_shown(&st, &dev.target, a);
    } else if let Some(cancel) = canceled_shown(&st, &dev.target).await? {
        links.insert("cancelAction".into(), wire::Link { href: format!("{base}/cancelAction/{cancel}") });
    } else if let Some(done) = st.ddi.installed.lock().expect("ddi lock").get(&dev.target) {
        links.insert("installedBase".into(), wire::Link { href: format!("{base}/installedBase/{done}") });
    }
    if wants_attributes(&st, &dev.target).await? {
        links.insert("configData".into(), wire::Link { href: format!("{base}/configData") });
    }
    // a device waiting for its planned go-live looks again just after it
    let until_live = actions
        .first()
        .filter(|a| a.step == Step::Wait)
        .and_then(|a| a.instruction.go_live_at)
        .map(|t| ((t - now_ms()).max(0) / 1000) as u64 + 1);
    let sleep = until_live.map_or(st.ddi.poll_secs, |s| s.min(st.ddi.poll_secs));
    let body = wire::ControllerBase {
        config: wire::Config { polling: wire::Polling { sleep: wire::sleep_text(sleep) } },
        links,
    };
    json_answer(&headers, &body)
}

/// A rollback of a first install: a DDI device has no release before to
/// go back to and cannot remove one, so the rollback fails for it, saying
/// so (through the report writer, as a report would).
async fn refuse_uninstall(st: &AppState, target: &str, actions: &[Action]) -> DdiResult<()> {
    for a in actions.iter().filter(|a| a.step == Step::Uninstall) {
        let r = convoy_wire::Report {
            instruction_id: a.instruction.id.clone(),
            phase: Phase::Rollback,
            attempt: a.instruction.attempt,
            report: ReportKind::Failed {
                message: format!(
                    "a DDI device cannot uninstall {}@{}, its first install: it keeps it; deploy another release to replace it",
                    a.deployment.app, a.deployment.version
                ),
            },
            metrics: BTreeMap::new(),
            output: String::new(),
            inventory: None,
        };
        crate::app::reports::submit(st, target.to_owned(), r).await.map_err(ApiError::from)?;
    }
    Ok(())
}

/// A request's preflight on a DDI device: the device runs no steps of
/// convoy's, so the check passes when there are none to run (no prepare
/// hook, required commands or ports, no checks), and fails saying which
/// it cannot run otherwise. The pending checks come from the poll cache.
async fn answer_checks(st: &AppState, target: &str) -> DdiResult<()> {
    for c in st.store.pending_checks(target).await? {
        let Some(d) = st.store.get_deployment(&c.deployment_id).await? else { continue };
        let spec = crate::app::rollout::preflight_spec(st, &d).await.map_err(ApiError::from)?;
        let mut cannot: Vec<String> = Vec::new();
        if let Some(p) = &spec.prepare {
            cannot.push(format!("the prepare hook ({})", clean(p)));
        }
        cannot.extend(spec.commands.iter().map(|c| format!("command {} on the PATH", clean(c))));
        cannot.extend(spec.ports.iter().map(|p| format!("port {p} free")));
        cannot.extend(spec.checks.iter().map(|c| format!("check {}", clean(c))));
        let (report, output) = if cannot.is_empty() {
            (ReportKind::Succeeded, "a DDI device: no preflight steps to run (it checks its image itself)".to_owned())
        } else {
            let why = format!("a DDI device runs none of convoy's preflight steps; asked for {}", cannot.join(", "));
            (ReportKind::Failed { message: why.clone() }, why)
        };
        let r = convoy_wire::Report {
            instruction_id: c.id.clone(),
            phase: Phase::Preflight,
            attempt: 0,
            report,
            metrics: BTreeMap::new(),
            output,
            inventory: None,
        };
        crate::app::rollout::preflight_answer(st, target, &r).await.map_err(ApiError::from)?;
    }
    Ok(())
}

/// Whether to ask a device for its attributes: when it has none on record
/// (one read per device per process), or after an update.
async fn wants_attributes(st: &AppState, target: &str) -> DdiResult<bool> {
    if let Some(w) = st.ddi.attributes.lock().expect("ddi lock").get(target) {
        return Ok(*w);
    }
    let Some(t) = st.store.get_target(target).await? else { return Ok(false) };
    let inv = inventory_of(&t)?;
    let wanted = inv.attributes.is_empty();
    remember(&mut st.ddi.attributes.lock().expect("ddi lock"), target.to_owned(), wanted);
    Ok(wanted)
}

/// Remembers the action shown to a device (for `cancelAction`); a poll
/// showing the same action again changes nothing.
fn note_shown(st: &AppState, target: &str, a: &Action) {
    let mut shown = st.ddi.shown.lock().expect("ddi lock");
    if shown.get(target).is_none_or(|s| s.action != a.id) {
        remember(
            &mut shown,
            target.to_owned(),
            Shown { instruction: a.instruction.id.clone(), action: a.id, canceled: false },
        );
    }
}

/// The action last shown to a device, if its instruction was canceled
/// since (one read, once per canceled action; then from memory).
async fn canceled_shown(st: &AppState, target: &str) -> DdiResult<Option<u64>> {
    let Some(s) = st.ddi.shown.lock().expect("ddi lock").get(target).cloned() else { return Ok(None) };
    if s.canceled {
        return Ok(Some(s.action));
    }
    let state = st.store.get_instruction(&s.instruction).await?.map(|i| i.state);
    let mut shown = st.ddi.shown.lock().expect("ddi lock");
    match state {
        Some(InstructionState::Canceled) => {
            if let Some(e) = shown.get_mut(target).filter(|e| e.action == s.action) {
                e.canceled = true;
            }
            Ok(Some(s.action))
        }
        // still open: it may yet be canceled
        Some(st) if st.phase().is_some() || st == InstructionState::Staged => Ok(None),
        // finished otherwise, or gone: nothing to cancel
        _ => {
            if shown.get(target).is_some_and(|e| e.action == s.action) {
                shown.remove(target);
            }
            Ok(None)
        }
    }
}

// ------------------------------------------------------ deploymentBase

#[derive(Deserialize)]
struct BaseQuery {
    #[serde(default, rename = "actionHistory")]
    action_history: Option<i64>,
}

async fn deployment_json(
    st: &AppState,
    base: &str,
    a: &Action,
    history: Option<i64>,
    closed: bool,
) -> DdiResult<wire::DeploymentBase> {
    let (app, version) = a.release();
    let release = st
        .store
        .get_release(app, version)
        .await?
        .ok_or_else(|| DdiError::not_found(format!("release {app}@{version} is not on this server")))?;
    let files = st.ddi.artifacts.of(&st.chunks, &release.digest, &release.manifest).await.map_err(internal)?;
    let module = module_id(app, version);
    let artifacts = files.iter().map(|f| artifact_json(base, module, f)).collect();
    let open = a.window_open() || (closed && a.step != Step::Wait);
    let history = history.filter(|n| *n != 0).map(|_| wire::ActionHistory {
        status: if closed { "FINISHED" } else { "RUNNING" }.into(),
        messages: std::iter::once(clean(&a.instruction.note)).filter(|n| !n.is_empty()).collect(),
    });
    Ok(wire::DeploymentBase {
        id: a.id.to_string(),
        deployment: wire::Deployment {
            download: "forced".into(),
            update: if open { "forced" } else { "skip" }.into(),
            maintenance_window: Some(if open { "available" } else { "unavailable" }.into()),
            chunks: vec![wire::Chunk {
                part: "os".into(),
                version: version.to_owned(),
                name: app.to_owned(),
                artifacts,
                metadata: vec![
                    wire::Metadata { key: "convoy.digest".into(), value: release.digest.clone() },
                    wire::Metadata { key: "convoy.deployment".into(), value: a.deployment.id.clone() },
                ],
            }],
        },
        action_history: history,
    })
}

fn artifact_json(base: &str, module: u64, f: &artifacts::ArtifactFile) -> wire::Artifact {
    let url = format!("{base}/softwaremodules/{module}/artifacts/{}", escape_segment(&f.filename));
    let links = BTreeMap::from([
        ("download".to_owned(), wire::Link { href: url.clone() }),
        ("download-http".to_owned(), wire::Link { href: url.clone() }),
        ("md5sum".to_owned(), wire::Link { href: format!("{url}.MD5SUM") }),
        ("md5sum-http".to_owned(), wire::Link { href: format!("{url}.MD5SUM") }),
    ]);
    wire::Artifact {
        filename: f.filename.clone(),
        hashes: wire::Hashes { sha1: f.sha1.clone(), md5: f.md5.clone(), sha256: f.sha256.clone() },
        size: f.size,
        links,
    }
}

/// A file name as one path segment.
fn escape_segment(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A closed action's deployment: as it was installed, or, when it ended
/// otherwise, as not to install.
async fn closed_json(
    st: &AppState,
    dev: &Device,
    base: &str,
    id: u64,
    i: InstructionRecord,
    rollback: bool,
    history: Option<i64>,
) -> DdiResult<wire::DeploymentBase> {
    let Some(d) = st.work_deployment(&i.deployment_id).await? else {
        return Err(DdiError::not_found(format!("no action {id} for {}", dev.controller)));
    };
    let installed = matches!(i.state, InstructionState::Succeeded | InstructionState::RolledBack);
    let step = match (installed, rollback) {
        (true, true) => Step::Rollback,
        (true, false) => Step::Install,
        (false, _) => Step::Wait,
    };
    let a = Action { id, step, instruction: i, deployment: d };
    deployment_json(st, base, &a, history, installed).await
}

/// `GET .../deploymentBase/{actionId}`.
async fn deployment_base(
    State(st): State<AppState>,
    peer: Peer,
    headers: HeaderMap,
    Path((tenant, controller, action)): Path<(String, String, String)>,
    q: Result<Query<BaseQuery>, axum::extract::rejection::QueryRejection>,
) -> DdiResult<Response> {
    let dev = device(&st, &peer, &headers, &tenant, &controller).await?;
    let Query(q) = q.map_err(|e| DdiError::bad_request(e.body_text()))?;
    negotiate(&headers)?;
    let id = parse_action(&action)?;
    let base = base_url(&st, &headers, &tenant, &controller);
    let open = open_actions(&st, &dev.target).await?;
    if let Some(a) = open.iter().find(|a| a.id == id && a.step != Step::Uninstall) {
        let body = deployment_json(&st, &base, a, q.action_history, false).await?;
        if a.instruction.state == InstructionState::Created {
            // handed out: created → sent, by the report writer
            crate::app::reports::delivered(&st, &dev.target, &a.instruction.id, a.instruction.attempt);
        }
        note_shown(&st, &dev.target, a);
        return json_answer(&headers, &body);
    }
    // hawkBit answers a closed action's deployment too (not a canceled one)
    match closed_action(&st, &dev.target, id).await? {
        Some((i, rollback)) if i.state != InstructionState::Canceled => {
            json_answer(&headers, &closed_json(&st, &dev, &base, id, i, rollback, q.action_history).await?)
        }
        Some(_) => Err(DdiError::not_found(format!("action {id} was canceled; see cancelAction"))),
        None => Err(DdiError::not_found(format!("no action {id} for {}", dev.controller))),
    }
}

// ------------------------------------------------------------- feedback

/// What a device's feedback means for its instruction: the report to
/// write, if any.
fn report_for(step: Step, f: &ActionFeedback, digest: &str) -> Option<ReportKind> {
    let failed = || ReportKind::Failed { message: failure_text(f) };
    let (ex, fin) = (f.status.execution, f.status.result.finished);
    match step {
        Step::Download => match (ex, fin) {
            (Execution::Closed | Execution::Downloaded, Finished::Failure) => Some(failed()),
            // the device holds the verified artifacts (hashes checked by
            // it), or closed the action it was told not to install
            // (SWUpdate: "Skipped Update."): it installs at go-live
            (Execution::Downloaded, _) | (Execution::Closed, _) => {
                Some(ReportKind::Staged { digest: digest.to_owned() })
            }
            (Execution::Proceeding | Execution::Download | Execution::Scheduled | Execution::Resumed, _) => {
                Some(ReportKind::Received)
            }
            _ => None,
        },
        Step::Wait => None,
        Step::Install | Step::Rollback => match (ex, fin) {
            (Execution::Closed, Finished::Failure) => Some(failed()),
            (Execution::Closed, _) if step == Step::Install => Some(ReportKind::Succeeded),
            (Execution::Closed, _) => Some(ReportKind::RolledBack),
            _ => None,
        },
        Step::Uninstall => None,
    }
}

fn failure_text(f: &ActionFeedback) -> String {
    let mut s: String = f.status.details.iter().map(|d| clean(d)).collect::<Vec<_>>().join("; ");
    if let Some(code) = f.status.code {
        s = format!("code {code}: {s}");
    }
    if s.is_empty() {
        s = "the device reported failure".into();
    }
    if s.len() > 1024 {
        let mut cut = 1024;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

fn output_of(f: &ActionFeedback) -> String {
    let mut out = String::new();
    for d in &f.status.details {
        if out.len() + d.len() > 60 * 1024 {
            break;
        }
        out.push_str(&clean(d));
        out.push('\n');
    }
    out
}

/// Most details lines and bytes one feedback may carry.
const MAX_DETAILS: usize = 200;
const MAX_FEEDBACK: usize = 256 * 1024;

fn check_feedback(f: &ActionFeedback, action: u64) -> DdiResult<()> {
    if f.status.details.len() > MAX_DETAILS {
        return Err(DdiError::bad_request(format!("at most {MAX_DETAILS} details per feedback")));
    }
    // older clients repeat the action id; one naming another action is a mistake
    if let Some(id) = &f.id {
        match id.value() {
            Some(n) if n == action => {}
            Some(n) => {
                return Err(DdiError::not_found(format!("feedback names action {n} but was sent for action {action}")))
            }
            None => return Err(DdiError::bad_request("feedback id must be the action id, a number")),
        }
    }
    Ok(())
}

async fn read_feedback(headers: &HeaderMap, body: &Bytes, action: u64) -> DdiResult<ActionFeedback> {
    if body.len() > MAX_FEEDBACK {
        return Err(DdiError::bad_request(format!("feedback is at most {} KiB", MAX_FEEDBACK / 1024)));
    }
    let f: ActionFeedback = json_body(headers, body)?;
    check_feedback(&f, action)?;
    Ok(f)
}

/// `POST .../deploymentBase/{actionId}/feedback`.
async fn deployment_feedback(
    State(st): State<AppState>,
    peer: Peer,
    headers: HeaderMap,
    Path((tenant, controller, action)): Path<(String, String, String)>,
    body: Bytes,
) -> DdiResult<Response> {
    let dev = device(&st, &peer, &headers, &tenant, &controller).await?;
    let id = parse_action(&action)?;
    let f = read_feedback(&headers, &body, id).await?;
    let open = open_actions(&st, &dev.target).await?;
    let Some(a) = open.into_iter().find(|a| a.id == id && a.step != Step::Uninstall) else {
        return match closed_action(&st, &dev.target, id).await? {
            // canceled, but the device installed it anyway: what it runs
            // is recorded, and the target warned about
            Some((i, false))
                if i.state == InstructionState::Canceled
                    && f.status.execution == Execution::Closed
                    && f.status.result.finished != Finished::Failure =>
            {
                if let Some(d) = st.work_deployment(&i.deployment_id).await? {
                    note_live(&st, &dev.target, &d.app, &d.version).await?;
                    let what = format!(
                        "DDI device {} installed {}@{} (action {id}) after it was canceled",
                        dev.controller, d.app, d.version
                    );
                    st.store.set_target_warning(&dev.target, &what).await?;
                    let actor = format!("agent:{}", dev.target);
                    st.store
                        .append_event(&EventRecord::audit(&actor, "ddi_installed_canceled", what, now_ms()))
                        .await?;
                }
                Err(DdiError::gone(format!("action {id} was canceled")))
            }
            Some(_) => Err(DdiError::gone(format!("action {id} is closed"))),
            None => Err(DdiError::not_found(format!("no action {id} for {}", dev.controller))),
        };
    };
    let Some(kind) = report_for(a.step, &f, &a.deployment.digest) else {
        return Ok(StatusCode::OK.into_response());
    };
    if kind == ReportKind::Received && a.instruction.state == InstructionState::Received {
        return Ok(StatusCode::OK.into_response());
    }
    let phase = match a.step {
        Step::Install => Phase::Activate,
        Step::Rollback => Phase::Rollback,
        _ => Phase::Stage,
    };
    let succeeded = kind == ReportKind::Succeeded;
    let mut metrics = BTreeMap::new();
    if let Some(code) = f.status.code {
        metrics.insert("ddi_code".to_owned(), code.to_string());
    }
    let report = convoy_wire::Report {
        instruction_id: a.instruction.id.clone(),
        phase,
        attempt: a.instruction.attempt,
        report: kind,
        metrics,
        output: output_of(&f),
        inventory: None,
    };
    let answer = crate::app::reports::submit(&st, dev.target.clone(), report).await.map_err(ApiError::from)?;
    if !answer.accepted {
        tracing::info!(target_id = %dev.target, action = id, note = %answer.note, "DDI feedback changed nothing");
    }
    if answer.accepted && matches!(a.step, Step::Install | Step::Rollback) && f.status.execution == Execution::Closed {
        let (app, version) = a.release();
        if f.status.result.finished != Finished::Failure {
            note_live(&st, &dev.target, app, version).await?;
        }
    }
    if succeeded && answer.accepted {
        remember(&mut st.ddi.installed.lock().expect("ddi lock"), dev.target.clone(), id);
        // hawkBit asks for attributes again after an update
        remember(&mut st.ddi.attributes.lock().expect("ddi lock"), dev.target.clone(), true);
    }
    Ok(StatusCode::OK.into_response())
}

/// Records in a device's inventory the release it says it runs now (an
/// agent reports its own; a DDI device's comes from its feedback).
async fn note_live(st: &AppState, target: &str, app: &str, version: &str) -> DdiResult<()> {
    let Some(t) = st.store.get_target(target).await? else { return Ok(()) };
    let mut inv = inventory_of(&t)?;
    inv.current.insert(app.to_owned(), version.to_owned());
    let held = inv.installed.entry(app.to_owned()).or_default();
    if !held.iter().any(|v| v == version) {
        held.push(version.to_owned());
        held.sort();
    }
    let json = serde_json::to_string(&inv).map_err(internal)?;
    st.store.update_target(target, &t.hostname, &json, now_ms()).await?;
    Ok(())
}

// --------------------------------------------------------- cancelAction

/// `GET .../cancelAction/{actionId}`.
async fn cancel_action(
    State(st): State<AppState>,
    peer: Peer,
    headers: HeaderMap,
    Path((tenant, controller, action)): Path<(String, String, String)>,
) -> DdiResult<Response> {
    let dev = device(&st, &peer, &headers, &tenant, &controller).await?;
    negotiate(&headers)?;
    let id = parse_action(&action)?;
    if canceled_shown(&st, &dev.target).await? == Some(id) {
        let body = wire::CancelActionBase {
            id: id.to_string(),
            cancel_action: wire::CancelAction { stop_id: id.to_string() },
        };
        return json_answer(&headers, &body);
    }
    Err(DdiError::not_found(format!("action {id} of {} is not being canceled", dev.controller)))
}

/// `POST .../cancelAction/{actionId}/feedback`: `closed` accepts the
/// cancellation; `rejected` or a failure says the device could not.
async fn cancel_feedback(
    State(st): State<AppState>,
    peer: Peer,
    headers: HeaderMap,
    Path((tenant, controller, action)): Path<(String, String, String)>,
    body: Bytes,
) -> DdiResult<Response> {
    let dev = device(&st, &peer, &headers, &tenant, &controller).await?;
    let id = parse_action(&action)?;
    let f = read_feedback(&headers, &body, id).await?;
    let accepted = match (f.status.execution, f.status.result.finished) {
        (Execution::Closed, Finished::Failure) | (Execution::Rejected, _) => Some(false),
        (Execution::Closed, _) => Some(true),
        _ => None,
    };
    if canceled_shown(&st, &dev.target).await? != Some(id) {
        return match closed_action(&st, &dev.target, id).await? {
            Some(_) => Err(DdiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "hawkbit.server.error.action.notCancelable",
                format!("action {id} is not being canceled"),
            )),
            None => Err(DdiError::not_found(format!("no action {id} for {}", dev.controller))),
        };
    }
    let Some(ok) = accepted else { return Ok(StatusCode::OK.into_response()) };
    st.ddi.shown.lock().expect("ddi lock").remove(&dev.target);
    let what = if ok {
        format!("DDI device {} stopped canceled action {id}", dev.controller)
    } else {
        format!("DDI device {} could not stop canceled action {id}: {}", dev.controller, failure_text(&f))
    };
    if !ok {
        st.store.set_target_warning(&dev.target, &what).await?;
    }
    let actor = format!("agent:{}", dev.target);
    st.store.append_event(&EventRecord::audit(&actor, "ddi_cancel", what, now_ms())).await?;
    Ok(StatusCode::OK.into_response())
}

// ----------------------------------------------------------- configData

/// Most attributes a device keeps, and the longest key or value.
const MAX_ATTRIBUTES: usize = 100;
const MAX_ATTRIBUTE_LEN: usize = 128;

/// `PUT .../configData`: attributes the device reports, kept as its
/// inventory (never as labels).
async fn config_data(
    State(st): State<AppState>,
    peer: Peer,
    headers: HeaderMap,
    Path((tenant, controller)): Path<(String, String)>,
    body: Bytes,
) -> DdiResult<Response> {
    let dev = device(&st, &peer, &headers, &tenant, &controller).await?;
    if body.len() > 64 * 1024 {
        return Err(DdiError::bad_request("configData is at most 64 KiB"));
    }
    let c: wire::ConfigData = json_body(&headers, &body)?;
    if c.data.is_empty() {
        return Err(DdiError::bad_request("configData needs a non-empty data object"));
    }
    let ok = |s: &str| s.len() <= MAX_ATTRIBUTE_LEN && s.chars().all(|ch| !ch.is_control());
    if let Some((k, _)) = c.data.iter().find(|(k, v)| k.is_empty() || !ok(k) || !ok(v)) {
        return Err(DdiError::bad_request(format!(
            "attribute {:?}: keys (non-empty) and values are at most {MAX_ATTRIBUTE_LEN} printable characters",
            clean(k)
        )));
    }
    let t = st.store.get_target(&dev.target).await?.ok_or_else(|| DdiError::not_found("this device was removed"))?;
    let mut inv = inventory_of(&t)?;
    match c.mode.as_deref().unwrap_or("merge") {
        "merge" => inv.attributes.extend(c.data),
        "replace" => inv.attributes = c.data,
        "remove" => inv.attributes.retain(|k, _| !c.data.contains_key(k)),
        other => return Err(DdiError::bad_request(format!("mode {other:?}: merge, replace or remove"))),
    }
    if inv.attributes.len() > MAX_ATTRIBUTES {
        return Err(DdiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "hawkbit.server.error.quota.tooManyRequests",
            format!("a device keeps at most {MAX_ATTRIBUTES} attributes"),
        ));
    }
    inv.kind = convoy_wire::TargetKind::Ddi;
    let json = serde_json::to_string(&inv).map_err(internal)?;
    st.store.update_target(&dev.target, &t.hostname, &json, now_ms()).await?;
    remember(&mut st.ddi.attributes.lock().expect("ddi lock"), dev.target, false);
    Ok(StatusCode::OK.into_response())
}

// -------------------------------------------------------- installedBase

/// `GET .../installedBase/{actionId}`: a finished action's deployment.
async fn installed_base(
    State(st): State<AppState>,
    peer: Peer,
    headers: HeaderMap,
    Path((tenant, controller, action)): Path<(String, String, String)>,
    q: Result<Query<BaseQuery>, axum::extract::rejection::QueryRejection>,
) -> DdiResult<Response> {
    let dev = device(&st, &peer, &headers, &tenant, &controller).await?;
    let Query(q) = q.map_err(|e| DdiError::bad_request(e.body_text()))?;
    negotiate(&headers)?;
    let id = parse_action(&action)?;
    if open_actions(&st, &dev.target).await?.iter().any(|a| a.id == id) {
        return Err(DdiError::not_found(format!("action {id} is still open; see deploymentBase")));
    }
    match closed_action(&st, &dev.target, id).await? {
        Some((i, rollback))
            if matches!(i.state, InstructionState::Succeeded | InstructionState::RolledBack)
                && (rollback == (i.state == InstructionState::RolledBack)) =>
        {
            let base = base_url(&st, &headers, &tenant, &controller);
            json_answer(&headers, &closed_json(&st, &dev, &base, id, i, rollback, q.action_history).await?)
        }
        _ => Err(DdiError::not_found(format!("{} installed nothing with action {id}", dev.controller))),
    }
}

// ------------------------------------------------------------ artifacts

/// The releases a device may download: those of its open actions and of
/// its recent instructions (a device reads only what it was sent).
async fn module_files(st: &AppState, target: &str, module: &str) -> DdiResult<Arc<Vec<artifacts::ArtifactFile>>> {
    let want: u64 =
        module.parse().map_err(|_| DdiError::not_found(format!("no software module {module:?}: ids are numbers")))?;
    let mut releases: Vec<(String, String)> = Vec::new();
    for a in open_actions(st, target).await? {
        let (app, version) = a.release();
        releases.push((app.to_owned(), version.to_owned()));
    }
    let found = releases.iter().find(|(a, v)| module_id(a, v) == want).cloned();
    let found = match found {
        Some(r) => Some(r),
        None => {
            let mut hit = None;
            for i in own_history(st, target).await? {
                let Some(d) = st.work_deployment(&i.deployment_id).await? else { continue };
                for v in std::iter::once(&d.version).chain(i.previous_version.as_ref()) {
                    if module_id(&d.app, v) == want {
                        hit = Some((d.app.clone(), v.clone()));
                    }
                }
                if hit.is_some() {
                    break;
                }
            }
            hit
        }
    };
    let Some((app, version)) = found else {
        return Err(DdiError::not_found(format!("software module {want} is not assigned to this device")));
    };
    let release = st
        .store
        .get_release(&app, &version)
        .await?
        .ok_or_else(|| DdiError::not_found(format!("release {app}@{version} is not on this server")))?;
    st.ddi.artifacts.of(&st.chunks, &release.digest, &release.manifest).await.map_err(internal)
}

/// `GET .../softwaremodules/{moduleId}/artifacts`.
async fn artifact_list(
    State(st): State<AppState>,
    peer: Peer,
    headers: HeaderMap,
    Path((tenant, controller, module)): Path<(String, String, String)>,
) -> DdiResult<Response> {
    let dev = device(&st, &peer, &headers, &tenant, &controller).await?;
    negotiate(&headers)?;
    let files = module_files(&st, &dev.target, &module).await?;
    let base = base_url(&st, &headers, &tenant, &controller);
    let id: u64 = module.parse().unwrap_or_default();
    let list: Vec<wire::Artifact> = files.iter().map(|f| artifact_json(&base, id, f)).collect();
    json_answer(&headers, &list)
}

/// `GET .../softwaremodules/{moduleId}/artifacts/{fileName}` (Range
/// honoured) and `{fileName}.MD5SUM`.
async fn artifact(
    State(st): State<AppState>,
    peer: Peer,
    headers: HeaderMap,
    Path((tenant, controller, module, file)): Path<(String, String, String, String)>,
) -> DdiResult<Response> {
    let dev = device(&st, &peer, &headers, &tenant, &controller).await?;
    let files = module_files(&st, &dev.target, &module).await?;
    if let Some(f) = files.iter().find(|f| f.filename == file) {
        crate::metrics::add(&st.counters.ddi_downloads, 1);
        return Ok(artifacts::download(&st.chunks, f, &headers));
    }
    if let Some(f) = file.strip_suffix(".MD5SUM").and_then(|n| files.iter().find(|f| f.filename == n)) {
        return Ok(artifacts::md5sum(f));
    }
    Err(DdiError::not_found(format!("software module {module} has no artifact {:?}", clean(&file))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn feedback(body: &str) -> ActionFeedback {
        serde_json::from_str(body).unwrap()
    }

    #[test]
    fn staging_feedback() {
        let skipped = feedback(
            r#"{"id": 7, "status": {"execution": "closed", "result": {"finished": "success"}, "details": ["Skipped Update."]}}"#,
        );
        assert_eq!(report_for(Step::Download, &skipped, "d"), Some(ReportKind::Staged { digest: "d".into() }));
        let downloaded = feedback(r#"{"status": {"execution": "downloaded", "result": {"finished": "none"}}}"#);
        assert_eq!(report_for(Step::Download, &downloaded, "d"), Some(ReportKind::Staged { digest: "d".into() }));
        let going = feedback(r#"{"status": {"execution": "proceeding", "result": {"finished": "none"}}}"#);
        assert_eq!(report_for(Step::Download, &going, "d"), Some(ReportKind::Received));
        let failed = feedback(
            r#"{"status": {"execution": "closed", "result": {"finished": "failure"}, "code": 3, "details": ["bad\u001b[2J hash"]}}"#,
        );
        assert_eq!(
            report_for(Step::Download, &failed, "d"),
            Some(ReportKind::Failed { message: "code 3: bad?[2J hash".into() })
        );
        assert_eq!(report_for(Step::Wait, &skipped, "d"), None);
    }

    #[test]
    fn install_feedback() {
        let ok = feedback(r#"{"status": {"execution": "closed", "result": {"finished": "success"}}}"#);
        assert_eq!(report_for(Step::Install, &ok, "d"), Some(ReportKind::Succeeded));
        assert_eq!(report_for(Step::Rollback, &ok, "d"), Some(ReportKind::RolledBack));
        let going = feedback(r#"{"status": {"execution": "proceeding", "result": {"finished": "none"}}}"#);
        assert_eq!(report_for(Step::Install, &going, "d"), None);
        let bad = feedback(r#"{"status": {"execution": "closed", "result": {"finished": "failure"}}}"#);
        assert!(matches!(report_for(Step::Install, &bad, "d"), Some(ReportKind::Failed { .. })));
    }

    #[test]
    fn feedback_id_must_name_the_action() {
        assert!(check_feedback(
            &feedback(r#"{"id": 7, "status": {"execution": "closed", "result": {"finished": "none"}}}"#),
            7
        )
        .is_ok());
        assert!(check_feedback(
            &feedback(r#"{"id": "7", "status": {"execution": "closed", "result": {"finished": "none"}}}"#),
            7
        )
        .is_ok());
        let other = check_feedback(
            &feedback(r#"{"id": 8, "status": {"execution": "closed", "result": {"finished": "none"}}}"#),
            7,
        );
        assert_eq!(other.unwrap_err().status, StatusCode::NOT_FOUND);
        let junk = check_feedback(
            &feedback(r#"{"id": "x", "status": {"execution": "closed", "result": {"finished": "none"}}}"#),
            7,
        );
        assert_eq!(junk.unwrap_err().status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn action_ids_are_json_safe_and_distinct() {
        let a = action_id("i-1", 0, false);
        assert!(a > 0 && a <= i32::MAX as u64);
        assert_ne!(a, action_id("i-1", 1, false));
        assert_ne!(a, action_id("i-1", 0, true));
        assert_eq!(a, action_id("i-1", 0, false));
    }

    #[test]
    fn accept_negotiation() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
            negotiate(&h).map_err(|e| e.status)
        };
        assert_eq!(negotiate(&HeaderMap::new()).unwrap(), "application/hal+json");
        assert_eq!(with("*/*"), Ok("application/hal+json"));
        assert_eq!(with("application/json"), Ok("application/json"));
        assert_eq!(with("application/json;charset=UTF-8"), Ok("application/json"));
        assert_eq!(with("application/hal+json"), Ok("application/hal+json"));
        assert_eq!(with("application/atom+xml"), Err(StatusCode::NOT_ACCEPTABLE));
    }
}
