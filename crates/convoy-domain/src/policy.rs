//! Environments' policy (SPEC §3, §7): roles, approvals, go-live windows,
//! waves and failure budgets, and how they are written on the command line.

use std::fmt;

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// What a user may do; each role may do everything the ones below it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads everything: targets, releases, deployments, requests, audit.
    Viewer,
    /// Also publishes releases, requests deployments, confirms, cancels, rolls back.
    Deployer,
    /// Also approves and rejects requests.
    Approver,
    /// Also manages users, environments and targets.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Deployer, Role::Approver, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Deployer => "deployer",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Result<Role, PolicyError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| PolicyError(format!("unknown role {s:?}; one of viewer, deployer, approver, admin")))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, PolicyError> {
    Err(PolicyError(msg.into()))
}

/// A number of targets, absolute (`3`) or relative to a group (`5%`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Amount {
    Count(u32),
    Percent(u32),
}

impl Amount {
    pub fn parse(s: &str) -> Result<Amount, PolicyError> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            match p.trim().parse::<u32>() {
                Ok(p) if p <= 100 => Ok(Amount::Percent(p)),
                _ => err(format!("{s:?}: a percentage must be a whole number from 0% to 100%")),
            }
        } else {
            s.parse::<u32>()
                .map(Amount::Count)
                .or_else(|_| err(format!("{s:?}: expected a count (3) or a percentage (5%)")))
        }
    }

    /// How many of `n` targets this is, rounding down (a failure budget).
    pub fn floor_of(self, n: u32) -> u32 {
        match self {
            Amount::Count(c) => c,
            Amount::Percent(p) => (u64::from(n) * u64::from(p) / 100) as u32,
        }
    }

    /// How many of `n` targets this is, rounding up, at most `n` (a wave).
    pub fn ceil_of(self, n: u32) -> u32 {
        match self {
            Amount::Count(c) => c.min(n),
            Amount::Percent(p) => (u64::from(n) * u64::from(p)).div_ceil(100) as u32,
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Count(c) => write!(f, "{c}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// On the wire an amount is a string: `3` or `25%`.
impl utoipa::PartialSchema for Amount {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[0-9]+%?$"))
            .description(Some("a count (3) or a percentage (25%)"))
            .into()
    }
}

impl utoipa::ToSchema for Amount {}

impl TryFrom<String> for Amount {
    type Error = PolicyError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Amount::parse(&s)
    }
}

impl From<Amount> for String {
    fn from(a: Amount) -> String {
        a.to_string()
    }
}

/// Parses `1,10%,50%,100%`: cumulative wave sizes.
pub fn parse_waves(s: &str) -> Result<Vec<Amount>, PolicyError> {
    let waves: Vec<Amount> = s.split(',').map(Amount::parse).collect::<Result<_, _>>()?;
    if waves.is_empty() || waves.len() > 20 {
        return err("give 1 to 20 waves, e.g. 1,10%,50%,100%");
    }
    if waves.iter().any(|w| matches!(w, Amount::Count(0) | Amount::Percent(0))) {
        return err("a wave must hold at least one target (no 0 or 0%)");
    }
    Ok(waves)
}

/// What happens to a go-live time outside every window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutsideWindow {
    /// The request is refused with the next allowed time.
    #[default]
    Refuse,
    /// The go-live moves to the next window's opening.
    Next,
}

/// What happens to targets that fail preflight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PreflightFailure {
    /// The request fails; nothing is deployed.
    #[default]
    Block,
    /// The request goes on without them, if they are within the failure budget.
    Skip,
}

/// What a wave that breaks its failure budget does to the deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnBreach {
    /// Every wave that went live is rolled back; later waves never start.
    #[default]
    RollbackAll,
    /// Only the breaching wave is rolled back; earlier waves stay live (the
    /// deployment ends `halted`, with counts, until an operator rolls it
    /// back).
    RollbackWave,
    /// Nothing is rolled back and no later wave starts: the deployment is
    /// `halted` until an operator resumes (next wave) or rolls back.
    Pause,
}

/// An environment's policy, stored as JSON with the environment and
/// copied into each request made in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Approvals needed before preflight (0: none).
    #[serde(default)]
    pub approvals: u32,
    /// The least role an approver must have.
    #[serde(default = "approver")]
    pub approver_role: Role,
    /// Whether the requester (or a deployer) must confirm after preflight.
    #[serde(default)]
    pub confirm: bool,
    /// How long an unconfirmed request waits before it expires.
    #[serde(default = "day")]
    pub confirm_ttl_secs: u64,
    /// How long a request waits for its approvals (since it was made or
    /// last changed) before it expires.
    #[serde(default = "week")]
    pub approval_ttl_secs: u64,
    /// Besides the requester, who may confirm: users with at least this
    /// role (none: the requester only).
    #[serde(default)]
    pub confirm_role: Option<Role>,
    /// Allowed go-live windows, e.g. `Sat 01:00-05:00 Asia/Shanghai`; none: any time.
    #[serde(default)]
    pub windows: Vec<String>,
    #[serde(default)]
    pub outside_window: OutsideWindow,
    /// Cumulative wave sizes; the last wave takes every target left.
    #[serde(default = "all")]
    pub waves: Vec<Amount>,
    /// Least time between a wave's success and the next wave's go-live.
    #[serde(default)]
    pub wave_gap_secs: u64,
    /// Failures allowed per wave (a percentage of the wave), and at the gate
    /// and in preflight (of all targets).
    #[serde(default = "none")]
    pub max_failures: Amount,
    #[serde(default)]
    pub preflight_failure: PreflightFailure,
    /// What a breach of a wave's failure budget does.
    #[serde(default)]
    pub on_breach: OnBreach,
    /// Targets that match a rollout's selector but enrolled after it was
    /// planned join its last wave while that wave has not gone live (they
    /// go live with it if staged by then); otherwise they are only listed
    /// as not in the deployment.
    #[serde(default)]
    pub include_late: bool,
    /// Commands every target runs in preflight; exit 0 passes.
    #[serde(default)]
    pub checks: Vec<String>,
    /// How long preflight waits for a target's answer.
    #[serde(default = "ten_minutes")]
    pub preflight_timeout_secs: u64,
    /// Where request events are POSTed as JSON (approvers' notifications).
    #[serde(default)]
    pub webhook: Option<String>,
    /// Approvals must be signed with the approver's registered key over
    /// a statement of what is approved; agents check the signatures.
    #[serde(default)]
    pub signed_approvals: bool,
}

fn approver() -> Role {
    Role::Approver
}
fn day() -> u64 {
    86_400
}
fn week() -> u64 {
    7 * 86_400
}
fn ten_minutes() -> u64 {
    600
}
fn all() -> Vec<Amount> {
    vec![Amount::Percent(100)]
}
fn none() -> Amount {
    Amount::Count(0)
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            approvals: 0,
            approver_role: approver(),
            confirm: false,
            confirm_ttl_secs: day(),
            confirm_role: None,
            approval_ttl_secs: week(),
            windows: Vec::new(),
            outside_window: OutsideWindow::Refuse,
            waves: all(),
            wave_gap_secs: 0,
            max_failures: none(),
            preflight_failure: PreflightFailure::Block,
            on_breach: OnBreach::RollbackAll,
            include_late: false,
            checks: Vec::new(),
            preflight_timeout_secs: ten_minutes(),
            webhook: None,
            signed_approvals: false,
        }
    }
}

impl Policy {
    /// Checks every field; the parsed windows on success.
    pub fn validate(&self) -> Result<Vec<Window>, PolicyError> {
        if self.approvals > 10 {
            return err("at most 10 approvals");
        }
        if self.signed_approvals && self.approvals == 0 {
            return err("signed approvals need at least one approval (--approvals N)");
        }
        if self.approver_role == Role::Viewer {
            return err("approvers must be at least approver role (or admin)");
        }
        if self.confirm_ttl_secs == 0 || self.confirm_ttl_secs > 30 * 86_400 {
            return err("confirmation time-out must be between 1 second and 30 days");
        }
        if self.waves.is_empty() || self.waves.len() > 20 {
            return err("give 1 to 20 waves");
        }
        if self.wave_gap_secs > 7 * 86_400 || self.preflight_timeout_secs == 0 || self.preflight_timeout_secs > 86_400 {
            return err("wave gap at most 7 days; preflight time-out between 1 second and 1 day");
        }
        if self.checks.len() > 20 || self.checks.iter().any(|c| c.trim().is_empty() || c.len() > 1024) {
            return err("at most 20 checks, each a non-empty command up to 1024 bytes");
        }
        if let Some(url) = &self.webhook {
            let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")).unwrap_or("");
            if rest.is_empty() || url.len() > 512 || url.contains(char::is_whitespace) {
                return err(format!("webhook {url:?} must be an http(s):// URL"));
            }
        }
        self.windows.iter().map(|w| Window::parse(w)).collect()
    }
}

/// A weekly go-live window: days, a start and end time of day, a time zone.
/// An end before the start runs past midnight into the next day.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    text: String,
    /// Bit `n` set: the window opens on weekday `n` (Monday = 0).
    days: u8,
    start: (i8, i8),
    end: (i8, i8),
    tz: TimeZone,
}

fn hm(s: &str) -> Option<(i8, i8)> {
    let (h, m) = s.split_once(':')?;
    let (h, m): (i8, i8) = (h.parse().ok()?, m.parse().ok()?);
    ((0..=24).contains(&h) && (0..60).contains(&m) && (h < 24 || m == 0)).then_some((h, m))
}

fn weekday(s: &str) -> Option<u8> {
    ["mon", "tue", "wed", "thu", "fri", "sat", "sun"].iter().position(|d| s.eq_ignore_ascii_case(d)).map(|p| p as u8)
}

impl Window {
    /// `Sat 01:00-05:00 Asia/Shanghai`, `Mon-Fri 22:00-02:00 UTC`,
    /// `Sat,Sun 00:00-24:00 Europe/Berlin`, `daily 01:00-05:00 UTC`.
    pub fn parse(text: &str) -> Result<Window, PolicyError> {
        let bad = |why: &str| {
            PolicyError(format!(
                "window {text:?}: {why}; expected DAYS HH:MM-HH:MM ZONE, e.g. 'Sat 01:00-05:00 Asia/Shanghai' or 'Mon-Fri 22:00-02:00 UTC'"
            ))
        };
        let parts: Vec<&str> = text.split_whitespace().collect();
        let [days, times, zone] = parts[..] else { return Err(bad("three parts needed")) };
        let mut mask = 0u8;
        if days.eq_ignore_ascii_case("daily") || days == "*" {
            mask = 0x7f;
        } else {
            for d in days.split(',') {
                match d.split_once('-') {
                    Some((a, b)) => {
                        let (a, b) = (
                            weekday(a).ok_or_else(|| bad("unknown day"))?,
                            weekday(b).ok_or_else(|| bad("unknown day"))?,
                        );
                        let mut i = a;
                        loop {
                            mask |= 1 << i;
                            if i == b {
                                break;
                            }
                            i = (i + 1) % 7;
                        }
                    }
                    None => mask |= 1 << weekday(d).ok_or_else(|| bad("unknown day"))?,
                }
            }
        }
        let (s, e) = times.split_once('-').ok_or_else(|| bad("times must be HH:MM-HH:MM"))?;
        let (start, end) = (hm(s).ok_or_else(|| bad("bad start time"))?, hm(e).ok_or_else(|| bad("bad end time"))?);
        if start == end || start.0 == 24 {
            return Err(bad("a window needs a start before 24:00 and an end different from it"));
        }
        let tz = TimeZone::get(zone).map_err(|_| bad("unknown time zone"))?;
        Ok(Window { text: text.to_owned(), days: mask, start, end, tz })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    fn opens_on(&self, d: Date) -> bool {
        self.days & (1 << d.weekday().to_monday_zero_offset()) != 0
    }

    /// The window opening on day `d`, as `[open, close)` in unix ms.
    fn span_on(&self, d: Date) -> Option<(i64, i64)> {
        let at = |d: Date, (h, m): (i8, i8)| -> Option<i64> {
            let dt = if h == 24 { d.tomorrow().ok()?.at(0, 0, 0, 0) } else { d.at(h, m, 0, 0) };
            Some(dt.to_zoned(self.tz.clone()).ok()?.timestamp().as_millisecond())
        };
        let end_day = if self.end <= self.start { d.tomorrow().ok()? } else { d };
        Some((at(d, self.start)?, at(end_day, self.end)?))
    }

    fn local_date(&self, ms: i64) -> Option<Date> {
        Some(Timestamp::from_millisecond(ms).ok()?.to_zoned(self.tz.clone()).date())
    }

    pub fn contains(&self, ms: i64) -> bool {
        let Some(today) = self.local_date(ms) else { return false };
        [today.yesterday().ok(), Some(today)]
            .into_iter()
            .flatten()
            .filter(|d| self.opens_on(*d))
            .filter_map(|d| self.span_on(d))
            .any(|(open, close)| open <= ms && ms < close)
    }

    /// The first moment at or after `ms` inside the window.
    pub fn next_open(&self, ms: i64) -> Option<i64> {
        if self.contains(ms) {
            return Some(ms);
        }
        let mut d = self.local_date(ms)?;
        for _ in 0..9 {
            if self.opens_on(d) {
                if let Some((open, _)) = self.span_on(d) {
                    if open > ms {
                        return Some(open);
                    }
                }
            }
            d = d.tomorrow().ok()?;
        }
        None
    }
}

/// Whether `ms` is inside any window (no windows: always).
pub fn in_windows(windows: &[Window], ms: i64) -> bool {
    windows.is_empty() || windows.iter().any(|w| w.contains(ms))
}

/// The first allowed moment at or after `ms`.
pub fn next_allowed(windows: &[Window], ms: i64) -> i64 {
    if windows.is_empty() {
        return ms;
    }
    windows.iter().filter_map(|w| w.next_open(ms)).min().unwrap_or(ms)
}

/// A time for people: RFC 3339 in UTC, to the second.
pub fn show_time(ms: i64) -> String {
    match Timestamp::from_millisecond(ms) {
        Ok(t) => t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Err(_) => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn amounts_and_waves() {
        assert_eq!(Amount::parse("5%").unwrap(), Amount::Percent(5));
        assert_eq!(Amount::parse("3").unwrap(), Amount::Count(3));
        assert!(Amount::parse("101%").is_err() && Amount::parse("-1").is_err() && Amount::parse("x").is_err());
        assert_eq!(Amount::Percent(5).floor_of(39), 1);
        assert_eq!(Amount::Percent(5).floor_of(19), 0);
        assert_eq!(Amount::Percent(10).ceil_of(3), 1);
        assert_eq!(Amount::Count(5).ceil_of(3), 3);
        assert_eq!(parse_waves("1,10%,50%,100%").unwrap().len(), 4);
        assert!(parse_waves("1,0%").is_err() && parse_waves("").is_err());
        let p: Policy = serde_json::from_str(r#"{"waves":["1","50%"],"max_failures":"5%"}"#).unwrap();
        assert_eq!(p.max_failures, Amount::Percent(5));
        assert_eq!(serde_json::to_string(&Amount::Percent(5)).unwrap(), r#""5%""#);
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Viewer < Role::Deployer && Role::Deployer < Role::Approver && Role::Approver < Role::Admin);
        assert_eq!(Role::parse("approver").unwrap(), Role::Approver);
        assert!(Role::parse("root").is_err());
    }

    #[test]
    fn windows_in_their_zone() {
        let w = Window::parse("Sat 01:00-05:00 Asia/Shanghai").unwrap();
        // 2026-12-05 is a Saturday; 01:30 in Shanghai is 17:30Z the day before
        assert!(w.contains(ms("2026-12-04T17:30:00Z")));
        assert!(!w.contains(ms("2026-12-04T21:00:00Z")), "05:00 local is the end");
        assert!(!w.contains(ms("2026-12-05T17:30:00Z")), "Sunday");
        assert_eq!(w.next_open(ms("2026-12-05T17:30:00Z")), Some(ms("2026-12-11T17:00:00Z")));
        assert_eq!(w.next_open(ms("2026-12-04T17:30:00Z")), Some(ms("2026-12-04T17:30:00Z")));
    }

    #[test]
    fn windows_past_midnight_and_ranges() {
        let w = Window::parse("Mon-Fri 22:00-02:00 UTC").unwrap();
        // Friday 2026-12-04 23:00 and Saturday 01:00 (opened Friday)
        assert!(w.contains(ms("2026-12-04T23:00:00Z")));
        assert!(w.contains(ms("2026-12-05T01:00:00Z")));
        assert!(!w.contains(ms("2026-12-05T23:00:00Z")), "Saturday does not open");
        assert_eq!(w.next_open(ms("2026-12-05T23:00:00Z")), Some(ms("2026-12-07T22:00:00Z")));
        let wrap = Window::parse("Fri-Mon 00:00-24:00 UTC").unwrap();
        assert!(wrap.contains(ms("2026-12-06T12:00:00Z")) && !wrap.contains(ms("2026-12-08T12:00:00Z")));
        assert!(Window::parse("daily 01:00-05:00 Mars/Olympus").is_err());
        assert!(Window::parse("Sat 05:00-05:00 UTC").is_err());
        assert!(Window::parse("Sat 1am-5am UTC").is_err());
        assert!(Window::parse("Caturday 01:00-02:00 UTC").is_err());
    }

    #[test]
    fn policy_checks() {
        assert!(Policy::default().validate().unwrap().is_empty());
        let p = Policy { windows: vec!["nope".into()], ..Policy::default() };
        assert!(p.validate().is_err());
        let p = Policy { approver_role: Role::Viewer, ..Policy::default() };
        assert!(p.validate().is_err());
        let p = Policy { webhook: Some("ftp://x".into()), ..Policy::default() };
        assert!(p.validate().is_err());
    }
}
