//! The leader lease of coordinators sharing a PostgreSQL store.
//!
//! One row holds (holder, epoch, expiry). The leader renews it every `lease-renew`;
//! a standby takes it once it has expired, incrementing the epoch. Expiry is judged
//! by the database's clock only, so coordinators whose clocks disagree still agree on
//! who leads. Each write of the leader checks, in its own transaction, that the row
//! still names its epoch (see [`super::StoreError::Fenced`]).

use std::time::Duration;

use helix_protocol::wire::{ClusterStatus, CoordinatorInfo};
use helix_protocol::Timestamp;

/// A coordinator standing for election.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Unique per process start, so a restarted coordinator never mistakes its
    /// predecessor's lease for its own.
    pub holder: String,
    /// Where agents and admins reach it.
    pub advertise: String,
    pub version: String,
    pub ttl: Duration,
}

impl Candidate {
    pub fn new(advertise: String, ttl: Duration) -> Candidate {
        Candidate {
            holder: uuid::Uuid::new_v4().to_string(),
            advertise,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ttl,
        }
    }
}

/// The outcome of one [`super::Store::campaign`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// This coordinator leads in `epoch`.
    Leader { epoch: u64 },
    /// Another coordinator leads (its advertised address), or none does right now.
    Follower { leader: Option<String> },
}

/// The lease row and the coordinators that heartbeat recently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseView {
    pub store: &'static str,
    pub epoch: u64,
    /// The holder's advertised address, if its lease has not expired.
    pub leader: Option<String>,
    pub expires_at: Option<Timestamp>,
    /// The database's clock.
    pub now: Timestamp,
    pub coordinators: Vec<CoordinatorInfo>,
}

impl LeaseView {
    /// The embedded store: one coordinator, no lease.
    pub(crate) fn embedded() -> LeaseView {
        LeaseView {
            store: "redb",
            epoch: 0,
            leader: None,
            expires_at: None,
            now: crate::clock::now(),
            coordinators: Vec::new(),
        }
    }

    /// Every coordinator's advertised address, leader first.
    pub fn addresses(&self) -> Vec<String> {
        let mut out: Vec<String> = self.leader.iter().cloned().collect();
        for c in &self.coordinators {
            if !out.contains(&c.advertise) {
                out.push(c.advertise.clone());
            }
        }
        out
    }

    pub fn status(&self) -> ClusterStatus {
        ClusterStatus {
            store: self.store.to_string(),
            epoch: self.epoch,
            leader: self.leader.clone(),
            lease_expires: self.expires_at,
            now: self.now,
            coordinators: self.coordinators.clone(),
        }
    }
}
