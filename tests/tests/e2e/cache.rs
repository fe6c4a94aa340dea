//! The result cache with real processes: identical builds are served without agent
//! work, `--no-cache` rebuilds, a manifest deleted from the registry makes the next
//! build rebuild, a changed build argument misses.

use helix_tests::{git_repo, job_digests, require_tool, BuildCluster};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// Job ids of a `build get --json` result.
fn job_ids(build: &serde_json::Value) -> Vec<String> {
    build["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| j["id"].as_str().expect("id").to_string())
        .collect()
}

/// Whether any agent's log mentions any of `jobs` (agents log every job they accept).
fn reached_an_agent(cluster: &BuildCluster, jobs: &[String]) -> bool {
    cluster.agents.iter().any(|a| {
        let log = a.log();
        jobs.iter().any(|j| log.contains(j.as_str()))
    })
}

#[test]
fn identical_builds_are_served_from_the_cache_until_their_inputs_or_images_change() {
    let root = tmp();
    let cluster = BuildCluster::start(root.path(), &[("amd64-1", &["linux/amd64"])]);
    let busybox = std::fs::read(require_tool("busybox", "busybox-static")).expect("busybox");
    let dockerfile = b"FROM scratch\nCOPY bin/busybox /bin/busybox\nARG FLAVOR=plain\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo cache-test-step; /bin/busybox sleep 3; echo done > /done\"]\n";
    let repo = git_repo(
        &root.path().join("repo"),
        &[("Dockerfile", dockerfile), ("bin/busybox", &busybox)],
    );
    let tag = cluster.image("cache/app:v1");
    let build = |extra: &[&str]| {
        let id = cluster.submit(&repo, "linux/amd64", &tag, extra);
        let (code, done) = cluster.wait(&id);
        assert_eq!(code, Some(0), "{done:#}");
        done
    };

    // A: built by the agent.
    let a = build(&[]);
    let a_id = a["build"]["id"].as_str().expect("id").to_string();
    assert!(reached_an_agent(&cluster, &job_ids(&a)));
    let a_digests = job_digests(&a);

    // B: identical, served from the cache: no job reaches an agent, same digest.
    let b = build(&[]);
    assert!(
        !reached_an_agent(&cluster, &job_ids(&b)),
        "no job of a fully cached build reaches an agent"
    );
    assert_eq!(job_digests(&b), a_digests);
    assert_eq!(
        b["jobs"][0]["state"]["Succeeded"]["cached_from"],
        a_id.as_str(),
        "names the build that produced it"
    );
    let human = cluster
        .coordinator
        .admin(&["build", "get", b["build"]["id"].as_str().expect("id")])
        .ok()
        .stdout;
    assert!(human.contains("cached, built by build"), "{human}");
    let index: serde_json::Value =
        serde_json::from_str(&cluster.registry.inspect_raw("cache/app:v1").ok().stdout)
            .expect("index");
    assert_eq!(index["manifests"][0]["digest"], a_digests[0].1.as_str());

    // --no-cache: rebuilt by the agent.
    let c = build(&["--no-cache"]);
    assert!(
        reached_an_agent(&cluster, &job_ids(&c)),
        "--no-cache builds again"
    );
    assert!(c["jobs"][0]["state"]["Succeeded"]["cached_from"].is_null());

    // A different build argument misses.
    let d = build(&["--build-arg", "FLAVOR=spicy"]);
    assert!(
        reached_an_agent(&cluster, &job_ids(&d)),
        "a changed build arg misses"
    );

    // The cached manifest deleted from the registry: the entry is dropped, and the
    // next identical build is built again.
    let manifest = format!("/v2/cache/app/manifests/{}", a_digests[0].1);
    let (status, body) = cluster
        .registry
        .request("DELETE", &manifest, &[])
        .expect("registry answers");
    assert_eq!(status, 202, "manifest deleted: {body}");
    let e = build(&[]);
    assert!(
        reached_an_agent(&cluster, &job_ids(&e)),
        "a gone manifest is rebuilt"
    );
    // ... and then cached again.
    let f = build(&[]);
    assert!(!reached_an_agent(&cluster, &job_ids(&f)));
    assert_eq!(job_digests(&f), job_digests(&e));

    let list: serde_json::Value = serde_json::from_str(
        &cluster
            .coordinator
            .admin(&["cache", "list", "--json"])
            .ok()
            .stdout,
    )
    .expect("json");
    assert!(list.as_array().is_some_and(|l| !l.is_empty()), "{list:#}");
    let pruned = cluster.coordinator.admin(&["cache", "prune"]).ok().stdout;
    assert!(pruned.contains("Removed"), "{pruned}");
    let list: serde_json::Value = serde_json::from_str(
        &cluster
            .coordinator
            .admin(&["cache", "list", "--json"])
            .ok()
            .stdout,
    )
    .expect("json");
    assert_eq!(list, serde_json::json!([]));
    let g = build(&[]);
    assert!(
        reached_an_agent(&cluster, &job_ids(&g)),
        "after a prune, built again"
    );
}
