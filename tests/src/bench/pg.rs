//! The PostgreSQL server under test (`--store postgres`): the CPU time of its
//! processes, and its own counters of transactions and WAL, read before and after the
//! throughput phase to say what the store did per job.

use std::time::Duration;

use anyhow::Context as _;
use helix_tests::postgres::{Postgres, DATABASE};

use crate::process;
use crate::record::round;

/// PostgreSQL backends send their statistics at most once a second, and within a
/// second of going idle: wait this long before reading the counters, so they hold
/// what was done.
const STATS_SETTLE: Duration = Duration::from_millis(1500);

/// A running throwaway server.
#[derive(Debug)]
pub(crate) struct PgServer<'a> {
    pg: &'a Postgres,
    /// The postmaster.
    pid: u32,
}

/// Cumulative counters of the server (`pg_stat_database` of the coordinator's
/// database, `pg_stat_wal` of the whole server).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Counters {
    xact_commit: f64,
    xact_rollback: f64,
    wal_records: f64,
    wal_bytes: f64,
    wal_write: f64,
    wal_sync: f64,
}

impl<'a> PgServer<'a> {
    pub(crate) fn new(pg: &'a Postgres) -> anyhow::Result<PgServer<'a>> {
        let pid = pg
            .pid()
            .and_then(|p| u32::try_from(p).ok())
            .context("the PostgreSQL server has no postmaster.pid")?;
        Ok(PgServer { pg, pid })
    }

    /// CPU seconds of the postmaster and all its processes (backends, WAL writer,
    /// checkpointer, ...), NaN if unreadable.
    pub(crate) fn cpu_secs(&self) -> f64 {
        process::tree_cpu_secs(self.pid).unwrap_or(f64::NAN)
    }

    /// The counters, after letting the backends report theirs ([`STATS_SETTLE`]).
    /// Blocks the calling thread (psql as a child process); call it outside timed
    /// phases only.
    pub(crate) fn counters(&self) -> anyhow::Result<Counters> {
        std::thread::sleep(STATS_SETTLE);
        let row = self.pg.psql(&format!(
            "SELECT d.xact_commit, d.xact_rollback, w.wal_records, w.wal_bytes, \
             w.wal_write, w.wal_sync FROM pg_stat_database d, pg_stat_wal w \
             WHERE d.datname = '{DATABASE}'"
        ))?;
        let v: Vec<f64> = row
            .split('|')
            .map(|f| f.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("unexpected pg_stat row {row:?}"))?;
        let [xact_commit, xact_rollback, wal_records, wal_bytes, wal_write, wal_sync] = v[..]
        else {
            anyhow::bail!("unexpected pg_stat row {row:?}");
        };
        Ok(Counters {
            xact_commit,
            xact_rollback,
            wal_records,
            wal_bytes,
            wal_write,
            wal_sync,
        })
    }
}

impl Counters {
    /// What happened between `before` and `self`, per job.
    pub(crate) fn per_job_since(&self, before: &Counters, jobs: usize) -> serde_json::Value {
        let per = |now: f64, then: f64| round((now - then) / jobs.max(1) as f64);
        serde_json::json!({
            "commits": per(self.xact_commit, before.xact_commit),
            "rollbacks": per(self.xact_rollback, before.xact_rollback),
            "wal_records": per(self.wal_records, before.wal_records),
            "wal_bytes": per(self.wal_bytes, before.wal_bytes),
            "wal_writes": per(self.wal_write, before.wal_write),
            "wal_fsyncs": per(self.wal_sync, before.wal_sync),
        })
    }
}
