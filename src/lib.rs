//! The `palisade` command line's library: the plugin registry, real Envoy with the plugins, and
//! the demo upstream. The end-to-end tests use the same code as `palisade run`.

// This is the operator's tool, not a request path: it may read the system clock, and indexing a
// `serde_json::Value` yields `Null` rather than panicking.
#![allow(clippy::disallowed_methods, clippy::indexing_slicing)]

pub mod envoy;
pub mod envoy_module;
pub mod http_server;
pub mod kong_schema;
pub mod kube_yaml;
pub mod oci;
pub mod package;
pub mod plugins;
pub mod render;
pub mod upstream;
pub mod validate;
