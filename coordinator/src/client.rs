//! The admin client: what `helix-coordinator agents|token|build|cluster ...` use to talk
//! to the cluster's leading coordinator with the admin certificate.
//!
//! A cluster may run several coordinators on one shared store. Only the leader
//! answers requests; a standby answers any request, `Hello` included, with
//! [`AdminResponse::Redirect`]. So the client takes a list of addresses, tries them in
//! order and follows redirects to the leader, a bounded number of hops. While the
//! coordinators report an election in progress (no leader, or a leader that cannot be
//! reached) it keeps looking for [`ELECTION_WAIT`], which covers one failover with the
//! default lease. When the leader changes during a session, a read is resent once to
//! the new leader; a change (submit, cancel, ...) is not, since the client cannot know
//! whether it was carried out.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
/// How long reaching one coordinator (resolve, QUIC handshake) may take. Shorter than
/// the idle timeout a handshake would otherwise wait, so that a dead coordinator
/// early in the list does not hold up the live ones for long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to keep looking for a leader while the coordinators say an election is
/// in progress or name a leader that cannot be reached: a lost leader is replaced
/// within the lease TTL (10 s by default) plus a renewal.
pub const ELECTION_WAIT: Duration = Duration::from_secs(15);
/// The pause between two rounds over the coordinators while no leader is found.
const RETRY_DELAY: Duration = Duration::from_millis(500);
/// Redirects followed in one round. A standby names the leader and the leader
/// answers, so a chain longer than this means the coordinators disagree (a change of
/// leader is in progress) and the next round is worth more than the next hop.
const MAX_HOPS: usize = 4;

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
    /// No coordinator address was given.
    #[error("no coordinator address given: pass --coordinator HOST:PORT (repeatable) or set HELIX_COORDINATOR")]
    NoAddress,
    /// None of the coordinators tried leads or could be reached.
    #[error("no coordinator answered as the cluster's leader (tried for {}): {}", humantime::format_duration(Duration::from_secs(waited.as_secs())), tried.join("; "))]
    NoLeader {
        /// How long the client kept looking.
        waited: Duration,
        /// What each address answered in the last round, `ADDR: outcome`.
        tried: Vec<String>,
    },
    /// The coordinator stopped leading before it answered a request that changes
    /// state; the request was not sent again, because it may have taken effect.
    #[error("the coordinator at {addr} no longer leads the cluster ({}); the request was not sent again because it changes state and may have taken effect: check (e.g. with `build list`) and retry", match leader { Some(l) => format!("the leader is now {l}"), None => "a new leader is being elected".to_string() })]
    NotLeader {
        addr: String,
        leader: Option<String>,
    },
}

/// One connection to one coordinator.
#[derive(Debug)]
struct Link {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    addr: String,
}

impl Link {
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

    fn refused(&self, code: RejectCode, message: String) -> ClientError {
        ClientError::Refused {
            addr: self.addr.clone(),
            code,
            message,
        }
    }

    /// Send the close frame; the endpoint drains in the background once dropped.
    fn close(&self) {
        self.conn.close(0u32.into(), b"done");
    }
}

/// What one request on one link came to.
enum Outcome {
    Answer(AdminResponse, quinn::SendStream, quinn::RecvStream),
    /// The coordinator does not lead: it did not carry the request out.
    Redirect {
        leader: Option<String>,
        coordinators: Vec<String>,
    },
}

/// What a coordinator said to `Hello`.
enum Greeting {
    Welcome {
        link: Link,
        cluster: String,
    },
    Redirect {
        leader: Option<String>,
        coordinators: Vec<String>,
    },
}

/// An open admin session with the leading coordinator.
#[derive(Debug)]
pub struct AdminClient {
    quic: quinn::ClientConfig,
    /// The addresses given, then those learned from redirects: where to look for the
    /// leader again if it changes.
    known: Mutex<Vec<String>>,
    link: Mutex<Arc<Link>>,
    cluster: String,
    /// How long a reconnection waits out an election ([`ELECTION_WAIT`]).
    election_wait: Duration,
}

impl AdminClient {
    /// Connect to the coordinator at `addr` (or the leader it redirects to) with the
    /// admin `bundle` and say Hello.
    pub async fn connect(addr: &str, bundle: &AdminBundle) -> Result<AdminClient, ClientError> {
        AdminClient::connect_any(&[addr.to_string()], bundle).await
    }

    /// Connect to the leader among the coordinators at `addrs`: try them in order,
    /// follow redirects, and wait out an election (see the module docs).
    pub async fn connect_any(
        addrs: &[String],
        bundle: &AdminBundle,
    ) -> Result<AdminClient, ClientError> {
        AdminClient::connect_waiting(addrs, bundle, ELECTION_WAIT).await
    }

    async fn connect_waiting(
        addrs: &[String],
        bundle: &AdminBundle,
        election_wait: Duration,
    ) -> Result<AdminClient, ClientError> {
        let addrs: Vec<String> = dedup(addrs.iter().map(|a| a.trim().to_string()));
        if addrs.is_empty() {
            return Err(ClientError::NoAddress);
        }
        let tls = tls::client_config(&bundle.ca_pem, &bundle.cert_pem, &bundle.key_pem)?;
        let quic =
            tls::quinn_client_config(tls, tls::DEFAULT_IDLE_TIMEOUT, tls::DEFAULT_KEEP_ALIVE)?;
        let mut known = addrs;
        let (link, cluster) = find_leader(&quic, &mut known, None, election_wait).await?;
        Ok(AdminClient {
            quic,
            known: Mutex::new(known),
            link: Mutex::new(Arc::new(link)),
            cluster,
            election_wait,
        })
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The address of the coordinator this session talks to now (the leader).
    pub fn addr(&self) -> String {
        self.current().addr.clone()
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
        let link = self.current();
        let hint = match exchange(&link, &req, timeout).await {
            Ok(Outcome::Answer(resp, send, recv)) => return Ok((resp, send, recv)),
            Ok(Outcome::Redirect {
                leader,
                coordinators,
            }) => {
                self.learn(coordinators);
                if !is_idempotent(&req) {
                    return Err(ClientError::NotLeader {
                        addr: link.addr.clone(),
                        leader,
                    });
                }
                tracing::info!(from = %link.addr, leader = ?leader, "the coordinator no longer leads; reconnecting");
                leader
            }
            // The connection itself ended (the leader stopped or stepped down): a read
            // is safe to ask the next leader.
            Err(e @ ClientError::Lost { .. })
                if is_idempotent(&req) && link.conn.close_reason().is_some() =>
            {
                tracing::info!("{e}; looking for the leader");
                None
            }
            Err(e) => return Err(e),
        };
        let link = self.reconnect(&link, hint).await?;
        match exchange(&link, &req, timeout).await? {
            Outcome::Answer(resp, send, recv) => Ok((resp, send, recv)),
            Outcome::Redirect { leader, .. } => Err(ClientError::NotLeader {
                addr: link.addr.clone(),
                leader,
            }),
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
        let link = self.current();
        let (mut send, mut recv) = link.conn.open_bi().await.map_err(|e| link.lost(e.into()))?;
        let req = AdminRequest::UploadContext {
            digest: digest.clone(),
            size,
        };
        framed::write_frame(&mut send, &req)
            .await
            .map_err(|e| link.lost(e))?;
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
            // A refusal (too large, not the leader) arrives as a stopped stream; read
            // the reason below.
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
            Ok(Ok(Some(AdminResponse::Error { code, message }))) => {
                Err(link.refused(code, message))
            }
            Ok(Ok(Some(AdminResponse::Redirect { leader, .. }))) => Err(ClientError::NotLeader {
                addr: link.addr.clone(),
                leader,
            }),
            Ok(Ok(Some(resp))) => Ok(resp),
            Ok(Ok(None)) => Err(link.lost(StreamError::Closed)),
            Ok(Err(e)) => Err(link.lost(e)),
            Err(_) => Err(link.lost(StreamError::Timeout(REQUEST_TIMEOUT))),
        }
    }

    /// Read the next response of a streamed request; `None` at the end of the stream.
    pub async fn next(
        &self,
        recv: &mut quinn::RecvStream,
    ) -> Result<Option<AdminResponse>, ClientError> {
        let link = self.current();
        match framed::read_frame::<AdminResponse>(recv).await {
            Ok(Some(AdminResponse::Error { code, message })) => Err(link.refused(code, message)),
            Ok(x) => Ok(x),
            Err(e) => Err(link.lost(e)),
        }
    }

    /// Close the connection. The close frame goes out at once; waiting for the whole
    /// QUIC draining period (three probe timeouts, ~80 ms on loopback) would only
    /// delay every CLI command, so the wait is bounded: if the frame is lost the
    /// coordinator times the connection out.
    pub async fn close(self) {
        let link = self.current();
        link.close();
        let _ = tokio::time::timeout(CLOSE_GRACE, link.endpoint.wait_idle()).await;
    }

    fn current(&self) -> Arc<Link> {
        // A poisoned lock only means another request panicked; the link is still whole.
        self.link
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn learn(&self, coordinators: Vec<String>) {
        let mut known = self
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for c in coordinators {
            if !known.contains(&c) {
                known.push(c);
            }
        }
    }

    /// Replace `stale` by a link to the current leader (unless another request has
    /// done so already) and close it.
    async fn reconnect(
        &self,
        stale: &Arc<Link>,
        hint: Option<String>,
    ) -> Result<Arc<Link>, ClientError> {
        {
            let current = self.current();
            if !Arc::ptr_eq(&current, stale) {
                return Ok(current);
            }
        }
        let mut known = self
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let (link, cluster) = find_leader(&self.quic, &mut known, hint, self.election_wait).await?;
        if cluster != self.cluster {
            link.close();
            return Err(ClientError::Unexpected(format!(
                "the coordinator at {} belongs to cluster {cluster:?}, not {:?}",
                link.addr, self.cluster
            )));
        }
        self.learn(known);
        let link = Arc::new(link);
        let mut slot = self
            .link
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !Arc::ptr_eq(&slot, stale) {
            // Another request reconnected meanwhile: keep its link.
            link.close();
            return Ok(slot.clone());
        }
        stale.close();
        *slot = link.clone();
        Ok(link)
    }
}

/// Whether `req` only reads, so that sending it again (to a new leader) cannot do
/// anything twice. Every variant is listed, so a new one must be classified.
fn is_idempotent(req: &AdminRequest) -> bool {
    match req {
        AdminRequest::Hello { .. }
        | AdminRequest::ListAgents
        | AdminRequest::ListBuilds { .. }
        | AdminRequest::GetBuild { .. }
        | AdminRequest::BuildLogs { .. }
        | AdminRequest::WaitBuild { .. }
        | AdminRequest::HasContext { .. }
        | AdminRequest::ListCache
        | AdminRequest::ClusterStatus => true,
        AdminRequest::UpdateAgent { .. }
        | AdminRequest::CreateToken { .. }
        | AdminRequest::SubmitBuild { .. }
        | AdminRequest::CancelBuild { .. }
        | AdminRequest::UploadContext { .. }
        | AdminRequest::PruneCache { .. } => false,
    }
}

/// One request on `link`: a refusal becomes [`ClientError::Refused`], a redirect an
/// [`Outcome::Redirect`].
async fn exchange(
    link: &Link,
    req: &AdminRequest,
    timeout: Duration,
) -> Result<Outcome, ClientError> {
    match framed::request::<_, AdminResponse>(&link.conn, req, timeout).await {
        Ok((AdminResponse::Error { code, message }, _, _)) => Err(link.refused(code, message)),
        Ok((
            AdminResponse::Redirect {
                leader,
                coordinators,
            },
            _,
            _,
        )) => Ok(Outcome::Redirect {
            leader,
            coordinators,
        }),
        Ok((resp, send, recv)) => Ok(Outcome::Answer(resp, send, recv)),
        Err(e) => Err(link.lost(e)),
    }
}

/// Connect to `addr` and say Hello.
async fn greet(quic: &quinn::ClientConfig, addr: &str) -> Result<Greeting, ClientError> {
    let dial = async {
        let (sock, _) = connect::resolve(addr).await?;
        let endpoint = connect::client_endpoint(sock)?;
        let conn = connect::connect(&endpoint, addr, quic.clone()).await?;
        Ok::<_, ConnectError>((endpoint, conn))
    };
    let (endpoint, conn) = tokio::time::timeout(CONNECT_TIMEOUT, dial)
        .await
        .map_err(|_| ConnectError::Handshake {
            addr: addr.to_string(),
            reason: format!(
                "no answer within {} (is the coordinator running and reachable over UDP?)",
                humantime::format_duration(CONNECT_TIMEOUT)
            ),
        })??;
    let link = Link {
        endpoint,
        conn,
        addr: addr.to_string(),
    };
    let hello = AdminRequest::Hello {
        protocol_version: PROTOCOL_VERSION,
        client_version: env!("CARGO_PKG_VERSION").into(),
    };
    let outcome = exchange(&link, &hello, REQUEST_TIMEOUT).await;
    match outcome {
        Ok(Outcome::Answer(AdminResponse::Welcome { cluster, .. }, _, _)) => {
            Ok(Greeting::Welcome { link, cluster })
        }
        Ok(Outcome::Redirect {
            leader,
            coordinators,
        }) => {
            link.close();
            Ok(Greeting::Redirect {
                leader,
                coordinators,
            })
        }
        Ok(Outcome::Answer(other, _, _)) => {
            link.close();
            Err(ClientError::Unexpected(format!("{other:?}")))
        }
        Err(e) => {
            link.close();
            Err(e)
        }
    }
}

/// Find the leader: rounds over `known` (the addresses given, in order, then any
/// learned from redirects, which are added to `known`), each led by the leader last
/// named (`hint`), for up to `wait` while coordinators answer without one leading. A
/// refusal ends the search at once: every coordinator of a cluster would refuse the
/// same certificate or version.
async fn find_leader(
    quic: &quinn::ClientConfig,
    known: &mut Vec<String>,
    mut hint: Option<String>,
    wait: Duration,
) -> Result<(Link, String), ClientError> {
    let start = Instant::now();
    let mut attempts = 0usize;
    loop {
        let mut notes: Vec<String> = Vec::new();
        let mut last_error: Option<ClientError> = None;
        // Whether some coordinator answered but none led: an election, or a leader
        // that just went away. Worth another round, unlike a list of dead addresses.
        let mut in_transition = false;
        let mut queue: VecDeque<String> = hint
            .take()
            .into_iter()
            .chain(known.iter().cloned())
            .collect();
        let mut visited: Vec<String> = Vec::new();
        let mut hops = 0usize;
        while let Some(addr) = queue.pop_front() {
            if visited.contains(&addr) {
                continue;
            }
            visited.push(addr.clone());
            attempts += 1;
            match greet(quic, &addr).await {
                Ok(Greeting::Welcome { link, cluster }) => return Ok((link, cluster)),
                Ok(Greeting::Redirect {
                    leader,
                    coordinators,
                }) => {
                    in_transition = true;
                    for c in coordinators {
                        if !known.contains(&c) {
                            known.push(c.clone());
                            queue.push_back(c);
                        }
                    }
                    match leader {
                        Some(leader) => {
                            notes.push(format!(
                                "{addr}: standby, redirected to the leader {leader}"
                            ));
                            if hops < MAX_HOPS && !visited.contains(&leader) {
                                hops += 1;
                                queue.push_front(leader.clone());
                            }
                            hint = Some(leader);
                        }
                        None => notes.push(format!("{addr}: standby, no leader elected yet")),
                    }
                }
                Err(e @ ClientError::Refused { .. }) => return Err(e),
                Err(e) => {
                    notes.push(format!("{addr}: {e}"));
                    last_error = Some(e);
                }
            }
        }
        if in_transition && start.elapsed() + RETRY_DELAY < wait {
            tokio::time::sleep(RETRY_DELAY).await;
            continue;
        }
        // One address, tried once: its own error says it best.
        if let (1, Some(e)) = (attempts, last_error) {
            return Err(e);
        }
        return Err(ClientError::NoLeader {
            waited: start.elapsed(),
            tried: notes,
        });
    }
}

fn dedup(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in items.filter(|i| !i.is_empty()) {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

#[cfg(test)]
mod tests;
