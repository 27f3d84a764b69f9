//! Request limits checked on the request headers, before the upstream sees anything: header
//! count and size (431), host allowlist (403), methods (405), declared body size (413); and the
//! body size again while a body without `Content-Length` streams in.

use palisade_kit::authority::{self, Authority};
use palisade_kit::config::Problems;
use palisade_kit::header_pairs::ClientHost;

use crate::config::LimitsConfig;

/// Is this an HTTP method token (RFC 9110 `token`)?
pub fn is_method_token(method: &str) -> bool {
    !method.is_empty()
        && method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// One allowed host: exact, or any subdomain (`*.example.com`); with or without a port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostPattern {
    /// Lower case, without the `*.` of a wildcard or a trailing dot.
    domain: String,
    wildcard: bool,
    port: Option<u16>,
}

impl HostPattern {
    fn parse(text: &str) -> Option<Self> {
        let (rest, wildcard) = match text.strip_prefix("*.") {
            Some(rest) => (rest, true),
            None => (text, false),
        };
        let Authority { host, port } = authority::parse(rest.as_bytes())?;
        Some(Self {
            domain: host,
            wildcard,
            port,
        })
    }

    fn matches(&self, request: &Authority) -> bool {
        if self.port.is_some() && self.port != request.port {
            return false;
        }
        if self.wildcard {
            request
                .host
                .strip_suffix(self.domain.as_str())
                .and_then(|sub| sub.strip_suffix('.'))
                .is_some_and(|sub| !sub.is_empty())
        } else {
            request.host == self.domain
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitExceeded {
    /// 400: a header value holds control characters, or Content-Length is not a number.
    BadRequest(&'static str),
    /// 431
    TooManyHeaders,
    /// 431
    HeadersTooLarge,
    /// 403
    HostNotAllowed,
    /// 405, with the `Allow` value.
    MethodNotAllowed(String),
    /// 413
    BodyTooLarge,
}

impl LimitExceeded {
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::TooManyHeaders | Self::HeadersTooLarge => 431,
            Self::HostNotAllowed => 403,
            Self::MethodNotAllowed(_) => 405,
            Self::BodyTooLarge => 413,
        }
    }

    /// The `error` of the reply body: what went wrong, never the offending value.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadRequest(reason) => reason,
            Self::TooManyHeaders => "too many request headers",
            Self::HeadersTooLarge => "request headers too large",
            Self::HostNotAllowed => "host not allowed",
            Self::MethodNotAllowed(_) => "method not allowed",
            Self::BodyTooLarge => "request body too large",
        }
    }
}

/// The compiled limits.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    max_body_bytes: u64,
    max_header_count: Option<usize>,
    max_header_bytes: Option<usize>,
    reject_control_characters: bool,
    methods: Vec<String>,
    allow_header: String,
    hosts: Vec<HostPattern>,
    /// Where the request map holds the Host `hosts` checks (Kong: `host`). Asked per request:
    /// the host can tell cheaply only then (in the root context Kong logs an error for it).
    client_host: fn() -> ClientHost,
}

impl RequestLimits {
    pub fn build(config: &LimitsConfig, problems: &mut Problems) -> Self {
        if config.max_body_bytes == 0 {
            problems.push_at("max_body_bytes", "must be at least 1");
        }
        if config.max_header_count == Some(0) {
            problems.push_at("max_header_count", "must be at least 1");
        }
        if config.max_header_bytes == Some(0) {
            problems.push_at("max_header_bytes", "must be at least 1");
        }
        problems.field("allowed_methods", |p| {
            for (i, method) in config.allowed_methods.iter().enumerate() {
                if !is_method_token(method) || method.bytes().any(|b| b.is_ascii_lowercase()) {
                    p.index(i, |p| {
                        p.push(format!("{method:?} is not an upper-case HTTP method"))
                    });
                }
            }
        });
        let mut hosts = Vec::new();
        problems.field("allowed_hosts", |p| {
            for (i, host) in config.allowed_hosts.iter().enumerate() {
                match HostPattern::parse(host) {
                    // Clients leave a default port out of Host (RFC 9110 §4.2), so such an
                    // entry would refuse every request it was written for.
                    Some(HostPattern {
                        port: Some(port @ (80 | 443)),
                        ..
                    }) => p.index(i, |p| {
                        p.push(format!(
                            "{host:?} names the default port :{port}, which clients leave out of Host: write the host alone (it matches any port)"
                        ))
                    }),
                    Some(pattern) => hosts.push(pattern),
                    None => p.index(i, |p| {
                        p.push(format!(
                            "{host:?} is not a host, *.domain, optionally with :port"
                        ))
                    }),
                }
            }
        });
        Self {
            max_body_bytes: config.max_body_bytes,
            max_header_count: config
                .max_header_count
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            max_header_bytes: config
                .max_header_bytes
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            reject_control_characters: config.reject_control_characters,
            client_host: ClientHost::default,
            methods: config.allowed_methods.clone(),
            allow_header: config.allowed_methods.join(", "),
            hosts,
        }
    }

    /// Whether a check needs every request header (count, size, control characters): else
    /// [`Self::header_names`] are all it reads.
    pub fn needs_all_headers(&self) -> bool {
        self.max_header_count.is_some()
            || self.max_header_bytes.is_some()
            || self.reject_control_characters
    }

    /// Reads the client's Host where `client_host` says (Envoy: `:authority`, Kong: `host`).
    pub fn reading_host_from(mut self, client_host: fn() -> ClientHost) -> Self {
        self.client_host = client_host;
        self
    }

    /// The entry holding the client's Host, when `allowed_hosts` needs it.
    pub fn host_name(&self) -> Option<&'static str> {
        (!self.hosts.is_empty()).then(|| (self.client_host)().name())
    }

    /// The request headers the checks read when they do not need them all, but for the Host
    /// ([`Self::host_name`]).
    pub fn header_names(&self) -> impl Iterator<Item = &'static str> {
        let method: &[&'static str] = if self.methods.is_empty() {
            &[]
        } else {
            &[":method"]
        };
        ["content-length"].into_iter().chain(method.iter().copied())
    }

    /// Checks the request headers: every one when [`Self::needs_all_headers`], else at least
    /// [`Self::header_names`]. Pseudo-headers (`:path`, ...) are not counted as fields, but
    /// their bytes count toward the size. A CORS preflight the plugin answers skips the method
    /// allowlist (its `OPTIONS` need not be an allowed method) but nothing else.
    pub fn check_headers(
        &self,
        headers: &[(&[u8], &[u8])],
        answering_preflight: bool,
    ) -> Result<(), LimitExceeded> {
        let mut count = 0usize;
        let mut bytes = 0usize;
        let mut method: &[u8] = b"";
        let mut authority: Option<&[u8]> = None;
        // Asked only when needed: the first answer costs the host probe a call.
        let host_name: &[u8] = match self.host_name() {
            Some(name) => name.as_bytes(),
            None => b"",
        };
        let mut content_length: Option<&[u8]> = None;
        for &(name, value) in headers {
            if self.reject_control_characters
                && value.iter().any(|&b| (b < b' ' && b != b'\t') || b == 0x7f)
            {
                return Err(LimitExceeded::BadRequest(
                    "request header value has control characters",
                ));
            }
            bytes = bytes.saturating_add(name.len() + value.len());
            // Kong (nginx) keeps the client's spelling of names; Envoy lower-cases them.
            if authority.is_none() && !host_name.is_empty() && name.eq_ignore_ascii_case(host_name)
            {
                authority = Some(value);
            }
            if name.starts_with(b":") {
                if name == b":method" {
                    method = value;
                }
                continue;
            }
            count += 1;
            if name.eq_ignore_ascii_case(b"content-length") {
                content_length = Some(value);
            }
        }
        if self.max_header_count.is_some_and(|max| count > max) {
            return Err(LimitExceeded::TooManyHeaders);
        }
        if self.max_header_bytes.is_some_and(|max| bytes > max) {
            return Err(LimitExceeded::HeadersTooLarge);
        }
        if !self.hosts.is_empty() {
            let allowed = authority
                .and_then(authority::parse)
                .is_some_and(|request| self.hosts.iter().any(|p| p.matches(&request)));
            if !allowed {
                return Err(LimitExceeded::HostNotAllowed);
            }
        }
        if !answering_preflight
            && !self.methods.is_empty()
            && !self.methods.iter().any(|m| m.as_bytes() == method)
        {
            return Err(LimitExceeded::MethodNotAllowed(self.allow_header.clone()));
        }
        if let Some(length) = content_length {
            let length: u64 = std::str::from_utf8(length)
                .ok()
                .and_then(|l| l.trim().parse().ok())
                .ok_or(LimitExceeded::BadRequest("invalid content-length"))?;
            if length > self.max_body_bytes {
                return Err(LimitExceeded::BodyTooLarge);
            }
        }
        Ok(())
    }

    /// Counts a streamed body chunk; `total` is the running count.
    pub fn check_body(&self, total: &mut u64, chunk: usize) -> Result<(), LimitExceeded> {
        *total = total.saturating_add(u64::try_from(chunk).unwrap_or(u64::MAX));
        if *total > self.max_body_bytes {
            Err(LimitExceeded::BodyTooLarge)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use palisade_kit::header_pairs::{borrow, Pairs};

    impl RequestLimits {
        fn check_pairs(&self, pairs: &Pairs) -> Result<(), LimitExceeded> {
            self.check_headers(&borrow(pairs), false)
        }
    }

    fn limits(json: &str) -> RequestLimits {
        let config: LimitsConfig = serde_json::from_str(json).unwrap();
        let mut problems = Problems::default();
        let limits = RequestLimits::build(&config, &mut problems);
        problems.into_result().unwrap();
        limits
    }

    fn request(extra: &[(&str, &str)]) -> Pairs {
        let mut headers: Pairs = vec![
            (b":method".to_vec(), b"GET".to_vec()),
            (b":path".to_vec(), b"/".to_vec()),
            (b":authority".to_vec(), b"api.example.com".to_vec()),
        ];
        headers.extend(
            extra
                .iter()
                .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec())),
        );
        headers
    }

    #[test]
    fn defaults_let_an_ordinary_request_through() {
        assert_eq!(
            limits("{}").check_pairs(&request(&[("accept", "*/*")])),
            Ok(())
        );
    }

    #[test]
    fn content_length_over_the_limit() {
        let l = limits(r#"{"max_body_bytes":100}"#);
        assert_eq!(
            l.check_pairs(&request(&[("content-length", "100")])),
            Ok(())
        );
        assert_eq!(
            l.check_pairs(&request(&[("content-length", "101")])),
            Err(LimitExceeded::BodyTooLarge)
        );
        assert_eq!(
            l.check_pairs(&request(&[("content-length", "1e3")])),
            Err(LimitExceeded::BadRequest("invalid content-length"))
        );
        assert_eq!(
            l.check_pairs(&request(&[("content-length", "99999999999999999999999")])),
            Err(LimitExceeded::BadRequest("invalid content-length"))
        );
    }

    #[test]
    fn default_body_limit_is_100_mb() {
        let l = limits("{}");
        assert_eq!(
            l.check_pairs(&request(&[("content-length", "104857600")])),
            Ok(())
        );
        assert_eq!(
            l.check_pairs(&request(&[("content-length", "104857601")])),
            Err(LimitExceeded::BodyTooLarge)
        );
    }

    #[test]
    fn streamed_body_is_counted() {
        let l = limits(r#"{"max_body_bytes":10}"#);
        let mut total = 0;
        assert_eq!(l.check_body(&mut total, 6), Ok(()));
        assert_eq!(l.check_body(&mut total, 4), Ok(()));
        assert_eq!(
            l.check_body(&mut total, 1),
            Err(LimitExceeded::BodyTooLarge)
        );
        assert_eq!(total, 11);
    }

    #[test]
    fn only_stricter_header_limits_need_every_header() {
        let defaults = limits("{}");
        assert!(!defaults.needs_all_headers());
        assert_eq!(
            defaults.header_names().collect::<Vec<_>>(),
            ["content-length"]
        );
        // Without limits of its own, a request with many headers is the proxy's to refuse.
        let many: Vec<(String, String)> =
            (0..150).map(|i| (format!("x-{i}"), "v".into())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        assert_eq!(defaults.check_pairs(&request(&many)), Ok(()));
        let routed = limits(r#"{"allowed_methods":["GET"],"allowed_hosts":["a.com"]}"#);
        assert!(!routed.needs_all_headers());
        assert_eq!(
            routed.header_names().collect::<Vec<_>>(),
            ["content-length", ":method"]
        );
        assert_eq!(routed.host_name(), Some(":authority"));
        assert_eq!(
            routed
                .clone()
                .reading_host_from(|| ClientHost::HostHeader)
                .host_name(),
            Some("host")
        );
        assert_eq!(defaults.host_name(), None);
        for strict in [
            r#"{"max_header_count":50}"#,
            r#"{"max_header_bytes":8192}"#,
            r#"{"reject_control_characters":true}"#,
        ] {
            assert!(limits(strict).needs_all_headers(), "{strict}");
        }
    }

    #[test]
    fn header_count_and_size() {
        let l = limits(r#"{"max_header_count":2,"max_header_bytes":60}"#);
        assert_eq!(l.check_pairs(&request(&[("a", "1"), ("b", "2")])), Ok(()));
        assert_eq!(
            l.check_pairs(&request(&[("a", "1"), ("b", "2"), ("c", "3")])),
            Err(LimitExceeded::TooManyHeaders)
        );
        assert_eq!(
            l.check_pairs(&request(&[("a", &"x".repeat(30))])),
            Err(LimitExceeded::HeadersTooLarge)
        );
    }

    #[test]
    fn control_characters_in_values_are_refused() {
        let l = limits(r#"{"reject_control_characters":true}"#);
        for bad in ["a\rb", "a\nb", "a\0b", "a\x7fb", "\x1b[31m"] {
            assert_eq!(
                l.check_pairs(&request(&[("x-a", bad)])),
                Err(LimitExceeded::BadRequest(
                    "request header value has control characters"
                )),
                "{bad:?}"
            );
        }
        // Tabs and obs-text (non-UTF-8 bytes) are legal field content.
        let mut headers = request(&[("x-a", "a\tb")]);
        headers.push((b"x-b".to_vec(), b"\xff\xfe".to_vec()));
        assert_eq!(l.check_pairs(&headers), Ok(()));
        // Off by default: Envoy's codecs refuse them before any filter runs.
        assert_eq!(
            limits("{}").check_pairs(&request(&[("x-a", "\x1b[31m")])),
            Ok(())
        );
    }

    #[test]
    fn methods() {
        let l = limits(r#"{"allowed_methods":["GET","POST"]}"#);
        assert_eq!(l.check_pairs(&request(&[])), Ok(()));
        let mut delete = request(&[]);
        delete[0].1 = b"DELETE".to_vec();
        assert_eq!(
            l.check_pairs(&delete),
            Err(LimitExceeded::MethodNotAllowed("GET, POST".into()))
        );
    }

    /// Kong's `:authority` is nginx's server name and port: the client's Host is `host`.
    #[test]
    fn on_kong_hosts_are_checked_on_the_host_header() {
        let l = limits(r#"{"allowed_hosts":["api.example.com"]}"#)
            .reading_host_from(|| ClientHost::HostHeader);
        let kong = |host: &str| {
            let mut headers = request(&[("Host", host)]);
            headers[2].1 = b"kong:8000".to_vec();
            l.check_pairs(&headers)
        };
        assert_eq!(kong("api.example.com"), Ok(()));
        assert_eq!(kong("evil.com"), Err(LimitExceeded::HostNotAllowed));
        let mut no_host = request(&[]);
        no_host[2].1 = b"api.example.com".to_vec();
        assert_eq!(l.check_pairs(&no_host), Err(LimitExceeded::HostNotAllowed));
    }

    #[test]
    fn hosts() {
        let l = limits(
            r#"{"allowed_hosts":["api.example.com","*.example.org","admin.example.net:8443","[::1]:8080"]}"#,
        );
        let with_authority = |authority: &str| {
            let mut headers = request(&[]);
            headers[2].1 = authority.as_bytes().to_vec();
            l.check_pairs(&headers)
        };
        for ok in [
            "api.example.com",
            "API.Example.com",
            "api.example.com:443",
            "api.example.com.",
            "a.example.org",
            "a.b.example.org:80",
            "admin.example.net:8443",
            "[::1]:8080",
        ] {
            assert_eq!(with_authority(ok), Ok(()), "{ok}");
        }
        for refused in [
            "example.org",
            "evil.com",
            "api.example.com.evil.com",
            "admin.example.net",
            "admin.example.net:443",
            "xexample.org",
            "[::1]:80",
            "[::1",
            // Not a host and port: a prefix match would have passed them.
            "api.example.com:evil",
            "api.example.com:+443",
            "api.example.com:443:1",
            "evil.com@x.example.org",
            "evil.com/.example.org",
        ] {
            assert_eq!(
                with_authority(refused),
                Err(LimitExceeded::HostNotAllowed),
                "{refused}"
            );
        }
    }

    #[test]
    fn bad_limits_are_refused() {
        let config: LimitsConfig = serde_json::from_str(
            r#"{"max_body_bytes":0,"max_header_count":0,"allowed_methods":["get"],"allowed_hosts":["a.com:x","","a.com:443","*.b.com:80"]}"#,
        )
        .unwrap();
        let mut problems = Problems::default();
        RequestLimits::build(&config, &mut problems);
        assert_eq!(
            problems.into_result().unwrap_err().to_string(),
            "max_body_bytes: must be at least 1; max_header_count: must be at least 1; allowed_methods[0]: \"get\" is not an upper-case HTTP method; \
             allowed_hosts[0]: \"a.com:x\" is not a host, *.domain, optionally with :port; \
             allowed_hosts[1]: \"\" is not a host, *.domain, optionally with :port; \
             allowed_hosts[2]: \"a.com:443\" names the default port :443, which clients leave out of Host: write the host alone (it matches any port); \
             allowed_hosts[3]: \"*.b.com:80\" names the default port :80, which clients leave out of Host: write the host alone (it matches any port)"
        );
    }
}
