//! palisade-auth: authentication at the edge (Istio phase AUTHN).
//!
//! JWTs from configured providers: the token is found in its configured location
//! ([`token_location`]), taken apart strictly ([`jwt`]), routed to the provider its `iss` names,
//! verified with keys prepared once per key set ([`jwks`], [`signature`]) and checked
//! ([`claims`]); [`engine::Authenticator`] makes the decision, host-free. Refusals carry a
//! precise [`rejection::Rejection`]. `filter` is the proxy-wasm adapter. palisade-auth owns the
//! identity headers (`palisade_kit::identity`): it strips them from every request before it
//! sets its own.
//!
//! The policy half is wired into the same configuration and engine: [`path`] normalises the
//! path, [`rules`] pick what a route requires, [`api_keys`] and [`introspection`] are credentials
//! besides JWTs. Introspection is the one asynchronous step: the engine returns
//! [`engine::Verdict::Introspect`], the adapter makes the call-out (or answers from its cache)
//! and hands the answer back to [`engine::Authenticator::introspected`].

pub mod api_keys;
pub mod claims;
pub mod config;
pub mod engine;
pub mod introspection;
pub mod jwks;
pub mod jwt;
pub mod path;
pub mod rejection;
pub mod remote;
pub mod rules;
pub mod signature;
pub mod token_location;
pub mod token_memo;
pub mod verified;

#[cfg(test)]
mod test_tokens;

#[cfg(target_os = "wasi")]
mod filter;
