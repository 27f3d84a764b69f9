//! palisade-audit: a complete audit trail of who called what (Istio phase STATS, so it sees the
//! final response). It never slows or fails a request, and never loses an event without
//! counting it.
//!
//! Host-free: [`engine::Audit`] builds one [`event::AuditEvent`] per finished request
//! (classification, sampling, redaction); [`delivery::DeliveryQueue`] batches, sends and
//! retries them on a caller-supplied clock; [`workers::Workers`] keeps a reconfigured root
//! context's earlier workers until nothing can reach them. `filter` is the proxy-wasm adapter.

pub mod config;
pub mod delivery;
pub mod engine;
pub mod event;
pub mod flavor;
pub mod pattern;
pub mod redact;
pub mod workers;

#[cfg(target_os = "wasi")]
mod filter;
