//! What the agent knows about its host: its name and the platforms it builds natively.

use helix_protocol::{Platform, PlatformError};

/// Longest agent name the coordinator accepts.
const MAX_NAME: usize = 63;

/// The host's name, from the kernel (`/proc/sys/kernel/hostname`) or `/etc/hostname`.
pub fn hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|text| text.trim().to_string())
        .find(|name| !name.is_empty())
}

/// `raw` made into a valid agent name: characters other than letters, digits, `-`, `_`
/// and `.` become `-`, at most 63 characters; `None` if nothing usable is left.
pub fn sanitize_name(raw: &str) -> Option<String> {
    let name: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(MAX_NAME)
        .collect();
    let name = name.trim_matches('-');
    (!name.is_empty() && name != "." && name != "..").then(|| name.to_string())
}

/// The name an agent joins under when `--name` is not given: the sanitized host name,
/// or `agent` if there is none.
pub fn default_name() -> String {
    hostname()
        .and_then(|h| sanitize_name(&h))
        .unwrap_or_else(|| "agent".to_string())
}

/// The platform of this host, from the OS and CPU architecture the agent was built
/// for (`linux` + `x86_64` is `linux/amd64`, `aarch64` is `linux/arm64`).
pub fn host_platform() -> Result<Platform, PlatformError> {
    platform_for(
        std::env::consts::OS,
        std::env::consts::ARCH,
        cfg!(target_endian = "little"),
    )
}

/// The normalized platform for Rust's `std::env::consts::{OS, ARCH}` names. Names Go
/// and Rust spell alike, or that the platform parser knows as aliases (`x86_64`,
/// `aarch64`), pass through it; the rest are mapped here.
pub fn platform_for(os: &str, arch: &str, little_endian: bool) -> Result<Platform, PlatformError> {
    let os = match os {
        "macos" => "darwin",
        other => other,
    };
    let arch = match (arch, little_endian) {
        ("x86", _) => "386",
        ("powerpc64", true) => "ppc64le",
        ("powerpc64", false) => "ppc64",
        ("mips64", true) => "mips64le",
        ("mips", true) => "mipsle",
        ("loongarch64", _) => "loong64",
        (other, _) => other,
    };
    format!("{os}/{arch}").parse()
}

/// The platforms given with `--platform` (repeatable, each a comma-separated list),
/// normalized, in order, without duplicates. An empty slice yields an empty list.
pub fn parse_platform_flags(values: &[String]) -> Result<Vec<Platform>, PlatformError> {
    let mut platforms: Vec<Platform> = Vec::new();
    for value in values {
        for platform in Platform::parse_list(value)? {
            if !platforms.contains(&platform) {
                platforms.push(platform);
            }
        }
    }
    Ok(platforms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_platform(os: &str, arch: &str, little: bool, expected: &str) {
        let got = platform_for(os, arch, little).expect("known platform");
        assert_eq!(got.to_string(), expected);
    }

    #[test]
    fn host_platforms_are_normalized() {
        check_platform("linux", "x86_64", true, "linux/amd64");
        check_platform("linux", "aarch64", true, "linux/arm64");
        check_platform("linux", "x86", true, "linux/386");
        check_platform("linux", "arm", true, "linux/arm/v7");
        check_platform("linux", "powerpc64", true, "linux/ppc64le");
        check_platform("linux", "s390x", false, "linux/s390x");
        check_platform("linux", "riscv64", true, "linux/riscv64");
        check_platform("linux", "loongarch64", true, "linux/loong64");
        check_platform("macos", "aarch64", true, "darwin/arm64");
        // The arm64 default variant compares equal to an explicit v8.
        assert_eq!(
            platform_for("linux", "aarch64", true).expect("arm64"),
            "linux/arm64/v8".parse::<Platform>().expect("parse")
        );
        let this = host_platform().expect("this host's platform is known");
        assert_eq!(this.os(), std::env::consts::OS);
        let err = platform_for("linux", "vax", true).expect_err("unknown");
        assert!(
            err.to_string().contains("unknown architecture \"vax\""),
            "{err}"
        );
    }

    #[test]
    fn platform_flags_are_lists_merged_in_order() {
        let flags = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let got = parse_platform_flags(&flags(&[
            "linux/amd64,linux/aarch64",
            "linux/arm64/v8",
            " linux/arm/v7 ",
        ]))
        .expect("valid");
        let got: Vec<String> = got.iter().map(ToString::to_string).collect();
        assert_eq!(got, ["linux/amd64", "linux/arm64", "linux/arm/v7"]);
        assert!(parse_platform_flags(&[]).expect("empty").is_empty());

        for (bad, needle) in [
            ("linux/amd65", "unknown architecture \"amd65\""),
            ("linux/amd64,,linux/arm64", "item 2 is empty"),
            ("", "no platform given"),
            ("amd64", "missing operating system"),
            ("linux/arm64/v7", "unknown variant"),
        ] {
            let err = parse_platform_flags(&flags(&["linux/amd64", bad]))
                .expect_err(bad)
                .to_string();
            assert!(err.contains(needle), "{bad:?}: {err}");
            assert!(err.contains("expected e.g."), "{bad:?}: {err}");
        }
    }

    #[test]
    fn host_names_are_sanitized() {
        for (raw, expected) in [
            ("build-01", Some("build-01")),
            ("build-01.example.com\n", Some("build-01.example.com")),
            ("my host (2)", Some("my-host--2")),
            ("ümlaut", Some("mlaut")),
            ("---", None),
            ("", None),
            ("..", None),
        ] {
            assert_eq!(sanitize_name(raw).as_deref(), expected, "{raw:?}");
        }
        let long = sanitize_name(&"a".repeat(100)).expect("long");
        assert_eq!(long.len(), MAX_NAME);
        let name = default_name();
        helix_protocol::identity::validate_admin_name(&name).expect("the default name is valid");
    }
}
