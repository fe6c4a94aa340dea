//! `helix-coordinator init`: create a data directory with a fresh cluster CA, the
//! coordinator's certificate, an admin bundle and the store.

use std::time::Duration;

use helix_protocol::identity::validate_cluster_name;
use helix_transport::files::{write_secret_new, AdminBundle, FileError};
use helix_transport::pki::{ClusterCa, PkiError};

use crate::datadir::DataDir;
use crate::store::{Store, StoreError};

/// The server certificate lasts as long as the CA would reasonably be kept; rotating
/// it means re-running a future `cert rotate`, not re-enrolling agents.
const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// The admin bundle made at init. Operators mint more named ones later.
const ADMIN_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why `init` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    #[error("{0} is already initialized (it holds a cluster CA or a database); refusing to overwrite it. Use another --data-dir or remove this one if you really mean to start a new cluster")]
    AlreadyInitialized(String),
    #[error("invalid --cluster: {0}")]
    Cluster(String),
    #[error("cannot create the data directory {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What `init` made, for its summary.
#[derive(Debug)]
pub struct Initialized {
    pub cluster: String,
    pub ca_fingerprint: String,
    pub sans: Vec<String>,
}

/// Initialize `dir` for `cluster`; `extra_sans` are added to the server certificate
/// beside `localhost`, `127.0.0.1` and `::1`.
pub fn init(dir: &DataDir, cluster: &str, extra_sans: &[String]) -> Result<Initialized, InitError> {
    validate_cluster_name(cluster).map_err(InitError::Cluster)?;
    if dir.is_initialized() {
        return Err(InitError::AlreadyInitialized(
            dir.root().display().to_string(),
        ));
    }
    dir.create().map_err(|source| InitError::CreateDir {
        path: dir.root().display().to_string(),
        source,
    })?;

    let ca = ClusterCa::generate(cluster)?;
    let mut sans: Vec<String> = extra_sans.to_vec();
    for default in ["localhost", "127.0.0.1", "::1"] {
        if !sans.iter().any(|s| s == default) {
            sans.push(default.to_string());
        }
    }
    let server = ca.issue_server_cert(&sans, SERVER_CERT_VALIDITY)?;
    let admin = ca.issue_admin_cert(cluster, "admin", ADMIN_CERT_VALIDITY)?;
    let bundle = AdminBundle {
        ca_pem: ca.cert_pem().to_string(),
        cert_pem: admin.cert_pem,
        key_pem: admin.key_pem,
    };

    // Keys first, each created 0600 and never overwritten; the database last, so a
    // failed init is visible and retried by hand rather than half-used.
    write_secret_new(&dir.ca_key(), ca.key_pem().as_bytes())?;
    write_secret_new(&dir.server_key(), server.key_pem.as_bytes())?;
    write_secret_new(&dir.admin_bundle(), bundle.to_pem().as_bytes())?;
    write_public_new(&dir.ca_cert(), ca.cert_pem())?;
    write_public_new(&dir.server_cert(), &server.cert_pem)?;
    Store::create(&dir.database(), cluster)?;
    Ok(Initialized {
        cluster: cluster.to_string(),
        ca_fingerprint: ca.fingerprint(),
        sans,
    })
}

fn write_public_new(path: &std::path::Path, text: &str) -> Result<(), FileError> {
    // Certificates are public, but 0600 costs nothing and keeps the directory uniform.
    write_secret_new(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_everything_once_with_private_modes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = DataDir::new(tmp.path().join("data"));
        let made = init(&dir, "prod", &["coord.example.com".into()]).expect("init");
        assert_eq!(
            made.sans,
            ["coord.example.com", "localhost", "127.0.0.1", "::1"]
        );
        let mode = |p: std::path::PathBuf| {
            std::fs::metadata(p).expect("meta").permissions().mode() & 0o777
        };
        assert_eq!(mode(dir.root().to_path_buf()), 0o700);
        for key in [dir.ca_key(), dir.server_key(), dir.admin_bundle()] {
            assert_eq!(mode(key), 0o600);
        }
        assert_eq!(
            Store::open(&dir.database())
                .expect("open")
                .cluster()
                .expect("cluster"),
            "prod"
        );
        let again = init(&dir, "prod", &[])
            .expect_err("second init")
            .to_string();
        assert!(again.contains("already initialized"), "{again}");
        assert!(init(&DataDir::new(tmp.path().join("x")), "Bad Name", &[]).is_err());
    }
}
