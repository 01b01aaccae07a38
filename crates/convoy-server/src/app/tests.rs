//! The application layer driven in process: a real SQLite store, the real
//! report writer and scheduler step, agents played by reports. No process
//! is started; the end-to-end tests in `crates/convoy/tests` do the rest.

use std::collections::BTreeMap;

use convoy_domain::{
    parse_waves, Amount, DeploymentState as D, InstructionState as S, OnBreach, Policy, ReportKind, Role,
};
use convoy_store::{EnvRecord, InstructionRecord, ReleaseRecord, TargetRecord};
use convoy_wire::{DeployRequest, Inventory, Labels, Phase, Report};

use super::{operations, reports, requests, rollout, schedule, AppError};
use crate::auth::User;
use crate::state::AppState;

struct H {
    st: AppState,
    _dir: tempfile::TempDir,
}

const DIGEST: &str = "digest-of-2.0";

fn user(name: &str, role: Role) -> User {
    User { name: name.into(), role }
}

async fn harness(hosts: &[(&str, &str)]) -> H {
    let dir = tempfile::tempdir().unwrap();
    let store = convoy_store_sqlite::SqliteStore::open(&dir.path().join("db")).await.unwrap();
    let chunks = convoy_pack::ChunkStore::open(dir.path().join("chunks")).unwrap();
    let deltas = super::content::Deltas::open(dir.path().join("deltas")).unwrap();
    let key = convoy_wire::sign::ServerKey::from_secret(&convoy_wire::sign::ServerKey::generate().1).unwrap();
    let st = AppState::new(std::sync::Arc::new(store), chunks, deltas, key);
    let rx = st.report_rx.lock().unwrap().take().unwrap();
    tokio::spawn(reports::run(st.clone(), rx));
    let h = H { st, _dir: dir };
    for (host, labels) in hosts {
        enrol(&h, host, labels).await;
    }
    for (v, digest) in [("1.0", "digest-of-1.0"), ("2.0", DIGEST)] {
        let r = ReleaseRecord {
            app: "web".into(),
            version: v.into(),
            digest: digest.into(),
            manifest: Vec::new(),
            files: 1,
            total_size: 10,
            chunks: 1,
            created_at: 1,
            provenance_json: String::new(),
        };
        h.st.store.insert_release(&r).await.unwrap();
    }
    h
}

async fn enrol(h: &H, host: &str, labels: &str) {
    let inv = Inventory { current: BTreeMap::from([("web".to_owned(), "1.0".to_owned())]), ..Default::default() };
    let t = TargetRecord {
        id: format!("t-{host}"),
        hostname: host.into(),
        labels_json: serde_json::to_string(&Labels::parse(labels).unwrap()).unwrap(),
        inventory_json: serde_json::to_string(&inv).unwrap(),
        enrolled_at: 1,
        last_seen: 1,
        warning: String::new(),
    };
    h.st.store.insert_target(&t).await.unwrap();
}

async fn env(h: &H, p: &Policy) {
    p.validate().unwrap();
    let e = EnvRecord {
        name: "prod".into(),
        policy_json: serde_json::to_string(p).unwrap(),
        updated_by: "admin".into(),
        updated_at: 1,
    };
    h.st.store.put_env(&e).await.unwrap();
}

fn request(selector: &str) -> DeployRequest {
    DeployRequest {
        app: "web".into(),
        version: "2.0".into(),
        selector: selector.into(),
        at: None,
        max_failures: 0,
        stage_timeout_secs: None,
        activate_timeout_secs: None,
        env: Some("prod".into()),
        reason: "CHG-1".into(),
        targets: Vec::new(),
        plan: None,
    }
}

/// Runs the scheduler's step until nothing moves (bounded).
async fn settle(h: &H) {
    for _ in 0..20 {
        if schedule::tick(&h.st).await.unwrap() == 0 {
            return;
        }
    }
    panic!("the scheduler kept moving for 20 passes");
}

async fn state(h: &H, id: &str) -> (D, String) {
    let d = super::find(&h.st, id).await.unwrap();
    (d.state, d.note)
}

async fn instrs(h: &H, id: &str) -> Vec<InstructionRecord> {
    h.st.store.list_instructions(id).await.unwrap()
}

async fn report(h: &H, i: &InstructionRecord, phase: Phase, kind: ReportKind) {
    let r = Report {
        instruction_id: i.id.clone(),
        phase,
        attempt: i.attempt,
        report: kind,
        metrics: Default::default(),
        output: String::new(),
        inventory: None,
    };
    reports::submit(&h.st, i.target_id.clone(), r).await.unwrap();
}

/// Every target passes preflight, and the scheduler moves on.
async fn pass_preflight(h: &H, id: &str) {
    settle(h).await;
    for c in h.st.store.list_checks(id).await.unwrap() {
        let r = Report {
            instruction_id: c.id.clone(),
            phase: Phase::Preflight,
            attempt: 0,
            report: ReportKind::Succeeded,
            metrics: Default::default(),
            output: String::new(),
            inventory: None,
        };
        rollout::preflight_answer(&h.st, &c.target_id, &r).await.unwrap();
    }
    settle(h).await;
}

/// Every target still staging stages the release; the gate passes.
async fn stage_all(h: &H, id: &str) {
    for i in instrs(h, id).await.into_iter().filter(|i| matches!(i.state, S::Created | S::Sent)) {
        report(h, &i, Phase::Stage, ReportKind::Received).await;
        let i = h.st.store.get_instruction(&i.id).await.unwrap().unwrap();
        report(h, &i, Phase::Stage, ReportKind::Staged { digest: DIGEST.into() }).await;
    }
    settle(h).await;
}

/// The targets switching now report: `fail` names those that fail (and
/// switch back); the others go live.
async fn switch(h: &H, id: &str, fail: &[&str]) {
    for i in instrs(h, id).await.into_iter().filter(|i| i.state == S::Activating) {
        let kind = if fail.iter().any(|f| i.target_id == format!("t-{f}")) {
            ReportKind::RolledBack
        } else {
            ReportKind::Succeeded
        };
        report(h, &i, Phase::Activate, kind).await;
    }
    settle(h).await;
}

/// Targets told to roll back do so.
async fn roll_back(h: &H, id: &str) {
    for i in instrs(h, id).await.into_iter().filter(|i| i.state == S::RollingBack) {
        report(h, &i, Phase::Rollback, ReportKind::RolledBack).await;
    }
    settle(h).await;
}

fn by_host(is: &[InstructionRecord]) -> BTreeMap<String, S> {
    is.iter().map(|i| (i.target_id.trim_start_matches("t-").to_owned(), i.state)).collect()
}

const FLEET: [(&str, &str); 5] =
    [("a1", "role=web"), ("a2", "role=web"), ("a3", "role=web"), ("a4", "role=web"), ("a5", "role=web")];

/// A rollout of 5 targets in waves of 1, 2 and 2 under `on_breach`, where
/// wave 2 breaches (a2 fails); returns the harness and the deployment.
async fn breach_in_wave_two(on_breach: OnBreach) -> (H, String) {
    let h = harness(&FLEET).await;
    let p = Policy { waves: parse_waves("1,3,100%").unwrap(), on_breach, ..Policy::default() };
    env(&h, &p).await;
    let dana = user("dana", Role::Deployer);
    let id = requests::submit(&h.st, &dana, request("role=web")).await.unwrap().id;
    pass_preflight(&h, &id).await;
    assert_eq!(state(&h, &id).await.0, D::Staging);
    let waves: BTreeMap<String, u32> = instrs(&h, &id).await.iter().map(|i| (i.target_id.clone(), i.wave)).collect();
    assert_eq!(waves.values().copied().collect::<Vec<_>>(), vec![1, 2, 2, 3, 3], "{waves:?}");
    stage_all(&h, &id).await;
    assert_eq!(state(&h, &id).await.0, D::Activating);
    switch(&h, &id, &[]).await; // wave 1: a1
    let wave2: Vec<String> = instrs(&h, &id)
        .await
        .into_iter()
        .filter(|i| i.state == S::Activating)
        .map(|i| i.target_id.trim_start_matches("t-").to_owned())
        .collect();
    assert_eq!(wave2.len(), 2, "wave 2 switching");
    switch(&h, &id, &[wave2[0].as_str()]).await;
    (h, id)
}

#[tokio::test]
async fn a_breach_rolls_back_every_wave_that_went_live_by_default() {
    let (h, id) = breach_in_wave_two(OnBreach::RollbackAll).await;
    let (st, note) = state(&h, &id).await;
    assert_eq!(st, D::RollingBack, "{note}");
    assert!(note.contains("rolling back every wave that went live"), "{note}");
    let is = instrs(&h, &id).await;
    assert_eq!(is.iter().filter(|i| i.state == S::RollingBack).count(), 2, "wave 1 and wave 2's live target");
    assert_eq!(is.iter().filter(|i| i.wave == 3 && i.state == S::Canceled).count(), 2, "wave 3 never starts");
    roll_back(&h, &id).await;
    let (st, note) = state(&h, &id).await;
    assert_eq!(st, D::RolledBack, "{note}");
    assert!(instrs(&h, &id).await.iter().all(|i| i.state != S::Succeeded), "nobody left on 2.0");
}

#[tokio::test]
async fn a_breach_rolls_back_only_its_wave_and_the_deployment_ends_halted() {
    let (h, id) = breach_in_wave_two(OnBreach::RollbackWave).await;
    assert_eq!(state(&h, &id).await.0, D::RollingBack);
    let is = instrs(&h, &id).await;
    assert_eq!(is.iter().find(|i| i.wave == 1).unwrap().state, S::Succeeded, "wave 1 stays live");
    roll_back(&h, &id).await;
    let (st, note) = state(&h, &id).await;
    assert_eq!(st, D::Halted, "a mixed outcome is never rolled_back: {note}");
    assert!(note.contains("1 live on the release, 2 rolled back, 2 never went live"), "{note}");
    // `convoy rollback` finishes it
    let dana = user("dana", Role::Deployer);
    let d = operations::rollback(&h.st, &dana, &id, "finish it", false).await.unwrap();
    assert_eq!(d.state, "rolling_back");
    roll_back(&h, &id).await;
    assert_eq!(state(&h, &id).await.0, D::RolledBack);
}

#[tokio::test]
async fn a_breach_can_pause_the_rollout_for_an_operator() {
    let (h, id) = breach_in_wave_two(OnBreach::Pause).await;
    let (st, note) = state(&h, &id).await;
    assert_eq!(st, D::Halted, "{note}");
    assert!(note.contains("paused by the breach"), "{note}");
    let is = instrs(&h, &id).await;
    assert_eq!(is.iter().filter(|i| i.state == S::Succeeded).count(), 2, "nothing was rolled back");
    assert_eq!(is.iter().filter(|i| i.state == S::Staged).count(), 2, "wave 3 waits, staged");
    // a viewer may not resume; the refusal is audited
    let vic = user("vic", Role::Viewer);
    assert!(matches!(operations::resume(&h.st, &vic, &id, "").await, Err(AppError::Forbidden(_))));
    let events = h.st.store.events(&id).await.unwrap();
    assert!(events.iter().any(|e| e.to_state == "refused" && e.note.contains("resume refused")), "{events:?}");
    // resuming accepts the failure and starts wave 3
    let dana = user("dana", Role::Deployer);
    let d = operations::resume(&h.st, &dana, &id, "a2 is a known bad disk").await.unwrap();
    assert_eq!(d.state, "activating", "{}", d.note);
    assert!(d.note.contains("wave 3 of 3") && d.note.contains("a2 is a known bad disk"), "{}", d.note);
    switch(&h, &id, &[]).await;
    assert_eq!(state(&h, &id).await.0, D::Succeeded);
    // nothing left to resume
    assert!(matches!(operations::resume(&h.st, &dana, &id, "").await, Err(AppError::Conflict(_))));
}

#[tokio::test]
async fn a_one_target_canary_that_fails_halts_under_a_count_budget() {
    let h = harness(&FLEET).await;
    let p = Policy { waves: parse_waves("1,100%").unwrap(), max_failures: Amount::Count(1), ..Policy::default() };
    env(&h, &p).await;
    let id = requests::submit(&h.st, &user("dana", Role::Deployer), request("role=web")).await.unwrap().id;
    pass_preflight(&h, &id).await;
    stage_all(&h, &id).await;
    let canary = instrs(&h, &id).await.into_iter().find(|i| i.state == S::Activating).unwrap();
    switch(&h, &id, &[canary.target_id.trim_start_matches("t-")]).await;
    let (st, note) = state(&h, &id).await;
    assert_eq!(st, D::Failed, "{note}");
    assert!(note.contains("every target of the wave"), "{note}");
    let states = by_host(&instrs(&h, &id).await);
    assert_eq!(states.values().filter(|s| **s == S::Canceled).count(), 4, "wave 2 never starts: {states:?}");
}

#[tokio::test]
async fn a_request_walks_approval_preflight_and_confirmation_and_refusals_are_audited() {
    let h = harness(&FLEET).await;
    let p = Policy { approvals: 1, confirm: true, ..Policy::default() };
    env(&h, &p).await;
    let (dana, ann, dave) = (user("dana", Role::Deployer), user("ann", Role::Approver), user("dave", Role::Deployer));
    let id = requests::submit(&h.st, &dana, request("role=web")).await.unwrap().id;
    assert_eq!(state(&h, &id).await.0, D::AwaitingApproval);
    let self_approval = requests::approve(&h.st, &user("dana", Role::Admin), &id, &note("")).await;
    assert!(matches!(self_approval, Err(AppError::Forbidden(_))), "{self_approval:?}");
    assert!(matches!(requests::confirm(&h.st, &dana, &id).await, Err(AppError::Conflict(_))), "not yet");
    requests::approve(&h.st, &ann, &id, &note("looks fine")).await.unwrap();
    assert_eq!(state(&h, &id).await.0, D::Preflight);
    pass_preflight(&h, &id).await;
    assert_eq!(state(&h, &id).await.0, D::AwaitingConfirmation);
    assert!(matches!(requests::confirm(&h.st, &dave, &id).await, Err(AppError::Forbidden(_))), "not the requester");
    assert!(matches!(requests::cancel(&h.st, &dave, &id, "").await, Err(AppError::Forbidden(_))));
    let d = requests::confirm(&h.st, &dana, &id).await.unwrap();
    assert_eq!(d.state, "staging");
    let refused: Vec<String> =
        h.st.store
            .events(&id)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.to_state == "refused")
            .map(|e| format!("{} {}", e.actor, e.note))
            .collect();
    assert_eq!(refused.len(), 4, "{refused:#?}");
    assert!(refused.iter().any(|r| r.starts_with("user:dave confirm refused")), "{refused:#?}");
}

#[tokio::test]
async fn a_late_approval_moves_to_the_next_window_or_waits_for_a_new_time() {
    for (outside, moved) in [(convoy_domain::OutsideWindow::Next, true), (convoy_domain::OutsideWindow::Refuse, false)]
    {
        let h = harness(&FLEET[..2]).await;
        let p = Policy {
            approvals: 1,
            windows: vec!["daily 00:00-23:59 UTC".into()],
            outside_window: outside,
            ..Policy::default()
        };
        env(&h, &p).await;
        let mut req = request("role=web");
        let now = crate::state::now_ms();
        req.at = Some(now + 1_000);
        let id = requests::submit(&h.st, &user("dana", Role::Deployer), req).await.unwrap().id;
        tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
        requests::approve(&h.st, &user("ann", Role::Approver), &id, &note("")).await.unwrap();
        pass_preflight(&h, &id).await;
        let (st, note) = state(&h, &id).await;
        if moved {
            assert_eq!(st, D::Staging, "{note}");
            assert!(note.contains("moved to the next window"), "{note}");
        } else {
            assert_eq!(st, D::AwaitingConfirmation, "nothing goes live on a missed plan: {note}");
            assert!(note.contains("passed before request"), "{note}");
            assert!(instrs(&h, &id).await.is_empty());
        }
    }
}

#[tokio::test]
async fn picked_targets_by_id_or_hostname_and_nothing_else() {
    let h = harness(&[("a1", "role=web"), ("a2", "role=web"), ("db1", "role=db")]).await;
    env(&h, &Policy::default()).await;
    let dana = user("dana", Role::Deployer);
    let mut req = request("");
    req.targets = vec!["a2".into(), "t-db1".into()];
    let id = requests::submit(&h.st, &dana, req).await.unwrap().id;
    pass_preflight(&h, &id).await;
    let hosts: Vec<String> = by_host(&instrs(&h, &id).await).into_keys().collect();
    assert_eq!(hosts, ["a2", "db1"]);
    let mut req = request("role=web");
    req.targets = vec!["db1".into()];
    let e = requests::submit(&h.st, &dana, req).await.unwrap_err();
    assert!(matches!(&e, AppError::Invalid(m) if m.contains("does not match the selector")), "{e}");
    let mut req = request("");
    req.targets = vec!["nosuch".into()];
    let e = requests::submit(&h.st, &dana, req).await.unwrap_err();
    assert!(matches!(&e, AppError::Invalid(m) if m.contains("no enrolled target")), "{e}");
}

#[tokio::test]
async fn late_targets_join_the_last_wave_only_when_the_environment_says() {
    for include in [true, false] {
        let h = harness(&FLEET[..3]).await;
        let p = Policy { waves: parse_waves("1,100%").unwrap(), include_late: include, ..Policy::default() };
        env(&h, &p).await;
        let id = requests::submit(&h.st, &user("dana", Role::Deployer), request("role=web")).await.unwrap().id;
        pass_preflight(&h, &id).await;
        enrol(&h, "late1", "role=web").await;
        settle(&h).await;
        assert!(instrs(&h, &id).await.iter().all(|i| i.target_id != "t-late1"), "not before the gate");
        stage_all(&h, &id).await; // the gate passes; wave 1 goes live
        let late = instrs(&h, &id).await.into_iter().find(|i| i.target_id == "t-late1");
        let detail =
            operations::detail(&h.st, &id, &convoy_wire::DetailQuery { late: Some(true), ..Default::default() })
                .await
                .unwrap();
        if include {
            assert_eq!(late.as_ref().map(|i| (i.wave, i.state)), Some((2, S::Created)), "joins the last wave");
            assert!(detail.not_included.is_empty(), "{:?}", detail.not_included);
            stage_all(&h, &id).await; // the late one stages
            switch(&h, &id, &[]).await; // wave 1
            switch(&h, &id, &[]).await; // wave 2, with the late one
            assert_eq!(state(&h, &id).await.0, D::Succeeded);
            assert_eq!(instrs(&h, &id).await.iter().filter(|i| i.state == S::Succeeded).count(), 4);
        } else {
            assert!(late.is_none());
            assert_eq!(detail.not_included, ["late1 (t-late1)"]);
        }
    }
}

#[tokio::test]
async fn a_corrupt_stored_policy_stops_its_deployment_and_is_never_a_default() {
    let h = harness(&FLEET[..2]).await;
    let admin = user("root", Role::Admin);
    let mut req = request("role=web");
    req.env = None;
    let id = requests::submit(&h.st, &admin, req).await.unwrap().id;
    let m = convoy_store::DeploymentMove {
        policy_json: Some("{not json"),
        ..convoy_store::DeploymentMove::new(D::Staging, D::Staging, "corrupted", "test", 1)
    };
    assert!(h.st.store.transition_deployment(&id, &m).await.unwrap());
    let d = super::find(&h.st, &id).await.unwrap();
    assert!(matches!(super::Rules::of(&d), Err(AppError::Corrupt(_))));
    stage_all(&h, &id).await;
    assert_eq!(state(&h, &id).await.0, D::Staging, "the scheduler does not advance it");
    assert!(instrs(&h, &id).await.iter().all(|i| i.state == S::Staged));
}

/// The router in process: routes are adapters that map the application's
/// errors to statuses and its answers to JSON.
#[tokio::test]
async fn the_router_maps_application_answers_and_refusals() {
    use tower::ServiceExt;
    let h = harness(&FLEET[..2]).await;
    env(&h, &Policy { approvals: 1, ..Policy::default() }).await;
    for (name, role) in [("dana", "deployer"), ("dave", "deployer")] {
        let u =
            convoy_store::UserRecord { name: name.into(), role: role.into(), created_by: "root".into(), created_at: 1 };
        let t = convoy_store::TokenRecord {
            hash: convoy_store::hash_token(&format!("secret-{name}")),
            kind: convoy_store::TokenKind::User,
            subject: name.into(),
            created_at: 1,
            revoked_at: None,
            revoked_note: String::new(),
        };
        h.st.store.add_user(&u, &t).await.unwrap();
    }
    let app = crate::router(h.st.clone());
    let call = |method: &str, path: &str, who: &str, body: String| {
        axum::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", convoy_wire::API))
            .header("authorization", format!("Bearer secret-{who}"))
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body))
            .unwrap()
    };
    let read = |r: axum::response::Response| async move {
        let status = r.status().as_u16();
        let b = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice::<serde_json::Value>(&b).unwrap())
    };
    let body = serde_json::to_string(&request("role=web")).unwrap();
    let (status, d) = read(app.clone().oneshot(call("POST", "/deployments", "dana", body)).await.unwrap()).await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["state"], "awaiting_approval");
    let id = d["id"].as_str().unwrap();
    let (status, e) = read(
        app.clone().oneshot(call("POST", &format!("/deployments/{id}/cancel"), "dave", "{}".into())).await.unwrap(),
    )
    .await;
    assert_eq!((status, e["error"]["code"].as_str()), (403, Some("forbidden")), "{e}");
    let (status, e) = read(
        app.clone().oneshot(call("POST", &format!("/deployments/{id}/rollback"), "dave", "{}".into())).await.unwrap(),
    )
    .await;
    assert_eq!(status, 403, "rollback of a request is its cancel, with the same rule: {e}");
    let (status, e) = read(
        app.clone().oneshot(call("POST", &format!("/deployments/{id}/rollback"), "dana", "{}".into())).await.unwrap(),
    )
    .await;
    assert_eq!(status, 200, "a request is canceled by rollback: {e}");
    assert_eq!(e["state"], "canceled");
    let (status, e) =
        read(app.clone().oneshot(call("POST", "/deployments", "dana", "{\"app\": 7}".into())).await.unwrap()).await;
    assert_eq!((status, e["error"]["code"].as_str()), (400, Some("bad_request")), "{e}");
    let (status, _) = read(app.oneshot(call("GET", "/deployments/nosuch", "dana", String::new())).await.unwrap()).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn pausing_holds_back_a_planned_wave_and_cancel_before_go_live_is_canceled() {
    let h = harness(&FLEET[..2]).await;
    env(&h, &Policy::default()).await;
    let dana = user("dana", Role::Deployer);
    let mut req = request("role=web");
    req.at = Some(crate::state::now_ms() + 60_000);
    let id = requests::submit(&h.st, &dana, req).await.unwrap().id;
    pass_preflight(&h, &id).await;
    stage_all(&h, &id).await;
    assert_eq!(state(&h, &id).await.0, D::Scheduled);
    operations::pause(&h.st, &dana, &id, "hold").await.unwrap();
    let (st, note) = state(&h, &id).await;
    assert_eq!(st, D::Staging, "{note}");
    assert!(instrs(&h, &id).await.iter().all(|i| i.state == S::Staged), "held back");
    settle(&h).await;
    assert_eq!(state(&h, &id).await.0, D::Staging, "nothing goes live while paused");
    operations::resume(&h.st, &dana, &id, "go").await.unwrap();
    settle(&h).await;
    assert_eq!(state(&h, &id).await.0, D::Scheduled);
    // canceled before its go-live: nothing was live, so it reads canceled
    let dave = user("dave", Role::Deployer);
    assert!(matches!(requests::cancel(&h.st, &dave, &id, "").await, Err(AppError::Forbidden(_))));
    let d = requests::cancel(&h.st, &dana, &id, "wrong build").await.unwrap();
    assert_eq!(d.state, "canceled", "{}", d.note);
    assert!(instrs(&h, &id).await.iter().all(|i| i.state == S::Canceled));
}

/// `host` fails to stage, attempt after attempt, until it gives up.
async fn fail_staging(h: &H, id: &str, host: &str) {
    for _ in 0..10 {
        let i = instrs(h, id).await.into_iter().find(|i| i.target_id == format!("t-{host}")).unwrap();
        if i.state == S::Failed {
            return;
        }
        if matches!(i.state, S::Created | S::Sent) {
            report(h, &i, Phase::Stage, ReportKind::Received).await;
        }
        let i = h.st.store.get_instruction(&i.id).await.unwrap().unwrap();
        report(h, &i, Phase::Stage, ReportKind::Failed { message: "disk full".into() }).await;
    }
    panic!("{host} never gave up staging");
}

#[tokio::test]
async fn a_retry_of_some_targets_accepts_the_failures_not_retried() {
    let h = harness(&FLEET[..3]).await;
    let admin = user("root", Role::Admin);
    let mut req = request("role=web");
    req.env = None;
    let id = requests::submit(&h.st, &admin, req).await.unwrap().id;
    fail_staging(&h, &id, "a3").await;
    stage_all(&h, &id).await;
    let (st, note) = state(&h, &id).await;
    assert_eq!(st, D::Failed, "over the budget of 0 at the gate: {note}");
    // a1 and a2 (canceled) are retried; a3 stays failed, accepted
    let retry = convoy_wire::RetryRequest { targets: vec!["a1".into(), "a2".into()], note: "a3 is gone".into() };
    operations::retry(&h.st, &admin, &id, retry).await.unwrap();
    stage_all(&h, &id).await;
    switch(&h, &id, &[]).await;
    let (st, note) = state(&h, &id).await;
    assert_eq!(st, D::Succeeded, "{note}");
    let states = by_host(&instrs(&h, &id).await);
    assert_eq!((states["a1"], states["a2"], states["a3"]), (S::Succeeded, S::Succeeded, S::Failed));
}

fn note(n: &str) -> convoy_wire::Decision {
    convoy_wire::Decision { note: n.into(), ..Default::default() }
}

/// P-pull: a poll with nothing new is answered from memory (no call
/// reaches the database); new work, and a revoked credential, are seen at
/// the very next poll.
#[tokio::test]
async fn a_poll_with_no_work_touches_no_database_and_a_revoked_token_is_refused_at_once() {
    use tower::ServiceExt;
    let h = harness(&FLEET[..1]).await;
    env(&h, &Policy::default()).await;
    let token = |secret: &str, at: i64| convoy_store::TokenRecord {
        hash: convoy_store::hash_token(secret),
        kind: convoy_store::TokenKind::Agent,
        subject: "t-a1".into(),
        created_at: at,
        revoked_at: None,
        revoked_note: String::new(),
    };
    h.st.store.put_token(&token("agent-secret", 1)).await.unwrap();
    let app = crate::router(h.st.clone());
    let poll = |secret: &str| {
        let req = axum::http::Request::builder()
            .uri(format!("{}/agent/work?wait=0", convoy_wire::API))
            .header("authorization", format!("Bearer {secret}"))
            .body(axum::body::Body::empty())
            .unwrap();
        let app = app.clone();
        async move {
            let r = app.oneshot(req).await.unwrap();
            let status = r.status().as_u16();
            let b = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
            (status, serde_json::from_slice::<serde_json::Value>(&b).unwrap())
        }
    };
    let (status, w) = poll("agent-secret").await;
    assert_eq!((status, w["work"].as_array().map(Vec::len)), (200, Some(0)), "{w}");
    let before = h.st.cache.backend_calls();
    for _ in 0..5 {
        let (status, w) = poll("agent-secret").await;
        assert_eq!((status, w["work"].as_array().map(Vec::len)), (200, Some(0)), "{w}");
    }
    assert_eq!(h.st.cache.backend_calls(), before, "polls with no work reached the database");

    // work made for it is there at the next poll
    let dana = user("dana", Role::Deployer);
    let id = requests::submit(&h.st, &dana, request("role=web")).await.unwrap().id;
    settle(&h).await;
    let (status, w) = poll("agent-secret").await;
    assert_eq!(status, 200);
    let work = w["work"].as_array().unwrap();
    assert_eq!(work.len(), 1, "{w}");
    assert!(w.to_string().contains(&id), "{w}");

    // a rotated credential is refused at once, the new one works
    let ev = convoy_store::EventRecord::audit("user:admin", "rotate", String::new(), 2);
    h.st.store.rotate_token(&token("agent-secret-2", 2), "rotated", &ev).await.unwrap();
    let (status, e) = poll("agent-secret").await;
    assert_eq!(status, 401, "{e}");
    assert_eq!(poll("agent-secret-2").await.0, 200);
}

/// One target holds a few polls at most: past them a poll is answered at
/// once, so a client that opens held polls and hangs up cannot pile them
/// up on the server.
#[tokio::test]
async fn a_target_holds_a_few_polls_and_more_are_answered_at_once() {
    use tower::ServiceExt;
    let h = harness(&FLEET[..1]).await;
    h.st.store
        .put_token(&convoy_store::TokenRecord {
            hash: convoy_store::hash_token("agent-secret"),
            kind: convoy_store::TokenKind::Agent,
            subject: "t-a1".into(),
            created_at: 1,
            revoked_at: None,
            revoked_note: String::new(),
        })
        .await
        .unwrap();
    let app = crate::router(h.st.clone());
    let poll = || {
        let req = axum::http::Request::builder()
            .uri(format!("{}/agent/work?wait=30", convoy_wire::API))
            .header("authorization", "Bearer agent-secret")
            .body(axum::body::Body::empty())
            .unwrap();
        let app = app.clone();
        tokio::spawn(async move { app.oneshot(req).await.unwrap().status().as_u16() })
    };
    let held: Vec<_> = (0..4).map(|_| poll()).collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(held.iter().all(|p| !p.is_finished()), "four polls of one target are held");
    let extra = tokio::time::timeout(std::time::Duration::from_secs(5), poll()).await;
    assert_eq!(extra.expect("a fifth poll is answered at once").unwrap(), 200);
    assert!(held.iter().all(|p| !p.is_finished()), "the held ones still wait");
    for p in held {
        p.abort();
    }
}

#[tokio::test]
async fn pages_of_a_deployment_return_every_target_exactly_once_and_filter_by_state_wave_and_label() {
    let h = harness(&[]).await;
    let hosts: Vec<(String, String)> = (0..230)
        .map(|k| (format!("w{k:03}"), format!("role=web,site={}", if k % 3 == 0 { "sh" } else { "ber" })))
        .collect();
    for (host, labels) in &hosts {
        enrol(&h, host, labels).await;
    }
    enrol(&h, "db", "role=db").await; // outside the deployment
    let mut req = request("role=web");
    req.env = None;
    req.max_failures = 10;
    let id = requests::submit(&h.st, &user("root", Role::Admin), req).await.unwrap().id;
    // fail a few: they show under ?state=failed
    let all = instrs(&h, &id).await;
    assert_eq!(all.len(), 230);
    for host in ["w000", "w001", "w002", "w003", "w004"] {
        fail_staging(&h, &id, host).await;
    }
    let page = |q: convoy_wire::DetailQuery| {
        let st = h.st.clone();
        let id = id.clone();
        async move { operations::detail(&st, &id, &q).await }
    };
    let walk = |limit: u32, state: Option<&str>, label: Option<&str>| {
        let (state, label) = (state.map(str::to_owned), label.map(str::to_owned));
        async move {
            let (mut seen, mut after, mut pages) = (Vec::new(), None, 0);
            loop {
                let q = convoy_wire::DetailQuery {
                    limit: Some(limit),
                    after: after.take(),
                    state: state.clone(),
                    label: label.clone(),
                    ..Default::default()
                };
                let d = page(q).await.unwrap();
                assert!(d.instructions.len() <= limit as usize);
                assert_eq!(d.states.values().sum::<u32>(), 230, "the summary is the whole deployment's");
                seen.extend(
                    d.instructions.iter().map(|i| (i.target_id.clone(), i.state.clone(), i.labels.to_string())),
                );
                pages += 1;
                assert!(pages < 100, "paging ends");
                match d.next {
                    Some(n) => after = Some(n),
                    None => return (seen, d.matching),
                }
            }
        }
    };
    let (seen, matching) = walk(17, None, None).await;
    assert_eq!(matching, 230);
    let ids: std::collections::BTreeSet<&String> = seen.iter().map(|(t, _, _)| t).collect();
    assert_eq!((seen.len(), ids.len()), (230, 230), "every target exactly once");
    assert!(!ids.contains(&"t-db".to_owned()));
    // failed targets show under their state
    let (failed, matching) = walk(2, Some("failed"), None).await;
    assert_eq!((failed.len(), matching), (5, 5), "{failed:?}");
    assert!(failed.iter().all(|(_, s, _)| s == "failed"));
    let (sh, matching) = walk(50, None, Some("site=sh")).await;
    assert_eq!((sh.len(), matching), (77, 77));
    assert!(sh.iter().all(|(_, _, l)| l.contains("site=sh")), "{sh:?}");
    let (none, _) = walk(10, Some("failed"), Some("site=nowhere")).await;
    assert!(none.is_empty());
    // the summary counts per wave; bad queries are refused, nothing changes
    let d = page(Default::default()).await.unwrap();
    assert_eq!(d.waves.len(), 1);
    assert_eq!((d.waves[0].total, d.waves[0].states.get("failed")), (230, Some(&5)));
    assert_eq!(d.instructions.len(), 230, "the first page holds {} by default", convoy_wire::DETAIL_LIMIT);
    for bad in [
        convoy_wire::DetailQuery { state: Some("broken".into()), ..Default::default() },
        convoy_wire::DetailQuery { limit: Some(0), ..Default::default() },
        convoy_wire::DetailQuery { limit: Some(convoy_wire::DETAIL_MAX_LIMIT + 1), ..Default::default() },
        convoy_wire::DetailQuery { label: Some("=,=".into()), ..Default::default() },
    ] {
        let e = page(bad.clone()).await.unwrap_err();
        assert!(matches!(e, AppError::Invalid(_)), "{bad:?}: {e}");
    }
}

/// The report writer judges a report from what it last wrote of the
/// instruction (no read); when another writer moved the instruction since,
/// the report is judged again from the database, both ways: a report that
/// memory would accept is refused, and one memory would refuse is accepted.
#[tokio::test]
async fn the_report_writer_judges_again_from_the_database_when_its_memory_is_behind() {
    let h = harness(&FLEET[..1]).await;
    let admin = user("root", Role::Admin);
    let mut req = request("role=web");
    req.env = None;
    let id = requests::submit(&h.st, &admin, req).await.unwrap().id;
    settle(&h).await;
    let i = instrs(&h, &id).await.remove(0);
    let say = |attempt: u32, kind: ReportKind| {
        let r = Report {
            instruction_id: i.id.clone(),
            phase: Phase::Stage,
            attempt,
            report: kind,
            metrics: Default::default(),
            output: String::new(),
            inventory: None,
        };
        reports::submit(&h.st, i.target_id.clone(), r)
    };
    let now = |h: &H| {
        let id = i.id.clone();
        let store = h.st.store.clone();
        async move { store.get_instruction(&id).await.unwrap().unwrap() }
    };
    assert!(say(i.attempt, ReportKind::Received).await.unwrap().accepted);
    assert_eq!(now(&h).await.state, S::Received);
    // moved elsewhere: back to sent (the writer remembers it received)
    let up =
        convoy_store::InstructionUpdate { to: Some(S::Sent), note: "moved elsewhere".into(), ..Default::default() };
    assert!(h.st.store.transition_instruction(&i.id, S::Received, i.attempt, &up, "test", 2).await.unwrap());
    // memory says "already received"; the database says it is due
    assert!(say(i.attempt, ReportKind::Received).await.unwrap().accepted, "judged again from the database");
    assert_eq!(now(&h).await.state, S::Received);
    // moved elsewhere: a new attempt (the writer remembers the old one)
    let up = convoy_store::InstructionUpdate {
        to: Some(S::Created),
        attempt: Some(i.attempt + 1),
        note: "retried elsewhere".into(),
        ..Default::default()
    };
    assert!(h.st.store.transition_instruction(&i.id, S::Received, i.attempt, &up, "test", 3).await.unwrap());
    // memory would accept this staged report of the old attempt; it is stale
    let r = say(i.attempt, ReportKind::Staged { digest: DIGEST.into() }).await.unwrap();
    assert!(!r.accepted, "a report of the old attempt is stale: {}", r.note);
    let after = now(&h).await;
    assert_eq!((after.state, after.attempt), (S::Created, i.attempt + 1));
    // the new attempt goes on
    assert!(say(i.attempt + 1, ReportKind::Received).await.unwrap().accepted);
    assert!(say(i.attempt + 1, ReportKind::Staged { digest: DIGEST.into() }).await.unwrap().accepted);
    assert_eq!(now(&h).await.state, S::Staged);
    // a report for another target's instruction is refused, from memory too
    let r = Report {
        instruction_id: i.id.clone(),
        phase: Phase::Stage,
        attempt: i.attempt + 1,
        report: ReportKind::Received,
        metrics: Default::default(),
        output: String::new(),
        inventory: None,
    };
    assert!(reports::submit(&h.st, "t-someone-else".into(), r).await.is_err());
}

/// P-pull for devices speaking hawkBit DDI: a poll with nothing new, and
/// one whose action is unchanged, reach no database; a replaced
/// TargetToken is refused at the next poll.
#[tokio::test]
async fn a_ddi_poll_with_nothing_new_touches_no_database() {
    use tower::ServiceExt;
    let h = harness(&[]).await;
    let inv = Inventory { kind: convoy_wire::TargetKind::Ddi, ..Default::default() };
    let t = TargetRecord {
        id: crate::ddi::target_id("z1"),
        hostname: "z1".into(),
        labels_json: r#"{"role":"web"}"#.into(),
        inventory_json: serde_json::to_string(&inv).unwrap(),
        enrolled_at: 1,
        last_seen: 1,
        warning: String::new(),
    };
    h.st.store.insert_target(&t).await.unwrap();
    let tok = convoy_store::TokenRecord::new("ddi-secret", convoy_store::TokenKind::Ddi, &t.id, 1);
    h.st.store.put_token(&tok).await.unwrap();
    let app = crate::router(h.st.clone());
    let poll = || {
        let req = axum::http::Request::builder()
            .uri("/DEFAULT/controller/v1/z1")
            .header("authorization", "TargetToken ddi-secret")
            .body(axum::body::Body::empty())
            .unwrap();
        let app = app.clone();
        async move {
            let r = app.oneshot(req).await.unwrap();
            let status = r.status().as_u16();
            let b = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
            (status, serde_json::from_slice::<serde_json::Value>(&b).unwrap())
        }
    };
    let (status, b) = poll().await;
    assert_eq!(status, 200, "{b}");
    assert!(b["_links"].get("deploymentBase").is_none(), "{b}");
    let before = h.st.cache.backend_calls();
    for _ in 0..5 {
        assert_eq!(poll().await.0, 200);
    }
    assert_eq!(h.st.cache.backend_calls(), before, "DDI polls with nothing new reached the database");

    // an action for it shows at the next poll; polls after that read nothing
    let admin = user("root", Role::Admin);
    let req = DeployRequest { env: None, ..request("role=web") };
    requests::submit(&h.st, &admin, req).await.unwrap();
    settle(&h).await;
    let (_, b) = poll().await;
    assert!(b["_links"]["deploymentBase"]["href"].as_str().unwrap().contains("/deploymentBase/"), "{b}");
    let before = h.st.cache.backend_calls();
    for _ in 0..5 {
        let (_, again) = poll().await;
        assert_eq!(again["_links"]["deploymentBase"], b["_links"]["deploymentBase"]);
    }
    assert_eq!(h.st.cache.backend_calls(), before, "DDI polls of an unchanged action reached the database");

    // a rotated TargetToken: the old one is refused at once
    let ev = convoy_store::EventRecord::audit("user:root", "rotate", String::new(), 2);
    let fresh = convoy_store::TokenRecord::new("ddi-secret-2", convoy_store::TokenKind::Ddi, &t.id, 2);
    h.st.store.rotate_token(&fresh, "rotated", &ev).await.unwrap();
    assert_eq!(poll().await.0, 401);
}

/// Reported metrics add up across reports: a later report's keys join the
/// stored ones (text with quotes and backslashes included), and a report
/// without metrics leaves them as they are.
#[tokio::test]
async fn reported_metrics_are_merged_and_kept() {
    let h = harness(&[("m1", "role=web")]).await;
    env(&h, &Policy::default()).await;
    let dana = user("dana", Role::Deployer);
    let id = requests::submit(&h.st, &dana, request("role=web")).await.unwrap().id;
    pass_preflight(&h, &id).await;
    let i = instrs(&h, &id).await.remove(0);
    let with = |i: &InstructionRecord, kind: ReportKind, metrics: &[(&str, &str)]| Report {
        instruction_id: i.id.clone(),
        phase: Phase::Stage,
        attempt: i.attempt,
        report: kind,
        metrics: metrics.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        output: String::new(),
        inventory: None,
    };
    let odd = r#"a "quoted" \ path"#;
    let r = with(&i, ReportKind::Received, &[("source_note", odd)]);
    assert!(reports::submit(&h.st, i.target_id.clone(), r).await.unwrap().accepted);
    let i = h.st.store.get_instruction(&i.id).await.unwrap().unwrap();
    let r = with(&i, ReportKind::Staged { digest: DIGEST.into() }, &[("bytes_fetched", "42")]);
    assert!(reports::submit(&h.st, i.target_id.clone(), r).await.unwrap().accepted);
    let stored = |i: InstructionRecord| serde_json::from_str::<BTreeMap<String, String>>(&i.metrics_json).unwrap();
    let i = h.st.store.get_instruction(&i.id).await.unwrap().unwrap();
    let want =
        BTreeMap::from([("bytes_fetched".to_owned(), "42".to_owned()), ("source_note".to_owned(), odd.to_owned())]);
    assert_eq!(stored(i.clone()), want);
    // a repeated report without metrics changes nothing stored
    let r = with(&i, ReportKind::Staged { digest: DIGEST.into() }, &[]);
    reports::submit(&h.st, i.target_id.clone(), r).await.unwrap();
    assert_eq!(stored(h.st.store.get_instruction(&i.id).await.unwrap().unwrap()), want);
}
