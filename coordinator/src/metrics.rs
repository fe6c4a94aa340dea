//! Prometheus metrics and the health endpoints (`/metrics`, `/healthz`, `/readyz`) on
//! a separate listener (loopback by default).
//!
//! Gauges that describe the present (jobs and agents by state, slots, unplaceable
//! jobs) are computed from the scheduler at scrape time, so they can never drift from
//! the truth; counters and histograms are observed as things happen.

use std::sync::atomic::AtomicBool;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatePlatform {
    pub state: String,
    pub platform: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlatformLabel {
    pub platform: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultPlatform {
    pub result: String,
    pub platform: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultReason {
    pub result: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub version: String,
}

/// Seconds, from 10 ms to about 3 hours.
#[derive(Clone, Debug)]
pub struct SecondsBuckets;

impl MetricConstructor<Histogram> for SecondsBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.01, 2.5, 15))
    }
}

/// Every metric the coordinator exports.
#[derive(Debug)]
pub struct Metrics {
    registry: std::sync::Mutex<Registry>,
    pub jobs: Family<StatePlatform, Gauge>,
    pub agents: Family<StatePlatform, Gauge>,
    pub slots_total: Gauge,
    pub slots_used: Gauge,
    pub jobs_unplaceable: Family<PlatformLabel, Gauge>,
    pub queue_wait: Histogram,
    pub job_duration: Family<ResultPlatform, Histogram, SecondsBuckets>,
    pub jobs_finished: Family<ResultReason, Counter>,
    pub dispatch_latency: Histogram,
    pub agent_reconnects: Counter,
    pub enrollments: Family<ResultLabel, Counter>,
    pub build_info: Family<VersionLabel, Gauge>,
    /// 1 while this coordinator leads (always, on the embedded store).
    pub leader: Gauge,
    /// The epoch of the current leader term this coordinator knows of.
    pub leader_epoch: Gauge,
    /// Times this coordinator stopped leading (lost lease, fenced write).
    pub step_downs: Counter,
    /// Store open and QUIC bound (and, with an external store, reachable).
    pub ready: AtomicBool,
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: std::sync::Mutex::new(Registry::default()),
            jobs: Family::default(),
            agents: Family::default(),
            slots_total: Gauge::default(),
            slots_used: Gauge::default(),
            jobs_unplaceable: Family::default(),
            queue_wait: Histogram::new(exponential_buckets(0.001, 2.5, 18)),
            job_duration: Family::new_with_constructor(SecondsBuckets),
            jobs_finished: Family::default(),
            dispatch_latency: Histogram::new(exponential_buckets(0.0001, 2.5, 14)),
            agent_reconnects: Counter::default(),
            enrollments: Family::default(),
            build_info: Family::default(),
            leader: Gauge::default(),
            leader_epoch: Gauge::default(),
            step_downs: Counter::default(),
            ready: AtomicBool::new(false),
        };
        {
            let mut r = m.registry.lock().expect("registry lock");
            r.register(
                "helix_jobs",
                "Jobs of active builds by state and platform",
                m.jobs.clone(),
            );
            r.register("helix_agents", "Enrolled agents by state (ready, cordoned, draining, revoked, offline) and platform", m.agents.clone());
            r.register(
                "helix_coordinator_leader",
                "1 while this coordinator leads the cluster, 0 while it stands by",
                m.leader.clone(),
            );
            r.register(
                "helix_coordinator_leader_epoch",
                "The leader term (lease epoch) this coordinator last saw; 0 on the embedded store",
                m.leader_epoch.clone(),
            );
            r.register(
                "helix_coordinator_step_downs",
                "Times this coordinator stopped leading (lease lost or a write fenced)",
                m.step_downs.clone(),
            );
            r.register(
                "helix_slots_total",
                "Build slots of connected agents",
                m.slots_total.clone(),
            );
            r.register(
                "helix_slots_used",
                "Build slots holding a job",
                m.slots_used.clone(),
            );
            r.register(
                "helix_jobs_unplaceable",
                "Queued jobs no connected agent can build",
                m.jobs_unplaceable.clone(),
            );
            r.register(
                "helix_job_queue_wait_seconds",
                "Time a job waited in the queue before it was assigned",
                m.queue_wait.clone(),
            );
            r.register(
                "helix_job_duration_seconds",
                "Time from submit to a job's end",
                m.job_duration.clone(),
            );
            r.register(
                "helix_jobs_finished",
                "Jobs that ended, by result and reason",
                m.jobs_finished.clone(),
            );
            r.register(
                "helix_dispatch_latency_seconds",
                "Time the coordinator took to commit and send an assignment",
                m.dispatch_latency.clone(),
            );
            r.register(
                "helix_agent_reconnects",
                "Agent sessions after the first one of each agent",
                m.agent_reconnects.clone(),
            );
            r.register(
                "helix_enrollments",
                "Join attempts by result",
                m.enrollments.clone(),
            );
            r.register(
                "helix_build_info",
                "The coordinator's version",
                m.build_info.clone(),
            );
        }
        m.build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        m
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        helix_health::encode(&self.registry.lock().expect("registry lock"))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
