//! The frame codec: a u32 big-endian length, then a bincode-2 (serde) payload.
//!
//! This is the only module that knows the encoding, so it could be swapped without
//! touching callers. It is pure: no I/O, no async. The length is checked against
//! [`MAX_FRAME_LEN`] before anything is allocated for the payload, and the payload is
//! decoded with bincode's own size limit, so a hostile peer can make us neither
//! allocate a claimed 4 GiB nor panic.

use bytes::{Buf, BufMut, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The largest payload a frame may carry. 16 MiB fits any control message with room
/// to spare (the largest are build specs with many args and log chunks, which the
/// senders keep far smaller), while bounding what one frame can make a peer buffer.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame payload does not decode: {0}")]
    Decode(String),
    #[error("frame payload has {0} trailing bytes")]
    TrailingBytes(usize),
    #[error("message does not encode: {0}")]
    Encode(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_big_endian()
        .with_limit::<MAX_FRAME_LEN>()
}

/// Check a length prefix. Call this before reading or allocating the payload.
pub fn check_len(prefix: [u8; LEN_PREFIX]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    Ok(len)
}

/// Encode `msg` as one whole frame (prefix and payload).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = BytesMut::new();
    encode_into(msg, &mut out)?;
    Ok(out.to_vec())
}

/// Append `msg` as one frame to `dst`.
pub fn encode_into<T: Serialize>(msg: &T, dst: &mut BytesMut) -> Result<(), FrameError> {
    let payload = bincode::serde::encode_to_vec(msg, config())
        .map_err(|e| FrameError::Encode(e.to_string()))?;
    if payload.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len: payload.len(),
            max: MAX_FRAME_LEN,
        });
    }
    dst.reserve(LEN_PREFIX + payload.len());
    // The cast cannot truncate: the length was checked against MAX_FRAME_LEN < 2^32.
    dst.put_u32(payload.len() as u32);
    dst.put_slice(&payload);
    Ok(())
}

/// Decode one payload (without its prefix). All of it must be consumed.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    if payload.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len: payload.len(),
            max: MAX_FRAME_LEN,
        });
    }
    let (msg, used) = bincode::serde::decode_from_slice(payload, config())
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    if used != payload.len() {
        return Err(FrameError::TrailingBytes(payload.len() - used));
    }
    Ok(msg)
}

/// Decode the next frame from `src`. `Ok(None)` means the frame is not complete yet:
/// read more bytes and call again; nothing has been consumed. On success the frame's
/// bytes are consumed. On error the buffer is left as it was and the stream should be
/// closed: framing is lost.
pub fn decode<T: DeserializeOwned>(src: &mut BytesMut) -> Result<Option<T>, FrameError> {
    let Some(prefix) = src.get(..LEN_PREFIX) else {
        return Ok(None);
    };
    let prefix: [u8; LEN_PREFIX] = prefix.try_into().expect("slice of LEN_PREFIX bytes");
    let len = check_len(prefix)?;
    if src.len() < LEN_PREFIX + len {
        // Reserve at most what the (already bounded) frame needs.
        src.reserve(LEN_PREFIX + len - src.len());
        return Ok(None);
    }
    let msg = decode_payload(&src[LEN_PREFIX..LEN_PREFIX + len])?;
    src.advance(LEN_PREFIX + len);
    Ok(Some(msg))
}

#[cfg(test)]
mod tests;
