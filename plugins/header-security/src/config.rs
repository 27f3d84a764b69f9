//! palisade-header-security's configuration.

use std::collections::BTreeMap;

use palisade_kit::config::{is_header_name, is_header_value, PluginConfig, Problems};
use palisade_kit::duration::ConfigDuration;
use schemars::JsonSchema;
use serde::Deserialize;

/// palisade-header-security configuration.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderSecurityConfig {
    #[serde(default)]
    pub security_headers: SecurityHeadersConfig,
    /// Cross-origin resource sharing. Absent: the plugin does nothing for CORS.
    #[serde(default)]
    pub cors: Option<CorsConfig>,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub transforms: TransformsConfig,
    #[serde(default)]
    pub request_id: RequestIdConfig,
    #[serde(default)]
    pub trace_context: TraceContextConfig,
}

/// CORS, with the semantics of Envoy's native CORS filter (so a policy moves between them
/// unchanged) plus `Vary: Origin` on every answer that depends on the origin.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins allowed to read responses.
    pub allow_origins: Vec<OriginPattern>,
    /// `Access-Control-Allow-Methods` of a preflight answer; `["*"]` echoes the requested one.
    #[serde(default)]
    pub allow_methods: Vec<String>,
    /// `Access-Control-Allow-Headers` of a preflight answer; `["*"]` echoes the requested ones,
    /// `Authorization` included, as Envoy's CORS filter does (a browser's own `*` would leave
    /// `Authorization` out): list the headers to keep it out.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// `Access-Control-Expose-Headers` on actual responses.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// How long a browser may cache a preflight answer.
    #[serde(default)]
    pub max_age: Option<ConfigDuration>,
    /// Allow cookies and credentials (`Access-Control-Allow-Credentials: true`).
    #[serde(default)]
    pub allow_credentials: bool,
    /// A preflight from an origin not allowed: passed to the upstream (as Envoy does), or
    /// refused here with 403.
    #[serde(default)]
    pub disallowed_preflight: DisallowedPreflight,
}

/// One allowed origin.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OriginPattern {
    /// Exactly this origin, e.g. `https://app.example.com`; `*` allows every origin.
    Exact(String),
    /// `https://*.example.com`: the scheme and port as written, any subdomain (one or more
    /// labels of lower-case letters, digits, `-` and `_`) of the domain, not the domain itself.
    Wildcard(String),
    /// A regular expression the whole origin must match.
    Regex(String),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DisallowedPreflight {
    #[default]
    Forward,
    Reject,
}

/// Limits checked before the upstream sees anything.
///
/// The header count and size limits, and the control-character check, need every request
/// header, which costs a read of the whole map per request (in Envoy's V8, a call back into the
/// VM and a copy of each header). Absent, the proxy's own limits apply: Envoy's HTTP connection
/// manager answers 431 above `max_request_headers_kb` (60 KiB) and `max_request_headers_count`
/// (100), and its HTTP/1 and HTTP/2 codecs refuse control characters in header values; nginx
/// (Kong) answers 400/494 above `large_client_header_buffers`. Set them here only to be
/// stricter than the proxy (see docs/header-security.md).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body, in bytes (413 above it).
    pub max_body_bytes: u64,
    /// Most request header fields (pseudo-headers not counted; 431 above it). Absent: the
    /// proxy's limit.
    pub max_header_count: Option<u32>,
    /// Largest total size of request header names and values, in bytes (431 above it).
    /// Absent: the proxy's limit.
    pub max_header_bytes: Option<u32>,
    /// Refuse (400) a request whose header values hold control characters. Envoy's codecs
    /// already do; nginx passes some on, so Kong configurations set it.
    pub reject_control_characters: bool,
    /// Methods served (405 for others, with `Allow`). Empty: any method. A CORS preflight the
    /// plugin answers needs no `OPTIONS` here; every other limit applies to it first.
    pub allowed_methods: Vec<String>,
    /// Hosts served (403 for others, and for a Host that is not a host name or bracketed IPv6
    /// address with an optional numeric port): `api.example.com`, `*.example.com`, optionally
    /// with `:port` (an entry without one matches any port; `:80` and `:443` are refused, since
    /// clients leave a default port out). Empty: any host.
    pub allowed_hosts: Vec<String>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 100 * 1024 * 1024,
            max_header_count: None,
            max_header_bytes: None,
            reject_control_characters: false,
            allowed_methods: Vec::new(),
            allowed_hosts: Vec::new(),
        }
    }
}

/// Header edits, applied in order.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransformsConfig {
    /// On the request, before it goes upstream.
    #[serde(default)]
    pub request: Vec<HeaderTransform>,
    /// On the response, before it goes to the client.
    #[serde(default)]
    pub response: Vec<HeaderTransform>,
}

/// One header edit. Values may use `${request_id}`, `${client_address}` and `${route}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HeaderTransform {
    /// Adds a value, keeping existing ones.
    Add(NamedValue),
    /// Sets the header, replacing existing values.
    Set(NamedValue),
    /// Removes every value of the header.
    Remove(String),
    /// Moves every value of a header to another name.
    Rename(Rename),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NamedValue {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rename {
    pub from: String,
    pub to: String,
}

/// `x-request-id` handling.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RequestIdConfig {
    /// The header carrying the id.
    pub header: String,
    /// Generate an id (UUID v4) when the request has none, or one that is not a plain token.
    pub generate: bool,
    /// Return the id on the response.
    pub echo: bool,
}

impl Default for RequestIdConfig {
    fn default() -> Self {
        Self {
            header: "x-request-id".to_owned(),
            generate: true,
            echo: true,
        }
    }
}

/// W3C Trace Context (`traceparent`).
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TraceContextConfig {
    /// Start a trace when the request has no valid `traceparent`.
    pub create: bool,
    /// Share of the traces started here marked as sampled, from 0 to 1.
    pub sampling_rate: f64,
}

impl Default for TraceContextConfig {
    fn default() -> Self {
        Self {
            create: true,
            sampling_rate: 0.1,
        }
    }
}

/// Security headers added to every response.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityHeadersConfig {
    /// The starting set of headers.
    pub preset: Preset,
    /// Per-header overrides on top of the preset: a value sets the header, `null` drops it from
    /// the preset. Names in lower case.
    pub headers: BTreeMap<String, Option<String>>,
    /// Response headers removed because they tell attackers what runs behind the proxy. A
    /// header listed here is not set from the preset either.
    pub remove: Vec<String>,
}

impl Default for SecurityHeadersConfig {
    fn default() -> Self {
        Self {
            preset: Preset::Api,
            headers: BTreeMap::new(),
            remove: ["server", "x-powered-by", "x-envoy-upstream-service-time"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// Named sets of security headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// For JSON APIs (OWASP REST Security): nothing may be framed, sniffed or cached.
    Api,
    /// For browser-facing sites: the API set plus cross-origin isolation and a strict CSP.
    Strict,
    /// No headers but the configured ones.
    None,
}

impl PluginConfig for HeaderSecurityConfig {
    fn validate(&self, problems: &mut Problems) {
        problems.field("security_headers", |p| {
            let config = &self.security_headers;
            p.field("headers", |p| {
                for (name, value) in &config.headers {
                    p.key(name, |p| {
                        if !is_header_name(name) {
                            p.push("is not a lower-case HTTP header name");
                        } else if name.starts_with(':') || name == "content-length" {
                            p.push("cannot be set as a security header");
                        }
                        if let Some(value) = value {
                            if !is_header_value(value) {
                                p.push("value has control characters or surrounding whitespace");
                            }
                        }
                    });
                }
            });
            p.field("remove", |p| {
                for (i, name) in config.remove.iter().enumerate() {
                    if !is_header_name(name) {
                        p.index(i, |p| {
                            p.push(format!("{name:?} is not a lower-case HTTP header name"))
                        });
                    } else if config.headers.get(name).is_some_and(Option::is_some) {
                        p.index(i, |p| p.push(format!("{name:?} is both set and removed")));
                    }
                }
            });
        });
        // Everything else is checked by compiling it, exactly as on_configure does.
        crate::engine::HeaderSecurity::build(self, problems);
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use palisade_kit::config::load;

    #[test]
    fn defaults_are_the_api_preset_and_leaky_headers_removed() {
        let config: HeaderSecurityConfig = load(b"{}").unwrap();
        assert_eq!(config.security_headers.preset, Preset::Api);
        assert_eq!(
            config.security_headers.remove,
            ["server", "x-powered-by", "x-envoy-upstream-service-time"]
        );
    }

    #[test]
    fn header_injection_is_refused() {
        let err = load::<HeaderSecurityConfig>(
            br#"{"security_headers":{"headers":{"x-frame-options":"DENY\r\nset-cookie: a=b","X-Upper":"v"},"remove":["x-frame-options","bad name"]}}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "security_headers.headers[\"X-Upper\"]: is not a lower-case HTTP header name; \
             security_headers.headers[\"x-frame-options\"]: value has control characters or surrounding whitespace; \
             security_headers.remove[0]: \"x-frame-options\" is both set and removed; \
             security_headers.remove[1]: \"bad name\" is not a lower-case HTTP header name"
        );
    }

    #[test]
    fn unknown_preset_is_refused() {
        let err = load::<HeaderSecurityConfig>(br#"{"security_headers":{"preset":"paranoid"}}"#)
            .unwrap_err();
        assert_eq!(err.problems[0].path, "security_headers.preset");
    }
}
