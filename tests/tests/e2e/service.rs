//! Helix as system services (deploy/): the systemd units checked with
//! `systemd-analyze`, the notify protocol spoken to a socket of our own (these
//! machines do not run systemd as PID 1), the example configs, and the Debian
//! packages built by `deploy/package.sh`, inspected, installed, upgraded in place,
//! removed and purged on this machine.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use helix_tests::{bin, path, require_tool, run, s, wait_for, Coordinator, Proc, Ran};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// The workspace root (this crate is `tests/`).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn deploy(rel: &str) -> PathBuf {
    workspace().join("deploy").join(rel)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn write(p: &Path, text: &str) {
    std::fs::write(p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

const LONG: Duration = Duration::from_secs(120);

/// Every `Key=value` of a unit file (keys may repeat), without comments.
fn unit_settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter(|l| !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The one value of `key` in a unit file.
#[track_caller]
fn unit_value(text: &str, key: &str) -> String {
    let values: Vec<String> = unit_settings(text)
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        values.len(),
        1,
        "{key}= must be set exactly once: {values:?}"
    );
    values.into_iter().next().expect("one value")
}

/// `systemd-analyze timespan SPAN` in microseconds (systemd's own reading of a span).
fn timespan_us(span: &str) -> u64 {
    let tool = require_tool("systemd-analyze", "systemd");
    let out = run(&tool, &s(&["timespan", span]), &[], LONG).ok();
    out.stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("μs:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no μs line in `systemd-analyze timespan {span}`: {out:?}"))
}

/// The unit's `ExecStart=` split into words, checked to start with `program` and to
/// pass `--config config`.
fn exec_start(unit: &str, program: &str, config: &str) -> Vec<String> {
    let words: Vec<String> = unit_value(unit, "ExecStart")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(
        words.first().map(String::as_str),
        Some(program),
        "{words:?}"
    );
    let at = words
        .iter()
        .position(|w| w == "--config")
        .expect("ExecStart passes --config");
    assert_eq!(
        words.get(at + 1).map(String::as_str),
        Some(config),
        "{words:?}"
    );
    words
}

/// `argv` (from a unit's ExecStart) with only the program and the `--config` file
/// replaced.
fn as_tested(argv: &[String], program: &Path, config: &Path) -> (PathBuf, Vec<String>) {
    let mut args: Vec<String> = argv[1..].to_vec();
    let at = args.iter().position(|w| w == "--config").expect("--config");
    args[at + 1] = path(config).to_string();
    (program.to_path_buf(), args)
}

/// `text` (a TOML config) with `key = value` set for each pair: an active line of
/// the key is replaced; a key that is only commented out is appended at the end.
fn set_keys(text: &str, pairs: &[(&str, &str)]) -> String {
    let mut out: Vec<String> = text.lines().map(str::to_string).collect();
    for (key, value) in pairs {
        let active = |l: &String| {
            l.split_once('=')
                .is_some_and(|(k, _)| k.trim() == *key && !l.trim_start().starts_with('#'))
        };
        match out.iter().filter(|l| active(l)).count() {
            0 => out.push(format!("{key} = {value}")),
            1 => {
                let line = out.iter_mut().find(|l| active(l)).expect("the line");
                *line = format!("{key} = {value}");
            }
            n => panic!("{key} is set {n} times"),
        }
    }
    out.join("\n") + "\n"
}

fn toml_str(s: &str) -> String {
    format!("{s:?}")
}

// ---------------------------------------------------------------------------------
// Units
// ---------------------------------------------------------------------------------

/// The units in deploy/systemd, with `ExecStart=`'s program pointed at the built
/// binary (`systemd-analyze verify` checks that it exists and is executable;
/// nothing else changes), written to `dir`.
fn units_for_verify(dir: &Path) -> Vec<PathBuf> {
    let mut units = Vec::new();
    for entry in std::fs::read_dir(deploy("systemd")).expect("deploy/systemd") {
        let p = entry.expect("entry").path();
        if p.extension().is_none_or(|x| x != "service") {
            continue;
        }
        let mut text = read(&p);
        for name in ["helix-coordinator", "helix-agent"] {
            text = text.replace(
                &format!("ExecStart=/usr/bin/{name} "),
                &format!("ExecStart={} ", path(&bin(name))),
            );
        }
        let out = dir.join(p.file_name().expect("name"));
        write(&out, &text);
        units.push(out);
    }
    units.sort();
    units
}

#[test]
fn every_unit_passes_systemd_analyze_verify_without_a_warning() {
    let tool = require_tool("systemd-analyze", "systemd");
    let root = tmp();
    let units = units_for_verify(root.path());
    let names: Vec<String> = units
        .iter()
        .map(|u| u.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["helix-agent.service", "helix-coordinator.service"]);
    for unit in &units {
        let out = run(&tool, &s(&["verify", path(unit)]), &[], LONG);
        assert_eq!(
            (out.code, out.stdout.trim(), out.stderr.trim()),
            (Some(0), "", ""),
            "systemd-analyze verify {}",
            unit.display()
        );
    }

    // `verify` exits 0 even for an unknown key; only its output tells. Make sure it
    // does speak up here, so the silence above means something.
    let broken = root.path().join("broken.service");
    write(
        &broken,
        &read(&units[1]).replace("ProtectHome=yes", "ProtectHomme=yes"),
    );
    let out = run(&tool, &s(&["verify", path(&broken)]), &[], LONG);
    assert!(
        out.stderr.contains("Unknown key 'ProtectHomme'"),
        "a misspelt key goes unnoticed: {out:?}"
    );
}

#[test]
fn the_coordinator_unit_is_hardened_and_runs_as_helix() {
    let tool = require_tool("systemd-analyze", "systemd");
    let unit = read(&deploy("systemd/helix-coordinator.service"));
    exec_start(
        &unit,
        "/usr/bin/helix-coordinator",
        "/etc/helix/coordinator.toml",
    );
    let expect = [
        ("Type", "notify"),
        ("User", "helix"),
        ("StateDirectory", "helix-coordinator"),
        ("StateDirectoryMode", "0700"),
        ("Restart", "on-failure"),
        ("LimitNOFILE", "65536"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("CapabilityBoundingSet", ""),
        ("ProtectKernelTunables", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
    ];
    for (key, value) in expect {
        assert_eq!(unit_value(&unit, key), value, "{key}=");
    }
    // The data dir the unit makes is the one the example config names.
    let config = read(&deploy("config/coordinator.toml"));
    assert!(
        config
            .lines()
            .any(|l| l == "data-dir = \"/var/lib/helix-coordinator\""),
        "coordinator.toml sets data-dir to the StateDirectory"
    );

    // systemd's own exposure score, offline.
    let root = tmp();
    let units = units_for_verify(root.path());
    let coordinator = units
        .iter()
        .find(|u| u.ends_with("helix-coordinator.service"))
        .expect("coordinator unit");
    let out = run(
        &tool,
        &s(&["security", "--offline=yes", "--no-pager", path(coordinator)]),
        &[],
        LONG,
    );
    let score: f64 = out
        .stdout
        .lines()
        .find_map(|l| l.split("helix-coordinator.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level: {out:?}"));
    eprintln!("systemd-analyze security: helix-coordinator.service exposure {score}");
    assert!(
        score <= 2.0,
        "exposure {score} (OK is below 2.0): {}",
        out.stdout
    );
}

#[test]
fn the_agent_unit_drains_on_sigterm_restarts_always_and_explains_each_relaxation() {
    let unit = read(&deploy("systemd/helix-agent.service"));
    exec_start(&unit, "/usr/bin/helix-agent", "/etc/helix/agent.toml");
    let expect = [
        ("Type", "notify"),
        ("User", "root"),
        ("After", "network-online.target"),
        ("Wants", "network-online.target"),
        ("Restart", "always"),
        ("KillMode", "mixed"),
        ("KillSignal", "SIGTERM"),
        ("StateDirectory", "helix-agent"),
        ("StateDirectoryMode", "0700"),
    ];
    for (key, value) in expect {
        assert_eq!(unit_value(&unit, key), value, "{key}=");
    }
    // TimeoutStopSec is just above the drain deadline the example config documents
    // (systemd reads both spans).
    let config = read(&deploy("config/agent.toml"));
    let deadline = config
        .lines()
        .find_map(|l| l.strip_prefix("# drain-deadline = "))
        .expect("agent.toml documents drain-deadline")
        .trim_matches('"');
    let stop = timespan_us(&unit_value(&unit, "TimeoutStopSec"));
    let drain = timespan_us(deadline);
    assert!(
        stop > drain && stop <= drain + 5 * 60 * 1_000_000,
        "TimeoutStopSec ({stop} µs) must be just above drain-deadline ({drain} µs)"
    );
    assert_eq!(unit_value(&unit, "ExecReload"), "/bin/kill -HUP $MAINPID");
    // Every hardening setting the agent leaves out is not set, and is explained in
    // the unit and in deploy/README.md.
    let settings = unit_settings(&unit);
    let readme = read(&deploy("README.md"));
    for (omitted, hardened) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectSystem", "full"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
        ("PrivateUsers", "yes"),
        ("RestrictNamespaces", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("LockPersonality", "yes"),
        ("SystemCallArchitectures", "native"),
        ("Delegate", "yes"),
    ] {
        assert!(
            !settings.iter().any(|(k, v)| k == omitted && v == hardened),
            "the agent unit sets {omitted}={hardened}"
        );
        let comment = unit
            .lines()
            .any(|l| l.starts_with('#') && l.contains(omitted));
        assert!(comment, "the agent unit does not explain {omitted}");
        assert!(
            readme.contains(&format!("`{omitted}")),
            "deploy/README.md does not explain {omitted}"
        );
    }
}

#[test]
fn no_unit_carries_a_secret() {
    for entry in std::fs::read_dir(deploy("systemd")).expect("deploy/systemd") {
        let p = entry.expect("entry").path();
        let text = read(&p);
        for (key, value) in unit_settings(&text) {
            let v = value.to_ascii_uppercase();
            assert!(
                !(v.contains("TOKEN") || v.contains("PASSWORD") || v.contains("SECRET")),
                "{}: {key}={value} looks like a secret",
                p.display()
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// Readiness without systemd: the notify protocol on a socket of our own
// ---------------------------------------------------------------------------------

/// A unix datagram socket standing in for systemd's notify socket.
#[derive(Debug)]
struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
    /// Every message received so far.
    got: Vec<String>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        NotifySocket {
            sock,
            path,
            got: Vec::new(),
        }
    }

    /// Wait for a message with the line `line`; panics (with everything received)
    /// after `timeout`, or when `proc` exits without having sent it.
    #[track_caller]
    fn expect(&mut self, line: &str, proc: &mut Proc, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let exited = !proc.is_running();
            // Whatever is queued, then wait a little for more.
            self.receive();
            if let Some(m) = self.got.iter().find(|m| m.lines().any(|l| l == line)) {
                return m.clone();
            }
            assert!(
                !exited,
                "{} exited without sending {line}; received {:?}",
                proc.name, self.got
            );
            assert!(
                start.elapsed() < timeout,
                "no {line} from {} within {timeout:?}; received {:?}",
                proc.name,
                self.got
            );
        }
    }

    /// Receive until nothing arrives for the socket's read timeout.
    fn receive(&mut self) {
        let mut buf = vec![0u8; 4096];
        loop {
            match self.sock.recv(&mut buf) {
                Ok(n) => self
                    .got
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return
                }
                Err(e) => panic!("recv on the notify socket: {e}"),
            }
        }
    }
}

#[test]
fn the_coordinator_started_as_its_unit_says_notifies_ready_and_stopping() {
    let root = tmp();
    let unit = read(&deploy("systemd/helix-coordinator.service"));
    let argv = exec_start(
        &unit,
        "/usr/bin/helix-coordinator",
        "/etc/helix/coordinator.toml",
    );
    // The unit serves an initialized data dir (README: init before the first start).
    let data = root.path().join("data");
    run(
        &bin("helix-coordinator"),
        &s(&["init", "--data-dir", path(&data), "--cluster", "svc"]),
        &[],
        LONG,
    )
    .ok();
    // The example config, with only the data dir and the addresses made temporary.
    let config = root.path().join("coordinator.toml");
    write(
        &config,
        &set_keys(
            &read(&deploy("config/coordinator.toml")),
            &[
                ("data-dir", &toml_str(path(&data))),
                ("listen", "\"127.0.0.1:0\""),
                ("metrics-listen", "\"127.0.0.1:0\""),
            ],
        ),
    );
    let mut notify = NotifySocket::bind(root.path());
    let (program, args) = as_tested(&argv, &bin("helix-coordinator"), &config);
    let mut proc = Proc::spawn(
        "coordinator",
        &program,
        &args,
        &root.path().join("coordinator.log"),
        &[("NOTIFY_SOCKET", path(&notify.path))],
    );
    let ready = notify.expect("READY=1", &mut proc, Duration::from_secs(20));
    assert!(
        ready.contains("STATUS=listening on 127.0.0.1:"),
        "READY=1 comes with the address: {ready:?}"
    );
    assert!(proc
        .output()
        .contains("helix-coordinator listening on 127.0.0.1:"));

    proc.signal(libc::SIGTERM);
    notify.expect("STOPPING=1", &mut proc, Duration::from_secs(20));
    let status = proc
        .wait_exit(Duration::from_secs(30))
        .expect("the coordinator exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", proc.output());
}

#[test]
fn the_agent_started_as_its_unit_says_enrols_notifies_ready_and_drains_on_sigterm() {
    require_tool("buildah", "buildah");
    let root = tmp();
    let mut c = Coordinator::init(root.path(), "coord", "svc");
    c.start(&[]);
    let token_file = root.path().join("join-token");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&token_file)
            .expect("token file");
        std::io::Write::write_all(&mut f, c.token(&[]).as_bytes()).expect("write token");
    }
    let unit = read(&deploy("systemd/helix-agent.service"));
    let argv = exec_start(&unit, "/usr/bin/helix-agent", "/etc/helix/agent.toml");
    let config = root.path().join("agent.toml");
    let data = root.path().join("agent");
    write(
        &config,
        &set_keys(
            &read(&deploy("config/agent.toml")),
            &[
                ("coordinator", &toml_str(c.addr())),
                ("join-token-file", &toml_str(path(&token_file))),
                ("data-dir", &toml_str(path(&data))),
                ("metrics-listen", "\"127.0.0.1:0\""),
            ],
        ),
    );
    let mut notify = NotifySocket::bind(root.path());
    let (program, args) = as_tested(&argv, &bin("helix-agent"), &config);
    let mut proc = Proc::spawn(
        "agent",
        &program,
        &args,
        &root.path().join("agent.log"),
        &[("NOTIFY_SOCKET", path(&notify.path))],
    );
    notify.expect("READY=1", &mut proc, Duration::from_secs(30));
    // Enrolled with the token from the file (then deleted), and connected.
    wait_for(Duration::from_secs(60), "the agent in agents list", || {
        let agents = c.agents();
        (agents.len() == 1 && agents[0]["connected"] == true).then_some(())
    });
    assert!(
        !token_file.exists(),
        "the join token file is deleted once enrolled"
    );

    proc.signal(libc::SIGTERM);
    notify.expect("STOPPING=1", &mut proc, Duration::from_secs(20));
    let status = proc
        .wait_exit(Duration::from_secs(60))
        .expect("the agent exits after draining");
    assert_eq!(status.code(), Some(0), "{}", proc.output());
}

// ---------------------------------------------------------------------------------
// Example configs
// ---------------------------------------------------------------------------------

/// `BIN config check FILE --json`, parsed: key → {value, source}.
fn config_check_json(program: &Path, file: &Path) -> serde_json::Map<String, serde_json::Value> {
    let out = run(
        program,
        &s(&["config", "check", path(file), "--json"]),
        &[],
        LONG,
    )
    .ok();
    match serde_json::from_str(&out.stdout) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => panic!("config check --json prints an object: {out:?}"),
    }
}

/// The example config `example` (for `program`) passes `config check`, names every
/// key, and every commented-out `# key = value` is exactly the built-in default.
fn check_example(program: &Path, example: &Path) {
    let root = tmp();
    let text = read(example);
    run(program, &s(&["config", "check", path(example)]), &[], LONG).ok();

    let empty = root.path().join("empty.toml");
    write(&empty, "");
    let defaults = config_check_json(program, &empty);
    assert!(!defaults.is_empty());

    // Every key is there, with a sentence of comment above it.
    let lines: Vec<&str> = text.lines().collect();
    let key_of = |l: &str| -> Option<(String, bool)> {
        let (commented, rest) = match l.strip_prefix("# ") {
            Some(r) => (true, r),
            None => (false, l),
        };
        let (k, _) = rest.split_once(" = ")?;
        let k = k.trim();
        defaults.contains_key(k).then(|| (k.to_string(), commented))
    };
    let mut commented: BTreeMap<String, usize> = BTreeMap::new();
    for (i, l) in lines.iter().enumerate() {
        let Some((key, is_commented)) = key_of(l) else {
            continue;
        };
        let above = i.checked_sub(1).map(|j| lines[j]).unwrap_or("");
        assert!(
            above.starts_with("# ")
                && key_of(above).is_none()
                && above.split_whitespace().count() >= 3,
            "{}:{}: {key} has no sentence above it",
            example.display(),
            i + 1
        );
        if is_commented {
            assert!(
                commented.insert(key.clone(), i).is_none(),
                "{key} is shown twice"
            );
        }
    }
    for (key, v) in &defaults {
        let mentioned = lines
            .iter()
            .any(|l| key_of(l).is_some_and(|(k, _)| &k == key))
            || (v["value"].is_null()
                && lines
                    .iter()
                    .any(|l| l.starts_with("# ") && l.contains(&format!("{key}:"))));
        assert!(
            mentioned,
            "{} does not document the key {key}",
            example.display()
        );
    }

    // Uncommented, each `# key = value` gives exactly the default.
    let uncommented: Vec<String> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            if commented.values().any(|&j| j == i) {
                l.trim_start_matches("# ").to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    let all = root.path().join("uncommented.toml");
    write(&all, &(uncommented.join("\n") + "\n"));
    let effective = config_check_json(program, &all);
    for key in commented.keys() {
        assert_eq!(
            effective[key]["value"],
            defaults[key]["value"],
            "{}: the commented `{key}` is not the default",
            example.display()
        );
        // (An empty list from a file is reported as "default": nothing to tell apart.)
        let empty_list = defaults[key]["value"].as_array().is_some_and(Vec::is_empty);
        assert!(
            empty_list
                || effective[key]["source"]
                    .as_str()
                    .is_some_and(|s| s.starts_with(path(&all))),
            "{key} was not read from the file: {}",
            effective[key]
        );
    }
}

#[test]
fn the_coordinator_example_config_passes_config_check_and_shows_every_default() {
    check_example(
        &bin("helix-coordinator"),
        &deploy("config/coordinator.toml"),
    );

    // Drop-ins override the file key by key, and config check says where from.
    let root = tmp();
    let file = root.path().join("coordinator.toml");
    std::fs::copy(deploy("config/coordinator.toml"), &file).expect("copy");
    let dropins = root.path().join("coordinator.toml.d");
    std::fs::create_dir(&dropins).expect("drop-in dir");
    write(&dropins.join("50-test.toml"), "max-attempts = 5\n");
    let effective = config_check_json(&bin("helix-coordinator"), &file);
    assert_eq!(effective["max-attempts"]["value"], "5");
    assert_eq!(
        effective["max-attempts"]["source"],
        format!("{}:1", dropins.join("50-test.toml").display())
    );
}

#[test]
fn the_agent_example_config_passes_config_check_and_shows_every_default() {
    check_example(&bin("helix-agent"), &deploy("config/agent.toml"));
}

/// A copy of `example` with `key = bad` (replacing the key's active line, or
/// appended) fails `config check` and `serve/run --config` with exit code 2, naming
/// the file, the line and the key.
fn check_refused(program: &Path, example: &Path, serve: &[&str], cases: &[(&str, &str)]) {
    let root = tmp();
    let base = read(example);
    for (i, (key, bad)) in cases.iter().enumerate() {
        let file = root.path().join(format!("bad-{i}.toml"));
        let text = set_keys(&base, &[(key, bad)]);
        let line = text
            .lines()
            .position(|l| l == format!("{key} = {bad}"))
            .expect("the bad line")
            + 1;
        write(&file, &text);
        let want = format!("{}:{line}:", file.display());
        let check = run(program, &s(&["config", "check", path(&file)]), &[], LONG);
        let check = check.fails_with(2, &want);
        assert!(
            check.stderr.contains(&format!("\"{key}\"")),
            "{key} = {bad}: the key is not named: {}",
            check.stderr
        );
        let mut args = s(serve);
        args.extend(s(&["--config", path(&file)]));
        let started = run(program, &args, &[], LONG).fails_with(2, &want);
        assert!(
            started.stderr.contains(&format!("\"{key}\"")),
            "{}",
            started.stderr
        );
    }
}

#[test]
fn refused_coordinator_configs_name_the_file_line_and_key() {
    check_refused(
        &bin("helix-coordinator"),
        &deploy("config/coordinator.toml"),
        &["serve"],
        &[
            // unknown key
            ("listen-address", "\"0.0.0.0:7443\""),
            // wrong types
            ("allow-file-repos", "\"yes\""),
            ("insecure-registry", "{ host = \"r\" }"),
            // bad address
            ("listen", "\"not-an-address\""),
            // bad duration
            ("grace-period", "\"soon\""),
            // out of range
            ("max-attempts", "0"),
        ],
    );
}

#[test]
fn refused_agent_configs_name_the_file_line_and_key() {
    check_refused(
        &bin("helix-agent"),
        &deploy("config/agent.toml"),
        &["run"],
        &[
            ("drain-dedline", "\"10m\""),
            ("capacity", "\"two\""),
            ("platform", "{ os = \"linux\" }"),
            ("metrics-listen", "\"not-an-address\""),
            ("coordinator", "\"no-port\""),
            ("drain-deadline", "\"soon\""),
        ],
    );
}

// ---------------------------------------------------------------------------------
// Packages
// ---------------------------------------------------------------------------------

/// The cargo profile this test binary was built with, so that package.sh packages
/// the binaries the other tests use instead of making a release build of its own
/// (releases use package.sh's default, `--profile release`; nothing else differs).
fn profile() -> &'static str {
    let exe = std::env::current_exe().expect("exe");
    let release = exe
        .ancestors()
        .any(|a| a.file_name().is_some_and(|n| n == "release"));
    if release {
        "release"
    } else {
        "dev"
    }
}

fn dpkg_arch() -> String {
    let dpkg = require_tool("dpkg", "dpkg");
    run(&dpkg, &s(&["--print-architecture"]), &[], LONG)
        .ok()
        .stdout
        .trim()
        .to_string()
}

fn installed(package: &str) -> bool {
    let q = require_tool("dpkg-query", "dpkg");
    let out = run(&q, &s(&["-W", "-f=${Status}", package]), &[], LONG);
    out.stdout.contains("install ok installed") || out.stdout.contains("config-files")
}

fn user_exists(name: &str) -> bool {
    read(Path::new("/etc/passwd"))
        .lines()
        .any(|l| l.split(':').next() == Some(name))
}

/// Puts the machine back as it was: purges the packages and deletes what the
/// test's installs made (the helix user, the data dirs), also when a test fails.
#[derive(Debug)]
struct Restore {
    user_was_there: bool,
    dirs_made: Vec<PathBuf>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        let dpkg = Path::new("/usr/bin/dpkg");
        let purge = run(
            dpkg,
            &s(&["--purge", "helix-agent", "helix-coordinator"]),
            &[],
            LONG,
        );
        if purge.code != Some(0) {
            eprintln!("restore: dpkg --purge failed: {purge:?}");
        }
        for d in &self.dirs_made {
            let _ = std::fs::remove_dir_all(d);
        }
        if !self.user_was_there && user_exists("helix") {
            let _ = run(Path::new("/usr/sbin/userdel"), &s(&["helix"]), &[], LONG);
            let group = read(Path::new("/etc/group"));
            if group.lines().any(|l| l.starts_with("helix:")) {
                let _ = run(Path::new("/usr/sbin/groupdel"), &s(&["helix"]), &[], LONG);
            }
        }
    }
}

/// `dpkg-deb ARGS`.
fn dpkg_deb(args: &[&str]) -> Ran {
    let tool = require_tool("dpkg-deb", "dpkg");
    run(&tool, &s(args), &[], LONG).ok()
}

/// stderr lines of a dpkg run other than systemd's "Created symlink" and the
/// notes the test expects.
fn unexpected_lines<'a>(stderr: &'a str, expected: &[&str]) -> Vec<&'a str> {
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.starts_with("Created symlink"))
        .filter(|l| !l.starts_with("Removed "))
        .filter(|l| !expected.iter().any(|e| l.contains(e)))
        .collect()
}

#[test]
fn package_sh_builds_debs_that_install_upgrade_remove_and_purge_cleanly() {
    let dpkg = require_tool("dpkg", "dpkg");
    require_tool("dpkg-shlibdeps", "dpkg-dev");
    require_tool("objcopy", "binutils");
    require_tool("adduser", "adduser");
    require_tool("git", "git");
    require_tool("buildah", "buildah");
    let analyze = require_tool("systemd-analyze", "systemd");
    assert_eq!(
        effective_uid(),
        0,
        "installing packages needs root: run ./tests/run.sh as root"
    );
    // One package test per machine at a time (they install into the system).
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("helix-e2e-packages.lock"))
        .expect("lock file");
    lock_file.lock().expect("lock");
    for package in ["helix-coordinator", "helix-agent"] {
        assert!(
            !installed(package),
            "{package} is already installed on this machine; this test installs and purges \
             the packages: remove it first (dpkg --purge helix-agent helix-coordinator)"
        );
    }
    for conf in ["/etc/helix/coordinator.toml", "/etc/helix/agent.toml"] {
        assert!(
            !Path::new(conf).exists(),
            "{conf} exists; move it away first"
        );
    }

    // Build both packages, reusing this test run's binaries (--profile dev); the
    // release path differs only in the profile.
    let root = tmp();
    let dist = root.path().join("dist");
    bin("helix-coordinator");
    let started = Instant::now();
    let script = deploy("package.sh");
    let out = run(
        &script,
        &s(&["--profile", profile(), "--fast", "--out", path(&dist)]),
        &[],
        Duration::from_secs(900),
    )
    .ok();
    eprintln!("deploy/package.sh took {:?}", started.elapsed());
    assert!(
        out.stderr.contains("+ cargo build --profile"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("+ cargo deb --no-build"),
        "{}",
        out.stderr
    );

    let arch = dpkg_arch();
    let version = run(&bin("helix-coordinator"), &s(&["--version"]), &[], LONG)
        .ok()
        .stdout
        .split_whitespace()
        .nth(1)
        .expect("version")
        .to_string();
    let deb = |name: &str| dist.join(format!("{name}_{version}-1_{arch}.deb"));
    for (name, other) in [
        ("helix-coordinator", "helix-agent"),
        ("helix-agent", "helix-coordinator"),
    ] {
        let file = deb(name);
        assert!(
            file.is_file(),
            "{} was not made: {}",
            file.display(),
            out.stderr
        );
        assert!(dist
            .join(format!("{name}-dbgsym_{version}-1_{arch}.ddeb"))
            .is_file());
        let config = if name == "helix-coordinator" {
            "coordinator.toml"
        } else {
            "agent.toml"
        };

        // Contents: binary, unit, conffile, docs; nothing of the other package.
        let listing = dpkg_deb(&["-c", path(&file)]).stdout;
        for (mode, entry) in [
            ("-rwxr-xr-x 0/0", format!("./usr/bin/{name}")),
            (
                "-rw-r--r-- 0/0",
                format!("./usr/lib/systemd/system/{name}.service"),
            ),
            ("-rw-r--r-- 0/0", format!("./etc/helix/{config}")),
            (
                "-rw-r--r-- 0/0",
                format!("./usr/share/doc/{name}/README.md"),
            ),
        ] {
            assert!(
                listing
                    .lines()
                    .any(|l| l.starts_with(mode) && l.ends_with(&format!(" {entry}"))),
                "{name}: no {mode} {entry} in\n{listing}"
            );
        }
        assert!(
            !listing.contains(other),
            "{name} contains {other}:\n{listing}"
        );
        let unpacked = root.path().join(format!("x-{name}"));
        dpkg_deb(&["-x", path(&file), path(&unpacked)]);
        assert_eq!(
            read(&unpacked.join(format!("usr/lib/systemd/system/{name}.service"))),
            read(&deploy(&format!("systemd/{name}.service")))
        );
        assert_eq!(
            read(&unpacked.join(format!("etc/helix/{config}"))),
            read(&deploy(&format!("config/{config}")))
        );
        let packaged = run(
            &unpacked.join(format!("usr/bin/{name}")),
            &s(&["--version"]),
            &[],
            LONG,
        )
        .ok();
        assert_eq!(packaged.stdout.trim(), format!("{name} {version}"));

        // Control fields.
        let fields = dpkg_deb(&["-f", path(&file)]).stdout;
        let field = |f: &str| {
            fields
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{f}: ")))
                .unwrap_or_else(|| panic!("{name}: no {f} field in\n{fields}"))
                .to_string()
        };
        assert_eq!(field("Package"), name);
        assert_eq!(field("Version"), format!("{version}-1"));
        assert_eq!(field("Architecture"), arch);
        assert!(field("Maintainer").contains('@'), "{fields}");
        assert_eq!(field("Section"), "devel");
        assert!(!field("Description").trim().is_empty(), "{fields}");
        let depends = field("Depends");
        assert!(depends.contains("libc6"), "{depends}");
        assert!(depends.contains("git"), "{depends}");
        if name == "helix-coordinator" {
            assert!(depends.contains("adduser"), "{depends}");
        } else {
            assert!(depends.contains("buildah | podman"), "{depends}");
        }

        // Maintainer scripts: conffile, units enabled but not started, the agent
        // never stopped or restarted by an upgrade.
        let control = root.path().join(format!("control-{name}"));
        dpkg_deb(&["-e", path(&file), path(&control)]);
        assert_eq!(
            read(&control.join("conffiles")).trim(),
            format!("/etc/helix/{config}")
        );
        for script in ["postinst", "prerm", "postrm"] {
            let p = control.join(script);
            run(Path::new("/bin/sh"), &s(&["-n", path(&p)]), &[], LONG).ok();
            assert!(!read(&p).contains("#DEBHELPER#"), "{name} {script}");
        }
        let postinst = read(&control.join("postinst"));
        let prerm = read(&control.join("prerm"));
        assert_eq!(
            postinst
                .matches(&format!("deb-systemd-helper enable {name}.service"))
                .count(),
            1,
            "{name} postinst enables the unit once:\n{postinst}"
        );
        assert!(!postinst.contains("deb-systemd-invoke start"), "{postinst}");
        assert!(
            prerm.contains("[ \"$1\" = remove ]"),
            "{name} prerm stops the unit only on remove:\n{prerm}"
        );
        if name == "helix-coordinator" {
            assert!(postinst.contains("adduser --system"), "{postinst}");
            assert!(
                postinst.contains("deb-systemd-invoke try-restart helix-coordinator.service"),
                "{postinst}"
            );
        } else {
            assert!(!postinst.contains("deb-systemd-invoke"), "{postinst}");
        }
    }

    // Install on this machine, where systemd is not running.
    let mut restore = Restore {
        user_was_there: user_exists("helix"),
        dirs_made: ["/var/lib/helix-coordinator", "/var/lib/helix-agent"]
            .iter()
            .map(PathBuf::from)
            .filter(|d| !d.exists())
            .collect(),
    };
    let install = run(
        &dpkg,
        &s(&[
            "-i",
            path(&deb("helix-coordinator")),
            path(&deb("helix-agent")),
        ]),
        &[],
        LONG,
    );
    let install = install.ok();
    assert_eq!(unexpected_lines(&install.stderr, &[]), Vec::<&str>::new());

    let passwd = read(Path::new("/etc/passwd"));
    let helix = passwd
        .lines()
        .find(|l| l.starts_with("helix:"))
        .expect("the helix user exists after install");
    let fields: Vec<&str> = helix.split(':').collect();
    assert_eq!(fields[5], "/var/lib/helix-coordinator", "{helix}");
    assert!(fields[6].ends_with("nologin"), "{helix}");
    let uid: u32 = fields[2].parse().expect("uid");
    let data = Path::new("/var/lib/helix-coordinator");
    let meta = std::fs::metadata(data).expect("the data dir exists");
    assert_eq!(
        (meta.uid(), meta.permissions().mode() & 0o777),
        (uid, 0o700)
    );
    for name in ["helix-coordinator", "helix-agent"] {
        assert!(
            Path::new(&format!("/lib/systemd/system/{name}.service")).is_file(),
            "{name}.service in /lib/systemd/system"
        );
        assert!(
            Path::new(&format!(
                "/etc/systemd/system/multi-user.target.wants/{name}.service"
            ))
            .exists(),
            "{name} is enabled"
        );
        run(
            Path::new(&format!("/usr/bin/{name}")),
            &s(&["--version"]),
            &[],
            LONG,
        )
        .ok();
    }
    // The installed units, as installed, with the installed binaries.
    let verify = run(
        &analyze,
        &s(&[
            "verify",
            "/lib/systemd/system/helix-coordinator.service",
            "/lib/systemd/system/helix-agent.service",
        ]),
        &[],
        LONG,
    );
    assert_eq!(
        (verify.code, verify.stdout.trim(), verify.stderr.trim()),
        (Some(0), "", "")
    );
    // The installed config is valid as shipped.
    let coordinator = Path::new("/usr/bin/helix-coordinator");
    run(
        coordinator,
        &s(&["config", "check", "/etc/helix/coordinator.toml"]),
        &[],
        LONG,
    )
    .ok();
    // The README's init step works as written, as the helix user.
    let runuser = require_tool("runuser", "util-linux");
    let init = run(
        &runuser,
        &s(&[
            "-u",
            "helix",
            "--",
            "helix-coordinator",
            "init",
            "--data-dir",
            "/var/lib/helix-coordinator",
            "--san",
            "coord.example.com",
        ]),
        &[("PATH", "/usr/bin:/bin")],
        LONG,
    )
    .ok();
    assert!(init.stderr.contains("coord.example.com"), "{}", init.stderr);
    assert_eq!(
        std::fs::metadata(data.join("ca.key"))
            .expect("ca.key")
            .uid(),
        uid
    );

    // Installing again (an upgrade in place) keeps the user and an edited conffile.
    let edited = "# edited by the operator\n";
    let agent_conf = Path::new("/etc/helix/agent.toml");
    write(agent_conf, &(read(agent_conf) + edited));
    let again = run(
        &dpkg,
        &s(&[
            "-i",
            path(&deb("helix-coordinator")),
            path(&deb("helix-agent")),
        ]),
        &[],
        LONG,
    )
    .ok();
    assert_eq!(unexpected_lines(&again.stderr, &[]), Vec::<&str>::new());
    assert!(
        read(agent_conf).ends_with(edited),
        "the edited conffile was kept"
    );
    assert!(
        read(Path::new("/etc/passwd")).contains(helix),
        "the helix user is unchanged"
    );

    // Remove keeps the conffiles; purge removes them and keeps the data dir with the
    // CA, saying so.
    let removed = run(
        &dpkg,
        &s(&["--remove", "helix-agent", "helix-coordinator"]),
        &[],
        LONG,
    )
    .ok();
    assert_eq!(unexpected_lines(&removed.stderr, &[]), Vec::<&str>::new());
    assert!(!Path::new("/usr/bin/helix-coordinator").exists());
    assert!(!Path::new("/lib/systemd/system/helix-agent.service").exists());
    assert!(Path::new("/etc/helix/coordinator.toml").exists());
    let purged = run(
        &dpkg,
        &s(&["--purge", "helix-agent", "helix-coordinator"]),
        &[],
        LONG,
    )
    .ok();
    assert_eq!(
        unexpected_lines(&purged.stderr, &["kept /var/lib/helix-coordinator"]),
        Vec::<&str>::new()
    );
    assert!(purged.stderr.contains("kept /var/lib/helix-coordinator"));
    assert!(!Path::new("/etc/helix/coordinator.toml").exists());
    assert!(!Path::new("/etc/helix/agent.toml").exists());
    assert!(data.join("ca.key").exists(), "purge keeps the cluster CA");
    for name in ["helix-coordinator", "helix-agent"] {
        assert!(!installed(name), "{name} is gone");
        assert!(!Path::new(&format!(
            "/etc/systemd/system/multi-user.target.wants/{name}.service"
        ))
        .exists());
    }
    // The test made the data dir's contents: it goes with the rest.
    if !restore.dirs_made.iter().any(|d| d == data) {
        restore.dirs_made.push(data.to_path_buf());
    }
    drop(restore);
}

/// The effective uid: the owner of /proc/self.
fn effective_uid() -> u32 {
    std::fs::metadata("/proc/self").expect("/proc/self").uid()
}

#[test]
fn package_sh_names_what_a_cross_build_lacks() {
    let target = "aarch64-unknown-linux-gnu";
    let mut lacks = Vec::new();
    let has_target = match std::process::Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == target),
        Err(_) => false,
    };
    if !has_target {
        lacks.push(format!("rustup target add {target}"));
    }
    let has_linker = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .any(|d| Path::new(d).join("aarch64-linux-gnu-gcc").is_file());
    if !has_linker {
        lacks.push("apt-get install gcc-aarch64-linux-gnu".to_string());
    }
    let root = tmp();
    let out = run(
        &deploy("package.sh"),
        &s(&["--target", target, "--out", path(root.path())]),
        &[],
        Duration::from_secs(1800),
    );
    if lacks.is_empty() {
        // Everything is there: it cross-builds arm64 packages.
        let out = out.ok();
        assert!(
            out.stderr.contains(&format!("--target {target}")),
            "{}",
            out.stderr
        );
        let debs: Vec<_> = std::fs::read_dir(root.path())
            .expect("out dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with("_arm64.deb"))
            .collect();
        assert_eq!(debs.len(), 2, "{debs:?}");
    } else {
        let out = out.fails_with(2, "missing:");
        for lack in &lacks {
            assert!(
                out.stderr.contains(lack),
                "{lack:?} not named:\n{}",
                out.stderr
            );
        }
        assert!(
            !out.stderr.contains("+ cargo build"),
            "it must not start a build"
        );
    }
}
