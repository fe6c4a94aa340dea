//! What each subcommand does.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use helix_agent::doctor::{self, Check, DoctorOptions, RealMachine, Status};
use helix_agent::enrol::JoinTokenConfig;
use helix_agent::host;
use helix_agent::join::{join, JoinError, JoinOptions};
use helix_agent::run::{run as run_agent, LiveSettings, RunContext, RunOptions};
use helix_agent::service::Systemd;
use helix_agent::DataDir;
use helix_config::FileLayer;
use helix_protocol::JoinToken;
use helix_transport::connect::ConnectError;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::cli::{Command, ConfigCommand, DoctorArgs, JoinArgs, RunArgs};
use crate::config::{self, Resolved};
use crate::logging::LogControl;
use crate::reload::{self, Effect};

/// The environment variable a join token may come from (never a flag of `run`).
const JOIN_TOKEN_ENV: &str = "HELIX_JOIN_TOKEN";

/// An error in what the user asked for (exit code 2), as opposed to a failure to do it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub String);

pub(crate) fn exit_code_for(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<UsageError>().is_some() {
        return 2;
    }
    if let Some(e) = e.downcast_ref::<JoinError>() {
        return match e {
            JoinError::AlreadyJoined { .. }
            | JoinError::InvalidName(_)
            | JoinError::NoCoordinator
            | JoinError::Connect(ConnectError::BadAddress(_)) => 2,
            _ => 1,
        };
    }
    1
}

pub(crate) async fn run(
    resolved: Resolved,
    argv: Vec<OsString>,
    log: LogControl,
) -> anyhow::Result<ExitCode> {
    match resolved.cli.command {
        Command::Join(args) => join_cmd(args).await,
        Command::Run(_) => run_cmd(resolved, argv, log).await,
        Command::Config(ConfigCommand::Check { file, json }) => config_check(&file, json),
        Command::Doctor(args) => doctor_cmd(args).await,
    }
}

async fn join_cmd(args: JoinArgs) -> anyhow::Result<ExitCode> {
    let (text, origin) = match (&args.token_file, &args.token) {
        (Some(path), _) => (
            helix_transport::files::read_secret(path)
                .map_err(|e| UsageError(format!("cannot use --token-file: {e}")))?,
            "--token-file",
        ),
        (None, Some(token)) => (token.clone(), "--token"),
        (None, None) => return Err(UsageError("give --token-file FILE".into()).into()),
    };
    let token: JoinToken = text
        .trim()
        .parse()
        .map_err(|e| UsageError(format!("invalid {origin}: {e}")))?;
    let name = args.name.unwrap_or_else(host::default_name);
    let dir = DataDir::new(&args.data_dir);
    let opts = JoinOptions {
        coordinators: args.coordinators,
        token,
        data_dir: dir.clone(),
        name,
    };
    let joined = join(&opts).await?;
    eprintln!(
        "Joined cluster {} as agent {} ({}). Next: helix-agent run --data-dir {}",
        joined.cluster,
        joined.agent_id,
        joined.name,
        dir.root().display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `HELIX_JOIN_TOKEN`, when set and not empty.
fn env_token() -> Option<String> {
    std::env::var(JOIN_TOKEN_ENV)
        .ok()
        .filter(|v| !v.trim().is_empty())
}

/// The platforms to advertise: the configured ones, or this host's.
fn platforms_of(args: &RunArgs) -> Result<Vec<helix_protocol::Platform>, UsageError> {
    if args.platforms.is_empty() {
        Ok(vec![host::host_platform().map_err(|e| {
            UsageError(format!(
                "cannot tell this host's platform: {e}; set platform in the configuration (or --platform)"
            ))
        })?])
    } else {
        host::parse_platform_flags(&args.platforms)
            .map_err(|e| UsageError(format!("invalid platform: {e}")))
    }
}

fn run_options(args: &RunArgs) -> Result<RunOptions, UsageError> {
    let metrics_listen = match args.metrics_listen.trim() {
        "" => None,
        addr => Some(addr.parse().map_err(|_| {
            UsageError(format!(
                "invalid metrics-listen {addr:?}: expected HOST:PORT, e.g. 127.0.0.1:9465"
            ))
        })?),
    };
    Ok(RunOptions {
        data_dir: DataDir::new(&args.data_dir),
        coordinators: args.coordinators.clone(),
        platforms: platforms_of(args)?,
        capacity: args.capacity,
        labels: args.labels.iter().cloned().collect(),
        idle_timeout: args.idle_timeout,
        builder: args.builder,
        insecure_registries: args.insecure_registries.clone(),
        cancel_grace: args.cancel_grace,
        drain_deadline: args.drain_deadline,
        name: args.name.clone(),
        join_token: JoinTokenConfig {
            file: args.join_token_file.clone(),
            env: env_token(),
        },
        metrics_listen,
    })
}

fn live_settings(args: &RunArgs) -> LiveSettings {
    LiveSettings {
        capacity: args.capacity,
        labels: args.labels.iter().cloned().collect(),
    }
}

async fn run_cmd(
    resolved: Resolved,
    argv: Vec<OsString>,
    log: LogControl,
) -> anyhow::Result<ExitCode> {
    // First of all: SIGHUP's default action would end the agent.
    let mut hup = signal(SignalKind::hangup()).context("install the SIGHUP handler")?;
    // SIGTERM and SIGINT drain the agent (running jobs finish, up to the drain
    // deadline); a second one kills the builds and exits at once.
    let mut term = signal(SignalKind::terminate()).context("install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install the SIGINT handler")?;

    let args = resolved.run_args();
    let opts = run_options(args)?;
    match &resolved.file {
        Some(file) => info!("configuration: {}", file.display()),
        None => info!("no configuration file: built-in defaults, HELIX_* variables and flags"),
    }
    let (live_tx, live_rx) = watch::channel(live_settings(args));
    let ctx = RunContext {
        service: Arc::new(Systemd),
        live: Some(live_rx),
    };
    let mut running_with = resolved.effective.clone();
    let shutdown = CancellationToken::new();
    let agent = run_agent(opts, ctx, shutdown.clone());
    tokio::pin!(agent);
    loop {
        tokio::select! {
            result = &mut agent => {
                return Ok(match result {
                    Ok(()) => {
                        info!("stopped");
                        ExitCode::SUCCESS
                    }
                    // Logged here, once, so it lands in the service's log with the rest.
                    Err(e) => {
                        error!("{e}");
                        ExitCode::from(if e.is_usage() { 2 } else { 1 })
                    }
                });
            }
            _ = hup.recv() => {
                running_with = reconfigure(&argv, &running_with, &live_tx, &log);
                continue;
            }
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        if shutdown.is_cancelled() {
            warn!("second signal: killing the running builds and exiting now");
            helix_agent::builder::process::kill_all_groups();
            return Ok(ExitCode::SUCCESS);
        }
        info!("signal received: draining (send it again to stop at once)");
        shutdown.cancel();
    }
}

/// SIGHUP: read the configuration again and apply what can change live; returns the
/// configuration the agent runs with now.
fn reconfigure(
    argv: &[OsString],
    running_with: &serde_json::Value,
    live: &watch::Sender<LiveSettings>,
    log: &LogControl,
) -> serde_json::Value {
    info!("SIGHUP: reading the configuration again");
    let new = match config::reload(argv) {
        Ok(new) => new,
        Err(e) => {
            error!("SIGHUP: the configuration is not valid, nothing changed: {e}");
            return running_with.clone();
        }
    };
    let changes = reload::diff(running_with, &new.effective);
    if changes.is_empty() {
        info!("SIGHUP: the configuration did not change");
        return running_with.clone();
    }
    for change in &changes {
        let (key, old, value) = (&change.key, &change.old, &change.new);
        match change.effect {
            Effect::Live if key == "log-level" => match log.set_level(&new.cli.log_level) {
                Ok(()) => info!("changed log-level: {old} -> {value}"),
                Err(e) => warn!("changed log-level to {value}, but it does not apply: {e}"),
            },
            Effect::Live => info!("changed {key}: {old} -> {value}"),
            Effect::EnrolmentOnly => {
                info!("changed {key}: only used when enrolling, and this host is enrolled")
            }
            Effect::Restart => warn!(
                "changed {key}: takes effect after a restart (running with {old}, configured {value})"
            ),
        }
    }
    let settings = live_settings(new.run_args());
    live.send_if_modified(|current| {
        let modified = *current != settings;
        *current = settings;
        modified
    });
    reload::applied(running_with, &new.effective)
}

fn config_check(file: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    let effective = config::check(file).map_err(|e| UsageError(e.to_string()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&effective)?);
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("{}: valid", file.display());
    if let serde_json::Value::Object(map) = &effective {
        for (key, v) in map {
            let value = match &v["value"] {
                serde_json::Value::String(s) if s.is_empty() => "\"\"".to_string(),
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "(unset)".to_string(),
                other => other.to_string(),
            };
            println!(
                "{key:<20} {value:<40} # {}",
                v["source"].as_str().unwrap_or("")
            );
        }
    }
    if env_token().is_some() {
        eprintln!(
            "note: {JOIN_TOKEN_ENV} is set (its value is not shown); it wins over join-token-file"
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn doctor_cmd(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let file = args.config.clone().or_else(|| {
        std::path::Path::new(config::DEFAULT_CONFIG)
            .exists()
            .then(|| PathBuf::from(config::DEFAULT_CONFIG))
    });
    let mut checks = Vec::new();
    let layer = match &file {
        Some(f) => match config::load(f) {
            Ok(layer) => {
                checks.push(Check::new(
                    "config",
                    Status::Ok,
                    format!("{}: valid", f.display()),
                ));
                layer
            }
            Err(e) => {
                checks.push(Check::new("config", Status::Fail, e.to_string()));
                FileLayer::default()
            }
        },
        None => {
            checks.push(Check::new(
                "config",
                Status::Ok,
                format!(
                    "no configuration file ({} does not exist): built-in defaults and HELIX_* variables",
                    config::DEFAULT_CONFIG
                ),
            ));
            FileLayer::default()
        }
    };
    let mut argv: Vec<OsString> = vec!["helix-agent".into(), "run".into()];
    if let Some(dir) = &args.data_dir {
        argv.push("--data-dir".into());
        argv.push(dir.into());
    }
    let resolved = match config::resolve_with(&argv, &layer, file.clone()) {
        Ok(resolved) => resolved,
        Err(e) => {
            checks.push(Check::new("config", Status::Fail, e));
            config::resolve_with(&argv, &FileLayer::default(), None)
                .map_err(|e| UsageError(format!("the environment is not valid: {e}")))?
        }
    };
    let run_args = resolved.run_args();
    checks.push(match platforms_of(run_args) {
        Ok(platforms) => Check::new(
            "platforms",
            Status::Ok,
            format!(
                "{}{}",
                platforms
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                if run_args.platforms.is_empty() {
                    " (detected)"
                } else {
                    ""
                }
            ),
        ),
        Err(e) => Check::new("platforms", Status::Fail, e.0),
    });
    let opts = DoctorOptions {
        data_dir: DataDir::new(&run_args.data_dir),
        builder: run_args.builder,
        coordinators: run_args.coordinators.clone(),
        token: JoinTokenConfig {
            file: run_args.join_token_file.clone(),
            env: env_token(),
        },
    };
    checks.extend(doctor::diagnose(&opts, &RealMachine).await);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&doctor::json(&checks))?);
    } else {
        print!("{}", doctor::table(&checks));
    }
    Ok(if doctor::failed(&checks) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
