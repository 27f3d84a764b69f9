//! Finding a token in a request (a header after its prefix, a query parameter, a cookie) and
//! the header edit that removes it again once verified.

use std::borrow::Cow;

use palisade_kit::header_pairs::Edit;

use crate::config::TokenLocation;

type Fields<'a> = [(&'a [u8], &'a [u8])];

fn values<'a, 'n>(
    headers: &'a Fields<'a>,
    name: &'n str,
) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| *v)
}

/// Every token `location` holds, in order, empty ones included: a header's values after the
/// prefix (a value without it holds none: `Authorization: Basic ...`), the query parameters of
/// that name (however an upstream would spell it, see [`palisade_kit::query::name_is`]), the
/// cookies of that name (unquoted).
fn candidates<'a>(
    location: &'a TokenLocation,
    headers: &'a Fields<'a>,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    let (header, query, cookie) = match location {
        TokenLocation::Header { name, prefix } => (Some((name, prefix)), None, None),
        TokenLocation::Query(param) => (None, Some(param), None),
        TokenLocation::Cookie(cookie) => (None, None, Some(cookie)),
    };
    let in_header = header.into_iter().flat_map(move |(name, prefix)| {
        values(headers, name).filter_map(move |value| {
            let head = value.get(..prefix.len())?;
            head.eq_ignore_ascii_case(prefix.as_bytes())
                .then(|| value.get(prefix.len()..).map(<[u8]>::trim_ascii))
                .flatten()
        })
    });
    let in_query = query.into_iter().flat_map(move |param| {
        let query = values(headers, ":path")
            .next()
            .and_then(|path| palisade_kit::query::split_target(path).1)
            .unwrap_or_default();
        palisade_kit::query::parameters(query)
            .filter_map(move |(_, pair)| palisade_kit::query::value_of(pair, param))
    });
    let in_cookie = cookie.into_iter().flat_map(move |cookie| {
        values(headers, "cookie")
            .flat_map(|header| header.split(|&b| b == b';'))
            .filter_map(move |pair| cookie_value(pair, cookie))
            .map(|v| {
                v.strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(v)
            })
    });
    in_header.chain(in_query).chain(in_cookie)
}

/// The token at `location`, if the request carries one there.
pub fn find<'a>(location: &'a TokenLocation, headers: &'a Fields<'a>) -> Option<&'a [u8]> {
    candidates(location, headers).find(|token| !token.is_empty())
}

/// Whether `location` holds two different tokens. With the token forwarded, one would be
/// verified and the other could reach the upstream (Envoy's `jwt_authn` joins repeated
/// headers, which then fail to parse; repeated API keys are refused the same way). The same
/// token twice (one cookie set for two paths) is no ambiguity.
pub fn is_repeated(location: &TokenLocation, headers: &Fields<'_>) -> bool {
    let mut tokens = candidates(location, headers).filter(|token| !token.is_empty());
    let first = tokens.next();
    tokens.any(|token| Some(token) != first)
}

/// The value of a cookie pair named `name`. Names are compared with the spaces around them
/// trimmed, as Go's `net/http`, Node's `cookie` and Python's `SimpleCookie` read them (`session
/// =x` is a `session` cookie to them), and percent-decoded with `.` and a space read as `_`, as
/// PHP reads them (`s%65ssion`): a copy spelled so must be one here too, or it would survive
/// removal.
fn cookie_value<'a>(pair: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let at = pair.iter().position(|&b| b == b'=')?;
    palisade_kit::query::name_is(pair.get(..at)?.trim_ascii(), name)
        .then(|| pair.get(at + 1..))
        .flatten()
        .map(<[u8]>::trim_ascii)
}

/// `path` without any copy of the query parameter `param` (`;`-separated ones too, see
/// `palisade_kit::query`); `None` when it has no query.
pub fn without_parameter(path: &[u8], param: &str) -> Option<Vec<u8>> {
    let (base, query) = palisade_kit::query::split_target(path);
    let kept = palisade_kit::query::without(query?, |pair| {
        palisade_kit::query::value_of(pair, param).is_some()
    });
    let mut new_path = base.to_vec();
    if !kept.is_empty() {
        new_path.push(b'?');
        new_path.extend_from_slice(&kept);
    }
    Some(new_path)
}

/// A token that appears twice, differently, where it would be forwarded.
#[derive(Debug, PartialEq, Eq)]
pub struct Repeated;

/// The edits for a verified token's location: [`removal`] unless the token is forwarded, and
/// for a header, always, the copies an upstream would read as that header (`x_auth_token` for
/// `x-auth-token`), which nobody verified. A forwarded token must be the only one there
/// ([`is_repeated`]); a removed one takes every copy along.
pub fn removals(
    location: &TokenLocation,
    headers: &Fields<'_>,
    forward: bool,
) -> Result<Vec<Edit<'static>>, Repeated> {
    if forward && is_repeated(location, headers) {
        return Err(Repeated);
    }
    let mut edits: Vec<Edit<'static>> = Vec::new();
    if !forward {
        edits.extend(removal(location, headers));
    }
    if let TokenLocation::Header { name, .. } = location {
        edits.extend(palisade_kit::identity::other_spellings(headers, &[name]));
    }
    Ok(edits)
}

/// The edit that takes the token out of the request: the whole header (as `jwt_authn` does),
/// the parameter from `:path`, the cookie from `cookie`.
pub fn removal(location: &TokenLocation, headers: &Fields<'_>) -> Option<Edit<'static>> {
    match location {
        TokenLocation::Header { name, .. } => Some(Edit::Remove(Cow::Owned(name.clone()))),
        TokenLocation::Query(param) => {
            let path = values(headers, ":path").next()?;
            let new_path = without_parameter(path, param)?;
            Some(Edit::Set(Cow::Borrowed(":path"), Cow::Owned(new_path)))
        }
        TokenLocation::Cookie(cookie) => Some(cookies_removal(headers, &[cookie.as_str()])),
    }
}

/// The one `cookie` edit that takes every cookie named in `names` out of the request (one edit
/// per name would each start from the request's header, and only the last would hold).
pub fn cookies_removal(headers: &Fields<'_>, names: &[&str]) -> Edit<'static> {
    let kept: Vec<&[u8]> = values(headers, "cookie")
        .flat_map(|header| header.split(|&b| b == b';'))
        .map(<[u8]>::trim_ascii)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| names.iter().all(|name| cookie_value(pair, name).is_none()))
        .collect();
    if kept.is_empty() {
        Edit::Remove(Cow::Borrowed("cookie"))
    } else {
        Edit::Set(Cow::Borrowed("cookie"), Cow::Owned(kept.join(&b"; "[..])))
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn bearer() -> TokenLocation {
        TokenLocation::Header {
            name: "authorization".into(),
            prefix: "Bearer ".into(),
        }
    }

    #[test]
    fn a_header_token_follows_its_prefix_in_any_case() {
        let h: Vec<(&[u8], &[u8])> = vec![
            (b"Authorization", b"Basic dXNlcjpwYXNz"),
            (b"authorization", b"bearer  abc.def.ghi "),
        ];
        assert_eq!(find(&bearer(), &h), Some(&b"abc.def.ghi"[..]));
        let basic_only: Vec<(&[u8], &[u8])> = vec![(b"authorization", b"Basic x")];
        assert_eq!(find(&bearer(), &basic_only), None);
        let empty: Vec<(&[u8], &[u8])> = vec![(b"authorization", b"Bearer   ")];
        assert_eq!(find(&bearer(), &empty), None);
        let raw = TokenLocation::Header {
            name: "x-jwt".into(),
            prefix: String::new(),
        };
        let h: Vec<(&[u8], &[u8])> = vec![(b"x-jwt", b"t.t.t")];
        assert_eq!(find(&raw, &h), Some(&b"t.t.t"[..]));
    }

    #[test]
    fn a_query_token_is_found_and_removed_alone() {
        let q = TokenLocation::Query("access_token".into());
        let h: Vec<(&[u8], &[u8])> = vec![(b":path", b"/a?x=1&access_token=t.t.t&y=2")];
        assert_eq!(find(&q, &h), Some(&b"t.t.t"[..]));
        assert_eq!(
            removal(&q, &h),
            Some(Edit::Set(":path".into(), b"/a?x=1&y=2".to_vec().into()))
        );
        let only: Vec<(&[u8], &[u8])> = vec![(b":path", b"/a?access_token=t")];
        assert_eq!(
            removal(&q, &only),
            Some(Edit::Set(":path".into(), b"/a".to_vec().into()))
        );
        // A copy behind `;` (a separator to Rack 2 and old parse_qs) goes too.
        let hidden: Vec<(&[u8], &[u8])> =
            vec![(b":path", b"/x?access_token=good&q=1;access_token=forged")];
        assert_eq!(find(&q, &hidden), Some(&b"good"[..]));
        assert_eq!(
            removal(&q, &hidden),
            Some(Edit::Set(":path".into(), b"/x?q=1".to_vec().into()))
        );
        let similar: Vec<(&[u8], &[u8])> = vec![(b":path", b"/a?my_access_token=t")];
        assert_eq!(find(&q, &similar), None);
    }

    #[test]
    fn a_cookie_token_is_found_and_removed_alone() {
        let c = TokenLocation::Cookie("session".into());
        let h: Vec<(&[u8], &[u8])> = vec![
            (b"cookie", b"theme=dark; session=t.t.t"),
            (b"cookie", b"lang=en"),
        ];
        assert_eq!(find(&c, &h), Some(&b"t.t.t"[..]));
        assert_eq!(
            removal(&c, &h),
            Some(Edit::Set(
                "cookie".into(),
                b"theme=dark; lang=en".to_vec().into()
            ))
        );
        let only: Vec<(&[u8], &[u8])> = vec![(b"cookie", b"session=\"q.q.q\"")];
        assert_eq!(find(&c, &only), Some(&b"q.q.q"[..]));
        assert_eq!(removal(&c, &only), Some(Edit::Remove("cookie".into())));
        // Every copy goes, however spaced: Go, Node and Python read `session =x` as `session`.
        let spaced: Vec<(&[u8], &[u8])> =
            vec![(b"cookie", b"session =forged; theme=dark;  session\t= t.t.t")];
        assert_eq!(find(&c, &spaced), Some(&b"forged"[..]));
        assert_eq!(
            removal(&c, &spaced),
            Some(Edit::Set("cookie".into(), b"theme=dark".to_vec().into()))
        );
    }

    #[test]
    fn a_token_given_twice_is_seen() {
        let two: Vec<(&[u8], &[u8])> = vec![
            (b"authorization", b"Bearer a.a.a"),
            (b"Authorization", b"bearer b.b.b"),
        ];
        assert!(is_repeated(&bearer(), &two));
        let other_scheme: Vec<(&[u8], &[u8])> = vec![
            (b"authorization", b"Bearer a.a.a"),
            (b"authorization", b"Basic dXNlcg=="),
        ];
        assert!(!is_repeated(&bearer(), &other_scheme));
        let q = TokenLocation::Query("access_token".into());
        let hidden: Vec<(&[u8], &[u8])> = vec![(b":path", b"/x?access_token=a&q=1;access_token=b")];
        assert!(is_repeated(&q, &hidden));
        let once: Vec<(&[u8], &[u8])> = vec![(b":path", b"/x?access_token=a&my_access_token=b")];
        assert!(!is_repeated(&q, &once));
        let c = TokenLocation::Cookie("session".into());
        let cookies: Vec<(&[u8], &[u8])> = vec![
            (b"cookie", b"session=a; theme=dark"),
            (b"cookie", b"session=b"),
        ];
        assert!(is_repeated(&c, &cookies));
        assert!(!is_repeated(&c, &cookies[..1]));
        // One cookie set for two paths arrives twice, the same.
        let same: Vec<(&[u8], &[u8])> = vec![(b"cookie", b"session=a; session=a")];
        assert!(!is_repeated(&c, &same));
        // Spaces around a name, or an encoded letter, do not make it another cookie to
        // upstreams (Go, Node, Python trim; PHP decodes).
        let spaced: Vec<(&[u8], &[u8])> = vec![(b"cookie", b"session =forged; session=a")];
        assert!(is_repeated(&c, &spaced));
        let encoded: Vec<(&[u8], &[u8])> = vec![(b"cookie", b"s%65ssion=forged; session=a")];
        assert!(is_repeated(&c, &encoded));
        // A name spelled as upstreams decode it is the same parameter.
        let encoded: Vec<(&[u8], &[u8])> = vec![(b":path", b"/x?access_token=a&access%5Ftoken=b")];
        assert!(is_repeated(&q, &encoded));
        let only_encoded: Vec<(&[u8], &[u8])> = vec![(b":path", b"/x?q=1&access.token=t.t.t")];
        assert_eq!(find(&q, &only_encoded), Some(&b"t.t.t"[..]));
        assert_eq!(
            removal(&q, &only_encoded),
            Some(Edit::Set(":path".into(), b"/x?q=1".to_vec().into()))
        );
    }
}
