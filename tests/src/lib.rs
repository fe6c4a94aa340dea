//! Support for Helix's end-to-end tests: start real `helix-coordinator` and
//! `helix-agent` processes on loopback with ephemeral ports, each in a temp dir of its
//! own, with logs captured to files that a failing test prints.
//!
//! Every process is a [`Proc`], killed (by its pid) when dropped, so a failing test
//! never leaves processes behind.

pub mod netns;
pub mod postgres;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace's target directory for this build profile, found from the running
/// executable's path: `target/<profile>/deps/<test>` for tests,
/// `target/<profile>/<bin>` for benchmark programs.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("executable dir");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("profile dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Path of a workspace binary, built once per test run so tests never use a stale one.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let profile = profile_dir();
        let release = profile.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "helix-coordinator",
            "-p",
            "helix-agent",
        ]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of the binaries failed");
    });
    profile_dir().join(name)
}

/// Poll `f` every 100 ms until it returns `Some`, or panic after `timeout` with `what`.
#[track_caller]
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The address in a coordinator's `helix-coordinator listening on ADDR` line.
///
/// Only complete lines count: the log is read while the process writes it, and a
/// line caught half-written once gave `127.0.0.` as the address.
pub fn listening_addr(log: &str) -> Option<String> {
    let complete = &log[..log.rfind('\n')? + 1];
    let line = complete
        .lines()
        .find(|l| l.contains("helix-coordinator listening on "))?;
    Some(line.rsplit(' ').next()?.to_string())
}

/// A child process whose stderr and stdout go to a log file.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Spawn `program args` with output appended to `log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        envs: &[(&str, &str)],
    ) -> Proc {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open log");
        let err = out.try_clone().expect("clone log handle");
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        // Never the host's /etc/helix/*.toml (the package test installs them for a
        // while): each test says its whole configuration. `--config` still wins.
        cmd.env("HELIX_CONFIG", "/dev/null");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        Proc {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Send a signal to the process by its pid.
    pub fn signal(&self, sig: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid fits i32");
        // SAFETY-free: libc::kill is a plain syscall wrapper; a stale pid is harmless
        // here because we still hold the un-reaped child, so the pid cannot be reused.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid, sig);
        }
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// Wait up to `timeout` for the process to exit; its exit code (or None).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.is_running() {
            self.kill9();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- log of {} ({}) -----\n{}",
                self.name,
                self.log.display(),
                self.output()
            );
        }
    }
}

/// The output of a finished command, with helpers for assertions.
#[derive(Debug)]
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    fn from(out: Output) -> Ran {
        Ran {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Panic with both streams unless it exited 0.
    #[track_caller]
    pub fn ok(self) -> Ran {
        assert_eq!(
            self.code,
            Some(0),
            "command failed:\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Panic unless it failed with `code` and stderr contains `needle`.
    #[track_caller]
    pub fn fails_with(self, code: i32, needle: &str) -> Ran {
        assert_eq!(
            self.code,
            Some(code),
            "unexpected exit code:\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        assert!(
            self.stderr.contains(needle),
            "stderr does not contain {needle:?}:\n{}",
            self.stderr
        );
        self
    }
}

/// Run a command to completion (bounded by `timeout`, killed after it).
pub fn run(program: &Path, args: &[String], envs: &[(&str, &str)], timeout: Duration) -> Ran {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
    let (status, stdout, stderr) = wait_output(child, timeout);
    let Some(status) = status else {
        panic!(
            "{} {args:?} did not finish within {timeout:?}\nstdout: {}\nstderr: {}",
            program.display(),
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        );
    };
    Ran::from(Output {
        status,
        stdout,
        stderr,
    })
}

/// Wait up to `timeout` for `child` (spawned with both output pipes), reading the
/// pipes meanwhile: a child writing more than a pipe holds (64 KiB) would otherwise
/// block until the timeout. Killed when the time is up (the status is then `None`).
pub fn wait_output(
    mut child: Child,
    timeout: Duration,
) -> (Option<std::process::ExitStatus>, Vec<u8>, Vec<u8>) {
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if start.elapsed() <= timeout => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    (
        status,
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    )
}

/// A coordinator: its data dir, and the running process when started.
#[derive(Debug)]
pub struct Coordinator {
    pub dir: PathBuf,
    pub addr: Option<String>,
    pub proc: Option<Proc>,
    /// The network namespace it runs in (None: the test's own, on loopback).
    pub ns: Option<String>,
    log: PathBuf,
    extra: Vec<String>,
}

/// `program args`, run inside `ns` when one is given.
pub fn in_ns(ns: &Option<String>, program: &Path, args: &[String]) -> (PathBuf, Vec<String>) {
    match ns {
        Some(ns) => netns::Lab::wrap(ns, program, args),
        None => (program.to_path_buf(), args.to_vec()),
    }
}

pub const CMD_TIMEOUT: Duration = Duration::from_secs(30);

/// For commands that wait on builds or agents (`build wait`, `--wait`, `agents
/// drain`, `--follow`): a rebuild after a fault takes tens of seconds on a loaded
/// machine, and the CLI itself waits without a limit.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(300);

/// How long an admin command may run: [`WAIT_TIMEOUT`] for those that wait.
fn admin_timeout(args: &[&str]) -> Duration {
    let waits = |a: &&str| matches!(*a, "wait" | "--wait" | "drain" | "--follow");
    if args.iter().any(waits) {
        WAIT_TIMEOUT
    } else {
        CMD_TIMEOUT
    }
}

impl Coordinator {
    /// `helix-coordinator init` into `root/name`.
    pub fn init(root: &Path, name: &str, cluster: &str) -> Coordinator {
        let dir = root.join(name);
        run(
            &bin("helix-coordinator"),
            &s(&["init", "--data-dir", path(&dir), "--cluster", cluster]),
            &[],
            CMD_TIMEOUT,
        )
        .ok();
        let log = root.join(format!("{name}.log"));
        Coordinator {
            dir,
            addr: None,
            proc: None,
            ns: None,
            log,
            extra: Vec::new(),
        }
    }

    /// Like [`Coordinator::init`], with more `init` flags (`--store`, `--ca-from`).
    pub fn init_with(root: &Path, name: &str, cluster: &str, extra: &[&str]) -> Coordinator {
        let dir = root.join(name);
        let mut args = s(&["init", "--data-dir", path(&dir), "--cluster", cluster]);
        args.extend(s(extra));
        run(&bin("helix-coordinator"), &args, &[], CMD_TIMEOUT).ok();
        let log = root.join(format!("{name}.log"));
        Coordinator {
            dir,
            addr: None,
            proc: None,
            ns: None,
            log,
            extra: Vec::new(),
        }
    }

    /// Like [`Coordinator::init`], for a coordinator that runs in namespace `ns`
    /// (listening on all its addresses).
    pub fn init_in(root: &Path, name: &str, cluster: &str, ns: &str, sans: &[&str]) -> Coordinator {
        let dir = root.join(name);
        let mut args = s(&["init", "--data-dir", path(&dir), "--cluster", cluster]);
        for san in sans {
            args.extend(s(&["--san", san]));
        }
        run(&bin("helix-coordinator"), &args, &[], CMD_TIMEOUT).ok();
        let log = root.join(format!("{name}.log"));
        Coordinator {
            dir,
            addr: None,
            proc: None,
            ns: Some(ns.to_string()),
            log,
            extra: Vec::new(),
        }
    }

    /// The address agents on a host whose hub address is `hub_ip` dial.
    pub fn addr_via(&self, hub_ip: &str) -> String {
        let port = self.addr().rsplit(':').next().expect("port");
        format!("{hub_ip}:{port}")
    }

    /// Start `serve` on an ephemeral loopback port (or the port it had, after a
    /// restart) with `extra` flags, and wait until it listens.
    pub fn start(&mut self, extra: &[&str]) {
        self.extra = s(extra);
        self.spawn();
    }

    fn spawn(&mut self) {
        let listen = match (&self.addr, &self.ns) {
            (Some(addr), None) => addr.clone(),
            (Some(addr), Some(_)) => format!("0.0.0.0:{}", addr.rsplit(':').next().expect("port")),
            (None, None) => "127.0.0.1:0".to_string(),
            (None, Some(_)) => "0.0.0.0:0".to_string(),
        };
        let mut args = s(&["serve", "--data-dir", path(&self.dir), "--listen", &listen]);
        if !self.extra.iter().any(|a| a == "--metrics-listen") {
            // Tests run many coordinators at once: never the fixed default port.
            args.extend(s(&["--metrics-listen", "127.0.0.1:0"]));
        }
        args.extend(self.extra.iter().cloned());
        let start_len = std::fs::metadata(&self.log)
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        let (program, args) = in_ns(&self.ns, &bin("helix-coordinator"), &args);
        let proc = Proc::spawn("coordinator", &program, &args, &self.log, &[]);
        let log = self.log.clone();
        let addr = wait_for(Duration::from_secs(60), "the coordinator to listen", || {
            let text = std::fs::read_to_string(&log).ok()?;
            let addr = listening_addr(text.get(start_len..)?)?;
            // Inside a namespace, admin commands reach it over that namespace's loopback.
            Some(addr.replace("0.0.0.0:", "127.0.0.1:"))
        });
        self.addr = Some(addr);
        self.proc = Some(proc);
    }

    /// The address of the metrics listener, from the log of the current process.
    pub fn metrics_addr(&self) -> String {
        let log = self.log();
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("metrics and health listening"))
            .expect("metrics listener in the log");
        let start = line.find("addr=").expect("addr field") + "addr=".len();
        line[start..]
            .split_whitespace()
            .next()
            .expect("address")
            .to_string()
    }

    /// `kill -9` the process.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// Start again on the same port, with the same flags.
    pub fn restart(&mut self) {
        self.spawn();
    }

    pub fn addr(&self) -> &str {
        self.addr.as_deref().expect("coordinator started")
    }

    pub fn admin_bundle(&self) -> PathBuf {
        self.dir.join("admin.pem")
    }

    /// Run an admin subcommand against this coordinator.
    pub fn admin(&self, args: &[&str]) -> Ran {
        let mut all = s(args);
        all.extend(s(&[
            "--coordinator",
            self.addr(),
            "--data-dir",
            path(&self.dir),
        ]));
        let (program, all) = in_ns(&self.ns, &bin("helix-coordinator"), &all);
        run(&program, &all, &[], admin_timeout(args))
    }

    /// A read-only admin command, tried up to three times: tests poll with these
    /// while the machine is loaded (or a coordinator restarts), and one slow
    /// handshake must not end a test that would have passed a second later.
    pub fn query(&self, args: &[&str]) -> Ran {
        let mut ran = self.admin(args);
        for _ in 1..3 {
            if ran.code == Some(0) {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
            ran = self.admin(args);
        }
        ran
    }

    /// `build submit --repo REPO --ref main` of `tag` (a full image reference) for
    /// `platforms`, with extra arguments; returns the build id (stdout).
    pub fn submit(&self, repo: &str, platforms: &str, tag: &str, extra: &[&str]) -> String {
        let mut args = vec![
            "build",
            "submit",
            "--repo",
            repo,
            "--ref",
            "main",
            "--platform",
            platforms,
            "--tag",
            tag,
        ];
        args.extend_from_slice(extra);
        self.admin(&args).ok().stdout.trim().to_string()
    }

    /// `build get --json`, parsed.
    pub fn build_get(&self, id: &str) -> serde_json::Value {
        let out = self.query(&["build", "get", id, "--json"]).ok();
        serde_json::from_str(&out.stdout).expect("build get --json")
    }

    /// A fresh join token.
    pub fn token(&self, extra: &[&str]) -> String {
        let mut args = vec!["token", "create"];
        args.extend_from_slice(extra);
        self.admin(&args).ok().stdout.trim().to_string()
    }

    /// `agents list --json`, parsed.
    pub fn agents(&self) -> Vec<serde_json::Value> {
        let out = self.query(&["agents", "list", "--json"]).ok();
        serde_json::from_str::<Vec<serde_json::Value>>(&out.stdout)
            .expect("agents list --json is a JSON array")
    }

    /// Poll `agents list` until agent `name`'s row satisfies `ready` (within
    /// `within`, else panic naming `what`); that row.
    #[track_caller]
    pub fn wait_agent(
        &self,
        name: &str,
        within: Duration,
        what: &str,
        ready: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_for(within, what, || {
            find_agent(&self.agents(), name)
                .filter(|a| ready(a))
                .cloned()
        })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// An agent: its data dir and the running process when started.
#[derive(Debug)]
pub struct Agent {
    pub dir: PathBuf,
    pub name: String,
    pub proc: Option<Proc>,
    /// The network namespace it runs in (None: the test's own).
    pub ns: Option<String>,
    log: PathBuf,
}

impl Agent {
    pub fn new(root: &Path, name: &str) -> Agent {
        Agent {
            dir: root.join(name),
            name: name.to_string(),
            proc: None,
            ns: None,
            log: root.join(format!("{name}.log")),
        }
    }

    /// `helix-agent join`; the result for the caller to check.
    pub fn join(&self, coordinator: &str, token: &str) -> Ran {
        let (program, args) = in_ns(
            &self.ns,
            &bin("helix-agent"),
            &s(&[
                "join",
                "--coordinator",
                coordinator,
                "--token",
                token,
                "--data-dir",
                path(&self.dir),
                "--name",
                &self.name,
            ]),
        );
        run(&program, &args, &[], CMD_TIMEOUT)
    }

    /// `helix-agent run` in the background with `extra` flags.
    pub fn start(&mut self, extra: &[&str]) {
        self.start_with_env(extra, &[]);
    }

    /// `helix-agent run` with extra flags and environment.
    pub fn start_with_env(&mut self, extra: &[&str], env: &[(&str, &str)]) {
        let mut args = s(&["run", "--data-dir", path(&self.dir)]);
        args.extend(s(extra));
        let (program, args) = in_ns(&self.ns, &bin("helix-agent"), &args);
        self.proc = Some(Proc::spawn(&self.name, &program, &args, &self.log, env));
    }

    pub fn proc(&mut self) -> &mut Proc {
        self.proc.as_mut().expect("agent started")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The agent's id, from its `agent.json`.
    pub fn id(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("agent.json")).expect("agent.json");
        let v: serde_json::Value = serde_json::from_str(&text).expect("agent.json is JSON");
        v["agent_id"].as_str().expect("agent_id").to_string()
    }
}

pub fn s(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

pub fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// The agent named `name` in an `agents list --json` result.
pub fn find_agent<'a>(
    agents: &'a [serde_json::Value],
    name: &str,
) -> Option<&'a serde_json::Value> {
    agents.iter().find(|a| a["name"] == name)
}

/// Fail with the install step when a system tool the tests need is missing: tests
/// never skip (`./tests/run.sh` installs these).
#[track_caller]
pub fn require_tool(tool: &str, package: &str) -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
    {
        let p = Path::new(dir).join(tool);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "{tool} is missing: install it with `apt-get install {package}` (./tests/run.sh does this)"
    );
}

/// A free TCP port on 127.0.0.1 (bound and released; the caller binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A local OCI registry (Debian's `docker-registry`) on loopback, storing under a
/// temp dir, killed by its pid when dropped.
#[derive(Debug)]
pub struct Registry {
    pub addr: String,
    pub proc: Proc,
    pub ns: Option<String>,
}

impl Registry {
    pub fn start(root: &Path) -> Registry {
        Registry::start_in(root, None, "127.0.0.1")
    }

    /// A registry in namespace `ns` (or the test's own), listening on `ip`. Inside a
    /// namespace only [`Registry::inspect_raw`] and friends work (they run skopeo
    /// there); the HTTP helpers need the test's own namespace.
    pub fn start_in(root: &Path, ns: Option<&str>, ip: &str) -> Registry {
        let bin = require_tool("docker-registry", "docker-registry");
        let dir = root.join("registry");
        std::fs::create_dir_all(&dir).expect("registry dir");
        let ns = ns.map(str::to_string);
        // A free port can be taken by another test before the registry binds it:
        // then the registry exits, and another port is tried.
        for _ in 0..5 {
            let port = free_port();
            let addr = format!("{ip}:{port}");
            let config = dir.join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                    dir.join("data").display()
                ),
            )
            .expect("registry config");
            let (program, args) = in_ns(&ns, &bin, &s(&["serve", path(&config)]));
            let proc = Proc::spawn("registry", &program, &args, &root.join("registry.log"), &[]);
            let mut reg = Registry {
                addr,
                proc,
                ns: ns.clone(),
            };
            let answered = wait_for(
                Duration::from_secs(30),
                "the registry to answer /v2/",
                || {
                    if reg.answers(ip, port) {
                        return Some(true);
                    }
                    (!reg.proc.is_running()).then_some(false)
                },
            );
            if answered {
                return reg;
            }
        }
        panic!("the registry did not start on any of 5 free ports; see registry.log");
    }

    /// Whether this registry (not another process on its port) answers `/v2/`.
    fn answers(&self, ip: &str, port: u16) -> bool {
        match &self.ns {
            // Its own access log proves the answer was its own.
            None => {
                self.get("/v2/").is_some_and(|(code, _)| code == 200)
                    && self.proc.output().contains("\"GET /v2/ ")
            }
            Some(_) => {
                let probe = format!(": </dev/tcp/{ip}/{port}");
                let (program, args) = in_ns(&self.ns, Path::new("/bin/bash"), &s(&["-c", &probe]));
                run(&program, &args, &[], CMD_TIMEOUT).code == Some(0)
            }
        }
    }

    /// A plain HTTP GET; (status, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        self.request("GET", path, &[])
    }

    /// A plain HTTP request with extra headers; (status, body).
    pub fn request(&self, method: &str, path: &str, headers: &[&str]) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&self.addr).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {}\r\n", self.addr);
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).ok()?;
        let mut resp = String::new();
        stream.read_to_string(&mut resp).ok()?;
        let code = resp.split_whitespace().nth(1)?.parse().ok()?;
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((code, body))
    }

    /// `skopeo inspect --raw` of `reference` (without the registry part).
    pub fn inspect_raw(&self, reference: &str) -> Ran {
        let skopeo = require_tool("skopeo", "skopeo");
        let (skopeo, args) = in_ns(
            &self.ns,
            &skopeo,
            &s(&[
                "inspect",
                "--raw",
                "--tls-verify=false",
                &format!("docker://{}/{reference}", self.addr),
            ]),
        );
        run(&skopeo, &args, &[], CMD_TIMEOUT)
    }

    /// `skopeo inspect --config` of `reference` (the image config JSON).
    pub fn inspect_config(&self, reference: &str) -> serde_json::Value {
        let skopeo = require_tool("skopeo", "skopeo");
        let out = run(
            &skopeo,
            &s(&[
                "inspect",
                "--config",
                "--tls-verify=false",
                &format!("docker://{}/{reference}", self.addr),
            ]),
            &[],
            CMD_TIMEOUT,
        )
        .ok();
        serde_json::from_str(&out.stdout).expect("config JSON")
    }
}

/// A static busybox (Debian's `busybox-static`), for RUN steps in `FROM scratch` images.
pub fn busybox() -> Vec<u8> {
    std::fs::read(require_tool("busybox", "busybox-static")).expect("read busybox")
}

/// A repo whose build prints `marker`, then sleeps `secs` in a RUN step. A
/// distinctive `secs` (say `"3.75"`) lets a test find the build's `sleep` process by
/// its command line.
pub fn sleepy_repo(dir: &Path, marker: &str, secs: &str) -> String {
    let dockerfile = format!(
        "FROM scratch\nCOPY bin/busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo {marker}; /bin/busybox sleep {secs}; echo done > /done\"]\n"
    );
    git_repo(
        dir,
        &[
            ("Dockerfile", dockerfile.as_bytes()),
            ("bin/busybox", &busybox()),
        ],
    )
}

/// A git repository under `dir` with `files` committed on branch `main`; its
/// `file://` URL.
pub fn git_repo(dir: &Path, files: &[(&str, &[u8])]) -> String {
    let git = require_tool("git", "git");
    std::fs::create_dir_all(dir).expect("repo dir");
    let g = |args: &[&str]| {
        run(&git, &s(args), &[], CMD_TIMEOUT).ok();
    };
    let d = path(dir);
    g(&["-C", d, "init", "-q", "-b", "main"]);
    for (name, content) in files {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, content).expect("write repo file");
        if name.starts_with("bin/") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
    }
    g(&["-C", d, "add", "-A"]);
    g(&[
        "-C",
        d,
        "-c",
        "user.name=helix",
        "-c",
        "user.email=helix@test",
        "commit",
        "-q",
        "-m",
        "test",
    ]);
    format!("file://{d}")
}

/// A whole cluster for build tests: a registry, a coordinator that accepts `file://`
/// repositories and reaches the registry over plain HTTP, and running agents.
#[derive(Debug)]
pub struct BuildCluster {
    pub registry: Registry,
    pub coordinator: Coordinator,
    pub agents: Vec<Agent>,
}

impl BuildCluster {
    /// Start with one agent per `(name, platforms)`; `platforms` is passed as
    /// `--platform` flags (an "arm64 agent" on this amd64 machine advertises
    /// linux/arm64 and builds Dockerfiles without RUN steps).
    pub fn start(root: &Path, agents: &[(&str, &[&str])]) -> BuildCluster {
        Self::start_with(root, agents, &[])
    }

    /// Like [`BuildCluster::start`], with extra environment for the agents (e.g. a
    /// PATH with a misbehaving builder in front).
    pub fn start_with(
        root: &Path,
        agents: &[(&str, &[&str])],
        agent_env: &[(&str, &str)],
    ) -> BuildCluster {
        Self::start_opts(root, agents, agent_env, &[], &[])
    }

    /// Full control: extra `serve` flags for the coordinator and `run` flags for
    /// every agent.
    pub fn start_opts(
        root: &Path,
        agents: &[(&str, &[&str])],
        agent_env: &[(&str, &str)],
        serve_flags: &[&str],
        agent_flags: &[&str],
    ) -> BuildCluster {
        require_tool("buildah", "buildah");
        let registry = Registry::start(root);
        let mut coordinator = Coordinator::init(root, "coord", "test");
        let mut serve = vec![
            "--allow-file-repos",
            "--insecure-registry",
            registry.addr.as_str(),
        ];
        serve.extend_from_slice(serve_flags);
        coordinator.start(&serve);
        let mut started = Vec::new();
        for (name, platforms) in agents {
            let mut agent = Agent::new(root, name);
            agent.join(coordinator.addr(), &coordinator.token(&[])).ok();
            let mut flags = vec!["--insecure-registry", registry.addr.as_str()];
            flags.extend_from_slice(agent_flags);
            for p in platforms.iter() {
                flags.push("--platform");
                flags.push(p);
            }
            agent.start_with_env(&flags, agent_env);
            started.push(agent);
        }
        for agent in &started {
            coordinator.wait_agent(
                &agent.name,
                Duration::from_secs(60),
                "agents to connect",
                |a| a["connected"] == true,
            );
        }
        BuildCluster {
            registry,
            coordinator,
            agents: started,
        }
    }

    /// `build submit` with these extra arguments; returns the build id (stdout).
    pub fn submit(&self, repo: &str, platforms: &str, tag: &str, extra: &[&str]) -> String {
        self.coordinator.submit(repo, platforms, tag, extra)
    }

    /// `build get --json`, parsed.
    pub fn get(&self, id: &str) -> serde_json::Value {
        self.coordinator.build_get(id)
    }

    /// `build wait`: the exit code and the build as JSON.
    pub fn wait(&self, id: &str) -> (Option<i32>, serde_json::Value) {
        let out = self.coordinator.admin(&["build", "wait", id, "--json"]);
        let v = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|_| panic!("build wait --json: {out:?}"));
        (out.code, v)
    }

    /// The full image reference of `repo_tag` in this cluster's registry.
    pub fn image(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.registry.addr)
    }
}

/// The digest each job of a `build get --json` result reports, by platform.
pub fn job_digests(build: &serde_json::Value) -> Vec<(String, String)> {
    build["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| {
            let digest = j["state"]["Succeeded"]["result"]["digest"].as_str()?;
            Some((j["platform"].as_str()?.to_string(), digest.to_string()))
        })
        .collect()
}

/// Pids of processes whose command line contains `needle` (read from /proc).
pub fn pids_with_cmdline(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmd.contains(needle) {
            out.push(pid);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::listening_addr;

    #[test]
    fn a_half_written_listening_line_gives_no_address() {
        let start = "INFO metrics listening\nhelix-coordinator listening on 127.0.0.";
        assert_eq!(listening_addr(start), None);
        let whole = format!("{start}1:7443\n");
        assert_eq!(listening_addr(&whole).as_deref(), Some("127.0.0.1:7443"));
    }
}
