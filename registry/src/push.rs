//! [`Registry::push_layout`]: push one image of an OCI layout to a repository by
//! digest, with no tag, and say what was pushed ([`ImageResult`]).
//!
//! The steps, in order: authenticate for push (oci-client's blob calls take no
//! credentials of their own); for the config and each layer, skip it if the
//! repository has it (`HEAD`), else stream it from its file in 4 MiB chunks, verified
//! as it is read; then put the manifest's exact bytes under its own digest with its
//! media type. The digest is computed locally: the registry answers with a URL.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt as _, StreamExt as _, TryStreamExt as _};
use helix_protocol::{ImageRef, ImageResult};
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};

use crate::client::{reference, Registry};
use crate::error::{from_oci, RegistryError};
use crate::layout::{BlobDescriptor, LayoutError, LayoutImage, OciLayout};

/// Bytes read from a blob file per chunk, each sent as one `PATCH`. oci-client splits
/// larger items into 4 MiB requests anyway; reading the same size keeps one buffer
/// per request and memory flat whatever the blob size.
pub const PUSH_CHUNK_SIZE: usize = 4 * 1024 * 1024;

/// Blobs uploaded at once. A few parallel uploads hide per-request latency; more
/// mostly compete for the same uplink. Memory is at most two chunks per upload.
const CONCURRENT_BLOB_UPLOADS: usize = 3;

/// Wait before the one retry of a blob upload that failed on the network: long
/// enough for a registry restart or a dropped connection to clear, short against a
/// build.
const RETRY_BACKOFF: Duration = Duration::from_secs(1);

/// What happened to one blob.
enum BlobOutcome {
    Present,
    Uploaded { bytes: u64 },
}

impl Registry {
    /// Pushes the image named `name_in_layout` (the `org.opencontainers.image.ref.name`
    /// of `buildah push IMAGE oci:DIR:NAME`; `None` for the layout's only image) from
    /// the OCI layout at `layout_dir` to `destination`'s repository, by digest. The
    /// destination's tag and digest are not used: the image is stored under its own
    /// digest and nothing is tagged.
    ///
    /// Pushing the same layout again uploads nothing and returns the same result.
    pub async fn push_layout(
        &self,
        layout_dir: &Path,
        name_in_layout: Option<&str>,
        destination: &ImageRef,
    ) -> Result<ImageResult, RegistryError> {
        let dir = layout_dir.to_owned();
        let name = name_in_layout.map(str::to_owned);
        let (layout, image) = tokio::task::spawn_blocking(move || {
            let layout = OciLayout::open(&dir)?;
            let image = layout.image(name.as_deref())?;
            Ok::<_, LayoutError>((layout, image))
        })
        .await
        .map_err(|e| {
            RegistryError::Internal(format!("reading the OCI layout did not finish: {e}"))
        })??;

        let (auth, origin) = self.credential(destination.registry()).await?;
        self.push_image(&layout, &image, destination, &auth)
            .await
            .map_err(|e| e.with_credentials(&origin))
    }

    async fn push_image(
        &self,
        layout: &OciLayout,
        image: &LayoutImage,
        destination: &ImageRef,
        auth: &RegistryAuth,
    ) -> Result<ImageResult, RegistryError> {
        let target = destination.with_digest(image.manifest.digest.clone());
        let reference = reference(&target);
        let registry = destination.registry();
        let repository = destination.repository_ref();
        self.client
            .auth(&reference, auth, RegistryOperation::Push)
            .await
            .map_err(|e| {
                from_oci(
                    e,
                    registry,
                    &format!("authenticating to push to {repository}"),
                    &format!("repository {repository}"),
                )
            })?;

        let blobs = image.blobs();
        let outcomes: Vec<BlobOutcome> = futures_util::stream::iter(&blobs)
            .map(|blob| self.push_blob(layout, &reference, registry, &repository, blob))
            .buffer_unordered(CONCURRENT_BLOB_UPLOADS)
            .try_collect()
            .await?;

        self.put_manifest(
            &reference,
            registry,
            &format!("pushing manifest {} to {repository}", image.manifest.digest),
            image.manifest_bytes.clone(),
            &image.manifest.media_type,
        )
        .await?;

        log_summary(&target, image, &outcomes);
        Ok(ImageResult {
            digest: image.manifest.digest.clone(),
            size: image.manifest.size,
            media_type: image.manifest.media_type.clone(),
        })
    }

    /// Makes sure the repository has `blob`: skips it if present, else uploads it,
    /// once more after [`RETRY_BACKOFF`] if the first upload failed on the network.
    async fn push_blob(
        &self,
        layout: &OciLayout,
        reference: &Reference,
        registry: &str,
        repository: &str,
        blob: &BlobDescriptor,
    ) -> Result<BlobOutcome, RegistryError> {
        let digest = blob.digest.as_str();
        let action = format!("pushing blob {digest} to {repository}");
        let what = format!("blob {digest}");
        let exists = self
            .client
            .blob_exists(reference, digest)
            .await
            .map_err(|e| from_oci(e, registry, &action, &what))?;
        if exists {
            tracing::debug!(%digest, size = blob.size, "blob already in the repository, skipped");
            return Ok(BlobOutcome::Present);
        }
        let mut attempt = 1;
        loop {
            // A consumed stream cannot be replayed: every attempt reopens the file.
            let sent = Arc::new(AtomicU64::new(0));
            let counter = Arc::clone(&sent);
            let chunks = layout
                .blob_chunks(blob, PUSH_CHUNK_SIZE)
                .inspect_ok(move |chunk| {
                    counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                })
                .map_err(|e| {
                    oci_client::errors::OciDistributionError::IoError(std::io::Error::other(e))
                });
            let result = self
                .client
                .push_blob_stream(reference, chunks, digest, Some(blob.size))
                .await
                .map_err(|e| from_oci(e, registry, &action, &what));
            let sent = sent.load(Ordering::Relaxed);
            match result {
                Ok(_url) => {
                    tracing::debug!(%digest, bytes = sent, "pushed blob");
                    return Ok(BlobOutcome::Uploaded { bytes: sent });
                }
                Err(e)
                    if attempt == 1
                        && e.is_retryable()
                        && !matches!(e, RegistryError::Layout(_)) =>
                {
                    tracing::warn!(
                        %digest,
                        bytes_sent = sent,
                        error = %e,
                        "blob upload failed, retrying once in {RETRY_BACKOFF:?}"
                    );
                    tokio::time::sleep(RETRY_BACKOFF).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Puts manifest (or index) `bytes` under `reference` (a digest or a tag) exactly
    /// as given, with `media_type` as its content type.
    pub(crate) async fn put_manifest(
        &self,
        reference: &Reference,
        registry: &str,
        action: &str,
        bytes: Bytes,
        media_type: &str,
    ) -> Result<(), RegistryError> {
        let content_type = media_type.parse().map_err(|e| {
            RegistryError::InvalidRequest(format!("invalid media type {media_type:?}: {e}"))
        })?;
        // oci-client panics (an `expect` on the URL ending with the tag) when a
        // registry answers a manifest put by digest without a Location header, as ECR
        // does; turn that into an error instead of taking the process down.
        let put = std::panic::AssertUnwindSafe(self.client.push_manifest_raw(
            reference,
            bytes,
            content_type,
        ))
        .catch_unwind()
        .await;
        match put {
            Ok(Ok(_url)) => Ok(()),
            Ok(Err(e)) => Err(from_oci(e, registry, action, "manifest")),
            Err(_panic) => Err(RegistryError::Rejected {
                registry: registry.to_owned(),
                action: action.to_owned(),
                detail: "the registry accepted the manifest without a Location header, which \
                         oci-client cannot handle for a push by digest"
                    .to_owned(),
            }),
        }
    }
}

fn log_summary(target: &ImageRef, image: &LayoutImage, outcomes: &[BlobOutcome]) {
    let mut uploaded = 0usize;
    let mut bytes = 0u64;
    for outcome in outcomes {
        if let BlobOutcome::Uploaded { bytes: b } = outcome {
            uploaded += 1;
            bytes += b;
        }
    }
    tracing::info!(
        image = %target,
        media_type = %image.manifest.media_type,
        blobs_uploaded = uploaded,
        blobs_present = outcomes.len() - uploaded,
        bytes_uploaded = bytes,
        "pushed image by digest"
    );
}
