//! Bearer-token authentication. Tokens are looked up by their BLAKE3 hash;
//! the secret itself is never stored.

use axum::http::HeaderMap;
use convoy_store::{hash_token, TokenKind};

use crate::error::ApiError;
use crate::state::AppState;

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Caller {
    Operator(String),
    Enrol,
    Agent(String),
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
    let Some(rec) = state.store.find_token(&hash_token(token)).await? else {
        return Err(ApiError::unauthorized("unknown or revoked token"));
    };
    Ok(match rec.kind {
        TokenKind::Admin => Caller::Operator(rec.subject),
        TokenKind::Enrol => Caller::Enrol,
        TokenKind::Agent => Caller::Agent(rec.subject),
    })
}

pub async fn operator(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    match authenticate(state, headers).await? {
        Caller::Operator(n) => Ok(n),
        _ => Err(ApiError::forbidden("this call needs an operator token")),
    }
}

pub async fn agent(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    match authenticate(state, headers).await? {
        Caller::Agent(t) => Ok(t),
        _ => Err(ApiError::forbidden("this call needs an agent token")),
    }
}

/// Operators and agents may read releases and chunks.
pub async fn reader(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    match authenticate(state, headers).await? {
        Caller::Enrol => Err(ApiError::forbidden("the enrolment token can only enrol agents")),
        c => Ok(c),
    }
}
