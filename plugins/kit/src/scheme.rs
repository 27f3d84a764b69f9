//! The scheme of an HTTP call-out. Kong's ngx_wasm_module opens TLS for `:scheme: https` and
//! plain HTTP otherwise; under Envoy the cluster decides and the header is only passed along.

use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    #[default]
    Https,
    Http,
}

impl Scheme {
    /// A `serde(default = ...)` for call-outs that were plain HTTP before the setting existed.
    pub const fn http() -> Self {
        Scheme::Http
    }

    /// The `:scheme` pseudo-header's value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scheme::Https => "https",
            Scheme::Http => "http",
        }
    }
}
