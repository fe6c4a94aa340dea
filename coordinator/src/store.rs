//! The coordinator's durable state, behind one interface with two backends.
//!
//! - [`redb`](self::redb): the embedded default, one file in the data directory, for a
//!   cluster with one coordinator.
//! - [`postgres`](self::postgres): a PostgreSQL database shared by two or more
//!   coordinators, one of which leads at a time through a lease row ([`lease`]).
//!
//! Every method is one transaction, committed before it returns, so a caller that
//! acts on a result (answers an admin, sends an assignment) only ever acts on state
//! that survives a crash. On PostgreSQL every write is also *fenced*: it commits only
//! if this coordinator still holds the lease epoch it was elected with, checked in
//! the same transaction, so a leader that was paused or cut off and has been
//! replaced can never write again ([`StoreError::Fenced`]).
//!
//! The same conformance suite (`tests/tests/store`) runs against both backends.

pub mod config;
pub mod lease;
mod migrations;
mod postgres;
mod redb;
pub(crate) mod retry;

use std::path::Path;

use helix_protocol::cache::CacheEntry;
use helix_protocol::{
    AgentId, AgentInfo, AgentState, Build, BuildId, BuildPhase, Digest, Job, JobId, Platform,
    Timestamp,
};
use serde::{Deserialize, Serialize};

use self::config::PostgresConfig;
pub use self::lease::{Candidate, LeaseView, Standing};
use self::postgres::PgStore;
use self::redb::RedbStore;

/// The schema this code reads and writes (both backends).
pub const SCHEMA_VERSION: u32 = 1;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("database error: {0}")]
    Redb(#[from] ::redb::Error),
    #[error("PostgreSQL error: {0}")]
    Postgres(String),
    /// The database cannot be reached now; the operation may succeed if retried.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// Another coordinator was elected after this one: it must stop acting as leader.
    #[error("fenced: this coordinator led in epoch {epoch}, but {current} has since been elected; stepping down")]
    Fenced { epoch: u64, current: String },
    /// A write was attempted by a coordinator that does not lead.
    #[error("this coordinator does not lead the cluster (any more): retry, and the request goes to the leader")]
    NotLeader,
    #[error("corrupt record in {table}: {reason}")]
    Corrupt { table: &'static str, reason: String },
    #[error("the database has schema version {found}, newer than this coordinator knows ({known}): upgrade helix-coordinator")]
    SchemaTooNew { found: u32, known: u32 },
    #[error("the database belongs to cluster {found:?}, not {expected:?}: give --cluster {found:?}, or a database of its own for a new cluster")]
    WrongCluster { found: String, expected: String },
    #[error("the database belongs to a cluster whose CA is sha256 {found}, but this coordinator's CA is sha256 {ours}: initialize further coordinators with `helix-coordinator init --ca-from DIR`, DIR holding a copy of the first one's ca.pem, ca.key and admin.pem")]
    WrongCa { found: String, ours: String },
    #[error(
        "the database has not been initialized: run `helix-coordinator init --store ...` first"
    )]
    NotInitialized,
    #[error("agent {0} is not enrolled")]
    NoSuchAgent(AgentId),
    #[error(transparent)]
    Token(#[from] TokenRefusal),
    #[error("the store task failed: {0}")]
    Task(String),
    #[error("{0} is not supported")]
    Unsupported(&'static str),
}

impl StoreError {
    /// Worth retrying: the database was away, not wrong.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }

    /// This coordinator must stop leading.
    pub fn is_fenced(&self) -> bool {
        matches!(self, StoreError::Fenced { .. } | StoreError::NotLeader)
    }
}

/// Why a join token was not accepted. The messages are what the joining agent sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenRefusal {
    #[error("the join token is unknown to this coordinator (create one with `helix-coordinator token create`)")]
    Unknown,
    #[error(
        "the join token expired at {0} (create a new one with `helix-coordinator token create`)"
    )]
    Expired(Timestamp),
    #[error(
        "the join token has been used up (create a new one with `helix-coordinator token create`)"
    )]
    UsedUp,
}

/// An enrolled agent, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub id: AgentId,
    pub name: String,
    pub state: AgentState,
    pub enrolled_at: Timestamp,
    /// What the agent said in its last `Hello`.
    #[serde(default)]
    pub platforms: Vec<Platform>,
    #[serde(default)]
    pub capacity: u32,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub builder: String,
    #[serde(default)]
    pub last_seen: Option<Timestamp>,
}

impl AgentRecord {
    /// The listing row, given whether it is connected now and how many jobs it holds.
    pub fn info(&self, connected: bool, running_jobs: u32) -> AgentInfo {
        AgentInfo {
            id: self.id,
            name: self.name.clone(),
            platforms: self.platforms.clone(),
            capacity: self.capacity,
            labels: self.labels.clone(),
            version: self.version.clone(),
            builder: self.builder.clone(),
            state: self.state,
            connected,
            last_seen: self.last_seen,
            enrolled_at: self.enrolled_at,
            running_jobs,
        }
    }
}

/// A join token, stored under the sha256 of its secret (never the secret itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub uses_left: u32,
}

impl TokenRecord {
    /// The record after one enrolment at `now`, or why the token cannot enrol.
    pub fn spend(&self, now: Timestamp) -> Result<TokenRecord, TokenRefusal> {
        if now >= self.expires_at {
            return Err(TokenRefusal::Expired(self.expires_at));
        }
        if self.uses_left == 0 {
            return Err(TokenRefusal::UsedUp);
        }
        Ok(TokenRecord {
            uses_left: self.uses_left - 1,
            ..self.clone()
        })
    }

    /// Expired or used up: nothing can enrol with it any more.
    pub fn is_dead(&self, now: Timestamp) -> bool {
        self.expires_at <= now || self.uses_left == 0
    }
}

/// One record to write in a [`Store::commit`].
#[derive(Debug, Clone)]
pub enum Record {
    Build(Build),
    Job(Job),
    /// A verified platform image for the result cache.
    Cache(CacheEntry),
}

pub(crate) fn is_terminal(phase: &BuildPhase) -> bool {
    matches!(
        phase,
        BuildPhase::Succeeded { .. } | BuildPhase::Failed { .. } | BuildPhase::Cancelled { .. }
    )
}

/// The coordinator's store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    Redb(RedbStore),
    Postgres(PgStore),
}

/// Run `$call` on the backend: redb on the blocking pool, PostgreSQL in place.
macro_rules! dispatch {
    ($self:ident, |$s:ident| $call:expr) => {
        match &$self.backend {
            Backend::Redb(r) => {
                let $s = r.clone();
                tokio::task::spawn_blocking(move || $call)
                    .await
                    .map_err(|e| StoreError::Task(e.to_string()))?
            }
            Backend::Postgres($s) => $call.await,
        }
    };
}

impl Store {
    /// Create a new embedded database at `path` for `cluster`. Refuses an existing file.
    pub fn create_redb(path: &Path, cluster: &str) -> Result<Store, StoreError> {
        Ok(Store {
            backend: Backend::Redb(RedbStore::create(path, cluster)?),
        })
    }

    /// Open an existing embedded database, checking its schema version.
    pub fn open_redb(path: &Path) -> Result<Store, StoreError> {
        Ok(Store {
            backend: Backend::Redb(RedbStore::open(path)?),
        })
    }

    /// Connect to a PostgreSQL store, apply its migrations and record `cluster` (or
    /// check that the database belongs to `cluster`). Used by `init --store`.
    pub async fn init_postgres(pg: &PostgresConfig, cluster: &str) -> Result<Store, StoreError> {
        Ok(Store {
            backend: Backend::Postgres(PgStore::connect(pg, Some(cluster)).await?),
        })
    }

    /// Connect to an initialized PostgreSQL store, applying pending migrations.
    pub async fn open_postgres(pg: &PostgresConfig) -> Result<Store, StoreError> {
        Ok(Store {
            backend: Backend::Postgres(PgStore::connect(pg, None).await?),
        })
    }

    /// `redb` or `postgres`.
    pub fn kind(&self) -> &'static str {
        match &self.backend {
            Backend::Redb(_) => "redb",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Whether coordinators elect a leader through this store (PostgreSQL). The
    /// embedded store is opened by one process only, which always leads.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// The cluster name recorded at `init`.
    pub async fn cluster(&self) -> Result<String, StoreError> {
        dispatch!(self, |s| s.cluster())
    }

    /// Check that this coordinator's CA is the cluster's: the first coordinator to
    /// call this records its CA's fingerprint; every later one must match it.
    /// (Nothing to check on the embedded store, which one coordinator owns.)
    pub async fn check_ca(&self, fingerprint: &str) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Redb(_) => Ok(()),
            Backend::Postgres(p) => p.check_ca(fingerprint).await,
        }
    }

    /// Whether the database answers now (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Redb(_) => Ok(()),
            Backend::Postgres(p) => p.ping().await,
        }
    }

    // ---- leadership -----------------------------------------------------------

    /// Heartbeat, then renew the lease this coordinator holds, or take it if it is
    /// free or expired. On success later writes are fenced by the returned epoch.
    /// The embedded store always answers [`Standing::Leader`] with epoch 0.
    pub async fn campaign(&self, me: &Candidate) -> Result<Standing, StoreError> {
        match &self.backend {
            Backend::Redb(_) => Ok(Standing::Leader { epoch: 0 }),
            Backend::Postgres(p) => p.campaign(me).await,
        }
    }

    /// Stop writing as leader at once (lost lease, fenced write, shutdown). Later
    /// writes fail with [`StoreError::NotLeader`] until the next election.
    pub fn step_down(&self) {
        if let Backend::Postgres(p) = &self.backend {
            p.step_down();
        }
    }

    /// Give up the lease on a clean shutdown so a standby takes over at once.
    pub async fn resign(&self, me: &Candidate) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Redb(_) => Ok(()),
            Backend::Postgres(p) => p.resign(me).await,
        }
    }

    /// The lease and the coordinators seen recently (for `cluster status`, redirects).
    pub async fn lease(&self) -> Result<LeaseView, StoreError> {
        match &self.backend {
            Backend::Redb(_) => Ok(LeaseView::embedded()),
            Backend::Postgres(p) => p.lease().await,
        }
    }

    // ---- join tokens ----------------------------------------------------------

    /// Store a new token under the hash of its secret.
    pub async fn put_token(
        &self,
        secret_hash: [u8; 32],
        record: &TokenRecord,
    ) -> Result<(), StoreError> {
        let record = record.clone();
        dispatch!(self, |s| s.put_token(secret_hash, &record))
    }

    /// Consume one use of a token and enrol an agent, in one transaction: a token can
    /// never be spent without the agent being recorded, nor the reverse.
    pub async fn enroll(
        &self,
        secret_hash: [u8; 32],
        now: Timestamp,
        agent: &AgentRecord,
    ) -> Result<(), StoreError> {
        let agent = agent.clone();
        dispatch!(self, |s| s.enroll(secret_hash, now, &agent))
    }

    /// Drop tokens that expired before `now` or are used up; returns how many.
    pub async fn prune_tokens(&self, now: Timestamp) -> Result<usize, StoreError> {
        dispatch!(self, |s| s.prune_tokens(now))
    }

    // ---- agents ---------------------------------------------------------------

    pub async fn agent(&self, id: AgentId) -> Result<Option<AgentRecord>, StoreError> {
        dispatch!(self, |s| s.agent(id))
    }

    /// Every enrolled agent, by name.
    pub async fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        dispatch!(self, |s| s.agents())
    }

    /// Read-modify-write one agent record in one transaction.
    pub async fn update_agent<F>(&self, id: AgentId, f: F) -> Result<AgentRecord, StoreError>
    where
        F: FnOnce(&mut AgentRecord) + Send + 'static,
    {
        dispatch!(self, |s| s.update_agent(id, f))
    }

    // ---- builds and jobs ------------------------------------------------------

    /// Write these records in one transaction: a build with its jobs at submit, or a
    /// scheduler step's transitions together with the build phases they imply.
    pub async fn commit(&self, records: Vec<Record>) -> Result<(), StoreError> {
        dispatch!(self, |s| s.commit(&records))
    }

    pub async fn build(&self, id: BuildId) -> Result<Option<Build>, StoreError> {
        dispatch!(self, |s| s.build(id))
    }

    pub async fn job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        dispatch!(self, |s| s.job(id))
    }

    /// A build and its jobs (in the build's platform order).
    pub async fn build_with_jobs(
        &self,
        id: BuildId,
    ) -> Result<Option<(Build, Vec<Job>)>, StoreError> {
        dispatch!(self, |s| s.build_with_jobs(id))
    }

    /// Every build not yet in a terminal state, with its jobs, oldest first: what a
    /// restarted (or newly elected) coordinator resumes.
    pub async fn active_builds(&self) -> Result<Vec<(Build, Vec<Job>)>, StoreError> {
        dispatch!(self, |s| s.active_builds())
    }

    /// The newest `limit` builds, newest first.
    pub async fn recent_builds(&self, limit: usize) -> Result<Vec<Build>, StoreError> {
        dispatch!(self, |s| s.recent_builds(limit))
    }

    // ---- build logs (PostgreSQL; the embedded store keeps them in files) --------

    /// Append to a job's log in one fenced transaction: `plan` gets how much of the
    /// attempt's stream is stored (`known` when the caller knows, else read from the
    /// database, as after a takeover) and says what to store. The head of the log is
    /// dropped past `cap` bytes. Returns (fresh bytes stored, the stream's end).
    pub async fn log_append<F>(
        &self,
        job: JobId,
        attempt: u32,
        known: Option<u64>,
        cap: u64,
        plan: F,
    ) -> Result<(usize, u64), StoreError>
    where
        F: FnOnce(u64) -> Option<crate::logs::Piece> + Send,
    {
        match &self.backend {
            Backend::Redb(_) => Err(StoreError::Unsupported("build logs in the embedded store")),
            Backend::Postgres(p) => p.log_append(job, attempt, known, cap, plan).await,
        }
    }

    /// A job's log from byte `from`: the bytes and the offset to read from next.
    pub async fn log_read(&self, job: JobId, from: u64) -> Result<(Vec<u8>, u64), StoreError> {
        match &self.backend {
            Backend::Redb(_) => Err(StoreError::Unsupported("build logs in the embedded store")),
            Backend::Postgres(p) => p.log_read(job, from).await,
        }
    }

    // ---- build contexts (PostgreSQL; the embedded store keeps them in files) ----

    /// Store a verified context file for every coordinator (fenced; a no-op when it
    /// is stored already).
    pub async fn context_put(&self, digest: &Digest, file: &Path) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Redb(_) => Err(StoreError::Unsupported("contexts in the embedded store")),
            Backend::Postgres(p) => p.context_put(digest, file).await,
        }
    }

    /// The size of a stored context, if it is stored.
    pub async fn context_size(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        match &self.backend {
            Backend::Redb(_) => Ok(None),
            Backend::Postgres(p) => p.context_size(digest).await,
        }
    }

    /// Write a stored context into `file`; `false` when it is not stored.
    pub async fn context_fetch(&self, digest: &Digest, file: &Path) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Redb(_) => Ok(false),
            Backend::Postgres(p) => p.context_fetch(digest, file).await,
        }
    }

    /// Delete stored contexts not in `keep` and older than `min_age`.
    pub async fn context_gc(
        &self,
        keep: &[Digest],
        min_age: std::time::Duration,
    ) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Redb(_) => Ok(0),
            Backend::Postgres(p) => p.context_gc(keep, min_age).await,
        }
    }

    // ---- result cache ---------------------------------------------------------

    /// The entry for `key` in `repository`, if any.
    pub async fn cache_lookup(
        &self,
        key: &Digest,
        repository: &str,
    ) -> Result<Option<CacheEntry>, StoreError> {
        let (key, repository) = (key.clone(), repository.to_string());
        dispatch!(self, |s| s.cache_lookup(&key, &repository))
    }

    /// Record a hit (for `cache prune --older-than`).
    pub async fn cache_touch(
        &self,
        key: &Digest,
        repository: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let (key, repository) = (key.clone(), repository.to_string());
        dispatch!(self, |s| s.cache_touch(&key, &repository, now))
    }

    pub async fn cache_remove(&self, key: &Digest, repository: &str) -> Result<(), StoreError> {
        let (key, repository) = (key.clone(), repository.to_string());
        dispatch!(self, |s| s.cache_remove(&key, &repository))
    }

    pub async fn cache_list(&self) -> Result<Vec<CacheEntry>, StoreError> {
        dispatch!(self, |s| s.cache_list())
    }

    /// Remove entries last used before `before` (all of them when `None`).
    pub async fn cache_prune(&self, before: Option<Timestamp>) -> Result<u64, StoreError> {
        dispatch!(self, |s| s.cache_prune(before))
    }
}
