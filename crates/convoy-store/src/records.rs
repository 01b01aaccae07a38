use convoy_domain::{DeploymentState, InstructionState};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Operator with every right (issue of roles comes later).
    Admin,
    /// Lets a new agent enrol.
    Enrol,
    /// One target's own credential.
    Agent,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Enrol => "enrol",
            Self::Agent => "agent",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Admin, Self::Enrol, Self::Agent].into_iter().find(|k| k.as_str() == s)
    }
}

/// A credential, stored as the BLAKE3 hash of the secret only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub hash: String,
    pub kind: TokenKind,
    /// User name for operators, target id for agents.
    pub subject: String,
    pub created_at: i64,
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

/// A deployment's transition, with the instructions that move along.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentMove<'a> {
    pub from: DeploymentState,
    pub to: DeploymentState,
    pub note: &'a str,
    pub bulk: Option<&'a BulkMove>,
    pub actor: &'a str,
    pub now: i64,
}

/// How many deployments and instructions are in each state, and targets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateCounts {
    pub targets: i64,
    pub deployments: Vec<(String, i64)>,
    pub instructions: Vec<(String, i64)>,
}
