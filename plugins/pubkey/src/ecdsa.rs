//! ECDSA signature verification (SEC1 4.1.4, FIPS 186-5 §6.4.2) on the NIST curves P-256 and
//! P-384, as JWS uses them: ES256 is P-256 with SHA-256, ES384 P-384 with SHA-384, and a
//! signature is R || S, each the curve's size (RFC 7518 §3.4).
//!
//! Why not the `p256`/`p384` crates: their field arithmetic works on 64-bit words, whose 128-bit
//! products wasm32 emulates in software; one ES256 check cost about 32M Wasm instructions that
//! way, and costs about 2M here. Here the fields are 32-bit Montgomery arithmetic (`field`), the points Jacobian with the
//! a = -3 doubling, and u1*G + u2*Q one joint (Straus) multiplication over width-w NAF digits
//! with tables of odd multiples in affine form: G's built once per VM (with the curve's first
//! key), Q's when the key is prepared (once per key set). The tables hold the multiples
//! of 2^(jd) G and 2^(jd) Q for 8 parts j of d bits, so a check doubles 32 (P-256) or 48
//! (P-384) times rather than 256 or 384; with ~bits/8 + ~bits/7 mixed additions and a
//! binary inversion of s, it allocates nothing.
//!
//! A verifier only handles public values (key, message, signature), so nothing here runs in
//! constant time; what matters is that nothing is accepted that should not be: ranges are
//! checked, and the point at infinity and equal or opposite points in an addition are handled
//! exactly, not assumed away.

use std::sync::OnceLock;

use sha2::{Digest, Sha256, Sha384};
use thiserror::Error;

use crate::field::{self, from_hex, is_zero, less_than, Modulus};

/// A NIST curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// P-256 (secp256r1), hashed with SHA-256: JWS ES256.
    P256,
    /// P-384 (secp384r1), hashed with SHA-384: JWS ES384.
    P384,
}

impl Curve {
    /// The size in bytes of a coordinate, of r and s, and of the hash.
    pub fn size(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
        }
    }
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum EcdsaKeyError {
    #[error("a coordinate is not {0} bytes")]
    WrongLength(usize),
    #[error("a coordinate is not below the field prime")]
    CoordinateOutOfRange,
    #[error("the point is not on the curve")]
    NotOnCurve,
}

/// An ECDSA public key ready to verify: the odd multiples of its point, in affine form.
#[derive(Clone)]
pub struct EcdsaKey(Key);

#[derive(Clone)]
enum Key {
    P256(Box<Tables<8, Q_TABLE>>),
    P384(Box<Tables<12, Q_TABLE>>),
}

impl std::fmt::Debug for EcdsaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcdsaKey")
            .field("curve", &self.curve())
            .finish_non_exhaustive()
    }
}

impl EcdsaKey {
    /// From the big-endian affine coordinates of a JWK (`x`, `y`), each exactly the curve's
    /// size: refused unless both are below the field prime and the point is on the curve
    /// (the curves have prime order, so that makes it a point of order n, never infinity).
    pub fn new(curve: Curve, x: &[u8], y: &[u8]) -> Result<Self, EcdsaKeyError> {
        Ok(Self(match curve {
            Curve::P256 => Key::P256(Box::new(P256.prepare(x, y)?)),
            Curve::P384 => Key::P384(Box::new(P384.prepare(x, y)?)),
        }))
    }

    /// Checks `x` and `y` as [`EcdsaKey::new`] does, without building the tables a key needs
    /// to verify: for a configuration check, which only needs to know the key is usable.
    pub fn check(curve: Curve, x: &[u8], y: &[u8]) -> Result<(), EcdsaKeyError> {
        match curve {
            Curve::P256 => P256.point(x, y).map(drop),
            Curve::P384 => P384.point(x, y).map(drop),
        }
    }

    pub fn curve(&self) -> Curve {
        match self.0 {
            Key::P256(_) => Curve::P256,
            Key::P384(_) => Curve::P384,
        }
    }

    /// Verifies `signature` (R || S) over `message`, hashed with the curve's SHA-2.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.0 {
            Key::P256(table) => P256.verify(table, &Sha256::digest(message), signature),
            Key::P384(table) => P384.verify(table, &Sha384::digest(message), signature),
        }
    }

    /// Verifies `signature` over a hash computed by the caller, which must be the curve's size.
    pub fn verify_digest(&self, digest: &[u8], signature: &[u8]) -> bool {
        match &self.0 {
            Key::P256(table) => P256.verify(table, digest, signature),
            Key::P384(table) => P384.verify(table, digest, signature),
        }
    }
}

/// NAF width for the key's point: 16 odd multiples, an addition every ~7 bits.
const Q_WINDOW: u32 = 6;
const Q_TABLE: usize = 1 << (Q_WINDOW - 2);
/// NAF width for the generator, whose table is shared: 32 odd multiples, an addition every ~8
/// bits.
const G_WINDOW: u32 = 7;
const G_TABLE: usize = 1 << (G_WINDOW - 2);

/// Room for the NAF digits of a scalar of up to 12 limbs (bits + 1 digits) and the window.
const MAX_DIGITS: usize = 32 * 12 + 8;

/// Scalars are split in this many parts of d = 32N / SPLIT bits: a check doubles d times, not
/// 32N, for tables SPLIT times as large (8 KB per P-256 key, 12 KB per P-384 key).
const SPLIT: usize = 8;

/// Odd multiples P, 3P, 5P, .. of a point.
type Table<const N: usize, const T: usize> = [Affine<N>; T];

/// The odd multiples of 2^(jd) P for each part j.
type Tables<const N: usize, const T: usize> = [Table<N, T>; SPLIT];

/// A curve y^2 = x^3 - 3x + b over the integers mod p, of prime order n.
struct Params<const N: usize> {
    field: Modulus<N>,
    order: Modulus<N>,
    /// b, plain.
    b: [u32; N],
    /// The generator's coordinates, plain.
    g: ([u32; N], [u32; N]),
    g_tables: OnceLock<Option<Box<Tables<N, G_TABLE>>>>,
}

/// The field primes as constants, for their multiplications to be compiled with them: the
/// products with limbs that are 0 or 1, and with -p^-1 mod 2^32 = 1, fold away, and a check
/// costs ~10% fewer instructions than with the modulus read from memory.
const P256_FIELD: Modulus<8> = Modulus::new(from_hex(
    "ffffffff00000001000000000000000000000000ffffffffffffffffffffffff",
));

fn p256_field_mul(a: &[u32; 8], b: &[u32; 8]) -> [u32; 8] {
    P256_FIELD.mul_inline(a, b)
}

const P384_FIELD: Modulus<12> = Modulus::new(from_hex(
    "fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000ffffffff",
));

fn p384_field_mul(a: &[u32; 12], b: &[u32; 12]) -> [u32; 12] {
    P384_FIELD.mul_inline(a, b)
}

/// FIPS 186-5 / SP 800-186 §3.2.1.3.
static P256: Params<8> = Params {
    field: P256_FIELD.with_multiplication(p256_field_mul),
    order: Modulus::new(from_hex(
        "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551",
    )),
    b: from_hex("5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604b"),
    g: (
        from_hex("6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296"),
        from_hex("4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5"),
    ),
    g_tables: OnceLock::new(),
};

/// SP 800-186 §3.2.1.4.
static P384: Params<12> = Params {
    field: P384_FIELD.with_multiplication(p384_field_mul),
    order: Modulus::new(from_hex(
        "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973",
    )),
    b: from_hex(
        "b3312fa7e23ee7e4988e056be3f82d19181d9c6efe8141120314088f5013875ac656398d8a2ed19d2a85c8edd3ec2aef",
    ),
    g: (
        from_hex("aa87ca22be8b05378eb1c71ef320ad746e1d3b628ba79b9859f741e082542a385502f25dbf55296c3a545e3872760ab7"),
        from_hex("3617de4a96262c6f5d9e98bf9292dc29f8f41dbd289a147ce9da3113b5f0b8c00a60b1ce1d7e819d7a431d7c90ea0e5f"),
    ),
    g_tables: OnceLock::new(),
};

/// A point (X, Y, Z) standing for (X/Z^2, Y/Z^3), coordinates in Montgomery form; Z = 0 is the
/// point at infinity.
#[derive(Debug, Clone, Copy)]
struct Jacobian<const N: usize> {
    x: [u32; N],
    y: [u32; N],
    z: [u32; N],
}

/// A finite point (x, y), coordinates in Montgomery form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Affine<const N: usize> {
    x: [u32; N],
    y: [u32; N],
}

impl<const N: usize> Params<N> {
    fn infinity(&self) -> Jacobian<N> {
        Jacobian {
            x: self.field.one,
            y: self.field.one,
            z: [0; N],
        }
    }

    fn jacobian(&self, point: &Affine<N>) -> Jacobian<N> {
        Jacobian {
            x: point.x,
            y: point.y,
            z: self.field.one,
        }
    }

    /// y^2 = x^3 - 3x + b.
    fn on_curve(&self, point: &Affine<N>) -> bool {
        let f = &self.field;
        let x_squared = f.square(&point.x);
        let x_cubed = f.mul(&x_squared, &point.x);
        let three_x = f.add(&f.add(&point.x, &point.x), &point.x);
        let right = f.add(&f.sub(&x_cubed, &three_x), &f.to_montgomery(&self.b));
        f.square(&point.y) == right
    }

    /// 2P, "dbl-2001-b" (3M + 5S) for a = -3. Infinity stays infinity; so would a point with
    /// y = 0 (order 2, which these curves have none of), as Z3 = 2YZ.
    fn double(&self, p: &Jacobian<N>) -> Jacobian<N> {
        if is_zero(&p.z) {
            return *p;
        }
        let f = &self.field;
        let delta = f.square(&p.z);
        let gamma = f.square(&p.y);
        let beta = f.mul(&p.x, &gamma);
        // alpha = 3 (X - delta)(X + delta) = 3X^2 - 3Z^4: 3X^2 + aZ^4 with a = -3.
        let product = f.mul(&f.sub(&p.x, &delta), &f.add(&p.x, &delta));
        let alpha = f.add(&f.add(&product, &product), &product);
        let beta_2 = f.add(&beta, &beta);
        let beta_4 = f.add(&beta_2, &beta_2);
        let beta_8 = f.add(&beta_4, &beta_4);
        let x = f.sub(&f.square(&alpha), &beta_8);
        let y_plus_z = f.add(&p.y, &p.z);
        let z = f.sub(&f.sub(&f.square(&y_plus_z), &gamma), &delta);
        let gamma_squared = f.square(&gamma);
        let gamma_squared_2 = f.add(&gamma_squared, &gamma_squared);
        let gamma_squared_4 = f.add(&gamma_squared_2, &gamma_squared_2);
        let gamma_squared_8 = f.add(&gamma_squared_4, &gamma_squared_4);
        let y = f.sub(&f.mul(&alpha, &f.sub(&beta_4, &x)), &gamma_squared_8);
        Jacobian { x, y, z }
    }

    /// P + Q for an affine Q (8M + 3S), exact in every case: P at infinity gives Q, P = Q
    /// doubles, P = -Q gives infinity.
    fn add_affine(&self, p: &Jacobian<N>, q: &Affine<N>) -> Jacobian<N> {
        if is_zero(&p.z) {
            return self.jacobian(q);
        }
        let f = &self.field;
        let z_squared = f.square(&p.z);
        // Q's coordinates scaled to P's Z.
        let u = f.mul(&q.x, &z_squared);
        let s = f.mul(&q.y, &f.mul(&z_squared, &p.z));
        let h = f.sub(&u, &p.x);
        let r = f.sub(&s, &p.y);
        if is_zero(&h) {
            // Same x: the same point, or opposite ones.
            return if is_zero(&r) {
                self.double(p)
            } else {
                self.infinity()
            };
        }
        let h_squared = f.square(&h);
        let h_cubed = f.mul(&h_squared, &h);
        let v = f.mul(&p.x, &h_squared);
        let x = f.sub(&f.sub(&f.square(&r), &h_cubed), &f.add(&v, &v));
        let y = f.sub(&f.mul(&r, &f.sub(&v, &x)), &f.mul(&p.y, &h_cubed));
        let z = f.mul(&p.z, &h);
        Jacobian { x, y, z }
    }

    fn negate(&self, point: &Affine<N>) -> Affine<N> {
        Affine {
            x: point.x,
            y: self.field.sub(&[0; N], &point.y),
        }
    }

    /// Points to affine form with one inversion (Montgomery's trick); `None` if any is at
    /// infinity. Only when tables are built: it allocates.
    fn to_affine(&self, points: &[Jacobian<N>]) -> Option<Vec<Affine<N>>> {
        let f = &self.field;
        // before[i] = Z_0 * .. * Z_(i-1).
        let mut before = Vec::with_capacity(points.len());
        let mut running = f.one;
        for point in points {
            if is_zero(&point.z) {
                return None;
            }
            before.push(running);
            running = f.mul(&running, &point.z);
        }
        // (Z_0 * .. * Z_i)^-1, from the last i down.
        let mut inverse = f.invert(&running);
        let mut out = vec![
            Affine {
                x: [0; N],
                y: [0; N],
            };
            points.len()
        ];
        for ((slot, point), before) in out.iter_mut().zip(points).zip(&before).rev() {
            let z_inverse = f.mul(&inverse, before);
            inverse = f.mul(&inverse, &point.z);
            let z_inverse_squared = f.square(&z_inverse);
            slot.x = f.mul(&point.x, &z_inverse_squared);
            slot.y = f.mul(&point.y, &f.mul(&z_inverse_squared, &z_inverse));
        }
        Some(out)
    }

    /// The tables of B_j = 2^(jd) P for j < SPLIT, d = 32N / SPLIT bits: the odd multiples
    /// B_j, 3B_j, .., (2T - 1)B_j. `None` only if a point were at infinity, which for a point
    /// of prime order n, with multiples far below n, cannot be.
    fn tables<const T: usize>(&self, point: &Affine<N>) -> Option<Tables<N, T>> {
        let mut bases = [self.infinity(); SPLIT];
        let mut current = self.jacobian(point);
        for base in bases.iter_mut() {
            *base = current;
            for _ in 0..32 * N / SPLIT {
                current = self.double(&current);
            }
        }
        let bases = self.to_affine(&bases)?;
        let twice: Vec<Jacobian<N>> = bases
            .iter()
            .map(|base| self.double(&self.jacobian(base)))
            .collect();
        let twice = self.to_affine(&twice)?;
        let mut multiples = Vec::with_capacity(SPLIT * T);
        for (base, twice) in bases.iter().zip(&twice) {
            let mut current = self.jacobian(base);
            for _ in 0..T {
                multiples.push(current);
                current = self.add_affine(&current, twice);
            }
        }
        let multiples = self.to_affine(&multiples)?;
        if multiples.len() != SPLIT * T {
            return None;
        }
        let mut tables = [[Affine {
            x: [0; N],
            y: [0; N],
        }; T]; SPLIT];
        for (slot, point) in tables.iter_mut().flatten().zip(multiples) {
            *slot = point;
        }
        Some(tables)
    }

    fn g_tables(&self) -> Option<&Tables<N, G_TABLE>> {
        self.g_tables
            .get_or_init(|| {
                let f = &self.field;
                let g = Affine {
                    x: f.to_montgomery(&self.g.0),
                    y: f.to_montgomery(&self.g.1),
                };
                self.tables(&g).map(Box::new)
            })
            .as_deref()
    }

    fn prepare(&self, x: &[u8], y: &[u8]) -> Result<Tables<N, Q_TABLE>, EcdsaKeyError> {
        let point = self.point(x, y)?;
        // G's tables too, if this is the curve's first key: at configuration, not in the first
        // request that checks a signature.
        let _ = self.g_tables();
        self.tables(&point).ok_or(EcdsaKeyError::NotOnCurve)
    }

    /// The point (x, y) in Montgomery form, if both are below p and it is on the curve.
    fn point(&self, x: &[u8], y: &[u8]) -> Result<Affine<N>, EcdsaKeyError> {
        let (Some(x), Some(y)) = (field::from_be_bytes(x), field::from_be_bytes(y)) else {
            return Err(EcdsaKeyError::WrongLength(4 * N));
        };
        let f = &self.field;
        if !less_than(&x, &f.m) || !less_than(&y, &f.m) {
            return Err(EcdsaKeyError::CoordinateOutOfRange);
        }
        let point = Affine {
            x: f.to_montgomery(&x),
            y: f.to_montgomery(&y),
        };
        if !self.on_curve(&point) {
            return Err(EcdsaKeyError::NotOnCurve);
        }
        Ok(point)
    }

    /// u1 * G + u2 * Q (Straus): each scalar's NAF digit i is digit * 2^(i mod d) B_(i div d),
    /// so one chain of d doublings serves all the bases, each adding its digits from its table
    /// on the way. The top digit, i = 32N (a NAF is one digit longer than its number), falls to
    /// the last base at d. `None` only if a table or digit is missing, which cannot be.
    fn mul_add(
        &self,
        u1: &[u32; N],
        u2: &[u32; N],
        q_tables: &Tables<N, Q_TABLE>,
    ) -> Option<Jacobian<N>> {
        let g_tables = self.g_tables()?;
        let g_digits = naf(u1, G_WINDOW)?;
        let q_digits = naf(u2, Q_WINDOW)?;
        let d = 32 * N / SPLIT;
        let mut sum = self.infinity();
        for t in (0..=d).rev() {
            sum = self.double(&sum);
            for (j, (g_table, q_table)) in g_tables.iter().zip(q_tables).enumerate() {
                if t == d && j + 1 != SPLIT {
                    // Digit d * (j + 1): the next base's first.
                    continue;
                }
                let i = d * j + t;
                let g_digit = *g_digits.get(i)?;
                if g_digit != 0 {
                    sum = self.add_affine(&sum, &self.select(g_table, g_digit)?);
                }
                let q_digit = *q_digits.get(i)?;
                if q_digit != 0 {
                    sum = self.add_affine(&sum, &self.select(q_table, q_digit)?);
                }
            }
        }
        Some(sum)
    }

    /// digit * P from the odd multiples of P, for an odd digit.
    fn select<const T: usize>(&self, table: &Table<N, T>, digit: i8) -> Option<Affine<N>> {
        let point = table.get(usize::from(digit.unsigned_abs() >> 1))?;
        Some(if digit < 0 {
            self.negate(point)
        } else {
            *point
        })
    }

    /// SEC1 4.1.4 steps 1 and 4-8 over the hash `digest`, for the key `q_tables`.
    fn verify(&self, q_tables: &Tables<N, Q_TABLE>, digest: &[u8], signature: &[u8]) -> bool {
        let (n, f) = (&self.order, &self.field);
        let Some((r, s)) = signature.split_at_checked(4 * N) else {
            return false;
        };
        let (Some(r), Some(s), Some(mut e)) = (
            field::from_be_bytes::<N>(r),
            field::from_be_bytes::<N>(s),
            field::from_be_bytes::<N>(digest),
        ) else {
            return false;
        };
        // r and s in [1, n - 1].
        if is_zero(&r) || is_zero(&s) || !less_than(&r, &n.m) || !less_than(&s, &n.m) {
            return false;
        }
        // The hash, as long as n, as an integer mod n: below 2^(32N) < 2n, so at most one
        // subtraction.
        if !less_than(&e, &n.m) {
            e = field::sub(&e, &n.m).0;
        }
        // w = s^-1 in Montgomery form (wR); e and r plain, so e * wR / R = e * w plain.
        let w = n.to_montgomery(&n.invert_plain(&s));
        let u1 = n.mul(&e, &w);
        let u2 = n.mul(&r, &w);
        let Some(point) = self.mul_add(&u1, &u2, q_tables) else {
            return false;
        };
        if is_zero(&point.z) {
            return false;
        }
        // x = X / Z^2 in [0, p); x mod n = r means x = r, or x = r + n if that is below p
        // (p < 2n). Compared as X = x Z^2, without an inversion.
        let z_squared = f.square(&point.z);
        if f.mul(&f.to_montgomery(&r), &z_squared) == point.x {
            return true;
        }
        let (r_plus_n, carry) = field::add(&r, &n.m);
        !carry
            && less_than(&r_plus_n, &f.m)
            && f.mul(&f.to_montgomery(&r_plus_n), &z_squared) == point.x
    }
}

/// The width-`w` NAF of `k`: digits odd and below 2^(w-1) in size, or 0, at least w - 1 zeros
/// after each nonzero one, `k = sum digit_i 2^i`; index i is the digit of 2^i. `None` only if
/// the digits did not fit, which for `w` up to 8 they do.
fn naf<const N: usize>(k: &[u32; N], w: u32) -> Option<[i8; MAX_DIGITS]> {
    let bit = |i: usize| -> u32 { k.get(i / 32).map_or(0, |limb| limb >> (i % 32) & 1) };
    let bits = |i: usize| -> u32 {
        let low = u64::from(k.get(i / 32).copied().unwrap_or(0));
        let high = u64::from(k.get(i / 32 + 1).copied().unwrap_or(0));
        ((low | high << 32) >> (i % 32)) as u32 & ((1 << w) - 1)
    };
    let mut digits = [0i8; MAX_DIGITS];
    // Whether 2^i is still to be added to the part of k at and above i.
    let mut carry = 0u32;
    let mut i = 0;
    while i < 32 * N || carry != 0 {
        if bit(i) == carry {
            // Bit plus carry is even (0 or 2): a zero digit, the carry moves up unchanged.
            i += 1;
            continue;
        }
        // Odd: take the window at i, in (-2^(w-1), 2^(w-1)), and carry what that leaves.
        let window = bits(i) + carry;
        carry = window >> (w - 1) & 1;
        let digit = window as i32 - (carry << w) as i32;
        *digits.get_mut(i)? = i8::try_from(digit).ok()?;
        i += w as usize;
    }
    // A NAF is at most one digit longer than its number, and the caller counts on it.
    if digits.iter().skip(32 * N + 1).any(|&digit| digit != 0) {
        return None;
    }
    Some(digits)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    use p256::ecdsa::signature::{Signer as _, Verifier as _};
    use p256::elliptic_curve::ops::Reduce;
    use p256::elliptic_curve::point::AffineCoordinates;
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use p256::elliptic_curve::PrimeField;

    /// A signing key of the reference crates, from fixed bytes.
    #[derive(Clone)]
    enum Signer {
        P256(p256::ecdsa::SigningKey),
        P384(p384::ecdsa::SigningKey),
    }

    impl Signer {
        fn new(curve: Curve, seed: u64) -> Self {
            let bytes = sha2::Sha512::digest(seed.to_le_bytes());
            match curve {
                Curve::P256 => {
                    Self::P256(p256::ecdsa::SigningKey::from_slice(&bytes[..32]).unwrap())
                }
                Curve::P384 => {
                    Self::P384(p384::ecdsa::SigningKey::from_slice(&bytes[..48]).unwrap())
                }
            }
        }

        fn curve(&self) -> Curve {
            match self {
                Self::P256(_) => Curve::P256,
                Self::P384(_) => Curve::P384,
            }
        }

        /// The public point's x and y, big-endian.
        fn coordinates(&self) -> (Vec<u8>, Vec<u8>) {
            match self {
                Self::P256(key) => {
                    let point = key.verifying_key().to_encoded_point(false);
                    (point.x().unwrap().to_vec(), point.y().unwrap().to_vec())
                }
                Self::P384(key) => {
                    let point = key.verifying_key().to_encoded_point(false);
                    (point.x().unwrap().to_vec(), point.y().unwrap().to_vec())
                }
            }
        }

        fn key(&self) -> EcdsaKey {
            let (x, y) = self.coordinates();
            let key = EcdsaKey::new(self.curve(), &x, &y).unwrap();
            assert_eq!(key.curve(), self.curve());
            key
        }

        fn sign(&self, message: &[u8]) -> Vec<u8> {
            match self {
                Self::P256(key) => {
                    let signature: p256::ecdsa::Signature = key.sign(message);
                    signature.to_bytes().to_vec()
                }
                Self::P384(key) => {
                    let signature: p384::ecdsa::Signature = key.sign(message);
                    signature.to_bytes().to_vec()
                }
            }
        }

        /// The reference crate's verdict.
        fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
            match self {
                Self::P256(key) => p256::ecdsa::Signature::from_slice(signature)
                    .is_ok_and(|sig| key.verifying_key().verify(message, &sig).is_ok()),
                Self::P384(key) => p384::ecdsa::Signature::from_slice(signature)
                    .is_ok_and(|sig| key.verifying_key().verify(message, &sig).is_ok()),
            }
        }
    }

    const CURVES: [Curve; 2] = [Curve::P256, Curve::P384];

    /// Ours and the reference's verdict.
    fn verdicts(signer: &Signer, key: &EcdsaKey, message: &[u8], sig: &[u8]) -> (bool, bool) {
        (key.verify(message, sig), signer.verifies(message, sig))
    }

    #[test]
    fn signatures_of_the_reference_signer_verify_and_no_altered_bit_does() {
        for curve in CURVES {
            for seed in 0..3 {
                let signer = Signer::new(curve, seed);
                let key = signer.key();
                let message = b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9";
                let sig = signer.sign(message);
                assert_eq!(sig.len(), 2 * curve.size());
                assert_eq!(verdicts(&signer, &key, message, &sig), (true, true));
                assert_eq!(
                    verdicts(&signer, &key, b"", &signer.sign(b"")),
                    (true, true)
                );
                // Another key, or another message.
                let other = Signer::new(curve, seed + 100);
                assert!(!other.key().verify(message, &sig));
                assert_eq!(verdicts(&signer, &key, b"another", &sig), (false, false));
                for bit in 0..sig.len() * 8 {
                    let mut flipped = sig.clone();
                    flipped[bit / 8] ^= 1 << (bit % 8);
                    assert!(
                        !key.verify(message, &flipped),
                        "{curve:?} signature bit {bit}"
                    );
                }
                for bit in 0..message.len() * 8 {
                    let mut flipped = message.to_vec();
                    flipped[bit / 8] ^= 1 << (bit % 8);
                    assert!(!key.verify(&flipped, &sig), "{curve:?} message bit {bit}");
                }
                // Truncated, extended, or checked on the other curve.
                assert!(!key.verify(message, &sig[..sig.len() - 1]));
                assert!(!key.verify(message, &[&sig[..], &[0]].concat()));
                assert!(!key.verify(message, &[]));
                let digest = match curve {
                    Curve::P256 => Sha256::digest(message).to_vec(),
                    Curve::P384 => Sha384::digest(message).to_vec(),
                };
                assert!(key.verify_digest(&digest, &sig));
                assert!(!key.verify_digest(&digest[1..], &sig));
            }
        }
    }

    /// The group order n of a curve, big-endian.
    fn order(curve: Curve) -> Vec<u8> {
        match curve {
            Curve::P256 => limbs_to_be(&P256.order.m),
            Curve::P384 => limbs_to_be(&P384.order.m),
        }
    }

    fn limbs_to_be<const N: usize>(limbs: &[u32; N]) -> Vec<u8> {
        limbs
            .iter()
            .rev()
            .flat_map(|limb| limb.to_be_bytes())
            .collect()
    }

    /// `a - b` for big-endian `a >= b` of the same length.
    fn difference(a: &[u8], b: &[u8]) -> Vec<u8> {
        let mut out = a.to_vec();
        let mut borrow = 0i16;
        for (d, &b) in out.iter_mut().zip(b).rev() {
            let value = i16::from(*d) - i16::from(b) - borrow;
            *d = value.rem_euclid(256) as u8;
            borrow = i16::from(value < 0);
        }
        assert_eq!(borrow, 0);
        out
    }

    /// `value + delta` as big-endian bytes of the same length (wrapping).
    fn plus(value: &[u8], delta: i64) -> Vec<u8> {
        let mut out = value.to_vec();
        let mut carry = delta as i128;
        for byte in out.iter_mut().rev() {
            let sum = i128::from(*byte) + carry;
            *byte = sum.rem_euclid(256) as u8;
            carry = sum.div_euclid(256);
        }
        out
    }

    #[test]
    fn r_or_s_of_zero_or_not_below_n_is_rejected() {
        for curve in CURVES {
            let signer = Signer::new(curve, 7);
            let key = signer.key();
            let message = b"m";
            let sig = signer.sign(message);
            let (r, s) = sig.split_at(curve.size());
            let n = order(curve);
            let zero = vec![0u8; curve.size()];
            let ones = vec![0xffu8; curve.size()];
            let (zero, ones, n_plus_1) = (zero.as_slice(), ones.as_slice(), plus(&n, 1));
            let n = n.as_slice();
            for (bad_r, bad_s) in [
                (zero, s),
                (r, zero),
                (n, s),
                (r, n),
                (&n_plus_1[..], s),
                (r, &n_plus_1[..]),
                (ones, s),
                (r, ones),
                (zero, zero),
            ] {
                let bad = [bad_r, bad_s].concat();
                assert_eq!(verdicts(&signer, &key, message, &bad), (false, false));
            }
            // (r, n - s) is the same signature (R's y negated): JWS does not ask for low S,
            // and neither verifier does.
            let high_s = [r, &difference(n, s)].concat();
            assert_eq!(verdicts(&signer, &key, message, &high_s), (true, true));
            // s = n - 1 is in range, and wrong.
            let last = [r, &plus(n, -1)].concat();
            assert_eq!(verdicts(&signer, &key, message, &last), (false, false));
        }
    }

    #[test]
    fn keys_off_the_curve_out_of_range_or_of_the_wrong_length_are_refused() {
        // A configuration check refuses exactly what preparing the key refuses.
        let refused = |curve, x: &[u8], y: &[u8]| {
            let error = EcdsaKey::new(curve, x, y).unwrap_err();
            assert_eq!(EcdsaKey::check(curve, x, y), Err(error.clone()));
            error
        };
        for curve in CURVES {
            let signer = Signer::new(curve, 3);
            let (x, y) = signer.coordinates();
            let size = curve.size();
            let p = match curve {
                Curve::P256 => limbs_to_be(&P256.field.m),
                Curve::P384 => limbs_to_be(&P384.field.m),
            };
            for (bad_x, bad_y) in [(&x[1..], &y[..]), (&x[..], &y[1..]), (&[][..], &[][..])] {
                assert_eq!(
                    refused(curve, bad_x, bad_y),
                    EcdsaKeyError::WrongLength(size)
                );
            }
            let longer = [&[0u8][..], &x].concat();
            assert_eq!(
                refused(curve, &longer, &y),
                EcdsaKeyError::WrongLength(size)
            );
            let ones = vec![0xffu8; size];
            for (bad_x, bad_y) in [(&p, &y), (&x, &p), (&ones, &y), (&x, &ones)] {
                assert_eq!(
                    refused(curve, bad_x, bad_y),
                    EcdsaKeyError::CoordinateOutOfRange
                );
            }
            let zero = vec![0u8; size];
            for (bad_x, bad_y) in [
                (x.clone(), plus(&y, 1)),
                (plus(&x, 1), y.clone()),
                (zero.clone(), zero.clone()),
                (x.clone(), zero.clone()),
            ] {
                assert_eq!(refused(curve, &bad_x, &bad_y), EcdsaKeyError::NotOnCurve);
            }
            // -Q = (x, p - y) is on the curve, and is another key.
            let minus_y = difference(&p, &y);
            let negated = EcdsaKey::new(curve, &x, &minus_y).unwrap();
            assert_eq!(EcdsaKey::check(curve, &x, &minus_y), Ok(()));
            assert_eq!(EcdsaKey::check(curve, &x, &y), Ok(()));
            let sig = signer.sign(b"m");
            assert!(signer.key().verify(b"m", &sig));
            assert!(!negated.verify(b"m", &sig));
        }
    }

    #[test]
    fn the_fips_186_4_vectors_verify() {
        fn hex(text: &str) -> Vec<u8> {
            (0..text.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
                .collect()
        }
        let vectors = include_str!("../testdata/ecdsa_fips186_4.txt");
        let mut count = 0;
        for line in vectors.lines().filter(|line| !line.starts_with('#')) {
            let fields: Vec<&str> = line.split(' ').collect();
            let [curve, x, y, digest, r, s] = fields[..] else {
                panic!("bad line {line}");
            };
            let curve = match curve {
                "P-256" => Curve::P256,
                "P-384" => Curve::P384,
                _ => panic!("{curve}"),
            };
            let key = EcdsaKey::new(curve, &hex(x), &hex(y)).unwrap();
            let sig = [hex(r), hex(s)].concat();
            assert!(key.verify_digest(&hex(digest), &sig), "{line}");
            let mut other = hex(digest);
            other[0] ^= 0x80;
            assert!(!key.verify_digest(&other, &sig), "{line}");
            count += 1;
        }
        assert_eq!(count, 30);
    }

    /// u1 * G + u2 * Q in plain affine coordinates, `None` at infinity.
    fn combination<const N: usize>(
        params: &Params<N>,
        u1: &[u32; N],
        u2: &[u32; N],
        q: &Tables<N, Q_TABLE>,
    ) -> Option<Vec<u8>> {
        let point = params.mul_add(u1, u2, q).unwrap();
        let affine = params.to_affine(&[point])?[0];
        let f = &params.field;
        Some(
            [
                limbs_to_be(&f.plain(&affine.x)),
                limbs_to_be(&f.plain(&affine.y)),
            ]
            .concat(),
        )
    }

    fn limbs_of<const N: usize>(bytes: &[u8]) -> [u32; N] {
        field::from_be_bytes(bytes).unwrap()
    }

    #[test]
    fn point_multiplication_matches_the_reference() {
        use p256::{ProjectivePoint as P, Scalar as S};
        let signer = Signer::new(Curve::P256, 1);
        let Key::P256(q_table) = &signer.key().0 else {
            unreachable!()
        };
        let Signer::P256(signing) = &signer else {
            unreachable!()
        };
        let q = P::from(*signing.verifying_key().as_affine());
        let uncompressed = |point: P| -> Option<Vec<u8>> {
            let encoded = point.to_affine().to_encoded_point(false);
            encoded
                .x()
                .map(|x| [x.to_vec(), encoded.y().unwrap().to_vec()].concat())
        };
        let random = |seed: u64| -> S {
            <S as Reduce<p256::U256>>::reduce_bytes(&Sha256::digest(seed.to_le_bytes()))
        };
        let mut scalars: Vec<S> = (0..64).map(random).collect();
        scalars.extend((0..40u64).map(S::from));
        scalars.extend([-S::ONE, -S::from(2u64), S::from(2u64).invert().unwrap()]);
        for (i, &k) in scalars.iter().enumerate() {
            let k_limbs = limbs_of::<8>(&k.to_repr());
            let zero = [0u32; 8];
            assert_eq!(
                combination(&P256, &k_limbs, &zero, q_table),
                uncompressed(P::GENERATOR * k),
                "k = {k:?}"
            );
            assert_eq!(
                combination(&P256, &zero, &k_limbs, q_table),
                uncompressed(q * k),
                "k = {k:?}"
            );
            let other = scalars[(i * 7 + 3) % scalars.len()];
            assert_eq!(
                combination(&P256, &k_limbs, &limbs_of(&other.to_repr()), q_table),
                uncompressed(P::GENERATOR * k + q * other),
                "k = {k:?}, other = {other:?}"
            );
        }
    }

    #[test]
    fn p384_point_multiplication_matches_the_reference() {
        use p384::{ProjectivePoint as P, Scalar as S};
        let signer = Signer::new(Curve::P384, 1);
        let Key::P384(q_table) = &signer.key().0 else {
            unreachable!()
        };
        let Signer::P384(signing) = &signer else {
            unreachable!()
        };
        let q = P::from(*signing.verifying_key().as_affine());
        let uncompressed = |point: P| -> Option<Vec<u8>> {
            let encoded = point.to_affine().to_encoded_point(false);
            encoded
                .x()
                .map(|x| [x.to_vec(), encoded.y().unwrap().to_vec()].concat())
        };
        let random = |seed: u64| -> S {
            <S as Reduce<p384::U384>>::reduce_bytes(&Sha384::digest(seed.to_le_bytes()))
        };
        let mut scalars: Vec<S> = (0..32).map(random).collect();
        scalars.extend((0..20u64).map(S::from));
        scalars.push(-S::ONE);
        for (i, &k) in scalars.iter().enumerate() {
            let other = scalars[(i * 7 + 3) % scalars.len()];
            assert_eq!(
                combination(
                    &P384,
                    &limbs_of(&k.to_repr()),
                    &limbs_of(&other.to_repr()),
                    q_table
                ),
                uncompressed(P::GENERATOR * k + q * other),
                "k = {k:?}, other = {other:?}"
            );
        }
    }

    /// With Q = G (private key 1) and a hash e equal to r, u1 = u2 and the two tables' digits
    /// are the same: the first addition adds a point to itself. With e = -r, u1 * G = -(u2 * Q)
    /// and the sum is infinity. Both agree with the reference.
    #[test]
    fn equal_and_opposite_points_in_the_joint_multiplication() {
        use p256::Scalar as S;
        let (gx, gy) = (limbs_to_be(&P256.g.0), limbs_to_be(&P256.g.1));
        let key = EcdsaKey::new(Curve::P256, &gx, &gy).unwrap();
        let signing = p256::ecdsa::SigningKey::from_slice(&S::ONE.to_repr()).unwrap();
        let reference = signing.verifying_key();
        for seed in 0..8u64 {
            let k = <S as Reduce<p256::U256>>::reduce_bytes(&Sha256::digest(seed.to_le_bytes()));
            let r_bytes = (p256::ProjectivePoint::GENERATOR * k).to_affine().x();
            let r = <S as Reduce<p256::U256>>::reduce_bytes(&r_bytes);
            // s = k^-1 (e + r d) with d = 1 and e = r.
            let s = k.invert().unwrap() * (r + r);
            let sig = [r.to_repr().to_vec(), s.to_repr().to_vec()].concat();
            let signature = p256::ecdsa::Signature::from_slice(&sig).unwrap();
            assert!(key.verify_digest(&r.to_repr(), &sig), "seed {seed}");
            assert!(reference.verify_prehash(&r.to_repr(), &signature).is_ok());
            // e = -r: R = (e + r) / s G = infinity.
            let minus_r = (-r).to_repr();
            assert!(!key.verify_digest(&minus_r, &sig), "seed {seed}");
            assert!(reference.verify_prehash(&minus_r, &signature).is_err());
        }
        // The additions themselves.
        let g = P256.g_tables().unwrap()[0][0];
        let doubled = P256.to_affine(&[P256.double(&P256.jacobian(&g))]).unwrap();
        let added = P256
            .to_affine(&[P256.add_affine(&P256.jacobian(&g), &g)])
            .unwrap();
        assert_eq!(doubled, added);
        assert_eq!(
            P256.g_tables().unwrap()[0][1],
            P256.to_affine(&[P256.add_affine(&P256.jacobian(&doubled[0]), &g)])
                .unwrap()[0]
        );
        let opposite = P256.add_affine(&P256.jacobian(&g), &P256.negate(&g));
        assert!(is_zero(&opposite.z));
        let from_infinity = P256.add_affine(&opposite, &g);
        assert_eq!(P256.to_affine(&[from_infinity]).unwrap()[0], g);
        assert!(is_zero(&P256.double(&opposite).z));
    }

    #[test]
    fn naf_digits_add_up_to_the_scalar() {
        let n = P256.order.m;
        let mut cases = vec![[0u32; 8], [1, 0, 0, 0, 0, 0, 0, 0], [u32::MAX; 8], n];
        let (n_minus_1, _) = field::sub(&n, &[1, 0, 0, 0, 0, 0, 0, 0]);
        cases.push(n_minus_1);
        for seed in 0..50u64 {
            cases.push(limbs_of(&Sha256::digest(seed.to_le_bytes())));
        }
        for k in cases {
            for w in [2, 4, Q_WINDOW, G_WINDOW, 8] {
                let digits = naf(&k, w).unwrap();
                // Evaluate sum digit_i 2^i from the top, on 9 limbs with wrapping subtraction.
                let mut value = [0u32; 9];
                let mut previous_nonzero: Option<usize> = None;
                for (i, &digit) in digits.iter().enumerate().rev() {
                    value = field::add(&value, &value).0;
                    let magnitude = [u32::from(digit.unsigned_abs()), 0, 0, 0, 0, 0, 0, 0, 0];
                    value = if digit < 0 {
                        field::sub(&value, &magnitude).0
                    } else {
                        field::add(&value, &magnitude).0
                    };
                    if digit != 0 {
                        assert!(digit % 2 != 0);
                        assert!(i32::from(digit.unsigned_abs()) < 1 << (w - 1));
                        if let Some(above) = previous_nonzero {
                            assert!(above - i >= w as usize, "{k:x?} w {w}");
                        }
                        previous_nonzero = Some(i);
                    }
                }
                assert_eq!(&value[..8], &k[..], "w {w}");
                assert_eq!(value[8], 0);
            }
        }
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// Signatures over any message verify, any single flipped bit fails, and on any
            /// signature bytes at all ours agrees with the reference crate.
            #[test]
            fn agrees_with_the_reference_crates(
                p384 in any::<bool>(),
                seed in 0..1000u64,
                message in proptest::collection::vec(any::<u8>(), 0..200),
                flip in any::<prop::sample::Index>(),
                noise in proptest::collection::vec(any::<u8>(), 96),
            ) {
                let curve = if p384 { Curve::P384 } else { Curve::P256 };
                let signer = Signer::new(curve, seed);
                let key = signer.key();
                let sig = signer.sign(&message);
                prop_assert_eq!(verdicts(&signer, &key, &message, &sig), (true, true));
                let mut flipped = sig.clone();
                let bit = flip.index(flipped.len() * 8);
                flipped[bit / 8] ^= 1 << (bit % 8);
                prop_assert_eq!(verdicts(&signer, &key, &message, &flipped), (false, false));
                let random = &noise[..2 * curve.size()];
                let (ours, theirs) = verdicts(&signer, &key, &message, random);
                prop_assert_eq!(ours, theirs);
                // Keep r, replace s (and the other way): a likelier path to a near miss.
                let size = curve.size();
                let mixed = [&sig[..size], &random[size..]].concat();
                let (ours, theirs) = verdicts(&signer, &key, &message, &mixed);
                prop_assert_eq!(ours, theirs);
            }
        }
    }
}
