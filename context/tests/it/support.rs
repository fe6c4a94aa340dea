//! Helpers: building trees on disk, reading them back, reading and crafting tars.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Read as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use tar::{EntryType, Header};

/// A node of a tree on disk, as the round trip must preserve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    Dir,
    File { data: Vec<u8>, exec: bool },
    Link(Vec<u8>),
}

/// Everything below `root` (not `root` itself), by `/`-joined relative path bytes.
/// Never follows links.
pub(crate) fn read_tree(root: &Path) -> BTreeMap<Vec<u8>, Node> {
    let mut out = BTreeMap::new();
    walk(root, Path::new(""), &mut out);
    out
}

fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<Vec<u8>, Node>) {
    for entry in fs::read_dir(root.join(rel)).expect("read_dir") {
        let entry = entry.expect("entry");
        let rel = rel.join(entry.file_name());
        let abs = root.join(&rel);
        let meta = fs::symlink_metadata(&abs).expect("lstat");
        let key = rel.as_os_str().as_bytes().to_vec();
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&abs).expect("readlink");
            out.insert(key, Node::Link(target.as_os_str().as_bytes().to_vec()));
        } else if meta.is_dir() {
            out.insert(key, Node::Dir);
            walk(root, &rel, out);
        } else {
            out.insert(
                key,
                Node::File {
                    data: fs::read(&abs).expect("read"),
                    exec: meta.permissions().mode() & 0o111 != 0,
                },
            );
        }
    }
}

/// Creates `nodes` below `root` (parents first: the map is sorted).
pub(crate) fn write_tree(root: &Path, nodes: &BTreeMap<Vec<u8>, Node>) {
    for (rel, node) in nodes {
        let path = root.join(OsStr::from_bytes(rel));
        match node {
            Node::Dir => fs::create_dir_all(&path).expect("mkdir"),
            Node::File { data, exec } => {
                fs::write(&path, data).expect("write");
                let mode = if *exec { 0o755 } else { 0o644 };
                fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
            }
            Node::Link(target) => {
                std::os::unix::fs::symlink(OsStr::from_bytes(target), &path).expect("symlink")
            }
        }
    }
}

/// Writes `content` to `root/rel`, creating parents.
pub(crate) fn put(root: &Path, rel: &str, content: &str) {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    fs::write(path, content).expect("write");
}

/// One entry of an archive, as the tar crate reads it (long names resolved).
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    pub(crate) path: String,
    pub(crate) entry_type: EntryType,
    pub(crate) mode: u32,
    pub(crate) uid: u64,
    pub(crate) gid: u64,
    pub(crate) mtime: u64,
    pub(crate) username: Vec<u8>,
    pub(crate) groupname: Vec<u8>,
    pub(crate) link: Option<String>,
    pub(crate) data: Vec<u8>,
}

pub(crate) fn list(archive: &[u8]) -> Vec<Listed> {
    let mut archive = tar::Archive::new(archive);
    let mut out = Vec::new();
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let header = entry.header().clone();
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let link = entry
            .link_name_bytes()
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("data");
        out.push(Listed {
            path,
            entry_type: header.entry_type(),
            mode: header.mode().expect("mode"),
            uid: header.uid().expect("uid"),
            gid: header.gid().expect("gid"),
            mtime: header.mtime().expect("mtime"),
            username: header.username_bytes().unwrap_or_default().to_vec(),
            groupname: header.groupname_bytes().unwrap_or_default().to_vec(),
            link,
            data,
        });
    }
    out
}

pub(crate) fn paths(archive: &[u8]) -> Vec<String> {
    list(archive).into_iter().map(|e| e.path).collect()
}

/// A hand-made archive: raw names go straight into the header, so that paths the tar
/// crate's builder would refuse (`..`, absolute) can be written.
pub(crate) struct Crafted {
    builder: tar::Builder<Vec<u8>>,
}

impl Crafted {
    pub(crate) fn new() -> Self {
        Crafted {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn header(name: &[u8], entry_type: EntryType, size: u64, link: Option<&[u8]>) -> Header {
        let mut header = Header::new_gnu();
        assert!(name.len() <= 100, "use long() for long names");
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        if let Some(link) = link {
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        }
        header.set_entry_type(entry_type);
        header.set_mode(0o644);
        header.set_size(size);
        header.set_cksum();
        header
    }

    pub(crate) fn raw(
        mut self,
        name: &str,
        entry_type: EntryType,
        data: &[u8],
        link: Option<&str>,
    ) -> Self {
        let header = Self::header(
            name.as_bytes(),
            entry_type,
            data.len() as u64,
            link.map(str::as_bytes),
        );
        self.builder.append(&header, data).expect("append");
        self
    }

    pub(crate) fn file(self, name: &str, data: &[u8]) -> Self {
        self.raw(name, EntryType::Regular, data, None)
    }

    pub(crate) fn dir(self, name: &str) -> Self {
        self.raw(name, EntryType::Directory, b"", None)
    }

    pub(crate) fn symlink(self, name: &str, target: &str) -> Self {
        self.raw(name, EntryType::Symlink, b"", Some(target))
    }

    /// A GNU long-name entry for the next entry.
    pub(crate) fn long_name(self, name: &str) -> Self {
        let mut data = name.as_bytes().to_vec();
        data.push(0);
        self.raw("././@LongLink", EntryType::GNULongName, &data, None)
    }

    /// A PAX extended header with one record.
    pub(crate) fn pax(self, key: &str, value: &str) -> Self {
        let body = format!(" {key}={value}\n");
        let mut len = body.len() + 1;
        while format!("{len}{body}").len() != len {
            len += 1;
        }
        let record = format!("{len}{body}");
        self.raw("PaxHeaders/x", EntryType::XHeader, record.as_bytes(), None)
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        self.builder.into_inner().expect("finish")
    }
}
