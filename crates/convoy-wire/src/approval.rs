//! Signed approvals: what an approver's key signs when it approves a
//! deployment in an environment that requires signed approvals, and the
//! check agents make before they switch.
//!
//! The statement names exactly what is approved (deployment, release and
//! its digest, environment, selector and targets, go-live, who asked, and
//! until when the approval holds). Approvers sign its canonical JSON with
//! their own keys; the server only collects the signatures. Whose keys
//! count, and how many must sign, is the environment's approver role
//! (`approve-ENV`), delegated in the TUF targets signed by the targets key,
//! so it is rooted in the TUF root and not in the server.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::tuf::{self, Delegation, RoleKeys, TufError};

/// The `_type` of an approval statement.
pub const KIND: &str = "convoy-approval";
/// The field of an approver key (in the approver role's keys) naming the
/// user it belongs to: that user's signature never approves their own
/// request.
pub const USER_FIELD: &str = "convoy_user";
/// How long an approval holds after the request's go-live (or, without
/// one, after the request was made or last changed).
pub const APPROVAL_LIFE_SECS: i64 = 14 * 86_400;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    #[serde(rename = "_type")]
    pub kind: String,
    pub deployment: String,
    /// The request's revision: a change makes earlier approvals void.
    pub revision: u32,
    pub app: String,
    pub version: String,
    /// The release's BLAKE3 root digest.
    pub digest: String,
    pub env: String,
    pub selector: String,
    /// Targets named one by one (`deploy --target`), sorted.
    pub targets: Vec<String>,
    /// The go-live asked for (unix ms), if any.
    pub go_live_at: Option<i64>,
    /// The environment's go-live windows the request is bound by.
    pub windows: Vec<String>,
    pub requested_by: String,
    /// `YYYY-MM-DDTHH:MM:SSZ`: agents refuse the approval after it.
    pub expires: String,
}

/// A statement with its approvers' signatures, TUF's envelope:
/// `{"signed": STATEMENT, "signatures": [{"keyid", "sig"}]}`.
pub fn envelope(statement: &Statement, signatures: Vec<Value>) -> Value {
    serde_json::json!({"signed": statement, "signatures": signatures})
}

/// One approver's signature over `statement`.
pub fn sign(statement: &Statement, key: &tuf::SigningKey) -> Result<Value, TufError> {
    let signed = tuf::sign(serde_json::to_value(statement).map_err(|e| TufError::Other(e.to_string()))?, &[key])?;
    Ok(signed["signatures"][0].clone())
}

/// Whether `sig` (`{"keyid", "sig"}`) is `key`'s valid signature over `statement`.
pub fn signature_verifies(statement: &Statement, key: &tuf::PublicKey, sig: &Value) -> bool {
    let Ok(signed) = serde_json::to_value(statement) else { return false };
    let meta = serde_json::json!({"signed": signed, "signatures": [sig]});
    let keys = BTreeMap::from([(key.id(), key.json())]);
    tuf::verify("approval", &meta, &keys, &RoleKeys { keyids: vec![key.id()], threshold: 1 }).is_ok()
}

/// Checks an approval envelope against the environment's approver role:
/// a threshold of valid signatures over exactly the statement that came,
/// by approver keys other than the requester's, unexpired at `now` (unix
/// seconds). Returns the statement for the caller to compare with its work.
pub fn check(
    env_role: &Delegation,
    keys: &BTreeMap<String, Value>,
    envelope: &Value,
    now: i64,
) -> Result<Statement, TufError> {
    let bad = |why: String| TufError::Malformed { role: "approval".into(), why };
    let statement: Statement = serde_json::from_value(envelope["signed"].clone()).map_err(|e| bad(e.to_string()))?;
    if statement.kind != KIND {
        return Err(bad(format!("_type is {:?}, not {KIND}", statement.kind)));
    }
    // a threshold of distinct approvers (people, not keys): each valid
    // signature counts for the user its key is published for; keys
    // published without a user, and the requester's own, count for nothing
    let msg = tuf::canonical(&envelope["signed"])?;
    let sigs = envelope["signatures"].as_array().ok_or_else(|| bad("no signatures".into()))?;
    let mut users = BTreeSet::new();
    for s in sigs {
        let (Some(id), Some(sig)) = (s["keyid"].as_str(), s["sig"].as_str()) else { continue };
        if !env_role.keyids.iter().any(|k| k == id) {
            continue;
        }
        let Some(key) = keys.get(id) else { continue };
        let Some(user) = key[USER_FIELD].as_str() else { continue };
        if user == statement.requested_by {
            continue;
        }
        let Ok(public) = tuf::PublicKey::from_json(key) else { continue };
        if public.id() == id && public.verifies_hex(&msg, sig) {
            users.insert(user);
        }
    }
    if users.len() < env_role.threshold as usize || env_role.threshold == 0 {
        return Err(TufError::Threshold { role: "approval".into(), got: users.len(), need: env_role.threshold });
    }
    match tuf::parse_time(&statement.expires) {
        Some(t) if t > now => Ok(statement),
        Some(_) => Err(TufError::Expired { role: "approval".into(), expires: statement.expires }),
        None => Err(bad(format!("expires {:?}", statement.expires))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tuf::{SigningKey, Targets};

    fn statement() -> Statement {
        Statement {
            kind: KIND.into(),
            deployment: "d-1".into(),
            revision: 1,
            app: "web".into(),
            version: "2.0".into(),
            digest: "ab".repeat(32),
            env: "prod".into(),
            selector: "role=web".into(),
            targets: vec![],
            go_live_at: None,
            windows: vec![],
            requested_by: "rita".into(),
            expires: tuf::format_time(2_000),
        }
    }

    fn user_key(k: &SigningKey, user: &str) -> Value {
        let mut j = k.public().json();
        j[USER_FIELD] = user.into();
        j
    }

    #[test]
    fn a_threshold_of_approvers_other_than_the_requester_over_exactly_the_statement() {
        let (alice, bob, rita) = (SigningKey::generate(), SigningKey::generate(), SigningKey::generate());
        let mut t: Targets = Targets {
            kind: "targets".into(),
            spec_version: tuf::SPEC_VERSION.into(),
            version: 1,
            expires: tuf::format_time(5_000),
            targets: BTreeMap::new(),
            delegations: None,
        };
        let keys = [user_key(&alice, "alice"), user_key(&bob, "bob"), user_key(&rita, "rita")];
        t.delegate(&tuf::approvers_role("prod"), &keys, 2, tuf::role_paths("approve-prod").unwrap()).unwrap();
        let (role, keys) = t.delegation("approve-prod").unwrap();
        let s = statement();
        let sig = |k: &SigningKey| sign(&s, k).unwrap();
        assert!(signature_verifies(&s, &alice.public(), &sig(&alice)));
        assert!(!signature_verifies(&s, &bob.public(), &sig(&alice)));
        // two approvers: approved
        assert_eq!(check(role, keys, &envelope(&s, vec![sig(&alice), sig(&bob)]), 1_000).unwrap(), s);
        // one short, even with the requester's own signature beside it
        let e = check(role, keys, &envelope(&s, vec![sig(&alice), sig(&rita)]), 1_000).unwrap_err();
        assert!(matches!(e, TufError::Threshold { got: 1, need: 2, .. }), "{e}");
        // the same signature twice counts once
        assert!(check(role, keys, &envelope(&s, vec![sig(&alice), sig(&alice)]), 1_000).is_err());
        // a wider selector than the one signed: no signature holds
        let mut wider = envelope(&s, vec![sig(&alice), sig(&bob)]);
        wider["signed"]["selector"] = "role=*".into();
        assert!(matches!(check(role, keys, &wider, 1_000), Err(TufError::Threshold { got: 0, .. })));
        // expired
        assert!(matches!(
            check(role, keys, &envelope(&s, vec![sig(&alice), sig(&bob)]), 3_000),
            Err(TufError::Expired { .. })
        ));
        // a key outside the role
        let mallory = SigningKey::generate();
        assert!(check(role, keys, &envelope(&s, vec![sig(&alice), sig(&mallory)]), 1_000).is_err());
        // one person with two keys is one approver; a key published without its user counts for nothing
        let alice2 = SigningKey::generate();
        let ghost = SigningKey::generate();
        let more =
            [user_key(&alice, "alice"), user_key(&alice2, "alice"), user_key(&bob, "bob"), ghost.public().json()];
        t.delegate(&tuf::approvers_role("prod"), &more, 2, tuf::role_paths("approve-prod").unwrap()).unwrap();
        let (role, keys) = t.delegation("approve-prod").unwrap();
        let e = check(role, keys, &envelope(&s, vec![sig(&alice), sig(&alice2)]), 1_000).unwrap_err();
        assert!(matches!(e, TufError::Threshold { got: 1, need: 2, .. }), "{e}");
        assert!(check(role, keys, &envelope(&s, vec![sig(&alice), sig(&ghost)]), 1_000).is_err());
        assert!(check(role, keys, &envelope(&s, vec![sig(&alice2), sig(&bob)]), 1_000).is_ok());
    }
}
