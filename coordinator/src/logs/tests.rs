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

#[test]
fn positions_are_kept_per_attempt_and_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("job.pos");
    assert_eq!(Positions::read(&path, 1).expect("no file yet"), 0);
    Positions::write(&path, 2, 77).expect("write");
    assert_eq!(Positions::read(&path, 1).expect("read"), 0);
    assert_eq!(Positions::read(&path, 2).expect("read"), 77);
    assert_eq!(Positions::read(&path, 3).expect("past the end"), 0);
    Positions::write(&path, 2, 78).expect("overwrite");
    assert_eq!(Positions::read(&path, 2).expect("read"), 78);
    assert!(Positions::write(&path, 0, 1).is_err());
    assert!(Positions::read(&path, Positions::MAX_ATTEMPT + 1).is_err());
}
