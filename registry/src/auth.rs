//! Registry credentials, found the way podman, buildah and skopeo find them, so that
//! `podman login` on a host is all an operator does for both the agents that push and
//! the coordinator that assembles (one convention on both sides: podman#21352,
//! buildx#177).
//!
//! The auth files searched, in order (containers-auth.json(5)):
//!
//! 1. `$REGISTRY_AUTH_FILE`, and then nothing else: a file named explicitly replaces
//!    the defaults, as it does for podman.
//! 2. `$XDG_RUNTIME_DIR/containers/auth.json`, or `/run/containers/<uid>/auth.json`
//!    when `XDG_RUNTIME_DIR` is unset (system services, root).
//! 3. `$XDG_CONFIG_HOME/containers/auth.json` (`~/.config/containers/auth.json`).
//! 4. `$DOCKER_CONFIG/config.json` (`~/.docker/config.json`).
//!
//! A missing file is skipped; the first file that has a credential for the registry
//! wins; no credential anywhere means anonymous access. A file that exists but cannot
//! be read or parsed is an error rather than a silent fallback to anonymous, which
//! would surface later as a confusing "access denied".
//!
//! Each file is read with `docker_credential::get_credential_from_reader`, which
//! matches `auths` keys by host (`quay.io`, `https://index.docker.io/v1/`) and runs
//! `credHelpers`/`credsStore` helpers. Unlike podman it does not match keys that name
//! a repository (`quay.io/org/app`); write host keys.

use std::fmt;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use docker_credential::{CredentialRetrievalError, DockerCredential};

/// The parts of a process environment that decide where auth files are. Taken as a
/// value so that tests (and callers with their own config) never touch the process
/// environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthEnv {
    /// `REGISTRY_AUTH_FILE`: when set, the only file read.
    pub registry_auth_file: Option<PathBuf>,
    /// `XDG_RUNTIME_DIR`.
    pub xdg_runtime_dir: Option<PathBuf>,
    /// The user id, for `/run/containers/<uid>/auth.json` when `XDG_RUNTIME_DIR` is
    /// unset; `None` skips that file.
    pub uid: Option<u32>,
    /// `XDG_CONFIG_HOME`; `HOME/.config` when unset.
    pub xdg_config_home: Option<PathBuf>,
    /// `DOCKER_CONFIG`, a directory; `HOME/.docker` when unset.
    pub docker_config: Option<PathBuf>,
    /// `HOME`.
    pub home: Option<PathBuf>,
}

impl AuthEnv {
    /// The environment of this process. The uid is the owner of `/proc/self` (the
    /// effective uid), read without `unsafe`.
    pub fn from_process() -> AuthEnv {
        let var = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        AuthEnv {
            registry_auth_file: var("REGISTRY_AUTH_FILE"),
            xdg_runtime_dir: var("XDG_RUNTIME_DIR"),
            uid: current_uid(),
            xdg_config_home: var("XDG_CONFIG_HOME"),
            docker_config: var("DOCKER_CONFIG"),
            home: var("HOME"),
        }
    }

    /// The auth files to search, in order (see the module documentation).
    pub fn auth_files(&self) -> Vec<PathBuf> {
        if let Some(file) = &self.registry_auth_file {
            return vec![file.clone()];
        }
        let mut files = Vec::new();
        match (&self.xdg_runtime_dir, self.uid) {
            (Some(dir), _) => files.push(dir.join("containers/auth.json")),
            (None, Some(uid)) => {
                files.push(PathBuf::from(format!("/run/containers/{uid}/auth.json")))
            }
            (None, None) => {}
        }
        let config_home = self
            .xdg_config_home
            .clone()
            .or_else(|| self.home.as_ref().map(|h| h.join(".config")));
        if let Some(dir) = config_home {
            files.push(dir.join("containers/auth.json"));
        }
        let docker = self
            .docker_config
            .clone()
            .or_else(|| self.home.as_ref().map(|h| h.join(".docker")));
        if let Some(dir) = docker {
            files.push(dir.join("config.json"));
        }
        files
    }
}

#[cfg(unix)]
fn current_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

#[cfg(not(unix))]
fn current_uid() -> Option<u32> {
    None
}

/// Where a [`crate::Registry`] gets its credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthSource {
    /// The containers auth files of this environment (the normal case).
    Files(AuthEnv),
    /// No credentials for any registry.
    Anonymous,
}

impl AuthSource {
    /// The auth files of this process's environment.
    pub fn from_environment() -> AuthSource {
        AuthSource::Files(AuthEnv::from_process())
    }

    /// The credential for `registry` (`host[:port]`, as in an image reference). This
    /// reads files and may run a credential helper: call it off the async runtime.
    pub fn resolve(&self, registry: &str) -> Result<Resolved, AuthError> {
        match self {
            AuthSource::Anonymous => Ok(Resolved::anonymous()),
            AuthSource::Files(env) => resolve_in_files(&env.auth_files(), registry),
        }
    }
}

/// A username and password, or nothing. The password never appears in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    Anonymous,
    Basic { username: String, password: String },
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Anonymous => f.write_str("Anonymous"),
            Credential::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
        }
    }
}

/// A credential and the file it came from (for logs and error messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub credential: Credential,
    /// `None` when anonymous.
    pub file: Option<PathBuf>,
}

impl AuthSource {
    /// Says, for an error message, which credentials `resolved` are and where they
    /// came from, or where none were found. Never includes a secret.
    pub fn describe(&self, resolved: &Resolved) -> String {
        match (&resolved.credential, &resolved.file, self) {
            (Credential::Basic { username, .. }, Some(file), _) => {
                format!(
                    "the credentials of user {username:?} from {}",
                    file.display()
                )
            }
            (Credential::Basic { username, .. }, None, _) => {
                format!("the credentials of user {username:?}")
            }
            (Credential::Anonymous, _, AuthSource::Anonymous) => {
                "no credentials (configured for anonymous access)".to_owned()
            }
            (Credential::Anonymous, _, AuthSource::Files(env)) => {
                let files: Vec<String> = env
                    .auth_files()
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect();
                if files.is_empty() {
                    "no credentials (no auth file locations: neither REGISTRY_AUTH_FILE nor HOME is set)"
                        .to_owned()
                } else {
                    format!(
                        "no credentials (none for this registry in {})",
                        files.join(", ")
                    )
                }
            }
        }
    }
}

impl Resolved {
    fn anonymous() -> Resolved {
        Resolved {
            credential: Credential::Anonymous,
            file: None,
        }
    }
}

/// Why the credentials for a registry could not be read. Each message names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("cannot read registry auth file {path}: {source} (fix its permissions or remove it)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "registry auth file {path} is not valid auth JSON (expected {{\"auths\": {{\"host\": \
         {{\"auth\": \"<base64 user:password>\"}}}}}}); fix it, or remove it and log in again \
         with `podman login`"
    )]
    Malformed { path: PathBuf },
    #[error(
        "the credential for {registry} in {path} cannot be decoded (\"auth\" must be the base64 \
         of \"user:password\"); log in again with `podman login {registry}`"
    )]
    Undecodable { path: PathBuf, registry: String },
    #[error(
        "the \"auth\" field for {registry} in {path} does not match its \"username\" and \
         \"password\" fields; log in again with `podman login {registry}`"
    )]
    Mismatch { path: PathBuf, registry: String },
    #[error("the credential helper for {registry} configured in {path} failed: {detail}")]
    Helper {
        path: PathBuf,
        registry: String,
        detail: String,
    },
    #[error(
        "{path} holds an identity token for {registry}, which Helix cannot use; log in with a \
         username and password (`podman login {registry}`)"
    )]
    IdentityToken { path: PathBuf, registry: String },
}

/// Searches `files` in order for a credential for `registry`.
fn resolve_in_files(files: &[PathBuf], registry: &str) -> Result<Resolved, AuthError> {
    for path in files {
        if let Some(credential) = credential_in_file(path, registry)? {
            return Ok(Resolved {
                credential,
                file: Some(path.clone()),
            });
        }
    }
    Ok(Resolved::anonymous())
}

/// The credential for `registry` in one file; `None` when the file does not exist or
/// has none for it.
fn credential_in_file(path: &Path, registry: &str) -> Result<Option<Credential>, AuthError> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(AuthError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    let owned = |path: &Path| path.to_owned();
    match docker_credential::get_credential_from_reader(BufReader::new(file), registry) {
        Ok(DockerCredential::UsernamePassword(username, password)) => {
            Ok(Some(Credential::Basic { username, password }))
        }
        Ok(DockerCredential::IdentityToken(_)) => Err(AuthError::IdentityToken {
            path: owned(path),
            registry: registry.to_owned(),
        }),
        Err(CredentialRetrievalError::NoCredentialConfigured) => Ok(None),
        Err(
            CredentialRetrievalError::ConfigReadError | CredentialRetrievalError::ConfigNotFound,
        ) => Err(AuthError::Malformed { path: owned(path) }),
        Err(CredentialRetrievalError::CredentialDecodingError) => Err(AuthError::Undecodable {
            path: owned(path),
            registry: registry.to_owned(),
        }),
        Err(CredentialRetrievalError::CredentialMismatchError) => Err(AuthError::Mismatch {
            path: owned(path),
            registry: registry.to_owned(),
        }),
        // A `credsStore` is asked about every registry; like docker, treat its "not
        // found" as "no credential here" rather than an error.
        Err(CredentialRetrievalError::HelperFailure { stdout, .. })
            if stdout.contains("credentials not found") =>
        {
            Ok(None)
        }
        Err(e) => Err(AuthError::Helper {
            path: owned(path),
            registry: registry.to_owned(),
            detail: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests;
