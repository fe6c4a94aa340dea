//! What the coordinator asks of a registry when it assembles a build:
//! [`Registry::fetch_manifest`] (exact bytes, verified against the digest asked for),
//! [`Registry::image_platform`] (the os/architecture/variant in an image's config),
//! [`Registry::manifest_exists`] (for result-cache hits) and [`Registry::push_index`]
//! (the assembled index under the tag).
//!
//! Deleting a manifest is not offered: oci-client 0.18 has no `DELETE` call.

use bytes::Bytes;
use futures_util::StreamExt as _;
use helix_protocol::index::{DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST};
use helix_protocol::{Digest, ImageRef, Platform, PlatformError};
use oci_client::RegistryOperation;

use crate::client::{reference, Registry};
use crate::error::{error_chain, from_oci, RegistryError};

/// The manifest types asked for (the `Accept` header) and understood.
const MANIFEST_TYPES: [&str; 4] = [
    OCI_MANIFEST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
];

/// Largest image config read. Configs are small JSON (a long build history is a few
/// hundred KiB); a bigger descriptor is refused before anything is downloaded.
pub const MAX_CONFIG_SIZE: u64 = 8 * 1024 * 1024;

/// A manifest exactly as the registry stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedManifest {
    pub bytes: Bytes,
    /// The manifest's `mediaType`, or for an OCI document without one, what its shape
    /// says (`manifests` → index, `config` → image manifest).
    pub media_type: String,
    /// The sha256 of `bytes`, equal to the digest that was asked for.
    pub digest: Digest,
}

/// The platform an image's config declares, as written there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePlatform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl ImagePlatform {
    /// The normalized [`Platform`], to compare with a job's platform (never compare
    /// the raw strings: `arm64/v8` and `arm64` are the same platform).
    pub fn to_platform(&self) -> Result<Platform, PlatformError> {
        match &self.variant {
            Some(variant) if !variant.is_empty() => {
                format!("{}/{}/{variant}", self.os, self.architecture).parse()
            }
            _ => format!("{}/{}", self.os, self.architecture).parse(),
        }
    }
}

impl std::fmt::Display for ImagePlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(variant) if !variant.is_empty() => write!(f, "/{variant}"),
            _ => Ok(()),
        }
    }
}

/// The fields of an image config that say its platform.
#[derive(serde::Deserialize)]
struct ConfigPlatform {
    os: String,
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

/// Enough of a manifest to tell what kind it is.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestShape {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    config: Option<serde::de::IgnoredAny>,
}

impl Registry {
    /// The manifest `image` names by digest, its media type and digest. The bytes are
    /// checked to hash to the digest asked for.
    pub async fn fetch_manifest(&self, image: &ImageRef) -> Result<FetchedManifest, RegistryError> {
        let digest = require_digest(image, "fetching a manifest")?;
        let registry = image.registry();
        let action = format!("fetching manifest {image}");
        let what = format!("manifest {image}");
        let (auth, origin) = self.credential(registry).await?;
        let (bytes, _) = self
            .client
            .pull_manifest_raw(&reference(image), &auth, &MANIFEST_TYPES)
            .await
            .map_err(|e| from_oci(e, registry, &action, &what).with_credentials(&origin))?;
        let actual = Digest::sha256_of(&bytes);
        if actual != *digest {
            return Err(RegistryError::DigestMismatch {
                what,
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        let shape: ManifestShape =
            serde_json::from_slice(&bytes).map_err(|e| RegistryError::Rejected {
                registry: registry.to_owned(),
                action: action.clone(),
                detail: format!("the manifest is not JSON: {e}"),
            })?;
        let media_type = match shape {
            ManifestShape {
                media_type: Some(media_type),
                ..
            } => media_type,
            ManifestShape {
                manifests: Some(_), ..
            } => OCI_INDEX.to_owned(),
            ManifestShape {
                config: Some(_), ..
            } => OCI_MANIFEST.to_owned(),
            _ => {
                return Err(RegistryError::Rejected {
                    registry: registry.to_owned(),
                    action,
                    detail: "the document has no mediaType, manifests or config".to_owned(),
                })
            }
        };
        Ok(FetchedManifest {
            bytes,
            media_type,
            digest: actual,
        })
    }

    /// The platform declared by the config of the image manifest `image` names by
    /// digest (an OCI or Docker schema 2 manifest; an index is refused).
    pub async fn image_platform(&self, image: &ImageRef) -> Result<ImagePlatform, RegistryError> {
        let manifest = self.fetch_manifest(image).await?;
        if manifest.media_type != OCI_MANIFEST && manifest.media_type != DOCKER_MANIFEST {
            return Err(RegistryError::UnsupportedMediaType {
                what: format!("manifest {image}"),
                media_type: manifest.media_type,
                expected: format!("an image manifest ({OCI_MANIFEST} or {DOCKER_MANIFEST})"),
            });
        }
        let registry = image.registry();
        let action = format!("reading the config of {image}");
        let rejected = |detail: String| RegistryError::Rejected {
            registry: registry.to_owned(),
            action: action.clone(),
            detail,
        };
        let parsed: oci_spec::image::ImageManifest = serde_json::from_slice(&manifest.bytes)
            .map_err(|e| rejected(format!("invalid image manifest: {e}")))?;
        let size = parsed.config().size();
        let config_digest: Digest = parsed
            .config()
            .digest()
            .to_string()
            .parse()
            .map_err(|e| rejected(format!("config digest: {e}")))?;
        if size > MAX_CONFIG_SIZE {
            return Err(rejected(format!(
                "the config {config_digest} is {size} bytes, more than the {MAX_CONFIG_SIZE} \
                 Helix reads"
            )));
        }
        let bytes = self
            .pull_small_blob(image, &config_digest, size, &action)
            .await?;
        let config: ConfigPlatform = serde_json::from_slice(&bytes)
            .map_err(|e| rejected(format!("config {config_digest} has no platform: {e}")))?;
        Ok(ImagePlatform {
            os: config.os,
            architecture: config.architecture,
            variant: config.variant.filter(|v| !v.is_empty()),
        })
    }

    /// Whether the repository has the manifest `image` names by digest: `false` for
    /// "not found", an error for anything else (an unreachable registry is not
    /// evidence that the manifest is gone).
    pub async fn manifest_exists(&self, image: &ImageRef) -> Result<bool, RegistryError> {
        require_digest(image, "checking that a manifest exists")?;
        let registry = image.registry();
        let (auth, origin) = self.credential(registry).await?;
        // A HEAD, falling back to a GET when the registry sends no digest header; a
        // digest header that differs from the one asked for is an error.
        match self
            .client
            .fetch_manifest_digest(&reference(image), &auth)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) => match from_oci(
                e,
                registry,
                &format!("checking manifest {image}"),
                &format!("manifest {image}"),
            ) {
                RegistryError::NotFound { .. } => Ok(false),
                other => Err(other.with_credentials(&origin)),
            },
        }
    }

    /// Pushes an image index (`bytes` exactly as given, e.g. from
    /// `helix_protocol::ImageIndex::to_json`) under `tag_ref`'s tag and returns its
    /// digest. The manifests it lists must already be in the repository.
    pub async fn push_index(
        &self,
        tag_ref: &ImageRef,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<Digest, RegistryError> {
        let Some(tag) = tag_ref.tag() else {
            return Err(RegistryError::InvalidRequest(format!(
                "cannot push an index to {tag_ref}: the reference has no tag to push it under"
            )));
        };
        if media_type != OCI_INDEX && media_type != DOCKER_MANIFEST_LIST {
            return Err(RegistryError::UnsupportedMediaType {
                what: format!("the index for {tag_ref}"),
                media_type: media_type.to_owned(),
                expected: format!("an index ({OCI_INDEX} or {DOCKER_MANIFEST_LIST})"),
            });
        }
        let digest = Digest::sha256_of(bytes);
        if let Some(pinned) = tag_ref.digest() {
            if *pinned != digest {
                return Err(RegistryError::InvalidRequest(format!(
                    "cannot push an index to {tag_ref}: its bytes hash to {digest}"
                )));
            }
        }
        let registry = tag_ref.registry();
        let repository = tag_ref.repository_ref();
        let tagged = oci_client::Reference::with_tag(
            registry.to_owned(),
            tag_ref.repository().to_owned(),
            tag.to_owned(),
        );
        let (auth, origin) = self.credential(registry).await?;
        let push = async {
            self.client
                .auth(&tagged, &auth, RegistryOperation::Push)
                .await
                .map_err(|e| {
                    from_oci(
                        e,
                        registry,
                        &format!("authenticating to push to {repository}"),
                        &format!("repository {repository}"),
                    )
                })?;
            self.put_manifest(
                &tagged,
                registry,
                &format!("pushing index {digest} to {repository}:{tag}"),
                Bytes::copy_from_slice(bytes),
                media_type,
            )
            .await
        };
        push.await.map_err(|e| e.with_credentials(&origin))?;
        tracing::info!(%digest, image = %tag_ref, "pushed index");
        Ok(digest)
    }

    /// Downloads a blob of at most `size` bytes from `image`'s repository and checks
    /// its size and digest.
    async fn pull_small_blob(
        &self,
        image: &ImageRef,
        digest: &Digest,
        size: u64,
        action: &str,
    ) -> Result<Vec<u8>, RegistryError> {
        let registry = image.registry();
        let what = format!("blob {digest} of {}", image.repository_ref());
        let mut stream = self
            .client
            .pull_blob_stream(&reference(image), digest.as_str())
            .await
            .map_err(|e| from_oci(e, registry, action, &what))?;
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| stream_error(e, registry, action, &what))?;
            bytes.extend_from_slice(&chunk);
            if bytes.len() as u64 > size {
                return Err(RegistryError::Rejected {
                    registry: registry.to_owned(),
                    action: action.to_owned(),
                    detail: format!("{what} is longer than the {size} bytes its descriptor says"),
                });
            }
        }
        let actual = Digest::sha256_of(&bytes);
        if actual != *digest {
            return Err(RegistryError::DigestMismatch {
                what,
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(bytes)
    }
}

/// An error from a blob download stream: oci-client's own digest check arrives as an
/// `io::Error` wrapping its `DigestError`; anything else is the connection.
fn stream_error(e: std::io::Error, registry: &str, action: &str, what: &str) -> RegistryError {
    if let Some(oci_client::errors::DigestError::VerificationError { expected, actual }) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<oci_client::errors::DigestError>())
    {
        return RegistryError::DigestMismatch {
            what: what.to_owned(),
            expected: expected.clone(),
            actual: actual.clone(),
        };
    }
    RegistryError::Unreachable {
        registry: registry.to_owned(),
        action: action.to_owned(),
        detail: error_chain(&e),
    }
}

fn require_digest<'a>(image: &'a ImageRef, doing: &str) -> Result<&'a Digest, RegistryError> {
    image.digest().ok_or_else(|| {
        RegistryError::InvalidRequest(format!(
            "{doing} needs a reference pinned by digest (name@sha256:...), got {image}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_platforms_normalize() {
        let p = |os: &str, arch: &str, variant: Option<&str>| ImagePlatform {
            os: os.into(),
            architecture: arch.into(),
            variant: variant.map(Into::into),
        };
        let arm64: Platform = "linux/arm64".parse().expect("valid");
        assert_eq!(p("linux", "arm64", None).to_platform(), Ok(arm64.clone()));
        assert_eq!(
            p("linux", "arm64", Some("v8")).to_platform(),
            Ok(arm64.clone())
        );
        assert_eq!(p("linux", "aarch64", Some("")).to_platform(), Ok(arm64));
        assert_eq!(p("linux", "arm", Some("v7")).to_string(), "linux/arm/v7");
        assert!(p("linux", "amd65", None).to_platform().is_err());
    }

    #[tokio::test]
    async fn refuses_references_without_what_the_call_needs() {
        let registry = Registry::new(crate::RegistryOptions {
            auth: crate::AuthSource::Anonymous,
            ..crate::RegistryOptions::default()
        })
        .expect("client");
        let tagged: ImageRef = "127.0.0.1:1/test/app:v1".parse().expect("valid");
        let err = registry
            .fetch_manifest(&tagged)
            .await
            .expect_err("needs a digest");
        assert!(err.to_string().contains("pinned by digest"), "{err}");
        assert!(!err.is_retryable());
        let pinned = tagged.with_digest(Digest::sha256_of(b"x"));
        let err = registry
            .push_index(&pinned, b"{}", OCI_INDEX)
            .await
            .expect_err("needs a tag");
        assert!(err.to_string().contains("no tag"), "{err}");
        let err = registry
            .push_index(&tagged, b"{}", OCI_MANIFEST)
            .await
            .expect_err("an index media type");
        assert!(
            matches!(err, RegistryError::UnsupportedMediaType { .. }),
            "{err}"
        );
    }
}
