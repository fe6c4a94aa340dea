//! When each build's events happened, as the benchmark saw them, and percentiles.
//!
//! Every simulated agent and the submitter write into one [`Recorder`] keyed by build
//! id: the submitter learns a build's id only from the submit reply, which can arrive
//! after the job's `Assign` did, so events are matched afterwards.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use helix_protocol::BuildId;
use tokio::sync::watch;

/// What happened to one build, when.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Times {
    /// Just before the submit request was sent.
    pub(crate) submit: Option<Instant>,
    /// The job's `Assign` arrived at a simulated agent.
    pub(crate) assign: Option<Instant>,
    /// The agent had written `Accepted`, `Started` and `Finished`.
    pub(crate) finished: Option<Instant>,
    /// The coordinator's `Ack` of the `Finished` arrived (the outcome is committed).
    pub(crate) ack: Option<Instant>,
}

/// Shared by the submitter and every simulated agent.
#[derive(Debug)]
pub(crate) struct Recorder {
    builds: Mutex<HashMap<BuildId, Times>>,
    acks: watch::Sender<u64>,
    pub(crate) cancels: AtomicU64,
    pub(crate) unexpected: AtomicU64,
    pub(crate) sessions_lost: AtomicU64,
}

impl Recorder {
    pub(crate) fn new() -> Recorder {
        Recorder {
            builds: Mutex::new(HashMap::new()),
            acks: watch::Sender::new(0),
            cancels: AtomicU64::new(0),
            unexpected: AtomicU64::new(0),
            sessions_lost: AtomicU64::new(0),
        }
    }

    fn with(&self, build: BuildId, f: impl FnOnce(&mut Times)) {
        let mut builds = self
            .builds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(builds.entry(build).or_default());
    }

    pub(crate) fn submitted(&self, build: BuildId, at: Instant) {
        self.with(build, |t| t.submit = Some(at));
    }

    pub(crate) fn assigned(&self, build: BuildId, at: Instant) {
        self.with(build, |t| t.assign = Some(at));
    }

    pub(crate) fn finished(&self, build: BuildId, at: Instant) {
        self.with(build, |t| t.finished = Some(at));
    }

    pub(crate) fn acked(&self, build: BuildId, at: Instant) {
        self.with(build, |t| t.ack = Some(at));
        self.acks.send_modify(|n| *n += 1);
    }

    /// How many `Ack`s have arrived so far.
    pub(crate) fn ack_count(&self) -> u64 {
        *self.acks.borrow()
    }

    /// Wait until at least `n` `Ack`s have arrived; false on timeout.
    pub(crate) async fn wait_acks(&self, n: u64, timeout: Duration) -> bool {
        let mut rx = self.acks.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|count| *count >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The times of these builds (a build never seen has all `None`).
    pub(crate) fn times(&self, ids: &[BuildId]) -> Vec<Times> {
        let builds = self
            .builds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ids.iter()
            .map(|id| builds.get(id).copied().unwrap_or_default())
            .collect()
    }
}

/// Milliseconds from `from` to `to` of each build that has both.
pub(crate) fn spans_ms(
    times: &[Times],
    from: impl Fn(&Times) -> Option<Instant>,
    to: impl Fn(&Times) -> Option<Instant>,
) -> Vec<f64> {
    times
        .iter()
        .filter_map(|t| Some(to(t)?.saturating_duration_since(from(t)?).as_secs_f64() * 1e3))
        .collect()
}

/// Percentiles of a sample, in its unit.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Summary {
    pub(crate) count: usize,
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
    pub(crate) mean: f64,
}

impl Summary {
    /// Nearest-rank percentiles (p99 of 200 samples is the 198th smallest).
    pub(crate) fn of(mut sample: Vec<f64>) -> Summary {
        if sample.is_empty() {
            return Summary::default();
        }
        sample.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let i = (p / 100.0 * sample.len() as f64).ceil() as usize;
            sample[i.clamp(1, sample.len()) - 1]
        };
        Summary {
            count: sample.len(),
            p50: rank(50.0),
            p90: rank(90.0),
            p99: rank(99.0),
            max: sample[sample.len() - 1],
            mean: sample.iter().sum::<f64>() / sample.len() as f64,
        }
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "p50": round(self.p50),
            "p90": round(self.p90),
            "p99": round(self.p99),
            "max": round(self.max),
            "mean": round(self.mean),
            "count": self.count,
        })
    }
}

/// Three decimals are plenty for milliseconds, seconds and MiB.
pub(crate) fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
