use super::*;

// Appending, trimming, markers and the cap are tested on both storages (files and
// PostgreSQL) by the store conformance suite, `tests/tests/store`.

#[test]
fn plan_marks_attempts_and_gaps() {
    let p = plan(0, 2, 0, b"x").expect("fresh");
    assert!(String::from_utf8_lossy(&p.bytes).contains("[helix: attempt 2]"));
    assert_eq!((p.fresh, p.stream_end), (1, 1));
    assert_eq!(plan(5, 1, 0, b"abc"), None);
    let p = plan(5, 1, 4, b"abc").expect("overlap");
    assert_eq!(
        (p.bytes.as_slice(), p.fresh, p.stream_end),
        (&b"bc"[..], 2, 7)
    );
}
