//! The security response headers, resolved once from the config.

use crate::config::{Preset, SecurityHeadersConfig};

/// OWASP REST Security Cheat Sheet's response headers for APIs.
const API: &[(&str, &str)] = &[
    (
        "strict-transport-security",
        "max-age=31536000; includeSubDomains",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
];

/// For browser-facing sites: cross-origin isolation and a same-origin CSP on top.
const STRICT: &[(&str, &str)] = &[
    ("strict-transport-security", "max-age=63072000; includeSubDomains; preload"),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    (
        "content-security-policy",
        "default-src 'self'; object-src 'none'; base-uri 'self'; frame-ancestors 'none'; form-action 'self'",
    ),
    ("referrer-policy", "strict-origin-when-cross-origin"),
    ("permissions-policy", "camera=(), microphone=(), geolocation=(), payment=(), usb=()"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("cross-origin-embedder-policy", "require-corp"),
];

/// What to do to every response's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityHeaders {
    /// Set (replacing any upstream value), in a stable order.
    pub set: Vec<(String, String)>,
    pub remove: Vec<String>,
}

impl SecurityHeaders {
    pub fn new(config: &SecurityHeadersConfig) -> Self {
        let preset = match config.preset {
            Preset::Api => API,
            Preset::Strict => STRICT,
            Preset::None => &[],
        };
        let mut set: Vec<(String, String)> = preset
            .iter()
            // A removed header is not set from the preset either: removing it is the point.
            .filter(|(name, _)| {
                !config.headers.contains_key(*name) && !config.remove.iter().any(|r| r == name)
            })
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        set.extend(
            config
                .headers
                .iter()
                .filter_map(|(name, value)| Some((name.clone(), value.clone()?))),
        );
        Self {
            set,
            remove: config.remove.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::config::HeaderSecurityConfig;
    use palisade_kit::config::load;

    fn resolve(json: &str) -> SecurityHeaders {
        let config: HeaderSecurityConfig = load(json.as_bytes()).unwrap();
        SecurityHeaders::new(&config.security_headers)
    }

    fn get<'a>(headers: &'a SecurityHeaders, name: &str) -> Option<&'a str> {
        headers
            .set
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn api_preset_by_default() {
        let headers = resolve("{}");
        assert_eq!(headers.set.len(), API.len());
        assert_eq!(get(&headers, "x-content-type-options"), Some("nosniff"));
        assert_eq!(get(&headers, "cross-origin-opener-policy"), None);
    }

    #[test]
    fn overrides_replace_drop_and_add() {
        let headers = resolve(
            r#"{"security_headers":{"preset":"strict","headers":{
                "x-frame-options":"SAMEORIGIN","cross-origin-embedder-policy":null,"x-palisade":"on"}}}"#,
        );
        assert_eq!(get(&headers, "x-frame-options"), Some("SAMEORIGIN"));
        assert_eq!(get(&headers, "cross-origin-embedder-policy"), None);
        assert_eq!(get(&headers, "x-palisade"), Some("on"));
        assert_eq!(
            get(&headers, "permissions-policy"),
            STRICT
                .iter()
                .find(|(n, _)| *n == "permissions-policy")
                .map(|(_, v)| *v)
        );
        // Each name appears once.
        let mut names: Vec<_> = headers.set.iter().map(|(n, _)| n).collect();
        names.dedup();
        assert_eq!(names.len(), headers.set.len());
    }

    #[test]
    fn none_preset_sets_only_configured_headers() {
        let headers = resolve(r#"{"security_headers":{"preset":"none","remove":[]}}"#);
        assert!(headers.set.is_empty());
        assert!(headers.remove.is_empty());
    }

    #[test]
    fn a_removed_header_is_not_set_from_the_preset() {
        let headers =
            resolve(r#"{"security_headers":{"preset":"api","remove":["cache-control"]}}"#);
        assert_eq!(get(&headers, "cache-control"), None);
        assert!(headers.remove.contains(&"cache-control".to_owned()));
        assert!(get(&headers, "x-content-type-options").is_some());
        let kept = resolve(r#"{"security_headers":{"preset":"api"}}"#);
        assert!(
            get(&kept, "cache-control").is_some(),
            "the api preset sets it"
        );
    }
}
