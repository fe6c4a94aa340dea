//! Layered configuration for the Helix binaries.
//!
//! Precedence, lowest first: built-in default < config file < drop-ins
//! (`FILE.d/*.toml`, in lexical order) < `HELIX_*` environment variable < flag.
//!
//! Every long flag of a subcommand is a key of the same kebab-case name; repeatable
//! flags are lists. The clap command is the single schema: values from files become
//! the arguments' defaults, so clap itself applies the env and flag layers above them
//! (and a flag replaces a list from a file instead of appending to it). Every value
//! from a file is checked with the argument's own value parser before anything
//! starts, and a bad one is reported with the file, line and key.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::ArgAction;
use toml::de::{DeTable, DeValue};

/// Keys that are never read from a file: the file's own path, and the help flags.
const NOT_IN_FILES: &[&str] = &["config", "help", "version"];

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: invalid TOML at line {line}: {message}")]
    Syntax {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{path}:{line}: unknown key \"{key}\" (known keys: {known})")]
    UnknownKey {
        path: String,
        line: usize,
        key: String,
        known: String,
    },
    #[error("{path}:{line}: key \"{key}\" must be {expected}, not {found}")]
    WrongType {
        path: String,
        line: usize,
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("{path}:{line}: invalid value for \"{key}\": {message}")]
    InvalidValue {
        path: String,
        line: usize,
        key: String,
        message: String,
    },
}

/// Where one key's value came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Origin {
    pub path: String,
    pub line: usize,
}

/// Values read from the file and drop-ins, before env and flags.
#[derive(Debug, Default, Clone)]
pub struct FileLayer {
    /// Key → (values, origin); scalar keys hold one value.
    pub values: BTreeMap<String, (Vec<String>, Origin)>,
    /// The files read, in order.
    pub files: Vec<PathBuf>,
}

/// The files that make up a configuration: `file` itself, then `file.d/*.toml` in
/// lexical order. A missing `file.d` is fine.
pub fn files_of(file: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let mut files = vec![file.to_path_buf()];
    let mut dropin = file.as_os_str().to_owned();
    dropin.push(".d");
    let dropin = PathBuf::from(dropin);
    match std::fs::read_dir(&dropin) {
        Ok(entries) => {
            let mut extra: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
                .collect();
            extra.sort();
            files.extend(extra);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ConfigError::Read {
                path: dropin.display().to_string(),
                source,
            })
        }
    }
    Ok(files)
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "a list",
        DeValue::Table(_) => "a table",
    }
}

fn scalar(v: &DeValue<'_>) -> Option<String> {
    match v {
        DeValue::String(s) => Some(s.to_string()),
        DeValue::Integer(i) => Some(i.as_str().to_string()),
        DeValue::Float(f) => Some(f.as_str().to_string()),
        DeValue::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Read `files` (later ones override earlier ones key by key) against `cmd`'s
/// arguments, checking keys, types and values.
pub fn read_files(cmd: &clap::Command, files: &[PathBuf]) -> Result<FileLayer, ConfigError> {
    let mut layer = FileLayer::default();
    let args: BTreeMap<String, &clap::Arg> = cmd
        .get_arguments()
        .filter_map(|a| a.get_long().map(|l| (l.to_string(), a)))
        .filter(|(l, _)| !NOT_IN_FILES.contains(&l.as_str()))
        .collect();
    for path in files {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let table = DeTable::parse(&text).map_err(|e| ConfigError::Syntax {
            path: shown.clone(),
            line: e.span().map(|s| line_of(&text, s.start)).unwrap_or(1),
            message: e.message().to_string(),
        })?;
        for (key, value) in table.get_ref().iter() {
            let line = line_of(&text, key.span().start);
            let name = key.get_ref().to_string();
            let origin = Origin {
                path: shown.clone(),
                line,
            };
            let Some(arg) = args.get(&name) else {
                return Err(ConfigError::UnknownKey {
                    path: shown,
                    line,
                    key: name,
                    known: args.keys().cloned().collect::<Vec<_>>().join(", "),
                });
            };
            let value = value.get_ref();
            let values: Vec<String> = match arg.get_action() {
                ArgAction::SetTrue | ArgAction::SetFalse => match value {
                    DeValue::Boolean(b) => vec![b.to_string()],
                    other => {
                        return Err(ConfigError::WrongType {
                            path: shown,
                            line,
                            key: name,
                            expected: "true or false",
                            found: type_name(other),
                        })
                    }
                },
                ArgAction::Append => match value {
                    DeValue::Array(items) => {
                        let mut out = Vec::new();
                        for item in items.iter() {
                            match scalar(item.get_ref()) {
                                Some(s) => out.push(s),
                                None => {
                                    return Err(ConfigError::WrongType {
                                        path: shown,
                                        line,
                                        key: name,
                                        expected: "a list of strings",
                                        found: type_name(item.get_ref()),
                                    })
                                }
                            }
                        }
                        out
                    }
                    other => match scalar(other) {
                        Some(s) => vec![s],
                        None => {
                            return Err(ConfigError::WrongType {
                                path: shown,
                                line,
                                key: name,
                                expected: "a list of strings",
                                found: type_name(other),
                            })
                        }
                    },
                },
                _ => match scalar(value) {
                    Some(s) => vec![s],
                    None => {
                        return Err(ConfigError::WrongType {
                            path: shown,
                            line,
                            key: name,
                            expected: "a string or number",
                            found: type_name(value),
                        })
                    }
                },
            };
            // Check each value with the argument's own parser now, so a bad value is
            // reported against its file and line.
            let is_flag = matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse);
            for v in values.iter().filter(|_| !is_flag) {
                let probe = clap::Command::new("config")
                    .no_binary_name(true)
                    .arg((*arg).clone().required(false).env(None::<&str>));
                if let Err(e) = probe.try_get_matches_from([format!("--{name}"), v.clone()]) {
                    let message = e.to_string();
                    let message = message
                        .trim()
                        .trim_start_matches("error: ")
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_string();
                    return Err(ConfigError::InvalidValue {
                        path: shown,
                        line,
                        key: name,
                        message,
                    });
                }
            }
            layer.values.insert(name, (values, origin));
        }
        layer.files.push(path.clone());
    }
    Ok(layer)
}

/// Make the file layer the defaults of `cmd`'s arguments, so clap's own env and flag
/// handling sits on top of it.
pub fn apply(cmd: clap::Command, layer: &FileLayer) -> clap::Command {
    let mut cmd = cmd;
    for (key, (values, _)) in &layer.values {
        let id = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()))
            .map(|a| a.get_id().clone());
        let Some(id) = id else { continue };
        let values: Vec<clap::builder::OsStr> = values
            .iter()
            .map(|v| clap::builder::OsStr::from(clap::builder::Str::from(v.clone())))
            .collect();
        cmd = cmd.mut_arg(id, |a| {
            if values.is_empty() {
                a.default_values(Vec::<clap::builder::OsStr>::new())
            } else {
                a.default_values(values)
            }
        });
    }
    cmd
}

/// The configuration file a binary reads: `--config FILE`, else `HELIX_CONFIG` (when
/// not empty), else `default` if it exists (a package installs it; without one the
/// built-in defaults and flags are enough).
pub fn config_file(argv: &[OsString], default: &Path) -> Option<PathBuf> {
    config_flag(argv)
        .or_else(|| {
            std::env::var_os("HELIX_CONFIG")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .or_else(|| default.exists().then(|| default.to_path_buf()))
}

/// The `--config FILE` given in `argv` (either `--config FILE` or `--config=FILE`).
pub fn config_flag(argv: &[OsString]) -> Option<PathBuf> {
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = s.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    None
}

/// The effective value of every argument of `matches` for `config check`: what the
/// process would run with, and where each value came from.
pub fn effective(
    cmd: &clap::Command,
    matches: &clap::ArgMatches,
    layer: &FileLayer,
) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if NOT_IN_FILES.contains(&long) {
            continue;
        }
        let id = arg.get_id().as_str();
        let raw: Vec<String> = matches
            .get_raw(id)
            .map(|vals| vals.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let source = match matches.value_source(id) {
            Some(clap::parser::ValueSource::CommandLine) => "flag".to_string(),
            Some(clap::parser::ValueSource::EnvVariable) => "environment".to_string(),
            Some(clap::parser::ValueSource::DefaultValue) => match layer.values.get(long) {
                Some((_, o)) => format!("{}:{}", o.path, o.line),
                None => "default".to_string(),
            },
            _ => "default".to_string(),
        };
        let value = match arg.get_action() {
            ArgAction::Append => serde_json::json!(raw),
            ArgAction::SetTrue | ArgAction::SetFalse => {
                serde_json::json!(raw.first().map(|v| v == "true").unwrap_or(false))
            }
            _ => serde_json::json!(raw.first()),
        };
        out.insert(
            long.to_string(),
            serde_json::json!({ "value": value, "source": source }),
        );
    }
    serde_json::Value::Object(out)
}

#[cfg(test)]
mod tests;
