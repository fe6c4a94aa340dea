//! A job's output: [`JobLog`] appends it to `output.log` in the job's work dir, and
//! [`ship`] sends that file to the coordinator as [`LogChunk`]s on the job's own
//! unidirectional stream, following the file as it grows.
//!
//! The file is the source of truth: a shipper reads it from offset 0, so after a
//! reconnect a new shipper simply sends it all again and the coordinator drops what
//! it already has (the chunks carry their offsets). Shipping never blocks the job:
//! the job only writes the file, and the control stream never waits for either.

use std::future::Future;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use helix_protocol::wire::LogChunk;
use helix_protocol::JobId;
use helix_transport::framed::{self, StreamError};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::builder::{BoxFuture, LogSink};

/// Largest chunk of log sent in one frame.
pub const MAX_CHUNK: usize = 64 * 1024;

/// Output waits at most this long for more to batch with before it is sent, so a
/// user following the build sees it promptly without a frame per line.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// Where a log is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogState {
    /// Bytes in the file (written and flushed).
    pub len: u64,
    /// The job is over: the log will not grow any more.
    pub closed: bool,
    /// A shipper sent all of the closed log and the coordinator acknowledged it.
    pub delivered: bool,
}

/// A job's log file, written by the job and followed by shippers.
#[derive(Debug)]
pub struct JobLog {
    path: PathBuf,
    file: tokio::sync::Mutex<Option<tokio::fs::File>>,
    state: watch::Sender<LogState>,
    /// Whether a write error was already reported (once is enough).
    warned: AtomicBool,
}

impl JobLog {
    /// The log of a job that is about to run, at `path` (created, or truncated if it
    /// exists, on the first write).
    pub fn new(path: PathBuf) -> Arc<JobLog> {
        Arc::new(JobLog {
            path,
            file: tokio::sync::Mutex::new(None),
            state: watch::Sender::new(LogState::default()),
            warned: AtomicBool::new(false),
        })
    }

    /// The log of a job that is over (found on disk at start-up); `None` if the file
    /// is gone.
    pub fn finished(path: PathBuf) -> Option<Arc<JobLog>> {
        let len = std::fs::metadata(&path).ok()?.len();
        Some(Arc::new(JobLog {
            path,
            file: tokio::sync::Mutex::new(None),
            state: watch::Sender::new(LogState {
                len,
                closed: true,
                delivered: false,
            }),
            warned: AtomicBool::new(false),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn state(&self) -> LogState {
        *self.state.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<LogState> {
        self.state.subscribe()
    }

    /// Append `bytes`. Output that cannot be written is dropped with one warning: a
    /// full disk must not fail the build itself.
    pub async fn append(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut file = self.file.lock().await;
        if self.state.borrow().closed {
            return;
        }
        let result = async {
            if file.is_none() {
                let opened = tokio::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&self.path)
                    .await?;
                *file = Some(opened);
            }
            let f = file.as_mut().expect("opened above");
            f.write_all(bytes).await?;
            // tokio writes in the background: wait until the bytes are in the file
            // before telling shippers they are there.
            f.flush().await
        }
        .await;
        match result {
            Ok(()) => self.state.send_modify(|s| s.len += bytes.len() as u64),
            Err(e) => {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    warn!(path = %self.path.display(), "cannot write the job log, output is lost: {e}");
                }
            }
        }
    }

    /// Append one line.
    pub async fn line(&self, text: &str) {
        let mut line = String::with_capacity(text.len() + 1);
        line.push_str(text);
        line.push('\n');
        self.append(line.as_bytes()).await;
    }

    /// The job is over: no more output.
    pub async fn close(&self) {
        let mut file = self.file.lock().await;
        *file = None;
        self.state.send_modify(|s| s.closed = true);
    }

    /// Record that a shipper delivered the whole closed log.
    pub fn mark_delivered(&self) {
        self.state.send_modify(|s| s.delivered = true);
    }

    /// Resolves once a shipper delivered the whole closed log.
    pub async fn delivered(&self) {
        let mut rx = self.state.subscribe();
        // The sender lives in `self`, so the channel cannot close under us.
        let _ = rx.wait_for(|s| s.delivered).await;
    }
}

impl LogSink for JobLog {
    fn write<'a>(&'a self, bytes: &'a [u8]) -> BoxFuture<'a, ()> {
        Box::pin(self.append(bytes))
    }
}

/// Why shipping a log stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShipError {
    #[error("cannot read the job log {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the log stream failed: {0}")]
    Stream(#[from] StreamError),
}

/// Where [`ship`] sends chunks: a QUIC stream, or a list in tests.
pub trait ChunkSink: Send {
    fn send_chunk(&mut self, chunk: LogChunk)
        -> impl Future<Output = Result<(), ShipError>> + Send;
}

impl ChunkSink for quinn::SendStream {
    async fn send_chunk(&mut self, chunk: LogChunk) -> Result<(), ShipError> {
        framed::write_frame(self, &chunk).await?;
        Ok(())
    }
}

/// Sends `log` from offset 0 to `sink` in chunks of at most [`MAX_CHUNK`], following
/// it as it grows; output is held back at most [`FLUSH_INTERVAL`] to batch it.
/// Returns the bytes sent once the log is closed and all of it was sent.
pub async fn ship<S: ChunkSink>(
    log: &JobLog,
    job: JobId,
    attempt: u32,
    sink: &mut S,
) -> Result<u64, ShipError> {
    let read_err = |source| ShipError::Read {
        path: log.path().display().to_string(),
        source,
    };
    let mut rx = log.subscribe();
    let mut offset: u64 = 0;
    let mut file: Option<tokio::fs::File> = None;
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        let state = match rx.wait_for(|s| s.len > offset || s.closed).await {
            Ok(state) => *state,
            Err(_) => return Ok(offset),
        };
        if state.len <= offset {
            // Closed and all sent.
            return Ok(offset);
        }
        if !state.closed && state.len - offset < MAX_CHUNK as u64 {
            // Let more output gather, up to a full chunk or the flush interval.
            let _ = tokio::time::timeout(
                FLUSH_INTERVAL,
                rx.wait_for(|s| s.closed || s.len - offset >= MAX_CHUNK as u64),
            )
            .await;
        }
        let len = rx.borrow().len;
        if file.is_none() {
            let mut f = tokio::fs::File::open(log.path()).await.map_err(read_err)?;
            f.seek(SeekFrom::Start(offset)).await.map_err(read_err)?;
            file = Some(f);
        }
        let f = file.as_mut().expect("opened above");
        while offset < len {
            let n = usize::try_from(len - offset).map_or(MAX_CHUNK, |left| left.min(MAX_CHUNK));
            f.read_exact(&mut buf[..n]).await.map_err(read_err)?;
            sink.send_chunk(LogChunk {
                job,
                attempt,
                offset,
                data: buf[..n].to_vec(),
            })
            .await?;
            offset += n as u64;
        }
    }
}

/// Ships `log` on a new unidirectional stream of `conn`; once all of the closed log
/// was acknowledged by the coordinator, marks it delivered.
pub async fn ship_over(
    conn: quinn::Connection,
    log: Arc<JobLog>,
    job: JobId,
    attempt: u32,
) -> Result<(), ShipError> {
    let mut send = conn
        .open_uni()
        .await
        .map_err(|e| ShipError::Stream(StreamError::Connection(e)))?;
    let sent = ship(&log, job, attempt, &mut send).await?;
    let _ = send.finish();
    match send.stopped().await {
        Ok(None) => {
            debug!(%job, attempt, bytes = sent, "log delivered");
            log.mark_delivered();
        }
        Ok(Some(code)) => debug!(%job, attempt, %code, "the coordinator stopped the log stream"),
        Err(e) => debug!(%job, attempt, "log stream ended: {e}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Chunks(Vec<LogChunk>);

    impl ChunkSink for Chunks {
        async fn send_chunk(&mut self, chunk: LogChunk) -> Result<(), ShipError> {
            self.0.push(chunk);
            Ok(())
        }
    }

    fn joined(chunks: &[LogChunk]) -> Vec<u8> {
        let mut all = Vec::new();
        for c in chunks {
            assert_eq!(c.offset, all.len() as u64, "contiguous offsets");
            assert!(c.data.len() <= MAX_CHUNK);
            assert!(!c.data.is_empty());
            all.extend_from_slice(&c.data);
        }
        all
    }

    #[tokio::test]
    async fn a_closed_log_goes_out_in_bounded_contiguous_chunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = JobLog::new(dir.path().join("output.log"));
        let data: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
        for piece in data.chunks(10_000) {
            log.append(piece).await;
        }
        log.close().await;
        log.append(b"after close is ignored").await;
        assert_eq!(log.state().len, data.len() as u64);

        let job = JobId::new_v4();
        let mut sink = Chunks::default();
        let sent = ship(&log, job, 3, &mut sink).await.expect("ship");
        assert_eq!(sent, data.len() as u64);
        assert_eq!(sink.0.len(), 3, "64 KiB + 64 KiB + the rest");
        assert!(sink.0.iter().all(|c| c.job == job && c.attempt == 3));
        assert_eq!(joined(&sink.0), data);
        assert_eq!(std::fs::read(log.path()).expect("file"), data);

        // A reconnect sends it all again from offset 0.
        let mut again = Chunks::default();
        ship(&log, job, 3, &mut again).await.expect("ship again");
        assert_eq!(again.0, sink.0);

        // After a restart, the file alone is enough.
        let reloaded = JobLog::finished(log.path().to_path_buf()).expect("file");
        assert!(reloaded.state().closed);
        let mut third = Chunks::default();
        ship(&reloaded, job, 3, &mut third)
            .await
            .expect("ship reloaded");
        assert_eq!(joined(&third.0), data);
        assert!(JobLog::finished(dir.path().join("missing.log")).is_none());
    }

    /// Records when each chunk arrived.
    #[derive(Default)]
    struct Timed(Vec<(std::time::Instant, LogChunk)>);

    impl ChunkSink for Timed {
        async fn send_chunk(&mut self, chunk: LogChunk) -> Result<(), ShipError> {
            self.0.push((std::time::Instant::now(), chunk));
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_live_log_is_followed_and_flushed_while_output_flows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = JobLog::new(dir.path().join("output.log"));
        let job = JobId::new_v4();
        let shipper = {
            let log = log.clone();
            tokio::spawn(async move {
                let mut sink = Timed::default();
                ship(&log, job, 1, &mut sink).await.expect("ship");
                sink.0
            })
        };
        let first_write = std::time::Instant::now();
        log.line("==> building linux/amd64").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        log.line("STEP 1/2: FROM scratch").await;
        // Long after the flush interval, and before the log is closed.
        tokio::time::sleep(FLUSH_INTERVAL * 5).await;
        let third_write = std::time::Instant::now();
        log.line("STEP 2/2: COPY hello.txt /hello.txt").await;
        log.close().await;
        let chunks = shipper.await.expect("shipper");
        assert!(chunks.len() >= 2, "{} chunk(s)", chunks.len());
        let (arrived, first) = &chunks[0];
        assert!(
            *arrived < third_write,
            "output is sent while the job runs, not when it ends"
        );
        assert!(
            arrived.duration_since(first_write) >= FLUSH_INTERVAL / 2,
            "output waits a little to be batched"
        );
        assert!(first.data.starts_with(b"==> building linux/amd64\n"));
        let all: Vec<LogChunk> = chunks.into_iter().map(|(_, c)| c).collect();
        assert_eq!(
            String::from_utf8(joined(&all)).expect("utf8"),
            "==> building linux/amd64\nSTEP 1/2: FROM scratch\nSTEP 2/2: COPY hello.txt /hello.txt\n"
        );
    }

    #[tokio::test]
    async fn an_empty_closed_log_sends_nothing_and_delivery_is_observable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = JobLog::new(dir.path().join("output.log"));
        log.close().await;
        let mut sink = Chunks::default();
        assert_eq!(
            ship(&log, JobId::new_v4(), 1, &mut sink)
                .await
                .expect("ship"),
            0
        );
        assert!(sink.0.is_empty());
        let waiter = {
            let log = log.clone();
            tokio::spawn(async move { log.delivered().await })
        };
        log.mark_delivered();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("delivered resolves")
            .expect("task");
    }
}
