use std::os::unix::fs::PermissionsExt;

use super::*;

fn opts(cluster: &str, sans: &[&str]) -> InitOptions {
    InitOptions {
        cluster: Some(cluster.to_string()),
        sans: sans.iter().map(|s| s.to_string()).collect(),
        ..InitOptions::default()
    }
}

fn mode(p: PathBuf) -> u32 {
    std::fs::metadata(p).expect("meta").permissions().mode() & 0o777
}

fn read(p: PathBuf) -> String {
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

async fn store_cluster(dir: &DataDir) -> String {
    Store::open_redb(&dir.database())
        .expect("open")
        .cluster()
        .await
        .expect("cluster")
}

/// A copy of `from`'s CA files (and admin bundle when `with_bundle`), as an operator
/// would bring them to the next coordinator's host: 0600, in a directory of their own.
fn copy_ca(from: &DataDir, to: &Path, with_bundle: bool) -> PathBuf {
    std::fs::create_dir_all(to).expect("mkdir");
    let mut names = vec!["ca.pem", "ca.key"];
    if with_bundle {
        names.push("admin.pem");
    }
    for name in names {
        std::fs::copy(from.root().join(name), to.join(name)).expect("copy");
        std::fs::set_permissions(to.join(name), std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
    }
    to.to_path_buf()
}

#[tokio::test]
async fn creates_everything_once_with_private_modes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = DataDir::new(tmp.path().join("data"));
    let made = init(&dir, &opts("prod", &["coord.example.com"]))
        .await
        .expect("init");
    assert_eq!(
        made.sans,
        ["coord.example.com", "localhost", "127.0.0.1", "::1"]
    );
    assert_eq!(made.store, "redb");
    assert!(!made.shared_ca);
    assert_eq!(mode(dir.root().to_path_buf()), 0o700);
    for key in [dir.ca_key(), dir.server_key(), dir.admin_bundle()] {
        assert_eq!(mode(key), 0o600);
    }
    assert_eq!(store_cluster(&dir).await, "prod");
    assert!(dir.is_initialized_for(&StoreConfig::Redb));
    let again = init(&dir, &opts("prod", &[]))
        .await
        .expect_err("second init")
        .to_string();
    assert!(again.contains("already initialized"), "{again}");
    let bad = init(&DataDir::new(tmp.path().join("x")), &opts("Bad Name", &[])).await;
    assert!(matches!(bad, Err(InitError::Cluster(_))), "{bad:?}");
}

#[tokio::test]
async fn the_default_cluster_is_helix() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = DataDir::new(tmp.path().join("data"));
    let made = init(&dir, &InitOptions::default()).await.expect("init");
    assert_eq!(made.cluster, DEFAULT_CLUSTER);
    assert_eq!(store_cluster(&dir).await, DEFAULT_CLUSTER);
}

#[tokio::test]
async fn ca_from_shares_the_ca_and_issues_an_own_server_certificate() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let first = DataDir::new(tmp.path().join("first"));
    let made = init(&first, &opts("prod", &["coord-1.example.com"]))
        .await
        .expect("first");
    let carried = copy_ca(&first, &tmp.path().join("carried"), true);

    let second = DataDir::new(tmp.path().join("second"));
    let joined = init(
        &second,
        &InitOptions {
            cluster: None,
            sans: vec!["coord-2.example.com".into()],
            store: StoreConfig::Redb,
            ca_from: Some(carried.clone()),
        },
    )
    .await
    .expect("second");
    assert!(joined.shared_ca);
    assert_eq!(joined.cluster, "prod", "the name comes from admin.pem");
    assert_eq!(joined.ca_fingerprint, made.ca_fingerprint);
    assert_eq!(read(second.ca_cert()), read(first.ca_cert()));
    assert_eq!(read(second.ca_key()), read(first.ca_key()));
    assert_ne!(read(second.server_cert()), read(first.server_cert()));
    assert_ne!(read(second.admin_bundle()), read(first.admin_bundle()));
    assert_eq!(store_cluster(&second).await, "prod");
    for key in [second.ca_key(), second.server_key(), second.admin_bundle()] {
        assert_eq!(mode(key), 0o600);
    }
    // The second admin bundle names the same cluster and chains to the same CA.
    let bundle = AdminBundle::load(&second.admin_bundle()).expect("bundle");
    assert_eq!(bundle_cluster(&bundle).expect("cluster"), "prod");
    assert!(same_cert(
        &bundle.ca_pem,
        ClusterCa::from_pem(&read(first.ca_cert()), &read(first.ca_key()))
            .expect("ca")
            .cert_der()
    ));

    // An explicit --cluster that agrees is fine; one that does not is refused.
    let third = DataDir::new(tmp.path().join("third"));
    let mut o = opts("prod", &[]);
    o.ca_from = Some(carried.clone());
    init(&third, &o).await.expect("agreeing --cluster");
    let fourth = DataDir::new(tmp.path().join("fourth"));
    let mut o = opts("staging", &[]);
    o.ca_from = Some(carried);
    let err = init(&fourth, &o).await.expect_err("mismatch");
    assert!(err.is_usage(), "{err}");
    assert!(err.to_string().contains("\"prod\""), "{err}");
    assert!(!fourth.is_initialized());
}

#[tokio::test]
async fn ca_from_without_an_admin_bundle_needs_the_cluster_flag() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let first = DataDir::new(tmp.path().join("first"));
    init(&first, &opts("prod", &[])).await.expect("first");
    let carried = copy_ca(&first, &tmp.path().join("carried"), false);

    let second = DataDir::new(tmp.path().join("second"));
    let o = InitOptions {
        ca_from: Some(carried.clone()),
        ..InitOptions::default()
    };
    let err = init(&second, &o).await.expect_err("no name");
    assert!(err.is_usage(), "{err}");
    assert!(err.to_string().contains("--cluster"), "{err}");
    assert!(!second.is_initialized());

    let mut o = opts("prod", &[]);
    o.ca_from = Some(carried);
    let joined = init(&second, &o).await.expect("with --cluster");
    assert_eq!(joined.cluster, "prod");
}

#[tokio::test]
async fn ca_from_refuses_a_key_others_can_read_and_mixed_up_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let first = DataDir::new(tmp.path().join("first"));
    init(&first, &opts("prod", &[])).await.expect("first");
    let carried = copy_ca(&first, &tmp.path().join("carried"), true);
    let second = DataDir::new(tmp.path().join("second"));
    let o = InitOptions {
        ca_from: Some(carried.clone()),
        ..InitOptions::default()
    };

    std::fs::set_permissions(
        carried.join("ca.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let err = init(&second, &o).await.expect_err("open key").to_string();
    assert!(
        err.contains("--ca-from") && err.contains("chmod 600"),
        "{err}"
    );
    assert!(!second.is_initialized());
    std::fs::set_permissions(
        carried.join("ca.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");

    // The admin bundle of another cluster beside this CA.
    let other = DataDir::new(tmp.path().join("other"));
    init(&other, &opts("prod", &[])).await.expect("other");
    std::fs::remove_file(carried.join("admin.pem")).expect("rm");
    std::fs::copy(other.admin_bundle(), carried.join("admin.pem")).expect("copy");
    let err = init(&second, &o).await.expect_err("mixed").to_string();
    assert!(err.contains("another CA"), "{err}");

    let err = init(
        &second,
        &InitOptions {
            ca_from: Some(tmp.path().join("missing")),
            ..InitOptions::default()
        },
    )
    .await
    .expect_err("missing")
    .to_string();
    assert!(err.contains("not a directory"), "{err}");
    assert!(!second.is_initialized());
}

#[tokio::test]
async fn a_failed_store_step_leaves_the_directory_uninitialized() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let first = DataDir::new(tmp.path().join("first"));
    init(&first, &opts("prod", &[])).await.expect("first");
    let carried = copy_ca(&first, &tmp.path().join("carried"), true);
    let second = DataDir::new(tmp.path().join("second"));
    // Nothing listens on port 1: connecting to the store fails after the keys were
    // written, and they are removed again.
    let store: StoreConfig = "postgres://helix@127.0.0.1:1/helix?connect_timeout=2"
        .parse()
        .expect("url");
    let o = InitOptions {
        store: store.clone(),
        ca_from: Some(carried),
        ..InitOptions::default()
    };
    init(&second, &o).await.expect_err("no database");
    assert!(!second.is_initialized());
    assert!(!second.is_initialized_for(&store));
    assert!(!second.ca_key().exists() && !second.admin_bundle().exists());
}
