//! `serve`'s layered configuration: `--config FILE` (or /etc/helix/coordinator.toml
//! when present), its drop-ins, `HELIX_*` variables and flags, with the clap command
//! as the schema (see the helix-config crate).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{CommandFactory, FromArgMatches};
use helix_config::{apply, config_flag, files_of, read_files, ConfigError, FileLayer};

use crate::cli::Cli;

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
    let file = config_flag(&argv)
        .or_else(|| std::env::var_os("HELIX_CONFIG").map(PathBuf::from))
        .or_else(|| {
            Path::new(DEFAULT_CONFIG)
                .exists()
                .then(|| PathBuf::from(DEFAULT_CONFIG))
        });
    let layer = match file {
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
    }
    Ok(out)
}

trait ParseFrom {
    fn parse_from_args(argv: Vec<OsString>) -> Self;
}

impl ParseFrom for Cli {
    fn parse_from_args(argv: Vec<OsString>) -> Self {
        <Cli as clap::Parser>::parse_from(argv)
    }
}
