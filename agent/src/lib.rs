//! helix-agent
