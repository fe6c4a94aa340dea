//! Helix's QUIC + mutual-TLS edge, shared by the coordinator (server), its admin CLI
//! (client) and the agent (client). Only this crate and the binaries' connection code
//! know quinn and rustls; everything above speaks [`helix_protocol`] types.
//!
//! Reading order:
//! - [`pki`]: the cluster CA ([`pki::ClusterCa`]), issuing and signing certificates.
//! - [`tls`]: rustls configurations (mutual TLS, optional client auth for joining, the
//!   token-pinned CA verifier) and their quinn wrappers.
//! - [`files`]: key material on disk (0600, atomic replace, the admin bundle).
//! - [`connect`]: dialing the coordinator, and close codes as sentences.
//! - [`framed`]: frames over QUIC streams.

pub mod connect;
pub mod files;
pub mod framed;
pub mod pki;
pub mod tls;
