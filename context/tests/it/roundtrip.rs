//! pack → unpack gives back the same tree, and packing that gives the same digest.

use std::collections::BTreeMap;

use helix_context::{pack, unpack, Limits};
use proptest::prelude::*;

use crate::support::{put, read_tree, write_tree, Node};

/// Packs `src`, unpacks into a fresh directory, and checks the trees and that packing
/// the copy gives the same bytes.
fn round_trip(src: &std::path::Path) -> BTreeMap<Vec<u8>, Node> {
    let mut archive = Vec::new();
    let packed = pack(src, &mut archive).expect("pack");
    let dest = tempfile::tempdir().expect("tempdir");
    let out = dest.path().join("out");
    let unpacked = unpack(&archive[..], &out, Limits::default()).expect("unpack");
    assert_eq!(unpacked.files, packed.files);
    let tree = read_tree(&out);
    assert_eq!(read_tree(src), tree);
    let mut again = Vec::new();
    pack(&out, &mut again).expect("repack");
    assert_eq!(archive, again, "the unpacked copy packs to different bytes");
    tree
}

#[test]
fn files_dirs_links_and_exec_bits_survive() {
    let src = tempfile::tempdir().expect("tempdir");
    put(src.path(), "Dockerfile", "FROM scratch\n");
    put(src.path(), "bin/run", "#!/bin/sh\n");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(
        src.path().join("bin/run"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    put(src.path(), "data/empty", "");
    std::fs::create_dir_all(src.path().join("empty/nested")).expect("mkdir");
    std::os::unix::fs::symlink("/etc/shadow", src.path().join("shadow")).expect("link");
    std::os::unix::fs::symlink("../bin/run", src.path().join("data/run")).expect("link");
    std::os::unix::fs::symlink("empty", src.path().join("dirlink")).expect("link");
    let long = format!("{}/{}", "l".repeat(150), "m".repeat(120));
    put(src.path(), &long, "long");
    std::os::unix::fs::symlink("x".repeat(300), src.path().join("longlink")).expect("link");

    let tree = round_trip(src.path());
    assert_eq!(tree[&b"shadow"[..]], Node::Link(b"/etc/shadow".to_vec()));
    assert_eq!(
        tree[&b"bin/run"[..]],
        Node::File {
            data: b"#!/bin/sh\n".to_vec(),
            exec: true
        }
    );
    assert_eq!(tree[&b"empty/nested"[..]], Node::Dir);
}

/// A random small tree: a map from relative path to node, with parents present.
fn arb_tree() -> impl Strategy<Value = BTreeMap<Vec<u8>, Node>> {
    let name = prop::sample::select(vec!["a", "b", "c.txt", "D", "e-f", "ü", ".hidden", "x y"]);
    let path = prop::collection::vec(name, 1..4);
    let node = prop_oneof![
        3 => (prop::collection::vec(any::<u8>(), 0..600), any::<bool>())
            .prop_map(|(data, exec)| Node::File { data, exec }),
        1 => Just(Node::Dir),
        1 => prop::sample::select(vec!["a", "../a", "/etc/shadow", "b/c.txt", "missing", "."])
            .prop_map(|t| Node::Link(t.as_bytes().to_vec())),
    ];
    prop::collection::vec((path, node), 0..12).prop_map(|entries| {
        let mut tree: BTreeMap<Vec<u8>, Node> = BTreeMap::new();
        'entries: for (components, node) in entries {
            // Parents must be directories; skip an entry that conflicts.
            for depth in 1..components.len() {
                let parent = components[..depth].join("/").into_bytes();
                match tree.get(&parent) {
                    None => {
                        tree.insert(parent, Node::Dir);
                    }
                    Some(Node::Dir) => {}
                    Some(_) => continue 'entries,
                }
            }
            let key = components.join("/").into_bytes();
            if tree.contains_key(&key) {
                continue;
            }
            tree.insert(key, node);
        }
        tree
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_trees_round_trip(tree in arb_tree()) {
        let src = tempfile::tempdir().expect("tempdir");
        write_tree(src.path(), &tree);
        let back = round_trip(src.path());
        prop_assert_eq!(back, tree);
    }
}
