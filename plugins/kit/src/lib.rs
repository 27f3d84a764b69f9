//! What every Palisade plugin shares.
//!
//! Everything here except [`host`] is host-free: it compiles and is unit-tested natively (and on
//! `wasm32-unknown-unknown`). [`host`] exists only in the `wasm32-wasip1` build; it is the one
//! place that talks to the proxy-wasm host, and it never panics on a host's answer.

pub mod authority;
pub mod clock;
pub mod config;
pub mod decimal;
pub mod duration;
pub mod header_pairs;
pub mod hex;
pub mod identity;
pub mod metric_name;
pub mod path;
pub mod query;
pub mod random;
pub mod reply;
pub mod route_name;
pub mod scheme;
pub mod store;
pub mod traceparent;
pub mod uuid;

#[cfg(target_os = "wasi")]
pub mod host;

/// The crate version and the source revision the plugins were built from (`just build` sets
/// `PALISADE_GIT_REV`), logged once per VM start.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const GIT_REV: &str = match option_env!("PALISADE_GIT_REV") {
    Some(rev) => rev,
    None => "unknown",
};
