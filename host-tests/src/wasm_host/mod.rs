//! A deterministic proxy-wasm host on wasmtime for testing the built plugins, with the behaviour
//! of two proxies: [`Profile::Envoy`] and [`Profile::Kong`] (Kong Gateway 3.4–3.10's
//! ngx_wasm_module), whose differences live in [`profile`].
//!
//! ```no_run
//! use palisade_host_tests::wasm_host::{Host, Outcome, Plugin, Profile, Request, Response};
//!
//! # fn main() -> Result<(), palisade_host_tests::wasm_host::Failure> {
//! let host = Host::new(Profile::Envoy);
//! let plugin = host.load(Plugin::HeaderSecurity, "{}")?;
//! let mut stream = plugin.http_request(Request::get("/orders").header("x-a", "b"))?;
//! assert_eq!(stream.send_request_headers(true)?, Outcome::Continue);
//! assert_eq!(stream.upstream_request_headers().get("x-a"), Some("b"));
//! stream.send_response_headers(Response::status(200).header("server", "nginx"), true)?;
//! assert!(!stream.response_headers().contains("server"));
//! stream.finish()?;
//! println!("fuel: {}", stream.fuel());
//! # Ok(())
//! # }
//! ```
//!
//! Determinism: time is virtual ([`Host::advance_clock`] fires ticks and delivers callout answers
//! and timeouts in time order), WASI `random_get` is seeded, and events are delivered after the
//! callback that caused them returns, in a fixed order. Several workers ([`Host::load_workers`])
//! share shared data, queues, metrics and the clock, as a proxy's worker VMs do.
//!
//! Faults on demand: [`Host::fail_shared_data`] (every write lost to contention, or a status on
//! every call), [`Host::refuse_header_writes`], [`Host::evict_shared_data`] (Kong), and
//! crashing a worker.
//!
//! Failures ([`Failure`]) name what went wrong: a plugin panic (its panic hook's log line), a
//! host call the profile's proxy does not implement, a host call during `_initialize`, a missing
//! `.wasm` ("run `just build` first").

// Library code reports errors with context instead (the test API panics on purpose, with a
// message, where a test cannot go on).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

pub mod abi;
mod callouts;
mod clock;
mod engine;
mod error;
mod headers;
mod host;
mod hostcalls;
mod http_stream;
mod load;
mod logs;
mod memory;
mod metrics;
pub mod profile;
mod properties;
mod queues;
mod random;
mod shared_data;
mod stream;
mod vm;
mod world;

pub use callouts::{
    CallState, CalloutReply, GrpcCall, GrpcReply, HttpCall, GRPC_DEADLINE_EXCEEDED,
};
pub use clock::START_UNIX_SECS;
pub use engine::{workspace_root, Plugin};
pub use error::{Failure, FailureKind, Result};
pub use headers::{Headers, PropertyValue, Request, Response};
pub use host::{Host, DEFAULT_SEED};
pub use http_stream::HttpStream;
pub use load::{Configured, Load, PluginVms, Worker};
pub use logs::{LogEntry, LogLevel, LogOrigin};
pub use metrics::{MetricKind, MetricValue};
pub use profile::{KongVersion, Profile, KONG_SHM_KV_ZONES};
pub use stream::{LocalReply, Outcome};
pub use vm::Callback;
pub use world::{RefusedProperty, SharedDataFault};
