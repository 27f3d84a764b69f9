//! palisade-auth's configuration.

use std::collections::HashSet;

use palisade_kit::config::{PluginConfig, Problems};
use palisade_kit::duration::ConfigDuration;
use schemars::JsonSchema;
use serde::Deserialize;

/// palisade-auth configuration.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// JWT providers; a request's token is checked against the provider whose issuer it names.
    #[serde(default)]
    pub providers: Vec<JwtProvider>,
}

/// One issuer of JSON Web Tokens.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtProvider {
    /// Unique name, used in logs, metrics and the `x-palisade-auth-provider` header.
    pub name: String,
    /// The exact `iss` claim tokens from this provider carry.
    pub issuer: String,
    /// Accepted `aud` values; a token must name at least one. Empty: `aud` is not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Signature algorithms accepted from this provider, an explicit allowlist.
    pub algorithms: Vec<Algorithm>,
    /// Allowed clock skew when checking `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway")]
    pub clock_leeway: ConfigDuration,
}

fn default_leeway() -> ConfigDuration {
    ConfigDuration::from_secs(60)
}

/// JWS algorithms palisade-auth verifies. `none` is not one of them, by design.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, JsonSchema)]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
    HS256,
    HS384,
    HS512,
}

impl PluginConfig for AuthConfig {
    fn validate(&self, problems: &mut Problems) {
        let mut names = HashSet::new();
        let mut issuers = HashSet::new();
        problems.field("providers", |p| {
            for (i, provider) in self.providers.iter().enumerate() {
                p.index(i, |p| {
                    if provider.name.trim().is_empty() {
                        p.push_at("name", "must not be empty");
                    } else if !names.insert(provider.name.as_str()) {
                        p.push_at(
                            "name",
                            format!("duplicate provider name {:?}", provider.name),
                        );
                    }
                    if provider.issuer.trim().is_empty() {
                        p.push_at("issuer", "must not be empty");
                    } else if !issuers.insert(provider.issuer.as_str()) {
                        p.push_at(
                            "issuer",
                            format!(
                                "issuer {:?} is already used by another provider",
                                provider.issuer
                            ),
                        );
                    }
                    if provider.algorithms.is_empty() {
                        p.push_at("algorithms", "must list at least one algorithm");
                    }
                    if provider.audiences.iter().any(|aud| aud.is_empty()) {
                        p.push_at("audiences", "must not contain an empty audience");
                    }
                    if provider.clock_leeway.get().as_secs() > 300 {
                        p.push_at("clock_leeway", "must be at most 5m");
                    }
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
    fn empty_config_has_no_providers() {
        let config: AuthConfig = load(b"{}").unwrap();
        assert!(config.providers.is_empty());
    }

    #[test]
    fn provider_defaults() {
        let config: AuthConfig = load(
            br#"{"providers":[{"name":"idp","issuer":"https://idp.example","algorithms":["RS256"]}]}"#,
        )
        .unwrap();
        assert_eq!(
            config.providers[0].clock_leeway,
            ConfigDuration::from_secs(60)
        );
        assert!(config.providers[0].audiences.is_empty());
    }

    #[test]
    fn alg_none_is_not_an_algorithm() {
        let err = load::<AuthConfig>(
            br#"{"providers":[{"name":"idp","issuer":"i","algorithms":["none"]}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.problems[0].path, "providers[0].algorithms[0]");
        assert!(err.problems[0].reason.starts_with("unknown variant `none`"));
    }

    #[test]
    fn every_provider_problem_is_reported() {
        let err = load::<AuthConfig>(
            br#"{"providers":[
                {"name":"a","issuer":"i","algorithms":[]},
                {"name":"a","issuer":"i","algorithms":["ES256"],"audiences":[""],"clock_leeway":"10m"}
            ]}"#,
        )
        .unwrap_err();
        let paths: Vec<_> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "providers[0].algorithms",
                "providers[1].name",
                "providers[1].issuer",
                "providers[1].audiences",
                "providers[1].clock_leeway"
            ]
        );
    }

    #[test]
    fn misspelt_field_is_refused() {
        let err = load::<AuthConfig>(br#"{"provider":[]}"#).unwrap_err();
        assert_eq!(err.problems[0].path, "provider");
        assert!(err.problems[0]
            .reason
            .starts_with("unknown field `provider`"));
    }
}
