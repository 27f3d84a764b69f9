//! palisade-header-security's response headers in real Envoy.

use palisade::envoy::Filter;
use palisade::plugins;
use palisade_host_tests::envoy_harness::EnvoyTest;

fn header_security(config: &str) -> EnvoyTest {
    EnvoyTest::start(vec![Filter::new(
        plugins::find("header-security").unwrap(),
        config,
    )])
}

#[test]
fn api_preset_by_default_and_leaky_headers_removed() {
    let test = header_security("{}");
    for _ in 0..6 {
        let reply = test.get("/", &[]);
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("strict-transport-security"),
            Some("max-age=31536000; includeSubDomains")
        );
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(reply.header("x-frame-options"), Some("DENY"));
        assert_eq!(
            reply.header("content-security-policy"),
            Some("default-src 'none'; frame-ancestors 'none'")
        );
        assert_eq!(reply.header("referrer-policy"), Some("no-referrer"));
        assert_eq!(reply.header("cache-control"), Some("no-store"));
        assert_eq!(reply.header("server"), None);
        assert_eq!(reply.header("x-powered-by"), None);
        assert_eq!(reply.header("x-envoy-upstream-service-time"), None);
        // The body is the upstream's, untouched.
        assert!(reply.body.starts_with(r#"{"headers":"#), "{}", reply.body);
    }
}

#[test]
fn strict_preset_with_overrides() {
    let test = header_security(
        r#"{"security_headers":{"preset":"strict",
            "headers":{"x-frame-options":"SAMEORIGIN","cross-origin-embedder-policy":null,"x-served-by":"palisade"},
            "remove":["x-powered-by"]}}"#,
    );
    let reply = test.get("/", &[]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-frame-options"), Some("SAMEORIGIN"));
    assert_eq!(
        reply.header("cross-origin-opener-policy"),
        Some("same-origin")
    );
    assert_eq!(reply.header("cross-origin-embedder-policy"), None);
    assert_eq!(reply.header("x-served-by"), Some("palisade"));
    assert_eq!(
        reply.header("permissions-policy"),
        Some("camera=(), microphone=(), geolocation=(), payment=(), usb=()")
    );
    // Only x-powered-by is removed now: the upstream's server header stays.
    assert_eq!(reply.header("x-powered-by"), None);
    assert_eq!(reply.header("server"), Some("demo-upstream/1.0"));
}

#[test]
fn upstream_values_are_replaced_not_duplicated() {
    let test = header_security(
        r#"{"security_headers":{"preset":"none","headers":{"server":"edge"},"remove":[]}}"#,
    );
    let reply = test.get("/", &[]);
    let servers: Vec<_> = reply
        .headers
        .iter()
        .filter(|(n, _)| n == "server")
        .collect();
    assert_eq!(servers, [&("server".to_owned(), "edge".to_owned())]);
}
