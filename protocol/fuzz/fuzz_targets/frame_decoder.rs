//! Feed arbitrary bytes to the frame decoder for every message type. It must return
//! a value, "need more bytes" or a typed error: never panic, never allocate the size
//! a hostile length prefix claims.
//!
//! Run: `cd protocol/fuzz && cargo +nightly fuzz run frame_decoder`.
#![no_main]

use bytes::BytesMut;
use helix_protocol::codec::{decode, decode_payload};
use helix_protocol::wire::{AdminRequest, AdminResponse, AgentToCoordinator, CoordinatorToAgent, LogChunk};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    // Decode frames until the input runs out or framing is lost.
    while let Ok(Some(_)) = decode::<AgentToCoordinator>(&mut buf) {}
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = decode::<AdminRequest>(&mut buf) {}
    let _ = decode_payload::<CoordinatorToAgent>(data);
    let _ = decode_payload::<AdminResponse>(data);
    let _ = decode_payload::<LogChunk>(data);
});
