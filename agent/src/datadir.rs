//! The agent's data directory and what `join` records in it.
//!
//! ```text
//! DIR/            0700
//!   identity.pem  0600  the agent certificate followed by its private key (one file,
//!                       replaced atomically, so a renewal never leaves a mismatched pair)
//!   ca.pem              the cluster CA certificate, pinned by the join token
//!   agent.json          agent id, cluster, coordinator address, name
//!   coordinators.json   the cluster's coordinators as the leader last listed them
//!                       (`{"coordinators": ["HOST:PORT", ...]}`), tried after the
//!                       configured ones; replaced atomically, missing until learned
//!   work/         0700  one private dir per job attempt, `<job>-<attempt>/`: the
//!                       source (`src/`; for an uploaded context, downloaded first
//!                       to `context.tar`), the built image (`layout/`) and the
//!                       job's `output.log` (kept until the coordinator has the result)
//!   results/      0700  `<job>-<attempt>.json`: finished results not acknowledged yet
//!   storage/      0700  the builder's image storage, this agent's alone: buildah's in
//!                       `root/` and `runroot/`; podman's one per platform, in
//!                       `podman/<os>-<arch>[-<variant>]/{root,runroot,tmp}/`
//!   run.lock            locked while `helix-agent run` uses the directory
//! ```

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use helix_protocol::AgentId;
use helix_transport::files::{self, FileError};

/// Why the data directory could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataDirError {
    /// `run` was pointed at a directory that `join` never filled.
    #[error("{dir} holds no agent identity: enrol this host first with `helix-agent join --coordinator HOST:PORT --token TOKEN --data-dir {dir}`")]
    NotJoined { dir: String },
    /// A file is missing, unreadable, or too open.
    #[error(transparent)]
    File(#[from] FileError),
    /// A file is there but does not hold what it should.
    #[error("{path}: {reason}")]
    Corrupt { path: String, reason: String },
    /// The directory could not be created or secured.
    #[error("cannot create the data directory {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
}

/// What `join` learned and `run` starts from (`agent.json`). The agent's identity is
/// its certificate; this file only saves looking it up and remembers where to connect.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Enrollment {
    pub agent_id: AgentId,
    pub cluster: String,
    /// The coordinator `HOST:PORT` the agent joined through; `run` connects there
    /// unless told otherwise.
    pub coordinator: String,
    pub name: String,
}

/// `coordinators.json`: the coordinators the agent learned from the cluster. Unknown
/// fields are allowed, so an older agent can read what a newer one wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct LearnedCoordinators {
    coordinators: Vec<String>,
}

/// The paths of an agent data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The certificate and private key, one 0600 file.
    pub fn identity(&self) -> PathBuf {
        self.root.join("identity.pem")
    }

    /// The cluster CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.root.join("ca.pem")
    }

    /// The [`Enrollment`] record.
    pub fn enrollment(&self) -> PathBuf {
        self.root.join("agent.json")
    }

    /// The coordinators learned from the cluster (see [`DataDir::load_coordinators`]).
    pub fn coordinators(&self) -> PathBuf {
        self.root.join("coordinators.json")
    }

    /// The job work dirs.
    pub fn work(&self) -> PathBuf {
        self.root.join("work")
    }

    /// Results waiting for the coordinator's acknowledgement.
    pub fn results(&self) -> PathBuf {
        self.root.join("results")
    }

    /// The builder's image storage.
    pub fn storage(&self) -> PathBuf {
        self.root.join("storage")
    }

    /// Whether `join` has already stored an identity here.
    pub fn is_joined(&self) -> bool {
        self.identity().exists()
    }

    /// Create the directory with mode 0700 if it does not exist. An existing directory
    /// keeps its mode (it may be shared, like a systemd `StateDirectory`'s parent); the
    /// key inside is 0600 either way.
    pub fn create(&self) -> Result<(), DataDirError> {
        let err = |source| DataDirError::Create {
            path: self.root.display().to_string(),
            source,
        };
        if self.root.is_dir() {
            return Ok(());
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(err)?;
        // The umask may have narrowed the mode; make it exactly 0700.
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700)).map_err(err)
    }

    /// Read `agent.json`; [`DataDirError::NotJoined`] when the directory holds no
    /// identity at all.
    pub fn load_enrollment(&self) -> Result<Enrollment, DataDirError> {
        let path = self.enrollment();
        if !self.is_joined() && !path.exists() {
            return Err(DataDirError::NotJoined {
                dir: self.root.display().to_string(),
            });
        }
        let text = files::read_public(&path)?;
        serde_json::from_str(&text).map_err(|e| DataDirError::Corrupt {
            path: path.display().to_string(),
            reason: format!("not a valid agent record: {e}"),
        })
    }

    /// Write `agent.json` atomically.
    pub fn save_enrollment(&self, enrollment: &Enrollment) -> Result<(), DataDirError> {
        let mut text =
            serde_json::to_string_pretty(enrollment).map_err(|e| DataDirError::Corrupt {
                path: self.enrollment().display().to_string(),
                reason: format!("cannot encode the agent record: {e}"),
            })?;
        text.push('\n');
        files::replace_atomically(&self.enrollment(), text.as_bytes(), 0o644)?;
        Ok(())
    }

    /// Read the coordinators learned from the cluster; empty when none were learned
    /// yet (no file).
    pub fn load_coordinators(&self) -> Result<Vec<String>, DataDirError> {
        let path = self.coordinators();
        if !path.exists() {
            return Ok(Vec::new());
        }
        let text = files::read_public(&path)?;
        let learned: LearnedCoordinators =
            serde_json::from_str(&text).map_err(|e| DataDirError::Corrupt {
                path: path.display().to_string(),
                reason: format!("not a list of coordinators: {e}"),
            })?;
        Ok(learned.coordinators)
    }

    /// Write `coordinators.json` atomically: a crash leaves the old list or the new
    /// one, never a torn file.
    pub fn save_coordinators(&self, coordinators: &[String]) -> Result<(), DataDirError> {
        let learned = LearnedCoordinators {
            coordinators: coordinators.to_vec(),
        };
        let mut text =
            serde_json::to_string_pretty(&learned).map_err(|e| DataDirError::Corrupt {
                path: self.coordinators().display().to_string(),
                reason: format!("cannot encode the list of coordinators: {e}"),
            })?;
        text.push('\n');
        files::replace_atomically(&self.coordinators(), text.as_bytes(), 0o644)?;
        Ok(())
    }

    /// Read the cluster CA certificate.
    pub fn load_ca(&self) -> Result<String, DataDirError> {
        if !self.is_joined() && !self.ca().exists() {
            return Err(DataDirError::NotJoined {
                dir: self.root.display().to_string(),
            });
        }
        Ok(files::read_public(&self.ca())?)
    }

    /// Write the cluster CA certificate atomically.
    pub fn save_ca(&self, ca_pem: &str) -> Result<(), DataDirError> {
        files::replace_atomically(&self.ca(), ca_pem.as_bytes(), 0o644)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_a_private_directory_and_round_trips_the_record() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = DataDir::new(tmp.path().join("a/b"));
        assert!(matches!(
            dir.load_enrollment(),
            Err(DataDirError::NotJoined { .. })
        ));
        dir.create().expect("create");
        let mode = std::fs::metadata(dir.root())
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let record = Enrollment {
            agent_id: AgentId::new_v4(),
            cluster: "helix".into(),
            coordinator: "127.0.0.1:7443".into(),
            name: "node-1".into(),
        };
        dir.save_enrollment(&record).expect("save");
        assert_eq!(dir.load_enrollment().expect("load"), record);
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.enrollment()).expect("read"))
                .expect("json");
        assert_eq!(json["agent_id"], record.agent_id.to_string());
    }

    #[test]
    fn the_learned_coordinators_round_trip() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = DataDir::new(tmp.path());
        assert_eq!(
            dir.load_coordinators().expect("no file yet"),
            Vec::<String>::new()
        );
        let list = vec!["a.example:7443".to_string(), "[::1]:7443".to_string()];
        dir.save_coordinators(&list).expect("save");
        assert_eq!(dir.load_coordinators().expect("load"), list);
        // Replaced, not appended to; no temp file is left beside it.
        dir.save_coordinators(&list[1..]).expect("save");
        assert_eq!(dir.load_coordinators().expect("load"), ["[::1]:7443"]);
        let names: Vec<String> = std::fs::read_dir(tmp.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["coordinators.json"]);
        // A newer agent's extra fields do not stop an older one.
        std::fs::write(
            dir.coordinators(),
            r#"{"coordinators": ["b.example:7443"], "epoch": 4}"#,
        )
        .expect("write");
        assert_eq!(dir.load_coordinators().expect("load"), ["b.example:7443"]);
        std::fs::write(dir.coordinators(), "[1, 2").expect("write");
        let err = dir.load_coordinators().expect_err("damaged");
        assert!(
            err.to_string()
                .contains("coordinators.json: not a list of coordinators"),
            "{err}"
        );
    }
}
