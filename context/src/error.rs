//! [`ContextError`], the one error of this crate, and [`Refusal`], why an archive
//! entry was refused while unpacking.

use std::fmt;
use std::io;
use std::path::PathBuf;

use helix_protocol::Digest;

use crate::ignore::IgnoreError;

/// What went wrong packing, unpacking or verifying a build context.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContextError {
    /// A file system operation failed; `action` says which ("read directory", ...).
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    /// The context path is not a directory.
    #[error(
        "build context {path} is not a directory: pass the directory that holds the \
         Dockerfile and the files it copies"
    )]
    NotADirectory { path: PathBuf },

    /// The ignore file has a pattern that does not compile.
    #[error("cannot use ignore file {path}: {source}; fix or remove that line")]
    IgnoreFile { path: PathBuf, source: IgnoreError },

    /// Packing found something other than a regular file, directory or symbolic link.
    #[error(
        "cannot send {path} in the build context: it is a {kind}, and only regular files, \
         directories and symbolic links can be sent (remove it, or add it to .dockerignore)"
    )]
    UnsupportedFile { path: PathBuf, kind: &'static str },

    /// A file changed between being listed and being read.
    #[error(
        "{path} changed while the build context was being packed ({detail}); pack again \
         when nothing is writing to the context directory"
    )]
    ChangedDuringPack { path: PathBuf, detail: &'static str },

    /// The archive could not be written to the output.
    #[error("cannot write the build context archive: {source}")]
    Write { source: io::Error },

    /// Unpacking refused an entry that could write outside the destination or is of a
    /// kind a build context may not hold. Nothing was left in the destination.
    #[error("refusing build context entry {entry:?}: {reason}")]
    UnsafeEntry { entry: String, reason: Refusal },

    /// Unpacking stopped at the size limit. Nothing was left in the destination.
    #[error(
        "build context is too large: {} past the limit of {limit} bytes (make the context \
         smaller with .dockerignore, or raise the limit)",
        too_large_subject(.entry)
    )]
    TooLarge { entry: Option<String>, limit: u64 },

    /// Unpacking stopped at the entry-count limit. Nothing was left in the destination.
    #[error(
        "build context has too many entries: {entry:?} is past the limit of {limit} \
         (exclude generated trees such as node_modules with .dockerignore, or raise the limit)"
    )]
    TooManyEntries { entry: String, limit: u64 },

    /// The archive is not a well-formed tar stream. Nothing was left in the destination.
    #[error(
        "the build context archive is corrupt or truncated{}: {source} (upload the context again)",
        at_entry(.entry)
    )]
    CorruptArchive {
        entry: Option<String>,
        source: io::Error,
    },

    /// The destination of an unpack already holds files.
    #[error("cannot unpack the build context into {path}: it is not empty (unpack into a fresh directory)")]
    DestinationNotEmpty { path: PathBuf },

    /// A file's sha256 is not the expected one.
    #[error(
        "{path} does not match its digest: expected {expected}, found {actual} over {size} \
         bytes (it was corrupted or replaced in transfer; fetch it again)"
    )]
    DigestMismatch {
        path: PathBuf,
        expected: Digest,
        actual: Digest,
        size: u64,
    },
}

fn too_large_subject(entry: &Option<String>) -> String {
    match entry {
        Some(entry) => format!("entry {entry:?} takes the unpacked size"),
        None => "the archive goes".to_owned(),
    }
}

fn at_entry(entry: &Option<String>) -> String {
    match entry {
        Some(entry) => format!(" at entry {entry:?}"),
        None => String::new(),
    }
}

/// Why [`crate::unpack`] refused an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The path starts with `/`.
    AbsolutePath,
    /// The path has a `..` component.
    ParentDirectory,
    /// The path is empty, or names only the root as something other than a directory.
    EmptyPath,
    /// The path (or link target) contains a NUL byte.
    NulByte,
    /// A path or link target longer than the unpacker accepts.
    TooLong { len: usize, max: usize },
    /// A parent component is a symbolic link (from this archive or already there).
    ThroughSymlink { link: String },
    /// A parent component is a file.
    ParentNotDirectory { parent: String },
    /// An earlier entry already created this path.
    Duplicate { existing: &'static str },
    /// Hard links are not supported.
    HardLink { target: String },
    /// Device, fifo or other special file.
    Special { kind: &'static str },
    /// A symbolic link without a target.
    EmptyLinkTarget,
    /// An entry type this unpacker does not handle (sparse files, volume labels, ...).
    UnsupportedType { type_byte: u8 },
    /// A PAX record this unpacker does not handle.
    UnsupportedPax { key: String },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::AbsolutePath => {
                f.write_str("absolute paths are not allowed in a build context archive")
            }
            Refusal::ParentDirectory => f.write_str(
                "\"..\" components are not allowed in a build context archive (they could \
                 write outside the destination)",
            ),
            Refusal::EmptyPath => f.write_str("the entry has no path"),
            Refusal::NulByte => f.write_str("the path or link target contains a NUL byte"),
            Refusal::TooLong { len, max } => {
                write!(
                    f,
                    "a path or link target of {len} bytes is longer than {max} bytes"
                )
            }
            Refusal::ThroughSymlink { link } => write!(
                f,
                "its parent {link:?} is a symbolic link, and writing through a link could \
                 escape the destination"
            ),
            Refusal::ParentNotDirectory { parent } => {
                write!(f, "its parent {parent:?} is not a directory")
            }
            Refusal::Duplicate { existing } => write!(
                f,
                "an earlier entry already created this path as a {existing}, and entries may \
                 not replace each other"
            ),
            Refusal::HardLink { target } => write!(
                f,
                "hard links are not supported (this one points to {target:?}); send the file \
                 itself"
            ),
            Refusal::Special { kind } => write!(
                f,
                "{kind} entries are not allowed in a build context (only regular files, \
                 directories and symbolic links)"
            ),
            Refusal::EmptyLinkTarget => f.write_str("the symbolic link has no target"),
            Refusal::UnsupportedType { type_byte } => write!(
                f,
                "tar entry type {:?} is not supported (only regular files, directories and \
                 symbolic links)",
                char::from(*type_byte)
            ),
            Refusal::UnsupportedPax { key } => {
                write!(f, "the PAX header record {key:?} is not supported")
            }
        }
    }
}
