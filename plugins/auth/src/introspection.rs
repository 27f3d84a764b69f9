//! OAuth 2.0 token introspection (RFC 7662) for opaque access tokens: the call-out request, the
//! answer's parsing, and a bounded cache of answers.
//!
//! The call goes to one upstream string that works on both hosts (an Envoy cluster name, or
//! `host:port` on Kong), authenticated with HTTP Basic client credentials (RFC 6749 §2.3.1). An
//! active answer is cached until the earlier of the configured TTL and the token's `exp`; an
//! inactive one for a short TTL, so the same bad token sent again costs no call-out (distinct
//! tokens each cost one: docs/auth-policy.md).
//! Cache keys are SHA-256 digests of the token: the cache never holds a token.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::Duration;

use palisade_kit::config::{is_header_value, Problems};
use palisade_kit::duration::ConfigDuration;
use palisade_kit::scheme::Scheme;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Where and how tokens are introspected.
#[derive(Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// The introspection endpoint's upstream: an Envoy cluster name, one that originates TLS
    /// (Istio: `outbound|80||idp.example.com` with a ServiceEntry and DestinationRule,
    /// docs/auth.md), or `host:port` on Kong.
    pub upstream: String,
    /// The `:authority` (Host, and TLS SNI on Kong) the endpoint expects, e.g. `idp.example.com`.
    pub authority: String,
    /// The endpoint's path, e.g. `/oauth2/introspect`.
    pub path: String,
    /// `https` (default) or `http`. On Kong this turns TLS on; in Envoy the cluster decides.
    #[serde(default)]
    pub scheme: Scheme,
    /// This gateway's OAuth2 client id at the authorization server.
    pub client_id: String,
    /// Its client secret (sent as HTTP Basic credentials; never logged).
    pub client_secret: String,
    /// Longest wait for the endpoint. Default 5s, at most 60s.
    #[serde(default = "default_timeout")]
    pub timeout: ConfigDuration,
    /// Required `iss` of active tokens. Absent: not checked.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Accepted `aud` values; an active token must name one. Empty: not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Longest an active answer is reused (never past the token's `exp`). Default 5m, at most
    /// 1h; `0s` disables the positive cache.
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl: ConfigDuration,
    /// How long an inactive answer is reused. Default 10s, at most 5m; `0s` disables it.
    #[serde(default = "default_negative_cache_ttl")]
    pub negative_cache_ttl: ConfigDuration,
    /// Most active answers cached per worker (oldest evicted first). Default 10000.
    #[serde(default = "default_cache_entries")]
    pub cache_entries: u32,
    /// Most inactive answers cached per worker (oldest evicted first). Default 10000.
    #[serde(default = "default_cache_entries")]
    pub negative_cache_entries: u32,
    /// Largest answer body accepted, in bytes. Default 16 KiB, at most 1 MiB.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u32,
    /// When the endpoint cannot answer (unreachable, timeout, error status, garbage):
    /// `closed` (default) refuses the request with 503; `open` lets it through
    /// unauthenticated, as Envoy ext_authz's `failure_mode_allow` (the token still removed
    /// unless `forward_token`), but only while the endpoint is down (no answer or a 5xx):
    /// any other unusable answer is refused with 503.
    #[serde(default)]
    pub fail_mode: FailMode,
    /// Keep the token in the request sent upstream. Default `false`: once introspection
    /// accepted it, the `authorization` header is removed, as for JWTs.
    #[serde(default)]
    pub forward_token: bool,
}

impl fmt::Debug for IntrospectionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntrospectionConfig")
            .field("upstream", &self.upstream)
            .field("authority", &self.authority)
            .field("path", &self.path)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

fn default_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(5)
}
fn default_cache_ttl() -> ConfigDuration {
    ConfigDuration::from_secs(300)
}
fn default_negative_cache_ttl() -> ConfigDuration {
    ConfigDuration::from_secs(10)
}
fn default_cache_entries() -> u32 {
    10_000
}
fn default_max_response_bytes() -> u32 {
    16 * 1024
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    #[default]
    Closed,
    Open,
}

impl IntrospectionConfig {
    /// Records every problem, with its field path. Secrets never appear in a message.
    pub fn validate(&self, problems: &mut Problems) {
        validate_endpoint(&self.upstream, &self.authority, &self.path, problems);
        if self.client_id.is_empty() || !is_header_value(&self.client_id) {
            problems.push_at("client_id", "must be non-empty visible text");
        }
        if self.client_secret.is_empty() {
            problems.push_at("client_secret", "must not be empty");
        }
        let timeout = self.timeout.get();
        if timeout.is_zero() || timeout > Duration::from_secs(60) {
            problems.push_at("timeout", "must be between 1ms and 60s");
        }
        if self.issuer.as_deref().is_some_and(str::is_empty) {
            problems.push_at("issuer", "must not be empty when given");
        }
        if self.audiences.iter().any(String::is_empty) {
            problems.push_at("audiences", "must not contain an empty audience");
        }
        if self.cache_ttl.get() > Duration::from_secs(3600) {
            problems.push_at("cache_ttl", "must be at most 1h");
        }
        if self.negative_cache_ttl.get() > Duration::from_secs(300) {
            problems.push_at("negative_cache_ttl", "must be at most 5m");
        }
        for (field, entries) in [
            ("cache_entries", self.cache_entries),
            ("negative_cache_entries", self.negative_cache_entries),
        ] {
            if entries > 1_000_000 {
                problems.push_at(field, "must be at most 1000000");
            }
        }
        if !(256..=1024 * 1024).contains(&self.max_response_bytes) {
            problems.push_at("max_response_bytes", "must be between 256 and 1048576");
        }
    }

    /// The compiled introspector: the Basic credentials are encoded once, here.
    pub fn compile(&self) -> Introspector {
        let credentials = format!(
            "{}:{}",
            form_encode(self.client_id.as_bytes()),
            form_encode(self.client_secret.as_bytes())
        );
        Introspector {
            upstream: self.upstream.clone(),
            authority: self.authority.clone(),
            path: self.path.clone(),
            scheme: self.scheme.as_str(),
            authorization: format!("Basic {}", base64_encode(credentials.as_bytes())),
            timeout: self.timeout.get(),
            issuer: self.issuer.clone(),
            audiences: self.audiences.clone(),
            max_response_bytes: usize::try_from(self.max_response_bytes).unwrap_or(usize::MAX),
            fail_mode: self.fail_mode,
            cache_limits: CacheLimits {
                ttl_ms: duration_ms(self.cache_ttl.get()),
                negative_ttl_ms: duration_ms(self.negative_cache_ttl.get()),
                entries: usize::try_from(self.cache_entries).unwrap_or(usize::MAX),
                negative_entries: usize::try_from(self.negative_cache_entries)
                    .unwrap_or(usize::MAX),
            },
        }
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The call-out target every palisade-auth upstream (introspection, remote JWKS) is named by:
/// one upstream string for both hosts, the `:authority`, and a path.
pub(crate) fn validate_endpoint(
    upstream: &str,
    authority: &str,
    path: &str,
    problems: &mut Problems,
) {
    if upstream.is_empty() || !upstream.bytes().all(|b| b.is_ascii_graphic()) {
        problems.push_at(
            "upstream",
            "must be an Envoy cluster name or a Kong `host:port`, without spaces",
        );
    }
    if !is_authority(authority) {
        problems.push_at("authority", "must be a host name, optionally with `:port`");
    }
    if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) || path.contains('#') {
        problems.push_at("path", "must start with `/` and be plain visible ASCII");
    }
}

fn is_authority(text: &str) -> bool {
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') || host.ends_with(']') => (host, Some(port)),
        _ => (text, None),
    };
    let host_ok = !host.is_empty()
        && (host.starts_with('[') && host.ends_with(']')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
    host_ok && port.is_none_or(|p| !p.is_empty() && p.parse::<u16>().is_ok())
}

/// `application/x-www-form-urlencoded` (WHATWG URL §5.2): alphanumerics and `*-._` as they are,
/// space as `+`, every other byte `%XX`.
fn form_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &byte in bytes {
        match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(byte));
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(char::from(upper_hex(byte >> 4)));
                out.push(char::from(upper_hex(byte & 0x0f)));
            }
        }
    }
    out
}

fn upper_hex(nibble: u8) -> u8 {
    if nibble < 10 {
        b'0' + nibble
    } else {
        b'A' + nibble - 10
    }
}

/// Standard base64 with padding (RFC 4648 §4), for the Basic credentials.
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let symbol = |index: u32| {
        ALPHABET
            .get(usize::try_from(index & 0x3f).unwrap_or(0))
            .map_or('=', |&b| char::from(b))
    };
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let [a, b, c] = match *chunk {
            [a] => [a, 0, 0],
            [a, b] => [a, b, 0],
            [a, b, c] => [a, b, c],
            _ => continue,
        };
        let n = (u32::from(a) << 16) | (u32::from(b) << 8) | u32::from(c);
        out.push(symbol(n >> 18));
        out.push(symbol(n >> 12));
        out.push(if chunk.len() > 1 { symbol(n >> 6) } else { '=' });
        out.push(if chunk.len() > 2 { symbol(n) } else { '=' });
    }
    out
}

/// The compiled introspection settings.
#[derive(Clone)]
pub struct Introspector {
    upstream: String,
    authority: String,
    path: String,
    scheme: &'static str,
    authorization: String,
    timeout: Duration,
    issuer: Option<String>,
    audiences: Vec<String>,
    max_response_bytes: usize,
    fail_mode: FailMode,
    cache_limits: CacheLimits,
}

impl fmt::Debug for Introspector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Introspector")
            .field("upstream", &self.upstream)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// One introspection call-out, ready for the kit's `HttpCallout` (every field maps one to one;
/// `headers` holds `:scheme` and the regular headers).
#[derive(Clone, PartialEq, Eq)]
pub struct IntrospectionRequest<'a> {
    pub upstream: &'a str,
    pub method: &'static str,
    pub path: &'a str,
    pub authority: &'a str,
    pub headers: [(&'static str, &'a str); 4],
    /// `token=<token>&token_type_hint=access_token`, form-encoded.
    pub body: Vec<u8>,
    pub timeout: Duration,
}

impl fmt::Debug for IntrospectionRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The body holds the token and a header the client secret: neither is printed.
        f.debug_struct("IntrospectionRequest")
            .field("upstream", &self.upstream)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Introspector {
    /// The call-out that introspects `token` (raw bytes as the request carried them).
    pub fn request(&self, token: &[u8]) -> IntrospectionRequest<'_> {
        let mut body = b"token=".to_vec();
        body.extend_from_slice(form_encode(token).as_bytes());
        body.extend_from_slice(b"&token_type_hint=access_token");
        IntrospectionRequest {
            upstream: &self.upstream,
            method: "POST",
            path: &self.path,
            authority: &self.authority,
            headers: [
                (":scheme", self.scheme),
                ("authorization", &self.authorization),
                ("content-type", "application/x-www-form-urlencoded"),
                ("accept", "application/json"),
            ],
            body,
            timeout: self.timeout,
        }
    }

    /// The answer body size to read at most (pass as `max_body` to the kit's
    /// `http_call_response`).
    pub fn max_response_bytes(&self) -> usize {
        self.max_response_bytes
    }

    pub fn fail_mode(&self) -> FailMode {
        self.fail_mode
    }

    /// How long a call may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// An empty cache sized by this configuration.
    pub fn new_cache(&self) -> IntrospectionCache {
        IntrospectionCache::new(self.cache_limits)
    }

    /// Reads the endpoint's answer. `status` is the call-out's `:status` (`None` when the call
    /// failed without a response), `body` what was read of the body, `body_size` the size the
    /// host announced, `now_ms` the host clock in Unix milliseconds.
    pub fn parse_response(
        &self,
        status: Option<u16>,
        body: &[u8],
        body_size: usize,
        now_ms: u64,
    ) -> Result<Introspected, IntrospectionError> {
        let status = status.ok_or(IntrospectionError::Unreachable)?;
        if status != 200 {
            return Err(IntrospectionError::Status(status));
        }
        let size = body_size.max(body.len());
        if size > self.max_response_bytes {
            return Err(IntrospectionError::TooLarge {
                size,
                max: self.max_response_bytes,
            });
        }
        let value: Value = serde_json::from_slice(body).map_err(|_| IntrospectionError::NotJson)?;
        let Value::Object(fields) = &value else {
            return Err(IntrospectionError::NotAnObject);
        };
        match fields.get("active") {
            None => return Err(IntrospectionError::MissingActive),
            Some(Value::Bool(false)) => return Ok(Introspected::Inactive(Inactive::NotActive)),
            Some(Value::Bool(true)) => {}
            Some(_) => return Err(IntrospectionError::InvalidField("active")),
        }
        let string = |name: &'static str| match fields.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(IntrospectionError::InvalidField(name)),
        };
        let seconds = |name: &'static str| match fields.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                .map(Some)
                .ok_or(IntrospectionError::InvalidField(name)),
            Some(_) => Err(IntrospectionError::InvalidField(name)),
        };
        let exp = seconds("exp")?;
        let nbf = seconds("nbf")?;
        let iss = string("iss")?;
        let audiences = match fields.get("aud") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or(IntrospectionError::InvalidField("aud"))?,
            Some(_) => return Err(IntrospectionError::InvalidField("aud")),
        };
        let info = TokenInfo {
            sub: string("sub")?,
            iss: iss.clone(),
            scope: string("scope")?,
            exp,
            claims: value.clone(),
        };
        let now_secs = now_ms / 1000;
        if exp.is_some_and(|exp| exp.saturating_mul(1000) <= now_ms) {
            return Ok(Introspected::Inactive(Inactive::Expired));
        }
        if nbf.is_some_and(|nbf| nbf > now_secs) {
            return Ok(Introspected::Inactive(Inactive::NotYetValid));
        }
        if let Some(expected) = &self.issuer {
            if iss.as_ref() != Some(expected) {
                return Ok(Introspected::Inactive(Inactive::WrongIssuer));
            }
        }
        if !self.audiences.is_empty() && !audiences.iter().any(|a| self.audiences.contains(a)) {
            return Ok(Introspected::Inactive(Inactive::WrongAudience));
        }
        Ok(Introspected::Active(info))
    }
}

/// What the endpoint said about a token.
#[derive(Debug, Clone, PartialEq)]
pub enum Introspected {
    Active(TokenInfo),
    /// Refuse with 401 `invalid_token`.
    Inactive(Inactive),
}

/// Why a token is not accepted although the endpoint answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Inactive {
    #[error("token is not active")]
    NotActive,
    #[error("token has expired")]
    Expired,
    #[error("token is not yet valid")]
    NotYetValid,
    #[error("token has the wrong issuer")]
    WrongIssuer,
    #[error("token has the wrong audience")]
    WrongAudience,
}

impl Inactive {
    /// A stable short reason for logs and metrics.
    pub const fn reason(self) -> &'static str {
        match self {
            Self::NotActive => "token_inactive",
            Self::Expired => "token_expired",
            Self::NotYetValid => "token_not_yet_valid",
            Self::WrongIssuer => "token_wrong_issuer",
            Self::WrongAudience => "token_wrong_audience",
        }
    }
}

/// An active token, as introspected.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenInfo {
    pub sub: Option<String>,
    /// The issuer the endpoint names (checked against `issuer` when one is configured).
    pub iss: Option<String>,
    /// Space-separated scopes.
    pub scope: Option<String>,
    /// Expiry, Unix seconds.
    pub exp: Option<u64>,
    /// The whole answer object, for rules' claim and scope checks
    /// ([`Requirement::authorize`](crate::rules::Requirement::authorize)).
    pub claims: Value,
}

impl TokenInfo {
    /// Who the token stands for: `sub` alone. `username` and `client_id` name other things
    /// (RFC 7662 §2.2): a client whose id equals a user's `sub` must not become that user.
    pub fn subject(&self) -> Option<&str> {
        self.sub.as_deref()
    }
}

/// Why the endpoint's answer could not be used: 503, unless the endpoint is down
/// ([`IntrospectionError::is_outage`]) and the [`FailMode`] is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IntrospectionError {
    #[error("introspection endpoint unreachable")]
    Unreachable,
    #[error("introspection endpoint answered with status {0}")]
    Status(u16),
    #[error("introspection answer of {size} bytes exceeds {max}")]
    TooLarge { size: usize, max: usize },
    #[error("introspection answer is not JSON")]
    NotJson,
    #[error("introspection answer is not a JSON object")]
    NotAnObject,
    #[error("introspection answer has no `active` field")]
    MissingActive,
    #[error("introspection answer has an invalid `{0}`")]
    InvalidField(&'static str),
}

impl IntrospectionError {
    /// Whether the endpoint is down (no answer, or a 5xx), the only failure `fail_mode: open`
    /// lets through. Any other answer is one about the request: a client must not be able to
    /// pick a token that a WAF or the IdP answers with a 400, 413 or an HTML page and so pass
    /// unauthenticated.
    pub fn is_outage(&self) -> bool {
        match self {
            Self::Unreachable => true,
            Self::Status(status) => (500..600).contains(status),
            _ => false,
        }
    }
}

impl IntrospectionError {
    /// A stable short reason for logs and metrics.
    pub const fn reason(self) -> &'static str {
        match self {
            Self::Unreachable => "introspection_unreachable",
            Self::Status(_) => "introspection_status",
            Self::TooLarge { .. } => "introspection_too_large",
            Self::NotJson | Self::NotAnObject => "introspection_not_json",
            Self::MissingActive | Self::InvalidField(_) => "introspection_invalid",
        }
    }

    /// The status to refuse with under `fail_mode: closed`.
    pub const fn status(self) -> u16 {
        503
    }
}

/// The cache key for a token: its SHA-256, so the cache never holds the token.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenKey([u8; 32]);

impl TokenKey {
    pub fn of(token: &[u8]) -> Self {
        Self(Sha256::digest(token).into())
    }
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CacheLimits {
    ttl_ms: u64,
    negative_ttl_ms: u64,
    entries: usize,
    negative_entries: usize,
}

/// A cached answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CachedAnswer<'c> {
    Active(&'c TokenInfo),
    /// Refuse with 401 `invalid_token`, as the endpoint said (or the token failed our checks).
    Inactive(Inactive),
}

/// Introspection answers per worker, bounded in count, each bounded in time.
#[derive(Debug)]
pub struct IntrospectionCache {
    limits: CacheLimits,
    active: BoundedMap<TokenInfo>,
    inactive: BoundedMap<Inactive>,
}

impl IntrospectionCache {
    fn new(limits: CacheLimits) -> Self {
        Self {
            limits,
            active: BoundedMap::new(limits.entries),
            inactive: BoundedMap::new(limits.negative_entries),
        }
    }

    /// The answer for a token still fresh at `now_ms`; an expired one is dropped.
    pub fn get(&mut self, key: &TokenKey, now_ms: u64) -> Option<CachedAnswer<'_>> {
        if let Some(inactive) = self.inactive.get(key, now_ms) {
            return Some(CachedAnswer::Inactive(*inactive));
        }
        self.active.get(key, now_ms).map(CachedAnswer::Active)
    }

    /// Remembers an answer received at `now_ms`: an active one until the earlier of the TTL and
    /// the token's `exp`, an inactive one for the negative TTL.
    pub fn insert(&mut self, key: TokenKey, answer: &Introspected, now_ms: u64) {
        match answer {
            Introspected::Active(info) => {
                let mut expires = now_ms.saturating_add(self.limits.ttl_ms);
                if let Some(exp) = info.exp {
                    expires = expires.min(exp.saturating_mul(1000));
                }
                if expires > now_ms {
                    self.inactive.remove(&key);
                    self.active.insert(key, info.clone(), expires);
                }
            }
            Introspected::Inactive(reason) => {
                let expires = now_ms.saturating_add(self.limits.negative_ttl_ms);
                if expires > now_ms {
                    self.active.remove(&key);
                    self.inactive.insert(key, *reason, expires);
                }
            }
        }
    }

    /// Entries held: (active, inactive), expired ones included until touched or evicted.
    pub fn len(&self) -> (usize, usize) {
        (self.active.entries.len(), self.inactive.entries.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }
}

#[derive(Debug)]
struct Entry<V> {
    value: V,
    expires_ms: u64,
    /// Insertion number, to tell a live entry from a stale place in `order`.
    seq: u64,
}

/// A map holding at most `capacity` entries, evicting the oldest inserted.
#[derive(Debug)]
struct BoundedMap<V> {
    capacity: usize,
    entries: HashMap<TokenKey, Entry<V>>,
    order: VecDeque<(TokenKey, u64)>,
    next_seq: u64,
}

impl<V> BoundedMap<V> {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
        }
    }

    fn get(&mut self, key: &TokenKey, now_ms: u64) -> Option<&V> {
        let fresh = self.entries.get(key).map(|e| e.expires_ms > now_ms)?;
        if !fresh {
            self.entries.remove(key);
            return None;
        }
        self.entries.get(key).map(|e| &e.value)
    }

    fn remove(&mut self, key: &TokenKey) {
        self.entries.remove(key);
    }

    fn insert(&mut self, key: TokenKey, value: V, expires_ms: u64) {
        if self.capacity == 0 {
            return;
        }
        if !self.entries.contains_key(&key) {
            while self.entries.len() >= self.capacity {
                let Some((oldest, seq)) = self.order.pop_front() else {
                    break;
                };
                if self.entries.get(&oldest).is_some_and(|e| e.seq == seq) {
                    self.entries.remove(&oldest);
                }
            }
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.entries.insert(
            key,
            Entry {
                value,
                expires_ms,
                seq,
            },
        );
        self.order.push_back((key, seq));
        // Re-inserted and removed keys leave stale places behind: drop them before the queue
        // outgrows the map.
        if self.order.len() > self.capacity.saturating_mul(2).saturating_add(16) {
            let entries = &self.entries;
            self.order
                .retain(|(k, s)| entries.get(k).is_some_and(|e| e.seq == *s));
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use serde_json::json;

    const NOW_MS: u64 = 1_700_000_000_000;
    const NOW: u64 = NOW_MS / 1000;

    fn config(extra: &str) -> IntrospectionConfig {
        let json = format!(
            r#"{{"upstream":"outbound|443||idp.example.com","authority":"idp.example.com",
                "path":"/oauth2/introspect","client_id":"gateway","client_secret":"s3cr:t"{extra}}}"#
        );
        let config: IntrospectionConfig = serde_json::from_str(&json).unwrap();
        let mut problems = Problems::default();
        config.validate(&mut problems);
        assert!(problems.is_empty(), "{:?}", problems.into_result());
        config
    }

    fn introspector(extra: &str) -> Introspector {
        config(extra).compile()
    }

    fn parse(i: &Introspector, body: &Value) -> Result<Introspected, IntrospectionError> {
        let body = serde_json::to_vec(body).unwrap();
        i.parse_response(Some(200), &body, body.len(), NOW_MS)
    }

    #[test]
    fn defaults() {
        let c = config("");
        assert_eq!(c.scheme, Scheme::Https);
        assert_eq!(c.timeout, ConfigDuration::from_secs(5));
        assert_eq!(c.cache_ttl, ConfigDuration::from_secs(300));
        assert_eq!(c.negative_cache_ttl, ConfigDuration::from_secs(10));
        assert_eq!(c.cache_entries, 10_000);
        assert_eq!(c.max_response_bytes, 16 * 1024);
        assert_eq!(c.fail_mode, FailMode::Closed);
    }

    #[test]
    fn the_call_out_request() {
        let i = introspector("");
        let request = i.request(b"abc+/= \xff&x");
        assert_eq!(request.upstream, "outbound|443||idp.example.com");
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/oauth2/introspect");
        assert_eq!(request.authority, "idp.example.com");
        assert_eq!(request.timeout, Duration::from_secs(5));
        assert_eq!(
            request.headers,
            [
                (":scheme", "https"),
                // base64("gateway:s3cr%3At"): the secret is form-encoded first (RFC 6749 §2.3.1).
                ("authorization", "Basic Z2F0ZXdheTpzM2NyJTNBdA=="),
                ("content-type", "application/x-www-form-urlencoded"),
                ("accept", "application/json"),
            ]
        );
        assert_eq!(
            request.body,
            b"token=abc%2B%2F%3D+%FF%26x&token_type_hint=access_token"
        );
        let shown = format!("{request:?}");
        assert!(
            !shown.contains("abc") && !shown.contains("Basic"),
            "{shown}"
        );
        let plain = introspector(r#","scheme":"http""#);
        assert_eq!(plain.request(b"t").headers[0], (":scheme", "http"));
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, output) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(input.as_bytes()), output);
        }
        assert_eq!(base64_encode(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn an_active_answer() {
        let i = introspector(r#","issuer":"https://idp","audiences":["api"]"#);
        let answer = json!({"active":true,"sub":"u1","client_id":"app","scope":"read write",
            "exp":NOW + 60,"nbf":NOW - 1,"iss":"https://idp","aud":["other","api"],"tier":"gold"});
        let Introspected::Active(info) = parse(&i, &answer).unwrap() else {
            panic!("expected active");
        };
        assert_eq!(info.subject(), Some("u1"));
        assert_eq!(info.scope.as_deref(), Some("read write"));
        assert_eq!(info.exp, Some(NOW + 60));
        assert_eq!(info.claims["tier"], "gold");
    }

    #[test]
    fn only_sub_names_the_subject() {
        let i = introspector("");
        let Ok(Introspected::Active(info)) = parse(
            &i,
            &json!({"active":true,"username":"ann","client_id":"svc"}),
        ) else {
            panic!()
        };
        assert_eq!(info.subject(), None);
        assert_eq!(info.exp, None);
        assert_eq!(info.claims["client_id"], "svc");
    }

    #[test]
    fn inactive_answers() {
        let i = introspector(r#","issuer":"https://idp","audiences":["api"]"#);
        let ok = json!({"active":true,"iss":"https://idp","aud":"api"});
        assert!(matches!(parse(&i, &ok), Ok(Introspected::Active(_))));
        let cases = [
            (json!({"active":false}), Inactive::NotActive),
            (
                json!({"active":true,"iss":"https://idp","aud":"api","exp":NOW}),
                Inactive::Expired,
            ),
            (
                json!({"active":true,"iss":"https://idp","aud":"api","nbf":NOW + 10}),
                Inactive::NotYetValid,
            ),
            (
                json!({"active":true,"iss":"https://evil","aud":"api"}),
                Inactive::WrongIssuer,
            ),
            (json!({"active":true,"aud":"api"}), Inactive::WrongIssuer),
            (
                json!({"active":true,"iss":"https://idp","aud":["x"]}),
                Inactive::WrongAudience,
            ),
            (
                json!({"active":true,"iss":"https://idp"}),
                Inactive::WrongAudience,
            ),
        ];
        for (answer, reason) in cases {
            assert_eq!(
                parse(&i, &answer),
                Ok(Introspected::Inactive(reason)),
                "{answer}"
            );
        }
        assert_eq!(Inactive::Expired.reason(), "token_expired");
    }

    #[test]
    fn unusable_answers_are_precise_errors() {
        let i = introspector("");
        assert_eq!(
            i.parse_response(None, b"", 0, NOW_MS),
            Err(IntrospectionError::Unreachable)
        );
        assert_eq!(
            i.parse_response(Some(401), b"{}", 2, NOW_MS),
            Err(IntrospectionError::Status(401))
        );
        assert_eq!(
            i.parse_response(Some(200), b"{\"active\":true}", 20_000, NOW_MS),
            Err(IntrospectionError::TooLarge {
                size: 20_000,
                max: 16 * 1024
            })
        );
        assert_eq!(
            i.parse_response(Some(200), b"<html>", 6, NOW_MS),
            Err(IntrospectionError::NotJson)
        );
        assert_eq!(
            i.parse_response(Some(200), b"[true]", 6, NOW_MS),
            Err(IntrospectionError::NotAnObject)
        );
        for (answer, error) in [
            (json!({}), IntrospectionError::MissingActive),
            (
                json!({"active":"true"}),
                IntrospectionError::InvalidField("active"),
            ),
            (
                json!({"active":true,"exp":"soon"}),
                IntrospectionError::InvalidField("exp"),
            ),
            (
                json!({"active":true,"exp":-5}),
                IntrospectionError::InvalidField("exp"),
            ),
            (
                json!({"active":true,"aud":[1]}),
                IntrospectionError::InvalidField("aud"),
            ),
            (
                json!({"active":true,"sub":7}),
                IntrospectionError::InvalidField("sub"),
            ),
            (
                json!({"active":true,"scope":["a"]}),
                IntrospectionError::InvalidField("scope"),
            ),
        ] {
            assert_eq!(parse(&i, &answer), Err(error), "{answer}");
        }
        assert_eq!(IntrospectionError::Status(500).status(), 503);
        assert_eq!(
            IntrospectionError::Status(500).to_string(),
            "introspection endpoint answered with status 500"
        );
        assert_eq!(
            IntrospectionError::NotJson.reason(),
            "introspection_not_json"
        );
    }

    #[test]
    fn cache_keeps_active_answers_until_ttl_or_exp() {
        let i = introspector(r#","cache_ttl":"60s""#);
        let mut cache = i.new_cache();
        let long = TokenKey::of(b"long-lived");
        let short = TokenKey::of(b"short-lived");
        let answer = |exp: u64| parse(&i, &json!({"active":true,"sub":"u","exp":exp})).unwrap();
        cache.insert(long, &answer(NOW + 3600), NOW_MS);
        cache.insert(short, &answer(NOW + 10), NOW_MS);
        assert!(matches!(
            cache.get(&long, NOW_MS + 59_999),
            Some(CachedAnswer::Active(_))
        ));
        // The TTL caps the long-lived token...
        assert_eq!(cache.get(&long, NOW_MS + 60_000), None);
        // ...and `exp` the short-lived one, before the TTL.
        assert!(matches!(
            cache.get(&short, NOW_MS + 9_999),
            Some(CachedAnswer::Active(_))
        ));
        assert_eq!(cache.get(&short, NOW_MS + 10_000), None);
        assert!(cache.is_empty());
    }

    #[test]
    fn cache_keeps_inactive_answers_for_the_negative_ttl() {
        let i = introspector(r#","negative_cache_ttl":"2s""#);
        let mut cache = i.new_cache();
        let key = TokenKey::of(b"bad");
        cache.insert(key, &Introspected::Inactive(Inactive::NotActive), NOW_MS);
        assert_eq!(
            cache.get(&key, NOW_MS + 1_999),
            Some(CachedAnswer::Inactive(Inactive::NotActive))
        );
        assert_eq!(cache.get(&key, NOW_MS + 2_000), None);
        assert_eq!(cache.get(&TokenKey::of(b"other"), NOW_MS), None);
    }

    #[test]
    fn a_new_answer_replaces_the_other_kind() {
        let i = introspector("");
        let mut cache = i.new_cache();
        let key = TokenKey::of(b"t");
        cache.insert(key, &Introspected::Inactive(Inactive::NotActive), NOW_MS);
        let active = parse(&i, &json!({"active":true})).unwrap();
        cache.insert(key, &active, NOW_MS);
        assert!(matches!(
            cache.get(&key, NOW_MS),
            Some(CachedAnswer::Active(_))
        ));
        assert_eq!(cache.len(), (1, 0));
    }

    #[test]
    fn cache_is_bounded_and_evicts_the_oldest() {
        let i = introspector(r#","cache_entries":3,"negative_cache_entries":2"#);
        let mut cache = i.new_cache();
        let active = parse(&i, &json!({"active":true})).unwrap();
        let keys: Vec<_> = (0..5u8).map(|n| TokenKey::of(&[n])).collect();
        for key in &keys {
            cache.insert(*key, &active, NOW_MS);
        }
        assert_eq!(cache.len(), (3, 0));
        assert_eq!(cache.get(&keys[0], NOW_MS), None);
        assert_eq!(cache.get(&keys[1], NOW_MS), None);
        assert!(cache.get(&keys[4], NOW_MS).is_some());
        // Re-inserting a key many times neither grows the map nor lets the order queue grow
        // without bound.
        for _ in 0..100 {
            cache.insert(keys[4], &active, NOW_MS);
        }
        assert_eq!(cache.len(), (3, 0));
        assert!(cache.active.order.len() <= 3 * 2 + 16 + 1);
        assert!(cache.get(&keys[2], NOW_MS).is_some());
        let inactive = Introspected::Inactive(Inactive::NotActive);
        for key in &keys {
            cache.insert(*key, &inactive, NOW_MS);
        }
        assert_eq!(cache.len().1, 2);
    }

    #[test]
    fn a_zero_ttl_or_size_disables_caching() {
        let i = introspector(r#","cache_ttl":"0s","negative_cache_entries":0"#);
        let mut cache = i.new_cache();
        let key = TokenKey::of(b"t");
        cache.insert(key, &parse(&i, &json!({"active":true})).unwrap(), NOW_MS);
        cache.insert(key, &Introspected::Inactive(Inactive::NotActive), NOW_MS);
        assert!(cache.is_empty());
    }

    #[test]
    fn bad_configs_are_refused_without_showing_the_secret() {
        let config: IntrospectionConfig = serde_json::from_str(
            r#"{"upstream":"a b","authority":"idp:x","path":"introspect","client_id":"",
                "client_secret":"","timeout":"2m","issuer":"","audiences":[""],
                "cache_ttl":"2h","negative_cache_ttl":"10m","cache_entries":2000000,
                "max_response_bytes":10}"#,
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
                "upstream",
                "authority",
                "path",
                "client_id",
                "client_secret",
                "timeout",
                "issuer",
                "audiences",
                "cache_ttl",
                "negative_cache_ttl",
                "cache_entries",
                "max_response_bytes"
            ]
        );
        let c = config_secret_debug();
        assert!(!c.contains("s3cr"), "{c}");
        let err = serde_json::from_str::<IntrospectionConfig>(
            r#"{"upstream":"u","authority":"a","path":"/","client_id":"c","client_secret":"s","fail":"open"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("unknown field `fail`"), "{err}");
    }

    fn config_secret_debug() -> String {
        let c = config("");
        format!("{c:?} {:?}", c.compile())
    }

    #[test]
    fn authorities() {
        for good in [
            "idp.example.com",
            "idp:8443",
            "127.0.0.1:9000",
            "[::1]:443",
            "[::1]",
        ] {
            assert!(is_authority(good), "{good}");
        }
        for bad in ["", "idp:", "idp:99999", "a b", "idp/x", ":80"] {
            assert!(!is_authority(bad), "{bad}");
        }
    }
}
