//! The planner (P-plan, P-instructions): which targets go live in which
//! wave and when, from an environment's policy and a requested go-live.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::policy::{in_windows, next_allowed, show_time, OutsideWindow, Policy, PolicyError, Window};

/// A target in scope, as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanTarget {
    pub id: String,
    /// The `site` label ("" without one); waves are spread across sites.
    pub site: String,
}

/// One wave of a deployment's plan, stored with the deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WavePlan {
    /// 1-based.
    pub wave: u32,
    pub targets: u32,
    /// Planned go-live (unix ms); `None`: as soon as the wave before it is
    /// done (or, for wave 1, as soon as every copy matches).
    pub at: Option<i64>,
    /// Failures this wave may have before the deployment halts.
    pub budget: u32,
    /// Failures an operator accepted by retrying others (they stay failed
    /// and count neither against the budget nor as "every target failed").
    #[serde(default, skip_serializing_if = "is_zero")]
    pub accepted: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub waves: Vec<WavePlan>,
    /// Target id → wave, in the order the targets were placed.
    pub assignment: Vec<(String, u32)>,
    /// Set when the requested go-live was moved into a window.
    pub moved: Option<String>,
}

/// Checks a requested go-live against the windows: the time to use, and a
/// note when it was moved. `None` (as soon as ready) is always accepted.
pub fn check_go_live(
    policy: &Policy,
    windows: &[Window],
    at: Option<i64>,
) -> Result<(Option<i64>, Option<String>), PolicyError> {
    let Some(at) = at else { return Ok((None, None)) };
    if in_windows(windows, at) {
        return Ok((Some(at), None));
    }
    let next = next_allowed(windows, at);
    let names: Vec<&str> = windows.iter().map(Window::text).collect();
    match policy.outside_window {
        OutsideWindow::Refuse => Err(PolicyError(format!(
            "go-live {} is outside the allowed windows ({}); the next window opens at {}",
            show_time(at),
            names.join("; "),
            show_time(next)
        ))),
        OutsideWindow::Next => Ok((
            Some(next),
            Some(format!("go-live {} was outside the windows; moved to {}", show_time(at), show_time(next))),
        )),
    }
}

/// Orders targets so that every prefix is spread across sites: one of each
/// site in turn (sites by name, targets by id).
fn spread(targets: &[PlanTarget]) -> Vec<&PlanTarget> {
    let mut by_site: BTreeMap<&str, Vec<&PlanTarget>> = BTreeMap::new();
    for t in targets {
        by_site.entry(&t.site).or_default().push(t);
    }
    for v in by_site.values_mut() {
        v.sort_by(|a, b| a.id.cmp(&b.id));
    }
    let mut out = Vec::with_capacity(targets.len());
    let mut round = 0;
    while out.len() < targets.len() {
        for v in by_site.values() {
            if let Some(t) = v.get(round) {
                out.push(*t);
            }
        }
        round += 1;
    }
    out
}

/// Plans a deployment: waves of the policy's cumulative sizes (empty waves
/// dropped, the last wave taking the rest), each with its failure budget
/// and planned time (`go_live + (k-1) × gap`, moved into a window).
pub fn plan(
    targets: &[PlanTarget],
    policy: &Policy,
    windows: &[Window],
    go_live: Option<i64>,
) -> Result<Plan, PolicyError> {
    if targets.is_empty() {
        return Err(PolicyError("no target in scope".into()));
    }
    let (base, moved) = check_go_live(policy, windows, go_live)?;
    let n = targets.len() as u32;
    let order = spread(targets);
    let mut waves = Vec::new();
    let mut assignment = Vec::with_capacity(targets.len());
    let mut placed = 0u32;
    for (k, size) in policy.waves.iter().enumerate() {
        let last = k + 1 == policy.waves.len();
        let upto = if last { n } else { size.ceil_of(n).max(placed) };
        if upto == placed {
            continue;
        }
        let wave = waves.len() as u32 + 1;
        let count = upto - placed;
        for t in &order[placed as usize..upto as usize] {
            assignment.push((t.id.clone(), wave));
        }
        let at = base
            .map(|b| next_allowed(windows, b.saturating_add(i64::from(wave - 1) * policy.wave_gap_secs as i64 * 1000)));
        waves.push(WavePlan { wave, targets: count, at, budget: policy.max_failures.floor_of(count), accepted: 0 });
        placed = upto;
        if placed == n {
            break;
        }
    }
    Ok(Plan { waves, assignment, moved })
}

/// When wave `wave` goes live, decided when it is its turn at `now`: not
/// before its planned time, not before `gap` after the wave before it, and
/// inside a window.
pub fn wave_start(planned: Option<i64>, wave: u32, gap_ms: i64, windows: &[Window], now: i64) -> i64 {
    let earliest = if wave > 1 { now.saturating_add(gap_ms) } else { now };
    next_allowed(windows, planned.unwrap_or(earliest).max(earliest))
}

impl Plan {
    /// A plain-text view, for people and for snapshot tests.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if let Some(m) = &self.moved {
            s.push_str(&format!("note: {m}\n"));
        }
        for w in &self.waves {
            let at = match (w.at, w.wave) {
                (Some(at), _) => format!("at {}", show_time(at)),
                (None, 1) => "as soon as every copy matches".to_owned(),
                (None, k) => format!("after wave {} succeeds", k - 1),
            };
            s.push_str(&format!("wave {}: {} {at}, may fail {}\n", w.wave, crate::targets(w.targets), w.budget));
            let ids: Vec<&str> =
                self.assignment.iter().filter(|(_, k)| *k == w.wave).map(|(id, _)| id.as_str()).collect();
            s.push_str(&format!("  {}\n", ids.join(" ")));
        }
        s
    }
}
