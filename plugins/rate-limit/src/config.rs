//! palisade-rate-limit's configuration.

use std::collections::HashSet;
use std::time::Duration;

use palisade_kit::config::{is_header_name, PluginConfig, Problems};
use palisade_kit::duration::ConfigDuration;
use schemars::JsonSchema;
use serde::Deserialize;

/// palisade-rate-limit configuration.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Limits checked on every request; all must pass.
    #[serde(default)]
    pub limits: Vec<Limit>,
}

/// One limit: at most `rate` requests per `period` for each distinct key, with `burst` extra.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// Unique name, used in metrics, logs and the `RateLimit-Policy` header.
    pub name: String,
    /// Requests allowed per period.
    pub rate: u32,
    /// The period `rate` is counted over.
    pub period: ConfigDuration,
    /// Requests allowed at once above the steady rate.
    #[serde(default)]
    pub burst: u32,
    /// What makes two requests share a budget: the parts are joined into one key.
    pub key: Vec<KeyPart>,
}

/// One part of a limit's key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyPart {
    /// The consumer palisade-auth identified (`x-palisade-consumer`).
    Consumer,
    /// The client's address.
    ClientIp,
    /// The request path, without its query.
    Path,
    /// The request method.
    Method,
    /// The value of a request header.
    Header(String),
    /// A fixed string: one budget shared by every request.
    Constant(String),
}

impl PluginConfig for RateLimitConfig {
    fn validate(&self, problems: &mut Problems) {
        let mut names = HashSet::new();
        problems.field("limits", |p| {
            for (i, limit) in self.limits.iter().enumerate() {
                p.index(i, |p| {
                    if limit.name.trim().is_empty() {
                        p.push_at("name", "must not be empty");
                    } else if !names.insert(limit.name.as_str()) {
                        p.push_at("name", format!("duplicate limit name {:?}", limit.name));
                    }
                    if limit.rate == 0 {
                        p.push_at("rate", "must be at least 1");
                    }
                    let period = limit.period.get();
                    if period < Duration::from_secs(1) || period > Duration::from_secs(86_400) {
                        p.push_at("period", "must be between 1s and 24h");
                    }
                    if limit.key.is_empty() {
                        p.push_at("key", "must have at least one part (use {\"constant\": \"all\"} for one shared budget)");
                    }
                    p.field("key", |p| {
                        for (j, part) in limit.key.iter().enumerate() {
                            if let KeyPart::Header(name) = part {
                                if !is_header_name(name) {
                                    p.index(j, |p| {
                                        p.push_at("header", format!("{name:?} is not a lower-case HTTP header name"))
                                    });
                                }
                            }
                        }
                    });
                });
            }
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
    fn key_parts_read_as_operators_write_them() {
        let config: RateLimitConfig = load(
            br#"{"limits":[{"name":"per-consumer","rate":100,"period":"1s","burst":20,
                "key":["consumer",{"header":"x-tenant"},{"constant":"all"},"client_ip","path","method"]}]}"#,
        )
        .unwrap();
        let limit = &config.limits[0];
        assert_eq!(limit.burst, 20);
        assert_eq!(
            limit.key,
            [
                KeyPart::Consumer,
                KeyPart::Header("x-tenant".into()),
                KeyPart::Constant("all".into()),
                KeyPart::ClientIp,
                KeyPart::Path,
                KeyPart::Method
            ]
        );
    }

    #[test]
    fn bad_limits_are_refused_with_paths() {
        let err = load::<RateLimitConfig>(
            br#"{"limits":[{"name":"a","rate":0,"period":"0s","key":[]},
                           {"name":"a","rate":1,"period":"1s","key":[{"header":"X-Bad"}]}]}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "limits[0].rate: must be at least 1; limits[0].period: must be between 1s and 24h; \
             limits[0].key: must have at least one part (use {\"constant\": \"all\"} for one shared budget); \
             limits[1].name: duplicate limit name \"a\"; limits[1].key[0].header: \"X-Bad\" is not a lower-case HTTP header name"
        );
    }

    #[test]
    fn unknown_key_part_is_refused() {
        let err = load::<RateLimitConfig>(
            br#"{"limits":[{"name":"a","rate":1,"period":"1s","key":["tenant"]}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.problems[0].path, "limits[0].key[0]");
        assert!(err.problems[0]
            .reason
            .starts_with("unknown variant `tenant`"));
    }
}
