//! Command-line surface of `helix-coordinator`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use helix_coordinator::store::config::StoreConfig;

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
    /// Coordinator address for admin commands, HOST:PORT. Repeat it (or give a
    /// comma-separated list) to name several coordinators of the cluster: they are
    /// tried in order and a standby's redirect leads to the leader.
    #[arg(
        long,
        global = true,
        env = "HELIX_COORDINATOR",
        default_value = "127.0.0.1:7443",
        value_delimiter = ',',
        action = clap::ArgAction::Append
    )]
    pub(crate) coordinator: Vec<String>,
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
    /// The coordinators of the cluster and which one leads.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// Each coordinator's advertised address, which one leads, the leader's epoch and
    /// when its lease runs out.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
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
    /// The cluster's name: the trust domain in every certificate's SPIFFE id
    /// [default: helix, or with --ca-from the name in DIR/admin.pem].
    #[arg(long)]
    pub(crate) cluster: Option<String>,
    /// Extra DNS name or IP address for the server certificate (repeatable);
    /// localhost, 127.0.0.1 and ::1 are always included. Give every name agents and
    /// admins dial, and the host of --advertise.
    #[arg(long = "san")]
    pub(crate) sans: Vec<String>,
    /// Join an existing cluster: take the CA (ca.pem, ca.key, and admin.pem for the
    /// cluster name) from DIR, a copy of the first coordinator's data directory made
    /// over a secure channel, instead of making a new CA. This coordinator still gets
    /// its own server certificate and admin bundle.
    #[arg(long, value_name = "DIR")]
    pub(crate) ca_from: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) store: StoreArgs,
}

/// Where the coordinator's state lives; `init` and `serve` take the same options.
#[derive(Debug, Args)]
pub(crate) struct StoreArgs {
    /// The store: `redb` (the embedded database in the data directory, one
    /// coordinator) or `postgres://user@host:port/db` (shared by every coordinator of
    /// the cluster; one leads at a time). Put the password in store-password-file,
    /// not here: a command line is visible to every user of the host.
    #[arg(long = "store", env = "HELIX_STORE", default_value = "redb", value_parser = StoreParser)]
    pub(crate) store: StoreConfig,
    /// File holding the PostgreSQL password (mode 0600; one line). Used when the store
    /// URL has no password; PGPASSWORD is the fallback.
    #[arg(long, env = "HELIX_STORE_PASSWORD_FILE", value_name = "PATH")]
    pub(crate) store_password_file: Option<PathBuf>,
    /// Extra CA certificates (PEM) to trust for the PostgreSQL server's certificate
    /// (with sslmode=require), besides the system's.
    #[arg(long, env = "HELIX_STORE_CA_FILE", value_name = "PATH")]
    pub(crate) store_ca_file: Option<PathBuf>,
}

/// Parses `--store` without ever echoing the value: clap's own message for a bad
/// value quotes it, and a PostgreSQL URL may carry a password.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StoreParser;

impl clap::builder::TypedValueParser for StoreParser {
    type Value = StoreConfig;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<StoreConfig, clap::Error> {
        let fail = |message: String| {
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, message).with_cmd(cmd)
        };
        let text = value
            .to_str()
            .ok_or_else(|| fail("invalid value for --store: not UTF-8\n".into()))?;
        text.parse::<StoreConfig>()
            .map_err(|e| fail(format!("invalid value for --store: {e}\n")))
    }
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
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// HOST:PORT at which the other coordinators send agents and admins to this one
    /// while it leads [default: the listen address]. Needed with a shared store when
    /// listening on a wildcard address; its host must be in the server certificate
    /// (init --san).
    #[arg(long, env = "HELIX_ADVERTISE", value_name = "HOST:PORT", value_parser = parse_host_port)]
    pub(crate) advertise: Option<String>,
    /// With a shared store: a leader that has not renewed its lease for this long is
    /// replaced. Shorter fails over faster; longer rides out database hiccups.
    #[arg(long, env = "HELIX_LEASE_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) lease_ttl: Duration,
    /// With a shared store: how often the leader renews its lease (and standbys
    /// check it). Must be under half of lease-ttl, so one failed renewal is not fatal.
    #[arg(long, env = "HELIX_LEASE_RENEW", default_value = "2s", value_parser = humantime::parse_duration)]
    pub(crate) lease_renew: Duration,
}

/// `HOST:PORT`, `IP:PORT` or `[IPv6]:PORT`, checked for shape only (it is an address
/// for others to dial, so it is not resolved here).
pub(crate) fn parse_host_port(s: &str) -> Result<String, String> {
    let s = s.trim();
    let bad = || format!("{s:?} is not HOST:PORT (e.g. coord-1.example.com:7443 or 10.0.0.5:7443)");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    match port.parse::<u16>() {
        Ok(p) if p != 0 => {}
        _ => return Err(bad()),
    }
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    let ok = match bare {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && !host.contains(':')
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        }
    };
    if !ok {
        return Err(bad());
    }
    Ok(s.to_string())
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
