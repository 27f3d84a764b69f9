//! The same CORS policy in Envoy's native CORS filter and in palisade-header-security, over a
//! matrix of origins, methods and request headers: the outcomes must be identical.
//!
//! An outcome is what a browser acts on: whether the request was answered by the proxy or
//! reached the upstream, and every `access-control-*` response header. Two differences are by
//! design and excluded: a preflight answer is 204 here and 200 in Envoy (both "ok" to the Fetch
//! standard), and the plugin adds `Vary: Origin`.

use std::collections::BTreeMap;

use palisade::envoy::Filter;
use palisade::plugins;
use palisade_host_tests::envoy_harness::{Body, EnvoyTest, Reply};
use serde_json::json;

const PALISADE_POLICY: &str = r#"{
    "security_headers": {"preset": "none", "remove": []},
    "request_id": {"echo": false},
    "trace_context": {"create": false},
    "cors": {
        "allow_origins": [
            {"exact": "https://app.example.com"},
            {"wildcard": "https://*.example.org"},
            {"regex": "https://dev-[0-9]+\\.example\\.net"}
        ],
        "allow_methods": ["GET", "POST", "PUT"],
        "allow_headers": ["authorization", "content-type"],
        "expose_headers": ["x-request-id", "x-total-count"],
        "max_age": "10m",
        "allow_credentials": true
    }
}"#;

fn native_policy() -> serde_json::Value {
    json!({
        "envoy.filters.http.cors": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
            "allow_origin_string_match": [
                {"exact": "https://app.example.com"},
                // What the plugin's `https://*.example.org` means, as Envoy's full-match regex.
                {"safe_regex": {"regex": "https://[a-z0-9_-]+(\\.[a-z0-9_-]+)*\\.example\\.org"}},
                {"safe_regex": {"regex": "https://dev-[0-9]+\\.example\\.net"}}
            ],
            "allow_methods": "GET, POST, PUT",
            "allow_headers": "authorization, content-type",
            "expose_headers": "x-request-id, x-total-count",
            "max_age": "600",
            "allow_credentials": true
        }
    })
}

/// What a browser acts on.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    reached_upstream: bool,
    status_class: u16,
    cors_headers: BTreeMap<String, String>,
}

fn outcome(reply: &Reply, upstream_before: usize, upstream_after: usize) -> Outcome {
    Outcome {
        reached_upstream: upstream_after > upstream_before,
        status_class: reply.status / 100,
        cors_headers: reply
            .headers
            .iter()
            .filter(|(n, _)| n.starts_with("access-control-"))
            .cloned()
            .collect(),
    }
}

#[test]
fn native_and_palisade_cors_agree() {
    let native = EnvoyTest::start_with_native(
        vec![],
        vec![json!({
            "name": "envoy.filters.http.cors",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}
        })],
        native_policy(),
    );
    let palisade = EnvoyTest::start(vec![Filter::new(
        plugins::find("header-security").unwrap(),
        PALISADE_POLICY,
    )]);

    let origins = [
        None,
        Some("https://app.example.com"),
        Some("https://a.example.org"),
        Some("https://a.b-c.example.org"),
        Some("https://dev-7.example.net"),
        Some("http://app.example.com"),
        Some("https://app.example.com.evil.com"),
        Some("https://example.org"),
        Some("https://evil.com"),
        Some("https://dev-x.example.net"),
        Some("null"),
    ];
    // (method, access-control-request-method, access-control-request-headers)
    let requests: [(&str, Option<&str>, Option<&str>); 7] = [
        ("GET", None, None),
        ("POST", None, None),
        ("OPTIONS", Some("PUT"), None),
        ("OPTIONS", Some("DELETE"), Some("authorization")),
        ("OPTIONS", Some("GET"), Some("x-custom, content-type")),
        ("OPTIONS", None, None),
        ("PUT", Some("PUT"), None),
    ];
    let mut compared = 0;
    for origin in origins {
        for (method, request_method, request_headers) in requests {
            let mut headers = Vec::new();
            if let Some(origin) = origin {
                headers.push(("origin", origin));
            }
            if let Some(m) = request_method {
                headers.push(("access-control-request-method", m));
            }
            if let Some(h) = request_headers {
                headers.push(("access-control-request-headers", h));
            }
            let run = |test: &EnvoyTest| {
                let before = test.upstream.seen().len();
                let reply = test.send(method, "/resource", &headers, Body::None);
                outcome(&reply, before, test.upstream.seen().len())
            };
            let expected = run(&native);
            let actual = run(&palisade);
            assert_eq!(
                actual, expected,
                "origin {origin:?}, {method} (request-method {request_method:?}, request-headers {request_headers:?})"
            );
            compared += 1;
        }
    }
    assert_eq!(compared, origins.len() * requests.len());
    // The matrix exercised both answers: some preflights answered locally, some allowed
    // actual requests decorated, some refused.
    assert!(native.upstream.seen().len() < compared);
}
