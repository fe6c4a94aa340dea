//! The cluster's certificate authority and key material.
//!
//! One self-signed CA per cluster ([`ClusterCa`]) issues three kinds of certificates:
//! the coordinator's server certificate ([`ClusterCa::issue_server_cert`]), admin client
//! certificates ([`ClusterCa::issue_admin_cert`]) and agent client certificates, signed
//! from a CSR whose key never left the agent ([`ClusterCa::sign_agent_csr`],
//! [`generate_key_and_csr`]).
//!
//! A client certificate's role comes only from its one URI SAN, a SPIFFE id:
//! `spiffe://<cluster>/agent/<uuid>` or `spiffe://<cluster>/admin/<name>`. That is why
//! an agent's CSR is never signed as submitted: the CA builds fresh certificate
//! parameters and takes nothing from the CSR but its (signature-checked) public key, so
//! a CSR asking for CA:TRUE, extra SANs or a long validity gets none of them.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use helix_protocol::identity::{self, Identity};
use helix_protocol::AgentId;
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// How far back a leaf certificate's `notBefore` is set, so that a host whose clock is
/// a little behind the CA's still accepts a certificate issued a moment ago. Capped at
/// a tenth of the lifetime (see `leaf_params`), so an agent that renews at two thirds
/// of `notAfter - notBefore` renews at about two thirds of the requested lifetime even
/// for short-lived certificates.
const LEAF_BACKDATE: time::Duration = time::Duration::minutes(5);
/// How far back the CA's `notBefore` is set (same reason, more margin: the CA is
/// created once and used by every host).
const CA_BACKDATE: time::Duration = time::Duration::hours(1);
/// The CA's lifetime. Leaves are short-lived and renewed; the CA is pinned by every
/// join token and stored by every agent, so rotating it is an operation, not a routine.
const CA_VALIDITY: time::Duration = time::Duration::days(3650);

/// Errors from creating, loading or using the cluster CA.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// The key pair generator failed (the system random source is unusable).
    #[error("could not generate a key pair: {0}")]
    KeyGeneration(#[source] rcgen::Error),
    /// rcgen refused to build or sign a certificate or request.
    #[error("could not sign the {what}: {source}")]
    Sign {
        /// What was being signed, e.g. "agent certificate".
        what: &'static str,
        /// rcgen's reason.
        #[source]
        source: rcgen::Error,
    },
    /// The CA certificate PEM does not hold a usable CA certificate.
    #[error("invalid CA certificate: {0}")]
    InvalidCaCert(String),
    /// A private key PEM could not be loaded.
    #[error("invalid private key: {0} (expected an unencrypted PKCS#8 \"PRIVATE KEY\" PEM)")]
    InvalidKey(String),
    /// The CA key does not belong to the CA certificate.
    #[error("the CA private key does not belong to the CA certificate (were the files of two clusters mixed up?)")]
    KeyMismatch,
    /// A certificate could not be read.
    #[error("invalid certificate: {0}")]
    InvalidCert(String),
    /// A certificate signing request could not be parsed or uses an unsupported key.
    #[error("invalid certificate signing request: {0}")]
    InvalidCsr(String),
    /// The CSR's self-signature does not verify: it was altered or forged.
    #[error("the certificate signing request's signature does not verify: it was altered in transit or not signed by the key it carries")]
    CsrSignature,
    /// A cluster name, admin name or SAN is not acceptable.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        /// What kind of name, e.g. "cluster name".
        what: &'static str,
        /// The rejected value.
        value: String,
        /// Why it was rejected and what is allowed.
        reason: String,
    },
    /// A requested validity is zero or too large to represent.
    #[error("invalid certificate validity {0:?}: {1}")]
    InvalidValidity(Duration, &'static str),
}

/// A certificate and its private key, both PEM. The key is PKCS#8 ("PRIVATE KEY") and
/// must be written with mode 0600; it is never logged (see the `Debug` impl).
#[derive(Clone, PartialEq, Eq)]
pub struct CertifiedKey {
    /// The certificate, PEM ("CERTIFICATE").
    pub cert_pem: String,
    /// The private key, PEM ("PRIVATE KEY").
    pub key_pem: String,
}

impl fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertifiedKey")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[elided]")
            .finish()
    }
}

/// The cluster's certificate authority: its certificate and signing key.
///
/// Created once by `helix-coordinator init` ([`ClusterCa::generate`]) and loaded from
/// the data directory afterwards ([`ClusterCa::from_pem`]). Its [`fingerprint`] is the
/// pin that join tokens carry.
///
/// [`fingerprint`]: ClusterCa::fingerprint
pub struct ClusterCa {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key_pem: String,
    not_after: OffsetDateTime,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("fingerprint", &self.fingerprint())
            .field("not_after", &self.not_after)
            .field("key", &"[elided]")
            .finish()
    }
}

impl ClusterCa {
    /// Creates a fresh CA for `cluster`: ECDSA P-256, CA:TRUE with path length 0 (it
    /// signs leaves only), key usages certSign and cRLSign, a random serial, valid from
    /// one hour ago for ten years, CN `Helix cluster CA <cluster>`.
    pub fn generate(cluster: &str) -> Result<ClusterCa, PkiError> {
        validate_cluster(cluster)?;
        let key = KeyPair::generate().map_err(PkiError::KeyGeneration)?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("Helix cluster CA {cluster}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial());
        params.not_before = now - CA_BACKDATE;
        params.not_after = now + CA_VALIDITY;
        let cert = params.self_signed(&key).map_err(|source| PkiError::Sign {
            what: "CA certificate",
            source,
        })?;
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            not_after: params.not_after,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its certificate and PKCS#8 key PEM. Refuses a certificate that
    /// is not a CA and a key that does not match the certificate, so a mix-up of files
    /// is found here rather than as handshake failures on every host.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ClusterCa, PkiError> {
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| PkiError::InvalidCaCert(format!("no PEM certificate found: {e}")))?;
        let (_, x509) = X509Certificate::from_der(&cert_der)
            .map_err(|e| PkiError::InvalidCaCert(format!("cannot parse: {e}")))?;
        let is_ca = x509
            .basic_constraints()
            .map_err(|e| PkiError::InvalidCaCert(format!("bad basicConstraints: {e}")))?
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(PkiError::InvalidCaCert(
                "not a CA certificate (basicConstraints CA:TRUE is missing)".into(),
            ));
        }
        let not_after = x509.validity().not_after.to_datetime();
        if not_after < OffsetDateTime::now_utc() {
            tracing::warn!(%not_after, "the cluster CA certificate has expired; no certificate it issues will verify");
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::InvalidKey(e.to_string()))?;
        if key.public_key_raw() != x509.public_key().subject_public_key.data.as_ref() {
            return Err(PkiError::KeyMismatch);
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|e| PkiError::InvalidCaCert(e.to_string()))?;
        Ok(ClusterCa {
            cert_pem: cert_pem.to_owned(),
            cert_der,
            key_pem: key_pem.to_owned(),
            not_after,
            issuer,
        })
    }

    /// The CA certificate, PEM. Public: every host stores it as its trust root.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA private key, PEM. Secret: it stays on the coordinator's host, mode 0600.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// sha256 (lower hex) of the CA certificate's DER: the pin in join tokens, like
    /// kubeadm's `--discovery-token-ca-cert-hash`.
    pub fn fingerprint(&self) -> String {
        sha256_fingerprint(&self.cert_der)
    }

    /// Issues the coordinator's server certificate. Each SAN is an IP address (also in
    /// brackets, `[::1]`) or a DNS name; IPs become IP SANs, because TLS clients match
    /// an IP they dial only against IP SANs.
    pub fn issue_server_cert(
        &self,
        sans: &[String],
        validity: Duration,
    ) -> Result<CertifiedKey, PkiError> {
        if sans.is_empty() {
            return Err(PkiError::InvalidName {
                what: "server certificate SAN list",
                value: String::new(),
                reason: "at least one DNS name or IP address is needed".into(),
            });
        }
        let mut names = Vec::with_capacity(sans.len());
        for san in sans {
            let san_type = parse_server_san(san)?;
            if !names.contains(&san_type) {
                names.push(san_type);
            }
        }
        let mut params = self.leaf_params(validity)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Helix coordinator");
        params.distinguished_name = dn;
        params.subject_alt_names = names;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue_with_new_key(&params, "server certificate")
    }

    /// Issues an admin client certificate and key whose only SAN is the URI
    /// `spiffe://<cluster>/admin/<name>`, EKU clientAuth only.
    pub fn issue_admin_cert(
        &self,
        cluster: &str,
        name: &str,
        validity: Duration,
    ) -> Result<CertifiedKey, PkiError> {
        let uri = admin_spiffe_id(cluster, name)?;
        let params = self.client_params(&uri, validity)?;
        self.issue_with_new_key(&params, "admin certificate")
    }

    /// Signs an agent's CSR and returns the certificate PEM.
    ///
    /// The CSR's self-signature is verified (proof that the requester holds the key),
    /// then **only its public key** is used: the certificate is built from fresh
    /// parameters with an empty subject, the one URI SAN
    /// `spiffe://<cluster>/agent/<agent_id>`, CA:FALSE, EKU clientAuth only, a random
    /// serial and `validity` from now (backdated five minutes for clock skew, and cut at
    /// the CA's own expiry). Whatever else the CSR asks for is ignored; signing the
    /// CSR's own parameters would let an agent mint itself a CA or an admin identity.
    pub fn sign_agent_csr(
        &self,
        csr_der: &[u8],
        cluster: &str,
        agent_id: uuid::Uuid,
        validity: Duration,
    ) -> Result<String, PkiError> {
        let uri = agent_spiffe_id(cluster, agent_id)?;
        let (rest, csr) = X509CertificationRequest::from_der(csr_der)
            .map_err(|e| PkiError::InvalidCsr(format!("cannot parse DER: {e}")))?;
        if !rest.is_empty() {
            return Err(PkiError::InvalidCsr(format!(
                "{} trailing bytes after the request",
                rest.len()
            )));
        }
        csr.verify_signature().map_err(|e| match e {
            x509_parser::error::X509Error::SignatureUnsupportedAlgorithm => {
                PkiError::InvalidCsr("unsupported signature algorithm (use ECDSA P-256)".into())
            }
            _ => PkiError::CsrSignature,
        })?;
        let spki_der = csr.certification_request_info.subject_pki.raw;
        let public_key = SubjectPublicKeyInfo::from_der(spki_der)
            .map_err(|e| PkiError::InvalidCsr(format!("unsupported public key: {e}")))?;

        let params = self.client_params(&uri, validity)?;
        let cert = params
            .signed_by(&public_key, &self.issuer)
            .map_err(|source| PkiError::Sign {
                what: "agent certificate",
                source,
            })?;

        // Belt and braces: the certificate must carry exactly the key that signed the
        // CSR, byte for byte, or the agent could not use it (or someone else could).
        let (_, issued) = X509Certificate::from_der(cert.der()).map_err(|e| {
            PkiError::InvalidCert(format!("cannot re-read the issued certificate: {e}"))
        })?;
        if issued.tbs_certificate.subject_pki.raw != spki_der {
            return Err(PkiError::InvalidCsr(
                "the request's public key cannot be re-encoded faithfully (unsupported key type)"
                    .into(),
            ));
        }
        Ok(cert.pem())
    }

    /// Parameters shared by every leaf: CA:FALSE, digitalSignature, a random serial,
    /// an authority key id, and a validity window of `validity` starting now - 5 min,
    /// never beyond the CA's own expiry.
    fn leaf_params(&self, validity: Duration) -> Result<CertificateParams, PkiError> {
        if validity.is_zero() {
            return Err(PkiError::InvalidValidity(validity, "it must be positive"));
        }
        let span = time::Duration::try_from(validity)
            .map_err(|_| PkiError::InvalidValidity(validity, "it is too large"))?;
        let now = OffsetDateTime::now_utc();
        let not_after = now
            .checked_add(span)
            .ok_or(PkiError::InvalidValidity(validity, "it is too large"))?
            .min(self.not_after);
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial());
        params.not_before = now - LEAF_BACKDATE.min(span / 10);
        params.not_after = not_after;
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }

    /// A client certificate: empty subject, one URI SAN, EKU clientAuth only.
    fn client_params(&self, uri: &str, validity: Duration) -> Result<CertificateParams, PkiError> {
        let mut params = self.leaf_params(validity)?;
        let uri_ia5 = Ia5String::try_from(uri).map_err(|_| PkiError::InvalidName {
            what: "SPIFFE id",
            value: uri.to_owned(),
            reason: "it must be ASCII".into(),
        })?;
        params.subject_alt_names = vec![SanType::URI(uri_ia5)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        Ok(params)
    }

    fn issue_with_new_key(
        &self,
        params: &CertificateParams,
        what: &'static str,
    ) -> Result<CertifiedKey, PkiError> {
        let key = KeyPair::generate().map_err(PkiError::KeyGeneration)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| PkiError::Sign { what, source })?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Agent side of enrollment: a fresh ECDSA P-256 key (PKCS#8 PEM, to be stored 0600;
/// it never leaves the host) and a CSR (DER) for it with an empty subject and no
/// extensions, since the CA decides everything but the key anyway.
pub fn generate_key_and_csr() -> Result<(String, Vec<u8>), PkiError> {
    let key = KeyPair::generate().map_err(PkiError::KeyGeneration)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|source| PkiError::Sign {
            what: "certificate signing request",
            source,
        })?;
    Ok((key.serialize_pem(), csr.der().to_vec()))
}

/// The `notAfter` of the first certificate in `cert_pem`: agents renew ahead of it.
pub fn cert_not_after(cert_pem: &str) -> Result<OffsetDateTime, PkiError> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| PkiError::InvalidCert(format!("no PEM certificate found: {e}")))?;
    let (_, x509) = X509Certificate::from_der(&der)
        .map_err(|e| PkiError::InvalidCert(format!("cannot parse: {e}")))?;
    Ok(x509.validity().not_after.to_datetime())
}

/// The URI SANs of a DER certificate, in order (empty when it has none). A client's
/// role is read from these after the TLS layer has verified the certificate.
pub fn cert_uri_sans(cert_der: &[u8]) -> Result<Vec<String>, PkiError> {
    let (_, x509) = X509Certificate::from_der(cert_der)
        .map_err(|e| PkiError::InvalidCert(format!("cannot parse: {e}")))?;
    let san = x509
        .subject_alternative_name()
        .map_err(|e| PkiError::InvalidCert(format!("bad subjectAltName: {e}")))?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some((*uri).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Encodes a DER certificate as PEM ("CERTIFICATE", 64-column base64, LF line ends),
/// the same text rcgen writes. Used to save a CA certificate learned during a join.
pub fn cert_pem_from_der(der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = Vec::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(ALPHABET[(n >> (18 - 6 * i) & 0x3f) as usize]);
            } else {
                b64.push(b'=');
            }
        }
    }
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.chunks(64) {
        // The alphabet is ASCII, so every byte is a char.
        pem.extend(line.iter().map(|b| char::from(*b)));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// sha256 of `der`, lower-case hex (64 characters).
pub fn sha256_fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// `spiffe://<cluster>/agent/<agent_id>`: the one SAN of an agent certificate.
pub fn agent_spiffe_id(cluster: &str, agent_id: uuid::Uuid) -> Result<String, PkiError> {
    validate_cluster(cluster)?;
    spiffe_id(Identity::Agent {
        cluster: cluster.to_owned(),
        id: AgentId(agent_id),
    })
}

/// `spiffe://<cluster>/admin/<name>`: the one SAN of an admin certificate.
pub fn admin_spiffe_id(cluster: &str, name: &str) -> Result<String, PkiError> {
    validate_cluster(cluster)?;
    let invalid = |reason: String| PkiError::InvalidName {
        what: "admin name",
        value: name.to_owned(),
        reason,
    };
    identity::validate_admin_name(name).map_err(invalid)?;
    // SPIFFE forbids these path segments; they would also read as path traversal.
    if name == "." || name == ".." {
        return Err(invalid("\".\" and \"..\" are not names".into()));
    }
    spiffe_id(Identity::Admin {
        cluster: cluster.to_owned(),
        name: name.to_owned(),
    })
}

/// The cluster name is the SPIFFE trust domain of every identity in the cluster; the
/// rules are the protocol's, so every id the CA certifies can be parsed back.
fn validate_cluster(cluster: &str) -> Result<(), PkiError> {
    identity::validate_cluster_name(cluster).map_err(|reason| PkiError::InvalidName {
        what: "cluster name",
        value: cluster.to_owned(),
        reason,
    })
}

/// Formats `identity` with the protocol's one formatter and checks that the protocol's
/// parser reads it back as the same identity: the CA never certifies a SAN the
/// coordinator would misread or refuse.
fn spiffe_id(identity: Identity) -> Result<String, PkiError> {
    let uri = identity.spiffe_uri();
    match Identity::parse(&uri) {
        Ok(parsed) if parsed == identity => Ok(uri),
        Ok(parsed) => Err(PkiError::InvalidName {
            what: "SPIFFE id",
            value: uri,
            reason: format!("it parses back as {parsed}, not {identity}"),
        }),
        Err(e) => Err(PkiError::InvalidName {
            what: "SPIFFE id",
            value: uri,
            reason: e.to_string(),
        }),
    }
}

fn parse_server_san(san: &str) -> Result<SanType, PkiError> {
    let unbracketed = san
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(san);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let invalid = || PkiError::InvalidName {
        what: "server SAN",
        value: san.to_owned(),
        reason: "expected a DNS name (e.g. coordinator.example.com) or an IP address".into(),
    };
    rustls_pki_types::DnsName::try_from(san).map_err(|_| invalid())?;
    let ia5 = Ia5String::try_from(san).map_err(|_| invalid())?;
    Ok(SanType::DnsName(ia5))
}

/// 16 random bytes, top bit clear (a positive INTEGER) and second bit set (so the
/// encoding is always 16 bytes long). rcgen's default serial is a hash of the subject
/// key, which repeats when a key is re-certified.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests;
