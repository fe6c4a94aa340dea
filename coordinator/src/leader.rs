//! Leadership: which coordinator of a cluster serves, and for how long.
//!
//! On the embedded store there is one coordinator and it leads from start to stop.
//! On a shared (PostgreSQL) store every coordinator campaigns every `lease-renew`:
//! the leader renews its lease, a standby takes it once it has expired
//! ([`crate::store::lease`]). Winning starts a *term*: a fresh engine resumes every
//! active build from the store and connections are served. A term ends when
//! - a campaign finds another leader (the lease was lost),
//! - the lease could not be renewed for `lease-ttl` (the database is away or this
//!   process was paused): by then a standby may lead, so stop acting at once,
//! - a write was fenced (another coordinator was elected meanwhile),
//!
//! and the coordinator goes back to standby: its agent and admin connections close,
//! and reconnecting peers are redirected to the new leader.

use std::sync::Arc;
use std::time::{Duration, Instant};

use helix_protocol::wire::{AdminResponse, CoordinatorInfo, CoordinatorToAgent};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::engine::{self, Failure};
use crate::server::{maintenance, term_state, Node, Role, Shared};
use crate::store::{Candidate, Standing};

/// One leader term's tasks.
struct Term {
    epoch: u64,
    /// Ends the term: the engine, maintenance and every connection of the term.
    cancel: CancellationToken,
    /// Cancelled by the engine when a write was fenced.
    lost: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

fn start_term(node: &Arc<Node>, epoch: u64, process: &CancellationToken) -> Term {
    let cancel = process.child_token();
    let lost = CancellationToken::new();
    let (handle, inbox) = engine::channel();
    let shared = term_state(node, handle);
    let failure = Failure {
        fatal: node.fatal.clone(),
        lost: lost.clone(),
    };
    let tasks = vec![
        tokio::spawn(engine::run(
            inbox,
            shared.clone(),
            node.opts.scheduler.clone(),
            cancel.child_token(),
            failure,
        )),
        tokio::spawn(maintenance(shared.clone(), cancel.child_token())),
    ];
    node.role.send_replace(Role::Leader {
        shared,
        term: cancel.clone(),
    });
    node.metrics.leader.set(1);
    node.metrics
        .leader_epoch
        .set(i64::try_from(epoch).unwrap_or(i64::MAX));
    Term {
        epoch,
        cancel,
        lost,
        tasks,
    }
}

/// Stop serving as leader: new connections are redirected, the term's tasks and
/// connections end.
async fn end_term(node: &Arc<Node>, term: Term, leader: Option<String>) {
    node.store.step_down();
    node.metrics.leader.set(0);
    if node.store.is_shared() {
        node.metrics.step_downs.inc();
    }
    node.role.send_replace(Role::Standby { leader });
    term.cancel.cancel();
    for task in term.tasks {
        let _ = task.await;
    }
}

fn set_ready(node: &Node, ready: bool) {
    node.metrics
        .ready
        .store(ready, std::sync::atomic::Ordering::Relaxed);
}

/// Lead or stand by until `cancel`. On the embedded store the term starts before
/// this returns, so the first connection is already served, never redirected.
pub(crate) fn spawn(node: Arc<Node>, cancel: CancellationToken) -> JoinHandle<()> {
    if node.store.is_shared() {
        return tokio::spawn(campaign(node, cancel));
    }
    // The embedded store: one process has the file, and it leads.
    let term = start_term(&node, 0, &cancel);
    set_ready(&node, true);
    tokio::spawn(async move {
        cancel.cancelled().await;
        end_term(&node, term, None).await;
    })
}

/// Campaign for the lease on a shared store until `cancel`.
async fn campaign(node: Arc<Node>, cancel: CancellationToken) {
    let me = Candidate::new(node.advertise.clone(), node.opts.lease.ttl);
    let ttl = node.opts.lease.ttl;
    let renew = node.opts.lease.renew;
    let mut term: Option<Term> = None;
    // When the last successful campaign started: the lease is ours until then + ttl
    // by the database's clock, and no longer by ours.
    let mut renewed_at = Instant::now();
    let mut db_down = false;
    info!(advertise = %me.advertise, holder = %me.holder, "standing for leader");
    loop {
        // Paused or cut off for longer than the lease: a standby may lead by now.
        if term.is_some() && renewed_at.elapsed() >= ttl {
            if let Some(t) = term.take() {
                warn!(
                    epoch = t.epoch,
                    "stepping down: the leader lease was not renewed for {}s and may have passed to a standby",
                    ttl.as_secs()
                );
                end_term(&node, t, None).await;
            }
        }
        let started = Instant::now();
        let standing = node.store.campaign(&me).await;
        if db_down && standing.is_ok() {
            info!("the store is reachable again");
            db_down = false;
        }
        match standing {
            Ok(Standing::Leader { epoch }) => {
                renewed_at = started;
                match &term {
                    Some(t) if t.epoch == epoch => {}
                    _ => {
                        if let Some(t) = term.take() {
                            end_term(&node, t, None).await;
                        }
                        info!(
                            epoch,
                            "elected leader; resuming active builds from the store"
                        );
                        term = Some(start_term(&node, epoch, &cancel));
                    }
                }
                set_ready(&node, true);
            }
            Ok(Standing::Follower { leader }) => {
                if let Some(t) = term.take() {
                    warn!(
                        epoch = t.epoch,
                        leader = leader.as_deref().unwrap_or("none"),
                        "stepping down: another coordinator holds the leader lease"
                    );
                    end_term(&node, t, leader.clone()).await;
                } else {
                    node.role.send_if_modified(|role| match role {
                        Role::Standby { leader: old } if *old != leader => {
                            if let Some(l) = &leader {
                                info!(leader = %l, "standing by");
                            }
                            *old = leader.clone();
                            true
                        }
                        _ => false,
                    });
                }
                set_ready(&node, leader.is_some());
            }
            Err(e) => {
                if !db_down {
                    warn!("cannot reach the store to renew the leader lease: {e}");
                    db_down = true;
                }
                set_ready(&node, false);
            }
        }
        if !db_down {
            refresh_coordinators(&node).await;
        }
        let lost = term.as_ref().map(|t| t.lost.clone());
        tokio::select! {
            () = cancel.cancelled() => break,
            () = async {
                match &lost {
                    Some(l) => l.cancelled().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(t) = term.take() {
                    warn!(epoch = t.epoch, "stepping down: a write was fenced by a newer leader");
                    end_term(&node, t, None).await;
                }
            }
            () = tokio::time::sleep(renew) => {}
        }
    }
    if let Some(t) = term.take() {
        end_term(&node, t, None).await;
    }
    // Hand over at once instead of making the standbys wait out the lease.
    match tokio::time::timeout(Duration::from_secs(2), node.store.resign(&me)).await {
        Ok(Ok(())) => info!("gave up the leader lease"),
        Ok(Err(e)) => warn!("could not give up the leader lease: {e}"),
        Err(_) => warn!("could not give up the leader lease: the store did not answer"),
    }
}

/// Refresh the set of coordinators; tell connected agents when it changed.
async fn refresh_coordinators(node: &Arc<Node>) {
    let Ok(view) = node.store.lease().await else {
        return;
    };
    let addresses = view.addresses();
    let changed = node.coordinators.send_if_modified(|current| {
        if *current != addresses {
            current.clone_from(&addresses);
            true
        } else {
            false
        }
    });
    if !changed {
        return;
    }
    if let Role::Leader { shared, .. } = node.role.borrow().clone() {
        let sessions: Vec<_> = shared
            .sessions
            .lock()
            .expect("sessions lock poisoned")
            .values()
            .map(|h| h.tx.clone())
            .collect();
        for tx in sessions {
            let _ = tx.try_send(CoordinatorToAgent::Coordinators(addresses.clone()));
        }
    }
}

/// `cluster status`: the lease and the coordinators, as the store has them.
pub(crate) async fn cluster_status(shared: &Arc<Shared>) -> AdminResponse {
    match shared.store.lease().await {
        Ok(view) => {
            let mut status = view.status();
            if !shared.store.is_shared() {
                status.leader = Some(shared.advertise.clone());
                status.coordinators = vec![CoordinatorInfo {
                    advertise: shared.advertise.clone(),
                    leader: true,
                    last_seen: status.now,
                    version: env!("CARGO_PKG_VERSION").to_string(),
                }];
            }
            AdminResponse::Cluster(status)
        }
        Err(e) => AdminResponse::Error {
            code: helix_protocol::wire::RejectCode::Internal,
            message: format!("cannot read the cluster status from the store: {e}"),
        },
    }
}
