//! Lower-case hex written in place, a byte at a time from a table: request ids, trace ids and
//! event ids are written for every request that gets one.

/// Every byte's two lower-case hex digits.
static HEX_PAIRS: [[u8; 2]; 256] = hex_pairs();

// Evaluated by the compiler: an index out of bounds would fail the build, not a request.
#[allow(clippy::indexing_slicing)]
const fn hex_pairs() -> [[u8; 2]; 256] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        pairs[i] = [DIGITS[i >> 4], DIGITS[i & 0x0f]];
        i += 1;
    }
    pairs
}

/// Writes the low `out.len()` nibbles of `value` into `out` (an even length) as lower-case
/// hex.
pub fn write_hex(mut value: u64, out: &mut [u8]) {
    let mut at = out.len();
    while at >= 2 {
        at -= 2;
        let pair = HEX_PAIRS.get(usize::from(value as u8));
        if let (Some(&[high, low]), Some([h, l])) = (pair, out.get_mut(at..at + 2)) {
            *h = high;
            *l = low;
        }
        value >>= 8;
    }
}

/// Up to 8 bytes as a big-endian number.
pub fn be_u64(bytes: &[u8]) -> u64 {
    let mut value = 0;
    for &b in bytes {
        value = (value << 8) | u64::from(b);
    }
    value
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn writes_the_low_nibbles_big_endian() {
        let mut out = [0u8; 16];
        write_hex(0x0123_4567_89ab_cdef, &mut out);
        assert_eq!(&out, b"0123456789abcdef");
        let mut short = [0u8; 4];
        write_hex(0x0123_4567_89ab_cdef, &mut short);
        assert_eq!(&short, b"cdef");
        let mut long = [b'x'; 20];
        write_hex(0xff, &mut long);
        assert_eq!(&long, b"000000000000000000ff");
        assert_eq!(be_u64(&[0x01, 0x02]), 0x0102);
        assert_eq!(be_u64(&[]), 0);
    }
}
