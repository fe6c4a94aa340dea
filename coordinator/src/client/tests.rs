//! The client against fake coordinators on loopback that answer as a leader or as a
//! standby, switched by the test to play an election.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use helix_protocol::wire::{AdminRequest, AdminResponse, RejectCode, PROTOCOL_VERSION};
use helix_protocol::BuildId;
use helix_transport::connect::ConnectError;
use helix_transport::files::AdminBundle;
use helix_transport::framed;
use helix_transport::pki::ClusterCa;
use helix_transport::tls;

use super::{AdminClient, ClientError};

const CLUSTER: &str = "test";
const WAIT: Duration = Duration::from_millis(1500);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    Leader,
    Standby(Option<String>),
    /// Refuses every request, as a coordinator refuses a revoked admin or old client.
    Refusing,
}

/// A coordinator that speaks just enough of the admin protocol.
struct Fake {
    addr: String,
    role: Arc<Mutex<Role>>,
    seen: Arc<Mutex<Vec<AdminRequest>>>,
    _endpoint: quinn::Endpoint,
}

impl Fake {
    fn set(&self, role: Role) {
        *self.role.lock().expect("lock") = role;
    }

    fn seen(&self) -> Vec<AdminRequest> {
        self.seen.lock().expect("lock").clone()
    }
}

struct Pki {
    ca: ClusterCa,
    bundle: AdminBundle,
}

fn pki() -> Pki {
    let ca = ClusterCa::generate(CLUSTER).expect("ca");
    let admin = ca
        .issue_admin_cert(CLUSTER, "admin", Duration::from_secs(3600))
        .expect("admin");
    let bundle = AdminBundle {
        ca_pem: ca.cert_pem().to_string(),
        cert_pem: admin.cert_pem,
        key_pem: admin.key_pem,
    };
    Pki { ca, bundle }
}

/// Start a fake coordinator; `peers` is filled in later with every fake's address.
fn fake(pki: &Pki, role: Role, peers: &Arc<Mutex<Vec<String>>>) -> Fake {
    let server = pki
        .ca
        .issue_server_cert(&["127.0.0.1".into()], Duration::from_secs(3600))
        .expect("server cert");
    let tls =
        tls::server_config(pki.ca.cert_pem(), &server.cert_pem, &server.key_pem).expect("tls");
    let quic = tls::quinn_server_config(tls, Duration::from_secs(10)).expect("quic");
    let endpoint =
        quinn::Endpoint::server(quic, "127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = endpoint.local_addr().expect("local addr").to_string();
    let role = Arc::new(Mutex::new(role));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (ep, r, s, p) = (endpoint.clone(), role.clone(), seen.clone(), peers.clone());
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let Ok(conn) = incoming.await else { continue };
            let (r, s, p) = (r.clone(), s.clone(), p.clone());
            tokio::spawn(async move {
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let Ok(Some(req)) = framed::read_frame::<AdminRequest>(&mut recv).await else {
                        continue;
                    };
                    s.lock().expect("lock").push(req.clone());
                    let role = r.lock().expect("lock").clone();
                    let resp = answer(&role, &req, p.lock().expect("lock").clone());
                    let _ = framed::write_frame(&mut send, &resp).await;
                    let _ = send.finish();
                }
            });
        }
    });
    Fake {
        addr,
        role,
        seen,
        _endpoint: endpoint,
    }
}

fn answer(role: &Role, req: &AdminRequest, peers: Vec<String>) -> AdminResponse {
    match role {
        Role::Standby(leader) => AdminResponse::Redirect {
            leader: leader.clone(),
            coordinators: peers,
        },
        Role::Refusing => AdminResponse::Error {
            code: RejectCode::WrongRole,
            message: "not for you".into(),
        },
        Role::Leader => match req {
            AdminRequest::Hello { .. } => AdminResponse::Welcome {
                protocol_version: PROTOCOL_VERSION,
                server_version: "test".into(),
                cluster: CLUSTER.into(),
            },
            AdminRequest::ListAgents => AdminResponse::Agents(Vec::new()),
            _ => AdminResponse::Error {
                code: RejectCode::NotFound,
                message: "no such build".into(),
            },
        },
    }
}

/// `n` fakes with the given roles, each knowing all their addresses.
fn cluster(pki: &Pki, roles: Vec<Role>) -> Vec<Fake> {
    let peers = Arc::new(Mutex::new(Vec::new()));
    let fakes: Vec<Fake> = roles.into_iter().map(|r| fake(pki, r, &peers)).collect();
    *peers.lock().expect("lock") = fakes.iter().map(|f| f.addr.clone()).collect();
    fakes
}

async fn connect(addrs: &[&str], pki: &Pki) -> Result<AdminClient, ClientError> {
    let addrs: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    AdminClient::connect_waiting(&addrs, &pki.bundle, WAIT).await
}

fn count(seen: &[AdminRequest], want: &AdminRequest) -> usize {
    seen.iter().filter(|r| *r == want).count()
}

#[tokio::test]
async fn a_standby_redirects_to_the_leader() {
    let pki = pki();
    let f = cluster(&pki, vec![Role::Leader, Role::Standby(None)]);
    f[1].set(Role::Standby(Some(f[0].addr.clone())));
    let client = connect(&[&f[1].addr], &pki).await.expect("connect");
    assert_eq!(client.addr(), f[0].addr);
    assert_eq!(client.cluster(), CLUSTER);
    let resp = client
        .request(AdminRequest::ListAgents)
        .await
        .expect("list");
    assert_eq!(resp, AdminResponse::Agents(Vec::new()));
    client.close().await;
}

#[tokio::test]
async fn addresses_are_tried_in_order_past_a_bad_one() {
    let pki = pki();
    let f = cluster(&pki, vec![Role::Leader]);
    let client = connect(&["127.0.0.1:notaport", &f[0].addr], &pki)
        .await
        .expect("connect");
    assert_eq!(client.addr(), f[0].addr);
    client.close().await;

    // One address alone keeps its own error.
    let err = connect(&["127.0.0.1:notaport"], &pki)
        .await
        .expect_err("bad");
    assert!(
        matches!(err, ClientError::Connect(ConnectError::BadAddress(_))),
        "{err}"
    );
    let err = connect(&[], &pki).await.expect_err("none");
    assert!(matches!(err, ClientError::NoAddress), "{err}");
}

#[tokio::test]
async fn an_election_in_progress_is_waited_out() {
    let pki = pki();
    let f = cluster(&pki, vec![Role::Standby(None), Role::Standby(None)]);
    let (a, b) = (f[0].addr.clone(), f[1].addr.clone());
    let (ra, rb) = (f[0].role.clone(), f[1].role.clone());
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        *rb.lock().expect("lock") = Role::Leader;
        *ra.lock().expect("lock") = Role::Standby(Some(b));
    });
    let started = Instant::now();
    // Only the standby is given: the leader is found through its redirect.
    let client = connect(&[&a], &pki).await.expect("connect");
    assert_eq!(client.addr(), f[1].addr);
    assert!(started.elapsed() >= Duration::from_millis(700));
    client.close().await;
}

#[tokio::test]
async fn no_leader_is_reported_with_every_address_tried() {
    let pki = pki();
    // Two standbys naming each other: a disagreement, never a leader.
    let f = cluster(&pki, vec![Role::Standby(None), Role::Standby(None)]);
    f[0].set(Role::Standby(Some(f[1].addr.clone())));
    f[1].set(Role::Standby(Some(f[0].addr.clone())));
    let started = Instant::now();
    let err = connect(&[&f[0].addr], &pki).await.expect_err("no leader");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1000) && waited < WAIT + Duration::from_secs(2));
    let text = err.to_string();
    assert!(matches!(err, ClientError::NoLeader { .. }), "{text}");
    assert!(
        text.contains(&f[0].addr) && text.contains(&f[1].addr),
        "{text}"
    );
    assert!(text.contains("standby"), "{text}");
}

#[tokio::test]
async fn a_refusal_ends_the_search() {
    let pki = pki();
    let f = cluster(&pki, vec![Role::Refusing, Role::Leader]);
    let err = connect(&[&f[0].addr, &f[1].addr], &pki)
        .await
        .expect_err("refused");
    assert!(
        matches!(
            err,
            ClientError::Refused {
                code: RejectCode::WrongRole,
                ..
            }
        ),
        "{err}"
    );
    assert!(f[1].seen().is_empty());
}

#[tokio::test]
async fn a_read_is_resent_once_to_a_new_leader() {
    let pki = pki();
    let f = cluster(&pki, vec![Role::Leader, Role::Standby(None)]);
    let client = connect(&[&f[0].addr], &pki).await.expect("connect");
    assert_eq!(client.addr(), f[0].addr);
    // The leader changes during the session.
    f[0].set(Role::Standby(Some(f[1].addr.clone())));
    f[1].set(Role::Leader);
    let resp = client
        .request(AdminRequest::ListAgents)
        .await
        .expect("list");
    assert_eq!(resp, AdminResponse::Agents(Vec::new()));
    assert_eq!(client.addr(), f[1].addr);
    assert_eq!(count(&f[0].seen(), &AdminRequest::ListAgents), 1);
    assert_eq!(count(&f[1].seen(), &AdminRequest::ListAgents), 1);
    // Later requests go to the new leader directly.
    client
        .request(AdminRequest::ListAgents)
        .await
        .expect("list");
    assert_eq!(count(&f[0].seen(), &AdminRequest::ListAgents), 1);
    assert_eq!(count(&f[1].seen(), &AdminRequest::ListAgents), 2);
    client.close().await;
}

#[tokio::test]
async fn a_change_is_not_resent() {
    let pki = pki();
    let f = cluster(&pki, vec![Role::Leader, Role::Standby(None)]);
    let client = connect(&[&f[0].addr], &pki).await.expect("connect");
    f[0].set(Role::Standby(Some(f[1].addr.clone())));
    f[1].set(Role::Leader);
    let cancel = AdminRequest::CancelBuild {
        build: BuildId(uuid::Uuid::nil()),
    };
    let err = client
        .request(cancel.clone())
        .await
        .expect_err("not resent");
    match &err {
        ClientError::NotLeader { addr, leader } => {
            assert_eq!(addr, &f[0].addr);
            assert_eq!(leader.as_deref(), Some(f[1].addr.as_str()));
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("not sent again"), "{err}");
    assert_eq!(count(&f[1].seen(), &cancel), 0);
    client.close().await;
}
