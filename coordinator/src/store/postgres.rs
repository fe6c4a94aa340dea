//! The PostgreSQL backend: a store shared by every coordinator of a cluster.
//!
//! Writes are fenced (module docs of [`super`]): each write transaction first reads
//! the lease row `FOR SHARE` and goes on only if it still names this coordinator's
//! epoch. A takeover updates that row, so it waits for a write in flight to commit,
//! and every write after it sees the new epoch and is refused: there is no window
//! in which two leaders both write.
//!
//! Connection errors are [`StoreError::Unavailable`]: the caller retries them. The
//! pool gives up on a connection after a few seconds so a database that is away is
//! reported promptly instead of hanging every request.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use helix_protocol::cache::CacheEntry;
use helix_protocol::wire::CoordinatorInfo;
use helix_protocol::{AgentId, Build, BuildId, Digest, Job, JobId, Timestamp};
use serde::{de::DeserializeOwned, Serialize};
use tokio_postgres::config::SslMode;
use tokio_postgres::types::Json;
use tracing::{info, warn};

use super::config::PostgresConfig;
use super::lease::{Candidate, LeaseView, Standing};
use super::migrations::MIGRATIONS;
use super::{
    is_terminal, AgentRecord, Record, StoreError, TokenRecord, TokenRefusal, SCHEMA_VERSION,
};

/// Serializes concurrent migrations of coordinators starting together.
const MIGRATION_LOCK: i64 = 0x6865_6c69_785f_6d69; // "helix_mi"

/// How long to wait for a connection (to open, or from the pool).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes per row of a stored context.
const CONTEXT_CHUNK: usize = 1024 * 1024;

/// Connections per coordinator. The engine writes one transaction at a time; the
/// rest serve admin reads, enrolments and the lease.
const POOL_SIZE: usize = 16;

/// A record's column values, owned so that its write can be sent with the others.
enum Row {
    Build {
        id: uuid::Uuid,
        created_at: i64,
        active: bool,
        record: Json<serde_json::Value>,
    },
    Job {
        id: uuid::Uuid,
        build: uuid::Uuid,
        record: Json<serde_json::Value>,
    },
    Cache {
        key: String,
        repository: String,
        last_used: i64,
        record: Json<serde_json::Value>,
    },
}

/// The epoch this coordinator was elected in.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fence {
    holder: String,
    epoch: i64,
}

/// A pool of connections to the shared database. Cheap to clone.
#[derive(Clone)]
pub(super) struct PgStore {
    pool: Pool,
    /// `Some` while this coordinator leads; every write checks it against the row.
    fence: Arc<Mutex<Option<Fence>>>,
    url: String,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("url", &self.url).finish()
    }
}

fn pg_err(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        // Class 08: connection exceptions; 57P0x: the server is shutting down or
        // starting up. Both pass when the database is back.
        if code.starts_with("08") || code.starts_with("57P") {
            return StoreError::Unavailable(db.message().to_string());
        }
        return StoreError::Postgres(format!("{} ({code})", db.message()));
    }
    // No server error: the connection broke or could not be made.
    StoreError::Unavailable(describe(&e))
}

/// tokio-postgres' Display stops at "error connecting to server"; add the cause.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_err(e),
        other => StoreError::Unavailable(describe(&other)),
    }
}

fn encode<T: Serialize>(value: &T) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(value).map_err(|e| StoreError::Postgres(e.to_string()))
}

fn decode<T: DeserializeOwned>(
    table: &'static str,
    value: serde_json::Value,
) -> Result<T, StoreError> {
    serde_json::from_value(value).map_err(|e| StoreError::Corrupt {
        table,
        reason: e.to_string(),
    })
}

fn ms(t: Timestamp) -> i64 {
    i64::try_from(t.0).unwrap_or(i64::MAX)
}

fn ts(ms: i64) -> Timestamp {
    Timestamp(u64::try_from(ms).unwrap_or(0))
}

/// TLS when the URL says `sslmode=require`: the server's certificate is verified
/// against the system's roots and `ca_file`. Otherwise plain TCP (loopback, a
/// private network, or a Unix socket).
fn tls_for(
    cfg: &tokio_postgres::Config,
    pg: &PostgresConfig,
) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>, StoreError> {
    if cfg.get_ssl_mode() != SslMode::Require {
        return Ok(None);
    }
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A system root rustls cannot parse is skipped, as every TLS client does.
        let _ = roots.add(cert);
    }
    if let Some(path) = &pg.ca_file {
        let bad = |e: String| {
            StoreError::Postgres(format!("cannot read store-ca-file {}: {e}", path.display()))
        };
        for cert in
            rustls_pki_types::CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))?
        {
            roots
                .add(cert.map_err(|e| bad(e.to_string()))?)
                .map_err(|e| bad(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Postgres(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(tokio_postgres_rustls::MakeRustlsConnect::new(config)))
}

impl PgStore {
    /// Connect, apply pending migrations, and record or check the cluster name
    /// (`cluster` is given by `init`; `serve` passes `None` and needs it recorded).
    pub(super) async fn connect(
        pg: &PostgresConfig,
        cluster: Option<&str>,
    ) -> Result<PgStore, StoreError> {
        let mut cfg: tokio_postgres::Config = pg
            .url
            .parse()
            .map_err(|e: tokio_postgres::Error| StoreError::Postgres(describe(&e)))?;
        if cfg.get_password().is_none() {
            if let Some(password) = &pg.password {
                cfg.password(password);
            }
        }
        if cfg.get_application_name().is_none() {
            cfg.application_name("helix-coordinator");
        }
        cfg.connect_timeout(CONNECT_TIMEOUT);
        // Notice a dead server on an idle connection.
        cfg.keepalives_idle(Duration::from_secs(10));
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match tls_for(&cfg, pg)? {
            Some(tls) => Manager::from_config(cfg, tls, manager_config),
            None => Manager::from_config(cfg, tokio_postgres::NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT * 2))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Postgres(e.to_string()))?;
        let store = PgStore {
            pool,
            fence: Arc::new(Mutex::new(None)),
            url: pg.redacted_url(),
        };
        store.migrate(cluster).await?;
        Ok(store)
    }

    async fn conn(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(pool_err)
    }

    /// Apply the migrations this database lacks, in one transaction, under an
    /// advisory lock so coordinators starting together do not race.
    async fn migrate(&self, cluster: Option<&str>) -> Result<(), StoreError> {
        let mut client = self.conn().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg_err)?;
        tx.batch_execute(
            "SET LOCAL client_min_messages = warning; \
             CREATE TABLE IF NOT EXISTS helix_meta (key text PRIMARY KEY, value text NOT NULL)",
        )
        .await
        .map_err(pg_err)?;
        let meta = |key: &'static str| {
            let tx = &tx;
            async move {
                tx.query_opt("SELECT value FROM helix_meta WHERE key = $1", &[&key])
                    .await
                    .map_err(pg_err)
                    .map(|row| row.map(|r| r.get::<_, String>(0)))
            }
        };
        let found = match meta("schema_version").await? {
            None => 0,
            Some(v) => v.parse::<u32>().map_err(|_| StoreError::Corrupt {
                table: "helix_meta",
                reason: format!("schema_version {v:?} is not a number"),
            })?,
        };
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found,
                known: SCHEMA_VERSION,
            });
        }
        let recorded = meta("cluster").await?;
        match (&recorded, cluster) {
            (None, None) => return Err(StoreError::NotInitialized),
            (Some(found), Some(expected)) if found != expected => {
                return Err(StoreError::WrongCluster {
                    found: found.clone(),
                    expected: expected.to_string(),
                })
            }
            _ => {}
        }
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
            info!(version, "applying store migration");
            tx.batch_execute(sql).await.map_err(pg_err)?;
        }
        let upsert = "INSERT INTO helix_meta (key, value) VALUES ($1, $2) \
                      ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value";
        tx.execute(upsert, &[&"schema_version", &SCHEMA_VERSION.to_string()])
            .await
            .map_err(pg_err)?;
        if let (None, Some(cluster)) = (&recorded, cluster) {
            tx.execute(upsert, &[&"cluster", &cluster])
                .await
                .map_err(pg_err)?;
        }
        tx.commit().await.map_err(pg_err)
    }

    pub(super) async fn cluster(&self) -> Result<String, StoreError> {
        let client = self.conn().await?;
        let row = client
            .query_opt("SELECT value FROM helix_meta WHERE key = 'cluster'", &[])
            .await
            .map_err(pg_err)?;
        row.map(|r| r.get(0)).ok_or(StoreError::NotInitialized)
    }

    pub(super) async fn check_ca(&self, fingerprint: &str) -> Result<(), StoreError> {
        let client = self.conn().await?;
        client
            .execute(
                "INSERT INTO helix_meta (key, value) VALUES ('ca_fingerprint', $1) \
                 ON CONFLICT (key) DO NOTHING",
                &[&fingerprint],
            )
            .await
            .map_err(pg_err)?;
        let found: String = client
            .query_one(
                "SELECT value FROM helix_meta WHERE key = 'ca_fingerprint'",
                &[],
            )
            .await
            .map_err(pg_err)?
            .get(0);
        if found != fingerprint {
            return Err(StoreError::WrongCa {
                found,
                ours: fingerprint.to_string(),
            });
        }
        Ok(())
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        let client = self.conn().await?;
        client.simple_query("SELECT 1").await.map_err(pg_err)?;
        Ok(())
    }

    // ---- leadership -----------------------------------------------------------

    fn fence(&self) -> Option<Fence> {
        self.fence.lock().expect("fence lock poisoned").clone()
    }

    pub(super) fn step_down(&self) {
        *self.fence.lock().expect("fence lock poisoned") = None;
    }

    /// Begin a write transaction that commits only under this coordinator's epoch.
    async fn fenced<'c>(
        &self,
        client: &'c mut Object,
    ) -> Result<(deadpool_postgres::Transaction<'c>, i64), StoreError> {
        let fence = self.fence().ok_or(StoreError::NotLeader)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        // Prepared once per connection: one round trip per write, not two.
        let check = tx
            .prepare_cached(
                "SELECT holder, advertise, epoch FROM helix_lease WHERE id = 1 FOR SHARE",
            )
            .await
            .map_err(pg_err)?;
        let row = tx.query_opt(&check, &[]).await.map_err(pg_err)?;
        match row {
            Some(r)
                if r.get::<_, String>(0) == fence.holder && r.get::<_, i64>(2) == fence.epoch =>
            {
                Ok((tx, fence.epoch))
            }
            other => {
                // Only step down if the fence is still the one we checked: a new
                // election may have happened concurrently.
                {
                    let mut current = self.fence.lock().expect("fence lock poisoned");
                    if current.as_ref() == Some(&fence) {
                        *current = None;
                    }
                }
                let current = match other {
                    Some(r) => format!("{} (epoch {})", r.get::<_, String>(1), r.get::<_, i64>(2)),
                    None => "nobody".to_string(),
                };
                warn!(epoch = fence.epoch, %current, "a write was refused: another coordinator leads now");
                Err(StoreError::Fenced {
                    epoch: u64::try_from(fence.epoch).unwrap_or(0),
                    current,
                })
            }
        }
    }

    /// Heartbeat, then renew or take the lease (see [`super::Store::campaign`]).
    pub(super) async fn campaign(&self, me: &Candidate) -> Result<Standing, StoreError> {
        let ttl_ms = i64::try_from(me.ttl.as_millis()).unwrap_or(i64::MAX);
        let mine = self.fence();
        let mut client = self.conn().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.execute(
            "INSERT INTO helix_coordinators (holder, advertise, version, started_at, last_seen) \
             VALUES ($1, $2, $3, now(), now()) \
             ON CONFLICT (holder) DO UPDATE SET advertise = EXCLUDED.advertise, last_seen = now()",
            &[&me.holder, &me.advertise, &me.version],
        )
        .await
        .map_err(pg_err)?;
        let row = tx
            .query_opt(
                "SELECT holder, advertise, epoch, expires_at > clock_timestamp() \
                 FROM helix_lease WHERE id = 1 FOR UPDATE",
                &[],
            )
            .await
            .map_err(pg_err)?;
        let take = |epoch: i64| {
            let tx = &tx;
            async move {
                tx.execute(
                    "INSERT INTO helix_lease (id, holder, advertise, epoch, expires_at) \
                     VALUES (1, $1, $2, $3, clock_timestamp() + $4::bigint * interval '1 millisecond') \
                     ON CONFLICT (id) DO UPDATE SET holder = EXCLUDED.holder, \
                     advertise = EXCLUDED.advertise, epoch = EXCLUDED.epoch, \
                     expires_at = EXCLUDED.expires_at",
                    &[&me.holder, &me.advertise, &epoch, &ttl_ms],
                )
                .await
                .map_err(pg_err)?;
                tx.execute(
                    "INSERT INTO helix_epochs (epoch, holder, advertise, began_at) \
                     VALUES ($1, $2, $3, clock_timestamp())",
                    &[&epoch, &me.holder, &me.advertise],
                )
                .await
                .map_err(pg_err)?;
                Ok::<_, StoreError>(())
            }
        };
        let standing = match row {
            None => {
                take(1).await?;
                Standing::Leader { epoch: 1 }
            }
            Some(r) => {
                let (holder, advertise, epoch, live) = (
                    r.get::<_, String>(0),
                    r.get::<_, String>(1),
                    r.get::<_, i64>(2),
                    r.get::<_, bool>(3),
                );
                let renewing = mine
                    .as_ref()
                    .is_some_and(|f| f.holder == holder && f.epoch == epoch);
                if renewing {
                    tx.execute(
                        "UPDATE helix_lease SET expires_at = clock_timestamp() + \
                         $1::bigint * interval '1 millisecond', advertise = $2 WHERE id = 1",
                        &[&ttl_ms, &me.advertise],
                    )
                    .await
                    .map_err(pg_err)?;
                    Standing::Leader {
                        epoch: u64::try_from(epoch).unwrap_or(0),
                    }
                } else if !live || holder == me.holder {
                    // Expired, or ours from a term this process already gave up:
                    // either way a new term, so anything written under the old
                    // epoch is fenced off.
                    take(epoch + 1).await?;
                    Standing::Leader {
                        epoch: u64::try_from(epoch + 1).unwrap_or(0),
                    }
                } else {
                    Standing::Follower {
                        leader: Some(advertise),
                    }
                }
            }
        };
        tx.commit().await.map_err(pg_err)?;
        let mut fence = self.fence.lock().expect("fence lock poisoned");
        match &standing {
            Standing::Leader { epoch } => {
                *fence = Some(Fence {
                    holder: me.holder.clone(),
                    epoch: i64::try_from(*epoch).unwrap_or(i64::MAX),
                });
            }
            Standing::Follower { .. } => *fence = None,
        }
        Ok(standing)
    }

    /// Expire our lease now so a standby takes over at its next campaign. By holder,
    /// not by fence: the term has usually ended (and the fence cleared) by now.
    pub(super) async fn resign(&self, me: &Candidate) -> Result<(), StoreError> {
        self.step_down();
        let client = self.conn().await?;
        client
            .execute(
                "UPDATE helix_lease SET expires_at = clock_timestamp() \
                 WHERE id = 1 AND holder = $1 AND expires_at > clock_timestamp()",
                &[&me.holder],
            )
            .await
            .map_err(pg_err)?;
        client
            .execute(
                "DELETE FROM helix_coordinators WHERE holder = $1",
                &[&me.holder],
            )
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    pub(super) async fn lease(&self) -> Result<LeaseView, StoreError> {
        let client = self.conn().await?;
        let now: i64 = client
            .query_one(
                "SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint",
                &[],
            )
            .await
            .map_err(pg_err)?
            .get(0);
        let lease = client
            .query_opt(
                "SELECT holder, advertise, epoch, \
                 floor(extract(epoch FROM expires_at) * 1000)::bigint, \
                 expires_at > clock_timestamp() FROM helix_lease WHERE id = 1",
                &[],
            )
            .await
            .map_err(pg_err)?;
        // Coordinators that stopped without resigning fall out of the list after a
        // minute without a heartbeat.
        let rows = client
            .query(
                "SELECT holder, advertise, version, \
                 floor(extract(epoch FROM last_seen) * 1000)::bigint \
                 FROM helix_coordinators WHERE last_seen > now() - interval '1 minute' \
                 ORDER BY advertise, holder",
                &[],
            )
            .await
            .map_err(pg_err)?;
        let (holder, leader, epoch, expires_at) = match &lease {
            Some(r) => {
                let live: bool = r.get(4);
                (
                    Some(r.get::<_, String>(0)),
                    live.then(|| r.get::<_, String>(1)),
                    u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
                    Some(ts(r.get(3))),
                )
            }
            None => (None, None, 0, None),
        };
        let coordinators = rows
            .iter()
            .map(|r| CoordinatorInfo {
                leader: leader.is_some() && holder.as_deref() == Some(r.get::<_, &str>(0)),
                advertise: r.get(1),
                version: r.get(2),
                last_seen: ts(r.get(3)),
            })
            .collect();
        Ok(LeaseView {
            store: "postgres",
            epoch,
            leader,
            expires_at,
            now: ts(now),
            coordinators,
        })
    }

    // ---- join tokens ----------------------------------------------------------

    pub(super) async fn put_token(
        &self,
        secret_hash: [u8; 32],
        record: &TokenRecord,
    ) -> Result<(), StoreError> {
        let mut client = self.conn().await?;
        let (tx, epoch) = self.fenced(&mut client).await?;
        tx.execute(
            "INSERT INTO helix_tokens (secret_hash, record, epoch, written_at) \
             VALUES ($1, $2, $3, clock_timestamp()) ON CONFLICT (secret_hash) DO UPDATE \
             SET record = EXCLUDED.record, epoch = EXCLUDED.epoch, written_at = EXCLUDED.written_at",
            &[&secret_hash.as_slice(), &Json(encode(record)?), &epoch],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)
    }

    pub(super) async fn enroll(
        &self,
        secret_hash: [u8; 32],
        now: Timestamp,
        agent: &AgentRecord,
    ) -> Result<(), StoreError> {
        let mut client = self.conn().await?;
        let (tx, epoch) = self.fenced(&mut client).await?;
        let row = tx
            .query_opt(
                "SELECT record FROM helix_tokens WHERE secret_hash = $1 FOR UPDATE",
                &[&secret_hash.as_slice()],
            )
            .await
            .map_err(pg_err)?;
        let record: TokenRecord = match row {
            Some(r) => decode("helix_tokens", r.get::<_, Json<serde_json::Value>>(0).0)?,
            None => return Err(TokenRefusal::Unknown.into()),
        };
        let left = record.spend(now)?;
        tx.execute(
            "UPDATE helix_tokens SET record = $2, epoch = $3, written_at = clock_timestamp() \
             WHERE secret_hash = $1",
            &[&secret_hash.as_slice(), &Json(encode(&left)?), &epoch],
        )
        .await
        .map_err(pg_err)?;
        upsert_agent(&tx, agent, epoch).await?;
        tx.commit().await.map_err(pg_err)
    }

    pub(super) async fn prune_tokens(&self, now: Timestamp) -> Result<usize, StoreError> {
        let mut client = self.conn().await?;
        let (tx, _) = self.fenced(&mut client).await?;
        let rows = tx
            .query(
                "SELECT secret_hash, record FROM helix_tokens FOR UPDATE",
                &[],
            )
            .await
            .map_err(pg_err)?;
        let mut removed = 0;
        for r in rows {
            let rec: TokenRecord =
                decode("helix_tokens", r.get::<_, Json<serde_json::Value>>(1).0)?;
            if rec.is_dead(now) {
                let hash: Vec<u8> = r.get(0);
                tx.execute("DELETE FROM helix_tokens WHERE secret_hash = $1", &[&hash])
                    .await
                    .map_err(pg_err)?;
                removed += 1;
            }
        }
        tx.commit().await.map_err(pg_err)?;
        Ok(removed)
    }

    // ---- agents ---------------------------------------------------------------

    pub(super) async fn agent(&self, id: AgentId) -> Result<Option<AgentRecord>, StoreError> {
        let client = self.conn().await?;
        client
            .query_opt("SELECT record FROM helix_agents WHERE id = $1", &[&id.0])
            .await
            .map_err(pg_err)?
            .map(|r| decode("helix_agents", r.get::<_, Json<serde_json::Value>>(0).0))
            .transpose()
    }

    pub(super) async fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let client = self.conn().await?;
        let rows = client
            .query("SELECT record FROM helix_agents", &[])
            .await
            .map_err(pg_err)?;
        let mut out = rows
            .into_iter()
            .map(|r| decode("helix_agents", r.get::<_, Json<serde_json::Value>>(0).0))
            .collect::<Result<Vec<AgentRecord>, _>>()?;
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    pub(super) async fn update_agent<F>(&self, id: AgentId, f: F) -> Result<AgentRecord, StoreError>
    where
        F: FnOnce(&mut AgentRecord),
    {
        let mut client = self.conn().await?;
        let (tx, epoch) = self.fenced(&mut client).await?;
        let row = tx
            .query_opt(
                "SELECT record FROM helix_agents WHERE id = $1 FOR UPDATE",
                &[&id.0],
            )
            .await
            .map_err(pg_err)?;
        let mut record: AgentRecord = match row {
            Some(r) => decode("helix_agents", r.get::<_, Json<serde_json::Value>>(0).0)?,
            None => return Err(StoreError::NoSuchAgent(id)),
        };
        f(&mut record);
        upsert_agent(&tx, &record, epoch).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(record)
    }

    // ---- builds and jobs ------------------------------------------------------

    pub(super) async fn commit(&self, records: &[Record]) -> Result<(), StoreError> {
        // Encode first: a record that cannot be encoded fails before any I/O.
        let rows = records
            .iter()
            .map(|r| {
                Ok(match r {
                    Record::Build(b) => Row::Build {
                        id: b.id.0,
                        created_at: ms(b.created_at),
                        active: !is_terminal(&b.phase),
                        record: Json(encode(b)?),
                    },
                    Record::Job(j) => Row::Job {
                        id: j.id().0,
                        build: j.build().0,
                        record: Json(encode(j)?),
                    },
                    Record::Cache(c) => Row::Cache {
                        key: c.key.to_string(),
                        repository: c.repository.clone(),
                        last_used: ms(c.last_used),
                        record: Json(encode(c)?),
                    },
                })
            })
            .collect::<Result<Vec<Row>, StoreError>>()?;
        let mut client = self.conn().await?;
        let (tx, epoch) = self.fenced(&mut client).await?;
        let build_stmt = tx
            .prepare_cached(
                "INSERT INTO helix_builds (id, created_at, active, record, epoch, written_at) \
                 VALUES ($1, $2, $3, $4, $5, clock_timestamp()) ON CONFLICT (id) DO UPDATE \
                 SET active = EXCLUDED.active, record = EXCLUDED.record, \
                 epoch = EXCLUDED.epoch, written_at = EXCLUDED.written_at",
            )
            .await
            .map_err(pg_err)?;
        let job_stmt = tx
            .prepare_cached(
                "INSERT INTO helix_jobs (id, build, record, epoch, written_at) \
                 VALUES ($1, $2, $3, $4, clock_timestamp()) ON CONFLICT (id) DO UPDATE \
                 SET record = EXCLUDED.record, epoch = EXCLUDED.epoch, \
                 written_at = EXCLUDED.written_at",
            )
            .await
            .map_err(pg_err)?;
        let cache_stmt = tx
            .prepare_cached(
                "INSERT INTO helix_cache (key, repository, last_used, record, epoch, written_at) \
                 VALUES ($1, $2, $3, $4, $5, clock_timestamp()) \
                 ON CONFLICT (key, repository) DO UPDATE SET last_used = EXCLUDED.last_used, \
                 record = EXCLUDED.record, epoch = EXCLUDED.epoch, \
                 written_at = EXCLUDED.written_at",
            )
            .await
            .map_err(pg_err)?;
        // Sent together: tokio-postgres pipelines the statements of futures polled
        // at once, so a step's records cost one round trip, not one each.
        let (tx_ref, epoch) = (&tx, &epoch);
        let (build_stmt, job_stmt, cache_stmt) = (&build_stmt, &job_stmt, &cache_stmt);
        let writes = rows.iter().map(|row| async move {
            match row {
                Row::Build {
                    id,
                    created_at,
                    active,
                    record,
                } => {
                    tx_ref
                        .execute(build_stmt, &[id, created_at, active, record, epoch])
                        .await
                }
                Row::Job { id, build, record } => {
                    tx_ref.execute(job_stmt, &[id, build, record, epoch]).await
                }
                Row::Cache {
                    key,
                    repository,
                    last_used,
                    record,
                } => {
                    tx_ref
                        .execute(cache_stmt, &[key, repository, last_used, record, epoch])
                        .await
                }
            }
        });
        futures_util::future::try_join_all(writes)
            .await
            .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)
    }

    pub(super) async fn build(&self, id: BuildId) -> Result<Option<Build>, StoreError> {
        let client = self.conn().await?;
        client
            .query_opt("SELECT record FROM helix_builds WHERE id = $1", &[&id.0])
            .await
            .map_err(pg_err)?
            .map(|r| decode("helix_builds", r.get::<_, Json<serde_json::Value>>(0).0))
            .transpose()
    }

    pub(super) async fn job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        let client = self.conn().await?;
        client
            .query_opt("SELECT record FROM helix_jobs WHERE id = $1", &[&id.0])
            .await
            .map_err(pg_err)?
            .map(|r| decode("helix_jobs", r.get::<_, Json<serde_json::Value>>(0).0))
            .transpose()
    }

    pub(super) async fn build_with_jobs(
        &self,
        id: BuildId,
    ) -> Result<Option<(Build, Vec<Job>)>, StoreError> {
        let mut client = self.conn().await?;
        let tx = snapshot(&mut client).await?;
        let Some(row) = tx
            .query_opt("SELECT record FROM helix_builds WHERE id = $1", &[&id.0])
            .await
            .map_err(pg_err)?
        else {
            return Ok(None);
        };
        let build: Build = decode("helix_builds", row.get::<_, Json<serde_json::Value>>(0).0)?;
        let rows = tx
            .query("SELECT record FROM helix_jobs WHERE build = $1", &[&id.0])
            .await
            .map_err(pg_err)?;
        let jobs = order_jobs(&build, rows)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(Some((build, jobs)))
    }

    pub(super) async fn active_builds(&self) -> Result<Vec<(Build, Vec<Job>)>, StoreError> {
        let mut client = self.conn().await?;
        let tx = snapshot(&mut client).await?;
        let builds = tx
            .query(
                "SELECT record FROM helix_builds WHERE active ORDER BY created_at, id",
                &[],
            )
            .await
            .map_err(pg_err)?;
        let jobs = tx
            .query(
                "SELECT j.build, j.record FROM helix_jobs j \
                 JOIN helix_builds b ON b.id = j.build WHERE b.active",
                &[],
            )
            .await
            .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        let mut by_build: std::collections::HashMap<uuid::Uuid, Vec<tokio_postgres::Row>> =
            std::collections::HashMap::new();
        for row in jobs {
            by_build.entry(row.get(0)).or_default().push(row);
        }
        let mut out = Vec::with_capacity(builds.len());
        for row in builds {
            let build: Build = decode("helix_builds", row.get::<_, Json<serde_json::Value>>(0).0)?;
            let rows = by_build.remove(&build.id.0).unwrap_or_default();
            let jobs = order_jobs_at(&build, rows, 1)?;
            out.push((build, jobs));
        }
        Ok(out)
    }

    pub(super) async fn recent_builds(&self, limit: usize) -> Result<Vec<Build>, StoreError> {
        let client = self.conn().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        client
            .query(
                "SELECT record FROM helix_builds ORDER BY created_at DESC, id DESC LIMIT $1",
                &[&limit],
            )
            .await
            .map_err(pg_err)?
            .into_iter()
            .map(|r| decode("helix_builds", r.get::<_, Json<serde_json::Value>>(0).0))
            .collect()
    }

    // ---- build logs -----------------------------------------------------------

    pub(super) async fn log_append<F>(
        &self,
        job: JobId,
        attempt: u32,
        known: Option<u64>,
        cap: u64,
        plan: F,
    ) -> Result<(usize, u64), StoreError>
    where
        F: FnOnce(u64) -> Option<crate::logs::Piece>,
    {
        let mut client = self.conn().await?;
        let (tx, epoch) = self.fenced(&mut client).await?;
        let attempt_i = i32::try_from(attempt).unwrap_or(i32::MAX);
        // Where the log ends and how much of this attempt's stream it holds.
        let row = tx
            .query_one(
                "SELECT coalesce(max(start + length(data)), 0)::bigint, \
                 coalesce(max(stream_end) FILTER (WHERE attempt = $2), 0)::bigint, \
                 coalesce(min(start), 0)::bigint \
                 FROM helix_logs WHERE job = $1",
                &[&job.0, &attempt_i],
            )
            .await
            .map_err(pg_err)?;
        let (total, stored, head): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        let received = known.unwrap_or(u64::try_from(stored).unwrap_or(0));
        let Some(piece) = plan(received) else {
            return Ok((0, received));
        };
        let stream_end = i64::try_from(piece.stream_end).unwrap_or(i64::MAX);
        tx.execute(
            "INSERT INTO helix_logs (job, start, attempt, stream_end, data, epoch, written_at) \
             VALUES ($1, $2, $3, $4, $5, $6, clock_timestamp())",
            &[
                &job.0,
                &total,
                &attempt_i,
                &stream_end,
                &piece.bytes,
                &epoch,
            ],
        )
        .await
        .map_err(pg_err)?;
        let end = total + i64::try_from(piece.bytes.len()).unwrap_or(i64::MAX);
        let cap = i64::try_from(cap).unwrap_or(i64::MAX);
        if end - head > cap + cap / 5 {
            // Keep the last `cap` bytes (whole pieces): the end explains a failure.
            tx.execute(
                "DELETE FROM helix_logs WHERE job = $1 AND start + length(data) <= $2",
                &[&job.0, &(end - cap)],
            )
            .await
            .map_err(pg_err)?;
        }
        tx.commit().await.map_err(pg_err)?;
        Ok((piece.fresh, piece.stream_end))
    }

    pub(super) async fn log_read(
        &self,
        job: JobId,
        from: u64,
    ) -> Result<(Vec<u8>, u64), StoreError> {
        let client = self.conn().await?;
        let from_i = i64::try_from(from).unwrap_or(i64::MAX);
        // A bounded batch per call; the caller reads on from the returned offset.
        let rows = client
            .query(
                "SELECT start, data FROM helix_logs WHERE job = $1 AND start + length(data) > $2 \
                 ORDER BY start LIMIT 64",
                &[&job.0, &from_i],
            )
            .await
            .map_err(pg_err)?;
        let mut out = Vec::new();
        let mut next = from;
        for row in rows {
            let start = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
            let data: Vec<u8> = row.get(1);
            let skip = usize::try_from(next.saturating_sub(start)).unwrap_or(data.len());
            if let Some(rest) = data.get(skip..) {
                out.extend_from_slice(rest);
            }
            next = start + data.len() as u64;
        }
        Ok((out, next))
    }

    // ---- build contexts -------------------------------------------------------

    pub(super) async fn context_put(
        &self,
        digest: &Digest,
        file: &std::path::Path,
    ) -> Result<(), StoreError> {
        use tokio::io::AsyncReadExt as _;
        let mut client = self.conn().await?;
        let (tx, epoch) = self.fenced(&mut client).await?;
        let key = digest.to_string();
        let exists = tx
            .query_opt("SELECT 1 FROM helix_contexts WHERE digest = $1", &[&key])
            .await
            .map_err(pg_err)?;
        if exists.is_some() {
            return Ok(());
        }
        let io = |e: std::io::Error| StoreError::Postgres(format!("reading the context: {e}"));
        let mut f = tokio::fs::File::open(file).await.map_err(io)?;
        let size = i64::try_from(f.metadata().await.map_err(io)?.len()).unwrap_or(i64::MAX);
        tx.execute(
            "INSERT INTO helix_contexts (digest, size, chunks, epoch, written_at) \
             VALUES ($1, $2, 0, $3, clock_timestamp())",
            &[&key, &size, &epoch],
        )
        .await
        .map_err(pg_err)?;
        let insert = tx
            .prepare_cached(
                "INSERT INTO helix_context_chunks (digest, seq, data) VALUES ($1, $2, $3)",
            )
            .await
            .map_err(pg_err)?;
        let mut seq: i32 = 0;
        let mut buf = vec![0u8; CONTEXT_CHUNK];
        loop {
            let mut filled = 0;
            while filled < buf.len() {
                let n = f.read(&mut buf[filled..]).await.map_err(io)?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                break;
            }
            tx.execute(&insert, &[&key, &seq, &&buf[..filled]])
                .await
                .map_err(pg_err)?;
            seq += 1;
        }
        tx.execute(
            "UPDATE helix_contexts SET chunks = $2 WHERE digest = $1",
            &[&key, &seq],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)
    }

    pub(super) async fn context_size(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        let client = self.conn().await?;
        Ok(client
            .query_opt(
                "SELECT size FROM helix_contexts WHERE digest = $1",
                &[&digest.to_string()],
            )
            .await
            .map_err(pg_err)?
            .map(|r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0)))
    }

    pub(super) async fn context_fetch(
        &self,
        digest: &Digest,
        file: &std::path::Path,
    ) -> Result<bool, StoreError> {
        use tokio::io::AsyncWriteExt as _;
        let client = self.conn().await?;
        let key = digest.to_string();
        let Some(row) = client
            .query_opt(
                "SELECT chunks FROM helix_contexts WHERE digest = $1",
                &[&key],
            )
            .await
            .map_err(pg_err)?
        else {
            return Ok(false);
        };
        let chunks: i32 = row.get(0);
        let io = |e: std::io::Error| StoreError::Postgres(format!("writing the context: {e}"));
        let mut f = tokio::fs::File::create(file).await.map_err(io)?;
        let select = client
            .prepare_cached("SELECT data FROM helix_context_chunks WHERE digest = $1 AND seq = $2")
            .await
            .map_err(pg_err)?;
        // One chunk at a time: a context may be far larger than memory should hold.
        for seq in 0..chunks {
            let data: Vec<u8> = client
                .query_one(&select, &[&key, &seq])
                .await
                .map_err(pg_err)?
                .get(0);
            f.write_all(&data).await.map_err(io)?;
        }
        f.sync_all().await.map_err(io)?;
        Ok(true)
    }

    pub(super) async fn context_gc(
        &self,
        keep: &[Digest],
        min_age: std::time::Duration,
    ) -> Result<u64, StoreError> {
        let mut client = self.conn().await?;
        let (tx, _) = self.fenced(&mut client).await?;
        let keep: Vec<String> = keep.iter().map(|d| d.to_string()).collect();
        let age_ms = i64::try_from(min_age.as_millis()).unwrap_or(i64::MAX);
        let removed = tx
            .execute(
                "DELETE FROM helix_contexts WHERE NOT (digest = ANY($1)) \
                 AND written_at < clock_timestamp() - $2::bigint * interval '1 millisecond'",
                &[&keep, &age_ms],
            )
            .await
            .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(removed)
    }

    // ---- result cache ---------------------------------------------------------

    pub(super) async fn cache_lookup(
        &self,
        key: &Digest,
        repository: &str,
    ) -> Result<Option<CacheEntry>, StoreError> {
        let client = self.conn().await?;
        client
            .query_opt(
                "SELECT record FROM helix_cache WHERE key = $1 AND repository = $2",
                &[&key.to_string(), &repository],
            )
            .await
            .map_err(pg_err)?
            .map(|r| decode("helix_cache", r.get::<_, Json<serde_json::Value>>(0).0))
            .transpose()
    }

    pub(super) async fn cache_touch(
        &self,
        key: &Digest,
        repository: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut client = self.conn().await?;
        let (tx, epoch) = self.fenced(&mut client).await?;
        let row = tx
            .query_opt(
                "SELECT record FROM helix_cache WHERE key = $1 AND repository = $2 FOR UPDATE",
                &[&key.to_string(), &repository],
            )
            .await
            .map_err(pg_err)?;
        if let Some(r) = row {
            let mut entry: CacheEntry =
                decode("helix_cache", r.get::<_, Json<serde_json::Value>>(0).0)?;
            entry.last_used = now;
            tx.execute(
                "UPDATE helix_cache SET last_used = $3, record = $4, epoch = $5, \
                 written_at = clock_timestamp() WHERE key = $1 AND repository = $2",
                &[
                    &key.to_string(),
                    &repository,
                    &ms(now),
                    &Json(encode(&entry)?),
                    &epoch,
                ],
            )
            .await
            .map_err(pg_err)?;
        }
        tx.commit().await.map_err(pg_err)
    }

    pub(super) async fn cache_remove(
        &self,
        key: &Digest,
        repository: &str,
    ) -> Result<(), StoreError> {
        let mut client = self.conn().await?;
        let (tx, _) = self.fenced(&mut client).await?;
        tx.execute(
            "DELETE FROM helix_cache WHERE key = $1 AND repository = $2",
            &[&key.to_string(), &repository],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)
    }

    pub(super) async fn cache_list(&self) -> Result<Vec<CacheEntry>, StoreError> {
        let client = self.conn().await?;
        client
            .query(
                "SELECT record FROM helix_cache ORDER BY key, repository",
                &[],
            )
            .await
            .map_err(pg_err)?
            .into_iter()
            .map(|r| decode("helix_cache", r.get::<_, Json<serde_json::Value>>(0).0))
            .collect()
    }

    pub(super) async fn cache_prune(&self, before: Option<Timestamp>) -> Result<u64, StoreError> {
        let mut client = self.conn().await?;
        let (tx, _) = self.fenced(&mut client).await?;
        let before = before.map(ms);
        let removed = tx
            .execute(
                "DELETE FROM helix_cache WHERE $1::bigint IS NULL OR last_used < $1",
                &[&before],
            )
            .await
            .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(removed)
    }
}

/// A read-only transaction that sees one snapshot, so a build and its jobs are read
/// as they were at one moment.
async fn snapshot(client: &mut Object) -> Result<deadpool_postgres::Transaction<'_>, StoreError> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg_err)
}

async fn upsert_agent(
    tx: &deadpool_postgres::Transaction<'_>,
    agent: &AgentRecord,
    epoch: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO helix_agents (id, record, epoch, written_at) \
         VALUES ($1, $2, $3, clock_timestamp()) ON CONFLICT (id) DO UPDATE \
         SET record = EXCLUDED.record, epoch = EXCLUDED.epoch, written_at = EXCLUDED.written_at",
        &[&agent.id.0, &Json(encode(agent)?), &epoch],
    )
    .await
    .map_err(pg_err)?;
    Ok(())
}

/// A build's jobs in the build's platform order; a missing one is corruption.
fn order_jobs(build: &Build, rows: Vec<tokio_postgres::Row>) -> Result<Vec<Job>, StoreError> {
    order_jobs_at(build, rows, 0)
}

/// Like [`order_jobs`], with the record in column `col`.
fn order_jobs_at(
    build: &Build,
    rows: Vec<tokio_postgres::Row>,
    col: usize,
) -> Result<Vec<Job>, StoreError> {
    let mut found: std::collections::HashMap<JobId, Job> = std::collections::HashMap::new();
    for r in rows {
        let job: Job = decode("helix_jobs", r.get::<_, Json<serde_json::Value>>(col).0)?;
        found.insert(job.id(), job);
    }
    build
        .jobs
        .iter()
        .map(|id| {
            found.remove(id).ok_or_else(|| StoreError::Corrupt {
                table: "helix_jobs",
                reason: format!("build {} names job {id}, which is missing", build.id),
            })
        })
        .collect()
}
