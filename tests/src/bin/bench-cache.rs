//! Benchmark: the time from `helix-coordinator build submit --wait` to its exit for a
//! fully cached two-platform build, the whole CLI process included (start, mTLS QUIC
//! handshake, submit with cache lookups and registry checks, index push, wait).
//!
//! `cargo run --release -p helix-tests --bin bench-cache -- [--runs 30]` starts a real
//! registry, coordinator and two agents (linux/amd64 and linux/arm64), builds once to
//! fill the cache, then times identical submits and prints one JSON object.

use std::time::{Duration, Instant};

use helix_tests::{git_repo, job_digests, BuildCluster};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn main() -> anyhow::Result<()> {
    let mut runs = 30usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => {
                runs = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| anyhow::anyhow!("--runs N"))?
            }
            other => anyhow::bail!("unknown argument {other:?} (usage: bench-cache [--runs N])"),
        }
    }
    let root = tempfile::Builder::new()
        .prefix("helix-bench-cache-")
        .tempdir()?;
    eprintln!(
        "starting a registry, a coordinator and two agents in {}",
        root.path().display()
    );
    let cluster = BuildCluster::start(
        root.path(),
        &[("amd64-1", &["linux/amd64"]), ("arm64-1", &["linux/arm64"])],
    );
    let repo = git_repo(
        &root.path().join("repo"),
        &[
            ("Dockerfile", b"FROM scratch\nCOPY hello.txt /hello.txt\n"),
            ("hello.txt", b"hello\n"),
        ],
    );
    let tag = cluster.image("bench/cached:v1");
    let first = cluster.submit(&repo, "linux/amd64,linux/arm64", &tag, &[]);
    let (code, done) = cluster.wait(&first);
    anyhow::ensure!(code == Some(0), "the first build failed: {done:#}");
    let digests = job_digests(&done);
    eprintln!("cache filled by build {first}; timing {runs} cached submits");

    let mut times = Vec::with_capacity(runs);
    for i in 0..runs {
        let start = Instant::now();
        let out = cluster.coordinator.admin(&[
            "build",
            "submit",
            "--repo",
            &repo,
            "--ref",
            "main",
            "--platform",
            "linux/amd64,linux/arm64",
            "--tag",
            &tag,
            "--wait",
            "--json",
        ]);
        let elapsed = start.elapsed();
        anyhow::ensure!(out.code == Some(0), "cached submit {i} failed: {out:?}");
        let view: serde_json::Value = serde_json::from_str(&out.stdout)?;
        anyhow::ensure!(
            job_digests(&view) == digests,
            "submit {i} was not served from the cache"
        );
        let cached = view["jobs"]
            .as_array()
            .map(|j| {
                j.iter()
                    .all(|j| !j["state"]["Succeeded"]["cached_from"].is_null())
            })
            .unwrap_or(false);
        anyhow::ensure!(
            cached,
            "submit {i}: a job was built instead of served from the cache"
        );
        times.push(elapsed.as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    println!(
        "{}",
        serde_json::json!({
            "benchmark": "cached_two_platform_submit_wait",
            "runs": runs,
            "ms": { "p50": percentile(&sorted, 0.5), "p90": percentile(&sorted, 0.9), "p99": percentile(&sorted, 0.99), "mean": mean, "min": sorted[0], "max": sorted[sorted.len() - 1] },
            "target_ms": 100,
            "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
        })
    );
    Ok(())
}
