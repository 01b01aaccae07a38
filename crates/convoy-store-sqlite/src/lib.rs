//! SQLite backend of [`convoy_store::Store`]: the embedded default, one file
//! in the server's data directory, WAL mode.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use convoy_store::StoreError;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::Row;

/// Schema migrations, applied in order at start-up.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_init.sql")),
    (2, include_str!("../migrations/0002_deadlines.sql")),
    (3, include_str!("../migrations/0003_workflow.sql")),
    (4, include_str!("../migrations/0004_trust.sql")),
    (5, include_str!("../migrations/0005_pause.sql")),
    (6, include_str!("../migrations/0006_targets.sql")),
    (7, include_str!("../migrations/0007_tuf.sql")),
    (8, include_str!("../migrations/0008_signed_approvals.sql")),
    (9, include_str!("../migrations/0009_events_instruction.sql")),
    (10, include_str!("../migrations/0010_plans_provenance.sql")),
];

pub struct SqliteStore {
    /// The one writer.
    pool: SqlitePool,
    /// Readers: WAL lets them run beside the writer.
    read: SqlitePool,
}

fn db(e: sqlx::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and migrates it.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::new().filename(path);
        Self::connect(opts).await
    }

    /// Opens a `sqlite://PATH` URL.
    pub async fn open_url(url: &str) -> Result<Self, StoreError> {
        Self::connect(SqliteConnectOptions::from_str(url).map_err(db)?).await
    }

    async fn connect(opts: SqliteConnectOptions) -> Result<Self, StoreError> {
        let opts = opts
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        // One writing connection: SQLite has one writer anyway, and a single
        // one rules out lock upgrades between writers. Reads go to a small
        // read-only pool, opened after the writer has migrated the file.
        let pool = SqlitePoolOptions::new().max_connections(1).connect_with(opts.clone()).await.map_err(db)?;
        let mut store = Self { read: pool.clone(), pool };
        store.migrate().await?;
        store.read =
            SqlitePoolOptions::new().max_connections(4).connect_with(opts.read_only(true)).await.map_err(db)?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            .execute(&self.pool)
            .await
            .map_err(db)?;
        let current: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM schema_version")
            .fetch_one(&self.pool)
            .await
            .map_err(db)?
            .try_get("v")
            .map_err(db)?;
        for (version, sql) in convoy_store::pending_migrations(current, MIGRATIONS)? {
            let mut tx = self.pool.begin().await.map_err(db)?;
            sqlx::raw_sql(sql).execute(&mut *tx).await.map_err(db)?;
            sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
                .bind(version)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            tx.commit().await.map_err(db)?;
        }
        Ok(())
    }
}

convoy_store::impl_sql_store!(SqliteStore, "sqlite", ::sqlx::sqlite::SqliteRow);
