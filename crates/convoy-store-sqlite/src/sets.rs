//! Set-wise writes of the report writer on SQLite: multi-row `VALUES`
//! lists, one UPDATE and one INSERT per thousand rows. A batch of one
//! round goes to the connection's thread as a single command, transaction
//! included ([`apply_alone`]); rounds of a bigger batch run inside the
//! caller's transaction. The UPDATE's list is padded with rows of NULLs (which
//! match nothing) to one of a few lengths, so that the connection's cache
//! of prepared statements holds them all instead of preparing a statement
//! for each batch size. The events' INSERT inside a caller's transaction
//! is not padded (its rows go in as listed); the one-command batch pads it
//! too, each row carrying its position to order by.

use convoy_store::{EventRecord, InstructionMove, StoreError, WriterHold};

use super::db;
use sqlx::pool::PoolConnection;
use sqlx::{Row, Sqlite, Transaction};

/// The padded length of a list of `n` rows: a multiple of 8 up to 64, of
/// 64 up to 512, then of 256 (at most 1,024 for 1,000 rows): about twenty
/// lengths.
fn padded(n: usize) -> usize {
    let step = match n {
        0..=64 => 8,
        65..=512 => 64,
        _ => 256,
    };
    n.div_ceil(step).max(1) * step
}

/// `(?, ?, ...), (...)`: `rows` tuples of `cols` parameters.
fn values(rows: usize, cols: usize) -> String {
    let one = format!("({})", vec!["?"; cols].join(", "));
    vec![one; rows].join(", ")
}

/// One round of the report writer: moves of distinct instructions, each
/// only if the instruction is still in its `from` state and attempt, and
/// an event for each that moved (inserted in the order given), inside the
/// caller's transaction. Returns the ids of those that moved.
pub(crate) async fn apply_round(
    tx: &mut Transaction<'_, Sqlite>,
    moves: &[&InstructionMove],
    now: i64,
) -> Result<Vec<String>, StoreError> {
    let moved: std::collections::HashMap<String, String> = apply_moves(tx, moves, now).await?.into_iter().collect();
    let events: Vec<EventRecord> = moves
        .iter()
        .filter_map(|m| {
            moved.get(&m.id).map(|dep| EventRecord {
                seq: 0,
                deployment_id: dep.clone(),
                instruction_id: Some(m.id.clone()),
                from_state: m.from.as_str().to_owned(),
                to_state: m.up.to.unwrap_or(m.from).as_str().to_owned(),
                actor: m.actor.clone(),
                note: m.up.note.clone(),
                at: now,
            })
        })
        .collect();
    insert_events(tx, &events).await?;
    Ok(moved.into_keys().collect())
}

/// A batch of one round, in a transaction of its own.
///
/// Up to [`ALONE`] moves go to the connection's thread as one command:
/// `BEGIN IMMEDIATE`, the events' INSERT, the guarded UPDATE and `COMMIT`
/// in one multi-statement query, so the batch costs one hand-over to that
/// thread and back instead of one per statement and one more for the
/// pool's check on acquire. The connection stays in `hold` for the
/// caller's next batch: sqlx checks a connection (one more hand-over) as
/// it goes back to the pool, and a run of batches skips that and the
/// acquire. Each hand-over waits for a core that the server's
/// requests share: measured at 20k targets, a batch of 32 took 1.25 ms as
/// BEGIN, UPDATE, INSERT and COMMIT, where this one command takes 0.86 ms.
/// The INSERT runs first and selects the instructions under the same
/// guard as the UPDATE: a round moves each instruction at most once, and
/// the IMMEDIATE transaction holds the write lock from its start, so both
/// see the same rows.
pub(crate) async fn apply_alone(
    pool: &sqlx::SqlitePool,
    hold: &mut WriterHold,
    moves: &[&InstructionMove],
    now: i64,
) -> Result<Vec<String>, StoreError> {
    let held = match hold.take::<PoolConnection<Sqlite>>() {
        Some(c) => c,
        None => pool.acquire().await.map_err(db)?,
    };
    if moves.len() > ALONE {
        let mut conn = held;
        let mut tx = sqlx::Connection::begin(&mut *conn).await.map_err(db)?;
        let moved = apply_round(&mut tx, moves, now).await?;
        tx.commit().await.map_err(db)?;
        hold.keep(conn);
        return Ok(moved);
    }
    let rows = padded(moves.len());
    let q = alone_sql(rows);
    let mut query = sqlx::query(&q);
    for m in moves {
        query = query
            .bind(&m.id)
            .bind(m.from.as_str())
            .bind(i64::from(m.from_attempt))
            .bind(m.up.to.unwrap_or(m.from).as_str())
            .bind(&m.actor)
            .bind(&m.up.note);
    }
    for _ in moves.len()..rows {
        for _ in 0..6 {
            query = query.bind(None::<String>);
        }
    }
    query = bind_moves(query.bind(now), moves, rows).bind(now);
    let mut conn = Unsettled(Some(held));
    let result = query.fetch_all(&mut **conn.get()).await;
    match result {
        Ok(done) => {
            // kept for the caller's next batch: no check on release, none
            // on the next acquire
            hold.keep(conn.settled_keep());
            done.iter().map(|r| r.try_get("id").map_err(db)).collect()
        }
        Err(e) => {
            // a statement failed: the transaction may still be open (SQLite
            // ends it itself after some errors, and BEGIN may have failed)
            match sqlx::query("ROLLBACK").execute(&mut **conn.get()).await {
                Ok(_) => conn.settled(),
                Err(r) if r.to_string().contains("no transaction is active") => conn.settled(),
                Err(_) => {}
            }
            Err(db(e))
        }
    }
}

/// Most moves [`apply_alone`] sends as one command (16 parameters a row).
const ALONE: usize = 1_000;

/// `BEGIN IMMEDIATE`, the events of the moves that will land (in the order
/// given: each row carries its position; 6 parameters a row, then the
/// time), the guarded UPDATE, `COMMIT`. Parameters are bound in the order
/// they appear across the statements.
fn alone_sql(rows: usize) -> String {
    let events: Vec<String> = (0..rows).map(|k| format!("(?, ?, ?, ?, ?, ?, {k})")).collect();
    format!(
        "BEGIN IMMEDIATE; \
         WITH e(mid, mfrom, mfromatt, mto, mactor, mnote, k) AS (VALUES {}) \
         INSERT INTO events (deployment_id, instruction_id, from_state, to_state, actor, note, at) \
         SELECT i.deployment_id, e.mid, e.mfrom, e.mto, e.mactor, e.mnote, ? FROM e JOIN instructions i \
         ON i.id = e.mid AND i.state = e.mfrom AND i.attempt = e.mfromatt ORDER BY e.k; \
         {}; COMMIT",
        events.join(", "),
        update_sql(rows),
    )
}

/// A pooled connection that may hold an open transaction: dropped before
/// [`Unsettled::settled`] (an error whose ROLLBACK failed too, or a caller
/// that gave up waiting), it is closed rather than pooled, which rolls the
/// transaction back.
struct Unsettled(Option<sqlx::pool::PoolConnection<Sqlite>>);

impl Unsettled {
    fn get(&mut self) -> &mut sqlx::pool::PoolConnection<Sqlite> {
        self.0.as_mut().expect("connection held until dropped")
    }

    /// Back to the pool (through its check) as it is dropped.
    fn settled(mut self) {
        self.0.take();
    }

    /// Known to hold no transaction: the connection itself.
    fn settled_keep(mut self) -> sqlx::pool::PoolConnection<Sqlite> {
        self.0.take().expect("connection held until dropped")
    }
}

impl Drop for Unsettled {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            c.close_on_drop();
        }
    }
}

/// Applies moves of distinct instructions, each only if the instruction
/// is still in its `from` state and attempt; returns (id, deployment) of
/// those that moved.
async fn apply_moves(
    tx: &mut Transaction<'_, Sqlite>,
    moves: &[&InstructionMove],
    now: i64,
) -> Result<Vec<(String, String)>, StoreError> {
    let mut out = Vec::with_capacity(moves.len());
    // 10 parameters a row: far below SQLite's limit
    for part in moves.chunks(1_000) {
        let q = update_sql(padded(part.len()));
        let query = bind_moves(sqlx::query(&q), part, padded(part.len()));
        for r in query.bind(now).fetch_all(&mut **tx).await.map_err(db)? {
            out.push((r.try_get("id").map_err(db)?, r.try_get("deployment_id").map_err(db)?));
        }
    }
    Ok(out)
}

/// The guarded UPDATE of `rows` moves (10 parameters a row, then the time
/// of the move), returning what moved. (Not `done`: triggers set it after
/// the row is written, and RETURNING would show the value from before.)
fn update_sql(rows: usize) -> String {
    format!(
        "WITH m(mid, mto, matt, mlive, mdigest, mmetrics, moutput, mnote, mfrom, mfromatt) AS (VALUES {}) \
         UPDATE instructions SET state = m.mto, attempt = m.matt, go_live_at = COALESCE(m.mlive, instructions.go_live_at), \
         reported_digest = COALESCE(m.mdigest, instructions.reported_digest), metrics = COALESCE(m.mmetrics, instructions.metrics), \
         output = COALESCE(m.moutput, instructions.output), note = m.mnote, updated_at = ? FROM m \
         WHERE instructions.id = m.mid AND instructions.state = m.mfrom AND instructions.attempt = m.mfromatt \
         RETURNING id, deployment_id",
        values(rows, 10)
    )
}

type Query<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// Binds the UPDATE's rows: the moves, then rows of NULLs up to `rows`.
fn bind_moves<'q>(mut query: Query<'q>, moves: &'q [&InstructionMove], rows: usize) -> Query<'q> {
    for m in moves {
        let up = &m.up;
        query = query
            .bind(&m.id)
            .bind(up.to.unwrap_or(m.from).as_str())
            .bind(i64::from(up.attempt.unwrap_or(m.from_attempt)))
            .bind(up.go_live_at)
            .bind(&up.reported_digest)
            .bind(&up.metrics_json)
            .bind(&up.output)
            .bind(&up.note)
            .bind(m.from.as_str())
            .bind(i64::from(m.from_attempt));
    }
    for _ in moves.len()..rows {
        for _ in 0..10 {
            query = query.bind(None::<String>);
        }
    }
    query
}

/// Appends events in the order given (their `seq` follows it).
pub(crate) async fn insert_events(tx: &mut Transaction<'_, Sqlite>, events: &[EventRecord]) -> Result<(), StoreError> {
    // 7 parameters a row
    for part in events.chunks(1_000) {
        // a plain VALUES list (not padded): rows are inserted as listed
        let q = format!(
            "INSERT INTO events (deployment_id, instruction_id, from_state, to_state, actor, note, at) VALUES {}",
            values(part.len(), 7)
        );
        let mut query = sqlx::query(&q);
        for e in part {
            query = query
                .bind(&e.deployment_id)
                .bind(&e.instruction_id)
                .bind(&e.from_state)
                .bind(&e.to_state)
                .bind(&e.actor)
                .bind(&e.note)
                .bind(e.at);
        }
        query.execute(&mut **tx).await.map_err(db)?;
    }
    Ok(())
}
