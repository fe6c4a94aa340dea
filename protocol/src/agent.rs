//! What the coordinator knows about an enrolled agent.

use std::collections::BTreeMap;

use crate::ids::AgentId;
use crate::platform::Platform;
use crate::time::Timestamp;

/// An operator's decision about an agent. Connection is tracked separately: an agent
/// can be cordoned while offline, and comes back cordoned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum AgentState {
    /// Gets new work when connected.
    Ready,
    /// Gets no new work; running jobs go on.
    Cordoned,
    /// Gets no new work; reported done once its running jobs have finished.
    Draining,
    /// Refused at connect, forever. Its certificate is dead to the cluster.
    Revoked,
}

impl AgentState {
    pub fn name(self) -> &'static str {
        match self {
            AgentState::Ready => "ready",
            AgentState::Cordoned => "cordoned",
            AgentState::Draining => "draining",
            AgentState::Revoked => "revoked",
        }
    }
    /// Whether the scheduler may give this agent new work.
    pub fn is_schedulable(self) -> bool {
        matches!(self, AgentState::Ready)
    }
}

impl std::fmt::Display for AgentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An operator's command on an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AgentAction {
    Cordon,
    Uncordon,
    Drain,
    Revoke,
}

/// One row of `agents list`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentInfo {
    pub id: AgentId,
    pub name: String,
    pub platforms: Vec<Platform>,
    pub capacity: u32,
    pub labels: BTreeMap<String, String>,
    /// The agent's software version, from its last `Hello`.
    pub version: String,
    /// The builder backend it runs (`buildah`, `podman`, ...).
    pub builder: String,
    pub state: AgentState,
    pub connected: bool,
    /// The last time it connected or was seen connected.
    pub last_seen: Option<Timestamp>,
    pub enrolled_at: Timestamp,
    /// Jobs it holds now.
    pub running_jobs: u32,
}
