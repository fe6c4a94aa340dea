//! The coordinator's data directory: what lives where.
//!
//! ```text
//! DATA_DIR/            0700
//!   ca.pem             cluster CA certificate (public; agents pin its sha256)
//!   ca.key             cluster CA key, 0600; leaves this host only to initialize a
//!                      further coordinator of the cluster (`init --ca-from`)
//!   server.pem/.key    the coordinator's TLS certificate and key (0600)
//!   admin.pem          admin bundle: admin certificate, CA, key (0600)
//!   helix.redb         the store, with `--store redb` (a PostgreSQL store lives in
//!                      its database; the directory then holds only the files above)
//!   logs/<job>.log     build output per job (bounded)
//!   contexts/sha256/   uploaded build contexts, by digest
//! ```

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::store::config::StoreConfig;

/// Paths inside one data directory.
#[derive(Debug, Clone)]
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
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca.key")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.root.join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.root.join("server.key")
    }
    pub fn admin_bundle(&self) -> PathBuf {
        self.root.join("admin.pem")
    }
    /// Uploaded build contexts, by digest.
    pub fn contexts(&self) -> PathBuf {
        self.root.join("contexts")
    }
    /// Per-job build output.
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn database(&self) -> PathBuf {
        self.root.join("helix.redb")
    }

    /// Whether `init` has run here, for any store: `init` writes the CA key first,
    /// and a redb database without it is still a directory not to overwrite.
    pub fn is_initialized(&self) -> bool {
        self.database().exists() || self.ca_key().exists()
    }

    /// Whether `init` has run here for `store`: with redb the database file exists;
    /// with PostgreSQL (whose database is elsewhere and checked when connecting) the
    /// keys `init` wrote do. `serve` checks this before anything else, so an
    /// uninitialized directory is a setup error (exit 2), not a failed start.
    pub fn is_initialized_for(&self, store: &StoreConfig) -> bool {
        match store {
            StoreConfig::Redb => self.database().exists(),
            StoreConfig::Postgres(_) => [
                self.ca_key(),
                self.ca_cert(),
                self.server_key(),
                self.server_cert(),
            ]
            .iter()
            .all(|p| p.exists()),
        }
    }

    /// Create the directory with mode 0700 (or tighten an empty existing one).
    pub fn create(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.root)?;
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))
    }
}
