//! Public-key signature checks for JWTs, written for wasm32: the RustCrypto crates' big-number
//! code is generic over 64-bit words, whose 128-bit products wasm32 emulates in software, which
//! made a signature check in Envoy's V8 5-15x slower than Envoy's native `jwt_authn`. Here
//! arithmetic is on 32-bit limbs with 64-bit products, which wasm32 has instructions for: RSA
//! (PKCS#1 v1.5 and PSS) and ECDSA on P-256 and P-384, both in Montgomery form.
//!
//! A crate of its own so that it builds at opt-level 3 while palisade-auth builds for size.
//! Every check is held against the RustCrypto implementation in the tests (signatures from an
//! independent signer verify; any altered bit does not; both agree on arbitrary bytes).

pub mod ecdsa;
mod field;
pub mod rsa;
