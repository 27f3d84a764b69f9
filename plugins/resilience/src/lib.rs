//! palisade-resilience: keeps one failing service from taking others down. Runs last before the
//! router.
//!
//! This release parses and validates the policy (with the platform's defaults: circuit opens
//! after 5 consecutive errors for a 30 s base ejection, at most 3 retries, 60 s timeouts and
//! 3600 s for long-running routes) and lets requests through; enforcement lands with its own
//! issue.

pub mod config;

#[cfg(target_os = "wasi")]
mod filter;
