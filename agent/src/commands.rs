//! What each subcommand does.

use std::process::ExitCode;

use anyhow::Context as _;
use helix_agent::host;
use helix_agent::join::{join, JoinError, JoinOptions};
use helix_agent::run::{run as run_agent, RunOptions};
use helix_agent::DataDir;
use helix_protocol::JoinToken;
use helix_transport::connect::ConnectError;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::cli::{Cli, Command, JoinArgs, RunArgs};

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
            | JoinError::Connect(ConnectError::BadAddress(_)) => 2,
            _ => 1,
        };
    }
    1
}

pub(crate) async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Join(args) => join_cmd(args).await,
        Command::Run(args) => run_cmd(args).await,
    }
}

async fn join_cmd(args: JoinArgs) -> anyhow::Result<ExitCode> {
    let token: JoinToken = args
        .token
        .parse()
        .map_err(|e| UsageError(format!("invalid --token: {e}")))?;
    let name = match args.name {
        Some(name) => {
            helix_protocol::identity::validate_admin_name(&name)
                .map_err(|e| UsageError(format!("invalid --name: {e}")))?;
            name
        }
        None => host::default_name(),
    };
    let dir = DataDir::new(&args.data_dir);
    let opts = JoinOptions {
        coordinator: args.coordinator,
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

async fn run_cmd(args: RunArgs) -> anyhow::Result<ExitCode> {
    let platforms = if args.platforms.is_empty() {
        vec![host::host_platform().map_err(|e| {
            UsageError(format!(
                "cannot tell this host's platform: {e}; give it with --platform"
            ))
        })?]
    } else {
        host::parse_platform_flags(&args.platforms)
            .map_err(|e| UsageError(format!("invalid --platform: {e}")))?
    };
    let opts = RunOptions {
        data_dir: DataDir::new(&args.data_dir),
        coordinator: args.coordinator,
        platforms,
        capacity: args.capacity,
        labels: args.labels.into_iter().collect(),
        idle_timeout: args.idle_timeout,
        builder: args.builder,
        insecure_registries: args.insecure_registries,
        cancel_grace: args.cancel_grace,
        drain_deadline: args.drain_deadline,
    };

    // SIGTERM and SIGINT drain the agent (running jobs finish, up to the drain
    // deadline); a second one kills the builds and exits at once.
    let mut term = signal(SignalKind::terminate()).context("install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install the SIGINT handler")?;
    let shutdown = CancellationToken::new();
    let agent = run_agent(opts, shutdown.clone());
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
