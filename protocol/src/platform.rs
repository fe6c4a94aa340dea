//! Target platforms (`os/arch[/variant]`), normalized with containerd's rules.

use std::fmt;
use std::str::FromStr;

/// A normalized platform. Construct it only through [`FromStr`] so that every value
/// in the system is already normalized and two equal platforms compare equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Platform {
    os: String,
    arch: String,
    variant: Option<String>,
}

/// Why a platform string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlatformError {
    #[error("invalid platform {input:?}: {reason} (expected e.g. linux/amd64, linux/arm64/v8)")]
    Invalid { input: String, reason: String },
}

impl Platform {
    pub fn os(&self) -> &str {
        &self.os
    }
    pub fn arch(&self) -> &str {
        &self.arch
    }
    pub fn variant(&self) -> Option<&str> {
        self.variant.as_deref()
    }
    /// Whether a host of this platform can build `target` natively.
    pub fn can_build(&self, target: &Platform) -> bool {
        self == target
    }
}

impl FromStr for Platform {
    type Err = PlatformError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // STUB: replaced by the full containerd normalization.
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] => Ok(Platform { os: os.to_string(), arch: arch.to_string(), variant: None }),
            [os, arch, v] => Ok(Platform { os: os.to_string(), arch: arch.to_string(), variant: Some(v.to_string()) }),
            _ => Err(PlatformError::Invalid { input: s.to_string(), reason: "stub".into() }),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl TryFrom<String> for Platform {
    type Error = PlatformError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Platform> for String {
    fn from(p: Platform) -> String {
        p.to_string()
    }
}
