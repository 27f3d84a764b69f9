//! The decision for one request, host-free. With `rules`: normalise the path, let the first
//! matching rule decide (anonymous, deny, or require a credential). Without: every request
//! needs a credential of any configured kind. Then find the credential the requirement accepts
//! (an API key, a JWT routed to its provider by `iss` and verified with that provider's prepared
//! keys, or an opaque bearer token to introspect), check the rule's claims and scopes, and say
//! which headers to strip and set. Fails closed: anything not proven valid is a [`Rejection`].

use std::borrow::Cow;
use std::fmt;
use std::rc::Rc;

use palisade_kit::config::Problems;
use palisade_kit::header_pairs::{get, ClientHost, Edit};
use palisade_kit::identity;
use palisade_kit::store::SharedStore;
use serde_json::Value;

use crate::api_keys::{ApiKeyOutcome, ApiKeys};
use crate::claims::{self, TimeRules, TokenTimes};
use crate::config::{Algorithm, AuthConfig, ClaimToHeader, JwksSource, TokenLocation};
use crate::introspection::{
    FailMode, Inactive, IntrospectionError, Introspector, TokenInfo, TokenKey,
};
use crate::jwks::{KeyId, KeySet};
use crate::jwt::{self, Claims, Decoded};
use crate::path::{PathDisposition, PathNormalizer};
use crate::rejection::Rejection;
use crate::remote::RemoteJwks;
use crate::rules::{Credential, Refusal, RequestFacts, Requirement, RuleDecision, Rules};
use crate::signature::HmacSecret;
use crate::token_location::{self, Repeated};
use crate::token_memo::{TokenMemo, Verified};
use crate::verified::{ProviderTag, TokenDigest, VerifiedCache};

type Fields<'a> = [(&'a [u8], &'a [u8])];

/// The `x-palisade-auth-provider` value for requests an API key authenticated.
pub const API_KEY_PROVIDER: &str = "api_key";
/// The `x-palisade-auth-provider` value for requests an introspected token authenticated.
pub const INTROSPECTION_PROVIDER: &str = "introspection";

/// A provider, compiled.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    issuer: String,
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    time: TimeRules,
    /// Indexes into [`Authenticator::locations`].
    locations: Vec<usize>,
    forward_token: bool,
    claims_to_headers: Vec<ClaimToHeader>,
    keys: Option<Rc<KeySet>>,
    remote: Option<RemoteJwks>,
    hmac: Option<HmacSecret>,
    /// Names this provider in the verified-token cache.
    tag: ProviderTag,
}

impl Provider {
    /// The remote JWKS, when the keys are fetched rather than inline.
    pub fn remote(&self) -> Option<&RemoteJwks> {
        self.remote.as_ref()
    }
}

/// Where a provider's public keys are read at request time.
pub trait KeySource {
    /// The provider's current key set; `None` when it has none yet.
    fn keys(&self, provider: &Provider) -> Option<Rc<KeySet>>;

    /// Is there a verified-token cache to ask (then tokens are hashed)?
    fn caches_signatures(&self) -> bool {
        false
    }

    /// Which of `provider`'s keys verified this token's signature before, still within its
    /// `exp` at `now` (seconds)?
    fn signature_known(
        &self,
        _provider: &Provider,
        _token: &TokenDigest,
        _now: u64,
    ) -> Option<KeyId> {
        None
    }

    /// Records a signature `provider`'s key `key` verified, good until `expires` (seconds).
    fn remember_signature(
        &self,
        _provider: &Provider,
        _token: &TokenDigest,
        _key: KeyId,
        _expires: u64,
    ) {
    }
}

/// Keys written into the configuration.
#[derive(Debug, Default, Clone, Copy)]
pub struct InlineKeys;

impl KeySource for InlineKeys {
    fn keys(&self, provider: &Provider) -> Option<Rc<KeySet>> {
        provider.keys.clone()
    }
}

/// Inline keys, or a remote JWKS's keys as this worker holds them (or the shared store does)
/// at `now_ms`. Never fetches: the adapter decides that from the verdict.
#[derive(Debug, Clone, Copy)]
pub struct StoredKeys<'s, S> {
    pub store: &'s S,
    pub now_ms: u64,
    /// The verified-token cache, when configured ([`Authenticator::verified_cache`]).
    pub verified: Option<VerifiedCache>,
}

impl<S: SharedStore> KeySource for StoredKeys<'_, S> {
    fn keys(&self, provider: &Provider) -> Option<Rc<KeySet>> {
        match &provider.remote {
            Some(remote) => remote.keys(self.store, self.now_ms),
            None => provider.keys.clone(),
        }
    }

    fn caches_signatures(&self) -> bool {
        self.verified.is_some()
    }

    fn signature_known(&self, provider: &Provider, token: &TokenDigest, now: u64) -> Option<KeyId> {
        self.verified?.known(self.store, provider.tag, token, now)
    }

    fn remember_signature(
        &self,
        provider: &Provider,
        token: &TokenDigest,
        key: KeyId,
        expires: u64,
    ) {
        if let Some(cache) = self.verified {
            cache.remember(self.store, provider.tag, token, key, expires);
        }
    }
}

/// Which credential vouched for a request, or failed to: metrics are counted by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A JWT of this provider (index into [`Authenticator::providers`]).
    Provider(usize),
    ApiKey,
    Introspection,
    /// No credential got as far as naming one (or the rules refused before any was looked at).
    None,
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// A verified credential: continue with these header edits.
    Allow(Allowed),
    /// No credential needed (no token with `allow_missing`, or an `allow_anonymous` rule):
    /// continue, identity headers stripped.
    Anonymous(Vec<Edit<'static>>),
    /// Refuse.
    Deny {
        source: Source,
        rejection: Rejection,
    },
    /// Escaped slashes were decoded under `unescape_and_redirect`: answer 307 with this
    /// `Location`.
    Redirect(Vec<u8>),
    /// An opaque bearer token to introspect: ask the endpoint (unless cached), then
    /// [`Authenticator::introspected`].
    Introspect(PendingIntrospection),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Allowed {
    pub source: Source,
    /// Made first: the identity headers the client sent, removed (for an API key or an
    /// introspected token, every edit).
    first: Vec<Edit<'static>>,
    /// Then a verified token's identity headers, built once per token and shared with the
    /// worker's memo, so a repeated token costs no copy of them.
    identity: Option<Rc<[Edit<'static>]>>,
    /// Last: the token taken out of the request, the path rewritten.
    after: Vec<Edit<'static>>,
    /// The credential's expiry (seconds since the epoch, leeway included), bounding any
    /// caching.
    pub expires: Option<u64>,
}

impl Allowed {
    fn new(source: Source, edits: Vec<Edit<'static>>, expires: Option<u64>) -> Self {
        Allowed {
            source,
            first: edits,
            identity: None,
            after: Vec::new(),
            expires,
        }
    }

    /// Every header edit, in the order the host must make them.
    pub fn edits(&self) -> Vec<Edit<'_>> {
        self.first
            .iter()
            .chain(self.identity.iter().flat_map(|identity| identity.iter()))
            .chain(&self.after)
            .map(Edit::borrowed)
            .collect()
    }
}

/// A request waiting for an introspection answer. Holds the token (to send it), never prints it.
#[derive(Clone, PartialEq)]
pub struct PendingIntrospection {
    token: Vec<u8>,
    /// The cache key: the token's SHA-256.
    pub key: TokenKey,
    requirement: Requirement,
    /// Identity headers stripped, path normalised: what an anonymous pass (fail open) applies.
    strip: Vec<Edit<'static>>,
    /// Takes the token out of the request (empty when it is forwarded).
    removal: Vec<Edit<'static>>,
}

impl fmt::Debug for PendingIntrospection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingIntrospection")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl PendingIntrospection {
    /// The token, for the call-out body.
    pub fn token(&self) -> &[u8] {
        &self.token
    }
}

/// What introspection said about a pending token, fresh or from the cache.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Answer<'a> {
    Active(&'a TokenInfo),
    Inactive(Inactive),
    Failed(IntrospectionError),
}

/// Rules and the path they match on.
#[derive(Debug)]
struct Policy {
    rules: Rules,
    normalizer: PathNormalizer,
}

/// The compiled configuration.
#[derive(Debug)]
pub struct Authenticator {
    providers: Vec<Provider>,
    /// Every provider's locations, each once, in configuration order (and the bearer header
    /// when introspection is configured).
    locations: Vec<TokenLocation>,
    max_token_bytes: usize,
    allow_missing: bool,
    /// Claim headers (lower case) removed from every request, besides `x-palisade-*`.
    claim_headers: Vec<String>,
    api_keys: Option<ApiKeys>,
    introspector: Option<Introspector>,
    /// Index into `locations` of `authorization: Bearer`, where opaque tokens are read.
    bearer: Option<usize>,
    introspection_forwards: bool,
    policy: Option<Policy>,
    /// Without rules: any configured credential, no claims.
    default_requirement: Requirement,
    verified: Option<VerifiedCache>,
    /// The worker's memo in front of it (on with it).
    memo: Option<TokenMemo>,
    /// Where the request map holds the Host that `hosts` rules match (Kong: `host`). Asked per
    /// request: the host can tell cheaply only then (in the root context Kong logs an error).
    client_host: fn() -> ClientHost,
}

impl Authenticator {
    /// Compiles a validated configuration: key sets parsed and prepared here, once.
    pub fn build(config: &AuthConfig, problems: &mut Problems) -> Self {
        let mut locations: Vec<TokenLocation> = Vec::new();
        let mut claim_headers: Vec<String> = Vec::new();
        let mut providers = Vec::with_capacity(config.providers.len());
        let index_of =
            |locations: &mut Vec<TokenLocation>, location: &TokenLocation| match locations
                .iter()
                .position(|l| l.reads_same_as(location))
            {
                Some(index) => index,
                None => {
                    locations.push(location.clone());
                    locations.len() - 1
                }
            };
        for (i, provider) in config.providers.iter().enumerate() {
            let indexes = provider
                .token_locations
                .iter()
                .map(|location| index_of(&mut locations, location))
                .collect();
            for mapping in &provider.claims_to_headers {
                if !claim_headers.contains(&mapping.header) {
                    claim_headers.push(mapping.header.clone());
                }
            }
            let keys = match &provider.jwks {
                Some(JwksSource::Inline(document)) => match KeySet::from_value(document) {
                    Ok((set, _)) => Some(Rc::new(set)),
                    Err(err) => {
                        problems.push_at(&format!("providers[{i}].jwks.inline"), err.to_string());
                        None
                    }
                },
                Some(JwksSource::Remote(_)) | None => None,
            };
            let remote = match &provider.jwks {
                Some(JwksSource::Remote(remote)) => Some(remote.compile(&provider.name)),
                _ => None,
            };
            providers.push(Provider {
                name: provider.name.clone(),
                issuer: provider.issuer.clone(),
                audiences: provider.audiences.clone(),
                algorithms: provider.algorithms.clone(),
                time: TimeRules {
                    leeway_secs: provider.clock_leeway.get().as_secs(),
                    require_exp: provider.require_expiration,
                },
                locations: indexes,
                forward_token: provider.forward_token,
                claims_to_headers: provider.claims_to_headers.clone(),
                keys,
                remote,
                hmac: provider.hmac_secret_bytes().map(HmacSecret::new),
                tag: ProviderTag::of(&provider.name, &provider.issuer),
            });
        }
        let bearer = config.introspection.as_ref().map(|_| {
            index_of(
                &mut locations,
                &TokenLocation::Header {
                    name: "authorization".to_owned(),
                    prefix: "Bearer ".to_owned(),
                },
            )
        });
        let policy = config
            .rules_config()
            .and_then(|rules| match rules.compile() {
                Ok(rules) => Some(Policy {
                    rules,
                    normalizer: config.path_normalization.unwrap_or_default().compile(),
                }),
                Err(err) => {
                    problems.push_at(&format!("rules[{}]", err.index), err.reason);
                    None
                }
            });
        let default_requirement = Requirement::accepting(
            providers.iter().map(|p| p.name.clone()).collect(),
            config.api_keys.is_some(),
            config.introspection.is_some(),
        );
        Self {
            providers,
            locations,
            max_token_bytes: config.max_token_bytes,
            allow_missing: config.allow_missing,
            claim_headers,
            api_keys: config.api_keys.as_ref().map(|c| c.compile()),
            introspector: config.introspection.as_ref().map(|c| c.compile()),
            bearer,
            introspection_forwards: config
                .introspection
                .as_ref()
                .is_some_and(|c| c.forward_token),
            policy,
            default_requirement,
            verified: VerifiedCache::new(config.verified_token_cache_entries),
            memo: TokenMemo::new(config.verified_token_cache_entries),
            client_host: ClientHost::default,
        }
    }

    /// Where the host's request maps hold the client's Host (`host::client_host`).
    pub fn set_client_host(&mut self, client_host: fn() -> ClientHost) {
        self.client_host = client_host;
    }

    /// The verified-token cache, when `verified_token_cache_entries` is not 0.
    pub fn verified_cache(&self) -> Option<VerifiedCache> {
        self.verified
    }

    pub fn providers(&self) -> &[Provider] {
        &self.providers
    }

    pub fn introspector(&self) -> Option<&Introspector> {
        self.introspector.as_ref()
    }

    /// Does a rule match on the mTLS peer principal? Only then need the adapter read it.
    pub fn uses_principals(&self) -> bool {
        self.policy
            .as_ref()
            .is_some_and(|policy| policy.rules.uses_principals())
    }

    /// Decides for a request's headers at `now` (seconds since the epoch), without an mTLS
    /// peer.
    pub fn authenticate(&self, headers: &Fields<'_>, now: u64, keys: &impl KeySource) -> Verdict {
        self.decide(headers, None, now, keys)
    }

    /// Decides for a request's headers and verified mTLS peer principal (SPIFFE URI SAN) at
    /// `now` (seconds since the epoch).
    pub fn decide(
        &self,
        headers: &Fields<'_>,
        peer: Option<&[u8]>,
        now: u64,
        keys: &impl KeySource,
    ) -> Verdict {
        let raw_path = get(headers, ":path");
        let Some(policy) = &self.policy else {
            return self.require(
                &self.default_requirement,
                headers,
                raw_path,
                false,
                now,
                keys,
            );
        };
        let normalized = match policy.normalizer.normalize(raw_path.unwrap_or_default()) {
            Ok(normalized) => normalized,
            Err(rejection) => return deny(Source::None, Rejection::Path(rejection)),
        };
        if normalized.disposition == PathDisposition::Redirect {
            return Verdict::Redirect(normalized.request_path());
        }
        let rewrite = normalized.disposition == PathDisposition::Rewrite;
        let facts = RequestFacts {
            // Asked only when a rule needs it: the first answer costs the host probe a call.
            authority: if policy.rules.uses_hosts() {
                (self.client_host)().get(headers)
            } else {
                None
            },
            path: normalized.rule_path(),
            method: get(headers, ":method").unwrap_or_default(),
            peer_principal: peer,
        };
        match policy.rules.decide(&facts) {
            RuleDecision::AllowAnonymous { .. } => {
                let mut edits = self.strip_identity(headers);
                self.finish_path(&mut edits, raw_path, rewrite, false);
                Verdict::Anonymous(edits)
            }
            RuleDecision::Deny { .. } => deny(Source::None, Rejection::Denied),
            RuleDecision::BadAuthority => deny(Source::None, Rejection::BadAuthority),
            RuleDecision::Require { requirement, .. } => {
                self.require(requirement, headers, raw_path, rewrite, now, keys)
            }
        }
    }

    /// Authenticates with a credential `requirement` accepts, then authorizes.
    fn require(
        &self,
        requirement: &Requirement,
        headers: &Fields<'_>,
        raw_path: Option<&[u8]>,
        rewrite: bool,
        now: u64,
        keys: &impl KeySource,
    ) -> Verdict {
        if let Some(verdict) = self.api_key(requirement, headers, raw_path, rewrite) {
            return verdict;
        }
        let found = self
            .locations
            .iter()
            .enumerate()
            .filter(|(index, _)| self.reads(requirement, *index))
            .find_map(|(index, location)| {
                token_location::find(location, headers).map(|token| (index, token))
            });
        let Some((location, token)) = found else {
            return if self.allow_missing && self.policy.is_none() {
                // Anonymous, so no credential goes on unchecked: not a copy spelled otherwise.
                let mut edits = self.strip_identity(headers);
                edits.extend(self.credential_spellings(headers));
                self.finish_path(&mut edits, raw_path, rewrite, false);
                Verdict::Anonymous(edits)
            } else {
                deny(Source::None, Rejection::Missing)
            };
        };
        let jwt_provider_reads = self.providers.iter().any(|p| {
            p.locations.contains(&location)
                && requirement.accepts(Credential::Jwt { provider: &p.name })
        });
        if !jwt_provider_reads {
            return self.pending(requirement, headers, raw_path, rewrite, location, token);
        }
        // A token this worker saw verified with the provider's current keys: only the checks
        // that depend on the request and the clock are made again.
        let remembered = self.memo.as_ref().and_then(|memo| {
            memo.get(token, now, |index| {
                self.providers.get(index).and_then(|p| keys.keys(p))
            })
        });
        let (verified, from_memo) = match remembered {
            Some(verified) => (verified, true),
            None => match self.verify_token(requirement, location, token, now, keys) {
                TokenCheck::Verified(verified) => (verified, false),
                TokenCheck::Refused(verdict) => return verdict,
                TokenCheck::Introspect => {
                    return self.pending(requirement, headers, raw_path, rewrite, location, token)
                }
            },
        };
        let source = Source::Provider(verified.provider);
        let Some(provider) = self.providers.get(verified.provider) else {
            return deny(source, Rejection::UnknownIssuer);
        };
        if from_memo {
            if let Err(rejection) = reads_here(requirement, provider, location) {
                return deny(source, rejection);
            }
            if let Err(rejection) = verified.times.check(now, provider.time) {
                return deny(source, rejection);
            }
        }
        if let Err(rejection) = authorize(requirement, &verified.claims) {
            return deny(source, rejection);
        }
        let mut after = Vec::new();
        if let Some(location) = self.locations.get(location) {
            match token_location::removals(location, headers, provider.forward_token) {
                Ok(removals) => after.extend(removals),
                Err(Repeated) => return deny(source, Rejection::RepeatedToken),
            }
        }
        self.finish_path(&mut after, raw_path, rewrite, false);
        Verdict::Allow(Allowed {
            source,
            first: self.strip_identity(headers),
            identity: Some(Rc::clone(&verified.identity)),
            after,
            expires: verified.expires,
        })
    }

    /// Decodes `token`, routes it to its provider and verifies it (signature, then `exp`,
    /// `nbf`, `iat` and `aud`); remembers it in the worker's memo when it has an expiry.
    fn verify_token(
        &self,
        requirement: &Requirement,
        location: usize,
        token: &[u8],
        now: u64,
        keys: &impl KeySource,
    ) -> TokenCheck {
        // What is not a JWT of a provider may still be an opaque token to introspect.
        let introspectable = requirement.introspection && self.bearer == Some(location);
        let decoded = match jwt::decode(token, self.max_token_bytes) {
            Ok(decoded) => decoded,
            Err(rejection @ Rejection::TooLarge { .. }) => {
                return TokenCheck::Refused(deny(Source::None, rejection))
            }
            Err(_) if introspectable => return TokenCheck::Introspect,
            Err(rejection) => return TokenCheck::Refused(deny(Source::None, rejection)),
        };
        let index = match self.provider_for(&decoded.claims) {
            Ok(index) => index,
            Err(_) if introspectable => return TokenCheck::Introspect,
            Err(rejection) => return TokenCheck::Refused(deny(Source::None, rejection)),
        };
        let source = Source::Provider(index);
        let Some(provider) = self.providers.get(index) else {
            return TokenCheck::Refused(deny(source, Rejection::UnknownIssuer));
        };
        if let Err(rejection) = reads_here(requirement, provider, location) {
            return TokenCheck::Refused(deny(source, rejection));
        }
        let checked = match verify(provider, &decoded, now, keys) {
            Ok(checked) => checked,
            Err(rejection) => return TokenCheck::Refused(deny(source, rejection)),
        };
        let mut identity = Vec::new();
        self.identity_edits(provider, &decoded.claims, &mut identity);
        let verified = Rc::new(Verified {
            provider: index,
            claims: Value::Object(decoded.claims),
            times: checked.times,
            identity: identity.into(),
            expires: checked.expires,
        });
        if let (Some(memo), Some(_)) = (&self.memo, checked.expires) {
            memo.remember(token, checked.key_set.as_ref(), Rc::clone(&verified));
        }
        TokenCheck::Verified(verified)
    }

    /// Does `requirement` read a token from `locations[index]`?
    fn reads(&self, requirement: &Requirement, index: usize) -> bool {
        (requirement.introspection && self.bearer == Some(index))
            || self.providers.iter().any(|p| {
                p.locations.contains(&index)
                    && requirement.accepts(Credential::Jwt { provider: &p.name })
            })
    }

    /// The API key verdict, when the requirement accepts keys and the request carries one.
    fn api_key(
        &self,
        requirement: &Requirement,
        headers: &Fields<'_>,
        raw_path: Option<&[u8]>,
        rewrite: bool,
    ) -> Option<Verdict> {
        let api_keys = self.api_keys.as_ref().filter(|_| requirement.api_keys)?;
        let query = raw_path.and_then(|path| palisade_kit::query::split_target(path).1);
        let key = match api_keys.authenticate(headers, query) {
            ApiKeyOutcome::Missing => return None,
            ApiKeyOutcome::Invalid(invalid) => {
                return Some(deny(Source::ApiKey, Rejection::ApiKey(invalid)))
            }
            ApiKeyOutcome::Valid(key) => key,
        };
        if requirement.checks_identity() {
            if let Err(rejection) = authorize(requirement, &key.claims()) {
                return Some(deny(Source::ApiKey, rejection));
            }
        }
        let mut edits = self.strip_identity(headers);
        set_identity(&mut edits, API_KEY_PROVIDER, Some(&key.consumer), None);
        // The key's header goes unless forwarded; copies of it spelled otherwise, which nobody
        // checked, always go.
        for name in api_keys.key_headers() {
            let own = (!api_keys.forward()).then(|| Edit::Remove(Cow::Owned(name.to_owned())));
            let spellings = palisade_kit::identity::other_spellings(headers, &[name]);
            for edit in own.into_iter().chain(spellings) {
                if !edits.contains(&edit) {
                    edits.push(edit);
                }
            }
        }
        self.remove_unchecked_tokens(requirement, headers, raw_path, &mut edits);
        self.finish_path(&mut edits, raw_path, rewrite, !api_keys.forward());
        Some(Verdict::Allow(Allowed::new(Source::ApiKey, edits, None)))
    }

    /// Tokens the requirement would also read, beside the key that won: nobody checked them,
    /// and an upstream that trusts the tokens a provider forwards would take a forged one.
    /// A query parameter's removal is left as a `:path` edit for [`Self::finish_path`].
    fn remove_unchecked_tokens(
        &self,
        requirement: &Requirement,
        headers: &Fields<'_>,
        raw_path: Option<&[u8]>,
        edits: &mut Vec<Edit<'static>>,
    ) {
        // Query parameters and cookies are each taken out in one edit, every name at once:
        // edits made one by one from the request would each undo the one before.
        let mut path: Option<Vec<u8>> = None;
        let mut cookies: Vec<&str> = Vec::new();
        for (index, location) in self.locations.iter().enumerate() {
            if !self.reads(requirement, index) || token_location::find(location, headers).is_none()
            {
                continue;
            }
            match location {
                TokenLocation::Query(param) => {
                    if let Some(kept) = path
                        .as_deref()
                        .or(raw_path)
                        .and_then(|p| token_location::without_parameter(p, param))
                    {
                        path = Some(kept);
                    }
                }
                TokenLocation::Cookie(name) => cookies.push(name),
                TokenLocation::Header { .. } => {
                    for edit in
                        token_location::removals(location, headers, false).unwrap_or_default()
                    {
                        if !edits.contains(&edit) {
                            edits.push(edit);
                        }
                    }
                }
            }
        }
        if !cookies.is_empty() {
            edits.push(token_location::cookies_removal(headers, &cookies));
        }
        if let Some(path) = path {
            edits.push(Edit::Set(Cow::Borrowed(":path"), Cow::Owned(path)));
        }
    }

    /// An opaque token to introspect (or, without introspection, a token nobody reads here).
    fn pending(
        &self,
        requirement: &Requirement,
        headers: &Fields<'_>,
        raw_path: Option<&[u8]>,
        rewrite: bool,
        location: usize,
        token: &[u8],
    ) -> Verdict {
        if !requirement.introspection || self.introspector.is_none() {
            return deny(Source::None, Rejection::Missing);
        }
        if token.len() > self.max_token_bytes {
            return deny(
                Source::Introspection,
                Rejection::TooLarge {
                    limit: self.max_token_bytes,
                },
            );
        }
        let mut strip = self.strip_identity(headers);
        let mut removal = Vec::new();
        if let Some(location) = self.locations.get(location) {
            match token_location::removals(location, headers, self.introspection_forwards) {
                Ok(removals) => removal.extend(removals),
                Err(Repeated) => return deny(Source::Introspection, Rejection::RepeatedToken),
            }
        }
        self.finish_path(&mut strip, raw_path, rewrite, false);
        Verdict::Introspect(PendingIntrospection {
            token: token.to_vec(),
            key: TokenKey::of(token),
            requirement: requirement.clone(),
            strip,
            removal,
        })
    }

    /// The verdict once introspection answered for `pending`.
    pub fn introspected(&self, pending: PendingIntrospection, answer: Answer<'_>) -> Verdict {
        let source = Source::Introspection;
        let info = match answer {
            Answer::Active(info) => info,
            Answer::Inactive(inactive) => return deny(source, Rejection::Inactive(inactive)),
            Answer::Failed(error) => {
                let open = error.is_outage()
                    && self
                        .introspector
                        .as_ref()
                        .is_some_and(|i| i.fail_mode() == FailMode::Open);
                return if open {
                    // Anonymous, but the token still goes no further than forward_token says
                    // (the path edit last, as when introspection answers).
                    let mut edits = pending.strip;
                    let path_edit = take_path_edit(&mut edits);
                    edits.extend(pending.removal);
                    edits.extend(path_edit);
                    Verdict::Anonymous(edits)
                } else {
                    deny(source, Rejection::Introspection(error))
                };
            }
        };
        if let Err(rejection) = authorize(&pending.requirement, &info.claims) {
            return deny(source, rejection);
        }
        let mut edits = pending.strip;
        // The path edit (if any) goes last, after the token's removal from the query.
        let path_edit = take_path_edit(&mut edits);
        let issuer = info.iss.as_deref().unwrap_or(INTROSPECTION_PROVIDER);
        set_identity(
            &mut edits,
            INTROSPECTION_PROVIDER,
            info.subject(),
            Some(issuer),
        );
        edits.extend(pending.removal);
        edits.extend(path_edit);
        Verdict::Allow(Allowed::new(source, edits, info.exp))
    }

    /// The provider whose issuer the (not yet verified) token names: only a routing choice,
    /// the signature check that follows uses that provider's keys alone.
    fn provider_for(&self, claims: &Claims) -> Result<usize, Rejection> {
        let iss = claims::issuer(claims)?;
        self.providers
            .iter()
            .position(|p| p.issuer == iss)
            .ok_or(Rejection::UnknownIssuer)
    }

    /// Copies of the credential headers (token locations, API key headers) spelled otherwise
    /// (`x_api_key`): nobody checks them, and CGI-style upstreams read them as the credential.
    fn credential_spellings(&self, headers: &Fields<'_>) -> Vec<Edit<'static>> {
        let token_headers = self.locations.iter().filter_map(|location| match location {
            TokenLocation::Header { name, .. } => Some(name.as_str()),
            _ => None,
        });
        let key_headers = self.api_keys.iter().flat_map(|keys| keys.key_headers());
        let names: Vec<&str> = token_headers.chain(key_headers).collect();
        identity::other_spellings(headers, &names)
    }

    /// Every identity header this plugin owns, by name, for a request whose headers could not
    /// all be seen (Kong's 100-pair cap): a copy past the cap is removed unseen, so
    /// palisade-audit never records it.
    pub fn for_each_identity_header(&self, mut f: impl FnMut(&str)) {
        for name in [identity::SUBJECT, identity::CONSUMER, identity::PROVIDER] {
            f(name);
        }
        for name in &self.claim_headers {
            f(name);
        }
    }

    /// Removes every identity header and claim header the client sent.
    pub fn strip_identity(&self, headers: &Fields<'_>) -> Vec<Edit<'static>> {
        identity::client_copies(headers, |name| {
            self.claim_headers
                .iter()
                .any(|h| identity::spelled_alike(name, h.as_bytes()))
        })
    }

    /// Folds every change to `:path` into one final edit: a credential taken out of the query
    /// (a token's removal edit, an API key's parameter), then the normalised path when
    /// normalisation changed it, so the upstream sees the path the rules judged.
    fn finish_path(
        &self,
        edits: &mut Vec<Edit<'static>>,
        raw: Option<&[u8]>,
        rewrite: bool,
        strip_api_key: bool,
    ) {
        let mut current: Option<Vec<u8>> = edits
            .iter()
            .position(|e| matches!(e, Edit::Set(name, _) if name == ":path"))
            .and_then(|at| match edits.remove(at) {
                Edit::Set(_, value) => Some(value.into_owned()),
                _ => None,
            });
        if strip_api_key {
            if let (Some(api_keys), Some(path)) = (&self.api_keys, current.as_deref().or(raw)) {
                if let (base, Some(query)) = palisade_kit::query::split_target(path) {
                    if let Some(kept) = api_keys.query_without_keys(query) {
                        let mut path = base.to_vec();
                        if !kept.is_empty() {
                            path.push(b'?');
                            path.extend_from_slice(&kept);
                        }
                        current = Some(path);
                    }
                }
            }
        }
        if rewrite {
            if let (Some(policy), Some(path)) = (&self.policy, current.as_deref().or(raw)) {
                if let Ok(normalized) = policy.normalizer.normalize(path) {
                    current = Some(normalized.request_path());
                }
            }
        }
        if let Some(path) = current {
            edits.push(Edit::Set(Cow::Borrowed(":path"), Cow::Owned(path)));
        }
    }

    fn identity_edits(&self, provider: &Provider, claims: &Claims, edits: &mut Vec<Edit<'static>>) {
        let sub = claims.get("sub").and_then(|s| s.as_str());
        set_identity(edits, &provider.name, sub, Some(&provider.issuer));
        for mapping in &provider.claims_to_headers {
            if let Some(value) =
                claims::lookup(claims, &mapping.claim).and_then(claims::header_value)
            {
                set(edits, &mapping.header, value);
            }
        }
    }
}

/// A token checked outside the memo.
enum TokenCheck {
    Verified(Rc<Verified>),
    /// Refused: the verdict says why.
    Refused(Verdict),
    /// Not a JWT of any provider, where introspection may take it as an opaque token.
    Introspect,
}

/// May a token of `provider`, found at `locations[location]`, satisfy `requirement`?
fn reads_here(
    requirement: &Requirement,
    provider: &Provider,
    location: usize,
) -> Result<(), Rejection> {
    if !requirement.accepts(Credential::Jwt {
        provider: &provider.name,
    }) {
        return Err(Rejection::ProviderNotAccepted);
    }
    if !provider.locations.contains(&location) {
        return Err(Rejection::WrongLocation);
    }
    Ok(())
}

fn deny(source: Source, rejection: Rejection) -> Verdict {
    Verdict::Deny { source, rejection }
}

fn set(edits: &mut Vec<Edit<'static>>, name: &str, value: String) {
    edits.push(Edit::Set(
        Cow::Owned(name.to_owned()),
        Cow::Owned(value.into_bytes()),
    ));
}

/// The provider header, and subject and consumer when the subject is safe in a header.
///
/// A token's consumer is `<issuer>/<subject>`, as Istio's `request.auth.principal`: subjects
/// are only unique within their issuer, and a bare `sub` would let a user whose IdP subject
/// equals an API key's consumer (or another IdP's subject) share its rate-limit budget and
/// audit identity. An API key's consumer (`issuer` `None`) is the name the operator gave it.
fn set_identity(
    edits: &mut Vec<Edit<'static>>,
    provider: &str,
    subject: Option<&str>,
    issuer: Option<&str>,
) {
    let mut set_static = |name: &'static str, value: Vec<u8>| {
        edits.push(Edit::Set(Cow::Borrowed(name), Cow::Owned(value)));
    };
    set_static(identity::PROVIDER, provider.as_bytes().to_vec());
    let Some(subject) = subject.filter(|s| claims::is_header_safe(s)) else {
        return;
    };
    set_static(identity::SUBJECT, subject.as_bytes().to_vec());
    let consumer = match issuer {
        Some(issuer) => format!("{issuer}/{subject}"),
        None => subject.to_owned(),
    };
    // The issuer comes from the configuration or a trusted answer, but is checked as the
    // subject is: a header value must not carry control characters.
    if claims::is_header_safe(&consumer) {
        set_static(identity::CONSUMER, consumer.into_bytes());
    }
}

/// The rule's claims and scopes against a verified identity.
fn authorize(requirement: &Requirement, claims: &Value) -> Result<(), Rejection> {
    if !requirement.checks_identity() {
        return Ok(());
    }
    requirement
        .authorize(claims)
        .map_err(|refusal| match refusal {
            Refusal::ClaimMismatch { .. } => Rejection::ClaimMismatch,
            Refusal::InsufficientScope { .. } => {
                Rejection::InsufficientScope(requirement.scopes().join(" "))
            }
            Refusal::Unauthenticated | Refusal::Denied => Rejection::Denied,
        })
}

/// What [`verify`] established about a token.
struct Checked {
    times: TokenTimes,
    /// `exp` plus leeway: the end of any caching.
    expires: Option<u64>,
    /// The key set that verified it (`None` for an HMAC secret).
    key_set: Option<Rc<KeySet>>,
}

/// Signature, then claims: the claims of a token are not trusted before its signature is.
fn verify(
    provider: &Provider,
    decoded: &Decoded<'_>,
    now: u64,
    keys: &impl KeySource,
) -> Result<Checked, Rejection> {
    let alg = decoded.alg;
    if !provider.algorithms.contains(&alg) {
        return Err(Rejection::AlgNotAllowed);
    }
    let mut digest = None;
    let mut verifier = None;
    let mut key_set = None;
    let verified = if alg.is_hmac() {
        let secret = provider.hmac.as_ref().ok_or(Rejection::NoKeyForAlg)?;
        secret.verify(alg, decoded.signing_input, &decoded.signature)
    } else {
        let set = keys.keys(provider).ok_or(Rejection::KeysUnavailable)?;
        // The kid and alg must still name a current key, cached or not, and a cached
        // signature counts only while the key that verified it is one of them (a rotated-out
        // key stops vouching).
        let mut candidates = set.candidates(decoded.kid.as_deref(), alg)?;
        let token = keys
            .caches_signatures()
            .then(|| TokenDigest::of(decoded.signing_input, &decoded.signature));
        let known = token.and_then(|token| keys.signature_known(provider, &token, now));
        let verified = if known.is_some_and(|id| candidates.any(|key| key.id == id)) {
            true
        } else {
            digest = token;
            let verifying = set.candidates(decoded.kid.as_deref(), alg)?.find(|key| {
                key.key
                    .verify(alg, decoded.signing_input, &decoded.signature)
            });
            verifier = verifying.map(|key| key.id);
            verifier.is_some()
        };
        drop(candidates);
        key_set = Some(set);
        verified
    };
    if !verified {
        return Err(Rejection::BadSignature);
    }
    let times = TokenTimes::of(&decoded.claims)?;
    let expires = times.check(now, provider.time)?;
    claims::check_audience(&decoded.claims, &provider.audiences)?;
    // Only a token with an expiry is cached, and never past it.
    if let (Some(token), Some(key), Some(expires)) = (digest, verifier, expires) {
        keys.remember_signature(provider, &token, key, expires);
    }
    Ok(Checked {
        times,
        expires,
        key_set,
    })
}

/// Takes the `:path` edit out of `edits`: it must follow the token's removal from the query.
fn take_path_edit(edits: &mut Vec<Edit<'static>>) -> Option<Edit<'static>> {
    edits
        .iter()
        .position(|e| matches!(e, Edit::Set(name, _) if name == ":path"))
        .map(|at| edits.remove(at))
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use serde_json::{json, Value};

    use super::*;
    use crate::rejection::Segment;
    use crate::test_tokens::{self, sign, sign_with, HMAC_SECRET, JWKS};
    use jsonwebtoken::EncodingKey;

    const NOW: u64 = 1_800_000_000;
    const ISS: &str = "https://idp.example";

    fn config(extra: Value) -> AuthConfig {
        let mut provider = json!({
            "name": "idp",
            "issuer": ISS,
            "audiences": ["api"],
            "algorithms": ["RS256","RS384","RS512","PS256","PS384","PS512","ES256","ES384","EdDSA"],
            "jwks": {"inline": serde_json::from_str::<Value>(JWKS).unwrap()},
            "claims_to_headers": [{"claim": "email", "header": "x-user-email"}],
        });
        if let (Some(p), Some(extra)) = (provider.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                p.insert(k.clone(), v.clone());
            }
        }
        palisade_kit::config::load(
            serde_json::to_vec(&json!({ "providers": [provider] }))
                .unwrap()
                .as_slice(),
        )
        .unwrap()
    }

    fn engine(extra: Value) -> Authenticator {
        let mut problems = Problems::default();
        let engine = Authenticator::build(&config(extra), &mut problems);
        assert!(problems.is_empty());
        engine
    }

    fn claims() -> Value {
        json!({"iss": ISS, "sub": "alice", "aud": "api", "exp": NOW + 300, "iat": NOW - 10,
               "email": "alice@example.com"})
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    fn run(engine: &Authenticator, headers: &[(&str, &str)]) -> Verdict {
        let fields: Vec<(&[u8], &[u8])> = headers
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect();
        engine.authenticate(&fields, NOW, &InlineKeys)
    }

    fn rejection(verdict: Verdict) -> Rejection {
        match verdict {
            Verdict::Deny { rejection, .. } => rejection,
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    #[test]
    fn every_public_key_algorithm_verifies() {
        let engine = engine(json!({}));
        for alg in Algorithm::ALL.into_iter().filter(|a| !a.is_hmac()) {
            let token = sign(alg, &claims());
            match run(&engine, &[("authorization", &bearer(&token))]) {
                Verdict::Allow(allowed) => {
                    assert_eq!(allowed.source, Source::Provider(0));
                    assert_eq!(allowed.expires, Some(NOW + 300 + 60));
                }
                other => panic!("{alg:?}: {other:?}"),
            }
        }
    }

    /// Inline keys behind a verified-token cache that never knows a token: counts the
    /// verifications that reach it, and can swap in a refreshed key set.
    struct CountingKeys {
        set: std::cell::RefCell<Rc<KeySet>>,
        verifications: std::cell::Cell<usize>,
    }

    impl CountingKeys {
        fn new() -> Self {
            Self {
                set: std::cell::RefCell::new(Rc::new(KeySet::parse(JWKS.as_bytes()).unwrap().0)),
                verifications: std::cell::Cell::new(0),
            }
        }
    }

    impl KeySource for CountingKeys {
        fn keys(&self, _provider: &Provider) -> Option<Rc<KeySet>> {
            Some(Rc::clone(&self.set.borrow()))
        }
        fn caches_signatures(&self) -> bool {
            true
        }
        fn signature_known(&self, _: &Provider, _: &TokenDigest, _: u64) -> Option<KeyId> {
            self.verifications.set(self.verifications.get() + 1);
            None
        }
    }

    #[test]
    fn a_cached_signature_stops_counting_once_its_key_leaves_the_jwks() {
        // A token without kid, verified and cached while rsa-1 was published; rsa-1 is then
        // removed (compromised) and rsa-2, another RS256 key, is published instead. The
        // cache must not vouch for the token: rsa-2 never verified it.
        let jwks: Value = serde_json::from_str(JWKS).unwrap();
        let only = |kid: &str| {
            let key = jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .find(|k| k["kid"] == kid)
                .unwrap()
                .clone();
            let mut config = config(json!({"jwks": {"inline": {"keys": [key]}}}));
            config.verified_token_cache_entries = 16;
            Authenticator::build(&config, &mut Problems::default())
        };
        let store = palisade_kit::store::MemoryStore::new();
        let keys = StoredKeys {
            store: &store,
            now_ms: NOW * 1000,
            verified: VerifiedCache::new(16),
        };
        let rsa1 = jsonwebtoken::EncodingKey::from_rsa_der(test_tokens::RSA);
        let token = sign_with(Algorithm::RS256, None, &rsa1, &claims());
        let header = bearer(&token);
        let fields: [(&[u8], &[u8]); 1] = [(b"authorization", header.as_bytes())];
        let before = only("rsa-1").decide(&fields, None, NOW, &keys);
        assert!(matches!(before, Verdict::Allow(_)), "{before:?}");
        assert_eq!(store.len(), 1, "the verification is cached");
        assert_eq!(
            rejection(only("rsa-2").decide(&fields, None, NOW, &keys)),
            Rejection::BadSignature
        );
        // While rsa-1 is published, the cached verification still serves.
        assert!(matches!(
            only("rsa-1").decide(&fields, None, NOW + 1, &keys),
            Verdict::Allow(_)
        ));
    }

    #[test]
    fn a_worker_verifies_a_token_once_then_checks_only_what_can_change() {
        let mut config = config(json!({}));
        config.verified_token_cache_entries = 16;
        let engine = Authenticator::build(&config, &mut Problems::default());
        let keys = CountingKeys::new();
        let token = sign(Algorithm::RS256, &claims());
        let header = bearer(&token);
        let fields: [(&[u8], &[u8]); 1] = [(b"authorization", header.as_bytes())];
        let first = engine.decide(&fields, None, NOW, &keys);
        assert!(matches!(&first, Verdict::Allow(_)), "{first:?}");
        assert_eq!(keys.verifications.get(), 1);
        // The same bytes again: the same verdict, edits included, without verifying.
        assert_eq!(engine.decide(&fields, None, NOW + 1, &keys), first);
        assert_eq!(keys.verifications.get(), 1);
        // Past exp + leeway the memo has nothing: the full path verifies, then refuses.
        assert_eq!(
            rejection(engine.decide(&fields, None, NOW + 300 + 61, &keys)),
            Rejection::Expired
        );
        assert_eq!(keys.verifications.get(), 2);
        // One changed byte of the signature is another token: verified, and refused.
        let mut tampered = token.clone().into_bytes();
        if let Some(last) = tampered.last_mut() {
            *last = if *last == b'A' { b'B' } else { b'A' };
        }
        let tampered = format!("Bearer {}", String::from_utf8(tampered).unwrap());
        let fields_tampered: [(&[u8], &[u8]); 1] = [(b"authorization", tampered.as_bytes())];
        assert_eq!(
            rejection(engine.decide(&fields_tampered, None, NOW, &keys)),
            Rejection::BadSignature
        );
        assert_eq!(keys.verifications.get(), 3);
        assert_eq!(engine.decide(&fields, None, NOW, &keys), first);
        assert_eq!(keys.verifications.get(), 3);
        // A refreshed key set: verified again against it, once.
        *keys.set.borrow_mut() = Rc::new(KeySet::parse(JWKS.as_bytes()).unwrap().0);
        assert_eq!(engine.decide(&fields, None, NOW, &keys), first);
        assert_eq!(engine.decide(&fields, None, NOW, &keys), first);
        assert_eq!(keys.verifications.get(), 4);
    }

    #[test]
    fn a_consumer_is_namespaced_by_its_issuer_but_an_api_key_names_its_own() {
        let consumer = |subject: &str, issuer: Option<&str>| {
            let mut edits = Vec::new();
            set_identity(&mut edits, "p", Some(subject), issuer);
            edits.into_iter().find_map(|edit| match edit {
                Edit::Set(name, value) if name == identity::CONSUMER => Some(value.into_owned()),
                _ => None,
            })
        };
        assert_eq!(
            consumer("alice", Some("https://idp.example")),
            Some(b"https://idp.example/alice".to_vec())
        );
        // The same subject from an API key or another issuer is another consumer.
        assert_eq!(consumer("alice", None), Some(b"alice".to_vec()));
        assert_eq!(
            consumer("alice", Some("https://other.example")),
            Some(b"https://other.example/alice".to_vec())
        );
        // An issuer that cannot go in a header gives no consumer rather than a bad header.
        assert_eq!(consumer("alice", Some("idp\r\nx: y")), None);
    }

    #[test]
    fn a_remembered_token_strips_a_spoofed_identity_before_setting_its_own() {
        let mut config = config(json!({}));
        config.verified_token_cache_entries = 16;
        let engine = Authenticator::build(&config, &mut Problems::default());
        let keys = CountingKeys::new();
        let header = bearer(&sign(Algorithm::RS256, &claims()));
        let fields: [(&[u8], &[u8]); 2] = [
            (b"X-Palisade-Subject", b"mallory"),
            (b"authorization", header.as_bytes()),
        ];
        let remove = Edit::Remove("x-palisade-subject".into());
        let set = |n: &'static str, v: &'static str| Edit::Set(n.into(), v.as_bytes().into());
        for round in 0..2 {
            let Verdict::Allow(allowed) = engine.decide(&fields, None, NOW, &keys) else {
                panic!("round {round}")
            };
            assert_eq!(
                allowed.edits(),
                [
                    remove.clone(),
                    set(identity::PROVIDER, "idp"),
                    set(identity::SUBJECT, "alice"),
                    set(identity::CONSUMER, "https://idp.example/alice"),
                    set("x-user-email", "alice@example.com"),
                    Edit::Remove("authorization".into()),
                ],
                "round {round}"
            );
        }
        assert_eq!(
            keys.verifications.get(),
            1,
            "the second round was the memo's"
        );
    }

    #[test]
    fn without_the_verified_token_cache_every_request_verifies() {
        let engine = engine(json!({}));
        let keys = CountingKeys::new();
        let header = bearer(&sign(Algorithm::ES256, &claims()));
        let fields: [(&[u8], &[u8]); 1] = [(b"authorization", header.as_bytes())];
        for _ in 0..3 {
            assert!(matches!(
                engine.decide(&fields, None, NOW, &keys),
                Verdict::Allow(_)
            ));
        }
        // caches_signatures is the KeySource's word; the memo follows the configuration.
        assert_eq!(keys.verifications.get(), 3);
    }

    #[test]
    fn hmac_verifies_with_the_configured_secret_only() {
        let engine = engine(json!({
            "algorithms": ["HS256", "HS384", "HS512"],
            "jwks": null,
            "hmac_secret": HMAC_SECRET,
        }));
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let token = sign(alg, &claims());
            assert!(
                matches!(
                    run(&engine, &[("authorization", &bearer(&token))]),
                    Verdict::Allow(_)
                ),
                "{alg:?}"
            );
        }
        let forged = sign_with(
            Algorithm::HS256,
            None,
            &EncodingKey::from_secret(b"another-secret-another-secret-another"),
            &claims(),
        );
        assert_eq!(
            rejection(run(&engine, &[("authorization", &bearer(&forged))])),
            Rejection::BadSignature
        );
    }

    #[test]
    fn an_rsa_public_key_used_as_an_hmac_secret_is_refused() {
        // The classic confusion: sign HS256 with the bytes of the provider's public JWKS.
        let engine = engine(json!({"algorithms": ["RS256", "HS256"], "hmac_secret": HMAC_SECRET}));
        let confused = sign_with(
            Algorithm::HS256,
            Some("rsa-1"),
            &EncodingKey::from_secret(JWKS.as_bytes()),
            &claims(),
        );
        assert_eq!(
            rejection(run(&engine, &[("authorization", &bearer(&confused))])),
            Rejection::BadSignature
        );
        // Without an HMAC algorithm allowed, HS256 never gets as far as a key.
        let engine = self::engine(json!({}));
        assert_eq!(
            rejection(run(&engine, &[("authorization", &bearer(&confused))])),
            Rejection::AlgNotAllowed
        );
    }

    #[test]
    fn each_rejection_is_precise() {
        let engine = engine(json!({}));
        let rs = |c: Value| sign(Algorithm::RS256, &c);
        let with = |patch: Value| {
            let mut c = claims();
            for (k, v) in patch.as_object().unwrap() {
                if v.is_null() {
                    c.as_object_mut().unwrap().remove(k);
                } else {
                    c[k] = v.clone();
                }
            }
            rs(c)
        };
        let good = rs(claims());
        let (head, rest) = good.split_once('.').unwrap();
        let (payload, sig) = rest.split_once('.').unwrap();
        let mut flipped = sig.as_bytes().to_vec();
        flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
        let flipped = format!("{head}.{payload}.{}", String::from_utf8(flipped).unwrap());
        let other_key = sign_with(
            Algorithm::RS256,
            Some("rsa-1"),
            &EncodingKey::from_rsa_der(test_tokens::RSA2),
            &claims(),
        );
        let unknown_kid = sign_with(
            Algorithm::RS256,
            Some("rsa-9"),
            &EncodingKey::from_rsa_der(test_tokens::RSA),
            &claims(),
        );
        let wrong_curve = sign_with(
            Algorithm::ES256,
            Some("ec384-1"),
            &EncodingKey::from_ec_der(test_tokens::EC256),
            &claims(),
        );
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let alg_none = format!("{}.{payload}.", b64(r#"{"alg":"none"}"#));
        let cases: Vec<(String, Rejection)> = vec![
            ("x".repeat(9000), Rejection::TooLarge { limit: 8192 }),
            (format!("{head}.{payload}"), Rejection::SegmentCount(2)),
            (
                format!("{head}.{payload}.{sig}="),
                Rejection::BadBase64(Segment::Signature),
            ),
            (alg_none, Rejection::AlgNone),
            (flipped, Rejection::BadSignature),
            (other_key, Rejection::BadSignature),
            (unknown_kid, Rejection::UnknownKid),
            (wrong_curve, Rejection::NoKeyForAlg),
            (with(json!({"exp": NOW - 61})), Rejection::Expired),
            (with(json!({"nbf": NOW + 61})), Rejection::NotYetValid),
            (with(json!({"iat": NOW + 61})), Rejection::IssuedInFuture),
            (with(json!({"exp": null})), Rejection::MissingExp),
            (with(json!({"exp": "soon"})), Rejection::BadClaim("exp")),
            (with(json!({"aud": "web"})), Rejection::AudienceNotAllowed),
            (
                with(json!({"iss": "https://evil.example"})),
                Rejection::UnknownIssuer,
            ),
            (with(json!({"iss": null})), Rejection::MissingIssuer),
        ];
        for (token, expected) in cases {
            assert_eq!(
                rejection(run(&engine, &[("authorization", &bearer(&token))])),
                expected
            );
        }
        assert_eq!(rejection(run(&engine, &[])), Rejection::Missing);
    }

    #[test]
    fn a_tampered_payload_fails_the_signature() {
        let engine = engine(json!({}));
        let good = sign(Algorithm::ES256, &claims());
        let parts: Vec<&str> = good.split('.').collect();
        let mut forged_claims = claims();
        forged_claims["sub"] = json!("admin");
        use base64::Engine;
        let forged_payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&forged_claims).unwrap());
        let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert_eq!(
            rejection(run(&engine, &[("authorization", &bearer(&forged))])),
            Rejection::BadSignature
        );
    }

    #[test]
    fn identity_headers_are_stripped_then_set_from_the_token() {
        let engine = engine(json!({}));
        let token = sign(Algorithm::RS256, &claims());
        let auth = bearer(&token);
        let verdict = run(
            &engine,
            &[
                ("authorization", &auth),
                ("X-Palisade-Subject", "mallory"),
                ("x-palisade-consumer", "mallory"),
                ("x-palisade-anything", "x"),
                ("x-user-email", "mallory@evil.example"),
                // Underscores: Envoy passes them on, and CGI-style upstreams read them as `-`.
                ("x_palisade_subject", "mallory"),
                ("X_User_Email", "mallory@evil.example"),
                ("x-tenant", "acme"),
            ],
        );
        let Verdict::Allow(allowed) = verdict else {
            panic!("{verdict:?}")
        };
        let set = |n: &str, v: &str| Edit::Set(n.to_owned().into(), v.as_bytes().to_vec().into());
        let remove = |n: &str| Edit::Remove(n.to_owned().into());
        assert_eq!(
            allowed.edits(),
            vec![
                remove("x-palisade-subject"),
                remove("x-palisade-consumer"),
                remove("x-palisade-anything"),
                remove("x-user-email"),
                remove("x_palisade_subject"),
                remove("x_user_email"),
                set("x-palisade-auth-provider", "idp"),
                set("x-palisade-subject", "alice"),
                set("x-palisade-consumer", "https://idp.example/alice"),
                set("x-user-email", "alice@example.com"),
                remove("authorization"),
            ]
        );
    }

    #[test]
    fn forwarding_keeps_the_token_and_missing_may_be_allowed() {
        let engine = engine(json!({"forward_token": true}));
        let token = sign(Algorithm::RS256, &claims());
        let Verdict::Allow(allowed) = run(&engine, &[("authorization", &bearer(&token))]) else {
            panic!()
        };
        assert!(!allowed
            .edits()
            .contains(&Edit::Remove("authorization".to_owned().into())));

        let mut config = config(json!({}));
        config.allow_missing = true;
        let engine = Authenticator::build(&config, &mut Problems::default());
        assert_eq!(
            run(&engine, &[("x-palisade-subject", "mallory")]),
            Verdict::Anonymous(vec![Edit::Remove("x-palisade-subject".to_owned().into())])
        );
        // A present but bad token is still refused.
        assert_eq!(
            rejection(run(&engine, &[("authorization", "Bearer a.b")])),
            Rejection::SegmentCount(2)
        );
    }

    #[test]
    fn tokens_are_read_from_each_location_and_checked_against_their_provider() {
        let engine = engine(json!({"token_locations": [
            {"query": "access_token"}, {"cookie": "session"},
            {"header": {"name": "x-jwt", "prefix": ""}}
        ]}));
        let token = sign(Algorithm::ES384, &claims());
        let path = format!("/a?access_token={token}&b=1");
        for headers in [
            vec![(":path", path.as_str())],
            vec![
                (":path", "/a"),
                ("cookie", &format!("x=1; session={token}")),
            ],
            vec![(":path", "/a"), ("x-jwt", token.as_str())],
        ] {
            assert!(
                matches!(run(&engine, &headers), Verdict::Allow(_)),
                "{headers:?}"
            );
        }
        // Authorization is not one of this provider's locations any more.
        assert_eq!(
            rejection(run(&engine, &[("authorization", &bearer(&token))])),
            Rejection::Missing
        );
        let Verdict::Allow(allowed) = run(&engine, &[(":path", path.as_str())]) else {
            panic!()
        };
        assert!(allowed
            .edits()
            .contains(&Edit::Set(":path".into(), b"/a?b=1".to_vec().into())));
    }

    #[test]
    fn a_token_found_where_its_issuer_does_not_look_is_refused() {
        let mut config = config(json!({}));
        let mut second = config.providers[0].clone();
        second.name = "partner".into();
        second.issuer = "https://partner.example".into();
        second.token_locations = vec![TokenLocation::Header {
            name: "x-partner-jwt".into(),
            prefix: String::new(),
        }];
        config.providers.push(second);
        let engine = Authenticator::build(&config, &mut Problems::default());
        let mut partner_claims = claims();
        partner_claims["iss"] = json!("https://partner.example");
        let partner = sign(Algorithm::RS256, &partner_claims);
        assert_eq!(
            run(&engine, &[("authorization", &bearer(&partner))]),
            Verdict::Deny {
                source: Source::Provider(1),
                rejection: Rejection::WrongLocation
            }
        );
        let Verdict::Allow(allowed) = run(&engine, &[("x-partner-jwt", &partner)]) else {
            panic!()
        };
        assert_eq!(allowed.source, Source::Provider(1));
    }
}

#[cfg(test)]
mod policy_tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use serde_json::{json, Value};

    use super::*;
    use crate::introspection::{IntrospectionError, TokenInfo};
    use crate::test_tokens::{sign, JWKS};

    const NOW: u64 = 1_800_000_000;
    const ISS: &str = "https://idp.example";

    fn engine(extra: Value) -> Authenticator {
        let mut config = json!({
            "providers": [{
                "name": "idp", "issuer": ISS, "algorithms": ["RS256"],
                "jwks": {"inline": serde_json::from_str::<Value>(JWKS).unwrap()},
                "token_locations": [{"header": {"name": "authorization", "prefix": "Bearer "}},
                                    {"query": "access_token"}],
            }],
            "introspection": {
                "upstream": "idp", "authority": "idp.example", "path": "/introspect",
                "client_id": "gw", "client_secret": "s3cret",
            },
        });
        for (k, v) in extra.as_object().unwrap() {
            config[k] = v.clone();
        }
        let config: AuthConfig =
            palisade_kit::config::load(&serde_json::to_vec(&config).unwrap()).unwrap();
        let mut problems = Problems::default();
        let engine = Authenticator::build(&config, &mut problems);
        assert!(problems.is_empty());
        engine
    }

    fn run(engine: &Authenticator, headers: &[(&str, &str)]) -> Verdict {
        let fields: Vec<(&[u8], &[u8])> = headers
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect();
        engine.authenticate(&fields, NOW, &InlineKeys)
    }

    fn jwt() -> String {
        sign(
            Algorithm::RS256,
            &json!({"iss": ISS, "sub": "alice", "exp": NOW + 300, "scope": "a b"}),
        )
    }

    #[test]
    fn a_removed_query_token_and_the_normalised_path_make_one_path_edit() {
        let engine = engine(json!({"rules": [{"action": {"require": {"providers": ["idp"]}}}]}));
        let path = format!("/x/../orders?access_token={}&page=2", jwt());
        let Verdict::Allow(allowed) = run(&engine, &[(":path", &path)]) else {
            panic!()
        };
        let edits = allowed.edits();
        let paths: Vec<&Edit<'_>> = edits
            .iter()
            .filter(|e| matches!(e, Edit::Set(name, _) if name == ":path"))
            .collect();
        assert_eq!(
            paths,
            [&Edit::Set(
                ":path".into(),
                b"/orders?page=2".to_vec().into()
            )]
        );
    }

    #[test]
    fn an_opaque_bearer_token_is_introspected_and_a_jwt_is_verified() {
        let engine = engine(json!({}));
        let Verdict::Introspect(pending) = run(&engine, &[("authorization", "Bearer opaque-1")])
        else {
            panic!()
        };
        assert_eq!(pending.token(), b"opaque-1");
        // The token never shows in a Debug print.
        assert!(!format!("{pending:?}").contains("opaque"));
        let Verdict::Allow(allowed) =
            run(&engine, &[("authorization", &format!("Bearer {}", jwt()))])
        else {
            panic!()
        };
        assert_eq!(allowed.source, Source::Provider(0));
        // A JWT of an unknown issuer on the bearer header goes to introspection too.
        let stranger = sign(
            Algorithm::RS256,
            &json!({"iss": "https://other.example", "exp": NOW + 300}),
        );
        assert!(matches!(
            run(&engine, &[("authorization", &format!("Bearer {stranger}"))]),
            Verdict::Introspect(_)
        ));
        // An opaque token in the query (a JWT-only location) is a JWT error, not introspected.
        assert_eq!(
            run(&engine, &[(":path", "/a?access_token=opaque")]),
            Verdict::Deny {
                source: Source::None,
                rejection: Rejection::SegmentCount(1)
            }
        );
    }

    /// Two different tokens where one is forwarded: one would be checked and the other could
    /// reach the upstream. Removed, every copy goes, so nothing is ambiguous.
    #[test]
    fn a_forwarded_token_given_twice_is_refused() {
        let forwarding = engine(json!({"providers": [{
            "name": "idp", "issuer": ISS, "algorithms": ["RS256"],
            "jwks": {"inline": serde_json::from_str::<Value>(JWKS).unwrap()},
            "token_locations": [{"header": {"name": "authorization", "prefix": "Bearer "}},
                                {"query": "access_token"}],
            "forward_token": true,
        }]}));
        let token = jwt();
        let bearer = format!("Bearer {token}");
        let refused = Verdict::Deny {
            source: Source::Provider(0),
            rejection: Rejection::RepeatedToken,
        };
        assert_eq!(
            run(
                &forwarding,
                &[
                    ("authorization", &bearer),
                    ("authorization", "Bearer forged")
                ]
            ),
            refused
        );
        let path = format!("/a?access_token={token}&q=1;access%5Ftoken=forged");
        assert_eq!(run(&forwarding, &[(":path", &path)]), refused);
        // The same token twice, or another scheme beside it, is no ambiguity.
        for other in [bearer.as_str(), "Basic dXNlcg=="] {
            assert!(matches!(
                run(
                    &forwarding,
                    &[("authorization", &bearer), ("authorization", other)]
                ),
                Verdict::Allow(_)
            ));
        }
        // Not forwarded: allowed, and every copy removed.
        let Verdict::Allow(allowed) = run(&engine(json!({})), &[(":path", &path)]) else {
            panic!()
        };
        assert!(allowed
            .edits()
            .contains(&Edit::Set(":path".into(), b"/a?q=1".to_vec().into())));
    }

    /// Anonymous through allow_missing: a credential header spelled otherwise, which nobody
    /// checks and CGI-style upstreams read as the credential, does not go on.
    #[test]
    fn an_anonymous_request_loses_credentials_spelled_otherwise() {
        let engine = engine(json!({
            "allow_missing": true,
            "providers": [{
                "name": "idp", "issuer": ISS, "algorithms": ["RS256"],
                "jwks": {"inline": serde_json::from_str::<Value>(JWKS).unwrap()},
                "token_locations": [{"header": {"name": "x-auth-token"}}],
            }],
        }));
        let Verdict::Anonymous(edits) = run(&engine, &[("x_auth_token", "forged")]) else {
            panic!()
        };
        assert!(
            edits.contains(&Edit::Remove("x_auth_token".to_owned().into())),
            "{edits:?}"
        );
    }

    /// A provider that spells the bearer prefix its own way shares introspection's location:
    /// an opaque token there is introspected, not refused as a malformed JWT.
    #[test]
    fn a_bearer_prefix_in_any_spelling_still_reaches_introspection() {
        for (name, prefix) in [("authorization", "bearer "), ("authorization", "Bearer")] {
            let mut provider = json!({
                "name": "idp", "issuer": ISS, "algorithms": ["RS256"],
                "jwks": {"inline": serde_json::from_str::<Value>(JWKS).unwrap()},
            });
            provider["token_locations"] = json!([{"header": {"name": name, "prefix": prefix}}]);
            let engine = engine(json!({ "providers": [provider] }));
            let Verdict::Introspect(pending) =
                run(&engine, &[("authorization", "Bearer opaque-1")])
            else {
                panic!("{name} {prefix:?}")
            };
            assert_eq!(pending.token(), b"opaque-1");
        }
    }

    #[test]
    fn introspection_answers_become_verdicts() {
        let engine = engine(json!({"rules": [{"action": {"require": {
            "introspection": true, "scopes": ["orders:write"]}}}]}));
        let pending = || match run(
            &engine,
            &[
                (":path", "/r"),
                ("authorization", "Bearer opaque-1"),
                ("x-palisade-subject", "m"),
            ],
        ) {
            Verdict::Introspect(pending) => pending,
            other => panic!("{other:?}"),
        };
        let info = |scope: &str| TokenInfo {
            sub: Some("svc".into()),
            iss: None,
            scope: Some(scope.into()),
            exp: Some(NOW + 60),
            claims: json!({"active": true, "sub": "svc", "scope": scope}),
        };
        let Verdict::Allow(allowed) =
            engine.introspected(pending(), Answer::Active(&info("orders:write")))
        else {
            panic!()
        };
        assert_eq!(allowed.source, Source::Introspection);
        assert_eq!(allowed.expires, Some(NOW + 60));
        assert_eq!(
            allowed.edits(),
            [
                Edit::Remove("x-palisade-subject".to_owned().into()),
                Edit::Set(
                    "x-palisade-auth-provider".to_owned().into(),
                    b"introspection".to_vec().into()
                ),
                Edit::Set(
                    "x-palisade-subject".to_owned().into(),
                    b"svc".to_vec().into()
                ),
                Edit::Set(
                    "x-palisade-consumer".to_owned().into(),
                    b"introspection/svc".to_vec().into()
                ),
                Edit::Remove("authorization".to_owned().into()),
            ]
        );
        // An endpoint that names its issuer namespaces the consumer with it.
        let mut named = info("orders:write");
        named.iss = Some("https://idp.example".into());
        let Verdict::Allow(allowed) = engine.introspected(pending(), Answer::Active(&named)) else {
            panic!()
        };
        assert!(allowed.edits().contains(&Edit::Set(
            "x-palisade-consumer".to_owned().into(),
            b"https://idp.example/svc".to_vec().into()
        )));
        assert_eq!(
            engine.introspected(pending(), Answer::Active(&info("orders:read"))),
            Verdict::Deny {
                source: Source::Introspection,
                rejection: Rejection::InsufficientScope("orders:write".into())
            }
        );
        assert_eq!(
            engine.introspected(pending(), Answer::Inactive(Inactive::NotActive)),
            Verdict::Deny {
                source: Source::Introspection,
                rejection: Rejection::Inactive(Inactive::NotActive)
            }
        );
        assert_eq!(
            engine.introspected(pending(), Answer::Failed(IntrospectionError::Unreachable)),
            Verdict::Deny {
                source: Source::Introspection,
                rejection: Rejection::Introspection(IntrospectionError::Unreachable)
            }
        );
    }

    #[test]
    fn fail_open_lets_the_request_through_anonymous() {
        let introspection = json!({
            "upstream": "idp", "authority": "idp.example", "path": "/introspect",
            "client_id": "gw", "client_secret": "s3cret", "fail_mode": "open",
        });
        let engine = engine(json!({"introspection": introspection}));
        let Verdict::Introspect(pending) = run(&engine, &[("authorization", "Bearer opaque-1")])
        else {
            panic!()
        };
        // The token is not forwarded (forward_token is off by default), even anonymous.
        assert_eq!(
            engine.introspected(
                pending.clone(),
                Answer::Failed(IntrospectionError::Status(500))
            ),
            Verdict::Anonymous(vec![Edit::Remove("authorization".to_owned().into())])
        );
        assert!(matches!(
            engine.introspected(
                pending.clone(),
                Answer::Failed(IntrospectionError::Unreachable)
            ),
            Verdict::Anonymous(_)
        ));
        // Only an outage: an answer about the request stays closed, or a client could pick a
        // token that the IdP (or a WAF in front of it) refuses with a 400 and pass.
        for answer in [
            IntrospectionError::Status(400),
            IntrospectionError::Status(413),
            IntrospectionError::Status(401),
            IntrospectionError::Status(429),
            IntrospectionError::NotJson,
            IntrospectionError::NotAnObject,
            IntrospectionError::MissingActive,
            IntrospectionError::TooLarge { size: 2, max: 1 },
        ] {
            assert_eq!(
                engine.introspected(pending.clone(), Answer::Failed(answer)),
                Verdict::Deny {
                    source: Source::Introspection,
                    rejection: Rejection::Introspection(answer)
                },
                "{answer:?}"
            );
        }
    }

    #[test]
    fn unescape_and_redirect_answers_with_the_normalised_path() {
        let engine = engine(json!({
            "rules": [{"action": "allow_anonymous"}],
            "path_normalization": {"escaped_slashes": "unescape_and_redirect"},
        }));
        assert_eq!(
            run(&engine, &[(":path", "/a%2Fb?q=1")]),
            Verdict::Redirect(b"/a/b?q=1".to_vec())
        );
    }
}
