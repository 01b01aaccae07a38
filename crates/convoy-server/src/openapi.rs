//! The OpenAPI 3.0 description of `/api/v1`, served at
//! `/api/v1/openapi.json`. A test checks it names every route the router has.

use serde_json::{json, Value};

/// Every `(method, path)` the API serves, as the router declares them.
#[cfg(test)]
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/health"),
    ("get", "/openapi.json"),
    ("post", "/chunks/missing"),
    ("post", "/chunks/fetch"),
    ("put", "/chunks/{id}"),
    ("get", "/chunks/{id}"),
    ("post", "/releases"),
    ("get", "/releases"),
    ("get", "/releases/{app}/{version}"),
    ("get", "/releases/{app}/{version}/manifest"),
    ("get", "/releases/{app}/{version}/manifest.zst"),
    ("get", "/releases/{app}/{version}/delta"),
    ("get", "/releases/{app}/{version}/stream"),
    ("post", "/releases/{app}/{version}/sync"),
    ("get", "/releases/{app}/{version}/changes"),
    ("get", "/targets"),
    ("get", "/targets/{id}"),
    ("delete", "/targets/{id}"),
    ("post", "/deployments"),
    ("get", "/deployments"),
    ("get", "/deployments/{id}"),
    ("post", "/deployments/{id}/rollback"),
    ("post", "/deployments/{id}/pause"),
    ("post", "/deployments/{id}/retry"),
    ("post", "/deployments/{id}/resume"),
    ("patch", "/deployments/{id}"),
    ("post", "/deployments/{id}/approve"),
    ("post", "/deployments/{id}/reject"),
    ("post", "/deployments/{id}/confirm"),
    ("post", "/deployments/{id}/cancel"),
    ("get", "/requests"),
    ("post", "/users"),
    ("get", "/users"),
    ("delete", "/users/{name}"),
    ("get", "/envs"),
    ("put", "/envs/{name}"),
    ("get", "/envs/{name}"),
    ("get", "/audit"),
    ("post", "/agent/enroll"),
    ("get", "/agent/work"),
    ("post", "/agent/report"),
    ("post", "/agent/progress"),
    ("put", "/agent/inventory"),
    ("get", "/agent/me"),
    ("post", "/agent/site-poll"),
    ("post", "/agent/refused"),
    ("patch", "/targets/{id}/labels"),
    ("get", "/relays"),
    ("put", "/relays/{id}"),
    ("delete", "/relays/{id}"),
    ("post", "/enrol-tokens"),
    ("get", "/enrol-tokens"),
    ("post", "/ddi/targets"),
    ("delete", "/enrol-tokens/{id}"),
    ("post", "/users/{name}/token"),
    ("get", "/tuf/metadata/{file}"),
    ("get", "/tuf/targets/{app}/{version}/{file}"),
    ("put", "/tuf/root"),
    ("put", "/tuf/targets"),
    ("put", "/tuf/delegated/{role}"),
    ("put", "/tuf/delegations/{role}"),
    ("post", "/users/{name}/keys"),
    ("get", "/users/{name}/keys"),
    ("get", "/envs/{name}/approvers"),
    ("get", "/deployments/{id}/statement"),
];

fn op(summary: &str, who: &str, body: Option<&str>, ok: Value) -> Value {
    let mut o = json!({
        "summary": summary,
        "description": format!("Caller: {who}."),
        "responses": {
            "200": ok,
            "400": {"$ref": "#/components/responses/Error"},
            "401": {"$ref": "#/components/responses/Error"},
            "403": {"$ref": "#/components/responses/Error"},
            "404": {"$ref": "#/components/responses/Error"},
            "409": {"$ref": "#/components/responses/Error"},
            "413": {"$ref": "#/components/responses/Error"}
        }
    });
    if let Some(schema) = body {
        o["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    }
    o
}

/// `o` with query parameters.
fn with_query(mut o: Value, params: Value) -> Value {
    o["parameters"] = params;
    o
}

fn json_ok(schema: &str) -> Value {
    json!({"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn list_ok(schema: &str) -> Value {
    json!({"description": "OK", "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": format!("#/components/schemas/{schema}")}}}}})
}

fn bytes_ok(kind: &str) -> Value {
    json!({"description": "OK", "content": {kind: {"schema": {"type": "string", "format": "binary"}}}})
}

fn path_params(names: &[&str]) -> Value {
    Value::Array(
        names
            .iter()
            .map(|n| json!({"name": n, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect(),
    )
}

/// The wire types' schemas, derived from the Rust types (and their serde
/// attributes) by utoipa, so they cannot drift from what the server sends
/// and accepts.
#[derive(utoipa::OpenApi)]
#[openapi(components(schemas(
    convoy_wire::ErrorBody,
    convoy_wire::ChunkIds,
    convoy_wire::Decision,
    convoy_wire::DeployRequest,
    convoy_wire::DeploymentDetail,
    convoy_wire::DeploymentInfo,
    convoy_wire::EnrollRequest,
    convoy_wire::EnrollResponse,
    convoy_wire::EnvInfo,
    convoy_wire::EventInfo,
    convoy_wire::Inventory,
    convoy_wire::NewUser,
    convoy_wire::ProgressReport,
    convoy_wire::PublishRequest,
    convoy_wire::PublishResponse,
    convoy_wire::ReleaseInfo,
    convoy_wire::Report,
    convoy_wire::ReportResponse,
    convoy_wire::RequestInfo,
    convoy_wire::ReviseRequest,
    convoy_wire::TargetDetail,
    convoy_wire::TargetInfo,
    convoy_wire::UserInfo,
    convoy_wire::WorkResponse,
    convoy_wire::ddi::NewDdiTarget,
    convoy_wire::ddi::DdiTargetCreated,
    convoy_domain::Policy,
)))]
struct Schemas;

fn schemas() -> Value {
    use utoipa::OpenApi;
    let doc = serde_json::to_value(Schemas::openapi()).expect("schemas serialize");
    doc["components"]["schemas"].clone()
}

pub fn document() -> Value {
    let mut doc = paths_and_components();
    // every operation may answer with the common errors
    if let Some(paths) = doc["paths"].as_object_mut() {
        for item in paths.values_mut().filter_map(Value::as_object_mut) {
            for (method, op) in item.iter_mut() {
                if method == "parameters" {
                    continue;
                }
                if let Some(responses) = op["responses"].as_object_mut() {
                    for code in ["400", "401", "403", "404", "409", "413", "429"] {
                        responses.entry(code).or_insert_with(|| json!({"$ref": "#/components/responses/Error"}));
                    }
                }
            }
        }
    }
    doc
}

fn paths_and_components() -> Value {
    let op_ = "operator token";
    let agent = "agent token";
    json!({
        "openapi": "3.1.0",
        "info": {"title": "convoy", "version": env!("CARGO_PKG_VERSION"), "description": "Release orchestration for fleets. Every time is unix milliseconds (UTC). Authenticate with `Authorization: Bearer <token>`."},
        "servers": [{"url": convoy_wire::API}],
        "security": [{"bearer": []}],
        "paths": {
            "/health": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "OK"}}}},
            "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OK"}}}},
            "/chunks/missing": {"post": op("Which of these chunks the server lacks", op_, Some("ChunkIds"), json_ok("ChunkIds"))},
            "/chunks/fetch": {"post": op("Many chunks in one response: per chunk 32 bytes id, u32 big-endian length, zstd bytes", "operator or agent token", Some("ChunkIds"), bytes_ok("application/octet-stream"))},
            "/chunks/{id}": {
                "parameters": path_params(&["id"]),
                "put": {"summary": "Upload one zstd-compressed chunk; refused unless its bytes hash to the id", "description": "Caller: operator token.", "requestBody": {"required": true, "content": {"application/zstd": {"schema": {"type": "string", "format": "binary"}}}}, "responses": {"204": {"description": "Stored"}, "400": {"$ref": "#/components/responses/Error"}, "413": {"$ref": "#/components/responses/Error"}}},
                "get": op("One chunk, zstd-compressed", "operator or agent token", None, bytes_ok("application/zstd"))
            },
            "/releases": {
                "post": op("Publish a release; every chunk it names must have been uploaded", op_, Some("PublishRequest"), json_ok("PublishResponse")),
                "get": op("Releases, newest first", op_, None, list_ok("ReleaseInfo"))
            },
            "/releases/{app}/{version}": {"parameters": path_params(&["app", "version"]), "get": op("One release", "operator or agent token", None, json_ok("ReleaseInfo"))},
            "/releases/{app}/{version}/manifest": {"parameters": path_params(&["app", "version"]), "get": op("The canonical manifest; its BLAKE3 is the root digest", "operator or agent token", None, bytes_ok("application/json"))},
            "/releases/{app}/{version}/manifest.zst": {"parameters": path_params(&["app", "version"]), "get": op("The canonical manifest, zstd-compressed; with ?base=VERSION a zstd patch against that release's manifest (named by x-convoy-manifest-base)", "operator or agent token", None, bytes_ok("application/zstd"))},
            "/releases/{app}/{version}/delta": {"parameters": path_params(&["app", "version"]), "get": op("The release delta from ?from=VERSION (format convoy-delta-5): per-file patch sections (LEB128 length + zstd frame against a window of the reference file, per 16 MiB segment; one-segment files have a byte before the frame, 1 when the two files patched just before precede the window; length 0 = the same bytes at the same offset), one zstd stream of the wholly new files, the manifest skeleton (how to have each file: same, copy, patch, literal, chunks) as a zstd patch of the old one, and a trailer of three 8-byte lengths. Headers x-convoy-delta-format, x-convoy-delta-from (old manifest digest), x-convoy-release-size; 204 with x-convoy-delta-skip when the missing chunks cost less; 202 while it is being made", "operator or agent token", None, bytes_ok("application/octet-stream"))},
            "/releases/{app}/{version}/sync": {"parameters": path_params(&["app", "version"]), "post": op("A drifted machine's files: a zstd-compressed JSON body {files: [{path, have: {known: {version, path}} | {signatures: {size, block, sums (hex)}} | nothing}]}. The answer, per file in order: 1 byte kind (0 nothing: fetch chunks; 1 zstd patch of the known published file; 2 copy/literal instructions against the machine's own bytes; 3 the file zstd-compressed, for {nothing}), 8-byte big-endian length, payload", "operator or agent token", None, bytes_ok("application/octet-stream"))},
            "/releases/{app}/{version}/stream": {"parameters": path_params(&["app", "version"]), "get": op("The first-install stream: a convoy-delta-5 delta from no release (every file in one zstd stream; the receiver cuts chunks and checks the rebuilt manifest against the root digest). Headers x-convoy-delta-format, x-convoy-release-size; 204 with x-convoy-delta-skip when chunks cost less; 202 while it is being made", "operator or agent token", None, bytes_ok("application/octet-stream"))},
            "/releases/{app}/{version}/changes": {"parameters": path_params(&["app", "version"]), "get": op("What the upgrade from ?from=VERSION changes: paths added, removed, changed, changed bytes, machine-owned config files whose defaults changed, the migrate hook", "operator or agent token", None, json!({"description": "OK"}))},
            "/targets": {"get": op("Enrolled targets with inventory", op_, None, list_ok("TargetInfo"))},
            "/targets/{id}": {"parameters": path_params(&["id"]), "get": op("A target and its last 50 deployments, most recently changed first", op_, None, json_ok("TargetDetail")), "delete": op("Forget a decommissioned target and revoke its credential; refused while it has unfinished work", op_, None, json!({"description": "Removed"}))},
            "/deployments": {
                "post": op("Deploy a release to the targets a selector picks", op_, Some("DeployRequest"), json_ok("DeploymentInfo")),
                "get": with_query(op("The last 100 deployments, or every one made from a release plan (?plan=NAME)", op_, None, list_ok("DeploymentInfo")), json!([{"name": "plan", "in": "query", "required": false, "schema": {"type": "string"}, "description": "a release plan's name (convoy plan apply)"}]))
            },
            "/deployments/{id}": {"parameters": path_params(&["id"]), "get": with_query(op("A deployment: counts per state and wave, a page of its targets (instruction id order; filtered by state, wave, label), their events, approvals, preflight results and plan", op_, None, json_ok("DeploymentDetail")), json!([{"name": "state", "in": "query", "required": false, "schema": {"type": "string"}, "description": "instruction states, comma-separated"}, {"name": "wave", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0}}, {"name": "label", "in": "query", "required": false, "schema": {"type": "string"}, "description": "a label selector (site=berlin)"}, {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 2000}}, {"name": "after", "in": "query", "required": false, "schema": {"type": "string"}, "description": "the previous page's next"}, {"name": "late", "in": "query", "required": false, "schema": {"type": "boolean"}, "description": "also name targets the selector matches that were left out (reads every target)"}])), "patch": op("Change a request (selector, at, clear_at, reason); approvals given so far are void", "the requester (deployer) or an admin", Some("ReviseRequest"), json_ok("DeploymentInfo"))},
            "/deployments/{id}/rollback": {"parameters": path_params(&["id"]), "post": op("Bring every target back to the release it had before", op_, None, json_ok("DeploymentInfo"))},
            "/deployments/{id}/approve": {"parameters": path_params(&["id"]), "post": op("Approve a request ({note}); never the requester's own; each approver counts once per revision", "operator token with the environment's approver role", Some("Decision"), json_ok("DeploymentInfo"))},
            "/deployments/{id}/reject": {"parameters": path_params(&["id"]), "post": op("Reject a request ({note}, required); ends it", "operator token with the environment's approver role", Some("Decision"), json_ok("DeploymentInfo"))},
            "/deployments/{id}/confirm": {"parameters": path_params(&["id"]), "post": op("Confirm a request whose preflight passed: plans its waves and creates its instructions", "deployer", None, json_ok("DeploymentInfo"))},
            "/deployments/{id}/cancel": {"parameters": path_params(&["id"]), "post": op("Cancel a request before staging", "deployer", None, json_ok("DeploymentInfo"))},
            "/requests": {"get": {"summary": "Requests waiting for the caller (to approve or confirm); ?all=true: every open request", "description": "Caller: viewer.", "parameters": [{"name": "all", "in": "query", "required": false, "schema": {"type": "boolean"}}], "responses": {"200": list_ok("RequestInfo")}}},
            "/users": {
                "post": op("Add a user with a role (viewer, deployer, approver, admin); its API token is in the answer, once", "admin", Some("NewUser"), json_ok("UserInfo")),
                "get": op("Users and their roles", "admin", None, list_ok("UserInfo"))
            },
            "/users/{name}": {"parameters": path_params(&["name"]), "delete": op("Remove a user and revoke its token", "admin", None, json!({"description": "Removed"}))},
            "/envs": {"get": op("Environments and their policy", "viewer", None, list_ok("EnvInfo"))},
            "/envs/{name}": {
                "parameters": path_params(&["name"]),
                "put": op("Create or replace an environment's policy", "admin", Some("Policy"), json_ok("EnvInfo")),
                "get": op("One environment", "viewer", None, json_ok("EnvInfo"))
            },
            "/audit": {"get": {"summary": "The audit log, newest first: every state change of requests, deployments, instructions, users and environments", "description": "Caller: viewer.", "parameters": [{"name": "deployment", "in": "query", "required": false, "schema": {"type": "string"}}, {"name": "actor", "in": "query", "required": false, "schema": {"type": "string"}, "description": "a user name, or user:NAME, agent:ID, scheduler"}, {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "maximum": 10000}}], "responses": {"200": list_ok("EventInfo")}}},
            "/agent/enroll": {"post": op("Enrol a new agent; returns its own token, once", "enrolment token", Some("EnrollRequest"), json_ok("EnrollResponse"))},
            "/agent/work": {"get": {
                "summary": "This agent's pending work; held open up to `wait` seconds while there is none",
                "description": "Caller: agent token.",
                "parameters": [{"name": "wait", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0, "maximum": 60}}],
                "responses": {"200": json_ok("WorkResponse"), "401": {"$ref": "#/components/responses/Error"}, "403": {"$ref": "#/components/responses/Error"}}
            }},
            "/agent/report": {"post": op("Report on a piece of work", agent, Some("Report"), json_ok("ReportResponse"))},
            "/agent/progress": {"post": op("Staging progress (kept in memory only)", agent, Some("ProgressReport"), json!({"description": "Noted"}))},
            "/agent/inventory": {"put": op("Replace this agent's inventory", agent, Some("Inventory"), json!({"description": "OK"}))},
            "/agent/site-poll": {"post": op("A relay's long poll for its site's agents: {epoch, wait, targets: [{id, gen}]} returns, once any target's work generation differs, {epoch, targets: [{id, gen, work}]}; only relays, only for targets of their site", agent, None, json!({"description": "OK"}))},
            "/agent/me": {"get": op("Who the agent is to the server: {target_id, labels, server_key, grant, grant_expires_at, relay_site}; the grant is what it shows relays and mirrors (header x-convoy-grant) instead of its token", agent, None, json!({"description": "OK"}))},
            "/tuf/metadata/{file}": {"parameters": path_params(&["file"]), "get": op("TUF metadata: ROLE.json (the newest) or N.ROLE.json, for root, targets, snapshot, timestamp; canonical-JSON signed, ed25519", "operator or agent token, or a read grant", None, bytes_ok("application/json"))},
            "/tuf/targets/{app}/{version}/{file}": {"parameters": path_params(&["app", "version", "file"]), "get": op("A release's canonical manifest as a TUF target: manifest.json, or SHA256.manifest.json (consistent snapshots)", "operator or agent token, or a read grant", None, bytes_ok("application/json"))},
            "/tuf/root": {"put": op("Install a root made offline ({root, targets}): version N+1, signed by its own and the current root's threshold (the server co-signs while it holds the current root key), giving timestamp and snapshot to the server's online keys, with the targets re-signed by the new targets keys; audited", "admin", None, json!({"description": "OK"}))},
            "/tuf/targets": {"put": op("Targets metadata signed offline by the root's targets keys (the next version); the server adds snapshot and timestamp; audited", "deployer", None, json!({"description": "OK"}))},
            "/agent/refused": {"post": op("An agent refused work that did not verify against the server's key: {source, reason, instruction_id}; audited and shown in the target's status", agent, None, json!({"description": "OK"}))},
            "/targets/{id}/labels": {"parameters": path_params(&["id"]), "patch": op("Set ({set: {k: v}}) and remove ({remove: [k]}) a target's labels; the only way labels change after enrolment; audited", "admin", None, json_ok("TargetInfo"))},
            "/relays": {"get": op("Relays and the sites operators granted them", "viewer", None, json!({"description": "OK"}))},
            "/relays/{id}": {"parameters": path_params(&["id"]),
                "put": op("Make a target a site's relay ({site, url}); audited", "admin", None, json!({"description": "OK"})),
                "delete": op("The target stops being a relay; audited", "admin", None, json!({"description": "OK"}))},
            "/enrol-tokens": {
                "post": op("Make an enrolment token ({labels, expires_in_secs, uses, gateway}; gateway: a hawkBit DDI GatewayToken); its secret is in the answer, once", "admin", None, json!({"description": "OK"})),
                "get": op("Enrolment tokens: label scope, expiry, uses, revocation", "admin", None, json!({"description": "OK"}))},
            "/ddi/targets": {
                "post": op("Add a device that speaks hawkBit DDI ({controller_id, labels}) before it polls; its TargetToken is in the answer, once; audited. Devices poll /{tenant}/controller/v1/{controllerId} (hawkBit's DDI API v1, outside /api/v1)", "admin", Some("NewDdiTarget"), json_ok("DdiTargetCreated"))},
            "/enrol-tokens/{id}": {"parameters": path_params(&["id"]), "delete": op("Revoke an enrolment token; audited", "admin", None, json!({"description": "OK"}))},
            "/deployments/{id}/pause": {"parameters": path_params(&["id"]), "post": op("Pause a deployment under way ({note}: the reason): no new wave starts; staging goes on; audited", "deployer", Some("Decision"), json_ok("DeploymentInfo"))},
            "/deployments/{id}/retry": {"parameters": path_params(&["id"]), "post": op("Retry a finished deployment's failed or canceled targets ({note, targets: [ID or hostname]}); healthy targets are untouched; audited", "deployer", None, json_ok("DeploymentInfo"))},
            "/deployments/{id}/resume": {"parameters": path_params(&["id"]), "post": op("Resume a paused deployment ({note}: the reason); audited", "deployer", Some("Decision"), json_ok("DeploymentInfo"))},
            "/tuf/delegated/{role}": {"parameters": path_params(&["role"]), "put": op("A delegated role's metadata signed by its keys (an app's publisher keys): the next version, only paths delegated to it; audited", "deployer", None, json!({"description": "OK"}))},
            "/tuf/delegations/{role}": {"parameters": path_params(&["role"]), "put": op("Single-box mode: {keys, threshold} for app-APP (publishers) or approve-ENV (approvers); the server signs the targets with the delegation; audited", "admin", None, json!({"description": "OK"}))},
            "/users/{name}/keys": {"parameters": path_params(&["name"]),
                "post": op("Register a public key (TUF key object) for signed approvals (admin, or the user itself); audited", "viewer", None, json!({"description": "OK"})),
                "get": op("A user's registered public keys", "viewer", None, json!({"description": "OK"}))},
            "/envs/{name}/approvers": {"parameters": path_params(&["name"]), "get": op("The keys and threshold the environment's approver role should name", "viewer", None, json!({"description": "OK"}))},
            "/deployments/{id}/statement": {"parameters": path_params(&["id"]), "get": op("The statement an approver signs (convoy_wire::approval::Statement)", "viewer", None, json!({"description": "OK"}))},
            "/users/{name}/token": {"parameters": path_params(&["name"]), "post": op("A new API token for a user (admin, or the user itself); the old one is revoked at once", "viewer", None, json!({"description": "OK"}))}
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Error": {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}},
            "schemas": schemas(),
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn document_names_every_route() {
        let doc = super::document();
        let paths = doc["paths"].as_object().unwrap();
        for (method, path) in super::ROUTES {
            assert!(
                paths.get(*path).and_then(|p| p.get(*method)).is_some(),
                "{method} {path} missing from openapi.json"
            );
        }
        let ops: usize =
            paths.values().map(|p| p.as_object().unwrap().keys().filter(|k| *k != "parameters").count()).sum();
        assert_eq!(ops, super::ROUTES.len(), "openapi.json names routes the router does not have");
    }

    /// Every documented route exists in the router: unauthenticated calls
    /// get 401 (or 200 for the open ones), never 404 or 405.
    #[tokio::test]
    async fn router_serves_every_documented_route() {
        use tower::ServiceExt;
        let dir = tempfile::tempdir().unwrap();
        let store = convoy_store_sqlite::SqliteStore::open(&dir.path().join("db")).await.unwrap();
        let chunks = convoy_pack::ChunkStore::open(dir.path().join("chunks")).unwrap();
        let deltas = crate::app::content::Deltas::open(dir.path().join("deltas")).unwrap();
        let key = convoy_wire::sign::ServerKey::from_secret(&convoy_wire::sign::ServerKey::generate().1).unwrap();
        let app = crate::router(crate::AppState::new(std::sync::Arc::new(store), chunks, deltas, key));
        for (method, path) in super::ROUTES {
            let uri = format!(
                "{}{}",
                convoy_wire::API,
                path.replace("{id}", "x").replace("{app}", "a").replace("{version}", "1")
            );
            let req = axum::http::Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(&uri)
                .body(axum::body::Body::empty())
                .unwrap();
            let status = app.clone().oneshot(req).await.unwrap().status().as_u16();
            assert!(status == 401 || status == 200, "{method} {uri}: {status}");
        }
    }
}
