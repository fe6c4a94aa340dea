//! rustls and quinn configurations for every Helix connection.
//!
//! - [`server_config`]: the coordinator. Client certificates are verified against the
//!   cluster CA, but optional: a certificate-less connection may only join with a token
//!   (the application layer enforces that). A certificate that *is* presented must
//!   verify, or the handshake fails.
//! - [`client_config`]: agents and the admin CLI, mutual TLS trusting only the cluster CA.
//! - [`join_client_config`]: an enrolling agent that knows only the CA's sha256 from its
//!   join token; [`PinnedCa`] accepts the coordinator's chain only if it contains that
//!   CA, verifies the leaf against it, and keeps it so the agent can store it.
//! - [`quinn_server_config`], [`quinn_client_config`]: the QUIC glue, with idle timeouts
//!   and keep-alives so a dead peer is noticed within about fifteen seconds.
//! - [`peer_identity_uris`]: the URI SANs (SPIFFE ids) of a connected peer.
//!
//! Every configuration uses the *ring* provider through the `*_with_provider` builders
//! (a second provider in the dependency graph makes the plain builders panic), TLS 1.3
//! only (QUIC requires it) and ALPN [`ALPN`]. Session resumption is off on both sides so
//! that every connection presents and re-checks a certificate.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::pki::{cert_pem_from_der, cert_uri_sans, sha256_fingerprint};

/// The QUIC application protocol of Helix version 1. A peer that does not offer it
/// fails the handshake instead of misreading frames.
pub const ALPN: &[u8] = b"helix/1";

/// QUIC idle timeout: a connection with no packets for this long is dead. With
/// [`DEFAULT_KEEP_ALIVE`], a dead peer is noticed within ~10 s (the design target is
/// 15 s), and a live but idle one is never dropped.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Keep-alive interval: a ping this often keeps an idle connection (and NAT mappings)
/// alive; several pings fit in one idle timeout, so one lost packet is not fatal.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(3);

/// Errors from building TLS or QUIC configurations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM input could not be read.
    #[error("cannot read the {what} PEM: {detail}")]
    Pem {
        /// Which input, e.g. "cluster CA certificate".
        what: &'static str,
        /// The parser's reason.
        detail: String,
    },
    /// A certificate is unusable as a trust anchor.
    #[error("cannot use the cluster CA certificate as a trust root: {0}")]
    TrustAnchor(#[source] rustls::Error),
    /// rustls refused to build a verifier.
    #[error("cannot build the {what} certificate verifier: {source}")]
    Verifier {
        /// "client" or "server".
        what: &'static str,
        /// rustls' reason.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// rustls refused the configuration, e.g. a private key that does not match its
    /// certificate.
    #[error("cannot build the TLS {what} configuration: {source}")]
    Config {
        /// "server" or "client".
        what: &'static str,
        /// rustls' reason.
        #[source]
        source: rustls::Error,
    },
    /// The join token's CA pin is not a sha256 in hex.
    #[error("invalid CA pin {0:?} in the join token: expected 64 hex characters (a sha256)")]
    InvalidPin(String),
    /// The rustls configuration cannot carry QUIC.
    #[error("the TLS configuration cannot be used for QUIC: {0}")]
    Quic(String),
    /// A timeout is out of range or inconsistent.
    #[error("invalid {what} {value:?}: {reason}")]
    Timeout {
        /// "idle timeout" or "keep-alive interval".
        what: &'static str,
        /// The rejected value.
        value: Duration,
        /// What is allowed.
        reason: &'static str,
    },
}

/// The one crypto provider Helix uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The coordinator's TLS configuration.
///
/// Client certificates are requested and verified against the cluster CA only, but a
/// client may present none: such a connection can do one thing, join with a token,
/// which the application enforces by checking [`peer_identity_uris`]. A certificate
/// that is presented and does not verify (another CA, expired, wrong EKU) fails the
/// handshake.
///
/// The server sends `[leaf, CA]` (the CA is appended when `server_cert_pem` holds only
/// the leaf), so a joining agent can find the CA its token pins. TLS 1.3 tickets and
/// the session cache are off, so no connection skips the client-certificate check.
pub fn server_config(
    ca_pem: &str,
    server_cert_pem: &str,
    server_key_pem: &str,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let cas = parse_certs(ca_pem, "cluster CA certificate")?;
    let roots = roots_of(&cas)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|source| TlsError::Verifier {
            what: "client",
            source,
        })?;

    let mut chain = parse_certs(server_cert_pem, "server certificate")?;
    for ca in cas {
        if !chain.contains(&ca) {
            chain.push(ca);
        }
    }
    let key = parse_key(server_key_pem, "server private key")?;

    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Config {
            what: "server",
            source,
        })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Config {
            what: "server",
            source,
        })?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    Ok(config)
}

/// The mutual-TLS client configuration of agents and the admin CLI: the server must
/// chain to the cluster CA (and only to it, no system roots) and match the name dialed;
/// the client presents `client_cert_pem`.
pub fn client_config(
    ca_pem: &str,
    client_cert_pem: &str,
    client_key_pem: &str,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let roots = roots_of(&parse_certs(ca_pem, "cluster CA certificate")?)?;
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|source| TlsError::Verifier {
            what: "server",
            source,
        })?;
    let certs = parse_certs(client_cert_pem, "client certificate")?;
    let key = parse_key(client_key_pem, "client private key")?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Config {
            what: "client",
            source,
        })?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(certs, key)
        .map_err(|source| TlsError::Config {
            what: "client",
            source,
        })?;
    finish_client(&mut config);
    Ok(config)
}

/// The configuration of an agent joining with a token: no client certificate, and the
/// server is trusted through the CA pin alone (see [`PinnedCa`]). After a successful
/// handshake, [`PinnedCa::ca_pem`] holds the CA to store for later mTLS connections.
pub fn join_client_config(
    ca_fingerprint_hex: &str,
) -> Result<(rustls::ClientConfig, Arc<PinnedCa>), TlsError> {
    let provider = provider();
    let pinned = Arc::new(PinnedCa::new(ca_fingerprint_hex, provider.clone())?);
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Config {
            what: "join client",
            source,
        })?
        .dangerous()
        .with_custom_certificate_verifier(pinned.clone())
        .with_no_client_auth();
    finish_client(&mut config);
    Ok((config, pinned))
}

fn finish_client(config: &mut rustls::ClientConfig) {
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.resumption = Resumption::disabled();
    config.enable_early_data = false;
}

/// A server-certificate verifier that trusts the CA whose sha256 a join token carries.
///
/// The coordinator sends `[leaf, CA]`. The chain is accepted only if one of its
/// certificates hashes to the pin; the leaf is then verified normally (signature,
/// validity, EKU, server name) against that CA alone. A verified CA is kept and can be
/// read with [`PinnedCa::ca_pem`] once the handshake is done.
pub struct PinnedCa {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
    ca: Mutex<Option<CertificateDer<'static>>>,
    rejection: Mutex<Option<String>>,
}

impl fmt::Debug for PinnedCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedCa")
            .field("pin", &hex::encode(self.pin))
            .field("captured", &self.ca_der().is_some())
            .finish_non_exhaustive()
    }
}

impl PinnedCa {
    fn new(pin_hex: &str, provider: Arc<CryptoProvider>) -> Result<PinnedCa, TlsError> {
        let trimmed = pin_hex.trim();
        let mut pin = [0u8; 32];
        hex::decode_to_slice(trimmed.to_ascii_lowercase(), &mut pin)
            .map_err(|_| TlsError::InvalidPin(pin_hex.to_owned()))?;
        Ok(PinnedCa {
            pin,
            provider,
            ca: Mutex::new(None),
            rejection: Mutex::new(None),
        })
    }

    /// The pin, lower-case hex.
    pub fn pin(&self) -> String {
        hex::encode(self.pin)
    }

    /// The pinned CA certificate (DER), once a server chain has verified against it.
    pub fn ca_der(&self) -> Option<Vec<u8>> {
        lock(&self.ca).as_ref().map(|der| der.to_vec())
    }

    /// The pinned CA certificate (PEM), once a server chain has verified against it.
    /// The joining agent stores this as its trust root.
    pub fn ca_pem(&self) -> Option<String> {
        lock(&self.ca).as_ref().map(|der| cert_pem_from_der(der))
    }

    /// Why the last server chain was refused, in plain words (the same text is in the
    /// connection error, wrapped in rustls' and quinn's formatting).
    pub fn rejection(&self) -> Option<String> {
        lock(&self.rejection).clone()
    }

    fn refuse(&self, error: rustls::Error) -> rustls::Error {
        *lock(&self.rejection) = Some(match &error {
            rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
                other.0.to_string()
            }
            other => other.to_string(),
        });
        error
    }
}

/// The mutexes only guard plain assignments, so a poisoned one still holds a
/// consistent value.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The coordinator's chain does not contain the CA the join token pins.
struct PinMismatch {
    expected: String,
    got: Vec<String>,
}

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the coordinator's CA does not match the join token (expected sha256 {}, got {})",
            self.expected,
            self.got.join(", ")
        )
    }
}

// rustls prints a `CertificateError::Other` with `{:?}`; make that readable too.
impl fmt::Debug for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for PinMismatch {}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = || std::iter::once(end_entity).chain(intermediates);
        let Some(ca) = chain().find(|cert| sha256_of(cert) == self.pin) else {
            let mismatch = PinMismatch {
                expected: self.pin(),
                got: chain().map(|cert| sha256_fingerprint(cert)).collect(),
            };
            return Err(
                self.refuse(rustls::Error::InvalidCertificate(CertificateError::Other(
                    OtherError(Arc::new(mismatch)),
                ))),
            );
        };

        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| self.refuse(e))?;
        let webpki =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| self.refuse(rustls::Error::General(e.to_string())))?;
        let verified = webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|e| self.refuse(e))?;

        *lock(&self.ca) = Some(ca.clone().into_owned());
        *lock(&self.rejection) = None;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The configuration offers TLS 1.3 only (QUIC requires it); never reached.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn sha256_of(der: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(der).into()
}

/// The URI SANs of the peer's leaf certificate, e.g. `spiffe://prod/agent/<uuid>`;
/// empty when the peer presented no certificate (a joining agent). The certificate was
/// verified during the handshake, so this only reads it.
pub fn peer_identity_uris(conn: &quinn::Connection) -> Vec<String> {
    let Some(identity) = conn.peer_identity() else {
        return Vec::new();
    };
    let Ok(certs) = identity.downcast::<Vec<CertificateDer<'static>>>() else {
        tracing::warn!("peer identity is not an X.509 chain; treating the peer as anonymous");
        return Vec::new();
    };
    match certs.first().map(|leaf| cert_uri_sans(leaf)) {
        Some(Ok(uris)) => uris,
        Some(Err(error)) => {
            tracing::warn!(%error, "cannot read the peer certificate's SANs; treating the peer as anonymous");
            Vec::new()
        }
        None => Vec::new(),
    }
}

/// The coordinator's QUIC configuration: `tls` (from [`server_config`]) with the given
/// idle timeout and a keep-alive of a third of it (at most [`DEFAULT_KEEP_ALIVE`]), so a
/// quiet agent is not mistaken for a dead one.
pub fn quinn_server_config(
    tls: rustls::ServerConfig,
    idle_timeout: Duration,
) -> Result<quinn::ServerConfig, TlsError> {
    let keep_alive = DEFAULT_KEEP_ALIVE.min(idle_timeout / 3);
    let transport = transport_config(idle_timeout, keep_alive)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// An agent's or admin's QUIC configuration: `tls` (from [`client_config`] or
/// [`join_client_config`]) with the given idle timeout and keep-alive interval
/// (defaults: [`DEFAULT_IDLE_TIMEOUT`], [`DEFAULT_KEEP_ALIVE`]). The keep-alive must be
/// shorter than the idle timeout, or idle connections would die.
pub fn quinn_client_config(
    tls: rustls::ClientConfig,
    idle_timeout: Duration,
    keep_alive: Duration,
) -> Result<quinn::ClientConfig, TlsError> {
    let transport = transport_config(idle_timeout, keep_alive)?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

fn transport_config(
    idle_timeout: Duration,
    keep_alive: Duration,
) -> Result<quinn::TransportConfig, TlsError> {
    if idle_timeout.is_zero() {
        return Err(TlsError::Timeout {
            what: "idle timeout",
            value: idle_timeout,
            reason: "it must be positive (zero would mean never time out)",
        });
    }
    let idle = quinn::IdleTimeout::try_from(idle_timeout).map_err(|_| TlsError::Timeout {
        what: "idle timeout",
        value: idle_timeout,
        reason: "it is too large for QUIC",
    })?;
    if keep_alive.is_zero() || keep_alive >= idle_timeout {
        return Err(TlsError::Timeout {
            what: "keep-alive interval",
            value: keep_alive,
            reason: "it must be positive and shorter than the idle timeout",
        });
    }
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(idle));
    transport.keep_alive_interval(Some(keep_alive));
    Ok(transport)
}

fn parse_certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            detail: "no \"CERTIFICATE\" section found".into(),
        });
    }
    Ok(certs)
}

fn parse_key(pem: &str, what: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Pem {
        what,
        detail: e.to_string(),
    })
}

fn roots_of(cas: &[CertificateDer<'static>]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca.clone()).map_err(TlsError::TrustAnchor)?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests;
