//! Target platforms (`os/arch[/variant]`), normalized with containerd's rules.
//!
//! Agents advertise platforms and users request them, each in their own spelling
//! (`linux/aarch64`, `Linux/arm64/v8`, `linux/arm64`). The scheduler must match them
//! as values, never as strings (podman farm compares strings, so an arm64 node that
//! says `linux/arm64/v8` never gets `linux/arm64` work: podman#27586). So a
//! [`Platform`] can only be made by parsing, and parsing normalizes:
//!
//! | input                              | normalized                 |
//! |------------------------------------|----------------------------|
//! | any part in any case               | lower case                 |
//! | os `macos`                         | `darwin`                   |
//! | `x86_64`, `x86-64`                 | `amd64`                    |
//! | `amd64/v1`                         | `amd64` (v1 is the default)|
//! | `amd64/v2` .. `amd64/v4`           | kept                       |
//! | `aarch64`                          | `arm64`                    |
//! | `arm64/8`, `arm64/v8`, `arm64/v8.0`| `arm64` (v8 is the default)|
//! | `arm64/v8.1` .. `arm64/v8.9`       | kept                       |
//! | `arm64/v9`, `arm64/v9.0`           | `arm64/v9`                 |
//! | `arm64/v9.1` .. `arm64/v9.9`       | kept                       |
//! | `arm` (no variant)                 | `arm/v7`                   |
//! | `arm/5` .. `arm/8`                 | `arm/v5` .. `arm/v8`       |
//! | `armhf`                            | `arm/v7`                   |
//! | `armel`                            | `arm/v6`                   |
//! | `i386`                             | `386`                      |
//!
//! A variant may also be written without its `v` (`amd64/3`, `arm64/8.2`).
//!
//! Where Helix is stricter than containerd, and why:
//! - Only `os/arch[/variant]` is accepted: no single-part specifier (containerd fills
//!   in the host's os or arch, and this crate does no I/O), no `os(version+features)`.
//! - The os must be one of Go's `GOOS` values and the arch one of Go's `GOARCH`
//!   values (containerd's `Parse` accepts any word), so a typo is refused at submit
//!   instead of becoming a job that no agent can ever take.
//! - A variant is accepted only where it means something: arm (v5-v8), arm64
//!   (v8.x, v9.x) and amd64 (v1-v4). Any other arch refuses a variant, as does a
//!   variant outside those lists: containerd keeps them verbatim (and silently drops
//!   an `i386` variant), but a variant Helix does not understand cannot be matched by
//!   [`Platform::can_build`], so it would again be a job that never runs.
//! - `armhf`/`armel` with a variant other than the one they imply (`armhf/v6`) is
//!   refused rather than silently overridden as containerd does.
//! - Bare-number variants are given their `v` for every arch (containerd does this for
//!   arm only and leaves `arm64/8.1` as is), so that equal platforms compare equal.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

/// Go's `GOOS` values (`go tool dist list`), the vocabulary OCI image indexes use.
const KNOWN_OS: &[&str] = &[
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "hurd",
    "illumos",
    "ios",
    "js",
    "linux",
    "nacl",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "wasip1",
    "windows",
    "zos",
];

/// Go's `GOARCH` values, the vocabulary OCI image indexes use.
const KNOWN_ARCH: &[&str] = &[
    "386",
    "amd64",
    "amd64p32",
    "arm",
    "armbe",
    "arm64",
    "arm64be",
    "loong64",
    "mips",
    "mipsle",
    "mips64",
    "mips64le",
    "mips64p32",
    "mips64p32le",
    "ppc",
    "ppc64",
    "ppc64le",
    "riscv",
    "riscv64",
    "s390",
    "s390x",
    "sparc",
    "sparc64",
    "wasm",
];

/// A normalized platform. Construct it only through [`FromStr`] (or
/// [`Platform::parse_list`]) so that every value in the system is already normalized
/// and two equal platforms compare equal.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Platform {
    os: String,
    arch: String,
    /// `None` for the default variant of the arch (arm64 v8, amd64 v1) and for arches
    /// without variants; always `Some` for arm.
    variant: Option<String>,
}

/// Why a platform string (or list of them) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlatformError {
    /// One platform was refused; `reason` names the part that was wrong.
    #[error("invalid platform {input:?}: {reason} (expected e.g. linux/amd64, linux/arm64/v8)")]
    Invalid { input: String, reason: String },
    /// A comma-separated list was malformed as a whole (empty, or an empty item).
    #[error("invalid platform list {list:?}: {reason} (expected e.g. linux/amd64,linux/arm64)")]
    InvalidList { list: String, reason: String },
}

impl Platform {
    /// The operating system, a Go `GOOS` value such as `linux`.
    pub fn os(&self) -> &str {
        &self.os
    }

    /// The architecture, a Go `GOARCH` value such as `amd64` or `arm64`.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// The variant, `None` when it is the arch's default (so `linux/arm64/v8` and
    /// `linux/arm64` both report `None`).
    pub fn variant(&self) -> Option<&str> {
        self.variant.as_deref()
    }

    /// Whether a host of this platform can build a job for `target` natively.
    ///
    /// True for the same platform, for a lower amd64 micro-architecture level on a
    /// higher one (an `amd64/v3` host builds `amd64/v2` and `amd64`), and for a lower
    /// arm64 version on a higher one (an `arm64/v9` host builds `arm64/v8.2` and
    /// `arm64`). Armv9.x includes Armv8.(x+5), as containerd's matcher also assumes, so
    /// `arm64/v9` builds up to `arm64/v8.5` but not `arm64/v8.6`.
    ///
    /// Cross-architecture builds (arm64 building arm/v7, amd64 building 386) are never
    /// assumed: many arm64 CPUs cannot execute AArch32 code at all, and a host that
    /// can run another arch's binaries still may not have what the build needs. Hosts
    /// that can should advertise those platforms explicitly. A different os never
    /// matches.
    pub fn can_build(&self, target: &Platform) -> bool {
        if self.os != target.os || self.arch != target.arch {
            return false;
        }
        if self.variant == target.variant {
            return true;
        }
        match self.arch.as_str() {
            "amd64" => match (amd64_level(self.variant()), amd64_level(target.variant())) {
                (Some(host), Some(job)) => host >= job,
                _ => false,
            },
            "arm64" => match (
                arm64_version(self.variant()),
                arm64_version(target.variant()),
            ) {
                (Some(host), Some(job)) => arm64_includes(host, job),
                _ => false,
            },
            _ => false,
        }
    }

    /// Parses a comma-separated list (`linux/amd64,linux/arm64`, the form of
    /// `--platform`), normalizing each item and dropping later duplicates, so that
    /// `linux/arm64,linux/aarch64` is one platform. Spaces around items are ignored.
    /// The first bad item is reported by name; an empty list or item is refused.
    pub fn parse_list(s: &str) -> Result<Vec<Platform>, PlatformError> {
        if s.trim().is_empty() {
            return Err(PlatformError::InvalidList {
                list: s.to_owned(),
                reason: "no platform given".to_owned(),
            });
        }
        let mut seen = HashSet::new();
        let mut platforms = Vec::new();
        for (index, item) in s.split(',').enumerate() {
            let item = item.trim();
            if item.is_empty() {
                return Err(PlatformError::InvalidList {
                    list: s.to_owned(),
                    reason: format!("item {} is empty", index + 1),
                });
            }
            let platform: Platform = item.parse()?;
            if seen.insert(platform.clone()) {
                platforms.push(platform);
            }
        }
        Ok(platforms)
    }
}

/// `Platform::parse_list` as a free function, for callers that prefer one.
pub fn parse_list(s: &str) -> Result<Vec<Platform>, PlatformError> {
    Platform::parse_list(s)
}

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s).map_err(|reason| PlatformError::Invalid {
            input: s.to_owned(),
            reason,
        })
    }
}

/// Parses and normalizes `os/arch[/variant]`; the error is the reason only.
fn parse(s: &str) -> Result<Platform, String> {
    if s.is_empty() {
        return Err("empty platform".to_owned());
    }
    // At most four pieces, so a hostile input with many slashes costs nothing extra.
    let mut parts = s.splitn(4, '/');
    let os_raw = parts.next().unwrap_or_default();
    let arch_raw = parts.next();
    let variant_raw = parts.next();
    if let Some(extra) = parts.next() {
        return Err(format!(
            "unexpected {extra:?} after the variant (a platform is os/arch[/variant])"
        ));
    }
    let Some(arch_raw) = arch_raw else {
        return Err(single_part_reason(os_raw));
    };
    let os = normalize_os(os_raw)?;
    let arch = normalize_arch(arch_raw)?;
    let variant = normalize_variant(&arch, variant_raw)?;
    Ok(Platform {
        os: os.to_owned(),
        arch: arch.name.to_owned(),
        variant,
    })
}

/// Explains a platform without a `/`: containerd would fill in the host's os or arch,
/// which a pure parser cannot know.
fn single_part_reason(part: &str) -> String {
    if normalize_os(part).is_ok() {
        format!("missing architecture after {part:?}")
    } else if let Ok(arch) = normalize_arch(part) {
        format!(
            "missing operating system before {part:?} (write e.g. linux/{})",
            arch.name
        )
    } else {
        format!("{part:?} is neither an operating system nor an architecture, and a platform is os/arch[/variant]")
    }
}

fn normalize_os(raw: &str) -> Result<&'static str, String> {
    if raw.is_empty() {
        return Err("empty operating system".to_owned());
    }
    let lower = raw.to_ascii_lowercase();
    let lower = if lower == "macos" {
        "darwin"
    } else {
        lower.as_str()
    };
    if let Some(known) = KNOWN_OS.iter().find(|os| **os == lower) {
        return Ok(known);
    }
    if raw.contains('(') {
        return Err(format!(
            "unknown operating system {raw:?} (os versions and features in parentheses are not supported)"
        ));
    }
    Err(format!("unknown operating system {raw:?}"))
}

/// A normalized architecture, and the variant its alias implies (`armhf` is arm/v7).
struct Arch {
    name: &'static str,
    alias: Option<&'static str>,
    implied_variant: Option<&'static str>,
}

fn normalize_arch(raw: &str) -> Result<Arch, String> {
    if raw.is_empty() {
        return Err("empty architecture".to_owned());
    }
    let lower = raw.to_ascii_lowercase();
    let alias = |alias, name, implied_variant| Arch {
        name,
        alias: Some(alias),
        implied_variant,
    };
    let arch = match lower.as_str() {
        "x86_64" => alias("x86_64", "amd64", None),
        "x86-64" => alias("x86-64", "amd64", None),
        "aarch64" => alias("aarch64", "arm64", None),
        "i386" => alias("i386", "386", None),
        "armhf" => alias("armhf", "arm", Some("v7")),
        "armel" => alias("armel", "arm", Some("v6")),
        other => match KNOWN_ARCH.iter().find(|arch| **arch == other) {
            Some(name) => Arch {
                name,
                alias: None,
                implied_variant: None,
            },
            None => return Err(format!("unknown architecture {raw:?}")),
        },
    };
    Ok(arch)
}

fn normalize_variant(arch: &Arch, raw: Option<&str>) -> Result<Option<String>, String> {
    let lower = match raw {
        None => None,
        Some("") => return Err("empty variant".to_owned()),
        Some(raw) => Some(raw.to_ascii_lowercase()),
    };
    // `v7` and `7` mean the same; everything below works on the number.
    let number = lower.as_deref().map(|v| v.strip_prefix('v').unwrap_or(v));
    let raw = raw.unwrap_or_default();
    match arch.name {
        "amd64" => match number {
            None | Some("1") => Ok(None),
            Some(n @ ("2" | "3" | "4")) => Ok(Some(format!("v{n}"))),
            Some(_) => Err(format!("unknown variant {raw:?} for amd64 (expected v1, v2, v3 or v4)")),
        },
        "arm64" => match number.map(parse_arm64_version) {
            None | Some(Some((8, 0))) => Ok(None),
            Some(Some((major, 0))) => Ok(Some(format!("v{major}"))),
            Some(Some((major, minor))) => Ok(Some(format!("v{major}.{minor}"))),
            Some(None) => Err(format!(
                "unknown variant {raw:?} for arm64 (expected v8, v8.1 to v8.9, v9 or v9.1 to v9.9)"
            )),
        },
        "arm" => {
            let variant = match number {
                None => arch.implied_variant.unwrap_or("v7"),
                Some("5") => "v5",
                Some("6") => "v6",
                Some("7") => "v7",
                Some("8") => "v8",
                Some(_) => {
                    return Err(format!("unknown variant {raw:?} for arm (expected v5, v6, v7 or v8)"))
                }
            };
            match (arch.alias, arch.implied_variant) {
                (Some(alias), Some(implied)) if implied != variant => Err(format!(
                    "{alias:?} already means arm/{implied}, which conflicts with variant {raw:?}"
                )),
                _ => Ok(Some(variant.to_owned())),
            }
        }
        name => match raw {
            "" => Ok(None),
            _ => Err(format!(
                "architecture {name:?} takes no variant, got {raw:?} (only arm, arm64 and amd64 have variants)"
            )),
        },
    }
}

/// `8`, `8.2`, `9`, `9.5` (without the `v`) as (major, minor); Armv8.0 to Armv9.9.
/// A single-digit minor, as containerd's matcher assumes.
fn parse_arm64_version(number: &str) -> Option<(u8, u8)> {
    let (major, minor) = match number.split_once('.') {
        Some((major, minor)) => (major, Some(minor)),
        None => (number, None),
    };
    let major = match major {
        "8" => 8,
        "9" => 9,
        _ => return None,
    };
    let minor = match minor.map(str::as_bytes) {
        None => 0,
        Some(&[digit @ b'0'..=b'9']) => digit - b'0',
        Some(_) => return None,
    };
    Some((major, minor))
}

/// The amd64 micro-architecture level of a normalized variant (`None` is v1).
fn amd64_level(variant: Option<&str>) -> Option<u8> {
    match variant {
        None => Some(1),
        Some("v2") => Some(2),
        Some("v3") => Some(3),
        Some("v4") => Some(4),
        Some(_) => None,
    }
}

/// The arm64 (major, minor) version of a normalized variant (`None` is v8.0).
fn arm64_version(variant: Option<&str>) -> Option<(u8, u8)> {
    match variant {
        None => Some((8, 0)),
        Some(v) => parse_arm64_version(v.strip_prefix('v')?),
    }
}

/// Whether a CPU implementing `host` implements everything of `job`. Armv9.x is a
/// superset of Armv8.(x+5) (Armv9.0 was branched from Armv8.5), not of later v8.
fn arm64_includes(host: (u8, u8), job: (u8, u8)) -> bool {
    match (host, job) {
        ((host_major, host_minor), (job_major, job_minor)) if host_major == job_major => {
            job_minor <= host_minor
        }
        ((9, host_minor), (8, job_minor)) => job_minor <= host_minor + 5,
        _ => false,
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

#[cfg(test)]
mod tests;
