//! Streaming sha256: [`verify_file`] and [`sha256_file`] for a packed context on disk,
//! and the [`HashingWriter`] that lets [`crate::pack`] digest the archive as it writes
//! it, without a second pass.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use helix_protocol::Digest;
use sha2::{Digest as _, Sha256};

use crate::error::ContextError;

/// Buffer size for streaming reads.
const CHUNK: usize = 64 * 1024;

/// The sha256 digest and size of the file at `path`, read once, front to back.
pub fn sha256_file(path: &Path) -> Result<(Digest, u64), ContextError> {
    let io_error = |source| ContextError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(io_error)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error(e)),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((finish(hasher), size))
}

/// Checks that the file at `path` has digest `expected`; returns its size.
pub fn verify_file(path: &Path, expected: &Digest) -> Result<u64, ContextError> {
    let (actual, size) = sha256_file(path)?;
    if &actual != expected {
        return Err(ContextError::DigestMismatch {
            path: path.to_owned(),
            expected: expected.clone(),
            actual,
            size,
        });
    }
    Ok(size)
}

/// The [`Digest`] of a finished hasher.
pub(crate) fn finish(hasher: Sha256) -> Digest {
    format!("sha256:{}", hex::encode(hasher.finalize()))
        .parse()
        .expect("64 lower-case hex digits after sha256: is a valid digest")
}

/// A writer that hashes and counts what passes through it, and reports the count.
pub(crate) struct HashingWriter<W, P> {
    inner: W,
    hasher: Sha256,
    written: u64,
    progress: P,
}

impl<W, P> fmt::Debug for HashingWriter<W, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HashingWriter")
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl<W: Write, P: FnMut(u64)> HashingWriter<W, P> {
    /// `progress` is called with the byte count after each write.
    pub(crate) fn new(inner: W, progress: P) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            written: 0,
            progress,
        }
    }

    /// Flushes, and returns the inner writer, the digest and the byte count.
    pub(crate) fn finish(mut self) -> io::Result<(W, Digest, u64)> {
        self.inner.flush()?;
        Ok((self.inner, finish(self.hasher), self.written))
    }
}

impl<W: Write, P: FnMut(u64)> Write for HashingWriter<W, P> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        (self.progress)(self.written);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
