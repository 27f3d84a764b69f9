//! palisade-header-security: the first filter at the edge (Istio phase AUTHN).
//!
//! This release sets a configurable set of security response headers and removes headers that
//! leak implementation details; CORS, request limits, transforms and request ids land with their
//! own issue.

pub mod config;
pub mod security_headers;

#[cfg(target_os = "wasi")]
mod filter;
