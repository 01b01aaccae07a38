//! Types that cross the wire between CLI, server and agent. Only these are
//! serialised on the HTTP API; all times are unix milliseconds (UTC).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use convoy_domain::{Labels, Phase, ReportKind};

pub mod approval;
pub mod ddi;
pub mod sign;
pub mod tuf;

/// API version prefix of every route.
pub const API: &str = "/api/v1";

/// Every error response: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `not_found`, `conflict`.
    pub code: String,
    pub message: String,
}

/// What an agent tells about its machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub free_disk_bytes: u64,
    pub labels: Labels,
    /// Staged or installed releases per app.
    pub installed: BTreeMap<String, Vec<String>>,
    /// The live release per app.
    pub current: BTreeMap<String, String>,
    pub agent_version: String,
    /// The URL this agent serves its site on, when it is a relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    /// What runs on the target: a convoy agent, or a device speaking
    /// hawkBit's DDI. Set by the server, never by what a target sends.
    #[serde(default, skip_serializing_if = "TargetKind::is_agent")]
    pub kind: TargetKind,
    /// Attributes a DDI device reports about itself (`configData`):
    /// shown, never used as labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    /// The gateway token a DDI device registered through (the only
    /// gateway token that may speak for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

/// What runs on a target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// `convoy agent`.
    #[default]
    Agent,
    /// A device polling the DDI endpoint (`/{tenant}/controller/v1/...`).
    Ddi,
}

impl TargetKind {
    pub fn is_agent(&self) -> bool {
        *self == TargetKind::Agent
    }
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Agent => "agent",
            TargetKind::Ddi => "ddi",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub inventory: Inventory,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnrollResponse {
    pub target_id: String,
    /// The agent's own credential; shown once, stored hashed by the server.
    pub token: String,
    /// The server's public key (hex ed25519): work must verify against it.
    pub server_key: String,
}

/// `GET /agent/me`: who the agent is to the server, and what it shows
/// relays and mirrors instead of its credential.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentMe {
    pub target_id: String,
    /// The labels the server holds for it (set by operators).
    pub labels: Labels,
    pub server_key: String,
    /// A read grant ([`sign::Grant`]) for relays and mirrors.
    pub grant: String,
    pub grant_expires_at: i64,
    /// The site it relays for, when an operator granted it that.
    pub relay_site: Option<String>,
    /// The server's clock (unix ms) when it answered: agents check the
    /// expiry of work and grants against the server's time, not their own.
    #[serde(default)]
    pub now: i64,
}

/// An agent telling its server it refused work (bad signature, another
/// target's, expired) and where the work came from.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Refusal {
    /// The URL the work came from.
    pub source: String,
    pub reason: String,
    /// The instruction the refused work named, if it could be read.
    pub instruction_id: Option<String>,
}

/// `POST /deployments/{id}/rollback`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// Why; kept in the audit log.
    #[serde(default)]
    pub note: String,
    /// Also roll back targets that had no release before (a first
    /// install): their app is stopped and its live link removed.
    #[serde(default)]
    pub uninstall: bool,
}

/// `POST /deployments/{id}/retry`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    /// Why; kept in the audit log.
    #[serde(default)]
    pub note: String,
    /// Only these targets (ids or hostnames); empty: every failed or
    /// canceled one.
    #[serde(default)]
    pub targets: Vec<String>,
}

/// `POST /enrol-tokens` (admin).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEnrolToken {
    /// The labels every target enrolled with it gets; `None`: the agent's own.
    pub labels: Option<Labels>,
    pub expires_in_secs: Option<u64>,
    pub uses: Option<i64>,
    /// A DDI `GatewayToken` instead: devices show it on every request; it
    /// registers new devices (one use each, with its labels) and speaks for
    /// the DDI devices its label scope covers.
    #[serde(default)]
    pub gateway: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnrolTokenInfo {
    pub id: String,
    pub labels: Option<Labels>,
    pub expires_at: Option<i64>,
    pub max_uses: Option<i64>,
    pub uses: i64,
    pub created_by: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    /// A DDI `GatewayToken` rather than an agents' enrolment token.
    #[serde(default)]
    pub gateway: bool,
    /// The secret: only in the answer that made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// `PUT /relays/{target}` (admin).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RelayGrant {
    pub site: String,
    pub url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RelayInfo {
    pub target_id: String,
    pub hostname: String,
    pub site: String,
    /// The URL agents are given: the granted one, else the one the relay reports.
    pub url: Option<String>,
    pub granted_by: String,
    pub granted_at: i64,
}

/// `PATCH /targets/{id}/labels` (admin).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelChange {
    #[serde(default)]
    pub set: Labels,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A new secret for an existing holder; the old one is revoked.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RotatedToken {
    pub subject: String,
    pub token: String,
    pub revoked: u64,
}

/// One piece of work for an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Work {
    pub instruction_id: String,
    pub deployment_id: String,
    pub phase: Phase,
    pub attempt: u32,
    pub app: String,
    pub version: String,
    /// The release's root digest the staged copy must have.
    pub digest: String,
    /// When to switch (activate phase).
    pub go_live_at: Option<i64>,
    /// The release live before this deployment (rollback target).
    pub previous_version: Option<String>,
    /// Where to fetch content from, in order, before the server itself:
    /// the site's relays (agents verify everything, so these need no trust).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// What to check (preflight phase).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preflight: Option<PreflightSpec>,
    /// The environment whose policy governs the deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// Its approvers' signatures over what they approved
    /// ([`approval::envelope`]): agents of an environment whose approver
    /// role the signed TUF targets delegate stage and switch only with a
    /// threshold of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<serde_json::Value>,
}

/// A target's preflight for a request (P-preflight): the package's
/// preparation and requirements, and the environment's checks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PreflightSpec {
    /// Bytes the release takes on disk.
    pub release_size: u64,
    /// The package's `prepare` hook (run first, in the agent's root).
    pub prepare: Option<String>,
    /// Commands that must be on the PATH.
    pub commands: Vec<String>,
    /// TCP ports that must be free.
    pub ports: Vec<u16>,
    /// Shell commands that must exit 0 (package's, then environment's).
    pub checks: Vec<String>,
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkResponse {
    /// Each item signed by the server for this target ([`sign::SignedWork`]).
    pub work: Vec<sign::SignedWork>,
}

/// A relay's long poll on behalf of its site's agents: returns once any of
/// them has a change newer than the generation the relay holds.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SitePoll {
    /// The server process the generations came from; another means all stale.
    pub epoch: Option<String>,
    /// Seconds to hold the poll open (at most 60).
    pub wait: u64,
    pub targets: Vec<SiteTarget>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SiteTarget {
    pub id: String,
    /// The generation of this target's work the relay holds (0: none).
    pub gen: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SitePollResponse {
    pub epoch: String,
    /// Targets whose work changed: their whole pending work now.
    pub targets: Vec<SiteWork>,
    /// Targets the relay asked for that are not (or no longer) of its
    /// granted site: it stops serving them; the others are unaffected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SiteWork {
    pub id: String,
    pub gen: u64,
    pub work: Vec<sign::SignedWork>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub instruction_id: String,
    pub phase: Phase,
    pub attempt: u32,
    pub report: ReportKind,
    #[serde(default)]
    pub metrics: BTreeMap<String, String>,
    /// Hook output (tail), for failures.
    #[serde(default)]
    pub output: String,
    pub inventory: Option<Inventory>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReportResponse {
    /// False when the report was for work no longer current (nothing changed).
    pub accepted: bool,
    pub note: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChunkIds {
    pub ids: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    pub app: String,
    pub version: String,
    pub manifest: serde_json::Value,
    /// What the build says of itself; informational (nothing trusts it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
}

/// Where a release was built: from `convoy publish` flags or the CI's own
/// environment variables. Shown with the release; never trusted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub commit: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub branch: String,
    /// The CI run (job or pipeline) that built it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ci_url: String,
    /// The repository (URL or owner/name).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub repository: String,
}

impl Provenance {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReleaseInfo {
    pub app: String,
    pub version: String,
    pub digest: String,
    pub files: u64,
    pub total_size: u64,
    pub chunks: u64,
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PublishResponse {
    pub release: ReleaseInfo,
    /// False when the same content was already published under this version.
    pub created: bool,
    /// Whether the server signed it into its TUF targets; false when the
    /// targets role is kept offline (sign it with `publish --sign-key`).
    #[serde(default)]
    pub signed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TargetInfo {
    pub id: String,
    pub hostname: String,
    pub labels: Labels,
    pub inventory: Inventory,
    pub enrolled_at: i64,
    pub last_seen: i64,
    /// What the server last ignored from it (labels asked for, work refused).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub warning: String,
    /// The site it relays for, when granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_site: Option<String>,
}

/// `GET /targets/{id}`: a target and what convoy last did on it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TargetDetail {
    pub target: TargetInfo,
    /// Its last instructions (at most 50), most recently changed first.
    pub history: Vec<TargetHistoryEntry>,
}

/// One deployment as one target lived it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TargetHistoryEntry {
    pub deployment_id: String,
    pub app: String,
    pub version: String,
    /// The deployment's state; `state` is this target's.
    pub deployment_state: String,
    pub instruction_id: String,
    pub state: String,
    pub attempt: u32,
    pub wave: u32,
    pub previous_version: Option<String>,
    pub reported_digest: Option<String>,
    pub metrics: BTreeMap<String, String>,
    pub note: String,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    pub app: String,
    pub version: String,
    /// `k=v,...`; empty selects every target.
    #[serde(default)]
    pub selector: String,
    /// Planned go-live; none means as soon as every copy is verified.
    pub at: Option<i64>,
    #[serde(default)]
    pub max_failures: u32,
    /// Targets not staged within this many seconds count as failed; none waits.
    #[serde(default)]
    pub stage_timeout_secs: Option<u64>,
    /// How long after go-live a target may stay silent (default 900).
    #[serde(default)]
    pub activate_timeout_secs: Option<u64>,
    /// The environment whose policy governs the request (approvals,
    /// preflight, confirmation, windows, waves); none: deploy at once.
    #[serde(default)]
    pub env: Option<String>,
    /// Why (a change ticket, say); shown to approvers.
    #[serde(default)]
    pub reason: String,
    /// Targets picked by id or hostname, besides the selector (every one
    /// named must exist and match it); none: every target it matches.
    #[serde(default)]
    pub targets: Vec<String>,
    /// The release plan entry this request is made from (`convoy plan apply`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanRef>,
}

/// A release plan and one of its entries (`convoy plan apply`): names of
/// letters, digits, `.`, `_` and `-`, at most 64 bytes each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanRef {
    pub name: String,
    pub entry: String,
    /// The entry's fingerprint (hex): applying a changed entry makes a new
    /// request.
    #[serde(default)]
    pub digest: String,
}

impl PlanRef {
    /// Checks both names, saying what is wrong.
    pub fn check(&self) -> Result<(), String> {
        for (what, v) in [("plan name", &self.name), ("plan entry", &self.entry)] {
            if v.is_empty()
                || v.len() > 64
                || !v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                return Err(format!("{what} {v:?}: use 1 to 64 letters, digits, '.', '_' or '-'"));
            }
        }
        if self.digest.len() > 64 || !self.digest.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err("plan digest: at most 64 hex digits".into());
        }
        Ok(())
    }
}

/// `PATCH /deployments/{id}`: changes a request; approvals given so far are void.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviseRequest {
    pub selector: Option<String>,
    /// New go-live (unix ms); `clear_at` drops it.
    pub at: Option<i64>,
    #[serde(default)]
    pub clear_at: bool,
    pub reason: Option<String>,
}

/// Body of approve / reject / confirm / cancel.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    #[serde(default)]
    pub note: String,
    /// A signed approval: the statement the approver signed and the
    /// signature (`{"keyid", "sig"}`) made with their registered key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<approval::Statement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<serde_json::Value>,
}

/// A user's registered public key (for signed approvals).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserKeyInfo {
    pub user: String,
    pub keyid: String,
    /// The TUF key object.
    pub key: serde_json::Value,
    pub added_by: String,
    pub added_at: i64,
}

/// An environment's approvers as a TUF delegation would name them: the
/// registered keys of users who may approve there (each key object with
/// its `convoy_user`), and how many must sign.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApproverKeys {
    pub env: String,
    pub threshold: u32,
    pub keys: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub name: String,
    pub role: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserInfo {
    pub name: String,
    pub role: String,
    pub created_by: String,
    pub created_at: i64,
    /// Only in the answer to creating the user: shown once, stored hashed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnvInfo {
    pub name: String,
    pub policy: convoy_domain::Policy,
    pub updated_by: String,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApprovalInfo {
    pub approver: String,
    /// `approve` or `reject`.
    pub decision: String,
    pub note: String,
    pub at: i64,
    /// False once the request changed after it (it no longer counts).
    pub current: bool,
    /// The key id a signed approval was signed with (checked by the
    /// server when given; agents check it again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_with: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckInfo {
    pub target_id: String,
    pub hostname: String,
    /// `pending`, `passed`, `failed`.
    pub state: String,
    /// Each check's result (`disk`, `command:git`, `port:8080`, `check:1`, `prepare`).
    pub results: BTreeMap<String, String>,
    pub output: String,
    pub updated_at: i64,
}

/// Which targets go live when (before confirmation: as it would be now).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlanInfo {
    pub waves: Vec<convoy_domain::WavePlan>,
    /// `(target id, hostname, wave)`.
    pub targets: Vec<(String, String, u32)>,
    #[serde(default)]
    pub note: Option<String>,
}

/// An item of `convoy requests`: a request waiting for the caller.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RequestInfo {
    pub deployment: DeploymentInfo,
    /// `approve` or `confirm`: what the caller may do.
    pub waiting_for: String,
    pub approvals: u32,
    pub approvals_needed: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Counts {
    pub total: u32,
    pub staged: u32,
    pub live: u32,
    pub failed: u32,
    pub rolled_back: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeploymentInfo {
    pub id: String,
    pub app: String,
    pub version: String,
    pub digest: String,
    pub selector: String,
    pub state: String,
    pub go_live_at: Option<i64>,
    pub max_failures: u32,
    pub stage_deadline: Option<i64>,
    pub activate_timeout_secs: u64,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub note: String,
    pub counts: Counts,
    #[serde(default)]
    pub env: Option<String>,
    #[serde(default)]
    pub reason: String,
    /// The wave going live (0 before the first).
    #[serde(default)]
    pub wave: u32,
    #[serde(default)]
    pub revision: u32,
    /// An unconfirmed request expires then.
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// Who paused it (no new wave starts until it is resumed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_by: Option<String>,
    /// The release plan entry it was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstructionInfo {
    pub id: String,
    pub target_id: String,
    pub hostname: String,
    pub labels: Labels,
    pub state: String,
    pub attempt: u32,
    pub previous_version: Option<String>,
    pub reported_digest: Option<String>,
    pub metrics: BTreeMap<String, String>,
    pub output: String,
    pub note: String,
    pub updated_at: i64,
    #[serde(default)]
    pub wave: u32,
    #[serde(default)]
    pub planned_at: Option<i64>,
    /// When the target last polled or reported.
    pub last_seen: i64,
    /// Download progress while staging, as the agent last told it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
}

/// How far a target's download has come (uncompressed bytes of the chunks
/// it had to fetch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Progress {
    pub done_bytes: u64,
    pub total_bytes: u64,
}

/// `POST /agent/progress`: sent every few seconds while fetching; kept in
/// the server's memory only.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProgressReport {
    pub instruction_id: String,
    pub progress: Progress,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventInfo {
    pub at: i64,
    pub deployment_id: String,
    pub instruction_id: Option<String>,
    pub from: String,
    pub to: String,
    pub actor: String,
    pub note: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeploymentDetail {
    pub deployment: DeploymentInfo,
    pub instructions: Vec<InstructionInfo>,
    pub events: Vec<EventInfo>,
    /// What the upgrade changes, from each release the targets ran before.
    #[serde(default)]
    pub changes: Vec<Changes>,
    #[serde(default)]
    pub approvals: Vec<ApprovalInfo>,
    /// Preflight results per target.
    #[serde(default)]
    pub checks: Vec<CheckInfo>,
    #[serde(default)]
    pub plan: Option<PlanInfo>,
    /// Targets the selector matches now that are not in the deployment
    /// (enrolled or relabelled after it was planned), as `HOST (ID)`;
    /// looked for only when asked (`?late=true`: it reads every target).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_included: Vec<String>,
    /// Targets per state, over the whole deployment.
    #[serde(default)]
    pub states: BTreeMap<String, u32>,
    /// Targets per wave and state, over the whole deployment.
    #[serde(default)]
    pub waves: Vec<WaveCounts>,
    /// How many targets the page's filter matches (`instructions` holds
    /// at most `limit` of them, in instruction id order).
    #[serde(default)]
    pub matching: u32,
    /// Pass as `after` for the next page; absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WaveCounts {
    pub wave: u32,
    pub total: u32,
    pub states: BTreeMap<String, u32>,
}

/// The query of `GET /deployments`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only deployments made from this release plan (every one of them).
    pub plan: Option<String>,
}

/// The query of `GET /deployments/{id}`: which targets come in
/// `instructions`, a page at a time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DetailQuery {
    /// Instruction states, comma-separated (`failed,rolled_back`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<u32>,
    /// A label selector the target's labels must match (`site=berlin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Page size: 1 to [`DETAIL_MAX_LIMIT`]; [`DETAIL_LIMIT`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The `next` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Also name the targets the selector matches that the deployment
    /// left out (reads every enrolled target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late: Option<bool>,
}

pub const DETAIL_LIMIT: u32 = 500;
pub const DETAIL_MAX_LIMIT: u32 = 2_000;

/// `POST /releases/{app}/{version}/sync` (sent zstd-compressed): files of
/// the release a machine lacks, each with what it holds at that path. The
/// answer is, per file in order, 1 byte kind (0: nothing, fetch chunks;
/// 1: a zstd patch of the known file; 2: references, then instructions
/// against them and the machine's own file, `convoy_pack::apply_ops`; 3:
/// references, then the file as a zstd patch against them), 8 bytes
/// big-endian length, the payload. References are other files of the
/// wanted release the machine holds (one the request does not name, or
/// one answered before): 1 byte count, per file 2 bytes big-endian length
/// and its path; their bytes end to end are the patch's context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    pub files: Vec<SyncFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncFile {
    /// The file of the release wanted.
    pub path: String,
    pub have: SyncHave,
}

/// What the machine holds at a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SyncHave {
    /// Exactly the file `path` of the app's release `version` (its chunks
    /// verified on the machine).
    Known { version: String, path: String },
    /// Bytes the server does not know: their block signatures
    /// (`convoy_pack::signatures`, hex) in blocks of `block` bytes.
    Signatures { size: u64, block: u32, sums: String },
    /// Nothing (deleted here): the file comes compressed against similar
    /// files of the release the machine holds (kind 3).
    Nothing,
}

/// Most files one sync request may name.
pub const SYNC_MAX_FILES: usize = 10_000;

/// The generated description of an upgrade (P-strategy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Changes {
    pub app: String,
    pub from_version: String,
    pub to_version: String,
    pub from_digest: String,
    pub to_digest: String,
    /// Paths added, removed and changed (directories end in `/`).
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    /// Bytes of the files added or changed.
    pub changed_bytes: u64,
    pub total_size: u64,
    /// Machine-owned config files (per the new `convoy.toml`) whose
    /// packaged defaults changed; the machine's own copies are kept.
    pub config_changed: Vec<String>,
    /// The new release's migrate hook, which runs at go-live.
    pub migrate: Option<String>,
    /// When the new release was published (unix ms).
    pub published_at: i64,
}
