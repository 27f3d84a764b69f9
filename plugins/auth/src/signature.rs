//! Signature verification with keys prepared once: an RSA modulus turned into Montgomery
//! constants, an EC point checked on its curve and its multiples tabled, when the key set is
//! loaded, never per request (`jsonwebtoken::decode` rebuilds them from bytes on every call).
//! RSA and ECDSA have their own verifiers (palisade-pubkey), many times faster on wasm32 than
//! the `rsa`, `p256` and `p384` crates; EdDSA uses `ed25519-dalek`, as `jsonwebtoken`'s
//! `rust_crypto` backend does.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha384, Sha512};

use crate::config::Algorithm;
use palisade_pubkey::ecdsa::{Curve, EcdsaKey};
use palisade_pubkey::rsa::{RsaKey, SHA256_PREFIX, SHA384_PREFIX, SHA512_PREFIX};

/// The smallest RSA modulus accepted (RFC 7518 §3.3: 2048 bits or larger MUST be used).
pub const MIN_RSA_BITS: usize = 2048;

/// A public key ready to verify, of one key type.
#[derive(Debug, Clone)]
pub enum PublicKey {
    Rsa(RsaKey),
    /// P-256 or P-384: the curve fixes the algorithm (ES256, ES384).
    Ecdsa(EcdsaKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl PublicKey {
    /// Can this key verify `alg`? An HMAC never can: a public key is not a shared secret (the
    /// classic RS256-to-HS256 confusion).
    pub fn supports(&self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            PublicKey::Rsa(_) => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            PublicKey::Ecdsa(key) => curve_supports(key.curve(), alg),
            PublicKey::Ed25519(_) => alg == EdDSA,
        }
    }

    /// Verifies `signature` over `message`; `false` for any mismatch, including an `alg` the
    /// key does not support.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        use Algorithm::*;
        match (self, alg) {
            (PublicKey::Rsa(key), RS256) => {
                key.verify_pkcs1v15(SHA256_PREFIX, &Sha256::digest(message), signature)
            }
            (PublicKey::Rsa(key), RS384) => {
                key.verify_pkcs1v15(SHA384_PREFIX, &Sha384::digest(message), signature)
            }
            (PublicKey::Rsa(key), RS512) => {
                key.verify_pkcs1v15(SHA512_PREFIX, &Sha512::digest(message), signature)
            }
            // RFC 7518 §3.5: the salt is as long as the hash.
            (PublicKey::Rsa(key), PS256) => {
                key.verify_pss::<Sha256>(&Sha256::digest(message), signature)
            }
            (PublicKey::Rsa(key), PS384) => {
                key.verify_pss::<Sha384>(&Sha384::digest(message), signature)
            }
            (PublicKey::Rsa(key), PS512) => {
                key.verify_pss::<Sha512>(&Sha512::digest(message), signature)
            }
            // JWS carries R || S, not DER (RFC 7518 §3.4); the key hashes with its curve's SHA-2.
            (PublicKey::Ecdsa(key), ES256 | ES384) if self.supports(alg) => {
                key.verify(message, signature)
            }
            (PublicKey::Ed25519(key), EdDSA) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|sig| key.verify_strict(message, &sig).is_ok()),
            _ => false,
        }
    }
}

/// Can a key on `curve` verify `alg`? Each curve has its one JWS algorithm (RFC 7518 §3.4).
pub fn curve_supports(curve: Curve, alg: Algorithm) -> bool {
    match curve {
        Curve::P256 => alg == Algorithm::ES256,
        Curve::P384 => alg == Algorithm::ES384,
    }
}

/// A shared secret for HS256/384/512, from configuration only (never from a JWKS).
#[derive(Clone)]
pub struct HmacSecret(Vec<u8>);

impl std::fmt::Debug for HmacSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacSecret([redacted])")
    }
}

impl HmacSecret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Verifies an HMAC in constant time (`verify_slice`).
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        fn check<M: Mac + hmac::digest::KeyInit>(key: &[u8], message: &[u8], tag: &[u8]) -> bool {
            match <M as Mac>::new_from_slice(key) {
                Ok(mut mac) => {
                    mac.update(message);
                    mac.verify_slice(tag).is_ok()
                }
                Err(_) => false,
            }
        }
        match alg {
            Algorithm::HS256 => check::<Hmac<Sha256>>(&self.0, message, signature),
            Algorithm::HS384 => check::<Hmac<Sha384>>(&self.0, message, signature),
            Algorithm::HS512 => check::<Hmac<Sha512>>(&self.0, message, signature),
            _ => false,
        }
    }
}
