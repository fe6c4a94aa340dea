//! `helix-coordinator init`: create a data directory with the cluster CA (a fresh one,
//! or with `--ca-from` the existing CA of the cluster this coordinator joins), the
//! coordinator's own server certificate, an admin bundle and the store.
//!
//! All coordinators of a cluster share its CA: an agent enrolled by one holds a
//! certificate the others accept, and an admin bundle works against any of them.
//! Each has its own server certificate, for the names it is reached by.

use std::path::{Path, PathBuf};
use std::time::Duration;

use helix_protocol::identity::{validate_cluster_name, Identity};
use helix_transport::files::{read_public, read_secret, write_secret_new, AdminBundle, FileError};
use helix_transport::pki::{cert_uri_sans, ClusterCa, PkiError};
use rustls_pki_types::pem::PemObject;

use crate::datadir::DataDir;
use crate::store::config::StoreConfig;
use crate::store::{Store, StoreError};

/// The server certificate lasts as long as the CA would reasonably be kept; rotating
/// it means re-running a future `cert rotate`, not re-enrolling agents.
const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// The admin bundle made at init. Operators mint more named ones later.
const ADMIN_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// The cluster name when none is given and none is inherited.
pub const DEFAULT_CLUSTER: &str = "helix";

/// Why `init` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    #[error("{0} is already initialized (it holds a cluster CA or a database); refusing to overwrite it. Use another --data-dir or remove this one if you really mean to start a new cluster")]
    AlreadyInitialized(String),
    #[error("invalid --cluster: {0}")]
    Cluster(String),
    /// The CA to share could not be used; nothing was written.
    #[error("cannot use --ca-from {dir}: {reason}")]
    CaFrom { dir: String, reason: String },
    /// The shared store already belongs to a cluster, and this `init` would have made
    /// a second CA for it, which the cluster's agents and admins would not trust.
    #[error("the store {store} already holds cluster {cluster:?}: to add a coordinator to it, copy ca.pem, ca.key and admin.pem from an existing coordinator's data directory (over a secure channel) and run `init --ca-from DIR --store ...`")]
    StoreInUse { store: String, cluster: String },
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

impl InitError {
    /// A mistake in what was asked (exit code 2), as opposed to a failure to do it.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            InitError::AlreadyInitialized(_)
                | InitError::Cluster(_)
                | InitError::CaFrom { .. }
                | InitError::StoreInUse { .. }
                | InitError::Store(StoreError::WrongCluster { .. })
                | InitError::Store(StoreError::WrongCa { .. })
        )
    }
}

/// What to initialize.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// The cluster's name; `None`: [`DEFAULT_CLUSTER`], or with `ca_from` the name in
    /// that directory's admin bundle (given both, they must agree).
    pub cluster: Option<String>,
    /// Extra names for the server certificate, beside `localhost`, `127.0.0.1`, `::1`.
    pub sans: Vec<String>,
    pub store: StoreConfig,
    /// A copy of an existing coordinator's data directory (at least `ca.pem` and
    /// `ca.key`) whose CA this coordinator shares.
    pub ca_from: Option<PathBuf>,
}

/// What `init` made, for its summary.
#[derive(Debug)]
pub struct Initialized {
    pub cluster: String,
    pub ca_fingerprint: String,
    pub sans: Vec<String>,
    /// The store, as it may be shown (a PostgreSQL password is redacted).
    pub store: String,
    /// Whether the CA was taken from `--ca-from` rather than made.
    pub shared_ca: bool,
}

/// Initialize `dir` as `opts` says. Either everything is written or, when a step
/// fails, the files this call wrote are removed again, so the same command can simply
/// be run again once the cause is fixed.
pub async fn init(dir: &DataDir, opts: &InitOptions) -> Result<Initialized, InitError> {
    if let Some(cluster) = &opts.cluster {
        validate_cluster_name(cluster).map_err(InitError::Cluster)?;
    }
    if dir.is_initialized() {
        return Err(InitError::AlreadyInitialized(
            dir.root().display().to_string(),
        ));
    }
    let (ca, cluster) = match &opts.ca_from {
        Some(from) => shared_ca(from, opts.cluster.as_deref())?,
        None => {
            let cluster = opts.cluster.as_deref().unwrap_or(DEFAULT_CLUSTER);
            (ClusterCa::generate(cluster)?, cluster.to_string())
        }
    };
    if let (StoreConfig::Postgres(pg), None) = (&opts.store, &opts.ca_from) {
        // A fresh CA for a database that already has a cluster would split it in two.
        // Probing first also finds a wrong URL or password before anything is written.
        match Store::open_postgres(pg).await {
            Ok(store) => {
                return Err(InitError::StoreInUse {
                    store: opts.store.to_string(),
                    cluster: store.cluster().await?,
                })
            }
            Err(StoreError::NotInitialized) => {}
            Err(e) => return Err(e.into()),
        }
    }
    dir.create().map_err(|source| InitError::CreateDir {
        path: dir.root().display().to_string(),
        source,
    })?;

    let mut sans: Vec<String> = opts.sans.clone();
    for default in ["localhost", "127.0.0.1", "::1"] {
        if !sans.iter().any(|s| s == default) {
            sans.push(default.to_string());
        }
    }
    let server = ca.issue_server_cert(&sans, SERVER_CERT_VALIDITY)?;
    let admin = ca.issue_admin_cert(&cluster, "admin", ADMIN_CERT_VALIDITY)?;
    let bundle = AdminBundle {
        ca_pem: ca.cert_pem().to_string(),
        cert_pem: admin.cert_pem,
        key_pem: admin.key_pem,
    };

    // Keys first, each created 0600 and never overwritten; the store last.
    let mut written = Written::default();
    written.file(&dir.ca_key(), ca.key_pem())?;
    written.file(&dir.server_key(), &server.key_pem)?;
    written.file(&dir.admin_bundle(), &bundle.to_pem())?;
    // Certificates are public, but 0600 costs nothing and keeps the directory uniform.
    written.file(&dir.ca_cert(), ca.cert_pem())?;
    written.file(&dir.server_cert(), &server.cert_pem)?;
    match &opts.store {
        StoreConfig::Redb => {
            // A database file left by a failed create would make the directory count
            // as initialized; it did not exist before (checked above).
            written.paths.push(dir.database());
            Store::create_redb(&dir.database(), &cluster)?;
        }
        StoreConfig::Postgres(pg) => {
            let store = Store::init_postgres(pg, &cluster).await?;
            // Every coordinator of the cluster must share one CA, or agents enrolled
            // by one would not trust another.
            store.check_ca(&ca.fingerprint()).await?;
        }
    }
    written.keep();
    Ok(Initialized {
        cluster,
        ca_fingerprint: ca.fingerprint(),
        sans,
        store: opts.store.to_string(),
        shared_ca: opts.ca_from.is_some(),
    })
}

/// The CA in `from` (a copy of a coordinator's data directory) and the cluster name:
/// from `from/admin.pem` when it is there, else `flag`; both given, they must agree,
/// since every certificate names the cluster and a mismatch would lock everyone out.
fn shared_ca(from: &Path, flag: Option<&str>) -> Result<(ClusterCa, String), InitError> {
    let bad = |reason: String| InitError::CaFrom {
        dir: from.display().to_string(),
        reason,
    };
    if !from.is_dir() {
        return Err(bad("not a directory".into()));
    }
    let dir = DataDir::new(from);
    let ca_pem = read_public(&dir.ca_cert()).map_err(|e| bad(e.to_string()))?;
    // The CA key is the cluster: refuse a copy others could have read on the way.
    let ca_key = read_secret(&dir.ca_key()).map_err(|e| bad(e.to_string()))?;
    let ca = ClusterCa::from_pem(&ca_pem, &ca_key).map_err(|e| bad(e.to_string()))?;

    let bundle_path = dir.admin_bundle();
    let inherited = if bundle_path.exists() {
        let bundle = AdminBundle::load(&bundle_path).map_err(|e| bad(e.to_string()))?;
        if !same_cert(&bundle.ca_pem, ca.cert_der()) {
            return Err(bad(format!(
                "{} was issued by another CA than {}: the files come from different clusters",
                bundle_path.display(),
                dir.ca_cert().display()
            )));
        }
        Some(bundle_cluster(&bundle).map_err(|reason| {
            bad(format!(
                "cannot read the cluster name from {}: {reason}",
                bundle_path.display()
            ))
        })?)
    } else {
        None
    };
    let cluster = match (inherited, flag) {
        (Some(found), Some(given)) if found != given => {
            return Err(InitError::Cluster(format!(
                "{given:?} is not the cluster of {}, which is {found:?}; leave --cluster out or pass --cluster {found}",
                bundle_path.display()
            )))
        }
        (Some(found), _) => found,
        (None, Some(given)) => given.to_string(),
        (None, None) => {
            return Err(bad(
                "it has no admin.pem to read the cluster name from: copy that too, or pass --cluster NAME (the name the first coordinator was initialized with)".into()
            ))
        }
    };
    validate_cluster_name(&cluster).map_err(InitError::Cluster)?;
    Ok((ca, cluster))
}

/// Whether `pem` holds the certificate `der`.
fn same_cert(pem: &str, der: &[u8]) -> bool {
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .is_ok_and(|c| c.as_ref() == der)
}

/// The cluster named in an admin bundle's SPIFFE id (`spiffe://<cluster>/admin/...`).
fn bundle_cluster(bundle: &AdminBundle) -> Result<String, String> {
    let der = rustls_pki_types::CertificateDer::from_pem_slice(bundle.cert_pem.as_bytes())
        .map_err(|e| format!("no certificate: {e}"))?;
    let uris = cert_uri_sans(&der).map_err(|e| e.to_string())?;
    let spiffe: Vec<Identity> = uris
        .iter()
        .filter_map(|u| Identity::parse(u).ok())
        .collect();
    match spiffe.as_slice() {
        [one] => Ok(one.cluster().to_string()),
        [] => Err("its certificate has no Helix identity (spiffe://CLUSTER/admin/NAME)".into()),
        _ => Err("its certificate has several identities".into()),
    }
}

/// Files written by one `init`, removed again unless [`Written::keep`] is called: a
/// half-written directory would count as initialized and refuse the retry.
#[derive(Default)]
struct Written {
    paths: Vec<PathBuf>,
    kept: bool,
}

impl Written {
    fn file(&mut self, path: &Path, text: &str) -> Result<(), FileError> {
        write_secret_new(path, text.as_bytes())?;
        self.paths.push(path.to_path_buf());
        Ok(())
    }

    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Written {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        for path in self.paths.iter().rev() {
            if let Err(e) = std::fs::remove_file(path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), "cannot remove after a failed init: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
