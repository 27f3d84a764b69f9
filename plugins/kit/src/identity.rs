//! The request headers through which palisade-auth tells the plugins after it (and the upstream)
//! who is calling. palisade-auth owns every header with the [`PREFIX`]: it removes them from the
//! client's request before it sets its own, so a client can never claim an identity. Plugins
//! that run without palisade-auth in front must not trust them.

/// Every header palisade-auth owns starts with this.
pub const PREFIX: &str = "x-palisade-";
/// The authenticated subject (JWT `sub`, the API key's consumer, the introspected `sub`).
pub const SUBJECT: &str = "x-palisade-subject";
/// The consumer a rate limit or audit event is keyed by: `<issuer>/<sub>` for a token, the
/// configured name (never with a `/`) for an API key.
pub const CONSUMER: &str = "x-palisade-consumer";
/// The provider that authenticated the request.
pub const PROVIDER: &str = "x-palisade-auth-provider";
/// The identity headers every palisade-auth sets, which plugins after it read by name.
pub const NAMES: [&str; 3] = [SUBJECT, CONSUMER, PROVIDER];

use std::borrow::Cow;

use crate::header_pairs::Edit;

/// The removals of every header in `headers` that palisade-auth owns ([`is_owned`]) or `also`
/// names, each name once, lower-cased (a removal takes every value of a name).
pub fn client_copies(
    headers: &[(&[u8], &[u8])],
    also: impl Fn(&[u8]) -> bool,
) -> Vec<Edit<'static>> {
    removals_of(headers, |name| is_owned(name) || also(name))
}

/// The removals of the headers in `headers` an upstream would read as one of `names` (lower
/// case) but that are spelled otherwise (`x_api_key` for `x-api-key`, see [`spelled_alike`]),
/// each once: removing a credential header must remove these too.
pub fn other_spellings(headers: &[(&[u8], &[u8])], names: &[&str]) -> Vec<Edit<'static>> {
    removals_of(headers, |sent| {
        names.iter().any(|name| {
            spelled_alike(sent, name.as_bytes()) && !sent.eq_ignore_ascii_case(name.as_bytes())
        })
    })
}

/// The removal of each header of `headers` that `remove` picks, each name once, lower-cased.
fn removals_of(headers: &[(&[u8], &[u8])], remove: impl Fn(&[u8]) -> bool) -> Vec<Edit<'static>> {
    let mut edits: Vec<Edit<'static>> = Vec::new();
    for (name, _) in headers {
        if !remove(name) {
            continue;
        }
        let edit = Edit::Remove(Cow::Owned(
            String::from_utf8_lossy(name).to_ascii_lowercase(),
        ));
        if !edits.contains(&edit) {
            edits.push(edit);
        }
    }
    edits
}

/// Does palisade-auth own this header (so a client must not send it)? Header names compare
/// case-insensitively, and `_` counts as `-`: Envoy passes `x_palisade_subject` on by default
/// (`headers_with_underscores_action: ALLOW`), and CGI-style upstreams (WSGI, Rack, PHP) read
/// both spellings as the same `HTTP_X_PALISADE_SUBJECT`.
pub fn is_owned(name: &[u8]) -> bool {
    name.get(..PREFIX.len())
        .is_some_and(|head| spelled_alike(head, PREFIX.as_bytes()))
}

/// Would an upstream read `sent` as the header `name`? Case-insensitive, and `-` and `_` alike
/// (see [`is_owned`]).
pub fn spelled_alike(sent: &[u8], name: &[u8]) -> bool {
    let dash = |b: u8| b == b'-' || b == b'_';
    sent.len() == name.len()
        && sent
            .iter()
            .zip(name)
            .all(|(&b, &n)| b.eq_ignore_ascii_case(&n) || (dash(b) && dash(n)))
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn owned_headers_match_in_any_case() {
        assert!(is_owned(SUBJECT.as_bytes()));
        assert!(is_owned(b"X-Palisade-Consumer"));
        assert!(is_owned(b"x-palisade-"));
        assert!(!is_owned(b"x-palisad"));
        assert!(!is_owned(b"x-request-id"));
        assert!(is_owned(b"x_palisade_subject"));
        assert!(is_owned(b"X-Palisade_Consumer"));
        assert!(!is_owned(b"x_palisad"));
        assert!(!is_owned(b"x.palisade-subject"));
        assert!(spelled_alike(b"X_User_Email", b"x-user-email"));
        assert!(!spelled_alike(b"x-user-emai", b"x-user-email"));
        assert!(spelled_alike(b"x-user-email", b"x_user_email"));
    }

    #[test]
    fn client_copies_are_removed_once_each_lower_cased() {
        let headers: [(&[u8], &[u8]); 5] = [
            (b"X-Palisade-Subject", b"a"),
            (b"x-palisade-subject", b"b"),
            (b"x-user-email", b"c"),
            (b"x-tenant", b"d"),
            (b"x_palisade_consumer", b"e"),
        ];
        let remove = |n: &str| Edit::Remove(Cow::Owned(n.to_owned()));
        assert_eq!(
            client_copies(&headers, |_| false),
            [remove("x-palisade-subject"), remove("x_palisade_consumer")]
        );
        assert_eq!(
            client_copies(&headers, |name| spelled_alike(name, b"x-user-email")),
            [
                remove("x-palisade-subject"),
                remove("x-user-email"),
                remove("x_palisade_consumer")
            ]
        );
    }

    #[test]
    fn other_spellings_of_a_credential_header_are_removed_once() {
        let headers: Vec<(&[u8], &[u8])> = vec![
            (b"x-api-key", b"k"),
            (b"x_api_key", b"k2"),
            (b"X_Api-Key", b"k3"),
            (b"x_api_key", b"k4"),
            (b"x-api-keys", b"no"),
        ];
        assert_eq!(
            other_spellings(&headers, &["x-api-key"]),
            [
                Edit::Remove(Cow::Borrowed("x_api_key")),
                Edit::Remove(Cow::Borrowed("x_api-key"))
            ]
        );
        assert_eq!(other_spellings(&headers[..1], &["x-api-key"]), []);
        // Several names at once: each copy once, in the order sent.
        let two: Vec<(&[u8], &[u8])> = vec![(b"x_auth_token", b"t"), (b"x_api_key", b"k")];
        assert_eq!(
            other_spellings(&two, &["x-api-key", "x-auth-token"]),
            [
                Edit::Remove(Cow::Borrowed("x_auth_token")),
                Edit::Remove(Cow::Borrowed("x_api_key"))
            ]
        );
    }
}
