//! A deployment's lifecycle (SPEC §4), advanced from the tally of its
//! instructions. The scheduler calls [`advance`] and carries out the result.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    /// Targets are staging; the consistency gate has not passed yet.
    Staging,
    /// Every copy is verified; go-live is planned for later.
    Scheduled,
    /// Targets are switching over.
    Activating,
    Succeeded,
    Failed,
    RollingBack,
    RolledBack,
    Canceled,
}

const ALL: [DeploymentState; 8] = [
    DeploymentState::Staging,
    DeploymentState::Scheduled,
    DeploymentState::Activating,
    DeploymentState::Succeeded,
    DeploymentState::Failed,
    DeploymentState::RollingBack,
    DeploymentState::RolledBack,
    DeploymentState::Canceled,
];

impl DeploymentState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Staging => "staging",
            Self::Scheduled => "scheduled",
            Self::Activating => "activating",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::RollingBack => "rolling_back",
            Self::RolledBack => "rolled_back",
            Self::Canceled => "canceled",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        ALL.into_iter().find(|st| st.as_str() == s)
    }
    /// No more work will happen on its own.
    pub fn is_settled(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::RolledBack | Self::Canceled)
    }
}

/// Count of a deployment's instructions by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub staging: u32,
    pub staged: u32,
    pub activating: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub rolling_back: u32,
    pub rolled_back: u32,
    pub canceled: u32,
}

impl Tally {
    pub fn add(&mut self, s: crate::InstructionState) {
        use crate::InstructionState as S;
        match s {
            S::Created | S::Sent | S::Received => self.staging += 1,
            S::Staged => self.staged += 1,
            S::Activating => self.activating += 1,
            S::Succeeded => self.succeeded += 1,
            S::Failed => self.failed += 1,
            S::RollingBack => self.rolling_back += 1,
            S::RolledBack => self.rolled_back += 1,
            S::Canceled => self.canceled += 1,
        }
    }
    pub fn total(&self) -> u32 {
        self.staging
            + self.staged
            + self.activating
            + self.succeeded
            + self.failed
            + self.rolling_back
            + self.rolled_back
            + self.canceled
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeploymentView {
    pub state: DeploymentState,
    /// Planned go-live (unix ms); `None` means as soon as all copies match.
    pub go_live_at: Option<i64>,
    /// How many targets may fail (at the gate or at go-live) before the
    /// deployment fails and rolls back.
    pub max_failures: u32,
}

/// What to do to the deployment's instructions along with a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstrAction {
    None,
    /// Every `staged` instruction becomes `activating`, to switch at this time.
    ActivateStaged {
        at: i64,
    },
    /// Every `succeeded` or `activating` instruction becomes `rolling_back`.
    RollBackLive,
    /// Every instruction still staging or staged becomes `canceled`.
    CancelPending,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advance {
    pub to: DeploymentState,
    pub note: String,
    pub action: InstrAction,
}

fn adv(to: DeploymentState, note: impl Into<String>, action: InstrAction) -> Option<Advance> {
    Some(Advance { to, note: note.into(), action })
}

/// The next step of a deployment, or `None` while it waits.
pub fn advance(d: DeploymentView, t: Tally, now: i64) -> Option<Advance> {
    use DeploymentState as D;
    // during activation a target still rolling back is one that went silent
    // (see `overdue`): it counts as failed
    let failures =
        t.failed + t.rolled_back + if matches!(d.state, D::Scheduled | D::Activating) { t.rolling_back } else { 0 };
    match d.state {
        D::Staging if t.staging > 0 => None,
        D::Staging if t.failed > d.max_failures => adv(
            D::Failed,
            format!(
                "consistency gate: {} of {} do not hold the release (failure budget {})",
                t.failed,
                crate::targets(t.total()),
                d.max_failures
            ),
            InstrAction::CancelPending,
        ),
        D::Staging if t.staged == 0 => adv(D::Failed, "no target staged the release", InstrAction::CancelPending),
        D::Staging => {
            let at = d.go_live_at.unwrap_or(now).max(now);
            let matched = format!("consistency gate passed: {} hold identical copies", crate::targets(t.staged));
            if at > now {
                adv(D::Scheduled, format!("{matched}; go-live planned"), InstrAction::ActivateStaged { at })
            } else {
                adv(D::Activating, format!("{matched}; going live"), InstrAction::ActivateStaged { at })
            }
        }
        D::Scheduled if t.activating > 0 && d.go_live_at.is_some_and(|at| now < at) => None,
        D::Scheduled if t.activating > 0 => adv(D::Activating, "go-live time reached", InstrAction::None),
        D::Scheduled | D::Activating if t.activating > 0 => None,
        D::Scheduled | D::Activating if failures > d.max_failures && t.succeeded > 0 => adv(
            D::RollingBack,
            format!("{} failed (budget {}); rolling back the rest", crate::targets(failures), d.max_failures),
            InstrAction::RollBackLive,
        ),
        D::Scheduled | D::Activating if failures > d.max_failures => adv(
            D::Failed,
            format!("{} failed (budget {})", crate::targets(failures), d.max_failures),
            InstrAction::None,
        ),
        D::Scheduled | D::Activating => adv(
            D::Succeeded,
            format!("{} live and healthy, {failures} failed", crate::targets(t.succeeded)),
            InstrAction::None,
        ),
        D::RollingBack if t.rolling_back > 0 => None,
        D::RollingBack => {
            adv(D::RolledBack, format!("{} rolled back", crate::targets(t.rolled_back)), InstrAction::None)
        }
        D::Succeeded | D::Failed | D::RolledBack | D::Canceled => None,
    }
}

/// Time limits of a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// Targets not staged by then (unix ms) count as failed; `None` waits.
    pub stage_by: Option<i64>,
    /// How long after go-live a target may stay silent.
    pub activate_within_ms: i64,
}

/// Whether an instruction has run out of time, and where it goes then.
/// A target that stays silent after go-live is sent to `rolling_back`, not
/// `failed`: it may have switched, so when it returns it must switch back.
pub fn overdue(
    d: DeploymentState,
    i: crate::InstructionState,
    go_live_at: Option<i64>,
    dl: Deadlines,
    now: i64,
) -> Option<(crate::InstructionState, String)> {
    use crate::InstructionState as S;
    use DeploymentState as D;
    match (d, i) {
        (D::Staging, S::Created | S::Sent | S::Received) if dl.stage_by.is_some_and(|t| now >= t) => {
            Some((S::Failed, "did not stage before the stage deadline".into()))
        }
        (D::Scheduled | D::Activating, S::Activating)
            if go_live_at.is_some_and(|at| now >= at.saturating_add(dl.activate_within_ms)) =>
        {
            Some((
                S::RollingBack,
                format!(
                    "no report within {}s of go-live; counted as failed, and told to switch back when it returns",
                    dl.activate_within_ms / 1000
                ),
            ))
        }
        _ => None,
    }
}

/// An operator's rollback of a whole deployment.
pub fn request_rollback(state: DeploymentState) -> Result<Advance, String> {
    use DeploymentState as D;
    match state {
        D::Scheduled | D::Activating | D::Succeeded | D::Failed => {
            Ok(Advance { to: D::RollingBack, note: "rollback requested".into(), action: InstrAction::RollBackLive })
        }
        D::Staging => {
            Ok(Advance { to: D::Canceled, note: "canceled before go-live".into(), action: InstrAction::CancelPending })
        }
        D::RollingBack | D::RolledBack | D::Canceled => Err(format!("deployment is already {}", state.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeploymentState as D;

    fn dep(state: D, at: Option<i64>, budget: u32) -> DeploymentView {
        DeploymentView { state, go_live_at: at, max_failures: budget }
    }

    #[test]
    fn gate_waits_for_every_target() {
        let t = Tally { staging: 1, staged: 2, ..Default::default() };
        assert_eq!(advance(dep(D::Staging, None, 0), t, 0), None);
    }

    #[test]
    fn gate_passes_to_now_or_later() {
        let t = Tally { staged: 3, ..Default::default() };
        let a = advance(dep(D::Staging, None, 0), t, 100).unwrap();
        assert_eq!((a.to, a.action), (D::Activating, InstrAction::ActivateStaged { at: 100 }));
        let a = advance(dep(D::Staging, Some(500), 0), t, 100).unwrap();
        assert_eq!((a.to, a.action), (D::Scheduled, InstrAction::ActivateStaged { at: 500 }));
        let t = Tally { activating: 3, ..Default::default() };
        assert_eq!(advance(dep(D::Scheduled, Some(500), 0), t, 499), None);
        assert_eq!(advance(dep(D::Scheduled, Some(500), 0), t, 500).unwrap().to, D::Activating);
    }

    #[test]
    fn gate_failure_respects_budget() {
        let t = Tally { staged: 2, failed: 1, ..Default::default() };
        assert_eq!(advance(dep(D::Staging, None, 0), t, 0).unwrap().to, D::Failed);
        assert_eq!(advance(dep(D::Staging, None, 1), t, 0).unwrap().to, D::Activating);
    }

    #[test]
    fn activation_failure_beyond_budget_rolls_back() {
        let t = Tally { succeeded: 2, rolled_back: 1, ..Default::default() };
        let a = advance(dep(D::Activating, None, 0), t, 0).unwrap();
        assert_eq!((a.to, a.action), (D::RollingBack, InstrAction::RollBackLive));
        assert_eq!(advance(dep(D::Activating, None, 1), t, 0).unwrap().to, D::Succeeded);
        let t = Tally { rolled_back: 3, ..Default::default() };
        assert_eq!(advance(dep(D::RollingBack, None, 0), t, 0).unwrap().to, D::RolledBack);
    }

    #[test]
    fn deadlines() {
        use crate::InstructionState as S;
        let dl = Deadlines { stage_by: Some(100), activate_within_ms: 50 };
        assert_eq!(overdue(D::Staging, S::Received, None, dl, 99), None);
        assert_eq!(overdue(D::Staging, S::Received, None, dl, 100).unwrap().0, S::Failed);
        assert_eq!(overdue(D::Staging, S::Staged, None, dl, 1000), None, "staged targets are done");
        let open = Deadlines { stage_by: None, activate_within_ms: 50 };
        assert_eq!(overdue(D::Staging, S::Sent, None, open, i64::MAX), None, "no stage deadline: wait");
        assert_eq!(overdue(D::Activating, S::Activating, Some(10), dl, 59), None);
        assert_eq!(overdue(D::Activating, S::Activating, Some(10), dl, 60).unwrap().0, S::RollingBack);
        assert_eq!(overdue(D::Activating, S::Succeeded, Some(10), dl, 1000), None);
        // a silent target fails the wave and takes the others back with it
        let t = Tally { succeeded: 2, rolling_back: 1, ..Default::default() };
        let a = advance(dep(D::Activating, None, 0), t, 0).unwrap();
        assert_eq!((a.to, a.action), (D::RollingBack, InstrAction::RollBackLive));
        // and the rollback waits for it to come back
        assert_eq!(
            advance(dep(D::RollingBack, None, 0), Tally { rolled_back: 2, rolling_back: 1, ..Default::default() }, 0),
            None
        );
    }

    #[test]
    fn settled_deployments_stay() {
        for s in [D::Succeeded, D::Failed, D::RolledBack, D::Canceled] {
            assert_eq!(advance(dep(s, None, 0), Tally { staged: 1, ..Default::default() }, 0), None);
            assert!(s.is_settled());
        }
        assert!(request_rollback(D::RolledBack).is_err());
        assert_eq!(request_rollback(D::Succeeded).unwrap().to, D::RollingBack);
        for s in ALL {
            assert_eq!(DeploymentState::parse(s.as_str()), Some(s));
        }
    }
}
