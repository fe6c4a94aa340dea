//! [`Registry`]: the OCI distribution client both sides use, built from
//! [`RegistryOptions`] (the insecure-registry list and where credentials come from).
//! The operations live in [`crate::push`] and [`crate::fetch`].

use std::sync::{Arc, Once};
use std::time::Duration;

use helix_protocol::ImageRef;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;

use crate::auth::{AuthSource, Credential};
use crate::error::RegistryError;

/// How to reach registries. Agents and the coordinator must be given the same values
/// (the same insecure list, the same auth convention), or an image one side pushed is
/// one the other cannot read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryOptions {
    /// Registries spoken to over plain HTTP, as exact `host:port` strings the way
    /// image references spell them (`127.0.0.1:5000`, `registry.lan:5000`). Default:
    /// none, every registry uses HTTPS.
    pub insecure: Vec<String>,
    /// Where credentials come from. Default: the containers auth files of this
    /// process's environment ([`AuthSource::from_environment`]).
    pub auth: AuthSource,
    /// Time allowed to open a connection. Default: 10 s.
    pub connect_timeout: Duration,
    /// Time allowed for any single read from the registry once a request is sent,
    /// including the wait for the answer to an uploaded chunk. Default: 5 min.
    pub read_timeout: Duration,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            insecure: Vec::new(),
            auth: AuthSource::from_environment(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(300),
        }
    }
}

/// An OCI distribution client. Cheap to clone: clones share connections and tokens.
///
/// Credentials are looked up per operation, but oci-client keeps the first
/// credential it was given for a registry for the life of the client: build a new
/// `Registry` to pick up a changed login.
#[derive(Clone)]
pub struct Registry {
    pub(crate) client: oci_client::Client,
    auth: Arc<AuthSource>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// A client for `options`. Fails only if the HTTP client cannot be built (e.g. the
    /// system's trust store cannot be loaded).
    ///
    /// An insecure entry that is not a bare `host[:port]` (a scheme, a path) is refused:
    /// it could never match a registry and the registry would silently get HTTPS.
    pub fn new(options: RegistryOptions) -> Result<Registry, RegistryError> {
        if let Some(bad) = options
            .insecure
            .iter()
            .find(|entry| entry.is_empty() || entry.contains(['/', ' ']))
        {
            return Err(RegistryError::InvalidRequest(format!(
                "invalid insecure registry {bad:?}: write it as host:port, the way image \
                 references spell it (e.g. \"registry.lan:5000\"), without a scheme or path"
            )));
        }
        install_crypto_provider();
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(options.insecure),
            connect_timeout: Some(options.connect_timeout),
            read_timeout: Some(options.read_timeout),
            // Helix always names images by digest; never pick a platform silently.
            platform_resolver: None,
            ..ClientConfig::default()
        };
        // `Client::new` would log and fall back to a default client on error.
        let client = oci_client::Client::try_from(config).map_err(|e| {
            RegistryError::Internal(format!(
                "cannot build the registry HTTP client: {}",
                crate::error::error_chain(&e)
            ))
        })?;
        Ok(Registry {
            client,
            auth: Arc::new(options.auth),
        })
    }

    /// The credential for `registry`, read off the async runtime (it reads files and
    /// may run a credential helper), and a description of it for error messages.
    pub(crate) async fn credential(
        &self,
        registry: &str,
    ) -> Result<(RegistryAuth, String), RegistryError> {
        let source = Arc::clone(&self.auth);
        let host = registry.to_owned();
        let (resolved, origin) = tokio::task::spawn_blocking(move || {
            source.resolve(&host).map(|resolved| {
                let origin = source.describe(&resolved);
                (resolved, origin)
            })
        })
        .await
        .map_err(|e| RegistryError::Internal(format!("credential lookup did not finish: {e}")))??;
        tracing::debug!(registry, credentials = %origin, "resolved registry credentials");
        let auth = match resolved.credential {
            Credential::Anonymous => RegistryAuth::Anonymous,
            Credential::Basic { username, password } => RegistryAuth::Basic(username, password),
        };
        Ok((auth, origin))
    }
}

/// Installs rustls' ring provider as the process default, once.
///
/// oci-client is built with `rustls-tls-no-provider`, so reqwest carries no crypto
/// provider of its own and panics when a client is built without a process default
/// ("No rustls crypto provider is configured"). Helix uses ring everywhere (quinn,
/// rcgen), so it installs ring rather than pulling in aws-lc-rs. If another provider
/// is already the default, that one stays; both are complete.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means a default is already installed, which is all we need.
        let _already_installed = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The oci-client reference for `image`: by digest when it has one, else by tag.
pub(crate) fn reference(image: &ImageRef) -> Reference {
    match (image.digest(), image.tag()) {
        (Some(digest), _) => Reference::with_digest(
            image.registry().to_owned(),
            image.repository().to_owned(),
            digest.to_string(),
        ),
        (None, tag) => Reference::with_tag(
            image.registry().to_owned(),
            image.repository().to_owned(),
            tag.unwrap_or("latest").to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_prefer_the_digest() {
        let digest = helix_protocol::Digest::sha256_of(b"x");
        let tagged: ImageRef = "127.0.0.1:5000/test/app:v1".parse().expect("valid");
        let r = reference(&tagged);
        assert_eq!(r.resolve_registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "test/app");
        assert_eq!(r.tag(), Some("v1"));
        assert_eq!(r.digest(), None);
        let pinned = reference(&tagged.with_digest(digest.clone()));
        assert_eq!(pinned.digest(), Some(digest.as_str()));
        let hub: ImageRef = "alpine".parse().expect("valid");
        assert_eq!(reference(&hub).resolve_registry(), "index.docker.io");
    }

    #[test]
    fn insecure_entries_must_be_bare_hosts() {
        for bad in ["http://reg.lan:5000", "reg.lan:5000/", "", "reg lan"] {
            let err = Registry::new(RegistryOptions {
                insecure: vec![bad.to_owned()],
                auth: AuthSource::Anonymous,
                ..RegistryOptions::default()
            })
            .expect_err("refused");
            assert!(err.to_string().contains("host:port"), "{err}");
        }
    }

    #[test]
    fn a_client_builds_without_a_provider_installed_first() {
        // `Registry::new` installs the provider itself; building twice is fine.
        for _ in 0..2 {
            Registry::new(RegistryOptions {
                auth: AuthSource::Anonymous,
                ..RegistryOptions::default()
            })
            .expect("client builds");
        }
    }
}
