//! Unpacking crafted archives: every refusal names the entry and leaves nothing.

use std::fs;
use std::path::Path;

use helix_context::{unpack, ContextError, Limits, Refusal};
use tar::EntryType;

use crate::support::{put, read_tree, Crafted, Node};

/// A fresh destination inside its own temporary directory, so that anything written
/// next to it (an escape) is visible too.
struct Dest {
    root: tempfile::TempDir,
}

impl Dest {
    fn new() -> Self {
        Dest {
            root: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self) -> std::path::PathBuf {
        self.root.path().join("dest")
    }

    /// Unpacks `archive`, expecting a refusal; checks that the destination is gone
    /// and nothing escaped next to it. Returns the error and its message.
    #[track_caller]
    fn refuse(&self, archive: &[u8], limits: Limits) -> (ContextError, String) {
        let err = unpack(archive, &self.path(), limits).expect_err("must be refused");
        let message = err.to_string();
        assert!(!self.path().exists(), "dest left behind after: {message}");
        let siblings: Vec<_> = fs::read_dir(self.root.path())
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert!(
            siblings.is_empty(),
            "written outside dest: {siblings:?} after: {message}"
        );
        (err, message)
    }
}

#[track_caller]
fn assert_refusal(err: &ContextError, entry: &str, reason: &Refusal) {
    match err {
        ContextError::UnsafeEntry {
            entry: e,
            reason: r,
        } => {
            assert_eq!((e.as_str(), r), (entry, reason), "{err}");
        }
        other => panic!("expected a refusal of {entry:?}, got {other}"),
    }
}

#[test]
fn parent_components_are_refused() {
    for name in ["../evil", "a/../../b", "ok/../x", "./../evil"] {
        let archive = Crafted::new()
            .file("fine", b"fine")
            .file(name, b"evil")
            .finish();
        let dest = Dest::new();
        let (err, message) = dest.refuse(&archive, Limits::default());
        assert_refusal(&err, name, &Refusal::ParentDirectory);
        assert!(
            message.starts_with(&format!(
                "refusing build context entry {name:?}: \"..\" components"
            )),
            "{message}"
        );
    }
}

#[test]
fn absolute_paths_are_refused() {
    let outside = tempfile::tempdir().expect("tempdir");
    let target = outside.path().join("abs");
    let name = target.to_str().expect("utf-8").to_owned();
    let archive = Crafted::new().file(&name, b"evil").finish();
    let dest = Dest::new();
    let (err, message) = dest.refuse(&archive, Limits::default());
    assert_refusal(&err, &name, &Refusal::AbsolutePath);
    assert!(
        message.contains("absolute paths are not allowed"),
        "{message}"
    );
    assert!(!target.exists());

    let archive = Crafted::new().file("/abs", b"evil").finish();
    let (err, _) = Dest::new().refuse(&archive, Limits::default());
    assert_refusal(&err, "/abs", &Refusal::AbsolutePath);
}

#[test]
fn writing_through_a_symlink_is_refused() {
    // The brief's case: a link to /tmp, then a file below it.
    let unique = format!("helix-context-evil-{}", std::process::id());
    let archive = Crafted::new()
        .symlink("link", "/tmp")
        .file(&format!("link/{unique}"), b"evil")
        .finish();
    let (err, message) = Dest::new().refuse(&archive, Limits::default());
    assert_refusal(
        &err,
        &format!("link/{unique}"),
        &Refusal::ThroughSymlink {
            link: "link".to_owned(),
        },
    );
    assert!(
        message.contains("its parent \"link\" is a symbolic link"),
        "{message}"
    );
    assert!(!Path::new("/tmp").join(&unique).exists());

    // A link pointing back inside the destination is no better: never written through.
    let archive = Crafted::new()
        .dir("d/")
        .symlink("d/up", "..")
        .file("d/up/x", b"x")
        .finish();
    let (err, _) = Dest::new().refuse(&archive, Limits::default());
    assert_refusal(
        &err,
        "d/up/x",
        &Refusal::ThroughSymlink {
            link: "d/up".to_owned(),
        },
    );

    // Nor a directory entry below a link.
    let outside = tempfile::tempdir().expect("tempdir");
    let archive = Crafted::new()
        .symlink("out", outside.path().to_str().expect("utf-8"))
        .dir("out/made/")
        .finish();
    let (err, _) = Dest::new().refuse(&archive, Limits::default());
    assert_refusal(
        &err,
        "out/made/",
        &Refusal::ThroughSymlink {
            link: "out".to_owned(),
        },
    );
    assert!(!outside.path().join("made").exists());
}

#[test]
fn entries_may_not_replace_earlier_ones() {
    let outside = tempfile::tempdir().expect("tempdir");
    let target = outside.path().join("victim");
    fs::write(&target, "original").expect("write");
    // A link, then a regular file of the same name: would write through the link.
    let archive = Crafted::new()
        .symlink("x", target.to_str().expect("utf-8"))
        .file("x", b"overwritten")
        .finish();
    let (err, message) = Dest::new().refuse(&archive, Limits::default());
    assert_refusal(
        &err,
        "x",
        &Refusal::Duplicate {
            existing: "symbolic link",
        },
    );
    assert!(
        message.contains("already created this path as a symbolic link"),
        "{message}"
    );
    assert_eq!(fs::read_to_string(&target).expect("read"), "original");

    // A file twice, a link over a file, a directory over a file.
    for archive in [
        Crafted::new().file("x", b"1").file("x", b"2").finish(),
        Crafted::new().file("x", b"1").symlink("x", "/etc").finish(),
        Crafted::new().file("x", b"1").dir("x/").finish(),
    ] {
        let (err, _) = Dest::new().refuse(&archive, Limits::default());
        assert!(
            matches!(
                &err,
                ContextError::UnsafeEntry {
                    reason: Refusal::Duplicate {
                        existing: "regular file"
                    },
                    ..
                }
            ),
            "{err}"
        );
    }

    // A file used as a directory.
    let archive = Crafted::new().file("f", b"1").file("f/x", b"2").finish();
    let (err, _) = Dest::new().refuse(&archive, Limits::default());
    assert_refusal(
        &err,
        "f/x",
        &Refusal::ParentNotDirectory {
            parent: "f".to_owned(),
        },
    );
}

#[test]
fn hard_links_devices_and_fifos_are_refused() {
    let archive = Crafted::new()
        .file("a", b"a")
        .raw("b", EntryType::Link, b"", Some("a"))
        .finish();
    let (err, message) = Dest::new().refuse(&archive, Limits::default());
    assert_refusal(
        &err,
        "b",
        &Refusal::HardLink {
            target: "a".to_owned(),
        },
    );
    assert!(
        message.contains("hard links are not supported"),
        "{message}"
    );

    for (entry_type, kind) in [
        (EntryType::Char, "character device"),
        (EntryType::Block, "block device"),
        (EntryType::Fifo, "fifo"),
    ] {
        let archive = Crafted::new().raw("dev", entry_type, b"", None).finish();
        let (err, message) = Dest::new().refuse(&archive, Limits::default());
        assert_refusal(&err, "dev", &Refusal::Special { kind });
        assert!(
            message.contains("not allowed in a build context"),
            "{message}"
        );
    }

    let archive = Crafted::new()
        .raw("sparse", EntryType::new(b'S'), b"", None)
        .finish();
    let (err, _) = Dest::new().refuse(&archive, Limits::default());
    assert_refusal(
        &err,
        "sparse",
        &Refusal::UnsupportedType { type_byte: b'S' },
    );
}

#[test]
fn total_size_over_the_limit_is_refused() {
    let archive = Crafted::new()
        .file("a", &[1; 6])
        .file("b", &[2; 6])
        .finish();
    let (err, message) = Dest::new().refuse(&archive, Limits::new(10, 100));
    assert!(
        matches!(&err, ContextError::TooLarge { entry: Some(e), limit: 10 } if e == "b"),
        "{err}"
    );
    assert!(
        message.starts_with("build context is too large: entry \"b\" takes the unpacked size past the limit of 10 bytes"),
        "{message}"
    );
    // Exactly at the limit is fine.
    let dest = Dest::new();
    let unpacked = unpack(&archive[..], &dest.path(), Limits::new(12, 100)).expect("at the limit");
    assert_eq!((unpacked.files, unpacked.bytes), (2, 12));
}

#[test]
fn too_many_entries_is_refused() {
    let archive = Crafted::new()
        .dir("d/")
        .file("d/a", b"a")
        .file("d/b", b"b")
        .finish();
    let (err, message) = Dest::new().refuse(&archive, Limits::new(1 << 20, 2));
    assert!(
        matches!(&err, ContextError::TooManyEntries { entry, limit: 2 } if entry == "d/b"),
        "{err}"
    );
    assert!(
        message.contains("too many entries: \"d/b\" is past the limit of 2"),
        "{message}"
    );
}

#[test]
fn a_stream_of_headers_alone_stops_at_the_raw_cap() {
    // Global PAX headers are not entries; without a cap on the raw stream they could
    // go on forever.
    let mut crafted = Crafted::new();
    for _ in 0..40 {
        crafted = crafted.raw("g", EntryType::XGlobalHeader, &[b'x'; 1000], None);
    }
    let archive = crafted.finish();
    let (err, message) = Dest::new().refuse(&archive, Limits::new(0, 1));
    assert!(
        matches!(err, ContextError::TooLarge { entry: None, .. }),
        "{err}"
    );
    assert!(
        message.contains("the archive goes past the limit"),
        "{message}"
    );
}

#[test]
fn long_names_and_pax_paths_are_checked_too() {
    let archive = Crafted::new()
        .long_name(&format!("{}/../../evil", "a".repeat(120)))
        .file("innocent", b"evil")
        .finish();
    let (err, _) = Dest::new().refuse(&archive, Limits::default());
    assert!(
        matches!(&err, ContextError::UnsafeEntry { reason: Refusal::ParentDirectory, entry } if entry.ends_with("/../../evil")),
        "{err}"
    );

    let archive = Crafted::new()
        .pax("path", "../pax-evil")
        .file("innocent", b"evil")
        .finish();
    let (err, _) = Dest::new().refuse(&archive, Limits::default());
    assert_refusal(&err, "../pax-evil", &Refusal::ParentDirectory);

    let archive = Crafted::new()
        .pax("linkpath", "/etc/shadow")
        .symlink("l", "innocent")
        .pax("size", "5")
        .file("f", b"12345")
        .finish();
    let (err, message) = Dest::new().refuse(&archive, Limits::default());
    assert!(
        matches!(&err, ContextError::UnsafeEntry { reason: Refusal::UnsupportedPax { key }, .. } if key == "size"),
        "{err}"
    );
    assert!(message.contains("PAX header record \"size\""), "{message}");

    // An oversized long name is refused before it is buffered.
    let archive = Crafted::new()
        .raw(
            "././@LongLink",
            EntryType::GNULongName,
            &vec![b'a'; 10_000],
            None,
        )
        .file("x", b"")
        .finish();
    let (err, _) = Dest::new().refuse(&archive, Limits::default());
    assert!(
        matches!(
            &err,
            ContextError::UnsafeEntry {
                reason: Refusal::TooLong { len: 10_000, .. },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn truncated_and_garbage_archives_are_corrupt() {
    let archive = Crafted::new()
        .file("a", b"a")
        .file("big", &[7; 5000])
        .finish();
    let truncated = &archive[..512 * 2 + 512 + 1000];
    let (err, message) = Dest::new().refuse(truncated, Limits::default());
    assert!(
        matches!(&err, ContextError::CorruptArchive { entry: Some(e), .. } if e == "big"),
        "{err}"
    );
    assert!(
        message.contains("corrupt or truncated at entry \"big\""),
        "{message}"
    );

    let garbage = vec![0x42u8; 2048];
    let (err, _) = Dest::new().refuse(&garbage, Limits::default());
    assert!(matches!(err, ContextError::CorruptArchive { .. }), "{err}");

    // A long name that describes nothing.
    let mut archive = Crafted::new().long_name("dangling").finish();
    archive.truncate(archive.len() - 1024);
    let (err, _) = Dest::new().refuse(&archive, Limits::default());
    assert!(matches!(err, ContextError::CorruptArchive { .. }), "{err}");
}

#[test]
fn an_existing_destination_must_be_empty_and_is_emptied_on_refusal() {
    let dest = tempfile::tempdir().expect("tempdir");
    put(dest.path(), "already-here", "x");
    let archive = Crafted::new().file("a", b"a").finish();
    let err = unpack(&archive[..], dest.path(), Limits::default()).expect_err("not empty");
    assert!(matches!(err, ContextError::DestinationNotEmpty { .. }));
    assert!(
        err.to_string().contains("unpack into a fresh directory"),
        "{err}"
    );
    assert_eq!(
        fs::read_to_string(dest.path().join("already-here")).expect("kept"),
        "x"
    );

    // An existing empty directory: after a refusal it is empty again, and still there.
    let dest = tempfile::tempdir().expect("tempdir");
    let archive = Crafted::new()
        .dir("d/")
        .file("d/a", b"a")
        .symlink("l", "/etc")
        .file("../evil", b"evil")
        .finish();
    unpack(&archive[..], dest.path(), Limits::default()).expect_err("refused");
    assert!(dest.path().is_dir());
    assert_eq!(fs::read_dir(dest.path()).expect("read_dir").count(), 0);
}

#[test]
fn links_are_created_as_links_and_modes_normalized() {
    let archive = Crafted::new()
        .dir("./")
        .symlink("shadow", "/etc/shadow")
        .raw("bin/tool", EntryType::Regular, b"#!/bin/sh\n", None)
        .file("a//./b", b"b")
        .dir("bin/")
        .finish();
    // Make bin/tool executable in the archive: rebuild with a mode.
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(EntryType::Regular);
    header.set_mode(0o4711);
    header.set_size(3);
    header.as_old_mut().name[..3].copy_from_slice(b"exe");
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&header, &b"exe"[..]).expect("append");
    let mut archive = archive[..archive.len() - 1024].to_vec();
    archive.extend(builder.into_inner().expect("finish"));

    let dest = Dest::new();
    let unpacked = unpack(&archive[..], &dest.path(), Limits::default()).expect("unpack");
    assert_eq!(
        (unpacked.files, unpacked.symlinks, unpacked.dirs),
        (3, 1, 2)
    );
    let tree = read_tree(&dest.path());
    assert_eq!(tree[&b"shadow"[..]], Node::Link(b"/etc/shadow".to_vec()));
    assert_eq!(
        tree[&b"exe"[..]],
        Node::File {
            data: b"exe".to_vec(),
            exec: true
        }
    );
    assert_eq!(
        tree[&b"a/b"[..]],
        Node::File {
            data: b"b".to_vec(),
            exec: false
        }
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |rel: &str| {
        fs::symlink_metadata(dest.path().join(rel))
            .expect("stat")
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("exe"), 0o755);
    assert_eq!(mode("a/b"), 0o644);
    assert_eq!(mode("bin"), 0o755);
    assert_eq!(mode("a"), 0o755);
}
