//! The proxy-wasm adapter: until this plugin's own logic lands, it validates its configuration
//! and lets traffic through.

palisade_kit::pass_through_plugin!("palisade-auth", crate::config::AuthConfig);
