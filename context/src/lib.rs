//! Build contexts: the directory `helix-coordinator build submit --context DIR` sends,
//! packed on the client, uploaded to the coordinator, and unpacked by each agent into
//! a private work directory before it builds.
//!
//! Reading order:
//! - [`ignore`]: [`IgnoreRules`], `.dockerignore` / `.containerignore` rules with
//!   Docker's semantics (moby's `patternmatcher`), and [`ignore::load`], which picks the
//!   file (`.containerignore` first, as podman does).
//! - `pattern` (private): one compiled pattern, Go's `filepath.Match` plus `**`.
//! - [`pack`]: [`pack()`], [`pack_to_file`] and [`Packer`], which write a deterministic
//!   tar (sorted, zeroed times and owners, normalized modes, links stored as links and
//!   never followed) and hash it while writing, giving [`Packed`].
//! - [`unpack`]: [`unpack()`], which refuses any entry that could land outside the
//!   destination (absolute, `..`, through a link, hard links, devices) or break the
//!   [`Limits`], and leaves nothing behind when it refuses; gives [`Unpacked`].
//! - [`digest`]: [`verify_file`] and [`sha256_file`], streaming sha256 of a file.
//! - [`error`]: [`ContextError`], and [`Refusal`] for why an entry was refused.
//!
//! Unix only: links, modes and `O_NOFOLLOW` are what this crate is about.

pub mod digest;
pub mod error;
pub mod ignore;
pub mod pack;
mod pattern;
pub mod unpack;

pub use digest::{sha256_file, verify_file};
pub use error::{ContextError, Refusal};
pub use ignore::{IgnoreError, IgnoreFile, IgnoreRules};
pub use pack::{pack, pack_to_file, Packed, Packer};
pub use unpack::{unpack, Limits, Unpacked};
