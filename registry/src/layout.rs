//! [`OciLayout`]: an OCI image layout directory, as `buildah push IMAGE oci:DIR:NAME`
//! writes it: an `oci-layout` marker, an `index.json` naming manifests, and
//! content-addressed files under `blobs/sha256/`.
//!
//! Nothing read from a layout is trusted: the manifest is checked against its
//! descriptor when it is read, and every other blob is checked as it is streamed
//! ([`OciLayout::blob_chunks`]), so a corrupt layout is an error naming the blob
//! before the registry commits anything.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use helix_protocol::index::{DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST};
use helix_protocol::Digest;
use sha2::Digest as _;

/// The annotation that names a manifest in `index.json` (`oci:DIR:NAME`).
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// Largest manifest read from a layout: registries refuse bigger ones (distribution
/// caps manifests at 4 MiB), so a bigger one is a corrupt or hostile layout.
pub const MAX_MANIFEST_SIZE: u64 = 4 * 1024 * 1024;

/// Largest `index.json` and `oci-layout` read; they list a few manifests.
const MAX_INDEX_SIZE: u64 = 4 * 1024 * 1024;

/// What a descriptor says about a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobDescriptor {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

/// One image of a layout: its manifest (bytes exactly as stored, verified) and the
/// blobs the manifest names.
#[derive(Debug, Clone)]
pub struct LayoutImage {
    /// The manifest's descriptor; its media type is the manifest's own `mediaType`
    /// when it has one.
    pub manifest: BlobDescriptor,
    pub manifest_bytes: Bytes,
    pub config: BlobDescriptor,
    pub layers: Vec<BlobDescriptor>,
}

impl LayoutImage {
    /// The config, then the layers, each digest once.
    pub fn blobs(&self) -> Vec<BlobDescriptor> {
        let mut out: Vec<BlobDescriptor> = Vec::with_capacity(self.layers.len() + 1);
        for blob in std::iter::once(&self.config).chain(&self.layers) {
            if !out.iter().any(|b| b.digest == blob.digest) {
                out.push(blob.clone());
            }
        }
        out
    }
}

/// Why a layout could not be used. Corruption names the blob.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    #[error("{dir} is not an OCI image layout: {reason}")]
    NotALayout { dir: PathBuf, reason: String },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("the OCI layout {dir} holds no image named {name:?} (it has: {available})")]
    NameNotFound {
        dir: PathBuf,
        name: String,
        available: String,
    },
    #[error("the OCI layout {dir} holds no image (its index.json lists no manifest)")]
    Empty { dir: PathBuf },
    #[error("the OCI layout {dir} holds {count} images ({available}); name the one to push")]
    Ambiguous {
        dir: PathBuf,
        count: usize,
        available: String,
    },
    #[error("corrupt OCI layout {dir}: blob {digest} {reason} (rebuild the image)")]
    Corrupt {
        dir: PathBuf,
        digest: String,
        reason: String,
    },
    #[error("the OCI layout {dir} names {what} {digest} of media type {media_type:?}, expected {expected}")]
    UnsupportedMediaType {
        dir: PathBuf,
        what: &'static str,
        digest: String,
        media_type: String,
        expected: &'static str,
    },
}

impl LayoutError {
    /// Only a failing disk is worth another attempt; a malformed or corrupt layout
    /// would be pushed the same way again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, LayoutError::Io { .. })
    }
}

/// An OCI image layout directory whose `oci-layout` marker has been checked.
#[derive(Debug, Clone)]
pub struct OciLayout {
    dir: PathBuf,
}

impl OciLayout {
    /// Opens `dir`, checking its `oci-layout` file (`imageLayoutVersion` 1.x).
    pub fn open(dir: &Path) -> Result<OciLayout, LayoutError> {
        let marker = dir.join("oci-layout");
        let bytes = match read_limited(&marker, MAX_INDEX_SIZE) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LayoutError::NotALayout {
                    dir: dir.to_owned(),
                    reason: "no oci-layout file (was the image pushed with `oci:DIR:NAME`?)"
                        .to_owned(),
                })
            }
            Err(source) => {
                return Err(LayoutError::Io {
                    path: marker,
                    source,
                })
            }
        };
        let layout: oci_spec::image::OciLayout =
            serde_json::from_slice(&bytes).map_err(|e| LayoutError::Invalid {
                path: marker.clone(),
                reason: e.to_string(),
            })?;
        let version = layout.image_layout_version();
        if version.split('.').next() != Some("1") {
            return Err(LayoutError::NotALayout {
                dir: dir.to_owned(),
                reason: format!("unsupported imageLayoutVersion {version:?} (expected 1.x)"),
            });
        }
        Ok(OciLayout {
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the blob with `digest` lives.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join("blobs")
            .join(digest.algorithm())
            .join(digest.hex())
    }

    /// The image named `name` (the `org.opencontainers.image.ref.name` annotation), or
    /// the only image when `name` is `None`. Reads and verifies the manifest.
    pub fn image(&self, name: Option<&str>) -> Result<LayoutImage, LayoutError> {
        let index_path = self.dir.join("index.json");
        let index_bytes =
            read_limited(&index_path, MAX_INDEX_SIZE).map_err(|source| LayoutError::Io {
                path: index_path.clone(),
                source,
            })?;
        let index: oci_spec::image::ImageIndex =
            serde_json::from_slice(&index_bytes).map_err(|e| LayoutError::Invalid {
                path: index_path.clone(),
                reason: e.to_string(),
            })?;
        let entries = index.manifests();
        let ref_name = |d: &oci_spec::image::Descriptor| {
            d.annotations()
                .as_ref()
                .and_then(|a| a.get(REF_NAME_ANNOTATION))
                .cloned()
        };
        let available = || {
            let names: Vec<String> = entries
                .iter()
                .map(|d| ref_name(d).unwrap_or_else(|| format!("unnamed {}", d.digest())))
                .collect();
            if names.is_empty() {
                "nothing".to_owned()
            } else {
                names.join(", ")
            }
        };
        let chosen = match name {
            Some(name) => {
                let mut matching = entries
                    .iter()
                    .filter(|d| ref_name(d).as_deref() == Some(name));
                match (matching.next(), matching.next()) {
                    (Some(d), None) => d,
                    (None, _) => {
                        return Err(LayoutError::NameNotFound {
                            dir: self.dir.clone(),
                            name: name.to_owned(),
                            available: available(),
                        })
                    }
                    (Some(_), Some(_)) => {
                        return Err(LayoutError::Invalid {
                            path: index_path,
                            reason: format!("two manifests are named {name:?}"),
                        })
                    }
                }
            }
            None => match entries.as_slice() {
                [only] => only,
                [] => {
                    return Err(LayoutError::Empty {
                        dir: self.dir.clone(),
                    })
                }
                many => {
                    return Err(LayoutError::Ambiguous {
                        dir: self.dir.clone(),
                        count: many.len(),
                        available: available(),
                    })
                }
            },
        };

        let descriptor = self.descriptor(chosen)?;
        if descriptor.media_type == OCI_INDEX || descriptor.media_type == DOCKER_MANIFEST_LIST {
            return Err(self.unsupported_manifest(&descriptor, &descriptor.media_type));
        }
        if descriptor.size > MAX_MANIFEST_SIZE {
            return Err(self.corrupt(
                &descriptor.digest,
                format!(
                    "is a manifest of {} bytes, more than the {MAX_MANIFEST_SIZE} registries accept",
                    descriptor.size
                ),
            ));
        }
        let bytes = Bytes::from(self.read_blob(&descriptor)?);
        let manifest_path = self.blob_path(&descriptor.digest);
        let manifest: oci_spec::image::ImageManifest =
            serde_json::from_slice(&bytes).map_err(|e| LayoutError::Invalid {
                path: manifest_path.clone(),
                reason: format!("not an image manifest: {e}"),
            })?;
        // The manifest's own mediaType is what the registry will see; it must agree
        // with the descriptor that led here.
        let media_type = match manifest.media_type() {
            Some(own) => {
                let own = own.to_string();
                if own != descriptor.media_type {
                    return Err(LayoutError::Invalid {
                        path: manifest_path,
                        reason: format!(
                            "its mediaType {own:?} differs from {:?} in index.json",
                            descriptor.media_type
                        ),
                    });
                }
                own
            }
            None => descriptor.media_type.clone(),
        };
        if media_type != OCI_MANIFEST && media_type != DOCKER_MANIFEST {
            return Err(self.unsupported_manifest(&descriptor, &media_type));
        }
        let config = self.descriptor(manifest.config())?;
        let layers = manifest
            .layers()
            .iter()
            .map(|d| self.descriptor(d))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(LayoutImage {
            manifest: BlobDescriptor {
                media_type,
                ..descriptor
            },
            manifest_bytes: bytes,
            config,
            layers,
        })
    }

    /// Reads a whole (small) blob, checking its size and digest.
    pub fn read_blob(&self, blob: &BlobDescriptor) -> Result<Vec<u8>, LayoutError> {
        let path = self.blob_path(&blob.digest);
        // One byte more than expected tells a longer file from an exact one.
        let bytes = read_limited(&path, blob.size.saturating_add(1))
            .map_err(|source| self.read_error(&blob.digest, path, source))?;
        let mut check = Check::new(self.clone(), blob.clone());
        check.update(&bytes)?;
        check.finish()?;
        Ok(bytes)
    }

    /// Streams a blob in chunks of `chunk_size` bytes, checking its size and digest as
    /// it goes. One chunk is held back until the next has been read, and the last one
    /// is released only after the whole blob checked out: a consumer that commits
    /// after the last chunk (a registry upload) never commits a corrupt blob.
    pub fn blob_chunks(&self, blob: &BlobDescriptor, chunk_size: usize) -> BlobChunks {
        BlobChunks::new(self.clone(), blob.clone(), chunk_size.max(1))
    }

    fn descriptor(&self, d: &oci_spec::image::Descriptor) -> Result<BlobDescriptor, LayoutError> {
        let raw = d.digest().to_string();
        let digest: Digest = raw.parse().map_err(|e| LayoutError::Invalid {
            path: self.dir.join("index.json"),
            reason: format!("{e} (Helix handles sha256 layouts only)"),
        })?;
        Ok(BlobDescriptor {
            digest,
            size: d.size(),
            media_type: d.media_type().to_string(),
        })
    }

    fn unsupported_manifest(&self, d: &BlobDescriptor, media_type: &str) -> LayoutError {
        LayoutError::UnsupportedMediaType {
            dir: self.dir.clone(),
            what: "manifest",
            digest: d.digest.to_string(),
            media_type: media_type.to_owned(),
            expected: "an OCI or Docker schema 2 image manifest (push one image per platform)",
        }
    }

    fn corrupt(&self, digest: &Digest, reason: String) -> LayoutError {
        LayoutError::Corrupt {
            dir: self.dir.clone(),
            digest: digest.to_string(),
            reason,
        }
    }

    fn read_error(&self, digest: &Digest, path: PathBuf, source: std::io::Error) -> LayoutError {
        if source.kind() == std::io::ErrorKind::NotFound {
            self.corrupt(
                digest,
                format!("is missing ({} does not exist)", path.display()),
            )
        } else {
            LayoutError::Io { path, source }
        }
    }
}

/// Reads at most `limit` bytes of `path`.
fn read_limited(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Running size and sha256 of a blob being read, against its descriptor.
struct Check {
    layout: OciLayout,
    blob: BlobDescriptor,
    hasher: sha2::Sha256,
    read: u64,
}

impl Check {
    fn new(layout: OciLayout, blob: BlobDescriptor) -> Check {
        Check {
            layout,
            blob,
            hasher: sha2::Sha256::new(),
            read: 0,
        }
    }

    fn update(&mut self, bytes: &[u8]) -> Result<(), LayoutError> {
        self.read += bytes.len() as u64;
        if self.read > self.blob.size {
            return Err(self.layout.corrupt(
                &self.blob.digest,
                format!(
                    "is longer than the {} bytes its descriptor says",
                    self.blob.size
                ),
            ));
        }
        self.hasher.update(bytes);
        Ok(())
    }

    fn finish(&mut self) -> Result<(), LayoutError> {
        if self.read != self.blob.size {
            return Err(self.layout.corrupt(
                &self.blob.digest,
                format!(
                    "is {} bytes, its descriptor says {}",
                    self.read, self.blob.size
                ),
            ));
        }
        let actual = hex::encode(self.hasher.finalize_reset());
        if actual != self.blob.digest.hex() {
            return Err(self.layout.corrupt(
                &self.blob.digest,
                format!("does not match its digest (its content hashes to sha256:{actual})"),
            ));
        }
        Ok(())
    }
}

/// The stream returned by [`OciLayout::blob_chunks`].
pub struct BlobChunks {
    inner: Pin<Box<dyn Stream<Item = Result<Bytes, LayoutError>> + Send>>,
}

impl std::fmt::Debug for BlobChunks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobChunks").finish_non_exhaustive()
    }
}

impl Stream for BlobChunks {
    type Item = Result<Bytes, LayoutError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// The state threaded through [`BlobChunks`].
struct ChunkState {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    check: Check,
    chunk_size: usize,
    /// The chunk read but not yet released (see [`OciLayout::blob_chunks`]).
    pending: Option<Bytes>,
    done: bool,
}

impl BlobChunks {
    fn new(layout: OciLayout, blob: BlobDescriptor, chunk_size: usize) -> BlobChunks {
        let state = ChunkState {
            path: layout.blob_path(&blob.digest),
            file: None,
            check: Check::new(layout, blob),
            chunk_size,
            pending: None,
            done: false,
        };
        let stream = futures_util::stream::try_unfold(state, |mut state| async move {
            let chunk = state.next_chunk().await?;
            Ok(chunk.map(|chunk| (chunk, state)))
        });
        BlobChunks {
            inner: Box::pin(stream),
        }
    }
}

impl ChunkState {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, LayoutError> {
        loop {
            if self.done {
                return Ok(None);
            }
            let read = self.read_chunk().await?;
            if read.is_empty() {
                self.check.finish()?;
                self.done = true;
                return Ok(self.pending.take());
            }
            self.check.update(&read)?;
            if let Some(previous) = self.pending.replace(read) {
                return Ok(Some(previous));
            }
        }
    }

    /// Reads up to `chunk_size` bytes; empty at the end of the file.
    async fn read_chunk(&mut self) -> Result<Bytes, LayoutError> {
        use tokio::io::AsyncReadExt;
        if self.file.is_none() {
            let opened = tokio::fs::File::open(&self.path).await.map_err(|source| {
                self.check
                    .layout
                    .read_error(&self.check.blob.digest, self.path.clone(), source)
            })?;
            self.file = Some(opened);
        }
        let file = self.file.as_mut().expect("opened just above");
        let mut buf = vec![0u8; self.chunk_size];
        let mut filled = 0;
        while filled < buf.len() {
            let n = file
                .read(&mut buf[filled..])
                .await
                .map_err(|source| LayoutError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        buf.truncate(filled);
        Ok(Bytes::from(buf))
    }
}

#[cfg(test)]
mod tests;
