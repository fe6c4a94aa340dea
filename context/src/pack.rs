//! Packing a context directory into a deterministic tar: [`pack`], [`pack_to_file`]
//! and, for options, [`Packer`].
//!
//! The same tree always gives the same bytes, whatever the file times, owners, umask
//! or directory listing order:
//! - entries are sorted by path, byte order (a directory comes before its contents),
//!   and directories have entries of their own (`dir/`);
//! - every header has mtime 0, uid and gid 0 and empty user and group names;
//! - modes are normalized: 0755 for directories and for files with any executable bit,
//!   0644 for other files, 0777 for symbolic links (what GNU tar and Docker write; Linux
//!   ignores a link's own mode);
//! - GNU tar format, with GNU long-name (`L`) and long-link (`K`) entries for paths or
//!   link targets over 100 bytes; the archive ends with two zero blocks.
//!
//! Only regular files, directories and symbolic links are sent. A link is stored as a
//! link with its target text, exactly as `readlink` returns it, and is never followed:
//! packing reads nothing through a link, so nothing outside the directory is read.
//! Files are opened with `O_NOFOLLOW`, and a file that turns into a link, shrinks or
//! disappears while packing is an error rather than a corrupt archive (a directory
//! swapped for a link in the middle of the walk is the one race left: without `openat`,
//! listing it would follow the link). Anything else
//! (socket, fifo, device) is refused with its path, unless it is ignored. Hard-linked
//! files are sent as independent copies.
//!
//! The ignore rules ([`crate::ignore`]) apply, except that the ignore file itself and
//! the Dockerfile are always sent, as `docker build` does (it re-includes them when the
//! rules exclude them): by default `Dockerfile` and `Containerfile` at the root, or the
//! paths given to [`Packer::dockerfile`]. Their parent directories are sent with them.
//! More generally, a directory that is excluded is still sent when something below it is
//! re-included by a `!` line (so that the re-included file has somewhere to go), and is
//! not even walked when nothing below it can be.
//!
//! Hashing happens on the bytes as they are written: [`Packed::digest`] is the sha256
//! of exactly the stream the caller received.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, FileType};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::Path;

use helix_protocol::Digest;
use tar::{EntryType, Header};

use crate::digest::HashingWriter;
use crate::error::ContextError;
use crate::ignore::{self, IgnoreRules};

/// The Dockerfile names kept even when the ignore rules exclude them, when the caller
/// names none: podman looks for `Containerfile` then `Dockerfile`.
const DEFAULT_DOCKERFILES: [&str; 2] = ["Containerfile", "Dockerfile"];

/// Tar block size.
const BLOCK: u64 = 512;

/// The name field of a tar header; longer names need a GNU long-name entry.
const NAME_FIELD: usize = 100;

/// Buffer for copying file contents and for the output.
const CHUNK: usize = 64 * 1024;

/// What [`pack`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Packed {
    /// sha256 of the archive bytes, as written.
    pub digest: Digest,
    /// Archive size in bytes.
    pub size: u64,
    /// Number of regular files in the archive.
    pub files: u64,
    /// Number of entries: files, directories and symbolic links.
    pub entries: u64,
}

/// Packs context directory `dir` into `out` with the default options (see the module
/// docs). `out` need not be buffered.
pub fn pack(dir: &Path, out: impl Write) -> Result<Packed, ContextError> {
    Packer::new(dir).pack(out)
}

/// Packs context directory `dir` into a new file at `path` (replacing it). If `path`
/// is inside `dir`, it is left out of the archive. On error the file is removed.
pub fn pack_to_file(dir: &Path, path: &Path) -> Result<Packed, ContextError> {
    Packer::new(dir).pack_to_file(path)
}

/// Packing with options: which Dockerfile to always send, and a progress callback.
pub struct Packer<'a> {
    dir: &'a Path,
    dockerfiles: Vec<String>,
    progress: Option<Box<dyn FnMut(u64) + 'a>>,
    /// Device and inode of our own output file, when it lives in the context.
    skip: Option<(u64, u64)>,
}

impl fmt::Debug for Packer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Packer")
            .field("dir", &self.dir)
            .field("dockerfiles", &self.dockerfiles)
            .field("progress", &self.progress.is_some())
            .finish_non_exhaustive()
    }
}

impl<'a> Packer<'a> {
    /// A packer for context directory `dir` (a link to a directory is fine for `dir`
    /// itself; nothing below it is followed).
    pub fn new(dir: &'a Path) -> Self {
        Packer {
            dir,
            dockerfiles: Vec::new(),
            progress: None,
            skip: None,
        }
    }

    /// Always sends `path` (relative to the context, `/`-separated), even if the
    /// ignore rules exclude it: the Dockerfile in use. Replaces the default
    /// `Dockerfile`/`Containerfile`; call it again to keep more than one. A path that
    /// leaves the context (`../Dockerfile`, `/abs`) is not in the archive anyway and
    /// is ignored here.
    pub fn dockerfile(mut self, path: &str) -> Self {
        let cleaned = crate::pattern::clean(path);
        if cleaned != "."
            && !cleaned.starts_with('/')
            && cleaned != ".."
            && !cleaned.starts_with("../")
        {
            self.dockerfiles.push(cleaned);
        } else {
            tracing::debug!(path, "Dockerfile outside the context: not kept specially");
        }
        self
    }

    /// Calls `progress` with the number of archive bytes written so far, after each
    /// write (often: throttle in the callback).
    pub fn on_progress(mut self, progress: impl FnMut(u64) + 'a) -> Self {
        self.progress = Some(Box::new(progress));
        self
    }

    /// Packs into `out`. `out` need not be buffered.
    pub fn pack<W: Write>(mut self, out: W) -> Result<Packed, ContextError> {
        let dir = self.dir;
        let meta = fs::metadata(dir).map_err(|source| ContextError::Io {
            action: "open build context directory",
            path: dir.to_owned(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(ContextError::NotADirectory {
                path: dir.to_owned(),
            });
        }

        let ignore = ignore::load(dir)?;
        let mut keep = if self.dockerfiles.is_empty() {
            DEFAULT_DOCKERFILES
                .iter()
                .map(|s| (*s).to_owned())
                .collect()
        } else {
            std::mem::take(&mut self.dockerfiles)
        };
        if let Some(file) = &ignore {
            keep.push(file.name.to_owned());
        }
        let mut walk = Walk {
            root: dir,
            rules: ignore.as_ref().map(|file| &file.rules),
            keep: &keep,
            skip: self.skip,
            items: Vec::new(),
        };
        walk.dir(Path::new(""))?;
        let mut items = walk.items;
        items.sort_by(|a, b| a.rel.as_bytes().cmp(b.rel.as_bytes()));

        let mut progress = self.progress.take();
        let writer = HashingWriter::new(BufWriter::with_capacity(CHUNK, out), |written| {
            if let Some(progress) = progress.as_mut() {
                progress(written);
            }
        });
        let mut tar = TarOut { out: writer };
        let mut files = 0u64;
        let mut buf = vec![0u8; CHUNK];
        for item in &items {
            if tar.item(dir, item, &mut buf)? {
                files += 1;
            }
        }
        tar.write(&[0u8; 2 * BLOCK as usize])?;
        let (_, digest, size) = tar
            .out
            .finish()
            .map_err(|source| ContextError::Write { source })?;
        tracing::debug!(
            context = %dir.display(),
            ignore_file = ignore.as_ref().map(|f| f.name),
            entries = items.len(),
            files,
            size,
            %digest,
            "packed build context"
        );
        Ok(Packed {
            digest,
            size,
            files,
            entries: items.len() as u64,
        })
    }

    /// Packs into a new file at `path` (replacing it). If `path` is inside the
    /// context, it is left out of the archive. On error the file is removed.
    pub fn pack_to_file(mut self, path: &Path) -> Result<Packed, ContextError> {
        let file = File::create(path).map_err(|source| ContextError::Io {
            action: "create",
            path: path.to_owned(),
            source,
        })?;
        let result = file
            .metadata()
            .map_err(|source| ContextError::Io {
                action: "inspect",
                path: path.to_owned(),
                source,
            })
            .and_then(|meta| {
                self.skip = Some((meta.dev(), meta.ino()));
                self.pack(&file)
            });
        if result.is_err() {
            if let Err(e) = fs::remove_file(path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove partial build context archive");
            }
        }
        result
    }
}

/// A human name for a file type, for error messages.
pub(crate) fn kind_name(file_type: FileType) -> &'static str {
    if file_type.is_dir() {
        "directory"
    } else if file_type.is_symlink() {
        "symbolic link"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_fifo() {
        "named pipe (fifo)"
    } else if file_type.is_block_device() {
        "block device"
    } else if file_type.is_char_device() {
        "character device"
    } else if file_type.is_file() {
        "regular file"
    } else {
        "special file"
    }
}

#[derive(Debug)]
enum Kind {
    Dir,
    File,
    Symlink(OsString),
}

/// One path to send, relative to the context root.
#[derive(Debug)]
struct Item {
    rel: OsString,
    kind: Kind,
}

/// The directory walk: collects what to send, applying the ignore rules.
struct Walk<'w> {
    root: &'w Path,
    rules: Option<&'w IgnoreRules>,
    /// Paths sent even when excluded (Dockerfile, ignore file).
    keep: &'w [String],
    skip: Option<(u64, u64)>,
    items: Vec<Item>,
}

impl Walk<'_> {
    fn excluded(&self, key: &str) -> bool {
        self.rules.is_some_and(|rules| rules.is_excluded(key))
            && !self.keep.iter().any(|k| k == key)
    }

    fn may_include_below(&self, key: &str) -> bool {
        self.rules.is_some_and(|rules| rules.may_include_below(key))
            || self.keep.iter().any(|k| {
                k.strip_prefix(key)
                    .is_some_and(|rest| rest.starts_with('/'))
            })
    }

    /// Walks directory `rel`; returns whether anything below it is sent.
    fn dir(&mut self, rel: &Path) -> Result<bool, ContextError> {
        let abs = self.root.join(rel);
        let io_error = |path: &Path, action| {
            let path = path.to_owned();
            move |source| ContextError::Io {
                action,
                path,
                source,
            }
        };
        let listing = fs::read_dir(&abs).map_err(io_error(&abs, "read directory"))?;
        let mut sent_any = false;
        for entry in listing {
            let entry = entry.map_err(io_error(&abs, "read directory"))?;
            let rel = rel.join(entry.file_name());
            let abs = self.root.join(&rel);
            // Does not follow links (lstat).
            let meta = entry.metadata().map_err(io_error(&abs, "inspect"))?;
            if self.skip == Some((meta.dev(), meta.ino())) {
                continue;
            }
            // Matching works on text; a name that is not UTF-8 is matched with U+FFFD in
            // place of its invalid bytes, as Go's regexp reads it.
            let key = rel.to_string_lossy();
            let excluded = self.excluded(&key);
            let file_type = meta.file_type();
            let kind = if file_type.is_dir() {
                if excluded && !self.may_include_below(&key) {
                    tracing::trace!(path = %key, "excluded directory not walked");
                    continue;
                }
                let sent_below = self.dir(&rel)?;
                if excluded && !sent_below {
                    continue;
                }
                Kind::Dir
            } else if excluded {
                continue;
            } else if file_type.is_file() {
                Kind::File
            } else if file_type.is_symlink() {
                let target = fs::read_link(&abs).map_err(io_error(&abs, "read symbolic link"))?;
                Kind::Symlink(target.into_os_string())
            } else {
                return Err(ContextError::UnsupportedFile {
                    path: abs,
                    kind: kind_name(file_type),
                });
            };
            self.items.push(Item {
                rel: rel.into_os_string(),
                kind,
            });
            sent_any = true;
        }
        Ok(sent_any)
    }
}

/// The tar stream being written.
struct TarOut<W: Write> {
    out: W,
}

impl<W: Write> TarOut<W> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), ContextError> {
        self.out
            .write_all(bytes)
            .map_err(|source| ContextError::Write { source })
    }

    fn pad(&mut self, len: u64) -> Result<(), ContextError> {
        let rest = (BLOCK - len % BLOCK) % BLOCK;
        self.write(&[0u8; BLOCK as usize][..rest as usize])
    }

    /// Writes one item; returns whether it was a regular file.
    fn item(&mut self, root: &Path, item: &Item, buf: &mut [u8]) -> Result<bool, ContextError> {
        let name = item.rel.as_bytes();
        match &item.kind {
            Kind::Dir => {
                let mut header = header(EntryType::Directory, 0o755, 0);
                let mut dir_name = name.to_vec();
                dir_name.push(b'/');
                self.name(&mut header, &dir_name)?;
                header.set_cksum();
                self.write(header.as_bytes())?;
                Ok(false)
            }
            Kind::Symlink(target) => {
                let mut header = header(EntryType::Symlink, 0o777, 0);
                self.name(&mut header, name)?;
                self.link_name(&mut header, target.as_bytes())?;
                header.set_cksum();
                self.write(header.as_bytes())?;
                Ok(false)
            }
            Kind::File => {
                let path = root.join(&item.rel);
                self.file(&path, name, buf)?;
                Ok(true)
            }
        }
    }

    fn file(&mut self, path: &Path, name: &[u8], buf: &mut [u8]) -> Result<(), ContextError> {
        let changed = |detail| ContextError::ChangedDuringPack {
            path: path.to_owned(),
            detail,
        };
        let io_error = |action| {
            move |source| ContextError::Io {
                action,
                path: path.to_owned(),
                source,
            }
        };
        // O_NOFOLLOW: if the file became a link since the walk, fail instead of reading
        // through it. O_NONBLOCK: if it became a fifo, do not hang opening it.
        let mut file = match fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
        {
            Ok(file) => file,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(changed("it was replaced by a symbolic link"))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(changed("it was deleted")),
            Err(e) => return Err(io_error("open")(e)),
        };
        let meta = file.metadata().map_err(io_error("inspect"))?;
        if !meta.is_file() {
            return Err(changed("it is no longer a regular file"));
        }
        let size = meta.len();
        let mode = if meta.mode() & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        let mut header = header(EntryType::Regular, mode, size);
        self.name(&mut header, name)?;
        header.set_cksum();
        self.write(header.as_bytes())?;

        // Exactly `size` bytes, whatever happens to the file meanwhile: more would
        // corrupt the archive, and fewer is an error.
        let mut left = size;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = match file.read(&mut buf[..want]) {
                Ok(0) => return Err(changed("it shrank")),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_error("read")(e)),
            };
            self.write(&buf[..n])?;
            left -= n as u64;
        }
        self.pad(size)
    }

    /// Puts `name` in the header, preceded by a GNU long-name entry if it is too long.
    fn name(&mut self, header: &mut Header, name: &[u8]) -> Result<(), ContextError> {
        let field = &mut header.as_old_mut().name;
        if name.len() > NAME_FIELD {
            field.copy_from_slice(&name[..NAME_FIELD]);
            self.long_entry(b'L', name)
        } else {
            field[..name.len()].copy_from_slice(name);
            Ok(())
        }
    }

    /// Puts link target `target` in the header, preceded by a GNU long-link entry if
    /// it is too long.
    fn link_name(&mut self, header: &mut Header, target: &[u8]) -> Result<(), ContextError> {
        let field = &mut header.as_old_mut().linkname;
        if target.len() > NAME_FIELD {
            field.copy_from_slice(&target[..NAME_FIELD]);
            self.long_entry(b'K', target)
        } else {
            field[..target.len()].copy_from_slice(target);
            Ok(())
        }
    }

    /// A GNU `././@LongLink` entry carrying `data` and a NUL for the next header.
    fn long_entry(&mut self, entry_type: u8, data: &[u8]) -> Result<(), ContextError> {
        let len = data.len() as u64 + 1;
        let mut header = header(EntryType::new(entry_type), 0o644, len);
        let marker = b"././@LongLink";
        header.as_old_mut().name[..marker.len()].copy_from_slice(marker);
        header.set_cksum();
        self.write(header.as_bytes())?;
        self.write(data)?;
        self.write(&[0])?;
        self.pad(len)
    }
}

/// A GNU header with Helix's fixed metadata.
fn header(entry_type: EntryType, mode: u32, size: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(entry_type);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(size);
    header
}
