//! convoy's pure core: names, labels, and the state machines of instructions
//! and deployments. No I/O, no async, no clock: callers pass `now` in.

mod deployment;
mod instruction;
mod names;
mod plan;
mod policy;
mod request;

pub use deployment::{
    advance, overdue, request_rollback, resume_after_breach, Advance, Deadlines, DeploymentState, DeploymentView,
    InstrAction, Tally,
};
pub use instruction::{on_report, InstructionState, InstructionView, Outcome, Phase, ReportKind, MAX_STAGE_ATTEMPTS};
pub use names::{parse_reference, targets, AppName, Labels, NameError, Selector, Version};
pub use plan::{check_go_live, plan, wave_start, Plan, PlanTarget, WavePlan};
pub use policy::{
    in_windows, next_allowed, parse_waves, show_time, Amount, OnBreach, OutsideWindow, Policy, PolicyError,
    PreflightFailure, Role, Window,
};
pub use request::{request_step, RequestEvent, RequestRules, RequestStep};
