//! The server's online signatures (ed25519): work items and read grants.
//!
//! An agent learns the server's public key when it enrols (from the server
//! itself, never through a relay) and from then on acts only on work that
//! verifies against it, so a relay or mirror in the middle can delay work
//! but neither invent nor alter it. A read grant is what an agent shows a
//! relay or mirror instead of its credential: it lets its holder read
//! content and its own work there for a short while; a server accepts it
//! for content reads only (as a mirror), so a relay learns nothing it could
//! use at the server beyond reading what it already relays.

use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

use crate::Work;

/// Domain separation: a signature over a work item is never a valid grant.
const WORK_CONTEXT: &[u8] = b"convoy work item v1\n";
const GRANT_CONTEXT: &[u8] = b"convoy read grant v1\n";

/// The header a read grant travels in (never `Authorization`).
pub const GRANT_HEADER: &str = "x-convoy-grant";

/// How long a signed work item may be acted on after it was signed.
pub const WORK_TTL_MS: i64 = 60 * 60 * 1000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    #[error("malformed key")]
    Key,
    #[error("malformed signed object: {0}")]
    Malformed(String),
    #[error("signature does not verify against the server's key")]
    BadSignature,
    #[error("signed for target {0}, not this one")]
    WrongTarget(String),
    #[error("expired {0} ms ago")]
    Expired(i64),
}

/// The server's signing key.
pub struct ServerKey {
    pair: Ed25519KeyPair,
    public: String,
}

impl ServerKey {
    /// A new key as `(public hex, secret hex)` (the secret is PKCS#8).
    pub fn generate() -> (String, String) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("the system's random source works");
        let key = Self::from_secret(&hex::encode(pkcs8.as_ref())).expect("a fresh key parses");
        (key.public.clone(), hex::encode(pkcs8.as_ref()))
    }

    pub fn from_secret(secret_hex: &str) -> Result<Self, SignError> {
        let der = hex::decode(secret_hex).map_err(|_| SignError::Key)?;
        let pair = Ed25519KeyPair::from_pkcs8(&der).map_err(|_| SignError::Key)?;
        let public = hex::encode(pair.public_key().as_ref());
        Ok(Self { pair, public })
    }

    pub fn public_hex(&self) -> &str {
        &self.public
    }

    fn sign(&self, context: &[u8], msg: &[u8]) -> String {
        let mut m = Vec::with_capacity(context.len() + msg.len());
        m.extend_from_slice(context);
        m.extend_from_slice(msg);
        hex::encode(self.pair.sign(&m).as_ref())
    }

    /// Signs `work` for `target`, to be acted on until `expires_at`.
    pub fn sign_work(&self, target: &str, expires_at: i64, work: Work) -> SignedWork {
        let st = WorkStatement { target: target.to_owned(), expires_at, work };
        let payload = serde_json::to_string(&st).expect("work serialises");
        let sig = self.sign(WORK_CONTEXT, payload.as_bytes());
        SignedWork { payload, sig }
    }

    /// A read grant, as the string that travels in [`GRANT_HEADER`].
    pub fn grant(&self, g: &Grant) -> String {
        let payload = hex::encode(serde_json::to_vec(g).expect("grant serialises"));
        let sig = self.sign(GRANT_CONTEXT, payload.as_bytes());
        format!("{payload}.{sig}")
    }
}

/// Encrypts a secret (a key's PKCS#8) under `kek` (32 bytes) for storage:
/// `v1:` + hex of nonce and ChaCha20-Poly1305 ciphertext.
pub fn seal_secret(kek: &[u8; 32], secret_hex: &str) -> String {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
    use ring::rand::SecureRandom;
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, kek).expect("32-byte key"));
    let mut nonce = [0u8; 12];
    ring::rand::SystemRandom::new().fill(&mut nonce).expect("the system's random source works");
    let mut buf = secret_hex.as_bytes().to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(SEAL_AAD), &mut buf)
        .expect("sealing cannot fail");
    format!("v1:{}{}", hex::encode(nonce), hex::encode(buf))
}

/// Opens what [`seal_secret`] made; `None` if `kek` is not the key it was
/// sealed with (or the text was altered).
pub fn open_secret(kek: &[u8; 32], sealed: &str) -> Option<String> {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
    let bytes = hex::decode(sealed.strip_prefix("v1:")?).ok()?;
    if bytes.len() < 12 + 16 {
        return None;
    }
    let (nonce, rest) = bytes.split_at(12);
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, kek).ok()?);
    let mut buf = rest.to_vec();
    let plain = key.open_in_place(Nonce::try_assume_unique_for_key(nonce).ok()?, Aad::from(SEAL_AAD), &mut buf).ok()?;
    String::from_utf8(plain.to_vec()).ok()
}

const SEAL_AAD: &[u8] = b"convoy server key v1";

fn verify(public_hex: &str, context: &[u8], msg: &[u8], sig_hex: &str) -> Result<(), SignError> {
    let public = hex::decode(public_hex).map_err(|_| SignError::Key)?;
    let sig = hex::decode(sig_hex).map_err(|_| SignError::Malformed("signature is not hex".into()))?;
    let mut m = Vec::with_capacity(context.len() + msg.len());
    m.extend_from_slice(context);
    m.extend_from_slice(msg);
    UnparsedPublicKey::new(&ED25519, public).verify(&m, &sig).map_err(|_| SignError::BadSignature)
}

/// A work item as the server signed it: `payload` is the JSON of a
/// [`WorkStatement`], `sig` the signature over exactly those bytes.
// no deny_unknown_fields: later versions may add fields (a key id, say)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SignedWork {
    pub payload: String,
    pub sig: String,
}

/// What the server signs: which target the work is for, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkStatement {
    pub target: String,
    pub expires_at: i64,
    pub work: Work,
}

impl SignedWork {
    /// The work, if the signature verifies, it is for `target` and has not
    /// expired at `now`. The only way an agent gets at work.
    pub fn open(&self, public_hex: &str, target: &str, now: i64) -> Result<Work, SignError> {
        verify(public_hex, WORK_CONTEXT, self.payload.as_bytes(), &self.sig)?;
        let st: WorkStatement = serde_json::from_str(&self.payload).map_err(|e| SignError::Malformed(e.to_string()))?;
        if st.target != target {
            return Err(SignError::WrongTarget(st.target));
        }
        if st.expires_at < now {
            return Err(SignError::Expired(now - st.expires_at));
        }
        Ok(st.work)
    }

    /// The statement without checking anything: for a relay sorting what
    /// it passes on, and for naming work an agent refused. Never acted on.
    pub fn unverified(&self) -> Option<WorkStatement> {
        serde_json::from_str(&self.payload).ok()
    }
}

/// A short-lived permission to read content (and, at a relay of its site,
/// its own work) that the server hands an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub target: String,
    /// The target's `site` label when the grant was made; for a relay, the
    /// site an operator granted it.
    pub site: Option<String>,
    /// The holder is a relay (parent relays serve their children).
    pub relay: bool,
    pub expires_at: i64,
}

impl Grant {
    /// Checks a grant string against the server's key at `now`.
    pub fn verify(s: &str, public_hex: &str, now: i64) -> Result<Grant, SignError> {
        let (payload, sig) = s.split_once('.').ok_or_else(|| SignError::Malformed("expected PAYLOAD.SIG".into()))?;
        if s.len() > 2048 {
            return Err(SignError::Malformed("grant too long".into()));
        }
        verify(public_hex, GRANT_CONTEXT, payload.as_bytes(), sig)?;
        let bytes = hex::decode(payload).map_err(|_| SignError::Malformed("payload is not hex".into()))?;
        let g: Grant = serde_json::from_slice(&bytes).map_err(|e| SignError::Malformed(e.to_string()))?;
        if g.expires_at < now {
            return Err(SignError::Expired(now - g.expires_at));
        }
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn work() -> Work {
        Work {
            instruction_id: "i-1".into(),
            deployment_id: "d-1".into(),
            phase: crate::Phase::Stage,
            attempt: 1,
            app: "web".into(),
            version: "1.0".into(),
            digest: "ab".repeat(32),
            go_live_at: None,
            previous_version: None,
            sources: vec![],
            preflight: None,
            env: None,
            approval: None,
        }
    }

    #[test]
    fn work_verifies_only_unaltered_for_its_target_in_time() {
        let (public, secret) = ServerKey::generate();
        let key = ServerKey::from_secret(&secret).unwrap();
        let sw = key.sign_work("t-1", 100, work());
        assert_eq!(sw.open(&public, "t-1", 50).unwrap(), work());
        assert_eq!(sw.open(&public, "t-2", 50), Err(SignError::WrongTarget("t-1".into())));
        assert_eq!(sw.open(&public, "t-1", 150), Err(SignError::Expired(50)));
        let altered = SignedWork { payload: sw.payload.replace("1.0", "6.6"), ..sw.clone() };
        assert_eq!(altered.open(&public, "t-1", 50), Err(SignError::BadSignature));
        let (other, _) = ServerKey::generate();
        assert_eq!(sw.open(&other, "t-1", 50), Err(SignError::BadSignature));
        // a grant's signature is no work item's
        let g = key.grant(&Grant { target: "t-1".into(), site: None, relay: false, expires_at: 100 });
        let (payload, sig) = g.split_once('.').unwrap();
        let forged = SignedWork { payload: payload.into(), sig: sig.into() };
        assert_eq!(forged.open(&public, "t-1", 50), Err(SignError::BadSignature));
    }

    #[test]
    fn sealed_secrets_open_only_with_their_key() {
        let (kek, other) = ([7u8; 32], [8u8; 32]);
        let sealed = seal_secret(&kek, "abcdef");
        assert!(!sealed.contains("abcdef"));
        assert_eq!(open_secret(&kek, &sealed).as_deref(), Some("abcdef"));
        assert_eq!(open_secret(&other, &sealed), None);
        let mut altered = sealed.clone().into_bytes();
        let last = altered.len() - 1;
        altered[last] = if altered[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(open_secret(&kek, std::str::from_utf8(&altered).unwrap()), None);
        assert_eq!(open_secret(&kek, "abcdef"), None, "plain text is not taken");
        assert_ne!(seal_secret(&kek, "abcdef"), sealed, "a fresh nonce each time");
    }

    #[test]
    fn grants_verify_and_expire() {
        let (public, secret) = ServerKey::generate();
        let key = ServerKey::from_secret(&secret).unwrap();
        let g = Grant { target: "t-1".into(), site: Some("sh".into()), relay: false, expires_at: 100 };
        let s = key.grant(&g);
        assert_eq!(Grant::verify(&s, &public, 99).unwrap(), g);
        assert!(matches!(Grant::verify(&s, &public, 101), Err(SignError::Expired(1))));
        let mut bad = s.clone().into_bytes();
        bad[3] ^= 1;
        assert!(Grant::verify(std::str::from_utf8(&bad).unwrap(), &public, 50).is_err());
        assert!(Grant::verify("garbage", &public, 50).is_err());
    }
}
