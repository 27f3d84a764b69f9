//! What never leaves the proxy: secret headers are never captured, and the path's query is
//! redacted before an event is built. Names are matched after percent-decoding and in lower
//! case, and by the words secrets are named with: over-redacting is the safe side.

use crate::config::{QueryMode, Redaction};

/// The value that replaces a redacted query value.
pub const REDACTED: &str = "REDACTED";

/// Header names that always carry credentials.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// Words in a header or parameter name that say it holds a credential.
const SECRET_WORDS: &[&str] = &[
    "token",
    "secret",
    "password",
    "passwd",
    "apikey",
    "api-key",
    "api_key",
    "session",
    "auth",
    "signature",
    "credential",
    "access_key",
    "accesskey",
    "jwt",
    "assertion",
];

/// Query parameter names that are secrets though no word above says so.
const SECRET_PARAMS: &[&str] = &["key", "code", "sig", "pwd"];

/// Does this (lower-case) header name carry secrets?
pub fn is_secret_header(name: &str, configured: &[String]) -> bool {
    SECRET_HEADERS.contains(&name)
        || SECRET_WORDS.iter().any(|word| name.contains(word))
        || configured.iter().any(|c| c.eq_ignore_ascii_case(name))
}

fn is_secret_param(name: &str, configured: &[String]) -> bool {
    SECRET_PARAMS.contains(&name)
        || SECRET_WORDS.iter().any(|word| name.contains(word))
        || configured.iter().any(|c| c.eq_ignore_ascii_case(name))
}

/// A parameter's name as an upstream reads it: percent-decoded (`+` a space), lower-cased, a
/// trailing `[...]` (array syntax: `key[]`, `key[0]`) dropped, and `.`, a space and a lone `[`
/// read as `_`, as PHP does ([`palisade_kit::query::name_is`]). So `api.key`, `api+key`,
/// `API%5FKEY` and `key[]` are the names they stand for. Invalid escapes stay as they are.
fn decoded_name(raw: &str) -> String {
    let decoded = percent_decoded(raw);
    let name = match decoded.find('[') {
        Some(at) if decoded.ends_with(']') => decoded.get(..at).unwrap_or_default(),
        _ => &decoded,
    };
    name.chars()
        .map(|c| if matches!(c, '.' | ' ' | '[') { '_' } else { c })
        .collect()
}

/// `%5F` -> `_`, `+` -> space, lower-cased; invalid escapes kept as they are.
fn percent_decoded(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = |at: usize| bytes.get(at).and_then(|c| (*c as char).to_digit(16));
        match (b, hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).to_ascii_lowercase()
}

/// The query's parameters, each with the separator before it: `;` separates as `&` does
/// ([`palisade_kit::query::parameters`]), so `q=1;access_token=x` is an `access_token` here as
/// it is to Rack 2 or Python's old `parse_qs`, not part of `q`'s value. Splitting a `str` on
/// ASCII separators keeps it UTF-8.
fn parameters(query: &str) -> impl Iterator<Item = (char, &str)> {
    palisade_kit::query::parameters(query.as_bytes()).map(|(separator, pair)| {
        (
            char::from(separator),
            std::str::from_utf8(pair).unwrap_or_default(),
        )
    })
}

/// A captured header's value as an event carries it. A value naming a URL (`referer`,
/// `origin`, `x-original-url`, `x-forwarded-uri`...) carries the same secrets a path does: its
/// query is redacted as the path's is, its fragment dropped (an implicit-flow `access_token`
/// lives there) and the password of a `user:password@` removed. Any value with a `?` is read
/// that way: over-redacting is the safe side.
pub fn redact_header_value(value: &str, redaction: &Redaction) -> String {
    // A protocol-relative `//user:password@host/...` has an authority too; a `://` counts only
    // before any `/`, `?` or `#` (not one in the query: `/cb?next=https://app/`).
    let scheme_end = if value.starts_with("//") {
        Some(2)
    } else {
        value
            .find("://")
            .filter(|&at| {
                value
                    .get(..at)
                    .is_some_and(|scheme| !scheme.contains(['/', '?', '#']))
            })
            .map(|at| at + 3)
    };
    let mut value = value;
    if scheme_end.is_some() || value.starts_with('/') {
        if let Some(at) = value.find('#') {
            value = value.get(..at).unwrap_or_default();
        }
    }
    // `https://u:p@host/x`: the authority ends at the first `/`, `?` or `#` after the scheme.
    let userinfo_end = scheme_end.and_then(|start| {
        let rest = value.get(start..)?;
        let end = rest
            .bytes()
            .position(|b| matches!(b, b'/' | b'?' | b'#'))
            .unwrap_or(rest.len());
        Some((start, start + rest.get(..end)?.rfind('@')?))
    });
    match userinfo_end {
        Some((start, at)) => {
            let mut url = String::with_capacity(value.len());
            url.push_str(value.get(..start).unwrap_or_default());
            url.push_str(REDACTED);
            url.push_str(value.get(at..).unwrap_or_default());
            redact_path(&url, redaction)
        }
        None => redact_path(value, redaction),
    }
}

/// The path as an event carries it: the query redacted per `redaction`, a fragment dropped.
pub fn redact_path(path: &str, redaction: &Redaction) -> String {
    let Some((base, query)) = path.split_once('?') else {
        return path.to_owned();
    };
    // What follows a `#` in the query is a fragment: no upstream reads it as a parameter, and
    // it is where a client that sends one puts tokens.
    let query = match query.find('#') {
        Some(at) => query.get(..at).unwrap_or_default(),
        None => query,
    };
    if redaction.query == QueryMode::Drop || query.is_empty() {
        return base.to_owned();
    }
    let mut out = String::with_capacity(path.len());
    out.push_str(base);
    let mut first = true;
    // A `?` inside the query separates too: on Kong `:path` is the *decoded* path, then `?`,
    // then the raw query, so `/x%3Fq=1?api_key=S` arrives as `/x?q=1?api_key=S`, and `api_key`
    // must not hide in `q`'s value.
    let pairs = parameters(query).flat_map(|(separator, pair)| {
        pair.split('?')
            .enumerate()
            .map(move |(i, part)| (if i == 0 { separator } else { '?' }, part))
            .filter(|(_, part)| !part.is_empty())
    });
    for (separator, pair) in pairs {
        let (raw_name, value) = match pair.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (pair, None),
        };
        let name = decoded_name(raw_name);
        let kept_value = match redaction.query {
            QueryMode::Keep if is_secret_param(&name, &redaction.redact_query_params) => continue,
            QueryMode::Keep => value,
            _ if redaction
                .keep_query_params
                .iter()
                .any(|k| k.eq_ignore_ascii_case(&name))
                && !is_secret_param(&name, &redaction.redact_query_params) =>
            {
                value
            }
            // A bare name (`?eyJhbGciOi...`, a magic link's token) is a value too.
            _ if value.is_none() => {
                out.push(if first { '?' } else { separator });
                first = false;
                out.push_str(REDACTED);
                continue;
            }
            _ => value.map(|_| REDACTED),
        };
        out.push(if first { '?' } else { separator });
        first = false;
        out.push_str(raw_name);
        if let Some(value) = kept_value {
            out.push('=');
            out.push_str(value);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn redaction(query: QueryMode) -> Redaction {
        Redaction {
            query,
            keep_query_params: vec!["page".into(), "token".into()],
            redact_query_params: vec!["tenant".into()],
            headers: vec![],
        }
    }

    #[test]
    fn values_are_redacted_by_default_except_kept_names() {
        let r = redaction(QueryMode::RedactValues);
        assert_eq!(
            redact_path("/o?page=2&q=alice%40x.com&flag", &r),
            "/o?page=2&q=REDACTED&REDACTED"
        );
        // A bare name may be the secret (a magic link's token); a kept one stays.
        assert_eq!(
            redact_path("/login?eyJhbGciOiJIUzI1NiJ9.e30.sig&page", &r),
            "/login?REDACTED&page"
        );
        // A kept name that names a secret is still redacted.
        assert_eq!(redact_path("/o?token=abc", &r), "/o?token=REDACTED");
        assert_eq!(redact_path("/o", &r), "/o");
        assert_eq!(redact_path("/o?", &r), "/o");
    }

    #[test]
    fn drop_removes_the_query() {
        assert_eq!(
            redact_path("/o?page=2&x=1", &redaction(QueryMode::Drop)),
            "/o"
        );
    }

    #[test]
    fn keep_removes_secret_parameters_whole() {
        let r = redaction(QueryMode::Keep);
        assert_eq!(
            redact_path(
                "/o?page=2&access_token=s3cr3t&API%5FKEY=k&Tenant=t&key=x&q=1",
                &r
            ),
            "/o?page=2&q=1"
        );
    }

    #[test]
    fn semicolons_separate_parameters_too() {
        // Rack 2 and Python's old parse_qs read `access_token` here, not part of `q`.
        let keep = redaction(QueryMode::Keep);
        assert_eq!(redact_path("/x?q=1;access_token=SECRET", &keep), "/x?q=1");
        assert_eq!(redact_path("/x?access_token=SECRET;q=1", &keep), "/x?q=1");
        // The original separators are kept; empty parameters go.
        assert_eq!(
            redact_path("/x?a=1;b=2&c=3;;d&e=", &keep),
            "/x?a=1;b=2&c=3;d&e="
        );
        assert_eq!(
            redact_path("/x?a=1;key=k&b=2;sig=s;c", &keep),
            "/x?a=1&b=2;c"
        );
        // Under the default mode a kept name's value stops at the `;`.
        let values = redaction(QueryMode::RedactValues);
        assert_eq!(
            redact_path("/x?page=1;access_token=SECRET&q=2", &values),
            "/x?page=1;access_token=REDACTED&q=REDACTED"
        );
    }

    #[test]
    fn names_read_as_upstreams_read_them() {
        let keep = redaction(QueryMode::Keep);
        assert_eq!(
            redact_path(
                "/o?api.key=1&api+key=2&api[key=3&key[]=4&sig[0]=5&code%5B%5D=6&q=7&jwt=8&x_assertion=9",
                &keep
            ),
            "/o?q=7"
        );
    }

    /// Kong's `:path` is the decoded path, `?`, then the raw query: an encoded `?` in the
    /// path puts a second `?` before the query's parameters.
    #[test]
    fn a_question_mark_inside_the_query_separates() {
        let keep = redaction(QueryMode::Keep);
        assert_eq!(redact_path("/x?q=1?api_key=SECRET", &keep), "/x?q=1");
        let values = redaction(QueryMode::RedactValues);
        assert_eq!(
            redact_path("/x?page=1?api_key=SECRET", &values),
            "/x?page=1?api_key=REDACTED"
        );
    }

    #[test]
    fn fragments_in_the_query_are_dropped() {
        let values = redaction(QueryMode::RedactValues);
        assert_eq!(
            redact_path("/x?page=1#access_token=SECRET", &values),
            "/x?page=1"
        );
        let keep = redaction(QueryMode::Keep);
        assert_eq!(redact_path("/x?q=1#frag", &keep), "/x?q=1");
        assert_eq!(redact_path("/x?#frag", &keep), "/x");
    }

    #[test]
    fn url_valued_headers_are_redacted_like_the_path() {
        let values = redaction(QueryMode::RedactValues);
        assert_eq!(
            redact_header_value("https://app.example/cb?code=abc&page=2", &values),
            "https://app.example/cb?code=REDACTED&page=2"
        );
        assert_eq!(
            redact_header_value("https://app.example/cb#access_token=SECRET", &values),
            "https://app.example/cb"
        );
        assert_eq!(
            redact_header_value("/orig?api_key=SECRET", &redaction(QueryMode::Keep)),
            "/orig"
        );
        assert_eq!(
            redact_header_value("https://bob:hunter2@db.example:8443/x?y", &values),
            "https://REDACTED@db.example:8443/x?REDACTED"
        );
        assert_eq!(
            redact_header_value("//bob:hunter2@db.example/x", &values),
            "//REDACTED@db.example/x"
        );
        assert_eq!(
            redact_header_value("//bob:hunter2@db.example/cb?next=https://app/", &values),
            "//REDACTED@db.example/cb?next=REDACTED"
        );
        // An `@` past the authority is not userinfo.
        assert_eq!(
            redact_header_value("https://a.example/u@b", &values),
            "https://a.example/u@b"
        );
        // Values that name no URL stay as they are, `#` included; a `?` is read as a query.
        assert_eq!(redact_header_value("tenant-7", &values), "tenant-7");
        assert_eq!(redact_header_value("#ff0000", &values), "#ff0000");
        assert_eq!(
            redact_header_value("a?token=x", &values),
            "a?token=REDACTED"
        );
        assert_eq!(
            redact_header_value("https://a.example", &redaction(QueryMode::Drop)),
            "https://a.example"
        );
    }

    #[test]
    fn secret_headers_by_name_word_and_configuration() {
        for name in [
            "authorization",
            "cookie",
            "set-cookie",
            "x-api-key",
            "x-auth-token",
            "x-session-id",
        ] {
            assert!(is_secret_header(name, &[]), "{name}");
        }
        assert!(is_secret_header("x-tenant-pin", &["x-tenant-pin".into()]));
        assert!(!is_secret_header("x-tenant", &[]));
        assert!(!is_secret_header("user-agent", &[]));
    }
}
