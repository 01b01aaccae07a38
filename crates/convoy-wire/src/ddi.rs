//! Eclipse hawkBit's Direct Device Integration (DDI) API v1, as devices
//! that already speak it (SWUpdate's suricatta, rauc-hawkbit-updater, the
//! `hawkbit` crate) expect it under `/{tenant}/controller/v1/{controllerId}`.
//! Field names and nesting are hawkBit's; unknown fields in requests are
//! ignored, as hawkBit ignores them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A `_links` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub href: String,
}

/// `GET /{tenant}/controller/v1/{controllerId}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControllerBase {
    pub config: Config,
    #[serde(rename = "_links", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub links: BTreeMap<String, Link>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub polling: Polling,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Polling {
    /// `HH:MM:SS`.
    pub sleep: String,
}

/// `HH:MM:SS` for a number of seconds (at most 23:59:59).
pub fn sleep_text(secs: u64) -> String {
    let s = secs.min(86_399);
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// `GET .../deploymentBase/{actionId}` and `.../installedBase/{actionId}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentBase {
    /// The action id, as a string (hawkBit's form).
    pub id: String,
    pub deployment: Deployment,
    #[serde(rename = "actionHistory", default, skip_serializing_if = "Option::is_none")]
    pub action_history: Option<ActionHistory>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActionHistory {
    pub status: String,
    pub messages: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deployment {
    /// `forced`, `attempt` or `skip`.
    pub download: String,
    /// `forced`, `attempt` or `skip`: `skip` while the maintenance window
    /// is unavailable (download, do not install).
    pub update: String,
    /// `available` or `unavailable`.
    #[serde(rename = "maintenanceWindow", default, skip_serializing_if = "Option::is_none")]
    pub maintenance_window: Option<String>,
    pub chunks: Vec<Chunk>,
}

/// A software module: for convoy, one release.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Chunk {
    pub part: String,
    pub version: String,
    pub name: String,
    pub artifacts: Vec<Artifact>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metadata: Vec<Metadata>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metadata {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub filename: String,
    pub hashes: Hashes,
    pub size: u64,
    #[serde(rename = "_links")]
    pub links: BTreeMap<String, Link>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hashes {
    pub sha1: String,
    pub md5: String,
    pub sha256: String,
}

/// `GET .../cancelAction/{actionId}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CancelActionBase {
    pub id: String,
    #[serde(rename = "cancelAction")]
    pub cancel_action: CancelAction,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CancelAction {
    #[serde(rename = "stopId")]
    pub stop_id: String,
}

/// `POST .../deploymentBase/{actionId}/feedback` and
/// `.../cancelAction/{actionId}/feedback`. Older clients send `id` (a
/// number, or a string from some) and `time`; newer ones `timestamp`. None
/// is required; the path names the action.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActionFeedback {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<ActionIdForm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
    pub status: Status,
}

/// An action id as clients send it: `7` or `"7"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ActionIdForm {
    Number(u64),
    Text(String),
}

impl ActionIdForm {
    pub fn value(&self) -> Option<u64> {
        match self {
            Self::Number(n) => Some(*n),
            Self::Text(s) => s.trim().parse().ok(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub execution: Execution,
    pub result: ResultStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Execution {
    Closed,
    Proceeding,
    Canceled,
    Scheduled,
    Rejected,
    Resumed,
    Downloaded,
    Download,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResultStatus {
    pub finished: Finished,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Finished {
    Success,
    Failure,
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    #[serde(default)]
    pub cnt: u64,
    #[serde(default)]
    pub of: Option<u64>,
}

/// `PUT .../configData`: attributes the device reports about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<ActionIdForm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

/// hawkBit's error body (`ExceptionInfo`), for the DDI routes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExceptionInfo {
    #[serde(rename = "errorCode")]
    pub error_code: String,
    pub message: String,
}

/// `POST /api/v1/ddi/targets` (admin): a device that speaks DDI, known
/// before it first polls.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDdiTarget {
    /// The device's `controllerId` (`-i` of SWUpdate's suricatta).
    pub controller_id: String,
    #[serde(default)]
    pub labels: crate::Labels,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DdiTargetCreated {
    pub target_id: String,
    pub controller_id: String,
    /// The device's `TargetToken`: shown once, stored hashed.
    pub token: String,
    /// `/{tenant}/controller/v1/{controllerId}` on this server.
    pub path: String,
}

/// Allowed in a controller id: ASCII letters, digits, `.`, `_`, `-`, `:`;
/// 1 to 64 bytes.
pub fn valid_controller_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feedback_accepts_both_id_forms_and_none() {
        for body in [
            r#"{"id": 7, "time": "20140511T121314", "status": {"execution": "closed", "result": {"finished": "success"}}}"#,
            r#"{"id": "7", "status": {"execution": "closed", "result": {"finished": "success"}, "details": []}}"#,
            r#"{"timestamp": 1627997501890, "status": {"execution": "closed", "result": {"finished": "success", "progress": {"cnt": 2, "of": 5}}, "code": 200}}"#,
        ] {
            let f: ActionFeedback = serde_json::from_str(body).unwrap();
            assert_eq!(f.status.execution, Execution::Closed);
            assert!(f.id.as_ref().is_none_or(|i| i.value() == Some(7)), "{body}");
        }
    }

    #[test]
    fn feedback_needs_status_result_finished() {
        for body in [
            r#"{"id": 7}"#,
            r#"{"status": {"execution": "closed"}}"#,
            r#"{"status": {"execution": "closed", "result": {}}}"#,
            r#"{"status": {"execution": "finished", "result": {"finished": "success"}}}"#,
        ] {
            assert!(serde_json::from_str::<ActionFeedback>(body).is_err(), "{body}");
        }
    }

    #[test]
    fn sleep_is_hh_mm_ss() {
        assert_eq!(sleep_text(5), "00:00:05");
        assert_eq!(sleep_text(3725), "01:02:05");
        assert_eq!(sleep_text(1 << 40), "23:59:59");
    }

    #[test]
    fn controller_ids() {
        assert!(valid_controller_id("dev-1"));
        assert!(valid_controller_id("a:b.c_d"));
        assert!(!valid_controller_id(""));
        assert!(!valid_controller_id("a/b"));
        assert!(!valid_controller_id(&"x".repeat(65)));
    }
}
