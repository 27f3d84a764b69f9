//! palisade-rate-limit's configuration.

use std::collections::HashSet;
use std::time::Duration;

use palisade_kit::config::{is_header_name, PluginConfig, Problems};
use palisade_kit::duration::ConfigDuration;
use palisade_kit::scheme::Scheme;
use schemars::JsonSchema;
use serde::Deserialize;

/// Most slots one limit may keep in shared data.
pub const MAX_SLOTS: u32 = 1_000_000;
/// Longest limit name (it goes into shared-data keys, metric names and response headers).
pub const MAX_NAME_LEN: usize = 64;

/// palisade-rate-limit configuration.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Limits checked on every request that no `routes` entry matches; all must pass.
    #[serde(default)]
    pub limits: Vec<Limit>,
    /// Per-route overrides: the first entry whose `match` fits the request replaces `limits`.
    #[serde(default)]
    pub routes: Vec<RouteLimits>,
    /// Where the `client_ip` key part comes from.
    #[serde(default)]
    pub client_ip: ClientIpConfig,
    /// Send `RateLimit-Policy` and `RateLimit` (IETF httpapi draft) on allowed and limited
    /// responses.
    #[serde(default = "default_true")]
    pub rate_limit_headers: bool,
    /// What to do when shared data cannot answer (store full, host error, endless conflicts).
    #[serde(default)]
    pub on_store_failure: FailureMode,
    /// Define and record metrics. Set `false` on Kong 3.4–3.7, whose metric calls trap.
    #[serde(default = "default_true")]
    pub metrics: bool,
    /// Which proxy runs the plugin. Kong has no gRPC call-outs: there global limits must use
    /// the `http` transport.
    #[serde(default)]
    pub proxy: Proxy,
    /// The rate-limit service that `"mode": "global"` limits ask (required when any limit is
    /// global).
    #[serde(default)]
    pub global: Option<GlobalService>,
}

/// The proxy the plugin runs in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Proxy {
    #[default]
    Envoy,
    Kong,
}

/// Where a limit is counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// In this proxy's shared data, exact across its workers (GCRA).
    #[default]
    Local,
    /// By the rate-limit service in `global`, shared by every proxy that asks it.
    Global,
}

/// How the rate-limit service is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` (Envoy only).
    Grpc,
    /// `POST` of the JSON request to `path`, as lyft/ratelimit serves on `/json`.
    Http,
}

/// A rate-limit service speaking the Envoy rate-limit protocol (lyft/ratelimit, Limitador).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GlobalService {
    /// The service's domain: its configuration namespace for these limits.
    pub domain: String,
    pub transport: Transport,
    /// The upstream to call: an Envoy cluster name under Envoy (an HTTP/2 cluster for `grpc`),
    /// `host:port` under Kong.
    pub upstream: String,
    /// The `:authority` sent to the service (`http` transport).
    #[serde(default)]
    pub authority: String,
    /// The request path (`http` transport).
    #[serde(default = "default_json_path")]
    pub path: String,
    /// `http` (default) or `https` (`http` transport). On Kong `https` turns TLS on for the
    /// call (ngx_wasm_module reads `:scheme`); under Envoy the cluster decides.
    #[serde(default = "Scheme::http")]
    pub scheme: Scheme,
    /// How long the request waits for the answer before the failure mode applies (Envoy's
    /// rate-limit filter's default, 20ms, is the default).
    #[serde(default = "default_timeout")]
    pub timeout: ConfigDuration,
    /// Refuse requests (500, as Envoy's rate-limit filter does) when the service cannot be
    /// asked or answers with an error; by default they are let through.
    #[serde(default)]
    pub failure_mode_deny: bool,
    /// Ask once per global limit (one descriptor per call, all sent at once) rather than once
    /// per request with every limit's descriptor. Limitador counts only one descriptor of a
    /// call: set this to give a request several global limits there.
    #[serde(default)]
    pub call_per_limit: bool,
}

fn default_json_path() -> String {
    "/json".to_owned()
}

fn default_timeout() -> ConfigDuration {
    ConfigDuration::from_millis(20)
}

/// A local limit checked before a global limit's call-out: requests over it are refused here,
/// without asking the service.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PreLimit {
    pub rate: u32,
    pub period: ConfigDuration,
    #[serde(default)]
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            limits: Vec::new(),
            routes: Vec::new(),
            client_ip: ClientIpConfig::default(),
            rate_limit_headers: true,
            on_store_failure: FailureMode::default(),
            metrics: true,
            proxy: Proxy::Envoy,
            global: None,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_slots() -> u32 {
    4096
}

/// One limit: a steady `rate` requests per `period` for each distinct key, and `burst` more at
/// once after a quiet spell. Over any window of one `period`, at most `rate + burst` pass.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// Unique name (letters, digits, `-`, `_`), used in metrics, logs, shared-data keys and the
    /// `RateLimit-Policy` header.
    pub name: String,
    /// Counted here (`local`, the default) or by the rate-limit service (`global`).
    #[serde(default)]
    pub mode: Mode,
    /// Requests allowed per period (local mode; a global limit's rate is the service's).
    #[serde(default)]
    pub rate: Option<u32>,
    /// The period `rate` is counted over (local mode).
    #[serde(default)]
    pub period: Option<ConfigDuration>,
    /// Requests allowed at once above the steady rate: an idle key may send `burst + 1` at once
    /// (local mode). At most 1000000, and `burst * period / rate` at most 100 years.
    #[serde(default)]
    pub burst: u32,
    /// Global mode: a local limit on the same key checked first, shedding load before the
    /// call-out.
    #[serde(default)]
    pub pre_limit: Option<PreLimit>,
    /// What makes two requests share a budget: the parts are joined into one key.
    pub key: Vec<KeyPart>,
    /// What happens to a request for which a key part has no value (no such header, no
    /// consumer, no client address).
    #[serde(default)]
    pub when_key_missing: MissingKey,
    /// How many distinct keys this limit (or its pre-limit) tracks at once in shared data (its
    /// memory bound).
    #[serde(default = "default_slots")]
    pub slots: u32,
}

/// One part of a limit's key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum KeyPart {
    /// The consumer palisade-auth identified (`x-palisade-consumer`).
    Consumer,
    /// The client's address: the connection's, or from `x-forwarded-for` (see `client_ip`).
    ClientIp,
    /// The request path, without its query.
    Path,
    /// The request method.
    Method,
    /// The route's name (Envoy `xds.route_name`, Kong `kong.route_name`).
    Route,
    /// The value of a request header (its first value).
    Header(String),
    /// A fixed string: one budget shared by every request.
    Constant(String),
}

/// What a limit does with a request missing one of its key parts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MissingKey {
    /// The limit does not apply to the request (as Envoy's rate-limit descriptors do).
    #[default]
    Skip,
    /// Every request missing the part shares one budget (the part counts as one empty value).
    Shared,
    /// The request is refused with 429.
    Deny,
}

/// Allow or refuse when the limiter cannot decide.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Let the request through (availability first) and count it in the metrics.
    #[default]
    Allow,
    /// Refuse the request with 503 `rate limiter unavailable`.
    Deny,
}

/// Where the client's address comes from, and how much of it names a client.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientIpConfig {
    /// 0: the connection's peer address. N > 0: the N-th `x-forwarded-for` entry from the right,
    /// i.e. N trusted proxies each appended the address they received the request from. Entries
    /// further left were written by the client and are ignored.
    #[serde(default)]
    pub trusted_hops: u32,
    /// The leading bits of an IPv6 address that name one client (1-128). An ISP hands every
    /// subscriber at least a /64, inside which a client picks a new address at will: keyed by
    /// all 128 bits, each request could come with a fresh budget. 128 keys each address.
    #[serde(default = "ClientIpConfig::default_ipv6_prefix_len")]
    #[schemars(range(min = 1, max = 128))]
    pub ipv6_prefix_len: u8,
}

impl ClientIpConfig {
    fn default_ipv6_prefix_len() -> u8 {
        64
    }
}

impl Default for ClientIpConfig {
    fn default() -> Self {
        Self {
            trusted_hops: 0,
            ipv6_prefix_len: Self::default_ipv6_prefix_len(),
        }
    }
}

/// Limits for the requests one `match` selects.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteLimits {
    /// Which requests: every given criterion must hold.
    #[serde(rename = "match")]
    pub matches: RouteMatch,
    /// The limits for them, in place of the top-level ones (an empty list: no limit).
    pub limits: Vec<Limit>,
}

/// Request criteria; every one given must hold, and at least one must be given.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// The path (without its query, normalised: unreserved escapes decoded, `;` parameters cut,
    /// dot segments resolved, slashes merged) equals this, give or take one trailing slash.
    #[serde(default)]
    pub path: Option<String>,
    /// The path (without its query, normalised as for `path`) starts with this.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// The method is one of these (upper case; `GET` also matches `HEAD`).
    #[serde(default)]
    pub methods: Vec<String>,
    /// The host's route name equals this.
    #[serde(default)]
    pub route: Option<String>,
}

fn is_limit_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn validate_rate(rate: u32, period: Option<&ConfigDuration>, burst: u32, p: &mut Problems) {
    if rate == 0 {
        p.push_at("rate", "must be at least 1");
    }
    if let Some(period) = period {
        let period = period.get();
        if period < Duration::from_secs(1) || period > Duration::from_secs(86_400) {
            p.push_at("period", "must be between 1s and 24h");
        } else if u128::from(rate) > period.as_micros() {
            p.push_at(
                "rate",
                "must be at most one request per microsecond of the period",
            );
        }
    }
    if burst > 1_000_000 {
        p.push_at("burst", "must be at most 1000000");
    } else if let Some(period) = period {
        // A key's stored time runs up to `burst` intervals ahead of now: kept far below where
        // a nanosecond timestamp saturates (year 2554), past which the limit would admit all.
        let refill = period.get().as_nanos() / u128::from(rate.max(1)) * u128::from(burst);
        if rate > 0 && refill > MAX_REFILL.as_nanos() {
            p.push_at(
                "burst",
                "burst * period / rate (the time an emptied burst takes to refill) must be at most 100 years",
            );
        }
    }
}

/// The longest an emptied burst may take to refill.
const MAX_REFILL: Duration = Duration::from_secs(100 * 365 * 86_400);

fn validate_limit<'a>(limit: &'a Limit, names: &mut HashSet<&'a str>, p: &mut Problems) {
    if limit.name.trim().is_empty() {
        p.push_at("name", "must not be empty");
    } else if !is_limit_name(&limit.name) {
        p.push_at(
            "name",
            format!(
                "{:?} must be 1 to {MAX_NAME_LEN} letters, digits, '-' or '_'",
                limit.name
            ),
        );
    } else if !names.insert(limit.name.as_str()) {
        p.push_at("name", format!("duplicate limit name {:?}", limit.name));
    }
    match limit.mode {
        Mode::Local => {
            match limit.rate {
                Some(rate) => validate_rate(rate, limit.period.as_ref(), limit.burst, p),
                None => p.push_at("rate", "is required in local mode"),
            }
            if limit.period.is_none() {
                p.push_at("period", "is required in local mode");
            }
            if limit.pre_limit.is_some() {
                p.push_at("pre_limit", "is for global limits only");
            }
        }
        Mode::Global => {
            for (field, given) in [
                ("rate", limit.rate.is_some()),
                ("period", limit.period.is_some()),
                ("burst", limit.burst != 0),
            ] {
                if given {
                    p.push_at(
                        field,
                        "is set in the rate-limit service for a global limit (use pre_limit for \
                         a local limit in front of it)",
                    );
                }
            }
            if let Some(pre) = &limit.pre_limit {
                p.field("pre_limit", |p| {
                    validate_rate(pre.rate, Some(&pre.period), pre.burst, p);
                });
            }
        }
    }
    if limit.slots == 0 || limit.slots > MAX_SLOTS {
        p.push_at("slots", format!("must be between 1 and {MAX_SLOTS}"));
    }
    if limit.key.is_empty() {
        p.push_at(
            "key",
            "must have at least one part (use {\"constant\": \"all\"} for one shared budget)",
        );
    }
    p.field("key", |p| {
        for (j, part) in limit.key.iter().enumerate() {
            if let KeyPart::Header(name) = part {
                if !is_header_name(name) {
                    p.index(j, |p| {
                        p.push_at(
                            "header",
                            format!("{name:?} is not a lower-case HTTP header name"),
                        )
                    });
                }
            }
        }
    });
}

impl RateLimitConfig {
    fn all_limits(&self) -> impl Iterator<Item = &Limit> {
        self.limits
            .iter()
            .chain(self.routes.iter().flat_map(|r| r.limits.iter()))
    }

    fn validate_global(&self, problems: &mut Problems) {
        let Some(global) = &self.global else {
            if self.all_limits().any(|l| l.mode == Mode::Global) {
                problems.push_at("global", "is required when a limit has mode \"global\"");
            }
            return;
        };
        problems.field("global", |p| {
            if global.domain.trim().is_empty() {
                p.push_at("domain", "must not be empty");
            }
            if global.upstream.trim().is_empty() {
                p.push_at("upstream", "must not be empty");
            }
            match global.transport {
                Transport::Grpc if self.proxy == Proxy::Kong => p.push_at(
                    "transport",
                    "Kong has no gRPC call-outs (proxy_grpc_call traps in ngx_wasm_module): \
                     use \"http\"",
                ),
                Transport::Grpc => {}
                Transport::Http => {
                    if global.authority.trim().is_empty() {
                        p.push_at("authority", "must not be empty with the http transport");
                    }
                    if !global.path.starts_with('/') {
                        p.push_at("path", "must start with '/'");
                    }
                }
            }
            let timeout = global.timeout.get();
            if timeout < Duration::from_millis(1) || timeout > Duration::from_secs(60) {
                p.push_at("timeout", "must be between 1ms and 60s");
            }
        });
    }
}

impl PluginConfig for RateLimitConfig {
    fn validate(&self, problems: &mut Problems) {
        if !(1..=128).contains(&self.client_ip.ipv6_prefix_len) {
            problems.push_at("client_ip.ipv6_prefix_len", "must be from 1 to 128");
        }
        // Names are unique across the top level and every route: each names its own state.
        let mut names = HashSet::new();
        problems.field("limits", |p| {
            for (i, limit) in self.limits.iter().enumerate() {
                p.index(i, |p| validate_limit(limit, &mut names, p));
            }
        });
        problems.field("routes", |p| {
            for (i, route) in self.routes.iter().enumerate() {
                p.index(i, |p| {
                    let m = &route.matches;
                    if m.path.is_none()
                        && m.path_prefix.is_none()
                        && m.methods.is_empty()
                        && m.route.is_none()
                    {
                        p.push_at(
                            "match",
                            "must give at least one of path, path_prefix, methods, route",
                        );
                    }
                    p.field("match", |p| {
                        for (field, value) in [("path", &m.path), ("path_prefix", &m.path_prefix)] {
                            match value {
                                Some(v) if !v.starts_with('/') => {
                                    p.push_at(field, "must start with '/'");
                                }
                                // Requests are matched normalised: another spelling never would.
                                Some(v) if *palisade_kit::path::normalize_str(v) != **v => {
                                    p.push_at(
                                        field,
                                        format!(
                                            "must be written normalised, as {:?}",
                                            palisade_kit::path::normalize_str(v)
                                        ),
                                    );
                                }
                                _ => {}
                            }
                        }
                        for (j, method) in m.methods.iter().enumerate() {
                            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase())
                            {
                                p.field("methods", |p| {
                                    p.index(j, |p| {
                                        p.push(format!("{method:?} is not an upper-case method"))
                                    })
                                });
                            }
                        }
                    });
                    p.field("limits", |p| {
                        for (j, limit) in route.limits.iter().enumerate() {
                            p.index(j, |p| validate_limit(limit, &mut names, p));
                        }
                    });
                });
            }
        });
        self.validate_global(problems);
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use palisade_kit::config::load;

    #[test]
    fn key_parts_read_as_operators_write_them() {
        let config: RateLimitConfig = load(
            br#"{"limits":[{"name":"per-consumer","rate":100,"period":"1s","burst":20,
                "key":["consumer",{"header":"x-tenant"},{"constant":"all"},"client_ip","path","method","route"]}]}"#,
        )
        .unwrap();
        let limit = &config.limits[0];
        assert_eq!(limit.burst, 20);
        assert_eq!(limit.slots, 4096);
        assert_eq!(limit.when_key_missing, MissingKey::Skip);
        assert_eq!(
            limit.key,
            [
                KeyPart::Consumer,
                KeyPart::Header("x-tenant".into()),
                KeyPart::Constant("all".into()),
                KeyPart::ClientIp,
                KeyPart::Path,
                KeyPart::Method,
                KeyPart::Route,
            ]
        );
        assert!(config.rate_limit_headers);
        assert!(config.metrics);
        assert_eq!(config.on_store_failure, FailureMode::Allow);
        assert_eq!(config.client_ip.trusted_hops, 0);
    }

    #[test]
    fn bad_limits_are_refused_with_paths() {
        let err = load::<RateLimitConfig>(
            br#"{"limits":[{"name":"a","rate":0,"period":"0s","key":[]},
                           {"name":"a","rate":1,"period":"1s","key":[{"header":"X-Bad"}]}]}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "limits[0].rate: must be at least 1; limits[0].period: must be between 1s and 24h; \
             limits[0].key: must have at least one part (use {\"constant\": \"all\"} for one shared budget); \
             limits[1].name: duplicate limit name \"a\"; limits[1].key[0].header: \"X-Bad\" is not a lower-case HTTP header name"
        );
    }

    #[test]
    fn names_rates_slots_and_bursts_are_bounded() {
        let err = load::<RateLimitConfig>(
            br#"{"limits":[{"name":"a b","rate":2000000,"period":"1s","burst":1000001,"slots":0,
                "key":["path"]}]}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "limits[0].name: \"a b\" must be 1 to 64 letters, digits, '-' or '_'; \
             limits[0].rate: must be at most one request per microsecond of the period; \
             limits[0].burst: must be at most 1000000; limits[0].slots: must be between 1 and 1000000"
        );
    }

    #[test]
    fn a_burst_that_would_take_over_a_century_to_refill_is_refused() {
        // One a day with 36500 extra: 100 years, the most; 36501 is a day too long.
        let config = |burst: u32| {
            format!(
                r#"{{"limits":[{{"name":"a","rate":1,"period":"24h","burst":{burst},"key":["path"]}}]}}"#
            )
        };
        assert!(load::<RateLimitConfig>(config(36_500).as_bytes()).is_ok());
        assert_eq!(
            load::<RateLimitConfig>(config(36_501).as_bytes())
                .unwrap_err()
                .to_string(),
            "limits[0].burst: burst * period / rate (the time an emptied burst takes to refill) \
             must be at most 100 years"
        );
    }

    #[test]
    fn routes_are_validated_and_names_unique_across_them() {
        let err = load::<RateLimitConfig>(
            br#"{"limits":[{"name":"a","rate":1,"period":"1s","key":["path"]}],
                 "routes":[{"match":{},"limits":[]},
                           {"match":{"path_prefix":"api","methods":["get"]},
                            "limits":[{"name":"a","rate":1,"period":"1s","key":["path"]}]},
                           {"match":{"path":"/a//b;x"},"limits":[]}]}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "routes[0].match: must give at least one of path, path_prefix, methods, route; \
             routes[1].match.path_prefix: must start with '/'; \
             routes[1].match.methods[0]: \"get\" is not an upper-case method; \
             routes[1].limits[0].name: duplicate limit name \"a\"; \
             routes[2].match.path: must be written normalised, as \"/a/b\""
        );
    }

    #[test]
    fn unknown_key_part_is_refused() {
        let err = load::<RateLimitConfig>(
            br#"{"limits":[{"name":"a","rate":1,"period":"1s","key":["tenant"]}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.problems[0].path, "limits[0].key[0]");
        assert!(err.problems[0]
            .reason
            .starts_with("unknown variant, expected"));
    }

    #[test]
    fn the_ipv6_prefix_is_64_by_default_and_from_1_to_128() {
        let config = load::<RateLimitConfig>(br#"{"limits":[]}"#).unwrap();
        assert_eq!(config.client_ip.ipv6_prefix_len, 64);
        for bad in [0, 129] {
            let doc = format!(r#"{{"limits":[],"client_ip":{{"ipv6_prefix_len":{bad}}}}}"#);
            let err = load::<RateLimitConfig>(doc.as_bytes()).unwrap_err();
            assert_eq!(err.problems[0].path, "client_ip.ipv6_prefix_len", "{bad}");
        }
        let whole = br#"{"limits":[],"client_ip":{"ipv6_prefix_len":128}}"#;
        assert_eq!(
            load::<RateLimitConfig>(whole)
                .unwrap()
                .client_ip
                .ipv6_prefix_len,
            128
        );
    }

    #[test]
    fn misspelt_fields_are_refused() {
        for (doc, path) in [
            (
                r#"{"limits":[],"client_ip":{"trusted_hop":1}}"#,
                "client_ip.trusted_hop",
            ),
            (
                r#"{"routes":[{"match":{"paths":"/"},"limits":[]}]}"#,
                "routes[0].match.paths",
            ),
            (
                r#"{"limits":[{"name":"a","rate":1,"period":"1s","key":["path"],"brust":1}]}"#,
                "limits[0].brust",
            ),
        ] {
            let err = load::<RateLimitConfig>(doc.as_bytes()).unwrap_err();
            assert_eq!(err.problems[0].path, path, "{doc}");
        }
    }
}
