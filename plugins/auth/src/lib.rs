//! palisade-auth: authentication and authorization at the edge (Istio phase AUTHN).
//!
//! This release parses and validates the provider configuration and lets requests through; token
//! verification lands with its own issue. It already owns the identity headers
//! (`palisade_kit::identity`).

pub mod api_keys;
pub mod config;
pub mod introspection;
pub mod path;
pub mod rules;

#[cfg(target_os = "wasi")]
mod filter;
