//! The request half of a deployment's lifecycle (SPEC §2 P-request …
//! P-confirm): approvals, preflight, confirmation, expiry. A pure state
//! machine: the application layer gathers the facts (approvals given,
//! preflight answers, the clock), asks [`request_step`] what follows, and
//! carries the answer out with one compare-and-set.

use crate::deployment::DeploymentState;
use crate::policy::{Amount, PreflightFailure};

/// What of an environment's policy the request machine reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestRules {
    /// Approvals needed before preflight (0: none).
    pub approvals: u32,
    pub preflight_failure: PreflightFailure,
    /// Preflight failures allowed (of every target checked).
    pub max_failures: Amount,
    /// Whether someone must confirm after preflight.
    pub confirm: bool,
}

/// Something that happened to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestEvent {
    /// Made (or changed, which voids its approvals).
    Submitted,
    /// One more approval of the current revision was recorded: `given` in all.
    Approved {
        given: u32,
    },
    Rejected,
    /// Preflight answers so far: `pending` targets have not answered, and
    /// `overdue` says the preflight time-out passed (they count as failed).
    PreflightAnswers {
        total: u32,
        failed: u32,
        pending: u32,
        overdue: bool,
    },
    /// The planned go-live passed before the request was ready and cannot
    /// move to a window: it waits for a new time and a confirmation.
    GoLiveMissed,
    Confirmed,
    Canceled,
    /// The request's time to be approved or confirmed ran out.
    TimedOut,
}

/// What the application layer does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestStep {
    /// Nothing yet; why.
    Wait(String),
    /// Write the move to `to`.
    Move { to: DeploymentState, note: String },
    /// Approved (or none needed): one preflight check per target in scope.
    StartPreflight { note: String },
    /// Plan the waves and write one instruction per target.
    StartRollout { note: String },
    /// Not possible in this state; nothing changes.
    Refuse(String),
}

/// The next step of a request in `state` after `ev`, under `rules`.
pub fn request_step(state: DeploymentState, ev: &RequestEvent, rules: &RequestRules) -> RequestStep {
    use DeploymentState as D;
    use RequestEvent as E;
    use RequestStep::*;
    let refuse = |what: &str| Refuse(format!("{what}: the request is {}", state.as_str()));
    match (state, ev) {
        (D::AwaitingApproval | D::Preflight | D::AwaitingConfirmation, E::Canceled) => {
            Move { to: D::Canceled, note: "request canceled".into() }
        }
        (_, E::Canceled) => refuse("only a request (before staging) can be canceled"),
        (D::AwaitingApproval | D::Preflight | D::AwaitingConfirmation, E::Submitted) if rules.approvals == 0 => {
            StartPreflight { note: "no approval needed; preflight".into() }
        }
        (D::AwaitingApproval | D::Preflight | D::AwaitingConfirmation, E::Submitted) => {
            Wait(format!("{} approval(s) needed", rules.approvals))
        }
        (_, E::Submitted) => refuse("only a request can be changed"),
        (D::AwaitingApproval, E::Approved { given }) if *given >= rules.approvals => {
            StartPreflight { note: format!("approved ({given} of {}); preflight", rules.approvals) }
        }
        (D::AwaitingApproval, E::Approved { given }) => {
            Wait(format!("{given} of {} approval(s) given", rules.approvals))
        }
        (D::AwaitingApproval, E::Rejected) => Move { to: D::Rejected, note: "rejected".into() },
        (_, E::Approved { .. } | E::Rejected) => refuse("not awaiting approval"),
        (D::Preflight, E::PreflightAnswers { pending, overdue: false, .. }) if *pending > 0 => {
            Wait(format!("{pending} target(s) have not answered preflight"))
        }
        (D::Preflight, E::PreflightAnswers { total, failed, pending, .. }) => {
            let failed = failed + pending;
            let budget = rules.max_failures.floor_of(*total);
            let blocked = match rules.preflight_failure {
                PreflightFailure::Block => failed > 0,
                PreflightFailure::Skip => failed > budget || failed == *total,
            };
            let passed = total - failed.min(*total);
            if blocked {
                Move { to: D::Failed, note: format!("preflight failed on {failed} of {total}") }
            } else if rules.confirm {
                Move {
                    to: D::AwaitingConfirmation,
                    note: format!("preflight passed on {passed} of {total}; waiting for confirmation"),
                }
            } else {
                StartRollout { note: format!("preflight passed on {passed} of {total}; planned and staging") }
            }
        }
        (D::Preflight, E::GoLiveMissed) => Move {
            to: D::AwaitingConfirmation,
            note: "the planned go-live passed: give it a new time (`convoy change --at`), approved again".into(),
        },
        (_, E::PreflightAnswers { .. } | E::GoLiveMissed) => refuse("not in preflight"),
        (D::AwaitingConfirmation, E::Confirmed) => StartRollout { note: "confirmed".into() },
        (_, E::Confirmed) => refuse("not awaiting confirmation"),
        (D::AwaitingApproval, E::TimedOut) => {
            Move { to: D::Expired, note: "not approved in time; request it again".into() }
        }
        (D::AwaitingConfirmation, E::TimedOut) => {
            Move { to: D::Expired, note: "not confirmed in time; request it again".into() }
        }
        (_, E::TimedOut) => Wait("preflight has its own time-out; staging has its deadlines".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeploymentState as D;

    #[test]
    fn self_checks() {
        let rules = RequestRules {
            approvals: 2,
            preflight_failure: PreflightFailure::Skip,
            max_failures: Amount::Count(1),
            confirm: false,
        };
        let e = RequestEvent::PreflightAnswers { total: 1, failed: 1, pending: 0, overdue: false };
        // skipping within the budget never skips every target
        assert!(matches!(request_step(D::Preflight, &e, &rules), RequestStep::Move { to: D::Failed, .. }));
        let late = RequestEvent::PreflightAnswers { total: 3, failed: 0, pending: 1, overdue: true };
        assert!(matches!(request_step(D::Preflight, &late, &rules), RequestStep::StartRollout { .. }));
    }
}
