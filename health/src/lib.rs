//! The HTTP listener for Prometheus metrics and health probes, shared by the
//! coordinator and the agent.
//!
//! It lives on its own listener (loopback by default), apart from the mutual-TLS
//! QUIC port, so a scraper or a load balancer needs no cluster certificate. What is
//! exported and what "ready" means belong to each binary: they answer [`Probes`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The content type of the OpenMetrics text `prometheus-client` encodes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A scrape can hang on a slow client; no connection is held longer than this.
const CONNECTION_LIMIT: Duration = Duration::from_secs(30);

/// What a binary exports on the listener.
pub trait Probes: Send + Sync + 'static {
    /// The metrics text, with the gauges that describe the present brought up to
    /// date first (they are computed at scrape time so they cannot drift).
    fn metrics(&self) -> Pin<Box<dyn Future<Output = String> + Send + '_>>;

    /// `Ok(body)` (200) when the process can do its work, `Err(body)` (503) when not.
    fn readiness(&self) -> Result<&'static str, &'static str>;
}

/// The OpenMetrics text of `registry`; a metric that cannot be encoded is logged
/// and the scrape goes on (a broken scrape must not take the process down).
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        warn!("cannot encode metrics");
    }
    out
}

/// Binds `addr` now (so a bad or busy address fails at start-up) and serves
/// `/metrics`, `/healthz` and `/readyz` until `cancel`.
pub async fn serve(
    addr: SocketAddr,
    probes: Arc<dyn Probes>,
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
                    let probes = probes.clone();
                    conns.spawn(async move {
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let service = hyper::service::service_fn(move |req| handle(req, probes.clone()));
                        let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
                        let _ = tokio::time::timeout(CONNECTION_LIMIT, conn).await;
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
    probes: Arc<dyn Probes>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, OPENMETRICS, probes.metrics().await),
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        (&Method::GET, "/readyz") => match probes.readiness() {
            Ok(body) => (StatusCode::OK, "text/plain", body.to_string()),
            Err(body) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                body.to_string(),
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz or /readyz\n".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    #[derive(Default)]
    struct Fixed {
        ready: AtomicBool,
        scrapes: AtomicUsize,
    }

    impl Probes for Fixed {
        fn metrics(&self) -> Pin<Box<dyn Future<Output = String> + Send + '_>> {
            Box::pin(async move {
                let n = self.scrapes.fetch_add(1, Ordering::SeqCst) + 1;
                format!("scrapes {n}\n")
            })
        }

        fn readiness(&self) -> Result<&'static str, &'static str> {
            if self.ready.load(Ordering::SeqCst) {
                Ok("ready\n")
            } else {
                Err("not ready: waiting\n")
            }
        }
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness_until_cancelled() {
        let probes = Arc::new(Fixed::default());
        let cancel = CancellationToken::new();
        let (addr, task) = serve(
            "127.0.0.1:0".parse().expect("addr"),
            probes.clone(),
            cancel.clone(),
        )
        .await
        .expect("bind");
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        let not_ready = get(addr, "/readyz").await;
        assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
        assert!(not_ready.ends_with("not ready: waiting\n"), "{not_ready}");
        probes.ready.store(true, Ordering::SeqCst);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        // Each scrape asks afresh.
        assert!(get(addr, "/metrics").await.ends_with("scrapes 1\n"));
        let second = get(addr, "/metrics").await;
        assert!(second.contains(OPENMETRICS), "{second}");
        assert!(second.ends_with("scrapes 2\n"), "{second}");
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        cancel.cancel();
        task.await.expect("listener ends");
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn a_busy_address_fails_at_start() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let probes: Arc<dyn Probes> = Arc::new(Fixed::default());
        assert!(serve(addr, probes, CancellationToken::new()).await.is_err());
    }
}
