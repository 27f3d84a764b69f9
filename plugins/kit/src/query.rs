//! Query strings as upstreams split them.

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

/// `query` without the parameters `drop` picks; the others keep the separators they had (the
/// first kept one needs none). Empty parameters go too.
pub fn without(query: &[u8], drop: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut kept = Vec::with_capacity(query.len());
    for (separator, pair) in parameters(query).filter(|(_, pair)| !drop(pair)) {
        if !kept.is_empty() {
            kept.push(separator);
        }
        kept.extend_from_slice(pair);
    }
    kept
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
    }
}
