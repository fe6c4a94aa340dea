//! Content digests (`sha256:<64 lower-case hex>`).
//!
//! Digests name every image Helix pushes and every context it uploads, and a digest
//! that is spelled two ways is two keys in the store and the result cache. So there
//! is exactly one accepted spelling: `sha256:` followed by 64 lower-case hex digits.
//! Other algorithms that OCI allows (`sha512`) are refused clearly rather than half
//! supported: nothing in Helix computes or verifies them.

use std::fmt;
use std::str::FromStr;

/// The only algorithm prefix accepted, with its separator.
const PREFIX: &str = "sha256:";

/// The number of hex digits of a sha256 digest (32 bytes).
const HEX_LEN: usize = 64;

/// A validated sha256 content digest. Construct it by parsing or with
/// [`Digest::sha256_of`], so that every value is well formed.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

/// Why a digest string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DigestError {
    /// `reason` says what was wrong: the algorithm, the length found, or the first bad
    /// character.
    #[error("invalid digest {input:?}: {reason}")]
    Invalid { input: String, reason: String },
}

impl Digest {
    /// The digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest(format!(
            "{PREFIX}{}",
            hex::encode(sha2::Sha256::digest(bytes))
        ))
    }

    /// The digest whose sha256 (32 bytes) was computed by the caller, e.g. while
    /// streaming.
    pub fn from_sha256(hash: [u8; 32]) -> Digest {
        Digest(format!("{PREFIX}{}", hex::encode(hash)))
    }

    /// The algorithm, always `sha256`; there for code that writes OCI descriptors.
    pub fn algorithm(&self) -> &'static str {
        "sha256"
    }

    /// The 64 hex characters after `sha256:`.
    pub fn hex(&self) -> &str {
        // Every constructor guarantees the prefix; never panic even so.
        self.0.strip_prefix(PREFIX).unwrap_or_default()
    }

    /// The whole digest, `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match validate(s) {
            Ok(()) => Ok(Digest(s.to_owned())),
            Err(reason) => Err(DigestError::Invalid {
                input: s.to_owned(),
                reason,
            }),
        }
    }
}

/// Checks `s` against `sha256:<64 lower-case hex>`; the error is the reason only.
fn validate(s: &str) -> Result<(), String> {
    let Some((algorithm, hex)) = s.split_once(':') else {
        return Err(
            if s.len() == HEX_LEN && s.bytes().all(|b| b.is_ascii_hexdigit()) {
                "missing algorithm prefix (write \"sha256:\" before the hex digits)".to_owned()
            } else {
                "missing algorithm prefix (expected sha256:<64 lower-case hex digits>)".to_owned()
            },
        );
    };
    if algorithm.is_empty() {
        return Err(
            "missing algorithm before ':' (expected sha256:<64 lower-case hex digits>)".to_owned(),
        );
    }
    if algorithm != "sha256" {
        return Err(if algorithm.eq_ignore_ascii_case("sha256") {
            format!("algorithm {algorithm:?} must be written in lower case, \"sha256\"")
        } else {
            format!("unsupported digest algorithm {algorithm:?} (only sha256 is supported)")
        });
    }
    if let Some((position, c)) = hex
        .chars()
        .enumerate()
        .find(|(_, c)| !matches!(c, '0'..='9' | 'a'..='f'))
    {
        let position = position + 1;
        return Err(if c.is_ascii_hexdigit() {
            format!("upper-case hex digit {c:?} at position {position} after \"sha256:\" (digests are lower-case)")
        } else {
            format!("non-hex character {c:?} at position {position} after \"sha256:\"")
        });
    }
    // Only ASCII is left, so the byte length is the number of digits.
    if hex.len() != HEX_LEN {
        return Err(format!(
            "expected {HEX_LEN} hex digits after \"sha256:\", found {}",
            hex.len()
        ));
    }
    Ok(())
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Digest {
    type Error = DigestError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        match validate(&s) {
            Ok(()) => Ok(Digest(s)),
            Err(reason) => Err(DigestError::Invalid { input: s, reason }),
        }
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

#[cfg(test)]
mod tests;
