//! PostgreSQL backend of [`convoy_store::Store`], chosen by a
//! `postgres://` database URL. Several servers may share one database.

use std::str::FromStr;

use convoy_store::StoreError;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::Row;

/// A pooled connection idle this long is pinged before it is used again.
const PING_IDLE: std::time::Duration = std::time::Duration::from_secs(5);

/// Schema migrations, applied in order at start-up under an advisory lock.
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
    (11, include_str!("../migrations/0011_instructions_page.sql")),
    (12, include_str!("../migrations/0012_events_actor_operators.sql")),
    (13, include_str!("../migrations/0013_instructions_target.sql")),
];

mod sets;

/// Advisory lock key taken while migrating, so two servers never race.
const MIGRATION_LOCK: i64 = 0x636f_6e76_6f79; // "convoy"

pub struct PgStore {
    pool: PgPool,
    /// The same pool: PostgreSQL needs no split between readers and writers.
    read: PgPool,
}

fn db(e: sqlx::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl PgStore {
    /// Connects and migrates. `schema`, if given, is created and used as the
    /// search path (tests use one schema each).
    pub async fn connect(url: &str, schema: Option<&str>) -> Result<Self, StoreError> {
        let mut opts = PgConnectOptions::from_str(url).map_err(db)?;
        if let Some(schema) = schema {
            if !schema.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(StoreError::Backend(format!("invalid schema name {schema:?}")));
            }
            let admin = PgPoolOptions::new().max_connections(1).connect_with(opts.clone()).await.map_err(db)?;
            sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}")).execute(&admin).await.map_err(db)?;
            admin.close().await;
            opts = opts.options([("search_path", schema)]);
        }
        // sqlx pings a connection as it goes back to the pool, and by
        // default again as it is taken out: a round trip to PostgreSQL
        // before every statement. One taken again soon after its release
        // ping skips the second; one idle for longer is pinged first, so
        // a connection the server dropped meanwhile is still replaced
        // before use.
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IDLE {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(opts)
            .await
            .map_err(db)?;
        let store = Self { read: pool.clone(), pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(MIGRATION_LOCK).execute(&mut *tx).await.map_err(db)?;
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let current: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM schema_version")
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?
            .try_get("v")
            .map_err(db)?;
        for (version, sql) in convoy_store::pending_migrations(current, MIGRATIONS)? {
            sqlx::raw_sql(sql).execute(&mut *tx).await.map_err(db)?;
            sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
                .bind(version)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }

    /// Drops a schema made by [`PgStore::connect`] (test clean-up).
    /// A session still holding a lock on it makes this fail after 10 s
    /// rather than wait.
    pub async fn drop_schema(self, schema: &str) -> Result<(), StoreError> {
        if !schema.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(StoreError::Backend(format!("invalid schema name {schema:?}")));
        }
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query("SET LOCAL lock_timeout = '10s'").execute(&mut *tx).await.map_err(db)?;
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).execute(&mut *tx).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        self.pool.close().await;
        Ok(())
    }
}

convoy_store::impl_sql_store!(PgStore, "postgres", ::sqlx::postgres::PgRow);
