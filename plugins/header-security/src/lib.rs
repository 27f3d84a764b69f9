//! palisade-header-security: the first filter at the edge (Istio phase AUTHN).
//!
//! It sets security response headers (named presets with overrides) and removes headers that
//! leak what runs behind the proxy; answers CORS preflights and decorates CORS responses;
//! refuses requests over the header, host, method and body limits before the upstream sees
//! them; applies header transforms; and keeps request ids and W3C trace context.
//!
//! Everything it decides is in [`engine::HeaderSecurity`], host-free; `filter` is the
//! proxy-wasm adapter.

/// The name this plugin logs under and gives in `x-palisade-denied-by` when it refuses.
pub const NAME: &str = "palisade-header-security";

pub mod config;
pub mod cors;
pub mod engine;
pub mod limits;
pub mod request_id;
pub mod security_headers;
pub mod transform;

#[cfg(target_os = "wasi")]
mod filter;
