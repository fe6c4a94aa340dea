//! [`RegistryError`]: what went wrong talking to a registry, sorted so that a caller
//! can tell an infrastructure failure (retry, possibly elsewhere) from a problem that
//! the same inputs would hit again.
//!
//! oci-client reports failures through one wide enum whose variants say more about
//! where in the client the error arose than about what the registry meant; the
//! mapping to our variants (`from_oci`) lives here and only here.

use oci_client::errors::{OciDistributionError, OciErrorCode};

use crate::auth::AuthError;
use crate::layout::LayoutError;

/// A failed registry operation. Every message names the registry and what was being
/// done, and says what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The registry could not be reached or the connection broke: connection refused,
    /// DNS, TLS handshake, timeout, reset. Retryable.
    #[error(
        "cannot reach registry {registry} ({action}): {detail} (check that the registry is up and \
         reachable from this host; a registry that serves plain HTTP must be listed as insecure, \
         as \"{registry}\")"
    )]
    Unreachable {
        registry: String,
        action: String,
        detail: String,
    },
    /// The registry answered with a server error, 408 or 429. Retryable.
    #[error(
        "registry {registry} is unavailable ({action}): HTTP {status}: {detail} (try again later)"
    )]
    Unavailable {
        registry: String,
        action: String,
        status: u16,
        detail: String,
    },
    /// The registry refused our credentials, or we had none and it wants some.
    #[error(
        "registry {registry} refused access ({action}): {detail}{} (log in on this host with \
         `podman login {registry}`, or point REGISTRY_AUTH_FILE at an auth file that has \
         credentials for it)",
        used_credentials(.credentials)
    )]
    AuthRefused {
        registry: String,
        action: String,
        detail: String,
        /// Which credentials were presented and where they came from; empty when
        /// unknown.
        credentials: String,
    },
    /// The manifest, blob or repository does not exist.
    #[error("{what} not found in registry {registry}")]
    NotFound { registry: String, what: String },
    /// Content did not hash to the digest it was asked for: the registry (or something
    /// between it and us) served other bytes.
    #[error("{what}: expected digest {expected}, got {actual} (the registry served different content than was asked for)")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    /// The local OCI layout is missing, malformed or corrupt.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A manifest is of a kind this operation does not handle (an index where an image
    /// manifest was expected, an unknown type).
    #[error("{what} has media type {media_type:?}, expected {expected}")]
    UnsupportedMediaType {
        what: String,
        media_type: String,
        expected: String,
    },
    /// The credentials could not be read from the auth files.
    #[error(transparent)]
    Credentials(#[from] AuthError),
    /// The registry refused the request for another reason (invalid manifest, invalid
    /// name, unexpected answer), or its answer made no sense.
    #[error("registry {registry} rejected the request ({action}): {detail}")]
    Rejected {
        registry: String,
        action: String,
        detail: String,
    },
    /// The caller asked for something that cannot be done as asked (e.g. fetching by
    /// digest with a reference that has none).
    #[error("{0}")]
    InvalidRequest(String),
    /// The client could not be set up, or a helper task died.
    #[error("registry client failure: {0}")]
    Internal(String),
}

/// What [`RegistryError::AuthRefused`] says about credentials until the operation that
/// resolved them fills it in: nothing.
const UNKNOWN_CREDENTIALS: &str = "";

fn used_credentials(credentials: &str) -> String {
    if credentials.is_empty() {
        String::new()
    } else {
        format!("; this host used {credentials}")
    }
}

impl RegistryError {
    /// Records which credentials were presented, for an [`RegistryError::AuthRefused`].
    pub(crate) fn with_credentials(mut self, origin: &str) -> RegistryError {
        if let RegistryError::AuthRefused { credentials, .. } = &mut self {
            origin.clone_into(credentials);
        }
        self
    }

    /// Whether trying again, here or on another host, may succeed without anyone
    /// changing anything: the registry was unreachable or unavailable, or the local
    /// disk failed while reading the layout. Refused credentials, missing content,
    /// digest mismatches, corrupt layouts and rejected manifests are not: they need a
    /// fix (or a rebuild) first.
    pub fn is_retryable(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. } | RegistryError::Unavailable { .. } => true,
            RegistryError::Layout(e) => e.is_retryable(),
            RegistryError::AuthRefused { .. }
            | RegistryError::NotFound { .. }
            | RegistryError::DigestMismatch { .. }
            | RegistryError::UnsupportedMediaType { .. }
            | RegistryError::Credentials(_)
            | RegistryError::Rejected { .. }
            | RegistryError::InvalidRequest(_)
            | RegistryError::Internal(_) => false,
        }
    }
}

/// Maps an oci-client error to ours. `registry` is the host, `action` says what was
/// being done ("pushing blob sha256:... to host/repo"), and `what` names the object
/// for not-found and digest errors.
pub(crate) fn from_oci(
    err: OciDistributionError,
    registry: &str,
    action: &str,
    what: &str,
) -> RegistryError {
    let registry = registry.to_owned();
    let action_s = action.to_owned();
    match err {
        OciDistributionError::RequestError(e) => {
            if let Some(status) = e.status() {
                return from_status(status.as_u16(), registry, action, what, error_chain(&e));
            }
            if e.is_decode() || e.is_redirect() || e.is_builder() {
                RegistryError::Rejected {
                    registry,
                    action: action_s,
                    detail: error_chain(&e),
                }
            } else {
                // Connect, timeout, request and body errors: the transport failed.
                RegistryError::Unreachable {
                    registry,
                    action: action_s,
                    detail: error_chain(&e),
                }
            }
        }
        OciDistributionError::IoError(e) => match layout_error_in(e) {
            Ok(layout) => RegistryError::Layout(layout),
            // Outside our own blob streams, I/O errors come from reading responses.
            Err(e) => RegistryError::Unreachable {
                registry,
                action: action_s,
                detail: error_chain(&e),
            },
        },
        OciDistributionError::AuthenticationFailure(reason) => RegistryError::AuthRefused {
            registry,
            action: action_s,
            detail: format!(
                "the token service refused the credentials: {}",
                reason.trim()
            ),
            credentials: UNKNOWN_CREDENTIALS.to_owned(),
        },
        OciDistributionError::UnauthorizedError { url } => RegistryError::AuthRefused {
            registry,
            action: action_s,
            detail: format!("HTTP 401 for {url}"),
            credentials: UNKNOWN_CREDENTIALS.to_owned(),
        },
        OciDistributionError::ServerError { code, message, .. } => {
            from_status(code, registry, action, what, message.trim().to_owned())
        }
        OciDistributionError::RegistryError { envelope, .. } => {
            let detail = envelope
                .errors
                .iter()
                .map(|e| {
                    if e.message.is_empty() {
                        format!("{:?}", e.code)
                    } else {
                        format!("{:?}: {}", e.code, e.message)
                    }
                })
                .collect::<Vec<_>>()
                .join("; ");
            let first = envelope.errors.first().map(|e| &e.code);
            match first {
                Some(OciErrorCode::Unauthorized | OciErrorCode::Denied) => {
                    RegistryError::AuthRefused {
                        registry,
                        action: action_s,
                        detail,
                        credentials: UNKNOWN_CREDENTIALS.to_owned(),
                    }
                }
                Some(
                    OciErrorCode::ManifestUnknown
                    | OciErrorCode::BlobUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::NotFound,
                ) => RegistryError::NotFound {
                    registry,
                    what: what.to_owned(),
                },
                Some(OciErrorCode::Toomanyrequests) => RegistryError::Unavailable {
                    registry,
                    action: action_s,
                    status: 429,
                    detail,
                },
                _ => RegistryError::Rejected {
                    registry,
                    action: action_s,
                    detail,
                },
            }
        }
        OciDistributionError::DigestError(oci_client::errors::DigestError::VerificationError {
            expected,
            actual,
        }) => RegistryError::DigestMismatch {
            what: what.to_owned(),
            expected,
            actual,
        },
        OciDistributionError::UnsupportedMediaTypeError(media_type) => {
            RegistryError::UnsupportedMediaType {
                what: what.to_owned(),
                media_type,
                expected: "an OCI or Docker schema 2 manifest or index".to_owned(),
            }
        }
        other => RegistryError::Rejected {
            registry,
            action: action_s,
            detail: error_chain(&other),
        },
    }
}

/// Sorts an HTTP error status into our variants.
fn from_status(
    status: u16,
    registry: String,
    action: &str,
    what: &str,
    detail: String,
) -> RegistryError {
    let action = action.to_owned();
    match status {
        401 | 403 => RegistryError::AuthRefused {
            registry,
            action,
            detail: format!("HTTP {status}: {detail}"),
            credentials: UNKNOWN_CREDENTIALS.to_owned(),
        },
        404 => RegistryError::NotFound {
            registry,
            what: what.to_owned(),
        },
        408 | 429 | 500..=599 => RegistryError::Unavailable {
            registry,
            action,
            status,
            detail,
        },
        _ => RegistryError::Rejected {
            registry,
            action,
            detail: format!("HTTP {status}: {detail}"),
        },
    }
}

/// Takes a [`LayoutError`] back out of the `io::Error` it travelled in through
/// oci-client's blob stream (whose item error type is oci-client's own).
fn layout_error_in(e: std::io::Error) -> Result<LayoutError, std::io::Error> {
    if e.get_ref().is_some_and(|inner| inner.is::<LayoutError>()) {
        let kind = e.kind();
        match e.into_inner().map(|inner| inner.downcast::<LayoutError>()) {
            Some(Ok(layout)) => Ok(*layout),
            // Unreachable after the `is` check; keep a usable error anyway.
            Some(Err(inner)) => Err(std::io::Error::new(kind, inner)),
            None => Err(std::io::Error::from(kind)),
        }
    } else {
        Err(e)
    }
}

/// An error and its sources, `outer: inner: innermost`, so that "error sending
/// request" comes with its reason ("Connection refused").
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        // Some errors repeat their source's text in their own; skip exact repeats.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(err: OciDistributionError) -> RegistryError {
        from_oci(err, "reg.example:5000", "testing", "manifest sha256:x")
    }

    #[test]
    fn statuses_sort_into_retryable_and_not() {
        let server = |code| OciDistributionError::ServerError {
            code,
            url: "http://reg.example:5000/v2/".into(),
            message: "boom".into(),
        };
        for (code, retryable) in [
            (500, true),
            (502, true),
            (503, true),
            (429, true),
            (408, true),
            (400, false),
            (401, false),
            (403, false),
            (404, false),
            (405, false),
        ] {
            assert_eq!(map(server(code)).is_retryable(), retryable, "HTTP {code}");
        }
        assert!(matches!(
            map(server(401)),
            RegistryError::AuthRefused { .. }
        ));
        assert!(matches!(map(server(404)), RegistryError::NotFound { .. }));
    }

    #[test]
    fn envelope_codes_are_sorted() {
        let envelope = |code: &str| OciDistributionError::RegistryError {
            envelope: serde_json::from_str(&format!(
                r#"{{"errors":[{{"code":"{code}","message":"m"}}]}}"#
            ))
            .expect("valid envelope"),
            url: "u".into(),
        };
        assert!(matches!(
            map(envelope("MANIFEST_UNKNOWN")),
            RegistryError::NotFound { .. }
        ));
        assert!(matches!(
            map(envelope("DENIED")),
            RegistryError::AuthRefused { .. }
        ));
        assert!(map(envelope("TOOMANYREQUESTS")).is_retryable());
        let invalid = map(envelope("MANIFEST_INVALID"));
        assert!(matches!(invalid, RegistryError::Rejected { .. }));
        assert!(
            invalid.to_string().contains("ManifestInvalid: m"),
            "{invalid}"
        );
    }

    #[test]
    fn a_layout_error_survives_the_trip_through_io_error() {
        let layout = LayoutError::Corrupt {
            dir: "/l".into(),
            digest: "sha256:ab".into(),
            reason: "is 3 bytes, expected 4".into(),
        };
        let err = map(OciDistributionError::IoError(std::io::Error::other(layout)));
        assert!(matches!(
            err,
            RegistryError::Layout(LayoutError::Corrupt { .. })
        ));
        assert!(!err.is_retryable());
        let io = map(OciDistributionError::IoError(std::io::Error::other(
            "reset",
        )));
        assert!(matches!(io, RegistryError::Unreachable { .. }));
        assert!(io.is_retryable());
    }

    #[test]
    fn digest_mismatch_names_both_digests() {
        let err = map(OciDistributionError::DigestError(
            oci_client::errors::DigestError::VerificationError {
                expected: "sha256:aa".into(),
                actual: "sha256:bb".into(),
            },
        ));
        let msg = err.to_string();
        assert!(
            msg.contains("sha256:aa") && msg.contains("sha256:bb"),
            "{msg}"
        );
        assert!(!err.is_retryable());
    }
}
