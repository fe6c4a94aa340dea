//! Frames over QUIC streams: the async edge of [`helix_protocol::codec`].
//!
//! The length prefix is read and checked first; only then is a buffer of exactly the
//! (bounded) payload size allocated and filled.

use std::time::Duration;

use helix_protocol::codec::{self, FrameError, LEN_PREFIX};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a frame could not be sent or received.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("stream read failed: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream closed in the middle of a frame")]
    Truncated,
    #[error("stream closed before a reply arrived")]
    Closed,
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("no reply within {0:?}")]
    Timeout(Duration),
}

/// Write one frame.
pub async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
) -> Result<(), StreamError> {
    let bytes = codec::encode(msg)?;
    send.write_all(&bytes).await?;
    Ok(())
}

/// Read one frame. `Ok(None)` when the peer finished the stream cleanly between frames.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
) -> Result<Option<T>, StreamError> {
    match read_payload(recv).await? {
        Some(payload) => Ok(Some(codec::decode_payload(&payload)?)),
        None => Ok(None),
    }
}

/// Read one frame's payload without decoding it (for a peer whose protocol is not
/// known yet). The length is checked before the payload buffer is allocated.
pub async fn read_payload(recv: &mut quinn::RecvStream) -> Result<Option<Vec<u8>>, StreamError> {
    let mut prefix = [0u8; LEN_PREFIX];
    // Read the first byte alone so a clean end of stream between frames can be told
    // from one in the middle of a frame.
    match recv.read(&mut prefix[..1]).await {
        Ok(None) => return Ok(None),
        Ok(Some(0)) => return Err(StreamError::Truncated),
        Ok(Some(_)) => {}
        Err(e) => return Err(StreamError::Read(quinn::ReadExactError::ReadError(e))),
    }
    recv.read_exact(&mut prefix[1..]).await.map_err(truncated)?;
    let len = codec::check_len(prefix)?;
    let mut payload = vec![0u8; len];
    recv.read_exact(&mut payload).await.map_err(truncated)?;
    Ok(Some(payload))
}

fn truncated(e: quinn::ReadExactError) -> StreamError {
    match e {
        quinn::ReadExactError::FinishedEarly(_) => StreamError::Truncated,
        other => StreamError::Read(other),
    }
}

/// One request/response exchange on a fresh bidirectional stream, bounded in time.
/// Returns the first response frame; the stream stays open for more (`--follow`).
pub async fn request<Req: Serialize, Resp: DeserializeOwned>(
    conn: &quinn::Connection,
    req: &Req,
    timeout: Duration,
) -> Result<(Resp, quinn::SendStream, quinn::RecvStream), StreamError> {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        write_frame(&mut send, req).await?;
        let resp = read_frame(&mut recv).await?.ok_or(StreamError::Closed)?;
        Ok::<_, StreamError>((resp, send, recv))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| StreamError::Timeout(timeout))?
}
