//! Admin requests about builds: submit, list, get, cancel, wait, logs.

use std::sync::Arc;
use std::time::Duration;

use helix_protocol::build::Source;
use helix_protocol::cache::CacheEntry;
use helix_protocol::wire::{AdminResponse, BuildView, RejectCode};
use helix_protocol::{Build, BuildId, BuildPhase, BuildSpec, Job, JobEvent, JobId, Platform};
use helix_transport::framed;
use tokio::sync::broadcast::error::RecvError;
use tracing::{info, warn};

use crate::clock::now;
use crate::scheduler::Input;
use crate::server::Shared;
use helix_protocol::Timestamp;

/// How often `build logs --follow` looks for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// Most builds one `build list` returns.
const MAX_LIST: u32 = 1000;

fn error(code: RejectCode, message: impl Into<String>) -> AdminResponse {
    AdminResponse::Error {
        code,
        message: message.into(),
    }
}

fn internal(e: impl std::fmt::Display) -> AdminResponse {
    error(
        RejectCode::Internal,
        format!("the coordinator's store failed: {e}"),
    )
}

/// Validate, pin and store a build; answer with its view once it is committed.
pub(crate) async fn submit(shared: &Arc<Shared>, spec: BuildSpec) -> AdminResponse {
    if let Err(e) = spec.validate(shared.opts.allow_file_repos) {
        return error(RejectCode::BadRequest, e.to_string());
    }
    let commit = match &spec.source {
        Source::Git { repo, reference } => match crate::git::pin(repo, reference).await {
            Ok(commit) => Some(commit),
            Err(e) => return error(RejectCode::BadRequest, e.to_string()),
        },
        Source::Context { digest } => {
            if !shared.contexts.has(digest).await.unwrap_or(false) {
                return error(
                    RejectCode::BadRequest,
                    format!("context {digest} has not been uploaded to this coordinator (build submit --context uploads it)"),
                );
            }
            None
        }
    };
    let created_at = now();
    let id = BuildId::new_v4();
    let mut jobs: Vec<Job> = spec
        .platforms
        .iter()
        .map(|p| Job::new(JobId::new_v4(), id, p.clone(), created_at))
        .collect();
    let build = Build {
        id,
        commit,
        jobs: jobs.iter().map(|j| j.id()).collect(),
        spec,
        phase: BuildPhase::Building,
        created_at,
        updated_at: created_at,
    };
    if !build.spec.no_cache {
        for job in &mut jobs {
            if let Some(entry) = cache_hit(shared, &build, job.platform()).await {
                info!(build = %id, platform = %job.platform(), from = %entry.build, "served from the result cache");
                let event = JobEvent::FromCache {
                    agent: entry.agent,
                    from_build: entry.build,
                    result: entry.result,
                    at: created_at,
                };
                if let Err(e) = job.transition(event) {
                    return internal(e);
                }
            }
        }
    }
    info!(build = %id, tag = %build.spec.tag, commit = ?build.commit, platforms = build.spec.platforms.len(), "build submitted");
    match shared.engine.submit(build, jobs).await {
        Ok(Ok(())) => view(shared, id).await,
        Ok(Err(e)) => internal(e),
        Err(e) => error(RejectCode::Internal, e.to_string()),
    }
}

/// A cache entry for `build`'s job on `platform` whose manifest is still in the
/// registry. An entry whose manifest is gone is dropped (the job is built again); a
/// registry that cannot be asked is a miss, never a failed submit.
async fn cache_hit(shared: &Arc<Shared>, build: &Build, platform: &Platform) -> Option<CacheEntry> {
    let repository = build.spec.tag.repository_ref();
    for builder in crate::cache::BUILDERS {
        let key = crate::cache::key_for(build, platform, builder);
        let repo = repository.clone();
        let lookup_key = key.clone();
        let entry = match shared.store.cache_lookup(&lookup_key, &repo).await {
            Ok(Some(e)) => e,
            Ok(None) => continue,
            Err(e) => {
                warn!("cache lookup failed: {e}");
                return None;
            }
        };
        let image = build.spec.tag.with_digest(entry.result.digest.clone());
        match shared.assembler.registry().manifest_exists(&image).await {
            Ok(true) => {
                let (k, repo, now) = (key.clone(), repository.clone(), now());
                let _ = shared.store.cache_touch(&k, &repo, now).await;
                return Some(entry);
            }
            Ok(false) => {
                info!(%image, "cache entry dropped: its manifest is gone from the registry");
                let (k, repo) = (key.clone(), repository.clone());
                let _ = shared.store.cache_remove(&k, &repo).await;
            }
            Err(e) => {
                warn!(%image, "cannot check a cache entry in the registry, building instead: {e}");
                return None;
            }
        }
    }
    None
}

/// A build as `build get` shows it: live from the scheduler while active, else from
/// the store.
pub(crate) async fn view(shared: &Arc<Shared>, id: BuildId) -> AdminResponse {
    match load(shared, id).await {
        Ok(Some(v)) => AdminResponse::Build(Box::new(v)),
        Ok(None) => error(RejectCode::NotFound, format!("no build {id}")),
        Err(e) => e,
    }
}

async fn load(shared: &Arc<Shared>, id: BuildId) -> Result<Option<BuildView>, AdminResponse> {
    let (build, jobs) = match shared.engine.active(id).await {
        Some(x) => x,
        None => match shared.store.build_with_jobs(id).await {
            Ok(Some(x)) => x,
            Ok(None) => return Ok(None),
            Err(e) => return Err(internal(e)),
        },
    };
    let state = build.state(&jobs);
    let notes = if state.is_terminal() {
        Vec::new()
    } else {
        shared.engine.notes(id).await
    };
    Ok(Some(BuildView {
        build,
        jobs,
        state,
        notes,
    }))
}

pub(crate) async fn list(shared: &Arc<Shared>, limit: u32) -> AdminResponse {
    let limit = limit.clamp(1, MAX_LIST) as usize;
    let builds = match shared.store.recent_builds(limit).await {
        Ok(b) => b,
        Err(e) => return internal(e),
    };
    let mut views = Vec::with_capacity(builds.len());
    for b in builds {
        match load(shared, b.id).await {
            Ok(Some(v)) => views.push(v),
            Ok(None) => {}
            Err(e) => return e,
        }
    }
    AdminResponse::Builds(views)
}

pub(crate) async fn cancel(shared: &Arc<Shared>, id: BuildId) -> AdminResponse {
    match load(shared, id).await {
        Ok(Some(v)) if v.state.is_terminal() => {
            return error(
                RejectCode::Conflict,
                format!("build {id} already {}", v.state),
            );
        }
        Ok(Some(_)) => {}
        Ok(None) => return error(RejectCode::NotFound, format!("no build {id}")),
        Err(e) => return e,
    }
    if shared
        .engine
        .input(Input::Cancel {
            build: id,
            reason: "cancelled by an admin".into(),
        })
        .await
        .is_err()
    {
        return error(RejectCode::Internal, "the coordinator is shutting down");
    }
    info!(build = %id, "build cancelled");
    view(shared, id).await
}

/// Answer when the build reaches a terminal state.
pub(crate) async fn wait(shared: &Arc<Shared>, id: BuildId) -> AdminResponse {
    let mut done = shared.engine.subscribe_done();
    loop {
        match load(shared, id).await {
            Ok(Some(v)) if v.state.is_terminal() => return AdminResponse::Build(Box::new(v)),
            Ok(Some(_)) => {}
            Ok(None) => return error(RejectCode::NotFound, format!("no build {id}")),
            Err(e) => return e,
        }
        loop {
            match done.recv().await {
                Ok(b) if b == id => break,
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => break,
                Err(RecvError::Closed) => {
                    return error(RejectCode::Internal, "the coordinator is shutting down")
                }
            }
        }
    }
}

/// Stream a build's logs; with `follow`, until every selected job has ended.
pub(crate) async fn logs(
    shared: &Arc<Shared>,
    send: &mut quinn::SendStream,
    id: BuildId,
    platform: Option<Platform>,
    follow: bool,
) -> Result<(), framed::StreamError> {
    let first = match load(shared, id).await {
        Ok(Some(v)) => v,
        Ok(None) => {
            return framed::write_frame(
                send,
                &error(RejectCode::NotFound, format!("no build {id}")),
            )
            .await
        }
        Err(e) => return framed::write_frame(send, &e).await,
    };
    let selected: Vec<(JobId, Platform)> = first
        .jobs
        .iter()
        .filter(|j| platform.as_ref().is_none_or(|p| j.platform() == p))
        .map(|j| (j.id(), j.platform().clone()))
        .collect();
    if selected.is_empty() {
        let msg = match &platform {
            Some(p) => format!("build {id} has no job for {p}"),
            None => format!("build {id} has no jobs"),
        };
        return framed::write_frame(send, &error(RejectCode::NotFound, msg)).await;
    }
    let mut offsets = vec![0u64; selected.len()];
    loop {
        // Decide whether this is the last round before reading, so output written
        // just before the end is still sent.
        let finished = match load(shared, id).await {
            Ok(Some(v)) => {
                v.state.is_terminal()
                    || selected.iter().all(|(j, _)| {
                        v.jobs
                            .iter()
                            .any(|x| x.id() == *j && x.state().is_terminal())
                    })
            }
            _ => true,
        };
        for (i, (job, platform)) in selected.iter().enumerate() {
            let (data, next) = match shared.logs.read_from(*job, offsets[i]).await {
                Ok(x) => x,
                Err(_) => continue,
            };
            offsets[i] = next;
            if data.is_empty() {
                continue;
            }
            for piece in data.chunks(256 * 1024) {
                framed::write_frame(
                    send,
                    &AdminResponse::Log {
                        job: *job,
                        platform: platform.clone(),
                        data: piece.to_vec(),
                    },
                )
                .await?;
            }
        }
        if !follow || finished {
            break;
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
    framed::write_frame(send, &AdminResponse::LogEnd).await
}

/// `cache list`.
pub(crate) async fn cache_list(shared: &Arc<Shared>) -> AdminResponse {
    match shared.store.cache_list().await {
        Ok(mut entries) => {
            entries.sort_by_key(|e| std::cmp::Reverse(e.last_used));
            AdminResponse::Cache(entries)
        }
        Err(e) => internal(e),
    }
}

/// `cache prune`: old entries, and contexts no active build references.
pub(crate) async fn cache_prune(
    shared: &Arc<Shared>,
    older_than_secs: Option<u64>,
) -> AdminResponse {
    let before = older_than_secs.map(|s| Timestamp(now().0.saturating_sub(s.saturating_mul(1000))));
    let cache_entries = match shared.store.cache_prune(before).await {
        Ok(n) => n,
        Err(e) => return internal(e),
    };
    match gc_contexts(shared, std::time::Duration::ZERO).await {
        Ok(contexts) => AdminResponse::Pruned {
            cache_entries,
            contexts,
        },
        Err(e) => internal(e),
    }
}

/// Remove contexts no active build references and older than `min_age`.
pub(crate) async fn gc_contexts(
    shared: &Arc<Shared>,
    min_age: std::time::Duration,
) -> Result<u64, String> {
    let active = shared
        .store
        .active_builds()
        .await
        .map_err(|e| e.to_string())?;
    let keep: std::collections::HashSet<helix_protocol::Digest> = active
        .iter()
        .filter_map(|(b, _)| match &b.spec.source {
            Source::Context { digest } => Some(digest.clone()),
            Source::Git { .. } => None,
        })
        .collect();
    let in_store = shared
        .store
        .context_gc(&keep.iter().cloned().collect::<Vec<_>>(), min_age)
        .await
        .map_err(|e| e.to_string())?;
    let contexts = shared.contexts.clone();
    let local = tokio::task::spawn_blocking(move || contexts.gc(&keep, min_age))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(local.max(in_store))
}

/// `build submit --context`: is the context here already?
pub(crate) async fn has_context(
    shared: &Arc<Shared>,
    digest: &helix_protocol::Digest,
) -> AdminResponse {
    match shared.contexts.has(digest).await {
        Ok(present) => AdminResponse::ContextPresent {
            present,
            max_size: shared.contexts.max_size(),
        },
        Err(e) => internal(e),
    }
}

/// Receive an uploaded context on the request's stream.
pub(crate) async fn upload_context(
    shared: &Arc<Shared>,
    recv: &mut quinn::RecvStream,
    digest: &helix_protocol::Digest,
    size: u64,
) -> AdminResponse {
    match shared.contexts.receive(digest, size, recv).await {
        Ok(size) => {
            info!(%digest, size, "build context stored");
            AdminResponse::ContextStored {
                digest: digest.clone(),
                size,
            }
        }
        Err(
            e @ (crate::contexts::ContextStoreError::Io(_)
            | crate::contexts::ContextStoreError::Shared(_)),
        ) => internal(e),
        Err(e) => {
            info!(%digest, "build context refused: {e}");
            error(RejectCode::BadRequest, e.to_string())
        }
    }
}
