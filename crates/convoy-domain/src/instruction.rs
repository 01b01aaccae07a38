//! One target's instruction within a deployment, and how agent reports move it.
//!
//! ```text
//! created → sent → received → staged ──(gate)──→ activating → succeeded
//!    ↑_____ digest mismatch (bounded) ___|            ↘ rolled_back | failed
//! succeeded | activating ──(rollback)──→ rolling_back → rolled_back
//! ```

use serde::{Deserialize, Serialize};

/// How many times a target stages a release before the gate gives up on it.
pub const MAX_STAGE_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstructionState {
    Created,
    Sent,
    Received,
    Staged,
    Activating,
    Succeeded,
    Failed,
    RollingBack,
    RolledBack,
    Canceled,
    /// Left alone by a rollback: a later deployment moved the target on
    /// from this release, so this one no longer speaks for it.
    Superseded,
}

/// The work an agent does for an instruction in a given state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Stage,
    Activate,
    Rollback,
    /// A request's checks on a target before anything is deployed; its
    /// `instruction_id` names the check, and it ends `succeeded` (passed)
    /// or `failed`.
    Preflight,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Stage => "stage",
            Phase::Activate => "activate",
            Phase::Rollback => "rollback",
            Phase::Preflight => "preflight",
        }
    }
}

const ALL: [InstructionState; 11] = [
    InstructionState::Created,
    InstructionState::Sent,
    InstructionState::Received,
    InstructionState::Staged,
    InstructionState::Activating,
    InstructionState::Succeeded,
    InstructionState::Failed,
    InstructionState::RollingBack,
    InstructionState::RolledBack,
    InstructionState::Canceled,
    InstructionState::Superseded,
];

impl InstructionState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Sent => "sent",
            Self::Received => "received",
            Self::Staged => "staged",
            Self::Activating => "activating",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::RollingBack => "rolling_back",
            Self::RolledBack => "rolled_back",
            Self::Canceled => "canceled",
            Self::Superseded => "superseded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// The agent's pending work in this state, if any.
    pub fn phase(self) -> Option<Phase> {
        match self {
            Self::Created | Self::Sent | Self::Received => Some(Phase::Stage),
            Self::Activating => Some(Phase::Activate),
            Self::RollingBack => Some(Phase::Rollback),
            _ => None,
        }
    }
}

/// What an agent says about its work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReportKind {
    /// The agent has taken the work up.
    Received,
    /// The release is assembled; `digest` is what the agent computed from disk.
    Staged { digest: String },
    /// Activation (or rollback) finished and the health check passed.
    Succeeded,
    /// Activation failed and the agent switched back to the previous release.
    RolledBack,
    /// The work failed; `message` says why.
    Failed { message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstructionView {
    pub state: InstructionState,
    pub attempt: u32,
}

/// The result of applying a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Persist this state (and attempt) with the note.
    Move { to: InstructionState, attempt: u32, note: String },
    /// The report is for work that is no longer current; acknowledge, change nothing.
    Stale(String),
}

fn moved(to: InstructionState, attempt: u32, note: impl Into<String>) -> Outcome {
    Outcome::Move { to, attempt, note: note.into() }
}

/// Applies an agent's report for `(phase, attempt)` to an instruction.
pub fn on_report(
    cur: InstructionView,
    phase: Phase,
    attempt: u32,
    report: &ReportKind,
    expected_digest: &str,
) -> Outcome {
    if cur.state.phase() != Some(phase) || cur.attempt != attempt {
        return Outcome::Stale(format!(
            "report for {} attempt {attempt} but instruction is {} attempt {}",
            phase.as_str(),
            cur.state.as_str(),
            cur.attempt
        ));
    }
    use InstructionState as S;
    let next_attempt = || {
        if attempt + 1 < MAX_STAGE_ATTEMPTS {
            Some(attempt + 1)
        } else {
            None
        }
    };
    match (phase, report) {
        (Phase::Stage, ReportKind::Received) if cur.state != S::Received => {
            moved(S::Received, attempt, "agent took up staging")
        }
        (Phase::Stage, ReportKind::Received) => Outcome::Stale("already received".into()),
        (Phase::Stage, ReportKind::Staged { digest }) if digest == expected_digest => {
            moved(S::Staged, attempt, format!("staged; digest {digest} matches the release"))
        }
        (Phase::Stage, ReportKind::Staged { digest }) => {
            let why = format!("consistency gate: target reported digest {digest}, release is {expected_digest}");
            match next_attempt() {
                Some(n) => moved(S::Created, n, format!("{why}; re-staging (attempt {}/{MAX_STAGE_ATTEMPTS})", n + 1)),
                None => moved(S::Failed, attempt, format!("{why}; gave up after {MAX_STAGE_ATTEMPTS} attempts")),
            }
        }
        (Phase::Stage, ReportKind::Failed { message }) => match next_attempt() {
            Some(n) => moved(
                S::Created,
                n,
                format!("staging failed: {message}; retrying (attempt {}/{MAX_STAGE_ATTEMPTS})", n + 1),
            ),
            None => moved(
                S::Failed,
                attempt,
                format!("staging failed: {message}; gave up after {MAX_STAGE_ATTEMPTS} attempts"),
            ),
        },
        (Phase::Activate, ReportKind::Succeeded) => moved(S::Succeeded, attempt, "live and healthy"),
        (Phase::Activate, ReportKind::RolledBack) => {
            moved(S::RolledBack, attempt, "activation failed; target switched back")
        }
        (Phase::Activate, ReportKind::Failed { message }) => {
            moved(S::Failed, attempt, format!("activation failed: {message}"))
        }
        (Phase::Rollback, ReportKind::RolledBack | ReportKind::Succeeded) => {
            moved(S::RolledBack, attempt, "rolled back to the previous release")
        }
        (Phase::Rollback, ReportKind::Failed { message }) => {
            moved(S::Failed, attempt, format!("rollback failed: {message}"))
        }
        (_, other) => Outcome::Stale(format!("report {other:?} does not apply to {} work", phase.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use InstructionState as S;

    fn view(state: S, attempt: u32) -> InstructionView {
        InstructionView { state, attempt }
    }

    #[test]
    fn matching_digest_stages() {
        let out = on_report(view(S::Received, 0), Phase::Stage, 0, &ReportKind::Staged { digest: "aa".into() }, "aa");
        assert!(matches!(out, Outcome::Move { to: S::Staged, attempt: 0, .. }));
    }

    #[test]
    fn mismatch_restages_then_fails() {
        let bad = ReportKind::Staged { digest: "bb".into() };
        let mut cur = view(S::Sent, 0);
        for expected_attempt in 1..MAX_STAGE_ATTEMPTS {
            match on_report(cur, Phase::Stage, cur.attempt, &bad, "aa") {
                Outcome::Move { to: S::Created, attempt, note } => {
                    assert_eq!(attempt, expected_attempt);
                    assert!(note.contains("re-staging"), "{note}");
                    cur = view(S::Created, attempt);
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(on_report(cur, Phase::Stage, cur.attempt, &bad, "aa"), Outcome::Move { to: S::Failed, .. }));
    }

    #[test]
    fn stale_reports_change_nothing() {
        let ok = ReportKind::Staged { digest: "aa".into() };
        assert!(matches!(on_report(view(S::Received, 1), Phase::Stage, 0, &ok, "aa"), Outcome::Stale(_)));
        assert!(matches!(
            on_report(view(S::Succeeded, 0), Phase::Activate, 0, &ReportKind::Succeeded, "aa"),
            Outcome::Stale(_)
        ));
        assert!(matches!(on_report(view(S::Activating, 0), Phase::Stage, 0, &ok, "aa"), Outcome::Stale(_)));
    }

    #[test]
    fn state_names_round_trip() {
        for s in ALL {
            assert_eq!(InstructionState::parse(s.as_str()), Some(s));
        }
    }

    fn any_state() -> impl Strategy<Value = S> {
        proptest::sample::select(ALL.to_vec())
    }
    fn any_report() -> impl Strategy<Value = ReportKind> {
        prop_oneof![
            Just(ReportKind::Received),
            Just(ReportKind::Succeeded),
            Just(ReportKind::RolledBack),
            Just(ReportKind::Failed { message: "x".into() }),
            Just(ReportKind::Staged { digest: "aa".into() }),
            Just(ReportKind::Staged { digest: "bb".into() }),
        ]
    }

    proptest! {
        /// Whatever agents send, an instruction never leaves a terminal state,
        /// never moves to a phase it was not in, and attempts never go down.
        #[test]
        fn reports_never_escape_terminal_states(state in any_state(), attempt in 0u32..5, rattempt in 0u32..5,
                                                phase in proptest::sample::select(vec![Phase::Stage, Phase::Activate, Phase::Rollback]),
                                                report in any_report()) {
            let out = on_report(view(state, attempt), phase, rattempt, &report, "aa");
            if let Outcome::Move { to, attempt: a, .. } = out {
                prop_assert_eq!(state.phase(), Some(phase));
                prop_assert!(a >= attempt);
                prop_assert!(a < MAX_STAGE_ATTEMPTS.max(attempt + 1));
                if phase != Phase::Stage { prop_assert!(to.phase().is_none()); }
            }
        }
    }
}
