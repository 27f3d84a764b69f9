//! palisade-header-security's configuration.

use std::collections::BTreeMap;

use palisade_kit::config::{is_header_name, is_header_value, PluginConfig, Problems};
use schemars::JsonSchema;
use serde::Deserialize;

/// palisade-header-security configuration.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderSecurityConfig {
    #[serde(default)]
    pub security_headers: SecurityHeadersConfig,
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
    /// Response headers removed because they tell attackers what runs behind the proxy.
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
