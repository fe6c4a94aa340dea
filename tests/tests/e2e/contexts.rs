//! Builds from a local directory (`build submit --context`), and every refused upload.

use std::time::Duration;

use helix_coordinator::client::{AdminClient, ClientError};
use helix_protocol::Digest;
use helix_tests::{job_digests, require_tool, run, s, BuildCluster, CMD_TIMEOUT};
use helix_transport::files::AdminBundle;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// Every path in the image's layers (`tar -tvzf` lines), fetched with skopeo.
fn image_listing(cluster: &BuildCluster, reference: &str, work: &std::path::Path) -> String {
    let skopeo = require_tool("skopeo", "skopeo");
    let dir = work.join(format!("oci-{}", reference.replace(['/', ':', '@'], "_")));
    run(
        &skopeo,
        &s(&[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{}/{reference}", cluster.registry.addr),
            &format!("oci:{}:img", dir.display()),
        ]),
        &[],
        CMD_TIMEOUT,
    )
    .ok();
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("index.json")).expect("index.json"))
            .expect("json");
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .expect("manifest digest")
        .trim_start_matches("sha256:")
        .to_string();
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("blobs/sha256").join(manifest_digest)).expect("manifest"),
    )
    .expect("json");
    let mut listing = String::new();
    for layer in manifest["layers"].as_array().expect("layers") {
        let blob = dir.join("blobs/sha256").join(
            layer["digest"]
                .as_str()
                .expect("digest")
                .trim_start_matches("sha256:"),
        );
        let out = run(
            &require_tool("tar", "tar"),
            &s(&["-tvzf", blob.to_str().expect("utf-8")]),
            &[],
            CMD_TIMEOUT,
        )
        .ok();
        listing.push_str(&out.stdout);
    }
    listing
}

#[test]
fn a_local_directory_builds_with_its_ignore_rules_and_links_kept_as_links() {
    let root = tmp();
    let cluster = BuildCluster::start(
        root.path(),
        &[("amd64-1", &["linux/amd64"]), ("arm64-1", &["linux/arm64"])],
    );
    let ctx = root.path().join("ctx");
    std::fs::create_dir_all(ctx.join("app")).expect("mkdir");
    std::fs::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY . /ctx/\n").expect("write");
    std::fs::write(ctx.join("app/main.txt"), "hello from a context\n").expect("write");
    std::fs::write(ctx.join("secret.env"), "TOKEN=do-not-ship\n").expect("write");
    std::fs::write(ctx.join(".dockerignore"), "secret.env\n").expect("write");
    std::os::unix::fs::symlink("/etc/shadow", ctx.join("shadow-link")).expect("symlink");

    let tag = cluster.image("ctx/app:v1");
    let out = cluster
        .coordinator
        .admin(&[
            "build",
            "submit",
            "--context",
            ctx.to_str().expect("utf-8"),
            "--platform",
            "linux/amd64,linux/arm64",
            "--tag",
            &tag,
            "--wait",
            "--json",
        ])
        .ok();
    let done: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(done["state"], "Succeeded", "{done:#}");
    assert_eq!(job_digests(&done).len(), 2);
    assert!(done["build"]["spec"]["source"]["Context"]["digest"]
        .as_str()
        .is_some_and(|d| d.starts_with("sha256:")));

    let listing = image_listing(&cluster, "ctx/app:v1", root.path());
    assert!(listing.contains("ctx/app/main.txt"), "{listing}");
    assert!(
        !listing.contains("secret.env"),
        "a .dockerignored file is not in the image:\n{listing}"
    );
    let link = listing
        .lines()
        .find(|l| l.contains("ctx/shadow-link"))
        .unwrap_or_else(|| panic!("the link is in the image:\n{listing}"));
    assert!(
        link.starts_with('l') && link.contains("-> /etc/shadow"),
        "shipped as a link, not the file: {link}"
    );

    // The same directory again: nothing to upload, and (same inputs) served from the cache.
    let again = cluster.coordinator.admin(&[
        "build",
        "submit",
        "--context",
        ctx.to_str().expect("utf-8"),
        "--platform",
        "linux/amd64,linux/arm64",
        "--tag",
        &tag,
        "--wait",
    ]);
    assert_eq!(again.code, Some(0), "{again:?}");
    assert!(
        again.stderr.contains("already has this context"),
        "{}",
        again.stderr
    );
}

fn admin_client(cluster: &BuildCluster, rt: &tokio::runtime::Runtime) -> AdminClient {
    let bundle = AdminBundle::load(&cluster.coordinator.admin_bundle()).expect("bundle");
    rt.block_on(AdminClient::connect(cluster.coordinator.addr(), &bundle))
        .expect("connect")
}

fn stored_contexts(cluster: &BuildCluster) -> usize {
    ["contexts/sha256", "contexts/tmp"]
        .iter()
        .map(|d| {
            std::fs::read_dir(cluster.coordinator.dir.join(d))
                .map(|e| e.count())
                .unwrap_or(0)
        })
        .sum()
}

#[test]
fn oversize_and_corrupted_uploads_are_refused_and_leave_nothing() {
    let root = tmp();
    let cluster =
        BuildCluster::start_opts(root.path(), &[], &[], &["--max-context-size", "4KiB"], &[]);
    let big_dir = root.path().join("big");
    std::fs::create_dir_all(&big_dir).expect("mkdir");
    std::fs::write(
        big_dir.join("Dockerfile"),
        "FROM scratch\nCOPY blob /blob\n",
    )
    .expect("write");
    std::fs::write(big_dir.join("blob"), vec![b'x'; 64 * 1024]).expect("write");

    // The CLI asks first and refuses with the limit named.
    cluster
        .coordinator
        .admin(&[
            "build",
            "submit",
            "--context",
            big_dir.to_str().expect("utf-8"),
            "--platform",
            "linux/amd64",
            "--tag",
            &cluster.image("ctx/big:v1"),
        ])
        .fails_with(2, "over the coordinator's limit");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = admin_client(&cluster, &rt);
    let payload = root.path().join("payload");
    std::fs::write(&payload, vec![b'y'; 64 * 1024]).expect("write");
    let real = Digest::sha256_of(&vec![b'y'; 64 * 1024]);

    // A client that announces a small size and sends more is cut off while streaming.
    let err = rt
        .block_on(client.upload_context(&real, 1000, &payload, |_| {}))
        .expect_err("overlong");
    assert!(
        matches!(&err, ClientError::Refused { message, .. } if message.contains("more than the announced 1000 bytes")),
        "{err}"
    );
    // An announced size over the limit is refused before any byte is stored.
    let err = rt
        .block_on(client.upload_context(&real, 64 * 1024, &payload, |_| {}))
        .expect_err("too large");
    assert!(
        err.to_string()
            .contains("over this coordinator's limit of 4096 bytes"),
        "{err}"
    );

    // A corrupted upload: the bytes do not hash to the announced digest.
    let small = root.path().join("small");
    std::fs::write(&small, b"a small context").expect("write");
    let wrong = Digest::sha256_of(b"something else");
    let err = rt
        .block_on(client.upload_context(&wrong, 15, &small, |_| {}))
        .expect_err("mismatch");
    assert!(
        err.to_string()
            .contains("was corrupted on the way and was not kept"),
        "{err}"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(stored_contexts(&cluster), 0, "nothing left on disk");

    // A build naming a context that was never uploaded is refused at submit.
    let good = Digest::sha256_of(b"a small context");
    let ok = rt
        .block_on(client.upload_context(&good, 15, &small, |_| {}))
        .expect("a valid upload is stored");
    assert!(matches!(
        ok,
        helix_protocol::wire::AdminResponse::ContextStored { .. }
    ));
    assert_eq!(stored_contexts(&cluster), 1);
    rt.block_on(client.close());
}
