//! The messages each side sends. Carried by the frame codec in [`crate::codec`].
//!
//! Two connection kinds, both QUIC + TLS 1.3 with ALPN `helix/1`:
//!
//! - **Agent**: the agent opens one bidirectional control stream and sends
//!   [`AgentToCoordinator::Hello`] (or, on a connection without a client certificate,
//!   [`AgentToCoordinator::Join`]); the coordinator answers with
//!   [`CoordinatorToAgent::Welcome`] / [`CoordinatorToAgent::Joined`] or
//!   [`CoordinatorToAgent::Rejected`]. Each running job's log travels on its own
//!   unidirectional stream as [`LogChunk`] frames, so a chatty build never blocks
//!   control messages.
//! - **Admin**: one bidirectional stream per request. The first stream of a
//!   connection carries [`AdminRequest::Hello`]; every later stream carries one request
//!   and one response (or a stream of responses for `--follow`).
//!
//! Compatibility: never reorder or reuse a variant; append new ones at the end. The
//! golden-bytes tests freeze the encoding of one value of every variant.

use std::collections::BTreeMap;

use crate::agent::{AgentAction, AgentInfo};
use crate::build::{Build, BuildSpec, BuildState};
use crate::cache::CacheEntry;
use crate::digest::Digest;
use crate::ids::{AgentId, BuildId, JobId};
use crate::job::{ImageResult, Job, JobFailure};
use crate::platform::Platform;
use crate::reference::ImageRef;
use crate::time::Timestamp;

/// Bumped on any incompatible change to the messages below.
pub const PROTOCOL_VERSION: u32 = 1;

/// The TLS ALPN protocol id of every Helix connection.
pub const ALPN: &[u8] = b"helix/1";

/// QUIC application close codes. A peer that is refused learns why from the code even
/// when it never reads the reason frame.
pub mod close {
    /// A clean close (shutdown, session over).
    pub const NORMAL: u32 = 0;
    /// The peer broke the protocol (bad frame, unexpected message).
    pub const PROTOCOL_ERROR: u32 = 1;
    /// The peer speaks another protocol version.
    pub const VERSION_MISMATCH: u32 = 2;
    /// The peer's certificate does not allow what it asked for.
    pub const UNAUTHORIZED: u32 = 3;
    /// The agent was revoked.
    pub const REVOKED: u32 = 4;
    /// The sender is going away (drain, shutdown).
    pub const GOING_AWAY: u32 = 5;
    /// A newer connection of the same agent replaced this one.
    pub const REPLACED: u32 = 6;
    /// The peer did not read its messages in time; reconnect and resynchronize.
    pub const TOO_SLOW: u32 = 7;
}

/// Why a request was refused. Each code has a matching message for a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RejectCode {
    /// The peer's `protocol_version` is not ours.
    VersionMismatch,
    /// The request needs a client certificate and none was presented.
    Unauthenticated,
    /// The certificate's role does not allow this request.
    WrongRole,
    /// The agent was revoked.
    Revoked,
    /// The join token is unknown, expired or used up.
    InvalidToken,
    /// The request was malformed or out of place.
    BadRequest,
    /// The named agent or build does not exist.
    NotFound,
    /// The coordinator failed to do it (store error, ...).
    Internal,
    /// The request is valid but conflicts with the current state.
    Conflict,
}

// ---------------------------------------------------------------------------------
// Agent protocol
// ---------------------------------------------------------------------------------

/// A job an agent holds when it connects, so the coordinator can re-attach it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeldJob {
    pub job: JobId,
    pub attempt: u32,
    /// `None` while running; the outcome once finished but not yet acknowledged.
    pub outcome: Option<JobOutcome>,
}

/// How a job ended on the agent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum JobOutcome {
    Succeeded(ImageResult),
    Failed(JobFailure),
    Cancelled,
}

/// The source an agent fetches, already pinned.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PinnedSource {
    Git { repo: String, commit: String },
    Context { digest: Digest },
}

/// Everything an agent needs to build one platform of one build.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Assignment {
    pub job: JobId,
    pub attempt: u32,
    pub build: BuildId,
    pub platform: Platform,
    pub source: PinnedSource,
    pub dockerfile: String,
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Where to push; the agent pushes by digest to this repository, with no tag.
    pub destination: ImageRef,
    pub no_cache: bool,
}

/// Agent → coordinator, on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AgentToCoordinator {
    /// First frame of an authenticated session. The coordinator takes the agent's id
    /// from its certificate, never from this message.
    Hello {
        protocol_version: u32,
        agent_version: String,
        platforms: Vec<Platform>,
        capacity: u32,
        labels: BTreeMap<String, String>,
        builder: String,
        /// Jobs the agent still runs or has results for, to re-attach after a loss.
        held: Vec<HeldJob>,
    },
    /// First and only frame of a connection without a client certificate: enrol with
    /// a join token. `csr_der` is a PKCS#10 request for a key that never leaves the agent.
    Join {
        protocol_version: u32,
        token: String,
        name: String,
        csr_der: Vec<u8>,
    },
    /// Ask for a fresh certificate for a new key before the current one expires.
    RenewCertificate { csr_der: Vec<u8> },
    /// The agent took an assignment and will run it.
    Accepted { job: JobId, attempt: u32 },
    /// The job started running on the builder.
    Started { job: JobId, attempt: u32 },
    /// The job ended. The agent keeps it until the coordinator sends
    /// [`CoordinatorToAgent::Ack`].
    Finished {
        job: JobId,
        attempt: u32,
        outcome: JobOutcome,
    },
    /// The agent is shutting down or draining and closes the session on purpose.
    GoingAway { reason: String },
    /// The agent is draining (it got SIGTERM): give it no new work. Its running jobs
    /// go on until they finish or `deadline_secs` pass, when it reports them failed
    /// (infrastructure) so they are requeued elsewhere.
    Draining { deadline_secs: u64 },
    /// First frame of a new bidirectional stream: send me this build context. The
    /// coordinator answers [`CoordinatorToAgent::ContextFollows`] and then exactly
    /// `size` raw bytes, or [`CoordinatorToAgent::Rejected`].
    FetchContext { digest: Digest },
}

/// Coordinator → agent, on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CoordinatorToAgent {
    /// The session is open. `agent_id` is the one in the agent's certificate.
    Welcome {
        protocol_version: u32,
        coordinator_version: String,
        agent_id: AgentId,
    },
    /// The request (or session) is refused; the connection closes after this frame.
    Rejected { code: RejectCode, reason: String },
    /// Enrolment done: the agent stores its certificate and the CA.
    Joined {
        agent_id: AgentId,
        cluster: String,
        cert_pem: String,
        ca_pem: String,
    },
    /// A renewed certificate for the key in the agent's last `RenewCertificate`.
    CertificateRenewed { cert_pem: String },
    /// Run this job.
    Assign(Box<Assignment>),
    /// Stop this job (user cancel, fail-fast, timeout).
    Cancel {
        job: JobId,
        attempt: u32,
        reason: String,
    },
    /// The coordinator has durably recorded the job's outcome; the agent may forget it.
    Ack { job: JobId, attempt: u32 },
    /// Answer to [`AgentToCoordinator::FetchContext`]: `size` raw bytes follow on the
    /// stream; the agent verifies their digest before using them.
    ContextFollows { size: u64 },
    /// This coordinator is a standby: connect to `leader` instead (the leader's
    /// advertised `host:port`; `None` while no coordinator leads, so retry shortly).
    /// `coordinators` are every coordinator of the cluster the sender knows of.
    /// The connection closes after this frame.
    Redirect {
        leader: Option<String>,
        coordinators: Vec<String>,
    },
    /// The current set of coordinators of the cluster (advertised addresses), sent by
    /// the leader after `Welcome` and whenever it changes, so an agent joined to one
    /// coordinator can fail over to the others.
    Coordinators(Vec<String>),
}

/// A piece of a job's build output, on the job's own unidirectional stream. Offsets
/// let a reconnecting agent resume without loss or duplication.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogChunk {
    pub job: JobId,
    pub attempt: u32,
    /// Byte offset of `data` in the job's whole log.
    pub offset: u64,
    pub data: Vec<u8>,
}

// ---------------------------------------------------------------------------------
// Admin protocol
// ---------------------------------------------------------------------------------

/// A build and its jobs, as `build get` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BuildView {
    pub build: Build,
    pub jobs: Vec<Job>,
    pub state: BuildState,
    /// Why the build is where it is (`waiting for an agent that can build linux/arm64`).
    pub notes: Vec<String>,
}

/// Admin CLI → coordinator, one per stream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AdminRequest {
    Hello {
        protocol_version: u32,
        client_version: String,
    },
    ListAgents,
    UpdateAgent {
        agent: AgentId,
        action: AgentAction,
    },
    CreateToken {
        ttl_secs: u64,
        uses: u32,
    },
    SubmitBuild {
        spec: BuildSpec,
    },
    ListBuilds {
        limit: u32,
    },
    GetBuild {
        build: BuildId,
    },
    CancelBuild {
        build: BuildId,
    },
    /// The build's logs, for one platform or all; with `follow`, until the jobs end.
    BuildLogs {
        build: BuildId,
        platform: Option<Platform>,
        follow: bool,
    },
    /// Answer once the build reaches a terminal state.
    WaitBuild {
        build: BuildId,
    },
    /// Does the coordinator hold this context already? (Asked before uploading.)
    HasContext {
        digest: Digest,
    },
    /// Upload a context: exactly `size` raw bytes follow this frame on the stream,
    /// then the stream is finished. Stored only if the bytes hash to `digest`.
    UploadContext {
        digest: Digest,
        size: u64,
    },
    ListCache,
    /// Drop cache entries not used for `older_than_secs` (all when `None`) and
    /// contexts no active build references.
    PruneCache {
        older_than_secs: Option<u64>,
    },
    /// Which coordinators the cluster has and which one leads.
    ClusterStatus,
}

/// Coordinator → admin CLI.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AdminResponse {
    Welcome {
        protocol_version: u32,
        server_version: String,
        cluster: String,
    },
    Error {
        code: RejectCode,
        message: String,
    },
    Agents(Vec<AgentInfo>),
    Agent(AgentInfo),
    Token {
        token: String,
        expires_at: Timestamp,
        uses: u32,
    },
    Build(Box<BuildView>),
    Builds(Vec<BuildView>),
    /// Part of a log; `platform` says which job it came from.
    Log {
        job: JobId,
        platform: Platform,
        data: Vec<u8>,
    },
    /// The end of a log stream.
    LogEnd,
    ContextPresent {
        present: bool,
        max_size: u64,
    },
    ContextStored {
        digest: Digest,
        size: u64,
    },
    Cache(Vec<CacheEntry>),
    Pruned {
        cache_entries: u64,
        contexts: u64,
    },
    /// This coordinator is a standby: send requests to `leader` (`None` while no
    /// coordinator leads: retry shortly).
    Redirect {
        leader: Option<String>,
        coordinators: Vec<String>,
    },
    Cluster(ClusterStatus),
}

/// The coordinators of a cluster and its leader lease, as `cluster status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterStatus {
    /// `redb` (one embedded coordinator) or `postgres`.
    pub store: String,
    /// The current leader term; 0 for the embedded store, which has no lease.
    pub epoch: u64,
    /// The leader's advertised address.
    pub leader: Option<String>,
    /// When the leader's lease runs out unless renewed (database clock).
    pub lease_expires: Option<Timestamp>,
    /// The database's clock when this was read, to judge `lease_expires` and `last_seen`.
    pub now: Timestamp,
    pub coordinators: Vec<CoordinatorInfo>,
}

/// One coordinator process sharing the cluster's store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CoordinatorInfo {
    /// Where agents and admins reach it (`serve --advertise`).
    pub advertise: String,
    /// Holds the leader lease.
    pub leader: bool,
    /// Its last heartbeat in the store (database clock).
    pub last_seen: Timestamp,
    pub version: String,
}
