//! Packing: determinism, header normalization, ignore rules, links, refusals.

use std::fs::{self, File, FileTimes};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use helix_context::{pack, pack_to_file, sha256_file, verify_file, ContextError, Packer};
use helix_protocol::Digest;
use tar::EntryType;

use crate::support::{list, paths, put};

fn pack_bytes(dir: &Path) -> (Vec<u8>, helix_context::Packed) {
    let mut out = Vec::new();
    let packed = pack(dir, &mut out).expect("pack");
    (out, packed)
}

/// A small tree with a file, an executable, a nested directory, an empty directory
/// and links.
fn sample(dir: &Path) {
    put(dir, "Dockerfile", "FROM scratch\nCOPY . /\n");
    put(dir, "src/main.rs", "fn main() {}\n");
    put(dir, "src/deep/er/mod.rs", "// deep\n");
    put(dir, "run.sh", "#!/bin/sh\necho hi\n");
    fs::set_permissions(dir.join("run.sh"), fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::create_dir(dir.join("empty")).expect("mkdir");
    std::os::unix::fs::symlink("src/main.rs", dir.join("main-link")).expect("link");
    std::os::unix::fs::symlink("../nowhere", dir.join("src/dangling")).expect("link");
}

fn set_mtime(path: &Path, secs: u64) {
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    File::open(path)
        .expect("open")
        .set_times(FileTimes::new().set_modified(time).set_accessed(time))
        .expect("set times");
}

#[test]
fn same_tree_gives_the_same_bytes_whatever_times_owners_modes_and_umask() {
    let a = tempfile::tempdir().expect("tempdir");
    sample(a.path());
    let (first, packed) = pack_bytes(a.path());

    // Different times, owners and non-executable permission bits.
    for rel in [
        "Dockerfile",
        "src/main.rs",
        "src/deep/er/mod.rs",
        "run.sh",
        "src",
        "empty",
    ] {
        set_mtime(&a.path().join(rel), 1_234_567_890);
    }
    fs::set_permissions(
        a.path().join("Dockerfile"),
        fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    fs::set_permissions(a.path().join("run.sh"), fs::Permissions::from_mode(0o700)).expect("chmod");
    fs::set_permissions(a.path().join("src"), fs::Permissions::from_mode(0o700)).expect("chmod");
    // The tests run as root in CI containers; elsewhere chown is not permitted and
    // the owner part is covered by the header checks below.
    let _ = std::os::unix::fs::chown(a.path().join("src/main.rs"), Some(1234), Some(5678));
    let _ = std::os::unix::fs::lchown(a.path().join("main-link"), Some(1234), Some(5678));
    let (second, repacked) = pack_bytes(a.path());
    assert_eq!(
        first, second,
        "repacking after touch/chmod/chown changed the bytes"
    );
    assert_eq!(packed, repacked);

    // The same tree built again under umask 077, in another order.
    let b = tempfile::tempdir().expect("tempdir");
    let script = "umask 077 && mkdir -p empty src/deep/er && \
                  ln -s ../nowhere src/dangling && ln -s src/main.rs main-link && \
                  printf '#!/bin/sh\\necho hi\\n' > run.sh && chmod u+x run.sh && \
                  printf '// deep\\n' > src/deep/er/mod.rs && printf 'fn main() {}\\n' > src/main.rs && \
                  printf 'FROM scratch\\nCOPY . /\\n' > Dockerfile";
    let status = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(b.path())
        .status()
        .expect("sh");
    assert!(status.success());
    assert_eq!(
        fs::metadata(b.path().join("src/main.rs"))
            .expect("stat")
            .permissions()
            .mode()
            & 0o777,
        0o600,
        "the umask applied"
    );
    let (third, _) = pack_bytes(b.path());
    assert_eq!(
        first, third,
        "a tree made under another umask packed differently"
    );
}

#[test]
fn headers_are_normalized_and_entries_sorted() {
    let dir = tempfile::tempdir().expect("tempdir");
    sample(dir.path());
    put(dir.path(), "a-b", "dash sorts before slash\n");
    let (bytes, packed) = pack_bytes(dir.path());
    let entries = list(&bytes);
    let names: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        names,
        [
            "Dockerfile",
            "a-b",
            "empty/",
            "main-link",
            "run.sh",
            "src/",
            "src/dangling",
            "src/deep/",
            "src/deep/er/",
            "src/deep/er/mod.rs",
            "src/main.rs",
        ]
    );
    for entry in &entries {
        assert_eq!(
            (entry.uid, entry.gid, entry.mtime),
            (0, 0, 0),
            "{}",
            entry.path
        );
        assert!(
            entry.username.is_empty() && entry.groupname.is_empty(),
            "{}",
            entry.path
        );
        let expected_mode = match entry.entry_type {
            EntryType::Directory => 0o755,
            EntryType::Symlink => 0o777,
            _ if entry.path == "run.sh" => 0o755,
            _ => 0o644,
        };
        assert_eq!(entry.mode, expected_mode, "{}", entry.path);
    }
    let link = entries
        .iter()
        .find(|e| e.path == "main-link")
        .expect("link");
    assert_eq!(link.entry_type, EntryType::Symlink);
    assert_eq!(link.link.as_deref(), Some("src/main.rs"));
    assert_eq!(packed.files, 5);
    assert_eq!(packed.entries, 11);
    assert_eq!(packed.size, bytes.len() as u64);
    assert_eq!(packed.digest, Digest::sha256_of(&bytes));
    assert_eq!(bytes.len() % 512, 0);
}

#[test]
fn executable_bit_is_kept_and_other_bits_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, mode) in [
        ("a", 0o600),
        ("b", 0o700),
        ("c", 0o751),
        ("d", 0o4755),
        ("e", 0o610),
    ] {
        put(dir.path(), name, name);
        fs::set_permissions(dir.path().join(name), fs::Permissions::from_mode(mode))
            .expect("chmod");
    }
    let (bytes, _) = pack_bytes(dir.path());
    let modes: Vec<(String, u32)> = list(&bytes).into_iter().map(|e| (e.path, e.mode)).collect();
    assert_eq!(
        modes,
        [
            ("a".to_owned(), 0o644),
            ("b".to_owned(), 0o755),
            ("c".to_owned(), 0o755),
            ("d".to_owned(), 0o755),
            ("e".to_owned(), 0o755),
        ]
    );
}

#[test]
fn ignore_rules_are_honoured() {
    let dir = tempfile::tempdir().expect("tempdir");
    put(dir.path(), "Dockerfile", "FROM scratch\n");
    put(dir.path(), "app.log", "noise");
    put(dir.path(), "logs/today.log", "noise");
    put(dir.path(), "secret.txt", "hunter2");
    put(dir.path(), "build/out.o", "obj");
    put(dir.path(), "build/keep/KEEP.md", "kept");
    put(dir.path(), "node_modules/huge/index.js", "x");
    put(dir.path(), "CHANGES.md", "c");
    put(dir.path(), "README.md", "r");
    put(dir.path(), "src/lib.rs", "lib");
    put(
        dir.path(),
        ".dockerignore",
        "# build outputs\n*.log\n**/*.log\nsecret.txt\nbuild\n!build/keep/KEEP.md\n\
         node_modules\n*.md\n!README.md\n.dockerignore\nDockerfile\n",
    );
    let (bytes, _) = pack_bytes(dir.path());
    assert_eq!(
        paths(&bytes),
        [
            // Kept although listed, like docker build.
            ".dockerignore",
            "Dockerfile",
            "README.md",
            // The excluded directory is sent only as the parent of what `!` re-includes.
            "build/",
            "build/keep/",
            "build/keep/KEEP.md",
            // Not excluded itself: only its contents are.
            "logs/",
            "src/",
            "src/lib.rs",
        ]
    );
    assert!(!bytes.windows(7).any(|w| w == b"hunter2"));
}

#[test]
fn containerignore_wins_and_a_custom_dockerfile_is_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    put(dir.path(), "docker/Dockerfile.prod", "FROM scratch\n");
    put(dir.path(), "docker/other", "o");
    put(dir.path(), "a", "a");
    put(dir.path(), "b", "b");
    put(dir.path(), ".dockerignore", "a\n");
    put(
        dir.path(),
        ".containerignore",
        "b\ndocker\n.dockerignore\n.containerignore\n",
    );
    let mut out = Vec::new();
    Packer::new(dir.path())
        .dockerfile("./docker//Dockerfile.prod")
        .pack(&mut out)
        .expect("pack");
    assert_eq!(
        paths(&out),
        [".containerignore", "a", "docker/", "docker/Dockerfile.prod"]
    );
}

#[test]
fn a_link_to_etc_shadow_is_stored_as_a_link_and_never_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    let secret = "TOP-SECRET-7f3a9c1e-never-in-the-archive";
    put(outside.path(), "secret.txt", secret);
    put(outside.path(), "inner/also-secret.txt", secret);
    put(dir.path(), "Dockerfile", "FROM scratch\n");
    std::os::unix::fs::symlink("/etc/shadow", dir.path().join("shadow")).expect("link");
    std::os::unix::fs::symlink(outside.path().join("secret.txt"), dir.path().join("secret"))
        .expect("link");
    std::os::unix::fs::symlink(outside.path(), dir.path().join("outside-dir")).expect("link");

    let (bytes, _) = pack_bytes(dir.path());
    let entries = list(&bytes);
    let shadow = entries.iter().find(|e| e.path == "shadow").expect("entry");
    assert_eq!(shadow.entry_type, EntryType::Symlink);
    assert_eq!(shadow.link.as_deref(), Some("/etc/shadow"));
    assert!(shadow.data.is_empty());
    let linked_dir = entries
        .iter()
        .find(|e| e.path == "outside-dir")
        .expect("entry");
    assert_eq!(linked_dir.entry_type, EntryType::Symlink);
    assert_eq!(
        paths(&bytes),
        ["Dockerfile", "outside-dir", "secret", "shadow"],
        "nothing was read through the directory link"
    );
    assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
    // When the test can read the real /etc/shadow, its bytes are not in the archive.
    if let Ok(shadow) = fs::read("/etc/shadow") {
        if shadow.len() >= 16 {
            assert!(!bytes.windows(shadow.len()).any(|w| w == shadow.as_slice()));
            assert!(!bytes.windows(16).any(|w| w == &shadow[..16]));
        }
    }
}

#[test]
fn sockets_are_refused_with_their_path_unless_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    put(dir.path(), "Dockerfile", "FROM scratch\n");
    let socket = dir.path().join("run/agent.sock");
    fs::create_dir(dir.path().join("run")).expect("mkdir");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    let err = pack(dir.path(), Vec::new()).expect_err("socket refused");
    assert!(
        matches!(&err, ContextError::UnsupportedFile { path, kind: "socket" } if *path == socket)
    );
    let message = err.to_string();
    assert!(message.contains(&socket.display().to_string()), "{message}");
    assert!(
        message.contains("only regular files, directories and symbolic links"),
        "{message}"
    );
    assert!(message.contains(".dockerignore"), "{message}");

    // Ignored: the directory is not even walked.
    put(dir.path(), ".dockerignore", "run\n");
    let (bytes, _) = pack_bytes(dir.path());
    assert_eq!(paths(&bytes), [".dockerignore", "Dockerfile"]);
    // Ignored with an exception elsewhere: walked, and the socket itself skipped.
    put(dir.path(), ".dockerignore", "run\n!run/keep\n");
    put(dir.path(), "run/keep", "k");
    let (bytes, _) = pack_bytes(dir.path());
    assert_eq!(
        paths(&bytes),
        [".dockerignore", "Dockerfile", "run/", "run/keep"]
    );
}

#[test]
fn long_paths_and_link_targets_use_gnu_long_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let deep = format!("{}/{}/file.txt", "d".repeat(120), "e".repeat(150));
    put(dir.path(), &deep, "deep");
    let target = format!("../{}", "t".repeat(200));
    std::os::unix::fs::symlink(&target, dir.path().join("long-link")).expect("link");
    let (bytes, _) = pack_bytes(dir.path());
    let entries = list(&bytes);
    assert!(entries.iter().any(|e| e.path == deep && e.data == b"deep"));
    let link = entries
        .iter()
        .find(|e| e.path == "long-link")
        .expect("link");
    assert_eq!(link.link.as_deref(), Some(target.as_str()));
}

#[test]
fn pack_to_file_in_the_context_leaves_itself_out_and_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    put(dir.path(), "Dockerfile", "FROM scratch\n");
    let archive = dir.path().join("context.tar");
    let packed = pack_to_file(dir.path(), &archive).expect("pack");
    let bytes = fs::read(&archive).expect("read");
    assert_eq!(paths(&bytes), ["Dockerfile"]);
    assert_eq!(packed.size, bytes.len() as u64);
    assert_eq!(
        sha256_file(&archive).expect("hash"),
        (packed.digest.clone(), packed.size)
    );
    assert_eq!(
        verify_file(&archive, &packed.digest).expect("verify"),
        packed.size
    );

    // Packing again over the same file gives the same digest.
    let again = pack_to_file(dir.path(), &archive).expect("pack again");
    assert_eq!(again, packed);

    // A flipped byte is caught.
    let mut corrupted = bytes.clone();
    corrupted[600] ^= 1;
    fs::write(&archive, &corrupted).expect("write");
    let err = verify_file(&archive, &packed.digest).expect_err("mismatch");
    assert!(matches!(err, ContextError::DigestMismatch { .. }));
    let message = err.to_string();
    assert!(
        message.contains(&format!("expected {}", packed.digest)),
        "{message}"
    );
    assert!(message.contains("fetch it again"), "{message}");
}

#[test]
fn pack_to_file_removes_the_output_on_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = tempfile::tempdir().expect("tempdir");
    put(dir.path(), ".dockerignore", "[broken\n");
    let archive = out.path().join("context.tar");
    let err = pack_to_file(dir.path(), &archive).expect_err("bad ignore file");
    assert!(matches!(err, ContextError::IgnoreFile { .. }), "{err}");
    assert!(!archive.exists());
}

#[test]
fn progress_reports_growing_byte_counts_up_to_the_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    put(dir.path(), "big", &"x".repeat(300_000));
    put(dir.path(), "small", "y");
    let mut seen = Vec::new();
    let mut out = Vec::new();
    let packed = Packer::new(dir.path())
        .on_progress(|bytes| seen.push(bytes))
        .pack(&mut out)
        .expect("pack");
    assert!(seen.len() > 1);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(seen.last().copied(), Some(packed.size));
}

#[test]
fn not_a_directory_and_missing_directory_are_explained() {
    let dir = tempfile::tempdir().expect("tempdir");
    put(dir.path(), "file", "x");
    let err = pack(&dir.path().join("file"), Vec::new()).expect_err("file");
    assert!(matches!(err, ContextError::NotADirectory { .. }));
    assert!(err.to_string().contains("is not a directory"), "{err}");
    let err = pack(&dir.path().join("missing"), Vec::new()).expect_err("missing");
    assert!(
        err.to_string()
            .starts_with("cannot open build context directory"),
        "{err}"
    );
}

#[test]
fn names_that_are_not_utf8_are_packed_as_bytes() {
    use std::os::unix::ffi::OsStrExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
    fs::write(dir.path().join(name), "latin-1").expect("write");
    let (bytes, _) = pack_bytes(dir.path());
    let mut archive = tar::Archive::new(&bytes[..]);
    let entry = archive
        .entries()
        .expect("entries")
        .next()
        .expect("one")
        .expect("ok");
    assert_eq!(&*entry.path_bytes(), b"caf\xe9.txt");
}
