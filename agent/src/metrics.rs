//! [`Metrics`]: the agent's Prometheus metrics, and [`serve`], the optional HTTP
//! listener for `/metrics`, `/healthz` and `/readyz` (`--metrics-listen`, off by
//! default: several agents may share a host, and a fixed port would collide).
//!
//! Gauges that describe the present (running jobs, the connection) are refreshed
//! from the live state just before each scrape, so they cannot drift; counters and
//! histograms are observed as things happen.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

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
        let mut out = String::new();
        let r = self.registry.lock().expect("registry lock");
        if prometheus_client::encoding::text::encode(&mut out, &r).is_err() {
            warn!("cannot encode metrics");
        }
        out
    }
}

/// The metrics listener: binds `addr` now (so a bad or busy address fails at
/// start-up) and serves until `cancel`.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    info!(addr = %local, "metrics and health listening");
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let metrics = metrics.clone();
                    conns.spawn(async move {
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let service = hyper::service::service_fn(move |req| handle(req, metrics.clone()));
                        let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
                        let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
                    });
                }
            }
        }
        conns.abort_all();
    });
    Ok((local, task))
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    metrics: Arc<Metrics>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
            resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        resp
    };
    let resp = match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        (&hyper::Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        (&hyper::Method::GET, "/readyz") => {
            if metrics.is_connected() {
                reply(StatusCode::OK, "text/plain", "connected\n".into())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not connected to the coordinator\n".into(),
                )
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    };
    Ok(resp)
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

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let m = Arc::new(Metrics::new("podman"));
        let cancel = CancellationToken::new();
        let (addr, task) = serve(
            "127.0.0.1:0".parse().expect("addr"),
            m.clone(),
            cancel.clone(),
        )
        .await
        .expect("bind");
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            out
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        m.set_connected(true);
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        let metrics = get("/metrics").await;
        assert!(metrics.contains("helix_agent_info"), "{metrics}");
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
        cancel.cancel();
        task.await.expect("listener ends");
    }
}
