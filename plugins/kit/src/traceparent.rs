//! W3C Trace Context (level 1) `traceparent` values: which ones a tracer downstream accepts,
//! and their trace id. palisade-header-security keeps or replaces the header by
//! [`is_valid_traceparent`]; palisade-audit records the [`trace_id`] of a valid one.

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

/// The trace id (32 lower-case hex digits) of a valid `traceparent`; `None` for any value
/// [`is_valid_traceparent`] refuses.
pub fn trace_id(value: &[u8]) -> Option<&[u8]> {
    if is_valid_traceparent(value) {
        value.get(3..35)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    const INVALID: [&[u8]; 8] = [
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        b"",
    ];

    #[test]
    fn traceparent_validation() {
        let good = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(is_valid_traceparent(good));
        assert!(is_valid_traceparent(
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"
        ));
        for bad in INVALID {
            assert!(
                !is_valid_traceparent(bad),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn trace_ids_of_valid_traceparents_only() {
        assert_eq!(
            trace_id(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some(&b"4bf92f3577b34da6a3ce929d0e0e4736"[..])
        );
        assert_eq!(
            trace_id(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"),
            Some(&b"4bf92f3577b34da6a3ce929d0e0e4736"[..])
        );
        for bad in INVALID {
            assert_eq!(trace_id(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(trace_id(b"00-4bf92f3577b34da6a3ce929d0e0e4736"), None);
    }
}
