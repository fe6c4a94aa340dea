//! The embedded backend: one redb file in the data directory.
//!
//! Every method is one transaction, committed before it returns. redb blocks, so the
//! [`super::Store`] facade runs these methods on tokio's blocking pool.
//!
//! Records are stored as JSON: a later version can add fields with serde defaults
//! without a migration, and an operator can read a dump. Table names carry a version
//! (`agents_v1`) so an incompatible change gets a new table and an explicit migration.

use std::path::Path;
use std::sync::Arc;

use helix_protocol::cache::CacheEntry;
use helix_protocol::{AgentId, Build, BuildId, Digest, Job, JobId, Timestamp};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Serialize};

use super::{
    is_terminal, AgentRecord, Record, StoreError, TokenRecord, TokenRefusal, SCHEMA_VERSION,
};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta_v1");
const AGENTS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("agents_v1");
const TOKENS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("tokens_v1");
const BUILDS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("builds_v1");
const JOBS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("jobs_v1");
/// Result cache entries, under `"<key> <repository>"`.
const CACHE: TableDefinition<&str, &[u8]> = TableDefinition::new("cache_v1");
/// Builds that have not reached a terminal state, so a restart resumes exactly these
/// without scanning every build ever submitted.
const ACTIVE: TableDefinition<&[u8; 16], ()> = TableDefinition::new("active_builds_v1");

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Redb(e.into())
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

/// The embedded database. Cheap to clone.
#[derive(Debug, Clone)]
pub(super) struct RedbStore {
    db: Arc<redb::Database>,
}

impl RedbStore {
    /// Create a new database at `path` for `cluster`. Refuses an existing file.
    pub(super) fn create(path: &Path, cluster: &str) -> Result<RedbStore, StoreError> {
        let db = redb::Database::create(path)?;
        let store = RedbStore { db: Arc::new(db) };
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

    /// Open an existing database, checking its schema version.
    pub(super) fn open(path: &Path) -> Result<RedbStore, StoreError> {
        let db = redb::Database::open(path)?;
        let store = RedbStore { db: Arc::new(db) };
        let found = store.schema_version()?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found,
                known: SCHEMA_VERSION,
            });
        }
        Ok(store)
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
    pub(super) fn cluster(&self) -> Result<String, StoreError> {
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
    pub(super) fn put_token(
        &self,
        secret_hash: [u8; 32],
        record: &TokenRecord,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(TOKENS)?
            .insert(&secret_hash, encode(record).as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// Consume one use of a token and enrol an agent, in one transaction: a token can
    /// never be spent without the agent being recorded, nor the reverse.
    pub(super) fn enroll(
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
            let left = record.spend(now)?;
            tokens.insert(&secret_hash, encode(&left).as_slice())?;
            txn.open_table(AGENTS)?
                .insert(agent.id.as_bytes(), encode(agent).as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Drop tokens that expired before `now`; returns how many.
    pub(super) fn prune_tokens(&self, now: Timestamp) -> Result<usize, StoreError> {
        let txn = self.db.begin_write()?;
        let removed;
        {
            let mut tokens = txn.open_table(TOKENS)?;
            let mut dead = Vec::new();
            for entry in tokens.iter()? {
                let (k, v) = entry?;
                let rec: TokenRecord = decode("tokens_v1", v.value())?;
                if rec.is_dead(now) {
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

    pub(super) fn agent(&self, id: AgentId) -> Result<Option<AgentRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(AGENTS)?;
        table
            .get(id.as_bytes())?
            .map(|v| decode("agents_v1", v.value()))
            .transpose()
    }

    pub(super) fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
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
    pub(super) fn update_agent<F>(&self, id: AgentId, f: F) -> Result<AgentRecord, StoreError>
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

impl RedbStore {
    // ---- builds and jobs ----------------------------------------------------------

    /// Write these records in one transaction: a build with its jobs at submit, or a
    /// job's transition together with the build phase it implies.
    pub(super) fn commit(&self, records: &[Record]) -> Result<(), StoreError> {
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

    pub(super) fn build(&self, id: BuildId) -> Result<Option<Build>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BUILDS)?;
        table
            .get(id.as_bytes())?
            .map(|v| decode("builds_v1", v.value()))
            .transpose()
    }

    pub(super) fn job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(JOBS)?;
        table
            .get(id.as_bytes())?
            .map(|v| decode("jobs_v1", v.value()))
            .transpose()
    }

    /// A build and its jobs (in the build's platform order).
    pub(super) fn build_with_jobs(
        &self,
        id: BuildId,
    ) -> Result<Option<(Build, Vec<Job>)>, StoreError> {
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
    pub(super) fn active_builds(&self) -> Result<Vec<(Build, Vec<Job>)>, StoreError> {
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
    pub(super) fn cache_lookup(
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
    pub(super) fn cache_touch(
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

    pub(super) fn cache_remove(&self, key: &Digest, repository: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(CACHE)?
            .remove(cache_row(key, repository).as_str())?;
        txn.commit()?;
        Ok(())
    }

    pub(super) fn cache_list(&self) -> Result<Vec<CacheEntry>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CACHE)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            out.push(decode("cache_v1", entry?.1.value())?);
        }
        Ok(out)
    }

    /// Remove entries last used before `before` (all of them when `None`).
    pub(super) fn cache_prune(&self, before: Option<Timestamp>) -> Result<u64, StoreError> {
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
    pub(super) fn recent_builds(&self, limit: usize) -> Result<Vec<Build>, StoreError> {
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
