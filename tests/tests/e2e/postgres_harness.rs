//! The throwaway PostgreSQL server the coordinator's store tests run against
//! (`helix_tests::postgres::Postgres`): password access over TCP, durability across a
//! restart and a crash, several servers at once, and cleanup on drop.

use std::time::{Duration, Instant};

use helix_tests::postgres::{Postgres, PASSWORD};

fn start() -> Postgres {
    let started = Instant::now();
    let pg = Postgres::start().expect("start PostgreSQL");
    eprintln!(
        "PostgreSQL on port {} started in {:?}",
        pg.port(),
        started.elapsed()
    );
    pg
}

#[test]
fn postgres_harness_password_access_and_restart() {
    let pg = start();
    let url = pg.url();
    assert_eq!(
        url,
        format!("postgres://helix:{PASSWORD}@127.0.0.1:{}/helix", pg.port())
    );

    // The role connects with its password, like the coordinator, and owns its database.
    pg.psql_url(
        &url,
        "CREATE TABLE kv (k text PRIMARY KEY, v text NOT NULL); \
         INSERT INTO kv VALUES ('job-1', 'queued')",
    )
    .expect("create and fill a table as helix over TCP");
    assert_eq!(
        pg.psql("SELECT tableowner FROM pg_tables WHERE tablename = 'kv'")
            .expect("superuser query"),
        "helix"
    );
    assert_eq!(
        pg.psql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'helix'")
            .expect("superuser query"),
        "helix"
    );
    assert_eq!(
        pg.psql("SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'helix'")
            .expect("superuser query"),
        "t",
        "the password is stored as a SCRAM verifier"
    );

    pg.restart().expect("restart");
    assert_eq!(
        pg.psql_url(&url, "SELECT k || '=' || v FROM kv")
            .expect("query after restart"),
        "job-1=queued"
    );

    // The password may also come from PGPASSWORD.
    let out = pg
        .psql_command(&pg.url_without_password())
        .env("PGPASSWORD", PASSWORD)
        .args(["-c", "SELECT count(*) FROM kv"])
        .output()
        .expect("run psql");
    assert!(out.status.success(), "psql with PGPASSWORD: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");

    // A wrong password, none at all, and the superuser over TCP are all refused.
    let wrong = pg.url().replace(PASSWORD, "wrong-pw");
    let err = pg
        .psql_url(&wrong, "SELECT 1")
        .expect_err("a wrong password is refused");
    assert!(
        format!("{err:#}").contains("password authentication failed for user \"helix\""),
        "{err:#}"
    );
    let err = pg
        .psql_url(&pg.url_without_password(), "SELECT 1")
        .expect_err("no password is refused");
    assert!(
        format!("{err:#}").contains("no password supplied"),
        "{err:#}"
    );
    let superuser = format!("postgres://postgres@127.0.0.1:{}/helix", pg.port());
    pg.psql_url(&superuser, "SELECT 1")
        .expect_err("the superuser cannot log in over TCP");
}

#[test]
fn postgres_harness_committed_rows_survive_kill9() {
    let pg = start();
    let url = pg.url();
    pg.psql_url(
        &url,
        "CREATE TABLE jobs (id int PRIMARY KEY); INSERT INTO jobs SELECT generate_series(1, 100)",
    )
    .expect("fill a table");
    let pid = pg.pid().expect("postmaster.pid");

    pg.kill9().expect("kill -9 the server");
    pg.psql("SELECT 1")
        .expect_err("a killed server answers nothing");
    pg.start_again().expect("start after a crash");
    assert_ne!(pg.pid(), Some(pid), "a new postmaster");
    assert_eq!(
        pg.psql_url(&url, "SELECT count(*) FROM jobs")
            .expect("count after recovery"),
        "100"
    );
    assert!(
        pg.log().contains("database system was interrupted"),
        "the log shows crash recovery:\n{}",
        pg.log()
    );
}

#[test]
fn postgres_harness_servers_in_parallel_and_cleanup() {
    let servers: Vec<Postgres> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3).map(|_| s.spawn(start)).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("start thread"))
            .collect()
    });
    let mut ports: Vec<u16> = servers.iter().map(Postgres::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), servers.len(), "one port each: {ports:?}");

    for (i, pg) in servers.iter().enumerate() {
        pg.psql(&format!("CREATE TABLE mine_{i} ()"))
            .expect("create a table");
    }
    for (i, pg) in servers.iter().enumerate() {
        let tables = pg
            .psql("SELECT string_agg(tablename, ',') FROM pg_tables WHERE schemaname = 'public'")
            .expect("list tables");
        assert_eq!(tables, format!("mine_{i}"), "servers share nothing");
    }

    // Dropping one stops it and removes its files; the others go on.
    let mut servers = servers;
    let first = servers.remove(0);
    let (root, pid) = (first.root().to_path_buf(), first.pid().expect("pid"));
    drop(first);
    assert!(!root.exists(), "{} is removed", root.display());
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_running(pid) {
        assert!(Instant::now() < deadline, "postmaster {pid} still runs");
        std::thread::sleep(Duration::from_millis(20));
    }
    for pg in &servers {
        assert_eq!(pg.psql("SELECT 1").expect("still up"), "1");
    }
}

/// Whether `pid` runs (a zombie left for PID 1 to reap does not).
fn is_running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
    })
}
