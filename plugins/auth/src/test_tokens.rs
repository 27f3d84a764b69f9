//! Signed test tokens, made with `jsonwebtoken`'s own signers (an implementation independent of
//! the verification under test) and the keys in `testdata/`.

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::Value;

use crate::config::Algorithm;

pub const JWKS: &str = include_str!("../testdata/jwks.json");
pub const RSA: &[u8] = include_bytes!("../testdata/rsa_pkcs1.der");
pub const RSA2: &[u8] = include_bytes!("../testdata/rsa2_pkcs1.der");
pub const EC256: &[u8] = include_bytes!("../testdata/ec256_pkcs8.der");
pub const EC384: &[u8] = include_bytes!("../testdata/ec384_pkcs8.der");
pub const ED25519: &[u8] = include_bytes!("../testdata/ed25519_pkcs8.der");
/// 64 bytes, base64url: long enough for HS512.
pub const HMAC_SECRET: &str =
    "cGFsaXNhZGUtdGVzdC1obWFjLXNlY3JldC1wYWxpc2FkZS10ZXN0LWhtYWMtc2VjcmV0LXBhbGlzYWRlLXRlcw";

pub fn hmac_secret_bytes() -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(HMAC_SECRET)
        .unwrap()
}

/// The signing key and kid the test JWKS pairs with `alg`.
pub fn key_for(alg: Algorithm) -> (EncodingKey, Option<&'static str>) {
    use Algorithm::*;
    match alg {
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => {
            (EncodingKey::from_rsa_der(RSA), Some("rsa-1"))
        }
        ES256 => (EncodingKey::from_ec_der(EC256), Some("ec256-1")),
        ES384 => (EncodingKey::from_ec_der(EC384), Some("ec384-1")),
        EdDSA => (EncodingKey::from_ed_der(ED25519), Some("ed-1")),
        HS256 | HS384 | HS512 => (EncodingKey::from_secret(&hmac_secret_bytes()), None),
    }
}

fn jwt_alg(alg: Algorithm) -> jsonwebtoken::Algorithm {
    alg.jose().parse().unwrap()
}

/// A token signed with `alg` by the key the test JWKS pairs with it.
pub fn sign(alg: Algorithm, claims: &Value) -> String {
    let (key, kid) = key_for(alg);
    sign_with(alg, kid, &key, claims)
}

pub fn sign_with(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(jwt_alg(alg));
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, key).unwrap()
}
