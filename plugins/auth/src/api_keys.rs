//! API keys: a secret a client sends in a header or query parameter, naming a consumer.
//!
//! The configuration holds only each key's SHA-256, never the key, so a leaked config or a
//! `palisade validate` output reveals nothing usable. A presented key is hashed once and compared
//! with every stored hash in constant time, without stopping at the first match, so response
//! time says nothing about which stored hash (or how much of one) a guess came close to.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use palisade_kit::config::{is_header_name, Problems};
use schemars::JsonSchema;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

/// Longest key read from a request; anything longer is refused before hashing.
pub const MAX_KEY_BYTES: usize = 4096;

/// API keys and where requests carry them.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysConfig {
    /// Where a request's key is looked for, in order; the first location present is used.
    /// Default: the `x-api-key` header.
    #[serde(default = "default_locations")]
    pub from: Vec<KeyLocation>,
    /// The accepted keys.
    pub keys: Vec<ApiKeyConfig>,
    /// Pass the key on to the upstream. Default: no: once a key authenticated the request, its
    /// headers and query parameters are removed (as Envoy's `jwt_authn` does with tokens), and
    /// the consumer travels in the identity headers instead.
    #[serde(default)]
    pub forward: bool,
}

fn default_locations() -> Vec<KeyLocation> {
    vec![KeyLocation::Header {
        name: "x-api-key".to_owned(),
        prefix: None,
    }]
}

/// Where a request carries its API key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum KeyLocation {
    /// A request header (lower-case name), optionally after a prefix such as `ApiKey ` in
    /// `authorization: ApiKey <key>` (the prefix compares case-insensitively).
    Header {
        name: String,
        #[serde(default)]
        prefix: Option<String>,
    },
    /// A query parameter; its value is percent-decoded (`+` stays `+`).
    Query { name: String },
}

/// One accepted key.
#[derive(Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// The key's SHA-256 as 64 hex digits: `printf %s "$KEY" | sha256sum`.
    pub sha256: String,
    /// Who the key belongs to: the subject and consumer passed upstream.
    pub consumer: String,
    /// Scopes the key grants, checked by rules' `scopes` like a token's `scope` claim.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Extra attributes, checked by rules' `claims` like token claims.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl fmt::Debug for ApiKeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyConfig")
            .field("consumer", &self.consumer)
            .field("scopes", &self.scopes)
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

const HASH_HINT: &str = "must be the key's SHA-256 as 64 hex digits, never the key itself: \
                         compute it with `printf %s \"$KEY\" | sha256sum`";

impl ApiKeysConfig {
    /// Records every problem, with its field path.
    pub fn validate(&self, problems: &mut Problems) {
        problems.field("from", |p| {
            if self.from.is_empty() {
                p.push("must name at least one location");
            }
            for (i, location) in self.from.iter().enumerate() {
                p.index(i, |p| location.validate(p));
            }
        });
        let mut hashes = HashSet::new();
        problems.field("keys", |p| {
            if self.keys.is_empty() {
                p.push("must list at least one key");
            }
            for (i, key) in self.keys.iter().enumerate() {
                p.index(i, |p| {
                    match decode_sha256(&key.sha256) {
                        // The message must not echo the field: it may be a real key.
                        None => p.push_at("sha256", HASH_HINT),
                        Some(hash) => {
                            if !hashes.insert(hash) {
                                p.push_at("sha256", "the same key is listed twice");
                            }
                        }
                    }
                    if key.consumer.trim().is_empty() {
                        p.push_at("consumer", "must not be empty");
                    } else if key.consumer.contains('/') {
                        // Token consumers are `<issuer>/<sub>`: a key's never collides with one.
                        p.push_at(
                            "consumer",
                            "must not contain '/', which marks a token's consumer (<issuer>/<sub>)",
                        );
                    }
                    p.field("scopes", |p| {
                        for (j, scope) in key.scopes.iter().enumerate() {
                            if !is_scope_token(scope) {
                                p.index(j, |p| {
                                    p.push("must be a non-empty scope without spaces or quotes")
                                });
                            }
                        }
                    });
                    p.field("labels", |p| {
                        for name in key.labels.keys() {
                            if matches!(name.as_str(), "sub" | "scope" | "scp") || name.is_empty() {
                                p.key(name, |p| {
                                    p.push("is reserved (sub, scope and scp come from the key)")
                                });
                            }
                        }
                    });
                });
            }
        });
    }

    /// The compiled key set. Call after [`validate`](Self::validate) found nothing: keys whose
    /// hash does not decode are left out.
    pub fn compile(&self) -> ApiKeys {
        let keys = self
            .keys
            .iter()
            .filter_map(|key| {
                Some(ApiKey {
                    hash: decode_sha256(&key.sha256)?,
                    consumer: key.consumer.clone(),
                    scopes: key.scopes.clone(),
                    labels: key.labels.clone(),
                })
            })
            .collect();
        ApiKeys {
            from: self.from.clone(),
            keys,
            forward: self.forward,
        }
    }
}

impl KeyLocation {
    fn validate(&self, problems: &mut Problems) {
        match self {
            Self::Header { name, prefix } => {
                if !is_header_name(name) {
                    problems.push_at("header.name", "must be a lower-case HTTP header name");
                }
                if prefix.as_deref().is_some_and(|p| p.trim().is_empty()) {
                    problems.push_at("header.prefix", "must not be blank when given");
                }
            }
            Self::Query { name } => {
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && !b"&;=%+".contains(&b))
                {
                    problems.push_at("query.name", "must be a non-empty parameter name");
                }
            }
        }
    }
}

/// RFC 6749 scope token: visible ASCII but `"` and `\`.
pub(crate) fn is_scope_token(scope: &str) -> bool {
    !scope.is_empty()
        && scope
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

fn decode_sha256(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let [hi, lo] = pair else { return None };
        *slot = (crate::path::hex_digit(*hi)? << 4) | crate::path::hex_digit(*lo)?;
    }
    Some(out)
}

/// A compiled key.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    hash: [u8; 32],
    pub consumer: String,
    pub scopes: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

impl ApiKey {
    /// The key's identity as claims, so rules check API keys and tokens alike: `sub` is the
    /// consumer, `scope` the space-separated scopes, and each label a string claim.
    pub fn claims(&self) -> serde_json::Value {
        let mut claims = serde_json::Map::new();
        for (name, value) in &self.labels {
            claims.insert(name.clone(), serde_json::Value::String(value.clone()));
        }
        claims.insert(
            "sub".to_owned(),
            serde_json::Value::String(self.consumer.clone()),
        );
        claims.insert(
            "scope".to_owned(),
            serde_json::Value::String(self.scopes.join(" ")),
        );
        serde_json::Value::Object(claims)
    }
}

/// What a request's API key turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKeyOutcome<'k> {
    /// No configured location carries a key: another credential may still be accepted.
    Missing,
    /// A key was presented and matches this configured key.
    Valid(&'k ApiKey),
    /// A key was presented but is not accepted (401).
    Invalid(InvalidApiKey),
}

/// Why a presented key was refused. None of these carries the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidApiKey {
    #[error("unknown API key")]
    Unknown,
    #[error("API key sent more than once")]
    Ambiguous,
    #[error("API key too long")]
    TooLong,
    #[error("API key has invalid percent-encoding")]
    BadEncoding,
}

impl InvalidApiKey {
    /// A stable short reason for logs and metrics.
    pub const fn reason(self) -> &'static str {
        match self {
            Self::Unknown => "api_key_unknown",
            Self::Ambiguous => "api_key_ambiguous",
            Self::TooLong => "api_key_too_long",
            Self::BadEncoding => "api_key_bad_encoding",
        }
    }
}

/// The compiled key set: where to look, and the hashes to compare against.
#[derive(Debug, Clone)]
pub struct ApiKeys {
    from: Vec<KeyLocation>,
    keys: Vec<ApiKey>,
    forward: bool,
}

impl ApiKeys {
    /// Finds and checks the request's key. `headers` are the request headers as raw bytes (the
    /// kit's `Fields`), `query` the raw query string after `?` (from
    /// [`NormalizedPath::query`](crate::path::NormalizedPath::query)).
    pub fn authenticate(
        &self,
        headers: &[(&[u8], &[u8])],
        query: Option<&[u8]>,
    ) -> ApiKeyOutcome<'_> {
        for location in &self.from {
            match presented_key(location, headers, query) {
                Ok(None) => continue,
                Ok(Some(key)) => return self.check(&key),
                Err(invalid) => return ApiKeyOutcome::Invalid(invalid),
            }
        }
        ApiKeyOutcome::Missing
    }

    /// Does the key go on to the upstream? When not, after a key authenticated the request the
    /// engine removes [`key_headers`](Self::key_headers) and rewrites the query with
    /// [`query_without_keys`](Self::query_without_keys).
    pub fn forward(&self) -> bool {
        self.forward
    }

    /// The request headers that can carry a key.
    pub fn key_headers(&self) -> impl Iterator<Item = &str> {
        self.from.iter().filter_map(|location| match location {
            KeyLocation::Header { name, .. } => Some(name.as_str()),
            KeyLocation::Query { .. } => None,
        })
    }

    /// The query without the parameters that can carry a key; `None` when it has none of them
    /// (nothing to rewrite). An empty result means the `?` goes too.
    pub fn query_without_keys(&self, query: &[u8]) -> Option<Vec<u8>> {
        let is_key = |pair: &[u8]| {
            let name = palisade_kit::query::name_of(pair);
            self.from.iter().any(|location| {
                matches!(location, KeyLocation::Query { name: key }
                    if palisade_kit::query::name_is(name, key))
            })
        };
        let parameters = || palisade_kit::query::parameters(query).map(|(_, pair)| pair);
        if !parameters().any(is_key) {
            return None;
        }
        Some(palisade_kit::query::without(query, is_key))
    }

    /// Compares a presented key with every stored hash, in constant time over the whole set.
    fn check(&self, presented: &[u8]) -> ApiKeyOutcome<'_> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = Choice::from(0);
        let mut index = 0u32;
        for (i, key) in self.keys.iter().enumerate() {
            let equal = key.hash.ct_eq(&digest);
            index.conditional_assign(&u32::try_from(i).unwrap_or(u32::MAX), equal);
            found |= equal;
        }
        if bool::from(found) {
            if let Some(key) = usize::try_from(index).ok().and_then(|i| self.keys.get(i)) {
                return ApiKeyOutcome::Valid(key);
            }
        }
        ApiKeyOutcome::Invalid(InvalidApiKey::Unknown)
    }
}

/// The key a location carries: `None` when absent (or empty), an error when it is unusable.
fn presented_key(
    location: &KeyLocation,
    headers: &[(&[u8], &[u8])],
    query: Option<&[u8]>,
) -> Result<Option<Vec<u8>>, InvalidApiKey> {
    let found = match location {
        KeyLocation::Header { name, prefix } => {
            let mut values = headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
                .map(|(_, v)| *v);
            let Some(value) = values.next() else {
                return Ok(None);
            };
            if values.next().is_some() {
                return Err(InvalidApiKey::Ambiguous);
            }
            let value = value.trim_ascii();
            match prefix {
                None => value.to_vec(),
                Some(prefix) => match strip_prefix_ignore_case(value, prefix.as_bytes()) {
                    // Another scheme in the same header (e.g. `Bearer` in `authorization`) is
                    // not an API key: leave it to the other credentials.
                    None => return Ok(None),
                    Some(rest) => rest.trim_ascii().to_vec(),
                },
            }
        }
        KeyLocation::Query { name } => {
            let Some(query) = query else {
                return Ok(None);
            };
            // A name as upstreams decode it (`api%5Fkey`, `api.key`): no copy hides.
            let mut values = palisade_kit::query::parameters(query)
                .filter_map(|(_, pair)| palisade_kit::query::value_of(pair, name));
            let Some(value) = values.next() else {
                return Ok(None);
            };
            if values.next().is_some() {
                return Err(InvalidApiKey::Ambiguous);
            }
            if value.len() > MAX_KEY_BYTES * 3 {
                return Err(InvalidApiKey::TooLong);
            }
            percent_decode(value).ok_or(InvalidApiKey::BadEncoding)?
        }
    };
    if found.is_empty() {
        Ok(None)
    } else if found.len() > MAX_KEY_BYTES {
        Err(InvalidApiKey::TooLong)
    } else {
        Ok(Some(found))
    }
}

fn strip_prefix_ignore_case<'a>(value: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| value.get(prefix.len()..))
        .flatten()
}

fn percent_decode(value: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(value.len());
    let mut rest = value;
    while let Some((&byte, tail)) = rest.split_first() {
        rest = tail;
        if byte == b'%' {
            let [hi, lo, tail @ ..] = rest else {
                return None;
            };
            out.push((crate::path::hex_digit(*hi)? << 4) | crate::path::hex_digit(*lo)?);
            rest = tail;
        } else {
            out.push(byte);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    /// `printf %s alpha-key-1 | sha256sum`, as the docs tell operators to compute it.
    const ALPHA: &str = "43b55e4e8bedb56b2b27b73ae0cdbc9ff724dd55b1af0bd7e67d7e5c919c3d29";

    fn sha256_hex(key: &[u8]) -> String {
        Sha256::digest(key)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn config(extra: &str) -> ApiKeysConfig {
        let json = format!(
            r#"{{{extra}"keys":[
                {{"sha256":"{}","consumer":"alpha","scopes":["read","write"],"labels":{{"team":"payments"}}}},
                {{"sha256":"{}","consumer":"beta"}}
            ]}}"#,
            sha256_hex(b"alpha-key-1"),
            sha256_hex(b"beta-key-2").to_uppercase()
        );
        let config: ApiKeysConfig = serde_json::from_str(&json).unwrap();
        let mut problems = Problems::default();
        config.validate(&mut problems);
        assert!(problems.is_empty(), "{:?}", problems.into_result());
        config
    }

    fn consumer(outcome: ApiKeyOutcome<'_>) -> Option<&str> {
        match outcome {
            ApiKeyOutcome::Valid(key) => Some(key.consumer.as_str()),
            _ => None,
        }
    }

    #[test]
    fn hashes_are_computed_the_documented_way() {
        let json = format!(r#"{{"keys":[{{"sha256":"{ALPHA}","consumer":"alpha"}}]}}"#);
        let keys = serde_json::from_str::<ApiKeysConfig>(&json)
            .unwrap()
            .compile();
        let headers: [(&[u8], &[u8]); 1] = [(b"x-api-key", b"alpha-key-1")];
        assert_eq!(consumer(keys.authenticate(&headers, None)), Some("alpha"));
    }

    #[test]
    fn default_location_is_the_x_api_key_header() {
        let keys = config("").compile();
        let headers: [(&[u8], &[u8]); 1] = [(b"X-Api-Key", b"alpha-key-1")];
        assert_eq!(consumer(keys.authenticate(&headers, None)), Some("alpha"));
        let headers: [(&[u8], &[u8]); 1] = [(b"x-api-key", b" beta-key-2 ")];
        assert_eq!(consumer(keys.authenticate(&headers, None)), Some("beta"));
    }

    #[test]
    fn unknown_missing_and_repeated_keys() {
        let keys = config("").compile();
        let unknown: [(&[u8], &[u8]); 1] = [(b"x-api-key", b"alpha-key-2")];
        assert_eq!(
            keys.authenticate(&unknown, None),
            ApiKeyOutcome::Invalid(InvalidApiKey::Unknown)
        );
        assert_eq!(keys.authenticate(&[], None), ApiKeyOutcome::Missing);
        let empty: [(&[u8], &[u8]); 1] = [(b"x-api-key", b"  ")];
        assert_eq!(keys.authenticate(&empty, None), ApiKeyOutcome::Missing);
        let twice: [(&[u8], &[u8]); 2] = [(b"x-api-key", b"alpha-key-1"), (b"x-api-key", b"nope")];
        assert_eq!(
            keys.authenticate(&twice, None),
            ApiKeyOutcome::Invalid(InvalidApiKey::Ambiguous)
        );
        let long = vec![b'a'; MAX_KEY_BYTES + 1];
        let too_long: [(&[u8], &[u8]); 1] = [(b"x-api-key", &long)];
        assert_eq!(
            keys.authenticate(&too_long, None),
            ApiKeyOutcome::Invalid(InvalidApiKey::TooLong)
        );
        assert_eq!(InvalidApiKey::Unknown.reason(), "api_key_unknown");
    }

    #[test]
    fn keys_are_bytes_not_text() {
        let json = format!(
            r#"{{"keys":[{{"sha256":"{}","consumer":"binary"}}]}}"#,
            sha256_hex(b"k\xff\x00y")
        );
        let keys = serde_json::from_str::<ApiKeysConfig>(&json)
            .unwrap()
            .compile();
        let headers: [(&[u8], &[u8]); 1] = [(b"x-api-key", b"k\xff\x00y")];
        assert_eq!(consumer(keys.authenticate(&headers, None)), Some("binary"));
        assert_eq!(
            consumer(keys.authenticate(&[], Some(b"x=1&key=k%FF%00y"))),
            None
        );
    }

    #[test]
    fn header_with_a_prefix() {
        let keys = config(
            r#""from":[{"header":{"name":"authorization","prefix":"ApiKey "}},{"query":{"name":"key"}}],"#,
        )
        .compile();
        let headers: [(&[u8], &[u8]); 1] = [(b"authorization", b"apikey alpha-key-1")];
        assert_eq!(consumer(keys.authenticate(&headers, None)), Some("alpha"));
        // A bearer token in the same header is not an API key: the next location is tried.
        let bearer: [(&[u8], &[u8]); 1] = [(b"authorization", b"Bearer abc")];
        assert_eq!(keys.authenticate(&bearer, None), ApiKeyOutcome::Missing);
        assert_eq!(
            consumer(keys.authenticate(&bearer, Some(b"key=beta-key-2"))),
            Some("beta")
        );
    }

    #[test]
    fn query_parameter_is_percent_decoded() {
        let json = format!(
            r#"{{"from":[{{"query":{{"name":"api_key"}}}}],"keys":[{{"sha256":"{}","consumer":"q"}}]}}"#,
            sha256_hex(b"a+b/c=")
        );
        let keys = serde_json::from_str::<ApiKeysConfig>(&json)
            .unwrap()
            .compile();
        assert_eq!(
            consumer(keys.authenticate(&[], Some(b"x=1&api_key=a%2Bb%2fc%3D"))),
            Some("q")
        );
        assert_eq!(
            consumer(keys.authenticate(&[], Some(b"api_key=a+b/c="))),
            Some("q")
        );
        assert_eq!(
            keys.authenticate(&[], Some(b"api_keyx=1")),
            ApiKeyOutcome::Missing
        );
        assert_eq!(keys.authenticate(&[], None), ApiKeyOutcome::Missing);
        assert_eq!(
            keys.authenticate(&[], Some(b"api_key=%zz")),
            ApiKeyOutcome::Invalid(InvalidApiKey::BadEncoding)
        );
        assert_eq!(
            keys.authenticate(&[], Some(b"api_key=a&api_key=b")),
            ApiKeyOutcome::Invalid(InvalidApiKey::Ambiguous)
        );
        // A name spelled as upstreams decode it is the same parameter.
        assert_eq!(
            keys.authenticate(&[], Some(b"api%5Fkey=a%2Bb%2fc%3D&api.key=other")),
            ApiKeyOutcome::Invalid(InvalidApiKey::Ambiguous)
        );
        // `;` separates too (Rack 2, old parse_qs): a second key hidden behind it is seen.
        assert_eq!(
            keys.authenticate(&[], Some(b"api_key=a%2Bb%2fc%3D&x=1;api_key=other")),
            ApiKeyOutcome::Invalid(InvalidApiKey::Ambiguous)
        );
        // The header is not a location here.
        let headers: [(&[u8], &[u8]); 1] = [(b"x-api-key", b"a+b/c=")];
        assert_eq!(keys.authenticate(&headers, None), ApiKeyOutcome::Missing);
    }

    #[test]
    fn keys_are_not_forwarded_by_default() {
        let keys = config(
            r#""from":[{"header":{"name":"x-api-key"}},{"query":{"name":"key"}},{"query":{"name":"k2"}}],"#,
        )
        .compile();
        assert!(!keys.forward());
        assert_eq!(keys.key_headers().collect::<Vec<_>>(), ["x-api-key"]);
        assert_eq!(
            keys.query_without_keys(b"a=1&key=secret&b=2&k2=x&keyx=3"),
            Some(b"a=1&b=2&keyx=3".to_vec())
        );
        assert_eq!(keys.query_without_keys(b"key=secret"), Some(Vec::new()));
        assert_eq!(
            keys.query_without_keys(b"a=1;key=secret;b=2"),
            Some(b"a=1;b=2".to_vec())
        );
        assert_eq!(keys.query_without_keys(b"a=1&keys=2"), None);
        let forwarded = config(r#""forward":true,"#).compile();
        assert!(forwarded.forward());
    }

    #[test]
    fn a_key_is_its_consumer_and_scopes_as_claims() {
        let keys = config("").compile();
        let headers: [(&[u8], &[u8]); 1] = [(b"x-api-key", b"alpha-key-1")];
        let ApiKeyOutcome::Valid(key) = keys.authenticate(&headers, None) else {
            panic!("alpha should be valid");
        };
        assert_eq!(
            key.claims(),
            serde_json::json!({"sub":"alpha","scope":"read write","team":"payments"})
        );
    }

    #[test]
    fn plain_keys_and_bad_hashes_are_refused_without_echoing_them() {
        let config: ApiKeysConfig = serde_json::from_str(&format!(
            r#"{{"from":[],"keys":[
                {{"sha256":"my-secret-key","consumer":""}},
                {{"sha256":"{0}","consumer":"a","scopes":["has space"],"labels":{{"sub":"x"}}}},
                {{"sha256":"{0}","consumer":"b"}},
                {{"sha256":"{1}","consumer":"https://idp.example/alice"}}
            ]}}"#,
            sha256_hex(b"k"),
            "g".repeat(64)
        ))
        .unwrap();
        let mut problems = Problems::default();
        config.validate(&mut problems);
        let err = problems.into_result().unwrap_err();
        let got: Vec<_> = err
            .problems
            .iter()
            .map(|p| (p.path.as_str(), p.reason.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("from", "must name at least one location"),
                ("keys[0].sha256", HASH_HINT),
                ("keys[0].consumer", "must not be empty"),
                (
                    "keys[1].scopes[0]",
                    "must be a non-empty scope without spaces or quotes"
                ),
                (
                    "keys[1].labels[\"sub\"]",
                    "is reserved (sub, scope and scp come from the key)"
                ),
                ("keys[2].sha256", "the same key is listed twice"),
                ("keys[3].sha256", HASH_HINT),
                (
                    "keys[3].consumer",
                    "must not contain '/', which marks a token's consumer (<issuer>/<sub>)"
                ),
            ]
        );
        assert!(!err.to_string().contains("my-secret-key"));
        assert!(HASH_HINT.contains(r#"printf %s "$KEY" | sha256sum"#));
        assert!(!format!("{:?}", config.keys[0]).contains("my-secret-key"));
    }

    #[test]
    fn bad_locations_and_misspellings_are_refused() {
        let config: ApiKeysConfig = serde_json::from_str(
            r#"{"from":[{"header":{"name":"X-Key"}},{"header":{"name":"k","prefix":" "}},{"query":{"name":""}}],"keys":[]}"#,
        )
        .unwrap();
        let mut problems = Problems::default();
        config.validate(&mut problems);
        let paths: Vec<_> = problems
            .into_result()
            .unwrap_err()
            .problems
            .into_iter()
            .map(|p| p.path)
            .collect();
        assert_eq!(
            paths,
            [
                "from[0].header.name",
                "from[1].header.prefix",
                "from[2].query.name",
                "keys"
            ]
        );
        let err =
            serde_json::from_str::<ApiKeysConfig>(r#"{"from":[{"header":{"nme":"x"}}],"keys":[]}"#)
                .unwrap_err();
        assert!(err.to_string().starts_with("unknown field `nme`"), "{err}");
        let err = serde_json::from_str::<ApiKeysConfig>(
            r#"{"keys":[{"sha256":"00","consumer":"a","scope":[]}]}"#,
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("unknown field `scope`"),
            "{err}"
        );
    }
}
