//! In-process protocol clients that do what the real binaries never would: speak the
//! wrong protocol for their certificate, send a bad version, garbage or an oversize
//! frame. Used to check that the coordinator refuses each with a clear reason.

use std::path::Path;
use std::time::Duration;

use helix_protocol::codec;
use helix_protocol::wire::{
    AdminRequest, AgentToCoordinator, CoordinatorToAgent, RejectCode, PROTOCOL_VERSION,
};
use helix_transport::files::{pem_blocks, AdminBundle};
use helix_transport::{connect, framed, tls};

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Client TLS material read from an agent's data dir or an admin bundle.
pub(crate) struct Creds {
    pub(crate) ca_pem: String,
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
}

impl Creds {
    pub(crate) fn agent(dir: &Path) -> Creds {
        let identity = std::fs::read_to_string(dir.join("identity.pem")).expect("identity.pem");
        let blocks = pem_blocks(&identity);
        let cert_pem = blocks
            .iter()
            .find(|(l, _)| l == "CERTIFICATE")
            .expect("cert")
            .1
            .clone();
        let key_pem = blocks
            .iter()
            .find(|(l, _)| l.ends_with("PRIVATE KEY"))
            .expect("key")
            .1
            .clone();
        let ca_pem = std::fs::read_to_string(dir.join("ca.pem")).expect("ca.pem");
        Creds {
            ca_pem,
            cert_pem,
            key_pem,
        }
    }

    pub(crate) fn admin(bundle: &Path) -> Creds {
        let b = AdminBundle::load(bundle).expect("admin bundle");
        Creds {
            ca_pem: b.ca_pem,
            cert_pem: b.cert_pem,
            key_pem: b.key_pem,
        }
    }
}

/// How the coordinator answered one raw first frame.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The refusal frame, if one arrived.
    pub(crate) rejected: Option<(RejectCode, String)>,
    /// The connection's close reason, as a sentence.
    pub(crate) closed: String,
}

/// Connect (with `creds`, or with no client certificate when `None`), send `bytes` on
/// a fresh bidirectional stream, and report the coordinator's reply and close reason.
pub(crate) async fn send_raw(
    addr: &str,
    creds: Option<&Creds>,
    ca_pin: &str,
    bytes: Vec<u8>,
) -> Answer {
    let client = match creds {
        Some(c) => tls::client_config(&c.ca_pem, &c.cert_pem, &c.key_pem).expect("client config"),
        None => tls::join_client_config(ca_pin).expect("join config").0,
    };
    let quic = tls::quinn_client_config(client, Duration::from_secs(10), Duration::from_secs(3))
        .expect("quic");
    let (sock, _) = connect::resolve(addr).await.expect("resolve");
    let endpoint = connect::client_endpoint(sock).expect("endpoint");
    let conn = connect::connect(&endpoint, addr, quic)
        .await
        .expect("handshake");
    let (mut send, mut recv) = conn.open_bi().await.expect("open stream");
    send.write_all(&bytes).await.expect("write");
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        framed::read_frame::<CoordinatorToAgent>(&mut recv),
    )
    .await;
    let rejected = match reply {
        Ok(Ok(Some(CoordinatorToAgent::Rejected { code, reason }))) => Some((code, reason)),
        _ => None,
    };
    let closed = match tokio::time::timeout(Duration::from_secs(10), conn.closed()).await {
        Ok(e) => connect::describe_close(&e),
        Err(_) => "still open".to_string(),
    };
    endpoint.close(0u32.into(), b"");
    Answer { rejected, closed }
}

pub(crate) fn frame<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    codec::encode(msg).expect("encodes")
}

pub(crate) fn agent_hello(version: u32) -> AgentToCoordinator {
    AgentToCoordinator::Hello {
        protocol_version: version,
        agent_version: "test".into(),
        platforms: vec!["linux/amd64".parse().expect("valid")],
        capacity: 1,
        labels: Default::default(),
        builder: "buildah".into(),
        held: vec![],
    }
}

pub(crate) fn admin_hello() -> AdminRequest {
    AdminRequest::Hello {
        protocol_version: PROTOCOL_VERSION,
        client_version: "test".into(),
    }
}
