//! Image references (`registry[:port]/repo[:tag][@digest]`), Docker's grammar and defaults.
//!
//! Users write references the way they write them for `docker pull` (`alpine`,
//! `ghcr.io/org/app:1.2`), but the coordinator pushes, the agents push and the store
//! keys on them, so every [`ImageRef`] is fully qualified at parse time, exactly as
//! Docker qualifies it (distribution's `reference` package):
//!
//! - The first `/`-separated component is a registry if it contains `.` or `:` or is
//!   `localhost`; otherwise the whole name is a Docker Hub repository. (Newer
//!   distribution versions also treat an upper-case first component as a registry;
//!   Helix does not, so `Foo/bar` gets the clearer "must be lowercase" error.)
//! - No registry means `docker.io`; `index.docker.io` is `docker.io`.
//! - A single-component Docker Hub repository is in `library/` (`alpine` is
//!   `docker.io/library/alpine`).
//! - No tag and no digest means tag `latest`. A tag and a digest are both kept.
//!
//! The grammar, checked by hand below (there is no regex crate here):
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ registry "/" ] path
//! registry   := host [ ":" port ]
//! host       := label ( "." label )* | "[" ipv6 "]"
//! label      := [a-zA-Z0-9] | [a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]
//! ipv6       := [a-fA-F0-9:]+
//! port       := [0-9]+
//! path       := component ( "/" component )*
//! component  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
//! digest     := see crate::digest (sha256 only)
//! ```
//!
//! The whole normalized name (`registry/path`) is at most 255 characters, the limit
//! Docker applied to the full name and that the OCI distribution spec says clients
//! commonly impose. The registry host is kept as written (Docker does not lower-case
//! it either).

use std::fmt;
use std::str::FromStr;

use crate::digest::{Digest, DigestError};

/// The registry of names without one: Docker Hub.
const DEFAULT_REGISTRY: &str = "docker.io";
/// Docker Hub's legacy name, normalized to [`DEFAULT_REGISTRY`].
const LEGACY_DEFAULT_REGISTRY: &str = "index.docker.io";
/// Where Docker Hub keeps single-component ("official") repositories.
const OFFICIAL_REPO_PREFIX: &str = "library/";
/// The tag of a reference that names neither a tag nor a digest.
const DEFAULT_TAG: &str = "latest";
/// Longest `registry/path`, as Docker and most registries enforce it.
const MAX_NAME_LEN: usize = 255;
/// Longest tag, from the tag grammar.
const MAX_TAG_LEN: usize = 128;

/// A parsed, validated and fully-qualified image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

/// Why an image reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReferenceError {
    /// The name or tag breaks the grammar; `reason` names the part and the rule.
    #[error("invalid image reference {input:?}: {reason}")]
    Invalid { input: String, reason: String },
    /// The part after `@` is not a valid digest. `cause` is the digest's own error; it
    /// is part of this message rather than a `source()`, so it is shown exactly once.
    #[error("invalid image reference {input:?}: {cause}")]
    Digest { input: String, cause: DigestError },
}

impl ImageRef {
    /// The registry host, with its port if any: `docker.io`, `localhost:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path inside the registry: `library/alpine`, `org/app`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag; `latest` when the input named neither a tag nor a digest, `None` when
    /// it named only a digest.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if the input pinned one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The same repository pinned to `digest`, without a tag: how an agent names the
    /// per-platform image it pushed (by digest, no per-arch tag).
    pub fn with_digest(&self, digest: Digest) -> ImageRef {
        ImageRef {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }

    /// `registry/repository`, without tag or digest: the unit registries authorize
    /// and the scheduler's cache affinity keys on.
    pub fn repository_ref(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s).map_err(|problem| match problem {
            Problem::Reason(reason) => ReferenceError::Invalid {
                input: s.to_owned(),
                reason,
            },
            Problem::Digest(cause) => ReferenceError::Digest {
                input: s.to_owned(),
                cause,
            },
        })
    }
}

/// What was wrong, before the input is attached.
enum Problem {
    Reason(String),
    Digest(DigestError),
}

impl From<String> for Problem {
    fn from(reason: String) -> Self {
        Problem::Reason(reason)
    }
}

fn parse(s: &str) -> Result<ImageRef, Problem> {
    if s.is_empty() {
        return Err(
            "empty reference (expected e.g. alpine, ghcr.io/org/app:1.2)"
                .to_owned()
                .into(),
        );
    }
    if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(
            "a bare 64-hex-digit string is an image id, not a repository name"
                .to_owned()
                .into(),
        );
    }
    // Neither the name nor the tag can contain '@', so the first one starts the digest.
    let (name_and_tag, digest) = match s.split_once('@') {
        Some((name_and_tag, digest)) => (name_and_tag, Some(digest)),
        None => (s, None),
    };
    let (name, tag) = split_tag(name_and_tag);
    if name.is_empty() {
        return Err(
            "missing repository name (expected e.g. alpine, ghcr.io/org/app:1.2)"
                .to_owned()
                .into(),
        );
    }

    let (registry, path) = split_registry(name);
    if let Some(registry) = registry {
        check_registry(registry)?;
        if path.is_empty() {
            return Err(format!("empty repository path after registry {registry:?}").into());
        }
    }
    check_path(path)?;
    if let Some(tag) = tag {
        check_tag(tag)?;
    }
    let digest = match digest {
        None => None,
        Some("") => return Err("empty digest after '@'".to_owned().into()),
        Some(digest) => Some(digest.parse::<Digest>().map_err(Problem::Digest)?),
    };

    let registry = match registry {
        None | Some(LEGACY_DEFAULT_REGISTRY) => DEFAULT_REGISTRY,
        Some(registry) => registry,
    };
    let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
        format!("{OFFICIAL_REPO_PREFIX}{path}")
    } else {
        path.to_owned()
    };
    let name_len = registry.len() + 1 + repository.len();
    if name_len > MAX_NAME_LEN {
        return Err(format!(
            "name is {name_len} characters long with its registry {registry:?} (at most {MAX_NAME_LEN})"
        )
        .into());
    }
    let tag = match (tag, &digest) {
        (None, None) => Some(DEFAULT_TAG.to_owned()),
        (tag, _) => tag.map(str::to_owned),
    };
    Ok(ImageRef {
        registry: registry.to_owned(),
        repository,
        tag,
        digest,
    })
}

/// Splits `name[:tag]`. The tag's ':' is the last one, and only if no '/' follows it:
/// in `localhost:5000/app` the ':' belongs to the registry.
fn split_tag(name_and_tag: &str) -> (&str, Option<&str>) {
    let last_slash = name_and_tag.rfind('/');
    match name_and_tag.rfind(':') {
        Some(colon) if last_slash.is_none_or(|slash| colon > slash) => {
            (&name_and_tag[..colon], Some(&name_and_tag[colon + 1..]))
        }
        _ => (name_and_tag, None),
    }
}

/// Splits `[registry/]path` with Docker's rule: the first component is a registry
/// only if it contains '.' or ':' or is `localhost`.
fn split_registry(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest)) if first == "localhost" || first.contains(['.', ':']) => {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

/// Checks `host[:port]`, where host is a DNS-like name, an IPv4 address or `[IPv6]`.
fn check_registry(registry: &str) -> Result<(), String> {
    let port = if let Some(bracketed) = registry.strip_prefix('[') {
        let Some((address, after)) = bracketed.split_once(']') else {
            return Err(format!("registry {registry:?} has an unclosed '['"));
        };
        if address.is_empty() || !address.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return Err(format!(
                "invalid IPv6 address {address:?} in registry {registry:?} (hex digits and ':' only, no zone)"
            ));
        }
        match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => {
                    return Err(format!(
                        "unexpected {after:?} after ']' in registry {registry:?}"
                    ))
                }
            },
        }
    } else {
        let (host, port) = match registry.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        };
        check_host_name(host, registry)?;
        port
    };
    match port {
        Some(port) if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) => Err(format!(
            "invalid port {port:?} in registry {registry:?} (digits only)"
        )),
        _ => Ok(()),
    }
}

/// Checks a DNS-like host name (which includes IPv4 addresses): dot-separated labels
/// of letters, digits and inner dashes.
fn check_host_name(host: &str, registry: &str) -> Result<(), String> {
    if host.contains(':') {
        return Err(format!(
            "registry {registry:?} looks like an IPv6 address: write it in brackets, e.g. [::1]:5000"
        ));
    }
    if host.is_empty() {
        return Err(format!(
            "registry {registry:?} has no host name before the port"
        ));
    }
    for label in host.split('.') {
        if label.is_empty() {
            return Err(format!(
                "empty label in registry host {host:?} (a leading, trailing or doubled '.')"
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(format!(
                "invalid character {c:?} in registry host {host:?} (allowed: letters, digits, '-' and '.')"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "registry host label {label:?} must not start or end with '-'"
            ));
        }
    }
    Ok(())
}

/// Checks the repository path: lower case, non-empty components separated by '/'.
fn check_path(path: &str) -> Result<(), String> {
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("repository name must be lowercase (got {path:?})"));
    }
    for component in path.split('/') {
        check_path_component(component, path)?;
    }
    Ok(())
}

/// Checks `[a-z0-9]+((.|_|__|-+)[a-z0-9]+)*`.
fn check_path_component(component: &str, path: &str) -> Result<(), String> {
    if component.is_empty() {
        return Err(format!(
            "empty path component in {path:?} (a leading, trailing or doubled '/')"
        ));
    }
    if let Some(c) = component
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '-'))
    {
        return Err(format!(
            "invalid character {c:?} in path component {component:?} (allowed: a-z, 0-9 and the separators '.', '_', '__', '-')"
        ));
    }
    let is_alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !component.starts_with(is_alphanumeric) || !component.ends_with(is_alphanumeric) {
        return Err(format!(
            "path component {component:?} must start and end with a lower-case letter or digit"
        ));
    }
    // What is left between the letters and digits are separators.
    for separator in component
        .split(|c: char| c.is_ascii_alphanumeric())
        .filter(|s| !s.is_empty())
    {
        let valid = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !valid {
            return Err(format!(
                "invalid separator {separator:?} in path component {component:?} (use one '.', one or two '_', or dashes)"
            ));
        }
    }
    Ok(())
}

/// Checks `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn check_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() {
        return Err("empty tag after ':'".to_owned());
    }
    if let Some(c) = tag
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "invalid character {c:?} in tag (allowed: letters, digits, '_', '.' and '-')"
        ));
    }
    if tag.starts_with(['.', '-']) {
        return Err(format!(
            "tag {tag:?} must start with a letter, digit or '_'"
        ));
    }
    // Only ASCII is left, so the byte length is the number of characters.
    if tag.len() > MAX_TAG_LEN {
        return Err(format!(
            "tag is {} characters long (at most {MAX_TAG_LEN})",
            tag.len()
        ));
    }
    Ok(())
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl TryFrom<String> for ImageRef {
    type Error = ReferenceError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ImageRef> for String {
    fn from(r: ImageRef) -> String {
        r.to_string()
    }
}

#[cfg(test)]
mod tests;
