//! CORS with the semantics of Envoy's native CORS filter (`envoy.filters.http.cors`), so the
//! same policy gives the same answers in either, plus `Vary: Origin` wherever the answer depends
//! on the origin (Envoy omits it, and a shared cache could then serve one origin's answer to
//! another).
//!
//! As in Envoy: a request is a CORS request when it has a non-empty `Origin`; a preflight is an
//! `OPTIONS` with a non-empty `Access-Control-Request-Method`; an allowed origin is echoed (never
//! `*`, so credentials are never answered with `*`); the requested method and headers are not
//! checked here (the browser compares them with the lists returned); a preflight from an origin
//! not allowed goes to the upstream untouched unless configured to be refused.

use std::rc::Rc;

use palisade_kit::config::{is_header_name, Problems};
use regex_lite::Regex;

use crate::config::{CorsConfig, DisallowedPreflight, OriginPattern};

/// One compiled allowed-origin pattern.
#[derive(Debug, Clone)]
enum OriginMatcher {
    Any,
    /// Shared with every stream that echoes it: an allowed request costs no copy of its origin.
    Exact(Rc<str>),
    /// `scheme://` + one or more DNS labels + `.domain[:port]`.
    Wildcard {
        scheme: String,
        suffix: String,
    },
    Regex(Regex),
}

impl OriginMatcher {
    fn matches(&self, origin: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(exact) => origin == &**exact,
            Self::Wildcard { scheme, suffix } => origin
                .strip_prefix(scheme.as_str())
                .and_then(|rest| rest.strip_suffix(suffix.as_str()))
                .is_some_and(is_subdomain_labels),
            Self::Regex(regex) => regex.is_match(origin),
        }
    }
}

/// Dot-separated host labels as browsers serialise them: lower case, digits, `-`, and `_`
/// (no DNS hostname character, but browsers send it: `my_app.example.com`); none empty.
fn is_subdomain_labels(labels: &str) -> bool {
    !labels.is_empty()
        && labels.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b))
        })
}

/// A URL scheme as browsers serialise it (RFC 3986, lower case).
fn is_scheme(scheme: &str) -> bool {
    scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
}

/// A port as it follows the host's `:`.
fn is_port(port: &str) -> bool {
    (1..=5).contains(&port.len()) && port.bytes().all(|b| b.is_ascii_digit())
}

fn parse_wildcard(pattern: &str) -> Option<OriginMatcher> {
    let (scheme, rest) = pattern.split_once("://*.")?;
    let (domain, port) = match rest.split_once(':') {
        Some((domain, port)) => (domain, Some(port)),
        None => (rest, None),
    };
    (is_scheme(scheme) && port.is_none_or(is_port) && is_subdomain_labels(domain)).then(|| {
        OriginMatcher::Wildcard {
            scheme: format!("{scheme}://"),
            suffix: format!(".{rest}"),
        }
    })
}

/// Records a problem at `field` when `origin` names its scheme's default port, which no
/// browser's `Origin` carries ([`default_port`]); returns whether it did.
fn refuse_default_port(field: &str, origin: &str, problems: &mut Problems) -> bool {
    let Some(port) = default_port(origin) else {
        return false;
    };
    problems.push_at(
        field,
        format!("{origin:?} can never match: browsers leave out the default port {port}"),
    );
    true
}

/// The port of an `http://...:80` or `https://...:443` origin: a browser's `Origin` never
/// carries it (the URL standard drops a scheme's default port), so such an entry never matches.
fn default_port(origin: &str) -> Option<&'static str> {
    [("http://", ":80"), ("https://", ":443")]
        .into_iter()
        .find(|(scheme, port)| origin.starts_with(scheme) && origin.ends_with(port))
        .map(|(_, port)| port)
}

/// An origin as a browser serialises it in `Origin`: `null`, or `scheme://host[:port]` with a
/// lower-case scheme and host (IDNs in punycode, IPv6 in brackets, a fully qualified name's
/// trailing dot kept) and nothing after. Anything else could never equal a request's `Origin`,
/// so listing it is a mistake.
fn is_serialized_origin(origin: &str) -> bool {
    if origin == "null" {
        return true;
    }
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    let (host_ok, port) = match rest.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((address, after)) => {
                let address_ok = !address.is_empty()
                    && address
                        .bytes()
                        .all(|b| b.is_ascii_digit() || b"abcdef:.".contains(&b));
                (address_ok, after)
            }
            None => (false, ""),
        },
        None => {
            let (host, port) = match rest.find(':') {
                Some(at) => (
                    rest.get(..at).unwrap_or_default(),
                    rest.get(at..).unwrap_or_default(),
                ),
                None => (rest, ""),
            };
            (
                is_subdomain_labels(host.strip_suffix('.').unwrap_or(host)),
                port,
            )
        }
    };
    let port_ok = port.is_empty() || port.strip_prefix(':').is_some_and(is_port);
    is_scheme(scheme) && host_ok && port_ok
}

fn compile_pattern(pattern: &OriginPattern, problems: &mut Problems) -> Option<OriginMatcher> {
    match pattern {
        OriginPattern::Exact(origin) if origin == "*" => Some(OriginMatcher::Any),
        OriginPattern::Exact(origin) => {
            if !is_serialized_origin(origin) {
                problems.push_at(
                    "exact",
                    format!(
                        "{origin:?} is not an origin as browsers send it \
                         (scheme://host[:port] in lower case, no path)"
                    ),
                );
                return None;
            }
            if refuse_default_port("exact", origin, problems) {
                return None;
            }
            Some(OriginMatcher::Exact(origin.as_str().into()))
        }
        OriginPattern::Wildcard(pattern) => {
            if refuse_default_port("wildcard", pattern, problems) {
                return None;
            }
            let parsed = parse_wildcard(pattern);
            if parsed.is_none() {
                problems.push_at(
                    "wildcard",
                    format!("{pattern:?} is not of the form scheme://*.domain[:port] (lower case)"),
                );
            }
            parsed
        }
        OriginPattern::Regex(regex) => match Regex::new(&format!("^(?:{regex})$")) {
            Ok(regex) => Some(OriginMatcher::Regex(regex)),
            Err(err) => {
                problems.push_at("regex", format!("invalid regular expression: {err}"));
                None
            }
        },
    }
}

/// A compiled CORS policy.
#[derive(Debug, Clone)]
pub struct CorsPolicy {
    origins: Vec<OriginMatcher>,
    allow_methods: Option<String>,
    allow_headers: Option<String>,
    expose_headers: Option<String>,
    max_age: Option<String>,
    allow_credentials: bool,
    reject_disallowed_preflight: bool,
}

/// What CORS decides about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsDecision {
    /// No `Origin`: not a CORS request.
    NotCors,
    /// Answer the preflight here (204) with these headers.
    AnswerPreflight(Vec<(&'static str, String)>),
    /// Refuse a preflight from an origin that is not allowed (403).
    RejectPreflight,
    /// Let the request through; on the response, echo this origin if it is allowed.
    Forward { allowed_origin: Option<Rc<str>> },
}

impl CorsPolicy {
    /// Compiles the policy, recording every problem (invalid regexes, malformed origins).
    pub fn build(config: &CorsConfig, problems: &mut Problems) -> Self {
        let mut origins = Vec::new();
        problems.field("allow_origins", |p| {
            if config.allow_origins.is_empty() {
                p.push("must list at least one origin");
            }
            for (i, pattern) in config.allow_origins.iter().enumerate() {
                p.index(i, |p| origins.extend(compile_pattern(pattern, p)));
            }
        });
        let allows_null = config
            .allow_origins
            .iter()
            .any(|o| matches!(o, OriginPattern::Exact(origin) if origin == "null"));
        if config.allow_credentials && allows_null {
            problems.push_at(
                "allow_credentials",
                "cannot be true when the origin \"null\" is allowed: sandboxed iframes and files of any site send it",
            );
        }
        if config.allow_credentials && origins.iter().any(|o| matches!(o, OriginMatcher::Any)) {
            problems.push_at(
                "allow_credentials",
                "cannot be true when every origin is allowed (\"*\"): any site could make credentialed requests",
            );
        }
        for (field, names) in [
            ("allow_headers", &config.allow_headers),
            ("expose_headers", &config.expose_headers),
        ] {
            problems.field(field, |p| {
                for (i, name) in names.iter().enumerate() {
                    let lower = name.to_ascii_lowercase();
                    if name != "*" && !is_header_name(&lower) {
                        p.index(i, |p| {
                            p.push(format!("{name:?} is not an HTTP header name"))
                        });
                    }
                }
            });
        }
        problems.field("allow_methods", |p| {
            for (i, method) in config.allow_methods.iter().enumerate() {
                // Browsers compare the requested method with this list case-sensitively, and
                // send GET, POST, PUT, ... in upper case.
                if method != "*"
                    && (!crate::limits::is_method_token(method)
                        || method.bytes().any(|b| b.is_ascii_lowercase()))
                {
                    p.index(i, |p| {
                        p.push(format!("{method:?} is not an upper-case HTTP method"))
                    });
                }
            }
        });
        let list = |items: &[String]| (!items.is_empty()).then(|| items.join(", "));
        Self {
            origins,
            allow_methods: list(&config.allow_methods),
            allow_headers: list(&config.allow_headers),
            expose_headers: list(&config.expose_headers),
            max_age: config.max_age.map(|age| age.get().as_secs().to_string()),
            allow_credentials: config.allow_credentials,
            reject_disallowed_preflight: config.disallowed_preflight == DisallowedPreflight::Reject,
        }
    }

    /// The origin to echo if `origin` is allowed: a configured exact origin is shared, not
    /// copied. Non-UTF-8 origins are never allowed.
    fn allowed(&self, origin: &[u8]) -> Option<Rc<str>> {
        let exact = self.origins.iter().find_map(|matcher| match matcher {
            OriginMatcher::Exact(exact) if exact.as_bytes() == origin => Some(Rc::clone(exact)),
            _ => None,
        });
        exact.or_else(|| {
            std::str::from_utf8(origin)
                .ok()
                .filter(|origin| self.origins.iter().any(|matcher| matcher.matches(origin)))
                .map(Rc::from)
        })
    }

    /// Decides on a request from its method and CORS request headers (absent or empty headers
    /// as `None`; non-UTF-8 origins are never allowed).
    pub fn on_request(
        &self,
        method: &[u8],
        origin: Option<&[u8]>,
        request_method: Option<&[u8]>,
        request_headers: Option<&[u8]>,
    ) -> CorsDecision {
        let Some(origin) = origin.filter(|o| !o.is_empty()) else {
            return CorsDecision::NotCors;
        };
        let allowed_origin = self.allowed(origin);

        let is_preflight = method == b"OPTIONS" && request_method.is_some_and(|m| !m.is_empty());
        if !is_preflight {
            return CorsDecision::Forward { allowed_origin };
        }
        let Some(origin) = allowed_origin else {
            return if self.reject_disallowed_preflight {
                CorsDecision::RejectPreflight
            } else {
                CorsDecision::Forward {
                    allowed_origin: None,
                }
            };
        };
        let echo =
            |configured: &Option<String>, requested: Option<&[u8]>| match configured.as_deref() {
                Some("*") => requested
                    .filter(|r| !r.is_empty())
                    .map(|r| String::from_utf8_lossy(r).into_owned()),
                other => other.map(str::to_owned),
            };
        let mut headers = vec![("access-control-allow-origin", origin.to_string())];
        if self.allow_credentials {
            headers.push(("access-control-allow-credentials", "true".to_owned()));
        }
        if let Some(methods) = echo(&self.allow_methods, request_method) {
            headers.push(("access-control-allow-methods", methods));
        }
        if let Some(allowed) = echo(&self.allow_headers, request_headers) {
            headers.push(("access-control-allow-headers", allowed));
        }
        if let Some(max_age) = &self.max_age {
            headers.push(("access-control-max-age", max_age.clone()));
        }
        // Meaningless on a preflight, but Envoy's filter sends it there too (its response path
        // decorates its own preflight answer), and the two must answer alike.
        if let Some(expose) = &self.expose_headers {
            headers.push(("access-control-expose-headers", expose.clone()));
        }
        headers.push(("vary", "Origin".to_owned()));
        CorsDecision::AnswerPreflight(headers)
    }

    /// Whether credentialed requests are allowed (`allow_credentials`).
    pub fn allows_credentials(&self) -> bool {
        self.allow_credentials
    }

    /// Headers set on the response to an actual request from an allowed origin.
    pub fn response_headers(&self, allowed_origin: &str) -> Vec<(&'static str, String)> {
        let mut headers = vec![("access-control-allow-origin", allowed_origin.to_owned())];
        headers.extend(
            self.response_headers_after_origin()
                .map(|(name, value)| (name, value.to_owned())),
        );
        headers
    }

    /// [`Self::response_headers`] after `Access-Control-Allow-Origin`: the same for every
    /// allowed origin, borrowed from the policy.
    pub fn response_headers_after_origin(&self) -> impl Iterator<Item = (&'static str, &str)> {
        let credentials = self
            .allow_credentials
            .then_some(("access-control-allow-credentials", "true"));
        let expose = self
            .expose_headers
            .as_deref()
            .map(|expose| ("access-control-expose-headers", expose));
        credentials.into_iter().chain(expose)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn policy(json: &str) -> CorsPolicy {
        let config: CorsConfig = serde_json::from_str(json).unwrap();
        let mut problems = Problems::default();
        let policy = CorsPolicy::build(&config, &mut problems);
        problems.into_result().unwrap();
        policy
    }

    fn problems_of(json: &str) -> String {
        let config: CorsConfig = serde_json::from_str(json).unwrap();
        let mut problems = Problems::default();
        CorsPolicy::build(&config, &mut problems);
        problems.into_result().unwrap_err().to_string()
    }

    const POLICY: &str = r#"{"allow_origins":[{"exact":"https://app.example.com"},{"wildcard":"https://*.example.org"},{"regex":"https://dev-[0-9]+\\.example\\.net"}],
        "allow_methods":["GET","POST"],"allow_headers":["authorization","content-type"],
        "expose_headers":["x-request-id"],"max_age":"10m","allow_credentials":true}"#;

    fn forward(origin: &str) -> Option<Rc<str>> {
        match policy(POLICY).on_request(b"GET", Some(origin.as_bytes()), None, None) {
            CorsDecision::Forward { allowed_origin } => allowed_origin,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn origin_patterns() {
        for allowed in [
            "https://app.example.com",
            "https://a.example.org",
            "https://a.b-c.example.org",
            "https://my_app.example.org",
            "https://dev-42.example.net",
        ] {
            assert_eq!(forward(allowed).as_deref(), Some(allowed), "{allowed}");
        }
        for refused in [
            "https://app.example.com.evil.com",
            "http://app.example.com",
            "https://APP.example.com",
            "https://example.org",
            "https://.example.org",
            "https://a..example.org",
            "https://evil.com/.example.org",
            "https://a.example.org:8443",
            "http://a.example.org",
            "https://dev-x.example.net",
            "https://dev-1.example.net.evil",
            "null",
        ] {
            assert_eq!(forward(refused), None, "{refused}");
        }
    }

    #[test]
    fn no_origin_is_not_cors() {
        let p = policy(POLICY);
        assert_eq!(
            p.on_request(b"GET", None, None, None),
            CorsDecision::NotCors
        );
        assert_eq!(
            p.on_request(b"OPTIONS", Some(b""), Some(b"GET"), None),
            CorsDecision::NotCors
        );
    }

    #[test]
    fn preflight_from_allowed_origin_is_answered() {
        let decision = policy(POLICY).on_request(
            b"OPTIONS",
            Some(b"https://a.example.org"),
            Some(b"PUT"),
            Some(b"x-custom"),
        );
        assert_eq!(
            decision,
            CorsDecision::AnswerPreflight(vec![
                (
                    "access-control-allow-origin",
                    "https://a.example.org".into()
                ),
                ("access-control-allow-credentials", "true".into()),
                ("access-control-allow-methods", "GET, POST".into()),
                (
                    "access-control-allow-headers",
                    "authorization, content-type".into()
                ),
                ("access-control-max-age", "600".into()),
                ("access-control-expose-headers", "x-request-id".into()),
                ("vary", "Origin".into()),
            ])
        );
    }

    #[test]
    fn options_without_request_method_is_an_actual_request() {
        let decision =
            policy(POLICY).on_request(b"OPTIONS", Some(b"https://app.example.com"), None, None);
        assert_eq!(
            decision,
            CorsDecision::Forward {
                allowed_origin: Some("https://app.example.com".into())
            }
        );
    }

    #[test]
    fn disallowed_preflight_is_forwarded_or_rejected() {
        let forwarded =
            policy(POLICY).on_request(b"OPTIONS", Some(b"https://evil.com"), Some(b"GET"), None);
        assert_eq!(
            forwarded,
            CorsDecision::Forward {
                allowed_origin: None
            }
        );
        let strict = policy(
            r#"{"allow_origins":[{"exact":"https://a.com"}],"disallowed_preflight":"reject"}"#,
        );
        assert_eq!(
            strict.on_request(b"OPTIONS", Some(b"https://evil.com"), Some(b"GET"), None),
            CorsDecision::RejectPreflight
        );
    }

    #[test]
    fn star_lists_echo_the_request() {
        let p = policy(
            r#"{"allow_origins":[{"exact":"*"}],"allow_methods":["*"],"allow_headers":["*"]}"#,
        );
        let CorsDecision::AnswerPreflight(headers) = p.on_request(
            b"OPTIONS",
            Some(b"https://any.site"),
            Some(b"DELETE"),
            Some(b"x-a, x-b"),
        ) else {
            panic!()
        };
        assert!(headers.contains(&("access-control-allow-origin", "https://any.site".into())));
        assert!(headers.contains(&("access-control-allow-methods", "DELETE".into())));
        assert!(headers.contains(&("access-control-allow-headers", "x-a, x-b".into())));
        assert!(!headers
            .iter()
            .any(|(n, _)| *n == "access-control-allow-credentials"));
    }

    #[test]
    fn actual_response_headers() {
        let p = policy(POLICY);
        assert_eq!(
            p.response_headers("https://app.example.com"),
            vec![
                (
                    "access-control-allow-origin",
                    "https://app.example.com".into()
                ),
                ("access-control-allow-credentials", "true".into()),
                ("access-control-expose-headers", "x-request-id".into()),
            ]
        );
    }

    #[test]
    fn non_utf8_origin_is_never_allowed() {
        let p = policy(r#"{"allow_origins":[{"exact":"*"}]}"#);
        assert_eq!(
            p.on_request(b"GET", Some(b"https://\xff.com"), None, None),
            CorsDecision::Forward {
                allowed_origin: None
            }
        );
    }

    #[test]
    fn bad_policies_are_refused() {
        assert_eq!(
            problems_of(r#"{"allow_origins":[{"regex":"(unclosed"}]}"#),
            "allow_origins[0].regex: invalid regular expression: found open group without closing ')'"
        );
        assert_eq!(
            problems_of(r#"{"allow_origins":[{"exact":"*"}],"allow_credentials":true}"#),
            "allow_credentials: cannot be true when every origin is allowed (\"*\"): any site could make credentialed requests"
        );
        assert_eq!(
            problems_of(r#"{"allow_origins":[{"exact":"null"}],"allow_credentials":true}"#),
            "allow_credentials: cannot be true when the origin \"null\" is allowed: sandboxed iframes and files of any site send it"
        );
        assert_eq!(
            problems_of(
                r#"{"allow_origins":[{"exact":"https://a.com:443"},{"wildcard":"http://*.a.com:80"},
                    {"exact":"https://a.com:8443"},{"exact":"http://a.com:8080"}]}"#
            ),
            "allow_origins[0].exact: \"https://a.com:443\" can never match: browsers leave out the default port :443; \
             allow_origins[1].wildcard: \"http://*.a.com:80\" can never match: browsers leave out the default port :80"
        );
        assert_eq!(
            problems_of(r#"{"allow_origins":[{"wildcard":"https://example.com"},{"exact":"https://a.com/"}]}"#),
            "allow_origins[0].wildcard: \"https://example.com\" is not of the form scheme://*.domain[:port] (lower case); \
             allow_origins[1].exact: \"https://a.com/\" is not an origin as browsers send it \
             (scheme://host[:port] in lower case, no path)"
        );
        for never_sent in [
            "https://a.com/api",
            "a.com",
            "HTTPS://A.COM",
            "https://App.example.com",
            "https://a.com:",
            "https://a.com:123456",
            "https://",
            "https://[::1",
            "https://a.com?x",
            " https://a.com",
            "https://café.example",
            "https://a..com",
            "https://.a.com",
        ] {
            let config = format!(r#"{{"allow_origins":[{{"exact":{never_sent:?}}}]}}"#);
            assert!(
                problems_of(&config).starts_with("allow_origins[0].exact: "),
                "{never_sent}: {}",
                problems_of(&config)
            );
        }
        for sent in [
            "null",
            "https://a.com",
            "http://127.0.0.1:8080",
            "https://[::1]:8443",
            "https://xn--caf-dma.example",
            "chrome-extension://abcdef",
            "https://my_app.example.com",
            "https://example.com.",
        ] {
            let config = format!(r#"{{"allow_origins":[{{"exact":{sent:?}}}]}}"#);
            let config: CorsConfig = serde_json::from_str(&config).unwrap();
            let mut problems = Problems::default();
            CorsPolicy::build(&config, &mut problems);
            assert!(problems.into_result().is_ok(), "{sent}");
        }
        // The wildcard form checks its scheme and port as the exact one does.
        for bad in [
            "1x://*.a.com",
            "https://*.a.com:",
            "https://*.a.com:123456",
            "https://*.a..com",
        ] {
            let config = format!(r#"{{"allow_origins":[{{"wildcard":{bad:?}}}]}}"#);
            assert!(
                problems_of(&config).starts_with("allow_origins[0].wildcard: "),
                "{bad}: {}",
                problems_of(&config)
            );
        }
        assert_eq!(
            problems_of(r#"{"allow_origins":[]}"#),
            "allow_origins: must list at least one origin"
        );
        assert_eq!(
            problems_of(r#"{"allow_origins":[{"exact":"*"}],"allow_headers":["bad header"],"allow_methods":["GE T"]}"#),
            "allow_headers[0]: \"bad header\" is not an HTTP header name; allow_methods[0]: \"GE T\" is not an upper-case HTTP method"
        );
        assert_eq!(
            problems_of(r#"{"allow_origins":[{"exact":"*"}],"allow_methods":["GET","put"]}"#),
            "allow_methods[1]: \"put\" is not an upper-case HTTP method"
        );
    }
}
