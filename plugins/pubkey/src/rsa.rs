//! RSA signature verification (RFC 8017: RSASSA-PKCS1-v1_5 and RSASSA-PSS) on 32-bit
//! Montgomery arithmetic, with the key prepared once.
//!
//! Why not the `rsa` crate: its `modpow` works on 64-bit digits, whose 128-bit products wasm32
//! has no instruction for, so every step is a software multiply; one 2048-bit RS256 check cost
//! about 19.5M Wasm instructions that way, against about 1M here. A verifier only handles public
//! values (key, signature, message), so nothing here needs to run in constant time.

use sha2::Digest;
use thiserror::Error;

use crate::field::{less_than, neg_inverse, sub_assign};

/// The largest modulus accepted, as the `rsa` crate's default (bigger keys make each check
/// cost quadratically more, for no security JWT issuers use).
pub const MAX_RSA_BITS: usize = 4096;

/// The public exponent's range the `rsa` crate enforces: odd, at least 3, below 2^33.
const MAX_EXPONENT: u64 = (1 << 33) - 1;

/// A DigestInfo prefix (RFC 8017 §9.2 note 1): the DER header a PKCS#1 v1.5 signature puts
/// before the hash.
pub const SHA256_PREFIX: &[u8] = &[
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];
pub const SHA384_PREFIX: &[u8] = &[
    0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05,
    0x00, 0x04, 0x30,
];
pub const SHA512_PREFIX: &[u8] = &[
    0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05,
    0x00, 0x04, 0x40,
];

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RsaKeyError {
    #[error("modulus is even")]
    EvenModulus,
    #[error("modulus is longer than {MAX_RSA_BITS} bits")]
    ModulusTooLarge,
    #[error("public exponent is not odd, at least 3 and below 2^33")]
    BadExponent,
    #[error("public exponent is not smaller than the modulus")]
    ExponentNotBelowModulus,
}

/// An RSA public key ready to verify: the modulus as little-endian 32-bit limbs, and the
/// Montgomery constants computed from it.
#[derive(Debug, Clone)]
pub struct RsaKey {
    n: Vec<u32>,
    /// -n^-1 mod 2^32.
    n0_inv: u32,
    /// R^2 mod n, R = 2^(32 * limbs): multiplying by it enters the Montgomery domain.
    r_squared: Vec<u32>,
    e: u64,
    bits: usize,
}

impl RsaKey {
    /// From the big-endian `n` and `e` of a JWK (leading zero bytes allowed).
    pub fn new(n: &[u8], e: &[u8]) -> Result<Self, RsaKeyError> {
        let n = limbs_from_be(n);
        let bits = bit_length(&n);
        if bits > MAX_RSA_BITS {
            return Err(RsaKeyError::ModulusTooLarge);
        }
        let n0 = n.first().copied().unwrap_or(0);
        if n0 & 1 == 0 {
            return Err(RsaKeyError::EvenModulus);
        }
        let e_limbs = limbs_from_be(e);
        let e = match e_limbs.as_slice() {
            [] => 0,
            [low] => u64::from(*low),
            [low, high] => u64::from(*low) | u64::from(*high) << 32,
            _ => u64::MAX,
        };
        if e < 3 || e & 1 == 0 || e > MAX_EXPONENT {
            return Err(RsaKeyError::BadExponent);
        }
        let mut e_wide = vec![0u32; n.len()];
        for (wide, limb) in e_wide.iter_mut().zip(&e_limbs) {
            *wide = *limb;
        }
        if e_limbs.len() > n.len() || !less_than(&e_wide, &n) {
            return Err(RsaKeyError::ExponentNotBelowModulus);
        }
        // 1 doubled 2 * 32 * limbs times, reduced each time: R^2 mod n. Once per key.
        let mut r_squared = vec![0u32; n.len()];
        if let Some(low) = r_squared.first_mut() {
            *low = 1;
        }
        for _ in 0..2 * 32 * n.len() {
            double_mod(&mut r_squared, &n);
        }
        Ok(Self {
            n,
            n0_inv: neg_inverse(n0),
            r_squared,
            e,
            bits,
        })
    }

    /// The modulus's length in bits.
    pub fn bits(&self) -> usize {
        self.bits
    }

    /// The modulus's length in bytes: every signature is exactly this long.
    pub fn size(&self) -> usize {
        self.bits.div_ceil(8)
    }

    /// RSASSA-PKCS1-v1_5 (RFC 8017 §8.2.2) over `digest`, a hash whose DigestInfo header is
    /// `prefix`.
    pub fn verify_pkcs1v15(&self, prefix: &[u8], digest: &[u8], signature: &[u8]) -> bool {
        let Some(encoded) = self.public_operation(signature) else {
            return false;
        };
        let payload = prefix.len() + digest.len();
        // 0x00 0x01, at least 8 bytes of 0xff, 0x00, then DigestInfo.
        let Some(padding) = encoded.len().checked_sub(payload + 3).filter(|&p| p >= 8) else {
            return false;
        };
        let mut bytes = encoded.iter();
        bytes.next() == Some(&0)
            && bytes.next() == Some(&1)
            && bytes.by_ref().take(padding).all(|&b| b == 0xff)
            && bytes.next() == Some(&0)
            && bytes.by_ref().take(prefix.len()).eq(prefix.iter())
            && bytes.eq(digest.iter())
    }

    /// RSASSA-PSS (RFC 8017 §8.1.2, EMSA-PSS with MGF1 on the same hash) over `digest`, with a
    /// salt as long as the hash (RFC 7518 §3.5).
    pub fn verify_pss<D: Digest>(&self, digest: &[u8], signature: &[u8]) -> bool {
        let Some(encoded) = self.public_operation(signature) else {
            return false;
        };
        let hash_len = <D as Digest>::output_size();
        let salt_len = hash_len;
        let em_bits = self.bits.saturating_sub(1);
        let em_len = em_bits.div_ceil(8);
        // I2OSP(m, emLen): when the modulus is one bit past a byte, the first byte must be 0.
        let Some((lead, em)) = encoded.split_at_checked(encoded.len().saturating_sub(em_len))
        else {
            return false;
        };
        if digest.len() != hash_len || lead.iter().any(|&b| b != 0) {
            return false;
        }
        let Some(db_len) = em_len.checked_sub(hash_len + 1) else {
            return false;
        };
        let Some(zeros) = em_len.checked_sub(hash_len + salt_len + 2) else {
            return false;
        };
        let Some((masked_db, rest)) = em.split_at_checked(db_len) else {
            return false;
        };
        let Some((hash, trailer)) = rest.split_at_checked(hash_len) else {
            return false;
        };
        // Bits above emBits in the first byte.
        let unused = 8 * em_len - em_bits;
        let top_mask = 0xffu8 >> unused;
        if trailer != [0xbc] || masked_db.first().is_some_and(|&b| b & !top_mask != 0) {
            return false;
        }
        let mut db = masked_db.to_vec();
        for (counter, chunk) in (0u32..).zip(db.chunks_mut(hash_len)) {
            let mask = D::new()
                .chain_update(hash)
                .chain_update(counter.to_be_bytes())
                .finalize();
            for (byte, mask) in chunk.iter_mut().zip(mask) {
                *byte ^= mask;
            }
        }
        if let Some(first) = db.first_mut() {
            *first &= top_mask;
        }
        let mut bytes = db.iter();
        if !bytes.by_ref().take(zeros).all(|&b| b == 0) || bytes.next() != Some(&1) {
            return false;
        }
        let salt = bytes.as_slice();
        let expected = D::new()
            .chain_update([0u8; 8])
            .chain_update(digest)
            .chain_update(salt)
            .finalize();
        expected.as_slice() == hash
    }

    /// RSAVP1 (RFC 8017 §5.2.2): signature^e mod n as `size()` big-endian bytes; `None` when
    /// the signature is not `size()` bytes or not below n.
    fn public_operation(&self, signature: &[u8]) -> Option<Vec<u8>> {
        if signature.len() != self.size() {
            return None;
        }
        let mut s = limbs_from_be(signature);
        s.resize(self.n.len(), 0);
        if !less_than(&s, &self.n) {
            return None;
        }
        let k = self.n.len();
        let mut base = vec![0u32; k];
        let mut wide = vec![0u32; 2 * k];
        self.montgomery_multiply(&s, &self.r_squared, &mut wide, &mut base);
        let mut acc = base.clone();
        let mut next = vec![0u32; k];
        // Left to right over e's bits below the top one.
        let top = 63 - self.e.leading_zeros();
        for bit in (0..top).rev() {
            self.montgomery_square(&acc, &mut wide, &mut next);
            std::mem::swap(&mut acc, &mut next);
            if self.e >> bit & 1 == 1 {
                self.montgomery_multiply(&acc, &base, &mut wide, &mut next);
                std::mem::swap(&mut acc, &mut next);
            }
        }
        // Multiplying by 1 leaves the Montgomery domain.
        let mut one = vec![0u32; k];
        if let Some(low) = one.first_mut() {
            *low = 1;
        }
        self.montgomery_multiply(&acc, &one, &mut wide, &mut next);
        let mut out = vec![0u8; self.size()];
        for (i, byte) in out.iter_mut().rev().enumerate() {
            let limb = next.get(i / 4).copied().unwrap_or(0);
            *byte = (limb >> (8 * (i % 4))) as u8;
        }
        Some(out)
    }

    /// `out = a * b / R mod n` for `a, b < n`: the whole product into `wide` (twice `a`'s
    /// length), then reduced.
    fn montgomery_multiply(&self, a: &[u32], b: &[u32], wide: &mut [u32], out: &mut [u32]) {
        let k = self.n.len();
        wide.fill(0);
        for (i, &a_i) in a.iter().enumerate() {
            let carry = wide
                .get_mut(i..i + k)
                .map_or(0, |row| multiply_add(row, b, u64::from(a_i)));
            if let Some(w) = wide.get_mut(i + k) {
                *w = carry as u32;
            }
        }
        self.reduce(wide, out);
    }

    /// `out = a * a / R mod n`: each product a_i * a_j with i != j computed once and doubled,
    /// about half a multiplication's work before the reduction. Most of a check is squarings
    /// (16 of 19 steps for e = 65537).
    fn montgomery_square(&self, a: &[u32], wide: &mut [u32], out: &mut [u32]) {
        let k = self.n.len();
        wide.fill(0);
        // Products a_i * a_j for i < j land at i + j.
        for (i, &a_i) in a.iter().enumerate() {
            let (Some(row), Some(rest)) = (wide.get_mut(2 * i + 1..i + k), a.get(i + 1..)) else {
                continue;
            };
            let carry = multiply_add(row, rest, u64::from(a_i));
            if let Some(w) = wide.get_mut(i + k) {
                *w = carry as u32;
            }
        }
        // Doubled, plus the squares a_i^2 at 2i.
        let mut shifted_out = 0u32;
        let mut carry = 0u64;
        for (pair, &a_i) in wide.chunks_exact_mut(2).zip(a) {
            let square = u64::from(a_i) * u64::from(a_i);
            let mut halves = [square as u32, (square >> 32) as u32].into_iter();
            for w in pair.iter_mut() {
                let doubled = u64::from(*w) << 1 | u64::from(shifted_out);
                shifted_out = *w >> 31;
                let sum = (doubled & 0xffff_ffff) + u64::from(halves.next().unwrap_or(0)) + carry;
                *w = sum as u32;
                carry = sum >> 32;
            }
        }
        self.reduce(wide, out);
    }

    /// Montgomery reduction of a product below n * R (SOS): for each low limb, add the multiple
    /// of n that clears it; the high half is then `wide / R`, below 2n.
    fn reduce(&self, wide: &mut [u32], out: &mut [u32]) {
        let k = self.n.len();
        let mut top_carry = 0u64;
        for i in 0..k {
            let Some(&low) = wide.get(i) else {
                return;
            };
            let m = u64::from(low.wrapping_mul(self.n0_inv));
            let carry = wide
                .get_mut(i..i + k)
                .map_or(0, |row| multiply_add(row, &self.n, m));
            if let Some(w) = wide.get_mut(i + k) {
                let sum = u64::from(*w) + carry + top_carry;
                *w = sum as u32;
                top_carry = sum >> 32;
            }
        }
        for (o, &w) in out.iter_mut().zip(wide.iter().skip(k)) {
            *o = w;
        }
        if top_carry != 0 || !less_than(out, &self.n) {
            sub_assign(out, &self.n);
        }
    }
}

/// `row += m * x` (equally long), returning the carry out of the top limb. The inner loop of
/// every multiplication, written four limbs at a time: wasm32 engines do not unroll loops,
/// and this halves the loop overhead per product.
fn multiply_add(row: &mut [u32], x: &[u32], m: u64) -> u64 {
    let (row_quads, row_rest) = row.as_chunks_mut::<4>();
    let (x_quads, x_rest) = x.as_chunks::<4>();
    let mut carry = 0u64;
    for ([t0, t1, t2, t3], [x0, x1, x2, x3]) in row_quads.iter_mut().zip(x_quads) {
        let s0 = u64::from(*t0) + m * u64::from(*x0) + carry;
        *t0 = s0 as u32;
        let s1 = u64::from(*t1) + m * u64::from(*x1) + (s0 >> 32);
        *t1 = s1 as u32;
        let s2 = u64::from(*t2) + m * u64::from(*x2) + (s1 >> 32);
        *t2 = s2 as u32;
        let s3 = u64::from(*t3) + m * u64::from(*x3) + (s2 >> 32);
        *t3 = s3 as u32;
        carry = s3 >> 32;
    }
    for (t, &x) in row_rest.iter_mut().zip(x_rest) {
        let sum = u64::from(*t) + m * u64::from(x) + carry;
        *t = sum as u32;
        carry = sum >> 32;
    }
    carry
}

/// Big-endian bytes to little-endian limbs, without the leading zeros.
fn limbs_from_be(bytes: &[u8]) -> Vec<u32> {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    let bytes = bytes.get(start..).unwrap_or_default();
    bytes
        .rchunks(4)
        .map(|chunk| chunk.iter().fold(0u32, |limb, &b| limb << 8 | u32::from(b)))
        .collect()
}

fn bit_length(limbs: &[u32]) -> usize {
    limbs.iter().rposition(|&limb| limb != 0).map_or(0, |top| {
        32 * top + 32 - limbs.get(top).map_or(0, |l| l.leading_zeros()) as usize
    })
}

/// `x = 2x mod n` for `x < n`.
fn double_mod(x: &mut [u32], n: &[u32]) {
    let mut carry = 0u32;
    for limb in x.iter_mut() {
        let next = *limb >> 31;
        *limb = *limb << 1 | carry;
        carry = next;
    }
    if carry != 0 || !less_than(x, n) {
        sub_assign(x, n);
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use ::rsa::pkcs1::DecodeRsaPrivateKey;
    use ::rsa::traits::PublicKeyParts;
    use jsonwebtoken::{crypto, Algorithm as Jwt, EncodingKey};
    use sha2::{Sha256, Sha384, Sha512};

    const RSA2048: &[u8] = include_bytes!("../testdata/rsa2048_e65537_pkcs1.der");
    const KEYS: [&[u8]; 4] = [
        RSA2048,
        include_bytes!("../testdata/rsa2049_e65537_pkcs1.der"),
        include_bytes!("../testdata/rsa3072_e65537_pkcs1.der"),
        include_bytes!("../testdata/rsa4096_e3_pkcs1.der"),
    ];

    fn public(der: &[u8]) -> (RsaKey, ::rsa::RsaPublicKey) {
        let private = ::rsa::RsaPrivateKey::from_pkcs1_der(der).unwrap();
        let public = private.to_public_key();
        let key = RsaKey::new(&public.n().to_bytes_be(), &public.e().to_bytes_be()).unwrap();
        assert_eq!(key.bits(), public.n().bits());
        (key, public)
    }

    fn sign(der: &[u8], alg: Jwt, message: &[u8]) -> Vec<u8> {
        use base64::Engine;
        let signature = crypto::sign(message, &EncodingKey::from_rsa_der(der), alg).unwrap();
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature)
            .unwrap()
    }

    /// Ours and the `rsa` crate's verdict on one signature, for every algorithm.
    fn verdicts(
        key: &RsaKey,
        reference: &::rsa::RsaPublicKey,
        alg: Jwt,
        message: &[u8],
        sig: &[u8],
    ) -> (bool, bool) {
        use ::rsa::{Pkcs1v15Sign, Pss};
        match alg {
            Jwt::RS256 => (
                key.verify_pkcs1v15(SHA256_PREFIX, &Sha256::digest(message), sig),
                reference
                    .verify(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(message), sig)
                    .is_ok(),
            ),
            Jwt::RS384 => (
                key.verify_pkcs1v15(SHA384_PREFIX, &Sha384::digest(message), sig),
                reference
                    .verify(Pkcs1v15Sign::new::<Sha384>(), &Sha384::digest(message), sig)
                    .is_ok(),
            ),
            Jwt::RS512 => (
                key.verify_pkcs1v15(SHA512_PREFIX, &Sha512::digest(message), sig),
                reference
                    .verify(Pkcs1v15Sign::new::<Sha512>(), &Sha512::digest(message), sig)
                    .is_ok(),
            ),
            Jwt::PS256 => (
                key.verify_pss::<Sha256>(&Sha256::digest(message), sig),
                reference
                    .verify(Pss::new::<Sha256>(), &Sha256::digest(message), sig)
                    .is_ok(),
            ),
            Jwt::PS384 => (
                key.verify_pss::<Sha384>(&Sha384::digest(message), sig),
                reference
                    .verify(Pss::new::<Sha384>(), &Sha384::digest(message), sig)
                    .is_ok(),
            ),
            Jwt::PS512 => (
                key.verify_pss::<Sha512>(&Sha512::digest(message), sig),
                reference
                    .verify(Pss::new::<Sha512>(), &Sha512::digest(message), sig)
                    .is_ok(),
            ),
            _ => unreachable!(),
        }
    }

    const ALGS: [Jwt; 6] = [
        Jwt::RS256,
        Jwt::RS384,
        Jwt::RS512,
        Jwt::PS256,
        Jwt::PS384,
        Jwt::PS512,
    ];

    /// The keys are the sizes the tests rely on: OpenSSL 3 once rounded the 2049-bit key down
    /// to 2048, and PSS's short encoding and the odd limb count went untested.
    #[test]
    fn the_test_keys_have_the_sizes_they_are_named_for() {
        let bits: Vec<usize> = KEYS.iter().map(|der| public(der).0.bits()).collect();
        assert_eq!(bits, [2048, 2049, 3072, 4096]);
    }

    #[test]
    fn signatures_from_an_independent_signer_verify_for_every_key_size_and_algorithm() {
        for der in KEYS {
            let (key, reference) = public(der);
            for alg in ALGS {
                let message = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9";
                let sig = sign(der, alg, message);
                assert_eq!(
                    verdicts(&key, &reference, alg, message, &sig),
                    (true, true),
                    "{alg:?} {} bits",
                    key.bits()
                );
                // The same signature over another message, or under another hash, fails.
                assert_eq!(
                    verdicts(&key, &reference, alg, b"another message", &sig),
                    (false, false)
                );
                let other = if matches!(alg, Jwt::RS256) {
                    Jwt::RS384
                } else {
                    Jwt::RS256
                };
                assert_eq!(
                    verdicts(&key, &reference, other, message, &sig),
                    (false, false)
                );
            }
        }
    }

    #[test]
    fn a_signature_of_the_wrong_length_or_not_below_the_modulus_is_refused() {
        let (key, reference) = public(RSA2048);
        let message = b"m";
        let sig = sign(RSA2048, Jwt::RS256, message);
        let mut longer = vec![0u8];
        longer.extend_from_slice(&sig);
        let modulus = reference.n().to_bytes_be();
        let mut above = modulus.clone();
        if let Some(last) = above.last_mut() {
            *last = last.wrapping_add(2);
        }
        for bad in [
            &sig[1..],
            &longer[..],
            &modulus[..],
            &above[..],
            &[0u8; 256][..],
            &[0xffu8; 256][..],
        ] {
            assert_eq!(
                verdicts(&key, &reference, Jwt::RS256, message, bad),
                (false, false)
            );
            assert_eq!(
                verdicts(&key, &reference, Jwt::PS256, message, bad),
                (false, false)
            );
        }
        let mut one = vec![0u8; 256];
        one[255] = 1;
        assert_eq!(
            verdicts(&key, &reference, Jwt::RS256, message, &one),
            (false, false)
        );
    }

    #[test]
    fn keys_the_rsa_crate_refuses_are_refused() {
        let (_, reference) = public(RSA2048);
        let n = reference.n().to_bytes_be();
        let mut even = n.clone();
        if let Some(last) = even.last_mut() {
            *last &= 0xfe;
        }
        assert_eq!(
            RsaKey::new(&even, &[1, 0, 1]).unwrap_err(),
            RsaKeyError::EvenModulus
        );
        for e in [
            &[][..],
            &[1][..],
            &[2][..],
            &[1, 0, 0][..],
            &[2, 0, 0, 0, 1][..],
        ] {
            assert_eq!(
                RsaKey::new(&n, e).unwrap_err(),
                RsaKeyError::BadExponent,
                "{e:?}"
            );
        }
        // 2^33 - 1 is the largest exponent accepted.
        assert!(RsaKey::new(&n, &[1, 0xff, 0xff, 0xff, 0xff]).is_ok());
        let mut huge = vec![0xffu8; 513];
        huge[0] = 1;
        assert_eq!(
            RsaKey::new(&huge, &[3]).unwrap_err(),
            RsaKeyError::ModulusTooLarge
        );
        // Leading zero bytes in n or e change nothing.
        let mut padded = vec![0u8, 0];
        padded.extend_from_slice(&n);
        assert_eq!(RsaKey::new(&padded, &[0, 1, 0, 1]).unwrap().bits(), 2048);
        assert_eq!(
            RsaKey::new(&[0x0f], &[0x11]).unwrap_err(),
            RsaKeyError::ExponentNotBelowModulus
        );
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(48))]

            /// Any single flipped bit of a valid signature or message turns it down, and on any
            /// signature bytes at all ours agrees with the `rsa` crate.
            #[test]
            fn agrees_with_the_rsa_crate(
                which in 0..KEYS.len(),
                alg in proptest::sample::select(ALGS.to_vec()),
                message in proptest::collection::vec(any::<u8>(), 0..200),
                flip in any::<prop::sample::Index>(),
                noise in proptest::collection::vec(any::<u8>(), 512),
            ) {
                let der = KEYS[which];
                let (key, reference) = public(der);
                let sig = sign(der, alg, &message);
                prop_assert_eq!(verdicts(&key, &reference, alg, &message, &sig), (true, true));
                let mut flipped = sig.clone();
                let bit = flip.index(flipped.len() * 8);
                flipped[bit / 8] ^= 1 << (bit % 8);
                prop_assert_eq!(verdicts(&key, &reference, alg, &message, &flipped), (false, false));
                let random = &noise[..key.size()];
                let (ours, theirs) = verdicts(&key, &reference, alg, &message, random);
                prop_assert_eq!(ours, theirs);
            }
        }
    }
}
