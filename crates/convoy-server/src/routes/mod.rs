//! HTTP routes, one module per resource.

pub mod admin;
pub mod agent;
pub mod chunks;
pub mod deltas;
pub mod deployments;
pub mod releases;
pub mod requests;
pub mod targets;
pub mod trust;

use convoy_store::TargetRecord;
use convoy_wire::{Inventory, Labels, TargetInfo};

use crate::error::ApiError;

/// An event of the store as the API shows it.
pub fn event_info(e: convoy_store::EventRecord) -> convoy_wire::EventInfo {
    convoy_wire::EventInfo {
        at: e.at,
        deployment_id: e.deployment_id,
        instruction_id: e.instruction_id,
        from: e.from_state,
        to: e.to_state,
        actor: e.actor,
        note: e.note,
    }
}

pub fn target_info(t: &TargetRecord, relay_site: Option<String>) -> Result<TargetInfo, ApiError> {
    let labels: Labels = serde_json::from_str(&t.labels_json).map_err(ApiError::internal)?;
    let inventory: Inventory = serde_json::from_str(&t.inventory_json).map_err(ApiError::internal)?;
    Ok(TargetInfo {
        id: t.id.clone(),
        hostname: t.hostname.clone(),
        labels,
        inventory,
        enrolled_at: t.enrolled_at,
        last_seen: t.last_seen,
        warning: t.warning.clone(),
        relay_site,
    })
}
