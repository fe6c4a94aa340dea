//! `.dockerignore` / `.containerignore` rules, as Docker documents them and moby's
//! `patternmatcher` implements them.
//!
//! Reading a file ([`IgnoreRules::parse`], moby's `ignorefile.ReadAll`):
//! - one pattern per line; a UTF-8 BOM at the start is dropped;
//! - a line whose *first* character is `#` is a comment (`  # x` is a pattern);
//! - leading and trailing whitespace is trimmed; blank lines are skipped;
//! - `!` starts an exception, and whitespace after it is trimmed too (`! a` = `!a`);
//! - the pattern is cleaned like Go's `filepath.Clean` (`a//b/./c/` → `a/b/c`,
//!   `a/../b` → `b`) and a leading `/` is removed (`/foo` = `foo`): the context root
//!   is both the working and the root directory.
//!
//! Matching ([`IgnoreRules::is_excluded`], moby's `MatchesOrParentMatches`):
//! - patterns use Go's `filepath.Match` syntax plus `**` (see [`crate::pattern`]); a
//!   pattern is anchored at the context root, so `foo` is only `./foo`, and
//!   `*/temp*` only looks one directory down;
//! - a pattern that matches a directory also excludes everything below it;
//! - lines are applied in order and the last one that matches a path decides, so a
//!   `!` line re-includes what earlier lines excluded, even below an excluded
//!   directory (`docs` then `!docs/README.md` sends `docs/README.md`), and a later
//!   plain line can exclude again.
//!
//! Which file: `.containerignore` if it exists, else `.dockerignore` (podman and
//! buildah do the same; Docker only reads `.dockerignore`). [`load`] reads it.

use std::fs;
use std::io::{self, Read as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use crate::error::ContextError;
use crate::pattern::Pattern;

/// The ignore file podman and buildah prefer.
pub const CONTAINERIGNORE: &str = ".containerignore";
/// Docker's ignore file, used when there is no [`CONTAINERIGNORE`].
pub const DOCKERIGNORE: &str = ".dockerignore";

/// A compiled, ordered list of ignore patterns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IgnoreRules {
    patterns: Vec<Pattern>,
}

/// A pattern that cannot be compiled; `line` is 1-based (the position in the list for
/// [`IgnoreRules::from_patterns`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: invalid pattern {pattern:?}: {reason}")]
#[non_exhaustive]
pub struct IgnoreError {
    pub line: usize,
    pub pattern: String,
    pub reason: String,
}

/// The ignore file found in a context directory.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IgnoreFile {
    /// [`CONTAINERIGNORE`] or [`DOCKERIGNORE`].
    pub name: &'static str,
    pub rules: IgnoreRules,
}

impl IgnoreRules {
    /// The rules of an ignore file's text (see the module docs for the line rules).
    pub fn parse(text: &str) -> Result<IgnoreRules, IgnoreError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        for (index, line) in text.lines().enumerate() {
            if let Some(pattern) = read_line(line) {
                push(&mut patterns, index + 1, &pattern)?;
            }
        }
        Ok(IgnoreRules { patterns })
    }

    /// Rules from patterns that were already read (moby's `patternmatcher.New`): each is
    /// trimmed, cleaned and compiled, and blank ones are skipped, but `#` has no meaning
    /// and a leading `/` is not removed.
    pub fn from_patterns<I, S>(patterns: I) -> Result<IgnoreRules, IgnoreError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut compiled = Vec::new();
        for (index, pattern) in patterns.into_iter().enumerate() {
            push(&mut compiled, index + 1, pattern.as_ref())?;
        }
        Ok(IgnoreRules { patterns: compiled })
    }

    /// Whether there are no patterns (nothing is excluded).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The cleaned patterns in order, exceptions with their `!`.
    pub fn patterns(&self) -> impl Iterator<Item = String> + '_ {
        self.patterns.iter().map(|p| {
            if p.is_exclusion() {
                format!("!{}", p.text())
            } else {
                p.text().to_owned()
            }
        })
    }

    /// Whether `path` (relative to the context root, `/`-separated, clean: no `.`,
    /// `..` or empty components) is excluded: the last pattern that matches the path
    /// or one of its parent directories decides. The root itself (`""` or `"."`) is
    /// never excluded.
    pub fn is_excluded(&self, path: &str) -> bool {
        if path.is_empty() || path == "." {
            return false;
        }
        let parents: Vec<&str> = path
            .match_indices('/')
            .map(|(slash, _)| &path[..slash])
            .collect();
        let mut excluded = false;
        for pattern in &self.patterns {
            // An exception can only change an excluded path, a plain pattern only an
            // included one (moby skips the rest the same way).
            if pattern.is_exclusion() != excluded {
                continue;
            }
            let hit = pattern.matches(path) || parents.iter().any(|dir| pattern.matches(dir));
            if hit {
                excluded = !pattern.is_exclusion();
            }
        }
        excluded
    }

    /// Whether some path strictly below directory `dir` could be re-included by an
    /// exception. When `dir` is excluded and this is `false`, everything below it is
    /// excluded too and the walk need not enter it. Conservative: may say `true`
    /// when nothing below is in fact re-included.
    pub fn may_include_below(&self, dir: &str) -> bool {
        self.patterns
            .iter()
            .any(|p| p.is_exclusion() && p.may_match_below(dir))
    }
}

/// moby's per-line preprocessing; `None` for comments and blank lines.
fn read_line(line: &str) -> Option<String> {
    if line.starts_with('#') {
        return None;
    }
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    let (invert, rest) = match line.strip_prefix('!') {
        Some(rest) => (true, rest.trim()),
        None => (false, line),
    };
    let mut pattern = String::new();
    if !rest.is_empty() {
        let cleaned = crate::pattern::clean(rest);
        pattern = match cleaned.strip_prefix('/') {
            Some(relative) if !relative.is_empty() => relative.to_owned(),
            _ => cleaned,
        };
    }
    Some(if invert {
        format!("!{pattern}")
    } else {
        pattern
    })
}

fn push(patterns: &mut Vec<Pattern>, line: usize, raw: &str) -> Result<(), IgnoreError> {
    match Pattern::new(raw) {
        Ok(Some(pattern)) => {
            patterns.push(pattern);
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(reason) => Err(IgnoreError {
            line,
            pattern: raw.trim().to_owned(),
            reason,
        }),
    }
}

/// Reads the ignore file of context directory `dir`: [`CONTAINERIGNORE`] if present,
/// else [`DOCKERIGNORE`], else `None`. The file must be a regular file: an ignore
/// file that is a symbolic link is refused, since packing never follows links.
pub fn load(dir: &Path) -> Result<Option<IgnoreFile>, ContextError> {
    for name in [CONTAINERIGNORE, DOCKERIGNORE] {
        let path = dir.join(name);
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(ContextError::Io {
                    action: "read ignore file",
                    path,
                    source,
                })
            }
        };
        if !meta.file_type().is_file() {
            let kind = crate::pack::kind_name(meta.file_type());
            return Err(ContextError::Io {
                action: "read ignore file",
                path,
                source: io::Error::other(format!(
                    "it is a {kind}, not a regular file (packing never follows links: \
                     replace it with the file itself)"
                )),
            });
        }
        let mut bytes = Vec::new();
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .and_then(|mut file| file.read_to_end(&mut bytes))
            .map_err(|source| ContextError::Io {
                action: "read ignore file",
                path: path.clone(),
                source,
            })?;
        // Go reads bytes; a stray invalid byte only affects the pattern it is in.
        let text = String::from_utf8_lossy(&bytes);
        let rules = IgnoreRules::parse(&text)
            .map_err(|source| ContextError::IgnoreFile { path, source })?;
        return Ok(Some(IgnoreFile { name, rules }));
    }
    Ok(None)
}

#[cfg(test)]
mod tests;
