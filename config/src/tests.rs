use std::ffi::OsString;
use std::net::SocketAddr;

use super::*;

/// A command shaped like `serve`, with env names unique to each test so tests can
/// run in parallel.
fn cmd(env: &str) -> clap::Command {
    clap::Command::new("serve")
        .arg(clap::Arg::new("config").long("config"))
        .arg(
            clap::Arg::new("listen")
                .long("listen")
                .env(format!("{env}_LISTEN"))
                .default_value("0.0.0.0:7443")
                .value_parser(clap::value_parser!(SocketAddr)),
        )
        .arg(
            clap::Arg::new("platform")
                .long("platform")
                .env(format!("{env}_PLATFORM"))
                .action(ArgAction::Append),
        )
        .arg(
            clap::Arg::new("allow-file-repos")
                .long("allow-file-repos")
                .action(ArgAction::SetTrue),
        )
        .arg(
            clap::Arg::new("capacity")
                .long("capacity")
                .default_value("1")
                .value_parser(clap::value_parser!(u32)),
        )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(&p, text).expect("write");
    p
}

/// Layer `files`, then parse `argv`; the listen address and the platforms.
fn resolve(env: &str, files: &[PathBuf], argv: &[&str]) -> (String, Vec<String>, bool, u32) {
    let base = cmd(env);
    let layer = read_files(&base, files).expect("valid config");
    let m = apply(base, &layer)
        .try_get_matches_from(std::iter::once("serve").chain(argv.iter().copied()))
        .expect("parses");
    (
        m.get_one::<SocketAddr>("listen")
            .expect("listen")
            .to_string(),
        m.get_many::<String>("platform")
            .map(|v| v.cloned().collect())
            .unwrap_or_default(),
        m.get_flag("allow-file-repos"),
        *m.get_one::<u32>("capacity").expect("capacity"),
    )
}

#[test]
fn precedence_default_file_dropin_env_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = write(
        dir.path(),
        "c.toml",
        "listen = \"127.0.0.1:1000\"\nplatform = [\"linux/amd64\"]\ncapacity = 4\n",
    );
    write(
        dir.path(),
        "c.toml.d/20-b.toml",
        "listen = \"127.0.0.1:3000\"\n",
    );
    write(
        dir.path(),
        "c.toml.d/10-a.toml",
        "listen = \"127.0.0.1:2000\"\nallow-file-repos = true\n",
    );
    write(dir.path(), "c.toml.d/ignored.txt", "listen = 5\n");
    let files = files_of(&main).expect("files");
    assert_eq!(files.len(), 3, "{files:?}");

    // (case, files, env listen, argv, expected listen)
    type Case<'a> = (
        &'a str,
        Vec<PathBuf>,
        Option<&'a str>,
        Vec<&'a str>,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        ("built-in default", vec![], None, vec![], "0.0.0.0:7443"),
        (
            "config file",
            vec![main.clone()],
            None,
            vec![],
            "127.0.0.1:1000",
        ),
        (
            "drop-ins in lexical order",
            files.clone(),
            None,
            vec![],
            "127.0.0.1:3000",
        ),
        (
            "environment over drop-ins",
            files.clone(),
            Some("127.0.0.1:4000"),
            vec![],
            "127.0.0.1:4000",
        ),
        (
            "flag over environment",
            files.clone(),
            Some("127.0.0.1:4000"),
            vec!["--listen", "127.0.0.1:5000"],
            "127.0.0.1:5000",
        ),
    ];
    for (i, (case, files, env_value, argv, want)) in cases.into_iter().enumerate() {
        let env = format!("HELIX_CFGTEST_P{i}");
        if let Some(v) = env_value {
            std::env::set_var(format!("{env}_LISTEN"), v);
        }
        let (listen, _, _, _) = resolve(&env, &files, &argv);
        assert_eq!(listen, want, "{case}");
    }
    let (_, platforms, allow, capacity) = resolve("HELIX_CFGTEST_Q", &files, &[]);
    assert_eq!(platforms, ["linux/amd64"]);
    assert!(allow, "a boolean from a drop-in");
    assert_eq!(capacity, 4);
    // A flag replaces a list from a file rather than adding to it.
    let (_, platforms, _, _) = resolve("HELIX_CFGTEST_R", &files, &["--platform", "linux/arm64"]);
    assert_eq!(platforms, ["linux/arm64"]);
}

#[test]
fn refused_configs_name_the_file_line_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("unknown.toml", "capacity = 2\nlisten-on = \"x\"\n", "unknown.toml:2: unknown key \"listen-on\" (known keys: allow-file-repos, capacity, listen, platform)"),
        ("type.toml", "\nallow-file-repos = \"yes\"\n", "type.toml:2: key \"allow-file-repos\" must be true or false, not a string"),
        ("table.toml", "listen = { host = \"x\" }\n", "table.toml:1: key \"listen\" must be a string or number, not a table"),
        ("address.toml", "listen = \"nowhere\"\n", "address.toml:1: invalid value for \"listen\": invalid value 'nowhere' for '--listen <listen>'"),
        ("number.toml", "capacity = -3\n", "number.toml:1: invalid value for \"capacity\""),
        ("list.toml", "platform = [1, {a = 1}]\n", "list.toml:1: key \"platform\" must be a list of strings, not a table"),
        ("syntax.toml", "listen = \"127.0.0.1:1\"\ncapacity = = 2\n", "syntax.toml: invalid TOML at line 2"),
        ("config.toml", "config = \"/etc/other.toml\"\n", "unknown key \"config\""),
    ];
    for (name, text, want) in cases {
        let path = write(dir.path(), name, text);
        let err = read_files(&cmd("HELIX_CFGTEST_E"), &[path])
            .expect_err(name)
            .to_string();
        assert!(
            err.contains(want),
            "{name}: {err}\n  does not contain: {want}"
        );
    }
    let missing = read_files(&cmd("HELIX_CFGTEST_E"), &[dir.path().join("absent.toml")])
        .expect_err("missing");
    assert!(missing.to_string().starts_with("cannot read"), "{missing}");
}

#[test]
fn config_flag_and_effective_values() {
    let argv: Vec<OsString> = ["serve", "--config=/etc/helix/c.toml"]
        .iter()
        .map(OsString::from)
        .collect();
    assert_eq!(config_flag(&argv), Some(PathBuf::from("/etc/helix/c.toml")));
    let argv: Vec<OsString> = ["serve", "--config", "x.toml"]
        .iter()
        .map(OsString::from)
        .collect();
    assert_eq!(config_flag(&argv), Some(PathBuf::from("x.toml")));

    let dir = tempfile::tempdir().expect("tempdir");
    let main = write(dir.path(), "c.toml", "capacity = 7\n");
    let base = cmd("HELIX_CFGTEST_F");
    let layer = read_files(&base, &[main]).expect("valid");
    let applied = apply(base, &layer);
    let m = applied
        .clone()
        .try_get_matches_from(["serve", "--listen", "127.0.0.1:9"])
        .expect("parses");
    let eff = effective(&applied, &m, &layer);
    assert_eq!(eff["capacity"]["value"], "7");
    assert!(eff["capacity"]["source"]
        .as_str()
        .expect("source")
        .ends_with("c.toml:1"));
    assert_eq!(eff["listen"]["source"], "flag");
    assert_eq!(eff["allow-file-repos"]["value"], false);
    assert_eq!(eff["allow-file-repos"]["source"], "default");
}
