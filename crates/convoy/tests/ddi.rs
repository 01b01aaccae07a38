//! Devices that speak hawkBit DDI, proved with the real SWUpdate (Debian's
//! `swupdate`, suricatta's hawkBit module): unprivileged, each device in its
//! own directory, polling the server on loopback. A convoy release whose
//! file is a CMS-signed `.swu` reaches them through convoy's waves.

mod common;

use std::time::Duration;

use common::ddi::{Signer, Swupdate};
use common::*;

const LONG: Duration = Duration::from_secs(120);

fn instruction(f: &Fleet, deployment: &str, host: &str) -> serde_json::Value {
    let d = f.deployment(deployment);
    d["instructions"].as_array().unwrap().iter().find(|i| i["hostname"] == host).cloned().unwrap_or_else(|| {
        panic!("{host} is not in deployment {deployment}: {d:#}");
    })
}

fn add_device(f: &Fleet, name: &str, labels: &str) -> String {
    let token = f.ok(&["targets", "add-ddi", name, "--labels", labels]).trim().to_owned();
    assert_eq!(token.len(), 64, "the TargetToken is printed: {token}");
    token
}

#[test]
#[ignore = "needs swupdate (Debian package; .ci/run installs it)"]
fn swupdate_devices_take_a_signed_release_wave_by_wave() {
    common::ddi::swupdate_exe();
    let f = Fleet::start_with_args(&["--ddi-poll-secs", "1"]);
    let signer = Signer::new(&f.path("signing"));
    let payload = b"firmware 1.0 for the convoy DDI test\n".repeat(500);
    signer.swu(&f.path("rel/1.0"), "1.0", &payload, None);
    f.ok(&["publish", f.path("rel/1.0").to_str().unwrap(), "--app", "fw", "--version", "1.0"]);
    f.ok(&["env", "set", "field", "--waves", "1,100%"]);

    let mut devs: Vec<Swupdate> = ["dev-1", "dev-2"]
        .iter()
        .map(|n| Swupdate::new(&f.path("devices"), n, &add_device(&f, n, "role=gw"), &signer))
        .collect();
    for d in &mut devs {
        d.start(f.port, false);
    }
    // first polls: the devices report their identity as configData
    wait_until("the devices' attributes", LONG, || {
        let t = f.json(&["targets"]);
        let all = t.as_array()?.iter().all(|t| t["inventory"]["attributes"]["board"] == "convoy-test");
        all.then_some(())
    });
    let t = f.json(&["targets", "show", "ddi-dev-1"]);
    assert_eq!(t["target"]["inventory"]["kind"], "ddi", "{t:#}");
    assert_eq!(t["target"]["inventory"]["attributes"]["serial"], "dev-1", "{t:#}");
    assert_eq!(t["target"]["labels"], serde_json::json!({"role": "gw"}), "attributes never become labels: {t:#}");

    let d = f.json(&["deploy", "fw@1.0", "--env", "field", "--selector", "role=gw", "--reason", "ddi test"]);
    let id = d["id"].as_str().unwrap().to_owned();

    // staging is the download with the window unavailable: nobody installs
    // until its wave goes live; the first wave's device installs, then
    // waits for its restart (SWUpdate's "testing" state)
    let (first, second) = wait_until("the first wave's device to install", LONG, || {
        let done: Vec<usize> = (0..2).filter(|i| devs[*i].installed().is_some()).collect();
        match done.as_slice() {
            [i] => Some((*i, 1 - *i)),
            [] => None,
            _ => panic!("both devices installed at once: waves were not kept\n{}\n{}", devs[0].log(), devs[1].log()),
        }
    });
    assert_eq!(devs[first].installed().unwrap(), payload, "installed bytes");
    let first_name = devs[first].name.clone();
    let second_name = devs[second].name.clone();
    assert_eq!(instruction(&f, &id, &first_name)["wave"], 1);
    assert_eq!(instruction(&f, &id, &second_name)["wave"], 2);
    // the second device stays staged (downloaded nothing it may install)
    // while the first is not confirmed
    std::thread::sleep(Duration::from_secs(4));
    assert!(devs[second].installed().is_none(), "wave 2 installed before wave 1 succeeded:\n{}", devs[second].log());
    assert_eq!(instruction(&f, &id, &second_name)["state"], "staged");
    assert_eq!(instruction(&f, &id, &first_name)["state"], "activating");

    // restarted with -c 2, it reports the update successful
    devs[first].start(f.port, true);
    wait_until("the second wave's device to install", LONG, || devs[second].installed());
    assert_eq!(instruction(&f, &id, &first_name)["state"], "succeeded");
    devs[second].start(f.port, true);
    let done = f.wait_state(&id, &["succeeded", "failed", "rolled_back", "halted"], LONG);
    assert_eq!(done["deployment"]["state"], "succeeded", "{done:#}\n{}\n{}", devs[0].log(), devs[1].log());
    for d in &devs {
        assert_eq!(d.installed().as_deref(), Some(&payload[..]), "{}", d.name);
    }
    // as any target: live release, audit, status
    assert_eq!(
        f.live("fw"),
        vec![("dev-1".to_owned(), Some("1.0".to_owned())), ("dev-2".to_owned(), Some("1.0".to_owned()))]
    );
    let audit = f.ok(&["audit", "--deployment", &id]);
    for want in
        ["sent -> staged", "staged -> activating", "activating -> succeeded", "agent:ddi-dev-1", "agent:ddi-dev-2"]
    {
        assert!(audit.contains(want), "audit lacks {want:?}:\n{audit}");
    }
    let status = f.ok(&["status", &id]);
    assert!(status.contains("dev-1") && status.contains("succeeded"), "{status}");
}

#[test]
#[ignore = "needs swupdate (Debian package; .ci/run installs it)"]
fn an_image_whose_payload_does_not_match_its_signed_hash_fails_on_the_device() {
    common::ddi::swupdate_exe();
    let f = Fleet::start_with_args(&["--ddi-poll-secs", "1"]);
    let signer = Signer::new(&f.path("signing"));
    let payload = b"firmware 2.0, not what the description says\n".repeat(200);
    let wrong = common::ddi::sha256_hex(b"some other payload");
    signer.swu(&f.path("rel/2.0"), "2.0", &payload, Some(&wrong));
    f.ok(&["publish", f.path("rel/2.0").to_str().unwrap(), "--app", "fw", "--version", "2.0"]);
    let mut dev = Swupdate::new(&f.path("devices"), "dev-3", &add_device(&f, "dev-3", "role=bad"), &signer);
    dev.start(f.port, false);
    let d = f.json(&["deploy", "fw@2.0", "--selector", "role=bad"]);
    let id = d["id"].as_str().unwrap().to_owned();
    let done = f.wait_state(&id, &["succeeded", "failed", "rolled_back", "halted"], LONG);
    assert_eq!(done["deployment"]["state"], "failed", "{done:#}\n{}", dev.log());
    let i = instruction(&f, &id, "dev-3");
    assert_eq!(i["state"], "failed", "{i:#}");
    assert!(i["note"].as_str().unwrap().contains("activation failed"), "{i:#}");
    assert!(dev.installed().is_none(), "nothing may be installed:\n{}", dev.log());
    assert!(dev.log().to_lowercase().contains("hash"), "SWUpdate says why:\n{}", dev.log());
}
