//! Which coordinators the agent knows, and in which order it dials them.
//!
//! A cluster may run several coordinators on a shared store, one of which leads; the
//! others are standbys that answer the first frame with `Redirect`. The agent knows
//! two lists of addresses:
//! - the *configured* ones (`coordinator`, repeatable; or, when none is configured,
//!   the one recorded at enrolment), which only the operator changes;
//! - the *learned* ones, the leader's `Coordinators` list (and a standby's
//!   `Redirect` list), kept in memory and in `coordinators.json` in the data dir, so
//!   an agent restarted with a single configured address still knows the others. A
//!   learned list replaces the previous learned list, never the configured one.
//!
//! A round of connection attempts ([`Round`]) tries the last leader first, then the
//! configured addresses, then the learned ones, each once ([`rotation`]). A
//! `Redirect` naming a leader puts it at the front of the round at once, at most
//! [`MAX_REDIRECTS`] times per round, so two coordinators that each name the other
//! during a change of leader cannot keep the agent bouncing. When the round is used
//! up, every address failed: the caller backs off, then starts a new round.
//!
//! Addresses are compared as written: `127.0.0.1:7443` and `coord-a:7443` are two
//! entries even if they name the same coordinator, which only costs an extra attempt.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tracing::{info, warn};

use crate::datadir::DataDir;

/// How many redirects one round follows. A real leader change needs one hop (a
/// standby names the leader); a few more cover a redirect that raced with the next
/// change of leader.
pub const MAX_REDIRECTS: u32 = 3;

/// How long a QUIC handshake may take while other coordinators remain to be tried in
/// the round. QUIC hears nothing back from a dead host, so without this a round would
/// first wait out the whole idle timeout on a dead coordinator (after a failover: the
/// old leader, first in every round). A healthy handshake takes a round trip or two;
/// the last address of a round (so a single coordinator) still gets the idle timeout.
pub const HANDSHAKE_PATIENCE: Duration = Duration::from_secs(3);

/// Checks the shape of a coordinator address, `HOST:PORT` (or `[v6]:PORT`), without
/// resolving it. Used for configured addresses and for every address a coordinator
/// sends, so a bad one is dropped instead of being dialed.
pub fn check_address(s: &str) -> Result<(), String> {
    let bad =
        || format!("expected HOST:PORT (e.g. 127.0.0.1:7443 or coord.example.com:7443), got {s:?}");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty()
        || host.chars().any(|c| c.is_whitespace() || c == ',')
        || port.parse::<u16>().is_err()
    {
        return Err(bad());
    }
    Ok(())
}

/// The addresses of one round, in the order they are tried: the last leader, the
/// configured ones, the learned ones; each once (the first occurrence wins).
pub fn rotation(leader: Option<&str>, configured: &[String], learned: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for addr in leader
        .into_iter()
        .chain(configured.iter().map(String::as_str))
        .chain(learned.iter().map(String::as_str))
    {
        if !out.iter().any(|a| a == addr) {
            out.push(addr.to_string());
        }
    }
    out
}

/// `list` without malformed addresses (each dropped with a warning naming `from`)
/// and without repeats.
pub fn valid_addresses(list: Vec<String>, from: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for addr in list {
        match check_address(&addr) {
            Ok(()) if !out.contains(&addr) => out.push(addr),
            Ok(()) => {}
            Err(e) => warn!("ignoring a coordinator address from {from}: {e}"),
        }
    }
    out
}

/// One round of connection attempts over the known addresses.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Round {
    queue: VecDeque<String>,
    redirects: u32,
}

impl Round {
    /// A round over `addresses`, in order (from [`Coordinators::round`]).
    pub fn new(addresses: Vec<String>) -> Round {
        Round {
            queue: addresses.into(),
            redirects: 0,
        }
    }

    /// A standby named `leader`: dial it next (and not again later in this round).
    /// `false` when the round already followed [`MAX_REDIRECTS`] redirects: the
    /// caller goes on with the rest of the round instead.
    pub fn follow(&mut self, leader: &str) -> bool {
        if self.redirects >= MAX_REDIRECTS {
            return false;
        }
        self.redirects += 1;
        self.queue.retain(|a| a != leader);
        self.queue.push_front(leader.to_string());
        true
    }

    /// Whether every address was tried.
    pub fn is_done(&self) -> bool {
        self.queue.is_empty()
    }
}

impl Iterator for Round {
    type Item = String;

    /// The next address to dial; `None` once every address of the round was tried.
    fn next(&mut self) -> Option<String> {
        self.queue.pop_front()
    }
}

/// The coordinators an agent knows (see the module docs), shared by the connection
/// loop, which reads it at each round, and the session, which records what the
/// leader says.
#[derive(Debug)]
pub struct Coordinators {
    configured: Vec<String>,
    known: Mutex<Known>,
    /// Where the learned list is kept; `None`: in memory only.
    dir: Option<DataDir>,
}

#[derive(Debug, Default)]
struct Known {
    /// The coordinator that last welcomed the agent.
    leader: Option<String>,
    learned: Vec<String>,
}

impl Coordinators {
    /// `configured` (not empty for a usable agent) and a `learned` list, kept in
    /// memory only.
    pub fn new(configured: Vec<String>, learned: Vec<String>) -> Coordinators {
        Coordinators {
            configured,
            known: Mutex::new(Known {
                leader: None,
                learned,
            }),
            dir: None,
        }
    }

    /// `configured` and the list learned by earlier runs, from `dir`'s
    /// `coordinators.json`; what is learned from now on is written there. An
    /// unreadable file is not fatal (it is only a hint): it is logged and the next
    /// list from the leader replaces it.
    pub fn load(configured: Vec<String>, dir: &DataDir) -> Coordinators {
        let learned = match dir.load_coordinators() {
            Ok(list) => valid_addresses(list, &dir.coordinators().display().to_string()),
            Err(e) => {
                warn!("ignoring the coordinators learned earlier: {e}");
                Vec::new()
            }
        };
        Coordinators {
            dir: Some(dir.clone()),
            ..Coordinators::new(configured, learned)
        }
    }

    /// The configured addresses.
    pub fn configured(&self) -> &[String] {
        &self.configured
    }

    /// The learned addresses.
    pub fn learned(&self) -> Vec<String> {
        self.lock().learned.clone()
    }

    /// The coordinator that last welcomed the agent, if any.
    pub fn leader(&self) -> Option<String> {
        self.lock().leader.clone()
    }

    /// The order of the next round ([`rotation`]).
    pub fn round(&self) -> Vec<String> {
        let known = self.lock();
        rotation(known.leader.as_deref(), &self.configured, &known.learned)
    }

    /// `addr` welcomed the agent: it leads, and the next round starts with it.
    pub fn set_leader(&self, addr: &str) {
        self.lock().leader = Some(addr.to_string());
    }

    /// A list of coordinators from the cluster replaces the learned list (malformed
    /// entries dropped), and is written to the data dir when it changed. Returns
    /// whether it changed. An empty list says nothing and is ignored.
    pub fn learn(&self, list: Vec<String>, from: &str) -> bool {
        let list = valid_addresses(list, from);
        if list.is_empty() {
            return false;
        }
        {
            let mut known = self.lock();
            if known.learned == list {
                return false;
            }
            known.learned.clone_from(&list);
        }
        info!("the cluster's coordinators: {}", list.join(", "));
        if let Some(dir) = &self.dir {
            // Written outside the lock; only the session learns, one at a time.
            if let Err(e) = dir.save_coordinators(&list) {
                warn!("cannot remember the cluster's coordinators across restarts: {e}");
            }
        }
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        // The state stays consistent even if a holder panicked: every update is one
        // assignment.
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests;
