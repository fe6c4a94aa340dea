//! The coordinator under test: a real `helix-coordinator` process (`init`, then
//! `serve` on an ephemeral loopback port) in a data directory of its own, on the
//! embedded redb store or a PostgreSQL URL, and what `/proc` says about its memory
//! and CPU time (and that of the database server's processes).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _};
use helix_tests::{run, wait_for, Proc};

/// The `helix-coordinator` binary next to this program (`target/<profile>/`), built
/// first in the same profile unless `no_build`, so a stale binary is never measured.
pub(crate) fn coordinator_binary(
    explicit: Option<&Path>,
    no_build: bool,
) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    let exe = std::env::current_exe().context("find this program's path")?;
    let profile_dir = exe
        .parent()
        .context("this program has no parent directory")?
        .to_path_buf();
    if !no_build {
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "-p", "helix-coordinator"]);
        if release {
            cmd.arg("--release");
        } else {
            eprintln!("warning: bench-dispatch is not a release build; figures are meaningless (use cargo run --release)");
        }
        let status = cmd
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .context("run cargo build -p helix-coordinator")?;
        if !status.success() {
            bail!("cargo build -p helix-coordinator failed (pass --no-build to use the existing binary)");
        }
    }
    let bin = profile_dir.join("helix-coordinator");
    if !bin.is_file() {
        bail!(
            "{} does not exist: build it with `cargo build --release -p helix-coordinator`",
            bin.display()
        );
    }
    Ok(bin)
}

/// A running coordinator. Dropping it kills the process by its pid.
#[derive(Debug)]
pub(crate) struct CoordinatorProc {
    pub(crate) dir: PathBuf,
    pub(crate) addr: String,
    proc: Proc,
}

impl CoordinatorProc {
    /// `init` a data directory under `root`, start `serve`, wait until it listens.
    /// `store` is a PostgreSQL URL given to both as `--store`, or `None` for the
    /// default embedded redb store in the data directory. Listening is not leading:
    /// on PostgreSQL the caller waits for the lease before sending work.
    pub(crate) fn start(
        bin: &Path,
        root: &Path,
        log_level: &str,
        store: Option<&str>,
    ) -> anyhow::Result<CoordinatorProc> {
        let dir = root.join("coordinator");
        let dir_s = dir.to_str().context("the work directory is not UTF-8")?;
        let store_args: Vec<&str> = match store {
            Some(url) => vec!["--store", url],
            None => Vec::new(),
        };
        let mut init_args = vec!["init", "--data-dir", dir_s, "--cluster", "bench"];
        init_args.extend(&store_args);
        let init = run(
            bin,
            &helix_tests::s(&init_args),
            &[],
            Duration::from_secs(60),
        );
        if init.code != Some(0) {
            bail!("helix-coordinator init failed: {}", init.stderr);
        }
        let log = root.join("coordinator.log");
        let mut serve_args = vec![
            "serve",
            "--data-dir",
            dir_s,
            "--listen",
            "127.0.0.1:0",
            // Not the fixed default port, which another coordinator on this host
            // may hold.
            "--metrics-listen",
            "127.0.0.1:0",
            "--log-level",
            log_level,
        ];
        serve_args.extend(&store_args);
        let proc = Proc::spawn("coordinator", bin, &helix_tests::s(&serve_args), &log, &[]);
        let addr = wait_for(Duration::from_secs(30), "the coordinator to listen", || {
            let text = std::fs::read_to_string(&log).ok()?;
            helix_tests::listening_addr(&text)
        });
        Ok(CoordinatorProc { dir, addr, proc })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Kill the process (SIGKILL by pid) and reap it.
    pub(crate) fn kill(mut self) {
        self.proc.kill9();
    }
}

/// Memory figures of a process, MiB.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Memory {
    /// Resident now (`VmRSS`).
    pub(crate) rss: f64,
    /// Resident high-water mark since start (`VmHWM`).
    pub(crate) hwm: f64,
}

/// `VmRSS` and `VmHWM` of `pid` from `/proc/<pid>/status`.
pub(crate) fn memory(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        let kib: f64 = line
            .split_whitespace()
            .nth(1)
            .context("malformed status line")?
            .parse()
            .context("malformed status value")?;
        Ok(kib / 1024.0)
    };
    Ok(Memory {
        rss: field("VmRSS:")?,
        hwm: field("VmHWM:")?,
    })
}

/// CPU time (user + system, all threads) `pid` has used, in seconds.
pub(crate) fn cpu_secs(pid: &str) -> anyhow::Result<f64> {
    Ok(stat_times(pid)?.0)
}

/// CPU time (user + system) of `root` and its children, in seconds: for a
/// PostgreSQL server, the postmaster, its background processes and every backend.
/// Children that already exited count through `root`'s reaped-children time, so the
/// difference of two readings covers backends that came and went between them.
pub(crate) fn tree_cpu_secs(root: u32) -> anyhow::Result<f64> {
    let (own, reaped, _) = stat_times(&root.to_string())?;
    let mut total = own + reaped;
    let entries = std::fs::read_dir("/proc").context("read /proc")?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        // A process may exit between the listing and the read: skip it.
        if let Ok((own, _, ppid)) = stat_times(pid) {
            if ppid == root {
                total += own;
            }
        }
    }
    Ok(total)
}

/// From `/proc/<pid>/stat`: own CPU seconds (utime + stime), reaped children's
/// (cutime + cstime), and the parent pid.
fn stat_times(pid: &str) -> anyhow::Result<(f64, f64, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // USER_HZ is 100 on every Linux architecture this runs on (it is part of the ABI).
    let num = |i: usize| -> anyhow::Result<f64> {
        fields
            .get(i)
            .context("short /proc stat")?
            .parse::<f64>()
            .context("malformed /proc stat value")
    };
    // After the name: state (3) is index 0, ppid (4) index 1, utime (14) index 11,
    // stime 12, cutime 13, cstime 14.
    let ppid = fields
        .get(1)
        .context("short /proc stat")?
        .parse::<u32>()
        .context("malformed ppid")?;
    Ok((
        (num(11)? + num(12)?) / 100.0,
        (num(13)? + num(14)?) / 100.0,
        ppid,
    ))
}

/// Busy CPU time of the whole machine (all CPUs, everything but idle and iowait), in
/// seconds, from `/proc/stat`: what other processes used is this minus ours.
pub(crate) fn machine_busy_secs() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse::<f64>().context("malformed /proc/stat"))
        .collect::<Result<_, _>>()?;
    // user nice system idle iowait irq softirq steal ...; guest time is already in user.
    let total: f64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
    Ok((total - idle) / 100.0)
}
