//! What the agent tells its service manager: [`ServiceEvent`]s through a
//! [`ServiceManager`]. [`Systemd`] speaks the notify protocol (`READY=1`,
//! `STOPPING=1`, `STATUS=...` on `$NOTIFY_SOCKET`) and does nothing when the agent was
//! not started by systemd with `Type=notify`; [`status_line`] is the `STATUS=` text a
//! person sees in `systemctl status helix-agent`.

use std::fmt;
use std::sync::Mutex;

use tracing::{debug, warn};

/// Something the service manager should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceEvent {
    /// Start-up is done: the agent is enrolled, its data dir locked, its builder
    /// present, and its session loop running (connected or not).
    Ready,
    /// A drain or shutdown began.
    Stopping,
    /// A one-line status for people.
    Status(String),
}

/// Where [`ServiceEvent`]s go.
pub trait ServiceManager: Send + Sync + fmt::Debug {
    fn tell(&self, event: ServiceEvent);
}

/// The systemd notify protocol; a no-op without `NOTIFY_SOCKET`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Systemd;

impl ServiceManager for Systemd {
    fn tell(&self, event: ServiceEvent) {
        let sent = match &event {
            ServiceEvent::Ready => sd_notify::notify(&[sd_notify::NotifyState::Ready]),
            ServiceEvent::Stopping => sd_notify::notify(&[sd_notify::NotifyState::Stopping]),
            ServiceEvent::Status(line) => {
                sd_notify::notify(&[sd_notify::NotifyState::Status(&line.replace('\n', " "))])
            }
        };
        match sent {
            Ok(()) => debug!(?event, "told the service manager"),
            Err(e) => warn!("cannot notify the service manager: {e}"),
        }
    }
}

/// Keeps every event, for tests.
#[derive(Debug, Default)]
pub struct Recorder {
    events: Mutex<Vec<ServiceEvent>>,
}

impl Recorder {
    /// The events told so far, in order.
    pub fn events(&self) -> Vec<ServiceEvent> {
        self.events.lock().expect("recorder lock").clone()
    }
}

impl ServiceManager for Recorder {
    fn tell(&self, event: ServiceEvent) {
        self.events.lock().expect("recorder lock").push(event);
    }
}

/// Where the agent is in its life, for the status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Enrolling with the join token, `attempt` (from 1).
    Enrolling { attempt: u32 },
    /// Opening a session, `attempt` since the last one that was up (1: the first).
    Connecting { attempt: u32 },
    /// A session is up.
    Connected,
    /// Draining: no new jobs; the running ones finish.
    Draining,
}

/// The `STATUS=` line: where the agent is and what it runs.
pub fn status_line(coordinator: &str, phase: Phase, running: usize, unacked: usize) -> String {
    let jobs = |n: usize| format!("{n} job{}", if n == 1 { "" } else { "s" });
    match phase {
        Phase::Enrolling { attempt: 1 } => format!("enrolling with {coordinator}"),
        Phase::Enrolling { attempt } => {
            format!("enrolling with {coordinator} (attempt {attempt})")
        }
        Phase::Connected if running == 0 => format!("connected to {coordinator}, idle"),
        Phase::Connected => format!("connected to {coordinator}, running {}", jobs(running)),
        Phase::Connecting { attempt } => {
            let head = if attempt <= 1 {
                format!("connecting to {coordinator}")
            } else {
                format!("reconnecting to {coordinator} (attempt {attempt})")
            };
            if running == 0 {
                head
            } else {
                format!("{head}, running {}", jobs(running))
            }
        }
        Phase::Draining if running > 0 => format!("draining: {} running", jobs(running)),
        Phase::Draining if unacked > 0 => format!(
            "draining: waiting for {coordinator} to record {} result{}",
            unacked,
            if unacked == 1 { "" } else { "s" }
        ),
        Phase::Draining => "draining: no jobs running".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_say_where_the_agent_is() {
        let c = "coord:7443";
        for (phase, running, unacked, want) in [
            (
                Phase::Enrolling { attempt: 1 },
                0,
                0,
                "enrolling with coord:7443",
            ),
            (
                Phase::Enrolling { attempt: 4 },
                0,
                0,
                "enrolling with coord:7443 (attempt 4)",
            ),
            (
                Phase::Connecting { attempt: 1 },
                0,
                0,
                "connecting to coord:7443",
            ),
            (
                Phase::Connecting { attempt: 3 },
                0,
                0,
                "reconnecting to coord:7443 (attempt 3)",
            ),
            (
                Phase::Connecting { attempt: 3 },
                2,
                0,
                "reconnecting to coord:7443 (attempt 3), running 2 jobs",
            ),
            (Phase::Connected, 0, 0, "connected to coord:7443, idle"),
            (
                Phase::Connected,
                1,
                0,
                "connected to coord:7443, running 1 job",
            ),
            (Phase::Draining, 1, 0, "draining: 1 job running"),
            (
                Phase::Draining,
                0,
                2,
                "draining: waiting for coord:7443 to record 2 results",
            ),
            (Phase::Draining, 0, 0, "draining: no jobs running"),
        ] {
            assert_eq!(status_line(c, phase, running, unacked), want, "{phase:?}");
        }
    }

    #[test]
    fn systemd_is_a_no_op_without_a_socket() {
        // NOTIFY_SOCKET is not set under `cargo test`: nothing happens, nothing fails.
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            Systemd.tell(ServiceEvent::Ready);
            Systemd.tell(ServiceEvent::Status("x".into()));
        }
        let r = Recorder::default();
        r.tell(ServiceEvent::Ready);
        r.tell(ServiceEvent::Stopping);
        assert_eq!(r.events(), [ServiceEvent::Ready, ServiceEvent::Stopping]);
    }
}
