//! Build output per job, on disk under `DATA_DIR/logs/<job>.log`, bounded.
//!
//! Agents send ordered chunks with byte offsets; a chunk that starts before what we
//! already have (a resend after a reconnect) is trimmed, so nothing is stored twice.
//! A log is capped at [`MAX_LOG_BYTES`]: past it the oldest part is dropped and a
//! marker says how much, because the end of a log is where a failure is explained.
//! Followers (`build logs --follow`) are woken through a watch channel per job.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use helix_protocol::JobId;
use tokio::sync::watch;

/// Most bytes kept per job.
pub const MAX_LOG_BYTES: u64 = 10 * 1024 * 1024;

#[derive(Debug)]
struct JobLog {
    /// Bytes of the agent's stream received so far (its offset space).
    received: u64,
    /// Bumped on every append, to wake followers.
    tx: watch::Sender<u64>,
}

/// The per-job log files of one data directory.
#[derive(Debug)]
pub struct Logs {
    dir: PathBuf,
    open: Mutex<HashMap<(JobId, u32), JobLog>>,
}

impl Logs {
    pub fn new(dir: &Path) -> std::io::Result<Logs> {
        std::fs::create_dir_all(dir)?;
        Ok(Logs {
            dir: dir.to_path_buf(),
            open: Mutex::new(HashMap::new()),
        })
    }

    fn path(&self, job: JobId) -> PathBuf {
        self.dir.join(format!("{job}.log"))
    }

    fn entry(map: &mut HashMap<(JobId, u32), JobLog>, job: JobId, attempt: u32) -> &mut JobLog {
        map.entry((job, attempt)).or_insert_with(|| JobLog {
            received: 0,
            tx: watch::channel(0).0,
        })
    }

    /// Append a chunk at `offset` of attempt `attempt`'s stream. Returns the bytes
    /// actually written (0 for a duplicate).
    pub fn append(
        &self,
        job: JobId,
        attempt: u32,
        offset: u64,
        data: &[u8],
    ) -> std::io::Result<usize> {
        let mut map = self.open.lock().expect("logs lock poisoned");
        let log = Self::entry(&mut map, job, attempt);
        let end = offset.saturating_add(data.len() as u64);
        if end <= log.received {
            return Ok(0);
        }
        let skip = usize::try_from(log.received.saturating_sub(offset))
            .unwrap_or(data.len())
            .min(data.len());
        let fresh = &data[skip..];
        let mut gap = Vec::new();
        if offset > log.received {
            gap = format!(
                "\n[helix: {} bytes of output were lost]\n",
                offset - log.received
            )
            .into_bytes();
        }
        let path = self.path(job);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        if attempt > 1 && log.received == 0 {
            writeln!(file, "\n[helix: attempt {attempt}]")?;
        }
        file.write_all(&gap)?;
        file.write_all(fresh)?;
        let written = fresh.len();
        log.received = end;
        let len = file.metadata()?.len();
        drop(file);
        if len > MAX_LOG_BYTES + MAX_LOG_BYTES / 5 {
            trim_head(&path, len, MAX_LOG_BYTES)?;
        }
        log.tx.send_modify(|n| *n += 1);
        Ok(written)
    }

    /// Everything stored for `job` from byte `from` of the file.
    pub fn read_from(&self, job: JobId, from: u64) -> std::io::Result<Vec<u8>> {
        let mut file = match std::fs::File::open(self.path(job)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        file.seek(SeekFrom::Start(from))?;
        let mut out = Vec::new();
        file.read_to_end(&mut out)?;
        Ok(out)
    }

    /// The last `lines` lines of a job's log, for failure messages.
    pub fn tail(&self, job: JobId, lines: usize) -> String {
        let text = self.read_from(job, 0).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// A receiver that changes whenever any attempt of `job` appends.
    pub fn watch(&self, job: JobId, attempt: u32) -> watch::Receiver<u64> {
        let mut map = self.open.lock().expect("logs lock poisoned");
        Self::entry(&mut map, job, attempt).tx.subscribe()
    }

    /// Forget the in-memory state of a finished job (the file stays).
    pub fn close(&self, job: JobId) {
        self.open
            .lock()
            .expect("logs lock poisoned")
            .retain(|(j, _), _| *j != job);
    }
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
mod tests {
    use super::*;

    #[test]
    fn appends_in_order_and_trims_resent_chunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = Logs::new(dir.path()).expect("logs");
        let job = JobId::new_v4();
        assert_eq!(logs.append(job, 1, 0, b"hello ").expect("append"), 6);
        assert_eq!(
            logs.append(job, 1, 3, b"lo world").expect("append"),
            5,
            "overlap trimmed"
        );
        assert_eq!(
            logs.append(job, 1, 0, b"hello").expect("append"),
            0,
            "duplicate dropped"
        );
        assert_eq!(logs.read_from(job, 0).expect("read"), b"hello world");
        logs.append(job, 1, 20, b"!").expect("append");
        let text = String::from_utf8(logs.read_from(job, 0).expect("read")).expect("utf-8");
        assert!(text.contains("9 bytes of output were lost"), "{text}");
        assert_eq!(logs.tail(job, 1), "!");
    }

    #[test]
    fn logs_are_bounded_keeping_the_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = Logs::new(dir.path()).expect("logs");
        let job = JobId::new_v4();
        let chunk = vec![b'x'; 1024 * 1024];
        let mut offset = 0;
        for _ in 0..13 {
            logs.append(job, 1, offset, &chunk).expect("append");
            offset += chunk.len() as u64;
        }
        logs.append(job, 1, offset, b"\nthe end\n").expect("append");
        let text = logs.read_from(job, 0).expect("read");
        assert!(text.len() as u64 <= MAX_LOG_BYTES + MAX_LOG_BYTES / 5 + 100);
        assert!(String::from_utf8_lossy(&text).starts_with("[helix: the first"));
        assert_eq!(logs.tail(job, 1), "the end");
    }
}
