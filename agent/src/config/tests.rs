//! `run`'s configuration: precedence of the layers for the agent's own keys, and the
//! refusals, with the file, line and key.

use std::sync::Mutex;

use super::*;

/// Tests that set `HELIX_*` variables or read the keys they set take this lock.
static ENV: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    ENV.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(&p, text).expect("write");
    p
}

fn argv(extra: &[&str]) -> Vec<OsString> {
    ["helix-agent", "run"]
        .iter()
        .chain(extra)
        .map(OsString::from)
        .collect()
}

fn resolve(file: Option<&Path>, extra: &[&str]) -> Resolved {
    let layer = match file {
        Some(f) => load(f).expect("valid configuration"),
        None => FileLayer::default(),
    };
    resolve_with(&argv(extra), &layer, file.map(Path::to_path_buf)).expect("resolves")
}

#[test]
fn precedence_default_file_dropin_env_flag() {
    let _env = lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let main = write(
        dir.path(),
        "agent.toml",
        "capacity = 2\nlabel = [\"zone=eu\", \"disk=ssd\"]\nplatform = [\"linux/arm64\"]\ncoordinator = \"c1.example:7443\"\nlog-level = \"debug\"\n",
    );
    write(dir.path(), "agent.toml.d/10-a.toml", "capacity = 3\n");
    write(
        dir.path(),
        "agent.toml.d/20-b.toml",
        "coordinator = \"c2.example:7443\"\n",
    );

    // (case, env capacity, flags, expected capacity, its source)
    type Case<'a> = (&'a str, Option<&'a str>, &'a [&'a str], u32, &'a str);
    let cases: [Case; 4] = [
        (
            "drop-ins over the file",
            None,
            &[],
            3,
            "agent.toml.d/10-a.toml:1",
        ),
        (
            "environment over drop-ins",
            Some("4"),
            &[],
            4,
            "environment",
        ),
        (
            "flag over environment",
            Some("4"),
            &["--capacity", "5"],
            5,
            "flag",
        ),
        ("flag alone", None, &["--capacity", "6"], 6, "flag"),
    ];
    for (case, env, flags, want, source) in cases {
        match env {
            Some(v) => std::env::set_var("HELIX_CAPACITY", v),
            None => std::env::remove_var("HELIX_CAPACITY"),
        }
        let r = resolve(Some(&main), flags);
        assert_eq!(r.run_args().capacity, want, "{case}");
        let got = r.effective["capacity"]["source"].as_str().expect("source");
        assert!(got.ends_with(source), "{case}: {got}");
    }
    std::env::remove_var("HELIX_CAPACITY");

    let r = resolve(None, &[]);
    assert_eq!(r.run_args().capacity, 1, "built-in default");
    assert_eq!(r.effective["capacity"]["source"], "default");
    assert!(
        r.run_args().metrics_listen.is_empty(),
        "metrics are off by default"
    );

    let r = resolve(Some(&main), &[]);
    let args = r.run_args();
    assert_eq!(
        args.labels,
        [("zone".into(), "eu".into()), ("disk".into(), "ssd".into())]
    );
    assert_eq!(args.platforms, ["linux/arm64"]);
    assert_eq!(args.coordinators, ["c2.example:7443"]);
    assert_eq!(r.cli.log_level, "debug", "a global flag is a key too");

    // A flag replaces a list from a file rather than adding to it; the environment
    // gives lists comma-separated.
    let r = resolve(Some(&main), &["--label", "gpu=yes"]);
    assert_eq!(r.run_args().labels, [("gpu".into(), "yes".into())]);
    std::env::set_var("HELIX_LABEL", "a=1,b=2");
    let r = resolve(Some(&main), &[]);
    std::env::remove_var("HELIX_LABEL");
    assert_eq!(
        r.run_args().labels,
        [("a".into(), "1".into()), ("b".into(), "2".into())]
    );
}

#[test]
fn refused_configs_name_the_file_line_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("unknown.toml", "capacity = 2\ncapacty = 3\n", "unknown.toml:2: unknown key \"capacty\" (known keys: builder, cancel-grace, capacity, coordinator, data-dir, drain-deadline, idle-timeout, insecure-registry, join-token-file, label, log-format, log-level, metrics-listen, name, platform)"),
        ("type.toml", "\ncapacity = [1, 2]\n", "type.toml:2: key \"capacity\" must be a string or number, not a list"),
        ("zero.toml", "capacity = 0\n", "zero.toml:1: invalid value for \"capacity\": invalid value '0' for '--capacity <CAPACITY>': expected a number of jobs, at least 1, got \"0\""),
        ("platform.toml", "platform = [\"linux/amd64\", \"linux/amd65\"]\n", "platform.toml:1: invalid value for \"platform\": invalid value 'linux/amd65' for '--platform <PLATFORM>': invalid platform \"linux/amd65\": unknown architecture \"amd65\""),
        ("address.toml", "coordinator = \"nowhere\"\n", "address.toml:1: invalid value for \"coordinator\": invalid value 'nowhere' for '--coordinator <COORDINATOR>': expected HOST:PORT"),
        ("duration.toml", "drain-deadline = \"soon\"\n", "duration.toml:1: invalid value for \"drain-deadline\""),
        ("label.toml", "label = \"zone\"\n", "label.toml:1: invalid value for \"label\": invalid value 'zone' for '--label <KEY=VALUE>': expected KEY=VALUE"),
        ("builder.toml", "builder = \"kaniko\"\n", "builder.toml:1: invalid value for \"builder\": invalid value 'kaniko' for '--builder <BUILDER>': unknown builder \"kaniko\""),
        ("format.toml", "log-format = \"xml\"\n", "format.toml:1: invalid value for \"log-format\""),
        ("level.toml", "log-level = \"helix_agent=loud\"\n", "level.toml:1: invalid value for \"log-level\""),
        ("metrics.toml", "metrics-listen = \"localhost:9465\"\n", "metrics.toml:1: invalid value for \"metrics-listen\""),
        ("name.toml", "name = \"node 1\"\n", "name.toml:1: invalid value for \"name\""),
        ("table.toml", "coordinator = { host = \"x\" }\n", "table.toml:1: key \"coordinator\" must be a list of strings, not a table"),
        ("list.toml", "coordinator = [\"a:7443\", \"nowhere\"]\n", "list.toml:1: invalid value for \"coordinator\": invalid value 'nowhere' for '--coordinator <COORDINATOR>': expected HOST:PORT"),
        ("nested.toml", "coordinator = [[\"a:7443\"]]\n", "nested.toml:1: key \"coordinator\" must be a list of strings, not a list"),
        ("config.toml", "config = \"/etc/other.toml\"\n", "config.toml:1: unknown key \"config\""),
        ("token.toml", "join-token = \"abc\"\n", "token.toml:1: unknown key \"join-token\""),
    ];
    for (name, text, want) in cases {
        let path = write(dir.path(), name, text);
        let err = load(&path).expect_err(name).to_string();
        assert!(
            err.contains(want),
            "{name}: {err}\n  does not contain: {want}"
        );
    }
    // A drop-in is checked like the file.
    let main = write(dir.path(), "ok.toml", "capacity = 2\n");
    write(dir.path(), "ok.toml.d/50-bad.toml", "\n\nbuilder = 3\n");
    let err = load(&main).expect_err("bad drop-in").to_string();
    assert!(
        err.contains("ok.toml.d/50-bad.toml:3: invalid value for \"builder\""),
        "{err}"
    );
}

#[test]
fn the_packaged_example_is_valid() {
    let _env = lock();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/agent.toml");
    let effective = check(&example).expect("deploy/config/agent.toml is valid");
    assert_eq!(effective["data-dir"]["value"], "/var/lib/helix-agent");
    assert!(effective["join-token-file"]["source"]
        .as_str()
        .expect("source")
        .contains("agent.toml:"));
}

#[test]
fn check_shows_each_value_with_its_source() {
    let _env = lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let main = write(
        dir.path(),
        "agent.toml",
        "coordinator = \"coord:7443\"\njoin-token-file = \"/etc/helix/join-token\"\n",
    );
    write(dir.path(), "agent.toml.d/capacity.toml", "capacity = 4\n");
    let eff = check(&main).expect("valid");
    assert_eq!(
        eff["coordinator"]["value"],
        serde_json::json!(["coord:7443"])
    );
    assert!(eff["coordinator"]["source"]
        .as_str()
        .expect("source")
        .ends_with("agent.toml:1"));
    assert_eq!(eff["capacity"]["value"], "4");
    assert!(eff["capacity"]["source"]
        .as_str()
        .expect("source")
        .ends_with("capacity.toml:1"));
    assert_eq!(eff["builder"]["value"], "buildah");
    assert_eq!(eff["builder"]["source"], "default");
    assert_eq!(eff["label"]["value"], serde_json::json!([]));
    assert!(eff.get("config").is_none());
    assert!(eff.get("log-level").is_some(), "the global keys are listed");
}

#[test]
fn a_reload_reads_the_files_again_but_flags_still_win() {
    let _env = lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let main = write(
        dir.path(),
        "agent.toml",
        "capacity = 2\nlabel = [\"a=1\"]\n",
    );
    let path = main.to_str().expect("utf-8");
    let argv = argv(&["--config", path, "--label", "pinned=yes"]);
    let before = reload(&argv).expect("valid");
    assert_eq!(before.run_args().capacity, 2);
    write(
        dir.path(),
        "agent.toml",
        "capacity = 3\nlabel = [\"a=2\"]\n",
    );
    let after = reload(&argv).expect("valid");
    assert_eq!(after.run_args().capacity, 3);
    assert_eq!(after.run_args().labels, [("pinned".into(), "yes".into())]);
    let changes = crate::reload::diff(&before.effective, &after.effective);
    let keys: Vec<&str> = changes.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, ["capacity"]);

    write(dir.path(), "agent.toml", "capacity = \"many\"\n");
    let err = reload(&argv).expect_err("invalid");
    assert!(
        err.contains("agent.toml:1: invalid value for \"capacity\""),
        "{err}"
    );
}

#[test]
fn the_subcommand_is_found_after_global_options() {
    let words = |w: &[&str]| -> Vec<OsString> { w.iter().map(OsString::from).collect() };
    assert_eq!(
        subcommand(&words(&["helix-agent", "run"])).as_deref(),
        Some("run")
    );
    assert_eq!(
        subcommand(&words(&["helix-agent", "--log-level", "debug", "run"])).as_deref(),
        Some("run")
    );
    assert_eq!(
        subcommand(&words(&["helix-agent", "--log-format=json", "doctor"])).as_deref(),
        Some("doctor")
    );
    assert_eq!(subcommand(&words(&["helix-agent"])), None);
}

#[test]
fn several_coordinators_from_the_file_the_environment_or_flags() {
    let _env = lock();
    std::env::remove_var("HELIX_COORDINATOR");
    let dir = tempfile::tempdir().expect("tempdir");
    let list = write(
        dir.path(),
        "list.toml",
        "coordinator = [\"a.example:7443\", \"b.example:7443\"]\n",
    );
    let single = write(
        dir.path(),
        "single.toml",
        "coordinator = \"a.example:7443\"\n",
    );

    // (case, file, HELIX_COORDINATOR, flags, expected)
    type Case<'a> = (
        &'a str,
        Option<&'a Path>,
        Option<&'a str>,
        &'a [&'a str],
        &'a [&'a str],
    );
    let cases: [Case; 8] = [
        ("none: the recorded one is used", None, None, &[], &[]),
        (
            "a list in the file",
            Some(&list),
            None,
            &[],
            &["a.example:7443", "b.example:7443"],
        ),
        (
            "a single string in the file",
            Some(&single),
            None,
            &[],
            &["a.example:7443"],
        ),
        (
            "a comma list in the environment replaces the file's",
            Some(&list),
            Some("c.example:7443,[::1]:7443"),
            &[],
            &["c.example:7443", "[::1]:7443"],
        ),
        (
            "one address in the environment",
            None,
            Some("c.example:7443"),
            &[],
            &["c.example:7443"],
        ),
        (
            "repeated flags replace the environment's",
            Some(&list),
            Some("c.example:7443"),
            &[
                "--coordinator",
                "d.example:7443",
                "--coordinator",
                "e.example:7443",
            ],
            &["d.example:7443", "e.example:7443"],
        ),
        (
            "a comma list in a flag",
            None,
            None,
            &["--coordinator", "d.example:7443,e.example:7443"],
            &["d.example:7443", "e.example:7443"],
        ),
        (
            "a single flag, as before",
            Some(&single),
            None,
            &["--coordinator", "127.0.0.1:7443"],
            &["127.0.0.1:7443"],
        ),
    ];
    for (case, file, env, flags, want) in cases {
        match env {
            Some(v) => std::env::set_var("HELIX_COORDINATOR", v),
            None => std::env::remove_var("HELIX_COORDINATOR"),
        }
        let r = resolve(file, flags);
        assert_eq!(r.run_args().coordinators, want, "{case}");
        assert_eq!(
            r.effective["coordinator"]["value"],
            serde_json::json!(want),
            "{case}"
        );
    }

    std::env::remove_var("HELIX_COORDINATOR");
    // A bad address in a comma list is refused, naming it. (Not through the
    // environment: tests that do not take the lock parse `run` command lines.)
    let err = resolve_with(
        &argv(&["--coordinator", "a.example:7443,nowhere"]),
        &FileLayer::default(),
        None,
    )
    .expect_err("bad address");
    assert!(err.contains("'nowhere'"), "{err}");
    assert!(err.contains("expected HOST:PORT"), "{err}");
}

#[test]
fn join_takes_one_coordinator_or_several() {
    use clap::Parser as _;
    let _env = lock();
    std::env::remove_var("HELIX_COORDINATOR");
    let parse = |extra: &[&str]| {
        let argv = ["helix-agent", "join", "--token", "t"].iter().chain(extra);
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Command::Join(args) => args.coordinators,
            _ => unreachable!("join"),
        })
    };
    assert_eq!(
        parse(&["--coordinator", "a.example:7443"]).expect("one"),
        ["a.example:7443"]
    );
    assert_eq!(
        parse(&[
            "--coordinator",
            "a.example:7443",
            "--coordinator",
            "b.example:7443,c.example:7443"
        ])
        .expect("several"),
        ["a.example:7443", "b.example:7443", "c.example:7443"]
    );
    let err = parse(&[]).expect_err("a coordinator is required");
    assert!(
        err.to_string().contains("--coordinator <COORDINATOR>"),
        "{err}"
    );
    assert!(parse(&["--coordinator", "nowhere"]).is_err());
    std::env::set_var("HELIX_COORDINATOR", "a.example:7443,b.example:7443");
    let from_env = parse(&[]);
    std::env::remove_var("HELIX_COORDINATOR");
    assert_eq!(
        from_env.expect("from the environment"),
        ["a.example:7443", "b.example:7443"]
    );
}
