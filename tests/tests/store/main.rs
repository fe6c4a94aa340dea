//! The store conformance suite: the same cases against both backends — the embedded
//! redb file and a real PostgreSQL server (a throwaway cluster started here).
//!
//! Every case gets a fresh store (a new file, or a new database on the one server).
//! A case that "crashes" drops the store without any clean close and opens it again.
//! The lease and fencing cases exist only for PostgreSQL, the one shared backend.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use helix_coordinator::logs::{Logs, MAX_LOG_BYTES};
use helix_coordinator::store::config::PostgresConfig;
use helix_coordinator::store::{
    AgentRecord, Candidate, Record, Standing, Store, StoreError, TokenRecord, TokenRefusal,
    SCHEMA_VERSION,
};
use helix_protocol::cache::CacheEntry;
use helix_protocol::{
    AgentId, AgentState, Build, BuildId, BuildPhase, BuildSpec, Digest, FailureKind, ImageResult,
    Job, JobEvent, JobFailure, JobId, JobState, Source, Timestamp,
};
use helix_tests::postgres::Postgres;

/// Where a case's store lives, so it can be reopened after a "crash".
enum Place {
    Redb(tempfile::TempDir),
    Postgres(PostgresConfig),
}

struct Fixture {
    place: Place,
    store: Store,
    /// The same coordinator identity across a reopen, as a restarted process that
    /// finds its own lease takes it over at once (with a new epoch).
    me: Candidate,
}

impl Fixture {
    async fn redb() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::create_redb(&redb_path(&dir), "conformance").expect("create");
        Fixture {
            place: Place::Redb(dir),
            store,
            me: candidate(),
        }
    }

    async fn postgres(pg: &Postgres, case: &str) -> Fixture {
        pg.psql(&format!("CREATE DATABASE {case} OWNER helix"))
            .expect("create database");
        let url = pg.url();
        let base = url
            .strip_suffix("/helix")
            .expect("the url names database helix");
        let url = format!("{base}/{case}");
        let cfg = PostgresConfig::new(url);
        let store = Store::init_postgres(&cfg, "conformance")
            .await
            .expect("init");
        let me = candidate();
        lead(&store, &me).await;
        Fixture {
            place: Place::Postgres(cfg),
            store,
            me,
        }
    }

    /// The build logs as this backend keeps them: files beside the embedded store,
    /// rows in the shared one.
    fn logs(&self) -> Logs {
        match &self.place {
            Place::Redb(dir) => Logs::files(&dir.path().join("logs")).expect("logs dir"),
            Place::Postgres(_) => Logs::in_store(self.store.clone()),
        }
    }

    /// Drop the store as a crash would, then open it again.
    async fn reopen(&mut self) {
        let store = match &self.place {
            Place::Redb(dir) => {
                // redb refuses a second open while the first handle lives.
                let _ = std::mem::replace(
                    &mut self.store,
                    Store::create_redb(&dir.path().join("scratch.redb"), "x").expect("scratch"),
                );
                Store::open_redb(&redb_path(dir)).expect("reopen")
            }
            Place::Postgres(cfg) => {
                let store = Store::open_postgres(cfg).await.expect("reopen");
                lead(&store, &self.me).await;
                store
            }
        };
        self.store = store;
    }
}

fn redb_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("helix.redb")
}

fn candidate() -> Candidate {
    Candidate::new("127.0.0.1:7443".into(), Duration::from_secs(30))
}

/// Win the lease, so this store may write.
async fn lead(store: &Store, me: &Candidate) {
    match store.campaign(me).await.expect("campaign") {
        Standing::Leader { .. } => {}
        other => panic!("not elected: {other:?}"),
    }
}

fn agent(name: &str) -> AgentRecord {
    AgentRecord {
        id: AgentId::new_v4(),
        name: name.into(),
        state: AgentState::Ready,
        enrolled_at: Timestamp(1),
        platforms: vec!["linux/amd64".parse().expect("platform")],
        capacity: 2,
        labels: BTreeMap::new(),
        version: "0.1.0".into(),
        builder: "buildah".into(),
        last_seen: None,
    }
}

fn token(expires: u64, uses: u32) -> TokenRecord {
    TokenRecord {
        created_at: Timestamp(0),
        expires_at: Timestamp(expires),
        uses_left: uses,
    }
}

fn digest(n: u8) -> Digest {
    Digest::sha256_of(&[n])
}

fn build(n: u8, at: u64, platforms: &[&str]) -> (Build, Vec<Job>) {
    let id = BuildId::from_bytes([n; 16]);
    let jobs: Vec<Job> = platforms
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut job_id = [n; 16];
            job_id[15] = i as u8 + 1;
            Job::new(
                JobId::from_bytes(job_id),
                id,
                p.parse().expect("platform"),
                Timestamp(at),
            )
        })
        .collect();
    let build = Build {
        id,
        spec: BuildSpec {
            source: Source::Git {
                repo: "https://git.example.com/app.git".into(),
                reference: "main".into(),
            },
            dockerfile: "Dockerfile".into(),
            build_args: BTreeMap::new(),
            target: None,
            labels: BTreeMap::new(),
            platforms: platforms
                .iter()
                .map(|p| p.parse().expect("platform"))
                .collect(),
            tag: "registry.example.com/app:v1".parse().expect("tag"),
            no_cache: false,
            fail_fast: true,
            timeout_secs: 7200,
        },
        commit: Some("c0ffee".into()),
        jobs: jobs.iter().map(|j| j.id()).collect(),
        phase: BuildPhase::Building,
        created_at: Timestamp(at),
        updated_at: Timestamp(at),
    };
    (build, jobs)
}

fn submit(b: &Build, jobs: &[Job]) -> Vec<Record> {
    let mut r = vec![Record::Build(b.clone())];
    r.extend(jobs.iter().cloned().map(Record::Job));
    r
}

fn image(n: u8) -> ImageResult {
    ImageResult {
        digest: digest(n),
        size: 500,
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
    }
}

fn cache_entry(key: u8, repository: &str, last_used: u64) -> CacheEntry {
    CacheEntry {
        key: digest(key),
        repository: repository.into(),
        platform: "linux/amd64".parse().expect("platform"),
        result: image(key),
        build: BuildId::from_bytes([key; 16]),
        agent: AgentId::from_bytes([9; 16]),
        builder: "buildah".into(),
        created_at: Timestamp(1),
        last_used: Timestamp(last_used),
    }
}

// ---- the cases ------------------------------------------------------------------

async fn tokens_are_consumed_once_and_expire(f: &mut Fixture) {
    let s = &f.store;
    let hash = [7u8; 32];
    s.put_token(hash, &token(100, 1)).await.expect("put");
    let a = agent("a");
    s.enroll(hash, Timestamp(10), &a).await.expect("first use");
    assert_eq!(s.agent(a.id).await.expect("read"), Some(a));
    let err = s
        .enroll(hash, Timestamp(11), &agent("b"))
        .await
        .expect_err("used up");
    assert!(
        matches!(err, StoreError::Token(TokenRefusal::UsedUp)),
        "{err}"
    );
    s.put_token([8; 32], &token(100, 5)).await.expect("put");
    let err = s
        .enroll([8; 32], Timestamp(100), &agent("c"))
        .await
        .expect_err("expired");
    assert!(
        matches!(
            err,
            StoreError::Token(TokenRefusal::Expired(Timestamp(100)))
        ),
        "{err}"
    );
    let err = s
        .enroll([9; 32], Timestamp(1), &agent("d"))
        .await
        .expect_err("unknown");
    assert!(
        matches!(err, StoreError::Token(TokenRefusal::Unknown)),
        "{err}"
    );
    // A refused enrolment stores no agent, and spends no use.
    assert_eq!(s.agents().await.expect("list").len(), 1);
    s.put_token([10; 32], &token(1000, 2)).await.expect("put");
    assert_eq!(s.prune_tokens(Timestamp(100)).await.expect("prune"), 2);
    s.enroll([10; 32], Timestamp(101), &agent("e"))
        .await
        .expect("the live token survived the prune");
}

async fn agent_registry(f: &mut Fixture) {
    let s = &f.store;
    s.put_token([1; 32], &token(1000, 3)).await.expect("put");
    let (b, a, c) = (agent("beta"), agent("alpha"), agent("gamma"));
    for r in [&b, &a, &c] {
        s.enroll([1; 32], Timestamp(5), r).await.expect("enroll");
    }
    let names: Vec<String> = s
        .agents()
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["alpha", "beta", "gamma"], "listed by name");
    let updated = s
        .update_agent(b.id, |r| {
            r.state = AgentState::Cordoned;
            r.capacity = 8;
            r.last_seen = Some(Timestamp(77));
        })
        .await
        .expect("update");
    assert_eq!(updated.state, AgentState::Cordoned);
    let read = s.agent(b.id).await.expect("read").expect("present");
    assert_eq!(read, updated);
    assert!(matches!(
        s.update_agent(AgentId::new_v4(), |_| {}).await,
        Err(StoreError::NoSuchAgent(_))
    ));
    assert_eq!(s.agent(AgentId::new_v4()).await.expect("read"), None);
}

async fn job_transitions_and_attempts(f: &mut Fixture) {
    let s = &f.store;
    let (mut b, mut jobs) = build(1, 1000, &["linux/amd64", "linux/arm64"]);
    s.commit(submit(&b, &jobs)).await.expect("submit");
    let (agent1, agent2) = (AgentId::from_bytes([1; 16]), AgentId::from_bytes([2; 16]));

    // amd64: assigned, started, lost (requeued: attempt 2), then built elsewhere.
    let j = &mut jobs[0];
    j.transition(JobEvent::Assign {
        agent: agent1,
        at: Timestamp(1001),
    })
    .expect("assign");
    j.transition(JobEvent::Start {
        agent: agent1,
        attempt: 1,
        at: Timestamp(1002),
    })
    .expect("start");
    s.commit(vec![Record::Job(j.clone())])
        .await
        .expect("commit");
    assert!(matches!(
        s.job(j.id()).await.expect("read").expect("present").state(),
        JobState::Running { .. }
    ));
    j.transition(JobEvent::Requeue {
        reason: "agent lost".into(),
        at: Timestamp(1003),
    })
    .expect("requeue");
    j.transition(JobEvent::Assign {
        agent: agent2,
        at: Timestamp(1004),
    })
    .expect("assign");
    j.transition(JobEvent::Succeed {
        agent: agent2,
        attempt: 2,
        result: image(1),
        at: Timestamp(1005),
    })
    .expect("succeed");
    // arm64 fails for good.
    let k = &mut jobs[1];
    k.transition(JobEvent::Assign {
        agent: agent2,
        at: Timestamp(1001),
    })
    .expect("assign");
    k.transition(JobEvent::Fail {
        agent: agent2,
        attempt: 1,
        failure: JobFailure {
            kind: FailureKind::Build,
            message: "RUN exited 1".into(),
            exit_code: Some(1),
        },
        at: Timestamp(1006),
    })
    .expect("fail");
    b.phase = BuildPhase::Failed {
        reason: "linux/arm64 failed".into(),
    };
    // A step's records commit together.
    s.commit(vec![
        Record::Job(jobs[0].clone()),
        Record::Job(jobs[1].clone()),
        Record::Build(b.clone()),
    ])
    .await
    .expect("commit");

    let (read_build, read_jobs) = s
        .build_with_jobs(b.id)
        .await
        .expect("read")
        .expect("present");
    assert_eq!(read_build, b);
    assert_eq!(read_jobs, jobs, "jobs in the build's platform order");
    assert_eq!(read_jobs[0].attempt(), 2);
    assert_eq!(
        read_jobs[0].history().len(),
        1,
        "the lost attempt is history"
    );
    assert_eq!(s.build(b.id).await.expect("read"), Some(b));
    assert!(s.active_builds().await.expect("active").is_empty());
    assert_eq!(s.build(BuildId::new_v4()).await.expect("read"), None);
    assert_eq!(
        s.build_with_jobs(BuildId::new_v4()).await.expect("read"),
        None
    );
}

async fn queue_order_and_recent_builds(f: &mut Fixture) {
    let s = &f.store;
    // Submitted out of order; ids chosen so id order differs from time order.
    let mut all = Vec::new();
    for (n, at) in [(5u8, 3000u64), (3, 1000), (4, 2000), (1, 2000), (2, 4000)] {
        let (b, jobs) = build(n, at, &["linux/amd64"]);
        s.commit(submit(&b, &jobs)).await.expect("submit");
        all.push((b, jobs));
    }
    // Build 2 (the newest) finishes: it leaves the active set.
    let (b2, _) = all
        .iter_mut()
        .find(|(b, _)| b.id.as_bytes()[0] == 2)
        .expect("b2");
    b2.phase = BuildPhase::Cancelled {
        reason: "user".into(),
    };
    s.commit(vec![Record::Build(b2.clone())])
        .await
        .expect("cancel");
    let order: Vec<u8> = s
        .active_builds()
        .await
        .expect("active")
        .iter()
        .map(|(b, jobs)| {
            assert_eq!(jobs.len(), 1);
            b.id.as_bytes()[0]
        })
        .collect();
    assert_eq!(order, [3, 1, 4, 5], "oldest first; ties by id");
    let recent: Vec<u8> = s
        .recent_builds(3)
        .await
        .expect("recent")
        .iter()
        .map(|b| b.id.as_bytes()[0])
        .collect();
    assert_eq!(
        recent,
        [2, 5, 4],
        "newest first, limited; ties by id descending"
    );
}

async fn result_cache(f: &mut Fixture) {
    let s = &f.store;
    let repo = "registry.example.com/app";
    s.commit(vec![
        Record::Cache(cache_entry(1, repo, 10)),
        Record::Cache(cache_entry(2, repo, 20)),
        Record::Cache(cache_entry(1, "registry.example.com/other", 30)),
    ])
    .await
    .expect("commit");
    assert_eq!(
        s.cache_lookup(&digest(1), repo).await.expect("lookup"),
        Some(cache_entry(1, repo, 10))
    );
    assert_eq!(
        s.cache_lookup(&digest(2), "registry.example.com/other")
            .await
            .expect("lookup"),
        None,
        "a hit needs the same repository"
    );
    s.cache_touch(&digest(1), repo, Timestamp(50))
        .await
        .expect("touch");
    s.cache_touch(&digest(3), repo, Timestamp(50))
        .await
        .expect("touching a missing entry is harmless");
    assert_eq!(
        s.cache_lookup(&digest(1), repo)
            .await
            .expect("lookup")
            .map(|e| e.last_used),
        Some(Timestamp(50))
    );
    assert_eq!(s.cache_list().await.expect("list").len(), 3);
    // Entries last used before 25: only key 2 in `repo`.
    assert_eq!(s.cache_prune(Some(Timestamp(25))).await.expect("prune"), 1);
    assert_eq!(
        s.cache_lookup(&digest(2), repo).await.expect("lookup"),
        None
    );
    s.cache_remove(&digest(1), repo).await.expect("remove");
    assert_eq!(s.cache_list().await.expect("list").len(), 1);
    assert_eq!(s.cache_prune(None).await.expect("prune all"), 1);
    assert!(s.cache_list().await.expect("list").is_empty());
}

/// A job's whole log, read on offset by offset as a follower does.
async fn read_all(logs: &Logs, job: JobId) -> Vec<u8> {
    let (mut out, mut from) = (Vec::new(), 0);
    loop {
        let (data, next) = logs.read_from(job, from).await.expect("read");
        if data.is_empty() {
            return out;
        }
        out.extend_from_slice(&data);
        from = next;
    }
}

async fn build_logs(f: &mut Fixture) {
    let logs = f.logs();
    let job = JobId::new_v4();
    assert_eq!(
        logs.append(job, 1, 0, b"hello ".to_vec())
            .await
            .expect("append"),
        6
    );
    assert_eq!(
        logs.append(job, 1, 3, b"lo world".to_vec())
            .await
            .expect("append"),
        5,
        "a resent overlap is trimmed"
    );
    assert_eq!(
        logs.append(job, 1, 0, b"hello".to_vec())
            .await
            .expect("append"),
        0,
        "a duplicate is dropped"
    );
    assert_eq!(read_all(&logs, job).await, b"hello world");
    // Reading on from an offset gives the rest, and the offset after it.
    let (rest, next) = logs.read_from(job, 6).await.expect("read");
    assert_eq!(rest, b"world");
    assert_eq!(next, 11);
    // A second attempt is marked; lost output is marked.
    logs.append(job, 2, 0, b"second\n".to_vec())
        .await
        .expect("append");
    logs.append(job, 2, 20, b"!".to_vec())
        .await
        .expect("append");
    let text = String::from_utf8(read_all(&logs, job).await).expect("utf-8");
    assert!(
        text.starts_with("hello world\n[helix: attempt 2]\nsecond\n"),
        "{text}"
    );
    assert!(text.contains("13 bytes of output were lost"), "{text}");
    assert_eq!(logs.tail(job, 1).await, "!");

    // Bounded: past the cap the head goes and the end stays.
    let big = JobId::new_v4();
    let chunk = vec![b'x'; 1024 * 1024];
    let mut offset = 0;
    for _ in 0..13 {
        logs.append(big, 1, offset, chunk.clone())
            .await
            .expect("append");
        offset += chunk.len() as u64;
    }
    logs.append(big, 1, offset, b"\nthe end\n".to_vec())
        .await
        .expect("append");
    let mut kept = 0;
    let mut from = 0;
    loop {
        let (data, next) = logs.read_from(big, from).await.expect("read");
        if data.is_empty() {
            break;
        }
        kept += data.len() as u64;
        from = next;
    }
    assert!(kept <= MAX_LOG_BYTES + MAX_LOG_BYTES / 5 + 100, "{kept}");
    assert!(kept >= MAX_LOG_BYTES, "{kept}");
    assert_eq!(logs.tail(big, 1).await, "the end");
}

async fn crash_and_reopen(f: &mut Fixture) {
    let a = agent("a");
    let log_job = JobId::new_v4();
    f.logs()
        .append(log_job, 1, 0, b"before crash ".to_vec())
        .await
        .expect("log");
    let (mut b, mut jobs) = build(7, 5000, &["linux/amd64"]);
    {
        let s = &f.store;
        s.put_token([1; 32], &token(100, 1)).await.expect("put");
        s.enroll([1; 32], Timestamp(1), &a).await.expect("enroll");
        s.update_agent(a.id, |r| r.state = AgentState::Draining)
            .await
            .expect("update");
        s.commit(submit(&b, &jobs)).await.expect("submit");
        jobs[0]
            .transition(JobEvent::Assign {
                agent: a.id,
                at: Timestamp(5001),
            })
            .expect("assign");
        b.updated_at = Timestamp(5001);
        s.commit(vec![Record::Job(jobs[0].clone()), Record::Build(b.clone())])
            .await
            .expect("assign");
        s.commit(vec![Record::Cache(cache_entry(4, "r/app", 9))])
            .await
            .expect("cache");
    }
    f.reopen().await;
    let s = &f.store;
    assert_eq!(s.cluster().await.expect("cluster"), "conformance");
    assert_eq!(
        s.agent(a.id).await.expect("read").map(|r| r.state),
        Some(AgentState::Draining)
    );
    let active = s.active_builds().await.expect("active");
    assert_eq!(active, vec![(b.clone(), jobs.clone())], "resumed exactly");
    assert_eq!(s.cache_list().await.expect("list").len(), 1);
    // A reconnecting agent resends its log from the start: what was stored before
    // the crash is neither stored twice nor marked lost.
    let logs = f.logs();
    assert_eq!(
        logs.append(log_job, 1, 0, b"before crash and after\n".to_vec())
            .await
            .expect("log"),
        10
    );
    assert_eq!(read_all(&logs, log_job).await, b"before crash and after\n");
    let err = s
        .enroll([1; 32], Timestamp(2), &agent("b"))
        .await
        .expect_err("the use was spent before the crash");
    assert!(
        matches!(err, StoreError::Token(TokenRefusal::UsedUp)),
        "{err}"
    );
}

/// Run each case on a fresh store of one backend; name the failing case.
macro_rules! cases {
    ($make:expr; $($case:ident),* $(,)?) => {{
        $(
            eprintln!("case {}", stringify!($case));
            let mut f = $make(stringify!($case)).await;
            $case(&mut f).await;
        )*
    }};
}

/// The conformance cases, listed once for both backends.
macro_rules! every_case {
    ($make:expr) => {
        cases!($make;
            tokens_are_consumed_once_and_expire,
            agent_registry,
            job_transitions_and_attempts,
            queue_order_and_recent_builds,
            result_cache,
            build_logs,
            crash_and_reopen,
        )
    };
}

#[tokio::test]
async fn conformance_redb() {
    every_case!(|_| Fixture::redb());
}

#[tokio::test]
async fn conformance_postgres() {
    let pg = Postgres::start().expect("start PostgreSQL");
    every_case!(|case| Fixture::postgres(&pg, case));
}

// ---- schema versions ------------------------------------------------------------

#[tokio::test]
async fn a_newer_schema_is_refused_with_both_versions() {
    // redb
    let dir = tempfile::tempdir().expect("tempdir");
    drop(Store::create_redb(&redb_path(&dir), "c").expect("create"));
    {
        let db = redb::Database::open(redb_path(&dir)).expect("open raw");
        let txn = db.begin_write().expect("txn");
        let meta: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta_v1");
        txn.open_table(meta)
            .expect("meta")
            .insert("schema_version", 99u32.to_be_bytes().as_slice())
            .expect("insert");
        txn.commit().expect("commit");
    }
    let err = Store::open_redb(&redb_path(&dir))
        .expect_err("too new")
        .to_string();
    assert!(
        err.contains("99") && err.contains(&SCHEMA_VERSION.to_string()),
        "{err}"
    );

    // PostgreSQL
    let pg = Postgres::start().expect("start PostgreSQL");
    let cfg = PostgresConfig::new(pg.url());
    drop(Store::init_postgres(&cfg, "c").await.expect("init"));
    pg.psql_db(
        "helix",
        "UPDATE helix_meta SET value = '99' WHERE key = 'schema_version'",
    )
    .expect("bump");
    let err = Store::open_postgres(&cfg)
        .await
        .expect_err("too new")
        .to_string();
    assert!(
        err.contains("99") && err.contains(&SCHEMA_VERSION.to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn postgres_init_is_idempotent_concurrent_and_checks_the_cluster() {
    let pg = Postgres::start().expect("start PostgreSQL");
    let cfg = PostgresConfig::new(pg.url());
    let err = Store::open_postgres(&cfg)
        .await
        .expect_err("empty database");
    assert!(matches!(err, StoreError::NotInitialized), "{err}");
    // Two coordinators initializing together: the migration lock serializes them.
    let (a, b) = tokio::join!(
        Store::init_postgres(&cfg, "prod"),
        Store::init_postgres(&cfg, "prod")
    );
    a.expect("first");
    b.expect("second");
    let store = Store::open_postgres(&cfg).await.expect("open");
    assert_eq!(store.cluster().await.expect("cluster"), "prod");
    let err = Store::init_postgres(&cfg, "staging")
        .await
        .expect_err("another cluster");
    assert!(err.to_string().contains("\"prod\""), "{err}");
    // The first coordinator's CA is the cluster's; another CA is refused.
    store.check_ca("aa11").await.expect("first CA recorded");
    store.check_ca("aa11").await.expect("same CA");
    let err = store.check_ca("bb22").await.expect_err("another CA");
    assert!(matches!(err, StoreError::WrongCa { .. }), "{err}");
    assert!(err.to_string().contains("--ca-from"), "{err}");
    // A wrong password is an error naming the problem, not a hang.
    let bad = PostgresConfig::new(pg.url().replace(helix_tests::postgres::PASSWORD, "wrong"));
    let err = Store::open_postgres(&bad).await.expect_err("bad password");
    assert!(err.to_string().contains("password"), "{err}");
}

// ---- the lease and fencing (PostgreSQL only) ------------------------------------

#[tokio::test]
async fn lease_elects_one_leader_and_fences_the_old_one() {
    let pg = Postgres::start().expect("start PostgreSQL");
    let cfg = PostgresConfig::new(pg.url());
    let a = Store::init_postgres(&cfg, "prod").await.expect("a");
    let b = Store::open_postgres(&cfg).await.expect("b");
    // Long enough that the round trips between one campaign and the next checks
    // (fsync on, a loaded machine) always fit in the lease; only the pause below
    // lets it expire.
    let ttl = Duration::from_secs(5);
    let me_a = Candidate::new("10.0.0.1:7443".into(), ttl);
    let me_b = Candidate::new("10.0.0.2:7443".into(), ttl);

    // Nobody may write before an election.
    let err = b
        .put_token([1; 32], &token(9, 1))
        .await
        .expect_err("no lease");
    assert!(matches!(err, StoreError::NotLeader), "{err}");

    assert_eq!(
        a.campaign(&me_a).await.expect("a"),
        Standing::Leader { epoch: 1 }
    );
    assert_eq!(
        b.campaign(&me_b).await.expect("b"),
        Standing::Follower {
            leader: Some("10.0.0.1:7443".into())
        }
    );
    // Renewal keeps the epoch.
    assert_eq!(
        a.campaign(&me_a).await.expect("renew"),
        Standing::Leader { epoch: 1 }
    );
    a.put_token([1; 32], &token(9, 1))
        .await
        .expect("the leader writes");
    let view = b.lease().await.expect("lease");
    assert_eq!(view.epoch, 1);
    assert_eq!(view.leader.as_deref(), Some("10.0.0.1:7443"));
    assert_eq!(view.coordinators.len(), 2);
    assert_eq!(
        view.coordinators.iter().filter(|c| c.leader).count(),
        1,
        "{view:?}"
    );

    // A stops renewing (paused); B takes over once the lease expired.
    tokio::time::sleep(ttl + Duration::from_millis(500)).await;
    assert_eq!(
        b.campaign(&me_b).await.expect("b"),
        Standing::Leader { epoch: 2 }
    );
    // A wakes up and writes: fenced, and it stops writing from then on.
    let err = a
        .put_token([2; 32], &token(9, 1))
        .await
        .expect_err("fenced");
    assert!(matches!(err, StoreError::Fenced { epoch: 1, .. }), "{err}");
    assert!(err.to_string().contains("10.0.0.2:7443"), "{err}");
    let err = a
        .commit(vec![Record::Cache(cache_entry(1, "r", 1))])
        .await
        .expect_err("still fenced");
    assert!(matches!(err, StoreError::NotLeader), "{err}");
    assert_eq!(
        a.campaign(&me_a).await.expect("a"),
        Standing::Follower {
            leader: Some("10.0.0.2:7443".into())
        }
    );
    b.put_token([3; 32], &token(9, 1))
        .await
        .expect("the new leader writes");

    // From the database: nothing was written under epoch 1 after epoch 2 began.
    let stale = pg
        .psql_db(
            "helix",
            "SELECT count(*) FROM (SELECT epoch, written_at FROM helix_tokens \
             UNION ALL SELECT epoch, written_at FROM helix_cache) w \
             WHERE w.epoch = 1 AND w.written_at > (SELECT began_at FROM helix_epochs WHERE epoch = 2)",
        )
        .expect("query");
    assert_eq!(stale.trim(), "0");
    let epochs = pg
        .psql_db(
            "helix",
            "SELECT string_agg(epoch::text, ',' ORDER BY epoch) FROM helix_epochs",
        )
        .expect("query");
    assert_eq!(epochs.trim(), "1,2");

    // Resigning hands over at once.
    b.resign(&me_b).await.expect("resign");
    assert_eq!(
        a.campaign(&me_a).await.expect("a"),
        Standing::Leader { epoch: 3 }
    );
}

#[tokio::test]
async fn postgres_over_tls_verifies_the_server() {
    let pg = Postgres::start().expect("start PostgreSQL");
    let ca = helix_transport::pki::ClusterCa::generate("db-ca").expect("CA");
    let server = ca
        .issue_server_cert(&["127.0.0.1".into()], Duration::from_secs(3600))
        .expect("server certificate");
    pg.require_tls(&server.cert_pem, &server.key_pem)
        .expect("restart with TLS");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("db-ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).expect("write CA");

    // Without TLS the server refuses us (so a success below means TLS was used).
    let plain = PostgresConfig::new(pg.url());
    let err = Store::init_postgres(&plain, "tls")
        .await
        .expect_err("no TLS");
    assert!(
        err.to_string().contains("no encryption") || err.to_string().contains("pg_hba"),
        "{err}"
    );

    // sslmode=require with the server's CA: connected, over TLS.
    let mut tls = PostgresConfig::new(format!("{}?sslmode=require", pg.url()));
    tls.ca_file = Some(ca_file);
    let store = Store::init_postgres(&tls, "tls")
        .await
        .expect("TLS with the CA");
    assert_eq!(store.cluster().await.expect("cluster"), "tls");

    // A server certificate nobody vouches for is refused, naming the reason.
    let untrusted = PostgresConfig::new(format!("{}?sslmode=require", pg.url()));
    let err = Store::open_postgres(&untrusted)
        .await
        .expect_err("unknown CA");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
}

#[tokio::test]
async fn contexts_in_the_shared_store_serve_every_coordinator_and_are_verified() {
    use helix_coordinator::contexts::{ContextStoreError, Contexts};
    let pg = Postgres::start().expect("start PostgreSQL");
    let cfg = PostgresConfig::new(pg.url());
    let store = Store::init_postgres(&cfg, "ctx").await.expect("init");
    lead(&store, &candidate()).await;
    let dirs = tempfile::tempdir().expect("tempdir");
    let open = |name: &str| {
        Contexts::open(&dirs.path().join(name), 1 << 30, Some(store.clone())).expect("open")
    };
    let (a, b, c) = (open("a"), open("b"), open("c"));
    // Over a chunk boundary, so the order of the chunks matters.
    let data: Vec<u8> = (0..(1024 * 1024 + 4096)).map(|i| (i % 251) as u8).collect();
    let digest = Digest::sha256_of(&data);
    a.receive(&digest, data.len() as u64, &mut &data[..])
        .await
        .expect("upload");
    // Another coordinator sees it and fetches it from the database.
    assert!(b.has(&digest).await.expect("has"));
    assert!(!b.contains(&digest), "not on b's disk yet");
    let path = b.local(&digest).await.expect("fetch").expect("stored");
    assert_eq!(std::fs::read(&path).expect("read"), data);
    // Damaged in the database: refused, and nothing is left on c's disk.
    pg.psql_db(
        "helix",
        "UPDATE helix_context_chunks SET data = 'x' WHERE seq = 1",
    )
    .expect("damage");
    let err = c.local(&digest).await.expect_err("damaged");
    assert!(matches!(err, ContextStoreError::Mismatch { .. }), "{err}");
    assert!(!c.contains(&digest));
    // An unknown context is nobody's.
    let unknown = Digest::sha256_of(b"nope");
    assert!(!b.has(&unknown).await.expect("has"));
    assert_eq!(b.local(&unknown).await.expect("fetch"), None);
    // Garbage collection in the database: kept while referenced.
    assert_eq!(
        store
            .context_gc(std::slice::from_ref(&digest), Duration::ZERO)
            .await
            .expect("gc"),
        0
    );
    assert_eq!(store.context_gc(&[], Duration::ZERO).await.expect("gc"), 1);
    assert!(!c.has(&digest).await.expect("has"));
}
