//! QUIC + TLS edge.
