//! Runs against a real PostgreSQL whenever `CONVOY_TEST_DATABASE_URL` is set
//! (CI always sets it). Each run uses a schema of its own and drops it.

#[tokio::test]
async fn postgres_passes_the_conformance_suite() {
    let Ok(url) = std::env::var("CONVOY_TEST_DATABASE_URL") else {
        eprintln!("CONVOY_TEST_DATABASE_URL is not set: PostgreSQL conformance not run");
        return;
    };
    let schema = format!("convoy_test_{:016x}", rand::random::<u64>());
    let store = convoy_store_postgres::PgStore::connect(&url, Some(&schema)).await.unwrap();
    convoy_store::conformance::run(&store).await;
    drop(store);
    let again = convoy_store_postgres::PgStore::connect(&url, Some(&schema)).await.unwrap();
    use convoy_store::Store;
    assert_eq!(again.list_releases().await.unwrap().len(), 1);
    again.drop_schema(&schema).await.unwrap();
}
