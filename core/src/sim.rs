//! Deterministic simulation harness.
