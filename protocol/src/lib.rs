//! Helix domain types and wire format. This crate does no I/O and never reads the
//! clock: it is shared by the coordinator, the agent and the tests.
//!
//! Reading order:
//! - [`platform`]: [`Platform`], normalized `os/arch[/variant]` and `can_build`.
//! - [`digest`]: [`Digest`], a validated `sha256:` content digest.
//! - [`reference`]: [`ImageRef`], an image reference with Docker's defaulting.
//! - [`ids`]: [`BuildId`], [`JobId`], [`AgentId`]; [`time`]: [`Timestamp`].
//! - [`build`]: [`BuildSpec`] (what a user submits) and [`Build`] (one submission).
//! - [`job`]: [`Job`] and its lifecycle [`JobState`], changed only through
//!   [`Job::transition`].
//! - [`cache`]: the result cache's key ([`cache::cache_key`]) and entries.
//! - [`index`]: [`ImageIndex`], the multi-arch OCI image index.
//! - [`agent`]: [`AgentInfo`] and [`AgentState`], what the coordinator knows of an agent.
//! - [`identity`]: [`Identity`], who a certificate belongs to (agent or admin).
//! - [`token`]: [`JoinToken`], `helix1.<ca-hash>.<secret>`, what an agent joins with.
//! - [`wire`]: the messages each side sends; [`codec`]: the frame codec that carries them.

pub mod agent;
pub mod build;
pub mod cache;
pub mod codec;
pub mod digest;
pub mod identity;
pub mod ids;
pub mod index;
pub mod job;
pub mod platform;
pub mod reference;
pub mod time;
pub mod token;
pub mod wire;

pub use agent::{AgentAction, AgentInfo, AgentState};
pub use build::{Build, BuildPhase, BuildSpec, BuildState, Source, SpecError};
pub use codec::{FrameError, MAX_FRAME_LEN};
pub use digest::{Digest, DigestError};
pub use identity::{Identity, IdentityError};
pub use ids::{AgentId, BuildId, JobId};
pub use index::{ImageIndex, IndexError};
pub use job::{FailureKind, ImageResult, Job, JobEvent, JobFailure, JobState, TransitionError};
pub use platform::{Platform, PlatformError};
pub use reference::{ImageRef, ReferenceError};
pub use time::Timestamp;
pub use token::JoinToken;
