//! Dialing the coordinator: resolve `HOST:PORT`, bind a client endpoint of the right
//! address family, connect, and turn QUIC close codes into sentences.

use std::net::SocketAddr;

use helix_protocol::wire::close;

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    #[error("invalid coordinator address {0:?}: expected HOST:PORT (e.g. 127.0.0.1:7443 or coord.example.com:7443)")]
    BadAddress(String),
    #[error("cannot resolve {addr}: {source}")]
    Resolve {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot open a UDP socket: {0}")]
    Bind(std::io::Error),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: quinn::ConnectError,
    },
    #[error("cannot connect to {addr}: {reason}")]
    Handshake { addr: String, reason: String },
}

/// Split `HOST:PORT` (or `[v6]:PORT`) and resolve it. Returns the address and the
/// name to verify the server certificate against.
pub async fn resolve(addr: &str) -> Result<(SocketAddr, String), ConnectError> {
    let bad = || ConnectError::BadAddress(addr.to_string());
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    let mut addrs =
        tokio::net::lookup_host(addr)
            .await
            .map_err(|source| ConnectError::Resolve {
                addr: addr.to_string(),
                source,
            })?;
    let sock = addrs.next().ok_or_else(|| ConnectError::Resolve {
        addr: addr.to_string(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address found"),
    })?;
    Ok((sock, host.to_string()))
}

/// A client endpoint for talking to `remote` (bound to the wildcard address of the
/// same family on an ephemeral port).
pub fn client_endpoint(remote: SocketAddr) -> Result<quinn::Endpoint, ConnectError> {
    let bind: SocketAddr = if remote.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    quinn::Endpoint::client(bind).map_err(ConnectError::Bind)
}

/// Connect `endpoint` to `addr` with `config` and finish the handshake.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: &str,
    config: quinn::ClientConfig,
) -> Result<quinn::Connection, ConnectError> {
    let (sock, server_name) = resolve(addr).await?;
    let connecting = endpoint
        .connect_with(config, sock, &server_name)
        .map_err(|source| ConnectError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    connecting.await.map_err(|e| ConnectError::Handshake {
        addr: addr.to_string(),
        reason: describe_close(&e),
    })
}

/// A sentence for why a connection ended, naming Helix's close codes.
pub fn describe_close(e: &quinn::ConnectionError) -> String {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => {
            let code = u32::try_from(c.error_code.into_inner()).unwrap_or(u32::MAX);
            let reason = String::from_utf8_lossy(&c.reason);
            let what = match code {
                close::NORMAL => "closed",
                close::PROTOCOL_ERROR => "protocol error",
                close::VERSION_MISMATCH => "protocol version mismatch",
                close::UNAUTHORIZED => "not authorized",
                close::REVOKED => "agent revoked",
                close::GOING_AWAY => "the peer is going away",
                close::REPLACED => "replaced by a newer connection",
                close::TOO_SLOW => "too slow to read its messages",
                _ => "closed by the peer",
            };
            format!("{what} (code {code}: {reason})")
        }
        quinn::ConnectionError::TimedOut => {
            "timed out (is the coordinator running and reachable over UDP?)".into()
        }
        other => other.to_string(),
    }
}
