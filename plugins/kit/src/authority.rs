//! A request's authority (`host[:port]`, RFC 9110 §7.2), read strictly. A check that matches
//! hosts must see the host the proxy routes on: a value it cannot read as one is refused, never
//! read as "no host", and never matched by a prefix (`api.example.com:evil`,
//! `evil.com@api.example.com`).

/// A host (lower case, without a trailing dot; an IPv6 address keeps its brackets) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    pub host: String,
    pub port: Option<u16>,
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`. The host is a DNS name (letters, digits, `-`,
/// `_`, dots between non-empty labels, one trailing dot allowed) or a bracketed IPv6 address;
/// the port up to 5 digits up to 65535, or empty. `None` for anything else, including IPv6
/// zone ids and percent-encoded names, which clients do not send as a Host.
pub fn parse(authority: &[u8]) -> Option<Authority> {
    let (host, port) = if authority.first() == Some(&b'[') {
        let end = authority.iter().position(|&b| b == b']')?;
        let (host, rest) = authority.split_at(end + 1);
        let inner = host.get(1..end)?;
        if inner.is_empty()
            || !inner
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b":.".contains(&b))
        {
            return None;
        }
        (host, port_of(rest)?)
    } else {
        let end = authority
            .iter()
            .position(|&b| b == b':')
            .unwrap_or(authority.len());
        let (host, rest) = authority.split_at(end);
        let host = host.strip_suffix(b".").unwrap_or(host);
        let labels_ok = !host.is_empty()
            && host.split(|&b| b == b'.').all(|label| {
                !label.is_empty()
                    && label
                        .iter()
                        .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !labels_ok {
            return None;
        }
        (host, port_of(rest)?)
    };
    let host = std::str::from_utf8(host).ok()?.to_ascii_lowercase();
    Some(Authority { host, port })
}

/// `""` or `":"` (no port: RFC 3986's `port = *DIGIT`, which nginx accepts) or `:digits`;
/// `None` when it is neither.
fn port_of(rest: &[u8]) -> Option<Option<u16>> {
    let Some(digits) = rest.strip_prefix(b":") else {
        return rest.is_empty().then_some(None);
    };
    if digits.is_empty() {
        return Some(None);
    }
    if digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let port = digits
        .iter()
        .fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
    u16::try_from(port).ok().map(Some)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn host_port(text: &str) -> Option<(String, Option<u16>)> {
        parse(text.as_bytes()).map(|a| (a.host, a.port))
    }

    #[test]
    fn reads_names_addresses_and_ports() {
        let some = |h: &str, p| Some((h.to_owned(), p));
        assert_eq!(host_port("API.Example.com"), some("api.example.com", None));
        assert_eq!(host_port("api.example.com."), some("api.example.com", None));
        assert_eq!(
            host_port("api.example.com:8443"),
            some("api.example.com", Some(8443))
        );
        assert_eq!(host_port("10.0.0.1:80"), some("10.0.0.1", Some(80)));
        assert_eq!(host_port("[::1]"), some("[::1]", None));
        assert_eq!(
            host_port("[2001:DB8::1]:443"),
            some("[2001:db8::1]", Some(443))
        );
        assert_eq!(host_port("my_host:0"), some("my_host", Some(0)));
        assert_eq!(host_port("a:65535"), some("a", Some(65535)));
        assert_eq!(host_port("api.example.com:"), some("api.example.com", None));
    }

    /// Each of these would let a prefix or suffix match pass a host the proxy does not route
    /// on, or hide the host from a check.
    #[test]
    fn refuses_what_is_not_a_host_and_port() {
        for bad in [
            "",
            ".",
            "api.example.com:x",
            "api.example.com:443:1",
            "api.example.com:+443",
            "api.example.com::",
            "api.example.com:65536",
            "api.example.com:000443",
            "evil.com@api.example.com",
            "api.example.com..",
            "a..b",
            ".example.com",
            "api example.com",
            "api.example.com/x",
            "[::1",
            "[]",
            "[::1]x",
            "[fe80::1%25eth0]",
            "ex\u{e4}mple.com",
            "*.example.com",
        ] {
            assert_eq!(host_port(bad), None, "{bad:?}");
        }
    }
}
