//! Uploaded build contexts, content-addressed on disk under `DATA/contexts/`.
//!
//! An upload is streamed into a temp file while it is hashed and counted; it is
//! renamed into place only if it has exactly the announced size and hashes to the
//! announced digest. Anything else — too large (checked while streaming), short,
//! corrupted — leaves nothing behind. Contexts no active build references are
//! garbage-collected.
//!
//! With a shared (PostgreSQL) store a verified context is also stored in the
//! database, so whichever coordinator leads later can serve it: the local file is
//! then a cache, filled from the database (and verified again) when an agent asks.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use helix_protocol::Digest;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::store::Store;

/// The sha256 digest of a file's bytes.
async fn hash_file(path: &Path) -> std::io::Result<Digest> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Digest::from_sha256(hasher.finalize().into()))
}

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContextStoreError {
    #[error("the context is {size} bytes, over this coordinator's limit of {max} bytes (--max-context-size)")]
    TooLarge { size: u64, max: u64 },
    #[error("the upload ended after {got} of the announced {size} bytes")]
    Truncated { got: u64, size: u64 },
    #[error("the upload sent more than the announced {size} bytes")]
    Overlong { size: u64 },
    #[error("the uploaded context hashes to {actual}, not the announced {expected}: it was corrupted on the way and was not kept")]
    Mismatch { expected: Digest, actual: Digest },
    #[error("storing the context failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("storing the context in the shared store failed: {0}")]
    Shared(#[from] crate::store::StoreError),
}

/// The context store of one data directory.
#[derive(Debug)]
pub struct Contexts {
    dir: PathBuf,
    max_size: u64,
    /// The shared store, when coordinators share one.
    shared: Option<Store>,
}

impl Contexts {
    /// Open (and create) `dir`; leftovers of interrupted uploads are removed.
    pub fn open(dir: &Path, max_size: u64, shared: Option<Store>) -> std::io::Result<Contexts> {
        std::fs::create_dir_all(dir.join("sha256"))?;
        let tmp = dir.join("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        Ok(Contexts {
            dir: dir.to_path_buf(),
            max_size,
            shared,
        })
    }

    /// Whether the context is stored here or in the shared store.
    pub async fn has(&self, digest: &Digest) -> Result<bool, ContextStoreError> {
        if self.contains(digest) {
            return Ok(true);
        }
        match &self.shared {
            Some(store) => Ok(store.context_size(digest).await?.is_some()),
            None => Ok(false),
        }
    }

    /// The local file of a context, fetched from the shared store (and verified)
    /// when only the database has it; `None` when nobody has it.
    pub async fn local(&self, digest: &Digest) -> Result<Option<PathBuf>, ContextStoreError> {
        let path = self.path(digest);
        if path.is_file() {
            return Ok(Some(path));
        }
        let Some(store) = &self.shared else {
            return Ok(None);
        };
        let tmp = self.tmp_path(digest);
        let fetched = async {
            if !store.context_fetch(digest, &tmp).await? {
                return Ok(false);
            }
            let actual = hash_file(&tmp).await?;
            if &actual != digest {
                return Err(ContextStoreError::Mismatch {
                    expected: digest.clone(),
                    actual,
                });
            }
            tokio::fs::rename(&tmp, &path).await?;
            Ok(true)
        }
        .await;
        if !matches!(fetched, Ok(true)) {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        Ok(fetched?.then_some(path))
    }

    fn tmp_path(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join("tmp")
            .join(format!("{}.{}", digest.hex(), rand::random::<u64>()))
    }

    pub fn max_size(&self) -> u64 {
        self.max_size
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("sha256").join(digest.hex())
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// The stored size of a context.
    pub fn size(&self, digest: &Digest) -> Option<u64> {
        std::fs::metadata(self.path(digest)).ok().map(|m| m.len())
    }

    /// Receive exactly `size` bytes from `src` as context `digest`.
    pub async fn receive<R: AsyncRead + Unpin>(
        &self,
        digest: &Digest,
        size: u64,
        src: &mut R,
    ) -> Result<u64, ContextStoreError> {
        if size > self.max_size {
            return Err(ContextStoreError::TooLarge {
                size,
                max: self.max_size,
            });
        }
        let got = if self.contains(digest) {
            // Already here (a concurrent upload of the same bytes): drain and keep ours.
            let mut sink = tokio::io::sink();
            let got = tokio::io::copy(&mut src.take(size.saturating_add(1)), &mut sink).await?;
            if got != size {
                return Err(ContextStoreError::Truncated { got, size });
            }
            got
        } else {
            let tmp = self.tmp_path(digest);
            let result = self.receive_into(&tmp, digest, size, src).await;
            if result.is_err() {
                let _ = tokio::fs::remove_file(&tmp).await;
            }
            result?
        };
        // Acknowledged only once every coordinator can serve it.
        if let Some(store) = &self.shared {
            store.context_put(digest, &self.path(digest)).await?;
        }
        Ok(got)
    }

    async fn receive_into<R: AsyncRead + Unpin>(
        &self,
        tmp: &Path,
        digest: &Digest,
        size: u64,
        src: &mut R,
    ) -> Result<u64, ContextStoreError> {
        let mut file = tokio::fs::File::create(tmp).await?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut got: u64 = 0;
        loop {
            let n = src.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got += n as u64;
            if got > size {
                return Err(ContextStoreError::Overlong { size });
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).await?;
        }
        if got < size {
            return Err(ContextStoreError::Truncated { got, size });
        }
        file.sync_all().await?;
        drop(file);
        let actual = Digest::from_sha256(hasher.finalize().into());
        if &actual != digest {
            return Err(ContextStoreError::Mismatch {
                expected: digest.clone(),
                actual,
            });
        }
        tokio::fs::rename(tmp, self.path(digest)).await?;
        Ok(got)
    }

    /// Delete contexts not in `keep` and older than `min_age` (a context uploaded a
    /// moment ago is about to be submitted). Returns how many were removed.
    pub fn gc(&self, keep: &HashSet<Digest>, min_age: Duration) -> std::io::Result<u64> {
        let mut removed = 0;
        let now = SystemTime::now();
        for entry in std::fs::read_dir(self.dir.join("sha256"))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(digest) = format!("sha256:{name}").parse::<Digest>() else {
                continue;
            };
            if keep.contains(&digest) {
                continue;
            }
            let age = entry
                .metadata()?
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if age >= min_age {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max: u64) -> (tempfile::TempDir, Contexts) {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Contexts::open(&dir.path().join("contexts"), max, None).expect("open");
        (dir, c)
    }

    fn leftovers(c: &Contexts) -> usize {
        std::fs::read_dir(c.dir.join("tmp")).expect("tmp").count()
    }

    #[tokio::test]
    async fn stores_verified_uploads_and_refuses_the_rest() {
        let (_d, c) = store(1000);
        let data = b"a context archive".to_vec();
        let digest = Digest::sha256_of(&data);
        assert_eq!(
            c.receive(&digest, data.len() as u64, &mut &data[..])
                .await
                .expect("stored"),
            data.len() as u64
        );
        assert!(c.contains(&digest));

        let other = b"other bytes!!".to_vec();
        let wrong = Digest::sha256_of(b"something else");
        let err = c
            .receive(&wrong, other.len() as u64, &mut &other[..])
            .await
            .expect_err("mismatch");
        assert!(matches!(err, ContextStoreError::Mismatch { .. }), "{err}");
        assert!(!c.contains(&wrong));

        let big = vec![7u8; 2000];
        let d = Digest::sha256_of(&big);
        let err = c
            .receive(&d, 2000, &mut &big[..])
            .await
            .expect_err("announced too large");
        assert!(
            err.to_string().contains("over this coordinator's limit"),
            "{err}"
        );
        // A lie about the size is caught while streaming.
        let err = c
            .receive(&d, 10, &mut &big[..])
            .await
            .expect_err("overlong");
        assert!(matches!(err, ContextStoreError::Overlong { .. }));
        let err = c
            .receive(&d, 500, &mut &big[..100])
            .await
            .expect_err("short");
        assert!(matches!(
            err,
            ContextStoreError::Truncated {
                got: 100,
                size: 500
            }
        ));
        assert_eq!(leftovers(&c), 0, "nothing kept from refused uploads");
        assert!(!c.contains(&d));
    }

    #[test]
    fn gc_keeps_referenced_and_young_contexts() {
        let (_d, c) = store(1000);
        let a = Digest::sha256_of(b"a");
        let b = Digest::sha256_of(b"b");
        std::fs::write(c.path(&a), b"a").expect("write");
        std::fs::write(c.path(&b), b"b").expect("write");
        assert_eq!(
            c.gc(&HashSet::new(), Duration::from_secs(3600))
                .expect("gc"),
            0,
            "young"
        );
        assert_eq!(
            c.gc(&HashSet::from([a.clone()]), Duration::ZERO)
                .expect("gc"),
            1
        );
        assert!(c.contains(&a) && !c.contains(&b));
    }
}
