//! The path a request names, as the servers behind a proxy resolve it: what rules that must not
//! be dodged (audit classification, rate-limit routes and keys) match on.

use std::borrow::Cow;

/// `path` (without its query) normalised: escapes of unreserved characters decoded, `;`
/// parameters cut from each segment (Tomcat, Jetty and Spring map `/admin;jsessionid=x/users`
/// to `/admin/users`), `.` and `..` segments resolved, repeated slashes merged (RFC 3986
/// §6.2.2; Envoy's `normalize_path` and `merge_slashes`). So `//admin/x`, `/api/../admin/x`,
/// `/%61dmin/x` and `/admin;x/x` are all `/admin/x`. Case is kept: paths are case-sensitive.
/// Other escapes stay encoded (an encoded `/` or `;` is no separator), upper-cased.
pub fn normalize(path: &[u8]) -> Cow<'_, [u8]> {
    let plain = !path
        .windows(2)
        .any(|pair| matches!(pair, [b'/', b'/' | b'.']))
        && !path.iter().any(|&b| b == b'%' || b == b';');
    if plain {
        return Cow::Borrowed(path);
    }
    let mut decoded = Vec::with_capacity(path.len());
    let mut rest = path;
    while let Some(at) = rest.iter().position(|&b| b == b'%') {
        let (head, tail) = rest.split_at(at);
        decoded.extend_from_slice(head);
        let escape = tail
            .get(1..3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escape {
            Some(byte) if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) => {
                decoded.push(byte);
                rest = tail.get(3..).unwrap_or_default();
            }
            Some(_) => {
                decoded.extend(tail.get(..3).unwrap_or_default().to_ascii_uppercase());
                rest = tail.get(3..).unwrap_or_default();
            }
            // A `%` that starts no escape is itself encoded, so it cannot join the escape
            // decoded after it (`/%%36%31dmin` must not become `/%61dmin`, then `/admin`).
            None => {
                decoded.extend_from_slice(b"%25");
                rest = tail.get(1..).unwrap_or_default();
            }
        }
    }
    decoded.extend_from_slice(rest);
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    for segment in decoded.split(|&b| b == b'/') {
        let segment = match segment.iter().position(|&b| b == b';') {
            Some(at) => segment.get(..at).unwrap_or_default(),
            None => segment,
        };
        trailing_slash = matches!(segment, b"" | b"." | b"..");
        match segment {
            b"" | b"." => {}
            b".." => {
                kept.pop();
            }
            segment => kept.push(segment),
        }
    }
    let mut out = Vec::with_capacity(decoded.len());
    for segment in &kept {
        out.push(b'/');
        out.extend_from_slice(segment);
    }
    if trailing_slash || kept.is_empty() {
        out.push(b'/');
    }
    Cow::Owned(out)
}

/// [`normalize`] for a path held as text: normalising never splits a UTF-8 sequence (it cuts
/// and joins at ASCII bytes and decodes escapes to ASCII only).
pub fn normalize_str(path: &str) -> Cow<'_, str> {
    match normalize(path.as_bytes()) {
        Cow::Borrowed(_) => Cow::Borrowed(path),
        Cow::Owned(bytes) => Cow::Owned(match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn paths_are_normalised_as_servers_resolve_them() {
        for (raw, normal) in [
            ("/admin/users", "/admin/users"),
            ("//admin/users", "/admin/users"),
            ("/api/../admin/x", "/admin/x"),
            ("/api/./admin/./x", "/api/admin/x"),
            ("/%61dmin/x", "/admin/x"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%2", "/a%252"),
            ("/%%36%31dmin/x", "/%2561dmin/x"),
            ("/%a%62", "/%25ab"),
            ("/../..", "/"),
            ("/a/b/..", "/a/"),
            ("/a//", "/a/"),
            ("/Admin/x", "/Admin/x"),
            ("/%E2%82%AC", "/%E2%82%AC"),
            ("/admin;jsessionid=x/users", "/admin/users"),
            ("/login;x=1", "/login"),
            ("/public/..;/admin", "/admin"),
            ("/a/;x/b", "/a/b"),
            ("/a%3Bx/b", "/a%3Bx/b"),
            ("/a/b;", "/a/b"),
        ] {
            assert_eq!(normalize_str(raw), normal, "{raw}");
        }
        assert!(matches!(normalize(b"/api/orders"), Cow::Borrowed(_)));
        assert!(matches!(
            normalize_str("/api/orders.json"),
            Cow::Borrowed(_)
        ));
        // Normalising a normal path changes nothing.
        for raw in [
            "/%%36%31dmin/x",
            "/%a%62",
            "//a/./b/../%7e%2F",
            "/x%",
            "/a;b/;c/.;/d",
        ] {
            let once = normalize_str(raw).into_owned();
            assert_eq!(normalize_str(&once), once, "{raw}");
        }
        // Bytes that are not UTF-8 pass through as they are.
        assert_eq!(&*normalize(b"//\xff/x"), b"/\xff/x");
    }
}
