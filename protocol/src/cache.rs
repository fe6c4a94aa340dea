//! The result cache's key: what makes two platform builds "the same inputs".
//!
//! A job whose key has a cache entry (for the same destination repository, with its
//! manifest still in the registry) is completed at submit with no agent work. The
//! scheduler's warm-cache routing preference uses [`source_identity`], the source
//! half of the same notion.

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::ids::{AgentId, BuildId};
use crate::job::ImageResult;
use crate::platform::Platform;
use crate::time::Timestamp;

/// Bumped whenever the fields or their encoding below change, so old entries simply
/// stop matching instead of matching wrongly.
pub const CACHE_KEY_VERSION: &str = "helix-cache-key-v1";

/// The source a build was pinned to: the commit for a git source, the context
/// archive's digest for an uploaded context.
pub fn source_identity(repo_or_context: &str, pinned: &str) -> String {
    format!("{repo_or_context}@{pinned}")
}

/// Everything that determines a platform image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheInputs<'a> {
    /// [`source_identity`]: the repository URL and pinned commit, or `context` and
    /// the context digest.
    pub source: &'a str,
    pub dockerfile: &'a str,
    pub build_args: &'a BTreeMap<String, String>,
    pub target: Option<&'a str>,
    pub labels: &'a BTreeMap<String, String>,
    pub platform: &'a Platform,
    /// `buildah`, `podman`, ...: builders may produce different images from the same
    /// inputs, so their results are kept apart.
    pub builder: &'a str,
}

/// The key: sha256 over a canonical encoding of [`CacheInputs`], version first.
///
/// Encoding: for each field in this order — version, source, dockerfile, build args
/// (sorted by key, as `key=value`), target (empty when none, with a presence byte),
/// labels (sorted), normalized platform, builder — the field name, a NUL, its length
/// as 8 big-endian bytes, and its bytes. Lengths make the encoding unambiguous
/// whatever the values contain.
pub fn cache_key(inputs: &CacheInputs<'_>) -> Digest {
    let mut h = Sha256::new();
    let mut field = |name: &str, value: &[u8]| {
        h.update(name.as_bytes());
        h.update([0u8]);
        h.update((value.len() as u64).to_be_bytes());
        h.update(value);
    };
    field("version", CACHE_KEY_VERSION.as_bytes());
    field("source", inputs.source.as_bytes());
    field("dockerfile", inputs.dockerfile.as_bytes());
    field("build-args", &pairs(inputs.build_args));
    match inputs.target {
        Some(t) => field("target", &[&[1u8][..], t.as_bytes()].concat()),
        None => field("target", &[0u8]),
    }
    field("labels", &pairs(inputs.labels));
    field("platform", inputs.platform.to_string().as_bytes());
    field("builder", inputs.builder.as_bytes());
    Digest::from_sha256(h.finalize().into())
}

/// Sorted `key=value` pairs, each length-prefixed.
fn pairs(map: &BTreeMap<String, String>) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in map {
        let item = format!("{k}={v}");
        out.extend((item.len() as u64).to_be_bytes());
        out.extend(item.as_bytes());
    }
    out
}

/// One cached platform image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CacheEntry {
    pub key: Digest,
    /// `registry/repository` the image lives in; a hit needs the same repository,
    /// because an index can only reference manifests of its own repository.
    pub repository: String,
    pub platform: Platform,
    pub result: ImageResult,
    /// The build and agent that produced it.
    pub build: BuildId,
    pub agent: AgentId,
    pub builder: String,
    pub created_at: Timestamp,
    pub last_used: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs<'a>(
        args: &'a BTreeMap<String, String>,
        labels: &'a BTreeMap<String, String>,
        p: &'a Platform,
    ) -> CacheInputs<'a> {
        CacheInputs {
            source: "https://h/r.git@0123",
            dockerfile: "Dockerfile",
            build_args: args,
            target: None,
            labels,
            platform: p,
            builder: "buildah",
        }
    }

    #[test]
    fn every_input_changes_the_key_and_nothing_else_does() {
        let args = BTreeMap::from([("A".to_string(), "1".to_string())]);
        let labels = BTreeMap::new();
        let p: Platform = "linux/amd64".parse().expect("valid");
        let base = cache_key(&inputs(&args, &labels, &p));
        assert_eq!(
            base,
            cache_key(&inputs(&args, &labels, &p)),
            "deterministic"
        );
        let same: Platform = "linux/x86_64".parse().expect("valid");
        assert_eq!(
            base,
            cache_key(&inputs(&args, &labels, &same)),
            "normalized platform"
        );

        let other_args = BTreeMap::from([("A".to_string(), "2".to_string())]);
        let arm: Platform = "linux/arm64".parse().expect("valid");
        let variants = [
            cache_key(&CacheInputs {
                source: "https://h/r.git@4567",
                ..inputs(&args, &labels, &p)
            }),
            cache_key(&CacheInputs {
                dockerfile: "Dockerfile.prod",
                ..inputs(&args, &labels, &p)
            }),
            cache_key(&inputs(&other_args, &labels, &p)),
            cache_key(&CacheInputs {
                target: Some("final"),
                ..inputs(&args, &labels, &p)
            }),
            cache_key(&CacheInputs {
                target: Some(""),
                ..inputs(&args, &labels, &p)
            }),
            cache_key(&inputs(&args, &args, &p)),
            cache_key(&inputs(&args, &labels, &arm)),
            cache_key(&CacheInputs {
                builder: "podman",
                ..inputs(&args, &labels, &p)
            }),
        ];
        for (i, v) in variants.iter().enumerate() {
            assert_ne!(*v, base, "variant {i} must miss");
            for (j, w) in variants.iter().enumerate() {
                if i != j {
                    assert_ne!(v, w, "variants {i} and {j} collide");
                }
            }
        }
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        let a = BTreeMap::from([("A".to_string(), "1,B=2".to_string())]);
        let b = BTreeMap::from([
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "2".to_string()),
        ]);
        let labels = BTreeMap::new();
        let p: Platform = "linux/amd64".parse().expect("valid");
        assert_ne!(
            cache_key(&inputs(&a, &labels, &p)),
            cache_key(&inputs(&b, &labels, &p))
        );
    }
}
