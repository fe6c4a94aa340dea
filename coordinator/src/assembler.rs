//! Assembly: when every job of a build succeeded, check what the agents pushed and
//! publish the multi-arch index under the build's tag.
//!
//! Each per-platform manifest is fetched by digest from the registry (so the index is
//! built from recorded digests, never from local leftovers) and its image config's
//! os/architecture/variant must match the job's platform: an agent that advertises
//! arm64 but builds amd64 fails the build here, naming both, instead of publishing a
//! wrong-architecture image (buildx#2119).

use std::time::Duration;

use helix_protocol::{Build, Digest, ImageIndex, ImageResult, Job, JobState, Platform};
use helix_registry::{Registry, RegistryOptions};
use tracing::{info, warn};

use crate::server::ServeError;

/// Attempts for a registry operation that failed on the network.
const ATTEMPTS: u32 = 4;

/// Checks per-platform images and pushes indexes.
#[derive(Debug)]
pub struct Assembler {
    registry: Registry,
}

impl Assembler {
    pub fn new(insecure: &[String]) -> Result<Assembler, ServeError> {
        let registry = Registry::new(RegistryOptions {
            insecure: insecure.to_vec(),
            ..RegistryOptions::default()
        })
        .map_err(|e| ServeError::Registry(e.to_string()))?;
        Ok(Assembler { registry })
    }

    /// The registry client (shared with the result cache's existence checks, so both
    /// read the same registry settings).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Verify every job's image and push the index; the index digest, or why not.
    pub async fn assemble(&self, build: &Build, jobs: &[Job]) -> Result<Digest, String> {
        let mut results: Vec<(Platform, ImageResult)> = Vec::with_capacity(jobs.len());
        for job in jobs {
            let JobState::Succeeded {
                result,
                agent,
                cached_from,
            } = job.state()
            else {
                return Err(format!(
                    "{} has not succeeded ({})",
                    job.platform(),
                    job.state().name()
                ));
            };
            if cached_from.is_some() {
                // Verified when it entered the cache, and its manifest was found in
                // this repository at submit: no need to fetch it again.
                results.push((job.platform().clone(), result.clone()));
                continue;
            }
            let image = build.spec.tag.with_digest(result.digest.clone());
            let fetched = retry(|| self.registry.fetch_manifest(&image))
                .await
                .map_err(|e| format!("cannot fetch the {} image {image}: {e}", job.platform()))?;
            let (bytes, media_type) = (fetched.bytes, fetched.media_type);
            if bytes.len() as u64 != result.size || media_type != result.media_type {
                return Err(format!(
                    "the registry's manifest for {} ({image}) is {} bytes of {media_type}, but agent {agent} reported {} bytes of {}",
                    job.platform(),
                    bytes.len(),
                    result.size,
                    result.media_type
                ));
            }
            let config = retry(|| self.registry.image_platform(&image))
                .await
                .map_err(|e| {
                    format!(
                        "cannot read the {} image's config ({image}): {e}",
                        job.platform()
                    )
                })?;
            let built: Platform = config.to_platform().map_err(|e| {
                format!(
                    "the {} image's config names platform {config}, which is not valid: {e}",
                    job.platform()
                )
            })?;
            if &built != job.platform() {
                return Err(format!(
                    "platform mismatch: the job for {} produced an image for {built} (agent {agent} is misconfigured: it advertises a platform it does not build natively)",
                    job.platform()
                ));
            }
            results.push((job.platform().clone(), result.clone()));
        }
        let index = ImageIndex::new(results).map_err(|e| e.to_string())?;
        let bytes = index.to_json();
        let digest = retry(|| {
            self.registry
                .push_index(&build.spec.tag, &bytes, index.media_type())
        })
        .await
        .map_err(|e| format!("cannot push the index to {}: {e}", build.spec.tag))?;
        info!(build = %build.id, tag = %build.spec.tag, %digest, "pushed the image index");
        Ok(digest)
    }
}

/// Retry a registry operation that failed on the network, with backoff.
async fn retry<T, F, Fut>(mut op: F) -> Result<T, helix_registry::RegistryError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, helix_registry::RegistryError>>,
{
    let mut delay = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && attempt < ATTEMPTS => {
                warn!("registry operation failed (attempt {attempt} of {ATTEMPTS}), retrying: {e}");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}
