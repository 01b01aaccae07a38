//! Notifications of request events (approval requested, approved,
//! rejected, confirmation requested, expired...) to the environment's
//! webhook: a JSON POST, retried a few times, never holding up the caller.

use std::time::Duration;

use convoy_domain::Policy;
use convoy_store::DeploymentRecord;

use crate::state::{now_ms, AppState};

/// Sends `event` about request `d` to the policy's webhook, if it has one.
pub fn send(st: &AppState, policy: &Policy, event: &str, d: &DeploymentRecord, actor: &str, note: &str) {
    let Some(url) = policy.webhook.clone() else { return };
    let body = serde_json::json!({
        "event": event,
        "at": now_ms(),
        "actor": actor,
        "note": note,
        "request": {
            "id": d.id,
            "env": d.env,
            "app": d.app,
            "version": d.version,
            "selector": d.selector,
            "go_live_at": d.go_live_at,
            "requester": d.created_by,
            "reason": d.reason,
            "approvals_needed": policy.approvals,
            "approver_role": policy.approver_role,
        },
    });
    let counters = st.counters.clone();
    tokio::spawn(async move {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build();
        let Ok(client) = client else { return };
        for attempt in 0..3u32 {
            match client.post(&url).json(&body).send().await {
                Ok(r) if r.status().is_success() => {
                    crate::metrics::add(&counters.webhooks_sent, 1);
                    return;
                }
                Ok(r) => tracing::warn!(%url, status = r.status().as_u16(), attempt, "webhook refused the event"),
                Err(e) => tracing::warn!(%url, error = %e, attempt, "webhook unreachable"),
            }
            tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
        }
        crate::metrics::add(&counters.webhook_failures, 1);
    });
}
