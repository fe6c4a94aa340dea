//! [`Buildah`]: the default backend, [`Backend`] with buildah's command lines.
//!
//! One storage for every platform (`DATA/storage/root`, `DATA/storage/runroot`):
//! `buildah build` keeps no layer cache unless asked (`--layers`), so images of two
//! platforms never mix there. A job:
//!
//! ```text
//! buildah --root R --runroot RR build --isolation chroot --platform P -f DOCKERFILE
//!         [--build-arg K=V]... [--target T] [--label K=V]... [--no-cache]
//!         -t helix-JOB-ATTEMPT CONTEXT
//! buildah --root R --runroot RR push helix-JOB-ATTEMPT oci:WORKDIR/layout:helix-JOB-ATTEMPT
//! buildah --root R --runroot RR rmi -f helix-JOB-ATTEMPT
//! ```

use std::path::Path;
use std::sync::Arc;

use helix_protocol::Platform;

use super::backend::{in_storage, oci_layout_destination, with_build_options};
use super::{Backend, BuildRequest, CommandRunner, CommandSpec, Commands, Storage};

/// The program.
const BUILDAH: &str = "buildah";

/// buildah's command lines.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuildahCommands;

/// The buildah backend.
pub type Buildah = Backend<BuildahCommands>;

impl Buildah {
    /// A backend keeping its images under `storage` (`storage/root`,
    /// `storage/runroot`).
    pub fn new(storage: &Path, runner: Arc<dyn CommandRunner>) -> Buildah {
        Backend::with_commands(BuildahCommands, storage, runner)
    }
}

impl Commands for BuildahCommands {
    const PROGRAM: &'static str = BUILDAH;

    fn storage(&self, storage_dir: &Path, _platform: &Platform) -> Storage {
        Storage::in_dir(storage_dir)
    }

    fn storages(&self, storage_dir: &Path) -> Vec<Storage> {
        vec![Storage::in_dir(storage_dir)]
    }

    fn build(&self, storage: &Storage, req: &BuildRequest) -> CommandSpec {
        let cmd = in_storage(BUILDAH, storage).args(["build", "--isolation", "chroot"]);
        with_build_options(cmd, req)
    }

    fn export(&self, storage: &Storage, image: &str, layout_dir: &Path) -> CommandSpec {
        in_storage(BUILDAH, storage)
            .arg("push")
            .arg(image)
            .arg(oci_layout_destination(layout_dir, image))
    }

    fn remove_image(&self, storage: &Storage, image: &str) -> CommandSpec {
        in_storage(BUILDAH, storage).args(["rmi", "-f", image])
    }

    fn list_containers(&self, storage: &Storage) -> CommandSpec {
        in_storage(BUILDAH, storage).args(["containers", "--all", "--quiet", "--notruncate"])
    }

    fn remove_containers(&self, storage: &Storage, ids: &[String]) -> CommandSpec {
        in_storage(BUILDAH, storage)
            .arg("rm")
            .args(ids.iter().cloned())
    }

    fn list_images(&self, storage: &Storage) -> CommandSpec {
        in_storage(BUILDAH, storage).args(["images", "--json"])
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::builder::fake::{FakeRunner, Reply};
    use crate::builder::{BuildError, BuildStep, Builder, CaptureSink, ExitStatus};

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
        // One storage whatever the platform.
        for platform in ["linux/arm64", "linux/amd64", "linux/arm/v7"] {
            let platform: Platform = platform.parse().expect("platform");
            let export =
                b.export_command(&platform, "helix-j-1", Path::new("/data/work/j-1/layout"));
            let mut expected = STORAGE.to_vec();
            expected.extend(["push", "helix-j-1", "oci:/data/work/j-1/layout:helix-j-1"]);
            assert_eq!(export.args, expected);
            let mut expected = STORAGE.to_vec();
            expected.extend(["rmi", "-f", "helix-j-1"]);
            assert_eq!(b.remove_command(&platform, "helix-j-1").args, expected);
        }
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
    async fn prune_removes_leftover_containers_and_helix_images_only() {
        let runner = Arc::new(FakeRunner::replying(|cmd| match cmd.args[4].as_str() {
            "containers" => Reply::ok("0f1e2d\n9a8b7c\n"),
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
            .map(|c| {
                assert_eq!(c.args[..4], STORAGE);
                c.args[4..].to_vec()
            })
            .collect();
        assert_eq!(
            calls,
            [
                vec!["containers", "--all", "--quiet", "--notruncate"],
                vec!["rm", "0f1e2d", "9a8b7c"],
                vec!["images", "--json"],
                vec!["rmi", "-f", "localhost/helix-0b1c-2:latest"],
            ]
        );

        // No leftovers: nothing removed.
        let runner = Arc::new(FakeRunner::default());
        buildah(runner.clone()).prune().await;
        let calls: Vec<String> = runner.calls().iter().map(|c| c.args[4].clone()).collect();
        assert_eq!(calls, ["containers", "images"]);
    }
}
