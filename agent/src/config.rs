//! `run`'s layered configuration: `--config FILE` (or `HELIX_CONFIG`, or
//! /etc/helix/agent.toml when it exists), its drop-ins, `HELIX_*` variables and flags,
//! with the clap command as the schema (see the helix-config crate). The keys are
//! `run`'s long flags and the global ones (`log-level`, `log-format`).
//!
//! The same layering runs again on SIGHUP ([`reload`]) with the original command
//! line, so flags still win over whatever the files now say.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{CommandFactory, FromArgMatches};
use helix_config::{apply, files_of, read_files, ConfigError, FileLayer};

use crate::cli::{Cli, Command, RunArgs};

/// Read when `run` is given no `--config` (nor `HELIX_CONFIG`) and the file exists.
pub(crate) const DEFAULT_CONFIG: &str = "/etc/helix/agent.toml";

/// A `run` command line resolved against its configuration.
#[derive(Debug)]
pub(crate) struct Resolved {
    pub(crate) cli: Cli,
    /// The configuration file read, if any.
    pub(crate) file: Option<PathBuf>,
    /// Every key's effective value and source (`helix_config::effective`).
    pub(crate) effective: serde_json::Value,
}

impl Resolved {
    /// `run`'s arguments.
    pub(crate) fn run_args(&self) -> &RunArgs {
        match &self.cli.command {
            Command::Run(args) => args,
            _ => unreachable!("resolved from a run command line"),
        }
    }
}

/// The schema of a `run` configuration file: `run`'s flags and the global ones.
fn schema(root: &clap::Command) -> clap::Command {
    let mut root = root.clone();
    root.build();
    let run = root.find_subcommand("run").expect("run subcommand").clone();
    let globals: Vec<clap::Arg> = root
        .get_arguments()
        .filter(|a| a.is_global_set())
        .cloned()
        .collect();
    clap::Command::new("run")
        .args(globals)
        .args(run.get_arguments().filter(|a| !a.is_global_set()).cloned())
}

/// The root command with `layer` applied as defaults.
fn layered(layer: &FileLayer) -> clap::Command {
    let root = apply(Cli::command(), layer);
    root.mut_subcommand("run", |s| apply(s, layer))
}

/// Read `file` and its drop-ins as a `run` configuration.
pub(crate) fn load(file: &Path) -> Result<FileLayer, ConfigError> {
    read_files(&schema(&Cli::command()), &files_of(file)?)
}

/// The subcommand `argv` runs (its first word that is not an option or an option's
/// value).
fn subcommand(argv: &[OsString]) -> Option<String> {
    let mut skip_value = false;
    for a in argv.iter().skip(1) {
        let s = a.to_string_lossy();
        if skip_value {
            skip_value = false;
            continue;
        }
        if s.starts_with("--") {
            // Global options that take a value in the next word.
            skip_value = !s.contains('=') && matches!(s.as_ref(), "--log-level" | "--log-format");
            continue;
        }
        return Some(s.into_owned());
    }
    None
}

/// The configuration file for `argv`: `--config`, else `HELIX_CONFIG`, else
/// [`DEFAULT_CONFIG`] if it exists.
pub(crate) fn config_file(argv: &[OsString]) -> Option<PathBuf> {
    helix_config::config_file(argv, Path::new(DEFAULT_CONFIG))
}

/// Parse the command line, layering the configuration under `run`'s flags. `--help`
/// and usage errors exit here, as clap does. For other subcommands than `run`,
/// `file` is `None` and `effective` is null.
pub(crate) fn parse(argv: Vec<OsString>) -> Result<Resolved, String> {
    if subcommand(&argv).as_deref() != Some("run") {
        return Ok(Resolved {
            cli: <Cli as clap::Parser>::parse_from(argv),
            file: None,
            effective: serde_json::Value::Null,
        });
    }
    let file = config_file(&argv);
    let layer = match &file {
        Some(f) => load(f).map_err(|e| e.to_string())?,
        None => FileLayer::default(),
    };
    let root = layered(&layer);
    let matches = root.clone().get_matches_from(&argv);
    let (file, effective) = resolved(&root, &matches, &layer, file).map_err(|e| e.to_string())?;
    let cli = Cli::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    Ok(Resolved {
        cli,
        file,
        effective,
    })
}

/// The configuration file and the effective values of `matches`.
fn resolved(
    root: &clap::Command,
    matches: &clap::ArgMatches,
    layer: &FileLayer,
    file: Option<PathBuf>,
) -> Result<(Option<PathBuf>, serde_json::Value), clap::Error> {
    let (_, run_matches) = matches
        .subcommand()
        .ok_or_else(|| clap::Error::raw(clap::error::ErrorKind::MissingSubcommand, "run"))?;
    let mut built = root.clone();
    built.build();
    let run_cmd = built
        .find_subcommand("run")
        .expect("run subcommand")
        .clone();
    let mut out = helix_config::effective(&run_cmd, run_matches, layer);
    if let serde_json::Value::Object(map) = &mut out {
        map.remove("config");
    }
    Ok((file, out))
}

/// Resolve `argv` (a `run` command line) again: re-read the configuration file and
/// its drop-ins, and the environment; flags still win. For SIGHUP.
pub(crate) fn reload(argv: &[OsString]) -> Result<Resolved, String> {
    let file = config_file(argv);
    let layer = match &file {
        Some(f) => load(f).map_err(|e| e.to_string())?,
        None => FileLayer::default(),
    };
    resolve_with(argv, &layer, file)
}

/// Resolve `argv` over `layer` without exiting on errors.
pub(crate) fn resolve_with(
    argv: &[OsString],
    layer: &FileLayer,
    file: Option<PathBuf>,
) -> Result<Resolved, String> {
    let root = layered(layer);
    let matches = root
        .clone()
        .try_get_matches_from(argv)
        .map_err(|e| e.to_string())?;
    let (file, effective) = resolved(&root, &matches, layer, file).map_err(|e| e.to_string())?;
    let cli = Cli::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    if !matches!(cli.command, Command::Run(_)) {
        return Err("not a run command line".into());
    }
    Ok(Resolved {
        cli,
        file,
        effective,
    })
}

/// `config check FILE`: the effective `run` configuration as JSON (each key's value
/// and source), as `helix-agent run --config FILE` would use it here (with this
/// environment).
pub(crate) fn check(file: &Path) -> Result<serde_json::Value, ConfigError> {
    let layer = load(file)?;
    let argv: Vec<OsString> = ["helix-agent", "run"].iter().map(OsString::from).collect();
    resolve_with(&argv, &layer, Some(file.to_path_buf()))
        .map(|r| r.effective)
        .map_err(|message| ConfigError::InvalidValue {
            path: file.display().to_string(),
            line: 0,
            key: String::new(),
            message,
        })
}

#[cfg(test)]
mod tests;
