//! palisade-audit: a complete audit trail of who called what (Istio phase STATS, so it sees the
//! final response). It never slows or fails a request.
//!
//! This release parses and validates where events go and lets requests through; event building
//! and delivery land with their own issue.

pub mod config;

#[cfg(target_os = "wasi")]
mod filter;
