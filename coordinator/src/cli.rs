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
    /// Log filter (also RUST_LOG), e.g. info or helix_coordinator=debug.
    #[arg(long, global = true, default_value = "info")]
    pub(crate) log_level: String,
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
    /// UDP address to listen on.
    #[arg(long, default_value = "0.0.0.0:7443")]
    pub(crate) listen: SocketAddr,
    /// Lifetime of agent certificates issued at join and renewal.
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    pub(crate) agent_cert_ttl: Duration,
    /// A connection silent this long is dead; keep-alives go out at a third of it.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) idle_timeout: Duration,
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
