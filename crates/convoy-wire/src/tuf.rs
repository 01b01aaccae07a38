//! TUF (The Update Framework, specification 1.0) metadata as convoy
//! publishes and checks it: canonical JSON as securesystemslib writes it,
//! ed25519 keys and signatures, the top-level roles (root, timestamp,
//! snapshot, targets) and delegated targets roles, and [`Trusted`], a
//! client that updates its trusted metadata in the specification's order
//! (§5.3–5.6: root by root, then timestamp, snapshot, targets, delegations),
//! refusing rollbacks, expired metadata and too few signatures.
//!
//! Metadata travels as `{"signatures": [...], "signed": {...}}`; signatures
//! are over the canonical JSON of `signed`, so a document is checked from
//! the bytes that arrived, never from a re-serialised copy.

use std::collections::{BTreeMap, BTreeSet};

use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The specification version convoy writes.
pub const SPEC_VERSION: &str = "1.0.31";
/// The path of a release's manifest as a TUF target.
pub fn target_path(app: &str, version: &str) -> String {
    format!("{app}/{version}/manifest.json")
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TufError {
    #[error("not canonical JSON: {0}")]
    Canonical(&'static str),
    #[error("malformed {role} metadata: {why}")]
    Malformed { role: String, why: String },
    #[error("{role} metadata has {got} valid signature(s) of the {need} needed")]
    Threshold { role: String, got: usize, need: u32 },
    #[error("{role} metadata version {got} where {want} was expected")]
    Version { role: String, got: u64, want: String },
    #[error("{role} metadata expired at {expires}")]
    Expired { role: String, expires: String },
    #[error("{0}")]
    Other(String),
}

fn malformed(role: &str, why: impl std::fmt::Display) -> TufError {
    TufError::Malformed { role: role.to_owned(), why: why.to_string() }
}

/// Canonical JSON (OLPC, as securesystemslib's `encode_canonical`): keys
/// sorted, no whitespace, strings escaping only `\` and `"`, integers only.
pub fn canonical(v: &Value) -> Result<Vec<u8>, TufError> {
    let mut out = Vec::new();
    write_canonical(v, &mut out)?;
    Ok(out)
}

fn write_canonical(v: &Value, out: &mut Vec<u8>) -> Result<(), TufError> {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => {
            if !(n.is_i64() || n.is_u64()) {
                return Err(TufError::Canonical("floating-point numbers are not allowed"));
            }
            out.extend_from_slice(n.to_string().as_bytes());
        }
        Value::String(s) => write_string(s, out),
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(x, out)?;
            }
            out.push(b']');
        }
        Value::Object(m) => {
            out.push(b'{');
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                write_canonical(&m[k], out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for b in s.bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, b).as_ref())
}

/// The SHA-256 of `bytes`, as TUF target hashes give it.
pub fn sha256(bytes: &[u8]) -> String {
    sha256_hex(bytes)
}

/// An ed25519 public key in TUF's form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    public: Vec<u8>,
}

impl PublicKey {
    pub fn from_hex(h: &str) -> Result<Self, TufError> {
        let public = hex::decode(h).map_err(|_| TufError::Other("key is not hex".into()))?;
        if public.len() != 32 {
            return Err(TufError::Other("an ed25519 public key has 32 bytes".into()));
        }
        Ok(Self { public })
    }
    pub fn hex(&self) -> String {
        hex::encode(&self.public)
    }
    /// `{"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": HEX}}`.
    pub fn json(&self) -> Value {
        serde_json::json!({"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": self.hex()}})
    }
    /// The key id: SHA-256 of the key's canonical JSON.
    pub fn id(&self) -> String {
        sha256_hex(&canonical(&self.json()).expect("a key is canonical JSON"))
    }
    pub fn from_json(v: &Value) -> Result<Self, TufError> {
        if v["keytype"] != "ed25519" || v["scheme"] != "ed25519" {
            return Err(TufError::Other(format!("unsupported key type {} / scheme {}", v["keytype"], v["scheme"])));
        }
        Self::from_hex(v["keyval"]["public"].as_str().unwrap_or_default())
    }
    /// Whether `sig_hex` is this key's signature over `msg`.
    pub fn verifies_hex(&self, msg: &[u8], sig_hex: &str) -> bool {
        self.verifies(msg, sig_hex)
    }
    fn verifies(&self, msg: &[u8], sig_hex: &str) -> bool {
        let Ok(sig) = hex::decode(sig_hex) else { return false };
        UnparsedPublicKey::new(&ED25519, &self.public).verify(msg, &sig).is_ok()
    }
}

/// An ed25519 key pair that signs metadata.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl SigningKey {
    pub fn generate() -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("the system's random source works");
        Self::from_pkcs8(pkcs8.as_ref()).expect("a fresh key parses")
    }
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, TufError> {
        let pair = Ed25519KeyPair::from_pkcs8(der).map_err(|_| TufError::Other("not an ed25519 PKCS#8 key".into()))?;
        Ok(Self { pair, pkcs8: der.to_vec() })
    }
    pub fn pkcs8_hex(&self) -> String {
        hex::encode(&self.pkcs8)
    }
    pub fn public(&self) -> PublicKey {
        PublicKey { public: self.pair.public_key().as_ref().to_vec() }
    }
    /// A private key file: the public key's TUF form plus `keyid` and the
    /// PKCS#8 secret (`keyval.private`). Keep it 0600, offline for root.
    pub fn to_file(&self) -> Value {
        let mut v = self.public().json();
        v["keyval"]["private"] = Value::String(self.pkcs8_hex());
        v["keyid"] = Value::String(self.public().id());
        v
    }
    pub fn from_file(v: &Value) -> Result<Self, TufError> {
        let der = hex::decode(v["keyval"]["private"].as_str().unwrap_or_default())
            .map_err(|_| TufError::Other("key file has no hex keyval.private".into()))?;
        let k = Self::from_pkcs8(&der)?;
        if let Some(p) = v["keyval"]["public"].as_str() {
            if p != k.public().hex() {
                return Err(TufError::Other("key file's public key does not match its private key".into()));
            }
        }
        Ok(k)
    }
    fn sign_bytes(&self, msg: &[u8]) -> String {
        hex::encode(self.pair.sign(msg).as_ref())
    }
}

/// `signed` wrapped with one signature per key.
pub fn sign(signed: Value, keys: &[&SigningKey]) -> Result<Value, TufError> {
    let msg = canonical(&signed)?;
    let signatures: Vec<Value> =
        keys.iter().map(|k| serde_json::json!({"keyid": k.public().id(), "sig": k.sign_bytes(&msg)})).collect();
    Ok(serde_json::json!({"signatures": signatures, "signed": signed}))
}

/// Adds `key`'s signature to signed metadata (a second root key, say).
pub fn add_signature(meta: &mut Value, key: &SigningKey) -> Result<(), TufError> {
    let msg = canonical(&meta["signed"])?;
    let id = key.public().id();
    let sigs = meta["signatures"].as_array_mut().ok_or_else(|| malformed("", "no signatures list"))?;
    sigs.retain(|s| s["keyid"] != id.as_str());
    sigs.push(serde_json::json!({"keyid": id, "sig": key.sign_bytes(&msg)}));
    Ok(())
}

/// Which keys sign a role, and how many must.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleKeys {
    pub keyids: Vec<String>,
    pub threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Root {
    #[serde(rename = "_type")]
    pub kind: String,
    pub spec_version: String,
    pub version: u64,
    pub expires: String,
    pub consistent_snapshot: bool,
    pub keys: BTreeMap<String, Value>,
    pub roles: BTreeMap<String, RoleKeys>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaFile {
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashes: Option<BTreeMap<String, String>>,
}

/// Timestamp and snapshot metadata: versions of other metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    #[serde(rename = "_type")]
    pub kind: String,
    pub spec_version: String,
    pub version: u64,
    pub expires: String,
    pub meta: BTreeMap<String, MetaFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetFile {
    pub length: u64,
    pub hashes: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<Value>,
}

impl TargetFile {
    /// The BLAKE3 root digest convoy keeps in `custom.convoy.digest`.
    pub fn digest(&self) -> Option<&str> {
        self.custom.as_ref()?.get("convoy")?.get("digest")?.as_str()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegation {
    pub name: String,
    pub keyids: Vec<String>,
    pub threshold: u32,
    pub terminating: bool,
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Delegations {
    pub keys: BTreeMap<String, Value>,
    pub roles: Vec<Delegation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Targets {
    #[serde(rename = "_type")]
    pub kind: String,
    pub spec_version: String,
    pub version: u64,
    pub expires: String,
    pub targets: BTreeMap<String, TargetFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegations: Option<Delegations>,
}

/// An app's publisher role: its releases are delegated to the app's
/// publisher keys (`convoy trust delegate APP`).
pub fn app_role(app: &str) -> String {
    format!("app-{app}")
}

/// The paths an app's publisher role is delegated.
pub fn app_paths(app: &str) -> Vec<String> {
    vec![format!("{app}/*/manifest.json")]
}

/// An environment's approver role: its keys and threshold say whose
/// signatures an approval of a deployment in that environment needs.
/// Nothing is ever listed under it; it is a signed list of keys.
pub fn approvers_role(env: &str) -> String {
    format!("approve-{env}")
}

/// The paths convoy delegates to a role it names: an app's releases
/// (`app-APP`) or an environment's approvals (`approve-ENV`).
pub fn role_paths(name: &str) -> Option<Vec<String>> {
    if let Some(app) = name.strip_prefix("app-") {
        return (!app.is_empty()).then(|| app_paths(app));
    }
    let env = name.strip_prefix("approve-")?;
    // two parts: never a release's path (APP/VERSION/manifest.json), so an
    // app named like it cannot fall under an approver role
    (!env.is_empty()).then(|| vec![format!("convoy-approvals/{env}")])
}

/// Whether a role name is safe in a metadata file name.
pub fn valid_role_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
        && !name.starts_with('.')
        && !name.bytes().next().is_some_and(|b| b.is_ascii_digit())
}

impl Targets {
    /// Delegates `paths` to `keys` (TUF key objects, which may carry a
    /// `convoy_user`) with `threshold`, replacing a role of that name; keys
    /// no role names any more are dropped.
    pub fn delegate(&mut self, name: &str, keys: &[Value], threshold: u32, paths: Vec<String>) -> Result<(), TufError> {
        let mut ids: Vec<String> =
            keys.iter().map(|k| Ok(PublicKey::from_json(k)?.id())).collect::<Result<_, TufError>>()?;
        ids.sort();
        ids.dedup();
        if threshold == 0 || threshold as usize > ids.len() {
            return Err(TufError::Other(format!(
                "a threshold of {threshold} needs at least that many distinct keys (got {})",
                ids.len()
            )));
        }
        let d = self.delegations.get_or_insert_with(Delegations::default);
        for k in keys {
            let id = PublicKey::from_json(k)?.id();
            // one key object per id: a key another role publishes differently
            // (an approver's, with its user) is not silently replaced
            if d.keys.get(&id).is_some_and(|old| old != k)
                && d.roles.iter().any(|r| r.name != name && r.keyids.contains(&id))
            {
                return Err(TufError::Other(format!(
                    "key {id} is published for another role with other fields; use a separate key for {name}"
                )));
            }
            d.keys.insert(id, k.clone());
        }
        let role = Delegation { name: name.to_owned(), keyids: ids, threshold, terminating: true, paths };
        match d.roles.iter_mut().find(|r| r.name == name) {
            Some(r) => *r = role,
            None => d.roles.push(role),
        }
        let used: BTreeSet<String> = d.roles.iter().flat_map(|r| r.keyids.iter().cloned()).collect();
        d.keys.retain(|id, _| used.contains(id));
        Ok(())
    }

    /// The delegated role called `name`, and the keys it may use.
    pub fn delegation(&self, name: &str) -> Option<(&Delegation, &BTreeMap<String, Value>)> {
        let d = self.delegations.as_ref()?;
        Some((d.roles.iter().find(|r| r.name == name)?, &d.keys))
    }

    /// The delegated role a target path falls to, if any.
    pub fn delegated_to(&self, path: &str) -> Option<&Delegation> {
        let d = self.delegations.as_ref()?;
        d.roles.iter().find(|r| r.paths.iter().any(|p| path_matches(p, path)))
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for unix seconds.
pub fn format_time(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // civil from days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Unix seconds of a `YYYY-MM-DDTHH:MM:SSZ` time.
pub fn parse_time(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' || b[19] != b'Z'
    {
        return None;
    }
    let n = |r: std::ops::Range<usize>| {
        let part = s.get(r)?;
        part.bytes().all(|b| b.is_ascii_digit()).then(|| part.parse::<i64>().ok())?
    };
    let (y, m, d, hh, mm, ss) = (n(0..4)?, n(5..7)?, n(8..10)?, n(11..13)?, n(14..16)?, n(17..19)?);
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let days_in = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&m) || d < 1 || d > days_in[(m - 1) as usize] || hh > 23 || mm > 59 || ss > 59 {
        return None;
    }
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Checks that `meta` carries at least `role.threshold` valid signatures
/// from distinct keys of `role` (looked up in `keys`).
pub fn verify(name: &str, meta: &Value, keys: &BTreeMap<String, Value>, role: &RoleKeys) -> Result<(), TufError> {
    if role.threshold == 0 {
        return Err(malformed(name, "threshold 0"));
    }
    let msg = canonical(&meta["signed"])?;
    let sigs = meta["signatures"].as_array().ok_or_else(|| malformed(name, "no signatures"))?;
    let allowed: BTreeSet<&str> = role.keyids.iter().map(String::as_str).collect();
    let mut good = BTreeSet::new();
    for s in sigs {
        let (Some(id), Some(sig)) = (s["keyid"].as_str(), s["sig"].as_str()) else { continue };
        if !allowed.contains(id) || good.contains(id) {
            continue;
        }
        let Some(k) = keys.get(id).and_then(|k| PublicKey::from_json(k).ok()) else { continue };
        // a key listed under an id that is not its own counts for nothing
        if k.id() != id {
            continue;
        }
        if k.verifies(&msg, sig) {
            good.insert(id);
        }
    }
    if good.len() < role.threshold as usize {
        return Err(TufError::Threshold { role: name.to_owned(), got: good.len(), need: role.threshold });
    }
    Ok(())
}

fn parse_signed<T: for<'de> Deserialize<'de>>(name: &str, kind: &str, raw: &[u8]) -> Result<(Value, T), TufError> {
    let meta: Value = serde_json::from_slice(raw).map_err(|e| malformed(name, e))?;
    if meta["signed"]["_type"] != kind {
        return Err(malformed(name, format!("_type is {}, not {kind}", meta["signed"]["_type"])));
    }
    let spec = meta["signed"]["spec_version"].as_str().unwrap_or_default();
    if spec.split('.').next() != Some("1") || spec.split('.').count() < 2 {
        return Err(malformed(name, format!("unsupported spec_version {spec:?}")));
    }
    let t: T = serde_json::from_value(meta["signed"].clone()).map_err(|e| malformed(name, e))?;
    Ok((meta, t))
}

fn fresh(name: &str, expires: &str, now: i64) -> Result<(), TufError> {
    match parse_time(expires) {
        Some(t) if t > now => Ok(()),
        Some(_) => Err(TufError::Expired { role: name.to_owned(), expires: expires.to_owned() }),
        None => Err(malformed(name, format!("expires {expires:?}"))),
    }
}

/// Proof that whoever hands a new root to a single-box server holds that
/// server's key secret (not merely an API token): HMAC-SHA256 under the
/// key secret of the SHA-256 of the new root's canonical JSON (signatures
/// included).
pub fn handover_proof(key_secret: &[u8; 32], root: &Value) -> Result<String, TufError> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key_secret);
    Ok(hex::encode(ring::hmac::sign(&key, sha256_hex(&canonical(root)?).as_bytes()).as_ref()))
}

/// Parses root metadata (for showing it, or as the first trusted root).
pub fn parse_root(raw: &[u8]) -> Result<Root, TufError> {
    Ok(parse_signed::<Root>("root", "root", raw)?.1)
}

/// Checks a root that is trusted out of band (given at enrolment): it must
/// be signed by its own root threshold.
pub fn self_signed_root(raw: &[u8]) -> Result<Root, TufError> {
    let (meta, root) = parse_signed::<Root>("root", "root", raw)?;
    let role = root.roles.get("root").ok_or_else(|| malformed("root", "no root role"))?;
    verify("root", &meta, &root.keys, role)?;
    Ok(root)
}

/// A client's trusted metadata (TUF §5): updated role by role, each update
/// checked against what is already trusted. `now` is unix seconds.
#[derive(Debug, Clone)]
pub struct Trusted {
    pub root: Root,
    pub timestamp: Option<Versions>,
    pub snapshot: Option<Versions>,
    pub targets: Option<Targets>,
    pub delegated: BTreeMap<String, Targets>,
}

impl Trusted {
    /// Starts from a root trusted out of band (checked against itself).
    pub fn new(root_raw: &[u8]) -> Result<Self, TufError> {
        Ok(Self {
            root: self_signed_root(root_raw)?,
            timestamp: None,
            snapshot: None,
            targets: None,
            delegated: BTreeMap::new(),
        })
    }

    fn role(&self, name: &str) -> Result<&RoleKeys, TufError> {
        self.root.roles.get(name).ok_or_else(|| malformed("root", format!("no {name} role")))
    }

    /// The next root (version + 1), signed by the current root's threshold
    /// and by its own. Trusting it forgets the other roles' metadata when
    /// their keys changed (fast-forward attack recovery, §5.3.11).
    pub fn update_root(&mut self, raw: &[u8]) -> Result<(), TufError> {
        let (meta, new) = parse_signed::<Root>("root", "root", raw)?;
        verify("root", &meta, &self.root.keys, self.role("root")?)?;
        let own = new.roles.get("root").ok_or_else(|| malformed("root", "no root role"))?;
        verify("root", &meta, &new.keys, own)?;
        if new.version != self.root.version + 1 {
            return Err(TufError::Version {
                role: "root".into(),
                got: new.version,
                want: (self.root.version + 1).to_string(),
            });
        }
        for r in ["timestamp", "snapshot"] {
            if new.roles.get(r) != self.root.roles.get(r) {
                self.timestamp = None;
                self.snapshot = None;
            }
        }
        if new.roles.get("targets") != self.root.roles.get("targets") {
            self.targets = None;
            self.delegated.clear();
        }
        self.root = new;
        Ok(())
    }

    /// A timestamp: signed by the root's timestamp keys, never older than
    /// the trusted one, pointing at a snapshot never older, and unexpired.
    /// `Ok(false)` when it is the one already trusted.
    pub fn update_timestamp(&mut self, raw: &[u8], now: i64) -> Result<bool, TufError> {
        fresh("root", &self.root.expires.clone(), now)?;
        let (meta, new) = parse_signed::<Versions>("timestamp", "timestamp", raw)?;
        verify("timestamp", &meta, &self.root.keys, self.role("timestamp")?)?;
        let snap = new.meta.get("snapshot.json").ok_or_else(|| malformed("timestamp", "no snapshot.json"))?.version;
        if let Some(old) = &self.timestamp {
            if new.version < old.version {
                return Err(TufError::Version {
                    role: "timestamp".into(),
                    got: new.version,
                    want: format!(">= {}", old.version),
                });
            }
            let old_snap = old.meta.get("snapshot.json").map_or(0, |m| m.version);
            if snap < old_snap {
                return Err(TufError::Version { role: "snapshot".into(), got: snap, want: format!(">= {old_snap}") });
            }
            if new.version == old.version {
                fresh("timestamp", &new.expires, now)?;
                return Ok(false);
            }
        }
        fresh("timestamp", &new.expires, now)?;
        self.timestamp = Some(new);
        Ok(true)
    }

    /// The snapshot version the trusted timestamp names.
    pub fn snapshot_version(&self) -> Option<u64> {
        self.timestamp.as_ref()?.meta.get("snapshot.json").map(|m| m.version)
    }

    /// A snapshot: the version the timestamp names, signed by the root's
    /// snapshot keys, no role in it older than before, unexpired.
    pub fn update_snapshot(&mut self, raw: &[u8], now: i64) -> Result<(), TufError> {
        let want = self.snapshot_version().ok_or_else(|| TufError::Other("no trusted timestamp".into()))?;
        let (meta, new) = parse_signed::<Versions>("snapshot", "snapshot", raw)?;
        verify("snapshot", &meta, &self.root.keys, self.role("snapshot")?)?;
        if new.version != want {
            return Err(TufError::Version { role: "snapshot".into(), got: new.version, want: want.to_string() });
        }
        if let Some(old) = &self.snapshot {
            for (name, m) in &old.meta {
                match new.meta.get(name) {
                    Some(n) if n.version >= m.version => {}
                    Some(n) => {
                        return Err(TufError::Version {
                            role: name.trim_end_matches(".json").to_owned(),
                            got: n.version,
                            want: format!(">= {}", m.version),
                        })
                    }
                    None => return Err(malformed("snapshot", format!("{name} disappeared"))),
                }
            }
        }
        fresh("snapshot", &new.expires, now)?;
        self.snapshot = Some(new);
        Ok(())
    }

    /// The version the trusted snapshot names for a targets role.
    pub fn role_version(&self, role: &str) -> Option<u64> {
        self.snapshot.as_ref()?.meta.get(&format!("{role}.json")).map(|m| m.version)
    }

    /// Top-level targets: the version the snapshot names, signed by the
    /// root's targets keys, unexpired.
    pub fn update_targets(&mut self, raw: &[u8], now: i64) -> Result<(), TufError> {
        let want = self.role_version("targets").ok_or_else(|| malformed("snapshot", "no targets.json"))?;
        let (meta, new) = parse_signed::<Targets>("targets", "targets", raw)?;
        verify("targets", &meta, &self.root.keys, self.role("targets")?)?;
        if new.version != want {
            return Err(TufError::Version { role: "targets".into(), got: new.version, want: want.to_string() });
        }
        fresh("targets", &new.expires, now)?;
        self.targets = Some(new);
        self.delegated.clear();
        Ok(())
    }

    /// A delegated targets role of the top-level targets: signed by the
    /// keys the delegation names, the version the snapshot names.
    pub fn update_delegated(&mut self, name: &str, raw: &[u8], now: i64) -> Result<(), TufError> {
        let targets = self.targets.as_ref().ok_or_else(|| TufError::Other("no trusted targets".into()))?;
        let d = targets.delegations.as_ref().ok_or_else(|| malformed("targets", "no delegations"))?;
        let role = d
            .roles
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| TufError::Other(format!("targets delegates no role {name:?}")))?;
        let want = self.role_version(name).ok_or_else(|| malformed("snapshot", format!("no {name}.json")))?;
        let (meta, new) = parse_signed::<Targets>(name, "targets", raw)?;
        verify(name, &meta, &d.keys, &RoleKeys { keyids: role.keyids.clone(), threshold: role.threshold })?;
        if new.version != want {
            return Err(TufError::Version { role: name.into(), got: new.version, want: want.to_string() });
        }
        fresh(name, &new.expires, now)?;
        // a delegated role lists only paths delegated to it
        if let Some(p) = new.targets.keys().find(|p| !role.paths.iter().any(|pat| path_matches(pat, p))) {
            return Err(TufError::Other(format!("role {name} lists {p}, which is not delegated to it")));
        }
        self.delegated.insert(name.to_owned(), new);
        Ok(())
    }

    /// Every trusted role is within its expiry at `now` (a frozen
    /// repository that keeps serving unchanged metadata is noticed).
    pub fn unexpired(&self, now: i64) -> Result<(), TufError> {
        fresh("root", &self.root.expires, now)?;
        for (name, v) in [("timestamp", &self.timestamp), ("snapshot", &self.snapshot)] {
            if let Some(v) = v {
                fresh(name, &v.expires, now)?;
            }
        }
        if let Some(t) = &self.targets {
            fresh("targets", &t.expires, now)?;
        }
        for (name, t) in &self.delegated {
            fresh(name, &t.expires, now)?;
        }
        Ok(())
    }

    /// The role a target path is delegated to (if the top-level targets
    /// delegates it), for fetching that role before [`Self::find`].
    pub fn delegate_for(&self, path: &str) -> Option<String> {
        let d = self.targets.as_ref()?.delegations.as_ref()?;
        d.roles.iter().find(|r| r.paths.iter().any(|p| path_matches(p, path))).map(|r| r.name.clone())
    }

    /// A target as the trusted metadata describes it: the top-level
    /// targets first, then the first delegated role whose paths match.
    pub fn find(&self, path: &str) -> Option<&TargetFile> {
        let t = self.targets.as_ref()?;
        if let Some(f) = t.targets.get(path) {
            return Some(f);
        }
        let d = t.delegations.as_ref()?;
        for r in &d.roles {
            if r.paths.iter().any(|p| path_matches(p, path)) {
                let found = self.delegated.get(&r.name).and_then(|m| m.targets.get(path));
                if found.is_some() || r.terminating {
                    return found;
                }
            }
        }
        None
    }
}

/// TUF path patterns: `/`-separated parts, each matched with `*` (any
/// run of characters within the part) and `?`.
pub fn path_matches(pattern: &str, path: &str) -> bool {
    let (a, b): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), path.split('/').collect());
    a.len() == b.len() && a.iter().zip(&b).all(|(p, s)| glob(p.as_bytes(), s.as_bytes()))
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&p[1..], s) || (!s.is_empty() && glob(p, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&p[1..], &s[1..]),
        (Some(x), Some(y)) if x == y => glob(&p[1..], &s[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_is_securesystemslibs() {
        let v = serde_json::json!({"b": [1, true, null], "a": "q\"\\é\n", "c": {"z": 0, "y": -3}});
        assert_eq!(
            String::from_utf8(canonical(&v).unwrap()).unwrap(),
            "{\"a\":\"q\\\"\\\\é\n\",\"b\":[1,true,null],\"c\":{\"y\":-3,\"z\":0}}"
        );
        assert!(canonical(&serde_json::json!(1.5)).is_err());
    }

    #[test]
    fn times_round_trip() {
        for t in [0, 951_782_400, 1_795_822_984, 4_102_444_800] {
            assert_eq!(parse_time(&format_time(t)), Some(t), "{}", format_time(t));
        }
        assert_eq!(format_time(1_795_822_984), "2026-11-27T23:43:04Z");
        assert_eq!(parse_time("2026-11-28T00:23:04"), None);
        assert_eq!(parse_time("2026-02-31T00:00:00Z"), None);
        assert_eq!(parse_time("2026-+1-01T00:00:00Z"), None);
        assert!(parse_time("2024-02-29T23:59:59Z").is_some());
    }

    #[test]
    fn approver_roles_never_cover_a_release() {
        let p = role_paths(&approvers_role("prod")).unwrap();
        assert!(!p.iter().any(|pat| path_matches(pat, &target_path("convoy-approvals", "prod"))));
        assert!(!p.iter().any(|pat| path_matches(pat, &target_path("approvals", "prod"))));
        assert_eq!(role_paths("app-web").unwrap(), vec!["web/*/manifest.json".to_owned()]);
        assert_eq!(role_paths("root"), None);
    }

    #[test]
    fn paths_match_part_by_part() {
        assert!(path_matches("web/*/manifest.json", "web/1.0/manifest.json"));
        assert!(!path_matches("web/*", "web/1.0/manifest.json"));
        assert!(!path_matches("web/*/manifest.json", "webx/1.0/manifest.json"));
        assert!(path_matches("w?b/*", "web/2"));
    }

    fn versions(kind: &str, version: u64, expires: i64, meta: &[(&str, u64)]) -> Value {
        serde_json::to_value(Versions {
            kind: kind.into(),
            spec_version: SPEC_VERSION.into(),
            version,
            expires: format_time(expires),
            meta: meta
                .iter()
                .map(|(n, v)| ((*n).to_owned(), MetaFile { version: *v, length: None, hashes: None }))
                .collect(),
        })
        .unwrap()
    }

    #[test]
    fn a_client_refuses_too_few_signatures_rollbacks_and_expiry() {
        let (r1, r2, ts) = (SigningKey::generate(), SigningKey::generate(), SigningKey::generate());
        let root = |version: u64, root_keys: &[&SigningKey], threshold: u32| {
            let keys: BTreeMap<String, Value> =
                root_keys.iter().chain([&&ts]).map(|k| (k.public().id(), k.public().json())).collect();
            let ids = |ks: &[&SigningKey]| ks.iter().map(|k| k.public().id()).collect::<Vec<_>>();
            let roles = BTreeMap::from([
                ("root".to_owned(), RoleKeys { keyids: ids(root_keys), threshold }),
                ("timestamp".to_owned(), RoleKeys { keyids: ids(&[&ts]), threshold: 1 }),
                ("snapshot".to_owned(), RoleKeys { keyids: ids(&[&ts]), threshold: 1 }),
                ("targets".to_owned(), RoleKeys { keyids: ids(&[&ts]), threshold: 1 }),
            ]);
            serde_json::to_value(Root {
                kind: "root".into(),
                spec_version: SPEC_VERSION.into(),
                version,
                expires: format_time(10_000),
                consistent_snapshot: true,
                keys,
                roles,
            })
            .unwrap()
        };
        let v1 = serde_json::to_vec(&sign(root(1, &[&r1, &r2], 2), &[&r1, &r2]).unwrap()).unwrap();
        let mut t = Trusted::new(&v1).unwrap();
        // one signature short of the threshold
        let short = serde_json::to_vec(&sign(root(2, &[&r1, &r2], 2), &[&r1]).unwrap()).unwrap();
        assert!(matches!(t.update_root(&short), Err(TufError::Threshold { got: 1, need: 2, .. })));
        // a root rotated to r2 alone, signed by the old threshold and by itself
        let v2 = serde_json::to_vec(&sign(root(2, &[&r2], 1), &[&r1, &r2]).unwrap()).unwrap();
        t.update_root(&v2).unwrap();
        assert!(t.update_root(&v2).is_err(), "the same version again");
        // timestamps: newer only, unexpired
        let stamp = |v, snap, exp| {
            serde_json::to_vec(&sign(versions("timestamp", v, exp, &[("snapshot.json", snap)]), &[&ts]).unwrap())
                .unwrap()
        };
        assert!(t.update_timestamp(&stamp(3, 3, 5_000), 100).unwrap());
        assert!(!t.update_timestamp(&stamp(3, 3, 5_000), 100).unwrap());
        assert!(matches!(t.update_timestamp(&stamp(2, 3, 5_000), 100), Err(TufError::Version { .. })));
        assert!(matches!(t.update_timestamp(&stamp(4, 2, 5_000), 100), Err(TufError::Version { .. })));
        assert!(matches!(t.update_timestamp(&stamp(5, 5, 200), 300), Err(TufError::Expired { .. })));
        // signed by a key that is no timestamp key
        let forged =
            serde_json::to_vec(&sign(versions("timestamp", 9, 5_000, &[("snapshot.json", 9)]), &[&r1]).unwrap())
                .unwrap();
        assert!(matches!(t.update_timestamp(&forged, 100), Err(TufError::Threshold { .. })));
        // an altered document no longer verifies
        let mut altered: Value = serde_json::from_slice(&stamp(6, 6, 5_000)).unwrap();
        altered["signed"]["meta"]["snapshot.json"]["version"] = 7.into();
        assert!(t.update_timestamp(&serde_json::to_vec(&altered).unwrap(), 100).is_err());
    }
}
