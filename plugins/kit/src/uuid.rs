//! Random (version 4, RFC 9562) UUIDs as their 36 ASCII characters, written in place: the
//! request ids of palisade-header-security and the event ids of palisade-audit.

use crate::hex::{be_u64, write_hex};
use crate::random::Xoshiro256;

/// A UUID of the generator's next 16 bytes (those `rng.fill` would give).
pub fn v4(rng: &mut Xoshiro256) -> [u8; 36] {
    let high = rng.next_u64().swap_bytes();
    let low = rng.next_u64().swap_bytes();
    let mut out = [0u8; 36];
    write_v4(&mut out, high, low);
    out
}

/// A UUID of 16 random bytes.
pub fn v4_from_bytes(bytes: [u8; 16]) -> [u8; 36] {
    let (high, low) = bytes.split_at(8);
    let mut out = [0u8; 36];
    write_v4(&mut out, be_u64(high), be_u64(low));
    out
}

/// Writes the UUID of the bytes of `high` then `low` (big-endian) into `out` (36 bytes).
pub fn write_v4(out: &mut [u8], high: u64, low: u64) {
    // Version 4 in the 13th digit, variant 10 in the top bits of the 17th.
    let high = (high & !0xf000) | 0x4000;
    let low = (low & !(0xc0 << 56)) | (0x80 << 56);
    let mut write = |range: std::ops::Range<usize>, value: u64| {
        if let Some(digits) = out.get_mut(range) {
            write_hex(value, digits);
        }
    };
    write(0..8, high >> 32);
    write(9..13, high >> 16);
    write(14..18, high);
    write(19..23, low >> 48);
    write(24..36, low);
    if let Some(
        [_, _, _, _, _, _, _, _, d8, _, _, _, _, d13, _, _, _, _, d18, _, _, _, _, d23, ..],
    ) = out.get_mut(..24)
    {
        *d8 = b'-';
        *d13 = b'-';
        *d18 = b'-';
        *d23 = b'-';
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn uuid_has_version_and_variant() {
        assert_eq!(
            &v4_from_bytes([0; 16]),
            b"00000000-0000-4000-8000-000000000000"
        );
        assert_eq!(
            &v4_from_bytes([0xff; 16]),
            b"ffffffff-ffff-4fff-bfff-ffffffffffff"
        );
        let counting: [u8; 16] = std::array::from_fn(|i| i as u8 * 17);
        assert_eq!(
            &v4_from_bytes(counting),
            b"00112233-4455-4677-8899-aabbccddeeff"
        );
    }

    #[test]
    fn a_generated_uuid_is_that_of_the_generators_next_bytes() {
        let mut rng = Xoshiro256::from_seed([1; 32]);
        let mut bytes = [0u8; 16];
        rng.clone().fill(&mut bytes);
        let first = v4(&mut rng);
        assert_eq!(first, v4_from_bytes(bytes));
        assert_ne!(first, v4(&mut rng));
    }
}
