//! palisade-rate-limit: per-consumer and per-route rate limits (Istio phase AUTHZ, after auth so
//! the consumer is known).
//!
//! This release parses and validates the limits and lets requests through; enforcement lands
//! with its own issue.

pub mod config;

#[cfg(target_os = "wasi")]
mod filter;
