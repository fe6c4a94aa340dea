//! Certificate renewal: when to renew, and checking what the coordinator sends back.
//!
//! An agent renews over its authenticated connection at two thirds of its
//! certificate's lifetime, with a new key each time ([`PendingRenewal::start`]). The
//! reply is accepted only if it certifies the same SPIFFE id for the new key
//! ([`PendingRenewal::complete`]); the caller then stores it atomically.

use std::time::Duration;

use helix_transport::pki::{self, PkiError};
use helix_transport::tls::{self, TlsError};
use time::OffsetDateTime;

use crate::identity::{AgentIdentity, IdentityError};

/// Renew after this share of the lifetime (numerator, denominator): early enough that
/// a coordinator outage of a third of the lifetime (10 days by default) costs nothing.
const RENEW_AT: (i32, i32) = (2, 3);

/// Shortest and longest wait before retrying a failed renewal.
const MIN_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);

/// Why a renewal failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenewalError {
    #[error("cannot generate a new key: {0}")]
    Key(#[source] PkiError),
    #[error("the renewed certificate is unusable: {0}")]
    Certificate(#[from] IdentityError),
    #[error("the renewed certificate is for {got}, not {expected}")]
    ChangedIdentity { expected: String, got: String },
    #[error("the renewed certificate already expired at {0}")]
    Expired(OffsetDateTime),
    #[error("the renewed certificate does not match the new key: {0}")]
    KeyMismatch(#[source] TlsError),
}

/// When to renew a certificate valid from `not_before` to `not_after` that the agent
/// received at `received_at`: two thirds of the way through its lifetime.
///
/// The lifetime is counted from when the agent received the certificate, not from
/// `notBefore`, when that is later: the CA backdates `notBefore` a few minutes for
/// clock skew, which for a short lifetime (tests use 30 s) would put the deadline in
/// the past and renew in a loop.
pub fn renewal_deadline(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    received_at: OffsetDateTime,
) -> OffsetDateTime {
    if not_after <= not_before {
        return not_after;
    }
    let start = received_at.clamp(not_before, not_after);
    let (num, den) = RENEW_AT;
    start + (not_after - start) * num / den
}

/// How long to wait before trying again after a renewal failed at `now`: a quarter of
/// the remaining validity, between one second and a minute, so an expiring certificate
/// is retried often and a healthy one does not flood the coordinator.
pub fn retry_delay(now: OffsetDateTime, not_after: OffsetDateTime) -> Duration {
    let remaining = Duration::try_from(not_after - now).unwrap_or(Duration::ZERO);
    (remaining / 4).clamp(MIN_RETRY, MAX_RETRY)
}

/// A renewal in flight: the new key, waiting for its certificate. The key never leaves
/// this process until it is stored beside its certificate.
pub struct PendingRenewal {
    key_pem: String,
}

impl std::fmt::Debug for PendingRenewal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingRenewal").finish_non_exhaustive()
    }
}

impl PendingRenewal {
    /// A new key and the CSR (DER) to send in `RenewCertificate`.
    pub fn start() -> Result<(PendingRenewal, Vec<u8>), RenewalError> {
        let (key_pem, csr_der) = pki::generate_key_and_csr().map_err(RenewalError::Key)?;
        Ok((PendingRenewal { key_pem }, csr_der))
    }

    /// Checks the coordinator's certificate for the new key: the same SPIFFE id as
    /// `current`, not yet expired, and for this key. Returns the identity to store.
    pub fn complete(
        self,
        current: &AgentIdentity,
        ca_pem: &str,
        cert_pem: String,
        now: OffsetDateTime,
    ) -> Result<AgentIdentity, RenewalError> {
        let renewed = AgentIdentity::new(cert_pem, self.key_pem, now)?;
        let (expected, got) = (&current.info().spiffe_id, &renewed.info().spiffe_id);
        if expected != got {
            return Err(RenewalError::ChangedIdentity {
                expected: expected.clone(),
                got: got.clone(),
            });
        }
        if renewed.info().expired_at(now) {
            return Err(RenewalError::Expired(renewed.info().not_after));
        }
        // rustls refuses a certificate whose public key is not the private key's.
        tls::client_config(ca_pem, renewed.cert_pem(), renewed.key_pem())
            .map_err(RenewalError::KeyMismatch)?;
        Ok(renewed)
    }
}

#[cfg(test)]
mod tests {
    use helix_protocol::AgentId;
    use helix_transport::pki::ClusterCa;

    use super::*;
    use crate::test_support::issue;

    #[track_caller]
    fn check_deadline(
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        received: OffsetDateTime,
        expected: OffsetDateTime,
    ) {
        assert_eq!(renewal_deadline(not_before, not_after, received), expected);
    }

    /// `secs` seconds after 2025-01-01T00:00:00Z.
    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_735_689_600 + secs).expect("in range")
    }

    const DAY: i64 = 86_400;

    #[test]
    fn renews_at_two_thirds_of_the_lifetime() {
        // 30 days, received at notBefore: day 20.
        check_deadline(at(0), at(30 * DAY), at(0), at(20 * DAY));
        // 30 s: 20 s in.
        check_deadline(at(0), at(30), at(0), at(20));
        // Backdated five minutes for skew, valid 30 s from receipt: 20 s after receipt,
        // not (5 min + 30 s) * 2/3 after notBefore, which is already past.
        check_deadline(at(-300), at(30), at(0), at(20));
        // A receipt time before notBefore (clock skew, copied file) counts from notBefore.
        check_deadline(at(0), at(30), at(-DAY), at(20));
        // Received after expiry, or a nonsensical window: renew now.
        check_deadline(at(0), at(30), at(DAY), at(30));
        check_deadline(at(0), at(0), at(0), at(0));
        check_deadline(at(10), at(0), at(0), at(0));
    }

    #[test]
    fn retries_within_bounds() {
        assert_eq!(retry_delay(at(0), at(8)), Duration::from_secs(2));
        assert_eq!(retry_delay(at(0), at(0)), MIN_RETRY);
        assert_eq!(retry_delay(at(10), at(0)), MIN_RETRY);
        assert_eq!(retry_delay(at(0), at(DAY)), MAX_RETRY);
    }

    #[test]
    fn accepts_only_the_same_identity_for_the_new_key() {
        let ca = ClusterCa::generate("test").expect("ca");
        let id = AgentId::new_v4();
        let now = OffsetDateTime::now_utc();
        let (cert, key) = issue(&ca, id, Duration::from_secs(60));
        let current = AgentIdentity::new(cert, key, now).expect("current");

        // The right answer: same id, new key.
        let (pending, csr) = PendingRenewal::start().expect("start");
        let cert = ca
            .sign_agent_csr(&csr, "test", id.0, Duration::from_secs(60))
            .expect("sign");
        let renewed = pending
            .complete(&current, ca.cert_pem(), cert, now)
            .expect("renewed");
        assert_eq!(renewed.info().spiffe_id, current.info().spiffe_id);
        assert_ne!(renewed.key_pem(), current.key_pem());

        // Another agent's id.
        let (pending, csr) = PendingRenewal::start().expect("start");
        let other = ca
            .sign_agent_csr(&csr, "test", AgentId::new_v4().0, Duration::from_secs(60))
            .expect("sign");
        let err = pending
            .complete(&current, ca.cert_pem(), other, now)
            .expect_err("changed id");
        assert!(matches!(err, RenewalError::ChangedIdentity { .. }), "{err}");

        // A certificate for some other key (the current one, say).
        let (pending, _csr) = PendingRenewal::start().expect("start");
        let (stale, _) = issue(&ca, id, Duration::from_secs(60));
        let err = pending
            .complete(&current, ca.cert_pem(), stale, now)
            .expect_err("wrong key");
        assert!(matches!(err, RenewalError::KeyMismatch(_)), "{err}");

        // An expired one.
        let (pending, csr) = PendingRenewal::start().expect("start");
        let cert = ca
            .sign_agent_csr(&csr, "test", id.0, Duration::from_secs(60))
            .expect("sign");
        let err = pending
            .complete(
                &current,
                ca.cert_pem(),
                cert,
                now + Duration::from_secs(3600),
            )
            .expect_err("expired");
        assert!(matches!(err, RenewalError::Expired(_)), "{err}");
    }
}
