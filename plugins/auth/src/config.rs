//! palisade-auth's configuration.

use std::collections::HashSet;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use palisade_kit::config::{is_header_name, PluginConfig, Problems};
use palisade_kit::duration::ConfigDuration;
use palisade_kit::identity;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::api_keys::ApiKeysConfig;
use crate::introspection::IntrospectionConfig;
use crate::jwks::KeySet;
use crate::path::PathNormalizationConfig;
use crate::remote::RemoteJwksConfig;
use crate::rules::{NoMatchAction, RuleConfig, RulesConfig};

/// The default bound on a token's length, before any decoding.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;

/// palisade-auth configuration.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// JWT providers; a request's token is checked against the provider whose issuer it names.
    #[serde(default)]
    pub providers: Vec<JwtProvider>,
    /// Tokens longer than this are refused before any decoding (256 to 65536).
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Count allowed and denied requests by provider and reason. Set `false` on Kong before
    /// 3.8, whose metric host calls trap.
    #[serde(default = "yes")]
    pub metrics: bool,
    /// Let requests without any token through, anonymous (identity headers still stripped);
    /// a token that is present must still be valid. Default `false`: fail closed. Envoy's
    /// `jwt_authn` calls this `allow_missing`.
    /// Not allowed together with `rules` (say it with an `allow_anonymous` rule instead), nor
    /// without any provider, `api_keys` or `introspection` (every request would pass).
    #[serde(default)]
    pub allow_missing: bool,
    /// API keys (stored as SHA-256 hashes), each naming a consumer. See docs/auth-policy.md.
    #[serde(default)]
    pub api_keys: Option<ApiKeysConfig>,
    /// OAuth2 token introspection (RFC 7662) for opaque bearer tokens. See docs/auth-policy.md.
    #[serde(default)]
    pub introspection: Option<IntrospectionConfig>,
    /// Authorization rules, first match wins. Absent: every request needs a credential of any
    /// configured kind (JWT of any provider, API key, introspected token), as without rules.
    #[serde(default)]
    pub rules: Option<Vec<RuleConfig>>,
    /// With `rules`: what a request no rule matches gets, `deny` (default) or `allow_anonymous`.
    #[serde(default)]
    pub no_match: Option<NoMatchAction>,
    /// With `rules`: how the path is normalised before rules match it (safe defaults).
    #[serde(default)]
    pub path_normalization: Option<PathNormalizationConfig>,
    /// Slots of the verified-token cache shared by all workers (0, the default: off). A token
    /// whose signature one worker verified skips the signature math on every worker until its
    /// `exp`; claims are still checked on every request. Each worker also keeps the last tokens
    /// it saw verified (up to 256, with their decoded claims), so a repeat skips decoding too.
    /// Needs shared data (on Kong, the shm_kv zone `palisade`). At most 1000000.
    #[serde(default)]
    pub verified_token_cache_entries: u32,
}

impl AuthConfig {
    /// The rules part, when rules are configured.
    pub fn rules_config(&self) -> Option<RulesConfig> {
        self.rules.as_ref().map(|rules| RulesConfig {
            rules: rules.clone(),
            no_match: self.no_match.unwrap_or_default(),
        })
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            providers: Vec::new(),
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            metrics: true,
            allow_missing: false,
            api_keys: None,
            introspection: None,
            rules: None,
            no_match: None,
            path_normalization: None,
            verified_token_cache_entries: 0,
        }
    }
}

fn default_max_token_bytes() -> usize {
    DEFAULT_MAX_TOKEN_BYTES
}

fn yes() -> bool {
    true
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
    /// Where tokens of this provider are read, in order. Default: `Authorization: Bearer`.
    #[serde(default = "default_locations")]
    pub token_locations: Vec<TokenLocation>,
    /// Keep the token in the request sent upstream. Default `false`: a verified token is
    /// removed from its location, as Envoy's `jwt_authn` and Istio do.
    #[serde(default)]
    pub forward_token: bool,
    /// Claims copied into upstream request headers. Those headers are first removed from every
    /// incoming request, like the `x-palisade-*` identity headers.
    #[serde(default)]
    pub claims_to_headers: Vec<ClaimToHeader>,
    /// The public keys (RS*, PS*, ES*, EdDSA). Required unless only HMAC algorithms are listed.
    #[serde(default)]
    pub jwks: Option<JwksSource>,
    /// The shared secret for HS256/384/512, base64url. HMAC tokens are verified with this
    /// secret only, never with a key from a JWKS.
    #[serde(default)]
    pub hmac_secret: Option<String>,
    /// Refuse tokens without `exp` (default `true`; Envoy's `jwt_authn` accepts them).
    #[serde(default = "yes")]
    pub require_expiration: bool,
}

fn default_leeway() -> ConfigDuration {
    ConfigDuration::from_secs(60)
}

fn default_locations() -> Vec<TokenLocation> {
    vec![TokenLocation::Header {
        name: "authorization".to_owned(),
        prefix: "Bearer ".to_owned(),
    }]
}

/// Where a token is read from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TokenLocation {
    /// A request header, with the text before the token (`"Bearer "`; matched ignoring case,
    /// as HTTP auth schemes are). An empty prefix takes the whole value.
    Header {
        name: String,
        #[serde(default)]
        prefix: String,
    },
    /// A query parameter of the request's path.
    Query(String),
    /// A cookie.
    Cookie(String),
}

impl TokenLocation {
    /// Whether both read the same token from a request: header names and prefixes compare
    /// ignoring case (as [`crate::token_location::find`] matches them) and a prefix's trailing
    /// space (the token is trimmed). A provider's `bearer ` and introspection's `Bearer ` are
    /// one location, so an opaque token there is still introspected.
    pub fn reads_same_as(&self, other: &TokenLocation) -> bool {
        match (self, other) {
            (
                TokenLocation::Header { name, prefix },
                TokenLocation::Header {
                    name: other_name,
                    prefix: other_prefix,
                },
            ) => {
                name.eq_ignore_ascii_case(other_name)
                    && prefix
                        .trim_end()
                        .eq_ignore_ascii_case(other_prefix.trim_end())
            }
            (this, other) => this == other,
        }
    }
}

/// A claim copied into a request header.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimToHeader {
    /// The claim; a dotted path reaches into objects (`realm_access.roles`).
    pub claim: String,
    /// The header it is written to (lower case).
    pub header: String,
}

/// Where a provider's public keys come from.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum JwksSource {
    /// A JWKS document (`{"keys": [...]}`) written into the configuration.
    Inline(serde_json::Value),
    /// A JWKS fetched from a server, cached across workers and refreshed (docs/auth.md).
    Remote(RemoteJwksConfig),
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

impl Algorithm {
    pub const ALL: [Algorithm; 12] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
    ];

    /// The JOSE name (`"RS256"`), exactly as RFC 7518 spells it (case-sensitive).
    pub fn jose(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
            Algorithm::HS256 => "HS256",
            Algorithm::HS384 => "HS384",
            Algorithm::HS512 => "HS512",
        }
    }

    pub fn from_jose(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|alg| alg.jose() == name)
    }

    pub fn is_hmac(self) -> bool {
        matches!(self, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
    }

    /// RFC 7518 §3.2: an HMAC key at least as long as the hash output.
    pub fn min_hmac_secret_bytes(self) -> usize {
        match self {
            Algorithm::HS384 => 48,
            Algorithm::HS512 => 64,
            _ => 32,
        }
    }
}

impl PluginConfig for AuthConfig {
    fn validate(&self, problems: &mut Problems) {
        if !(256..=65536).contains(&self.max_token_bytes) {
            problems.push_at("max_token_bytes", "must be between 256 and 65536");
        }
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
                    let nested = self.providers.iter().find(|other| {
                        other
                            .issuer
                            .strip_prefix(provider.issuer.as_str())
                            .is_some_and(|rest| rest.starts_with('/'))
                    });
                    if provider.issuer.trim().is_empty() {
                        p.push_at("issuer", "must not be empty");
                    } else if provider.issuer == "introspection"
                        || provider.issuer.starts_with("introspection/")
                    {
                        // Consumers are `<issuer>/<sub>`; introspection's are
                        // `introspection/<sub>` when its answers name no issuer.
                        p.push_at("issuer", "must not be \"introspection\" or start with \"introspection/\"");
                    } else if let Some(other) = nested {
                        // `https://a` with sub `x/alice` and `https://a/x` with sub `alice`
                        // would name one consumer.
                        p.push_at(
                            "issuer",
                            format!(
                                "is a path prefix of issuer {:?}: their consumers (<issuer>/<sub>) could collide",
                                other.issuer
                            ),
                        );
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
                    provider.validate_locations(p);
                    provider.validate_claims_to_headers(p);
                    provider.validate_keys(p);
                });
            }
        });
        if self.verified_token_cache_entries > 1_000_000 {
            problems.push_at("verified_token_cache_entries", "must be at most 1000000");
        }
        if self.allow_missing
            && self.providers.is_empty()
            && self.api_keys.is_none()
            && self.introspection.is_none()
        {
            // No credential could ever be present, so every request would pass anonymous.
            problems.push_at(
                "allow_missing",
                "needs a provider, api_keys or introspection: with none, every request would pass unauthenticated",
            );
        }
        if let Some(api_keys) = &self.api_keys {
            problems.field("api_keys", |p| api_keys.validate(p));
        }
        if let Some(introspection) = &self.introspection {
            problems.field("introspection", |p| introspection.validate(p));
        }
        self.validate_policy(problems);
    }
}

impl AuthConfig {
    /// Rules, and the settings that only mean something with them; every rule's requirement
    /// must name configured providers and credential kinds.
    fn validate_policy(&self, problems: &mut Problems) {
        let Some(rules) = self.rules_config() else {
            if self.no_match.is_some() {
                problems.push_at("no_match", "only applies with `rules`");
            }
            if self.path_normalization.is_some() {
                problems.push_at("path_normalization", "only applies with `rules`");
            }
            return;
        };
        if self.allow_missing {
            problems.push_at(
                "allow_missing",
                "does not apply with `rules`: use an `allow_anonymous` rule or `no_match`",
            );
        }
        if let Some(normalization) = &self.path_normalization {
            problems.field("path_normalization", |p| normalization.validate(p));
        }
        rules.validate(problems);
        for (path, name) in rules.provider_references() {
            if !self.providers.iter().any(|p| p.name == name) {
                problems.push_at(&path, format!("no provider is named {name:?}"));
            }
        }
        for (i, rule) in rules.rules.iter().enumerate() {
            let crate::rules::ActionConfig::Require(requirement) = &rule.action else {
                continue;
            };
            if requirement.api_keys && self.api_keys.is_none() {
                problems.push_at(
                    &format!("rules[{i}].action.require.api_keys"),
                    "no `api_keys` are configured",
                );
            }
            if requirement.introspection && self.introspection.is_none() {
                problems.push_at(
                    &format!("rules[{i}].action.require.introspection"),
                    "no `introspection` is configured",
                );
            }
        }
    }
}

impl JwtProvider {
    fn validate_locations(&self, p: &mut Problems) {
        if self.token_locations.is_empty() {
            p.push_at("token_locations", "must list at least one location");
        }
        p.field("token_locations", |p| {
            for (i, location) in self.token_locations.iter().enumerate() {
                p.index(i, |p| match location {
                    TokenLocation::Header { name, .. } if !is_header_name(name) => {
                        p.push_at("header.name", "must be a lower-case HTTP header name")
                    }
                    TokenLocation::Header { name, .. } if identity::is_owned(name.as_bytes()) => p
                        .push_at(
                            "header.name",
                            format!("{}* headers are set by palisade-auth", identity::PREFIX),
                        ),
                    TokenLocation::Query(name) | TokenLocation::Cookie(name)
                        if name.is_empty() || !name.bytes().all(is_url_token_char) =>
                    {
                        p.push("must be a non-empty name of letters, digits, '-', '_' or '.'")
                    }
                    _ => {}
                });
            }
        });
    }

    fn validate_claims_to_headers(&self, p: &mut Problems) {
        p.field("claims_to_headers", |p| {
            for (i, mapping) in self.claims_to_headers.iter().enumerate() {
                p.index(i, |p| {
                    if mapping.claim.is_empty() {
                        p.push_at("claim", "must not be empty");
                    }
                    if !is_header_name(&mapping.header) {
                        p.push_at("header", "must be a lower-case HTTP header name");
                    } else if reserved_header(&mapping.header) {
                        p.push_at(
                            "header",
                            "is an identity, pseudo or hop-by-hop header palisade-auth must not write",
                        );
                    } else if self.token_locations.iter().any(|l| {
                        matches!(l, TokenLocation::Header { name, .. } if *name == mapping.header)
                    }) {
                        p.push_at("header", "is one of this provider's token locations");
                    }
                });
            }
        });
    }

    fn validate_keys(&self, p: &mut Problems) {
        let hmac: Vec<Algorithm> = self
            .algorithms
            .iter()
            .copied()
            .filter(|a| a.is_hmac())
            .collect();
        let public = self.algorithms.iter().any(|a| !a.is_hmac());
        match (&self.hmac_secret, hmac.is_empty()) {
            (None, false) => p.push_at("hmac_secret", "is required for HS256/HS384/HS512"),
            (Some(_), true) => p.push_at(
                "hmac_secret",
                "is set but no HMAC algorithm is allowed; remove it",
            ),
            (Some(secret), false) => match URL_SAFE_NO_PAD.decode(secret.trim_end_matches('=')) {
                Err(_) => p.push_at("hmac_secret", "must be base64url"),
                Ok(bytes) => {
                    for alg in &hmac {
                        if bytes.len() < alg.min_hmac_secret_bytes() {
                            p.push_at(
                                "hmac_secret",
                                format!(
                                    "must be at least {} bytes for {} (RFC 7518 §3.2)",
                                    alg.min_hmac_secret_bytes(),
                                    alg.jose()
                                ),
                            );
                        }
                    }
                }
            },
            (None, true) => {}
        }
        match (&self.jwks, public) {
            (None, true) => p.push_at("jwks", "is required for RS*, PS*, ES* and EdDSA"),
            (Some(_), false) => p.push_at(
                "jwks",
                "is set but only HMAC algorithms are allowed; remove it",
            ),
            (Some(JwksSource::Inline(document)), true) => {
                // A check only: the engine prepares the keys it keeps (an EC key's tables cost
                // ~9M fuel; preparing every key twice doubled start-up).
                p.field("jwks", |p| match KeySet::check(document) {
                    Err(err) => p.push_at("inline", err.to_string()),
                    Ok((usable, skipped)) => {
                        for skip in skipped {
                            p.field("inline", |p| {
                                p.field("keys", |p| p.index(skip.index, |p| p.push(skip.reason)))
                            });
                        }
                        if usable == 0 {
                            p.push_at("inline", "holds no usable signature key");
                        }
                    }
                })
            }
            (Some(JwksSource::Remote(remote)), true) => {
                p.field("jwks", |p| p.field("remote", |p| remote.validate(p)))
            }
            (None, false) => {}
        }
    }

    /// The HMAC secret's bytes (validated as base64url).
    pub fn hmac_secret_bytes(&self) -> Option<Vec<u8>> {
        self.hmac_secret
            .as_ref()
            .and_then(|s| URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok())
    }
}

/// Query parameter and cookie names this plugin accepts (a conservative RFC 6265 token).
fn is_url_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

/// Headers a claim must never be written to. Other `x-palisade-*` names are fine (and
/// recommended, `x-palisade-claim-email`): they are stripped from every request anyway.
fn reserved_header(name: &str) -> bool {
    [identity::SUBJECT, identity::CONSUMER, identity::PROVIDER].contains(&name)
        || name.starts_with(':')
        || matches!(
            name,
            "host"
                | "connection"
                | "content-length"
                | "transfer-encoding"
                | "te"
                | "upgrade"
                | "keep-alive"
                | "proxy-connection"
                | "authorization"
                | "cookie"
        )
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
            br#"{"providers":[{"name":"idp","issuer":"https://idp.example","algorithms":["RS256"],
                "jwks":{"inline":{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}}}]}"#,
        )
        .unwrap();
        assert_eq!(
            config.providers[0].clock_leeway,
            ConfigDuration::from_secs(60)
        );
        let provider = &config.providers[0];
        assert!(provider.audiences.is_empty());
        assert!(!provider.forward_token && provider.require_expiration);
        assert_eq!(
            provider.token_locations,
            [TokenLocation::Header {
                name: "authorization".into(),
                prefix: "Bearer ".into()
            }]
        );
        assert_eq!(config.max_token_bytes, 8192);
        assert!(config.metrics && !config.allow_missing);
    }

    #[test]
    fn alg_none_is_not_an_algorithm() {
        let err = load::<AuthConfig>(
            br#"{"providers":[{"name":"idp","issuer":"i","algorithms":["none"]}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.problems[0].path, "providers[0].algorithms[0]");
        assert!(err.problems[0]
            .reason
            .starts_with("unknown variant, expected"));
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
                "providers[1].clock_leeway",
                "providers[1].jwks"
            ]
        );
    }

    #[test]
    fn issuers_whose_consumers_could_collide_are_refused() {
        let provider = |name: &str, issuer: &str| {
            format!(
                r#"{{"name":"{name}","issuer":"{issuer}","algorithms":["HS256"],
                    "hmac_secret":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}}"#
            )
        };
        let json = format!(
            r#"{{"providers":[{},{},{},{}]}}"#,
            provider("a", "https://a"),
            provider("b", "https://a/x"),
            provider("c", "https://ab"),
            provider("d", "introspection"),
        );
        assert_eq!(
            problems(&json),
            [
                "providers[0].issuer: is a path prefix of issuer \"https://a/x\": their consumers \
                 (<issuer>/<sub>) could collide",
                "providers[3].issuer: must not be \"introspection\" or start with \"introspection/\"",
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

    fn problems(json: &str) -> Vec<String> {
        load::<AuthConfig>(json.as_bytes())
            .unwrap_err()
            .problems
            .iter()
            .map(|p| p.to_string())
            .collect()
    }

    #[test]
    fn allow_missing_needs_a_credential_to_be_missing() {
        assert_eq!(
            problems(r#"{"allow_missing":true}"#),
            ["allow_missing: needs a provider, api_keys or introspection: with none, every request would pass unauthenticated"]
        );
        let with_keys = r#"{"allow_missing":true,"api_keys":{"keys":[{"sha256":
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824","consumer":"c"}]}}"#;
        assert!(
            load::<AuthConfig>(with_keys.as_bytes()).is_ok(),
            "{with_keys}"
        );
    }

    #[test]
    fn keys_must_match_the_algorithms() {
        assert_eq!(
            problems(r#"{"providers":[{"name":"a","issuer":"i","algorithms":["HS256","ES256"]}]}"#),
            [
                "providers[0].hmac_secret: is required for HS256/HS384/HS512",
                "providers[0].jwks: is required for RS*, PS*, ES* and EdDSA"
            ]
        );
        assert_eq!(
            problems(
                r#"{"providers":[{"name":"a","issuer":"i","algorithms":["HS512"],"hmac_secret":"c2hvcnQ"}]}"#
            ),
            ["providers[0].hmac_secret: must be at least 64 bytes for HS512 (RFC 7518 §3.2)"]
        );
        assert_eq!(
            problems(
                r#"{"providers":[{"name":"a","issuer":"i","algorithms":["ES256"],"hmac_secret":"c2hvcnQ",
                    "jwks":{"inline":{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB","use":"enc"}]}}}]}"#
            ),
            [
                "providers[0].hmac_secret: is set but no HMAC algorithm is allowed; remove it",
                "providers[0].jwks.inline.keys[0]: not a signature key (use is not \"sig\")",
                "providers[0].jwks.inline: holds no usable signature key"
            ]
        );
        assert_eq!(
            problems(
                r#"{"providers":[{"name":"a","issuer":"i","algorithms":["ES256"],"jwks":{"inline":[]}}]}"#
            ),
            ["providers[0].jwks.inline: not a JWKS document: not a JSON object"]
        );
    }

    #[test]
    fn locations_and_claim_headers_are_checked() {
        let got = problems(
            r#"{"max_token_bytes":10,"providers":[{"name":"a","issuer":"i","algorithms":["HS256"],
                "hmac_secret":"cGFsaXNhZGUtdGVzdC1obWFjLXNlY3JldC1wYWxpc2FkZS10ZXN0LWhtYWMtc2VjcmV0LXBhbGlzYWRlLXRlcw",
                "token_locations":[{"header":{"name":"X-Jwt"}},{"header":{"name":"x-palisade-token"}},
                                   {"query":"a b"},{"cookie":""},{"header":{"name":"x-jwt"}}],
                "claims_to_headers":[{"claim":"","header":"x-palisade-subject"},{"claim":"e","header":"x-jwt"},
                                     {"claim":"e","header":"Bad Header"}]}]}"#,
        );
        assert_eq!(
            got,
            [
                "max_token_bytes: must be between 256 and 65536",
                "providers[0].token_locations[0].header.name: must be a lower-case HTTP header name",
                "providers[0].token_locations[1].header.name: x-palisade-* headers are set by palisade-auth",
                "providers[0].token_locations[2]: must be a non-empty name of letters, digits, '-', '_' or '.'",
                "providers[0].token_locations[3]: must be a non-empty name of letters, digits, '-', '_' or '.'",
                "providers[0].claims_to_headers[0].claim: must not be empty",
                "providers[0].claims_to_headers[0].header: is an identity, pseudo or hop-by-hop header palisade-auth must not write",
                "providers[0].claims_to_headers[1].header: is one of this provider's token locations",
                "providers[0].claims_to_headers[2].header: must be a lower-case HTTP header name",
            ]
        );
    }

    #[test]
    fn a_misspelt_location_is_refused() {
        let got = problems(
            r#"{"providers":[{"name":"a","issuer":"i","algorithms":["ES256"],"token_locations":[{"header":{"name":"x","prefx":"B"}}]}]}"#,
        );
        assert_eq!(got.len(), 1);
        assert!(
            got[0]
                .starts_with("providers[0].token_locations[0].header.prefx: unknown field `prefx`"),
            "{got:?}"
        );
    }
}
