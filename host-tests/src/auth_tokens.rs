//! Signed JWTs and palisade-auth configurations for the auth tests (test host and real Envoy),
//! made with `jsonwebtoken`'s own signers and the test keys in `plugins/auth/testdata/` (never
//! used anywhere else).

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

/// The public keys: kids `rsa-1`, `rsa-2`, `ec256-1`, `ec384-1`, `ed-1`.
pub const JWKS: &str = include_str!("../../plugins/auth/testdata/jwks.json");
pub const RSA: &[u8] = include_bytes!("../../plugins/auth/testdata/rsa_pkcs1.der");
pub const RSA2: &[u8] = include_bytes!("../../plugins/auth/testdata/rsa2_pkcs1.der");
pub const EC256: &[u8] = include_bytes!("../../plugins/auth/testdata/ec256_pkcs8.der");
pub const EC384: &[u8] = include_bytes!("../../plugins/auth/testdata/ec384_pkcs8.der");
pub const ED25519: &[u8] = include_bytes!("../../plugins/auth/testdata/ed25519_pkcs8.der");
/// 64 bytes, base64url: long enough for HS512.
pub const HMAC_SECRET: &str =
    "cGFsaXNhZGUtdGVzdC1obWFjLXNlY3JldC1wYWxpc2FkZS10ZXN0LWhtYWMtc2VjcmV0LXBhbGlzYWRlLXRlcw";
pub const HMAC_SECRET_BYTES: &[u8] =
    b"palisade-test-hmac-secret-palisade-test-hmac-secret-palisade-tes";

pub const ISSUER: &str = "https://idp.example";
pub const AUDIENCE: &str = "api";

/// The JWKS as a JSON value.
pub fn jwks() -> Value {
    serde_json::from_str(JWKS).unwrap_or(Value::Null)
}

/// The JWKS with only the keys whose kid is listed.
pub fn jwks_with(kids: &[&str]) -> Value {
    let mut set = jwks();
    if let Some(keys) = set.get_mut("keys").and_then(Value::as_array_mut) {
        keys.retain(|k| k["kid"].as_str().is_some_and(|kid| kids.contains(&kid)));
    }
    set
}

/// A signing key and the kid the test JWKS pairs with it.
#[derive(Clone)]
pub struct Signer {
    pub alg: jsonwebtoken::Algorithm,
    pub kid: Option<String>,
    pub key: EncodingKey,
}

impl Signer {
    /// The key the test JWKS (or the HMAC secret) pairs with `alg` ("RS256", "ES384" ...).
    pub fn for_alg(alg: &str) -> Signer {
        // A misspelt algorithm is the test's mistake: it must not silently sign RS256.
        let parsed: jsonwebtoken::Algorithm = alg
            .parse()
            .unwrap_or_else(|err| panic!("no such algorithm {alg:?}: {err}"));
        let (key, kid) = match alg {
            "ES256" => (EncodingKey::from_ec_der(EC256), Some("ec256-1")),
            "ES384" => (EncodingKey::from_ec_der(EC384), Some("ec384-1")),
            "EdDSA" => (EncodingKey::from_ed_der(ED25519), Some("ed-1")),
            "HS256" | "HS384" | "HS512" => (EncodingKey::from_secret(HMAC_SECRET_BYTES), None),
            "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" => {
                (EncodingKey::from_rsa_der(RSA), Some("rsa-1"))
            }
            other => panic!("the test JWKS has no key for {other}"),
        };
        Signer {
            alg: parsed,
            kid: kid.map(str::to_owned),
            key,
        }
    }

    pub fn kid(mut self, kid: Option<&str>) -> Signer {
        self.kid = kid.map(str::to_owned);
        self
    }

    pub fn key(mut self, key: EncodingKey) -> Signer {
        self.key = key;
        self
    }

    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = self.kid.clone();
        // An empty token would be refused as missing, passing a test meant for a bad signature.
        encode(&header, claims, &self.key)
            .unwrap_or_else(|err| panic!("cannot sign {:?} with this key: {err}", self.alg))
    }
}

/// Claims valid at `now` (seconds since the epoch) for [`ISSUER`] and [`AUDIENCE`].
pub fn claims(now: u64) -> Value {
    json!({
        "iss": ISSUER,
        "sub": "alice",
        "aud": AUDIENCE,
        "iat": now - 10,
        "exp": now + 600,
        "email": "alice@example.com",
    })
}

/// A palisade-auth configuration with one provider ([`ISSUER`], every public-key algorithm,
/// the inline test JWKS, `email` copied to `x-palisade-claim-email`), merged with `extra`
/// (provider fields).
pub fn config(extra: Value) -> String {
    let mut provider = json!({
        "name": "idp",
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "algorithms": ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"],
        "jwks": {"inline": jwks()},
        "claims_to_headers": [{"claim": "email", "header": "x-palisade-claim-email"}],
    });
    if let (Some(p), Some(extra)) = (provider.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            p.insert(k.clone(), v.clone());
        }
    }
    json!({ "providers": [provider] }).to_string()
}

/// The wall clock in seconds, for tokens sent to real Envoy (whose clock is the real one).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
