//! Helix's access to OCI registries, shared by the agents (which push each platform's
//! image by digest) and the coordinator (which checks those images and pushes the
//! index), so that both read the same registry settings: one auth-file convention and
//! one insecure-registry list.
//!
//! Reading order:
//! - [`auth`]: [`AuthSource`] and [`AuthEnv`], credentials found the way podman finds
//!   them (`REGISTRY_AUTH_FILE`, `containers/auth.json`, `~/.docker/config.json`).
//! - [`client`]: [`Registry`], the client, built from [`RegistryOptions`].
//! - [`layout`]: [`OciLayout`], an OCI image layout directory read and verified.
//! - [`push`]: [`Registry::push_layout`], a layout's image pushed by digest.
//! - [`fetch`]: [`Registry::fetch_manifest`], [`Registry::image_platform`],
//!   [`Registry::manifest_exists`] and [`Registry::push_index`].
//! - [`error`]: [`RegistryError`], with [`RegistryError::is_retryable`] to tell an
//!   infrastructure failure from one that needs a fix.
//!
//! Built on oci-client, whose sharp edges are handled here once: manifests go up as
//! exact bytes with an explicit media type, digests are computed locally, blob
//! uploads stream from disk and reopen the file to retry, and rustls gets its crypto
//! provider before the first client is built.

pub mod auth;
pub mod client;
pub mod error;
pub mod fetch;
pub mod layout;
pub mod push;

pub use auth::{AuthEnv, AuthError, AuthSource, Credential};
pub use client::{install_crypto_provider, Registry, RegistryOptions};
pub use error::RegistryError;
pub use fetch::{FetchedManifest, ImagePlatform};
pub use layout::{LayoutError, OciLayout};
