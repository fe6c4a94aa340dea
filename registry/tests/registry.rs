//! helix-registry against the real thing: Debian's `docker-registry` (distribution
//! 2.8) started per test on a free loopback port, images built by real `buildah` into
//! OCI layouts, results checked with `skopeo`. Nothing is skipped: a missing tool
//! fails the test with the Debian package to install.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use helix_protocol::index::{ImageIndex, OCI_INDEX, OCI_MANIFEST};
use helix_protocol::{Digest, ImageRef, Platform};
use helix_registry::layout::LayoutError;
use helix_registry::{AuthEnv, AuthSource, Registry, RegistryError, RegistryOptions};

// ---------------------------------------------------------------------------
// Tools

/// Fails (never skips) when `tool` is not installed, naming the Debian package.
#[track_caller]
fn require_tool(tool: &str, package: &str) {
    match Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => {}
        Err(e) => panic!(
            "`{tool}` is needed by this test and could not be run ({e}): install the Debian \
             package `{package}` (apt-get install {package})"
        ),
    }
}

/// Runs `cmd`, panicking with its output if it fails; returns stdout.
#[track_caller]
fn run(cmd: &mut Command) -> Vec<u8> {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        output.status.success(),
        "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

// ---------------------------------------------------------------------------
// A registry process

/// A test user for the registry with authentication; the hash is bcrypt (cost 4, to
/// keep every request fast) of `HTPASSWD_PASSWORD`.
const HTPASSWD_USER: &str = "helix";
const HTPASSWD_PASSWORD: &str = "helix-test-password";
const HTPASSWD_HASH: &str = "$2b$04$pLEZRDI5RCX02e/B7.BHFOKFm9JlZbK54FVBV9E1ukEpTyXVKm/NG";

/// `docker-registry serve` on a free loopback port, storing under a temp dir, killed
/// by its PID when dropped.
struct TestRegistry {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestRegistry {
    fn start() -> TestRegistry {
        TestRegistry::start_with(false)
    }

    fn start_with_htpasswd() -> TestRegistry {
        TestRegistry::start_with(true)
    }

    fn start_with(htpasswd: bool) -> TestRegistry {
        require_tool("docker-registry", "docker-registry");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: info\n\
             storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n",
            root = dir.path().join("data").display(),
        );
        if htpasswd {
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, format!("{HTPASSWD_USER}:{HTPASSWD_HASH}\n")).expect("write");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: helix-test\n    path: {}\n",
                file.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write config");
        let log = dir.path().join("registry.log");
        let log_file = std::fs::File::create(&log).expect("create log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log handle"))
            .stderr(log_file)
            .spawn()
            .expect("start docker-registry");
        let mut registry = TestRegistry {
            child,
            addr,
            log,
            _dir: dir,
        };
        registry.wait_ready();
        registry
    }

    /// Waits until `GET /v2/` answers (200, or 401 with authentication on).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the registry") {
                panic!(
                    "docker-registry exited with {status} before answering; its log:\n{}",
                    self.log_text()
                );
            }
            if let Some(status) = http_status(self.addr, "/v2/") {
                if status == 200 || status == 401 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer on {} within 15 s; its log:\n{}",
                self.addr,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:<port>`, as image references and the insecure list spell it.
    fn host(&self) -> String {
        self.addr.to_string()
    }

    fn image(&self, rest: &str) -> ImageRef {
        format!("{}/{rest}", self.host())
            .parse()
            .expect("valid test reference")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many blob uploads were started in `repository`, from the access log.
    fn uploads_started(&self, repository: &str) -> usize {
        self.log_text()
            .matches(&format!("\"POST /v2/{repository}/blobs/uploads/ "))
            .count()
    }

    /// How many upload chunks (`PATCH`es) `repository` received, from the access log.
    fn chunks_received(&self, repository: &str) -> usize {
        self.log_text()
            .matches(&format!("\"PATCH /v2/{repository}/blobs/uploads/"))
            .count()
    }

    /// A client for this registry, speaking plain HTTP to it.
    fn client(&self, auth: AuthSource) -> Registry {
        Registry::new(RegistryOptions {
            insecure: vec![self.host()],
            auth,
            ..RegistryOptions::default()
        })
        .expect("registry client")
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        // Our own child, by its PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status of a plain `GET path`, if something answered.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    // "HTTP/1.1 200"
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

// ---------------------------------------------------------------------------
// buildah, with its own storage under a temp dir

/// buildah with `--root`/`--runroot` in a temp dir, so tests never touch the host's
/// image store and can run in parallel. Dropping it removes its containers and
/// images, unmounts whatever is left mounted under the dir, and deletes it.
struct Buildah {
    root: PathBuf,
    runroot: PathBuf,
    dir: Option<tempfile::TempDir>,
}

/// An OCI layout written by `buildah push NAME oci:DIR:NAME`.
struct Layout {
    dir: PathBuf,
    name: String,
}

impl Buildah {
    fn new() -> Buildah {
        require_tool("buildah", "buildah");
        let dir = tempfile::tempdir().expect("tempdir");
        Buildah {
            root: dir.path().join("root"),
            runroot: dir.path().join("runroot"),
            dir: Some(dir),
        }
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().expect("present until drop").path()
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("buildah");
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot)
            .stdin(Stdio::null());
        cmd
    }

    /// Builds `FROM scratch` + one file for `platform` and writes it as an OCI layout.
    fn build_layout(&self, name: &str, platform: &str, content: impl AsRef<[u8]>) -> Layout {
        let context = self.dir().join(format!("context-{name}"));
        std::fs::create_dir_all(&context).expect("mkdir context");
        std::fs::write(context.join("hello.txt"), content).expect("write file");
        std::fs::write(
            context.join("Dockerfile"),
            "FROM scratch\nCOPY hello.txt /hello.txt\n",
        )
        .expect("write Dockerfile");
        run(self
            .command()
            .args([
                "build",
                "--isolation",
                "chroot",
                "--platform",
                platform,
                "-t",
                name,
                "-f",
            ])
            .arg(context.join("Dockerfile"))
            .arg(&context));
        let layout_dir = self.dir().join(format!("layout-{name}"));
        run(self
            .command()
            .arg("push")
            .arg(name)
            .arg(format!("oci:{}:{name}", layout_dir.display())));
        Layout {
            dir: layout_dir,
            name: name.to_owned(),
        }
    }
}

impl Drop for Buildah {
    fn drop(&mut self) {
        for args in [["rm", "--all"], ["rmi", "--all"]] {
            let _ = self
                .command()
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let Some(dir) = self.dir.take() else { return };
        // chroot isolation can leave mounts behind; unmount the deepest first.
        let mut mounts = mounts_under(dir.path());
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in mounts {
            let unmounted = Command::new("umount")
                .arg(&mount)
                .status()
                .is_ok_and(|s| s.success());
            if !unmounted {
                let _ = Command::new("umount").arg("-l").arg(&mount).status();
            }
        }
        let _ = dir.close();
    }
}

/// Mount points at or below `dir`, from /proc/self/mountinfo.
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| p == &prefix || p.starts_with(&format!("{prefix}/")))
        .collect()
}

/// `len` bytes that gzip cannot shrink (xorshift), so a layer is as big as its file.
fn incompressible(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

// ---------------------------------------------------------------------------
// A TCP proxy that breaks one connection

/// Forwards loopback TCP connections to `upstream`, and cuts the first connection
/// that has carried more than `cut_after` bytes towards the registry: a network
/// failure in the middle of a blob upload.
struct FaultyProxy {
    addr: SocketAddr,
    armed: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultyProxy {
    async fn start(upstream: SocketAddr, cut_after: usize) -> FaultyProxy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let armed = Arc::new(AtomicBool::new(true));
        let armed_in_task = Arc::clone(&armed);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let armed = Arc::clone(&armed_in_task);
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let up = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        let mut total = 0;
                        loop {
                            let n = client_read.read(&mut buf).await?;
                            if n == 0 {
                                break;
                            }
                            total += n;
                            if total > cut_after && armed.swap(false, Ordering::SeqCst) {
                                // Dropping both halves closes both connections.
                                return Err(std::io::Error::other("cut by the test proxy"));
                            }
                            server_write.write_all(&buf[..n]).await?;
                        }
                        server_write.shutdown().await
                    };
                    let down = async {
                        tokio::io::copy(&mut server_read, &mut client_write).await?;
                        client_write.shutdown().await
                    };
                    let _ = tokio::try_join!(up, down);
                });
            }
        });
        FaultyProxy { addr, armed, task }
    }

    fn has_cut(&self) -> bool {
        !self.armed.load(Ordering::SeqCst)
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------
// skopeo

fn skopeo_raw(image: &str) -> Vec<u8> {
    require_tool("skopeo", "skopeo");
    run(Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{image}")))
}

// ---------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn push_by_digest_then_assemble_an_index() {
    let registry = TestRegistry::start();
    let buildah = Buildah::new();
    let layout = buildah.build_layout("helix-test-app", "linux/arm64", "hello arm64\n");
    let client = registry.client(AuthSource::Anonymous);
    let destination = registry.image("test/app:ignored-tag");

    let result = client
        .push_layout(&layout.dir, Some(&layout.name), &destination)
        .await
        .expect("push the layout");

    // The digest is that of the manifest bytes in the layout.
    let index_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.dir.join("index.json")).expect("read"))
            .expect("index.json");
    let layout_digest = index_json["manifests"][0]["digest"]
        .as_str()
        .expect("a digest")
        .to_owned();
    let manifest_bytes = std::fs::read(
        layout
            .dir
            .join("blobs/sha256")
            .join(layout_digest.trim_start_matches("sha256:")),
    )
    .expect("read the manifest blob");
    assert_eq!(result.digest, Digest::sha256_of(&manifest_bytes));
    assert_eq!(result.digest.as_str(), layout_digest);
    assert_eq!(result.size, manifest_bytes.len() as u64);
    assert_eq!(result.media_type, OCI_MANIFEST);
    // Config and layer were uploaded.
    assert_eq!(
        registry.uploads_started("test/app"),
        2,
        "{}",
        registry.log_text()
    );

    // The registry holds exactly those bytes under the digest, and no tag was pushed.
    let by_digest = format!("{}/test/app@{}", registry.host(), result.digest);
    assert_eq!(skopeo_raw(&by_digest), manifest_bytes);
    assert_eq!(
        http_status(registry.addr, "/v2/test/app/manifests/ignored-tag"),
        Some(404),
        "pushing by digest must not tag"
    );

    // The coordinator's view: manifest, then the platform from the config.
    let pinned = registry
        .image("test/app")
        .with_digest(result.digest.clone());
    let fetched = client.fetch_manifest(&pinned).await.expect("fetch");
    assert_eq!(fetched.bytes, manifest_bytes);
    assert_eq!(fetched.media_type, OCI_MANIFEST);
    assert_eq!(fetched.digest, result.digest);
    let platform = client.image_platform(&pinned).await.expect("platform");
    assert_eq!(
        (platform.os.as_str(), platform.architecture.as_str()),
        ("linux", "arm64")
    );
    let arm64: Platform = "linux/arm64".parse().expect("valid");
    assert_eq!(platform.to_platform(), Ok(arm64.clone()));

    // Pushing again uploads nothing and gives the same result.
    let again = client
        .push_layout(&layout.dir, Some(&layout.name), &destination)
        .await
        .expect("push again");
    assert_eq!(again, result);
    assert_eq!(
        registry.uploads_started("test/app"),
        2,
        "the second push must skip blobs the registry has"
    );

    // Existence, by digest.
    assert!(client.manifest_exists(&pinned).await.expect("exists"));
    let absent = registry
        .image("test/app")
        .with_digest(Digest::sha256_of(b"no such manifest"));
    assert!(!client.manifest_exists(&absent).await.expect("absent"));
    let err = client.fetch_manifest(&absent).await.expect_err("absent");
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
    assert!(!err.is_retryable());

    // The index, under the tag, byte for byte.
    let index = ImageIndex::new([(arm64, result.clone())]).expect("index");
    let bytes = index.to_json();
    let tag_ref = registry.image("test/app:v1");
    let index_digest = client
        .push_index(&tag_ref, &bytes, index.media_type())
        .await
        .expect("push the index");
    assert_eq!(index_digest, index.digest());
    assert_eq!(
        skopeo_raw(&format!("{}/test/app:v1", registry.host())),
        bytes
    );

    // The index is not an image: fetching works, asking its platform does not.
    let index_ref = registry.image("test/app").with_digest(index_digest);
    let fetched = client
        .fetch_manifest(&index_ref)
        .await
        .expect("fetch index");
    assert_eq!(fetched.media_type, OCI_INDEX);
    assert_eq!(fetched.bytes, bytes);
    let err = client
        .image_platform(&index_ref)
        .await
        .expect_err("an index has no platform");
    assert!(
        matches!(err, RegistryError::UnsupportedMediaType { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn a_large_layer_goes_up_in_4_mib_chunks() {
    let registry = TestRegistry::start();
    let buildah = Buildah::new();
    let layout = buildah.build_layout("helix-test-big", "linux/amd64", incompressible(9 << 20));
    let client = registry.client(AuthSource::Anonymous);
    let result = client
        .push_layout(&layout.dir, Some(&layout.name), &registry.image("test/big"))
        .await
        .expect("push a 9 MiB layer");
    // The layer takes three PATCHes (4 + 4 + 1 MiB), the config one.
    assert_eq!(
        registry.chunks_received("test/big"),
        4,
        "{}",
        registry.log_text()
    );
    let pinned = registry
        .image("test/big")
        .with_digest(result.digest.clone());
    assert_eq!(
        client
            .image_platform(&pinned)
            .await
            .expect("platform")
            .to_string(),
        "linux/amd64"
    );
}

#[tokio::test]
async fn a_blob_upload_cut_by_the_network_is_retried_from_the_file() {
    let registry = TestRegistry::start();
    let buildah = Buildah::new();
    let layout = buildah.build_layout("helix-test-retry", "linux/arm64", incompressible(6 << 20));
    // Cut the connection once, 2 MiB into the layer's upload.
    let proxy = FaultyProxy::start(registry.addr, 2 << 20).await;
    let host = proxy.addr.to_string();
    let client = Registry::new(RegistryOptions {
        insecure: vec![host.clone()],
        auth: AuthSource::Anonymous,
        ..RegistryOptions::default()
    })
    .expect("client");
    let destination: ImageRef = format!("{host}/test/retry").parse().expect("valid");
    let result = client
        .push_layout(&layout.dir, Some(&layout.name), &destination)
        .await
        .expect("the retry succeeds");
    assert!(proxy.has_cut(), "the proxy never cut a connection");
    // Config once, layer twice: the retry started a new upload, reading the file again.
    assert_eq!(
        registry.uploads_started("test/retry"),
        3,
        "{}",
        registry.log_text()
    );
    let manifest_path = layout.dir.join("blobs/sha256").join(result.digest.hex());
    let expected = std::fs::read(manifest_path).expect("read manifest");
    assert_eq!(
        skopeo_raw(&format!("{}/test/retry@{}", registry.host(), result.digest)),
        expected
    );
}

#[tokio::test]
async fn a_corrupt_layout_is_refused_naming_the_blob() {
    let registry = TestRegistry::start();
    let buildah = Buildah::new();
    let layout = buildah.build_layout("helix-test-corrupt", "linux/amd64", "soon corrupt\n");
    let client = registry.client(AuthSource::Anonymous);
    let image = helix_registry::OciLayout::open(&layout.dir)
        .expect("layout")
        .image(Some(&layout.name))
        .expect("image");
    let layer = image.layers[0].digest.clone();
    let path = layout.dir.join("blobs/sha256").join(layer.hex());
    let mut bytes = std::fs::read(&path).expect("read layer");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).expect("corrupt the layer");

    let err = client
        .push_layout(
            &layout.dir,
            Some(&layout.name),
            &registry.image("test/corrupt"),
        )
        .await
        .expect_err("a corrupt layer must not be pushed");
    assert!(
        matches!(err, RegistryError::Layout(LayoutError::Corrupt { .. })),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(layer.as_str()),
        "the error names the blob: {msg}"
    );
    assert!(!err.is_retryable());
    // Nothing was committed under the manifest.
    let pinned = registry
        .image("test/corrupt")
        .with_digest(image.manifest.digest.clone());
    assert!(!client.manifest_exists(&pinned).await.expect("check"));
    assert_eq!(
        http_status(registry.addr, &format!("/v2/test/corrupt/blobs/{layer}")),
        Some(404),
        "the corrupt layer must not be committed"
    );
}

#[tokio::test]
async fn an_unreachable_registry_is_a_retryable_failure() {
    let buildah = Buildah::new();
    let layout = buildah.build_layout("helix-test-unreachable", "linux/amd64", "nowhere\n");
    // A port nothing listens on.
    let host = format!("127.0.0.1:{}", free_port());
    let client = Registry::new(RegistryOptions {
        insecure: vec![host.clone()],
        auth: AuthSource::Anonymous,
        ..RegistryOptions::default()
    })
    .expect("client");
    let destination: ImageRef = format!("{host}/test/app").parse().expect("valid");
    let err = client
        .push_layout(&layout.dir, Some(&layout.name), &destination)
        .await
        .expect_err("nothing listens there");
    assert!(matches!(err, RegistryError::Unreachable { .. }), "{err:?}");
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains(&host), "{err}");

    // "Cannot tell" is not "absent".
    let pinned = destination.with_digest(Digest::sha256_of(b"x"));
    let err = client
        .manifest_exists(&pinned)
        .await
        .expect_err("cannot tell");
    assert!(err.is_retryable(), "{err}");
}

#[tokio::test]
async fn https_to_a_plain_http_registry_points_at_the_insecure_list() {
    let registry = TestRegistry::start();
    let buildah = Buildah::new();
    let layout = buildah.build_layout("helix-test-https", "linux/amd64", "tls?\n");
    // The registry is not listed as insecure, so the client speaks HTTPS to it.
    let client = Registry::new(RegistryOptions {
        insecure: Vec::new(),
        auth: AuthSource::Anonymous,
        ..RegistryOptions::default()
    })
    .expect("client");
    let err = client
        .push_layout(&layout.dir, Some(&layout.name), &registry.image("test/app"))
        .await
        .expect_err("TLS to a plain-HTTP port fails");
    assert!(matches!(err, RegistryError::Unreachable { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("insecure") && msg.contains(&registry.host()),
        "{msg}"
    );
}

#[tokio::test]
async fn credentials_come_from_the_auth_file() {
    let registry = TestRegistry::start_with_htpasswd();
    let buildah = Buildah::new();
    let layout = buildah.build_layout("helix-test-auth", "linux/arm64", "secret\n");
    let destination = registry.image("test/private");

    // Anonymous: refused, and not worth retrying elsewhere as is.
    let err = registry
        .client(AuthSource::Anonymous)
        .push_layout(&layout.dir, Some(&layout.name), &destination)
        .await
        .expect_err("anonymous push to an authenticated registry");
    assert!(matches!(err, RegistryError::AuthRefused { .. }), "{err:?}");
    assert!(!err.is_retryable());
    let msg = err.to_string();
    assert!(
        msg.contains("podman login") && msg.contains("no credentials"),
        "{msg}"
    );

    // The podman convention: an auth.json named by REGISTRY_AUTH_FILE.
    let auth_dir = tempfile::tempdir().expect("tempdir");
    let write_auth = |password: &str| {
        let path = auth_dir.path().join(format!("auth-{password}.json"));
        std::fs::write(
            &path,
            format!(
                r#"{{"auths": {{"{}": {{"username": "{HTPASSWD_USER}", "password": "{password}"}}}}}}"#,
                registry.host()
            ),
        )
        .expect("write auth file");
        AuthSource::Files(AuthEnv {
            registry_auth_file: Some(path),
            ..AuthEnv::default()
        })
    };

    let wrong = registry
        .client(write_auth("wrong"))
        .push_layout(&layout.dir, Some(&layout.name), &destination)
        .await
        .expect_err("wrong password");
    assert!(
        matches!(wrong, RegistryError::AuthRefused { .. }),
        "{wrong:?}"
    );
    let msg = wrong.to_string();
    assert!(
        msg.contains("user \"helix\" from") && msg.contains("auth-wrong.json"),
        "the error says which credentials were used: {msg}"
    );

    let client = registry.client(write_auth(HTPASSWD_PASSWORD));
    let result = client
        .push_layout(&layout.dir, Some(&layout.name), &destination)
        .await
        .expect("push with credentials");
    let pinned = destination.with_digest(result.digest.clone());
    let platform = client.image_platform(&pinned).await.expect("platform");
    assert_eq!(platform.to_string(), "linux/arm64");
    assert!(client.manifest_exists(&pinned).await.expect("exists"));
    let index = ImageIndex::new([("linux/arm64".parse().expect("valid"), result)]).expect("index");
    client
        .push_index(
            &registry.image("test/private:v1"),
            &index.to_json(),
            index.media_type(),
        )
        .await
        .expect("push the index with credentials");
}
