use super::*;

fn temp() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::create(&dir.path().join("helix.redb"), "test").expect("create");
    (dir, store)
}

fn agent(name: &str) -> AgentRecord {
    AgentRecord {
        id: AgentId::new_v4(),
        name: name.into(),
        state: AgentState::Ready,
        enrolled_at: Timestamp(1),
        platforms: vec![],
        capacity: 0,
        labels: Default::default(),
        version: String::new(),
        builder: String::new(),
        last_seen: None,
    }
}

#[test]
fn tokens_are_consumed_once_and_expire() {
    let (_dir, store) = temp();
    let hash = [7u8; 32];
    store
        .put_token(
            hash,
            &TokenRecord {
                created_at: Timestamp(0),
                expires_at: Timestamp(100),
                uses_left: 1,
            },
        )
        .expect("put");
    let a = agent("a");
    store.enroll(hash, Timestamp(10), &a).expect("first use");
    assert_eq!(store.agent(a.id).expect("read"), Some(a));
    let err = store
        .enroll(hash, Timestamp(11), &agent("b"))
        .expect_err("used up");
    assert!(
        matches!(err, StoreError::Token(TokenRefusal::UsedUp)),
        "{err}"
    );

    let hash2 = [8u8; 32];
    store
        .put_token(
            hash2,
            &TokenRecord {
                created_at: Timestamp(0),
                expires_at: Timestamp(100),
                uses_left: 5,
            },
        )
        .expect("put");
    let err = store
        .enroll(hash2, Timestamp(100), &agent("c"))
        .expect_err("expired");
    assert!(
        matches!(
            err,
            StoreError::Token(TokenRefusal::Expired(Timestamp(100)))
        ),
        "{err}"
    );
    let err = store
        .enroll([9u8; 32], Timestamp(1), &agent("d"))
        .expect_err("unknown");
    assert!(
        matches!(err, StoreError::Token(TokenRefusal::Unknown)),
        "{err}"
    );
    // A refused enrolment stores no agent.
    assert_eq!(store.agents().expect("list").len(), 1);
    assert_eq!(store.prune_tokens(Timestamp(100)).expect("prune"), 2);
}

#[test]
fn state_survives_reopen_and_schema_is_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("helix.redb");
    let a = agent("a");
    {
        let store = Store::create(&path, "prod").expect("create");
        store
            .put_token(
                [1; 32],
                &TokenRecord {
                    created_at: Timestamp(0),
                    expires_at: Timestamp(9),
                    uses_left: 1,
                },
            )
            .expect("put");
        store.enroll([1; 32], Timestamp(1), &a).expect("enroll");
        store
            .update_agent(a.id, |r| r.state = AgentState::Cordoned)
            .expect("update");
    }
    let store = Store::open(&path).expect("open");
    assert_eq!(store.cluster().expect("cluster"), "prod");
    assert_eq!(
        store.agent(a.id).expect("read").map(|r| r.state),
        Some(AgentState::Cordoned)
    );
    assert!(matches!(
        store.update_agent(AgentId::new_v4(), |_| {}),
        Err(StoreError::NoSuchAgent(_))
    ));
    drop(store);

    // A database from a newer coordinator is refused with both versions named.
    {
        let db = redb::Database::open(&path).expect("open raw");
        let txn = db.begin_write().expect("txn");
        txn.open_table(META)
            .expect("meta")
            .insert("schema_version", 99u32.to_be_bytes().as_slice())
            .expect("insert");
        txn.commit().expect("commit");
    }
    let err = Store::open(&path).expect_err("too new").to_string();
    assert!(
        err.contains("99") && err.contains(&SCHEMA_VERSION.to_string()),
        "{err}"
    );
}
