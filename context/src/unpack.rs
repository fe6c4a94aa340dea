//! Unpacking a build context archive from an untrusted source: [`unpack`].
//!
//! The tar crate's own `unpack_in` is not used: it silently drops a leading `/` and
//! skips `..` entries instead of refusing them, accepts hard links, follows symbolic
//! links that were created earlier in the archive when they resolve inside the
//! destination, and documents that it does not defend against a destination that
//! changes under it. Here every entry is checked first, and the archive is refused
//! whole, with an error naming the entry, when one of them:
//! - has an absolute path, a `..` component, a NUL byte, or a path over 4096 bytes;
//! - would be written through a symbolic link (any parent component that is a link,
//!   whether this archive created it or not), or below something that is not a
//!   directory;
//! - would replace anything an earlier entry created (a file over a link, a link over a
//!   file, ...); a repeated directory entry is fine;
//! - is a hard link, a device, a fifo, or a type this unpacker does not know (sparse
//!   files, ...);
//! - takes the total size of the files past [`Limits::max_bytes`], or the entry count
//!   past [`Limits::max_entries`].
//!
//! On any error the destination is emptied again (and removed, if `unpack` created
//! it), so a caller never builds from half a context.
//!
//! What is created: directories (0755), regular files (0755 when the archive gave them
//! any executable bit, else 0644; created with `O_CREAT|O_EXCL|O_NOFOLLOW`, so never
//! through a link and never over an existing path), and symbolic links with their
//! target text as is: a link to `/etc/shadow` is created as that link and never
//! dereferenced here. Owners and times from the archive are ignored.
//!
//! GNU long names (`L`/`K`) and PAX `path`/`linkpath` records are read here, with
//! bounded sizes, rather than by the tar crate, which would buffer them whole. A PAX
//! `size` record is refused (the tar crate's raw mode would misread the data after
//! it); Helix's packer never writes one.
//!
//! The checks assume nothing else writes into the destination while it is being
//! unpacked (it is the agent's private work directory): a concurrent writer could swap
//! a checked directory for a link between the check and the write.

use std::ffi::OsStr;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use tar::EntryType;

use crate::error::{ContextError, Refusal};

/// Longest path or link target accepted, in bytes (Linux's `PATH_MAX`).
const MAX_PATH_BYTES: usize = 4096;

/// Largest PAX extension header read; real ones are a few hundred bytes.
const MAX_PAX_BYTES: u64 = 64 * 1024;

/// Archive bytes allowed per entry on top of file contents: the header, a long name,
/// a long link, a PAX header and padding. With [`Limits`] this bounds the raw stream,
/// so that a stream of headers alone cannot run forever.
const OVERHEAD_PER_ENTRY: u64 = 16 * 1024;

/// Buffer for copying file contents.
const CHUNK: usize = 64 * 1024;

/// Bounds on what [`unpack`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Total size of all regular files, in bytes.
    pub max_bytes: u64,
    /// Number of entries (files, directories and links; not extension headers).
    pub max_entries: u64,
}

impl Limits {
    pub const fn new(max_bytes: u64, max_entries: u64) -> Self {
        Limits {
            max_bytes,
            max_entries,
        }
    }
}

impl Default for Limits {
    /// 4 GiB and 500 000 entries: far above a sensible build context (Docker warns
    /// well before that), low enough that a broken one cannot fill an agent's disk.
    fn default() -> Self {
        Limits::new(4 << 30, 500_000)
    }
}

/// What [`unpack`] created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Unpacked {
    pub files: u64,
    /// Directories created, explicit entries and implied parents alike.
    pub dirs: u64,
    pub symlinks: u64,
    /// Total size of the regular files.
    pub bytes: u64,
}

/// Unpacks tar stream `tar` into `dest`, which must be an empty directory or not exist
/// yet (its parent must). See the module docs for what is refused. On error nothing is
/// left in `dest`.
pub fn unpack(tar: impl Read, dest: &Path, limits: Limits) -> Result<Unpacked, ContextError> {
    let created_dest = prepare_dest(dest)?;
    let cap = limits.max_bytes.saturating_add(
        limits
            .max_entries
            .saturating_add(1)
            .saturating_mul(OVERHEAD_PER_ENTRY),
    );
    let mut input = Capped {
        inner: tar,
        left: cap,
        exceeded: false,
    };
    let mut unpacker = Unpacker {
        dest,
        limits,
        stats: Unpacked::default(),
        entries: 0,
    };
    let result = match unpacker.run(&mut input) {
        Err(ContextError::CorruptArchive { .. }) if input.exceeded => Err(ContextError::TooLarge {
            entry: None,
            limit: limits.max_bytes,
        }),
        Err(e) => Err(e),
        Ok(()) => Ok(unpacker.stats),
    };
    if result.is_err() {
        remove_partial(dest, created_dest);
    }
    result
}

/// Checks that `dest` is an empty directory, or creates it; returns whether it did.
fn prepare_dest(dest: &Path) -> Result<bool, ContextError> {
    let io_error = |action| {
        move |source| ContextError::Io {
            action,
            path: dest.to_owned(),
            source,
        }
    };
    match fs::metadata(dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            create_dir(dest).map_err(io_error("create directory"))?;
            Ok(true)
        }
        Err(e) => Err(io_error("inspect")(e)),
        Ok(meta) if !meta.is_dir() => Err(io_error("unpack into")(io::Error::other(
            "it exists and is not a directory",
        ))),
        Ok(_) => {
            let mut listing = fs::read_dir(dest).map_err(io_error("read directory"))?;
            if listing.next().is_some() {
                return Err(ContextError::DestinationNotEmpty {
                    path: dest.to_owned(),
                });
            }
            Ok(false)
        }
    }
}

/// Empties `dest` after a failed unpack (removes it if we created it). Links are
/// removed, never followed.
fn remove_partial(dest: &Path, created_dest: bool) {
    let result = if created_dest {
        fs::remove_dir_all(dest)
    } else {
        fs::read_dir(dest).and_then(|listing| {
            for entry in listing {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    fs::remove_dir_all(entry.path())?;
                } else {
                    fs::remove_file(entry.path())?;
                }
            }
            Ok(())
        })
    };
    if let Err(error) = result {
        tracing::warn!(dest = %dest.display(), %error, "cannot remove a partly unpacked build context");
    }
}

/// Creates one directory (not its parents) with mode 0755 whatever the umask.
fn create_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().mode(0o755).create(path)?;
    // O_NOFOLLOW | O_DIRECTORY: fix the mode of exactly the directory just made.
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
        .open(path)?
        .set_permissions(fs::Permissions::from_mode(0o755))
}

/// A reader that fails once more than `left` bytes have been asked of it.
struct Capped<R> {
    inner: R,
    left: u64,
    exceeded: bool,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // Only an error if there is more to read.
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            self.exceeded = true;
            return Err(io::Error::other("the archive is larger than allowed"));
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// GNU long-name/long-link and PAX values waiting for the entry they describe.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax_path: Option<Vec<u8>>,
    pax_link: Option<Vec<u8>>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.long_name.is_none()
            && self.long_link.is_none()
            && self.pax_path.is_none()
            && self.pax_link.is_none()
    }
}

struct Unpacker<'d> {
    dest: &'d Path,
    limits: Limits,
    stats: Unpacked,
    entries: u64,
}

fn corrupt(entry: Option<&str>) -> impl FnOnce(io::Error) -> ContextError + '_ {
    move |source| ContextError::CorruptArchive {
        entry: entry.map(str::to_owned),
        source,
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl Unpacker<'_> {
    fn run<R: Read>(&mut self, input: R) -> Result<(), ContextError> {
        let mut archive = tar::Archive::new(input);
        let entries = archive.entries().map_err(corrupt(None))?.raw(true);
        let mut pending = Pending::default();
        for entry in entries {
            let mut entry = entry.map_err(corrupt(None))?;
            let entry_type = entry.header().entry_type();
            match entry_type {
                EntryType::GNULongName | EntryType::GNULongLink => {
                    let slot = if entry_type == EntryType::GNULongName {
                        &mut pending.long_name
                    } else {
                        &mut pending.long_link
                    };
                    if slot.is_some() {
                        return Err(corrupt(None)(io::Error::other(
                            "two GNU long-name entries for one member",
                        )));
                    }
                    let mut data = read_extension(&mut entry, MAX_PATH_BYTES as u64 + 1)?;
                    while data.last() == Some(&0) {
                        data.pop();
                    }
                    *slot = Some(data);
                }
                EntryType::XHeader => {
                    let data = read_extension(&mut entry, MAX_PAX_BYTES)?;
                    apply_pax(&data, &mut pending)?;
                }
                EntryType::XGlobalHeader => {
                    // Archive-wide comments and defaults (git archive writes one);
                    // nothing in them matters here, and the data is skipped.
                }
                _ => {
                    let pending = std::mem::take(&mut pending);
                    self.entry(&mut entry, pending)?;
                }
            }
        }
        if !pending.is_empty() {
            return Err(corrupt(None)(io::Error::other(
                "the archive ends with a long-name or PAX header that describes no entry",
            )));
        }
        Ok(())
    }

    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        pending: Pending,
    ) -> Result<(), ContextError> {
        let header = entry.header();
        let name = pending
            .pax_path
            .or(pending.long_name)
            .unwrap_or_else(|| header.path_bytes().into_owned());
        let link = pending
            .pax_link
            .or(pending.long_link)
            .or_else(|| header.link_name_bytes().map(|b| b.into_owned()));
        let display = lossy(&name);
        let refuse = |reason| ContextError::UnsafeEntry {
            entry: display.clone(),
            reason,
        };

        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ContextError::TooManyEntries {
                entry: display,
                limit: self.limits.max_entries,
            });
        }

        let components = entry_components(&name).map_err(refuse)?;
        let entry_type = header.entry_type();
        match entry_type {
            EntryType::Regular | EntryType::Continuous => {
                let components = components.ok_or_else(|| refuse(Refusal::EmptyPath))?;
                let mode = header.mode().map_err(corrupt(Some(&display)))?;
                self.file(entry, &components, &display, mode)
            }
            EntryType::Directory => match components {
                // `./` names the destination itself: nothing to do.
                None => Ok(()),
                Some(components) => self.directory(&components, &display),
            },
            EntryType::Symlink => {
                let components = components.ok_or_else(|| refuse(Refusal::EmptyPath))?;
                let target = link
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| refuse(Refusal::EmptyLinkTarget))?;
                if target.contains(&0) {
                    return Err(refuse(Refusal::NulByte));
                }
                if target.len() > MAX_PATH_BYTES {
                    return Err(refuse(Refusal::TooLong {
                        len: target.len(),
                        max: MAX_PATH_BYTES,
                    }));
                }
                self.symlink(&components, &display, &target)
            }
            EntryType::Link => Err(refuse(Refusal::HardLink {
                target: link.as_deref().map(lossy).unwrap_or_default(),
            })),
            EntryType::Char => Err(refuse(Refusal::Special {
                kind: "character device",
            })),
            EntryType::Block => Err(refuse(Refusal::Special {
                kind: "block device",
            })),
            EntryType::Fifo => Err(refuse(Refusal::Special { kind: "fifo" })),
            other => Err(refuse(Refusal::UnsupportedType {
                type_byte: other.as_byte(),
            })),
        }
    }

    /// Makes sure every parent of `components` is a real directory inside the
    /// destination, creating missing ones; returns the full path of the entry.
    fn parents(&mut self, components: &[&[u8]], display: &str) -> Result<PathBuf, ContextError> {
        let refuse = |reason| ContextError::UnsafeEntry {
            entry: display.to_owned(),
            reason,
        };
        let (last, parents) = components
            .split_last()
            .expect("entry_components never returns an empty list");
        let mut path = self.dest.to_path_buf();
        for (depth, component) in parents.iter().enumerate() {
            path.push(OsStr::from_bytes(component));
            let so_far = || lossy(&components[..=depth].join(&b'/'));
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(refuse(Refusal::ThroughSymlink { link: so_far() }))
                }
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => return Err(refuse(Refusal::ParentNotDirectory { parent: so_far() })),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    create_dir(&path).map_err(|source| ContextError::Io {
                        action: "create directory",
                        path: path.clone(),
                        source,
                    })?;
                    self.stats.dirs += 1;
                }
                Err(source) => {
                    return Err(ContextError::Io {
                        action: "inspect",
                        path,
                        source,
                    })
                }
            }
        }
        path.push(OsStr::from_bytes(last));
        Ok(path)
    }

    /// The refusal for an entry whose path already exists.
    fn duplicate(path: &Path, display: &str) -> ContextError {
        let existing = match fs::symlink_metadata(path) {
            Ok(meta) => crate::pack::kind_name(meta.file_type()),
            Err(_) => "file",
        };
        ContextError::UnsafeEntry {
            entry: display.to_owned(),
            reason: Refusal::Duplicate { existing },
        }
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        components: &[&[u8]],
        display: &str,
        archive_mode: u32,
    ) -> Result<(), ContextError> {
        let size = entry.size();
        if self.stats.bytes.saturating_add(size) > self.limits.max_bytes {
            return Err(ContextError::TooLarge {
                entry: Some(display.to_owned()),
                limit: self.limits.max_bytes,
            });
        }
        let path = self.parents(components, display)?;
        let mode = if archive_mode & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        let io_error = |action, path: &Path| {
            let path = path.to_owned();
            move |source| ContextError::Io {
                action,
                path,
                source,
            }
        };
        // create_new is O_CREAT|O_EXCL: it never follows a link at the last component
        // and never opens an existing file; O_NOFOLLOW says so once more.
        let mut file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(Self::duplicate(&path, display))
            }
            Err(e) => return Err(io_error("create", &path)(e)),
        };
        let mut buf = vec![0u8; CHUNK.min(usize::try_from(size).unwrap_or(CHUNK)).max(1)];
        let mut copied = 0u64;
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(corrupt(Some(display))(e)),
            };
            file.write_all(&buf[..n])
                .map_err(io_error("write", &path))?;
            copied += n as u64;
        }
        if copied != size {
            return Err(corrupt(Some(display))(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the archive ends {} bytes into a {size}-byte file", copied),
            )));
        }
        // The umask may have masked the creation mode: set it exactly (fchmod).
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_error("set permissions of", &path))?;
        self.stats.files += 1;
        self.stats.bytes += size;
        Ok(())
    }

    fn directory(&mut self, components: &[&[u8]], display: &str) -> Result<(), ContextError> {
        let path = self.parents(components, display)?;
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                create_dir(&path).map_err(|source| ContextError::Io {
                    action: "create directory",
                    path: path.clone(),
                    source,
                })?;
                self.stats.dirs += 1;
                Ok(())
            }
            // Created earlier as a parent, or listed twice: fine.
            Ok(meta) if meta.file_type().is_dir() => Ok(()),
            Ok(_) => Err(Self::duplicate(&path, display)),
            Err(source) => Err(ContextError::Io {
                action: "inspect",
                path,
                source,
            }),
        }
    }

    fn symlink(
        &mut self,
        components: &[&[u8]],
        display: &str,
        target: &[u8],
    ) -> Result<(), ContextError> {
        let path = self.parents(components, display)?;
        match std::os::unix::fs::symlink(OsStr::from_bytes(target), &path) {
            Ok(()) => {
                self.stats.symlinks += 1;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(Self::duplicate(&path, display))
            }
            Err(source) => Err(ContextError::Io {
                action: "create symbolic link",
                path,
                source,
            }),
        }
    }
}

/// Splits an entry path into its components, refusing what could leave the
/// destination. Empty and `.` components are dropped; `Ok(None)` means the path names
/// the destination itself (`./`).
fn entry_components(name: &[u8]) -> Result<Option<Vec<&[u8]>>, Refusal> {
    if name.is_empty() {
        return Err(Refusal::EmptyPath);
    }
    if name.len() > MAX_PATH_BYTES {
        return Err(Refusal::TooLong {
            len: name.len(),
            max: MAX_PATH_BYTES,
        });
    }
    if name.contains(&0) {
        return Err(Refusal::NulByte);
    }
    if name.starts_with(b"/") {
        return Err(Refusal::AbsolutePath);
    }
    let mut components = Vec::new();
    for component in name.split(|b| *b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => return Err(Refusal::ParentDirectory),
            _ => components.push(component),
        }
    }
    Ok((!components.is_empty()).then_some(components))
}

/// Reads an extension entry's data, refusing one larger than `max` bytes.
fn read_extension<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    max: u64,
) -> Result<Vec<u8>, ContextError> {
    let size = entry.size();
    if size > max {
        return Err(ContextError::UnsafeEntry {
            entry: lossy(&entry.header().path_bytes()),
            reason: Refusal::TooLong {
                len: usize::try_from(size).unwrap_or(usize::MAX),
                max: usize::try_from(max).unwrap_or(usize::MAX),
            },
        });
    }
    let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    entry.read_to_end(&mut data).map_err(corrupt(None))?;
    if data.len() as u64 != size {
        return Err(corrupt(None)(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the archive ends inside an extension header",
        )));
    }
    Ok(data)
}

/// Applies the records of a PAX extended header (`<len> <key>=<value>\n` each).
fn apply_pax(data: &[u8], pending: &mut Pending) -> Result<(), ContextError> {
    let malformed = || corrupt(None)(io::Error::other("malformed PAX extended header"));
    let mut rest = data;
    while !rest.is_empty() {
        let space = rest.iter().position(|b| *b == b' ').ok_or_else(malformed)?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|digits| digits.parse().ok())
            .ok_or_else(malformed)?;
        if len <= space + 1 || len > rest.len() {
            return Err(malformed());
        }
        let record = rest[space + 1..len]
            .strip_suffix(b"\n")
            .ok_or_else(malformed)?;
        let equals = record
            .iter()
            .position(|b| *b == b'=')
            .ok_or_else(malformed)?;
        let (key, value) = (&record[..equals], &record[equals + 1..]);
        match key {
            b"path" => pending.pax_path = Some(value.to_vec()),
            b"linkpath" => pending.pax_link = Some(value.to_vec()),
            b"size" => return Err(unsupported_pax(key)),
            _ if key.starts_with(b"GNU.sparse.") => return Err(unsupported_pax(key)),
            // Times, owners, xattrs, charset, comments: not used.
            _ => {}
        }
        rest = &rest[len..];
    }
    Ok(())
}

fn unsupported_pax(key: &[u8]) -> ContextError {
    ContextError::UnsafeEntry {
        entry: "(PAX extended header)".to_owned(),
        reason: Refusal::UnsupportedPax { key: lossy(key) },
    }
}

#[cfg(test)]
mod tests;
