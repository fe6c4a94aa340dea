//! A throwaway PostgreSQL server for tests: [`Postgres`].
//!
//! [`Postgres::start`] runs Debian's server binaries (package `postgresql`) from
//! `/usr/lib/postgresql/<version>/bin`: `initdb` into a temp dir of its own, then
//! `pg_ctl start` on a free loopback port, as the `postgres` user (through `runuser`
//! when the test runs as root, since PostgreSQL refuses to run as root). It never uses
//! or disturbs a cluster the package may have created (`pg_lsclusters`).
//!
//! Access is set up like a real deployment: a role `helix` with a password owns the
//! database `helix` and connects over TCP with SCRAM ([`Postgres::url`]); the
//! superuser `postgres` is trusted only over the server's private unix socket, which
//! [`Postgres::psql`] uses to set up and inspect the database.
//!
//! Dropping a [`Postgres`] stops the server (`pg_ctl stop -m immediate`, then SIGKILL
//! by the pid in `postmaster.pid` if that failed) and removes its dir. A test that
//! panics gets the tail of the server log printed.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The role the coordinator connects as.
pub const USER: &str = "helix";
/// Its password (SCRAM over TCP).
pub const PASSWORD: &str = "helix-test-pw";
/// The database it owns.
pub const DATABASE: &str = "helix";

/// The superuser, trusted over the unix socket only.
const SUPERUSER: &str = "postgres";
/// The OS user the server runs as when the test runs as root.
const OS_USER: &str = "postgres";
/// The Debian package with the server binaries.
const PACKAGE: &str = "postgresql";
/// Upper bound for `initdb`, `pg_ctl start|stop` and `psql`; a loaded 2-core CI
/// machine running many tests in parallel can be slow, but never this slow.
const CMD_TIMEOUT: Duration = Duration::from_secs(90);
/// How many free ports to try when another process grabs the one picked between our
/// probe and the server's bind.
const PORT_ATTEMPTS: usize = 5;
/// Lines of the server log shown in errors and on panic.
const LOG_TAIL_LINES: usize = 40;
/// Variables libpq and the server tools read that must not leak in from the
/// environment the tests run in.
const PG_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGDATABASE",
    "PGUSER",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGSSLMODE",
    "PGDATA",
    "PGCLUSTER",
    "PGCTLTIMEOUT",
];

/// A PostgreSQL server of the test's own; stopped and deleted when dropped.
#[derive(Debug)]
pub struct Postgres {
    bin: PathBuf,
    /// Run the server tools through `runuser -u postgres` (we are root).
    as_root: bool,
    port: u16,
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    // Last field: dropped (the dir removed) after `Drop::drop` stopped the server.
    dir: tempfile::TempDir,
}

impl Postgres {
    /// Create, start and set up a server: database `helix` owned by role `helix`
    /// (password [`PASSWORD`]) reachable at [`Postgres::url`].
    pub fn start() -> anyhow::Result<Postgres> {
        let bin = server_bin_dir()?;
        let as_root = effective_uid() == 0;
        let dir = tempfile::Builder::new()
            .prefix("helix-pg-")
            .tempdir()
            .context("create a temp dir for PostgreSQL")?;
        let socket_dir = dir.path().join("run");
        std::fs::create_dir(&socket_dir).context("create the socket dir")?;
        if as_root {
            let (uid, gid) = os_user_ids(OS_USER)?;
            for p in [dir.path(), &socket_dir] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid))
                    .with_context(|| format!("chown {} to {OS_USER}", p.display()))?;
            }
        }
        let mut pg = Postgres {
            bin,
            as_root,
            port: 0,
            data: dir.path().join("data"),
            socket_dir,
            log: dir.path().join("postgres.log"),
            dir,
        };
        pg.initdb()?;
        pg.start_on_free_port()?;
        pg.create_role_and_database()?;
        Ok(pg)
    }

    /// `postgres://helix:helix-test-pw@127.0.0.1:PORT/helix`
    pub fn url(&self) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{DATABASE}",
            self.port
        )
    }

    /// `postgres://helix@127.0.0.1:PORT/helix`, for a password given some other way
    /// (`PGPASSWORD`, a password file).
    pub fn url_without_password(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's data directory (`PGDATA`).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The temp dir holding the data dir, the socket dir and the log.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The server log (appended to by every start).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The server binaries' dir, `/usr/lib/postgresql/<version>/bin`.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// Run `sql` as the superuser in database `helix` and return the tuples-only,
    /// unaligned output (`psql -At`: one row a line, columns split by `|`), trimmed.
    pub fn psql(&self, sql: &str) -> anyhow::Result<String> {
        self.psql_db(DATABASE, sql)
    }

    /// Like [`Postgres::psql`], in database `db`.
    pub fn psql_db(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        let mut cmd = self.psql_command_base();
        cmd.args([
            "-h",
            path_str(&self.socket_dir)?,
            "-p",
            &self.port.to_string(),
        ])
        .args(["-U", SUPERUSER, "-d", db, "-c", sql]);
        finished(&format!("psql -c {sql:?}"), run(cmd, CMD_TIMEOUT)?)
    }

    /// Run `sql` over TCP with the connection URL `url` (e.g. [`Postgres::url`], or
    /// one with a wrong password): output as for [`Postgres::psql`]; an error with
    /// psql's stderr if it failed, e.g. when authentication was refused.
    pub fn psql_url(&self, url: &str, sql: &str) -> anyhow::Result<String> {
        let mut cmd = self.psql_command(url);
        cmd.args(["-c", sql]);
        finished(&format!("psql {url} -c {sql:?}"), run(cmd, CMD_TIMEOUT)?)
    }

    /// A `psql -X -At -v ON_ERROR_STOP=1 -w URL` command with no `PG*` variables
    /// from the environment, for a test to add `-c`, `-f` or `PGPASSWORD` to.
    pub fn psql_command(&self, url: &str) -> Command {
        let mut cmd = self.psql_command_base();
        // -w: never prompt for a password; fail instead.
        cmd.args(["-w", "-d", url]);
        cmd
    }

    /// The psql binary of the server's version.
    pub fn psql_path(&self) -> PathBuf {
        let versioned = self.bin.join("psql");
        if versioned.is_file() {
            versioned
        } else {
            PathBuf::from("/usr/bin/psql")
        }
    }

    /// Stop the server (`pg_ctl stop -m fast`: roll back open transactions, checkpoint).
    pub fn stop(&self) -> anyhow::Result<()> {
        self.pg_ctl_stop("fast")
    }

    /// Start the stopped (or killed) server again on the same port and wait until it
    /// accepts connections; after [`Postgres::kill9`] this includes crash recovery.
    pub fn start_again(&self) -> anyhow::Result<()> {
        self.pg_ctl_start()?;
        self.wait_accepting()
    }

    /// [`Postgres::stop`], then [`Postgres::start_again`].
    pub fn restart(&self) -> anyhow::Result<()> {
        self.stop()?;
        self.start_again()
    }

    /// Serve TLS with this certificate and key, and refuse every TCP connection that
    /// does not use it (`hostnossl ... reject`), then restart: a client that gets in
    /// has spoken TLS.
    pub fn require_tls(&self, cert_pem: &str, key_pem: &str) -> anyhow::Result<()> {
        let cert = self.data.join("server.crt");
        let key = self.data.join("server.key");
        std::fs::write(&cert, cert_pem).context("write server.crt")?;
        std::fs::write(&key, key_pem).context("write server.key")?;
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .context("chmod server.key")?;
        if self.as_root {
            let (uid, gid) = os_user_ids(OS_USER)?;
            for p in [&cert, &key] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid))
                    .with_context(|| format!("chown {}", p.display()))?;
            }
        }
        let conf = self.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).context("read postgresql.conf")?;
        text.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(&conf, text).context("write postgresql.conf")?;
        std::fs::write(
            self.data.join("pg_hba.conf"),
            "# Written by helix_tests::postgres (TLS required).\n\
             local      all  postgres                trust\n\
             hostssl    all  all       127.0.0.1/32  scram-sha-256\n\
             hostnossl  all  all       127.0.0.1/32  reject\n",
        )
        .context("write pg_hba.conf")?;
        self.restart()
    }

    /// The postmaster's pid, from `postmaster.pid` (None when it is not there).
    pub fn pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Crash the server: SIGKILL the postmaster (by the pid in `postmaster.pid`) and
    /// wait until its other processes have gone too. Committed
    /// transactions must survive [`Postgres::start_again`].
    pub fn kill9(&self) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .context("kill9: no postmaster.pid: is the server running?")?;
        signal(pid, libc::SIGKILL);
        // The backends notice the postmaster's death and exit. Every one of them
        // runs in the data dir, which finds them without matching names (a zombie
        // has no cwd and counts as gone).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = processes_in(&self.data);
            if left.is_empty() && !is_alive(pid) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "kill9: processes of the killed server still run after 30 s: {left:?}\n{}",
                    self.log_tail_since(0)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The postmaster is not our child: PID 1 reaps it, here a second or two late
        // (it is no real init). While its zombie holds the pid, the next postmaster
        // would take the lock files for a live server's: remove them, as a host's
        // reboot would (nothing of the server runs any more; its old shared memory is
        // found from the data dir). Once reaped, leave them: the next postmaster finds
        // them stale and cleans up, as after a real crash.
        if pid_exists(pid) {
            let lock_files = [
                self.data.join("postmaster.pid"),
                self.socket_dir.join(format!(".s.PGSQL.{}.lock", self.port)),
            ];
            for file in lock_files {
                match std::fs::remove_file(&file) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).with_context(|| format!("remove {}", file.display())),
                }
            }
        }
        Ok(())
    }

    fn initdb(&self) -> anyhow::Result<()> {
        let mut cmd = self.as_os_user(&self.bin.join("initdb"));
        cmd.args(["-D", path_str(&self.data)?])
            .args(["--auth=trust", "-U", SUPERUSER, "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "--no-instructions"]);
        finished("initdb", run(cmd, CMD_TIMEOUT)?).with_context(|| {
            format!(
                "initdb into {} as {OS_USER} failed (that user must be able to reach the \
                 temp dir: TMPDIR must be world-searchable, e.g. /tmp)",
                self.data.display()
            )
        })?;
        // Like a deployment: passwords (SCRAM) over TCP for everyone; the superuser
        // only over the unix socket in our private dir, without a password.
        std::fs::write(
            self.data.join("pg_hba.conf"),
            "# Written by helix_tests::postgres.\n\
             # TYPE  DATABASE  USER      ADDRESS       METHOD\n\
             local   all       postgres                trust\n\
             host    all       all       127.0.0.1/32  scram-sha-256\n",
        )
        .context("write pg_hba.conf")?;
        Ok(())
    }

    /// Pick a free port and start there; another try with another port if something
    /// else bound it first.
    fn start_on_free_port(&mut self) -> anyhow::Result<()> {
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            self.port = crate::free_port();
            let before = log_len(&self.log);
            match self.pg_ctl_start() {
                Ok(()) => return self.wait_accepting(),
                Err(e) => {
                    let new_log = self.log_tail_since(before);
                    if !new_log.contains("could not bind") && !new_log.contains("already in use") {
                        return Err(e);
                    }
                    last = Some(e);
                }
            }
        }
        Err(last
            .expect("at least one attempt")
            .context(format!("no free port after {PORT_ATTEMPTS} attempts")))
    }

    fn pg_ctl_start(&self) -> anyhow::Result<()> {
        let before = log_len(&self.log);
        let socket_dir = path_str(&self.socket_dir)?;
        if socket_dir.contains(['\'', '"', '\\']) {
            bail!("PostgreSQL's socket dir path has quotes: {socket_dir}");
        }
        // pg_ctl hands -o to `sh -c`: quote the path.
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k '{socket_dir}' -c fsync=on",
            self.port
        );
        let mut cmd = self.as_os_user(&self.bin.join("pg_ctl"));
        cmd.args(["-D", path_str(&self.data)?, "-l", path_str(&self.log)?])
            .args(["-o", &opts, "-w", "-t", "60", "start"]);
        let out = run(cmd, CMD_TIMEOUT)?;
        if !out.status.success() {
            bail!(
                "pg_ctl start on 127.0.0.1:{} failed ({}):\n{}{}\n--- server log ({}) ---\n{}",
                self.port,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log.display(),
                self.log_tail_since(before)
            );
        }
        Ok(())
    }

    fn pg_ctl_stop(&self, mode: &str) -> anyhow::Result<()> {
        let mut cmd = self.as_os_user(&self.bin.join("pg_ctl"));
        cmd.args(["-D", path_str(&self.data)?, "-m", mode])
            .args(["-w", "-t", "60", "stop"]);
        finished(&format!("pg_ctl stop -m {mode}"), run(cmd, CMD_TIMEOUT)?)
            .with_context(|| format!("server log: {}", self.log.display()))?;
        Ok(())
    }

    /// `pg_ctl -w` waits for the server to be ready; check that a query goes through
    /// too (the socket, our pg_hba.conf), a few times in case it is still settling.
    fn wait_accepting(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.psql_db("postgres", "SELECT 1") {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!(
                        "the server does not accept connections\n--- server log ---\n{}",
                        self.log_tail_since(0)
                    )))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn create_role_and_database(&self) -> anyhow::Result<()> {
        // One statement per call: CREATE DATABASE refuses to run in the implicit
        // transaction of a multi-statement -c.
        self.psql_db(
            "postgres",
            &format!("CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'"),
        )?;
        self.psql_db(
            "postgres",
            &format!("CREATE DATABASE {DATABASE} OWNER {USER}"),
        )?;
        Ok(())
    }

    fn psql_command_base(&self) -> Command {
        let mut cmd = Command::new(self.psql_path());
        // -X: no ~/.psqlrc; -At: tuples only, unaligned; stop at the first error.
        cmd.args(["-X", "-At", "-v", "ON_ERROR_STOP=1"]);
        clean_env(&mut cmd);
        cmd.current_dir(self.dir.path());
        cmd
    }

    /// `program` run as the `postgres` OS user (via `runuser` when we are root).
    fn as_os_user(&self, program: &Path) -> Command {
        let mut cmd = if self.as_root {
            let mut c = Command::new(runuser());
            c.args(["-u", OS_USER, "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        clean_env(&mut cmd);
        // The server tools complain when they cannot return to the cwd.
        cmd.current_dir(self.dir.path());
        cmd
    }

    /// The server log written since byte `from`, its last lines.
    fn log_tail_since(&self, from: usize) -> String {
        let log = self.log();
        let new = log.get(from..).unwrap_or(&log);
        let lines: Vec<&str> = new.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- tail of the PostgreSQL log ({}) -----\n{}",
                self.log.display(),
                self.log_tail_since(0)
            );
        }
        if self.pid().is_none() {
            return; // stopped, or never started
        }
        if self.pg_ctl_stop("immediate").is_err() {
            if let Some(pid) = self.pid().filter(|p| is_alive(*p)) {
                signal(pid, libc::SIGKILL);
            }
        }
    }
}

/// `/usr/lib/postgresql/<highest version>/bin`, or an error saying what to install.
fn server_bin_dir() -> anyhow::Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let mut best: Option<(Vec<u32>, PathBuf)> = None;
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(version) = name.to_str().and_then(parse_version) else {
            continue;
        };
        let bin = entry.path().join("bin");
        let complete = ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| bin.join(b).is_file());
        if complete && best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, bin));
        }
    }
    match best {
        Some((_, bin)) => Ok(bin),
        None => bail!(
            "PostgreSQL's server binaries (initdb, pg_ctl, postgres) are missing from \
             {}/<version>/bin: install them with `apt-get install {PACKAGE}` \
             (./tests/run.sh does this)",
            root.display()
        ),
    }
}

/// "15" → [15], "9.6" → [9, 6]; None for anything else.
fn parse_version(s: &str) -> Option<Vec<u32>> {
    s.split('.').map(|p| p.parse().ok()).collect()
}

fn runuser() -> PathBuf {
    ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("runuser"))
}

/// uid and gid of `user`, from /etc/passwd (the `postgresql` package creates it).
fn os_user_ids(user: &str) -> anyhow::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("read /etc/passwd")?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 4 && fields[0] == user {
            let uid = fields[2].parse().context("uid in /etc/passwd")?;
            let gid = fields[3].parse().context("gid in /etc/passwd")?;
            return Ok((uid, gid));
        }
    }
    bail!(
        "there is no `{user}` user to run PostgreSQL as (it refuses to run as root): \
         install `{PACKAGE}` (apt-get install {PACKAGE}), which creates it"
    )
}

fn effective_uid() -> u32 {
    #[allow(unsafe_code)]
    // SAFETY: geteuid(2) takes no arguments and cannot fail.
    unsafe {
        libc::geteuid()
    }
}

fn signal(pid: i32, sig: i32) {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) with a pid just read from postmaster.pid; no memory is involved.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Whether `pid` exists and is not a zombie.
fn is_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// Whether `pid` exists at all, zombie or not.
fn pid_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Pids of live processes whose cwd is `dir` (PostgreSQL's run in the data dir).
fn processes_in(dir: &Path) -> Vec<i32> {
    let Ok(want) = std::fs::metadata(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(cwd) = std::fs::metadata(entry.path().join("cwd")) else {
            continue;
        };
        if cwd.dev() == want.dev() && cwd.ino() == want.ino() && is_alive(pid) {
            out.push(pid);
        }
    }
    out
}

fn clean_env(cmd: &mut Command) {
    for var in PG_ENV {
        cmd.env_remove(var);
    }
    // Server messages in English, for tests that match them.
    cmd.env("LC_ALL", "C");
}

fn log_len(log: &Path) -> usize {
    std::fs::metadata(log).map_or(0, |m| m.len() as usize)
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("path is not UTF-8: {}", p.display()))
}

/// Stdout of a command that must have succeeded (trimmed), or an error with both
/// streams.
fn finished(what: &str, out: Output) -> anyhow::Result<String> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(stdout.trim().to_string())
}

/// Run `cmd` to completion, reading its output as it goes; killed after `timeout`.
fn run(mut cmd: Command, timeout: Duration) -> anyhow::Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let program = cmd.get_program().to_string_lossy().into_owned();
    let child = cmd
        .spawn()
        .with_context(|| format!("run {program} (see the `{PACKAGE}` package)"))?;
    let (status, stdout, stderr) = crate::wait_output(child, timeout);
    let Some(status) = status else {
        bail!(
            "{program} {:?} did not finish within {timeout:?}",
            cmd.get_args()
        );
    };
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn versions() {
        assert_eq!(parse_version("15"), Some(vec![15]));
        assert_eq!(parse_version("9.6"), Some(vec![9, 6]));
        assert_eq!(parse_version("common"), None);
        assert!(parse_version("16") > parse_version("9.6"));
    }
}
