//! Set-wise writes of the report writer on SQLite: multi-row `VALUES`
//! lists, one UPDATE and one INSERT per thousand rows, inside the caller's
//! transaction. The UPDATE's list is padded with rows of NULLs (which
//! match nothing) to one of a few lengths, so that the connection's cache
//! of prepared statements holds them all instead of preparing a statement
//! for each batch size; the events' INSERT is not (its rows must go in as
//! listed).

use convoy_store::{EventRecord, InstructionMove, StoreError};

use super::db;
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
pub(crate) async fn apply_alone(
    pool: &sqlx::SqlitePool,
    moves: &[&InstructionMove],
    now: i64,
) -> Result<Vec<String>, StoreError> {
    let mut tx = pool.begin().await.map_err(db)?;
    let moved = apply_round(&mut tx, moves, now).await?;
    tx.commit().await.map_err(db)?;
    Ok(moved)
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
        let q = format!(
            "WITH m(mid, mto, matt, mlive, mdigest, mmetrics, moutput, mnote, mfrom, mfromatt) AS (VALUES {}) \
             UPDATE instructions SET state = m.mto, attempt = m.matt, go_live_at = COALESCE(m.mlive, instructions.go_live_at), \
             reported_digest = COALESCE(m.mdigest, instructions.reported_digest), metrics = COALESCE(m.mmetrics, instructions.metrics), \
             output = COALESCE(m.moutput, instructions.output), note = m.mnote, updated_at = ? FROM m \
             WHERE instructions.id = m.mid AND instructions.state = m.mfrom AND instructions.attempt = m.mfromatt \
             RETURNING id, deployment_id",
            values(padded(part.len()), 10)
        );
        let mut query = sqlx::query(&q);
        for m in part {
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
        for _ in part.len()..padded(part.len()) {
            for _ in 0..10 {
                query = query.bind(None::<String>);
            }
        }
        for r in query.bind(now).fetch_all(&mut **tx).await.map_err(db)? {
            out.push((r.try_get("id").map_err(db)?, r.try_get("deployment_id").map_err(db)?));
        }
    }
    Ok(out)
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
