//! SQLite backend of [`convoy_store::Store`]: the embedded default, one file
//! in the server's data directory, WAL mode.

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use convoy_store::StoreError;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::Row;

mod sets;

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
    (11, include_str!("../migrations/0011_instructions_page.sql")),
    (12, include_str!("../migrations/0012_events_actor_operators.sql")),
    (13, include_str!("../migrations/0013_instructions_target.sql")),
    (14, include_str!("../migrations/0014_instructions_done_kept.sql")),
];

pub struct SqliteStore {
    /// The one writer.
    pool: SqlitePool,
    /// Readers: WAL lets them run beside the writer.
    read: SqlitePool,
    /// Copies the WAL into the database file beside the writer.
    _checkpoints: Option<Checkpointer>,
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
            .busy_timeout(Duration::from_secs(10))
            // the checkpointer below copies the WAL into the database file
            // on its own connection, so a commit never waits for that copy
            // (and its fsyncs); a writer checkpoints only if the WAL grows
            // far past where the checkpointer acts (it is not running); the
            // WAL file shrinks back to JOURNAL_SIZE_LIMIT
            .pragma("wal_autocheckpoint", WAL_PAGES_FALLBACK.to_string())
            .pragma("journal_size_limit", JOURNAL_SIZE_LIMIT.to_string())
            // a multi-row UPDATE keeps a statement journal; in memory it
            // costs no file writes (it holds only the pages one statement
            // changes)
            .pragma("temp_store", "memory");
        // One writing connection: SQLite has one writer anyway, and a single
        // one rules out lock upgrades between writers. Reads go to a small
        // read-only pool, opened after the writer has migrated the file.
        // A connection to a local file does not go away, so neither pool
        // pings a connection as it takes it out (sqlx's default: one more
        // hand-over to the connection's thread and back per use).
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(opts.clone())
            .await
            .map_err(db)?;
        let mut store = Self { read: pool.clone(), pool, _checkpoints: None };
        store.migrate().await?;
        store.read = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .connect_with(opts.clone().read_only(true))
            .await
            .map_err(db)?;
        // a checkpoint that waits gives up soon, rather than holding the
        // write lock for the writers' 10 s
        store._checkpoints = Some(Checkpointer::start(opts.busy_timeout(CHECKPOINT_WAIT)));
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

/// How often the checkpointer copies committed WAL pages into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
/// How often while writes come fast (the WAL held more than
/// [`WAL_PAGES_BUSY`] pages at the last look, all of them copied).
const CHECKPOINT_BUSY: Duration = Duration::from_millis(100);
const WAL_PAGES_BUSY: i64 = 1_024;
/// WAL pages (4 KiB each) past which a checkpoint makes writers wait until
/// the WAL is copied whole (RESTART) instead of copying beside them, so
/// that the next writer starts the WAL over. Under writes that never pause
/// the WAL then stays well inside the file that `JOURNAL_SIZE_LIMIT` keeps:
/// a write into it overwrites pages the system holds, where a WAL growing
/// past its file makes every commit extend the file (BENCHMARKS.md,
/// "Control plane at scale", seventh session, has the measurement).
const WAL_PAGES_MAX: i64 = 4_096;
/// WAL pages past which a committing writer checkpoints itself (SQLite's
/// own automatic checkpoint), should the checkpointer not keep up.
const WAL_PAGES_FALLBACK: i64 = 262_144;
/// After a RESTART that could not finish (readers or the writer stayed
/// longer than [`CHECKPOINT_WAIT`]), how long until the next is tried.
const RESTART_BACKOFF: Duration = Duration::from_secs(5);
/// Longest the checkpointer waits for readers or the writer.
const CHECKPOINT_WAIT: Duration = Duration::from_millis(250);
/// Bytes the WAL file is cut back to once it was copied whole.
const JOURNAL_SIZE_LIMIT: u64 = 64 << 20;

/// A task checkpointing the WAL on its own connection (SQLite's automatic
/// checkpoint would run inside a committing writer), ended with the store.
struct Checkpointer(tokio::task::JoinHandle<()>);

impl Checkpointer {
    fn start(opts: SqliteConnectOptions) -> Self {
        Self(tokio::spawn(async move {
            let mut conn: Option<sqlx::SqliteConnection> = None;
            let mut every = CHECKPOINT_EVERY;
            let mut restart_after: Option<Instant> = None;
            loop {
                tokio::time::sleep(every).await;
                every = CHECKPOINT_EVERY;
                if conn.is_none() {
                    conn = match sqlx::ConnectOptions::connect(&opts).await {
                        Ok(c) => Some(c),
                        Err(e) => {
                            tracing::warn!(error = %e, "the WAL checkpointer cannot open the database; trying again");
                            None
                        }
                    };
                }
                let Some(c) = conn.as_mut() else { continue };
                // (busy, WAL pages, pages copied)
                match sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(&mut *c).await {
                    Ok(row) => {
                        let pages = row.try_get::<i64, _>(1).unwrap_or(0);
                        // all copied: no reader holds an older snapshot, so a
                        // RESTART waits only for the writer's transaction
                        // (a reader that holds one, a long export say, is
                        // not waited for with the writer held up)
                        let all = row.try_get::<i64, _>(2).unwrap_or(0) >= pages;
                        if all && pages > WAL_PAGES_MAX && restart_after.is_none_or(|t| Instant::now() >= t) {
                            let busy = sqlx::query("PRAGMA wal_checkpoint(RESTART)")
                                .fetch_one(&mut *c)
                                .await
                                .map_or(true, |r| r.try_get::<i64, _>(0).unwrap_or(1) != 0);
                            // one that could not finish is not tried again soon
                            restart_after = busy.then(|| Instant::now() + RESTART_BACKOFF);
                        }
                        if all && pages > WAL_PAGES_BUSY {
                            every = CHECKPOINT_BUSY;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "checkpointing the WAL failed; connecting again");
                        conn = None;
                    }
                }
            }
        }))
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

convoy_store::impl_sql_store!(SqliteStore, "sqlite", ::sqlx::sqlite::SqliteRow);
