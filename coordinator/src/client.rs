//! The admin client: what `helix-coordinator agents|token|build ...` use to talk to a
//! running coordinator with the admin certificate.

use std::time::Duration;

use helix_protocol::wire::{AdminRequest, AdminResponse, RejectCode, PROTOCOL_VERSION};
use helix_transport::connect::{self, describe_close, ConnectError};
use helix_transport::files::{AdminBundle, FileError};
use helix_transport::framed::{self, StreamError};
use helix_transport::tls::{self, TlsError};

/// How long a closing CLI waits for its close frame to leave.
const CLOSE_GRACE: Duration = Duration::from_millis(10);

/// How long one request may take before the CLI gives up.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on requests that last as long as a build; the build's own timeout is shorter.
pub const LONG_REQUEST_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Why an admin command could not be carried out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("cannot read the admin certificate bundle: {0}")]
    Bundle(#[from] FileError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("the coordinator at {addr} refused the request: {message}")]
    Refused {
        addr: String,
        code: RejectCode,
        message: String,
    },
    #[error("lost the connection to the coordinator at {addr}: {reason}")]
    Lost { addr: String, reason: String },
    #[error("the coordinator sent an unexpected reply: {0}")]
    Unexpected(String),
}

/// An open admin connection.
#[derive(Debug)]
pub struct AdminClient {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    addr: String,
    cluster: String,
}

impl AdminClient {
    /// Connect to `addr` with the admin `bundle` and say Hello.
    pub async fn connect(addr: &str, bundle: &AdminBundle) -> Result<AdminClient, ClientError> {
        let tls = tls::client_config(&bundle.ca_pem, &bundle.cert_pem, &bundle.key_pem)?;
        let quic =
            tls::quinn_client_config(tls, tls::DEFAULT_IDLE_TIMEOUT, tls::DEFAULT_KEEP_ALIVE)?;
        let (sock, _) = connect::resolve(addr).await?;
        let endpoint = connect::client_endpoint(sock)?;
        let conn = connect::connect(&endpoint, addr, quic).await?;
        let mut client = AdminClient {
            endpoint,
            conn,
            addr: addr.to_string(),
            cluster: String::new(),
        };
        let hello = AdminRequest::Hello {
            protocol_version: PROTOCOL_VERSION,
            client_version: env!("CARGO_PKG_VERSION").into(),
        };
        match client.request(hello).await? {
            AdminResponse::Welcome { cluster, .. } => client.cluster = cluster,
            other => return Err(ClientError::Unexpected(format!("{other:?}"))),
        }
        Ok(client)
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Send one request and return its (first) response. A refusal becomes
    /// [`ClientError::Refused`].
    pub async fn request(&self, req: AdminRequest) -> Result<AdminResponse, ClientError> {
        let (resp, _send, _recv) = self.open(req).await?;
        Ok(resp)
    }

    /// Send one request and keep the stream, for responses that come as a stream.
    pub async fn open(
        &self,
        req: AdminRequest,
    ) -> Result<(AdminResponse, quinn::SendStream, quinn::RecvStream), ClientError> {
        self.open_with(req, REQUEST_TIMEOUT).await
    }

    /// A request whose first answer may take as long as a build (`wait`, `--follow`).
    pub async fn open_long(
        &self,
        req: AdminRequest,
    ) -> Result<(AdminResponse, quinn::SendStream, quinn::RecvStream), ClientError> {
        self.open_with(req, LONG_REQUEST_TIMEOUT).await
    }

    async fn open_with(
        &self,
        req: AdminRequest,
        timeout: Duration,
    ) -> Result<(AdminResponse, quinn::SendStream, quinn::RecvStream), ClientError> {
        match framed::request::<_, AdminResponse>(&self.conn, &req, timeout).await {
            Ok((AdminResponse::Error { code, message }, _, _)) => Err(ClientError::Refused {
                addr: self.addr.clone(),
                code,
                message,
            }),
            Ok(x) => Ok(x),
            Err(e) => Err(self.lost(e)),
        }
    }

    /// Upload the file at `path` as build context `digest` (`size` bytes): the
    /// `UploadContext` frame, then the raw bytes, then the coordinator's verdict.
    /// `progress` is called with the bytes sent so far.
    pub async fn upload_context(
        &self,
        digest: &helix_protocol::Digest,
        size: u64,
        path: &std::path::Path,
        mut progress: impl FnMut(u64),
    ) -> Result<AdminResponse, ClientError> {
        use tokio::io::AsyncReadExt;
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| self.lost(e.into()))?;
        let req = AdminRequest::UploadContext {
            digest: digest.clone(),
            size,
        };
        framed::write_frame(&mut send, &req)
            .await
            .map_err(|e| self.lost(e))?;
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| ClientError::Unexpected(format!("cannot read {}: {e}", path.display())))?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut sent = 0u64;
        loop {
            let n = file.read(&mut buf).await.map_err(|e| {
                ClientError::Unexpected(format!("cannot read {}: {e}", path.display()))
            })?;
            if n == 0 {
                break;
            }
            // A refusal (too large) arrives as a stopped stream; read the reason below.
            if send.write_all(&buf[..n]).await.is_err() {
                break;
            }
            sent += n as u64;
            progress(sent);
        }
        let _ = send.finish();
        match tokio::time::timeout(
            REQUEST_TIMEOUT,
            framed::read_frame::<AdminResponse>(&mut recv),
        )
        .await
        {
            Ok(Ok(Some(AdminResponse::Error { code, message }))) => Err(ClientError::Refused {
                addr: self.addr.clone(),
                code,
                message,
            }),
            Ok(Ok(Some(resp))) => Ok(resp),
            Ok(Ok(None)) => Err(self.lost(StreamError::Closed)),
            Ok(Err(e)) => Err(self.lost(e)),
            Err(_) => Err(self.lost(StreamError::Timeout(REQUEST_TIMEOUT))),
        }
    }

    /// Read the next response of a streamed request; `None` at the end of the stream.
    pub async fn next(
        &self,
        recv: &mut quinn::RecvStream,
    ) -> Result<Option<AdminResponse>, ClientError> {
        match framed::read_frame::<AdminResponse>(recv).await {
            Ok(Some(AdminResponse::Error { code, message })) => Err(ClientError::Refused {
                addr: self.addr.clone(),
                code,
                message,
            }),
            Ok(x) => Ok(x),
            Err(e) => Err(self.lost(e)),
        }
    }

    fn lost(&self, e: StreamError) -> ClientError {
        // Prefer the close reason the coordinator gave over the stream-level symptom.
        let reason = match self.conn.close_reason() {
            Some(c) => describe_close(&c),
            None => e.to_string(),
        };
        ClientError::Lost {
            addr: self.addr.clone(),
            reason,
        }
    }

    /// Close the connection. The close frame goes out at once; waiting for the whole
    /// QUIC draining period (three probe timeouts, ~80 ms on loopback) would only
    /// delay every CLI command, so the wait is bounded: if the frame is lost the
    /// coordinator times the connection out.
    pub async fn close(self) {
        self.conn.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(CLOSE_GRACE, self.endpoint.wait_idle()).await;
    }
}
