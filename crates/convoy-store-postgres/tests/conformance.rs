//! Runs against a real PostgreSQL: `CONVOY_TEST_DATABASE_URL`, else this
//! machine's own (`postgres://postgres@127.0.0.1:5432/test`). Left out, and
//! shown as ignored, by a plain `cargo test`; the README's test command and
//! CI run it with `--include-ignored`. Each run uses a schema of its own and
//! drops it.

#[tokio::test]
#[ignore = "needs PostgreSQL (CONVOY_TEST_DATABASE_URL, else 127.0.0.1:5432): cargo test -- --include-ignored"]
async fn postgres_passes_the_conformance_suite() {
    let url = std::env::var("CONVOY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = format!("convoy_test_{:016x}", rand::random::<u64>());
    let store = match convoy_store_postgres::PgStore::connect(&url, Some(&schema)).await {
        Ok(store) => store,
        Err(e) => panic!(
            "PostgreSQL at {url} does not answer ({e}): start it, or set CONVOY_TEST_DATABASE_URL to one that runs"
        ),
    };
    convoy_store::conformance::run(&store).await;
    drop(store);
    let again = convoy_store_postgres::PgStore::connect(&url, Some(&schema)).await.unwrap();
    use convoy_store::Store;
    assert_eq!(again.list_releases().await.unwrap().len(), 1);
    again.drop_schema(&schema).await.unwrap();
}

/// A batch whose write fails part-way (a trigger refuses one move) is
/// rolled back whole, and the pool goes on writing.
#[tokio::test]
#[ignore = "needs PostgreSQL (CONVOY_TEST_DATABASE_URL, else 127.0.0.1:5432): cargo test -- --include-ignored"]
async fn a_failed_batch_changes_nothing() {
    let url = std::env::var("CONVOY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = format!("convoy_test_{:016x}", rand::random::<u64>());
    let store = convoy_store_postgres::PgStore::connect(&url, Some(&schema)).await.unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&url).await.unwrap();
    sqlx::raw_sql(&format!(
        "CREATE FUNCTION {schema}.refuse() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.note = 'refused' THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$; \
         CREATE TRIGGER refuse BEFORE UPDATE ON {schema}.instructions FOR EACH ROW EXECUTE FUNCTION {schema}.refuse()"
    ))
    .execute(&pool)
    .await
    .unwrap();
    convoy_store::conformance::failed_batch(&store).await;
    store.drop_schema(&schema).await.unwrap();
}
