//! The `Store` trait: convoy's persistence at the level of its operations.
//! Backends live in their own crates (`convoy-store-sqlite`,
//! `convoy-store-postgres`) and share their SQL through [`impl_sql_store!`];
//! [`conformance`] is the one test suite every backend must pass.
//!
//! Invariant: every state change of a deployment or instruction is written
//! together with its event (time, actor, note) in one transaction, and only
//! if the row is still in the state the caller saw (compare-and-set).

pub mod cached;
pub mod conformance;
mod records;
mod sql;

pub use cached::{CachedStore, ALL_WORK};
pub use records::*;

use async_trait::async_trait;
use convoy_domain::{DeploymentState, InstructionState};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Backend(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The migrations a database at schema `current` still needs, in order;
/// an error if the database is newer than this build.
pub fn pending_migrations(current: i64, all: &'static [(i64, &'static str)]) -> Result<&'static [(i64, &'static str)]> {
    let latest = all.last().map_or(0, |(v, _)| *v);
    if current > latest {
        return Err(StoreError::Backend(format!(
            "database schema version {current} is newer than this build knows ({latest}); upgrade convoy"
        )));
    }
    Ok(&all[all.iter().take_while(|(v, _)| *v <= current).count()..])
}

/// A writing connection that a store lent to a run of report batches
/// ([`Store::transition_instructions_held`]); empty until the first batch.
/// Dropping it gives the connection back to its pool.
#[derive(Default)]
pub struct WriterHold(Option<Box<dyn std::any::Any + Send>>);

impl WriterHold {
    /// Gives the connection back, if one is held.
    pub fn release(&mut self) {
        self.0 = None;
    }

    pub fn is_held(&self) -> bool {
        self.0.is_some()
    }

    /// The held connection, taken out (for a backend): `None` if none is
    /// held or it is of another type.
    pub fn take<C: Send + 'static>(&mut self) -> Option<C> {
        let held = self.0.take()?;
        held.downcast::<C>().ok().map(|c| *c)
    }

    /// Keeps a connection for the next batch (for a backend).
    pub fn keep<C: Send + 'static>(&mut self, conn: C) {
        self.0 = Some(Box::new(conn));
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A name for logs: `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    async fn put_token(&self, t: &TokenRecord) -> Result<()>;
    async fn find_token(&self, hash: &str) -> Result<Option<TokenRecord>>;
    /// Live (unrevoked) tokens of a kind.
    async fn count_tokens(&self, kind: TokenKind) -> Result<u64>;
    /// Makes `new` the one live token of its (kind, subject): the others
    /// are marked revoked with `note`, in one transaction with `event`.
    /// Returns how many were revoked.
    async fn rotate_token(&self, new: &TokenRecord, note: &str, event: &EventRecord) -> Result<u64>;

    /// Stores an enrolment token object and its hashed secret at once.
    async fn create_enrol_token(&self, e: &EnrolTokenRecord, token: &TokenRecord, event: &EventRecord) -> Result<()>;
    async fn get_enrol_token(&self, id: &str) -> Result<Option<EnrolTokenRecord>>;
    /// Oldest first.
    async fn list_enrol_tokens(&self) -> Result<Vec<EnrolTokenRecord>>;
    /// Revokes an enrolment token (and its secret); false if there was no
    /// such token or it was already revoked.
    async fn revoke_enrol_token(&self, id: &str, event: &EventRecord) -> Result<bool>;
    /// Enrols a target in one transaction: takes one use of the enrolment
    /// token `enrol_token` (if given) only while it is unrevoked, unexpired
    /// and not used up (else `Conflict` and nothing is written), then
    /// writes the target, its agent token and `event`.
    async fn enrol_target(
        &self,
        t: &TargetRecord,
        agent_token: &TokenRecord,
        enrol_token: Option<&str>,
        event: &EventRecord,
    ) -> Result<()>;

    async fn insert_target(&self, t: &TargetRecord) -> Result<()>;
    /// Records what a target reports about itself; never its labels.
    async fn update_target(&self, id: &str, hostname: &str, inventory_json: &str, now: i64) -> Result<()>;
    /// Sets a target's labels (an operator's act), with its event; false if
    /// there is no such target.
    async fn set_target_labels(&self, id: &str, labels_json: &str, event: &EventRecord) -> Result<bool>;
    /// Sets the target's warning (empty clears it).
    async fn set_target_warning(&self, id: &str, warning: &str) -> Result<()>;
    /// Records when targets were last seen (batched by the caller).
    async fn touch_targets(&self, seen: &[(String, i64)]) -> Result<()>;
    async fn get_target(&self, id: &str) -> Result<Option<TargetRecord>>;
    async fn list_targets(&self) -> Result<Vec<TargetRecord>>;
    /// Every target's id, hostname and labels only (no inventory), in the
    /// order of [`Store::list_targets`]: what selectors and sites need.
    async fn list_target_labels(&self) -> Result<Vec<TargetLabels>>;
    /// [`Store::list_targets`] narrowed by the database to the targets whose
    /// labels may hold every `key=value` of `having` (a selector's terms),
    /// in one read. It may return more (the caller matches exactly), never
    /// fewer.
    async fn list_targets_having(&self, having: &[(String, String)]) -> Result<Vec<TargetRecord>>;
    /// The enrolled targets among `ids` (any order; unknown ids are left out).
    async fn get_targets(&self, ids: &[String]) -> Result<Vec<TargetRecord>>;
    /// Removes a target and revokes its credential, unless it has work in an
    /// unsettled deployment (`Conflict`). Its history stays in the events.
    /// Returns false if there was no such target.
    async fn remove_target(&self, id: &str) -> Result<bool>;

    /// Pauses an unsettled deployment (no new wave starts), with its event;
    /// false if it is settled, unknown or already paused.
    async fn pause(&self, id: &str, by: &str, event: &EventRecord) -> Result<bool>;
    /// Resumes a paused deployment, with its event; false if it was not paused.
    async fn resume(&self, id: &str, event: &EventRecord) -> Result<bool>;
    /// Who paused the deployment, if it is paused.
    async fn paused_by(&self, id: &str) -> Result<Option<String>>;

    /// Grants (or re-grants) a target the relay role for a site, with its event.
    async fn grant_relay(&self, r: &RelayRecord, event: &EventRecord) -> Result<()>;
    /// False if the target was no relay.
    async fn revoke_relay(&self, target_id: &str, event: &EventRecord) -> Result<bool>;
    async fn list_relays(&self) -> Result<Vec<RelayRecord>>;

    /// The server's key named `name` as `(public, secret)`: stored on
    /// first use from `make()`, the same for every server on the database.
    async fn server_key(&self, name: &str, make: (String, String), now: i64) -> Result<(String, String)>;

    /// Stores version `version` of a TUF role's metadata; `Ok(false)` if
    /// that version exists (versions are written once, never changed).
    async fn put_tuf(&self, role: &str, version: u64, body: &[u8], now: i64) -> Result<bool>;

    /// A TUF role's metadata: that version, or the newest.
    async fn get_tuf(&self, role: &str, version: Option<u64>) -> Result<Option<(u64, Vec<u8>)>>;

    /// Inserts a release; an existing `app@version` with the same digest is
    /// `Ok(false)`, with another digest a `Conflict`.
    async fn insert_release(&self, r: &ReleaseRecord) -> Result<bool>;
    async fn get_release(&self, app: &str, version: &str) -> Result<Option<ReleaseRecord>>;
    /// Releases without their manifests, newest first.
    async fn list_releases(&self) -> Result<Vec<ReleaseRecord>>;

    /// Writes a deployment, its instructions and their creation events at once.
    async fn create_deployment(
        &self,
        d: &DeploymentRecord,
        instructions: &[InstructionRecord],
        actor: &str,
    ) -> Result<()>;
    async fn get_deployment(&self, id: &str) -> Result<Option<DeploymentRecord>>;
    /// Newest first.
    async fn list_deployments(&self, limit: u32) -> Result<Vec<DeploymentRecord>>;
    /// Every deployment made from the release plan `plan`, oldest first.
    async fn plan_deployments(&self, plan: &str) -> Result<Vec<DeploymentRecord>>;
    /// Deployments not yet settled (the scheduler's work list).
    async fn active_deployments(&self) -> Result<Vec<DeploymentRecord>>;
    async fn list_instructions(&self, deployment_id: &str) -> Result<Vec<InstructionRecord>>;
    /// The versions a deployment's targets ran before it (each once).
    async fn previous_versions(&self, deployment_id: &str) -> Result<Vec<String>>;
    /// A page of a deployment's instructions in id order: those with an id
    /// after `after`, in one of `states` (any when empty) and of `wave`
    /// (any when `None`), at most `limit`.
    async fn instructions_page(
        &self,
        deployment_id: &str,
        states: &[InstructionState],
        wave: Option<u32>,
        after: &str,
        limit: u32,
    ) -> Result<Vec<InstructionRecord>>;
    async fn get_instruction(&self, id: &str) -> Result<Option<InstructionRecord>>;
    /// The instructions of these ids that exist, in any order.
    async fn get_instructions(&self, ids: &[String]) -> Result<Vec<InstructionRecord>>;
    /// A target's last `limit` instructions of any state, most recently
    /// changed first (its history of deployments).
    async fn target_instructions(&self, target_id: &str, limit: u32) -> Result<Vec<InstructionRecord>>;
    /// Instructions with work pending for a target, oldest first: agent
    /// work, and `staged` ones (waiting for go-live; DDI devices are shown
    /// them as actions whose maintenance window has not opened).
    async fn pending_instructions(&self, target_id: &str) -> Result<Vec<InstructionRecord>>;
    /// Targets with an unsettled instruction for `app` in an unsettled deployment.
    async fn busy_targets(&self, app: &str) -> Result<Vec<String>>;

    /// Moves one instruction if it is still in `(from, from_attempt)`.
    /// Returns false (and writes nothing) if it was not.
    async fn transition_instruction(
        &self,
        id: &str,
        from: InstructionState,
        from_attempt: u32,
        up: &InstructionUpdate,
        actor: &str,
        now: i64,
    ) -> Result<bool>;

    /// Moves a deployment if it is still in `from`, and with it every
    /// instruction in one of `bulk.from` states.
    async fn transition_deployment(&self, id: &str, m: &DeploymentMove<'_>) -> Result<bool>;

    async fn events(&self, deployment_id: &str) -> Result<Vec<EventRecord>>;
    /// A deployment's own events and those of the named instructions, in order.
    async fn events_of(&self, deployment_id: &str, instruction_ids: &[String]) -> Result<Vec<EventRecord>>;
    /// Instructions per (deployment, wave, state) of the named deployments.
    async fn instruction_counts(&self, deployment_ids: &[String]) -> Result<Vec<(String, u32, InstructionState, u32)>>;
    /// The audit log, newest first, by deployment and/or actor.
    async fn audit(&self, f: &AuditFilter) -> Result<Vec<EventRecord>>;
    /// Appends an event that belongs to no state move (users, environments).
    async fn append_event(&self, e: &EventRecord) -> Result<()>;

    /// Applies report-driven moves in one transaction, as sets (a constant
    /// number of statements however many moves, more only when one
    /// instruction moves several times); each is a compare-and-set like
    /// `transition_instruction`, in the order given. Returns which moved.
    async fn transition_instructions(&self, moves: &[InstructionMove], now: i64) -> Result<Vec<bool>>;

    /// [`Store::transition_instructions`] on a writing connection that
    /// `hold` keeps for the next call, so that a run of batches skips the
    /// pool's hand-over and check between them. The caller gives it back
    /// (drops or [`WriterHold::release`]s it) as soon as no batch follows
    /// at once, and within a bound: while it is held, the store's other
    /// writers may wait for it (SQLite has one). A backend without
    /// connections ignores it.
    async fn transition_instructions_held(
        &self,
        hold: &mut WriterHold,
        moves: &[InstructionMove],
        now: i64,
    ) -> Result<Vec<bool>> {
        let _ = hold;
        self.transition_instructions(moves, now).await
    }

    /// Adds a user and its token at once; `Conflict` if the name is taken.
    async fn add_user(&self, u: &UserRecord, token: &TokenRecord) -> Result<()>;
    async fn get_user(&self, name: &str) -> Result<Option<UserRecord>>;
    async fn list_users(&self) -> Result<Vec<UserRecord>>;
    /// Removes a user and revokes its tokens; false if there was none.
    async fn remove_user(&self, name: &str) -> Result<bool>;
    /// Registers a user's public key (audited); `false` if the key is
    /// registered already or the user does not exist.
    async fn add_user_key(&self, k: &UserKeyRecord, event: &EventRecord) -> Result<bool>;
    /// Registered keys, of one user or all.
    async fn user_keys(&self, user: Option<&str>) -> Result<Vec<UserKeyRecord>>;

    /// Creates or replaces an environment.
    async fn put_env(&self, e: &EnvRecord) -> Result<()>;
    async fn get_env(&self, name: &str) -> Result<Option<EnvRecord>>;
    async fn list_envs(&self) -> Result<Vec<EnvRecord>>;

    /// Records an approval or rejection for the request's current revision,
    /// with its event; false if this approver already decided on it.
    async fn add_approval(&self, a: &ApprovalRecord, state: DeploymentState, actor: &str) -> Result<bool>;
    async fn list_approvals(&self, deployment_id: &str) -> Result<Vec<ApprovalRecord>>;
    /// Changes a request (selector, go-live, reason) if it is still in
    /// `from` at `revision`: bumps the revision (voiding its approvals),
    /// drops its preflight results and moves it to `to`.
    #[allow(clippy::too_many_arguments)]
    async fn revise_request(
        &self,
        id: &str,
        from: DeploymentState,
        revision: u32,
        to: DeploymentState,
        selector: &str,
        go_live_at: Option<i64>,
        reason: &str,
        actor: &str,
        note: &str,
        now: i64,
    ) -> Result<bool>;

    async fn list_checks(&self, deployment_id: &str) -> Result<Vec<CheckRecord>>;
    /// A target's pending checks of requests in preflight.
    async fn pending_checks(&self, target_id: &str) -> Result<Vec<CheckRecord>>;
    async fn get_check(&self, id: &str) -> Result<Option<CheckRecord>>;
    /// Settles a pending check; false if it was no longer pending.
    async fn finish_check(&self, c: &CheckRecord, actor: &str) -> Result<bool>;

    /// Takes or renews the named lease for `holder` until `now + ttl_ms`;
    /// false while another holder's lease runs.
    async fn hold_lease(&self, name: &str, holder: &str, now: i64, ttl_ms: i64) -> Result<bool>;

    /// `(state, count)` of deployments and of instructions, for metrics.
    async fn state_counts(&self, online_since: i64) -> Result<StateCounts>;
}

#[cfg(test)]
mod tests {
    #[test]
    fn migrations_pending_and_newer_databases() {
        const ALL: &[(i64, &str)] = &[(1, "a"), (2, "b")];
        assert_eq!(super::pending_migrations(0, ALL).unwrap().len(), 2);
        assert_eq!(super::pending_migrations(1, ALL).unwrap(), &[(2, "b")]);
        assert!(super::pending_migrations(2, ALL).unwrap().is_empty());
        let e = super::pending_migrations(3, ALL).unwrap_err().to_string();
        assert!(e.contains("newer than this build"), "{e}");
    }
}
