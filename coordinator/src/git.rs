//! Pinning a git ref to one commit at submit, so every platform builds the same tree.

use std::time::Duration;

use tokio::process::Command;

/// How long `git ls-remote` may take before the submit fails.
const LS_REMOTE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a ref could not be pinned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PinError {
    #[error("cannot run git: {0} (install git on the coordinator host)")]
    Spawn(std::io::Error),
    #[error("git ls-remote {repo} timed out after {LS_REMOTE_TIMEOUT:?}")]
    Timeout { repo: String },
    #[error("cannot read {repo}: {stderr}")]
    Git { repo: String, stderr: String },
    #[error("no branch or tag named {reference:?} in {repo} (a commit must be given as its full 40-character id)")]
    UnknownRef { repo: String, reference: String },
}

/// Whether `s` is a full commit id (SHA-1 or SHA-256 object name).
pub fn is_full_commit(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Resolve `reference` in `repo` to a commit id: a full commit id is taken as is;
/// otherwise a branch, then a tag (peeled to its commit), then a full ref name.
pub async fn pin(repo: &str, reference: &str) -> Result<String, PinError> {
    if is_full_commit(reference) {
        return Ok(reference.to_ascii_lowercase());
    }
    let mut cmd = Command::new("git");
    cmd.arg("ls-remote")
        .arg(repo)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    let out = tokio::time::timeout(LS_REMOTE_TIMEOUT, cmd.output())
        .await
        .map_err(|_| PinError::Timeout {
            repo: repo.to_string(),
        })?
        .map_err(PinError::Spawn)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(PinError::Git {
            repo: repo.to_string(),
            stderr,
        });
    }
    let listing = String::from_utf8_lossy(&out.stdout);
    resolve(&listing, reference).ok_or_else(|| PinError::UnknownRef {
        repo: repo.to_string(),
        reference: reference.to_string(),
    })
}

/// Pick `reference` out of `git ls-remote` output.
fn resolve(listing: &str, reference: &str) -> Option<String> {
    let refs: Vec<(&str, &str)> = listing.lines().filter_map(|l| l.split_once('\t')).collect();
    let find = |name: &str| {
        refs.iter()
            .find(|(_, r)| *r == name)
            .map(|(sha, _)| sha.to_string())
    };
    find(&format!("refs/heads/{reference}"))
        .or_else(|| find(&format!("refs/tags/{reference}^{{}}")))
        .or_else(|| find(&format!("refs/tags/{reference}")))
        .or_else(|| find(reference))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "aaaa\tHEAD\nbbbb\trefs/heads/main\ncccc\trefs/tags/v1\ndddd\trefs/tags/v1^{}\neeee\trefs/tags/light\nffff\trefs/pull/1/head\n";

    #[test]
    fn resolves_branches_peeled_tags_and_full_names() {
        assert_eq!(resolve(LISTING, "main").as_deref(), Some("bbbb"));
        assert_eq!(
            resolve(LISTING, "v1").as_deref(),
            Some("dddd"),
            "annotated tags are peeled"
        );
        assert_eq!(resolve(LISTING, "light").as_deref(), Some("eeee"));
        assert_eq!(
            resolve(LISTING, "refs/pull/1/head").as_deref(),
            Some("ffff")
        );
        assert_eq!(resolve(LISTING, "HEAD").as_deref(), Some("aaaa"));
        assert_eq!(resolve(LISTING, "nope"), None);
        assert!(is_full_commit("0123456789abcdef0123456789abcdef01234567"));
        assert!(!is_full_commit("0123456"));
    }

    #[tokio::test]
    async fn pins_a_real_repository() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path();
        let git = |args: &[&str]| {
            let out = std::process::Command::new("git")
                .args(args)
                .current_dir(repo)
                .output()
                .expect("git");
            assert!(
                out.status.success(),
                "git {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        git(&["init", "-q", "-b", "main"]);
        std::fs::write(repo.join("f"), "x").expect("write");
        git(&["add", "f"]);
        git(&[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "-m",
            "one",
        ]);
        let head = git(&["rev-parse", "HEAD"]);
        let url = format!("file://{}", repo.display());
        assert_eq!(pin(&url, "main").await.expect("pinned"), head);
        let err = pin(&url, "no-such-branch")
            .await
            .expect_err("unknown")
            .to_string();
        assert!(
            err.contains("no branch or tag named \"no-such-branch\""),
            "{err}"
        );
        let err = pin("file:///nonexistent/repo", "main")
            .await
            .expect_err("missing")
            .to_string();
        assert!(
            err.contains("cannot read file:///nonexistent/repo"),
            "{err}"
        );
    }
}
