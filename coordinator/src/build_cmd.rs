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

fn spec_from(args: &SubmitArgs, source: Source) -> Result<BuildSpec, UsageError> {
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
        source,
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
    let source = match (&args.repo, &args.context) {
        (Some(repo), None) => Source::Git {
            repo: repo.clone(),
            reference: args.reference.clone(),
        },
        (None, Some(dir)) => Source::Context {
            digest: upload_context(client, dir, &args.dockerfile, args.json).await?,
        },
        _ => return Err(UsageError("give either --repo or --context".into()).into()),
    };
    let spec = spec_from(&args, source)?;
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
    match &b.spec.source {
        Source::Git { repo, reference } => {
            println!(
                "  source:  {repo} @ {reference} (commit {})",
                b.commit.as_deref().unwrap_or("-")
            );
        }
        Source::Context { digest } => println!("  source:  uploaded context {digest}"),
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

/// Pack `dir` deterministically, and upload it unless the coordinator has it already.
async fn upload_context(
    client: &AdminClient,
    dir: &std::path::Path,
    dockerfile: &str,
    json: bool,
) -> anyhow::Result<helix_protocol::Digest> {
    if !dir.is_dir() {
        return Err(UsageError(format!("--context {}: not a directory", dir.display())).into());
    }
    let show = !json && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let tmp = tempfile::Builder::new()
        .prefix("helix-context-")
        .tempdir()?;
    let archive = tmp.path().join("context.tar");
    let (dir_owned, dockerfile_owned, archive_owned) =
        (dir.to_path_buf(), dockerfile.to_string(), archive.clone());
    let packed = tokio::task::spawn_blocking(move || {
        helix_context::Packer::new(&dir_owned)
            .dockerfile(&dockerfile_owned)
            .pack_to_file(&archive_owned)
    })
    .await?
    .map_err(|e| UsageError(format!("cannot pack --context {}: {e}", dir.display())))?;
    if !json {
        eprintln!(
            "Packed {} ({} files, {}) as {}",
            dir.display(),
            packed.files,
            human_bytes(packed.size),
            packed.digest
        );
    }
    match client
        .request(AdminRequest::HasContext {
            digest: packed.digest.clone(),
        })
        .await?
    {
        AdminResponse::ContextPresent { present: true, .. } => {
            if !json {
                eprintln!("The coordinator already has this context; nothing to upload.");
            }
            return Ok(packed.digest);
        }
        AdminResponse::ContextPresent {
            present: false,
            max_size,
        } if packed.size > max_size => {
            return Err(UsageError(format!(
                "the context is {}, over the coordinator's limit of {} (--max-context-size); add a .dockerignore",
                human_bytes(packed.size),
                human_bytes(max_size)
            ))
            .into());
        }
        AdminResponse::ContextPresent { .. } => {}
        other => bail!("unexpected reply: {other:?}"),
    }
    let bar = show.then(|| {
        let bar = indicatif::ProgressBar::new(packed.size);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "uploading context [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar
    });
    let result = client
        .upload_context(&packed.digest, packed.size, &archive, |sent| {
            if let Some(b) = &bar {
                b.set_position(sent);
            }
        })
        .await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    match result? {
        AdminResponse::ContextStored { digest, .. } => {
            if !json {
                eprintln!("Uploaded the context ({}).", human_bytes(packed.size));
            }
            Ok(digest)
        }
        other => bail!("unexpected reply: {other:?}"),
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `cache list` / `cache prune`.
pub(crate) async fn cache(
    client: &AdminClient,
    cmd: crate::cli::CacheCommand,
) -> anyhow::Result<ExitCode> {
    match cmd {
        crate::cli::CacheCommand::List { json } => {
            let entries = match client.request(AdminRequest::ListCache).await? {
                AdminResponse::Cache(e) => e,
                other => bail!("unexpected reply: {other:?}"),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else if entries.is_empty() {
                eprintln!("The result cache is empty.");
            } else {
                println!(
                    "{:<16}  {:<40}  {:<8}  {:<14}  BUILT BY BUILD",
                    "PLATFORM", "REPOSITORY", "BUILDER", "DIGEST"
                );
                for e in &entries {
                    println!(
                        "{:<16}  {:<40}  {:<8}  {:<14}  {}",
                        e.platform.to_string(),
                        e.repository,
                        e.builder,
                        e.result
                            .digest
                            .as_str()
                            .chars()
                            .take(14 + 7)
                            .skip(7)
                            .collect::<String>(),
                        e.build
                    );
                }
            }
        }
        crate::cli::CacheCommand::Prune { older_than, json } => {
            let req = AdminRequest::PruneCache {
                older_than_secs: older_than.map(|d| d.as_secs()),
            };
            match client.request(req).await? {
                AdminResponse::Pruned {
                    cache_entries,
                    contexts,
                } => {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({ "cache_entries": cache_entries, "contexts": contexts })
                        );
                    } else {
                        println!("Removed {cache_entries} cache entries and {contexts} unused build contexts.");
                    }
                }
                other => bail!("unexpected reply: {other:?}"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
