//! `serve`'s layered configuration: `--config FILE` (or /etc/helix/coordinator.toml
//! when present), its drop-ins, `HELIX_*` variables and flags, with the clap command
//! as the schema (see the helix-config crate).

use std::ffi::OsString;
use std::path::Path;

use clap::{CommandFactory, FromArgMatches};
use helix_config::{apply, files_of, read_files, ConfigError, FileLayer};

use helix_coordinator::store::config::StoreConfig;

use crate::cli::{Cli, Command};

/// Read when `serve` is given no `--config` and the file exists.
pub(crate) const DEFAULT_CONFIG: &str = "/etc/helix/coordinator.toml";

/// The schema of a `serve` configuration file: `serve`'s flags and the global ones.
fn schema(root: &clap::Command) -> clap::Command {
    let mut root = root.clone();
    root.build();
    let serve = root
        .find_subcommand("serve")
        .expect("serve subcommand")
        .clone();
    let globals: Vec<clap::Arg> = root
        .get_arguments()
        .filter(|a| a.is_global_set())
        .cloned()
        .collect();
    clap::Command::new("serve").args(globals).args(
        serve
            .get_arguments()
            .filter(|a| !a.is_global_set())
            .cloned(),
    )
}

/// The root command with `layer` applied as defaults.
fn layered(layer: &FileLayer) -> clap::Command {
    let root = apply(Cli::command(), layer);
    root.mut_subcommand("serve", |s| apply(s, layer))
}

/// Read `file` and its drop-ins as a `serve` configuration.
pub(crate) fn load(file: &Path) -> Result<FileLayer, ConfigError> {
    read_files(&schema(&Cli::command()), &files_of(file)?)
}

/// Whether `argv` runs `serve` (the first non-flag word).
fn is_serve(argv: &[OsString]) -> bool {
    let mut skip_value = false;
    for a in argv.iter().skip(1) {
        let s = a.to_string_lossy();
        if skip_value {
            skip_value = false;
            continue;
        }
        if s.starts_with("--") {
            // Global options that take a value in the next word.
            skip_value = !s.contains('=')
                && matches!(
                    s.as_ref(),
                    "--data-dir"
                        | "--coordinator"
                        | "--admin-cert"
                        | "--log-level"
                        | "--log-format"
                );
            continue;
        }
        return s == "serve";
    }
    false
}

/// Parse the command line, layering the configuration under `serve`'s flags.
pub(crate) fn parse() -> Result<Cli, String> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    if !is_serve(&argv) {
        return Ok(Cli::parse_from_args(argv));
    }
    let layer = match helix_config::config_file(&argv, Path::new(DEFAULT_CONFIG)) {
        Some(f) => load(&f).map_err(|e| e.to_string())?,
        None => FileLayer::default(),
    };
    let matches = layered(&layer).get_matches_from(argv);
    Cli::from_arg_matches(&matches).map_err(|e| e.to_string())
}

/// `config check FILE`: the effective `serve` configuration as JSON.
pub(crate) fn check(file: &Path) -> Result<serde_json::Value, ConfigError> {
    let layer = load(file)?;
    let root = layered(&layer);
    let matches = root
        .clone()
        .try_get_matches_from(["helix-coordinator", "serve"])
        .map_err(|e| ConfigError::InvalidValue {
            path: file.display().to_string(),
            line: 0,
            key: String::new(),
            message: e.to_string(),
        })?;
    let (_, serve_matches) = matches.subcommand().expect("serve was given");
    let mut root_built = root.clone();
    root_built.build();
    let serve_cmd = root_built
        .find_subcommand("serve")
        .expect("serve subcommand")
        .clone();
    let mut out = helix_config::effective(&serve_cmd, serve_matches, &layer);
    // Globals are reachable from the subcommand's matches once built.
    if let serde_json::Value::Object(map) = &mut out {
        map.remove("config");
        redact_store(map);
    }
    check_lease(file, &layer, &matches)?;
    Ok(out)
}

/// Show the store URL with its password (if any) replaced: `config check` output is
/// pasted into tickets and chat.
fn redact_store(map: &mut serde_json::Map<String, serde_json::Value>) {
    let Some(value) = map.get_mut("store").and_then(|v| v.get_mut("value")) else {
        return;
    };
    if let Some(raw) = value.as_str() {
        let shown = match raw.parse::<StoreConfig>() {
            Ok(store) => store.to_string(),
            Err(_) => "(invalid)".to_string(),
        };
        *value = serde_json::Value::String(shown);
    }
}

/// The lease timings depend on each other, which no single value parser can check.
fn check_lease(
    file: &Path,
    layer: &FileLayer,
    matches: &clap::ArgMatches,
) -> Result<(), ConfigError> {
    let cli = Cli::from_arg_matches(matches).map_err(|e| ConfigError::InvalidValue {
        path: file.display().to_string(),
        line: 0,
        key: String::new(),
        message: e.to_string(),
    })?;
    let Command::Serve(args) = cli.command else {
        return Ok(());
    };
    crate::cluster_opts::lease(args.lease_ttl, args.lease_renew)
        .map(|_| ())
        .map_err(|message| {
            let key = ["lease-renew", "lease-ttl"]
                .into_iter()
                .find(|k| layer.values.contains_key(*k))
                .unwrap_or("lease-renew");
            let (path, line) = match layer.values.get(key) {
                Some((_, origin)) => (origin.path.clone(), origin.line),
                None => (file.display().to_string(), 0),
            };
            ConfigError::InvalidValue {
                path,
                line,
                key: key.to_string(),
                message,
            }
        })
}

trait ParseFrom {
    fn parse_from_args(argv: Vec<OsString>) -> Self;
}

impl ParseFrom for Cli {
    fn parse_from_args(argv: Vec<OsString>) -> Self {
        <Cli as clap::Parser>::parse_from(argv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_text(text: &str) -> Result<serde_json::Value, ConfigError> {
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = tmp.path().join("coordinator.toml");
        std::fs::write(&file, text).expect("write");
        check(&file)
    }

    #[test]
    fn config_check_never_shows_the_store_password() {
        let out = check_text(
            "store = \"postgres://helix:s3cret@db.example.com:5432/helix?sslmode=require\"\n\
             store-password-file = \"/etc/helix/store-password\"\n",
        )
        .expect("valid");
        let text = out.to_string();
        assert!(!text.contains("s3cret"), "{text}");
        assert_eq!(
            out["store"]["value"],
            "postgres://helix:***@db.example.com:5432/helix?sslmode=require"
        );
        assert_eq!(
            out["store-password-file"]["value"],
            "/etc/helix/store-password"
        );
        let default = check_text("").expect("valid");
        assert_eq!(default["store"]["value"], "redb");
        assert_eq!(default["lease-ttl"]["value"], "10s");
        assert_eq!(default["lease-renew"]["value"], "2s");
    }

    #[test]
    fn a_bad_store_url_is_refused_without_echoing_it() {
        let err = check_text("store = \"postgres://helix:s3cret@db:notaport/helix\"\n")
            .expect_err("refused")
            .to_string();
        assert!(!err.contains("s3cret"), "{err}");
        assert!(err.contains(":1:") && err.contains("\"store\""), "{err}");
        let err = check_text("store = \"mysql://db\"\n")
            .expect_err("refused")
            .to_string();
        assert!(err.contains("expected `redb`"), "{err}");
    }

    #[test]
    fn a_renewal_not_under_half_the_lease_is_refused_naming_the_line() {
        let err = check_text("lease-ttl = \"10s\"\nlease-renew = \"5s\"\n")
            .expect_err("refused")
            .to_string();
        assert!(err.contains("coordinator.toml:2:"), "{err}");
        assert!(err.contains("\"lease-renew\""), "{err}");
        assert!(err.contains("less than half"), "{err}");
        let err = check_text("lease-ttl = \"3s\"\n")
            .expect_err("refused")
            .to_string();
        assert!(
            err.contains("coordinator.toml:1:") && err.contains("\"lease-ttl\""),
            "{err}"
        );
        check_text("lease-ttl = \"30s\"\nlease-renew = \"5s\"\n").expect("valid");
    }

    #[test]
    fn advertise_must_be_host_and_port() {
        check_text("advertise = \"coord-2.example.com:7443\"\n").expect("valid");
        check_text("advertise = \"[::1]:7443\"\n").expect("valid");
        for bad in ["coord-2.example.com", "coord:0", ":7443", "a b:1"] {
            let err = check_text(&format!("advertise = \"{bad}\"\n"))
                .expect_err(bad)
                .to_string();
            assert!(err.contains("\"advertise\""), "{bad}: {err}");
        }
    }

    #[test]
    fn coordinator_is_a_list() {
        let out = check_text("coordinator = [\"a:7443\", \"b:7443\"]\n").expect("valid");
        assert_eq!(
            out["coordinator"]["value"],
            serde_json::json!(["a:7443", "b:7443"])
        );
    }
}
