use super::*;

#[tokio::test]
async fn appends_in_order_and_trims_resent_chunks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = Logs::files(dir.path()).expect("logs");
    let job = JobId::new_v4();
    assert_eq!(
        logs.append(job, 1, 0, b"hello ".to_vec())
            .await
            .expect("append"),
        6
    );
    assert_eq!(
        logs.append(job, 1, 3, b"lo world".to_vec())
            .await
            .expect("append"),
        5,
        "overlap trimmed"
    );
    assert_eq!(
        logs.append(job, 1, 0, b"hello".to_vec())
            .await
            .expect("append"),
        0,
        "duplicate dropped"
    );
    assert_eq!(
        logs.read_from(job, 0).await.expect("read").0,
        b"hello world"
    );
    logs.append(job, 1, 20, b"!".to_vec())
        .await
        .expect("append");
    let (data, next) = logs.read_from(job, 0).await.expect("read");
    let text = String::from_utf8(data.clone()).expect("utf-8");
    assert!(text.contains("9 bytes of output were lost"), "{text}");
    assert_eq!(next, data.len() as u64);
    assert_eq!(logs.tail(job, 1).await, "!");
}

#[tokio::test]
async fn logs_are_bounded_keeping_the_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = Logs::files(dir.path()).expect("logs");
    let job = JobId::new_v4();
    let chunk = vec![b'x'; 1024 * 1024];
    let mut offset = 0;
    for _ in 0..13 {
        logs.append(job, 1, offset, chunk.clone())
            .await
            .expect("append");
        offset += chunk.len() as u64;
    }
    logs.append(job, 1, offset, b"\nthe end\n".to_vec())
        .await
        .expect("append");
    let text = logs.read_from(job, 0).await.expect("read").0;
    assert!(text.len() as u64 <= MAX_LOG_BYTES + MAX_LOG_BYTES / 5 + 100);
    assert!(String::from_utf8_lossy(&text).starts_with("[helix: the first"));
    assert_eq!(logs.tail(job, 1).await, "the end");
}

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
