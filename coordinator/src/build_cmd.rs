//! `helix-coordinator build ...`: submit, list, get, cancel, logs, wait.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::ExitCode;

use anyhow::bail;
use helix_coordinator::client::AdminClient;
use helix_protocol::build::{parse_key_value, Source};
use helix_protocol::wire::{AdminRequest, AdminResponse, BuildView};
use helix_protocol::{BuildId, BuildPhase, BuildSpec, BuildState, ImageRef, JobState, Platform};

use crate::cli::{BuildCommand, SubmitArgs};
use crate::commands::UsageError;

pub(crate) async fn run(client: &AdminClient, cmd: BuildCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BuildCommand::Submit(args) => submit(client, args).await,
        BuildCommand::List { limit, json } => {
            let views = match client.request(AdminRequest::ListBuilds { limit }).await? {
                AdminResponse::Builds(v) => v,
                other => bail!("unexpected reply: {other:?}"),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else {
                print_list(&views);
            }
            Ok(ExitCode::SUCCESS)
        }
        BuildCommand::Get { build, json } => {
            let id = resolve(client, &build).await?;
            let view = get(client, AdminRequest::GetBuild { build: id }).await?;
            show(&view, json)?;
            Ok(ExitCode::SUCCESS)
        }
        BuildCommand::Cancel { build, json } => {
            let id = resolve(client, &build).await?;
            let view = get(client, AdminRequest::CancelBuild { build: id }).await?;
            if json {
                show(&view, true)?;
            } else {
                println!("build {} is {}", view.build.id, view.state);
            }
            Ok(ExitCode::SUCCESS)
        }
        BuildCommand::Logs {
            build,
            platform,
            follow,
        } => {
            let id = resolve(client, &build).await?;
            let platform = platform
                .map(|p| p.parse::<Platform>())
                .transpose()
                .map_err(|e| UsageError(e.to_string()))?;
            logs(client, id, platform, follow, false).await?;
            Ok(ExitCode::SUCCESS)
        }
        BuildCommand::Wait { build, json } => {
            let id = resolve(client, &build).await?;
            let view = wait(client, id).await?;
            show(&view, json)?;
            Ok(exit_for(&view))
        }
    }
}

fn exit_for(view: &BuildView) -> ExitCode {
    if view.state == BuildState::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

async fn get(client: &AdminClient, req: AdminRequest) -> anyhow::Result<BuildView> {
    match client.request(req).await? {
        AdminResponse::Build(v) => Ok(*v),
        other => bail!("unexpected reply: {other:?}"),
    }
}

async fn wait(client: &AdminClient, id: BuildId) -> anyhow::Result<BuildView> {
    match client
        .open_long(AdminRequest::WaitBuild { build: id })
        .await?
        .0
    {
        AdminResponse::Build(v) => Ok(*v),
        other => bail!("unexpected reply: {other:?}"),
    }
}

/// A build id, or a unique prefix of one among recent builds.
async fn resolve(client: &AdminClient, key: &str) -> anyhow::Result<BuildId> {
    if let Ok(id) = key.parse::<BuildId>() {
        return Ok(id);
    }
    if key.len() < 4 || !key.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(UsageError(format!(
            "{key:?} is not a build id (see `helix-coordinator build list`)"
        ))
        .into());
    }
    let views = match client
        .request(AdminRequest::ListBuilds { limit: 1000 })
        .await?
    {
        AdminResponse::Builds(v) => v,
        other => bail!("unexpected reply: {other:?}"),
    };
    let hits: Vec<BuildId> = views
        .iter()
        .map(|v| v.build.id)
        .filter(|id| id.to_string().starts_with(key))
        .collect();
    match hits.as_slice() {
        [one] => Ok(*one),
        [] => Err(UsageError(format!("no recent build has an id starting with {key:?}")).into()),
        many => Err(UsageError(format!(
            "{key:?} matches {} builds: give more of the id",
            many.len()
        ))
        .into()),
    }
}

fn spec_from(args: &SubmitArgs) -> Result<BuildSpec, UsageError> {
    let mut platforms: Vec<Platform> = Vec::new();
    for item in &args.platforms {
        for p in Platform::parse_list(item).map_err(|e| UsageError(e.to_string()))? {
            if !platforms.contains(&p) {
                platforms.push(p);
            }
        }
    }
    let tag: ImageRef = args
        .tag
        .parse()
        .map_err(|e: helix_protocol::ReferenceError| UsageError(format!("invalid --tag: {e}")))?;
    let pairs =
        |field: &'static str, items: &[String]| -> Result<BTreeMap<String, String>, UsageError> {
            items
                .iter()
                .map(|i| parse_key_value(field, i).map_err(|e| UsageError(e.to_string())))
                .collect()
        };
    Ok(BuildSpec {
        source: Source::Git {
            repo: args.repo.clone(),
            reference: args.reference.clone(),
        },
        dockerfile: args.dockerfile.clone(),
        build_args: pairs("build-arg", &args.build_args)?,
        target: args.target.clone(),
        labels: pairs("label", &args.labels)?,
        platforms,
        tag,
        no_cache: args.no_cache,
        fail_fast: !args.no_fail_fast,
        timeout_secs: args.timeout.as_secs().max(1),
    })
}

async fn submit(client: &AdminClient, args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let spec = spec_from(&args)?;
    // Check locally first for a fast, precise message; the coordinator checks again.
    spec.validate(true).map_err(|e| UsageError(e.to_string()))?;
    let view = get(client, AdminRequest::SubmitBuild { spec }).await?;
    let id = view.build.id;
    if !args.wait && !args.follow {
        if args.json {
            show(&view, true)?;
        } else {
            eprintln!(
                "Submitted build {id} ({}) for {} at commit {}",
                view.build.spec.tag,
                platforms_of(&view),
                view.build.commit.as_deref().unwrap_or("-")
            );
            println!("{id}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !args.json {
        eprintln!(
            "Submitted build {id} ({}) for {} at commit {}",
            view.build.spec.tag,
            platforms_of(&view),
            view.build.commit.as_deref().unwrap_or("-")
        );
    }
    if args.follow {
        logs(client, id, None, true, true).await?;
    }
    let done = wait(client, id).await?;
    show(&done, args.json)?;
    Ok(exit_for(&done))
}

fn platforms_of(view: &BuildView) -> String {
    view.build
        .spec
        .platforms
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Print a build's logs; `prefix` puts `[platform] ` before every line (for
/// `--follow` of several platforms at once).
async fn logs(
    client: &AdminClient,
    id: BuildId,
    platform: Option<Platform>,
    follow: bool,
    prefix: bool,
) -> anyhow::Result<()> {
    let req = AdminRequest::BuildLogs {
        build: id,
        platform,
        follow,
    };
    let (first, _send, mut recv) = client.open_long(req).await?;
    let mut pending: BTreeMap<String, String> = BTreeMap::new();
    let mut stdout = std::io::stdout();
    let mut next = Some(first);
    while let Some(resp) = next.take() {
        match resp {
            AdminResponse::Log { platform, data, .. } => {
                if prefix {
                    let buf = pending.entry(platform.to_string()).or_default();
                    buf.push_str(&String::from_utf8_lossy(&data));
                    while let Some(nl) = buf.find('\n') {
                        let line: String = buf.drain(..=nl).collect();
                        write!(stdout, "[{platform}] {line}")?;
                    }
                } else {
                    stdout.write_all(&data)?;
                }
                stdout.flush()?;
            }
            AdminResponse::LogEnd => break,
            other => bail!("unexpected reply: {other:?}"),
        }
        next = client.next(&mut recv).await?;
    }
    for (platform, rest) in pending {
        if !rest.is_empty() {
            writeln!(stdout, "[{platform}] {rest}")?;
        }
    }
    Ok(())
}

fn show(view: &BuildView, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(view)?);
        return Ok(());
    }
    let b = &view.build;
    println!("Build {}  {}", b.id, view.state);
    println!("  tag:     {}", b.spec.tag);
    if let Source::Git { repo, reference } = &b.spec.source {
        println!(
            "  source:  {repo} @ {reference} (commit {})",
            b.commit.as_deref().unwrap_or("-")
        );
    }
    match &b.phase {
        BuildPhase::Succeeded { index_digest } => println!("  index:   {index_digest}"),
        BuildPhase::Failed { reason } => println!("  error:   {reason}"),
        BuildPhase::Cancelled { reason } => println!("  cancelled: {reason}"),
        _ => {}
    }
    println!("  jobs:");
    for j in &view.jobs {
        let (agent, detail) = match j.state() {
            JobState::Queued => ("-".to_string(), String::new()),
            JobState::Assigned { agent, .. } | JobState::Running { agent, .. } => {
                (short(&agent.to_string()), String::new())
            }
            JobState::Succeeded {
                agent,
                result,
                cached_from,
            } => {
                let detail = match cached_from {
                    Some(from) => format!("{} (cached, built by build {from})", result.digest),
                    None => result.digest.to_string(),
                };
                (short(&agent.to_string()), detail)
            }
            JobState::Failed { failure } => ("-".to_string(), failure.message.clone()),
            JobState::Cancelled { reason } => ("-".to_string(), reason.clone()),
        };
        println!(
            "    {:<16} {:<10} attempt {:<2} agent {:<8}  {}",
            j.platform().to_string(),
            j.state().name(),
            j.attempt(),
            agent,
            detail
        );
        for h in j.history() {
            println!(
                "      attempt {} on {}: {}",
                h.attempt,
                short(&h.agent.to_string()),
                h.outcome
            );
        }
    }
    for note in &view.notes {
        println!("  note:    {note}");
    }
    Ok(())
}

fn short(id: &str) -> String {
    id.chars().take(8).collect()
}

fn print_list(views: &[BuildView]) {
    if views.is_empty() {
        eprintln!("No builds yet. Submit one with `helix-coordinator build submit`.");
        return;
    }
    println!("{:<36}  {:<10}  {:<24}  TAG", "BUILD", "STATE", "PLATFORMS");
    for v in views {
        println!(
            "{:<36}  {:<10}  {:<24}  {}",
            v.build.id,
            v.state.to_string(),
            platforms_of(v),
            v.build.spec.tag
        );
    }
}
