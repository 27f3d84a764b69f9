//! The decision for one request, host-free: find the token, choose its provider by `iss`,
//! verify its signature with the provider's prepared keys, check its claims, and say which
//! headers to strip and set. Fails closed: anything not proven valid is a [`Rejection`].

use std::borrow::Cow;
use std::rc::Rc;

use palisade_kit::config::Problems;
use palisade_kit::header_pairs::Edit;
use palisade_kit::identity;

use crate::claims::{self, TimeRules};
use crate::config::{Algorithm, AuthConfig, ClaimToHeader, JwksSource, TokenLocation};
use crate::jwks::KeySet;
use crate::jwt::{self, Claims, Decoded};
use crate::rejection::Rejection;
use crate::signature::HmacSecret;
use crate::token_location;

type Fields<'a> = [(&'a [u8], &'a [u8])];

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
    hmac: Option<HmacSecret>,
}

/// Where a provider's public keys are read at request time.
pub trait KeySource {
    /// The provider's current key set; `None` when it has none yet.
    fn keys(&self, provider: &Provider) -> Option<Rc<KeySet>>;
}

/// Keys written into the configuration.
#[derive(Debug, Default, Clone, Copy)]
pub struct InlineKeys;

impl KeySource for InlineKeys {
    fn keys(&self, provider: &Provider) -> Option<Rc<KeySet>> {
        provider.keys.clone()
    }
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// A verified token: continue with these header edits.
    Allow(Allowed),
    /// No token, and missing tokens are allowed: continue, identity headers stripped.
    Anonymous(Vec<Edit<'static>>),
    /// Refuse; `provider` when the token got as far as naming one.
    Deny {
        provider: Option<usize>,
        rejection: Rejection,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Allowed {
    pub provider: usize,
    pub edits: Vec<Edit<'static>>,
    /// The token's expiry (seconds since the epoch, leeway included), bounding any caching.
    pub expires: Option<u64>,
}

/// The compiled configuration.
#[derive(Debug)]
pub struct Authenticator {
    providers: Vec<Provider>,
    /// Every provider's locations, each once, in configuration order.
    locations: Vec<TokenLocation>,
    max_token_bytes: usize,
    allow_missing: bool,
    /// Claim headers (lower case) removed from every request, besides `x-palisade-*`.
    claim_headers: Vec<String>,
}

impl Authenticator {
    /// Compiles a validated configuration: key sets parsed and prepared here, once.
    pub fn build(config: &AuthConfig, problems: &mut Problems) -> Self {
        let mut locations: Vec<TokenLocation> = Vec::new();
        let mut claim_headers: Vec<String> = Vec::new();
        let mut providers = Vec::with_capacity(config.providers.len());
        for (i, provider) in config.providers.iter().enumerate() {
            let mut indexes = Vec::new();
            for location in &provider.token_locations {
                let index = match locations.iter().position(|l| l == location) {
                    Some(index) => index,
                    None => {
                        locations.push(location.clone());
                        locations.len() - 1
                    }
                };
                indexes.push(index);
            }
            for mapping in &provider.claims_to_headers {
                if !claim_headers.contains(&mapping.header) {
                    claim_headers.push(mapping.header.clone());
                }
            }
            let keys = match &provider.jwks {
                Some(JwksSource::Inline(document)) => {
                    let bytes = serde_json::to_vec(document).unwrap_or_default();
                    match KeySet::parse(&bytes) {
                        Ok((set, _)) => Some(Rc::new(set)),
                        Err(err) => {
                            problems
                                .push_at(&format!("providers[{i}].jwks.inline"), err.to_string());
                            None
                        }
                    }
                }
                None => None,
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
                hmac: provider.hmac_secret_bytes().map(HmacSecret::new),
            });
        }
        Self {
            providers,
            locations,
            max_token_bytes: config.max_token_bytes,
            allow_missing: config.allow_missing,
            claim_headers,
        }
    }

    pub fn providers(&self) -> &[Provider] {
        &self.providers
    }

    /// Decides for a request's headers at `now` (seconds since the epoch).
    pub fn authenticate(&self, headers: &Fields<'_>, now: u64, keys: &impl KeySource) -> Verdict {
        let found = self
            .locations
            .iter()
            .enumerate()
            .find_map(|(index, location)| {
                token_location::find(location, headers).map(|token| (index, token))
            });
        let Some((location, token)) = found else {
            return if self.allow_missing {
                Verdict::Anonymous(self.strip_identity(headers))
            } else {
                Verdict::Deny {
                    provider: None,
                    rejection: Rejection::Missing,
                }
            };
        };
        let decoded = match jwt::decode(token, self.max_token_bytes) {
            Ok(decoded) => decoded,
            Err(rejection) => {
                return Verdict::Deny {
                    provider: None,
                    rejection,
                }
            }
        };
        let index = match self.provider_for(&decoded.claims) {
            Ok(index) => index,
            Err(rejection) => {
                return Verdict::Deny {
                    provider: None,
                    rejection,
                }
            }
        };
        let deny = |rejection| Verdict::Deny {
            provider: Some(index),
            rejection,
        };
        let Some(provider) = self.providers.get(index) else {
            return deny(Rejection::UnknownIssuer);
        };
        if !provider.locations.contains(&location) {
            return deny(Rejection::WrongLocation);
        }
        let expires = match verify(provider, &decoded, now, keys) {
            Ok(expires) => expires,
            Err(rejection) => return deny(rejection),
        };
        let mut edits = self.strip_identity(headers);
        self.identity_edits(provider, &decoded.claims, &mut edits);
        if !provider.forward_token {
            if let Some(location) = self.locations.get(location) {
                edits.extend(token_location::removal(location, headers));
            }
        }
        Verdict::Allow(Allowed {
            provider: index,
            edits,
            expires,
        })
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

    /// Removes every identity header and claim header the client sent.
    fn strip_identity(&self, headers: &Fields<'_>) -> Vec<Edit<'static>> {
        let mut edits: Vec<Edit<'static>> = Vec::new();
        for (name, _) in headers {
            let owned = identity::is_owned(name)
                || self
                    .claim_headers
                    .iter()
                    .any(|h| name.eq_ignore_ascii_case(h.as_bytes()));
            if !owned {
                continue;
            }
            let name = String::from_utf8_lossy(name).to_ascii_lowercase();
            let edit = Edit::Remove(Cow::Owned(name));
            if !edits.contains(&edit) {
                edits.push(edit);
            }
        }
        edits
    }

    fn identity_edits(&self, provider: &Provider, claims: &Claims, edits: &mut Vec<Edit<'static>>) {
        let set = |edits: &mut Vec<Edit<'static>>, name: &str, value: String| {
            edits.push(Edit::Set(
                Cow::Owned(name.to_owned()),
                Cow::Owned(value.into_bytes()),
            ));
        };
        set(edits, identity::PROVIDER, provider.name.clone());
        if let Some(sub) = claims
            .get("sub")
            .and_then(|s| s.as_str())
            .filter(|s| claims::is_header_safe(s))
        {
            set(edits, identity::SUBJECT, sub.to_owned());
            set(edits, identity::CONSUMER, sub.to_owned());
        }
        for mapping in &provider.claims_to_headers {
            if let Some(value) =
                claims::lookup(claims, &mapping.claim).and_then(claims::header_value)
            {
                set(edits, &mapping.header, value);
            }
        }
    }
}

/// Signature, then claims: the claims of a token are not trusted before its signature is.
fn verify(
    provider: &Provider,
    decoded: &Decoded<'_>,
    now: u64,
    keys: &impl KeySource,
) -> Result<Option<u64>, Rejection> {
    let alg = decoded.alg;
    if !provider.algorithms.contains(&alg) {
        return Err(Rejection::AlgNotAllowed);
    }
    let verified = if alg.is_hmac() {
        let secret = provider.hmac.as_ref().ok_or(Rejection::NoKeyForAlg)?;
        secret.verify(alg, decoded.signing_input, &decoded.signature)
    } else {
        let set = keys.keys(provider).ok_or(Rejection::KeysUnavailable)?;
        let verified = set
            .candidates(decoded.kid.as_deref(), alg)?
            .any(|key| key.verify(alg, decoded.signing_input, &decoded.signature));
        verified
    };
    if !verified {
        return Err(Rejection::BadSignature);
    }
    let expires = claims::check_times(&decoded.claims, now, provider.time)?;
    claims::check_audience(&decoded.claims, &provider.audiences)?;
    Ok(expires)
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
                    assert_eq!(allowed.provider, 0);
                    assert_eq!(allowed.expires, Some(NOW + 300 + 60));
                }
                other => panic!("{alg:?}: {other:?}"),
            }
        }
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
                ("x-tenant", "acme"),
            ],
        );
        let Verdict::Allow(allowed) = verdict else {
            panic!("{verdict:?}")
        };
        let set = |n: &str, v: &str| Edit::Set(n.to_owned().into(), v.as_bytes().to_vec().into());
        let remove = |n: &str| Edit::Remove(n.to_owned().into());
        assert_eq!(
            allowed.edits,
            vec![
                remove("x-palisade-subject"),
                remove("x-palisade-consumer"),
                remove("x-palisade-anything"),
                remove("x-user-email"),
                set("x-palisade-auth-provider", "idp"),
                set("x-palisade-subject", "alice"),
                set("x-palisade-consumer", "alice"),
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
            .edits
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
            .edits
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
                provider: Some(1),
                rejection: Rejection::WrongLocation
            }
        );
        let Verdict::Allow(allowed) = run(&engine, &[("x-partner-jwt", &partner)]) else {
            panic!()
        };
        assert_eq!(allowed.provider, 1);
    }
}
