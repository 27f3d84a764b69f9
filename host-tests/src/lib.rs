//! Palisade's tests of the built `.wasm` plugins: in real Envoy ([`envoy_harness`]) and in a
//! proxy-wasm host of our own with Envoy and Kong profiles.

// Test infrastructure runs outside any proxy: the wall clock is the right one here.
#![allow(clippy::disallowed_methods)]

pub mod audit_events;
pub mod auth_tokens;
pub mod bench_configs;
pub mod callgrind;
pub mod collector;
pub mod envoy_harness;
pub mod ratelimit_server;
pub mod wasm_host;
