//! [`Backend`]: a [`Builder`] driven through a container tool's command line, written
//! once for every tool; [`Commands`] is what differs between tools: their command
//! lines, and whether they need a storage per platform.
//!
//! Every call names the agent's own image storage (`--root R --runroot RR`), so two
//! agents on one machine never share, lock or prune each other's layer cache, and the
//! host's own store is left alone. A job is three commands:
//!
//! ```text
//! TOOL build ... -t helix-JOB-ATTEMPT CONTEXT          (BuildStep::Build)
//! TOOL push helix-JOB-ATTEMPT oci:LAYOUT:helix-JOB-ATTEMPT   (BuildStep::Export)
//! TOOL rmi -f helix-JOB-ATTEMPT                        (cleanup, best effort)
//! ```
//!
//! The image goes to an OCI layout and is pushed from there by the agent's own client:
//! a tool's own push to a registry by digest rewrites the manifest, so the digest it
//! reports is not the one a registry stores.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use helix_protocol::Platform;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{
    BoxFuture, BuildError, BuildRequest, BuildStep, Builder, BuiltImage, CaptureSink,
    CommandRunner, CommandSpec, LogSink,
};

/// One image storage of a tool: `--root` and `--runroot`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storage {
    pub root: PathBuf,
    pub runroot: PathBuf,
}

impl Storage {
    /// `dir/root` and `dir/runroot`.
    pub fn in_dir(dir: &Path) -> Storage {
        Storage {
            root: dir.join("root"),
            runroot: dir.join("runroot"),
        }
    }

    /// The directory holding `root/` and `runroot/`.
    pub fn dir(&self) -> &Path {
        self.root.parent().unwrap_or(&self.root)
    }
}

/// What sets one tool apart from another: its command lines, and where it keeps the
/// images of each platform. Everything else (steps, failures, cancel, cleanup, prune)
/// is [`Backend`]'s, the same for every tool.
pub trait Commands: Send + Sync + fmt::Debug + 'static {
    /// The program, also the backend's name in `Hello` (`buildah`, `podman`).
    const PROGRAM: &'static str;

    /// Where the images of `platform` are kept, under the agent's storage directory.
    fn storage(&self, storage_dir: &Path, platform: &Platform) -> Storage;

    /// Every storage under the agent's storage directory that may hold leftovers of
    /// an earlier run (they are pruned at start-up).
    fn storages(&self, storage_dir: &Path) -> Vec<Storage>;

    /// Builds `req` into the local image `req.image`.
    fn build(&self, storage: &Storage, req: &BuildRequest) -> CommandSpec;

    /// Writes the local image `image` to the OCI layout `layout_dir`, named `image`.
    fn export(&self, storage: &Storage, image: &str, layout_dir: &Path) -> CommandSpec;

    /// Removes the local image `image`.
    fn remove_image(&self, storage: &Storage, image: &str) -> CommandSpec;

    /// Prints the ids of every build container in the storage, one per line.
    fn list_containers(&self, storage: &Storage) -> CommandSpec;

    /// Removes the containers `ids`.
    fn remove_containers(&self, storage: &Storage, ids: &[String]) -> CommandSpec;

    /// Prints the storage's images as a JSON array of objects with their names
    /// (`names` or `Names`).
    fn list_images(&self, storage: &Storage) -> CommandSpec;
}

/// `program --root R --runroot RR`: the start of most commands.
pub(crate) fn in_storage(program: &str, storage: &Storage) -> CommandSpec {
    CommandSpec::new(program)
        .arg("--root")
        .arg(storage.root.display().to_string())
        .arg("--runroot")
        .arg(storage.runroot.display().to_string())
}

/// The options of `build` that buildah and podman spell alike, after `build`:
/// `--platform P -f DOCKERFILE [--build-arg K=V]... [--target T] [--label K=V]...
/// [--no-cache] -t IMAGE CONTEXT`, run in the context directory. Build args and labels
/// come sorted (they are `BTreeMap`s), so the same request always gives the same
/// command line.
pub(crate) fn with_build_options(mut cmd: CommandSpec, req: &BuildRequest) -> CommandSpec {
    cmd = cmd
        .arg("--platform")
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

/// `oci:LAYOUT:IMAGE`, the destination of an export.
pub(crate) fn oci_layout_destination(layout_dir: &Path, image: &str) -> String {
    format!("oci:{}:{image}", layout_dir.display())
}

/// Why the tool cannot be used on this host.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuilderUnavailable {
    #[error("{program} is not installed: apt-get install {program}")]
    NotInstalled { program: &'static str },
    #[error("{program} does not run (`{program} --version` {detail}): reinstall it with apt-get install --reinstall {program}")]
    Broken {
        program: &'static str,
        detail: String,
    },
}

/// Checks that `program` exists and runs; returns its version line.
pub async fn check_installed(program: &'static str) -> Result<String, BuilderUnavailable> {
    let mut command = tokio::process::Command::new(program);
    for name in super::process::PRIVATE_ENV {
        command.env_remove(name);
    }
    let output = command
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    let broken = |detail| BuilderUnavailable::Broken { program, detail };
    match output {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(BuilderUnavailable::NotInstalled { program })
        }
        Err(e) => Err(broken(format!("could not start: {e}"))),
        Ok(out) if !out.status.success() => Err(broken(format!(
            "failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
        Ok(out) => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
    }
}

/// A builder backend: the tool `T`, the agent's storage directory, and the runner the
/// tool is driven through.
#[derive(Debug, Clone)]
pub struct Backend<T> {
    commands: T,
    storage_dir: PathBuf,
    runner: Arc<dyn CommandRunner>,
}

impl<T: Commands> Backend<T> {
    /// A backend with `commands`, keeping its images under `storage_dir`.
    pub fn with_commands(
        commands: T,
        storage_dir: &Path,
        runner: Arc<dyn CommandRunner>,
    ) -> Backend<T> {
        Backend {
            commands,
            storage_dir: storage_dir.to_path_buf(),
            runner,
        }
    }

    /// The storage the images of `platform` go to.
    pub fn storage(&self, platform: &Platform) -> Storage {
        self.commands.storage(&self.storage_dir, platform)
    }

    /// The build command for `req`.
    pub fn build_command(&self, req: &BuildRequest) -> CommandSpec {
        self.commands.build(&self.storage(&req.platform), req)
    }

    /// The command writing `image` (built for `platform`) to the layout `layout_dir`.
    pub fn export_command(
        &self,
        platform: &Platform,
        image: &str,
        layout_dir: &Path,
    ) -> CommandSpec {
        self.commands
            .export(&self.storage(platform), image, layout_dir)
    }

    /// The command removing `image` (built for `platform`).
    pub fn remove_command(&self, platform: &Platform, image: &str) -> CommandSpec {
        self.commands.remove_image(&self.storage(platform), image)
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
            &format!("{} build", T::PROGRAM),
            &self.build_command(req),
            log,
            cancel,
        )
        .await?;
        self.run_step(
            BuildStep::Export,
            &format!("{} push", T::PROGRAM),
            &self.export_command(&req.platform, &req.image, &req.layout_dir),
            log,
            cancel,
        )
        .await?;
        Ok(BuiltImage {
            layout_dir: req.layout_dir.clone(),
            name_in_layout: req.image.clone(),
        })
    }

    async fn remove_in(&self, storage: &Storage, image: &str, log: &dyn LogSink) {
        let cmd = self.commands.remove_image(storage, image);
        // Not cancellable: it is the cleanup after a cancel.
        let never = CancellationToken::new();
        match self.runner.run(&cmd, log, &never).await {
            Ok(done) if done.status.success() => debug!(image, "removed the local image"),
            // There is nothing to remove when the build failed early.
            Ok(done) => debug!(image, "{} rmi {}: {}", T::PROGRAM, done.status, done.tail),
            Err(e) => warn!(image, "cannot remove the local image: {e}"),
        }
    }

    /// Build containers and `helix-*` images of jobs an earlier run of the agent did
    /// not finish, in every storage. The storages are this agent's alone and no job
    /// runs yet, so everything there that is not a finished image is a leftover.
    async fn prune_inner(&self) {
        for storage in self.commands.storages(&self.storage_dir) {
            self.prune_storage(&storage).await;
        }
    }

    async fn prune_storage(&self, storage: &Storage) {
        let program = T::PROGRAM;
        let quiet = CaptureSink::default();
        let never = CancellationToken::new();
        let Some(listed) = self
            .capture(
                &self.commands.list_containers(storage),
                "list leftover build containers",
            )
            .await
        else {
            return;
        };
        let ids: Vec<String> = String::from_utf8_lossy(&listed)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if !ids.is_empty() {
            info!(containers = ids.len(), storage = %storage.dir().display(), "removing build containers left by unfinished jobs");
            let rm = self.commands.remove_containers(storage, &ids);
            match self.runner.run(&rm, &quiet, &never).await {
                Ok(done) if done.status.success() => {}
                Ok(done) => warn!("{program} rm {}: {}", done.status, done.tail),
                Err(e) => warn!("cannot remove leftover build containers: {e}"),
            }
        }
        let Some(images) = self
            .capture(&self.commands.list_images(storage), "list leftover images")
            .await
        else {
            return;
        };
        for image in leftover_images(&images) {
            info!(%image, "removing an image left by an unfinished job");
            self.remove_in(storage, &image, &quiet).await;
        }
    }

    /// Runs `cmd` for its output; `None` (logged) if it failed.
    async fn capture(&self, cmd: &CommandSpec, what: &str) -> Option<Vec<u8>> {
        let out = CaptureSink::default();
        let never = CancellationToken::new();
        match self.runner.run(cmd, &out, &never).await {
            Ok(done) if done.status.success() => Some(out.contents()),
            Ok(done) => {
                warn!(
                    "cannot {what}: {} {}: {}",
                    T::PROGRAM,
                    done.status,
                    done.tail
                );
                None
            }
            Err(e) => {
                warn!("cannot {what}: {e}");
                None
            }
        }
    }
}

/// The names of `helix-*` images in `buildah images --json` (`names`) or
/// `podman images --format json` (`Names`) output.
pub(crate) fn leftover_images(json: &[u8]) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Image {
        #[serde(default, alias = "Names")]
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

impl<T: Commands> Builder for Backend<T> {
    fn name(&self) -> &'static str {
        T::PROGRAM
    }

    fn build<'a>(
        &'a self,
        req: &'a BuildRequest,
        log: &'a dyn LogSink,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<BuiltImage, BuildError>> {
        Box::pin(self.build_inner(req, log, cancel))
    }

    fn remove_image<'a>(
        &'a self,
        image: &'a str,
        platform: &'a Platform,
        log: &'a dyn LogSink,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move { self.remove_in(&self.storage(platform), image, log).await })
    }

    fn prune<'a>(&'a self) -> BoxFuture<'a, ()> {
        Box::pin(self.prune_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftover_images_are_read_from_either_tool() {
        let buildah = br#"[{"id":"a","names":["localhost/helix-0b1c-2:latest"]},
                           {"id":"b","names":["docker.io/library/alpine:3"]},
                           {"id":"c","names":null}]"#;
        assert_eq!(leftover_images(buildah), ["localhost/helix-0b1c-2:latest"]);
        let podman = br#"[{"Id":"a","Names":["localhost/helix-9-1:latest"]},{"Id":"b"}]"#;
        assert_eq!(leftover_images(podman), ["localhost/helix-9-1:latest"]);
        assert!(leftover_images(b"").is_empty());
        assert!(leftover_images(b"[]").is_empty());
    }

    #[test]
    fn a_storage_is_named_by_its_directory() {
        let s = Storage::in_dir(Path::new("/data/storage/podman/linux-arm64"));
        assert_eq!(s.root, Path::new("/data/storage/podman/linux-arm64/root"));
        assert_eq!(
            s.runroot,
            Path::new("/data/storage/podman/linux-arm64/runroot")
        );
        assert_eq!(s.dir(), Path::new("/data/storage/podman/linux-arm64"));
    }
}
