//! Command-line surface of `helix-agent`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use helix_agent::BuilderKind;

/// Where the data directory is by default (the systemd unit's StateDirectory).
pub(crate) const DEFAULT_DATA_DIR: &str = "/var/lib/helix-agent";

#[derive(Debug, Parser)]
#[command(name = "helix-agent", version, about = "Helix build farm agent")]
pub(crate) struct Cli {
    /// Log filter (also RUST_LOG), e.g. info or helix_agent=debug.
    #[arg(long, global = true, default_value = "info")]
    pub(crate) log_level: String,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Enrol this host with a join token (once); stores its identity in --data-dir.
    Join(JoinArgs),
    /// Connect to the coordinator and serve it until stopped (SIGTERM/SIGINT).
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub(crate) struct JoinArgs {
    /// The coordinator, HOST:PORT.
    #[arg(long, env = "HELIX_COORDINATOR")]
    pub(crate) coordinator: String,
    /// The join token printed by `helix-coordinator token create`.
    #[arg(long, env = "HELIX_JOIN_TOKEN", hide_env_values = true)]
    pub(crate) token: String,
    /// Where to store the agent's identity (created 0700).
    #[arg(long, env = "HELIX_AGENT_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub(crate) data_dir: PathBuf,
    /// The agent's name in listings [default: the host name].
    #[arg(long)]
    pub(crate) name: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The directory `join` filled.
    #[arg(long, env = "HELIX_AGENT_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub(crate) data_dir: PathBuf,
    /// The coordinator, HOST:PORT [default: the one joined through].
    #[arg(long, env = "HELIX_COORDINATOR")]
    pub(crate) coordinator: Option<String>,
    /// A platform this host builds natively, e.g. linux/arm64 (repeatable, or a comma
    /// list). Replaces the detected platform.
    #[arg(long = "platform", value_name = "PLATFORM")]
    pub(crate) platforms: Vec<String>,
    /// How many jobs to run at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) capacity: u32,
    /// A label for scheduling, KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub(crate) labels: Vec<(String, String)>,
    /// A connection silent this long is dead (keep-alives go out at a third of it).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) idle_timeout: Duration,
    /// The image builder: buildah or podman.
    #[arg(long, default_value = "buildah", value_parser = parse_builder)]
    pub(crate) builder: BuilderKind,
    /// A registry to push to over plain HTTP, HOST:PORT as image references spell it
    /// (repeatable). Use the same list as the coordinator's.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub(crate) insecure_registries: Vec<String>,
    /// How long a cancelled build gets between SIGTERM and SIGKILL.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) cancel_grace: Duration,
    /// On SIGTERM/SIGINT, how long running jobs may still finish before they are
    /// cancelled and retried elsewhere (a second signal stops everything at once).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub(crate) drain_deadline: Duration,
}

fn parse_builder(s: &str) -> Result<BuilderKind, String> {
    s.parse()
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("the label {s:?} has an empty key"));
    }
    if key.len() > 256 || value.len() > 256 {
        return Err("label keys and values are at most 256 bytes".into());
    }
    Ok((key.to_string(), value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn buildah_and_podman_are_accepted_as_builders() {
        use clap::Parser as _;
        let parse = |builder: &str| {
            Cli::try_parse_from(["helix-agent", "run", "--builder", builder])
                .map(|cli| match cli.command {
                    Command::Run(args) => args.builder,
                    Command::Join(_) => unreachable!("run"),
                })
                .map_err(|e| e.to_string())
        };
        assert_eq!(parse("buildah"), Ok(BuilderKind::Buildah));
        assert_eq!(parse("podman"), Ok(BuilderKind::Podman));
        let err = parse("buildx").expect_err("not yet");
        assert!(
            err.contains("the buildx builder is not supported yet"),
            "{err}"
        );
        let err = parse("kaniko").expect_err("unknown");
        assert!(err.contains("unknown builder \"kaniko\""), "{err}");
        let cli = Cli::try_parse_from([
            "helix-agent",
            "run",
            "--insecure-registry",
            "127.0.0.1:5000",
            "--insecure-registry",
            "registry.lan:5000",
        ])
        .expect("parse");
        let Command::Run(args) = cli.command else {
            unreachable!("run")
        };
        assert_eq!(args.builder, BuilderKind::Buildah, "the default");
        assert_eq!(
            args.insecure_registries,
            ["127.0.0.1:5000", "registry.lan:5000"]
        );
        assert_eq!(args.cancel_grace, Duration::from_secs(10));
        assert_eq!(args.drain_deadline, Duration::from_secs(600));
        let cli =
            Cli::try_parse_from(["helix-agent", "run", "--drain-deadline", "30s"]).expect("parse");
        let Command::Run(args) = cli.command else {
            unreachable!("run")
        };
        assert_eq!(args.drain_deadline, Duration::from_secs(30));
        assert!(Cli::try_parse_from(["helix-agent", "run", "--drain-deadline", "soon"]).is_err());
    }

    #[test]
    fn labels_are_key_value() {
        assert_eq!(parse_label("zone=eu-1"), Ok(("zone".into(), "eu-1".into())));
        assert_eq!(parse_label("gpu="), Ok(("gpu".into(), String::new())));
        assert_eq!(parse_label("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_label("zone").is_err());
        assert!(parse_label("=x").is_err());
    }
}
