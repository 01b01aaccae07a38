//! A deployment's lifecycle (SPEC §4), advanced from the tally of its
//! instructions. The scheduler calls [`advance`] and carries out the result.

use serde::{Deserialize, Serialize};

use crate::plan::{wave_start, WavePlan};
use crate::policy::{show_time, Window};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    /// A request waiting for its approvals.
    AwaitingApproval,
    /// Approved; targets run the environment's preparation and checks.
    Preflight,
    /// Preflight passed; waiting for the requester (or a deployer) to confirm.
    AwaitingConfirmation,
    /// Targets are staging; the consistency gate has not passed yet.
    Staging,
    /// Every copy is verified; the next wave's go-live is planned for later.
    Scheduled,
    /// Targets are switching over.
    Activating,
    Succeeded,
    Failed,
    RollingBack,
    RolledBack,
    Canceled,
    /// An approver said no.
    Rejected,
    /// Nobody confirmed in time.
    Expired,
    /// Stopped with a mixed outcome (some targets live on the release,
    /// others back or failed), or paused by a breach; waits for an
    /// operator: `convoy resume` (after a pause) or `convoy rollback`.
    Halted,
}

const ALL: [DeploymentState; 14] = [
    DeploymentState::AwaitingApproval,
    DeploymentState::Preflight,
    DeploymentState::AwaitingConfirmation,
    DeploymentState::Staging,
    DeploymentState::Scheduled,
    DeploymentState::Activating,
    DeploymentState::Succeeded,
    DeploymentState::Failed,
    DeploymentState::RollingBack,
    DeploymentState::RolledBack,
    DeploymentState::Canceled,
    DeploymentState::Rejected,
    DeploymentState::Expired,
    DeploymentState::Halted,
];

impl DeploymentState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AwaitingApproval => "awaiting_approval",
            Self::Preflight => "preflight",
            Self::AwaitingConfirmation => "awaiting_confirmation",
            Self::Staging => "staging",
            Self::Scheduled => "scheduled",
            Self::Activating => "activating",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::RollingBack => "rolling_back",
            Self::RolledBack => "rolled_back",
            Self::Canceled => "canceled",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::Halted => "halted",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        ALL.into_iter().find(|st| st.as_str() == s)
    }
    /// No more work will happen on its own.
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            Self::Succeeded
                | Self::Failed
                | Self::RolledBack
                | Self::Canceled
                | Self::Rejected
                | Self::Expired
                | Self::Halted
        )
    }
    /// Still a request: no instructions exist yet.
    pub fn is_request(self) -> bool {
        matches!(self, Self::AwaitingApproval | Self::Preflight | Self::AwaitingConfirmation)
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
    /// Left on a later deployment's release by a rollback.
    pub superseded: u32,
}

impl Tally {
    pub fn add(&mut self, s: crate::InstructionState) {
        self.add_n(s, 1)
    }
    /// Counts `n` instructions in state `s`.
    pub fn add_n(&mut self, s: crate::InstructionState, n: u32) {
        use crate::InstructionState as S;
        match s {
            S::Created | S::Sent | S::Received => self.staging += n,
            S::Staged => self.staged += n,
            S::Activating => self.activating += n,
            S::Succeeded => self.succeeded += n,
            S::Failed => self.failed += n,
            S::RollingBack => self.rolling_back += n,
            S::RolledBack => self.rolled_back += n,
            S::Canceled => self.canceled += n,
            S::Superseded => self.superseded += n,
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
            + self.superseded
    }
    pub fn plus(mut self, o: &Tally) -> Tally {
        self.staging += o.staging;
        self.staged += o.staged;
        self.activating += o.activating;
        self.succeeded += o.succeeded;
        self.failed += o.failed;
        self.rolling_back += o.rolling_back;
        self.rolled_back += o.rolled_back;
        self.canceled += o.canceled;
        self.superseded += o.superseded;
        self
    }
}

#[derive(Debug, Clone, Copy)]
pub struct DeploymentView<'a> {
    pub state: DeploymentState,
    /// Requested go-live (unix ms), or once going live the current wave's;
    /// `None` means as soon as all copies match.
    pub go_live_at: Option<i64>,
    /// How many targets may fail at the gate before the deployment fails;
    /// without a plan, also the go-live budget.
    pub max_failures: u32,
    /// The wave going live (0 before the first).
    pub wave: u32,
    /// The planned waves; empty: one wave of every target.
    pub waves: &'a [WavePlan],
    /// Least time between a wave's success and the next wave's go-live.
    pub gap_ms: i64,
    pub windows: &'a [Window],
    pub on_breach: crate::OnBreach,
}

/// What to do to the deployment's instructions along with a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstrAction {
    None,
    /// Every `staged` instruction of the wave becomes `activating`, to
    /// switch at `at`; the deployment's current wave becomes `wave`.
    ActivateWave {
        wave: u32,
        at: i64,
    },
    /// Every `succeeded` or `activating` instruction becomes
    /// `rolling_back`; any not yet live are canceled.
    RollBackLive,
    /// The wave's live instructions roll back; later waves are canceled.
    RollBackWave {
        wave: u32,
    },
    /// Every instruction still staging or staged becomes `canceled`.
    CancelPending,
    /// Every instruction not yet live (staging, staged, or waiting for a
    /// go-live that has not come) becomes `canceled`.
    CancelAll,
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

/// The next step of a deployment, or `None` while it waits. `waves[k]` is
/// the tally of wave `k + 1`'s instructions (one entry without a plan).
pub fn advance(d: &DeploymentView<'_>, waves: &[Tally], now: i64) -> Option<Advance> {
    use DeploymentState as D;
    let t = waves.iter().fold(Tally::default(), |a, w| a.plus(w));
    let count = waves.len().max(1) as u32;
    let k = d.wave.clamp(1, count);
    let cur = waves.get(k as usize - 1).copied().unwrap_or_default();
    let planned = |k: u32| d.waves.get(k as usize - 1);
    let budget = planned(k).map_or(d.max_failures, |w| w.budget);
    // failures a retry accepted stay failed but no longer count
    let accepted = planned(k).map_or(0, |w| w.accepted);
    let accepted_all: u32 = d.waves.iter().map(|w| w.accepted).sum();
    let of = |k: u32| if count > 1 { format!("wave {k} of {count}: ") } else { String::new() };
    let go = |k: u32, prefix: String| {
        let first = planned(k).and_then(|w| w.at).or(if k == 1 { d.go_live_at } else { None });
        let at = wave_start(first, k, d.gap_ms, d.windows, now);
        let n = planned(k).map_or(t.staged, |w| w.targets);
        let what = if count > 1 { format!("wave {k} of {count} ({})", crate::targets(n)) } else { "go-live".into() };
        let (to, when) = if at > now {
            (D::Scheduled, format!("{what} planned at {}", show_time(at)))
        } else {
            (D::Activating, format!("{what} going live"))
        };
        adv(to, format!("{prefix}{when}"), InstrAction::ActivateWave { wave: k, at })
    };
    // during activation a target still rolling back is one that went silent
    // (see `overdue`): it counts as failed
    let all_failures = |t: &Tally| {
        t.failed + t.rolled_back + if matches!(d.state, D::Scheduled | D::Activating) { t.rolling_back } else { 0 }
    };
    let failures = |t: &Tally| all_failures(t).saturating_sub(accepted);
    match d.state {
        D::AwaitingApproval | D::Preflight | D::AwaitingConfirmation => None,
        D::Staging if t.staging > 0 => None,
        D::Staging if t.failed > d.max_failures + accepted_all => adv(
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
        D::Staging => go(1, format!("consistency gate passed: {} hold identical copies; ", crate::targets(t.staged))),
        D::Scheduled if cur.activating > 0 && d.go_live_at.is_some_and(|at| now < at) => None,
        D::Scheduled if cur.activating > 0 => {
            adv(D::Activating, format!("{}go-live time reached", of(k)), InstrAction::None)
        }
        D::Scheduled | D::Activating if cur.activating > 0 => None,
        // a wave breaches when its failures exceed its budget (equal is
        // allowed), and always when every target of it failed
        D::Scheduled | D::Activating if failures(&cur) > budget || (failures(&cur) > 0 && cur.succeeded == 0) => {
            let later = if k < count { format!("; waves {}-{count} not started", k + 1) } else { String::new() };
            let all_failed = if failures(&cur) <= budget { ", every target of the wave" } else { "" };
            let failed = format!("{}{} failed{all_failed} (budget {budget})", of(k), crate::targets(failures(&cur)));
            let halted = |what: &str| format!("{failed}{later}; halted: {}{what}", mixed(&t),);
            match d.on_breach {
                crate::OnBreach::RollbackAll if t.succeeded > 0 => adv(
                    D::RollingBack,
                    format!("{failed}; rolling back every wave that went live{later}"),
                    InstrAction::RollBackLive,
                ),
                crate::OnBreach::RollbackAll => adv(D::Failed, format!("{failed}{later}"), InstrAction::RollBackLive),
                crate::OnBreach::RollbackWave if cur.succeeded > 0 => adv(
                    D::RollingBack,
                    format!("{failed}; rolling the wave back{later}"),
                    InstrAction::RollBackWave { wave: k },
                ),
                // earlier waves stay live: a mixed outcome, never "failed"
                crate::OnBreach::RollbackWave if t.succeeded > 0 => adv(
                    D::Halted,
                    halted(
                        "; earlier waves stay live (policy: roll back the wave only); `convoy rollback` finishes it",
                    ),
                    InstrAction::RollBackWave { wave: k },
                ),
                crate::OnBreach::RollbackWave => {
                    adv(D::Failed, format!("{failed}{later}"), InstrAction::RollBackWave { wave: k })
                }
                // nothing moves: an operator decides
                crate::OnBreach::Pause => adv(
                    D::Halted,
                    halted(if k < count {
                        "; paused by the breach (policy): `convoy resume` starts the next wave, `convoy rollback` rolls back"
                    } else {
                        "; paused by the breach (policy): `convoy rollback` rolls back, or leave it"
                    }),
                    InstrAction::None,
                ),
            }
        }
        D::Scheduled | D::Activating if k < count => {
            go(k + 1, format!("wave {k} of {count}: {} live and healthy; ", crate::targets(cur.succeeded)))
        }
        D::Scheduled | D::Activating => adv(
            D::Succeeded,
            format!("{} live and healthy, {} failed", crate::targets(t.succeeded), all_failures(&t)),
            InstrAction::None,
        ),
        D::RollingBack if t.rolling_back > 0 => None,
        // some targets stay live on the release (the policy rolled back one
        // wave only): the outcome is mixed, and says so
        D::RollingBack if t.succeeded > 0 => {
            adv(D::Halted, format!("halted: {}; `convoy rollback` rolls the rest back", mixed(&t)), InstrAction::None)
        }
        D::RollingBack => {
            let left = if t.superseded > 0 {
                format!("; {} left on the later deployment that moved them on", crate::targets(t.superseded))
            } else {
                String::new()
            };
            adv(D::RolledBack, format!("{} rolled back{left}", crate::targets(t.rolled_back)), InstrAction::None)
        }
        D::Succeeded | D::Failed | D::RolledBack | D::Canceled | D::Rejected | D::Expired | D::Halted => None,
    }
}

/// The counts of a mixed outcome, e.g. `2 live on the release, 2 rolled
/// back, 1 failed, 2 never went live`.
fn mixed(t: &Tally) -> String {
    let mut parts = vec![format!("{} live on the release", t.succeeded)];
    for (n, what) in [
        (t.rolled_back + t.rolling_back, "rolled back"),
        (t.failed, "failed"),
        (t.staged + t.staging + t.canceled, "never went live"),
        (t.superseded, "moved on by a later deployment"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    parts.join(", ")
}

/// An operator's resume of a deployment a breach paused (`halted` with
/// waves left): the failures are accepted and the next wave goes live.
pub fn resume_after_breach(d: &DeploymentView<'_>, waves: &[Tally], now: i64) -> Result<Advance, String> {
    use DeploymentState as D;
    if d.state != D::Halted {
        return Err(format!("deployment is {}, not halted", d.state.as_str()));
    }
    let count = waves.len().max(1) as u32;
    let k = d.wave.clamp(1, count);
    if k >= count {
        return Err("no wave is left to start; roll it back (`convoy rollback`) or leave it".into());
    }
    let next = waves[k as usize];
    if next.staged == 0 {
        return Err(format!("wave {} has no staged target left to go live", k + 1));
    }
    let first = d.waves.get(k as usize).and_then(|w| w.at);
    let at = wave_start(first, k + 1, d.gap_ms, d.windows, now);
    let what =
        format!("resumed after the breach of wave {k}: wave {} of {count} ({})", k + 1, crate::targets(next.staged));
    let (to, note) = if at > now {
        (D::Scheduled, format!("{what} planned at {}", show_time(at)))
    } else {
        (D::Activating, format!("{what} going live"))
    };
    Ok(Advance { to, note, action: InstrAction::ActivateWave { wave: k + 1, at } })
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

/// An operator's rollback of a whole deployment. `live`: some target may
/// have switched to its release (one went live, or its go-live passed).
/// Before anything is live it is a cancel: nothing switches, nothing
/// switches back, and the deployment reads `canceled`.
pub fn request_rollback(state: DeploymentState, live: bool) -> Result<Advance, String> {
    use DeploymentState as D;
    match state {
        D::Staging | D::Scheduled if !live => {
            Ok(Advance { to: D::Canceled, note: "canceled before go-live".into(), action: InstrAction::CancelAll })
        }
        D::Staging | D::Scheduled | D::Activating | D::Succeeded | D::Failed | D::Halted => {
            Ok(Advance { to: D::RollingBack, note: "rollback requested".into(), action: InstrAction::RollBackLive })
        }
        D::AwaitingApproval | D::Preflight | D::AwaitingConfirmation => {
            Ok(Advance { to: D::Canceled, note: "request canceled".into(), action: InstrAction::None })
        }
        D::RollingBack | D::RolledBack | D::Canceled | D::Rejected | D::Expired => {
            Err(format!("deployment is already {}", state.as_str()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeploymentState as D;

    fn dep(state: D, at: Option<i64>, budget: u32) -> DeploymentView<'static> {
        DeploymentView {
            state,
            go_live_at: at,
            max_failures: budget,
            wave: 1,
            waves: &[],
            gap_ms: 0,
            windows: &[],
            on_breach: crate::OnBreach::RollbackAll,
        }
    }

    #[test]
    fn gate_waits_for_every_target() {
        let t = Tally { staging: 1, staged: 2, ..Default::default() };
        assert_eq!(advance(&dep(D::Staging, None, 0), &[t], 0), None);
    }

    #[test]
    fn gate_passes_to_now_or_later() {
        let t = Tally { staged: 3, ..Default::default() };
        let a = advance(&dep(D::Staging, None, 0), &[t], 100).unwrap();
        assert_eq!((a.to, a.action), (D::Activating, InstrAction::ActivateWave { wave: 1, at: 100 }));
        let a = advance(&dep(D::Staging, Some(500), 0), &[t], 100).unwrap();
        assert_eq!((a.to, a.action), (D::Scheduled, InstrAction::ActivateWave { wave: 1, at: 500 }));
        let t = Tally { activating: 3, ..Default::default() };
        assert_eq!(advance(&dep(D::Scheduled, Some(500), 0), &[t], 499), None);
        assert_eq!(advance(&dep(D::Scheduled, Some(500), 0), &[t], 500).unwrap().to, D::Activating);
    }

    #[test]
    fn gate_failure_respects_budget() {
        let t = Tally { staged: 2, failed: 1, ..Default::default() };
        assert_eq!(advance(&dep(D::Staging, None, 0), &[t], 0).unwrap().to, D::Failed);
        assert_eq!(advance(&dep(D::Staging, None, 1), &[t], 0).unwrap().to, D::Activating);
    }

    #[test]
    fn activation_failure_beyond_budget_rolls_back() {
        let t = Tally { succeeded: 2, rolled_back: 1, ..Default::default() };
        let a = advance(&dep(D::Activating, None, 0), &[t], 0).unwrap();
        assert_eq!((a.to, a.action), (D::RollingBack, InstrAction::RollBackLive));
        assert_eq!(advance(&dep(D::Activating, None, 1), &[t], 0).unwrap().to, D::Succeeded);
        let t = Tally { rolled_back: 3, ..Default::default() };
        assert_eq!(advance(&dep(D::RollingBack, None, 0), &[t], 0).unwrap().to, D::RolledBack);
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
        let a = advance(&dep(D::Activating, None, 0), &[t], 0).unwrap();
        assert_eq!((a.to, a.action), (D::RollingBack, InstrAction::RollBackLive));
        // and the rollback waits for it to come back
        assert_eq!(
            advance(
                &dep(D::RollingBack, None, 0),
                &[Tally { rolled_back: 2, rolling_back: 1, ..Default::default() }],
                0
            ),
            None
        );
    }

    #[test]
    fn settled_deployments_stay() {
        for s in [D::Succeeded, D::Failed, D::RolledBack, D::Canceled] {
            assert_eq!(advance(&dep(s, None, 0), &[Tally { staged: 1, ..Default::default() }], 0), None);
            assert!(s.is_settled());
        }
        assert!(request_rollback(D::RolledBack, true).is_err());
        assert_eq!(request_rollback(D::Succeeded, true).unwrap().to, D::RollingBack);
        // before anything is live it is a cancel, never "rolled back"
        assert_eq!(request_rollback(D::Scheduled, false).unwrap().action, InstrAction::CancelAll);
        assert_eq!(request_rollback(D::Staging, false).unwrap().to, D::Canceled);
        // a retried deployment with live targets rolls them back
        assert_eq!(request_rollback(D::Staging, true).unwrap().to, D::RollingBack);
        for s in ALL {
            assert_eq!(DeploymentState::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn waves_go_in_order_and_a_breach_halts_the_wave() {
        let plan = [
            WavePlan { wave: 1, targets: 1, at: Some(1_000), budget: 0, accepted: 0 },
            WavePlan { wave: 2, targets: 2, at: Some(2_000), budget: 0, accepted: 0 },
            WavePlan { wave: 3, targets: 2, at: Some(3_000), budget: 0, accepted: 0 },
        ];
        let v = |state, wave, at| DeploymentView {
            state,
            go_live_at: at,
            max_failures: 0,
            wave,
            waves: &plan,
            gap_ms: 100,
            windows: &[],
            on_breach: crate::OnBreach::RollbackAll,
        };
        let staged = |n| Tally { staged: n, ..Default::default() };
        let a = advance(&v(D::Staging, 0, None), &[staged(1), staged(2), staged(2)], 500).unwrap();
        assert_eq!((a.to, a.action), (D::Scheduled, InstrAction::ActivateWave { wave: 1, at: 1_000 }));
        let live = |n| Tally { succeeded: n, ..Default::default() };
        // wave 1 done at 2500: wave 2 is due (planned 2000) after the gap
        let a = advance(&v(D::Activating, 1, Some(1_000)), &[live(1), staged(2), staged(2)], 2_500).unwrap();
        assert_eq!((a.to, a.action), (D::Scheduled, InstrAction::ActivateWave { wave: 2, at: 2_600 }));
        // wave 2 still switching: wait
        let switching = Tally { activating: 1, succeeded: 1, ..Default::default() };
        assert_eq!(advance(&v(D::Activating, 2, Some(2_600)), &[live(1), switching, staged(2)], 2_700), None);
        // one failure in wave 2 is over its budget: by default every wave
        // that went live rolls back and wave 3 never starts
        let broke = Tally { succeeded: 1, rolled_back: 1, ..Default::default() };
        let a = advance(&v(D::Activating, 2, Some(2_600)), &[live(1), broke, staged(2)], 2_800).unwrap();
        assert_eq!((a.to, a.action), (D::RollingBack, InstrAction::RollBackLive));
        assert!(a.note.contains("wave 2 of 3") && a.note.contains("waves 3-3 not started"), "{}", a.note);
        assert!(a.note.contains("every wave that went live"), "{}", a.note);
        // an environment may roll back the breaching wave only
        let only = |state, wave, at| DeploymentView { on_breach: crate::OnBreach::RollbackWave, ..v(state, wave, at) };
        let a = advance(&only(D::Activating, 2, Some(2_600)), &[live(1), broke, staged(2)], 2_800).unwrap();
        assert_eq!((a.to, a.action), (D::RollingBack, InstrAction::RollBackWave { wave: 2 }));
        let gone = Tally { rolled_back: 2, ..Default::default() };
        let a = advance(&only(D::Activating, 2, Some(2_600)), &[live(1), gone, staged(2)], 2_800).unwrap();
        assert_eq!((a.to, a.action), (D::Halted, InstrAction::RollBackWave { wave: 2 }));
        assert!(a.note.contains("earlier waves stay live") && a.note.contains("1 live on the release"), "{}", a.note);
        // wave 2 back, wave 1 still live: the rollback ends halted, with counts
        let a = advance(
            &only(D::RollingBack, 2, Some(2_600)),
            &[live(1), gone, Tally { canceled: 2, ..Default::default() }],
            2_900,
        )
        .unwrap();
        assert_eq!(a.to, D::Halted);
        assert!(a.note.contains("1 live on the release, 2 rolled back, 2 never went live"), "{}", a.note);
        // or pause: nothing moves, and an operator resumes with wave 3
        let pause = |state, wave, at| DeploymentView { on_breach: crate::OnBreach::Pause, ..v(state, wave, at) };
        let a = advance(&pause(D::Activating, 2, Some(2_600)), &[live(1), broke, staged(2)], 2_800).unwrap();
        assert_eq!((a.to, a.action), (D::Halted, InstrAction::None));
        assert!(a.note.contains("paused by the breach"), "{}", a.note);
        let r = resume_after_breach(&pause(D::Halted, 2, Some(2_600)), &[live(1), broke, staged(2)], 3_500).unwrap();
        assert_eq!((r.to, r.action), (D::Scheduled, InstrAction::ActivateWave { wave: 3, at: 3_600 }));
        assert!(resume_after_breach(&pause(D::Halted, 3, Some(3_000)), &[live(1), broke, broke], 3_500).is_err());
        assert!(resume_after_breach(&pause(D::Activating, 2, None), &[live(1), broke, staged(2)], 3_500).is_err());
        assert_eq!(request_rollback(D::Halted, true).unwrap().to, D::RollingBack);
        // the last wave done: succeeded
        let a = advance(&v(D::Activating, 3, Some(3_000)), &[live(1), live(2), live(2)], 3_500).unwrap();
        assert_eq!(a.to, D::Succeeded);
    }

    #[test]
    fn a_wave_that_failed_entirely_always_halts() {
        // a one-target canary under a count budget of 1 fails completely
        let plan = [
            WavePlan { wave: 1, targets: 1, at: Some(1_000), budget: 1, accepted: 0 },
            WavePlan { wave: 2, targets: 4, at: Some(2_000), budget: 1, accepted: 0 },
        ];
        let v = DeploymentView {
            state: D::Activating,
            go_live_at: Some(1_000),
            max_failures: 1,
            wave: 1,
            waves: &plan,
            gap_ms: 0,
            windows: &[],
            on_breach: crate::OnBreach::RollbackAll,
        };
        let canary = Tally { rolled_back: 1, ..Default::default() };
        let a = advance(&v, &[canary, Tally { staged: 4, ..Default::default() }], 1_500).unwrap();
        assert_eq!((a.to, a.action), (D::Failed, InstrAction::RollBackLive));
        assert!(a.note.contains("every target of the wave"), "{}", a.note);
        // equal to the budget with others healthy is allowed
        let ok = Tally { rolled_back: 1, succeeded: 3, ..Default::default() };
        let v2 = DeploymentView { wave: 2, ..v };
        assert_eq!(advance(&v2, &[Tally { succeeded: 1, ..Default::default() }, ok], 2_500).unwrap().to, D::Succeeded);
    }

    #[test]
    fn requests_wait_for_people() {
        for s in [D::AwaitingApproval, D::Preflight, D::AwaitingConfirmation] {
            assert!(s.is_request() && !s.is_settled());
            assert_eq!(advance(&dep(s, None, 0), &[], 0), None);
            assert_eq!(request_rollback(s, false).unwrap().to, D::Canceled);
        }
        assert!(D::Rejected.is_settled() && D::Expired.is_settled());
    }
}
