//! `convoy plan apply FILE`: release plans kept as code. A TOML file in the
//! application's repository lists planned deployments; applying it makes
//! the server's requests match the file.
//!
//! Each entry is one request, found again by plan name and entry name. An
//! entry's fingerprint (of every field) is kept with its request, so:
//! - an entry with no request gets one;
//! - an unchanged entry changes nothing (applying twice is a no-op);
//! - a changed entry whose request has not started replaces it (the old
//!   request is canceled: approvals were for what it said), and one whose
//!   request has settled gets a new request; one whose request is under way
//!   is left alone and reported, and the apply exits 1;
//! - a request whose entry was removed is canceled if it has not started.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use convoy_client::Client;
use convoy_domain::{parse_reference, DeploymentState as D, Selector};
use convoy_wire::{Decision, DeployRequest, DeploymentInfo, PlanRef};
use serde::{Deserialize, Serialize};

use crate::output::{self, line, Format};

/// The file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanFile {
    /// The plan's name: its requests carry it (letters, digits, `._-`).
    pub plan: String,
    #[serde(default, rename = "deployment")]
    pub deployments: Vec<Entry>,
}

/// One planned deployment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Unique in the plan; how the entry's request is found again.
    pub name: String,
    /// `APP@VERSION`, or `app` and `version` apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The environment whose policy governs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    #[serde(default)]
    pub selector: String,
    /// Planned go-live, RFC 3339 (a fixed time: relative times would
    /// change with every apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub max_failures: u32,
}

/// What applying did, or would do, to one entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub entry: String,
    /// create, unchanged, replace, cancel, blocked.
    pub action: &'static str,
    /// The request the entry has after the step (none for cancel).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// The request canceled (replace, cancel).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    pub note: String,
}

/// A checked entry: the request it asks for and its fingerprint.
#[derive(Debug)]
struct Planned {
    name: String,
    req: DeployRequest,
    digest: String,
}

pub fn load(path: &Path) -> anyhow::Result<PlanFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading plan {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("plan {} is not valid", path.display()))
}

fn check(file: &PlanFile) -> anyhow::Result<Vec<Planned>> {
    PlanRef { name: file.plan.clone(), entry: "-".into(), digest: String::new() }
        .check()
        .map_err(anyhow::Error::msg)?;
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for e in &file.deployments {
        let ctx = || format!("plan entry {:?}", e.name);
        PlanRef { name: file.plan.clone(), entry: e.name.clone(), digest: String::new() }
            .check()
            .map_err(anyhow::Error::msg)
            .with_context(ctx)?;
        if !seen.insert(e.name.clone()) {
            bail!("plan entry {:?} is listed twice: entry names are unique in a plan", e.name);
        }
        let (app, version) = match (&e.release, &e.app, &e.version) {
            (Some(r), None, None) => {
                let (a, v) = parse_reference(r).with_context(ctx)?;
                (a.to_string(), v.to_string())
            }
            (None, Some(a), Some(v)) => {
                let (a, v) = parse_reference(&format!("{a}@{v}")).with_context(ctx)?;
                (a.to_string(), v.to_string())
            }
            _ => bail!("plan entry {:?}: give release = \"APP@VERSION\", or app and version", e.name),
        };
        Selector::parse(&e.selector).with_context(ctx)?;
        let at = match &e.at {
            None => None,
            Some(s) if s.starts_with('+') => {
                bail!("plan entry {:?}: at = {s:?} is relative; a plan gives fixed times (RFC 3339)", e.name)
            }
            Some(s) => Some(crate::parse_at(s, 0).with_context(ctx)?),
        };
        let mut req = DeployRequest {
            app,
            version,
            selector: e.selector.clone(),
            at,
            max_failures: e.max_failures,
            stage_timeout_secs: None,
            activate_timeout_secs: None,
            env: e.env.clone(),
            reason: e.reason.clone(),
            targets: Vec::new(),
            plan: None,
        };
        let digest = fingerprint(&req);
        req.plan = Some(PlanRef { name: file.plan.clone(), entry: e.name.clone(), digest: digest.clone() });
        out.push(Planned { name: e.name.clone(), req, digest });
    }
    Ok(out)
}

/// 128 bits of BLAKE3 over the request as JSON (without its plan).
fn fingerprint(req: &DeployRequest) -> String {
    let bytes = serde_json::to_vec(req).expect("a request serializes");
    blake3::hash(&bytes).to_hex()[..32].to_owned()
}

fn not_started(state: D) -> bool {
    matches!(state, D::AwaitingApproval | D::Preflight | D::AwaitingConfirmation)
}

fn settled(state: D) -> bool {
    matches!(state, D::Succeeded | D::Failed | D::RolledBack | D::Canceled | D::Rejected | D::Expired)
}

fn state_of(d: &DeploymentInfo) -> anyhow::Result<D> {
    D::parse(&d.state)
        .with_context(|| format!("the server says {} is {:?}, a state this CLI does not know", d.id, d.state))
}

/// What to do, entry by entry; `existing` are the plan's requests, oldest
/// first.
fn decide(planned: &[Planned], existing: &[DeploymentInfo]) -> anyhow::Result<Vec<(Step, Option<usize>)>> {
    let mut newest: BTreeMap<&str, &DeploymentInfo> = BTreeMap::new();
    for d in existing {
        if let Some(p) = &d.plan {
            newest.insert(p.entry.as_str(), d);
        }
    }
    let mut steps = Vec::new();
    for (i, p) in planned.iter().enumerate() {
        let what = format!(
            "{}@{}{}{}{}",
            p.req.app,
            p.req.version,
            p.req.env.as_ref().map(|e| format!(" in {e}")).unwrap_or_default(),
            if p.req.selector.is_empty() { " to every target".to_owned() } else { format!(" to {}", p.req.selector) },
            p.req.at.map(|t| format!(" at {}", output::time(t))).unwrap_or_default()
        );
        let step = |action, request: Option<&str>, previous: Option<&str>, note: String| Step {
            entry: p.name.clone(),
            action,
            request: request.map(str::to_owned),
            previous: previous.map(str::to_owned),
            note,
        };
        let Some(d) = newest.get(p.name.as_str()) else {
            steps.push((step("create", None, None, what), Some(i)));
            continue;
        };
        let state = state_of(d)?;
        let same = d.plan.as_ref().is_some_and(|r| r.digest == p.digest);
        steps.push(if same {
            (step("unchanged", Some(&d.id), None, format!("{what}: {}", d.state)), None)
        } else if not_started(state) {
            (
                step("replace", None, Some(&d.id), format!("{what} (the entry changed; {} was {})", d.id, d.state)),
                Some(i),
            )
        } else if settled(state) {
            (step("create", None, None, format!("{what} ({} before it: {})", d.id, d.state)), Some(i))
        } else {
            let note = format!(
                "the entry changed, but {} is under way ({}): a plan changes only requests that have not started; \
                 use convoy pause/rollback/cancel on it",
                d.id, d.state
            );
            (step("blocked", Some(&d.id), None, note), None)
        });
    }
    let kept: BTreeSet<&str> = planned.iter().map(|p| p.name.as_str()).collect();
    for (entry, d) in newest.iter().filter(|(e, _)| !kept.contains(*e)) {
        let state = state_of(d)?;
        if not_started(state) {
            let note = format!("{}@{}: the entry was removed from the plan", d.app, d.version);
            steps.push((
                Step { entry: entry.to_string(), action: "cancel", request: None, previous: Some(d.id.clone()), note },
                None,
            ));
        } else if !settled(state) {
            let note = format!("the entry was removed, but {} is under way ({}); it is left as it is", d.id, d.state);
            steps.push((
                Step { entry: entry.to_string(), action: "blocked", request: Some(d.id.clone()), previous: None, note },
                None,
            ));
        }
    }
    Ok(steps)
}

/// Applies (or with `dry_run` only shows) the plan in `path`. Exit code 0
/// when the server matches the file afterwards, 1 when an entry was blocked.
pub async fn apply(c: &Client, path: &Path, dry_run: bool, fmt: Format) -> anyhow::Result<i32> {
    let file = load(path)?;
    let planned = check(&file)?;
    let existing: Vec<DeploymentInfo> =
        c.get_json(&format!("/deployments?plan={}", file.plan), Duration::from_secs(30)).await?;
    let mut steps = decide(&planned, &existing)?;
    let why = format!("removed from or changed in release plan {} ({})", file.plan, path.display());
    if !dry_run {
        for (step, create) in steps.iter_mut() {
            if let Some(old) = &step.previous {
                let _: DeploymentInfo = c
                    .send_json(
                        reqwest::Method::POST,
                        &format!("/deployments/{old}/cancel"),
                        &Decision { note: why.clone(), ..Default::default() },
                    )
                    .await
                    .with_context(|| format!("canceling {old} (plan entry {})", step.entry))?;
            }
            if let Some(i) = create {
                let d: DeploymentInfo = c
                    .send_json(reqwest::Method::POST, "/deployments", &planned[*i].req)
                    .await
                    .with_context(|| format!("requesting plan entry {}", step.entry))?;
                step.request = Some(d.id);
            }
        }
    }
    let blocked = steps.iter().any(|(s, _)| s.action == "blocked");
    let steps: Vec<Step> = steps.into_iter().map(|(s, _)| s).collect();
    match fmt {
        Format::Json => output::json(&serde_json::json!({"plan": file.plan, "dry_run": dry_run, "steps": steps})),
        Format::Table => {
            let would = if dry_run { "would " } else { "" };
            for s in &steps {
                let ids = match (&s.previous, &s.request) {
                    (Some(p), Some(r)) => format!("{p} → {r}"),
                    (Some(p), None) => format!("{p} canceled"),
                    (None, Some(r)) => r.clone(),
                    (None, None) => "-".into(),
                };
                let action = if s.action == "unchanged" || s.action == "blocked" {
                    s.action.to_owned()
                } else {
                    format!("{would}{}", s.action)
                };
                line(format!("{action:<16} {:<20} {ids:<32} {}", s.entry, s.note));
            }
            if steps.is_empty() {
                line(format!("plan {} has no entries and no requests", file.plan));
            }
        }
    }
    Ok(if blocked { 1 } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(text: &str) -> anyhow::Result<Vec<Planned>> {
        check(&toml::from_str(text)?)
    }

    #[test]
    fn a_plan_must_name_fixed_times_unique_entries_and_real_releases() {
        let ok = plan(
            "plan = \"shop\"\n[[deployment]]\nname = \"eu\"\nrelease = \"web@2.0\"\nenv = \"prod\"\nselector = \"site=eu\"\nat = \"2030-01-01T09:00:00Z\"\nreason = \"CHG-1\"\n",
        )
        .unwrap();
        assert_eq!(ok[0].req.at, Some(1_893_488_400_000));
        assert_eq!(ok[0].req.plan.as_ref().unwrap().entry, "eu");
        let bad = |t: &str, want: &str| {
            let e = format!("{:#}", plan(t).unwrap_err());
            assert!(e.contains(want), "{e}");
        };
        bad("plan = \"shop\"\n[[deployment]]\nname = \"eu\"\nrelease = \"web@2.0\"\nat = \"+5m\"\n", "relative");
        bad(
            "plan = \"shop\"\n[[deployment]]\nname = \"eu\"\nrelease = \"web@2.0\"\n[[deployment]]\nname = \"eu\"\nrelease = \"web@2.1\"\n",
            "listed twice",
        );
        bad("plan = \"shop\"\n[[deployment]]\nname = \"eu\"\n", "give release");
        bad("plan = \"shop/x\"\n", "plan name");
        bad(
            "plan = \"shop\"\n[[deployment]]\nname = \"eu\"\nrelease = \"web@2.0\"\nselektor = \"x\"\n",
            "unknown field",
        );
    }

    #[test]
    fn a_changed_field_changes_the_fingerprint() {
        let a = plan("plan = \"p\"\n[[deployment]]\nname = \"e\"\nrelease = \"web@2.0\"\nreason = \"a\"\n").unwrap();
        let b = plan("plan = \"p\"\n[[deployment]]\nname = \"e\"\nrelease = \"web@2.0\"\nreason = \"b\"\n").unwrap();
        let a2 = plan("plan = \"p\"\n[[deployment]]\nname = \"e\"\napp = \"web\"\nversion = \"2.0\"\nreason = \"a\"\n")
            .unwrap();
        assert_ne!(a[0].digest, b[0].digest);
        assert_eq!(a[0].digest, a2[0].digest, "the same request written another way");
    }
}
