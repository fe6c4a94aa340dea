use super::*;

#[track_caller]
fn check_components(name: &str, expected: Result<Option<Vec<&str>>, Refusal>) {
    let got = entry_components(name.as_bytes()).map(|c| {
        c.map(|c| {
            c.iter()
                .map(|b| std::str::from_utf8(b).expect("utf-8"))
                .collect::<Vec<_>>()
        })
    });
    assert_eq!(got, expected, "{name:?}");
}

#[test]
fn entry_paths() {
    check_components("a", Ok(Some(vec!["a"])));
    check_components("a/b/", Ok(Some(vec!["a", "b"])));
    check_components("./a//b/./c", Ok(Some(vec!["a", "b", "c"])));
    check_components("./", Ok(None));
    check_components(".", Ok(None));
    check_components("", Err(Refusal::EmptyPath));
    check_components("/abs", Err(Refusal::AbsolutePath));
    check_components("//abs", Err(Refusal::AbsolutePath));
    check_components("../evil", Err(Refusal::ParentDirectory));
    check_components("a/../../b", Err(Refusal::ParentDirectory));
    check_components("a/..", Err(Refusal::ParentDirectory));
    check_components("a/b..c/..d", Ok(Some(vec!["a", "b..c", "..d"])));
    check_components("a\0b", Err(Refusal::NulByte));
    let long = "x".repeat(MAX_PATH_BYTES + 1);
    check_components(
        &long,
        Err(Refusal::TooLong {
            len: MAX_PATH_BYTES + 1,
            max: MAX_PATH_BYTES,
        }),
    );
}

fn pax_record(key: &str, value: &str) -> Vec<u8> {
    // "<len> key=value\n" where len counts itself.
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while format!("{len}{body}").len() != len {
        len += 1;
    }
    format!("{len}{body}").into_bytes()
}

#[test]
fn pax_path_and_linkpath_are_read_and_other_keys_ignored() {
    let mut data = pax_record("mtime", "1700000000.5");
    data.extend(pax_record("path", "a/b c\nd"));
    data.extend(pax_record("linkpath", "/etc/shadow"));
    data.extend(pax_record("SCHILY.xattr.user.x", "y"));
    let mut pending = Pending::default();
    apply_pax(&data, &mut pending).expect("valid");
    assert_eq!(pending.pax_path.as_deref(), Some(&b"a/b c\nd"[..]));
    assert_eq!(pending.pax_link.as_deref(), Some(&b"/etc/shadow"[..]));
}

#[test]
fn pax_size_and_sparse_are_refused_and_garbage_is_corrupt() {
    for key in ["size", "GNU.sparse.map"] {
        let err = apply_pax(&pax_record(key, "1"), &mut Pending::default()).expect_err(key);
        assert!(
            matches!(&err, ContextError::UnsafeEntry { reason: Refusal::UnsupportedPax { key: k }, .. } if k == key),
            "{err}"
        );
    }
    for garbage in [&b"12 path"[..], b"x path=a\n", b"3 a\n", b"99 path=a\n"] {
        let err = apply_pax(garbage, &mut Pending::default()).expect_err("garbage");
        assert!(matches!(err, ContextError::CorruptArchive { .. }), "{err}");
    }
}

#[test]
fn capped_reader_fails_only_when_there_is_more() {
    let data = [7u8; 10];
    let mut exact = Capped {
        inner: &data[..],
        left: 10,
        exceeded: false,
    };
    let mut out = Vec::new();
    exact.read_to_end(&mut out).expect("exactly the cap");
    assert_eq!(out.len(), 10);
    assert!(!exact.exceeded);

    let mut over = Capped {
        inner: &data[..],
        left: 9,
        exceeded: false,
    };
    let err = over.read_to_end(&mut Vec::new()).expect_err("over the cap");
    assert!(err.to_string().contains("larger than allowed"));
    assert!(over.exceeded);
}
