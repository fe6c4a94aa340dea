//! The multi-arch image index assembled from per-platform results.
//!
//! Built only from recorded digests, never from local leftovers (podman#22647), and
//! serialized once: the bytes returned by [`ImageIndex::to_json`] are what is pushed,
//! and their digest is what the build records.

use crate::digest::Digest;
use crate::job::ImageResult;
use crate::platform::Platform;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// One platform's image in the index.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IndexEntry {
    pub platform: Platform,
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

/// Platform → manifest, in a stable order (sorted by platform) so that the same
/// results always give the same index bytes and digest.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ImageIndex {
    entries: Vec<IndexEntry>,
}

/// Why an index could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    #[error("platform {0} appears twice in the index")]
    DuplicatePlatform(Platform),
    #[error("the index has no entries")]
    Empty,
    #[error("manifest {digest} for {platform} has media type {media_type:?}, which cannot go in an image index")]
    UnsupportedMediaType {
        platform: Platform,
        digest: Digest,
        media_type: String,
    },
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct IndexJson<'a> {
    schema_version: u32,
    media_type: &'a str,
    manifests: Vec<DescriptorJson<'a>>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct DescriptorJson<'a> {
    media_type: &'a str,
    digest: &'a str,
    size: u64,
    platform: PlatformJson<'a>,
}

#[derive(serde::Serialize)]
struct PlatformJson<'a> {
    architecture: &'a str,
    os: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
}

impl ImageIndex {
    /// An index over `results`. Every manifest must be an OCI or Docker schema 2 image
    /// manifest, and each platform may appear once.
    pub fn new(
        results: impl IntoIterator<Item = (Platform, ImageResult)>,
    ) -> Result<ImageIndex, IndexError> {
        let mut entries: Vec<IndexEntry> = Vec::new();
        for (platform, r) in results {
            if r.media_type != OCI_MANIFEST && r.media_type != DOCKER_MANIFEST {
                return Err(IndexError::UnsupportedMediaType {
                    platform,
                    digest: r.digest,
                    media_type: r.media_type,
                });
            }
            if entries.iter().any(|e| e.platform == platform) {
                return Err(IndexError::DuplicatePlatform(platform));
            }
            entries.push(IndexEntry {
                platform,
                digest: r.digest,
                size: r.size,
                media_type: r.media_type,
            });
        }
        if entries.is_empty() {
            return Err(IndexError::Empty);
        }
        entries.sort_by(|a, b| a.platform.cmp(&b.platform));
        Ok(ImageIndex { entries })
    }

    pub fn entries(&self) -> &[IndexEntry] {
        &self.entries
    }

    /// The index's media type, matching its children: a Docker manifest list when
    /// every child is a Docker schema 2 manifest (registries and old clients expect
    /// the pair), an OCI index otherwise.
    pub fn media_type(&self) -> &'static str {
        if !self.entries.is_empty() && self.entries.iter().all(|e| e.media_type == DOCKER_MANIFEST)
        {
            DOCKER_MANIFEST_LIST
        } else {
            OCI_INDEX
        }
    }

    /// The exact bytes to push.
    pub fn to_json(&self) -> Vec<u8> {
        let doc = IndexJson {
            schema_version: 2,
            media_type: self.media_type(),
            manifests: self
                .entries
                .iter()
                .map(|e| DescriptorJson {
                    media_type: &e.media_type,
                    digest: e.digest.as_str(),
                    size: e.size,
                    platform: PlatformJson {
                        architecture: e.platform.arch(),
                        os: e.platform.os(),
                        variant: e.platform.variant(),
                    },
                })
                .collect(),
        };
        serde_json::to_vec_pretty(&doc).expect("serializing plain structs to JSON cannot fail")
    }

    /// The digest of [`ImageIndex::to_json`].
    pub fn digest(&self) -> Digest {
        Digest::sha256_of(&self.to_json())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(seed: &[u8], media_type: &str) -> ImageResult {
        ImageResult {
            digest: Digest::sha256_of(seed),
            size: 500 + seed.len() as u64,
            media_type: media_type.into(),
        }
    }

    fn p(s: &str) -> Platform {
        s.parse().expect("valid platform")
    }

    #[test]
    fn renders_an_oci_index_with_platforms() {
        let index = ImageIndex::new([
            (p("linux/arm64"), result(b"arm", OCI_MANIFEST)),
            (p("linux/amd64"), result(b"amd", OCI_MANIFEST)),
            (p("linux/arm/v7"), result(b"arm7", OCI_MANIFEST)),
        ])
        .expect("valid");
        let json: serde_json::Value = serde_json::from_slice(&index.to_json()).expect("json");
        assert_eq!(json["schemaVersion"], 2);
        assert_eq!(json["mediaType"], OCI_INDEX);
        let manifests = json["manifests"].as_array().expect("array");
        assert_eq!(manifests.len(), 3);
        // Sorted by platform: linux/amd64, linux/arm/v7, linux/arm64.
        assert_eq!(
            manifests[0]["platform"],
            serde_json::json!({"architecture": "amd64", "os": "linux"})
        );
        assert_eq!(
            manifests[1]["platform"],
            serde_json::json!({"architecture": "arm", "os": "linux", "variant": "v7"})
        );
        assert_eq!(
            manifests[2]["platform"],
            serde_json::json!({"architecture": "arm64", "os": "linux"})
        );
        assert_eq!(manifests[0]["digest"], Digest::sha256_of(b"amd").as_str());
        assert_eq!(manifests[0]["size"], 503);
        assert_eq!(manifests[0]["mediaType"], OCI_MANIFEST);
        assert_eq!(index.digest(), Digest::sha256_of(&index.to_json()));
    }

    #[test]
    fn the_same_results_give_the_same_bytes_in_any_order() {
        let a = ImageIndex::new([
            (p("linux/arm64"), result(b"arm", OCI_MANIFEST)),
            (p("linux/amd64"), result(b"amd", OCI_MANIFEST)),
        ])
        .expect("valid");
        let b = ImageIndex::new([
            (p("linux/amd64"), result(b"amd", OCI_MANIFEST)),
            (p("linux/arm64"), result(b"arm", OCI_MANIFEST)),
        ])
        .expect("valid");
        assert_eq!(a.to_json(), b.to_json());
    }

    #[test]
    fn docker_children_give_a_docker_manifest_list() {
        let index = ImageIndex::new([
            (p("linux/amd64"), result(b"a", DOCKER_MANIFEST)),
            (p("linux/arm64"), result(b"b", DOCKER_MANIFEST)),
        ])
        .expect("valid");
        assert_eq!(index.media_type(), DOCKER_MANIFEST_LIST);
    }

    #[test]
    fn refuses_duplicates_empty_and_non_manifests() {
        let dup = ImageIndex::new([
            (p("linux/amd64"), result(b"a", OCI_MANIFEST)),
            (p("linux/x86_64"), result(b"b", OCI_MANIFEST)),
        ]);
        assert_eq!(dup, Err(IndexError::DuplicatePlatform(p("linux/amd64"))));
        assert_eq!(ImageIndex::new([]), Err(IndexError::Empty));
        let nested = ImageIndex::new([(p("linux/amd64"), result(b"a", OCI_INDEX))]);
        assert!(matches!(
            nested,
            Err(IndexError::UnsupportedMediaType { .. })
        ));
    }
}
