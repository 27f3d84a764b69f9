//! Request ids (`x-request-id`) and W3C Trace Context (`traceparent`).

use palisade_kit::random::Xoshiro256;

/// An incoming request id is kept if it is a plain token: 1 to 200 visible ASCII characters.
/// Anything else (spaces, control or non-ASCII bytes, a huge value) is replaced, so ids are safe
/// to log and to echo.
pub fn is_acceptable_id(id: &[u8]) -> bool {
    (1..=200).contains(&id.len()) && id.iter().all(|&b| (0x21..=0x7e).contains(&b))
}

/// A stream's request id, kept from the request for the response and for refusals. A generated
/// id, and an incoming one up to [`RequestId::INLINE`] bytes (most are), is stored inline: no
/// allocation per request.
#[derive(Clone, PartialEq, Eq)]
pub enum RequestId {
    Generated([u8; 36]),
    Inline {
        len: u8,
        bytes: [u8; RequestId::INLINE],
    },
    Heap(Box<[u8]>),
}

impl RequestId {
    pub const INLINE: usize = 64;

    /// An incoming id that passed [`is_acceptable_id`]: visible ASCII.
    pub fn new(id: &[u8]) -> Self {
        let mut bytes = [0u8; Self::INLINE];
        match (bytes.get_mut(..id.len()), u8::try_from(id.len())) {
            (Some(prefix), Ok(len)) => {
                prefix.copy_from_slice(id);
                Self::Inline { len, bytes }
            }
            _ => Self::Heap(id.into()),
        }
    }

    /// A new random (version 4) UUID.
    pub fn generate(rng: &mut Xoshiro256) -> Self {
        // The bytes `rng.fill` would give, read big-endian.
        let high = rng.next_u64().swap_bytes();
        let low = rng.next_u64().swap_bytes();
        Self::Generated(uuid_v4_from(high, low))
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Generated(uuid) => uuid,
            Self::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or_default(),
            Self::Heap(bytes) => bytes,
        }
    }

    /// The id as text (it is ASCII; anything else would read as empty).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

/// Writes the low `out.len()` nibbles of `value` into `out` as lower-case hex. A plain loop:
/// this runs for every request that gets an id or a trace, and the plugin is built for size
/// (`opt-level = "z"`), which leaves iterator adapters as calls per digit.
fn hex_digits(mut value: u64, out: &mut [u8]) {
    let mut at = out.len();
    while at > 0 {
        at -= 1;
        let nibble = (value & 0x0f) as u8;
        if let Some(slot) = out.get_mut(at) {
            *slot = if nibble < 10 {
                b'0' + nibble
            } else {
                b'a' + (nibble - 10)
            };
        }
        value >>= 4;
    }
}

/// Up to 8 bytes as a big-endian number.
fn be_u64(bytes: &[u8]) -> u64 {
    let mut value = 0;
    for &b in bytes {
        value = (value << 8) | u64::from(b);
    }
    value
}

/// A random (version 4) UUID from 16 random bytes, as its 36 ASCII characters.
pub fn uuid_v4(bytes: [u8; 16]) -> [u8; 36] {
    let (high, low) = bytes.split_at(8);
    uuid_v4_from(be_u64(high), be_u64(low))
}

/// [`uuid_v4`] of the bytes of `high` then `low`, big-endian.
fn uuid_v4_from(high: u64, low: u64) -> [u8; 36] {
    // Version 4 in the 13th digit, variant 10 in the top bits of the 17th.
    let high = (high & !0xf000) | 0x4000;
    let low = (low & !(0xc0 << 56)) | (0x80 << 56);
    let mut out = [b'-'; 36];
    hex_digits(high >> 32, &mut out[..8]);
    hex_digits(high >> 16, &mut out[9..13]);
    hex_digits(high, &mut out[14..18]);
    hex_digits(low >> 48, &mut out[19..23]);
    hex_digits(low, &mut out[24..]);
    out
}

fn is_lower_hex(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// Is this a `traceparent` a tracer downstream will accept (W3C Trace Context level 1)?
/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, lower-case, ids not all zero; a
/// later version may append fields after a dash; version `ff` is invalid.
pub fn is_valid_traceparent(value: &[u8]) -> bool {
    let (Some(version), Some(trace_id), Some(parent_id), Some(flags)) = (
        value.get(0..2),
        value.get(3..35),
        value.get(36..52),
        value.get(53..55),
    ) else {
        return false;
    };
    let dashes = [2, 35, 52].iter().all(|&i| value.get(i) == Some(&b'-'));
    let length_ok = if version == b"00" {
        value.len() == 55
    } else {
        value.len() == 55 || value.get(55) == Some(&b'-')
    };
    dashes
        && length_ok
        && version != b"ff"
        && [version, trace_id, parent_id, flags]
            .iter()
            .all(|f| is_lower_hex(f))
        && trace_id.iter().any(|&b| b != b'0')
        && parent_id.iter().any(|&b| b != b'0')
}

/// A new `traceparent` from 24 random bytes (16 for the trace id, 8 for the parent id).
pub fn new_traceparent(mut random: [u8; 24], sampled: bool) -> [u8; 55] {
    let (trace_id, parent_id) = random.split_at_mut(16);
    // All-zero ids are invalid; 2^-128 odds, but never emit one.
    for id in [&mut *trace_id, &mut *parent_id] {
        if id.iter().all(|&b| b == 0) {
            if let Some(last) = id.last_mut() {
                *last = 1;
            }
        }
    }
    // `00-` trace id `-` parent id `-0x`.
    let (trace_high, trace_low) = trace_id.split_at(8);
    let mut out = [b'-'; 55];
    out[0] = b'0';
    out[1] = b'0';
    hex_digits(be_u64(trace_high), &mut out[3..19]);
    hex_digits(be_u64(trace_low), &mut out[19..35]);
    hex_digits(be_u64(parent_id), &mut out[36..52]);
    out[53] = b'0';
    out[54] = if sampled { b'1' } else { b'0' };
    out
}

/// Whether a trace started here is sampled, from a uniform random draw.
pub fn is_sampled(draw: u32, rate: f64) -> bool {
    f64::from(draw) < rate * 4_294_967_296.0
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn uuid_has_version_and_variant() {
        assert_eq!(&uuid_v4([0; 16]), b"00000000-0000-4000-8000-000000000000");
        assert_eq!(
            &uuid_v4([0xff; 16]),
            b"ffffffff-ffff-4fff-bfff-ffffffffffff"
        );
        let counting: [u8; 16] = std::array::from_fn(|i| i as u8 * 17);
        assert_eq!(&uuid_v4(counting), b"00112233-4455-4677-8899-aabbccddeeff");
    }

    #[test]
    fn request_ids_inline_or_on_the_heap() {
        let short = RequestId::new(b"bench-0001");
        assert!(matches!(short, RequestId::Inline { .. }));
        assert_eq!(short.as_bytes(), b"bench-0001");
        assert_eq!(short.as_str(), "bench-0001");
        let long = [b'a'; 200];
        let heap = RequestId::new(&long);
        assert!(matches!(heap, RequestId::Heap(_)));
        assert_eq!(heap.as_bytes(), &long[..]);
        let exact = [b'b'; RequestId::INLINE];
        assert_eq!(RequestId::new(&exact).as_bytes(), &exact[..]);
        // The same id as the UUID of the generator's next 16 bytes.
        let mut rng = Xoshiro256::from_seed([1; 32]);
        let mut bytes = [0u8; 16];
        rng.clone().fill(&mut bytes);
        assert_eq!(
            RequestId::generate(&mut rng).as_bytes(),
            uuid_v4(bytes).as_slice()
        );
    }

    #[test]
    fn acceptable_ids() {
        assert!(is_acceptable_id(b"a3f1-42"));
        assert!(!is_acceptable_id(b""));
        assert!(!is_acceptable_id(b"has space"));
        assert!(!is_acceptable_id(b"\xff"));
        assert!(!is_acceptable_id(&[b'a'; 201]));
    }

    #[test]
    fn traceparent_validation() {
        let good = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(is_valid_traceparent(good));
        assert!(is_valid_traceparent(
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"
        ));
        for bad in [
            &b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"[..],
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"",
        ] {
            assert!(
                !is_valid_traceparent(bad),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn new_traceparents_are_valid() {
        let mut random = [0u8; 24];
        for (i, b) in random.iter_mut().enumerate() {
            *b = i as u8 * 11;
        }
        let sampled = new_traceparent(random, true);
        assert_eq!(
            &sampled,
            b"00-000b16212c37424d58636e79848f9aa5-b0bbc6d1dce7f2fd-01"
        );
        assert!(is_valid_traceparent(&sampled), "{sampled:?}");
        assert!(sampled.ends_with(b"-01"));
        let zero = new_traceparent([0; 24], false);
        assert!(is_valid_traceparent(&zero), "{zero:?}");
        assert!(zero.ends_with(b"-00"));
    }

    #[test]
    fn sampling_rate() {
        assert!(!is_sampled(0, 0.0));
        assert!(is_sampled(u32::MAX, 1.0));
        let sampled = (0..1000u32)
            .filter(|i| is_sampled(i * 4_294_968, 0.1))
            .count();
        assert_eq!(sampled, 100);
    }
}
