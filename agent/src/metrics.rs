//! [`Metrics`]: the agent's Prometheus metrics, served by `helix_health::serve` on
//! the optional listener for `/metrics`, `/healthz` and `/readyz`
//! (`--metrics-listen`, off by default: several agents may share a host, and a fixed
//! port would collide).
//!
//! Gauges that describe the present (running jobs, the connection) are refreshed
//! from the live state just before each scrape, so they cannot drift; counters and
//! histograms are observed as things happen.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// How a builder run ended: `succeeded`, `failed` or `cancelled`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InfoLabels {
    pub version: String,
    pub builder: String,
}

/// Seconds, from 1 s to about 4 days: image builds.
#[derive(Clone, Debug)]
pub struct BuildBuckets;

impl MetricConstructor<Histogram> for BuildBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(1.0, 2.0, 19))
    }
}

type Refresh = Arc<dyn Fn(&Metrics) + Send + Sync>;

/// Every metric the agent exports.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Jobs running now (refreshed at scrape).
    pub running_jobs: Gauge,
    /// Jobs the agent runs at once (its capacity; changes on SIGHUP).
    pub capacity: Gauge,
    /// 1 while a session with the coordinator is up.
    pub connected: Gauge,
    /// How long the builder took, by how it ended.
    pub builder_duration: Family<ResultLabel, Histogram, BuildBuckets>,
    /// Bytes of the images pushed (manifest, config and layers of each pushed
    /// layout, whether or not the registry already had some of the blobs).
    pub push_bytes: Counter,
    /// Connection attempts after a session was lost or could not be opened.
    pub reconnects: Counter,
    pub info: Family<InfoLabels, Gauge>,
    /// Connected to the coordinator, for `/readyz`.
    ready: AtomicBool,
    refresh: Mutex<Option<Refresh>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// The agent's metrics, with `helix_agent_info{version,builder}` set.
    pub fn new(builder: &str) -> Metrics {
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            running_jobs: Gauge::default(),
            capacity: Gauge::default(),
            connected: Gauge::default(),
            builder_duration: Family::new_with_constructor(BuildBuckets),
            push_bytes: Counter::default(),
            reconnects: Counter::default(),
            info: Family::default(),
            ready: AtomicBool::new(false),
            refresh: Mutex::new(None),
        };
        {
            let mut r = m.registry.lock().expect("registry lock");
            r.register(
                "helix_agent_running_jobs",
                "Jobs running on this agent",
                m.running_jobs.clone(),
            );
            r.register(
                "helix_agent_capacity",
                "Jobs this agent runs at once",
                m.capacity.clone(),
            );
            r.register(
                "helix_agent_connected",
                "1 while a session with the coordinator is up",
                m.connected.clone(),
            );
            r.register(
                "helix_agent_builder_duration_seconds",
                "Time the image builder took per job, by result (succeeded, failed, cancelled)",
                m.builder_duration.clone(),
            );
            r.register(
                "helix_agent_push_bytes",
                "Bytes of the images pushed (manifest, config and layers of each pushed layout)",
                m.push_bytes.clone(),
            );
            r.register(
                "helix_agent_reconnects",
                "Connection attempts after a session with the coordinator was lost or could not be opened",
                m.reconnects.clone(),
            );
            r.register(
                "helix_agent_info",
                "The agent's version and builder",
                m.info.clone(),
            );
        }
        m.info
            .get_or_create(&InfoLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
                builder: builder.to_string(),
            })
            .set(1);
        m
    }

    /// Called before each scrape to bring the present-tense gauges up to date.
    pub fn set_refresh(&self, refresh: impl Fn(&Metrics) + Send + Sync + 'static) {
        *self.refresh.lock().expect("refresh lock") = Some(Arc::new(refresh));
    }

    /// Records whether a session is up (`connected`, `/readyz`).
    pub fn set_connected(&self, connected: bool) {
        self.ready.store(connected, Ordering::Relaxed);
        self.connected.set(i64::from(connected));
    }

    /// Whether a session is up.
    pub fn is_connected(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition, refreshed first.
    pub fn encode(&self) -> String {
        let refresh = self.refresh.lock().expect("refresh lock").clone();
        if let Some(refresh) = refresh {
            refresh(self);
        }
        helix_health::encode(&self.registry.lock().expect("registry lock"))
    }
}

impl helix_health::Probes for Metrics {
    fn metrics(&self) -> Pin<Box<dyn Future<Output = String> + Send + '_>> {
        Box::pin(async move { self.encode() })
    }

    /// Ready while a session with the coordinator is up: an agent that cannot
    /// reach any coordinator gets no work.
    fn readiness(&self) -> Result<&'static str, &'static str> {
        if self.is_connected() {
            Ok("connected\n")
        } else {
            Err("not connected to the coordinator\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_the_agent_metrics() {
        let m = Metrics::new("buildah");
        m.set_refresh(|m| {
            m.running_jobs.set(2);
        });
        m.builder_duration
            .get_or_create(&ResultLabel {
                result: "succeeded".into(),
            })
            .observe(12.0);
        m.push_bytes.inc_by(1234);
        m.reconnects.inc();
        m.set_connected(true);
        let text = m.encode();
        for needle in [
            "helix_agent_running_jobs 2",
            "helix_agent_connected 1",
            "helix_agent_builder_duration_seconds_count{result=\"succeeded\"} 1",
            "helix_agent_push_bytes_total 1234",
            "helix_agent_reconnects_total 1",
            &format!(
                "helix_agent_info{{version=\"{}\",builder=\"buildah\"}} 1",
                env!("CARGO_PKG_VERSION")
            ),
        ] {
            assert!(text.contains(needle), "{needle} not in:\n{text}");
        }
    }

    #[test]
    fn ready_only_while_connected() {
        use helix_health::Probes as _;
        let m = Metrics::new("podman");
        assert!(m.readiness().is_err());
        m.set_connected(true);
        assert_eq!(m.readiness(), Ok("connected\n"));
        m.set_connected(false);
        assert!(m.readiness().is_err());
    }
}
