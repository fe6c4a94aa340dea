//! [`Buildah`]: the default (and for now only) backend.
//!
//! Every call names the agent's own image storage (`--root DATA/storage/root
//! --runroot DATA/storage/runroot`), so two agents on one machine never share, lock or
//! prune each other's layer cache, and the host's own store is left alone. A job:
//!
//! ```text
//! buildah build --isolation chroot --platform P -f DOCKERFILE [--build-arg K=V]...
//!               [--target T] [--label K=V]... [--no-cache] -t helix-JOB-ATTEMPT CONTEXT
//! buildah push helix-JOB-ATTEMPT oci:WORKDIR/layout:helix-JOB-ATTEMPT
//! buildah rmi -f helix-JOB-ATTEMPT
//! ```
//!
//! The image goes to an OCI layout and is pushed from there by the agent's own client:
//! `buildah push` to a registry by digest rewrites the manifest, so the digest it
//! reports is not the one a registry stores.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{
    BoxFuture, BuildError, BuildRequest, BuildStep, Builder, BuiltImage, CaptureSink,
    CommandRunner, CommandSpec, LogSink,
};

/// The program.
const BUILDAH: &str = "buildah";

/// The backend, with its storage and the runner it drives buildah through.
#[derive(Debug, Clone)]
pub struct Buildah {
    root: PathBuf,
    runroot: PathBuf,
    runner: Arc<dyn CommandRunner>,
}

/// Why buildah cannot be used on this host.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildahUnavailable {
    #[error("buildah is not installed: apt-get install buildah")]
    NotInstalled,
    #[error("buildah does not run (`buildah --version` {0}): reinstall it with apt-get install --reinstall buildah")]
    Broken(String),
}

/// Checks that `buildah` exists and runs; returns its version line.
pub async fn check_installed() -> Result<String, BuildahUnavailable> {
    let output = tokio::process::Command::new(BUILDAH)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    match output {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BuildahUnavailable::NotInstalled),
        Err(e) => Err(BuildahUnavailable::Broken(format!("could not start: {e}"))),
        Ok(out) if !out.status.success() => Err(BuildahUnavailable::Broken(format!(
            "failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
        Ok(out) => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
    }
}

impl Buildah {
    /// A backend keeping its images under `storage` (`storage/root`,
    /// `storage/runroot`).
    pub fn new(storage: &Path, runner: Arc<dyn CommandRunner>) -> Buildah {
        Buildah {
            root: storage.join("root"),
            runroot: storage.join("runroot"),
            runner,
        }
    }

    /// `buildah --root R --runroot RR`: the start of every command.
    fn command(&self) -> CommandSpec {
        CommandSpec::new(BUILDAH)
            .arg("--root")
            .arg(self.root.display().to_string())
            .arg("--runroot")
            .arg(self.runroot.display().to_string())
    }

    /// The `buildah build` command for `req`. Build args and labels come sorted (they
    /// are `BTreeMap`s), so the same request always gives the same command line.
    pub fn build_command(&self, req: &BuildRequest) -> CommandSpec {
        let mut cmd = self
            .command()
            .args(["build", "--isolation", "chroot", "--platform"])
            .arg(req.platform.to_string())
            .arg("-f")
            .arg(req.dockerfile.display().to_string());
        for (key, value) in &req.build_args {
            cmd = cmd.arg("--build-arg").arg(format!("{key}={value}"));
        }
        if let Some(target) = &req.target {
            cmd = cmd.arg("--target").arg(target.clone());
        }
        for (key, value) in &req.labels {
            cmd = cmd.arg("--label").arg(format!("{key}={value}"));
        }
        if req.no_cache {
            cmd = cmd.arg("--no-cache");
        }
        cmd.arg("-t")
            .arg(req.image.clone())
            .arg(req.context.display().to_string())
            .cwd(req.context.clone())
    }

    /// `buildah push IMAGE oci:LAYOUT:IMAGE`: the image into an OCI layout.
    pub fn export_command(&self, image: &str, layout_dir: &Path) -> CommandSpec {
        self.command()
            .arg("push")
            .arg(image)
            .arg(format!("oci:{}:{image}", layout_dir.display()))
    }

    /// `buildah rmi -f IMAGE`.
    pub fn remove_command(&self, image: &str) -> CommandSpec {
        self.command().args(["rmi", "-f", image])
    }

    async fn run_step(
        &self,
        step: BuildStep,
        name: &str,
        cmd: &CommandSpec,
        log: &dyn LogSink,
        cancel: &CancellationToken,
    ) -> Result<(), BuildError> {
        log.write(format!("$ {}\n", cmd.display()).as_bytes()).await;
        let done = self.runner.run(cmd, log, cancel).await?;
        if done.cancelled {
            return Err(BuildError::Cancelled);
        }
        if !done.status.success() {
            return Err(BuildError::Failed {
                step,
                command: name.to_string(),
                status: done.status,
                tail: done.tail,
            });
        }
        Ok(())
    }

    async fn build_inner(
        &self,
        req: &BuildRequest,
        log: &dyn LogSink,
        cancel: &CancellationToken,
    ) -> Result<BuiltImage, BuildError> {
        self.run_step(
            BuildStep::Build,
            "buildah build",
            &self.build_command(req),
            log,
            cancel,
        )
        .await?;
        self.run_step(
            BuildStep::Export,
            "buildah push",
            &self.export_command(&req.image, &req.layout_dir),
            log,
            cancel,
        )
        .await?;
        Ok(BuiltImage {
            layout_dir: req.layout_dir.clone(),
            name_in_layout: req.image.clone(),
        })
    }

    async fn remove_inner(&self, image: &str, log: &dyn LogSink) {
        let cmd = self.remove_command(image);
        // Not cancellable: it is the cleanup after a cancel.
        let never = CancellationToken::new();
        match self.runner.run(&cmd, log, &never).await {
            Ok(done) if done.status.success() => debug!(image, "removed the local image"),
            // There is nothing to remove when the build failed early.
            Ok(done) => debug!(image, "buildah rmi {}: {}", done.status, done.tail),
            Err(e) => warn!(image, "cannot remove the local image: {e}"),
        }
    }

    /// Containers and `helix-*` images of jobs an earlier run of the agent did not
    /// finish. The storage is this agent's alone and no job runs yet, so everything
    /// there that is not a finished image is a leftover.
    async fn prune_inner(&self) {
        let quiet = CaptureSink::default();
        let never = CancellationToken::new();
        let rm = self.command().args(["rm", "--all"]);
        if let Err(e) = self.runner.run(&rm, &quiet, &never).await {
            warn!("cannot remove leftover build containers: {e}");
            return;
        }
        let list = self.command().args(["images", "--json"]);
        let listed = CaptureSink::default();
        match self.runner.run(&list, &listed, &never).await {
            Ok(done) if done.status.success() => {}
            Ok(done) => {
                warn!("buildah images {}: {}", done.status, done.tail);
                return;
            }
            Err(e) => {
                warn!("cannot list leftover images: {e}");
                return;
            }
        }
        for image in leftover_images(&listed.contents()) {
            info!(%image, "removing an image left by an unfinished job");
            self.remove_inner(&image, &quiet).await;
        }
    }
}

/// The names of `helix-*` images in `buildah images --json` output.
fn leftover_images(json: &[u8]) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Image {
        #[serde(default)]
        names: Option<Vec<String>>,
    }
    let images: Vec<Image> = match serde_json::from_slice(json) {
        Ok(images) => images,
        // No images at all prints nothing (or `[]`) depending on the version.
        Err(_) => return Vec::new(),
    };
    images
        .into_iter()
        .flat_map(|i| i.names.unwrap_or_default())
        .filter(|name| {
            let short = name.rsplit('/').next().unwrap_or(name);
            short.starts_with("helix-")
        })
        .collect()
}

impl Builder for Buildah {
    fn name(&self) -> &'static str {
        BUILDAH
    }

    fn build<'a>(
        &'a self,
        req: &'a BuildRequest,
        log: &'a dyn LogSink,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<BuiltImage, BuildError>> {
        Box::pin(self.build_inner(req, log, cancel))
    }

    fn remove_image<'a>(&'a self, image: &'a str, log: &'a dyn LogSink) -> BoxFuture<'a, ()> {
        Box::pin(self.remove_inner(image, log))
    }

    fn prune<'a>(&'a self) -> BoxFuture<'a, ()> {
        Box::pin(self.prune_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::builder::fake::{FakeRunner, Reply};
    use crate::builder::ExitStatus;

    fn request() -> BuildRequest {
        BuildRequest {
            context: "/data/work/j-1/src".into(),
            dockerfile: "/data/work/j-1/src/docker/Dockerfile".into(),
            platform: "linux/arm64".parse().expect("platform"),
            build_args: BTreeMap::new(),
            target: None,
            labels: BTreeMap::new(),
            no_cache: false,
            image: "helix-j-1".into(),
            layout_dir: "/data/work/j-1/layout".into(),
        }
    }

    fn buildah(runner: Arc<FakeRunner>) -> Buildah {
        Buildah::new(Path::new("/data/storage"), runner)
    }

    #[track_caller]
    fn check(req: &BuildRequest, expected: &[&str]) {
        let cmd = buildah(Arc::new(FakeRunner::default())).build_command(req);
        assert_eq!(cmd.program, "buildah");
        assert_eq!(cmd.args, expected);
        assert_eq!(cmd.cwd.as_deref(), Some(req.context.as_path()));
    }

    const STORAGE: [&str; 4] = [
        "--root",
        "/data/storage/root",
        "--runroot",
        "/data/storage/runroot",
    ];

    #[test]
    fn a_plain_build() {
        let mut expected = STORAGE.to_vec();
        expected.extend([
            "build",
            "--isolation",
            "chroot",
            "--platform",
            "linux/arm64",
            "-f",
            "/data/work/j-1/src/docker/Dockerfile",
            "-t",
            "helix-j-1",
            "/data/work/j-1/src",
        ]);
        check(&request(), &expected);
    }

    #[test]
    fn every_option_in_a_stable_order() {
        let mut req = request();
        req.platform = "linux/arm/v7".parse().expect("platform");
        // Inserted out of order: the command line is sorted.
        req.build_args.insert("VERSION".into(), "1.2".into());
        req.build_args.insert("A_FIRST".into(), "x=y".into());
        req.target = Some("runtime".into());
        req.labels
            .insert("org.opencontainers.image.title".into(), "app".into());
        req.labels.insert("maintainer".into(), "ops team".into());
        req.no_cache = true;
        let mut expected = STORAGE.to_vec();
        expected.extend([
            "build",
            "--isolation",
            "chroot",
            "--platform",
            "linux/arm/v7",
            "-f",
            "/data/work/j-1/src/docker/Dockerfile",
            "--build-arg",
            "A_FIRST=x=y",
            "--build-arg",
            "VERSION=1.2",
            "--target",
            "runtime",
            "--label",
            "maintainer=ops team",
            "--label",
            "org.opencontainers.image.title=app",
            "--no-cache",
            "-t",
            "helix-j-1",
            "/data/work/j-1/src",
        ]);
        check(&req, &expected);
    }

    #[test]
    fn export_and_remove_use_the_same_storage() {
        let b = buildah(Arc::new(FakeRunner::default()));
        let export = b.export_command("helix-j-1", Path::new("/data/work/j-1/layout"));
        let mut expected = STORAGE.to_vec();
        expected.extend(["push", "helix-j-1", "oci:/data/work/j-1/layout:helix-j-1"]);
        assert_eq!(export.args, expected);
        let mut expected = STORAGE.to_vec();
        expected.extend(["rmi", "-f", "helix-j-1"]);
        assert_eq!(b.remove_command("helix-j-1").args, expected);
    }

    #[tokio::test]
    async fn build_then_export_and_report_the_failing_step() {
        let log = CaptureSink::default();
        let never = CancellationToken::new();

        let runner = Arc::new(FakeRunner::default());
        let b = buildah(runner.clone());
        let built = b.build(&request(), &log, &never).await.expect("built");
        assert_eq!(built.name_in_layout, "helix-j-1");
        assert_eq!(built.layout_dir, Path::new("/data/work/j-1/layout"));
        let calls = runner.calls();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].args[4], "build");
        assert_eq!(calls[1].args[4], "push");
        let text = String::from_utf8(log.contents()).expect("utf8");
        assert!(
            text.contains("$ buildah --root /data/storage/root"),
            "{text}"
        );

        let runner = Arc::new(FakeRunner::replying(|cmd| {
            if cmd.args[4] == "build" {
                Reply::exit(1, "STEP 2/2: COPY missing.txt /\nError: no such file\n")
            } else {
                Reply::ok("")
            }
        }));
        let b = buildah(runner.clone());
        let err = b.build(&request(), &log, &never).await.expect_err("fails");
        match err {
            BuildError::Failed {
                step,
                command,
                status,
                tail,
            } => {
                assert_eq!(step, BuildStep::Build);
                assert_eq!(command, "buildah build");
                assert_eq!(status, ExitStatus::Code(1));
                assert!(tail.ends_with("Error: no such file"), "{tail}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(runner.calls().len(), 1, "no export after a failed build");

        let runner = Arc::new(FakeRunner::replying(|cmd| {
            if cmd.args[4] == "push" {
                Reply::signal(9, "")
            } else {
                Reply::ok("")
            }
        }));
        let err = buildah(runner)
            .build(&request(), &log, &never)
            .await
            .expect_err("fails");
        assert!(
            matches!(
                err,
                BuildError::Failed {
                    step: BuildStep::Export,
                    status: ExitStatus::Signal(9),
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn prune_removes_leftover_helix_images_only() {
        let runner = Arc::new(FakeRunner::replying(|cmd| match cmd.args[4].as_str() {
            "images" => Reply::ok(
                r#"[{"id":"a","names":["localhost/helix-0b1c-2:latest"]},
                    {"id":"b","names":["docker.io/library/alpine:3"]},
                    {"id":"c","names":null}]"#,
            ),
            _ => Reply::ok(""),
        }));
        buildah(runner.clone()).prune().await;
        let calls: Vec<Vec<String>> = runner
            .calls()
            .into_iter()
            .map(|c| c.args[4..].to_vec())
            .collect();
        assert_eq!(
            calls,
            [
                vec!["rm", "--all"],
                vec!["images", "--json"],
                vec!["rmi", "-f", "localhost/helix-0b1c-2:latest"],
            ]
        );
        assert!(leftover_images(b"").is_empty());
    }
}
