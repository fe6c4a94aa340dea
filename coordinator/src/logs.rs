//! Build output per job, bounded: on disk under `DATA_DIR/logs/<job>.log` with the
//! embedded store, in the shared database with PostgreSQL (so a coordinator that
//! takes over as leader serves the logs its predecessor received, and resumes them
//! without loss or duplication).
//!
//! Agents send ordered chunks with byte offsets; a chunk that starts before what we
//! already have (a resend after a reconnect) is trimmed, so nothing is stored twice.
//! How much of each attempt's stream is stored survives a restart: in the database,
//! or beside a log file in `<job>.pos` (an agent resends a log from its start after
//! reconnecting, and a restarted coordinator must not store it twice). Log files are
//! not fsynced (a build's output is not worth a disk flush per chunk): after a
//! machine crash, rather than a process crash, a chunk may be missing or repeated.
//! A log is capped at [`MAX_LOG_BYTES`]: past it the oldest part is dropped, because
//! the end of a log is where a failure is explained.
//! Followers (`build logs --follow`) are woken through a watch channel per job.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use helix_protocol::JobId;
use tokio::sync::watch;

use crate::store::{Store, StoreError};

/// Most bytes kept per job.
pub const MAX_LOG_BYTES: u64 = 10 * 1024 * 1024;

/// Why a log could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    #[error("log file: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the log task failed: {0}")]
    Task(String),
}

/// What to store for one chunk, given how much of the attempt's stream is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Markers (a new attempt, lost output) followed by the fresh bytes.
    pub bytes: Vec<u8>,
    /// How many of the chunk's own bytes are new.
    pub fresh: usize,
    /// The attempt's stream offset after this chunk.
    pub stream_end: u64,
}

/// Trim a resent chunk against `received` (bytes of the attempt's stream stored so
/// far); `None` for a pure duplicate.
pub fn plan(received: u64, attempt: u32, offset: u64, data: &[u8]) -> Option<Piece> {
    let end = offset.saturating_add(data.len() as u64);
    if end <= received {
        return None;
    }
    let skip = usize::try_from(received.saturating_sub(offset))
        .unwrap_or(data.len())
        .min(data.len());
    let fresh = &data[skip..];
    let mut bytes = Vec::with_capacity(fresh.len() + 64);
    if attempt > 1 && received == 0 {
        bytes.extend_from_slice(format!("\n[helix: attempt {attempt}]\n").as_bytes());
    }
    if offset > received {
        bytes.extend_from_slice(
            format!(
                "\n[helix: {} bytes of output were lost]\n",
                offset - received
            )
            .as_bytes(),
        );
    }
    bytes.extend_from_slice(fresh);
    Some(Piece {
        bytes,
        fresh: fresh.len(),
        stream_end: end,
    })
}

#[derive(Debug)]
struct JobLog {
    /// Bytes of the agent's stream received so far (its offset space); `None` until
    /// read from the store.
    received: Option<u64>,
    /// Bumped on every append, to wake followers.
    tx: watch::Sender<u64>,
}

#[derive(Debug)]
enum Storage {
    Files(PathBuf),
    Store(Store),
}

/// The per-job logs of one coordinator (files) or cluster (store).
#[derive(Debug)]
pub struct Logs {
    storage: Storage,
    open: Mutex<HashMap<(JobId, u32), JobLog>>,
    /// One writer at a time per job file (a replaced session's stream may still be
    /// appending when the agent's new one starts): a lock per job, striped.
    writers: Arc<[Mutex<()>]>,
}

/// Locks of [`Logs::writers`]; jobs sharing one only wait for each other briefly.
const WRITER_STRIPES: usize = 64;

fn writer_locks() -> Arc<[Mutex<()>]> {
    (0..WRITER_STRIPES).map(|_| Mutex::new(())).collect()
}

impl Logs {
    /// Logs as files under `dir` (the embedded store's layout).
    pub fn files(dir: &Path) -> std::io::Result<Logs> {
        std::fs::create_dir_all(dir)?;
        Ok(Logs {
            storage: Storage::Files(dir.to_path_buf()),
            open: Mutex::new(HashMap::new()),
            writers: writer_locks(),
        })
    }

    /// Logs in the shared store, for coordinators that take over from each other.
    pub fn in_store(store: Store) -> Logs {
        Logs {
            storage: Storage::Store(store),
            open: Mutex::new(HashMap::new()),
            writers: writer_locks(),
        }
    }

    fn path(dir: &Path, job: JobId) -> PathBuf {
        dir.join(format!("{job}.log"))
    }

    fn entry(map: &mut HashMap<(JobId, u32), JobLog>, job: JobId, attempt: u32) -> &mut JobLog {
        map.entry((job, attempt)).or_insert_with(|| JobLog {
            received: None,
            tx: watch::channel(0).0,
        })
    }

    fn received(&self, job: JobId, attempt: u32) -> Option<u64> {
        let mut map = self.open.lock().expect("logs lock poisoned");
        Self::entry(&mut map, job, attempt).received
    }

    fn advanced(&self, job: JobId, attempt: u32, stream_end: u64) {
        let mut map = self.open.lock().expect("logs lock poisoned");
        let log = Self::entry(&mut map, job, attempt);
        log.received = Some(log.received.unwrap_or(0).max(stream_end));
        log.tx.send_modify(|n| *n += 1);
    }

    /// Append a chunk at `offset` of attempt `attempt`'s stream. Returns the bytes
    /// of the chunk actually stored (0 for a duplicate). Chunks of one attempt come
    /// in order on one stream, so they are never appended concurrently.
    pub async fn append(
        &self,
        job: JobId,
        attempt: u32,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<usize, LogError> {
        match &self.storage {
            Storage::Files(dir) => {
                let (dir, writers) = (dir.clone(), self.writers.clone());
                let stripe = usize::from(job.as_bytes()[15]) % WRITER_STRIPES;
                let outcome = tokio::task::spawn_blocking(move || {
                    let _one_writer = writers[stripe].lock().expect("log writer lock poisoned");
                    let positions = Positions::path(&dir, job);
                    // Read under the lock: another stream may have just written.
                    let received = Positions::read(&positions, attempt)?;
                    let Some(piece) = plan(received, attempt, offset, &data) else {
                        return Ok::<_, std::io::Error>((0, received));
                    };
                    // The log first: killed between the two writes, a restarted
                    // coordinator stores at most this chunk twice, never loses it.
                    append_file(&Self::path(&dir, job), &piece.bytes)?;
                    Positions::write(&positions, attempt, piece.stream_end)?;
                    Ok((piece.fresh, piece.stream_end))
                })
                .await
                .map_err(|e| LogError::Task(e.to_string()))?;
                let (fresh, stream_end) = outcome?;
                self.advanced(job, attempt, stream_end);
                Ok(fresh)
            }
            Storage::Store(store) => {
                let known = self.received(job, attempt);
                let (fresh, stream_end) = store
                    .log_append(job, attempt, known, MAX_LOG_BYTES, move |received| {
                        plan(received, attempt, offset, &data)
                    })
                    .await?;
                self.advanced(job, attempt, stream_end);
                Ok(fresh)
            }
        }
    }

    /// What is stored for `job` from byte `from` of its log, and the offset to read
    /// from next (past the returned bytes; past a dropped head, if any).
    pub async fn read_from(&self, job: JobId, from: u64) -> Result<(Vec<u8>, u64), LogError> {
        match &self.storage {
            Storage::Files(dir) => {
                let path = Self::path(dir, job);
                let data = tokio::task::spawn_blocking(move || read_file(&path, from))
                    .await
                    .map_err(|e| LogError::Task(e.to_string()))??;
                let next = from + data.len() as u64;
                Ok((data, next))
            }
            Storage::Store(store) => Ok(store.log_read(job, from).await?),
        }
    }

    /// The last `lines` lines of a job's log, for failure messages.
    pub async fn tail(&self, job: JobId, lines: usize) -> String {
        let mut text = Vec::new();
        let mut from = 0;
        while let Ok((data, next)) = self.read_from(job, from).await {
            if data.is_empty() {
                break;
            }
            text.extend_from_slice(&data);
            from = next;
        }
        let text = String::from_utf8_lossy(&text);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// A receiver that changes whenever any attempt of `job` appends.
    pub fn watch(&self, job: JobId, attempt: u32) -> watch::Receiver<u64> {
        let mut map = self.open.lock().expect("logs lock poisoned");
        Self::entry(&mut map, job, attempt).tx.subscribe()
    }

    /// Forget the in-memory state of a finished job (the log stays).
    pub fn close(&self, job: JobId) {
        self.open
            .lock()
            .expect("logs lock poisoned")
            .retain(|(j, _), _| *j != job);
    }
}

/// How much of each attempt's stream a job's log file holds: `<job>.pos`, one
/// little-endian `u64` per attempt (attempt `n` at byte `8 * (n - 1)`), each
/// overwritten in place by one 8-byte write.
struct Positions;

impl Positions {
    /// Attempts are bounded by the scheduler (a handful); this only keeps a
    /// corrupt or hostile attempt number from making a huge sparse file.
    const MAX_ATTEMPT: u32 = 4096;

    fn path(dir: &Path, job: JobId) -> PathBuf {
        dir.join(format!("{job}.pos"))
    }

    fn slot(attempt: u32) -> std::io::Result<u64> {
        if attempt == 0 || attempt > Self::MAX_ATTEMPT {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("attempt {attempt} is out of range"),
            ));
        }
        Ok(u64::from(attempt - 1) * 8)
    }

    /// Bytes of `attempt`'s stream stored; 0 when none were.
    fn read(path: &Path, attempt: u32) -> std::io::Result<u64> {
        use std::os::unix::fs::FileExt as _;
        let slot = Self::slot(attempt)?;
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut raw = [0u8; 8];
        match file.read_exact_at(&mut raw, slot) {
            Ok(()) => Ok(u64::from_le_bytes(raw)),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
            Err(e) => Err(e),
        }
    }

    fn write(path: &Path, attempt: u32, received: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt as _;
        let slot = Self::slot(attempt)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        file.write_all_at(&received.to_le_bytes(), slot)
    }
}

/// Append to a job's file, trimming its head past the cap.
fn append_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(bytes)?;
    let len = file.metadata()?.len();
    drop(file);
    if len > MAX_LOG_BYTES + MAX_LOG_BYTES / 5 {
        trim_head(path, len, MAX_LOG_BYTES)?;
    }
    Ok(())
}

fn read_file(path: &Path, from: u64) -> std::io::Result<Vec<u8>> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    file.seek(SeekFrom::Start(from))?;
    let mut out = Vec::new();
    file.read_to_end(&mut out)?;
    Ok(out)
}

/// Keep the last `keep` bytes of the file, behind a marker line.
fn trim_head(path: &Path, len: u64, keep: u64) -> std::io::Result<()> {
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(len - keep))?;
    let mut tail = Vec::with_capacity(usize::try_from(keep).unwrap_or(0));
    file.read_to_end(&mut tail)?;
    let tmp = path.with_extension("log.tmp");
    {
        let mut out = std::fs::File::create(&tmp)?;
        writeln!(
            out,
            "[helix: the first {} bytes of this log were dropped]",
            len - keep
        )?;
        out.write_all(&tail)?;
    }
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests;
