#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::*;
use crate::pki::{generate_key_and_csr, CertifiedKey, ClusterCa};

const DAY: Duration = Duration::from_secs(24 * 3600);
/// Every test finishes in milliseconds on loopback; this only turns a hang into a
/// failure.
const TEST_TIMEOUT: Duration = Duration::from_secs(10);

struct Cluster {
    ca: ClusterCa,
    server: CertifiedKey,
}

fn cluster() -> Cluster {
    let ca = ClusterCa::generate("test").unwrap();
    let server = ca
        .issue_server_cert(&["localhost".into(), "127.0.0.1".into()], DAY)
        .unwrap();
    Cluster { ca, server }
}

fn agent_cert(ca: &ClusterCa, id: uuid::Uuid) -> CertifiedKey {
    let (key_pem, csr) = generate_key_and_csr().unwrap();
    let cert_pem = ca.sign_agent_csr(&csr, "test", id, DAY).unwrap();
    CertifiedKey { cert_pem, key_pem }
}

/// A coordinator-like endpoint on an ephemeral loopback port.
fn server_endpoint(ca_pem: &str, server: &CertifiedKey) -> (quinn::Endpoint, SocketAddr) {
    let tls = server_config(ca_pem, &server.cert_pem, &server.key_pem).unwrap();
    let config = quinn_server_config(tls, DEFAULT_IDLE_TIMEOUT).unwrap();
    let endpoint = quinn::Endpoint::server(config, (Ipv4Addr::LOCALHOST, 0).into()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    (endpoint, addr)
}

/// Accepts one connection, answers one request stream with "pong" and returns the
/// peer's URI SANs, or the error that ended the handshake.
fn serve_one(endpoint: quinn::Endpoint) -> JoinHandle<Result<Vec<String>, quinn::ConnectionError>> {
    tokio::spawn(async move {
        let incoming = endpoint.accept().await.expect("endpoint is open");
        let conn = incoming.await?;
        let uris = peer_identity_uris(&conn);
        let (mut send, mut recv) = conn.accept_bi().await?;
        let request = recv.read_to_end(64).await.unwrap();
        assert_eq!(request, b"ping");
        send.write_all(b"pong").await.unwrap();
        send.finish().unwrap();
        // Wait for the client to close after reading the reply.
        conn.closed().await;
        endpoint.wait_idle().await;
        Ok(uris)
    })
}

/// Connects, sends "ping" on a bi stream and waits for the reply. Waiting for an
/// application reply matters: a client's handshake can complete before the server
/// has checked (and rejected) its certificate.
async fn ping(tls: rustls::ClientConfig, addr: SocketAddr) -> Result<Vec<u8>, String> {
    let endpoint = quinn::Endpoint::client((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
    let config = quinn_client_config(tls, DEFAULT_IDLE_TIMEOUT, DEFAULT_KEEP_ALIVE).unwrap();
    let result = async {
        let conn = endpoint
            .connect_with(config, addr, "localhost")
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let exchanged = async {
            let (mut send, mut recv) = conn.open_bi().await.ok()?;
            send.write_all(b"ping").await.ok()?;
            send.finish().ok()?;
            recv.read_to_end(64).await.ok()
        }
        .await;
        match exchanged {
            Some(reply) => {
                conn.close(0u32.into(), b"done");
                Ok(reply)
            }
            // Stream errors only say "connection lost"; the reason is on the connection.
            None => Err(conn.closed().await.to_string()),
        }
    }
    .await;
    endpoint.wait_idle().await;
    result
}

async fn exchange(
    server: (quinn::Endpoint, SocketAddr),
    client: rustls::ClientConfig,
) -> (
    Result<Vec<u8>, String>,
    Result<Vec<String>, quinn::ConnectionError>,
) {
    let (endpoint, addr) = server;
    let served = serve_one(endpoint);
    tokio::time::timeout(TEST_TIMEOUT, async {
        let reply = ping(client, addr).await;
        (reply, served.await.unwrap())
    })
    .await
    .expect("the exchange finishes")
}

#[tokio::test]
async fn mutual_tls_agent_is_identified() {
    let c = cluster();
    let id = uuid::Uuid::new_v4();
    let agent = agent_cert(&c.ca, id);
    let client = client_config(c.ca.cert_pem(), &agent.cert_pem, &agent.key_pem).unwrap();
    let (reply, served) = exchange(server_endpoint(c.ca.cert_pem(), &c.server), client).await;
    assert_eq!(reply.unwrap(), b"pong");
    assert_eq!(served.unwrap(), vec![format!("spiffe://test/agent/{id}")]);
}

#[tokio::test]
async fn mutual_tls_admin_is_identified() {
    let c = cluster();
    let admin = c.ca.issue_admin_cert("test", "alice", DAY).unwrap();
    let client = client_config(c.ca.cert_pem(), &admin.cert_pem, &admin.key_pem).unwrap();
    let (reply, served) = exchange(server_endpoint(c.ca.cert_pem(), &c.server), client).await;
    assert_eq!(reply.unwrap(), b"pong");
    assert_eq!(
        served.unwrap(),
        vec!["spiffe://test/admin/alice".to_owned()]
    );
}

#[tokio::test]
async fn client_cert_from_another_ca_fails_the_handshake() {
    let c = cluster();
    let foreign_ca = ClusterCa::generate("test").unwrap();
    // Same cluster name and SPIFFE id shape, different CA: it must not pass.
    let foreign = foreign_ca.issue_admin_cert("test", "alice", DAY).unwrap();
    // The client trusts the real CA, so its own check of the server passes.
    let client = client_config(c.ca.cert_pem(), &foreign.cert_pem, &foreign.key_pem).unwrap();
    let (reply, served) = exchange(server_endpoint(c.ca.cert_pem(), &c.server), client).await;
    let client_err = reply.unwrap_err();
    let server_err = served.unwrap_err();
    assert!(
        matches!(server_err, quinn::ConnectionError::TransportError(_)),
        "{server_err:?}"
    );
    // Same CA name, so webpki finds the real CA and the signature fails to verify.
    assert!(
        server_err
            .to_string()
            .contains("invalid peer certificate: BadSignature"),
        "{server_err}"
    );
    // The client learns it from the server's close, possibly after its own handshake
    // had completed: only waiting for a reply shows it.
    assert!(
        client_err.contains("aborted by peer") && client_err.contains("invalid peer certificate"),
        "{client_err}"
    );
}

#[tokio::test]
async fn client_without_certificate_is_anonymous() {
    let c = cluster();
    let (client, pinned) = join_client_config(&c.ca.fingerprint()).unwrap();
    let (reply, served) = exchange(server_endpoint(c.ca.cert_pem(), &c.server), client).await;
    assert_eq!(reply.unwrap(), b"pong");
    assert_eq!(served.unwrap(), Vec::<String>::new());
    // The joining client learned the CA it pinned, ready to store.
    assert_eq!(pinned.ca_pem().as_deref(), Some(c.ca.cert_pem()));
    assert_eq!(pinned.ca_der().as_deref(), Some(c.ca.cert_der()));
    assert_eq!(pinned.rejection(), None);
}

#[tokio::test]
async fn join_pin_is_case_and_space_insensitive() {
    let c = cluster();
    let pin = format!(" {} ", c.ca.fingerprint().to_uppercase());
    let (client, pinned) = join_client_config(&pin).unwrap();
    let (reply, served) = exchange(server_endpoint(c.ca.cert_pem(), &c.server), client).await;
    assert_eq!(reply.unwrap(), b"pong");
    assert!(served.is_ok());
    assert_eq!(pinned.pin(), c.ca.fingerprint());
    assert!(pinned.ca_pem().is_some());
}

#[tokio::test]
async fn join_with_wrong_pin_fails_clearly() {
    let c = cluster();
    let other = ClusterCa::generate("test").unwrap();
    let (client, pinned) = join_client_config(&other.fingerprint()).unwrap();
    let (reply, served) = exchange(server_endpoint(c.ca.cert_pem(), &c.server), client).await;
    let err = reply.unwrap_err();
    let expected = format!(
        "the coordinator's CA does not match the join token (expected sha256 {}, got ",
        other.fingerprint()
    );
    assert!(err.contains(&expected), "{err}");
    assert!(err.contains(&c.ca.fingerprint()), "{err}");
    let rejection = pinned.rejection().unwrap();
    assert!(rejection.starts_with(&expected), "{rejection}");
    assert!(rejection.contains(&c.ca.fingerprint()), "{rejection}");
    assert_eq!(pinned.ca_pem(), None);
    assert!(served.is_err());
}

#[tokio::test]
async fn pinned_ca_in_chain_does_not_vouch_for_a_foreign_leaf() {
    // A man in the middle can copy the real CA certificate into its chain, but its
    // leaf is not signed by that CA.
    let real = cluster();
    let attacker = cluster();
    let (client, pinned) = join_client_config(&real.ca.fingerprint()).unwrap();
    let (reply, served) = exchange(
        server_endpoint(real.ca.cert_pem(), &attacker.server),
        client,
    )
    .await;
    let err = reply.unwrap_err();
    assert!(err.contains("invalid peer certificate"), "{err}");
    assert_eq!(pinned.ca_pem(), None);
    assert!(pinned.rejection().is_some());
    assert!(served.is_err());
}

#[tokio::test]
async fn client_refuses_a_server_from_another_ca() {
    let c = cluster();
    let other = cluster();
    let agent = agent_cert(&c.ca, uuid::Uuid::new_v4());
    let client = client_config(c.ca.cert_pem(), &agent.cert_pem, &agent.key_pem).unwrap();
    let (reply, served) =
        exchange(server_endpoint(other.ca.cert_pem(), &other.server), client).await;
    let err = reply.unwrap_err();
    assert!(
        err.contains("invalid peer certificate: BadSignature"),
        "{err}"
    );
    assert!(served.is_err());

    // A CA with another name is not even a candidate issuer.
    let elsewhere = ClusterCa::generate("elsewhere").unwrap();
    let server = elsewhere
        .issue_server_cert(&["localhost".into()], DAY)
        .unwrap();
    let client = client_config(c.ca.cert_pem(), &agent.cert_pem, &agent.key_pem).unwrap();
    let (reply, served) = exchange(server_endpoint(elsewhere.cert_pem(), &server), client).await;
    let err = reply.unwrap_err();
    assert!(
        err.contains("invalid peer certificate: UnknownIssuer"),
        "{err}"
    );
    assert!(served.is_err());
}

#[test]
fn server_chain_is_leaf_then_ca() {
    let c = cluster();
    let tls = server_config(c.ca.cert_pem(), &c.server.cert_pem, &c.server.key_pem).unwrap();
    assert_eq!(tls.alpn_protocols, vec![ALPN.to_vec()]);
    assert_eq!(tls.send_tls13_tickets, 0);
    // A server PEM that already holds the CA is not given a second copy.
    let bundle = format!("{}{}", c.server.cert_pem, c.ca.cert_pem());
    server_config(c.ca.cert_pem(), &bundle, &c.server.key_pem).unwrap();
}

#[test]
fn bad_inputs_are_reported() {
    let c = cluster();
    let other = cluster();
    let err = server_config("nonsense", &c.server.cert_pem, &c.server.key_pem).unwrap_err();
    assert!(matches!(err, TlsError::Pem { .. }), "{err}");
    let err = server_config(c.ca.cert_pem(), &c.server.cert_pem, "nonsense").unwrap_err();
    assert!(matches!(err, TlsError::Pem { .. }), "{err}");
    let err =
        server_config(c.ca.cert_pem(), &c.server.cert_pem, &other.server.key_pem).unwrap_err();
    assert!(matches!(err, TlsError::Config { .. }), "{err}");
    let err =
        client_config(c.ca.cert_pem(), &c.server.cert_pem, &other.server.key_pem).unwrap_err();
    assert!(matches!(err, TlsError::Config { .. }), "{err}");

    for pin in ["", "abc", &"g".repeat(64), &"a".repeat(66)] {
        let err = join_client_config(pin).unwrap_err();
        assert!(matches!(err, TlsError::InvalidPin(_)), "{pin:?}: {err}");
    }
}

#[test]
fn timeouts_are_checked() {
    let c = cluster();
    let agent = agent_cert(&c.ca, uuid::Uuid::new_v4());
    let tls = || client_config(c.ca.cert_pem(), &agent.cert_pem, &agent.key_pem).unwrap();
    let secs = Duration::from_secs;
    assert!(quinn_client_config(tls(), DEFAULT_IDLE_TIMEOUT, DEFAULT_KEEP_ALIVE).is_ok());
    for (idle, keep_alive) in [
        (Duration::ZERO, secs(1)),
        (secs(10), Duration::ZERO),
        (secs(10), secs(10)),
        (secs(u64::MAX / 1000), secs(1)),
    ] {
        let err = quinn_client_config(tls(), idle, keep_alive).unwrap_err();
        assert!(
            matches!(err, TlsError::Timeout { .. }),
            "{idle:?} {keep_alive:?}: {err}"
        );
    }
    let server = || server_config(c.ca.cert_pem(), &c.server.cert_pem, &c.server.key_pem).unwrap();
    assert!(quinn_server_config(server(), DEFAULT_IDLE_TIMEOUT).is_ok());
    assert!(quinn_server_config(server(), Duration::ZERO).is_err());
}

#[test]
fn dead_peer_is_noticed_within_the_design_target() {
    assert!(DEFAULT_IDLE_TIMEOUT + DEFAULT_KEEP_ALIVE <= Duration::from_secs(15));
    assert!(DEFAULT_KEEP_ALIVE * 3 <= DEFAULT_IDLE_TIMEOUT);
}
