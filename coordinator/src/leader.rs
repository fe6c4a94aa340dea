//! Leadership among coordinators that share a PostgreSQL store.

use std::sync::Arc;

use helix_protocol::wire::{AdminResponse, ClusterStatus};

use crate::server::Shared;

/// `cluster status`.
pub(crate) async fn cluster_status(shared: &Arc<Shared>) -> AdminResponse {
    let _ = shared;
    AdminResponse::Cluster(ClusterStatus {
        store: "redb".into(),
        epoch: 0,
        leader: None,
        lease_expires: None,
        now: crate::clock::now(),
        coordinators: Vec::new(),
    })
}
