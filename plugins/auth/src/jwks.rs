//! A provider's signing keys: a JWKS document (RFC 7517) parsed once into prepared
//! [`PublicKey`]s, and the choice of which keys may check a token.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::Algorithm;
use crate::rejection::Rejection;
use crate::signature::{curve_supports, PublicKey, MIN_RSA_BITS};
use palisade_pubkey::ecdsa::{Curve, EcdsaKey, EcdsaKeyError};
use palisade_pubkey::rsa::RsaKey;

/// JWKS members are base64url; IdPs disagree on padding, so either is read.
const JWK_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The most keys one JWKS may hold: a bound on memory and on keys tried for a token without
/// `kid`.
pub const MAX_KEYS: usize = 64;

/// One usable key of a set.
#[derive(Debug, Clone)]
pub struct SetKey {
    pub kid: Option<String>,
    /// The JWK's `alg`, when it pins one.
    pub alg: Option<Algorithm>,
    pub key: PublicKey,
    /// Names this key across JWKS versions and workers: the verified-token cache records
    /// which key verified a token, and an entry counts only while that key is in the set.
    pub id: KeyId,
}

/// The first 8 bytes of the SHA-256 of a JWK's identifying members (`kty`, `kid`, `alg`,
/// `crv`, `n`, `e`, `x`, `y`): the same JWK gets the same id in every JWKS version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    fn of(jwk: &Map<String, Value>) -> KeyId {
        let mut hash = Sha256::new();
        for member in ["kty", "kid", "alg", "crv", "n", "e", "x", "y"] {
            let value = jwk.get(member).and_then(Value::as_str).unwrap_or_default();
            hash.update(value.len().to_le_bytes());
            hash.update(value.as_bytes());
        }
        KeyId(crate::verified::short_hash(hash))
    }
}

impl SetKey {
    fn verifies(&self, alg: Algorithm) -> bool {
        self.key.supports(alg) && self.alg.is_none_or(|pinned| pinned == alg)
    }
}

/// Why a JWK was left out of a set (for the configuration check and the refresh log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub index: usize,
    pub reason: String,
}

/// Why a whole JWKS document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("not a JWKS document: {0}")]
    NotJwks(String),
    #[error("holds {0} keys, more than {MAX_KEYS}")]
    TooManyKeys(usize),
}

/// The prepared keys of one JWKS version.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<SetKey>,
}

impl KeySet {
    /// Parses a JWKS document. Keys this plugin cannot use for signatures (encryption keys,
    /// symmetric keys, unknown curves, RSA under 2048 bits, malformed members) are skipped and
    /// reported, not fatal: an IdP's JWKS often carries encryption keys too.
    pub fn parse(document: &[u8]) -> Result<(KeySet, Vec<Skipped>), JwksError> {
        // serde_json errors name positions and types, never the document's content.
        let value: Value =
            serde_json::from_slice(document).map_err(|err| JwksError::NotJwks(err.to_string()))?;
        KeySet::from_value(&value)
    }

    /// [`KeySet::parse`] for a document already read as JSON (an inline JWKS). Members are read
    /// by hand rather than through a derived deserializer: the plugin stays small, and a key
    /// it cannot use is skipped with a reason instead of failing the whole set.
    pub fn from_value(document: &Value) -> Result<(KeySet, Vec<Skipped>), JwksError> {
        let (keys, _, skipped) = read(document, Depth::Prepare)?;
        Ok((KeySet { keys }, skipped))
    }

    /// What [`KeySet::from_value`] would make of a document, as the number of usable keys and
    /// the skipped ones, without preparing EC keys' tables (~9M fuel a P-256 key): the
    /// configuration check, after which the engine prepares the keys it keeps.
    pub fn check(document: &Value) -> Result<(usize, Vec<Skipped>), JwksError> {
        let (_, usable, skipped) = read(document, Depth::Check)?;
        Ok((usable, skipped))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys that may check a token with this `kid` and `alg`, as Envoy's `jwt_authn`
    /// chooses them: a key with a `kid` must match the token's; a key without one matches any
    /// token. A token whose `kid` no key carries is [`Rejection::UnknownKid`] (the caller may
    /// refresh a remote set); keys that exist but cannot verify `alg` are algorithm confusion,
    /// [`Rejection::NoKeyForAlg`].
    pub fn candidates<'s>(
        &'s self,
        kid: Option<&'s str>,
        alg: Algorithm,
    ) -> Result<impl Iterator<Item = &'s SetKey> + 's, Rejection> {
        let named = move |key: &&SetKey| match (kid, key.kid.as_deref()) {
            (Some(wanted), Some(has)) => wanted == has,
            _ => true,
        };
        if kid.is_some() && !self.keys.iter().any(|key| named(&key)) {
            return Err(Rejection::UnknownKid);
        }
        if !self.keys.iter().filter(named).any(|key| key.verifies(alg)) {
            return Err(Rejection::NoKeyForAlg);
        }
        Ok(self
            .keys
            .iter()
            .filter(move |key| named(key) && key.verifies(alg)))
    }

    /// Does any key carry this `kid`?
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|key| key.kid.as_deref() == Some(kid))
    }
}

/// How far a JWK is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Depth {
    /// Checked as usable or not; EC keys without their tables.
    Check,
    /// Prepared to verify.
    Prepare,
}

/// The keys of a document (none at [`Depth::Check`]), how many are usable, and the skipped.
fn read(document: &Value, depth: Depth) -> Result<(Vec<SetKey>, usize, Vec<Skipped>), JwksError> {
    let Value::Object(set) = document else {
        return Err(JwksError::NotJwks("not a JSON object".to_owned()));
    };
    let jwks = match set.get("keys") {
        Some(Value::Array(keys)) => keys,
        Some(_) => return Err(JwksError::NotJwks("`keys` is not an array".to_owned())),
        None => return Err(JwksError::NotJwks("missing field `keys`".to_owned())),
    };
    if jwks.len() > MAX_KEYS {
        return Err(JwksError::TooManyKeys(jwks.len()));
    }
    let mut keys = Vec::with_capacity(if depth == Depth::Prepare {
        jwks.len()
    } else {
        0
    });
    let mut usable = 0;
    let mut skipped = Vec::new();
    for (index, jwk) in jwks.iter().enumerate() {
        let prepared = match jwk {
            Value::Object(jwk) => prepare(jwk, depth),
            _ => Err("not a JSON object".to_owned()),
        };
        match prepared {
            Ok(key) => {
                usable += 1;
                keys.extend(key);
            }
            Err(reason) => skipped.push(Skipped { index, reason }),
        }
    }
    Ok((keys, usable, skipped))
}

/// A string member; `Ok(None)` when absent.
fn text<'j>(jwk: &'j Map<String, Value>, name: &str) -> Result<Option<&'j str>, String> {
    match jwk.get(name) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(format!("{name} is not a string")),
    }
}

/// A base64url member that must be there.
fn decode(jwk: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let member = text(jwk, name)?.ok_or_else(|| format!("{name} is missing"))?;
    JWK_BASE64
        .decode(member)
        .map_err(|_| format!("{name} is not base64url"))
}

/// A usable JWK as a key (`None` at [`Depth::Check`]), or why it is not usable.
fn prepare(jwk: &Map<String, Value>, depth: Depth) -> Result<Option<SetKey>, String> {
    if let Some(public_key_use) = text(jwk, "use")? {
        if public_key_use != "sig" {
            return Err("not a signature key (use is not \"sig\")".to_owned());
        }
    }
    match jwk.get("key_ops") {
        None => {}
        Some(Value::Array(ops)) if ops.iter().any(|op| op.as_str() == Some("verify")) => {}
        Some(Value::Array(_)) => return Err("key_ops does not include \"verify\"".to_owned()),
        Some(_) => return Err("key_ops is not an array".to_owned()),
    }
    let alg = match text(jwk, "alg")? {
        None => None,
        Some(alg) => Some(
            Algorithm::from_jose(alg)
                .filter(|alg| !alg.is_hmac())
                .ok_or_else(|| {
                    "alg is not a signature algorithm this plugin verifies".to_owned()
                })?,
        ),
    };
    let key = match text(jwk, "kty")?.unwrap_or_default() {
        "RSA" => {
            let key = RsaKey::new(&decode(jwk, "n")?, &decode(jwk, "e")?)
                .map_err(|err| format!("bad RSA key: {err}"))?;
            if key.bits() < MIN_RSA_BITS {
                return Err(format!("RSA key shorter than {MIN_RSA_BITS} bits"));
            }
            KeyOf::Prepared(PublicKey::Rsa(key))
        }
        "EC" => {
            let x = decode(jwk, "x")?;
            let y = decode(jwk, "y")?;
            let curve = match text(jwk, "crv")? {
                Some("P-256") => Curve::P256,
                Some("P-384") => Curve::P384,
                _ => return Err("unsupported EC curve (P-256 and P-384 are)".to_owned()),
            };
            let unusable = |err| match err {
                EcdsaKeyError::WrongLength(_) => "EC coordinates have the wrong length".to_owned(),
                // Out of the field's range is not a point of the curve either.
                EcdsaKeyError::CoordinateOutOfRange | EcdsaKeyError::NotOnCurve => {
                    "EC point is not on its curve".to_owned()
                }
            };
            match depth {
                Depth::Prepare => KeyOf::Prepared(PublicKey::Ecdsa(
                    EcdsaKey::new(curve, &x, &y).map_err(unusable)?,
                )),
                Depth::Check => {
                    EcdsaKey::check(curve, &x, &y).map_err(unusable)?;
                    KeyOf::Checked(curve)
                }
            }
        }
        "OKP" => {
            if text(jwk, "crv")? != Some("Ed25519") {
                return Err("unsupported OKP curve (Ed25519 is)".to_owned());
            }
            let x: [u8; 32] = decode(jwk, "x")?
                .try_into()
                .map_err(|_| "Ed25519 key is not 32 bytes".to_owned())?;
            KeyOf::Prepared(PublicKey::Ed25519(
                ed25519_dalek::VerifyingKey::from_bytes(&x)
                    .map_err(|_| "Ed25519 key is not a curve point".to_owned())?,
            ))
        }
        "oct" => {
            return Err(
                "symmetric (oct) keys are never read from a JWKS; configure hmac_secret".to_owned(),
            )
        }
        _ => return Err("unsupported key type".to_owned()),
    };
    let kid = text(jwk, "kid")?.map(str::to_owned);
    if let Some(alg) = alg {
        let supported = match &key {
            KeyOf::Prepared(key) => key.supports(alg),
            KeyOf::Checked(curve) => curve_supports(*curve, alg),
        };
        if !supported {
            return Err("alg does not match the key type".to_owned());
        }
    }
    Ok(match key {
        KeyOf::Prepared(key) => Some(SetKey {
            kid,
            alg,
            key,
            id: KeyId::of(jwk),
        }),
        KeyOf::Checked(_) => None,
    })
}

/// A JWK's key as far as [`Depth`] took it.
enum KeyOf {
    Prepared(PublicKey),
    /// An EC key found usable, on this curve.
    Checked(Curve),
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use serde_json::json;

    use super::*;

    const JWKS: &[u8] = include_bytes!("../testdata/jwks.json");

    #[test]
    fn the_test_set_prepares_every_usable_key() {
        let (set, skipped) = KeySet::parse(JWKS).unwrap();
        assert_eq!(set.len(), 5);
        assert!(skipped.is_empty());
        assert!(set.has_kid("rsa-1") && set.has_kid("ed-1") && !set.has_kid("rsa-9"));
        let (weak, skipped) = KeySet::parse(include_bytes!("../testdata/jwks_weak.json")).unwrap();
        assert!(weak.is_empty());
        assert_eq!(
            skipped,
            [Skipped {
                index: 0,
                reason: "RSA key shorter than 2048 bits".into()
            }]
        );
    }

    #[test]
    fn candidates_follow_kid_then_alg() {
        let (set, _) = KeySet::parse(JWKS).unwrap();
        assert_eq!(
            set.candidates(Some("rsa-1"), Algorithm::RS256)
                .unwrap()
                .count(),
            1
        );
        assert_eq!(
            set.candidates(Some("nope"), Algorithm::RS256).err(),
            Some(Rejection::UnknownKid)
        );
        // An RSA key asked to check ES256 is algorithm confusion.
        assert_eq!(
            set.candidates(Some("rsa-1"), Algorithm::ES256).err(),
            Some(Rejection::NoKeyForAlg)
        );
        // Without kid, every key of the right type: two RSA keys for PS256.
        assert_eq!(set.candidates(None, Algorithm::PS256).unwrap().count(), 2);
        assert_eq!(set.candidates(None, Algorithm::ES384).unwrap().count(), 1);
        // No public key ever verifies an HMAC.
        assert_eq!(
            set.candidates(None, Algorithm::HS256).err(),
            Some(Rejection::NoKeyForAlg)
        );
    }

    #[test]
    fn a_key_without_kid_matches_any_token_kid() {
        let doc = br#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
        let (set, skipped) = KeySet::parse(doc).unwrap();
        assert!(skipped.is_empty());
        assert_eq!(
            set.candidates(Some("anything"), Algorithm::EdDSA)
                .unwrap()
                .count(),
            1
        );
    }

    #[test]
    fn unusable_keys_are_skipped_with_a_reason() {
        let doc = br#"{"keys":[
            {"kty":"RSA","use":"enc","n":"AQAB","e":"AQAB"},
            {"kty":"oct","k":"c2VjcmV0"},
            {"kty":"EC","crv":"P-256","x":"AAAA","y":"AAAA"},
            {"kty":"EC","crv":"P-521","x":"AAAA","y":"AAAA"},
            {"kty":"OKP","crv":"Ed25519","x":"AAAA"},
            {"kty":"RSA","alg":"RSA-OAEP","n":"AQAB","e":"AQAB"},
            {"kty":"EC","crv":"P-256","alg":"RS256","x":"AAAA","y":"AAAA"},
            {"kty":"XYZ"}
        ]}"#;
        let (set, skipped) = KeySet::parse(doc).unwrap();
        assert!(set.is_empty());
        let reasons: Vec<&str> = skipped.iter().map(|s| s.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "not a signature key (use is not \"sig\")",
                "symmetric (oct) keys are never read from a JWKS; configure hmac_secret",
                "EC coordinates have the wrong length",
                "unsupported EC curve (P-256 and P-384 are)",
                "Ed25519 key is not 32 bytes",
                "alg is not a signature algorithm this plugin verifies",
                "EC coordinates have the wrong length",
                "unsupported key type",
            ]
        );
    }

    #[test]
    fn ec_points_off_their_curve_or_outside_the_field_are_skipped() {
        // (1, 1) is not on P-256 or P-384; 32 bytes of 0xff are above P-256's prime.
        let one_256 = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAE";
        let above_p256 = "__________________________________________8";
        let one_384 = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB";
        let doc = format!(
            r#"{{"keys":[
                {{"kty":"EC","crv":"P-256","x":"{one_256}","y":"{one_256}"}},
                {{"kty":"EC","crv":"P-256","x":"{above_p256}","y":"{one_256}"}},
                {{"kty":"EC","crv":"P-384","x":"{one_384}","y":"{one_384}"}},
                {{"kty":"EC","crv":"P-384","x":"{one_256}","y":"{one_256}"}}
            ]}}"#
        );
        let (set, skipped) = KeySet::parse(doc.as_bytes()).unwrap();
        assert!(set.is_empty());
        let reasons: Vec<&str> = skipped.iter().map(|s| s.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "EC point is not on its curve",
                "EC point is not on its curve",
                "EC point is not on its curve",
                "EC coordinates have the wrong length",
            ]
        );
    }

    #[test]
    fn a_check_finds_what_preparing_finds() {
        let ec = |x: &str, alg: &str| {
            json!({"kty": "EC", "crv": "P-256", "alg": alg, "x": x,
                   "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"})
        };
        let mixed = json!({"keys": [
                ec("MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4", "ES256"),
                ec("MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4", "ES384"),
                ec("AKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4", "ES256"),
                ec("MKBC", "ES256"),
                {"kty": "EC", "crv": "P-256", "x": 1, "y": "AA"},
                {"kty": "EC", "crv": "P-256", "kid": 7,
                 "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
                 "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"},
        ]});
        let documents = [
            serde_json::from_slice::<Value>(JWKS).unwrap(),
            serde_json::from_str::<Value>(include_str!("../testdata/jwks_weak.json")).unwrap(),
            mixed.clone(),
        ];
        for document in documents {
            let (set, skipped) = KeySet::from_value(&document).unwrap();
            assert_eq!(
                KeySet::check(&document).unwrap(),
                (set.len(), skipped),
                "{document}"
            );
        }
        let (usable, skipped) = KeySet::check(&mixed).unwrap();
        assert_eq!(usable, 1);
        let reasons: Vec<&str> = skipped.iter().map(|s| s.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "alg does not match the key type",
                "EC point is not on its curve",
                "EC coordinates have the wrong length",
                "x is not a string",
                "kid is not a string",
            ]
        );
    }

    #[test]
    fn a_document_that_is_not_a_jwks_is_refused() {
        assert!(matches!(
            KeySet::parse(b"[1,2]"),
            Err(JwksError::NotJwks(_))
        ));
        assert!(matches!(
            KeySet::parse(b"{\"keys\":{}}"),
            Err(JwksError::NotJwks(_))
        ));
        let many = format!(
            "{{\"keys\":[{}]}}",
            vec![r#"{"kty":"XYZ"}"#; MAX_KEYS + 1].join(",")
        );
        assert_eq!(
            KeySet::parse(many.as_bytes()).err(),
            Some(JwksError::TooManyKeys(MAX_KEYS + 1))
        );
    }
}
