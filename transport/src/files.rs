//! Key material on disk: written 0600 and refused when anyone else could read it.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Why a key or certificate file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is readable by group or others (mode {mode:o}): run `chmod 600 {path}`")]
    TooOpen { path: String, mode: u32 },
    #[error("{path} already exists; refusing to overwrite it")]
    Exists { path: String },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Write a new secret file with mode 0600, refusing to replace an existing one. The
/// mode is set at creation, so the secret is never readable by others, not even
/// briefly.
pub fn write_secret_new(path: &Path, contents: &[u8]) -> Result<(), FileError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => FileError::Exists {
                path: path.display().to_string(),
            },
            _ => FileError::Io {
                path: path.display().to_string(),
                source: e,
            },
        })?;
    file.write_all(contents).map_err(io(path))?;
    file.sync_all().map_err(io(path))?;
    Ok(())
}

/// Replace a file atomically (write a 0600 temp file beside it, fsync, rename), so a
/// crash leaves either the old or the new contents, never a torn file.
pub fn replace_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), FileError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io(&tmp))?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io(&tmp))?;
        file.write_all(contents).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Ok(d) = std::fs::File::open(dir) {
        // Persist the rename; failure here only weakens durability, not correctness.
        let _ = d.sync_all();
    }
    Ok(())
}

/// Read a secret file, refusing it when group or others can read or write it.
pub fn read_secret(path: &Path) -> Result<String, FileError> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(FileError::TooOpen {
            path: path.display().to_string(),
            mode,
        });
    }
    std::fs::read_to_string(path).map_err(io(path))
}

/// Read a public file (a certificate).
pub fn read_public(path: &Path) -> Result<String, FileError> {
    std::fs::read_to_string(path).map_err(io(path))
}

/// Split PEM text into its blocks, each with its label (`CERTIFICATE`, `PRIVATE KEY`).
pub fn pem_blocks(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + "-----BEGIN ".len()..];
        let Some(label_end) = after.find("-----") else {
            break;
        };
        let label = after[..label_end].to_string();
        let end_marker = format!("-----END {label}-----");
        let Some(end) = rest[start..].find(&end_marker) else {
            break;
        };
        let block_end = start + end + end_marker.len();
        out.push((label, format!("{}\n", &rest[start..block_end])));
        rest = &rest[block_end..];
    }
    out
}

/// What an admin needs to talk to the coordinator: the cluster CA, the admin's
/// certificate and its key, kept together in one 0600 PEM file that can be copied to
/// an operator's machine.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminBundle {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for AdminBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminBundle")
            .field("key_pem", &"[elided]")
            .finish_non_exhaustive()
    }
}

impl AdminBundle {
    /// The file's text: admin certificate, CA certificate, then the key.
    pub fn to_pem(&self) -> String {
        format!("{}{}{}", self.cert_pem, self.ca_pem, self.key_pem)
    }

    pub fn from_pem(path: &Path, text: &str) -> Result<AdminBundle, FileError> {
        let blocks = pem_blocks(text);
        let certs: Vec<&String> = blocks
            .iter()
            .filter(|(l, _)| l == "CERTIFICATE")
            .map(|(_, b)| b)
            .collect();
        let keys: Vec<&String> = blocks
            .iter()
            .filter(|(l, _)| l.ends_with("PRIVATE KEY"))
            .map(|(_, b)| b)
            .collect();
        match (certs.as_slice(), keys.as_slice()) {
            ([cert, ca], [key]) => Ok(AdminBundle {
                ca_pem: (*ca).clone(),
                cert_pem: (*cert).clone(),
                key_pem: (*key).clone(),
            }),
            _ => Err(FileError::Invalid {
                path: path.display().to_string(),
                reason: format!(
                    "an admin bundle holds two certificates (admin, CA) and one private key; found {} and {}",
                    certs.len(),
                    keys.len()
                ),
            }),
        }
    }

    /// Load a bundle file, refusing it when others can read it.
    pub fn load(path: &Path) -> Result<AdminBundle, FileError> {
        let text = read_secret(path)?;
        AdminBundle::from_pem(path, &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_0600_and_never_overwritten() {
        let dir = tempfile_dir();
        let path = dir.join("k.pem");
        write_secret_new(&path, b"secret").expect("write");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            write_secret_new(&path, b"other"),
            Err(FileError::Exists { .. })
        ));
        assert_eq!(read_secret(&path).expect("read"), "secret");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = read_secret(&path).expect_err("too open").to_string();
        assert!(err.contains("chmod 600"), "{err}");
        replace_atomically(&path, b"new", 0o600).expect("replace");
        assert_eq!(read_secret(&path).expect("read"), "new");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn bundles_round_trip() {
        let b = AdminBundle {
            ca_pem: "-----BEGIN CERTIFICATE-----\nQ0E=\n-----END CERTIFICATE-----\n".into(),
            cert_pem: "-----BEGIN CERTIFICATE-----\nTEVBRg==\n-----END CERTIFICATE-----\n".into(),
            key_pem: "-----BEGIN PRIVATE KEY-----\nS0VZ\n-----END PRIVATE KEY-----\n".into(),
        };
        let back = AdminBundle::from_pem(Path::new("b.pem"), &b.to_pem()).expect("parse");
        assert_eq!(back, b);
        let err = AdminBundle::from_pem(Path::new("b.pem"), &b.ca_pem).expect_err("incomplete");
        assert!(err.to_string().contains("found 1 and 0"), "{err}");
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "helix-files-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }
}
