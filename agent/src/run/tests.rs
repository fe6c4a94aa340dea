//! Start-up checks, and the connection loop against fake coordinators: a standby's
//! redirect to the leader, an election, and the learned list of coordinators.

use helix_protocol::AgentId;
use helix_transport::pki::ClusterCa;

use crate::builder::fake::{FakeRunner, Reply};
use crate::builder::Buildah;
use crate::fake_coordinator::{FakeCoordinator, Script};

use super::*;

#[test]
fn keep_alive_is_a_third_of_the_idle_timeout_capped() {
    let s = Duration::from_secs;
    assert_eq!(keep_alive_for(s(10)).expect("ok"), s(3));
    assert_eq!(keep_alive_for(s(3)).expect("ok"), s(1));
    assert_eq!(keep_alive_for(s(60)).expect("ok"), s(3));
    assert!(keep_alive_for(Duration::ZERO).is_err());
    assert!(keep_alive_for(Duration::from_millis(500)).is_err());
}

#[test]
fn an_expired_certificate_is_refused_with_a_clear_message() {
    let ca = helix_transport::pki::ClusterCa::generate("test").expect("ca");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = DataDir::new(tmp.path());
    let (cert, key) = crate::test_support::issue(
        &ca,
        helix_protocol::AgentId::new_v4(),
        Duration::from_secs(1),
    );
    AgentIdentity::new(cert, key, OffsetDateTime::now_utc())
        .expect("identity")
        .store(&dir.identity())
        .expect("store");
    std::thread::sleep(Duration::from_millis(1100));
    let err = load_identity(&dir).expect_err("expired");
    let text = err.to_string();
    assert!(
        text.starts_with("the agent certificate expired at "),
        "{text}"
    );
    assert!(text.contains("enrol again with a new token"), "{text}");
    assert!(!err.is_usage());

    let empty = tempfile::tempdir().expect("tempdir");
    let err = load_identity(&DataDir::new(empty.path())).expect_err("not joined");
    assert!(err.is_usage(), "{err}");
    assert!(err.to_string().contains("helix-agent join"), "{err}");
}

/// An enrolled data dir (identity and CA of `ca`) under `root`.
fn enrolled(root: &std::path::Path, ca: &ClusterCa) -> DataDir {
    let dir = DataDir::new(root.join("data"));
    dir.create().expect("create");
    dir.save_ca(ca.cert_pem()).expect("ca");
    let (cert, key) = crate::test_support::issue(ca, AgentId::new_v4(), Duration::from_secs(3600));
    AgentIdentity::new(cert, key, OffsetDateTime::now_utc())
        .expect("identity")
        .store(&dir.identity())
        .expect("store");
    dir
}

/// Runs the connection loop over `coordinators` (no builds: a fake builder) until
/// a session is up and `done` holds, then shuts it down; returns the address of the
/// session's coordinator as the status line saw it last.
async fn serve_until(
    dir: &DataDir,
    coordinators: &Coordinators,
    done: impl Fn() -> bool,
) -> String {
    let runner = Arc::new(FakeRunner::replying(|_| Reply::ok("")));
    let builder = Arc::new(Buildah::new(&dir.storage(), runner.clone()));
    let connection = CurrentConnection::default();
    let registry = Registry::new(RegistryOptions::default()).expect("registry");
    let executor = Executor::new(
        dir.work(),
        runner,
        builder,
        Arc::new(registry),
        Arc::new(connection.clone()),
    );
    let platforms: Vec<Platform> = vec!["linux/amd64".parse().expect("platform")];
    let (jobs, mut notices) = Jobs::new(
        executor,
        ResultStore::new(dir.results()),
        platforms.clone(),
        1,
    );
    let hello = AgentToCoordinator::Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_version: "test".into(),
        platforms,
        capacity: 1,
        labels: BTreeMap::new(),
        builder: "buildah".into(),
        held: Vec::new(),
    };
    let (_live_tx, live) = watch::channel(LiveSettings {
        capacity: 1,
        labels: BTreeMap::new(),
    });
    let (phase, phases) = watch::channel(Phase::Connecting { attempt: 1 });
    let (coordinator, target) = watch::channel(String::new());
    let observer = Observer {
        phase,
        coordinator,
        metrics: Arc::new(Metrics::new("buildah")),
    };
    let ca_pem = dir.load_ca().expect("ca");
    let config = SessionConfig {
        coordinators,
        ca_pem: &ca_pem,
        identity_path: dir.identity(),
        idle_timeout: Duration::from_secs(10),
        keep_alive: Duration::from_secs(3),
        hello: &hello,
        live,
        jobs: &jobs,
        connection: &connection,
        observer: &observer,
    };
    let shutdown = CancellationToken::new();
    let life = lifecycle(&config, dir, &shutdown, &mut notices);
    let watching = async {
        while !(*phases.borrow() == Phase::Connected && done()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
    };
    let (result, ()) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(life, watching)
    })
    .await
    .expect("the agent reaches the leader");
    result.expect("a clean shutdown");
    let last = target.borrow().clone();
    last
}

#[tokio::test]
async fn a_standby_sends_the_agent_to_the_leader_whose_list_is_remembered() {
    let ca = ClusterCa::generate("test").expect("ca");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = enrolled(tmp.path(), &ca);
    let mut leader = FakeCoordinator::bind(&ca);
    let mut standby = FakeCoordinator::bind(&ca);
    // Never dialed here: the leader's list only has to be remembered.
    let third = "c.example:7443".to_string();
    let cluster = vec![standby.addr(), leader.addr(), third.clone()];
    leader.serve(
        &ca,
        Script::Leader {
            coordinators: cluster.clone(),
        },
    );
    standby.serve(
        &ca,
        Script::Standby {
            leader: Some(leader.addr()),
            coordinators: Vec::new(),
        },
    );

    // Configured with the standby only.
    let coordinators = Coordinators::load(vec![standby.addr()], &dir);
    let connected_to = serve_until(&dir, &coordinators, || coordinators.learned() == cluster).await;
    assert_eq!(standby.seen(), ["Hello"]);
    assert_eq!(leader.seen(), ["Hello"], "welcomed by the leader");
    assert_eq!(connected_to, leader.addr());
    assert_eq!(coordinators.leader(), Some(leader.addr()));
    // The next round starts with the leader.
    assert_eq!(
        coordinators.round(),
        [leader.addr(), standby.addr(), third.clone()]
    );
    assert_eq!(dir.load_coordinators().expect("persisted"), cluster);

    // Restarted with the same single address, the agent knows the others.
    let restarted = Coordinators::load(vec![standby.addr()], &dir);
    assert_eq!(restarted.round(), cluster);

    leader.stop().await;
    standby.stop().await;
}

#[tokio::test]
async fn without_a_leader_or_a_handshake_the_next_address_is_tried() {
    let ca = ClusterCa::generate("test").expect("ca");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = enrolled(tmp.path(), &ca);
    let mut leader = FakeCoordinator::bind(&ca);
    let mut electing = FakeCoordinator::bind(&ca);
    leader.serve(
        &ca,
        Script::Leader {
            coordinators: vec![leader.addr()],
        },
    );
    electing.serve(
        &ca,
        Script::Standby {
            leader: None,
            coordinators: Vec::new(),
        },
    );
    // First, an address where the handshake fails (a server of another cluster):
    // a failed attempt moves on to the next address too.
    let other_ca = ClusterCa::generate("test").expect("other ca");
    let mut impostor = FakeCoordinator::bind(&other_ca);
    impostor.serve(
        &other_ca,
        Script::Leader {
            coordinators: Vec::new(),
        },
    );

    // And before it, a host that never answers (a socket nobody reads): given up
    // after HANDSHAKE_PATIENCE, not the idle timeout.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp socket");
    let silent_addr = silent.local_addr().expect("address").to_string();

    let coordinators = Coordinators::new(
        vec![
            silent_addr.clone(),
            impostor.addr(),
            electing.addr(),
            leader.addr(),
        ],
        Vec::new(),
    );
    let started = std::time::Instant::now();
    let connected_to = serve_until(&dir, &coordinators, || coordinators.leader().is_some()).await;
    assert_eq!(connected_to, leader.addr());
    let took = started.elapsed();
    assert!(
        took >= HANDSHAKE_PATIENCE && took < Duration::from_secs(9),
        "the silent host cost {took:?}"
    );
    assert!(
        impostor.seen().is_empty(),
        "no Hello to an untrusted server"
    );
    assert_eq!(electing.seen(), ["Hello"]);
    assert_eq!(leader.seen(), ["Hello"]);
    assert_eq!(coordinators.learned(), [leader.addr()]);
    assert_eq!(
        coordinators.round(),
        [leader.addr(), silent_addr, impostor.addr(), electing.addr()]
    );

    impostor.stop().await;
    leader.stop().await;
    electing.stop().await;
}
