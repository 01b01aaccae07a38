//! HTTP routes, one module per resource: each parses its input, checks the
//! caller's base role, and calls the application layer (`crate::app`).

pub mod admin;
pub mod agent;
pub mod chunks;
pub mod deltas;
pub mod deployments;
pub mod releases;
pub mod requests;
pub mod targets;
pub mod trust;
pub mod tuf;
