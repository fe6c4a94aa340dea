//! The build lifecycle with real processes: submit, route, buildah, push by digest,
//! assemble the multi-arch index; logs, failures, cancel, the platform check.

use std::time::Duration;

use helix_tests::{
    busybox, git_repo, job_digests, pids_with_cmdline, require_tool, wait_for, BuildCluster,
};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

const SIMPLE: &[u8] = b"FROM scratch\nCOPY hello.txt /hello.txt\n";

#[test]
fn a_two_platform_build_pushes_one_index_with_both_platforms_buildah() {
    two_platform_build("buildah");
}

#[test]
fn a_two_platform_build_pushes_one_index_with_both_platforms_podman() {
    two_platform_build("podman");
}

/// One body for every builder backend.
fn two_platform_build(builder: &str) {
    let root = tmp();
    let cluster = BuildCluster::start_opts(
        root.path(),
        &[("amd64-1", &["linux/amd64"]), ("arm64-1", &["linux/arm64"])],
        &[],
        &[],
        &["--builder", builder],
    );
    let repo = git_repo(
        &root.path().join("repo"),
        &[("Dockerfile", SIMPLE), ("hello.txt", b"hello\n")],
    );
    let tag = cluster.image("demo/app:v1");
    let id = cluster.submit(&repo, "linux/amd64,linux/arm64", &tag, &[]);
    let (code, done) = cluster.wait(&id);
    assert_eq!(code, Some(0), "{done:#}");
    assert_eq!(done["state"], "Succeeded");

    let build = cluster.get(&id);
    let digests = job_digests(&build);
    assert_eq!(digests.len(), 2, "{build:#}");
    let index_digest = build["build"]["phase"]["Succeeded"]["index_digest"]
        .as_str()
        .expect("index digest")
        .to_string();

    let raw = cluster.registry.inspect_raw("demo/app:v1").ok();
    let index: serde_json::Value = serde_json::from_str(&raw.stdout).expect("index JSON");
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let manifests = index["manifests"].as_array().expect("manifests");
    let mut listed: Vec<(String, String)> = manifests
        .iter()
        .map(|m| {
            let p = &m["platform"];
            assert!(
                p.get("variant").is_none(),
                "no variant for amd64/arm64: {p}"
            );
            (
                format!(
                    "{}/{}",
                    p["os"].as_str().expect("os"),
                    p["architecture"].as_str().expect("arch")
                ),
                m["digest"].as_str().expect("digest").to_string(),
            )
        })
        .collect();
    listed.sort();
    let mut expected = digests.clone();
    expected.sort();
    assert_eq!(
        listed, expected,
        "the index lists exactly the digests build get reports"
    );
    // The index pushed is the one recorded.
    let raw_digest = format!("sha256:{}", sha256_hex(raw.stdout.as_bytes()));
    assert_eq!(raw_digest, index_digest);

    let arm = &digests
        .iter()
        .find(|(p, _)| p == "linux/arm64")
        .expect("arm64 job")
        .1;
    let config = cluster.registry.inspect_config(&format!("demo/app@{arm}"));
    assert_eq!(config["architecture"], "arm64");
    assert_eq!(config["os"], "linux");
    // No per-arch tag was pushed: the only tag is v1.
    let (_, tags) = cluster
        .registry
        .get("/v2/demo/app/tags/list")
        .expect("tags list");
    assert!(
        tags.contains("\"v1\"") && !tags.contains("arm64") && !tags.contains("amd64"),
        "{tags}"
    );
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(bytes)
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("hash")
        .to_string()
}

#[test]
fn a_run_step_builds_and_its_output_is_in_the_logs() {
    let root = tmp();
    let cluster = BuildCluster::start(root.path(), &[("amd64-1", &["linux/amd64"])]);
    let dockerfile = b"FROM scratch\nCOPY bin/busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo run-step-marker-$((6*7))\"]\n";
    let bb = busybox();
    let repo = git_repo(
        &root.path().join("repo"),
        &[("Dockerfile", dockerfile), ("bin/busybox", &bb)],
    );
    let id = cluster.submit(&repo, "linux/amd64", &cluster.image("demo/run:v1"), &[]);
    let (code, done) = cluster.wait(&id);
    assert_eq!(code, Some(0), "{done:#}");
    let logs = cluster
        .coordinator
        .admin(&["build", "logs", &id])
        .ok()
        .stdout;
    assert!(
        logs.contains("run-step-marker-42"),
        "the RUN step's output is in the logs:\n{logs}"
    );
    let platform_logs = cluster
        .coordinator
        .admin(&["build", "logs", &id, "--platform", "linux/amd64"])
        .ok()
        .stdout;
    assert!(platform_logs.contains("run-step-marker-42"));
}

#[test]
fn a_failing_dockerfile_fails_the_build_and_pushes_no_index_buildah() {
    failing_build("buildah");
}

#[test]
fn a_failing_dockerfile_fails_the_build_and_pushes_no_index_podman() {
    failing_build("podman");
}

fn failing_build(builder: &str) {
    let root = tmp();
    let cluster = BuildCluster::start_opts(
        root.path(),
        &[("amd64-1", &["linux/amd64"]), ("arm64-1", &["linux/arm64"])],
        &[],
        &[],
        &["--builder", builder],
    );
    let dockerfile = b"FROM scratch\nCOPY bin/busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo failing-step-marker; exit 3\"]\n";
    let bb = busybox();
    let repo = git_repo(
        &root.path().join("repo"),
        &[("Dockerfile", dockerfile), ("bin/busybox", &bb)],
    );
    let id = cluster.submit(&repo, "linux/amd64", &cluster.image("demo/fail:v1"), &[]);
    let (code, done) = cluster.wait(&id);
    assert_eq!(code, Some(1), "{done:#}");
    assert_eq!(done["state"], "Failed");
    let human = cluster
        .coordinator
        .admin(&["build", "get", &id])
        .ok()
        .stdout;
    assert!(human.contains("failed"), "{human}");
    assert!(
        human.contains("status 3") || human.contains("exit status 3"),
        "the builder's exit status is shown:\n{human}"
    );
    let logs = cluster
        .coordinator
        .admin(&["build", "logs", &id])
        .ok()
        .stdout;
    assert!(logs.contains("failing-step-marker"), "{logs}");
    let inspect = cluster.registry.inspect_raw("demo/fail:v1");
    assert_ne!(inspect.code, Some(0), "no index was pushed: {inspect:?}");
}

#[test]
fn cancel_stops_the_builder_within_five_seconds() {
    let root = tmp();
    let cluster = BuildCluster::start(root.path(), &[("amd64-1", &["linux/amd64"])]);
    // A distinctive sleep length so the test finds exactly this builder's process.
    let dockerfile = b"FROM scratch\nCOPY bin/busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo sleeping-now; /bin/busybox sleep 2917\"]\n";
    let bb = busybox();
    let repo = git_repo(
        &root.path().join("repo"),
        &[("Dockerfile", dockerfile), ("bin/busybox", &bb)],
    );
    let id = cluster.submit(&repo, "linux/amd64", &cluster.image("demo/cancel:v1"), &[]);
    wait_for(Duration::from_secs(60), "the RUN step to start", || {
        let logs = cluster.coordinator.admin(&["build", "logs", &id]).stdout;
        (logs.contains("sleeping-now") && !pids_with_cmdline("sleep 2917").is_empty()).then_some(())
    });
    let cancelled_at = std::time::Instant::now();
    cluster.coordinator.admin(&["build", "cancel", &id]).ok();
    wait_for(
        Duration::from_secs(5),
        "the builder's processes to be gone",
        || pids_with_cmdline("sleep 2917").is_empty().then_some(()),
    );
    eprintln!("builder gone {:?} after cancel", cancelled_at.elapsed());
    let (code, done) = cluster.wait(&id);
    assert_eq!(code, Some(1));
    assert_eq!(done["state"], "Cancelled", "{done:#}");
}

#[test]
fn an_agent_that_builds_the_wrong_architecture_is_caught() {
    let root = tmp();
    // A builder that ignores the platform it is asked for and builds amd64: the agent
    // advertises linux/arm64 but its images are amd64 (a misconfigured host).
    let shim_dir = root.path().join("shim");
    std::fs::create_dir_all(&shim_dir).expect("shim dir");
    let real = require_tool("buildah", "buildah");
    let shim = shim_dir.join("buildah");
    std::fs::write(
        &shim,
        format!(
            "#!/bin/sh\n# Rewrite any --platform value to linux/amd64.\nn=$#; i=0; prev=\"\"\nfor a in \"$@\"; do\n  i=$((i+1))\n  if [ \"$prev\" = \"--platform\" ]; then a=linux/amd64; fi\n  case \"$a\" in --platform=*) a=--platform=linux/amd64;; esac\n  set -- \"$@\" \"$a\"; prev=\"$a\"\ndone\nshift $n\nexec {} \"$@\"\n",
            real.display()
        ),
    )
    .expect("write shim");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!(
        "{}:{}",
        shim_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let cluster = BuildCluster::start_with(
        root.path(),
        &[("liar", &["linux/arm64"])],
        &[("PATH", &path)],
    );
    let repo = git_repo(
        &root.path().join("repo"),
        &[("Dockerfile", SIMPLE), ("hello.txt", b"hi\n")],
    );
    let id = cluster.submit(&repo, "linux/arm64", &cluster.image("demo/liar:v1"), &[]);
    let (code, done) = cluster.wait(&id);
    assert_eq!(code, Some(1), "{done:#}");
    let reason = done["build"]["phase"]["Failed"]["reason"]
        .as_str()
        .expect("failure reason");
    assert!(
        reason.contains("linux/arm64") && reason.contains("linux/amd64"),
        "names both platforms: {reason}"
    );
    assert_ne!(
        cluster.registry.inspect_raw("demo/liar:v1").code,
        Some(0),
        "no index pushed"
    );
}

#[test]
fn bad_submits_are_refused_with_a_message_and_store_nothing() {
    let root = tmp();
    let cluster = BuildCluster::start(root.path(), &[]);
    let repo = git_repo(
        &root.path().join("repo"),
        &[("Dockerfile", SIMPLE), ("hello.txt", b"hi\n")],
    );
    let tag = cluster.image("demo/app:v1");
    let c = &cluster.coordinator;
    let submit = |repo: &str, reference: &str, platform: &str, tag: &str| {
        c.admin(&[
            "build",
            "submit",
            "--repo",
            repo,
            "--ref",
            reference,
            "--platform",
            platform,
            "--tag",
            tag,
        ])
    };
    let r = submit(&repo, "main", "linux/amd65", &tag)
        .fails_with(2, "invalid platform \"linux/amd65\"");
    assert!(
        r.stderr.contains("unknown architecture \"amd65\""),
        "{}",
        r.stderr
    );
    submit(&repo, "main", "linux/amd64", "Localhost:5000/UPPER/app:v1")
        .fails_with(2, "invalid --tag");
    submit(&repo, "no-such-branch", "linux/amd64", &tag)
        .fails_with(2, "no branch or tag named \"no-such-branch\"");
    submit("ftp://example.com/repo.git", "main", "linux/amd64", &tag)
        .fails_with(2, "unsupported scheme \"ftp\"");
    submit(&format!("{repo}-missing"), "main", "linux/amd64", &tag).fails_with(2, "cannot read");
    let list = c.admin(&["build", "list", "--json"]).ok().stdout;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&list).expect("json"),
        serde_json::json!([]),
        "nothing stored"
    );

    // A job whose platform no agent can build waits and says why.
    let id = cluster.submit(&repo, "linux/s390x", &tag, &[]);
    let human = c.admin(&["build", "get", &id]).ok().stdout;
    assert!(
        human.contains("waiting for an agent that can build linux/s390x"),
        "{human}"
    );
    c.admin(&["build", "cancel", &id]).ok();
}

/// podman 4.3's layer cache can hand back an image built for another platform; one
/// podman agent building both platforms of a build must still produce a correct index
/// (each platform in its own storage), never a wrong-architecture entry.
#[test]
fn one_podman_agent_builds_both_platforms_correctly() {
    let root = tmp();
    let cluster = BuildCluster::start_opts(
        root.path(),
        &[("podman-1", &["linux/amd64", "linux/arm64"])],
        &[],
        &[],
        &["--builder", "podman", "--capacity", "2"],
    );
    let repo = git_repo(
        &root.path().join("repo"),
        &[("Dockerfile", SIMPLE), ("hello.txt", b"hello podman\n")],
    );
    let id = cluster.submit(
        &repo,
        "linux/amd64,linux/arm64",
        &cluster.image("podman/both:v1"),
        &[],
    );
    let (code, done) = cluster.wait(&id);
    assert_eq!(code, Some(0), "{done:#}");
    for (platform, digest) in job_digests(&done) {
        let config = cluster
            .registry
            .inspect_config(&format!("podman/both@{digest}"));
        assert_eq!(
            format!(
                "{}/{}",
                config["os"].as_str().unwrap_or(""),
                config["architecture"].as_str().unwrap_or("")
            ),
            platform,
            "{config}"
        );
    }
    let agents = cluster.coordinator.agents();
    assert_eq!(agents[0]["builder"], "podman");
}
