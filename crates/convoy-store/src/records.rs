use convoy_domain::{DeploymentState, InstructionState};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// The first administrator's token, made at first start (role admin).
    Admin,
    /// A user's API token; the user's role says what it may do.
    User,
    /// Lets a new agent enrol.
    Enrol,
    /// One target's own credential.
    Agent,
    /// A DDI device's `TargetToken` (subject: its target id).
    Ddi,
    /// A DDI `GatewayToken` (subject: its enrolment token's id).
    Gateway,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::User => "user",
            Self::Enrol => "enrol",
            Self::Agent => "agent",
            Self::Ddi => "ddi",
            Self::Gateway => "gateway",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Admin, Self::User, Self::Enrol, Self::Agent, Self::Ddi, Self::Gateway]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// A credential, stored as the BLAKE3 hash of the secret only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub hash: String,
    pub kind: TokenKind,
    /// User name for operators, target id for agents, enrolment token id
    /// for enrolment tokens.
    pub subject: String,
    pub created_at: i64,
    /// Set when the token was revoked (rotated, removed): kept so that its
    /// holder is told why it no longer works.
    pub revoked_at: Option<i64>,
    /// Why it was revoked.
    pub revoked_note: String,
}

impl TokenRecord {
    /// A live token of `kind` for `subject`, made now.
    pub fn new(secret: &str, kind: TokenKind, subject: &str, now: i64) -> Self {
        Self {
            hash: hash_token(secret),
            kind,
            subject: subject.to_owned(),
            created_at: now,
            revoked_at: None,
            revoked_note: String::new(),
        }
    }
}

/// An enrolment token: the labels its targets get (`None`: the agent asks
/// for its own at enrolment), when it expires and how often it may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolTokenRecord {
    pub id: String,
    /// `Labels` JSON, or `None` for a token without a label scope.
    pub labels_json: Option<String>,
    pub expires_at: Option<i64>,
    pub max_uses: Option<i64>,
    pub uses: i64,
    pub created_by: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

impl EnrolTokenRecord {
    /// Why the token cannot enrol now, if it cannot.
    pub fn unusable(&self, now: i64) -> Option<String> {
        if let Some(at) = self.revoked_at {
            return Some(format!("enrolment token {} was revoked (at {at} ms)", self.id));
        }
        if self.expires_at.is_some_and(|e| e <= now) {
            return Some(format!("enrolment token {} has expired", self.id));
        }
        if self.max_uses.is_some_and(|m| self.uses >= m) {
            return Some(format!("enrolment token {} is used up ({} uses)", self.id, self.uses));
        }
        None
    }
}

/// A target an operator made a relay for a site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayRecord {
    pub target_id: String,
    pub site: String,
    /// The URL the site's agents reach it at; `None`: the one the relay
    /// reports (trusted only because an operator granted the relay).
    pub url: Option<String>,
    pub granted_by: String,
    pub granted_at: i64,
}

/// Hex BLAKE3 of a secret token, the only form ever stored.
pub fn hash_token(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

/// A random secret: 32 bytes, hex.
pub fn new_secret() -> String {
    let b: [u8; 32] = rand::random();
    hex::encode(b)
}

/// A short random id with a prefix, e.g. `d-3f9a0c1e22b4`.
pub fn new_id(prefix: &str) -> String {
    let b: [u8; 6] = rand::random();
    format!("{prefix}-{}", hex::encode(b))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRecord {
    pub id: String,
    pub hostname: String,
    /// `Labels` as JSON.
    pub labels_json: String,
    /// `Inventory` as JSON (wire format, versioned by the wire crate).
    pub inventory_json: String,
    pub enrolled_at: i64,
    pub last_seen: i64,
    /// The latest thing the server ignored from this target and why
    /// (labels it asked for, work it refused); empty when none.
    pub warning: String,
}

/// A target's id, hostname and labels (see [`crate::Store::list_target_labels`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetLabels {
    pub id: String,
    pub hostname: String,
    /// `Labels` as JSON.
    pub labels_json: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseRecord {
    pub app: String,
    pub version: String,
    pub digest: String,
    /// Canonical manifest bytes (empty in listings).
    pub manifest: Vec<u8>,
    pub files: i64,
    pub total_size: i64,
    pub chunks: i64,
    pub created_at: i64,
    /// What the publisher said of the build (`convoy_wire::Provenance`
    /// JSON); empty when nothing. Informational: nothing trusts it.
    pub provenance_json: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentRecord {
    pub id: String,
    pub app: String,
    pub version: String,
    pub digest: String,
    pub selector: String,
    pub state: DeploymentState,
    pub go_live_at: Option<i64>,
    pub max_failures: u32,
    /// Targets not staged by then (unix ms) count as failed; `None` waits.
    pub stage_deadline: Option<i64>,
    /// How long after go-live a target may stay silent.
    pub activate_timeout_ms: i64,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub note: String,
    /// The environment whose policy governs it; `None`: a direct deployment.
    pub env: Option<String>,
    pub reason: String,
    /// The environment's `Policy` as JSON, copied when requested.
    pub policy_json: String,
    /// The planned waves (`Vec<WavePlan>` JSON), set on confirmation.
    pub plan_json: String,
    /// The wave going live (0 before the first).
    pub wave: u32,
    /// Bumped by every change of the request; approvals count per revision.
    pub revision: u32,
    /// An unconfirmed request expires then.
    pub expires_at: Option<i64>,
    /// Targets picked by id (comma-separated), besides the selector; empty:
    /// every target the selector matches.
    pub targets: String,
    /// The release plan (`convoy plan apply`) and its entry this request
    /// came from; both empty when it was made by hand.
    pub plan_name: String,
    pub plan_entry: String,
    /// The entry's fingerprint when it was applied.
    pub plan_digest: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstructionRecord {
    pub id: String,
    pub deployment_id: String,
    pub target_id: String,
    pub state: InstructionState,
    pub attempt: u32,
    pub previous_version: Option<String>,
    pub go_live_at: Option<i64>,
    pub reported_digest: Option<String>,
    /// Metrics map as JSON.
    pub metrics_json: String,
    pub output: String,
    pub note: String,
    pub updated_at: i64,
    /// 1-based wave of the deployment's plan.
    pub wave: u32,
    /// When the plan has the target go live (display; `go_live_at` is set
    /// when its wave actually goes).
    pub planned_at: Option<i64>,
}

/// Fields written with an instruction's transition; `None` keeps the value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstructionUpdate {
    pub to: Option<InstructionState>,
    pub attempt: Option<u32>,
    pub go_live_at: Option<i64>,
    pub reported_digest: Option<String>,
    pub metrics_json: Option<String>,
    pub output: Option<String>,
    pub note: String,
}

/// Instructions of a deployment moved along with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkMove {
    pub from: Vec<InstructionState>,
    pub to: InstructionState,
    pub go_live_at: Option<i64>,
    pub note: String,
    pub waves: WaveFilter,
}

/// Which waves' instructions a bulk move touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaveFilter {
    All,
    Only(u32),
    After(u32),
}

impl WaveFilter {
    pub fn matches(self, wave: u32) -> bool {
        match self {
            WaveFilter::All => true,
            WaveFilter::Only(w) => wave == w,
            WaveFilter::After(w) => wave > w,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub seq: i64,
    pub deployment_id: String,
    pub instruction_id: Option<String>,
    pub from_state: String,
    pub to_state: String,
    pub actor: String,
    pub note: String,
    pub at: i64,
}

impl EventRecord {
    /// An audit event that belongs to no deployment (users, tokens, relays,
    /// labels): `what` happened, by `actor`.
    pub fn audit(actor: &str, what: &str, note: String, at: i64) -> Self {
        Self {
            seq: 0,
            deployment_id: String::new(),
            instruction_id: None,
            from_state: String::new(),
            to_state: what.to_owned(),
            actor: actor.to_owned(),
            note,
            at,
        }
    }
}

/// A deployment's transition, with the instructions that move along and
/// what is written with it, all in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentMove<'a> {
    pub from: DeploymentState,
    pub to: DeploymentState,
    pub note: &'a str,
    pub bulk: &'a [BulkMove],
    pub actor: &'a str,
    pub now: i64,
    /// Compare-and-set also on the wave / the request's revision.
    pub from_wave: Option<u32>,
    pub from_revision: Option<u32>,
    /// Values to set; `None` keeps.
    pub wave: Option<u32>,
    pub go_live_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub plan_json: Option<&'a str>,
    /// The policy the request is now under (the environment's at this step).
    pub policy_json: Option<&'a str>,
    /// Rows created with the move (preflight checks, planned instructions).
    pub new_checks: &'a [CheckRecord],
    pub new_instructions: &'a [InstructionRecord],
}

impl<'a> DeploymentMove<'a> {
    pub fn new(from: DeploymentState, to: DeploymentState, note: &'a str, actor: &'a str, now: i64) -> Self {
        DeploymentMove {
            from,
            to,
            note,
            bulk: &[],
            actor,
            now,
            from_wave: None,
            from_revision: None,
            wave: None,
            go_live_at: None,
            expires_at: None,
            plan_json: None,
            policy_json: None,
            new_checks: &[],
            new_instructions: &[],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    /// `convoy_domain::Role` as text.
    pub role: String,
    pub created_by: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvRecord {
    pub name: String,
    /// `convoy_domain::Policy` as JSON.
    pub policy_json: String,
    pub updated_by: String,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRecord {
    pub deployment_id: String,
    pub revision: u32,
    pub approver: String,
    /// `approve` or `reject`.
    pub decision: String,
    pub note: String,
    pub at: i64,
    /// For a signed approval: `{"statement": ..., "signature": {"keyid", "sig"}}`
    /// as JSON (`convoy_wire::approval`); empty otherwise.
    pub signed: String,
}

/// A user's public key for signing approvals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserKeyRecord {
    pub keyid: String,
    pub user: String,
    /// The TUF key object (`{"keytype", "scheme", "keyval"}`) as JSON.
    pub key_json: String,
    pub added_by: String,
    pub added_at: i64,
}

/// One target's preflight for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRecord {
    pub id: String,
    pub deployment_id: String,
    pub target_id: String,
    /// `pending`, `passed` or `failed`.
    pub state: String,
    /// Per-check results (`BTreeMap<String, String>` JSON).
    pub result_json: String,
    pub output: String,
    pub updated_at: i64,
}

/// Which events to read from the audit log (newest first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub deployment: Option<String>,
    pub actor: Option<String>,
    pub limit: u32,
}

/// One instruction's report-driven move, applied in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstructionMove {
    pub id: String,
    pub from: InstructionState,
    pub from_attempt: u32,
    pub up: InstructionUpdate,
    pub actor: String,
}

/// How many deployments and instructions are in each state, and targets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateCounts {
    pub targets: i64,
    /// Targets seen at or after the time given to `state_counts`.
    pub targets_online: i64,
    pub deployments: Vec<(String, i64)>,
    pub instructions: Vec<(String, i64)>,
}
