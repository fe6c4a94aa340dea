//! Join tokens: `helix1.<ca-sha256>.<secret>`.
//!
//! The CA hash lets a joining agent pin the cluster CA before it trusts anything the
//! coordinator says (kubeadm's `--discovery-token-ca-cert-hash`, carried in the token
//! so there is one thing to copy). The secret is 128 random bits; the coordinator
//! stores only its sha256, so a copy of the database cannot be used to join.

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

const PREFIX: &str = "helix1";

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// sha256 of the cluster CA certificate's DER, lower-case hex.
    pub ca_hash: String,
    secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_hash", &self.ca_hash)
            .field("secret", &"[elided]")
            .finish()
    }
}

/// Why a token string was refused before it reached the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed join token: {0} (expected helix1.<64 hex CA hash>.<32 hex secret>, as printed by `helix-coordinator token create`)")]
pub struct TokenFormatError(&'static str);

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl JoinToken {
    /// A token for a CA with this fingerprint and a secret of 16 random bytes (the
    /// caller draws them: this crate does no I/O, randomness included).
    pub fn new(ca_hash: &str, secret: [u8; 16]) -> JoinToken {
        JoinToken {
            ca_hash: ca_hash.to_string(),
            secret: hex::encode(secret),
        }
    }

    /// What the store keeps: sha256 of the secret.
    pub fn secret_hash(&self) -> [u8; 32] {
        sha2::Sha256::digest(self.secret.as_bytes()).into()
    }
}

impl FromStr for JoinToken {
    type Err = TokenFormatError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let mut parts = s.split('.');
        let (Some(prefix), Some(ca_hash), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenFormatError(
                "it does not have three dot-separated parts",
            ));
        };
        if prefix != PREFIX {
            return Err(TokenFormatError("unknown token version"));
        }
        if !is_lower_hex(ca_hash, 64) {
            return Err(TokenFormatError(
                "the CA hash is not 64 lower-case hex characters",
            ));
        }
        if !is_lower_hex(secret, 32) {
            return Err(TokenFormatError(
                "the secret is not 32 lower-case hex characters",
            ));
        }
        Ok(JoinToken {
            ca_hash: ca_hash.to_string(),
            secret: secret.to_string(),
        })
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}.{}.{}", self.ca_hash, self.secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand_bytes() -> [u8; 16] {
        use std::sync::atomic::{AtomicU8, Ordering};
        static N: AtomicU8 = AtomicU8::new(1);
        [N.fetch_add(1, Ordering::Relaxed); 16]
    }

    #[test]
    fn round_trips_and_hashes_the_secret() {
        let t = JoinToken::new(&"ab".repeat(32), rand_bytes());
        let parsed: JoinToken = t.to_string().parse().expect("valid");
        assert_eq!(parsed, t);
        assert_eq!(parsed.secret_hash(), t.secret_hash());
        assert_ne!(
            JoinToken::new(&"ab".repeat(32), rand_bytes()).secret_hash(),
            t.secret_hash()
        );
        assert!(
            !format!("{t:?}").contains(&t.secret),
            "Debug never shows the secret"
        );
    }

    #[test]
    fn refuses_malformed_tokens() {
        let good = JoinToken::new(&"ab".repeat(32), rand_bytes()).to_string();
        for (bad, needle) in [
            ("", "three"),
            ("helix1.abc", "three"),
            (&good.replace("helix1", "helix2"), "version"),
            (
                &format!("helix1.{}.{}", "AB".repeat(32), "0".repeat(32)),
                "CA hash",
            ),
            (
                &format!("helix1.{}.{}", "ab".repeat(32), "0".repeat(31)),
                "secret",
            ),
            (&format!("{good}.x"), "three"),
        ] {
            let err = bad.parse::<JoinToken>().expect_err(bad).to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }
}
