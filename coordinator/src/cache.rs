//! The result cache's policy: which builds' inputs make a key, and where entries come
//! from. The key itself is [`helix_protocol::cache::cache_key`].
//!
//! Entries are written only when a build succeeded, after assembly verified every
//! image's platform, so a wrong-architecture image can never be served from the cache.
//! A hit needs the same destination repository (an index can only reference manifests
//! of its own repository) and a manifest that still exists there.

use helix_protocol::build::Source;
use helix_protocol::cache::{cache_key, source_identity, CacheInputs};
use helix_protocol::{Build, Digest, Platform};

/// Builder kinds a result may have been produced by, in the order a submit looks
/// them up: the agents' builder is not known before a job is placed, and an image
/// built by either is an image of exactly these inputs.
pub const BUILDERS: &[&str] = &["buildah", "podman"];

/// The pinned source of a build, as the cache sees it.
pub fn pinned_source(build: &Build) -> String {
    match (&build.spec.source, &build.commit) {
        (Source::Git { repo, .. }, Some(commit)) => source_identity(repo, commit),
        (Source::Git { repo, reference }, None) => source_identity(repo, reference),
        (Source::Context { digest }, _) => source_identity("context", digest.as_str()),
    }
}

/// The repository a build's source comes from, for the scheduler's warm-cache
/// preference (the same notion as the cache, without the pin: a newer commit of the
/// same repository still reuses most layers).
pub fn source_repository(build: &Build) -> String {
    match &build.spec.source {
        Source::Git { repo, .. } => repo.clone(),
        Source::Context { digest } => format!("context:{digest}"),
    }
}

/// The cache key of `build`'s job for `platform`, built by `builder`.
pub fn key_for(build: &Build, platform: &Platform, builder: &str) -> Digest {
    let source = pinned_source(build);
    cache_key(&CacheInputs {
        source: &source,
        dockerfile: &build.spec.dockerfile,
        build_args: &build.spec.build_args,
        target: build.spec.target.as_deref(),
        labels: &build.spec.labels,
        platform,
        builder,
    })
}
