//! `helix-agent doctor`: checks a build node can work, without starting the agent or
//! touching its state: the builder, the data dir and its free space, the enrolment
//! (identity, or the join token a first start will use), the certificate's expiry,
//! the clock, and that the coordinator is reachable and is the one of this cluster.
//! With several coordinators (configured, or learned from the cluster), each gets a
//! `coordinator` row; one that does not answer is a warning while another does.
//!
//! Everything that depends on the machine goes through [`Machine`] ([`RealMachine`] in
//! production), so each check's rules are tested with fakes.
//!
//! Two choices:
//! - Reachability is a QUIC + TLS handshake that verifies the coordinator's
//!   certificate against the cluster CA (with the agent's certificate presented), then
//!   a close with code NORMAL. It is not a session: a `Hello` would register the agent
//!   as connected and replace the session of an agent running on this host. (TLS 1.3
//!   lets the client finish before the server has judged the client certificate, so
//!   a revoked agent passes this check; `run` reports a revocation.) Before
//!   enrolment the handshake checks the coordinator's CA against the join token's pin
//!   instead.
//! - Clock skew against the coordinator cannot be measured honestly: the protocol
//!   (version 1) carries no clock, and a TLS 1.3 handshake carries no time either. The
//!   check says so (SKIP); what is checked is whether this host's kernel clock is
//!   NTP-synchronised.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use helix_protocol::wire::{close, PROTOCOL_VERSION};
use helix_protocol::JoinToken;
use helix_transport::{connect, tls};
use time::OffsetDateTime;

use crate::builder::{self, BoxFuture, BuilderKind, BuilderUnavailable};
use crate::coordinators;
use crate::datadir::DataDir;
use crate::enrol::{self, JoinTokenConfig};
use crate::identity::AgentIdentity;
use crate::run::rfc3339;

/// Free space under which the data dir is a failure: a build would fail half-way.
pub const FAIL_FREE_BYTES: u64 = 1 << 30;
/// Free space under which the data dir is a warning: a few large images fill it.
pub const WARN_FREE_BYTES: u64 = 10 << 30;
/// A certificate expiring sooner than this is a warning: the agent renews it while
/// connected, so one this close to its end means it has not been connected lately.
pub const WARN_CERT_LEFT: Duration = Duration::from_secs(3 * 24 * 3600);
/// How long the reachability check may take.
pub const REACH_TIMEOUT: Duration = Duration::from_secs(5);

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Not checked, and why is in the detail.
    Skip,
    Warn,
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "OK",
            Status::Skip => "SKIP",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        })
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    pub check: String,
    pub status: Status,
    pub detail: String,
}

impl Check {
    pub fn new(check: &str, status: Status, detail: impl Into<String>) -> Check {
        Check {
            check: check.to_string(),
            status,
            detail: detail.into(),
        }
    }
}

/// Free and total bytes of a file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    /// Available to the agent (root may use reserved blocks; buildah's files count
    /// against the same pool).
    pub available: u64,
    pub total: u64,
}

/// What the kernel says about the system clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClockState {
    /// Synchronised (NTP or PTP), with the kernel's estimate of its maximum error.
    Synchronized {
        max_error: Duration,
    },
    Unsynchronized,
    Unknown(String),
}

/// Whom to handshake with.
#[derive(Debug)]
pub enum Reach<'a> {
    /// An enrolled agent: mutual TLS against the cluster CA.
    Agent {
        coordinator: &'a str,
        ca_pem: &'a str,
        identity: &'a AgentIdentity,
    },
    /// Not enrolled yet: the server's chain must hold the CA the token pins.
    Join {
        coordinator: &'a str,
        token: &'a JoinToken,
    },
}

/// The machine state the checks read.
pub trait Machine: Send + Sync {
    /// `PROGRAM --version`'s output.
    fn builder_version(
        &self,
        kind: BuilderKind,
    ) -> BoxFuture<'_, Result<String, BuilderUnavailable>>;
    fn disk_space(&self, path: &Path) -> std::io::Result<DiskSpace>;
    fn clock(&self) -> ClockState;
    fn now(&self) -> OffsetDateTime;
    /// A handshake; how long it took.
    fn reach<'a>(&'a self, target: Reach<'a>) -> BoxFuture<'a, Result<Duration, String>>;
}

/// What to check.
#[derive(Debug, Clone)]
pub struct DoctorOptions {
    pub data_dir: DataDir,
    pub builder: BuilderKind,
    /// The configured coordinators; empty for the one recorded at enrolment.
    pub coordinators: Vec<String>,
    pub token: JoinTokenConfig,
}

/// Run every check, in the order of the report.
pub async fn diagnose(opts: &DoctorOptions, machine: &dyn Machine) -> Vec<Check> {
    let mut checks = vec![builder_check(opts.builder, machine).await];
    checks.push(data_dir_check(&opts.data_dir));
    checks.push(storage_check(&opts.data_dir, machine));
    let enrolled = enrolment(opts);
    checks.push(enrolled.check.clone());
    checks.push(certificate_check(
        enrolled.identity.as_ref().map(|(_, identity)| identity),
        machine.now(),
    ));
    checks.push(clock_check(machine.clock()));
    checks.push(Check::new(
        "clock skew",
        Status::Skip,
        format!(
            "not measured: the coordinator does not report its clock in protocol version {PROTOCOL_VERSION}"
        ),
    ));
    checks.extend(coordinator_checks(opts, &enrolled, machine).await);
    checks
}

/// Whether any check failed.
pub fn failed(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.status == Status::Fail)
}

/// The report as a table: CHECK, STATUS, DETAIL.
pub fn table(checks: &[Check]) -> String {
    let width = checks
        .iter()
        .map(|c| c.check.len())
        .chain(["CHECK".len()])
        .max()
        .unwrap_or(5);
    let mut out = format!("{:<width$}  {:<6}  DETAIL\n", "CHECK", "STATUS");
    for c in checks {
        out.push_str(&format!(
            "{:<width$}  {:<6}  {}\n",
            c.check,
            c.status.to_string(),
            c.detail
        ));
    }
    out
}

/// The report as JSON: `{"ok": bool, "checks": [{check, status, detail}]}`.
pub fn json(checks: &[Check]) -> serde_json::Value {
    serde_json::json!({ "ok": !failed(checks), "checks": checks })
}

async fn builder_check(kind: BuilderKind, machine: &dyn Machine) -> Check {
    match machine.builder_version(kind).await {
        Ok(version) => Check::new("builder", Status::Ok, version),
        Err(e) => Check::new("builder", Status::Fail, e.to_string()),
    }
}

fn data_dir_check(dir: &DataDir) -> Check {
    let root = dir.root();
    let shown = root.display().to_string();
    if shown.contains(':') {
        return Check::new(
            "data dir",
            Status::Fail,
            format!("{shown} contains ':', which the builders cannot use in a path; choose another data-dir"),
        );
    }
    match std::fs::metadata(root) {
        Ok(meta) if meta.is_dir() => Check::new("data dir", Status::Ok, shown),
        Ok(_) => Check::new(
            "data dir",
            Status::Fail,
            format!("{shown} is not a directory"),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Check::new(
            "data dir",
            Status::Ok,
            format!("{shown} does not exist yet (created at enrolment)"),
        ),
        Err(e) => Check::new("data dir", Status::Fail, format!("{shown}: {e}")),
    }
}

/// `path`, or its nearest ancestor that exists (the data dir may not exist yet).
fn existing_ancestor(path: &Path) -> PathBuf {
    let mut p = path;
    loop {
        if p.exists() {
            return p.to_path_buf();
        }
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent,
            _ => return PathBuf::from("."),
        }
    }
}

fn storage_check(dir: &DataDir, machine: &dyn Machine) -> Check {
    let at = existing_ancestor(dir.root());
    let space = match machine.disk_space(&at) {
        Ok(space) => space,
        Err(e) => {
            return Check::new(
                "storage",
                Status::Warn,
                format!("cannot read the free space of {}: {e}", at.display()),
            )
        }
    };
    let detail = format!(
        "{} free of {} on {}",
        gib(space.available),
        gib(space.total),
        at.display()
    );
    if space.available < FAIL_FREE_BYTES {
        Check::new(
            "storage",
            Status::Fail,
            format!(
                "{detail}: builds need room for sources, layers and images (at least {}, better {})",
                gib(FAIL_FREE_BYTES),
                gib(WARN_FREE_BYTES)
            ),
        )
    } else if space.available < WARN_FREE_BYTES {
        Check::new(
            "storage",
            Status::Warn,
            format!(
                "{detail}: large images may not fit (less than {})",
                gib(WARN_FREE_BYTES)
            ),
        )
    } else {
        Check::new("storage", Status::Ok, detail)
    }
}

fn gib(bytes: u64) -> String {
    // Display only: the precision lost in the conversion does not matter.
    #[allow(clippy::cast_precision_loss)]
    let g = bytes as f64 / f64::from(1u32 << 30);
    format!("{g:.1} GiB")
}

/// The enrolment row, and what later checks need from it.
#[derive(Debug, Clone)]
struct Enrolment {
    check: Check,
    /// The CA and identity of an enrolled agent.
    identity: Option<(String, AgentIdentity)>,
    /// The coordinator recorded at enrolment.
    recorded: Option<String>,
    /// Not enrolled: the token a first `run` would use.
    token: Option<JoinToken>,
}

fn enrolment(opts: &DoctorOptions) -> Enrolment {
    let dir = &opts.data_dir;
    let row = |status, detail: String| Check::new("enrolment", status, detail);
    if dir.is_joined() {
        let loaded = dir
            .load_enrollment()
            .map_err(|e| e.to_string())
            .and_then(|e| {
                let ca = dir.load_ca().map_err(|e| e.to_string())?;
                let identity = AgentIdentity::load(&dir.identity()).map_err(|e| e.to_string())?;
                Ok((e, ca, identity))
            });
        return match loaded {
            Ok((e, ca, identity)) => Enrolment {
                check: row(
                    Status::Ok,
                    format!(
                        "agent {} ({}) of cluster {:?}",
                        identity.info().agent_id,
                        e.name,
                        identity.info().cluster
                    ),
                ),
                identity: Some((ca, identity)),
                recorded: Some(e.coordinator),
                token: None,
            },
            Err(e) => Enrolment {
                check: row(Status::Fail, e),
                identity: None,
                recorded: None,
                token: None,
            },
        };
    }
    let failed = |e: String| Enrolment {
        check: row(Status::Fail, e),
        identity: None,
        recorded: None,
        token: None,
    };
    let token = match enrol::read_token(&opts.token) {
        Ok(Some(token)) => token,
        Ok(None) => {
            return failed(
                enrol::EnrolError::NoToken {
                    dir: dir.root().display().to_string(),
                }
                .to_string(),
            )
        }
        Err(e) => return failed(e.to_string()),
    };
    if opts.coordinators.is_empty() {
        return failed(enrol::EnrolError::NoCoordinator.to_string());
    }
    let from = match (&opts.token.env, &opts.token.file) {
        (Some(_), _) => "HELIX_JOIN_TOKEN".to_string(),
        (None, Some(path)) => format!("join-token-file {}", path.display()),
        (None, None) => "the token".to_string(),
    };
    Enrolment {
        check: row(
            Status::Ok,
            format!("not enrolled yet: the first `helix-agent run` enrols with {from}"),
        ),
        identity: None,
        recorded: None,
        token: Some(token),
    }
}

fn certificate_check(identity: Option<&AgentIdentity>, now: OffsetDateTime) -> Check {
    let Some(identity) = identity else {
        return Check::new("certificate", Status::Skip, "no certificate yet");
    };
    let not_after = identity.info().not_after;
    if identity.info().expired_at(now) {
        return Check::new(
            "certificate",
            Status::Fail,
            format!(
                "expired at {}: enrol this host again with a new join token",
                rfc3339(not_after)
            ),
        );
    }
    let left = Duration::try_from(not_after - now).unwrap_or(Duration::ZERO);
    let shown = format!(
        "valid until {} (in {})",
        rfc3339(not_after),
        humantime::format_duration(Duration::from_secs(left.as_secs() / 3600 * 3600))
    );
    if left < WARN_CERT_LEFT {
        Check::new(
            "certificate",
            Status::Warn,
            format!("{shown}: the agent renews it while connected; is it running and connected?"),
        )
    } else {
        Check::new("certificate", Status::Ok, shown)
    }
}

fn clock_check(state: ClockState) -> Check {
    match state {
        ClockState::Synchronized { max_error } => Check::new(
            "clock",
            Status::Ok,
            format!(
                "synchronized (kernel estimate of the maximum error: {} ms)",
                max_error.as_millis()
            ),
        ),
        ClockState::Unsynchronized => Check::new(
            "clock",
            Status::Warn,
            "the system clock is not synchronized: certificates and timestamps depend on it; enable NTP (systemd-timesyncd or chrony)",
        ),
        ClockState::Unknown(e) => Check::new(
            "clock",
            Status::Warn,
            format!("cannot read the clock's synchronization state: {e}"),
        ),
    }
}

/// One `coordinator` row per address `run` would dial: the configured ones (or the
/// recorded one) and, once enrolled, the ones learned from the cluster.
async fn coordinator_checks(
    opts: &DoctorOptions,
    enrolled: &Enrolment,
    machine: &dyn Machine,
) -> Vec<Check> {
    let row = |status, detail: String| Check::new("coordinator", status, detail);
    let configured = if opts.coordinators.is_empty() {
        enrolled.recorded.iter().cloned().collect()
    } else {
        opts.coordinators.clone()
    };
    if configured.is_empty() {
        return vec![row(
            Status::Fail,
            "no coordinator address: set coordinator = \"HOST:PORT\" in the configuration".into(),
        )];
    }
    // A damaged list is `run`'s to replace; doctor only reads what it can.
    let learned = match &enrolled.identity {
        Some(_) => opts.data_dir.load_coordinators().unwrap_or_default(),
        None => Vec::new(),
    };
    let addresses = coordinators::rotation(None, &configured, &learned);
    let mut rows = Vec::new();
    for addr in &addresses {
        let source = if configured.contains(addr) {
            ""
        } else {
            " (learned from the cluster)"
        };
        let (target, verified) = match (&enrolled.identity, &enrolled.token) {
            (Some((ca_pem, identity)), _) => (
                Reach::Agent {
                    coordinator: addr,
                    ca_pem,
                    identity,
                },
                "server certificate verified against the cluster CA",
            ),
            (None, Some(token)) => (
                Reach::Join {
                    coordinator: addr,
                    token,
                },
                "its certificate chain holds the CA the join token pins",
            ),
            (None, None) => {
                rows.push(row(
                    Status::Skip,
                    format!("{addr}: not checked without a certificate or a join token"),
                ));
                continue;
            }
        };
        rows.push(match machine.reach(target).await {
            Ok(took) => row(
                Status::Ok,
                format!(
                    "{addr}{source} reachable (handshake {} ms); {verified}",
                    took.as_millis()
                ),
            ),
            Err(e) => row(Status::Fail, format!("{e}{source}")),
        });
    }
    // The agent works while any coordinator answers (a standby sends it on to the
    // leader): the others are warnings then.
    if rows.iter().any(|r| r.status == Status::Ok) {
        for r in &mut rows {
            if r.status == Status::Fail {
                r.status = Status::Warn;
            }
        }
    }
    rows
}

/// This host.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealMachine;

impl Machine for RealMachine {
    fn builder_version(
        &self,
        kind: BuilderKind,
    ) -> BoxFuture<'_, Result<String, BuilderUnavailable>> {
        Box::pin(builder::check_installed(kind.name()))
    }

    fn disk_space(&self, path: &Path) -> std::io::Result<DiskSpace> {
        sys::disk_space(path)
    }

    fn clock(&self) -> ClockState {
        sys::clock_state()
    }

    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn reach<'a>(&'a self, target: Reach<'a>) -> BoxFuture<'a, Result<Duration, String>> {
        Box::pin(async move {
            match tokio::time::timeout(REACH_TIMEOUT, handshake(target)).await {
                Ok(result) => result,
                Err(_) => Err(format!(
                    "no handshake within {}s: is the coordinator running, and is UDP to its port open?",
                    REACH_TIMEOUT.as_secs()
                )),
            }
        })
    }
}

/// A QUIC + TLS handshake with the coordinator, closed at once with code NORMAL.
async fn handshake(target: Reach<'_>) -> Result<Duration, String> {
    let (addr, tls, pinned) = match target {
        Reach::Agent {
            coordinator,
            ca_pem,
            identity,
        } => (
            coordinator,
            tls::client_config(ca_pem, identity.cert_pem(), identity.key_pem())
                .map_err(|e| format!("cannot use the stored identity: {e}"))?,
            None,
        ),
        Reach::Join { coordinator, token } => {
            let (tls, pinned) = tls::join_client_config(&token.ca_hash)
                .map_err(|e| format!("cannot use the join token: {e}"))?;
            (coordinator, tls, Some(pinned))
        }
    };
    let quic = tls::quinn_client_config(tls, REACH_TIMEOUT, Duration::from_secs(1))
        .map_err(|e| e.to_string())?;
    let (sock, server_name) = connect::resolve(addr).await.map_err(|e| e.to_string())?;
    let endpoint = connect::client_endpoint(sock).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let connecting = endpoint
        .connect_with(quic, sock, &server_name)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let conn = match connecting.await {
        Ok(conn) => conn,
        Err(e) => {
            let reason = pinned
                .and_then(|p| p.rejection())
                .unwrap_or_else(|| connect::describe_close(&e));
            return Err(format!("cannot connect to {addr}: {reason}"));
        }
    };
    let took = started.elapsed();
    conn.close(close::NORMAL.into(), b"helix-agent doctor");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    Ok(took)
}

/// The two system calls the checks need.
mod sys {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;
    use std::time::Duration;

    use super::{ClockState, DiskSpace};

    // The statvfs fields are u32 on some 32-bit targets.
    #[allow(unsafe_code, clippy::useless_conversion)]
    pub(super) fn disk_space(path: &Path) -> std::io::Result<DiskSpace> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        // SAFETY: `c` is a valid NUL-terminated path and `stat` a writable statvfs
        // that the call fills; an all-zero statvfs is a valid value of that C struct.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statvfs(c.as_ptr(), &mut stat) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let block = u64::from(stat.f_frsize);
        Ok(DiskSpace {
            available: u64::from(stat.f_bavail).saturating_mul(block),
            total: u64::from(stat.f_blocks).saturating_mul(block),
        })
    }

    #[allow(unsafe_code)]
    pub(super) fn clock_state() -> ClockState {
        // SAFETY: an all-zero timex is a valid value of that C struct; with `modes`
        // 0 adjtimex(2) only reads the kernel's clock state into it.
        let mut tx: libc::timex = unsafe { std::mem::zeroed() };
        let state = unsafe { libc::adjtimex(&mut tx) };
        if state < 0 {
            return ClockState::Unknown(std::io::Error::last_os_error().to_string());
        }
        if state == libc::TIME_ERROR || tx.status & libc::STA_UNSYNC != 0 {
            return ClockState::Unsynchronized;
        }
        let micros = u64::try_from(tx.maxerror).unwrap_or(0);
        ClockState::Synchronized {
            max_error: Duration::from_micros(micros),
        }
    }
}

#[cfg(test)]
mod tests;
