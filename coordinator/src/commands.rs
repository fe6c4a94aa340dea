//! What each subcommand does.

use std::process::ExitCode;

use anyhow::{bail, Context as _};
use helix_coordinator::client::{AdminClient, ClientError};
use helix_coordinator::datadir::DataDir;
use helix_coordinator::init::{init, InitError, InitOptions};
use helix_coordinator::server::{ServeOptions, Server};
use helix_coordinator::store::config::StoreConfig;
use helix_protocol::wire::{AdminRequest, AdminResponse, RejectCode};
use helix_protocol::{AgentAction, AgentInfo};
use helix_transport::files::AdminBundle;

use crate::cli::{
    AgentArg, AgentsCommand, Cli, Command, ConfigCommand, Global, InitArgs, ServeArgs, TokenCommand,
};

/// An error in what the user asked for (exit code 2), as opposed to a failure to do it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub String);

pub(crate) fn exit_code_for(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<UsageError>().is_some() {
        return 2;
    }
    if e.downcast_ref::<InitError>()
        .is_some_and(InitError::is_usage)
    {
        return 2;
    }
    // A data dir that was never initialized is a setup error: exit 2, so the unit's
    // RestartPreventExitStatus=2 stops instead of retrying every few seconds.
    // So is a store that belongs to another cluster or CA, or is newer than this
    // binary: restarting cannot fix those.
    if let Some(
        helix_coordinator::server::ServeError::NotInitialized(_)
        | helix_coordinator::server::ServeError::Store(
            helix_coordinator::store::StoreError::NotInitialized
            | helix_coordinator::store::StoreError::WrongCluster { .. }
            | helix_coordinator::store::StoreError::WrongCa { .. }
            | helix_coordinator::store::StoreError::SchemaTooNew { .. },
        ),
    ) = e.downcast_ref::<helix_coordinator::server::ServeError>()
    {
        return 2;
    }
    if let Some(ClientError::Refused { code, .. }) = e.downcast_ref::<ClientError>() {
        if matches!(
            code,
            RejectCode::BadRequest | RejectCode::NotFound | RejectCode::Conflict
        ) {
            return 2;
        }
    }
    1
}

pub(crate) async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let g = &cli.global;
    match cli.command {
        Command::Init(args) => init_cmd(g, args).await,
        Command::Serve(args) => serve(g, args).await,
        Command::Token(TokenCommand::Create { ttl, uses }) => {
            let client = connect(g).await?;
            let resp = client
                .request(AdminRequest::CreateToken {
                    ttl_secs: ttl.as_secs(),
                    uses,
                })
                .await;
            client.close().await;
            match resp? {
                AdminResponse::Token { token, uses, .. } => {
                    let (in_file, flags) = coordinator_settings(&g.coordinator);
                    eprintln!(
                        "Join token valid for {} and {uses} use(s). On the agent host, put it in a 0600 file named by\n  join-token-file in /etc/helix/agent.toml (with coordinator = {in_file}) and start helix-agent,\n  or run: helix-agent join {flags} --token-file FILE",
                        humantime::format_duration(ttl),
                    );
                    println!("{token}");
                    Ok(ExitCode::SUCCESS)
                }
                other => bail!("unexpected reply: {other:?}"),
            }
        }
        Command::Agents(cmd) => agents(g, cmd).await,
        Command::Config(ConfigCommand::Check { file, json }) => {
            let effective = crate::config::check(&file).map_err(|e| UsageError(e.to_string()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&effective)?);
            } else {
                eprintln!("{}: valid", file.display());
                if let serde_json::Value::Object(map) = &effective {
                    for (key, v) in map {
                        let value = match &v["value"] {
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
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cache(cmd) => {
            let client = connect(g).await?;
            let result = crate::build_cmd::cache(&client, cmd).await;
            client.close().await;
            result
        }
        Command::Build(cmd) => {
            let client = connect(g).await?;
            let result = crate::build_cmd::run(&client, cmd).await;
            client.close().await;
            result
        }
        Command::Cluster(cmd) => {
            let client = connect(g).await?;
            let result = crate::cluster_cmd::run(&client, cmd).await;
            client.close().await;
            result
        }
    }
}

/// How to name the coordinators to an agent: the config value and the join flags.
fn coordinator_settings(addrs: &[String]) -> (String, String) {
    let quoted: Vec<String> = addrs.iter().map(|a| format!("{a:?}")).collect();
    let in_file = match quoted.as_slice() {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    };
    let flags = addrs
        .iter()
        .map(|a| format!("--coordinator {a}"))
        .collect::<Vec<_>>()
        .join(" ");
    (in_file, flags)
}

async fn init_cmd(g: &Global, args: InitArgs) -> anyhow::Result<ExitCode> {
    let dir = DataDir::new(&g.data_dir);
    let (store, password) = crate::cluster_opts::store(
        &args.store,
        std::env::var(crate::cluster_opts::PGPASSWORD).ok(),
    )
    .map_err(UsageError)?;
    if matches!(store, StoreConfig::Postgres(_)) {
        tracing::info!(%store, "PostgreSQL password from {password}");
    }
    let opts = InitOptions {
        cluster: args.cluster,
        sans: args.sans,
        store,
        ca_from: args.ca_from.clone(),
    };
    let made = init(&dir, &opts).await?;
    eprintln!(
        "Initialized cluster {:?} in {}",
        made.cluster,
        dir.root().display()
    );
    match &args.ca_from {
        Some(from) => eprintln!(
            "  CA fingerprint (sha256): {} (shared, from {})",
            made.ca_fingerprint,
            from.display()
        ),
        None => eprintln!("  CA fingerprint (sha256): {}", made.ca_fingerprint),
    }
    eprintln!("  server certificate names: {}", made.sans.join(", "));
    eprintln!("  admin bundle: {}", dir.admin_bundle().display());
    eprintln!("  store: {}", made.store);
    if made.shared_ca {
        eprintln!(
            "  Remove the copied CA files from {} now that they are in place.",
            args.ca_from
                .as_deref()
                .unwrap_or(std::path::Path::new("DIR"))
                .display()
        );
    }
    let store_flag = match &opts.store {
        StoreConfig::Redb => String::new(),
        StoreConfig::Postgres(_) => format!(" --store {}", made.store),
    };
    eprintln!(
        "Next: helix-coordinator serve --data-dir {}{store_flag}",
        dir.root().display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn serve(g: &Global, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config_file = args.config.clone().or_else(|| {
        let default = std::path::Path::new(crate::config::DEFAULT_CONFIG);
        default.exists().then(|| default.to_path_buf())
    });
    let started_with = config_file
        .as_deref()
        .and_then(|f| crate::config::check(f).ok());
    let lease = crate::cluster_opts::lease(args.lease_ttl, args.lease_renew).map_err(UsageError)?;
    let (store, password) = crate::cluster_opts::store(
        &args.store,
        std::env::var(crate::cluster_opts::PGPASSWORD).ok(),
    )
    .map_err(UsageError)?;
    let shared = matches!(store, StoreConfig::Postgres(_));
    if shared && args.advertise.is_none() && args.listen.ip().is_unspecified() {
        return Err(UsageError(format!(
            "with a shared store, give --advertise HOST:PORT: the listen address {} is not one the other coordinators can send agents and admins to",
            args.listen
        ))
        .into());
    }
    let dir = DataDir::new(&g.data_dir);
    if !dir.is_initialized_for(&store) && dir.is_initialized() {
        let hint = match &store {
            StoreConfig::Redb => "it was initialized for a PostgreSQL store (pass the same --store as to init), or its helix.redb was removed",
            StoreConfig::Postgres(_) => "it was initialized for the embedded store (serve it without --store), or its keys were removed",
        };
        return Err(UsageError(format!(
            "{} is initialized, but not for the store {store}: {hint}",
            dir.root().display()
        ))
        .into());
    }
    if shared {
        tracing::info!(%store, advertise = ?args.advertise, "shared store; PostgreSQL password from {password}");
    }
    let mut opts = ServeOptions::new(dir, args.listen);
    opts.store = store;
    opts.advertise = args.advertise;
    opts.lease = lease;
    opts.agent_cert_ttl = args.agent_cert_ttl;
    opts.idle_timeout = args.idle_timeout;
    opts.allow_file_repos = args.allow_file_repos;
    opts.insecure_registries = args.insecure_registries;
    opts.scheduler.grace = args.grace_period;
    opts.scheduler.max_attempts = args.max_attempts;
    opts.max_context_size = args.max_context_size;
    opts.metrics_listen = match args.metrics_listen.trim() {
        "" => None,
        addr => Some(addr.parse().map_err(|_| {
            UsageError(format!("invalid --metrics-listen {addr:?}: expected HOST:PORT, e.g. 127.0.0.1:9464, or '' to turn it off"))
        })?),
    };
    let server = Server::spawn(opts).await?;
    // One write: scripts (and the tests) read this line while the log is written.
    let line = format!("helix-coordinator listening on {}\n", server.local_addr());
    std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes())
        .context("write to stderr")?;
    // READY=1 once the store is open and QUIC is bound; a no-op without NOTIFY_SOCKET.
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!("listening on {}", server.local_addr())),
    ]);
    let status = tokio::spawn(status_lines(server.status_source()));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install the SIGTERM handler")?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("install the SIGHUP handler")?;
    let failed = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break false,
            _ = term.recv() => break false,
            () = server.failed() => break true,
            _ = hup.recv() => reload(config_file.as_deref(), started_with.as_ref()),
        }
    };
    tracing::info!("shutting down");
    notify(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("shutting down"),
    ]);
    status.abort();
    server.shutdown().await;
    if failed {
        bail!(
            "the coordinator stopped after a store failure; restart it to recover from the store"
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn connect(g: &Global) -> anyhow::Result<AdminClient> {
    let bundle_path = g
        .admin_cert
        .clone()
        .unwrap_or_else(|| DataDir::new(&g.data_dir).admin_bundle());
    let bundle = AdminBundle::load(&bundle_path).map_err(|e| {
        UsageError(format!(
            "cannot load the admin certificate bundle: {e} (pass --admin-cert FILE or set HELIX_ADMIN_CERT)"
        ))
    })?;
    Ok(AdminClient::connect_any(&g.coordinator, &bundle).await?)
}

async fn agents(g: &Global, cmd: AgentsCommand) -> anyhow::Result<ExitCode> {
    let client = connect(g).await?;
    let result = agents_inner(&client, cmd).await;
    client.close().await;
    result
}

async fn list_agents(client: &AdminClient) -> anyhow::Result<Vec<AgentInfo>> {
    match client.request(AdminRequest::ListAgents).await? {
        AdminResponse::Agents(list) => Ok(list),
        other => bail!("unexpected reply: {other:?}"),
    }
}

async fn agents_inner(client: &AdminClient, cmd: AgentsCommand) -> anyhow::Result<ExitCode> {
    let (arg, action): (AgentArg, AgentAction) = match cmd {
        AgentsCommand::List { json } => {
            let list = list_agents(client).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print_agents(&list);
            }
            return Ok(ExitCode::SUCCESS);
        }
        AgentsCommand::Cordon(a) => (a, AgentAction::Cordon),
        AgentsCommand::Uncordon(a) => (a, AgentAction::Uncordon),
        AgentsCommand::Drain(a) => (a, AgentAction::Drain),
        AgentsCommand::Revoke(a) => (a, AgentAction::Revoke),
    };
    let list = list_agents(client).await?;
    let agent = resolve_agent(&list, &arg.agent)?;
    match client
        .request(AdminRequest::UpdateAgent {
            agent: agent.id,
            action,
        })
        .await?
    {
        AdminResponse::Agent(mut info) => {
            if action == AgentAction::Drain {
                // Drain reports done once the agent's running jobs have finished.
                if info.running_jobs > 0 && !arg.json {
                    eprintln!(
                        "agent {} is draining; waiting for {} running job(s) to finish",
                        info.name, info.running_jobs
                    );
                }
                while info.running_jobs > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    info = list_agents(client)
                        .await?
                        .into_iter()
                        .find(|a| a.id == info.id)
                        .ok_or_else(|| {
                            anyhow::anyhow!("agent {} disappeared while draining", info.id)
                        })?;
                }
            }
            if arg.json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else if action == AgentAction::Drain {
                println!(
                    "agent {} ({}) is drained: no jobs running, no new work",
                    info.name, info.id
                );
            } else {
                println!("agent {} ({}) is now {}", info.name, info.id, info.state);
            }
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unexpected reply: {other:?}"),
    }
}

/// Find an agent by exact id, exact name, or unique id prefix.
fn resolve_agent<'a>(list: &'a [AgentInfo], key: &str) -> Result<&'a AgentInfo, UsageError> {
    if let Some(a) = list.iter().find(|a| a.id.to_string() == key) {
        return Ok(a);
    }
    let by_name: Vec<&AgentInfo> = list.iter().filter(|a| a.name == key).collect();
    if let [one] = by_name.as_slice() {
        return Ok(one);
    }
    if by_name.len() > 1 {
        return Err(UsageError(format!(
            "{} agents are named {key:?}: use the agent id",
            by_name.len()
        )));
    }
    let by_prefix: Vec<&AgentInfo> = list
        .iter()
        .filter(|a| a.id.to_string().starts_with(key))
        .collect();
    match by_prefix.as_slice() {
        [one] => Ok(one),
        [] => Err(UsageError(format!(
            "no agent has the id or name {key:?} (see `helix-coordinator agents list`)"
        ))),
        many => Err(UsageError(format!(
            "{key:?} matches {} agents: give more of the id",
            many.len()
        ))),
    }
}

fn print_agents(list: &[AgentInfo]) {
    if list.is_empty() {
        eprintln!(
            "No agents are enrolled. Create a join token with `helix-coordinator token create`."
        );
        return;
    }
    let now = helix_coordinator::clock::now();
    let rows: Vec<[String; 8]> = list
        .iter()
        .map(|a| {
            let seen = if a.connected {
                "now".to_string()
            } else {
                match a.last_seen {
                    Some(t) => format!(
                        "{} ago",
                        humantime::format_duration(std::time::Duration::from_secs(
                            now.saturating_since(t).as_secs()
                        ))
                    ),
                    None => "never".to_string(),
                }
            };
            [
                a.id.to_string()[..8].to_string(),
                a.name.clone(),
                a.state.to_string(),
                if a.connected { "yes" } else { "no" }.to_string(),
                a.platforms
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                a.capacity.to_string(),
                a.builder.clone(),
                seen,
            ]
        })
        .collect();
    let header = [
        "ID",
        "NAME",
        "STATE",
        "CONNECTED",
        "PLATFORMS",
        "SLOTS",
        "BUILDER",
        "LAST SEEN",
    ];
    print!("{}", crate::table::render(header, &rows));
}

fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!("cannot notify the service manager: {e}");
    }
}

/// `STATUS=` lines a person wants to see in `systemctl status`.
async fn status_lines(source: helix_coordinator::server::StatusSource) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        let line = source.status().await;
        notify(&[sd_notify::NotifyState::Status(&line)]);
    }
}

/// SIGHUP: re-read and check the configuration, and say what changed. Nothing the
/// coordinator serves with can change under a running server yet (listen address,
/// data dir, policies are fixed at start), so every change is reported as taking
/// effect after a restart; an invalid file is reported and ignored, never fatal.
fn reload(file: Option<&std::path::Path>, started_with: Option<&serde_json::Value>) {
    let Some(file) = file else {
        tracing::info!("SIGHUP: no configuration file to re-read");
        return;
    };
    let now = match crate::config::check(file) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!("SIGHUP: the configuration is invalid and was not applied: {e}");
            return;
        }
    };
    let changed: Vec<String> = match (now.as_object(), started_with.and_then(|v| v.as_object())) {
        (Some(new), Some(old)) => new
            .iter()
            .filter(|(k, v)| old.get(*k).map(|o| &o["value"]) != Some(&v["value"]))
            .map(|(k, _)| k.clone())
            .collect(),
        _ => Vec::new(),
    };
    if changed.is_empty() {
        tracing::info!(file = %file.display(), "SIGHUP: configuration re-read, nothing changed");
    } else {
        for key in changed {
            tracing::warn!("SIGHUP: changed {key}: takes effect after a restart");
        }
    }
}
