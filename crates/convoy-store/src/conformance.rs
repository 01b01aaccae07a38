//! The conformance suite every backend runs (`cargo test` in each backend
//! crate). Written once against the trait, so backends cannot drift.

use convoy_domain::{DeploymentState as D, InstructionState as S};

use crate::*;

fn check<T: std::fmt::Debug + PartialEq>(what: &str, got: T, want: T) {
    assert_eq!(got, want, "{what}");
}

/// Runs every check against a fresh, empty store.
pub async fn run(store: &dyn Store) {
    tokens(store).await;
    targets(store).await;
    releases(store).await;
    deployments(store).await;
    workflow(store).await;
    trust(store).await;
    tuf(store).await;
    moves_as_sets(store).await;
    big_deployments(store).await;
}

/// A deployment of more instructions than one statement carries is
/// written, moved in bulk and counted whole; its events come per page.
async fn big_deployments(s: &dyn Store) {
    const N: usize = 1_234;
    let d = staging("d-big", 1);
    let instrs: Vec<InstructionRecord> = (0..N)
        .map(|k| InstructionRecord {
            deployment_id: d.id.clone(),
            wave: 1 + (k % 2) as u32,
            ..instruction(&format!("big-{k:05}"), &format!("t-big-{k:05}"), S::Created)
        })
        .collect();
    s.create_deployment(&d, &instrs, "admin").await.unwrap();
    let got = s.list_instructions(&d.id).await.unwrap();
    assert_eq!(got.len(), N);
    assert_eq!(got[N - 1], instrs[N - 1], "every field of the last row");
    assert_eq!(s.events(&d.id).await.unwrap().len(), N + 1, "one creation event each, and the deployment's");
    // wave 2 moves on, wave 1 stays
    let bulk = [BulkMove {
        from: vec![S::Created],
        to: S::Canceled,
        go_live_at: Some(9),
        note: "canceled".into(),
        waves: WaveFilter::Only(2),
    }];
    let m = DeploymentMove { bulk: &bulk, ..DeploymentMove::new(D::Staging, D::Staging, "wave 2 out", "admin", 5) };
    assert!(s.transition_deployment(&d.id, &m).await.unwrap());
    let mut counts = s.instruction_counts(&[d.id.clone(), "d-none".into()]).await.unwrap();
    counts.sort_by_key(|c| c.1);
    assert_eq!(counts, [(d.id.clone(), 1, S::Created, 617), (d.id.clone(), 2, S::Canceled, 617)]);
    let moved = s.get_instruction("big-00001").await.unwrap().unwrap();
    assert_eq!(
        (moved.state, moved.go_live_at, moved.note.as_str(), moved.updated_at),
        (S::Canceled, Some(9), "canceled", 5)
    );
    let events = s.events(&d.id).await.unwrap();
    assert_eq!(events.len(), N + 2 + 617);
    // events of a page: the deployment's own and those of the named instructions
    let page = s.events_of(&d.id, &["big-00001".into(), "big-00002".into()]).await.unwrap();
    let subjects: Vec<Option<&str>> = page.iter().map(|e| e.instruction_id.as_deref()).collect();
    assert_eq!(subjects, [None, Some("big-00001"), Some("big-00002"), None, Some("big-00001")]);
    assert!(page.windows(2).all(|w| w[0].seq < w[1].seq), "in order");
    // pages of instructions: every one exactly once, in id order, filtered
    let pages = |states: Vec<S>, wave: Option<u32>, limit: u32| {
        let id = d.id.clone();
        async move {
            let (mut all, mut after) = (Vec::new(), String::new());
            loop {
                let page = s.instructions_page(&id, &states, wave, &after, limit).await.unwrap();
                assert!(page.len() <= limit as usize);
                let Some(last) = page.last() else { break };
                after = last.id.clone();
                all.extend(page.into_iter().map(|i| i.id));
            }
            all
        }
    };
    let every: Vec<String> = got.iter().map(|i| i.id.clone()).collect();
    assert_eq!(pages(Vec::new(), None, 100).await, every, "every instruction once, in order");
    assert_eq!(pages(Vec::new(), None, 5_000).await, every, "in one page");
    let canceled: Vec<String> = got.iter().filter(|i| i.wave == 2).map(|i| i.id.clone()).collect();
    assert_eq!(pages(vec![S::Canceled], None, 77).await, canceled, "by state");
    assert_eq!(pages(vec![S::Failed, S::Canceled], Some(2), 77).await, canceled, "by states and wave");
    assert!(pages(vec![S::Canceled], Some(1), 77).await.is_empty(), "no match");
    assert!(s.instructions_page("d-none", &[], None, "", 10).await.unwrap().is_empty());
    let after = s.instructions_page(&d.id, &[], None, "big-01232", 10).await.unwrap();
    assert_eq!(after.len(), 1, "after the next to last");
    assert_eq!(after[0], s.get_instruction("big-01233").await.unwrap().unwrap(), "whole rows");
    assert_eq!(s.previous_versions(&d.id).await.unwrap(), ["0.9"], "each version once");
    assert!(s.previous_versions("d-none").await.unwrap().is_empty());
}

/// A batch of report moves (several for one instruction, stale ones, in
/// any order) leaves the same states and events as the moves one by one.
async fn moves_as_sets(s: &dyn Store) {
    let mv = |id: &str, from: S, attempt: u32, to: S, note: &str| InstructionMove {
        id: id.into(),
        from,
        from_attempt: attempt,
        up: InstructionUpdate {
            to: Some(to),
            attempt: Some(if to == S::Created { attempt + 1 } else { attempt }),
            reported_digest: (to == S::Staged).then(|| "dd".to_owned()),
            metrics_json: Some(format!("{{\"n\":\"{note}\"}}")),
            note: note.into(),
            ..Default::default()
        },
        // each move's own actor, so that a mix-up between rows shows
        actor: format!("agent:{}", &id[id.len() - 1..]),
    };
    let plan = |p: &str| {
        vec![
            mv(&format!("{p}-a"), S::Created, 0, S::Sent, "sent"),
            mv(&format!("{p}-b"), S::Created, 0, S::Sent, "sent"),
            mv(&format!("{p}-a"), S::Sent, 0, S::Received, "received"),
            mv(&format!("{p}-c"), S::Sent, 0, S::Received, "stale: c is created"),
            mv(&format!("{p}-a"), S::Received, 0, S::Staged, "staged"),
            mv(&format!("{p}-b"), S::Sent, 0, S::Failed, "failed"),
            mv(&format!("{p}-b"), S::Failed, 0, S::Created, "retry"),
            mv(&format!("{p}-a"), S::Received, 0, S::Failed, "stale: a is staged"),
        ]
    };
    let mut got = Vec::new();
    for (p, one_by_one) in [("set", false), ("one", true)] {
        let d = staging(&format!("d-{p}"), 1);
        let instrs: Vec<InstructionRecord> = ["a", "b", "c"]
            .iter()
            .map(|x| InstructionRecord {
                deployment_id: d.id.clone(),
                ..instruction(&format!("{p}-{x}"), &format!("t-{p}-{x}"), S::Created)
            })
            .collect();
        deploy_to_targets(s, &d, &instrs).await;
        let moves = plan(p);
        let moved = if one_by_one {
            let mut out = Vec::new();
            for m in &moves {
                out.extend(s.transition_instructions(std::slice::from_ref(m), 300).await.unwrap());
            }
            out
        } else {
            s.transition_instructions(&moves, 300).await.unwrap()
        };
        let states: Vec<(S, u32, Option<String>, String, String)> = s
            .list_instructions(&d.id)
            .await
            .unwrap()
            .into_iter()
            .map(|i| (i.state, i.attempt, i.reported_digest, i.metrics_json, i.note))
            .collect();
        let events: Vec<(Option<String>, String, String, String, String)> = s
            .events(&d.id)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| !e.from_state.is_empty())
            .map(|e| (e.instruction_id.map(|i| i[p.len()..].to_owned()), e.from_state, e.to_state, e.note, e.actor))
            .collect();
        // each instruction's events in the same order (across instructions
        // a set writes them round by round)
        let mut events = events;
        events.sort_by(|x, y| x.0.cmp(&y.0));
        let ids: Vec<String> = ["a", "b", "c", "nosuch"].iter().map(|x| format!("{p}-{x}")).collect();
        check("read as a set", s.get_instructions(&ids).await.unwrap().len(), 3);
        got.push((moved, states, events));
    }
    check("moved", &got[0].0, &vec![true, true, true, false, true, true, true, false]);
    check("a set moves as one by one", &got[0], &got[1]);

    // a batch of one move per instruction: its events in the batch's order
    let d = staging("d-order", 1);
    let instrs: Vec<InstructionRecord> = ["x", "y", "z"]
        .iter()
        .map(|x| InstructionRecord {
            deployment_id: d.id.clone(),
            ..instruction(&format!("o-{x}"), &format!("t-o-{x}"), S::Created)
        })
        .collect();
    s.create_deployment(&d, &instrs, "admin").await.unwrap();
    let moves: Vec<InstructionMove> = ["o-z", "o-x", "o-nosuch", "o-y"]
        .iter()
        .map(|id| mv(id, S::Created, 0, S::Sent, &format!("sent {id}")))
        .collect();
    check("one round moved", s.transition_instructions(&moves, 310).await.unwrap(), vec![true, true, false, true]);
    let events: Vec<(String, String, String)> = s
        .events(&d.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| !e.from_state.is_empty())
        .map(|e| (e.instruction_id.unwrap_or_default(), e.note, e.actor))
        .collect();
    let want: Vec<(String, String, String)> = ["o-z", "o-x", "o-y"]
        .iter()
        .map(|id| (id.to_string(), format!("sent {id}"), format!("agent:{}", &id[id.len() - 1..])))
        .collect();
    check("one round's events, in order", events, want);

    // more rows than one statement holds (SQLite writes moves and events
    // in chunks of 1,000, new instructions in chunks of 500), and one
    // round of 1,000 and of 100 (SQLite sends those as one command, padded
    // to 1,024 and 128 rows): every move made but the stale one, every
    // event in order
    for (n, p) in [(1_201, "m"), (1_000, "k"), (100, "h")] {
        let d = staging(&format!("d-many-{p}"), 1);
        let instrs: Vec<InstructionRecord> = (0..n)
            .map(|k| InstructionRecord {
                deployment_id: d.id.clone(),
                ..instruction(&format!("{p}-{k:04}"), &format!("t-{p}-{k:04}"), S::Created)
            })
            .collect();
        s.create_deployment(&d, &instrs, "admin").await.unwrap();
        // the first instruction's move is stale (it is created, not received)
        let moves: Vec<InstructionMove> = instrs
            .iter()
            .rev()
            .map(|i| {
                let from = if i.id == instrs[0].id { S::Received } else { S::Created };
                mv(&i.id, from, 0, S::Sent, &format!("sent {}", i.id))
            })
            .collect();
        let mut want = vec![true; n];
        want[n - 1] = false;
        check("many moved", s.transition_instructions(&moves, 320).await.unwrap(), want);
        let (created, sent): (Vec<_>, Vec<_>) = s
            .events(&d.id)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.instruction_id.is_some())
            .partition(|e| e.from_state.is_empty());
        let ids =
            |evs: Vec<EventRecord>| evs.into_iter().map(|e| e.instruction_id.unwrap_or_default()).collect::<Vec<_>>();
        check("many created, in order", ids(created), instrs.iter().map(|i| i.id.clone()).collect::<Vec<_>>());
        check("many sent, in order", ids(sent), moves[..n - 1].iter().map(|m| m.id.clone()).collect::<Vec<_>>());
        let last = s.get_instruction(&moves[0].id).await.unwrap().unwrap();
        check("a moved row", (last.state, last.note), (S::Sent, format!("sent {}", moves[0].id)));
        check("the stale row", s.get_instruction(&instrs[0].id).await.unwrap().unwrap().state, S::Created);
    }
}

/// TUF metadata: versions written once, the newest or a given one read.
async fn tuf(s: &dyn Store) {
    assert_eq!(s.get_tuf("timestamp", None).await.unwrap(), None);
    assert!(s.put_tuf("timestamp", 1, b"one", 1).await.unwrap());
    assert!(s.put_tuf("timestamp", 2, b"two", 2).await.unwrap());
    assert!(!s.put_tuf("timestamp", 2, b"other", 3).await.unwrap(), "a version is written once");
    assert_eq!(s.get_tuf("timestamp", None).await.unwrap(), Some((2, b"two".to_vec())));
    assert_eq!(s.get_tuf("timestamp", Some(1)).await.unwrap(), Some((1, b"one".to_vec())));
    assert_eq!(s.get_tuf("snapshot", Some(1)).await.unwrap(), None);
}

/// Token rotation, enrolment tokens, enrolment, relay grants, server keys.
async fn trust(s: &dyn Store) {
    let ev = |what: &str| EventRecord::audit("user:admin", what, String::new(), 50);
    // rotation revokes every other live token of the subject, and says why
    let old = TokenRecord::new("bob-1", TokenKind::User, "bob", 40);
    s.put_token(&old).await.unwrap();
    let new = TokenRecord::new("bob-2", TokenKind::User, "bob", 50);
    check("rotated", s.rotate_token(&new, "rotated by admin", &ev("token_rotated")).await.unwrap(), 1);
    let got = s.find_token(&old.hash).await.unwrap().unwrap();
    check("old revoked at", got.revoked_at, Some(50));
    check("old revoked why", got.revoked_note.as_str(), "rotated by admin");
    check("new live", s.find_token(&new.hash).await.unwrap().unwrap().revoked_at, None);

    // enrolment tokens: uses are counted atomically; a used-up token enrols nobody
    let e = EnrolTokenRecord {
        id: "e-1".into(),
        labels_json: Some(r#"{"site":"sh"}"#.into()),
        expires_at: Some(1_000),
        max_uses: Some(1),
        uses: 0,
        created_by: "admin".into(),
        created_at: 50,
        revoked_at: None,
    };
    s.create_enrol_token(&e, &TokenRecord::new("enrol-1", TokenKind::Enrol, "e-1", 50), &ev("enrol_token_created"))
        .await
        .unwrap();
    check("enrol token", s.get_enrol_token("e-1").await.unwrap(), Some(e.clone()));
    let target = |id: &str| TargetRecord {
        id: id.into(),
        hostname: id.into(),
        labels_json: r#"{"site":"sh"}"#.into(),
        inventory_json: "{}".into(),
        enrolled_at: 60,
        last_seen: 60,
        warning: String::new(),
    };
    let agent_tok = |id: &str| TokenRecord::new(&format!("{id}-secret"), TokenKind::Agent, id, 60);
    s.enrol_target(&target("t-e1"), &agent_tok("t-e1"), Some("e-1"), &ev("enrolled")).await.unwrap();
    check("use counted", s.get_enrol_token("e-1").await.unwrap().unwrap().uses, 1);
    let r = s.enrol_target(&target("t-e2"), &agent_tok("t-e2"), Some("e-1"), &ev("enrolled")).await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "used up: {r:?}");
    check("nothing written for the refused", s.get_target("t-e2").await.unwrap(), None);
    check("no credential for the refused", s.find_token(&agent_tok("t-e2").hash).await.unwrap(), None);
    check("unusable says why", s.get_enrol_token("e-1").await.unwrap().unwrap().unusable(60).is_some(), true);
    check("revoke", s.revoke_enrol_token("e-1", &ev("enrol_token_revoked")).await.unwrap(), true);
    check("revoke twice", s.revoke_enrol_token("e-1", &ev("enrol_token_revoked")).await.unwrap(), false);
    check(
        "secret revoked with it",
        s.find_token(&hash_token("enrol-1")).await.unwrap().unwrap().revoked_at.is_some(),
        true,
    );
    check("enrol tokens", s.list_enrol_tokens().await.unwrap().len(), 1);

    // pauses: only an unsettled deployment, once; resumed once
    let d = staging("d-pause", 90);
    s.create_deployment(&d, &[], "admin").await.unwrap();
    let pe = |what: &str| EventRecord { deployment_id: "d-pause".into(), ..ev(what) };
    check("pause", s.pause("d-pause", "alice", &pe("paused")).await.unwrap(), true);
    check("pause twice", s.pause("d-pause", "alice", &pe("paused")).await.unwrap(), false);
    check("paused by", s.paused_by("d-pause").await.unwrap(), Some("alice".to_owned()));
    check("pause unknown", s.pause("d-none", "alice", &ev("paused")).await.unwrap(), false);
    check("resume", s.resume("d-pause", &pe("resumed")).await.unwrap(), true);
    check("resume twice", s.resume("d-pause", &pe("resumed")).await.unwrap(), false);
    check("running", s.paused_by("d-pause").await.unwrap(), None);

    // relays exist by grant only
    let r = RelayRecord {
        target_id: "t-e1".into(),
        site: "sh".into(),
        url: Some("http://10.0.0.5:7421".into()),
        granted_by: "admin".into(),
        granted_at: 70,
    };
    s.grant_relay(&r, &ev("relay_granted")).await.unwrap();
    s.grant_relay(&RelayRecord { site: "bj".into(), ..r.clone() }, &ev("relay_granted")).await.unwrap();
    check("re-grant replaces", s.list_relays().await.unwrap(), vec![RelayRecord { site: "bj".into(), ..r.clone() }]);
    check("revoke relay", s.revoke_relay("t-e1", &ev("relay_revoked")).await.unwrap(), true);
    check("revoke relay twice", s.revoke_relay("t-e1", &ev("relay_revoked")).await.unwrap(), false);
    check("no relays", s.list_relays().await.unwrap().len(), 0);

    // the first key stored wins, for every server on the database
    let k = s.server_key("work", ("p1".into(), "s1".into()), 80).await.unwrap();
    check("key made", k.clone(), ("p1".into(), "s1".into()));
    check("key kept", s.server_key("work", ("p2".into(), "s2".into()), 81).await.unwrap(), k);
}

async fn tokens(s: &dyn Store) {
    let t = TokenRecord::new("secret", TokenKind::Admin, "admin", 1);
    s.put_token(&t).await.unwrap();
    s.put_token(&t).await.unwrap();
    check("token found", s.find_token(&t.hash).await.unwrap(), Some(t.clone()));
    check("unknown token", s.find_token(&hash_token("nope")).await.unwrap(), None);
    check("count admin", s.count_tokens(TokenKind::Admin).await.unwrap(), 1);
    check("count agent", s.count_tokens(TokenKind::Agent).await.unwrap(), 0);
    assert_ne!(t.hash, "secret", "tokens are stored hashed");
}

async fn targets(s: &dyn Store) {
    let t = TargetRecord {
        id: "t-1".into(),
        hostname: "web1".into(),
        labels_json: r#"{"site":"sh"}"#.into(),
        inventory_json: "{}".into(),
        enrolled_at: 10,
        last_seen: 10,
        warning: String::new(),
    };
    s.insert_target(&t).await.unwrap();
    assert!(s.insert_target(&t).await.is_err(), "duplicate target id refused");
    s.update_target("t-1", "web1b", r#"{"x":1}"#, 20).await.unwrap();
    s.touch_targets(&[("t-1".into(), 30), ("t-unknown".into(), 31)]).await.unwrap();
    s.touch_targets(&[("t-1".into(), 25)]).await.unwrap(); // never goes back in time
    let got = s.get_target("t-1").await.unwrap().unwrap();
    check("updated hostname", got.hostname.as_str(), "web1b");
    check("reports never change labels", got.labels_json.as_str(), r#"{"site":"sh"}"#);
    let ev = EventRecord::audit("user:admin", "target_labelled", "t-1: site=bj".into(), 21);
    check("operator relabels", s.set_target_labels("t-1", r#"{"site":"bj"}"#, &ev).await.unwrap(), true);
    check("relabel unknown", s.set_target_labels("t-x", "{}", &ev).await.unwrap(), false);
    s.set_target_warning("t-1", "asked for site=zz").await.unwrap();
    let got = s.get_target("t-1").await.unwrap().unwrap();
    check("labels", got.labels_json.as_str(), r#"{"site":"bj"}"#);
    check("warning", got.warning.as_str(), "asked for site=zz");
    let f = AuditFilter { actor: Some("user:admin".into()), limit: 10, ..Default::default() };
    check("relabel audited", s.audit(&f).await.unwrap().iter().any(|e| e.to_state == "target_labelled"), true);
    check("last seen", got.last_seen, 30);
    check("enrolled_at kept", got.enrolled_at, 10);
    check("list", s.list_targets().await.unwrap().len(), 1);
    check("missing target", s.get_target("t-x").await.unwrap(), None);
    labels_having(s).await;
}

/// The narrowed read keeps every target a selector's terms match (`_` and
/// `%` are not wildcards), and the caller's exact match does the rest.
async fn labels_having(s: &dyn Store) {
    for (id, labels) in [
        ("t-h1", r#"{"group":"held","site":"a_b"}"#),
        ("t-h2", r#"{"group":"held","site":"axb"}"#),
        ("t-h3", r#"{"group":"idle","site":"a_b"}"#),
        ("t-h4", r#"{"group":"heldx","x":"group"}"#),
    ] {
        let t = TargetRecord {
            id: id.into(),
            hostname: id.into(),
            labels_json: labels.into(),
            inventory_json: "{}".into(),
            enrolled_at: 1,
            last_seen: 1,
            warning: String::new(),
        };
        s.insert_target(&t).await.unwrap();
    }
    let ids = |rows: Vec<TargetRecord>| -> Vec<String> {
        rows.into_iter().filter(|t| t.id.starts_with("t-h")).map(|t| t.id).collect()
    };
    let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    check(
        "group=held",
        ids(s.list_targets_having(&[pair("group", "held")]).await.unwrap()),
        vec!["t-h1".to_owned(), "t-h2".to_owned()],
    );
    check(
        "group=held,site=a_b",
        ids(s.list_targets_having(&[pair("group", "held"), pair("site", "a_b")]).await.unwrap()),
        vec!["t-h1".to_owned()],
    );
    check("no terms: all", ids(s.list_targets_having(&[]).await.unwrap()).len(), 4);
    check("no match", ids(s.list_targets_having(&[pair("site", "a%")]).await.unwrap()).len(), 0);
    for id in ["t-h1", "t-h2", "t-h3", "t-h4"] {
        s.remove_target(id).await.unwrap();
    }
}

async fn releases(s: &dyn Store) {
    let r = ReleaseRecord {
        app: "web".into(),
        version: "1".into(),
        digest: "aa".into(),
        manifest: b"{\"m\":1}".to_vec(),
        files: 2,
        total_size: 3_000_000_000,
        chunks: 4,
        created_at: 5,
        provenance_json: r#"{"commit":"0a1b"}"#.into(),
    };
    check("insert new", s.insert_release(&r).await.unwrap(), true);
    check("same content again", s.insert_release(&r).await.unwrap(), false);
    let other = ReleaseRecord { digest: "bb".into(), ..r.clone() };
    assert!(
        matches!(s.insert_release(&other).await, Err(StoreError::Conflict(_))),
        "other content under same version refused"
    );
    check("stored unchanged", s.get_release("web", "1").await.unwrap(), Some(r.clone()));
    let listed = s.list_releases().await.unwrap();
    check("listing omits manifest", listed[0].manifest.len(), 0);
    check("large sizes survive", listed[0].total_size, 3_000_000_000);
    check("unknown release", s.get_release("web", "9").await.unwrap(), None);
}

/// A staging deployment of web@1 with no plan, created at `at`.
fn staging(id: &str, at: i64) -> DeploymentRecord {
    DeploymentRecord {
        id: id.into(),
        app: "web".into(),
        version: "1".into(),
        digest: "aa".into(),
        selector: String::new(),
        state: D::Staging,
        go_live_at: None,
        max_failures: 0,
        stage_deadline: None,
        activate_timeout_ms: 1,
        created_by: "admin".into(),
        created_at: at,
        updated_at: at,
        note: String::new(),
        env: None,
        reason: String::new(),
        policy_json: String::new(),
        plan_json: String::new(),
        wave: 0,
        revision: 0,
        expires_at: None,
        targets: String::new(),
        plan_name: String::new(),
        plan_entry: String::new(),
        plan_digest: String::new(),
    }
}

fn instruction(id: &str, target: &str, state: S) -> InstructionRecord {
    InstructionRecord {
        id: id.into(),
        deployment_id: "d-1".into(),
        target_id: target.into(),
        state,
        attempt: 0,
        previous_version: Some("0.9".into()),
        go_live_at: None,
        reported_digest: None,
        metrics_json: "{}".into(),
        output: String::new(),
        note: "planned".into(),
        updated_at: 100,
        wave: 1,
        planned_at: None,
    }
}

async fn deployments(s: &dyn Store) {
    let d = DeploymentRecord {
        id: "d-1".into(),
        app: "web".into(),
        version: "1".into(),
        digest: "aa".into(),
        selector: "site=sh".into(),
        state: D::Staging,
        go_live_at: Some(5000),
        max_failures: 1,
        stage_deadline: Some(9_000_000_000_000),
        activate_timeout_ms: 600_000,
        created_by: "admin".into(),
        created_at: 100,
        updated_at: 100,
        note: "created".into(),
        env: None,
        reason: String::new(),
        policy_json: String::new(),
        plan_json: String::new(),
        wave: 0,
        revision: 0,
        expires_at: None,
        targets: String::new(),
        plan_name: String::new(),
        plan_entry: String::new(),
        plan_digest: String::new(),
    };
    let instrs = [instruction("i-1", "t-1", S::Created), instruction("i-2", "t-2", S::Created)];
    s.create_deployment(&d, &instrs, "admin").await.unwrap();
    check("get", s.get_deployment("d-1").await.unwrap(), Some(d.clone()));
    check("active", s.active_deployments().await.unwrap().len(), 1);
    check("list", s.list_deployments(10).await.unwrap().len(), 1);
    check("instructions", s.list_instructions("d-1").await.unwrap(), instrs.to_vec());
    check("pending for t-1", s.pending_instructions("t-1").await.unwrap().len(), 1);
    check("history of t-1", s.target_instructions("t-1", 10).await.unwrap(), vec![instrs[0].clone()]);
    check("history of t-9", s.target_instructions("t-9", 10).await.unwrap().len(), 0);
    check("busy", s.busy_targets("web").await.unwrap().len(), 2);
    check("not busy for other app", s.busy_targets("api").await.unwrap().len(), 0);

    // compare-and-set on instructions
    let up = InstructionUpdate { to: Some(S::Sent), note: "delivered".into(), ..Default::default() };
    check("created -> sent", s.transition_instruction("i-1", S::Created, 0, &up, "server", 110).await.unwrap(), true);
    check(
        "stale from-state refused",
        s.transition_instruction("i-1", S::Created, 0, &up, "server", 111).await.unwrap(),
        false,
    );
    let staged = InstructionUpdate {
        to: Some(S::Staged),
        reported_digest: Some("aa".into()),
        metrics_json: Some(r#"{"bytes":"10"}"#.into()),
        note: "staged".into(),
        ..Default::default()
    };
    check(
        "stale attempt refused",
        s.transition_instruction("i-1", S::Sent, 1, &staged, "agent:t-1", 120).await.unwrap(),
        false,
    );
    check(
        "sent -> staged",
        s.transition_instruction("i-1", S::Sent, 0, &staged, "agent:t-1", 120).await.unwrap(),
        true,
    );
    let restage =
        InstructionUpdate { to: Some(S::Created), attempt: Some(1), note: "mismatch".into(), ..Default::default() };
    check(
        "created -> created, attempt 1",
        s.transition_instruction("i-2", S::Created, 0, &restage, "server", 121).await.unwrap(),
        true,
    );
    let i1 = s.get_instruction("i-1").await.unwrap().unwrap();
    check("digest kept", i1.reported_digest.as_deref(), Some("aa"));
    check("metrics kept", i1.metrics_json.as_str(), r#"{"bytes":"10"}"#);
    check("previous version kept", i1.previous_version.as_deref(), Some("0.9"));
    check("attempt", s.get_instruction("i-2").await.unwrap().unwrap().attempt, 1);

    // a deployment transition moves matching instructions with it
    let bulk = [BulkMove {
        from: vec![S::Staged],
        to: S::Activating,
        go_live_at: Some(5000),
        note: "go live".into(),
        waves: WaveFilter::Only(1),
    }];
    check(
        "stale deployment state refused",
        s.transition_deployment(
            "d-1",
            &DeploymentMove { bulk: &bulk, ..DeploymentMove::new(D::Scheduled, D::Activating, "x", "scheduler", 130) },
        )
        .await
        .unwrap(),
        false,
    );
    check(
        "staging -> scheduled",
        s.transition_deployment(
            "d-1",
            &DeploymentMove {
                bulk: &bulk,
                wave: Some(1),
                go_live_at: Some(5000),
                ..DeploymentMove::new(D::Staging, D::Scheduled, "gate passed", "scheduler", 130)
            },
        )
        .await
        .unwrap(),
        true,
    );
    let after = s.list_instructions("d-1").await.unwrap();
    check("staged one activates", (after[0].state, after[0].go_live_at), (S::Activating, Some(5000)));
    check("others untouched", after[1].state, S::Created);
    let dep = s.get_deployment("d-1").await.unwrap().unwrap();
    check("deployment state", (dep.state, dep.note.as_str(), dep.updated_at), (D::Scheduled, "gate passed", 130));
    check("wave and go-live set", (dep.wave, dep.go_live_at), (1, Some(5000)));

    let counts = s.state_counts(0).await.unwrap();
    check("target count", counts.targets, 1);
    check("online since the start of time", counts.targets_online, 1);
    check("online since the end of time", s.state_counts(i64::MAX).await.unwrap().targets_online, 0);
    check("deployments by state", counts.deployments, vec![("scheduled".to_owned(), 1)]);
    check("instructions by state", counts.instructions, vec![("activating".to_owned(), 1), ("created".to_owned(), 1)]);

    let ev = s.events("d-1").await.unwrap();
    let seen: Vec<(Option<&str>, &str, &str, &str)> = ev
        .iter()
        .map(|e| (e.instruction_id.as_deref(), e.from_state.as_str(), e.to_state.as_str(), e.actor.as_str()))
        .collect();
    check(
        "events in order with actors",
        seen,
        vec![
            (None, "", "staging", "admin"),
            (Some("i-1"), "", "created", "admin"),
            (Some("i-2"), "", "created", "admin"),
            (Some("i-1"), "created", "sent", "server"),
            (Some("i-1"), "sent", "staged", "agent:t-1"),
            (Some("i-2"), "created", "created", "server"),
            (None, "staging", "scheduled", "scheduler"),
            (Some("i-1"), "staged", "activating", "scheduler"),
        ],
    );
    assert!(ev.windows(2).all(|w| w[0].seq < w[1].seq));

    // a target with work under way cannot be removed; others can, with their credential
    assert!(matches!(s.remove_target("t-1").await, Err(StoreError::Conflict(_))), "t-1 is activating");
    s.put_token(&TokenRecord::new("t2-secret", TokenKind::Agent, "t-2", 1)).await.unwrap();
    s.insert_target(&TargetRecord {
        id: "t-2".into(),
        hostname: "old".into(),
        labels_json: "{}".into(),
        inventory_json: "{}".into(),
        enrolled_at: 1,
        last_seen: 1,
        warning: String::new(),
    })
    .await
    .unwrap();
    s.transition_instruction(
        "i-2",
        S::Created,
        1,
        &InstructionUpdate { to: Some(S::Canceled), note: "x".into(), ..Default::default() },
        "test",
        135,
    )
    .await
    .unwrap();
    check("remove idle target", s.remove_target("t-2").await.unwrap(), true);
    check("credential revoked", s.find_token(&hash_token("t2-secret")).await.unwrap(), None);
    check("remove unknown target", s.remove_target("t-2").await.unwrap(), false);

    s.transition_deployment(
        "d-1",
        &DeploymentMove {
            from_wave: Some(1),
            ..DeploymentMove::new(D::Scheduled, D::Succeeded, "done", "scheduler", 140)
        },
    )
    .await
    .unwrap();
    check("settled is not active", s.active_deployments().await.unwrap().len(), 0);
    check("settled frees targets", s.busy_targets("web").await.unwrap().len(), 0);
}

async fn workflow(s: &dyn Store) {
    // users and their tokens
    let u = UserRecord { name: "alice".into(), role: "deployer".into(), created_by: "admin".into(), created_at: 1 };
    let tok = TokenRecord::new("alice-secret", TokenKind::User, "alice", 1);
    s.add_user(&u, &tok).await.unwrap();
    check("user", s.get_user("alice").await.unwrap(), Some(u.clone()));
    check("user token", s.find_token(&tok.hash).await.unwrap().map(|t| t.kind), Some(TokenKind::User));
    let again = TokenRecord { hash: hash_token("other"), ..tok.clone() };
    assert!(matches!(s.add_user(&u, &again).await, Err(StoreError::Conflict(_))), "names are unique");
    check("no token for the refused user", s.find_token(&again.hash).await.unwrap(), None);
    check("users", s.list_users().await.unwrap().len(), 1);
    // approvers' keys
    let k = UserKeyRecord {
        keyid: "k1".into(),
        user: "alice".into(),
        key_json: "{}".into(),
        added_by: "admin".into(),
        added_at: 2,
    };
    let ev = EventRecord::audit("user:admin", "users", "key added".into(), 2);
    check("key added", s.add_user_key(&k, &ev).await.unwrap(), true);
    check("a key is registered once", s.add_user_key(&k, &ev).await.unwrap(), false);
    let nobody = UserKeyRecord { keyid: "k2".into(), user: "nobody".into(), ..k.clone() };
    check("no key for a user who does not exist", s.add_user_key(&nobody, &ev).await.unwrap(), false);
    check("alice's keys", s.user_keys(Some("alice")).await.unwrap(), vec![k.clone()]);
    check("all keys", s.user_keys(None).await.unwrap().len(), 1);

    // environments are replaced whole
    let e = EnvRecord { name: "prod".into(), policy_json: "{}".into(), updated_by: "admin".into(), updated_at: 1 };
    s.put_env(&e).await.unwrap();
    s.put_env(&EnvRecord { policy_json: r#"{"approvals":2}"#.into(), ..e.clone() }).await.unwrap();
    check("env", s.get_env("prod").await.unwrap().unwrap().policy_json, r#"{"approvals":2}"#.to_owned());
    check("envs", s.list_envs().await.unwrap().len(), 1);

    // a request: approvals count once per approver and revision
    let d = DeploymentRecord {
        id: "d-2".into(),
        app: "web".into(),
        version: "1".into(),
        digest: "aa".into(),
        selector: "site=sh".into(),
        state: D::AwaitingApproval,
        go_live_at: None,
        max_failures: 0,
        stage_deadline: None,
        activate_timeout_ms: 1000,
        created_by: "alice".into(),
        created_at: 200,
        updated_at: 200,
        note: "requested".into(),
        env: Some("prod".into()),
        reason: "CHG-1".into(),
        policy_json: r#"{"approvals":2}"#.into(),
        plan_json: String::new(),
        wave: 0,
        revision: 0,
        expires_at: None,
        targets: String::new(),
        plan_name: "shop".into(),
        plan_entry: "eu".into(),
        plan_digest: "0a1b2c".into(),
    };
    s.create_deployment(&d, &[], "user:alice").await.unwrap();
    check("request read back", s.get_deployment("d-2").await.unwrap(), Some(d.clone()));
    check("its plan's deployments", s.plan_deployments("shop").await.unwrap(), vec![d.clone()]);
    check("another plan's", s.plan_deployments("sho").await.unwrap().len(), 0);
    let a = ApprovalRecord {
        deployment_id: "d-2".into(),
        revision: 0,
        approver: "bob".into(),
        decision: "approve".into(),
        note: "ok".into(),
        at: 210,
        signed: "{\"statement\":{}}".into(),
    };
    check("approve", s.add_approval(&a, D::AwaitingApproval, "user:bob").await.unwrap(), true);
    check("approve twice", s.add_approval(&a, D::AwaitingApproval, "user:bob").await.unwrap(), false);
    check(
        "approval of a stale revision",
        s.add_approval(
            &ApprovalRecord { revision: 7, approver: "carol".into(), ..a.clone() },
            D::AwaitingApproval,
            "x",
        )
        .await
        .unwrap(),
        false,
    );
    check(
        "revise",
        s.revise_request(
            "d-2",
            D::AwaitingApproval,
            0,
            D::AwaitingApproval,
            "site=bj",
            Some(9),
            "CHG-2",
            "user:alice",
            "changed",
            220,
        )
        .await
        .unwrap(),
        true,
    );
    check(
        "revise a stale revision",
        s.revise_request(
            "d-2",
            D::AwaitingApproval,
            0,
            D::AwaitingApproval,
            "x",
            None,
            "",
            "user:alice",
            "changed",
            221,
        )
        .await
        .unwrap(),
        false,
    );
    let d2 = s.get_deployment("d-2").await.unwrap().unwrap();
    check(
        "revised",
        (d2.revision, d2.selector.as_str(), d2.go_live_at, d2.reason.as_str()),
        (1, "site=bj", Some(9), "CHG-2"),
    );
    check(
        "bob may approve the new revision",
        s.add_approval(&ApprovalRecord { revision: 1, ..a.clone() }, D::AwaitingApproval, "user:bob").await.unwrap(),
        true,
    );
    check("approvals kept per revision", s.list_approvals("d-2").await.unwrap().len(), 2);
    check("signed statement kept", s.list_approvals("d-2").await.unwrap()[0].signed.clone(), a.signed.clone());

    // preflight checks are written with the move, and settle once
    let c = CheckRecord {
        id: "c-1".into(),
        deployment_id: "d-2".into(),
        target_id: "t-9".into(),
        state: "pending".into(),
        result_json: "{}".into(),
        output: String::new(),
        updated_at: 230,
    };
    let checks = [c.clone()];
    let m = DeploymentMove {
        from_revision: Some(0),
        new_checks: &checks,
        ..DeploymentMove::new(D::AwaitingApproval, D::Preflight, "approved", "user:bob", 230)
    };
    check("stale revision refused", s.transition_deployment("d-2", &m).await.unwrap(), false);
    let m = DeploymentMove { from_revision: Some(1), ..m };
    check("to preflight", s.transition_deployment("d-2", &m).await.unwrap(), true);
    check("pending check", s.pending_checks("t-9").await.unwrap(), vec![c.clone()]);
    let done =
        CheckRecord { state: "failed".into(), result_json: r#"{"disk":"FAIL"}"#.into(), updated_at: 240, ..c.clone() };
    check("finish", s.finish_check(&done, "agent:t-9").await.unwrap(), true);
    check("finish once", s.finish_check(&done, "agent:t-9").await.unwrap(), false);
    check("no longer pending", s.pending_checks("t-9").await.unwrap().len(), 0);
    check("check read back", s.get_check("c-1").await.unwrap(), Some(done));

    // confirmation writes the plan and the instructions with the move
    let mut i = instruction("i-9", "t-9", S::Created);
    i.deployment_id = "d-2".into();
    i.wave = 2;
    i.planned_at = Some(5000);
    let instrs = [i.clone()];
    let m = DeploymentMove {
        plan_json: Some("[]"),
        new_instructions: &instrs,
        ..DeploymentMove::new(D::Preflight, D::Staging, "confirmed", "user:alice", 250)
    };
    check("to staging", s.transition_deployment("d-2", &m).await.unwrap(), true);
    check("planned instruction", s.list_instructions("d-2").await.unwrap(), vec![i]);
    check("plan stored", s.get_deployment("d-2").await.unwrap().unwrap().plan_json, "[]".to_owned());

    // batched report moves: each a compare-and-set
    let up = InstructionUpdate { to: Some(S::Sent), note: "delivered".into(), ..Default::default() };
    let mv = InstructionMove { id: "i-9".into(), from: S::Created, from_attempt: 0, up, actor: "server".into() };
    let stale = InstructionMove { id: "i-9".into(), from: S::Received, ..mv.clone() };
    check("batch", s.transition_instructions(&[mv, stale], 260).await.unwrap(), vec![true, false]);

    // the audit log, newest first, by deployment and by actor
    let by_bob =
        s.audit(&AuditFilter { actor: Some("user:bob".into()), limit: 100, ..Default::default() }).await.unwrap();
    check("bob's events", by_bob.len(), 3);
    assert!(by_bob.windows(2).all(|w| w[0].seq > w[1].seq), "newest first");
    let d2_events =
        s.audit(&AuditFilter { deployment: Some("d-2".into()), limit: 100, ..Default::default() }).await.unwrap();
    assert!(d2_events.iter().all(|e| e.deployment_id == "d-2") && d2_events.len() >= 8, "{d2_events:?}");
    let both = AuditFilter { deployment: Some("d-2".into()), actor: Some("user:alice".into()), limit: 100 };
    let both = s.audit(&both).await.unwrap();
    let want: Vec<i64> = d2_events.iter().filter(|e| e.actor == "user:alice").map(|e| e.seq).collect();
    check("both filters", both.iter().map(|e| e.seq).collect::<Vec<_>>(), want);
    check("some by alice on d-2", both.is_empty(), false);
    // an agent's events are outside the actor index, and found all the same
    let by_agent = EventRecord {
        instruction_id: Some("i-9".into()),
        deployment_id: "d-2".into(),
        ..EventRecord::audit("agent:t-9", "received", String::new(), 265)
    };
    s.append_event(&by_agent).await.unwrap();
    let agent =
        s.audit(&AuditFilter { actor: Some("agent:t-9".into()), limit: 100, ..Default::default() }).await.unwrap();
    check("only the agent's events", agent.iter().all(|e| e.actor == "agent:t-9"), true);
    check("the agent's newest", agent.first().map(|e| (e.to_state.as_str(), e.at)), Some(("received", 265)));
    s.append_event(&EventRecord {
        seq: 0,
        deployment_id: String::new(),
        instruction_id: None,
        from_state: String::new(),
        to_state: "user_added".into(),
        actor: "user:admin".into(),
        note: "alice as deployer".into(),
        at: 270,
    })
    .await
    .unwrap();
    let limited = s.audit(&AuditFilter { limit: 1, ..Default::default() }).await.unwrap();
    check("limit, newest", limited.iter().map(|e| e.to_state.as_str()).collect::<Vec<_>>(), vec!["user_added"]);

    // one lease holder at a time; another takes over once it runs out
    check("a takes", s.hold_lease("scheduler", "a", 1000, 100).await.unwrap(), true);
    check("b waits", s.hold_lease("scheduler", "b", 1050, 100).await.unwrap(), false);
    check("a renews", s.hold_lease("scheduler", "a", 1090, 100).await.unwrap(), true);
    check("b still waits", s.hold_lease("scheduler", "b", 1150, 100).await.unwrap(), false);
    check("b takes an expired lease", s.hold_lease("scheduler", "b", 1200, 100).await.unwrap(), true);
    check("a lost it", s.hold_lease("scheduler", "a", 1210, 100).await.unwrap(), false);

    check("remove user", s.remove_user("alice").await.unwrap(), true);
    check("token revoked", s.find_token(&tok.hash).await.unwrap(), None);
    check("keys removed with the user", s.user_keys(Some("alice")).await.unwrap(), vec![]);
}

/// Enrols each instruction's target and creates the deployment.
async fn deploy_to_targets(s: &dyn Store, d: &DeploymentRecord, instrs: &[InstructionRecord]) {
    for i in instrs {
        let t = TargetRecord {
            id: i.target_id.clone(),
            hostname: i.target_id.clone(),
            labels_json: "{}".into(),
            inventory_json: "{}".into(),
            enrolled_at: 1,
            last_seen: 1,
            warning: String::new(),
        };
        s.insert_target(&t).await.unwrap();
    }
    s.create_deployment(d, instrs, "admin").await.unwrap();
}

/// A batch of report moves whose write fails part-way changes nothing,
/// and the store writes again after it. The backend's own test makes its
/// database refuse any move of an instruction to the note `refused` (a
/// trigger) before it calls this.
pub async fn failed_batch(s: &dyn Store) {
    releases(s).await;
    let d = staging("d-refuse", 1);
    let instrs: Vec<InstructionRecord> = ["a", "b", "c"]
        .iter()
        .map(|x| InstructionRecord {
            deployment_id: d.id.clone(),
            ..instruction(&format!("r-{x}"), &format!("t-r-{x}"), S::Created)
        })
        .collect();
    deploy_to_targets(s, &d, &instrs).await;
    let mv = |id: &str, from: S, to: S, note: &str| InstructionMove {
        id: id.into(),
        from,
        from_attempt: 0,
        up: InstructionUpdate { to: Some(to), note: note.into(), ..Default::default() },
        actor: "agent:t".into(),
    };
    let states = || async {
        s.list_instructions(&d.id).await.unwrap().into_iter().map(|i| (i.id, i.state, i.note)).collect::<Vec<_>>()
    };
    let (before, mut events) = (states().await, s.events(&d.id).await.unwrap().len());
    // one round (each instruction once), the refused move last and first
    for batch in [
        vec![mv("r-a", S::Created, S::Sent, "sent"), mv("r-b", S::Created, S::Sent, "refused")],
        vec![mv("r-b", S::Created, S::Sent, "refused"), mv("r-a", S::Created, S::Sent, "sent")],
        // two rounds (r-a twice): the refusal in the second
        vec![
            mv("r-a", S::Created, S::Sent, "sent"),
            mv("r-c", S::Created, S::Sent, "sent"),
            mv("r-a", S::Sent, S::Received, "refused"),
        ],
    ] {
        assert!(s.transition_instructions(&batch, 300).await.is_err(), "the refusal fails the batch");
        assert_eq!(states().await, before, "no move of the failed batch stays");
        assert_eq!(s.events(&d.id).await.unwrap().len(), events, "nor any of its events");
        // the same on a held connection, which goes back to the pool
        // (two rounds: r-c there and back)
        let mut hold = crate::WriterHold::default();
        let ok = [mv("r-c", S::Created, S::Sent, "sent"), mv("r-c", S::Sent, S::Created, "planned")];
        assert_eq!(s.transition_instructions_held(&mut hold, &ok, 300).await.unwrap(), [true, true]);
        assert!(hold.is_held(), "a batch that landed leaves its connection held");
        events += 2;
        assert!(s.transition_instructions_held(&mut hold, &batch, 300).await.is_err(), "held: refused");
        assert!(!hold.is_held(), "a failed batch gives its connection back");
        assert_eq!(states().await, before, "no move of the failed held batch stays");
        assert_eq!(s.events(&d.id).await.unwrap().len(), events, "nor any of its events");
    }
    // the writer is whole again: the same moves without the refusal land,
    // two batches on one held connection
    let mut hold = crate::WriterHold::default();
    let batch = [mv("r-a", S::Created, S::Sent, "sent")];
    assert_eq!(s.transition_instructions_held(&mut hold, &batch, 301).await.unwrap(), [true]);
    let batch = [mv("r-b", S::Created, S::Sent, "sent")];
    assert_eq!(s.transition_instructions_held(&mut hold, &batch, 301).await.unwrap(), [true]);
    assert!(hold.is_held());
    // given back, the store's other writers have it (SQLite: its only one)
    hold.release();
    assert_eq!(s.events(&d.id).await.unwrap().len(), events + 2);
    let after = states().await;
    assert_eq!(after.iter().map(|(_, st, _)| *st).collect::<Vec<_>>(), [S::Sent, S::Sent, S::Created]);
    s.append_event(&EventRecord {
        seq: 0,
        deployment_id: d.id.clone(),
        instruction_id: None,
        from_state: String::new(),
        to_state: String::new(),
        actor: "admin".into(),
        note: "after".into(),
        at: 302,
    })
    .await
    .unwrap();
    assert_eq!(s.events(&d.id).await.unwrap().last().unwrap().note, "after", "other writes go on too");
}

/// The poll cache in front of a backend: a new deployment's rows join the
/// pending work it holds (no read afterwards), and what it holds for
/// other targets is unchanged; a deployment-wide move drops work, not
/// tokens.
pub async fn cache(c: &CachedStore) {
    let t = |n: &str| format!("t-cache-{n}");
    assert!(c.pending_instructions(&t("held")).await.unwrap().is_empty());
    let calls = c.backend_calls();
    assert!(c.pending_instructions(&t("held")).await.unwrap().is_empty());
    assert_eq!(c.backend_calls(), calls, "held");
    let d = staging("d-cache", 1);
    let instrs: Vec<InstructionRecord> = ["held", "cold"]
        .iter()
        .map(|n| InstructionRecord {
            deployment_id: d.id.clone(),
            ..instruction(&format!("i-cache-{n}"), &t(n), S::Created)
        })
        .collect();
    c.create_deployment(&d, &instrs, "admin").await.unwrap();
    let calls = c.backend_calls();
    let got = c.pending_instructions(&t("held")).await.unwrap();
    assert_eq!(got, [instrs[0].clone()], "the new row joins the held work");
    assert_eq!(c.backend_calls(), calls, "without a read");
    assert_eq!(c.pending_instructions(&t("cold")).await.unwrap(), [instrs[1].clone()]);
    assert_eq!(c.backend_calls(), calls + 1, "a target not held is read");
    // the rows held are what the database says
    assert_eq!(c.pending_instructions(&t("held")).await.unwrap(), c.inner_pending(&t("held")).await);
    // a deployment-wide move drops work entries, not tokens
    let tok = TokenRecord {
        hash: hash_token("cache-secret"),
        kind: TokenKind::Agent,
        subject: t("held"),
        created_at: 1,
        revoked_at: None,
        revoked_note: String::new(),
    };
    c.put_token(&tok).await.unwrap();
    assert_eq!(c.find_token(&tok.hash).await.unwrap().as_ref(), Some(&tok));
    let m = DeploymentMove::new(D::Staging, D::Staging, "move", "admin", 2);
    assert!(c.transition_deployment(&d.id, &m).await.unwrap());
    let calls = c.backend_calls();
    assert_eq!(c.find_token(&tok.hash).await.unwrap().as_ref(), Some(&tok), "held whole, hash included");
    assert_eq!(c.backend_calls(), calls, "tokens stay");
    c.pending_instructions(&t("held")).await.unwrap();
    assert_eq!(c.backend_calls(), calls + 1, "work is read again");
    // a hash in any other spelling is not the cached token's (no such
    // token), and is the database's to answer every time
    let calls = c.backend_calls();
    let upper = tok.hash.to_uppercase();
    for _ in 0..2 {
        assert_eq!(c.find_token(&upper).await.unwrap(), None, "another spelling is another token");
    }
    assert_eq!(c.backend_calls(), calls + 2, "read each time");
    // revoked at once despite the cache
    let calls = c.backend_calls();
    assert!(c.find_token(&tok.hash).await.unwrap().is_some());
    assert_eq!(c.backend_calls(), calls);
    let new = TokenRecord { hash: hash_token("cache-secret-2"), created_at: 3, ..tok.clone() };
    c.rotate_token(&new, "rotated", &EventRecord::audit("user:admin", "rotate", String::new(), 3)).await.unwrap();
    assert!(c.find_token(&tok.hash).await.unwrap().unwrap().revoked_at.is_some(), "revoked at once");
    assert_eq!(c.find_token(&new.hash).await.unwrap().as_ref(), Some(&new));
}
