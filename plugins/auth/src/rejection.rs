//! Why a request was refused: one variant per reason, each with a stable metric label and a
//! description safe to send to the client and to log (never a token, a claim value or a key).

use palisade_kit::reply::ErrorReply;

use crate::api_keys::InvalidApiKey;
use crate::introspection::{Inactive, IntrospectionError};
use crate::path::PathRejection;

/// A part of a compact JWS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    Header,
    Payload,
    Signature,
}

impl Segment {
    fn name(self) -> &'static str {
        match self {
            Segment::Header => "header",
            Segment::Payload => "payload",
            Segment::Signature => "signature",
        }
    }
}

/// A time claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeClaim {
    Exp,
    Nbf,
    Iat,
}

impl TimeClaim {
    pub fn name(self) -> &'static str {
        match self {
            TimeClaim::Exp => "exp",
            TimeClaim::Nbf => "nbf",
            TimeClaim::Iat => "iat",
        }
    }
}

/// Why a token (or its absence) was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// No token in any configured location.
    Missing,
    /// Longer than `max_token_bytes`: refused before any decoding.
    TooLarge {
        limit: usize,
    },
    /// Not three dot-separated segments (five is a JWE).
    SegmentCount(usize),
    /// A segment is not unpadded base64url (RFC 7515 §2).
    BadBase64(Segment),
    /// The header or payload is not a JSON object.
    BadJson(Segment),
    /// `alg` is absent or not a string.
    MissingAlg,
    /// `alg: none` (RFC 8725 §3.1: never accepted).
    AlgNone,
    /// An `alg` this plugin does not implement.
    UnsupportedAlg,
    /// An `alg` the provider's allowlist does not hold.
    AlgNotAllowed,
    /// A `crit` header names extensions (RFC 7515 §4.1.11: must be understood, and none are).
    UnsupportedCrit,
    /// A claim has the wrong JSON type (`exp` not a number, `aud` not a string or list ...).
    BadClaim(&'static str),
    /// No `iss` claim: no provider can be chosen.
    MissingIssuer,
    /// No provider has this `iss`.
    UnknownIssuer,
    /// The token was found in a location its issuer's provider does not read.
    WrongLocation,
    /// The location holds more than one token (two `Authorization: Bearer` headers, two
    /// `access_token` parameters): one would be checked and another might be forwarded.
    RepeatedToken,
    /// The token names a `kid` the provider's key set does not hold.
    UnknownKid,
    /// No key of the provider can verify this `alg` (algorithm confusion: an RSA key asked to
    /// check an HMAC, an EC key of another curve ...).
    NoKeyForAlg,
    /// The provider's keys are not available (remote JWKS never fetched, or too stale).
    KeysUnavailable,
    /// The signature does not verify.
    BadSignature,
    Expired,
    NotYetValid,
    /// `iat` lies in the future, beyond the clock leeway.
    IssuedInFuture,
    /// The provider requires `exp` and the token has none.
    MissingExp,
    /// `aud` names none of the provider's audiences.
    AudienceNotAllowed,
    /// A valid provider's token on a route whose rule does not accept that provider.
    ProviderNotAccepted,
    /// A presented API key is refused (401).
    ApiKey(InvalidApiKey),
    /// The path cannot be normalised safely (400).
    Path(PathRejection),
    /// The Host is not a host name with an optional port, and rules match on hosts (400).
    BadAuthority,
    /// A `deny` rule, or no rule matched and `no_match` is `deny` (403).
    Denied,
    /// A claim the rule requires is missing or has another value (403).
    ClaimMismatch,
    /// Scopes the rule requires are missing (403 `insufficient_scope`); the rule's scopes,
    /// space-separated.
    InsufficientScope(String),
    /// The introspection endpoint says the token is not (or no longer) valid (401).
    Inactive(Inactive),
    /// The introspection endpoint gave no usable answer, and the fail mode is closed (503).
    Introspection(IntrospectionError),
}

impl Rejection {
    /// The metric label: short, fixed, one per variant.
    pub fn label(&self) -> &'static str {
        match self {
            Rejection::Missing => "missing",
            Rejection::TooLarge { .. } => "too_large",
            Rejection::SegmentCount(_) => "malformed",
            Rejection::BadBase64(_) => "bad_base64",
            Rejection::BadJson(_) => "bad_json",
            Rejection::MissingAlg | Rejection::UnsupportedAlg => "unsupported_alg",
            Rejection::AlgNone => "alg_none",
            Rejection::AlgNotAllowed => "alg_not_allowed",
            Rejection::UnsupportedCrit => "unsupported_crit",
            Rejection::BadClaim(_) => "bad_claim",
            Rejection::MissingIssuer | Rejection::UnknownIssuer => "unknown_issuer",
            Rejection::WrongLocation => "wrong_location",
            Rejection::RepeatedToken => "repeated_token",
            Rejection::UnknownKid => "unknown_kid",
            Rejection::NoKeyForAlg => "no_key_for_alg",
            Rejection::KeysUnavailable => "keys_unavailable",
            Rejection::BadSignature => "bad_signature",
            Rejection::Expired => "expired",
            Rejection::NotYetValid => "not_yet_valid",
            Rejection::IssuedInFuture => "iat_in_future",
            Rejection::MissingExp => "missing_exp",
            Rejection::AudienceNotAllowed => "audience",
            Rejection::ProviderNotAccepted => "provider_not_accepted",
            Rejection::ApiKey(invalid) => invalid.reason(),
            Rejection::Path(path) => path.reason(),
            Rejection::BadAuthority => "bad_authority",
            Rejection::Denied => "denied",
            Rejection::ClaimMismatch => "claim_mismatch",
            Rejection::InsufficientScope(_) => "insufficient_scope",
            Rejection::Inactive(inactive) => inactive.reason(),
            Rejection::Introspection(error) => error.reason(),
        }
    }

    /// Every label, for defining metrics once.
    pub const LABELS: [&'static str; 48] = [
        "missing",
        "too_large",
        "malformed",
        "bad_base64",
        "bad_json",
        "unsupported_alg",
        "alg_none",
        "alg_not_allowed",
        "unsupported_crit",
        "bad_claim",
        "unknown_issuer",
        "wrong_location",
        "repeated_token",
        "unknown_kid",
        "no_key_for_alg",
        "keys_unavailable",
        "bad_signature",
        "expired",
        "not_yet_valid",
        "iat_in_future",
        "missing_exp",
        "audience",
        "provider_not_accepted",
        "api_key_unknown",
        "api_key_ambiguous",
        "api_key_too_long",
        "api_key_bad_encoding",
        "path_not_origin_form",
        "path_unencoded_byte",
        "path_invalid_percent_encoding",
        "path_encoded_nul",
        "path_escaped_slash",
        "path_parameters",
        "path_dot_segment_parameters",
        "bad_authority",
        "denied",
        "claim_mismatch",
        "insufficient_scope",
        "token_inactive",
        "token_expired",
        "token_not_yet_valid",
        "token_wrong_issuer",
        "token_wrong_audience",
        "introspection_unreachable",
        "introspection_status",
        "introspection_too_large",
        "introspection_not_json",
        "introspection_invalid",
    ];

    /// What the client (and the log) is told: precise, and free of anything the token carried.
    pub fn description(&self) -> String {
        match self {
            Rejection::Missing => "missing token".to_owned(),
            Rejection::TooLarge { limit } => format!("token is longer than {limit} bytes"),
            Rejection::SegmentCount(5) => "encrypted tokens (JWE) are not accepted".to_owned(),
            Rejection::SegmentCount(n) => {
                format!("token must have 3 dot-separated segments, not {n}")
            }
            Rejection::BadBase64(segment) => {
                format!("token {} is not unpadded base64url", segment.name())
            }
            Rejection::BadJson(segment) => {
                format!("token {} is not a JSON object", segment.name())
            }
            Rejection::MissingAlg => "token header has no alg".to_owned(),
            Rejection::AlgNone => "unsigned tokens (alg none) are not accepted".to_owned(),
            Rejection::UnsupportedAlg => "token alg is not supported".to_owned(),
            Rejection::AlgNotAllowed => "token alg is not allowed for its issuer".to_owned(),
            Rejection::UnsupportedCrit => "token header has unsupported crit extensions".to_owned(),
            Rejection::BadClaim(claim) => format!("token claim {claim} has the wrong type"),
            Rejection::MissingIssuer => "token has no iss claim".to_owned(),
            Rejection::UnknownIssuer => "token issuer is not configured".to_owned(),
            Rejection::WrongLocation => {
                "token is not accepted in this location for its issuer".to_owned()
            }
            Rejection::RepeatedToken => "token is given more than once".to_owned(),
            Rejection::UnknownKid => "token kid matches no key of its issuer".to_owned(),
            Rejection::NoKeyForAlg => "no key of the issuer can verify the token alg".to_owned(),
            Rejection::KeysUnavailable => "the issuer's keys are unavailable".to_owned(),
            Rejection::BadSignature => "token signature is invalid".to_owned(),
            Rejection::Expired => "token is expired".to_owned(),
            Rejection::NotYetValid => "token is not valid yet (nbf)".to_owned(),
            Rejection::IssuedInFuture => "token is issued in the future (iat)".to_owned(),
            Rejection::MissingExp => "token has no exp claim".to_owned(),
            Rejection::AudienceNotAllowed => "token audience is not allowed".to_owned(),
            Rejection::ProviderNotAccepted => {
                "token issuer is not accepted for this route".to_owned()
            }
            Rejection::ApiKey(invalid) => invalid.to_string(),
            Rejection::Path(path) => path.to_string(),
            Rejection::BadAuthority => "the request's host is not a host name and port".to_owned(),
            Rejection::Denied => "access denied".to_owned(),
            Rejection::ClaimMismatch => {
                "a required claim is missing or has another value".to_owned()
            }
            Rejection::InsufficientScope(_) => INSUFFICIENT_SCOPE.to_owned(),
            Rejection::Inactive(inactive) => inactive.to_string(),
            Rejection::Introspection(error) => error.to_string(),
        }
    }

    /// The local reply: 401 with an RFC 6750 challenge. A missing token gets the bare challenge
    /// (RFC 6750 §3.1: no error code when the request carried no credentials); an unavailable
    /// key set is the proxy's fault, so 503, still with no token accepted.
    pub fn reply(&self) -> ErrorReply {
        let description = self.description();
        match self {
            Rejection::Missing => {
                ErrorReply::new(401, description).with_header("www-authenticate", "Bearer")
            }
            Rejection::KeysUnavailable | Rejection::Introspection(_) => {
                ErrorReply::new(503, description)
            }
            Rejection::Path(path) => ErrorReply::new(path.status(), description),
            Rejection::BadAuthority => ErrorReply::new(400, description),
            Rejection::Denied | Rejection::ClaimMismatch => ErrorReply::new(403, description),
            Rejection::InsufficientScope(scopes) => insufficient_scope(scopes),
            _ => {
                let challenge =
                    format!("Bearer error=\"invalid_token\", error_description=\"{description}\"");
                ErrorReply::new(401, description).with_header("www-authenticate", challenge)
            }
        }
    }
}

const INSUFFICIENT_SCOPE: &str = "the token lacks a required scope or claim";

/// A 403 for a verified identity that lacks what a rule requires (RFC 6750 §3.1).
pub fn insufficient_scope(scope: &str) -> ErrorReply {
    let description = INSUFFICIENT_SCOPE;
    let mut challenge =
        format!("Bearer error=\"insufficient_scope\", error_description=\"{description}\"");
    if !scope.is_empty() && scope.bytes().all(is_scope_char) {
        challenge.push_str(&format!(", scope=\"{scope}\""));
    }
    ErrorReply::new(403, description).with_header("www-authenticate", challenge)
}

/// RFC 6750 §3: scope tokens are `%x21 / %x23-5B / %x5D-7E`, separated by spaces.
fn is_scope_char(b: u8) -> bool {
    b == b' ' || b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn invalid_token_reply_carries_the_rfc6750_challenge() {
        let reply = Rejection::Expired.reply();
        assert_eq!(reply.status, 401);
        assert_eq!(
            reply.headers,
            [(
                "www-authenticate".to_owned(),
                "Bearer error=\"invalid_token\", error_description=\"token is expired\"".to_owned()
            )]
        );
        assert_eq!(
            String::from_utf8(reply.body(None)).unwrap(),
            r#"{"error":"token is expired","status":401,"request_id":null}"#
        );
    }

    #[test]
    fn a_missing_token_gets_a_bare_challenge() {
        let reply = Rejection::Missing.reply();
        assert_eq!(reply.status, 401);
        assert_eq!(
            reply.headers,
            [("www-authenticate".to_owned(), "Bearer".to_owned())]
        );
    }

    #[test]
    fn every_label_is_listed_once() {
        let all = [
            Rejection::Missing,
            Rejection::TooLarge { limit: 1 },
            Rejection::SegmentCount(2),
            Rejection::BadBase64(Segment::Header),
            Rejection::BadJson(Segment::Payload),
            Rejection::MissingAlg,
            Rejection::AlgNone,
            Rejection::UnsupportedAlg,
            Rejection::AlgNotAllowed,
            Rejection::UnsupportedCrit,
            Rejection::BadClaim("exp"),
            Rejection::MissingIssuer,
            Rejection::UnknownIssuer,
            Rejection::WrongLocation,
            Rejection::UnknownKid,
            Rejection::NoKeyForAlg,
            Rejection::KeysUnavailable,
            Rejection::BadSignature,
            Rejection::Expired,
            Rejection::NotYetValid,
            Rejection::IssuedInFuture,
            Rejection::MissingExp,
            Rejection::AudienceNotAllowed,
            Rejection::ProviderNotAccepted,
            Rejection::ApiKey(InvalidApiKey::Unknown),
            Rejection::ApiKey(InvalidApiKey::Ambiguous),
            Rejection::ApiKey(InvalidApiKey::TooLong),
            Rejection::ApiKey(InvalidApiKey::BadEncoding),
            Rejection::Path(PathRejection::NotOriginForm),
            Rejection::Path(PathRejection::UnencodedByte),
            Rejection::Path(PathRejection::InvalidPercentEncoding),
            Rejection::Path(PathRejection::EncodedNul),
            Rejection::Path(PathRejection::EscapedSlash),
            Rejection::Path(PathRejection::Parameters),
            Rejection::Path(PathRejection::DotSegmentParameters),
            Rejection::RepeatedToken,
            Rejection::BadAuthority,
            Rejection::Denied,
            Rejection::ClaimMismatch,
            Rejection::InsufficientScope("a b".to_owned()),
            Rejection::Inactive(Inactive::NotActive),
            Rejection::Inactive(Inactive::Expired),
            Rejection::Inactive(Inactive::NotYetValid),
            Rejection::Inactive(Inactive::WrongIssuer),
            Rejection::Inactive(Inactive::WrongAudience),
            Rejection::Introspection(IntrospectionError::Unreachable),
            Rejection::Introspection(IntrospectionError::Status(500)),
            Rejection::Introspection(IntrospectionError::TooLarge { size: 2, max: 1 }),
            Rejection::Introspection(IntrospectionError::NotJson),
            Rejection::Introspection(IntrospectionError::NotAnObject),
            Rejection::Introspection(IntrospectionError::MissingActive),
            Rejection::Introspection(IntrospectionError::InvalidField("aud")),
        ];
        for rejection in &all {
            assert!(
                Rejection::LABELS.contains(&rejection.label()),
                "{rejection:?}"
            );
            // Descriptions go into a quoted-string: no quote or backslash.
            assert!(!rejection.description().contains(['"', '\\']));
        }
        // And every label is some rejection's.
        for label in Rejection::LABELS {
            assert!(all.iter().any(|r| r.label() == label), "{label}");
        }
        let mut labels = Rejection::LABELS.to_vec();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Rejection::LABELS.len());
    }

    #[test]
    fn policy_refusals_have_their_status_and_challenge() {
        let scope = Rejection::InsufficientScope("orders:write".to_owned()).reply();
        assert_eq!(scope.status, 403);
        assert_eq!(
            scope.headers,
            [(
                "www-authenticate".to_owned(),
                "Bearer error=\"insufficient_scope\", error_description=\"the token lacks a \
                 required scope or claim\", scope=\"orders:write\""
                    .to_owned()
            )]
        );
        for (rejection, status) in [
            (Rejection::Denied, 403),
            (Rejection::ClaimMismatch, 403),
            (Rejection::Path(PathRejection::EncodedNul), 400),
            (Rejection::BadAuthority, 400),
            (
                Rejection::Introspection(IntrospectionError::Unreachable),
                503,
            ),
        ] {
            let reply = rejection.reply();
            assert_eq!(reply.status, status, "{rejection:?}");
            assert!(reply.headers.is_empty(), "{rejection:?}");
        }
        let key = Rejection::ApiKey(InvalidApiKey::Unknown).reply();
        assert_eq!(key.status, 401);
        assert_eq!(
            key.headers[0].1,
            "Bearer error=\"invalid_token\", error_description=\"unknown API key\""
        );
    }

    #[test]
    fn insufficient_scope_names_a_well_formed_scope_only() {
        let reply = insufficient_scope("orders:write");
        assert_eq!(reply.status, 403);
        assert!(reply.headers[0].1.ends_with(", scope=\"orders:write\""));
        let hostile = insufficient_scope("a\"b");
        assert!(!hostile.headers[0].1.contains("scope=\""));
    }
}
