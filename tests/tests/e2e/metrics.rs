//! The coordinator's Prometheus endpoint during real builds, read with a real
//! Prometheus text-format parser.

use std::io::{Read, Write};
use std::time::Duration;

use helix_tests::{git_repo, wait_for, BuildCluster};

pub(crate) fn scrape(addr: &str, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the metrics listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut resp = String::new();
    stream.read_to_string(&mut resp).expect("response");
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of `name` with these labels, from a parsed scrape.
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

fn parse(body: &str) -> prometheus_parse::Scrape {
    let lines = body.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text")
}

#[test]
fn metrics_follow_a_real_build() {
    let root = tempfile::tempdir().expect("tempdir");
    let cluster = BuildCluster::start(root.path(), &[("amd64-1", &["linux/amd64"])]);
    let addr = cluster.coordinator.metrics_addr();
    assert_eq!(scrape(&addr, "/healthz").0, 200);
    assert_eq!(scrape(&addr, "/readyz").0, 200);
    assert_eq!(scrape(&addr, "/nope").0, 404);

    let (status, body) = scrape(&addr, "/metrics");
    assert_eq!(status, 200);
    let before = parse(&body);
    assert_eq!(
        value(
            &before,
            "helix_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &before,
            "helix_agents",
            &[("state", "ready"), ("platform", "linux/amd64")]
        ),
        Some(1.0)
    );
    assert_eq!(value(&before, "helix_slots_total", &[]), Some(1.0));
    let finished_before = value(
        &before,
        "helix_jobs_finished_total",
        &[("result", "succeeded"), ("reason", "built")],
    )
    .unwrap_or(0.0);

    // A job for a platform no agent serves is unplaceable.
    let repo = git_repo(
        &root.path().join("repo"),
        &[("Dockerfile", b"FROM scratch\nCOPY f /f\n"), ("f", b"x\n")],
    );
    let stuck = cluster.submit(
        &repo,
        "linux/s390x",
        &cluster.image("metrics/stuck:v1"),
        &[],
    );
    let scraped = parse(&scrape(&addr, "/metrics").1);
    assert_eq!(
        value(
            &scraped,
            "helix_jobs_unplaceable",
            &[("platform", "linux/s390x")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &scraped,
            "helix_jobs",
            &[("state", "queued"), ("platform", "linux/s390x")]
        ),
        Some(1.0)
    );
    cluster.coordinator.admin(&["build", "cancel", &stuck]).ok();

    // A finished build counts.
    let id = cluster.submit(&repo, "linux/amd64", &cluster.image("metrics/app:v1"), &[]);
    let (code, _) = cluster.wait(&id);
    assert_eq!(code, Some(0));
    let after = wait_for(
        Duration::from_secs(30),
        "the metrics to show the finished job",
        || {
            let s = parse(&scrape(&addr, "/metrics").1);
            let n = value(
                &s,
                "helix_jobs_finished_total",
                &[("result", "succeeded"), ("reason", "built")],
            )?;
            (n >= finished_before + 1.0).then_some(s)
        },
    );
    assert_eq!(
        value(
            &after,
            "helix_jobs_finished_total",
            &[("result", "cancelled"), ("reason", "cancelled")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &after,
            "helix_jobs_unplaceable",
            &[("platform", "linux/s390x")]
        ),
        None,
        "gone once cancelled"
    );
    assert!(value(&after, "helix_job_queue_wait_seconds_count", &[]).unwrap_or(0.0) >= 1.0);
    assert!(value(&after, "helix_dispatch_latency_seconds_count", &[]).unwrap_or(0.0) >= 1.0);
    assert!(
        value(&after, "helix_enrollments_total", &[("result", "success")]).unwrap_or(0.0) >= 1.0
    );
    assert_eq!(value(&after, "helix_slots_used", &[]), Some(0.0));
}
