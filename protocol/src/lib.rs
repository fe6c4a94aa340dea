//! Helix domain types and wire format. This crate does no I/O: it is shared by the
//! coordinator, the agent and the tests, and could be shared by any other client.
//!
//! Reading order:
//! - [`platform`]: [`Platform`], normalized `os/arch[/variant]` and `can_build`.
//! - [`digest`]: [`Digest`], a validated `sha256:` content digest.
//! - [`reference`]: [`ImageRef`], an image reference with Docker's defaulting.
//! - [`ids`]: [`BuildId`], [`JobId`], [`AgentId`].
//! - [`build`]: [`BuildSpec`] (what a user submits) and [`Build`] (one submission).
//! - [`job`]: [`Job`] and its lifecycle [`JobState`], changed only through
//!   [`Job::transition`].
//! - [`index`]: the multi-arch OCI image index assembled from per-platform results.
//! - [`identity`]: who a certificate belongs to (agent or admin), from its SPIFFE id.
//! - [`wire`]: the messages each side sends; [`codec`]: the frame codec that carries them.

pub mod digest;
pub mod ids;
pub mod platform;
pub mod reference;

pub use digest::{Digest, DigestError};
pub use ids::{AgentId, BuildId, JobId};
pub use platform::{Platform, PlatformError};
pub use reference::{ImageRef, ReferenceError};
