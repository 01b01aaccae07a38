#[tokio::test]
async fn sqlite_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = convoy_store_sqlite::SqliteStore::open(&dir.path().join("convoy.db")).await.unwrap();
    convoy_store::conformance::run(&store).await;
    drop(store);
    // reopening runs no migration twice and keeps the data
    let again = convoy_store_sqlite::SqliteStore::open(&dir.path().join("convoy.db")).await.unwrap();
    use convoy_store::Store;
    assert_eq!(again.list_releases().await.unwrap().len(), 1);
}

/// The poll cache in front of the database answers exactly as it does.
#[tokio::test]
async fn sqlite_behind_the_cache_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = convoy_store_sqlite::SqliteStore::open(&dir.path().join("convoy.db")).await.unwrap();
    let cached = convoy_store::CachedStore::new(std::sync::Arc::new(store));
    convoy_store::conformance::run(&cached).await;
    convoy_store::conformance::cache(&cached).await;
}

/// A database made by the first schema, with data, upgrades in place.
#[tokio::test]
async fn schema_1_databases_upgrade() {
    use convoy_store::Store;
    use sqlx::ConnectOptions;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let mut c =
            sqlx::sqlite::SqliteConnectOptions::new().filename(&path).create_if_missing(true).connect().await.unwrap();
        sqlx::raw_sql(include_str!("../migrations/0001_init.sql")).execute(&mut c).await.unwrap();
        sqlx::raw_sql(
            "CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (1);
             INSERT INTO releases VALUES ('web', '1', 'aa', x'7b7d', 1, 1, 1, 1);
             INSERT INTO deployments (id, app, version, digest, selector, state, go_live_at, max_failures, created_by, created_at, updated_at, note)
             VALUES ('d-old', 'web', '1', 'aa', '', 'succeeded', NULL, 0, 'admin', 1, 1, 'done');",
        )
        .execute(&mut c)
        .await
        .unwrap();
    }
    let store = convoy_store_sqlite::SqliteStore::open(&path).await.unwrap();
    let d = store.get_deployment("d-old").await.unwrap().unwrap();
    assert_eq!((d.stage_deadline, d.activate_timeout_ms), (None, 900_000));
}

/// Commits leave the WAL to the store's own checkpointer: within a few
/// seconds of the last commit the database file holds every page.
#[tokio::test]
async fn the_checkpointer_copies_the_wal_beside_the_writer() {
    use convoy_store::Store;
    use sqlx::Row;
    let (dir, path, store) = after_the_suite().await;
    assert!(std::fs::metadata(dir.path().join("convoy.db-wal")).unwrap().len() > 0, "the suite wrote to the WAL");
    // a reader only: it never checkpoints while the store's connections live
    let mut c = reader(&path).await;
    let pages = |r: sqlx::sqlite::SqliteRow| r.get::<i64, _>(0) as u64;
    let size = pages(sqlx::query("PRAGMA page_count").fetch_one(&mut c).await.unwrap())
        * pages(sqlx::query("PRAGMA page_size").fetch_one(&mut c).await.unwrap());
    let mut on_disk = 0;
    for _ in 0..50 {
        on_disk = std::fs::metadata(&path).unwrap().len();
        if on_disk >= size {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(on_disk, size, "the database file holds every committed page");
    assert_eq!(store.list_releases().await.unwrap().len(), 1);
}

/// A batch whose write fails part-way (a trigger refuses one move) is
/// rolled back whole, and the writer's connection goes on writing.
#[tokio::test]
async fn a_failed_batch_changes_nothing() {
    use sqlx::ConnectOptions;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("convoy.db");
    let store = convoy_store_sqlite::SqliteStore::open(&path).await.unwrap();
    let mut c = sqlx::sqlite::SqliteConnectOptions::new().filename(&path).connect().await.unwrap();
    sqlx::raw_sql(
        "CREATE TRIGGER refuse BEFORE UPDATE ON instructions WHEN NEW.note = 'refused' \
         BEGIN SELECT RAISE(ABORT, 'refused'); END",
    )
    .execute(&mut c)
    .await
    .unwrap();
    drop(c);
    convoy_store::conformance::failed_batch(&store).await;
}

/// A target's open instructions are looked up through the index on
/// (target_id, done), so a target's finished history (an instruction for
/// every deployment it was ever in) is never read for them; and `done`
/// follows the state.
#[tokio::test]
async fn open_instructions_are_found_by_target_and_done() {
    use sqlx::Row;
    let (_dir, path, _store) = after_the_suite().await;
    let mut c = reader(&path).await;
    let plan: Vec<String> = sqlx::query(
        "EXPLAIN QUERY PLAN SELECT id FROM instructions WHERE target_id = ?1 AND done = FALSE \
         AND state IN ('created', 'sent', 'received', 'staged', 'activating', 'rolling_back') ORDER BY updated_at, id",
    )
    .bind("t-1")
    .fetch_all(&mut c)
    .await
    .unwrap()
    .iter()
    .map(|r| r.get::<String, _>("detail"))
    .collect();
    assert!(
        plan.iter().any(|d| d.contains("USING INDEX instructions_target_done (target_id=? AND done=?)")),
        "{plan:?}"
    );
    let wrong: i64 = sqlx::query(
        "SELECT COUNT(*) FROM instructions WHERE done != (state IN ('succeeded', 'failed', 'rolled_back', 'canceled', 'superseded'))",
    )
    .fetch_one(&mut c)
    .await
    .unwrap()
    .get(0);
    let all: i64 = sqlx::query("SELECT COUNT(*) FROM instructions").fetch_one(&mut c).await.unwrap().get(0);
    assert!(all > 0, "the suite made instructions");
    assert_eq!(wrong, 0, "done is true exactly for finished states");
}

/// A store in a directory of its own, after the whole conformance suite
/// ran on it (the directory, the database file, the store).
async fn after_the_suite() -> (tempfile::TempDir, std::path::PathBuf, convoy_store_sqlite::SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("convoy.db");
    let store = convoy_store_sqlite::SqliteStore::open(&path).await.unwrap();
    convoy_store::conformance::run(&store).await;
    (dir, path, store)
}

/// A read-only connection of its own to the database file (it never
/// checkpoints while the store's connections live).
async fn reader(path: &std::path::Path) -> sqlx::SqliteConnection {
    use sqlx::ConnectOptions;
    sqlx::sqlite::SqliteConnectOptions::new().filename(path).read_only(true).connect().await.unwrap()
}
