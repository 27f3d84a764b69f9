//! The proxy-wasm ABI's encoding of a header map: a `u32` count, then each pair's name and value
//! sizes (`u32` each), then each name and value followed by a NUL. Little-endian, as Wasm is.
//! Shared by the plugins' host calls and the test host, so both sides agree by construction.

use std::borrow::Cow;

/// Header (or trailer) pairs as raw bytes: names and values are not assumed to be UTF-8.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Header pairs borrowed from one buffer (the host's answer, decoded once): reading a map costs
/// one allocation, not two per header.
pub type Fields<'a> = Vec<(&'a [u8], &'a [u8])>;

/// Borrows owned pairs as [`Fields`].
pub fn borrow(pairs: &Pairs) -> Fields<'_> {
    pairs
        .iter()
        .map(|(n, v)| (n.as_slice(), v.as_slice()))
        .collect()
}

/// The first value of a header in a snapshot (names compared case-insensitively). It runs
/// several times per request: lengths are compared before bytes.
pub fn get<'a>(fields: &[(&'a [u8], &'a [u8])], name: &str) -> Option<&'a [u8]> {
    let name = name.as_bytes();
    for &(n, v) in fields {
        if n.len() == name.len() && n.eq_ignore_ascii_case(name) {
            return Some(v);
        }
    }
    None
}

/// Which entry of a request map holds the client's Host. Envoy's `:authority` is the client's
/// (it turns HTTP/1's `Host` into it). Kong's is nginx's `server_name` and local port, whatever
/// the client asked for (`ngx_proxy_wasm_maps_get_authority`, every ngx_wasm_module release):
/// there the client's Host is the `host` header (nginx refuses a request that repeats it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClientHost {
    #[default]
    Authority,
    HostHeader,
}

impl ClientHost {
    /// The entry's name, to read it on its own.
    pub const fn name(self) -> &'static str {
        match self {
            ClientHost::Authority => ":authority",
            ClientHost::HostHeader => "host",
        }
    }

    /// The client's Host in `fields`.
    pub fn get<'a>(self, fields: &[(&'a [u8], &'a [u8])]) -> Option<&'a [u8]> {
        get(fields, self.name())
    }
}

/// A change to a header map. Names and values borrow from the configuration when they can, so
/// the same security headers on every response cost no allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit<'a> {
    /// Replace every value of the header with this one.
    Set(Cow<'a, str>, Cow<'a, [u8]>),
    /// Add a value, keeping the others.
    Add(Cow<'a, str>, Cow<'a, [u8]>),
    /// Remove every value of the header.
    Remove(Cow<'a, str>),
}

impl<'a> Edit<'a> {
    /// The same edit, borrowing this one's name and value: how edits kept for many requests
    /// join one request's list without copying them.
    pub fn borrowed(&self) -> Edit<'_> {
        match self {
            Edit::Set(name, value) => Edit::Set(Cow::Borrowed(name), Cow::Borrowed(value)),
            Edit::Add(name, value) => Edit::Add(Cow::Borrowed(name), Cow::Borrowed(value)),
            Edit::Remove(name) => Edit::Remove(Cow::Borrowed(name)),
        }
    }

    /// Applies the edit to a snapshot of a map, as the host would to the map itself. Names
    /// compare case-insensitively (hosts keep them lower-case; HTTP/1 clients may not).
    pub fn apply_to<'s>(&'s self, fields: &mut Fields<'s>) {
        match self {
            Edit::Set(name, value) => {
                let name = name.as_bytes();
                let mut value = Some(value.as_ref());
                fields.retain_mut(|(n, v)| {
                    if !n.eq_ignore_ascii_case(name) {
                        return true;
                    }
                    // Replace in place (keeping the header's position), drop later duplicates.
                    match value.take() {
                        Some(new) => {
                            *v = new;
                            true
                        }
                        None => false,
                    }
                });
                if let Some(value) = value {
                    fields.push((name, value));
                }
            }
            Edit::Add(name, value) => fields.push((name.as_bytes(), value.as_ref())),
            Edit::Remove(name) => fields.retain(|(n, _)| !n.eq_ignore_ascii_case(name.as_bytes())),
        }
    }
}

/// Encodes pairs for `proxy_send_local_response`, `proxy_set_header_map_pairs` and the like.
pub fn encode(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let size_of = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    let data_len: usize = pairs.iter().map(|(n, v)| n.len() + v.len() + 2).sum();
    let mut out = Vec::with_capacity(4 + pairs.len() * 8 + data_len);
    out.extend_from_slice(&size_of(pairs.len()));
    for (name, value) in pairs {
        out.extend_from_slice(&size_of(name.len()));
        out.extend_from_slice(&size_of(value.len()));
    }
    for (name, value) in pairs {
        out.extend_from_slice(name);
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

/// Decodes a host's header map into owned pairs; `None` if the bytes are malformed.
pub fn decode(bytes: &[u8]) -> Option<Pairs> {
    decode_borrowed(bytes).map(|fields| {
        fields
            .into_iter()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect()
    })
}

/// Decodes a host's header map, borrowing from `bytes`; `None` if the bytes are malformed
/// (never a panic: the sizes come from outside).
pub fn decode_borrowed(bytes: &[u8]) -> Option<Fields<'_>> {
    fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
        let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(raw)).ok()
    }
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = read_u32(bytes, 0)?;
    let mut sizes_at = 4usize;
    let mut data_at = count.checked_mul(8)?.checked_add(4)?;
    let mut pairs = Vec::with_capacity(count.min(bytes.len() / 10));
    for _ in 0..count {
        let name_len = read_u32(bytes, sizes_at)?;
        let value_len = read_u32(bytes, sizes_at.checked_add(4)?)?;
        sizes_at = sizes_at.checked_add(8)?;
        let name = bytes.get(data_at..data_at.checked_add(name_len)?)?;
        data_at = data_at.checked_add(name_len)?.checked_add(1)?;
        let value = bytes.get(data_at..data_at.checked_add(value_len)?)?;
        data_at = data_at.checked_add(value_len)?.checked_add(1)?;
        pairs.push((name, value));
    }
    Some(pairs)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn a_borrowed_edit_is_the_same_edit() {
        let owned = [
            Edit::Set(Cow::Owned("x-a".to_owned()), Cow::Owned(b"1".to_vec())),
            Edit::Add(Cow::Owned("x-b".to_owned()), Cow::Owned(b"\xff".to_vec())),
            Edit::Remove(Cow::Owned("x-c".to_owned())),
        ];
        for edit in &owned {
            let borrowed = edit.borrowed();
            assert_eq!(&borrowed, edit);
            assert!(matches!(
                borrowed,
                Edit::Set(Cow::Borrowed(_), Cow::Borrowed(_))
                    | Edit::Add(Cow::Borrowed(_), Cow::Borrowed(_))
                    | Edit::Remove(Cow::Borrowed(_))
            ));
        }
    }

    #[test]
    fn round_trips_including_non_utf8_and_empty_values() {
        let pairs: Vec<(&[u8], &[u8])> = vec![
            (b":path", b"/a?b=c"),
            (b"x-bin", b"\xff\xfe"),
            (b"x-empty", b""),
        ];
        let encoded = encode(&pairs);
        let decoded = decode(&encoded).unwrap();
        let expected: Vec<(Vec<u8>, Vec<u8>)> = pairs
            .iter()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect();
        assert_eq!(decoded, expected);
    }

    #[test]
    fn layout_matches_the_abi() {
        let encoded = encode(&[(b"ab", b"c")]);
        assert_eq!(encoded, b"\x01\0\0\0\x02\0\0\0\x01\0\0\0ab\0c\0");
    }

    fn pairs(list: &[(&str, &str)]) -> Pairs {
        list.iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn edits_apply_like_the_host() {
        let owned = pairs(&[
            (":status", "200"),
            ("server", "x"),
            ("vary", "a"),
            ("vary", "b"),
            ("Server", "y"),
        ]);
        let edits = [
            Edit::Remove("server".into()),
            Edit::Set("vary".into(), (&b"Origin"[..]).into()),
            Edit::Add("vary".into(), (&b"Accept"[..]).into()),
            Edit::Set("x-new".into(), b"1".to_vec().into()),
        ];
        let mut map = borrow(&owned);
        edits[0].apply_to(&mut map);
        assert_eq!(
            map,
            borrow(&pairs(&[(":status", "200"), ("vary", "a"), ("vary", "b")]))
        );
        edits[1].apply_to(&mut map);
        assert_eq!(
            map,
            borrow(&pairs(&[(":status", "200"), ("vary", "Origin")]))
        );
        edits[2].apply_to(&mut map);
        edits[3].apply_to(&mut map);
        let expected = pairs(&[
            (":status", "200"),
            ("vary", "Origin"),
            ("vary", "Accept"),
            ("x-new", "1"),
        ]);
        assert_eq!(map, borrow(&expected));
        assert_eq!(get(&map, "VARY"), Some(&b"Origin"[..]));
    }

    #[test]
    fn malformed_input_is_refused_not_a_panic() {
        assert_eq!(decode(b""), Some(vec![]));
        assert_eq!(decode(b"\x01"), None);
        assert_eq!(decode(b"\xff\xff\xff\xff"), None);
        assert_eq!(decode(b"\x01\0\0\0\xff\xff\xff\xff\0\0\0\0"), None);
        let mut truncated = encode(&[(b"name", b"value")]);
        truncated.truncate(truncated.len() - 3);
        assert_eq!(decode(&truncated), None);
    }
}
