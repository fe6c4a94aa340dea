//! What a user submits ([`BuildSpec`]) and one submission of it ([`Build`]).

use std::collections::BTreeMap;

use crate::digest::Digest;
use crate::ids::{BuildId, JobId};
use crate::job::{Job, JobState};
use crate::platform::Platform;
use crate::reference::ImageRef;
use crate::time::Timestamp;

/// Most build args (or labels) one build may carry. Generous for real Dockerfiles,
/// small enough that a hostile submit cannot make the store hold megabytes per build.
pub const MAX_KEY_VALUE_PAIRS: usize = 256;
/// Longest build-arg or label key, in bytes.
pub const MAX_KEY_LEN: usize = 256;
/// Longest build-arg or label value, in bytes.
pub const MAX_VALUE_LEN: usize = 16 * 1024;
/// Longest repository URL, git ref, Dockerfile path or target, in bytes.
pub const MAX_FIELD_LEN: usize = 4096;
/// Most platforms in one build.
pub const MAX_PLATFORMS: usize = 32;

/// Where the build context comes from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Source {
    /// A git repository and a ref (branch, tag or commit id), pinned to one commit at
    /// submit so every platform builds the same tree.
    Git { repo: String, reference: String },
    /// A context archive uploaded to the coordinator, named by its digest.
    Context { digest: Digest },
}

/// What a user submits.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BuildSpec {
    pub source: Source,
    /// Path of the Dockerfile inside the context; `Dockerfile` by default.
    pub dockerfile: String,
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub platforms: Vec<Platform>,
    pub tag: ImageRef,
    pub no_cache: bool,
    /// Cancel the other platforms as soon as one fails (the default).
    pub fail_fast: bool,
    /// The build fails with `timed out` if it has not finished this many seconds
    /// after submit.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

/// Two hours: long enough for big images on slow nodes, short enough that a wedged
/// build does not hold a queue for a day.
pub const DEFAULT_TIMEOUT_SECS: u64 = 2 * 3600;

fn default_timeout_secs() -> u64 {
    DEFAULT_TIMEOUT_SECS
}

/// A submit refused before anything was stored. Each variant names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    #[error("invalid --repo {url:?}: {reason}")]
    Repo { url: String, reason: String },
    #[error("invalid --ref {reference:?}: {reason}")]
    Ref { reference: String, reason: String },
    #[error("invalid -f/--file {path:?}: {reason}")]
    Dockerfile { path: String, reason: String },
    #[error("invalid --target {target:?}: {reason}")]
    Target { target: String, reason: String },
    #[error("invalid --{field} {key:?}: {reason}")]
    KeyValue {
        field: &'static str,
        key: String,
        reason: String,
    },
    #[error("invalid --platform: {reason}")]
    Platforms { reason: String },
    #[error("invalid --timeout: {reason}")]
    Timeout { reason: String },
}

/// URL schemes a repository may use. `file` is for tests and single-host setups and
/// must be enabled explicitly, because it lets a submitter read the coordinator's disk.
pub fn validate_repo_url(url: &str, allow_file: bool) -> Result<(), SpecError> {
    let err = |reason: &str| SpecError::Repo {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    if url.is_empty() {
        return Err(err("the repository URL is empty"));
    }
    if url.len() > MAX_FIELD_LEN {
        return Err(err("the repository URL is too long"));
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(err(
            "the repository URL contains whitespace or control characters",
        ));
    }
    if url.starts_with('-') {
        return Err(err("a repository URL cannot start with '-'"));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(err(
            "expected a URL with a scheme: https://, http://, ssh:// or git://",
        ));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "https" | "http" | "ssh" | "git" => {
            if rest.is_empty() || rest.starts_with('/') {
                return Err(err("the URL has no host"));
            }
            Ok(())
        }
        "file" if allow_file => {
            if !rest.starts_with('/') {
                return Err(err("a file:// URL needs an absolute path"));
            }
            Ok(())
        }
        "file" => Err(err(
            "file:// repositories are disabled on this coordinator (start it with --allow-file-repos to enable them)",
        )),
        other => Err(err(&format!(
            "unsupported scheme \"{other}\" (expected https, http, ssh or git)"
        ))),
    }
}

impl BuildSpec {
    /// Check every field's form and size. `allow_file_repos` mirrors the coordinator's
    /// `--allow-file-repos`. Platforms must already be normalized (they are, being
    /// [`Platform`]s); duplicates are refused here because the CLI removes them.
    pub fn validate(&self, allow_file_repos: bool) -> Result<(), SpecError> {
        if let Source::Git { repo, reference } = &self.source {
            validate_repo_url(repo, allow_file_repos)?;
            validate_ref(reference)?;
        }
        validate_dockerfile(&self.dockerfile)?;
        if let Some(target) = &self.target {
            validate_target(target)?;
        }
        validate_pairs("build-arg", &self.build_args)?;
        validate_pairs("label", &self.labels)?;
        if self.timeout_secs == 0 {
            return Err(SpecError::Timeout {
                reason: "the timeout must be at least 1s".into(),
            });
        }
        if self.platforms.is_empty() {
            return Err(SpecError::Platforms {
                reason: "at least one platform is required".into(),
            });
        }
        if self.platforms.len() > MAX_PLATFORMS {
            return Err(SpecError::Platforms {
                reason: format!("at most {MAX_PLATFORMS} platforms per build"),
            });
        }
        for (i, p) in self.platforms.iter().enumerate() {
            if self.platforms[..i].contains(p) {
                return Err(SpecError::Platforms {
                    reason: format!("{p} is listed twice"),
                });
            }
        }
        Ok(())
    }
}

fn validate_ref(reference: &str) -> Result<(), SpecError> {
    let err = |reason: &str| SpecError::Ref {
        reference: reference.to_string(),
        reason: reason.to_string(),
    };
    if reference.is_empty() {
        return Err(err("the ref is empty"));
    }
    if reference.len() > MAX_FIELD_LEN {
        return Err(err("the ref is too long"));
    }
    // git check-ref-format's rules that matter for safety: no option injection, no
    // whitespace or control characters, no `..`.
    if reference.starts_with('-') {
        return Err(err("a ref cannot start with '-'"));
    }
    if reference.contains("..") {
        return Err(err("a ref cannot contain '..'"));
    }
    if reference.chars().any(|c| {
        c.is_control() || c.is_whitespace() || matches!(c, '~' | '^' | ':' | '?' | '*' | '[' | '\\')
    }) {
        return Err(err(
            "a ref cannot contain whitespace, control characters or any of ~^:?*[\\",
        ));
    }
    Ok(())
}

fn validate_dockerfile(path: &str) -> Result<(), SpecError> {
    let err = |reason: &str| SpecError::Dockerfile {
        path: path.to_string(),
        reason: reason.to_string(),
    };
    if path.is_empty() {
        return Err(err("the path is empty"));
    }
    if path.len() > MAX_FIELD_LEN {
        return Err(err("the path is too long"));
    }
    if path.starts_with('/') {
        return Err(err("the path must be relative to the build context"));
    }
    if path.split('/').any(|c| c == "..") {
        return Err(err("the path must stay inside the build context (no '..')"));
    }
    if path.chars().any(char::is_control) {
        return Err(err("the path contains control characters"));
    }
    Ok(())
}

fn validate_target(target: &str) -> Result<(), SpecError> {
    let err = |reason: &str| SpecError::Target {
        target: target.to_string(),
        reason: reason.to_string(),
    };
    if target.is_empty() || target.len() > 256 {
        return Err(err("a stage name is 1 to 256 characters"));
    }
    if !target
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(err(
            "a stage name has only letters, digits, '-', '_' and '.'",
        ));
    }
    Ok(())
}

fn validate_pairs(field: &'static str, pairs: &BTreeMap<String, String>) -> Result<(), SpecError> {
    if pairs.len() > MAX_KEY_VALUE_PAIRS {
        return Err(SpecError::KeyValue {
            field,
            key: String::new(),
            reason: format!("at most {MAX_KEY_VALUE_PAIRS} per build"),
        });
    }
    for (key, value) in pairs {
        let err = |reason: String| SpecError::KeyValue {
            field,
            key: key.clone(),
            reason,
        };
        if key.is_empty() {
            return Err(err("the key is empty (expected KEY=VALUE)".into()));
        }
        if key.len() > MAX_KEY_LEN {
            return Err(err(format!("the key is longer than {MAX_KEY_LEN} bytes")));
        }
        if key.contains('=') || key.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(err(
                "the key cannot contain '=', whitespace or control characters".into(),
            ));
        }
        if value.len() > MAX_VALUE_LEN {
            return Err(err(format!(
                "the value is longer than {MAX_VALUE_LEN} bytes"
            )));
        }
    }
    Ok(())
}

/// Parse `KEY=VALUE` as the CLI takes it for `--build-arg` and `--label`.
pub fn parse_key_value(field: &'static str, s: &str) -> Result<(String, String), SpecError> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(SpecError::KeyValue {
            field,
            key: s.to_string(),
            reason: "expected KEY=VALUE".into(),
        }),
    }
}

/// Where a build is beyond what its jobs say. The jobs carry the per-platform states;
/// this carries the step after them (assembly) and the build's own outcome.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BuildPhase {
    /// Jobs are queued or running.
    Building,
    /// Every job succeeded; the index is being assembled and pushed.
    Assembling,
    Succeeded {
        index_digest: Digest,
    },
    Failed {
        reason: String,
    },
    Cancelled {
        reason: String,
    },
}

/// The state a user sees, derived from the phase and the jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum BuildState {
    Queued,
    Running,
    Assembling,
    Succeeded,
    Failed,
    Cancelled,
}

impl BuildState {
    pub fn name(self) -> &'static str {
        match self {
            BuildState::Queued => "queued",
            BuildState::Running => "running",
            BuildState::Assembling => "assembling",
            BuildState::Succeeded => "succeeded",
            BuildState::Failed => "failed",
            BuildState::Cancelled => "cancelled",
        }
    }
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            BuildState::Succeeded | BuildState::Failed | BuildState::Cancelled
        )
    }
}

impl std::fmt::Display for BuildState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One submission: the spec, the commit it was pinned to, and its jobs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Build {
    pub id: BuildId,
    pub spec: BuildSpec,
    /// The commit `spec.source`'s ref resolved to at submit (git sources only).
    pub commit: Option<String>,
    /// One job per platform, in the order of `spec.platforms`.
    pub jobs: Vec<JobId>,
    pub phase: BuildPhase,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Build {
    /// The state a user sees. `jobs` are this build's jobs (any order).
    pub fn state(&self, jobs: &[Job]) -> BuildState {
        match &self.phase {
            BuildPhase::Succeeded { .. } => BuildState::Succeeded,
            BuildPhase::Failed { .. } => BuildState::Failed,
            BuildPhase::Cancelled { .. } => BuildState::Cancelled,
            BuildPhase::Assembling => BuildState::Assembling,
            BuildPhase::Building => {
                let started = jobs.iter().any(|j| !matches!(j.state(), JobState::Queued));
                if started {
                    BuildState::Running
                } else {
                    BuildState::Queued
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
