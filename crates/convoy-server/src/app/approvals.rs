//! Signed approvals: approvers' registered keys, the statement an approver
//! signs (`convoy_wire::approval::Statement`), checking a signature when it
//! is given, and the envelope of signatures handed to agents with their
//! work. The server only collects signatures; agents check them against
//! the environment's approver role in the signed TUF targets, so a server
//! (or its database) alone cannot make an approval.

use convoy_store::{DeploymentRecord, EventRecord, UserKeyRecord};
use convoy_wire::approval::{self, Statement};
use convoy_wire::tuf::{format_time, PublicKey};
use convoy_wire::{ApproverKeys, UserKeyInfo};
use serde_json::Value;

use super::rollout::{in_scope, policy_of};
use super::{AppError, AppResult};
use crate::auth::User;
use crate::state::{now_ms, AppState};

fn key_info(k: &UserKeyRecord) -> UserKeyInfo {
    UserKeyInfo {
        user: k.user.clone(),
        keyid: k.keyid.clone(),
        key: serde_json::from_str(&k.key_json).unwrap_or(Value::Null),
        added_by: k.added_by.clone(),
        added_at: k.added_at,
    }
}

/// Registers a public key for `name` (an admin, or the user for their
/// own name). The key is the TUF key object `convoy keys generate` writes
/// to `FILE.pub`; nothing secret ever reaches the server.
pub async fn add_key(st: &AppState, by: &User, name: &str, key: &Value) -> AppResult<UserKeyInfo> {
    if by.role != convoy_domain::Role::Admin && by.name != name {
        return Err(AppError::forbidden("only an admin registers keys for another user"));
    }
    if key.get("keyval").and_then(|k| k.get("private")).is_some() {
        return Err(AppError::bad_request(
            "that is a private key: register the public one (FILE.pub), and keep the private key to yourself",
        ));
    }
    let public = PublicKey::from_json(key).map_err(|e| AppError::bad_request(format!("not a public key: {e}")))?;
    let rec = UserKeyRecord {
        keyid: public.id(),
        user: name.to_owned(),
        key_json: public.json().to_string(),
        added_by: by.name.clone(),
        added_at: now_ms(),
    };
    let ev = EventRecord::audit(&by.actor(), "users", format!("key {} registered for {name}", rec.keyid), rec.added_at);
    if !st.store.add_user_key(&rec, &ev).await? {
        if st.store.get_user(name).await?.is_none() {
            return Err(AppError::not_found(format!("no user {name:?}")));
        }
        return Err(AppError::conflict(format!("key {} is registered already", rec.keyid)));
    }
    Ok(key_info(&rec))
}

pub async fn keys(st: &AppState, name: Option<&str>) -> AppResult<Vec<UserKeyInfo>> {
    Ok(st.store.user_keys(name).await?.iter().map(key_info).collect())
}

/// The environment's approvers as its TUF approver role should name them:
/// every registered key of a user who may approve there, tagged with the
/// user, and the environment's number of approvals as the threshold.
pub async fn approver_keys(st: &AppState, env: &str) -> AppResult<ApproverKeys> {
    let e = st.store.get_env(env).await?.ok_or_else(|| AppError::not_found(format!("no environment {env:?}")))?;
    let policy: convoy_domain::Policy =
        serde_json::from_str(&e.policy_json).map_err(|e2| AppError::corrupt("policy", env, e2))?;
    let mut keys = Vec::new();
    for u in st.store.list_users().await? {
        let Ok(role) = convoy_domain::Role::parse(&u.role) else { continue };
        if role < policy.approver_role {
            continue;
        }
        for k in st.store.user_keys(Some(&u.name)).await? {
            let mut j: Value =
                serde_json::from_str(&k.key_json).map_err(|e2| AppError::corrupt("key", &k.keyid, e2))?;
            j[approval::USER_FIELD] = Value::String(u.name.clone());
            keys.push(j);
        }
    }
    Ok(ApproverKeys { env: env.to_owned(), threshold: policy.approvals, keys })
}

/// The signed approvals of `d`'s current revision: the statement they
/// signed and each `(approver, signature)`.
async fn signed_now(st: &AppState, d: &DeploymentRecord) -> AppResult<Option<(Statement, Vec<(String, Value)>)>> {
    let mut out: Option<(Statement, Vec<(String, Value)>)> = None;
    for a in st.store.list_approvals(&d.id).await? {
        if a.revision != d.revision || a.decision != "approve" || a.signed.is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&a.signed).map_err(|e| AppError::corrupt("approval", &d.id, e))?;
        let s: Statement =
            serde_json::from_value(v["statement"].clone()).map_err(|e| AppError::corrupt("approval", &d.id, e))?;
        match &mut out {
            None => out = Some((s, vec![(a.approver, v["signature"].clone())])),
            // every approver signs the first one's statement
            Some((first, sigs)) if *first == s => sigs.push((a.approver, v["signature"].clone())),
            Some(_) => {}
        }
    }
    Ok(out)
}

/// What an approver of `d` signs: once someone has signed this revision,
/// exactly what they signed (so every signature is over one statement);
/// before, the request as it stands, with the targets it would reach now.
pub async fn statement(st: &AppState, d: &DeploymentRecord) -> AppResult<Statement> {
    if let Some((s, _)) = signed_now(st, d).await? {
        return Ok(s);
    }
    let (policy, _) = policy_of(d)?;
    let mut targets: Vec<String> = in_scope(st, d).await?.into_iter().map(|t| t.id).collect();
    targets.sort();
    let base = d.created_at.max(d.go_live_at.unwrap_or(0)) / 1000;
    Ok(Statement {
        kind: approval::KIND.into(),
        deployment: d.id.clone(),
        revision: d.revision,
        app: d.app.clone(),
        version: d.version.clone(),
        digest: d.digest.clone(),
        env: d.env.clone().unwrap_or_default(),
        selector: d.selector.clone(),
        targets,
        go_live_at: d.go_live_at,
        windows: policy.windows.clone(),
        requested_by: d.created_by.clone(),
        expires: format_time(base + policy.approval_ttl_secs as i64 + approval::APPROVAL_LIFE_SECS),
    })
}

/// Checks an approver's signature (when given, or when the environment
/// requires one) and returns what to keep with the approval.
pub async fn check(
    st: &AppState,
    user: &User,
    d: &DeploymentRecord,
    signed: Option<(&Statement, &Value)>,
) -> AppResult<String> {
    let (policy, _) = policy_of(d)?;
    let Some((given, sig)) = signed else {
        if policy.signed_approvals {
            return Err(AppError::forbidden(format!(
                "{} requires signed approvals: convoy approve {} --sign-key YOUR_KEY (registered with convoy users key)",
                d.env.as_deref().unwrap_or_default(),
                d.id
            )));
        }
        return Ok(String::new());
    };
    let want = statement(st, d).await?;
    if *given != want {
        return Err(AppError::conflict(
            "the request is not what you signed (it changed, or another approver signed first): look again and sign what `convoy approve` shows now",
        ));
    }
    let keyid = sig["keyid"].as_str().unwrap_or_default();
    let mine = st.store.user_keys(Some(&user.name)).await?;
    let key = mine.iter().find(|k| k.keyid == keyid).ok_or_else(|| {
        AppError::forbidden(format!("key {keyid} is not registered for {} (convoy users key)", user.name))
    })?;
    let public = PublicKey::from_json(&serde_json::from_str(&key.key_json).unwrap_or(Value::Null))
        .map_err(|e| AppError::corrupt("key", keyid, e))?;
    // where the approver role is published, only its keys count with agents
    if let Some(env) = d.env.as_deref() {
        let top = super::tuf::Repo::targets(st.store.as_ref()).await?;
        if let Some((role, _)) = top.delegation(&convoy_wire::tuf::approvers_role(env)) {
            if !role.keyids.iter().any(|k| k == keyid) {
                return Err(AppError::forbidden(format!(
                    "key {keyid} is not among {env}'s published approver keys, so agents would not count it: convoy trust approvers {env}"
                )));
            }
        }
    }
    if !approval::signature_verifies(&want, &public, sig) {
        return Err(AppError::forbidden("the signature does not verify over the statement"));
    }
    Ok(serde_json::json!({"statement": want, "signature": sig}).to_string())
}

/// The approvers' signatures agents get with `d`'s work, if any approval
/// was signed.
pub async fn envelope(st: &AppState, d: &DeploymentRecord) -> AppResult<Option<Value>> {
    if d.env.is_none() {
        return Ok(None);
    }
    Ok(signed_now(st, d).await?.map(|(s, sigs)| approval::envelope(&s, sigs.into_iter().map(|(_, s)| s).collect())))
}
