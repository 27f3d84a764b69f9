//! Request ids (`x-request-id`) and W3C Trace Context (`traceparent`).

use palisade_kit::hex::{be_u64, write_hex};
use palisade_kit::random::Xoshiro256;
use palisade_kit::uuid;

/// The validator lives in the kit, shared with palisade-audit (which records the trace id of a
/// valid `traceparent` only).
pub use palisade_kit::traceparent::is_valid_traceparent;

/// An incoming request id is kept if it is a plain token: 1 to 200 visible ASCII characters.
/// Anything else (spaces, control or non-ASCII bytes, a huge value) is replaced, so ids are safe
/// to log and to echo.
pub fn is_acceptable_id(id: &[u8]) -> bool {
    (1..=200).contains(&id.len()) && id.iter().all(|&b| (0x21..=0x7e).contains(&b))
}

/// A stream's request id, kept from the request for the response and for refusals. It is
/// written in place in the stream's state: a generated id, and an incoming one up to
/// [`RequestId::INLINE`] bytes (most are), costs no allocation and no copy. Empty is no id
/// (an id is never empty).
#[derive(Clone, PartialEq, Eq)]
pub struct RequestId {
    /// The bytes used in `inline`, when not on the heap.
    len: u8,
    inline: [u8; RequestId::INLINE],
    heap: Option<Box<[u8]>>,
}

impl Default for RequestId {
    fn default() -> Self {
        Self {
            len: 0,
            inline: [0; Self::INLINE],
            heap: None,
        }
    }
}

impl RequestId {
    pub const INLINE: usize = 40;

    /// Keeps an incoming id that passed [`is_acceptable_id`] (visible ASCII).
    pub fn set(&mut self, id: &[u8]) {
        match (self.inline.get_mut(..id.len()), u8::try_from(id.len())) {
            (Some(prefix), Ok(len)) => {
                prefix.copy_from_slice(id);
                self.len = len;
                self.heap = None;
            }
            _ => {
                self.len = 0;
                self.heap = Some(id.into());
            }
        }
    }

    /// Generates a random (version 4) UUID.
    pub fn generate(&mut self, rng: &mut Xoshiro256) {
        // The bytes `rng.fill` would give, read big-endian.
        let high = rng.next_u64().swap_bytes();
        let low = rng.next_u64().swap_bytes();
        if let Some(out) = self.inline.get_mut(..36) {
            uuid::write_v4(out, high, low);
            self.len = 36;
            self.heap = None;
        }
    }

    pub fn clear(&mut self) {
        self.len = 0;
        self.heap = None;
    }

    /// The id, if there is one.
    pub fn get(&self) -> Option<&[u8]> {
        let bytes = match &self.heap {
            Some(bytes) => bytes,
            None => self.inline.get(..usize::from(self.len)).unwrap_or_default(),
        };
        (!bytes.is_empty()).then_some(bytes)
    }

    /// The id as text (it is ASCII).
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(self.get()?).ok()
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
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
    write_hex(be_u64(trace_high), &mut out[3..19]);
    write_hex(be_u64(trace_low), &mut out[19..35]);
    write_hex(be_u64(parent_id), &mut out[36..52]);
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
    fn request_ids_inline_or_on_the_heap() {
        let mut id = RequestId::default();
        assert_eq!(id.get(), None);
        id.set(b"bench-0001");
        assert_eq!(id.get(), Some(&b"bench-0001"[..]));
        assert_eq!(id.as_str(), Some("bench-0001"));
        let long = [b'a'; 200];
        id.set(&long);
        assert!(id.heap.is_some());
        assert_eq!(id.get(), Some(&long[..]));
        let exact = [b'b'; RequestId::INLINE];
        id.set(&exact);
        assert!(id.heap.is_none());
        assert_eq!(id.get(), Some(&exact[..]));
        id.clear();
        assert_eq!(id.get(), None);
        // The same id as the UUID of the generator's next 16 bytes.
        let mut rng = Xoshiro256::from_seed([1; 32]);
        let mut bytes = [0u8; 16];
        rng.clone().fill(&mut bytes);
        id.set(&long);
        id.generate(&mut rng);
        assert_eq!(id.get(), Some(uuid::v4_from_bytes(bytes).as_slice()));
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
