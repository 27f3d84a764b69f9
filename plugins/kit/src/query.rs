//! Query strings as upstreams split them.

/// A request target (`:path`) as its path and its query (what follows `?`, `None` without a
/// `?`); a `#fragment`, which clients do not send but a raw request may, is dropped.
pub fn split_target(target: &[u8]) -> (&[u8], Option<&[u8]>) {
    let target = target.split(|&b| b == b'#').next().unwrap_or_default();
    match target.iter().position(|&b| b == b'?') {
        Some(at) => (target.get(..at).unwrap_or_default(), target.get(at + 1..)),
        None => (target, None),
    }
}

/// The parameters of a query (what follows `?`), each with the separator before it (`&` for the
/// first), empty ones skipped. `;` separates parameters as `&` does: some upstreams (Rack 2,
/// Python's `parse_qs` before 3.10) split on both, so in `q=1;access_token=x` they see an
/// `access_token`, and so must a plugin that finds, removes or redacts credentials.
pub fn parameters(query: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut next_separator = b'&';
    query
        .split_inclusive(|&b| b == b'&' || b == b';')
        .filter_map(move |piece| {
            let separator = next_separator;
            let pair = match piece.split_last() {
                Some((&end @ (b'&' | b';'), pair)) => {
                    next_separator = end;
                    pair
                }
                _ => piece,
            };
            (!pair.is_empty()).then_some((separator, pair))
        })
}

/// `query` without the parameters `drop` picks, empty ones too. A kept parameter keeps the
/// separator it had, unless an `&` came before it since the last kept one: an upstream that
/// splits on `&` alone must still see it start a parameter of its own (`q=1&t=x;r=2` without
/// `t` is `q=1&r=2`, not `q=1;r=2`, which would change `q`).
pub fn without(query: &[u8], drop: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut kept = Vec::with_capacity(query.len());
    let mut ampersand_since_kept = false;
    for (separator, pair) in parameters(query) {
        ampersand_since_kept |= separator == b'&';
        if drop(pair) {
            continue;
        }
        if !kept.is_empty() {
            kept.push(if ampersand_since_kept {
                b'&'
            } else {
                separator
            });
        }
        kept.extend_from_slice(pair);
        ampersand_since_kept = false;
    }
    kept
}

/// The name of a parameter (`name=value`, or a bare `name`).
pub fn name_of(pair: &[u8]) -> &[u8] {
    pair.split(|&b| b == b'=').next().unwrap_or(pair)
}

/// A parameter's value when its name reads as `name` ([`name_is`]); a bare name has an empty
/// value.
pub fn value_of<'a>(pair: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let raw = name_of(pair);
    name_is(raw, name).then(|| pair.get(raw.len() + 1..).unwrap_or_default())
}

/// Whether a parameter's raw name reads as `name` to an upstream: percent-decoded (`+` a
/// space), and with `.` and a space read as `_`, as PHP does. `access%5Ftoken` and
/// `access.token` are `access_token`, so a copy cannot hide behind another spelling.
pub fn name_is(raw: &[u8], name: &str) -> bool {
    let fold = |b: u8| if b == b'.' || b == b' ' { b'_' } else { b };
    let mut expected = name.bytes().map(fold);
    let mut rest = raw;
    loop {
        let (byte, tail) = match rest {
            [] => return expected.next().is_none(),
            [b'%', high, low, tail @ ..] => match (hex(*high), hex(*low)) {
                (Some(high), Some(low)) => (high << 4 | low, tail),
                _ => (b'%', rest.get(1..).unwrap_or_default()),
            },
            [b'+', tail @ ..] => (b' ', tail),
            [byte, tail @ ..] => (*byte, tail),
        };
        if expected.next() != Some(fold(byte)) {
            return false;
        }
        rest = tail;
    }
}

fn hex(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn both_separators_split_and_are_kept() {
        let pairs: Vec<(u8, &[u8])> = parameters(b"a=1;b=2&&c&d=x;").collect();
        assert_eq!(
            pairs,
            [
                (b'&', &b"a=1"[..]),
                (b';', &b"b=2"[..]),
                (b'&', &b"c"[..]),
                (b'&', &b"d=x"[..])
            ]
        );
        assert_eq!(parameters(b"").count(), 0);
        let no_b = without(b"a=1;b=2&c=3", |pair| pair.starts_with(b"b="));
        assert_eq!(no_b, b"a=1&c=3");
        let no_a = without(b"a=1;b=2&c=3", |pair| pair.starts_with(b"a="));
        assert_eq!(no_a, b"b=2&c=3");
        assert_eq!(without(b"a=1", |_| true), b"");
        // An `&`-only upstream must not see `r=2` glued onto `q`'s value.
        assert_eq!(
            without(b"q=1&t=x;r=2", |pair| pair.starts_with(b"t=")),
            b"q=1&r=2"
        );
        assert_eq!(
            without(b"q=1;t=x;r=2", |pair| pair.starts_with(b"t=")),
            b"q=1;r=2"
        );
    }

    #[test]
    fn targets_split_at_the_first_question_mark_without_the_fragment() {
        assert_eq!(
            split_target(b"/a?b=1?c#f"),
            (&b"/a"[..], Some(&b"b=1?c"[..]))
        );
        assert_eq!(split_target(b"/a#f?x"), (&b"/a"[..], None));
        assert_eq!(split_target(b"/a?"), (&b"/a"[..], Some(&b""[..])));
    }

    #[test]
    fn names_compare_as_upstreams_decode_them() {
        for raw in [
            &b"access_token"[..],
            b"access%5Ftoken",
            b"access%5ftoken",
            b"access.token",
            b"access+token",
            b"access%20token",
            b"%61ccess_token",
        ] {
            assert!(
                name_is(raw, "access_token"),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        for raw in [
            &b"access_tokens"[..],
            b"access_toke",
            b"access%5",
            b"access%zztoken",
            b"",
        ] {
            assert!(
                !name_is(raw, "access_token"),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        assert!(name_is(b"100%", "100%"));
        assert_eq!(name_of(b"a=b=c"), b"a");
        assert_eq!(name_of(b"flag"), b"flag");
        assert_eq!(
            value_of(b"access%5Ftoken=t=x", "access_token"),
            Some(&b"t=x"[..])
        );
        assert_eq!(value_of(b"access_token", "access_token"), Some(&b""[..]));
        assert_eq!(value_of(b"other=t", "access_token"), None);
    }
}
