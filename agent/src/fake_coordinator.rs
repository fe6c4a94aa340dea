//! A fake coordinator for unit tests: a real QUIC + TLS endpoint on loopback (an
//! ephemeral port, a certificate from the test's cluster CA) that answers each
//! connection's first frame from a [`Script`]: as a standby (`Redirect`) or as the
//! leader (`Welcome` and `Coordinators` for `Hello`, `Joined` for `Join`). It records
//! the first frames it saw, so tests can tell which coordinator the agent talked to.
//!
//! The accept loop and the connections are owned by the [`FakeCoordinator`]: its
//! cancellation token stops them and [`FakeCoordinator::stop`] waits for them.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use helix_protocol::identity::Identity;
use helix_protocol::wire::{close, AgentToCoordinator, CoordinatorToAgent, PROTOCOL_VERSION};
use helix_protocol::AgentId;
use helix_transport::framed;
use helix_transport::pki::ClusterCa;
use helix_transport::tls;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long a connection may stay open once answered (the agent closes it first).
const LINGER: Duration = Duration::from_secs(10);

/// How the fake answers.
#[derive(Debug, Clone)]
pub(crate) enum Script {
    /// A standby: every first frame gets this `Redirect`.
    Standby {
        leader: Option<String>,
        coordinators: Vec<String>,
    },
    /// The leader: `Hello` gets `Welcome` then `Coordinators(coordinators)`; `Join`
    /// gets `Joined` with the CSR signed by the cluster CA.
    Leader { coordinators: Vec<String> },
}

/// A fake coordinator listening on `127.0.0.1`.
#[derive(Debug)]
pub(crate) struct FakeCoordinator {
    endpoint: quinn::Endpoint,
    addr: String,
    seen: Arc<Mutex<Vec<&'static str>>>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl FakeCoordinator {
    /// Binds the endpoint (so its address is known before any script names it).
    pub(crate) fn bind(ca: &ClusterCa) -> FakeCoordinator {
        let server = ca
            .issue_server_cert(&["127.0.0.1".into()], Duration::from_secs(3600))
            .expect("server certificate");
        let config = tls::server_config(ca.cert_pem(), &server.cert_pem, &server.key_pem)
            .expect("server tls");
        let config =
            tls::quinn_server_config(config, tls::DEFAULT_IDLE_TIMEOUT).expect("server quic");
        let endpoint = quinn::Endpoint::server(config, (Ipv4Addr::LOCALHOST, 0).into())
            .expect("bind a loopback port");
        let addr = endpoint.local_addr().expect("local address").to_string();
        FakeCoordinator {
            endpoint,
            addr,
            seen: Arc::default(),
            cancel: CancellationToken::new(),
            tasks: JoinSet::new(),
        }
    }

    /// `HOST:PORT` to dial.
    pub(crate) fn addr(&self) -> String {
        self.addr.clone()
    }

    /// The first frames received so far, by variant (`Hello`, `Join`).
    pub(crate) fn seen(&self) -> Vec<&'static str> {
        self.seen.lock().expect("seen lock").clone()
    }

    /// Starts answering with `script`; `ca` signs the certificates of joins.
    pub(crate) fn serve(&mut self, ca: &ClusterCa, script: Script) {
        let ca = Arc::new(ClusterCa::from_pem(ca.cert_pem(), ca.key_pem()).expect("ca copy"));
        let endpoint = self.endpoint.clone();
        let seen = self.seen.clone();
        let cancel = self.cancel.clone();
        self.tasks.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let incoming = tokio::select! {
                    biased;
                    () = cancel.cancelled() => break,
                    incoming = endpoint.accept() => incoming,
                };
                let Some(incoming) = incoming else { break };
                let (ca, seen, script) = (ca.clone(), seen.clone(), script.clone());
                let cancel = cancel.clone();
                connections.spawn(async move {
                    tokio::select! {
                        () = cancel.cancelled() => {}
                        () = answer(incoming, &ca, &seen, &script) => {}
                    }
                });
            }
            connections.shutdown().await;
        });
    }

    /// Stops the accept loop and the connections, and waits for them.
    pub(crate) async fn stop(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
        self.endpoint.close(close::NORMAL.into(), b"test over");
    }
}

/// One connection: read the first frame, answer it as `script` says, then keep the
/// connection until the agent closes it (or leaves with `GoingAway`).
async fn answer(
    incoming: quinn::Incoming,
    ca: &ClusterCa,
    seen: &Mutex<Vec<&'static str>>,
    script: &Script,
) {
    let Ok(conn) = incoming.await else { return };
    let Ok((mut send, mut recv)) = conn.accept_bi().await else {
        return;
    };
    let Ok(Some(first)) = framed::read_frame::<AgentToCoordinator>(&mut recv).await else {
        return;
    };
    let (name, joining) = match &first {
        AgentToCoordinator::Hello { .. } => ("Hello", None),
        AgentToCoordinator::Join { csr_der, .. } => ("Join", Some(csr_der.clone())),
        _ => ("other", None),
    };
    seen.lock().expect("seen lock").push(name);
    let replies = match (script, joining) {
        (
            Script::Standby {
                leader,
                coordinators,
            },
            _,
        ) => vec![CoordinatorToAgent::Redirect {
            leader: leader.clone(),
            coordinators: coordinators.clone(),
        }],
        (Script::Leader { .. }, Some(csr_der)) => {
            let id = AgentId::new_v4();
            let cert_pem = ca
                .sign_agent_csr(&csr_der, "test", id.0, Duration::from_secs(3600))
                .expect("sign the CSR");
            vec![CoordinatorToAgent::Joined {
                agent_id: id,
                cluster: "test".into(),
                cert_pem,
                ca_pem: ca.cert_pem().to_string(),
            }]
        }
        (Script::Leader { coordinators }, None) => {
            let agent_id = match Identity::from_uri_sans(&tls::peer_identity_uris(&conn), "test") {
                Ok(Identity::Agent { id, .. }) => id,
                other => panic!("a Hello from a non-agent: {other:?}"),
            };
            vec![
                CoordinatorToAgent::Welcome {
                    protocol_version: PROTOCOL_VERSION,
                    coordinator_version: "fake".into(),
                    agent_id,
                },
                CoordinatorToAgent::Coordinators(coordinators.clone()),
            ]
        }
    };
    for reply in &replies {
        if framed::write_frame(&mut send, reply).await.is_err() {
            return;
        }
    }
    // A session's control stream stays open; other replies are the last word.
    let session = matches!(script, Script::Leader { .. }) && name == "Hello";
    if !session {
        let _ = send.finish();
    }
    // Until the agent leaves: it closes a redirected or joined connection itself
    // (closing first here could cut off the reply), and says `GoingAway` at the end
    // of a session.
    let leaving = async {
        while let Ok(Some(msg)) = framed::read_frame::<AgentToCoordinator>(&mut recv).await {
            if matches!(msg, AgentToCoordinator::GoingAway { .. }) {
                conn.close(close::NORMAL.into(), b"bye");
                return;
            }
        }
        conn.closed().await;
    };
    let _ = tokio::time::timeout(LINGER, leaving).await;
}
