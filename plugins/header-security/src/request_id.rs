//! Request ids (`x-request-id`) and W3C Trace Context (`traceparent`).

/// An incoming request id is kept if it is a plain token: 1 to 200 visible ASCII characters.
/// Anything else (spaces, control or non-ASCII bytes, a huge value) is replaced, so ids are safe
/// to log and to echo.
pub fn is_acceptable_id(id: &[u8]) -> bool {
    (1..=200).contains(&id.len()) && id.iter().all(|&b| (0x21..=0x7e).contains(&b))
}

fn hex(bytes: &[u8], out: &mut Vec<u8>) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        for nibble in [b >> 4, b & 0x0f] {
            out.push(DIGITS.get(usize::from(nibble)).copied().unwrap_or(b'0'));
        }
    }
}

/// The ids are built from ASCII hex digits and dashes only.
fn ascii(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_default()
}

/// A random (version 4) UUID from 16 random bytes.
pub fn uuid_v4(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut out = Vec::with_capacity(36);
    for (i, chunk) in [
        &bytes[..4],
        &bytes[4..6],
        &bytes[6..8],
        &bytes[8..10],
        &bytes[10..],
    ]
    .iter()
    .enumerate()
    {
        if i > 0 {
            out.push(b'-');
        }
        hex(chunk, &mut out);
    }
    ascii(out)
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
pub fn new_traceparent(mut random: [u8; 24], sampled: bool) -> Vec<u8> {
    let (trace_id, parent_id) = random.split_at_mut(16);
    // All-zero ids are invalid; 2^-128 odds, but never emit one.
    for id in [&mut *trace_id, &mut *parent_id] {
        if id.iter().all(|&b| b == 0) {
            if let Some(last) = id.last_mut() {
                *last = 1;
            }
        }
    }
    let mut out = Vec::with_capacity(55);
    out.extend_from_slice(b"00-");
    hex(trace_id, &mut out);
    out.push(b'-');
    hex(parent_id, &mut out);
    out.extend_from_slice(if sampled { b"-01" } else { b"-00" });
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
        assert_eq!(uuid_v4([0; 16]), "00000000-0000-4000-8000-000000000000");
        assert_eq!(uuid_v4([0xff; 16]), "ffffffff-ffff-4fff-bfff-ffffffffffff");
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
