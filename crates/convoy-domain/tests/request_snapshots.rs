//! Snapshot of the request state machine: every request state × event
//! under a few policies, rendered as a table and compared with
//! `tests/snapshots/request_machine.txt`. To accept a change after reading
//! it: `CONVOY_UPDATE_SNAPSHOTS=1 cargo test -p convoy-domain`.

use convoy_domain::{request_step, Amount, DeploymentState as D, PreflightFailure, RequestEvent as E, RequestRules};

fn check(name: &str, got: String) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots").join(format!("{name}.txt"));
    if std::env::var_os("CONVOY_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(got, want, "request machine {name} differs from {}", path.display());
}

#[test]
fn request_machine() {
    let states =
        [D::AwaitingApproval, D::Preflight, D::AwaitingConfirmation, D::Staging, D::Succeeded, D::Canceled, D::Expired];
    let events = [
        E::Submitted,
        E::Approved { given: 1 },
        E::Approved { given: 2 },
        E::Rejected,
        E::PreflightAnswers { total: 4, failed: 0, pending: 1, overdue: false },
        E::PreflightAnswers { total: 4, failed: 0, pending: 1, overdue: true },
        E::PreflightAnswers { total: 4, failed: 0, pending: 0, overdue: false },
        E::PreflightAnswers { total: 4, failed: 1, pending: 0, overdue: false },
        E::PreflightAnswers { total: 4, failed: 2, pending: 0, overdue: false },
        E::PreflightAnswers { total: 1, failed: 1, pending: 0, overdue: false },
        E::GoLiveMissed,
        E::Confirmed,
        E::Canceled,
        E::TimedOut,
    ];
    let rules = [
        (
            "two approvals, block, confirm",
            RequestRules {
                approvals: 2,
                preflight_failure: PreflightFailure::Block,
                max_failures: Amount::Count(1),
                confirm: true,
            },
        ),
        (
            "no approval, skip within 1, no confirm",
            RequestRules {
                approvals: 0,
                preflight_failure: PreflightFailure::Skip,
                max_failures: Amount::Count(1),
                confirm: false,
            },
        ),
    ];
    let mut out = String::new();
    for (name, r) in &rules {
        out.push_str(&format!("## {name}\n"));
        for s in states {
            for e in &events {
                out.push_str(&format!("{:<22} {:<70} => {:?}\n", s.as_str(), format!("{e:?}"), request_step(s, e, r)));
            }
        }
        out.push('\n');
    }
    check("request_machine", out);
}
