//! Build contexts by digest: how a job gets the directory a user uploaded.
//!
//! - [`ContextFetcher`]: asks the coordinator for a context and gets its size and a
//!   byte stream. [`CurrentConnection`] is the real one: it opens a new bidirectional
//!   stream on the agent's live connection, sends
//!   [`AgentToCoordinator::FetchContext`] and reads
//!   [`CoordinatorToAgent::ContextFollows`] (or `Rejected`). The session owns the
//!   connection and jobs outlive connections, so a fetch made while the agent is
//!   disconnected waits (bounded) for the next one.
//! - [`download`]: exactly `size` bytes into a file, hashed on the way, and checked
//!   against the digest; a file that does not match is deleted.
//! - [`UNPACK_LIMITS`]: what `helix_context::unpack` accepts from a context.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use helix_context::Limits;
use helix_protocol::wire::{AgentToCoordinator, CoordinatorToAgent};
use helix_protocol::Digest;
use helix_transport::framed::{self, StreamError};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::debug;

use crate::builder::BoxFuture;
use crate::join::variant_name;

/// Largest context archive an agent downloads, and the most its files may unpack to:
/// far above a sensible build context, low enough that a broken one cannot fill an
/// agent's disk.
pub const MAX_CONTEXT_BYTES: u64 = 8 << 30;

/// What a context may unpack to: [`MAX_CONTEXT_BYTES`] of files in at most a million
/// entries.
pub const UNPACK_LIMITS: Limits = Limits::new(MAX_CONTEXT_BYTES, 1_000_000);

/// How long a fetch waits for a connection when the agent is disconnected. The
/// coordinator requeues the agent's jobs after its grace period (60 s by default)
/// anyway, so waiting longer gains nothing.
pub const CONNECTION_WAIT: Duration = Duration::from_secs(60);

/// How long the coordinator may take to answer `FetchContext`.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes read from the stream at a time.
const CHUNK: usize = 256 * 1024;

/// A context on its way: its size, and exactly that many bytes to read from `body`.
pub struct ContextDownload {
    pub size: u64,
    pub body: Box<dyn AsyncRead + Send + Unpin>,
}

impl fmt::Debug for ContextDownload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextDownload")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// Why a context could not be fetched. All of them are worth another try elsewhere.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The coordinator answered `Rejected` (it does not hold the context, ...).
    #[error("the coordinator refused to send the build context: {0}")]
    Rejected(String),
    /// No connection came up in time.
    #[error(
        "cannot fetch the build context: no connection to the coordinator within {}",
        humantime::format_duration(*.0)
    )]
    NoConnection(Duration),
    /// The request failed on the way.
    #[error("cannot fetch the build context: {0}")]
    Failed(String),
}

/// Gets build contexts from the coordinator.
pub trait ContextFetcher: Send + Sync + fmt::Debug {
    /// Ask for the context `digest`.
    fn fetch<'a>(
        &'a self,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<ContextDownload, FetchError>>;
}

/// The agent's connection to the coordinator right now, if any. The session sets it
/// once the coordinator said `Welcome` and clears it when the session ends; jobs fetch
/// their contexts through it. Cheap to clone; clones share the slot.
#[derive(Debug, Clone)]
pub struct CurrentConnection {
    slot: Arc<watch::Sender<Option<quinn::Connection>>>,
    wait: Duration,
    /// Context downloads whose bytes are still coming over the connection (a
    /// deliberate reconnect waits for them: closing would cut them off).
    downloads: Arc<watch::Sender<usize>>,
}

impl Default for CurrentConnection {
    fn default() -> Self {
        CurrentConnection::new(CONNECTION_WAIT)
    }
}

impl CurrentConnection {
    /// An empty slot whose fetches wait at most `wait` for a connection.
    pub fn new(wait: Duration) -> CurrentConnection {
        CurrentConnection {
            slot: Arc::new(watch::Sender::new(None)),
            wait,
            downloads: Arc::new(watch::Sender::new(0)),
        }
    }

    /// Context downloads in progress.
    pub fn downloads(&self) -> usize {
        *self.downloads.borrow()
    }

    /// `body`, counted as a download in progress until it is dropped.
    fn track<R>(&self, body: R) -> Tracked<R> {
        self.downloads.send_modify(|n| *n += 1);
        Tracked {
            inner: body,
            downloads: self.downloads.clone(),
        }
    }

    /// Resolves once no context download is in progress.
    pub(crate) async fn downloads_done(&self) {
        let mut rx = self.downloads.subscribe();
        // The sender lives in `self`: the channel cannot close under us.
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// The session's connection (`None` when it ends).
    pub(crate) fn set(&self, conn: Option<quinn::Connection>) {
        self.slot.send_replace(conn);
    }

    /// A live connection, waiting for one until `deadline`.
    async fn live(&self, deadline: Instant) -> Option<quinn::Connection> {
        let mut rx = self.slot.subscribe();
        let found = tokio::time::timeout_at(
            deadline,
            rx.wait_for(|c| c.as_ref().is_some_and(|c| c.close_reason().is_none())),
        )
        .await;
        match found {
            Ok(Ok(conn)) => conn.clone(),
            _ => None,
        }
    }

    async fn fetch_inner(&self, digest: &Digest) -> Result<ContextDownload, FetchError> {
        let deadline = Instant::now() + self.wait;
        let request = AgentToCoordinator::FetchContext {
            digest: digest.clone(),
        };
        loop {
            let Some(conn) = self.live(deadline).await else {
                return Err(FetchError::NoConnection(self.wait));
            };
            match framed::request::<_, CoordinatorToAgent>(&conn, &request, REPLY_TIMEOUT).await {
                Ok((CoordinatorToAgent::ContextFollows { size }, mut send, recv)) => {
                    let _ = send.finish();
                    return Ok(ContextDownload {
                        size,
                        body: Box::new(self.track(recv)),
                    });
                }
                Ok((CoordinatorToAgent::Rejected { reason, .. }, _, _)) => {
                    return Err(FetchError::Rejected(reason))
                }
                Ok((other, _, _)) => {
                    return Err(FetchError::Failed(format!(
                        "the coordinator answered FetchContext with {}",
                        variant_name(&other)
                    )))
                }
                // The connection went away under the request: try the next one.
                Err(e) if conn.close_reason().is_some() && Instant::now() < deadline => {
                    debug!("fetching the build context: {e}; waiting for the next connection");
                }
                Err(StreamError::Closed) => {
                    return Err(FetchError::Failed(
                        "the coordinator closed the stream without answering (does it \
                         support build contexts?)"
                            .into(),
                    ))
                }
                Err(e) => return Err(FetchError::Failed(e.to_string())),
            }
        }
    }
}

/// A download's stream, counted in [`CurrentConnection::downloads`] until dropped.
struct Tracked<R> {
    inner: R,
    downloads: Arc<watch::Sender<usize>>,
}

impl<R> Drop for Tracked<R> {
    fn drop(&mut self) {
        self.downloads.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Tracked<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl ContextFetcher for CurrentConnection {
    fn fetch<'a>(
        &'a self,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<ContextDownload, FetchError>> {
        Box::pin(self.fetch_inner(digest))
    }
}

/// Why a download did not give the context.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DownloadError {
    #[error("the build context stream ended after {received} of {size} bytes")]
    Truncated { received: u64, size: u64 },
    #[error("reading the build context failed after {received} of {size} bytes: {source}")]
    Read {
        received: u64,
        size: u64,
        source: std::io::Error,
    },
    #[error(
        "the build context received does not match its digest: expected {expected}, got \
         {actual} over {size} bytes (it was corrupted in transfer)"
    )]
    Mismatch {
        expected: Digest,
        actual: Digest,
        size: u64,
    },
    #[error("cannot write the build context to {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// Reads exactly `size` bytes of `body` into a new file at `path` (0600), hashing them
/// on the way, and checks that they are `expected`. On any error the file is deleted.
pub async fn download(
    body: &mut (dyn AsyncRead + Send + Unpin),
    size: u64,
    expected: &Digest,
    path: &Path,
) -> Result<(), DownloadError> {
    let result = download_inner(body, size, expected, path).await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(path).await;
    }
    result
}

async fn download_inner(
    body: &mut (dyn AsyncRead + Send + Unpin),
    size: u64,
    expected: &Digest,
    path: &Path,
) -> Result<(), DownloadError> {
    let write_err = |source| DownloadError::Write {
        path: path.display().to_string(),
        source,
    };
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
        .map_err(write_err)?;
    let mut hasher = Sha256::new();
    let mut received: u64 = 0;
    let mut buf = vec![0u8; CHUNK];
    while received < size {
        let want = usize::try_from(size - received).map_or(CHUNK, |left| left.min(CHUNK));
        let n = match body.read(&mut buf[..want]).await {
            Ok(0) => return Err(DownloadError::Truncated { received, size }),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(DownloadError::Read {
                    received,
                    size,
                    source,
                })
            }
        };
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).await.map_err(write_err)?;
        received += n as u64;
    }
    // tokio writes in the background: make sure every byte is in the file.
    file.flush().await.map_err(write_err)?;
    let actual = Digest::from_sha256(hasher.finalize().into());
    if &actual != expected {
        return Err(DownloadError::Mismatch {
            expected: expected.clone(),
            actual,
            size,
        });
    }
    Ok(())
}

/// A reader that fails once `cancel` fires, so that a blocking unpack stops early.
pub(crate) struct Cancellable<R> {
    pub(crate) inner: R,
    pub(crate) cancel: tokio_util::sync::CancellationToken,
}

impl<R: std::io::Read> std::io::Read for Cancellable<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancel.is_cancelled() {
            return Err(std::io::Error::other("the job was cancelled"));
        }
        self.inner.read(buf)
    }
}

/// A fetcher answering from a script, for tests.
#[cfg(test)]
pub(crate) mod fake {
    use std::sync::Mutex;

    use super::*;

    /// What the fake fetcher answers.
    #[derive(Debug, Clone)]
    pub(crate) enum Answer {
        /// `ContextFollows { size }`, then `bytes` (which may be fewer or others).
        Follows {
            size: u64,
            bytes: Vec<u8>,
        },
        Rejected(String),
    }

    #[derive(Debug)]
    pub(crate) struct FakeFetcher {
        answer: Answer,
        asked: Mutex<Vec<Digest>>,
    }

    impl FakeFetcher {
        pub(crate) fn answering(answer: Answer) -> Arc<FakeFetcher> {
            Arc::new(FakeFetcher {
                answer,
                asked: Mutex::new(Vec::new()),
            })
        }

        /// A fetcher that sends `bytes` whole.
        pub(crate) fn sending(bytes: Vec<u8>) -> Arc<FakeFetcher> {
            FakeFetcher::answering(Answer::Follows {
                size: bytes.len() as u64,
                bytes,
            })
        }

        pub(crate) fn asked(&self) -> Vec<Digest> {
            self.asked.lock().expect("lock").clone()
        }
    }

    impl ContextFetcher for FakeFetcher {
        fn fetch<'a>(
            &'a self,
            digest: &'a Digest,
        ) -> BoxFuture<'a, Result<ContextDownload, FetchError>> {
            self.asked.lock().expect("lock").push(digest.clone());
            let answer = self.answer.clone();
            Box::pin(async move {
                match answer {
                    Answer::Follows { size, bytes } => Ok(ContextDownload {
                        size,
                        body: Box::new(std::io::Cursor::new(bytes)),
                    }),
                    Answer::Rejected(reason) => Err(FetchError::Rejected(reason)),
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fetch_to(
        bytes: &[u8],
        size: u64,
        digest: &Digest,
        path: &Path,
    ) -> Result<(), DownloadError> {
        let mut body = std::io::Cursor::new(bytes.to_vec());
        download(&mut body, size, digest, path).await
    }

    #[tokio::test]
    async fn good_bytes_are_kept() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("context.tar");
        let bytes: Vec<u8> = (0..600_000u32).map(|i| (i % 253) as u8).collect();
        let digest = Digest::sha256_of(&bytes);
        fetch_to(&bytes, bytes.len() as u64, &digest, &path)
            .await
            .expect("downloaded");
        assert_eq!(std::fs::read(&path).expect("file"), bytes);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test]
    async fn only_size_bytes_are_read() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("context.tar");
        let digest = Digest::sha256_of(b"hello");
        fetch_to(b"hello, and more", 5, &digest, &path)
            .await
            .expect("the first 5 bytes are the context");
        assert_eq!(std::fs::read(&path).expect("file"), b"hello");
    }

    #[tokio::test]
    async fn a_wrong_digest_names_both_and_deletes_the_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("context.tar");
        let expected = Digest::sha256_of(b"what was uploaded");
        let err = fetch_to(b"something else", 14, &expected, &path)
            .await
            .expect_err("mismatch");
        let text = err.to_string();
        assert!(text.contains(&format!("expected {expected}")), "{text}");
        assert!(
            text.contains(&format!("got {}", Digest::sha256_of(b"something else"))),
            "{text}"
        );
        assert!(matches!(err, DownloadError::Mismatch { size: 14, .. }));
        assert!(!path.exists(), "the file is deleted");
    }

    #[tokio::test]
    async fn a_truncated_stream_is_refused_and_deleted() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("context.tar");
        let bytes = vec![7u8; 1000];
        let err = fetch_to(&bytes[..600], 1000, &Digest::sha256_of(&bytes), &path)
            .await
            .expect_err("truncated");
        assert_eq!(
            err.to_string(),
            "the build context stream ended after 600 of 1000 bytes"
        );
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn downloads_in_progress_are_counted_until_dropped() {
        let conn = CurrentConnection::default();
        assert_eq!(conn.downloads(), 0);
        tokio::time::timeout(Duration::from_secs(1), conn.downloads_done())
            .await
            .expect("none in progress");
        let mut first = conn.track(&b"abc"[..]);
        let second = conn.track(&b"def"[..]);
        assert_eq!(conn.downloads(), 2);
        let mut text = String::new();
        first.read_to_string(&mut text).await.expect("read");
        assert_eq!(text, "abc");
        drop(first);
        assert_eq!(conn.downloads(), 1);
        let waiter = {
            let conn = conn.clone();
            tokio::spawn(async move { conn.downloads_done().await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "one download is still in progress");
        drop(second);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("done once the last one ended")
            .expect("task");
    }

    #[tokio::test]
    async fn a_fetch_without_a_connection_gives_up_in_time() {
        let conn = CurrentConnection::new(Duration::from_millis(50));
        let started = std::time::Instant::now();
        let err = conn
            .fetch(&Digest::sha256_of(b"x"))
            .await
            .expect_err("no connection");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(
            err.to_string(),
            "cannot fetch the build context: no connection to the coordinator within 50ms"
        );
    }
}
