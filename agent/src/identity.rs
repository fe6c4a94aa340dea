//! The agent's identity: its certificate and private key, kept together in one 0600
//! file (`identity.pem`: the certificate, then the key) so that replacing it on renewal
//! is one atomic rename and the pair on disk always matches.

use std::fmt;
use std::path::Path;

use helix_protocol::{AgentId, Identity};
use helix_transport::files::{self, FileError};
use helix_transport::pki;
use time::OffsetDateTime;

/// Why an identity could not be read, checked or stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The file is missing, unreadable, or readable by others.
    #[error(transparent)]
    File(#[from] FileError),
    /// The file does not hold one certificate followed by one private key.
    #[error("{path}: {reason}")]
    Malformed { path: String, reason: String },
    /// The certificate cannot be parsed or is not an agent certificate.
    #[error("invalid agent certificate: {0}")]
    Certificate(String),
}

/// What the agent needs to know about its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The one SPIFFE id, `spiffe://<cluster>/agent/<agent_id>`.
    pub spiffe_id: String,
    pub cluster: String,
    pub agent_id: AgentId,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl CertInfo {
    /// Reads the first certificate of `cert_pem`: its validity and its agent SPIFFE id.
    pub fn parse(cert_pem: &str) -> Result<CertInfo, IdentityError> {
        let bad = |reason: String| IdentityError::Certificate(reason);
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|e| bad(format!("no PEM certificate found: {e}")))?;
        if pem.label != "CERTIFICATE" {
            return Err(bad(format!(
                "expected a CERTIFICATE PEM block, found {:?}",
                pem.label
            )));
        }
        let x509 = pem
            .parse_x509()
            .map_err(|e| bad(format!("cannot parse: {e}")))?;
        let validity = x509.validity();
        let uris = pki::cert_uri_sans(&pem.contents).map_err(|e| bad(e.to_string()))?;
        let spiffe: Vec<&String> = uris.iter().filter(|u| u.starts_with("spiffe://")).collect();
        let [uri] = spiffe.as_slice() else {
            return Err(bad(format!(
                "expected exactly one SPIFFE id, found {}",
                spiffe.len()
            )));
        };
        match Identity::parse(uri).map_err(|e| bad(e.to_string()))? {
            Identity::Agent { cluster, id } => Ok(CertInfo {
                spiffe_id: (*uri).clone(),
                cluster,
                agent_id: id,
                not_before: validity.not_before.to_datetime(),
                not_after: validity.not_after.to_datetime(),
            }),
            Identity::Admin { .. } => {
                Err(bad(format!("{uri} is an admin identity, not an agent's")))
            }
        }
    }

    /// Whether the certificate has expired at `now`.
    pub fn expired_at(&self, now: OffsetDateTime) -> bool {
        now >= self.not_after
    }
}

/// An agent certificate and its private key. `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct AgentIdentity {
    cert_pem: String,
    key_pem: String,
    info: CertInfo,
    received_at: OffsetDateTime,
}

impl fmt::Debug for AgentIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentIdentity")
            .field("info", &self.info)
            .field("received_at", &self.received_at)
            .field("key_pem", &"[elided]")
            .finish_non_exhaustive()
    }
}

impl AgentIdentity {
    /// A certificate just received for `key_pem`.
    pub fn new(
        cert_pem: String,
        key_pem: String,
        received_at: OffsetDateTime,
    ) -> Result<AgentIdentity, IdentityError> {
        let info = CertInfo::parse(&cert_pem)?;
        Ok(AgentIdentity {
            cert_pem,
            key_pem,
            info,
            received_at,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    pub fn info(&self) -> &CertInfo {
        &self.info
    }

    /// When the agent received this certificate (for a loaded one: when the file was
    /// written). Certificates are backdated a little for clock skew, so this, not
    /// `notBefore`, is when the agent's use of it started.
    pub fn received_at(&self) -> OffsetDateTime {
        self.received_at
    }

    /// The file's text: the certificate, then the key.
    pub fn to_pem(&self) -> String {
        let mut text = self.cert_pem.clone();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&self.key_pem);
        text
    }

    /// Parses the file's text (`path` is for messages).
    pub fn from_pem(
        path: &Path,
        text: &str,
        received_at: OffsetDateTime,
    ) -> Result<AgentIdentity, IdentityError> {
        let blocks = files::pem_blocks(text);
        let certs: Vec<&String> = blocks
            .iter()
            .filter(|(label, _)| label == "CERTIFICATE")
            .map(|(_, block)| block)
            .collect();
        let keys: Vec<&String> = blocks
            .iter()
            .filter(|(label, _)| label.ends_with("PRIVATE KEY"))
            .map(|(_, block)| block)
            .collect();
        let ([cert], [key]) = (certs.as_slice(), keys.as_slice()) else {
            return Err(IdentityError::Malformed {
                path: path.display().to_string(),
                reason: format!(
                    "an agent identity holds one certificate and one private key; found {} and {} (enrol again with `helix-agent join` if it was damaged)",
                    certs.len(),
                    keys.len()
                ),
            });
        };
        AgentIdentity::new((*cert).clone(), (*key).clone(), received_at)
    }

    /// Reads `identity.pem`, refusing it when group or others can read it.
    pub fn load(path: &Path) -> Result<AgentIdentity, IdentityError> {
        let text = files::read_secret(path)?;
        let received_at = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map(OffsetDateTime::from)
            .unwrap_or_else(|_| OffsetDateTime::now_utc());
        AgentIdentity::from_pem(path, &text, received_at)
    }

    /// Writes `identity.pem` (mode 0600) atomically: a crash leaves the old pair or the
    /// new one, never a certificate beside the wrong key.
    pub fn store(&self, path: &Path) -> Result<(), IdentityError> {
        files::replace_atomically(path, self.to_pem().as_bytes(), 0o600)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use helix_transport::pki::ClusterCa;

    use super::*;
    use crate::test_support::issue;

    #[test]
    fn round_trips_with_mode_0600_and_refuses_open_files() {
        let ca = ClusterCa::generate("test").expect("ca");
        let id = AgentId::new_v4();
        let (cert, key) = issue(&ca, id, Duration::from_secs(3600));
        let now = OffsetDateTime::now_utc();
        let identity = AgentIdentity::new(cert, key, now).expect("identity");
        assert_eq!(identity.info().agent_id, id);
        assert_eq!(identity.info().cluster, "test");
        assert_eq!(
            identity.info().spiffe_id,
            format!("spiffe://test/agent/{id}")
        );
        assert!(identity.info().not_after > now + Duration::from_secs(3500));
        assert!(!format!("{identity:?}").contains("PRIVATE KEY"));

        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("identity.pem");
        identity.store(&path).expect("store");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = AgentIdentity::load(&path).expect("load");
        assert_eq!(back.cert_pem(), identity.cert_pem());
        assert_eq!(back.key_pem(), identity.key_pem());
        assert_eq!(back.info(), identity.info());

        for mode in [0o640, 0o604, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let err = AgentIdentity::load(&path).expect_err("too open");
            assert!(
                matches!(err, IdentityError::File(FileError::TooOpen { .. })),
                "{err}"
            );
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        // Replacing it restores 0600.
        identity.store(&path).expect("store again");
        AgentIdentity::load(&path).expect("load after replace");
    }

    #[test]
    fn refuses_files_that_are_not_one_certificate_and_one_key() {
        let ca = ClusterCa::generate("test").expect("ca");
        let (cert, key) = issue(&ca, AgentId::new_v4(), Duration::from_secs(60));
        let now = OffsetDateTime::now_utc();
        let path = Path::new("identity.pem");
        for text in [
            cert.clone(),
            key.clone(),
            format!("{cert}{cert}{key}"),
            String::new(),
        ] {
            let err = AgentIdentity::from_pem(path, &text, now).expect_err("malformed");
            assert!(
                err.to_string()
                    .contains("one certificate and one private key"),
                "{err}"
            );
        }
        AgentIdentity::from_pem(path, &format!("{cert}{key}"), now).expect("valid");
    }

    #[test]
    fn refuses_admin_certificates() {
        let ca = ClusterCa::generate("test").expect("ca");
        let admin = ca
            .issue_admin_cert("test", "alice", Duration::from_secs(60))
            .expect("admin");
        let err = CertInfo::parse(&admin.cert_pem).expect_err("admin");
        assert!(err.to_string().contains("admin identity"), "{err}");
    }
}
