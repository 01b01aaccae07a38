//! The DDI endpoint against hawkBit's documented request and response
//! shapes (`tests/ddi-fixtures`): every endpoint, both forms of the
//! feedback `id`, Range downloads and `.MD5SUM`, content types, and the
//! status codes hawkBit answers with (401, 403, 404, 405, 406, 410, 415,
//! 416).

mod common;

use std::time::Duration;

use common::ddi::{request, Answer};
use common::*;
use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ddi-fixtures");
const WAIT: Duration = Duration::from_secs(60);

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap()
}

/// Keys convoy may send beyond a fixture's: hawkBit's optional ones.
const OPTIONAL: &[&str] = &[
    "maintenanceWindow",
    "metadata",
    "download",
    "md5sum",
    "actionHistory",
    "installedBase",
    "cancelAction",
    "configData",
    "deploymentBase",
];

/// `ours` has the fixture's shape: every key the fixture has, with a value
/// of the same JSON type (recursively; arrays by their first element), and
/// no keys hawkBit does not document.
fn same_shape(fixture: &Value, ours: &Value, at: &str) {
    match (fixture, ours) {
        (Value::Object(f), Value::Object(o)) => {
            for (k, fv) in f {
                if OPTIONAL.contains(&k.as_str()) && !o.contains_key(k) {
                    continue;
                }
                let ov = o.get(k).unwrap_or_else(|| panic!("{at}.{k} is missing from {ours:#}"));
                same_shape(fv, ov, &format!("{at}.{k}"));
            }
            for k in o.keys() {
                assert!(f.contains_key(k) || OPTIONAL.contains(&k.as_str()), "{at}.{k} is not in hawkBit's shape");
            }
        }
        (Value::Array(f), Value::Array(o)) => {
            if let (Some(fv), Some(ov)) = (f.first(), o.first()) {
                same_shape(fv, ov, &format!("{at}[0]"));
            }
        }
        (Value::String(_), Value::String(_))
        | (Value::Number(_), Value::Number(_))
        | (Value::Bool(_), Value::Bool(_)) => {}
        _ => panic!("{at}: hawkBit has {fixture}, convoy sent {ours}"),
    }
}

struct Ddi<'a> {
    f: &'a Fleet,
    base: String,
    auth: String,
}

impl Ddi<'_> {
    fn get(&self, path: &str, extra: &[(&str, &str)]) -> Answer {
        let mut h = vec![("Authorization", self.auth.as_str())];
        h.extend_from_slice(extra);
        request(self.f.port, "GET", &format!("{}{path}", self.base), &h, b"")
    }
    fn send(&self, method: &str, path: &str, ctype: &str, body: &str) -> Answer {
        let h = [("Authorization", self.auth.as_str()), ("Content-Type", ctype)];
        request(self.f.port, method, &format!("{}{path}", self.base), &h, body.as_bytes())
    }
    fn poll(&self) -> Value {
        let a = self.get("", &[]);
        assert_eq!(a.status, 200, "{}", a.text());
        a.json()
    }
    /// The action the poll links to as `rel`, once it does.
    fn action(&self, rel: &str) -> String {
        wait_until(&format!("a {rel} link"), WAIT, || {
            let href = self.poll()["_links"][rel]["href"].as_str()?.to_owned();
            let tail = href.rsplit('/').next().unwrap();
            Some(tail.split('?').next().unwrap().to_owned())
        })
    }
}

fn hex_of(tool: &str, data: &[u8]) -> String {
    use std::io::Write;
    let mut c = std::process::Command::new(tool)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(data).unwrap();
    String::from_utf8(c.wait_with_output().unwrap().stdout).unwrap().split_whitespace().next().unwrap().to_owned()
}

fn state_of(f: &Fleet, id: &str) -> String {
    f.deployment(id)["instructions"][0]["state"].as_str().unwrap().to_owned()
}

fn publish(f: &Fleet, version: &str, data: &[u8]) {
    let dir = f.path(&format!("rel/{version}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("image.swu"), data).unwrap();
    f.ok(&["publish", dir.to_str().unwrap(), "--app", "fw", "--version", version]);
}

#[test]
fn ddi_endpoints_answer_as_hawkbit_does() {
    let f = Fleet::start_with_args(&["--ddi-poll-secs", "2"]);
    let token = f.ok(&["targets", "add-ddi", "dev-p", "--labels", "role=p"]).trim().to_owned();
    let other = f.ok(&["targets", "add-ddi", "dev-q", "--labels", "role=q"]).trim().to_owned();
    let dev = Ddi { f: &f, base: "/DEFAULT/controller/v1/dev-p".into(), auth: format!("TargetToken {token}") };

    // --- who may speak for a device
    let poll = |auth: Option<&str>, path: &str| {
        let h: Vec<(&str, &str)> = auth.map(|a| vec![("Authorization", a)]).unwrap_or_default();
        request(f.port, "GET", path, &h, b"").status
    };
    let path = "/DEFAULT/controller/v1/dev-p";
    assert_eq!(poll(None, path), 401, "no credential");
    assert_eq!(poll(Some(&format!("Bearer {token}")), path), 401, "the DDI token in another scheme");
    assert_eq!(poll(Some("TargetToken not-a-token-at-all"), path), 401, "an unknown token");
    assert_eq!(poll(Some(&format!("TargetToken {other}")), path), 401, "another device's token");
    assert_eq!(poll(Some(&format!("TargetToken {token}")), "/OTHER/controller/v1/dev-p"), 401, "another tenant");
    assert_eq!(poll(Some(&format!("TargetToken {token}")), "/default/controller/v1/dev-p"), 200, "tenants ignore case");
    assert_eq!(poll(Some(&format!("GatewayToken {token}")), path), 401, "a TargetToken is no GatewayToken");
    assert_eq!(poll(Some(&format!("TargetToken {ENROL}")), path), 401, "an enrolment token is no TargetToken");
    // a DDI token opens nothing of the agents' or operators' API
    let (s, _) = http(f.port, "GET", "/api/v1/agent/work", Some(&token), b"").unwrap();
    assert_eq!(s, 403);
    let (s, _) = http(f.port, "GET", "/api/v1/releases", Some(&token), b"").unwrap();
    assert_eq!(s, 403);

    // --- poll, and configData
    let body = dev.poll();
    same_shape(&serde_json::from_str(&fixture("controller-base.json")).unwrap(), &body, "poll");
    assert_eq!(body["config"]["polling"]["sleep"], "00:00:02");
    assert!(body["_links"]["configData"]["href"]
        .as_str()
        .unwrap()
        .ends_with("/DEFAULT/controller/v1/dev-p/configData"));
    assert!(body["_links"].get("deploymentBase").is_none(), "nothing to do yet: {body}");
    let a = dev.get("", &[]);
    assert_eq!(a.header("content-type"), Some("application/hal+json"), "hal+json by default");
    let a = dev.get("", &[("Accept", "application/json")]);
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(dev.get("", &[("Accept", "*/*")]).header("content-type"), Some("application/hal+json"));
    assert_eq!(dev.get("", &[("Accept", "application/atom+xml")]).status, 406);

    assert_eq!(dev.send("PUT", "/configData", "application/hal+json", &fixture("config-data.json")).status, 415);
    assert_eq!(dev.send("PUT", "/configData", "application/json", r#"{"mode": "merge", "data": {}}"#).status, 400);
    assert_eq!(
        dev.send("PUT", "/configData", "application/json", r#"{"mode": "mix", "data": {"a": "b"}}"#).status,
        400
    );
    assert_eq!(dev.send("PUT", "/configData", "application/json", "{not json").status, 400);
    let a = dev.send("PUT", "/configData", "application/json", &fixture("config-data.json"));
    assert_eq!(a.status, 200, "{}", a.text());
    let a = dev.send("PUT", "/configData", "application/json", &fixture("config-data-legacy.json"));
    assert_eq!(a.status, 200, "{}", a.text());
    let t = f.json(&["targets", "show", "ddi-dev-p"]);
    assert_eq!(t["target"]["inventory"]["attributes"]["VIN"], "JH4TB2H26CC000000", "{t:#}");
    assert_eq!(t["target"]["inventory"]["attributes"]["serial"], "0001", "merged: {t:#}");
    assert_eq!(t["target"]["labels"], serde_json::json!({"role": "p"}), "attributes are not labels");
    assert!(dev.poll()["_links"].get("configData").is_none(), "attributes known");
    let a = dev.send("PUT", "/configData", "application/json", r#"{"mode": "remove", "data": {"VIN": ""}}"#);
    assert_eq!(a.status, 200);
    let t = f.json(&["targets", "show", "ddi-dev-p"]);
    assert!(t["target"]["inventory"]["attributes"].get("VIN").is_none(), "{t:#}");

    // --- a deployment: download first (window unavailable)
    let data: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    publish(&f, "1.0", &data);
    let d = f.json(&["deploy", "fw@1.0", "--selector", "role=p"]);
    let id = d["id"].as_str().unwrap().to_owned();
    let action = dev.action("deploymentBase");
    let href = dev.poll()["_links"]["deploymentBase"]["href"].as_str().unwrap().to_owned();
    assert!(href.contains(&format!("/deploymentBase/{action}?c=")), "{href}");
    let a = dev.get(&format!("/deploymentBase/{action}"), &[]);
    assert_eq!(a.status, 200, "{}", a.text());
    let base = a.json();
    same_shape(&serde_json::from_str(&fixture("deployment-base.json")).unwrap(), &base, "deploymentBase");
    assert_eq!(base["id"], action.as_str());
    assert_eq!(base["deployment"]["download"], "forced");
    assert_eq!(base["deployment"]["update"], "skip", "{base:#}");
    assert_eq!(base["deployment"]["maintenanceWindow"], "unavailable");
    let chunk = &base["deployment"]["chunks"][0];
    assert_eq!((chunk["name"].as_str(), chunk["version"].as_str()), (Some("fw"), Some("1.0")));
    let art = &chunk["artifacts"][0];
    assert_eq!(art["filename"], "image.swu");
    assert_eq!(art["size"], data.len() as u64);
    assert_eq!(art["hashes"]["sha256"], hex_of("sha256sum", &data));
    assert_eq!(art["hashes"]["sha1"], hex_of("sha1sum", &data));
    assert_eq!(art["hashes"]["md5"], hex_of("md5sum", &data));
    let history = dev.get(&format!("/deploymentBase/{action}?actionHistory=5"), &[]).json();
    assert!(history["actionHistory"]["messages"].is_array(), "{history:#}");
    assert_eq!(dev.get("/deploymentBase/12345", &[]).status, 404, "an unknown action");
    assert_eq!(dev.get("/deploymentBase/not-a-number", &[]).status, 404);

    // --- artifacts: whole, ranges, MD5SUM, the module list
    let url = art["_links"]["download-http"]["href"].as_str().unwrap();
    assert_eq!(art["_links"]["download"]["href"], url);
    let path = &url[url.find("/DEFAULT/").unwrap() + dev.base.len()..];
    let whole = dev.get(path, &[]);
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body, data, "the artifact's bytes");
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));
    assert_eq!(whole.header("etag"), Some(format!("\"{}\"", hex_of("sha1sum", &data)).as_str()));
    assert!(whole.header("content-disposition").unwrap().contains("image.swu"));
    let part = dev.get(path, &[("Range", "bytes=100000-100099")]);
    assert_eq!(part.status, 206);
    assert_eq!(part.body, &data[100_000..100_100]);
    assert_eq!(part.header("content-range"), Some(format!("bytes 100000-100099/{}", data.len()).as_str()));
    let tail = dev.get(path, &[("Range", "bytes=-10")]);
    assert_eq!((tail.status, &tail.body[..]), (206, &data[data.len() - 10..]));
    let rest = dev.get(path, &[("Range", "bytes=299990-")]);
    assert_eq!((rest.status, &rest.body[..]), (206, &data[299_990..]));
    let beyond = dev.get(path, &[("Range", "bytes=400000-")]);
    assert_eq!(beyond.status, 416);
    assert_eq!(beyond.header("content-range"), Some(format!("bytes */{}", data.len()).as_str()));
    assert_eq!(dev.get(path, &[("Range", "bytes=9-2")]).status, 416);
    let other_version = dev.get(path, &[("Range", "bytes=0-9"), ("If-Range", "\"0000\"")]);
    assert_eq!((other_version.status, other_version.body.len()), (200, data.len()), "If-Range of another version");
    let md5 = dev.get(&format!("{path}.MD5SUM"), &[]);
    assert_eq!(md5.status, 200);
    assert_eq!(md5.text(), format!("{}  image.swu", hex_of("md5sum", &data)));
    let module_path = &path[..path.rfind('/').unwrap()];
    let list = dev.get(module_path, &[]);
    assert_eq!(list.status, 200, "{}", list.text());
    same_shape(
        &serde_json::from_str::<Value>(&fixture("deployment-base.json")).unwrap()["deployment"]["chunks"][0]
            ["artifacts"],
        &list.json(),
        "artifacts",
    );
    assert_eq!(dev.get(&format!("{module_path}/nothing.bin"), &[]).status, 404);
    assert_eq!(dev.get("/softwaremodules/77/artifacts/image.swu", &[]).status, 404, "a module not assigned");
    // another device may not read what was not sent to it
    let q = Ddi { f: &f, base: "/DEFAULT/controller/v1/dev-q".into(), auth: format!("TargetToken {other}") };
    assert_eq!(q.get(path, &[]).status, 404, "dev-q reads dev-p's module");

    // --- feedback: both id forms, then the window opens
    let bad =
        |ctype: &str, body: &str| dev.send("POST", &format!("/deploymentBase/{action}/feedback"), ctype, body).status;
    let rauc = fixture("feedback-rauc.json").replace("ACTION_ID", &action);
    assert_eq!(bad("application/hal+json", &rauc), 415);
    assert_eq!(bad("application/json", r#"{"id": 1, "status": {"execution": "closed"}}"#), 400, "no result");
    assert_eq!(bad("application/json", r#"{"status": {"execution": "done", "result": {"finished": "none"}}}"#), 400);
    let wrong_id = fixture("feedback-rauc.json").replace("ACTION_ID", "42");
    assert_eq!(bad("application/json", &wrong_id), 404, "feedback naming another action");
    assert_eq!(
        dev.send("POST", "/deploymentBase/42/feedback", "application/json", &fixture("feedback-current.json")).status,
        404,
        "feedback for an unknown action"
    );
    assert_eq!(state_of(&f, &id), "sent", "bad feedback changed nothing");
    assert_eq!(bad("application/json", &rauc), 200, "numeric id");
    wait_until("received", WAIT, || (state_of(&f, &id) == "received").then_some(()));
    let crate_form = fixture("feedback-hawkbit-crate.json").replace("ACTION_ID", &action);
    assert_eq!(bad("application/json", &crate_form), 200, "string id");
    // downloaded: staged, the gate passes, the window opens
    let base = wait_until("the window to open", WAIT, || {
        let b = dev.get(&format!("/deploymentBase/{action}"), &[]).json();
        (b["deployment"]["update"] == "forced").then_some(b)
    });
    assert_eq!(base["deployment"]["maintenanceWindow"], "available");
    let href2 = dev.poll()["_links"]["deploymentBase"]["href"].as_str().unwrap().to_owned();
    assert_ne!(href, href2, "c changes when the window opens");
    assert_eq!(state_of(&f, &id), "activating");
    let a = dev.send(
        "POST",
        &format!("/deploymentBase/{action}/feedback"),
        "application/json",
        &fixture("feedback-current.json"),
    );
    assert_eq!(a.status, 200, "{}", a.text());
    let done = f.wait_state(&id, &["succeeded", "failed"], WAIT);
    assert_eq!(done["deployment"]["state"], "succeeded", "{done:#}");
    assert_eq!(
        dev.send(
            "POST",
            &format!("/deploymentBase/{action}/feedback"),
            "application/json",
            &fixture("feedback-current.json")
        )
        .status,
        410,
        "feedback for a closed action"
    );
    assert_eq!(dev.get(&format!("/deploymentBase/{action}"), &[]).status, 200, "a closed action is still readable");
    let installed = dev.action("installedBase");
    assert_eq!(installed, action);
    let ib = dev.get(&format!("/installedBase/{installed}"), &[]);
    assert_eq!(ib.status, 200, "{}", ib.text());
    same_shape(&serde_json::from_str(&fixture("deployment-base.json")).unwrap(), &ib.json(), "installedBase");
    assert_eq!(dev.get("/installedBase/12345", &[]).status, 404);
    assert_eq!(f.live("fw").iter().find(|(h, _)| h == "dev-p").unwrap().1.as_deref(), Some("1.0"));

    // --- cancel: a canceled action is offered as cancelAction until the device answers
    publish(&f, "1.1", &data[..1000]);
    let d = f.json(&["deploy", "fw@1.1", "--selector", "role=p"]);
    let id2 = d["id"].as_str().unwrap().to_owned();
    let action2 = dev.action("deploymentBase");
    assert_ne!(action2, action);
    assert_eq!(dev.get(&format!("/deploymentBase/{action2}"), &[]).status, 200);
    assert_eq!(dev.get(&format!("/cancelAction/{action2}"), &[]).status, 404, "not being canceled");
    f.ok(&["cancel", &id2, "--reason", "wrong build"]);
    let stop = dev.action("cancelAction");
    assert_eq!(stop, action2);
    let c = dev.get(&format!("/cancelAction/{stop}"), &[]);
    assert_eq!(c.status, 200, "{}", c.text());
    same_shape(&serde_json::from_str(&fixture("cancel-action.json")).unwrap(), &c.json(), "cancelAction");
    assert_eq!(c.json()["cancelAction"]["stopId"], stop.as_str());
    let cf = fixture("cancel-feedback.json").replace("ACTION_ID", &stop);
    let a = dev.send("POST", &format!("/cancelAction/{stop}/feedback"), "application/json", &cf);
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(dev.poll()["_links"].get("cancelAction").is_none(), "the cancel was answered");
    assert_eq!(dev.send("POST", &format!("/cancelAction/{stop}/feedback"), "application/json", &cf).status, 405);
    let audit = f.ok(&["audit", "--actor", "agent:ddi-dev-p"]);
    assert!(audit.contains(&format!("stopped canceled action {stop}")), "{audit}");

    // --- rollback: an action installing the release before
    publish(&f, "1.2", &data[..2000]);
    let d = f.json(&["deploy", "fw@1.2", "--selector", "role=p"]);
    let id3 = d["id"].as_str().unwrap().to_owned();
    let action3 = dev.action("deploymentBase");
    let ok = r#"{"status": {"execution": "closed", "result": {"finished": "success"}}}"#;
    assert_eq!(dev.send("POST", &format!("/deploymentBase/{action3}/feedback"), "application/json", ok).status, 200);
    wait_until("1.2 to go live", WAIT, || (state_of(&f, &id3) == "activating").then_some(()));
    assert_eq!(dev.send("POST", &format!("/deploymentBase/{action3}/feedback"), "application/json", ok).status, 200);
    f.wait_state(&id3, &["succeeded"], WAIT);
    f.ok(&["rollback", &id3, "--reason", "test"]);
    let back = wait_until("the rollback action", WAIT, || {
        let a = dev.action("deploymentBase");
        (a != action3).then_some(a)
    });
    let b = dev.get(&format!("/deploymentBase/{back}"), &[]).json();
    assert_eq!(b["deployment"]["chunks"][0]["version"], "1.0", "the release before: {b:#}");
    assert_eq!(b["deployment"]["update"], "forced");
    assert_eq!(dev.send("POST", &format!("/deploymentBase/{back}/feedback"), "application/json", ok).status, 200);
    let done = f.wait_state(&id3, &["rolled_back", "failed"], WAIT);
    assert_eq!(done["deployment"]["state"], "rolled_back", "{done:#}");
    assert_eq!(f.live("fw").iter().find(|(h, _)| h == "dev-p").unwrap().1.as_deref(), Some("1.0"));
}

#[test]
fn gateway_tokens_register_devices_within_their_scope() {
    let f = Fleet::start_with_args(&["--ddi-poll-secs", "2"]);
    f.ok(&["targets", "add-ddi", "dev-x", "--labels", "site=other"]);
    let g = f.json(&["enrol-tokens", "create", "--gateway", "--labels", "site=plant", "--uses", "1"]);
    assert_eq!(g["gateway"], true, "{g:#}");
    let secret = g["token"].as_str().unwrap().to_owned();
    let auth = format!("GatewayToken {secret}");
    let get = |controller: &str, auth: &str| {
        request(f.port, "GET", &format!("/DEFAULT/controller/v1/{controller}"), &[("Authorization", auth)], b"")
    };
    let a = get("gw-1", &auth);
    assert_eq!(a.status, 200, "{}", a.text());
    let t = f.json(&["targets", "show", "ddi-gw-1"]);
    assert_eq!(t["target"]["labels"], serde_json::json!({"site": "plant"}), "the token's labels: {t:#}");
    assert_eq!(t["target"]["inventory"]["kind"], "ddi");
    assert_eq!(get("gw-1", &auth).status, 200, "a registered device goes on with the used-up token");
    assert_eq!(get("gw-2", &auth).status, 401, "used up: it registers no more");
    assert!(f.json(&["targets"]).as_array().unwrap().iter().all(|t| t["id"] != "ddi-gw-2"));
    assert_eq!(get("dev-x", &auth).status, 403, "outside the token's scope");
    // a device with its own TargetToken, even within the scope, is not the gateway's
    f.ok(&["targets", "add-ddi", "dev-own", "--labels", "site=plant"]);
    let a = get("dev-own", &auth);
    assert_eq!(a.status, 403, "{}", a.text());
    assert!(a.text().contains("not registered through gateway token"), "{}", a.text());
    assert_eq!(get("bad/../id", &auth).status, 404, "not a controller path");
    assert_eq!(get("bad%20id", &auth).status, 400, "a controller id out of charset");
    // the agents' enrolment token is not a gateway token
    assert_eq!(get("gw-3", &format!("GatewayToken {ENROL}")).status, 401);
    let audit = f.ok(&["audit"]);
    assert!(audit.contains("registered from 127.0.0.1 through gateway token"), "{audit}");
    // revoked: at once
    f.ok(&["enrol-tokens", "revoke", g["id"].as_str().unwrap()]);
    assert_eq!(get("gw-1", &auth).status, 401);
    // removing a device revokes its TargetToken
    let token = f.ok(&["targets", "add-ddi", "dev-y"]).trim().to_owned();
    assert_eq!(get("dev-y", &format!("TargetToken {token}")).status, 200);
    f.ok(&["targets", "remove", "ddi-dev-y"]);
    assert_eq!(get("dev-y", &format!("TargetToken {token}")).status, 401);
    // bad input to the operator's call changes nothing
    for bad in ["", "a/b", "x y", &"z".repeat(65)] {
        let out = f.cli(&["targets", "add-ddi", bad]);
        assert!(!out.status.success(), "{bad:?} accepted");
    }
    let out = f.cli(&["targets", "add-ddi", "dev-x"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already known"), "{}", String::from_utf8_lossy(&out.stderr));
}
