//! The coordinator's durable state in an embedded redb database.
//!
//! Only this module touches the database. Every method is one transaction, committed
//! before it returns, so a caller that acts on a result (answers an admin, sends an
//! assignment) only ever acts on state that survives a crash. redb blocks, so async
//! callers run these methods through [`Store::run`], which moves them to tokio's
//! blocking pool.
//!
//! Records are stored as JSON: a later version can add fields with serde defaults
//! without a migration, and an operator can read a dump. Table names carry a version
//! (`agents_v1`) so an incompatible change gets a new table and an explicit migration.

use std::path::Path;
use std::sync::Arc;

use helix_protocol::cache::CacheEntry;
use helix_protocol::{
    AgentId, AgentInfo, AgentState, Build, BuildId, BuildPhase, Digest, Job, JobId, Platform,
    Timestamp,
};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta_v1");
const AGENTS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("agents_v1");
const TOKENS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("tokens_v1");
const BUILDS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("builds_v1");
const JOBS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("jobs_v1");
/// Result cache entries, under `"<key> <repository>"`.
pub mod config;

const CACHE: TableDefinition<&str, &[u8]> = TableDefinition::new("cache_v1");
/// Builds that have not reached a terminal state, so a restart resumes exactly these
/// without scanning every build ever submitted.
const ACTIVE: TableDefinition<&[u8; 16], ()> = TableDefinition::new("active_builds_v1");

/// The schema this code reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] redb::Error),
    #[error("corrupt record in {table}: {reason}")]
    Corrupt { table: &'static str, reason: String },
    #[error("the database has schema version {found}, newer than this coordinator knows ({known}): upgrade helix-coordinator")]
    SchemaTooNew { found: u32, known: u32 },
    #[error("agent {0} is not enrolled")]
    NoSuchAgent(AgentId),
    #[error(transparent)]
    Token(#[from] TokenRefusal),
    #[error("the store task failed: {0}")]
    Task(String),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

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

/// The coordinator's database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    db: Arc<redb::Database>,
}

impl Store {
    /// Create a new database at `path` for `cluster`. Refuses an existing file.
    pub fn create(path: &Path, cluster: &str) -> Result<Store, StoreError> {
        let db = redb::Database::create(path)?;
        let store = Store { db: Arc::new(db) };
        let txn = store.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert("schema_version", SCHEMA_VERSION.to_be_bytes().as_slice())?;
            meta.insert("cluster", cluster.as_bytes())?;
            txn.open_table(AGENTS)?;
            txn.open_table(TOKENS)?;
            txn.open_table(BUILDS)?;
            txn.open_table(JOBS)?;
            txn.open_table(ACTIVE)?;
            txn.open_table(CACHE)?;
        }
        txn.commit()?;
        Ok(store)
    }

    /// Connect to a PostgreSQL store, apply its migrations and record `cluster` (or
    /// check that the database belongs to `cluster`). Used by `init --store`.
    pub async fn init_postgres(
        pg: &config::PostgresConfig,
        cluster: &str,
    ) -> Result<Store, StoreError> {
        let _ = (pg, cluster);
        Err(StoreError::Task("the PostgreSQL store is being written".into()))
    }

    /// Open an existing database, checking its schema version.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = redb::Database::open(path)?;
        let store = Store { db: Arc::new(db) };
        let found = store.schema_version()?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found,
                known: SCHEMA_VERSION,
            });
        }
        Ok(store)
    }

    /// Run a blocking store operation off the async runtime.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    fn schema_version(&self) -> Result<u32, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let value = meta
            .get("schema_version")?
            .ok_or_else(|| StoreError::Corrupt {
                table: "meta_v1",
                reason: "no schema_version".into(),
            })?;
        let bytes: [u8; 4] = value.value().try_into().map_err(|_| StoreError::Corrupt {
            table: "meta_v1",
            reason: "schema_version is not 4 bytes".into(),
        })?;
        Ok(u32::from_be_bytes(bytes))
    }

    /// The cluster name recorded at `init`.
    pub fn cluster(&self) -> Result<String, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let value = meta.get("cluster")?.ok_or_else(|| StoreError::Corrupt {
            table: "meta_v1",
            reason: "no cluster".into(),
        })?;
        String::from_utf8(value.value().to_vec()).map_err(|_| StoreError::Corrupt {
            table: "meta_v1",
            reason: "cluster is not UTF-8".into(),
        })
    }

    // ---- join tokens --------------------------------------------------------------

    /// Store a new token under the hash of its secret.
    pub fn put_token(&self, secret_hash: [u8; 32], record: &TokenRecord) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(TOKENS)?
            .insert(&secret_hash, encode(record).as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// Consume one use of a token and enrol an agent, in one transaction: a token can
    /// never be spent without the agent being recorded, nor the reverse.
    pub fn enroll(
        &self,
        secret_hash: [u8; 32],
        now: Timestamp,
        agent: &AgentRecord,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut tokens = txn.open_table(TOKENS)?;
            let record: TokenRecord = match tokens.get(&secret_hash)? {
                Some(v) => decode("tokens_v1", v.value())?,
                None => return Err(TokenRefusal::Unknown.into()),
            };
            if now >= record.expires_at {
                return Err(TokenRefusal::Expired(record.expires_at).into());
            }
            if record.uses_left == 0 {
                return Err(TokenRefusal::UsedUp.into());
            }
            let left = TokenRecord {
                uses_left: record.uses_left - 1,
                ..record
            };
            tokens.insert(&secret_hash, encode(&left).as_slice())?;
            txn.open_table(AGENTS)?
                .insert(agent.id.as_bytes(), encode(agent).as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Drop tokens that expired before `now`; returns how many.
    pub fn prune_tokens(&self, now: Timestamp) -> Result<usize, StoreError> {
        let txn = self.db.begin_write()?;
        let removed;
        {
            let mut tokens = txn.open_table(TOKENS)?;
            let mut dead = Vec::new();
            for entry in tokens.iter()? {
                let (k, v) = entry?;
                let rec: TokenRecord = decode("tokens_v1", v.value())?;
                if rec.expires_at <= now || rec.uses_left == 0 {
                    dead.push(*k.value());
                }
            }
            removed = dead.len();
            for k in dead {
                tokens.remove(&k)?;
            }
        }
        txn.commit()?;
        Ok(removed)
    }

    // ---- agents -------------------------------------------------------------------

    pub fn agent(&self, id: AgentId) -> Result<Option<AgentRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(AGENTS)?;
        table
            .get(id.as_bytes())?
            .map(|v| decode("agents_v1", v.value()))
            .transpose()
    }

    pub fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(AGENTS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (_, v) = entry?;
            out.push(decode("agents_v1", v.value())?);
        }
        out.sort_by(|a: &AgentRecord, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Read-modify-write one agent record in one transaction.
    pub fn update_agent<F>(&self, id: AgentId, f: F) -> Result<AgentRecord, StoreError>
    where
        F: FnOnce(&mut AgentRecord),
    {
        let txn = self.db.begin_write()?;
        let record;
        {
            let mut table = txn.open_table(AGENTS)?;
            let mut rec: AgentRecord = match table.get(id.as_bytes())? {
                Some(v) => decode("agents_v1", v.value())?,
                None => return Err(StoreError::NoSuchAgent(id)),
            };
            f(&mut rec);
            table.insert(id.as_bytes(), encode(&rec).as_slice())?;
            record = rec;
        }
        txn.commit()?;
        Ok(record)
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

fn is_terminal(phase: &BuildPhase) -> bool {
    matches!(
        phase,
        BuildPhase::Succeeded { .. } | BuildPhase::Failed { .. } | BuildPhase::Cancelled { .. }
    )
}

impl Store {
    // ---- builds and jobs ----------------------------------------------------------

    /// Write these records in one transaction: a build with its jobs at submit, or a
    /// job's transition together with the build phase it implies.
    pub fn commit(&self, records: &[Record]) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut builds = txn.open_table(BUILDS)?;
            let mut jobs = txn.open_table(JOBS)?;
            let mut active = txn.open_table(ACTIVE)?;
            for record in records {
                match record {
                    Record::Build(b) => {
                        builds.insert(b.id.as_bytes(), encode(b).as_slice())?;
                        if is_terminal(&b.phase) {
                            active.remove(b.id.as_bytes())?;
                        } else {
                            active.insert(b.id.as_bytes(), ())?;
                        }
                    }
                    Record::Job(j) => {
                        jobs.insert(j.id().as_bytes(), encode(j).as_slice())?;
                    }
                    Record::Cache(c) => {
                        let mut cache = txn.open_table(CACHE)?;
                        cache.insert(
                            cache_row(&c.key, &c.repository).as_str(),
                            encode(c).as_slice(),
                        )?;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    pub fn build(&self, id: BuildId) -> Result<Option<Build>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BUILDS)?;
        table
            .get(id.as_bytes())?
            .map(|v| decode("builds_v1", v.value()))
            .transpose()
    }

    pub fn job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(JOBS)?;
        table
            .get(id.as_bytes())?
            .map(|v| decode("jobs_v1", v.value()))
            .transpose()
    }

    /// A build and its jobs (in the build's platform order).
    pub fn build_with_jobs(&self, id: BuildId) -> Result<Option<(Build, Vec<Job>)>, StoreError> {
        let txn = self.db.begin_read()?;
        let builds = txn.open_table(BUILDS)?;
        let jobs = txn.open_table(JOBS)?;
        let Some(v) = builds.get(id.as_bytes())? else {
            return Ok(None);
        };
        let build: Build = decode("builds_v1", v.value())?;
        let mut out = Vec::with_capacity(build.jobs.len());
        for job_id in &build.jobs {
            let v = jobs
                .get(job_id.as_bytes())?
                .ok_or_else(|| StoreError::Corrupt {
                    table: "jobs_v1",
                    reason: format!("build {id} names job {job_id}, which is missing"),
                })?;
            out.push(decode("jobs_v1", v.value())?);
        }
        Ok(Some((build, out)))
    }

    /// Every build not yet in a terminal state, with its jobs: what a restarted
    /// coordinator resumes.
    pub fn active_builds(&self) -> Result<Vec<(Build, Vec<Job>)>, StoreError> {
        let ids: Vec<BuildId> = {
            let txn = self.db.begin_read()?;
            let active = txn.open_table(ACTIVE)?;
            let mut ids = Vec::new();
            for entry in active.iter()? {
                ids.push(BuildId::from_bytes(*entry?.0.value()));
            }
            ids
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(x) = self.build_with_jobs(id)? {
                out.push(x);
            }
        }
        out.sort_by_key(|(b, _)| (b.created_at, b.id));
        Ok(out)
    }

    // ---- result cache -------------------------------------------------------------

    /// The entry for `key` in `repository`, if any.
    pub fn cache_lookup(
        &self,
        key: &Digest,
        repository: &str,
    ) -> Result<Option<CacheEntry>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CACHE)?;
        table
            .get(cache_row(key, repository).as_str())?
            .map(|v| decode("cache_v1", v.value()))
            .transpose()
    }

    /// Record a hit (for `cache prune --older-than`).
    pub fn cache_touch(
        &self,
        key: &Digest,
        repository: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(CACHE)?;
            let row = cache_row(key, repository);
            let entry: Option<CacheEntry> = table
                .get(row.as_str())?
                .map(|v| decode("cache_v1", v.value()))
                .transpose()?;
            if let Some(mut e) = entry {
                e.last_used = now;
                table.insert(row.as_str(), encode(&e).as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    pub fn cache_remove(&self, key: &Digest, repository: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(CACHE)?
            .remove(cache_row(key, repository).as_str())?;
        txn.commit()?;
        Ok(())
    }

    pub fn cache_list(&self) -> Result<Vec<CacheEntry>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CACHE)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            out.push(decode("cache_v1", entry?.1.value())?);
        }
        Ok(out)
    }

    /// Remove entries last used before `before` (all of them when `None`).
    pub fn cache_prune(&self, before: Option<Timestamp>) -> Result<u64, StoreError> {
        let txn = self.db.begin_write()?;
        let mut removed = 0;
        {
            let mut table = txn.open_table(CACHE)?;
            let mut dead = Vec::new();
            for entry in table.iter()? {
                let (k, v) = entry?;
                let e: CacheEntry = decode("cache_v1", v.value())?;
                if before.is_none_or(|b| e.last_used < b) {
                    dead.push(k.value().to_string());
                }
            }
            for k in dead {
                table.remove(k.as_str())?;
                removed += 1;
            }
        }
        txn.commit()?;
        Ok(removed)
    }

    /// The newest `limit` builds, newest first.
    pub fn recent_builds(&self, limit: usize) -> Result<Vec<Build>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BUILDS)?;
        let mut all: Vec<Build> = Vec::new();
        for entry in table.iter()? {
            let (_, v) = entry?;
            all.push(decode("builds_v1", v.value())?);
        }
        all.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        all.truncate(limit);
        Ok(all)
    }
}

fn cache_row(key: &Digest, repository: &str) -> String {
    format!("{key} {repository}")
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("store records are plain data and always serialize")
}

fn decode<T: DeserializeOwned>(table: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        table,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests;
