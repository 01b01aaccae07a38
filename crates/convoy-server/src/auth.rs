//! Bearer-token authentication. Tokens are looked up by their BLAKE3 hash;
//! the secret itself is never stored.

use axum::http::HeaderMap;
use convoy_domain::Role;
use convoy_store::{hash_token, TokenKind};

use crate::error::ApiError;
use crate::state::AppState;

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Caller {
    Operator(User),
    /// An enrolment token, by its id.
    Enrol(String),
    Agent(String),
    /// A DDI device's `TargetToken`, by its target id.
    Ddi(String),
    /// A DDI `GatewayToken`, by its enrolment token's id.
    Gateway(String),
    /// A read grant shown to a mirror (a server on the same database):
    /// content only, never an agent's or operator's call.
    Grant,
}

/// An operator: a user name and its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub role: Role,
}

impl User {
    /// How the user appears as an actor in events.
    pub fn actor(&self) -> String {
        format!("user:{}", self.name)
    }
}

pub async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized("missing Authorization: Bearer <token> header"));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 256)
        .ok_or_else(|| ApiError::unauthorized("malformed Authorization header; expected Bearer <token>"))?;
    authenticate_token(state, token).await
}

/// Who holds this secret.
pub async fn authenticate_token(state: &AppState, token: &str) -> Result<Caller, ApiError> {
    if token.is_empty() || token.len() > 256 {
        return Err(ApiError::unauthorized("malformed token"));
    }
    let Some(rec) = state.store.find_token(&hash_token(token)).await? else {
        return Err(ApiError::unauthorized("unknown or revoked token"));
    };
    if let Some(at) = rec.revoked_at {
        let ago = (crate::state::now_ms() - at).max(0) / 1000;
        let why = if rec.revoked_note.is_empty() { "revoked".to_owned() } else { rec.revoked_note.clone() };
        return Err(ApiError::unauthorized(format!("this {} token was revoked {ago} s ago: {why}", rec.kind.as_str())));
    }
    Ok(match rec.kind {
        TokenKind::Admin => Caller::Operator(User { name: rec.subject, role: Role::Admin }),
        TokenKind::User => {
            let Some(u) = state.store.get_user(&rec.subject).await? else {
                return Err(ApiError::unauthorized("this token's user was removed"));
            };
            let role = Role::parse(&u.role).map_err(ApiError::internal)?;
            Caller::Operator(User { name: u.name, role })
        }
        TokenKind::Enrol => Caller::Enrol(rec.subject),
        TokenKind::Agent => Caller::Agent(rec.subject),
        TokenKind::Ddi => Caller::Ddi(rec.subject),
        TokenKind::Gateway => Caller::Gateway(rec.subject),
    })
}

/// An operator with at least `role` (viewer < deployer < approver < admin).
pub async fn require(state: &AppState, headers: &HeaderMap, role: Role) -> Result<User, ApiError> {
    operator_with(authenticate(state, headers).await?, role)
}

/// [`require`] for a token that came without HTTP (a NATS message).
pub async fn require_token(state: &AppState, token: &str, role: Role) -> Result<User, ApiError> {
    operator_with(authenticate_token(state, token).await?, role)
}

fn operator_with(caller: Caller, role: Role) -> Result<User, ApiError> {
    match caller {
        Caller::Operator(u) if u.role >= role => Ok(u),
        Caller::Operator(u) => {
            Err(ApiError::forbidden(format!("this needs the {role} role or higher; {} is {}", u.name, u.role)))
        }
        _ => Err(ApiError::forbidden("this call needs an operator's token")),
    }
}

pub async fn agent(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    match authenticate(state, headers).await? {
        Caller::Agent(t) => Ok(t),
        _ => Err(ApiError::forbidden("this call needs an agent token")),
    }
}

/// Operators and agents may read releases and chunks; so may a read grant
/// (an agent fetching from this server as a mirror shows no credential).
pub async fn reader(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    if !headers.contains_key(axum::http::header::AUTHORIZATION) {
        if let Some(g) = headers.get(convoy_wire::sign::GRANT_HEADER) {
            let g = g.to_str().map_err(|_| ApiError::unauthorized("malformed read grant"))?;
            let g = convoy_wire::sign::Grant::verify(g, state.key.public_hex(), crate::state::now_ms())
                .map_err(|e| ApiError::unauthorized(format!("read grant refused: {e}")))?;
            tracing::debug!(target_id = %g.target, "content read with a grant");
            return Ok(Caller::Grant);
        }
    }
    match authenticate(state, headers).await? {
        Caller::Enrol(_) => Err(ApiError::forbidden("the enrolment token can only enrol agents")),
        Caller::Ddi(_) | Caller::Gateway(_) => {
            Err(ApiError::forbidden("DDI tokens are for the DDI endpoint (/{tenant}/controller/v1/...) only"))
        }
        c => Ok(c),
    }
}
