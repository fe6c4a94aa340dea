//! helix-coordinator
