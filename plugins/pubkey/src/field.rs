//! Arithmetic modulo a fixed odd prime of `N` 32-bit limbs, in Montgomery form: the field and
//! the scalar (group order) arithmetic of the NIST curves.
//!
//! Numbers are little-endian `[u32; N]` arrays, so every operation is on the stack and, with `N`
//! a constant, unrolled by the compiler; products are `u64`, which wasm32 has instructions for.
//! Every result is fully reduced (below the modulus), so two values are equal exactly when their
//! limbs are. Only public values pass through here (keys, signatures, hashes): nothing needs to
//! run in constant time, and nothing tries to.

/// A Montgomery multiplication for one modulus.
pub(crate) type Multiplication<const N: usize> = fn(&[u32; N], &[u32; N]) -> [u32; N];

/// A prime modulus with its Montgomery constants (R = 2^(32N)). Values "in Montgomery form"
/// stand for `x` as `x * R mod m`; the constants are computed when the program is built.
#[derive(Debug)]
pub(crate) struct Modulus<const N: usize> {
    /// The modulus itself.
    pub(crate) m: [u32; N],
    /// -m^-1 mod 2^32.
    inv: u32,
    /// R mod m: one, in Montgomery form.
    pub(crate) one: [u32; N],
    /// R^2 mod m: a Montgomery multiplication by it enters Montgomery form.
    r_squared: [u32; N],
    /// `mul` compiled for this modulus as a constant (`with_multiplication`), if any.
    multiplication: Option<Multiplication<N>>,
}

impl<const N: usize> Modulus<N> {
    /// The constants for an odd modulus `m` above 2^(32N - 1) (true of the NIST primes and
    /// group orders). Evaluated in `const` items only: an index out of range there fails the
    /// build, it cannot fail a request.
    #[allow(clippy::indexing_slicing)]
    pub(crate) const fn new(m: [u32; N]) -> Self {
        // 1 doubled 32N times is R mod m, doubled 32N more times R^2 mod m.
        let mut one = [0u32; N];
        one[0] = 1;
        let mut i = 0;
        while i < 32 * N {
            one = const_double_mod(one, &m);
            i += 1;
        }
        let mut r_squared = one;
        while i < 64 * N {
            r_squared = const_double_mod(r_squared, &m);
            i += 1;
        }
        Self {
            m,
            inv: neg_inverse(m[0]),
            one,
            r_squared,
            multiplication: None,
        }
    }

    /// The same modulus with `mul` done by `multiplication`, which must be this modulus's
    /// `mul_inline` compiled with the modulus as a constant: its known limbs (the NIST primes
    /// have many 0 and 0xffffffff ones) then fold into fewer instructions.
    pub(crate) const fn with_multiplication(mut self, multiplication: Multiplication<N>) -> Self {
        self.multiplication = Some(multiplication);
        self
    }

    /// `a * b / R mod m` for `a, b < m` (CIOS: multiply and reduce one limb of `a` at a time).
    /// On Montgomery forms that is the Montgomery form of the product; with one plain operand
    /// it is the plain product of the plain value and the Montgomery one.
    pub(crate) fn mul(&self, a: &[u32; N], b: &[u32; N]) -> [u32; N] {
        match self.multiplication {
            Some(multiplication) => multiplication(a, b),
            None => self.mul_inline(a, b),
        }
    }

    /// `mul`'s body, for `with_multiplication`.
    #[inline(always)]
    pub(crate) fn mul_inline(&self, a: &[u32; N], b: &[u32; N]) -> [u32; N] {
        let mut out = [0u32; N];
        // The limb above `out`; the running value stays below 2m, so `high` is 0 or 1.
        let mut high: u32 = 0;
        for &a_i in a {
            let a_i = u64::from(a_i);
            let mut carry = 0u64;
            for (t, &b_j) in out.iter_mut().zip(b) {
                let sum = u64::from(*t) + a_i * u64::from(b_j) + carry;
                *t = sum as u32;
                carry = sum >> 32;
            }
            let sum = u64::from(high) + carry;
            let (top, overflow) = (sum as u32, (sum >> 32) as u32);
            // Add q * m with q chosen so the lowest limb becomes 0, then shift down a limb.
            let mut limbs = out.iter_mut().zip(&self.m);
            let Some((t_0, &m_0)) = limbs.next() else {
                return out;
            };
            let q = u64::from(t_0.wrapping_mul(self.inv));
            let mut carry = (u64::from(*t_0) + q * u64::from(m_0)) >> 32;
            let mut previous = t_0;
            for (t, &m_j) in limbs {
                let sum = u64::from(*t) + q * u64::from(m_j) + carry;
                *previous = sum as u32;
                carry = sum >> 32;
                previous = t;
            }
            let sum = u64::from(top) + carry;
            *previous = sum as u32;
            high = overflow.wrapping_add((sum >> 32) as u32);
        }
        if high != 0 || !less_than(&out, &self.m) {
            out = sub(&out, &self.m).0;
        }
        out
    }

    /// `a * a / R mod m`. A dedicated squaring (each cross product once, then reduced: SOS)
    /// does three quarters of the products, but on wasm32 its 2N-limb intermediate lives in
    /// memory, and ES256 checks cost 47% more fuel with it than with this multiplication.
    pub(crate) fn square(&self, a: &[u32; N]) -> [u32; N] {
        self.mul(a, a)
    }

    /// `a + b mod m` for `a, b < m`.
    pub(crate) fn add(&self, a: &[u32; N], b: &[u32; N]) -> [u32; N] {
        let (sum, carry) = add(a, b);
        if carry || !less_than(&sum, &self.m) {
            sub(&sum, &self.m).0
        } else {
            sum
        }
    }

    /// `a - b mod m` for `a, b < m`.
    pub(crate) fn sub(&self, a: &[u32; N], b: &[u32; N]) -> [u32; N] {
        let (difference, borrow) = sub(a, b);
        if borrow {
            add(&difference, &self.m).0
        } else {
            difference
        }
    }

    /// The Montgomery form of `a < m`.
    pub(crate) fn to_montgomery(&self, a: &[u32; N]) -> [u32; N] {
        self.mul(a, &self.r_squared)
    }

    /// The plain value of a Montgomery form (only tests need it: a check compares Montgomery
    /// forms).
    #[cfg(test)]
    pub(crate) fn plain(&self, a: &[u32; N]) -> [u32; N] {
        let mut one = [0u32; N];
        if let Some(low) = one.first_mut() {
            *low = 1;
        }
        self.mul(a, &one)
    }

    /// `a^-1 mod m` in and out in Montgomery form; 0 for 0. `invert_plain` of aR is
    /// a^-1 R^-1, which two entries into Montgomery form make a^-1 R.
    pub(crate) fn invert(&self, a: &[u32; N]) -> [u32; N] {
        self.to_montgomery(&self.to_montgomery(&self.invert_plain(a)))
    }
}

impl<const N: usize> Modulus<N> {
    /// `a^-1 mod m` for a plain `0 < a < m`, plain; 0 if there is none (a = 0, a not below
    /// m, or, were m not prime, a sharing a factor with it). Binary extended Euclid: shifts and subtractions, 10-20 times cheaper than
    /// Fermat's exponentiation on wasm32, and fine in variable time on public values.
    pub(crate) fn invert_plain(&self, a: &[u32; N]) -> [u32; N] {
        let mut one = [0u32; N];
        if let Some(low) = one.first_mut() {
            *low = 1;
        }
        if is_zero(a) || !less_than(a, &self.m) {
            return [0; N];
        }
        // x1 * a = u and x2 * a = v (mod m), and gcd(u, v) = gcd(a, m) = 1 throughout.
        let (mut u, mut v) = (*a, self.m);
        let (mut x1, mut x2) = (one, [0u32; N]);
        // Each round takes at least one bit off u or v: 64N rounds reach 1 for sure.
        for _ in 0..=64 * N {
            while u.first().is_some_and(|&low| low & 1 == 0) {
                u = shift_right(&u, false);
                x1 = self.half(&x1);
            }
            while v.first().is_some_and(|&low| low & 1 == 0) {
                v = shift_right(&v, false);
                x2 = self.half(&x2);
            }
            // Both odd now; equal only when both are the gcd, 1.
            if u == one {
                return x1;
            }
            if v == one {
                return x2;
            }
            if less_than(&u, &v) {
                v = sub(&v, &u).0;
                x2 = self.sub(&x2, &x1);
            } else {
                u = sub(&u, &v).0;
                // u = v, both odd and not 1, is a common factor: 0 would never stop halving.
                if is_zero(&u) {
                    return [0; N];
                }
                x1 = self.sub(&x1, &x2);
            }
        }
        [0; N]
    }

    /// `x / 2 mod m` for `x < m`: x or x + m, whichever is even, halved.
    fn half(&self, x: &[u32; N]) -> [u32; N] {
        if x.first().is_some_and(|&low| low & 1 == 1) {
            let (sum, carry) = add(x, &self.m);
            shift_right(&sum, carry)
        } else {
            shift_right(x, false)
        }
    }
}

/// `x >> 1`, with `top` shifted in as the highest bit.
fn shift_right<const N: usize>(x: &[u32; N], top: bool) -> [u32; N] {
    let mut out = [0u32; N];
    let mut carry = u32::from(top);
    for (o, &limb) in out.iter_mut().zip(x).rev() {
        *o = limb >> 1 | carry << 31;
        carry = limb & 1;
    }
    out
}

/// Big-endian bytes, exactly `4N` of them, as limbs.
pub(crate) fn from_be_bytes<const N: usize>(bytes: &[u8]) -> Option<[u32; N]> {
    if bytes.len() != 4 * N {
        return None;
    }
    let mut limbs = [0u32; N];
    for (limb, chunk) in limbs.iter_mut().zip(bytes.rchunks_exact(4)) {
        *limb = chunk.iter().fold(0, |limb, &b| limb << 8 | u32::from(b));
    }
    Some(limbs)
}

/// Big-endian hex of exactly `8N` lowercase digits as limbs, for the curve constants. Used in
/// `const` items only: a bad digit or length fails the build.
#[allow(clippy::indexing_slicing, clippy::panic)]
pub(crate) const fn from_hex<const N: usize>(hex: &str) -> [u32; N] {
    let digits = hex.as_bytes();
    assert!(digits.len() == 8 * N, "constant of the wrong length");
    let mut limbs = [0u32; N];
    let mut i = 0;
    while i < digits.len() {
        let digit = match digits[i] {
            b'0'..=b'9' => digits[i] - b'0',
            b'a'..=b'f' => digits[i] - b'a' + 10,
            _ => panic!("not a lowercase hex digit"),
        };
        // Nibbles counted from the least significant.
        let position = digits.len() - 1 - i;
        limbs[position / 8] |= (digit as u32) << (4 * (position % 8));
        i += 1;
    }
    limbs
}

pub(crate) fn is_zero<const N: usize>(a: &[u32; N]) -> bool {
    a.iter().all(|&limb| limb == 0)
}

/// `-m0^-1 mod 2^32` for an odd `m0`, the lowest limb of a modulus: what a Montgomery
/// reduction multiplies by. Newton's iteration doubles the correct low bits, and `m0` is its
/// own inverse mod 2^3.
pub(crate) const fn neg_inverse(m0: u32) -> u32 {
    let mut inverse = m0;
    let mut i = 0;
    while i < 4 {
        inverse = inverse.wrapping_mul(2u32.wrapping_sub(m0.wrapping_mul(inverse)));
        i += 1;
    }
    inverse.wrapping_neg()
}

/// `a < b` for equally long limb slices (fixed-size limbs coerce).
pub(crate) fn less_than(a: &[u32], b: &[u32]) -> bool {
    for (x, y) in a.iter().rev().zip(b.iter().rev()) {
        if x != y {
            return x < y;
        }
    }
    false
}

/// `a + b` modulo 2^(32N), and whether it carried out.
pub(crate) fn add<const N: usize>(a: &[u32; N], b: &[u32; N]) -> ([u32; N], bool) {
    let mut sum = [0u32; N];
    let mut carry = 0u64;
    for ((s, &x), &y) in sum.iter_mut().zip(a).zip(b) {
        let total = u64::from(x) + u64::from(y) + carry;
        *s = total as u32;
        carry = total >> 32;
    }
    (sum, carry != 0)
}

/// `a - b` modulo 2^(32N), and whether it borrowed.
pub(crate) fn sub<const N: usize>(a: &[u32; N], b: &[u32; N]) -> ([u32; N], bool) {
    let mut difference = *a;
    let borrow = sub_assign(&mut difference, b);
    (difference, borrow)
}

/// `a -= b` modulo 2^(32 len) for equally long limb slices, and whether it borrowed.
pub(crate) fn sub_assign(a: &mut [u32], b: &[u32]) -> bool {
    let mut borrow = false;
    for (x, &y) in a.iter_mut().zip(b) {
        let (value, b1) = x.overflowing_sub(y);
        let (value, b2) = value.overflowing_sub(u32::from(borrow));
        *x = value;
        borrow = b1 || b2;
    }
    borrow
}

/// `2x mod m` for `x < m`, in a `const` context (hence the loops over indices).
#[allow(clippy::indexing_slicing)]
const fn const_double_mod<const N: usize>(mut x: [u32; N], m: &[u32; N]) -> [u32; N] {
    let mut carry = 0u32;
    let mut i = 0;
    while i < N {
        let next = x[i] >> 31;
        x[i] = x[i] << 1 | carry;
        carry = next;
        i += 1;
    }
    // x >= m?
    let mut at_least = true;
    let mut i = N;
    while i > 0 {
        i -= 1;
        if x[i] != m[i] {
            at_least = x[i] > m[i];
            break;
        }
    }
    if carry != 0 || at_least {
        let mut borrow = 0u32;
        let mut i = 0;
        while i < N {
            let (value, b1) = x[i].overflowing_sub(m[i]);
            let (value, b2) = value.overflowing_sub(borrow);
            x[i] = value;
            borrow = (b1 | b2) as u32;
            i += 1;
        }
    }
    x
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    /// The P-256 field prime: the arithmetic checked against plain big-number identities.
    const P: Modulus<8> = Modulus::new(from_hex(
        "ffffffff00000001000000000000000000000000ffffffffffffffffffffffff",
    ));

    fn sample(seed: u32) -> [u32; 8] {
        let mut x = [0u32; 8];
        let mut state = seed.wrapping_mul(0x9e37_79b9) | 1;
        for limb in x.iter_mut() {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            *limb = state;
        }
        // Below p: clear the top bit.
        x[7] &= 0x7fff_ffff;
        x
    }

    /// Every modulus here is prime, but a value sharing a factor with a composite one must
    /// come back as "no inverse", not loop forever.
    #[test]
    fn a_value_without_an_inverse_gives_zero() {
        let fifteen = Modulus::<1>::new([15]);
        assert_eq!(fifteen.invert_plain(&[3]), [0]);
        assert_eq!(fifteen.invert_plain(&[5]), [0]);
        assert_eq!(fifteen.invert_plain(&[2]), [8]);
    }

    #[test]
    fn inversion_inverts_and_addition_undoes_subtraction() {
        let mut edge = P.m;
        edge[0] -= 1;
        let values = (1..200)
            .map(sample)
            .chain([[0; 8], P.one, edge, [1, 0, 0, 0, 0, 0, 0, 0]]);
        for x in values {
            let inverse = P.invert(&x);
            if is_zero(&x) {
                assert!(is_zero(&inverse));
            } else {
                assert_eq!(P.mul(&x, &inverse), P.one, "{x:x?}");
            }
            let plain = P.plain(&x);
            let plain_inverse = P.invert_plain(&plain);
            if is_zero(&x) {
                assert!(is_zero(&plain_inverse));
            } else {
                assert_eq!(P.plain(&P.to_montgomery(&plain_inverse)), P.plain(&inverse));
                assert_eq!(
                    P.mul(&P.to_montgomery(&plain), &P.to_montgomery(&plain_inverse)),
                    P.one
                );
            }
            assert_eq!(P.to_montgomery(&plain), x);
            assert_eq!(P.add(&P.sub(&x, &edge), &edge), x);
        }
    }

    #[test]
    fn constants_are_consistent() {
        // R * R^-1 = 1: the Montgomery one's plain value is 1, and R^2 leaves as R.
        assert_eq!(P.plain(&P.one), [1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(P.plain(&P.r_squared), P.one);
        assert_eq!(P.m[0].wrapping_mul(P.inv), u32::MAX);
        assert_eq!(
            from_be_bytes::<2>(&[1, 2, 3, 4, 5, 6, 7, 8]),
            Some([0x0506_0708, 0x0102_0304])
        );
        assert_eq!(from_be_bytes::<2>(&[1, 2, 3, 4, 5, 6, 7]), None);
    }
}
