//! Writing numbers into strings on the request path without `core::fmt`: `format!` costs a
//! few thousand Wasm instructions per call, several times the work it wraps, and in Envoy's V8
//! that shows per request.

/// Appends `n` in decimal.
pub fn push_u64(out: &mut String, n: u64) {
    let mut digits = [0u8; 20];
    // Digits are ASCII: the check always passes.
    if let Ok(text) = std::str::from_utf8(write(&mut digits, n)) {
        out.push_str(text);
    }
}

/// Appends `n` in decimal ASCII.
pub fn push_u64_bytes(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    out.extend_from_slice(write(&mut digits, n));
}

/// `n` in decimal ASCII, written at the end of `digits` (no allocation, no UTF-8 check);
/// returns the digits written.
pub fn write(digits: &mut [u8; 20], n: u64) -> &[u8] {
    let start = write_before(digits, 20, n).unwrap_or(0);
    digits.get(start..).unwrap_or_default()
}

/// Writes `n` in decimal ASCII to end just before `end` in `buf`, in place (for values built
/// right to left in one buffer); returns where the digits start, or `None` if they do not fit.
pub fn write_before(buf: &mut [u8], mut end: usize, mut n: u64) -> Option<usize> {
    loop {
        end = end.checked_sub(1)?;
        // `n % 10` is below 10: an ASCII digit.
        *buf.get_mut(end)? = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return Some(end);
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn writes_what_format_writes() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            4096,
            1_000_000,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = String::from("x=");
            push_u64(&mut out, n);
            assert_eq!(out, format!("x={n}"));
            let mut bytes = b"x=".to_vec();
            push_u64_bytes(&mut bytes, n);
            assert_eq!(bytes, format!("x={n}").into_bytes());
            assert_eq!(write(&mut [0; 20], n), n.to_string().as_bytes());
            let mut buf = *b"....";
            let digits = n.to_string();
            match write_before(&mut buf, 3, n) {
                Some(start) => {
                    assert_eq!(&buf[start..3], digits.as_bytes());
                    assert_eq!(buf[3], b'.');
                }
                None => assert!(digits.len() > 3, "{n} fits in 3 bytes"),
            }
        }
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod properties {
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_u64_matches_format(n: u64) {
                let mut out = String::new();
                super::push_u64(&mut out, n);
                prop_assert_eq!(out, n.to_string());
            }
        }
    }
}
