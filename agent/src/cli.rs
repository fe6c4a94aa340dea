//! Command-line surface of `helix-agent`.
//!
//! Every flag of `run` (and the global ones) is also a key of its configuration file
//! (see `config.rs`) and a `HELIX_*` environment variable; repeatable flags are lists
//! in files and comma-separated in the environment. Each value parser here also
//! checks values from files, so a bad one is refused at start-up with its file, line
//! and key.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use helix_agent::BuilderKind;

/// Where the data directory is by default (the systemd unit's StateDirectory).
pub(crate) const DEFAULT_DATA_DIR: &str = "/var/lib/helix-agent";

#[derive(Debug, Parser)]
#[command(name = "helix-agent", version, about = "Helix build farm agent")]
pub(crate) struct Cli {
    /// Log filter (RUST_LOG wins when set), e.g. info or helix_agent=debug.
    #[arg(
        long,
        global = true,
        env = "HELIX_LOG_LEVEL",
        default_value = "info",
        value_parser = parse_log_level
    )]
    pub(crate) log_level: String,
    /// Log format: text (for journald and terminals) or json (one object per line).
    #[arg(long, global = true, env = "HELIX_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub(crate) log_format: String,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Enrol this host with a join token (once); stores its identity in --data-dir.
    /// (`run` with join-token-file does this by itself on its first start.)
    Join(JoinArgs),
    /// Connect to the coordinator and serve it until stopped (SIGTERM/SIGINT drain
    /// it; SIGHUP reloads the configuration).
    Run(RunArgs),
    /// Check configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Check this host: the builder, the data dir and its free space, the enrolment
    /// and certificate, the clock, and that the coordinator is reachable.
    Doctor(DoctorArgs),
}

#[derive(Debug, Args)]
pub(crate) struct JoinArgs {
    /// The coordinator, HOST:PORT (repeatable, or a comma list: tried in turn; a
    /// standby coordinator sends the agent on to the leader).
    #[arg(
        long = "coordinator",
        value_name = "COORDINATOR",
        env = "HELIX_COORDINATOR",
        value_delimiter = ',',
        required = true,
        value_parser = parse_address
    )]
    pub(crate) coordinators: Vec<String>,
    /// The join token printed by `helix-coordinator token create`. Prefer
    /// --token-file or HELIX_JOIN_TOKEN: a command line is visible to every user.
    #[arg(
        long,
        env = "HELIX_JOIN_TOKEN",
        hide_env_values = true,
        required_unless_present = "token_file"
    )]
    pub(crate) token: Option<String>,
    /// A file holding the join token, readable only by its owner (mode 0600).
    #[arg(long)]
    pub(crate) token_file: Option<PathBuf>,
    /// Where to store the agent's identity (created 0700).
    #[arg(long, env = "HELIX_AGENT_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub(crate) data_dir: PathBuf,
    /// The agent's name in listings [default: the host name].
    #[arg(long, value_parser = parse_name)]
    pub(crate) name: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Configuration file [default: /etc/helix/agent.toml when it exists], plus its
    /// FILE.d/*.toml drop-ins. Every flag of `run` is a key of the same name.
    #[arg(long, env = "HELIX_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// The data directory: identity, job work dirs, results, image storage.
    #[arg(long, env = "HELIX_AGENT_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub(crate) data_dir: PathBuf,
    /// The coordinator, HOST:PORT [default: the one joined through]. Needed to enrol.
    /// Repeatable, or a comma list, for a cluster of several coordinators (one leader,
    /// standbys): they are tried in turn, the last leader first, and the agent also
    /// learns the others from the leader (kept in the data dir).
    #[arg(
        long = "coordinator",
        value_name = "COORDINATOR",
        env = "HELIX_COORDINATOR",
        value_delimiter = ',',
        value_parser = parse_address
    )]
    pub(crate) coordinators: Vec<String>,
    /// A platform this host builds natively, e.g. linux/arm64 (repeatable, or a comma
    /// list). Replaces the detected platform.
    #[arg(
        long = "platform",
        value_name = "PLATFORM",
        env = "HELIX_PLATFORM",
        value_delimiter = ',',
        value_parser = parse_platform
    )]
    pub(crate) platforms: Vec<String>,
    /// How many jobs to run at once (changes live on SIGHUP).
    #[arg(long, env = "HELIX_CAPACITY", default_value_t = 1, value_parser = parse_capacity)]
    pub(crate) capacity: u32,
    /// A label for scheduling, KEY=VALUE (repeatable; changes live on SIGHUP).
    #[arg(
        long = "label",
        value_name = "KEY=VALUE",
        env = "HELIX_LABEL",
        value_delimiter = ',',
        value_parser = parse_label
    )]
    pub(crate) labels: Vec<(String, String)>,
    /// A connection silent this long is dead (keep-alives go out at a third of it).
    #[arg(long, env = "HELIX_IDLE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) idle_timeout: Duration,
    /// The image builder: buildah or podman.
    #[arg(long, env = "HELIX_BUILDER", default_value = "buildah", value_parser = parse_builder)]
    pub(crate) builder: BuilderKind,
    /// A registry to push to over plain HTTP, HOST:PORT as image references spell it
    /// (repeatable). Use the same list as the coordinator's.
    #[arg(
        long = "insecure-registry",
        value_name = "HOST:PORT",
        env = "HELIX_INSECURE_REGISTRY",
        value_delimiter = ','
    )]
    pub(crate) insecure_registries: Vec<String>,
    /// How long a cancelled build gets between SIGTERM and SIGKILL.
    #[arg(long, env = "HELIX_CANCEL_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) cancel_grace: Duration,
    /// On SIGTERM/SIGINT, how long running jobs may still finish before they are
    /// cancelled and retried elsewhere (a second signal stops everything at once).
    #[arg(long, env = "HELIX_DRAIN_DEADLINE", default_value = "10m", value_parser = humantime::parse_duration)]
    pub(crate) drain_deadline: Duration,
    /// The agent's name in listings, given when it enrols [default: the host name].
    #[arg(long, env = "HELIX_AGENT_NAME", value_parser = parse_name)]
    pub(crate) name: Option<String>,
    /// A file holding the join token (mode 0600 or stricter), read on the first
    /// start to enrol and deleted once enrolled. HELIX_JOIN_TOKEN works too (and
    /// wins). Never give the token itself on a command line.
    #[arg(long, env = "HELIX_JOIN_TOKEN_FILE")]
    pub(crate) join_token_file: Option<PathBuf>,
    /// Address of the Prometheus /metrics, /healthz and /readyz listener, e.g.
    /// 127.0.0.1:9465; empty (the default) turns it off.
    #[arg(long, env = "HELIX_METRICS_LISTEN", default_value = "", value_parser = parse_metrics_listen)]
    pub(crate) metrics_listen: String,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Validate a configuration file (and its drop-ins) and print the effective
    /// configuration of `run` with each value's source, without starting anything.
    Check {
        /// The configuration file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub(crate) struct DoctorArgs {
    /// The data directory [default: the configuration's data-dir].
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// The configuration to check with [default: /etc/helix/agent.toml when it
    /// exists].
    #[arg(long, env = "HELIX_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

fn parse_capacity(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("expected a number of jobs, at least 1, got {s:?}")),
    }
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

/// A platform (or a comma list of them), checked but kept as written.
fn parse_platform(s: &str) -> Result<String, String> {
    helix_protocol::Platform::parse_list(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

/// `HOST:PORT` (or `[v6]:PORT`), checked for its shape; resolved only when used.
pub(crate) fn parse_address(s: &str) -> Result<String, String> {
    helix_agent::coordinators::check_address(s)?;
    Ok(s.to_string())
}

/// Empty (off) or a socket address.
fn parse_metrics_listen(s: &str) -> Result<String, String> {
    let s = s.trim();
    if !s.is_empty() {
        s.parse::<std::net::SocketAddr>().map_err(|_| {
            format!("expected HOST:PORT with an IP address, e.g. 127.0.0.1:9465, or \"\" to turn it off; got {s:?}")
        })?;
    }
    Ok(s.to_string())
}

fn parse_log_level(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s)
        .map_err(|e| format!("{e} (expected e.g. info, debug or helix_agent=debug)"))?;
    Ok(s.to_string())
}

fn parse_name(s: &str) -> Result<String, String> {
    helix_protocol::identity::validate_admin_name(s)?;
    Ok(s.to_string())
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
                    _ => unreachable!("run"),
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

    #[test]
    fn values_are_checked_by_shape() {
        for ok in ["127.0.0.1:7443", "coord.example.com:7443", "[::1]:7443"] {
            assert_eq!(parse_address(ok).as_deref(), Ok(ok));
        }
        for bad in ["coord", "coord:", ":7443", "coord:99999", "co rd:1"] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_metrics_listen("").as_deref(), Ok(""));
        assert!(parse_metrics_listen("127.0.0.1:9465").is_ok());
        assert!(parse_metrics_listen("localhost:9465").is_err());
        assert!(parse_platform("linux/amd64,linux/arm64").is_ok());
        let err = parse_platform("linux/amd65").expect_err("bad");
        assert!(err.contains("unknown architecture \"amd65\""), "{err}");
        assert!(parse_name("node-1").is_ok());
        assert!(parse_name("node 1").is_err());
        assert!(parse_log_level("helix_agent=debug,info").is_ok());
        assert!(parse_log_level("helix_agent=loud").is_err());
    }
}
