//! Command-line surface of `helix-coordinator`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Where the data directory is by default (the systemd unit's StateDirectory).
pub(crate) const DEFAULT_DATA_DIR: &str = "/var/lib/helix-coordinator";

#[derive(Debug, Parser)]
#[command(
    name = "helix-coordinator",
    version,
    about = "Helix build farm coordinator and admin CLI"
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Options every subcommand accepts, before or after it.
#[derive(Debug, Args)]
pub(crate) struct Global {
    /// The coordinator's data directory (init, serve), and where admin commands look
    /// for admin.pem when --admin-cert is not given.
    #[arg(long, global = true, env = "HELIX_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub(crate) data_dir: PathBuf,
    /// Coordinator address for admin commands.
    #[arg(
        long,
        global = true,
        env = "HELIX_COORDINATOR",
        default_value = "127.0.0.1:7443"
    )]
    pub(crate) coordinator: String,
    /// Admin certificate bundle for admin commands [default: DATA_DIR/admin.pem].
    #[arg(long, global = true, env = "HELIX_ADMIN_CERT")]
    pub(crate) admin_cert: Option<PathBuf>,
    /// Log filter (RUST_LOG wins when set), e.g. info or helix_coordinator=debug.
    #[arg(long, global = true, env = "HELIX_LOG_LEVEL", default_value = "info")]
    pub(crate) log_level: String,
    /// Log format: text (for journald and terminals) or json.
    #[arg(long, global = true, env = "HELIX_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub(crate) log_format: String,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create a data directory: cluster CA, server certificate, admin bundle, store.
    Init(InitArgs),
    /// Run the coordinator.
    Serve(ServeArgs),
    /// Join tokens for enrolling agents.
    #[command(subcommand)]
    Token(TokenCommand),
    /// List and manage agents.
    #[command(subcommand)]
    Agents(AgentsCommand),
    /// Submit, inspect and cancel builds.
    #[command(subcommand)]
    Build(BuildCommand),
    /// Check configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The result cache.
    #[command(subcommand)]
    Cache(CacheCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum CacheCommand {
    /// List cached platform images, most recently used first.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Drop cache entries (all, or those unused for --older-than) and build contexts
    /// no active build references.
    Prune {
        /// Only entries not used for this long, e.g. 7d.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<Duration>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum BuildCommand {
    /// Submit a multi-platform build.
    Submit(SubmitArgs),
    /// List recent builds, newest first.
    List {
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Show a build: state, commit, each platform's job, the index digest.
    Get {
        /// Build id or a unique prefix of it.
        build: String,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a build; running builder processes are stopped.
    Cancel {
        build: String,
        #[arg(long)]
        json: bool,
    },
    /// Print a build's output.
    Logs {
        build: String,
        /// Only this platform's job.
        #[arg(long)]
        platform: Option<String>,
        /// Keep printing until the jobs end.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Wait until the build ends; exit 0 if it succeeded, 1 otherwise.
    Wait {
        build: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub(crate) struct SubmitArgs {
    /// Git repository URL (https, http, ssh, git; file only when the coordinator allows it).
    #[arg(long, required_unless_present = "context", conflicts_with = "context")]
    pub(crate) repo: Option<String>,
    /// A local directory to build instead of a repository: packed (honoring
    /// .containerignore/.dockerignore) and uploaded to the coordinator.
    #[arg(long)]
    pub(crate) context: Option<std::path::PathBuf>,
    /// Branch, tag or full commit id; pinned to one commit at submit.
    #[arg(long = "ref", default_value = "HEAD")]
    pub(crate) reference: String,
    /// Dockerfile path inside the repository.
    #[arg(short = 'f', long = "file", default_value = "Dockerfile")]
    pub(crate) dockerfile: String,
    /// Build argument KEY=VALUE (repeatable).
    #[arg(long = "build-arg")]
    pub(crate) build_args: Vec<String>,
    /// Target stage.
    #[arg(long)]
    pub(crate) target: Option<String>,
    /// Image label KEY=VALUE (repeatable).
    #[arg(long = "label")]
    pub(crate) labels: Vec<String>,
    /// Platforms, comma-separated or repeated (e.g. linux/amd64,linux/arm64).
    #[arg(long = "platform", required = true)]
    pub(crate) platforms: Vec<String>,
    /// Destination image reference for the multi-arch index.
    #[arg(long, short = 't')]
    pub(crate) tag: String,
    /// Do not use the builder's layer cache.
    #[arg(long)]
    pub(crate) no_cache: bool,
    /// Let the other platforms finish when one fails.
    #[arg(long)]
    pub(crate) no_fail_fast: bool,
    /// Fail the build if it has not finished this long after submit.
    #[arg(long, default_value = "2h", value_parser = humantime::parse_duration)]
    pub(crate) timeout: std::time::Duration,
    /// Wait for the build to end (exit 0 if it succeeded, 1 otherwise).
    #[arg(long)]
    pub(crate) wait: bool,
    /// Print the build's output while it runs, then wait for it.
    #[arg(long)]
    pub(crate) follow: bool,
    /// Print the build as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// The cluster's name: the trust domain in every certificate's SPIFFE id.
    #[arg(long, default_value = "helix")]
    pub(crate) cluster: String,
    /// Extra DNS name or IP address for the server certificate (repeatable);
    /// localhost, 127.0.0.1 and ::1 are always included.
    #[arg(long = "san")]
    pub(crate) sans: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Configuration file [default: /etc/helix/coordinator.toml when it exists], plus
    /// FILE.d/*.toml drop-ins. Every flag of `serve` is a key of the same name.
    #[arg(long, env = "HELIX_CONFIG")]
    pub(crate) config: Option<std::path::PathBuf>,
    /// UDP address to listen on.
    #[arg(long, env = "HELIX_LISTEN", default_value = "0.0.0.0:7443")]
    pub(crate) listen: SocketAddr,
    /// Accept file:// repositories (for tests and single-host setups: it lets
    /// submitters read the coordinator's disk).
    #[arg(long, env = "HELIX_ALLOW_FILE_REPOS")]
    pub(crate) allow_file_repos: bool,
    /// Registry host:port to reach over plain HTTP (repeatable).
    #[arg(
        long = "insecure-registry",
        env = "HELIX_INSECURE_REGISTRY",
        value_delimiter = ','
    )]
    pub(crate) insecure_registries: Vec<String>,
    /// How long a lost agent's jobs wait for it before they are requeued.
    #[arg(long, env = "HELIX_GRACE_PERIOD", default_value = "60s", value_parser = humantime::parse_duration)]
    pub(crate) grace_period: Duration,
    /// Attempts per job before it fails for good (lost agents, network failures).
    #[arg(long, env = "HELIX_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub(crate) max_attempts: u32,
    /// Lifetime of agent certificates issued at join and renewal.
    #[arg(long, env = "HELIX_AGENT_CERT_TTL", default_value = "30d", value_parser = humantime::parse_duration)]
    pub(crate) agent_cert_ttl: Duration,
    /// A connection silent this long is dead; keep-alives go out at a third of it.
    #[arg(long, env = "HELIX_IDLE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) idle_timeout: Duration,
    /// Largest build context accepted from `build submit --context`, e.g. 2GiB,
    /// 500MB or a byte count.
    #[arg(long, env = "HELIX_MAX_CONTEXT_SIZE", default_value = "2GiB", value_parser = parse_size)]
    pub(crate) max_context_size: u64,
    /// Address of the Prometheus /metrics, /healthz and /readyz listener; empty to
    /// turn it off.
    #[arg(long, env = "HELIX_METRICS_LISTEN", default_value = "127.0.0.1:9464")]
    pub(crate) metrics_listen: String,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Validate a configuration file (and its drop-ins) and print the effective
    /// configuration of `serve`, without starting anything.
    Check {
        /// The configuration file.
        file: std::path::PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Create a join token; prints only the token on stdout.
    Create {
        /// How long the token is valid.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// How many agents may join with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AgentsCommand {
    /// List enrolled agents.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop giving the agent new work; running jobs go on.
    Cordon(AgentArg),
    /// Give the agent new work again.
    Uncordon(AgentArg),
    /// Stop new work and let running jobs finish.
    Drain(AgentArg),
    /// Refuse the agent from now on; it must enrol again with a new token.
    Revoke(AgentArg),
}

#[derive(Debug, Args)]
pub(crate) struct AgentArg {
    /// Agent id, a unique prefix of it, or the agent's name.
    pub(crate) agent: String,
    /// Print the updated agent as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// A size like `2GiB`, `500MB`, `64KiB` or `1048576`.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 2GiB, 500MB, 1048576)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1024,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1024 * 1024,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1024 * 1024 * 1024,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use B, KB, KiB, MB, MiB, GB or GiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}
