//! The SQL both backends share. SQLite and PostgreSQL accept the same
//! statements here (`$n` parameters in first-use order, BIGINT times,
//! TEXT JSON); only the DDL differs and lives in each backend's migrations.
//! A macro, not generics over `sqlx::Database`, keeps each backend's types
//! concrete (sqlx's `Any` driver would lose them).

/// Implements [`crate::Store`] for a struct with two sqlx pools: `pool`
/// for writes and `read` for plain reads (SQLite: one writer, several
/// readers on WAL; PostgreSQL: the same pool twice). Used by the backend
/// crates only; each has a module `sets` with the set-wise writes of
/// report batches (`apply_moves`, `insert_events`), whose SQL differs
/// (SQLite: multi-row `VALUES`; PostgreSQL: `UNNEST` of arrays).
#[macro_export]
macro_rules! impl_sql_store {
    ($ty:ty, $backend:literal, $row:ty) => {
        mod __sql_store_impl {
            use super::*;
            use ::sqlx::Row as _;
            use $crate::{
                ApprovalRecord, AuditFilter, CheckRecord, DeploymentMove, DeploymentRecord, EnrolTokenRecord, EnvRecord, EventRecord, RelayRecord, InstructionMove, InstructionRecord, InstructionUpdate,
                ReleaseRecord, Result, StateCounts, StoreError, TargetRecord, TokenKind, TokenRecord, UserKeyRecord, UserRecord,
            };
            use ::convoy_domain::{DeploymentState, InstructionState};

            fn db(e: ::sqlx::Error) -> StoreError {
                StoreError::Backend(e.to_string())
            }

            const INSTR_COLS: &str = "id, deployment_id, target_id, state, attempt, previous_version, go_live_at, reported_digest, metrics, output, note, updated_at, wave, planned_at";
            const DEP_COLS: &str = "id, app, version, digest, selector, state, go_live_at, max_failures, stage_deadline, activate_timeout_ms, created_by, created_at, updated_at, note, env, reason, policy, plan, wave, revision, expires_at, targets, plan_name, plan_entry, plan_digest";
            const CHECK_COLS: &str = "id, deployment_id, target_id, state, result, output, updated_at";
            const TARGET_COLS: &str = "id, hostname, labels, inventory, enrolled_at, last_seen, warning";
            const ENROL_COLS: &str = "id, labels, expires_at, max_uses, uses, created_by, created_at, revoked_at";
            const TOKEN_COLS: &str = "hash, kind, subject, created_at, revoked_at, revoked_note";

            fn instr(r: &$row) -> Result<InstructionRecord> {
                let state: String = r.try_get("state").map_err(db)?;
                Ok(InstructionRecord {
                    id: r.try_get("id").map_err(db)?,
                    deployment_id: r.try_get("deployment_id").map_err(db)?,
                    target_id: r.try_get("target_id").map_err(db)?,
                    state: InstructionState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("instruction state {state:?}")))?,
                    attempt: r.try_get::<i64, _>("attempt").map_err(db)? as u32,
                    previous_version: r.try_get("previous_version").map_err(db)?,
                    go_live_at: r.try_get("go_live_at").map_err(db)?,
                    reported_digest: r.try_get("reported_digest").map_err(db)?,
                    metrics_json: r.try_get("metrics").map_err(db)?,
                    output: r.try_get("output").map_err(db)?,
                    note: r.try_get("note").map_err(db)?,
                    updated_at: r.try_get("updated_at").map_err(db)?,
                    wave: r.try_get::<i64, _>("wave").map_err(db)? as u32,
                    planned_at: r.try_get("planned_at").map_err(db)?,
                })
            }

            fn check_row(r: &$row) -> Result<CheckRecord> {
                Ok(CheckRecord {
                    id: r.try_get("id").map_err(db)?,
                    deployment_id: r.try_get("deployment_id").map_err(db)?,
                    target_id: r.try_get("target_id").map_err(db)?,
                    state: r.try_get("state").map_err(db)?,
                    result_json: r.try_get("result").map_err(db)?,
                    output: r.try_get("output").map_err(db)?,
                    updated_at: r.try_get("updated_at").map_err(db)?,
                })
            }

            fn user(r: &$row) -> Result<UserRecord> {
                Ok(UserRecord {
                    name: r.try_get("name").map_err(db)?,
                    role: r.try_get("role").map_err(db)?,
                    created_by: r.try_get("created_by").map_err(db)?,
                    created_at: r.try_get("created_at").map_err(db)?,
                })
            }

            fn env(r: &$row) -> Result<EnvRecord> {
                Ok(EnvRecord {
                    name: r.try_get("name").map_err(db)?,
                    policy_json: r.try_get("policy").map_err(db)?,
                    updated_by: r.try_get("updated_by").map_err(db)?,
                    updated_at: r.try_get("updated_at").map_err(db)?,
                })
            }

            fn dep(r: &$row) -> Result<DeploymentRecord> {
                let state: String = r.try_get("state").map_err(db)?;
                Ok(DeploymentRecord {
                    id: r.try_get("id").map_err(db)?,
                    app: r.try_get("app").map_err(db)?,
                    version: r.try_get("version").map_err(db)?,
                    digest: r.try_get("digest").map_err(db)?,
                    selector: r.try_get("selector").map_err(db)?,
                    state: DeploymentState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("deployment state {state:?}")))?,
                    go_live_at: r.try_get("go_live_at").map_err(db)?,
                    max_failures: r.try_get::<i64, _>("max_failures").map_err(db)? as u32,
                    stage_deadline: r.try_get("stage_deadline").map_err(db)?,
                    activate_timeout_ms: r.try_get("activate_timeout_ms").map_err(db)?,
                    created_by: r.try_get("created_by").map_err(db)?,
                    created_at: r.try_get("created_at").map_err(db)?,
                    updated_at: r.try_get("updated_at").map_err(db)?,
                    note: r.try_get("note").map_err(db)?,
                    env: r.try_get("env").map_err(db)?,
                    reason: r.try_get("reason").map_err(db)?,
                    policy_json: r.try_get("policy").map_err(db)?,
                    plan_json: r.try_get("plan").map_err(db)?,
                    wave: r.try_get::<i64, _>("wave").map_err(db)? as u32,
                    revision: r.try_get::<i64, _>("revision").map_err(db)? as u32,
                    expires_at: r.try_get("expires_at").map_err(db)?,
                    targets: r.try_get("targets").map_err(db)?,
                    plan_name: r.try_get("plan_name").map_err(db)?,
                    plan_entry: r.try_get("plan_entry").map_err(db)?,
                    plan_digest: r.try_get("plan_digest").map_err(db)?,
                })
            }

            fn target(r: &$row) -> Result<TargetRecord> {
                Ok(TargetRecord {
                    id: r.try_get("id").map_err(db)?,
                    hostname: r.try_get("hostname").map_err(db)?,
                    labels_json: r.try_get("labels").map_err(db)?,
                    inventory_json: r.try_get("inventory").map_err(db)?,
                    enrolled_at: r.try_get("enrolled_at").map_err(db)?,
                    last_seen: r.try_get("last_seen").map_err(db)?,
                    warning: r.try_get("warning").map_err(db)?,
                })
            }

            fn token(r: &$row) -> Result<TokenRecord> {
                let kind: String = r.try_get("kind").map_err(db)?;
                Ok(TokenRecord {
                    hash: r.try_get("hash").map_err(db)?,
                    kind: TokenKind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("token kind {kind:?}")))?,
                    subject: r.try_get("subject").map_err(db)?,
                    created_at: r.try_get("created_at").map_err(db)?,
                    revoked_at: r.try_get("revoked_at").map_err(db)?,
                    revoked_note: r.try_get("revoked_note").map_err(db)?,
                })
            }

            fn enrol_token(r: &$row) -> Result<EnrolTokenRecord> {
                Ok(EnrolTokenRecord {
                    id: r.try_get("id").map_err(db)?,
                    labels_json: r.try_get("labels").map_err(db)?,
                    expires_at: r.try_get("expires_at").map_err(db)?,
                    max_uses: r.try_get("max_uses").map_err(db)?,
                    uses: r.try_get("uses").map_err(db)?,
                    created_by: r.try_get("created_by").map_err(db)?,
                    created_at: r.try_get("created_at").map_err(db)?,
                    revoked_at: r.try_get("revoked_at").map_err(db)?,
                })
            }

            fn relay(r: &$row) -> Result<RelayRecord> {
                Ok(RelayRecord {
                    target_id: r.try_get("target_id").map_err(db)?,
                    site: r.try_get("site").map_err(db)?,
                    url: r.try_get("url").map_err(db)?,
                    granted_by: r.try_get("granted_by").map_err(db)?,
                    granted_at: r.try_get("granted_at").map_err(db)?,
                })
            }

            async fn write_event<'c, E: ::sqlx::Executor<'c, Database = <$row as ::sqlx::Row>::Database>>(ex: E, e: &EventRecord) -> Result<()> {
                ::sqlx::query(INSERT_EVENT).bind(&e.deployment_id).bind(&e.instruction_id).bind(&e.from_state).bind(&e.to_state).bind(&e.actor).bind(&e.note).bind(e.at)
                    .execute(ex).await.map_err(db)?;
                Ok(())
            }

            const INSERT_TOKEN: &str = "INSERT INTO tokens (hash, kind, subject, created_at, revoked_at, revoked_note) VALUES ($1, $2, $3, $4, $5, $6)";

            fn release(r: &$row, with_manifest: bool) -> Result<ReleaseRecord> {
                Ok(ReleaseRecord {
                    app: r.try_get("app").map_err(db)?,
                    version: r.try_get("version").map_err(db)?,
                    digest: r.try_get("digest").map_err(db)?,
                    manifest: if with_manifest { r.try_get("manifest").map_err(db)? } else { Vec::new() },
                    files: r.try_get("files").map_err(db)?,
                    total_size: r.try_get("total_size").map_err(db)?,
                    chunks: r.try_get("chunks").map_err(db)?,
                    created_at: r.try_get("created_at").map_err(db)?,
                    provenance_json: r.try_get("provenance").map_err(db)?,
                })
            }

            fn event(r: &$row) -> Result<EventRecord> {
                Ok(EventRecord {
                    seq: r.try_get("seq").map_err(db)?,
                    deployment_id: r.try_get("deployment_id").map_err(db)?,
                    instruction_id: r.try_get("instruction_id").map_err(db)?,
                    from_state: r.try_get("from_state").map_err(db)?,
                    to_state: r.try_get("to_state").map_err(db)?,
                    actor: r.try_get("actor").map_err(db)?,
                    note: r.try_get("note").map_err(db)?,
                    at: r.try_get("at").map_err(db)?,
                })
            }

            const INSERT_EVENT: &str = "INSERT INTO events (deployment_id, instruction_id, from_state, to_state, actor, note, at) VALUES ($1, $2, $3, $4, $5, $6, $7)";
            const UPDATE_INSTR: &str = "UPDATE instructions SET state = $1, attempt = $2, go_live_at = COALESCE($3, go_live_at), reported_digest = COALESCE($4, reported_digest), metrics = COALESCE($5, metrics), output = COALESCE($6, output), note = $7, updated_at = $8 WHERE id = $9 AND state = $10 AND attempt = $11";

            /// The `n`-th parameter of a statement whose parameters appear in
            /// order. SQLite gets anonymous `?`: naming thousands of `$n`
            /// costs a scan of the names per parameter bound (quadratic).
            fn mark(n: usize) -> String {
                if $backend == "sqlite" {
                    "?".to_owned()
                } else {
                    format!("${n}")
                }
            }

            /// `mark(from)..` for `count` parameters, comma-separated.
            fn marks(from: usize, count: usize) -> String {
                (from..from + count).map(mark).collect::<Vec<_>>().join(", ")
            }

            /// `(..), (..)` for `rows` rows of `cols` parameters each.
            fn values(rows: usize, cols: usize) -> String {
                let mut q = String::with_capacity(rows * cols * 5);
                for j in 0..rows {
                    q.push_str(if j == 0 { "(" } else { ", (" });
                    for c in 1..=cols {
                        if c > 1 {
                            q.push_str(", ");
                        }
                        q.push_str(&mark(j * cols + c));
                    }
                    q.push(')');
                }
                q
            }

            /// Appends events set-wise, in the order given (the backend's
            /// `sets::insert_events`).
            async fn insert_events(tx: &mut ::sqlx::Transaction<'_, <$row as ::sqlx::Row>::Database>, events: &[EventRecord]) -> Result<()> {
                super::sets::insert_events(tx, events).await
            }

            /// New instructions, each with its creation event, as multi-row
            /// INSERTs (14 parameters a row: 500 rows stay far below either
            /// engine's limit).
            async fn insert_instrs(tx: &mut ::sqlx::Transaction<'_, <$row as ::sqlx::Row>::Database>, instructions: &[InstructionRecord], actor: &str, at: Option<i64>) -> Result<()> {
                for part in instructions.chunks(500) {
                    let q = format!("INSERT INTO instructions (id, deployment_id, target_id, state, attempt, previous_version, go_live_at, reported_digest, metrics, output, note, updated_at, wave, planned_at) VALUES {}", values(part.len(), 14));
                    // a full chunk's statement is kept prepared; a last,
                    // shorter one is not (SQLite's prepared statements
                    // cost memory per row, one per length would pile up)
                    let mut query = ::sqlx::query(&q).persistent(part.len() == 500);
                    for i in part {
                        query = query
                            .bind(&i.id).bind(&i.deployment_id).bind(&i.target_id).bind(i.state.as_str()).bind(i.attempt as i64)
                            .bind(&i.previous_version).bind(i.go_live_at).bind(&i.reported_digest).bind(&i.metrics_json).bind(&i.output).bind(&i.note).bind(i.updated_at)
                            .bind(i.wave as i64).bind(i.planned_at);
                    }
                    query.execute(&mut **tx).await.map_err(db)?;
                }
                let events: Vec<EventRecord> = instructions
                    .iter()
                    .map(|i| EventRecord {
                        seq: 0,
                        deployment_id: i.deployment_id.clone(),
                        instruction_id: Some(i.id.clone()),
                        from_state: String::new(),
                        to_state: i.state.as_str().to_owned(),
                        actor: actor.to_owned(),
                        note: i.note.clone(),
                        at: at.unwrap_or(i.updated_at),
                    })
                    .collect();
                insert_events(tx, &events).await
            }

            #[::async_trait::async_trait]
            impl $crate::Store for $ty {
                fn backend(&self) -> &'static str {
                    $backend
                }

                async fn put_token(&self, t: &TokenRecord) -> Result<()> {
                    let q = format!("{INSERT_TOKEN} ON CONFLICT (hash) DO NOTHING");
                    ::sqlx::query(&q)
                        .bind(&t.hash).bind(t.kind.as_str()).bind(&t.subject).bind(t.created_at).bind(t.revoked_at).bind(&t.revoked_note)
                        .execute(&self.pool).await.map_err(db)?;
                    Ok(())
                }

                async fn find_token(&self, hash: &str) -> Result<Option<TokenRecord>> {
                    let q = format!("SELECT {TOKEN_COLS} FROM tokens WHERE hash = $1");
                    ::sqlx::query(&q).bind(hash).fetch_optional(&self.read).await.map_err(db)?.as_ref().map(token).transpose()
                }

                async fn count_tokens(&self, kind: TokenKind) -> Result<u64> {
                    let n: i64 = ::sqlx::query("SELECT COUNT(*) AS n FROM tokens WHERE kind = $1 AND revoked_at IS NULL")
                        .bind(kind.as_str()).fetch_one(&self.read).await.map_err(db)?.try_get("n").map_err(db)?;
                    Ok(n as u64)
                }

                async fn rotate_token(&self, new: &TokenRecord, note: &str, event: &EventRecord) -> Result<u64> {
                    let mut tx = self.pool.begin().await.map_err(db)?;
                    let done = ::sqlx::query("UPDATE tokens SET revoked_at = $1, revoked_note = $2 WHERE kind = $3 AND subject = $4 AND revoked_at IS NULL AND hash <> $5")
                        .bind(new.created_at).bind(note).bind(new.kind.as_str()).bind(&new.subject).bind(&new.hash)
                        .execute(&mut *tx).await.map_err(db)?;
                    let q = format!("{INSERT_TOKEN} ON CONFLICT (hash) DO NOTHING");
                    ::sqlx::query(&q)
                        .bind(&new.hash).bind(new.kind.as_str()).bind(&new.subject).bind(new.created_at).bind(new.revoked_at).bind(&new.revoked_note)
                        .execute(&mut *tx).await.map_err(db)?;
                    write_event(&mut *tx, event).await?;
                    tx.commit().await.map_err(db)?;
                    Ok(done.rows_affected())
                }

                async fn create_enrol_token(&self, e: &EnrolTokenRecord, t: &TokenRecord, event: &EventRecord) -> Result<()> {
                    let mut tx = self.pool.begin().await.map_err(db)?;
                    ::sqlx::query("INSERT INTO enrol_tokens (id, labels, expires_at, max_uses, uses, created_by, created_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
                        .bind(&e.id).bind(&e.labels_json).bind(e.expires_at).bind(e.max_uses).bind(e.uses).bind(&e.created_by).bind(e.created_at).bind(e.revoked_at)
                        .execute(&mut *tx).await.map_err(db)?;
                    // the same secret stored by another server meanwhile stands
                    let q = format!("{INSERT_TOKEN} ON CONFLICT (hash) DO NOTHING");
                    ::sqlx::query(&q)
                        .bind(&t.hash).bind(t.kind.as_str()).bind(&t.subject).bind(t.created_at).bind(t.revoked_at).bind(&t.revoked_note)
                        .execute(&mut *tx).await.map_err(db)?;
                    write_event(&mut *tx, event).await?;
                    tx.commit().await.map_err(db)
                }

                async fn get_enrol_token(&self, id: &str) -> Result<Option<EnrolTokenRecord>> {
                    let q = format!("SELECT {ENROL_COLS} FROM enrol_tokens WHERE id = $1");
                    ::sqlx::query(&q).bind(id).fetch_optional(&self.read).await.map_err(db)?.as_ref().map(enrol_token).transpose()
                }

                async fn list_enrol_tokens(&self) -> Result<Vec<EnrolTokenRecord>> {
                    let q = format!("SELECT {ENROL_COLS} FROM enrol_tokens ORDER BY created_at, id");
                    ::sqlx::query(&q).fetch_all(&self.read).await.map_err(db)?.iter().map(enrol_token).collect()
                }

                async fn revoke_enrol_token(&self, id: &str, event: &EventRecord) -> Result<bool> {
                    let mut tx = self.pool.begin().await.map_err(db)?;
                    let done = ::sqlx::query("UPDATE enrol_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                        .bind(event.at).bind(id).execute(&mut *tx).await.map_err(db)?;
                    if done.rows_affected() == 0 {
                        tx.rollback().await.map_err(db)?;
                        return Ok(false);
                    }
                    ::sqlx::query("UPDATE tokens SET revoked_at = $1, revoked_note = $2 WHERE kind IN ('enrol', 'gateway') AND subject = $3 AND revoked_at IS NULL")
                        .bind(event.at).bind(&event.note).bind(id).execute(&mut *tx).await.map_err(db)?;
                    write_event(&mut *tx, event).await?;
                    tx.commit().await.map_err(db)?;
                    Ok(true)
                }

                async fn enrol_target(&self, t: &TargetRecord, agent_token: &TokenRecord, enrol_token: Option<&str>, event: &EventRecord) -> Result<()> {
                    let mut tx = self.pool.begin().await.map_err(db)?;
                    if let Some(id) = enrol_token {
                        let done = ::sqlx::query("UPDATE enrol_tokens SET uses = uses + 1 WHERE id = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2) AND (max_uses IS NULL OR uses < max_uses)")
                            .bind(id).bind(event.at).execute(&mut *tx).await.map_err(db)?;
                        if done.rows_affected() == 0 {
                            tx.rollback().await.map_err(db)?;
                            return Err(StoreError::Conflict(format!("enrolment token {id} is revoked, expired or used up")));
                        }
                    }
                    ::sqlx::query("INSERT INTO targets (id, hostname, labels, inventory, enrolled_at, last_seen, warning) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                        .bind(&t.id).bind(&t.hostname).bind(&t.labels_json).bind(&t.inventory_json).bind(t.enrolled_at).bind(t.last_seen).bind(&t.warning)
                        .execute(&mut *tx).await.map_err(db)?;
                    ::sqlx::query(INSERT_TOKEN)
                        .bind(&agent_token.hash).bind(agent_token.kind.as_str()).bind(&agent_token.subject).bind(agent_token.created_at).bind(agent_token.revoked_at).bind(&agent_token.revoked_note)
                        .execute(&mut *tx).await.map_err(db)?;
                    write_event(&mut *tx, event).await?;
                    tx.commit().await.map_err(db)
                }

                async fn set_target_labels(&self, id: &str, labels_json: &str, event: &EventRecord) -> Result<bool> {
                    let mut tx = self.pool.begin().await.map_err(db)?;
                    let done = ::sqlx::query("UPDATE targets SET labels = $1 WHERE id = $2").bind(labels_json).bind(id)
                        .execute(&mut *tx).await.map_err(db)?;
                    if done.rows_affected() == 0 {
                        tx.rollback().await.map_err(db)?;
                        return Ok(false);
                    }
                    write_event(&mut *tx, event).await?;
                    tx.commit().await.map_err(db)?;
                    Ok(true)
                }

                async fn set_target_warning(&self, id: &str, warning: &str) -> Result<()> {
                    ::sqlx::query("UPDATE targets SET warning = $1 WHERE id = $2").bind(warning).bind(id)
                        .execute(&self.pool).await.map_err(db)?;
                    Ok(())
                }

                async fn pause(&self, id: &str, by: &str, event: &EventRecord) -> Result<bool> {
                    let mut tx = self.pool.begin().await.map_err(db)?;
                    let done = ::sqlx::query("INSERT INTO pauses (deployment_id, paused_by, at) SELECT id, $1, $2 FROM deployments WHERE id = $3 AND state IN ('staging', 'scheduled', 'activating') ON CONFLICT (deployment_id) DO NOTHING")
                        .bind(by).bind(event.at).bind(id).execute(&mut *tx).await.map_err(db)?;
                    if done.rows_affected() == 0 {
                        tx.rollback().await.map_err(db)?;
                        return Ok(false);
                    }
                    write_event(&mut *tx, event).await?;
                    tx.commit().await.map_err(db)?;
                    Ok(true)
                }

                async fn resume(&self, id: &str, event: &EventRecord) -> Result<bool> {
                    let mut tx = self.pool.begin().await.map_err(db)?;
                    let done = ::sqlx::query("DELETE FROM pauses WHERE deployment_id = $1").bind(id)
                        .execute(&mut *tx).await.map_err(db)?;
                    if done.rows_affected() == 0 {
                        tx.rollback().await.map_err(db)?;
                        return Ok(false);
                    }
                    write_event(&mut *tx, event).await?;
                    tx.commit().await.map_err(db)?;
                    Ok(true)
                }

                async fn paused_by(&self, id: &str) -> Result<Option<String>> {
                    let row = ::sqlx::query("SELECT paused_by FROM pauses WHERE deployment_id = $1").bind(id)
                        .fetch_optional(&self.read).await.map_err(db)?;
                    row.map(|r| r.try_get("paused_by").map_err(db)).transpose()
                }

                async fn grant_relay(&self, r: &RelayRecord, event: &EventRecord) -> Result<()> {
                    let mut tx = self.pool.begin().await.map_err(db)?;
                    ::sqlx::query("INSERT INTO relays (target_id, site, url, granted_by, granted_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (target_id) DO UPDATE SET site = excluded.site, url = excluded.url, granted_by = excluded.granted_by, granted_at = excluded.granted_at")
                        .bind(&r.target_id).bind(&r.site).bind(&r.url).bind(&r.granted_by).bind(r.granted_at)
                        .execute(&mut *tx).await.map_err(db)?;
                    write_event(&mut *tx, event).await?;
                    tx.commit().await.map_err(db)
                }

                async fn revoke_relay(&self, target_id: &str, event: &EventRecord) -> Result<bool> {
                    let mut tx = self.pool.begin().await.map_err(db)?;
                    let done = ::sqlx::query("DELETE FROM relays WHERE target_id = $1").bind(target_id)
                        .execute(&mut *tx).await.map_err(db)?;
                    if done.rows_affected() == 0 {
                        tx.rollback().await.map_err(db)?;
                        return Ok(false);
                    }
                    write_event(&mut *tx, event).await?;
                    tx.commit().await.map_err(db)?;
                    Ok(true)
                }

                async fn list_relays(&self) -> Result<Vec<RelayRecord>> {
                    ::sqlx::query("SELECT target_id, site, url, granted_by, granted_at FROM relays ORDER BY site, target_id")
                        .fetch_all(&self.read).await.map_err(db)?.iter().map(relay).collect()
                }

                async fn server_key(&self, name: &str, make: (String, String), now: i64) -> Result<(String, String)> {
                    ::sqlx::query("INSERT INTO server_keys (name, public, secret, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING")
                        .bind(name).bind(&make.0).bind(&make.1).bind(now)
                        .execute(&self.pool).await.map_err(db)?;
                    let r = ::sqlx::query("SELECT public, secret FROM server_keys WHERE name = $1").bind(name)
                        .fetch_one(&self.pool).await.map_err(db)?;
                    Ok((r.try_get("public").map_err(db)?, r.try_get("secret").map_err(db)?))
                }

                async fn put_tuf(&self, role: &str, version: u64, body: &[u8], now: i64) -> Result<bool> {
                    let done = ::sqlx::query("INSERT INTO tuf_metadata (role, version, body, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (role, version) DO NOTHING")
                        .bind(role).bind(version as i64).bind(body).bind(now)
                        .execute(&self.pool).await.map_err(db)?;
                    Ok(done.rows_affected() == 1)
                }

                async fn get_tuf(&self, role: &str, version: Option<u64>) -> Result<Option<(u64, Vec<u8>)>> {
                    let r = match version {
                        Some(v) => ::sqlx::query("SELECT version, body FROM tuf_metadata WHERE role = $1 AND version = $2").bind(role).bind(v as i64)
                            .fetch_optional(&self.pool).await.map_err(db)?,
                        None => ::sqlx::query("SELECT version, body FROM tuf_metadata WHERE role = $1 ORDER BY version DESC LIMIT 1").bind(role)
                            .fetch_optional(&self.pool).await.map_err(db)?,
                    };
                    r.map(|r| Ok((r.try_get::<i64, _>("version").map_err(db)? as u64, r.try_get("body").map_err(db)?))).transpose()
                }

                async fn insert_target(&self, t: &TargetRecord) -> Result<()> {
                    ::sqlx::query("INSERT INTO targets (id, hostname, labels, inventory, enrolled_at, last_seen, warning) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                        .bind(&t.id).bind(&t.hostname).bind(&t.labels_json).bind(&t.inventory_json).bind(t.enrolled_at).bind(t.last_seen).bind(&t.warning)
                        .execute(&self.pool).await.map_err(db)?;
                    Ok(())
                }

                async fn update_target(&self, id: &str, hostname: &str, inventory_json: &str, now: i64) -> Result<()> {
                    ::sqlx::query("UPDATE targets SET hostname = $1, inventory = $2, last_seen = $3 WHERE id = $4")
                        .bind(hostname).bind(inventory_json).bind(now).bind(id)
                        .execute(&self.pool).await.map_err(db)?;
                    Ok(())
                }

                async fn touch_targets(&self, seen: &[(String, i64)]) -> Result<()> {
                    if seen.is_empty() {
                        return Ok(());
                    }
                    let mut tx = self.pool.begin().await.map_err(db)?;
                    for (id, at) in seen {
                        ::sqlx::query("UPDATE targets SET last_seen = $1 WHERE id = $2 AND last_seen < $1").bind(at).bind(id)
                            .execute(&mut *tx).await.map_err(db)?;
                    }
                    tx.commit().await.map_err(db)
                }

                async fn get_target(&self, id: &str) -> Result<Option<TargetRecord>> {
                    let q = format!("SELECT {TARGET_COLS} FROM targets WHERE id = $1");
                    ::sqlx::query(&q).bind(id).fetch_optional(&self.read).await.map_err(db)?.as_ref().map(target).transpose()
                }

                async fn list_targets(&self) -> Result<Vec<TargetRecord>> {
                    let q = format!("SELECT {TARGET_COLS} FROM targets ORDER BY hostname, id");
                    ::sqlx::query(&q).fetch_all(&self.read).await.map_err(db)?.iter().map(target).collect()
                }

                async fn list_target_labels(&self) -> Result<Vec<$crate::TargetLabels>> {
                    let rows = ::sqlx::query("SELECT id, hostname, labels FROM targets ORDER BY hostname, id").fetch_all(&self.read).await.map_err(db)?;
                    rows.iter()
                        .map(|r| Ok($crate::TargetLabels { id: r.try_get("id").map_err(db)?, hostname: r.try_get("hostname").map_err(db)?, labels_json: r.try_get("labels").map_err(db)? }))
                        .collect()
                }

                async fn list_targets_having(&self, having: &[(String, String)]) -> Result<Vec<TargetRecord>> {
                    // labels are stored as serde_json writes a map: each term
                    // is the text `"key":"value"` inside them (SQLite's LIKE
                    // ignores ASCII case: more rows, which the caller drops);
                    // `!` escapes (a backslash would depend on PostgreSQL's
                    // standard_conforming_strings)
                    let mut q = format!("SELECT {TARGET_COLS} FROM targets");
                    for k in 0..having.len() {
                        q.push_str(if k == 0 { " WHERE " } else { " AND " });
                        q.push_str(&format!("labels LIKE {} ESCAPE '!'", mark(k + 1)));
                    }
                    q.push_str(" ORDER BY hostname, id");
                    let mut query = ::sqlx::query(&q);
                    for (key, value) in having {
                        let term = format!("{}:{}", ::serde_json::Value::from(key.as_str()), ::serde_json::Value::from(value.as_str()));
                        let escaped: String = term.chars().flat_map(|c| match c {
                            '%' | '_' | '!' => vec!['!', c],
                            c => vec![c],
                        }).collect();
                        query = query.bind(format!("%{escaped}%"));
                    }
                    query.fetch_all(&self.read).await.map_err(db)?.iter().map(target).collect()
                }

                async fn remove_target(&self, id: &str) -> Result<bool> {
                    let mut tx = self.pool.begin().await.map_err(db)?;
                    let gone = ::sqlx::query("DELETE FROM targets WHERE id = $1").bind(id).execute(&mut *tx).await.map_err(db)?;
                    if gone.rows_affected() == 0 {
                        tx.rollback().await.map_err(db)?;
                        return Ok(false);
                    }
                    let busy: i64 = ::sqlx::query("SELECT COUNT(*) AS n FROM instructions i JOIN deployments d ON d.id = i.deployment_id WHERE i.target_id = $1 AND i.done = FALSE AND ((d.state IN ('staging', 'scheduled', 'activating', 'rolling_back') AND i.state NOT IN ('failed', 'canceled', 'rolled_back', 'succeeded', 'superseded')) OR (d.state = 'halted' AND i.state IN ('created', 'sent', 'received', 'staged', 'activating', 'rolling_back')))")
                        .bind(id).fetch_one(&mut *tx).await.map_err(db)?.try_get("n").map_err(db)?;
                    if busy > 0 {
                        tx.rollback().await.map_err(db)?;
                        return Err(StoreError::Conflict(format!("target {id} has work in an unfinished deployment; wait for it or roll it back first")));
                    }
                    ::sqlx::query("DELETE FROM tokens WHERE kind IN ('agent', 'ddi') AND subject = $1").bind(id).execute(&mut *tx).await.map_err(db)?;
                    ::sqlx::query("DELETE FROM relays WHERE target_id = $1").bind(id).execute(&mut *tx).await.map_err(db)?;
                    tx.commit().await.map_err(db)?;
                    Ok(true)
                }

                async fn insert_release(&self, r: &ReleaseRecord) -> Result<bool> {
                    let done = ::sqlx::query("INSERT INTO releases (app, version, digest, manifest, files, total_size, chunks, created_at, provenance) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (app, version) DO NOTHING")
                        .bind(&r.app).bind(&r.version).bind(&r.digest).bind(&r.manifest).bind(r.files).bind(r.total_size).bind(r.chunks).bind(r.created_at).bind(&r.provenance_json)
                        .execute(&self.pool).await.map_err(db)?;
                    if done.rows_affected() == 1 {
                        return Ok(true);
                    }
                    let existing: String = ::sqlx::query("SELECT digest FROM releases WHERE app = $1 AND version = $2")
                        .bind(&r.app).bind(&r.version).fetch_one(&self.read).await.map_err(db)?.try_get("digest").map_err(db)?;
                    if existing == r.digest {
                        Ok(false)
                    } else {
                        Err(StoreError::Conflict(format!(
                            "{}@{} already exists with digest {existing}; releases are immutable, publish a new version",
                            r.app, r.version
                        )))
                    }
                }

                async fn get_release(&self, app: &str, version: &str) -> Result<Option<ReleaseRecord>> {
                    ::sqlx::query("SELECT app, version, digest, manifest, files, total_size, chunks, created_at, provenance FROM releases WHERE app = $1 AND version = $2")
                        .bind(app).bind(version).fetch_optional(&self.read).await.map_err(db)?
                        .as_ref().map(|r| release(r, true)).transpose()
                }

                async fn list_releases(&self) -> Result<Vec<ReleaseRecord>> {
                    ::sqlx::query("SELECT app, version, digest, files, total_size, chunks, created_at, provenance FROM releases ORDER BY created_at DESC, app, version")
                        .fetch_all(&self.read).await.map_err(db)?.iter().map(|r| release(r, false)).collect()
                }

                async fn create_deployment(&self, d: &DeploymentRecord, instructions: &[InstructionRecord], actor: &str) -> Result<()> {
                    let mut tx = self.pool.begin().await.map_err(db)?;
                    ::sqlx::query("INSERT INTO deployments (id, app, version, digest, selector, state, go_live_at, max_failures, stage_deadline, activate_timeout_ms, created_by, created_at, updated_at, note, env, reason, policy, plan, wave, revision, expires_at, targets, plan_name, plan_entry, plan_digest) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25)")
                        .bind(&d.id).bind(&d.app).bind(&d.version).bind(&d.digest).bind(&d.selector).bind(d.state.as_str())
                        .bind(d.go_live_at).bind(d.max_failures as i64).bind(d.stage_deadline).bind(d.activate_timeout_ms).bind(&d.created_by).bind(d.created_at).bind(d.updated_at).bind(&d.note)
                        .bind(&d.env).bind(&d.reason).bind(&d.policy_json).bind(&d.plan_json).bind(d.wave as i64).bind(d.revision as i64).bind(d.expires_at).bind(&d.targets)
                        .bind(&d.plan_name).bind(&d.plan_entry).bind(&d.plan_digest)
                        .execute(&mut *tx).await.map_err(db)?;
                    ::sqlx::query(INSERT_EVENT).bind(&d.id).bind(None::<String>).bind("").bind(d.state.as_str()).bind(actor).bind(&d.note).bind(d.created_at)
                        .execute(&mut *tx).await.map_err(db)?;
                    insert_instrs(&mut tx, instructions, actor, None).await?;
                    tx.commit().await.map_err(db)
                }

                async fn get_deployment(&self, id: &str) -> Result<Option<DeploymentRecord>> {
                    let q = format!("SELECT {DEP_COLS} FROM deployments WHERE id = $1");
                    ::sqlx::query(&q).bind(id).fetch_optional(&self.read).await.map_err(db)?.as_ref().map(dep).transpose()
                }

                async fn list_deployments(&self, limit: u32) -> Result<Vec<DeploymentRecord>> {
                    let q = format!("SELECT {DEP_COLS} FROM deployments ORDER BY created_at DESC, id LIMIT $1");
                    ::sqlx::query(&q).bind(limit as i64).fetch_all(&self.read).await.map_err(db)?.iter().map(dep).collect()
                }

                async fn plan_deployments(&self, plan: &str) -> Result<Vec<DeploymentRecord>> {
                    let q = format!("SELECT {DEP_COLS} FROM deployments WHERE plan_name = $1 ORDER BY created_at, id");
                    ::sqlx::query(&q).bind(plan).fetch_all(&self.read).await.map_err(db)?.iter().map(dep).collect()
                }

                async fn active_deployments(&self) -> Result<Vec<DeploymentRecord>> {
                    let q = format!("SELECT {DEP_COLS} FROM deployments WHERE state IN ('awaiting_approval', 'preflight', 'awaiting_confirmation', 'staging', 'scheduled', 'activating', 'rolling_back') ORDER BY created_at, id");
                    ::sqlx::query(&q).fetch_all(&self.read).await.map_err(db)?.iter().map(dep).collect()
                }

                async fn list_instructions(&self, deployment_id: &str) -> Result<Vec<InstructionRecord>> {
                    let q = format!("SELECT {INSTR_COLS} FROM instructions WHERE deployment_id = $1 ORDER BY id");
                    ::sqlx::query(&q).bind(deployment_id).fetch_all(&self.read).await.map_err(db)?.iter().map(instr).collect()
                }

                async fn previous_versions(&self, deployment_id: &str) -> Result<Vec<String>> {
                    let rows = ::sqlx::query("SELECT DISTINCT previous_version AS v FROM instructions WHERE deployment_id = $1 AND previous_version IS NOT NULL ORDER BY previous_version")
                        .bind(deployment_id).fetch_all(&self.read).await.map_err(db)?;
                    rows.iter().map(|r| r.try_get("v").map_err(db)).collect()
                }

                async fn instructions_page(&self, deployment_id: &str, states: &[InstructionState], wave: Option<u32>, after: &str, limit: u32) -> Result<Vec<InstructionRecord>> {
                    let mut q = format!("SELECT {INSTR_COLS} FROM instructions WHERE deployment_id = {} AND id > {}", mark(1), mark(2));
                    let mut n = 3;
                    if !states.is_empty() {
                        q.push_str(&format!(" AND state IN ({})", marks(n, states.len())));
                        n += states.len();
                    }
                    if wave.is_some() {
                        q.push_str(&format!(" AND wave = {}", mark(n)));
                        n += 1;
                    }
                    q.push_str(&format!(" ORDER BY id LIMIT {}", mark(n)));
                    let mut query = ::sqlx::query(&q).bind(deployment_id).bind(after);
                    for s in states {
                        query = query.bind(s.as_str());
                    }
                    if let Some(w) = wave {
                        query = query.bind(w as i64);
                    }
                    query.bind(limit as i64).fetch_all(&self.read).await.map_err(db)?.iter().map(instr).collect()
                }

                async fn get_instruction(&self, id: &str) -> Result<Option<InstructionRecord>> {
                    let q = format!("SELECT {INSTR_COLS} FROM instructions WHERE id = $1");
                    ::sqlx::query(&q).bind(id).fetch_optional(&self.read).await.map_err(db)?.as_ref().map(instr).transpose()
                }

                async fn target_instructions(&self, target_id: &str, limit: u32) -> Result<Vec<InstructionRecord>> {
                    let q = format!("SELECT {INSTR_COLS} FROM instructions WHERE target_id = $1 ORDER BY updated_at DESC, id DESC LIMIT $2");
                    ::sqlx::query(&q).bind(target_id).bind(limit as i64).fetch_all(&self.read).await.map_err(db)?.iter().map(instr).collect()
                }

                async fn pending_instructions(&self, target_id: &str) -> Result<Vec<InstructionRecord>> {
                    let q = format!("SELECT {INSTR_COLS} FROM instructions WHERE target_id = $1 AND done = FALSE AND state IN ('created', 'sent', 'received', 'staged', 'activating', 'rolling_back') ORDER BY updated_at, id");
                    ::sqlx::query(&q).bind(target_id).fetch_all(&self.read).await.map_err(db)?.iter().map(instr).collect()
                }

                async fn busy_targets(&self, app: &str) -> Result<Vec<String>> {
                    let rows = ::sqlx::query("SELECT DISTINCT i.target_id AS target_id FROM instructions i JOIN deployments d ON d.id = i.deployment_id WHERE d.app = $1 AND ((d.state IN ('staging', 'scheduled', 'activating', 'rolling_back') AND i.state NOT IN ('failed', 'canceled', 'rolled_back', 'superseded')) OR (d.state = 'halted' AND i.state IN ('created', 'sent', 'received', 'staged', 'activating', 'rolling_back')))")
                        .bind(app).fetch_all(&self.read).await.map_err(db)?;
                    rows.iter().map(|r| r.try_get("target_id").map_err(db)).collect()
                }

                async fn transition_instruction(&self, id: &str, from: InstructionState, from_attempt: u32, up: &InstructionUpdate, actor: &str, now: i64) -> Result<bool> {
                    let to = up.to.unwrap_or(from);
                    let mut tx = self.pool.begin().await.map_err(db)?;
                    let done = ::sqlx::query(UPDATE_INSTR)
                        .bind(to.as_str()).bind(up.attempt.unwrap_or(from_attempt) as i64).bind(up.go_live_at).bind(&up.reported_digest)
                        .bind(&up.metrics_json).bind(&up.output).bind(&up.note).bind(now).bind(id).bind(from.as_str()).bind(from_attempt as i64)
                        .execute(&mut *tx).await.map_err(db)?;
                    if done.rows_affected() == 0 {
                        tx.rollback().await.map_err(db)?;
                        return Ok(false);
                    }
                    let dep_id: String = ::sqlx::query("SELECT deployment_id FROM instructions WHERE id = $1").bind(id)
                        .fetch_one(&mut *tx).await.map_err(db)?.try_get("deployment_id").map_err(db)?;
                    ::sqlx::query(INSERT_EVENT).bind(&dep_id).bind(Some(id)).bind(from.as_str()).bind(to.as_str()).bind(actor).bind(&up.note).bind(now)
                        .execute(&mut *tx).await.map_err(db)?;
                    tx.commit().await.map_err(db)?;
                    Ok(true)
                }

                async fn transition_deployment(&self, id: &str, m: &DeploymentMove<'_>) -> Result<bool> {
                    let (from, to, note, actor, now) = (m.from, m.to, m.note, m.actor, m.now);
                    let mut tx = self.pool.begin().await.map_err(db)?;
                    let done = ::sqlx::query("UPDATE deployments SET state = $1, note = $2, updated_at = $3, wave = COALESCE($4, wave), go_live_at = COALESCE($5, go_live_at), expires_at = COALESCE($6, expires_at), plan = COALESCE($7, plan), policy = COALESCE($12, policy) WHERE id = $8 AND state = $9 AND ($10 < 0 OR wave = $10) AND ($11 < 0 OR revision = $11)")
                        .bind(to.as_str()).bind(note).bind(now).bind(m.wave.map(i64::from)).bind(m.go_live_at).bind(m.expires_at).bind(m.plan_json)
                        .bind(id).bind(from.as_str()).bind(m.from_wave.map_or(-1, i64::from)).bind(m.from_revision.map_or(-1, i64::from))
                        .bind(m.policy_json)
                        .execute(&mut *tx).await.map_err(db)?;
                    if done.rows_affected() == 0 {
                        tx.rollback().await.map_err(db)?;
                        return Ok(false);
                    }
                    ::sqlx::query(INSERT_EVENT).bind(id).bind(None::<String>).bind(from.as_str()).bind(to.as_str()).bind(actor).bind(note).bind(now)
                        .execute(&mut *tx).await.map_err(db)?;
                    if !m.bulk.is_empty() {
                        // PostgreSQL: the rows stay as read until commit (a
                        // report's compare-and-set waits, then finds the new
                        // state and is judged again); SQLite has one writer
                        let lock = if $backend == "postgres" { " FOR UPDATE" } else { "" };
                        let q = format!("SELECT id, state, wave FROM instructions WHERE deployment_id = $1 ORDER BY id{lock}");
                        let rows = ::sqlx::query(&q).bind(id)
                            .fetch_all(&mut *tx).await.map_err(db)?;
                        // per rule, its instructions as one UPDATE (in parts
                        // of 1000) and their events as multi-row INSERTs
                        let mut by_rule: Vec<Vec<String>> = vec![Vec::new(); m.bulk.len()];
                        let mut events = Vec::new();
                        for r in rows {
                            let iid: String = r.try_get("id").map_err(db)?;
                            let st: String = r.try_get("state").map_err(db)?;
                            let wave = r.try_get::<i64, _>("wave").map_err(db)? as u32;
                            let Some(k) = m.bulk.iter().position(|b| b.waves.matches(wave) && b.from.iter().any(|f| f.as_str() == st)) else {
                                continue;
                            };
                            let b = &m.bulk[k];
                            events.push(EventRecord {
                                seq: 0,
                                deployment_id: id.to_owned(),
                                instruction_id: Some(iid.clone()),
                                from_state: st,
                                to_state: b.to.as_str().to_owned(),
                                actor: actor.to_owned(),
                                note: b.note.clone(),
                                at: now,
                            });
                            by_rule[k].push(iid);
                        }
                        for (b, ids) in m.bulk.iter().zip(&by_rule) {
                            for part in ids.chunks(1_000) {
                                let q = format!("UPDATE instructions SET state = {}, go_live_at = COALESCE({}, go_live_at), note = {}, updated_at = {} WHERE id IN ({})", mark(1), mark(2), mark(3), mark(4), marks(5, part.len()));
                                let mut query = ::sqlx::query(&q).bind(b.to.as_str()).bind(b.go_live_at).bind(&b.note).bind(now);
                                for iid in part {
                                    query = query.bind(iid);
                                }
                                query.execute(&mut *tx).await.map_err(db)?;
                            }
                        }
                        insert_events(&mut tx, &events).await?;
                    }
                    for c in m.new_checks {
                        ::sqlx::query("INSERT INTO checks (id, deployment_id, target_id, state, result, output, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                            .bind(&c.id).bind(&c.deployment_id).bind(&c.target_id).bind(&c.state).bind(&c.result_json).bind(&c.output).bind(c.updated_at)
                            .execute(&mut *tx).await.map_err(db)?;
                    }
                    insert_instrs(&mut tx, m.new_instructions, actor, Some(now)).await?;
                    tx.commit().await.map_err(db)?;
                    Ok(true)
                }

                async fn events(&self, deployment_id: &str) -> Result<Vec<EventRecord>> {
                    ::sqlx::query("SELECT seq, deployment_id, instruction_id, from_state, to_state, actor, note, at FROM events WHERE deployment_id = $1 ORDER BY seq")
                        .bind(deployment_id).fetch_all(&self.read).await.map_err(db)?.iter().map(event).collect()
                }

                async fn audit(&self, f: &AuditFilter) -> Result<Vec<EventRecord>> {
                    // only the terms asked for, so that the planner takes the
                    // index of that column ((deployment_id, seq) or (actor,
                    // seq)) rather than reading every event newest first
                    let mut q = String::from("SELECT seq, deployment_id, instruction_id, from_state, to_state, actor, note, at FROM events");
                    let mut args: Vec<&str> = Vec::new();
                    for (column, value) in [("deployment_id", &f.deployment), ("actor", &f.actor)] {
                        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
                            args.push(v);
                            q.push_str(if args.len() == 1 { " WHERE " } else { " AND " });
                            q.push_str(&format!("{column} = {}", mark(args.len())));
                        }
                    }
                    // agents' events are left out of the actor index: any other
                    // actor names its condition, so that the index serves it
                    // (SQLite's LIKE ignores ASCII case; PostgreSQL's does not)
                    if f.actor.as_deref().is_some_and(|a| !a.is_empty() && !a.to_ascii_lowercase().starts_with("agent:")) {
                        q.push_str(" AND actor NOT LIKE 'agent:%'");
                    }
                    q.push_str(&format!(" ORDER BY seq DESC LIMIT {}", mark(args.len() + 1)));
                    let mut query = ::sqlx::query(&q);
                    for v in args {
                        query = query.bind(v);
                    }
                    query.bind(i64::from(f.limit.clamp(1, 10_000))).fetch_all(&self.read).await.map_err(db)?.iter().map(event).collect()
                }

                async fn append_event(&self, e: &EventRecord) -> Result<()> {
                    ::sqlx::query(INSERT_EVENT).bind(&e.deployment_id).bind(&e.instruction_id).bind(&e.from_state).bind(&e.to_state).bind(&e.actor).bind(&e.note).bind(e.at)
                        .execute(&self.pool).await.map_err(db)?;
                    Ok(())
                }

                async fn transition_instructions(&self, moves: &[InstructionMove], now: i64) -> Result<Vec<bool>> {
                    self.transition_instructions_held(&mut $crate::WriterHold::default(), moves, now).await
                }

                async fn transition_instructions_held(&self, hold: &mut $crate::WriterHold, moves: &[InstructionMove], now: i64) -> Result<Vec<bool>> {
                    // as sets: one UPDATE and one INSERT of events per round,
                    // round k holding the k-th move of each instruction (so
                    // moves of one instruction apply in order, as one by one)
                    let mut out = vec![false; moves.len()];
                    if moves.is_empty() {
                        return Ok(out);
                    }
                    let mut rounds: Vec<Vec<usize>> = Vec::new();
                    let mut seen: ::std::collections::HashMap<&str, usize> = ::std::collections::HashMap::new();
                    for (k, m) in moves.iter().enumerate() {
                        let n = seen.entry(m.id.as_str()).or_default();
                        if rounds.len() <= *n {
                            rounds.push(Vec::new());
                        }
                        rounds[*n].push(k);
                        *n += 1;
                    }
                    let mut mark_moved = |round: &[usize], ids: Vec<String>| {
                        let ids: ::std::collections::HashSet<String> = ids.into_iter().collect();
                        for k in round {
                            out[*k] = ids.contains(&moves[*k].id);
                        }
                    };
                    // each backend splits a set as its statements need
                    if let [round] = rounds.as_slice() {
                        let set: Vec<&InstructionMove> = round.iter().map(|k| &moves[*k]).collect();
                        mark_moved(round, super::sets::apply_alone(&self.pool, hold, &set, now).await?);
                        return Ok(out);
                    }
                    // a connection given back dirty (an error, or the caller
                    // gave up waiting) goes back through the pool's check
                    let mut conn = match hold.take::<::sqlx::pool::PoolConnection<_>>() {
                        Some(c) => c,
                        None => self.pool.acquire().await.map_err(db)?,
                    };
                    let mut tx = ::sqlx::Connection::begin(&mut *conn).await.map_err(db)?;
                    let mut moved = Vec::with_capacity(rounds.len());
                    for round in &rounds {
                        let set: Vec<&InstructionMove> = round.iter().map(|k| &moves[*k]).collect();
                        moved.push(super::sets::apply_round(&mut tx, &set, now).await?);
                    }
                    tx.commit().await.map_err(db)?;
                    hold.keep(conn);
                    for (round, ids) in rounds.iter().zip(moved) {
                        mark_moved(round, ids);
                    }
                    Ok(out)
                }

                async fn get_instructions(&self, ids: &[String]) -> Result<Vec<InstructionRecord>> {
                    let mut out = Vec::with_capacity(ids.len());
                    for part in ids.chunks(1_000) {
                        let q = format!("SELECT {INSTR_COLS} FROM instructions WHERE id IN ({})", marks(1, part.len()));
                        let mut query = ::sqlx::query(&q);
                        for id in part {
                            query = query.bind(id);
                        }
                        for r in query.fetch_all(&self.read).await.map_err(db)? {
                            out.push(instr(&r)?);
                        }
                    }
                    Ok(out)
                }

                async fn get_targets(&self, ids: &[String]) -> Result<Vec<TargetRecord>> {
                    let mut out = Vec::with_capacity(ids.len());
                    for part in ids.chunks(1_000) {
                        let q = format!("SELECT {TARGET_COLS} FROM targets WHERE id IN ({})", marks(1, part.len()));
                        let mut query = ::sqlx::query(&q);
                        for id in part {
                            query = query.bind(id);
                        }
                        for r in query.fetch_all(&self.read).await.map_err(db)? {
                            out.push(target(&r)?);
                        }
                    }
                    Ok(out)
                }

                async fn events_of(&self, deployment_id: &str, instruction_ids: &[String]) -> Result<Vec<EventRecord>> {
                    const COLS: &str = "seq, deployment_id, instruction_id, from_state, to_state, actor, note, at";
                    let q = format!("SELECT {COLS} FROM events WHERE deployment_id = $1 AND instruction_id IS NULL");
                    let mut out: Vec<EventRecord> = ::sqlx::query(&q).bind(deployment_id).fetch_all(&self.read).await.map_err(db)?.iter().map(event).collect::<Result<_>>()?;
                    for part in instruction_ids.chunks(1_000) {
                        let q = format!("SELECT {COLS} FROM events WHERE deployment_id = {} AND instruction_id IN ({})", mark(1), marks(2, part.len()));
                        let mut query = ::sqlx::query(&q).bind(deployment_id);
                        for id in part {
                            query = query.bind(id);
                        }
                        for r in query.fetch_all(&self.read).await.map_err(db)? {
                            out.push(event(&r)?);
                        }
                    }
                    out.sort_by_key(|e| e.seq);
                    Ok(out)
                }

                async fn instruction_counts(&self, deployment_ids: &[String]) -> Result<Vec<(String, u32, InstructionState, u32)>> {
                    let mut out = Vec::new();
                    for part in deployment_ids.chunks(1_000) {
                        let q = format!("SELECT deployment_id, wave, state, COUNT(*) AS n FROM instructions WHERE deployment_id IN ({}) GROUP BY deployment_id, wave, state", marks(1, part.len()));
                        let mut query = ::sqlx::query(&q);
                        for id in part {
                            query = query.bind(id);
                        }
                        for r in query.fetch_all(&self.read).await.map_err(db)? {
                            let state: String = r.try_get("state").map_err(db)?;
                            out.push((
                                r.try_get("deployment_id").map_err(db)?,
                                r.try_get::<i64, _>("wave").map_err(db)? as u32,
                                InstructionState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("instruction state {state:?}")))?,
                                r.try_get::<i64, _>("n").map_err(db)? as u32,
                            ));
                        }
                    }
                    Ok(out)
                }

                async fn add_user(&self, u: &UserRecord, token: &TokenRecord) -> Result<()> {
                    let mut tx = self.pool.begin().await.map_err(db)?;
                    let done = ::sqlx::query("INSERT INTO users (name, role, created_by, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING")
                        .bind(&u.name).bind(&u.role).bind(&u.created_by).bind(u.created_at)
                        .execute(&mut *tx).await.map_err(db)?;
                    if done.rows_affected() == 0 {
                        tx.rollback().await.map_err(db)?;
                        return Err(StoreError::Conflict(format!("user {} already exists; remove it first to issue a new token", u.name)));
                    }
                    ::sqlx::query(INSERT_TOKEN)
                        .bind(&token.hash).bind(token.kind.as_str()).bind(&token.subject).bind(token.created_at).bind(token.revoked_at).bind(&token.revoked_note)
                        .execute(&mut *tx).await.map_err(db)?;
                    tx.commit().await.map_err(db)
                }

                async fn get_user(&self, name: &str) -> Result<Option<UserRecord>> {
                    ::sqlx::query("SELECT name, role, created_by, created_at FROM users WHERE name = $1").bind(name)
                        .fetch_optional(&self.read).await.map_err(db)?.as_ref().map(user).transpose()
                }

                async fn list_users(&self) -> Result<Vec<UserRecord>> {
                    ::sqlx::query("SELECT name, role, created_by, created_at FROM users ORDER BY name")
                        .fetch_all(&self.read).await.map_err(db)?.iter().map(user).collect()
                }

                async fn remove_user(&self, name: &str) -> Result<bool> {
                    let mut tx = self.pool.begin().await.map_err(db)?;
                    let gone = ::sqlx::query("DELETE FROM users WHERE name = $1").bind(name).execute(&mut *tx).await.map_err(db)?;
                    ::sqlx::query("DELETE FROM tokens WHERE kind = 'user' AND subject = $1").bind(name).execute(&mut *tx).await.map_err(db)?;
                    ::sqlx::query("DELETE FROM user_keys WHERE user_name = $1").bind(name).execute(&mut *tx).await.map_err(db)?;
                    tx.commit().await.map_err(db)?;
                    Ok(gone.rows_affected() > 0)
                }

                async fn add_user_key(&self, k: &UserKeyRecord, event: &EventRecord) -> Result<bool> {
                    let mut tx = self.pool.begin().await.map_err(db)?;
                    let done = ::sqlx::query("INSERT INTO user_keys (keyid, user_name, key_json, added_by, added_at) SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM users WHERE name = $2) ON CONFLICT (keyid) DO NOTHING")
                        .bind(&k.keyid).bind(&k.user).bind(&k.key_json).bind(&k.added_by).bind(k.added_at)
                        .execute(&mut *tx).await.map_err(db)?;
                    if done.rows_affected() == 0 {
                        tx.rollback().await.map_err(db)?;
                        return Ok(false);
                    }
                    write_event(&mut *tx, event).await?;
                    tx.commit().await.map_err(db)?;
                    Ok(true)
                }

                async fn user_keys(&self, user: Option<&str>) -> Result<Vec<UserKeyRecord>> {
                    let rows = ::sqlx::query("SELECT keyid, user_name, key_json, added_by, added_at FROM user_keys WHERE $1 IS NULL OR user_name = $1 ORDER BY user_name, added_at, keyid")
                        .bind(user).fetch_all(&self.read).await.map_err(db)?;
                    rows.iter().map(|r| Ok(UserKeyRecord {
                        keyid: r.try_get("keyid").map_err(db)?,
                        user: r.try_get("user_name").map_err(db)?,
                        key_json: r.try_get("key_json").map_err(db)?,
                        added_by: r.try_get("added_by").map_err(db)?,
                        added_at: r.try_get("added_at").map_err(db)?,
                    })).collect()
                }

                async fn put_env(&self, e: &EnvRecord) -> Result<()> {
                    ::sqlx::query("INSERT INTO environments (name, policy, updated_by, updated_at) VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO UPDATE SET policy = excluded.policy, updated_by = excluded.updated_by, updated_at = excluded.updated_at")
                        .bind(&e.name).bind(&e.policy_json).bind(&e.updated_by).bind(e.updated_at)
                        .execute(&self.pool).await.map_err(db)?;
                    Ok(())
                }

                async fn get_env(&self, name: &str) -> Result<Option<EnvRecord>> {
                    ::sqlx::query("SELECT name, policy, updated_by, updated_at FROM environments WHERE name = $1").bind(name)
                        .fetch_optional(&self.read).await.map_err(db)?.as_ref().map(env).transpose()
                }

                async fn list_envs(&self) -> Result<Vec<EnvRecord>> {
                    ::sqlx::query("SELECT name, policy, updated_by, updated_at FROM environments ORDER BY name")
                        .fetch_all(&self.read).await.map_err(db)?.iter().map(env).collect()
                }

                async fn add_approval(&self, a: &ApprovalRecord, state: DeploymentState, actor: &str) -> Result<bool> {
                    let mut tx = self.pool.begin().await.map_err(db)?;
                    let done = ::sqlx::query("INSERT INTO approvals (deployment_id, revision, approver, decision, note, at, signed) SELECT $1, $2, $3, $4, $5, $6, $8 WHERE EXISTS (SELECT 1 FROM deployments WHERE id = $1 AND revision = $2 AND state = $7) ON CONFLICT (deployment_id, revision, approver) DO NOTHING")
                        .bind(&a.deployment_id).bind(a.revision as i64).bind(&a.approver).bind(&a.decision).bind(&a.note).bind(a.at).bind(state.as_str()).bind(&a.signed)
                        .execute(&mut *tx).await.map_err(db)?;
                    if done.rows_affected() == 0 {
                        tx.rollback().await.map_err(db)?;
                        return Ok(false);
                    }
                    let note = if a.note.is_empty() { format!("{}d by {}", a.decision, a.approver) } else { format!("{}d by {}: {}", a.decision, a.approver, a.note) };
                    ::sqlx::query(INSERT_EVENT).bind(&a.deployment_id).bind(None::<String>).bind(state.as_str()).bind(state.as_str()).bind(actor).bind(&note).bind(a.at)
                        .execute(&mut *tx).await.map_err(db)?;
                    tx.commit().await.map_err(db)?;
                    Ok(true)
                }

                async fn list_approvals(&self, deployment_id: &str) -> Result<Vec<ApprovalRecord>> {
                    let rows = ::sqlx::query("SELECT deployment_id, revision, approver, decision, note, at, signed FROM approvals WHERE deployment_id = $1 ORDER BY at, approver")
                        .bind(deployment_id).fetch_all(&self.read).await.map_err(db)?;
                    rows.iter().map(|r| Ok(ApprovalRecord {
                        deployment_id: r.try_get("deployment_id").map_err(db)?,
                        revision: r.try_get::<i64, _>("revision").map_err(db)? as u32,
                        approver: r.try_get("approver").map_err(db)?,
                        decision: r.try_get("decision").map_err(db)?,
                        note: r.try_get("note").map_err(db)?,
                        at: r.try_get("at").map_err(db)?,
                        signed: r.try_get("signed").map_err(db)?,
                    })).collect()
                }

                async fn revise_request(&self, id: &str, from: DeploymentState, revision: u32, to: DeploymentState, selector: &str, go_live_at: Option<i64>, reason: &str, actor: &str, note: &str, now: i64) -> Result<bool> {
                    let mut tx = self.pool.begin().await.map_err(db)?;
                    let done = ::sqlx::query("UPDATE deployments SET state = $1, selector = $2, go_live_at = $3, reason = $4, note = $5, updated_at = $6, revision = revision + 1, expires_at = NULL WHERE id = $7 AND state = $8 AND revision = $9")
                        .bind(to.as_str()).bind(selector).bind(go_live_at).bind(reason).bind(note).bind(now).bind(id).bind(from.as_str()).bind(revision as i64)
                        .execute(&mut *tx).await.map_err(db)?;
                    if done.rows_affected() == 0 {
                        tx.rollback().await.map_err(db)?;
                        return Ok(false);
                    }
                    ::sqlx::query("DELETE FROM checks WHERE deployment_id = $1").bind(id).execute(&mut *tx).await.map_err(db)?;
                    ::sqlx::query(INSERT_EVENT).bind(id).bind(None::<String>).bind(from.as_str()).bind(to.as_str()).bind(actor).bind(note).bind(now)
                        .execute(&mut *tx).await.map_err(db)?;
                    tx.commit().await.map_err(db)?;
                    Ok(true)
                }

                async fn list_checks(&self, deployment_id: &str) -> Result<Vec<CheckRecord>> {
                    let q = format!("SELECT {CHECK_COLS} FROM checks WHERE deployment_id = $1 ORDER BY target_id");
                    ::sqlx::query(&q).bind(deployment_id).fetch_all(&self.read).await.map_err(db)?.iter().map(check_row).collect()
                }

                async fn pending_checks(&self, target_id: &str) -> Result<Vec<CheckRecord>> {
                    let q = "SELECT c.id AS id, c.deployment_id AS deployment_id, c.target_id AS target_id, c.state AS state, c.result AS result, c.output AS output, c.updated_at AS updated_at FROM checks c JOIN deployments d ON d.id = c.deployment_id WHERE c.target_id = $1 AND c.state = 'pending' AND d.state = 'preflight' ORDER BY c.updated_at, c.id";
                    ::sqlx::query(q).bind(target_id).fetch_all(&self.read).await.map_err(db)?.iter().map(check_row).collect()
                }

                async fn get_check(&self, id: &str) -> Result<Option<CheckRecord>> {
                    let q = format!("SELECT {CHECK_COLS} FROM checks WHERE id = $1");
                    ::sqlx::query(&q).bind(id).fetch_optional(&self.read).await.map_err(db)?.as_ref().map(check_row).transpose()
                }

                async fn finish_check(&self, c: &CheckRecord, actor: &str) -> Result<bool> {
                    let mut tx = self.pool.begin().await.map_err(db)?;
                    let done = ::sqlx::query("UPDATE checks SET state = $1, result = $2, output = $3, updated_at = $4 WHERE id = $5 AND state = 'pending'")
                        .bind(&c.state).bind(&c.result_json).bind(&c.output).bind(c.updated_at).bind(&c.id)
                        .execute(&mut *tx).await.map_err(db)?;
                    if done.rows_affected() == 0 {
                        tx.rollback().await.map_err(db)?;
                        return Ok(false);
                    }
                    let note = format!("preflight {} on {}", c.state, c.target_id);
                    ::sqlx::query(INSERT_EVENT).bind(&c.deployment_id).bind(Some(&c.id)).bind("pending").bind(&c.state).bind(actor).bind(&note).bind(c.updated_at)
                        .execute(&mut *tx).await.map_err(db)?;
                    tx.commit().await.map_err(db)?;
                    Ok(true)
                }

                async fn hold_lease(&self, name: &str, holder: &str, now: i64, ttl_ms: i64) -> Result<bool> {
                    let done = ::sqlx::query("INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at WHERE leases.holder = excluded.holder OR leases.expires_at < $4")
                        .bind(name).bind(holder).bind(now + ttl_ms).bind(now)
                        .execute(&self.pool).await.map_err(db)?;
                    Ok(done.rows_affected() == 1)
                }

                async fn state_counts(&self, online_since: i64) -> Result<StateCounts> {
                    let row = ::sqlx::query("SELECT COUNT(*) AS n, COALESCE(SUM(CASE WHEN last_seen >= $1 THEN 1 ELSE 0 END), 0) AS online FROM targets")
                        .bind(online_since).fetch_one(&self.read).await.map_err(db)?;
                    let targets: i64 = row.try_get("n").map_err(db)?;
                    let targets_online: i64 = row.try_get("online").map_err(db)?;
                    let mut out = StateCounts { targets, targets_online, ..Default::default() };
                    for (table, into) in [("deployments", &mut out.deployments), ("instructions", &mut out.instructions)] {
                        let q = format!("SELECT state, COUNT(*) AS n FROM {table} GROUP BY state ORDER BY state");
                        for r in ::sqlx::query(&q).fetch_all(&self.read).await.map_err(db)? {
                            into.push((r.try_get("state").map_err(db)?, r.try_get("n").map_err(db)?));
                        }
                    }
                    Ok(out)
                }
            }
        }
    };
}
