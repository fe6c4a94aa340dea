//! [`ResultStore`]: outcomes of finished jobs that the coordinator has not
//! acknowledged yet, one JSON file each (`DATA/results/<job>-<attempt>.json`, written
//! atomically), so that a result survives a lost connection and an agent restart and
//! is delivered exactly when the coordinator is there to record it.

use std::path::{Path, PathBuf};

use helix_protocol::wire::JobOutcome;
use helix_protocol::JobId;
use helix_transport::files::{self, FileError};
use tracing::warn;

/// One attempt of one job: what the agent keys its jobs by.
pub type JobKey = (JobId, u32);

/// The file name stem of a job attempt (`<job>-<attempt>`), also its work dir's name.
pub fn key_name(key: &JobKey) -> String {
    format!("{}-{}", key.0, key.1)
}

/// The key a `<job>-<attempt>` name stands for.
pub fn parse_key_name(name: &str) -> Option<JobKey> {
    let (job, attempt) = name.rsplit_once('-')?;
    Some((job.parse().ok()?, attempt.parse().ok()?))
}

/// What a result file holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Stored {
    job: JobId,
    attempt: u32,
    outcome: JobOutcome,
}

/// Why a result could not be kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResultError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("cannot create {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot encode a job result: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The directory of unacknowledged results.
#[derive(Debug, Clone)]
pub struct ResultStore {
    dir: PathBuf,
}

impl ResultStore {
    pub fn new(dir: impl Into<PathBuf>) -> ResultStore {
        ResultStore { dir: dir.into() }
    }

    fn path(&self, key: &JobKey) -> PathBuf {
        self.dir.join(format!("{}.json", key_name(key)))
    }

    /// Keep `outcome` until [`ResultStore::remove`]. Durable when it returns.
    pub fn save(&self, key: &JobKey, outcome: &JobOutcome) -> Result<(), ResultError> {
        create_private_dir(&self.dir)?;
        let stored = Stored {
            job: key.0,
            attempt: key.1,
            outcome: outcome.clone(),
        };
        let mut bytes = serde_json::to_vec_pretty(&stored)?;
        bytes.push(b'\n');
        files::replace_atomically(&self.path(key), &bytes, 0o600)?;
        Ok(())
    }

    /// Forget a result (the coordinator acknowledged it). A missing file is fine.
    pub fn remove(&self, key: &JobKey) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(key)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every stored result, oldest job first is not promised; unreadable files are
    /// reported and skipped (left in place for a person to look at).
    pub fn load_all(&self) -> Vec<(JobKey, JobOutcome)> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                warn!(dir = %self.dir.display(), "cannot read the held results: {e}");
                return Vec::new();
            }
        };
        let mut results = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.starts_with('.') {
                // A temp file of a write that a crash interrupted.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(stem) = name.strip_suffix(".json") else {
                continue;
            };
            match read_result(&path) {
                Ok(stored) if parse_key_name(stem) == Some((stored.job, stored.attempt)) => {
                    results.push(((stored.job, stored.attempt), stored.outcome));
                }
                Ok(_) => {
                    warn!(path = %path.display(), "a held result whose name does not match its content; ignoring it")
                }
                Err(reason) => {
                    warn!(path = %path.display(), "an unreadable held result; ignoring it: {reason}")
                }
            }
        }
        results.sort_by_key(|(key, _)| *key);
        results
    }
}

fn read_result(path: &Path) -> Result<Stored, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// Create `dir` (and parents) with mode 0700 if missing.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), ResultError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| ResultError::Create {
            path: dir.display().to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use helix_protocol::{Digest, FailureKind, ImageResult, JobFailure};

    use super::*;

    #[test]
    fn results_survive_a_restart_until_removed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = ResultStore::new(tmp.path().join("results"));
        assert!(store.load_all().is_empty(), "no directory yet");

        let ok = (JobId::new_v4(), 1);
        let failed = (JobId::new_v4(), 2);
        let succeeded = JobOutcome::Succeeded(ImageResult {
            digest: Digest::sha256_of(b"manifest"),
            size: 428,
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        });
        let failure = JobOutcome::Failed(JobFailure {
            kind: FailureKind::Build,
            message: "buildah build exited with status 1".into(),
            exit_code: Some(1),
        });
        store.save(&ok, &succeeded).expect("save");
        store.save(&failed, &failure).expect("save");
        store.save(&failed, &failure).expect("save again replaces");

        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(tmp.path().join("results"))
            .expect("dir")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let file = tmp.path().join(format!("results/{}.json", key_name(&ok)));
        let mode = std::fs::metadata(&file).expect("file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // A fresh store on the same directory (the agent restarted) finds both.
        let reloaded = ResultStore::new(tmp.path().join("results"));
        let mut expected = vec![(ok, succeeded.clone()), (failed, failure)];
        expected.sort_by_key(|(k, _)| *k);
        assert_eq!(reloaded.load_all(), expected);

        reloaded.remove(&failed).expect("remove");
        reloaded.remove(&failed).expect("removing twice is fine");
        assert_eq!(reloaded.load_all(), vec![(ok, succeeded)]);
    }

    #[test]
    fn damaged_and_stray_files_are_skipped() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("results");
        let store = ResultStore::new(&dir);
        let key = (JobId::new_v4(), 1);
        store.save(&key, &JobOutcome::Cancelled).expect("save");
        std::fs::write(
            dir.join(format!("{}.json", key_name(&(JobId::new_v4(), 1)))),
            b"{not json",
        )
        .expect("write");
        std::fs::write(dir.join(".x.json.tmp-1"), b"partial").expect("write");
        std::fs::write(dir.join("notes.txt"), b"hello").expect("write");
        // The content names another job than the file name.
        let other = (JobId::new_v4(), 4);
        std::fs::copy(
            dir.join(format!("{}.json", key_name(&key))),
            dir.join(format!("{}.json", key_name(&other))),
        )
        .expect("copy");
        assert_eq!(store.load_all(), vec![(key, JobOutcome::Cancelled)]);
        assert!(
            !dir.join(".x.json.tmp-1").exists(),
            "temp files are removed"
        );
    }

    #[test]
    fn key_names_round_trip() {
        let key = (JobId::new_v4(), 12);
        assert_eq!(parse_key_name(&key_name(&key)), Some(key));
        assert_eq!(parse_key_name("nope"), None);
        assert_eq!(parse_key_name(&format!("{}-x", key.0)), None);
    }
}
