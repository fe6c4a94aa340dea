//! [`Podman`]: [`Backend`] with podman's command lines.
//!
//! A job (checked with podman 4.3 on Debian 12):
//!
//! ```text
//! podman --root R --runroot RR --tmpdir T build --isolation chroot --platform P
//!        -f DOCKERFILE [--build-arg K=V]... [--target T] [--label K=V]... [--no-cache]
//!        -t helix-JOB-ATTEMPT CONTEXT
//! podman --root R --runroot RR --tmpdir T push helix-JOB-ATTEMPT oci:WORKDIR/layout:helix-JOB-ATTEMPT
//! podman --root R --runroot RR --tmpdir T rmi -f helix-JOB-ATTEMPT
//! ```
//!
//! **One storage per platform** (`DATA/storage/podman/<os>-<arch>[-<variant>]/`, with
//! `root/`, `runroot/` and `tmp/`): `podman build` keeps a layer cache (`--layers` is
//! its default), and podman 4.3 hands back a cached image built for another platform.
//! A `FROM scratch` + `COPY` for `linux/arm64` right after the same build for
//! `linux/amd64` in the same storage returned the amd64 image. With a storage per
//! platform, one agent advertising several platforms builds each of them correctly
//! and keeps each one's cache warm.
//!
//! `--tmpdir` keeps podman's own state (locks, the "alive" marker) next to the storage
//! instead of the host-wide `/run/libpod` that the host's own podman uses.
//!
//! Build containers a killed build left behind are not podman's own containers
//! (`podman rm --all` skips them): they are listed with `ps --all --external` and
//! removed by id.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use helix_protocol::Platform;

use super::backend::{in_storage, oci_layout_destination, with_build_options};
use super::{Backend, BuildRequest, CommandRunner, CommandSpec, Commands, Storage};

/// The program.
const PODMAN: &str = "podman";

/// The directory under the agent's storage directory that holds podman's storages.
const PODMAN_DIR: &str = "podman";

/// podman's command lines.
#[derive(Debug, Clone, Copy, Default)]
pub struct PodmanCommands;

/// The podman backend.
pub type Podman = Backend<PodmanCommands>;

impl Podman {
    /// A backend keeping the images of each platform under
    /// `storage/podman/<os>-<arch>[-<variant>]/`.
    pub fn new(storage: &Path, runner: Arc<dyn CommandRunner>) -> Podman {
        Backend::with_commands(PodmanCommands, storage, runner)
    }
}

/// `os-arch[-variant]`: a platform as one directory name. Platforms are validated and
/// normalized when parsed; anything but letters, digits and `.` is replaced anyway.
pub fn platform_dir_name(platform: &Platform) -> String {
    let mut name = format!("{}-{}", platform.os(), platform.arch());
    if let Some(variant) = platform.variant() {
        name.push('-');
        name.push_str(variant);
    }
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Where podman keeps its run-time state. podman refuses a `--runroot` longer than 50
/// characters (its sockets live there), which a data dir of any depth exceeds, so the
/// runroot lives under `/run/helix-agent/` (a tmpfs, per boot) in a directory named
/// after a hash of the storage dir: short, and still one per agent and platform.
fn podman_storage(dir: &Path) -> Storage {
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(dir.as_os_str().as_encoded_bytes());
    let short: String = hash.iter().take(6).map(|b| format!("{b:02x}")).collect();
    Storage {
        root: dir.join("root"),
        runroot: Path::new(RUNROOT_BASE).join(short),
    }
}

/// The base of podman's short runroots.
const RUNROOT_BASE: &str = "/run/helix-agent";

/// `podman --root R --runroot RR --tmpdir DIR/tmp`.
fn podman(storage: &Storage) -> CommandSpec {
    in_storage(PODMAN, storage)
        .arg("--tmpdir")
        .arg(storage.dir().join("tmp").display().to_string())
}

impl Commands for PodmanCommands {
    const PROGRAM: &'static str = PODMAN;

    fn storage(&self, storage_dir: &Path, platform: &Platform) -> Storage {
        podman_storage(
            &storage_dir
                .join(PODMAN_DIR)
                .join(platform_dir_name(platform)),
        )
    }

    fn storages(&self, storage_dir: &Path) -> Vec<Storage> {
        let Ok(entries) = std::fs::read_dir(storage_dir.join(PODMAN_DIR)) else {
            return Vec::new();
        };
        let mut dirs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("root").is_dir())
            .collect();
        dirs.sort();
        dirs.iter().map(|d| podman_storage(d)).collect()
    }

    fn build(&self, storage: &Storage, req: &BuildRequest) -> CommandSpec {
        let cmd = podman(storage).args(["build", "--isolation", "chroot"]);
        with_build_options(cmd, req)
    }

    fn export(&self, storage: &Storage, image: &str, layout_dir: &Path) -> CommandSpec {
        podman(storage)
            .arg("push")
            .arg(image)
            .arg(oci_layout_destination(layout_dir, image))
    }

    fn remove_image(&self, storage: &Storage, image: &str) -> CommandSpec {
        podman(storage).args(["rmi", "-f", image])
    }

    fn list_containers(&self, storage: &Storage) -> CommandSpec {
        podman(storage).args(["ps", "--all", "--external", "--quiet", "--no-trunc"])
    }

    fn remove_containers(&self, storage: &Storage, ids: &[String]) -> CommandSpec {
        podman(storage)
            .args(["rm", "--force"])
            .args(ids.iter().cloned())
    }

    fn list_images(&self, storage: &Storage) -> CommandSpec {
        podman(storage).args(["images", "--format", "json"])
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::builder::fake::{FakeRunner, Reply};
    use crate::builder::{BuildError, BuildStep, Builder, CaptureSink, ExitStatus};
    use tokio_util::sync::CancellationToken;

    fn request(platform: &str) -> BuildRequest {
        BuildRequest {
            context: "/data/work/j-1/src".into(),
            dockerfile: "/data/work/j-1/src/Dockerfile".into(),
            platform: platform.parse().expect("platform"),
            build_args: BTreeMap::new(),
            target: None,
            labels: BTreeMap::new(),
            no_cache: false,
            image: "helix-j-1".into(),
            layout_dir: "/data/work/j-1/layout".into(),
        }
    }

    fn podman_in(runner: Arc<FakeRunner>) -> Podman {
        Podman::new(Path::new("/data/storage"), runner)
    }

    /// The storage flags of `platform_dir`.
    fn storage_args(platform_dir: &str) -> Vec<String> {
        let dir = format!("/data/storage/podman/{platform_dir}");
        let runroot = podman_storage(Path::new(&dir)).runroot;
        vec![
            "--root".into(),
            format!("{dir}/root"),
            "--runroot".into(),
            runroot.display().to_string(),
            "--tmpdir".into(),
            format!("{dir}/tmp"),
        ]
    }

    #[test]
    fn runroots_are_short_and_distinct() {
        let a = podman_storage(Path::new(
            "/var/lib/helix-agent/storage/podman/linux-arm-v7",
        ))
        .runroot;
        let b =
            podman_storage(Path::new("/var/lib/helix-agent/storage/podman/linux-arm64")).runroot;
        assert_ne!(a, b);
        for r in [a, b] {
            assert!(
                r.as_os_str().len() <= 50,
                "podman refuses runroots over 50 characters: {}",
                r.display()
            );
        }
    }

    #[track_caller]
    fn check(req: &BuildRequest, platform_dir: &str, rest: &[&str]) {
        let cmd = podman_in(Arc::new(FakeRunner::default())).build_command(req);
        assert_eq!(cmd.program, "podman");
        let mut expected = storage_args(platform_dir);
        expected.extend(rest.iter().map(|s| s.to_string()));
        assert_eq!(cmd.args, expected);
        assert_eq!(cmd.cwd.as_deref(), Some(req.context.as_path()));
    }

    #[test]
    fn each_platform_builds_in_its_own_storage() {
        for (platform, dir) in [
            ("linux/amd64", "linux-amd64"),
            ("linux/arm64", "linux-arm64"),
            ("linux/aarch64", "linux-arm64"),
            ("linux/arm64/v8", "linux-arm64"),
            ("linux/arm/v7", "linux-arm-v7"),
            ("linux/armhf", "linux-arm-v7"),
            ("linux/arm64/v8.2", "linux-arm64-v8.2"),
        ] {
            let req = request(platform);
            let normalized = req.platform.to_string();
            check(
                &req,
                dir,
                &[
                    "build",
                    "--isolation",
                    "chroot",
                    "--platform",
                    &normalized,
                    "-f",
                    "/data/work/j-1/src/Dockerfile",
                    "-t",
                    "helix-j-1",
                    "/data/work/j-1/src",
                ],
            );
        }
    }

    #[test]
    fn build_args_target_labels_and_no_cache() {
        let mut req = request("linux/amd64");
        req.build_args.insert("VERSION".into(), "1.2".into());
        req.build_args.insert("A_FIRST".into(), "x=y".into());
        req.target = Some("runtime".into());
        req.labels.insert("maintainer".into(), "ops team".into());
        req.no_cache = true;
        check(
            &req,
            "linux-amd64",
            &[
                "build",
                "--isolation",
                "chroot",
                "--platform",
                "linux/amd64",
                "-f",
                "/data/work/j-1/src/Dockerfile",
                "--build-arg",
                "A_FIRST=x=y",
                "--build-arg",
                "VERSION=1.2",
                "--target",
                "runtime",
                "--label",
                "maintainer=ops team",
                "--no-cache",
                "-t",
                "helix-j-1",
                "/data/work/j-1/src",
            ],
        );
        let shown = podman_in(Arc::new(FakeRunner::default()))
            .build_command(&req)
            .display();
        assert!(shown.contains("--build-arg VERSION=…"), "{shown}");
    }

    #[test]
    fn export_and_remove_use_the_platform_s_storage() {
        let p = podman_in(Arc::new(FakeRunner::default()));
        let arm: Platform = "linux/arm64".parse().expect("platform");
        let mut expected = storage_args("linux-arm64");
        expected
            .extend(["push", "helix-j-1", "oci:/data/work/j-1/layout:helix-j-1"].map(String::from));
        assert_eq!(
            p.export_command(&arm, "helix-j-1", Path::new("/data/work/j-1/layout"))
                .args,
            expected
        );
        let amd: Platform = "linux/amd64".parse().expect("platform");
        let mut expected = storage_args("linux-amd64");
        expected.extend(["rmi", "-f", "helix-j-1"].map(String::from));
        assert_eq!(p.remove_command(&amd, "helix-j-1").args, expected);
    }

    #[tokio::test]
    async fn a_build_exports_from_the_same_storage_and_names_podman_in_failures() {
        let log = CaptureSink::default();
        let never = CancellationToken::new();
        let runner = Arc::new(FakeRunner::default());
        let built = podman_in(runner.clone())
            .build(&request("linux/arm64"), &log, &never)
            .await
            .expect("built");
        assert_eq!(built.name_in_layout, "helix-j-1");
        let calls = runner.calls();
        assert_eq!(calls.len(), 2);
        for call in &calls {
            assert_eq!(call.args[..6], storage_args("linux-arm64"));
        }
        assert_eq!(calls[0].args[6], "build");
        assert_eq!(calls[1].args[6], "push");
        let text = String::from_utf8(log.contents()).expect("utf8");
        assert!(
            text.contains("$ podman --root /data/storage/podman/linux-arm64/root"),
            "{text}"
        );

        let runner = Arc::new(FakeRunner::replying(|cmd| {
            if cmd.args[6] == "build" {
                Reply::exit(125, "Error: no FROM statement found\n")
            } else {
                Reply::ok("")
            }
        }));
        let err = podman_in(runner)
            .build(&request("linux/amd64"), &log, &never)
            .await
            .expect_err("fails");
        match err {
            BuildError::Failed {
                step,
                command,
                status,
                ..
            } => {
                assert_eq!(step, BuildStep::Build);
                assert_eq!(command, "podman build");
                assert_eq!(status, ExitStatus::Code(125));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn prune_visits_every_platform_storage_and_external_containers() {
        let tmp = tempfile::tempdir().expect("tempdir");
        for dir in ["linux-amd64", "linux-arm64"] {
            std::fs::create_dir_all(tmp.path().join("podman").join(dir).join("root"))
                .expect("mkdir");
        }
        // Not a storage: no root/ in it.
        std::fs::create_dir_all(tmp.path().join("podman/stray")).expect("mkdir");
        let runner = Arc::new(FakeRunner::replying(|cmd| match cmd.args[6].as_str() {
            "ps" if cmd.args[1].contains("linux-amd64") => Reply::ok("c0ffee\n"),
            "images" if cmd.args[1].contains("linux-arm64") => Reply::ok(
                r#"[{"Id":"1","Names":["localhost/helix-x-3:latest"]},{"Id":"2","Names":["quay.io/a/b:1"]}]"#,
            ),
            _ => Reply::ok(""),
        }));
        Podman::new(tmp.path(), runner.clone()).prune().await;
        let calls: Vec<(String, Vec<String>)> = runner
            .calls()
            .into_iter()
            .map(|c| {
                let dir = Path::new(&c.args[1])
                    .parent()
                    .and_then(|p| p.file_name())
                    .expect("storage dir")
                    .to_string_lossy()
                    .into_owned();
                (dir, c.args[6..].to_vec())
            })
            .collect();
        let owned = |dir: &str, args: &[&str]| {
            (
                dir.to_string(),
                args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            calls,
            [
                owned(
                    "linux-amd64",
                    &["ps", "--all", "--external", "--quiet", "--no-trunc"]
                ),
                owned("linux-amd64", &["rm", "--force", "c0ffee"]),
                owned("linux-amd64", &["images", "--format", "json"]),
                owned(
                    "linux-arm64",
                    &["ps", "--all", "--external", "--quiet", "--no-trunc"]
                ),
                owned("linux-arm64", &["images", "--format", "json"]),
                owned("linux-arm64", &["rmi", "-f", "localhost/helix-x-3:latest"]),
            ]
        );

        // Nothing there yet: nothing to run.
        let empty = tempfile::tempdir().expect("tempdir");
        let runner = Arc::new(FakeRunner::default());
        Podman::new(empty.path(), runner.clone()).prune().await;
        assert!(runner.calls().is_empty());
    }
}
