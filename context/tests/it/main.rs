//! Integration tests for helix-context: one binary, one module per area.

mod pack;
mod roundtrip;
mod support;
mod unpack;
