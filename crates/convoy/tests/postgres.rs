//! The whole path with the server on PostgreSQL, including a server kill.
//! Run with `--include-ignored` (the README's test command and CI do).

mod common;

use std::time::Duration;

use common::*;

#[test]
#[ignore = "needs PostgreSQL (CONVOY_TEST_DATABASE_URL, else 127.0.0.1:5432): cargo test -- --include-ignored"]
fn end_to_end_on_postgres() {
    let url = postgres_url();
    let schema = format!("convoy_e2e_{:016x}", rand::random::<u64>());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store = rt.block_on(convoy_store_postgres::PgStore::connect(&url, Some(&schema))).unwrap();
    let sep = if url.contains('?') { '&' } else { '?' };
    let mut f = Fleet::start_with(Some(format!("{url}{sep}options[search_path]={schema}")));
    let log = f.server.as_ref().unwrap().log_text();
    assert!(log.contains("(postgres database"), "{log}");
    f.start_agent("a", "role=web", &[], &[]);
    f.start_agent("b", "role=web", &[], &[]);

    for (v, at) in [("1.0", None), ("2.0", Some("+3s"))] {
        let src = f.path(&format!("src/{v}"));
        write_app(&src, v, 200_000);
        f.ok(&["publish", src.to_str().unwrap(), "--app", "web", "--version", v]);
        let mut args = vec!["deploy", &*format!("web@{v}"), "--selector", "role=web"]
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        if let Some(at) = at {
            args.extend(["--at".to_owned(), at.to_owned()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let id = f.json(&args)["id"].as_str().unwrap().to_owned();
        if at.is_some() {
            // crash the server while the deployment is under way
            f.kill_server();
            f.start_server();
        }
        let d = f.wait_state(&id, &["succeeded", "failed", "rolled_back"], Duration::from_secs(90));
        assert_eq!(d["deployment"]["state"], "succeeded", "{d:#}");
    }
    assert_eq!(f.live("web"), vec![("a".into(), Some("2.0".into())), ("b".into(), Some("2.0".into()))]);
    let deployments = f.json(&["deployments"]);
    let id = deployments[0]["id"].as_str().unwrap().to_owned();
    f.ok(&["rollback", &id, "--wait"]);
    assert_eq!(f.live("web"), vec![("a".into(), Some("1.0".into())), ("b".into(), Some("1.0".into()))]);
    drop(f);
    rt.block_on(store.drop_schema(&schema)).unwrap();
}
