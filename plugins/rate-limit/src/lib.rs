//! palisade-rate-limit: per-consumer and per-route rate limits (Istio phase AUTHZ, after auth so
//! the consumer is known), exact across every worker of a proxy.
//!
//! [`limiter::RateLimiter`] decides, host-free: it picks the limits for a request (route
//! overrides, else the top level), builds each limit's key ([`key`]), finds its slot in shared
//! data ([`slots`]) and runs the GCRA ([`gcra`]) with compare-and-swap writes. `filter` is the
//! proxy-wasm adapter.

pub mod config;
pub mod gcra;
pub mod key;
pub mod limiter;
pub mod proto;
pub mod slots;

#[cfg(target_os = "wasi")]
mod filter;
