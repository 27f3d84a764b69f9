//! palisade-resilience: keeps one failing service from taking others down. Runs last before the
//! router.
//!
//! A circuit breaker per upstream cluster with its state shared by every worker
//! ([`circuit::CircuitBreaker`]), load shedding and a retry budget over requests in flight
//! ([`inflight::InflightLimit`]), Envoy's retry and timeout headers with deadline propagation
//! ([`route_policy::RoutePolicy`]), and fault injection for chaos tests
//! ([`fault::FaultInjection`]); gRPC answers are judged by their `grpc-status` ([`grpc`]). [`engine::Resilience`] puts them in order, host-free; `filter`
//! is the proxy-wasm adapter.

pub mod circuit;
pub mod config;
pub mod engine;
pub mod fault;
pub mod grpc;
pub mod inflight;
pub mod route_policy;
#[cfg(test)]
mod test_store;

#[cfg(target_os = "wasi")]
mod filter;
