//! Spoofing and bypass attempts in real Envoy (V8, 2 workers), every request on a fresh
//! connection so both workers serve them:
//!
//! - identity headers (`x-palisade-*`) a client sends never reach the upstream when
//!   palisade-auth runs, in any case or number, and cannot buy a consumer a fresh rate budget;
//! - a client rotating `x-forwarded-for` values does not escape a `client_ip` limit when
//!   `trusted_hops` matches the proxies that append (and does when it over-counts: the
//!   misconfiguration SECURITY.md warns about);
//! - path tricks (`/admin/../`, `%2e%2e`, `//admin`, mixed case, trailing dots, encoded
//!   slashes) under Envoy's own path settings (`normalize_path`, `merge_slashes`,
//!   `path_with_escaped_slashes_action`) off and on: whether palisade-rate-limit's route for
//!   the target still applies (it matches the path as servers resolve it, whatever Envoy made
//!   of it), and else what reached the echo upstream.

use palisade::envoy::Filter;
use palisade::plugins;
use palisade_host_tests::auth_tokens::{self, claims, Signer};
use palisade_host_tests::envoy_harness::{hcm, EnvoyTest};
use serde_json::{json, Value};

fn plugin(name: &str) -> &'static palisade::plugins::PluginInfo {
    plugins::find(name).unwrap()
}

/// The test provider of `auth_tokens`, with anonymous requests let through (so spoofed headers
/// on them are what is tested, not the 401).
fn auth_filter() -> Filter {
    let mut config: Value = serde_json::from_str(&auth_tokens::config(json!({}))).unwrap();
    config["allow_missing"] = json!(true);
    Filter::new(plugin("auth"), config.to_string())
}

fn rate_limit_filter(config: Value) -> Filter {
    Filter::new(plugin("rate-limit"), config.to_string())
}

/// Identity headers as a client might spoof them: every owned name, odd cases, repeats.
const SPOOFED: [(&str, &str); 8] = [
    ("x-palisade-subject", "admin"),
    ("X-Palisade-Subject", "root"),
    ("x-palisade-consumer", "billing-batch"),
    ("x-palisade-consumer", "second-value"),
    ("X-PALISADE-AUTH-PROVIDER", "idp"),
    ("x-palisade-claim-email", "mallory@evil.example"),
    ("x-palisade-claim-roles", "admin"),
    ("x-palisade-anything-new", "1"),
];

#[test]
fn spoofed_identity_headers_never_reach_the_upstream() {
    let test = EnvoyTest::start(vec![auth_filter()]);
    // Anonymous (allowed): every owned header stripped.
    for i in 0..4 {
        let reply = test.raw_get(&format!("/anonymous/{i}"), &SPOOFED);
        assert_eq!(reply.status, 200, "{}", reply.body_text());
    }
    // A verified token without an email claim: the identity is the token's, and the spoofed
    // claim header is not passed on for want of a claim to replace it.
    let mut no_email = claims(auth_tokens::unix_now());
    no_email.as_object_mut().unwrap().remove("email");
    let bearer = format!("Bearer {}", Signer::for_alg("ES256").sign(&no_email));
    for i in 0..4 {
        let mut headers: Vec<(&str, &str)> = SPOOFED.to_vec();
        headers.push(("authorization", bearer.as_str()));
        let reply = test.raw_get(&format!("/verified/{i}"), &headers);
        assert_eq!(reply.status, 200, "{}", reply.body_text());
    }
    // An invalid token: refused, nothing reaches the upstream.
    let mut headers: Vec<(&str, &str)> = SPOOFED.to_vec();
    headers.push(("authorization", "Bearer not.a.token"));
    assert_eq!(test.raw_get("/invalid", &headers).status, 401);

    let seen = test.upstream.seen();
    assert_eq!(seen.len(), 8);
    for request in &seen {
        let identity: Vec<(&str, &str)> = request
            .headers
            .iter()
            .filter(|(name, _)| name.starts_with("x-palisade-"))
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        if request.path.starts_with("/anonymous/") {
            assert_eq!(identity, [], "{}", request.path);
        } else {
            let mut identity = identity;
            identity.sort_unstable();
            assert_eq!(
                identity,
                [
                    ("x-palisade-auth-provider", "idp"),
                    ("x-palisade-consumer", "https://idp.example/alice"),
                    ("x-palisade-subject", "alice"),
                ],
                "{}",
                request.path
            );
        }
    }
}

/// One budget of 3 (rate 1 per hour, burst 2) per consumer; requests without one share a budget.
fn per_consumer_limit() -> Value {
    json!({"limits": [{"name": "per-consumer", "rate": 1, "period": "1h", "burst": 2,
                       "key": ["consumer"], "when_key_missing": "shared", "slots": 64}]})
}

fn statuses(
    test: &EnvoyTest,
    count: usize,
    headers: impl Fn(usize) -> Vec<(String, String)>,
) -> Vec<u16> {
    (0..count)
        .map(|i| {
            let owned = headers(i);
            let borrowed: Vec<(&str, &str)> = owned
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            test.raw_get("/api", &borrowed).status
        })
        .collect()
}

#[test]
fn a_rotating_spoofed_consumer_does_not_escape_a_consumer_limit_behind_auth() {
    let test = EnvoyTest::start(vec![auth_filter(), rate_limit_filter(per_consumer_limit())]);
    let spoofing = |i: usize| vec![("x-palisade-consumer".to_owned(), format!("consumer-{i}"))];
    assert_eq!(
        statuses(&test, 8, spoofing),
        [200, 200, 200, 429, 429, 429, 429, 429],
        "auth strips the header: every request shares the anonymous budget"
    );
}

#[test]
fn without_auth_in_front_a_consumer_key_is_the_clients_to_choose() {
    // Why docs/rate-limit.md says never to key on `consumer` without palisade-auth in front.
    let test = EnvoyTest::start(vec![rate_limit_filter(per_consumer_limit())]);
    let spoofing = |i: usize| vec![("x-palisade-consumer".to_owned(), format!("consumer-{i}"))];
    assert_eq!(statuses(&test, 8, spoofing), [200; 8]);
}

/// One budget of 3 per client address.
fn per_ip_limit(trusted_hops: u32) -> Value {
    json!({"client_ip": {"trusted_hops": trusted_hops},
           "limits": [{"name": "per-ip", "rate": 1, "period": "1h", "burst": 2,
                       "key": ["client_ip"], "slots": 64}]})
}

/// Every request claims another origin in `x-forwarded-for` (one entry, or a chain).
fn rotating_xff(i: usize) -> Vec<(String, String)> {
    let value = if i.is_multiple_of(2) {
        format!("198.18.0.{i}")
    } else {
        format!("198.18.1.{i}, 10.9.8.{i}")
    };
    vec![("x-forwarded-for".to_owned(), value)]
}

#[test]
fn rotating_forwarded_for_does_not_escape_a_limit_on_the_hop_envoy_appends() {
    // As an Istio gateway runs: Envoy appends the peer it received the request from, and it is
    // the one trusted hop.
    let test = EnvoyTest::start_edited(vec![rate_limit_filter(per_ip_limit(1))], |config| {
        hcm(config)["use_remote_address"] = json!(true);
    });
    assert_eq!(
        statuses(&test, 8, rotating_xff),
        [200, 200, 200, 429, 429, 429, 429, 429]
    );
    // What the upstream saw: the client's entries, then the peer address Envoy appended (the
    // same for every request, whatever the client wrote).
    let appended: std::collections::BTreeSet<String> = test
        .upstream
        .seen()
        .iter()
        .map(|request| {
            let xff = request.header("x-forwarded-for").unwrap();
            assert!(xff.starts_with("198.18."), "{xff}");
            let last = xff.rsplit(',').next().unwrap().trim().to_owned();
            assert!(last.parse::<std::net::IpAddr>().is_ok(), "{xff}");
            last
        })
        .collect();
    assert_eq!(appended.len(), 1, "{appended:?}");
}

#[test]
fn forwarded_for_is_ignored_with_no_trusted_hops() {
    // An edge Envoy (`use_remote_address: true`): `source.address` is the real peer.
    let test = EnvoyTest::start_edited(vec![rate_limit_filter(per_ip_limit(0))], |config| {
        hcm(config)["use_remote_address"] = json!(true);
    });
    assert_eq!(
        statuses(&test, 8, rotating_xff),
        [200, 200, 200, 429, 429, 429, 429, 429]
    );
}

#[test]
fn without_use_remote_address_envoy_reports_the_forwarded_address_as_the_peer() {
    // Envoy's default `use_remote_address: false` makes the rightmost `x-forwarded-for` entry
    // the downstream remote address, and `source.address` is that address: a client rotating
    // it gets a fresh budget. SECURITY.md: at the edge, set `use_remote_address: true`.
    let test = EnvoyTest::start(vec![rate_limit_filter(per_ip_limit(0))]);
    assert_eq!(statuses(&test, 8, rotating_xff), [200; 8]);
}

#[test]
fn over_counting_trusted_hops_hands_the_key_to_the_client() {
    // The misconfiguration: two trusted hops declared, one proxy (this Envoy) appending. The
    // second entry from the right is the client's, so rotating it escapes the limit; the test
    // pins the behaviour SECURITY.md warns about.
    let test = EnvoyTest::start_edited(vec![rate_limit_filter(per_ip_limit(2))], |config| {
        hcm(config)["use_remote_address"] = json!(true);
    });
    let rotating_last = |i: usize| vec![("x-forwarded-for".to_owned(), format!("198.18.2.{i}"))];
    assert_eq!(statuses(&test, 8, rotating_last), [200; 8]);
}

// ---- Path tricks under Envoy's path normalisation settings ----

/// The path every trick aims at. palisade-rate-limit limits exactly this path (a route override
/// matching `path`, one request per hour; other paths unlimited), and the test spends the budget
/// first: a later request whose path *the filter saw* as `/admin/users` gets 429, any other
/// reaches the echo upstream, which records the path it received (the same one the filter saw:
/// Envoy normalises before any HTTP filter runs).
const TARGET: &str = "/admin/users";

/// Path tricks, as written on the wire.
const TRICKS: [&str; 12] = [
    "/public/../admin/users",
    "/admin/./users",
    "/public/%2e%2e/admin/users",
    "/public/%2E%2E/admin/users",
    "/%61dmin/users",
    "//admin/users",
    "/admin//users",
    "/ADMIN/users",
    "/admin./users",
    "/admin%2Fusers",
    "/admin%2fusers",
    "/admin%5Cusers",
];

/// What became of one trick.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// The filter saw the target path (429: the target's spent budget).
    Target,
    /// The filter and the upstream saw this other path.
    Other(String),
    /// Envoy answered itself with this status (and `Location` for a redirect).
    Envoy(u16, Option<String>),
}

fn observe(hcm_options: Value) -> Vec<(&'static str, Seen)> {
    let config = json!({"routes": [{"match": {"path": TARGET},
        "limits": [{"name": "admin", "rate": 1, "period": "1h",
                    "key": [{"constant": "admin"}], "slots": 4}]}]});
    let test = EnvoyTest::start_edited(vec![rate_limit_filter(config)], |bootstrap| {
        let manager = hcm(bootstrap);
        for (name, value) in hcm_options.as_object().unwrap() {
            manager[name] = value.clone();
        }
    });
    assert_eq!(test.raw_get(TARGET, &[]).status, 200);
    assert_eq!(
        test.raw_get(TARGET, &[]).status,
        429,
        "the target's budget is spent"
    );
    TRICKS
        .iter()
        .map(|trick| {
            let before = test.upstream.seen().len();
            let reply = test.raw_get(trick, &[]);
            let seen = match reply.status {
                429 => Seen::Target,
                200 => {
                    let seen = test.upstream.seen();
                    assert_eq!(seen.len(), before + 1, "{trick}");
                    Seen::Other(seen.last().unwrap().path.clone())
                }
                status => Seen::Envoy(
                    status,
                    reply
                        .header("location")
                        .map(|l| l.trim_start_matches(&test.envoy.url("")).to_owned()),
                ),
            };
            (*trick, seen)
        })
        .collect()
}

fn other(path: &str) -> Seen {
    Seen::Other(path.to_owned())
}

/// The tricks palisade-rate-limit resolves itself (dot segments, unreserved escapes, repeated
/// slashes, `kit::path::normalize`) under any of Envoy's settings; case, a trailing dot and
/// escaped slashes or backslashes name other paths to it, as to Envoy's router.
fn resolved_by_the_plugin() -> Vec<(&'static str, Seen)> {
    vec![
        ("/public/../admin/users", Seen::Target),
        ("/admin/./users", Seen::Target),
        ("/public/%2e%2e/admin/users", Seen::Target),
        ("/public/%2E%2E/admin/users", Seen::Target),
        ("/%61dmin/users", Seen::Target),
        ("//admin/users", Seen::Target),
        ("/admin//users", Seen::Target),
        ("/ADMIN/users", other("/ADMIN/users")),
        ("/admin./users", other("/admin./users")),
        ("/admin%2Fusers", other("/admin%2Fusers")),
        ("/admin%2fusers", other("/admin%2fusers")),
        ("/admin%5Cusers", other("/admin%5Cusers")),
    ]
}

/// Envoy's defaults: no normalisation at all. Every trick reaches the filters (and the
/// upstream) as written; the plugin still counts each one an upstream resolving dot segments,
/// decoding or merging slashes would serve as the target.
#[test]
fn envoy_defaults_leave_the_tricks_to_the_plugin() {
    assert_eq!(observe(json!({})), resolved_by_the_plugin());
}

/// `normalize_path: true` (Istio's default `BASE` normalisation): dot segments resolved and
/// encoded unreserved characters decoded by Envoy; the plugin merges the slashes itself.
#[test]
fn normalize_path_resolves_dot_segments_and_decodes_unreserved() {
    let seen = observe(json!({"normalize_path": true}));
    assert_eq!(seen, resolved_by_the_plugin());
}

/// Istio's `MERGE_SLASHES`: `normalize_path` and `merge_slashes`.
#[test]
fn merge_slashes_closes_the_double_slash_tricks() {
    let seen = observe(json!({"normalize_path": true, "merge_slashes": true}));
    assert_eq!(seen, resolved_by_the_plugin());
}

/// Istio's `DECODE_AND_MERGE_SLASHES`: escaped slashes decoded too, and forwarded.
#[test]
fn unescape_and_forward_decodes_escaped_slashes_before_the_filters() {
    let seen = observe(json!({"normalize_path": true, "merge_slashes": true,
                              "path_with_escaped_slashes_action": "UNESCAPE_AND_FORWARD"}));
    assert_eq!(
        seen,
        vec![
            ("/public/../admin/users", Seen::Target),
            ("/admin/./users", Seen::Target),
            ("/public/%2e%2e/admin/users", Seen::Target),
            ("/public/%2E%2E/admin/users", Seen::Target),
            ("/%61dmin/users", Seen::Target),
            ("//admin/users", Seen::Target),
            ("/admin//users", Seen::Target),
            ("/ADMIN/users", other("/ADMIN/users")),
            ("/admin./users", other("/admin./users")),
            ("/admin%2Fusers", Seen::Target),
            ("/admin%2fusers", Seen::Target),
            ("/admin%5Cusers", Seen::Target),
        ]
    );
}

/// Escaped slashes refused outright (palisade-auth's own default for its rules).
#[test]
fn reject_request_refuses_escaped_slashes_before_the_filters() {
    let seen = observe(json!({"normalize_path": true, "merge_slashes": true,
                              "path_with_escaped_slashes_action": "REJECT_REQUEST"}));
    assert_eq!(
        seen,
        vec![
            ("/public/../admin/users", Seen::Target),
            ("/admin/./users", Seen::Target),
            ("/public/%2e%2e/admin/users", Seen::Target),
            ("/public/%2E%2E/admin/users", Seen::Target),
            ("/%61dmin/users", Seen::Target),
            ("//admin/users", Seen::Target),
            ("/admin//users", Seen::Target),
            ("/ADMIN/users", other("/ADMIN/users")),
            ("/admin./users", other("/admin./users")),
            ("/admin%2Fusers", Seen::Envoy(400, None)),
            ("/admin%2fusers", Seen::Envoy(400, None)),
            ("/admin%5Cusers", Seen::Envoy(400, None)),
        ]
    );
}
